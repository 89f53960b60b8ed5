"""The app's widgets: the sidebar (model and run pickers, the running job, damaged folders),
the shared layer picker, charts (with "Pin to report"), "How to read this", tables with their
CSV download, and the image upload."""

from __future__ import annotations

import hashlib
import io
import re

import pandas as pd
import streamlit as st

from oats.errors import OatsError
from oats.runs.folders import runs_root
from ui import names, pins
from ui.runtime import RUNS
from ui.state import ALL_MODELS, complete_runs, current_path, damaged_runs, LAYER_KEY, MODEL_KEY, RUN_KEY, run_mtime
from ui.text import esc, one_line, plain_figure

CHART_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


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
