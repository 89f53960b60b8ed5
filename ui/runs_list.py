"""The Compress page's list of saved runs, a section of its own: every run folder under the runs
folder (complete, unfinished, damaged) in one table with its CSV, and a picker that opens a
complete run, resumes an unfinished one or says why a damaged one cannot be read."""

from __future__ import annotations

import streamlit as st

from oats.errors import OatsError
from oats.runner.jobs import RUNNER
from oats.runner.request import request_from_manifest
from oats.runs.folders import runs_root
from ui.state import JOB_KEY, RUN_KEY, all_runs, current_path, run_info
from ui.text import esc
from ui.widgets import table


def saved_runs() -> None:
    st.subheader("Saved runs")
    runs = all_runs()
    if not runs:
        st.info(f"No run yet in {esc(runs_root())} — compress a model above (or with `oats compress minilm-l6`).")
        return
    cols = {"name": "name", "status": "status", "model": "model_name", "method": "method",
            "compression": "compression", "rank_ratio": "rank_ratio", "sparsity": "sparsity",
            "blocks_done": "blocks_done", "created": "created", "problem": "problem"}
    if not any(r["status"] == "damaged" for r in runs):
        del cols["problem"]
    # a damaged row has no settings: None in the number columns, "" in the text ones (a column keeps one
    # type, and no "None" is shown)
    texts = ("name", "status", "model", "method", "sparsity", "created", "problem")
    rows = [{c: ("" if r.get(key) is None and c in texts else r.get(key)) for c, key in cols.items()} for r in runs]
    for row, r in zip(rows, runs):  # the rank ratio the method actually used (0 for sparse-only methods)
        if r["info"] is not None:
            row["rank_ratio"] = r["info"].rank_ratio
    table(rows, "runs", key="csv-runs", height=min(400, 38 + 35 * len(runs)))
    names = {r["path"]: r for r in runs}
    a, b = st.columns([3, 1])
    current = current_path()
    paths = list(names)
    pick = a.selectbox("Open a run", paths, index=paths.index(current) if current in paths else 0,
                       format_func=lambda p: f"{names[p]['name']} [{names[p]['status']}]")
    r = names[pick]
    b.write("")
    if r["status"] == "complete":
        if b.button("Open", icon=":material/folder_open:", disabled=pick == current):
            st.session_state[RUN_KEY] = pick
            st.rerun()
    elif r["status"] == "unfinished":
        if b.button("Resume", icon=":material/play_arrow:"):
            try:
                req = request_from_manifest(run_info(pick).to_manifest())
            except (OatsError, KeyError) as e:
                st.error(f"Cannot resume '{esc(r['name'])}': {esc(e)}. Delete the folder and compress again.")
                return
            try:
                job = RUNNER.start(req, folder=pick)
            except OatsError as e:
                st.error(esc(e))
                return
            st.session_state[JOB_KEY] = str(job.folder)
            st.rerun()
    else:
        b.caption("damaged: delete the folder")
        st.warning(f"{esc(r['name'], 120)}: {esc(r.get('problem') or 'its manifest cannot be read', 400)}")
