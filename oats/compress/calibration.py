"""Hooks that capture block inputs and accumulate per-channel input statistics, and the
choice of which inputs each block is calibrated on (``BLOCK_INPUTS``).

Nothing here decides what to compress; the pipeline orchestrates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from oats.errors import ConfigError

BLOCK_INPUTS = ("compressed", "dense")
"""The inputs each block is calibrated on.

"compressed" (the default; the paper's Section 3.3): block i sees the calibration data after
the already compressed blocks 0..i-1, so each block's statistics include the errors of the
ones before it, and the blocks must be compressed one after the other.

"dense": block i sees the dense model's own block-i inputs (the previous dense block's
outputs; one dense pass gives them all), so no block depends on another block's result and
the blocks of one model can be compressed in parallel (``oats.runner.blocks_ray``). Errors
are then no longer seen by the blocks after them (the README states what that costs).
"""


def check_block_inputs(mode, resume=None) -> str:
    """``mode`` checked against ``BLOCK_INPUTS`` and against the run to resume (a run is
    continued only with the inputs it was started with); ConfigError (one line) otherwise."""
    if mode not in BLOCK_INPUTS:
        raise ConfigError(f"block inputs {mode!r} are not known: choose compressed (each block calibrated on the "
                          "outputs of the compressed blocks before it, the default) or dense (on the dense model's "
                          "own activations: blocks independent)")
    if resume is not None and recorded_block_inputs(resume.calibration) != mode:
        raise ConfigError(f"the run to resume was calibrated on {recorded_block_inputs(resume.calibration)} block "
                          f"inputs, not {mode}: resume with the same block inputs")
    return mode


def recorded_block_inputs(calibration: dict | None) -> str:
    """The block inputs a run's ``calibration`` record says it was calibrated on: only "dense"
    is written, so a run made before the choice existed reads as "compressed" (what it was)."""
    mode = (calibration or {}).get("block_inputs") if isinstance(calibration, dict) else None
    return mode if mode in BLOCK_INPUTS else "compressed"


class _Stop(Exception):
    """Raised inside block 0's pre-hook: the rest of the model need not run."""


@dataclass
class BlockInputs:
    """The inputs of one block for every calibration batch.

    hidden[i]: (batch, tokens, hidden) hidden states of batch i; args/kwargs: the other inputs,
    replayed unchanged for every block (masks, rotary embeddings, ...); token_masks[i]: a
    (batch, tokens) bool mask of real (non-padding) tokens, or None.
    """

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)
    token_masks: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        total = 0
        for h, m in zip(self.hidden, self.token_masks):
            total += int(m.sum()) if m is not None else h.shape[0] * h.shape[1]
        return total


def _token_mask(batch: dict) -> torch.Tensor | None:
    m = batch.get("attention_mask")
    return None if m is None else m.bool()


@torch.no_grad()
def capture_block_inputs(model: nn.Module, adapter, first_block: nn.Module, batches: list[dict]) -> BlockInputs:
    """Run each batch through the model until block 0 and keep what block 0 receives."""
    store = BlockInputs()

    def pre_hook(_module, args, kwargs):
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        store.hidden.append(hidden.detach())
        store.args.append(rest)
        store.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Stop

    handle = first_block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                adapter.run_model(model, batch)
            except _Stop:
                pass
            else:
                raise RuntimeError("the model never reached its first block: the adapter's block list is wrong")
            store.token_masks.append(_token_mask(batch))
    finally:
        handle.remove()
    return store


@torch.no_grad()
def run_block(block: nn.Module, adapter, inputs: BlockInputs) -> list[torch.Tensor]:
    """Outputs (hidden states) of ``block`` for every captured batch."""
    outs = []
    for h, a, kw in zip(inputs.hidden, inputs.args, inputs.kwargs):
        outs.append(adapter.block_output(block(h, *a, **kw)).detach())
    return outs


class SecondMoments:
    """Accumulates sum over real tokens of x_j^2 for the input of each hooked linear.

    Uses a fused reduction (vector norm over the token axis) so no squared copy of the
    activations is made. ``current_mask`` is set by the caller for each batch, so padding
    tokens do not count.

    ``hook(name, module, gram=True)`` also accumulates the full Gram matrix X^T X
    (d_in x d_in, fp32) of that input, for the methods that need it (SparseGPT). It is off
    by default: it costs d_in^2 floats per hooked input and a matrix product per batch.
    """

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.grams: dict[str, torch.Tensor] = {}
        self.current_mask: torch.Tensor | None = None
        self._handles = []

    def hook(self, name: str, module: nn.Module, gram: bool = False) -> None:
        def fn(_m, inp, _out):
            x = inp[0].detach()
            mask = self.current_mask
            if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask]
            x = x.reshape(-1, x.shape[-1])
            sq = torch.linalg.vector_norm(x.float(), ord=2, dim=0).square_()
            if name in self.sums:
                self.sums[name].add_(sq)
            else:
                self.sums[name] = sq
            self.counts[name] = self.counts.get(name, 0) + x.shape[0]
            if gram:
                xf = x.float()
                if name in self.grams:
                    self.grams[name].addmm_(xf.T, xf)
                else:
                    self.grams[name] = xf.T @ xf
        self._handles.append(module.register_forward_hook(fn))

    def mean(self, name: str) -> torch.Tensor:
        """(d_in,) mean over calibration tokens of x_j^2."""
        return self.sums[name] / max(self.counts[name], 1)

    def gram(self, name: str) -> torch.Tensor:
        """(d_in, d_in) mean over calibration tokens of x x^T (its diagonal is ``mean(name)``).

        Only for inputs hooked with ``gram=True``.
        """
        if name not in self.grams:
            raise KeyError(f"no Gram matrix was collected for {name!r}: hook it with gram=True")
        return self.grams[name] / max(self.counts[name], 1)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.no_grad()
def dense_block_stats(block: nn.Module, adapter, inputs: BlockInputs, paths, gram: bool = False
                      ) -> tuple[SecondMoments, list[torch.Tensor]]:
    """Run ``block`` on every captured batch with its linears at ``paths`` hooked.

    Returns the accumulated statistics (padding tokens excluded) and the block's outputs.
    """
    stats = SecondMoments()
    for path in paths:
        stats.hook(path, block.get_submodule(path), gram=gram)
    outs = []
    try:
        for i, (h, a, kw) in enumerate(zip(inputs.hidden, inputs.args, inputs.kwargs)):
            stats.current_mask = inputs.token_masks[i]
            outs.append(adapter.block_output(block(h, *a, **kw)).detach())
    finally:
        stats.remove()
    return stats, outs
