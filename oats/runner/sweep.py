"""Sweeps: several methods x compression rates (x rank ratios) on one model, one tidy table.

Every run is an ordinary run folder under the runs root, named deterministically from its
settings (``<model>-<method>-c<rho>-k<kappa>-<sparsity>[-...]``), so a repeated sweep finds
the complete runs already on disk, loads them and only evaluates. An unfinished run of the
same settings resumes after its finished blocks; a damaged folder is recomputed; a folder of
that name holding a run of another model or other settings stops the sweep with one line.
Each run goes through ``oats.runner.execute.execute``, like ``oats compress`` and the app.

The table (``results.csv`` and ``results.json``, a list of row dicts) has one row per
evaluated (run, mode), plus one dense row per model, with columns: model, method,
compression, rank_ratio, sparsity, allocation, mode, the task's metrics, compress_time_s,
eval_time_s, run. The metrics come primary first: its mean over the domains, its value on the
held-out part of each domain (``perplexity@verse``, ...), then the other metrics (nll, nll@...
| spearman | probe_acc[, top1]); on the user's own text there are no per-domain columns.
``domain_table`` lays out the primary metric per domain with each method's rank there.
It goes to ``<root>/sweeps/<model>/`` unless another folder is given.
"""

from __future__ import annotations

import copy
import dataclasses
import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from oats import corpora, data, untrusted
from oats.compress.allocation import Owl, parse_allocation
from oats.config import DEFAULT_RANK_RATIO, OatsConfig
from oats.errors import ConfigError, RunError
from oats.evaluation import Evaluator, run_modes
from oats.methods import registry
from oats.models import zoo
from oats.runner.execute import execute, replace_model
from oats.runner.request import CompressRequest, check_calib_domain, data_kind, slug
from oats.runs.folders import atomic_write_bytes, check_run_folder, run_dir, runs_root
from oats.runs.info import finite_json
from oats.runs.state import Action, inspect
from oats.explain import quality

SWEEPS_DIR = "sweeps"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
SWEEP_JSON = "sweep.json"
DEFAULT_RATES = (0.3, 0.4, 0.5, 0.6)
FIRST_COLUMNS = ["model", "method", "compression", "rank_ratio", "sparsity", "allocation", "mode"]
LAST_COLUMNS = ["compress_time_s", "eval_time_s", "run"]


def parse_list(value, name: str, *, unit_open: bool = False, methods: bool = False) -> list:
    """Parse "a,b,c" (or a list) for the CLI and the library, with one-line errors.

    unit_open: numbers that must lie in (0, 1) (compression rates); otherwise [0, 1) (rank ratios).
    methods: names of registered methods (``oats.methods.names()``).
    """
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    items = [v for v in items if not (isinstance(v, str) and not v)]
    if not items:
        raise ConfigError(f"{name} is empty: give a comma-separated list")
    if methods:
        for m in items:
            if registry.find(m) is None:
                raise ConfigError(f"unknown method {m!r} in {name}: choose among {', '.join(registry.names())}")
        return list(dict.fromkeys(items))
    out = []
    for v in items:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} value {v!r} is not a number: give numbers such as 0.3,0.4,0.5") from None
        ok = (0.0 < x < 1.0) if unit_open else (0.0 <= x < 1.0)
        if not ok:
            span = "(0, 1)" if unit_open else "[0, 1)"
            raise ConfigError(f"{name} value {v} is outside {span}: give values such as 0.3,0.4,0.5")
        out.append(x)
    return list(dict.fromkeys(out))


@dataclass
class SweepResult:
    """The table and where it went."""

    folder: Path
    rows: list[dict]
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)
    """With a Ray engine: run name -> ``oats.runner.cluster.TaskReport``."""


def plan(model: str, methods, rates, rank_ratios, *, sparsity: str = "row", iterations: int = 80,
         solver: str = "fast", owl: Owl | None = None, calibration=(None, None, 0),
         calib_domain: str | None = None, shrink: float | None = None) -> list[CompressRequest]:
    """The runs of a sweep, in order: methods outer, rates inner; a method that reads the rank
    ratio (OATS) once per rank ratio, the others once.

    Raises ConfigError (one line) for an unknown method, a rate outside (0, 1), a rank ratio
    outside [0, 1), a combination a method cannot run, or a calibration domain the model does
    not take. ``shrink``: the Gram shrinkage of every run (None: ``OatsConfig``'s default; read
    by the methods whose record ``uses_shrink``).
    """
    methods = parse_list(methods, "methods", methods=True)
    rates = parse_list(rates, "compression rates", unit_open=True)
    rank_ratios = parse_list(rank_ratios, "rank ratios")
    samples, seq_len, seed = calibration
    requests = []
    for method in methods:
        for rho in rates:
            record = registry.get(method)
            for kappa in (rank_ratios if record.uses_rank_ratio else rank_ratios[:1]):
                cfg = OatsConfig(compression=rho, rank_ratio=kappa, iterations=iterations, sparsity=sparsity,
                                 solver=solver, shrink=OatsConfig().shrink if shrink is None else shrink)
                req = CompressRequest(model, cfg, method, allocation=owl, calib_samples=samples, seq_len=seq_len,
                                      seed=seed or 0, calib_domain=calib_domain, evaluate=False)
                req.check()
                requests.append(req)
    return requests


SWEEP_REMEDY = "move it away or give another --root"
"""What to do about a sweep run's folder that holds another run (the error is ``FolderState.refusal``)."""


def _inspect(spec: CompressRequest, folder: Path) -> Action:
    """The action for ``spec``'s run ``folder`` (``oats.runs.state.inspect`` with the
    sweep's policy: a damaged folder, or an unfinished one of other settings, is recomputed from
    scratch); RunError (one line) when the folder holds another model's run or another complete run."""
    return inspect(folder, spec, redo=True, remedy=SWEEP_REMEDY).check().action


def _row(spec: CompressRequest | None, model: str, mode: str, metrics: dict, compress_s: float | None,
         eval_s: float, run: str, sparsity: str) -> dict:
    if spec is None:
        head = {"model": model, "method": "dense", "compression": 0.0, "rank_ratio": 0.0, "sparsity": sparsity,
                "allocation": "uniform", "mode": "dense"}
    else:
        head = {"model": model, "method": spec.method, "compression": spec.config.compression,
                "rank_ratio": spec.rank_ratio, "sparsity": spec.config.sparsity,
                "allocation": "owl" if spec.allocation is not None else "uniform", "mode": mode}
    return {**head, **metrics, "compress_time_s": None if compress_s is None else round(compress_s, 3),
            "eval_time_s": round(eval_s, 3), "run": run}


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep computes, how it calibrates and evaluates, and where it writes: ``sweep``'s
    keywords (the CLI fills it from its flags).

    methods: registered method names (list or "a,b"; default: every registered method).
    compression: rates in (0, 1) (list or "0.3,0.4").
    rank_ratios: kappa values for OATS (default: the model's); other methods have a fixed one
        (0 for the sparse-only methods, 1 for low-rank only).
    sparsity, iterations, solver: every run's ``OatsConfig``; shrink: the Gram shrinkage
        lambda of the runs of the methods that read it (``OatsConfig.shrink``; None: its default).
    allocation, owl_lambda, owl_m: "uniform" or "owl" for every run.
    calib_samples, seq_len, seed: calibration (``oats.data.calibration_batches``);
    calib_domain: the built-in calibration data: a domain (``oats.corpora``) or None / "mix"
        for an equal share of every domain of the model's kind.
    quick, text, image_folder: the evaluation (``oats.evaluation``).
    root: the runs root (default ``oats.runs.folders.runs_root()``); out: the table folder
        (default ``<root>/sweeps/<model>``, ``<root>/sweeps/<model>-cal<domain>`` when
        calibrated on one domain).
    """

    methods: object = None
    compression: object = DEFAULT_RATES
    rank_ratios: object = None
    sparsity: str = "row"
    iterations: int = 80
    solver: str = "fast"
    shrink: float | None = None
    allocation: object = None
    owl_lambda: float | None = None
    owl_m: float | None = None
    calib_samples: int | None = None
    seq_len: int | None = None
    seed: int = 0
    calib_domain: str | None = None
    quick: bool = False
    text: object = None
    image_folder: object = None
    root: object = None
    out: object = None


@dataclass
class _Plan:
    """A sweep checked before any expensive work: its folders, runs and what each folder needs."""

    root: Path
    folder: Path
    owl: Owl | None
    calib_domain: str | None
    kappas: list
    specs: list[CompressRequest]
    actions: dict[str, Action]
    loaded: object


def _prepare(model: str, s: SweepSettings, loaded) -> _Plan:
    """Check the folders, plan the runs and judge every run folder, then load the model (unless
    given). Both folders are checked before anything loads: a long sweep must not fail at its
    last write."""
    methods = registry.names() if s.methods is None else s.methods
    owl = parse_allocation(s.allocation, s.owl_lambda, s.owl_m)
    root = Path(s.root) if s.root is not None else runs_root()
    check_run_folder(root, "--root", "runs folder")
    calib_domain = None if s.calib_domain in (None, corpora.MIX) else s.calib_domain
    # a sweep calibrated on one domain keeps its table beside the default (mix) one, not over it
    default_out = slug(model) + ("" if calib_domain is None else "-cal" + slug(calib_domain))
    folder = Path(s.out) if s.out is not None else root / SWEEPS_DIR / default_out
    check_run_folder(folder, "--out", "table folder")
    if loaded is None:
        kappa0 = zoo.PRESETS[model].default_rank_ratio if model in zoo.PRESETS else None
    else:
        kappa0 = loaded.default_rank_ratio
    specs_args = dict(sparsity=s.sparsity, iterations=s.iterations, solver=s.solver, owl=owl,
                      calibration=(s.calib_samples, s.seq_len, s.seed), calib_domain=calib_domain, shrink=s.shrink)
    # validate everything (and every existing folder) before any expensive work
    for spec in plan(model, methods, s.compression,
                     s.rank_ratios if s.rank_ratios is not None else [kappa0 or DEFAULT_RANK_RATIO], **specs_args):
        _inspect(spec, run_dir(root, spec.folder_name()))
    if loaded is None:
        loaded = zoo.load_model(model)
    check_calib_domain(calib_domain, data_kind(model, getattr(loaded, "task", None)))
    kappas = s.rank_ratios if s.rank_ratios is not None else [loaded.default_rank_ratio]
    specs = plan(model, methods, s.compression, kappas, **specs_args)
    actions = {spec.folder_name(): _inspect(spec, run_dir(root, spec.folder_name())) for spec in specs}
    return _Plan(root, folder, owl, calib_domain, kappas, specs, actions, loaded)


@dataclass
class _Context:
    """What every run of a local sweep shares: the pristine dense model, the calibration
    batches, the evaluator and its reference, the rows so far and the hooks."""

    model: str
    p: _Plan
    dense: object
    batches: list
    evaluator: Evaluator
    ref: object
    dense_metrics: dict
    rows: list[dict]
    result: SweepResult
    extra: dict
    remote: dict
    progress: Callable | None
    log: Callable[[str], None]
    sparsity: str


def _compress_one(c: _Context, spec: CompressRequest, name: str):
    """(run, how it came to be, local compression seconds) for one run of the sweep."""
    cb = None if c.progress is None else (lambda d, t, m, _n=name: c.progress(_n, d, t, m))
    t0 = time.perf_counter()
    replace = c.p.actions[name] is Action.COMPUTE and name not in c.remote  # a task's folder holds its finished run now
    outcome = execute(spec, run_dir(c.p.root, name), progress=cb, if_exists="replace" if replace else "resume",
                      loaded=replace_model(c.p.loaded, copy.deepcopy(c.dense)), batches=c.batches, extra=c.extra)
    run = outcome.run
    compress_s = float(run.timings.get("total_s", float("nan")))  # as recorded, so a reuse reports the same
    if name in c.remote:  # compressed by a task: this process only opened the finished run
        c.result.computed.append(name)
        report = c.remote[name]
        how = (f"resumed after {report.resumed_blocks} blocks, " if report.status == Action.RESUME.done else "") + \
            f"compressed in {compress_s:.1f}s (Ray task)"
        return run, how, compress_s, 0.0
    if outcome.status == Action.REUSE.done:
        c.result.reused.append(name)
        return run, f"reused (loaded in {time.perf_counter() - t0:.1f}s)", compress_s, 0.0
    c.result.computed.append(name)
    how = (f"resumed after {outcome.resumed_blocks} blocks, " if outcome.status == Action.RESUME.done else "") + \
        f"compressed in {compress_s:.1f}s"
    return run, how, compress_s, time.perf_counter() - t0


def _evaluate_one(c: _Context, spec: CompressRequest, name: str, run, compress_s: float) -> float:
    """Append the rows of every compressed variant of ``run``; the seconds it took."""
    t_eval = 0.0
    for mode in run_modes(spec.method, run.config)[1:]:  # dense is the shared dense row
        t0 = time.perf_counter()
        with run.use_mode(mode):
            metrics = c.evaluator.metrics(run.model, c.ref)
        dt = time.perf_counter() - t0
        t_eval += dt
        c.rows.append(_row(spec, c.model, mode, metrics, compress_s, dt, name, c.sparsity))
    return t_eval


def sweep(model: str, methods=None, compression=None, rank_ratios=None, *, settings: SweepSettings | None = None,
          loaded=None, progress: Callable[[str, int, int, str], None] | None = None,
          log: Callable[[str], None] | None = None, engine=None,
          on_task: Callable[..., None] | None = None, **options) -> SweepResult:
    """Compress (or reuse) and evaluate every run of the sweep; write the table.

    Args:
        model: a preset, hub id, local folder or timm:NAME (loaded once through the zoo).
        methods, compression, rank_ratios, options: the fields of ``SweepSettings`` as
            keywords, over ``settings`` (None: its defaults).
        loaded: an already loaded model (``oats.models.zoo.load_model(model)``), left dense.
        progress: callable(run name, done blocks, total blocks, message) while compressing.
        log: callable(line) for one line per run.
        engine: None compresses here, one run after the other; an open
            ``oats.runner.cluster.RayEngine`` compresses every run as a Ray task first (the
            runs root must then be shared storage), and this process evaluates them.
        on_task: with an engine, callable(report, done, total) as each task ends.

    Returns a ``SweepResult``; the table is also in ``<folder>/results.csv`` / ``.json``.
    """
    t_all = time.perf_counter()
    given = {k: v for k, v in (("methods", methods), ("compression", compression), ("rank_ratios", rank_ratios))
             if v is not None}
    s = dataclasses.replace(settings or SweepSettings(), **given, **options)
    log = log or (lambda line: None)
    p = _prepare(model, s, loaded)
    batches = data.calibration_batches(p.loaded, n_samples=s.calib_samples, seq_len=s.seq_len, seed=s.seed,
                                       domain=p.calib_domain)
    dense = copy.deepcopy(p.loaded.model)  # pristine: every run starts from a copy of it
    evaluator = Evaluator(p.loaded, quick=s.quick, text=s.text, image_folder=s.image_folder)
    t0 = time.perf_counter()
    ref = evaluator.reference(dense)
    dense_metrics = evaluator.metrics(dense, ref)
    rows = [_row(None, model, "dense", dense_metrics, None, time.perf_counter() - t0, "", s.sparsity)]
    log("dense: " + ", ".join(f"{k} {v:.4g}" for k, v in dense_metrics.items()))
    c = _Context(model, p, dense, batches, evaluator, ref, dense_metrics, rows, SweepResult(folder=p.folder, rows=rows),
                 {"sweep": str(p.folder)}, {}, progress, log, s.sparsity)
    t_compress = t_eval = 0.0
    if engine is not None:
        engine.check_shared(p.root)
        todo = [(spec, run_dir(p.root, spec.folder_name()), p.actions[spec.folder_name()]) for spec in p.specs
                if p.actions[spec.folder_name()] is not Action.REUSE]
        t0 = time.perf_counter()
        c.remote = engine.compress(todo, c.extra, on_done=on_task)
        t_compress = time.perf_counter() - t0
    failed = {name: r.error for name, r in c.remote.items() if r.status == "failed"}
    for n, spec in enumerate(p.specs, 1):
        name = spec.folder_name()
        if name in failed:
            log(f"[{n}/{len(p.specs)}] {name}: failed: {failed[name]}")
            continue
        run, how, compress_s, local_s = _compress_one(c, spec, name)
        t_compress += local_s
        t_eval += _evaluate_one(c, spec, name, run, compress_s)
        both = next(r for r in rows[::-1] if r["run"] == name and r["mode"] == "both")
        primary = {k: both[k] for k in dense_metrics}
        log(f"[{n}/{len(p.specs)}] {name}: {how}; " + ", ".join(f"{k} {v:.4g}" for k, v in primary.items()))
        del run
    c.result.timings = {"total_s": time.perf_counter() - t_all, "compress_s": t_compress, "evaluate_s": t_eval}
    c.result.tasks = c.remote
    write_results(p.folder, rows, meta=_meta(model, s, p, c, engine, failed))
    if failed:
        first, cause = next(iter(failed.items()))
        raise RunError(f"{len(failed)} of {len(p.specs)} runs failed (first: {first}: {cause[:200]}); the table of "
                       f"the others is in '{p.folder}': run the same sweep again to retry the failed ones")
    return c.result


def _meta(model: str, s: SweepSettings, p: _Plan, c: _Context, engine, failed: dict) -> dict:
    """``sweep.json``: the sweep's settings, what it computed and reused, and its timings."""
    calib_request = {"samples": s.calib_samples, "seq_len": s.seq_len, "seed": s.seed, "source": None,
                     "domain": p.calib_domain or corpora.MIX}
    return {
        "model": model, "methods": list(dict.fromkeys(spec.method for spec in p.specs)),
        "compression": parse_list(s.compression, "compression rates", unit_open=True),
        "rank_ratios": [float(k) for k in p.kappas], "sparsity": s.sparsity, "iterations": s.iterations,
        "solver": s.solver, "shrink": p.specs[0].config.shrink if p.specs else s.shrink,
        "allocation": None if p.owl is None else p.owl.to_dict(), "quick": s.quick,
        "evaluation": c.evaluator.settings, "calibration": calib_request, "root": str(p.root),
        "runs_computed": c.result.computed, "runs_reused": c.result.reused, "timings": c.result.timings,
        "engine": "local" if engine is None else "ray", "runs_failed": failed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


# ----------------------------------------------------------------------------- table files


def _columns(rows: list[dict]) -> list[str]:
    """Settings, then the metrics (the primary mean, the primary per domain, the other metrics:
    ``oats.explain.quality.ordered_metrics``), then the bookkeeping."""
    metrics = []
    for r in rows:
        for k in r:
            if k not in FIRST_COLUMNS and k not in LAST_COLUMNS and k not in metrics:
                metrics.append(k)
    return FIRST_COLUMNS + quality.ordered_metrics(metrics) + LAST_COLUMNS


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN / inf
    return x


def write_results(folder: str | Path, rows: list[dict], meta: dict | None = None) -> Path:
    """Write ``results.csv``, ``results.json`` (list of row dicts) and ``sweep.json`` (meta)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    atomic_write_bytes(folder / RESULTS_CSV, buf.getvalue().encode())
    clean = [{c: _json_safe(r.get(c)) for c in cols} for r in rows]
    atomic_write_bytes(folder / RESULTS_JSON, json.dumps(clean, indent=1).encode())
    if meta is not None:
        atomic_write_bytes(folder / SWEEP_JSON, json.dumps(finite_json(meta), indent=1, default=str).encode())
    return folder


def list_sweeps(root=None) -> list[Path]:
    """Sweep folders (those holding a results.json) under ``<root>/sweeps/``."""
    base = (Path(root) if root is not None else runs_root()) / SWEEPS_DIR
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / RESULTS_JSON).is_file())


def load_results(folder: str | Path) -> list[dict]:
    """The rows of a sweep folder's results.json; RunError (one line) if missing or damaged."""
    folder = Path(folder)
    p = folder / RESULTS_JSON
    if not p.is_file():
        raise RunError(f"'{folder}' holds no sweep results ({RESULTS_JSON}): run 'oats sweep MODEL' first")
    try:
        rows = untrusted.read_json(p)
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r and "mode" in r for r in rows):
            raise ValueError("not a list of rows")
    except (ValueError, OSError) as e:  # BadFile is a ValueError
        raise RunError(f"sweep results '{p}' are damaged ({' '.join(str(e).split())[:160]}): run the sweep "
                       "again") from None
    return rows


def load_meta(folder: str | Path) -> dict:
    """The sweep's settings and timings (sweep.json), or {} when absent."""
    p = Path(folder) / SWEEP_JSON
    try:
        meta = untrusted.read_json(p) if p.is_file() else {}
    except (ValueError, OSError):
        return {}
    return meta if isinstance(meta, dict) else {}


def pivot_table(rows: list[dict], metric: str, digits: int = 4) -> str:
    """One metric as Markdown: a line per (method, rank ratio, mode), a column per rate.

    The dense value heads the table; a missing cell is left empty.
    """
    rates = sorted({r["compression"] for r in rows if r["method"] != "dense"})
    keys = list(dict.fromkeys((r["method"], r["rank_ratio"], r["mode"]) for r in rows if r["method"] != "dense"))
    cell = {(r["method"], r["rank_ratio"], r["mode"], r["compression"]): r.get(metric) for r in rows}

    def fmt(v):
        return "" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v))

    out = ["| method | rank ratio | mode | " + " | ".join(f"ρ={x:g}" for x in rates) + " |",
           "|---|---|---|" + "---|" * len(rates)]
    for r in rows:
        if r["method"] == "dense":
            out.append("| dense | | | " + " | ".join(fmt(r.get(metric)) for _ in rates) + " |")
            break
    for m, k, mode in keys:
        out.append(f"| {m} | {k:g} | {mode} | " + " | ".join(fmt(cell.get((m, k, mode, x))) for x in rates) + " |")
    return "\n".join(out)


def domain_table(rows: list[dict], metric: str | None = None, higher_is_better: bool | None = None,
                 settings: dict | None = None, digits: int = 4) -> str:
    """The primary metric (or ``metric``) on each domain's held-out part beside its mean, as
    Markdown: a line naming the text, the dense model's values, then for each compression rate a
    table of the compressed models (one line per method and rank ratio) with each one's rank
    among them on each domain (#1 is the best, in bold), and a sentence when the best differs
    between domains. "" when the rows hold no per-domain values (the user's own text, or a
    sweep made before domains existed)."""
    keys = [k for r in rows for k in r if k not in FIRST_COLUMNS and k not in LAST_COLUMNS]
    found = quality.primary_of(keys)
    metric = metric or (found[0] if found else None)
    if metric is None:
        return ""
    if higher_is_better is None:
        higher_is_better = found[1] if found and found[0] == metric else False
    doms = quality.domains_of(rows, metric)
    if not doms:
        return ""
    better = "higher" if higher_is_better else "lower"
    out = [f"{metric} per domain ({better} is better), on {quality.describe(settings, doms)}; "
           f"{quality.mean_note(metric)}; (#k) is the rank among the methods at that rate"]
    dense = next((r for r in rows if r.get("method") == "dense"), None)
    if dense is not None:
        vals = quality.domain_values(dense, metric)
        out.append("dense: " + " · ".join(f"{'mean' if d == quality.MEAN else corpora.title(d)} "
                                          f"{quality.fmt(vals.get(d), digits)}" for d in [quality.MEAN] + doms))
    compressed = [r for r in rows if r.get("method") != "dense" and r.get("mode") == "both"]
    kappas: dict[str, set] = {}
    for r in compressed:
        kappas.setdefault(r["method"], set()).add(r.get("rank_ratio"))

    def name(key):
        m, k = key
        return m if len(kappas.get(m, ())) < 2 else f"{m} (κ {k:g})"

    for rate in sorted({r["compression"] for r in compressed}):
        table = {(r["method"], r.get("rank_ratio")): r for r in compressed if r["compression"] == rate}
        out += ["", f"ρ = {rate:g}",
                quality.ranking_markdown(table, metric, higher_is_better, doms, label=lambda n: n[0],
                                         head=("method", "rank ratio"),
                                         extra=lambda n: ("" if n[1] is None else f"{n[1]:g}",), digits=digits)]
        sentence = quality.ranking_sentence(table, metric, higher_is_better, doms, label=name, what="method")
        if len(table) > 1 and sentence:
            out.append(sentence)
    return "\n".join(out)
