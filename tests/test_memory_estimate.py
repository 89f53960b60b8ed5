"""The pre-flight memory estimate against memory measured while compressing.

``oats.compress.preflight.estimate_compression_memory`` (times its margin) is what a request is
refused on, so it must not be below what compressing really adds: each embedded model is
compressed at default settings (10 iterations instead of 80: the peak does not depend on
them) in a fresh process (benchmarks/memory.py's child), and the
peak resident memory minus the memory after loading is compared with the estimate. It must
also stay useful: at most four times what was measured.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_or_fail

from oats.models import zoo

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("memory_benchmark", ROOT / "benchmarks" / "memory.py")
memory_benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory_benchmark)


@pytest.mark.integration
@pytest.mark.parametrize("name", ["minilm-l6", "dinov2-small"])
def test_estimate_covers_the_measured_peak(name, preset_cache):
    ok, why = zoo.preset_available(name)
    if not ok:
        skip_or_fail(f"{name}: {why}")
    p = subprocess.run([sys.executable, "-c", memory_benchmark.CHILD, name, "10"], capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    added = r["peak_mb"] - r["after_load_mb"]
    print(f"\n{name}: compressing added {added:.0f} MB, estimate (margin included) {r['estimate_mb']:.0f} MB")
    assert added > 0
    assert added <= r["estimate_mb"], f"{name}: measured {added:.0f} MB > estimate {r['estimate_mb']:.0f} MB"
    assert r["estimate_mb"] <= 4 * added, f"{name}: estimate {r['estimate_mb']:.0f} MB is over 4x {added:.0f} MB"
