"""The larger-than-memory mode: a model compressed block by block from its (sharded)
safetensors files gives the same run as the whole model in memory, with one block's weights
loaded at a time; the pre-flight estimate knows the mode, and the CLI switches to it when the
model does not fit in memory."""

from __future__ import annotations


import pytest
import torch
from tiny_models import tiny_llama_folder, without_keys

import oats.models.weights as weights_module
from oats.cli import main as cli_main
from oats.compress.allocation import Owl
from oats.compress.preflight import estimate_compression_memory
from oats.config import OatsConfig
from oats.errors import ConfigError, ModelLoadError
from oats.models import zoo
from oats.models.adapters import get_adapter
from oats.runner.execute import execute
from oats.runner.request import CompressRequest
from oats.runs.folders import read_manifest

LAYERS = 4
TIME_KEYS = {"created", "timings", "versions", "model_source"}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tiny_llama_folder(tmp_path_factory.mktemp("sharded") / "llama", hidden=32, layers=LAYERS, seed=5,
                               max_shard_size="20KB")
    assert len(list(folder.glob("*.safetensors"))) > 3 and (folder / "model.safetensors.index.json").is_file()
    return folder


def _strip(x):
    return without_keys(x, TIME_KEYS)


def _request(folder, method, **kw):
    cfg = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=4)
    return CompressRequest(str(folder), cfg, method, calib_samples=6, seq_len=16, seed=2, evaluate=False, **kw)


@pytest.mark.parametrize("method", ["oats", "sparsegpt"])
def test_from_disk_gives_the_same_run(sharded, tmp_path, method, monkeypatch):
    whole = execute(_request(sharded, method), tmp_path / "memory")
    # count the blocks in memory at each read: never more than the one being compressed
    loaded_now, peak = set(), [0]
    load, release = weights_module.DiskWeights.load, weights_module.DiskWeights.release

    def counting_load(self, module, prefix, recurse=True, **kw):
        load(self, module, prefix, recurse, **kw)
        if prefix.rpartition(".")[2].isdigit():  # a block: model.layers.<i>
            loaded_now.add(prefix)
            peak[0] = max(peak[0], len(loaded_now))

    def counting_release(module):
        release(module)
        loaded_now.difference_update({p for p in loaded_now})

    monkeypatch.setattr(weights_module.DiskWeights, "load", counting_load)
    monkeypatch.setattr(weights_module.DiskWeights, "release", staticmethod(counting_release))
    streamed = execute(_request(sharded, method, from_disk=True), tmp_path / "disk")
    assert streamed.status == "computed" and peak[0] == 1 and not loaded_now
    # the blocks left memory once saved: the model holds only embeddings and norm (the head is not needed)
    real = {n for n, p in streamed.run.model.named_parameters() if p.device.type != "meta"}
    assert real == {"model.embed_tokens.weight", "model.norm.weight"}
    for b in range(LAYERS):
        name = f"block_{b:03d}.safetensors"
        assert (tmp_path / "memory" / name).read_bytes() == (tmp_path / "disk" / name).read_bytes(), name
    assert _strip(read_manifest(tmp_path / "memory")) == _strip(read_manifest(tmp_path / "disk"))
    assert [r.scaled_error for r in whole.run.layers] == [r.scaled_error for r in streamed.run.layers]


def test_meta_model_matches_the_loaded_one(sharded):
    """Outside the blocks the from-disk model holds the same tensors as the whole one."""
    whole = zoo.load_model(str(sharded))
    lazy = zoo.load_model(str(sharded), from_disk=True)
    assert lazy.disk is not None and lazy.disk.fp32_bytes == 4 * sum(p.numel() for p in whole.model.parameters()
                                                                     if p is not whole.model.lm_head.weight
                                                                     or not whole.model.config.tie_word_embeddings)
    w = dict(whole.model.named_parameters())
    for n, p in lazy.model.named_parameters():
        if ".layers." in n or n == "lm_head.weight":  # the head is read only for evaluation (attach_stored_head)
            assert p.device.type == "meta"
        else:
            assert torch.equal(p, w[n]), n


def test_estimate_knows_the_mode(sharded):
    lazy = zoo.load_model(str(sharded), from_disk=True)
    adapter = get_adapter(lazy.model)
    blocks = adapter.blocks(lazy.model)
    whole = estimate_compression_memory(adapter, lazy.model, blocks, 96, "oats")
    disk = estimate_compression_memory(adapter, lazy.model, blocks, 96, "oats", from_disk=True)
    assert disk["factors"] * LAYERS == whole["factors"]
    assert disk["block weights"] == whole["factors"] / LAYERS / 2  # one block's fp32 weights
    assert disk["calibration activations"] == whole["calibration activations"]


def test_cli_switches_to_from_disk_when_the_model_does_not_fit(tmp_path, capsys, monkeypatch):
    deep = tiny_llama_folder(tmp_path / "deep", hidden=32, layers=16, seed=1)
    fp32 = weights_module.DiskWeights(deep).fp32_bytes
    # room for one block's compression at a time, not for the whole model (checked with the compression margin, x2.5)
    monkeypatch.setenv("OATS_MEMORY_LIMIT_GB", str(1.2 * fp32 / 1e9))
    out = tmp_path / "run"
    argv = ["compress", str(deep), "--method", "wanda", "--calib-samples", "2", "--seq-len", "8", "--out", str(out),
            "--quiet"]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "compressed from disk, block by block" in err
    assert read_manifest(out)["complete"] and len(read_manifest(out)["blocks_done"]) == 16
    # with less room still, the one-block estimate itself does not fit: one line, status 2
    monkeypatch.setenv("OATS_MEMORY_LIMIT_GB", str(0.1 * fp32 / 1e9))
    assert cli_main([*argv[:-3], "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "oats: error:" in err[-1] and "needs about" in err[-1]


def test_from_disk_bad_input(sharded, tmp_path, capsys):
    with pytest.raises(ModelLoadError, match="local model folder"):
        zoo.load_model("minilm-l6", from_disk=True)
    empty = tmp_path / "no-safetensors"
    empty.mkdir()
    (empty / "config.json").write_text((sharded / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        zoo.load_model(str(empty), from_disk=True)
    with pytest.raises(ConfigError, match="OWL lambda"):  # the OWL checks apply from disk as in memory
        execute(_request(sharded, "wanda", from_disk=True, allocation=Owl(lam=0.6)), tmp_path / "owl")


def test_owl_from_disk_streams_its_outlier_pass_and_gives_the_same_rates(sharded, tmp_path, monkeypatch):
    """OWL's dense outlier pass reads, runs and drops one block at a time from disk, and the
    from-disk run has the in-memory run's block rates and blocks."""
    owl = Owl(lam=0.2, threshold=2.0)
    whole = execute(_request(sharded, "wanda", allocation=owl), tmp_path / "memory")
    rates = whole.run.block_rates
    assert rates is not None and len(set(rates)) == LAYERS  # the blocks do differ: the test can tell
    resident, peak, loads = set(), [0], []
    load, release = weights_module.DiskWeights.load, weights_module.DiskWeights.release

    def counting_load(self, module, prefix, recurse=True, **kw):
        load(self, module, prefix, recurse, **kw)
        if prefix.rpartition(".")[2].isdigit():
            loads.append(prefix)
            resident.add(id(module))
            peak[0] = max(peak[0], len(resident))

    def counting_release(module):
        release(module)
        resident.discard(id(module))

    monkeypatch.setattr(weights_module.DiskWeights, "load", counting_load)
    monkeypatch.setattr(weights_module.DiskWeights, "release", staticmethod(counting_release))
    streamed = execute(_request(sharded, "wanda", from_disk=True, allocation=owl), tmp_path / "disk")
    assert peak[0] == 1 and not resident
    assert len(loads) == 2 * LAYERS  # each block read twice: the outlier pass, then its compression
    assert streamed.run.block_rates == rates
    assert streamed.run.allocation["outlier_ratios"] == whole.run.allocation["outlier_ratios"]
    for b in range(LAYERS):
        name = f"block_{b:03d}.safetensors"
        assert (tmp_path / "memory" / name).read_bytes() == (tmp_path / "disk" / name).read_bytes(), name


# ----------------------------------------------------------------------------- stored dtype


def _as_bf16(src, dst, tie: bool = False):
    """A copy of the model folder ``src`` with every float tensor stored in bf16 (as mid-size
    checkpoints are); ``tie``: the head tied to the embeddings (no lm_head.weight in the files)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in load_file(str(f)).items()
                   if not (tie and k == "lm_head.weight")}
        if tensors:
            save_file(tensors, str(f), metadata={"format": "pt"})
        else:  # a shard that held only the head
            f.unlink()
    if tie:
        cfg = json.loads((dst / "config.json").read_text())
        cfg["tie_word_embeddings"] = True
        (dst / "config.json").write_text(json.dumps(cfg))
        index = dst / "model.safetensors.index.json"
        if index.exists():
            data = json.loads(index.read_text())
            data["weight_map"].pop("lm_head.weight", None)
            index.write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def bf16_folder(sharded, tmp_path_factory):
    return _as_bf16(sharded, tmp_path_factory.mktemp("bf16") / "llama")


def test_bf16_from_disk_is_the_run_of_the_whole_model_in_fp32(bf16_folder, tmp_path):
    """A bf16 checkpoint compressed from disk (embeddings kept in bf16, blocks computed in
    fp32) gives byte for byte the run of the same folder loaded whole in fp32."""
    whole = execute(_request(bf16_folder, "oats"), tmp_path / "memory")
    assert whole.run.model.model.embed_tokens.weight.dtype == torch.float32
    streamed = execute(_request(bf16_folder, "oats", from_disk=True), tmp_path / "disk")
    model = streamed.run.model
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16  # stays as stored: half of fp32
    assert model.model.norm.weight.dtype == torch.float32 and model.lm_head.weight.device.type == "meta"
    for b in range(LAYERS):
        name = f"block_{b:03d}.safetensors"
        assert (tmp_path / "memory" / name).read_bytes() == (tmp_path / "disk" / name).read_bytes(), name
    assert _strip(read_manifest(tmp_path / "memory")) == _strip(read_manifest(tmp_path / "disk"))
    assert [r.scaled_error for r in whole.run.layers] == [r.scaled_error for r in streamed.run.layers]
    # the embedding's output is fp32, the same values as the fp32 table's
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model.model.embed_tokens(ids)
    assert out.dtype == torch.float32 and torch.equal(out, whole.run.model.model.embed_tokens(ids))


def test_an_fp32_folder_is_loaded_as_before(sharded):
    lazy = zoo.load_model(str(sharded), from_disk=True)
    emb = lazy.model.model.embed_tokens
    assert emb.weight.dtype == torch.float32 and not emb._forward_hooks  # nothing added for fp32 files


@pytest.mark.parametrize("tie", [False, True])
def test_stored_head_gives_the_fp32_logits_in_row_slices(sharded, tmp_path, tie, monkeypatch):
    from oats.models.hub import attach_stored_head
    from oats.models.stored import StoredHead, chunked_logits

    folder = _as_bf16(sharded, tmp_path / "bf16", tie=tie)
    whole = zoo.load_model(str(folder))
    lazy = zoo.load_model(str(folder), from_disk=True)
    head = attach_stored_head(lazy)
    assert isinstance(head, StoredHead) and lazy.model.lm_head is head and head.weight.dtype == torch.bfloat16
    assert attach_stored_head(lazy) is head  # once
    emb = lazy.model.model.embed_tokens.weight
    assert (head.weight is emb) == tie  # a tied head is the embedding table, not a copy
    ref_w = whole.model.lm_head.weight
    assert whole.model.config.tie_word_embeddings == tie and torch.equal(ref_w.to(torch.bfloat16).float(), ref_w)
    h = torch.randn(2, 5, ref_w.shape[1], generator=torch.Generator().manual_seed(0))
    ref = whole.model.lm_head(h)
    assert torch.allclose(head(h), ref, rtol=1e-5, atol=1e-6)
    # slices of 3 rows: the same logits, and no fp32 cast larger than a slice
    casts = []
    to = torch.Tensor.to

    def watched(t, *a, **kw):
        out = to(t, *a, **kw)
        if out.dtype == torch.float32 and t.dtype == torch.bfloat16:
            casts.append(out.shape[0])
        return out

    monkeypatch.setattr(torch.Tensor, "to", watched)
    sliced = chunked_logits(h, head.weight, chunk_bytes=3 * 4 * ref_w.shape[1])
    assert max(casts) == 3 and sum(casts) == ref_w.shape[0]
    assert torch.allclose(sliced, ref, rtol=1e-5, atol=1e-6) and sliced.dtype == torch.float32
