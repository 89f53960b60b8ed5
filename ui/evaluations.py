"""A run's evaluation as the pages show it: where it comes from (the run's ``evaluation.json``,
or the table of the sweep that made the run), the text it holds for, the primary metric's mean
beside its value on each domain, and rankings per domain (``oats.explain.quality``)."""

from __future__ import annotations

import streamlit as st

from oats import corpora, report
from oats.evaluation import METRIC_NAMES, Evaluator, split_key
from oats.explain import quality
from ui.state import saved_evaluation
from ui.text import esc


def run_evaluation(path: str, info) -> dict | None:
    """A run's evaluation as the report reads it (``oats.report.run_evaluation``): its saved
    evaluation through the app's cached reader, else its row of the sweep that made it."""
    return report.run_evaluation(path, info, read=saved_evaluation)


def titles(domains) -> dict[str, str]:
    return {d: corpora.title(d) for d in domains}


def evaluation_rows(results: dict, primary: str, variants: dict[str, str]) -> list[dict]:
    """A row per variant (those in ``variants``: mode -> name), the columns: the primary
    metric's mean, its value on each domain, then the other metrics' means. Without domains
    (the user's own text, an evaluation made before domains) the means alone, under their names."""
    doms = quality.domains_of(results.values(), primary)
    cols = quality.shown_metrics([k for m in results.values() for k in m], primary)
    return [{"variant": variants[mode], "mode": mode,
             **{quality.column_label(c, bool(doms) and c == primary): vals.get(c) for c in cols}}
            for mode, vals in results.items() if mode in variants]


def metric_columns(rows: list[dict], primary: str | None = None) -> list[dict]:
    """``rows`` with their metric columns under display names (``quality.column_label``:
    "cosine to dense (mean)", "cosine to dense · Shakespeare", "Spearman"); the other
    columns as they are. A metric is a key of ``oats.evaluation.METRIC_NAMES`` or a per-domain key."""
    keys = [k for r in rows for k in r]
    doms = bool(quality.domains_of(rows, primary)) if primary else False

    def label(k: str) -> str:
        base, domain = split_key(k)
        if domain is None and base not in METRIC_NAMES:
            return k
        return quality.column_label(k, doms and k == primary)

    names = {k: label(k) for k in dict.fromkeys(keys)}
    return [{names[k]: v for k, v in r.items()} for r in rows]


def ranking(table: dict, metric: str, higher_is_better: bool, label, head: tuple[str, ...], extra=None,
            what: str = "run") -> None:
    """``table`` ({name: metrics}) ranked on the mean and on each domain, as a Markdown table
    (the best of each column in bold, every value with its rank), and a sentence saying who is
    best where: an info box when the best differs between domains."""
    doms = quality.domains_of(table.values(), metric)
    st.markdown(quality.ranking_markdown(table, metric, higher_is_better, doms, label=label, head=head, extra=extra,
                                         text=esc))
    sentence = quality.ranking_sentence(table, metric, higher_is_better, doms, label=label, what=what, text=esc)
    if sentence and quality.best_differs(table, metric, higher_is_better, doms):
        st.info(sentence, icon=":material/swap_vert:")
    elif sentence:
        st.caption(sentence)


@st.cache_data(show_spinner=False, max_entries=16)
def quick_settings(path: str, mtime: float, _loaded) -> dict | None:
    """The settings of the quick evaluation the app measures ablations and interventions with
    (``oats.evaluation.Evaluator(quick=True)``: the text or images, their domains, how many
    windows or sentences); None when the run's model has no evaluation."""
    try:
        return dict(Evaluator(_loaded, quick=True).settings)
    except Exception:  # noqa: BLE001 - no evaluation for this model: the label says it is not recorded
        return None


def quick_measured_on(settings: dict | None, domains, task: str | None = None, mean: bool = False) -> str:
    """What a quick evaluation's numbers hold for, short enough for a chart's subtitle: "quick
    evaluation, 32 sentences (up to 8 per domain), on held-out text of Python manual, Python code,
    Shakespeare, State of the Union" (``quality.describe`` without domains: the user's text, or
    that it is not recorded); ``mean``: the numbers are the mean over those domains, said first."""
    doms = list(domains)
    size = quality.size_note(settings)
    if doms:
        kind = "images" if quality.kind_of(doms, settings) == "images" or task == "vision" else "text"
        what = f"held-out {kind} of " + ", ".join(corpora.title(d) for d in doms)
    else:
        what = quality.describe(settings, doms, task)
    head = "mean over the domains; " if mean and doms else ""
    return f"{head}quick evaluation" + (f", {size}," if size else "") + f" on {what}"
