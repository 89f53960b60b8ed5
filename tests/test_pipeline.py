"""Pipeline, run folders and CLI on a tiny Llama built in the test (no downloads)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oats import OatsConfig, compress_model, list_runs, load_run, save_run
from oats.cli import main as cli_main
from oats.errors import ConfigError, RunError
from oats.runs.folders import RunWriter, read_manifest

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=6)


from tiny_models import batches  # noqa: E402
from tiny_models import tiny_llama as _tiny_llama  # noqa: E402


def tiny_llama(seed=0, layers=3):
    return _tiny_llama(seed, layers)


def logits(model, b):
    with torch.no_grad():
        return model(**b).logits


def test_sequential_records_and_modes():
    model = tiny_llama()
    ref = logits(model, batches()[0])
    seen = []
    run = compress_model(model, batches(), CFG, progress=lambda d, t, m: seen.append((d, t)))
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    assert len(run.layers) == 21 and len(run.blocks) == 3
    for r in run.layers:
        assert 0 < r.scaled_error < 1 and r.output_error is not None and 0 < r.output_error < 1
        assert r.params <= r.budget + r.shape[0]
        assert len(run.second_moments[r.qualname]) == r.shape[1]
        assert len(r.history["error"]) == r.iterations
    assert all(0 < b.output_error < 1 for b in run.blocks)
    with run.use_mode("dense"):
        assert torch.equal(logits(model, batches()[0]), ref)
    out = {m: logits(model, batches()[0]) for m in ("both", "sparse", "lowrank") if not run.set_mode(m)}
    assert not torch.allclose(out["both"], ref) and not torch.allclose(out["sparse"], out["both"])
    # the lowrank-only model is much further from dense than sparse + lowrank
    err = {m: float((o - ref).norm() / ref.norm()) for m, o in out.items()}
    assert err["both"] < err["sparse"] and err["both"] < err["lowrank"]


def test_output_error_matches_direct_computation():
    """The recorded output error of block 0's q equals ||X (W - W')^T|| / ||X W^T|| on its inputs."""
    model = tiny_llama()
    b = batches()
    dense = copy.deepcopy(model)
    captured = []
    h = dense.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    for x in b:
        logits(dense, x)
    h.remove()
    run = compress_model(model, b, CFG)
    f = run.factors("0.q")
    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in captured])
    w, w2 = f["weight"], f["sparse"] + f["u"] @ f["v"]
    direct = float((x @ (w - w2).T).norm() / (x @ w.T).norm())
    assert run.layer("0.q").output_error == pytest.approx(direct, rel=1e-4)


def test_an_unknown_method_is_a_config_error():
    # each method's budget split: test_baselines.py; what every method keeps: test_contracts_methods.py
    with pytest.raises(ConfigError, match="unknown method 'sparsegtp'"):
        compress_model(tiny_llama(), batches(), CFG, method="sparsegtp")


def test_save_and_reload_equal(tmp_path):
    model = tiny_llama()
    base = copy.deepcopy(model)
    run = compress_model(model, batches(), CFG, model_name="tiny")
    save_run(run, tmp_path / "r")
    again = load_run(tmp_path / "r", model=base)
    for mode in ("both", "sparse", "lowrank", "dense"):
        run.set_mode(mode)
        again.set_mode(mode)
        assert torch.equal(logits(again.model, batches()[0]), logits(run.model, batches()[0]))
    assert [r.to_dict() for r in again.layers] == [r.to_dict() for r in run.layers]
    for k, v in run.second_moments.items():
        assert torch.equal(again.second_moments[k], v)
    m = read_manifest(tmp_path / "r")
    assert m["complete"] and m["config"]["compression"] == 0.5 and "torch" in m["versions"]
    # factors are stored compactly: packed mask + values, not a dense sparse matrix
    size = sum(p.stat().st_size for p in (tmp_path / "r").glob("*.safetensors"))
    dense_bytes = sum(r.shape[0] * r.shape[1] * 4 for r in run.layers)
    # the views' stored summaries (spectra, column norms) are extra: up to a quarter of these
    # tiny matrices' bytes (fp64 vectors of 64-128 values), a few percent of a real model's
    summary_bytes = sum(t.numel() * t.element_size() for s in run.summaries.values() for t in s.values())
    assert 0 < summary_bytes < 0.3 * dense_bytes
    assert size - summary_bytes < 0.75 * dense_bytes


def test_reload_into_another_model_fails_clearly(tmp_path):
    run = compress_model(tiny_llama(), batches(), CFG, model_name="tiny")
    save_run(run, tmp_path / "r")
    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    with pytest.raises(RunError, match="was made for 'tiny'"):
        load_run(tmp_path / "r", model=other)


class _Killed(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    full = compress_model(tiny_llama(), batches(), CFG, model_name="tiny")

    writer = RunWriter(tmp_path / "r")

    def die_after_block_1(run, i):
        writer.block_done(run, i)
        if i == 1:
            raise _Killed

    with pytest.raises(_Killed):
        compress_model(tiny_llama(), batches(), CFG, model_name="tiny", on_block_done=die_after_block_1)
    m = read_manifest(tmp_path / "r")
    assert not m["complete"] and m["blocks_done"] == [0, 1]
    assert list_runs(tmp_path)[0]["status"] == "unfinished"
    with pytest.raises(RunError, match="unfinished"):
        load_run(tmp_path / "r", model=tiny_llama())

    partial = load_run(tmp_path / "r", model=tiny_llama(), allow_partial=True)
    writer2 = RunWriter(tmp_path / "r")
    resumed = compress_model(partial.model, batches(), CFG, model_name="tiny", resume=partial,
                             on_block_done=writer2.block_done)
    writer2.finish(resumed)
    assert [r.qualname for r in resumed.layers] == [r.qualname for r in full.layers]
    for a, b in zip(resumed.layers, full.layers):
        assert a.scaled_error == pytest.approx(b.scaled_error, rel=1e-5)
    assert torch.allclose(logits(resumed.model, batches()[0]), logits(full.model, batches()[0]), atol=1e-5)
    assert list_runs(tmp_path)[0]["status"] == "complete"
    with pytest.raises(ConfigError, match="other settings"):
        compress_model(tiny_llama(), batches(), CFG.replace(compression=0.6), resume=partial)


def test_damaged_runs_are_reported_and_others_still_list(tmp_path):
    run = compress_model(tiny_llama(layers=1), batches(), CFG, model_name="tiny")
    save_run(run, tmp_path / "good")
    save_run(run, tmp_path / "bad")
    (tmp_path / "bad" / "manifest.json").write_text("{ not json")
    save_run(run, tmp_path / "nofactors")
    (tmp_path / "nofactors" / "block_000.safetensors").unlink()
    runs = {r["name"]: r for r in list_runs(tmp_path)}
    assert runs["good"]["status"] == "complete"
    assert runs["bad"]["status"] == "damaged" and "damaged manifest" in runs["bad"]["problem"]
    with pytest.raises(RunError, match="missing block_000.safetensors"):
        load_run(tmp_path / "nofactors", model=tiny_llama(layers=1))
    (tmp_path / "trunc").mkdir()
    save_run(run, tmp_path / "trunc")
    (tmp_path / "trunc" / "block_000.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RunError, match="unreadable"):
        load_run(tmp_path / "trunc", model=tiny_llama(layers=1))
    with pytest.raises(RunError, match="is not a run folder"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("argv,message", [
    (["compress", "minilm-l6", "--compression", "1"], "compression must be in (0, 1)"),
    (["compress", "minilm-l6", "--compression", "abc"], "compression must be a number in (0, 1), got 'abc'"),
    (["compress", "minilm-l6", "--rank-ratio", "1"], "rank_ratio must be in [0, 1)"),
    (["compress", "minilm-l6", "--iterations", "0"], "iterations must be a whole number of at least 1"),
    (["compress", "minilm-l6", "--sparsity", "3:2"], "N:M needs 0 < N < M"),
    (["compress", "minilm-l6", "--method", "nope"], "unknown method 'nope'"),
    (["compress", "no-such-model-xyz"], "no-such-model-xyz"),
    (["compress"], "the following arguments are required: model"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        sys.exit(cli_main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err


def test_cli_runs_lists_status(tmp_path, capsys):
    run = compress_model(tiny_llama(layers=1), batches(), CFG, model_name="tiny")
    save_run(run, tmp_path / "one")
    assert cli_main(["runs", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "one" in out and "complete" in out and "tiny" in out


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "oats.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "compress" in out.stdout


def test_device_option_on_cpu_and_clear_errors():
    a = compress_model(tiny_llama(), batches(), CFG, device="cpu")
    b = compress_model(tiny_llama(), batches(), CFG)
    assert torch.equal(logits(a.model, batches()[0]), logits(b.model, batches()[0]))
    with pytest.raises(ConfigError, match="not understood"):
        compress_model(tiny_llama(), batches(), CFG, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            compress_model(tiny_llama(), batches(), CFG, device="cuda")


def test_cli_misspelt_model_is_one_line_and_nothing_before(tmp_path):
    """A real `oats compress smolm2-135m` (a typo): exactly one stderr line, no 'loading ...'."""
    import os
    env = dict(os.environ, OATS_RUNS_DIR=str(tmp_path), HF_HUB_OFFLINE="1")
    for argv in (["compress", "smolm2-135m"], ["sweep", "smolm2-135m", "--compression", "0.5"]):
        p = subprocess.run([sys.executable, "-m", "oats.cli", *argv], capture_output=True, text=True, env=env,
                           timeout=300)
        assert p.returncode == 2 and p.stdout == "", p.stderr
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("oats: error: ") and "smolm2-135m" in lines[0], p.stderr


class _Terminal:
    """A stand-in stderr that says it is a terminal and keeps what is written."""

    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return True


def test_cli_status_line_is_erased_before_an_error(monkeypatch):
    """On a terminal 'loading ...' is drawn on one line that the error then overwrites; in a
    pipe it is not written at all."""
    from oats import cli
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    status = cli._Status()
    monkeypatch.setattr(cli, "_STATUS", status)
    status.show("loading tiny ...")
    assert cli._fail("boom") == 2
    assert "\n" not in term.text.rstrip("\n") and term.text.endswith("\r\x1b[Koats: error: boom\n")
    pipe = _Terminal()
    pipe.isatty = lambda: False
    monkeypatch.setattr(sys, "stderr", pipe)
    status.show("loading tiny ...")
    status.clear()
    assert pipe.text == ""
