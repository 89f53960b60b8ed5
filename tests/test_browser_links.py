"""A link for every view, in Chromium: a link opened in a new browser context (as the server's
very first page), a reload, a page switch and a hostile URL.

The runs are test_app.py's small minilm-l6 sweep; the link names a run that is not the newest
and a layer that is not the first, so neither can come back by default. Screenshots go to
artifacts/screenshots/ (outside git).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import skip_or_fail
from browser_helpers import CHROMIUM, HANG_GUARD_S, LAUNCH_ARGS, requirements, screenshot, served_app, settle

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(app URL, an older run's folder name, the newest run's folder name)."""
    why = requirements()
    if why:
        skip_or_fail(why)
    from test_app import prepare_runs
    from oats.runs.folders import list_runs
    root = prepare_runs(tmp_path_factory.getbasetemp() / "app-runs")
    done = sorted((r for r in list_runs(root) if r["status"] == "complete"), key=lambda r: str(r["created"]))
    with served_app(root, tmp_path_factory.getbasetemp() / "streamlit-links.log") as url:
        yield url, Path(done[0]["path"]).name, Path(done[-1]["path"]).name


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


def _open(browser, url: str, charts: int = 0, text: str | None = None):
    """``url`` in a new browser context (no cookies, no storage: as someone the link was sent to)."""
    page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
    page.goto(url)
    page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=HANG_GUARD_S * 1000)
    settle(page, min_charts=charts, text=text)
    return page


def _shown(box) -> str:
    """A select box's label and shown value (the value may sit in its input)."""
    if not box.count():
        return ""
    box = box.first
    inputs = box.locator("input")
    return box.inner_text() + " " + " ".join(inputs.nth(i).input_value() for i in range(inputs.count()))


def _view(page) -> dict:
    """What the page shows: its path and query, the sidebar's run, the layer box, the link box."""
    href = page.evaluate("location.href")
    parts = urlsplit(href)
    boxes = page.locator('[data-testid="stSelectbox"]')
    return {"path": parts.path, "query": {k: v[-1] for k, v in parse_qs(parts.query).items()}, "href": href,
            "run": _shown(page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').filter(has_text="Run")),
            "layer": _shown(boxes.filter(has_text="Layer")),
            "link": page.locator('[data-testid="stSidebar"] [data-testid="stCode"]').first.inner_text().strip()}


def test_a_link_in_a_new_context_restores_run_page_and_layer_and_a_reload_keeps_them(served, browser):
    url, older, newest = served
    assert older != newest
    page = _open(browser, f"{url}/spectra?run={older}&layer=2.fc1", charts=3, text="Spectra of layer 2.fc1")
    v = _view(page)
    assert v["path"] == "/spectra" and v["query"]["run"] == older and v["query"]["layer"] == "2.fc1"
    assert older in v["run"] and "2.fc1" in v["layer"]
    assert page.locator('[data-testid="stException"]').count() == 0
    link = v["link"]
    assert link.startswith(url + "/spectra?") and parse_qs(urlsplit(link).query)["layer"] == ["2.fc1"]
    screenshot(page, "link-spectra-restored")

    page.reload()
    page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=HANG_GUARD_S * 1000)
    settle(page, min_charts=3, text="Spectra of layer 2.fc1")
    v = _view(page)
    assert older in v["run"] and "2.fc1" in v["layer"] and v["path"] == "/spectra"

    other = _open(browser, link, charts=3, text="Spectra of layer 2.fc1")  # the copied link, someone else's browser
    w = _view(other)
    assert older in w["run"] and "2.fc1" in w["layer"] and w["query"] == v["query"]

    # a page switch rewrites the URL for the new page, keeping the run and the layer
    other.get_by_test_id("stSidebarNav").get_by_role("link", name="Outliers").click()
    settle(other, min_charts=3, text="Outliers")
    w = _view(other)
    assert w["path"] == "/outliers" and w["query"]["run"] == older and w["query"]["layer"] == "2.fc1"
    assert w["link"].startswith(url + "/outliers?")


def test_a_hostile_link_shows_one_line_and_no_traceback(served, browser):
    url, _, newest = served
    page = _open(browser, f"{url}/walkthrough?run=..%2F..%2Fetc&layer=%3Cimg%20src%3Dx%3E&rho=abc&kappa=7&present=1",
                 charts=1)
    assert page.locator('[data-testid="stException"]').count() == 0
    alerts = [page.locator('[data-testid="stAlert"]').nth(i).inner_text()
              for i in range(page.locator('[data-testid="stAlert"]').count())]
    assert sum("This link asked for" in a for a in alerts) == 1, alerts
    assert page.locator("img[src='x']").count() == 0
    v = _view(page)
    assert newest in v["run"] and v["query"]["run"] == newest and v["query"]["rho"] != "abc"
    assert v["query"]["present"] == "1"  # presentation mode, from the link
    size = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
    assert size > 20, size
    screenshot(page, "link-hostile-presentation")
