"""The same run on any thread count: every registered method gives byte-identical block files
with one and with two torch threads on a real model (MiniLM-L6), a run interrupted under one
thread count and resumed under another equals the uninterrupted run, and thresholding breaks
ties by index (the mask is a function of the values alone).

Before each decomposition ran on one thread, OATS's block 0 key matrix got another sparse mask
with two threads than with one (the SVD and QR round differently), and the difference grew
down the model: these tests failed. Nothing here is timed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import oats.compress.pipeline as pipeline
from oats.cli import main as cli_main
from oats.config import OatsConfig
from oats.core.decompose import decompose, hard_threshold, top_k_mask
from oats.methods import registry
from oats.methods.sparsegpt import sparsegpt
from oats.runs.folders import read_manifest

MODEL = "minilm-l6"
FLAGS = ["--compression", "0.5", "--iterations", "4", "--calib-samples", "8", "--quiet"]
TIME_KEYS = ("time_s", "stats_time_s", "decompose_time_s")


@pytest.fixture
def threads():
    """Set torch's thread count for the test; restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _compress(out: Path, method: str, *more: str) -> int:
    return cli_main(["compress", MODEL, "--method", method, "--out", str(out), *FLAGS, *more])


def _blocks(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("block_*.safetensors"))}


def _layers(folder: Path) -> list[dict]:
    """The manifest's per-layer records, times aside."""
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in read_manifest(folder)["layers"]]


def assert_same_run(a: Path, b: Path) -> None:
    blocks_a, blocks_b = _blocks(a), _blocks(b)
    assert len(blocks_a) == 6 and list(blocks_a) == list(blocks_b)
    differ = [name for name in blocks_a if blocks_a[name] != blocks_b[name]]  # (no byte diff printed)
    assert not differ, f"{a.name} and {b.name} differ in {differ}"
    assert _layers(a) == _layers(b)


@pytest.mark.parametrize("method", registry.names())
def test_every_method_same_block_files_on_one_and_two_threads(method, threads, tmp_path):
    more = ["--iterations", "1"] if method == "hassle" else []  # one alternation: its sweep, refit and SVD
    runs = {}
    for n in (1, 2):
        threads(n)
        runs[n] = tmp_path / f"t{n}"
        assert _compress(runs[n], method, *more) == 0
    assert_same_run(runs[1], runs[2])


def test_vit_same_block_files_on_one_and_two_threads(threads, tmp_path):
    """DINOv2 on the built-in images: the calibration crops (and the blob drawing among them,
    random on every call before) are the same each time, and so is the run."""
    runs = {}
    for n in (1, 2):
        threads(n)
        runs[n] = tmp_path / f"t{n}"
        assert cli_main(["compress", "dinov2-small", "--method", "wanda", "--out", str(runs[n]), "--compression", "0.5",
                         "--calib-samples", "16", "--quiet"]) == 0
    blocks_1, blocks_2 = _blocks(runs[1]), _blocks(runs[2])
    assert len(blocks_1) == 12 and blocks_1 == blocks_2


@pytest.mark.parametrize("domain", ["photos", "drawings", "textures"])
def test_built_in_images_are_the_same_every_time(domain):
    from oats.data import domain_images
    first, again = domain_images(domain), domain_images(domain)
    assert list(first) == list(again)
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_interrupted_on_one_thread_resumed_on_two_equals_uninterrupted(threads, tmp_path, monkeypatch, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    threads(2)
    assert _compress(whole, "oats") == 0

    real = pipeline.compress_block

    def stop_at_block_3(model, adapter, index, *args, **kwargs):
        if index == 3:
            raise KeyboardInterrupt
        return real(model, adapter, index, *args, **kwargs)

    threads(1)
    monkeypatch.setattr(pipeline, "compress_block", stop_at_block_3)
    assert _compress(part, "oats") != 0
    assert "interrupted" in capsys.readouterr().err
    assert read_manifest(part)["blocks_done"] == [0, 1, 2]
    monkeypatch.setattr(pipeline, "compress_block", real)

    threads(2)
    assert _compress(part, "oats", "--resume") == 0
    assert "resuming" in capsys.readouterr().err
    assert read_manifest(part)["complete"] is True
    assert_same_run(part, whole)


def test_one_matrix_same_on_one_and_two_threads(threads):
    """A single decomposition (the Walkthrough's and the what-ifs') is its one-thread result too."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(384, 1536, generator=g)
    m2 = torch.rand(1536, generator=g) + 0.1
    got = {}
    for n in (1, 2):
        threads(n)
        d = decompose(w, m2, OatsConfig(compression=0.5, iterations=6))
        got[n] = (d.sparse, d.u, d.v)
    for x, y in zip(got[1], got[2]):
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- ties


def test_top_k_mask_ties_go_to_the_lowest_index():
    mag = torch.tensor([[1.0, 3.0, 2.0, 2.0, 2.0, 0.5]])
    assert top_k_mask(mag, 3).tolist() == [[False, True, True, True, False, False]]
    assert top_k_mask(mag, 2, largest=False).tolist() == [[True, False, False, False, False, True]]
    assert top_k_mask(mag, 3, largest=False).tolist() == [[True, False, True, False, False, True]]
    assert top_k_mask(mag, 0).sum() == 0 and top_k_mask(mag, 6).all()


@pytest.mark.parametrize("sparsity", ["row", "layer", "2:4"])
def test_hard_threshold_ties_by_index_for_every_pattern(sparsity):
    """A matrix of equal magnitudes keeps exactly its budget, the first entries of each row
    (row), of the matrix (layer) or of each group (N:M); the CPU's numpy path included."""
    r = torch.ones(4, 8)
    r[1] = -1.0  # signs do not matter
    cfg = OatsConfig(compression=0.5, rank_ratio=0.0, sparsity=sparsity)
    kept = hard_threshold(r, cfg) != 0
    if sparsity == "row":
        want = torch.zeros(4, 8, dtype=torch.bool)
        want[:, :4] = True
    elif sparsity == "layer":
        want = torch.zeros(32, dtype=torch.bool)
        want[:16] = True
        want = want.reshape(4, 8)
    else:
        want = torch.tensor([True, True, False, False] * 2).repeat(4, 1)
    assert torch.equal(kept, want)


def test_row_threshold_cpu_matches_the_generic_mask_with_ties():
    """The numpy fast path and ``top_k_mask`` keep the same entries on rows full of ties."""
    rng = np.random.default_rng(0)
    r = torch.from_numpy(rng.integers(-3, 4, size=(64, 48)).astype(np.float32))
    cfg = OatsConfig(compression=0.5, rank_ratio=0.0)
    mask = top_k_mask(r.abs(), 24)
    assert bool((mask.sum(-1) == 24).all())
    assert torch.equal(hard_threshold(r, cfg), r * mask)


def test_sparsegpt_prunes_tied_scores_by_index():
    """Equal weights and a diagonal Gram: every score ties, so each row prunes its first
    entries of each column block (here one block: the first half of each row)."""
    w = torch.ones(3, 8)
    gram = torch.eye(8)
    d = sparsegpt(w, gram, OatsConfig(compression=0.5, rank_ratio=0.0), blocksize=8)
    assert (d.sparse[:, :4] == 0).all() and (d.sparse[:, 4:] != 0).all()
