"""What a run folder's manifest says, typed: ``RunInfo``, read once and checked once.

The manifest (``manifest.json``) is JSON with a ``format`` number. ``RunInfo.from_manifest``
reads every format this code knows (``READABLE``), fills the keys older writers did not
write with their defaults, and refuses a damaged manifest or one from a newer format with
one line (``RunError``). ``RunInfo.to_manifest`` gives back the JSON object that is written.
"""

from __future__ import annotations

import enum
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from oats import corpora, untrusted
from oats.config import OatsConfig
from oats.errors import ConfigError, RunError
from oats.compress.records import BlockRecord, CompressionRun, LayerRecord
from oats.methods.registry import BUDGET_NOTES, used_rank_ratio
from oats.models.guard import MAX_DIMENSION
from oats.models.presets import PRESETS

FORMAT = 1
"""The manifest format this code writes."""
READABLE = (1,)
"""The manifest formats this code reads."""
MANIFEST = "manifest.json"



class State(str, enum.Enum):
    """What a run folder holds: the one vocabulary of run folders (``oats runs``, the app's runs
    list, and ``oats.runs.state.inspect``, which judges a folder for a request and adds
    ``other run``). Defined here, below ``oats.runs.folders``, so that both speak it."""

    EMPTY = "empty"
    UNFINISHED = "unfinished"
    COMPLETE = "complete"
    DAMAGED = "damaged"
    OTHER_RUN = "other run"


MAX_BLOCKS = 100_000
"""No model this project targets has more transformer blocks; a larger block index is damage."""

_REQUIRED = ("model_name", "config", "layers", "blocks", "method")
_KNOWN = frozenset(("format", "complete", "model_name", "family", "method", "config", "effective_compression",
                    "budget_note", "block_rates", "allocation", "created", "versions", "calibration", "timings",
                    "params", "blocks_done", "blocks", "layers", "modules", "calibration_request",
                    "model_source", "task", "sweep"))


LEGACY_DOMAINS = {"text": "manual", "images": "photos"}
"""The built-in data a run recorded before calibration domains existed was calibrated on: the
Python manual (text models) or the bundled photos (vision models). Such a run is never taken
for a run of the default mix."""


def data_kind(model: str, task: str | None = None) -> str | None:
    """"text" or "images": the built-in data a model (or a loaded model's ``task``) takes;
    None when the name alone does not say (a hub id or a local folder before it loads)."""
    if task is not None:
        return "images" if task == "vision" else "text"
    preset = PRESETS.get(model)
    if preset is not None:
        return "images" if preset.task == "vision" else "text"
    if str(model).strip().startswith("timm:"):
        return "images"
    return None


def legacy_domain(model: str, task: str | None = None) -> str:
    """The calibration domain of a run whose manifest does not record one (``LEGACY_DOMAINS``)."""
    return LEGACY_DOMAINS[data_kind(model, task) or "text"]


def recorded_domain(manifest: dict) -> str | None:
    """The built-in data a manifest says its run was calibrated on: "mix" (the default) or one
    domain of ``oats.corpora``; None for the user's own data (a calibration ``source``). A
    manifest written before calibration domains existed (no "domain" in its calibration
    request) says the legacy domain (``legacy_domain``), never the mix."""
    cal = manifest.get("calibration_request") or {}
    if not isinstance(cal, dict):
        return None
    if cal.get("source"):
        return None
    task = manifest.get("task")
    domain = cal["domain"] if "domain" in cal else legacy_domain(manifest.get("model_name"),
                                                                   task if isinstance(task, str) else None)
    return corpora.MIX if domain is None else domain


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
        """``State`` complete or unfinished, as its plain word."""
        return (State.COMPLETE if self.complete else State.UNFINISHED).value

    @property
    def calibration_domain(self) -> str | None:
        """The built-in data the run was calibrated on: "mix" or one domain of ``oats.corpora``;
        None for the user's own data. A manifest from before calibration domains were recorded
        says the legacy domain (``legacy_domain``: the Python manual)."""
        try:
            return recorded_domain(self.to_manifest())
        except (ConfigError, ValueError, TypeError, KeyError, AttributeError):
            return None

    def calibrated_on(self) -> str:
        """What the run was calibrated on, in words: "mix of manual, code, verse, speeches,
        4,096 tokens", "verse, 4,096 tokens", "your data 'notes.txt', 2,048 tokens",
        "mix of photos, drawings, textures, 64 images (16,448 tokens)"."""
        cal = self.calibration
        source = (self.calibration_request or {}).get("source") or cal.get("source")
        domain = self.calibration_domain
        if source:
            what = f"your data '{Path(str(source)).name}'"
        elif domain == corpora.MIX:
            kind = "images" if self.task == "vision" or cal.get("kind") == "images" else "text"
            names = cal.get("domains") or corpora.domains(kind)
            what = "mix of " + ", ".join(map(str, names))
        else:
            what = str(domain)
            if "domain" not in (self.calibration_request or {}):
                what += " (recorded before calibration domains)"
        tokens, samples = cal.get("tokens"), cal.get("samples")
        size = f"{int(tokens):,} tokens" if _is_num(tokens) else "? tokens"
        if _is_num(samples) and (self.task == "vision" or cal.get("kind") == "images"):
            size = f"{int(samples):,} images ({size})"
        return f"{what}, {size}"

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
            config = m["config"]
            if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
                raise ValueError("config is not an object")
            config = OatsConfig.from_dict(config)
            params = _obj(m.get("params"), "params")
            rates = m.get("block_rates")
            if rates is not None and (not isinstance(rates, list) or not all(_is_num(r) for r in rates)):
                raise ValueError("block_rates is not a list of numbers")
            return _consistent("blocks_done" in m, cls(
                model_name=_text(m["model_name"], "model_name", empty=False),
                method=_text(m["method"], "method", empty=False), config=config,
                layers=tuple(_layer(d, i) for i, d in enumerate(_list(m["layers"], "layers"))),
                blocks=tuple(_block(d, i) for i, d in enumerate(_list(m["blocks"], "blocks"))),
                complete=_flag(m.get("complete", False), "complete"), format=m["format"],
                family=_text(m.get("family"), "family"), budget_note=_text(m.get("budget_note"), "budget_note"),
                block_rates=tuple(float(r) for r in rates) if rates is not None else None,
                allocation=_obj(m.get("allocation"), "allocation", none=True),
                created=_text(m.get("created"), "created"),
                versions=_obj(m.get("versions"), "versions"), calibration=_obj(m.get("calibration"), "calibration"),
                timings=_obj(m.get("timings"), "timings"),
                params_dense=_count(params.get("dense", 0), "params.dense"),
                params_kept=_count(params.get("kept", 0), "params.kept"),
                blocks_done=tuple(_count(b, "blocks_done", MAX_BLOCKS) for b in _list(m.get("blocks_done", []),
                                                                                      "blocks_done")),
                modules={_text(p, "modules", empty=False): _module(p, d)
                         for p, d in _obj(m.get("modules"), "modules").items()},
                calibration_request=_obj(m.get("calibration_request"), "calibration_request", none=True),
                model_source=_text(m.get("model_source"), "model_source", none=True),
                task=_text(m.get("task"), "task", none=True), sweep=_text(m.get("sweep"), "sweep", none=True),
                extra={k: v for k, v in m.items() if k not in _KNOWN}))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError, MemoryError,
                ConfigError) as e:
            raise RunError(f"{where} has a damaged manifest ({_short(e)}): delete it and compress again") from None

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
    """The JSON object in a run folder's manifest, not yet checked as a manifest; RunError (one
    line) when the folder or its manifest is missing, or the file is not strict JSON of a sane
    size (``oats.untrusted.read_json``: no FIFO or device, no NaN, no 100k nested brackets)."""
    folder = Path(folder)
    p = folder / MANIFEST
    hint = "give the folder written by 'oats compress --out'"
    try:
        if not folder.is_dir():
            raise RunError(f"run folder '{folder}' does not exist: {hint}")
        if not os.path.lexists(p):
            raise RunError(f"'{folder}' is not a run folder (no {MANIFEST}): {hint}")
        untrusted.regular_file(p)
        untrusted.inside(folder, p)
        return untrusted.read_json(p)
    except untrusted.BadFile as e:
        raise RunError(f"run folder '{folder}' has a damaged manifest ({_short(e)}): delete it and compress "
                       "again") from None
    except FileNotFoundError:  # a link to nowhere
        raise RunError(f"run folder '{folder}' has a damaged manifest ({MANIFEST} is a broken link): delete it "
                       "and compress again") from None
    except OSError as e:
        raise RunError(f"run folder '{folder}' cannot be read ({e.strerror or type(e).__name__}): {hint}, "
                       "readable by you") from None
    except MemoryError:  # 64 MB of JSON can still be more objects than this process may hold
        raise RunError(f"run folder '{folder}' has a manifest too large to read in the memory left: delete it and "
                       "compress again") from None


_NOT_JSON = re.compile(r"it is not valid JSON \((.*)\)")


def _short(e: BaseException) -> str:
    """An exception as a few words inside the one-line message (the parser's own words for bad JSON)."""
    text = " ".join(str(e).split())[:160] or type(e).__name__
    if "integer string conversion" in text:  # Python's advice to programmers is no help here
        return "it holds a whole number of more than 4300 digits"
    found = _NOT_JSON.fullmatch(text)
    return found.group(1) if found else text


# ----------------------------------------------------------------------------- manifest fields
# Each check names the field, so the one line says where the damage is; the values then have
# the types the dataclasses promise (no int() of a float infinity, no str of a nested list).


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _text(x, what: str, none: bool = False, empty: bool = True):
    if x is None and none:
        return None
    if x is None and empty:
        return ""
    if not isinstance(x, str) or (not empty and not x) or len(x) > 100_000:
        raise ValueError(f"{what} is not a text")
    return x


def _consistent(has_done: bool, info: RunInfo) -> RunInfo:
    """The manifest's lists agree with each other (ValueError otherwise). Loading is driven by
    them: a layer record removed, or a block left out of ``blocks_done``, would otherwise leave
    those layers dense and load the run as if nothing were wrong. A manifest without
    ``blocks_done`` (an optional key) has done the blocks it holds records of; one without
    ``modules`` cannot be loaded (``read_block`` says so), only listed."""
    recorded = {b.index for b in info.blocks}
    if not has_done:
        info = replace(info, blocks_done=tuple(sorted(recorded)))
    done = set(info.blocks_done)
    if info.blocks and recorded != done:
        raise ValueError(f"blocks_done {sorted(done)[:8]} does not match the block records {sorted(recorded)[:8]}")
    for r in info.layers:
        if r.block not in done:
            raise ValueError(f"layer '{r.path}' is in block {r.block}, which blocks_done does not list")
    paths = {r.path for r in info.layers}
    if info.modules and paths != set(info.modules):
        odd = sorted(paths ^ set(info.modules))[0]
        raise ValueError(f"the layer records and the modules disagree on '{odd}'")
    if info.complete and not info.layers:
        raise ValueError("a complete run with no compressed layer")
    return info


def _flag(x, what: str) -> bool:
    if not isinstance(x, bool):
        raise ValueError(f"{what} is not true or false")
    return x


def _shown(x) -> str:
    text = str(x)
    return repr(text if len(text) <= 30 else text[:27] + "...")


def _count(x, what: str, bound: int = 2**62) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= bound:
        raise ValueError(f"{what} holds {_shown(x)}, not a whole number in [0, {bound}]")
    return x


def _num(x, what: str, none: bool = False):
    """A finite number; None (what a writer puts for a non-finite one) reads as NaN unless ``none``."""
    if x is None:
        return None if none else float("nan")
    if not _is_num(x):
        raise ValueError(f"{what} holds {_shown(x)}, not a number")
    return float(x)


def _list(x, what: str) -> list:
    if not isinstance(x, list):
        raise ValueError(f"{what} is not a list")
    return x


def _obj(x, what: str, none: bool = False):
    if x is None:
        return None if none else {}
    if not isinstance(x, dict):
        raise ValueError(f"{what} is not an object")
    return dict(x)


def _shape(x, what: str) -> tuple[int, int]:
    if not isinstance(x, list) or len(x) != 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIMENSION for d in x):
        raise ValueError(f"{what} is not two whole numbers in [1, {MAX_DIMENSION}]")
    return int(x[0]), int(x[1])


def _layer(d, i: int) -> LayerRecord:
    what = f"layers[{i}]"
    d = _obj(d, what)
    optional = ("history", "output_error", "rows")
    missing = [k for k in LayerRecord.__dataclass_fields__ if k not in d and k not in optional]
    if missing:
        raise ValueError(f"{what} has no {missing[0]}")
    shape = _shape(d["shape"], f"{what}.shape")
    rows = d.get("rows")
    if rows is not None:
        rows = _list(rows, f"{what}.rows")
        if len(rows) != 2 or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows) \
                or not 0 <= rows[0] < rows[1] <= shape[0] * MAX_BLOCKS:
            raise ValueError(f"{what}.rows is not a row range")
        rows = (rows[0], rows[1])
    rank = _count(d["rank"], f"{what}.rank", min(shape))
    return LayerRecord(
        block=_count(d["block"], f"{what}.block", MAX_BLOCKS), name=_text(d["name"], f"{what}.name", empty=False),
        path=_text(d["path"], f"{what}.path", empty=False), kind=_text(d["kind"], f"{what}.kind"), rows=rows,
        shape=shape, rank=rank, nnz=_count(d["nnz"], f"{what}.nnz"), params=_count(d["params"], f"{what}.params"),
        budget=_count(d["budget"], f"{what}.budget"), scaled_error=_num(d["scaled_error"], f"{what}.scaled_error"),
        output_error=_num(d.get("output_error"), f"{what}.output_error", none=True),
        iterations=_count(d["iterations"], f"{what}.iterations"), time_s=_num(d["time_s"], f"{what}.time_s"),
        history=_obj(d.get("history"), f"{what}.history"))


def _block(d, i: int) -> BlockRecord:
    what = f"blocks[{i}]"
    d = _obj(d, what)
    unknown = set(d) - set(BlockRecord.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{what} has an unknown entry {sorted(unknown)[0]!r}")
    missing = [k for k in BlockRecord.__dataclass_fields__ if k not in d]
    if missing:
        raise ValueError(f"{what} has no {missing[0]}")
    return BlockRecord(index=_count(d["index"], f"{what}.index", MAX_BLOCKS), path=_text(d["path"], f"{what}.path"),
                       output_error=_num(d["output_error"], f"{what}.output_error"),
                       stats_time_s=_num(d["stats_time_s"], f"{what}.stats_time_s"),
                       decompose_time_s=_num(d["decompose_time_s"], f"{what}.decompose_time_s"))


def _module(path, d) -> ModuleInfo:
    what = f"modules[{str(path)[:80]!r}]"
    d = _obj(d, what)
    if "shape" not in d or "rank" not in d:
        raise ValueError(f"{what} needs a shape and a rank")
    shape = _shape(d["shape"], f"{what}.shape")
    return ModuleInfo(shape=shape, rank=_count(d["rank"], f"{what}.rank", min(shape)))


def finite_json(x):
    """``x`` with every non-finite float replaced by None: what a manifest writer must write,
    since a strict reader refuses NaN and Infinity (they are not JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_json(v) for v in x]
    return x
