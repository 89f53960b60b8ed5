"""Heavy-tailed spectra: the empirical spectral density (ESD) of W^T W and a power-law fit of its tail.

The eigenvalues of W^T W are the squared singular values of W (the weight as the model uses
it, unscaled). Trained weights usually have a heavy-tailed ESD, p(λ) ∝ λ^(−α) above some
λ_min, while a matrix with the same entries in random places (``shuffled``) has a
Marchenko–Pastur bulk with no such tail: what W shows beyond the shuffled matrix's largest
eigenvalue is structure learned in training.

**The fit** (Clauset, Shalizi & Newman 2009): for each candidate lower cut-off x_min (every
distinct eigenvalue that leaves at least ``MIN_TAIL`` in the tail), the continuous
maximum-likelihood exponent α = 1 + n / Σ ln(λ_i / x_min) over the n eigenvalues ≥ x_min, and
the Kolmogorov–Smirnov distance D = sup |F_emp − F_fit| between the tail's empirical CDF and the
fitted one F_fit(λ) = 1 − (λ / x_min)^(1 − α); the x_min with the smallest D wins. The standard
error of α is (α − 1) / √n. Written here, vectorised (a few milliseconds per matrix): the
``powerlaw`` package implements the same method but took 8.6 s for 3000 values and bounds α
at 3 by default, below what trained weights show.

Matrices: "W" (dense), "S + L" (the compressed weight), "S" (sparse term), "L" (low-rank term,
only its rank-many non-zero eigenvalues), and "W shuffled" (W's entries permuted with a fixed
seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from oats.explain.spectra import singular_values, stable_rank, stored_spectra
from oats.resources import one_thread

MIN_TAIL = 10
"""Fewest eigenvalues a fitted tail may hold (a cut-off in the last few values fits noise)."""
SHUFFLE_SEED = 0
METHOD = ("continuous power-law maximum likelihood, x_min chosen by the minimum Kolmogorov–Smirnov distance "
          "(Clauset, Shalizi & Newman 2009)")
MATRICES = ("W", "S + L", "S", "L")
SHUFFLED = "W shuffled"


@dataclass
class PowerLawFit:
    """p(λ) ∝ λ^(−alpha) for λ ≥ xmin; ks is the KS distance of the tail, sigma the standard error of alpha."""

    alpha: float
    xmin: float
    ks: float
    sigma: float
    n_tail: int
    n: int

    def pdf(self, x) -> np.ndarray:
        """The fitted density over the *whole* ESD (the tail holds n_tail / n of it), 0 below xmin."""
        x = np.asarray(x, dtype=np.float64)
        p = (self.alpha - 1.0) / self.xmin * (x / self.xmin) ** (-self.alpha) * (self.n_tail / self.n)
        return np.where(x >= self.xmin, p, 0.0)


def eigenvalues(a: torch.Tensor) -> np.ndarray:
    """Eigenvalues of a^T a (the squared singular values), descending, fp64 (min(d_out, d_in) of them)."""
    return singular_values(a) ** 2


def positive(values, rel: float = 1e-10) -> np.ndarray:
    """The finite eigenvalues above rel × the largest (numerical zeros dropped), ascending."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0 or x.max() <= 0:
        return np.empty(0)
    return np.sort(x[x > rel * x.max()])


def ks_distance(tail: np.ndarray, alpha: float) -> float:
    """sup |F_emp − F_fit| of ascending ``tail`` (its first value is x_min) under the fitted power law."""
    m = tail.size
    fit = 1.0 - (tail / tail[0]) ** (1.0 - alpha)
    k = np.arange(m)
    return float(max(np.max(np.abs((k + 1) / m - fit)), np.max(np.abs(k / m - fit))))


def fit_power_law(values, min_tail: int = MIN_TAIL) -> PowerLawFit | None:
    """Fit the tail of ``values`` (see the module docstring); None when fewer than ``min_tail``
    positive values exist or the values are all equal."""
    x = positive(values)
    n = x.size
    min_tail = max(int(min_tail), 2)
    if n < min_tail or x[0] == x[-1]:
        return None
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum of log x[i:]
    best = None
    for i in range(n - min_tail + 1):
        if i and x[i] == x[i - 1]:
            continue  # the same cut-off as before
        m = n - i
        spread = suffix[i] - m * logs[i]
        if spread <= 0:
            continue  # every tail value equals x_min
        alpha = 1.0 + m / spread
        d = ks_distance(x[i:], alpha)
        if best is None or d < best[0]:
            best = (d, i, alpha)
    if best is None:
        return None
    d, i, alpha = best[0], best[1], float(best[2])
    m = n - i
    return PowerLawFit(float(alpha), float(x[i]), d, (alpha - 1.0) / math.sqrt(m), int(m), int(n))


def log_density(values, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, density) of the positive values on log-spaced bins: the ESD to draw on
    log-log axes (empty bins left out). The density integrates to 1 over the values."""
    x = positive(values)
    if x.size == 0:
        return np.empty(0), np.empty(0)
    lo, hi = x[0], x[-1]
    if hi <= lo:
        hi = lo * 1.001
    edges = np.geomspace(lo, hi * (1 + 1e-12), bins + 1)
    counts, _ = np.histogram(x, bins=edges)
    dens = counts / (x.size * np.diff(edges))
    centres = np.sqrt(edges[:-1] * edges[1:])
    keep = counts > 0
    return centres[keep], dens[keep]


def shuffled(a: torch.Tensor, seed: int = SHUFFLE_SEED) -> torch.Tensor:
    """``a`` with its entries permuted (fixed seed): the same values, no structure."""
    g = torch.Generator().manual_seed(seed)
    flat = a.detach().reshape(-1)
    return flat[torch.randperm(flat.numel(), generator=g)].reshape(a.shape)


def _terms(run, qualname: str) -> dict[str, torch.Tensor]:
    f = run.factors(qualname)
    w = f["weight"].detach().double()
    s = f["sparse"].detach().double()
    u, v = f["u"].detach().double(), f["v"].detach().double()
    l = u @ v if u.numel() and v.numel() else torch.zeros_like(w)
    return {"W": w, "S + L": s + l, "S": s, "L": l}


def _rank_of(run, qualname: str) -> int:
    return max(int(run.layer(qualname).rank), 0)


_STORED = {"W": "W", "S + L": "S + L", "S": "S", "L": "L unscaled"}
"""This view's matrices (all unscaled) -> their names among a run's stored spectra."""


def _eigenvalues(run, qualname: str, names) -> dict[str, np.ndarray]:
    """Eigenvalues of W^T W etc. for the matrices ``names``: squared stored singular values
    where the run stored them while compressing (``stored_spectra``), else computed; "L" keeps
    its rank-many values."""
    stored = stored_spectra(run, qualname)
    have = {k: stored[_STORED[k]] ** 2 for k in names if _STORED[k] in stored}
    missing = [k for k in names if k not in have]
    if missing:
        t = _terms(run, qualname)
        have.update({k: eigenvalues(t[k]) for k in missing})
        if "L" in missing:
            have["L"] = have["L"][:_rank_of(run, qualname)]
    return {k: have[k] for k in names}


@dataclass
class LayerESD:
    """One matrix's ESDs (W, S + L, S, L, W shuffled) and their power-law fits."""

    qualname: str
    shape: tuple[int, int]
    rank: int
    eigenvalues: dict[str, np.ndarray]
    fits: dict[str, PowerLawFit | None] = field(default_factory=dict)

    @property
    def spikes(self) -> int:
        """How many eigenvalues of W exceed the shuffled W's largest (structure beyond the random bulk)."""
        w, r = positive(self.eigenvalues["W"]), positive(self.eigenvalues[SHUFFLED])
        return int((w > r[-1]).sum()) if w.size and r.size else 0

    def table(self) -> list[dict]:
        rows = []
        for k, ev in self.eigenvalues.items():
            f = self.fits.get(k)
            x = positive(ev)
            rows.append({"matrix": k, "eigenvalues": int(x.size),
                         "alpha": None if f is None else round(f.alpha, 3),
                         "alpha_se": None if f is None else round(f.sigma, 3),
                         "xmin": None if f is None else float(f"{f.xmin:.4g}"),
                         "tail_size": None if f is None else f.n_tail,
                         "ks_distance": None if f is None else round(f.ks, 4),
                         "stable_rank": round(stable_rank(np.sqrt(x)), 2) if x.size else 0.0,
                         "lambda_max": float(f"{x[-1]:.4g}") if x.size else 0.0})
        return rows


@one_thread()
def layer_esd(run, qualname: str) -> LayerESD:
    """ESDs and fits of W, S + L, S, L and the shuffled W of one matrix of a run (the first four
    read where the run stored their spectra; the shuffled W always computed)."""
    rank = _rank_of(run, qualname)
    ev = _eigenvalues(run, qualname, MATRICES)
    ev[SHUFFLED] = eigenvalues(shuffled(run.factors(qualname)["weight"].detach().double()))
    return LayerESD(qualname, tuple(run.layer(qualname).shape), rank, ev, {k: fit_power_law(v) for k, v in ev.items()})


@one_thread()
def layer_alpha(run, qualname: str) -> dict:
    """One row of the whole-model table: α, its fit and the stable rank of W (dense) and of
    S + L (compressed)."""
    rec = run.layer(qualname)
    ev = _eigenvalues(run, qualname, ("W", "S + L"))
    row = {"layer": qualname, "block": rec.block, "name": rec.name, "kind": rec.kind}
    for label, key in (("dense", "W"), ("compressed", "S + L")):
        x = positive(ev[key])
        f = fit_power_law(x)
        row[f"alpha_{label}"] = None if f is None else f.alpha
        row[f"alpha_se_{label}"] = None if f is None else f.sigma
        row[f"xmin_{label}"] = None if f is None else f.xmin
        row[f"ks_{label}"] = None if f is None else f.ks
        row[f"stable_rank_{label}"] = stable_rank(np.sqrt(x)) if x.size else 0.0
    a, b = row["alpha_dense"], row["alpha_compressed"]
    row["delta_alpha"] = None if a is None or b is None else b - a
    return row


def alpha_table(run, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """``layer_alpha`` for every matrix of the run, in order."""
    rows = []
    for i, rec in enumerate(run.layers):
        rows.append(layer_alpha(run, rec.qualname))
        if progress is not None:
            progress(i + 1, len(run.layers))
    return rows


def sign_test(k: int, n: int) -> float:
    """Two-sided sign test: the chance of a split at least as uneven as k of n under a fair coin."""
    if n == 0:
        return 1.0
    k = max(k, n - k)
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2.0 ** n)


def compression_effect(rows: list[dict]) -> str:
    """One sentence, from the numbers: does compression move α, and where (by matrix name and depth)?"""
    both = [r for r in rows if r.get("delta_alpha") is not None]
    if not both:
        return "No layer has a power-law fit for both the dense and the compressed weight, so α cannot be compared."
    d = np.array([r["delta_alpha"] for r in both])
    se = float(np.median([math.hypot(r["alpha_se_dense"], r["alpha_se_compressed"]) for r in both]))
    med = float(np.median(d))
    a0 = float(np.median([r["alpha_dense"] for r in both]))
    a1 = float(np.median([r["alpha_compressed"] for r in both]))
    up = int((d > 0).sum())
    by_name: dict[str, list[float]] = {}
    for r in both:
        by_name.setdefault(r["name"], []).append(r["delta_alpha"])
    names = {k: float(np.median(v)) for k, v in by_name.items()}
    most = max(names, key=lambda k: abs(names[k]))
    least = min(names, key=lambda k: abs(names[k]))
    blocks = sorted({r["block"] for r in both})
    half = blocks[len(blocks) // 2] if blocks else 0
    early = [r["delta_alpha"] for r in both if r["block"] < half]
    late = [r["delta_alpha"] for r in both if r["block"] >= half]
    moved = up if med > 0 else len(d) - up
    p = sign_test(moved, len(d))
    verdict = ("Yes" if p < 0.01 or abs(med) > se else "Not clearly") + f": compression {'raises' if med > 0 else 'lowers'} α"
    depth = (f"; blocks {blocks[0]}–{half - 1} {float(np.median(early)):+.2f} vs blocks {half}–{blocks[-1]} "
             f"{float(np.median(late)):+.2f}" if early and late else "")
    return (f"{verdict} in {moved} of {len(d)} layers (sign test p = {p:.2g}; median Δα = {med:+.2f}, median α "
            f"{a0:.2f} → {a1:.2f}; one layer's Δα is uncertain by about ±{se:.2f}); most in the {most} matrices "
            f"(median {names[most]:+.2f}), least in {least} ({names[least]:+.2f}){depth}.")
