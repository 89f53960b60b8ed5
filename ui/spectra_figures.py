"""Figures of the Spectra page: singular values seen four ways, a run's spectra and ranks, and
the heavy-tailed spectral densities (``oats.explain.spectra``, ``oats.explain.heavytail``).

Each builder returns a ``plotly.graph_objects.Figure`` with titled axes; shared style in ``ui.charts``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from oats.explain.spectra import LayerSpectra, SpectraOverview
from oats.explain.heavytail import SHUFFLED, LayerESD, log_density
from ui.charts import COLORS, SPECTRUM_NAMES, layout, log_axis


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
    return layout(fig, f"Spectra of layer {sp.qualname} ({sp.shape[0]}×{sp.shape[1]})", height=460)


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
    return layout(fig, "Normalised spectra of W D, every layer", height=max(460, 15 * len(ov.labels) + 180))


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
    return layout(fig, "Effective and stable rank per layer", height=620)


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
    return layout(fig, f"Empirical spectral density of layer {e.qualname} ({e.shape[0]}×{e.shape[1]}), log-log",
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
    return layout(fig, "Power-law exponent α per layer, dense vs compressed", height=440)
