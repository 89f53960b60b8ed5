"""Where a vision transformer looks, dense vs sparse-only vs low-rank-only (paper, Section 5).

Pure functions on a model and one image, plus ``explain``/``explain_attributions`` that run them
for the three models a :class:`~oats.compress.records.CompressionRun` holds:

- "dense": every replaced linear applies its original weight;
- "sparse" (sparse-only): every low-rank term zeroed, ``run.use_mode("sparse")``;
- "lowrank" (low-rank-only): every sparse term zeroed, ``run.use_mode("lowrank")``.

Biases, norms, embeddings and heads are the same in all three. The run's modes are always
restored (the loaded run is shared by the app's pages).

**Attention rollout** (Abnar & Zuidema 2020, as the paper uses it): per layer, fuse the heads'
attention maps (mean; max and min offered), zero the lowest ``discard_ratio`` share of the fused
(T x T) map's entries (never the CLS-to-CLS entry, as in the paper's code), add the identity for
the residual path, ``A = (A + I) / 2``, renormalise every row to sum 1, and multiply over
layers, ``R = A_L ... A_2 A_1``. The CLS row of R over the patch tokens, reshaped to the patch
grid, is the map. (The paper's code divides by the row sums along the wrong axis, a bug
inherited from a popular rollout script; here each row is divided by its own sum, so every
rolled-out matrix stays row-stochastic.) Maps are returned raw, not min-max normalised: the
values are shares of the CLS token's attention flow, and the figures rescale for display.

**Attributions** (captum): DINOv2 has no classification head, so there is no class logit to
explain. The default target is the *projection of the model's CLS feature onto the dense
model's CLS feature direction for the same image*: ``t(x) = <f(x), f_dense(x0) / |f_dense(x0)|>``,
with ``f`` the final (normalised) CLS token. The direction is computed once per image from the
dense model, so the dense, sparse-only and low-rank-only models are all explained with respect
to the same direction of feature space: "which pixels make this model produce the dense
model's representation of this image". ``"cls-norm"`` (the length of the CLS feature) is the
alternative. Pixel attributions become patch maps by summing ``|attribution|`` over the colour
channels and averaging over each patch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from oats.data import image_batches
from oats.errors import ConfigError, DataError, UnsupportedModelError
from oats.evaluation import a_model_of
from oats.methods import registry
from oats.models.vision import is_hf_vit, is_timm_vit, own_image_settings, patch_size

MODES = ("dense", "sparse", "lowrank")
"""The three models this page compares for a two-term run (dense, sparse-only, low-rank-only),
in the order its figures lay them out; ``run_modes(run)`` is what it compares for a given run
and ``registry.check_modes`` checks a caller's choice against ``compared_modes(run)``."""
MODE_LABELS = {"dense": "dense", "sparse": "sparse-only", "lowrank": "low-rank-only", "both": "compressed (S + L)"}


def mode_labels(run) -> dict[str, str]:
    """``MODE_LABELS`` for ``run``: its compressed model named after the terms its method has."""
    terms = registry.terms(getattr(run, "method", None), getattr(run, "config", None))
    both = {"sparse + low-rank": "compressed (S + L)", "sparse": "compressed (sparse)",
            "low-rank": "compressed (low-rank)"}[terms]
    return {**MODE_LABELS, "both": both}


def run_modes(run) -> tuple[str, ...]:
    """The models this page explains for ``run``: dense and each term alone when the run's method
    has two terms (``registry.run_variants``), else dense and the compressed model."""
    alone = tuple(m for m in registry.run_variants(run) if m in ("sparse", "lowrank"))
    return ("dense", *alone) if alone else ("dense", "both")


def compared_modes(run) -> tuple[str, ...]:
    """The models the ViT page draws side by side for ``run``: every variant it has
    (``registry.run_variants``), dense first: dense, the compressed model and, for a method
    with both terms, sparse-only and low-rank-only; a one-term run (Wanda) gives dense and its
    compressed model only."""
    have = registry.run_variants(run)
    return tuple(m for m in ("dense", "both", "sparse", "lowrank") if m in have)


HEAD_FUSIONS = ("mean", "max", "min")
DISCARD_RATIO = 0.4
"""The paper's default share of the lowest fused attentions dropped per layer."""
ATTRIBUTION_METHODS = {
    "ig": "Integrated Gradients",
    "saliency": "Saliency (|gradient|)",
    "input_x_gradient": "Input × Gradient",
}
TARGETS = {
    "cls-direction": "projection of the CLS feature onto the dense model's CLS feature direction (same image)",
    "cls-norm": "length of the CLS feature",
}
IG_STEPS = 16
"""Default Integrated Gradients steps: 16 forward+backward passes, about 2-6 s per model for DINOv2-S
at 224 px on 2 CPU cores (a saliency map is one pass, ~0.2-0.6 s)."""
IG_BATCH = 16
"""Integrated Gradients points per batch (16 was ~25% faster than 8 on 2 cores)."""
TOPK_SHARE = 0.1
"""Default top-k for the patch IoU: the top 10% of the patches."""
VISION_FAMILIES = ("vit", "dinov2", "timm-vit")


# --------------------------------------------------------------------------------------
# Model access: attention maps, patch grid, CLS feature


def _as_batch(pixel_values: torch.Tensor) -> torch.Tensor:
    px = torch.as_tensor(pixel_values)
    if px.ndim == 3:
        px = px.unsqueeze(0)
    if px.ndim != 4 or px.shape[0] != 1 or px.shape[1] != 3:
        raise DataError(f"expected pixel values of shape (1, 3, H, W), got {tuple(px.shape)}: give one RGB image")
    return px.float()


def patch_grid(model: nn.Module, pixel_values: torch.Tensor) -> tuple[int, int]:
    """(grid_h, grid_w): the number of patch rows and columns for this input size."""
    ph, pw = patch_size(model)
    h, w = pixel_values.shape[-2:]
    return int(h) // ph, int(w) // pw


def attention_maps(model: nn.Module, pixel_values: torch.Tensor) -> list[np.ndarray]:
    """The softmaxed attention of every layer for one image, in layer order.

    Args:
        model: a Hugging Face ViT / DINOv2 (any head) or a timm ``VisionTransformer``.
        pixel_values: (1, 3, H, W) normalised image.

    Returns:
        One float32 array of shape (heads, T, T) per layer, T = prefix tokens (CLS, registers)
        + patches; rows sum to 1.

    Hugging Face models need eager attention (SDPA returns no maps): a model loaded otherwise
    is switched to eager, which computes the same function. timm's fused kernel never
    materialises the map, so ``fused_attn`` is turned off during the call (and restored) and
    the map is read where it leaves ``attn_drop``.
    """
    px = _as_batch(pixel_values)
    if is_timm_vit(model):
        return _timm_attention(model, px)
    if not is_hf_vit(model):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a vision transformer this page knows: "
            "use a Hugging Face ViT/DINOv2 or a timm VisionTransformer")
    with torch.no_grad():
        atts = model(pixel_values=px, output_attentions=True).attentions
        if not atts and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
            atts = model(pixel_values=px, output_attentions=True).attentions
    if not atts:
        raise UnsupportedModelError(
            f"{type(model).__name__} returned no attention maps: load it with attn_implementation='eager'")
    return [a[0].detach().float().cpu().numpy() for a in atts]


def _timm_attention(model: nn.Module, px: torch.Tensor) -> list[np.ndarray]:
    attns = [blk.attn for blk in model.blocks if hasattr(getattr(blk, "attn", None), "attn_drop")]
    if not attns:
        raise UnsupportedModelError(
            f"timm model {type(model).__name__} has no attention modules with attn_drop: attention maps cannot be read")
    store: list[torch.Tensor] = []
    saved = [(a, getattr(a, "fused_attn", None)) for a in attns]
    hooks = [a.attn_drop.register_forward_hook(lambda _m, _i, out: store.append(out.detach())) for a in attns]
    try:
        for a, _ in saved:
            if hasattr(a, "fused_attn"):
                a.fused_attn = False
        with torch.no_grad():
            model(px)
    finally:
        for h in hooks:
            h.remove()
        for a, fused in saved:
            if fused is not None:
                a.fused_attn = fused
    return [s[0].float().cpu().numpy() for s in store]


def cls_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, D) final CLS feature: the normalised CLS token (timm: the pre-logits features)."""
    if is_timm_vit(model):
        return model.forward_head(model.forward_features(pixel_values), pre_logits=True)
    if is_hf_vit(model):
        base = getattr(model, "base_model", model)
        return base(pixel_values=pixel_values).last_hidden_state[:, 0]
    raise UnsupportedModelError(
        f"{type(model).__name__} is not a vision transformer this page knows: "
        "use a Hugging Face ViT/DINOv2 or a timm VisionTransformer")


# --------------------------------------------------------------------------------------
# Rollout


def _check_settings(head_fusion: str, discard_ratio: float) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ConfigError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    if isinstance(discard_ratio, bool) or not isinstance(discard_ratio, (int, float)) or not 0 <= discard_ratio < 1:
        raise ConfigError(f"discard ratio must be a number in [0, 1), got {discard_ratio!r}")


def fuse_heads(attention: np.ndarray, head_fusion: str = "mean") -> np.ndarray:
    """(heads, T, T) -> (T, T) by the mean, max or min over heads."""
    if head_fusion not in HEAD_FUSIONS:
        raise ConfigError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}")
    a = np.asarray(attention, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise DataError(f"an attention map must be (heads, T, T), got {a.shape}")
    return getattr(a, head_fusion)(axis=0)


def _grid_for(n_tokens: int, grid: tuple[int, int] | None) -> tuple[int, int, int]:
    """(grid_h, grid_w, prefix tokens): patches are the last grid_h * grid_w tokens."""
    if grid is None:
        side = int(round(np.sqrt(n_tokens - 1)))
        if side * side != n_tokens - 1:
            raise DataError(
                f"{n_tokens} tokens are not a CLS token plus a square patch grid: give the grid (grid_h, grid_w)")
        grid = (side, side)
    gh, gw = int(grid[0]), int(grid[1])
    prefix = n_tokens - gh * gw
    if prefix < 1:
        raise DataError(f"a {gh} x {gw} patch grid needs more than {n_tokens} tokens (a CLS token first)")
    return gh, gw, prefix


def _discard(fused: np.ndarray, ratio: float) -> np.ndarray:
    """Zero the lowest ``ratio`` share of the entries, never the CLS-to-CLS entry (index 0)."""
    n = int(ratio * fused.size)
    if n == 0:
        return fused
    flat = fused.ravel().copy()
    lowest = np.argsort(flat[1:], kind="stable")[:n] + 1
    flat[lowest] = 0.0
    return flat.reshape(fused.shape)


def rollout_layers(
    attentions: Sequence[np.ndarray],
    head_fusion: str = "mean",
    discard_ratio: float = DISCARD_RATIO,
    grid: tuple[int, int] | None = None,
) -> np.ndarray:
    """Attention rollout up to each layer: (layers, grid_h, grid_w); the last slice is ``rollout``.

    ``attentions``: one (heads, T, T) map per layer (``attention_maps``). ``grid``: the patch
    grid; None means a square grid after one CLS token. See the module docstring for the steps.
    """
    _check_settings(head_fusion, discard_ratio)
    if len(attentions) == 0:
        raise DataError("no attention maps given: the model returned none")
    n_tokens = np.shape(attentions[0])[-1]
    gh, gw, prefix = _grid_for(n_tokens, grid)
    eye = np.eye(n_tokens)
    result = eye.copy()
    out = []
    for att in attentions:
        a = _discard(fuse_heads(att, head_fusion), discard_ratio)
        a = (a + eye) / 2.0
        a = a / a.sum(axis=-1, keepdims=True)
        result = a @ result
        out.append(result[0, prefix:].reshape(gh, gw))
    return np.stack(out).astype(np.float32)


def rollout(
    attentions: Sequence[np.ndarray],
    head_fusion: str = "mean",
    discard_ratio: float = DISCARD_RATIO,
    grid: tuple[int, int] | None = None,
) -> np.ndarray:
    """Attention rollout over all layers: (grid_h, grid_w), the CLS row over the patches."""
    return rollout_layers(attentions, head_fusion, discard_ratio, grid)[-1]


def cls_attention_layers(
    attentions: Sequence[np.ndarray], head_fusion: str = "mean", grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Each layer's own head-fused attention from CLS to the patches: (layers, grid_h, grid_w)."""
    if len(attentions) == 0:
        raise DataError("no attention maps given: the model returned none")
    gh, gw, prefix = _grid_for(np.shape(attentions[0])[-1], grid)
    return np.stack([fuse_heads(a, head_fusion)[0, prefix:].reshape(gh, gw) for a in attentions]).astype(np.float32)


# --------------------------------------------------------------------------------------
# Attributions


def make_target(kind: str | torch.Tensor | Callable, model: nn.Module | None = None,
                pixel_values: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function (B, D) CLS features -> (B,) scalars to explain.

    ``kind``: "cls-norm"; a (D,) direction tensor (the projection onto it, normalised); or
    "cls-direction", the model's own CLS feature direction for ``pixel_values`` (``explain_attributions``
    passes the dense model's direction instead, so the three models share one target).
    A callable is returned as is.
    """
    if callable(kind) and not isinstance(kind, torch.Tensor):
        return kind
    if isinstance(kind, torch.Tensor):
        d = kind.detach().float().flatten()
        norm = float(d.norm())
        if not np.isfinite(norm) or norm == 0:
            raise DataError("the target direction is zero or not finite: choose the 'cls-norm' target")
        d = d / norm
        return lambda f: f @ d
    if kind == "cls-norm":
        return lambda f: f.norm(dim=-1)
    if kind == "cls-direction":
        if model is None or pixel_values is None:
            raise ConfigError("the 'cls-direction' target needs the model and the image to take the direction from")
        with torch.no_grad():
            return make_target(cls_features(model, _as_batch(pixel_values))[0])
    raise ConfigError(f"attribution target must be one of {', '.join(TARGETS)}, got {kind!r}")


def pool_to_patches(pixel_attr: torch.Tensor | np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """(1 or none, 3, H, W) pixel attributions -> (grid_h, grid_w): sum |.| over channels, mean per patch."""
    a = torch.as_tensor(pixel_attr).detach().float()
    if a.ndim == 4:
        a = a[0]
    a = a.abs().sum(0)
    ph, pw = patch
    gh, gw = a.shape[0] // ph, a.shape[1] // pw
    a = a[: gh * ph, : gw * pw].reshape(gh, ph, gw, pw).mean(dim=(1, 3))
    return a.cpu().numpy().astype(np.float32)


def pixel_attributions(
    model: nn.Module,
    pixel_values: torch.Tensor,
    method: str = "ig",
    target: str | torch.Tensor | Callable = "cls-norm",
    *,
    steps: int = IG_STEPS,
    internal_batch_size: int = IG_BATCH,
) -> torch.Tensor:
    """A captum attribution of ``target(CLS feature)`` to each input value: (1, 3, H, W).

    Args:
        model: a Hugging Face ViT / DINOv2 or a timm VisionTransformer, in its current modes.
        pixel_values: (1, 3, H, W) normalised image.
        method: "ig" (Integrated Gradients from the all-zero normalised image, i.e. the
            dataset-mean colour, ``steps`` points, ``internal_batch_size`` at a time),
            "saliency" (|gradient|) or "input_x_gradient".
        target: see ``make_target``.
    """
    from captum.attr import InputXGradient, IntegratedGradients, Saliency

    if method not in ATTRIBUTION_METHODS:
        raise ConfigError(f"attribution method must be one of {', '.join(ATTRIBUTION_METHODS)}, got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ConfigError(f"Integrated Gradients steps must be a whole number of at least 2, got {steps!r}")
    px = _as_batch(pixel_values)
    fn = make_target(target, model, px)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return fn(cls_features(model, x))

    x = px.clone().requires_grad_(True)
    if method == "ig":
        attr = IntegratedGradients(forward).attribute(
            x, baselines=torch.zeros_like(x), n_steps=int(steps), internal_batch_size=int(internal_batch_size))
    elif method == "saliency":
        attr = Saliency(forward).attribute(x, abs=True)
    else:
        attr = InputXGradient(forward).attribute(x)
    return attr.detach()


def attributions(
    model: nn.Module,
    pixel_values: torch.Tensor,
    method: str = "ig",
    target: str | torch.Tensor | Callable = "cls-norm",
    *,
    steps: int = IG_STEPS,
    internal_batch_size: int = IG_BATCH,
) -> np.ndarray:
    """``pixel_attributions`` pooled to the patch grid: (grid_h, grid_w) float32, |attribution|
    summed over the colour channels and averaged over each patch."""
    attr = pixel_attributions(model, pixel_values, method, target, steps=steps,
                              internal_batch_size=internal_batch_size)
    return pool_to_patches(attr, patch_size(model))


# --------------------------------------------------------------------------------------
# Overlap between maps


def default_k(n_patches: int, share: float = TOPK_SHARE) -> int:
    """Top-k size for ``share`` of ``n_patches`` (at least 1)."""
    return max(1, int(round(share * n_patches)))


def overlap(map_a: np.ndarray, map_b: np.ndarray, k: int | None = None) -> dict[str, float]:
    """How much two maps of the same grid agree.

    Returns ``spearman`` (rank correlation of the patch values, in [-1, 1]; NaN when a map is
    constant) and ``topk_iou`` (intersection over union of the k highest patches of each, in
    [0, 1]; ties broken by patch order; k defaults to ``default_k``).
    """
    from scipy.stats import spearmanr

    a = np.asarray(map_a, dtype=np.float64).ravel()
    b = np.asarray(map_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise DataError(f"maps of {np.shape(map_a)} and {np.shape(map_b)} patches cannot be compared")
    k = default_k(a.size) if k is None else int(k)
    if not 1 <= k <= a.size:
        raise ConfigError(f"top-k must be between 1 and {a.size} patches, got {k}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        rho = float("nan")
    else:
        rho = float(spearmanr(a, b).statistic)
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return {"spearman": rho, "topk_iou": len(top_a & top_b) / len(top_a | top_b)}


def overlap_rows(maps: Mapping[str, Mapping[str, np.ndarray]], k: int | None = None,
                 labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every pair of models for every kind of map: rows {map, pair, spearman, topk_iou, k}.

    ``maps``: {kind (e.g. "rollout", "ig"): {mode: (grid_h, grid_w)}}. ``labels``: the run's
    names of its models (``mode_labels``; by default ``MODE_LABELS``).
    """
    names = {**MODE_LABELS, **(labels or {})}
    order = ("dense", "both", "sparse", "lowrank")
    rows = []
    for kind, by_mode in maps.items():
        modes = [m for m in order if m in by_mode] + [m for m in by_mode if m not in order]
        for i, m1 in enumerate(modes):
            for m2 in modes[i + 1:]:
                kk = default_k(np.size(by_mode[m1])) if k is None else k
                o = overlap(by_mode[m1], by_mode[m2], kk)
                rows.append({"map": kind, "pair": f"{names.get(m1, m1)} vs {names.get(m2, m2)}",
                             "spearman": o["spearman"], "topk_iou": o["topk_iou"], "k": kk})
    return rows


# --------------------------------------------------------------------------------------
# The three models of a run


def is_vision_run(run) -> bool:
    """Whether the run's model is a vision transformer these maps can be drawn for."""
    loaded = getattr(run, "loaded", None)
    return run.family in VISION_FAMILIES or getattr(loaded, "task", None) == "vision"


def require_vision(run) -> None:
    if not is_vision_run(run):
        what = a_model_of(getattr(getattr(run, "loaded", None), "task", None) or run.family)
        raise UnsupportedModelError(
            f"run of {run.model_name or 'this model'} is {what}, not a vision transformer: "
            "choose a dinov2-small run, or compress one (oats compress dinov2-small)")


def image_spec(run, spec=None) -> tuple[int, tuple, tuple]:
    """(size, mean, std) to preprocess images for the run's model.

    ``spec``: a LoadedModel or a (size, mean, std) tuple; default: the run's LoadedModel, else
    the model's own configuration (timm's pretrained config; HF ``config.image_size``) with
    ImageNet normalisation.
    """
    if spec is None:
        spec = getattr(run, "loaded", None)
    if isinstance(spec, tuple) and len(spec) == 3:
        return int(spec[0]), tuple(spec[1]), tuple(spec[2])
    if spec is not None and getattr(spec, "image_size", None):
        return int(spec.image_size), tuple(spec.image_mean), tuple(spec.image_std)
    return own_image_settings(run.model)


def prepare_image(image: np.ndarray, spec: tuple[int, tuple, tuple]) -> tuple[torch.Tensor, np.ndarray]:
    """(pixel_values (1, 3, S, S), the crop the model sees as (S, S, 3) uint8).

    The same preprocessing as evaluation (``oats.data.image_batches`` without augmentation:
    centred square, resized to S, normalised).
    """
    px = image_batches(spec, [image], 1, augment=False, batch_size=1)[0]["pixel_values"]
    mean = torch.tensor(spec[1], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec[2], dtype=torch.float32).view(3, 1, 1)
    crop = ((px[0] * std + mean).clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return px, np.ascontiguousarray(crop)


@dataclass
class AttentionMaps:
    """Rollout and per-layer CLS attention of the three models for one image."""

    image: np.ndarray
    """(S, S, 3) uint8: the crop the models saw."""
    grid: tuple[int, int]
    """(grid_h, grid_w) patch grid."""
    head_fusion: str
    discard_ratio: float
    rollout: dict[str, np.ndarray] = field(default_factory=dict)
    """mode -> (grid_h, grid_w) rollout over all layers."""
    layer_rollout: dict[str, np.ndarray] = field(default_factory=dict)
    """mode -> (layers, grid_h, grid_w) rollout up to each layer."""
    layer_attention: dict[str, np.ndarray] = field(default_factory=dict)
    """mode -> (layers, grid_h, grid_w) each layer's own fused CLS-to-patch attention."""
    seconds: dict[str, float] = field(default_factory=dict)
    """mode -> wall-clock seconds (forward pass and rollout)."""


@dataclass
class AttributionMaps:
    """captum attributions of the three models for one image, pooled to the patch grid."""

    grid: tuple[int, int]
    target: str
    """Key of ``TARGETS``."""
    steps: int
    """Integrated Gradients steps."""
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """method -> mode -> (grid_h, grid_w)."""
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    """method -> mode -> wall-clock seconds."""


def explain(run, image: np.ndarray, *, head_fusion: str = "mean", discard_ratio: float = DISCARD_RATIO,
            spec=None, modes: Sequence[str] | None = None) -> AttentionMaps:
    """Attention rollout and per-layer CLS attention of the run's dense, sparse-only and
    low-rank-only models for one RGB image (H, W, 3). One forward pass per model; the run's
    modes are restored afterwards. ``spec``: see ``image_spec``."""
    require_vision(run)
    _check_settings(head_fusion, discard_ratio)
    # by default run_modes(run); each a model the run has (compared_modes): a one-term run (Wanda)
    # has no sparse-only or low-rank-only model to explain
    modes = registry.check_modes(run_modes(run) if modes is None else modes, allowed=compared_modes(run))
    px, crop = prepare_image(image, image_spec(run, spec))
    grid = patch_grid(run.model, px)
    out = AttentionMaps(image=crop, grid=grid, head_fusion=head_fusion, discard_ratio=float(discard_ratio))
    for mode in modes:
        t0 = time.perf_counter()
        with run.use_mode(mode):
            atts = attention_maps(run.model, px)
        out.layer_rollout[mode] = rollout_layers(atts, head_fusion, discard_ratio, grid)
        out.rollout[mode] = out.layer_rollout[mode][-1]
        out.layer_attention[mode] = cls_attention_layers(atts, head_fusion, grid)
        out.seconds[mode] = time.perf_counter() - t0
    return out


def explain_attributions(run, image: np.ndarray, *, methods: Sequence[str] = ("ig", "saliency"),
                         target: str = "cls-direction", steps: int = IG_STEPS, internal_batch_size: int = IG_BATCH,
                         spec=None, modes: Sequence[str] | None = None,
                         progress: Callable[[int, int, str], None] | None = None) -> AttributionMaps:
    """captum attributions of the three models for one RGB image (H, W, 3).

    With ``target="cls-direction"`` the direction is the *dense* model's CLS feature for this
    image, shared by all three models (see the module docstring). ``progress(done, total,
    message)`` is called after each (method, model). The run's modes are restored afterwards.
    """
    require_vision(run)
    # by default run_modes(run); each a model the run has (compared_modes): a one-term run (Wanda)
    # has no sparse-only or low-rank-only model to explain
    modes = registry.check_modes(run_modes(run) if modes is None else modes, allowed=compared_modes(run))
    methods = list(methods)
    for m in methods:
        if m not in ATTRIBUTION_METHODS:
            raise ConfigError(f"attribution method must be one of {', '.join(ATTRIBUTION_METHODS)}, got {m!r}")
    if target not in TARGETS:
        raise ConfigError(f"attribution target must be one of {', '.join(TARGETS)}, got {target!r}")
    px, _ = prepare_image(image, image_spec(run, spec))
    if target == "cls-direction":
        with run.use_mode("dense"), torch.no_grad():
            fn = make_target(cls_features(run.model, px)[0])
    else:
        fn = make_target(target)
    out = AttributionMaps(grid=patch_grid(run.model, px), target=target, steps=int(steps))
    total, done = len(methods) * len(modes), 0
    for method in methods:
        out.maps[method], out.seconds[method] = {}, {}
        for mode in modes:
            t0 = time.perf_counter()
            with run.use_mode(mode):
                out.maps[method][mode] = attributions(run.model, px, method, fn, steps=steps,
                                                      internal_batch_size=internal_batch_size)
            out.seconds[method][mode] = time.perf_counter() - t0
            done += 1
            if progress is not None:
                progress(done, total, f"{ATTRIBUTION_METHODS[method]}, {MODE_LABELS[mode]}")
    return out
