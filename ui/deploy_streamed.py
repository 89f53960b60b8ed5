"""The Deploy page's speed section for a run whose model stays on disk (``oats.runs.lazy.LazyRun``):
the block linears timed one matrix at a time (``oats.deploy.streamed``), behind a button that
says how long it takes."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from oats.deploy.streamed import PROMPT_TOKENS, peak_bytes, streamed_estimate, streamed_speed
from oats.errors import OatsError
from oats.runs.estimate import duration
from ui.text import esc
from ui.widgets import table


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _totals(res) -> list[dict]:
    t = res.totals
    out = []
    for k in ("dense", "deployed"):
        out.append({"model": "dense (fp32)" if k == "dense" else f"deployed (goal {res.goal})",
                    "ms per token (1 token)": _ms(t[f"{k}_decode"]), "tokens/s": 1 / t[f"{k}_decode"],
                    "floor ms per token": _ms(t[f"floor_{k}"]),
                    "bound": "bandwidth" if res.bounds[k] == "B" else "GEMM rate",
                    f"ms for a {res.prompt_tokens}-token prompt": _ms(t[f"{k}_prompt"]),
                    "× dense speed (1 token)": t["dense_decode"] / t[f"{k}_decode"],
                    f"× dense speed ({res.prompt_tokens} tokens)": t["dense_prompt"] / t[f"{k}_prompt"]})
    return out


def _show(res, path: str) -> None:
    name = Path(path).name
    ratio = res.totals["dense_decode"] / res.totals["deployed_decode"]
    st.markdown(f"**Block linears, one token:** dense {res.totals['dense_decode'] * 1e3:.1f} ms, deployed "
                f"{res.totals['deployed_decode'] * 1e3:.1f} ms: **{ratio:.2f}× dense speed** "
                f"({res.matrices} matrices in {len(res.groups)} shapes, measured in {duration(res.seconds)}).")
    table(_totals(res), f"deploy-streamed-totals-{name}", key="csv-streamed-totals")
    table(res.rows(), f"deploy-streamed-{name}", key="csv-streamed")
    st.caption(f"Measured on this machine only: {esc(res.cpu)}, {res.threads} threads, CSR8 kernels "
               f"{esc(res.kernels)}. Per shape: one matrix read from disk, built as the export builds it and as "
               "the dense layer (its original weight in fp32), each timed in turn, median of five calls; the "
               "count says how many matrices of the model share its shape, rank and density, and the totals "
               "add them up. The floor is the time to stream every block linear's bytes at this machine's "
               "measured bandwidth, or their FLOPs at the measured GEMM rate, whichever is larger. "
               "Matrices smaller than the CPU's cache (a tiny model) stay in it between calls and read faster "
               "than in a model, on both sides alike.")


def draw(run, path: str, goal: str) -> None:
    """The streamed speed measurement of ``run`` for ``goal``: its estimate, the button, progress per
    shape, and the last result of this session."""
    st.markdown("This model stays on disk (too large to hold here), so the dense model and the export "
                "cannot both be loaded and timed whole. Instead, each distinct **block linear** (shape, rank and "
                "density) is read from disk one matrix at a time, built as the dense layer and as the export's "
                "layer, timed on one token (decoding) and on a "
                f"{PROMPT_TOKENS}-token prompt, and dropped; matrices of the same kind are measured once and "
                "counted as many times as they occur. **Only the block linears are timed**: the embeddings, "
                "attention's scores, the norms and the head are the same in the dense model and in the export "
                "(the export replaces the block linears only) and timing them would need the whole model in "
                "memory. In a model they add the same time to both sides, so the whole model's speed-up is "
                "smaller than the block linears'.")
    key = f"deploy-streamed-{path}-{goal}"
    if not run.layers:
        st.info("This run has no compressed block yet: nothing to measure.")
        return
    try:
        est = streamed_estimate(run, goal)
    except OatsError as e:
        st.error(esc(e))
        return
    if key not in st.session_state:
        st.info(f"Measuring takes about {duration(est)} on this machine (less once this machine has planned these "
                f"shapes); memory grows by about {peak_bytes(run, goal) / 1e9:.1f} GB for a moment while the largest "
                "matrix's deployed layer is built.")
    if st.button(f"Measure the block linears (about {duration(est)})", key="deploy-measure-streamed"):
        box = st.status("Measuring the block linears one matrix at a time", state="running", expanded=True)
        bar = box.progress(0.0, text="starting")
        try:
            st.session_state[key] = streamed_speed(
                run, goal, progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), text=esc(m)))
        except OatsError as e:
            box.update(label="Measurement failed", state="error")
            st.error(esc(e))
            return
        box.update(label="Measured", state="complete", expanded=False)
    res = st.session_state.get(key)
    if res is not None:
        _show(res, path)
