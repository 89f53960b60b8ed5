"""Plotly figures for the Heads page: every head's map per variant, and where heads changed."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from oats.explain.heads import MODE_LABELS, HeadView, RunDiff, display_tokens, top_targets
from oats.explain.text import TextExplanation
from ui.charts import INFERNO, layout


ROW_LABEL_MARGIN = 150
"""Left margin (px) for the variant names written level beside each row of small maps: the
longest, "compressed (S + L)", fits at 11 px (rotated titles on the right were cut off)."""
DIFF_SCALE = "RdBu"


def _row_labels(fig: go.Figure, labels: list[str]) -> None:
    """Turn make_subplots' row titles (rotated, at the right edge) into level labels left of
    the first column, right-aligned against it."""
    for note in fig.layout.annotations:
        if note.text in labels and note.textangle == 90:
            note.update(textangle=0, x=0, xanchor="right", xshift=-8, font=dict(size=11))


def _photo_under(fig: go.Figure, image: np.ndarray, grid: tuple[int, int], row: int, col: int) -> tuple[float, float, float, float]:
    """The photo (shrunk) as the bottom layer of one panel; returns the heatmap's x0, dx, y0, dy
    so each cell covers its patch."""
    from ui.vit_figures import thumb_uri

    uri = thumb_uri(image, 96)
    h, w = image.shape[:2]
    scale = 96 / max(h, w)
    h, w = max(1, round(h * scale)), max(1, round(w * scale))
    fig.add_trace(go.Image(source=uri, hoverinfo="skip"), row=row, col=col)
    dy, dx = h / grid[0], w / grid[1]
    fig.update_xaxes(range=[-0.5, w - 0.5], row=row, col=col)
    fig.update_yaxes(range=[h - 0.5, -0.5], row=row, col=col)
    return -0.5 + dx / 2, dx, -0.5 + dy / 2, dy


def heads_figure(view: HeadView, layer: int, modes=("dense", "both", "sparse", "lowrank")) -> go.Figure:
    """One row per variant, one column per head: the layer's attention maps (text: query x key;
    vision: CLS to patches, over the photo the model saw). All maps share one colour scale, 0 to
    the layer's largest attention, with its colour bar, so heads and variants compare by colour;
    the hover gives the value and, for text, the two tokens (as a reader writes them)."""
    modes = [m for m in modes if m in view.maps]
    n_heads = view.heads
    labels = [view.labels.get(m, MODE_LABELS[m]) for m in modes]
    titles = [f"head {h}" if i == 0 else "" for i in range(len(modes)) for h in range(n_heads)]
    fig = make_subplots(rows=len(modes), cols=n_heads, subplot_titles=titles, horizontal_spacing=0.008,
                        vertical_spacing=0.03, row_titles=labels)
    _row_labels(fig, labels)
    top = max(float(np.max(view.maps[m][layer])) for m in modes)
    hover_text = None
    if view.kind == "text":
        t = display_tokens(view.tokens)
        hover_text = [[f"{t[q]} → {t[k]}" for k in range(len(t))] for q in range(len(t))]
    for r, mode in enumerate(modes, start=1):
        maps = view.maps[mode][layer]
        for h in range(n_heads):
            z = np.asarray(maps[h], dtype=float)
            if view.kind == "text":
                tr = go.Heatmap(z=z, text=hover_text, coloraxis="coloraxis",
                                hovertemplate="%{text}<br>attention %{z:.3f}<extra></extra>")
            else:
                x0, dx, y0, dy = _photo_under(fig, view.image, view.grid, r, h + 1)
                tr = go.Heatmap(z=z, x0=x0, dx=dx, y0=y0, dy=dy, coloraxis="coloraxis", opacity=0.6,
                                hovertemplate="attention %{z:.4f}<extra></extra>")
            fig.add_trace(tr, row=r, col=h + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    if view.kind == "text":
        fig.update_yaxes(autorange="reversed")
    fig.update_annotations(font_size=11)
    what = "query × key token" if view.kind == "text" else "CLS → patches, over the photo"
    size = max(70, min(130, 1100 // max(n_heads, 1)))
    fig = layout(fig, f"Layer {layer}: every head ({what}), dense and each variant", height=size * len(modes) + 110)
    return fig.update_layout(margin=dict(l=ROW_LABEL_MARGIN, r=20, t=70, b=20), coloraxis=dict(
        colorscale=INFERNO, cmin=0, cmax=max(top, 1e-9),
        colorbar=dict(title=dict(text="attention", side="right"), thickness=12, len=0.9)))


def head_focus_figure(view: HeadView, layer: int, head: int, modes=("dense", "both")) -> go.Figure:
    """One text head, large: a query × key map per variant with every token written on both
    axes. Hovering a cell names the query token, the key token and the weight, and lists where
    that query token attends most: hover a row to read the token's attention row."""
    modes = [m for m in modes if m in view.maps]
    t = display_tokens(view.tokens)
    n = len(t)
    fig = make_subplots(rows=1, cols=len(modes), horizontal_spacing=0.12,
                        subplot_titles=[view.labels.get(m, MODE_LABELS[m]) for m in modes])
    for c, mode in enumerate(modes, start=1):
        z = np.asarray(view.maps[mode][layer][head], dtype=float)
        rows = [top_targets(z[q], t) for q in range(n)]
        text = [[f"<b>{t[q]}</b> → {t[k]}" for k in range(n)] for q in range(n)]
        fig.add_trace(go.Heatmap(z=z, x=list(range(n)), y=list(range(n)), text=text, customdata=[[r] * n for r in rows],
                                 coloraxis="coloraxis", name=view.labels.get(mode, MODE_LABELS[mode]),
                                 hovertemplate="%{text}: %{z:.3f}<br>attends most to: %{customdata}<extra>"
                                               + view.labels.get(mode, MODE_LABELS[mode]) + "</extra>"),
                      row=1, col=c)
        fig.update_xaxes(tickmode="array", tickvals=list(range(n)), ticktext=t, tickangle=-60, title_text="key (attended to)",
                         row=1, col=c)
        fig.update_yaxes(tickmode="array", tickvals=list(range(n)), ticktext=t, autorange="reversed",
                         title_text="query (attending)" if c == 1 else None, row=1, col=c)
    fig.update_xaxes(tickfont=dict(size=10), showgrid=False)
    fig.update_yaxes(tickfont=dict(size=10), showgrid=False)
    fig = layout(fig, f"Layer {layer}, head {head}: where each token attends (hover a row)",
                  height=min(900, max(420, 14 * n + 260)))
    return fig.update_layout(margin=dict(l=90, r=30, t=70, b=110), coloraxis=dict(
        colorscale=INFERNO, cmin=0, cmax=1, colorbar=dict(title=dict(text="attention", side="right"), thickness=12)))


def head_focus_vision_figure(view: HeadView, layer: int, head: int, modes=("dense", "both")) -> go.Figure:
    """One ViT head, large: its CLS → patch map over the photo in each variant."""
    from ui.vit_figures import overlay_figure

    maps = {view.labels.get(m, MODE_LABELS[m]): view.maps[m][layer][head] for m in modes if m in view.maps}
    return overlay_figure(view.image, maps, title=f"Layer {layer}, head {head}: where the CLS token attends",
                          value_name="attention")


def run_diff_bars(diff: RunDiff, name_a: str, name_b: str) -> go.Figure:
    """Per head of the layer: each run's compressed model's divergence to dense, and the two
    compressed models' divergence to each other."""
    heads_ = list(range(diff.js_a.size))
    fig = go.Figure()
    for y, name, color in ((diff.js_a, f"{name_a} vs dense", "#9467bd"), (diff.js_b, f"{name_b} vs dense", "#ff7f0e"),
                           (diff.js_ab, f"{name_a} vs {name_b}", "#7f7f7f")):
        fig.add_trace(go.Bar(x=heads_, y=y, name=name, marker_color=color,
                             hovertemplate="head %{x}<br>%{y:.4f} bits<extra>" + name + "</extra>"))
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="Jensen-Shannon divergence (bits)", rangemode="tozero")
    return layout(fig, f"Layer {diff.layer}: each head's compressed attention, two runs (lower = closer)",
                   height=380, barmode="group")


def run_diff_maps(diff: RunDiff, view: HeadView, head: int, name_a: str, name_b: str) -> go.Figure:
    """One head: run A's and run B's compressed maps side by side and A − B, on a diverging scale
    centred at 0 with its colour bar (text: query × key with the tokens; ViT: CLS → patches)."""
    a = np.asarray(diff.maps_a[head], dtype=float)
    b = np.asarray(diff.maps_b[head], dtype=float)
    d = a - b
    lim = max(float(np.abs(d).max()), 1e-9)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.05, shared_yaxes=True,
                        subplot_titles=[name_a, name_b, f"{name_a} − {name_b}"])
    top = max(float(a.max()), float(b.max()), 1e-9)
    kw = {}
    if view.kind == "text":
        t = display_tokens(view.tokens)
        kw = dict(text=[[f"{t[q]} → {t[k]}" for k in range(len(t))] for q in range(len(t))])
    where = "%{text}" if view.kind == "text" else "patch row %{y}, column %{x}"
    for c, (z, axis, label) in enumerate(((a, "coloraxis", name_a), (b, "coloraxis", name_b),
                                          (d, "coloraxis2", f"{name_a} − {name_b}")), start=1):
        fig.add_trace(go.Heatmap(z=z, coloraxis=axis, name=label, **kw,
                                 hovertemplate=where + "<br>%{z:.4f}<extra>" + label + "</extra>"), row=1, col=c)
    if view.kind == "text":
        fig.update_xaxes(tickmode="array", tickvals=list(range(len(t))), ticktext=t, tickangle=-60, tickfont_size=9)
        fig.update_yaxes(tickmode="array", tickvals=list(range(len(t))), ticktext=t, tickfont_size=9)
    else:
        fig.update_xaxes(showticklabels=False)
        fig.update_yaxes(showticklabels=False)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig = layout(fig, f"Layer {diff.layer}, head {head}: the two compressed models and their difference", height=440)
    return fig.update_layout(
        margin=dict(l=70, r=30, t=70, b=100),
        # both colour bars at the right, one above the other (one in the gap between the panels
        # ran into the third panel on a narrow page)
        coloraxis=dict(colorscale=INFERNO, cmin=0, cmax=top,
                       colorbar=dict(title=dict(text="attention", side="right"), x=1.01, xanchor="left", y=1,
                                     yanchor="top", len=0.46, thickness=10)),
        coloraxis2=dict(colorscale=DIFF_SCALE, reversescale=True, cmin=-lim, cmax=lim, cmid=0,
                        colorbar=dict(title=dict(text="A − B", side="right"), x=1.01, xanchor="left", y=0,
                                      yanchor="bottom", len=0.46, thickness=10)))


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
    return layout(fig, "How far each head moved from the dense model (Jensen-Shannon divergence)",
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
    return layout(fig, "Head entropy per layer: low = focused heads, high = diffuse heads", height=380)


def token_maps_figure(ex: TextExplanation, labels: dict[str, str] | None = None) -> go.Figure:
    """Per token, each variant's attention rollout and (when computed) integrated-gradients
    attribution and token ablation, one row per variant; each row scaled to its own largest
    |value|. Rollout has a 0..1 colour bar; the signed maps share one centred at 0. ``labels``:
    the run's names of its variants (``HeadView.labels``)."""
    names = {**MODE_LABELS, **(labels or {})}
    kinds = [("attention rollout", ex.rollout, False)]
    if ex.attributions:
        kinds.append(("integrated gradients (signed)", ex.attributions, True))
    if ex.ablation:
        kinds.append(("token ablation: f(text) − f(token replaced) (signed)", ex.ablation, True))
    shown = display_tokens(ex.tokens)
    labels = [f"{i}:{t}" for i, t in enumerate(shown)]
    fig = make_subplots(rows=len(kinds), cols=1, subplot_titles=[k[0] for k in kinds], vertical_spacing=0.18)
    for r, (name, maps, signed) in enumerate(kinds, start=1):
        modes = [m for m in ("dense", "both", "sparse", "lowrank") if m in maps]
        raw = np.stack([np.asarray(maps[m], dtype=float) for m in modes])
        scale = np.abs(raw).max(axis=1, keepdims=True)
        z = raw / np.where(scale > 0, scale, 1.0)
        fig.add_trace(go.Heatmap(z=z, x=labels, y=[names[m] for m in modes], customdata=raw,
                                 coloraxis="coloraxis2" if signed else "coloraxis",
                                 hovertemplate="%{y}, token %{x}<br>value %{customdata:.4g}<extra>" + name + "</extra>"),
                      row=r, col=1)
        fig.update_yaxes(autorange="reversed", row=r, col=1)
    fig.update_xaxes(tickangle=-45, tickfont=dict(size=10))
    n = len(kinds)
    fig = layout(fig, "Which tokens each variant relies on (each row scaled to its largest |value|)",
                  height=260 * n + 120)
    fig.update_layout(coloraxis=dict(colorscale=INFERNO, cmin=0, cmax=1, colorbar=dict(
        title=dict(text="rollout / row max", side="right"), y=1.0, yanchor="top", len=1 / n * 0.8, thickness=12)))
    if n > 1:
        fig.update_layout(coloraxis2=dict(colorscale=DIFF_SCALE, reversescale=True, cmin=-1, cmax=1, cmid=0,
                                          colorbar=dict(title=dict(text="signed / row max |value|", side="right"),
                                                        y=0.0, yanchor="bottom", len=(n - 1) / n * 0.8, thickness=12,
                                                        tickvals=[-1, 0, 1])))
    return fig

