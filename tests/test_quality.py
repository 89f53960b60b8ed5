"""Every quality number names its text: the primary metric's mean beside its value per domain,
ranks per domain, the sweep tables and ``oats evaluate`` (``oats.explain.quality``)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from oats.cli import main as cli_main
from oats.explain import quality
from oats.runner.sweep import RESULTS_CSV, domain_table, load_results, pivot_table, write_results

from tiny_models import tiny_llama_folder, tiny_text

FIXTURE = Path(__file__).parent / "fixtures" / "old_run_v1"
DOMS = ["manual", "code", "verse", "speeches"]
TITLES = ["Python manual", "Python code", "Shakespeare", "State of the Union"]


def lm_metrics(ppl: dict[str, float]) -> dict[str, float]:
    """Metrics as the evaluation names them, from perplexities per domain (in a shuffled key order)."""
    nll = {d: math.log(v) for d, v in ppl.items()}
    mean = sum(nll.values()) / len(nll)
    out = {"nll": mean, "perplexity": math.exp(mean)}
    for d in reversed(list(ppl)):
        out[f"nll@{d}"] = nll[d]
        out[f"perplexity@{d}"] = ppl[d]
    return out


# ----------------------------------------------------------------------------- helpers


def test_columns_put_the_primary_mean_then_its_domains_first():
    keys = list(lm_metrics(dict(zip(DOMS, (10, 20, 30, 40)))))
    assert quality.primary_of(keys) == ("perplexity", False)
    assert quality.domains_of([dict.fromkeys(keys)]) == DOMS  # the corpora's order, whatever the keys' order
    assert quality.ordered_metrics(keys) == (["perplexity"] + [f"perplexity@{d}" for d in DOMS] + ["nll"]
                                             + [f"nll@{d}" for d in DOMS])
    assert quality.shown_metrics(keys) == ["perplexity"] + [f"perplexity@{d}" for d in DOMS] + ["nll"]
    assert quality.column_label("perplexity@verse") == "perplexity · Shakespeare"
    assert quality.column_label("cosine") == "cosine to dense (mean)"  # display names (oats.evaluation.METRIC_NAMES)
    assert quality.column_label("cosine", with_domains=False) == "cosine to dense"
    assert quality.column_label("cls_cosine@photos") == "CLS cosine to dense · photos"
    assert quality.column_label("probe_acc", with_domains=False) == "probe accuracy"
    # the user's own text: the means alone
    assert quality.ordered_metrics(["nll", "perplexity"]) == ["perplexity", "nll"]
    assert quality.domains_of([{"perplexity": 3.0}]) == []


def test_describe_names_the_text():
    assert quality.describe({}, DOMS) == ("held-out text of 4 domains (Python manual, Python code, Shakespeare, "
                                          "State of the Union), none of it used in calibration")
    assert quality.describe(None, ["photos", "textures"]).startswith("held-out images of 2 domains (photos, textures)")
    assert quality.describe({"text": "file eval.txt"}) == "file eval.txt"
    assert quality.describe({"images": "folder x (3 images, centre crops)"}, task="vision") == \
        "folder x (3 images, centre crops)"
    # before domains: the Python manual only where the settings say it was the old built-in split
    old = {"text": "built-in evaluation split (stdlib prose, disjoint from calibration)"}
    assert quality.describe(old).startswith("the Python manual's held-out split")
    assert "Python manual" not in quality.describe(None) and "unrecorded" in quality.describe(None)
    assert quality.describe(None, task="vision").startswith("unrecorded images")


def test_ranks_share_ties_and_skip_what_is_missing():
    assert quality.ranks({"a": 3.0, "b": 1.0, "c": 3.0, "d": 5.0}, higher_is_better=False) == \
        {"a": 2, "b": 1, "c": 2, "d": 4}
    assert quality.ranks({"a": 0.9, "b": 0.95, "c": float("nan"), "d": None}, higher_is_better=True) == \
        {"a": 2, "b": 1, "c": None, "d": None}


def _table():
    # oats best on the mean and on verse and speeches; hassle best on the manual and on code
    return {"oats": lm_metrics(dict(zip(DOMS, (22.0, 30.0, 66.0, 40.0)))),
            "hassle": lm_metrics(dict(zip(DOMS, (18.0, 25.0, 87.0, 45.0)))),
            "sparsegpt": lm_metrics(dict(zip(DOMS, (19.5, 26.0, 83.0, 44.0))))}


def test_ranking_per_domain_and_the_sentence_when_the_best_differs():
    t = _table()
    r = quality.ranking(t, "perplexity", False)
    assert r["manual"] == {"oats": 3, "hassle": 1, "sparsegpt": 2}
    assert r["verse"] == {"oats": 1, "hassle": 3, "sparsegpt": 2}
    assert r[quality.MEAN] == quality.ranks({k: v["perplexity"] for k, v in t.items()}, False)
    assert quality.best_per_domain(t, "perplexity", False) == {"manual": ["hassle"], "code": ["hassle"],
                                                              "verse": ["oats"], "speeches": ["oats"]}
    assert quality.best_differs(t, "perplexity", False)
    assert quality.ranking_sentence(t, "perplexity", False, what="method") == (
        "The best method by perplexity differs between domains: hassle on Python manual and Python code; "
        "oats on Shakespeare and State of the Union.")
    md = quality.ranking_markdown(t, "perplexity", False, head=("method",)).splitlines()
    assert md[0] == "| method | perplexity (mean) | " + " | ".join(TITLES) + " |"
    oats = md[2].split(" | ")
    assert oats[0] == "| oats" and oats[2] == "22 (#3)" and oats[4] == "**66 (#1)**" and oats[5] == "**40 (#1)** |"
    hassle = md[3].split(" | ")
    assert hassle[2] == "**18 (#1)**" and hassle[4] == "87 (#3)"
    # the same best everywhere: no "differs"
    same = {k: v for k, v in t.items() if k != "hassle"}
    same["oats"] = lm_metrics(dict(zip(DOMS, (10.0, 10.0, 10.0, 10.0))))
    assert not quality.best_differs(same, "perplexity", False)
    assert quality.ranking_sentence(same, "perplexity", False).startswith("oats is best on every domain (Python manual")
    # a run evaluated before domains: its cells are "–", the others are ranked without it
    t["old"] = {"perplexity": 1.0, "nll": 0.0}
    md = quality.ranking_markdown(t, "perplexity", False).splitlines()
    assert md[-1] == "| old | **1 (#1)** | – | – | – | – |"


def test_ranking_markdown_escapes_names_and_pipes():
    t = {"a|b": {"cosine": 0.9}, "c": {"cosine": 0.8}}
    md = quality.ranking_markdown(t, "cosine", True, label=lambda n: f"<{n}>")
    assert "| <a\\|b> | **0.9 (#1)** |" in md.splitlines()
    assert quality.ranking_sentence(t, "cosine", True) == ""  # no domains, no sentence


# ----------------------------------------------------------------------------- sweep tables


def _rows():
    t = _table()
    dense = lm_metrics(dict(zip(DOMS, (13.0, 8.0, 36.0, 20.0))))
    head = {"model": "m", "sparsity": "row", "allocation": "uniform"}
    rows = [{**head, "method": "dense", "compression": 0.0, "rank_ratio": 0.0, "mode": "dense", **dense,
             "compress_time_s": None, "eval_time_s": 1.0, "run": ""}]
    for method, m in t.items():
        kappa = 0.25 if method == "oats" else 0.0
        rows.append({**head, "method": method, "compression": 0.5, "rank_ratio": kappa, "mode": "both", **m,
                     "compress_time_s": 2.0, "eval_time_s": 1.0, "run": f"m-{method}"})
        if method == "oats":
            rows.append({**head, "method": method, "compression": 0.5, "rank_ratio": kappa, "mode": "sparse",
                         **lm_metrics(dict(zip(DOMS, (99.0, 99.0, 99.0, 99.0)))),
                         "compress_time_s": 2.0, "eval_time_s": 1.0, "run": "m-oats"})
    return rows


def test_sweep_files_put_the_primary_per_domain_beside_its_mean(tmp_path):
    rows = _rows()
    write_results(tmp_path, rows)
    with open(tmp_path / RESULTS_CSV) as f:
        header = next(csv.reader(f))
    assert header[7:12] == ["perplexity"] + [f"perplexity@{d}" for d in DOMS]
    assert header[12] == "nll" and header[-3:] == ["compress_time_s", "eval_time_s", "run"]
    back = load_results(tmp_path)
    assert list(back[0])[7:12] == header[7:12]
    assert back[1]["perplexity@verse"] == 66.0


def test_domain_table_ranks_the_compressed_models_per_domain():
    out = domain_table(_rows(), settings={"text": "x", "domains": DOMS}).splitlines()
    assert out[0].startswith("perplexity per domain (lower is better), on held-out text of 4 domains (Python manual")
    assert out[1] == "dense: mean 16.54 · Python manual 13 · Python code 8 · Shakespeare 36 · State of the Union 20"
    assert out[3] == "ρ = 0.5"
    assert out[4] == "| method | rank ratio | perplexity (mean) | " + " | ".join(TITLES) + " |"
    lines = {l.split(" | ")[0]: l for l in out[6:9]}
    assert set(lines) == {"| oats", "| hassle", "| sparsegpt"}  # the sparse-only variant is not ranked
    assert lines["| oats"].startswith("| oats | 0.25 | **36.33 (#1)** | 22 (#3) | 30 (#3) | **66 (#1)** | **40 (#1)** |")
    assert out[9] == ("The best method by perplexity differs between domains: hassle on Python manual and Python code; "
                      "oats on Shakespeare and State of the Union.")
    # a sweep evaluated on the user's text, or before domains: no per-domain table
    plain = [{k: v for k, v in r.items() if "@" not in k} for r in _rows()]
    assert domain_table(plain) == ""
    assert "| oats | 0.25 | both | 36.33 |" in pivot_table(plain, "perplexity")


# ----------------------------------------------------------------------------- oats evaluate


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    """The format-1 run of test_old_runs, its model rebuilt, the working directory its parent."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / "old_run_v1"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("README.md"))
    tiny_llama_folder(tmp_path / "tiny-llama")
    return folder


def _table_cells(out: str) -> dict[str, list[str]]:
    return {l.split(" | ")[0].strip("| "): [c.strip(" |") for c in l.split(" | ")[1:]]
            for l in out.splitlines() if l.startswith("| ") and not l.startswith("| mode")}


def test_cli_evaluate_prints_the_mean_and_each_domain(old_run, capsys):
    assert cli_main(["evaluate", str(old_run), "--quick", "--modes", "dense,both", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["domains"] == DOMS and res["measured_on"].startswith("held-out text of 4 domains")
    both = res["metrics"]["both"]
    assert res["per_domain"]["both"] == {d: both[f"perplexity@{d}"] for d in DOMS}
    assert cli_main(["evaluate", str(old_run), "--quick", "--modes", "dense,both"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"{old_run}: tiny-llama · oats · ρ 0.5 · κ 0.25 · row"
    assert lines[1].startswith("perplexity (lower is better) on held-out text of 4 domains (Python manual, "
                               "Python code, Shakespeare, State of the Union)")
    assert "geometric mean" in lines[2]
    assert "| mode | perplexity (mean) | " + " | ".join(TITLES) + " | NLL |" in lines
    cells = _table_cells(out)
    want = [both["perplexity"]] + [both[f"perplexity@{d}"] for d in DOMS] + [both["nll"]]
    assert cells["both"] == [f"{v:.4g}" for v in want]
    assert list(cells) == ["dense", "both"]


def test_cli_evaluate_on_the_users_text_has_no_domain_columns(old_run, capsys):
    Path("eval.txt").write_text(tiny_text(300, seed=1))
    assert cli_main(["evaluate", str(old_run), "--quick", "--text", "eval.txt"]) == 0
    out = capsys.readouterr().out
    assert "perplexity (lower is better) on file eval.txt" in out
    assert "| mode | perplexity | NLL |" in out.splitlines() and "Python manual" not in out
    assert list(_table_cells(out)) == ["dense", "both", "sparse", "lowrank"]
