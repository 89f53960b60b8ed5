"""The calibration study (benchmarks/calibration.py) and its app page (pages/calibration.py).

The benchmark's tables and its JSON are built by pure functions, tested here on a small fake
study whose numbers are chosen by hand; the resume logic is tested on those functions and,
once, on a real (tiny) run of minilm-l6 that is then rerun. The page is driven through
AppTest on a study file put under a temporary runs root, and its charts' Plotly JSON is
checked against the file's numbers.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from oats.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")

_spec = importlib.util.spec_from_file_location("calibration_benchmark", ROOT / "benchmarks" / "calibration.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


# ----------------------------------------------------------------------------- a fake study

DENSE = {"manual": 10.0, "code": 4.0}
# (method, calibration domain, samples, tokens): (manual, code, mean)
CELLS = {
    ("oats", "manual", 16, 4096): (12.0, 6.0, 8.49),
    ("oats", "code", 16, 4096): (15.0, 5.0, 8.66),
    ("oats", "mix", 16, 4096): (13.0, 5.5, 8.46),
    ("oats", "mix", 4, 1024): (14.0, 6.5, 9.54),
    ("oats", "mix", 64, 16384): (12.5, 5.2, 8.06),
    ("hassle", "manual", 16, 4096): (11.0, 7.0, 8.77),
    ("hassle", "code", 16, 4096): (16.0, 4.8, 8.76),
    ("hassle", "mix", 16, 4096): (12.2, 5.4, 8.12),
    ("hassle", "mix", 4, 1024): (15.0, 7.5, 10.6),
    ("hassle", "mix", 64, 16384): (11.5, 5.1, 7.66),
}


def fake_study(cells=CELLS) -> dict:
    study = {"study": bench.STUDY, "version": bench.VERSION, "model": "tiny-lm", "task": "causal-lm",
             "metric": "perplexity", "higher_is_better": False, "compression": 0.5, "rank_ratio": 0.25,
             "seq_len": 256, "seed": 0, "matrix_samples": 16, "quick": False,
             "evaluation": {"text": "built-in evaluation parts of manual, code"}, "unit": "windows of 256 tokens",
             "eval_domains": ["manual", "code"], "cpu": "Test CPU 9000",
             "dense": {"per_domain": dict(DENSE), "mean": math.sqrt(40.0), "metrics": {}},
             "sessions": [{"command": ".venv/bin/python benchmarks/calibration.py --model tiny-lm", "cpu": "Test CPU 9000",
                           "torch_threads": 2, "seconds": 754.0, "cells": len(cells)}], "cells": []}
    for (m, d, n, t), (a, b, mean) in cells.items():
        bench.add_cell(study, {"method": m, "rank_ratio": 0.25, "calib_domain": d, "calib_samples": n,
                               "calib_tokens": t, "per_domain": {"manual": a, "code": b}, "mean": mean,
                               "metrics": {}, "compress_s": 1.0, "eval_s": 1.0, "cpu": "Test CPU 9000"})
    return study


# ----------------------------------------------------------------------------- the benchmark's pure pieces


def test_plan_lists_the_matrix_then_the_curve_once_each():
    keys = bench.plan(["oats", "hassle"], ["manual", "mix"], 16, [4, 16, 64])
    assert keys == [("oats", "manual", 16), ("oats", "mix", 16), ("oats", "mix", 4), ("oats", "mix", 64),
                    ("hassle", "manual", 16), ("hassle", "mix", 16), ("hassle", "mix", 4), ("hassle", "mix", 64)]
    assert bench.plan(["oats"], ["manual", "mix"], 16, [4, 16], curve=False) == [("oats", "manual", 16),
                                                                                 ("oats", "mix", 16)]
    assert bench.plan(["oats"], ["manual", "mix"], 16, [4, 16], matrix=False) == [("oats", "mix", 4),
                                                                                  ("oats", "mix", 16)]


def test_pending_skips_the_cells_already_measured():
    study = fake_study()
    keys = bench.plan(["oats", "sparsegpt"], ["manual", "code", "mix"], 16, [4, 16, 64, 256])
    todo = bench.pending(keys, study)
    assert todo == [("oats", "mix", 256), ("sparsegpt", "manual", 16), ("sparsegpt", "code", 16),
                    ("sparsegpt", "mix", 16), ("sparsegpt", "mix", 4), ("sparsegpt", "mix", 64),
                    ("sparsegpt", "mix", 256)]
    assert bench.pending(bench.plan(["oats"], ["manual"], 16, [4, 64]), study) == []


def test_a_saved_study_of_other_settings_is_not_resumed():
    study = fake_study()
    assert bench.mismatch(study, dict(study)) is None
    why = bench.mismatch(study, {**study, "compression": 0.6})
    assert why.startswith("compression") and "0.5" in why and "0.6" in why
    assert bench.mismatch(study, {**study, "matrix_samples": 64}).startswith("matrix_samples")
    with_config = {**study, "config": {"shrink": 0.0}}
    assert bench.mismatch(with_config, {**with_config, "config": {"shrink": 0.5}}).startswith("config")
    assert bench.mismatch(study, with_config) is None  # a file from before configs were recorded
    # the methods, domains and sizes asked may differ: they only add cells
    assert bench.mismatch(study, {**study, "cells": [], "sessions": []}) is None


def test_add_cell_replaces_a_cell_of_the_same_key():
    study = fake_study()
    n = len(study["cells"])
    bench.add_cell(study, {**study["cells"][0], "mean": 1.0})
    assert len(study["cells"]) == n
    assert [c["mean"] for c in study["cells"] if bench.cell_key(c) == ("oats", "manual", 16)] == [1.0]


def test_matrix_rows_and_curve_rows():
    study = fake_study()
    rows = bench.matrix_rows(study)
    assert [(r["method"], r["calibrated on"]) for r in rows] == [
        ("dense", "-"), ("oats", "manual"), ("oats", "code"), ("oats", "mix"),
        ("hassle", "manual"), ("hassle", "code"), ("hassle", "mix")]
    assert rows[0]["manual"] == 10.0 and rows[0]["code"] == 4.0
    assert (rows[2]["manual"], rows[2]["code"], rows[2]["mean"]) == (15.0, 5.0, 8.66)
    curve = bench.curve_rows(study)
    assert [(r["method"], r["samples"], r["tokens"]) for r in curve] == [
        ("oats", 4, 1024), ("oats", 16, 4096), ("oats", 64, 16384),
        ("hassle", 4, 1024), ("hassle", 16, 4096), ("hassle", 64, 16384)]
    assert [r["code"] for r in curve if r["method"] == "hassle"] == [7.5, 5.4, 5.1]


def test_tables_mark_the_best_compressed_value_of_each_column():
    study = fake_study()
    rows = bench.matrix_rows(study)
    # lower is better, dense never counts
    assert bench.best(rows, "manual", False) == 4  # hassle on manual, 11.0
    assert bench.best(rows, "code", False) == 5  # hassle on code, 4.8
    assert bench.best(rows, "mean", False) == 6  # hassle on the mix, 8.12
    assert bench.best(rows, "mean", True) == 4  # hassle on manual, 8.77, if higher were better
    text = bench.format_table(rows, ["method", "calibrated on"], ["manual", "code", "mean"], False)
    lines = text.splitlines()
    assert lines[0] == "| method | calibrated on | manual | code | mean |"
    assert lines[2] == "| dense | - | 10.00 | 4.00 | 6.32 |"
    assert lines[6] == "| hassle | manual | **11.00** | 7.00 | 8.77 |"
    assert lines[7] == "| hassle | code | 16.00 | **4.80** | 8.76 |"
    assert text.count("**") == 6
    report = bench.report(study)
    assert "Calibration matrix: tiny-lm, ρ 0.5" in report and "Tokens curve" in report
    assert "| hassle | 64 | 16384 | **11.50** | **5.10** | **7.66** |" in report
    assert "12.6 min in all on Test CPU 9000" in report


def test_the_study_file_is_strict_json_and_reads_back(tmp_path):
    study = fake_study()
    study["cells"][0]["metrics"] = {"perplexity": float("nan")}
    path = tmp_path / "sub" / "study.json"
    bench.save_study(path, study)
    text = path.read_text()
    assert "NaN" not in text and not (tmp_path / "sub" / "study.json.tmp").exists()
    back = bench.load_study(path)
    assert back["cells"][0]["metrics"] == {"perplexity": None}
    assert bench.pending(bench.plan(["oats"], ["manual"], 16, []), back) == []
    assert bench.load_study(tmp_path / "none.json") is None
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a calibration study"):
        bench.load_study(tmp_path / "other.json")


def test_cpu_name_is_a_name():
    name = bench.cpu_name()
    assert isinstance(name, str) and name and "\n" not in name


@pytest.mark.integration
def test_the_benchmark_writes_every_cell_and_a_rerun_skips_them(tmp_path, monkeypatch, capsys):
    """A tiny real study of minilm-l6 (magnitude, one domain, 8 sentences, quick evaluation),
    then the same command again: nothing is compressed the second time."""
    import oats.compress.pipeline as pipeline
    calls = []
    real = pipeline.compress_model

    def counting(*a, **kw):
        calls.append(kw.get("method"))
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "compress_model", counting)
    out = tmp_path / "study.json"
    args = ["--model", "minilm-l6", "--methods", "magnitude", "--domains", "code", "--sizes", "4,8",
            "--calib-samples", "8", "--quick", "--out", str(out)]
    assert bench.main(args) == 0
    study = json.loads(out.read_text())
    assert calls == ["magnitude"] * 3
    assert sorted(bench.cell_key(c) for c in study["cells"]) == [("magnitude", "code", 8), ("magnitude", "mix", 4),
                                                                ("magnitude", "mix", 8)]
    assert study["eval_domains"] == ["manual", "code", "verse", "speeches"]
    for c in study["cells"]:
        assert set(c["per_domain"]) == set(study["eval_domains"]) and 0 < c["mean"] <= 1
        assert c["calib_tokens"] > c["calib_samples"]
    assert study["config"]["compression"] == 0.5 and "iterations" in study["config"]
    assert study["cpu"] == bench.cpu_name() and study["sessions"][0]["command"].endswith(str(out))
    assert "Calibration matrix" in capsys.readouterr().out
    before = out.read_text()
    assert bench.main(args) == 0
    assert calls == ["magnitude"] * 3  # nothing computed again
    assert out.read_text() == before
    assert bench.main([*args, "--compression", "0.6"]) == 2  # another study in the same file
    assert "other settings (compression" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the page's data and figures


def _decode(v):
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.array([[np.nan if x is None else x for x in r] if isinstance(r, list) else
                     (np.nan if r is None else r) for r in v], dtype=float)


def test_check_study_refuses_what_is_not_a_study():
    from ui import calibration_figures as cf
    good = fake_study()
    assert cf.check_study(json.loads(json.dumps(good))) is not None
    bad = json.loads(json.dumps(good))
    bad["cells"][3]["calib_tokens"] = "many"
    with pytest.raises(DataError, match="cell 3's 'calib_tokens'"):
        cf.check_study(bad, "'x.json'")
    bad = json.loads(json.dumps(good))
    bad["cells"][0]["per_domain"]["manual"] = [1]
    with pytest.raises(DataError, match="per_domain"):
        cf.check_study(bad)
    with pytest.raises(DataError, match="no 'study' marker"):
        cf.check_study([1, 2])


def test_matrix_figure_colours_perplexity_by_its_ratio_to_dense():
    from ui import calibration_figures as cf
    fig = cf.matrix_figure(fake_study(), "hassle")
    hm = fig.data[0]
    assert list(hm.y) == ["Python manual", "Python code", "mix of all"]
    assert list(hm.x) == ["Python manual", "Python code", "mean"]
    z = np.array(hm.z, dtype=float)
    np.testing.assert_allclose(z[0, :2], np.log10([11.0 / 10.0, 7.0 / 4.0]))
    np.testing.assert_allclose(z[2, 2], math.log10(8.12 / math.sqrt(40.0)))
    assert hm.text[0][0] == "<b>11.00<br>1.10× dense</b>"  # best on manual
    assert hm.text[1][1] == "<b>4.80<br>1.20× dense</b>"  # best on code
    assert hm.text[0][1] == "7.00<br>1.75× dense"
    assert hm.reversescale  # lower is better: the best is drawn as a high value
    assert list(hm.colorbar.ticktext) == ["1.1×", "1.2×", "1.5×"]  # ratios 1.10 to 1.75
    np.testing.assert_allclose(hm.colorbar.tickvals, np.log10([1.1, 1.2, 1.5]))


def test_ratio_ticks():
    from ui.calibration_figures import ratio_ticks
    assert ratio_ticks([1.5, 3.2]) == [1.5, 2.0, 3.0]
    assert ratio_ticks([1.2, 12.0, None, float("nan")]) == [1.2, 1.5, 2.0, 3.0, 5.0, 10.0]
    assert ratio_ticks([1.31, 1.45]) == [1.31, 1.36, 1.4, 1.45]  # no round ratio inside: four spread over
    assert ratio_ticks([2.0, 2.0]) == [2.0] and ratio_ticks([]) == []


def test_curve_figure_one_panel_per_method_tokens_on_a_log_axis():
    from ui import calibration_figures as cf
    fig = cf.curve_figure(fake_study())
    by = {(t.name, t.xaxis): t for t in fig.data}
    t = by[("Python code", "x2")]  # hassle's panel
    assert list(t.x) == [1024, 4096, 16384] and list(t.y) == [7.5, 5.4, 5.1]
    assert list(by[("mean", "x")].y) == [9.54, 8.46, 8.06]
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert fig.layout.yaxis.type == "log"  # perplexity
    assert [a.text for a in fig.layout.annotations][:2] == ["oats", "hassle"]


def test_describe_names_the_text_the_command_the_time_and_the_cpu():
    from ui import calibration_figures as cf
    text = cf.describe(fake_study())
    assert "built-in evaluation parts of manual, code" in text
    assert "10 runs, made by the command below, in 12.6 min on Test CPU 9000 (2 torch threads)" in text
    assert cf.commands(fake_study()) == [".venv/bin/python benchmarks/calibration.py --model tiny-lm"]


def test_study_files_lists_yours_then_the_committed(tmp_path):
    from ui import calibration_figures as cf
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "calibration-a.json").write_text("{}")
    (tmp_path / "results" / "other.json").write_text("{}")
    assert cf.study_files(tmp_path / "runs", tmp_path / "results") == [(tmp_path / "results" / "calibration-a.json",
                                                                        "committed")]
    (tmp_path / "runs" / "calibration").mkdir(parents=True)
    (tmp_path / "runs" / "calibration" / "mine.json").write_text("{}")
    assert [s for _, s in cf.study_files(tmp_path / "runs", tmp_path / "results")] == ["yours", "committed"]
    assert cf.study_files(tmp_path / "nothing", tmp_path / "nothing") == []


def test_the_committed_studies_read():
    from ui import calibration_figures as cf
    committed = [p for p, s in cf.study_files(ROOT / "no-runs-here") if s == "committed"]
    for p in committed:
        study = cf.load_study(p)
        assert study["cells"] and study["dense"] is not None, p


# ----------------------------------------------------------------------------- the page


def _charts(at) -> dict[str, dict]:
    out = {}
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        out[spec["layout"]["title"]["text"]] = spec
    return out


def _chart(at, prefix: str) -> dict:
    found = [v for k, v in _charts(at).items() if k.startswith(prefix)]
    assert found, f"no chart titled {prefix!r}; have {list(_charts(at))}"
    return found[0]


def _page(monkeypatch, root: Path):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("OATS_RUNS_DIR", str(root))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("pages/calibration.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_calibration_page_draws_the_matrix_and_the_curve(tmp_path, monkeypatch):
    (tmp_path / "calibration").mkdir()
    bench.save_study(tmp_path / "calibration" / "calibration-tiny-lm.json", fake_study())
    (tmp_path / "calibration" / "broken.json").write_text('{"study": "oats-calibration-study", "cells": [')
    at = _page(monkeypatch, tmp_path)
    assert any("broken.json" in w.value and "cannot be read" in w.value for w in at.warning)
    m = _chart(at, "Calibration matrix: oats, perplexity (lower is better)")
    hm = m["data"][0]
    z = _decode(hm["z"])
    np.testing.assert_allclose(z[1, :2], np.log10([15.0 / 10.0, 5.0 / 4.0]))  # oats calibrated on code
    assert hm["text"][1][0] == "15.00<br>1.50× dense"
    assert hm["text"][0][0] == "<b>12.00<br>1.20× dense</b>"  # oats: manual is best on manual
    c = _chart(at, "Tokens curve")
    assert not [d for d in c["data"] if d["name"] == "Shakespeare"]  # the fake study has no verse domain
    t = [d for d in c["data"] if d["name"] == "Python manual" and d["xaxis"] == "x2"]  # hassle's panel
    np.testing.assert_allclose(_decode(t[0]["x"]), [1024, 4096, 16384])
    np.testing.assert_allclose(_decode(t[0]["y"]), [15.0, 12.2, 11.5])
    assert c["layout"]["xaxis"]["type"] == "log"
    assert "Test CPU 9000" in " ".join(x.value for x in at.caption)
    assert [c.value for c in at.code] == [".venv/bin/python benchmarks/calibration.py --model tiny-lm"]
    at.radio(key="calibration-method").set_value("hassle").run()
    hm = _chart(at, "Calibration matrix: hassle")["data"][0]
    assert hm["text"][1][1] == "<b>4.80<br>1.20× dense</b>"


def test_calibration_page_without_a_study_says_what_to_run(tmp_path, monkeypatch):
    from ui import calibration_figures as cf
    monkeypatch.setattr(cf, "RESULTS_DIR", tmp_path / "no-results")
    at = _page(monkeypatch, tmp_path)
    assert any("benchmarks/calibration.py" in i.value for i in at.info)
    assert not at.get("plotly_chart")
