"""Figures of the Walkthrough page: one step's heat maps and the objective per step
(``oats.explain.walkthrough``; the step word is the replay's).

Each builder returns a ``plotly.graph_objects.Figure`` with titled axes; shared style in ``ui.charts``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from oats.explain.walkthrough import Snapshot, Walkthrough
from ui.charts import INFERNO, COLORS, layout


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
    return layout(fig, f"{step} {snap.iteration} (scaled space{note})", height=420)


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
    return layout(fig, "Objective per iteration", height=380)
