"""CSR8: the sparse term's compact layout, and the numba kernels that multiply with it.

CSR8 is compressed sparse rows whose columns are cut into 256-wide segments: one int32
pointer per (row, segment) pair and one *8-bit* column offset per non-zero (its column minus
the segment's first column), the values in row order as in CSR. An entry costs 4 + 1 bytes
instead of CSR's 4 + 4 (torch's CSR kernels take 32- or 64-bit indices only); the pointers
add 4 bytes per row and segment (under 1% at the embedded models' shapes). At OATS's rho 0.5,
kappa 0.25 that puts the block linears at 0.60x the dense bytes, against 0.88x for torch's
CSR (measured by ``benchmarks/inference.py``).

No maintained CPU library multiplies such a layout, so the two kernels here are compiled by
numba (``parallel=True`` over rows, ``fastmath``): ``matvec`` for one token (four
accumulators per row keep independent gathers in flight; numba's vectorised gathers were
slower on this AMD EPYC), ``matmat`` for a batch (the batch in the innermost loop, which
vectorises). ``cache=True`` keeps the
compiled code on disk, so only a process's first call on a new machine compiles (~2 s).
"""

from __future__ import annotations

import numpy as np
import torch

try:
    import numba
except ImportError:  # numba is a dependency; without it SparseLowRankLinear uses torch's CSR kernel
    numba = None

__all__ = ["SEGMENT", "available", "csr8_bytes", "csr8_matmul", "csr8_to_csr", "csr_to_csr8", "segments"]

SEGMENT = 256


def available() -> bool:
    """Whether the CSR8 kernels can run here (numba importable)."""
    return numba is not None


def segments(d_in: int) -> int:
    return max(1, -(-d_in // SEGMENT))


def csr8_bytes(d_out: int, d_in: int, nnz: int, value_bytes: int = 4) -> int:
    """Bytes of S in CSR8: values, 8-bit offsets and the int32 (row, segment) pointers."""
    return nnz * (value_bytes + 1) + 4 * (d_out * segments(d_in) + 1)


def csr_to_csr8(crow: torch.Tensor, col: torch.Tensor, d_out: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment_ptr int32 of d_out * segments + 1, col_offsets uint8) of a CSR matrix whose
    columns are sorted within each row; the values keep their order."""
    nseg = segments(d_in)
    crow = crow.to(torch.int64)
    col = col.to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(d_out), crow[1:] - crow[:-1])
    counts = torch.bincount(rows * nseg + col // SEGMENT, minlength=d_out * nseg)
    ptr = torch.zeros(d_out * nseg + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr.to(torch.int32), (col % SEGMENT).to(torch.uint8)


def csr8_to_csr(ptr: torch.Tensor, offsets: torch.Tensor, d_out: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow_indices int32, col_indices int32) of a CSR8 matrix."""
    nseg = segments(d_in)
    ptr = ptr.to(torch.int64)
    seg = torch.repeat_interleave(torch.arange(d_out * nseg) % nseg, ptr[1:] - ptr[:-1])
    return ptr[::nseg].to(torch.int32), (seg * SEGMENT + offsets.to(torch.int64)).to(torch.int32)


if numba is not None:
    _U = np.uintp  # unsigned indices: numba skips its negative-index wraparound on each gather

    @numba.njit(parallel=True, fastmath=True, nogil=True, cache=True)
    def _matvec(ptr, off, val, x, out, nseg):  # out (d_out,) = S x
        for r in numba.prange(out.shape[0]):
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for s in range(nseg):
                base = _U(s * 256)
                j, e = ptr[r * nseg + s], ptr[r * nseg + s + 1]
                while j + 4 <= e:  # four accumulators: independent gathers in flight
                    a0 += val[j] * x[base + _U(off[j])]
                    a1 += val[j + 1] * x[base + _U(off[j + 1])]
                    a2 += val[j + 2] * x[base + _U(off[j + 2])]
                    a3 += val[j + 3] * x[base + _U(off[j + 3])]
                    j += 4
                while j < e:
                    a0 += val[j] * x[base + _U(off[j])]
                    j += 1
            out[r] = a0 + a1 + a2 + a3

    @numba.njit(parallel=True, fastmath=True, nogil=True, cache=True)
    def _matmat(ptr, off, val, xt, out, nseg):  # out (d_out, n) = S xt, xt (d_in, n)
        n = xt.shape[1]
        for r in numba.prange(out.shape[0]):
            acc = out[r]
            acc[:] = 0.0
            for s in range(nseg):
                base = _U(s * 256)
                for j in range(ptr[r * nseg + s], ptr[r * nseg + s + 1]):
                    v = val[j]
                    xr = xt[base + _U(off[j])]
                    for t in range(n):
                        acc[t] += v * xr[t]


def _use_torch_threads() -> None:
    """Run the kernels on as many threads as torch (``torch.set_num_threads``, ``--threads``)."""
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


def csr8_matmul(ptr: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, d_in: int,
                x: torch.Tensor) -> torch.Tensor:
    """x S^T for x (n, d_in) float32 on the CPU, S (d_out, d_in) in CSR8; (n, d_out). No autograd."""
    _use_torch_threads()
    nseg = segments(d_in)
    d_out = (ptr.shape[0] - 1) // nseg
    xn = x.detach().contiguous().numpy()
    p, o, v = ptr.numpy(), offsets.numpy(), values.numpy()
    if xn.shape[0] == 1:
        out = np.empty(d_out, dtype=np.float32)
        _matvec(p, o, v, xn[0], out, nseg)
        return torch.from_numpy(out)[None]
    out = np.empty((d_out, xn.shape[0]), dtype=np.float32)
    _matmat(p, o, v, np.ascontiguousarray(xn.T), out, nseg)
    return torch.from_numpy(out).t()
