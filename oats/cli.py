"""Command line: ``oats models``, ``oats compress``, ``oats runs``, ``oats evaluate``, ``oats export``,
``oats sweep``.

Every expected failure prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from oats.errors import ConfigError, OatsError, ResourceError
from oats.methods import registry
from oats.runs.folders import runs_root


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse prints usage + message otherwise)
        self.exit(2, f"oats: error: {message} (see 'oats {self.prog.split()[-1]} --help')\n"
                  if " " in self.prog else f"oats: error: {message} (see 'oats --help')\n")


class _Status:
    """One transient line on stderr ("loading ..."), so that an error stays the only line.

    Drawn only on a terminal, and erased before whatever comes next (a progress bar, a
    message, an error); in a pipe or a log nothing is written. Everything that can be
    checked without loading the model is checked before it is shown.
    """

    def __init__(self):
        self.shown = False

    def show(self, text: str) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K" + text)
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


_STATUS = _Status()


def _fail(msg: str) -> int:
    _STATUS.clear()
    print(f"oats: error: {msg}", file=sys.stderr)
    return 2


def _print_table(rows: list[dict], file=None) -> None:
    file = file or sys.stdout
    if not rows:
        return
    cols = list(rows[0])
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)), file=file)
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)), file=file)


def cmd_models(args) -> int:
    from oats.models.zoo import available_models
    rows = [{"name": m["name"], "task": m["task"], "available": "yes" if m["available"] else "no",
             "description": m["description"] if m["available"] else m.get("install", "")}
            for m in available_models()]
    _print_table(rows)
    print("\nAlso: a Hugging Face hub id or a local model folder (when reachable), or timm:NAME.")
    return 0


def _new_request(args, options: dict, from_disk: bool):
    """The request of a new ``oats compress`` run from its flags, checked (one line each)."""
    from oats.compress.allocation import parse_allocation
    from oats.config import DEFAULT_RANK_RATIO, OatsConfig
    from oats.models import zoo
    from oats.runner.request import CompressRequest

    rank_ratio = args.rank_ratio
    if rank_ratio is None:
        preset = zoo.PRESETS.get(args.model)
        rank_ratio = preset.default_rank_ratio if preset else DEFAULT_RANK_RATIO
    config = OatsConfig(compression=args.compression, rank_ratio=rank_ratio, iterations=args.iterations,
                        sparsity=args.sparsity, solver=args.solver, shrink=args.shrink)
    _check_calibration_args(args)
    request = CompressRequest(args.model, config, args.method, calib_source=args.calib_source,
                              calib_domain=args.calib_domain, calib_samples=args.calib_samples,
                              seq_len=args.seq_len, seed=args.seed, block_inputs=args.block_inputs or "compressed",
                              **options)
    request.check()
    owl = parse_allocation(args.allocation, args.owl_lambda, args.owl_m)
    if owl is not None:
        request = replace(request, allocation=owl)
        request.check()
    # a misspelt or absurd name is its own error, not a folder-name one (the folder is named after it)
    zoo.check_model_name(request.model, from_disk=from_disk)
    return request


def _compress_target(args, out: Path | None, options: dict, from_disk: bool):
    """(request, run folder, finished blocks to resume after) for ``oats compress``; an
    ``OatsError`` (one line) before anything loads when the flags or the folder do not fit.

    Without ``--out`` the folder is named by the request (``CompressRequest.folder_name``),
    as the app and ``oats sweep`` name theirs. A folder that holds anything
    (``oats.runs.state.inspect``: not empty) needs ``--resume`` or ``--overwrite``.
    """
    from oats.runner.request import request_from_manifest
    from oats.runs.folders import check_resumable, check_run_folder, check_run_model, run_dir
    from oats.runs.info import RunInfo
    from oats.runs.state import State, inspect

    if out is not None:
        check_run_folder(out)  # a file, a name too long, no write access: one line before any loading
    if args.resume:
        if out is None:
            raise ConfigError("--resume needs --out RUN_DIR, the unfinished run to continue")
        manifest = check_resumable(out)
        check_run_model(out, RunInfo.from_manifest(manifest, out), args.model)
        request = request_from_manifest(manifest, **options)
        if args.block_inputs not in (None, request.block_inputs):
            raise ConfigError(f"run '{out}' was calibrated on {request.block_inputs} block inputs: resume it without "
                              f"--block-inputs {args.block_inputs}")
        return request, out, len(manifest.get("blocks", []))
    request = _new_request(args, options, from_disk)
    if out is None:
        out = run_dir(runs_root(), request.folder_name())
        check_run_folder(out, flag="OATS_RUNS_DIR")
    if inspect(out, request).state is not State.EMPTY and not args.overwrite:
        raise ConfigError(f"run folder '{out}' already holds a run: use --resume to continue it, "
                          f"--overwrite to replace it, or another --out")
    return request, out, 0


def _block_bar(args, out, resumed: int, too_big, request=None):
    """(bars, progress callback) of ``oats compress``: the bar appears with the first block,
    after the model passed its checks (the first progress call comes once compress_model's
    checks passed), with the lines that say a resume or the switch to the disk mode first."""
    from tqdm import tqdm
    bars: list = []

    def progress(done, total, msg):
        if not bars:
            _STATUS.clear()
            if resumed:
                print(f"resuming '{out}' after {resumed} finished blocks", file=sys.stderr)
            if too_big is not None:
                why = str(too_big).rsplit(": ", 1)[0]  # "loading ... needs about N GB ... but M GB is available"
                print(f"oats: {why}, so it is compressed from disk, block by block (as with --from-disk)",
                      file=sys.stderr)
            if request is not None and not resumed:
                _print_time_estimate(request)
            bars.append(tqdm(total=total, unit="block", desc="compressing", file=sys.stderr))
        bar = bars[0]
        bar.total = total
        bar.n = done
        bar.set_postfix_str(msg)
        bar.refresh()

    return bars, progress


def cmd_compress(args) -> int:
    from oats.compress.pipeline import resolve_device
    from oats.models import zoo
    from oats.runner.execute import execute

    out = Path(args.out) if args.out else None
    too_big = None if args.from_disk else _too_big_for_memory(args.model)  # the automatic switch
    from_disk = args.from_disk or too_big is not None
    options = dict(device=args.device, generic=args.generic, trust_remote_code=args.trust_remote_code, evaluate=False,
                   from_disk=from_disk)
    request, out, resumed = _compress_target(args, out, options, from_disk)
    request.check()
    engine = _engine(args)  # --engine ray: the blocks as Ray tasks (oats.runner.blocks_ray)
    resolve_device(args.device)  # a bad device fails before the model loads
    if args.resume:  # a resumed run's model name comes from its manifest: checked here, before any output
        zoo.check_model_name(request.model, from_disk=from_disk)
    bars, progress = _block_bar(args, out, resumed, too_big, request)

    def update(stage=None, message=None, **_):
        if stage == "loading":
            _STATUS.show(f"loading {args.model} ...")

    try:
        if engine is not None:
            from oats.runner.blocks_ray import compress_on_ray
            outcome = compress_on_ray(request, out, engine, update=update, progress=progress,
                                      if_exists="replace" if args.overwrite else "resume")
        else:
            outcome = execute(request, out, update=update, progress=progress,
                              if_exists="replace" if args.overwrite else "resume")
    except ResourceError:
        if too_big is not None and not bars:  # not even one block at a time fits: the first reason stands
            raise too_big from None
        raise
    except KeyboardInterrupt:
        _STATUS.clear()
        for bar in bars:
            bar.close()
        print(f"\ninterrupted: finished blocks are saved in '{out}'; continue with "
              f"'oats compress {args.model} --out {out} --resume'", file=sys.stderr)
        return 130
    finally:
        for bar in bars:
            bar.close()
    _print_compressed(outcome.run, out, outcome.load_s, args.quiet)
    return 0


def _print_time_estimate(request) -> None:
    """The time the compression should take here, said as its first block starts (as the app's
    Compress page says it before the button): learned from this machine's past runs, or the
    default rates and the shape model (a local folder's matrix shapes are read from its headers)."""
    from oats.runs import estimate as est
    e = est.estimate(request.model, request.method, request.config, est.past_runs(runs_root()),
                     samples=request.calib_samples, evaluate=request.evaluate, from_disk=request.from_disk)
    print(f"oats: time on this machine: {e.text}" + (f": {e.parts}" if e.parts else ""), file=sys.stderr)


def _print_compressed(run, out: Path, t_load: float, quiet: bool) -> None:
    """The summary ``oats compress`` prints once the run is saved."""
    from oats.runs.info import RunInfo
    rows = run.table()
    if not quiet:
        _print_table(rows)
    kept = run.params_kept / max(run.params_dense, 1)
    errs = sorted(r.scaled_error for r in run.layers)
    stats_s = run.timings["capture_s"] + run.timings["stats_s"]
    rerun_s = max(run.timings["total_s"] - stats_s - run.timings["decompose_s"], 0.0)
    print(f"\n{len(rows)} matrices in {len(run.blocks)} blocks; kept {kept:.1%} of block-linear parameters "
          f"(compression {1 - kept:.1%}); median scaled error {errs[len(errs) // 2]:.4f}; "
          f"calibration statistics {stats_s:.1f}s, decomposition {run.timings['decompose_s']:.1f}s, "
          f"re-running compressed blocks {rerun_s:.1f}s, total {run.timings['total_s']:.1f}s "
          f"(+{t_load:.1f}s loading)")
    if run.block_rates is not None:
        print("block rates (OWL): " + ", ".join(f"{r:.3f}" for r in run.block_rates))
    print(f"calibrated on: {RunInfo.read(out).calibrated_on()}")
    print(f"saved to {out}")


def _check_calibration_args(args) -> None:
    """The built-in domain and the user's own data exclude each other (one line)."""
    if getattr(args, "calib_source", None) and args.calib_domain not in (None, "mix"):
        raise ConfigError("give either --calib-domain (the built-in data) or --calib-source (your own), not both")


def _too_big_for_memory(name: str):
    """``oats.models.zoo.too_big_for_memory``: the CLI then compresses from disk, and says why once
    the first block is under way."""
    from oats.models import zoo
    return zoo.too_big_for_memory(name)


def _dump_json(obj) -> str:
    import json

    from oats.runs.info import finite_json  # NaN/inf as null: what every strict JSON reader accepts
    return json.dumps(finite_json(obj), indent=1)


def _eval_source(args):
    """(text, image_folder) from the evaluation flags."""
    from oats.data import read_text_file
    from oats.evaluation import wikitext2_text
    if args.text and args.wikitext2:
        raise ConfigError("give either --text FILE or --wikitext2, not both")
    text = None
    if args.text:
        read_text_file(args.text)  # one-line error now, before loading a model
        text = Path(args.text)
    elif args.wikitext2:
        text = wikitext2_text()
    return text, args.image_folder


def cmd_evaluate(args) -> int:
    from oats.models import zoo
    from oats.evaluation import evaluate, run_modes
    from oats.runs.folders import RunInfo, check_run_model, load_run
    from oats.runs.lazy import open_lazy, wants_lazy

    folder = Path(args.run_dir)
    info = RunInfo.read(folder)
    if not info.complete:
        return _fail(f"run '{folder}' is unfinished: finish it with 'oats compress {info.model_name} --out {folder} "
                     f"--resume' first")
    name = args.model or info.model_name
    check_run_model(folder, info, name)
    modes = (tuple(x.strip() for x in args.modes.split(",") if x.strip()) if args.modes
             else run_modes(info.method, info.config))
    registry.check_modes(modes)
    text, image_folder = _eval_source(args)
    zoo.check_model_name(name)
    if args.stream or (name == info.model_name and wants_lazy(info)):
        # the model stays on disk: each replaced linear is read just before it runs (peak about one matrix)
        _STATUS.show(f"opening the run, {name} streamed from disk ...")
        run = open_lazy(folder, loaded=zoo.load_model(name, from_disk=True, viewing=True,
                                                      trust_remote_code=args.trust_remote_code))
        loaded = run.loaded
    else:
        _STATUS.show(f"loading {name} and the run ...")
        loaded = zoo.load_model(name, trust_remote_code=args.trust_remote_code)
        run = load_run(folder, model=loaded.model)
        run.loaded = loaded
    ev = evaluate(run, loaded, modes=modes, quick=args.quick, text=text, image_folder=image_folder)
    _STATUS.clear()
    cfg = info.config
    from oats.explain import quality
    from oats.evaluation import per_domain
    domains = quality.domains_of(ev.metrics.values(), ev.primary)
    measured_on = quality.describe(ev.settings, domains, ev.task)
    if args.json:
        print(_dump_json({"run": str(folder), "model": info.model_name, "method": info.method,
                          "compression": cfg.compression, "rank_ratio": cfg.rank_ratio, "sparsity": cfg.sparsity,
                          "task": ev.task, "primary_metric": ev.primary, "higher_is_better": ev.higher_is_better,
                          "measured_on": measured_on, "domains": domains,
                          "per_domain": {mode: per_domain(m, ev.primary) for mode, m in ev.metrics.items()},
                          "metrics": ev.metrics, "settings": ev.settings, "time_s": round(ev.time_s, 2)}))
        return 0
    record = registry.find(info.method)  # κ only for a method that reads it, as the run used it
    kappa = f" · κ {info.rank_ratio:g}" if record is None or record.uses_rank_ratio else ""
    print(f"{folder}: {info.model_name} · {info.method} · ρ {cfg.compression:g}{kappa} · {cfg.sparsity}")
    print(quality.evaluation_markdown(ev.metrics, ev.primary, ev.higher_is_better, ev.settings, ev.task))
    print(f"evaluated in {ev.time_s:.1f}s" + (" (quick set)" if args.quick else "") + "; --json for every metric")
    return 0


def cmd_sweep(args) -> int:
    from tqdm import tqdm

    from oats.runner.sweep import SweepSettings, parse_list, sweep

    # parse every list first: a bad value is one line before anything loads
    methods = parse_list(args.methods, "--methods", methods=True)
    rates = parse_list(args.compression, "--compression", unit_open=True)
    kappas = parse_list(args.rank_ratio, "--rank-ratio") if args.rank_ratio else None
    text, image_folder = _eval_source(args)
    from oats.runner.request import check_calib_domain, data_kind
    check_calib_domain(args.calib_domain, data_kind(args.model))  # the wrong kind: one line before anything loads
    engine = _engine(args)  # a bad engine setting, or Ray missing, is one line before anything loads
    from oats.models import zoo
    zoo.check_model_name(args.model)
    bars, progress, on_task = _sweep_bars()
    t0 = time.perf_counter()
    try:
        if engine is not None:
            engine.open()
        settings = SweepSettings(methods=methods, compression=rates, rank_ratios=kappas, sparsity=args.sparsity,
                                 iterations=args.iterations, solver=args.solver, shrink=args.shrink, root=args.root,
                                 out=args.out, quick=args.quick, text=text, image_folder=image_folder,
                                 calib_samples=args.calib_samples, seq_len=args.seq_len, seed=args.seed,
                                 calib_domain=args.calib_domain, allocation=args.allocation,
                                 owl_lambda=args.owl_lambda, owl_m=args.owl_m)
        res = sweep(args.model, settings=settings, progress=progress,
                    log=lambda line: tqdm.write(line, file=sys.stderr), engine=engine, on_task=on_task)
    finally:
        for bar in bars.values():
            bar.close()
        if engine is not None:
            engine.close()
    _print_sweep(res, time.perf_counter() - t0)
    return 0


def _sweep_bars():
    """(bars, progress, on_task) of ``oats sweep``: a bar per run as it compresses, and with
    ``--engine ray`` one bar that counts the tasks."""
    from tqdm import tqdm
    bars: dict[str, tqdm] = {}

    def progress(name, done, total, msg):
        bar = bars.get(name)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[name] = tqdm(total=total, unit="block", desc=name, file=sys.stderr, leave=True)
        bar.total = total
        bar.n = done
        bar.set_postfix_str(msg[:60])
        bar.refresh()

    def on_task(report, done, total):  # with --engine ray: one bar that counts tasks
        bar = bars.get("tasks")
        if bar is None:
            bar = bars["tasks"] = tqdm(total=total, unit="task", desc="sweep tasks", file=sys.stderr)
        bar.n = done
        bar.set_postfix_str(f"...{report.name[-40:]}: {report.status}")
        bar.refresh()
        if report.status == "failed":
            tqdm.write(f"{report.name}: failed: {report.error}", file=sys.stderr)

    return bars, progress, on_task


def _print_sweep(res, wall: float) -> None:
    """What ``oats sweep`` prints once the table is written: the means by rate, the primary
    metric per domain with the ranks there, the counts and the timings."""
    from oats.explain import quality
    from oats.evaluation import split_key
    from oats.runner.sweep import FIRST_COLUMNS, LAST_COLUMNS, domain_table, load_meta, pivot_table
    settings = load_meta(res.folder).get("evaluation")
    metrics = [k for k in res.rows[0] if k not in FIRST_COLUMNS + LAST_COLUMNS]
    means = quality.ordered_metrics([k for k in metrics if split_key(k)[1] is None])
    text = quality.describe(settings, quality.domains_of(res.rows))
    for metric in means:  # the means, by rate; then the primary metric per domain with the ranks there
        mean = "mean over the domains, " if quality.domains_of(res.rows, metric) else ""
        print(f"\n{metric}: {mean}on {text}\n" + pivot_table(res.rows, metric))
    per_domain = domain_table(res.rows, settings=settings)
    if per_domain:
        print("\n" + per_domain)
    print(f"\n{len(res.computed)} runs compressed, {len(res.reused)} reused; compression {res.timings['compress_s']:.1f}s, "
          f"evaluation {res.timings['evaluate_s']:.1f}s, wall {wall:.1f}s")
    print(f"saved to {res.folder}")


def _engine(args):
    """None for ``--engine local``; an unopened, checked RayEngine for ``--engine ray``."""
    if args.engine == "local":
        if args.address or args.cpus_per_task is not None or args.gpus_per_task is not None:
            raise ConfigError("--address, --cpus-per-task and --gpus-per-task need --engine ray")
        return None
    from oats.runner.cluster import RayEngine
    engine = RayEngine(address=args.address, cpus_per_task=1.0 if args.cpus_per_task is None else args.cpus_per_task,
                       gpus_per_task=0.0 if args.gpus_per_task is None else args.gpus_per_task)
    engine.check()
    return engine


def cmd_runs(args) -> int:
    from oats.runs.folders import list_runs
    root = Path(args.root) if args.root else runs_root()
    runs = list_runs(root)
    if not runs:
        print(f"no runs in '{root}': make one with 'oats compress MODEL'")
        return 0
    _print_table([{"name": r["name"], "status": r["status"], "model": r.get("model_name", ""),
                   "method": r.get("method", ""), "compression": r.get("compression", ""),
                   "rank_ratio": r.get("rank_ratio", ""), "problem": r.get("problem", "")} for r in runs])
    return 0


def cmd_export(args) -> int:
    from oats.deploy.export import check_dtype, check_layout, check_out_folder, export_folder_bytes, export_run_folder
    from oats.runs.folders import RunInfo

    check_layout(args.format)
    check_dtype(args.dtype)
    check_out_folder(args.out, args.force, protect=args.run_dir)
    info = RunInfo.read(args.run_dir)
    _STATUS.show(f"loading {info.model_name} and the run ...")
    out = export_run_folder(args.run_dir, args.out, layout=args.format, force=args.force, dtype=args.dtype)
    _STATUS.clear()
    how = ("import oats; oats.load_compressed('{0}')" if args.format == "sparse" else
           "no oats needed: see the 'load' line of {0}/oats_export.json").format(out)
    print(f"exported {args.run_dir} as {args.format} to {out} ({export_folder_bytes(out) / 1e6:.1f} MB of weights in "
          f"{args.dtype}); load it with: {how}")
    return 0


def cmd_report(args) -> int:
    from oats.report import write_report
    path = write_report(args.run_dir, args.out)
    print(f"report of '{args.run_dir}' written to {path} (one HTML file: open it in a browser, offline)")
    return 0


def _shrink_arg(parser) -> None:
    """--shrink: the Gram shrinkage of the methods that read it (``OatsConfig.shrink``)."""
    from oats.config import OatsConfig
    readers = " and ".join(m.name for m in registry.all_methods() if m.uses_shrink) or "no method"
    defaults = ", ".join(f"{m.name} {m.default_shrink:g}" for m in registry.all_methods() if m.uses_shrink)
    parser.add_argument("--shrink", default=OatsConfig().shrink,
                        help=f"Gram shrinkage lambda in [0, 1], read by {readers}: they solve with (1 - lambda) H + "
                             f"lambda diag(H), 0 the full Gram, 1 its diagonal (default: the method's own, {defaults})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="oats", description="OATS: sparse + low-rank compression of transformer weights.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True
    sub.add_parser("models", help="list presets and whether each is available now").set_defaults(fn=cmd_models)

    _compress_parser(sub)
    r = sub.add_parser("runs", help="list run folders and their status")
    r.add_argument("--root", default=None, help="runs folder (default: $OATS_RUNS_DIR or ./runs)")
    r.set_defaults(fn=cmd_runs)

    e = sub.add_parser("evaluate", help="evaluate a run folder (dense and each mode): a table of the primary "
                       "metric's mean and its value per domain, or JSON with --json")
    e.add_argument("run_dir", help="a complete run folder")
    e.add_argument("--modes", default=None, help="comma-separated among dense,both,sparse,lowrank "
                   "(default: the variants the run has: all four for a sparse + low-rank run, dense,both otherwise)")
    e.add_argument("--model", default=None, help="the base model (default: the run's own; must be the same)")
    e.add_argument("--trust-remote-code", action="store_true", help="run a hub model's own code (off by default)")
    e.add_argument("--json", action="store_true", help="print every metric (per domain too) as JSON instead of the table")
    e.add_argument("--stream", action="store_true", help="keep the model on disk (a local safetensors folder) and read "
                   "each layer as it runs: the same numbers in about one matrix of memory (chosen by itself when the "
                   "model would not fit easily)")
    _eval_args(e)
    e.set_defaults(fn=cmd_evaluate)

    rp = sub.add_parser("report", help="write a run's report: one self-contained HTML file (settings, evaluation, "
                        "per-layer table, figures, the figures pinned in the app, the commands to reproduce it)")
    rp.add_argument("run_dir", help="a run folder")
    rp.add_argument("--out", default=None, help="the HTML file (default: <run>/report/report.html)")
    rp.set_defaults(fn=cmd_report)

    x = sub.add_parser("export", help="write a complete run as a deployable model folder")
    x.add_argument("run_dir", help="a complete run folder")
    x.add_argument("--out", required=True, help="the export folder (new, or empty; --force replaces it)")
    x.add_argument("--format", default="sparse", help="sparse (default: S in CSR form + U, V; load with "
                   "oats.load_compressed) or folded (one dense matrix per layer; plain transformers / timm loads it)")
    x.add_argument("--dtype", default="fp32", help="fp32 (default) or bf16: the float type the weights are written "
                   "in (bf16: half the size; loading computes in fp32 as before)")
    x.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    x.set_defaults(fn=cmd_export)

    _sweep_parser(sub)
    return p


def _compress_parser(sub) -> None:
    """``oats compress`` and its flags."""
    c = sub.add_parser("compress", help="compress a model and save a run folder")
    c.add_argument("model", help="preset (smollm2-135m, minilm-l6, dinov2-small), hub id, local folder, or timm:NAME")
    c.add_argument("--method", default="oats", help=f"{_method_choices('oats')} "
                   "(each keeps (1 - compression) of every matrix's parameters)")
    c.add_argument("--compression", default=0.5, help="fraction of each matrix's parameters removed, in (0, 1)")
    c.add_argument("--rank-ratio", default=None, help="share of kept parameters in the low-rank term, [0, 1); "
                   "default: the preset's (0.25 LMs, 0.20 ViTs)")
    c.add_argument("--iterations", default=80, help="alternating-thresholding iterations (maximum for the fast solver)")
    c.add_argument("--sparsity", default="row", help="row, layer, or N:M (keep N of every M; compression then derived)")
    c.add_argument("--solver", default="fast", help="fast (default) or exact (a full SVD every iteration)")
    _shrink_arg(c)
    c.add_argument("--calib-samples", type=int, default=None, help="calibration sequences / images")
    c.add_argument("--seq-len", type=int, default=None, help="tokens per calibration sequence (causal LMs)")
    _calib_domain_arg(c)
    c.add_argument("--calib-source", default=None, help="a text file or an image folder to calibrate on "
                   "instead of the built-in data")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default=None, help="cpu or cuda: where the blocks and the decompositions run")
    c.add_argument("--out", default=None, help="run folder (default: runs/<model>-<method>-..., named by the "
                   "settings, as the app and oats sweep name theirs)")
    c.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
    c.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    c.add_argument("--generic", action="store_true", help="allow the generic adapter for unknown architectures")
    c.add_argument("--trust-remote-code", action="store_true", help="run a hub model's own code (off by default)")
    c.add_argument("--quiet", action="store_true", help="no per-layer table")
    c.add_argument("--from-disk", action="store_true", help="larger than memory: read each block from the model "
                   "folder's safetensors files when its turn comes (automatic when the model does not fit in memory)")
    c.add_argument("--block-inputs", default=None, choices=["compressed", "dense"],
                   help="what each block is calibrated on: compressed (default: the outputs of the compressed blocks "
                   "before it, as the paper) or dense (the dense model's own: blocks independent, so --engine ray "
                   "compresses them in parallel; costs some quality, see the README)")
    _engine_args(c, "block")
    _allocation_args(c)
    c.set_defaults(fn=cmd_compress)


def _sweep_parser(sub) -> None:
    """``oats sweep`` and its flags."""
    w = sub.add_parser("sweep", help="methods x compression rates on one model: one table (CSV, JSON)")
    w.add_argument("model", help="preset (smollm2-135m, minilm-l6, dinov2-small), hub id, local folder, or timm:NAME")
    w.add_argument("--methods", default=",".join(registry.names()),
                   help=f"comma-separated methods among {', '.join(registry.names())} (default: all)")
    w.add_argument("--compression", default="0.3,0.4,0.5,0.6", help="comma-separated rates in (0, 1)")
    w.add_argument("--rank-ratio", default=None, help="comma-separated rank ratios for OATS (default: the model's)")
    w.add_argument("--sparsity", default="row", help="row, layer or N:M")
    w.add_argument("--iterations", default=80, help="alternating-thresholding iterations (OATS)")
    w.add_argument("--solver", default="fast", help="fast (default) or exact")
    _shrink_arg(w)
    w.add_argument("--calib-samples", type=int, default=None, help="calibration sequences / images")
    w.add_argument("--seq-len", type=int, default=None, help="tokens per calibration sequence (causal LMs)")
    w.add_argument("--seed", type=int, default=0)
    _calib_domain_arg(w)
    w.add_argument("--root", default=None, help="runs root where runs are made and reused (default: $OATS_RUNS_DIR or ./runs)")
    w.add_argument("--out", default=None, help="table folder (default: <root>/sweeps/<model>)")
    _engine_args(w, "run")
    _allocation_args(w)
    _eval_args(w)
    w.set_defaults(fn=cmd_sweep)


def _engine_args(p, unit: str) -> None:
    """--engine, --address, --cpus-per-task, --gpus-per-task: each ``unit`` ("run" of a sweep,
    "block" of a compression) a Ray task."""
    where = "the runs root" if unit == "run" else "the run folder"
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help=f"local: one {unit} after the other here; ray: each {unit} a Ray task (needs the [cluster] "
                   "extra)" + ("; needs --block-inputs dense" if unit == "block" else ""))
    p.add_argument("--address", default=None, help="Ray: an existing cluster's address (ray://HOST:10001, HOST:6379 "
                   f"or auto); {where} must be storage every worker shares. Default: a local Ray instance")
    p.add_argument("--cpus-per-task", type=float, default=None, help=f"Ray: CPUs each {unit} reserves (default 1)")
    p.add_argument("--gpus-per-task", type=float, default=None, help=f"Ray: GPUs each {unit} reserves and "
                   "compresses on (default 0)")


def _method_choices(default: str) -> str:
    """The registered methods as words, read when the parser is built: "a (default), b or c"."""
    words = [f"{n} (default)" if n == default else n for n in registry.names()]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


CALIB_DOMAIN_HELP = {
    "manual": "the Python reference manual", "code": "Python standard-library source",
    "verse": "Shakespeare's plays and poems", "speeches": "State of the Union addresses",
    "photos": "bundled sample photos", "drawings": "line art, text and synthetic figures",
    "textures": "brick, grass, gravel and cell photographs"}


def _calib_domain_arg(p) -> None:
    from oats import corpora

    def words(names):
        return ", ".join(f"{n} ({CALIB_DOMAIN_HELP.get(n, corpora.title(n))})" for n in names)
    p.add_argument("--calib-domain", default=None, metavar="DOMAIN",
                   choices=[corpora.MIX, *corpora.TEXT_DOMAINS, *corpora.IMAGE_DOMAINS],
                   help=f"the built-in calibration data: {corpora.MIX} (the default: an equal share of every domain of "
                        f"the model's kind) or one domain; text models: {words(corpora.TEXT_DOMAINS)}; vision models: "
                        f"{words(corpora.IMAGE_DOMAINS)}")


def _allocation_args(p) -> None:
    p.add_argument("--allocation", default="uniform", help="uniform (default) or owl: per-block rates from each "
                   "block's outlier ratio, mean rate kept")
    p.add_argument("--owl-lambda", type=float, default=None, help="OWL: largest change of a block's rate (default 0.08)")
    p.add_argument("--owl-m", type=float, default=None, help="OWL: outlier = score above M x mean (default 5)")


def _eval_args(p) -> None:
    p.add_argument("--quick", action="store_true", help="small evaluation set (seconds)")
    p.add_argument("--text", default=None, help="evaluation text file (LMs, encoders) instead of the built-in split")
    p.add_argument("--wikitext2", action="store_true", help="evaluate LMs on WikiText-2 (needs the network and datasets)")
    p.add_argument("--image-folder", default=None, help="ViTs: evaluation images; class sub-folders give top-1 "
                   "for a model with a classification head")


DEBUG_ENV = "OATS_DEBUG"
"""Set to 1 to see the traceback of an unexpected error instead of its one-line summary."""


def main(argv: list[str] | None = None) -> int:
    import os
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except OatsError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        _STATUS.clear()
        print("oats: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        return _fail("out of memory: use fewer calibration samples (--calib-samples) or a smaller model")
    except Exception as e:
        if os.environ.get(DEBUG_ENV):
            raise
        text = " ".join(str(e).split())[:300] or "no message"
        _STATUS.clear()
        print(f"oats: error: unexpected {type(e).__name__}: {text} (a bug: rerun with {DEBUG_ENV}=1 for the "
              f"traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
