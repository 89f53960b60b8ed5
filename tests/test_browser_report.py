"""The report in Chromium: opened from disk (file://) with every other request refused, it draws
its figures and the pinned one, with no script error, and asks the network for nothing."""

from __future__ import annotations

import pytest
from browser_helpers import CHROMIUM, LAUNCH_ARGS, requirements
from conftest import skip_or_fail

import plotly.graph_objects as go

from oats import report
from oats.cli import main
from oats.runs.evaluations import save_evaluation

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    why = requirements()
    if why:
        skip_or_fail(why)
    root = tmp_path_factory.mktemp("browser-report")
    folder = root / "minilm-oats"
    assert main(["compress", "minilm-l6", "--method", "oats", "--iterations", "3", "--calib-samples", "8",
                 "--out", str(folder), "--quiet"]) == 0
    save_evaluation(folder, {m: {"cosine": c, "cosine@manual": c, "cosine@verse": c - 0.01}
                             for m, c in (("dense", 1.0), ("both", 0.86), ("sparse", 0.01), ("lowrank", 0.2))},
                    quick=True, settings={"sentences": 16, "domains": ["manual", "verse"]})
    pinned = go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]), layout={"title": {"text": "Pinned heat map"}})
    pinned.add_layout_image(source="https://cdn.example.invalid/pixel.png", x=0, y=0)  # dropped by the reader
    report.save_pin(folder, "heat", "Pinned heat map", pinned.to_json())
    out = root / "report.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    return out


def test_report_opens_offline_from_disk(report_file):
    from playwright.sync_api import sync_playwright
    requested, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})

            def only_files(route):
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    requested.append(route.request.url)
                    route.abort()
            context.route("**/*", only_files)
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(report_file.as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=120_000)
            plots = page.locator(".js-plotly-plot")
            assert plots.count() == 5  # evaluation, per domain, per layer, along depth, the pin
            assert page.locator(".js-plotly-plot .point").count() > 10  # bars drawn, not empty frames
            assert page.locator(".js-plotly-plot .heatmaplayer image, .js-plotly-plot .hm").count() >= 1
            assert page.get_by_text("Pinned heat map").count() >= 1
            assert page.locator("pre.reproduce").inner_text().startswith("oats compress minilm-l6 --method oats")
        finally:
            browser.close()
    assert requested == [], requested
    assert errors == [], errors
