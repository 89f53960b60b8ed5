"""Calibration: how much calibration data, and of what kind — a study's matrix and tokens curve."""

from pathlib import Path

import streamlit as st

from oats.errors import OatsError
from oats.runs.folders import runs_root
from ui import calibration_figures as cf
from ui.widgets import chart, how_to_read, table
from ui.text import esc

st.title("Calibration")
st.caption("How much calibration data, and of what kind? Each method calibrated on one domain (or the mix) and "
           "evaluated on the held-out part of every domain, and calibrated on more and more of the mix.")

files = cf.study_files(runs_root())
studies, problems = [], []
for path, source in files:
    try:
        studies.append((path, source, cf.load_study(path)))
    except OatsError as e:
        problems.append(str(e))
for line in problems:
    st.warning(esc(line, 300))

if not studies:
    st.info(f"No calibration study yet — run one from the command line, e.g. `{cf.COMMAND}` (a few minutes; "
            f"`--model smollm2-135m` takes hours), then reload this page.")
else:
    def name(i: int) -> str:
        path, source, study = studies[i]
        return f"{study['model']} · {Path(path).name} ({'committed with the project' if source == 'committed' else 'yours'})"

    pick = st.selectbox("Study", range(len(studies)), format_func=name)
    path, source, study = studies[pick]
    st.caption(esc(cf.describe(study), 1500))
    made_by = cf.commands(study)
    if made_by:
        st.code("\n".join(made_by), language="bash")
    ms = cf.methods(study)
    if not ms:
        st.info("This study holds no compressed run yet: run the benchmark again (it resumes), then reload.")
    else:
        method = st.radio("Method", ms, horizontal=True, key="calibration-method")
        chart(cf.matrix_figure(study, method), key="calibration-matrix")
        if not study["higher_is_better"]:  # a fidelity metric is 1 for the dense model by definition
            st.caption(esc(cf.dense_line(study), 600))
        kind = "images" if study.get("task") == "vision" else "text"
        how_to_read(
            f"One row per calibration set (one domain's calibration part, or the mix of all of them), one column per "
            f"domain whose held-out evaluation part the model was measured on, then the mean over the domains. The "
            f"diagonal is in-domain: calibrated and evaluated on the same kind of {kind}. A row that is good only on its "
            "own column is a calibration the method over-fits; the best row of each column is in bold. "
            + ("Colour: the perplexity divided by the dense model's on that column, on a log scale (the domains' own "
               "perplexities differ by 10×, so raw values would colour the domain, not the calibration)."
               if not study["higher_is_better"] else
               "Colour: the value itself (fidelity to the dense model, 1 is identical)."))
        chart(cf.curve_figure(study), key="calibration-curve")
        how_to_read(
            f"One panel per method, calibrated on the mix at several sizes ({esc(study.get('unit', 'samples'))}); the "
            "x axis counts calibration tokens on a log scale"
            + (" (a crop is the ViT's patch tokens plus its CLS token)" if study.get("task") == "vision" else "")
            + ", one line per evaluation domain and a dashed black one "
            "for the mean. Where a line stops improving, more calibration of that kind no longer helps that domain; "
            "hover a point for the dense model's value.")
        stem = Path(path).stem
        table(cf.table_rows(study), f"{stem}-matrix", key="csv-calibration-matrix")
        table(cf.curve_rows(study), f"{stem}-curve", key="csv-calibration-curve")
