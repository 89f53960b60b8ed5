"""Budgets against the README's formulas, in exact rational arithmetic written here.

Property-based (hypothesis, a fixed-seed profile from conftest.py): random shapes and rates
written as decimals (0.2, 0.35, 0.125, ...). Every expected value is computed in this file
from ``Fraction``s, never from the package's own helpers.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from oats import OatsConfig
from oats.methods.sparsegpt import _cumulative_share
from oats.core.decompose import (dense_budget, hard_threshold, lowrank_rank, prune_fraction, rank_budget, row_keep,
                            sparse_budget)
from oats.errors import ConfigError


def floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


# a rate as a user writes it: 1 to 3 decimal places (0.2, 0.35, 0.125)
def decimals(low: int, high: int, places: int):
    return st.integers(low, high).map(lambda k: (k, places))


rates = st.one_of(decimals(1, 9, 1), decimals(1, 99, 2), decimals(1, 999, 3))
kappas = st.one_of(st.just((0, 1)), decimals(1, 9, 1), decimals(1, 99, 2), decimals(1, 999, 3))
dims = st.integers(1, 5000)


def as_float(k_places) -> float:
    k, places = k_places
    return k / 10 ** places


def as_fraction(k_places) -> Fraction:
    k, places = k_places
    return Fraction(k, 10 ** places)


def expected(m: int, n: int, R: Fraction, K: Fraction) -> dict:
    """The README's formulas: r = floor(kappa (1 - rho) m n / (m + n)); each row keeps
    n - floor(n (1 - (1 - kappa)(1 - rho))); 'layer' keeps m n - floor(m n (1 - (1 - kappa)(1 - rho)))."""
    p = 1 - (1 - K) * (1 - R)
    return {"rank": floor(K * (1 - R) * m * n / (m + n)), "row": n - floor(n * p), "layer": m * n - floor(m * n * p),
            "lowrank": min(floor((1 - R) * m * n / (m + n)), m, n), "dense": floor((1 - R) * m * n)}


@given(m=dims, n=dims, rho=rates, kappa=kappas)
@example(m=48, n=80, rho=(2, 1), kappa=(0, 1))        # 80 x 0.2 = 16 exactly: keep 64, not 65
@example(m=100, n=100, rho=(3, 1), kappa=(2, 1))      # 0.2 x 0.7 x 50 = 7 exactly: rank 7, not 6
@example(m=64, n=96, rho=(7, 1), kappa=(25, 2))
def test_budgets_equal_the_formulas_exactly(m, n, rho, kappa):
    R, K = as_fraction(rho), as_fraction(kappa)
    cfg = OatsConfig(compression=as_float(rho), rank_ratio=as_float(kappa))
    e = expected(m, n, R, K)
    assert rank_budget(m, n, cfg) == e["rank"]
    assert row_keep(n, cfg) == e["row"]
    assert prune_fraction(cfg) == 1 - (1 - K) * (1 - R)
    assert sparse_budget(m, n, cfg) == m * e["row"]
    assert sparse_budget(m, n, cfg.replace(sparsity="layer")) == e["layer"]
    assert lowrank_rank(m, n, cfg) == e["lowrank"]
    assert dense_budget(m, n, cfg) == e["dense"]


@given(m=dims, n=dims, rho=rates, kappa=kappas)
@example(m=10, n=10, rho=(25, 2), kappa=(0, 1))   # 7.5 entries per row round up to 8
def test_parameter_count_against_the_rate(m, n, rho, kappa):
    """params = r (m + n) + nnz(S). The rank rounds down, each row's keep count rounds up
    (the paper's formula), so 'row' can exceed (1 - rho) m n, by less than one entry per row,
    and only when n (1 - kappa)(1 - rho) is not a whole number; 'layer' by less than one entry."""
    R, K = as_fraction(rho), as_fraction(kappa)
    cfg = OatsConfig(compression=as_float(rho), rank_ratio=as_float(kappa))
    r = rank_budget(m, n, cfg)
    limit = (1 - R) * m * n
    assert r * (m + n) <= K * limit
    row_params = r * (m + n) + sparse_budget(m, n, cfg)
    layer_params = r * (m + n) + sparse_budget(m, n, cfg.replace(sparsity="layer"))
    assert row_params - limit < m
    assert layer_params - limit < 1
    assert layer_params <= row_params
    if (n * (1 - K) * (1 - R)).denominator == 1:
        assert row_params <= limit
    if (m * n * (1 - K) * (1 - R)).denominator == 1:
        assert layer_params <= limit
    if K == 0:  # Wanda / magnitude: exactly ceil(n (1 - rho)) per row
        assert row_params == m * ceil(n * (1 - R))


nm_patterns = st.integers(2, 16).flatmap(lambda big: st.tuples(st.integers(1, big - 1), st.just(big)))


@given(m=dims, groups=st.integers(1, 300), nm=nm_patterns, kappa=kappas)
def test_nm_budgets_exactly(m, groups, nm, kappa):
    """N:M: each row keeps N of every M; the rank comes from the density (N/M) / (1 - kappa);
    a density of 1 or more is refused. params never exceed density * m * n."""
    big_n, big_m = nm
    n = groups * big_m
    K = as_fraction(kappa)
    density = Fraction(big_n, big_m) / (1 - K)
    if density >= 1:
        with pytest.raises(ConfigError, match="keeps everything"):
            OatsConfig(rank_ratio=as_float(kappa), sparsity=f"{big_n}:{big_m}")
        return
    cfg = OatsConfig(rank_ratio=as_float(kappa), sparsity=f"{big_n}:{big_m}")
    assert cfg.kept == density
    r = rank_budget(m, n, cfg)
    assert r == floor(K * density * m * n / (m + n))
    assert sparse_budget(m, n, cfg) == m * groups * big_n and type(sparse_budget(m, n, cfg)) is int
    assert r * (m + n) + sparse_budget(m, n, cfg) <= density * m * n
    assert dense_budget(m, n, cfg) == floor(density * m * n)


@given(rho=rates, kappa=kappas)
def test_config_rates_are_the_decimals_written(rho, kappa):
    cfg = OatsConfig(compression=as_float(rho), rank_ratio=as_float(kappa))
    assert cfg.kept == 1 - as_fraction(rho)
    assert cfg.density == float(1 - as_fraction(rho))
    assert cfg.effective_compression == float(as_fraction(rho))
    # the same rate given as text reads the same
    assert OatsConfig(compression=str(as_float(rho)), rank_ratio=str(as_float(kappa))) == cfg


@given(m=st.integers(1, 12), n=st.integers(1, 40), rho=rates, kappa=kappas,
       sparsity=st.sampled_from(["row", "layer"]), seed=st.integers(0, 2 ** 16))
def test_threshold_keeps_the_budget(m, n, rho, kappa, sparsity, seed):
    """The projection keeps exactly the budget's count (row: per row; layer: in total), the
    largest entries by magnitude, unchanged."""
    cfg = OatsConfig(compression=as_float(rho), rank_ratio=as_float(kappa), sparsity=sparsity)
    x = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    s = hard_threshold(x, cfg)
    kept = s != 0
    e = expected(m, n, as_fraction(rho), as_fraction(kappa))
    if sparsity == "row":
        assert torch.equal(kept.sum(1), torch.full((m,), e["row"]))
        if 0 < e["row"] < n:  # every kept entry is at least every dropped one, row by row
            low = x.abs().masked_fill(~kept, float("inf")).min(1).values
            high = x.abs().masked_fill(kept, -1.0).max(1).values
            assert bool((low >= high).all())
    else:
        assert int(kept.sum()) == e["layer"]
    assert torch.equal(s[kept], x[kept])


@given(total=st.integers(0, 10 ** 6), width=st.integers(1, 5000), block=st.integers(1, 512))
def test_sparsegpt_block_shares_add_up(total, width, block):
    """SparseGPT spreads a prune count over the column blocks; the shares add up to it exactly."""
    shares = [_cumulative_share(total, i, min(i + block, width), width) for i in range(0, width, block)]
    assert sum(shares) == total and min(shares) >= 0


def test_worked_budget_examples():
    """Two budgets worked by hand: 80 inputs at rate 0.2 keep 64 per row; a 100x100 matrix at
    rate 0.3 and rank ratio 0.2 gets rank floor(0.2 * 0.7 * 10^4 / 200) = 7."""
    assert row_keep(80, OatsConfig(compression=0.2, rank_ratio=0.0)) == 64
    assert rank_budget(100, 100, OatsConfig(compression=0.3, rank_ratio=0.2)) == 7
    # the same rate from arithmetic reads as the decimal it prints as
    assert row_keep(80, OatsConfig(compression=1 - 0.8, rank_ratio=0.0)) == 80 - 15  # 0.19999999999999996
