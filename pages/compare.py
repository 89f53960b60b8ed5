"""Compare: sweeps of methods x compression rates, and runs side by side layer by layer."""

from pathlib import Path

import streamlit as st

from ui.state import chart, complete_runs, how_to_read, current_path, primary_metric, run_info, run_task, table
from ui.text import esc
from oats import corpora
from oats.evaluation import metric_key, split_key
from oats.explain import analysis, quality
from ui import evaluations, figures
from oats.errors import OatsError
from oats.runner.sweep import list_sweeps, load_meta, load_results

st.title("Compare")
st.caption("How the methods trade quality for size, and where in the model they differ.")

# ----------------------------------------------------------------------------- sweeps
st.subheader("Sweeps: methods × compression rates")
sweeps = list_sweeps()
if not sweeps:
    st.info("No sweep yet — run one from the command line, e.g. `.venv/bin/oats sweep minilm-l6`, then reload "
            "this page.")
else:
    folder = st.selectbox("Sweep", sweeps, index=len(sweeps) - 1, format_func=lambda p: Path(p).name)
    try:
        rows = load_results(folder)
        metrics = analysis.metric_columns(rows)
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
        metric = st.selectbox("Metric", means, index=default)
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
        chart(figures.sweep_figure(analysis.sweep_series(rows_m, column), metric, higher, measured_on=shown_on),
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
            rows = analysis.layer_errors_from_manifests(chosen)
        except OatsError as e:
            st.error(esc(e))
            rows = []
        if rows:
            value = st.radio("Error", ["scaled_error", "output_error"], horizontal=True,
                             format_func=lambda v: {"scaled_error": "scaled error (weights)",
                                                    "output_error": "output error (calibration inputs)"}[v])
            chart(figures.layer_compare_figure(rows, value), key="layers")
            summary = []
            evaluated: dict[tuple, dict] = {}  # (model, primary, higher) -> {run path: metrics of its compressed model}
            on: dict[tuple, list] = {}
            for p in chosen:
                info = run_info(p)
                s = analysis.run_summary(info)
                row = {"run": Path(p).name, "model": info.model_name, "method": info.method,
                       "compression": round(s["compression"], 4), "rank_ratio": info.rank_ratio,
                       "median_scaled_error": round(s["median_scaled_error"], 5), "time_s": s["total_s"]}
                ev = evaluations.run_evaluation(p, info)
                pm = primary_metric(run_task(info) or "")
                both = ev["results"].get("both", {}) if ev else {}
                if pm and pm[0] in both:
                    doms = quality.domains_of([both], pm[0])
                    row[f"{pm[0]} (compressed{', mean' if doms else ''})"] = both[pm[0]]
                    for d in doms:  # the compressed model on each domain's held-out part, beside the mean
                        row[f"{pm[0]} · {corpora.title(d)}"] = both[metric_key(pm[0], d)]
                    key = (info.model_name, *pm)
                    evaluated.setdefault(key, {})[p] = both
                    on.setdefault(key, []).append(ev.get("settings"))
                summary.append(row)
            table(summary, "runs-compared", key="csv-runs-compared")
            for (model, metric, higher), ranked in evaluated.items():
                if len(ranked) < 2:
                    continue
                doms = quality.domains_of(ranked.values(), metric)
                st.markdown(f"**{esc(model)}: the runs ranked per domain by {esc(metric)}** (compressed models; "
                            "#1 is the best, in bold)")
                evaluations.ranking(ranked, metric, higher, label=lambda p: esc(Path(p).name), head=("run", "method"),
                                    extra=lambda p: (esc(run_info(p).method),))
                settings = next((x for x in on[(model, metric, higher)] if x), None)
                missing = sum(1 for m in ranked.values() if not quality.domains_of([m], metric))
                st.caption(f"On {esc(quality.describe(settings, doms))}"
                           + (f"; {esc(quality.mean_note(metric))}" if doms else "")
                           + (f"; {missing} run(s) evaluated before evaluation per domain show the mean only (–)"
                              if doms and missing else "") + ".")
            with st.expander("Per-layer rows"):
                table(rows, "layer-errors-compared", key="csv-layers-compared", height=300)
