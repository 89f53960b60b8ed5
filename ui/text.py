"""Text the app did not write itself, shown as text: the one escaping helper of the app.

A run folder's manifest, its folder name, an export, an upload's file name, a path someone typed
and every error message that quotes one of them come from someone else (run folders get mailed
and shared). Nearly every Streamlit element renders its body *and* its label as Markdown, so a
model name ``![x](http://host/pixel.png)`` would make every viewer's browser fetch that URL.
Pages pass such strings through ``esc`` before they reach ``st.markdown``, ``st.caption``,
``st.error`` / ``st.info`` / ``st.success`` / ``st.warning``, a title, a widget label or help,
a spinner or a progress text. Select-box options and table cells are plain text and need none.
Plotly renders a small HTML subset in titles, legends, tick and hover labels: ``plain_figure``
makes the strings of a figure literal there.
"""

from __future__ import annotations

import html
import re

__all__ = ["FIGURE_HOOKS", "MAX_SHOWN", "esc", "one_line", "plain_figure"]

FIGURE_HOOKS: list = []
"""Functions ``plain_figure`` applies to every figure last (ui.links adds presentation mode's)."""

MAX_SHOWN = 600
"""Characters of one outside string shown at most: a name is for recognising, and a 1 MB model
name must not become a 1 MB page."""

_ALWAYS = frozenset("\\`*[]~$@")
# What CommonMark, GFM and Streamlit read as markup, escaped where (and only where) it would be
# read so: an ordinary name or message ("run 'a_b-1.2': 0 < N < M") stays byte for byte what it
# was. Always: backslash, code, emphasis, link and image brackets (so "![" and "](" are inert),
# strikethrough, $ math, and @ (e-mail autolinks). "_" outside a word (inside one it never
# emphasises). "<" before what could open an HTML tag or an autolink. "://" and "www." (GFM's
# bare links). A line start that would make a heading, quote, list or rule.
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_BARE_LINK = re.compile(r"(?i):(?=//)|(?<![\w.])(www)\.")
_LINE_START = re.compile(r"^(?:([#>+=|-])|(\d+)([.)]))")


def _escape(text: str) -> str:
    out = []
    for i, c in enumerate(text):
        if c in _ALWAYS or (c == "_" and not (0 < i < len(text) - 1 and text[i - 1].isalnum()
                                              and text[i + 1].isalnum())):
            out.append("\\" + c)
        else:
            out.append(c)
    text = "".join(out)
    text = _TAG_START.sub(r"\\<", text)
    text = _BARE_LINK.sub(lambda m: "\\:" if m.group(1) is None else m.group(1) + "\\.", text)
    return _LINE_START.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\" + m.group(3), text)


def one_line(value: object, limit: int = MAX_SHOWN) -> str:
    """``str(value)`` on one line (newlines and control characters become spaces), cut to ``limit``."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(value)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def esc(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as literal Markdown: shown exactly as written (on one line, at most ``limit``
    characters), never rendered as an image, a link, HTML or formatting. Text without markup
    comes back unchanged."""
    return _escape(one_line(value, limit))


_HTML = ("<", ">", "&")


def _needs(v) -> bool:
    return isinstance(v, str) and any(c in v for c in _HTML)


def _plain(v):
    """``v`` escaped where it holds a string Plotly would read as HTML; None when nothing changes."""
    if isinstance(v, str):
        return html.escape(v, quote=False) if _needs(v) else None
    if isinstance(v, (list, tuple)) and any(_needs(x) for x in v):
        return type(v)(html.escape(x, quote=False) if isinstance(x, str) else x for x in v)
    return None


def plain_figure(fig):
    """``fig`` with the strings Plotly would read as HTML (title, annotations, trace names,
    category and text labels) escaped, so a layer or run name from a file shows as written;
    returns ``fig``. The app's own figures put HTML only in hover templates, left alone."""
    title = _plain(fig.layout.title.text)
    if title is not None:
        fig.layout.title.text = title
    for note in fig.layout.annotations or ():
        text = _plain(note.text)
        if text is not None:
            note.text = text
    for trace in fig.data:
        for attr in ("name", "x", "y", "text", "labels"):
            if attr not in trace:
                continue
            value = trace[attr]
            if hasattr(value, "dtype"):  # numpy: only an object array can hold strings
                value = value.tolist() if value.dtype == object else None
            plain = _plain(value)
            if plain is not None:
                trace[attr] = plain
    _below_toolbar(fig)
    for hook in FIGURE_HOOKS:
        fig = hook(fig)
    return fig


TOOLBAR_PX = 32
"""Plotly's toolbar (the modebar: download, zoom, ...) shows over the top right of a chart, about
30 px tall; a left-aligned title long enough to reach the right ran under it."""


def _below_toolbar(fig) -> None:
    """Put a titled figure's title (and subtitle) below the toolbar's strip, the top margin grown
    to hold both when it is smaller."""
    if not fig.layout.title.text:
        return
    need = TOOLBAR_PX + (52 if fig.layout.title.subtitle.text else 28) + 8
    top = fig.layout.margin.t
    fig.update_layout(title=dict(yref="container", y=1.0, yanchor="top", pad=dict(t=TOOLBAR_PX)),
                      margin_t=max(top if top is not None else 100, need))
