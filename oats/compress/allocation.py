"""How the compression budget is spread over the blocks: uniform, or OWL-style.

OWL (Yin et al., 2024, "Outlier Weighed Layerwise sparsity") observes that blocks with
more *outliers* — weights whose Wanda score |W_ij| * ||X_j|| is far above the block's
mean score — suffer more from pruning, and gives them a lower rate. Here:

1. A dense statistics pass (the dense model, block by block, on the calibration data)
   gives every linear's weight and input norms.
2. Outlier ratio of block b: the share of scores |W_ij| * ||X_j|| over all linears of the
   block (pooled) that exceed ``threshold`` (OWL's M) times their mean.
3. Rates move linearly against the outlier ratio around the requested rate rho:
   rate_b = rho - lam * (o_b - mean(o)) / max_b |o_b - mean(o)|,
   so the block furthest from the mean moves by exactly ``lam`` (OWL's lambda), no block by
   more, and the mean of the rates is rho (the deviations sum to zero). Every block has
   the same matrices in the supported models, so the model-wide share of parameters kept
   is unchanged (up to each matrix's integer rounding).

OWL's own code maps the ratios onto a range of width 2 lambda before centring; this
mapping keeps the same order and linearity and makes ``lam`` the largest deviation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from oats.compress.statistics import iter_dense_layer_stats
from oats.config import OatsConfig, _number
from oats.errors import ConfigError

ALLOCATIONS = ("uniform", "owl")


@dataclass(frozen=True)
class Owl:
    """OWL's two parameters, validated."""

    lam: float = 0.08
    """lambda: the largest deviation of a block's compression rate from the mean rate."""
    threshold: float = 5.0
    """M: a score is an outlier when it exceeds M times the mean score of its block."""

    def __post_init__(self):
        lam = _number("OWL lambda", self.lam, "in [0, 1)")
        if not 0.0 <= lam < 1.0:
            raise ConfigError(f"OWL lambda must be in [0, 1) (largest change of a block's rate), got {self.lam!r}")
        m = _number("OWL threshold M", self.threshold, "> 1")
        if not m > 1.0:
            raise ConfigError(f"OWL threshold M must be > 1 (outlier = score above M x mean), got {self.threshold!r}")
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "threshold", m)

    def check(self, config: OatsConfig) -> None:
        """Raise ConfigError when the rates could leave (0, 1) or the pattern fixes the rate."""
        if config.nm is not None:
            raise ConfigError(f"OWL allocation sets per-block compression rates, which sparsity {config.sparsity} "
                              "fixes: use sparsity 'row' or 'layer' with it")
        rho = config.compression
        if not (rho - self.lam > 0.0 and rho + self.lam < 1.0):
            raise ConfigError(f"OWL lambda {self.lam:g} would push a block's compression rate outside (0, 1) at "
                              f"compression {rho:g}: use lambda < {min(rho, 1 - rho):g}")

    def to_dict(self) -> dict:
        return {"name": "owl", **asdict(self)}


def parse_allocation(allocation, lam: float | None = None, threshold: float | None = None) -> Owl | None:
    """None for uniform; an ``Owl`` for "owl" (with the given parameters) or an ``Owl`` as is."""
    if allocation is None or allocation == "uniform":
        if lam is not None or threshold is not None:
            raise ConfigError("OWL lambda and M only apply with allocation 'owl'")
        return None
    if isinstance(allocation, Owl):
        return allocation
    if allocation == "owl":
        kw = {k: v for k, v in (("lam", lam), ("threshold", threshold)) if v is not None}
        return Owl(**kw)
    raise ConfigError(f"unknown allocation {allocation!r}: choose one of {', '.join(ALLOCATIONS)}")


def outlier_ratio(scores: list[torch.Tensor], threshold: float) -> float:
    """Share of the pooled scores above ``threshold`` times their mean."""
    flat = torch.cat([s.reshape(-1) for s in scores]).float()
    mean = flat.mean()
    if not mean > 0:
        return 0.0
    return float((flat > threshold * mean).float().mean())


@torch.no_grad()
def outlier_ratios(model: nn.Module, calibration: list[dict], threshold: float = 5.0,
                   allow_generic: bool = False, disk=None) -> list[float]:
    """Per block, the outlier ratio of the Wanda scores |W_ij| * ||X_j|| on the dense model.

    ``disk``: the model's blocks are on the meta device (the larger-than-memory mode) and are
    streamed from these ``DiskWeights``: read, run and dropped in turn, as the compression does."""
    out = []
    for _i, layers in iter_dense_layer_stats(model, calibration, allow_generic=allow_generic, disk=disk):
        out.append(outlier_ratio([w.abs().float() * m2.clamp_min(0).sqrt() for w, m2 in layers.values()],
                                 threshold))
    return out


def owl_rates(ratios: list[float], compression: float, lam: float) -> list[float]:
    """Per-block compression rates: mean exactly ``compression``, largest deviation ``lam``.

    More outliers, lower rate. All ratios equal (or lam = 0): every block gets the mean.
    """
    if not ratios:
        return []
    o = torch.tensor(ratios, dtype=torch.float64)
    z = o - o.mean()
    zmax = float(z.abs().max())
    if zmax <= 0 or lam == 0:
        return [float(compression)] * len(ratios)
    dev = -lam * z / zmax
    dev = dev - dev.mean()  # exact zero sum in floating point, up to the last bit
    return [float(compression + d) for d in dev]


def block_rates_for(model: nn.Module, calibration: list[dict], config: OatsConfig, owl: Owl,
                    allow_generic: bool = False, disk=None) -> tuple[list[float], dict]:
    """OWL rates for ``model`` at ``config.compression`` and a record for the manifest
    (``disk``: blocks streamed from the files, see ``outlier_ratios``)."""
    owl.check(config)
    ratios = outlier_ratios(model, calibration, owl.threshold, allow_generic=allow_generic, disk=disk)
    rates = owl_rates(ratios, config.compression, owl.lam)
    return rates, {**owl.to_dict(), "outlier_ratios": ratios, "block_rates": rates}
