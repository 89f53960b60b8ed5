"""The one configuration object shared by the library, the CLI and the app.

Validation lives here only, so a bad value gets the same message everywhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from fractions import Fraction

from oats.errors import ConfigError

SOLVERS = ("fast", "exact")
DEFAULT_RANK_RATIO = 0.25
"""kappa when nothing else says (no preset, no loaded model to ask): the paper's for language
models. Every default kappa of the package, the CLI, the sweep and the app reads this one."""
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """Return (N, M) for an "N:M" pattern, None for "row"/"layer"; raise ConfigError otherwise."""
    if pattern in ("row", "layer"):
        return None
    m = _NM.match(str(pattern))
    if not m:
        raise ConfigError(
            f"sparsity pattern {pattern!r} is not understood: use 'row', 'layer' or 'N:M' such as '2:4'"
        )
    n, mm = int(m.group(1)), int(m.group(2))
    if mm < 1 or n < 1 or n >= mm:
        raise ConfigError(
            f"sparsity pattern {pattern!r} is invalid: N:M needs 0 < N < M (keep N of every M), e.g. '2:4'"
        )
    return n, mm


def exact_rate(x: float) -> Fraction:
    """A rate as the decimal it is written as, exactly: 0.2 -> 1/5.

    Budgets are floors of products such as d_in x rho; in binary floating point 80 x 0.2
    is 15.999..., whose floor is one short. ``repr`` gives the shortest decimal that reads
    back as the same float (what the user typed, for a typed rate), and ``Fraction`` keeps
    it exact. Every budget in the package goes through this one conversion.
    """
    return Fraction(repr(float(x)))


def _number(name: str, value, allowed: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number {allowed}, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number {allowed}, got {value!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be a number {allowed}, got {value!r}")
    return x


@dataclass(frozen=True)
class OatsConfig:
    """How one weight matrix is split into a sparse term plus a low-rank term.

    N:M convention (the reference code's): the sparse term keeps N of every M consecutive
    input entries of each row, and the low-rank rank is derived from the density
    (N/M) / (1 - rank_ratio). The compression rate is then *derived*, not chosen:
    ``effective_compression = 1 - (N/M) / (1 - rank_ratio)`` (2:4 at rank ratio 0.25 removes
    about 33% of the parameters, not 50%). ``compression`` is ignored in N:M mode.
    """

    compression: float = 0.5
    """rho: fraction of each matrix's parameters removed, 0 < rho < 1 (index storage not counted)."""
    rank_ratio: float = DEFAULT_RANK_RATIO
    """kappa: share of the kept parameters spent on the low-rank term, 0 <= kappa < 1.
    kappa = 0 gives rank 0, and OATS reduces to Wanda."""
    iterations: int = 80
    """N: alternating-thresholding iterations (the paper's default is 80). With the fast
    solver this is the maximum; it stops earlier once the objective stops improving."""
    sparsity: str = "row"
    """'row' (each row keeps the same count, the reference default), 'layer' (one threshold
    per matrix) or 'N:M' (keep N of every M consecutive inputs of a row)."""
    eps: float = 1e-4
    """Relative floor on the input scale: D_j = max(sqrt(E[x_j^2]), eps * mean_k D_k), so a
    channel that never fires is scaled by a small positive number, not zero."""
    solver: str = "fast"
    """'exact': a full SVD every iteration, exactly Algorithm 1. 'fast': warm-started
    subspace iteration plus early stopping, same answer within the benchmark's tolerance."""
    tol: float = 1e-3
    """Fast solver: stop once the relative decrease of the scaled error over one iteration
    falls below tol (after a few iterations). Ignored by the exact solver."""
    shrink: float | None = None
    """lambda in [0, 1]: the Gram-aware methods (SparseGPT, HASSLE-free) solve with
    H_lambda = (1 - lambda) H + lambda diag(H) instead of the calibration inputs' Gram H:
    lambda = 0 is the full Gram, lambda = 1 its diagonal (OATS's scaling). Shrinking toward the
    diagonal trusts the calibration inputs' correlations less, for text unlike them. None: the
    method's own default (``Method.default_shrink``: SparseGPT 0, as published; HASSLE-free
    ``oats.methods.hassle.DEFAULT_SHRINK``). Ignored by the methods that read no Gram."""

    def __post_init__(self):
        rho = _number("compression", self.compression, "in (0, 1)")
        if not 0.0 < rho < 1.0:
            raise ConfigError(f"compression must be in (0, 1) (fraction of parameters removed), got {self.compression!r}")
        kappa = _number("rank_ratio", self.rank_ratio, "in [0, 1)")
        if not 0.0 <= kappa < 1.0:
            raise ConfigError(f"rank_ratio must be in [0, 1) (share of kept parameters in the low-rank term), got {self.rank_ratio!r}")
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, (int, float, str)):
            raise ConfigError(f"iterations must be a whole number of at least 1, got {it!r}")
        try:
            it_f = float(it)
        except ValueError:
            raise ConfigError(f"iterations must be a whole number of at least 1, got {it!r}") from None
        if not math.isfinite(it_f) or it_f != int(it_f) or it_f < 1:
            raise ConfigError(f"iterations must be a whole number of at least 1, got {it!r}")
        eps = _number("eps", self.eps, "in (0, 1)")
        if not 0.0 < eps < 1.0:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        tol = _number("tol", self.tol, ">= 0")
        if tol < 0:
            raise ConfigError(f"tol must be at least 0, got {self.tol!r}")
        shrink = None if self.shrink is None else _number("shrink", self.shrink, "in [0, 1]")
        if shrink is not None and not 0.0 <= shrink <= 1.0:
            raise ConfigError(f"shrink must be in [0, 1] (0: the full Gram, 1: its diagonal), got {self.shrink!r}")
        nm = parse_nm(str(self.sparsity).strip())
        object.__setattr__(self, "compression", rho)
        object.__setattr__(self, "rank_ratio", kappa)
        object.__setattr__(self, "iterations", int(it_f))
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "tol", tol)
        object.__setattr__(self, "shrink", shrink)
        object.__setattr__(self, "sparsity", str(self.sparsity).strip() if nm is None else f"{nm[0]}:{nm[1]}")
        if nm is not None and Fraction(nm[0], nm[1]) / (1 - exact_rate(kappa)) >= 1:
            raise ConfigError(
                f"sparsity {self.sparsity} with rank_ratio {kappa} keeps everything "
                f"((N/M)/(1-rank_ratio) is at least 1): lower the rank ratio or N"
            )

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) in N:M mode, else None."""
        return parse_nm(self.sparsity)

    @property
    def kept(self) -> Fraction:
        """Fraction of each matrix's parameters kept, exactly: 1 - rho, or (N/M) / (1 - kappa)
        in N:M mode. The budgets (``oats.core.decompose``) are computed from this."""
        nm = self.nm
        if nm is None:
            return 1 - exact_rate(self.compression)
        return Fraction(nm[0], nm[1]) / (1 - exact_rate(self.rank_ratio))

    @property
    def density(self) -> float:
        """Fraction of each matrix's parameters kept, sparse and low-rank terms together
        (``kept`` as a float, for display)."""
        return float(self.kept)

    @property
    def effective_compression(self) -> float:
        """The compression rate actually applied (differs from ``compression`` in N:M mode)."""
        return float(1 - self.kept)

    def replace(self, **changes) -> OatsConfig:
        d = asdict(self)
        d.update(changes)
        return OatsConfig(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OatsConfig:
        """The configuration a run recorded (``to_dict``); a field the record lacks because it
        predates the field takes the value such runs used (``RECORDED_BEFORE``), not today's
        default."""
        return cls(**{**RECORDED_BEFORE, **d})


RECORDED_BEFORE = {"shrink": 0.0}
"""Fields added after runs were first recorded, with the value every run before them used
(runs before ``shrink`` solved with the full Gram)."""
