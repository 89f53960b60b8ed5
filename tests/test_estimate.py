"""The time estimate shown before a compression (``oats.runs.estimate``), on synthetic run folders
whose recorded timings are known, so every number can be asserted."""

import json

import pytest
import torch

from oats.compress.records import BlockRecord, LayerRecord
from oats.config import OatsConfig
from oats.runs import estimate as est
from oats.runs.evaluations import save_evaluation
from oats.runs.info import RunInfo

HOST = "this-host"


def fake_run(root, name, model="minilm-l6", method="oats", total=30.0, decompose=10.0, stats=None, load=5.0,
             tokens=5000, samples=128, done=20, cap=80, solver="fast", evaluate_s=15.0, host=HOST, complete=True,
             params=10_616_832):
    """A run folder with a manifest recording these timings (two layers that ran ``done``
    iterations each), and its evaluation.json with ``time_s`` = ``evaluate_s``."""
    folder = root / name
    folder.mkdir(parents=True)
    layers = tuple(LayerRecord(block=0, name=n, path=f"b.0.{n}", kind="attn", rows=None, shape=(4, 4), rank=1,
                               nnz=4, params=12, budget=12, scaled_error=0.1, output_error=0.1, iterations=done,
                               time_s=0.1) for n in ("q", "k"))
    timings = {"capture_s": 0.1, "stats_s": (total - decompose) / 2 if stats is None else stats,
               "decompose_s": decompose, "total_s": total, "load_s": load}
    info = RunInfo(model_name=model, method=method,
                   config=OatsConfig(iterations=cap, solver=solver), layers=layers,
                   blocks=(BlockRecord(0, "b.0", 0.1, 1.0, 1.0),), complete=complete, calibration={
                       "tokens": tokens, "samples": samples}, timings=timings, params_dense=params, params_kept=params // 2,
                   blocks_done=(0,), extra={"machine": {"host": host, "cpus": 2, "threads": 2}} if host else {})
    (folder / "manifest.json").write_text(json.dumps(info.to_manifest()))
    if evaluate_s is not None:
        save_evaluation(folder, {"dense": {"cosine": 1.0}}, quick=False, time_s=evaluate_s)
    return folder


def config(**kw):
    return OatsConfig(**kw)


def test_one_past_run_predicts_its_own_time(tmp_path):
    fake_run(tmp_path, "a")
    past = est.past_runs(tmp_path)
    assert len(past) == 1 and past[0].iterations_done == 20 and past[0].evaluate_s == 15.0
    e = est.estimate("minilm-l6", "oats", config(), past, task="encoder", host=HOST)
    start = est.WORKER_START_S  # the app's compression process starting
    assert (e.load_s, e.compress_s, e.evaluate_s, e.seconds) == pytest.approx((start + 5.0, 30.0, 15.0, start + 50.0))
    assert e.runs == 1
    assert e.text == f"about {est.duration(start + 50)} (from 1 past run of minilm-l6 with oats on this machine)"
    assert e.parts == f"starting and loading {est.duration(start + 5)}, compressing 30 s, evaluating 15 s"
    assert est.estimate("minilm-l6", "oats", config(), past, task="encoder", evaluate=False,
                        host=HOST).seconds == pytest.approx(start + 35.0)


def test_a_load_of_a_model_already_in_memory_is_left_out(tmp_path):
    fake_run(tmp_path, "swept", load=0.05)  # a sweep's run: the model was handed to it
    e = est.estimate("minilm-l6", "oats", config(), est.past_runs(tmp_path), task="encoder", host=HOST)
    assert e.load_s == pytest.approx(est.WORKER_START_S + est.DEFAULT_LOAD_S_PER_M * 10.616832)
    fake_run(tmp_path, "fresh", load=4.0)
    e = est.estimate("minilm-l6", "oats", config(), est.past_runs(tmp_path), task="encoder", host=HOST)
    assert e.load_s == pytest.approx(est.WORKER_START_S + 4.0)


def test_scaled_to_iterations_and_calibration_samples(tmp_path):
    fake_run(tmp_path, "a")  # calibration part 20 s on 5000 tokens (128 samples), decomposition 10 s at 20 iterations
    past = est.past_runs(tmp_path)
    # a cap of 10: half the iterations the fast solver ran before -> decomposition 5 s
    assert est.estimate("minilm-l6", "oats", config(iterations=10), past, task="encoder",
                        host=HOST).compress_s == pytest.approx(25.0)
    # a higher cap than where the fast solver stopped changes nothing
    assert est.estimate("minilm-l6", "oats", config(iterations=300), past, task="encoder",
                        host=HOST).compress_s == pytest.approx(30.0)
    # 64 samples of the 128: the calibration part halves
    assert est.estimate("minilm-l6", "oats", config(), past, task="encoder", samples=64,
                        host=HOST).compress_s == pytest.approx(20.0)
    assert est.estimate("minilm-l6", "oats", config(), past, task="encoder", samples=256,
                        host=HOST).compress_s == pytest.approx(50.0)


def test_a_run_that_hit_its_cap(tmp_path):
    # stopped by its cap of 10: 1 s of decomposition per iteration; where would the fast solver stop?
    fake_run(tmp_path, "capped", done=10, cap=10)
    past = est.past_runs(tmp_path)
    assert est.estimate("minilm-l6", "oats", config(iterations=5), past, task="encoder",
                        host=HOST).compress_s == pytest.approx(20.0 + 5.0)
    # nothing else known: where it stopped on the embedded models
    assert est.estimate("minilm-l6", "oats", config(iterations=40), past, task="encoder",
                        host=HOST).compress_s == pytest.approx(20.0 + est.DEFAULT_ITERATIONS_RUN)
    # another run stopped on its own at 30 iterations (1 s each): both runs predict 30 iterations
    fake_run(tmp_path, "converged", done=30, cap=80, decompose=30.0, total=50.0)
    past = est.past_runs(tmp_path)
    assert est.estimate("minilm-l6", "oats", config(iterations=40), past, task="encoder",
                        host=HOST).compress_s == pytest.approx(50.0)
    assert est.estimate("minilm-l6", "oats", config(iterations=15), past, task="encoder",
                        host=HOST).compress_s == pytest.approx(35.0)


def test_the_exact_solver_runs_to_its_cap(tmp_path):
    fake_run(tmp_path, "exact", done=10, cap=10, solver="exact")
    assert est.estimate("minilm-l6", "oats", config(iterations=40, solver="exact"), est.past_runs(tmp_path),
                        task="encoder", host=HOST).compress_s == pytest.approx(20.0 + 40.0)


def test_median_of_several_runs_and_only_this_machines(tmp_path):
    fake_run(tmp_path, "a", total=30.0)
    fake_run(tmp_path, "b", total=40.0, evaluate_s=25.0)
    fake_run(tmp_path, "c", total=90.0, evaluate_s=20.0)  # the machine was busy: the median ignores it
    fake_run(tmp_path, "elsewhere", total=5.0, decompose=1.0, evaluate_s=1.0, host="another-host")
    fake_run(tmp_path, "no-host", total=40.0, evaluate_s=20.0, host=None)  # made before machines were recorded
    e = est.estimate("minilm-l6", "oats", config(), est.past_runs(tmp_path), task="encoder", host=HOST)
    assert e.runs == 4
    assert e.compress_s == pytest.approx(40.0) and e.evaluate_s == pytest.approx(20.0)
    assert e.seconds == pytest.approx(est.WORKER_START_S + 65.0)
    assert "from 4 past runs of minilm-l6 with oats" in e.text


def test_other_methods_solvers_unfinished_and_resumed_runs_are_not_used(tmp_path):
    fake_run(tmp_path, "wanda", method="wanda", total=12.0, decompose=1.0, done=1, cap=80)
    fake_run(tmp_path, "exact", solver="exact", total=300.0)
    fake_run(tmp_path, "unfinished", total=1.0, complete=False)
    fake_run(tmp_path, "resumed", total=2.0, decompose=10.0, stats=10.0)  # total < its blocks' sums: resumed
    past = est.past_runs(tmp_path)
    assert sorted(p.method + "/" + p.solver for p in past) == ["oats/exact", "wanda/fast"]
    w = est.estimate("minilm-l6", "wanda", config(), past, task="encoder", host=HOST)
    assert w.compress_s == pytest.approx(12.0) and w.runs == 1
    # fast solver asked for, only an exact-solver run: it is used all the same (the only one there is)
    assert est.estimate("minilm-l6", "oats", config(), past, task="encoder", host=HOST).compress_s == \
        pytest.approx(300.0)
    fake_run(tmp_path, "fast", total=30.0)
    assert est.estimate("minilm-l6", "oats", config(), est.past_runs(tmp_path), task="encoder",
                        host=HOST).compress_s == pytest.approx(30.0)


def test_no_past_run_gives_the_default_rate_and_says_so(tmp_path):
    e = est.estimate("smollm2-135m", "oats", config(), [], task="causal-lm", host=HOST)
    m = est.PRESET_BLOCK_WEIGHTS["smollm2-135m"] / 1e6
    assert e.runs == 0
    # an embedded model's shapes are known: the calibration rate plus the shape model's decomposition
    dec = est.decompose_seconds("oats", est.PRESET_SHAPES["smollm2-135m"], config())
    assert e.compress_s == pytest.approx(est.DEFAULT_CALIBRATION_S_PER_M * m + dec)
    assert e.seconds == pytest.approx(est.WORKER_START_S + e.compress_s + (est.DEFAULT_LOAD_S_PER_M
                                                                           + est.DEFAULT_EVALUATE_S_PER_M) * m)
    assert e.text == f"about {est.duration(e.seconds)} (no past run of smollm2-135m with oats on this machine: " \
                     "a rough figure; the decomposition from its matrix shapes)"
    assert 3 * 60 <= e.seconds <= 8 * 60  # SmolLM2 took about 5 min here
    # the model's size from a run of it with another method
    fake_run(tmp_path, "w", model="my/model", method="wanda", params=2_000_000)
    e = est.estimate("my/model", "oats", config(), est.past_runs(tmp_path), host=HOST)
    assert e.compress_s == pytest.approx(est.DEFAULT_COMPRESS_S_PER_M["oats"] * 2)
    # nothing known about the model: no number, and why
    e = est.estimate("gpt2", "oats", config(), [], host=HOST)
    assert e.seconds is None and e.parts == ""
    assert e.text == "no time estimate (no past run of gpt2 here, and its size is not known before it loads)"


@pytest.mark.parametrize("seconds,text", [(0.2, "1 s"), (7.4, "7 s"), (42, "40 s"), (88, "90 s"), (95, "2 min"),
                                          (299, "5 min"), (5400, "1.5 h")])
def test_duration(seconds, text):
    assert est.duration(seconds) == text


def test_default_samples_are_the_data_modules():
    from oats import data
    assert est.DEFAULT_SAMPLES == {"causal-lm": data.LM_N_SAMPLES, "encoder": data.ENCODER_N_SAMPLES,
                                   "vision": data.VISION_N_SAMPLES}


# ----------------------------------------------------------------------------- the shape model

def _header_only_folder(folder, blocks):
    """A model folder whose safetensors file declares ``blocks`` (lists of (d_out, d_in)) as bf16
    ``model.layers.i.*.weight`` tensors, plus 1-D norms and an embedding outside the blocks; the
    file is sparse (its size is right, no data written), so a large-shaped model costs no disk."""
    import struct
    folder.mkdir(parents=True)
    head, off = {"__metadata__": {"format": "pt"}}, 0

    def add(key, shape):
        nonlocal off
        n = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        head[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n

    add("model.embed_tokens.weight", (1000, 64))
    for i, block in enumerate(blocks):
        for j, shape in enumerate(block):
            add(f"model.layers.{i}.m{j}.weight", shape)
        add(f"model.layers.{i}.input_layernorm.weight", (64,))
    raw = json.dumps(head).encode()
    raw += b" " * (-len(raw) % 8)
    path = folder / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + off)
    (folder / "config.json").write_text("{}")
    return folder


def _by_hand(method, d_out, d_in, cfg, iterations):
    """``SHAPE_COST``'s formula written out: a + n (b + c r) d_out d_in."""
    from oats.core.decompose import rank_budget
    a, b, c = est.SHAPE_COST[method]
    return a + iterations * (b + c * rank_budget(d_out, d_in, cfg)) * d_out * d_in


def test_the_shapes_of_a_local_folder_come_from_its_headers(tmp_path):
    blocks = [[(96, 64), (64, 96)], [(96, 64), (64, 96)], [(32, 64)]]
    folder = _header_only_folder(tmp_path / "m", blocks)
    assert est.model_shapes(str(folder)) == tuple(tuple(b) for b in blocks)  # norms and embedding left out
    assert est.model_shapes(str(tmp_path / "missing")) is None and est.model_shapes("some/hub-id") is None
    assert est.model_shapes("minilm-l6") == est.PRESET_SHAPES["minilm-l6"]
    assert est.PRESET_BLOCK_WEIGHTS == {"minilm-l6": 10_616_832, "dinov2-small": 21_233_664,
                                        "smollm2-135m": 106_168_320}  # what their runs record as params_dense


def test_matrix_seconds_is_the_fitted_formula():
    cfg = config()
    # OATS: its iterations capped at where the fast solver stops on real weights; the rank grows the cost
    assert est.matrix_seconds("oats", 14336, 4096, cfg) == pytest.approx(
        _by_hand("oats", 14336, 4096, cfg, est.DEFAULT_ITERATIONS_RUN))
    assert est.matrix_seconds("oats", 14336, 4096, config(iterations=5)) == pytest.approx(
        _by_hand("oats", 14336, 4096, cfg, 5))
    big, small = est.matrix_seconds("oats", 4096, 4096, cfg), est.matrix_seconds("oats", 2048, 2048, cfg)
    assert big / small > 4.5  # 4x the weights, 2x the rank: more than 4x the time
    # a method that does not iterate: once, no rank
    assert est.matrix_seconds("wanda", 4096, 4096, cfg) == pytest.approx(_by_hand("wanda", 4096, 4096, cfg, 1))
    assert est.matrix_seconds("hassle", 64, 64, cfg) is None  # no fitted cost


def test_a_block_takes_as_long_as_its_busiest_thread():
    cfg = config()
    block = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]
    t = {s: est.matrix_seconds("oats", *s, cfg) for s in set(block)}
    # two threads, largest first, each to the less busy thread: the three MLP matrices dominate
    busy = [0.0, 0.0]
    for s in sorted(block, key=lambda s: -t[s]):
        busy[busy.index(min(busy))] += t[s]
    assert est.decompose_seconds("oats", [block], cfg, threads=2) == pytest.approx(max(busy))
    assert est.decompose_seconds("oats", [block], cfg, threads=1) == pytest.approx(sum(t[s] for s in block))
    assert est.decompose_seconds("oats", [block] * 3, cfg, threads=2) == pytest.approx(3 * max(busy))
    assert est.decompose_seconds("hassle", [block], cfg) is None


def test_without_a_past_run_a_large_shaped_folder_is_estimated_from_its_shapes(tmp_path, monkeypatch):
    monkeypatch.setattr(est.os, "cpu_count", lambda: 2)
    block = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096), (4096, 14336)]
    two = _header_only_folder(tmp_path / "8b-2", [block] * 2)
    four = _header_only_folder(tmp_path / "8b-4", [block] * 4)
    cfg = config()
    m = 2 * sum(a * b for a, b in block) / 1e6
    e = est.estimate(str(two), "oats", cfg, [], task="causal-lm", evaluate=False, host=HOST)
    dec = est.decompose_seconds("oats", [block] * 2, cfg, threads=2)
    assert e.compress_s == pytest.approx(est.DEFAULT_CALIBRATION_S_PER_M * m + dec)
    assert e.load_s == pytest.approx(est.WORKER_START_S + est.DEFAULT_LOAD_S_PER_M * m)
    assert "the decomposition from its matrix shapes" in e.text
    # from disk: the load builds the model on the meta device and reads its embeddings, whatever its size
    d = est.estimate(str(two), "oats", cfg, [], task="causal-lm", evaluate=False, host=HOST, from_disk=True)
    assert d.load_s == pytest.approx(est.WORKER_START_S + est.DEFAULT_FROM_DISK_LOAD_S)
    assert d.compress_s == pytest.approx(e.compress_s)
    # twice the blocks: twice the compression; the decomposition is most of it at these shapes
    e4 = est.estimate(str(four), "oats", cfg, [], task="causal-lm", evaluate=False, host=HOST)
    assert e4.compress_s == pytest.approx(2 * e.compress_s)
    assert dec > est.DEFAULT_CALIBRATION_S_PER_M * m
    # a per-weight rate alone would say far less: the rank makes large matrices dearer per weight
    assert e.compress_s > 1.5 * est.DEFAULT_COMPRESS_S_PER_M["oats"] * m
    # fewer iterations: the decomposition shrinks in proportion (beyond the first's fixed cost)
    e5 = est.estimate(str(two), "oats", config(iterations=5), [], task="causal-lm", evaluate=False, host=HOST)
    assert e5.compress_s == pytest.approx(
        est.DEFAULT_CALIBRATION_S_PER_M * m + est.decompose_seconds("oats", [block] * 2, config(iterations=5), 2))
    # a quick method keeps its rate per weight
    w = est.estimate(str(two), "wanda", cfg, [], task="causal-lm", evaluate=False, host=HOST)
    assert w.compress_s == pytest.approx(est.DEFAULT_COMPRESS_S_PER_M["wanda"] * m)


def test_the_cli_says_the_estimate_from_the_folders_shapes_before_the_blocks(tmp_path, capsys, monkeypatch):
    from tiny_models import tiny_llama_folder

    from oats.cli import main as cli_main
    folder = tiny_llama_folder(tmp_path / "model", hidden=32, layers=2, dtype=torch.bfloat16)
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path / "runs"))  # no past run: the default rates and the shapes
    shapes = est.model_shapes(str(folder))
    assert len(shapes) == 2 and all(len(b) == 7 for b in shapes)  # q, k, v, o, gate, up, down of each block
    want = est.estimate(str(folder), "oats", config(iterations=2), [], evaluate=False, from_disk=True)
    assert "the decomposition from its matrix shapes" in want.text
    argv = ["compress", str(folder), "--from-disk", "--iterations", "2", "--calib-samples", "2", "--seq-len", "8",
            "--out", str(tmp_path / "run"), "--quiet"]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if ln.startswith("oats: time on this machine: "))
    assert line == f"oats: time on this machine: {want.text}: {want.parts}"
    assert err.index(line) < err.index("compressing:")  # said before the first block's bar (tqdm: "compressing: 0%")
