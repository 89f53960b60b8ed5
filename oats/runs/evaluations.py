"""The evaluation kept next to a run: ``evaluation.json`` ({"quick", "created", "results",
"settings"}). ``settings`` say what it was measured on (``oats.evaluation.Evaluation.settings``:
the text or images, their domains, how many windows, sentences or crops), so a page names the
text beside the number; a file written before they were kept has none and still reads."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from oats import untrusted
from oats.runs.folders import atomic_write_bytes
from oats.runs.info import finite_json

EVALUATION_FILE = "evaluation.json"
MAX_EVALUATION_BYTES = 4 * 1024**2
"""A few modes times a few metrics: kilobytes. Anything far larger is not ours."""


MAX_SETTING_CHARS = 1000
"""A setting's text is a sentence or a path; longer is cut (a label never needs more)."""
MAX_SETTING_ITEMS = 64
"""A setting's list names domains: a handful."""


def _setting(value):
    """One setting value as kept: a bool, a whole number, a finite number, a text (cut) or a list
    of texts; None for anything else (it is left out)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value[:MAX_SETTING_CHARS]
    if isinstance(value, (list, tuple)) and len(value) <= MAX_SETTING_ITEMS and all(isinstance(v, str) for v in value):
        return [v[:MAX_SETTING_CHARS] for v in value]
    return None


def clean_settings(settings) -> dict | None:
    """An evaluation's settings as written and as read back: the entries with a name and a plain
    value (``_setting``), the others left out; None when ``settings`` is not a dict."""
    if not isinstance(settings, dict):
        return None
    out = {}
    for key, value in list(settings.items())[:MAX_SETTING_ITEMS]:
        v = _setting(value)
        if isinstance(key, str) and v is not None:
            out[key[:MAX_SETTING_CHARS]] = v
    return out


def save_evaluation(folder: str | Path, results: dict, quick: bool, settings: dict | None = None,
                    time_s: float | None = None) -> Path:
    """Write {mode: {metric: value}} next to a run (atomic; a non-finite value is written as null),
    with the ``settings`` it was measured with (``oats.evaluation.Evaluation.settings``) when given,
    and ``time_s``, the seconds it took (the Compress page's time estimate reads it)."""
    path = Path(folder) / EVALUATION_FILE
    body = {"quick": bool(quick), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "results": {m: {k: float(v) for k, v in r.items()} for m, r in results.items()}}
    if time_s is not None and math.isfinite(time_s):
        body["time_s"] = round(float(time_s), 3)
    if settings is not None:
        body["settings"] = clean_settings(settings)
    atomic_write_bytes(path, json.dumps(finite_json(body), indent=1, allow_nan=False).encode(),
                       then="evaluate the run again")
    return path


def read_evaluation(folder: str | Path) -> dict | None:
    """The saved evaluation of a run, or None when there is none or it is damaged (read as a
    file from someone else: size cap, regular file, strict JSON; null values read as NaN).
    ``settings``: what it was measured on (``clean_settings``), None in a file written before
    they were kept or when they are not a dict."""
    path = Path(folder) / EVALUATION_FILE
    try:
        body = untrusted.read_json(path, max_bytes=MAX_EVALUATION_BYTES)
        results = body.get("results")
        if not isinstance(results, dict) or not all(isinstance(r, dict) for r in results.values()):
            return None
        clean = {}
        for mode, r in results.items():
            if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in r.values()):
                return None
            clean[mode] = {k: math.nan if v is None else float(v) for k, v in r.items()}
        return {**body, "results": clean, "settings": clean_settings(body.get("settings"))}
    except (OSError, ValueError, AttributeError):  # BadFile is a ValueError
        return None
