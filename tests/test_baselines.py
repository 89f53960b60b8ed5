"""Baselines (magnitude, Wanda, SparseGPT, low-rank only), the Gram statistics and OWL
allocation: budgets to the integer, defining properties, validation. Tiny models built here;
real layers under -m integration."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest
import torch

from oats import OatsConfig, compress_model, decompose, load_run, save_run
from oats.compress.allocation import Owl, outlier_ratio, owl_rates, parse_allocation
from oats.core.decompose import lowrank_rank
from oats.methods.lowrank import lowrank_only
from oats.methods.magnitude import magnitude
from oats.methods.sparsegpt import sparsegpt
from oats.methods.wanda import wanda
from oats.compress.calibration import SecondMoments
from oats.core.decompose import rank_budget, row_keep, sparse_budget
from oats.errors import ConfigError
from oats.compress.statistics import dense_layer_stats
from oats.methods import METHODS

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=6)


from tiny_models import assert_cli_fails, batches, tiny_llama  # noqa: E402


def correlated_problem(m=48, n=96, tokens=1024, seed=0):
    """A weight and inputs with correlated channels and a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g) / math.sqrt(n)
    mix = torch.randn(n, n, generator=g) / math.sqrt(n) + torch.eye(n)
    scale = torch.exp(0.5 * torch.randn(n, generator=g))
    scale[:4] *= 10.0
    x = (torch.randn(tokens, n, generator=g) @ mix) * scale
    return w, x, x.T @ x / tokens, x.square().mean(0)


def output_error(x, w, w2):
    return float((x @ (w - w2).T).norm() / (x @ w.T).norm())


# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("rho", [0.3, 0.6])
def test_every_method_spends_the_budget_per_matrix(method, rho):
    cfg = CFG.replace(compression=rho)
    run = compress_model(tiny_llama(), batches(), cfg, method=method)
    assert len(run.layers) == 14
    for r in run.layers:
        d_out, d_in = r.shape
        budget = (1 - rho) * d_out * d_in
        rows = (run.factors(r.qualname)["sparse"] != 0).sum(1)
        if method == "oats":
            assert r.rank == rank_budget(d_out, d_in, cfg)
            assert torch.equal(rows, torch.full((d_out,), row_keep(d_in, cfg)))
        elif method == "lowrank":
            R = Fraction(str(rho))
            assert r.rank == int((1 - R) * d_out * d_in // (d_out + d_in)) == lowrank_rank(d_out, d_in, cfg)
            assert r.nnz == 0
        elif method == "hassle" and r.rank > 0:  # OATS's split; rank 0 when SparseGPT alone was better
            assert r.rank == rank_budget(d_out, d_in, cfg)
            assert torch.equal(rows, torch.full((d_out,), row_keep(d_in, cfg)))
        else:
            assert r.rank == 0
            assert torch.equal(rows, torch.full((d_out,), d_in - int(d_in * rho)))
        # the whole budget, up to each matrix's integer rounding: one entry per row (the row
        # keep count d_in - floor(d_in rho) rounds up, as in the reference) or one rank
        assert abs(r.params - budget) <= d_out + d_in
        assert r.budget == int(budget + 1e-9)
        assert r.output_error is not None and 0 < r.output_error < 1.5


# Every method's budget note in its run's manifest, and the Gram collected exactly for the methods
# whose record asks for it: tests/test_contracts_methods.py, over the registry.


def test_gram_statistics_match_direct_computation():
    lin = torch.nn.Linear(8, 4)
    stats = SecondMoments()
    stats.hook("x", lin, gram=True)
    plain = SecondMoments()
    plain.hook("x", lin)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    masks = [torch.rand(2, 5, generator=g) > 0.3 for _ in range(3)]
    for x, mk in zip(xs, masks):
        stats.current_mask = plain.current_mask = mk
        lin(x)
    real = torch.cat([x[mk] for x, mk in zip(xs, masks)])
    assert torch.allclose(stats.gram("x"), real.T @ real / real.shape[0], atol=1e-6)
    assert torch.allclose(torch.diagonal(stats.gram("x")), stats.mean("x"), atol=1e-6)
    assert torch.equal(plain.mean("x"), stats.mean("x")) and not plain.grams
    with pytest.raises(KeyError, match="gram=True"):
        plain.gram("x")


# ----------------------------------------------------------------------------- SparseGPT


@pytest.mark.parametrize("sparsity", ["row", "layer", "2:4", "4:8"])
@pytest.mark.parametrize("shape", [(48, 96), (40, 296)])
def test_sparsegpt_budget_and_reconstruction(sparsity, shape):
    w, x, gram, m2 = correlated_problem(*shape)
    cfg = OatsConfig(compression=0.5, rank_ratio=0.25, sparsity=sparsity)
    s = sparsegpt(w, gram, cfg, blocksize=32)
    wd = wanda(w, m2, cfg)
    m, n = shape
    assert s.rank == 0 and s.nnz == wd.nnz == sparse_budget(m, n, cfg.replace(rank_ratio=0.0))
    counts = (s.sparse != 0).sum(1)
    if sparsity == "row":
        assert torch.equal(counts, torch.full((m,), row_keep(n, cfg.replace(rank_ratio=0.0))))
    elif sparsity == "layer":
        assert counts.unique().numel() > 1  # one budget for the matrix
    else:
        k, mm = map(int, sparsity.split(":"))
        groups = (s.sparse != 0).reshape(m, n // mm, mm).sum(-1)
        assert torch.equal(groups, torch.full_like(groups, k))
    # its defining property: lower output error on its calibration inputs than Wanda's mask
    assert output_error(x, w, s.dense()) < 0.9 * output_error(x, w, wd.dense())
    # the history is the scaled error of the result
    d = s.scale
    assert s.error == pytest.approx(float(((w - s.sparse) * d).norm() / (w * d).norm()), rel=1e-5)
    assert torch.allclose(d, m2.sqrt(), rtol=1e-5)


def test_sparsegpt_with_diagonal_gram_is_wanda_on_damped_norms():
    """No correlations: no weight updates, and the mask is Wanda's on m2 + damp."""
    w, _x, _g, m2 = correlated_problem(32, 64, seed=3)
    cfg = OatsConfig(compression=0.5, rank_ratio=0.0)
    s = sparsegpt(w, torch.diag(m2), cfg, blocksize=64, percdamp=0.01)
    wd = wanda(w, m2 + 0.01 * m2.mean(), cfg)
    assert torch.equal(s.sparse != 0, wd.sparse != 0)
    kept = s.sparse != 0
    assert torch.allclose(s.sparse[kept], w[kept], atol=1e-6)


def test_sparsegpt_handles_dead_channels_and_validates():
    w, x, gram, _ = correlated_problem(16, 32, seed=5)
    x[:, :3] = 0
    gram = x.T @ x / x.shape[0]
    s = sparsegpt(w, gram, OatsConfig(compression=0.5))
    assert torch.isfinite(s.sparse).all()
    assert (s.sparse[:, :3] != 0).sum() == 0  # an input that never fires is pruned first
    assert torch.isfinite(sparsegpt(w, torch.zeros(32, 32), OatsConfig()).sparse).all()
    with pytest.raises(ConfigError, match="Gram matrix is"):
        sparsegpt(w, gram[:8, :8], OatsConfig())
    with pytest.raises(ConfigError, match="multiple of 4"):
        sparsegpt(w[:, :30], gram[:30, :30], OatsConfig(sparsity="2:4"))
    bad = gram.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        sparsegpt(w, bad, OatsConfig())


# ----------------------------------------------------------------------------- low rank, magnitude, wanda


@pytest.mark.parametrize("shape", [(48, 96), (96, 48), (64, 64)])
@pytest.mark.parametrize("rho", [0.3, 0.5, 0.8])
def test_lowrank_only_is_the_truncated_svd(shape, rho):
    w, _x, _g, m2 = correlated_problem(*shape)
    cfg = OatsConfig(compression=rho)
    dec = lowrank_only(w, m2, cfg)
    m, n = shape
    r = int((1 - Fraction(str(rho))) * m * n // (m + n))
    assert dec.rank == r and dec.nnz == 0 and dec.params <= (1 - rho) * m * n
    a = w * dec.scale
    sv = torch.linalg.svdvals(a)
    best = float(sv[r:].square().sum().sqrt() / sv.square().sum().sqrt())  # Eckart-Young
    assert dec.error == pytest.approx(best, rel=1e-4)
    assert float(((w - dec.dense()) * dec.scale).norm() / a.norm()) == pytest.approx(best, rel=1e-4)
    with pytest.raises(ConfigError, match="no sparse term"):
        lowrank_only(w, m2, OatsConfig(sparsity="2:4"))


def test_magnitude_and_wanda_are_rank_zero_decompositions():
    w, _x, _g, m2 = correlated_problem(32, 64)
    cfg = OatsConfig(compression=0.5, rank_ratio=0.3)
    assert torch.equal(wanda(w, m2, cfg).sparse, decompose(w, m2, cfg.replace(rank_ratio=0.0)).sparse)
    assert torch.equal(magnitude(w, cfg).sparse, decompose(w, None, cfg.replace(rank_ratio=0.0)).sparse)


def test_pipeline_rejects_bad_method_combinations():
    with pytest.raises(ConfigError, match="low-rank method has no sparse term"):
        compress_model(tiny_llama(layers=1), batches(), OatsConfig(sparsity="2:4"), method="lowrank")
    with pytest.raises(ConfigError, match="unknown method 'sparsegtp'"):
        compress_model(tiny_llama(layers=1), batches(), CFG, method="sparsegtp")


# ----------------------------------------------------------------------------- OWL


def test_owl_rates_keep_the_mean_and_the_deviation():
    ratios = [0.010, 0.030, 0.020, 0.002, 0.050, 0.011]
    for rho, lam in [(0.5, 0.08), (0.3, 0.1), (0.7, 0.05)]:
        rates = owl_rates(ratios, rho, lam)
        assert sum(rates) / len(rates) == pytest.approx(rho, abs=1e-12)
        assert max(abs(r - rho) for r in rates) == pytest.approx(lam, abs=1e-12)
        # more outliers, lower rate (strictly, by rank)
        order = sorted(range(len(ratios)), key=ratios.__getitem__)
        assert all(rates[a] > rates[b] for a, b in zip(order, order[1:]))
    assert owl_rates([0.02] * 4, 0.5, 0.08) == [0.5] * 4
    assert owl_rates(ratios, 0.5, 0.0) == [0.5] * len(ratios)
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 20.0])], 3.0) == 0.25


@pytest.mark.parametrize("kwargs,config,message", [
    (dict(lam=-0.1), None, "OWL lambda must be in [0, 1)"),
    (dict(lam="x"), None, "OWL lambda must be a number"),
    (dict(threshold=1.0), None, "OWL threshold M must be > 1"),
    (dict(lam=0.3), OatsConfig(compression=0.2), "use lambda < 0.2"),
    (dict(lam=0.1), OatsConfig(sparsity="2:4"), "fixes"),
])
def test_owl_parameters_are_validated(kwargs, config, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        Owl(**kwargs).check(config or OatsConfig())
    with pytest.raises(ConfigError, match="unknown allocation"):
        parse_allocation("greedy")
    with pytest.raises(ConfigError, match="only apply with allocation 'owl'"):
        parse_allocation("uniform", lam=0.1)


def test_owl_allocation_in_the_pipeline(tmp_path):
    model = tiny_llama(layers=4)
    base = copy.deepcopy(model)
    run = compress_model(model, batches(), CFG, method="wanda", allocation="owl", model_name="tiny")
    rates = run.block_rates
    assert len(rates) == 4 and sum(rates) / 4 == pytest.approx(0.5, abs=1e-12)
    assert max(abs(r - 0.5) for r in rates) == pytest.approx(0.08, abs=1e-12)
    assert run.allocation["name"] == "owl" and len(run.allocation["outlier_ratios"]) == 4
    for r in run.layers:  # each block spends its own rate
        d_out, d_in = r.shape
        assert r.nnz == d_out * (d_in - int(d_in * rates[r.block]))
    kept = run.params_kept / run.params_dense
    assert kept == pytest.approx(0.5, abs=0.01)
    save_run(run, tmp_path / "r")
    again = load_run(tmp_path / "r", model=base)
    assert again.block_rates == rates and again.allocation["lam"] == 0.08
    with pytest.raises(ConfigError, match="another budget allocation"):
        compress_model(tiny_llama(layers=4), batches(), CFG, method="wanda", resume=again)
    with pytest.raises(ConfigError, match="one per block"):
        compress_model(tiny_llama(layers=4), batches(), CFG, block_rates=[0.5, 0.5])
    with pytest.raises(ConfigError, match="compression must be in"):
        compress_model(tiny_llama(layers=2), batches(), CFG, block_rates=[0.5, 1.2])


@pytest.mark.parametrize("argv,message", [
    (["compress", "minilm-l6", "--allocation", "greedy"], "unknown allocation 'greedy'"),
    (["compress", "minilm-l6", "--allocation", "owl", "--owl-lambda", "0.6"], "use lambda < 0.5"),
    (["compress", "minilm-l6", "--owl-m", "0.5", "--allocation", "owl"], "OWL threshold M must be > 1"),
    (["compress", "minilm-l6", "--method", "lowrank", "--sparsity", "2:4"], "no sparse term"),
])
def test_cli_allocation_errors_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    assert_cli_fails(argv, message, capsys)


# ----------------------------------------------------------------------------- real layers


@pytest.mark.integration
@pytest.mark.parametrize("name", ["minilm-l6", "smollm2-135m"])
def test_sparsegpt_and_oats_beat_wanda_on_real_layers(name):
    from oats.data import calibration_batches
    from oats.models.zoo import load_model, preset_available
    ok, how = preset_available(name)
    if not ok:
        pytest.fail(f"embedded model {name} is not installed: {how}")
    loaded = load_model(name)
    b = calibration_batches(loaded, n_samples=4 if loaded.task == "causal-lm" else 16,
                            **({"seq_len": 128} if loaded.task == "causal-lm" else {}))
    block = loaded.model.config.num_hidden_layers // 2
    layers = dense_layer_stats(loaded.model, b, blocks=[block], gram=True)
    cfg = OatsConfig(compression=0.5, rank_ratio=loaded.default_rank_ratio, iterations=40)

    def out_err(w, w2, g):  # ||X (W - W')^T|| / ||X W^T|| through the Gram matrix
        d = (w - w2).double()
        return float(((d @ g.double() * d).sum() / ((w.double() @ g.double()) * w.double()).sum()).sqrt())

    assert len(layers) >= 6
    for q, (w, m2, g) in layers.items():
        s, wd, o = sparsegpt(w, g, cfg), wanda(w, m2, cfg), decompose(w, m2, cfg)
        assert out_err(w, s.dense(), g) < out_err(w, wd.dense(), g), q
        assert o.error < wd.error, q
