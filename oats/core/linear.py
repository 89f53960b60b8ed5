"""The module that replaces a compressed linear: sparse and low-rank terms kept apart.

The replaced layer can be switched between four modes, model-wide or per layer:
  "dense"   the original weight (kept so dense, sparse-only and low-rank-only can be compared)
  "both"    sparse + low-rank (the compressed model)
  "sparse"  sparse term only (every low-rank term zeroed: the paper's Section 5 "sparse-only")
  "lowrank" low-rank term only
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("dense", "both", "sparse", "lowrank")


class OatsLinear(nn.Module):
    """y = x @ W^T + b with W one of: original, S + U V, S, U V.

    Shapes: weight/sparse (d_out, d_in); u (d_out, r); v (r, d_in); bias (d_out,) or None.
    A fused matrix (e.g. Phi-3 qkv) whose parts were decomposed separately stores a
    block-diagonal u, so u @ v is the row-wise concatenation of the parts' low-rank terms.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sparse: torch.Tensor,
                 u: torch.Tensor, v: torch.Tensor, mode: str = "both"):
        super().__init__()
        d_out, d_in = weight.shape
        if sparse.shape != weight.shape or u.shape[0] != d_out or v.shape[1] != d_in or u.shape[1] != v.shape[0]:
            raise ValueError(
                f"factor shapes do not fit a ({d_out}, {d_in}) weight: sparse {tuple(sparse.shape)}, "
                f"u {tuple(u.shape)}, v {tuple(v.shape)}")
        self.in_features, self.out_features = d_in, d_out
        # Kept by reference, not copied: the module this one replaces is dropped, and a copy kept a
        # second dense matrix per layer (SmolLM2-135M: 408 MB more while compressing).
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.register_buffer("sparse", sparse.detach().to(weight.dtype).contiguous())
        self.register_buffer("u", u.detach().to(weight.dtype).contiguous())
        self.register_buffer("v", v.detach().to(weight.dtype).contiguous())
        self.mode = mode

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
        self._mode = value

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])

    def effective_weight(self, mode: str | None = None) -> torch.Tensor:
        """The (d_out, d_in) weight this layer applies in ``mode`` (default: its current mode)."""
        mode = mode or self._mode
        if mode == "dense":
            return self.weight
        if mode == "sparse":
            return self.sparse
        if mode == "lowrank":
            return self.u @ self.v
        return self.sparse + self.u @ self.v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_terms(x, self._mode, self.weight, self.sparse, self.u, self.v, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"nnz={int(torch.count_nonzero(self.sparse))}, mode={self._mode}")


def apply_terms(x: torch.Tensor, mode: str, weight, sparse, u, v, bias) -> torch.Tensor:
    """What an ``OatsLinear`` in ``mode`` computes, from the tensors given (those the mode does
    not use may be None): the one forward of replaced linears, in memory or streamed from disk."""
    if mode == "dense":
        y = nn.functional.linear(x, weight)
    elif mode == "sparse":
        y = nn.functional.linear(x, sparse)
    else:
        # Low rank through the thin factors: (x v^T) u^T costs r (d_in + d_out) per token.
        y = nn.functional.linear(nn.functional.linear(x, v), u)
        if mode == "both":
            y = y + nn.functional.linear(x, sparse)
    if bias is not None:
        y = y + bias
    return y


def oats_layers(model: nn.Module) -> dict[str, OatsLinear]:
    """Every OatsLinear in the model by its module path."""
    return {n: m for n, m in model.named_modules() if isinstance(m, OatsLinear)}


def set_mode(model: nn.Module, mode: str, layers: list[str] | None = None) -> None:
    """Switch every replaced linear (or only those whose module path is in ``layers``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for name, m in oats_layers(model).items():
        if layers is None or name in layers:
            m.mode = mode


class use_mode:
    """Context manager: ``with use_mode(model, "sparse"): ...`` then restores each layer's mode."""

    def __init__(self, model: nn.Module, mode: str, layers: list[str] | None = None):
        self.model, self.mode, self.layers = model, mode, layers
        self._saved: dict[str, str] = {}

    def __enter__(self):
        self._saved = {n: m.mode for n, m in oats_layers(self.model).items()}
        set_mode(self.model, self.mode, self.layers)
        return self.model

    def __exit__(self, *exc):
        for n, m in oats_layers(self.model).items():
            if n in self._saved:
                m.mode = self._saved[n]
        return False
