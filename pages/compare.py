"""Compare: sweeps of methods x compression rates, and runs side by side layer by layer."""

from pathlib import Path

import streamlit as st

from oats.runs.folders import runs_root
from ui.state import complete_runs, current_path, run_info, run_task
from oats.evaluation import primary_metric  # the task registry's answer
from ui.widgets import chart, how_to_read, table
from ui.text import esc
from oats import corpora
from oats.evaluation import metric_key, metric_name, split_key
from oats.explain import quality
from oats.explain import runs as summaries
from ui import evaluations, run_figures
from oats.errors import OatsError
from oats.runner.sweep import list_sweeps, load_meta, load_results
from oats.explain import verdict
from ui import compare_sweep

st.title("Compare")
st.caption("How the methods trade quality for size, and where in the model they differ.")



def _verdict_sentence(table: dict, pm: tuple[str, bool], shown: str, task: str | None) -> None:
    """How the diagnostics (and the chosen metric) rank ``table``'s runs ({(method, rank ratio):
    sweep row}) against the verdict, as one sentence from the data; the weight-space errors come
    from each run's manifest."""
    rows = {}
    for (method, kappa), row in table.items():
        entry = {pm[0]: row.get(pm[0]), shown: row.get(shown)}
        try:
            entry.update(verdict.run_errors(run_info(str(runs_root() / str(row.get("run"))))))
        except Exception:  # noqa: BLE001 - a run of the table that is gone or damaged: its errors are left out
            pass
        rows[str(method) if sum(m == method for m, _ in table) == 1 else f"{method} (κ {kappa:g})"] = entry
    diagnostics = ([shown] if shown != pm[0] else []) + ["median_scaled_error", "median_output_error"]
    sentence, clash = verdict.disagreement(rows, pm[0], diagnostics, verdict.where(task), pm[1])
    if clash:
        st.info(esc(sentence, 2000), icon=":material/gavel:")
    elif sentence:
        st.caption(esc(sentence, 2000))


def _metric_notes(summary: list[dict], chosen: list[str]) -> None:
    """One sentence per metric column of the runs' table: what it measures, which way is better,
    verdict or diagnostic."""
    tasks = {run_task(run_info(p)) for p in chosen}
    task = next(iter(tasks)) if len(tasks) == 1 else None
    cols = list(dict.fromkeys(c for row in summary for c in row))
    metrics = [c for c in cols if c in verdict.METRIC_NOTES or c.split(" ")[0] in verdict.METRIC_NOTES]
    lines = []
    for c in metrics:
        base = c.split(" ")[0]
        if c != base and " · " in c:
            continue  # a domain's column: the mean's sentence covers it
        lines.append("- " + verdict.metric_sentence(base, task, text=esc))
    if lines:
        st.markdown("**What each number means**\n" + "\n".join(lines))


def _runs_verdict(ranked: dict, metric: str, higher: bool) -> None:
    """The sentence on how the weight-space errors rank the runs against the verdict."""
    labels = verdict.short_labels([{"path": p, "name": Path(p).name, "method": run_info(p).method,
                                    "compression": run_info(p).config.compression} for p in ranked])
    table_ = {labels[p]: m for p, m in ranked.items()}
    task = verdict.task_of(metric)
    sentence, clash = verdict.disagreement(table_, metric, ["median_scaled_error", "median_output_error"],
                                           verdict.where(task), higher)
    if clash:
        st.info(esc(sentence, 2000), icon=":material/gavel:")
    elif sentence:
        st.caption(esc(sentence, 2000))


# ----------------------------------------------------------------------------- sweeps
st.subheader("Sweeps: methods × compression rates")
running = compare_sweep.progress()  # first: a sweep whose runs ended is written before the list is read
sweeps = list_sweeps()
compare_sweep.form(expanded=not sweeps and not running)
if not sweeps and running:
    st.info("The sweep above is running: its chart appears here when its runs are done.")
elif not sweeps:
    st.info("No sweep yet — start a small one above, or a larger one from the command line, e.g. "
            "`.venv/bin/oats sweep minilm-l6`, then reload this page.")
else:
    made = st.session_state.pop(compare_sweep.MADE_KEY, None)  # a sweep just written opens once
    names = [str(p) for p in sweeps]
    if made in names:
        st.session_state["sweep-pick"] = sweeps[names.index(made)]
    elif st.session_state.get("sweep-pick") not in sweeps:
        st.session_state.pop("sweep-pick", None)  # its folder is gone: the newest again
    folder = st.selectbox("Sweep", sweeps, format_func=lambda p: Path(p).name, key="sweep-pick",
                          **({} if "sweep-pick" in st.session_state else {"index": len(sweeps) - 1}))
    try:
        rows = load_results(folder)
        metrics = summaries.metric_columns(rows)
    except OatsError as e:
        st.error(esc(e))
        rows, metrics = [], []
    except Exception as e:  # noqa: BLE001 - a sweep folder is shared data: a damaged one is one line
        st.error(f"sweep '{esc(Path(folder).name)}' cannot be read ({esc(type(e).__name__)}: {esc(e, 200)}): "
                 "run the sweep again")
        rows, metrics = [], []
    if rows and not metrics:
        st.warning(f"Sweep '{esc(Path(folder).name)}' has no metric columns: run it again with evaluation.")
    elif rows:
        models = sorted({str(r.get("model", "")) for r in rows})
        model = st.selectbox("Model", models) if len(models) > 1 else models[0]
        rows_m = [r for r in rows if str(r.get("model", "")) == model]
        pm = quality.primary_of(metrics)
        # a metric is chosen by its name; its mean over the domains or one domain by the "Text" box
        means = [m for m in metrics if split_key(m)[1] is None] or metrics
        default = means.index(pm[0]) if pm and pm[0] in means else 0
        metric = st.selectbox("Metric", means, index=default, format_func=metric_name)
        higher = pm[1] if pm and pm[0] == metric else None
        settings = load_meta(folder).get("evaluation")
        doms = quality.domains_of(rows_m, metric)
        measured_on = quality.describe(settings, doms)
        column, shown_on = metric, f"on {measured_on}"
        if doms:
            where = st.selectbox("Images" if quality.kind_of(doms) == "images" else "Text",
                                 [quality.MEAN, *doms], key="sweep-domain",
                                 format_func=lambda d: "mean over the domains" if d == quality.MEAN
                                 else f"{corpora.title(d)} (held-out part)")
            if where != quality.MEAN:
                column, shown_on = metric_key(metric, where), f"on the held-out part of {corpora.title(where)}"
            else:
                shown_on = f"mean over the domains, on {measured_on}"
        chart(run_figures.sweep_figure(summaries.sweep_series(rows_m, column), metric, higher, measured_on=shown_on),
              key="sweep")
        how_to_read("One line per method (and per evaluated mode: a dashed line is a run with one of its terms "
                    "zeroed), the compression rate ρ on the x axis: the share of each matrix's parameters removed, "
                    "the same budget for every method. The y axis is the chosen metric on held-out data; the title "
                    "says whether higher or lower is better. A method whose line stays closer to the dense value as ρ "
                    "grows compresses better; where lines cross, the ranking depends on the budget. A log axis is "
                    "used when the values span more than 100×." + (
                        " The Text box picks the mean over the domains or one domain's held-out part: the "
                        "ranking of the methods can differ from one domain to another (the table below the chart "
                        "ranks them at one rate)." if doms else ""))
        task = verdict.task_of(pm[0]) if pm else None
        st.markdown(verdict.metric_sentence(metric, task, text=esc))
        prim_doms = quality.domains_of(rows_m, pm[0]) if pm else []
        compressed = [r for r in rows_m if r.get("mode") == "both" and r.get("method") != "dense"
                      and isinstance(r.get("compression"), (int, float))]
        rates = sorted({float(r["compression"]) for r in compressed})
        if pm and prim_doms and rates:
            st.markdown(f"**Methods ranked per domain by {esc(pm[0])}** (compressed models; #1 is the best, in bold)")
            rate = rates[0] if len(rates) == 1 else st.select_slider(
                "Rank at compression rate ρ", rates, value=0.5 if 0.5 in rates else rates[len(rates) // 2],
                key="sweep-rank-rate", format_func=lambda x: f"{x:g}")
            ranked = {(str(r.get("method")), r.get("rank_ratio")): r for r in compressed if float(r["compression"]) == rate}
            evaluations.ranking(ranked, pm[0], pm[1], label=lambda n: esc(n[0]), head=("method", "rank ratio"),
                                extra=lambda n: (f"{n[1]:g}" if isinstance(n[1], (int, float)) else esc(n[1]),),
                                what="method")
            st.caption(f"At ρ = {rate:g}, on {esc(quality.describe(settings, prim_doms))}; "
                       f"{esc(quality.mean_note(pm[0]))}.")
            _verdict_sentence({r[0]: r[1] for r in ranked.items()}, pm, metric, task)
        table(rows_m, f"sweep-{Path(folder).name}", key="csv-sweep", height=300)

# ----------------------------------------------------------------------------- runs side by side
st.subheader("Runs side by side, layer by layer")
runs = complete_runs()
if not runs:
    st.info("No run yet — compress a model on the Compress page.")
else:
    by_path = {r["path"]: r for r in runs}
    cur = current_path()
    model = by_path[cur]["model_name"] if cur in by_path else runs[-1]["model_name"]
    same = [r["path"] for r in runs if r["model_name"] == model]
    chosen = st.multiselect("Runs (same model compare best)", list(by_path), default=same[-6:],
                            format_func=lambda p: f"{by_path[p]['name']} ({by_path[p]['method']})")
    if not chosen:
        st.info("Pick at least one run.")
    else:
        try:
            rows = summaries.layer_errors_from_manifests(chosen)
        except OatsError as e:
            st.error(esc(e))
            rows = []
        if rows:
            value = st.radio("Error", ["scaled_error", "output_error"], horizontal=True,
                             format_func=lambda v: {"scaled_error": "scaled error (weights)",
                                                    "output_error": "output error (calibration inputs)"}[v])
            chart(run_figures.layer_compare_figure(rows, value), key="layers")
            st.caption(verdict.metric_sentence(value))
            summary = []
            evaluated: dict[tuple, dict] = {}  # (model, primary, higher) -> {run path: metrics of its compressed model}
            on: dict[tuple, list] = {}
            for p in chosen:
                info = run_info(p)
                s = summaries.run_summary(info)
                errors = verdict.run_errors(info)
                row = {"run": Path(p).name, "model": info.model_name, "method": info.method,
                       "compression": round(s["compression"], 4), "rank_ratio": info.rank_ratio,
                       "median_scaled_error": round(s["median_scaled_error"], 5),
                       "median_output_error": errors["median_output_error"], "time_s": s["total_s"]}
                ev = evaluations.run_evaluation(p, info)
                pm = primary_metric(run_task(info) or "")
                both = ev["results"].get("both", {}) if ev else {}
                if pm and pm[0] in both:
                    doms = quality.domains_of([both], pm[0])
                    row[f"{metric_name(pm[0])} (compressed{', mean' if doms else ''})"] = both[pm[0]]
                    for d in doms:  # the compressed model on each domain's held-out part, beside the mean
                        row[metric_name(metric_key(pm[0], d))] = both[metric_key(pm[0], d)]
                    key = (info.model_name, *pm)
                    evaluated.setdefault(key, {})[p] = {**both, **errors}
                    on.setdefault(key, []).append(ev.get("settings"))
                summary.append(row)
            table(summary, "runs-compared", key="csv-runs-compared")
            _metric_notes(summary, chosen)
            for (model, metric, higher), ranked in evaluated.items():
                if len(ranked) < 2:
                    continue
                doms = quality.domains_of(ranked.values(), metric)
                st.markdown(f"**{esc(model)}: the runs ranked per domain by {esc(metric_name(metric))}** (compressed models; "
                            "#1 is the best, in bold)")
                evaluations.ranking(ranked, metric, higher, label=lambda p: esc(Path(p).name), head=("run", "method"),
                                    extra=lambda p: (esc(run_info(p).method),))
                settings = next((x for x in on[(model, metric, higher)] if x), None)
                missing = sum(1 for m in ranked.values() if not quality.domains_of([m], metric))
                st.caption(f"On {esc(quality.describe(settings, doms))}"
                           + (f"; {esc(quality.mean_note(metric))}" if doms else "")
                           + (f"; {missing} run(s) evaluated before evaluation per domain show the mean only (–)"
                              if doms and missing else "") + ".")
                _runs_verdict(ranked, metric, higher)
            with st.expander("Per-layer rows"):
                table(rows, "layer-errors-compared", key="csv-layers-compared", height=300)
