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

import numbers
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


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _floats(t, name: str, ndim: int) -> None:
    """A finite float array of ``ndim`` dimensions (integer factors would be cast silently, a NaN
    would spread through every output)."""
    if not isinstance(t, torch.Tensor) or t.dtype not in FLOAT_DTYPES:
        kind = str(t.dtype).replace("torch.", "") if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} is {kind}, not a float array")
    if t.ndim != ndim:
        raise ValueError(f"{name} has {t.ndim} dimensions, not {ndim}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} holds NaN or infinite values")


def validate_factors(d_out: int, d_in: int, values, u, v, bias=None, part_rows=None, *, crow_indices=None,
                     col_indices=None, segment_ptr=None, col_offsets=None) -> tuple[list, list[tuple[int, int]]]:
    """Check everything ``SparseLowRankLinear`` is given, whatever kernel will use it, before any
    conversion or kernel reads it; ValueError with a short reason (one line) otherwise.

    Returns (the U parts as a list, part_rows as (start, stop) pairs).
    """
    for name, n in (("d_out", d_out), ("d_in", d_in)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
            raise ValueError(f"{name} {n!r} is not a positive size")
    given_csr = crow_indices is not None or col_indices is not None
    given_csr8 = segment_ptr is not None or col_offsets is not None
    if given_csr == given_csr8:
        raise ValueError("the sparse term needs either CSR (crow_indices, col_indices) or CSR8 (segment_ptr, "
                         "col_offsets) indices")
    _floats(values, "values", 1)
    nnz = values.numel()
    if given_csr:
        kernels.check_csr(crow_indices, col_indices, d_out, d_in, nnz)
    else:
        kernels.check_csr8(segment_ptr, col_offsets, d_out, d_in, nnz)
    parts = [u] if isinstance(u, torch.Tensor) else list(u) if isinstance(u, (list, tuple)) else [u]
    for i, p in enumerate(parts):
        _floats(p, "u" if len(parts) == 1 else f"u{i}", 2)
    _floats(v, "v", 2)
    if bias is not None:
        _floats(bias, "bias", 1)
        if bias.shape != (d_out,):
            raise ValueError(f"bias has shape {tuple(bias.shape)}, not ({d_out},)")
    if v.shape[1] != d_in:
        raise ValueError(f"v has shape {tuple(v.shape)}: its {v.shape[1]} columns are not the layer's {d_in}")
    if part_rows is None:
        rows = [(0, d_out)]
    else:
        if not isinstance(part_rows, (list, tuple)) or not all(
                isinstance(r, (list, tuple)) and len(r) == 2
                and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in r) for r in part_rows):
            raise ValueError("part_rows is not a list of [start, stop] row pairs")
        rows = [(int(a), int(b)) for a, b in part_rows]
        bad = [r for r in rows if not 0 <= r[0] <= r[1] <= d_out]
        if bad:
            raise ValueError(f"part_rows {list(bad[0])} is out of range for {d_out} rows")
    if len(rows) != len(parts):
        raise ValueError(f"{len(parts)} U parts for {len(rows)} row ranges")
    for i, (p, (a, b)) in enumerate(zip(parts, rows)):
        if p.shape[0] != b - a:
            raise ValueError(f"u{i} has {p.shape[0]} rows, its part has {b - a}")
    rank = sum(int(p.shape[1]) for p in parts)
    if rank != v.shape[0]:
        raise ValueError(f"the U parts have rank {rank}, v has {v.shape[0]} rows")
    return parts, rows


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
        # Checked here, once, for every kernel: the per-call path trusts these buffers.
        parts, rows = validate_factors(d_out, d_in, values, u, v, bias, part_rows, crow_indices=crow_indices,
                                       col_indices=col_indices, segment_ptr=segment_ptr, col_offsets=col_offsets)
        kernel = default_kernel(values.dtype) if kernel == "auto" else kernel
        if kernel == "csr8" and not kernels.available():
            raise ValueError(f"the csr8 kernel cannot run here ({kernels.backend_note()}): use kernel='csr'")
        ranks = [int(p.shape[1]) for p in parts]
        given_csr, given_csr8 = crow_indices is not None, segment_ptr is not None
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
        self.loop = "scalar"
        """The fused kernel's loop (``kernels.LOOPS``): set by oats/deploy/plan.py from measurements."""
        self._fused = self._fusable()

    def _fusable(self) -> bool:
        """Whether one token may take the fused C kernel (S x + U (V x) + b in one call): csr8 on
        the C backend, one U part over all rows, every buffer float32 on the CPU."""
        return (self.kernel == "csr8" and len(self.part_rows) == 1 and self.part_rows[0] == (0, self.out_features)
                and self.values.dtype == torch.float32 and self.values.device.type == "cpu"
                and self.v.dtype == self.u0.dtype == torch.float32
                and (self.bias is None or self.bias.dtype == torch.float32) and kernels.fused_available())

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
        out = super()._apply(fn, recurse)
        self._fused = self._fusable()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if (self._fused and x.numel() == self.in_features and x.dtype == torch.float32 and x.device.type == "cpu"
                and not (x.requires_grad and torch.is_grad_enabled())):  # one token: decoding
            y = kernels.slr_matvec_checked(self.segment_ptr, self.col_offsets, self.values, self.v, self.u0, self.bias,
                                           x.reshape(1, -1).contiguous(), self.out_features, self.in_features,
                                           self.loop)
            return y.reshape(*shape[:-1], self.out_features)
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
