"""Spectra: what the SVD step sees, layer by layer, and how much a rank-r term can hold."""

import streamlit as st

from ui.text import esc
from ui.state import current_path, current_run, run_mtime
from ui.widgets import chart, how_to_read, layer_picker, table
from ui.cached import alpha_done, alpha_table, layer_esd, layer_spectra, spectra_overview
from oats.explain import heavytail
from ui import spectra_figures

st.title("Spectra")
st.caption("How much of a layer can a rank-r term hold? Compare the weight W, the scaled weight W D, and W D − S: "
           "what the SVD step factorises once the sparse term has taken the largest entries.")

run = current_run()
if run is not None:
    path = current_path()
    mtime = run_mtime(path)
    q = layer_picker(run)
    sp = layer_spectra(path, mtime, q)
    chart(spectra_figures.spectrum_figure(sp), key="spectrum")
    how_to_read("The singular values σ_k of four matrices of this layer, largest first, on a log axis: the weight W, "
                "the scaled weight W D that OATS decomposes (D = sqrt(mean x²) of each input channel), W D − S (what "
                "is left for the low-rank term once the sparse term has taken its entries: what the SVD step sees) and "
                "the low-rank term L itself. The dashed line is the rank r the budget allows. A curve that drops "
                "steeply before r can be held by a rank-r term; a flat one cannot. The legend gives the share of "
                "‖·‖² in the top r values: compare W D's with W D − S's to see how much the sparse term changes what "
                "the low-rank term has to fit.")
    st.caption(f"Layer {esc(q)}: the top r = {sp.rank} of {min(sp.shape)} singular values hold "
               f"{sp.captured['W']:.0%} of W's energy, {sp.captured['W D']:.0%} of W D's and "
               f"{sp.captured['W D - S']:.0%} of W D − S's; the low-rank term holds {sp.lowrank_share:.0%} of ‖W D‖². "
               f"A flat spectrum (large effective rank) is poorly served by a low-rank term, a steep one well.")
    table(sp.table(), f"spectra-{q}", key="csv-spectra-layer")

    st.subheader("Every layer")
    ov = spectra_overview(path, mtime, len(run.layers))
    chart(spectra_figures.spectra_overview_figure(ov), key="overview")
    chart(spectra_figures.ranks_figure(ov), key="ranks")
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in ov.rows]
    table(rows, "ranks-per-layer", key="csv-ranks")

    st.subheader("Heavy-tailed spectra")
    st.caption(f"The empirical spectral density (ESD) of WᵀW: the eigenvalues λ = σ² of the weight as the model uses "
               f"it. Fit of its tail p(λ) ∝ λ^(−α) for λ ≥ λ_min: {heavytail.METHOD}; at least {heavytail.MIN_TAIL} "
               f"eigenvalues in the tail; ± is the standard error (α − 1)/√n.")
    if st.toggle(f"Fit power laws to layer {esc(q)}'s spectra (W, S + L, S, L and a shuffled W)", key="esd-on"):
        e = layer_esd(path, mtime, q)
        chart(spectra_figures.esd_figure(e), key="esd")
        fw, fc = e.fits.get("W"), e.fits.get("S + L")
        moved = ("" if fw is None or fc is None else
                 f" Here α is {fw.alpha:.2f} ± {fw.sigma:.2f} for W and {fc.alpha:.2f} ± {fc.sigma:.2f} for the "
                 f"compressed S + L.")
        st.markdown(
            "**How to read this.** Each panel is a histogram of eigenvalues on log-spaced bins, drawn on log-log "
            "axes, so a power law is a straight line; the dashed line is the fitted power law from λ_min on, its "
            "slope is −α. A small α (about 2–4) is a heavy tail: a few large directions carry much of the "
            "layer's energy, as in well-trained layers; a large α (above about 6) or a poor fit (large KS "
            "distance D) means no clear tail. The grey curve in the W panel is W with its entries shuffled: the "
            "same values in random places, whose spectrum is a random bulk. Eigenvalues of W beyond that "
            f"bulk are structure learned in training: here {e.spikes} of {len(e.eigenvalues['W'])} lie above the "
            "shuffled matrix's largest. L has only rank-many eigenvalues, so its fit rests on few points." + moved)
        table(e.table(), f"esd-{q}", key="csv-esd")

    st.markdown("**α for every layer, dense vs compressed**")
    n = len(run.layers)
    if alpha_done(path, mtime) or st.button(f"Fit every layer ({n} matrices, dense and compressed)", key="alpha-go",
                                            icon=":material/query_stats:"):
        rows = alpha_table(path, mtime, run)
        st.info("**Does compression move α, and where?** " + esc(heavytail.compression_effect(rows), 2000))
        chart(spectra_figures.alpha_figure(rows), key="alpha")
        table([{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
              "alpha-per-layer", key="csv-alpha", height=300)
        st.caption("Click a column header to sort. Δα = α(S + L) − α(W); stable rank = Σλ / λ_max.")
    else:
        st.caption("Two eigendecompositions and two fits per matrix: about 0.07 s a matrix on two cores "
                   "(computed once per run, shared by everyone who opens it).")
