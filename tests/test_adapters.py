"""Adapters end to end on tiny random models of every supported family (no downloads).

Each family's model (tests/tiny_models.py: CASES) is built from a config, compressed once (cached for the module) with
OatsConfig(compression=0.5, rank_ratio=0.25, iterations=5), then checked: the adapter and
the linears it finds, the budget accounting of every record, the four modes model-wide and
per layer, the factors of fused matrices, and GPT-2's transposed Conv1D weights. The last
tests cover unknown architectures (the error, and the generic adapter).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import transformers  # noqa: E402  (a dependency: missing is an error, not a skip)

from oats.models.adapters import get_adapter, supported_families  # noqa: E402
from oats.models.adapters.generic import GenericAdapter  # noqa: E402
from oats.errors import UnsupportedModelError  # noqa: E402
from oats.core.linear import MODES, OatsLinear  # noqa: E402
from oats.compress.pipeline import compress_model  # noqa: E402

from tiny_models import (BLOCKS, CASES, FAMILY_CFG as CFG, FUSED, HIDDEN, IMAGE, VOCAB, compressed,  # noqa: E402
                         output as _output)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(params=list(CASES))
def c(request):
    return compressed(request.param)


@pytest.fixture(params=FUSED)
def fused(request):
    return compressed(request.param)


def _out(c) -> torch.Tensor:
    with torch.no_grad():
        return _output(c.run.model, c.batch)


# ----------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("name", list(CASES))
def test_adapter_family_and_linears(name):
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().eval()
    adapter = get_adapter(model)
    assert adapter.family == case.family
    assert adapter.info(model)
    blocks = adapter.blocks(model)
    assert len(blocks) == BLOCKS
    for path, block in blocks:
        assert model.get_submodule(path) is block
        refs = adapter.linears(model, block)
        assert tuple(r.name for r in refs) == case.names
        assert len({r.path for r in refs}) == case.modules_per_block
        for r in refs:
            assert r.kind in ("attn", "mlp")
            block.get_submodule(r.path)  # exists


def test_records_count_and_names(c):
    run, case = c.run, c.case
    assert run.family == case.family
    assert len(run.layers) == BLOCKS * len(case.names)
    assert [r.name for r in run.layers] == list(case.names) * BLOCKS
    assert [r.block for r in run.layers] == [b for b in range(BLOCKS) for _ in case.names]
    assert len(run.modules()) == BLOCKS * case.modules_per_block
    assert {r.path for r in run.layers} == set(run.modules())
    assert len(run.blocks) == BLOCKS


def test_everything_finite(c):
    for r in c.run.layers:
        assert math.isfinite(r.scaled_error) and 0 <= r.scaled_error < 1, r.qualname
        assert r.output_error is not None and math.isfinite(r.output_error), r.qualname
    for b in c.run.blocks:
        assert math.isfinite(b.output_error)
    for mod in c.run.modules().values():
        for t in (mod.sparse, mod.u, mod.v):
            assert torch.isfinite(t).all()
    for mode in MODES:
        with c.run.use_mode(mode):
            assert torch.isfinite(_out(c)).all(), mode


# ----------------------------------------------------------------------------- budgets


def test_budget_accounting(c):
    for r in c.run.layers:
        d_out, d_in = r.shape
        assert r.params == r.nnz + r.rank * (d_out + d_in), r.qualname
        assert r.budget == int(0.5 * d_out * d_in), r.qualname
        # the rank is floored (loses < one rank-1 term); each row's keep count is rounded up
        assert r.budget - (d_out + d_in) < r.params <= r.budget + d_out, r.qualname
        assert r.params == pytest.approx(0.5 * d_out * d_in, rel=0.03), r.qualname
        assert r.rank > 0, r.qualname
        f = c.run.factors(r.qualname)
        assert int(torch.count_nonzero(f["sparse"])) == r.nnz, r.qualname
        assert f["u"].shape == (d_out, r.rank) and f["v"].shape == (r.rank, d_in), r.qualname
    assert c.run.params_kept == pytest.approx(0.5 * c.run.params_dense, rel=0.03)


def test_record_shapes_match_modules(c):
    mods = c.run.modules()
    for r in c.run.layers:
        mod = mods[r.path]
        rows = r.rows or (0, mod.out_features)
        assert r.shape == (rows[1] - rows[0], mod.in_features), r.qualname


# ----------------------------------------------------------------------------- modes


def test_dense_mode_reproduces_original(c):
    with c.run.use_mode("dense"):
        torch.testing.assert_close(_out(c), c.ref, atol=1e-5, rtol=0)


def test_dense_weights_are_the_originals(c):
    for path, mod in c.run.modules().items():
        w = c.original[f"{path}.weight"]
        if c.case.family == "gpt2":  # Conv1D stores (d_in, d_out): see its own test
            w = w.t()
        assert torch.equal(mod.weight, w), path
        if mod.bias is not None:
            assert torch.equal(mod.bias, c.original[f"{path}.bias"]), path


def test_modes_differ(c):
    outs = {}
    for mode in MODES:
        with c.run.use_mode(mode):
            outs[mode] = _out(c)
    assert _rel(outs["both"], outs["dense"]) > 1e-3
    assert _rel(outs["sparse"], outs["both"]) > 1e-3
    assert _rel(outs["lowrank"], outs["both"]) > 1e-3
    # the context manager restored the default
    assert {m.mode for m in c.run.modules().values()} == {"both"}
    torch.testing.assert_close(_out(c), outs["both"], atol=0, rtol=0)


@pytest.mark.parametrize("which", [0, -1])
def test_one_layer_dense(c, which):
    run = c.run
    path = run.layers[which].path
    run.set_mode("both")
    y_both = _out(c)
    try:
        run.set_mode("dense", [path])
        modes = {p: m.mode for p, m in run.modules().items()}
        assert modes.pop(path) == "dense"
        assert set(modes.values()) == {"both"}
        y_one = _out(c)
    finally:
        run.set_mode("both")
    assert torch.isfinite(y_one).all()
    assert _rel(y_one, y_both) > 1e-6
    with run.use_mode("dense", [path]):
        torch.testing.assert_close(_out(c), y_one, atol=0, rtol=0)
    torch.testing.assert_close(_out(c), y_both, atol=0, rtol=0)


def test_effective_weights_and_forward(c):
    torch.manual_seed(0)
    for path, mod in c.run.modules().items():
        assert isinstance(mod, OatsLinear)
        assert torch.equal(mod.effective_weight("both"), mod.sparse + mod.u @ mod.v), path
        assert torch.equal(mod.effective_weight("sparse"), mod.sparse), path
        assert torch.equal(mod.effective_weight("lowrank"), mod.u @ mod.v), path
        assert torch.equal(mod.effective_weight("dense"), mod.weight), path
        assert mod.effective_weight() is not None and mod.mode == "both"
        x = torch.randn(3, mod.in_features)
        for mode in MODES:
            mod.mode = mode
            try:
                want = nn.functional.linear(x, mod.effective_weight(mode), mod.bias)
                torch.testing.assert_close(mod(x), want, atol=1e-5, rtol=1e-5)
            finally:
                mod.mode = "both"


# ----------------------------------------------------------------------------- fused matrices


def test_fused_parts(fused):
    run, case = fused.run, fused.case
    mods = run.modules()
    for b in range(BLOCKS):
        parts = [run.layer(f"{b}.{n}") for n in ("q", "k", "v")]
        assert len({p.path for p in parts}) == 1 and parts[0].path.endswith(case.fused)
        mod = mods[parts[0].path]
        # the parts tile the fused rows, and their ranks the fused rank (block-diagonal u)
        assert parts[0].rows[0] == 0 and parts[-1].rows[1] == mod.out_features
        assert all(p.rows[1] == n.rows[0] for p, n in zip(parts, parts[1:]))
        assert sum(p.rank for p in parts) == mod.rank
        w_both = mod.effective_weight("both")
        col = 0
        for p in parts:
            a, z = p.rows
            f = run.factors(p.qualname)
            assert f["weight"].shape == f["sparse"].shape == (z - a, mod.in_features)
            assert f["u"].shape == (z - a, p.rank) and f["v"].shape == (p.rank, mod.in_features)
            torch.testing.assert_close(f["sparse"] + f["u"] @ f["v"], w_both[a:z], atol=1e-6, rtol=1e-6)
            assert torch.equal(f["weight"], mod.weight[a:z])
            # block-diagonal: the part's rows use no other part's rank columns
            assert torch.count_nonzero(mod.u[a:z, :col]) == 0
            assert torch.count_nonzero(mod.u[a:z, col + p.rank:]) == 0
            col += p.rank
        assert int(torch.count_nonzero(mod.sparse)) == sum(p.nnz for p in parts)


def test_phi3_parts_have_their_own_sizes():
    run = compressed("phi3").run
    q, k, v = (run.layer(f"0.{n}") for n in ("q", "k", "v"))
    assert q.shape == (HIDDEN, HIDDEN) and k.shape == v.shape == (HIDDEN // 2, HIDDEN)
    assert k.rows == (HIDDEN, HIDDEN + HIDDEN // 2) and v.rows == (HIDDEN + HIDDEN // 2, 2 * HIDDEN)
    assert k.rank != q.rank
    fk = run.factors("0.k")
    assert fk["u"].shape == (HIDDEN // 2, k.rank) and fk["v"].shape == (k.rank, HIDDEN)
    gate_up = run.layer("0.gate_up")
    assert gate_up.rows is None and gate_up.shape == (4 * HIDDEN, HIDDEN)


def test_gpt2_weights_are_transposed_conv1d():
    c = compressed("gpt2")
    mods = c.run.modules()
    shapes = {r.name: r.shape for r in c.run.layers if r.block == 0}
    assert shapes == {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, HIDDEN), "v": (HIDDEN, HIDDEN),
                      "o": (HIDDEN, HIDDEN), "fc1": (4 * HIDDEN, HIDDEN), "fc2": (HIDDEN, 4 * HIDDEN)}
    for path, mod in mods.items():
        w = c.original[f"{path}.weight"]  # Conv1D stores (d_in, d_out)
        assert w.shape == (mod.in_features, mod.out_features), path
        assert torch.equal(mod.weight, w.t()), path
        assert torch.equal(mod.bias, c.original[f"{path}.bias"]), path
    assert mods["transformer.h.0.attn.c_attn"].weight.shape == (3 * HIDDEN, HIDDEN)


# ----------------------------------------------------------------------------- padding


def test_bert_padding_is_not_counted():
    c = compressed("bert")
    mask_tokens = sum(int(b["attention_mask"].sum()) for b in c.calibration)
    assert c.run.calibration["tokens"] == mask_tokens < sum(b["input_ids"].numel() for b in c.calibration)
    # other ids at the padded positions: the real tokens' statistics must not move
    torch.manual_seed(0)
    model = CASES["bert"].build().eval()
    other = []
    for b in c.calibration:
        b = {k: v.clone() for k, v in b.items()}
        b["input_ids"][b["attention_mask"] == 0] = 7
        other.append(b)
    torch.manual_seed(0)
    run2 = compress_model(model, other, CFG)
    assert set(run2.second_moments) == set(c.run.second_moments)
    for q, m2 in c.run.second_moments.items():
        torch.testing.assert_close(run2.second_moments[q], m2, atol=1e-5, rtol=1e-4, msg=q)


# ----------------------------------------------------------------------------- layouts


def test_missing_linear_is_an_error_not_a_skip():
    torch.manual_seed(0)
    model = CASES["llama"].build().eval()
    del model.model.layers[0].mlp.gate_proj
    adapter = get_adapter(model)
    with pytest.raises(UnsupportedModelError, match="mlp.gate_proj"):
        adapter.linears(model, model.model.layers[0])


# ----------------------------------------------------------------------------- unknown models


class _Block(nn.Module):
    def __init__(self, d: int, experts: int = 0):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn_proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        # optional nested list (MoE-like), longer than the list of blocks
        self.experts = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(experts)) if experts else None

    def forward(self, x):
        x = x + self.attn_proj(self.norm(x))
        h = self.fc2(torch.relu(self.fc1(x)))
        if self.experts is not None:
            h = h + sum(e(x) for e in self.experts) / len(self.experts)
        return x + h


class TinyNet(nn.Module):
    def __init__(self, d: int = 32, n_blocks: int = 3, experts: int = 0):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.blocks = nn.ModuleList(_Block(d, experts) for _ in range(n_blocks))
        self.head = nn.Linear(d, 4)

    def forward(self, x):
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


def _tiny_batches(seed: int = 1, n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(2, 6, 8, generator=g)} for _ in range(n)]


def test_unknown_architecture_is_refused_naming_the_families():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with pytest.raises(UnsupportedModelError) as info:
        get_adapter(model)
    msg = str(info.value)
    assert "TinyNet" in msg
    for fam in ("llama", "phi3", "gpt2", "bert", "vit", "dinov2", "timm-vit"):
        assert fam in supported_families()
    for model_type in ("llama", "qwen2", "mistral", "phi3", "gpt2", "bert", "roberta", "vit", "dinov2",
                       "timm VisionTransformer"):
        assert model_type in msg
    assert "generic" in msg
    with pytest.raises(UnsupportedModelError):
        compress_model(model, _tiny_batches(), CFG)
    assert not any(isinstance(m, OatsLinear) for m in model.modules())  # nothing was touched


def test_unknown_architecture_with_generic_adapter():
    torch.manual_seed(0)
    model = TinyNet().eval()
    batch = _tiny_batches(seed=2, n=1)[0]
    with torch.no_grad():
        ref = model(**batch)
    adapter = get_adapter(model, allow_generic=True)
    assert isinstance(adapter, GenericAdapter) and adapter.family == "generic"
    info = adapter.info(model)
    assert "3 blocks" in info and "_Block" in info and "'blocks'" in info and "3 linears" in info

    torch.manual_seed(0)
    run = compress_model(model, _tiny_batches(), CFG, allow_generic=True)
    assert run.family == "generic"
    assert [r.name for r in run.layers] == ["attn_proj", "fc1", "fc2"] * 3
    assert [r.kind for r in run.layers[:3]] == ["attn", "mlp", "mlp"]
    assert set(run.modules()) == {f"blocks.{i}.{n}" for i in range(3) for n in ("attn_proj", "fc1", "fc2")}
    assert isinstance(model.embed, nn.Linear) and isinstance(model.head, nn.Linear)  # outside: dense
    for r in run.layers:
        assert r.params == r.nnz + r.rank * (r.shape[0] + r.shape[1])
        assert r.params <= r.budget + r.shape[0]
    with torch.no_grad():
        with run.use_mode("dense"):
            torch.testing.assert_close(model(**batch), ref, atol=1e-5, rtol=0)
        y = model(**batch)
    assert torch.isfinite(y).all() and _rel(y, ref) > 1e-3


def test_generic_adapter_takes_the_outer_list_not_a_longer_nested_one():
    # 2 blocks, each with a list of 5 experts: the blocks are the outer list
    torch.manual_seed(0)
    model = TinyNet(n_blocks=2, experts=5).eval()
    adapter = get_adapter(model, allow_generic=True)
    assert adapter.blocks_path(model) == "blocks"
    assert len(adapter.blocks(model)) == 2
    names = [r.name for r in adapter.linears(model, model.blocks[0])]
    assert names == ["attn_proj", "fc1", "fc2"] + [f"experts.{i}" for i in range(5)]
    run = compress_model(model, _tiny_batches(), CFG, allow_generic=True)
    assert len(run.layers) == 2 * 8


def test_no_block_list_at_all():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with pytest.raises(UnsupportedModelError, match="supported model types are"):
        get_adapter(model, allow_generic=True)


_DEC_SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=BLOCKS,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_ENC_SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=BLOCKS, num_attention_heads=4,
                  intermediate_size=128, pad_token_id=0)
_IMG_SMALL = dict(image_size=IMAGE, patch_size=8, hidden_size=64, num_hidden_layers=BLOCKS, num_attention_heads=4)


@pytest.mark.parametrize("build, family, prefix", [
    (lambda: transformers.LlamaModel(transformers.LlamaConfig(**_DEC_SMALL)), "llama", "layers"),
    (lambda: transformers.Phi3Model(transformers.Phi3Config(**_DEC_SMALL)), "phi3", "layers"),
    (lambda: transformers.GPT2Model(transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=BLOCKS, n_head=4,
                                                            bos_token_id=1, eos_token_id=2)), "gpt2", "h"),
    (lambda: transformers.BertForSequenceClassification(transformers.BertConfig(**_ENC_SMALL)), "bert",
     "bert.encoder.layer"),
    (lambda: transformers.RobertaModel(transformers.RobertaConfig(**_ENC_SMALL)), "bert", "encoder.layer"),
    (lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**_IMG_SMALL)), "dinov2", None),
], ids=["LlamaModel", "Phi3Model", "GPT2Model", "BertForSequenceClassification", "RobertaModel",
        "Dinov2ForImageClassification"])
def test_blocks_found_with_and_without_task_head(build, family, prefix):
    torch.manual_seed(0)
    model = build().eval()
    adapter = get_adapter(model)
    assert adapter.family == family
    blocks = adapter.blocks(model)
    assert len(blocks) == BLOCKS
    if prefix is not None:
        assert [p for p, _ in blocks] == [f"{prefix}.{i}" for i in range(BLOCKS)]
    assert len(adapter.linears(model, blocks[0][1])) in (6, 7)
