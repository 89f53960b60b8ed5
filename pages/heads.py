"""Heads: every attention head of one layer, dense against the compressed model and each term
alone, and the heads whose attention changed most. Thin: widgets, a cached call to
``oats.explain.heads``, figures from ``ui.head_figures``."""

from __future__ import annotations

import streamlit as st

from ui.head_figures import entropy_figure, head_change_figure, heads_figure
from ui.state import MODEL_LOCK, RUN_KEY, chart, current_run, run_mtime, table
from oats.data import bundled_images, evaluation_sentences
from oats.errors import OatsError
from oats.explain import heads, vit


@st.cache_data(max_entries=12, show_spinner="Running the input through the dense model and its three variants ...")
def head_view(path: str, mtime: float, text: str | None, photo: str | None, _run) -> heads.HeadView:
    image = bundled_images()[photo] if photo else None
    with MODEL_LOCK:  # the shared model's modes are switched (and restored)
        return heads.explain_heads(_run, text=text, image=image)


st.title("Heads")
st.caption("Every attention head of a layer in the dense model, the compressed model (sparse + low-rank) and each "
           "term alone, and which heads moved most. Distances are Jensen-Shannon divergences between a head's "
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
try:
    view = head_view(path, mtime, text, photo, run)
except OatsError as e:
    st.error(str(e))
    st.stop()

st.markdown(heads.summary(view))
layer = st.select_slider("Layer", options=list(range(view.layers)), value=min(view.layers - 1, view.layers // 2),
                         key=f"heads_layer_{path}")
chart(heads_figure(view, layer), key="heads-grid")
with st.expander("How to read this", expanded=False):
    st.markdown(
        "Each small map is one head. For text, row *q* column *k* is how much token *q* attends to token *k* "
        "(a decoder's row only sees the tokens before it); for a ViT, each map is the CLS token's attention over the "
        "patch grid. The rows are the same layer in four models: dense weights, the compressed model (S + L), the "
        "sparse term alone and the low-rank term alone; biases, norms and embeddings are the same in all four. A head "
        "the compression left alone looks the same in the first two rows. The chart below gives every head of every "
        "layer one number per variant, its mean Jensen-Shannon divergence to the dense head, and the table sorts them.")
chart(head_change_figure(view), key="heads-change")
chart(entropy_figure(view), key="heads-entropy")
st.subheader("Heads that changed most")
table(heads.changed_heads(view, top=60), f"heads-{run.model_name}", key="csv-heads", height=320)
st.caption("Seconds per variant (forward pass and statistics): " +
           ", ".join(f"{heads.MODE_LABELS[m]} {s:.2f}" for m, s in view.seconds.items()))
