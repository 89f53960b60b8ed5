"""Pinning in the app (AppTest): "Pin to report" under a chart keeps the figure in the run folder,
where ``oats report`` finds it; unticking (or the sidebar's Unpin) removes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oats import report
from oats.cli import main
from oats.runs.evaluations import save_evaluation

pytestmark = pytest.mark.integration

APP = str(Path(__file__).resolve().parents[1] / "app.py")
EVAL = {"dense": {"cosine": 1.0, "cosine@manual": 1.0, "cosine@verse": 1.0},
        "both": {"cosine": 0.75, "cosine@manual": 0.7, "cosine@verse": 0.8}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pin-runs")
    folder = root / "minilm-wanda"
    assert main(["compress", "minilm-l6", "--method", "wanda", "--calib-samples", "8", "--out", str(folder),
                 "--quiet"]) == 0
    save_evaluation(folder, EVAL, quick=True, settings={"sentences": 16, "domains": ["manual", "verse"]})
    return root


def _pin_box(at):
    boxes = [c for c in at.checkbox if "Pin to report" in c.label]
    assert boxes, "no Pin to report box on the page"
    return boxes


def test_pin_and_unpin_from_the_compress_page(runs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ui.state import RUN_KEY
    monkeypatch.setenv("OATS_RUNS_DIR", str(runs))
    folder = runs / "minilm-wanda"
    at = AppTest.from_file(APP, default_timeout=600)
    at.session_state[RUN_KEY] = str(folder)
    at.run()
    at.switch_page("pages/home.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    boxes = _pin_box(at)
    assert not any(b.value for b in boxes)
    boxes[0].check().run()  # the first chart: the evaluation
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    files = list(report.pins_folder(folder).glob("*.json"))
    assert len(files) == 1
    pinned = json.loads(files[0].read_text())
    shown = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert pinned["key"] == "eval-chart" and pinned["title"] == shown["layout"]["title"]["text"]
    assert [t["y"] for t in pinned["figure"]["data"]] == [t["y"] for t in shown["data"]]  # the figure as shown
    assert _pin_box(at)[0].value  # ticked: it is pinned
    # the CLI's report has it
    page = report.build_report(folder)
    assert "chart eval-chart, pinned" in page
    # unpinned elsewhere (the sidebar's Report panel removes the file the same way): the box unticks
    report.remove_pin(folder, files[0].stem)
    at.run()
    assert not _pin_box(at)[0].value
    # pinned again and unticked under the chart
    _pin_box(at)[0].check().run()
    assert len(list(report.pins_folder(folder).glob("*.json"))) == 1
    _pin_box(at)[0].uncheck().run()
    assert not list(report.pins_folder(folder).glob("*.json"))
    assert not at.exception


def test_report_download_bytes(runs):
    from ui.pins import report_html
    page = report_html(str(runs / "minilm-wanda")).decode()
    assert page.startswith("<!DOCTYPE html>") and "Report: minilm-wanda" in page
    assert (runs / "minilm-wanda" / "report" / "report.html").is_file()
    missing = report_html(str(runs / "gone")).decode()
    assert "could not be written" in missing and len(missing) < 1000
