"""The app against hostile run folders, paths and uploads (issue 21): every page still draws,
every refusal is one error line, and no string from a file is rendered as Markdown or HTML.

The good run is ``fixtures/old_run_v1`` (a tiny llama, seconds to load) with its model name
rewritten to a Markdown image. Its model is a local folder, and a folder can be named so: the
name ``![x](http://127.0.0.1:9/pixel.png)`` is the path ``![x](http:/127.0.0.1:9/pixel.png)``
under the working directory, so the run loads and every page shows it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from tiny_models import tiny_llama_folder

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
FIXTURE = Path(__file__).parent / "fixtures" / "old_run_v1"
PIXEL = "http://127.0.0.1:9/pixel.png"
MODEL = f"![x]({PIXEL})"
RUN = "<img src=pixel.png>[click](javascript:alert(1))"  # a run folder's own name
PAGES = ["home", "spectra", "outliers", "error_budget", "walkthrough", "heads", "vit", "compare", "deploy"]
DAMAGED = ["deep", "infinity", "list", "manifest-is-a-folder", "manifest-is-a-fifo"]
MARKDOWN = ("markdown", "caption", "error", "warning", "info", "success", "title", "header", "subheader", "exception")


def hostile_runs(base: Path) -> Path:
    """``base/runs`` with the good run (hostile model and folder names) and five damaged run
    folders; ``base`` holds the model and must be the working directory."""
    tiny_llama_folder(base / MODEL.replace("//", "/"))
    runs = base / "runs"
    good = runs / RUN
    shutil.copytree(FIXTURE, good, ignore=shutil.ignore_patterns("README.md"))
    manifest = json.loads((good / "manifest.json").read_text())
    manifest["model_name"] = MODEL
    (good / "manifest.json").write_text(json.dumps(manifest))
    for name in DAMAGED:
        (runs / name).mkdir()
    (runs / "deep" / "manifest.json").write_text("[" * 100_000)
    text = json.dumps(manifest)
    dense = f'"dense": {manifest["params"]["dense"]}'
    assert dense in text
    (runs / "infinity" / "manifest.json").write_text(text.replace(dense, '"dense": Infinity'))
    (runs / "list" / "manifest.json").write_text("[1, 2, 3]")
    (runs / "manifest-is-a-folder" / "manifest.json").mkdir()
    os.mkfifo(runs / "manifest-is-a-fifo" / "manifest.json")
    return runs


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = hostile_runs(tmp_path)
    monkeypatch.setenv("OATS_RUNS_DIR", str(folder))
    return folder


def _app(timeout: int = 600):
    from streamlit.testing.v1 import AppTest
    return AppTest.from_file(APP, default_timeout=timeout)


def _bodies(at) -> list[str]:
    """Every Markdown body and widget label or help text of the page as sent to the browser."""
    out = [e.value for kind in MARKDOWN for e in at.get(kind) if isinstance(getattr(e, "value", None), str)]
    for kind in ("selectbox", "multiselect", "text_input", "button", "checkbox", "toggle", "radio", "slider",
                 "select_slider", "number_input", "expander", "download_button", "status"):
        for w in at.get(kind):
            for attr in ("label", "help"):
                v = getattr(w.proto, attr, None)
                if isinstance(v, str):
                    out.append(v)
    return out


UNESCAPED = re.compile(r"(?<!\\)(?:!\[|<[A-Za-z/]|\]\()")
"""An image, an HTML tag or a link target that Markdown would read as markup (no backslash before it)."""


def _literal(at) -> None:
    for body in _bodies(at):
        assert not UNESCAPED.search(body), body


def _one_line_errors(at) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert all("\n" not in e.strip() for e in errors), errors
    return errors


# ----------------------------------------------------------------------------- run folders


def test_every_page_draws_beside_damaged_runs_and_shows_names_literally(runs):
    from ui.text import esc
    at = _app()
    at.run()
    assert _one_line_errors(at) == []
    # the good run is in the sidebar, its names shown as written
    run_box = [s for s in at.sidebar.selectbox if s.label == "Run"][0]
    assert run_box.value == str(runs / RUN)
    assert MODEL in [s for s in at.sidebar.selectbox if s.label == "Model"][0].options  # plain text options
    # every damaged folder: one line in the sidebar, and "damaged" in the list of saved runs
    lines = [c.value for c in at.sidebar.caption if c.value.startswith("**")]
    assert sorted(line.split("**")[1] for line in lines) == sorted(DAMAGED), lines
    assert all("\n" not in line for line in lines)
    saved = [df.value for df in at.dataframe if "blocks_done" in df.value.columns][0]
    assert dict(zip(saved["name"], saved["status"])) == {RUN: "complete", **{d: "damaged" for d in DAMAGED}}
    assert any(esc(MODEL) in c.value for c in at.caption)  # the summary names the model, escaped
    assert any(h.value == f"Summary: {esc(RUN)}" for h in at.subheader)
    _literal(at)
    for page in PAGES[1:]:
        at.switch_page(f"pages/{page}.py")
        at.run()
        assert _one_line_errors(at) == [], page
        _literal(at)
    # the ViT page says the run is no vision model, naming it literally
    at.switch_page("pages/vit.py")
    at.run()
    assert any(esc(MODEL) in i.value and MODEL not in i.value for i in at.info)


def test_a_damaged_run_picked_in_the_list_is_one_warning(runs):
    at = _app()
    at.run()
    pick = [s for s in at.selectbox if s.label == "Open a run"][0]
    for name in DAMAGED:
        pick.set_value(str(runs / name)).run()
        assert _one_line_errors(at) == []
        warnings = [w.value for w in at.warning]
        assert len(warnings) == 1 and warnings[0].startswith(name + ": "), warnings
        pick = [s for s in at.selectbox if s.label == "Open a run"][0]


def test_a_damaged_evaluation_file_is_no_evaluation(runs):
    good = runs / RUN
    (good / "evaluation.json").write_text("[" * 100_000)
    at = _app()
    at.run()
    assert _one_line_errors(at) == []
    assert any("Not evaluated yet" in c.value for c in at.caption)
    (good / "evaluation.json").unlink()
    os.mkfifo(good / "evaluation.json")  # would block a reader forever
    at.run()
    assert _one_line_errors(at) == []
    assert any("Not evaluated yet" in c.value for c in at.caption)


# ----------------------------------------------------------------------------- paths typed into the Compress page


def _compress_with(tmp_path, monkeypatch, kind: str, path: str) -> list[str]:
    from oats.runner.jobs import RUNNER
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path / "runs"))
    at = _app(timeout=600)
    at.run()
    at.radio[0].set_value(kind).run()
    label = "… or a path" if kind == "text file" else "Path to a folder"
    [t for t in at.text_input if t.label.startswith(label)][0].set_value(path).run()
    before = len(RUNNER.jobs())
    [b for b in at.button if b.label == "Compress"][0].click().run()
    errors = _one_line_errors(at)
    assert len(RUNNER.jobs()) == before  # refused before a job started
    return errors


@pytest.mark.parametrize("case", ["/dev/zero", "fifo", "folder"])
def test_a_text_path_that_is_not_a_file_is_one_line(case, tmp_path, monkeypatch):
    path = {"/dev/zero": "/dev/zero", "fifo": str(tmp_path / "pipe.txt"), "folder": str(tmp_path)}[case]
    if case == "fifo":
        os.mkfifo(path)
    (error,) = _compress_with(tmp_path, monkeypatch, "text file", path)
    what = {"/dev/zero": "a device", "fifo": "a named pipe", "folder": "a folder"}[case]
    assert error.startswith(f"'{path}' is ") and what in error and ": give the path of a UTF-8 text file" in error, error


def test_proc_as_an_image_folder_is_one_line(tmp_path, monkeypatch):
    (error,) = _compress_with(tmp_path, monkeypatch, "image folder", "/proc")
    assert "/proc" in error and ": " in error


# ----------------------------------------------------------------------------- uploads


def _png(width: int, height: int) -> bytes:
    """A black RGB PNG of any size, written row by row (never the whole image in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def vit_runs(tmp_path_factory):
    """A runs folder with one run of a tiny random ViT (a local model folder)."""
    import torch
    import transformers

    from oats import OatsConfig, compress_model
    from oats.models.zoo import load_model
    from oats.runs.folders import save_run
    base = tmp_path_factory.mktemp("hostile-vit")
    torch.manual_seed(0)
    transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4, intermediate_size=64)).save_pretrained(
        base / "vit")
    loaded = load_model(str(base / "vit"))
    batches = [{"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))}]
    run = compress_model(loaded.model, batches, OatsConfig(compression=0.5, rank_ratio=0.3, iterations=2),
                         model_name=str(base / "vit"))
    save_run(run, base / "runs" / "vit-run", extra={"task": "vision"})
    return base / "runs"


@pytest.mark.parametrize("case", ["huge", "not an image"])
def test_an_image_upload_that_cannot_be_used_is_one_line(case, vit_runs, monkeypatch):
    monkeypatch.setenv("OATS_RUNS_DIR", str(vit_runs))
    at = _app()
    at.run()
    at.switch_page("pages/vit.py")
    at.run()
    at.radio(key="vit_source").set_value("upload").run()
    name, data = {"huge": ("![x](http:9).png", _png(12000, 12000)),
                  "not an image": ("<img src=x>.png", b"GIF89a this is no picture")}[case]
    if case == "huge":
        assert len(data) < 1024**2  # small on the wire: only its pixel count is large
    at.file_uploader(key="vit_upload").set_value((name, data, "image/png")).run()
    (error,) = _one_line_errors(at)
    assert not at.get("plotly_chart")
    _literal(at)
    if case == "huge":
        assert "12000" in error and "pixel" in error, error
    else:
        assert "not an image" in error, error


# ----------------------------------------------------------------------------- in a browser


@pytest.mark.browser
def test_markdown_in_a_run_makes_the_browser_fetch_nothing(tmp_path):
    """The served app with the hostile run open: the Compress page (sidebar, run list, summary)
    and the Spectra page (whose model cannot load here: an error line quoting the name) draw,
    and the browser asks for no URL a name holds."""
    from conftest import skip_or_fail
    from browser_helpers import app_page, requirements, served_app, settle
    why = requirements()
    if why:
        skip_or_fail(why)
    runs = hostile_runs(tmp_path)  # the server's working directory is the repository: the model is not found
    asked: list[str] = []
    with served_app(runs, tmp_path / "streamlit.log") as base:
        with app_page(base) as page:
            page.on("request", lambda r: asked.append(r.url))
            page.reload()
            settle(page, 0, text="Summary:")
            main = page.locator('[data-testid="stMain"]')
            assert main.get_by_text(f"{MODEL} · oats", exact=False).count() == 1  # shown as written
            page.locator('[data-testid="stSidebarNav"] a', has_text="Spectra").first.click()
            error = page.locator('[data-testid="stAlertContentError"]')
            error.first.wait_for(timeout=600_000)
            assert MODEL in error.first.inner_text()
            assert page.locator('[data-testid="stException"]').count() == 0
            page.wait_for_timeout(1000)  # late image loads
    assert asked and all(u.startswith((base, "data:", "blob:")) for u in asked), [u for u in asked if not u.startswith((base, "data:", "blob:"))]
    fetched = [u for u in asked if "pixel.png" in u or "127.0.0.1:9/" in u or "javascript:" in u]
    assert not fetched, fetched
