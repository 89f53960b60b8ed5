"""Gram shrinkage (``OatsConfig.shrink`` = lambda): SparseGPT and HASSLE-free solve with
H_lambda = (1 - lambda) H + lambda diag(H).

Exact checks on small matrices: the Gram each method really factorises (spied on) is H at
lambda = 0, diag(H) at lambda = 1 and the convex combination in between; a run at lambda is the
same decomposition, bit for bit, as a run at lambda = 0 on H_lambda, while its recorded output
error stays the one on the unshrunk H; at lambda = 1 SparseGPT makes no OBS updates and keeps
Wanda's mask (with the damped diagonal), and HASSLE-free's low-rank term is the truncated SVD
of the diagonally scaled residual. Out-of-range lambda is one ConfigError line; the setting is
part of a run's identity and folder name only for the methods that read it.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import assert_cli_fails, batches, tiny_llama

from oats import OatsConfig, compress_model
from oats.config import RECORDED_BEFORE
from oats.errors import ConfigError
from oats.methods import hassle as hassle_module
from oats.methods import registry
from oats.methods import sparsegpt as sparsegpt_module
from oats.methods.hassle import PERCDAMP, gram_objective, hassle
from oats.methods.sparsegpt import shrunk_gram, sparsegpt
from test_hassle import problem as hassle_problem  # noqa: E402
from oats.methods.wanda import wanda
from oats.runner.request import CompressRequest, request_from_manifest

CFG = OatsConfig(compression=0.5, rank_ratio=0.25)
LAMBDAS = (0.0, 0.05, 0.3, 1.0)


def problem(m: int, n: int, tokens: int = 512, seed: int = 0):
    """A weight (m, n) and the fp64 Gram of correlated inputs with uneven channel scales
    (test_hassle's problem, its Gram in fp64)."""
    w, gram, _ = hassle_problem(m, n, tokens, seed)
    return w, gram.double()


def diagonal_of(h: torch.Tensor) -> torch.Tensor:
    return torch.diag(torch.diagonal(h))


# ----------------------------------------------------------------------------- the shrunk Gram


def test_shrunk_gram_is_the_convex_combination():
    _, h = problem(8, 20)
    assert shrunk_gram(h, 0.0) is h  # lambda 0: the full Gram itself
    assert torch.equal(shrunk_gram(h, 1.0), diagonal_of(h))  # lambda 1: exactly its diagonal
    for lam in (0.01, 0.3, 0.5, 0.9):
        hl = shrunk_gram(h, lam)
        assert hl.dtype == torch.float64
        assert torch.equal(torch.diagonal(hl), torch.diagonal(h))  # the diagonal is H's, exactly
        assert torch.allclose(hl, (1 - lam) * h + lam * diagonal_of(h), rtol=1e-15, atol=0)
        off = ~torch.eye(20, dtype=torch.bool)
        assert torch.allclose(hl[off], (1 - lam) * h[off], rtol=1e-15, atol=0)
    # a fp32 Gram is shrunk in fp64
    assert torch.allclose(shrunk_gram(h.float(), 0.3), shrunk_gram(h.float().double(), 0.3), rtol=0, atol=0)


def test_at_one_the_objective_is_the_diagonal_scaled_error():
    """tr(E H_1 E^T) = ||E D||_F^2 with D^2 = diag(H): OATS's objective."""
    w, h = problem(12, 20)
    e = torch.randn(12, 20, generator=torch.Generator().manual_seed(3))
    d = torch.diagonal(h).sqrt()
    assert gram_objective(e, shrunk_gram(h, 1.0)) == pytest.approx(float((e.double() * d).square().sum()), rel=1e-12)
    # and at lambda 0 the full Gram's objective, which differs (the inputs are correlated)
    assert gram_objective(e, shrunk_gram(h, 0.0)) == pytest.approx(gram_objective(e, h), rel=0)
    assert abs(gram_objective(e, h) / gram_objective(e, shrunk_gram(h, 1.0)) - 1) > 1e-3


# ----------------------------------------------------------------------------- what the methods factorise


@pytest.fixture
def spy(monkeypatch):
    """Every Gram the methods' factorisations receive (S-step, L-step and refit), as fp64."""
    seen: list[torch.Tensor] = []

    def wrap(module, name):
        real = getattr(module, name)

        def f(gram, *a, **k):
            seen.append(gram.detach().to(torch.float64).clone())
            return real(gram, *a, **k)
        monkeypatch.setattr(module, name, f)

    wrap(hassle_module, "_inverse_cholesky")
    wrap(hassle_module, "damped_cholesky")
    wrap(sparsegpt_module, "_inverse_cholesky")
    return seen


@pytest.mark.parametrize("lam", LAMBDAS)
def test_the_methods_solve_with_the_shrunk_gram(spy, lam):
    w, h = problem(24, 32)
    expected = h if lam == 0 else (diagonal_of(h) if lam == 1 else (1 - lam) * h + lam * diagonal_of(h))
    for run in (lambda: sparsegpt(w, h, CFG.replace(shrink=lam)),
                lambda: hassle(w, h, CFG.replace(shrink=lam), second_moments=torch.diagonal(h).float())):
        spy.clear()
        run()
        assert spy, "no factorisation seen"
        for g in spy:  # exactly H at 0, exactly diag(H) at 1, the combination in between
            if lam in (0.0, 1.0):
                assert torch.equal(g, expected)
            else:
                assert torch.allclose(g, expected, rtol=1e-15, atol=0) and torch.equal(g, shrunk_gram(h, lam))


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("sparsity", ["row", "layer", "2:4"])
def test_a_run_at_lambda_is_the_run_on_the_shrunk_gram(lam, sparsity):
    """Bit for bit the decomposition of lambda = 0 on H_lambda; only the recorded output error
    differs: it is measured on the unshrunk H."""
    cfg = CFG.replace(sparsity=sparsity, rank_ratio=0.2 if sparsity == "2:4" else 0.25)
    w, h = problem(24, 32, seed=1)
    hl = shrunk_gram(h, lam)
    a = sparsegpt(w, h, cfg.replace(shrink=lam))
    b = sparsegpt(w, hl, cfg.replace(shrink=0.0))
    assert torch.equal(a.sparse, b.sparse) and a.history.error == b.history.error  # D is the same
    a = hassle(w, h, cfg.replace(shrink=lam))
    b = hassle(w, hl, cfg.replace(shrink=0.0))
    assert torch.equal(a.sparse, b.sparse) and torch.equal(a.u, b.u) and torch.equal(a.v, b.v)
    assert a.history.error == b.history.error and len(a.history.output_error) == len(b.history.output_error)
    ref = gram_objective(w, h)
    on_h = math.sqrt(gram_objective(w - a.dense(), h) / ref)
    assert a.history.output_error[-1] == pytest.approx(on_h, rel=1e-5)  # measured on H, not on H_lambda
    if lam > 0:
        on_hl = math.sqrt(gram_objective(w - b.dense(), hl) / gram_objective(w, hl))
        assert b.history.output_error[-1] == pytest.approx(on_hl, rel=1e-5)
        assert abs(on_h / on_hl - 1) > 1e-3


def test_no_setting_is_each_methods_own_default_bit_for_bit():
    """shrink None: SparseGPT solves with the full Gram (lambda 0, as published), HASSLE-free with
    its DEFAULT_SHRINK; both the same bits as the value given explicitly."""
    from oats.methods.hassle import DEFAULT_SHRINK
    assert registry.get("sparsegpt").default_shrink == 0.0 and registry.get("hassle").default_shrink == DEFAULT_SHRINK
    assert 0.0 < DEFAULT_SHRINK < 1.0
    w, h = problem(40, 48, seed=2)
    for cfg in (CFG, CFG.replace(sparsity="layer"), CFG.replace(rank_ratio=0.0)):
        assert cfg.shrink is None
        for gram in (h, h.float()):
            a, b = hassle(w, gram, cfg), hassle(w, gram, cfg.replace(shrink=DEFAULT_SHRINK))
            assert torch.equal(a.sparse, b.sparse) and torch.equal(a.u, b.u) and torch.equal(a.v, b.v)
            assert a.history.to_dict() == b.history.to_dict()
            assert torch.equal(sparsegpt(w, gram, cfg).sparse, sparsegpt(w, gram, cfg.replace(shrink=0.0)).sparse)
    # and shrinking does change the result
    assert not torch.equal(hassle(w, h, CFG).sparse, hassle(w, h, CFG.replace(shrink=0.0)).sparse)
    assert registry.used_shrink("hassle", CFG) == DEFAULT_SHRINK and registry.used_shrink("oats", CFG) == 0.0
    assert registry.used_shrink("hassle", CFG.replace(shrink=0.2)) == 0.2


def test_sparsegpt_at_one_is_wanda_with_the_damped_diagonal():
    """H_1 = diag(H): H^-1 is diagonal, so no OBS update moves a kept weight, and each row keeps its
    largest |w_ij| sqrt(H_jj + damp), Wanda's mask on the damped second moments (one column block:
    d_in <= the block size; with more columns each block prunes its share)."""
    w, h = problem(24, 64, seed=4)
    damp = PERCDAMP * float(torch.diagonal(h).mean())
    moments = (torch.diagonal(h) + damp).float()
    for sparsity in ("row", "2:4"):
        cfg = CFG.replace(rank_ratio=0.0, sparsity=sparsity, shrink=1.0)
        s = sparsegpt(w, h, cfg).sparse
        kept = s != 0
        assert torch.equal(s[kept], w[kept])  # the kept weights are the weight's own
        assert torch.equal(kept, wanda(w, moments, cfg).sparse != 0), sparsity
    # the full Gram's SparseGPT picks another mask and moves the kept weights
    s0 = sparsegpt(w, h, CFG.replace(rank_ratio=0.0)).sparse
    assert not torch.equal(s0 != 0, kept) and not torch.equal(s0[s0 != 0], w[s0 != 0])


def test_hassle_at_one_fits_the_diagonally_scaled_residual():
    """The kept low-rank term is the truncated SVD of (W - S) (D^2 + damp)^(1/2), mapped back: the
    L-step of ||(W - S - L) D||_F (damped), and the S-step keeps W - L's own values."""
    w, h = problem(32, 40, seed=5)
    cfg = CFG.replace(shrink=1.0)
    dec = hassle(w, h, cfg, fallback=False)
    r = dec.rank
    assert r > 0
    damp = PERCDAMP * float(torch.diagonal(h).mean())
    c = (torch.diagonal(h) + damp).sqrt()
    u, s, vh = torch.linalg.svd((w - dec.sparse).double() * c, full_matrices=False)
    low = (u[:, :r] * s[:r]) @ vh[:r] / c
    assert torch.allclose(dec.lowrank().double(), low, atol=1e-5)
    # one alternation: S is W - L0 (OATS's start) on its mask, untouched by updates or the refit
    traced = []
    hassle(w, h, cfg, iterations=1, fallback=False, trace=lambda t, lo, sp: traced.append(sp))
    from oats.core.decompose import decompose
    start = decompose(w, torch.diagonal(h).float(), cfg).lowrank()
    sp = traced[0]
    assert torch.equal(sp[sp != 0], (w - start)[sp != 0])


# ----------------------------------------------------------------------------- the setting


@pytest.mark.parametrize("bad", [-0.1, 1.0001, 2, float("nan"), float("inf"), "x", True])
def test_out_of_range_is_one_config_error_line(bad):
    with pytest.raises(ConfigError) as e:
        OatsConfig(shrink=bad)
    assert "shrink" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_the_setting_reads_numbers_and_old_records():
    assert OatsConfig(shrink="0.25").shrink == 0.25 and OatsConfig(shrink=1).shrink == 1.0
    assert OatsConfig().shrink is None  # the method's own default
    old = OatsConfig().to_dict()
    del old["shrink"]  # a run recorded before the setting existed solved with the full Gram
    assert RECORDED_BEFORE == {"shrink": 0.0} and OatsConfig.from_dict(old).shrink == 0.0
    assert OatsConfig.from_dict(CFG.replace(shrink=0.3).to_dict()) == CFG.replace(shrink=0.3)


def test_records_say_which_methods_read_it():
    readers = {m.name for m in registry.all_methods() if m.uses_shrink}
    assert {"hassle", "sparsegpt"} <= readers and not readers & {"oats", "wanda", "magnitude", "lowrank"}


def test_it_is_part_of_the_identity_only_for_its_readers():
    for method in ("hassle", "sparsegpt", "oats", "wanda"):
        a = CompressRequest("smollm2-135m", CFG, method)
        b = CompressRequest("smollm2-135m", CFG.replace(shrink=0.2), method)
        reads = registry.get(method).uses_shrink
        assert (a.identity() != b.identity()) == reads, method
        assert (a.folder_name() != b.folder_name()) == reads, method
        assert ("-sh0.2" in b.folder_name()) == reads and "-sh" not in a.folder_name()
        # the method's default given explicitly is the same run as no setting
        c = CompressRequest("smollm2-135m", CFG.replace(shrink=registry.get(method).default_shrink), method)
        assert c.identity() == a.identity() and c.folder_name() == a.folder_name()
    # a manifest recorded before the setting reads as lambda = 0
    config = CFG.to_dict()
    del config["shrink"]
    m = {"model_name": "smollm2-135m", "method": "hassle", "config": config,
         "calibration_request": {"samples": None, "seq_len": None, "seed": 0, "source": None, "domain": "mix"}}
    req = request_from_manifest(m)
    assert req.config.shrink == 0.0 and req.same_run({**m, "config": CFG.replace(shrink=0.0).to_dict()})
    assert not CompressRequest("smollm2-135m", CFG.replace(shrink=0.2), "hassle").same_run(m)
    # hassle's default is no longer the full Gram: a run recorded at lambda 0 is not today's default run
    assert not CompressRequest("smollm2-135m", CFG, "hassle").same_run(m)
    assert CompressRequest("smollm2-135m", CFG, "sparsegpt").same_run({**m, "method": "sparsegpt"})


def test_a_run_records_it_and_uses_it():
    data = batches()
    runs = {}
    for lam in (0.0, 0.5):
        model = tiny_llama(layers=1)
        runs[lam] = compress_model(model, data, CFG.replace(shrink=lam, rank_ratio=0.0), method="sparsegpt")
        assert runs[lam].config.shrink == lam
    # no setting: the run records the value it used
    assert compress_model(tiny_llama(layers=1), data, CFG, method="hassle").config.shrink == registry.get(
        "hassle").default_shrink
    from oats.runs.folders import manifest_dict
    assert manifest_dict(runs[0.5], complete=True)["config"]["shrink"] == 0.5
    q0, q5 = (runs[lam].factors("0.q")["sparse"] for lam in (0.0, 0.5))
    assert not torch.equal(q0, q5)


def test_the_cli_rejects_it_in_one_line(capsys):
    assert_cli_fails(["compress", "smollm2-135m", "--method", "hassle", "--shrink", "1.5"], "shrink", capsys)
    assert_cli_fails(["sweep", "smollm2-135m", "--methods", "hassle", "--shrink", "-1"], "shrink", capsys)


def test_the_compress_form_offers_shrinkage_only_to_its_readers(tmp_path, monkeypatch):
    """A method that reads the Gram gets a λ slider at its own default; the request carries the
    value; a method that reads none gets no slider."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from oats.errors import RunError
    from oats.runner.jobs import RUNNER
    started = []

    def start(request, *a, **k):
        started.append(request)
        raise RunError("stopped by the test")

    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(RUNNER, "start", start)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    at.run()
    [s for s in at.selectbox if s.label == "Model"][0].set_value("minilm-l6").run()

    def sliders():
        return [s for s in at.slider if s.label == "Gram shrinkage λ"]

    assert not sliders()  # OATS reads no Gram
    for method in ("hassle", "sparsegpt"):
        [s for s in at.selectbox if s.label == "Method"][0].set_value(method).run()
        (lam,) = sliders()
        assert lam.value == pytest.approx(registry.get(method).default_shrink)
    lam.set_value(0.5).run()
    [b for b in at.button if b.label == "Compress"][0].click().run()
    assert started[-1].method == "sparsegpt" and started[-1].config.shrink == pytest.approx(0.5)
    assert started[-1].folder_name().endswith("-sh0.5-mix")
