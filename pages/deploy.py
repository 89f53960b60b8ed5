"""Deploy: how much smaller the selected run is as a deployable model, how fast it runs on this
machine next to the dense model and the floor, and the command that exports it. A run whose model
stays on disk (a mid-size model) has its block linears timed one matrix at a time instead
(``ui/deploy_streamed.py``)."""

import shlex
from pathlib import Path

import streamlit as st

from ui.state import current_path, current_run, MODEL_LOCK, run_mtime
from ui.widgets import table
from ui.cached import deploy_sizes
from ui import deploy_streamed
from oats.deploy.speed import compare_speed
from oats.runs.lazy import LazyRun

st.title("Deploy")
st.markdown("A run folder keeps what the analysis needs (the original weights, the second moments). "
            "`oats export` writes what a deployment needs and nothing else: **sparse** (S in compressed rows "
            "with 8-bit column offsets, plus U and V, loaded with `oats.load_compressed`) or **folded** (one dense matrix per layer, an "
            "ordinary model folder that plain transformers or timm loads).")

run = current_run()
if run is not None:
    path = current_path()
    sizes = deploy_sizes(path, run_mtime(path))
    dense = sizes["dense"]
    c = st.columns(4)
    c[0].metric("Block linears, dense", f"{dense / 1e6:.1f} MB")
    c[1].metric("Sparse export, in memory", f"{sizes['sparse_memory'] / 1e6:.1f} MB",
                f"{sizes['sparse_memory'] / dense:.2f}× dense", delta_color="off", delta_arrow="off",
                help=f"as oats.load_compressed holds it here ({sizes['kernel']} kernel)")
    c[2].metric("Sparse export, on disk", f"{sizes['sparse_disk'] / 1e6:.1f} MB",
                f"{sizes['sparse_disk'] / dense:.2f}× dense", delta_color="off", delta_arrow="off")
    c[3].metric("Folded export", f"{sizes['folded'] / 1e6:.1f} MB", "1.00× dense", delta_color="off", delta_arrow="off")
    table([{"form": "dense", "MB": dense / 1e6, "× dense": 1.0, "parameters": sizes["params_dense"]},
           {"form": "sparse, CSR8 (8-bit column offsets; the file, and memory with the csr8 kernel)",
            "MB": sizes["sparse_csr8"] / 1e6, "× dense": sizes["sparse_csr8"] / dense,
            "parameters": sizes["params_kept"]},
           {"form": "sparse, torch CSR in memory (32-bit indices; kernel='csr')", "MB": sizes["sparse_csr"] / 1e6,
            "× dense": sizes["sparse_csr"] / dense, "parameters": sizes["params_kept"]},
           {"form": "folded (S + U V as one dense matrix)", "MB": sizes["folded"] / 1e6, "× dense": 1.0,
            "parameters": sizes["params_dense"]}],
          f"deploy-sizes-{Path(path).name}", key="csv-sizes")
    st.caption("Block linears only (weights, biases, values, indices, factors); embeddings, norms and heads are "
               "the same in every form. An export's file holds S in CSR8 (5 bytes an entry); "
               "`oats.load_compressed` keeps that layout and multiplies with oats's compiled kernels, or, with "
               "`kernel='csr'` (or where those kernels cannot run), widens the indices to 32 bits for torch's "
               f"CSR kernels. CSR8 kernels on this machine: {sizes['csr8_backend']}.")

    st.subheader("Export it")
    out = f"exports/{Path(path).name}"
    st.code(f"oats export {shlex.quote(str(path))} --out {shlex.quote(out)}\n"
            f"oats export {shlex.quote(str(path))} --out {shlex.quote(out + '-folded')} --format folded",
            language="bash")

    st.subheader("Throughput on this machine")
    goal = st.radio("Goal", ["smallest", "fastest"], horizontal=True, key="deploy-goal",
                    help="How oats.load_compressed(DIR, goal=...) builds each layer here. smallest: every layer "
                         "stays sparse (the export's size), with the faster of the kernel's loops on this CPU. "
                         "fastest: a layer that measures faster as a dense product on this CPU is folded back to "
                         "dense (never slower than dense, layer by layer), at the memory stated.")
    if isinstance(run, LazyRun):  # a model on disk: its block linears timed one matrix at a time
        deploy_streamed.draw(run, path, goal)
        st.stop()
    key = f"deploy-speed-{path}-{goal}"
    if st.button("Measure throughput", key="deploy-measure",
                 help="Exports the run to a temporary folder, then times the dense model and the export "
                      "in turn, three rounds (a few seconds to a minute)."):
        bar = st.progress(0.0, text="starting")
        with MODEL_LOCK:
            st.session_state[key] = compare_speed(run, progress=lambda f, m: bar.progress(min(f, 1.0), text=m),
                                                  goal=goal)
        bar.empty()
    res = st.session_state.get(key)
    if res:
        table([{"model": k, res["unit"]: res[k], "floor": res[f"floor_{k}"],
                "bound": "bandwidth" if res[f"bound_{k}"] == "B" else "GEMM rate",
                "× dense": res[k] / res["dense"], "share of floor": res[k] / res[f"floor_{k}"]}
               for k in ("dense", "export")], f"deploy-speed-{Path(path).name}", key="csv-speed")
        st.caption(f"Measured on this machine only: {res['cpu']}, {res['threads']} threads, CSR8 kernels "
                   f"{res['kernels']}. Another CPU gives other figures (its gathers and memory differ): measure "
                   "where the model will run. Median of three rounds. The floor is the time to stream the "
                   "weights one step reads at this machine's measured bandwidth, or its linear-layer FLOPs at "
                   "the measured GEMM rate, whichever is larger. Other work on the machine slows both alike.")
        st.markdown(f"**Per layer** ({res['plan']}):")
        table(res["plan_rows"], f"deploy-plan-{Path(path).name}", key="csv-plan")
        st.caption("The tokens one call feeds each layer (one when decoding, the batch's otherwise) through every "
                   "layer of a shape in turn (weights from memory, as in a model), median of five rounds, µs per "
                   "layer; the loader keeps the fastest form its goal allows (CSR8 unless another is at least 3% "
                   "faster). `oats.load_compressed(DIR, goal=..., tokens=...)` makes the same choice.")
