"""Peak memory of compressing each embedded model at default settings.

Each model runs in its own fresh process (peak RSS is per process), loading from the
on-disk cache, calibrating on the default data and compressing with the default config.
Prints one line per model: peak resident memory while compressing, the memory after loading
the model and its calibration data (its memory-mapped weights read in first), the dense model's own size, the pre-flight estimate of
what compressing adds (``oats.compress.preflight``, margin included: the number a request is refused on)
next to what it really added (peak - after load), and the wall time. Memory is read from
/proc/self/status (VmRSS, VmHWM; the peak restarted after loading), so it is this process's
own whatever started it.
Run: .venv/bin/python benchmarks/memory.py [--models ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time
from oats import OatsConfig, compress_model  # first: it sets OMP_WAIT_POLICY before torch loads
import torch
from oats.data import calibration_batches
from oats.models.zoo import load_model


def status(key):  # kB -> MB, from this process's own status (VmHWM starts afresh at exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024


name = sys.argv[1]
loaded = load_model(name)
size = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) / 2**20
batches = calibration_batches(loaded)
from oats.models.adapters import get_adapter
from oats.compress.preflight import calibration_tokens, estimate_compression_memory
from oats.resources import COMPRESSION_MARGIN
adapter = get_adapter(loaded.model)
estimate = COMPRESSION_MARGIN * sum(estimate_compression_memory(adapter, loaded.model, adapter.blocks(loaded.model),
                                           calibration_tokens(batches, loaded.model), "oats").values())
# The cached weights are memory-mapped and read lazily: bring them in now, so that "after load"
# holds the loaded model and the peak's difference is what compressing adds (without this,
# the first pass over DINOv2's weights counted its 84 MB of weights as compression memory).
for p in loaded.model.parameters():
    torch.isfinite(p).all()
after_load = status("VmRSS")
try:  # restart the peak here, so that a preset conversion's peak while loading does not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
t = time.perf_counter()
# an optional second argument: fewer iterations (the peak is the same; the tests use it to be quick)
extra = {"iterations": int(sys.argv[2])} if len(sys.argv) > 2 else {}
run = compress_model(loaded.model, batches, OatsConfig(rank_ratio=loaded.default_rank_ratio, **extra), model_name=name)
print(json.dumps({"model": name, "peak_mb": status("VmHWM"), "after_load_mb": after_load, "weights_mb": size,
                  "seconds": time.perf_counter() - t, "tokens": run.calibration["tokens"],
                  "estimate_mb": estimate / 2**20}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm-l6,dinov2-small,smollm2-135m")
    args = ap.parse_args()
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine
    print(f"{'model':14s} {'peak RSS':>10s} {'after load':>11s} {'fp32 weights':>13s} {'estimate':>10s} "
          f"{'added':>9s} {'compress s':>11s}")
    for name in args.models.split(","):
        p = subprocess.run([sys.executable, "-c", CHILD, name], capture_output=True, text=True)
        if p.returncode != 0:
            print(f"{name:14s} failed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"{name:14s} {r['peak_mb'] / 1024:8.2f} GB {r['after_load_mb'] / 1024:9.2f} GB "
              f"{r['weights_mb'] / 1024:11.2f} GB {r['estimate_mb'] / 1024:7.2f} GB "
              f"{(r['peak_mb'] - r['after_load_mb']) / 1024:6.2f} GB {r['seconds']:11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
