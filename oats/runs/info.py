"""What a run folder's manifest says, typed: ``RunInfo``, read once and checked once.

The manifest (``manifest.json``) is JSON with a ``format`` number. ``RunInfo.from_manifest``
reads every format this code knows (``READABLE``), fills the keys older writers did not
write with their defaults, and refuses a damaged manifest or one from a newer format with
one line (``RunError``). ``RunInfo.to_manifest`` gives back the JSON object that is written.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from oats.config import OatsConfig
from oats.errors import ConfigError, RunError
from oats.compress.records import BlockRecord, CompressionRun, LayerRecord
from oats.methods.registry import BUDGET_NOTES, used_rank_ratio

FORMAT = 1
"""The manifest format this code writes."""
READABLE = (1,)
"""The manifest formats this code reads."""
MANIFEST = "manifest.json"

_REQUIRED = ("model_name", "config", "layers", "blocks", "method")
_KNOWN = frozenset(("format", "complete", "model_name", "family", "method", "config", "effective_compression",
                    "budget_note", "block_rates", "allocation", "created", "versions", "calibration", "timings",
                    "params", "blocks_done", "blocks", "layers", "modules", "calibration_request",
                    "model_source", "task", "sweep"))


def _versions() -> dict:
    from importlib.metadata import version
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("transformers", "timm", "oats-explorer"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            pass
    return out


@dataclass(frozen=True)
class ModuleInfo:
    """One replaced linear module: the dense weight's (d_out, d_in) and the low-rank term's rank."""

    shape: tuple[int, int]
    rank: int


@dataclass(frozen=True)
class RunInfo:
    """Everything a run folder's manifest holds (no tensors).

    ``calibration`` is what compression measured (batches, tokens); ``calibration_request``
    what was asked for (samples, seq_len, seed, source), None when the writer did not say.
    ``extra`` keeps keys this code does not know, so writing a RunInfo back loses nothing.
    """

    model_name: str
    method: str
    config: OatsConfig
    layers: tuple[LayerRecord, ...] = ()
    blocks: tuple[BlockRecord, ...] = ()
    complete: bool = False
    format: int = FORMAT
    family: str = ""
    budget_note: str = ""
    block_rates: tuple[float, ...] | None = None
    allocation: dict | None = None
    created: str = ""
    versions: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    params_dense: int = 0
    params_kept: int = 0
    blocks_done: tuple[int, ...] = ()
    modules: dict[str, ModuleInfo] = field(default_factory=dict)
    calibration_request: dict | None = None
    model_source: str | None = None
    task: str | None = None
    sweep: str | None = None
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ questions

    @property
    def rank_ratio(self) -> float:
        """The kappa the method really used (0 for the sparse-only methods, 1 for low-rank only)."""
        return used_rank_ratio(self.method, self.config)

    @property
    def effective_compression(self) -> float:
        """The compression rate applied (differs from ``config.compression`` in N:M mode)."""
        return self.config.effective_compression

    @property
    def status(self) -> str:
        return "complete" if self.complete else "unfinished"

    @property
    def compression_achieved(self) -> float:
        """1 - kept / dense block-linear parameters (NaN before any block is done)."""
        return 1 - self.params_kept / self.params_dense if self.params_dense else float("nan")

    # ------------------------------------------------------------------ reading and writing

    @classmethod
    def from_manifest(cls, m: dict, folder: str | Path | None = None) -> RunInfo:
        """The RunInfo of a manifest's JSON object; RunError (one line) when it cannot be read."""
        where = f"run folder '{folder}'" if folder is not None else "the run manifest"
        if isinstance(m, dict):
            fmt = m.get("format")
            if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
                raise RunError(f"{where} was written by a newer oats (manifest format {fmt}; this one reads "
                               f"{', '.join(map(str, READABLE))}): update oats to open it")
        try:
            if not isinstance(m, dict) or m.get("format") not in READABLE or isinstance(m.get("format"), bool):
                raise ValueError("unknown format")
            for key in _REQUIRED:
                if key not in m:
                    raise ValueError(f"missing {key}")
            config = OatsConfig(**m["config"])
            params = m.get("params") or {}
            rates = m.get("block_rates")
            return cls(
                model_name=str(m["model_name"]), method=str(m["method"]), config=config,
                layers=tuple(LayerRecord.from_dict(d) for d in m["layers"]),
                blocks=tuple(BlockRecord(**d) for d in m["blocks"]),
                complete=bool(m.get("complete", False)), format=m["format"], family=m.get("family") or "",
                budget_note=m.get("budget_note") or "",
                block_rates=tuple(float(r) for r in rates) if rates is not None else None,
                allocation=m.get("allocation"), created=m.get("created") or "",
                versions=dict(m.get("versions") or {}), calibration=dict(m.get("calibration") or {}),
                timings=dict(m.get("timings") or {}),
                params_dense=int(params.get("dense", 0)), params_kept=int(params.get("kept", 0)),
                blocks_done=tuple(int(b) for b in m.get("blocks_done", ())),
                modules={p: ModuleInfo(shape=tuple(d["shape"]), rank=int(d["rank"]))
                         for p, d in (m.get("modules") or {}).items()},
                calibration_request=m.get("calibration_request"), model_source=m.get("model_source"),
                task=m.get("task"), sweep=m.get("sweep"),
                extra={k: v for k, v in m.items() if k not in _KNOWN})
        except (ValueError, TypeError, KeyError, AttributeError, ConfigError) as e:
            raise RunError(f"{where} has a damaged manifest ({e}): delete it and compress again") from None

    @classmethod
    def read(cls, folder: str | Path) -> RunInfo:
        """The RunInfo of a run folder; RunError (one line) when missing, damaged or too new."""
        return cls.from_manifest(read_json(folder), folder)

    @classmethod
    def of_run(cls, run: CompressionRun, complete: bool, extra: dict | None = None) -> RunInfo:
        """What the manifest of ``run`` says now; ``extra``: more top-level keys (task, model_source, ...)."""
        mods = run.modules()
        known = {k: v for k, v in (extra or {}).items() if k in ("calibration_request", "model_source", "task",
                                                                  "sweep")}
        return cls(
            model_name=run.model_name, method=run.method, config=run.config, layers=tuple(run.layers),
            blocks=tuple(run.blocks), complete=complete, family=run.family,
            budget_note=BUDGET_NOTES.get(run.method, ""),
            block_rates=tuple(run.block_rates) if run.block_rates is not None else None,
            allocation=run.allocation, created=time.strftime("%Y-%m-%dT%H:%M:%S"), versions=_versions(),
            calibration=run.calibration, timings=run.timings, params_dense=run.params_dense,
            params_kept=run.params_kept, blocks_done=tuple(b.index for b in run.blocks),
            modules={p: ModuleInfo(shape=tuple(mods[p].weight.shape), rank=mods[p].rank)
                     for p in dict.fromkeys(r.path for r in run.layers)},
            extra={k: v for k, v in (extra or {}).items() if k not in known}, **known)

    def to_manifest(self) -> dict:
        """The manifest's JSON object (what ``RunWriter`` writes)."""
        out = {
            "format": self.format,
            "complete": self.complete,
            "model_name": self.model_name,
            "family": self.family,
            "method": self.method,
            "config": self.config.to_dict(),
            "effective_compression": self.effective_compression,
            "budget_note": self.budget_note,
            "block_rates": list(self.block_rates) if self.block_rates is not None else None,
            "allocation": self.allocation,
            "created": self.created,
            "versions": self.versions,
            "calibration": self.calibration,
            "timings": self.timings,
            "params": {"dense": self.params_dense, "kept": self.params_kept},
            "blocks_done": list(self.blocks_done),
            "blocks": [asdict(b) for b in self.blocks],
            "layers": [r.to_dict() for r in self.layers],
            "modules": {p: {"shape": list(i.shape), "rank": i.rank} for p, i in self.modules.items()},
        }
        for key in ("calibration_request", "model_source", "task", "sweep"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(self.extra)
        return out


def read_json(folder: str | Path) -> dict:
    """The JSON object in a run folder's manifest, unchecked; RunError (one line) when the folder
    or its manifest is missing or the file is not JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"run folder '{folder}' does not exist: give the folder written by 'oats compress --out'")
    p = folder / MANIFEST
    if not p.is_file():
        raise RunError(f"'{folder}' is not a run folder (no {MANIFEST}): give the folder written by 'oats compress --out'")
    try:
        return json.loads(p.read_text())
    except (ValueError, OSError) as e:
        raise RunError(f"run folder '{folder}' has a damaged manifest ({e}): delete it and compress again") from None
