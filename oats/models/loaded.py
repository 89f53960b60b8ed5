"""What every model loader returns: a :class:`LoadedModel`, and the small steps loaders share.

A loaded model is in eval mode, fp32, on the CPU, and comes with what calibration and
evaluation need (tokenizer, image size and normalisation) and a default rank ratio.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import torch

TASKS = ("causal-lm", "encoder", "vision")
DEFAULT_RANK_RATIO = {"causal-lm": 0.25, "encoder": 0.25, "vision": 0.20}
"""The paper's defaults: 0.25 for Phi-3 (0.30 for Llama-3), 0.20 for ViTs."""


BUILD_LOCK = threading.RLock()
"""Held while a model is built or read: one at a time per process. transformers'
``from_pretrained`` (and accelerate's empty-weights context) patch process-wide state while
they build a model: the default dtype, torch's init functions, weight tying. Two builds in
two threads at once can leave one model with tied weights never tied (SmolLM2's head stayed on
the meta device when the app loaded two runs at once)."""


@dataclass
class LoadedModel:
    """A model ready for compression, with what calibration and evaluation need."""

    name: str
    """What the user asked for: a preset name, a folder, a hub id or ``timm:NAME``."""
    model: torch.nn.Module
    """In eval mode, fp32, on the CPU."""
    task: str
    """One of ``TASKS``: "causal-lm", "encoder" or "vision"."""
    tokenizer: Any = None
    """Hugging Face tokenizer for text models, None for vision models."""
    image_size: int | None = None
    """Side of the square input in pixels (vision models only)."""
    image_mean: tuple[float, float, float] | None = None
    """Per-channel mean of the input normalisation, on the 0..1 scale (vision only)."""
    image_std: tuple[float, float, float] | None = None
    """Per-channel standard deviation of the input normalisation (vision only)."""
    source: str = ""
    """Where the weights came from, in words, for logs and the UI."""
    default_rank_ratio: float = 0.25
    """Rank ratio (kappa) to propose for this model."""
    disk: Any = None
    """Larger-than-memory mode: the ``oats.models.weights.DiskWeights`` its transformer blocks
    are read from, one at a time (they are on the meta device until then); None when the
    whole model is in memory."""


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' per-load "Loading weights" bars (noise for local files, and an error
    after one would no longer be the only line on stderr)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def finish(model: torch.nn.Module) -> torch.nn.Module:
    model = model.to(device="cpu", dtype=torch.float32)
    model.eval()
    return model


def one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
