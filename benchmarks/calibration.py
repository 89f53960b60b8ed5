"""How much calibration, of what kind: quality on every domain's held-out text as a function of
the calibration domain and of the number of calibration tokens.

For one model, each method (default oats, sparsegpt, hassle) at one compression rate ρ
(default 0.5) and the model's default rank ratio κ:

(a) the calibration matrix: calibrate on each built-in domain (``oats.corpora``), and on the
    default mix of all of them, at the model's default calibration size; evaluate every run on
    the held-out evaluation part of every domain (``oats.evaluation``: ``metric@domain``);
(b) the tokens curve: calibrate on the mix at several sizes (causal LMs: 4, 16, 64, 256
    windows of 256 tokens; encoders: 32, 128, 512 sentences; ViTs: 8, 32, 128 crops), each
    evaluated on every domain.

Each run compresses a fresh copy of the dense model (``oats.compress_model``) on the batches
made here (``oats.data.calibration_batches(loaded, domain=...)``); the dense model is
evaluated once, and every run is scored against that dense reference (as ``oats sweep`` does).

The results go to a JSON file after every cell, so an interrupted study resumes where it
stopped: a rerun skips the cells already in the file (``--fresh`` starts over). The file
holds the settings, the CPU, the command and the total time; the app's Calibration page draws
it. Default file: ``<runs root>/calibration/calibration-<model>.json``; the project's own
results are committed under ``benchmarks/results/``.

Run: .venv/bin/python benchmarks/calibration.py --model minilm-l6
     [--methods oats,sparsegpt,hassle] [--compression 0.5] [--domains manual,code,mix]
     [--sizes 32,128,512] [--matrix-only | --curve-only] [--out FILE] [--fresh]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

STUDY = "oats-calibration-study"
VERSION = 1
MIX = "mix"  # oats.corpora.MIX, without importing torch for --help and the pure functions
DEFAULT_SIZES = {"causal-lm": (4, 16, 64, 256), "encoder": (32, 128, 512), "vision": (8, 32, 128)}
"""Calibration sizes of the tokens curve, in samples (windows, sentences, crops)."""
DEFAULT_METHODS = ("oats", "sparsegpt", "hassle")
IDENTITY = ("study", "version", "model", "task", "metric", "higher_is_better", "compression", "rank_ratio",
            "seq_len", "seed", "matrix_samples", "quick", "evaluation", "config", "method_configs")
"""Header fields that decide every cell's numbers: a file made with other values is not resumed
(``config``, the full ``OatsConfig`` the methods ran with, is checked where the file has it)."""
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- pure pieces


def cpu_name() -> str:
    """``oats.resources.cpu_name``, imported when called (--help stays free of torch)."""
    from oats.resources import cpu_name as name
    return name()


def cell_key(cell: dict) -> tuple[str, str, int]:
    """(method, calibration domain, calibration samples): what a cell is."""
    return str(cell["method"]), str(cell["calib_domain"]), int(cell["calib_samples"])


def plan(methods, domains, matrix_samples: int, sizes, matrix: bool = True, curve: bool = True) -> list[tuple]:
    """The cells to measure, in order: per method, the matrix (each calibration domain at
    ``matrix_samples``) then the curve (the mix at each size); a cell in both is listed once."""
    out: list[tuple] = []
    for m in methods:
        keys = [(m, d, int(matrix_samples)) for d in domains] if matrix else []
        keys += [(m, MIX, int(n)) for n in sizes] if curve else []
        out += keys
    return list(dict.fromkeys(out))


def pending(keys: list[tuple], study: dict) -> list[tuple]:
    """The planned cells that ``study`` does not hold yet (what a resumed run computes)."""
    done = {cell_key(c) for c in study.get("cells", [])}
    return [k for k in keys if tuple(k) not in done]


def mismatch(old: dict, new: dict) -> str | None:
    """The first identity field (``IDENTITY``) on which a saved study differs from the one asked
    for, as "field: saved X, asked Y"; None when the file can be resumed."""
    for f in IDENTITY:
        if f in ("config", "method_configs") and f not in old:  # written by a version that did not record it
            continue
        if old.get(f) != new.get(f):
            return f"{f}: saved {old.get(f)!r}, asked {new.get(f)!r}"
    return None


def add_cell(study: dict, cell: dict) -> dict:
    """``study`` with ``cell`` added (replacing a cell of the same key)."""
    key = cell_key(cell)
    study["cells"] = [c for c in study.get("cells", []) if cell_key(c) != key] + [cell]
    return study


def total_seconds(study: dict) -> float:
    """Wall-clock seconds of every session that worked on the study, together."""
    return float(sum(s.get("seconds", 0.0) or 0.0 for s in study.get("sessions", [])))


def _row(label: dict, per_domain: dict, mean, columns) -> dict:
    return {**label, **{d: per_domain.get(d) for d in columns}, "mean": mean}


def matrix_rows(study: dict) -> list[dict]:
    """The matrix as table rows: dense first, then each method × calibration domain at the
    matrix size; columns: each evaluation domain, then "mean"."""
    cols = study["eval_domains"]
    dense = study.get("dense") or {}
    rows = [_row({"method": "dense", "calibrated on": "-"}, dense.get("per_domain", {}), dense.get("mean"), cols)]
    n = study["matrix_samples"]
    for m in _methods(study):
        for d in _calib_domains(study):
            c = _find(study, m, d, n)
            if c is not None:
                rows.append(_row({"method": m, "calibrated on": d}, c["per_domain"], c["mean"], cols))
    return rows


def curve_rows(study: dict) -> list[dict]:
    """The tokens curve as table rows: each method × calibration size on the mix, smallest
    first; columns: samples, tokens, each evaluation domain, then "mean"."""
    cols = study["eval_domains"]
    rows = []
    for m in _methods(study):
        cells = sorted((c for c in study["cells"] if c["method"] == m and c["calib_domain"] == MIX),
                       key=lambda c: c["calib_samples"])
        for c in cells:
            rows.append(_row({"method": m, "samples": c["calib_samples"], "tokens": c["calib_tokens"]},
                             c["per_domain"], c["mean"], cols))
    return rows


def _methods(study: dict) -> list[str]:
    return list(dict.fromkeys(c["method"] for c in study.get("cells", [])))


def _calib_domains(study: dict) -> list[str]:
    """Calibration domains in the evaluation domains' order, the mix last, then any others."""
    seen = list(dict.fromkeys(c["calib_domain"] for c in study.get("cells", [])
                              if c["calib_samples"] == study["matrix_samples"]))
    order = [d for d in study["eval_domains"] if d in seen] + ([MIX] if MIX in seen else [])
    return order + [d for d in seen if d not in order]


def _find(study: dict, method: str, domain: str, samples: int) -> dict | None:
    for c in study.get("cells", []):
        if cell_key(c) == (method, domain, samples):
            return c
    return None


def best(rows: list[dict], column: str, higher_is_better: bool, skip=("dense",)) -> int | None:
    """Index of the best row for ``column`` among rows whose method is not in ``skip``."""
    cand = [(r[column], i) for i, r in enumerate(rows)
            if r.get("method") not in skip and isinstance(r.get(column), (int, float)) and math.isfinite(r[column])]
    if not cand:
        return None
    return (max if higher_is_better else min)(cand)[1]


def _fmt(v, digits: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def format_table(rows: list[dict], labels: list[str], columns: list[str], higher_is_better: bool,
                 digits: int = 2) -> str:
    """A Markdown table of ``rows``; in each of ``columns`` the best compressed row is bold."""
    marks = {c: best(rows, c, higher_is_better) for c in columns}
    lines = ["| " + " | ".join(labels + columns) + " |", "|" + "---|" * (len(labels) + len(columns))]
    for i, r in enumerate(rows):
        vals = [_fmt(r.get(c), digits) for c in columns]
        vals = [f"**{v}**" if marks[c] == i else v for c, v in zip(columns, vals)]
        lines.append("| " + " | ".join([str(r.get(l, "")) for l in labels] + vals) + " |")
    return "\n".join(lines)


def report(study: dict) -> str:
    """Both tables with a line of settings above each (what the benchmark prints at the end)."""
    higher = bool(study["higher_is_better"])
    digits = 4 if higher else 2
    cols = list(study["eval_domains"]) + ["mean"]
    better = "higher" if higher else "lower"
    mean_note = ("mean: exp of the mean per-domain NLL (geometric mean of the perplexities)"
                 if study["metric"] == "perplexity" else "mean: over the domains")
    head = (f"{study['model']}, ρ {study['compression']:g}, κ {study['rank_ratio']:g} (methods with a low-rank term), "
            f"{study['metric']} on each domain's held-out part ({better} is better; best compressed value bold; "
            f"{mean_note})")
    out = [f"Calibration matrix: {head}; calibration {study['matrix_samples']} {study['unit']}\n",
           format_table(matrix_rows(study), ["method", "calibrated on"], cols, higher, digits),
           f"\nTokens curve: calibrated on the mix; {head}\n",
           format_table(curve_rows(study), ["method", "samples", "tokens"], cols, higher, digits),
           f"\n{len(study['cells'])} cells, {total_seconds(study) / 60:.1f} min in all on {study.get('cpu', '?')}"]
    return "\n".join(out)


def save_study(path: str | Path, study: dict) -> None:
    """Write ``study`` as strict JSON (NaN and infinities as null, as a manifest), atomically."""
    from oats.runs.info import finite_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(finite_json(study), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_study(path: str | Path) -> dict | None:
    """The study saved at ``path``, or None when there is no file."""
    path = Path(path)
    if not path.exists():
        return None
    study = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(study, dict) or study.get("study") != STUDY or not isinstance(study.get("cells"), list):
        raise ValueError(f"{path} is not a calibration study file: give another --out, or --fresh to replace it")
    return study


def _positive_ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"{what} must be whole numbers of at least 1, comma-separated, got {text!r}")
    return vals


def _names(text: str) -> list[str]:
    return list(dict.fromkeys(x.strip() for x in str(text).split(",") if x.strip()))


# ----------------------------------------------------------------------------- the study


def count_tokens(batches: list[dict], model) -> int:
    """Calibration tokens: real (unpadded) tokens of text batches, token positions of images."""
    from oats.compress.preflight import calibration_tokens
    if batches and "attention_mask" in batches[0]:
        return int(sum(int(b["attention_mask"].sum()) for b in batches))
    return calibration_tokens(batches, model)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="a preset (smollm2-135m, minilm-l6, dinov2-small)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--compression", type=float, default=0.5, help="ρ, the share of each matrix's parameters removed")
    ap.add_argument("--domains", default=None,
                    help="calibration domains of the matrix, comma-separated (default: every domain and 'mix')")
    ap.add_argument("--sizes", default=None, help="calibration sizes of the curve in samples (windows, sentences, "
                                                  "crops); default 4,16,64,256 | 32,128,512 | 8,32,128")
    ap.add_argument("--calib-samples", type=int, default=None,
                    help="calibration size of the matrix (default: the model's default calibration)")
    ap.add_argument("--quick", action="store_true", help="the small evaluation set (a smoke test, not a result)")
    part = ap.add_mutually_exclusive_group()
    part.add_argument("--matrix-only", action="store_true")
    part.add_argument("--curve-only", action="store_true")
    ap.add_argument("--out", default=None, help="the results file (default <runs root>/calibration/"
                                                "calibration-<model>.json)")
    ap.add_argument("--fresh", action="store_true", help="start over: ignore the cells already in --out")
    args = ap.parse_args(argv)
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine
    command = ".venv/bin/python benchmarks/calibration.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    from oats.errors import OatsError
    try:
        return run(args, command.strip())
    except (OatsError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def run(args, command: str) -> int:
    t_start = time.perf_counter()
    import torch

    from oats import corpora, data
    from oats.compress.pipeline import compress_model
    from oats.config import OatsConfig
    from oats.evaluation import PRIMARY_METRIC, Evaluator, per_domain
    from oats.methods import registry
    from oats.models import zoo
    from oats.runner.request import slug
    from oats.runs.folders import runs_root

    methods = _names(args.methods)
    for m in methods:
        registry.get(m)  # an unknown method is one line, before the model loads
    if not 0 < args.compression < 1:
        raise ValueError(f"--compression must be in (0, 1), got {args.compression}")
    out = Path(args.out) if args.out else runs_root() / "calibration" / f"calibration-{slug(args.model)}.json"
    study = None if args.fresh else load_study(out)  # a file that is no study: one line, before the model loads
    t_load = time.perf_counter()
    loaded = zoo.load_model(args.model)
    load_s = time.perf_counter() - t_load
    task = loaded.task
    kind = "images" if task == "vision" else "text"
    domains = _names(args.domains) if args.domains else list(corpora.domains(kind)) + [MIX]
    domains = [corpora.check_domain(d, kind) for d in domains]
    sizes = _positive_ints(args.sizes, "--sizes") if args.sizes else list(DEFAULT_SIZES[task])
    default_n = {"causal-lm": data.LM_N_SAMPLES, "encoder": data.ENCODER_N_SAMPLES,
                 "vision": data.VISION_N_SAMPLES}[task]
    matrix_n = (_positive_ints(str(args.calib_samples), "--calib-samples")[0] if args.calib_samples is not None
                else default_n)
    seq_len = data.LM_SEQ_LEN if task == "causal-lm" else (data.ENCODER_MAX_LENGTH if task == "encoder" else None)
    unit = {"causal-lm": f"windows of {seq_len} tokens", "encoder": "sentences",
            "vision": "crops"}[task]
    metric, higher = PRIMARY_METRIC[task]
    evaluator = Evaluator(loaded, quick=args.quick)
    cfg = OatsConfig(compression=args.compression, rank_ratio=loaded.default_rank_ratio)
    header = {"study": STUDY, "version": VERSION, "model": args.model, "task": task, "metric": metric,
              "higher_is_better": higher, "compression": args.compression,
              "rank_ratio": loaded.default_rank_ratio, "seq_len": seq_len, "seed": 0, "matrix_samples": matrix_n,
              "quick": bool(args.quick), "evaluation": evaluator.settings, "unit": unit,
              "eval_domains": list(evaluator.domains), "config": cfg.to_dict(),
              # what each method really ran with (its own defaults filled in, e.g. the Gram shrinkage)
              "method_configs": {m: registry.get(m).resolved(cfg).to_dict() for m in methods}}
    if study is not None:
        why = mismatch(study, json.loads(json.dumps(header)))
        if why:
            raise ValueError(f"{out} holds a study with other settings ({why}): give another --out, or --fresh "
                             "to replace it")
    keys = plan(methods, domains, matrix_n, sizes, matrix=not args.curve_only, curve=not args.matrix_only)
    if study is None:
        study = {**header, "cells": [], "dense": None, "sessions": [],
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    todo = pending(keys, study)
    cpu = cpu_name()
    session = {"command": command, "cpu": cpu, "torch_threads": torch.get_num_threads(), "seconds": 0.0,
               "cells": 0, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if todo or study.get("dense") is None:  # a rerun with nothing left to do leaves the file as it is
        study["sessions"].append(session)
        study["cpu"] = cpu
        study["command"] = command
    print(f"{args.model} ({task}), ρ {args.compression:g}, κ {loaded.default_rank_ratio:g}, loaded in {load_s:.1f} s; "
          f"{cpu}, {torch.get_num_threads()} torch threads; {len(keys)} cells planned, "
          f"{len(keys) - len(todo)} already in {out}", flush=True)

    def save():
        session["seconds"] = time.perf_counter() - t_start
        study["total_s"] = total_seconds(study)
        study["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        save_study(out, study)

    dense = copy.deepcopy(loaded.model)  # pristine: every run compresses a copy of it
    t0 = time.perf_counter()
    ref = evaluator.reference(dense)
    if study.get("dense") is None:
        m = evaluator.metrics(dense, ref)
        study["dense"] = {"per_domain": per_domain(m, metric), "mean": m[metric], "metrics": m,
                          "eval_s": time.perf_counter() - t0}
        save()
    d = study["dense"]
    print(f"dense: {metric} {d['mean']:.4g} (" + ", ".join(f"{k} {v:.4g}" for k, v in d["per_domain"].items())
          + ")", flush=True)

    batches_cache: dict[tuple, list] = {}
    for i, (method, domain, n) in enumerate(todo, 1):
        if (domain, n) not in batches_cache:
            batches_cache.clear()
            batches_cache[(domain, n)] = data.calibration_batches(loaded, n_samples=n, domain=domain)
        batches = batches_cache[(domain, n)]
        tokens = count_tokens(batches, loaded.model)
        t0 = time.perf_counter()
        compressed = compress_model(copy.deepcopy(dense), batches, cfg, method=method, model_name=args.model)
        compress_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with compressed.use_mode("both"):
            m = evaluator.metrics(compressed.model, ref)
        eval_s = time.perf_counter() - t0
        cell = {"method": method, "rank_ratio": registry.used_rank_ratio(method, cfg), "calib_domain": domain,
                "calib_samples": n, "calib_tokens": tokens, "per_domain": per_domain(m, metric), "mean": m[metric],
                "metrics": m, "compress_s": compress_s, "eval_s": eval_s, "cpu": cpu}
        add_cell(study, cell)
        session["cells"] += 1
        save()
        print(f"[{i}/{len(todo)}] {method}, calibrated on {domain}, {n} {unit} ({tokens} tokens): compressed in "
              f"{compress_s:.1f} s; {metric} {cell['mean']:.4g} ("
              + ", ".join(f"{k} {v:.4g}" for k, v in cell["per_domain"].items()) + ")", flush=True)
        del compressed
        gc.collect()
    if session in study["sessions"]:
        save()
    print("\n" + report(study))
    print(f"this session: {session['seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
