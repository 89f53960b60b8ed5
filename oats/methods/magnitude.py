"""Magnitude pruning: sparse only, each row keeps its largest |W_ij| (no input statistics).

OATS unscaled at rank ratio 0: the block goes through ``decompose_many`` without scales.
"""

from __future__ import annotations

import torch

from oats.config import OatsConfig
from oats.core.decompose import Decomposition, decompose, decompose_many
from oats.methods.registry import Method, register


def magnitude(weight: torch.Tensor, config: OatsConfig, device=None) -> Decomposition:
    """Keep the largest |W_ij| of each row (OATS unscaled, rank ratio 0)."""
    return decompose(weight, None, config.replace(rank_ratio=0.0), device=device)


@register(Method(
    name="magnitude",
    working_copies=6.5,  # measured: see registry.Method.working_copies
    title="magnitude",
    description="sparse only: keep the largest |W_ij| per row",
    budget_note="rank 0; each row keeps d_in - floor(d_in rho) entries, chosen by |W_ij| "
                "(per matrix for 'layer'; N of every M for N:M)",
    statistics="none",
))
def compress(weights, second_moments, grams, config: OatsConfig, device=None) -> list[Decomposition]:
    """Magnitude pruning of every matrix of the block (``second_moments`` are all None)."""
    return decompose_many(weights, second_moments, config, device=device)
