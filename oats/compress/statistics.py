"""The dense statistics pass: each layer of the uncompressed model with its input statistics.

The model runs block by block on the calibration data without being changed, and every
linear of a block is returned as the pipeline would see it: its weight (a part of a fused
matrix on its own) and the mean of its squared inputs per channel (optionally the full
input Gram matrix). OWL's allocation, the benchmarks and the what-if views use it.
"""

from __future__ import annotations

import torch
from torch import nn

from oats.compress.calibration import capture_block_inputs, dense_block_stats, run_block
from oats.models.adapters import get_adapter, weight_of


@torch.no_grad()
def iter_dense_layer_stats(model: nn.Module, calibration: list[dict], blocks: list[int] | None = None,
                           allow_generic: bool = False, gram: bool = False, disk=None):
    """Walk the *dense* model block by block on the calibration data, without compressing.

    Yields (block index, {"<block>.<name>": (weight view (d_out, d_in), mean squared input
    (d_in,))}) for the requested blocks (default: all); with ``gram=True`` each value has a
    third item, the (d_in, d_in) mean of x x^T. The weights are views into the model: copy
    them to keep them past the next step. ``disk`` (the larger-than-memory mode's
    ``DiskWeights``, blocks on the meta device): each block is read just before its turn and
    dropped once the caller has moved on, so one block is in memory at a time.
    """
    adapter = get_adapter(model, allow_generic=allow_generic)
    all_blocks = adapter.blocks(model)
    wanted = set(range(len(all_blocks))) if blocks is None else {b % len(all_blocks) for b in blocks}
    inputs = capture_block_inputs(model, adapter, all_blocks[0][1], calibration)
    for i, (path, block) in enumerate(all_blocks):
        if i > max(wanted):
            break
        if disk is not None:
            disk.load(block, path)
        try:
            if i not in wanted:
                inputs.hidden = run_block(block, adapter, inputs)
                continue
            refs = adapter.linears(model, block)
            stats, inputs.hidden = dense_block_stats(block, adapter, inputs, dict.fromkeys(r.path for r in refs),
                                                     gram=gram)
            out = {}
            for ref in refs:
                w = weight_of(block.get_submodule(ref.path))
                w = w[ref.rows[0]:ref.rows[1]] if ref.rows else w
                item = (w.detach(), stats.mean(ref.path))
                out[f"{i}.{ref.name}"] = item + (stats.gram(ref.path),) if gram else item
            yield i, out
        finally:
            if disk is not None:
                disk.release(block)


@torch.no_grad()
def dense_layer_stats(model: nn.Module, calibration: list[dict], blocks: list[int] | None = None,
                      allow_generic: bool = False, gram: bool = False) -> dict[str, tuple[torch.Tensor, ...]]:
    """Real layers of the *dense* model with their input statistics, without compressing.

    Returns {"<block>.<name>": (weight (d_out, d_in), mean squared input (d_in,))} for the
    requested blocks (default: all); with ``gram=True`` a third item, the (d_in, d_in) mean
    of x x^T (what SparseGPT needs). Used by the benchmark, the faithfulness tests and the
    what-if views, which need a layer exactly as the pipeline would see it.
    """
    out: dict[str, tuple[torch.Tensor, ...]] = {}
    for _i, layers in iter_dense_layer_stats(model, calibration, blocks, allow_generic, gram):
        for q, item in layers.items():
            out[q] = (item[0].float().clone(),) + tuple(t.clone() for t in item[1:])
    return out
