"""The adapter contract, the helpers adapters share, and the list that families register in.

An adapter tells the pipeline, for one model family, (1) the transformer blocks in order and
(2) the linears of a block with canonical names. The pipeline never tests model types itself.
Running a block is generic: its positional and keyword inputs are captured on the way into
block 0 and replayed, so an adapter only says how to read the hidden states out of its output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from oats.core.linear import OatsLinear
from oats.errors import UnsupportedModelError


@dataclass(frozen=True)
class LinearRef:
    """One matrix to compress inside a block.

    name: canonical name (q, k, v, o, gate, up, down, gate_up, fc1, fc2).
    path: module path relative to the block, e.g. "self_attn.q_proj".
    kind: "attn" or "mlp".
    rows: for a part of a fused matrix, the [start, stop) rows of the (d_out, d_in) weight.
    """

    name: str
    path: str
    kind: str
    rows: tuple[int, int] | None = None


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
        return Conv1D
    except Exception:  # transformers absent: nothing is a Conv1D
        return ()


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or isinstance(module, _conv1d_type())


def weight_of(module: nn.Module) -> torch.Tensor:
    """The (d_out, d_in) weight of a linear. GPT-2's Conv1D stores (d_in, d_out): the one place that knows."""
    if isinstance(module, OatsLinear):
        return module.weight.data
    if isinstance(module, _conv1d_type()):
        return module.weight.data.t()
    if isinstance(module, nn.Linear):
        return module.weight.data
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def bias_of(module: nn.Module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.data


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = get_submodule(root, parent_path)
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


def no_cache_kwargs(model: nn.Module) -> dict:
    """``{"use_cache": False}`` for a model whose config has a key-value cache, else ``{}``:
    a forward pass over whole sequences never needs the cache it would build."""
    return {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None) is not None else {}


def first_attr(model: nn.Module, paths: list[str]) -> tuple[str, nn.Module] | None:
    """The first dotted attribute path that exists on ``model``."""
    for p in paths:
        try:
            return p, model.get_submodule(p)
        except AttributeError:
            continue
    return None


class Adapter:
    """Base class. Subclasses set ``family``, ``description`` and implement the three methods."""

    family: str = ""
    description: str = ""
    #: candidate paths of the block list, tried in order (with and without a task head)
    block_paths: list[str] = []

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks_path(self, model: nn.Module) -> str:
        found = first_attr(model, self.block_paths)
        if found is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} looks like {self.family} but has none of {', '.join(self.block_paths)}")
        return found[0]

    def blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The transformer blocks in order, as (module path, block)."""
        path = self.blocks_path(model)
        seq = model.get_submodule(path)
        return [(f"{path}.{i}", b) for i, b in enumerate(seq)]

    def linears(self, model: nn.Module, block: nn.Module) -> list[LinearRef]:
        """The linears of one block with canonical names, in execution order."""
        raise NotImplementedError

    def run_model(self, model: nn.Module, batch: dict):
        """Call the whole model on one calibration batch (a dict of model inputs)."""
        return model(**{**no_cache_kwargs(model), **batch})

    def block_output(self, out) -> torch.Tensor:
        """The hidden states a block returns (some return tuples)."""
        return out[0] if isinstance(out, (tuple, list)) else out

    def info(self, model: nn.Module) -> str:
        return self.description


ADAPTERS: list[type[Adapter]] = []


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: a new family is one new file with one decorated class."""
    ADAPTERS.append(cls)
    return cls


def model_type(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "model_type", "") or "")
