"""Wanda: sparse only, each row keeps its largest |W_ij| * ||X_j|| (Sun et al., 2024).

This *is* OATS with rank ratio 0 (``decompose`` at kappa = 0 is Wanda's mask), and stays
so: the block goes through ``decompose_many`` with the rank ratio set to 0.
"""

from __future__ import annotations

import torch

from oats.config import OatsConfig
from oats.core.decompose import Decomposition, decompose, decompose_many
from oats.methods.registry import Method, register


def wanda(weight: torch.Tensor, second_moments: torch.Tensor, config: OatsConfig, device=None) -> Decomposition:
    """Keep the largest |W_ij| * ||X_j|| of each row (OATS with rank ratio 0)."""
    return decompose(weight, second_moments, config.replace(rank_ratio=0.0), device=device)


@register(Method(
    name="wanda",
    working_copies=6.5,  # measured: see registry.Method.working_copies
    title="Wanda",
    description="sparse only: keep the largest |W_ij| * ||X_j|| per row (OATS with rank ratio 0)",
    budget_note="rank 0; each row keeps d_in - floor(d_in rho) entries, chosen by |W_ij| ||X_j|| "
                "(per matrix for 'layer'; N of every M for N:M)",
    statistics="diagonal",
))
def compress(weights, second_moments, grams, config: OatsConfig, device=None) -> list[Decomposition]:
    """Wanda on every matrix of the block (``config`` already has rank ratio 0)."""
    return decompose_many(weights, second_moments, config, device=device)
