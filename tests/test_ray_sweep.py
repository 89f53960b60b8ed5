"""``oats sweep --engine ray``: the same run folders and table as the local engine, a killed
worker's run resumed (not restarted), a failing run that does not lose the others, and the
one-line errors (Ray missing, bad settings).

One local Ray instance (2 CPUs) serves the whole module; its workers load tests/ray_hooks.py,
which kills or fails a chosen run after a chosen block when a test asks for it. The model is
a tiny 4-block Llama folder, so each run takes a second or two; the waits are Ray's and the
compressions', nothing here is timed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import skip_or_fail
from tiny_models import assert_cli_fails, tiny_llama_folder, without_keys

import oats.compress.pipeline
from oats.cli import main as cli_main
from oats.runner.sweep import load_results
from oats.runs.folders import read_manifest

from oats.runner.cluster import RayEngine, local_runtime_env

try:
    import ray
except ImportError:  # make test installs the [cluster] extra; in CI a missing Ray fails these tests
    ray = None

TESTS = Path(__file__).resolve().parent
FLAGS = ["--methods", "oats,hassle,wanda", "--compression", "0.4,0.6", "--iterations", "5", "--calib-samples", "4",
         "--seq-len", "16", "--quick"]
KILLED_RUN_RATE = "c0.6"
TIME_KEYS = {"created", "timings", "sweep", "versions"}


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def cluster(faults):
    """One local Ray instance for the module, its workers carrying the fault hook."""
    if ray is None:
        skip_or_fail("Ray is not installed: pip install -e '.[cluster]' (make test does)")
    if ray.is_initialized():
        ray.shutdown()
    env = local_runtime_env()
    env["env_vars"]["PYTHONPATH"] = os.pathsep.join([env["env_vars"]["PYTHONPATH"], str(TESTS)])
    env["env_vars"]["OATS_TEST_FAULTS"] = str(faults)
    env["worker_process_setup_hook"] = "ray_hooks.install"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_llama_folder(tmp_path_factory.mktemp("tiny") / "tiny-llama", hidden=16, layers=4))


@pytest.fixture(scope="module")
def local_root(tmp_path_factory, model):
    """The same sweep with the local engine: the reference run folders."""
    root = tmp_path_factory.mktemp("local")
    assert cli_main(["sweep", model, *FLAGS, "--root", str(root), "--out", str(root / "table")]) == 0
    return root


def _runs(root: Path) -> dict[str, Path]:
    return {p.name: p for p in root.iterdir() if (p / "manifest.json").is_file()}


def _strip(x):
    return without_keys(x, TIME_KEYS)


def _same_runs(a: Path, b: Path) -> None:
    """Every block file byte for byte, and the manifests but for times."""
    blocks_a = sorted(p.name for p in a.glob("block_*.safetensors"))
    assert blocks_a == sorted(p.name for p in b.glob("block_*.safetensors")) and len(blocks_a) == 4
    for name in blocks_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name} differs"
    ma, mb = read_manifest(a), read_manifest(b)
    assert ma["complete"] and mb["complete"]
    assert _strip(ma) == _strip(mb)


def _table(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_time_s")} for r in load_results(folder)]


@pytest.fixture
def no_local_compression(monkeypatch):
    """In this process nothing is compressed: with --engine ray the tasks (other processes) do it."""
    monkeypatch.setattr(oats.compress.pipeline, "compress_model", lambda *a, **k: pytest.fail("compressed locally"))


def test_ray_sweep_matches_local_engine(cluster, model, local_root, tmp_path, capsys, no_local_compression):
    root = tmp_path / "runs"
    assert cli_main(["sweep", model, *FLAGS, "--engine", "ray", "--root", str(root),
                     "--out", str(tmp_path / "table")]) == 0
    err = capsys.readouterr().err
    assert "sweep tasks" in err and "6/6" in err  # the bar counts tasks
    local, remote = _runs(local_root), _runs(root)
    assert len(local) == 6 and set(local) == set(remote)
    for name in local:
        _same_runs(local[name], remote[name])
    assert _table(tmp_path / "table") == _table(local_root / "table")
    meta = json.loads((tmp_path / "table" / "sweep.json").read_text())
    assert meta["engine"] == "ray" and sorted(meta["runs_computed"]) == sorted(local)
    # nothing left behind by the shared-storage probe
    assert not list(root.glob(".oats-probe-*"))


def test_killed_worker_resumes_its_run(cluster, faults, model, local_root, tmp_path, capsys, no_local_compression):
    root = tmp_path / "runs"
    victim = next(n for n in _runs(local_root) if "-oats-" in n and f"-{KILLED_RUN_RATE}-" in n)
    (faults / "target.json").write_text(json.dumps({"run": victim, "block": 1, "do": "kill"}))
    try:
        assert cli_main(["sweep", model, *FLAGS, "--engine", "ray", "--root", str(root),
                         "--out", str(tmp_path / "table")]) == 0
    finally:
        (faults / "target.json").unlink()
    killed = json.loads((faults / "killed.json").read_text())
    assert sorted(killed["blocks"]) == ["block_000.safetensors", "block_001.safetensors"]
    # resumed, not restarted: the two blocks saved before the kill were not written again
    for name, mtime in killed["blocks"].items():
        assert (root / victim / name).stat().st_mtime_ns == mtime
    meta = json.loads((tmp_path / "table" / "sweep.json").read_text())
    assert len(meta["runs_computed"]) == 6 and not meta["runs_failed"]
    err = capsys.readouterr().err
    assert f"{victim}: resumed after 2 blocks" in err
    # the full table, equal to the local engine's, and the resumed run equal to an uninterrupted one
    assert _table(tmp_path / "table") == _table(local_root / "table")
    _same_runs(local_root / victim, root / victim)


def test_failed_task_keeps_the_others(cluster, faults, model, local_root, tmp_path, capsys, no_local_compression):
    root = tmp_path / "runs"
    victim = next(n for n in _runs(local_root) if "-wanda-" in n and "-c0.4-" in n)
    (faults / "target.json").write_text(json.dumps({"run": victim, "block": 1, "do": "raise"}))
    try:
        code = cli_main(["sweep", model, *FLAGS, "--engine", "ray", "--root", str(root),
                         "--out", str(tmp_path / "table")])
    finally:
        (faults / "target.json").unlink()
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "oats: error: 1 of 6 runs failed" in err[-1] and "injected failure" in err[-1]
    assert "Traceback" not in "\n".join(err)
    rows = load_results(tmp_path / "table")
    assert {r["run"] for r in rows if r["run"]} == set(_runs(local_root)) - {victim}
    for name in set(_runs(local_root)) - {victim}:
        _same_runs(local_root / name, root / name)
    # the failed run kept its finished block: a repeated sweep resumes it
    assert read_manifest(root / victim)["blocks_done"] == [0]


def test_engine_settings_are_checked_first(capsys, model):
    assert_cli_fails(["sweep", model, "--address", "auto"], "need --engine ray", capsys)
    assert_cli_fails(["sweep", model, "--engine", "ray", "--cpus-per-task", "0"], "--cpus-per-task must be above 0",
                     capsys)
    assert_cli_fails(["sweep", model, "--engine", "ray", "--gpus-per-task", "-1"], "--gpus-per-task must be 0 or more",
                     capsys)


def test_missing_ray_says_how_to_install(capsys, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert_cli_fails(["sweep", model, "--engine", "ray"], "pip install 'oats-explorer[cluster]'", capsys)
    with pytest.raises(Exception, match="needs Ray"):
        RayEngine().check()


def test_runs_folder_workers_cannot_write_is_one_line(cluster, model, tmp_path, capsys, no_local_compression,
                                                     monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # this machine's own check of --root speaks first, before Ray is even started ...
    assert cli_main(["sweep", model, *FLAGS, "--engine", "ray", "--root", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"oats: error: runs folder '{blocker / 'runs'}' cannot be made: '{blocker}' is a file: choose "
                   "another --root"]
    # ... and where it passes (storage this machine can write but a worker cannot), the worker's probe does
    from oats.runner import sweep as sweep_mod
    monkeypatch.setattr(sweep_mod, "check_run_folder", lambda *a, **k: None)
    assert cli_main(["sweep", model, *FLAGS, "--engine", "ray", "--root", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("oats: error: a Ray worker cannot write into the runs folder")
    assert "storage every worker can write" in err[-1] and "Traceback" not in "\n".join(err)
