"""Outliers: which input channels carry outsized activations, and which term keeps their weights."""

import streamlit as st

from ui.state import (chart, column_shares, current_path, current_run, second_moments_by_input, layer_picker, mask_density,
                       run_mtime, table)
from oats.explain import analysis
from ui import figures

st.title("Outliers")
st.caption("In transformers a few input channels often carry activations far larger than the rest. OATS scales each weight column by "
           "its channel's RMS input D_j, so these columns weigh most in the decomposition.")

run = current_run()
if run is not None:
    path = current_path()
    mtime = run_mtime(path)
    threshold = st.slider("Outlier threshold: RMS input above this many times the median channel's", 2.0, 50.0, 5.0,
                          0.5, key="outlier-threshold")
    mom = second_moments_by_input(path, mtime)
    for width in mom.widths():
        labels, m2 = mom.matrix(width)
        chart(figures.moments_heatmap(labels, m2), key=f"moments-{width}")
    rows = analysis.outlier_table(mom, threshold)
    chart(figures.outlier_counts_figure(rows, threshold), key="counts")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Per layer input**")
        table(rows, "outliers-per-input", key="csv-outliers", height=300)
    with c2:
        st.markdown("**Per channel** (flagged in many layers: a feature of the residual stream)")
        table(analysis.outlier_channels(mom, threshold), "outlier-channels", key="csv-channels", height=300)

    st.subheader("One layer, channel by channel")
    q = layer_picker(run)
    cs = column_shares(path, mtime, q)
    s = cs.summary(threshold)
    c = st.columns(3)
    c[0].metric("Outlier channels in this layer's input", s["outlier_channels"])
    c[1].metric("Sparse share, outlier columns", "—" if s["outlier_channels"] == 0 else f"{s['sparse_share_outliers']:.0%}")
    c[2].metric("Sparse share, other columns", f"{s['sparse_share_others']:.0%}")
    chart(figures.column_figure(cs, threshold), key="columns")
    st.caption("Share = ‖S[:, j]‖² / (‖S[:, j]‖² + ‖L[:, j]‖²) in the scaled space (S = S' D, L = L' D).")
    if not s["outlier_channels"]:
        most = max(rows, key=lambda r: r["outliers"])
        if most["outliers"]:
            st.info(f"{q}'s input has no channel above {threshold:g}× the median. Pick a layer reading "
                    f"**{most['input']}** ({most['outliers']} outlier channels) to see where outlier columns go.")
    else:
        more = "low-rank" if s["sparse_share_outliers"] < s["sparse_share_others"] else "sparse"
        st.info(f"In {q}, the outlier columns sit mostly in the **{more} term** (sparse share "
                f"{s['sparse_share_outliers']:.0%} vs {s['sparse_share_others']:.0%} elsewhere; the sparse term keeps "
                f"{s['sparse_nonzeros_outliers']:.0f} vs {s['sparse_nonzeros_others']:.0f} entries per column).")
    rec = run.layer(q)
    chart(figures.mask_figure(mask_density(path, mtime, q), rec.shape, q), key="mask")
    with st.expander("Per-channel table"):
        table(cs.rows(), f"channels-{q}", key="csv-columns", height=300)
