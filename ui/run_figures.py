"""Figures of runs and sweeps (Compress and Compare pages): block times, a run's evaluation
(per domain too), a sweep's curves and runs compared layer by layer (``oats.explain.runs``).

Each builder returns a ``plotly.graph_objects.Figure`` with titled axes; shared style in ``ui.charts``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from oats.evaluation import metric_key, metric_name
from oats.explain import quality
from ui.charts import COLORS, bar_label, layout, log_axis, number


# ----------------------------------------------------------------------------- runs and sweeps


def block_time_figure(rows: list[dict]) -> go.Figure:
    """Seconds per block: statistics collection and decomposition, stacked."""
    x = [r["block"] for r in rows]
    fig = go.Figure([go.Bar(x=x, y=[r["statistics_s"] for r in rows], name="input statistics (forward passes)",
                            marker_color=COLORS["dense"]),
                     go.Bar(x=x, y=[r["decompose_s"] for r in rows], name="decomposition",
                            marker_color=COLORS["W D"])])
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title_text="block", dtick=1)
    fig.update_yaxes(title_text="time (s)")
    return layout(fig, "Time per block", height=360)


VARIANT_NAMES = {"dense": "dense", "both": "sparse + low-rank", "sparse": "sparse only", "lowrank": "low-rank only"}


def _eval_axis(fig: go.Figure, ys, title: str) -> None:
    """The y axis of an evaluation bar chart: log when the values span orders of magnitude
    (``quality.log_range``, the run report's rule too)."""
    fin = [f for f in (number(v) for v in ys) if f is not None and np.isfinite(f)]
    span = quality.log_range(fin)
    if span is not None:
        log_axis(fig, values=fin, title_text=f"{title}, log scale", range=span)
    else:
        fig.update_yaxes(title_text=title)


def evaluation_figure(results: dict[str, dict], metric: str, higher_is_better: bool,
                      measured_on: str | None = None, variants: dict[str, str] | None = None) -> go.Figure:
    """One bar per model variant (dense, both, sparse-only, low-rank-only) for one metric (its
    mean over the domains when there are several); ``measured_on``, its subtitle, names the text
    or images ("on ..."); ``variants``: mode -> its name for this run (a Wanda run's compressed
    model is "sparse", not "sparse + low-rank")."""
    names = variants or VARIANT_NAMES
    modes = [m for m in ("dense", "both", "sparse", "lowrank") if m in results and metric in results[m]]
    ys = [results[m][metric] for m in modes]
    fig = go.Figure(go.Bar(x=[names.get(m, VARIANT_NAMES[m]) for m in modes], y=ys, marker_color=[COLORS[m] for m in modes],
                           text=[bar_label(v) for v in ys], textposition="outside", cliponaxis=False))
    fig.update_xaxes(title_text="model variant")
    _eval_axis(fig, ys, f"{metric_name(metric)}<br>({'higher' if higher_is_better else 'lower'} is better)")
    return layout(fig, f"Evaluation: {metric_name(metric)}", height=360, subtitle=measured_on)


def domain_evaluation_figure(results: dict[str, dict], metric: str, higher_is_better: bool,
                             domains: list[str], titles: dict[str, str], variants: dict[str, str] | None = None,
                             measured_on: str | None = None) -> go.Figure:
    """The metric on each domain's held-out part, one group per domain and one bar per model
    variant (``variants``: mode -> its name; the run's own names)."""
    variants = variants or VARIANT_NAMES
    fig = go.Figure()
    ys_all = []
    for mode in (m for m in ("dense", "both", "sparse", "lowrank") if m in results):
        ys = [results[mode].get(metric_key(metric, d)) for d in domains]
        if all(v is None for v in ys):
            continue
        ys_all += [v for v in ys if v is not None]
        fig.add_trace(go.Bar(x=[titles.get(d, d) for d in domains], y=ys, name=variants.get(mode, mode),
                             marker_color=COLORS[mode], text=[bar_label(v) for v in ys], textposition="outside",
                             cliponaxis=False))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="domain (held-out part)", type="category")
    _eval_axis(fig, ys_all, f"{metric_name(metric)}<br>({'higher' if higher_is_better else 'lower'} is better)")
    return layout(fig, f"Evaluation per domain: {metric_name(metric)}", height=400, subtitle=measured_on)


"""An evaluation chart whose positive values span more than this factor gets a log y axis."""


LOG_SPAN = 100.0
"""A sweep chart whose positive values span more than this factor gets a log y axis."""


def sweep_figure(series: dict[str, tuple[list[float], list[float]]], metric: str,
                 higher_is_better: bool | None = None, measured_on: str | None = None) -> go.Figure:
    """Metric against compression rate, one line per method and model variant; ``measured_on``,
    the subtitle, names the text or images the values hold for (the mean over the domains, or one
    domain)."""
    fig = go.Figure()
    for name, (x, y) in series.items():
        dense = name == "dense"
        fig.add_trace(go.Scatter(x=x, y=y, name=name, mode="lines" if dense else "lines+markers",
                                 line=dict(dash="dot", color=COLORS["dense"]) if dense else None))
    fig.update_xaxes(title_text="compression rate ρ (fraction of parameters removed)", tickformat=".0%")
    note = "" if higher_is_better is None else f" ({'higher' if higher_is_better else 'lower'} is better)"
    name = metric_name(metric)
    fig.update_yaxes(title_text=f"{name}{note}")
    ys = [v for _, y in series.values() for v in y if v is not None and np.isfinite(v)]
    if ys and min(ys) > 0 and max(ys) / min(ys) > LOG_SPAN:
        # a collapsed variant (perplexity 1e7) would flatten every other line to zero
        log_axis(fig, values=ys, title_text=f"{name}{note}, log scale")
    return layout(fig, f"{name} against compression rate", height=440, subtitle=measured_on)


def layer_compare_figure(rows: list[dict], value: str = "scaled_error") -> go.Figure:
    """Per-layer error of several runs, one line per run."""
    fig = go.Figure()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    for run in dict.fromkeys(r["run"] for r in rows):
        by = {r["layer"]: r[value] for r in rows if r["run"] == run}
        fig.add_trace(go.Scatter(x=layers, y=[by.get(l) for l in layers], mode="lines+markers", name=run))
    label = {"scaled_error": "scaled error ‖(W − W') D‖ / ‖W D‖",
             "output_error": "output error ‖X(W − W')ᵀ‖ / ‖X Wᵀ‖"}.get(value, value)
    fig.update_xaxes(title_text="layer (block.name)", type="category")
    fig.update_yaxes(title_text=label, rangemode="tozero")
    return layout(fig, "Per-layer error, run by run", height=440)
