"""Spectra: what the SVD step sees, layer by layer, and how much a rank-r term can hold."""

import streamlit as st

from ui.state import chart, current_path, current_run, layer_picker, layer_spectra, run_mtime, spectra_overview, table
from ui import figures

st.title("Spectra")
st.caption("How much of a layer can a rank-r term hold? Compare the weight W, the scaled weight W D, and W D − S: "
           "what the SVD step factorises once the sparse term has taken the largest entries.")

run = current_run()
if run is not None:
    path = current_path()
    mtime = run_mtime(path)
    q = layer_picker(run)
    sp = layer_spectra(path, mtime, q)
    chart(figures.spectrum_figure(sp), key="spectrum")
    st.caption(f"Layer {q}: the top r = {sp.rank} of {min(sp.shape)} singular values hold "
               f"{sp.captured['W']:.0%} of W's energy, {sp.captured['W D']:.0%} of W D's and "
               f"{sp.captured['W D - S']:.0%} of W D − S's; the low-rank term holds {sp.lowrank_share:.0%} of ‖W D‖². "
               f"A flat spectrum (large effective rank) is poorly served by a low-rank term, a steep one well.")
    table(sp.table(), f"spectra-{q}", key="csv-spectra-layer")

    st.subheader("Every layer")
    ov = spectra_overview(path, mtime, len(run.layers))
    chart(figures.spectra_overview_figure(ov), key="overview")
    chart(figures.ranks_figure(ov), key="ranks")
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in ov.rows]
    table(rows, "ranks-per-layer", key="csv-ranks")
