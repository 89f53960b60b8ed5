"""Shared state of the app: the sidebar choices and the cached loaders every page uses.

Pages import from here; ``oats`` never imports Streamlit. A loaded run is a shared,
cached object: pages must not leave its modes changed (use ``run.use_mode(...)``) and
cache what they derive with ``st.cache_data`` keyed by the run's path and mtime.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from oats.errors import OatsError
from oats.io import list_runs, load_run, runs_root

RUN_KEY = "run_path"  # non-widget key: survives page switches


@st.cache_resource(max_entries=2, show_spinner="Loading the run's model ...")
def load_run_cached(path: str, mtime: float):
    """The CompressionRun of a complete run folder (mtime in the key: a rewritten run reloads)."""
    return load_run(path)


def run_mtime(path: str | Path) -> float:
    p = Path(path) / "manifest.json"
    return p.stat().st_mtime if p.exists() else 0.0


def complete_runs() -> list[dict]:
    return [r for r in list_runs(runs_root()) if r["status"] == "complete"]


def sidebar() -> None:
    """The run picker, drawn by app.py on every page."""
    runs = complete_runs()
    with st.sidebar:
        st.markdown("**Run**")
        if not runs:
            st.caption("No finished run yet — compress a model on the home page.")
            st.session_state.pop(RUN_KEY, None)
            return
        paths = [r["path"] for r in runs]
        labels = {r["path"]: f"{r['name']}  ({r['model']}, {r['method']}, ρ={r['compression']:g}, κ={r['rank_ratio']:g})"
                  for r in runs}
        current = st.session_state.get(RUN_KEY)
        index = paths.index(current) if current in paths else len(paths) - 1
        choice = st.selectbox("Run", paths, index=index, format_func=labels.get, label_visibility="collapsed")
        st.session_state[RUN_KEY] = choice


def current_run():
    """The selected run, loaded (cached), or None with an empty-state message drawn."""
    path = st.session_state.get(RUN_KEY)
    if not path:
        st.info("No run yet — compress a model on the home page, then come back.")
        return None
    try:
        return load_run_cached(path, run_mtime(path))
    except OatsError as e:
        st.error(str(e))
        return None
