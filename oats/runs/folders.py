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
import platform
import re
import tempfile
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from oats.compress.records import BlockRecord, CompressionRun, LayerRecord
from oats.config import OatsConfig
from oats.core.linear import OatsLinear
from oats.errors import ConfigError, OatsError, RunError
from oats.methods import BUDGET_NOTES
from oats.models import zoo
from oats.models.adapters import bias_of, get_adapter, set_submodule, weight_of

FORMAT = 1
MANIFEST = "manifest.json"
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


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("transformers", "timm", "oats-explorer"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            pass
    return out


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
            out[f"{r.qualname}.m2"] = run.input_sq_norms[r.qualname]
    return out


def manifest_dict(run: CompressionRun, complete: bool, extra: dict | None = None) -> dict:
    mods = run.modules()
    paths = dict.fromkeys(r.path for r in run.layers)
    return {
        "format": FORMAT,
        "complete": complete,
        "model_name": run.model_name,
        "family": run.family,
        "method": run.method,
        "config": run.config.to_dict(),
        "effective_compression": run.config.effective_compression,
        "budget_note": BUDGET_NOTES.get(run.method, ""),
        "block_rates": run.block_rates,
        "allocation": run.allocation,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": _versions(),
        "calibration": run.calibration,
        "timings": run.timings,
        "params": {"dense": run.params_dense, "kept": run.params_kept},
        "blocks_done": [b.index for b in run.blocks],
        "blocks": [asdict(b) for b in run.blocks],
        "layers": [r.to_dict() for r in run.layers],
        "modules": {p: {"shape": list(mods[p].weight.shape), "rank": mods[p].rank} for p in paths},
        **(extra or {}),
    }


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
    """The manifest of a run folder; RunError (one line) when missing or damaged."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"run folder '{folder}' does not exist: give the folder written by 'oats compress --out'")
    p = folder / MANIFEST
    if not p.is_file():
        raise RunError(f"'{folder}' is not a run folder (no {MANIFEST}): give the folder written by 'oats compress --out'")
    try:
        m = json.loads(p.read_text())
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ValueError("unknown format")
        for key in ("model_name", "config", "layers", "blocks", "method"):
            if key not in m:
                raise ValueError(f"missing {key}")
        OatsConfig(**m["config"])
    except (ValueError, TypeError, ConfigError) as e:
        raise RunError(f"run folder '{folder}' has a damaged manifest ({e}): delete it and compress again") from None
    return m


def check_resumable(folder: str | Path) -> dict:
    """The manifest of an unfinished run folder to continue; RunError when there is nothing to resume."""
    m = read_manifest(folder)
    if m.get("complete"):
        raise RunError(f"run '{folder}' is already complete: nothing to resume")
    return m


def apply_factors(model: torch.nn.Module, folder: str | Path, manifest: dict) -> None:
    """Replace the model's linears with OatsLinear modules holding the run's factors."""
    folder = Path(folder)
    get_adapter(model, allow_generic=manifest.get("family") == "generic")  # fails clearly on a foreign model
    for b in manifest["blocks_done"]:
        f = folder / f"block_{b:03d}.safetensors"
        if not f.is_file():
            raise RunError(f"run folder '{folder}' is missing {f.name}: the run is damaged, compress again")
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, Exception) as e:
            raise RunError(f"run folder '{folder}': {f.name} is unreadable ({type(e).__name__}): compress again") from None
        for path, info in manifest["modules"].items():
            if f"{path}.u" not in tensors:
                continue
            try:
                old = model.get_submodule(path)
            except AttributeError:
                raise RunError(f"run folder '{folder}' was made for '{manifest['model_name']}': this model has no "
                               f"layer '{path}'") from None
            w = weight_of(old)
            if list(w.shape) != list(info["shape"]):
                raise RunError(f"run folder '{folder}' was made for '{manifest['model_name']}': layer '{path}' "
                               f"is {tuple(info['shape'])} there but {tuple(w.shape)} in this model")
            try:
                sparse = _unpack_sparse(tensors[f"{path}.sparse_values"], tensors[f"{path}.sparse_mask"], tuple(w.shape))
            except (KeyError, ValueError):
                raise RunError(f"run folder '{folder}': the factors of '{path}' are damaged: compress again") from None
            new = OatsLinear(w, bias_of(old), sparse.to(w.dtype), tensors[f"{path}.u"].to(w.dtype),
                             tensors[f"{path}.v"].to(w.dtype))
            set_submodule(model, path, new.to(w.device))


def check_run_model(folder: str | Path, manifest: dict, model_name: str) -> None:
    """RunError when a run folder was made for another model than ``model_name``."""
    if model_name and manifest.get("model_name") != model_name:
        raise RunError(f"run folder '{folder}' was made for '{manifest.get('model_name')}', not '{model_name}': "
                       "use the run's own model, or another run folder")


def load_run(folder: str | Path, model: torch.nn.Module | None = None, allow_partial: bool = False,
             model_name: str | None = None) -> CompressionRun:
    """Rebuild a compressed model from a run folder without recomputing.

    ``model``: the dense base model to apply the factors to (default: ``oats.models.zoo.load_model``
    of the manifest's model name). It is modified in place. ``model_name``: the name that
    model was loaded by; a run made for another name is refused before anything changes.
    """
    folder = Path(folder)
    m = read_manifest(folder)
    check_run_model(folder, m, model_name or "")
    if not m.get("complete") and not allow_partial:
        raise RunError(f"run '{folder.name}' is unfinished ({len(m.get('blocks_done', []))} blocks done): "
                       f"resume it with 'oats compress --resume' or delete it")
    loaded = None
    if model is None:
        loaded = zoo.load_model(m["model_name"])
        model = loaded.model
    apply_factors(model, folder, m)
    m2: dict[str, torch.Tensor] = {}
    for b in m["blocks_done"]:
        t = load_file(str(folder / f"block_{b:03d}.safetensors"))
        m2.update({k[:-3]: v for k, v in t.items() if k.endswith(".m2")})
    return CompressionRun(
        model=model, model_name=m["model_name"], family=m.get("family", ""), method=m["method"],
        config=OatsConfig(**m["config"]), layers=[LayerRecord.from_dict(d) for d in m["layers"]],
        blocks=[BlockRecord(**d) for d in m["blocks"]], input_sq_norms=m2,
        calibration=m.get("calibration", {}), timings=m.get("timings", {}), loaded=loaded,
        block_rates=m.get("block_rates"), allocation=m.get("allocation"))


def list_runs(root: str | Path) -> list[dict]:
    """Every run folder under ``root``: name, status (complete | unfinished | damaged), summary.

    A damaged folder is reported by name with its problem; the others still list.
    """
    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (d / MANIFEST).exists():
            continue
        try:
            m = read_manifest(d)
        except OatsError as e:
            out.append({"name": d.name, "path": str(d), "status": "damaged", "problem": str(e)})
            continue
        cfg = m["config"]
        out.append({"name": d.name, "path": str(d), "status": "complete" if m.get("complete") else "unfinished",
                    "model": m["model_name"], "method": m["method"], "compression": cfg["compression"],
                    "rank_ratio": cfg["rank_ratio"], "sparsity": cfg["sparsity"],
                    "blocks_done": len(m.get("blocks_done", [])), "created": m.get("created", "")})
    return out


def clear_run_folder(folder: str | Path) -> None:
    """Remove the run files a folder holds (manifest and block factors), nothing else."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in folder.glob("block_*.safetensors"):
        p.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)
