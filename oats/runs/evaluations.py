"""The evaluation kept next to a run: ``evaluation.json`` ({"quick", "created", "results"})."""

from __future__ import annotations

import json
import time
from pathlib import Path

from oats.runs.folders import atomic_write_bytes

EVALUATION_FILE = "evaluation.json"


def save_evaluation(folder: str | Path, results: dict, quick: bool) -> Path:
    """Write {mode: {metric: value}} next to a run (atomic)."""
    path = Path(folder) / EVALUATION_FILE
    body = {"quick": bool(quick), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "results": {m: {k: float(v) for k, v in r.items()} for m, r in results.items()}}
    atomic_write_bytes(path, json.dumps(body, indent=1).encode())
    return path


def read_evaluation(folder: str | Path) -> dict | None:
    """The saved evaluation of a run, or None when there is none or it is damaged."""
    path = Path(folder) / EVALUATION_FILE
    try:
        body = json.loads(path.read_text())
        return body if isinstance(body.get("results"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None
