"""Each method is what its name says, through the whole pipeline (tiny Llama, no downloads).

The masks are rebuilt here from the definitions: Wanda keeps each row's largest
|W_ij| * ||X_j|| (X: the layer's calibration inputs, captured here with hooks), magnitude
the largest |W_ij|; SparseGPT chooses differently and lowers the layer's output error.
"""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
from tiny_models import batches, tiny_llama

from oats import OatsConfig, compress_model, decompose

RHO = 0.5
CFG = OatsConfig(compression=RHO, rank_ratio=0.25, iterations=6)


def row_top(score: torch.Tensor, rho: float) -> torch.Tensor:
    """Each row keeps its d_in - floor(d_in rho) highest scores."""
    n = score.shape[1]
    keep = n - int(n * Fraction(str(rho)) // 1)
    idx = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :keep]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)


def block0_inputs(model, paths: list[str], data: list[dict]) -> dict[str, torch.Tensor]:
    """Mean x_j^2 over every calibration token of each linear at ``paths`` (dense model)."""
    sums, counts, hooks = {}, {}, []
    for p in paths:
        def hook(_m, inp, _out, p=p):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
            sums[p] = sums.get(p, 0) + x.square().sum(0)
            counts[p] = counts.get(p, 0) + x.shape[0]
        hooks.append(model.get_submodule(p).register_forward_hook(hook))
    with torch.no_grad():
        for b in data:
            model(**b)
    for h in hooks:
        h.remove()
    return {p: (sums[p] / counts[p]).float() for p in paths}


def anisotropic_llama(seed: int = 0):
    """The tiny Llama with inputs like a trained model's: correlated embedding channels and
    per-channel norm weights spread over an order of magnitude (random init gives nearly
    isotropic inputs, where Wanda is magnitude and SparseGPT has nothing to compensate)."""
    model = tiny_llama(seed, layers=2)
    g = torch.Generator().manual_seed(100 + seed)
    h = model.config.hidden_size
    with torch.no_grad():
        mix = torch.randn(h, h, generator=g) / h ** 0.5 + torch.eye(h)
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight @ mix)
        for layer in model.model.layers:
            layer.input_layernorm.weight.copy_(torch.exp(0.7 * torch.randn(h, generator=g)))
            layer.post_attention_layernorm.weight.copy_(torch.exp(0.7 * torch.randn(h, generator=g)))
    return model


def compressed(*methods: str):
    """{method: run} on copies of one anisotropic model, and block 0's input statistics
    captured here from the dense model. Built per test, so each test runs its own methods."""
    model = anisotropic_llama()
    dense = copy.deepcopy(model)
    out = {m: compress_model(copy.deepcopy(model), batches(), CFG, method=m) for m in methods}
    first = [r for r in out[methods[0]].layers if r.block == 0]
    m2 = block0_inputs(dense, [r.path for r in first], batches())
    return out, {r.qualname: m2[r.path] for r in first}


def test_wanda_masks_are_the_activation_weighted_row_top_k():
    out, m2 = compressed("wanda")
    run = out["wanda"]
    for rec in run.layers:
        f = run.factors(rec.qualname)
        if rec.block == 0:  # inputs captured here, from the dense model
            stats = m2[rec.qualname]
            assert torch.allclose(run.second_moments[rec.qualname], stats, rtol=1e-4, atol=1e-7)
        else:  # block 1 sees block 0's compressed outputs: the run's own statistics
            stats = run.second_moments[rec.qualname]
        want = row_top(f["weight"].abs() * stats.sqrt(), RHO)
        assert torch.equal(f["sparse"] != 0, want), rec.qualname
        assert torch.allclose(f["sparse"][want], f["weight"][want], rtol=1e-6, atol=0)
        assert rec.rank == 0
    # and they are not the magnitude masks (the inputs' scale matters)
    w = run.factors("0.q")["weight"]
    assert not torch.equal(run.factors("0.q")["sparse"] != 0, row_top(w.abs(), RHO))


def test_magnitude_masks_are_the_plain_row_top_k():
    out, _ = compressed("magnitude")
    run = out["magnitude"]
    for rec in run.layers:
        f = run.factors(rec.qualname)
        want = row_top(f["weight"].abs(), RHO)
        assert torch.equal(f["sparse"] != 0, want), rec.qualname
        assert torch.equal(f["sparse"][want], f["weight"][want])
        assert rec.rank == 0


def test_sparsegpt_chooses_differently_and_lowers_the_output_error():
    out, _ = compressed("wanda", "sparsegpt")
    wanda, sgpt = out["wanda"], out["sparsegpt"]
    for a, b in zip(wanda.layers, sgpt.layers):
        assert a.qualname == b.qualname
        fa, fb = wanda.factors(a.qualname), sgpt.factors(b.qualname)
        mask = fb["sparse"] != 0
        n = mask.shape[1]
        assert torch.equal(mask.sum(1), torch.full((mask.shape[0],), n - int(n * RHO)))
        assert not torch.equal(mask, fa["sparse"] != 0), a.qualname
        # OBS updates change the kept weights too
        assert not torch.equal(fb["sparse"][mask], fb["weight"][mask])
        if a.block == 0:  # same inputs for both runs: the output error must drop (by 8-68% here)
            assert b.output_error < 0.95 * a.output_error, (a.qualname, b.output_error, a.output_error)


def test_oats_run_is_the_scaled_decomposition_of_each_layer():
    """Every layer of an OATS run equals ``decompose`` of its weight with the statistics the
    run recorded (block 0's match the inputs captured here): scaled by D, not unscaled."""
    out, m2 = compressed("oats")
    run = out["oats"]
    for rec in run.layers:
        f = run.factors(rec.qualname)
        stats = run.second_moments[rec.qualname]
        if rec.qualname in m2:
            assert torch.allclose(stats, m2[rec.qualname], rtol=1e-4, atol=1e-7)
        alone = decompose(f["weight"], stats, CFG)
        assert torch.equal(f["sparse"] != 0, alone.sparse != 0), rec.qualname
        assert torch.allclose(f["sparse"] + f["u"] @ f["v"], alone.dense(), atol=1e-6), rec.qualname
        assert rec.rank == alone.rank and rec.scaled_error == pytest.approx(alone.error, rel=1e-6)
        unscaled = decompose(f["weight"], None, CFG)
        assert not torch.equal(f["sparse"] != 0, unscaled.sparse != 0), rec.qualname


def test_lowrank_run_is_the_scaled_truncated_svd():
    from oats.methods.lowrank import lowrank_only
    out, _ = compressed("lowrank")
    run = out["lowrank"]
    for rec in run.layers:
        f = run.factors(rec.qualname)
        alone = lowrank_only(f["weight"], run.second_moments[rec.qualname], CFG)
        assert rec.rank == alone.rank and rec.nnz == 0
        assert torch.allclose(f["u"] @ f["v"], alone.lowrank(), atol=1e-5), rec.qualname
        unscaled = lowrank_only(f["weight"], None, CFG)
        assert not torch.allclose(f["u"] @ f["v"], unscaled.lowrank(), atol=1e-3), rec.qualname


def test_method_config_messages():
    from oats.errors import ConfigError
    from oats.methods import registry
    with pytest.raises(ConfigError) as e:
        registry.get("lowrank").decompose_config(OatsConfig(sparsity="2:4"))
    assert str(e.value) == ("the low-rank method has no sparse term, so sparsity 2:4 does not apply: use sparsity "
                            "'row' with it")
    with pytest.raises(ConfigError) as e:
        registry.get("nope").decompose_config(CFG)
    assert str(e.value) == f"unknown method 'nope': choose one of {', '.join(registry.names())}"
    assert [registry.get(m).rank_ratio(CFG) for m in ("oats", "wanda", "sparsegpt", "magnitude", "lowrank")] == \
        [0.25, 0.0, 0.0, 0.0, 1.0]
