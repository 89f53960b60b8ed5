"""Figures of the Error budget page: each matrix's error split, energies, block output errors,
convergence, block ablations and a change measured per domain (``oats.explain.budget``; the
Outliers page's interventions use ``domain_change_figure`` too).

Each builder returns a ``plotly.graph_objects.Figure`` with titled axes; shared style in ``ui.charts``.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from oats.evaluation import metric_key, metric_name
from ui.charts import COLORS, bar_label, layout, number


# ----------------------------------------------------------------------------- error budget


def _layer_bars(rows: list[dict], series, barmode: str, ytitle: str, title: str) -> go.Figure:
    """One bar per layer for each (row key, legend name, colour key) of ``series``."""
    x = [r["layer"] for r in rows]
    fig = go.Figure()
    for key, name, color in series:
        fig.add_trace(go.Bar(x=x, y=[r[key] for r in rows], name=name, marker_color=COLORS[color]))
    fig.update_layout(barmode=barmode)
    fig.update_xaxes(title_text="layer (block.name)", type="category")
    fig.update_yaxes(title_text=ytitle)
    return layout(fig, title, height=420)


def error_budget_figure(rows: list[dict]) -> go.Figure:
    """Per layer: scaled error with the sparse term only, the low-rank term only, and both."""
    return _layer_bars(rows, (("sparse_only", "sparse term only", "sparse"),
                              ("lowrank_only", "low-rank term only", "lowrank"),
                              ("both", "sparse + low-rank", "both")),
                       "group", "scaled error ‖W D − X‖ / ‖W D‖", "Scaled error per layer")


def energy_split_figure(rows: list[dict]) -> go.Figure:
    """How ||W D||^2 splits into the sparse term, the low-rank term, the residual and their overlap."""
    return _layer_bars(rows, (("sparse_energy", "‖S‖²", "sparse"), ("lowrank_energy", "‖L‖²", "lowrank"),
                              ("residual_energy", "‖W D − S − L‖²", "residual"),
                              ("interaction", "cross terms 2⟨S, L⟩ + 2⟨S + L, R⟩", "interaction")),
                       "relative", "share of ‖W D‖² (sums to 1)", "Where the scaled weight's energy goes")


def block_error_figure(rows: list[dict]) -> go.Figure:
    """Output error of each block and the mean output error of its layers, along depth."""
    x = [r["block"] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=[r["block_output_error"] for r in rows], mode="lines+markers",
                             name="block output ‖block′(x) − block(x)‖ / ‖block(x)‖ (block′: compressed)"))
    fig.add_trace(go.Scatter(x=x, y=[r["mean_layer_output_error"] for r in rows], mode="lines+markers",
                             name="mean layer output ‖X(W − W')ᵀ‖ / ‖X Wᵀ‖", line=dict(dash="dot")))
    fig.update_xaxes(title_text="block (depth)", dtick=1)
    fig.update_yaxes(title_text="relative output error", rangemode="tozero")
    return layout(fig, "Output error along depth (calibration inputs)", height=380)


def convergence_figure(histories: dict[str, dict], highlight: str | None = None) -> go.Figure:
    """Scaled error per iteration of every layer (from the run's histories)."""
    fig = go.Figure()
    for q, h in histories.items():
        err = h.get("error", [])
        hi = q == highlight
        fig.add_trace(go.Scatter(x=np.arange(1, len(err) + 1), y=err, mode="lines", name=q,
                                 line=dict(width=3 if hi else 1, color="black" if hi else None),
                                 opacity=1.0 if hi or highlight is None else 0.45))
    fig.update_xaxes(title_text="iteration t")
    fig.update_yaxes(title_text="scaled error ‖(W − S' − L') D‖ / ‖W D‖")
    fig = layout(fig, "Convergence of alternating thresholding, every layer", height=420)
    fig.update_layout(showlegend=len(histories) <= 40, legend=dict(orientation="v", yref="paper", y=1, yanchor="top", x=1.02))
    return fig


def ablation_figure(rows: list[dict], metric: str, higher_is_better: bool, measured_on: str | None = None) -> go.Figure:
    """The metric with one block's sparse or low-rank terms off, against dense and compressed;
    ``measured_on``, its subtitle, names the text or images the metric holds for."""
    ref = {r["change"]: r[metric] for r in rows if r["block"] is None and metric in r}
    blocks = [r for r in rows if r["block"] is not None and metric in r]
    fig = go.Figure()
    for change, color in (("low-rank term off", COLORS["sparse"]), ("sparse term off", COLORS["lowrank"])):
        sub = sorted([r for r in blocks if r["change"] == change], key=lambda r: r["block"])
        fig.add_trace(go.Bar(x=[f"block {r['block']}" for r in sub], y=[r[metric] for r in sub],
                             name=f"one block with its {change}", marker_color=color))
    for label, dash in (("dense model", "dot"), ("compressed model", "dash")):
        if label in ref:
            fig.add_hline(y=ref[label], line=dict(dash=dash, color="black", width=1),
                          annotation_text=f"{label}: {ref[label]:.4g}", annotation_position="top left")
    better = "higher is better" if higher_is_better else "lower is better"
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="block whose term is turned off", type="category")
    fig.update_yaxes(title_text=f"{metric_name(metric)} ({better})")
    return layout(fig, f"Per-block ablation: {metric_name(metric)}", height=420, subtitle=measured_on)


def domain_change_figure(labels: list[str], rows: list[dict], references: list[dict], metric: str,
                         higher_is_better: bool, domains: list[str], titles: dict[str, str], title: str,
                         reference_name: str, measured_on: str | None = None) -> go.Figure:
    """One row per entry of ``rows`` (named by ``labels``), one column for the mean of ``metric``
    and one per domain: each cell the value (as text), coloured by how much worse it is than the
    row's reference (``references``, parallel to ``rows``) on that column, in percent of the
    reference (red worse, blue better). A change can hit one domain and spare another."""
    cols = [metric] + [metric_key(metric, d) for d in domains]
    z, text = [], []
    for row, ref in zip(rows, references):
        zr, tr = [], []
        for c in cols:
            v, r = number(row.get(c)), number(ref.get(c))
            ok = v is not None and r is not None and np.isfinite(v) and np.isfinite(r) and r != 0
            zr.append(100.0 * ((r - v) if higher_is_better else (v - r)) / abs(r) if ok else None)
            tr.append("" if row.get(c) is None else bar_label(row.get(c)))
        z.append(zr)
        text.append(tr)
    span = max([abs(v) for zr in z for v in zr if v is not None] + [1e-9])
    fig = go.Figure(go.Heatmap(
        z=z, x=["mean"] + [titles.get(d, d) for d in domains], y=labels, text=text, texttemplate="%{text}",
        colorscale="RdBu_r", zmid=0, zmin=-span, zmax=span,
        colorbar=dict(title=dict(text=f"% worse than<br>{html.escape(reference_name, quote=False)}")),
        hovertemplate="%{y}<br>%{x}: " + html.escape(metric_name(metric), quote=False) + " %{text}<br>%{z:+.3g}% worse than "
                      + html.escape(reference_name, quote=False) + "<extra></extra>"))
    fig.update_xaxes(title_text="mean, then each domain's held-out part", type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return layout(fig, title, height=max(300, 30 * len(labels) + 200), subtitle=measured_on)
