"""The Compare page's small sweep: a form (model, methods, rates) with an estimate of what it
launches, and the progress of each of its runs on the app's background runner
(``oats.runner.page_sweep`` holds the logic)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from oats.errors import OatsError
from oats.methods import registry
from oats.models.zoo import available_models
from oats.runner import page_sweep
from oats.runs.estimate import duration
from ui.state import method_help
from ui.text import esc

MADE_KEY = "_sweep_made"
"""The table folder of the sweep this session started last (the Sweep box opens on it)."""


def _runner():
    from oats.runner.jobs import RUNNER  # read at call time: tests swap the module's runner
    return RUNNER


def _estimate(reqs) -> str:
    """How many compressions the sweep launches, how many are reused, and about how long they
    take (``page_sweep.estimate``: this machine's past runs where it has them), in Markdown."""
    reused = page_sweep.existing(reqs)
    methods = list(dict.fromkeys(r.method for r in reqs))
    rates = list(dict.fromkeys(r.config.compression for r in reqs))
    todo = len(reqs) - len(reused)
    text = (f"Launches **{todo} compression{'s' if todo != 1 else ''}** ({len(methods)} method"
            f"{'s' if len(methods) != 1 else ''} × {len(rates)} rate{'s' if len(rates) != 1 else ''}"
            + (f"; {len(reused)} already on disk, reused" if reused else "") + "), each evaluated when done.")
    seconds, basis = page_sweep.estimate(reqs)
    if todo and seconds is not None:
        text += f" About {duration(seconds)} in all, one run after the other ({esc(basis)})."
    return text


@st.fragment
def form(expanded: bool) -> None:
    """The form; its widgets rerun this fragment only, so the estimate follows every change."""
    with st.expander("Start a small sweep from here", expanded=expanded, icon=":material/play_arrow:"):
        models = [m["name"] for m in available_models() if m["available"]]
        if not models:
            st.info("No built-in model is installed here: run `oats sweep MODEL` from the command line.")
            return
        c1, c2, c3 = st.columns([2, 3, 2])
        model = c1.selectbox("Model", models, index=models.index("minilm-l6") if "minilm-l6" in models else 0,
                             key="sweep-form-model")
        methods = c2.multiselect("Methods", registry.names(), default=["oats", "wanda"], key="sweep-form-methods",
                                 help=method_help())
        rates = c3.text_input("Compression rates ρ", "0.3, 0.5", key="sweep-form-rates",
                              help="Comma-separated, each in (0, 1): the share of each matrix's parameters removed.")
        d1, d2 = st.columns(2)
        iterations = d1.number_input("OATS iterations", 1, 500, 80, key="sweep-form-iterations")
        samples = d2.number_input("Calibration samples (0: the task's default)", 0, 4096, 0, key="sweep-form-samples")
        try:
            reqs = page_sweep.requests(model, methods, rates, iterations=int(iterations),
                                       calib_samples=int(samples) or None)
        except OatsError as e:
            st.error(esc(e))
            return
        st.markdown(_estimate(reqs))
        if st.button("Start the sweep", type="primary", key="sweep-form-start"):
            try:
                folder = page_sweep.start(reqs, _runner())
            except OatsError as e:
                st.error(esc(e))
                return
            st.session_state[MADE_KEY] = str(folder)
            st.rerun()  # the whole page: the progress below picks the new plan up


def _draw(folder: Path, rows: list[dict]) -> None:
    done = sum(r["status"] == "done" for r in rows)
    box = st.status(f"Sweep {esc(folder.name)}: {done} of {len(rows)} runs done", state="running", expanded=True)
    for r in rows:
        frac = r["done"] / r["total"] if r["total"] else (1.0 if r["status"] == "done" else 0.0)
        blocks = f" {r['done']}/{r['total']} blocks" if r["total"] and r["status"] == "running" else ""
        box.progress(min(1.0, frac), text=f"{esc(r['method'])} ρ = {r['compression']:g}: "
                                          f"{esc(r['status'])}{blocks} — {esc(r['message'], 160)}")


@st.fragment(run_every=1.0)
def _live(folders: list[str]) -> None:
    """Each pending sweep's runs, redrawn each second; when none of a sweep's runs is queued or
    running any more, its table is written and the whole page reruns to chart it."""
    ended = []
    for f in map(Path, folders):
        rows = page_sweep.progress(f, _runner())
        if page_sweep.active(rows):
            _draw(f, rows)
        else:
            ended.append(f)
    if ended:
        for f in ended:
            _collect(f)
        st.rerun()


def _collect(folder: Path) -> None:
    try:
        n, missing = page_sweep.collect(folder)
    except OatsError as e:
        st.session_state["_sweep_note"] = ("error", str(e))
        return
    note = f"Sweep {folder.name}: {n} run{'s' if n != 1 else ''} in the table"
    if missing:
        note += f"; {len(missing)} left out (failed, stopped or not evaluated: start the same sweep again)"
    st.session_state["_sweep_note"] = ("warning" if missing else "success", note + ".")
    st.session_state[MADE_KEY] = str(folder)


def progress() -> bool:
    """The progress of every page sweep not yet collected (live while any run is active);
    whether one is in progress."""
    note = st.session_state.pop("_sweep_note", None)
    if note:
        getattr(st, note[0])(esc(note[1]))
    pending = page_sweep.pending()
    if not pending:
        return False
    if any(page_sweep.active(page_sweep.progress(f, _runner())) for f in pending):
        _live([str(f) for f in pending])
        return True
    for f in pending:  # ended while nobody watched (or the app restarted): collect what is there
        _collect(f)
    note = st.session_state.pop("_sweep_note", None)
    if note:
        getattr(st, note[0])(esc(note[1]))
    return False
