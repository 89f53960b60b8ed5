"""The app's run-time set-up, once per process: pages served through app.py, the heavy modules
imported in the background and the heap then frozen for the garbage collector, the page-time
log, and the process-wide cache of loaded runs (``RUNS``, ``load_run_cached``).

Imported first by ``ui.state`` (which every page imports), so a page run alone is sent through
app.py before anything else is imported.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path

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

from oats.runs.lazy import open_run as load_run  # noqa: E402 - after the page has been sent through app.py
# (open_run: in memory where the run fits easily, else a LazyRun that reads per layer and streams blocks)


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
