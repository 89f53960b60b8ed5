"""Dense block inputs (``--block-inputs dense``) and one model's blocks as Ray tasks
(``oats compress --engine ray``).

With dense inputs every block is calibrated on the dense model's own activations: its stored
input statistics are those of the dense model (checked against hooks on the dense model), the
run is recorded as such and never resumed the other way, and it is the same run in memory
and from disk. On a local Ray instance (2 CPUs, started here as tests/test_ray_sweep.py does)
the blocks compressed as tasks give the same run folder as the local dense run: block files
byte for byte, manifests but for times; also from disk, and resuming a run whose finished
blocks have a gap.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import skip_or_fail
from safetensors.torch import load_file
from tiny_models import assert_cli_fails, tiny_llama_folder, without_keys

import oats.compress.pipeline
from oats import data
from oats.cli import main as cli_main
from oats.compress.pipeline import compress_model
from oats.config import OatsConfig
from oats.errors import ConfigError
from oats.models import zoo
from oats.runner.cluster import local_runtime_env
from oats.runner.request import CompressRequest, request_from_manifest
from oats.runs.folders import load_run, read_manifest

try:
    import ray
except ImportError:
    ray = None

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FLAGS = ["--iterations", "5", "--calib-samples", "4", "--seq-len", "16", "--quiet"]
TIME_KEYS = {"created", "timings", "versions", "model_source"}
BLOCKS = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_llama_folder(tmp_path_factory.mktemp("tiny") / "tiny-llama", hidden=16, layers=BLOCKS))


def _compress(model: str, out: Path, *extra: str) -> Path:
    assert cli_main(["compress", model, *FLAGS, "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def dense_run(model, tmp_path_factory):
    """The reference: dense block inputs, in memory, here."""
    return _compress(model, tmp_path_factory.mktemp("local") / "dense", "--block-inputs", "dense")


@pytest.fixture(scope="module")
def sequential_run(model, tmp_path_factory):
    return _compress(model, tmp_path_factory.mktemp("local") / "sequential")


def _same_runs(a: Path, b: Path) -> None:
    """Every block file byte for byte, and the manifests but for times."""
    names = sorted(p.name for p in a.glob("block_*.safetensors"))
    assert names == sorted(p.name for p in b.glob("block_*.safetensors")) and len(names) == BLOCKS
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{b.name}/{name} differs"
    ma, mb = read_manifest(a), read_manifest(b)
    assert ma["complete"] and mb["complete"]
    assert without_keys(ma, TIME_KEYS) == without_keys(mb, TIME_KEYS)


def _dense_q_inputs(model: str) -> list[torch.Tensor]:
    """Per block, the mean square of each input channel of q_proj in the dense model on the
    CLI's calibration batches: hooks on the dense model, nothing of the pipeline."""
    loaded = zoo.load_model(model)
    batches = data.calibration_batches(loaded, n_samples=4, seq_len=16, seed=0)
    sums, counts = [0.0] * BLOCKS, [0] * BLOCKS
    hooks = []
    for i, layer in enumerate(loaded.model.model.layers):
        def pre(_m, args, i=i):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[i] = sums[i] + x.square().sum(0)
            counts[i] += x.shape[0]
        hooks.append(layer.self_attn.q_proj.register_forward_pre_hook(pre))
    with torch.no_grad():
        for b in batches:
            assert "attention_mask" not in b or bool(b["attention_mask"].all())  # no padding to leave out
            loaded.model(**b)
    for h in hooks:
        h.remove()
    return [(s / c).float() for s, c in zip(sums, counts)]


def test_dense_inputs_are_the_dense_models_activations(model, dense_run, sequential_run):
    dense_m2 = _dense_q_inputs(model)
    for i in range(BLOCKS):
        d = load_file(dense_run / f"block_{i:03d}.safetensors")[f"{i}.q.m2"]
        s = load_file(sequential_run / f"block_{i:03d}.safetensors")[f"{i}.q.m2"]
        assert torch.allclose(d, dense_m2[i], rtol=1e-5, atol=1e-7), i
        if i == 0:  # block 0 sees the same inputs either way
            assert torch.equal(d, s)
        else:  # after it, the sequential run sees the compressed blocks' outputs
            assert not torch.allclose(s, dense_m2[i], rtol=1e-3, atol=1e-5), i
    m = read_manifest(dense_run)
    assert m["calibration"]["block_inputs"] == "dense"
    assert "block_inputs" not in read_manifest(sequential_run)["calibration"]  # the default: as before
    assert request_from_manifest(m).block_inputs == "dense"
    assert request_from_manifest(read_manifest(sequential_run)).block_inputs == "compressed"


def test_dense_inputs_from_disk_give_the_same_run(model, dense_run, tmp_path):
    _same_runs(dense_run, _compress(model, tmp_path / "disk", "--block-inputs", "dense", "--from-disk"))


def test_block_inputs_name_the_run_and_are_checked(model, dense_run, sequential_run, tmp_path, capsys):
    plain = CompressRequest(model)
    dense = CompressRequest(model, block_inputs="dense")
    assert dense.folder_name() == plain.folder_name() + "-dense-inputs"
    assert dense.identity() != plain.identity()
    assert CompressRequest.from_json(dense.to_json()) == dense
    made = request_from_manifest(read_manifest(dense_run))  # the settings FLAGS gave, dense
    assert made.same_run(read_manifest(dense_run)) and not made.same_run(read_manifest(sequential_run))
    assert replace(made, block_inputs="compressed").same_run(read_manifest(sequential_run))
    with pytest.raises(ConfigError, match="block inputs 'both' are not known"):
        CompressRequest(model, block_inputs="both").check()
    assert_cli_fails(["compress", model, "--block-inputs", "both"], "invalid choice", capsys)
    assert_cli_fails(["compress", model, *FLAGS, "--engine", "ray", "--out", str(tmp_path / "r")],
                     "only with --block-inputs dense", capsys)
    assert_cli_fails(["compress", model, "--address", "auto"], "need --engine ray", capsys)
    assert not (tmp_path / "r").exists()


def test_a_run_resumes_only_with_its_own_block_inputs(model, sequential_run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(sequential_run, partial)
    _drop_blocks(partial, {2, 3})
    assert_cli_fails(["compress", model, "--out", str(partial), "--resume", "--block-inputs", "dense"],
                     "was calibrated on compressed block inputs", capsys)
    loaded = zoo.load_model(model)
    resume = load_run(partial, model=loaded.model, allow_partial=True)
    batches = data.calibration_batches(loaded, n_samples=4, seq_len=16, seed=0)
    with pytest.raises(ConfigError, match="calibrated on compressed block inputs, not dense"):
        compress_model(loaded.model, batches, OatsConfig(iterations=5), resume=resume, block_inputs="dense")


def _drop_blocks(folder: Path, blocks: set[int]) -> None:
    """Make ``folder`` an unfinished run without ``blocks`` (their files and records gone)."""
    m = json.loads((folder / "manifest.json").read_text())
    for b in blocks:
        (folder / f"block_{b:03d}.safetensors").unlink()
    paths = {r["path"] for r in m["layers"] if r["block"] in blocks}
    m["layers"] = [r for r in m["layers"] if r["block"] not in blocks]
    m["blocks"] = [r for r in m["blocks"] if r["index"] not in blocks]
    m["blocks_done"] = [b for b in m["blocks_done"] if b not in blocks]
    m["modules"] = {p: v for p, v in m["modules"].items() if p not in paths}
    m["complete"] = False
    (folder / "manifest.json").write_text(json.dumps(m))


def test_dense_run_resumes_here(model, dense_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(dense_run, partial)
    _drop_blocks(partial, {2, 3})  # (the resumed blocks run dense, their factors unused)
    _compress(model, partial, "--resume")
    _same_runs(dense_run, partial)


# ----------------------------------------------------------------------------- as Ray tasks

@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance (2 CPUs) for the module; the process keeps it across commands."""
    if ray is None:
        skip_or_fail("Ray is not installed: pip install -e '.[cluster]' (make test does)")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=local_runtime_env())
    yield
    ray.shutdown()


@pytest.fixture
def no_local_compression(monkeypatch):
    """In this process no block is compressed: the tasks (other processes) do it."""
    monkeypatch.setattr(oats.compress.pipeline, "compress_block",
                        lambda *a, **k: pytest.fail("a block was compressed locally"))


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_ray_blocks_give_the_local_run(cluster, model, dense_run, tmp_path, capsys, no_local_compression, mode):
    out = _compress(model, tmp_path / "ray", "--block-inputs", "dense", "--engine", "ray",
                    *(["--from-disk"] if mode == "disk" else []))
    _same_runs(dense_run, out)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not list(tmp_path.glob(".oats-probe-*"))  # the shared-storage probe cleans up
    # the run opens and computes like the local one
    a, b = load_run(dense_run), load_run(out)
    x = torch.randint(0, 20, (1, 8))
    assert torch.equal(a.model(input_ids=x).logits, b.model(input_ids=x).logits)


def test_ray_blocks_resume_after_a_gap(cluster, model, dense_run, tmp_path, no_local_compression):
    partial = tmp_path / "gap"
    shutil.copytree(dense_run, partial)
    _drop_blocks(partial, {0, 2})
    kept = {n: (partial / n).stat().st_mtime_ns for n in ("block_001.safetensors", "block_003.safetensors")}
    _compress(model, partial, "--resume", "--engine", "ray")
    _same_runs(dense_run, partial)
    for name, mtime in kept.items():  # finished blocks are not compressed again
        assert (partial / name).stat().st_mtime_ns == mtime
