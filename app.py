"""OATS Explorer, the Streamlit app. Pages are registered here; each page stays thin."""

import time

import streamlit as st

from ui import links
from ui.navigation import PAGES
from ui.runtime import log_script_time, warm_up
from ui.widgets import sidebar

started = time.perf_counter()

# A local favicon: without it the browser asks a font server on the internet for each page icon
st.set_page_config(page_title="OATS Explorer", page_icon="assets/favicon.png", layout="wide")
warm_up()

pages = [st.Page(p.file, title=p.title, icon=p.icon, default=p.default,
                 **({"url_path": p.url_path} if p.url_path else {})) for p in PAGES]  # ui/navigation.py
nav = st.navigation(pages)
links.restore_run()          # a link opened or a reload: its run, before the sidebar picks one
sidebar()
links.restore_page(nav)      # ... and the page's layer and settings, checked against that run
slot = links.sidebar_tools()
links.presentation()
links.show_link(slot, links.write(nav, pages))  # before the page: a page may end the script (st.stop)
links.guard(nav)
links.show_link(slot, links.write(nav, pages))  # after: what the page set (its layer, its defaults)
log_script_time(nav.title, time.perf_counter() - started)
