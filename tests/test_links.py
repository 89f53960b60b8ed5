"""A link for every view (ui/links.py), through AppTest on small real minilm-l6 runs.

A link is opened as a session's first script run: ``opened`` runs tests/link_app.py (app.py
with the linked page as its default page, see there) with the link's query parameters, and
then reads what the page shows and what the app wrote back into the URL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
HARNESS = str(ROOT / "tests" / "link_app.py")


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """(runs folder, an older run's folder name, the newest run's folder name)."""
    from test_app import prepare_runs
    from oats.runs.folders import list_runs
    root = prepare_runs(tmp_path_factory.getbasetemp() / "app-runs")
    done = sorted((r for r in list_runs(root) if r["status"] == "complete"), key=lambda r: str(r["created"]))
    assert len(done) >= 2
    return root, Path(done[0]["path"]).name, Path(done[-1]["path"]).name


def opened(monkeypatch, root: Path, page: str, params: dict[str, str]):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("OATS_RUNS_DIR", str(root))
    monkeypatch.setenv("OATS_LINK_PAGE", page)
    at = AppTest.from_file(HARNESS, default_timeout=600)
    at.query_params.update(params)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _select(at, label: str):
    found = [s for s in at.selectbox if s.label == label]
    assert found, [s.label for s in at.selectbox]
    return found[0].value


def _link(at) -> str:
    codes = [c.value for c in at.sidebar.get("code")]
    assert len(codes) == 1, codes
    return codes[0]


def _link_lines(at) -> list[str]:
    """The info lines the link itself gives (a page's own findings, e.g. Spectra's alpha
    sentence once every layer has been fitted by an earlier test, are not about the link)."""
    return [i.value for i in at.info if "This link asked for" in i.value or "could not take" in i.value]


def test_a_link_restores_run_layer_and_settings_on_spectra(runs, monkeypatch):
    root, older, newest = runs
    at = opened(monkeypatch, root, "pages/spectra.py", {"run": older, "layer": "2.fc1", "esd": "1"})
    assert Path(_select(at, "Run")).name == older != newest
    assert _select(at, "Layer") == "2.fc1"
    assert [t.value for t in at.toggle if t.label.startswith("Fit power laws")] == [True]
    assert not _link_lines(at), _link_lines(at)
    # the URL holds the view, and the sidebar's link is that URL
    assert dict(at.query_params) == {"run": older, "layer": "2.fc1", "esd": "1"}
    assert _link(at) == f"/?run={older}&layer=2.fc1&esd=1"


def test_without_a_link_the_url_is_written_for_the_view(runs, monkeypatch):
    root, _, newest = runs
    at = opened(monkeypatch, root, "pages/spectra.py", {})
    assert Path(_select(at, "Run")).name == newest
    assert dict(at.query_params) == {"run": newest, "layer": "0.q", "esd": "0"}  # the page's defaults, written
    at.selectbox(key="layer_pick").set_value("1.v").run()
    assert at.query_params["layer"] == "1.v"


def test_walkthrough_and_outliers_settings_come_back(runs, monkeypatch):
    root, older, _ = runs
    at = opened(monkeypatch, root, "pages/walkthrough.py", {"run": older, "layer": "3.k", "rho": "0.6", "kappa": "0.1"})
    assert _select(at, "Layer") == "3.k"
    sliders = {s.label.split(" ")[0]: s.value for s in at.slider}
    assert sliders["Compression"] == pytest.approx(0.6) and sliders["Rank"] == pytest.approx(0.1)
    assert at.query_params["rho"] == "0.6" and at.query_params["kappa"] == "0.1"
    at = opened(monkeypatch, root, "pages/outliers.py", {"run": older, "threshold": "12.5"})
    assert [s.value for s in at.slider if s.label.startswith("Outlier threshold")] == [12.5]


@pytest.mark.parametrize("params, words", [
    ({"run": "../../etc", "layer": "0.q"}, ["run '../../etc' (no such run in this runs folder)"]),
    ({"layer": "9.zz"}, ["layer '9.zz' (not a layer of this run)"]),
    ({"esd": "maybe", "present": "2"}, ["esd 'maybe' (not 0 or 1)", "present '2' (not 0 or 1)"]),
    ({"layer": "<img src=x onerror=alert(1)>" + "x" * 500}, ["layer"]),
])
def test_a_stale_or_hostile_link_falls_back_with_one_line(runs, monkeypatch, params, words):
    root, _, newest = runs
    at = opened(monkeypatch, root, "pages/spectra.py", params)
    assert not at.error, [e.value for e in at.error]
    assert len(_link_lines(at)) == 1, [i.value for i in at.info]
    line = _link_lines(at)[0].replace("\\", "")  # the values are shown escaped (ui.text.esc)
    assert all(w in line for w in words), line
    assert Path(_select(at, "Run")).name == newest and _select(at, "Layer") == "0.q"
    assert at.query_params["layer"] == "0.q"  # the URL now names what is shown


def test_numbers_out_of_range_or_not_numbers_are_dropped(runs, monkeypatch):
    root, older, _ = runs
    at = opened(monkeypatch, root, "pages/walkthrough.py",
                {"run": older, "rho": "abc", "kappa": "7", "layer": "nan"})
    assert not at.error
    line = _link_lines(at)[0].replace("\\", "")
    assert "rho 'abc' (not a number)" in line and "kappa '7' (outside 0…0.9)" in line, line
    assert at.query_params["rho"] != "abc" and at.query_params["kappa"] != "7"


def test_a_value_a_widget_refuses_is_dropped_not_raised(runs, monkeypatch):
    """The last resort: a table entry wider than its slider (as if a page narrowed its range)."""
    from ui import links
    root, older, _ = runs
    wide = [links.LAYER, links.Link("threshold", "outlier-threshold", "float", 0.0, 1e9)]
    monkeypatch.setitem(links.PAGES, "Outliers", wide)
    at = opened(monkeypatch, root, "pages/outliers.py", {"run": older, "threshold": "400"})
    assert not at.exception
    assert "settings this page could not take" in _link_lines(at)[0]
    assert [s.value for s in at.slider if s.label.startswith("Outlier threshold")] == [5.0]


def test_presentation_mode_from_the_link_scales_figures(runs, monkeypatch):
    import json
    root, older, _ = runs
    plain = opened(monkeypatch, root, "pages/spectra.py", {"run": older})
    big = opened(monkeypatch, root, "pages/spectra.py", {"run": older, "present": "1"})
    assert [t.value for t in big.toggle if t.label == "Presentation mode"] == [True]
    assert big.query_params["present"] == "1" and "present" not in plain.query_params

    def layout(at):
        return json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]
    a, b = layout(plain), layout(big)
    assert b["font"]["size"] == pytest.approx(12 * 1.45)
    assert b["height"] == round(a["height"] * 1.3) if "height" in a else True
    assert any(".stMainBlockContainer" in h.proto.body or "font-size" in h.proto.body for h in big.get("html"))


def test_streamlit_falls_back_for_a_selectbox_value_not_among_its_options():
    """What ui/links.py leaves to Streamlit: a select box or radio given a value not among its
    options shows its default, with no exception (Streamlit 1.67)."""
    from streamlit.testing.v1 import AppTest

    def page():
        import streamlit as st
        st.session_state.setdefault("sb", "zz")
        st.session_state.setdefault("rd", 5)
        st.selectbox("s", ["a", "b"], index=1, key="sb")
        st.radio("r", ["a", "b"], key="rd")

    at = AppTest.from_function(page).run()
    assert not at.exception
    assert at.selectbox[0].value == "b" and at.radio[0].value == "a"


def test_parse_and_text_round_trip():
    from ui.links import Link, parse, text
    assert parse(Link("x", "x", "bool"), "1") is True and parse(Link("x", "x", "bool"), "off") is False
    assert parse(Link("x", "x", "int", 0, 10), " 7 ") == 7
    assert parse(Link("x", "x", "float", 0.0, 1.0), "0.25") == 0.25
    for kind, raw in [("int", "1e3"), ("float", "inf"), ("float", "nan"), ("float", "2"), ("bool", "yes please"),
                      ("str", "a\nb"), ("str", "x" * 401)]:
        with pytest.raises(ValueError):
            parse(Link("x", "x", kind, 0.0, 1.0), raw)
    assert text(Link("x", "x", "float"), 0.30000000000000004) == "0.3"
    assert text(Link("x", "x", "run"), "/some/runs/minilm-a") == "minilm-a"
    assert text(Link("x", "x", "bool"), False) == "0" and text(Link("x", "x"), None) is None


def test_compare_page_sweep_comes_back_by_folder_name(runs, monkeypatch):
    from oats.runner.sweep import list_sweeps
    root, _, _ = runs
    sweeps = list_sweeps(root)
    assert sweeps
    at = opened(monkeypatch, root, "pages/compare.py", {"sweep": sweeps[0].name})
    assert _select(at, "Sweep") == sweeps[0] and at.query_params["sweep"] == sweeps[0].name
    at = opened(monkeypatch, root, "pages/compare.py", {"sweep": "../nope"})
    assert "no such sweep" in at.info[0].value and _select(at, "Sweep") == sweeps[-1]
