"""oats.explain.heads: per-head maps, entropy and distance to dense, on tiny random models.

The divergences are checked against their definitions on known distributions, and
``explain_heads`` against attention read directly from the model in each mode.
"""

import copy
import types

import numpy as np
import pytest
import torch
import transformers
from tiny_models import batches, tiny_llama

from oats import OatsConfig, compress_model
from oats.errors import ConfigError
from oats.explain import heads


def test_entropy_and_js_divergence_on_known_distributions():
    k = 8
    uniform = np.full(k, 1 / k)
    assert heads.entropy(uniform) == pytest.approx(np.log(k))
    assert heads.entropy(np.eye(k)[3]) == 0.0
    assert heads.js_divergence(uniform, uniform) == pytest.approx(0.0, abs=1e-12)
    assert heads.js_divergence(np.eye(k)[0], np.eye(k)[1]) == pytest.approx(1.0)  # disjoint supports: 1 bit
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.0, 0.5, 0.5])
    # by hand: m = (1/4, 1/2, 1/4); H(m) = 1.5 bits, H(p) = H(q) = 1 bit
    assert heads.js_divergence(p, q) == pytest.approx(0.5)
    assert heads.js_divergence(p, q) == pytest.approx(heads.js_divergence(q, p))


class _Tokenizer:
    """Whitespace words to ids 1..; enough for a tiny Llama with a 64-token vocabulary."""

    def __call__(self, text, return_tensors="pt", truncation=True, max_length=48):
        ids = [1 + (sum(map(ord, w)) % 60) for w in text.split()][:max_length]
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}

    def decode(self, ids):
        return "".join(f"t{i}" for i in ids)


@pytest.fixture(scope="module")
def llama_run():
    model = tiny_llama(layers=2)
    run = compress_model(model, batches(), OatsConfig(compression=0.5, rank_ratio=0.25, iterations=3))
    run.loaded = types.SimpleNamespace(name="tiny", tokenizer=_Tokenizer(), task="causal-lm")
    return run


def _direct(run, mode, batch):
    model = copy.deepcopy(run.model)
    model.set_attn_implementation("eager")
    with run.use_mode(mode), torch.no_grad():
        for name, m in model.named_modules():
            if hasattr(m, "mode"):
                m.mode = run.modules()[name].mode
        return [a[0].numpy() for a in model(**batch, output_attentions=True).attentions]


def test_text_heads_match_attention_read_from_the_model(llama_run):
    run = llama_run
    text = "the cat sat on the mat and looked at the door"
    saved = {p: m.mode for p, m in run.modules().items()}
    view = heads.explain_heads(run, text=text)
    assert {p: m.mode for p, m in run.modules().items()} == saved  # modes restored
    batch, tokens = heads.tokenize(run.loaded, text)
    assert view.kind == "text" and view.tokens == tokens and len(tokens) == 11
    assert view.layers == 2 and view.heads == 4 and list(view.maps) == list(heads.MODES)
    dense = _direct(run, "dense", batch)
    for mode in ("both", "sparse", "lowrank"):
        other = _direct(run, mode, batch)
        for layer in range(2):
            np.testing.assert_allclose(view.maps[mode][layer], other[layer], atol=1e-5)
            a = other[layer]
            assert np.allclose(np.triu(a, 1), 0)  # causal: a row sees itself and the tokens before it
            np.testing.assert_allclose(view.entropy[mode][layer], heads.entropy(a).mean(-1), rtol=1e-5)
            np.testing.assert_allclose(view.distance[mode][layer],
                                       heads.js_divergence(a, dense[layer]).mean(-1), rtol=1e-5, atol=1e-9)
    assert np.all(view.distance["dense"] == 0)
    assert view.distance["sparse"].max() > 0 and view.distance["lowrank"].max() > 0
    rows = heads.changed_heads(view)
    assert len(rows) == 3 * 2 * 4
    d = [r["js_to_dense_bits"] for r in rows]
    assert d == sorted(d, reverse=True)
    top = rows[0]
    mode = {v: k for k, v in heads.MODE_LABELS.items()}[top["variant"]]
    assert top["js_to_dense_bits"] == view.distance[mode].max()
    both = view.distance["both"]
    layer, head = np.unravel_index(np.argmax(both), both.shape)
    assert f"layer {layer} head {head} changed most" in heads.summary(view)


def test_vision_heads_are_cls_to_patch_maps():
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, attn_implementation="eager"), add_pooling_layer=False).eval()
    cal = [{"pixel_values": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i))} for i in range(2)]
    run = compress_model(model, cal, OatsConfig(compression=0.5, rank_ratio=0.3, iterations=3), model_name="tiny-vit")
    image = np.random.default_rng(0).integers(0, 256, size=(40, 52, 3), dtype=np.uint8)
    view = heads.explain_heads(run, image=image)
    assert view.kind == "vision" and view.grid == (4, 4) and view.tokens[0] == "CLS" and len(view.tokens) == 17
    for mode in heads.MODES:
        for m in view.maps[mode]:
            assert m.shape == (4, 4, 4) and np.all(m >= 0) and np.all(m.sum(axis=(1, 2)) <= 1 + 1e-5)
    assert np.all(view.distance["dense"] == 0) and view.distance["both"].shape == (2, 4)
    assert np.all(view.entropy["dense"] <= np.log(17) + 1e-9)


def test_bad_input_is_one_clear_error(llama_run):
    with pytest.raises(ConfigError, match="type a text"):
        heads.explain_heads(llama_run, text="   ")
    with pytest.raises(ConfigError, match="the variants must include dense"):
        heads.explain_heads(llama_run, text="a b", modes=("both",))


# ----------------------------------------------------------------------------- Section 5 for text

from oats.explain import text as text_explain  # noqa: E402


def test_text_rollout_on_known_maps():
    eye = [np.eye(5)[None].repeat(2, axis=0)] * 3
    np.testing.assert_allclose(text_explain.text_rollout(eye, causal=True), np.eye(5)[-1])
    np.testing.assert_allclose(text_explain.text_rollout(eye, causal=False), np.full(5, 0.2))
    # one layer, uniform attention: (U + I) / 2, row 0 of an encoder's mean = (1/T + 1/2 * 1/T ... ) by hand
    u = [np.full((1, 4, 4), 0.25)]
    a = (np.full((4, 4), 0.25) + np.eye(4)) / 2
    np.testing.assert_allclose(text_explain.text_rollout(u, causal=True), a[-1], rtol=1e-6)


class _SpecialTokenizer(_Tokenizer):
    pad_token_id, unk_token_id, eos_token_id, all_special_ids = 0, None, 63, [0, 63]

    def __call__(self, text, **kw):
        b = super().__call__(text, **kw)
        b["input_ids"][0, -1] = 63  # the last token is special: the baseline keeps it
        return b


def test_integrated_gradients_complete_and_the_baseline_keeps_special_tokens(llama_run):
    run = llama_run
    run.loaded = types.SimpleNamespace(name="tiny", tokenizer=_SpecialTokenizer(), task="causal-lm")
    ids = torch.tensor([[5, 6, 7, 63]])
    assert text_explain.baseline_ids(ids, run.loaded.tokenizer).tolist() == [[0, 0, 0, 63]]
    saved = {p: m.mode for p, m in run.modules().items()}
    ex = text_explain.explain_text(run, "a b c d e f", steps=48)
    assert {p: m.mode for p, m in run.modules().items()} == saved
    assert list(ex.attributions) == list(heads.MODES) and len(ex.tokens) == 6
    for mode, attr in ex.attributions.items():
        fx, fb = ex.value[mode]
        # captum's delta is sum(attributions) - (f(x) - f(baseline)); it is small with 48 steps
        assert attr.sum() - (fx - fb) == pytest.approx(ex.delta[mode], abs=1e-4)
        assert abs(ex.delta[mode]) < 0.05 * abs(fx - fb) + 1e-4
        assert attr[-1] == 0.0  # the special token is the same in the baseline: no path, no attribution
        assert abs(ex.ablation[mode][-1]) < 1e-5 and ex.ablation[mode].shape == (6,)
    # token ablation by hand: f(text) - f(text with token 2 replaced by the pad token)
    from oats.explain.text import _forward_fn
    batch, _ = heads.tokenize(run.loaded, "a b c d e f")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad(), run.use_mode("dense"):
        ref = int(run.model(input_ids=ids).logits[0, -1].argmax())
        f = _forward_fn(run.model, "causal-lm", ref)
        hole = ids.clone()
        hole[0, 2] = 0
        assert ex.ablation["dense"][2] == pytest.approx(float(f(ids, mask)[0] - f(hole, mask)[0]), abs=1e-5)
    for mode in ex.attributions:
        assert ex.rollout[mode].sum() == pytest.approx(1.0, abs=1e-5)
    assert ex.value["both"][0] != ex.value["sparse"][0]
    maps = text_explain.overlap_maps(ex)
    assert set(maps) == {"attention rollout", "integrated gradients |attribution|", "token ablation |effect|"}
    assert text_explain.incomplete(ex) == []
    np.testing.assert_array_equal(maps["integrated gradients |attribution|"]["both"], np.abs(ex.attributions["both"]))


def test_encoder_attribution_needs_a_second_sentence_and_explains_similarity():
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        attn_implementation="eager"), add_pooling_layer=False).eval()
    cal = [{"input_ids": torch.randint(1, 63, (4, 12), generator=torch.Generator().manual_seed(i)),
            "attention_mask": torch.ones(4, 12, dtype=torch.long)} for i in range(2)]
    run = compress_model(model, cal, OatsConfig(compression=0.5, rank_ratio=0.25, iterations=3))
    run.loaded = types.SimpleNamespace(name="tiny-bert", tokenizer=_SpecialTokenizer(), task="encoder")
    with pytest.raises(ConfigError, match="second sentence"):
        text_explain.explain_text(run, "a b c", second="")
    ex = text_explain.explain_text(run, "a b c d", second="a b x y", steps=32)
    assert "cosine" in ex.target and ex.task == "encoder"
    fx, fb = ex.value["dense"]
    assert -1 <= fx <= 1 and abs(ex.delta["dense"]) < 0.05 * abs(fx - fb) + 1e-4
    np.testing.assert_allclose(ex.rollout["dense"].sum(), 1.0, rtol=1e-5)
    with pytest.raises(Exception, match="language models"):
        text_explain.explain_text(types.SimpleNamespace(loaded=types.SimpleNamespace(task="vision")), "a")


def test_a_one_term_run_has_no_single_term_variants(llama_run):
    """A Wanda run (rank 0) has no low-rank-only model: the heads view, its table and summary
    list dense and the compressed model only, named after the sparse term."""
    run = copy.copy(llama_run)  # the same model, recorded as a Wanda run
    run.method = "wanda"
    view = heads.explain_heads(run, text="a b c d e f")
    assert list(view.maps) == ["dense", "both"]
    assert {r["variant"] for r in heads.changed_heads(view)} == {"compressed (sparse)"}
    text = heads.summary(view)
    assert "low-rank" not in text and "sparse-only" not in text and text.startswith(
        "Median Jensen-Shannon divergence of a head to its dense self (bits): compressed (sparse) ")
    # the OATS run itself still has all four
    assert list(heads.explain_heads(llama_run, text="a b c d e f").maps) == ["dense", "both", "sparse", "lowrank"]


def test_integrated_gradients_double_their_steps_until_complete(llama_run):
    """With max_steps, a variant whose attributions miss completeness at the steps asked for gets
    twice as many (up to max_steps); a complete one keeps its steps and its numbers."""
    run = llama_run
    run.loaded = types.SimpleNamespace(name="tiny", tokenizer=_SpecialTokenizer(), task="causal-lm")
    few = text_explain.explain_text(run, "a b c d e f", steps=2)
    assert set(few.steps_used.values()) == {2}
    short = text_explain.incomplete(few)
    assert short, {m: (few.delta[m], few.value[m]) for m in few.delta}  # two points on the path are too few
    more = text_explain.explain_text(run, "a b c d e f", steps=2, max_steps=64)
    assert more.steps == 2
    for mode in few.delta:
        n = more.steps_used[mode]
        if mode in short:
            assert n > 2 and (text_explain.complete(more.delta[mode], *more.value[mode]) or n == 64)
            assert abs(more.delta[mode]) < abs(few.delta[mode])
        else:
            assert n == 2 and more.delta[mode] == pytest.approx(few.delta[mode], abs=1e-7)
    assert text_explain.incomplete(more) == [m for m in short if more.steps_used[m] == 64]
    # the rule itself: within a tenth of f(text) - f(baseline)
    assert text_explain.complete(0.1, 1.0, 0.0) and not text_explain.complete(0.11, 1.0, 0.0)
    with pytest.raises(ConfigError, match="at least 4"):
        text_explain.explain_text(run, "a b c", steps=4, max_steps=2)
