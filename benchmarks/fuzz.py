"""The long fuzzing campaign against the loaders of shared files (issue 21, "Hostile input").

Builds the valid tiny seeds once (a run folder; sparse CSR8, sparse CSR format-1 and folded
exports of a one-block Llama), then generates ``--cases`` tampered copies from ``--seed``
(``tests/fuzz_cases.py``: dtype, shape, index values, NaN/inf, truncation, safetensors
headers, manifests, FIFOs, symlinks, ...) and runs every load each case allows (exports:
``load_compressed`` with kernel csr8, csr and auto; run folders: ``RunInfo.read``,
``list_runs`` and ``load_run``) in ``--workers`` long-lived worker processes, restarted when
one crashes or hangs (``--timeout`` s per load).

Prints progress, then: cases, loads, time, the count of each outcome (loaded and refused are
good; raw, silent, multiline, crash and hang are failures), per mutation family, and the first
failures with a reproduction each. Exits 1 when any load failed.

Run: .venv/bin/python benchmarks/fuzz.py [--cases 10000] [--seed 0] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import fuzz_cases as fz  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one load may take before it is a hang")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--show", type=int, default=10, help="failures printed with their reproduction")
    ap.add_argument("--json", default=None, help="write every failure (case, op, outcome, why) to this file")
    args = ap.parse_args(argv)
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine
    # a fault of this harness that reads without end must fail here, not push the shared machine into
    # the OOM killer (the workers cap themselves lower: fuzz_cases.MEMORY_CAP)
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (16 * 1024**3, 16 * 1024**3))

    work = Path(args.work or tempfile.mkdtemp(prefix="oats-fuzz-"))
    seeds = work / "seeds"
    if not (seeds / "inventory.json").exists():
        fz.build_seeds(seeds)
    inv = json.loads((seeds / "inventory.json").read_text())
    cases = list(fz.random_cases(args.seed, args.cases, inv))

    todo: queue.Queue = queue.Queue()
    for n, case in enumerate(cases):
        todo.put(n)
    results: dict[int, list[dict]] = {}
    lock = threading.Lock()
    restarts = Counter()
    harness_errors: list[tuple[int, str]] = []
    took: dict[int, float] = {}
    start = time.monotonic()

    def progress():
        done = len(results)
        if done % 100 == 0 or done == len(cases):
            counts = Counter(r["outcome"] for rs in results.values() for r in rs)
            print(f"[{time.monotonic() - start:7.0f} s] {done}/{len(cases)} cases  "
                  + "  ".join(f"{k} {counts[k]}" for k in fz.OUTCOMES if counts[k]), flush=True)

    def loop(i: int):
        w = fz.Worker(seeds, timeout=args.timeout)
        try:
            while True:
                try:
                    n = todo.get_nowait()
                except queue.Empty:
                    return
                t0 = time.monotonic()
                try:
                    res = fz.run_case(w, seeds, cases[n], work / f"w{i}", n)
                except Exception as e:  # a fault of this harness, not of oats: say so, go on
                    with lock:
                        harness_errors.append((n, f"{type(e).__name__}: {e}"))
                    continue
                with lock:
                    results[n] = res
                    took[n] = time.monotonic() - t0
                    progress()
        finally:
            restarts[i] = w.restarts
            w.close()

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start

    ops = Counter(r["outcome"] for rs in results.values() for r in rs)
    fams: dict[str, Counter] = defaultdict(Counter)
    failures = []
    for n in sorted(results):
        fam = fz.family(cases[n])
        bad = [r for r in results[n] if r["outcome"] in fz.FAILURES]
        fams[fam]["cases"] += 1
        fams[fam]["failed"] += bool(bad)
        for r in results[n]:
            fams[fam][r["outcome"]] += 1
        failures += [(n, r) for r in bad]

    print()
    print(f"cases {len(results)}   loads {sum(ops.values())}   time {elapsed:.0f} s   workers {args.workers}   "
          f"seed {args.seed}   worker restarts {sum(restarts.values())}")
    print("outcome (per load):  " + "  ".join(f"{k} {ops[k]}" for k in fz.OUTCOMES))
    print()
    cols = ("cases", "failed") + fz.OUTCOMES
    print(f"{'family':<28}" + "".join(f"{c:>9}" for c in cols))
    single = sorted((f for f in fams if "+" not in f))
    combos = Counter()
    for f in fams:
        if "+" in f:
            combos.update(fams[f])
    for f in single:
        print(f"{f:<28}" + "".join(f"{fams[f][c]:>9}" for c in cols))
    if combos:
        print(f"{'(combined mutations)':<28}" + "".join(f"{combos[c]:>9}" for c in cols))
    print()
    if failures:
        print(f"{len(failures)} failed loads in {len({n for n, _ in failures})} cases; the first {args.show}:")
        for n, r in failures[: args.show]:
            print(f"- case {n} [{fz.family(cases[n])}] {r['op']}: {r['outcome']}: {r['why']}")
            print("    " + fz.reproduction(cases[n], r["op"]).replace("\n", "\n    "))
    else:
        print("no failures")
    slow = sorted(took, key=took.get, reverse=True)[:3]
    print("slowest cases: " + ", ".join(f"{n} [{fz.family(cases[n])}] {took[n]:.1f} s" for n in slow))
    if harness_errors:
        print(f"{len(harness_errors)} cases not run (harness errors), e.g. case {harness_errors[0][0]}: "
              f"{harness_errors[0][1]}")
    if args.json:
        Path(args.json).write_text(json.dumps([{"n": n, "case": cases[n], **r} for n, r in failures], indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures or harness_errors else 0


if __name__ == "__main__":
    sys.exit(main())
