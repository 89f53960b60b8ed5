"""Deployed speed per machine (``oats/deploy/plan.py``, the fused one-token kernel in csr8.c): the
fused kernel and every per-layer choice give the sparse path's outputs, the goals keep their
promise (smallest never folds a layer; fastest folds exactly the layers measured faster dense,
and says what it costs), and the measurements are cached per CPU and kernel build, a bad cache
file ignored with one line."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from tiny_models import batches, tiny_llama

from oats import compress_model, OatsConfig
from oats.deploy import kernels, plan
from oats.deploy.export import export_run, load_compressed
from oats.deploy.linear import SparseLowRankLinear, pack_csr
from oats.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _max_rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Measurements cached in this test's folder (the compiled kernels are reused from the usual place)."""
    monkeypatch.setattr(plan, "plan_cache_path", lambda: tmp_path / "plan.json")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    run = compress_model(tiny_llama(), batches(), OatsConfig(compression=0.5, rank_ratio=0.25, iterations=4),
                         method="oats", model_name="tiny")
    return export_run(run, tmp_path_factory.mktemp("plan") / "export", "sparse")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[3, 17, 5, 9, 22, 4]])


@pytest.mark.skipif(not kernels.fused_available(), reason="the fused kernel needs the C backend")
@pytest.mark.parametrize("loop", kernels.LOOPS)
def test_fused_one_token_kernel_equals_s_plus_uv_plus_bias(loop):
    g = torch.Generator().manual_seed(3)
    for d_out, d_in, r in ((37, 300, 5), (64, 700, 0), (9, 16, 2)):  # segments, a partial tail, no rank
        s = torch.randn(d_out, d_in, generator=g) * (torch.rand(d_out, d_in, generator=g) < 0.37)
        u, v, b = torch.randn(d_out, r, generator=g), torch.randn(r, d_in, generator=g), torch.randn(d_out, generator=g)
        m = SparseLowRankLinear(d_out, d_in, **pack_csr(s), u=u, v=v, bias=b, kernel="csr8")
        m.loop = loop
        assert m._fused
        x = torch.randn(1, 1, d_in, generator=g)
        assert _max_rel(m(x), x @ (s + u @ v).T + b) < 1e-5
        # the same layer through the unfused path (two tokens) agrees with the fused one
        two = torch.cat([x, x], 1)
        assert _max_rel(m(two)[:, :1], m(x)) < 1e-5


def test_smallest_keeps_every_layer_sparse_and_equals_the_plain_load(export, monkeypatch):
    plain = load_compressed(export, goal=None)
    measured, real = [], plan._time_forms
    monkeypatch.setattr(plan, "_time_forms", lambda group, forms, tokens=1: measured.append(forms) or real(group, forms, tokens))
    small = load_compressed(export, goal="smallest")
    assert all(set(f) <= {"csr8", "csr8-vector"} for f in measured)  # nothing folded, not even to measure it
    assert not hasattr(plain, "oats_plan")
    p = small.oats_plan
    assert p.goal == "smallest" and set(p.counts()) <= {"csr8", "csr8-vector"}
    n_sparse = sum(isinstance(m, SparseLowRankLinear) for m in plain.modules())
    assert sum(isinstance(m, SparseLowRankLinear) for m in small.modules()) == n_sparse == sum(p.counts().values())
    assert p.extra_bytes == 0
    assert _max_rel(_logits(small, IDS), _logits(plain, IDS)) < 1e-5
    assert _max_rel(_logits(small, IDS[:, :1]), _logits(plain, IDS[:, :1])) < 1e-5


def test_fastest_folds_exactly_the_layers_measured_faster_dense(export, monkeypatch):
    plain = load_compressed(export, goal=None)
    keys = sorted({plan.shape_key(m) for m in plain.modules() if isinstance(m, SparseLowRankLinear)})
    dense_wins, csr_wins = keys[0], keys[-1]

    def fake(group, forms, tokens=1):  # dense fastest for one shape, torch's CSR for another, CSR8 elsewhere
        key = plan.shape_key(group[0])
        t = {f: 10.0 for f in forms}
        t["csr8"] = 5.0
        if key == dense_wins:
            t["dense"] = 1.0
        if key == csr_wins:
            t["csr"] = 2.0
        return t
    monkeypatch.setattr(plan, "_time_forms", fake)
    fast = load_compressed(export, goal="fastest")
    chosen = {s.key: s.chosen for s in fast.oats_plan.shapes}
    assert chosen[dense_wins] == "dense" and chosen[csr_wins] == "csr"
    assert all(c == "csr8" for k, c in chosen.items() if k not in (dense_wins, csr_wins))
    folded = [n for n, m in fast.named_modules() if type(m) is nn.Linear and n != "lm_head"]
    dense_layers = next(s.layers for s in fast.oats_plan.shapes if s.key == dense_wins)
    assert sorted(folded) == sorted(dense_layers)
    # the memory the plan states is what folding added
    before = sum(m.nbytes() for n, m in plain.named_modules() if n in dense_layers)
    after = sum(fast.get_submodule(n).weight.numel() * 4 + (fast.get_submodule(n).bias is not None) * 0
                for n in dense_layers)
    shape_extra = next(s.extra_bytes for s in fast.oats_plan.shapes if s.key == dense_wins)
    assert shape_extra == after - before > 0
    assert "folded to dense" in fast.oats_plan.summary() and "MB more" in fast.oats_plan.summary()
    for ids in (IDS, IDS[:, :1]):
        assert _max_rel(_logits(fast, ids), _logits(plain, ids)) < 1e-5
    # smallest, with the same measurements, never folds
    small = load_compressed(export, goal="smallest")
    assert not [n for n, m in small.named_modules() if type(m) is nn.Linear and n != "lm_head"]


def test_measurements_are_cached_and_keyed_by_cpu_and_kernel(export, monkeypatch, tmp_path):
    monkeypatch.undo()  # the real cache path, pointed at this test's folder through the kernel dir
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(tmp_path / "k"))
    if not kernels.available():
        pytest.skip("no CSR8 kernels here: nothing to measure")
    first = plan.plan_cache_path()
    m = load_compressed(export, goal="fastest")
    assert not m.oats_plan.from_cache and first.is_file()
    calls = []
    monkeypatch.setattr(plan, "_time_forms", lambda g, f, t=1: calls.append(1) or {x: 1.0 for x in f})
    again = load_compressed(export, goal="fastest")
    assert again.oats_plan.from_cache and not calls
    assert [s.chosen for s in again.oats_plan.shapes] == [s.chosen for s in m.oats_plan.shapes]
    # another CPU, or another kernel build, is another file
    monkeypatch.setattr(plan.resources, "cpu_name", lambda: "Some Other CPU")
    assert plan.plan_cache_path() != first
    monkeypatch.undo()
    monkeypatch.setenv(kernels.KERNEL_DIR_ENV, str(tmp_path / "k"))
    monkeypatch.setattr(kernels, "SOURCE", tmp_path / "changed.c")
    (tmp_path / "changed.c").write_text(kernels.Path(kernels.__file__).with_name("csr8.c").read_text() + "\n/* v2 */\n")
    assert plan.plan_cache_path() != first


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 1, "shapes": {"a": {"dense": -1}}}', b"[]",
                                     b'{"version": 99, "shapes": {}}'])
def test_a_bad_cache_file_is_ignored_with_one_line_and_rewritten(export, tmp_path, caplog, content):
    if not kernels.available():
        pytest.skip("no CSR8 kernels here: nothing to measure")
    (tmp_path / "plan.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="oats.deploy.plan"):
        m = load_compressed(export, goal="fastest")
    lines = [r.getMessage() for r in caplog.records if r.name == "oats.deploy.plan"]
    assert len(lines) == 1 and "ignored the kernel measurements" in lines[0] and "\n" not in lines[0]
    assert not m.oats_plan.from_cache
    data = json.loads((tmp_path / "plan.json").read_text())
    assert data["version"] == plan.CACHE_VERSION and set(data["shapes"]) == {f"{s.key} t1" for s in m.oats_plan.shapes}


def test_unknown_goal_or_token_count_is_one_config_error(export):
    with pytest.raises(ConfigError, match="unknown goal 'quickest'"):
        load_compressed(export, goal="quickest")
    for bad in (0, -3, 2.5, True, 10**6):
        with pytest.raises(ConfigError, match="tokens must be a whole number"):
            load_compressed(export, goal="fastest", tokens=bad)


def test_the_plan_is_measured_at_the_tokens_per_call_it_is_for(export, monkeypatch):
    """Decoding (1 token) and a batch (many) are measured and cached apart: the same layer may
    be fastest sparse for one and dense for the other."""
    seen = []

    def fake(group, forms, tokens=1):
        seen.append((tokens, tuple(forms)))
        return {f: (1.0 if (f == "dense") == (tokens > 1) else 5.0) for f in forms}
    monkeypatch.setattr(plan, "_time_forms", fake)
    one = load_compressed(export, goal="fastest")
    many = load_compressed(export, goal="fastest", tokens=64)
    assert set(one.oats_plan.counts()) <= {"csr8", "csr8-vector"} and set(many.oats_plan.counts()) == {"dense"}
    assert "64 tokens per call" in many.oats_plan.summary() and "one token per call" in one.oats_plan.summary()
    assert {t for t, _ in seen} == {1, 64} and all("csr8-vector" not in f for t, f in seen if t == 64)
    x = torch.tensor([[5, 6, 7, 8] * 4])
    assert _max_rel(_logits(many, x), _logits(one, x)) < 1e-5
