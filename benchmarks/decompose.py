"""Speed benchmark: the plain algorithm against the fast path, side by side in one process.

1. Per distinct layer shape of the embedded models (real weights, real input statistics
   from the middle block): time and scaled error of the plain 80-iteration algorithm
   (full SVD + full sort every iteration, written out below exactly as published) and of
   ``oats.core.decompose`` with the default fast solver; the ratio of the two.
2. The what-if: one MiniLM-size layer recomputed for new compression / rank ratio.
3. End to end: compressing each embedded model at default settings, split into
   calibration (capture + statistics + re-runs) and decomposition, plus peak memory.

Run: .venv/bin/python benchmarks/decompose.py [--models minilm-l6,dinov2-small,smollm2-135m]
     [--skip-end-to-end] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import oats` does; before torch loads
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oats import OatsConfig, compress_model, decompose  # noqa: E402
from oats.data import calibration_batches  # noqa: E402
from oats.core.decompose import input_scale, rank_budget, row_keep  # noqa: E402
from oats.compress.statistics import dense_layer_stats  # noqa: E402
from oats.models.zoo import load_model  # noqa: E402


def plain_oats(w: torch.Tensor, m2: torch.Tensor, cfg: OatsConfig, iterations: int = 80) -> float:
    """Algorithm 1 as published: full SVD, full sort, N times. Returns the scaled error."""
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


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm-l6,dinov2-small,smollm2-135m")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine
    models = args.models.split(",")
    cfg = OatsConfig()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, config {cfg}")

    print("\n== per shape: plain 80 iterations vs fast (default solver) ==")
    print(f"{'model':14s} {'layer':8s} {'shape':>10s} {'plain s':>8s} {'fast s':>8s} {'ratio':>6s} "
          f"{'plain err':>10s} {'fast err':>10s} {'rel diff':>9s} {'iters':>5s}")
    ratios, diffs, seen = [], [], set()
    whatif_layer = None
    for name in models:
        loaded = load_model(name)
        batches = calibration_batches(loaded, n_samples=8 if loaded.task == "causal-lm" else 32)
        depth = loaded.model.config.num_hidden_layers
        layers = dense_layer_stats(loaded.model, batches, blocks=[depth // 2])
        for qual, (w, m2) in layers.items():
            shape = tuple(w.shape)
            if (name, shape) in seen:
                continue
            seen.add((name, shape))
            plain_err, t_plain = timed(lambda: plain_oats(w, m2, cfg))
            dec, t_fast = timed(lambda: decompose(w, m2, cfg, device=args.device))
            ratio = t_plain / t_fast
            diff = dec.error / plain_err - 1
            ratios.append(ratio)
            diffs.append(diff)
            print(f"{name:14s} {qual:8s} {shape[0]:>4d}x{shape[1]:<5d} {t_plain:8.2f} {t_fast:8.3f} {ratio:6.1f} "
                  f"{plain_err:10.5f} {dec.error:10.5f} {diff:+9.2%} {dec.iterations:5d}")
            if name == "minilm-l6" and whatif_layer is None and shape[0] == shape[1]:
                whatif_layer = (w, m2)
        del loaded
    print(f"median ratio {statistics.median(ratios):.1f}x (min {min(ratios):.1f}x, max {max(ratios):.1f}x); "
          f"fast error vs plain: worst {max(diffs):+.2%}, median {statistics.median(diffs):+.2%}")

    if whatif_layer is not None:
        print("\n== what-if: one MiniLM layer (384x384) recomputed for new settings ==")
        w, m2 = whatif_layer
        for rho, kappa in [(0.4, 0.2), (0.5, 0.3), (0.6, 0.25), (0.7, 0.4)]:
            dec, t = timed(lambda: decompose(w, m2, OatsConfig(compression=rho, rank_ratio=kappa)))
            print(f"compression {rho} rank ratio {kappa}: {t:.3f}s, error {dec.error:.4f}, {dec.iterations} iterations")

    if not args.skip_end_to_end:
        print("\n== end to end at default settings ==")
        for name in models:
            loaded, t_load = timed(lambda: load_model(name))
            batches = calibration_batches(loaded)
            run = compress_model(loaded.model, batches, OatsConfig(rank_ratio=loaded.default_rank_ratio),
                                 model_name=name, device=args.device)
            tm = run.timings
            calib = tm["capture_s"] + tm["stats_s"] + (tm["total_s"] - tm["capture_s"] - tm["stats_s"] - tm["decompose_s"])
            print(f"{name:14s} total {tm['total_s']:6.1f}s = calibration and re-runs {calib:5.1f}s + decomposition "
                  f"{tm['decompose_s']:5.1f}s ({len(run.layers)} matrices, {run.calibration['tokens']} tokens); "
                  f"load {t_load:.1f}s; peak RSS so far {peak_rss_gb():.2f} GB")
            del loaded, run
    return 0


if __name__ == "__main__":
    sys.exit(main())
