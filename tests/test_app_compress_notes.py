"""The Compress page's notes through AppTest: the time estimate shown before compressing, the line
that announces a compression finished while the tab was away (and opens the run this tab
started), and the pages' words for metrics (no raw metric key, no "None") on a run of each task;
the Outliers page's token x channel map shows minilm-l6's massive channel 99."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from app_helpers import decode as _decode
from test_app import APP, MAIN, chart, clean, prepare_runs
from test_estimate import HOST, fake_run

ROOT = Path(__file__).resolve().parents[1]
RAW_KEYS = ("cls_cosine", "probe_acc", "@photos", "@verse", "@manual", "perplexity@", "cosine@")


def _app(runs: Path, monkeypatch, run: str | None = None):
    from streamlit.testing.v1 import AppTest

    from ui.state import RUN_KEY
    monkeypatch.setenv("OATS_RUNS_DIR", str(runs))
    at = AppTest.from_file(APP, default_timeout=600)
    if run is not None:
        at.session_state[RUN_KEY] = str(runs / run)
    return at


def _estimate_caption(at) -> str:
    found = [c.value for c in at.caption if c.value.startswith("**Time on this machine")]
    assert len(found) == 1, [c.value for c in at.caption]
    return found[0]


# ----------------------------------------------------------------------------- the estimate


def test_the_estimate_is_shown_before_compressing(tmp_path, monkeypatch):
    import socket

    from oats.runs import estimate as est
    monkeypatch.setattr(socket, "gethostname", lambda: HOST)
    fake_run(tmp_path, "m-a", total=30.0, load=4.0, evaluate_s=15.0)
    fake_run(tmp_path, "m-b", total=50.0, load=6.0, evaluate_s=25.0)
    at = _app(tmp_path, monkeypatch)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # minilm-l6 with oats, the form's defaults: from the two runs above
    start = est.WORKER_START_S
    want = start + 5.0 + 40.0 + 20.0  # medians: load 5, compression 40, evaluation 20
    text = _estimate_caption(at)
    assert text.startswith(f"**Time on this machine: about {est.duration(want)} (from 2 past runs of minilm-l6 "
                           "with oats on this machine)**")
    assert f"compressing {est.duration(40.0)}, evaluating {est.duration(20.0)}" in text
    # the tour says the same, not a fixed promise
    tour = " ".join(m.value for m in at.markdown)
    assert "10–30 s" not in tour and f"about {est.duration(want)} (from 2 past runs" in tour
    # no evaluation afterwards: shorter by it
    next(c for c in at.checkbox if c.label.startswith("Evaluate when done")).uncheck().run()
    assert _estimate_caption(at).startswith(f"**Time on this machine: about {est.duration(want - 20.0)} ")
    # SmolLM2, never compressed here: the rough figure, said to be one
    form_model = next(s for s in at.selectbox if s.label == "Model" and "other: a hub id or a local folder" in s.options)
    form_model.set_value("smollm2-135m").run()
    text = _estimate_caption(at)
    assert ("(no past run of smollm2-135m with oats on this machine: a rough figure; the decomposition from its "
            "matrix shapes)") in text
    e = est.estimate("smollm2-135m", "oats", __import__("oats").OatsConfig(), [], task="causal-lm", evaluate=False)
    assert f"about {est.duration(e.seconds)} " in text


# ----------------------------------------------------------------------------- finished jobs


@pytest.fixture
def finished_job(tmp_path):
    """A compression the app's runner finished a minute ago, into a run folder under tmp_path."""
    from oats.runner.jobs import RUNNER, Job
    from oats.runner.request import CompressRequest
    folder = fake_run(tmp_path, "minilm-l6-finished", evaluate_s=None)
    job = Job(CompressRequest(model="minilm-l6"), folder)
    job._update(status="done", stage="done", done=6, total=6, finished=time.time() - 60,
                message="compressed 6 blocks in 30 s")
    key = str(folder.resolve())
    RUNNER._jobs[key] = job
    yield folder
    RUNNER._jobs.pop(key, None)


def test_a_compression_finished_elsewhere_is_announced_and_opens(tmp_path, monkeypatch, finished_job):
    from oats.runner.jobs import RUNNER, Job
    from oats.runner.request import CompressRequest
    from ui.state import RUN_KEY
    fake_run(tmp_path, "other-run")
    # a job of this process that wrote outside the runs folder the app shows: not announced
    outside = fake_run(tmp_path / "elsewhere", "minilm-l6-outside", evaluate_s=None)
    stray = Job(CompressRequest(model="minilm-l6"), outside)
    stray._update(status="done", stage="done", done=6, total=6, finished=time.time() - 30, message="done")
    monkeypatch.setitem(RUNNER._jobs, str(outside.resolve()), stray)  # removed again after the test
    at = _app(tmp_path, monkeypatch, run="other-run")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    from oats.runner.jobs import RUNNER
    hhmm = time.strftime("%H:%M", time.localtime(RUNNER.get(str(finished_job.resolve())).state().finished))
    lines = [i.value for i in at.info if "finished at" in i.value]
    assert lines == [f"The compression of minilm-l6 finished at {hhmm} (minilm-l6-finished): open it"]
    assert at.session_state[RUN_KEY] == str(tmp_path / "other-run")  # not opened by itself: not this tab's
    at.button(key=f"open-finished-{finished_job}").click().run()
    assert at.session_state[RUN_KEY] == str(finished_job)
    assert not [i.value for i in at.info if "finished at" in i.value]  # said once


def test_this_tabs_compression_opens_after_a_reload(tmp_path, monkeypatch, finished_job):
    from ui.state import RUN_KEY
    fake_run(tmp_path, "other-run")
    at = _app(tmp_path, monkeypatch, run="other-run")
    at.query_params["job"] = finished_job.name  # the reloaded tab's URL: its session state is gone
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state[RUN_KEY] == str(finished_job)
    assert not [i.value for i in at.info if "finished at" in i.value]  # its own: opened, not announced
    assert "job" not in at.query_params  # followed to its end: a later reload keeps the user's choice


def test_a_stale_or_hostile_job_link_is_one_line(tmp_path, monkeypatch):
    fake_run(tmp_path, "other-run")
    at = _app(tmp_path, monkeypatch, run="other-run")
    at.query_params["job"] = "../../etc"
    at.run()
    assert not at.exception and not at.error
    assert [w.value for w in at.warning] == ["The link's compression '../../etc' is not a run folder name: ignored."]
    at = _app(tmp_path, monkeypatch, run="other-run")
    at.query_params["job"] = "minilm-l6-gone"
    at.run()
    assert not at.exception and not at.error
    assert any("is not running in this app" in c.value for c in at.caption)


# ----------------------------------------------------------------------------- words, not keys


def _evaluation(task: str) -> dict:
    """An evaluation.json's results with the keys the task's evaluation writes."""
    from oats import corpora
    metric, extra = {"encoder": ("cosine", "spearman"), "vision": ("cls_cosine", "probe_acc"),
                     "causal-lm": ("perplexity", "nll")}[task]
    doms = corpora.domains("images" if task == "vision" else "text")
    out = {}
    for i, mode in enumerate(("dense", "both", "sparse", "lowrank")):
        v = 1.0 / (1 + i)
        out[mode] = {metric: v, **{f"{metric}@{d}": v for d in doms}, extra: v / 2}
    return out


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory):
    """The app test's runs plus small dinov2-small and smollm2-135m runs (test_browser's), each
    with an evaluation.json holding its task's metric keys."""
    from test_browser import prepare_browser_runs

    from oats.runs.evaluations import save_evaluation
    root = prepare_browser_runs(tmp_path_factory.getbasetemp() / "app-runs")
    mine = tmp_path_factory.mktemp("task-runs")
    for name, task in ((MAIN, "encoder"), ("dinov2-small-oats-small", "vision"),
                       ("smollm2-135m-oats-small", "causal-lm")):
        shutil.copytree(root / name, mine / name)
        save_evaluation(mine / name, _evaluation(task), quick=True)
    return mine


def _page_words(at) -> list[str]:
    """Every text on the page: elements, table headers and cells, chart titles, axes, names."""
    out = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader", "header"):
        out += [e.value for e in at.get(kind)]
    out += [f"{m.label} {m.value}" for m in at.metric]
    for df in at.dataframe:
        out += [str(c) for c in df.value.columns]
        # a missing cell (None, NaN) reads "None" in the table
        out += [f"None in column {col}" for col in df.value.columns if df.value[col].isna().any()]
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        lay = spec["layout"]
        out.append(lay.get("title", {}).get("text", ""))
        out += [lay[k].get("title", {}).get("text", "") for k in lay if k.startswith(("xaxis", "yaxis"))]
        out += [a.get("text", "") for a in lay.get("annotations", [])]
        out += [str(t.get("name", "")) for t in spec["data"]]
    return out


@pytest.mark.integration
@pytest.mark.parametrize("run", [MAIN, "dinov2-small-oats-small", "smollm2-135m-oats-small"])
def test_no_raw_metric_key_or_none_on_the_pages(task_runs, monkeypatch, run):
    at = _app(task_runs, monkeypatch, run=run)
    at.run()
    clean(at)
    for page in (None, "pages/outliers.py", "pages/error_budget.py"):
        if page is not None:
            at.switch_page(page)
            at.run()
            clean(at)
        if page == "pages/outliers.py":
            at.toggle(key="massive-on").set_value(True).run()
            clean(at)
        words = _page_words(at)
        assert words, page
        bad = [w for w in words if any(k in w for k in RAW_KEYS) or "None" in w.split()]
        assert not bad, (page, bad[:5])
        if page is None:  # the evaluation's metric under its display name
            shown = {"encoder": "cosine to dense", "vision": "CLS cosine to dense", "causal-lm": "perplexity"}
            task = json.loads((task_runs / run / "manifest.json").read_text())["task"]
            assert any(w.startswith(f"Evaluation: {shown[task]}") for w in words), words[:20]


# ----------------------------------------------------------------------------- channel 99


@pytest.mark.integration
def test_minilms_massive_channel_stands_out_in_the_token_channel_map(tmp_path_factory, monkeypatch):
    root = prepare_runs(tmp_path_factory.getbasetemp() / "app-runs")
    at = _app(root, monkeypatch, run=MAIN)
    at.switch_page("pages/outliers.py")
    at.run()
    at.toggle(key="massive-on").set_value(True).run()
    clean(at)
    heat = chart(at, "Block 1 output")
    maps = [d for d in heat["data"] if d["type"] == "heatmap"]
    marks = [d for d in heat["data"] if d["type"] == "scatter"]
    assert len(maps) == 2 and len(marks) == 2
    tokens = list(_decode(maps[0]["y"]))
    for m, mark in zip(maps, marks):
        z = np.asarray(_decode(m["z"]), dtype=float)
        row = tokens.index("0:[CLS]")
        # the largest cell is [CLS], channel 99: the top of the colour scale ...
        assert np.unravel_index(np.argmax(z), z.shape) == (row, 99)
        assert m["zmax"] == pytest.approx(z.max(), abs=0.02)
        # ... which starts at the block's median: most cells sit at its dark end, not near the top
        assert m["zmin"] == pytest.approx(np.log10(np.median(10 ** z)), abs=0.05)
        assert np.mean(z <= m["zmin"]) >= 0.45 and np.mean(z >= m["zmax"] - 0.5) < 0.005
        # ... and it is circled and named
        assert list(_decode(mark["x"]))[0] == 99 and list(_decode(mark["y"]))[0] == "0:[CLS]"
    notes = [a["text"] for a in heat["layout"]["annotations"]]
    assert sum(n.startswith("ch 99: ") for n in notes) == 2
