"""What the browser tests share: Chromium, a served app, waiting for a page, screenshots."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
LOGS: list[Path] = []  # the served apps' logs, newest last: a page that does not settle quotes its tail
HANG_GUARD_S = 600.0
"""How long a browser test waits for a server, a page or a job before it calls it a hang: minutes,
because a loaded two-core machine (other tests, other users) is slow, not broken. No test
asserts a speed; benchmarks/app.py measures them."""
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]


def requirements() -> str | None:
    """Why a browser test cannot run here, or None. In CI (CI=true) a missing requirement
    fails the test here instead of letting the caller skip it."""
    why = _missing()
    if why is not None:
        from conftest import skip_or_fail
        if os.environ.get("CI", "").lower() == "true":
            skip_or_fail(why)
    return why


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: install it with 'apt-get install -y chromium' (.ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing: pip install -e '.[dev]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(runs: Path, log_path: Path, with_pid: bool = False, env: dict | None = None):
    """``streamlit run app.py`` on 127.0.0.1 with OATS_RUNS_DIR=runs; yields its URL once healthy
    (with ``with_pid``: the URL and the server's process id)."""
    port = free_port()
    LOGS.append(Path(log_path))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
             "--server.fileWatcherType", "none", "--server.address", "127.0.0.1", "--server.port", str(port),
             "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env={**os.environ, "OATS_RUNS_DIR": str(runs), **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + HANG_GUARD_S
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read().strip() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"streamlit did not start: see {log_path}")
                time.sleep(0.5)
            yield (url, proc.pid) if with_pid else url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def app_page(url: str):
    """A headless Chromium page on the served app at ``url``, its sidebar drawn; closed afterwards."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=HANG_GUARD_S * 1000)
            yield page
        finally:
            browser.close()


def settle(page, min_charts: int = 0, timeout: float = HANG_GUARD_S, text: str | None = None) -> float:
    """Wait until the script has finished, no spinner is left and ``min_charts`` Plotly charts
    (and ``text``, if given) are drawn; returns the seconds it took. A finished script that
    shows an exception fails at once with its text; a timeout says what the page showed."""
    t0 = time.perf_counter()
    page.wait_for_timeout(300)  # let the rerun start
    deadline = time.time() + timeout
    errors_seen = 0
    while time.time() < deadline:
        running = page.locator('[data-testid="stApp"]').first.get_attribute("data-test-script-state") == "running"
        drawn = page.locator(".js-plotly-plot").count()
        seen = text is None or page.get_by_text(text).count() > 0
        if not running and drawn >= min_charts and seen and page.locator('[data-testid="stSpinner"]').count() == 0:
            return time.perf_counter() - t0
        exc = page.locator('[data-testid="stException"]')
        if not running and exc.count():
            raise AssertionError(f"the page shows an exception: {exc.first.inner_text()[:800]}")
        err = page.locator('[data-testid="stAlertContentError"]')
        if not running and drawn < min_charts and err.count():
            errors_seen += 1
            if errors_seen >= 10:  # two seconds of a finished script showing an error instead of its charts
                raise AssertionError(f"the page shows an error instead of {min_charts} charts: "
                                     f"{' '.join(err.first.inner_text().split())[:800]}")
        else:
            errors_seen = 0
        page.wait_for_timeout(200)
    raise AssertionError(f"page did not settle with {min_charts} charts{f' and {text!r}' if text else ''} in "
                         f"{timeout:.0f}s: {_page_state(page)}")


def _page_state(page) -> str:
    """What a page that did not settle shows: script state, charts, spinners, the main text."""
    state = page.locator('[data-testid="stApp"]').first.get_attribute("data-test-script-state")
    spinners = [page.locator('[data-testid="stSpinner"]').nth(i).inner_text()[:200]
                for i in range(page.locator('[data-testid="stSpinner"]').count())]
    main = page.locator('[data-testid="stMain"]')
    body = " ".join(main.first.inner_text().split())[:1500] if main.count() else "(no main pane)"
    tail = ""
    if LOGS and LOGS[-1].exists():
        tail = "\n".join(LOGS[-1].read_text(errors="replace").splitlines()[-40:])
    return (f"url {page.url}, script state {state!r}, {page.locator('.js-plotly-plot').count()} charts, "
            f"spinners {spinners}; main pane: {body}\nthe app's log ends:\n{tail}")


def screenshot(page, name: str) -> Path:
    """A full-page screenshot (the app scrolls inside its main pane: grow the viewport first)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{name}.png"
    height = page.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                           " return m ? m.scrollHeight : 1000; }")
    page.set_viewport_size({"width": 1440, "height": int(min(max(height, 1000), 9000))})
    page.wait_for_timeout(800)  # charts resize
    page.screenshot(path=str(shot), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1000})
    return shot


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout: float = 120.0) -> None:
    """Until a process uses under 5% of a core over a second (the app's start-up imports done)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        c0 = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - c0 < 0.05:
            return


# ----------------------------------------------------------------------------- the sidebar

HEADINGS = {"Compress": "Compress a model", "ViT attention": "ViT attention & attribution"}


def nav(page, title: str) -> None:
    """Click a page in the sidebar and wait until that page's title is drawn; a click that lands
    while the previous page is still finishing can be lost, so it is tried once more."""
    heading = page.locator('[data-testid="stMain"] h1', has_text=HEADINGS.get(title, title))
    for attempt in range(2):
        page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
        try:
            heading.first.wait_for(timeout=600_000)
            return
        except Exception:
            if attempt:
                raise


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the sidebar selectbox labelled ``label``."""
    page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option).first.click()
    settle(page, 0)


def open_run(page, model: str, run: str) -> None:
    """Pick ``run`` of ``model`` in the sidebar and check that it is the one shown: a pick made
    while the model filter's rerun is still drawing can be lost (the newest run stays)."""
    box = page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Run")
    for _ in range(3):
        pick(page, "Model", model)
        pick(page, "Run", run)
        if box.input_value().startswith(run + " "):
            return
    raise AssertionError(f"the sidebar shows {box.input_value()!r}, not the run {run}")
