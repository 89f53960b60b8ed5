"""Error budget: how much each term contributes, where the error goes along depth, what a block's terms are worth."""

import streamlit as st

from ui.text import esc
from ui.state import current_path, current_run, LAYER_KEY, run_info, run_mtime, run_task
from oats.evaluation import primary_metric  # the task registry's answer
from ui.widgets import chart, how_to_read, table
from ui.cached import ablation_reference, block_ablation, evaluation_tokens, layer_budget
from oats.runs.estimate import duration
from oats.runs.lazy import streamed_seconds
from oats.explain import budget as error_budget, quality
from ui import budget_figures, evaluations
from oats.errors import OatsError
from oats.evaluation import metric_name
from oats.methods import registry


def _ablation_time(run, path: str, mtime: float) -> str:
    """How long one block's ablation takes: a few seconds in memory; for a model on disk, its two
    streamed evaluation passes as measured on the spot (``oats.runs.lazy.streamed_seconds``)."""
    each = streamed_seconds(run, evaluation_tokens(path, mtime), passes=2)
    if each is None or each <= 3:
        return "Each block takes a few seconds."
    return (f"This model stays on disk: each block takes about {duration(each)} here (two streamed evaluations), "
            f"the first {duration(each)} more for the dense and compressed reference.")


def _ablation_rows(rows: list[dict], metric: str) -> list[dict]:
    """The ablation table: block and change, then the primary metric's mean and its value on each
    domain (columns named after the domain), then the other metrics' means."""
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("block", "change")))
    doms = quality.domains_of(rows, metric)
    cols = quality.shown_metrics(keys, metric)
    return [{"block": r["block"], "change": r["change"],
             **{quality.column_label(c, bool(doms) and c == metric): r.get(c) for c in cols}} for r in rows]


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
    budget = budget_figures.error_budget_figure(rows)
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
    chart(budget_figures.energy_split_figure(rows), key="energy")
    st.caption("S and L are not orthogonal: when both reach into the same entries the cross terms are negative, "
               "and ‖S‖² + ‖L‖² can exceed ‖W D‖².")
    table([{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
          "error-budget", key="csv-budget", height=300)

    left, right = st.columns(2)
    with left:
        chart(budget_figures.block_error_figure(error_budget.block_errors(run)), key="depth")
    with right:
        histories = error_budget.convergence(run)
        if any(len(h.get("error", ())) > 1 for h in histories.values()):
            chart(budget_figures.convergence_figure(histories, highlight=st.session_state.get(LAYER_KEY)), key="convergence")
        else:  # one step per layer (Wanda, magnitude, low-rank SVD, ...): a chart of single points says nothing
            st.markdown("**Convergence of alternating thresholding**")
            st.caption(f"This run's method ({esc(run.method)}) takes one step per layer: there is no "
                       "alternation to follow. An OATS run shows each layer's error over its iterations here.")

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
        task = run_task(run_info(path))
        settings = evaluations.quick_settings(path, mtime, run.loaded)
        planned = quality.describe(settings, (settings or {}).get("domains") or (), task)
        size = quality.size_note(settings)
        st.caption(f"Turn off the low-rank terms (sparse only) or the sparse terms (low-rank only) of one block, keep "
                   f"every other block compressed, and measure {esc(metric_name(metric))} on the quick evaluation set: "
                   f"{esc(planned)}" + (f" ({esc(size)})" if size else "") + ". " + _ablation_time(run, path, mtime))
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
            doms = quality.domains_of(res, metric)
            chart(budget_figures.ablation_figure(res, metric, higher, measured_on=evaluations.quick_measured_on(
                settings, doms, task, mean=True)), key="ablation")
            if doms:  # the same evaluations, each domain's held-out part apart: no extra cost
                compressed = next(r for r in res if r["block"] is None and r["change"] == "compressed model")
                names = [r["change"] if r["block"] is None else f"block {r['block']}: {r['change']}" for r in res]
                chart(budget_figures.domain_change_figure(
                    names, res, [compressed] * len(res), metric, higher, doms, evaluations.titles(doms),
                    f"Per-block ablation per domain: {metric_name(metric)}", "the compressed model",
                    measured_on=evaluations.quick_measured_on(settings, doms, task)), key="ablation-domains")
                how_to_read(f"The same measurements as the chart above, each domain's held-out part apart: one row per "
                            f"model, the value of {esc(metric_name(metric))} in each cell, coloured by how much worse it is than the "
                            f"compressed model on that domain (red worse, blue better; in percent of the compressed "
                            f"model's value). A block whose term matters for one kind of text and not another shows a "
                            f"red cell in one column only. {esc(quality.mean_note(metric))}.")
            table(_ablation_rows(res, metric), "ablation", key="csv-ablation")
        else:
            st.info("No block measured yet: pick blocks and press Measure.")
