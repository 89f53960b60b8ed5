"""Which number to believe: one sentence per metric the Compare page shows, and a sentence
computed from the data wherever two of them rank the runs differently.

The metrics fall in two groups. The *verdict* is the task's primary metric on held-out data
(``oats.evaluation.primary_metric``, from the task registry: perplexity for causal LMs, the
embedding cosine for encoders, the CLS cosine for ViTs): it measures the whole compressed model on text or images
no method saw while compressing. The per-matrix errors recorded while compressing are
*diagnostics*: each method minimises one of them, so each favours the methods that minimise
it. Which one a method minimises follows from the statistics it collects (its registry
record): the full input Gram ("gram": SparseGPT, HASSLE-free) buys the output error on the
calibration inputs; the per-channel norms ("diagonal": OATS, Wanda, low-rank) the scaled
weight error, the output error under the assumption that input channels are uncorrelated;
the weights alone ("none": magnitude) the plain weight error. No Streamlit here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from oats.evaluation import primary_metric, split_key, task_of  # noqa: F401 - verdict.task_of for the pages
from oats.methods import registry

OBJECTIVE_OF_STATISTICS = {"gram": "output_error", "diagonal": "scaled_error", "none": "weight_error"}
"""The per-matrix error a method minimises, from what its statistics pass collects."""

METRIC_NOTES = {
    "perplexity": "perplexity of the compressed model on held-out text (exp of the mean next-token loss; "
                  "lower is better)",
    "nll": "mean next-token negative log-likelihood on held-out text, the log of perplexity (lower is better; "
           "it ranks the runs as perplexity does)",
    "cosine": "mean cosine between each held-out sentence's embedding by the compressed and by the dense model "
              "(higher is better, 1 = unchanged)",
    "spearman": "rank correlation between the sentences' pairwise similarities under the compressed and the "
                "dense model: does the model still tell which sentences are alike (higher is better)",
    "cls_cosine": "mean cosine between the compressed and the dense model's CLS features of held-out image crops "
                  "(higher is better, 1 = unchanged)",
    "probe_acc": "accuracy of a linear probe fitted on the dense model's features of digits, scored on the "
                 "compressed model's features of held-out digits (higher is better)",
    "top1": "top-1 accuracy of the model's classification head on the labelled image folder (higher is better)",
    "scaled_error": "per matrix, the scaled weight error ‖(W − Ŵ)D‖/‖WD‖, D the calibration inputs' channel "
                    "norms (lower is better)",
    "median_scaled_error": "the median over the run's matrices of the scaled weight error ‖(W − Ŵ)D‖/‖WD‖ "
                           "(lower is better)",
    "output_error": "per matrix, the output error ‖X(W − Ŵ)ᵀ‖/‖XWᵀ‖ on the calibration inputs X "
                    "(lower is better)",
    "median_output_error": "the median over the run's matrices of the output error ‖X(W − Ŵ)ᵀ‖/‖XWᵀ‖ on the "
                           "calibration inputs (lower is better)",
    "time_s": "seconds the compression took on this machine (lower is faster; says nothing about quality)",
}

LOWER_IS_BETTER = {"perplexity", "nll", "scaled_error", "median_scaled_error", "output_error",
                   "median_output_error", "time_s"}

LABELS = {"cosine": "cosine to dense", "cls_cosine": "CLS cosine to dense", "spearman": "Spearman", "nll": "NLL",
          "probe_acc": "probe accuracy", "top1": "top-1 accuracy", "time_s": "time (s)",
          "median_scaled_error": "weight error (median scaled error)",
          "median_output_error": "output error on calibration inputs (median)",
          "scaled_error": "scaled weight error", "output_error": "output error on calibration inputs"}


def label(metric: str) -> str:
    """A metric's name in a sentence."""
    return LABELS.get(metric, metric)


def minimisers(error: str) -> list[str]:
    """The registered methods whose objective is ``error`` ("scaled_error", "output_error",
    "weight_error"; a "median_..." name counts as its error)."""
    error = error.removeprefix("median_")
    return [m for m in registry.names() if OBJECTIVE_OF_STATISTICS.get(registry.get(m).statistics) == error]


def _methods(names: list[str]) -> str:
    shown = [registry.title(n) for n in names]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def metric_sentence(metric: str, task: str | None = None, text=str) -> str:
    """One sentence (Markdown): what ``metric`` measures, which direction is better, and whether
    it is the verdict (the task's primary metric) or a diagnostic (and then why). ``text``
    escapes the words taken from data (a metric name nobody registered)."""
    base, domain = split_key(metric)
    what = METRIC_NOTES.get(base)
    if what is None:
        return f"{text(metric)}: a measurement recorded with the runs."
    head = f"**{label(base)}**" + (f" on {text(domain)}" if domain else "") + f": {what}"
    pm = primary_metric(task)
    if pm is not None and pm[0] == base:
        return head + ". **This is the verdict**: it measures the whole compressed model on data no method saw."
    if base.removeprefix("median_") in ("scaled_error", "output_error"):
        who = minimisers(base)
        return (head + f". A diagnostic, not the verdict: it is the objective {_methods(who)} minimise"
                + (" (on the very inputs they were fitted to)" if "output" in base else "")
                + ", so it favours them.")
    if base == "time_s":
        return head + "."
    return head + (f". A second view of quality; the verdict is {label(pm[0])}." if pm else ".")


@dataclass(frozen=True)
class Ranked:
    """One metric's order of the runs, best first (runs without a finite value left out)."""

    metric: str
    order: tuple[str, ...]


def order(values: dict[str, float | None], metric: str, higher_is_better: bool | None = None) -> Ranked:
    """``values`` ({run label: value}) sorted best first by ``metric``'s direction."""
    base = split_key(metric)[0]
    higher = (base not in LOWER_IS_BETTER) if higher_is_better is None else higher_is_better
    clean = {k: float(v) for k, v in values.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    return Ranked(metric, tuple(sorted(clean, key=lambda k: -clean[k] if higher else clean[k])))


def disagreement(table: dict[str, dict], verdict: str, diagnostics: list[str], where: str = "held-out text",
                 higher_is_better: bool | None = None) -> tuple[str, bool]:
    """A sentence from the data on how the ``diagnostics`` rank the runs of ``table``
    ({run label: {metric: value}}) against the ``verdict`` metric, and whether any of them names
    another best run; ("", False) with fewer than two runs measured by the verdict.

    Where a diagnostic names another best run than the verdict: "weight error ranks oats
    first, cosine on held-out text ranks hassle first: the verdict is cosine, because ...".
    """
    v = order({k: m.get(verdict) for k, m in table.items()}, verdict, higher_is_better)
    if len(v.order) < 2:
        return "", False
    vname = f"{label(verdict)} on {where}"
    clash, same = [], []
    for d in diagnostics:
        r = order({k: m.get(d) for k, m in table.items() if k in v.order}, d)
        if len(r.order) < 2:
            continue
        (clash if r.order[0] != v.order[0] else same).append(r)
    if not clash:
        if not same:
            return "", False
        return (f"{_cap(_words([label(r.metric) for r in same]))} and {vname} agree on the best run: "
                f"{v.order[0]}" + ("" if all(r.order == v.order for r in same) else
                                   " (the order of the others differs)") + "."), False
    parts = [f"{label(r.metric)} ranks {r.order[0]} first" for r in clash]
    parts[0] = _cap(parts[0])
    why = []
    for r in clash:
        who = minimisers(r.metric)
        if who:
            why.append(f"{label(r.metric)} is what {_methods(who)} minimise"
                       + (" on the calibration inputs" if "output" in r.metric else " matrix by matrix"))
    return (", ".join(parts) + f"; {vname} ranks {v.order[0]} first. The verdict is {label(verdict)}: it "
            f"measures the whole compressed model on {where}, which no method saw while compressing"
            + (f", while {'; '.join(why)}, so each error favours its own methods" if why else "")
            + "." + (f" {_cap(_words([label(r.metric) for r in same]))} agree{'s' if len(same) == 1 else ''} with it."
                     if same else "")), True


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def short_labels(runs: list[dict]) -> dict[str, str]:
    """{run path: the shortest unambiguous label}: the method when each run has its own, else
    "method ρ=0.5", else the run's folder name. ``runs``: dicts with path, name, method, compression."""
    for make in (lambda r: str(r["method"]), lambda r: f"{r['method']} ρ={float(r['compression']):g}",
                 lambda r: str(r["name"])):
        labels = {r["path"]: make(r) for r in runs}
        if len(set(labels.values())) == len(labels):
            return labels
    return {r["path"]: str(r["path"]) for r in runs}


def median(values) -> float | None:
    clean = sorted(float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v)))
    return clean[len(clean) // 2] if clean else None


def run_errors(info) -> dict[str, float | None]:
    """A run's diagnostics from its manifest (``oats.runs.folders.RunInfo``): the median over its
    matrices of the scaled weight error and of the output error on the calibration inputs
    (None where none was recorded)."""
    return {"median_scaled_error": median(l.scaled_error for l in info.layers),
            "median_output_error": median(l.output_error for l in info.layers)}


def where(task: str | None) -> str:
    """What the verdict is measured on, in words."""
    return "held-out images" if task == "vision" else "held-out text"
