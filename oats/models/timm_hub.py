"""timm models by name (``timm:NAME``), with their pretrained weights.

Weights already in the Hugging Face cache are used without any network; otherwise timm
downloads them, once a quick probe finds the hub reachable. The fused attention kernel is
switched off so that attention maps can be read.
"""

from __future__ import annotations

import difflib
from typing import Any

from oats.errors import ModelLoadError
from oats.models import hub
from oats.models.loaded import DEFAULT_RANK_RATIO, LoadedModel, finish, one_line
from oats.models.vision import own_image_settings


def check_timm_name(arch: str) -> None:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(f"'timm:{arch}' needs timm: run pip install timm") from None
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f"did you mean 'timm:{close[0]}'? " if close else ""
        raise ModelLoadError(f"timm has no model {arch!r}: {hint}see timm.list_models() for names")


def load_timm(name: str, arch: str) -> LoadedModel:
    check_timm_name(arch)
    import timm
    overlay: dict[str, Any] = {}
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001 - older/newer timm spell this differently
        cfg = None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        # Prefer a copy already in the Hugging Face cache, so that offline use works and no
        # network round trip is spent when the weights are there.
        from huggingface_hub import try_to_load_from_cache

        hub_id, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, filename, revision=revision or None)
            if isinstance(hit, str):
                overlay = {"file": hit}  # timm reads .bin files with weights_only=True
                break
    if not overlay and not hub.hub_reachable():
        raise ModelLoadError(hub.offline_message(name))
    try:
        if overlay:
            model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay)
        else:
            model = timm.create_model(arch, pretrained=True)
    except Exception as exc:  # noqa: BLE001
        text = one_line(exc)
        if "connect" in text.lower() or "timed out" in text.lower():
            raise ModelLoadError(hub.offline_message(name)) from exc
        raise ModelLoadError(f"could not load {name!r} with timm ({text}): check the model name") from exc
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is not None and hasattr(attn, "fused_attn"):
            attn.fused_attn = False  # the fused kernel never materialises the attention map
    model = finish(model)
    size, mean, std = own_image_settings(model)
    return LoadedModel(
        name=name,
        model=model,
        task="vision",
        tokenizer=None,
        image_size=size,
        image_mean=mean,
        image_std=std,
        source=f"timm {arch} (pretrained weights)",
        default_rank_ratio=DEFAULT_RANK_RATIO["vision"],
    )
