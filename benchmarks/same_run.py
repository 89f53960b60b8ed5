"""The same run on any thread count, and what it costs: block files compared byte for byte
across thread counts and kernel paths, and compression times side by side with another
checkout of the project.

Every compression is a fresh ``python -m oats.cli compress`` process, so its thread count
(``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``) and its kernel path are set before torch loads:

- **threads**: each method at each ``--threads`` count; every run's block files are compared
  with the first count's (the reference).
- **kernel path**: with ``--avx2``, the same at the first thread count with the libraries held
  to AVX2 (``ATEN_CPU_CAPABILITY=avx2`` for PyTorch's own kernels, ``MKL_ENABLE_INSTRUCTIONS=AVX2``
  for MKL, ``NPY_DISABLE_CPU_FEATURES`` for numpy's AVX-512 ones), standing in for a CPU
  without AVX-512: the guarantee does not cover it, and this measures how far it holds.
- **cost**: with ``--before PATH`` (a checkout of another commit, e.g. ``git worktree add
  /tmp/before HEAD~3``), each timed compression also runs with that checkout's ``oats`` on
  ``PYTHONPATH``, alternating before/after ``--rounds`` times; the compression time is the
  run's own (manifest ``timings.total_s``: calibration, statistics and decompositions, not the
  imports or the model load). Prints the after/before ratio per model and method.

Run: .venv/bin/python benchmarks/same_run.py [--models minilm-l6] [--methods oats,wanda,...]
     [--threads 1,2,4] [--avx2] [--flags "--iterations 4 --calib-samples 16 --compression 0.4"]
     [--before /tmp/before --timed-models minilm-l6,dinov2-small,smollm2-135m --timed-methods oats]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from oats.resources import cpu_name, vector_extensions

REPO = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"}


def compress(model: str, method: str, out: Path, threads: int, flags: list[str], env_extra: dict | None = None,
             code: Path | None = None) -> dict:
    """One ``oats compress`` in a fresh process; returns its block hashes and compression time."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env.update(env_extra or {})
    src = code or REPO
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "oats.cli", "compress", model, "--method", method, "--out", str(out),
                           "--quiet", *flags], cwd=src, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{model} {method} ({threads} threads) failed: {proc.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    blocks = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("block_*.safetensors"))}
    return {"blocks": blocks, "time_s": float(manifest["timings"]["total_s"]), "wall_s": wall}


def differing(a: dict, b: dict) -> list[str]:
    """Block files whose hashes differ (or that only one run has)."""
    return sorted(n for n in set(a["blocks"]) | set(b["blocks"]) if a["blocks"].get(n) != b["blocks"].get(n))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="minilm-l6")
    ap.add_argument("--methods", default="oats,wanda,sparsegpt,hassle,magnitude,lowrank")
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--flags", default="--iterations 4 --calib-samples 16 --compression 0.4",
                    help="oats compress flags of the comparisons (default: the settings the issue was found with)")
    ap.add_argument("--avx2", action="store_true", help="also compare with the libraries held to AVX2")
    ap.add_argument("--before", default=None, help="another checkout to time against (its oats on PYTHONPATH)")
    ap.add_argument("--timed-models", default="minilm-l6,dinov2-small,smollm2-135m")
    ap.add_argument("--timed-methods", default="oats")
    ap.add_argument("--timed-flags", default="", help="oats compress flags of the timed runs (default: the defaults)")
    ap.add_argument("--timed-threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", default=None, help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args(argv)
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine

    threads = [int(t) for t in args.threads.split(",") if t]
    flags = shlex.split(args.flags)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="oats-same-run-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{cpu_name()} ({', '.join(vector_extensions()) or 'no listed vector extensions'}), {os.cpu_count()} cores")
    all_same = True
    try:
        for model in [m for m in args.models.split(",") if m]:
            print(f"\n{model}, oats compress {args.flags}: block files compared with the {threads[0]}-thread run")
            print("| method | " + " | ".join(f"{t} thread(s)" for t in threads[1:])
                  + (" | AVX2 path" if args.avx2 else "") + " |")
            print("|---|" + "---|" * (len(threads) - 1 + bool(args.avx2)))
            for method in [m for m in args.methods.split(",") if m]:
                ref = compress(model, method, root / f"{model}-{method}-t{threads[0]}", threads[0], flags)
                cells = []
                for t in threads[1:]:
                    got = compress(model, method, root / f"{model}-{method}-t{t}", t, flags)
                    bad = differing(ref, got)
                    all_same &= not bad
                    cells.append("same" if not bad else f"{len(bad)} of {len(ref['blocks'])} blocks differ")
                if args.avx2:
                    got = compress(model, method, root / f"{model}-{method}-avx2", threads[0], flags, AVX2_ENV)
                    bad = differing(ref, got)
                    cells.append("same" if not bad else f"{len(bad)} of {len(ref['blocks'])} blocks differ")
                print(f"| {method} | " + " | ".join(cells) + " |", flush=True)

        if args.before:
            before = Path(args.before).resolve()
            tflags = shlex.split(args.timed_flags)
            print(f"\ncompression time (the run's own, s), {args.timed_threads} threads, default settings"
                  f"{' + ' + args.timed_flags if args.timed_flags else ''}; before = {before}, "
                  f"{args.rounds} round(s) alternating")
            print("| model | method | before | after | after / before | same blocks |")
            print("|---|---|---|---|---|---|")
            for model in [m for m in args.timed_models.split(",") if m]:
                for method in [m for m in args.timed_methods.split(",") if m]:
                    times = {"before": [], "after": []}
                    runs = {}
                    for r in range(args.rounds):
                        for side, code in (("before", before), ("after", None)):
                            out = root / f"timed-{model}-{method}-{side}-{r}"
                            runs[side] = compress(model, method, out, args.timed_threads, tflags, code=code)
                            times[side].append(runs[side]["time_s"])
                            shutil.rmtree(out, ignore_errors=True)
                    b, a = min(times["before"]), min(times["after"])
                    same = "yes" if not differing(runs["before"], runs["after"]) else "no"
                    print(f"| {model} | {method} | {b:.1f} | {a:.1f} | {a / b:.2f} | {same} |", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print("\nevery thread count gave the same block files" if all_same else "\nSOME THREAD COUNTS DIFFER")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
