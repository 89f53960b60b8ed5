"""Mid-size models on one machine: time and memory at the scale of Llama-3.2-1B and Llama-3.1-8B.

Synthetic models with the real architectures and random weights (``benchmarks/synthetic.py``:
bf16 safetensors shards as ``save_pretrained`` writes them) are written once under --root and
reused. Every phase runs in a fresh process watched from outside (VmRSS polled every 50 ms
from here, and the child's own VmHWM, the kernel's exact peak, read at its end):

  shapes       decomposition time per matrix shape of the 1B and 8B models (random matrices
               with a few outlier input channels), OATS at default settings (fast solver, cap
               80) and the quick methods (Wanda, magnitude); on the 8B shapes OATS is timed at
               a stated number of iterations and scaled to ``DEFAULT_ITERATIONS_RUN`` (where
               the fast solver stops on real weights), as the output says. Then the shape
               model of ``oats.runs.estimate`` against each measurement.
  compress     the 8B-shaped model compressed from disk (``--from-disk``) with Wanda at
               default settings on a small calibration set (--samples x --seq-len tokens).
  oats-blocks  OATS at default settings (default calibration) on an 8B-shaped model of
               --oats-blocks blocks, from disk.
  oats-1b      OATS at default settings on the 1B model end to end (long: not in the default
               set; progress printed per block).
  open         the compress phase's run (or --open-run) opened as the app opens an 8B run
               (``oats.runs.lazy.open_run``, the lazy handle): RSS with the run open, then the
               first draw of every per-layer view on one layer.
  evaluate     the same run evaluated (streamed): time and peak RSS.

Each phase's estimate (``oats.runs.estimate``, what the CLI and the app show before a
compression starts) is printed beside its measured time. A summary table ends the output:
phase, time, peak RSS, the issue's goal and whether it is met.

Run: .venv/bin/python benchmarks/mid_size.py [--phase shapes,compress,oats-blocks,open,evaluate]
     [--root /tmp/oats-mid] [--samples 16] [--seq-len 128] [--oats-blocks 1]
     [--compress-blocks N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's oats and benchmarks, also for the children (run from REPO)

from benchmarks._common import run_watched  # noqa: E402

PHASES = ("shapes", "compress", "oats-blocks", "oats-1b", "open", "evaluate")
DEFAULT_PHASES = ("shapes", "compress", "oats-blocks", "open", "evaluate")
SHAPES_1B = ((2048, 2048), (512, 2048), (8192, 2048), (2048, 8192))
SHAPES_8B = ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336))
OATS_8B_ITERATIONS = (2, 6)
"""OATS on the 8B shapes: timed at these iteration caps (the early stop switched off); the
difference gives the seconds per iteration, scaled to the iterations of a real run."""
GOAL_RSS_GB = 6.0
GOAL_APP_GB = 4.0
GOAL_PAGE_S = 3.0


# ----------------------------------------------------------------------------- children

def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def _start_child() -> float:
    """Imports done: report the baseline, and reset the peak (VmHWM) from here on."""
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    print(json.dumps({"base_mb": base}), flush=True)
    return base


def _finish_child(base: float, **result) -> None:
    # CPU seconds beside the wall time: on a machine shared with other work the wall time is stretched
    print(json.dumps({"result": True, "peak_mb": _status("VmHWM"), "base_mb": base, "cpu_s": time.process_time(),
                      **result}), flush=True)


def _matrix(d_out: int, d_in: int, seed: int):
    """A random weight (std 0.02) and input second moments with a few outlier channels (1 in
    256 channels 100x the energy, the rest log-normal), as real layer inputs have."""
    import torch
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g) * 0.02
    m2 = torch.exp(torch.randn(d_in, generator=g) * 0.5)
    m2[torch.randperm(d_in, generator=g)[: max(d_in // 256, 1)]] *= 100.0
    return w, m2


def _time_method(method: str, w, m2, config) -> tuple[float, int]:
    """CPU seconds of one decomposition (one thread). On a machine shared with other work the
    wall time is the CPU time stretched by whatever else ran; the CPU time is what the matrix
    costs, and what it takes on an otherwise idle core."""
    from oats.methods import registry
    t = time.process_time()
    dec = registry.get(method).decompose([w], [m2], [None], config, "cpu")[0]
    return time.process_time() - t, int(dec.iterations)


def child_shapes(args) -> None:
    """CPU seconds per matrix, one thread (how the pipeline runs each matrix: ``map_on_cores``)."""
    import torch
    from oats.config import OatsConfig
    from oats.core.decompose import rank_budget
    from oats.runs import estimate as est
    base = _start_child()
    torch.set_num_threads(1)
    rows = []
    for model, shapes in (("1b", SHAPES_1B), ("8b", SHAPES_8B)):
        for k, (d_out, d_in) in enumerate(shapes):
            w, m2 = _matrix(d_out, d_in, k)
            r = rank_budget(d_out, d_in, OatsConfig())
            for method in ("wanda", "magnitude"):
                s, _ = _time_method(method, w, m2, OatsConfig())
                rows.append(dict(model=model, shape=[d_out, d_in], rank=0, method=method, seconds=s, iterations=1,
                                 note="measured", predicted=est.matrix_seconds(method, d_out, d_in, OatsConfig())))
                print(json.dumps({"row": rows[-1]}), flush=True)
            if model == "1b":  # the default run, as it is
                s, it = _time_method("oats", w, m2, OatsConfig())
                note = f"measured, stopped at {it}"
            else:  # a stated number of iterations, scaled to where a real run stops
                lo, hi = OATS_8B_ITERATIONS
                t_lo, _ = _time_method("oats", w, m2, OatsConfig(iterations=lo, tol=1e-12))
                t_hi, it = _time_method("oats", w, m2, OatsConfig(iterations=hi, tol=1e-12))
                per = (t_hi - t_lo) / (hi - lo)
                s = t_lo + per * (est.DEFAULT_ITERATIONS_RUN - lo)
                note = (f"{lo} it {t_lo:.1f}s, {hi} it {t_hi:.1f}s: {per:.2f}s/it, "
                        f"scaled to {est.DEFAULT_ITERATIONS_RUN} it")
                it = est.DEFAULT_ITERATIONS_RUN
            rows.append(dict(model=model, shape=[d_out, d_in], rank=r, method="oats", seconds=s, iterations=it,
                             note=note, predicted=est.matrix_seconds("oats", d_out, d_in, OatsConfig(),
                                                                     iterations=it)))
            print(json.dumps({"row": rows[-1]}), flush=True)
    _finish_child(base, rows=rows)


def _record_preflight() -> dict:
    """Let the compression's memory pre-flight (``oats.compress.pipeline``'s ``check_memory``)
    say what it would decide instead of refusing: this benchmark measures the real peak, watched
    from outside and killed past ``KILL_ABOVE_MB``, so a pre-flight that asks for more than the
    shared machine has free at the moment does not stop the measurement; its figures are
    reported beside the measured peak."""
    from oats.compress import pipeline
    from oats.errors import ResourceError
    seen: dict = {}
    check = pipeline.check_memory

    def record(parts, what="", margin=1.0, **kw):
        seen.update(estimate_gb=margin * sum(parts.values()) / 2**30,
                    parts_gb={k: v / 2**30 for k, v in parts.items()})
        try:
            check(parts, what=what, margin=margin, **kw)
            seen["refused"] = None
        except ResourceError as exc:
            seen["refused"] = str(exc)
            print(json.dumps({"progress": f"pre-flight would refuse: {exc}; measured anyway"}), flush=True)
        return margin * sum(parts.values())

    pipeline.check_memory = record
    return seen


def child_compress(args) -> None:
    """One compression from disk (``CompressRequest(..., from_disk=True)``), progress per block."""
    from oats.config import OatsConfig
    import torch, transformers, safetensors  # noqa: E401,F401  the baseline holds the libraries
    import transformers.models.llama.modeling_llama  # noqa: F401
    from oats.runner.execute import execute
    from oats.runner.request import CompressRequest
    base = _start_child()
    preflight = _record_preflight()
    req = CompressRequest(args.model_folder, OatsConfig(), args.method, calib_samples=args.samples,
                          seq_len=args.seq_len, evaluate=False, from_disk=True)
    t = time.perf_counter()

    def progress(done, total, message):
        print(json.dumps({"progress": f"{done}/{total} blocks, {time.perf_counter() - t:.0f} s"}), flush=True)

    outcome = execute(req, args.out, progress=progress, if_exists="replace")
    _finish_child(base, seconds=time.perf_counter() - t, blocks=len(outcome.run.blocks),
                  timings=outcome.run.timings, preflight=preflight)


def _views(run, qual: str) -> list:
    """(page, first draw) of every per-layer view, as the pages ask ``oats.explain`` for one layer."""
    from oats.explain import budget, heavytail, outliers, spectra
    return [("Spectra", lambda: spectra.layer_spectra(run, qual)),
            ("Heavy tails: layer", lambda: heavytail.layer_esd(run, qual)),
            ("Heavy tails: alpha row", lambda: heavytail.layer_alpha(run, qual)),
            ("Outliers: column shares", lambda: outliers.column_shares(run, qual)),
            ("Outliers: mask density", lambda: outliers.mask_density(run, qual)),
            ("Outliers: inputs", lambda: outliers.second_moments_by_input(run)),
            ("Error budget", lambda: budget.layer_budget(run))]


def child_open(args) -> None:
    """The run opened as the app opens it, then every per-layer view's first draw on one layer
    (the largest matrix of the middle block: the slowest to draw). The lazy handle, as an 8B run
    gets it: a run of an 8B-shaped model with a block or two would fit in memory, and ``open_run``
    would open it there (``OATS_LAZY_RUNS``: set to 0 to measure that path)."""
    os.environ.setdefault("OATS_LAZY_RUNS", "1")
    from oats.runs.lazy import open_run  # the lazy run handle (issue 23)
    base = _start_child()
    t = time.perf_counter()
    run = open_run(args.out, allow_partial=args.partial)
    opened = time.perf_counter() - t
    open_mb = _status("VmRSS")
    middle = run.layers[len(run.layers) // 2].block
    rec = max((r for r in run.layers if r.block == middle), key=lambda r: r.shape[0] * r.shape[1])
    qual = rec.qualname
    print(json.dumps({"progress": f"opened in {opened:.1f} s, RSS {open_mb / 1024:.2f} GB; layer {qual} "
                                  f"{rec.shape[0]}x{rec.shape[1]}"}), flush=True)
    draws, after = {}, {}
    for name, fn in _views(run, qual):
        t = time.perf_counter()
        try:
            fn()
            draws[name] = time.perf_counter() - t
        except Exception as exc:  # a view the handle cannot serve: said, not hidden
            draws[name] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}"
        after[name] = _status("VmRSS")
        shown = f"{draws[name]:.2f} s" if isinstance(draws[name], float) else draws[name]
        print(json.dumps({"progress": f"{name}: {shown}, RSS {after[name] / 1024:.2f} GB"}), flush=True)
    _finish_child(base, seconds=opened, open_mb=open_mb, layer=qual, draws=draws, rss_after=after)


def child_evaluate(args) -> None:
    """The run evaluated through the lazy handle (whole-model work streams blocks): the quick
    evaluation set, dense and compressed (the peak is one block plus activations whatever the
    set's size; the time grows with its tokens and modes). The lazy handle, as in ``child_open``."""
    os.environ.setdefault("OATS_LAZY_RUNS", "1")
    from oats.runs.lazy import open_run
    from oats.evaluation import evaluate
    base = _start_child()
    t = time.perf_counter()
    run = open_run(args.out, allow_partial=args.partial)
    ev = evaluate(run, modes=("dense", "both"), quick=True)
    _finish_child(base, seconds=time.perf_counter() - t, metrics=ev.metrics)


CHILDREN = {"shapes": child_shapes, "compress": child_compress, "open": child_open, "evaluate": child_evaluate}


# ----------------------------------------------------------------------------- the parent

KILL_ABOVE_MB = 10 * 1024
"""A phase is killed from here once its RSS is this far above its baseline after imports (well
past every goal): on a shared 24 GB machine a runaway phase must not wake the kernel's OOM killer,
which picks the largest process, not necessarily the benchmark's."""


def _child(phase: str, args, **extra) -> dict:
    """Run one phase in a fresh process, watched from here; its result, or {"error": why}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", phase, "--root", args.root,
           "--samples", str(args.samples), "--seq-len", str(args.seq_len)]
    for k, v in extra.items():
        flag = f"--{k.replace('_', '-')}"
        cmd += ([flag] if v else []) if isinstance(v, bool) else [flag, str(v)]

    def show(line):
        if line.startswith('{"progress"'):
            print(f"  [{phase}] {json.loads(line)['progress']}", flush=True)
        elif line.startswith('{"row"'):
            r = json.loads(line)["row"]
            print(f"  [{phase}] {_row_text(r)}", flush=True)

    t = time.perf_counter()
    p = run_watched(["nice", "-n", "19"] + cmd, KILL_ABOVE_MB, every_s=0.05, on_line=show)
    wall = time.perf_counter() - t
    results = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith('{"result"')]
    killed = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith('{"killed"')]
    if killed:
        k = killed[-1]
        return {"error": f"killed at {k['rss_mb'] / 1024:.1f} GB RSS ({KILL_ABOVE_MB / 1024:.0f} GB above its baseline "
                         f"after imports, {k['base_mb'] / 1024:.2f} GB)", "wall_s": wall, "polled_mb": p.peak_polled_mb}
    if p.returncode != 0 or not results:
        err = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        return {"error": err[:300], "wall_s": wall, "polled_mb": p.peak_polled_mb}
    return {**results[-1], "wall_s": wall, "polled_mb": p.peak_polled_mb}


def _row_text(r: dict) -> str:
    shape = f"{r['shape'][0]}x{r['shape'][1]}"
    err = r["predicted"] / r["seconds"] - 1 if r["seconds"] > 0 else float("nan")
    return (f"{r['model']:3s} {shape:>11s} r={r['rank']:<4d} {r['method']:9s} {r['seconds']:8.2f}s "
            f"model {r['predicted']:8.2f}s ({err:+.0%})  {r['note']}")


def _estimate_line(folder: Path, method: str, config, samples) -> str:
    from oats.runs import estimate as est
    e = est.estimate(str(folder), method, config, [], task="causal-lm", samples=samples, evaluate=False,
                     from_disk=True)
    return f"estimate shown before it starts: {e.text}" + (f" ({e.parts})" if e.parts else "")


def _compress_name(args) -> str:
    return "8b" if args.compress_blocks is None else f"8b-{args.compress_blocks}blocks"


def _models(args, phases) -> dict[str, Path]:
    from benchmarks import synthetic
    root = Path(args.root)
    want = {}
    if "compress" in phases:
        want[_compress_name(args)] = ("8b", args.compress_blocks)
    if "oats-blocks" in phases:
        want[f"8b-{args.oats_blocks}blocks"] = ("8b", args.oats_blocks)
    if "oats-1b" in phases:
        want["1b"] = ("1b", None)
    out = {}
    for name, (size, blocks) in want.items():
        r = synthetic.write_llama(root / name, size, blocks)
        how = "reused" if r["reused"] else f"written in {r['seconds']:.0f} s"
        print(f"model {name}: {r['params'] / 1e9:.2f} B parameters, {r['bytes'] / 1e9:.1f} GB bf16 at "
              f"{r['folder']} ({how})", flush=True)
        out[name] = root / name
    return out


def _peak_gb(r: dict) -> float:
    """The phase's peak RSS: the child's VmHWM (exact, from after its imports) or what was seen
    from outside over its whole life (imports included), whichever is higher."""
    return max(r.get("peak_mb", 0.0), r.get("polled_mb", 0.0)) / 1024


def _report(phase: str, r: dict, summary: list) -> None:
    if "error" in r:
        print(f"{phase}: could not run: {r['error']}", flush=True)
        summary.append((phase, None, None, "", "not run"))
        return
    print(f"{phase}: {r.get('seconds', r['wall_s']):.1f} s ({r.get('cpu_s', 0):.0f} CPU s in the process), peak RSS {_peak_gb(r):.2f} GB (VmHWM after imports "
          f"{r['peak_mb'] / 1024:.2f} GB, polled {r['polled_mb'] / 1024:.2f} GB; baseline after imports "
          f"{r['base_mb'] / 1024:.2f} GB)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", default=",".join(DEFAULT_PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    ap.add_argument("--root", default="/tmp/oats-mid", help="where the synthetic models and runs are kept")
    ap.add_argument("--samples", type=int, default=16, help="calibration sequences of the Wanda phase")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per calibration sequence of the Wanda phase")
    ap.add_argument("--oats-blocks", type=int, default=1, help="blocks of the 8B-shaped model OATS compresses")
    ap.add_argument("--compress-blocks", type=int, default=None,
                    help="blocks of the 8B-shaped model Wanda compresses (default: all 32); open and evaluate "
                         "use that run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--model-folder", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="wanda", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--default-calibration", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--open-run", default=None,
                    help="the run folder open and evaluate use (default: the compress phase's Wanda run), e.g. "
                         "ROOT/runs/oats-blocks: a run made with the stored per-layer summaries")
    ap.add_argument("--partial", action="store_true",
                    help="open and evaluate the Wanda run even if it is unfinished (its finished blocks "
                         "compressed, the others dense: the same streaming, the same per-layer shapes)")
    args = ap.parse_args()
    if args.child:
        if args.default_calibration:
            args.samples = args.seq_len = None
        CHILDREN[args.child](args)
        return 0
    phases = [p.strip() for p in args.phase.split(",") if p.strip()]
    bad = [p for p in phases if p not in PHASES]
    if bad:
        print(f"unknown phase {bad[0]!r}: use {', '.join(PHASES)}")
        return 2
    import torch
    torch.set_num_threads(1)
    from oats.resources import machine_line
    print(machine_line(), flush=True)  # every figure below was measured on this machine
    return _run(args, phases)


def _run(args, phases) -> int:
    from oats.config import OatsConfig
    models = _models(args, phases)
    root = Path(args.root)
    summary = []
    run_8b = root / "runs" / f"{_compress_name(args)}-wanda"
    viewed = Path(args.open_run) if args.open_run else run_8b
    for phase in phases:
        print(f"\n== {phase} ==", flush=True)
        if phase == "shapes":
            r = _child("shapes", args)
            if "error" not in r:
                print(f"{'':3s} {'shape':>11s} {'rank':6s} {'method':9s} {'measured':>9s} {'model':>8s}")
                for row in r["rows"]:
                    print(_row_text(row))
            _report(phase, r, summary)
            summary.append((phase, r.get("wall_s"), _peak_gb(r) or None, "", ""))
            continue
        if phase in ("compress", "oats-blocks", "oats-1b"):
            folder, method, default_calib = {
                "compress": (models.get(_compress_name(args)), "wanda", 0),
                "oats-blocks": (models.get(f"8b-{args.oats_blocks}blocks"), "oats", 1),
                "oats-1b": (models.get("1b"), "oats", 1)}[phase]
            out = run_8b if phase == "compress" else root / "runs" / phase
            print(_estimate_line(folder, method, OatsConfig(), None if default_calib else args.samples), flush=True)
            r = _child("compress", args, model_folder=folder, method=method, out=out,
                       default_calibration=default_calib)
            _report(phase, r, summary)
            pre = r.get("preflight") or {}
            if pre.get("estimate_gb") is not None:
                print(f"  the memory pre-flight's estimate: {pre['estimate_gb']:.1f} GB with its margin "
                      f"({', '.join(f'{k} {v:.2f}' for k, v in pre['parts_gb'].items())} GB)"
                      + (f"; it would have refused: {pre['refused']}" if pre.get("refused") else ""), flush=True)
            if "error" not in r:
                summary.append((f"{phase} ({folder.name}, {method})", r["seconds"], _peak_gb(r),
                                f"peak RSS <= {GOAL_RSS_GB:g} GB", _peak_gb(r) <= GOAL_RSS_GB))
            continue
        if not (viewed / "manifest.json").is_file():
            print(f"{phase}: could not run: no run at {viewed} (run the compress phase first)")
            summary.append((phase, None, None, "", "not run"))
            continue
        done = json.loads((viewed / "manifest.json").read_text())
        if not done.get("complete"):
            print(f"the run is unfinished ({len(done.get('blocks_done', []))} blocks done): "
                  + ("opened as it is (--partial)" if args.partial else "use --partial to open it as it is"))
        r = _child(phase, args, out=viewed, partial=bool(args.partial))
        _report(phase, r, summary)
        if "error" in r:
            continue
        if phase == "open":
            summary.append(("open (app process, run open)", r["seconds"], r["open_mb"] / 1024,
                            f"RSS < {GOAL_APP_GB:g} GB", r["open_mb"] / 1024 < GOAL_APP_GB))
            for view, s in r["draws"].items():
                ok = isinstance(s, float) and s <= GOAL_PAGE_S
                summary.append((f"  first draw: {view}", s if isinstance(s, float) else None, None,
                                f"<= {GOAL_PAGE_S:g} s", ok if isinstance(s, float) else f"failed: {s}"))
        else:
            summary.append(("evaluate (streamed)", r["seconds"], _peak_gb(r), f"peak RSS <= {GOAL_RSS_GB:g} GB",
                            _peak_gb(r) <= GOAL_RSS_GB))
    print(f"\n{'phase':44s} {'time':>9s} {'peak RSS':>9s}  {'goal':20s} met?")
    for name, s, gb, goal, ok in summary:
        print(f"{name:44s} {f'{s:.1f} s' if s is not None else '-':>9s} {f'{gb:.2f} GB' if gb else '-':>9s}  "
              f"{goal:20s} {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
