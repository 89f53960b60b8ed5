"""How the project shows a quality number: the primary metric's mean beside its value on each
domain, the text (or images) it was measured on, and each method's rank per domain.

An evaluation of the built-in data names every per-domain value ``<metric>@<domain>``
(``oats.evaluation.metric_key``) beside the mean ``<metric>``; an evaluation of the user's own
text, and one saved before domains existed, has the mean alone. ``oats evaluate``, the sweep
tables and the app's Compress and Compare pages all lay their tables out with these helpers,
so a number never appears without the text it holds for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from oats import corpora
from oats.evaluation import DOMAIN_SEP, PRIMARY_METRIC, metric_name, per_domain, split_key

MEAN = "mean"
"""The column of the mean over the domains in a ranking."""

OLD_BUILTIN_TEXT = "stdlib prose"
"""What the built-in evaluation text was called before domains existed: the Python manual's
held-out split (``settings["text"]`` of an evaluation or a sweep of that time)."""


def primary_of(keys: Iterable[str]) -> tuple[str, bool] | None:
    """(primary metric, higher is better) of the task whose primary metric is among ``keys``."""
    names = {split_key(k)[0] for k in keys}
    for metric, higher in PRIMARY_METRIC.values():
        if metric in names:
            return metric, higher
    return None


def _domain_order(name: str) -> int:
    order = list(corpora.domains("text")) + list(corpora.domains("images"))
    return order.index(name) if name in order else len(order)


def domains_of(metrics: Iterable[dict], metric: str | None = None) -> list[str]:
    """The domains that appear in any of ``metrics`` (dicts of metric name -> value), for
    ``metric`` only when given; the corpora's order first, then any other in the order seen."""
    seen: dict[str, None] = {}
    for m in metrics:
        for key in m:
            base, domain = split_key(key)
            if domain is not None and (metric is None or base == metric):
                seen.setdefault(domain, None)
    return sorted(seen, key=lambda d: (_domain_order(d), list(seen).index(d)))


def ordered_metrics(keys: Iterable[str], primary: str | None = None, domains: bool = True) -> list[str]:
    """Metric names in the order tables show them: the primary mean, the primary per domain, the
    other means, then (``domains``) the other metrics per domain."""
    keys = list(dict.fromkeys(keys))
    primary = primary or (primary_of(keys) or ("",))[0]
    doms = domains_of([dict.fromkeys(keys)])
    rank = {d: i for i, d in enumerate(doms)}

    def per(metric):
        return sorted((k for k in keys if split_key(k)[0] == metric and split_key(k)[1] is not None),
                      key=lambda k: rank[split_key(k)[1]])

    means = [k for k in keys if split_key(k)[1] is None]
    out = [k for k in means if k == primary] + per(primary) + [k for k in means if k != primary]
    if domains:
        for base in dict.fromkeys(split_key(k)[0] for k in keys if split_key(k)[1] is not None):
            if base != primary:
                out += per(base)
    return out


def shown_metrics(keys: Iterable[str], primary: str | None = None) -> list[str]:
    """The metrics a table shows: the primary mean, the primary per domain, the other means (the
    other metrics per domain stay in the files and the JSON)."""
    primary = primary or (primary_of(keys) or ("",))[0]
    return [k for k in ordered_metrics(keys, primary, domains=False)
            if split_key(k)[1] is None or split_key(k)[0] == primary]


def column_label(key: str, with_domains: bool = True) -> str:
    """A metric's column title, by its display name (``oats.evaluation.metric_name``): ``cosine to
    dense (mean)`` when per-domain columns stand beside it, ``cosine to dense · Shakespeare`` for
    one domain, the name itself otherwise."""
    base, domain = split_key(key)
    if domain is not None:
        return metric_name(key)
    return f"{metric_name(base)} (mean)" if with_domains else metric_name(base)


def mean_note(metric: str) -> str:
    """How the mean over the domains is taken."""
    if metric in ("perplexity", "nll"):
        return "mean = exp of the mean NLL over the domains (the geometric mean of their perplexities)"
    return "mean = mean over the domains, each weighing the same"


def kind_of(domains: Iterable[str], settings: dict | None = None) -> str:
    """"images" or "text": what the evaluation fed the model."""
    doms = list(domains)
    if doms and all(d in corpora.domains("images") for d in doms):
        return "images"
    if settings and ("images" in settings or settings.get("task") == "vision"):
        return "images"
    return "text"


def describe(settings: dict | None = None, domains: Iterable[str] = (), task: str | None = None) -> str:
    """What an evaluation was measured on, in words that follow "on", for a caption, a header or
    a subtitle.

    ``domains`` (from the metric names) win: the held-out parts of those domains. Without them:
    the user's text or folder as the settings name it, the Python manual's held-out split for an
    evaluation made before domains existed (its settings say "stdlib prose"), or that it is not
    recorded."""
    doms = list(domains)
    settings = settings if isinstance(settings, dict) else {}
    images = kind_of(doms, settings) == "images" or task == "vision"
    if doms:
        names = ", ".join(corpora.title(d) for d in doms)
        what = "images" if images else "text"
        return f"held-out {what} of {len(doms)} domains ({names}), none of it used in calibration"
    said = settings.get("images" if images else "text")
    if isinstance(said, str) and said.strip():
        if OLD_BUILTIN_TEXT in said:
            return "the Python manual's held-out split (measured before evaluation per domain)"
        return " ".join(said.split())[:300]
    return ("unrecorded images" if images else "an unrecorded text") + " (measured before evaluation per domain)"


def size_note(settings: dict | None) -> str:
    """How much the evaluation read, from its settings ("" when not recorded)."""
    s = settings if isinstance(settings, dict) else {}
    n = max(len(s.get("domains") or []), 1)
    if isinstance(s.get("windows"), int) and isinstance(s.get("seq_len"), int):
        per = f" ({s['windows'] // n} per domain)" if n > 1 else ""
        return f"{s['windows']} windows of {s['seq_len']} tokens{per}"
    if isinstance(s.get("sentences"), int):
        per = f" (up to {-(-s['sentences'] // n)} per domain)" if n > 1 else ""
        return f"{s['sentences']} sentences{per}"
    return ""


def _finite(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def ranks(values: dict, higher_is_better: bool) -> dict:
    """{name: rank} with 1 the best (ties share a rank: 1, 2, 2, 4); None where the value is
    missing or not finite (it is ranked nowhere)."""
    clean = {k: _finite(v) for k, v in values.items()}
    order = sorted((v for v in clean.values() if v is not None), reverse=higher_is_better)
    return {k: (None if v is None else 1 + sum(1 for o in order if (o > v if higher_is_better else o < v)))
            for k, v in clean.items()}


def domain_values(metrics: dict, metric: str) -> dict[str, float]:
    """{MEAN: the mean, domain: value, ...} of one model's metrics (the mean alone without domains)."""
    out = {MEAN: metrics.get(metric)}
    out.update(per_domain(metrics, metric))
    return out


def ranking(table: dict, metric: str, higher_is_better: bool, domains: Iterable[str] | None = None) -> dict:
    """{column (MEAN, then each domain): {name: rank}} of ``table`` ({name: metrics})."""
    doms = list(domains) if domains is not None else domains_of(table.values(), metric)
    cols = [MEAN] + doms
    return {c: ranks({n: (m.get(metric) if c == MEAN else m.get(f"{metric}{DOMAIN_SEP}{c}"))
                      for n, m in table.items()}, higher_is_better) for c in cols}


def best_differs(table: dict, metric: str, higher_is_better: bool, domains: Iterable[str] | None = None) -> bool:
    """Whether the best of ``table`` on one domain is not the best on another."""
    return len(set(map(tuple, best_per_domain(table, metric, higher_is_better, domains).values()))) > 1


def best_per_domain(table: dict, metric: str, higher_is_better: bool, domains: Iterable[str] | None = None) -> dict:
    """{domain: [names ranked first there]} (domains where nothing was measured are left out)."""
    doms = list(domains) if domains is not None else domains_of(table.values(), metric)
    r = ranking(table, metric, higher_is_better, doms)
    return {d: [n for n, k in r[d].items() if k == 1] for d in doms if any(k == 1 for k in r[d].values())}


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _plain(s: str) -> str:
    return s


def ranking_sentence(table: dict, metric: str, higher_is_better: bool, domains: Iterable[str] | None = None,
                     label: Callable = str, what: str = "run", text: Callable[[str], str] = _plain) -> str:
    """One sentence on who is best where: which one is best on every domain, or that the best
    differs between domains and which is best on which (the domains named). "" without domains.
    ``label`` names an entry of ``table``; ``text`` escapes the other words taken from data
    (domain titles) where the sentence is shown as Markdown."""
    best = best_per_domain(table, metric, higher_is_better, domains)
    if not best:
        return ""
    firsts = {d: tuple(v) for d, v in best.items()}
    winners = list(dict.fromkeys(firsts.values()))
    if len(winners) == 1:
        who = _words([label(n) for n in winners[0]])
        return (f"{who} {'is' if len(winners[0]) == 1 else 'are'} best on every domain "
                f"({_words([text(corpora.title(d)) for d in firsts])}) by {text(metric_name(metric))}.")
    parts = []
    for w in winners:
        doms = [text(corpora.title(d)) for d, v in firsts.items() if v == w]
        parts.append(f"{_words([label(n) for n in w])} on {_words(doms)}")
    return f"The best {what} by {text(metric_name(metric))} differs between domains: " + "; ".join(parts) + "."


def fmt(v, digits: int = 4) -> str:
    """A metric value for a table: 4 significant digits, "" when missing, "nan"/"inf" as such."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def ranking_markdown(table: dict, metric: str, higher_is_better: bool, domains: Iterable[str] | None = None,
                     label: Callable = str, head: tuple[str, ...] = ("run",),
                     extra: Callable | None = None, digits: int = 4, text: Callable[[str], str] = _plain) -> str:
    """A Markdown table, one line per name of ``table`` ({name: metrics}): the mean of ``metric``
    and its value on each domain, each with its rank (#1 is the best) and the best in bold.

    ``label`` turns a name into its first cell (the app escapes it there); ``head`` names the
    leading columns and ``extra(name)`` gives the cells of the columns after the first; ``text``
    escapes the header's words taken from data (the metric, domain titles)."""
    doms = list(domains) if domains is not None else domains_of(table.values(), metric)
    r = ranking(table, metric, higher_is_better, doms)
    cols = list(head) + [text(f"{metric_name(metric)} ({MEAN})" if doms else metric_name(metric))] + [text(corpora.title(d)) for d in doms]
    out = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for name, m in table.items():
        cells = [label(name)] + (list(extra(name)) if extra is not None else [])
        for c in [MEAN] + doms:
            v = m.get(metric) if c == MEAN else m.get(f"{metric}{DOMAIN_SEP}{c}")
            k = r[c].get(name)
            if _finite(v) is None:
                cells.append(fmt(v, digits) if v is not None else "–")
                continue
            text = f"{fmt(float(v), digits)} (#{k})"
            cells.append(f"**{text}**" if k == 1 else text)
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out)


def evaluation_markdown(metrics: dict, primary: str, higher_is_better: bool, settings: dict | None = None,
                        task: str | None = None, digits: int = 4) -> str:
    """One evaluation ({mode: {metric: value}}) as text: a line naming the text it was measured
    on, then a Markdown table with a line per mode and the columns: the primary metric's mean,
    its value on each domain, and the other metrics (their means)."""
    doms = domains_of(metrics.values(), primary)
    cols = shown_metrics([k for m in metrics.values() for k in m], primary)
    size = size_note(settings)
    how = "; ".join(x for x in (size, mean_note(primary) if doms else "") if x)
    out = [f"{metric_name(primary)} ({'higher' if higher_is_better else 'lower'} is better) on "
           f"{describe(settings, doms, task)}"]
    out += [how] if how else []
    out += ["| mode | " + " | ".join(column_label(c, bool(doms) and c == primary) if split_key(c)[1] is None
                                         else corpora.title(split_key(c)[1]) for c in cols) + " |",
           "|---|" + "---|" * len(cols)]
    for mode, m in metrics.items():
        out.append(f"| {mode} | " + " | ".join(fmt(m.get(c), digits) for c in cols) + " |")
    return "\n".join(out)


EVAL_LOG_SPAN = 10.0
"""An evaluation whose values span more than this factor is drawn on a log axis (the app's
charts and the run report alike): a collapsed variant (sparse-only perplexity 1e8) would
flatten dense vs compressed to nothing on a linear one."""


def log_range(values) -> list[float] | None:
    """The log10 y range of an evaluation bar chart when its values span over ``EVAL_LOG_SPAN``
    (bars rise from well below the smallest, with room above the tallest for its printed
    value), else None: a linear axis."""
    fin = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not fin or min(fin) <= 0 or max(fin) / min(fin) <= EVAL_LOG_SPAN:
        return None
    lo, hi = math.log10(min(fin)), math.log10(max(fin))
    return [math.floor(lo) - 0.5, hi + 0.12 * max(hi - lo + 1, 1)]
