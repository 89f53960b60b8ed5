"""A small sweep started from the app: every run a background job of the app's runner, the
table written when the last one ends. No Streamlit here.

``oats sweep`` (``oats.runner.sweep.sweep``) compresses and evaluates in its own process, one
run after the other, and would block a page. The app instead plans the same runs
(``oats.runner.sweep.plan``: the same requests, hence the same run folders, so a run either
made is reused by the other), hands each to ``oats.runner.jobs.JobRunner.start`` with
evaluation on (each job keeps ``evaluation.json`` next to its run; the runner runs one job at
a time and the rest wait, queued), and writes ``plan.json`` into the sweep's table folder
first. ``collect`` builds the table from the runs' manifests and evaluations once no job of
the plan is active, with ``oats.runner.sweep.write_results``: the same ``results.json`` /
``results.csv`` / ``sweep.json`` the Compare page reads for any sweep. Since the plan is on
disk, a reload of the page (or another tab) finds the sweep again and collects it.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from oats import untrusted
from oats.errors import ConfigError, RunError
from oats.models import zoo
from oats.runner.request import CompressRequest, slug
from oats.runner.sweep import SWEEPS_DIR, parse_list, plan, write_results
from oats.runs.evaluations import read_evaluation
from oats.runs.folders import MANIFEST, atomic_write_bytes, read_manifest, run_dir, runs_root
from oats.runs import estimate as est
from oats.runs.state import State, inspect

PLAN_JSON = "plan.json"
MAX_RUNS = 12
"""A sweep started from the page is small: more runs belong on the command line (``oats sweep``)."""


def requests(model: str, methods, rates, *, iterations: int = 80, calib_samples: int | None = None
             ) -> list[CompressRequest]:
    """The runs of a page sweep (methods outer, rates inner; OATS at the model's default rank
    ratio), each evaluated when done. ConfigError (one line) for no method, a rate outside
    (0, 1), an unknown model or more than ``MAX_RUNS`` runs."""
    if not methods:
        raise ConfigError("choose at least one method for the sweep")
    if isinstance(rates, str) and not rates.strip() or not isinstance(rates, str) and not list(rates):
        raise ConfigError("give at least one compression rate, e.g. 0.3, 0.5")
    rates = parse_list(rates, "compression rates", unit_open=True)
    preset = zoo.PRESETS.get(model)
    if preset is None:
        raise ConfigError(f"the sweep runs on a built-in model: choose one of {', '.join(zoo.PRESETS)}")
    reqs = plan(model, methods, rates, [preset.default_rank_ratio], iterations=int(iterations),
                calibration=(calib_samples or None, None, 0))
    if len(reqs) > MAX_RUNS:
        raise ConfigError(f"this sweep has {len(reqs)} runs, more than the page starts ({MAX_RUNS}): choose fewer "
                          f"methods or rates, or run `oats sweep {model}` from the command line")
    return [replace(r, evaluate=True) for r in reqs]


def folder_for(reqs: list[CompressRequest], root=None) -> Path:
    """The table folder: ``<root>/sweeps/<model>-app-<methods>-c<rates>[-it<n>][-cal<n>]``."""
    root = Path(root) if root is not None else runs_root()
    first = reqs[0]
    methods = "_".join(dict.fromkeys(r.method for r in reqs))
    rates = "_".join(f"{x:g}" for x in dict.fromkeys(r.config.compression for r in reqs))
    name = f"{slug(first.model)}-app-{methods}-c{rates}"
    if first.config.iterations != 80:
        name += f"-it{first.config.iterations}"
    if first.calib_samples:
        name += f"-cal{first.calib_samples}"
    return run_dir(root / SWEEPS_DIR, name)


def existing(reqs: list[CompressRequest], root=None) -> list[str]:
    """The runs of ``reqs`` already complete on disk (reused, not compressed again)."""
    root = Path(root) if root is not None else runs_root()
    return [r.folder_name() for r in reqs
            if inspect(run_dir(root, r.folder_name()), r).state is State.COMPLETE]


def start(reqs: list[CompressRequest], runner, root=None) -> Path:
    """Write the plan, then start one job per run on ``runner``; returns the table folder."""
    root = Path(root) if root is not None else runs_root()
    folder = folder_for(reqs, root)
    folder.mkdir(parents=True, exist_ok=True)
    body = {"model": reqs[0].model, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "collected": False,
            "runs": [{"run": r.folder_name(), "method": r.method, "compression": r.config.compression,
                      "rank_ratio": r.rank_ratio, "sparsity": r.config.sparsity} for r in reqs],
            "iterations": reqs[0].config.iterations, "calib_samples": reqs[0].calib_samples}
    atomic_write_bytes(folder / PLAN_JSON, json.dumps(body, indent=1).encode())
    for r in reqs:
        runner.start(r, root)
    return folder


def _plain_entry(r) -> bool:
    """A plan's run entry as written by ``start``: a plain run folder name, a method name, a number."""
    if not (isinstance(r, dict) and isinstance(r.get("run"), str) and isinstance(r.get("method"), str)):
        return False
    x = r.get("compression")
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        run_dir(Path("."), r["run"])
    except RunError:
        return False
    return True


def read_plan(folder) -> dict | None:
    """A table folder's plan, or None when it has none or it is damaged (a shared folder: any
    entry not as ``start`` writes it makes the whole plan unreadable, never a traceback)."""
    try:
        body = untrusted.read_json(Path(folder) / PLAN_JSON)
    except (ValueError, OSError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or \
            not isinstance(body.get("runs"), list) or not body["runs"] or not all(map(_plain_entry, body["runs"])):
        return None
    return body


def pending(root=None) -> list[Path]:
    """Table folders of page sweeps not collected yet, oldest first."""
    base = (Path(root) if root is not None else runs_root()) / SWEEPS_DIR
    if not base.is_dir():
        return []
    out = []
    for p in sorted(base.iterdir()):
        body = read_plan(p) if (p / PLAN_JSON).is_file() else None
        if body is not None and not body.get("collected"):
            out.append(p)
    return out


def _complete(folder: Path) -> dict | None:
    try:
        m = read_manifest(folder) if (folder / MANIFEST).exists() else None
    except RunError:
        return None
    return m if m and m.get("complete") else None


def progress(folder, runner, root=None) -> list[dict]:
    """One dict per run of the plan: run, method, compression, status (queued, running, done,
    failed, cancelled, or "stopped" when no job of this app holds an unfinished run), done and
    total blocks, message (one line)."""
    root = Path(root) if root is not None else runs_root()
    body = read_plan(folder) or {"runs": []}
    out = []
    for r in body["runs"]:
        run = run_dir(root, r["run"])
        job = runner.get(run)
        row = {"run": r["run"], "method": r.get("method"), "compression": r.get("compression")}
        if job is not None:
            s = job.state()
            row.update(status=s.status, done=s.done, total=s.total, message=s.error or s.message)
        elif _complete(run) is not None:
            row.update(status="done", done=1, total=1, message="compressed")
        else:
            row.update(status="stopped", done=0, total=0,
                       message="not running (the app restarted?): start the same sweep again to resume it")
        out.append(row)
    return out


def active(rows: list[dict]) -> bool:
    return any(r["status"] in ("queued", "running") for r in rows)


def collect(folder, root=None) -> tuple[int, list[str]]:
    """Write the table of a plan from its complete, evaluated runs and mark the plan collected.

    Returns (runs in the table, runs left out: unfinished, failed or not evaluated). The caller
    collects once no job of the plan is active (``active(progress(...))`` is False)."""
    root = Path(root) if root is not None else runs_root()
    folder = Path(folder)
    body = read_plan(folder)
    if body is None:
        raise RunError(f"'{folder}' holds no readable sweep plan ({PLAN_JSON}): start the sweep again")
    rows, missing, settings, dense = [], [], None, None
    for r in body["runs"]:
        run = run_dir(root, r["run"])
        m = _complete(run)
        ev = read_evaluation(run) if m is not None else None
        if ev is None:
            missing.append(r["run"])
            continue
        settings = settings or ev.get("settings")
        total = (m.get("timings") or {}).get("total_s")
        for mode, metrics in ev["results"].items():
            if mode == "dense":
                dense = dense or metrics
                continue
            rows.append({"model": body["model"], "method": r.get("method"), "compression": r.get("compression"),
                         "rank_ratio": r.get("rank_ratio"), "sparsity": r.get("sparsity"), "allocation": "uniform",
                         "mode": mode, **metrics, "compress_time_s": total, "eval_time_s": None, "run": r["run"]})
    if dense is not None:
        rows.insert(0, {"model": body["model"], "method": "dense", "compression": 0.0, "rank_ratio": 0.0,
                        "sparsity": body["runs"][0].get("sparsity"), "allocation": "uniform", "mode": "dense",
                        **dense, "compress_time_s": None, "eval_time_s": None, "run": ""})
    if rows:
        write_results(folder, rows, meta={
            "model": body["model"], "methods": list(dict.fromkeys(r.get("method") for r in body["runs"])),
            "compression": list(dict.fromkeys(r.get("compression") for r in body["runs"])),
            "iterations": body.get("iterations"), "quick": False, "evaluation": settings, "root": str(root),
            "engine": "app", "runs_missing": missing, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    body["collected"] = True
    body["missing"] = missing
    atomic_write_bytes(folder / PLAN_JSON, json.dumps(body, indent=1).encode())
    return len(body["runs"]) - len(missing), missing


def estimate(reqs: list[CompressRequest], root=None) -> tuple[float | None, str]:
    """(seconds, where the figure comes from) for the runs of ``reqs`` not on disk yet, one after
    the other as the runner runs them: the sum of ``oats.runs.estimate`` for each (this machine's
    past runs of the same model and method where it has them, else its rough default rates).
    (None, why) when some run cannot be estimated."""
    root = Path(root) if root is not None else runs_root()
    reused = set(existing(reqs, root))
    todo = [r for r in reqs if r.folder_name() not in reused]
    if not todo:
        return 0.0, "every run is already on disk"
    past = est.past_runs(root)
    task = zoo.PRESETS[todo[0].model].task if todo[0].model in zoo.PRESETS else None
    parts = [est.estimate(r.model, r.method, r.config, past, task=task, samples=r.calib_samples) for r in todo]
    if any(p.seconds is None for p in parts):
        return None, next(p.basis for p in parts if p.seconds is None)
    learned = sum(1 for p in parts if p.runs)
    basis = ("from this machine's past runs of each method" if learned == len(parts) else
             "rough figures: no past run here of " + ", ".join(sorted({r.method for r, p in zip(todo, parts)
                                                                      if not p.runs}))
             if not learned else f"{learned} of {len(parts)} from this machine's past runs, the rest rough figures")
    return sum(p.seconds for p in parts), basis
