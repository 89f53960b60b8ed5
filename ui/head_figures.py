"""Plotly figures for the Heads page: every head's map per variant, and where heads changed."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from oats.explain.heads import MODE_LABELS, HeadView
from oats.explain.text import TextExplanation
from ui.figures import INFERNO, _layout


def heads_figure(view: HeadView, layer: int, modes=("dense", "both", "sparse", "lowrank")) -> go.Figure:
    """One row per variant, one column per head: the layer's attention maps (text: query x key;
    vision: CLS to patches). Each map has its own colour scale (attention rows sum to 1, so
    the scale is 0..max of that map); the hover gives the value and, for text, the tokens."""
    modes = [m for m in modes if m in view.maps]
    n_heads = view.heads
    titles = [f"head {h}" if i == 0 else "" for i in range(len(modes)) for h in range(n_heads)]
    fig = make_subplots(rows=len(modes), cols=n_heads, subplot_titles=titles, horizontal_spacing=0.008,
                        vertical_spacing=0.03, row_titles=[view.labels.get(m, MODE_LABELS[m]) for m in modes])
    hover_text = None
    if view.kind == "text":
        t = view.tokens
        hover_text = [[f"{t[q]} → {t[k]}" for k in range(len(t))] for q in range(len(t))]
    for r, mode in enumerate(modes, start=1):
        maps = view.maps[mode][layer]
        for h in range(n_heads):
            z = np.asarray(maps[h], dtype=float)
            if view.kind == "text":
                tr = go.Heatmap(z=z, text=hover_text, colorscale=INFERNO, zmin=0, showscale=False,
                                hovertemplate="%{text}<br>attention %{z:.3f}<extra></extra>")
            else:
                tr = go.Heatmap(z=z, colorscale=INFERNO, zmin=0, showscale=False,
                                hovertemplate="patch row %{y}, column %{x}<br>attention %{z:.4f}<extra></extra>")
            fig.add_trace(tr, row=r, col=h + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_annotations(font_size=11)
    what = "query × key token" if view.kind == "text" else "CLS → patches"
    size = max(70, min(130, 1100 // max(n_heads, 1)))
    fig = _layout(fig, f"Layer {layer}: every head ({what}), dense and each variant", height=size * len(modes) + 110)
    return fig.update_layout(margin=dict(l=30, r=130, t=70, b=20))


def head_change_figure(view: HeadView) -> go.Figure:
    """Per layer and head, the Jensen-Shannon divergence (bits) of each variant's attention to
    the dense model's, one panel per variant on one colour scale."""
    modes = [m for m in ("both", "sparse", "lowrank") if m in view.distance]
    zmax = max(float(view.distance[m].max()) for m in modes) if modes else 1.0
    fig = make_subplots(rows=1, cols=len(modes), subplot_titles=[view.labels.get(m, MODE_LABELS[m]) for m in modes],
                        horizontal_spacing=0.05, shared_yaxes=True)
    for i, mode in enumerate(modes, start=1):
        d = view.distance[mode]
        fig.add_trace(go.Heatmap(z=d, x=list(range(d.shape[1])), y=list(range(d.shape[0])), zmin=0,
                                 zmax=max(zmax, 1e-9), colorscale=INFERNO, showscale=i == len(modes),
                                 colorbar=dict(title=dict(text="JS (bits)")),
                                 hovertemplate="layer %{y}, head %{x}<br>JS to dense %{z:.4f} bits<extra></extra>"),
                      row=1, col=i)
        fig.update_xaxes(title_text="head", dtick=1, row=1, col=i)
    fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1 if view.layers <= 32 else None, row=1, col=1)
    return _layout(fig, "How far each head moved from the dense model (Jensen-Shannon divergence)",
                   height=max(300, 22 * view.layers + 160))


def entropy_figure(view: HeadView) -> go.Figure:
    """Mean entropy of each head (nats) per layer: dense against each variant."""
    fig = go.Figure()
    styles = {"dense": ("black", "circle"), "both": ("#9467bd", "diamond"), "sparse": ("#1f77b4", "square"),
              "lowrank": ("#d62728", "triangle-up")}
    for mode, e in view.entropy.items():
        color, symbol = styles.get(mode, ("gray", "circle"))
        layers = np.repeat(np.arange(e.shape[0]), e.shape[1])
        heads_ = np.tile(np.arange(e.shape[1]), e.shape[0])
        fig.add_trace(go.Scatter(x=layers + (list(view.entropy).index(mode) - 1.5) * 0.12, y=e.ravel(), mode="markers",
                                 name=view.labels.get(mode, MODE_LABELS[mode]), marker=dict(color=color, symbol=symbol, size=6),
                                 customdata=np.stack([layers, heads_], axis=1),
                                 hovertemplate="layer %{customdata[0]}, head %{customdata[1]}<br>entropy %{y:.3f} "
                                               "nats<extra>" + view.labels.get(mode, MODE_LABELS[mode]) + "</extra>"))
    fig.update_xaxes(title_text="layer", dtick=1 if view.layers <= 32 else None)
    fig.update_yaxes(title_text="mean row entropy (nats)")
    return _layout(fig, "Head entropy per layer: low = focused heads, high = diffuse heads", height=380)


def token_maps_figure(ex: TextExplanation) -> go.Figure:
    """Per token, each variant's attention rollout and (when computed) integrated-gradients
    attribution, one row per variant; each row scaled to its own largest |value|."""
    kinds = [("attention rollout", ex.rollout, False)]
    if ex.attributions:
        kinds.append(("integrated gradients (signed)", ex.attributions, True))
    if ex.ablation:
        kinds.append(("token ablation: f(text) − f(token replaced) (signed)", ex.ablation, True))
    labels = [f"{i}:{t.strip() or '␣'}" for i, t in enumerate(ex.tokens)]
    fig = make_subplots(rows=len(kinds), cols=1, subplot_titles=[k[0] for k in kinds], vertical_spacing=0.18)
    for r, (name, maps, signed) in enumerate(kinds, start=1):
        modes = [m for m in ("dense", "both", "sparse", "lowrank") if m in maps]
        raw = np.stack([np.asarray(maps[m], dtype=float) for m in modes])
        scale = np.abs(raw).max(axis=1, keepdims=True)
        z = raw / np.where(scale > 0, scale, 1.0)
        fig.add_trace(go.Heatmap(z=z, x=labels, y=[MODE_LABELS[m] for m in modes], customdata=raw,
                                 zmin=-1 if signed else 0, zmax=1,
                                 colorscale="RdBu" if signed else INFERNO, reversescale=signed,
                                 showscale=False,
                                 hovertemplate="%{y}, token %{x}<br>value %{customdata:.4g}<extra>" + name + "</extra>"),
                      row=r, col=1)
        fig.update_yaxes(autorange="reversed", row=r, col=1)
    fig.update_xaxes(tickangle=-45, tickfont=dict(size=10))
    return _layout(fig, "Which tokens each variant relies on (each row scaled to its largest |value|)",
                   height=260 * len(kinds) + 120)
