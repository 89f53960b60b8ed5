"""The Walkthrough view, computed: one matrix decomposed on the spot, step by step, with pooled
snapshots of L, S and W D - S - L (no plotting, no Streamlit; figures in ``ui.walkthrough_figures``).

How a method is replayed is its record's: ``Method.replay`` (``oats.methods.registry.Replay``,
looked up with ``registry.replay_for``) gives the step function, its step word and whether it
needs the layer's input Gram, which ``layer_gram`` recomputes from the run's calibration data.
This module names no method. Scaled space as in ``oats.explain.common``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oats.compress.calibration import capture_block_inputs, dense_block_stats, run_block
from oats.config import OatsConfig
from oats.core.decompose import input_scale, rank_budget, row_keep, sparse_budget
from oats.explain.common import Heat, block_paths, downsample
from oats.methods.registry import Replay
from oats.models.adapters import get_adapter
from oats.resources import one_thread


@dataclass
class Snapshot:
    """One step of the replay (an iteration of alternating thresholding, an alternation),
    pooled |values| of the scaled terms."""

    iteration: int
    lowrank: Heat
    sparse: Heat
    residual: Heat


@dataclass
class Walkthrough:
    """One matrix decomposed on the spot with snapshots of L, S and W D - S - L.

    ``step`` is the replay's word for one step ("Iteration", "Alternation"). A replay that
    fits the layer's output error (on its Gram) holds ``output_error`` in the history, ``kept``
    is the step the method keeps (the lowest output error) and ``fallback`` says that its
    rank-0 result beat them all (the layer then has no low-rank term).
    """

    shape: tuple[int, int]
    config: OatsConfig
    rank: int
    sparse_budget: int
    row_keep: int | None
    history: dict
    snapshots: list[Snapshot]
    zmax: float           # a common colour ceiling: the 99.5th percentile of |W D|
    target: Heat          # pooled |W D|
    step: str = "Iteration"
    kept: int | None = None
    fallback: bool = False

    @property
    def iterations(self) -> list[int]:
        return [s.iteration for s in self.snapshots]

    def at(self, iteration: int) -> Snapshot:
        """The snapshot nearest to ``iteration`` (not every iteration is kept)."""
        return min(self.snapshots, key=lambda s: (abs(s.iteration - iteration), s.iteration))


@one_thread()
def walkthrough(weight: torch.Tensor, second_moments: torch.Tensor | None, config: OatsConfig, replay: Replay,
                max_snapshots: int = 40, max_size: int = 128, gram: torch.Tensor | None = None) -> Walkthrough:
    """Decompose one matrix with ``config`` by ``replay``, keeping at most ``max_snapshots``
    pooled snapshots.

    A replay with ``gram`` needs the layer's (d_in, d_in) input Gram (``layer_gram``); its
    diagonal stands in for missing second moments.

    Snapshots start at every iteration; when there are too many, every other one is dropped
    (the stride doubles), so they stay spread over the whole run. The first and the last
    iteration are always kept.
    """
    if replay.gram and gram is None:
        raise ValueError("this replay needs the layer's input Gram (layer_gram)")
    w = weight.detach().float()
    if gram is not None and second_moments is None:
        second_moments = torch.diagonal(gram).float()
    d = input_scale(second_moments, w.shape[1], config.eps)
    a = w * d
    kept: dict[int, Snapshot] = {}
    stride = [1]
    last: list = [None]

    def snap(t, l, s):
        return Snapshot(t, downsample(l, max_size, max_size, "absmax"), downsample(s, max_size, max_size, "absmax"),
                        downsample(a - l - s, max_size, max_size, "absmax"))

    def trace(t, l, s):
        last[0] = (t, l, s)
        if t == 1 or t % stride[0] == 0:
            kept[t] = snap(t, l, s)
            if len(kept) > max_snapshots:
                stride[0] *= 2
                for k in [k for k in kept if k != 1 and k % stride[0] != 0]:
                    del kept[k]

    history, extra = replay.walk(w, second_moments, gram if replay.gram else None, config, trace)
    if last[0] is not None and last[0][0] not in kept:
        kept[last[0][0]] = snap(*last[0])
    d_out, d_in = w.shape
    mag = a.abs().flatten()
    if mag.numel() > 1_000_000:  # quantile's input limit; a strided sample is enough for a colour scale
        mag = mag[:: mag.numel() // 1_000_000 + 1]
    zmax = float(torch.quantile(mag, 0.995)) if mag.numel() else 1.0
    return Walkthrough((d_out, d_in), config, rank_budget(d_out, d_in, config), sparse_budget(d_out, d_in, config),
                       row_keep(d_in, config) if config.sparsity == "row" else None, history,
                       [kept[k] for k in sorted(kept)], max(zmax, 1e-12),
                       downsample(a, max_size, max_size, "absmax"), replay.step, **extra)


REPLAY_AT_ONCE_S = 15.0
"""A replay expected to take longer waits for a button (with its estimate): the page's first
draw is then the saved run's own result (``saved_walkthrough``), a read. The embedded models'
layers replay within it on arrival, as they always did; a 1B model's do not (a 2048 x 8192
matrix takes about a minute at default settings on a 2-core machine)."""


@torch.no_grad()
def saved_walkthrough(run, qualname: str, max_size: int = 128) -> Walkthrough:
    """The layer as the run saved it: its recorded history (per step, as the decomposition
    logged it) and one snapshot, the stored S and L at the last step, in the scaled space.
    What the Walkthrough draws first where a replay on the spot would be slow."""
    rec = run.layer(qualname)
    f = run.factors(qualname)
    d = input_scale(run.second_moments[qualname], rec.shape[1], run.config.eps)
    a = f["weight"].float() * d
    s = f["sparse"].float() * d
    low = (f["u"].float() @ f["v"].float()) * d
    history = {k: list(v) for k, v in (rec.history or {}).items()}
    if not history.get("error"):  # a method that logs no steps: its one result
        a2 = max(float(a.square().sum()), 1e-30)
        history = {"error": [rec.scaled_error], "sparse_energy": [float(s.square().sum()) / a2],
                   "lowrank_energy": [float(low.square().sum()) / a2]}
    last = len(history["error"])
    out = history.get("output_error") or []
    kept = 1 + min(range(len(out)), key=out.__getitem__) if out else None  # the step the method kept
    snap = Snapshot(last, downsample(low, max_size, max_size, "absmax"), downsample(s, max_size, max_size, "absmax"),
                    downsample(a - low - s, max_size, max_size, "absmax"))
    mag = a.abs().flatten()
    if mag.numel() > 1_000_000:
        mag = mag[:: mag.numel() // 1_000_000 + 1]
    zmax = float(torch.quantile(mag, 0.995)) if mag.numel() else 1.0
    d_out, d_in = rec.shape
    return Walkthrough((d_out, d_in), run.config, rec.rank, rec.nnz,
                       row_keep(d_in, run.config) if run.config.sparsity == "row" else None, history, [snap],
                       max(zmax, 1e-12), downsample(a, max_size, max_size, "absmax"), kept=kept)


def replay_seconds(run, qualname: str, gram: bool = False) -> float:
    """About how long replaying one layer takes here: the run's own decomposition time of the
    layer's block, shared over its matrices by size (``LayerRecord.time_s`` is the block's mean
    per matrix), plus, for a replay on the input Gram, the calibration pass through the blocks
    up to the layer's (``layer_gram``), from the run's recorded calibration time."""
    rec = run.layer(qualname)
    mates = [r for r in run.layers if r.block == rec.block]
    mean_size = sum(r.shape[0] * r.shape[1] for r in mates) / max(len(mates), 1)
    seconds = rec.time_s * rec.shape[0] * rec.shape[1] / max(mean_size, 1.0)
    if gram:
        t = run.timings or {}
        calib = max(float(t.get("total_s", 0.0)) - float(t.get("decompose_s", 0.0)), 0.0)
        blocks = max(len({r.block for r in run.layers}), 1)
        seconds += calib * (rec.block + 1) / blocks
    return seconds


@torch.no_grad()
def layer_gram(run, qualname: str, calibration: list[dict]) -> torch.Tensor:
    """The (d_in, d_in) input Gram of one layer as the compression saw it.

    A run folder keeps each layer's diagonal second moments, not its Gram (d_in^2 numbers per
    input). It is recomputed as the pipeline did: the calibration batches (the run's own,
    ``oats.data.calibration_batches`` with the manifest's calibration request) go through the
    blocks before the layer's in their compressed ("both") mode, then through the layer's own
    block with its linears dense. ``run.model`` is used and its modes are restored.
    """
    rec = run.layer(qualname)
    model = run.model
    adapter = get_adapter(model, allow_generic=run.family == "generic")
    blocks = adapter.blocks(model)
    block_path, block = blocks[rec.block]
    inner = rec.path[len(block_path) + 1:] if rec.path.startswith(block_path + ".") else rec.path
    with run.use_mode("both"), run.use_mode("dense", layers=block_paths(run, rec.block)):
        inputs = capture_block_inputs(model, adapter, blocks[0][1], calibration)
        for _, earlier in blocks[:rec.block]:
            inputs.hidden = run_block(earlier, adapter, inputs)
        stats, _ = dense_block_stats(block, adapter, inputs, [inner], gram=True)
    return stats.gram(inner)