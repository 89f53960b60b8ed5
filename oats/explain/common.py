"""Shared helpers of the explain views: heatmap pooling and one matrix's terms in the scaled space.

Everything the views compute works in the *scaled* space OATS decomposes: A = W D with D the
input scale (``oats.core.decompose.input_scale`` of the layer's recorded second moments),
S = S' D the scaled sparse term and L = (u v) D the scaled low-rank term. Errors and energies
are relative to ||W D||_F (or its square), as in ``oats.core.decompose.History``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from oats.core.decompose import input_scale

HEAT_MAX = 256  # heatmaps are pooled to at most this many rows and columns


@dataclass
class Heat:
    """A (possibly pooled) heatmap: z (rows, cols); rows/cols hold the first original index
    of each pooled cell, so axes and hover keep the matrix's own coordinates."""

    z: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    factor: tuple[int, int]  # original cells per pooled cell along (rows, cols)


def downsample(a, max_rows: int = HEAT_MAX, max_cols: int = HEAT_MAX, how: str = "mean") -> Heat:
    """Pool a 2-D array to at most (max_rows, max_cols) cells.

    ``how``: "mean" (block mean, e.g. a mask's density), "max" (block maximum) or "absmax"
    (block maximum of |a|, so a single large entry stays visible). Blocks at the edges may be
    smaller; NaN entries are ignored.
    """
    if how not in ("mean", "max", "absmax"):
        raise ValueError(f"how must be mean, max or absmax, got {how!r}")
    if isinstance(a, torch.Tensor) and a.dim() == 2 and a.numel() >= FAST_POOL and a.is_floating_point() \
            and (how == "mean" or a.dtype == torch.float32):
        return _pool_tensor(a.detach().cpu(), max_rows, max_cols, how)
    a = np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"downsample needs a 2-D array, got shape {a.shape}")
    n, m = a.shape
    fr, fc = max(1, math.ceil(n / max_rows)), max(1, math.ceil(m / max_cols))
    if how == "absmax":
        a = np.abs(a)
    if fr == 1 and fc == 1:
        return Heat(a.copy(), np.arange(n), np.arange(m), (1, 1))
    nr, nc = math.ceil(n / fr), math.ceil(m / fc)
    padded = np.full((nr * fr, nc * fc), np.nan)
    padded[:n, :m] = a
    blocks = padded.reshape(nr, fr, nc, fc)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
            z = np.nanmean(blocks, axis=(1, 3)) if how == "mean" else np.nanmax(blocks, axis=(1, 3))
    return Heat(z, np.arange(0, n, fr), np.arange(0, m, fc), (fr, fc))


FAST_POOL = 4_000_000
"""From this many entries (a mid-size model's matrix: 14336 x 4096 is 58 M) ``downsample``
pools a tensor with torch's pooling in its own dtype instead of a float64 NumPy copy with NaN
padding: a mean (5.0 s for a 14336 x 4096 mask here, 0.6 s this way) and, of an fp32 tensor,
a maximum (2.0 s, 0.6 s); the same cells. Maxima of fp64 tensors stay with NumPy (faster)."""


def _pool_tensor(a: torch.Tensor, max_rows: int, max_cols: int, how: str) -> Heat:
    """``downsample`` of a large tensor (see ``FAST_POOL``)."""
    n, m = a.shape
    fr, fc = max(1, math.ceil(n / max_rows)), max(1, math.ceil(m / max_cols))
    if torch.isnan(a).any():  # NaN entries are ignored by the NumPy path only
        return downsample(a.numpy(), max_rows, max_cols, how)
    with torch.no_grad():  # ceil_mode: an edge cell is the mean (the maximum) of the entries it covers
        if how == "mean":
            z = torch.nn.functional.avg_pool2d(a[None, None], (fr, fc), ceil_mode=True, count_include_pad=False)
        else:
            z = torch.nn.functional.max_pool2d((a.abs() if how == "absmax" else a)[None, None], (fr, fc),
                                               ceil_mode=True)
    return Heat(z[0, 0].double().numpy(), np.arange(0, n, fr), np.arange(0, m, fc), (fr, fc))


def layer_scale(run, qualname: str) -> torch.Tensor:
    """D of one matrix, exactly as the pipeline computed it from the recorded statistics."""
    rec = run.layer(qualname)
    return input_scale(run.second_moments[qualname], rec.shape[1], run.config.eps)


def scaled_terms(run, qualname: str) -> dict[str, torch.Tensor]:
    """{"A": W D, "S": S' D, "L": (u v) D, "D": D, "W": W} in fp32 for one matrix."""
    f = run.factors(qualname)
    d = layer_scale(run, qualname)
    w = f["weight"].detach().float()
    return {"W": w, "D": d, "A": w * d, "S": f["sparse"].detach().float() * d,
            "L": (f["u"].detach().float() @ f["v"].detach().float()) * d}


def block_paths(run, block: int) -> list[str]:
    """Module paths of the replaced linears of one block."""
    return list(dict.fromkeys(r.path for r in run.layers if r.block == block))
