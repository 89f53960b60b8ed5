"""The deployable replacement of a compressed linear: y = x S^T + (x V^T) U^T + b, with S in a
compressed sparse layout and never expanded to a dense matrix.

Two kernels, chosen when the module is built (``kernel=``):

``csr8`` (the default for float32 where its kernels run: a C compiler, or numba): S in CSR8
         (``oats/deploy/kernels.py``: 8-bit column offsets within 256-column segments, 5 bytes
         per entry), multiplied by oats's compiled kernels. The smallest layout, and the
         fastest (measured against ``csr`` in the README).
``csr``  S as a torch sparse CSR tensor with 32-bit indices (MKL's sparse BLAS on x86 builds:
         ``torch.mv`` for one token, ``torch.mm`` for more), 8 bytes per entry. Also what a
         forward that needs gradients runs.

``pack_csr`` turns a dense sparse term into CSR (int32 row pointers, column indices in the
narrowest integer type that holds ``d_in``); the module takes CSR or CSR8 and converts.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from oats.deploy import kernels

INDEX_DTYPES = {"int16": torch.int16, "int32": torch.int32}
KERNELS = ("auto", "csr8", "csr")


def default_kernel(dtype: torch.dtype = torch.float32) -> str:
    """The kernel ``kernel="auto"`` picks: csr8 for float32 where its kernels run, else csr."""
    return "csr8" if kernels.available() and dtype == torch.float32 else "csr"


def index_dtype_for(d_in: int) -> str:
    """The narrowest column-index type that holds every column of a matrix with ``d_in`` columns."""
    return "int16" if d_in <= torch.iinfo(torch.int16).max + 1 else "int32"


def pack_csr(s: torch.Tensor) -> dict[str, torch.Tensor]:
    """(crow_indices int32, col_indices int16/int32, values) of a (d_out, d_in) matrix's non-zeros."""
    s = s.detach().cpu()
    mask = s != 0
    counts = mask.sum(dim=1, dtype=torch.int64)
    crow = torch.zeros(s.shape[0] + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    cols = mask.nonzero(as_tuple=True)[1]
    return {"crow_indices": crow.to(torch.int32), "col_indices": cols.to(INDEX_DTYPES[index_dtype_for(s.shape[1])]),
            "values": s[mask].contiguous()}


def _check_csr(crow: torch.Tensor, col: torch.Tensor, d_in: int, nnz: int) -> None:
    """Indices that address only S's own entries and columns (the kernels do not check bounds)."""
    crow = crow.to(torch.int64)
    if (crow.numel() == 0 or int(crow[0]) != 0 or int(crow[-1]) != nnz or bool((crow[1:] < crow[:-1]).any())
            or (col.numel() and (int(col.min()) < 0 or int(col.max()) >= d_in))):
        raise ValueError("the sparse term's CSR indices are out of range")


def _check_csr8(ptr: torch.Tensor, offsets: torch.Tensor, d_out: int, d_in: int) -> None:
    """As ``_check_csr`` for CSR8: pointers from 0 to nnz, never decreasing, and the offsets of
    each row's last, narrower segment inside the matrix."""
    _check_csr(ptr, torch.zeros(0, dtype=torch.int64), d_in, offsets.numel())
    nseg = kernels.segments(d_in)
    width = d_in - (nseg - 1) * kernels.SEGMENT
    if width < kernels.SEGMENT and offsets.numel():
        ptr = ptr.to(torch.int64)
        last = torch.repeat_interleave(torch.arange(d_out * nseg) % nseg == nseg - 1, ptr[1:] - ptr[:-1])
        if bool((offsets.to(torch.int64)[last] >= width).any()):
            raise ValueError("the sparse term's CSR8 column offsets are out of range")


class SparseLowRankLinear(nn.Module):
    """y = x S^T + (x V^T) U^T + b. S given as CSR (``crow_indices``, ``col_indices``) or CSR8
    (``segment_ptr``, ``col_offsets``) with its ``values``; v (r, d_in); u (d_out, r), or for a
    fused matrix one u per part (``part_rows``: each part's [start, stop) rows). ``kernel``:
    "csr8", "csr" or "auto" (see the module's docstring); the module holds S in that kernel's
    layout only.

    Holds no dense weight. Works in place of ``nn.Linear`` and of GPT-2's ``Conv1D`` (both
    compute x W^T + b for a (d_out, d_in) W).
    """

    def __init__(self, d_out: int, d_in: int, values: torch.Tensor, u: torch.Tensor | list[torch.Tensor],
                 v: torch.Tensor, bias: torch.Tensor | None = None, part_rows: list[tuple[int, int]] | None = None,
                 *, crow_indices: torch.Tensor | None = None, col_indices: torch.Tensor | None = None,
                 segment_ptr: torch.Tensor | None = None, col_offsets: torch.Tensor | None = None,
                 kernel: str = "auto"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}: use one of {', '.join(KERNELS)}")
        kernel = default_kernel(values.dtype) if kernel == "auto" else kernel
        if kernel == "csr8" and not kernels.available():
            raise ValueError(f"the csr8 kernel cannot run here ({kernels.backend_note()}): use kernel='csr'")
        parts = [u] if isinstance(u, torch.Tensor) else list(u)
        rows = [(0, d_out)] if part_rows is None else [tuple(map(int, r)) for r in part_rows]
        ranks = [int(p.shape[1]) if p.ndim == 2 else -1 for p in parts]
        given_csr, given_csr8 = crow_indices is not None and col_indices is not None, segment_ptr is not None \
            and col_offsets is not None
        index = col_indices if given_csr else col_offsets
        if (given_csr == given_csr8 or values.ndim != 1 or index.shape != values.shape
                or (given_csr and crow_indices.shape != (d_out + 1,))
                or (given_csr8 and segment_ptr.shape != (d_out * kernels.segments(d_in) + 1,))
                or len(rows) != len(parts) or v.ndim != 2 or v.shape[1] != d_in or sum(ranks) != v.shape[0]
                or any(p.shape[0] != b - a or not 0 <= a <= b <= d_out for p, (a, b) in zip(parts, rows))
                or (bias is not None and bias.shape != (d_out,))):
            raise ValueError(f"sparse + low-rank factors do not fit a ({d_out}, {d_in}) layer")
        if kernel == "csr8" and given_csr8:
            _check_csr8(segment_ptr, col_offsets, d_out, d_in)
        elif given_csr:
            _check_csr(crow_indices, col_indices, d_in, values.numel())
        self.in_features, self.out_features = d_in, d_out
        self.kernel = kernel
        dtype = values.dtype
        if kernel == "csr8":
            if given_csr:
                segment_ptr, col_offsets = kernels.csr_to_csr8(crow_indices, col_indices, d_out, d_in)
            self.register_buffer("segment_ptr", segment_ptr.to(torch.int32).contiguous())
            self.register_buffer("col_offsets", col_offsets.to(torch.uint8).contiguous())
        else:
            if given_csr8:
                crow_indices, col_indices = kernels.csr8_to_csr(segment_ptr, col_offsets, d_out, d_in)
            self.register_buffer("crow_indices", crow_indices.to(torch.int32).contiguous())
            self.register_buffer("col_indices", col_indices.to(torch.int32).contiguous())
        self.register_buffer("values", values.contiguous())
        # A fused matrix (Phi-3 qkv, GPT-2 c_attn) whose parts were decomposed separately keeps
        # one U per part (its own rows, its own rank columns of V): no block-diagonal zeros.
        for i, p in enumerate(parts):
            self.register_buffer(f"u{i}", p.to(dtype).contiguous())
        self.part_rows = rows
        self._part_ranks = [(sum(ranks[:i]), sum(ranks[:i + 1])) for i in range(len(ranks))]
        self.register_buffer("v", v.to(dtype).contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype).contiguous(), requires_grad=False)
        self._csr = None

    @property
    def u_parts(self) -> list[torch.Tensor]:
        return [getattr(self, f"u{i}") for i in range(len(self.part_rows))]

    @property
    def rank(self) -> int:
        return int(self.v.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def params(self) -> int:
        """Parameters kept: nnz(S) + the factors' entries, r (d_out + d_in) for one part (indices and bias
        not counted, as in the budgets)."""
        return self.nnz + self.v.numel() + sum(u.numel() for u in self.u_parts)

    def nbytes(self) -> int:
        """Bytes held: values, indices, factors and bias."""
        return sum(t.numel() * t.element_size() for t in (*self.buffers(), *self.parameters()))

    def csr_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(crow_indices, col_indices) int32 of S, whichever layout holds it."""
        if self.kernel == "csr":
            return self.crow_indices, self.col_indices
        return kernels.csr8_to_csr(self.segment_ptr, self.col_offsets, self.out_features, self.in_features)

    def sparse_matrix(self) -> torch.Tensor:
        """S as a torch sparse CSR tensor (built once; for the csr kernel it shares this module's storage)."""
        csr = self._csr
        if csr is None or csr.values().data_ptr() != self.values.data_ptr():
            crow, col = self.csr_indices()
            with warnings.catch_warnings():  # "sparse CSR support is in beta": said once, not our user's concern
                warnings.simplefilter("ignore", UserWarning)
                csr = torch.sparse_csr_tensor(crow, col, self.values, (self.out_features, self.in_features),
                                              check_invariants=False)
            self._csr = csr
        return csr

    def _sparse_product(self, x2: torch.Tensor) -> torch.Tensor:
        """x2 S^T, (n, d_out)."""
        if (self.kernel == "csr8" and x2.dtype == self.values.dtype == torch.float32
                and x2.device.type == self.values.device.type == "cpu"
                and not (torch.is_grad_enabled() and x2.requires_grad)):  # else torch's CSR (moved, cast, training)
            return kernels.matmul_checked(self.segment_ptr, self.col_offsets, self.values, self.in_features, x2)
        if x2.shape[0] == 1:  # one token (decoding): the CSR matrix-vector kernel, ~3x faster than mm here
            return torch.mv(self.sparse_matrix(), x2[0])[None]
        return torch.mm(self.sparse_matrix(), x2.t()).t()

    def _apply(self, fn, recurse=True):  # .to() / .half(): the CSR view is rebuilt from the new storage
        self._csr = None
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.rank and len(self.part_rows) == 1 and self.part_rows[0] == (0, self.out_features):
            y = nn.functional.linear(nn.functional.linear(x2, self.v), self.u0)
        elif self.rank:
            t = nn.functional.linear(x2, self.v)
            y = x2.new_zeros(x2.shape[0], self.out_features)
            for u, (a, b), (ra, rb) in zip(self.u_parts, self.part_rows, self._part_ranks):
                y[:, a:b] = nn.functional.linear(t[:, ra:rb], u)
        else:
            y = x2.new_zeros(x2.shape[0], self.out_features)
        if self.values.numel():
            y = y + self._sparse_product(x2)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, nnz={self.nnz}, "
                f"kernel={self.kernel}")
