"""Quality numbers beside the text they hold for: a run's evaluation.json keeps the evaluation's
settings (old files without them still read), and the app's quick evaluations (the Error
budget page's per-block ablation, the Outliers page's intervention) name their text and show
each domain's value."""

from __future__ import annotations

import json

import numpy as np
import torch
from app_helpers import decode as _decode
from test_app import (MAIN, DOMAIN_TITLES, app, chart, clean, floats, go, main_run,  # noqa: F401
                      runs_dir)

from oats.runs.evaluations import EVALUATION_FILE, clean_settings, read_evaluation, save_evaluation


def test_evaluation_json_keeps_the_settings_and_old_files_still_read(tmp_path):
    settings = {"task": "causal-lm", "quick": True, "text": "built-in evaluation parts of manual, verse",
                "windows": 2, "seq_len": 128, "tokens_scored": 254, "domains": ["manual", "verse"]}
    results = {"dense": {"perplexity": 10.0, "perplexity@manual": 8.0, "perplexity@verse": 12.5}}
    save_evaluation(tmp_path, results, quick=True, settings=settings)
    ev = read_evaluation(tmp_path)
    assert ev["settings"] == settings and ev["results"] == results and ev["quick"] is True
    # written before settings were kept: the same results, no settings
    (tmp_path / EVALUATION_FILE).write_text(json.dumps({"quick": False, "created": "2025-01-01T00:00:00",
                                                         "results": {"dense": {"cosine": 1.0}}}))
    ev = read_evaluation(tmp_path)
    assert ev["results"] == {"dense": {"cosine": 1.0}} and ev["settings"] is None
    save_evaluation(tmp_path, results, quick=False)
    assert "settings" not in json.loads((tmp_path / EVALUATION_FILE).read_text())
    assert read_evaluation(tmp_path)["settings"] is None
    # a file from someone else: settings that are not plain values are left out, never an error
    body = {"quick": True, "results": {"dense": {"cosine": 1.0}},
            "settings": {"text": "x" * 5000, "windows": 4, "nested": {"a": 1}, "domains": ["verse", 3],
                         "quick": True, "ratio": 0.5}}
    (tmp_path / EVALUATION_FILE).write_text(json.dumps(body))
    got = read_evaluation(tmp_path)["settings"]
    assert got == {"text": "x" * 1000, "windows": 4, "quick": True, "ratio": 0.5}
    for bad in ([1, 2], "text", 3, None):
        (tmp_path / EVALUATION_FILE).write_text(json.dumps({**body, "settings": bad}))
        assert read_evaluation(tmp_path)["settings"] is None
    assert clean_settings({"a": float("nan"), "b": True}) == {"b": True}


def test_a_run_evaluated_by_the_app_records_what_it_was_measured_on(runs_dir, main_run):
    from oats.evaluation import Evaluator
    ev = read_evaluation(runs_dir / MAIN)
    want = Evaluator(main_run.loaded, quick=True).settings
    assert ev["settings"] == want
    assert ev["settings"]["domains"] == list(DOMAIN_TITLES) and ev["settings"]["sentences"] > 0


def _expected_change(rows, refs, metric="cosine"):
    """% worse than the reference, higher is better: 100 (ref - v) / |ref| per domain, mean first."""
    keys = [metric] + [f"{metric}@{d}" for d in DOMAIN_TITLES]
    return np.array([[100 * (ref[k] - r[k]) / abs(ref[k]) for k in keys] for r, ref in zip(rows, refs)])


def _evaluate(run, mode):
    from oats.evaluation import evaluate_model
    with run.use_mode(mode), torch.no_grad():
        return evaluate_model(run.model, run.loaded, quick=True)


def test_the_block_ablation_names_its_text_and_shows_each_domain(app, main_run):
    from oats.evaluation import Evaluator
    from oats.explain import quality
    size = quality.size_note(Evaluator(main_run.loaded, quick=True).settings)
    app.run()
    go(app, "pages/error_budget.py")
    planned = [c.value for c in app.caption if c.value.startswith("Turn off the low-rank terms")][0]
    assert "held-out text of 4 domains" in planned and size in planned
    [bt for bt in app.button if bt.label == "Measure"][0].click().run()
    clean(app)
    a = chart(app, "Per-block ablation: cosine")
    sub = a["layout"]["title"]["subtitle"]["text"]
    assert sub == (f"mean over the domains; quick evaluation, {size}, on held-out text of "
                   + ", ".join(DOMAIN_TITLES.values()))
    assert "sentences" in size
    d = chart(app, "Per-block ablation per domain: cosine")
    assert list(_decode(d["data"][0]["x"])) == ["mean"] + list(DOMAIN_TITLES.values())
    assert list(_decode(d["data"][0]["y"])) == ["dense model", "compressed model", "block 0: low-rank term off",
                                                "block 0: sparse term off"]
    assert d["layout"]["title"]["subtitle"]["text"] == sub.removeprefix("mean over the domains; ")
    z = floats(d["data"][0]["z"])
    dense, both = _evaluate(main_run, "dense"), _evaluate(main_run, "both")
    np.testing.assert_allclose(z[:2], _expected_change([dense, both], [both, both]), rtol=1e-4, atol=1e-6)
    assert (z[0] < 0).all() and (z[2:, 0] > 0).all()  # dense better than compressed; either term of block 0 matters
    # the table: block, change, the mean, each domain by name, then the other metric
    t = next(df.value for df in app.dataframe if "change" in df.value.columns)
    assert list(t.columns) == ["block", "change", "cosine to dense (mean)"] \
        + [f"cosine to dense · {v}" for v in DOMAIN_TITLES.values()] + ["Spearman"]
    np.testing.assert_allclose(t["cosine to dense · Shakespeare"][:2], [dense["cosine@verse"], both["cosine@verse"]], rtol=1e-5)


def test_the_outlier_intervention_names_its_text_and_shows_each_domain(app, main_run):
    from oats.evaluation import Evaluator
    from oats.explain import quality
    size = quality.size_note(Evaluator(main_run.loaded, quick=True).settings)
    app.run()
    go(app, "pages/outliers.py")
    app.toggle(key="massive-on").set_value(True).run()
    clean(app)
    cost = [c.value for c in app.caption if c.value.startswith("Channels ")][0]
    assert "held-out text of 4 domains" in cost
    app.button(key="massive-go").click().run()
    clean(app)
    iv = chart(app, "Outlier-channel intervention: cosine")
    sub = iv["layout"]["title"]["subtitle"]["text"]
    assert sub == (f"mean over the domains; quick evaluation, {size}, on held-out text of "
                   + ", ".join(DOMAIN_TITLES.values()))
    d = chart(app, "Outlier-channel intervention per domain: cosine")
    rows = list(_decode(d["data"][0]["y"]))
    assert rows[:2] == ["none · dense", "none · compressed"] and len(rows) == 4
    assert rows[2].endswith(" · dense") and rows[3].endswith(" · compressed")
    z = floats(d["data"][0]["z"])
    np.testing.assert_array_equal(z[:2], 0.0)  # each model against itself without intervention
    assert np.isfinite(z).all() and (z[2:, 0] > 0).all()  # zeroing the largest channel costs both models
    assert any("(mean over the domains) worsens by" in i.value for i in app.info)
