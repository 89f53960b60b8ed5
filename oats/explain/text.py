"""Section 5 of the paper for language models: which tokens the dense, compressed, sparse-only
and low-rank-only models rely on.

Two maps per variant, one value per token:

- **attention rollout**: each layer's attention fused over heads (mean), averaged with the
  identity for the residual path and renormalised, multiplied over the layers. The row read
  out is the one the output uses: the last token for a causal LM (it predicts the next
  token); for a sentence encoder with mean pooling, the mean of all rows.
- **layer integrated gradients** (captum's ``LayerIntegratedGradients``) on the input
  embedding layer's output, summed over the embedding dimension (signed). The baseline is
  the same sequence with every token that is not a special token ([CLS], [SEP], BOS, ...)
  replaced by the tokenizer's pad token (``baseline_ids``), so the path runs from "nothing
  said" to the text. Targets, the same function of each variant's output:
  - causal LM: the log-probability of the token the dense model predicts next after the text;
  - sentence encoder: the cosine between the variant's mean-pooled embedding of the text and
    the dense model's embedding of a second sentence (a fixed vector, so every variant is
    explained against the same reference).
  Completeness: the attributions sum to f(text) - f(baseline) up to captum's reported
  convergence delta (kept per variant). On SmolLM2 the model's output along that straight
  path jumps (measured on one sentence: f between -7.4 and -1.2 over 32 points, f(text) -
  f(baseline) = 1.2), so the delta stays large even at 128 steps (14): the page says so
  whenever |delta| exceeds a tenth of f(text) - f(baseline) (``incomplete``). Where the path
  is smooth, a target that barely moves (f(text) - f(baseline) of a few thousandths, as
  MiniLM's similarity to an unrelated second sentence) needs more steps than 16 to meet that
  tolerance: with ``max_steps`` the steps double for each variant until its attributions
  are complete, until ``max_steps``, or until doubling stops halving the delta (a jumping
  path), and ``steps_used`` says how many each variant took;
- **token ablation** (captum's ``FeatureAblation``): f(text) - f(text with that one token
  replaced by the baseline's token), one forward pass per token, no path and no delta: the
  check on the integrated gradients that needs no convergence.

The overlap between maps (rank correlation, top-k intersection over union) is
``oats.explain.vit.overlap_rows``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from oats.errors import ConfigError, UnsupportedModelError
from oats.evaluation import a_model_of
from oats.core.linear import MODES
from oats.explain.heads import MODE_LABELS, text_attentions, tokenize
from oats.methods import registry

TASKS = ("causal-lm", "encoder")
IG_STEPS = 16
IG_MAX_STEPS = 128
"""The most steps the Heads page lets integrated gradients double to (``explain_text``'s
``max_steps``) for a variant whose attributions miss completeness."""
COMPLETENESS_SHARE = 0.1
"""Integrated gradients are complete when captum's |delta| is at most this share of
|f(text) - f(baseline)| (plus 1e-6 for a target that does not move)."""


@dataclass
class TextExplanation:
    """Rollout and attributions per token for the four variants of one text."""

    task: str
    tokens: list[str]
    target: str
    """The function explained, in words."""
    rollout: dict[str, np.ndarray] = field(default_factory=dict)
    """mode -> (T,) attention rollout, sums to 1."""
    attributions: dict[str, np.ndarray] = field(default_factory=dict)
    """mode -> (T,) signed integrated-gradients attribution per token."""
    delta: dict[str, float] = field(default_factory=dict)
    """mode -> captum's convergence delta: sum of attributions - (f(text) - f(baseline))."""
    ablation: dict[str, np.ndarray] = field(default_factory=dict)
    """mode -> (T,) f(text) - f(text with the token replaced by the baseline's)."""
    value: dict[str, tuple[float, float]] = field(default_factory=dict)
    """mode -> (f(text), f(baseline))."""
    steps: int = IG_STEPS
    """The steps asked for (the first try of every variant)."""
    steps_used: dict[str, int] = field(default_factory=dict)
    """mode -> the steps its attributions (and ``delta``) were computed with: ``steps``, or more
    where ``max_steps`` let them double towards completeness."""
    seconds: dict[str, float] = field(default_factory=dict)


def text_rollout(attentions: list[np.ndarray], causal: bool) -> np.ndarray:
    """(T,) rollout of (heads, T, T) maps: the last row (causal) or the mean row (mean pooling)."""
    if not attentions:
        raise UnsupportedModelError("the model returned no attention maps")
    n = attentions[0].shape[-1]
    eye = np.eye(n)
    result = eye.copy()
    for att in attentions:
        a = np.asarray(att, dtype=np.float64).mean(axis=0)
        a = (a + eye) / 2.0
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
    row = result[-1] if causal else result.mean(axis=0)
    return (row / row.sum()).astype(np.float32)


def baseline_ids(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """``input_ids`` with every non-special token replaced by the pad token (unk, then eos,
    when there is no pad token)."""
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id) if t is not None),
               None)
    if pad is None:
        raise UnsupportedModelError("the tokenizer has no pad, unk or eos token to build the baseline from")
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=input_ids.dtype)
    keep = torch.isin(input_ids, special)
    return torch.where(keep, input_ids, torch.full_like(input_ids, pad))


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _encoder_embedding(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def _forward_fn(model: nn.Module, task: str, reference):
    """f(input_ids, attention_mask) -> (batch,) for the task (see the module docstring)."""
    if task == "causal-lm":
        def f(ids, mask):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, -1]
            return torch.log_softmax(logits.float(), dim=-1)[:, reference]
    else:
        def f(ids, mask):
            return torch.nn.functional.cosine_similarity(_encoder_embedding(model, ids, mask), reference[None], dim=-1)
    return f


def explain_text(run, text: str, second: str | None = None, *, modes=None, steps: int = IG_STEPS,
                 attributions: bool = True, max_steps: int | None = None) -> TextExplanation:
    """Rollout (and, with ``attributions``, integrated gradients) of ``text`` for each variant
    of a language-model run. ``second``: the sentence a sentence encoder's similarity is
    measured to. ``modes``: by default the variants the run has
    (``oats.methods.registry.run_variants``). The run's modes are restored afterwards.

    ``steps``: the integrated gradients' points on the path. ``max_steps``: where a variant's
    attributions miss completeness (``complete``) at ``steps``, double them, up to
    ``max_steps``, until they are complete or doubling no longer halves captum's delta (the
    output jumps along the path: more steps would not help); ``steps_used`` records the steps
    of each variant. None: ``steps`` only."""
    from captum.attr import FeatureAblation, LayerIntegratedGradients

    loaded = getattr(run, "loaded", None)
    task = getattr(loaded, "task", None)
    if task not in TASKS:
        raise UnsupportedModelError(f"token attributions are for language models (causal LM or sentence encoder), "
                                    f"not {a_model_of(task)}: the ViT attention page explains vision runs")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ConfigError(f"Integrated Gradients steps must be a whole number of at least 2, got {steps!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer))
                                  or max_steps < steps):
        raise ConfigError(f"the most Integrated Gradients steps must be a whole number of at least {steps}, "
                          f"got {max_steps!r}")
    given = registry.check_modes(registry.run_variants(run) if modes is None else modes, need_dense=True)
    modes = [m for m in MODES if m in given]  # the variants' own order, each once
    model = run.model
    batch, tokens = tokenize(loaded, text)
    ids, mask = batch["input_ids"], batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    base = baseline_ids(ids, loaded.tokenizer)
    with torch.no_grad(), run.use_mode("dense"):
        if task == "causal-lm":
            reference = int(model(input_ids=ids, attention_mask=mask).logits[0, -1].argmax())
            target = (f"log-probability of the dense model's next token {loaded.tokenizer.decode([reference])!r} "
                      f"after the text")
        else:
            if not isinstance(second, str) or not second.strip():
                raise ConfigError("type a second sentence: the encoder is explained by its similarity to it")
            b2, _ = tokenize(loaded, second)
            reference = _encoder_embedding(model, b2["input_ids"],
                                           b2.get("attention_mask", torch.ones_like(b2["input_ids"])))[0]
            target = "cosine between this model's mean-pooled embedding of the text and the dense model's of the second"
    out = TextExplanation(task=task, tokens=tokens, target=target, steps=int(steps))
    emb = model.get_input_embeddings()
    for mode in modes:
        t0 = time.perf_counter()
        with run.use_mode(mode):
            atts = text_attentions(model, {"input_ids": ids, "attention_mask": mask})
            out.rollout[mode] = text_rollout(atts, causal=task == "causal-lm")
            if attributions:
                f = _forward_fn(model, task, reference)
                lig = LayerIntegratedGradients(f, emb)
                with torch.no_grad():
                    fx, fb = float(f(ids, mask)[0]), float(f(base, mask)[0])
                out.value[mode] = (fx, fb)
                n, before = int(steps), None
                while True:
                    with torch.enable_grad():
                        attr, delta = lig.attribute(ids, baselines=base, additional_forward_args=(mask,),
                                                    n_steps=n, return_convergence_delta=True)
                    d = float(delta[0])
                    if (complete(d, fx, fb) or max_steps is None or 2 * n > max_steps
                            or (before is not None and abs(d) > 0.5 * abs(before))):
                        break
                    n, before = 2 * n, d
                out.attributions[mode] = attr[0].sum(-1).detach().float().numpy()
                out.delta[mode] = d
                out.steps_used[mode] = n
                with torch.no_grad():
                    abl = FeatureAblation(f).attribute(ids, baselines=base, additional_forward_args=(mask,),
                                                       perturbations_per_eval=8)
                out.ablation[mode] = abl[0].detach().float().numpy()
        out.seconds[mode] = time.perf_counter() - t0
    return out


def overlap_maps(ex: TextExplanation) -> dict[str, dict[str, np.ndarray]]:
    """The maps to compare between variants: rollout and |attribution| per token."""
    maps = {"attention rollout": dict(ex.rollout)}
    if ex.attributions:
        maps["integrated gradients |attribution|"] = {m: np.abs(a) for m, a in ex.attributions.items()}
    if ex.ablation:
        maps["token ablation |effect|"] = {m: np.abs(a) for m, a in ex.ablation.items()}
    return maps


def complete(delta: float, f_text: float, f_baseline: float, share: float = COMPLETENESS_SHARE) -> bool:
    """Whether attributions with captum's ``delta`` sum to f(text) - f(baseline) within
    ``share`` of it (and 1e-6): the one completeness rule of the explanation and the page."""
    return abs(delta) <= share * abs(f_text - f_baseline) + 1e-6


def incomplete(ex: TextExplanation, share: float = COMPLETENESS_SHARE) -> list[str]:
    """Modes whose integrated gradients miss completeness by more than ``share`` of
    |f(text) - f(baseline)| (captum's delta)."""
    return [m for m, d in ex.delta.items() if not complete(d, *ex.value[m], share=share)]


__all__ = ["COMPLETENESS_SHARE", "IG_MAX_STEPS", "MODE_LABELS", "TextExplanation", "baseline_ids", "complete",
           "explain_text", "incomplete", "overlap_maps", "text_rollout"]
