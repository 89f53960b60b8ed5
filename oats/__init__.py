"""OATS Explorer: outlier-aware sparse + low-rank compression of transformer weights.

Where things live:
  config.py      OatsConfig, the one validated configuration
  decompose.py   the math for one matrix: budgets, thresholding, alternating solver
  adapters/      one adapter per model family behind a registry
  calibration.py hooks: block inputs and per-channel second moments
  pipeline.py    compress_model: block-by-block sequential compression
  modules.py     OatsLinear: sparse and low-rank terms kept apart, four modes
  io.py          run folders (safetensors + JSON manifest)
  zoo.py         presets that load offline, hub ids, local folders, timm names
  data.py        calibration and evaluation data
  baselines.py   magnitude, Wanda, SparseGPT and low-rank-only in the same budget accounting
  allocation.py  uniform or OWL-style per-block compression rates
  evaluate.py    perplexity / embedding / CLS fidelity; ``oats.evaluate(run)`` is callable
  sweep.py       methods x rates on one model, one tidy table, runs reused from disk
  validate.py    checks on user input: uploads, run names, weights, memory estimates
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
from oats.runs.info import RunInfo
from oats.core.linear import OatsLinear, set_mode, use_mode
from oats.compress.pipeline import BUDGET_NOTES, METHODS, CompressionRun, compress_model
from oats.evaluation import PRIMARY_METRIC, Evaluation, evaluate, evaluate_model, evaluate_run

__version__ = "0.1.0"

__all__ = [
    "OatsConfig", "Decomposition", "History", "decompose", "decompose_many", "rank_budget", "row_keep",
    "ConfigError", "DataError", "ModelLoadError", "OatsError", "ResourceError", "RunError", "UnsupportedModelError",
    "list_runs", "load_run", "save_run", "RunInfo", "OatsLinear", "set_mode", "use_mode", "METHODS",
    "CompressionRun", "compress_model", "BUDGET_NOTES",
    "evaluate", "evaluate_model", "evaluate_run", "Evaluation", "PRIMARY_METRIC",
]
