"""What the package knows about vision transformers, answered in one place.

Two kinds of ViT are supported: Hugging Face models whose ``config`` has a ``patch_size``
(ViT, DINOv2, with or without registers) and timm ``VisionTransformer`` models. Loading,
calibration, the memory estimate, evaluation and the attention/attribution views all ask
this module which kind a model is, how large its patches are, how many tokens come before
the patches (CLS, registers, a distillation token) and how its inputs are normalised.
"""

from __future__ import annotations

from torch import nn

from oats.errors import UnsupportedModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The ImageNet normalisation, on the 0..1 scale: the default when a model names none."""

DEFAULT_IMAGE_SIZE = 224

HF_VISION_TYPES = {"vit", "dinov2", "dinov2_with_registers", "deit", "beit", "vit_msn", "vit_mae", "dinov3_vit"}
"""transformers ``model_type`` values of vision transformers."""


def is_vision_config(config) -> bool:
    """Whether a transformers config describes a vision transformer: a known model type, or
    patches and channels without a vocabulary."""
    return getattr(config, "model_type", "") in HF_VISION_TYPES or (
        hasattr(config, "patch_size") and hasattr(config, "num_channels") and not hasattr(config, "vocab_size"))


def is_timm(model: nn.Module) -> bool:
    """Whether ``model`` is a timm model (its class or a base class comes from timm)."""
    return any(c.__module__.startswith("timm.") for c in type(model).__mro__)


def is_timm_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a timm ``VisionTransformer`` (or a subclass of it)."""
    return any(c.__name__ == "VisionTransformer" and c.__module__.startswith("timm.")
               for c in type(model).__mro__) and hasattr(model, "blocks") and hasattr(model, "patch_embed")


def is_hf_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face vision transformer (a config with a patch size)."""
    return hasattr(getattr(model, "config", None), "patch_size")


def _unsupported(model: nn.Module) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{type(model).__name__} is not a vision transformer this page knows: "
        "use a Hugging Face ViT/DINOv2 or a timm VisionTransformer")


def patch_size(model: nn.Module, default: int | None = None) -> tuple[int, int]:
    """(height, width) of one patch in pixels.

    A model that is neither kind gets ``(default, default)``, or UnsupportedModelError when
    no default is given.
    """
    if is_timm(model) and hasattr(model, "patch_embed"):
        p = model.patch_embed.patch_size
    elif is_hf_vit(model):
        p = model.config.patch_size
    elif default is not None:
        p = default
    else:
        raise _unsupported(model)
    return (int(p[0]), int(p[1])) if isinstance(p, (tuple, list)) else (int(p), int(p))


def prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patches: the CLS token plus any register (or distillation) tokens."""
    if is_timm(model):
        return int(getattr(model, "num_prefix_tokens", 1))
    cfg = getattr(model, "config", None)
    return 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)


def image_tokens(model: nn.Module, height: int, width: int, default_patch: int | None = None) -> int:
    """Tokens one (height x width) image becomes: the patch grid plus the prefix tokens."""
    ph, pw = patch_size(model, default_patch)
    return (int(height) // ph) * (int(width) // pw) + prefix_tokens(model)


def own_image_settings(model: nn.Module) -> tuple[int, tuple, tuple]:
    """(input size, mean, std) from the model itself: timm's pretrained config, or the
    Hugging Face ``config.image_size`` with the ImageNet normalisation."""
    if is_timm(model):
        pc = getattr(model, "pretrained_cfg", {}) or {}
        return (int(pc.get("input_size", (3, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE))[-1]),
                tuple(map(float, pc.get("mean", IMAGENET_MEAN))), tuple(map(float, pc.get("std", IMAGENET_STD))))
    size = getattr(getattr(model, "config", None), "image_size", DEFAULT_IMAGE_SIZE)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size), IMAGENET_MEAN, IMAGENET_STD
