"""The evaluation kept next to a run: ``evaluation.json`` ({"quick", "created", "results"})."""

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


def save_evaluation(folder: str | Path, results: dict, quick: bool) -> Path:
    """Write {mode: {metric: value}} next to a run (atomic; a non-finite value is written as null)."""
    path = Path(folder) / EVALUATION_FILE
    body = {"quick": bool(quick), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "results": {m: {k: float(v) for k, v in r.items()} for m, r in results.items()}}
    atomic_write_bytes(path, json.dumps(finite_json(body), indent=1, allow_nan=False).encode(),
                       then="evaluate the run again")
    return path


def read_evaluation(folder: str | Path) -> dict | None:
    """The saved evaluation of a run, or None when there is none or it is damaged (read as a
    file from someone else: size cap, regular file, strict JSON; null values read as NaN)."""
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
        return {**body, "results": clean}
    except (OSError, ValueError, AttributeError):  # BadFile is a ValueError
        return None
