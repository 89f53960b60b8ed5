"""Plotly figures for the app, built from ``oats.explain.analysis`` results (arrays, dataclasses, rows).

Each builder returns a ``plotly.graph_objects.Figure`` with titled axes (units where there
are any) and never computes anything heavier than a sort. Heatmaps arrive already pooled.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from plotly.colors import hex_to_rgb, sequential

from oats.explain.common import Heat, downsample
from oats.explain.outliers import ColumnShares
from oats.explain.spectra import LayerSpectra, SpectraOverview
from oats.explain.walkthrough import Snapshot, Walkthrough
from oats.evaluation import metric_key, metric_name
from oats.explain import quality
from oats.explain.heavytail import SHUFFLED, LayerESD, log_density


def safe_colorscale(name: str) -> list[list]:
    """A Plotly sequential scale written as rgb() strings.

    Streamlit's front end rewrites the hex colours #000001..#0000ff (its theme placeholders)
    in any chart; Inferno and Magma start at #000004, whose lowest values then came out
    lavender. rgb() strings are left alone.
    """
    colors = getattr(sequential, name)
    return [[i / (len(colors) - 1), "rgb({}, {}, {})".format(*hex_to_rgb(c))] for i, c in enumerate(colors)]


MAGMA = safe_colorscale("Magma")
INFERNO = safe_colorscale("Inferno")

TEMPLATE = "plotly_white"
# As the default, a new figure takes the template from plotly's cache (about 12 ms a figure);
# naming it in update_layout validates a fresh copy each time (about 100 ms a figure, which
# made figure building most of a page's cost when several people browse at once).
pio.templates.default = TEMPLATE
COLORS = {"W": "#7f7f7f", "W D": "#1f77b4", "L": "#d62728", "W D - S": "#2ca02c",
          "sparse": "#1f77b4", "lowrank": "#d62728", "both": "#2ca02c", "residual": "#9467bd",
          "interaction": "#bcbd22", "dense": "#7f7f7f"}
SPECTRUM_NAMES = {"W": "W (weight)", "W D": "W D (scaled weight)", "L": "L (low-rank term)",
                  "W D - S": "W D − S (what the SVD sees)"}


def _layout(fig: go.Figure, title: str, height: int = 420, subtitle: str | None = None, **kw) -> go.Figure:
    # the legend sits at the bottom of the whole figure, below the axis title however tall
    # the (possibly rotated) tick labels are
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), height=height,
                      margin=dict(l=70, r=30, t=60, b=90),
                      legend=dict(orientation="h", yref="container", y=0.0, yanchor="bottom", x=0.0), **kw)
    if subtitle:  # what the figure holds for (the text it was measured on): literal, never HTML
        fig.update_layout(title_subtitle_text=html.escape(subtitle, quote=False), margin_t=84)
    return fig


# ----------------------------------------------------------------------------- log axes

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _tick_label(v: float) -> str:
    """A tick value as plain digits between 0.001 and 9999, else (m×)10ⁿ."""
    if 1e-3 <= v < 1e4:
        return f"{v:g}"
    e = int(np.floor(np.log10(v) + 1e-9))
    m = round(v / 10.0 ** e)
    power = "10" + str(e).translate(_SUPERSCRIPT)
    return power if m == 1 else f"{m}×{power}"


def log_ticks(values) -> tuple[list[float], list[str]]:
    """Tick values and labels for a log axis over the positive finite ``values``.

    Within two decades: 1, 2, 5 times the powers of ten; up to six decades: the powers of
    ten; wider: every k-th power of ten (at most about seven ticks). Every tick is labelled in
    full ("20", "1000", "10⁷"), never Plotly's bare minor digits ("2, 10k, 5").
    """
    v = []
    for x in np.ravel(np.asarray(values, dtype=object)) if values is not None else []:
        try:
            f = float(x)
        except (TypeError, ValueError):
            continue
        if np.isfinite(f) and f > 0:
            v.append(f)
    if not v:
        return [], []
    lo = int(np.floor(np.log10(min(v)) + 1e-9))
    hi = int(np.ceil(np.log10(max(v)) - 1e-9))
    hi = max(hi, lo + 1)
    decades = hi - lo
    if decades <= 2:
        ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if t <= 10.0 ** hi * 1.0001]
    else:
        step = 1 if decades <= 6 else int(np.ceil(decades / 6))
        ticks = [10.0 ** e for e in range(lo - lo % step, hi + step, step)]
    return ticks, [_tick_label(t) for t in ticks]


def log_axis(fig: go.Figure, axis: str = "y", values=None, row: int | None = None, col: int | None = None,
             secondary_y: bool | None = None, **kw) -> go.Figure:
    """Make one axis logarithmic with readable ticks (``log_ticks``); every log axis of the app uses this.

    ``values`` defaults to the ``axis`` data of the traces already on that subplot, so call it
    after the traces are added.
    """
    where = {k: w for k, w in (("row", row), ("col", col), ("secondary_y", secondary_y)) if w is not None}
    if values is None:
        sel = {k: w for k, w in where.items() if k != "secondary_y"}
        traces = fig.select_traces(**sel) if sel else fig.data
        values = [x for t in traces if getattr(t, axis, None) is not None
                  for x in np.ravel(np.asarray(getattr(t, axis), dtype=object))]
    ticks, text = log_ticks(values)
    update = fig.update_yaxes if axis == "y" else fig.update_xaxes
    if ticks:
        update(type="log", tickmode="array", tickvals=ticks, ticktext=text, **where, **kw)
    else:
        update(type="log", dtick=1, exponentformat="power", **where, **kw)
    return fig


# ----------------------------------------------------------------------------- spectra


def spectrum_figure(sp: LayerSpectra) -> go.Figure:
    """Singular values of W, W D, L and W D - S on a log axis, the chosen rank marked."""
    fig = go.Figure()
    for key in ("W", "W D", "W D - S", "L"):  # L last: it lies on top of W D - S's head
        vals = sp.values[key]
        if len(vals) == 0:
            continue
        share = sp.lowrank_share if key == "L" else sp.captured[key]
        label = (f"{SPECTRUM_NAMES[key]}: holds {share:.0%} of ‖W D‖²" if key == "L"
                 else f"{SPECTRUM_NAMES[key]}: top r hold {share:.0%}")
        fig.add_trace(go.Scatter(x=np.arange(1, len(vals) + 1), y=np.maximum(vals, 1e-12), mode="lines",
                                 name=label, line=dict(color=COLORS[key], width=4 if key == "L" else 2,
                                                       dash="dot" if key == "L" else None)))
    if sp.rank > 0:
        fig.add_vline(x=sp.rank, line=dict(color="black", dash="dash", width=1),
                      annotation_text=f"rank r = {sp.rank}", annotation_position="top right")
    fig.update_xaxes(title_text="singular value index k")
    log_axis(fig, title_text="singular value σ_k (log scale)")
    return _layout(fig, f"Spectra of layer {sp.qualname} ({sp.shape[0]}×{sp.shape[1]})", height=460)


def spectra_overview_figure(ov: SpectraOverview) -> go.Figure:
    """Heatmap of normalised spectra of W D over all matrices, with each chosen rank marked."""
    fig = go.Figure(go.Heatmap(z=ov.heat, x=ov.grid, y=ov.labels, colorscale="Viridis", zmin=-3, zmax=0,
                               colorbar=dict(title=dict(text="log₁₀ σ/σ₁")),
                               hovertemplate="layer %{y}<br>relative index %{x:.2f}<br>log₁₀ σ/σ₁ %{z:.2f}"
                                             "<extra></extra>"))
    fig.add_trace(go.Scatter(x=[r["rank_frac"] for r in ov.rows], y=ov.labels, mode="markers",
                             marker=dict(symbol="line-ns-open", size=10, color="white", line=dict(width=2)),
                             name="chosen rank r / min(d_out, d_in)"))
    fig.update_xaxes(title_text="relative singular value index k / min(d_out, d_in)")
    fig.update_yaxes(title_text="layer (block.name)", autorange="reversed", type="category",
                     tickmode="array", tickvals=ov.labels, tickfont=dict(size=10))
    return _layout(fig, "Normalised spectra of W D, every layer", height=max(460, 15 * len(ov.labels) + 180))


def ranks_figure(ov: SpectraOverview) -> go.Figure:
    """Effective (entropy) and stable rank of W and W D per layer, with the chosen rank."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("effective rank exp(H(σ/Σσ))", "stable rank ‖A‖²_F / ‖A‖²₂"))
    x = [r["layer"] for r in ov.rows]
    for key, color in (("W", COLORS["W"]), ("WD", COLORS["W D"])):
        name = "W" if key == "W" else "W D"
        fig.add_trace(go.Scatter(x=x, y=[r[f"effective_rank_{key}"] for r in ov.rows], mode="lines+markers",
                                 name=f"effective rank of {name}", line=dict(color=color)), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=[r[f"stable_rank_{key}"] for r in ov.rows], mode="lines+markers",
                                 name=f"stable rank of {name}", line=dict(color=color, dash="dot")), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=[r["rank"] for r in ov.rows], mode="lines", name="chosen rank r",
                             line=dict(color=COLORS["L"], dash="dash")), row=1, col=1)
    fig.update_yaxes(title_text="rank (directions)", row=1, col=1)
    log_axis(fig, row=2, col=1, title_text="rank (directions)")
    fig.update_xaxes(title_text="layer (block.name)", type="category", row=2, col=1)
    return _layout(fig, "Effective and stable rank per layer", height=620)


# ----------------------------------------------------------------------------- heavy-tailed spectra

ESD_COLORS = {"W": COLORS["W"], "S + L": COLORS["both"], "S": COLORS["sparse"], "L": COLORS["lowrank"],
              SHUFFLED: "#bbbbbb"}


def esd_figure(e: LayerESD) -> go.Figure:
    """ESDs of W, S + L, S and L (one panel each) on log-log axes, each with its power-law fit
    from x_min on; the shuffled W overlaid on W's panel."""
    keys = ("W", "S + L", "S", "L")
    titles = []
    for k in keys:
        f = e.fits.get(k)
        titles.append(f"{k}: no fit (too few eigenvalues)" if f is None else
                      f"{k}: α = {f.alpha:.2f} ± {f.sigma:.2f}, λ_min = {f.xmin:.3g}, KS D = {f.ks:.3f}")
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, horizontal_spacing=0.1, vertical_spacing=0.16)
    for i, k in enumerate(keys):
        row, col = i // 2 + 1, i % 2 + 1
        panels = [SHUFFLED, k] if k == "W" else [k]
        for key in panels:
            x, d = log_density(e.eigenvalues[key])
            if not len(x):
                continue
            fig.add_trace(go.Scatter(x=x, y=d, mode="lines+markers", name=f"ESD of {key}",
                                     line=dict(color=ESD_COLORS[key], width=1.5), marker=dict(size=5),
                                     legendgroup=key, showlegend=True), row=row, col=col)
            f = e.fits.get(key)
            if f is not None and key != SHUFFLED:
                xs = np.geomspace(f.xmin, max(x[-1], f.xmin * 1.01), 40)
                fig.add_trace(go.Scatter(x=xs, y=f.pdf(xs), mode="lines", name=f"power-law fit of {key}",
                                         line=dict(color="black", dash="dash", width=1.5), legendgroup=key,
                                         showlegend=i == 0), row=row, col=col)
        log_axis(fig, "x", row=row, col=col, title_text="eigenvalue λ of WᵀW" if row == 2 else None)
        log_axis(fig, "y", row=row, col=col, title_text="density p(λ)" if col == 1 else None)
    fig.update_annotations(font_size=12)
    return _layout(fig, f"Empirical spectral density of layer {e.qualname} ({e.shape[0]}×{e.shape[1]}), log-log",
                   height=720)


def alpha_figure(rows: list[dict]) -> go.Figure:
    """α of every layer's W (dense) and S + L (compressed), with the fits' standard errors."""
    fig = go.Figure()
    for label, color, name in (("dense", COLORS["dense"], "W (dense)"), ("compressed", COLORS["both"], "S + L (compressed)")):
        sub = [r for r in rows if r[f"alpha_{label}"] is not None]
        fig.add_trace(go.Scatter(x=[r["layer"] for r in sub], y=[r[f"alpha_{label}"] for r in sub],
                                 mode="markers", name=name, marker=dict(color=color, size=8),
                                 error_y=dict(type="data", array=[r[f"alpha_se_{label}"] for r in sub], thickness=1,
                                              width=2)))
    fig.update_xaxes(title_text="layer (block.name)", type="category")
    fig.update_yaxes(title_text="power-law exponent α of the ESD tail")
    return _layout(fig, "Power-law exponent α per layer, dense vs compressed", height=440)


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
    return _layout(fig, "Largest activation magnitudes along depth", height=440)


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
    return _layout(fig, f"Block {block} output: |h| per token and channel",
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
    return _layout(fig, f"Outlier-channel intervention: {metric_name(metric)}", height=420, subtitle=measured_on)


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
    return _layout(fig, f"Input second moments, {width}-channel inputs", height=max(340, 15 * len(labels) + 180))


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
    return _layout(fig, "Outlier channels per layer input", height=380)


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
    return _layout(fig, f"Layer {cs.qualname}: per input channel", height=720)


def mask_figure(heat: Heat, shape: tuple[int, int], qualname: str) -> go.Figure:
    """The sparse term's mask, pooled: share of entries kept per cell."""
    fr, fc = heat.factor
    note = f" ({fr}×{fc} entries per cell)" if fr * fc > 1 else ""
    fig = go.Figure(go.Heatmap(z=heat.z, x=heat.cols, y=heat.rows, colorscale="Greys", zmin=0, zmax=1,
                               colorbar=dict(title=dict(text="kept share")),
                               hovertemplate="row %{y}, column %{x}<br>kept %{z:.0%}<extra></extra>"))
    fig.update_xaxes(title_text=f"input channel j (of {shape[1]})")
    fig.update_yaxes(title_text=f"output row i (of {shape[0]})", autorange="reversed")
    return _layout(fig, f"Sparse mask of {qualname}{note}", height=460)


# ----------------------------------------------------------------------------- error budget


def error_budget_figure(rows: list[dict]) -> go.Figure:
    """Per layer: scaled error with the sparse term only, the low-rank term only, and both."""
    x = [r["layer"] for r in rows]
    fig = go.Figure()
    for key, name in (("sparse_only", "sparse term only"), ("lowrank_only", "low-rank term only"),
                      ("both", "sparse + low-rank")):
        color = COLORS[{"sparse_only": "sparse", "lowrank_only": "lowrank", "both": "both"}[key]]
        fig.add_trace(go.Bar(x=x, y=[r[key] for r in rows], name=name, marker_color=color))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="layer (block.name)", type="category")
    fig.update_yaxes(title_text="scaled error ‖W D − X‖ / ‖W D‖")
    return _layout(fig, "Scaled error per layer", height=420)


def energy_split_figure(rows: list[dict]) -> go.Figure:
    """How ||W D||^2 splits into the sparse term, the low-rank term, the residual and their overlap."""
    x = [r["layer"] for r in rows]
    fig = go.Figure()
    for key, name in (("sparse_energy", "‖S‖²"), ("lowrank_energy", "‖L‖²"), ("residual_energy", "‖W D − S − L‖²"),
                      ("interaction", "cross terms 2⟨S, L⟩ + 2⟨S + L, R⟩")):
        color = COLORS[{"sparse_energy": "sparse", "lowrank_energy": "lowrank", "residual_energy": "residual",
                        "interaction": "interaction"}[key]]
        fig.add_trace(go.Bar(x=x, y=[r[key] for r in rows], name=name, marker_color=color))
    fig.update_layout(barmode="relative")
    fig.update_xaxes(title_text="layer (block.name)", type="category")
    fig.update_yaxes(title_text="share of ‖W D‖² (sums to 1)")
    return _layout(fig, "Where the scaled weight's energy goes", height=420)


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
    return _layout(fig, "Output error along depth (calibration inputs)", height=380)


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
    fig = _layout(fig, "Convergence of alternating thresholding, every layer", height=420)
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
    return _layout(fig, f"Per-block ablation: {metric_name(metric)}", height=420, subtitle=measured_on)


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
            v, r = _number(row.get(c)), _number(ref.get(c))
            ok = v is not None and r is not None and np.isfinite(v) and np.isfinite(r) and r != 0
            zr.append(100.0 * ((r - v) if higher_is_better else (v - r)) / abs(r) if ok else None)
            tr.append("" if row.get(c) is None else _bar_label(row.get(c)))
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
    return _layout(fig, title, height=max(300, 30 * len(labels) + 200), subtitle=measured_on)


# ----------------------------------------------------------------------------- walkthrough


def walkthrough_figure(wt: Walkthrough, snap: Snapshot) -> go.Figure:
    """|L|, |S| and |W D - S - L| at one iteration, on one colour scale (pooled max |.|)."""
    titles = (f"|L| low-rank term (rank {wt.rank})", f"|S| sparse term ({wt.sparse_budget} non-zeros)",
              "|W D − S − L| residual")
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.04,
                        shared_yaxes=True)
    for i, h in enumerate((snap.lowrank, snap.sparse, snap.residual), start=1):
        fig.add_trace(go.Heatmap(z=h.z, x=h.cols, y=h.rows, zmin=0, zmax=wt.zmax, colorscale=INFERNO,
                                 showscale=i == 3, colorbar=dict(title=dict(text="|value|")),
                                 hovertemplate="row %{y}, column %{x}<br>|value| %{z:.3g}<extra></extra>"),
                      row=1, col=i)
        fig.update_xaxes(title_text="input channel j", row=1, col=i)
    fig.update_yaxes(title_text="output row i", autorange="reversed", row=1, col=1)
    fig.update_yaxes(autorange="reversed")
    fr, fc = snap.lowrank.factor
    note = f", max over {fr}×{fc} entries per cell" if fr * fc > 1 else ""
    step = wt.step
    return _layout(fig, f"{step} {snap.iteration} (scaled space{note})", height=420)


def objective_figure(history: dict, iteration: int | None = None, kept: int | None = None) -> go.Figure:
    """The objective per iteration and the two terms' energies; the shown iteration marked.

    A history with ``output_error`` (a Gram-fitted method) plots that, the objective it
    minimises, with the scaled error beside it in grey; ``kept`` marks the kept iteration.
    """
    err = history.get("error", [])
    out = history.get("output_error") or []
    t = np.arange(1, len(err) + 1)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if out:
        fig.add_trace(go.Scatter(x=t, y=out, mode="lines+markers", name="layer output error ‖(W − S − L) Xᵀ‖ / ‖W Xᵀ‖",
                                 line=dict(color="black")), secondary_y=False)
        fig.add_trace(go.Scatter(x=t, y=err, mode="lines+markers", name="scaled error ‖W D − S − L‖ / ‖W D‖",
                                 line=dict(color="#888888", dash="dash")), secondary_y=False)
    else:
        fig.add_trace(go.Scatter(x=t, y=err, mode="lines+markers", name="scaled error ‖W D − S − L‖ / ‖W D‖",
                                 line=dict(color="black")), secondary_y=False)
    fig.add_trace(go.Scatter(x=t, y=history.get("sparse_energy", []), mode="lines", name="‖S‖² / ‖W D‖²",
                             line=dict(color=COLORS["sparse"], dash="dot")), secondary_y=True)
    fig.add_trace(go.Scatter(x=t, y=history.get("lowrank_energy", []), mode="lines", name="‖L‖² / ‖W D‖²",
                             line=dict(color=COLORS["lowrank"], dash="dot")), secondary_y=True)
    if kept is not None and out:
        fig.add_trace(go.Scatter(x=[kept], y=[out[kept - 1]], mode="markers", name="kept",
                                 marker=dict(symbol="star", size=14, color="#2ca02c")), secondary_y=False)
    if iteration is not None:
        fig.add_vline(x=iteration, line=dict(color="#ff7f0e", width=2),
                      annotation_text=f"t = {iteration}", annotation_position="top right")
    fig.update_xaxes(title_text="alternation t" if out else "iteration t", dtick=1 if len(err) <= 12 else None,
                     range=[0.5, 1.5] if len(err) == 1 else None)  # one step: not a lone dot on 0..2
    fig.update_yaxes(title_text="relative error", secondary_y=False)
    fig.update_yaxes(title_text="energy share of ‖W D‖²", tickformat=".2f", secondary_y=True)
    return _layout(fig, "Objective per iteration", height=380)


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
    return _layout(fig, "Time per block", height=360)


VARIANT_NAMES = {"dense": "dense", "both": "sparse + low-rank", "sparse": "sparse only", "lowrank": "low-rank only"}


def _eval_axis(fig: go.Figure, ys, title: str) -> None:
    """The y axis of an evaluation bar chart: log when the values span orders of magnitude
    (``quality.log_range``, the run report's rule too)."""
    fin = [f for f in (_number(v) for v in ys) if f is not None and np.isfinite(f)]
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
                           text=[_bar_label(v) for v in ys], textposition="outside", cliponaxis=False))
    fig.update_xaxes(title_text="model variant")
    _eval_axis(fig, ys, f"{metric_name(metric)}<br>({'higher' if higher_is_better else 'lower'} is better)")
    return _layout(fig, f"Evaluation: {metric_name(metric)}", height=360, subtitle=measured_on)


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
                             marker_color=COLORS[mode], text=[_bar_label(v) for v in ys], textposition="outside",
                             cliponaxis=False))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title_text="domain (held-out part)", type="category")
    _eval_axis(fig, ys_all, f"{metric_name(metric)}<br>({'higher' if higher_is_better else 'lower'} is better)")
    return _layout(fig, f"Evaluation per domain: {metric_name(metric)}", height=400, subtitle=measured_on)


"""An evaluation chart whose positive values span more than this factor gets a log y axis."""


def _number(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _bar_label(v) -> str:
    f = _number(v)
    if f is None:
        return str(v)
    if not np.isfinite(f):
        return str(f)
    if f == 0 or 1e-3 <= abs(f) < 1e4:
        return f"{f:.4g}"
    e = int(np.floor(np.log10(abs(f))))
    m = f"{f / 10.0 ** e:.3g}"
    if abs(float(m)) >= 10:  # 9.995 rounds up to 10.0
        e, m = e + 1, f"{f / 10.0 ** (e + 1):.3g}"
    return f"{m}×10" + str(e).translate(_SUPERSCRIPT)


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
    return _layout(fig, f"{name} against compression rate", height=440, subtitle=measured_on)


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
    return _layout(fig, "Per-layer error, run by run", height=440)

