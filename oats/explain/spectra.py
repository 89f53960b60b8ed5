"""The Spectra view, computed: singular values of each matrix seen four ways, effective and
stable ranks, and a whole run's normalised spectra (plain arrays, no plotting, no Streamlit;
figures in ``ui.spectra_figures``). Scaled space as in ``oats.explain.common``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from oats.compress.summaries import SV_KEYS, singular_values
from oats.explain.common import scaled_terms
from oats.resources import one_thread

__all__ = ["SPECTRA", "LayerSpectra", "SpectraOverview", "effective_rank", "energy_captured", "layer_spectra",
           "singular_values", "spectra_overview", "stable_rank", "stored_spectra"]


def stored_spectra(run, qualname: str) -> dict[str, np.ndarray]:
    """The spectra the run stored for one matrix while compressing (``run.summary``), fp64
    numpy by the names of ``oats.compress.summaries.SV_KEYS`` ("W", "W D", "S + L", ...);
    empty when it stored none (an old run). A view computes what is missing."""
    summary = run.summary(qualname) or {}
    return {name: summary[key].detach().double().cpu().numpy() for name, key in SV_KEYS.items() if key in summary}


def effective_rank(s) -> float:
    """Roy & Vetterli's effective rank exp(H(p)), p_k = s_k / sum(s): between 1 and len(s)."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def stable_rank(s) -> float:
    """||A||_F^2 / ||A||_2^2 = sum s_k^2 / s_1^2: at most the rank, robust to tiny values."""
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0 or s.max() <= 0:
        return 0.0
    return float((s ** 2).sum() / s.max() ** 2)


def energy_captured(s, r: int) -> float:
    """Share of sum s_k^2 in the top r singular values (what the best rank-r term keeps)."""
    s2 = np.asarray(s, dtype=np.float64) ** 2
    total = s2.sum()
    return float(s2[:r].sum() / total) if total > 0 else 0.0


SPECTRA = ("W", "W D", "L", "W D - S")
"""Keys of ``LayerSpectra.values``: the weight, the scaled weight, the scaled low-rank term,
and the scaled weight minus the sparse term, which is what the SVD step factorises."""


@dataclass
class LayerSpectra:
    """Singular values of one matrix seen four ways, and the chosen rank r."""

    qualname: str
    shape: tuple[int, int]
    rank: int
    values: dict[str, np.ndarray]
    captured: dict[str, float]  # share of each spectrum's energy in its top r values
    lowrank_share: float        # ||L||^2 / ||W D||^2: the scaled energy the low-rank term holds

    def table(self) -> list[dict]:
        """One row per spectrum: its ranks and the energy in its top r values."""
        return [{"matrix": k, "values": len(v), "effective_rank": round(effective_rank(v), 2),
                 "stable_rank": round(stable_rank(v), 2), "energy_in_top_r": round(self.captured[k], 4)}
                for k, v in self.values.items()]


_FRESH = {"W": lambda t, r: singular_values(t["W"]), "W D": lambda t, r: singular_values(t["A"]),
          "L": lambda t, r: singular_values(t["L"])[:max(r, 0)],
          "W D - S": lambda t, r: singular_values(t["A"] - t["S"])}
"""How each of ``SPECTRA`` is computed from ``scaled_terms`` when the run did not store it."""


@one_thread()
def layer_spectra(run, qualname: str) -> LayerSpectra:
    """Spectra of W, W D, L and W D - S for one matrix of a run: those the run stored while
    compressing (``run.summary``) are read, the others computed (an SVD of the matrix each)."""
    rec = run.layer(qualname)
    stored = stored_spectra(run, qualname)
    summary = run.summary(qualname) or {}
    t = None if all(k in stored for k in SPECTRA) and "budget" in summary else scaled_terms(run, qualname)
    vals = {k: stored[k] if k in stored else _FRESH[k](t, rec.rank) for k in SPECTRA}
    captured = {k: energy_captured(v, rec.rank) if k != "L" else 1.0 for k, v in vals.items()}
    if "budget" in summary:  # ||A||^2 and ||L||^2 (oats.compress.summaries.BUDGET)
        a2, l2 = float(summary["budget"][0]), float(summary["budget"][2])
    else:
        a2, l2 = float(t["A"].square().sum()), float(t["L"].square().sum())
    return LayerSpectra(qualname, tuple(rec.shape), rec.rank, vals, captured, l2 / max(a2, 1e-30))


@dataclass
class SpectraOverview:
    """Every matrix of a run: normalised spectra of W D on a common relative-index grid, and
    per-layer ranks. heat[i, j] = log10(s / s_1) of layer i at relative index grid[j]."""

    labels: list[str]
    grid: np.ndarray
    heat: np.ndarray
    rows: list[dict] = field(default_factory=list)


@one_thread()
def spectra_overview(run, points: int = 128, progress: Callable[[int, int], None] | None = None) -> SpectraOverview:
    """Two spectra per matrix (W and W D; read when the run stored them, else two SVDs):
    normalised spectra and effective/stable ranks.

    The relative index of value k of n is k / (n - 1), so matrices of different shapes share
    one axis; rank_frac = r / min(d_out, d_in) marks where the chosen rank falls on it.
    """
    grid = np.linspace(0.0, 1.0, points)
    heat = np.empty((len(run.layers), points))
    rows = []
    for i, rec in enumerate(run.layers):
        stored = stored_spectra(run, rec.qualname)
        t = None if "W" in stored and "W D" in stored else scaled_terms(run, rec.qualname)
        s_w = stored["W"] if "W" in stored else singular_values(t["W"])
        s_a = stored["W D"] if "W D" in stored else singular_values(t["A"])
        x = np.linspace(0.0, 1.0, len(s_a))
        heat[i] = np.interp(grid, x, np.log10(np.maximum(s_a / max(s_a[0], 1e-30), 1e-12)))
        n = min(rec.shape)
        rows.append({"layer": rec.qualname, "block": rec.block, "name": rec.name, "kind": rec.kind,
                     "min_dim": n, "rank": rec.rank, "rank_frac": rec.rank / n,
                     "effective_rank_W": effective_rank(s_w), "effective_rank_WD": effective_rank(s_a),
                     "stable_rank_W": stable_rank(s_w), "stable_rank_WD": stable_rank(s_a),
                     "energy_top_r_WD": energy_captured(s_a, rec.rank)})
        if progress:
            progress(i + 1, len(run.layers))
    return SpectraOverview([r.qualname for r in run.layers], grid, heat, rows)
