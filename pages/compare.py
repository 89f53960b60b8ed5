"""Compare: sweeps of methods x compression rates, and runs side by side layer by layer."""

from pathlib import Path

import streamlit as st

from ui.state import (chart, complete_runs, how_to_read, current_path, primary_metric, run_info, run_task,
                      saved_evaluation, table)
from ui.text import esc
from oats.explain import analysis
from ui import figures
from oats.errors import OatsError
from oats.runner.sweep import list_sweeps, load_results

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
        pm = primary_metric({"perplexity": "causal-lm", "cosine": "encoder",
                             "cls_cosine": "vision"}.get(next((m for m in metrics if m in (
                                 "perplexity", "cosine", "cls_cosine")), ""), ""))
        default = metrics.index(pm[0]) if pm and pm[0] in metrics else 0
        metric = st.selectbox("Metric", metrics, index=default)
        higher = pm[1] if pm and pm[0] == metric else None
        chart(figures.sweep_figure(analysis.sweep_series(rows_m, metric), metric, higher), key="sweep")
        how_to_read("One line per method (and per evaluated mode: a dashed line is a run with one of its terms "
                    "zeroed), the compression rate ρ on the x axis: the share of each matrix's parameters removed, "
                    "the same budget for every method. The y axis is the chosen metric on held-out data; the title "
                    "says whether higher or lower is better. A method whose line stays closer to the dense value as ρ "
                    "grows compresses better; where lines cross, the ranking depends on the budget. A log axis is "
                    "used when the values span more than 100×.")
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
            for p in chosen:
                info = run_info(p)
                s = analysis.run_summary(info)
                row = {"run": Path(p).name, "model": info.model_name, "method": info.method,
                       "compression": round(s["compression"], 4), "rank_ratio": info.rank_ratio,
                       "median_scaled_error": round(s["median_scaled_error"], 5), "time_s": s["total_s"]}
                ev = saved_evaluation(p)
                pm = primary_metric(run_task(info) or "")
                if ev and pm and pm[0] in ev["results"].get("both", {}):
                    row[f"{pm[0]} (compressed)"] = ev["results"]["both"][pm[0]]
                summary.append(row)
            table(summary, "runs-compared", key="csv-runs-compared")
            with st.expander("Per-layer rows"):
                table(rows, "layer-errors-compared", key="csv-layers-compared", height=300)
