"""OATS Explorer, the Streamlit app. Pages are registered here; each page stays thin."""

import time

import streamlit as st

from ui import links
from ui.runtime import log_script_time, warm_up
from ui.widgets import sidebar

started = time.perf_counter()

# A local favicon: without it the browser asks a font server on the internet for each page icon
st.set_page_config(page_title="OATS Explorer", page_icon="assets/favicon.png", layout="wide")
warm_up()

pages = [
    st.Page("pages/home.py", title="Compress", icon=":material/compress:", default=True),
    st.Page("pages/spectra.py", title="Spectra", icon=":material/ssid_chart:"),
    st.Page("pages/outliers.py", title="Outliers", icon=":material/scatter_plot:"),
    st.Page("pages/errors.py", title="Error budget", icon=":material/stacked_bar_chart:"),
    st.Page("pages/walkthrough.py", title="Walkthrough", icon=":material/school:"),
    st.Page("pages/heads.py", title="Heads", icon=":material/grid_view:"),
    st.Page("pages/vit.py", title="ViT attention", icon=":material/visibility:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/calibration.py", title="Calibration", icon=":material/tune:"),
    st.Page("pages/deploy.py", title="Deploy", icon=":material/rocket_launch:"),
]
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
