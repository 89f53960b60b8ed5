"""A fallback for unknown architectures: the longest list of identical blocks holding linears.

It is honest about what it found (``info``) and names each linear by its path in the block,
so no canonical names are invented. Used only when the caller allows it.
"""

from __future__ import annotations

from torch import nn

from oats.models.adapters.base import Adapter, LinearRef, is_linear


def _candidate(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    found = []
    for path, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) < 2:
            continue
        kinds = {type(c) for c in m}
        if len(kinds) != 1 or not any(is_linear(x) for x in m[0].modules()):
            continue
        found.append((path, m))
    # Only the outermost lists are block lists: a list inside a block (MoE experts, per-head
    # projections) is part of that block, even when it is longer than the list of blocks.
    outer = [(p, m) for p, m in found
             if not any(q != p and p.startswith(q + "." if q else "") for q, _ in found)]
    best = None
    for path, m in outer:
        if best is None or len(m) > len(best[1]):
            best = (path, m)
    return best


class GenericAdapter(Adapter):
    family = "generic"
    description = "generic: the longest list of identical blocks; every linear inside is compressed"

    @classmethod
    def matches(cls, model):
        return _candidate(model) is not None

    def blocks_path(self, model):
        return _candidate(model)[0]

    def linears(self, model, block):
        refs = []
        for path, m in block.named_modules():
            if path and is_linear(m):
                low = path.lower()
                kind = "attn" if ("attn" in low or "attention" in low) else "mlp"
                refs.append(LinearRef(path, path, kind))
        return refs

    def info(self, model):
        path, seq = _candidate(model)
        n = len(self.linears(model, seq[0]))
        return (f"generic adapter: {len(seq)} blocks of {type(seq[0]).__name__} at '{path}', "
                f"{n} linears each, named by their paths")
