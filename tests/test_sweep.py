"""Sweeps: the tidy table, run reuse (a repeated sweep only evaluates), bad inputs.
A tiny model and a character tokenizer built here; the CLI on minilm-l6 under -m integration."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import assert_cli_fails  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM

import oats.compress.pipeline
from oats import OatsConfig, compress_model, evaluation, list_runs, save_run
from oats.cli import main as cli_main
from oats.runner.request import CompressRequest
from oats.errors import ConfigError, RunError
from oats.runner.sweep import (RESULTS_CSV, RESULTS_JSON, list_sweeps, load_results, parse_list, plan,
                        sweep)
from oats.models.zoo import LoadedModel


class CharTokenizer:
    """One id per character: enough tokenizer for calibration and perplexity."""

    pad_token = "<pad>"

    def __call__(self, text, add_special_tokens=False, verbose=False, **kw):
        return {"input_ids": [2 + ord(c) % 62 for c in text]}


def tiny_loaded(seed=0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512)).eval()
    return LoadedModel(name="tiny-lm", model=model, task="causal-lm", tokenizer=CharTokenizer())


METHODS = ["oats", "wanda", "sparsegpt", "magnitude", "lowrank"]
KW = dict(iterations=5, quick=True, calib_samples=4, seq_len=32)


def run_sweep(root, loaded=None, **kw):
    return sweep("tiny-lm", METHODS, [0.4, 0.6], [0.25], root=root, loaded=loaded or tiny_loaded(), **{**KW, **kw})


def test_sweep_table_runs_and_reuse(tmp_path, monkeypatch):
    res = run_sweep(tmp_path)
    rows = res.rows
    assert res.folder == tmp_path / "sweeps" / "tiny-lm"
    # one dense row, OATS in three modes, every other method in one
    assert len(rows) == 1 + 2 * 3 + 4 * 2 and len(res.computed) == 10 and not res.reused
    dense = rows[0]
    assert (dense["method"], dense["mode"], dense["run"], dense["compression"]) == ("dense", "dense", "", 0.0)
    oats_modes = [r["mode"] for r in rows if r["method"] == "oats" and r["compression"] == 0.4]
    assert oats_modes == ["both", "sparse", "lowrank"]
    kappas = {r["method"]: r["rank_ratio"] for r in rows[1:]}
    assert kappas == {"oats": 0.25, "wanda": 0.0, "sparsegpt": 0.0, "magnitude": 0.0, "lowrank": 1.0}
    for r in rows[1:]:
        assert r["perplexity"] > 0 and r["compress_time_s"] > 0 and r["run"]
        assert r["perplexity"] != dense["perplexity"]
    # the files: CSV and JSON hold the same tidy table
    with open(res.folder / RESULTS_CSV) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert list(table[0])[:7] == ["model", "method", "compression", "rank_ratio", "sparsity", "allocation", "mode"]
    assert list(table[0])[-3:] == ["compress_time_s", "eval_time_s", "run"] and "perplexity" in table[0]
    assert load_results(res.folder) == json.loads((res.folder / RESULTS_JSON).read_text())
    assert list_sweeps(tmp_path) == [res.folder]
    runs = {r["name"]: r for r in list_runs(tmp_path)}
    assert set(runs) == set(res.computed) and all(r["status"] == "complete" for r in runs.values())
    assert "tiny-lm-oats-c0.4-k0.25-row-it5-cal4x32s0-mix" in runs

    # a repeated sweep compresses nothing and reproduces the table
    monkeypatch.setattr(oats.compress.pipeline, "compress_model", lambda *a, **k: pytest.fail("a run was recompressed"))
    again = run_sweep(tmp_path)
    assert not again.computed and sorted(again.reused) == sorted(res.computed)
    for a, b in zip(rows, again.rows):
        assert set(a) == set(b)
        for k in a:
            if isinstance(a[k], float) and k != "eval_time_s":
                assert b[k] == pytest.approx(a[k], rel=1e-6), k
            elif k != "eval_time_s":
                assert a[k] == b[k], k
    assert any((r["method"], r["compression"], r["rank_ratio"], r["mode"]) == ("oats", 0.4, 0.25, "sparse")
               for r in again.rows)


def test_oats_at_kappa_0_is_evaluated_as_the_one_term_model_it_is(tmp_path):
    """OATS with no low-rank term: its "sparse" variant would repeat the compressed model and its
    "lowrank" one be all zeros, so the sweep measures dense and the compressed model only."""
    res = sweep("tiny-lm", ["oats"], [0.4], [0.0], root=tmp_path, loaded=tiny_loaded(), **KW)
    assert [(r["method"], r["mode"]) for r in res.rows] == [("dense", "dense"), ("oats", "both")]
    assert evaluation.run_modes("oats", OatsConfig(rank_ratio=0.0)) == ("dense", "both")
    assert evaluation.run_modes("oats", OatsConfig(rank_ratio=0.25)) == ("dense", "both", "sparse", "lowrank")
    assert evaluation.run_modes("wanda", OatsConfig(rank_ratio=0.25)) == ("dense", "both")


def test_sweep_redoes_unfinished_runs_and_refuses_foreign_folders(tmp_path):
    kw = dict(methods=["wanda"], compression=[0.5], root=tmp_path, **KW)
    first = sweep("tiny-lm", loaded=tiny_loaded(), **kw)
    (name,) = first.computed
    mpath = tmp_path / name / "manifest.json"
    m = json.loads(mpath.read_text())
    m["complete"] = False
    mpath.write_text(json.dumps(m))
    second = sweep("tiny-lm", loaded=tiny_loaded(), **kw)
    assert second.computed == [name] and json.loads(mpath.read_text())["complete"]
    m = json.loads(mpath.read_text())
    m["model_name"] = "other-model"
    mpath.write_text(json.dumps(m))
    with pytest.raises(RunError, match=r"holds another compression \(of other-model, wanda\): move it away"):
        sweep("tiny-lm", loaded=tiny_loaded(), **kw)


def _name(model, method, cfg):
    return CompressRequest(model, cfg, method).folder_name()


def test_run_names_are_deterministic_and_specific():
    cfg = OatsConfig(compression=0.5, rank_ratio=0.25)
    assert _name("smollm2-135m", "oats", cfg) == "smollm2-135m-oats-c0.5-k0.25-row-mix"
    assert _name("smollm2-135m", "wanda", cfg) == "smollm2-135m-wanda-c0.5-k0-row-mix"
    assert _name("smollm2-135m", "lowrank", cfg) == "smollm2-135m-lowrank-c0.5-k1-row-mix"
    # a name that the slug changes gets a short hash of itself: 'org/model' and 'org-model' differ
    assert _name("org/model", "oats", cfg.replace(sparsity="2:4")) == "org-model-f070b1-oats-c0.5-k0.25-2of4-mix"
    assert _name("org-model", "oats", cfg) == "org-model-oats-c0.5-k0.25-row-mix"
    assert _name("./minilm-l6", "oats", cfg) != _name("minilm-l6", "oats", cfg)
    specs = plan("m", "oats,wanda", "0.3,0.5", "0.2,0.3")
    assert [(s.method, s.config.compression, s.rank_ratio) for s in specs] == [
        ("oats", 0.3, 0.2), ("oats", 0.3, 0.3), ("oats", 0.5, 0.2), ("oats", 0.5, 0.3),
        ("wanda", 0.3, 0.0), ("wanda", 0.5, 0.0)]


@pytest.mark.parametrize("args,message", [
    (("methods", "oats,foo", {"methods": True}), "unknown method 'foo'"),
    (("rates", "0.3,1.2", {"unit_open": True}), "rates value 1.2 is outside (0, 1)"),
    (("rates", "0,0.5", {"unit_open": True}), "rates value 0 is outside (0, 1)"),
    (("rates", "0.3,abc", {"unit_open": True}), "rates value 'abc' is not a number"),
    (("rank ratios", "0.2,1", {}), "rank ratios value 1 is outside [0, 1)"),
    (("rates", " , ", {"unit_open": True}), "rates is empty"),
])
def test_parse_list_errors(args, message):
    name, value, kw = args
    with pytest.raises(ConfigError) as e:
        parse_list(value, name, **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_load_results_errors(tmp_path):
    with pytest.raises(RunError, match="holds no sweep results"):
        load_results(tmp_path)
    (tmp_path / RESULTS_JSON).write_text("{not json")
    with pytest.raises(RunError, match="damaged"):
        load_results(tmp_path)
    assert list_sweeps(tmp_path / "nowhere") == []


@pytest.mark.parametrize("argv,message", [
    (["sweep", "minilm-l6", "--methods", "oats,nope"], "unknown method 'nope' in --methods"),
    (["sweep", "minilm-l6", "--compression", "0.3,1.5"], "--compression value 1.5 is outside (0, 1)"),
    (["sweep", "minilm-l6", "--compression", "0.3,-0.1"], "--compression value -0.1 is outside (0, 1)"),
    (["sweep", "minilm-l6", "--rank-ratio", "1"], "--rank-ratio value 1 is outside [0, 1)"),
    (["sweep", "minilm-l6", "--methods", "lowrank", "--sparsity", "2:4"], "no sparse term"),
    (["sweep", "minilm-l6", "--allocation", "owl", "--owl-lambda", "0.35"], "use lambda < 0.3"),
])
def test_cli_sweep_bad_inputs_exit_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    assert_cli_fails(argv, message, capsys)


def test_cli_sweep_refuses_a_run_folder_of_another_model(tmp_path, capsys):
    """The folder a sweep would reuse holds another model's run: one line, status 2, nothing loaded."""
    loaded = tiny_loaded()
    g = torch.Generator().manual_seed(0)
    run = compress_model(loaded.model, [{"input_ids": torch.randint(0, 64, (2, 8), generator=g)}],
                         OatsConfig(iterations=2), method="wanda", model_name="smollm2-135m")
    save_run(run, tmp_path / "minilm-l6-wanda-c0.5-k0-row-mix")
    code = cli_main(["sweep", "minilm-l6", "--methods", "wanda", "--compression", "0.5", "--root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds another compression (of smollm2-135m, wanda): move it away or give another --root" in err


@pytest.mark.integration
def test_cli_sweep_on_minilm_then_rerun_only_evaluates(tmp_path):
    from oats.models.zoo import preset_available
    ok, how = preset_available("minilm-l6")
    if not ok:
        pytest.fail(f"minilm-l6 is not installed: {how}")
    exe = Path(sys.executable).with_name("oats")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "oats.cli"]
    args = ["sweep", "minilm-l6", "--methods", "wanda,magnitude", "--compression", "0.4,0.6", "--quick",
            "--calib-samples", "32", "--root", str(tmp_path)]
    first = subprocess.run(cmd + args, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "4 runs compressed, 0 reused" in first.stdout
    # the means by rate, naming the text, then the primary metric per domain with each method's rank there
    assert "cosine: mean over the domains, on held-out text of 4 domains (Python manual, Python code, " in first.stdout
    assert "| method | rank ratio | cosine to dense (mean) | Python manual | Python code | Shakespeare | State of the Union |" \
        in first.stdout.splitlines()
    assert "ρ = 0.4" in first.stdout and "ρ = 0.6" in first.stdout and "(#1)**" in first.stdout
    second = subprocess.run(cmd + args, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "0 runs compressed, 4 reused" in second.stdout
    rows = load_results(tmp_path / "sweeps" / "minilm-l6")
    assert [r["method"] for r in rows] == ["dense", "wanda", "wanda", "magnitude", "magnitude"]
    by = {(r["method"], r["compression"]): r["cosine"] for r in rows}
    # more compression, less fidelity; Wanda above magnitude at the same rate
    assert by[("wanda", 0.4)] > by[("wanda", 0.6)] and by[("wanda", 0.6)] > by[("magnitude", 0.6)]
