"""app.py with the page named by $OATS_LINK_PAGE (e.g. "pages/spectra.py") as its default page.

For AppTest only: a page picked with ``AppTest.switch_page`` runs alone, not through app.py,
while a link is always opened through app.py (its sidebar and ``ui.links``). Opening the app at
its default page is the one way AppTest runs a page through app.py on a session's first run."""

import os
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
_page = st.Page


def _page_as_default(path, **kw):
    kw["default"] = path == os.environ["OATS_LINK_PAGE"]
    return _page(str(ROOT / path), **kw)


st.Page = _page_as_default
try:
    exec(compile((ROOT / "app.py").read_text(), str(ROOT / "app.py"), "exec"), {"__name__": "__main__"})
finally:
    st.Page = _page
