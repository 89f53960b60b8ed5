"""Run folders: factors in safetensors, a JSON manifest, atomic writes.

Layout of a run folder::

    manifest.json            config, model name, versions, per-layer and per-block records
    block_000.safetensors    per replaced module: sparse values + packed mask, u, v;
    block_001.safetensors    per matrix: its input second moments ("<block>.<name>.m2")

The manifest is rewritten (atomically) after every block with ``complete: false`` and only
marked complete at the end, so a killed run is recognisably partial and can be resumed.
Dense weights are not stored: loading a run rebuilds the base model and applies the factors.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from oats.compress.records import CompressionRun
from oats.core.linear import OatsLinear
from oats.errors import OatsError, RunError
from oats.models import zoo
from oats.models.adapters import bias_of, get_adapter, set_submodule, weight_of
from oats.runs.info import FORMAT, MANIFEST, RunInfo, read_json

__all__ = ["FORMAT", "MANIFEST", "RUNS_ENV", "RunInfo", "RunWriter", "apply_factors", "atomic_save_tensors",
           "atomic_write_bytes", "block_tensors", "check_run_model", "list_runs", "load_run", "manifest_dict",
           "read_manifest", "runs_root", "save_run", "run_dir", "check_resumable", "clear_run_folder"]

RUNS_ENV = "OATS_RUNS_DIR"
_RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def runs_root() -> Path:
    """Where run folders live by default: $OATS_RUNS_DIR, else ./runs."""
    return Path(os.environ.get(RUNS_ENV, "runs"))


def run_dir(root: str | Path, name: str) -> Path:
    """``root / name`` for a run folder name, refusing any name that would leave ``root``.

    A name is one plain folder name: letters, digits, '-', '_' and '.', not starting with '.'
    (so no '..', no separators, no hidden folders).
    """
    text = str(name)
    if not _RUN_NAME.match(text) or len(text) > 200:
        raise RunError(f"run name {text!r} is not a plain folder name: use letters, digits, '-', '_' and '.' "
                       "(not first), at most 200 characters")
    root = Path(root)
    folder = root / text
    if folder.resolve().parent != root.resolve():
        raise RunError(f"run name {text!r} leads outside the runs folder '{root}': choose another name")
    return folder


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _pack_sparse(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values in row-major order of the non-zeros, packed bit mask as uint8)."""
    mask = s != 0
    bits = np.packbits(mask.cpu().numpy().reshape(-1))
    return s[mask].contiguous(), torch.from_numpy(bits)


def _unpack_sparse(values: torch.Tensor, bits: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    n = shape[0] * shape[1]
    mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool)).reshape(shape)
    if int(mask.sum()) != values.numel():
        raise ValueError("mask and values disagree")
    out = torch.zeros(shape, dtype=values.dtype)
    out[mask] = values
    return out


def block_tensors(run: CompressionRun, block: int) -> dict[str, torch.Tensor]:
    mods = run.modules()
    out: dict[str, torch.Tensor] = {}
    for path in dict.fromkeys(r.path for r in run.layers if r.block == block):
        m = mods[path]
        vals, bits = _pack_sparse(m.sparse)
        out[f"{path}.sparse_values"] = vals
        out[f"{path}.sparse_mask"] = bits
        out[f"{path}.u"] = m.u
        out[f"{path}.v"] = m.v
    for r in run.layers:
        if r.block == block:
            out[f"{r.qualname}.m2"] = run.second_moments[r.qualname]
    return out


def manifest_dict(run: CompressionRun, complete: bool, extra: dict | None = None) -> dict:
    """The manifest's JSON object for ``run`` as it stands (``RunInfo.of_run(...).to_manifest()``)."""
    return RunInfo.of_run(run, complete, extra).to_manifest()


class RunWriter:
    """Writes a run folder block by block (pass ``writer.block_done`` as ``on_block_done``)."""

    def __init__(self, folder: str | Path, extra: dict | None = None):
        self.folder = Path(folder)
        self.extra = extra or {}
        # Half-written files of a writer that was killed (atomic writes never expose them as blocks).
        for stale in self.folder.glob(".*.tmp") if self.folder.is_dir() else ():
            stale.unlink(missing_ok=True)

    def block_done(self, run: CompressionRun, block: int) -> None:
        # The folder appears with the first finished block: a run that fails its checks leaves nothing.
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(block_tensors(run, block), self.folder / f"block_{block:03d}.safetensors")
        self._manifest(run, complete=False)

    def finish(self, run: CompressionRun) -> None:
        self._manifest(run, complete=True)

    def _manifest(self, run: CompressionRun, complete: bool) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = json.dumps(manifest_dict(run, complete, self.extra), indent=1).encode()
        atomic_write_bytes(self.folder / MANIFEST, data)


def save_run(run: CompressionRun, folder: str | Path, extra: dict | None = None) -> Path:
    """Write a finished run to ``folder`` (created if missing)."""
    w = RunWriter(folder, extra)
    w.folder.mkdir(parents=True, exist_ok=True)
    for b in sorted({r.block for r in run.layers}):
        atomic_save_tensors(block_tensors(run, b), w.folder / f"block_{b:03d}.safetensors")
    w.finish(run)
    return w.folder


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a run folder as its JSON object, checked as ``RunInfo.read`` checks it;
    RunError (one line) when missing, damaged or written by a newer format."""
    m = read_json(folder)
    RunInfo.from_manifest(m, folder)
    return m


def check_resumable(folder: str | Path) -> dict:
    """The manifest of an unfinished run folder to continue; RunError when there is nothing to resume."""
    m = read_manifest(folder)
    if m.get("complete"):
        raise RunError(f"run '{folder}' is already complete: nothing to resume")
    return m


def apply_factors(model: torch.nn.Module, folder: str | Path, info: RunInfo) -> None:
    """Replace the model's linears with OatsLinear modules holding the run's factors."""
    folder = Path(folder)
    get_adapter(model, allow_generic=info.family == "generic")  # fails clearly on a foreign model
    for b in info.blocks_done:
        f = folder / f"block_{b:03d}.safetensors"
        if not f.is_file():
            raise RunError(f"run folder '{folder}' is missing {f.name}: the run is damaged, compress again")
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, Exception) as e:
            raise RunError(f"run folder '{folder}': {f.name} is unreadable ({type(e).__name__}): compress again") from None
        for path, mod in info.modules.items():
            if f"{path}.u" not in tensors:
                continue
            try:
                old = model.get_submodule(path)
            except AttributeError:
                raise RunError(f"run folder '{folder}' was made for '{info.model_name}': this model has no "
                               f"layer '{path}'") from None
            w = weight_of(old)
            if list(w.shape) != list(mod.shape):
                raise RunError(f"run folder '{folder}' was made for '{info.model_name}': layer '{path}' "
                               f"is {tuple(mod.shape)} there but {tuple(w.shape)} in this model")
            try:
                sparse = _unpack_sparse(tensors[f"{path}.sparse_values"], tensors[f"{path}.sparse_mask"], tuple(w.shape))
            except (KeyError, ValueError):
                raise RunError(f"run folder '{folder}': the factors of '{path}' are damaged: compress again") from None
            new = OatsLinear(w, bias_of(old), sparse.to(w.dtype), tensors[f"{path}.u"].to(w.dtype),
                             tensors[f"{path}.v"].to(w.dtype))
            set_submodule(model, path, new.to(w.device))


def check_run_model(folder: str | Path, info: RunInfo, model_name: str) -> None:
    """RunError when a run folder was made for another model than ``model_name``."""
    if model_name and info.model_name != model_name:
        raise RunError(f"run folder '{folder}' was made for '{info.model_name}', not '{model_name}': "
                       "use the run's own model, or another run folder")


def load_run(folder: str | Path, model: torch.nn.Module | None = None, allow_partial: bool = False,
             model_name: str | None = None) -> CompressionRun:
    """Rebuild a compressed model from a run folder without recomputing.

    ``model``: the dense base model to apply the factors to (default: ``oats.models.zoo.load_model``
    of the manifest's model name). It is modified in place. ``model_name``: the name that
    model was loaded by; a run made for another name is refused before anything changes.
    """
    folder = Path(folder)
    info = RunInfo.read(folder)
    check_run_model(folder, info, model_name or "")
    if not info.complete and not allow_partial:
        raise RunError(f"run '{folder.name}' is unfinished ({len(info.blocks_done)} blocks done): "
                       f"resume it with 'oats compress --resume' or delete it")
    loaded = None
    if model is None:
        loaded = zoo.load_model(info.model_name)
        model = loaded.model
    apply_factors(model, folder, info)
    m2: dict[str, torch.Tensor] = {}
    for b in info.blocks_done:
        t = load_file(str(folder / f"block_{b:03d}.safetensors"))
        m2.update({k[:-3]: v for k, v in t.items() if k.endswith(".m2")})
    return CompressionRun(
        model=model, model_name=info.model_name, family=info.family, method=info.method, config=info.config,
        layers=list(info.layers), blocks=list(info.blocks), second_moments=m2, calibration=dict(info.calibration),
        timings=dict(info.timings), loaded=loaded,
        block_rates=list(info.block_rates) if info.block_rates is not None else None, allocation=info.allocation)


def list_runs(root: str | Path) -> list[dict]:
    """Every run folder under ``root``, one row each: name, path, status (complete | unfinished |
    damaged), and for a readable run its ``info`` (``RunInfo``) plus the settings as columns
    (model_name, method, compression, rank_ratio as configured, sparsity, blocks_done, created).

    A damaged folder is reported by name with its ``problem``; the others still list.
    """
    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (d / MANIFEST).exists():
            continue
        try:
            info = RunInfo.read(d)
        except OatsError as e:
            out.append({"name": d.name, "path": str(d), "status": "damaged", "problem": str(e), "info": None})
            continue
        cfg = info.config
        out.append({"name": d.name, "path": str(d), "status": info.status, "model_name": info.model_name,
                    "method": info.method, "compression": cfg.compression, "rank_ratio": cfg.rank_ratio,
                    "sparsity": cfg.sparsity, "blocks_done": len(info.blocks_done), "created": info.created,
                    "info": info})
    return out


def clear_run_folder(folder: str | Path) -> None:
    """Remove the run files a folder holds (manifest and block factors), nothing else."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.glob("block_*.safetensors"):
        p.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)
