"""What a compression produces: per-matrix and per-block records, and the run that holds them.

A :class:`CompressionRun` is the compressed model (its linears replaced by ``OatsLinear``)
plus everything measured while compressing it; ``oats.runs.folders`` writes it to a run
folder and reads it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from oats.config import OatsConfig
from oats.core.linear import OatsLinear, oats_layers, set_mode, use_mode


@dataclass
class LayerRecord:
    """What happened to one compressed matrix (a part of a fused matrix counts as one)."""

    block: int
    name: str            # canonical name: q, k, v, o, gate, up, down, fc1, fc2, ...
    path: str            # module path in the model
    kind: str            # attn | mlp
    rows: tuple[int, int] | None
    shape: tuple[int, int]
    rank: int
    nnz: int
    params: int          # nnz + rank * (d_out + d_in)
    budget: int          # (1 - effective compression) * d_out * d_in, floored
    scaled_error: float  # ||(W - S' - L') D||_F / ||W D||_F
    output_error: float | None  # ||X (W - W')^T||_F / ||X W^T||_F on the calibration inputs
    iterations: int
    time_s: float
    history: dict = field(default_factory=dict)

    @property
    def qualname(self) -> str:
        return f"{self.block}.{self.name}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["qualname"] = self.qualname
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LayerRecord:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        d["shape"] = tuple(d["shape"])
        d["rows"] = tuple(d["rows"]) if d.get("rows") else None
        return cls(**d)


@dataclass
class BlockRecord:
    index: int
    path: str
    output_error: float  # ||block_c(x) - block_d(x)|| / ||block_d(x)|| on the same inputs
    stats_time_s: float
    decompose_time_s: float


@dataclass
class CompressionRun:
    """A compressed model plus everything measured while compressing it.

    ``second_moments[qualname]`` holds each matrix's (d_in,) statistics; the model's replaced
    linears (``OatsLinear``) hold the sparse and low-rank terms.
    """

    model: nn.Module
    model_name: str
    family: str
    method: str
    config: OatsConfig
    layers: list[LayerRecord]
    blocks: list[BlockRecord]
    second_moments: dict[str, torch.Tensor]
    calibration: dict
    timings: dict
    loaded: object = None
    """The ``oats.models.zoo.LoadedModel`` (tokenizer, image settings) when known, else None."""
    block_rates: list[float] | None = None
    """Per-block compression rates (non-uniform allocation, e.g. OWL), or None for uniform."""
    allocation: dict | None = None
    """How ``block_rates`` were chosen (name, parameters, per-block outlier ratios), or None."""
    summaries: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """Per matrix (qualname), what the per-layer views draw first, computed while compressing
    (``oats.compress.summaries``); empty for runs made before. Read it through ``summary``."""

    def summary(self, qualname: str) -> dict[str, torch.Tensor] | None:
        """The stored summary of one matrix (``oats.compress.summaries.KEYS``), or None when the
        run has none (an old run): the views then compute. The one way views ask, so a run that
        reads its layers from disk can answer from there."""
        return self.summaries.get(qualname) or None

    def set_mode(self, mode: str, layers: list[str] | None = None) -> None:
        """Switch the model to dense / both / sparse / lowrank, model-wide or for some module paths."""
        set_mode(self.model, mode, layers)

    def use_mode(self, mode: str, layers: list[str] | None = None) -> use_mode:
        return use_mode(self.model, mode, layers)

    def modules(self) -> dict[str, OatsLinear]:
        return oats_layers(self.model)

    def layer(self, qualname: str) -> LayerRecord:
        for r in self.layers:
            if r.qualname == qualname:
                return r
        raise KeyError(qualname)

    def _layer_tensors(self, path: str) -> dict[str, torch.Tensor]:
        """Weight, sparse term, u and v of the replaced module at ``path`` (a lazily opened run,
        ``oats.runs.lazy.LazyRun``, reads them from disk instead)."""
        mod = self.modules()[path]
        return {"weight": mod.weight, "sparse": mod.sparse, "u": mod.u, "v": mod.v}

    def factors(self, qualname: str) -> dict[str, torch.Tensor]:
        """Unscaled weight, sparse term, u and v of one matrix (a fused part's own rows/rank)."""
        rec = self.layer(qualname)
        t = self._layer_tensors(rec.path)
        if rec.rows is None:
            return dict(t)
        # parts of a fused matrix own consecutive rank columns, in the order of the records
        start = 0
        for r in self.layers:
            if r is rec:
                break
            if r.path == rec.path:
                start += r.rank
        rows, cols = slice(*rec.rows), slice(start, start + rec.rank)
        return {"weight": t["weight"][rows], "sparse": t["sparse"][rows], "u": t["u"][rows, cols], "v": t["v"][cols]}

    def sparse_mask(self, qualname: str) -> torch.Tensor:
        """Where the sparse term of one matrix is non-zero, (d_out, d_in) bools (a lazily opened
        run reads only the mask's bits, not the weight or the values)."""
        return self.factors(qualname)["sparse"] != 0

    @property
    def params_dense(self) -> int:
        return sum(r.shape[0] * r.shape[1] for r in self.layers)

    @property
    def params_kept(self) -> int:
        return sum(r.params for r in self.layers)

    def table(self) -> list[dict]:
        """One row per matrix, for printing and CSV."""
        return [{"block": r.block, "name": r.name, "shape": f"{r.shape[0]}x{r.shape[1]}", "rank": r.rank,
                 "nnz": r.nnz, "kept": round(r.params / (r.shape[0] * r.shape[1]), 4),
                 "scaled_error": round(r.scaled_error, 5),
                 "output_error": None if r.output_error is None else round(r.output_error, 5),
                 "iterations": r.iterations, "time_s": round(r.time_s, 3)} for r in self.layers]
