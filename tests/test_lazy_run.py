"""The lazy run handle (``oats.runs.lazy``): a run opened without its model in memory gives the
same numbers as the in-memory path on every per-layer view and in evaluation, streams at most
one block of replaced weights at a time, keeps a bf16 checkpoint in bf16, and a compression
from disk resumes to the same block files as one that was never interrupted."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tiny_models import tiny_llama_folder

from oats.cli import main as cli_main
from oats.config import OatsConfig
from oats.deploy.export import size_report
from oats.evaluation import evaluate_run
from oats.explain import budget, heavytail, outliers, spectra
from oats.explain.walkthrough import layer_gram
from oats.runner.execute import Cancelled, execute
from oats.runner.request import CompressRequest
from oats.runs import lazy
from oats.runs.folders import load_run

LAYERS = 3


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    """A tiny Llama stored in bf16, sharded as save_pretrained shards a mid-size model."""
    return tiny_llama_folder(tmp_path_factory.mktemp("bf16") / "llama", hidden=32, layers=LAYERS, seed=7,
                             max_shard_size="20KB", dtype=torch.bfloat16)


def _request(folder, method="oats", evaluate=False, **kw):
    cfg = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=4)
    return CompressRequest(str(folder), cfg, method, calib_samples=6, seq_len=16, seed=2, evaluate=evaluate, **kw)


@pytest.fixture(scope="module")
def run_folder(bf16_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "oats"
    execute(_request(bf16_model), out)
    return out


def _close(a, b, path="") -> None:
    """Every number of two view results equal to 1e-6 (relative), recursively."""
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            _close(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}[{k}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, (np.ndarray, torch.Tensor, float)) and not isinstance(a, bool):
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        assert x.shape == y.shape, path
        assert np.allclose(x, y, rtol=1e-6, atol=1e-9, equal_nan=True), (path, np.abs(x - y).max())
    else:
        assert a == b, path


def test_every_per_layer_view_is_the_same(run_folder):
    mem, lz = load_run(run_folder), lazy.open_lazy(run_folder)
    assert isinstance(lz, lazy.LazyRun) and not isinstance(mem, lazy.LazyRun)
    # nothing of the replaced linears is in memory after opening: placeholders on the meta device
    assert all(m.sparse.device.type == "meta" and m.weight.device.type == "meta" for m in lz.modules().values())
    assert lz.reader.loads == 0
    for rec in mem.layers:
        q = rec.qualname
        _close({k: v.float() for k, v in mem.factors(q).items()}, {k: v.float() for k, v in lz.factors(q).items()}, q)
        _close(spectra.layer_spectra(mem, q), spectra.layer_spectra(lz, q), q)
        _close(outliers.column_shares(mem, q), outliers.column_shares(lz, q), q)
        _close(outliers.mask_density(mem, q), outliers.mask_density(lz, q), q)
        _close(heavytail.layer_esd(mem, q), heavytail.layer_esd(lz, q), q)
    _close(budget.layer_budget(mem), budget.layer_budget(lz))
    _close(spectra.spectra_overview(mem), spectra.spectra_overview(lz))
    _close(outliers.second_moments_by_input(mem), outliers.second_moments_by_input(lz))
    _close(mem.second_moments, lz.second_moments)
    assert size_report(mem) == size_report(lz)  # the Deploy page's bytes: the manifest's counts are the files'


def test_streamed_forward_and_evaluation_equal_in_memory(run_folder):
    mem, lz = load_run(run_folder), lazy.open_lazy(run_folder)
    assert lz.reader.max_blocks_resident == 0
    x = torch.randint(0, 20, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for mode in ("dense", "both", "sparse", "lowrank"):
            with mem.use_mode(mode), lz.use_mode(mode):
                assert torch.equal(mem.model(input_ids=x).logits, lz.model(input_ids=x).logits), mode
    ev_mem, ev_lazy = evaluate_run(mem, quick=True), evaluate_run(lz, quick=True)
    assert ev_mem == ev_lazy and np.isfinite(ev_lazy["both"]["perplexity"])
    # each replaced linear was read as it ran and dropped: never two blocks at once
    assert lz.reader.loads > 0 and lz.reader.max_blocks_resident == 1 and not lz.reader.resident
    assert all(m.sparse.device.type == "meta" for m in lz.modules().values())


def test_the_walkthrough_gram_replay_streams_too(run_folder):
    mem, lz = load_run(run_folder), lazy.open_lazy(run_folder)
    from oats.data import calibration_batches
    batches = calibration_batches(mem.loaded, n_samples=2, seq_len=12, seed=0)
    q = mem.layers[-1].qualname  # the last block: every earlier block runs compressed first
    assert torch.allclose(layer_gram(mem, q, batches), layer_gram(lz, q, batches), rtol=1e-6, atol=1e-7)
    assert lz.reader.max_blocks_resident == 1


def test_the_stored_dtype_is_kept(run_folder):
    lz = lazy.open_lazy(run_folder)
    emb = lz.model.get_input_embeddings().weight
    assert emb.dtype == torch.bfloat16  # half of fp32, computed in fp32 after the lookup
    head = lz.model.get_output_embeddings()  # untied: read from the files in row slices as it runs
    assert isinstance(head, lazy.StreamedHead) and head.weight.device.type == "meta"
    rec = lz.layers[0]
    assert lz.reader.weight(rec.path).dtype == torch.bfloat16
    assert lz.factors(rec.qualname)["weight"].dtype == torch.float32


def test_open_run_chooses_by_memory(bf16_model, run_folder, monkeypatch):
    monkeypatch.setenv(lazy.LAZY_ENV, "1")
    assert isinstance(lazy.open_run(run_folder), lazy.LazyRun)
    monkeypatch.setenv(lazy.LAZY_ENV, "0")
    assert not isinstance(lazy.open_run(run_folder), lazy.LazyRun)
    monkeypatch.delenv(lazy.LAZY_ENV)
    info = lazy.RunInfo.read(run_folder)
    need = lazy.in_memory_bytes(info)
    # the whole model as its files declare it (an unfinished run's manifest names only some layers)
    from oats.models.weights import DiskWeights
    assert need >= 4 * DiskWeights(bf16_model).numel
    monkeypatch.setattr(lazy, "available_memory", lambda: need * 10)
    assert not lazy.wants_lazy(info)
    monkeypatch.setattr(lazy, "available_memory", lambda: need)  # would take all of it: lazily
    assert lazy.wants_lazy(info)


def test_cli_evaluate_streams(run_folder, capsys):
    assert cli_main(["evaluate", str(run_folder), "--quick", "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert cli_main(["evaluate", str(run_folder), "--quick", "--json", "--stream"]) == 0
    streamed = json.loads(capsys.readouterr().out)
    assert whole["metrics"] == streamed["metrics"]


def test_a_damaged_factor_is_one_line(run_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from oats.errors import RunError
    bad = tmp_path / "bad"
    shutil.copytree(run_folder, bad)
    f = bad / "block_001.safetensors"
    t = load_file(str(f))
    key = next(k for k in t if k.endswith(".u"))
    t[key] = torch.full_like(t[key], float("nan"))
    save_file(t, str(f))
    lz = lazy.open_lazy(bad)
    q = next(r.qualname for r in lz.layers if r.block == 1 and key.startswith(r.path))
    with pytest.raises(RunError, match="damaged u .*NaN"):
        lz.factors(q)


@pytest.mark.parametrize("method", ["oats", "wanda"])
def test_a_from_disk_run_resumes_to_the_same_block_files(bf16_model, tmp_path, method):
    whole = execute(_request(bf16_model, method, from_disk=True), tmp_path / "straight")
    assert whole.status == "computed"

    def stop_after_two(done, total, msg):
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        execute(_request(bf16_model, method, from_disk=True), tmp_path / "cut", progress=stop_after_two)
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["complete"] is False
    resumed = execute(_request(bf16_model, method, from_disk=True), tmp_path / "cut")
    assert resumed.status == "resumed" and resumed.resumed_blocks == 2
    for b in range(LAYERS):
        name = f"block_{b:03d}.safetensors"
        assert (tmp_path / "straight" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    # the resumed run's finished blocks were read back from the folder, never the whole model
    real = {n for n, p in resumed.run.model.named_parameters() if p.device.type != "meta"}
    assert all(".layers." not in n for n in real)


def test_every_page_opens_a_lazy_run(run_folder, monkeypatch):
    """The app opens the run lazily (OATS_LAZY_RUNS=1) and every page draws from it."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import ui.runtime as runtime
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("OATS_RUNS_DIR", str(run_folder.parent))
    monkeypatch.setenv(lazy.LAZY_ENV, "1")
    runtime.RUNS.clear()
    at = AppTest.from_file(str(root / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    for page in ("spectra", "outliers", "error_budget", "walkthrough", "heads", "compare", "deploy", "vit"):
        at.switch_page(f"pages/{page}.py")
        at.run()
        assert not at.exception and not at.error, (page, [*at.exception, *at.error])
        if page not in ("vit", "compare", "deploy"):
            assert at.get("plotly_chart"), page
    opened = [f.result() for f in runtime.RUNS._entries.values() if f.done() and not f.exception()]
    assert opened and all(isinstance(r, lazy.LazyRun) for r in opened)
    runtime.RUNS.clear()


def test_saved_walkthrough_is_the_runs_result(run_folder):
    from oats.explain import common
    from oats.explain.walkthrough import replay_seconds, saved_walkthrough
    lz = lazy.open_lazy(run_folder)
    rec = lz.layers[4]
    wt = saved_walkthrough(lz, rec.qualname)
    assert wt.history == rec.history and wt.iterations == [len(rec.history["error"])]
    t = common.scaled_terms(lz, rec.qualname)
    snap = wt.at(wt.iterations[0])
    assert np.allclose(snap.residual.z, common.downsample(t["A"] - t["S"] - t["L"], 128, 128, "absmax").z, atol=1e-6)
    assert wt.rank == rec.rank and wt.sparse_budget == rec.nnz
    # the estimate: the block's decomposition time shared by size, plus the calibration pass for a Gram replay
    mates = [r for r in lz.layers if r.block == rec.block]
    share = rec.shape[0] * rec.shape[1] / (sum(r.shape[0] * r.shape[1] for r in mates) / len(mates))
    assert replay_seconds(lz, rec.qualname) == pytest.approx(rec.time_s * share)
    assert replay_seconds(lz, rec.qualname, gram=True) > replay_seconds(lz, rec.qualname)


def test_walkthrough_of_a_slow_layer_waits_for_the_button(run_folder, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import oats.explain.walkthrough as walk
    import ui.runtime as runtime
    monkeypatch.setattr(walk, "REPLAY_AT_ONCE_S", 0.0)  # every layer counts as slow
    monkeypatch.setenv("OATS_RUNS_DIR", str(run_folder.parent))
    monkeypatch.setenv(lazy.LAZY_ENV, "1")
    runtime.RUNS.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/walkthrough.py")
    at.run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    assert any("takes about" in i.value for i in at.info)
    button = next(b for b in at.button if b.label.startswith("Replay step by step (about"))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Iterations run"] == "4"  # the saved history: the run's 4 iterations
    button.click()
    at.run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    assert not any("takes about" in i.value for i in at.info)  # replayed: the slider view
    runtime.RUNS.clear()


def test_heads_of_a_streamed_model_wait_for_the_button(run_folder, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import ui.runtime as runtime
    lz = lazy.open_lazy(run_folder)
    one = lazy.streamed_seconds(lz, 48)
    assert one > 0 and lazy.streamed_seconds(lz, 48, passes=4) == pytest.approx(4 * one)
    assert lazy.streamed_seconds(load_run(run_folder), 48) is None  # in memory: no wait to announce
    monkeypatch.setattr(lazy, "streamed_seconds", lambda run, tokens, passes=1: 120.0)
    monkeypatch.setenv("OATS_RUNS_DIR", str(run_folder.parent))
    monkeypatch.setenv(lazy.LAZY_ENV, "1")
    runtime.RUNS.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/heads.py")
    at.run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    assert any("about 2 min" in i.value for i in at.info) and not at.get("plotly_chart")
    next(b for b in at.button if b.label.startswith("Compute the attention maps")).click()
    at.run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    assert at.get("plotly_chart")
    runtime.RUNS.clear()


@pytest.mark.parametrize("mode", ["dense", "both", "sparse", "lowrank"])
def test_gradients_through_a_streamed_model(run_folder, mode):
    """Attributions need the gradient to the input: the streamed backward reads each layer again
    and gives the in-memory gradient, one block resident at a time."""
    mem, lz = load_run(run_folder), lazy.open_lazy(run_folder)
    ids = torch.randint(0, 20, (1, 12), generator=torch.Generator().manual_seed(4))
    grads = []
    for run in (mem, lz):
        emb = run.model.get_input_embeddings()(ids).float().detach().requires_grad_(True)
        with run.use_mode(mode):
            logits = run.model(inputs_embeds=emb).logits
        logits[0, -1].max().backward()
        grads.append(emb.grad)
    # the same products in another order (g u) v: float32 rounding, 1e-4 relative
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6) and grads[0].abs().sum() > 0
    assert lz.reader.max_blocks_resident == 1 and not lz.reader.resident


@pytest.mark.parametrize("how", ["mean", "absmax", "max"])
@pytest.mark.parametrize("shape", [(301, 203), (257, 255), (1000, 3), (64, 64)])
def test_large_heatmaps_pool_to_the_same_cells(shape, how, monkeypatch):
    """A mid-size matrix's heat maps are pooled by torch (``FAST_POOL``): the NumPy path's cells."""
    from oats.explain import common
    g = torch.Generator().manual_seed(1)
    m = (torch.rand(*shape, generator=g) > 0.5).double() if how == "mean" else torch.randn(*shape, generator=g)
    monkeypatch.setattr(common, "FAST_POOL", 10**12)
    slow = common.downsample(m, 256, 256, how)
    monkeypatch.setattr(common, "FAST_POOL", 1)
    fast = common.downsample(m, 256, 256, how)
    assert fast.factor == slow.factor and np.array_equal(fast.rows, slow.rows) and np.array_equal(fast.cols, slow.cols)
    assert np.allclose(fast.z, slow.z, rtol=1e-12, atol=1e-12) if how == "mean" else np.array_equal(fast.z, slow.z)


def test_a_from_disk_compression_is_evaluated_streamed(bf16_model, tmp_path):
    """``oats compress --from-disk`` (and the app's worker) evaluates the run it made, the model
    streamed a matrix at a time: the numbers of the compression made in memory."""
    from oats.runs.evaluations import read_evaluation
    whole = execute(_request(bf16_model, evaluate=True), tmp_path / "memory")
    streamed = execute(_request(bf16_model, evaluate=True, from_disk=True), tmp_path / "disk")
    assert whole.evaluation_note == streamed.evaluation_note == ""
    a, b = read_evaluation(tmp_path / "memory"), read_evaluation(tmp_path / "disk")
    assert a["results"] == b["results"] and set(b["results"]) == {"dense", "both", "sparse", "lowrank"}
    assert isinstance(streamed.run, lazy.LazyRun) and streamed.run.reader.max_blocks_resident == 1


def test_a_model_too_large_for_memory_is_compressed_from_disk_by_the_app(tmp_path, monkeypatch):
    """The Compress page switches to the larger-than-memory mode as `oats compress` does, and the
    run it makes is evaluated with the model streamed."""
    import time
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import oats.models.weights as weights_module
    from oats.models import zoo
    from oats.runs.evaluations import read_evaluation
    from oats.runs.folders import read_manifest
    from ui.state import RUN_KEY
    # many thin blocks: the app calibrates on at least 1 x 256 tokens, and one block's compression
    # with them must fit in memory where the whole model does not
    deep = tiny_llama_folder(tmp_path / "deep", hidden=32, layers=80, seed=1)
    fp32 = weights_module.DiskWeights(deep).fp32_bytes
    assert zoo.too_big_for_memory(str(deep)) is None and zoo.too_big_for_memory("minilm-l6") is None
    monkeypatch.setenv("OATS_MEMORY_LIMIT_GB", str(0.9 * fp32 / 1e9))  # one block at a time fits, the model not
    assert "needs about" in str(zoo.too_big_for_memory(str(deep)))
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    at.run()
    at.selectbox[0].set_value(at.selectbox[0].options[-1]).run()  # the last choice: a hub id or local folder
    at.text_input[0].set_value(str(deep)).run()
    method = next(s for s in at.selectbox if s.label == "Method")
    method.set_value("wanda").run()
    next(n for n in at.number_input if "alibration" in n.label).set_value(1).run()
    [b for b in at.button if b.label == "Compress"][0].click().run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    assert any("it is compressed from disk" in i.value for i in at.info)
    for _ in range(600):
        if RUN_KEY in at.session_state and at.session_state[RUN_KEY]:
            break
        time.sleep(0.5)
        at.run()
        assert not at.error, [e.value for e in at.error]
    folder = Path(at.session_state[RUN_KEY])
    m = read_manifest(folder)
    assert m["complete"] and len(m["blocks_done"]) == 80
    assert "blocks read from disk" in m["model_source"]
    assert set(read_evaluation(folder)["results"]) == {"dense", "both"}


def test_opening_lazily_asks_only_for_what_it_holds(bf16_model, run_folder, monkeypatch):
    """A run opened lazily never holds a whole block: its memory check is the embeddings in
    their stored dtype and a layer or two, not the from-disk compression's block in fp32."""
    from oats.errors import ResourceError
    from oats.models import hub, zoo
    from oats.models.guard import config_parameters
    n = config_parameters(hub._one_block(json.loads((bf16_model / "config.json").read_text())))
    # (both checks count their values twice over: oats.resources.MEMORY_MARGIN)
    monkeypatch.setenv("OATS_MEMORY_LIMIT_GB", str(6 * n / 1e9))  # between 2 and 4 bytes a value
    with pytest.raises(ResourceError, match="compressing .* from disk"):
        zoo.load_model(str(bf16_model), from_disk=True)
    lz = lazy.open_lazy(run_folder)
    assert isinstance(lz, lazy.LazyRun) and lz.reader.max_blocks_resident == 0
    monkeypatch.setenv("OATS_MEMORY_LIMIT_GB", str(2 * n / 1e9))
    with pytest.raises(ResourceError, match="opening a run of .* with its model on disk"):
        lazy.open_lazy(run_folder)


def test_an_oversized_factor_is_refused_before_it_is_read(run_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from oats.errors import RunError
    bad = tmp_path / "big"
    shutil.copytree(run_folder, bad)
    f = bad / "block_000.safetensors"
    t = load_file(str(f))
    key = next(k for k in t if k.endswith(".sparse_values"))
    t[key] = torch.zeros(10**6)  # more values than the layer has entries
    save_file(t, str(f))
    lz = lazy.open_lazy(bad)
    q = next(r.qualname for r in lz.layers if key.startswith(r.path + "."))
    with pytest.raises(RunError, match="damaged sparse_values"):
        lz.factors(q)


def test_no_more_matrices_at_once_than_the_memory_left_holds(monkeypatch):
    """A mid-size block's matrices (2.5 GB of working copies each for OATS at 14336 x 4096) are
    decomposed side by side only as far as the memory left holds them: the same results."""
    import threading
    import time

    import oats.resources as resources
    from oats.core.decompose import decompose_many
    now, peak, lock = [0], [0], threading.Lock()

    def work(x):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return x * 2

    torch.manual_seed(0)
    ws = [torch.randn(48, 32) for _ in range(4)]
    m2 = [torch.rand(32) + 0.1 for _ in ws]
    cfg = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=3)
    with resources.torch_threads(2):
        assert resources.map_on_cores(work, range(4), item_bytes=lambda x: 1000) == [0, 2, 4, 6] and peak[0] == 2
        wide = decompose_many(ws, m2, cfg)
        monkeypatch.setattr(resources, "available_memory", lambda: 1500.0)  # room for one item of 1000 bytes
        peak[0] = 0
        assert resources.map_on_cores(work, range(4), item_bytes=lambda x: 1000) == [0, 2, 4, 6] and peak[0] == 1
        assert resources.parallel_room(1000) == 1
        narrow = decompose_many(ws, m2, cfg)
    for a, b in zip(wide, narrow):
        assert torch.equal(a.sparse, b.sparse) and torch.equal(a.u, b.u) and torch.equal(a.v, b.v)


def test_the_ablation_of_a_streamed_model_says_its_time(run_folder, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import ui.runtime as runtime
    from oats.runner.execute import evaluate_and_save
    evaluated = tmp_path / "runs" / "evaluated"
    shutil.copytree(run_folder, evaluated)
    assert evaluate_and_save(lazy.open_lazy(evaluated), evaluated, quick=True) == ""  # the ablation's metric
    monkeypatch.setattr(lazy, "streamed_seconds", lambda run, tokens, passes=1: 90.0 * passes / 2)
    monkeypatch.setenv("OATS_RUNS_DIR", str(evaluated.parent))
    monkeypatch.setenv(lazy.LAZY_ENV, "1")
    runtime.RUNS.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    at.run()
    at.switch_page("pages/error_budget.py")
    at.run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    from oats.runs.estimate import duration
    assert any(f"each block takes about {duration(90.0)} here" in c.value for c in at.caption), \
        [c.value for c in at.caption]
    runtime.RUNS.clear()


@pytest.mark.parametrize("damage", ["drop", "nan", "huge", "one matrix without"])
def test_a_damaged_summary_is_one_line_in_both_readers(run_folder, tmp_path, damage):
    """A stored summary is optional, but a partial, NaN or oversized one is damage: refused in one
    line by the lazy reader as by read_block (the views would draw it)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from oats.errors import RunError
    bad = tmp_path / "bad"
    shutil.copytree(run_folder, bad)
    f = bad / "block_000.safetensors"
    t = load_file(str(f))
    key = next(k for k in t if k.endswith(".summary.col_weight_norm"))
    if damage == "drop":
        del t[key]
    elif damage == "one matrix without":  # every key of one matrix's summary gone, the others kept
        for k in [k for k in t if k.startswith(key.split(".summary.")[0] + ".summary.")]:
            del t[k]
    elif damage == "nan":
        t[key] = torch.full_like(t[key], float("nan"))
    else:
        t[key] = torch.zeros(10**6)
    save_file(t, str(f))
    lz = lazy.open_lazy(bad)
    q = key.split(".summary.")[0]
    with pytest.raises(RunError, match="summary|larger than any layer"):
        lz.summary(q if damage != "one matrix without" else next(r.qualname for r in lz.layers if r.qualname != q))
    with pytest.raises(RunError, match="summary"):
        load_run(bad)
