"""Every page, for a run of every registered method on minilm-l6, in Chromium.

A small run of each method (oats, wanda, sparsegpt, hassle, magnitude, lowrank and any method
registered later) is opened in the sidebar and every page of the app is visited: no page may
show an exception or an error box, and none may show "None", a raw token marker ("Ġ") or a
raw key (a snake_case identifier such as ``cls_cosine`` or a ``metric@domain`` key) in its
prose. Code blocks (commands to copy) are left out of the check: they are meant literally.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import skip_or_fail
from browser_helpers import app_page, requirements, screenshot, served_app, settle
from browser_helpers import nav as _nav, open_run as _open_run

from oats.methods import registry

pytestmark = pytest.mark.browser

MODEL = "minilm-l6"
# the pages a text model has (ViT attention is only listed for image models)
PAGES = ["Compress", "Spectra", "Outliers", "Error budget", "Walkthrough", "Heads", "Compare", "Calibration",
         "Deploy"]
RAW = [
    (re.compile(r"\bNone\b"), "None"),
    (re.compile(r"\bnan\b"), "nan"),
    (re.compile(r"Ġ|▁|##\w"), "a raw token marker"),
    # two letters or more before the underscore: x_j, d_out and λ_min are mathematics
    (re.compile(r"\b[a-z0-9]{2,}(?:_[a-z0-9]+)+\b"), "a snake_case key"),
    (re.compile(r"\b[a-z_]+@[a-z]+\b"), "a metric@domain key"),
]
# the prose of the main pane and the sidebar, without code blocks and without the run names
# (a run's folder name is the user's own and shown as it is)
PROSE_JS = """() => {
  // icons are words drawn in an icon font ("push_pin"): marked on the live page, left out below
  document.querySelectorAll('span, i').forEach(e => {
    if (getComputedStyle(e).fontFamily.includes('Material')) e.setAttribute('data-oats-icon', '1');
  });
  const parts = [];
  for (const sel of ['[data-testid="stMain"]', '[data-testid="stSidebar"]']) {
    const root = document.querySelector(sel);
    if (!root) continue;
    const copy = root.cloneNode(true);
    copy.querySelectorAll('code, pre, [data-testid="stCode"], [data-baseweb="select"], input, textarea, ' +
                          '[data-testid*="Icon"], [data-oats-icon]')
        .forEach(e => e.remove());
    copy.querySelectorAll('*').forEach(e => e.append(' '));  // cells and labels apart
    parts.push(copy.innerText);
  }
  return parts.join('\\n');
}"""


def _method_runs(root: Path) -> dict[str, str]:
    """One small run of each registered method on minilm-l6: method -> folder name."""
    from oats import OatsConfig, compress_model, save_run
    from oats.data import calibration_batches
    from oats.models.zoo import load_model
    out = {}
    for method in registry.names():
        name = f"{MODEL}-{method}-small"
        folder = root / name
        out[method] = name
        if (folder / "manifest.json").exists():
            continue
        loaded = load_model(MODEL)
        run = compress_model(loaded.model, calibration_batches(loaded, n_samples=8, seq_len=32),
                             OatsConfig(compression=0.5, iterations=3), method=method, model_name=MODEL)
        save_run(run, folder, extra={"task": loaded.task})
    return out


def raw_strings(text: str) -> list[str]:
    """What in ``text`` reads as a raw value or key rather than prose, with what it is."""
    found = []
    for pattern, what in RAW:
        found += [f"{what}: {m.group(0)!r} in ...{text[max(0, m.start() - 60):m.end() + 60]!r}..."
                  for m in pattern.finditer(text)]
    return found


def test_raw_strings_are_found():
    """The check itself: each kind of raw string is caught, prose passes."""
    assert raw_strings("The compressed model keeps 50% of the weights (rank 12, kappa 0.25).") == []
    for bad in ["value: None", "cls_cosine 0.91", "cosine@manual", "Ġmany", "5:##rou", "loss nan"]:
        assert raw_strings(bad), bad


@pytest.fixture(scope="module")
def method_server(tmp_path_factory):
    why = requirements()
    if why:
        skip_or_fail(why)
    root = tmp_path_factory.getbasetemp() / "method-runs"
    root.mkdir(exist_ok=True)
    runs = _method_runs(root)
    with served_app(root, tmp_path_factory.getbasetemp() / "streamlit-methods.log") as url:
        yield url, runs


def test_every_page_for_every_method(method_server):
    url, runs = method_server
    problems = []
    with app_page(url) as page:
        for method, run in runs.items():
            _open_run(page, MODEL, run)
            for title in PAGES:
                _nav(page, title)
                settle(page, 0)
                name = f"methods-{method}-{title.lower().replace(' ', '-')}"
                shot = screenshot(page, name)
                for sel, what in [('[data-testid="stException"]', "an exception"),
                                  ('[data-testid="stAlertContentError"]', "an error")]:
                    box = page.locator(sel)
                    if box.count():
                        problems.append(f"{method} / {title}: {what}: {box.first.inner_text()[:300]} ({shot})")
                problems += [f"{method} / {title}: {p}" for p in raw_strings(page.evaluate(PROSE_JS))]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(dict.fromkeys(problems))
