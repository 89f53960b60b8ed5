"""Low-rank only: no sparse term; the whole budget as rank, by a truncated SVD of W D.

r = floor((1 - rho) d_out d_in / (d_out + d_in)) (``lowrank_rank``). N:M patterns do not
apply (there is no sparse term). The history holds the scaled error, as for OATS.
"""

from __future__ import annotations

import contextlib

import torch

from oats.config import OatsConfig
from oats.core.decompose import Decomposition, History, input_scale, lowrank_rank
from oats.errors import ConfigError
from oats.methods.registry import Method, register
from oats.resources import one_thread


@torch.no_grad()
def lowrank_only(weight: torch.Tensor, second_moments: torch.Tensor | None, config: OatsConfig,
                 device=None) -> Decomposition:
    """The best rank-r approximation of W D (truncated SVD), unscaled; no sparse term.

    Args:
        weight: (d_out, d_in).
        second_moments: (d_in,) mean squared inputs (None: plain SVD of W).
        config: ``compression`` sets the rank (``lowrank_rank``); the rank ratio is not used.

    Returns a ``Decomposition`` with an all-zero sparse term and one history entry.
    """
    if config.nm is not None:
        raise ConfigError(f"the low-rank method has no sparse term, so sparsity {config.sparsity} does not apply: "
                          "use sparsity 'row' with it")
    if weight.dim() != 2:
        raise ConfigError(f"a weight must be a matrix (d_out, d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    dev = torch.device(device) if device is not None else weight.device
    w = weight.detach().to(device=dev, dtype=torch.float32)
    if not torch.isfinite(w).all():
        raise ConfigError("a weight matrix contains NaN or inf: the model's weights are damaged")
    d = input_scale(second_moments, d_in, config.eps, device=dev)
    a = w * d
    r = lowrank_rank(d_out, d_in, config)
    with one_thread() if dev.type == "cpu" else contextlib.nullcontext():
        u, sv, vh = torch.linalg.svd(a, full_matrices=False)
    us = (u[:, :r] * sv[:r]).contiguous()
    v = (vh[:r] / d).contiguous()
    a2 = float(sv.square().sum())
    l2 = float(sv[:r].square().sum())
    hist = History(error=[(max(a2 - l2, 0.0) / max(a2, 1e-30)) ** 0.5], sparse_energy=[0.0],
                   lowrank_energy=[l2 / max(a2, 1e-30)])
    return Decomposition(sparse=torch.zeros_like(w), u=us, v=v, scale=d, singular_values=sv[:r].contiguous(),
                         history=hist, config=config)


def lowrank_config(config: OatsConfig) -> OatsConfig:
    """The configuration as given; ConfigError for an N:M pattern (there is no sparse term)."""
    if config.nm is not None:
        raise ConfigError(f"the low-rank method has no sparse term, so sparsity {config.sparsity} does not "
                          "apply: use sparsity 'row' with it")
    return config


def full_rank_ratio(config) -> float:
    """The whole budget goes to the low-rank term."""
    return 1.0


@register(Method(
    name="lowrank",
    working_copies=4.6,  # measured: see registry.Method.working_copies
    title="low-rank SVD",
    description="low-rank only: truncated SVD of W D with the whole budget as rank",
    budget_note="no sparse term; rank r = floor((1-rho) d_out d_in / (d_out + d_in)) of W D (truncated SVD)",
    statistics="diagonal",
    decompose_config=lowrank_config,
    rank_ratio=full_rank_ratio,
))
def compress(weights, second_moments, grams, config: OatsConfig, device=None) -> list[Decomposition]:
    """The truncated SVD of every matrix of the block, scaled by its second moments."""
    return [lowrank_only(w, m, config, device=device) for w, m in zip(weights, second_moments)]
