"""Model adapters behind one registry (``registry`` imports the families so that they register)."""

from oats.models.adapters.base import (ADAPTERS, Adapter, LinearRef, bias_of, is_linear, no_cache_kwargs,
                                       register_adapter, set_submodule, weight_of)
from oats.models.adapters.registry import get_adapter, supported_families

__all__ = ["ADAPTERS", "Adapter", "LinearRef", "bias_of", "get_adapter", "is_linear", "no_cache_kwargs",
           "register_adapter", "set_submodule", "supported_families", "weight_of"]
