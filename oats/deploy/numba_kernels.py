"""The CSR8 kernels compiled by numba: the fallback where no C compiler works (see
``oats/deploy/kernels.py``). numba itself is imported on the first call only (``_compiled``):
its import and LLVM's JIT add about 120 MB to a process. ``cache=True`` keeps the compiled
code on disk, so only a process's first call on a new machine compiles (~2 s)."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

numba = None  # the module, set by _compiled(): the loops below read numba.prange when compiled

_U = np.uintp  # unsigned indices: numba skips its negative-index wraparound on each gather


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


@functools.cache
def _compiled():
    """(matvec, matmat) compiled by numba, importing it on the first call."""
    global numba
    import numba as nb
    numba = nb
    # OpenMP first: the runtime torch already loaded (numba's default order puts TBB first,
    # which brings a second thread pool when TBB happens to be installed, e.g. with OpenVINO).
    # A layer the user chose (NUMBA_THREADING_LAYER, or a priority of their own) wins.
    if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
        nb.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    jit = nb.njit(parallel=True, fastmath=True, nogil=True, cache=True)
    return jit(_matvec), jit(_matmat)


def csr8_matmul(ptr: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, x: torch.Tensor,
                d_out: int, nseg: int) -> torch.Tensor:
    """x S^T, (n, d_out), on as many threads as torch (``torch.set_num_threads``)."""
    matvec, matmat = _compiled()
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    xn = x.detach().contiguous().numpy()
    p, o, v = ptr.numpy(), offsets.numpy(), values.numpy()
    if xn.shape[0] == 1:
        out = np.empty(d_out, dtype=np.float32)
        matvec(p, o, v, xn[0], out, nseg)
        return torch.from_numpy(out)[None]
    out = np.empty((d_out, xn.shape[0]), dtype=np.float32)
    matmat(p, o, v, np.ascontiguousarray(xn.T), out, nseg)
    return torch.from_numpy(out).t()
