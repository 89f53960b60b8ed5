"""Run manifests as ``RunInfo``, and a run folder written by older code.

``fixtures/old_run_v1`` was written by the code at commit e1c37e8 (manifest format 1; its
README says how). Its model is a local folder named ``tiny-llama``: the tests rebuild that
model (the same weights, ``tiny_models.tiny_llama_folder``) in a temporary working
directory, so the run's own model name finds it, as it did when the run was made.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import oats
from oats import OatsConfig, RunError, compress_model, save_run
from oats.cli import main as cli_main
from oats.core.decompose import input_scale
from oats.core.linear import OatsLinear
from oats.runs.folders import FORMAT, MANIFEST, RunInfo, check_run_model, list_runs, read_manifest

from tiny_models import batches, tiny_llama, tiny_llama_folder, tiny_text

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "old_run_v1"
MODEL = "tiny-llama"
CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=6)


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    """The old run folder copied to ``tmp_path/runs/old_run_v1``, its model rebuilt as
    ``tmp_path/tiny-llama``, and ``tmp_path`` the working directory."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / "old_run_v1"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("README.md"))
    tiny_llama_folder(tmp_path / MODEL)
    return folder


@pytest.fixture(scope="module")
def tiny_run():
    return compress_model(tiny_llama(layers=1), batches(), CFG, model_name="tiny")


def _write(folder: Path, manifest: dict) -> Path:
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


# ----------------------------------------------------------------------------- RunInfo


def test_run_info_is_what_the_writer_wrote(tiny_run, tmp_path):
    save_run(tiny_run, tmp_path / "r", extra={"task": "causal-lm", "model_source": "test",
                                              "calibration_request": {"samples": 3}, "note": "kept"})
    info = RunInfo.read(tmp_path / "r")
    assert (info.model_name, info.method, info.config, info.complete) == ("tiny", "oats", CFG, True)
    assert info.format == FORMAT and info.family == "llama" and info.status == "complete"
    assert [r.to_dict() for r in info.layers] == [r.to_dict() for r in tiny_run.layers]
    assert list(info.blocks) == tiny_run.blocks and info.blocks_done == (0,)
    assert (info.params_dense, info.params_kept) == (tiny_run.params_dense, tiny_run.params_kept)
    assert info.compression_achieved == pytest.approx(1 - tiny_run.params_kept / tiny_run.params_dense)
    assert info.modules["model.layers.0.mlp.down_proj"].shape == (64, 128)
    assert (info.task, info.model_source, info.calibration_request) == ("causal-lm", "test", {"samples": 3})
    assert info.extra == {"note": "kept"} and info.sweep is None
    assert info.calibration["tokens"] == 3 * 2 * 12 and "total_s" in info.timings and "torch" in info.versions
    # written back, nothing is lost
    raw = read_manifest(tmp_path / "r")
    assert json.loads(json.dumps(info.to_manifest())) == raw
    assert RunInfo.from_manifest(raw) == info


@pytest.mark.parametrize("method,kappa", [("oats", 0.25), ("wanda", 0.0), ("sparsegpt", 0.0),
                                          ("magnitude", 0.0), ("lowrank", 1.0)])
def test_rank_ratio_is_the_one_the_method_used(tiny_run, method, kappa):
    m = json.loads(json.dumps(RunInfo.of_run(tiny_run, True).to_manifest()))
    m["method"] = method
    info = RunInfo.from_manifest(m)
    assert info.rank_ratio == kappa and info.config.rank_ratio == 0.25


def test_manifest_without_the_newer_optional_keys_reads(tiny_run, tmp_path):
    """The first format-1 writer wrote no budget_note, block_rates, allocation, task,
    model_source or calibration_request; a manifest may lack the other optional keys too."""
    save_run(tiny_run, tmp_path / "r")
    m = read_manifest(tmp_path / "r")
    required = {k: m[k] for k in ("format", "model_name", "method", "config", "layers", "blocks")}
    _write(tmp_path / "r", required)
    info = RunInfo.read(tmp_path / "r")
    assert info.block_rates is None and info.allocation is None and info.budget_note == ""
    assert info.task is None and info.calibration_request is None and not info.complete
    # without blocks_done, the blocks with records are the ones done (never "none": that would load it dense)
    assert info.blocks_done == tuple(b["index"] for b in m["blocks"]) and info.modules == {}
    assert info.params_dense == 0
    assert math.isnan(info.compression_achieved) and info.rank_ratio == 0.25
    assert RunInfo.from_manifest(required) == info and read_manifest(tmp_path / "r") == required


def test_newer_and_damaged_manifests_fail_in_one_line(tiny_run, tmp_path):
    save_run(tiny_run, tmp_path / "r")
    m = read_manifest(tmp_path / "r")
    cases = {
        "newer": ({**m, "format": FORMAT + 1},
                  f"run folder '{tmp_path / 'r'}' was written by a newer oats (manifest format {FORMAT + 1}; this "
                  f"one reads 1): update oats to open it"),
        "no format": ({k: v for k, v in m.items() if k != "format"}, "damaged manifest (unknown format)"),
        "format true": ({**m, "format": True}, "damaged manifest (unknown format)"),
        "no config": ({k: v for k, v in m.items() if k != "config"}, "damaged manifest (missing config)"),
        "bad config": ({**m, "config": {**m["config"], "compression": 2}}, "damaged manifest (compression must be"),
        "bad layer": ({**m, "layers": [{"block": 0}]}, "damaged manifest ("),
        "not an object": ([1, 2], "damaged manifest (unknown format)"),
    }
    for name, (manifest, message) in cases.items():
        _write(tmp_path / "r", manifest)
        for read in (RunInfo.read, read_manifest):
            with pytest.raises(RunError) as e:
                read(tmp_path / "r")
            assert message in str(e.value) and len(str(e.value).splitlines()) == 1, (name, str(e.value))
        row = list_runs(tmp_path)[0]
        assert row["status"] == "damaged" and message in row["problem"] and row["info"] is None, name


def test_list_runs_rows_come_from_run_info(tiny_run, tmp_path):
    save_run(tiny_run, tmp_path / "r")
    (row,) = list_runs(tmp_path)
    info = RunInfo.read(tmp_path / "r")
    assert row["info"] == info
    assert {k: v for k, v in row.items() if k != "info"} == {
        "name": "r", "path": str(tmp_path / "r"), "status": "complete", "model_name": "tiny", "method": "oats",
        "compression": 0.5, "rank_ratio": 0.25, "sparsity": "row", "blocks_done": 1, "created": info.created}


def test_cli_runs_prints_the_model_column(tiny_run, tmp_path, capsys):
    save_run(tiny_run, tmp_path / "r")
    assert cli_main(["runs", "--root", str(tmp_path)]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["name", "status", "model", "method", "compression", "rank_ratio", "problem"]
    assert row.split() == ["r", "complete", "tiny", "oats", "0.5", "0.25"]


def test_run_made_for_another_model_is_refused(tiny_run, tmp_path):
    save_run(tiny_run, tmp_path / "r")
    info = RunInfo.read(tmp_path / "r")
    check_run_model(tmp_path / "r", info, "tiny")
    with pytest.raises(RunError, match="was made for 'tiny', not 'other'"):
        check_run_model(tmp_path / "r", info, "other")


# ----------------------------------------------------------------------------- the old run folder


def test_old_run_reads_as_run_info(old_run):
    info = RunInfo.read(old_run)
    assert (info.format, info.model_name, info.method, info.family, info.task) == (1, MODEL, "oats", "llama",
                                                                                  "causal-lm")
    # recorded before the Gram shrinkage existed: read as the full Gram it was (lambda 0)
    assert info.config == OatsConfig(compression=0.5, rank_ratio=0.25, iterations=8, shrink=0.0)
    assert info.complete and info.blocks_done == (0, 1) and info.rank_ratio == 0.25
    assert len(info.layers) == 14 and {r.block for r in info.layers} == {0, 1}
    assert (info.params_dense, info.params_kept) == (4608, 2144)
    assert info.calibration_request == {"samples": 4, "seq_len": 16, "seed": 0, "source": "calib.txt"}
    assert info.modules["model.layers.1.self_attn.k_proj"].shape == (8, 16)
    old = json.loads((old_run / MANIFEST).read_text())
    # written back, it names the settings it predates at the values it used (no Gram shrinkage)
    assert json.loads(json.dumps(info.to_manifest())) == {**old, "config": {**old["config"], "shrink": 0.0}}
    (row,) = list_runs(old_run.parent)
    assert (row["name"], row["status"], row["model_name"], row["info"]) == ("old_run_v1", "complete", MODEL, info)


@pytest.mark.parametrize("model_flag", [[], ["--model", MODEL]])
def test_old_run_evaluates_through_the_cli(old_run, tmp_path, capsys, model_flag):
    (tmp_path / "eval.txt").write_text(tiny_text(300, seed=1))
    argv = ["evaluate", str(old_run), *model_flag, "--text", "eval.txt", "--quick", "--json"]
    assert cli_main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["model"], out["method"], out["compression"], out["rank_ratio"]) == (MODEL, "oats", 0.5, 0.25)
    assert out["task"] == "causal-lm" and out["primary_metric"] == "perplexity"
    assert sorted(out["metrics"]) == ["both", "dense", "lowrank", "sparse"]
    for mode, metrics in out["metrics"].items():
        assert 1 < metrics["perplexity"] < 1e3 and math.isfinite(metrics["nll"]), mode
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["nll"]))
    assert out["metrics"]["both"]["perplexity"] != out["metrics"]["dense"]["perplexity"]


def test_old_run_evaluation_refuses_another_model(old_run, tmp_path, capsys):
    tiny_llama_folder(tmp_path / "other")
    assert cli_main(["evaluate", str(old_run), "--model", "other", "--quick"]) == 2
    assert f"was made for '{MODEL}', not 'other'" in capsys.readouterr().err


def test_old_run_loads_with_its_factors(old_run):
    run = oats.load_run(old_run)
    info = RunInfo.read(old_run)
    assert run.model_name == MODEL and run.config == info.config and len(run.layers) == 14
    modules = run.modules()
    assert set(modules) == set(info.modules)
    stored = {}
    for b in info.blocks_done:
        stored.update(load_file(str(old_run / f"block_{b:03d}.safetensors")))
    for path, mod in modules.items():
        assert isinstance(mod, OatsLinear) and mod.rank == info.modules[path].rank
        assert torch.equal(mod.u, stored[f"{path}.u"]) and torch.equal(mod.v, stored[f"{path}.v"])
        assert torch.equal(mod.sparse[mod.sparse != 0], stored[f"{path}.sparse_values"])
    # the rebuilt model is the one the run was made from: the recorded errors come out again
    for rec in run.layers:
        assert torch.equal(run.second_moments[rec.qualname], stored[f"{rec.qualname}.m2"])
        f = run.factors(rec.qualname)
        d = input_scale(run.second_moments[rec.qualname], rec.shape[1], run.config.eps)
        w = f["weight"].float()
        err = torch.linalg.norm((w - f["sparse"] - f["u"] @ f["v"]) * d) / torch.linalg.norm(w * d)
        assert float(err) == pytest.approx(rec.scaled_error, rel=1e-4), rec.qualname
        assert int((f["sparse"] != 0).sum()) == rec.nnz


def test_old_run_opens_in_the_app(old_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("OATS_RUNS_DIR", str(old_run.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    saved = [df.value for df in at.dataframe if "blocks_done" in df.value.columns][0]
    assert saved[["name", "status", "model", "method"]].values.tolist() == [["old_run_v1", "complete", MODEL, "oats"]]
    assert saved["rank_ratio"].tolist() == [0.25]
    assert any("Summary: old_run_v1" in h.value for h in at.subheader)
    for page in ("spectra", "error_budget", "compare", "walkthrough", "outliers"):
        at.switch_page(f"pages/{page}.py")
        at.run()
        assert not at.exception and not at.error, (page, [*at.exception, *at.error])
        assert at.get("plotly_chart"), page
