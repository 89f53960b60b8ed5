"""The app's session state: the session keys (the current run, model filter, layer, job), the
current run and its path, the runs on disk (listed and cached on their manifests' mtimes) and
the method choices.

The app's shell is four modules: ``ui.runtime`` (process set-up and the loaded-run cache),
``ui.state`` (this: session state), ``ui.widgets`` (the sidebar, the layer picker, charts,
tables and small widgets) and ``ui.cached`` (every cached analysis call). A loaded run is a
shared, cached object: pages must not leave its modes changed (use ``run.use_mode(...)``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import streamlit as st

from ui.runtime import RUNS, load_run_cached  # first: sends a page run alone through app.py

from oats.errors import OatsError  # noqa: E402
from oats.methods import registry  # noqa: E402
from oats.runs.folders import MANIFEST, RunInfo, list_runs, runs_root  # noqa: E402
from ui.text import esc  # noqa: E402

RUN_KEY = "run_path"      # non-widget keys: they survive page switches
MODEL_KEY = "model_filter"
LAYER_KEY = "layer"
JOB_KEY = "job_folder"
ALL_MODELS = "all models"
MODEL_LOCK = threading.Lock()  # one evaluation at a time on the shared cached model


# ----------------------------------------------------------------------------- methods


def method_choices() -> dict[str, str]:
    """Every registered method, name -> one-line description, in registration order: the
    Compress form's choices (a method registered later appears too)."""
    return {m.name: m.description for m in registry.all_methods()}


def method_help() -> str:
    """The Markdown help of the method choice: one bullet per method."""
    return "\n".join(f"- **{k}**: {v}" for k, v in method_choices().items())


# ----------------------------------------------------------------------------- runs on disk


def run_mtime(path: str | Path) -> float:
    """The manifest's mtime (0 when there is none or it cannot be stat'ed): the cache key of a run.
    Only ``stat``: the manifest may be a folder, a FIFO or a link, and is never opened here."""
    try:
        return os.stat(Path(path) / MANIFEST).st_mtime
    except (OSError, ValueError):
        return 0.0


def _runs_signature(root: str) -> tuple:
    """(folder, manifest mtime) of every run folder: cheap, and changes when a run does."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return ()
    out = []
    for e in entries:
        try:
            if e.is_dir():
                out.append((e.path, os.stat(os.path.join(e.path, MANIFEST)).st_mtime))
        except OSError:  # no manifest (not a run folder), or one that cannot be stat'ed
            continue
    return tuple(out)


@st.cache_data(show_spinner=False, max_entries=8)
def _list_runs(root: str, signature: tuple) -> list[dict]:
    return list_runs(root)


def all_runs() -> list[dict]:
    """Every run folder under runs_root() (complete, unfinished, damaged), cached on mtimes.

    ``list_runs`` reports a damaged folder as a row of its own; should it fail as a whole all
    the same, every page still draws: one line in the sidebar, and no runs."""
    root = str(runs_root())
    try:
        return _list_runs(root, _runs_signature(root))
    except Exception as e:  # noqa: BLE001 - the sidebar is on every page: a failure here must not end them
        st.sidebar.error(f"The runs folder '{esc(root)}' could not be listed ({esc(type(e).__name__)}: "
                         f"{esc(e)}): move the damaged run folder out of it")
        return []


def damaged_runs() -> list[dict]:
    """The run folders under runs_root() whose manifest cannot be read, with their ``problem``."""
    return [r for r in all_runs() if r["status"] == "damaged"]


def saved_evaluation(path: str) -> dict | None:
    """The run's saved evaluation ({"quick", "created", "results": {mode: {metric: number}}}), or
    None when there is none or it is not that: the file is the run folder's, so it is only read
    when it is a regular file (a FIFO in its place would block the page) and its shape is checked."""
    from oats.runs.evaluations import EVALUATION_FILE, read_evaluation
    from oats.untrusted import regular_file
    try:
        regular_file(Path(path) / EVALUATION_FILE)
        ev = read_evaluation(path)
    except Exception:  # noqa: BLE001 - missing, not a file, or not JSON: no evaluation to show
        return None
    if not isinstance(ev, dict) or not isinstance(ev.get("results"), dict):
        return None
    results = ev["results"]
    if not all(isinstance(m, str) and isinstance(v, dict) and
               all(isinstance(k, str) and isinstance(x, (int, float)) and not isinstance(x, bool) for k, x in v.items())
               for m, v in results.items()):
        return None
    return ev


def complete_runs() -> list[dict]:
    return [r for r in all_runs() if r["status"] == "complete"]


@st.cache_data(show_spinner=False, max_entries=16)
def _run_info(path: str, mtime: float) -> RunInfo:
    return RunInfo.read(path)


def run_info(path: str) -> RunInfo:
    """What a run's manifest says (cached on its mtime)."""
    return _run_info(path, run_mtime(path))


def current_path() -> str | None:
    return st.session_state.get(RUN_KEY)


def current_run():
    """The selected run, loaded (cached), or None with an empty-state message drawn."""
    path = current_path()
    if not path:
        st.info("No run yet — compress a model on the Compress page, then come back.")
        return None
    try:
        mtime = run_mtime(path)
        if RUNS.ready(path, mtime):
            return load_run_cached(path, mtime)
        with st.spinner(f"Loading the model of {esc(Path(path).name)} ..."):
            return load_run_cached(path, mtime)
    except OatsError as e:
        st.error(esc(e))
    except Exception as e:  # noqa: BLE001 - a page shows one line, never a traceback
        st.error(f"run '{esc(Path(path).name)}' could not be loaded ({esc(type(e).__name__)}: {esc(e, 200)}): "
                 f"delete the folder and compress again")
    return None


def run_task(info: RunInfo) -> str | None:
    """causal-lm, encoder or vision for a run (recorded by the CLI and the app; for other
    runs, the preset's task)."""
    from oats.models.zoo import PRESETS
    if info.task:
        return info.task if isinstance(info.task, str) else None  # the manifest's word: any JSON value
    preset = PRESETS.get(info.model_name)
    return preset.task if preset else None


