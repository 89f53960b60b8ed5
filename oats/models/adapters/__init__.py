"""Model adapters behind one registry. Import ``families`` so its classes register."""

from oats.models.adapters import families as _families  # noqa: F401  (registers the adapters)
from oats.models.adapters.base import (ADAPTERS, Adapter, LinearRef, bias_of, get_adapter, is_linear,
                   register_adapter, set_submodule, supported_families, weight_of)

__all__ = ["ADAPTERS", "Adapter", "LinearRef", "bias_of", "get_adapter", "is_linear",
           "register_adapter", "set_submodule", "supported_families", "weight_of"]
