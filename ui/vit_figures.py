"""Plotly figures and tables for ``oats.explain.vit``: maps over the image, per-layer small multiples.

Every map is shown min-max rescaled within its own panel (the colour says "more / less than
elsewhere in this map"); the hover text gives the raw value. The figures carry the patch-grid
arrays unchanged as heatmap ``z`` (no upsampling), so they stay small.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.charts import INFERNO
from oats.explain.vit import ATTRIBUTION_METHODS, MODE_LABELS

# Inferno as rgb() strings (see charts.safe_colorscale: Streamlit rewrites some hex colours)
COLORSCALE = INFERNO
MAP_LABELS = {"rollout": "attention rollout", **ATTRIBUTION_METHODS}
OVERLAP_COLUMNS = ["map", "pair", "spearman", "top-k IoU", "k"]


def _label(key: str) -> str:
    return MODE_LABELS.get(key, key)


def _relative(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
    return np.zeros_like(m) if hi <= lo else (m - lo) / (hi - lo)


def _png_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumb_uri(image: np.ndarray, size: int = 96) -> str:
    """``image`` shrunk to at most ``size`` pixels a side, as a JPEG data URI: the photo under many
    small maps stays a few kilobytes each (about 4 kB at 96 px against 24 kB as PNG; the maps on
    it are a patch grid, far coarser than the photo)."""
    from PIL import Image

    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def overlay_figure(image: np.ndarray, maps: Mapping[str, np.ndarray], *, title: str = "",
                   opacity: float = 0.55, value_name: str = "value") -> go.Figure:
    """The image with one heatmap over it per map, side by side (one panel per key of ``maps``).

    ``image``: (S, S, 3) uint8 (the crop the model saw). ``maps``: {mode or label: (grid_h,
    grid_w)}; modes are titled "dense", "sparse-only", "low-rank-only". Each heatmap cell covers
    its patch of the image.
    """
    keys = list(maps)
    h, w = np.shape(image)[:2]
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[_label(k) for k in keys],
                        horizontal_spacing=0.02)
    uri = _png_uri(image)
    for i, key in enumerate(keys, start=1):
        raw = np.asarray(maps[key], dtype=np.float64)
        gh, gw = raw.shape
        dy, dx = h / gh, w / gw
        fig.add_trace(go.Image(source=uri, name=_label(key), hoverinfo="skip"), row=1, col=i)
        fig.add_trace(go.Heatmap(
            z=_relative(raw).tolist(), customdata=raw.tolist(), x0=-0.5 + dx / 2, dx=dx, y0=-0.5 + dy / 2, dy=dy,
            zmin=0.0, zmax=1.0, colorscale=COLORSCALE, opacity=opacity, name=_label(key),
            showscale=i == len(keys),
            colorbar=dict(title=dict(text="relative", side="right"), tickvals=[0, 1], ticktext=["low", "high"]),
            hovertemplate=f"patch row %{{y:.0f}} col %{{x:.0f}}<br>{value_name} %{{customdata:.4g}}<extra>{_label(key)}</extra>",
        ), row=1, col=i)
        fig.update_xaxes(visible=False, range=[-0.5, w - 0.5], row=1, col=i)
        fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor=f"x{'' if i == 1 else i}", row=1, col=i)
    fig.update_layout(title=title or None, height=380, margin=dict(l=10, r=10, t=60 if title else 40, b=10))
    return fig


def layers_figure(layer_maps: Mapping[str, np.ndarray], *, title: str = "", layers: Sequence[int] | None = None,
                  image: np.ndarray | None = None, opacity: float = 0.6) -> go.Figure:
    """Small multiples: one row per model, one column per layer, each (grid_h, grid_w) heatmap,
    rescaled within its panel (one colour bar, "low" to "high"; the hover gives the raw value).

    ``layer_maps``: {mode: (layers, grid_h, grid_w)}. ``layers``: which layer indices to show
    (default all). Rows are labelled by model, columns "layer 1".. (1-based). ``image``: the
    (S, S, 3) crop the model saw, drawn (shrunk) under every map at ``opacity``.
    """
    keys = list(layer_maps)
    n_layers = np.shape(layer_maps[keys[0]])[0]
    cols = list(range(n_layers)) if layers is None else [int(i) for i in layers]
    titles = [f"layer {c + 1}" for c in cols] + [""] * (len(keys) - 1) * len(cols)
    fig = make_subplots(rows=len(keys), cols=len(cols), subplot_titles=titles,
                        horizontal_spacing=0.006, vertical_spacing=0.03)
    uri = thumb_uri(image, 64) if image is not None else None
    size = 64 / max(np.shape(image)[:2]) if image is not None else 1.0
    for r, key in enumerate(keys, start=1):
        stack = np.asarray(layer_maps[key], dtype=np.float64)
        for c, layer in enumerate(cols, start=1):
            raw = stack[layer]
            gh, gw = raw.shape
            place = {}
            if uri is not None:
                h, w = (max(1, round(v * size)) for v in np.shape(image)[:2])
                fig.add_trace(go.Image(source=uri, hoverinfo="skip", name="photo"), row=r, col=c)
                place = dict(x0=-0.5 + w / gw / 2, dx=w / gw, y0=-0.5 + h / gh / 2, dy=h / gh)
                fig.update_xaxes(range=[-0.5, w - 0.5], row=r, col=c)
                fig.update_yaxes(range=[h - 0.5, -0.5], row=r, col=c)
            fig.add_trace(go.Heatmap(
                z=_relative(raw).tolist(), customdata=raw.tolist(), zmin=0.0, zmax=1.0, colorscale=COLORSCALE,
                showscale=r == 1 and c == len(cols), opacity=opacity if uri is not None else 1.0, **place,
                colorbar=dict(title=dict(text="relative", side="right"), tickvals=[0, 1], ticktext=["low", "high"],
                              thickness=10),
                name=f"{_label(key)}, layer {layer + 1}",
                hovertemplate=f"value %{{customdata:.4g}}<extra>{_label(key)}, layer {layer + 1}</extra>",
            ), row=r, col=c)
            fig.update_xaxes(visible=False, row=r, col=c)
            fig.update_yaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, row=r, col=c)
            if uri is None:
                fig.update_yaxes(autorange="reversed", row=r, col=c)
        # the model's name level, left of its row (rotated, "compressed (S + L)" ran into the next row's)
        domain = fig.get_subplot(r, 1).yaxis.domain
        fig.add_annotation(text=_label(key), x=0, xref="paper", xanchor="right", xshift=-6, y=sum(domain) / 2,
                           yref="paper", yanchor="middle", showarrow=False, font=dict(size=11))
    fig.update_annotations(font_size=10)
    fig.update_layout(title=title or None, height=95 * len(keys) + (70 if title else 40),
                      margin=dict(l=130, r=10, t=60 if title else 30, b=10))
    return fig


def overlap_frame(rows: Sequence[Mapping]) -> pd.DataFrame:
    """The rows of ``oats.explain.vit.overlap_rows`` as a table with columns ``OVERLAP_COLUMNS``."""
    df = pd.DataFrame(list(rows), columns=["map", "pair", "spearman", "topk_iou", "k"])
    df["map"] = df["map"].map(lambda m: MAP_LABELS.get(m, m))
    return df.rename(columns={"topk_iou": "top-k IoU"})[OVERLAP_COLUMNS]

