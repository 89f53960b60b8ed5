"""A real browser walks every page of prepared runs: no exception element anywhere.

Debian's Chromium (/usr/bin/chromium, installed by .ci/run) driven by Playwright; the app
runs as ``streamlit run`` on 127.0.0.1 against a prepared runs folder (the small minilm-l6
sweep of test_app.py plus a small dinov2-small run for the ViT page). Screenshots and the
measured page-switch times go to artifacts/screenshots/ (outside git).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
# page title in the navigation -> least number of charts it must draw for the minilm-l6 run
PAGES = {"Compress": 2, "Spectra": 3, "Outliers": 5, "Error budget": 4, "Walkthrough": 2, "Compare": 2}


def _requirements() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: install it with 'apt-get install -y chromium' (.ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing: pip install -e '.[dev]'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_browser_runs(root: Path) -> Path:
    """The app test's runs plus one small dinov2-small run (for the ViT page)."""
    from test_app import prepare_runs
    prepare_runs(root)
    folder = root / "dinov2-small-oats-small"
    if not (folder / "manifest.json").exists():
        from oats import OatsConfig, compress_model, save_run
        from oats.data import calibration_batches
        from oats.zoo import load_model
        loaded = load_model("dinov2-small")
        run = compress_model(loaded.model, calibration_batches(loaded, n_samples=4),
                             OatsConfig(compression=0.5, rank_ratio=0.2, iterations=5), model_name="dinov2-small")
        save_run(run, folder, extra={"task": loaded.task})
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    why = _requirements()
    if why:
        pytest.skip(why)
    runs = prepare_browser_runs(tmp_path_factory.getbasetemp() / "app-runs")
    port = _free_port()
    log = open(tmp_path_factory.getbasetemp() / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, "OATS_RUNS_DIR": str(runs)}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start: see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _settle(page, min_charts: int, timeout: float = 240.0, text: str | None = None) -> float:
    """Wait until the script has finished and ``min_charts`` Plotly charts (and ``text``, if
    given) are drawn; returns the seconds it took."""
    t0 = time.perf_counter()
    page.wait_for_timeout(300)  # let the rerun start
    deadline = time.time() + timeout
    while time.time() < deadline:
        running = page.locator('[data-testid="stApp"]').first.get_attribute("data-test-script-state") == "running"
        drawn = page.locator(".js-plotly-plot").count()
        seen = text is None or page.get_by_text(text).count() > 0
        if not running and drawn >= min_charts and seen and page.locator('[data-testid="stSpinner"]').count() == 0:
            return time.perf_counter() - t0
        page.wait_for_timeout(200)
    raise AssertionError(f"page did not settle with {min_charts} charts in {timeout:.0f}s")


def _check(page, name: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    shot = SHOTS / f"{name}.png"
    # the app scrolls inside its main pane, not the document: grow the viewport to show it all
    height = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                           " return m ? m.scrollHeight : 1000; }")
    page.set_viewport_size({"width": 1440, "height": int(min(max(height, 1000), 9000))})
    page.wait_for_timeout(800)  # charts resize
    page.screenshot(path=str(shot), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1000})
    assert exc.count() == 0, f"{name}: {exc.first.inner_text()[:500]} (screenshot {shot})"


def _nav(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()


def test_walk_every_page(server):
    from playwright.sync_api import sync_playwright
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    times: dict[str, dict[str, float]] = {"first visit": {}, "switch back": {}}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(server)
            page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=120_000)
            # the newest run is opened by default: pick the minilm-l6 main run through the model filter
            _pick(page, "Model", "minilm-l6")
            _pick(page, "Run", "minilm-l6-oats-c0.5-k0.25-row-it6-cal16xds0")
            for title, n in PAGES.items():
                _nav(page, title)
                times["first visit"][title] = _settle(page, n)
                _check(page, f"minilm-{title.lower().replace(' ', '-')}")
            # the per-block ablation, from its button
            _nav(page, "Error budget")
            _settle(page, PAGES["Error budget"])
            page.get_by_role("button", name="Measure").click()
            _settle(page, PAGES["Error budget"] + 1, text="Per-block ablation: cosine")
            _check(page, "minilm-error-budget-ablation")
            for title, n in PAGES.items():  # everything cached now: this is the switch time
                _nav(page, title)
                times["switch back"][title] = _settle(page, n)
                _check(page, f"minilm-{title.lower().replace(' ', '-')}-again")
            if page.locator('[data-testid="stSidebarNav"] a', has_text="ViT attention").count():
                _pick(page, "Model", "dinov2-small")
                _nav(page, "ViT attention")
                times["first visit"]["ViT attention"] = _settle(page, 1)
                _check(page, "dinov2-vit-attention")
                _nav(page, "Spectra")
                _settle(page, PAGES["Spectra"])
                _check(page, "dinov2-spectra")
        finally:
            browser.close()
    (SHOTS / "timings.json").write_text(json.dumps(times, indent=1))
    print("\nbrowser page times (s):", json.dumps({k: {p: round(v, 2) for p, v in d.items()} for k, d in times.items()}))


def _pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the sidebar selectbox labelled ``label``."""
    page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option).first.click()
    _settle(page, 0)
