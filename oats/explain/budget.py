"""The Error budget view, computed: how each matrix's error splits between the sparse and the
low-rank term, per-block output errors, convergence histories and per-block ablations
(no plotting, no Streamlit; figures in ``ui.budget_figures``)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from oats.compress.summaries import term_norms
from oats.explain.common import block_paths, scaled_terms
from oats.resources import one_thread


def _budget(run, qualname: str) -> list[float]:
    """||A||^2, ||S||^2, ||L||^2, ||A - S||^2, ||A - L||^2, ||A - S - L||^2 (fp64) of one matrix
    (``oats.compress.summaries.BUDGET``): stored while compressing, else computed."""
    summary = run.summary(qualname) or {}
    b = summary["budget"] if "budget" in summary else term_norms(scaled_terms(run, qualname))["budget"]
    return [float(x) for x in b]


@one_thread()
def layer_budget(run) -> list[dict]:
    """Per matrix, in the scaled space (D from the run's input statistics):

    sparse_only / lowrank_only / both: ||W D - X||_F / ||W D||_F with X = S, L or S + L;
    sparse_energy, lowrank_energy, residual_energy: ||S||^2, ||L||^2, ||W D - S - L||^2 over
    ||W D||^2; interaction = 1 - the three (2<S, L> + 2<S + L, R>: S and L are not orthogonal,
    so the split need not add up to one); output_error: the recorded ||X (W - W')^T|| / ||X W^T||.
    The norms are read from the run's summaries where it stored them (``run.summary``).
    """
    rows = []
    for rec in run.layers:
        a2, s2, l2, as2, al2, r2 = _budget(run, rec.qualname)
        a2 = max(a2, 1e-30)
        se, le, re = s2 / a2, l2 / a2, r2 / a2
        rows.append({"layer": rec.qualname, "block": rec.block, "name": rec.name, "kind": rec.kind,
                     "sparse_only": math.sqrt(as2 / a2), "lowrank_only": math.sqrt(al2 / a2),
                     "both": math.sqrt(re), "sparse_energy": se, "lowrank_energy": le, "residual_energy": re,
                     "interaction": 1.0 - se - le - re, "output_error": rec.output_error,
                     "rank": rec.rank, "nnz": rec.nnz})
    return rows


def block_errors(run) -> list[dict]:
    """Per block: its output error (compressed vs dense block on the same inputs) and the
    mean output error of its matrices."""
    by_block: dict[int, list[float]] = {}
    for rec in run.layers:
        if rec.output_error is not None:
            by_block.setdefault(rec.block, []).append(rec.output_error)
    return [{"block": b.index, "block_output_error": b.output_error,
             "mean_layer_output_error": float(np.mean(by_block[b.index])) if by_block.get(b.index) else None}
            for b in sorted(run.blocks, key=lambda b: b.index)]


def convergence(run) -> dict[str, dict[str, list[float]]]:
    """{qualname: history dict (error, sparse_energy, lowrank_energy per iteration)}."""
    return {rec.qualname: rec.history for rec in run.layers if rec.history}


def ablation_reference(run, evaluate: Callable[[], dict]) -> list[dict]:
    """The evaluation of the whole model dense and compressed ("both"), for comparison."""
    rows = []
    for mode, label in (("dense", "dense model"), ("both", "compressed model")):
        with run.use_mode(mode):
            rows.append({"block": None, "change": label, **evaluate()})
    return rows


def block_ablation(run, block: int, evaluate: Callable[[], dict]) -> list[dict]:
    """Evaluate the compressed model with one block's low-rank terms off ("sparse") and,
    separately, its sparse terms off ("lowrank"); every other block stays compressed.

    ``evaluate()`` returns {metric: value} for the model in its current modes (e.g.
    ``oats.evaluation.evaluate_model(run.model, run.loaded, quick=True)``). Modes are restored.
    """
    paths = block_paths(run, block)
    if not paths:
        raise ValueError(f"block {block} has no compressed layers in this run")
    rows = []
    with run.use_mode("both"):
        for mode, label in (("sparse", "low-rank term off"), ("lowrank", "sparse term off")):
            with run.use_mode(mode, layers=paths):
                rows.append({"block": block, "change": label, **evaluate()})
    return rows
