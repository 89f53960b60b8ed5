"""The solvers against Algorithm 1 written out in the test (tests/plain_oats.py: its own scale,
its own exact budgets, full SVD and a stable sort every iteration).

The exact solver must be the plain loop: identical masks every time, factors within 1e-4.
The fast solver must keep the budgets and reach the plain loop's error (README: it stops
once the error improves by less than tol per iteration; at the same iteration cap its
error is never more than 0.5% above the plain algorithm's).
"""

from __future__ import annotations

import math

import pytest
import torch
from plain_oats import plain_oats, plain_scale

from oats import OatsConfig, decompose

FAST_TOLERANCE = 0.005  # fast error <= plain error * (1 + this), at the same iteration cap


def problem(m: int, n: int, kind: str, seed: int = 1):
    """(W, mean x^2): 'random' Gaussian weights, or 'structured' = planted low rank + sparse
    spikes + noise; inputs with a few outlier channels in both."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        w = torch.randn(m, n, generator=g) / math.sqrt(n)
    else:
        r = max(1, min(m, n) // 8)
        w = (torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g)) / math.sqrt(n * r)
        w = w + (torch.rand(m, n, generator=g) < 0.05) * torch.randn(m, n, generator=g)
        w = w + 0.01 * torch.randn(m, n, generator=g)
    scale = torch.exp(torch.randn(n, generator=g))
    scale[: max(1, n // 16)] *= 20.0
    x = torch.randn(256, n, generator=g) * scale
    return w, x.pow(2).mean(0)


CASES = [(kind, m, n, pattern, rho, kappa)
         for kind in ("random", "structured")
         for (m, n) in ((64, 64), (96, 48), (40, 120))
         for pattern, rho, kappa in (("row", 0.5, 0.25), ("layer", 0.3, 0.2), ("2:4", 0.5, 0.3))]
CASES += [("structured", 48, 80, "row", 0.2, 0.1), ("random", 80, 48, "row", 0.7, 0.25),
          ("structured", 64, 64, "row", 0.6, 0.0)]


@pytest.mark.parametrize("kind,m,n,pattern,rho,kappa", CASES)
def test_exact_solver_is_the_plain_algorithm(kind, m, n, pattern, rho, kappa):
    w, m2 = problem(m, n, kind)
    iters = 30
    plain = plain_oats(w, m2, rho, kappa, iters, pattern)
    dec = decompose(w, m2, OatsConfig(compression=rho, rank_ratio=kappa, iterations=iters, sparsity=pattern,
                                      solver="exact"))
    assert dec.rank == plain.rank
    # rank 0: the first threshold is final (the package stops after it, the plain loop repeats it)
    assert dec.iterations == (iters if plain.rank else 1)
    assert torch.equal(dec.sparse != 0, plain.mask)
    size = float(w.abs().max())
    assert float((dec.sparse - plain.sparse).abs().max()) <= 1e-4 * size
    assert float((dec.lowrank() - plain.lowrank).abs().max()) <= 1e-4 * size
    assert torch.allclose(dec.scale, plain_scale(m2, n), rtol=1e-6, atol=0)
    # the recorded history is the plain loop's error, iteration by iteration
    assert all(abs(a - b) <= 1e-4 * b for a, b in zip(dec.history.error, plain.errors))
    d = plain_scale(m2, n)
    err = float(((w - dec.dense()) * d).norm() / (w * d).norm())
    assert err == pytest.approx(plain.error, rel=1e-4)


@pytest.mark.parametrize("kind,m,n,pattern,rho,kappa", CASES)
def test_fast_solver_keeps_the_budgets_and_reaches_the_plain_error(kind, m, n, pattern, rho, kappa):
    w, m2 = problem(m, n, kind)
    iters = 30
    plain = plain_oats(w, m2, rho, kappa, iters, pattern)
    dec = decompose(w, m2, OatsConfig(compression=rho, rank_ratio=kappa, iterations=iters, sparsity=pattern))
    assert dec.rank == plain.rank
    kept = dec.sparse != 0
    if pattern == "layer":
        assert int(kept.sum()) == int(plain.mask.sum())
    elif pattern == "row":
        assert torch.equal(kept.sum(1), plain.mask.sum(1))
    else:
        assert torch.equal(kept.reshape(m, -1, 4).sum(-1), plain.mask.reshape(m, -1, 4).sum(-1))
    d = plain_scale(m2, n)
    err = float(((w - dec.dense()) * d).norm() / (w * d).norm())
    assert err <= plain.error * (1 + FAST_TOLERANCE)
    assert err == pytest.approx(dec.error, rel=1e-4)


def test_the_sparse_mask_is_re_picked_every_iteration():
    """Alternation moves the mask: the plain loop's final mask is not its first one, and the
    exact solver follows it (a solver that fixes the mask after one step ends far worse)."""
    w, m2 = problem(64, 64, "structured")
    first = plain_oats(w, m2, 0.5, 0.25, 1)
    last = plain_oats(w, m2, 0.5, 0.25, 30)
    assert not torch.equal(first.mask, last.mask)
    dec = decompose(w, m2, OatsConfig(compression=0.5, rank_ratio=0.25, iterations=30, solver="exact"))
    assert torch.equal(dec.sparse != 0, last.mask)
    assert dec.error < 0.9 * first.error
