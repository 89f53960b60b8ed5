"""``oats report RUN``: one self-contained HTML file with the run's settings, evaluation, per-layer
table, figures, pinned figures and the commands to reproduce it; hostile names stay text, damaged
pins are one line."""

from __future__ import annotations

import html
import json
import re
import shlex
import shutil

import plotly.graph_objects as go
import plotly.offline
import pytest

from oats import report
from oats.cli import build_parser, main
from oats.explain import quality
from oats.runs.evaluations import save_evaluation

pytestmark = pytest.mark.integration

HOSTILE = '<img src=x onerror=alert(1)>'
# what a sentence-embedding evaluation of a one-term run saves: dense and the compressed model, per domain
RESULTS = {"dense": {"cosine": 1.0, "cosine@manual": 1.0, "cosine@code": 1.0, "cosine@verse": 1.0,
                     "cosine@speeches": 1.0, "spearman": 1.0},
           "both": {"cosine": 0.8123456, "cosine@manual": 0.8301234, "cosine@code": 0.7712345,
                    "cosine@verse": 0.8234567, "cosine@speeches": 0.8245678, "spearman": 0.9012345}}
SETTINGS = {"task": "encoder", "quick": True, "sentences": 32, "domains": ["manual", "code", "verse", "speeches"],
            "text": "built-in evaluation parts of manual, code, verse, speeches"}


@pytest.fixture(scope="module")
def wanda_run(tmp_path_factory):
    """A Wanda run of minilm-l6 made by the CLI (8 calibration sentences), with a saved evaluation."""
    folder = tmp_path_factory.mktemp("report") / "minilm-wanda"
    assert main(["compress", "minilm-l6", "--method", "wanda", "--calib-samples", "8", "--out", str(folder),
                 "--quiet"]) == 0
    save_evaluation(folder, RESULTS, quick=True, settings=SETTINGS)
    return folder


def _without_plotly(text: str) -> str:
    """The page minus the inlined plotly.js (its source names CDN defaults it never fetches: the
    browser test checks that no request leaves the file)."""
    js = plotly.offline.get_plotlyjs()
    assert text.count(js) == 1, "plotly.js must be inlined exactly once"
    return text.replace(js, "")


def _cells(page: str, table_class: str) -> list[list[str]]:
    body = re.search(rf'<table class="{table_class}">(.*?)</table>', page, re.S).group(1)
    return [[html.unescape(c) for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def _figures(page: str) -> list[dict]:
    """{"data", "layout"} of every figure the page draws, as its script passes them to Plotly."""
    out, dec = [], json.JSONDecoder()
    for m in re.finditer(r'Plotly.newPlot\("figure-\d+", ', page):
        data, end = dec.raw_decode(page, m.end())
        layout, _ = dec.raw_decode(page, end + 2)
        out.append({"data": data, "layout": layout})
    return out


def _bar(title: str) -> go.Figure:
    return go.Figure(go.Bar(x=["0.q", "0.k"], y=[0.123, 0.456]), layout={"title": {"text": title}})


def test_cli_report_has_settings_evaluation_pins_and_commands(wanda_run, tmp_path):
    report.save_pin(wanda_run, "spectrum", "Spectrum of 0.q", _bar("Spectrum of 0.q").to_json())
    out = tmp_path / "r.html"
    assert main(["report", str(wanda_run), "--out", str(out)]) == 0
    page = out.read_text("utf-8")
    rest = _without_plotly(page)
    settings = dict(row for row in _cells(rest, "settings"))
    assert settings["model"] == "minilm-l6" and settings["method"].startswith("wanda")
    assert settings["compression ρ"].startswith("0.5")
    assert "rank ratio κ" not in settings and "solver" not in settings  # Wanda reads neither
    # the evaluation: one row per variant the run has (dense, sparse), each number as saved
    rows = _cells(rest, "evaluation")
    head, body = rows[0], rows[1:]
    assert [r[1] for r in body] == ["dense", "both"] and body[1][0] == "sparse"
    keys = ["cosine", "cosine@manual", "cosine@code", "cosine@verse", "cosine@speeches", "spearman"]
    assert head[2:] == [quality.column_label(k, k == "cosine") for k in keys]  # the mean, then each domain
    assert "Shakespeare" in head[5] and "State of the Union" in head[6]
    for row in body:
        assert row[2:] == [quality.fmt(RESULTS[row[1]][k]) for k in keys]
    assert "held-out text of 4 domains" in rest and "32 sentences" in rest
    # the pinned figure, with its data
    assert "Spectrum of 0.q" in rest and "chart spectrum, pinned" in rest
    assert rest.count("Plotly.newPlot(") == 4 + 1  # evaluation, per domain, per layer, depth + the pin
    assert "[0.123,0.456]" in rest
    # the commands, which the CLI parses back to the same settings
    compress, evaluate = html.unescape(re.search(r'<pre class="reproduce">(.*?)</pre>', rest, re.S).group(1)).splitlines()
    assert compress == "oats compress minilm-l6 --method wanda --compression 0.5 --sparsity row --calib-samples 8 --out minilm-wanda"
    assert evaluate == "oats evaluate minilm-wanda --quick"
    args = build_parser().parse_args(shlex.split(compress)[1:])
    assert (args.method, float(args.compression), args.calib_samples) == ("wanda", 0.5, 8)
    # nothing fetched from outside the file
    assert 'src="http' not in rest and "https://cdn" not in rest and "http://" not in rest
    assert "Content-Security-Policy" in page and "default-src 'none'" in html.unescape(page[:2000])


def test_a_spread_evaluation_is_drawn_on_a_log_axis(wanda_run, tmp_path):
    """Perplexities of 13 and 9e7 side by side: a linear axis would hide dense vs compressed."""
    folder = tmp_path / "run"
    shutil.copytree(wanda_run, folder, ignore=shutil.ignore_patterns("*.safetensors", "report"))
    save_evaluation(folder, {"dense": {"perplexity": 13.46}, "both": {"perplexity": 9.2e7}}, quick=True)
    layout = _figures(report.build_report(folder))[0]["layout"]
    assert layout["yaxis"]["type"] == "log" and "log scale" in layout["yaxis"]["title"]["text"]
    save_evaluation(folder, {"dense": {"perplexity": 13.46}, "both": {"perplexity": 21.3}}, quick=True)
    assert _figures(report.build_report(folder))[0]["layout"]["yaxis"].get("type") != "log"


def test_unpin_removes_the_figure(wanda_run, tmp_path):
    name = report.save_pin(wanda_run, "budget", "Scaled error per layer", _bar("Scaled error per layer").to_json())
    assert report.is_pinned(wanda_run, "budget", "Scaled error per layer")
    assert "Scaled error per layer" in report.build_report(wanda_run)
    report.remove_pin(wanda_run, name)
    assert not report.is_pinned(wanda_run, "budget", "Scaled error per layer")
    assert "Scaled error per layer" not in _without_plotly(report.build_report(wanda_run))
    report.remove_pin(wanda_run, "../manifest")  # not a pin name: nothing outside the pins is touched
    assert (wanda_run / "manifest.json").is_file()


def test_hostile_names_stay_text(wanda_run, tmp_path):
    """A run folder from someone else: HTML in its folder name, model, method, layer names,
    evaluation settings and pins must not become markup in the report."""
    folder = tmp_path / f"run {HOSTILE}"
    folder.mkdir()
    manifest = json.loads((wanda_run / "manifest.json").read_text())
    manifest["model_name"] = f'<script>alert("model")</script>'
    manifest["method"] = HOSTILE
    manifest["layers"][0]["name"] = "<b>q</b>"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    save_evaluation(folder, {"dense": {"cosine": 1.0}, "both": {"cosine": 0.5}}, quick=False,
                    settings={"text": f"</pre><script>alert('text')</script>"})
    report.save_pin(folder, HOSTILE, f"</script><script>alert('pin')</script>", _bar(HOSTILE).to_json())
    evil = _bar("x")
    evil.add_layout_image(source="http://evil.example/pixel.png", x=0, y=0)
    report.save_pin(folder, "evil", "remote image", evil.to_json())
    out = tmp_path / "hostile.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    rest = _without_plotly(out.read_text("utf-8"))
    for raw in ("<script>alert", "<img src=x", "<b>q</b>", "</pre><script>", "</script><script>"):
        assert raw not in rest, raw
    assert "&lt;script&gt;alert(&quot;model&quot;)&lt;/script&gt;" in rest  # shown, as text
    assert "&lt;img src=x onerror=alert(1)&gt;" in rest
    assert "evil.example" not in rest  # a pin's remote image is dropped
    assert "alert(1)" not in re.sub(r"&lt;img src=x onerror=alert\(1\)&gt;|\\u003cimg src=x onerror=alert\(1\)\\u003e",
                                    "", rest)


@pytest.mark.parametrize("content, reason", [
    (b"{not json", "not valid JSON"),
    (b"[" * 100_000, "nests deeper"),
    (json.dumps({"format": 1, "key": "m", "figure": {"data": [{"type": "scattermapbox"}]}}).encode(), "scattermapbox"),
    (json.dumps({"format": 1, "key": "m", "figure": {"data": [{"type": "bar", "nonsense": 1}]}}).encode(),
     "Plotly refuses it"),
])
def test_a_damaged_pin_is_one_line(wanda_run, tmp_path, content, reason):
    folder = tmp_path / "run"
    shutil.copytree(wanda_run, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    report.save_pin(folder, "good", "A good pin", _bar("A good pin").to_json())
    (report.pins_folder(folder) / "bad.json").write_bytes(content)
    out = tmp_path / "r.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    rest = _without_plotly(out.read_text("utf-8"))
    problems = re.findall(r'<p class="problem">(.*?)</p>', rest)
    assert len(problems) == 1 and "bad.json" in problems[0] and reason in html.unescape(problems[0])
    assert "\n" not in problems[0] and "Traceback" not in rest
    assert "A good pin" in rest  # the other pins are still drawn


def test_pins_of_an_earlier_run_in_the_folder_are_left_out(wanda_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(wanda_run, folder, ignore=shutil.ignore_patterns("*.safetensors", "report"))
    report.save_pin(folder, "old", "Old figure", _bar("Old figure").to_json())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["created"] = "2099-01-01T00:00:00"  # compressed again into the same folder (--overwrite)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    pins, problems = report.read_pins(folder)
    assert pins == [] and len(problems) == 1 and "earlier run" in problems[0]
    report.save_pin(folder, "new", "New figure", _bar("New figure").to_json())
    assert [p.title for p in report.read_pins(folder)[0]] == ["New figure"]


def test_a_report_folder_linked_elsewhere_is_refused(wanda_run, tmp_path):
    """A shared run folder whose report/ is a link out of it: nothing is written or read there."""
    from oats.errors import RunError
    folder = tmp_path / "run"
    shutil.copytree(wanda_run, folder, ignore=shutil.ignore_patterns("*.safetensors", "report"))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "pins").mkdir(parents=True)
    (elsewhere / "pins" / "x.json").write_text(json.dumps({"format": 1, "key": "k", "figure": {"data": []}}))
    (folder / "report").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunError, match="cannot be used"):
        report.save_pin(folder, "k", "t", _bar("t").to_json())
    assert sorted(p.name for p in (elsewhere / "pins").iterdir()) == ["x.json"]
    pins, problems = report.read_pins(folder)
    assert pins == [] and len(problems) == 1 and "leads outside" in problems[0]


def test_out_may_be_a_folder(wanda_run, tmp_path, capsys):
    assert main(["report", str(wanda_run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "minilm-wanda-report.html").is_file()
    assert main(["report", str(wanda_run), "--out", str(tmp_path / "no" / "such" / "r.html")]) == 0  # made
    assert main(["report", str(wanda_run), "--out", "/proc/no-such/r.html"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_missing_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err
