"""The GPU check (run through benchmarks/gpu_check.sh, which first makes sure CUDA is there).

Everything is measured on the CPU and on the GPU side by side in this one process:

1. Decomposition: for each distinct layer shape of the embedded models (real weights and
   input statistics from the middle block, as benchmarks/decompose.py takes them), the time
   of ``oats.core.decompose`` at the default settings on each device, the speedup, and the
   relative difference of the scaled errors.
2. End to end: each embedded model compressed at default settings on the CPU and with
   ``device="cuda"`` (what ``oats compress --device cuda`` does): times, speedup, and per
   layer the relative difference of the scaled errors and of the block output errors.

Match: the fast solver stops when its objective changes by less than ``tol`` (1e-3) in an
iteration, so two devices, whose sums round differently, may stop an iteration or two apart;
results "match" when every scaled error and block output error is within
``MATCH = 10 x tol`` (relative) of the CPU's, and every layer kept the same rank and number of
non-zeros (those follow from the budgets alone). The script exits 1 when something does not match.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import oats` does; before torch loads
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oats import OatsConfig, compress_model, decompose  # noqa: E402
from oats.compress.statistics import dense_layer_stats  # noqa: E402
from oats.data import calibration_batches  # noqa: E402
from oats.models.zoo import load_model  # noqa: E402

MATCH = 10 * OatsConfig().tol


def timed(fn, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm-l6,dinov2-small,smollm2-135m")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--device", default="cuda", help="the device checked against the CPU (cpu: a smoke test of this "
                    "script where there is no GPU; its speedups are then meaningless)")
    args = ap.parse_args()
    models = args.models.split(",")
    cfg = OatsConfig()
    dev = args.device
    what = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"none ({dev} against itself)"
    print(f"torch {torch.__version__}, GPU {what}, CPU threads {torch.get_num_threads()}; "
          f"match: relative difference <= {MATCH:g} (10 x the solver's tol)")
    ok = True

    print("\n== decomposition, one layer per distinct shape, default settings ==")
    print(f"{'model':14s} {'layer':8s} {'shape':>10s} {'cpu s':>8s} {dev + ' s':>8s} {'speedup':>8s} {'err diff':>9s}")
    speedups, seen = [], set()
    for name in models:
        loaded = load_model(name)
        batches = calibration_batches(loaded, n_samples=8 if loaded.task == "causal-lm" else 32)
        layers = dense_layer_stats(loaded.model, batches, blocks=[loaded.model.config.num_hidden_layers // 2])
        for qual, (w, m2) in layers.items():
            shape = tuple(w.shape)
            if (name, shape) in seen:
                continue
            seen.add((name, shape))
            decompose(w, m2, cfg, device=dev)  # warm-up: CUDA context and kernels
            cpu, t_cpu = timed(lambda: decompose(w, m2, cfg, device="cpu"), "cpu")
            gpu, t_gpu = timed(lambda: decompose(w, m2, cfg, device=dev), dev)
            diff = rel(gpu.error, cpu.error)
            good = diff <= MATCH and gpu.rank == cpu.rank and gpu.nnz == cpu.nnz
            ok &= good
            speedups.append(t_cpu / t_gpu)
            print(f"{name:14s} {qual:8s} {shape[0]:>4d}x{shape[1]:<5d} {t_cpu:8.3f} {t_gpu:8.3f} {t_cpu / t_gpu:7.1f}x "
                  f"{diff:9.2e}{'' if good else '  MISMATCH'}")
        del loaded
    print(f"median speedup {statistics.median(speedups):.1f}x (min {min(speedups):.1f}x, max {max(speedups):.1f}x)")

    if not args.skip_end_to_end:
        print("\n== end to end at default settings (oats compress MODEL [--device cuda]) ==")
        for name in models:
            runs, times = {}, {}
            for device in ("cpu", dev):
                loaded = load_model(name)
                batches = calibration_batches(loaded)
                cfg_m = OatsConfig(rank_ratio=loaded.default_rank_ratio)
                runs[device], times[device] = timed(lambda: compress_model(loaded.model, batches, cfg_m,
                                                                           model_name=name, device=device), device)
                del loaded
            cpu, gpu = runs["cpu"], runs[dev]
            err = max(rel(g.scaled_error, c.scaled_error) for g, c in zip(gpu.layers, cpu.layers))
            out = max(rel(g.output_error, c.output_error) for g, c in zip(gpu.blocks, cpu.blocks))
            same_budget = all((g.rank, g.nnz) == (c.rank, c.nnz) for g, c in zip(gpu.layers, cpu.layers))
            good = err <= MATCH and out <= MATCH and same_budget and len(gpu.layers) == len(cpu.layers)
            ok &= good
            print(f"{name:14s} cpu {times['cpu']:7.1f}s  {dev} {times[dev]:7.1f}s  speedup "
                  f"{times['cpu'] / times[dev]:5.1f}x  worst scaled-error diff {err:.2e}, block output-error diff "
                  f"{out:.2e}, same ranks and non-zeros: {same_budget}{'' if good else '  MISMATCH'}")
            del runs
    print("\nGPU results match the CPU's" if ok else "\nSOME GPU RESULTS DO NOT MATCH THE CPU'S (see MISMATCH above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
