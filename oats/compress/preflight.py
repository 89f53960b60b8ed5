"""Checks before compressing: the weights fit the pattern and are finite, and the work fits in memory.

``compress_model`` runs these before any block is touched, so a damaged checkpoint, an N:M
pattern that does not divide a layer, or a model too large for the machine fails in a second
with a one-line error instead of half-way through the model.
"""

from __future__ import annotations

import torch

from oats.errors import ConfigError, ModelLoadError
from oats.models.adapters import weight_of
from oats.models.vision import image_tokens
from oats.methods import registry
from oats.resources import parallel_room


def check_weights(adapter, model: torch.nn.Module, blocks: list[tuple[str, torch.nn.Module]], config,
                  skip: set[int] = frozenset(), values: bool = True) -> None:
    """Before any work: every matrix to compress fits the sparsity pattern and is finite.

    Names the first offending layer, so a damaged checkpoint or an N:M pattern that does not
    divide a layer's input size fails in a second instead of half-way through the model.
    values: False checks the shapes only (blocks still on disk are checked as they are read).
    """
    for i, (bpath, block) in enumerate(blocks):
        if i in skip:
            continue
        seen: set[str] = set()
        for ref in adapter.linears(model, block):
            if ref.path in seen:
                continue
            seen.add(ref.path)
            w = weight_of(block.get_submodule(ref.path))
            d_out, d_in = w.shape
            nm = config.nm
            if nm is not None and d_in % nm[1] != 0:
                raise ConfigError(f"sparsity {config.sparsity} needs each layer's input size to be a multiple of "
                                  f"{nm[1]}, but layer '{bpath}.{ref.path}' has d_in = {d_in}: "
                                  "choose an M that divides it")
            if values and not bool(torch.isfinite(w).all()):
                raise ModelLoadError(f"layer '{bpath}.{ref.path}' has NaN or inf weights: the model's weights are "
                                     "damaged; load them again from a clean copy")


def calibration_tokens(batches: list[dict], model: torch.nn.Module) -> int:
    """How many token positions the calibration batches feed each block (the activations' rows)."""
    total = 0
    for b in batches:
        if "input_ids" in b:
            total += int(b["input_ids"].numel())
        elif "pixel_values" in b:
            px = b["pixel_values"]
            total += int(px.shape[0]) * image_tokens(model, px.shape[-2], px.shape[-1], default_patch=16)
        else:
            for v in b.values():
                if isinstance(v, torch.Tensor):
                    total += int(v.shape[0] * (v.shape[1] if v.dim() > 1 else 1))
                    break
    return total


def estimate_compression_memory(adapter, model: torch.nn.Module, blocks, n_tokens: int, method: str,
                                from_disk: bool = False) -> dict:
    """Bytes the compression will allocate beyond the loaded model, by part (fp32 everywhere).

    from_disk (the larger-than-memory mode): what is loaded is only the embeddings, final norm
    and head; one block's weights are read at a time ("block weights") and dropped with its
    factors once they are saved, so "factors" is one block's instead of the whole model's.

    calibration activations: block inputs, their next-block outputs and the dense outputs kept
    to measure the output error (3 x tokens x hidden); block activations: one block's
    intermediate activations on the calibration set (its widest layer); decomposition: the
    working copies of the largest matrix (the method's measured ``working_copies`` of its size,
    plus its Gram when the method's statistics are "gram", as SparseGPT's), once per matrix
    decomposed at the same time (a block's matrices are spread over torch's threads,
    ``oats.resources.map_on_cores``, as many as the memory left holds);
    factors: the sparse and low-rank terms of every compressed matrix (about twice its size).
    """
    if not blocks:
        return {"calibration activations": 0, "block activations": 0, "decomposition": 0, "factors": 0}
    gram = registry.get(method).statistics == "gram"
    shapes = []
    for _, block in blocks[:1]:
        for ref in adapter.linears(model, block):
            shapes.append(tuple(weight_of(block.get_submodule(ref.path)).shape))
    hidden = max(min(s[1] for s in shapes), 1)
    widest = max(max(s) for s in shapes)
    biggest = max(s[0] * s[1] for s in shapes)
    biggest_in = max(s[1] for s in shapes)
    per_block = sum(s[0] * s[1] for s in shapes)
    one = registry.get(method).working_copies * biggest * 4 + (biggest_in * biggest_in * 4 * 2 if gram else 0)
    # as many at once as map_on_cores will run: the threads, unless the memory left holds fewer
    at_once = max(1, min(torch.get_num_threads(), len(shapes), parallel_room(one)))
    parts = {
        "calibration activations": 3 * n_tokens * hidden * 4,
        "block activations": 2 * n_tokens * widest * 4,
        "decomposition": at_once * one,
        "factors": 2 * per_block * (1 if from_disk else len(blocks)) * 4,
    }
    if from_disk:
        parts["block weights"] = per_block * 4
    return parts
