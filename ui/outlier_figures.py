"""Figures of the Outliers page: massive activations through depth and their interventions,
per-channel second moments, outlier counts, column shares and the sparse mask
(``oats.explain.activations``, ``oats.explain.outliers``).

Each builder returns a ``plotly.graph_objects.Figure`` with titled axes; shared style in ``ui.charts``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from oats.explain.common import Heat, downsample
from oats.explain.outliers import ColumnShares
from oats.evaluation import metric_name
from ui.charts import MAGMA, INFERNO, COLORS, layout, log_axis


# ----------------------------------------------------------------------------- massive activations

MODE_NAMES = {"dense": "dense", "both": "compressed"}


def massive_depth_figure(prof) -> go.Figure:
    """The three largest |h| of every block output, and its median, dense vs compressed (log scale)."""
    fig = go.Figure()
    for mode, p in prof.modes.items():
        color = "#b0b0b0" if mode == "dense" else COLORS["both"]
        width = 6 if mode == "dense" else 2  # dense drawn wide underneath: both stay visible where they agree
        x = np.arange(p.top.shape[0])
        for r, dash in zip(range(p.top.shape[1]), ("solid", "dash", "dot")):
            fig.add_trace(go.Scatter(
                x=x, y=p.top[:, r], mode="lines+markers", name=f"{MODE_NAMES.get(mode, mode)}: top-{r + 1}",
                line=dict(color=color, dash=dash, width=width), customdata=[[prof.tokens[int(t)], int(c)] for t, c in
                                                               zip(p.top_token[:, r], p.top_channel[:, r])],
                hovertemplate="block %{x}: |h| %{y:.3g}<br>token %{customdata[0]}, channel %{customdata[1]}<extra></extra>"))
        fig.add_trace(go.Scatter(x=x, y=p.median, mode="lines", name=f"{MODE_NAMES.get(mode, mode)}: median",
                                 line=dict(color=color, dash="longdashdot", width=width / 2)))
    fig.update_xaxes(title_text="block (output)", dtick=1)
    log_axis(fig, title_text="activation magnitude |h| (log scale)")
    return layout(fig, "Largest activation magnitudes along depth", height=440)


MARKED = 3
"""The largest cells of a token x channel map that are circled and named."""


def token_channel_figure(prof, block: int) -> go.Figure:
    """log10 |h| of one block's output, tokens x channels, dense and compressed side by side.

    The colours run from the block's median |h| (darkest, and everything below it) to its largest
    (brightest), on one scale for both panels: a massive activation is one cell among thousands
    (minilm-l6's channel 99 of [CLS] is about 1.5 px wide at 384 channels), so on a four-decade
    scale it was no brighter than the many ordinary cells near it. The ``MARKED`` largest cells
    of each panel are circled and the largest is named ("ch 99"), so it is found at any width."""
    modes = list(prof.modes)
    fig = make_subplots(rows=1, cols=len(modes), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[MODE_NAMES.get(m, m) for m in modes])
    hi = max(float(np.log10(max(prof.modes[m].magnitudes[block].max(), 1e-12))) for m in modes)
    median = min(float(np.median(prof.modes[m].magnitudes[block])) for m in modes)
    lo = min(float(np.log10(max(median, 1e-6))), hi - 0.5)
    for i, m in enumerate(modes):
        p = prof.modes[m]
        z = np.log10(np.maximum(p.magnitudes[block], 1e-6))
        fig.add_trace(go.Heatmap(z=z, x=np.arange(z.shape[1]), y=prof.tokens, colorscale=INFERNO, zmin=lo,
                                 zmax=hi, showscale=i == len(modes) - 1,
                                 colorbar=dict(title=dict(text="log₁₀ |h|<br>(from the median)")),
                                 hovertemplate="token %{y}<br>channel %{x}<br>log₁₀ |h| %{z:.2f}<extra></extra>"),
                      row=1, col=i + 1)
        n = min(MARKED, p.top.shape[1])
        chans = [int(c) for c in p.top_channel[block, :n]]
        toks = [prof.tokens[int(t)] for t in p.top_token[block, :n]]
        fig.add_trace(go.Scatter(x=chans, y=toks, mode="markers", name=f"largest |h|, {MODE_NAMES.get(m, m)}",
                                 marker=dict(symbol="circle-open", size=16, color="#00e5ff", line=dict(width=2)),
                                 showlegend=False, customdata=[float(v) for v in p.top[block, :n]],
                                 hovertemplate="token %{y}<br>channel %{x}<br>|h| %{customdata:.3g}<extra></extra>"),
                      row=1, col=i + 1)
        fig.add_annotation(x=chans[0], y=toks[0], text=f"ch {chans[0]}: {float(p.top[block, 0]):.3g}",
                           showarrow=True, arrowcolor="#00e5ff", ax=40, ay=-28, font=dict(color="#00e5ff", size=12),
                           bgcolor="rgba(0,0,0,0.6)", row=1, col=i + 1)
        fig.update_xaxes(title_text="channel", row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed", type="category", tickfont=dict(size=9), row=1, col=1)
    fig.update_yaxes(title_text="token", row=1, col=1)
    return layout(fig, f"Block {block} output: |h| per token and channel",
                   height=min(900, max(380, 12 * len(prof.tokens) + 200)))


def intervention_figure(rows: list[dict], metric: str, higher_is_better: bool,
                        measured_on: str | None = None) -> go.Figure:
    """The metric of the dense and compressed model without and with each intervention;
    ``measured_on``, its subtitle, names the text or images the metric holds for."""
    fig = go.Figure()
    for model, color in (("dense", COLORS["dense"]), ("compressed", COLORS["both"])):
        sub = [r for r in rows if r["model"] == model and metric in r]
        fig.add_trace(go.Bar(x=[r["intervention"] for r in sub], y=[r[metric] for r in sub], name=f"{model} model",
                             marker_color=color, text=[f"{r[metric]:.4g}" for r in sub], textposition="outside"))
    better = "higher is better" if higher_is_better else "lower is better"
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="intervention on a block's input", type="category")
    fig.update_yaxes(title_text=f"{metric_name(metric)} ({better})")
    return layout(fig, f"Outlier-channel intervention: {metric_name(metric)}", height=420, subtitle=measured_on)


# ----------------------------------------------------------------------------- outliers


def moments_heatmap(labels: list[str], m2: np.ndarray, max_cols: int = 1024) -> go.Figure:
    """Inputs x channels of log10 E[x_j^2]; wide inputs are max-pooled to ``max_cols`` columns."""
    heat = downsample(np.log10(np.maximum(m2, 1e-12)), max_rows=len(labels), max_cols=max_cols, how="max")
    width = m2.shape[1]
    pooled = f" (max over {heat.factor[1]} channels per column)" if heat.factor[1] > 1 else ""
    fig = go.Figure(go.Heatmap(z=heat.z, x=heat.cols, y=labels, colorscale=MAGMA,
                               colorbar=dict(title=dict(text="log₁₀ E[x²]")),
                               hovertemplate="input %{y}<br>channel %{x}<br>log₁₀ E[x²] %{z:.2f}<extra></extra>"))
    fig.update_xaxes(title_text=f"input channel j (of {width}){pooled}")
    fig.update_yaxes(title_text="layer input (block.layers)", autorange="reversed", type="category",
                     tickmode="array", tickvals=labels, tickfont=dict(size=10))
    return layout(fig, f"Input second moments, {width}-channel inputs", height=max(340, 15 * len(labels) + 180))


def outlier_counts_figure(rows: list[dict], threshold: float) -> go.Figure:
    """Bars: outlier channels per layer input (RMS above threshold x median)."""
    fig = go.Figure()
    for width in dict.fromkeys(r["width"] for r in rows):
        sub = [r for r in rows if r["width"] == width]
        fig.add_trace(go.Bar(x=[r["input"] for r in sub], y=[r["outliers"] for r in sub],
                             name=f"{width}-channel inputs",
                             customdata=[[r["max_ratio"]] for r in sub],
                             hovertemplate="%{x}: %{y} outliers, largest %{customdata[0]:.1f}× median<extra></extra>"))
    fig.update_xaxes(title_text="layer input (block.layers)", type="category")
    fig.update_yaxes(title_text=f"channels with RMS > {threshold:g}× median (count)")
    return layout(fig, "Outlier channels per layer input", height=380)


def column_figure(cs: ColumnShares, threshold: float) -> go.Figure:
    """Per input channel of one matrix: D, column norm of W, and the sparse vs low-rank share."""
    x = np.arange(len(cs.scale))
    out = cs.outliers(threshold)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("input scale D_j = RMS of x_j", "column norm ‖W[:, j]‖",
                                        "share of the column's kept scaled energy: sparse vs low-rank"))
    fig.add_trace(go.Scatter(x=x, y=cs.scale, mode="lines", name="D_j", line=dict(color=COLORS["dense"])), 1, 1)
    fig.add_trace(go.Scatter(x=x[out], y=cs.scale[out], mode="markers", name=f"outlier (> {threshold:g}× median)",
                             marker=dict(color="#ff7f0e", size=8)), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=cs.weight_norm, mode="lines", name="‖W[:, j]‖",
                             line=dict(color=COLORS["W D"])), 2, 1)
    fig.add_trace(go.Bar(x=x, y=cs.sparse_share, name="sparse term", marker_color=COLORS["sparse"],
                         marker_line_width=0), 3, 1)
    fig.add_trace(go.Bar(x=x, y=1 - cs.sparse_share, name="low-rank term", marker_color=COLORS["lowrank"],
                         marker_line_width=0), 3, 1)
    fig.update_layout(barmode="stack", bargap=0)
    log_axis(fig, row=1, col=1, title_text="D_j (log)")
    fig.update_yaxes(title_text="‖W[:, j]‖₂", row=2, col=1)
    fig.update_yaxes(title_text="share (0–1)", range=[0, 1], row=3, col=1)
    fig.update_xaxes(title_text="input channel j", row=3, col=1)
    return layout(fig, f"Layer {cs.qualname}: per input channel", height=720)


def mask_figure(heat: Heat, shape: tuple[int, int], qualname: str) -> go.Figure:
    """The sparse term's mask, pooled: share of entries kept per cell."""
    fr, fc = heat.factor
    note = f" ({fr}×{fc} entries per cell)" if fr * fc > 1 else ""
    fig = go.Figure(go.Heatmap(z=heat.z, x=heat.cols, y=heat.rows, colorscale="Greys", zmin=0, zmax=1,
                               colorbar=dict(title=dict(text="kept share")),
                               hovertemplate="row %{y}, column %{x}<br>kept %{z:.0%}<extra></extra>"))
    fig.update_xaxes(title_text=f"input channel j (of {shape[1]})")
    fig.update_yaxes(title_text=f"output row i (of {shape[0]})", autorange="reversed")
    return layout(fig, f"Sparse mask of {qualname}{note}", height=460)
