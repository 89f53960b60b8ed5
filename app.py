"""OATS Explorer, the Streamlit app. Pages are registered here; each page stays thin."""

import streamlit as st

from app_state import sidebar

st.set_page_config(page_title="OATS Explorer", layout="wide")

pages = [
    st.Page("pages/home.py", title="Compress", default=True),
]
nav = st.navigation(pages)
sidebar()
nav.run()
