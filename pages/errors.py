"""Error budget: how much each term contributes, where the error goes along depth, what a block's terms are worth."""

import streamlit as st

from ui.text import esc
from ui.state import (LAYER_KEY, how_to_read, ablation_reference, block_ablation, chart, current_path, current_run,
                       layer_budget, primary_metric, run_info, run_mtime, run_task, table)
from oats.explain import analysis
from ui import figures
from oats.errors import OatsError
from oats.methods import registry

st.title("Error budget")
st.caption("How far is each term alone, and both together, from the scaled weight W D — and what does each "
           "term do for the model's output?")

run = current_run()
if run is not None:
    path = current_path()
    mtime = run_mtime(path)
    rows = layer_budget(path, mtime)
    med = {k: sorted(r[k] for r in rows)[len(rows) // 2] for k in ("both", "sparse_only", "lowrank_only")}
    variants = registry.run_variants(run)  # a term alone only where the run's method has both terms
    if "sparse" in variants and "lowrank" in variants:
        st.markdown(f"Median scaled error over the {len(rows)} layers: **{med['both']:.3f}** with both terms, "
                    f"{med['sparse_only']:.3f} with the sparse term alone, {med['lowrank_only']:.3f} with the "
                    f"low-rank term alone.")
    else:
        st.markdown(f"Median scaled error over the {len(rows)} layers: **{med['both']:.3f}** with the "
                    f"{esc(registry.terms(run.method, run.config))} term (method {esc(run.method)} has one kind "
                    "of term).")
    budget = figures.error_budget_figure(rows)
    if "sparse" in variants and "lowrank" in variants:
        chart(budget, key="budget")
        how_to_read("One group of bars per layer, each the layer's scaled error ‖W D − approximation‖ / ‖W D‖ (D: "
                    "the input scale sqrt(mean x²), so errors on busy input channels count more): with both terms, "
                    "with the sparse term alone and with the low-rank term alone. 0 is exact, 1 is as far as zeroing "
                    "the layer. When both terms are far better than either alone, the method needed the pair: the "
                    "sparse term took the large entries, the low-rank term the spread-out structure. The energy "
                    "chart below says how ‖W D‖² splits between them.")
    else:  # one kind of term: its bar alone (the other term's would be the all-zero model, error 1)
        budget.data = [t for t in budget.data if t.name == "sparse + low-rank"]
        budget.data[0].name = f"{registry.terms(run.method, run.config)} term"
        chart(budget, key="budget")
        how_to_read("One bar per layer, the layer's scaled error ‖W D − approximation‖ / ‖W D‖ (D: the input scale "
                    "sqrt(mean x²), so errors on busy input channels count more) with the run's one kind of term. "
                    "0 is exact, 1 is as far as zeroing the layer. The energy chart below says how much of ‖W D‖² "
                    "the term holds.")
    chart(figures.energy_split_figure(rows), key="energy")
    st.caption("S and L are not orthogonal: when both reach into the same entries the cross terms are negative, "
               "and ‖S‖² + ‖L‖² can exceed ‖W D‖².")
    table([{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
          "error-budget", key="csv-budget", height=300)

    left, right = st.columns(2)
    with left:
        chart(figures.block_error_figure(analysis.block_errors(run)), key="depth")
    with right:
        chart(figures.convergence_figure(analysis.convergence(run), highlight=st.session_state.get(LAYER_KEY)),
              key="convergence")

    st.subheader("Per-block ablation")
    pm = primary_metric(run_task(run_info(path)) or "")
    method = registry.find(run.method)
    if pm is None:
        st.info("This run's manifest does not name its model's task (a run saved with oats.save_run), so there "
                "is no metric to measure the per-block ablation with: compress it with the app or `oats compress`.")
    elif method is None or not method.two_terms:
        st.info(f"This run has only one kind of term (method {esc(run.method)}): the per-block ablation needs a sparse "
                f"and a low-rank term — open an OATS run.")
    else:
        metric, higher = pm
        blocks = sorted({r.block for r in run.layers})
        st.caption(f"Turn off the low-rank terms (sparse only) or the sparse terms (low-rank only) of one block, keep "
                   f"every other block compressed, and measure {metric} on the quick evaluation set. "
                   f"Each block takes a few seconds.")
        done_key = f"ablated::{path}::{mtime}"
        done = st.session_state.setdefault(done_key, [])
        c1, c2 = st.columns([3, 1])
        chosen = c1.multiselect("Blocks", blocks, default=[b for b in blocks if b not in done][:1] or blocks[:1])
        c2.write("")
        go = c2.button("Measure", type="primary", icon=":material/science:")
        if go and chosen:
            bar = st.progress(0.0, text="dense and compressed model ...")
            try:
                ablation_reference(path, mtime)
                for i, b in enumerate(chosen):
                    bar.progress((i + 0.5) / (len(chosen) + 0.5), text=f"block {b} ...")
                    block_ablation(path, mtime, b)
                    if b not in done:
                        done.append(b)
            except OatsError as e:
                st.error(esc(e))
            bar.empty()
        if done:
            res = ablation_reference(path, mtime) + [r for b in sorted(done) for r in block_ablation(path, mtime, b)]
            chart(figures.ablation_figure(res, metric, higher), key="ablation")
            table(res, "ablation", key="csv-ablation")
        else:
            st.info("No block measured yet: pick blocks and press Measure.")
