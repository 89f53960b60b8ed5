"""Two users at once in a real browser: two sessions compress different models together.

Two browser contexts (two independent Streamlit sessions) on one ``streamlit run`` of the
app, with an empty runs folder: session A compresses minilm-l6, session B dinov2-small,
both with few iterations and calibration samples and no evaluation, clicked nearly at once.
The app runs one compression at a time (the other waits, "queued"); both must finish, each
page must open its own run, and each run folder must hold exactly the factors of the same
compression done here with the library. Screenshots of both pages go to
artifacts/screenshots/ (outside git).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import skip_or_fail
from browser_helpers import CHROMIUM, LAUNCH_ARGS, requirements, screenshot, served_app, settle

pytestmark = pytest.mark.browser

SESSIONS = {"A": "minilm-l6", "B": "dinov2-small"}
ITERATIONS = 4
SAMPLES = 8
TIMEOUT = 1800.0  # a hang guard, no speed asserted: both compressions, preset conversions included, on a busy 2-core machine
EVALUATE_LABEL = "Evaluate when done"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """(url, runs folder): the app on an empty runs folder and the session's preset cache."""
    why = requirements()
    if why:
        skip_or_fail(why)
    runs = tmp_path_factory.mktemp("two-sessions-runs")
    with served_app(runs, tmp_path_factory.getbasetemp() / "streamlit-two-sessions.log") as url:
        yield url, runs


def _settle(page, timeout: float = 600.0) -> None:
    settle(page, 0, timeout)


def _no_exception(page, name: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, f"{name}: {exc.first.inner_text()[:500]}"


def _fill_form(page, model: str) -> None:
    """The Compress form: ``model``, few iterations and samples, no evaluation."""
    main = page.locator('[data-testid="stMain"]')
    main.get_by_role("combobox", name="Model").click()
    page.get_by_role("option", name=model).first.click()
    _settle(page)
    for label, value in (("Iterations", ITERATIONS), ("Calibration samples", SAMPLES)):
        box = main.get_by_role("spinbutton", name=label)
        box.fill(str(value))
        box.press("Enter")
        _settle(page)
        assert box.input_value() == str(value), label
    evaluate = main.get_by_role("checkbox", name=EVALUATE_LABEL)
    if evaluate.is_checked():
        main.get_by_text(EVALUATE_LABEL).click()
        _settle(page)
    assert not evaluate.is_checked()


def _expected_request(model: str):
    from oats.config import OatsConfig
    from oats.runner.jobs import CompressRequest
    from oats.models.zoo import PRESETS
    config = OatsConfig(compression=0.5, rank_ratio=PRESETS[model].default_rank_ratio, iterations=ITERATIONS)
    return CompressRequest(model=model, config=config, calib_samples=SAMPLES, evaluate=False)


def test_two_sessions_compress_different_models_at_once(app_server):
    from playwright.sync_api import sync_playwright
    from test_two_users import assert_run_files_equal

    from oats.config import OatsConfig
    from oats.data import calibration_batches
    from oats.runs.folders import list_runs, read_manifest
    from oats.compress.pipeline import compress_model
    from oats.models.zoo import load_model

    url, runs_root = app_server
    requests = {s: _expected_request(m) for s, m in SESSIONS.items()}
    finished: dict[str, float] = {}
    waiting_seen = False
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            pages = {}
            for s, model in SESSIONS.items():
                context = browser.new_context(viewport={"width": 1440, "height": 1000})  # its own session
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=600_000)
                _settle(page)
                _fill_form(page, model)
                pages[s] = page
            buttons = {s: page.locator('[data-testid="stMain"] [data-testid="stBaseButton-primary"]',
                                       has_text="Compress") for s, page in pages.items()}
            for b in buttons.values():
                assert b.count() == 1
            t0 = time.time()
            for s in SESSIONS:  # nearly at once
                buttons[s].click()
            while len(finished) < len(SESSIONS):
                assert time.time() - t0 < TIMEOUT, f"only {sorted(finished)} finished in {TIMEOUT:.0f}s"
                for s, page in pages.items():
                    model = SESSIONS[s]
                    _no_exception(page, f"session {s}")
                    failed = page.locator('[data-testid="stAlertContentError"]', has_text="failed")
                    assert failed.count() == 0, f"session {s}: {failed.first.inner_text()}"
                    waiting_seen |= page.get_by_text("waiting for another compression").count() > 0
                    done = page.locator('[data-testid="stAlertContentSuccess"]', has_text=f"{model}: compressed")
                    if s not in finished and done.count():
                        finished[s] = time.time() - t0
                time.sleep(0.5)
            for s, page in pages.items():
                folder = requests[s].folder_name()
                _settle(page)
                # each session opened its own run (Summary of its folder), and nothing raised
                page.get_by_text(f"Summary: {folder}").first.wait_for(timeout=600_000)
                assert page.get_by_text(f"Summary: {requests['B' if s == 'A' else 'A'].folder_name()}").count() == 0
                done = page.locator('[data-testid="stAlertContentSuccess"]', has_text=f"{SESSIONS[s]}: compressed")
                assert folder in done.first.inner_text(), done.first.inner_text()
                _no_exception(page, f"session {s}")
                screenshot(page, f"two-sessions-{s}-{SESSIONS[s]}")
        finally:
            browser.close()
    assert waiting_seen, "no page showed a compression waiting for the other one"
    print(f"\ntwo sessions: finished after (s): { {SESSIONS[s]: round(t, 1) for s, t in finished.items()} }")

    # both run folders complete, each of its own model, with the factors the library computes
    listed = {r["name"]: r for r in list_runs(runs_root)}
    assert sorted(listed) == sorted(r.folder_name() for r in requests.values()), sorted(listed)
    for s, req in requests.items():
        folder = Path(runs_root) / req.folder_name()
        assert listed[folder.name]["status"] == "complete", listed[folder.name]
        m = read_manifest(folder)
        assert m["model_name"] == req.model and m["method"] == "oats" and OatsConfig(**m["config"]) == req.config
        assert m["calibration_request"]["samples"] == SAMPLES
        assert not (folder / "evaluation.json").exists()
        t = time.perf_counter()
        loaded = load_model(req.model)  # what oats.jobs._work does, here in the test process
        assert m["task"] == loaded.task
        batches = calibration_batches(loaded, n_samples=SAMPLES, source=None, seed=0)
        ref = compress_model(loaded.model, batches, req.config, method=req.method, model_name=req.model)
        assert_run_files_equal(folder, ref)
        print(f"  {req.model}: same factors as the library's own compression ({time.perf_counter() - t:.1f} s)")
