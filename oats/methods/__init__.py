"""Compression methods, one file each, behind one registry (``oats.methods.registry``).

Importing this package registers the built-in methods, in this order: oats, wanda,
sparsegpt, magnitude, lowrank, hassle. A new method is one new file with one decorated function
(``@register(Method(...))``), imported here or by its user.
"""

from oats.methods.registry import (BUDGET_NOTES, METHODS, Method, all_methods, find, get, names, register,
                                   run_modes, run_variants, terms, unregister, used_rank_ratio,
                                   variants)
from oats.methods import oats as _oats
from oats.methods import wanda as _wanda
from oats.methods import sparsegpt as _sparsegpt
from oats.methods import magnitude as _magnitude
from oats.methods import lowrank as _lowrank
from oats.methods import hassle as _hassle

BUILTINS = (_oats, _wanda, _sparsegpt, _magnitude, _lowrank, _hassle)
"""The modules of the built-in methods (importing each registers its method)."""

__all__ = ["BUDGET_NOTES", "BUILTINS", "METHODS", "Method", "all_methods", "find", "get", "names", "register",
           "run_modes", "run_variants", "terms", "unregister", "used_rank_ratio", "variants"]
