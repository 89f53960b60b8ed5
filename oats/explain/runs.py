"""Runs and sweeps, summarised from manifests and sweep tables (no model load, no plotting):
a run's headline numbers, per-block times, per-layer errors of several runs, and a sweep's
metric series."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from oats.runs.info import RunInfo


def run_summary(info: RunInfo) -> dict:
    """Headline numbers of a run from its manifest (no model load)."""
    errs = sorted(l.scaled_error for l in info.layers)
    return {"params_dense": info.params_dense, "params_kept": info.params_kept,
            "compression": info.compression_achieved, "matrices": len(info.layers), "blocks": len(info.blocks),
            "median_scaled_error": errs[len(errs) // 2] if errs else float("nan"),
            "total_s": info.timings.get("total_s"), "calibration_tokens": info.calibration.get("tokens")}


def block_times(info: RunInfo) -> list[dict]:
    """Per block: seconds spent collecting statistics and decomposing."""
    return [{"block": b.index, "statistics_s": b.stats_time_s, "decompose_s": b.decompose_time_s,
             "total_s": b.stats_time_s + b.decompose_time_s}
            for b in sorted(info.blocks, key=lambda b: b.index)]


def layer_errors_from_manifests(folders: Iterable[str | Path]) -> list[dict]:
    """Per-layer scaled and output errors of several runs, for comparison (manifests only)."""
    rows = []
    for f in folders:
        info = RunInfo.read(f)
        label = f"{Path(f).name}"
        for l in info.layers:
            rows.append({"run": label, "method": info.method, "compression": info.config.compression,
                         "rank_ratio": info.rank_ratio, "layer": l.qualname, "block": l.block, "name": l.name,
                         "scaled_error": l.scaled_error, "output_error": l.output_error})
    return rows


SWEEP_META = ("model", "method", "compression", "rank_ratio", "sparsity", "allocation", "mode", "run",
              "compress_time_s", "eval_time_s")


def metric_columns(rows: list[dict]) -> list[str]:
    """Numeric columns of sweep rows that are metrics (not settings or bookkeeping)."""
    cols: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k not in SWEEP_META and isinstance(v, (int, float)) and not isinstance(v, bool):
                cols[k] = None
    return list(cols)


def sweep_series(rows: list[dict], metric: str) -> dict[str, tuple[list[float], list[float]]]:
    """{"<method> · <mode>": (compression rates, metric values)} sorted by rate.

    Dense rows (mode "dense") have no compression rate of their own: they become one series
    "dense" spanning the rates seen, so the curves have their reference line.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    dense: list[float] = []
    rates = sorted({float(r["compression"]) for r in rows
                    if r.get("mode") != "dense" and isinstance(r.get("compression"), (int, float))})
    for r in rows:
        v = r.get(metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(float(v)):
            continue
        if r.get("mode") == "dense":
            dense.append(float(v))
            continue
        if not isinstance(r.get("compression"), (int, float)):
            continue
        key = f"{r.get('method', '?')} · {r.get('mode', '?')}"
        series.setdefault(key, []).append((float(r["compression"]), float(v)))
    out = {k: ([x for x, _ in sorted(v)], [y for _, y in sorted(v)]) for k, v in sorted(series.items())}
    if dense and rates:
        out["dense"] = ([rates[0], rates[-1]], [float(np.mean(dense))] * 2)
    return out


def sweep_evaluation(rows: list[dict], run_name: str) -> dict[str, dict[str, float]] | None:
    """{mode: {metric: value}} of one run from a sweep table (with the sweep's dense row), or
    None when the table has no row of that run."""
    metrics = metric_columns(rows)
    out = {r["mode"]: {k: r[k] for k in metrics if isinstance(r.get(k), (int, float))}
           for r in rows if r.get("run") == run_name}
    if not out:
        return None
    dense = next((r for r in rows if r.get("mode") == "dense"), None)
    if dense is not None:
        out = {"dense": {k: dense[k] for k in metrics if isinstance(dense.get(k), (int, float))}, **out}
    return out
