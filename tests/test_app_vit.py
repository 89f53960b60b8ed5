"""The ViT page through app.py with Streamlit's AppTest: the charts' data, the table, errors.

Fast tests use runs of tiny random models saved as local model folders (so ``load_run`` finds
them offline); the integration test fills the page from a real ``dinov2-small`` run.
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from oats import OatsConfig, compress_model
from oats.runs.folders import save_run
from oats.models.zoo import load_model

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGE = "pages/vit.py"
IMAGE, PATCH, LAYERS = 32, 8, 2
TITLES = ["dense", "compressed (S + L)", "sparse-only", "low-rank-only"]  # an OATS run: every variant
PAIRS = {f"{a} vs {b}" for i, a in enumerate(TITLES) for b in TITLES[i + 1:]}


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _heatmaps(spec: dict) -> list[dict]:
    return [d for d in spec["data"] if d["type"] == "heatmap"]


def _open(runs: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("OATS_RUNS_DIR", str(runs))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, at.exception
    return at


def _check_overlap_table(df, n_rows: int) -> None:
    assert list(df.columns) == ["map", "pair", "spearman", "top-k IoU", "k"]
    assert len(df) == n_rows
    assert set(df["pair"]) == PAIRS
    assert df["spearman"].between(-1, 1).all()
    assert df["top-k IoU"].between(0, 1).all()


def _check_rollout_chart(spec: dict, grid: tuple[int, int]) -> None:
    heat = _heatmaps(spec)
    assert len(heat) == len(TITLES) and sum(d["type"] == "image" for d in spec["data"]) == len(TITLES)
    assert [a["text"] for a in spec["layout"]["annotations"]] == TITLES
    for d in heat:
        z = np.asarray(d["z"])
        assert z.shape == grid
        assert z.min() == 0.0 and z.max() == 1.0  # rescaled within the panel
        raw = np.asarray(d["customdata"])
        assert raw.shape == grid and np.all(raw >= 0) and raw.sum() <= 1 + 1e-6  # shares of CLS attention


@pytest.fixture(scope="module")
def tiny_vit_runs(tmp_path_factory):
    """A runs folder with one OATS run of a tiny random ViT saved as a local model folder."""
    base = tmp_path_factory.mktemp("vit-app")
    folder = base / "tiny-vit-model"
    torch.manual_seed(0)
    transformers.ViTModel(transformers.ViTConfig(
        image_size=IMAGE, patch_size=PATCH, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64)).save_pretrained(folder)
    loaded = load_model(str(folder))
    batches = [{"pixel_values": torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(i))}
               for i in range(2)]
    run = compress_model(loaded.model, batches, OatsConfig(compression=0.5, rank_ratio=0.3, iterations=3),
                         model_name=str(folder))
    save_run(run, base / "runs" / "tiny-vit")
    return base / "runs"


@pytest.fixture(scope="module")
def tiny_vit_wanda_runs(tiny_vit_runs, tmp_path_factory):
    """A runs folder with a Wanda run of the same tiny ViT (one term: no single-term models)."""
    folder = tiny_vit_runs.parent / "tiny-vit-model"
    loaded = load_model(str(folder))
    batches = [{"pixel_values": torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(i))}
               for i in range(2)]
    run = compress_model(loaded.model, batches, OatsConfig(compression=0.5), method="wanda", model_name=str(folder))
    base = tmp_path_factory.mktemp("vit-wanda")
    save_run(run, base / "tiny-vit-wanda")
    return base


def test_page_draws_three_models_per_layer_view_and_overlap_table(tiny_vit_runs, monkeypatch):
    at = _open(tiny_vit_runs, monkeypatch)
    assert not at.error and not at.warning
    grid = (IMAGE // PATCH, IMAGE // PATCH)
    rollout, layers = _charts(at)
    _check_rollout_chart(rollout, grid)
    heat = _heatmaps(layers)
    assert len(heat) == len(TITLES) * LAYERS
    assert all(np.asarray(d["z"]).shape == grid for d in heat)
    assert [h["name"] for h in heat[:LAYERS]] == [f"dense, layer {i + 1}" for i in range(LAYERS)]
    assert [h["name"] for h in heat[LAYERS:2 * LAYERS]] == [f"compressed (S + L), layer {i + 1}" for i in range(LAYERS)]
    # the photo under every small map, the maps see-through over it, one colour bar
    assert sum(d["type"] == "image" for d in layers["data"]) == len(heat)
    assert all(0 < d["opacity"] < 1 for d in heat) and sum(bool(d.get("showscale")) for d in heat) == 1
    rows = [a for a in layers["layout"]["annotations"] if a["text"] in TITLES]  # level, in the left margin
    assert [a["text"] for a in rows] == TITLES and all(a.get("textangle", 0) == 0 and a["xanchor"] == "right" for a in rows)
    _check_overlap_table(at.dataframe[0].value, 6)
    assert set(at.dataframe[0].value["map"]) == {"attention rollout"}
    assert at.get("download_button")

    # the controls reach the maps: no discarding gives other rollout values
    before = [np.asarray(d["customdata"]) for d in _heatmaps(rollout)]
    at.slider(key="vit_discard").set_value(0.0).run()
    after = [np.asarray(d["customdata"]) for d in _heatmaps(_charts(at)[0])]
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, after)) > 1e-5
    # the per-layer view switches to rollout up to each layer: its last layer is the rollout
    at.radio(key="vit_layer_view").set_value("rollout up to each layer").run()
    rollout, layers = _charts(at)
    last = [np.asarray(h["customdata"]) for h in _heatmaps(layers)[LAYERS - 1::LAYERS]]
    for a, b in zip(last, _heatmaps(rollout)):
        np.testing.assert_allclose(a, np.asarray(b["customdata"]), atol=1e-6)


def _shown(at) -> str:
    """Every string the page shows: text elements, widget options, chart titles and trace names,
    table cells."""
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "subheader", "title")
             for e in at.get(kind) if isinstance(getattr(e, "value", None), str)]
    parts += [str(o) for kind in ("selectbox", "radio") for w in at.get(kind) for o in w.options]
    for spec in _charts(at):
        parts += [a.get("text", "") for a in spec["layout"].get("annotations", [])]
        parts += [str(d.get("name", "")) for d in spec["data"]]
    parts += [df.value.to_csv() for df in at.dataframe]
    return "\n".join(parts)


def test_a_wanda_run_shows_dense_and_its_compressed_model_only(tiny_vit_wanda_runs, monkeypatch):
    at = _open(tiny_vit_wanda_runs, monkeypatch)
    assert not at.error and not at.warning
    rollout, layers = _charts(at)
    assert [a["text"] for a in rollout["layout"]["annotations"]] == ["dense", "compressed (sparse)"]
    assert len(_heatmaps(layers)) == 2 * LAYERS
    assert list(at.dataframe[0].value["pair"]) == ["dense vs compressed (sparse)"]
    shown = _shown(at)
    assert "low-rank-only" not in shown and "sparse-only" not in shown and "S + L" not in shown
    assert "None" not in shown
    at.select_slider(key="vit_steps").set_value(8)
    at.button(key="vit_attr_button").click().run()
    assert not at.exception and not at.error
    for spec in _charts(at)[2:]:
        assert [a["text"] for a in spec["layout"]["annotations"]] == ["dense", "compressed (sparse)"]
    assert "low-rank-only" not in _shown(at)


def test_heads_page_draws_vit_heads_over_the_photo(tiny_vit_runs, monkeypatch):
    from oats.explain import heads
    from oats.runs.folders import load_run
    at = _open(tiny_vit_runs, monkeypatch)
    at.switch_page("pages/heads.py")
    at.run()
    assert not at.exception and not at.error
    specs = {s["layout"]["title"]["text"]: s for s in _charts(at)}
    grid = next(v for k, v in specs.items() if k.startswith(f"Layer {LAYERS // 2}: every head"))
    heat = _heatmaps(grid)
    assert len(heat) == len(TITLES) * 4 and sum(d["type"] == "image" for d in grid["data"]) == len(heat)
    assert all(0 < d["opacity"] < 1 and d["coloraxis"] == "coloraxis" for d in heat)
    assert grid["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "attention"
    rows = [a for a in grid["layout"]["annotations"] if a["text"] in TITLES]
    assert [a["text"] for a in rows] == TITLES and all(a["textangle"] == 0 for a in rows)
    # the head up close: the dense and compressed map of head 0 over the photo, raw values in the hover
    run = load_run(tiny_vit_runs / "tiny-vit")
    from oats.data import bundled_images
    view = heads.explain_heads(run, image=bundled_images()[at.selectbox(key="heads_photo").value])
    focus = next(v for k, v in specs.items() if k.startswith(f"Layer {LAYERS // 2}, head 0"))
    assert [a["text"] for a in focus["layout"]["annotations"]] == ["dense", "compressed (S + L)"]
    for d, mode in zip(_heatmaps(focus), ("dense", "both")):
        np.testing.assert_allclose(np.asarray(d["customdata"]), view.maps[mode][LAYERS // 2][0], atol=1e-5)


def test_attributions_on_a_button_add_charts_and_table_rows(tiny_vit_runs, monkeypatch):
    at = _open(tiny_vit_runs, monkeypatch)
    assert len(_charts(at)) == 2 and any("Compute attributions" in i.value for i in at.info)
    at.select_slider(key="vit_steps").set_value(8)
    at.selectbox(key="vit_second").set_value("input_x_gradient")
    at.button(key="vit_attr_button").click().run()
    assert not at.exception and not at.error
    charts = _charts(at)
    assert len(charts) == 4
    for spec, title in zip(charts[2:], ["Integrated Gradients", "Input × Gradient"]):
        assert spec["layout"]["title"]["text"] == title
        heat = _heatmaps(spec)
        assert [a["text"] for a in spec["layout"]["annotations"]] == TITLES
        assert all(np.asarray(d["z"]).shape == (IMAGE // PATCH,) * 2 for d in heat)
        assert all(np.isfinite(np.asarray(d["customdata"])).all() for d in heat)
    df = at.dataframe[0].value
    _check_overlap_table(df, 18)
    assert list(dict.fromkeys(df["map"])) == ["attention rollout", "Integrated Gradients", "Input × Gradient"]
    # results stay on later reruns with the same settings (no second button press)
    at.slider(key="vit_topk").set_value(25).run()
    assert len(_charts(at)) == 4 and len(at.dataframe[0].value) == 18
    assert (at.dataframe[0].value["k"] == 4).all()  # 25% of 16 patches


def test_upload_that_is_not_an_image_is_one_error_line(tiny_vit_runs, monkeypatch):
    at = _open(tiny_vit_runs, monkeypatch)
    at.radio(key="vit_source").set_value("upload").run()
    assert not at.get("plotly_chart") and any("Upload an image" in i.value for i in at.info)
    at.file_uploader(key="vit_upload").set_value(("holiday.png", b"this is not a picture", "image/png")).run()
    assert not at.exception
    assert len(at.error) == 1
    assert "holiday.png" in at.error[0].value and "not an image" in at.error[0].value
    assert "\n" not in at.error[0].value.strip()
    assert not at.get("plotly_chart")
    # a real image works
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    at.file_uploader(key="vit_upload").set_value(("noise.png", buf.getvalue(), "image/png")).run()
    assert not at.exception and not at.error
    _check_rollout_chart(_charts(at)[0], (IMAGE // PATCH, IMAGE // PATCH))


def test_a_text_model_run_gets_an_empty_state_saying_what_to_do(tmp_path, monkeypatch):
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32)).save_pretrained(folder)
    loaded = load_model(str(folder))
    ids = torch.randint(5, len(words), (4, 12), generator=torch.Generator().manual_seed(0))
    run = compress_model(loaded.model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}],
                         OatsConfig(iterations=3), model_name=str(folder))
    save_run(run, tmp_path / "runs" / "tiny-bert")
    at = _open(tmp_path / "runs", monkeypatch)
    assert not at.error and not at.get("plotly_chart")
    text = " ".join(i.value for i in at.info)
    assert "not a vision transformer" in text and "dinov2-small" in text and "encoder" in text


@pytest.mark.integration
def test_dinov2_small_fills_the_page(tmp_path, monkeypatch):
    from oats.data import calibration_batches

    loaded = load_model("dinov2-small")
    run = compress_model(loaded.model, calibration_batches(loaded, n_samples=4),
                         OatsConfig(compression=0.5, rank_ratio=0.2, iterations=5), model_name="dinov2-small")
    save_run(run, tmp_path / "runs" / "dinov2")
    at = _open(tmp_path / "runs", monkeypatch)
    assert not at.error
    rollout, layers = _charts(at)
    _check_rollout_chart(rollout, (16, 16))  # 224 px, 14 px patches
    assert len(_heatmaps(layers)) == len(TITLES) * 12
    _check_overlap_table(at.dataframe[0].value, 6)
    # the three models do not look at the same patches
    maps = [np.asarray(d["customdata"]) for d in _heatmaps(rollout)]
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[0], maps[2])
    at.select_slider(key="vit_steps").set_value(8)
    at.button(key="vit_attr_button").click().run()
    assert not at.exception and not at.error
    charts = _charts(at)
    assert len(charts) == 4
    for spec in charts[2:]:
        assert all(np.asarray(d["z"]).shape == (16, 16) for d in _heatmaps(spec))
    _check_overlap_table(at.dataframe[0].value, 18)


def _outliers_traced(runs: Path, monkeypatch) -> AppTest:
    """The Outliers page of the run in ``runs`` with its massive-activation view switched on."""
    at = _open(runs, monkeypatch)
    at.switch_page("pages/outliers.py")
    at.run()
    at.toggle(key="massive-on").set_value(True).run()
    return at


def test_outliers_page_traces_a_photo_through_a_vit(tiny_vit_runs, monkeypatch):
    from oats.data import bundled_images
    from oats.explain import activations
    from oats.runs.folders import load_run
    at = _outliers_traced(tiny_vit_runs, monkeypatch)
    assert not at.exception and not at.error
    specs = {s["layout"]["title"]["text"]: s for s in _charts(at)}
    heat = specs["Block 1 output: |h| per token and channel"]
    n = (IMAGE // PATCH) ** 2
    assert list(heat["data"][0]["y"])[:2] == ["CLS", "patch 0,0"] and len(heat["data"][0]["y"]) == n + 1
    run = load_run(tiny_vit_runs / "tiny-vit")
    photo = sorted(bundled_images())[0] if "chelsea" not in bundled_images() else "chelsea"
    prof = activations.massive_activations(run, activations.make_input(run, image=bundled_images()[photo]))
    import base64
    z = heat["data"][0]["z"]
    if isinstance(z, dict):  # Plotly's binary array encoding
        z = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"])).reshape(
            [int(v) for v in str(z["shape"]).split(",")])
    np.testing.assert_allclose(np.asarray(z, dtype=float),
                               np.log10(np.maximum(prof.modes["dense"].magnitudes[1], 1e-6)), rtol=1e-5)
    # this run's manifest names no task: the intervention says why it cannot measure
    assert any("no metric to measure the intervention" in i.value for i in at.info)


def test_outliers_page_traces_an_uploaded_photo_and_refuses_a_bad_one(tiny_vit_runs, monkeypatch):
    at = _outliers_traced(tiny_vit_runs, monkeypatch)
    at.selectbox(key="massive-photo").set_value("upload your own ...").run()
    assert not at.exception and any("Upload an image to trace" in i.value for i in at.info)
    at.file_uploader(key="massive-upload").set_value(("holiday.png", b"not a picture", "image/png")).run()
    assert not at.exception and len(at.error) == 1 and "holiday.png" in at.error[0].value
    assert "\n" not in at.error[0].value.strip()
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    at.file_uploader(key="massive-upload").set_value(("noise.png", buf.getvalue(), "image/png")).run()
    assert not at.exception and not at.error
    titles = [s["layout"]["title"]["text"] for s in _charts(at)]
    assert "Largest activation magnitudes along depth" in titles and "Block 1 output: |h| per token and channel" in titles
