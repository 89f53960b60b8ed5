"""A CLI run SIGKILLed after block k resumes (``oats compress --resume``) and ends equal to an
uninterrupted run.

Every run here is a real ``python -m oats.cli compress`` subprocess on a tiny local Llama
folder (5 blocks, seconds per run). The killed run is started through a small driver
(``python -c KILL_DRIVER``) that wraps functions of ``oats.compress.pipeline`` / ``oats.runs.folders`` in its own
process only, so that once block k is saved (factors + manifest) and block k+1 is under way,
the process sends itself SIGKILL: no exception, no ``finally``, no Python handler runs.
Production code has no test hooks.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from safetensors.torch import load_file

from oats.compress import summaries
from oats.models import zoo
from oats.runs.folders import MANIFEST, list_runs, load_run, read_manifest
from oats.core.linear import oats_layers

REPO = Path(__file__).resolve().parents[1]
N_BLOCKS = 5
# 12 samples -> two calibration batches (8 + 4); few iterations keep each block in milliseconds
FLAGS = ["--calib-samples", "12", "--seq-len", "16", "--iterations", "6", "--seed", "3", "--quiet"]
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "python", "code", "runs",
         "fast", "and", "every", "statement", "has", "a", "value", "that", "names", "an", "object", "in", "memory"]
TIMEOUT_S = 180

KILL_DRIVER = r"""
import os, signal, sys, time
import oats.runs.folders as IO
import oats.compress.pipeline as P
from oats.cli import main

K = int(os.environ["KILL_AFTER_BLOCK"])   # the last block that is fully saved
WHERE = os.environ["KILL_WHERE"]
current = [None]                          # index of the block compress_block is working on


def die():
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all
    time.sleep(60)                        # never reached


orig_compress_block = P.compress_block
def compress_block(model, adapter, index, *args, **kwargs):
    current[0] = index
    if WHERE == "poll":                   # slow blocks down so the parent can kill at any moment
        time.sleep(float(os.environ["BLOCK_SLEEP_S"]))
    return orig_compress_block(model, adapter, index, *args, **kwargs)
P.compress_block = compress_block

if WHERE == "decompose":                  # block K+1: statistics taken, decomposition starting
    orig_decompose_block = P.decompose_block
    def decompose_block(*args, **kwargs):
        if current[0] == K + 1:
            die()
        return orig_decompose_block(*args, **kwargs)
    P.decompose_block = decompose_block
elif WHERE == "write":                    # block K+1's factors half written to their temp file
    orig_save_file = IO.save_file
    def save_file(tensors, filename, metadata=None):
        orig_save_file(tensors, filename, metadata=metadata)
        if current[0] == K + 1:
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            die()
    IO.save_file = save_file
elif WHERE == "manifest":                 # block K+1's file in place, the manifest not yet updated
    orig_manifest = IO.RunWriter._manifest
    def _manifest(self, run, complete):
        if current[0] == K + 1:
            die()
        return orig_manifest(self, run, complete)
    IO.RunWriter._manifest = _manifest
elif WHERE == "finish":                   # K is the last block: killed before the run is marked complete
    def finish(self, run):
        die()
    IO.RunWriter.finish = finish
elif WHERE != "poll":
    raise SystemExit("unknown KILL_WHERE " + WHERE)

sys.exit(main(sys.argv[1:]))
"""


# ----------------------------------------------------------------------------- helpers


def _env(root: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(OATS_CACHE_DIR=str(root / "cache"), OATS_RUNS_DIR=str(root / "runs"), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _cli(root: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oats.cli", *argv], cwd=REPO, env=_env(root),
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def _compress_argv(ws: dict, out: Path, *more: str) -> list[str]:
    return ["compress", str(ws["model"]), "--out", str(out), "--calib-source", str(ws["text"]), *FLAGS, *more]


def _block_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("block_*.safetensors"))


def _names(blocks) -> list[str]:
    return [f"block_{b:03d}.safetensors" for b in blocks]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def _listed(root: Path, folder: Path) -> dict:
    rows = [r for r in list_runs(root) if r["name"] == folder.name]
    assert len(rows) == 1, list_runs(root)
    return rows[0]


def _strip_times(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.endswith("time_s")}


def assert_same_run(got: Path, want: Path) -> None:
    """Two complete run folders hold the same compression: manifests and every saved tensor."""
    a, b = read_manifest(got), read_manifest(want)
    assert a["complete"] is True and b["complete"] is True
    for key in ("model_name", "family", "method", "config", "effective_compression", "block_rates", "allocation",
                "calibration", "calibration_request", "params", "blocks_done", "modules"):
        assert a[key] == b[key], key
    assert a["blocks_done"] == list(range(N_BLOCKS))
    assert [r["qualname"] for r in a["layers"]] == [r["qualname"] for r in b["layers"]]
    assert len(a["layers"]) == 7 * N_BLOCKS
    # the final per-layer scaled errors (and everything else measured, times aside) agree exactly
    assert [r["scaled_error"] for r in a["layers"]] == [r["scaled_error"] for r in b["layers"]]
    assert all(0.0 < r["scaled_error"] < 1.0 for r in a["layers"])
    assert [_strip_times(r) for r in a["layers"]] == [_strip_times(r) for r in b["layers"]]
    assert [_strip_times(r) for r in a["blocks"]] == [_strip_times(r) for r in b["blocks"]]
    assert _block_files(got) == _block_files(want) == _names(range(N_BLOCKS))
    for name in _block_files(want):
        ta, tb = load_file(str(got / name)), load_file(str(want / name))
        assert sorted(ta) == sorted(tb), name
        # per module: sparse values, mask, u, v; per matrix: m2 and its summary (oats.compress.summaries)
        assert len([k for k in tb if ".summary." not in k]) == 7 * 5, name
        assert len([k for k in tb if ".summary." in k]) == 7 * len(summaries.KEYS), name
        for key in tb:
            assert ta[key].dtype == tb[key].dtype and ta[key].shape == tb[key].shape, (name, key)
            assert torch.equal(ta[key], tb[key]), (name, key, (ta[key].float() - tb[key].float()).abs().max())


def assert_killed_partial(ws: dict, folder: Path, proc_rc: int, blocks_done: list[int], stderr: str) -> dict:
    """The SIGKILLed run left a recognisably unfinished folder holding exactly ``blocks_done``."""
    assert proc_rc == -signal.SIGKILL, (proc_rc, stderr[-2000:])
    assert "Traceback" not in stderr and "interrupted" not in stderr  # died without any Python handler
    m = read_manifest(folder)
    assert m["complete"] is False
    assert m["blocks_done"] == blocks_done
    assert sorted({r["block"] for r in m["layers"]}) == blocks_done
    row = _listed(folder.parent, folder)
    assert row["status"] == "unfinished" and row["blocks_done"] == len(blocks_done), row
    # what the resume will start from: only the saved blocks are compressed, stray files ignored
    partial = load_run(folder, model=zoo.load_model(str(ws["model"])).model, allow_partial=True)
    assert sorted({int(p.split(".")[2]) for p in oats_layers(partial.model)}) == blocks_done
    assert sorted(b.index for b in partial.blocks) == blocks_done
    assert {q.split(".")[0] for q in partial.second_moments} == {str(b) for b in blocks_done}
    return m


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A tiny local Llama folder with a word-level tokenizer, a calibration text, and the
    reference: one uninterrupted CLI run with the flags every run here uses."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("kill-resume")
    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=N_BLOCKS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model_dir = root / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rng = random.Random(0)
    text = root / "calib.txt"
    text.write_text(" ".join(rng.choice(WORDS) for _ in range(600)))
    ws = {"root": root, "model": model_dir, "text": text, "runs": root / "runs"}
    ref = ws["runs"] / "reference"
    p = _cli(root, *_compress_argv(ws, ref))
    assert p.returncode == 0, p.stderr[-3000:]
    assert _listed(ws["runs"], ref)["status"] == "complete"
    ws["ref"] = ref
    return ws


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("where,k", [
    ("decompose", 1),  # killed while decomposing block 2
    ("write", 3),      # killed half-way through writing block 4 (the last one) to its temp file
    ("manifest", 0),   # killed after block 1's factors were saved, before the manifest listed them
    ("finish", 4),     # every block saved, killed before the run was marked complete
])
def test_killed_run_resumes_to_the_uninterrupted_result(ws, where, k):
    out = ws["runs"] / f"killed-{where}-{k}"
    argv = _compress_argv(ws, out)
    p = subprocess.run([sys.executable, "-c", KILL_DRIVER, *argv], cwd=REPO, capture_output=True, text=True,
                       env=_env(ws["root"], KILL_AFTER_BLOCK=k, KILL_WHERE=where), timeout=TIMEOUT_S,
                       check=False)
    done = list(range(k + 1))
    assert_killed_partial(ws, out, p.returncode, done, p.stderr)

    files = _block_files(out)
    stray = sorted(f.name for f in out.iterdir() if f.name != MANIFEST and f.name not in files)
    if where == "write":
        # the half-written temp file is there but is no block: not named like one, not listed
        assert files == _names(done)
        assert len(stray) == 1 and stray[0].startswith(f".block_{k + 1:03d}.safetensors.") \
            and stray[0].endswith(".tmp"), stray
        assert 0 < (out / stray[0]).stat().st_size < (ws["ref"] / f"block_{k + 1:03d}.safetensors").stat().st_size
    elif where == "manifest":
        # block k+1's file is complete on disk but the manifest does not count it
        assert files == _names(range(k + 2)) and stray == []
    else:
        assert files == _names(done) and stray == []

    r = _cli(ws["root"], *argv, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"after {k + 1} finished blocks" in r.stderr
    assert _listed(ws["runs"], out)["status"] == "complete"
    assert_same_run(out, ws["ref"])
    # the resumed writer removed what the kill left half-written: only blocks and the manifest remain
    assert sorted(f.name for f in out.iterdir()) == sorted([MANIFEST, *_block_files(out)]), sorted(os.listdir(out))

    if where == "decompose":
        # resuming a complete run: status 2, one line, no traceback, nothing changed
        before = (out / MANIFEST).read_bytes()
        again = _cli(ws["root"], *argv, "--resume")
        assert again.returncode == 2
        err = again.stderr.strip()
        assert len(err.splitlines()) == 1 and "already complete" in err and "Traceback" not in err, err
        assert (out / MANIFEST).read_bytes() == before


def test_run_killed_at_an_arbitrary_moment_resumes(ws):
    """The parent watches the manifest and SIGKILLs the child (Popen.kill) a random moment after
    the first block is saved. The child sleeps 0.5 s before each block (its own work takes
    milliseconds), so the kill falls in block 1 or 2, mostly in that sleep, sometimes in the
    statistics, decomposition or saving; the exact points are covered deterministically above."""
    out = ws["runs"] / "killed-poll"
    argv = _compress_argv(ws, out)
    delay = random.Random().uniform(0.0, 0.45)
    proc = subprocess.Popen([sys.executable, "-c", KILL_DRIVER, *argv], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=_env(ws["root"], KILL_AFTER_BLOCK=-1, KILL_WHERE="poll", BLOCK_SLEEP_S=0.5))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if _manifest(out)["blocks_done"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        assert proc.poll() is None, f"the child ended before it could be killed: {proc.stderr.read()[-3000:]}"
        time.sleep(delay)
        proc.kill()
        _, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = _manifest(out)
    n = len(m["blocks_done"])
    assert 1 <= n < N_BLOCKS, (n, delay)
    assert_killed_partial(ws, out, proc.returncode, list(range(n)), stderr)
    assert [f for f in _block_files(out) if f not in _names(range(n))] in ([], _names([n])), (delay, _block_files(out))

    r = _cli(ws["root"], *argv, "--resume")
    assert r.returncode == 0, (delay, r.stderr[-3000:])
    assert_same_run(out, ws["ref"])


def test_the_app_resumes_a_killed_cli_run(ws):
    """The app's Resume button (JobRunner.start with the run's own folder) finishes a CLI run
    that was killed, with the CLI's calibration (its text, sequence length and seed), to the
    same result as the uninterrupted run."""
    from oats.runner.jobs import JobRunner
    from oats.runner.request import request_from_manifest
    out = ws["runs"] / "killed-then-app"
    p = subprocess.run([sys.executable, "-c", KILL_DRIVER, *_compress_argv(ws, out)], cwd=REPO, capture_output=True,
                       text=True, env=_env(ws["root"], KILL_AFTER_BLOCK=2, KILL_WHERE="decompose"),
                       timeout=TIMEOUT_S, check=False)
    assert_killed_partial(ws, out, p.returncode, [0, 1, 2], p.stderr)
    req = request_from_manifest(read_manifest(out), evaluate=False)
    assert req.seq_len == 16 and req.calib_samples == 12 and req.seed == 3
    saved = {name: (out / name).stat().st_mtime_ns for name in _names(range(3))}
    state = JobRunner().start(req, folder=out).wait(TIMEOUT_S)
    assert state.status == "done", state.error
    assert state.done == N_BLOCKS
    # resumed, not recomputed: the blocks saved before the kill were not written again
    assert {name: (out / name).stat().st_mtime_ns for name in saved} == saved
    assert _listed(ws["runs"], out)["status"] == "complete"
    assert_same_run(out, ws["ref"])
