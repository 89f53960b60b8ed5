"""The Outliers view, computed: per-channel second moments by layer input, outlier channels,
how each input column's energy splits between the sparse and the low-rank term, and the
sparse mask's density (no plotting, no Streamlit; figures in ``ui.outlier_figures``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oats.compress.summaries import COLUMNS, term_norms
from oats.explain.common import HEAT_MAX, Heat, downsample, layer_scale, scaled_terms
from oats.resources import one_thread


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
    """One matrix's ``ColumnShares``: the column norms read from the run's summary where it
    stored them (``run.summary``), else computed from its terms (``term_norms``)."""
    summary = run.summary(qualname) or {}
    cols = summary if all(k in summary for k in COLUMNS) else term_norms(scaled_terms(run, qualname))
    cols = {k: cols[k].detach().double().cpu().numpy() for k in COLUMNS}
    d = layer_scale(run, qualname).double().numpy()
    se, le = cols["col_sparse"], cols["col_lowrank"]
    both = se + le
    share = np.divide(se, both, out=np.zeros_like(se), where=both > 0)
    m2 = (run.second_moments or {}).get(qualname)
    ratio = outlier_ratio(d ** 2 if m2 is None else m2.detach().cpu().numpy())  # no statistics: D = 1, ratio 1
    return ColumnShares(qualname, d, cols["col_weight_norm"], cols["col_energy"], se, le, share, ratio,
                        np.rint(cols["col_nnz"]).astype(np.int64))


@one_thread()
def mask_density(run, qualname: str, max_size: int = HEAT_MAX) -> Heat:
    """The sparse term's mask pooled to at most max_size^2 cells: share of entries kept."""
    return downsample(run.sparse_mask(qualname).double(), max_size, max_size, how="mean")
