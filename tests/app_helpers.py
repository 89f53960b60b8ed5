"""Helpers shared by the AppTest modules (test_app*.py, test_measured_on.py)."""

from __future__ import annotations

import base64

import numpy as np


def decode(v):
    """Plotly JSON arrays may come base64-encoded ({"dtype", "bdata", "shape"})."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            a = a.reshape([int(x) for x in str(v["shape"]).split(",")])
        return a
    if isinstance(v, list):
        return np.array([np.nan if x is None else x for x in v], dtype=object)
    return v
