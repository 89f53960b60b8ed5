"""HASSLE-free: budgets, the L-step's and the refit's optimality, the kept iterate, rank 0 =
SparseGPT (refitted; as published with ``refit=0``), bad input.

The L-step is checked against the Eckart-Young value and a closed form through a different
factorisation (the symmetric square root of H from its eigendecomposition) and against
random rank-r candidates; everything runs on small random matrices with correlated inputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import batches, tiny_llama

from oats import OatsConfig, compress_model
from oats.core.decompose import input_scale, rank_budget, row_keep, sparse_budget
from oats.errors import ConfigError
from oats.methods import registry
from oats.methods.hassle import (ALTERNATIONS, damped_cholesky, gram_objective, hassle, lowrank_step,
                                 refit_sparse)
from oats.methods.sparsegpt import sparsegpt

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, shrink=0.0)
"""The algorithm on the full Gram (lambda 0, as published) against SparseGPT's, which uses lambda 0
by default; HASSLE-free's own default shrinkage is tests/test_shrinkage.py's."""


def problem(m: int, n: int, tokens: int = 512, seed: int = 0):
    """A weight (m, n) and the Gram of correlated inputs with a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g) / math.sqrt(n)
    mix = torch.randn(n, n, generator=g) / math.sqrt(n) + torch.eye(n)
    scale = torch.exp(0.5 * torch.randn(n, generator=g))
    scale[:2] *= 8.0
    x = (torch.randn(tokens, n, generator=g) @ mix) * scale
    return w, x.T @ x / tokens, x


def out_err(w, w2, gram) -> float:
    return math.sqrt(gram_objective(w - w2, gram.double()) / gram_objective(w, gram.double()))


SHAPES = [(24, 24), (40, 16), (16, 40)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", ["row", "layer", "2:4"])
def test_budgets_are_exact(shape, sparsity):
    cfg = CFG.replace(sparsity=sparsity)
    w, gram, _ = problem(*shape)
    d_out, d_in = shape
    dec = hassle(w, gram, cfg, fallback=False)
    r = rank_budget(d_out, d_in, cfg)
    assert r > 0 and dec.rank == r and dec.u.shape == (d_out, r) and dec.v.shape == (r, d_in)
    assert torch.linalg.matrix_rank(dec.lowrank()) == r
    nz = dec.sparse != 0
    assert dec.nnz == sparse_budget(d_out, d_in, cfg)
    if sparsity == "row":
        assert torch.equal(nz.sum(1), torch.full((d_out,), row_keep(d_in, cfg)))
    elif sparsity == "2:4":
        assert torch.equal(nz.reshape(d_out, d_in // 4, 4).sum(-1), torch.full((d_out, d_in // 4), 2))
    # never more parameters than the dense budget allows, with or without the rank-0 fallback
    kept = math.floor(cfg.kept * d_out * d_in)
    assert dec.params <= kept
    assert hassle(w, gram, cfg).params <= kept


def test_lowrank_step_is_the_exact_minimiser():
    w, gram, _ = problem(6, 8, seed=3)
    r = 2
    chol = damped_cholesky(gram)
    h = chol @ chol.T                         # the damped H the step minimises with
    u, v, sv = lowrank_step(w, chol, r)
    best = u @ v

    def f(low):
        return gram_objective(w - low, h)

    # Eckart-Young: the minimum is the sum of the squared trailing singular values of W C
    tail = torch.linalg.svdvals(w.double() @ chol)[r:]
    assert f(best) == pytest.approx(float(tail.square().sum()), rel=1e-5)
    assert torch.allclose(sv.double(), torch.linalg.svdvals(w.double() @ chol)[:r], rtol=1e-5)
    # the same L through the symmetric square root of H (eigendecomposition)
    lam, q = torch.linalg.eigh(h)
    half, inv_half = (q * lam.sqrt()) @ q.T, (q / lam.sqrt()) @ q.T
    uu, s, vh = torch.linalg.svd(w.double() @ half)
    closed = (uu[:, :r] * s[:r]) @ vh[:r] @ inv_half
    assert torch.allclose(best.double(), closed, atol=1e-5)
    # no random rank-r candidate, and no small move of the factors, does better
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        cand = torch.randn(6, r, generator=g, dtype=torch.float64) @ torch.randn(r, 8, generator=g, dtype=torch.float64)
        assert f(cand) >= f(best) - 1e-9
        du = 1e-3 * torch.randn(6, r, generator=g)
        dv = 1e-3 * torch.randn(r, 8, generator=g)
        assert f((u + du) @ (v + dv)) >= f(best) - 1e-9


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("start", ["oats", "zero"])
def test_kept_iterate_is_never_worse_than_the_first_and_the_fields_mean_what_they_say(seed, start):
    w, gram, x = problem(20, 32, seed=seed)
    dec = hassle(w, gram, CFG, iterations=5, start=start, fallback=False)
    hist = dec.history
    oe = hist.output_error
    assert 1 <= len(oe) <= 5 and len(hist.error) == len(hist.sparse_energy) == len(oe)
    assert oe[-1] <= oe[0] and oe[-1] == min(oe)
    # the recorded numbers are the result's: output error on the inputs, scaled error as OATS's
    w2 = dec.dense()
    assert oe[-1] == pytest.approx(float((x @ (w - w2).T).norm() / (x @ w.T).norm()), rel=1e-4)
    d = input_scale(torch.diagonal(gram), 32, CFG.eps)
    assert dec.error == hist.error[-1] == pytest.approx(float(((w - w2) * d).norm() / (w * d).norm()), rel=1e-4)
    assert hist.lowrank_energy[-1] == pytest.approx(float((dec.lowrank() * d).square().sum() / (w * d).square().sum()),
                                                    rel=1e-4)
    assert torch.allclose(dec.singular_values, torch.linalg.svdvals(dec.lowrank() * d)[:dec.rank], rtol=1e-4)
    assert dec.history.to_dict()["output_error"] == oe


def test_default_alternations_and_the_sparsegpt_fallback():
    w, gram, _ = problem(24, 32, seed=5)
    assert len(hassle(w, gram, CFG, fallback=False).history.output_error) <= ALTERNATIONS
    assert len(hassle(w, gram, CFG.replace(iterations=1), fallback=False).history.output_error) == 1
    dec = hassle(w, gram, CFG)
    alone = sparsegpt(w, gram, CFG)
    assert out_err(w, dec.dense(), gram) <= out_err(w, alone.dense(), gram) + 1e-7
    assert out_err(w, dec.dense(), gram) <= out_err(w, hassle(w, gram, CFG, fallback=False).dense(), gram) + 1e-7


def test_beats_sparsegpt_and_oats_on_a_sparse_plus_low_rank_weight():
    """W = a sparse term (30% of entries) + a rank-2 term: the low-rank term is worth its parameters."""
    g = torch.Generator().manual_seed(7)
    w0, gram, _ = problem(32, 48, seed=7)
    low = torch.randn(32, 2, generator=g) @ torch.randn(2, 48, generator=g) / 4
    w = w0 * (torch.rand(32, 48, generator=g) < 0.3) + low
    from oats import decompose
    dec = hassle(w, gram, CFG)
    assert dec.rank == rank_budget(32, 48, CFG) == 2
    e = out_err(w, dec.dense(), gram)
    assert e < 0.5 * out_err(w, sparsegpt(w, gram, CFG).dense(), gram)
    assert e < out_err(w, decompose(w, torch.diagonal(gram), CFG).dense(), gram)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", ["row", "layer", "2:4"])
def test_rank_zero_is_sparsegpt_bit_for_bit(shape, sparsity):
    w, gram, _ = problem(*shape, seed=1)
    cfg = CFG.replace(rank_ratio=0.0, sparsity=sparsity)
    ref = sparsegpt(w, gram, cfg)
    dec = hassle(w, gram, cfg, refit=0)  # as published
    assert dec.rank == 0 and torch.equal(dec.sparse, ref.sparse) and torch.equal(dec.sparse != 0, ref.sparse != 0)
    assert dec.history.error == ref.history.error
    assert dec.history.output_error[0] == pytest.approx(out_err(w, ref.sparse, gram), rel=1e-6)
    # by default: SparseGPT's mask, its values refitted, a lower output error, fields recomputed
    dec = hassle(w, gram, cfg)
    chol = damped_cholesky(gram)
    assert torch.equal(dec.sparse != 0, ref.sparse != 0) and not torch.equal(dec.sparse, ref.sparse)
    assert torch.allclose(dec.sparse, refit_sparse(w, ref.sparse, (chol @ chol.T).float(), 15), atol=1e-6)
    assert dec.history.output_error[0] < out_err(w, ref.sparse, gram)
    assert dec.history.output_error[0] == pytest.approx(out_err(w, dec.sparse, gram), rel=1e-5)
    d = input_scale(torch.diagonal(gram), shape[1], CFG.eps)
    assert dec.error == pytest.approx(float(((w - dec.sparse) * d).norm() / (w * d).norm()), rel=1e-5)
    # a rank budget that rounds to 0 (kappa > 0): the whole budget goes to SparseGPT
    tiny, tgram, _ = problem(2, 4, seed=2)
    assert rank_budget(2, 4, CFG) == 0
    assert torch.equal(hassle(tiny, tgram, CFG, refit=0).sparse, sparsegpt(tiny, tgram, CFG).sparse)


def test_the_refit_is_the_exact_minimiser_on_the_mask():
    """CG on every row at once reaches the per-row least-squares solution on the mask (compared
    with a direct solve), lowers the objective at every step count and never grows the support."""
    w, gram, _ = problem(12, 20, seed=8)
    h = gram.double() + 0.01 * float(torch.diagonal(gram).mean()) * torch.eye(20, dtype=torch.float64)
    start = sparsegpt(w, gram, CFG.replace(rank_ratio=0.0)).sparse
    mask = start != 0
    target = w + 0.1 * torch.randn(12, 20, generator=torch.Generator().manual_seed(1))
    exact = torch.zeros(12, 20, dtype=torch.float64)
    for i in range(12):  # (t_i - s_i) H restricted to the mask = 0
        m = mask[i]
        exact[i, m] = torch.linalg.solve(h[m][:, m], (target[i].double() @ h)[m])
    got = refit_sparse(target.double(), start.double(), h, 40)
    assert torch.allclose(got, exact, atol=1e-8) and torch.equal(got != 0, mask)

    def f(s):
        return gram_objective(target - s, h)
    previous = f(start)
    for steps in (1, 2, 4, 8, 16):
        now = f(refit_sparse(target, start, h.float(), steps))
        assert now <= previous * (1 + 1e-6)
        previous = now
    assert f(exact) <= previous <= f(start) and f(exact) < 0.99 * f(start)
    assert torch.equal(refit_sparse(target, start, h.float(), 0), start)


def test_the_s_step_is_sparsegpt_on_w_minus_l():
    """From L = 0 the first S-step is SparseGPT with the sparse term's budget, bit for bit
    (rho 0.5, kappa 0.5: the sparse term prunes 1 - 0.5 * 0.5 = 0.75)."""
    w, gram, _ = problem(24, 40, seed=4)
    cfg = CFG.replace(rank_ratio=0.5)
    ref = sparsegpt(w, gram, cfg.replace(compression=0.75, rank_ratio=0.0))
    for sparsity in ("row", "layer"):
        ref = sparsegpt(w, gram, cfg.replace(compression=0.75, rank_ratio=0.0, sparsity=sparsity))
        dec = hassle(w, gram, cfg.replace(sparsity=sparsity), iterations=1, start="zero", fallback=False, refit=0)
        assert torch.equal(dec.sparse, ref.sparse)
        dec = hassle(w, gram, cfg.replace(sparsity=sparsity), iterations=1, start="zero", fallback=False)
        assert torch.equal(dec.sparse != 0, ref.sparse != 0)  # the refit keeps the sweep's mask


def test_bad_input_is_one_config_error_line():
    w, gram, _ = problem(24, 12)
    assert rank_budget(24, 12, CFG) > 0
    cases = [
        (dict(gram=torch.full((12, 12), float("nan"))), "input statistics contain NaN or inf"),
        (dict(gram=torch.eye(10)), "the Gram matrix is (10, 10) but the weight has d_in = 12"),
        (dict(gram=None), "hassle needs the (d_in, d_in) Gram matrix"),
        (dict(weight=torch.full((24, 12), float("inf"))), "a weight matrix contains NaN or inf"),
        (dict(start="svd"), "start must be 'oats', 'zero' or a (d_out, d_in) tensor"),
        (dict(start=torch.zeros(3, 3)), "the starting low-rank term is (3, 3)"),
        (dict(iterations=0), "iterations must be at least 1"),
    ]
    bad = torch.ones(12, 12) * 1e6 + torch.eye(12)  # mean diagonal > 0, an eigenvalue far below -damp
    bad.fill_diagonal_(1.0)
    cases.append((dict(gram=bad), "not positive definite even with strong damping"))
    for change, message in cases:
        args = {"weight": w, "gram": gram, **change}
        with pytest.raises(ConfigError) as e:
            hassle(args.pop("weight"), args.pop("gram"), CFG, **args)
        assert message in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)
    # a Gram singular before damping (inputs in 3 directions, one channel dead) is fine
    x = torch.randn(50, 3) @ torch.randn(3, 12)
    x[:, 5] = 0.0
    dec = hassle(w, x.T @ x / 50, CFG)
    assert torch.isfinite(dec.dense()).all() and bool((dec.sparse[:, 5] == 0).all())
    # no input ever fired: H = 0 carries nothing, the result is still finite
    assert torch.isfinite(hassle(w, torch.zeros(12, 12), CFG).dense()).all()


def test_record_and_pipeline_run_with_every_mode():
    m = registry.get("hassle")
    assert (m.statistics, m.run_modes, m.iterative, m.uses_rank_ratio) == \
        ("gram", ("dense", "both", "sparse", "lowrank"), True, True)
    assert m.rank_ratio(CFG) == 0.25 and m.decompose_config(CFG) == CFG and m.two_terms
    model = tiny_llama(layers=1)
    data = batches()
    with torch.no_grad():
        dense = model(**data[0]).logits
    run = compress_model(model, data, CFG, method="hassle")
    assert len(run.layers) == 7
    for rec in run.layers:
        assert rec.params <= rec.budget and rec.scaled_error == rec.history["error"][-1]
        assert len(rec.history["output_error"]) == rec.iterations
    # q sees the dense block's own input, so the pipeline's measured output error is the recorded one
    q = next(r for r in run.layers if r.name == "q")
    assert q.output_error == pytest.approx(q.history["output_error"][-1], rel=1e-3)
    outs = {}
    for mode in ("both", "sparse", "lowrank"):
        with run.use_mode(mode), torch.no_grad():
            outs[mode] = model(**data[0]).logits
        assert torch.isfinite(outs[mode]).all()
    # this tiny model's random weights have no low-rank structure: on every layer the refitted
    # SparseGPT fallback beats sparse + low-rank, so "both" is the sparse term alone
    assert all(rec.rank == 0 for rec in run.layers)
    assert torch.equal(outs["both"], outs["sparse"]) and (outs["both"] - dense).norm() < (outs["lowrank"] - dense).norm()


def test_the_fallback_is_sparsegpt_bit_for_bit():
    """A weight with no low-rank structure at a high rank ratio: SparseGPT alone wins and is kept."""
    w, gram, _ = problem(24, 32, seed=6)
    for sparsity in ("row", "layer"):
        cfg = CFG.replace(rank_ratio=0.9, sparsity=sparsity)
        dec = hassle(w, gram, cfg, refit=0)
        ref = sparsegpt(w, gram, cfg)
        assert dec.rank == 0 and torch.equal(dec.sparse, ref.sparse), sparsity
        oe = dec.history.output_error
        assert oe[-1] == min(oe) and oe[-1] == pytest.approx(out_err(w, ref.sparse, gram), rel=1e-6)
        assert dec.error == pytest.approx(ref.error, rel=1e-6)


def test_walkthrough_replays_a_saved_layer_from_its_recomputed_gram():
    """A run keeps second moments, not Grams: ``layer_gram`` recomputes a layer's Gram as the
    pipeline saw it (earlier blocks compressed), so HASSLE-free on it gives the saved terms."""
    from oats.explain.walkthrough import layer_gram, walkthrough
    from oats.methods import registry
    model = tiny_llama(layers=2)
    data = batches()
    run = compress_model(model, data, CFG, method="hassle")
    for q in ("0.q", "1.up", "1.down"):  # block 1's Gram depends on block 0's compressed output
        gram = layer_gram(run, q, data)
        f = run.factors(q)
        dec = hassle(f["weight"].float(), gram, CFG, second_moments=run.second_moments[q])
        assert torch.allclose(dec.sparse, f["sparse"].float(), atol=1e-5), q
        assert torch.allclose(dec.lowrank(), (f["u"] @ f["v"]).float(), atol=1e-4), q
        rec = run.layer(q)
        wt = walkthrough(f["weight"], run.second_moments[q], CFG, registry.replay_for("hassle")[0], gram=gram)
        assert wt.step == "Alternation" and wt.iterations == list(range(1, ALTERNATIONS + 1))
        h = wt.history
        assert len(h["output_error"]) == len(h["error"]) == ALTERNATIONS
        if wt.fallback:
            assert rec.rank == 0 and wt.kept is None
        else:  # the kept alternation is the saved one, and the lowest output error
            assert h["output_error"][wt.kept - 1] == min(h["output_error"])
            assert h["output_error"][wt.kept - 1] == pytest.approx(rec.history["output_error"][-1], rel=1e-4)
            assert h["error"][wt.kept - 1] == pytest.approx(rec.scaled_error, rel=1e-4)
    # block 1 seen through a dense block 0 is another Gram: the replay does use the compressed blocks
    dense_model, xs = tiny_llama(layers=2), []
    hook = dense_model.model.layers[1].mlp.up_proj.register_forward_hook(
        lambda _m, inp, _o: xs.append(inp[0].reshape(-1, inp[0].shape[-1])))
    with torch.no_grad():
        for b in data:
            dense_model(**b)
    hook.remove()
    x = torch.cat(xs)
    replayed = layer_gram(run, "1.up", data)
    assert (x.T @ x / len(x) - replayed).norm() > 1e-3 * replayed.norm()
