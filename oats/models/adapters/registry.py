"""Which adapter fits a model: the registered families first, the generic fallback on request.

Importing this module imports ``families``, whose decorated classes register themselves in
``base.ADAPTERS``; a new family is one new module with one ``@register_adapter`` class,
imported here.
"""

from __future__ import annotations

from torch import nn

from oats.errors import UnsupportedModelError
from oats.models.adapters.base import ADAPTERS, Adapter, model_type
from oats.models.adapters.families import TimmViTAdapter
from oats.models.adapters.generic import GenericAdapter


def supported_families() -> list[str]:
    """The registered families, by name (the generic fallback is not one)."""
    return [a.family for a in ADAPTERS if a.family != GenericAdapter.family]


def get_adapter(model: nn.Module, allow_generic: bool = False) -> Adapter:
    """The adapter for ``model``; UnsupportedModelError naming the families when none fits."""
    for cls in ADAPTERS:
        if cls.family != GenericAdapter.family and cls.matches(model):
            return cls()
    if allow_generic and GenericAdapter.matches(model):
        return GenericAdapter()
    name = model_type(model) or type(model).__name__
    types = [t for a in ADAPTERS if a.family not in (GenericAdapter.family, TimmViTAdapter.family)
             for t in (getattr(a, "types", None) or (a.family,))]
    raise UnsupportedModelError(
        f"unsupported architecture {name!r}: supported model types are {', '.join(types)} and timm "
        f"VisionTransformer"
        + ("" if allow_generic else " (or allow the generic adapter, --generic, which compresses the linears of repeated blocks)"))
