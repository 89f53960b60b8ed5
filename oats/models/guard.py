"""What a model's config.json says it will take in memory, checked before anything is allocated.

A config is text anyone can edit: one declaring a hidden size of 10^7, or 10^6 blocks, makes
``from_pretrained`` (or even building the architecture's buffers) allocate until the machine
runs out. ``config_parameters`` reads the sizes a transformer's config declares and gives a
lower bound on its parameter count (embeddings, attention and MLP weights of every block;
norms, biases and heads not counted); ``check_config_memory`` refuses, in one line, a config
whose fp32 weights would not fit in the memory this process may use (``oats.resources``).
"""

from __future__ import annotations

from typing import Any

from oats.errors import ModelLoadError
from oats.resources import check_memory

__all__ = ["LAYER_KEYS", "MAX_DIMENSION", "check_config_memory", "config_parameters"]

MAX_DIMENSION = 2**31 - 1
"""No size a config declares may exceed torch's 32-bit index range."""

_HIDDEN = ("hidden_size", "n_embd", "d_model", "embed_dim", "dim")
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "depth", "n_layers")
"""The config keys read as the number of blocks (the first one set counts)."""
_INNER = ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "mlp_dim")
_POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len")


def _field(config: Any, names: tuple[str, ...], what: str) -> int | None:
    """The first of ``names`` the config sets, as a checked non-negative int (None if none set)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    for n in names:
        v = get(n, None)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 or v > MAX_DIMENSION \
                or int(v) != v:
            raise ModelLoadError(f"config.json declares {n} = {str(v)[:40]!r}, not a plausible {what}: "
                                 "fix config.json or use the model's original files")
        return int(v)
    return None


def config_parameters(config: Any) -> int:
    """A lower bound on the parameters (and position buffers) a transformers config declares.

    ``config``: a transformers ``PretrainedConfig`` or its dict. Vision configs count no
    vocabulary; a config without a hidden size or a block count gives 0 (nothing to check).
    """
    sub = getattr(config, "text_config", None) if not isinstance(config, dict) else config.get("text_config")
    if sub is not None and _field(config, _HIDDEN, "width") is None:
        config = sub
    hidden = _field(config, _HIDDEN, "width") or 0
    layers = _field(config, LAYER_KEYS, "number of blocks") or 0
    inner = _field(config, _INNER, "MLP width")
    if inner is None:
        ratio = config.get("mlp_ratio") if isinstance(config, dict) else getattr(config, "mlp_ratio", None)
        inner = int(ratio * hidden) if isinstance(ratio, (int, float)) and 0 < ratio < 1e4 else 4 * hidden
    vocab = _field(config, ("vocab_size",), "vocabulary size") or 0
    positions = _field(config, _POSITIONS, "sequence length") or 0
    # Attention: q and o are hidden x hidden (k and v may be narrower: not counted); MLP: two
    # matrices of hidden x inner (gated MLPs have three); embeddings; a position-id buffer.
    return layers * (2 * hidden * hidden + 2 * hidden * inner) + vocab * hidden + positions


def check_config_memory(config: Any, what: str, bytes_per_value: int = 4) -> int:
    """Refuse (ResourceError, one line) a config whose weights would not fit in memory as
    ``bytes_per_value``-byte values (fp32 by default); return the parameter estimate."""
    n = config_parameters(config)
    check_memory({"weights": bytes_per_value * n}, what=what)
    return n
