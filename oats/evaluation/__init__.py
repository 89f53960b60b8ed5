"""How good is a compressed model? One evaluation per task, the same for every method.

- causal LMs: perplexity on held-out text, exp of the mean next-token negative
  log-likelihood over fixed-length windows spread evenly over the text (the built-in
  evaluation split ``oats.data.evaluation_text()``, never the calibration text; or the
  user's text; or WikiText-2's test split through ``datasets`` when the network is there).
- encoders: fidelity to the dense model on held-out sentences: ``cosine``, the mean cosine
  between each sentence's compressed and dense embedding (mean pooling over real tokens),
  and ``spearman``, the rank correlation between the pairwise cosine similarities of the
  sentences under the two models.
- ViTs: ``cls_cosine``, the mean cosine between compressed and dense CLS features of
  evaluation crops of the bundled photos (other crops than calibration's; the user's folder
  when given); ``probe_acc``, a logistic-regression probe fitted on *dense* CLS features of
  scikit-learn digits and scored on the evaluated model's features of held-out digits;
  ``top1`` when the model has a classification head and a labelled folder is given.

A model is evaluated in its current modes (per-layer modes respected); fidelity metrics
compare against the same model with every ``OatsLinear`` in "dense" mode. The dense
reference is computed once per model (and per evaluation setting) and cached while the
model's weights are unchanged.

Each task is one module (``causal_lm``, ``encoder``, ``vision``) registered in
``oats.evaluation.tasks`` with its primary metric and that metric's direction; a new task is
one more module and one ``register_task``.

``oats.evaluate(run_or_model, ...)`` returns an ``Evaluation``; ``evaluate_model`` and
``evaluate_run`` return plain dicts for the app.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import asdict, dataclass, field

from torch import nn

from oats.compress.records import CompressionRun
from oats.core.linear import MODES, oats_layers, use_mode
from oats.errors import ConfigError, DataError
from oats.evaluation.common import (DOMAIN_SEP, ENCODER_SENTENCES, EVAL_SEED, LM_BATCH, LM_SEQ_LEN, LM_WINDOWS,
                                    METRIC_NAMES, PROBE_PATCHES, PROBE_SPLIT, USER_FACTOR, VISION_IMAGES, fingerprint,
                                    metric_key, metric_name, per_domain, split_key, wikitext2_text)
from oats.evaluation.tasks import (PRIMARY_METRIC, Evaluator, Task, a_model_of, primary_metric, register_task,
                                   task_for, task_of, tasks, unregister_task)
# the built-in tasks register themselves on import
from oats.evaluation.causal_lm import CausalLMEvaluator
from oats.evaluation.encoder import EncoderEvaluator
from oats.evaluation.vision import VisionEvaluator
from oats.methods import registry

__all__ = [
    "CausalLMEvaluator", "DOMAIN_SEP", "ENCODER_SENTENCES", "EVAL_SEED", "EncoderEvaluator", "Evaluation",
    "Evaluator", "LM_BATCH", "LM_SEQ_LEN", "LM_WINDOWS", "METRIC_NAMES", "PRIMARY_METRIC", "PROBE_PATCHES",
    "PROBE_SPLIT", "Task", "USER_FACTOR", "VISION_IMAGES", "VisionEvaluator", "a_model_of", "evaluate",
    "evaluate_model", "evaluate_run", "evaluation_tokens", "metric_key", "metric_name", "per_domain",
    "prepare_reference", "primary_metric", "register_task", "run_modes", "split_key", "task_for", "task_of",
    "tasks", "unregister_task", "wikitext2_text",
]


def run_modes(method: str, config=None) -> tuple[str, ...]:
    """The modes worth evaluating for a run of ``method`` with ``config``: the variants the run
    has (``registry.variants``: its method record says, and a two-term method that spent
    kappa = 0 or 1 has one term). A sparse-only method's "sparse" mode is its "both", and its
    "lowrank" mode is an empty model, so neither is measured."""
    return registry.variants(method, config)


_REFERENCES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cached_reference(model: nn.Module, ev: Evaluator):
    per_model = _REFERENCES.setdefault(model, {})
    key = ev.key() + (fingerprint(model),)
    if key not in per_model:
        per_model.clear()  # one setting at a time per model: the app's quick ablations
        per_model[key] = ev.reference(model)
    return per_model[key]


def _evaluator(loaded, quick, text, image_folder) -> Evaluator:
    if loaded is None:
        raise DataError("evaluation needs the loaded model (tokenizer, image settings): pass loaded=oats.models.zoo.load_model(...)")
    return Evaluator(loaded, quick=quick, text=text, image_folder=image_folder)


# ----------------------------------------------------------------------------- public API


def evaluate_model(model: nn.Module, loaded, *, quick: bool = False, text=None,
                   image_folder=None) -> dict[str, float]:
    """Metrics of ``model`` in its current modes (per-layer modes respected).

    Args:
        model: the model (its replaced linears in whatever modes they are in).
        loaded: the ``oats.models.zoo.LoadedModel`` it came from (task, tokenizer, image settings).
        quick: a small evaluation set (a few seconds on the embedded models).
        text: evaluation text (a string, or a path as ``pathlib.Path``) instead of the
            built-in evaluation split; causal LMs and encoders.
        image_folder: ViTs: evaluate on these images (and top-1 when the model has a
            classification head and the images sit in class sub-folders).

    Returns: {"perplexity", "nll"} | {"cosine", "spearman"} | {"cls_cosine", "probe_acc"[, "top1"]}.
    """
    ev = _evaluator(loaded, quick, text, image_folder)
    return ev.metrics(model, _cached_reference(model, ev))


def prepare_reference(model: nn.Module, loaded, *, quick: bool = False, text=None, image_folder=None) -> None:
    """Compute (or find cached) the dense reference that fidelity metrics compare against, now.

    Call it before changing what the model computes in a way its weights do not show (a
    forward hook, e.g. ``oats.explain.activations.channel_intervention``): a reference computed
    later, under the hook, would compare the changed model with itself."""
    _cached_reference(model, _evaluator(loaded, quick, text, image_folder))


def evaluation_tokens(loaded, *, quick: bool = False, text=None, image_folder=None) -> int:
    """Tokens one evaluation of one model feeds it (padding included), without running it."""
    return _evaluator(loaded, quick, text, image_folder).tokens_per_pass()


def evaluate_run(run, loaded=None, modes=("dense", "both", "sparse", "lowrank"), quick: bool = False,
                 text=None, image_folder=None) -> dict[str, dict[str, float]]:
    """Metrics of a ``CompressionRun`` in each of ``modes`` (model-wide); modes are restored.

    ``loaded`` defaults to ``run.loaded``. Returns {mode: {metric: value}}.
    """
    modes = registry.check_modes(modes)
    ev = _evaluator(loaded if loaded is not None else getattr(run, "loaded", None), quick, text, image_folder)
    ref = _cached_reference(run.model, ev)
    out = {}
    for mode in modes:
        with run.use_mode(mode):
            out[mode] = ev.metrics(run.model, ref)
    return out


@dataclass
class Evaluation:
    """What ``oats.evaluation`` returns: metrics per mode, the primary metric, the settings."""

    model_name: str
    task: str
    metrics: dict[str, dict[str, float]]
    """{mode: {metric: value}}; mode "current" means the model as it was (per-layer modes)."""
    primary: str
    higher_is_better: bool
    settings: dict = field(default_factory=dict)
    time_s: float = 0.0

    def value(self, mode: str = "both", metric: str | None = None) -> float:
        return self.metrics[mode][metric or self.primary]

    def to_dict(self) -> dict:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None  # JSON has no inf / NaN
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            return x
        return clean(asdict(self))


def evaluate(target, loaded=None, *, modes=None, quick: bool = False, text=None, image_folder=None) -> Evaluation:
    """Evaluate a run, a loaded model or a model: ``oats.evaluate(run)``.

    Args:
        target: a ``CompressionRun`` (modes default to those that mean something for its
            method: all four for OATS, dense and both otherwise), a ``LoadedModel``, or an
            ``nn.Module`` (then give ``loaded``; modes default to all four when it has
            replaced linears, else "dense").
        modes: modes to evaluate model-wide, or ("current",) for the model as it is.
        quick, text, image_folder: as in ``evaluate_model``.
    """
    t0 = time.perf_counter()
    name = ""
    if isinstance(target, CompressionRun):
        model, name = target.model, target.model_name
        loaded = loaded if loaded is not None else target.loaded
        default = run_modes(target.method, target.config)
    elif hasattr(target, "model") and hasattr(target, "task"):
        model, loaded, name = target.model, target, target.name
        default = MODES if oats_layers(model) else ("dense",)
    elif isinstance(target, nn.Module):
        model = target
        name = getattr(loaded, "name", "")
        default = MODES if oats_layers(model) else ("dense",)
    else:
        raise ConfigError(f"cannot evaluate a {type(target).__name__}: give a CompressionRun, a LoadedModel or a model")
    modes = tuple(modes) if modes is not None else tuple(default)
    ev = _evaluator(loaded, quick, text, image_folder)
    ref = _cached_reference(model, ev)
    metrics: dict[str, dict[str, float]] = {}
    for mode in modes:
        if mode == "current":
            metrics[mode] = ev.metrics(model, ref)
            continue
        registry.check_modes(mode)
        with use_mode(model, mode):
            metrics[mode] = ev.metrics(model, ref)
    primary, higher = primary_metric(ev.task)
    return Evaluation(model_name=name, task=ev.task, metrics=metrics, primary=primary, higher_is_better=higher,
                      settings=ev.settings, time_s=time.perf_counter() - t0)
