"""Pinning figures to a run's report, and the sidebar's report panel.

``ui.widgets.chart`` draws nearly every figure of the app and calls :func:`pin_control` under it:
a "Pin to report" tick box. A pinned figure is kept in the run folder as the chart showed it
(``oats.report.save_pin``), so ``oats report RUN`` on the command line includes it too, and
the report panel in the sidebar lists the pins (each can be unpinned) and writes the report in
one click. Nothing here reads a pin back to draw it: the report does, as an untrusted file.
"""

from __future__ import annotations

import hashlib
import html
from pathlib import Path

import streamlit as st

from oats import report
from oats.errors import OatsError
from ui.text import esc


def _widget_key(path: str, name: str) -> str:
    return f"pin-{hashlib.sha1(str(path).encode('utf-8', 'replace')).hexdigest()[:8]}-{name}"


def _title(fig) -> str:
    try:
        return str(fig.layout.title.text or "")
    except Exception:  # noqa: BLE001 - a figure without a title is pinned under its key alone
        return ""


def _toggled(path: str, key: str, title: str, wkey: str, fig) -> None:
    """The tick box changed: pin the figure (as the chart shows it) or unpin it."""
    try:
        if st.session_state.get(wkey):
            report.save_pin(path, key, title, fig.to_json())
            st.toast(f"Pinned to the report of {esc(Path(path).name, 120)}", icon=":material/push_pin:")
        else:
            report.remove_pin(path, report.pin_name(key, title))
    except OatsError as e:
        st.session_state[f"{wkey}-error"] = str(e)


def pin_control(fig, key: str | None, path: str | None) -> None:
    """A "Pin to report" tick box under a chart (``key``: the chart's key; none without a key or
    a run). Its state is the pin file's: unpinned in the report panel, it shows unticked."""
    if not key or not path:
        return
    title = _title(fig)
    wkey = _widget_key(path, report.pin_name(key, title))
    st.session_state[wkey] = report.is_pinned(path, key, title)
    st.checkbox(":material/push_pin: Pin to report", key=wkey, on_change=_toggled,
                args=(path, key, title, wkey, fig),
                help="Keep this figure, as shown, in the run's report (sidebar: Report; or `oats report RUN`).")
    problem = st.session_state.pop(f"{wkey}-error", None)
    if problem:
        st.error(esc(problem))


def report_html(path: str) -> bytes:
    """The report of ``path``, also kept as ``<run>/report/report.html`` when the run folder can
    be written (a read-only or full one still gets its download); a page with the one-line reason
    when the run cannot be read (a download must not fail silently)."""
    try:
        try:
            return report.write_report(path).read_bytes()
        except OatsError:
            return report.build_report(path).encode("utf-8")
    except OatsError as e:
        return (f"<!DOCTYPE html><meta charset=utf-8><title>No report</title><p>The report of "
                f"{html.escape(Path(path).name)} could not be written: {html.escape(str(e))}</p>").encode("utf-8")


@st.cache_data(show_spinner=False, max_entries=16)
def _pin_list(path: str, signature: tuple) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, title) of the run's pins and the lines about damaged ones, read again only when a
    pin file changes (``signature``: ``report.pin_files``)."""
    pins, problems = report.read_pins(path)
    return [(p.name, p.title or p.key) for p in pins], problems


def report_panel(path: str | None) -> None:
    """The sidebar's Report: the pinned figures (each with Unpin) and one-click download of the
    run's self-contained HTML report."""
    if not path:
        return
    pins, problems = _pin_list(path, report.pin_files(path))
    with st.expander(f"Report · {len(pins)} pinned figure{'s' * (len(pins) != 1)}", icon=":material/summarize:"):
        st.download_button("Download report", data=lambda: report_html(path), on_click="ignore",
                           file_name=f"{report.plain_name(Path(path).name)}-report.html", mime="text/html",
                           icon=":material/download:", key=f"report-{_widget_key(path, 'download')}",
                           help="One HTML file: settings, evaluation, per-layer table, figures and the pinned ones, "
                                "the commands to reproduce the run. Opens offline.")
        for name, title in pins:
            a, b = st.columns([4, 1])
            a.caption(esc(title, 120))
            if b.button("", icon=":material/close:", key=_widget_key(path, f"unpin-{name}"), help="Unpin"):
                try:
                    report.remove_pin(path, name)
                except OatsError as e:
                    st.error(esc(e))
                st.rerun()
        for p in problems:
            st.caption(f":material/warning: {esc(p, 300)}")
        if not pins and not problems:
            st.caption("Tick **Pin to report** under a chart to add it here.")
