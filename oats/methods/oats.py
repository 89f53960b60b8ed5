"""OATS: a sparse plus a low-rank term by alternating thresholding on the scaled weight W D.

The per-matrix algorithm (Algorithm 1, its budgets and solvers) lives in
``oats.core.decompose``; this file registers it as a method. The matrices of a block go
through ``decompose_many`` together, which batches same-shaped matrices.
"""

from __future__ import annotations

from oats.config import OatsConfig
from oats.core.decompose import Decomposition, decompose, decompose_many
from oats.methods.registry import Method, Replay, register


def own_config(config: OatsConfig) -> OatsConfig:
    """OATS decomposes with the configuration as given."""
    return config


def own_rank_ratio(config) -> float:
    """OATS spends the user's kappa on the low-rank term."""
    return config.rank_ratio


def walk(weight, second_moments, gram, config: OatsConfig, trace) -> tuple[dict, dict]:
    """The Walkthrough's replay of one matrix: ``decompose`` with every iteration traced."""
    return decompose(weight, second_moments, config, trace=trace).history.to_dict(), {}


REPLAY = Replay(
    walk=walk,
    step="Iteration",
    intro=("OATS alternates two projections on the scaled weight **W D**: the best rank-r approximation of "
           "**W D − S** (an SVD) gives **L**, then the largest entries of **W D − L** allowed by the budget give "
           "**S**. Move the iteration slider to watch the terms settle; change ρ and κ to recompute this layer."),
    one_step=("At κ = 0 there is no low-rank term, so there is nothing to alternate: the sparse term is the largest "
              "entries of W D kept once (a single hard threshold, Wanda's mask), which is one iteration, so there is "
              "no iteration slider or objective curve; the heat maps and the table below show that one step."),
    rank_zero="Wanda",
    stands_in=("none", "diagonal"),  # the other weight- and moment-based methods: OATS on their layer
)
"""Alternating thresholding replayed on the layer; it stands in for methods without a replay."""


@register(Method(
    name="oats",
    title="OATS",
    description="sparse + low-rank (alternating thresholding on W D)",
    budget_note="rank r = floor(kappa (1-rho) d_out d_in / (d_out + d_in)) plus a sparse term that keeps "
                "d_in - floor(d_in (1 - (1-kappa)(1-rho))) entries per row (per matrix for sparsity 'layer'; "
                "N of every M with the rank from (N/M)/(1-kappa) for N:M)",
    statistics="diagonal",
    run_modes=("dense", "both", "sparse", "lowrank"),
    iterative=True,
    uses_rank_ratio=True,
    thresholding=True,
    replay=REPLAY,
    decompose_config=own_config,
    rank_ratio=own_rank_ratio,
))
def compress(weights, second_moments, grams, config: OatsConfig, device=None) -> list[Decomposition]:
    """Alternating thresholding on every matrix of the block, scaled by its second moments."""
    return decompose_many(weights, second_moments, config, device=device)
