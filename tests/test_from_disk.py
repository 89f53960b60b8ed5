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

    def counting_load(self, module, prefix, recurse=True):
        load(self, module, prefix, recurse)
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
    # the blocks left memory once saved: the model holds only embeddings, norm and head
    real = {n for n, p in streamed.run.model.named_parameters() if p.device.type != "meta"}
    assert real and all(".layers." not in n for n in real)
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
        if ".layers." in n:
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
    with pytest.raises(ConfigError, match="uniform allocation"):
        from oats.compress.allocation import Owl
        execute(_request(sharded, "wanda", from_disk=True, allocation=Owl()), tmp_path / "owl")
