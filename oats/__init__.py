"""OATS Explorer: outlier-aware sparse + low-rank compression of transformer weights.

Where things live (each layer imports only the ones above it):
  errors.py, config.py, resources.py   one-line errors, OatsConfig, memory checks
  core/          decompose.py (one matrix: budgets, thresholding, alternating solver),
                 linear.py (OatsLinear: sparse and low-rank terms kept apart, four modes)
  methods/       magnitude, Wanda, SparseGPT and low-rank-only in the same budget accounting
  models/        zoo.py (load_model: presets, local folders, hub ids, timm names; the sources
                 in presets.py, hub.py, timm_hub.py, formats.py), vision.py (ViT facts),
                 weights.py (safetensors files), adapters/ (one per model family, a registry)
  data.py        calibration and evaluation data, checks on the user's files and uploads
  compress/      calibration.py (hooks, second moments), statistics.py (dense statistics pass),
                 allocation.py (uniform or OWL rates), preflight.py (weights and memory checks),
                 records.py (CompressionRun), pipeline.py (compress_model, block by block)
  runs/          run folders (safetensors + JSON manifest), run names, resuming
  evaluation.py  perplexity / embedding / CLS fidelity; ``oats.evaluate(run)`` is callable
  explain/       per-layer analysis, ViT attention and attributions
  runner/        background jobs for the app, sweeps (methods x rates, one tidy table)
  cli.py         the ``oats`` command
"""

import os as _os

# Idle OpenMP threads sleep instead of spinning. On a shared machine (a second process, the
# app's job next to a page, CI) spinning threads steal the cores the busy ones need: one
# minilm-l6 compression took 143 s instead of 10 s next to another job. Must be set before
# torch loads its OpenMP runtime; a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from oats.config import OatsConfig  # noqa: E402
from oats.core.decompose import Decomposition, History, decompose, decompose_many, rank_budget, row_keep
from oats.errors import (ConfigError, DataError, ModelLoadError, OatsError, ResourceError, RunError,
                     UnsupportedModelError)
from oats.runs.folders import list_runs, load_run, save_run
from oats.core.linear import OatsLinear, set_mode, use_mode
from oats.compress.pipeline import BUDGET_NOTES, METHODS, compress_model
from oats.compress.records import CompressionRun
from oats.evaluation import PRIMARY_METRIC, Evaluation, evaluate, evaluate_model, evaluate_run

__version__ = "0.1.0"

__all__ = [
    "OatsConfig", "Decomposition", "History", "decompose", "decompose_many", "rank_budget", "row_keep",
    "ConfigError", "DataError", "ModelLoadError", "OatsError", "ResourceError", "RunError", "UnsupportedModelError",
    "list_runs", "load_run", "save_run", "OatsLinear", "set_mode", "use_mode", "METHODS",
    "CompressionRun", "compress_model", "BUDGET_NOTES",
    "evaluate", "evaluate_model", "evaluate_run", "Evaluation", "PRIMARY_METRIC",
]
