"""Home: which models are available here and which runs are on disk."""

import pandas as pd
import streamlit as st

from oats.cli import runs_root
from oats.io import list_runs
from oats.zoo import available_models

st.title("OATS Explorer")
st.caption("Outlier-aware sparse + low-rank compression of transformer weights (Zhang & Papyan, ICLR 2025).")

st.subheader("Models")
models = available_models()
st.dataframe(pd.DataFrame([{"model": m["name"], "task": m["task"], "available": m["available"],
                            "about": m["description"] if m["available"] else m.get("install", "")}
                           for m in models]), hide_index=True, width="stretch")

st.subheader("Runs on disk")
root = runs_root()
runs = list_runs(root)
if not runs:
    st.info(f"No run yet in '{root}'. Make one with: oats compress minilm-l6")
else:
    st.dataframe(pd.DataFrame(runs).drop(columns=["path"]), hide_index=True, width="stretch")
