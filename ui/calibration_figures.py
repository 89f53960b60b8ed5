"""The Calibration page's data and figures: a calibration study (the JSON file
``benchmarks/calibration.py`` writes) found, read strictly, and drawn as the calibration
matrix (calibration domain × evaluation domain, a heatmap) and the tokens curve (quality on
each evaluation domain against calibration tokens, one panel per method).

Study files come from two places: the project's own results, committed under
``benchmarks/results/calibration-*.json``, and the user's, under
``<runs root>/calibration/*.json`` (the benchmark's default output). A user's file is treated as
untrusted input: read through ``oats.untrusted``, its shape checked, any problem one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from oats import corpora, untrusted
from oats.errors import DataError
from ui.charts import layout, log_axis, safe_colorscale
from ui.names import column_title

STUDY = "oats-calibration-study"
"""The ``study`` field of a calibration study file."""
MIX = corpora.MIX
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
"""The project's committed studies: ``calibration-<model>.json``."""
STUDY_DIR = "calibration"
"""The user's studies: ``<runs root>/calibration/*.json``."""
MAX_STUDY_BYTES = 8 * 1024**2
"""A study of every method at every size is a few hundred kB."""
COMMAND = ".venv/bin/python benchmarks/calibration.py --model minilm-l6"
"""What to run when there is no study yet."""
VIRIDIS = safe_colorscale("Viridis")
DOMAIN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


# ----------------------------------------------------------------------------- finding and reading


def study_files(root: str | Path, results_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """(path, "yours" | "committed") of every study file: the user's under ``<root>/calibration``
    (newest first), then the committed ones in ``results_dir`` (default ``RESULTS_DIR``; by name)."""
    def listing(folder: Path, pattern: str) -> list[Path]:
        try:
            return [p for p in folder.glob(pattern) if p.is_file()] if folder.is_dir() else []
        except OSError:
            return []

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    yours = sorted(listing(Path(root) / STUDY_DIR, "*.json"), key=mtime, reverse=True)
    committed = sorted(listing(Path(RESULTS_DIR if results_dir is None else results_dir), "calibration-*.json"))
    return [(p, "yours") for p in yours] + [(p, "committed") for p in committed]


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _values(obj, what: str) -> dict:
    if not isinstance(obj, dict) or not all(isinstance(k, str) and _number(v) for k, v in obj.items()):
        raise DataError(f"{what} is not a table of domain: number")
    return obj


def check_study(study, name: str = "the study") -> dict:
    """``study`` when it has the shape ``benchmarks/calibration.py`` writes; DataError (one line)
    naming the first thing wrong otherwise."""
    def bad(why: str) -> DataError:
        return DataError(f"{name} is not a calibration study ({why}): run benchmarks/calibration.py again")

    if not isinstance(study, dict) or study.get("study") != STUDY:
        raise bad("no 'study' marker")
    for key, kind in (("model", str), ("metric", str), ("higher_is_better", bool), ("eval_domains", list),
                      ("cells", list), ("matrix_samples", int)):
        if not isinstance(study.get(key), kind) or (kind is int and isinstance(study.get(key), bool)):
            raise bad(f"'{key}' missing or not a {kind.__name__}")
    if not study["eval_domains"] or not all(isinstance(d, str) for d in study["eval_domains"]):
        raise bad("'eval_domains' is not a list of names")
    try:
        for i, c in enumerate(study["cells"]):
            if not isinstance(c, dict):
                raise DataError(f"cell {i} is not an object")
            if not isinstance(c.get("method"), str) or not isinstance(c.get("calib_domain"), str):
                raise DataError(f"cell {i} has no method or calibration domain")
            for key in ("calib_samples", "calib_tokens"):
                v = c.get(key)
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise DataError(f"cell {i}'s '{key}' is not a whole number")
            _values(c.get("per_domain"), f"cell {i}'s per_domain")
            if not _number(c.get("mean")):
                raise DataError(f"cell {i}'s mean is not a number")
        dense = study.get("dense")
        if dense is not None:
            if not isinstance(dense, dict) or not _number(dense.get("mean")):
                raise DataError("the dense row is not a number")
            _values(dense.get("per_domain", {}), "the dense per_domain")
    except DataError as e:
        raise bad(str(e)) from None
    return study


def load_study(path: str | Path) -> dict:
    """The study in ``path``, read strictly (``oats.untrusted.read_json``) and checked; DataError otherwise."""
    try:
        obj = untrusted.read_json(path, MAX_STUDY_BYTES)
    except untrusted.BadFile as e:
        raise DataError(f"'{Path(path).name}' cannot be read ({e}): run benchmarks/calibration.py again") from None
    except OSError as e:
        raise DataError(f"'{Path(path).name}' cannot be read ({e.strerror or type(e).__name__})") from None
    return check_study(obj, f"'{Path(path).name}'")


# ----------------------------------------------------------------------------- the study's tables


def methods(study: dict) -> list[str]:
    """The methods of a study, in the order they were measured."""
    return list(dict.fromkeys(c["method"] for c in study["cells"]))


def _cell(study: dict, method: str, domain: str, samples: int) -> dict | None:
    for c in study["cells"]:
        if (c["method"], c["calib_domain"], c["calib_samples"]) == (method, domain, samples):
            return c
    return None


def calib_domains(study: dict) -> list[str]:
    """The matrix's calibration domains: the evaluation domains' order, the mix last."""
    seen = list(dict.fromkeys(c["calib_domain"] for c in study["cells"]
                              if c["calib_samples"] == study["matrix_samples"]))
    order = [d for d in study["eval_domains"] if d in seen] + ([MIX] if MIX in seen else [])
    return order + [d for d in seen if d not in order]


def columns(study: dict) -> list[str]:
    """Evaluation columns: every evaluation domain, then the mean."""
    return list(study["eval_domains"]) + ["mean"]


def _values_of(row: dict | None, cols: list[str]) -> list[float | None]:
    if row is None:
        return [None] * len(cols)
    per = row.get("per_domain") or {}
    return [row.get("mean") if c == "mean" else per.get(c) for c in cols]


@dataclass
class Matrix:
    """One method's calibration matrix: ``values[i][j]`` is the metric on evaluation column
    ``cols[j]`` after calibrating on ``rows[i]`` (None where the cell was not measured);
    ``dense[j]`` the dense model's value there."""

    method: str
    rows: list[str]
    cols: list[str]
    values: list[list[float | None]]
    dense: list[float | None]


def matrix(study: dict, method: str) -> Matrix:
    cols = columns(study)
    rows = [d for d in calib_domains(study) if _cell(study, method, d, study["matrix_samples"]) is not None]
    values = [_values_of(_cell(study, method, d, study["matrix_samples"]), cols) for d in rows]
    return Matrix(method, rows, cols, values, _values_of(study.get("dense"), cols))


def curve(study: dict, method: str) -> tuple[list[int], list[int], dict[str, list[float | None]]]:
    """(samples, tokens, {column: values}) of one method's tokens curve: calibrated on the mix,
    smallest size first."""
    cells = sorted((c for c in study["cells"] if c["method"] == method and c["calib_domain"] == MIX),
                   key=lambda c: c["calib_samples"])
    cols = columns(study)
    by_col = {c: [v[j] for v in (_values_of(cell, cols) for cell in cells)] for j, c in enumerate(cols)}
    return [c["calib_samples"] for c in cells], [c["calib_tokens"] for c in cells], by_col


def best_index(values: list[float | None], higher_is_better: bool) -> int | None:
    """Index of the best number in ``values`` (None when there is none)."""
    cand = [(v, i) for i, v in enumerate(values) if v is not None]
    if not cand:
        return None
    return (max if higher_is_better else min)(cand)[1]


def table_rows(study: dict) -> list[dict]:
    """The matrix of every method as table rows (dense first): method, calibrated on, one column
    per evaluation domain, mean."""
    cols = columns(study)
    out = [{"method": "dense", "calibrated on": "-", **dict(zip(cols, _values_of(study.get("dense"), cols)))}]
    for m in methods(study):
        mat = matrix(study, m)
        out += [{"method": m, "calibrated on": r, **dict(zip(cols, v))} for r, v in zip(mat.rows, mat.values)]
    return out


def curve_rows(study: dict) -> list[dict]:
    """The tokens curve of every method as table rows."""
    out = []
    for m in methods(study):
        samples, tokens, by_col = curve(study, m)
        for i, (n, t) in enumerate(zip(samples, tokens)):
            out.append({"method": m, "samples": n, "tokens": t, **{c: v[i] for c, v in by_col.items()}})
    return out


def label(domain: str) -> str:
    """A domain's title for the charts ("mean" and "mix" as they are)."""
    return "mix of all" if domain == MIX else ("mean" if domain == "mean" else corpora.title(domain))


def _duration(seconds: float) -> str:
    seconds = float(seconds or 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def describe(study: dict) -> str:
    """What a study was measured on, how long it took and where, in plain words (the page
    escapes it and shows ``commands(study)`` below it)."""
    ev = study.get("evaluation") if isinstance(study.get("evaluation"), dict) else {}
    on = ev.get("text") or ev.get("images") or "the held-out evaluation parts of " + ", ".join(study["eval_domains"])
    sessions = [s for s in study.get("sessions", []) if isinstance(s, dict)]
    total = sum(float(s.get("seconds") or 0.0) for s in sessions if isinstance(s.get("seconds"), (int, float)))
    cpus = list(dict.fromkeys(str(s.get("cpu")) for s in sessions if s.get("cpu"))) or [str(study.get("cpu", "?"))]
    threads = list(dict.fromkeys(s.get("torch_threads") for s in sessions if s.get("torch_threads")))
    unit = study.get("unit", "samples")
    rho, kappa = study.get("compression"), study.get("rank_ratio")
    name = column_title(study["metric"])
    parts = [f"{name} of {study['model']} at ρ {rho:g}" if isinstance(rho, (int, float))
             else f"{name} of {study['model']}"]
    if isinstance(kappa, (int, float)):
        parts[0] += f", κ {kappa:g} for the methods with a low-rank term"
    parts.append(f"measured on {on}" + (" (quick evaluation set)" if study.get("quick") else ""))
    parts.append(f"matrix calibrated on {study['matrix_samples']} {unit} of one domain (or the mix)")
    made = "made by the command below" if commands(study) else "made by benchmarks/calibration.py"
    parts.append(f"{len(study['cells'])} runs, {made}, in {_duration(total)} on {', '.join(cpus)}"
                 + (f" ({', '.join(str(t) for t in threads)} torch threads)" if threads else ""))
    return "; ".join(parts) + "."


def commands(study: dict) -> list[str]:
    """The commands that made the study, in order (a resumed study may have several)."""
    sessions = [s for s in study.get("sessions", []) if isinstance(s, dict)]
    return list(dict.fromkeys(str(s["command"]) for s in sessions if s.get("command")))


# ----------------------------------------------------------------------------- figures


def _fmt(v: float | None, higher_is_better: bool) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if higher_is_better else (f"{v:.2f}" if v < 1e4 else f"{v:.3g}")


def relative_scale(metric: str, higher_is_better: bool) -> bool:
    """Whether the heatmap colours a value by its ratio to dense on a log scale (perplexity: its
    domains differ by 10×, so raw values would colour the domain, not the calibration)."""
    return not higher_is_better


RATIO_TICKS = (1.0, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1e3, 1e4, 1e5, 1e6)


def ratio_ticks(ratios) -> list[float]:
    """Colour-bar ticks for ratios to dense on a log scale: the round ratios (1.1×, 1.5×, 2×,
    ...) inside their range, or four ratios spread over it when fewer than two fall inside."""
    r = [float(x) for x in ratios if x is not None and math.isfinite(x) and x > 0]
    if not r:
        return []
    lo, hi = min(r), max(r)
    inside = [t for t in RATIO_TICKS if lo <= t <= hi]
    if len(inside) >= 2:
        return inside
    if hi / lo < 1.0001:
        return [float(f"{lo:.3g}")]
    return list(dict.fromkeys(float(f"{lo * (hi / lo) ** (k / 3):.3g}") for k in range(4)))


def matrix_figure(study: dict, method: str) -> go.Figure:
    """The calibration matrix of one method: calibration domain (rows) × evaluation domain
    (columns, then the mean), each cell annotated with its value; the best calibration of
    each column in bold. Perplexity is coloured by its ratio to dense on a log scale; a
    fidelity (cosine) by its value."""
    higher = bool(study["higher_is_better"])
    rel = relative_scale(study["metric"], higher)
    metric = column_title(study["metric"])
    mat = matrix(study, method)
    z, text = [], []
    best = [best_index([row[j] for row in mat.values], higher) for j in range(len(mat.cols))]
    for i, row in enumerate(mat.values):
        zr, tr = [], []
        for j, v in enumerate(row):
            d = mat.dense[j]
            ratio = v / d if v is not None and d else None
            zr.append(None if v is None else (math.log10(ratio) if rel and ratio and ratio > 0 else
                                              (None if rel else v)))
            t = _fmt(v, higher) + (f"<br>{ratio:.2f}× dense" if rel and ratio else "")
            tr.append(f"<b>{t}</b>" if best[j] == i else t)
        z.append(zr)
        text.append(tr)
    colorbar = dict(title=dict(text=f"{metric} ÷ dense" if rel else metric, side="right"))
    if rel:
        ticks = ratio_ticks([10 ** x for r in z for x in r if x is not None])
        if ticks:
            colorbar.update(tickmode="array", tickvals=[math.log10(t) for t in ticks],
                            ticktext=[f"{t:g}×" for t in ticks])
    fig = go.Figure(go.Heatmap(
        z=z, x=[label(c) for c in mat.cols], y=[label(r) for r in mat.rows], text=text, texttemplate="%{text}",
        colorscale=VIRIDIS, reversescale=not higher, colorbar=colorbar, xgap=2, ygap=2,
        hovertemplate="calibrated on %{y}<br>evaluated on %{x}<br>" + metric + " %{text}<extra></extra>"))
    fig.update_xaxes(title_text="evaluated on (held-out part)", side="bottom")
    fig.update_yaxes(title_text="calibrated on", autorange="reversed")
    better = "higher" if higher else "lower"
    return layout(fig, f"Calibration matrix: {method}, {metric} ({better} is better)",
                   height=160 + 60 * max(len(mat.rows), 3))


def curve_figure(study: dict) -> go.Figure:
    """The tokens curve: one panel per method, x calibration tokens (log axis), one line per
    evaluation domain and a dashed one for the mean (perplexity on a log axis); the dense value
    of each domain is given in the hover text."""
    higher = bool(study["higher_is_better"])
    metric = column_title(study["metric"])
    ms = methods(study) or ["(none)"]
    fig = make_subplots(rows=1, cols=len(ms), shared_yaxes=True, subplot_titles=ms, horizontal_spacing=0.03)
    cols = columns(study)
    dense = dict(zip(cols, _values_of(study.get("dense"), cols)))
    ys_all = []
    for k, m in enumerate(ms, 1):
        samples, tokens, by_col = curve(study, m)
        for j, c in enumerate(cols):
            mean = c == "mean"
            color = "black" if mean else DOMAIN_COLORS[j % len(DOMAIN_COLORS)]
            d = dense.get(c)
            fig.add_trace(go.Scatter(
                x=tokens, y=by_col[c], name=label(c), legendgroup=c, showlegend=k == 1, mode="lines+markers",
                line=dict(color=color, dash="dash" if mean else None, width=3 if mean else 2),
                customdata=samples,
                hovertemplate=(f"{m}, evaluated on {label(c)}<br>%{{x}} calibration tokens (%{{customdata}} "
                               f"{study.get('unit', 'samples')})<br>{metric} %{{y:.4g}}"
                               + (f" (dense {d:.4g})" if d is not None else "") + "<extra></extra>")),
                row=1, col=k)
            ys_all += [v for v in by_col[c] if v is not None]
        if tokens:  # ticks at the measured sizes, each with its count of samples
            log_axis(fig, "x", row=1, col=k, title_text="calibration tokens")
            fig.update_xaxes(tickmode="array", tickvals=list(tokens),
                             ticktext=[f"{t:,}<br>{n} {study.get('unit', 'samples')}" for t, n in zip(tokens, samples)],
                             row=1, col=k)
    better = "higher" if higher else "lower"
    ytitle = f"{metric} ({better} is better)"
    positive = [v for v in ys_all if v > 0]
    if not higher and positive:  # perplexity: exp of a loss, its ratios are what compare
        for k in range(1, len(ms) + 1):
            log_axis(fig, "y", values=positive, row=1, col=k, **({"title_text": ytitle + ", log scale"} if k == 1 else {}))
    else:
        fig.update_yaxes(title_text=ytitle, row=1, col=1)
    return layout(fig, f"Tokens curve: {metric} against calibration tokens, calibrated on the mix", height=440)


def dense_line(study: dict) -> str:
    """The dense model's values, one line."""
    dense = study.get("dense") or {}
    per = dense.get("per_domain") or {}
    higher = bool(study["higher_is_better"])
    vals = ", ".join(f"{label(d)} {_fmt(per.get(d), higher)}" for d in study["eval_domains"])
    return f"dense {column_title(study['metric'])}: {vals}; mean {_fmt(dense.get('mean'), higher)}"
