"""The Heads page through app.py with Streamlit's AppTest, on runs of a tiny random BERT whose
WordPiece vocabulary splits words ("cat ##s"), saved as a local model folder: token labels as a
reader writes them, the hover that reads a token's attention row, the variants a run has (a Wanda
run has no low-rank-only model anywhere), colour bars, and the diff of two runs of the model
checked against a direct computation."""

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from oats import OatsConfig, compress_model
from oats.explain import heads
from oats.models.zoo import load_model
from oats.runs.folders import load_run, save_run
from test_app import chart as _chart, charts as _charts  # the page's charts by title

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "##s", "sat", "walk", "##ing", "on", "mat",
         "a", "dog", "ran"] + [f"w{i}" for i in range(30)]
TEXT = "the cats sat walking on the mat"
SHOWN = ["[CLS]", "the", "cat", "s", "sat", "walk", "ing", "on", "the", "mat", "[SEP]"]
LAYERS, HEADS = 2, 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bert_runs(tmp_path_factory):
    """A runs folder with an OATS run and a Wanda run of the same tiny BERT."""
    base = tmp_path_factory.mktemp("heads-app")
    folder = base / "tiny-bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    for method, cfg in (("oats", OatsConfig(compression=0.5, rank_ratio=0.3, iterations=3)),
                        ("wanda", OatsConfig(compression=0.5))):
        loaded = load_model(str(folder))
        ids = torch.randint(5, len(WORDS), (4, 12), generator=torch.Generator().manual_seed(0))
        run = compress_model(loaded.model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}], cfg,
                             method=method, model_name=str(folder))
        save_run(run, base / "runs" / f"tiny-bert-{method}")
    return base / "runs"


def _decode(v):
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(x) for x in str(v["shape"]).split(",")]) if "shape" in v else a
    return np.asarray(v)


def _open(runs: Path, method: str, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from ui.state import RUN_KEY
    monkeypatch.setenv("OATS_RUNS_DIR", str(runs))
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state[RUN_KEY] = str(runs / f"tiny-bert-{method}")
    at.run()
    at.switch_page("pages/heads.py")
    at.run()
    at.text_input(key="heads_text").set_value(TEXT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _page_text(at) -> str:
    """Every string the page shows: text elements, widget labels and options, chart titles,
    annotations, trace names, axis tick labels and hover texts."""
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "subheader", "title")
             for e in at.get(kind) if isinstance(getattr(e, "value", None), str)]
    for kind in ("selectbox", "radio", "select_slider"):
        for w in at.get(kind):
            parts.append(w.label)
            parts.extend(str(o) for o in w.options)
    for spec in _charts(at).values():
        parts.append(json.dumps(spec["layout"].get("title", {})))
        parts.extend(a.get("text", "") for a in spec["layout"].get("annotations", []))
        for ax in (k for k in spec["layout"] if k.startswith(("xaxis", "yaxis"))):
            parts.extend(str(t) for t in spec["layout"][ax].get("ticktext", []))
        for d in spec["data"]:
            parts.append(str(d.get("name", "")))
            for key in ("x", "y", "text"):
                if isinstance(d.get(key), list):
                    parts.append(json.dumps(d[key]))
    return "\n".join(parts)


def test_display_tokens_drop_tokenizer_marks():
    assert heads.display_tokens(["Ġmany", "##ing", "▁word", " the", "Ċ", "  ", "[CLS]", "#", "##"]) == \
        ["many", "ing", "word", "the", "⏎", "␣", "[CLS]", "#", "##"]
    assert heads.top_targets(np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], n=2) == "b (0.60), c (0.30)"


def test_focus_view_has_clean_token_labels_and_a_hover_that_reads_the_row(bert_runs, monkeypatch):
    at = _open(bert_runs, "oats", monkeypatch)
    run = load_run(bert_runs / "tiny-bert-oats")
    run.loaded = load_model(run.model_name)
    view = heads.explain_heads(run, text=TEXT)
    assert heads.display_tokens(view.tokens) == SHOWN and "##s" in view.tokens  # raw tokens keep the marks
    focus = _chart(at, f"Layer {LAYERS // 2}, head 0: where each token attends")
    assert [d["name"] for d in focus["data"]] == ["dense", "compressed (S + L)"]
    for ax in ("xaxis", "yaxis", "xaxis2", "yaxis2"):
        assert focus["layout"][ax]["ticktext"] == SHOWN
    for d, mode in zip(focus["data"], ("dense", "both")):
        z = view.maps[mode][LAYERS // 2][0]
        np.testing.assert_allclose(_decode(d["z"]), z, atol=1e-5)
        # the hover of every cell of row q lists where token q attends most
        for q in range(len(SHOWN)):
            assert d["customdata"][q] == [heads.top_targets(z[q], SHOWN)] * len(SHOWN)
        assert d["text"][2][4] == "<b>cat</b> → sat"
    assert "coloraxis" in focus["layout"] and focus["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "attention"
    # another head and variant redraw the view
    at.selectbox(key=f"heads_head_{bert_runs / 'tiny-bert-oats'}").set_value(3)
    at.selectbox(key=f"heads_focus_mode_{bert_runs / 'tiny-bert-oats'}").set_value("lowrank").run()
    focus = _chart(at, f"Layer {LAYERS // 2}, head 3")
    assert [d["name"] for d in focus["data"]] == ["dense", "low-rank-only"]
    np.testing.assert_allclose(_decode(focus["data"][1]["z"]), view.maps["lowrank"][LAYERS // 2][3], atol=1e-5)
    text = _page_text(at)
    assert "##" not in text and "None" not in text


def test_grid_labels_its_rows_level_in_the_margin_with_one_colour_bar(bert_runs, monkeypatch):
    at = _open(bert_runs, "oats", monkeypatch)
    grid = _chart(at, f"Layer {LAYERS // 2}: every head")
    rows = [a for a in grid["layout"]["annotations"] if not a["text"].startswith("head ")]
    assert [a["text"] for a in rows] == ["dense", "compressed (S + L)", "sparse-only", "low-rank-only"]
    for a in rows:  # level, right-aligned left of the first column, inside the left margin
        assert a["textangle"] == 0 and a["xanchor"] == "right" and a["x"] == 0
    assert grid["layout"]["margin"]["l"] >= 7 * len("compressed (S + L)")
    heat = [d for d in grid["data"] if d["type"] == "heatmap"]
    assert len(heat) == 4 * HEADS and all(d["coloraxis"] == "coloraxis" for d in heat)
    top = max(float(_decode(d["z"]).max()) for d in heat)
    assert grid["layout"]["coloraxis"]["cmin"] == 0 and grid["layout"]["coloraxis"]["cmax"] == pytest.approx(top)
    assert "##" not in json.dumps(heat[0]["text"])


def test_a_wanda_run_offers_no_single_term_model_anywhere(bert_runs, monkeypatch):
    at = _open(bert_runs, "wanda", monkeypatch)
    text = _page_text(at)
    assert "low-rank-only" not in text and "sparse-only" not in text and "S + L" not in text
    assert "compressed (sparse)" in text and "None" not in text
    mode = at.selectbox(key=f"heads_focus_mode_{bert_runs / 'tiny-bert-wanda'}")
    assert mode.options == ["compressed (sparse)"]
    grid = _chart(at, f"Layer {LAYERS // 2}: every head")
    assert len([d for d in grid["data"] if d["type"] == "heatmap"]) == 2 * HEADS


def test_the_diff_of_two_runs_matches_a_direct_computation(bert_runs, monkeypatch):
    at = _open(bert_runs, "oats", monkeypatch)
    key = f"heads_other_{bert_runs / 'tiny-bert-oats'}"
    other = str(bert_runs / "tiny-bert-wanda")
    assert at.selectbox(key=key).options[1:] == ["tiny-bert-wanda"]
    at.selectbox(key=key).set_value(other).run()
    assert not at.exception and not at.error
    layer = LAYERS // 2
    views = {}
    for m in ("oats", "wanda"):
        run = load_run(bert_runs / f"tiny-bert-{m}")
        run.loaded = load_model(run.model_name)
        views[m] = heads.explain_heads(run, text=TEXT)
    js_a = views["oats"].distance["both"][layer]
    js_b = views["wanda"].distance["both"][layer]
    a, b = views["oats"].maps["both"][layer], views["wanda"].maps["both"][layer]
    # by hand: the mean over query rows of JS(a_row, b_row) in bits
    m = 0.5 * (a + b)
    kl = lambda p, q: np.where(p > 0, p * np.log2(np.where(p > 0, p, 1) / np.where(q > 0, q, 1)), 0).sum(-1)
    js_ab = (0.5 * kl(a, m) + 0.5 * kl(b, m)).mean(-1)
    bars = _chart(at, f"Layer {layer}: each head's compressed attention, two runs")
    assert [d["name"] for d in bars["data"]] == ["OATS 50% vs dense", "Wanda 50% vs dense", "OATS 50% vs Wanda 50%"]
    for d, want in zip(bars["data"], (js_a, js_b, js_ab)):
        np.testing.assert_allclose(_decode(d["y"]).astype(float), want, atol=1e-6)
    closer = int((js_a < js_b).sum())
    head = int(np.argmax(js_ab))
    sentence = next(x.value for x in at.markdown if x.value.startswith(f"On layer {layer}, "))
    lead = "OATS 50%" if 2 * closer >= HEADS else "Wanda 50%"
    assert f"{lead}'s compressed heads stay closer" in sentence
    assert f"on {max(closer, HEADS - closer)} of {HEADS} heads" in sentence
    assert f"differ most on head {head} ({js_ab[head]:.3f} bits" in sentence
    # the chosen head side by side and their difference, on a scale centred at 0 with its colour bar
    maps = _chart(at, f"Layer {layer}, head 0: the two compressed models")
    np.testing.assert_allclose(_decode(maps["data"][2]["z"]), a[0] - b[0], atol=1e-6)
    axis = maps["layout"]["coloraxis2"]
    assert maps["data"][2]["coloraxis"] == "coloraxis2" and axis["cmid"] == 0 and axis["cmin"] == -axis["cmax"]
    assert axis["colorbar"]["title"]["text"] == "A − B"
    assert not [w for w in at.warning if "dense models differ" in w.value]  # one model: the same dense heads


def test_signed_token_maps_have_a_colour_bar_centred_at_zero():
    from oats.explain.text import TextExplanation
    from ui.head_figures import token_maps_figure
    ex = TextExplanation(task="encoder", tokens=["[CLS]", "Ġmany", "##ing"], target="t",
                         rollout={"dense": np.array([0.5, 0.3, 0.2]), "both": np.array([0.4, 0.4, 0.2])},
                         attributions={"dense": np.array([0.2, -0.4, 0.1]), "both": np.array([0.1, 0.1, -0.3])},
                         ablation={"dense": np.array([0.0, 0.2, -0.1]), "both": np.array([0.3, 0.0, 0.1])})
    fig = token_maps_figure(ex, {"both": "compressed (sparse)"}).to_plotly_json()
    signed = fig["layout"]["coloraxis2"]
    assert signed["cmid"] == 0 and signed["cmin"] == -1 and signed["cmax"] == 1 and signed["colorbar"]["title"]["text"]
    assert [d["coloraxis"] for d in fig["data"]] == ["coloraxis", "coloraxis2", "coloraxis2"]
    assert list(fig["data"][0]["x"]) == ["0:[CLS]", "1:many", "2:ing"]
    assert list(fig["data"][1]["y"]) == ["dense", "compressed (sparse)"]
    np.testing.assert_allclose(_decode(fig["data"][1]["z"])[1], [1 / 3, 1 / 3, -1])  # each row over its largest |value|
