"""One request type and one ``execute`` behind ``oats compress``, the app's jobs and ``oats sweep``.

Tiny Llama models built in the test stand in for the zoo (no downloads).
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import batches, tiny_llama

from oats import OatsConfig, load_run
from oats.compress.allocation import Owl
from oats.errors import ConfigError, RunError
from oats.models import zoo
from oats.runner.execute import Cancelled, execute, folder_state
from oats.runner.jobs import JobRunner
from oats.runner.request import CompressRequest, request_from_manifest
from oats.runner.sweep import sweep
from oats.runs.folders import read_manifest

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=4)


@pytest.fixture
def fake_zoo(monkeypatch):
    """zoo.load_model / data.calibration_batches answering with the tiny Llama; records the
    options each load was asked for."""
    from oats import data
    calls = []

    def load(name, **kw):
        calls.append((name, kw))
        if name != "tiny":
            raise zoo.ModelLoadError(f"unknown model {name!r}: use a preset")
        return zoo.LoadedModel(name="tiny", model=tiny_llama(), task="causal-lm", source="test")

    monkeypatch.setattr(zoo, "load_model", load)
    monkeypatch.setattr(data, "calibration_batches", lambda loaded, **kw: batches())
    return calls


def _factors(folder):
    run = load_run(folder, model=tiny_llama())
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def test_same_run_compares_what_decides_the_result():
    req = CompressRequest("m", CFG, "oats", calib_samples=8)
    m = {"model_name": "m", "method": "oats", "config": CFG.to_dict(),
         "calibration_request": {"samples": 8, "seq_len": None, "seed": 0, "source": None, "domain": "mix"}}
    assert req.same_run(m)
    assert not req.same_run({**m, "config": CFG.replace(iterations=5).to_dict()})  # OATS: iterations matter
    assert not req.same_run({**m, "calibration_request": {"samples": 16}})          # other calibration
    assert not req.same_run({**m, "allocation": {"name": "owl", "lam": 0.05, "threshold": 5.0}})
    assert not req.same_run({**m, "model_name": "other"})
    assert not req.same_run({"config": "damaged"})
    # a sparse-only method ignores the settings it never reads (rank ratio, iterations, solver)
    wanda = CompressRequest("m", CFG, "wanda", calib_samples=8)
    assert wanda.same_run({**m, "method": "wanda", "config": CFG.replace(rank_ratio=0.4, iterations=9).to_dict()})
    assert not wanda.same_run({**m, "method": "wanda", "config": CFG.replace(compression=0.6).to_dict()})


def test_request_round_trips_through_json_and_manifest():
    req = CompressRequest("tiny", CFG, "oats", allocation=Owl(0.05, 4.0), calib_samples=4, seq_len=16, seed=3,
                          device="cpu", generic=True, trust_remote_code=True, evaluate=False)
    assert CompressRequest.from_json(req.to_json()) == req
    m = {"model_name": "tiny", "method": "oats", "config": CFG.to_dict(),
         "allocation": {"name": "owl", "lam": 0.05, "threshold": 4.0},
         "calibration_request": req.calibration_request()}
    back = request_from_manifest(m, device="cpu", generic=True, trust_remote_code=True, evaluate=False)
    assert back == req
    # the folder name tells OWL and calibration apart
    assert "owl0.05m4" in req.folder_name() and "cal4x16s3" in req.folder_name()


def test_execute_resumes_an_interrupted_run_to_the_same_factors(tmp_path, fake_zoo):
    req = CompressRequest("tiny", CFG, evaluate=False)
    whole = execute(req, tmp_path / "whole")
    assert whole.status == "computed" and len(whole.run.blocks) == 2

    def stop_after_first(done, total, message):
        if done == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        execute(req, tmp_path / "cut", progress=stop_after_first)
    assert folder_state(req, tmp_path / "cut").action == "resume"
    again = execute(req, tmp_path / "cut")
    assert again.status == "resumed" and again.resumed_blocks == 1
    a, b = _factors(tmp_path / "whole"), _factors(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # asked again: the complete run is opened, not recomputed
    assert execute(req, tmp_path / "cut").status == "reused"


def test_execute_refuses_another_run_and_replaces_on_request(tmp_path, fake_zoo):
    execute(CompressRequest("tiny", CFG, evaluate=False), tmp_path)
    other = CompressRequest("tiny", CFG.replace(compression=0.6), evaluate=False)
    with pytest.raises(RunError, match="holds another compression"):
        execute(other, tmp_path)
    out = execute(other, tmp_path, if_exists="replace")
    assert out.status == "computed" and read_manifest(tmp_path)["config"]["compression"] == 0.6
    # bad requests fail before anything loads
    fake_zoo.clear()
    with pytest.raises(ConfigError, match="sparsity 2:4 does not apply"):
        execute(CompressRequest("tiny", CFG.replace(sparsity="2:4"), "lowrank"), tmp_path / "x")
    with pytest.raises(ConfigError, match="device 'tpu'"):
        execute(CompressRequest("tiny", CFG, device="tpu"), tmp_path / "y")
    assert fake_zoo == []


def test_app_jobs_carry_the_cli_options(tmp_path, fake_zoo):
    """device, generic and trust_remote_code reach the load and the pipeline from a job too."""
    runner = JobRunner()
    job = runner.start(CompressRequest("tiny", CFG, device="cpu", trust_remote_code=True, evaluate=False),
                       root=tmp_path)
    s = job.wait(120)
    assert s.status == "done", s.error
    assert fake_zoo[-1] == ("tiny", {"trust_remote_code": True})
    bad = runner.start(CompressRequest("tiny", CFG, device="tpu", evaluate=False), root=tmp_path / "b")
    s = bad.wait(60)
    assert s.status == "failed" and s.error == "device 'tpu' is not understood: use cpu or cuda"


def test_sweep_resumes_an_unfinished_run(tmp_path, monkeypatch):
    from test_sweep import KW, tiny_loaded
    kw = dict(KW, root=tmp_path)
    name = CompressRequest("tiny-lm", OatsConfig(compression=0.4, rank_ratio=0.25, iterations=5), "oats",
                           calib_samples=4, seq_len=32).folder_name()
    first = sweep("tiny-lm", ["oats"], [0.4], [0.25], loaded=tiny_loaded(), **kw)
    assert first.computed == [name]
    folder = tmp_path / name
    full = _manifest_layers(folder)
    # cut the run back to its first block, as a killed sweep leaves it
    m = json.loads((folder / "manifest.json").read_text())
    m["complete"] = False
    m["blocks_done"], m["blocks"] = m["blocks_done"][:1], m["blocks"][:1]
    m["layers"] = [r for r in m["layers"] if r["block"] == 0]
    m["modules"] = {p: v for p, v in m["modules"].items() if p in {r["path"] for r in m["layers"]}}
    (folder / "manifest.json").write_text(json.dumps(m))
    (folder / "block_001.safetensors").unlink()
    logs = []
    second = sweep("tiny-lm", ["oats"], [0.4], [0.25], loaded=tiny_loaded(), log=logs.append, **kw)
    assert second.computed == [name] and any("resumed after 1 blocks" in line for line in logs)
    assert _manifest_layers(folder) == full


def _manifest_layers(folder):
    m = read_manifest(folder)
    return [(r["qualname"], r["rank"], r["nnz"], round(r["scaled_error"], 6)) for r in m["layers"]]
