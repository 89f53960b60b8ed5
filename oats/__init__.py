"""OATS Explorer: outlier-aware sparse + low-rank compression of transformer weights.

The public API is re-exported here; the README's "Where things live" maps the folders
(core, methods, models, data, compress, runs, evaluation, explain, runner, cli: each imports
only the ones before it).
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
from oats.methods import BUDGET_NOTES, METHODS
from oats.compress.pipeline import compress_model
from oats.compress.records import CompressionRun
from oats.deploy.export import export_run, export_run_folder, load_compressed
from oats.evaluation import PRIMARY_METRIC, Evaluation, evaluate, evaluate_model, evaluate_run

__version__ = "0.1.0"

__all__ = [
    "OatsConfig", "Decomposition", "History", "decompose", "decompose_many", "rank_budget", "row_keep",
    "ConfigError", "DataError", "ModelLoadError", "OatsError", "ResourceError", "RunError", "UnsupportedModelError",
    "list_runs", "load_run", "save_run", "RunInfo", "OatsLinear", "set_mode", "use_mode", "METHODS",
    "CompressionRun", "compress_model", "BUDGET_NOTES",
    "export_run", "export_run_folder", "load_compressed",
    "evaluate", "evaluate_model", "evaluate_run", "Evaluation", "PRIMARY_METRIC",
]
