"""Walkthrough: one layer, alternating thresholding iteration by iteration, with ρ and κ to play with."""

import streamlit as st

from ui.state import chart, current_path, current_run, layer_picker, run_mtime, table, walkthrough
from ui import figures
from oats.errors import ConfigError
from oats.methods import registry

st.title("Walkthrough")
st.markdown("OATS alternates two projections on the scaled weight **W D**: the best rank-r approximation of "
            "**W D − S** (an SVD) gives **L**, then the largest entries of **W D − L** allowed by the budget give "
            "**S**. Move the iteration slider to watch the terms settle; change ρ and κ to recompute this layer.")

run = current_run()
if run is not None:
    path = current_path()
    mtime = run_mtime(path)
    q = layer_picker(run)
    kappa0 = min(round(registry.used_rank_ratio(run.method, run.config) / 0.05) * 0.05, 0.9)
    method = registry.find(run.method)
    runs_the_solver = method is not None and method.thresholding  # the walkthrough's own algorithm
    if not runs_the_solver:
        st.caption(f"This run used {run.method}; the walkthrough always runs OATS on the layer "
                   f"(κ = 0 is Wanda's mask). A method fitted on the full input Gram cannot be replayed "
                   f"here: a run folder keeps each layer's second moments, not its Gram.")
    c1, c2 = st.columns(2)
    rho = c1.slider("Compression rate ρ", 0.05, 0.95, float(run.config.compression), 0.05, key=f"wt-rho-{path}",
                    help="Fraction of the layer's parameters removed.", disabled=run.config.nm is not None)
    kappa = c2.slider("Rank ratio κ", 0.0, 0.9, float(kappa0), 0.05, key=f"wt-kappa-{path}",
                      help="Share of the kept parameters in the low-rank term (0: Wanda).")
    try:
        wt = walkthrough(path, mtime, q, rho, kappa)
    except ConfigError as e:
        st.error(str(e))
        st.stop()
    its = wt.iterations
    c = st.columns(4)
    c[0].metric("Rank r", wt.rank)
    c[1].metric("Sparse non-zeros", f"{wt.sparse_budget:,}")
    c[2].metric("Iterations run", len(wt.history["error"]))
    c[3].metric("Final scaled error", f"{wt.history['error'][-1]:.4f}")
    t = st.select_slider("Iteration", options=its, value=its[-1], key=f"wt-iter-{q}-{rho}-{kappa}") \
        if len(its) > 1 else its[0]
    snap = wt.at(t)
    chart(figures.walkthrough_figure(wt, snap), key="heatmaps")
    chart(figures.objective_figure(wt.history, snap.iteration), key="objective")
    h = wt.history
    table([{"iteration": i + 1, "scaled_error": h["error"][i], "sparse_energy": h["sparse_energy"][i],
            "lowrank_energy": h["lowrank_energy"][i]} for i in range(len(h["error"]))],
          f"walkthrough-{q}-rho{rho:g}-kappa{kappa:g}", key="csv-walk", height=240)
    if runs_the_solver and (rho != run.config.compression or kappa != run.config.rank_ratio):
        rec = run.layer(q)
        st.caption(f"In the saved run ({run.config.compression:g}, {run.config.rank_ratio:g}) this layer reached "
                   f"scaled error {rec.scaled_error:.4f} with rank {rec.rank}.")
