"""Heads: every attention head of one layer, dense against the compressed model and each term
alone, and the heads whose attention changed most. Thin: widgets, a cached call to
``oats.explain.heads``, figures from ``ui.head_figures``."""

from __future__ import annotations

import streamlit as st

from ui.head_figures import (entropy_figure, head_change_figure, head_focus_figure, head_focus_vision_figure,
                              heads_figure, run_diff_bars, run_diff_maps, token_maps_figure)
from ui.text import esc
from ui.state import complete_runs, current_run, RUN_KEY, run_mtime
from ui.widgets import chart, table
from ui.cached import compressed_view, head_view, text_explanation
from oats.data import bundled_images, evaluation_sentences
from oats.errors import OatsError
from oats.explain import heads, vit
from oats.explain import text as text_explain
from oats.methods import registry
from oats.runs.estimate import duration
from oats.runs.lazy import streamed_seconds


def compare_runs(view: heads.HeadView, layer: int, head: int) -> None:
    """Section: this run against another run of the same model on the layer (e.g. OATS vs Wanda)."""
    st.subheader("Against another run of the same model")
    rows = {r["path"]: r for r in complete_runs()}
    me = rows.get(path, {"name": "this run", "method": run.method, "compression": None})
    same = [p for p, r in rows.items() if p != path and r.get("model_name") == run.model_name]
    if not same:
        st.info(f"No other run of {esc(run.model_name or 'this model')} to compare with: compress it with "
                "another method (e.g. Wanda) on the Compress page, then come back.")
        return
    other = st.selectbox("Second run", [None, *same], key=f"heads_other_{path}",
                         format_func=lambda p: "pick a run to compare with ..." if p is None else rows[p]["name"])
    if other is None:
        return
    try:
        view_b = compressed_view(other, run_mtime(other), text, photo)
        diff = heads.diff_runs(view, view_b, layer)
    except OatsError as e:
        st.error(esc(e))
        return
    except Exception as e:  # noqa: BLE001 - a damaged second run is one line, the page stays
        st.error(f"run '{esc(rows[other]['name'])}' could not be compared ({esc(type(e).__name__)}: {esc(e, 200)})")
        return
    name_a, name_b = heads.run_names(me, rows[other])
    st.markdown(esc(heads.diff_summary(diff, name_a, name_b)))
    chart(run_diff_bars(diff, name_a, name_b), key="heads-diff-bars")
    chart(run_diff_maps(diff, view, head, name_a, name_b), key="heads-diff-maps")
    if diff.dense_gap > 1e-4:
        st.warning(f"The two runs' dense models differ (up to {diff.dense_gap:.2g} in attention): they were not "
                   "made from the same weights, so part of the difference is not the compression's.")


st.title("Heads")
st.caption("Every attention head of a layer in the dense model, the compressed model and, for a method with a "
           "sparse and a low-rank term, each term alone; one head up close; which heads moved most, and how another "
           "run of the same model compares. Distances are Jensen-Shannon divergences between a head's "
           "attention rows and the dense head's (bits: 0 the same, 1 disjoint); entropies are of each row "
           "(nats: low for a head that looks at one token, high for a diffuse one).")

run = current_run()
if run is None:
    st.stop()
path = st.session_state[RUN_KEY]
mtime = run_mtime(path)
vision = vit.is_vision_run(run)
if vision:
    photos = sorted(bundled_images())
    photo = st.selectbox("Photo", photos, index=photos.index("chelsea") if "chelsea" in photos else 0,
                         key="heads_photo", help="The ViT's attention from its CLS token to the 16×16 patches.")
    text = None
else:
    default = evaluation_sentences()[0]
    text = st.text_input("Text", value=default, key="heads_text", max_chars=400,
                         help=f"One or two sentences; the first {heads.MAX_TOKENS} tokens are used.")
    photo = None
# A run opened lazily (a mid-size model on disk) streams every replaced matrix for each variant's
# pass: that waits for a button that says how long it takes.
n_modes = len(registry.run_variants(run))
slow = streamed_seconds(run, heads.MAX_TOKENS, passes=n_modes)
go_key = f"heads-go-{path}"
if slow is not None and slow > 3 and not st.session_state.get(go_key):
    st.info(f"This model stays on disk (too large to hold here): each of the {n_modes} models ({', '.join(registry.run_variants(run))}) "
            f"reads its weights as it runs. The attention maps take about {duration(slow)} on this machine.")
    if st.button(f"Compute the attention maps (about {duration(slow)})", type="primary", key="heads-go-btn"):
        st.session_state[go_key] = True
        st.rerun()
    st.stop()
try:
    view = head_view(path, mtime, text, photo, run)
except OatsError as e:
    st.error(esc(e))
    st.stop()

st.markdown(heads.summary(view))
layer = st.select_slider("Layer", options=list(range(view.layers)), value=min(view.layers - 1, view.layers // 2),
                         key=f"heads_layer_{path}")
chart(heads_figure(view, layer), key="heads-grid")
with st.expander("How to read this", expanded=False):
    st.markdown(
        "Each small map is one head. For text, row *q* column *k* is how much token *q* attends to token *k* "
        "(a decoder's row only sees the tokens before it); for a ViT, each map is the CLS token's attention over the "
        "patch grid, drawn over the photo the model saw. The rows are the same layer in the models this run has: "
        "dense weights, the compressed model and, for a method with both terms (OATS), the sparse term alone and the "
        "low-rank term alone; biases, norms and embeddings are the same in all. Every map shares the colour bar, "
        "0 to the layer's largest attention. A head the compression left alone looks the same in the first two "
        "rows; pick it under *One head up close* to read it token by token. The chart below gives every head of every "
        "layer one number per variant, its mean Jensen-Shannon divergence to the dense head, and the table sorts them.")

st.subheader("One head up close")
f1, f2 = st.columns(2)
head = f1.selectbox("Head", list(range(view.heads)), key=f"heads_head_{path}", format_func=lambda h: f"head {h}")
others = [m for m in view.maps if m != "dense"]
versus = f2.selectbox("Beside dense", others, key=f"heads_focus_mode_{path}", format_func=view.labels.get)
if vision:
    chart(head_focus_vision_figure(view, layer, head, ("dense", versus)), key="heads-focus")
else:
    chart(head_focus_figure(view, layer, head, ("dense", versus)), key="heads-focus")
    st.caption("Hover a cell: the query token, the key token it attends to, the weight, and the three tokens that "
               "query attends to most. Each row sums to 1.")
compare_runs(view, layer, head)
chart(head_change_figure(view), key="heads-change")
chart(entropy_figure(view), key="heads-entropy")
st.subheader("Heads that changed most")
table(heads.changed_heads(view, top=60), f"heads-{run.model_name}", key="csv-heads", height=320)
st.caption("Seconds per variant (forward pass and statistics): " +
           ", ".join(f"{view.labels[m]} {s:.2f}" for m, s in view.seconds.items()))

if not vision:
    st.header("Which tokens matter (Section 5, for text)")
    encoder = getattr(run.loaded, "task", None) == "encoder"
    st.markdown(
        "The paper's Section 5 for a language model: **attention rollout** (heads averaged, the identity added for "
        "the residual path, multiplied over the layers; the row the output uses: "
        + ("the mean over tokens, as the encoder mean-pools" if encoder else "the last token, which predicts the next")
        + ") and **integrated gradients** on the input embeddings (captum's layer integrated gradients; baseline: "
        "the same tokens with every non-special token replaced by the pad token), plus **token ablation** (each "
        "token replaced by the baseline's alone: the change of the target). The target is "
        + ("the cosine between each model's embedding of the text and the *dense* model's embedding of the second "
           "sentence" if encoder else "the log-probability of the token the *dense* model predicts next")
        + ", so every model is explained against the same reference.")
    second = None
    if encoder:
        sentences = evaluation_sentences()
        second = st.text_input("Second sentence", value=sentences[1] if len(sentences) > 1 else sentences[0],
                               key="heads_second", max_chars=400)
    c1, c2 = st.columns([3, 1])
    steps = c1.select_slider("Integrated Gradients steps", options=[8, 16, 32, 64], value=16, key="heads_ig_steps",
                             help="Points on the path from the baseline, at first. A model whose attributions miss "
                                  "summing to f(text) − f(baseline) by more than a tenth of it gets twice as many, "
                                  f"up to {text_explain.IG_MAX_STEPS}, while that halves the gap; the table below "
                                  "gives each model's steps and the gap left (captum's delta).")
    c2.write("")
    asked = c2.button("Compute attributions", type="primary", key="heads_ig_go")
    done_key = f"heads-ig::{path}::{mtime}::{text}::{second}::{steps}"
    if asked:
        st.session_state[done_key] = True
    with_ig = bool(st.session_state.get(done_key))
    try:
        with st.spinner(f"Integrated gradients for the {len(view.maps)} models ..." if with_ig else "Attention rollout ..."):
            ex = text_explanation(path, mtime, text, second, int(steps), with_ig, run)
    except OatsError as e:
        st.error(esc(e))
        st.stop()
    if not with_ig:
        st.info(f"Attention rollout is below. Integrated gradients take {steps} forward and backward passes per "
                f"model (more, up to {text_explain.IG_MAX_STEPS}, for a model they are not complete for), "
                f"{len(registry.run_variants(run))} models: press **Compute attributions**. Results are kept for this "
                "run and text.")
    st.caption(f"Target: {esc(ex.target)}.")
    chart(token_maps_figure(ex, view.labels), key="heads-tokens")
    if ex.attributions:
        bad = text_explain.incomplete(ex)
        if bad:
            st.warning("Integrated gradients miss completeness for "
                       + ", ".join(f"{view.labels[m]} (at {ex.steps_used.get(m, ex.steps)} steps)" for m in bad)
                       + ": their sum is more than a tenth of f(text) − f(baseline) away from it (captum's delta, "
                       f"below), after doubling the steps while that halved the gap (up to {text_explain.IG_MAX_STEPS})."
                       " The model's output jumps along the straight path from the baseline, so more steps help "
                       "little; read those rows with care, and lean on the token ablation row, which needs no path.")
        more = [m for m in ex.attributions if ex.steps_used.get(m, ex.steps) > ex.steps]
        if more:
            st.caption(f"Integrated gradients took more than {ex.steps} steps for "
                       + ", ".join(f"{view.labels[m]} ({ex.steps_used[m]})" for m in more)
                       + f": at {ex.steps} their sum missed f(text) − f(baseline) by more than a tenth of it.")
        table([{"model": view.labels[m], "f(text)": ex.value[m][0], "f(baseline)": ex.value[m][1],
                "sum of attributions": float(ex.attributions[m].sum()), "captum delta": ex.delta[m],
                "steps": ex.steps_used.get(m, ex.steps)}
               for m in ex.attributions], f"ig-completeness-{run.model_name}", key="csv-ig-complete")
    st.subheader("Overlap between the maps")
    st.caption("Spearman rank correlation of the per-token values and the intersection over union of the top-k "
               "tokens of each map (|attribution| for integrated gradients), for every pair of models.")
    table(vit.overlap_rows(text_explain.overlap_maps(ex), labels=view.labels), f"token-overlap-{run.model_name}", key="csv-token-overlap")
