"""Layer output error of SparseGPT (row and layer budgets), OATS and HASSLE-free on real layers.

For each embedded model, the dense model runs on its default calibration data and every
linear of the chosen blocks is compressed on its own (same weights, same input Gram H for
every method) at one compression rate. The figure of merit is the layer output error on the
calibration inputs, ||(W - W') X^T||_F / ||W X^T||_F = sqrt(tr(E H E^T) / tr(W H W^T)).

Prints one line per layer, then per model: on how many layers HASSLE-free is below each
other method, the mean errors, and the total decomposition time of each method over
SparseGPT's (row). ``hassle_layer`` is HASSLE-free with layer budgets (to read against
``sparsegpt_layer``); ``hassle_published`` is it without the refit of S on its mask
(``refit=0``: HASSLE-free as published), ``sparsegpt_refit`` SparseGPT followed by the same
refit, so the table separates what the refit and what the low-rank term bring. ``--starts`` adds HASSLE-free started from L = 0 (instead of OATS's
low-rank term) and without the rank-0 fallback, the measurements behind its defaults.

Run: .venv/bin/python benchmarks/hassle_layers.py [--models minilm-l6,dinov2-small,smollm2-135m]
     [--blocks all|0,3,5] [--compression 0.5] [--rank-ratio 0.25] [--starts]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import oats` does; before torch loads
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oats import OatsConfig, decompose  # noqa: E402
from oats.compress.statistics import iter_dense_layer_stats  # noqa: E402
from oats.data import calibration_batches  # noqa: E402
from oats.methods.hassle import REFIT_ITERATIONS, damped_cholesky, gram_objective, hassle, refit_sparse  # noqa: E402
from oats.methods.sparsegpt import sparsegpt  # noqa: E402
from oats.models.zoo import load_model  # noqa: E402
from oats.resources import one_thread  # noqa: E402

MODELS = ("minilm-l6", "dinov2-small", "smollm2-135m")
DEFAULT_BLOCKS = {"smollm2-135m": [0, 5, 10, 15, 20, 25, 29]}
"""Blocks per model when --blocks is not given (all blocks otherwise)."""


def methods(starts: bool):
    """name -> function(weight, second moments, gram, config) returning the compressed weight."""
    out = {
        "sparsegpt": lambda w, m2, g, c: sparsegpt(w, g, c).dense(),
        "sparsegpt_layer": lambda w, m2, g, c: sparsegpt(w, g, c.replace(sparsity="layer")).dense(),
        "oats": lambda w, m2, g, c: decompose(w, m2, c).dense(),
        "sparsegpt_refit": lambda w, m2, g, c: sparsegpt_refit(w, g, c),
        "hassle": lambda w, m2, g, c: hassle(w, g, c, second_moments=m2).dense(),
        "hassle_published": lambda w, m2, g, c: hassle(w, g, c, second_moments=m2, refit=0).dense(),
        "hassle_layer": lambda w, m2, g, c: hassle(w, g, c.replace(sparsity="layer"), second_moments=m2).dense(),
    }
    if starts:
        out["hassle_from_0"] = lambda w, m2, g, c: hassle(w, g, c, start="zero", fallback=False).dense()
        out["hassle_no_fallback"] = lambda w, m2, g, c: hassle(w, g, c, second_moments=m2, fallback=False).dense()
    return out


def sparsegpt_refit(w: torch.Tensor, g: torch.Tensor, c: OatsConfig) -> torch.Tensor:
    """SparseGPT, then its values refitted on its mask as HASSLE-free's S-step does."""
    s = sparsegpt(w, g, c).sparse
    chol = damped_cholesky(g.double())
    goal = w.clone()
    goal[:, torch.diagonal(g) <= 0] = 0.0
    return refit_sparse(goal, s, (chol @ chol.T).float(), REFIT_ITERATIONS)


def output_error(w: torch.Tensor, w2: torch.Tensor, gram64: torch.Tensor) -> float:
    ref = gram_objective(w, gram64)
    return math.sqrt(max(gram_objective(w - w2, gram64), 0.0) / ref) if ref > 0 else 0.0


def run_model(name: str, blocks, config: OatsConfig, starts: bool) -> dict:
    loaded = load_model(name)
    calib = calibration_batches(loaded)
    fns = methods(starts)
    errors = {m: [] for m in fns}
    times = {m: 0.0 for m in fns}
    print(f"\n{name}: rho {config.compression}, kappa {config.rank_ratio}, blocks {blocks or 'all'}")
    print(f"{'layer':10s} {'shape':>11s} " + " ".join(f"{m:>18s}" for m in fns))
    for _i, layers in iter_dense_layer_stats(loaded.model, calib, blocks, gram=True):
        for q, (w, m2, g) in layers.items():
            w, m2, g = w.float().clone(), m2.clone(), g.clone()
            g64 = g.double()
            row = []
            for m, fn in fns.items():
                with one_thread():
                    t0 = time.perf_counter()
                    w2 = fn(w, m2, g, config)
                    times[m] += time.perf_counter() - t0
                errors[m].append(output_error(w, w2, g64))
                row.append(f"{errors[m][-1]:18.5f}")
            print(f"{q:10s} {str(tuple(w.shape)):>11s} " + " ".join(row), flush=True)
    n = len(errors["hassle"])
    print(f"{name}: {n} layers")
    for ours, others in (("hassle", [m for m in fns if m != "hassle"]), ("hassle_layer", ["sparsegpt_layer"])):
        for m in others:
            below = sum(h < o for h, o in zip(errors[ours], errors[m]))
            above = sum(h > o for h, o in zip(errors[ours], errors[m]))
            print(f"  {ours} below {m:18s} on {below}/{n} layers (above on {above}); mean error {m} "
                  f"{sum(errors[m]) / n:.5f}, {ours} {sum(errors[ours]) / n:.5f}")
    for m in fns:
        print(f"  time {m:18s} {times[m]:8.2f} s  ({times[m] / max(times['sparsegpt'], 1e-9):.2f} x sparsegpt)")
    return {"errors": errors, "times": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--blocks", default=None, help="'all' or comma-separated block indices (default: per model)")
    p.add_argument("--compression", type=float, default=0.5)
    p.add_argument("--rank-ratio", type=float, default=0.25)
    p.add_argument("--starts", action="store_true", help="also HASSLE-free from L = 0 and without the fallback")
    a = p.parse_args(argv)
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine
    config = OatsConfig(compression=a.compression, rank_ratio=a.rank_ratio)
    for name in a.models.split(","):
        if a.blocks is None:
            blocks = DEFAULT_BLOCKS.get(name)
        else:
            blocks = None if a.blocks == "all" else [int(b) for b in a.blocks.split(",")]
        run_model(name, blocks, config, a.starts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
