"""What the app shows, computed: plain arrays and small dataclasses, no plotting, no Streamlit.

Everything here works in the *scaled* space OATS decomposes: A = W D with D the input scale
(``oats.core.decompose.input_scale`` of the layer's recorded second moments), S = S' D the scaled
sparse term and L = (u v) D the scaled low-rank term. Errors and energies are relative to
||W D||_F (or its square), as in ``oats.core.decompose.History``.

Sections: heatmap downsampling; spectra and ranks; outlier channels; error budget;
walkthrough snapshots; sweeps and run summaries. Figures live in ``ui.figures``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from oats.config import OatsConfig
from oats.compress.calibration import capture_block_inputs, dense_block_stats, run_block
from oats.core.decompose import decompose, input_scale, rank_budget, row_keep, sparse_budget
from oats.methods.hassle import gram_objective, hassle
from oats.models.adapters import get_adapter
from oats.resources import one_thread
from oats.runs.info import RunInfo

HEAT_MAX = 256  # heatmaps are pooled to at most this many rows and columns


# ----------------------------------------------------------------------------- downsampling


@dataclass
class Heat:
    """A (possibly pooled) heatmap: z (rows, cols); rows/cols hold the first original index
    of each pooled cell, so axes and hover keep the matrix's own coordinates."""

    z: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    factor: tuple[int, int]  # original cells per pooled cell along (rows, cols)


def downsample(a, max_rows: int = HEAT_MAX, max_cols: int = HEAT_MAX, how: str = "mean") -> Heat:
    """Pool a 2-D array to at most (max_rows, max_cols) cells.

    ``how``: "mean" (block mean, e.g. a mask's density), "max" (block maximum) or "absmax"
    (block maximum of |a|, so a single large entry stays visible). Blocks at the edges may be
    smaller; NaN entries are ignored.
    """
    a = np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"downsample needs a 2-D array, got shape {a.shape}")
    if how not in ("mean", "max", "absmax"):
        raise ValueError(f"how must be mean, max or absmax, got {how!r}")
    n, m = a.shape
    fr, fc = max(1, math.ceil(n / max_rows)), max(1, math.ceil(m / max_cols))
    if how == "absmax":
        a = np.abs(a)
    if fr == 1 and fc == 1:
        return Heat(a.copy(), np.arange(n), np.arange(m), (1, 1))
    nr, nc = math.ceil(n / fr), math.ceil(m / fc)
    padded = np.full((nr * fr, nc * fc), np.nan)
    padded[:n, :m] = a
    blocks = padded.reshape(nr, fr, nc, fc)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
            z = np.nanmean(blocks, axis=(1, 3)) if how == "mean" else np.nanmax(blocks, axis=(1, 3))
    return Heat(z, np.arange(0, n, fr), np.arange(0, m, fc), (fr, fc))


# ----------------------------------------------------------------------------- spectra


def singular_values(a: torch.Tensor) -> np.ndarray:
    """Singular values of a matrix, descending, fp64 numpy (min(d_out, d_in) of them).

    Through the eigenvalues of the smaller fp64 Gram matrix: several times faster than an
    SVD here, and accurate to about 1e-8 of the largest value, far below what a log plot of
    a weight spectrum shows.
    """
    a = a.detach().double().cpu()
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return torch.linalg.eigvalsh(g).flip(0).clamp_min(0).sqrt().numpy()


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


def layer_scale(run, qualname: str) -> torch.Tensor:
    """D of one matrix, exactly as the pipeline computed it from the recorded statistics."""
    rec = run.layer(qualname)
    return input_scale(run.second_moments[qualname], rec.shape[1], run.config.eps)


def scaled_terms(run, qualname: str) -> dict[str, torch.Tensor]:
    """{"A": W D, "S": S' D, "L": (u v) D, "D": D, "W": W} in fp32 for one matrix."""
    f = run.factors(qualname)
    d = layer_scale(run, qualname)
    w = f["weight"].detach().float()
    return {"W": w, "D": d, "A": w * d, "S": f["sparse"].detach().float() * d,
            "L": (f["u"].detach().float() @ f["v"].detach().float()) * d}


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


@one_thread()
def layer_spectra(run, qualname: str) -> LayerSpectra:
    """Spectra of W, W D, L and W D - S for one matrix of a run (four SVDs of that matrix)."""
    t = scaled_terms(run, qualname)
    rec = run.layer(qualname)
    vals = {"W": singular_values(t["W"]), "W D": singular_values(t["A"]),
            "L": singular_values(t["L"])[:max(rec.rank, 0)], "W D - S": singular_values(t["A"] - t["S"])}
    a2 = float(t["A"].square().sum())
    captured = {k: energy_captured(v, rec.rank) if k != "L" else 1.0 for k, v in vals.items()}
    return LayerSpectra(qualname, tuple(rec.shape), rec.rank, vals, captured,
                        float(t["L"].square().sum()) / max(a2, 1e-30))


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
    """Two SVDs per matrix (W and W D): normalised spectra and effective/stable ranks.

    The relative index of value k of n is k / (n - 1), so matrices of different shapes share
    one axis; rank_frac = r / min(d_out, d_in) marks where the chosen rank falls on it.
    """
    grid = np.linspace(0.0, 1.0, points)
    heat = np.empty((len(run.layers), points))
    rows = []
    for i, rec in enumerate(run.layers):
        t = scaled_terms(run, rec.qualname)
        s_w, s_a = singular_values(t["W"]), singular_values(t["A"])
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


# ----------------------------------------------------------------------------- outliers


@dataclass
class SecondMomentsByInput:
    """Per-channel mean squared inputs, one row per distinct layer input.

    Matrices of a block that read the same input (q, k and v) share one row, labelled
    "<block>.q,k,v". ``m2[i]`` is (d_in,) for row i.
    """

    labels: list[str]
    qualnames: list[list[str]]
    m2: list[np.ndarray]

    def widths(self) -> list[int]:
        """The distinct input widths, in order of appearance."""
        return list(dict.fromkeys(len(x) for x in self.m2))

    def matrix(self, width: int) -> tuple[list[str], np.ndarray]:
        """Labels and the (rows, width) matrix of the inputs that have ``width`` channels."""
        idx = [i for i, x in enumerate(self.m2) if len(x) == width]
        return [self.labels[i] for i in idx], np.stack([self.m2[i] for i in idx])


def second_moments_by_input(run) -> SecondMomentsByInput:
    """Group the run's recorded statistics by distinct input (see ``SecondMomentsByInput``)."""
    labels, quals, m2 = [], [], []
    last: dict[tuple[int, int], int] = {}
    for rec in run.layers:
        v = run.second_moments[rec.qualname].detach().double().cpu().numpy()
        key = (rec.block, len(v))
        j = last.get(key)
        if j is not None and quals[j][0].split(".")[0] == str(rec.block) and np.array_equal(m2[j], v):
            quals[j].append(rec.qualname)
            labels[j] = f"{rec.block}." + ",".join(q.split(".", 1)[1] for q in quals[j])
            continue
        last[key] = len(m2)
        labels.append(rec.qualname)
        quals.append([rec.qualname])
        m2.append(v)
    return SecondMomentsByInput(labels, quals, m2)


def outlier_ratio(m2) -> np.ndarray:
    """Each channel's RMS input over the median channel's: sqrt(m2_j) / median_k sqrt(m2_k).

    The one definition every outlier count of the project uses (``outliers``): float64 from
    the recorded second moments (fp32 in memory and in the run folder alike), and the median
    of an even number of channels is the mean of the two middle ones (numpy's; ``torch.median``
    would take the lower one, and a channel near the threshold then counts on one side only)."""
    rms = np.sqrt(np.maximum(np.asarray(m2, dtype=np.float64), 0.0))
    med = np.median(rms) if rms.size else 0.0
    return rms / med if med > 0 else np.zeros_like(rms)


def outliers(ratio, threshold: float) -> np.ndarray:
    """Which channels are outliers: the boolean mask of ``ratio`` (``outlier_ratio``) strictly
    above ``threshold``. The one place that decides it: the outlier table, the per-channel
    table, a layer's column shares and their charts all ask here."""
    if not threshold > 0:
        raise ValueError("threshold must be positive (a multiple of the median RMS input)")
    return np.asarray(ratio, dtype=np.float64) > float(threshold)


def outlier_table(moments: SecondMomentsByInput, threshold: float) -> list[dict]:
    """Per input row: how many channels have an RMS above ``threshold`` x the median, which."""
    outliers(np.zeros(0), threshold)  # a bad threshold fails even without rows
    out = []
    for label, quals, v in zip(moments.labels, moments.qualnames, moments.m2):
        ratio = outlier_ratio(v)
        idx = np.nonzero(outliers(ratio, threshold))[0]
        idx = idx[np.argsort(-ratio[idx])]
        out.append({"input": label, "block": int(label.split(".")[0]), "width": len(v),
                    "outliers": int(idx.size), "max_ratio": float(ratio.max()) if ratio.size else 0.0,
                    "channels": " ".join(str(int(i)) for i in idx[:20]) + (" ..." if idx.size > 20 else "")})
    return out


def outlier_channels(moments: SecondMomentsByInput, threshold: float) -> list[dict]:
    """Per (width, channel) flagged anywhere: in how many inputs, and its largest ratio.

    A channel flagged in many layers is a feature of the residual stream, not of one layer.
    """
    agg: dict[tuple[int, int], dict] = {}
    for label, v in zip(moments.labels, moments.m2):
        ratio = outlier_ratio(v)
        for j in np.nonzero(outliers(ratio, threshold))[0]:
            row = agg.setdefault((len(v), int(j)), {"width": len(v), "channel": int(j), "inputs": 0,
                                                    "max_ratio": 0.0, "first": label})
            row["inputs"] += 1
            row["max_ratio"] = max(row["max_ratio"], float(ratio[j]))
    return sorted(agg.values(), key=lambda r: (-r["inputs"], -r["max_ratio"]))


@dataclass
class ColumnShares:
    """Per input channel j of one matrix (all (d_in,)):

    scale = D_j; weight_norm = ||W[:, j]||; energy = ||(W D)[:, j]||^2;
    sparse_energy = ||S[:, j]||^2 and lowrank_energy = ||L[:, j]||^2 (scaled terms);
    sparse_share = sparse_energy / (sparse_energy + lowrank_energy), the share of what the
    two terms hold in that column that sits in the sparse term; ratio = the channel's RMS input
    over the median channel's (``outlier_ratio`` of the recorded second moments: the numbers the
    outlier table counts, so a layer's count here is that table's).
    """

    qualname: str
    scale: np.ndarray
    weight_norm: np.ndarray
    energy: np.ndarray
    sparse_energy: np.ndarray
    lowrank_energy: np.ndarray
    sparse_share: np.ndarray
    ratio: np.ndarray
    kept_per_column: np.ndarray  # non-zeros of the sparse term in each column

    def outliers(self, threshold: float) -> np.ndarray:
        """The outlier channels' mask (``outliers``: ratio above ``threshold``)."""
        return outliers(self.ratio, threshold)

    def summary(self, threshold: float) -> dict:
        """Mean sparse share over outlier channels (ratio > threshold) vs all other channels."""
        out = self.outliers(threshold)
        return {"outlier_channels": int(out.sum()),
                "sparse_share_outliers": float(self.sparse_share[out].mean()) if out.any() else float("nan"),
                "sparse_share_others": float(self.sparse_share[~out].mean()) if (~out).any() else float("nan"),
                "sparse_nonzeros_outliers": float(self.kept_per_column[out].mean()) if out.any() else float("nan"),
                "sparse_nonzeros_others": float(self.kept_per_column[~out].mean()) if (~out).any() else float("nan")}

    def rows(self) -> list[dict]:
        return [{"channel": j, "scale_D": float(self.scale[j]), "ratio_to_median": float(self.ratio[j]),
                 "weight_column_norm": float(self.weight_norm[j]), "scaled_energy": float(self.energy[j]),
                 "sparse_energy": float(self.sparse_energy[j]), "lowrank_energy": float(self.lowrank_energy[j]),
                 "sparse_share": float(self.sparse_share[j]), "sparse_nonzeros": int(self.kept_per_column[j])}
                for j in range(len(self.scale))]


@one_thread()
def column_shares(run, qualname: str) -> ColumnShares:
    t = scaled_terms(run, qualname)
    d = t["D"].double().numpy()
    se = t["S"].double().square().sum(0).numpy()
    le = t["L"].double().square().sum(0).numpy()
    both = se + le
    share = np.divide(se, both, out=np.zeros_like(se), where=both > 0)
    m2 = (run.second_moments or {}).get(qualname)
    ratio = outlier_ratio(d ** 2 if m2 is None else m2.detach().cpu().numpy())  # no statistics: D = 1, ratio 1
    return ColumnShares(qualname, d, t["W"].double().norm(dim=0).numpy(), t["A"].double().square().sum(0).numpy(),
                        se, le, share, ratio,
                        (t["S"] != 0).sum(0).numpy().astype(np.int64))


@one_thread()
def mask_density(run, qualname: str, max_size: int = HEAT_MAX) -> Heat:
    """The sparse term's mask pooled to at most max_size^2 cells: share of entries kept."""
    s = run.factors(qualname)["sparse"]
    return downsample((s != 0).double(), max_size, max_size, how="mean")


# ----------------------------------------------------------------------------- error budget


@one_thread()
def layer_budget(run) -> list[dict]:
    """Per matrix, in the scaled space (D from the run's input statistics):

    sparse_only / lowrank_only / both: ||W D - X||_F / ||W D||_F with X = S, L or S + L;
    sparse_energy, lowrank_energy, residual_energy: ||S||^2, ||L||^2, ||W D - S - L||^2 over
    ||W D||^2; interaction = 1 - the three (2<S, L> + 2<S + L, R>: S and L are not orthogonal,
    so the split need not add up to one); output_error: the recorded ||X (W - W')^T|| / ||X W^T||.
    """
    rows = []
    for rec in run.layers:
        t = scaled_terms(run, rec.qualname)
        a, s, l = t["A"].double(), t["S"].double(), t["L"].double()
        a2 = max(float(a.square().sum()), 1e-30)
        r = a - s - l
        se, le, re = float(s.square().sum()) / a2, float(l.square().sum()) / a2, float(r.square().sum()) / a2
        rows.append({"layer": rec.qualname, "block": rec.block, "name": rec.name, "kind": rec.kind,
                     "sparse_only": math.sqrt(float((a - s).square().sum()) / a2),
                     "lowrank_only": math.sqrt(float((a - l).square().sum()) / a2),
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


def block_paths(run, block: int) -> list[str]:
    """Module paths of the replaced linears of one block."""
    return list(dict.fromkeys(r.path for r in run.layers if r.block == block))


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


# ----------------------------------------------------------------------------- walkthrough


@dataclass
class Snapshot:
    """One iteration of alternating thresholding, pooled |values| of the scaled terms."""

    iteration: int
    lowrank: Heat
    sparse: Heat
    residual: Heat


@dataclass
class Walkthrough:
    """One matrix decomposed on the spot with snapshots of L, S and W D - S - L.

    ``method`` is "oats" (alternating thresholding on the scaled weight, from the diagonal
    second moments) or "hassle" (alternations of SparseGPT and the whitened rank-r fit on the
    layer's input Gram). For "hassle" the history holds every alternation, ``output_error``
    (the objective it minimises) included, ``kept`` is the alternation the method keeps (the
    lowest output error) and ``fallback`` says that SparseGPT alone at rank 0 beat them all
    (the layer then has no low-rank term).
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
    method: str = "oats"
    kept: int | None = None
    fallback: bool = False

    @property
    def iterations(self) -> list[int]:
        return [s.iteration for s in self.snapshots]

    def at(self, iteration: int) -> Snapshot:
        """The snapshot nearest to ``iteration`` (not every iteration is kept)."""
        return min(self.snapshots, key=lambda s: (abs(s.iteration - iteration), s.iteration))


@one_thread()
def walkthrough(weight: torch.Tensor, second_moments: torch.Tensor | None, config: OatsConfig,
                max_snapshots: int = 40, max_size: int = 128, gram: torch.Tensor | None = None) -> Walkthrough:
    """Decompose one matrix with ``config``, keeping at most ``max_snapshots`` pooled snapshots.

    With ``gram`` (the layer's (d_in, d_in) input Gram, ``layer_gram``) the matrix is
    decomposed by HASSLE-free instead of OATS, and every alternation is kept.

    Snapshots start at every iteration; when there are too many, every other one is dropped
    (the stride doubles), so they stay spread over the whole run. The first and the last
    iteration are always kept.
    """
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

    extra: dict = {}
    if gram is None:
        history = decompose(w, second_moments, config, trace=trace).history.to_dict()
    else:
        history, extra = _hassle_walk(w, gram, second_moments, config, d, trace, snap, kept)
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
                       downsample(a, max_size, max_size, "absmax"), **extra)


def _hassle_walk(w, gram, second_moments, config, d, trace, snap, kept) -> tuple[dict, dict]:
    """HASSLE-free on ``w`` with every alternation traced: (history, Walkthrough extras)."""
    a2 = max(float((w * d).square().sum()), 1e-30)
    g64 = gram.double()
    ref = gram_objective(w, g64)
    hist: dict[str, list[float]] = {"error": [], "sparse_energy": [], "lowrank_energy": [], "output_error": []}

    def record(t, low, sparse):
        resid = w - sparse - low
        hist["error"].append(math.sqrt(float((resid * d).square().sum()) / a2))
        hist["sparse_energy"].append(float((sparse * d).square().sum()) / a2)
        hist["lowrank_energy"].append(float((low * d).square().sum()) / a2)
        hist["output_error"].append(math.sqrt(max(gram_objective(resid, g64), 0.0) / ref) if ref > 0 else 0.0)
        trace(t, low * d, sparse * d)

    dec = hassle(w, gram, config, second_moments=second_moments, trace=record)
    if not hist["error"]:  # rank budget 0: SparseGPT alone, one step
        record(1, dec.lowrank(), dec.sparse)
        return hist, {"method": "hassle", "kept": 1, "fallback": False}
    fallback = dec.rank == 0
    kept_t = None if fallback else int(np.argmin(hist["output_error"])) + 1
    return hist, {"method": "hassle", "kept": kept_t, "fallback": fallback}


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


# ----------------------------------------------------------------------------- runs and sweeps


def run_summary(info: RunInfo) -> dict:
    """Headline numbers of a run from its manifest (no model load)."""
    errs = sorted(l.scaled_error for l in info.layers)
    return {"params_dense": info.params_dense, "params_kept": info.params_kept,
            "compression": info.compression_achieved, "matrices": len(info.layers), "blocks": len(info.blocks),
            "median_scaled_error": errs[len(errs) // 2] if errs else float("nan"),
            "total_s": info.timings.get("total_s"), "calibration_tokens": info.calibration.get("tokens")}


def block_times(info: RunInfo) -> list[dict]:
    """Per block: seconds spent collecting statistics and decomposing."""
    return [{"block": b.index, "statistics_s": b.stats_time_s, "decompose_s": b.decompose_time_s,
             "total_s": b.stats_time_s + b.decompose_time_s}
            for b in sorted(info.blocks, key=lambda b: b.index)]


def layer_errors_from_manifests(folders: Iterable[str | Path]) -> list[dict]:
    """Per-layer scaled and output errors of several runs, for comparison (manifests only)."""
    rows = []
    for f in folders:
        info = RunInfo.read(f)
        label = f"{Path(f).name}"
        for l in info.layers:
            rows.append({"run": label, "method": info.method, "compression": info.config.compression,
                         "rank_ratio": info.rank_ratio, "layer": l.qualname, "block": l.block, "name": l.name,
                         "scaled_error": l.scaled_error, "output_error": l.output_error})
    return rows


SWEEP_META = ("model", "method", "compression", "rank_ratio", "sparsity", "allocation", "mode", "run",
              "compress_time_s", "eval_time_s")


def metric_columns(rows: list[dict]) -> list[str]:
    """Numeric columns of sweep rows that are metrics (not settings or bookkeeping)."""
    cols: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k not in SWEEP_META and isinstance(v, (int, float)) and not isinstance(v, bool):
                cols[k] = None
    return list(cols)


def sweep_series(rows: list[dict], metric: str) -> dict[str, tuple[list[float], list[float]]]:
    """{"<method> · <mode>": (compression rates, metric values)} sorted by rate.

    Dense rows (mode "dense") have no compression rate of their own: they become one series
    "dense" spanning the rates seen, so the curves have their reference line.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    dense: list[float] = []
    rates = sorted({float(r["compression"]) for r in rows
                    if r.get("mode") != "dense" and isinstance(r.get("compression"), (int, float))})
    for r in rows:
        v = r.get(metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(float(v)):
            continue
        if r.get("mode") == "dense":
            dense.append(float(v))
            continue
        if not isinstance(r.get("compression"), (int, float)):
            continue
        key = f"{r.get('method', '?')} · {r.get('mode', '?')}"
        series.setdefault(key, []).append((float(r["compression"]), float(v)))
    out = {k: ([x for x, _ in sorted(v)], [y for _, y in sorted(v)]) for k, v in sorted(series.items())}
    if dense and rates:
        out["dense"] = ([rates[0], rates[-1]], [float(np.mean(dense))] * 2)
    return out


def sweep_evaluation(rows: list[dict], run_name: str) -> dict[str, dict[str, float]] | None:
    """{mode: {metric: value}} of one run from a sweep table (with the sweep's dense row), or
    None when the table has no row of that run."""
    metrics = metric_columns(rows)
    out = {r["mode"]: {k: r[k] for k in metrics if isinstance(r.get(k), (int, float))}
           for r in rows if r.get("run") == run_name}
    if not out:
        return None
    dense = next((r for r in rows if r.get("mode") == "dense"), None)
    if dense is not None:
        out = {"dense": {k: dense[k] for k in metrics if isinstance(dense.get(k), (int, float))}, **out}
    return out
