"""Algorithm 1 of the OATS paper written out from the formulas alone, for the tests.

Nothing here comes from the package: the scale D, the budgets (exact fractions) and the
loop are written again, plainly (full SVD, full stable sort, N times), so a bug in the
package's budget, scale or solver code is not shared by the reference it is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import torch


@dataclass
class Plain:
    sparse: torch.Tensor   # S' = S D^-1, unscaled
    lowrank: torch.Tensor  # L' = L D^-1, unscaled
    mask: torch.Tensor     # where S is kept
    rank: int
    error: float           # ||W D - S - L||_F / ||W D||_F
    errors: list[float]    # the same after every iteration


def plain_scale(m2: torch.Tensor | None, n: int, eps: float = 1e-4) -> torch.Tensor:
    """D_j = sqrt(mean x_j^2), floored at eps * mean(D); all ones when unscaled or all zero."""
    if m2 is None:
        return torch.ones(n)
    d = m2.float().clamp_min(0).sqrt()
    if float(d.mean()) <= 0:
        return torch.ones(n)
    return torch.maximum(d, eps * d.mean())


def plain_budgets(m: int, n: int, rho: float, kappa: float, pattern: str = "row") -> tuple[int, int | None]:
    """(rank, entries kept per row for 'row' / in all for 'layer' / None for N:M)."""
    R, K = Fraction(str(rho)), Fraction(str(kappa))
    if ":" in pattern:
        big_n, big_m = map(int, pattern.split(":"))
        density = Fraction(big_n, big_m) / (1 - K)
    else:
        density = 1 - R
    rank = int(K * density * m * n // (m + n))
    prune = 1 - (1 - K) * density
    if pattern == "row":
        return rank, n - int(n * prune // 1)
    if pattern == "layer":
        return rank, m * n - int(m * n * prune // 1)
    return rank, None


def _project(res: torch.Tensor, keep: int | None, pattern: str) -> torch.Tensor:
    """Keep the largest |res| allowed by the pattern (a stable sort, ties to the lower index)."""
    m, n = res.shape
    if pattern == "row":
        order = torch.sort(res.abs(), dim=1, descending=True, stable=True).indices[:, :keep]
        return torch.zeros_like(res, dtype=torch.bool).scatter_(1, order, True)
    if pattern == "layer":
        order = torch.sort(res.abs().reshape(-1), descending=True, stable=True).indices[:keep]
        return torch.zeros(m * n, dtype=torch.bool).scatter_(0, order, True).reshape(m, n)
    big_n, big_m = map(int, pattern.split(":"))
    g = res.abs().reshape(m, n // big_m, big_m)
    order = torch.sort(g, dim=2, descending=True, stable=True).indices[..., :big_n]
    return torch.zeros_like(g, dtype=torch.bool).scatter_(2, order, True).reshape(m, n)


def plain_oats(w: torch.Tensor, m2: torch.Tensor | None, rho: float, kappa: float, iterations: int,
               pattern: str = "row", eps: float = 1e-4) -> Plain:
    """Alternating thresholding: L = best rank-r of (A - S), S = threshold(A - L), N times.

    On one torch thread, as the package computes every decomposition: the SVD rounds
    differently on another thread count, and over 80 thresholding steps a rounding difference
    becomes another mask (3.5e-4 relative in the error of a MiniLM layer), which would compare
    the rounding, not the algorithm.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _plain_oats(w, m2, rho, kappa, iterations, pattern, eps)
    finally:
        torch.set_num_threads(before)


def _plain_oats(w, m2, rho, kappa, iterations, pattern, eps) -> Plain:
    m, n = w.shape
    d = plain_scale(m2, n, eps)
    a = w.float() * d
    rank, keep = plain_budgets(m, n, rho, kappa, pattern)
    s = torch.zeros_like(a)
    low = torch.zeros_like(a)
    errors = []
    for _ in range(iterations):
        if rank > 0:
            u, sv, vh = torch.linalg.svd(a - s, full_matrices=False)
            low = (u[:, :rank] * sv[:rank]) @ vh[:rank]
        res = a - low
        mask = _project(res, keep, pattern)
        s = torch.where(mask, res, torch.zeros_like(res))
        errors.append(float((a - low - s).norm() / a.norm()))
    return Plain(sparse=s / d, lowrank=low / d, mask=mask, rank=rank, error=errors[-1], errors=errors)
