"""What a key is called on the page: table columns, metrics and their domains.

The run files, CSV downloads and the library keep their keys (``scaled_error``,
``cls_cosine@photos``); the page shows words. ``column_title`` is applied by ``ui.widgets.table``
to every table the app draws, so a new column gets a readable name (its words, units in
brackets) without a page doing anything.
"""

from __future__ import annotations

from oats import corpora
from oats.evaluation import METRIC_NAMES

# keys whose words alone would not say what they are; every other key reads as its words
NAMES = {
    "qualname": "layer",
    "nnz": "non-zeros",
    "params": "parameters",
    "scaled_error": "scaled error",
    "output_error": "output error",
    "rank_ratio": "rank ratio",
    "blocks_done": "blocks done",
    "max_ratio": "max RMS / median",
    "sparse_only": "sparse only",
    "lowrank_only": "low-rank only",
    "lowrank_energy": "low-rank energy",
    "lowrank": "low-rank",
    "topk_iou": "top-k IoU",
    "js_to_dense": "JS distance to dense",
    "median_scaled_error": "median scaled error",
    "median_output_error": "median output error",
    "entropy_dense": "entropy, dense",
    "entropy_variant": "entropy, variant",
}
UNITS = {"s": "s", "ms": "ms", "mb": "MB", "gb": "GB", "nats": "nats", "bits": "bits", "pct": "%"}


def column_title(key):
    """The display name of a column / metric key; anything not a string is returned as it is."""
    if not isinstance(key, str):
        return key
    if key in NAMES:
        return NAMES[key]
    if key in METRIC_NAMES:  # the metrics' names are oats.evaluation's, for the CLI and the app alike
        return METRIC_NAMES[key]
    metric, at, domain = key.partition("@")
    if at:
        return f"{column_title(metric)} · {corpora.title(domain) if domain in _domains() else domain}"
    head, _, unit = key.rpartition("_")
    if head and unit in UNITS:
        return f"{column_title(head)} ({UNITS[unit]})"
    if "_" in key:
        return ", ".join(NAMES.get(p, p.replace("_", " ")) for p in _split_known(key))
    return key


def _split_known(key: str) -> list[str]:
    """``entropy_dense`` -> ["entropy", "dense"]; known multi-word keys stay whole."""
    for name in sorted(NAMES, key=len, reverse=True):
        if "_" in name and name in key and name != key:
            before, _, after = key.partition(name)
            return [p for p in [*_split_known(before.strip("_")), name, *_split_known(after.strip("_"))] if p]
    return [key.replace("_", " ")] if key else []


def _domains() -> set[str]:
    return set(corpora.domains("text")) | set(corpora.domains("images"))


def column_labels(columns, column_config: dict | None = None) -> dict:
    """A Streamlit ``column_config`` that shows each column under its ``column_title`` (the
    table's data, what tests and the CSV see, keeps its keys); a config the page gave for a
    column keeps its settings and gets the label if it has none."""
    config = dict(column_config or {})
    for c in columns:
        title = column_title(c)
        given = config.get(c)
        if isinstance(given, dict):
            if not given.get("label"):
                config[c] = {**given, "label": title}
        elif given is None and title != c:
            config[c] = {"label": title}
    return config
