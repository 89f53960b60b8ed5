"""Shared chart style of the app's figure modules (``ui.*_figures``): colour scales safe from
Streamlit's colour rewriting, the default template, the colours of the terms, one title and
legend layout (``layout``) and readable log axes (``log_axis``).

Each figure module builds the figures of one page from that view's results in
``oats.explain`` (arrays, dataclasses, rows); a builder returns a ``plotly.graph_objects.Figure``
with titled axes (units where there are any) and never computes anything heavier than a sort.
Heatmaps arrive already pooled.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import hex_to_rgb, sequential


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


def layout(fig: go.Figure, title: str, height: int = 420, subtitle: str | None = None, **kw) -> go.Figure:
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


# ----------------------------------------------------------------------------- bar labels


def number(v) -> float | None:
    """``v`` as a float, or None when it is not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def bar_label(v) -> str:
    """A bar's value label: plain digits between 0.001 and 9999, else m×10ⁿ."""
    f = number(v)
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
