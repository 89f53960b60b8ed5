"""Two users at once, without a browser: the job runner and the app's model cache.

- The same compression asked for several times at once (several sessions, several
  threads) is computed once: one job, one model load, one compression.
- Two different compressions started together each end with their own model's factors.
- ``ui.runtime.load_run_cached`` holds at most two runs, and an evicted run is freed even
  when it sits in a reference cycle (its ``on_release`` collects).

Tiny random models only (no downloads); test_browser_sessions.py does the same with the
real presets in two browser sessions.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import batches, tiny_llama

from oats import OatsConfig, compress_model
from oats.runs.folders import block_tensors, list_runs, read_manifest
from oats.runner.jobs import CompressRequest, JobRunner

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=6)
MODELS = {"tiny-a": (0, 11), "tiny-b": (5, 22)}  # name -> (model seed, calibration seed)
HANG_GUARD_S = 600  # waits for a job or a thread end only on a hang: a loaded machine is slow, not broken


@pytest.fixture
def counting_zoo(monkeypatch):
    """oats.models.zoo.load_model, oats.data.calibration_batches and oats.compress.pipeline.compress_model,
    counted; two tiny Llamas (different weights and calibration data) by name."""
    from oats import data
    from oats.compress import pipeline
    from oats.models import zoo
    calls = {"load": [], "data": [], "compress": []}
    gate = threading.Event()  # compress_model waits for it (set: no wait)
    gate.set()
    real_compress = pipeline.compress_model

    def load(name, **kw):
        calls["load"].append(name)
        if name not in MODELS:
            raise zoo.ModelLoadError(f"unknown model {name!r}")
        return zoo.LoadedModel(name=name, model=tiny_llama(seed=MODELS[name][0]), task="causal-lm", source="test")

    def calibration(loaded, **kw):
        calls["data"].append(loaded.name)
        return batches(seed=MODELS[loaded.name][1])

    def compress(model, batches_, config, **kw):
        calls["compress"].append(kw.get("model_name"))
        assert gate.wait(HANG_GUARD_S)
        return real_compress(model, batches_, config, **kw)

    monkeypatch.setattr(zoo, "load_model", load)
    monkeypatch.setattr(data, "calibration_batches", calibration)
    monkeypatch.setattr(pipeline, "compress_model", compress)
    yield calls, gate
    gate.set()


def test_the_same_request_started_many_times_at_once_is_computed_once(tmp_path, counting_zoo):
    calls, _ = counting_zoo
    runner = JobRunner()
    with runner._compute:  # another compression is running: every start below finds the job queued
        jobs: list = []

        def start() -> None:  # a fresh, equal request each time, as from another session
            jobs.append(runner.start(CompressRequest("tiny-a", CFG, evaluate=False), root=tmp_path))

        starts = [threading.Thread(target=start) for _ in range(8)]
        for t in starts:
            t.start()
        for t in starts:
            t.join(30)
        # the same runs folder spelt differently (a str with '..') is the same job
        jobs.append(runner.start(CompressRequest("tiny-a", CFG, evaluate=False),
                                 root=f"{tmp_path}/../{tmp_path.name}"))
        assert len(jobs) == 9 and all(j is jobs[0] for j in jobs)
        assert jobs[0].state().status == "queued"
    s = jobs[0].wait(HANG_GUARD_S)
    assert s.status == "done", s.error
    assert calls == {"load": ["tiny-a"], "data": ["tiny-a"], "compress": ["tiny-a"]}
    assert len(runner.jobs()) == 1
    again = runner.start(CompressRequest("tiny-a", CFG, evaluate=False), root=tmp_path)  # done on disk
    assert again.state().status == "done" and again.thread is None
    assert calls["compress"] == ["tiny-a"] and calls["load"] == ["tiny-a"]
    assert [r["name"] for r in list_runs(tmp_path)] == [jobs[0].folder.name]


def test_same_request_while_it_runs_returns_the_running_job(tmp_path, counting_zoo):
    calls, gate = counting_zoo
    gate.clear()  # the job stops inside compress_model until the second start is done
    runner = JobRunner()
    job = runner.start(CompressRequest("tiny-a", CFG, evaluate=False), root=tmp_path)
    deadline = time.time() + HANG_GUARD_S
    while not calls["compress"] and time.time() < deadline:
        time.sleep(0.01)
    assert job.state().status == "running" and job.state().stage == "compressing"
    assert runner.start(CompressRequest("tiny-a", CFG, evaluate=False), root=tmp_path) is job
    gate.set()
    assert job.wait(HANG_GUARD_S).status == "done"
    assert calls == {"load": ["tiny-a"], "data": ["tiny-a"], "compress": ["tiny-a"]}


def test_two_different_compressions_at_once_keep_their_own_model_and_data(tmp_path, counting_zoo):
    runner = JobRunner()
    reqs = {name: CompressRequest(name, CFG, evaluate=False) for name in MODELS}
    jobs = {name: runner.start(r, root=tmp_path) for name, r in reqs.items()}  # nearly at once
    assert jobs["tiny-a"] is not jobs["tiny-b"]
    for name, job in jobs.items():
        s = job.wait(HANG_GUARD_S)
        assert s.status == "done", s.error
        assert Path(s.folder).name == reqs[name].folder_name()
    assert sorted(counting_zoo[0]["compress"]) == ["tiny-a", "tiny-b"]
    runs = {r["name"]: r for r in list_runs(tmp_path)}
    assert sorted(runs) == sorted(r.folder_name() for r in reqs.values())
    for name, req in reqs.items():
        folder = tmp_path / req.folder_name()
        assert runs[folder.name]["status"] == "complete"
        assert read_manifest(folder)["model_name"] == name
        seed, cal = MODELS[name]
        ref = compress_model(tiny_llama(seed=seed), batches(seed=cal), CFG, model_name=name)
        assert_run_files_equal(folder, ref)


def assert_run_files_equal(folder: Path, run) -> None:
    """Every tensor of every block file of ``folder`` equals ``run``'s (1e-6)."""
    blocks = sorted({r.block for r in run.layers})
    assert sorted(p.name for p in folder.glob("block_*.safetensors")) == [f"block_{b:03d}.safetensors" for b in blocks]
    for b in blocks:
        saved = load_file(str(folder / f"block_{b:03d}.safetensors"))
        want = block_tensors(run, b)
        assert sorted(saved) == sorted(want), (b, sorted(set(saved) ^ set(want)))
        for k, v in want.items():
            got = saved[k]
            assert got.dtype == v.dtype and got.shape == v.shape, k
            assert torch.equal(got, v) or (v.is_floating_point() and torch.allclose(got, v, rtol=0, atol=1e-6)), \
                f"block {b} {k}: max diff {(got.double() - v.double()).abs().max().item():.3g}"


# ----------------------------------------------------------------------------- the app's model cache


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three complete runs of one tiny ViT saved as a local model folder: each loads its own model."""
    import transformers

    from oats import save_run
    from oats.models.zoo import load_model
    base = tmp_path_factory.mktemp("cache-runs")
    folder = base / "tiny-vit-model"
    torch.manual_seed(0)
    transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=64)).save_pretrained(folder)
    out = []
    for rho in (0.3, 0.5, 0.7):
        loaded = load_model(str(folder))
        data = [{"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))}]
        run = compress_model(loaded.model, data, OatsConfig(compression=rho, rank_ratio=0.3, iterations=3),
                             model_name=str(folder))
        dest = base / "runs" / f"tiny-vit-c{rho}"
        dest.mkdir(parents=True)
        out.append(str(save_run(run, dest)))
    return out


def _cache_script():
    """Loads st.session_state["load"] through the app's cache; keeps only weak references."""
    import weakref

    import streamlit as st

    from ui.runtime import load_run_cached
    from ui.state import run_mtime
    for p in st.session_state["load"]:
        run = load_run_cached(p, run_mtime(p))
        st.session_state["seen"].append((p, weakref.ref(run)))
        del run


def _wait_dead(ref, timeout: float = 120.0) -> bool:
    """Whether ``ref``'s object is freed within ``timeout`` s (the cache's collections after an
    eviction run until 41 s after it: time enough on a loaded machine, no speed asserted)."""
    deadline = time.time() + timeout
    while ref() is not None and time.time() < deadline:
        time.sleep(0.1)
    return ref() is None


def test_run_cache_holds_two_models_and_frees_the_evicted_one(three_runs, monkeypatch):
    """Load three runs through load_run_cached in a script run: the first is evicted and
    freed (though each run sits in a reference cycle and automatic collection is off: the
    cache's on_release collects), the other two stay cached; at most two are ever alive."""
    from streamlit.testing.v1 import AppTest

    from ui import runtime
    real = runtime.load_run
    loads: list[str] = []

    def load_run(path, *a, **kw):
        loads.append(path)
        run = real(path, *a, **kw)
        run.timings["_cycle"] = run  # like the first model of an architecture in a process
        return run

    monkeypatch.setattr(runtime, "load_run", load_run)
    runtime.RUNS.clear()
    p1, p2, p3 = three_runs
    at = AppTest.from_function(_cache_script, default_timeout=HANG_GUARD_S)
    at.session_state["seen"] = []

    def load(*paths):
        at.session_state["load"] = list(paths)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return {p: r for p, r in at.session_state["seen"][-len(paths):]}

    def alive() -> list:
        return [r() for _, r in at.session_state["seen"] if r() is not None]

    gc.collect()
    gc.disable()
    try:
        first = load(p1, p2, p3)
        assert loads == [p1, p2, p3]
        assert _wait_dead(first[p1]), "the evicted run was not freed"
        assert first[p2]() is not None and first[p3]() is not None
        assert len({id(r) for r in alive()}) == 2
        again = load(p2, p3)  # both cached: nothing loads, the same objects come back
        assert loads == [p1, p2, p3]
        assert again[p2]() is first[p2]() and again[p3]() is first[p3]()
        back = load(p1)  # loads again and evicts the least recently used (p2)
        assert loads == [p1, p2, p3, p1] and back[p1]() is not None
        assert _wait_dead(first[p2]), "the evicted run was not freed"
        assert first[p3]() is not None
        assert len({id(r) for r in alive()}) == 2
    finally:
        gc.enable()
        runtime.RUNS.clear()
    assert _wait_dead(first[p3]) and _wait_dead(back[p1]), "cleared runs were not freed"


def test_a_folder_holding_another_models_run_is_never_handed_out(tmp_path, counting_zoo):
    """Two requests whose folder names would collide get a clear line, never each other's run."""
    from oats.errors import RunError
    calls, gate = counting_zoo
    runner = JobRunner()
    a = CompressRequest("tiny-a", CFG, evaluate=False)
    b = CompressRequest("tiny-b", CFG, evaluate=False)
    assert runner.start(a, root=tmp_path).wait(HANG_GUARD_S).status == "done"
    # pretend b's folder name collides with a's finished run
    folder = tmp_path / a.folder_name()
    with pytest.raises(RunError) as e:
        runner.start(b, root=tmp_path, folder=folder)
    assert str(e.value) == (f"run folder '{folder}' holds another compression (of tiny-a, oats): delete it or "
                            "change the settings")
    # and while a's job is still running, b cannot join it
    gate.clear()
    c = CompressRequest("tiny-a", CFG.replace(compression=0.6), evaluate=False)
    running = runner.start(c, root=tmp_path)
    with pytest.raises(RunError, match="is being written by another compression"):
        runner.start(CompressRequest("tiny-b", CFG.replace(compression=0.6), evaluate=False), folder=running.folder)
    gate.set()
    assert running.wait(HANG_GUARD_S).status == "done"
    assert read_manifest(folder)["model_name"] == "tiny-a"
    assert calls["compress"].count("tiny-b") == 0
    # names that a slug would merge stay apart
    assert CompressRequest("./minilm-l6").folder_name() != CompressRequest("minilm-l6").folder_name()


def test_models_are_built_one_at_a_time(monkeypatch, tmp_path):
    """transformers patches process-wide state while it builds a model (default dtype, torch's
    init functions, weight tying): two builds in two threads at once once left SmolLM2's tied
    head on the meta device in the app. ``zoo.load_model`` builds one model at a time per
    process, for every kind of name (a preset and a local folder here)."""
    from oats.models import hub, zoo
    inside, most, lock = [0], [0], threading.Lock()

    def slow_build(*args, **kwargs):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.3)
        with lock:
            inside[0] -= 1
        return "built"

    folder = tmp_path / "local-model"
    folder.mkdir()
    monkeypatch.setattr(zoo, "check_model_name",
                        lambda name, from_disk=False, viewing=False: "local" if "local" in name else "preset")
    monkeypatch.setattr(zoo, "load_preset", slow_build)
    monkeypatch.setattr(hub, "load_local", slow_build)
    names = ["minilm-l6", "dinov2-small", str(folder), "smollm2-135m"]
    out = []
    threads = [threading.Thread(target=lambda n=n: out.append(zoo.load_model(n))) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == ["built"] * 4 and most[0] == 1
