"""Unit tests of the decomposition core on plain matrices (no models)."""

import importlib
import math
from fractions import Fraction

import pytest
import torch

from oats import OatsConfig, decompose, decompose_many
from oats.core.decompose import hard_threshold, input_scale, prune_fraction, rank_budget, row_keep, sparse_budget
from oats.errors import ConfigError

SHAPES = [(64, 64), (96, 32), (32, 96), (48, 80)]
# (0.2, 0.0) and (0.7, 0.25) put products such as 80 x 0.2 exactly on an integer
RATES = [(0.3, 0.2), (0.5, 0.25), (0.6, 0.3), (0.5, 0.0), (0.7, 0.5), (0.2, 0.0), (0.7, 0.25)]


def _problem(m, n, seed=0, outliers=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g) / math.sqrt(n)
    scale = torch.exp(torch.randn(n, generator=g))
    if outliers:
        scale[: max(1, n // 16)] *= 20.0  # a few outlier channels, as in real activations
    x = torch.randn(512, n, generator=g) * scale
    return w, x.pow(2).mean(0)


def _floor_frac(x: Fraction) -> int:
    return x.numerator // x.denominator


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("rho,kappa", RATES)
def test_budget_formulas_are_exact(m, n, rho, kappa):
    cfg = OatsConfig(compression=rho, rank_ratio=kappa)
    R, K = Fraction(str(rho)), Fraction(str(kappa))
    assert rank_budget(m, n, cfg) == _floor_frac(K * (1 - R) * m * n / (m + n))
    assert row_keep(n, cfg) == n - _floor_frac(n * (1 - (1 - K) * (1 - R)))


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("rho,kappa", RATES)
@pytest.mark.parametrize("solver", ["exact", "fast"])
def test_decomposition_meets_budget(m, n, rho, kappa, solver):
    w, m2 = _problem(m, n)
    cfg = OatsConfig(compression=rho, rank_ratio=kappa, iterations=6, solver=solver)
    dec = decompose(w, m2, cfg)
    r = rank_budget(m, n, cfg)
    k = row_keep(n, cfg)
    assert dec.rank == r and dec.u.shape == (m, r) and dec.v.shape == (r, n)
    assert torch.equal((dec.sparse != 0).sum(1), torch.full((m,), k))
    # the whole budget: r (m + n) + nnz = (1 - rho) m n up to the integer rounding; the row
    # keep count rounds up (the paper's formula), so it may exceed by less than one per row
    limit = (1 - Fraction(str(rho))) * m * n
    assert -(m + n) < dec.params - limit < m
    if (n * (1 - Fraction(str(kappa))) * (1 - Fraction(str(rho)))).denominator == 1:
        assert dec.params <= limit
    assert torch.allclose(dec.dense(), dec.sparse + dec.u @ dec.v)


def _wanda_mask(w, m2, rho):
    metric = w.abs() * m2.sqrt()
    idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(w.shape[1] * rho)]
    return torch.ones_like(w, dtype=torch.bool).scatter_(1, idx, False)


@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("rho", [0.3, 0.5, 0.7])
def test_rank_ratio_zero_is_wanda(m, n, rho):
    w, m2 = _problem(m, n, seed=3)
    dec = decompose(w, m2, OatsConfig(compression=rho, rank_ratio=0.0))
    assert dec.rank == 0
    mask = _wanda_mask(w, m2, rho)
    assert torch.equal(dec.sparse != 0, mask)
    assert torch.allclose(dec.sparse[mask], w[mask], rtol=1e-6, atol=0)
    assert torch.equal(dec.dense(), dec.sparse)


@pytest.mark.parametrize("sparsity", ["row", "layer", "2:4", "4:8"])
@pytest.mark.parametrize("solver", ["exact", "fast"])
@pytest.mark.parametrize("m,n", [(64, 64), (96, 32), (32, 96)])
def test_history_non_increasing(sparsity, solver, m, n):
    w, m2 = _problem(m, n, seed=5)
    dec = decompose(w, m2, OatsConfig(compression=0.5, rank_ratio=0.3, iterations=25, sparsity=sparsity,
                                      solver=solver, tol=0.0))
    h = dec.history.error
    assert len(h) == 25
    assert all(b <= a * (1 + 1e-5) + 1e-7 for a, b in zip(h, h[1:])), h
    assert h[-1] < h[0]  # the alternation actually improves on the first iterate
    # error and energies are consistent with the factors
    d = dec.scale
    err = ((w - dec.dense()) * d).norm() / (w * d).norm()
    assert abs(float(err) - h[-1]) < 1e-4
    se = float(((dec.sparse * d).norm() / (w * d).norm()) ** 2)
    le = float(((dec.lowrank() * d).norm() / (w * d).norm()) ** 2)
    assert abs(se - dec.history.sparse_energy[-1]) < 1e-4
    assert abs(le - dec.history.lowrank_energy[-1]) < 1e-4


@pytest.mark.parametrize("n_keep,m_group", [(2, 4), (4, 8), (1, 4), (2, 8)])
@pytest.mark.parametrize("kappa", [0.0, 0.25])
def test_nm_masks_valid(n_keep, m_group, kappa):
    w, m2 = _problem(48, 64, seed=7)
    cfg = OatsConfig(rank_ratio=kappa, sparsity=f"{n_keep}:{m_group}", iterations=5)
    dec = decompose(w, m2, cfg)
    groups = (dec.sparse != 0).reshape(48, 64 // m_group, m_group).sum(-1)
    assert torch.equal(groups, torch.full_like(groups, n_keep))
    density = Fraction(n_keep, m_group) / (1 - Fraction(str(kappa)))
    assert dec.rank == _floor_frac(Fraction(str(kappa)) * density * 48 * 64 / (48 + 64))
    assert cfg.effective_compression == pytest.approx(1 - float(density))


def test_nm_pattern_must_divide_input():
    w, m2 = _problem(16, 30)
    with pytest.raises(ConfigError, match="multiple of 4"):
        decompose(w, m2, OatsConfig(sparsity="2:4"))


@pytest.mark.parametrize("rho,kappa", RATES)
@pytest.mark.parametrize("m,n", SHAPES)
def test_layerwise_meets_total_exactly(rho, kappa, m, n):
    w, m2 = _problem(m, n, seed=11)
    cfg = OatsConfig(compression=rho, rank_ratio=kappa, sparsity="layer", iterations=5)
    dec = decompose(w, m2, cfg)
    total = m * n - _floor_frac(m * n * (1 - (1 - Fraction(str(kappa))) * (1 - Fraction(str(rho)))))
    assert dec.nnz == total == sparse_budget(m, n, cfg)
    # one threshold for the matrix: rows may differ in count
    assert (dec.sparse != 0).sum(1).unique().numel() > 1


def test_all_zero_input_channels_stay_finite():
    w, m2 = _problem(64, 64, seed=2)
    m2[:5] = 0.0
    for solver in ("exact", "fast"):
        dec = decompose(w, m2, OatsConfig(rank_ratio=0.25, iterations=10, solver=solver))
        for t in (dec.sparse, dec.u, dec.v, dec.scale):
            assert torch.isfinite(t).all()
        assert (dec.scale > 0).all()
        # a channel that never fires carries nothing worth keeping in the sparse term
        assert (dec.sparse[:, :5] != 0).sum() == 0
        # its reconstruction stays on the weight's own scale, not blown up by 1/D
        assert dec.dense()[:, :5].abs().max() < 10 * w.abs().max()
    d = input_scale(torch.zeros(8), 8, 1e-4)
    assert torch.equal(d, torch.ones(8))  # nothing fired at all: unscaled


def test_unscaled_is_magnitude():
    w, _ = _problem(32, 64, seed=4)
    dec = decompose(w, None, OatsConfig(compression=0.5, rank_ratio=0.0))
    idx = torch.sort(w.abs(), dim=-1, stable=True)[1][:, :32]
    mask = torch.ones_like(w, dtype=torch.bool).scatter_(1, idx, False)
    assert torch.equal(dec.sparse != 0, mask)


def test_threshold_counts_exact_with_ties():
    r = torch.zeros(4, 10)  # all ties
    out = hard_threshold(r + 1.0, OatsConfig(compression=0.5, rank_ratio=0.0))
    assert torch.equal((out != 0).sum(1), torch.full((4,), 5))


def _spy_batches(monkeypatch):
    """Record the batch size of every solve."""
    dm = importlib.import_module("oats.core.decompose")  # (oats.decompose is also the function)
    seen, original = [], dm._solve

    def spy(a, *args, **kwargs):
        seen.append(a.shape[0])
        return original(a, *args, **kwargs)

    monkeypatch.setattr(dm, "_solve", spy)
    return seen


@pytest.mark.parametrize("sparsity,kappa", [("row", 0.25), ("layer", 0.3), ("2:4", 0.25), ("row", 0.0)])
def test_batched_solver_equals_single_exact(monkeypatch, sparsity, kappa):
    """The batched solver (what a GPU runs), forced on the CPU, against one matrix at a time."""
    problems = [_problem(48, 32, seed=s) for s in (1, 2, 3)]
    cfg = OatsConfig(rank_ratio=kappa, iterations=12, solver="exact", sparsity=sparsity)
    seen = _spy_batches(monkeypatch)
    both = decompose_many([w for w, _ in problems], [m2 for _, m2 in problems], cfg, batched=True)
    assert seen == [3]
    seen.clear()
    for (w, m2), dec in zip(problems, both):
        one = decompose(w, m2, cfg)
        assert torch.equal(dec.sparse != 0, one.sparse != 0)
        assert torch.allclose(dec.dense(), one.dense(), atol=1e-5)
        assert dec.rank == one.rank and dec.iterations == one.iterations
        assert dec.history.error == pytest.approx(one.history.error, rel=1e-5)
    assert seen == [1, 1, 1]


def test_batched_fast_solver_matches_single(monkeypatch):
    """Fast solver, batched on the CPU: same budgets as alone, and each member within the fast
    solver's tolerance (0.5%) of the exact solver at the same iteration cap."""
    g = torch.Generator().manual_seed(7)
    problems = [_problem(64, 48, seed=s) for s in (4, 5, 6)] + [(torch.randn(64, 48, generator=g) * 1e-3, None)]
    cfg = OatsConfig(iterations=60)
    seen = _spy_batches(monkeypatch)
    both = decompose_many([w for w, _ in problems], [m2 for _, m2 in problems], cfg, batched=True)
    assert seen == [4]
    for (w, m2), dec in zip(problems, both):
        one = decompose(w, m2, cfg)
        assert dec.rank == one.rank == rank_budget(64, 48, cfg)
        assert torch.equal((dec.sparse != 0).sum(1), (one.sparse != 0).sum(1))
        exact = decompose(w, m2, cfg.replace(solver="exact"))
        assert dec.error <= exact.error * 1.005 and one.error <= exact.error * 1.005
        d = dec.scale
        assert float(((w - dec.dense()) * d).norm() / (w * d).norm()) == pytest.approx(dec.error, rel=1e-4)


def test_fast_solver_matches_exact_on_structured_matrix():
    w, m2 = _problem(128, 96, seed=9)
    e = decompose(w, m2, OatsConfig(iterations=80, solver="exact"))
    f = decompose(w, m2, OatsConfig(iterations=80, solver="fast"))
    assert f.error <= e.error * 1.005


def test_trace_sees_every_iteration():
    w, m2 = _problem(32, 32)
    seen = []
    decompose(w, m2, OatsConfig(iterations=4, solver="exact"), trace=lambda t, l, s: seen.append((t, l.shape, s.shape)))
    assert [t for t, _, _ in seen] == [1, 2, 3, 4] and seen[0][1] == (32, 32)


@pytest.mark.parametrize("kwargs,message", [
    (dict(compression=0), "compression must be in (0, 1)"),
    (dict(compression=1), "compression must be in (0, 1)"),
    (dict(compression=-0.1), "compression must be in (0, 1)"),
    (dict(compression="abc"), "compression must be a number in (0, 1), got 'abc'"),
    (dict(rank_ratio=1), "rank_ratio must be in [0, 1)"),
    (dict(iterations=0), "iterations must be a whole number of at least 1, got 0"),
    (dict(iterations=2.5), "iterations must be a whole number of at least 1, got 2.5"),
    (dict(sparsity="3:2"), "N:M needs 0 < N < M"),
    (dict(sparsity="2:0"), "N:M needs 0 < N < M"),
    (dict(sparsity="diagonal"), "sparsity pattern 'diagonal' is not understood"),
    (dict(solver="magic"), "solver must be one of fast, exact"),
    (dict(sparsity="3:4", rank_ratio=0.3), "keeps everything"),
])
def test_config_validation_messages(kwargs, message):
    with pytest.raises(ConfigError) as e:
        OatsConfig(**kwargs)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_config_normalises_strings():
    cfg = OatsConfig(compression="0.4", rank_ratio="0.2", iterations="10", sparsity=" 2:4 ")
    assert (cfg.compression, cfg.rank_ratio, cfg.iterations, cfg.sparsity) == (0.4, 0.2, 10, "2:4")
    assert prune_fraction(OatsConfig(0.5, 0.25)) == pytest.approx(0.625)


# ----------------------------------------------------------------------------- what mutation testing found


@pytest.mark.parametrize("rho", [0.3, 0.7])  # keeps 70% (drops the smallest) / 30% (keeps the largest)
def test_threshold_on_other_dtypes_equals_the_cpu_float32_path(rho):
    """float64 (or a GPU) takes the generic topk path; it must pick what the CPU float32 path
    picks, on batched (B, m, n) input."""
    cfg = OatsConfig(compression=rho, rank_ratio=0.0)
    r = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    generic = hard_threshold(r, cfg)
    cpu = hard_threshold(r.float(), cfg)
    assert generic.dtype == torch.float64
    assert torch.equal(generic != 0, cpu != 0)
    assert torch.equal(generic[generic != 0], r[generic != 0])
    assert torch.equal((generic != 0).sum(-1), torch.full((3, 5), row_keep(40, cfg)))


def test_input_scale_floor_dtype_and_messages():
    m2 = torch.tensor([0.0, 4.0, 9.0, 16.0], dtype=torch.float64)
    d = input_scale(m2, 4, 1e-2)
    assert d.dtype == torch.float32
    assert d.tolist()[1:] == [2.0, 3.0, 4.0]
    assert float(d[0]) == pytest.approx(1e-2 * (0 + 2 + 3 + 4) / 4)  # floored at eps * mean(D)
    assert torch.equal(input_scale(None, 3, 1e-4), torch.ones(3))
    with pytest.raises(ConfigError) as e:
        input_scale(torch.ones(3), 4, 1e-4)
    assert str(e.value) == "second_moments has 3 entries but the weight has d_in = 4"
    with pytest.raises(ConfigError) as e:
        input_scale(torch.tensor([1.0, float("nan")]), 2, 1e-4)
    assert str(e.value) == ("input statistics contain NaN or inf: check the model's activations on the "
                            "calibration data")


def test_rank_zero_trace_and_factors():
    """kappa = 0: one threshold, the walkthrough still sees S, no singular values."""
    w, m2 = _problem(32, 48, seed=3)
    seen = []
    dec = decompose(w, m2, OatsConfig(rank_ratio=0.0), trace=lambda t, l, s: seen.append((t, l, s)))
    assert [t for t, _, _ in seen] == [1] and torch.equal(seen[0][1], torch.zeros(32, 48))
    assert torch.allclose(seen[0][2] / dec.scale, dec.sparse)
    assert dec.rank == 0 and dec.singular_values.numel() == 0
    assert dec.history.lowrank_energy == [0.0]


def test_fast_solver_stops_early_and_tol_zero_runs_every_iteration():
    w, m2 = _problem(64, 64, seed=8)
    cfg = OatsConfig(iterations=80)
    early = decompose(w, m2, cfg)
    assert 8 <= early.iterations < 80  # (_MIN_ITERS, then the tol rule)
    # the stop rule (README): the relative decrease over the last three iterations is below
    # 3 tol; it stops at the first iteration from the 8th on where that holds, not before
    h = early.history.error
    stop = [i for i in range(7, len(h)) if h[i - 3] - h[i] <= 3 * cfg.tol * h[i]]
    assert stop == [len(h) - 1], (stop, len(h))
    # relative, so the weights' scale does not matter
    assert decompose(w * 1e-3, m2, cfg).iterations == early.iterations
    assert decompose(w, m2, cfg.replace(tol=0.0)).iterations == 80


def test_restarts_keep_the_error_history_monotone_in_a_batch(monkeypatch):
    """Too much momentum makes iterations overshoot; each is redone exactly (batched too),
    so every member's error history still never rises."""
    dm = importlib.import_module("oats.core.decompose")
    monkeypatch.setattr(dm, "_MOMENTUM", 3.0)
    exact_svds = []  # the fast solver takes an exact SVD only to redo an iteration that overshot
    real_exact = dm._exact_l
    monkeypatch.setattr(dm, "_exact_l", lambda *a: exact_svds.append(1) or real_exact(*a))
    problems = [_problem(48, 32, seed=s) for s in (1, 2, 3)]
    cfg = OatsConfig(iterations=20, tol=0.0)
    assert cfg.solver == "fast"
    decs = decompose_many([w for w, _ in problems], [m2 for _, m2 in problems], cfg, batched=True)
    assert len(exact_svds) > 0
    for (w, m2), dec in zip(problems, decs):
        h = dec.history.error
        assert all(b <= a * (1 + 1e-5) for a, b in zip(h, h[1:])), h
        assert dec.singular_values.shape == (dec.rank,)
        assert float(((w - dec.dense()) * dec.scale).norm() / (w * dec.scale).norm()) == pytest.approx(h[-1], rel=1e-4)
