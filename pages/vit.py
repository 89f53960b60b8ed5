"""ViT attention & attribution (paper, Section 5): where the dense, sparse-only and low-rank-only
models look. Thin: widgets, cached calls to ``oats.explain.vit``, figures from ``ui.vit_figures``."""

from __future__ import annotations

import re

import streamlit as st

from oats.evaluation import a_model_of

from ui.text import esc, plain_figure
from ui.state import current_run, RUN_KEY, run_mtime
from ui.widgets import CHART_CONFIG, image_upload
from ui.cached import attention_cached, attribution_cached
from oats.explain import vit
from oats.data import bundled_images
from oats.errors import OatsError
from ui.vit_figures import layers_figure, overlap_frame, overlay_figure

IG_STEP_CHOICES = [8, 16, 32, 64]
SECOND_METHODS = [m for m in vit.ATTRIBUTION_METHODS if m != "ig"]


st.title("ViT attention & attribution")
st.caption(
    "Section 5 of the paper: the same vision transformer with its dense weights, compressed (its sparse and "
    "low-rank terms together) and, for a method with both terms (OATS), with the sparse term only (every "
    "low-rank term zeroed) and with the low-rank term only (every sparse term zeroed). Biases, norms, embeddings "
    "and heads are the same in all of them.")

run = current_run()
if run is None:
    st.stop()
if not vit.is_vision_run(run):
    task = getattr(run.loaded, "task", None) or run.family
    st.info(
        f"The selected run compresses **{esc(run.model_name or 'a model')}**, {esc(a_model_of(task))}, not a vision "
        "transformer: this page explains vision transformers. Pick a dinov2-small run in the sidebar, or "
        "compress dinov2-small on the Compress page (or `oats compress dinov2-small`), then come back.")
    st.stop()
path = st.session_state[RUN_KEY]
mtime = run_mtime(path)
labels = vit.mode_labels(run)  # the models' names, after the run method's terms
modes = vit.compared_modes(run)  # the models this run has (registry.run_variants): a Wanda run, dense and sparse


def named(by_mode: dict) -> dict:
    """``by_mode`` keyed by this run's labels (the figures title each panel by its key)."""
    return {labels.get(m, m): v for m, v in by_mode.items()}

# ------------------------------------------------------------------ image
left, right = st.columns([2, 3])
with left:
    source = st.radio("Image", ["bundled photo", "upload"], horizontal=True, key="vit_source")
    if source == "bundled photo":
        photos = bundled_images()
        names = sorted(photos)
        name = st.selectbox("Photo", names, index=names.index("chelsea") if "chelsea" in names else 0,
                            key="vit_photo")
        image, image_key, image_name = photos[name], f"bundled:{name}", name
    else:
        got = image_upload("vit_upload", "explain")
        if got is None:
            st.stop()
        image, image_key, image_name = got
with right:
    c1, c2, c3 = st.columns(3)
    head_fusion = c1.selectbox("Head fusion", list(vit.HEAD_FUSIONS), key="vit_fusion",
                               help="How the heads' attention maps of a layer become one map.")
    discard_ratio = c2.slider("Discard ratio", 0.0, 0.9, vit.DISCARD_RATIO, 0.05, key="vit_discard",
                              help="Share of the lowest fused attentions zeroed in every layer (never CLS→CLS).")
    topk_share = c3.slider("Top-k patches (%)", 1, 50, int(vit.TOPK_SHARE * 100), 1, key="vit_topk",
                           help="k for the top-k IoU in the overlap table, as a share of the patches.")

try:
    maps = attention_cached(path, mtime, image_key, head_fusion, float(discard_ratio), run, image)
except OatsError as exc:
    st.error(esc(exc))
    st.stop()
gh, gw = maps.grid
k = vit.default_k(gh * gw, topk_share / 100)

# ------------------------------------------------------------------ rollout
st.subheader("Attention rollout")
st.markdown(
    f"Per layer: fuse the heads ({head_fusion}), zero the lowest {discard_ratio:.0%} of the fused map's "
    "entries (never CLS→CLS), add the identity for the residual path, renormalise the rows, multiply over "
    f"the layers; the CLS row over the {gh}×{gw} patches is the map. Colours are rescaled within each panel.")
st.plotly_chart(plain_figure(overlay_figure(maps.image, named(maps.rollout), value_name="rollout")),
                config=CHART_CONFIG, theme=None, key="vit_rollout_chart")
with st.expander("How to read this", icon=":material/help:"):
    st.markdown("The photo as the model saw it, overlaid with where the CLS token's information comes from after all "
                "layers (attention rollout): bright patches feed the image's representation most. The panels "
                "are the same network with its dense weights, compressed, and (for a method with both terms) with "
                "only the sparse terms and with only the low-rank terms. A compressed panel whose bright patches "
                "match the dense panel's still routes the image the same way; a single-term panel that matches "
                "means that term carries it alone, a diffuse or scattered one that it lost it without the other. The overlap table "
                "at the bottom puts numbers on it (rank correlation and top-k overlap with dense).")
st.caption("Rollout, seconds per model (forward pass + rollout): "
           + ", ".join(f"{labels[m]} {s:.2f}" for m, s in maps.seconds.items()))

view = st.radio("Per-layer view", ["each layer's CLS attention", "rollout up to each layer"], horizontal=True,
                key="vit_layer_view")
stack = maps.layer_attention if view.startswith("each") else maps.layer_rollout
st.plotly_chart(plain_figure(layers_figure(named(stack), image=maps.image)), config=CHART_CONFIG, theme=None,
                key="vit_layers_chart")

# ------------------------------------------------------------------ attributions
st.subheader("Attributions (captum)")
st.markdown(
    "DINOv2 has no classification head, so there is no class score to explain. The target is the "
    "**projection of the model's CLS feature onto the dense model's CLS feature direction for this "
    "image**: every model of the run is explained with respect to the same "
    "direction of feature space (\"which pixels make this model produce the dense model's representation "
    "of this image\"). Integrated Gradients start from the all-zero normalised image (the mean colour); "
    "pixel attributions are summed as |value| over the colour channels and averaged over each patch.")
a1, a2, a3 = st.columns([2, 2, 1])
second = a1.selectbox("Second method", SECOND_METHODS, format_func=vit.ATTRIBUTION_METHODS.get, key="vit_second")
steps = a2.select_slider("Integrated Gradients steps", IG_STEP_CHOICES, value=vit.IG_STEPS, key="vit_steps")
attr_key = (path, mtime, image_key, second, int(steps))
pressed = a3.button("Compute attributions", type="primary", key="vit_attr_button")

attr_maps: dict[str, dict] = {}
if pressed or st.session_state.get("vit_attr_key") == attr_key:
    jobs = [(m, mode) for m in ("ig", second) for mode in modes]
    bar = st.progress(0.0, text="Attributions ...") if pressed else None
    seconds: dict[str, dict[str, float]] = {}
    try:
        for i, (method, mode) in enumerate(jobs):
            if bar is not None:
                bar.progress(i / len(jobs), text=f"{vit.ATTRIBUTION_METHODS[method]}, {labels[mode]} ...")
            res = attribution_cached(path, mtime, image_key, method, mode, int(steps), run, image)
            attr_maps.setdefault(method, {})[mode] = res.maps[method][mode]
            seconds.setdefault(method, {})[mode] = res.seconds[method][mode]
    except OatsError as exc:
        st.error(esc(exc))
        st.stop()
    if bar is not None:
        bar.empty()
    st.session_state["vit_attr_key"] = attr_key
    for method, by_mode in attr_maps.items():
        st.plotly_chart(plain_figure(overlay_figure(maps.image, named(by_mode), title=vit.ATTRIBUTION_METHODS[method],
                                                    value_name="attribution")),
                        config=CHART_CONFIG, theme=None, key=f"vit_attr_chart_{method}")
        st.caption(f"{vit.ATTRIBUTION_METHODS[method]}, seconds per model: "
                   + ", ".join(f"{labels[m]} {s:.1f}" for m, s in seconds[method].items()))
else:
    st.info(f"Integrated Gradients ({steps} steps) and {vit.ATTRIBUTION_METHODS[second]} for the {len(modes)} models "
            "take a while on a CPU: press **Compute attributions**. Results are kept for this run and image.")

# ------------------------------------------------------------------ overlap
st.subheader("Overlap between the maps")
st.markdown(
    f"Spearman rank correlation of the {gh * gw} patch values (−1..1) and the intersection over union of "
    f"the top {k} patches of each map (0..1), for every pair of models.")
table = overlap_frame(vit.overlap_rows({"rollout": maps.rollout, **attr_maps}, k=k, labels=labels))
st.dataframe(table, hide_index=True, width="stretch", column_config={
    "spearman": st.column_config.NumberColumn(format="%.3f"),
    "top-k IoU": st.column_config.NumberColumn(format="%.3f")})
st.download_button("Download the table (CSV)", table.to_csv(index=False).encode(),
                   file_name=f"vit_overlap_{re.sub(r'[^A-Za-z0-9_-]+', '_', image_name)}.csv", mime="text/csv", key="vit_overlap_csv")
