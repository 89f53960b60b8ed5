"""Shared state of the app: the sidebar choices, the cached loaders and analyses, small widgets.

Pages import from here; ``oats`` never imports Streamlit. A loaded run is a shared,
cached object: pages must not leave its modes changed (use ``run.use_mode(...)``) and
cache what they derive with ``st.cache_data`` keyed by the run's path and mtime (the
cached analyses below do exactly that, so pages stay thin).
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
import re
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path

import pandas as pd
import streamlit as st


def _through_app_py() -> None:
    """Until a script of this process has called ``st.navigation``, Streamlit serves a URL such as
    /spectra by running pages/spectra.py alone (its older ``pages/`` folder convention): a link or
    a reload that is the server's first page would skip app.py (no sidebar, no run, no link
    restored). The first page to import this module turns that convention off and runs again,
    through app.py."""
    import sys
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    if PagesManager.uses_pages_directory and get_script_run_ctx() is not None:
        PagesManager.uses_pages_directory = False
        # When app.py is the script importing this module, go on: a rerun raised in the middle of
        # app.py's imports could leave a package half-imported ("cannot import name 'links' from
        # 'ui'" on the next run). Only a page run alone (no app.py frame below us) is rerun.
        frame, app = sys._getframe(1), str(Path(__file__).resolve().parents[1] / "app.py")
        while frame is not None and frame.f_code.co_filename != app:
            frame = frame.f_back
        if frame is None:
            st.rerun()


_through_app_py()

from oats.explain import budget, common, heavytail, outliers, spectra  # noqa: E402 - after the page has been sent through app.py
from oats.explain import walkthrough as walk_view  # noqa: E402
from oats.errors import OatsError
from oats.evaluation import PRIMARY_METRIC
from oats.methods import registry
from oats.runs.folders import MANIFEST, RunInfo, list_runs, load_run, runs_root
from ui import names, pins
from ui.text import esc, one_line, plain_figure

RUN_KEY = "run_path"      # non-widget keys: they survive page switches
MODEL_KEY = "model_filter"
LAYER_KEY = "layer"
JOB_KEY = "job_folder"
ALL_MODELS = "all models"
MODEL_LOCK = threading.Lock()  # one evaluation at a time on the shared cached model
CHART_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


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


# ----------------------------------------------------------------------------- the process heap
#
# Streamlit collects garbage in full (gc.collect(2)) after every script run and every
# fragment run. With torch, transformers and a model imported that is about half a million
# tracked objects and 0.3-0.5 s of interpreter lock per collection: the Compress page's
# progress fragment alone (one run a second) would spend most of a core on it. The heavy
# modules are therefore imported once, in the background, and then frozen (gc.freeze()):
# the collector never walks them again, and each collection costs a few milliseconds. The
# freeze happens in the script thread at the start of a later script run, never in the middle
# of one. A run evicted from the cache is still freed: its release collects with the heap
# unfrozen once (``_collect_released``).

WARM_MODULES = (
    "transformers.modeling_utils", "transformers.models.bert.modeling_bert",
    "transformers.models.llama.modeling_llama", "transformers.models.dinov2.modeling_dinov2",
    "transformers.models.vit.modeling_vit", "oats.models.zoo", "oats.data", "oats.evaluation", "oats.explain.vit",
    "oats.explain.activations",
    "oats.runner.sweep", "plotly.graph_objects", "scipy.stats",
)
"""What pages and model loads import on first use: imported once per process by ``warm_up``."""

_warm: dict = {"thread": None, "frozen": False}
_warm_lock = threading.Lock()


def _import_all() -> None:
    import importlib
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional module missing only loses the head start
            pass


def warm_up() -> None:
    """Call at the top of every script run (app.py). The first call starts importing the heavy
    modules in a daemon thread and returns, so the first page draws at once; a later call waits
    for those imports (transformers' lazy imports are not safe to race from two threads), then
    freezes the heap, once."""
    with _warm_lock:
        t = _warm["thread"]
        if t is None:
            _warm["thread"] = t = threading.Thread(target=_import_all, daemon=True, name="oats-warm-up")
            t.start()
            return
        if _warm["frozen"]:
            return
        t.join()
        _warm["frozen"] = True
        gc.collect()
        gc.freeze()


def _wait_warm() -> None:
    """Block until the background imports are done (before anything that loads a model)."""
    t = _warm["thread"]
    if t is not None:
        t.join()


TIMINGS_ENV = "OATS_PAGE_TIMINGS"


def log_script_time(page: str, seconds: float) -> None:
    """With $OATS_PAGE_TIMINGS set to a file, append one JSON line per finished script run
    (page title, seconds the server spent, wall-clock end): benchmarks/app.py reads it to
    separate the app's own time from what the browsers add."""
    path = os.environ.get(TIMINGS_ENV)
    if not path:
        return
    import json
    with open(path, "a") as f:
        f.write(json.dumps({"page": page, "s": seconds, "end": time.time()}) + "\n")


# ----------------------------------------------------------------------------- the run cache


RELEASE_COLLECT_DELAYS = (0.5, 2.0, 8.0, 30.0)
"""Seconds between the collections that follow a run's eviction from the run cache."""


def _collect_released(ref: weakref.ref) -> None:
    for delay in RELEASE_COLLECT_DELAYS:
        time.sleep(delay)
        frozen = gc.get_freeze_count() > 0
        if frozen:  # the run may sit in the frozen heap: let the collector see it once
            gc.unfreeze()
        gc.collect()
        if frozen:
            gc.freeze()
        if ref() is None:
            return


def _release_run(run) -> None:
    """Called when the run cache evicts ``run``: make sure its model is freed.

    Refcounting frees most evicted runs at once, but not all: the first model of an
    architecture loaded in a process sits in a reference cycle (transformers' lazy import
    keeps the loading frames, and so the model, in one), and the cyclic collector's full
    passes are rare because tensor memory does not count towards its thresholds. So a
    daemon thread collects a few times after the eviction, until the run is gone. It never
    touches the run: a session may still be drawing a page from it, and then it goes once
    that session lets go of it.
    """
    try:
        ref = weakref.ref(run)
    except TypeError:  # not weak-referenceable: one collection after the eviction
        ref = lambda: None
    threading.Thread(target=_collect_released, args=(ref,), daemon=True, name="oats-release-run").start()


class RunCache:
    """The loaded runs (models) of this process, shared by every session: at most
    ``max_entries``, least recently used evicted (and released), each loaded once even when
    many sessions ask at the same moment, and loadable ahead of time in the background
    (``prefetch``) so that the first page that needs a run's model rarely waits for it."""

    def __init__(self, max_entries: int = 2):
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, float], Future] = {}  # insertion order = least recently used first

    def _future(self, path: str, mtime: float, background: bool) -> tuple[Future, bool]:
        key = (path, mtime)
        with self._lock:
            fut = self._entries.pop(key, None)
            mine = fut is None
            if mine:
                fut = Future()
            self._entries[key] = fut  # most recently used
        if mine:
            if background:
                threading.Thread(target=self._fill, args=(key, fut), daemon=True, name="oats-prefetch-run").start()
            else:
                self._fill(key, fut)
        return fut, mine

    def _fill(self, key: tuple[str, float], fut: Future) -> None:
        try:
            _wait_warm()
            fut.set_result(load_run(key[0]))  # looked up at call time: tests replace it
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for this run
            fut.set_exception(e)
            with self._lock:
                if self._entries.get(key) is fut:  # a failed load is not cached
                    del self._entries[key]
            return
        self._evict()

    def _evict(self) -> None:
        released = []
        with self._lock:
            done = [k for k, f in self._entries.items() if f.done() and f.exception() is None]
            for k in done[:max(len(done) - self.max_entries, 0)]:
                released.append(self._entries.pop(k).result())
        for run in released:
            _release_run(run)
        del released

    def get(self, path: str, mtime: float):
        """The run at ``path`` (loading it now unless it is loaded or loading)."""
        fut, _ = self._future(path, mtime, background=False)
        return fut.result()

    def prefetch(self, path: str, mtime: float) -> None:
        """Start loading the run in the background unless it is loaded or loading."""
        self._future(path, mtime, background=True)

    def ready(self, path: str, mtime: float) -> bool:
        with self._lock:
            fut = self._entries.get((path, mtime))
        return fut is not None and fut.done()

    def clear(self) -> None:
        with self._lock:
            runs = [f.result() for f in self._entries.values() if f.done() and f.exception() is None]
            self._entries.clear()
        for run in runs:
            _release_run(run)


RUNS = RunCache(max_entries=2)


def load_run_cached(path: str, mtime: float):
    """The CompressionRun of a complete run folder (mtime in the key: a rewritten run reloads),
    from the process-wide ``RUNS`` cache (at most two runs held)."""
    return RUNS.get(path, mtime)


load_run_cached.clear = RUNS.clear


# ----------------------------------------------------------------------------- sidebar


def sidebar() -> None:
    """Model and run pickers plus the running job's progress, drawn by app.py on every page."""
    from oats.runner.jobs import RUNNER
    runs = complete_runs()
    with st.sidebar:
        active = RUNNER.active()
        for job in active:
            s = job.state()
            st.caption(f":material/hourglass_top: compressing **{esc(s.model)}**: {s.done}/{s.total or '?'} blocks — "
                       f"{esc(s.message)}")
        _damaged_list()
        if not runs:
            st.caption("No finished run yet — compress a model on the Compress page.")
            st.session_state.pop(RUN_KEY, None)
            return
        models = list(dict.fromkeys(r["model_name"] for r in runs))
        current = st.session_state.get(RUN_KEY)
        current_model = next((r["model_name"] for r in runs if r["path"] == current), None)
        options = [ALL_MODELS] + models
        wanted = st.session_state.get(MODEL_KEY, ALL_MODELS)
        if current_model is not None and wanted not in (ALL_MODELS, current_model):
            wanted = current_model  # a run opened elsewhere wins over the filter
        model = st.selectbox("Model", options, index=options.index(wanted) if wanted in options else 0,
                             help="Show the runs of one model only.")
        st.session_state[MODEL_KEY] = model
        shown = [r for r in runs if model == ALL_MODELS or r["model_name"] == model]
        paths = [r["path"] for r in shown]
        labels = {r["path"]: f"{r['name']} ({r['method']}, ρ={r['compression']:g}, "
                             f"κ={r['info'].rank_ratio:g})" for r in shown}
        newest = max(range(len(shown)), key=lambda i: str(shown[i].get("created") or ""))
        index = paths.index(current) if current in paths else newest
        choice = st.selectbox("Run", paths, index=index, format_func=labels.get,
                              help="Every page shows this run. Runs live in " + esc(runs_root()))
        st.session_state[RUN_KEY] = choice
        pins.report_panel(choice)  # pinned figures and the one-click report (ui/pins.py)
    RUNS.prefetch(choice, run_mtime(choice))  # the pages that need the model rarely wait for it


def _damaged_list() -> None:
    """One line per damaged run folder, folded away: a shared runs folder may hold many."""
    damaged = damaged_runs()
    if not damaged:
        return
    with st.expander(f"{len(damaged)} damaged run folder{'s' * (len(damaged) > 1)}", icon=":material/warning:"):
        for r in damaged:
            st.caption(f"**{esc(r['name'], 120)}**: {esc(r.get('problem') or 'damaged', 400)}")


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


def layer_picker(run, label: str = "Layer", key: str = "layer_pick", help: str | None = None) -> str:
    """A layer selectbox whose choice is shared by every page (kept under LAYER_KEY)."""
    names = [r.qualname for r in run.layers]
    wanted = st.session_state.get(LAYER_KEY)
    index = names.index(wanted) if wanted in names else 0
    shapes = {r.qualname: one_line(f"{r.qualname}  ({r.kind}, {r.shape[0]}×{r.shape[1]}, rank {r.rank})")
              for r in run.layers}
    choice = st.selectbox(label, names, index=index, format_func=shapes.get, key=key,
                          help=help or "Layers are named block.name (q, k, v, o, fc1, fc2, gate, up, down, ...).")
    st.session_state[LAYER_KEY] = choice
    return choice


# ----------------------------------------------------------------------------- display helpers


def chart(fig, key: str | None = None) -> None:
    """A Plotly chart, full width, with the toolbar's PNG download."""
    st.plotly_chart(plain_figure(fig), width="stretch", config=CHART_CONFIG, key=key)
    pins.pin_control(fig, key, current_path())  # "Pin to report" under the chart (ui/pins.py)


def how_to_read(text: str) -> None:
    """A closed "How to read this" expander under a page's main figure."""
    with st.expander("How to read this", icon=":material/help:"):
        st.markdown(text)


def table(rows, name: str, key: str | None = None, height: int | str = "auto", **kw) -> pd.DataFrame:
    """A table plus a CSV download button for it (``name`` may hold a run's or model's name:
    its label is escaped, its file name kept to plain characters)."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    # the page shows words (ui/names.py); the data and the CSV keep the keys the run files and the CLI use
    config = names.column_labels(df.columns, kw.pop("column_config", None))
    st.dataframe(df, width="stretch", hide_index=True, height=height, column_config=config, **kw)
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    file_name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", one_line(name, 120)).strip("._") or "table"
    st.download_button(f"Download {esc(file_name)}.csv", buf.getvalue(), file_name=f"{file_name}.csv",
                       mime="text/csv", key=key or f"csv-{name}", icon=":material/download:")
    return df


def image_upload(key: str, what: str):
    """A file uploader for one image, checked like every upload: (image (H, W, 3), cache key,
    file name), or None with the reason drawn (nothing uploaded yet, or not an image)."""
    from oats.data import MAX_UPLOAD_MB, UPLOAD_TYPES, check_upload, load_image
    upload = st.file_uploader(f"Your image (PNG, JPEG, ...; at most {MAX_UPLOAD_MB} MB)",
                              type=list(UPLOAD_TYPES["image"]), key=key)
    if upload is None:
        st.info(f"Upload an image to {what}, or pick a bundled photo.")
        return None
    data = upload.getvalue()
    try:
        image = load_image(check_upload(upload.name, data, "image"))
    except OatsError as e:
        st.error(esc(e))
        return None
    except Exception as e:  # noqa: BLE001 - a decoder's own error about a hostile file is one line too
        st.error(f"'{esc(upload.name, 120)}' could not be read as an image ({esc(type(e).__name__)}: {esc(e, 200)}): "
                 f"upload a PNG or JPEG photo")
        return None
    return image, "upload:" + hashlib.sha1(data).hexdigest(), upload.name


def run_slug(path: str) -> str:
    return Path(path).name


# ----------------------------------------------------------------------------- cached analyses
# Each takes (path, mtime, ...) so a rewritten run recomputes; the run comes from the cached
# loader, so no tensor is ever hashed.


def _run(path: str, mtime: float):
    return load_run_cached(path, mtime)


@st.cache_data(show_spinner=False, max_entries=4)
def _spectra_overview(path: str, mtime: float) -> spectra.SpectraOverview:
    return spectra.spectra_overview(_run(path, mtime))


def spectra_overview(path: str, mtime: float, layers: int) -> spectra.SpectraOverview:
    """Two spectra per matrix for the whole run (seconds for a small model, about 20 s for
    smollm2-135m's 210 matrices on two cores): computed once, shared by every session."""
    with st.spinner(f"Computing the spectra of all {layers} layers (once for this run, shared by everyone "
                    f"who opens it) ..."):
        return _spectra_overview(path, mtime)


@st.cache_data(show_spinner=False, max_entries=64)
def layer_spectra(path: str, mtime: float, qualname: str) -> spectra.LayerSpectra:
    return spectra.layer_spectra(_run(path, mtime), qualname)


@st.cache_data(show_spinner=False, max_entries=4)
def second_moments_by_input(path: str, mtime: float) -> outliers.SecondMomentsByInput:
    return outliers.second_moments_by_input(_run(path, mtime))


@st.cache_data(show_spinner=False, max_entries=64)
def column_shares(path: str, mtime: float, qualname: str) -> outliers.ColumnShares:
    return outliers.column_shares(_run(path, mtime), qualname)


@st.cache_data(show_spinner=False, max_entries=64)
def mask_density(path: str, mtime: float, qualname: str) -> common.Heat:
    return outliers.mask_density(_run(path, mtime), qualname)


@st.cache_data(show_spinner="Measuring every layer's error budget ...", max_entries=4)
def layer_budget(path: str, mtime: float) -> list[dict]:
    return budget.layer_budget(_run(path, mtime))


def replay_of(run):
    """(the Walkthrough's replay of ``run``'s method, whether it is the run's own solver), from
    the method registry (``registry.replay_for``): the page names no method."""
    return registry.replay_for(run.method)


@st.cache_data(show_spinner=False, max_entries=8)
def layer_gram(path: str, mtime: float, qualname: str):
    """The layer's input Gram as the compression saw it (``walk_view.layer_gram``), on the
    run's own calibration data (the default data when its manifest does not record it)."""
    from oats.data import calibration_batches
    run = _run(path, mtime)
    info = run_info(path)
    cal = info.calibration_request or {}
    batches = calibration_batches(run.loaded, n_samples=cal.get("samples"), seq_len=cal.get("seq_len"),
                                  source=cal.get("source"), seed=cal.get("seed") or 0,
                                  domain=info.calibration_domain)
    with MODEL_LOCK:
        return walk_view.layer_gram(run, qualname, batches)


@st.cache_data(show_spinner="Decomposing this layer ...", max_entries=32)
def walkthrough(path: str, mtime: float, qualname: str, compression: float, rank_ratio: float) -> walk_view.Walkthrough:
    run = _run(path, mtime)
    f = run.factors(qualname)
    replay, _ = replay_of(run)
    if replay is None:
        raise OatsError(f"no registered method says how to replay a run of {run.method!r}")
    config = run.config.replace(compression=compression, rank_ratio=rank_ratio)
    if replay.gram:
        return walk_view.walkthrough(f["weight"], run.second_moments[qualname], config, replay,
                                     gram=layer_gram(path, mtime, qualname))
    method = registry.find(run.method)
    scaled = method.scaled if method is not None else True
    return walk_view.walkthrough(f["weight"], run.second_moments[qualname] if scaled else None, config, replay)


def run_task(info: RunInfo) -> str | None:
    """causal-lm, encoder or vision for a run (recorded by the CLI and the app; for other
    runs, the preset's task)."""
    from oats.models.zoo import PRESETS
    if info.task:
        return info.task if isinstance(info.task, str) else None  # the manifest's word: any JSON value
    preset = PRESETS.get(info.model_name)
    return preset.task if preset else None


def primary_metric(task: str) -> tuple[str, bool] | None:
    """(metric name, higher is better) for a task, or None for a task without an evaluation."""
    return PRIMARY_METRIC.get(task)


@st.cache_data(show_spinner=False, max_entries=4)
def ablation_reference(path: str, mtime: float) -> list[dict]:
    from oats.evaluation import evaluate_model
    run = _run(path, mtime)
    with MODEL_LOCK:
        return budget.ablation_reference(run, lambda: evaluate_model(run.model, run.loaded, quick=True))


@st.cache_data(show_spinner=False, max_entries=256)
def block_ablation(path: str, mtime: float, block: int) -> list[dict]:
    from oats.evaluation import evaluate_model
    run = _run(path, mtime)
    with MODEL_LOCK:
        return budget.block_ablation(run, block, lambda: evaluate_model(run.model, run.loaded, quick=True))


# ----------------------------------------------------------------------------- heavy-tailed spectra


@st.cache_data(show_spinner="Fitting power laws to this layer's spectra ...", max_entries=64)
def layer_esd(path: str, mtime: float, qualname: str) -> heavytail.LayerESD:
    return heavytail.layer_esd(_run(path, mtime), qualname)


@st.cache_data(show_spinner=False, max_entries=2048)
def layer_alpha(path: str, mtime: float, qualname: str) -> dict:
    return heavytail.layer_alpha(_run(path, mtime), qualname)


_ALPHA_DONE: set[tuple[str, float]] = set()
"""Runs whose every layer's α has been fitted in this process (shown without asking again)."""


def alpha_done(path: str, mtime: float) -> bool:
    return (path, mtime) in _ALPHA_DONE


def alpha_table(path: str, mtime: float, run) -> list[dict]:
    """Every layer's α and stable rank, dense and compressed; each layer cached, a progress bar
    while any is computed (for everyone who opens the run afterwards, it is there at once)."""
    names = [r.qualname for r in run.layers]
    if (path, mtime) in _ALPHA_DONE:
        return [layer_alpha(path, mtime, q) for q in names]
    bar = st.progress(0.0, text=f"Fitting power laws to {len(names)} layers (dense and compressed) ...")
    rows = []
    for i, q in enumerate(names):
        rows.append(layer_alpha(path, mtime, q))
        bar.progress((i + 1) / len(names), text=f"Fitting power laws: {i + 1}/{len(names)} layers ({esc(q)})")
    bar.empty()
    _ALPHA_DONE.add((path, mtime))
    return rows


# ----------------------------------------------------------------------------- massive activations


@st.cache_data(show_spinner="One forward pass of the dense and of the compressed model ...", max_entries=16)
def massive_profile(path: str, mtime: float, input_key: str, _text: str | None, _image=None):
    from oats.explain import activations
    run = _run(path, mtime)
    with MODEL_LOCK:
        return activations.massive_activations(run, activations.make_input(run, text=_text, image=_image))


@st.cache_data(show_spinner=False, max_entries=4)
def evaluation_tokens(path: str, mtime: float) -> int:
    from oats.evaluation import evaluation_tokens as tokens
    return tokens(_run(path, mtime).loaded, quick=True)


@st.cache_data(show_spinner=False, max_entries=256)
def channel_intervention(path: str, mtime: float, block: int, channels: tuple[int, ...],
                         values: tuple[float, ...] | None) -> list[dict]:
    """The quick evaluation of the dense and compressed model with ``channels`` of ``block``'s
    input set to ``values`` (zero when None)."""
    from oats.evaluation import evaluate_model, prepare_reference
    from oats.explain import activations
    run = _run(path, mtime)
    with MODEL_LOCK:
        return activations.intervention(run, block, list(channels), None if values is None else list(values),
                                        lambda: evaluate_model(run.model, run.loaded, quick=True),
                                        prepare=lambda: prepare_reference(run.model, run.loaded, quick=True))


@st.cache_data(show_spinner="Counting the run's bytes ...", max_entries=16)
def deploy_sizes(path: str, mtime: float) -> dict:
    """Bytes of the run's block linears dense, as a sparse export (memory, disk) and folded."""
    from oats.deploy.export import size_report
    return size_report(_run(path, mtime))
