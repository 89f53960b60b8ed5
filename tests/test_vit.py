"""oats.explain.vit and oats.vit_figures on tiny random ViTs built in the test (no downloads).

Rollout is checked against hand-computed examples, attributions against their definitions
(IG completeness, gradient x input), and ``explain`` against an uncompressed copy of the model.
"""

import copy
import re
import types

import numpy as np
import pytest
import torch
import transformers

from oats import OatsConfig, compress_model

from oats.explain import vit
from oats.models import vision
from oats.errors import ConfigError, DataError, UnsupportedModelError
from ui.vit_figures import OVERLAP_COLUMNS, layers_figure, overlap_frame, overlay_figure

IMAGE, PATCH, HIDDEN, LAYERS = 32, 8, 32, 2
GRID = (IMAGE // PATCH, IMAGE // PATCH)
TOKENS = 1 + GRID[0] * GRID[1]


def _hf_vit():
    torch.manual_seed(0)
    return transformers.ViTModel(transformers.ViTConfig(
        image_size=IMAGE, patch_size=PATCH, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=2 * HIDDEN, attn_implementation="eager"), add_pooling_layer=False).eval()


def _dinov2():
    # default (SDPA) attention on purpose: attention_maps must switch it to eager
    torch.manual_seed(0)
    return transformers.Dinov2Model(transformers.Dinov2Config(
        image_size=IMAGE, patch_size=PATCH, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        mlp_ratio=2)).eval()


def _timm_vit():
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMAGE, patch_size=PATCH,
                             depth=LAYERS, embed_dim=HIDDEN, num_heads=2, num_classes=10).eval()


BUILDERS = {"hf-vit": _hf_vit, "dinov2": _dinov2, "timm-vit": _timm_vit}
HEADS = {"hf-vit": 4, "dinov2": 4, "timm-vit": 2}


def _pixels(seed=0, n=1):
    return torch.randn(n, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def _photo(seed=0, h=40, w=52):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- attention maps


@pytest.mark.parametrize("name", list(BUILDERS))
def test_attention_maps_one_softmaxed_map_per_layer(name):
    model = BUILDERS[name]()
    maps = vit.attention_maps(model, _pixels())
    assert len(maps) == LAYERS
    for a in maps:
        assert a.shape == (HEADS[name], TOKENS, TOKENS)
        assert np.all(a >= 0)
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(maps[0], maps[1])  # each layer its own map
    assert vit.patch_grid(model, _pixels()) == GRID


def test_timm_attention_matches_softmax_of_queries_and_keys_and_restores_fused_flag():
    model = _timm_vit()
    for blk in model.blocks:
        blk.attn.fused_attn = True
    seen = {}
    hook = model.blocks[0].attn.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0].detach()))
    maps = vit.attention_maps(model, _pixels(3))
    hook.remove()
    assert all(blk.attn.fused_attn for blk in model.blocks)  # restored
    attn = model.blocks[0].attn
    x = seen["x"][0]  # (T, D)
    q, k, _ = attn.qkv(x).reshape(TOKENS, 3, attn.num_heads, -1).permute(1, 2, 0, 3)
    expected = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
    np.testing.assert_allclose(maps[0], expected.detach().numpy(), atol=1e-5)


def test_hf_sdpa_model_is_switched_to_eager_and_gives_the_same_features():
    model = _dinov2()
    px = _pixels(1)
    with torch.no_grad():
        before = vit.cls_features(model, px)
    maps = vit.attention_maps(model, px)
    assert len(maps) == LAYERS
    with torch.no_grad():
        after = vit.cls_features(model, px)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)


def test_attention_maps_refuse_a_text_model_and_a_batch():
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UnsupportedModelError):
        vit.attention_maps(bert, _pixels())
    with pytest.raises(DataError):
        vit.attention_maps(_hf_vit(), _pixels(n=2))


# ----------------------------------------------------------------------------- rollout

A1 = np.array([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
A2 = np.array([[0.2, 0.4, 0.4], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
D = np.array([[0.1, -0.1, 0.0], [0.0, 0.1, -0.1], [0.05, 0.0, -0.05]])  # rows sum to 0


def test_rollout_two_layers_by_hand():
    # (A + I)/2 keeps rows stochastic here: B1 row 0 = [.75 .125 .125], B2 row 0 = [.6 .2 .2].
    # CLS row of B2 @ B1: [.6*.75+.2*.1+.2*.05, .6*.125+.2*.8+.2*.05, .6*.125+.2*.1+.2*.9]
    #                   = [.48, .245, .275]
    atts = [A1[None], A2[None]]
    np.testing.assert_allclose(vit.rollout(atts, discard_ratio=0.0, grid=(1, 2)), [[0.245, 0.275]], atol=1e-6)
    layers = vit.rollout_layers(atts, discard_ratio=0.0, grid=(1, 2))
    assert layers.shape == (2, 1, 2)
    np.testing.assert_allclose(layers[0], [[0.125, 0.125]], atol=1e-6)
    np.testing.assert_allclose(layers[1], [[0.245, 0.275]], atol=1e-6)
    # two heads whose mean is A1 give the same result under mean fusion
    heads = np.stack([A1 + D, A1 - D])
    np.testing.assert_allclose(vit.rollout([heads, A2[None]], "mean", 0.0, (1, 2)), [[0.245, 0.275]], atol=1e-6)


def test_max_and_min_fusion_renormalise_rows():
    heads = np.stack([A1 + D, A1 - D])
    # heads' row 0: [.6 .15 .25] and [.4 .35 .25]
    # max: [.6 .35 .25] -> (+I)/2 = [.8 .175 .125], sum 1.1
    np.testing.assert_allclose(vit.rollout([heads], "max", 0.0, (1, 2)), [[0.175 / 1.1, 0.125 / 1.1]], atol=1e-6)
    # min: row 0 = [.4 .15 .25] -> (+I)/2 = [.7 .075 .125], sum 0.9
    np.testing.assert_allclose(vit.rollout([heads], "min", 0.0, (1, 2)), [[0.075 / 0.9, 0.125 / 0.9]], atol=1e-6)


def test_discard_ratio_drops_the_lowest_entries_but_never_cls_to_cls():
    a = np.array([[0.7, 0.05, 0.25], [0.3, 0.4, 0.3], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(vit.rollout([a[None]], discard_ratio=0.0, grid=(1, 2)), [[0.025, 0.125]], atol=1e-6)
    # 0.12 * 9 entries -> 1 dropped: the 0.05 in the CLS row; row 0 = [.85 0 .125] / .975
    np.testing.assert_allclose(vit.rollout([a[None]], discard_ratio=0.12, grid=(1, 2)),
                               [[0.0, 0.125 / 0.975]], atol=1e-6)
    # CLS->CLS is the smallest entry: it is kept, the next smallest (row 2) goes instead
    b = np.array([[0.01, 0.49, 0.5], [0.3, 0.4, 0.3], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(vit.rollout([b[None]], discard_ratio=0.12, grid=(1, 2)), [[0.245, 0.25]], atol=1e-6)


def test_discard_ratio_changes_real_maps():
    maps = vit.attention_maps(_hf_vit(), _pixels())
    r0 = vit.rollout(maps, discard_ratio=0.0)
    r6 = vit.rollout(maps, discard_ratio=0.6)
    assert r0.shape == r6.shape == GRID
    assert np.abs(r0 - r6).max() > 1e-4
    for fusion in vit.HEAD_FUSIONS:
        for ratio in (0.0, 0.4, 0.9):
            layers = vit.rollout_layers(maps, fusion, ratio)
            # every rolled-out matrix is row-stochastic: the CLS row's patch share is in (0, 1]
            assert np.all(layers >= 0) and np.all(layers.sum(axis=(1, 2)) <= 1 + 1e-6)
            if ratio == 0.0:  # softmax attention is positive everywhere until entries are dropped
                assert np.all(layers > 0)


def test_uniform_and_identity_attention_give_known_maps():
    n_layers = 3
    uniform = [np.full((2, TOKENS, TOKENS), 1.0 / TOKENS)] * n_layers
    # B = (U + I)/2, U idempotent: B^L = (1 - 2^-L) U + 2^-L I, so every patch gets (1 - 2^-L)/T
    r = vit.rollout(uniform, discard_ratio=0.0)
    np.testing.assert_allclose(r, np.full(GRID, (1 - 2.0**-n_layers) / TOKENS), atol=1e-7)
    # identity attention: the CLS token only ever attends to itself; no patch gets anything
    ident = [np.stack([np.eye(TOKENS)] * 2)] * n_layers
    np.testing.assert_allclose(vit.rollout(ident, discard_ratio=0.4), np.zeros(GRID), atol=1e-12)


def test_prefix_tokens_such_as_registers_are_left_out():
    # CLS, 1 register, 2x2 patches
    a = np.eye(6)
    a[0] = [0.2, 0.4, 0.1, 0.1, 0.1, 0.1]
    r = vit.rollout([a[None]], discard_ratio=0.0, grid=(2, 2))
    np.testing.assert_allclose(r, np.full((2, 2), 0.05), atol=1e-7)
    with pytest.raises(DataError):
        vit.rollout([a[None]], discard_ratio=0.0)  # 5 non-CLS tokens: not a square grid


def test_cls_attention_layers_read_each_layer_alone():
    layers = vit.cls_attention_layers([A1[None], A2[None]], grid=(1, 2))
    np.testing.assert_allclose(layers, [[[0.25, 0.25]], [[0.4, 0.4]]])


@pytest.mark.parametrize("kw", [{"head_fusion": "median"}, {"discard_ratio": 1.0}, {"discard_ratio": -0.1},
                                {"discard_ratio": "0.4"}])
def test_rollout_settings_are_validated(kw):
    with pytest.raises(ConfigError):
        vit.rollout([A1[None]], grid=(1, 2), **kw)


# ----------------------------------------------------------------------------- overlap


def test_overlap_of_known_maps():
    a = np.arange(10.0)
    same = vit.overlap(a, a.copy(), k=3)
    assert same == {"spearman": pytest.approx(1.0), "topk_iou": 1.0}
    rev = vit.overlap(a, -a, k=3)
    assert rev["spearman"] == pytest.approx(-1.0) and rev["topk_iou"] == 0.0
    b = a.copy()
    b[7], b[0] = 0.0, 7.0  # ranks of two patches swapped, 7 places apart
    o = vit.overlap(a.reshape(2, 5), b.reshape(2, 5), k=3)
    assert o["spearman"] == pytest.approx(1 - 6 * (2 * 7**2) / (10 * (10**2 - 1)))
    assert o["topk_iou"] == pytest.approx(2 / 4)  # {9, 8, 7} vs {9, 8, 0}
    assert np.isnan(vit.overlap(np.ones(10), a)["spearman"])
    assert vit.default_k(256) == 26 and vit.default_k(3) == 1


def test_overlap_refuses_mismatched_maps_and_bad_k():
    with pytest.raises(DataError):
        vit.overlap(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ConfigError):
        vit.overlap(np.arange(4.0), np.arange(4.0), k=5)


def test_overlap_rows_cover_every_pair_of_models():
    rng = np.random.default_rng(0)
    maps = {"rollout": {m: rng.random(GRID) for m in vit.MODES}}
    rows = vit.overlap_rows(maps, k=4)
    assert [r["pair"] for r in rows] == ["dense vs sparse-only", "dense vs low-rank-only",
                                         "sparse-only vs low-rank-only"]
    assert rows[0]["spearman"] == pytest.approx(vit.overlap(maps["rollout"]["dense"], maps["rollout"]["sparse"],
                                                            4)["spearman"])
    df = overlap_frame(rows)
    assert list(df.columns) == OVERLAP_COLUMNS and len(df) == 3
    assert set(df["map"]) == {"attention rollout"}


# ----------------------------------------------------------------------------- attributions


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("method", list(vit.ATTRIBUTION_METHODS))
def test_attributions_are_finite_patch_maps(name, method):
    model = BUILDERS[name]()
    m = vit.attributions(model, _pixels(2), method, "cls-norm", steps=4, internal_batch_size=4)
    assert m.shape == GRID and m.dtype == np.float32
    assert np.all(np.isfinite(m)) and np.all(m >= 0) and m.max() > 0
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated on the model


def test_integrated_gradients_complete_to_the_target_difference():
    model = _hf_vit()
    px = _pixels(4)
    d = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(1))
    target = vit.make_target(d)
    attr = vit.pixel_attributions(model, px, "ig", d, steps=64, internal_batch_size=16)
    with torch.no_grad():
        gap = float(target(vit.cls_features(model, px)) - target(vit.cls_features(model, torch.zeros_like(px))))
    assert float(attr.sum()) == pytest.approx(gap, rel=0.05, abs=1e-3)


def test_gradient_methods_match_autograd():
    model = _timm_vit()
    px = _pixels(5).requires_grad_(True)
    vit.cls_features(model, px).norm(dim=-1).sum().backward()
    grad = px.grad.detach()
    sal = vit.pixel_attributions(model, px.detach(), "saliency", "cls-norm")
    ixg = vit.pixel_attributions(model, px.detach(), "input_x_gradient", "cls-norm")
    torch.testing.assert_close(sal, grad.abs(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ixg, grad * px.detach(), atol=1e-5, rtol=1e-4)


def test_pool_to_patches_sums_channels_and_averages_patches():
    attr = torch.zeros(1, 3, 16, 24)
    attr[0, 0, :8, :8] = 1.0
    attr[0, 1, :8, :8] = -2.0  # |.| summed over channels: 3 in the first patch
    attr[0, 2, 8, 8] = 4.0  # one pixel of the (1, 1) patch: 4 / 64
    out = vit.pool_to_patches(attr, (8, 8))
    expected = np.zeros((2, 3), dtype=np.float32)
    expected[0, 0], expected[1, 1] = 3.0, 4.0 / 64
    np.testing.assert_allclose(out, expected)


def test_targets():
    model = _hf_vit()
    px = _pixels(6)
    with torch.no_grad():
        f = vit.cls_features(model, px)
        own = vit.make_target("cls-direction", model, px)
        assert float(own(f)) == pytest.approx(float(f.norm()), rel=1e-5)  # projection onto itself
        assert float(vit.make_target("cls-norm")(f)) == pytest.approx(float(f.norm()), rel=1e-6)
        d = torch.zeros(HIDDEN)
        d[3] = 2.0
        assert float(vit.make_target(d)(f)) == pytest.approx(float(f[0, 3]), rel=1e-6)
    with pytest.raises(ConfigError):
        vit.make_target("logits")
    with pytest.raises(DataError):
        vit.make_target(torch.zeros(HIDDEN))
    with pytest.raises(ConfigError):
        vit.attributions(model, px, "gradcam")
    with pytest.raises(ConfigError):
        vit.attributions(model, px, "ig", steps=1)


# ----------------------------------------------------------------------------- the three models of a run


@pytest.fixture(scope="module")
def tiny_run():
    model = _hf_vit()
    dense = copy.deepcopy(model)
    batches = [{"pixel_values": _pixels(10 + i, n=4)} for i in range(2)]
    run = compress_model(model, batches, OatsConfig(compression=0.5, rank_ratio=0.3, iterations=3),
                         model_name="tiny-vit")
    return run, dense


def _modes(run):
    return {p: m.mode for p, m in run.modules().items()}


def test_explain_gives_three_models_and_restores_modes(tiny_run):
    run, dense = tiny_run
    paths = sorted(run.modules())
    run.set_mode("both")
    run.set_mode("sparse", layers=paths[:2])
    before = _modes(run)
    photo = _photo()
    maps = vit.explain(run, photo, head_fusion="max", discard_ratio=0.2)
    assert _modes(run) == before
    assert maps.grid == GRID and maps.image.shape == (IMAGE, IMAGE, 3) and maps.image.dtype == np.uint8
    assert set(maps.rollout) == set(vit.MODES) == set(maps.seconds)
    for mode in vit.MODES:
        assert maps.rollout[mode].shape == GRID
        assert maps.layer_rollout[mode].shape == maps.layer_attention[mode].shape == (LAYERS, *GRID)
        np.testing.assert_array_equal(maps.layer_rollout[mode][-1], maps.rollout[mode])
    # "dense" is the original model; sparse-only and low-rank-only are other models
    px, _ = vit.prepare_image(photo, vit.image_spec(run))
    expected = vit.rollout(vit.attention_maps(dense, px), "max", 0.2)
    np.testing.assert_allclose(maps.rollout["dense"], expected, atol=1e-6)
    assert np.abs(maps.rollout["sparse"] - maps.rollout["dense"]).max() > 1e-4
    assert np.abs(maps.rollout["lowrank"] - maps.rollout["sparse"]).max() > 1e-4
    run.set_mode("both")


def test_explain_restores_modes_when_a_model_fails(tiny_run, monkeypatch):
    run, _ = tiny_run
    run.set_mode("both")
    calls = []

    def failing(model, px):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(model, px)

    real = vit.attention_maps
    monkeypatch.setattr(vit, "attention_maps", failing)
    with pytest.raises(RuntimeError):
        vit.explain(run, _photo())
    assert set(_modes(run).values()) == {"both"}


def test_explain_attributions_share_the_dense_direction(tiny_run):
    run, dense = tiny_run
    run.set_mode("lowrank")
    photo = _photo(1)
    out = vit.explain_attributions(run, photo, methods=["ig", "saliency"], steps=4, internal_batch_size=4)
    assert set(_modes(run).values()) == {"lowrank"}
    assert out.target == "cls-direction" and out.grid == GRID
    for method in ("ig", "saliency"):
        for mode in vit.MODES:
            assert out.maps[method][mode].shape == GRID and np.all(np.isfinite(out.maps[method][mode]))
    px, _ = vit.prepare_image(photo, vit.image_spec(run))
    with torch.no_grad():
        direction = vit.cls_features(dense, px)[0]
    for method in ("ig", "saliency"):
        np.testing.assert_allclose(
            out.maps[method]["dense"],
            vit.attributions(dense, px, method, direction, steps=4, internal_batch_size=4), rtol=1e-4, atol=1e-7)
    # the low-rank-only model is explained along the dense direction, not its own
    with run.use_mode("lowrank"):
        own = vit.attributions(run.model, px, "saliency", "cls-direction")
    assert np.abs(own - out.maps["saliency"]["lowrank"]).max() > 1e-6
    run.set_mode("both")


def test_explain_refuses_a_non_vision_run_and_bad_settings(tiny_run):
    run, _ = tiny_run
    text_run = types.SimpleNamespace(family="bert", model_name="minilm-l6", loaded=None, model=None)
    assert not vit.is_vision_run(text_run) and vit.is_vision_run(run)
    with pytest.raises(UnsupportedModelError, match="not a vision transformer"):
        vit.explain(text_run, _photo())
    with pytest.raises(UnsupportedModelError):
        vit.explain_attributions(text_run, _photo())
    with pytest.raises(ConfigError):
        vit.explain(run, _photo(), head_fusion="median")
    with pytest.raises(ConfigError):
        vit.explain(run, _photo(), modes=["fast"])
    assert list(vit.explain(run, _photo(), modes=["both"]).rollout) == ["both"]  # the compressed model (S + L)
    assert vit.compared_modes(run) == ("dense", "both", "sparse", "lowrank")
    wanda = types.SimpleNamespace(**{**vars(run), "method": "wanda"})  # the same model, read as a Wanda run
    assert vit.compared_modes(wanda) == ("dense", "both")
    with pytest.raises(ConfigError, match="among dense, both"):
        vit.explain(wanda, _photo(), modes=["dense", "lowrank"])
    with pytest.raises(ConfigError):
        vit.explain_attributions(run, _photo(), methods=["gradcam"])
    with pytest.raises(DataError):
        vit.explain(run, np.zeros((5, 5, 2), dtype=np.uint8))


def test_image_spec_and_prepare_image():
    run = types.SimpleNamespace(loaded=None, model=_hf_vit())
    assert vit.image_spec(run) == (IMAGE, vision.IMAGENET_MEAN, vision.IMAGENET_STD)
    loaded = types.SimpleNamespace(image_size=24, image_mean=(0.5,) * 3, image_std=(0.25,) * 3)
    assert vit.image_spec(run, loaded) == (24, (0.5,) * 3, (0.25,) * 3)
    px, crop = vit.prepare_image(_photo(2, 30, 60), (24, (0.5,) * 3, (0.25,) * 3))
    assert px.shape == (1, 3, 24, 24) and crop.shape == (24, 24, 3)
    back = (torch.from_numpy(crop).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert float((back - px[0]).abs().max()) <= 0.5 / 255 / 0.25 + 1e-6


# ----------------------------------------------------------------------------- figures


def _check_no_placeholder_colours(fig):
    # Streamlit's front end rewrites hex colours #000001..#0000ff (its theme placeholders)
    # anywhere in a chart: Inferno's first colour, #000004, came out lavender.
    for t in fig.data:
        colours = [c for _, c in t.colorscale] if getattr(t, "colorscale", None) else []
        assert not [c for c in colours if re.fullmatch(r"#0000[0-9a-fA-F]{2}", c)]


def test_overlay_figure_has_one_patch_grid_heatmap_per_model():
    rng = np.random.default_rng(0)
    maps = {m: rng.random(GRID) for m in vit.MODES}
    fig = overlay_figure(np.zeros((IMAGE, IMAGE, 3), np.uint8), maps)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert [t.type for t in fig.data].count("image") == 3 and len(heat) == 3
    assert [a.text for a in fig.layout.annotations] == ["dense", "sparse-only", "low-rank-only"]
    for t, m in zip(heat, vit.MODES):
        z = np.asarray(t.z)
        assert z.shape == GRID and z.min() == 0.0 and z.max() == 1.0
        np.testing.assert_allclose(np.asarray(t.customdata), maps[m])
        # the cells tile the image: first centre at half a patch, step one patch
        assert t.dx == PATCH and t.x0 == pytest.approx(-0.5 + PATCH / 2)
    _check_no_placeholder_colours(fig)


def test_layers_figure_small_multiples():
    rng = np.random.default_rng(1)
    stacks = {m: rng.random((3, *GRID)) for m in vit.MODES}
    fig = layers_figure(stacks)
    assert len(fig.data) == 9
    assert all(np.asarray(t.z).shape == GRID for t in fig.data)
    assert [a.text for a in fig.layout.annotations][:3] == ["layer 1", "layer 2", "layer 3"]
    np.testing.assert_allclose(np.asarray(fig.data[4].customdata), stacks["sparse"][1])
    assert len(layers_figure(stacks, layers=[2]).data) == 3
    _check_no_placeholder_colours(fig)


def test_a_one_term_run_is_explained_dense_against_its_compressed_model(tiny_run):
    """A Wanda run has no low-rank-only model: by default its maps are dense and the compressed
    (sparse) model, and the single-term variants of a two-term run are still drawn for OATS."""
    run, _ = tiny_run
    wanda = copy.copy(run)  # the same model, recorded as a Wanda run
    wanda.method = "wanda"
    maps = vit.explain(wanda, _photo())
    assert list(maps.rollout) == ["dense", "both"]
    assert vit.mode_labels(wanda)["both"] == "compressed (sparse)"
    assert list(vit.explain(run, _photo()).rollout) == ["dense", "sparse", "lowrank"]
