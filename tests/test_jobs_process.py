"""The app's job runner with process isolation: each compression in ``python -m oats.worker``.

A tiny random ViT saved as a local model folder (no downloads) is compressed by a worker
process and by a thread of this process: the run folders must be identical, tensor for
tensor. A worker asked to stop after its first block leaves an unfinished run that the next
start resumes to the same result; a bad request fails with the library's own line; a worker
that dies is reported as one line and leaves its finished blocks resumable.
"""

from __future__ import annotations

import time

import pytest
import torch

from oats import OatsConfig
from oats.runs.folders import list_runs, read_manifest
from oats.runner.jobs import JobRunner
from oats.runner.request import CompressRequest

CFG = OatsConfig(compression=0.5, rank_ratio=0.3, iterations=4)
LAYERS = 4


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    import transformers
    folder = tmp_path_factory.mktemp("tiny-vit") / "model"
    torch.manual_seed(0)
    transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64)).save_pretrained(folder)
    return str(folder)


def _request(model: str, **kw) -> CompressRequest:
    return CompressRequest(model, CFG, calib_samples=4, evaluate=False, **kw)


def _files(folder) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file
    return {p.name: load_file(str(p)) for p in sorted(folder.glob("block_*.safetensors"))}


def _assert_same_run(a, b) -> None:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb) == [f"block_{i:03d}.safetensors" for i in range(LAYERS)]
    for name in fa:
        assert sorted(fa[name]) == sorted(fb[name]), name
        for k in fa[name]:
            assert torch.equal(fa[name][k], fb[name][k]), (name, k)
    ma, mb = read_manifest(a), read_manifest(b)
    assert [l["scaled_error"] for l in ma["layers"]] == [l["scaled_error"] for l in mb["layers"]]


def test_request_survives_the_trip_to_the_worker():
    req = CompressRequest("m", CFG.replace(sparsity="2:8"), method="wanda", calib_source="/x.txt", calib_samples=7,
                          seed=3, seq_len=64, evaluate=False)
    assert CompressRequest.from_json(req.to_json()) == req


def test_a_worker_process_computes_what_a_thread_computes(tmp_path, vit_folder):
    req = _request(vit_folder)
    proc_job = JobRunner(isolation="process").start(req, root=tmp_path / "process")
    s = proc_job.wait(300)
    assert s.status == "done", s.error
    assert (s.done, s.total) == (LAYERS, LAYERS) and s.log[-1].startswith(f"block {LAYERS - 1}: output error")
    assert s.message.startswith(f"compressed {LAYERS} blocks in")
    thread_job = JobRunner(isolation="thread").start(req, root=tmp_path / "thread")
    assert thread_job.wait(300).status == "done"
    assert proc_job.folder.name == thread_job.folder.name == req.folder_name()
    _assert_same_run(proc_job.folder, thread_job.folder)


def test_a_stopped_worker_leaves_a_run_that_resumes_to_the_same_result(tmp_path, vit_folder):
    req = _request(vit_folder, seed=1)
    runner = JobRunner(isolation="process")
    job = runner.start(req, root=tmp_path / "a")
    deadline = time.time() + 300
    while job.state().done < 1 and job.state().active and time.time() < deadline:
        time.sleep(0.02)
    job.cancel()
    s = job.wait(300)
    assert s.status == "cancelled" and "resume" in s.message, (s.status, s.error)
    m = read_manifest(job.folder)
    assert not m["complete"] and 1 <= len(m["blocks_done"]) < LAYERS
    assert [r["status"] for r in list_runs(tmp_path / "a")] == ["unfinished"]
    resumed = runner.start(req, root=tmp_path / "a")  # the same request: continues that folder
    s = resumed.wait(300)
    assert s.status == "done", s.error
    assert any(line.startswith("resuming after") for line in s.log) or s.done == LAYERS
    assert read_manifest(resumed.folder)["complete"]
    ref = JobRunner(isolation="thread").start(req, root=tmp_path / "b")
    assert ref.wait(300).status == "done"
    _assert_same_run(resumed.folder, ref.folder)


def test_worker_failures_are_one_line(tmp_path, vit_folder):
    runner = JobRunner(isolation="process")
    missing = tmp_path / "no-such-model"
    bad = runner.start(_request(str(missing)), root=tmp_path).wait(600)
    assert bad.status == "failed" and "\n" not in bad.error
    assert str(missing) in bad.error and "ended unexpectedly" not in bad.error, bad.error

    job = runner.start(_request(vit_folder, seed=2), root=tmp_path)
    deadline = time.time() + 300
    while job._proc is None and time.time() < deadline:
        time.sleep(0.02)
    job._proc.kill()  # the compression process dies (out of memory, killed by hand, ...)
    s = job.wait(600)
    assert s.status == "failed" and "\n" not in s.error
    assert s.error.startswith("the compression process ended unexpectedly (killed by signal 9)"), s.error
    assert not runner.active()
