#!/usr/bin/env bash
# The GPU check: on a machine with a CUDA GPU, the decomposition benchmark (one layer of each
# distinct shape of the embedded models) and one end-to-end compression of each embedded model,
# each on the CPU and with --device cuda side by side: the speedups, and whether the GPU's
# results match the CPU's (benchmarks/gpu_check.py says how closely).
# Run from anywhere: bash benchmarks/gpu_check.sh [--models minilm-l6,dinov2-small,smollm2-135m]
# Python: $PY, else the checkout's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "gpu_check: $PY cannot import torch: run 'make setup' first, or give the Python with PY=..." >&2
    exit 2
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False with $PY): run it on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
fi
exec "$PY" benchmarks/gpu_check.py "$@"
