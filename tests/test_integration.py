"""End to end on the embedded real models (offline). Marked integration: ``-m integration``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from oats import OatsConfig, compress_model, decompose, load_run, save_run
from oats.data import calibration_batches
from oats.decompose import input_scale, rank_budget, row_keep
from oats.pipeline import dense_layer_stats
from oats.zoo import load_model, preset_available

pytestmark = pytest.mark.integration

PRESETS = ["minilm-l6", "dinov2-small", "smollm2-135m"]


def need(name):
    ok, how = preset_available(name)
    if not ok:
        pytest.fail(f"embedded model {name} is not installed: {how} (make test installs it)")


def plain_oats(w, m2, cfg, iterations=80):
    """Algorithm 1 written out independently: full SVD, full stable sort, N times."""
    d = input_scale(m2, w.shape[1], cfg.eps)
    a = w.float() * d
    r = rank_budget(*w.shape, cfg)
    n_prune = w.shape[1] - row_keep(w.shape[1], cfg)
    s = torch.zeros_like(a)
    for _ in range(iterations):
        u, sv, vh = torch.linalg.svd(a - s, full_matrices=False)
        low = (u[:, :r] * sv[:r]) @ vh[:r]
        s = a - low
        idx = torch.sort(s.abs(), dim=1, stable=True)[1][:, :n_prune]
        s = s.scatter(1, idx, 0.0)
    return float((a - low - s).norm() / a.norm())


# a few real layers per model (the plain algorithm costs seconds per layer)
FAITHFUL = {"minilm-l6": ["q", "fc2"], "dinov2-small": ["fc1"], "smollm2-135m": ["k", "q"]}


@pytest.mark.parametrize("name", PRESETS)
def test_faithful_to_plain_algorithm_on_real_layers(name):
    need(name)
    loaded = load_model(name)
    batches = calibration_batches(loaded, n_samples=4 if loaded.task == "causal-lm" else 16)
    block = loaded.model.config.num_hidden_layers // 2
    layers = dense_layer_stats(loaded.model, batches, blocks=[block])
    cfg = OatsConfig(compression=0.5, rank_ratio=loaded.default_rank_ratio, iterations=80)
    for lname in FAITHFUL[name]:
        w, m2 = layers[f"{block}.{lname}"]
        plain = plain_oats(w, m2, cfg)
        exact = decompose(w, m2, cfg.replace(solver="exact"))
        fast = decompose(w, m2, cfg)  # the default solver
        assert exact.iterations == 80
        assert abs(exact.error / plain - 1) < 0.01, (lname, exact.error, plain)
        # the default (fast) solver reaches at least the plain algorithm's error
        assert fast.error <= plain * 1.01, (lname, fast.error, plain)
        # budgets are the plain algorithm's, to the integer
        assert fast.rank == rank_budget(*w.shape, cfg)
        assert int((fast.sparse != 0).sum(1).max()) == row_keep(w.shape[1], cfg)


def _cli(*args, env_extra=None):
    exe = Path(sys.executable).with_name("oats")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "oats.cli"]
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=900)


SMALL = {"minilm-l6": ["--calib-samples", "32"], "dinov2-small": ["--calib-samples", "8"],
         "smollm2-135m": ["--calib-samples", "4", "--seq-len", "128"]}


@pytest.mark.parametrize("name", PRESETS)
def test_cli_compress_offline_end_to_end(name, tmp_path):
    need(name)
    out = tmp_path / "run"
    p = _cli("compress", name, "--iterations", "20", "--out", str(out), *SMALL[name],
             env_extra={"HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "saved to" in p.stdout and "Traceback" not in p.stderr
    m = json.loads((out / "manifest.json").read_text())
    n_blocks = {"minilm-l6": 6, "dinov2-small": 12, "smollm2-135m": 30}[name]
    per_block = {"minilm-l6": 6, "dinov2-small": 6, "smollm2-135m": 7}[name]
    assert m["complete"] and m["model_name"] == name and len(m["blocks"]) == n_blocks
    assert len(m["layers"]) == n_blocks * per_block
    kept = m["params"]["kept"] / m["params"]["dense"]
    assert 0.49 < kept <= 0.5
    # the per-layer table was printed: one line per matrix plus the header
    lines = p.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["block", "name"])
    assert lines[header + len(m["layers"])].split()[0] == str(n_blocks - 1)
    assert lines[header + len(m["layers"]) + 1].strip() == ""


@pytest.mark.parametrize("name", PRESETS)
def test_oats_beats_wanda_scaled_error_on_most_layers(name):
    need(name)
    loaded = load_model(name)
    batches = calibration_batches(loaded, n_samples=4 if loaded.task == "causal-lm" else 16,
                                  **({"seq_len": 128} if loaded.task == "causal-lm" else {}))
    cfg = OatsConfig(compression=0.5, rank_ratio=loaded.default_rank_ratio, iterations=30)
    oats_run = compress_model(loaded.model, batches, cfg, model_name=name)
    wanda = compress_model(load_model(name).model, batches, cfg, method="wanda", model_name=name)
    better = [o.scaled_error < w.scaled_error for o, w in zip(oats_run.layers, wanda.layers)]
    assert sum(better) >= 0.9 * len(better), f"{sum(better)}/{len(better)}"
    assert sum(o.output_error < w.output_error for o, w in zip(oats_run.layers, wanda.layers)) > len(better) // 2


@pytest.mark.parametrize("name", ["minilm-l6", "dinov2-small"])
def test_saved_run_reloads_with_equal_outputs(name, tmp_path):
    need(name)
    loaded = load_model(name)
    batches = calibration_batches(loaded, n_samples=16 if name == "minilm-l6" else 4)
    run = compress_model(loaded.model, batches, OatsConfig(iterations=10, rank_ratio=loaded.default_rank_ratio),
                         model_name=name)
    save_run(run, tmp_path / "r")
    again = load_run(tmp_path / "r")  # rebuilds the base model through the zoo
    with torch.no_grad():
        for mode in ("both", "sparse", "lowrank"):
            run.set_mode(mode)
            again.set_mode(mode)
            a = run.model(**batches[0]).last_hidden_state
            b = again.model(**batches[0]).last_hidden_state
            assert torch.equal(a, b), mode
