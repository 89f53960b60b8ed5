"""What every evaluation task shares: the evaluation sizes, the names of metrics and of their
per-domain values, where the evaluation text comes from, and the small tensor helpers the
tasks' metrics are made of (``oats.evaluation`` says what each task measures)."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from oats import corpora
from oats.data import read_text_file
from oats.errors import DataError
from oats.models import hub

# Evaluation sizes: (default, quick). quick is for the app's per-block ablations (a few
# seconds on the embedded models on 2 CPU cores); the default is a moderate, stable set.
LM_WINDOWS = (8, 1)
"""Causal LMs: windows of evaluation text per domain (the user's text: 4x as many)."""
LM_SEQ_LEN = (256, 128)
"""Causal LMs: tokens per window."""
LM_BATCH = 4
ENCODER_SENTENCES = (32, 8)
"""Encoders: held-out sentences per domain (the user's text: 4x as many)."""
VISION_IMAGES = (12, 3)
"""ViTs: evaluation crops per image domain (the user's folder: at most 32 / 8 images)."""
USER_FACTOR = 4
"""A user's own text or folder is one domain: it gets about what all built-in domains get."""
DOMAIN_SEP = "@"
"""A per-domain metric is named ``<metric>@<domain>`` (``perplexity@verse``); the metric
without a domain is the mean over the domains (for perplexity, exp of the mean NLL, i.e. the
geometric mean of the domains' perplexities: each domain weighs the same)."""
PROBE_SPLIT = ((400, 200), (200, 100))
"""ViTs: digits for (fitting the probe on dense features, scoring it)."""
PROBE_PATCHES = 4
"""ViTs: digits are shown at PROBE_PATCHES x PROBE_PATCHES patches (56 px for patch 14):
an 8x8 digit has no more detail, and the forward is cheap."""
EVAL_SEED = 1234
"""Seed of the evaluation crops and the digits split (calibration uses seed 0)."""

METRIC_NAMES: dict[str, str] = {
    "perplexity": "perplexity",
    "nll": "NLL",
    "cosine": "cosine to dense",
    "spearman": "Spearman",
    "cls_cosine": "CLS cosine to dense",
    "probe_acc": "probe accuracy",
    "top1": "top-1 accuracy",
}
"""What the pages, tables and figures call each metric (the keys stay the files' and the CLI's):
``cls_cosine`` reads "CLS cosine to dense"."""


def metric_name(key: str) -> str:
    """A metric's display name: ``METRIC_NAMES``, per domain "perplexity · Shakespeare"
    (``perplexity@verse``); a name not in the table (a metric added later) as it is, with
    underscores as spaces."""
    base, domain = split_key(key)
    name = METRIC_NAMES.get(base, base.replace("_", " "))
    return name if domain is None else f"{name} · {corpora.title(domain)}"


def metric_key(metric: str, domain: str) -> str:
    """The name of ``metric`` measured on one domain: ``perplexity@verse``."""
    return f"{metric}{DOMAIN_SEP}{domain}"


def split_key(key: str) -> tuple[str, str | None]:
    """(metric, domain or None) of a metric's name."""
    metric, sep, domain = str(key).partition(DOMAIN_SEP)
    return metric, (domain if sep else None)


def per_domain(metrics: dict, metric: str) -> dict[str, float]:
    """{domain: value} of ``metric`` in one mode's metrics, in the order they were measured."""
    out = {}
    for key, value in metrics.items():
        m, d = split_key(key)
        if m == metric and d is not None:
            out[d] = value
    return out


# ----------------------------------------------------------------------------- text sources


def wikitext2_text(split: str = "test") -> str:
    """WikiText-2 (raw) through ``datasets``; DataError (one line) when it cannot be had."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DataError("WikiText-2 needs the 'datasets' package and the network (pip install datasets): "
                        "use --text FILE or the built-in evaluation text instead") from None
    if not hub.hub_reachable():
        raise DataError("WikiText-2 needs the network (the Hugging Face hub is not reachable): "
                        "use --text FILE or the built-in evaluation text instead")
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as e:  # noqa: BLE001 - any download/parse failure is one line
        raise DataError(f"could not load WikiText-2 ({type(e).__name__}): use --text FILE or the built-in "
                        "evaluation text instead") from None
    return "\n\n".join(t for t in ds["text"] if t.strip())


def resolve_text(text) -> tuple[str | None, str]:
    """(text or None for the built-in split, a short description)."""
    if text is None:
        return None, ("built-in evaluation parts of " + ", ".join(corpora.domains("text"))
                      + " (each disjoint from its calibration part)")
    if isinstance(text, os.PathLike):
        return read_text_file(text), f"file {os.fspath(text)}"
    if not isinstance(text, str) or not text.strip():
        raise DataError("the evaluation text is empty: give some prose, a text file, or leave it out for the "
                        "built-in evaluation text")
    return text, f"given text ({len(text.split())} words)"


# ----------------------------------------------------------------------------- helpers


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def last_hidden(out) -> torch.Tensor:
    h = getattr(out, "last_hidden_state", None)
    if h is None:
        hs = getattr(out, "hidden_states", None)
        if not hs:
            raise DataError("the model returns no hidden states to take features from: evaluate a base model "
                            "(e.g. AutoModel) instead")
        h = hs[-1]
    return h


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def pairwise_cos(e: torch.Tensor) -> np.ndarray:
    n = torch.nn.functional.normalize(e.double(), dim=-1)
    sims = (n @ n.T).numpy()
    iu = np.triu_indices(sims.shape[0], k=1)
    return sims[iu]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr
    if a.size < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers())
                 if t.dtype.is_floating_point and t.dim() >= 2)

