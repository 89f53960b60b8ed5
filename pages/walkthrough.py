"""Walkthrough: one layer replayed step by step by its method's record (``Method.replay``), with ρ and κ to play with."""

import streamlit as st

from ui.text import esc
from ui.state import current_path, current_run, run_info, run_mtime
from ui.widgets import chart, how_to_read, layer_picker, table
from ui.cached import layer_gram, replay_of, saved_walkthrough, walkthrough
from ui import walkthrough_figures
from oats.errors import ConfigError, OatsError
from oats.methods import registry
from oats.explain.walkthrough import REPLAY_AT_ONCE_S, replay_seconds
from oats.runs.estimate import duration

st.title("Walkthrough")
# What the replay runs and says comes from the run's method record (``Method.replay``, looked up
# by ``registry.replay_for``): this page names no method.


def _intro(replay) -> str:
    return replay.intro if replay is not None else ""


run = current_run()
if run is None:
    st.markdown(_intro(registry.replay_for("")[0]))  # the replay a run of an unknown method gets
else:
    path = current_path()
    mtime = run_mtime(path)
    replay, runs_the_solver = replay_of(run)  # runs_the_solver: the replay is the run's own method
    if replay is None:
        st.error(f"No registered method says how to replay a run of {esc(run.method)} step by step.")
        st.stop()
    on_gram = replay.gram
    step = replay.step
    st.markdown(_intro(replay))
    q = layer_picker(run)
    kappa0 = min(round(registry.used_rank_ratio(run.method, run.config) / 0.05) * 0.05, 0.9)
    if not runs_the_solver:
        stand_in = next((m for m in registry.all_methods() if m.replay is replay), None)
        st.caption(f"This run used {esc(run.method)}; the walkthrough runs "
                   f"{esc(registry.title(stand_in.name) if stand_in else 'another method')} on the layer "
                   f"(κ = 0 is {esc(replay.rank_zero)}'s mask).")
    c1, c2 = st.columns(2)
    rho = c1.slider("Compression rate ρ", 0.05, 0.95, float(run.config.compression), 0.05, key=f"wt-rho-{path}",
                    help="Fraction of the layer's parameters removed.", disabled=run.config.nm is not None)
    kappa = c2.slider("Rank ratio κ", 0.0, 0.9, float(kappa0), 0.05, key=f"wt-kappa-{path}",
                      help="Share of the kept parameters in the low-rank term (0: " + replay.rank_zero + ").")
    # A large layer (a mid-size model's) is not replayed on arrival: the first draw is the run's saved
    # result, and the replay waits for a button that says how long it will take.
    est = replay_seconds(run, q, gram=on_gram)
    go_key = f"wt-go-{path}-{q}"
    saved_only = est > REPLAY_AT_ONCE_S and not st.session_state.get(go_key)
    if saved_only:
        st.info(f"Replaying this {run.layer(q).shape[0]:,} × {run.layer(q).shape[1]:,} layer step by step takes about "
                f"{duration(est)} here (from the run's own time on its block). Shown: the run's saved result, its "
                "terms at the last step and its recorded history.")
        if st.button(f"Replay step by step (about {duration(est)})", key=f"wt-go-btn-{path}-{q}"):
            st.session_state[go_key] = True
            st.rerun()
        wt = saved_walkthrough(path, mtime, q)
    else:
        if on_gram:
            try:
                with st.spinner("Recomputing this layer's input Gram: the run's calibration data through the "
                                "compressed blocks before it (a run folder keeps second moments, not Grams) ..."):
                    layer_gram(path, mtime, q)
            except OatsError as e:
                st.error(esc(e))
                st.stop()
            if not (run_info(path).calibration_request or {}):
                st.caption("This run's manifest does not record its calibration data: the Gram is recomputed on the "
                           "default calibration data, so the replay may differ slightly from the saved run.")
        try:
            wt = walkthrough(path, mtime, q, rho, kappa)
        except ConfigError as e:
            st.error(esc(e))
            st.stop()
    its = wt.iterations
    h = wt.history
    c = st.columns(4)
    c[0].metric("Rank r", wt.rank)
    c[1].metric("Sparse non-zeros", f"{wt.sparse_budget:,}")
    c[2].metric(f"{step}s run", len(h["error"]))
    if on_gram and h.get("output_error"):
        c[3].metric("Kept output error", f"{min(h['output_error']):.4f}" if not wt.fallback else "rank 0",
                    help="The lowest layer output error ‖(W − S − L) Xᵀ‖ / ‖W Xᵀ‖ over the alternations, on the "
                         "calibration inputs.")
    else:
        c[3].metric("Final scaled error", f"{h['error'][-1]:.4f}")
    if wt.fallback:
        st.info(f"{replay.rank_zero} alone with the whole budget (rank 0, its values refitted on its mask) has a lower "
                f"output error than every {step.lower()} below: the low-rank term is not worth its parameters on this "
                "layer, and the method keeps that sparse term.")
    elif wt.kept is not None and len(its) > 1:
        st.caption(f"The method keeps {step.lower()} {wt.kept} (the lowest output error).")
    single = len(h["error"]) <= 1
    if single:  # no slider and no one-point objective chart: say why instead
        st.info(replay.one_step if wt.rank == 0 else
                "This layer's decomposition stopped after one " + step.lower() +
                ", so there is nothing to step through: the heat maps below show that single step.")
    t = st.select_slider(step, options=its, value=its[-1],
                         key=f"wt-iter-{q}-{rho}-{kappa}") if len(its) > 1 else its[0]
    snap = wt.at(t)
    chart(walkthrough_figures.walkthrough_figure(wt, snap), key="heatmaps")
    how_to_read("Three heat maps of the same layer at the chosen step, on one colour scale: |L| (the low-rank term), "
                "|S| (the sparse term) and the residual |W D − S − L| (what is still missing), all in the scaled space "
                "W D. Large matrices are pooled (each cell is the largest |value| of a block of entries). Watch the "
                "residual darken as the slider moves: the two terms share the work. Rows or columns that stay bright "
                "in |L| are structure spread over a whole row or input channel; isolated bright dots in |S| are "
                "single large entries that a low-rank term would need many directions for.")
    if not single:
        chart(walkthrough_figures.objective_figure(h, snap.iteration, kept=wt.kept), key="objective")
    rows = []
    for i in range(len(h["error"])):
        row = {"iteration": i + 1}
        if h.get("output_error"):
            row["output_error"] = h["output_error"][i]
        rows.append({**row, "scaled_error": h["error"][i], "sparse_energy": h["sparse_energy"][i],
                     "lowrank_energy": h["lowrank_energy"][i]})
    table(rows, f"walkthrough-{q}-rho{rho:g}-kappa{kappa:g}", key="csv-walk",
          height=min(240, 38 + 35 * len(rows)))  # no blank rows under a short history
    if runs_the_solver and (rho != run.config.compression or abs(kappa - kappa0) > 1e-9):
        rec = run.layer(q)
        out = rec.history.get("output_error") or []
        reached = f"output error {out[-1]:.4f}, scaled error" if out else "scaled error"
        st.caption(f"In the saved run (ρ {run.config.compression:g}, κ {kappa0:g}) this layer reached "
                   f"{reached} {rec.scaled_error:.4f} with rank {rec.rank}.")
