"""The method registry: a method registered from outside the package (here, from the test)
reaches the CLI, the pipeline, the sweep, the memory estimate and the app's method list;
the built-ins' records say what their statistics pass collects; the contract checks every
method keeps (tests/contracts.py) hold for it too. No test here freezes the list of methods:
the built-ins are in it, in the order oats/methods/__init__.py registers them, and others may
follow."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_sweep import KW, tiny_loaded
from contracts import check_method_contract
from tiny_models import CALIB, assert_cli_fails, batches, llm_folder, tiny_llama, tiny_llama_folder

from oats import BUDGET_NOTES, METHODS, OatsConfig, compress_model
from oats.cli import main as cli_main
from oats.core.decompose import Decomposition, History
from oats.errors import ConfigError
from oats.evaluation import run_modes
from oats.methods import registry
from oats.methods.registry import Method
from oats.models.adapters import get_adapter
from oats.runner.request import CompressRequest
from oats.runner.sweep import plan, sweep
from oats.runs.folders import load_run, read_manifest
from oats.compress.preflight import estimate_compression_memory

BUILTIN = ["oats", "wanda", "sparsegpt", "magnitude", "lowrank"]
ALL_BUILTIN = BUILTIN + ["hassle"]
"""The built-in methods, in the order oats/methods/__init__.py promises (others may follow)."""
TEST_METHODS = ("halfzero", "gramspy")
CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=4)
HALFZERO_NOTE = "rank 0; each row keeps its larger half by |W_ij| (test only)"


def keep_larger_half(weight: torch.Tensor) -> torch.Tensor:
    """Each row of ``weight`` with its d_in - d_in // 2 smallest |W_ij| set to 0."""
    w = weight.detach().float()
    d_in = w.shape[1]
    idx = w.abs().topk(d_in // 2, dim=1).indices
    return torch.zeros_like(w).scatter_(1, idx, w.gather(1, idx))


CALLS: list[dict] = []
"""What the test methods' per-block functions were handed, one entry per block."""


def _halves(weights, config) -> list[Decomposition]:
    out = []
    for w in weights:
        s = keep_larger_half(w)
        w0 = w.detach().float()
        err = float((w0 - s).norm() / w0.norm().clamp_min(1e-30))
        out.append(Decomposition(sparse=s, u=s.new_zeros(s.shape[0], 0), v=s.new_zeros(0, s.shape[1]),
                                 scale=torch.ones(s.shape[1]), singular_values=s.new_zeros(0),
                                 history=History(error=[err], sparse_energy=[1 - err ** 2], lowrank_energy=[0.0]),
                                 config=config))
    return out


def halfzero_compress(weights, second_moments, grams, config, device=None):
    CALLS.append({"method": "halfzero", "moments": list(second_moments), "grams": list(grams), "config": config})
    return _halves(weights, config)


def gramspy_compress(weights, second_moments, grams, config, device=None):
    CALLS.append({"method": "gramspy", "moments": list(second_moments), "grams": list(grams), "config": config})
    return _halves(weights, config)


HALFZERO = Method(name="halfzero", description="test only: keep the larger half of each row by |W_ij|",
                  budget_note=HALFZERO_NOTE, statistics="none")
GRAMSPY = Method(name="gramspy", description="test only: halfzero, handed the full input Gram",
                 budget_note="as halfzero", statistics="gram")


@pytest.fixture
def halfzero():
    CALLS.clear()
    registry.register(HALFZERO)(halfzero_compress)
    yield registry.get("halfzero")
    registry.unregister("halfzero")
    CALLS.clear()


@pytest.fixture
def gramspy():
    CALLS.clear()
    registry.register(GRAMSPY)(gramspy_compress)
    yield registry.get("gramspy")
    registry.unregister("gramspy")
    CALLS.clear()


def assert_halfzero_run(run_or_factors, layers):
    """Every matrix keeps exactly the larger half of each row by |W|, rank 0."""
    for rec in layers:
        f = run_or_factors(rec)
        d_out, d_in = f["weight"].shape
        assert rec.rank == 0 and f["u"].shape[1] == 0
        assert rec.nnz == d_out * (d_in // 2)
        assert torch.equal(f["sparse"].float(), keep_larger_half(f["weight"])), rec.qualname


# ----------------------------------------------------------------------------- the registry itself


def test_builtins_are_registered_first_in_order_with_their_records():
    assert registry.names()[:6] == ALL_BUILTIN and list(METHODS)[:6] == ALL_BUILTIN
    statistics = {n: registry.get(n).statistics for n in ALL_BUILTIN}
    assert statistics == {"oats": "diagonal", "wanda": "diagonal", "sparsegpt": "gram", "magnitude": "none",
                          "lowrank": "diagonal", "hassle": "gram"}
    assert [registry.get(n).scaled for n in BUILTIN] == [True, True, True, False, True]
    assert [run_modes(n) for n in BUILTIN] == [("dense", "both", "sparse", "lowrank")] + [("dense", "both")] * 4
    assert [n for n in BUILTIN if registry.get(n).iterative] == ["oats"]
    assert [n for n in BUILTIN if registry.get(n).uses_rank_ratio] == ["oats"]
    assert [registry.get(n).decompose_config(CFG).rank_ratio for n in BUILTIN] == [0.25, 0.0, 0.0, 0.0, 0.25]
    assert METHODS["wanda"] == "sparse only: keep the largest |W_ij| * ||X_j|| per row (OATS with rank ratio 0)"
    assert BUDGET_NOTES["lowrank"].startswith("no sparse term; rank r = floor((1-rho) d_out d_in")
    # manifests pass the config as a namespace, and runs of methods not registered here still read
    assert registry.used_rank_ratio("oats", type("C", (), {"rank_ratio": 0.3})()) == 0.3
    assert registry.used_rank_ratio("svdllm", CFG) == 0.0 and run_modes("svdllm") == ("dense", "both")


def test_unknown_method_is_one_config_error_line_with_the_choices(halfzero, capsys):
    with pytest.raises(ConfigError) as e:
        registry.get("nope")
    assert str(e.value) == f"unknown method 'nope': choose one of {', '.join(registry.names())}"
    assert registry.names()[-1] == "halfzero"
    with pytest.raises(ConfigError, match="unknown method 'nope': choose one of oats, .*, halfzero$"):
        compress_model(tiny_llama(layers=1), batches(), CFG, method="nope")
    assert_cli_fails(["compress", "minilm-l6", "--method", "nope"], "unknown method 'nope': choose one of", capsys)
    assert_cli_fails(["sweep", "minilm-l6", "--methods", "halfzero,nope"], "unknown method 'nope' in --methods: "
                     f"choose among {', '.join(registry.names())}", capsys)


def test_registering_checks_the_record_and_unregistering_removes_it_everywhere(halfzero):
    before = [n for n in registry.names() if n != "halfzero"]
    assert "halfzero" in METHODS and BUDGET_NOTES["halfzero"] == HALFZERO_NOTE and len(METHODS) == len(before) + 1
    assert halfzero.compress is halfzero_compress and not halfzero.scaled and not halfzero.two_terms
    with pytest.raises(ValueError, match="already registered"):
        registry.register(HALFZERO)(halfzero_compress)
    for bad in (dict(name="dense"), dict(name="a b"), dict(statistics="full"), dict(run_modes=("both",)),
                dict(run_modes=("dense", "both", "fast"))):
        with pytest.raises(ValueError):
            Method(**{"name": "x", "description": "d", "budget_note": "b", **bad})
    with pytest.raises(ValueError, match="no compress function"):
        Method(name="x", description="d", budget_note="b").decompose([], [], [], CFG)
    registry.unregister("halfzero")
    assert registry.names() == before and "halfzero" not in METHODS and "halfzero" not in BUDGET_NOTES
    with pytest.raises(ConfigError, match=f"choose one of {', '.join(before)}$"):
        registry.get("halfzero")


# ----------------------------------------------------------------------------- statistics drive the pipeline


def test_the_record_decides_which_statistics_the_method_is_handed(halfzero, gramspy):
    model = tiny_llama(layers=1)
    run = compress_model(model, batches(), CFG, method="gramspy")
    (call,) = CALLS
    assert len(call["grams"]) == len(run.layers) == 7
    for rec, m2, g in zip(run.layers, call["moments"], call["grams"]):
        d_in = rec.shape[1]
        assert g is not None and tuple(g.shape) == (d_in, d_in)
        assert torch.allclose(torch.diagonal(g), m2, rtol=1e-5, atol=1e-7)  # the Gram's diagonal: the moments
        assert torch.allclose(m2, run.second_moments[rec.qualname])
    assert call["config"].rank_ratio == 0.0  # the default decompose_config: rank 0
    CALLS.clear()
    run = compress_model(tiny_llama(layers=1), batches(), CFG, method="halfzero")
    (call,) = CALLS
    # statistics "none": neither moments nor Gram reach the method, but the run still records the moments
    assert call["moments"] == [None] * 7 and call["grams"] == [None] * 7
    assert len(run.second_moments) == 7
    assert_halfzero_run(lambda rec: run.factors(rec.qualname), run.layers)


def test_the_memory_estimate_counts_a_gram_iff_the_statistics_are_gram(halfzero, gramspy):
    model = tiny_llama(layers=1)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    est = {n: estimate_compression_memory(adapter, model, blocks, 100, n)
           for n in ("oats", "wanda", "magnitude", "lowrank", "halfzero", "sparsegpt", "gramspy")}
    biggest_in = 128  # the down projection's d_in (intermediate size)
    gram_bytes = biggest_in * biggest_in * 4 * 2
    at_once = max(1, min(torch.get_num_threads(), 7))  # the block's 7 matrices, spread over the threads
    biggest = 128 * 64  # the largest matrix (gate, up, down)
    # each method's own measured working copies of that matrix, plus the Gram for "gram" statistics
    for n in ("oats", "wanda", "magnitude", "lowrank", "halfzero", "sparsegpt", "gramspy"):
        copies = registry.get(n).working_copies
        gram = gram_bytes if registry.get(n).statistics == "gram" else 0
        assert est[n]["decomposition"] == pytest.approx(at_once * (copies * biggest * 4 + gram)), n
    assert est["halfzero"]["decomposition"] == est["oats"]["decomposition"]  # a new method: OATS's copies
    assert est["wanda"]["decomposition"] < est["oats"]["decomposition"]
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        estimate_compression_memory(adapter, model, blocks, 100, "nope")


# ----------------------------------------------------------------------------- CLI, sweep, app


def test_cli_lists_and_runs_a_registered_method(halfzero, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["compress", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    others = [n for n in registry.names() if n not in ("oats", "halfzero")]
    assert f"oats (default), {', '.join(others)} or halfzero" in text
    with pytest.raises(SystemExit):
        cli_main(["sweep", "--help"])
    assert f"{', '.join(registry.names()[-3:])} (default: all)" in " ".join(capsys.readouterr().out.split())

    folder = llm_folder(tmp_path / "llm")
    out = tmp_path / "runs" / "half"
    assert cli_main(["compress", str(folder), "--method", "halfzero", "--out", str(out), *CALIB]) == 0
    printed = capsys.readouterr().out
    assert f"saved to {out}" in printed and "compression 50.0%" in printed
    m = read_manifest(out)
    assert m["complete"] and m["method"] == "halfzero" and m["budget_note"] == HALFZERO_NOTE
    from oats.models import zoo
    run = load_run(out, model=zoo.load_model(str(folder)).model)
    assert run.method == "halfzero" and len(run.layers) == 14
    assert_halfzero_run(lambda rec: run.factors(rec.qualname), run.layers)


def test_sweep_plans_and_runs_a_registered_method(halfzero, tmp_path):
    specs = plan("tiny-lm", "oats,halfzero", "0.4,0.6", "0.2,0.3")
    assert [(s.method, s.config.compression, s.rank_ratio) for s in specs] == [
        ("oats", 0.4, 0.2), ("oats", 0.4, 0.3), ("oats", 0.6, 0.2), ("oats", 0.6, 0.3),
        ("halfzero", 0.4, 0.0), ("halfzero", 0.6, 0.0)]
    # not iterative: iterations and solver are not part of its run name, nor of the match
    spec = CompressRequest("tiny-lm", CFG.replace(iterations=5, solver="exact"), "halfzero")
    assert spec.folder_name() == "tiny-lm-halfzero-c0.5-k0-row-mix"
    assert spec.same_run({"method": "halfzero", "model_name": "tiny-lm", "config": CFG.to_dict(),
                          "calibration_request": {"domain": "mix"}})
    assert plan("m", registry.names(), "0.5", "0.25")[-1].method == "halfzero"
    # a folder name for any method name, registered or not (the app names a job before it validates)
    assert CompressRequest("m", CFG.replace(iterations=5), "svdllm").folder_name() == "m-svdllm-c0.5-k0-row-mix"

    res = sweep("tiny-lm", "halfzero", [0.5], [0.25], root=tmp_path, loaded=tiny_loaded(), **KW)
    assert res.computed == ["tiny-lm-halfzero-c0.5-k0-row-cal4x32s0-mix"]
    dense, half = res.rows
    assert (half["method"], half["mode"], half["rank_ratio"], half["compression"]) == ("halfzero", "both", 0.0, 0.5)
    assert math.isfinite(half["perplexity"]) and half["perplexity"] != dense["perplexity"]
    m = json.loads((tmp_path / res.computed[0] / "manifest.json").read_text())
    assert m["method"] == "halfzero" and all(layer["rank"] == 0 for layer in m["layers"])
    again = sweep("tiny-lm", "halfzero", [0.5], [0.25], root=tmp_path, loaded=tiny_loaded(), **KW)
    assert again.reused == res.computed and not again.computed
    assert again.rows[1]["perplexity"] == pytest.approx(half["perplexity"], rel=1e-6)


def test_app_method_list_includes_a_registered_method(halfzero):
    from ui.state import method_choices, method_help
    choices = method_choices()
    assert list(choices) == registry.names() and list(choices)[-1] == "halfzero"
    assert choices["halfzero"] == "test only: keep the larger half of each row by |W_ij|"
    assert "- **halfzero**: test only: keep the larger half of each row by |W_ij|" in method_help().splitlines()
    registry.unregister("halfzero")
    assert "halfzero" not in method_choices() and list(method_choices())[:6] == ALL_BUILTIN


def test_a_registered_method_gets_the_contract_checks(halfzero, tmp_path):
    """The checks tests/test_contracts_methods.py runs for every registered method (budget,
    variants, run folder and export round trips, on both tiny models) hold for this one."""
    check_method_contract("halfzero", tmp_path)


def test_cli_sweep_runs_a_registered_method(halfzero, tmp_path, capsys):
    """``oats sweep --methods NAME`` on a model folder: the method's run is made and tabled."""
    folder = tiny_llama_folder(tmp_path / "tiny-llama")
    root = tmp_path / "runs"
    assert cli_main(["sweep", str(folder), "--methods", "halfzero", "--compression", "0.5", "--calib-samples", "2",
                     "--seq-len", "8", "--quick", "--root", str(root), "--out", str(root / "table")]) == 0
    capsys.readouterr()
    (run,) = [p for p in root.iterdir() if "-halfzero-" in p.name]
    m = read_manifest(run)
    assert m["complete"] and m["method"] == "halfzero" and all(layer["rank"] == 0 for layer in m["layers"])
    rows = json.loads((root / "table" / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert [r["method"] for r in rows if r["method"] != "dense"] == ["halfzero"]


def test_the_compress_page_offers_a_registered_method(halfzero, tmp_path, monkeypatch):
    """The Compress page's method box (pages/home.py, the app's first page, through AppTest) lists
    the method, described in its help."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (box,) = [s for s in at.selectbox if s.label == "Method"]
    assert list(box.options) == registry.names() and box.options[-1] == "halfzero"
    assert "halfzero" in box.help and "keep the larger half of each row" in box.help
    box.set_value("halfzero").run()
    assert not at.exception and [s for s in at.selectbox if s.label == "Method"][0].value == "halfzero"


def test_the_test_methods_are_gone_afterwards():
    for name in TEST_METHODS:
        assert name not in registry.names() and name not in METHODS and name not in BUDGET_NOTES, name
    assert registry.names()[:6] == ALL_BUILTIN and list(METHODS) == list(BUDGET_NOTES) == registry.names()


def test_the_walkthrough_replay_comes_from_the_records(halfzero, gramspy):
    """The Walkthrough asks the registry how to replay a run's method (``registry.replay_for``):
    a method with no replay of its own gets the registered replay that covers its statistics (as
    its own solver) or stands in for them (with a note on the page). A method registered with a
    replay of its own is replayed by it: tests/test_walkthrough_replay.py."""
    assert registry.get("halfzero").replay is None and registry.get("gramspy").replay is None
    assert registry.replay_for("gramspy") == (registry.get("hassle").replay, True)
    assert registry.replay_for("halfzero") == (registry.get("oats").replay, False)


def test_variants_follow_the_method_record_and_the_rank_it_really_used():
    """One notion of a run's variants: a one-term method (rank 0, or no sparse term) has dense and
    the compressed model only; a two-term method has all four unless its kappa left a term empty."""
    import types
    from oats.explain import vit
    for name in ("wanda", "magnitude", "sparsegpt", "lowrank"):
        assert registry.variants(name) == ("dense", "both"), name
        assert registry.variants(name, OatsConfig(rank_ratio=0.25)) == ("dense", "both"), name
    for name in ("oats", "hassle"):
        assert registry.variants(name, OatsConfig(rank_ratio=0.25)) == ("dense", "both", "sparse", "lowrank")
        assert registry.variants(name, OatsConfig(rank_ratio=0.0)) == ("dense", "both")  # no low-rank term
    assert registry.variants("not-a-method") == ("dense", "both")
    assert [registry.terms(n, OatsConfig(rank_ratio=0.25)) for n in ("oats", "wanda", "lowrank")] == \
        ["sparse + low-rank", "sparse", "low-rank"]
    wanda = types.SimpleNamespace(method="wanda", config=OatsConfig(rank_ratio=0.25))
    oats_run = types.SimpleNamespace(method="oats", config=OatsConfig(rank_ratio=0.25))
    assert registry.run_variants(wanda) == ("dense", "both")
    # the ViT page: each term alone for a two-term run, else dense against the compressed model
    assert vit.run_modes(oats_run) == ("dense", "sparse", "lowrank")
    assert vit.run_modes(wanda) == ("dense", "both")
    assert vit.mode_labels(wanda)["both"] == "compressed (sparse)"
    assert vit.mode_labels(oats_run)["both"] == "compressed (S + L)"


def test_the_settings_a_method_reads_are_in_its_record():
    """The Compress form shows kappa, iterations and solver from these fields only."""
    uses = {n: (registry.get(n).uses_rank_ratio, registry.get(n).iterative) for n in ALL_BUILTIN}
    assert uses["oats"] == (True, True) and uses["hassle"] == (True, True)
    for name in ("wanda", "magnitude", "sparsegpt", "lowrank"):
        assert uses[name] == (False, False), name


def test_check_modes_is_the_one_variant_check():
    from oats.errors import ConfigError
    assert registry.check_modes(["both", "dense"], need_dense=True) == ("dense", "both")
    assert registry.check_modes("both") == ("both",)
    assert registry.check_modes(["sparse"], allowed=("dense", "sparse")) == ("sparse",)
    for bad, needle in ((["x"], "unknown variant 'x'"), ([], "no variant"), (["both"], "must include dense"),
                        (5, "list of variant names")):
        with pytest.raises(ConfigError, match=needle):
            registry.check_modes(bad, need_dense=True)
    with pytest.raises(ConfigError, match="choose among dense, both$"):
        registry.check_modes(["lowrank"], allowed=("dense", "both"))
