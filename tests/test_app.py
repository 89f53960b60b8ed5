"""The Streamlit app through AppTest, on small real runs of the embedded minilm-l6.

The runs are made once per session by ``prepare_runs`` (also used by test_browser.py): a
small sweep (OATS and Wanda at two compression rates, few iterations, 16 calibration
sentences, quick evaluation), one of whose runs every page shows. The tests read the
charts' Plotly JSON and check the numbers against the run itself.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import decode as _decode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
MAIN = "minilm-l6-oats-c0.5-k0.25-row-it6-cal16xds0-mix"
DOMAIN_TITLES = {"manual": "Python manual", "code": "Python code", "verse": "Shakespeare",
                 "speeches": "State of the Union"}


# ----------------------------------------------------------------------------- prepared runs


def prepare_runs(root: Path) -> Path:
    """A runs folder with a small minilm-l6 sweep (runs + table) and one evaluated run."""
    root = Path(root)
    if (root / ".ready").exists():
        return root
    from oats.runs.folders import load_run
    from oats.runner.execute import evaluate_and_save
    from oats.runner.sweep import sweep
    sweep("minilm-l6", methods="oats,wanda", compression="0.5,0.7", iterations=6, calib_samples=16,
          quick=True, root=root)
    assert (root / MAIN / "manifest.json").exists(), sorted(p.name for p in root.iterdir())
    run = load_run(root / MAIN)
    assert evaluate_and_save(run, root / MAIN, quick=True) == ""
    (root / ".ready").write_text("ok")
    return root


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory):
    return prepare_runs(tmp_path_factory.getbasetemp() / "app-runs")


@pytest.fixture(scope="session")
def main_run(runs_dir):
    from oats.runs.folders import load_run
    return load_run(runs_dir / MAIN)


@pytest.fixture
def app(runs_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ui.state import RUN_KEY
    monkeypatch.setenv("OATS_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=600)
    at.session_state[RUN_KEY] = str(runs_dir / MAIN)
    return at


# ----------------------------------------------------------------------------- helpers


def charts(at) -> dict[str, dict]:
    """{figure title: Plotly JSON} of every chart on the page."""
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        out[spec["layout"]["title"]["text"]] = spec
    return out


def chart(at, prefix: str) -> dict:
    found = [v for k, v in charts(at).items() if k.startswith(prefix)]
    assert found, f"no chart titled {prefix!r}; have {list(charts(at))}"
    return found[0]


def trace(spec: dict, name: str) -> dict:
    for t in spec["data"]:
        if t.get("name", "").startswith(name):
            return t
    raise AssertionError(f"no trace {name!r} in {[t.get('name') for t in spec['data']]}")


def floats(v) -> np.ndarray:
    return np.asarray(_decode(v), dtype=float)


def clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def go(at, page: str):
    at.switch_page(page)
    at.run()
    clean(at)
    return at


# ----------------------------------------------------------------------------- pages


def test_every_page_has_an_empty_state(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    clean(at)
    assert any("No run yet" in i.value for i in at.info)
    for page in ("spectra", "outliers", "error_budget", "walkthrough", "compare", "deploy"):
        go(at, f"pages/{page}.py")
        assert any("No run yet" in i.value for i in at.info), page
        assert not at.get("plotly_chart"), page
    if (ROOT / "pages" / "vit.py").exists():
        go(at, "pages/vit.py")


def test_compress_page_summary(app, main_run, runs_dir):
    from oats.runs.folders import read_manifest
    from oats.runs.evaluations import read_evaluation
    app.run()
    clean(app)
    m = read_manifest(runs_dir / MAIN)
    # time per block: the manifest's numbers
    t = chart(app, "Time per block")
    assert [d["name"] for d in t["data"]] == ["input statistics (forward passes)", "decomposition"]
    np.testing.assert_allclose(floats(t["data"][1]["y"]), [b["decompose_time_s"] for b in m["blocks"]])
    assert t["layout"]["yaxis"]["title"]["text"] == "time (s)"
    # evaluation: dense / both / sparse / lowrank, the saved values
    ev = read_evaluation(runs_dir / MAIN)["results"]
    e = chart(app, "Evaluation: cosine")
    assert list(_decode(e["data"][0]["x"])) == ["dense", "sparse + low-rank", "sparse only", "low-rank only"]
    np.testing.assert_allclose(floats(e["data"][0]["y"]), [ev[k]["cosine"] for k in ("dense", "both", "sparse", "lowrank")])
    assert ev["dense"]["cosine"] == pytest.approx(1.0) and ev["both"]["cosine"] > ev["sparse"]["cosine"]
    assert e["layout"]["title"]["subtitle"]["text"].startswith("mean over the domains, on held-out text of 4 domains")
    # ... and on each domain's held-out part: a group per domain, a bar per variant, the saved values
    d = chart(app, "Evaluation per domain: cosine")
    assert [t["name"] for t in d["data"]] == ["dense", "sparse + low-rank", "sparse only", "low-rank only"]
    assert list(_decode(d["data"][1]["x"])) == list(DOMAIN_TITLES.values())
    np.testing.assert_allclose(floats(d["data"][1]["y"]), [ev["both"][f"cosine@{k}"] for k in DOMAIN_TITLES])
    assert "Python manual, Python code, Shakespeare, State of the Union" in d["layout"]["title"]["subtitle"]["text"]
    # the table: the mean, then a column per domain, then the other metric
    table = [df.value for df in app.dataframe if "variant" in df.value.columns][0]
    assert list(table.columns) == ["variant", "mode", "cosine to dense (mean)",
                                   *(f"cosine to dense · {t}" for t in DOMAIN_TITLES.values()), "Spearman"]
    both = table[table["mode"] == "both"].iloc[0]
    assert both["cosine to dense · Shakespeare"] == pytest.approx(ev["both"]["cosine@verse"])
    assert any("measured on held-out text of 4 domains" in c.value for c in app.caption)
    metrics = {mt.label: mt.value for mt in app.metric}
    assert metrics["… after compression"] == f"{main_run.params_kept / 1e6:.2f} M"
    assert metrics["Block-linear parameters, dense"] == f"{main_run.params_dense / 1e6:.2f} M"
    # the saved runs table lists the sweep's four runs; every table has its CSV button
    names = [n for n in app.dataframe[0].value["name"] if n.startswith("minilm-l6")]
    assert MAIN in names and len(names) == 4
    assert len([b for b in app.get("download_button") if b.label.endswith(".csv")]) == len(app.dataframe)


def test_compress_form_rejects_bad_settings(app):
    app.run()
    app.selectbox[0].set_value("minilm-l6")
    sb = [s for s in app.selectbox if s.label == "Sparsity pattern"][0]
    sb.set_value("N:M").run()
    [t for t in app.text_input if t.label == "N:M"][0].set_value("3:2").run()
    [b for b in app.button if b.label == "Compress"][0].click().run()
    assert not app.exception
    assert [e.value for e in app.error] == ["sparsity pattern '3:2' is invalid: N:M needs 0 < N < M (keep N of every M), e.g. '2:4'"]
    app.radio[0].set_value("text file").run()
    [t for t in app.text_input if t.label.startswith("… or a path")][0].set_value("/no/such/file.txt").run()
    [t for t in app.text_input if t.label == "N:M"][0].set_value("2:8").run()
    [b for b in app.button if b.label == "Compress"][0].click().run()
    assert not app.exception
    assert [e.value for e in app.error] == ["text file '/no/such/file.txt' does not exist: check the path"]


def test_compress_runs_in_the_background_and_opens_the_run(tmp_path, monkeypatch):
    """The acceptance path, small: compress minilm-l6 from the page, watch it, get the run."""
    from streamlit.testing.v1 import AppTest

    from ui.state import RUN_KEY
    from oats.runs.folders import read_manifest
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.selectbox[0].set_value("minilm-l6")
    at.number_input[0].set_value(2)      # iterations
    at.number_input[1].set_value(8)      # calibration samples
    at.checkbox[0].uncheck()             # no evaluation: keep the test short
    [b for b in at.button if b.label == "Compress"][0].click().run()
    clean(at)
    seen_progress = False
    for _ in range(600):
        if at.session_state[RUN_KEY] if RUN_KEY in at.session_state else None:
            break
        seen_progress |= bool(at.get("progress")) or any("minilm-l6" in e.label for e in at.expander)
        time.sleep(0.5)
        at.run()
        clean(at)
    folder = Path(at.session_state[RUN_KEY])
    assert seen_progress
    m = read_manifest(folder)
    assert m["complete"] and m["config"]["iterations"] == 2 and m["calibration_request"]["samples"] == 8
    assert folder.name == "minilm-l6-oats-c0.5-k0.25-row-it2-cal8xds0-mix"
    assert any("minilm-l6" in s.value and "compressed 6 blocks" in s.value for s in at.success)
    assert chart(at, "Time per block")


def test_spectra_page(app, main_run):
    app.run()
    go(app, "pages/spectra.py")
    q = main_run.layers[0].qualname
    sp = chart(app, f"Spectra of layer {q}")
    assert [t["name"].split(":")[0] for t in sp["data"]] == ["W (weight)", "W D (scaled weight)",
                                                             "W D − S (what the SVD sees)", "L (low-rank term)"]
    w = main_run.factors(q)["weight"]
    np.testing.assert_allclose(floats(trace(sp, "W (weight)")["y"]), torch.linalg.svdvals(w.double()).numpy(),
                               rtol=1e-5)
    assert len(floats(trace(sp, "L (low-rank term)")["y"])) == main_run.layer(q).rank
    assert sp["layout"]["yaxis"]["type"] == "log" and "singular value" in sp["layout"]["yaxis"]["title"]["text"]
    assert [s["x0"] for s in sp["layout"]["shapes"]] == [main_run.layer(q).rank]
    ov = chart(app, "Normalised spectra of W D")
    assert list(_decode(ov["data"][0]["y"])) == [r.qualname for r in main_run.layers]
    z = floats(ov["data"][0]["z"])
    assert z.shape == (len(main_run.layers), 128) and np.allclose(z[:, 0], 0)
    ranks = chart(app, "Effective and stable rank")
    np.testing.assert_allclose(floats(trace(ranks, "chosen rank r")["y"]), [r.rank for r in main_run.layers])
    # another layer: the chart follows, and the choice carries over to the other pages
    app.selectbox(key="layer_pick").set_value("3.fc2").run()
    clean(app)
    sp2 = chart(app, "Spectra of layer 3.fc2")
    assert [s["x0"] for s in sp2["layout"]["shapes"]] == [main_run.layer("3.fc2").rank]
    go(app, "pages/outliers.py")
    assert chart(app, "Layer 3.fc2: per input channel")
    go(app, "pages/walkthrough.py")
    assert app.selectbox(key="layer_pick").value == "3.fc2"


def _flagged(run, threshold):
    """Outlier counts per distinct input, from the raw statistics (grouped here, not by the page),
    each channel judged by the one rule the project has (``outliers.outliers``)."""
    from oats.explain import outliers
    counts, seen = [], {}
    for r in run.layers:
        v = run.second_moments[r.qualname].double()
        key = (r.block, len(v))
        if key in seen and torch.equal(seen[key], v):
            continue
        seen[key] = v
        counts.append(int(outliers.outliers(outliers.outlier_ratio(v.numpy()), threshold).sum()))
    return counts


def test_outliers_page(app, main_run):
    app.run()
    go(app, "pages/outliers.py")
    heat = chart(app, "Input second moments, 384-channel inputs")
    assert list(_decode(heat["data"][0]["y"]))[:3] == ["0.q,k,v", "0.o", "0.fc1"]
    z = floats(heat["data"][0]["z"])
    np.testing.assert_allclose(z[0], np.log10(main_run.second_moments["0.q"].double().numpy()), rtol=1e-6)
    assert "log" in heat["data"][0]["colorbar"]["title"]["text"]
    counts = chart(app, "Outlier channels per layer input")
    got = sum(floats(t["y"]).sum() for t in counts["data"])
    assert got == sum(_flagged(main_run, 5.0)) > 0
    # the rule: RMS over the median RMS, the median of an even count the mean of the two middle
    # values (torch.median takes the lower: rms 9 against 2 would pass 4x, against 2.5 it does not)
    from oats.explain import outliers
    np.testing.assert_allclose(outliers.outlier_ratio([1.0, 4.0, 9.0, 81.0]), [0.4, 0.8, 1.2, 3.6])
    assert outliers.outliers(outliers.outlier_ratio([1.0, 4.0, 9.0, 81.0]), 3.5).tolist() == [False] * 3 + [True]
    assert not outliers.outliers(outliers.outlier_ratio([1.0, 4.0, 9.0, 81.0]), 4.0).any()
    # the layer view counts with the same rule as the table: each layer's metric is its input's row
    mom = outliers.second_moments_by_input(main_run)
    for row, quals in zip(outliers.outlier_table(mom, 5.0), mom.qualnames):
        assert {outliers.column_shares(main_run, q).summary(5.0)["outlier_channels"] for q in quals} == {row["outliers"]}
    app.slider(key="outlier-threshold").set_value(10.0).run()
    clean(app)
    counts = chart(app, "Outlier channels per layer input")
    got10 = sum(floats(t["y"]).sum() for t in counts["data"])
    assert got10 == sum(_flagged(main_run, 10.0)) < got
    assert "10× median" in counts["layout"]["yaxis"]["title"]["text"]
    col = chart(app, f"Layer {main_run.layers[0].qualname}: per input channel")
    share = floats(trace(col, "sparse term")["y"])
    assert ((share >= 0) & (share <= 1)).all() and len(share) == main_run.layers[0].shape[1]
    mask = chart(app, f"Sparse mask of {main_run.layers[0].qualname}")
    r0 = main_run.layers[0]
    assert floats(mask["data"][0]["z"]).mean() == pytest.approx(r0.nnz / (r0.shape[0] * r0.shape[1]), rel=1e-6)


def test_error_budget_page(app, main_run):
    app.run()
    go(app, "pages/error_budget.py")
    b = chart(app, "Scaled error per layer")
    np.testing.assert_allclose(floats(trace(b, "sparse + low-rank")["y"]), [r.scaled_error for r in main_run.layers],
                               rtol=1e-3)
    assert (floats(trace(b, "sparse term only")["y"]) > floats(trace(b, "sparse + low-rank")["y"])).all()
    e = chart(app, "Where the scaled weight's energy goes")
    total = sum(floats(t["y"]) for t in e["data"])
    np.testing.assert_allclose(total, 1.0, atol=1e-9)
    d = chart(app, "Output error along depth")
    np.testing.assert_allclose(floats(d["data"][0]["y"]), [blk.output_error for blk in main_run.blocks])
    c = chart(app, "Convergence of alternating thresholding")
    assert len(c["data"]) == len(main_run.layers)
    np.testing.assert_allclose(floats(c["data"][0]["y"]), main_run.layers[0].history["error"])
    # ablation of block 0: both bars below the compressed model's cosine
    assert any("No block measured yet" in i.value for i in app.info)
    [bt for bt in app.button if bt.label == "Measure"][0].click().run()
    clean(app)
    a = chart(app, "Per-block ablation: cosine")
    dense, compressed = (s["y0"] for s in a["layout"]["shapes"])  # the two reference lines
    assert dense == pytest.approx(1.0) and compressed < dense
    assert [t["name"] for t in a["data"]] == ["one block with its low-rank term off", "one block with its sparse term off"]
    for t in a["data"]:
        (v,) = floats(t["y"])
        assert v < compressed  # either term of one block matters
    assert "higher is better" in a["layout"]["yaxis"]["title"]["text"]


def test_walkthrough_page(app, main_run):
    from oats.core.decompose import rank_budget
    app.run()
    go(app, "pages/walkthrough.py")
    q = main_run.layers[0].qualname
    h = chart(app, "Iteration")
    assert len(h["data"]) == 3 and all(t["type"] == "heatmap" for t in h["data"])
    obj = chart(app, "Objective per iteration")
    err = floats(obj["data"][0]["y"])
    metrics = {m.label: m.value for m in app.metric}
    assert int(metrics["Iterations run"]) == len(err) and metrics["Final scaled error"] == f"{err[-1]:.4f}"
    assert int(metrics["Rank r"]) == rank_budget(384, 384, main_run.config) == main_run.layer(q).rank
    assert (np.diff(err) <= 1e-9).all()  # the objective never rises
    app.slider(key=f"wt-kappa-{app.session_state['run_path']}").set_value(0.5).run()
    clean(app)
    metrics = {m.label: m.value for m in app.metric}
    assert int(metrics["Rank r"]) == rank_budget(384, 384, main_run.config.replace(rank_ratio=0.5)) > main_run.layer(q).rank
    app.select_slider[0].set_value(1).run()
    clean(app)
    assert chart(app, "Iteration 1 ")


def test_walkthrough_at_kappa_zero_says_one_iteration(app, main_run):
    """κ = 0 is one hard threshold: the page says so in a sentence instead of a one-point objective
    chart, and the missing iteration slider is explained."""
    app.run()
    go(app, "pages/walkthrough.py")
    app.slider(key=f"wt-kappa-{app.session_state['run_path']}").set_value(0.0).run()
    clean(app)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Rank r"] == "0" and int(metrics["Iterations run"]) == 1
    assert any("At κ = 0 there is no low-rank term" in i.value and "one iteration" in i.value for i in app.info)
    assert not app.select_slider  # nothing to step through, and the sentence says why
    assert "Objective per iteration" not in charts(app)
    assert chart(app, "Iteration 1 ")  # the heat maps of that one step stay
    app.slider(key=f"wt-kappa-{app.session_state['run_path']}").set_value(0.25).run()
    clean(app)
    assert not any("At κ = 0" in i.value for i in app.info) and chart(app, "Objective per iteration")


@pytest.fixture(scope="session")
def hassle_run(runs_dir):
    """A small HASSLE-free run of minilm-l6 (32 calibration sentences: with fewer, the refitted
    rank-0 fallback wins on every layer and there is no alternation to replay) beside the sweep's runs."""
    from oats import OatsConfig
    from oats.runner.execute import execute
    from oats.runner.request import CompressRequest
    request = CompressRequest("minilm-l6", OatsConfig(compression=0.5, rank_ratio=0.25), method="hassle",
                              calib_samples=32, evaluate=False)
    return execute(request, runs_dir.parent / "hassle-runs" / request.folder_name()).folder


def test_walkthrough_replays_a_gram_fitted_run(hassle_run, monkeypatch):
    """The Walkthrough of a HASSLE-free run recomputes the layer's Gram and steps through the
    alternations on the output-error objective, ending where the saved run ended."""
    from streamlit.testing.v1 import AppTest

    from oats.runs.folders import load_run
    from ui.state import RUN_KEY
    run = load_run(hassle_run)
    q = next(r.qualname for r in run.layers if r.block == 2 and r.rank > 0)  # through two compressed blocks
    rec = run.layer(q)
    monkeypatch.setenv("OATS_RUNS_DIR", str(hassle_run.parent))
    app = AppTest.from_file(APP, default_timeout=600)
    app.session_state[RUN_KEY] = str(hassle_run)
    app.run()
    go(app, "pages/walkthrough.py")
    app.selectbox(key="layer_pick").set_value(q).run()
    clean(app)
    assert any("HASSLE-free alternates" in m.value for m in app.markdown)
    metrics = {m.label: m.value for m in app.metric}
    obj = chart(app, "Objective per iteration")
    out = floats(trace(obj, "layer output error")["y"])
    from oats.methods.hassle import ALTERNATIONS
    assert int(metrics["Alternations run"]) == len(out) == ALTERNATIONS
    assert metrics["Kept output error"] == f"{out.min():.4f}"
    assert out.min() == pytest.approx(rec.history["output_error"][-1], rel=1e-3)
    assert floats(trace(obj, "kept")["y"])[0] == out.min()
    assert len(app.select_slider[0].options) == ALTERNATIONS
    assert chart(app, f"Alternation {ALTERNATIONS} (scaled space")


def test_heads_page(app, main_run):
    """Every head of a layer in four variants, and the distances the page charts match a direct
    computation on the run."""
    from oats.data import evaluation_sentences
    from oats.explain import heads
    app.run()
    go(app, "pages/heads.py")
    text = evaluation_sentences()[0]
    assert app.text_input(key="heads_text").value == text
    view = heads.explain_heads(main_run, text=text)
    grid = chart(app, "Layer 3: every head")
    assert len(grid["data"]) == 4 * 12  # minilm-l6: 12 heads, four variants
    np.testing.assert_allclose(floats(grid["data"][12]["z"]), view.maps["both"][3][0], atol=1e-5)
    change = chart(app, "How far each head moved")
    np.testing.assert_allclose(floats(change["data"][0]["z"]), view.distance["both"], atol=1e-5)
    assert any(heads.summary(view)[:60] in m.value for m in app.markdown)
    app.text_input(key="heads_text").set_value("The river froze early that winter.").run()
    clean(app)
    other = heads.explain_heads(main_run, text="The river froze early that winter.")
    assert len(other.tokens) != len(view.tokens)
    np.testing.assert_allclose(floats(chart(app, "How far each head moved")["data"][1]["z"]),
                               other.distance["sparse"], atol=1e-5)
    # Section 5 for text: rollout at once, integrated gradients on the button, complete within captum's delta
    tokens = chart(app, "Which tokens each variant relies on")
    assert len(tokens["data"]) == 1 and len(tokens["data"][0]["x"]) == len(other.tokens)
    app.button(key="heads_ig_go").click().run()
    clean(app)
    tokens = chart(app, "Which tokens each variant relies on")
    assert len(tokens["data"]) == 3
    complete = next(d.value for d in app.dataframe if "captum delta" in d.value.columns)
    assert list(complete["model"]) == ["dense", "compressed (S + L)", "sparse-only", "low-rank-only"]
    np.testing.assert_allclose(complete["sum of attributions"] - (complete["f(text)"] - complete["f(baseline)"]),
                               complete["captum delta"], atol=1e-4)
    assert (complete["captum delta"].abs() < 0.1 * (complete["f(text)"] - complete["f(baseline)"]).abs() + 1e-3).all()
    # the page took the steps completeness needed: the slider's 16 at least, more only where 16 missed it
    from oats.explain import text as text_explain
    steps = dict(zip(complete["model"], complete["steps"]))
    assert all(16 <= n <= text_explain.IG_MAX_STEPS for n in steps.values())
    at16 = text_explain.explain_text(main_run, "The river froze early that winter.",
                                     app.text_input(key="heads_second").value, steps=16)
    short = {view.labels[m] for m in text_explain.incomplete(at16)}
    assert {m for m, n in steps.items() if n > 16} == short
    assert not [w for w in app.warning if "miss completeness" in w.value]
    overlap = next(d.value for d in app.dataframe if "topk_iou" in d.value.columns)
    assert len(overlap) == 3 * 6  # three kinds of map, six pairs of models
    app.text_input(key="heads_text").set_value("   ").run()
    assert [e.value for e in app.error] == ["type a text to look at (one or two sentences)"]


def test_guided_tour_links_every_step_to_its_page(app):
    """The first page's ten-minute tour: one link per step, to pages the app registers, and
    every main figure has its "How to read this"."""
    app.run()
    clean(app)
    links = app.get("page_link")
    assert [json.loads(json.dumps(l.proto.label)) for l in links][:6] == \
        ["1. Compress", "2. Spectra", "3. Outliers", "4. Error budget", "5. Walkthrough", "6. Heads"]
    pages = [l.proto.page for l in links][:6]
    from ui.navigation import PAGES  # what app.py registers, with each page's address
    registered = {"" if p.default else (p.url_path or Path(p.file).stem) for p in PAGES}
    assert set(pages) <= registered, pages
    assert pages[3] == "errors"  # pages/error_budget.py keeps its old address: links and bookmarks still work
    for page in ("pages/error_budget.py", "pages/walkthrough.py", "pages/compare.py", "pages/heads.py"):
        go(app, page)
        assert "How to read this" in [e.label for e in app.expander], page


def test_compare_page(app, runs_dir):
    from oats.runner.sweep import load_results
    app.run()
    go(app, "pages/compare.py")
    s = chart(app, "cosine to dense against compression rate")
    names = {t["name"] for t in s["data"]}
    assert {"oats · both", "oats · sparse", "oats · lowrank", "wanda · both", "dense"} <= names
    rows = load_results(runs_dir / "sweeps" / "minilm-l6")
    want = sorted((r["compression"], r["cosine"]) for r in rows if r["method"] == "wanda" and r["mode"] == "both")
    t = trace(s, "wanda · both")
    assert list(zip(floats(t["x"]), floats(t["y"]))) == want
    assert "higher is better" in s["layout"]["yaxis"]["title"]["text"]
    assert s["layout"]["title"]["subtitle"]["text"].startswith("mean over the domains, on held-out text of 4 domains")
    # one domain: the same chart on that domain's values, and its subtitle names it
    app.selectbox(key="sweep-domain").set_value("verse").run()
    clean(app)
    s = chart(app, "cosine to dense against compression rate")
    assert s["layout"]["title"]["subtitle"]["text"] == "on the held-out part of Shakespeare"
    want = sorted((r["compression"], r["cosine@verse"]) for r in rows if r["method"] == "wanda" and r["mode"] == "both")
    t = trace(s, "wanda · both")
    assert list(zip(floats(t["x"]), floats(t["y"]))) == want
    # the methods ranked per domain at ρ = 0.5: a column per domain, the best in bold, its rank
    ranked = [m.value for m in app.markdown if m.value.startswith("| method | rank ratio | cosine to dense (mean) |")]
    assert len(ranked) == 1
    at_half = {(r["method"], r["mode"]): r for r in rows if r["compression"] == 0.5}
    best = max(("oats", "wanda"), key=lambda m: at_half[(m, "both")]["cosine@verse"])
    line = [l for l in ranked[0].splitlines() if l.startswith(f"| {best} |")][0]
    assert line.split(" | ")[5] == f"**{at_half[(best, 'both')]['cosine@verse']:.4g} (#1)**"
    assert ranked[0].splitlines()[0].endswith(" | ".join(DOMAIN_TITLES.values()) + " |")
    lay = chart(app, "Per-layer error, run by run")
    assert len(lay["data"]) == 4  # the four runs of the selected run's model
    main = trace(lay, MAIN)
    from oats.runs.folders import read_manifest
    np.testing.assert_allclose(floats(main["y"]), [l["scaled_error"] for l in read_manifest(runs_dir / MAIN)["layers"]])
    # the rank ratio each method really used: Wanda runs spend nothing on a low-rank term
    compared = [df for df in app.dataframe if "median_scaled_error" in df.value.columns][0].value
    assert {(r.method, r.rank_ratio) for r in compared.itertuples()} == {("oats", 0.25), ("wanda", 0.0)}
    # every run's compressed model on each domain beside the mean (the sweep's runs from the sweep's table)
    assert [f"cosine to dense · {t}" for t in DOMAIN_TITLES.values()] == [c for c in compared.columns
                                                                          if c.startswith("cosine to dense · ")]
    by_run = {r["run"]: r for r in rows if r["mode"] == "both"}
    for r in compared.to_dict("records"):
        assert r["cosine to dense (compressed, mean)"] == pytest.approx(by_run[r["run"]]["cosine"])
        assert r["cosine to dense · Python code"] == pytest.approx(by_run[r["run"]]["cosine@code"])
    # and ranked per domain
    runs_ranked = [m.value for m in app.markdown if m.value.startswith("| run | method | cosine to dense (mean) |")]
    assert len(runs_ranked) == 1 and len(runs_ranked[0].splitlines()) == 2 + 4
    assert sum(l.count("(#1)**") for l in runs_ranked[0].splitlines()) >= 5  # a best per column, in bold


def _sweep_rows(per_domain: bool) -> list[dict]:
    """A hand-made sweep table: oats best on the mean and on verse, wanda on the manual, code, speeches."""
    values = {"oats": (0.80, 0.70, 0.99, 0.75), "wanda": (0.85, 0.80, 0.60, 0.80)}
    rows = []
    for method, v in values.items():
        row = {"model": "minilm-l6", "method": method, "compression": 0.5, "rank_ratio": 0.25 if method == "oats" else 0.0,
               "sparsity": "row", "allocation": "uniform", "mode": "both", "cosine": float(np.mean(v)),
               "spearman": 0.9, "compress_time_s": 1.0, "eval_time_s": 1.0, "run": f"r-{method}"}
        if per_domain:
            row.update({f"cosine@{d}": x for d, x in zip(DOMAIN_TITLES, v)})
        rows.append(row)
    return rows


def test_compare_page_says_when_the_best_method_differs_between_domains(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from oats.runner.sweep import write_results
    write_results(tmp_path / "sweeps" / "minilm-l6", _sweep_rows(True), meta={"evaluation": {"domains": list(DOMAIN_TITLES)}})
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=600)
    at.switch_page("pages/compare.py")
    at.run()
    clean(at)
    (ranked,) = [m.value for m in at.markdown if m.value.startswith("| method |")]
    assert ranked.splitlines()[2] == "| oats | 0.25 | **0.81 (#1)** | 0.8 (#2) | 0.7 (#2) | **0.99 (#1)** | 0.75 (#2) |"
    assert [i.value for i in at.info if "differs" in i.value] == [
        "The best method by cosine to dense differs between domains: wanda on Python manual, Python code and State of the "
        "Union; oats on Shakespeare."]
    assert {o for o in at.selectbox(key="sweep-domain").options} >= {"Shakespeare (held-out part)"}


def test_compare_page_shows_an_old_sweep_with_the_mean_only(tmp_path, monkeypatch):
    """A sweep made before domains: its means, labelled with its text, no domain box, no ranking per domain."""
    from streamlit.testing.v1 import AppTest

    from oats.runner.sweep import write_results
    old_text = "built-in evaluation split (stdlib prose, disjoint from calibration)"
    write_results(tmp_path / "sweeps" / "minilm-l6", _sweep_rows(False), meta={"evaluation": {"text": old_text}})
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=600)
    at.switch_page("pages/compare.py")
    at.run()
    clean(at)
    s = chart(at, "cosine to dense against compression rate")
    assert s["layout"]["title"]["subtitle"]["text"] == \
        "on the Python manual's held-out split (measured before evaluation per domain)"
    assert [sb.label for sb in at.selectbox if not str(sb.key).startswith("sweep-form")] == ["Sweep", "Metric"]  # no Text box
    assert not [m for m in at.markdown if m.value.startswith("| method |")]
    assert not [i for i in at.info if "differs" in i.value]


def test_compress_page_shows_an_old_evaluation_with_the_mean_only(runs_dir, tmp_path, monkeypatch):
    """An evaluation.json written before domains (no metric@domain): the means, no domain chart or column."""
    import shutil

    from streamlit.testing.v1 import AppTest

    from oats.runs.evaluations import read_evaluation, save_evaluation
    from ui.state import RUN_KEY
    folder = tmp_path / MAIN
    shutil.copytree(runs_dir / MAIN, folder)
    ev = read_evaluation(folder)["results"]
    save_evaluation(folder, {m: {k: v for k, v in r.items() if "@" not in k} for m, r in ev.items()}, quick=True)
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=600)
    at.session_state[RUN_KEY] = str(folder)
    at.run()
    clean(at)
    e = chart(at, "Evaluation: cosine")
    np.testing.assert_allclose(floats(e["data"][0]["y"]), [ev[k]["cosine"] for k in ("dense", "both", "sparse", "lowrank")])
    assert "unrecorded text" in e["layout"]["title"]["subtitle"]["text"]
    assert "Evaluation per domain: cosine" not in charts(at)
    table = [df.value for df in at.dataframe if "variant" in df.value.columns][0]
    assert list(table.columns) == ["variant", "mode", "cosine to dense", "Spearman"]


def test_deploy_page(app, main_run, runs_dir):
    from oats.deploy.export import size_report
    go(app, "pages/deploy.py")
    sizes = size_report(main_run)
    metrics = {m.label: m for m in app.metric}
    assert metrics["Block linears, dense"].value == f"{sizes['dense'] / 1e6:.1f} MB"
    assert metrics["Sparse export, in memory"].value == f"{sizes['sparse_memory'] / 1e6:.1f} MB"
    assert metrics["Sparse export, on disk"].value == f"{sizes['sparse_disk'] / 1e6:.1f} MB"
    assert sizes["sparse_disk"] == sizes["sparse_memory"] < sizes["sparse_csr"] < sizes["dense"]
    shown = {r.form.split(",")[1].split("(")[0].strip(): r.MB for r in app.dataframe[0].value.itertuples()
             if r.form.startswith("sparse")}
    assert shown == pytest.approx({"CSR8": sizes["sparse_csr8"] / 1e6, "torch CSR in memory": sizes["sparse_csr"] / 1e6})
    code = app.code[0].value
    assert code.startswith(f"oats export {runs_dir / MAIN} --out exports/{MAIN}") and "--format folded" in code
    app.button(key="deploy-measure").click().run()
    clean(app)
    speed = app.dataframe[1].value
    assert list(speed["model"]) == ["dense", "export"]
    unit = next(c for c in speed.columns if c.startswith("sentences/s"))
    assert (speed[unit] > 0).all() and (speed["floor"] > 0).all()
    # measured can never beat the floor by much (noise aside): the floor is a real bound
    assert (speed["share of floor"] < 1.5).all()
    assert speed["× dense"].iloc[0] == pytest.approx(1.0)
    # the figures are this machine's, named; the loader's per-layer choice is shown
    from oats import resources
    assert any(c.value.startswith(f"Measured on this machine only: {resources.cpu_name()}") for c in app.caption)
    plan = app.dataframe[2].value
    assert {"shape", "layers", "chosen"} <= set(plan.columns)
    assert plan["layers"].sum() == len(main_run.modules()) and set(plan["chosen"]) <= {"csr8", "csr8-vector"}
    app.radio(key="deploy-goal").set_value("fastest").run()
    app.button(key="deploy-measure").click().run()
    clean(app)
    assert any("goal fastest" in m.value for m in app.markdown)


def test_vit_page_is_registered(app):
    app.run()
    go(app, "pages/vit.py")
    assert [t.value for t in app.title] == ["ViT attention & attribution"]


def test_pages_drawn_again_from_the_caches_are_the_same(app, capsys):
    """A page visited again (everything cached) draws the same charts and tables as its first
    visit. Not a speed test (benchmarks/app.py measures speed): the switch times are printed."""
    app.run()
    pages = ["spectra", "outliers", "error_budget", "walkthrough", "compare", "home"]

    def drawn() -> tuple:
        return ([c.proto.spec for c in app.get("plotly_chart")], [df.value.shape for df in app.dataframe],
                [t.value for t in app.title])

    first = {}
    for p in pages:  # warm every cache
        go(app, f"pages/{p}.py")
        first[p] = drawn()
        assert first[p][0], f"{p}: no chart drawn"
    times = {}
    for p in pages:
        t0 = time.perf_counter()
        go(app, f"pages/{p}.py")
        times[p] = time.perf_counter() - t0
        assert drawn() == first[p], p
    with capsys.disabled():
        print("\npage switch (AppTest, warm):", ", ".join(f"{k} {v:.2f}s" for k, v in times.items()))


def test_spectra_heavy_tail_views(app, main_run):
    from oats.explain import heavytail
    app.run()
    go(app, "pages/spectra.py")
    assert not [t for t in charts(app) if t.startswith(("Empirical spectral density", "Power-law exponent"))]
    q = main_run.layers[0].qualname
    app.toggle(key="esd-on").set_value(True).run()
    clean(app)
    esd = chart(app, f"Empirical spectral density of layer {q}")
    w = main_run.factors(q)["weight"].double()
    lam = torch.linalg.svdvals(w).numpy() ** 2
    x, d = heavytail.log_density(lam)
    t = [tr for tr in esd["data"] if tr["name"] == "ESD of W"][0]
    np.testing.assert_allclose(floats(t["x"]), x, rtol=1e-6)
    np.testing.assert_allclose(floats(t["y"]), d, rtol=1e-6)
    assert [tr["name"] for tr in esd["data"]][:2] == ["ESD of W shuffled", "ESD of W"]
    f = heavytail.fit_power_law(lam)
    titles = [a["text"] for a in esd["layout"]["annotations"]]
    assert titles[0].startswith(f"W: α = {f.alpha:.2f} ± {f.sigma:.2f}")
    assert esd["layout"]["xaxis"]["type"] == "log" and esd["layout"]["yaxis"]["type"] == "log"
    assert any("How to read this" in m.value for m in app.markdown)
    # the whole model, behind its button
    [b for b in app.button if b.label.startswith("Fit every layer")][0].click().run()
    clean(app)
    a = chart(app, "Power-law exponent α per layer")
    dense = trace(a, "W (dense)")
    assert list(_decode(dense["x"]))[0] == q
    assert floats(dense["y"])[0] == pytest.approx(f.alpha)
    comp = trace(a, "S + L (compressed)")
    f1 = main_run.factors(q)
    c = heavytail.fit_power_law(torch.linalg.svdvals(f1["sparse"].double() + f1["u"].double() @ f1["v"].double()).numpy() ** 2)
    assert floats(comp["y"])[0] == pytest.approx(c.alpha)
    assert any(i.value.startswith("**Does compression move α, and where?**") and "median Δα" in i.value for i in app.info)
    df = [d.value for d in app.dataframe if "delta_alpha" in d.value.columns][0]
    assert len(df) == len(main_run.layers)


def test_outliers_massive_activations_and_intervention(app, main_run):
    from oats.data import evaluation_sentences
    from oats.explain import activations
    app.run()
    go(app, "pages/outliers.py")
    assert "Largest activation magnitudes along depth" not in charts(app)
    app.toggle(key="massive-on").set_value(True).run()
    clean(app)
    depth = chart(app, "Largest activation magnitudes along depth")
    inp = activations.make_input(main_run, text=evaluation_sentences()[0])
    with main_run.use_mode("dense"), torch.no_grad():
        hs = main_run.model(**inp.kwargs, output_hidden_states=True).hidden_states  # BERT: block outputs
    want = [float(h[0].abs().max()) for h in hs[1:]]
    np.testing.assert_allclose(floats(trace(depth, "dense: top-1")["y"]), want, rtol=1e-5)
    assert len(floats(trace(depth, "compressed: top-1")["y"])) == len(hs) - 1
    heat = chart(app, "Block 1 output")
    z = floats(heat["data"][0]["z"])
    np.testing.assert_allclose(z, np.log10(np.maximum(hs[2][0].abs().numpy(), 1e-6)), rtol=1e-5)
    assert [d["type"] for d in heat["data"]].count("heatmap") == 2 and list(_decode(heat["data"][0]["y"]))[0] == "0:[CLS]"
    # the intervention: its cost is shown before the button; k = 1 zeroes block 1's largest input channel
    cost = [c.value for c in app.caption if c.value.startswith("Channels ")][0]
    top = int(np.argmax(hs[1][0].abs().amax(0).numpy()))
    assert cost.startswith(f"Channels {top} ") and "2 quick evaluations" in cost
    app.button(key="massive-go").click().run()
    clean(app)
    iv = chart(app, "Outlier-channel intervention: cosine")
    dense = floats(trace(iv, "dense model")["y"])
    comp = floats(trace(iv, "compressed model")["y"])
    assert dense[0] == pytest.approx(1.0) and dense[1] < 0.999 and comp[1] < comp[0]
    assert any("worsens by" in i.value for i in app.info)
    # a model loaded again has no dense reference cached, while the page's reference row is: the
    # intervention must still compare with the dense model, not with the intervened one
    from oats import evaluation
    evaluation._REFERENCES.clear()
    app.number_input(key="massive-k").set_value(2).run()
    app.button(key="massive-go").click().run()
    clean(app)
    iv = chart(app, "Outlier-channel intervention: cosine")
    assert floats(trace(iv, "dense model")["y"])[2] < 0.999
    # k = 0 changes nothing
    app.number_input(key="massive-k").set_value(0).run()
    app.button(key="massive-go").click().run()
    clean(app)
    iv = chart(app, "Outlier-channel intervention: cosine")
    np.testing.assert_allclose(floats(trace(iv, "dense model")["y"])[[0, 3]], [dense[0], dense[0]])
    np.testing.assert_allclose(floats(trace(iv, "compressed model")["y"])[[0, 3]], [comp[0], comp[0]], rtol=1e-6)
    # a text of one's own
    app.selectbox(key="massive-sample").set_value("type your own ...").run()
    app.text_input(key="massive-text").set_value("Paris is a big city.").run()
    clean(app)
    heat = chart(app, "Block 1 output")
    assert list(_decode(heat["data"][0]["y"])) == ["0:[CLS]", "1:paris", "2:is", "3:a", "4:big", "5:city", "6:.",
                                                   "7:[SEP]"]


def test_a_wanda_run_offers_no_low_rank_only_variant_and_names_no_kappa(app, runs_dir):
    """A Wanda run (rank 0) has dense and its compressed (sparse) model only, on every page; its
    summary names none of the settings Wanda ignores; the form hides them for Wanda. The OATS
    run beside it keeps all four variants and its kappa, solver and iterations."""
    from ui.state import RUN_KEY
    app.run()
    clean(app)
    cap = next(c.value for c in app.caption if " · oats · " in c.value)
    assert "κ = 0.25" in cap and "fast solver, ≤ 6 iterations" in cap
    assert any(m.value == "**Evaluation: dense vs sparse + low-rank vs sparse only vs low-rank only**"
               for m in app.markdown)
    labels = lambda: {w.label for kind in ("slider", "number_input", "selectbox") for w in app.get(kind)}
    assert {"Rank ratio κ", "Iterations", "Solver"} <= labels()
    next(s for s in app.selectbox if s.label == "Method").set_value("wanda").run()
    clean(app)
    assert not {"Rank ratio κ", "Iterations", "Solver"} & labels()
    assert any(c.label == "Evaluate when done (dense, compressed)" for c in app.checkbox)

    wanda = sorted(p.name for p in runs_dir.iterdir() if p.name.startswith("minilm-l6-wanda-c0.5"))[0]
    app.session_state[RUN_KEY] = str(runs_dir / wanda)
    app.run()
    clean(app)
    cap = next(c.value for c in app.caption if " · wanda · " in c.value)
    assert "κ" not in cap and "solver" not in cap and "iteration" not in cap
    assert any(m.value == "**Evaluation: dense vs sparse**" for m in app.markdown)
    for d in app.dataframe:
        if "variant" in d.value.columns and "mode" in d.value.columns:
            assert list(d.value["mode"]) == ["dense", "both"] and list(d.value["variant"]) == ["dense", "sparse"]
    assert list(_decode(chart(app, "Evaluation: cosine")["data"][0]["x"])) == ["dense", "sparse"]

    go(app, "pages/heads.py")
    assert len(chart(app, "Layer 3: every head")["data"]) == 2 * 12  # dense and the compressed model
    assert len(chart(app, "How far each head moved")["data"]) == 1
    assert [t["name"] for t in chart(app, "Head entropy per layer")["data"]] == ["dense", "compressed (sparse)"]
    table = next(d.value for d in app.dataframe if "js_to_dense_bits" in d.value.columns)
    assert set(table["variant"]) == {"compressed (sparse)"}
    shown = " ".join(m.value for m in app.markdown) + " ".join(c.value for c in app.caption)
    assert "low-rank-only" not in shown and "sparse-only" not in shown
    assert "compressed (sparse)" in shown

    go(app, "pages/error_budget.py")
    assert [t["name"] for t in chart(app, "Scaled error per layer")["data"]] == ["sparse term"]
    assert not any("low-rank term alone" in m.value for m in app.markdown)
    # one step per layer: no convergence chart of single points, a line saying why instead
    assert not [t for t in charts(app) if t.startswith("Convergence")]
    assert any("takes one step per layer" in c.value for c in app.caption)
