"""A real browser walks every page of prepared runs: no exception element anywhere.

Debian's Chromium (/usr/bin/chromium, installed by .ci/run) driven by Playwright; the app
runs as ``streamlit run`` on 127.0.0.1 against a prepared runs folder (the small minilm-l6
sweep of test_app.py plus a small dinov2-small run for the ViT page). Screenshots and the
measured page-switch times go to artifacts/screenshots/ (outside git).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import skip_or_fail
from browser_helpers import SHOTS, app_page, requirements, screenshot, served_app, settle
from browser_helpers import nav as _nav, open_run as _open_run, pick as _pick

pytestmark = pytest.mark.browser

# page title in the navigation -> least number of charts it must draw for the minilm-l6 run
PAGES = {"Compress": 2, "Spectra": 3, "Outliers": 5, "Error budget": 4, "Walkthrough": 2, "Heads": 3, "Compare": 2}


def prepare_browser_runs(root: Path) -> Path:
    """The app test's runs plus one small dinov2-small run (for the ViT page)."""
    from test_app import prepare_runs
    prepare_runs(root)
    folder = root / "dinov2-small-oats-small"
    if not (folder / "manifest.json").exists():
        from oats import OatsConfig, compress_model, save_run
        from oats.data import calibration_batches
        from oats.models.zoo import load_model
        loaded = load_model("dinov2-small")
        run = compress_model(loaded.model, calibration_batches(loaded, n_samples=4),
                             OatsConfig(compression=0.5, rank_ratio=0.2, iterations=5), model_name="dinov2-small")
        save_run(run, folder, extra={"task": loaded.task})
    _small_run(root, "smollm2-135m", n_samples=4, seq_len=64)
    return root


def _small_run(root: Path, model: str, **calibration) -> None:
    """A quick OATS run of an embedded model (few calibration samples, three iterations)."""
    folder = root / f"{model}-oats-small"
    if (folder / "manifest.json").exists():
        return
    from oats import OatsConfig, compress_model, save_run
    from oats.data import calibration_batches
    from oats.models.zoo import load_model
    loaded = load_model(model)
    run = compress_model(loaded.model, calibration_batches(loaded, **calibration),
                         OatsConfig(compression=0.5, rank_ratio=loaded.default_rank_ratio, iterations=3), model_name=model)
    save_run(run, folder, extra={"task": loaded.task})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    why = requirements()
    if why:
        skip_or_fail(why)
    runs = prepare_browser_runs(tmp_path_factory.getbasetemp() / "app-runs")
    with served_app(runs, tmp_path_factory.getbasetemp() / "streamlit.log") as url:
        yield url




def _check(page, name: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    shot = screenshot(page, name)
    assert exc.count() == 0, f"{name}: {exc.first.inner_text()[:500]} (screenshot {shot})"


# navigation title -> the page's own st.title
def test_walk_every_page(server):
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    times: dict[str, dict[str, float]] = {"first visit": {}, "switch back": {}}
    with app_page(server) as page:
        # the newest run is opened by default: pick the minilm-l6 main run through the model filter
        _open_run(page, "minilm-l6", "minilm-l6-oats-c0.5-k0.25-row-it6-cal16xds0-mix")
        for title, n in PAGES.items():
            _nav(page, title)
            times["first visit"][title] = settle(page, n)
            _check(page, f"minilm-{title.lower().replace(' ', '-')}")
        # the per-block ablation, from its button
        _nav(page, "Error budget")
        settle(page, PAGES["Error budget"])
        page.get_by_role("button", name="Measure").click()
        settle(page, PAGES["Error budget"] + 1, text="Per-block ablation: cosine")
        _check(page, "minilm-error-budget-ablation")
        for title, n in PAGES.items():  # everything cached now: this is the switch time
            _nav(page, title)
            times["switch back"][title] = settle(page, n)
            _check(page, f"minilm-{title.lower().replace(' ', '-')}-again")
        assert page.locator('[data-testid="stSidebarNav"] a', has_text="ViT attention").count() == 1
        _pick(page, "Model", "dinov2-small")
        _nav(page, "ViT attention")
        times["first visit"]["ViT attention"] = settle(page, 1)
        _check(page, "dinov2-vit-attention")
        _nav(page, "Spectra")
        settle(page, PAGES["Spectra"])
        _check(page, "dinov2-spectra")
        _nav(page, "Heads")
        times["first visit"]["Heads (dinov2-small)"] = settle(page, PAGES["Heads"])
        _check(page, "dinov2-heads")
    (SHOTS / "timings.json").write_text(json.dumps(times, indent=1))
    print("\nbrowser page times (s):", json.dumps({k: {p: round(v, 2) for p, v in d.items()} for k, d in times.items()}))


def _error_text(page, timeout: float = 600.0) -> str:
    """The text of the one st.error on the page (waits for it)."""
    box = page.locator('[data-testid="stAlertContentError"]')
    box.first.wait_for(timeout=timeout * 1000)
    assert box.count() == 1, [box.nth(i).inner_text() for i in range(box.count())]
    return " ".join(box.first.inner_text().split())


def _choose(page, label: str, option: str) -> None:
    """Choose ``option`` in the main pane's selectbox labelled ``label``."""
    page.locator('[data-testid="stMain"]').get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option).first.click()
    settle(page, 0)


def _type(page, label: str, text: str) -> None:
    """Type ``text`` into the main pane's text input labelled ``label`` and commit it."""
    box = page.locator('[data-testid="stMain"]').locator(f'input[aria-label="{label}"]')
    box.fill(text)
    box.press("Enter")
    settle(page, 0)


def _compress_error(page) -> str:
    """Click Compress and return the error it shows."""
    page.locator('[data-testid="stMain"] [data-testid="stBaseButton-primary"]', has_text="Compress").click()
    settle(page, 0)
    return _error_text(page)


def test_bad_input_in_the_browser(server):
    """A few cases of the bad-input table, typed into the real page: the same one line, no traceback."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with app_page(server) as page:
        _nav(page, "Compress")
        settle(page, 0)
        # 1. a misspelt preset typed as a model name
        _choose(page, "Model", "other: a hub id or a local folder")
        _type(page, "Hub id or local folder", "smolm2-135m")
        assert _compress_error(page) == ("unknown model 'smolm2-135m': did you mean 'smollm2-135m'? presets are "
                                         "smollm2-135m, minilm-l6, dinov2-small")
        _check(page, "bad-input-model-name")
        # 2. an N:M pattern with N >= M (the model typo fixed: a preset again)
        _choose(page, "Model", "minilm-l6")
        _choose(page, "Sparsity pattern", "N:M")
        _type(page, "N:M", "3:2")
        assert _compress_error(page) == ("sparsity pattern '3:2' is invalid: N:M needs 0 < N < M (keep N of every "
                                         "M), e.g. '2:4'")
        _check(page, "bad-input-pattern")
        # 3. an upload that is not an image, on the ViT page (needs a ViT run)
        assert page.locator('[data-testid="stSidebarNav"] a', has_text="ViT attention").count() == 1
        _pick(page, "Model", "dinov2-small")
        _nav(page, "ViT attention")
        settle(page, 1)
        page.locator('[data-testid="stMain"]').get_by_text("upload", exact=True).click()
        settle(page, 0)
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
            files=[{"name": "cat.png", "mimeType": "image/png", "buffer": b"GIF89 not an image at all"}])
        settle(page, 0)
        assert _error_text(page) == ("upload 'cat.png' is not an image that can be read (corrupt or unknown "
                                     "format): give a PNG or JPEG file")
        _check(page, "bad-input-upload")


def _toggle(page, label: str) -> None:
    """Switch on the main pane's toggle whose label starts with ``label``."""
    page.locator('[data-testid="stMain"] [data-testid="stCheckbox"]', has_text=label).first.click()


def test_heavy_tail_and_massive_activation_views(server):
    """The Spectra page's power-law views, the Outliers page's massive activations and
    intervention and the Heads page, on the minilm-l6, smollm2-135m and dinov2-small runs:
    drawn, no exception element. The seconds from the click to the drawn view go to
    artifacts/screenshots/new-views.json."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    times: dict[str, dict[str, float]] = {}
    with app_page(server) as page:
        for model, run in (("minilm-l6", "minilm-l6-oats-c0.5-k0.25-row-it6-cal16xds0-mix"),
                           ("smollm2-135m", "smollm2-135m-oats-small"), ("dinov2-small", "dinov2-small-oats-small")):
            _open_run(page, model, run)
            t = times.setdefault(model, {})
            _nav(page, "Spectra")
            t["Spectra (first visit)"] = settle(page, PAGES["Spectra"])
            _toggle(page, "Fit power laws to layer")
            t["layer ESD and fits"] = settle(page, PAGES["Spectra"] + 1, text="How to read this")
            if model != "smollm2-135m":  # the same code on 210 matrices: 17 s of make test's time
                page.get_by_role("button", name="Fit every layer").click()
                t["alpha of every layer"] = settle(page, PAGES["Spectra"] + 2, text="Does compression move α")
            _check(page, f"{model.split('-')[0]}-spectra-heavy-tail")
            _nav(page, "Outliers")
            settle(page, PAGES["Outliers"])
            _toggle(page, "Trace one input through")
            t["massive activations"] = settle(page, PAGES["Outliers"] + 2, text="Intervention on block")
            _check(page, f"{model.split('-')[0]}-outliers-massive")
            if model == "minilm-l6":
                page.get_by_role("button", name="Run the intervention").click()
                t["intervention (first)"] = settle(page, PAGES["Outliers"] + 3, text="worsens by")
                _check(page, "minilm-outliers-intervention")
            _nav(page, "Heads")
            t["heads"] = settle(page, PAGES["Heads"], text="changed most")
            _check(page, f"{model.split('-')[0]}-heads")
    (SHOTS / "new-views.json").write_text(json.dumps(times, indent=1))
    print("\nnew views, seconds from the click to the drawn view:",
          json.dumps({m: {k: round(v, 2) for k, v in d.items()} for m, d in times.items()}))


def test_remote_viewers_visit_every_page_at_once(server):
    """Three sessions at once through Streamlit's websocket protocol (benchmarks/app.py's
    RemoteViewer: the messages a browser sends, no rendering), each on the minilm-l6 run:
    every page's script finishes, with no exception element, and the sidebar's pick holds."""
    import asyncio
    import importlib.util
    from browser_helpers import ROOT
    spec = importlib.util.spec_from_file_location("bench_app", ROOT / "benchmarks" / "app.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = "minilm-l6-oats-c0.5-k0.25-row-it6-cal16xds0-mix"

    async def one() -> tuple[list[str], int, list[str]]:
        v = await bench.RemoteViewer(server).open()
        try:
            await v.pick("Model", "minilm-l6")
            await v.pick("Run", run + " ")
            done = []
            for title in PAGES:
                assert await v.visit(title) > 0
                done.append(title)
            return done, v.exceptions, v.selectboxes["Layer"][1]
        finally:
            await v.close()

    async def room():
        return await asyncio.gather(*(one() for _ in range(3)))

    for done, exceptions, layers in asyncio.run(room()):
        assert done == list(PAGES) and exceptions == 0
        assert layers[0].startswith("0.q (attn, 384×384, rank 24)"), layers[0]  # ρ 0.5, κ 0.25: this run
