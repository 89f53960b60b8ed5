"""The Compare page says which number to believe, and starts a small sweep on the app's runner.

The verdict sentences are checked against the data they are computed from: two real minilm-l6
runs (OATS and Wanda, from ``test_app.prepare_runs``) with hand-set evaluations, so the
verdict's order is known, and their manifests' weight-space errors as recorded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from oats.explain import verdict
from test_app import APP, MAIN, chart, clean, floats, prepare_runs, trace

pytestmark = pytest.mark.integration

WANDA = "minilm-l6-wanda-c0.5-k0-row-cal16xds0-mix"


# ----------------------------------------------------------------------------- the sentences


def test_disagreement_names_each_metrics_best_and_the_verdict():
    table = {"oats": {"median_scaled_error": 0.1, "median_output_error": 0.3, "cosine": 0.80},
             "hassle": {"median_scaled_error": 0.3, "median_output_error": 0.1, "cosine": 0.90},
             "wanda": {"median_scaled_error": 0.2, "median_output_error": 0.2, "cosine": 0.70}}
    sentence, clash = verdict.disagreement(table, "cosine", ["median_scaled_error", "median_output_error"])
    assert clash
    assert sentence.startswith("Weight error (median scaled error) ranks oats first; cosine to dense on held-out text ranks "
                               "hassle first. The verdict is cosine to dense")
    assert "OATS, Wanda and low-rank SVD minimise" in sentence
    assert "output error" not in sentence.split(". The verdict")[0]  # it agrees with the verdict
    assert sentence.endswith("Output error on calibration inputs (median) agrees with it.")
    # the data change, the sentence follows: now OATS is best on held-out text too
    table["oats"]["cosine"] = 0.95
    sentence, clash = verdict.disagreement(table, "cosine", ["median_scaled_error", "median_output_error"])
    assert clash and sentence.startswith("Output error on calibration inputs (median) ranks hassle first; cosine to "
                                         "dense on held-out text ranks oats first.")
    assert "SparseGPT and HASSLE-free minimise on the calibration inputs" in sentence
    # perplexity: lower is better
    lm = {"a": {"perplexity": 20.0, "median_scaled_error": 0.2}, "b": {"perplexity": 30.0, "median_scaled_error": 0.1}}
    sentence, clash = verdict.disagreement(lm, "perplexity", ["median_scaled_error"], higher_is_better=False)
    assert clash and "perplexity on held-out text ranks a first" in sentence


def test_metric_sentences_say_direction_and_verdict():
    assert "This is the verdict" in verdict.metric_sentence("cosine", "encoder")
    assert "This is the verdict" not in verdict.metric_sentence("cosine", "causal-lm")
    assert verdict.metric_sentence("spearman", "encoder").endswith(
        "(higher is better). A second view of quality; the verdict is cosine to dense.")
    s = verdict.metric_sentence("perplexity", "causal-lm")
    assert "lower is better" in s and "This is the verdict" in s
    s = verdict.metric_sentence("median_output_error", "encoder")
    assert "diagnostic" in s and "SparseGPT and HASSLE-free" in s and "lower is better" in s
    assert "OATS" in verdict.metric_sentence("scaled_error") and "diagnostic" in verdict.metric_sentence("scaled_error")
    assert verdict.metric_sentence("**x**", text=lambda t: t.replace("*", "\\*")).startswith("\\*\\*x")


# ----------------------------------------------------------------------------- on the page


@pytest.fixture(scope="module")
def source_runs(tmp_path_factory):
    return prepare_runs(tmp_path_factory.getbasetemp() / "app-runs")


def _two_runs(src: Path, root: Path, cosines: dict[str, float]) -> None:
    """Copies of the OATS and Wanda runs at ρ = 0.5 with evaluations giving them ``cosines``."""
    from oats.runs.evaluations import save_evaluation
    for name in (MAIN, WANDA):
        shutil.copytree(src / name, root / name)
        save_evaluation(root / name, {"dense": {"cosine": 1.0}, "both": {"cosine": cosines[name]}}, quick=True,
                        settings={"task": "encoder", "text": "test sentences"})


def _page(root: Path, monkeypatch, runner=None):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("OATS_RUNS_DIR", str(root))
    if runner is not None:
        import oats.runner.jobs
        monkeypatch.setattr(oats.runner.jobs, "RUNNER", runner)
    at = AppTest.from_file(APP, default_timeout=600)
    at.switch_page("pages/compare.py")
    at.run()
    clean(at)
    return at


def _verdict_lines(at) -> list[str]:
    return [i.value for i in at.info if "The verdict is" in i.value] + \
           [c.value for c in at.caption if "agree on the best run" in c.value]


def test_compare_page_explains_which_ranking_to_believe(source_runs, tmp_path, monkeypatch):
    from oats.runs.folders import RunInfo
    errs = {n: verdict.run_errors(RunInfo.read(source_runs / n)) for n in (MAIN, WANDA)}
    weight_best = min(errs, key=lambda n: errs[n]["median_scaled_error"])
    other = WANDA if weight_best == MAIN else MAIN
    method = {MAIN: "oats", WANDA: "wanda"}
    # the verdict ranks the other run first: the page says so, naming each metric's best
    root = tmp_path / "a"
    root.mkdir()
    _two_runs(source_runs, root, {weight_best: 0.6, other: 0.9})
    at = _page(root, monkeypatch)
    (line,) = _verdict_lines(at)
    assert f"Weight error (median scaled error) ranks {method[weight_best]} first" in line
    assert f"cosine to dense on held-out text ranks {method[other]} first" in line
    assert "The verdict is cosine to dense" in line
    # each metric of the runs' table has its sentence, the verdict marked
    notes = [m.value for m in at.markdown if m.value.startswith("**What each number means**")]
    assert len(notes) == 1
    assert "**cosine to dense**" in notes[0] and "This is the verdict" in notes[0]
    assert "**weight error (median scaled error)**" in notes[0] and "diagnostic" in notes[0]
    assert "**output error on calibration inputs (median)**" in notes[0]
    # the data change: the verdict now agrees with the weight error, and the sentence says so
    root = tmp_path / "b"
    root.mkdir()
    _two_runs(source_runs, root, {weight_best: 0.9, other: 0.6})
    at = _page(root, monkeypatch)
    lines = _verdict_lines(at)
    assert not [i for i in at.info if "The verdict is" in i.value]
    assert any(f"agree on the best run: {method[weight_best]}" in l for l in lines), lines


# ----------------------------------------------------------------------------- the sweep form


def test_sweep_form_refuses_bad_input_in_one_line(tmp_path, monkeypatch):
    from oats.runner.jobs import JobRunner
    runner = JobRunner(isolation="process")
    at = _page(tmp_path, monkeypatch, runner)
    at.multiselect(key="sweep-form-methods").set_value([]).run()
    assert [e.value for e in at.error] == ["choose at least one method for the sweep"]
    assert not [b for b in at.button if b.key == "sweep-form-start"]
    at.multiselect(key="sweep-form-methods").set_value(["wanda"]).run()
    at.text_input(key="sweep-form-rates").set_value("0.5, 1.2").run()
    assert [e.value for e in at.error] == [
        "compression rates value 1.2 is outside (0, 1): give values such as 0.3,0.4,0.5"]
    assert not runner.jobs() and not (tmp_path / "sweeps").exists()


def test_sweep_form_starts_the_runs_on_the_runner_and_charts_them(tmp_path, monkeypatch):
    from oats.runner import page_sweep
    from oats.runner.jobs import JobRunner
    from oats.runner.sweep import load_results
    runner = JobRunner(isolation="process")
    at = _page(tmp_path, monkeypatch, runner)
    at.multiselect(key="sweep-form-methods").set_value(["wanda", "magnitude"]).run()
    at.text_input(key="sweep-form-rates").set_value("0.4, 0.6").run()
    at.number_input(key="sweep-form-samples").set_value(8).run()
    clean(at)
    (plan,) = [m.value for m in at.markdown if m.value.startswith("Launches ")]
    assert plan.startswith("Launches **4 compressions** (2 methods × 2 rates), each evaluated when done. About ")
    assert plan.endswith("(rough figures: no past run here of magnitude, wanda).")  # an empty runs folder
    at.button(key="sweep-form-start").click().run()
    clean(at)
    reqs = page_sweep.requests("minilm-l6", ["wanda", "magnitude"], "0.4,0.6", calib_samples=8)
    folder = page_sweep.folder_for(reqs, tmp_path)
    assert (folder / page_sweep.PLAN_JSON).is_file()
    jobs = [runner.get(tmp_path / r.folder_name()) for r in reqs]
    assert all(j is not None for j in jobs)
    assert {j.request.method for j in jobs} == {"wanda", "magnitude"} and all(j.request.evaluate for j in jobs)
    assert [s.label for s in at.status if "Sweep" in s.label]  # the progress of its runs
    for j in jobs:
        assert j.wait(600).status == "done", j.state().error
    at.run()
    clean(at)
    assert (folder / "results.json").is_file()
    assert str(at.selectbox(key="sweep-pick").value) == str(folder)  # the new sweep is shown
    s = chart(at, "cosine")  # "cosine to dense ..." with display names
    rows = {(r["method"], r["compression"]): r["cosine"] for r in load_results(folder) if r["mode"] == "both"}
    for m in ("wanda", "magnitude"):
        t = trace(s, f"{m} · both")
        assert list(zip(floats(t["x"]), floats(t["y"]))) == [(x, rows[(m, x)]) for x in (0.4, 0.6)]
    for r in reqs:
        assert (tmp_path / r.folder_name() / "evaluation.json").is_file()


@pytest.mark.parametrize("plan", ['{"model": "minilm-l6", "runs": [{"run": "../../etc", "method": "oats", "compression": 0.5}]}',
                                  '{"model": "minilm-l6", "runs": [{"run": "x", "method": "oats", "compression": "0.5"}]}',
                                  '{"model": 3, "runs": []}', '[1, 2]', 'not json'])
def test_a_damaged_sweep_plan_is_ignored(tmp_path, plan):
    from oats.runner import page_sweep
    folder = tmp_path / "sweeps" / "minilm-l6-app-x"
    folder.mkdir(parents=True)
    (folder / page_sweep.PLAN_JSON).write_text(plan)
    assert page_sweep.read_plan(folder) is None and page_sweep.pending(tmp_path) == []
