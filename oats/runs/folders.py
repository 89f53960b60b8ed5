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

import errno
import json
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from oats import untrusted
from oats.compress.records import CompressionRun
from oats.compress.summaries import REQUIRED, expected_length
from oats.core.linear import OatsLinear
from oats.errors import ModelLoadError, OatsError, RunError
from oats.models import zoo
from oats.models.adapters import bias_of, get_adapter, set_submodule, weight_of
from oats.models.weights import check_safetensors_file
from oats.resources import check_memory
from oats.runs.info import FORMAT, MANIFEST, RunInfo, State, finite_json, read_json

__all__ = ["FORMAT", "MANIFEST", "RUNS_ENV", "RunInfo", "RunWriter", "apply_factors", "atomic_save_tensors",
           "atomic_write_bytes", "block_tensors", "check_run_model", "list_runs", "load_run", "manifest_dict",
           "read_manifest", "runs_root", "save_run", "run_dir", "check_resumable", "clear_run_folder", "check_run_folder",
           "read_block", "disk_full", "write_error", "MAX_NAME_BYTES", "summaries_of", "SUMMARY", "checked_summaries"]

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


MAX_NAME_BYTES = 255
"""The longest file or folder name (in bytes) the common file systems (ext4, APFS, NTFS) allow."""

_RUN_FILE = re.compile(r"^(manifest\.json|evaluation\.json|block_\d+\.safetensors|\..*\.tmp)$")
"""What a run folder holds (``.*.tmp``: a write in progress or killed)."""


def check_run_folder(folder: str | Path, flag: str = "--out", what: str = "run folder") -> Path:
    """``folder`` when a run can be written there; RunError (one line) before anything is
    loaded or written when it cannot: a name over 255 bytes, a path that is a file, a parent
    that is a file or not writable, or a folder holding someone's files and no run.

    Nothing is created here (the folder appears with the first finished block)."""
    folder = Path(folder)
    for part in folder.parts:
        n = len(os.fsencode(part))
        if n > MAX_NAME_BYTES:
            raise RunError(f"{what} name '{part[:40]}...' in {flag} is {n} bytes long, over the {MAX_NAME_BYTES} a "
                           f"file system allows: choose a shorter {flag}")
    try:
        if folder.exists() and not folder.is_dir():
            raise RunError(f"{what} '{folder}' is a file: choose a folder for {flag}")
        if folder.is_dir() and not (folder / MANIFEST).exists() and what == "run folder":
            other = sorted(p.name for p in folder.iterdir() if not _RUN_FILE.match(p.name))
            if other:
                raise RunError(f"{what} '{folder}' holds other files ('{other[0][:60]}', ...) and no run: choose a new "
                               f"or empty folder for {flag}")
        p = Path(os.path.abspath(folder))
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir():
            raise RunError(f"{what} '{folder}' cannot be made: '{p}' is a file: choose another {flag}")
        if not os.access(p, os.W_OK | os.X_OK):
            raise RunError(f"{what} '{folder}' cannot be written: '{p}' is not writable for you: choose another {flag}")
    except OSError as e:
        raise RunError(f"{what} '{folder}' cannot be used ({e.strerror or type(e).__name__}): choose another "
                       f"{flag}") from None
    return folder


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full: an OSError, or the
    SafetensorError safetensors raises with the OS message inside."""
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    text = str(exc)
    return any(m in text for m in ("No space left on device", "Disk quota exceeded", "StorageFull",
                                   "FilesystemQuotaExceeded"))


def write_error(exc: BaseException, path: Path, then: str) -> RunError | None:
    """The one-line RunError for a failed write of ``path`` (``then``: what to do once there
    is space, e.g. "resume with ..."), or None for an error that is not about the disk or the
    file system (a bug: it keeps its traceback)."""
    where = f"{path.name} in '{path.parent}'"
    if disk_full(exc):
        return RunError(f"no space left on device while writing {where}: free some space, then {then}")
    if isinstance(exc, OSError):
        return RunError(f"cannot write {where} ({exc.strerror or type(exc).__name__}): {then} once it is writable")
    return None


def _mkstemp(path: Path, then: str) -> str:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(e, path, then) from None
    os.close(fd)
    return tmp


def _atomic(path: Path, then: str, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then the rename: ``path`` is the old
    file or the whole new one, never a part, and a failure leaves no temporary file."""
    tmp = _mkstemp(path, then)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        err = write_error(e, path, then) if isinstance(e, Exception) else None
        if err is not None:
            raise err from None
        raise


def atomic_write_bytes(path: Path, data: bytes, then: str = "try again") -> None:
    """Write ``data`` to ``path`` atomically; RunError (one line) when the disk is full or the
    folder not writable, ``then`` saying what to do afterwards."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    _atomic(Path(path), then, write)


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None,
                        then: str = "try again") -> None:
    """``safetensors`` ``save_file`` to ``path`` atomically; errors as ``atomic_write_bytes``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic(Path(path), then, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _pack_sparse(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values in row-major order of the non-zeros, packed bit mask as uint8)."""
    mask = s != 0
    bits = np.packbits(mask.cpu().numpy().reshape(-1))
    return s[mask].contiguous(), torch.from_numpy(bits)


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
            for key, t in (run.summary(r.qualname) or {}).items():
                out[f"{r.qualname}{SUMMARY}{key}"] = t
    return out


SUMMARY = ".summary."
"""Infix of a matrix's stored summary tensors in a block file: ``<qualname>.summary.<key>``
(``oats.compress.summaries.KEYS``). Optional: runs made before summaries have none."""


def summaries_of(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The summary tensors of a block's tensors (``read_block``'s result) grouped by matrix:
    {qualname: {key: tensor}}; other tensors are left out."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if SUMMARY in name:
            q, key = name.split(SUMMARY, 1)
            out.setdefault(q, {})[key] = t
    return out


def _summary_length(name: str, records: dict) -> int | None:
    """How many values summary tensor ``name`` (``<qualname>.summary.<key>``) holds for a
    matrix of this block (``records`` by qualname); None when it names no matrix or key."""
    q, _, key = name.partition(SUMMARY)
    rec = records.get(q)
    return None if rec is None else expected_length(key, rec.shape, rec.rank)


def _summary_problem(t: torch.Tensor, n: int) -> str | None:
    """Why ``t`` is not a sound summary tensor of ``n`` values, None when it is: 1-D floats,
    finite and non-negative (norms and singular values)."""
    if not t.dtype.is_floating_point:
        return f"{str(t.dtype).replace('torch.', '')} values, not floats"
    if tuple(t.shape) != (n,):
        return f"shape {tuple(t.shape)}, not ({n},)"
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        return "NaN, infinite or negative values"
    return None


def checked_summaries(folder, name: str, tensors: dict, records) -> dict[str, torch.Tensor]:
    """The summary tensors among one block file's ``tensors`` that belong to its matrices
    (``records``: their layer records), each checked (``_summary_problem``) and each matrix's
    set complete (``REQUIRED``): a summary is optional, a damaged or partial one is not (the
    views would draw it). Tensors naming no matrix of the block are left out (the caller
    refuses them as strays). RunError (one line) otherwise."""
    by_qual = {r.qualname: r for r in records}
    out: dict[str, torch.Tensor] = {}
    for key in sorted(k for k in tensors if SUMMARY in k):
        n = _summary_length(key, by_qual)
        if n is None:
            continue
        why = _summary_problem(tensors[key], n)
        if why is not None:
            raise RunError(f"run folder '{folder}': {name} holds a damaged summary {key!r} ({why}): the run is "
                           "damaged, compress again")
        out[key] = tensors[key]
    grouped = summaries_of(out)
    if grouped:  # a block's matrices are summarised together: all of them, or (an older run) none
        absent = sorted(set(by_qual) - set(grouped))
        if absent:
            raise RunError(f"run folder '{folder}': {name} holds no summary of '{absent[0]}' beside its other "
                           "matrices': the run is damaged, compress again")
    for q, keys in grouped.items():
        missing = [k for k in REQUIRED if k not in keys]
        if missing:
            raise RunError(f"run folder '{folder}': {name} holds an incomplete summary of '{q}' (no {missing[0]}): "
                           "the run is damaged, compress again")
    return out


def manifest_dict(run: CompressionRun, complete: bool, extra: dict | None = None) -> dict:
    """The manifest's JSON object for ``run`` as it stands (``RunInfo.of_run(...).to_manifest()``)."""
    return RunInfo.of_run(run, complete, extra).to_manifest()


class RunWriter:
    """Writes a run folder block by block (pass ``writer.block_done`` as ``on_block_done``)."""

    def __init__(self, folder: str | Path, extra: dict | None = None):
        self.folder = Path(folder)
        self.extra = extra or {}
        # Half-written files of a writer that was killed (atomic writes never expose them as blocks);
        # only the names this writer makes, so nothing of anyone else's goes.
        if self.folder.is_dir():
            for stale in self.folder.glob(".*.tmp"):
                if stale.name.startswith((".block_", f".{MANIFEST}.")) and stale.is_file():
                    stale.unlink(missing_ok=True)

    def _then(self, run: CompressionRun) -> str:
        return f"resume with 'oats compress {run.model_name} --out {self.folder} --resume'"

    def block_done(self, run: CompressionRun, block: int) -> None:
        # The folder appears with the first finished block: a run that fails its checks leaves nothing.
        self._mkdir(run)
        atomic_save_tensors(block_tensors(run, block), self.folder / f"block_{block:03d}.safetensors",
                            then=self._then(run))
        self._manifest(run, complete=False)

    def finish(self, run: CompressionRun) -> None:
        self._manifest(run, complete=True)

    def manifest(self, run: CompressionRun) -> None:
        """The manifest of an unfinished run whose block files were written elsewhere (each Ray
        task of ``oats.runner.blocks_ray`` writes its own block's file)."""
        self._manifest(run, complete=False)

    def _mkdir(self, run: CompressionRun) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(e, self.folder / MANIFEST, self._then(run)) from None

    def _manifest(self, run: CompressionRun, complete: bool) -> None:
        self._mkdir(run)
        # strict JSON: a NaN error (a zero matrix) is written as null, which every reader accepts
        data = json.dumps(finite_json(manifest_dict(run, complete, self.extra)), indent=1, allow_nan=False).encode()
        atomic_write_bytes(self.folder / MANIFEST, data, then=self._then(run))


def save_run(run: CompressionRun, folder: str | Path, extra: dict | None = None) -> Path:
    """Write a finished run to ``folder`` (created if missing)."""
    w = RunWriter(folder, extra)
    w._mkdir(run)
    for b in sorted({r.block for r in run.layers}):
        atomic_save_tensors(block_tensors(run, b), w.folder / f"block_{b:03d}.safetensors", then="save it again")
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


def _block_file(folder: Path, block: int, whole: bool = True) -> Path:
    """The block file of a run folder, resolved: a regular file inside the folder (not a link
    to a file elsewhere, which an export would copy out) with a sound safetensors header."""
    f = folder / f"block_{block:03d}.safetensors"
    if not os.path.lexists(f):
        raise RunError(f"run folder '{folder}' is missing {f.name}: the run is damaged, compress again")
    try:
        real = untrusted.inside(folder, f)
        untrusted.regular_file(real)
        check_safetensors_file(real, f.name)
        size = real.stat().st_size
    except untrusted.BadFile as e:
        raise RunError(f"run folder '{folder}': {f.name} is refused ({e}): the run is damaged or tampered with, "
                       "compress again") from None
    except FileNotFoundError:
        raise RunError(f"run folder '{folder}' is missing {f.name} (a broken link): the run is damaged, compress "
                       "again") from None
    except (ModelLoadError, OSError):
        raise RunError(f"run folder '{folder}': {f.name} is unreadable (SafetensorError): compress again") from None
    # the file is read whole: one declaring (sparse, on disk nearly nothing) tens of GB is refused before that
    # (``whole=False``: a reader of one tensor at a time, oats.runs.lazy, whose tensors are checked as read)
    if whole:
        check_memory({"block file": size}, what=f"reading {f.name} of run folder '{folder}'")
    return real


def _problem(t: torch.Tensor | None, shape: tuple, dtype: str = "float") -> str | None:
    """Why ``t`` is not a factor of ``shape`` (``dtype``: "float" or "uint8"), None when it is."""
    if dtype == "uint8" and t.dtype != torch.uint8:
        return f"{str(t.dtype).replace('torch.', '')} values, not uint8 bits"
    if dtype == "float" and not t.dtype.is_floating_point:
        return f"{str(t.dtype).replace('torch.', '')} values, not floats"
    if tuple(t.shape) != tuple(shape):
        return f"shape {tuple(t.shape)}, not {tuple(shape)}"
    if dtype == "float" and t.numel() and not bool(torch.isfinite(t).all()):
        return "NaN or infinite values"
    return None


def read_block(folder: str | Path, block: int, info: RunInfo) -> dict[str, torch.Tensor]:
    """The tensors of one block file of a run folder, every one checked against the manifest.

    The one reader of block files: the file must be a regular file inside the folder with a
    sound header; per replaced layer ``sparse_values`` (float, finite), ``sparse_mask``
    (uint8, ceil(d_out * d_in / 8) bytes, as many set bits as values), ``u`` (d_out, rank) and
    ``v`` (rank, d_in) (float, finite, the manifest's rank); per matrix ``m2`` (d_in,) (float,
    finite, non-negative); optionally per matrix its summary (``<qualname>.summary.<key>``,
    ``_summary_problem``). RunError (one line, naming the file and the layer) otherwise.
    Returns the tensors by their names, the mask unpacked as ``<path>.sparse`` (d_out, d_in).
    """
    folder = Path(folder)
    name = f"block_{block:03d}.safetensors"
    real = _block_file(folder, block)
    try:
        tensors = load_file(str(real))
    except Exception as e:  # the header was sound, the data is not (SafetensorError, OSError)
        raise RunError(f"run folder '{folder}': {name} is unreadable ({type(e).__name__}): compress again") from None

    def refuse(path: str, factor: str, why: str | None = None):
        if why is None:
            return RunError(f"run folder '{folder}': {name} has no {factor} for layer '{path}': the run is damaged, "
                            "compress again")
        return RunError(f"run folder '{folder}': {name} holds a damaged {factor} for layer '{path}' ({why}): the run "
                        "is damaged, compress again")

    out: dict[str, torch.Tensor] = {}
    records = [r for r in info.layers if r.block == block]
    named = {f"{r.path}.{f}" for r in records for f in ("sparse_values", "sparse_mask", "u", "v")}
    named |= {f"{r.qualname}.m2" for r in records}
    summary = checked_summaries(folder, name, tensors, records)  # others naming no matrix: strays, below
    out.update(summary)
    named |= set(summary)
    stray = sorted(set(tensors) - named)
    if stray:  # factors of a layer the manifest no longer names would be dropped: that layer loads dense
        raise RunError(f"run folder '{folder}': {name} holds {stray[0]!r}, which the manifest does not name: the run "
                       "is damaged, compress again")
    for path in dict.fromkeys(r.path for r in records):
        mod = info.modules.get(path)
        if mod is None:
            raise RunError(f"run folder '{folder}' has a damaged manifest (no shape for layer '{path}'): delete it "
                           "and compress again")
        (d_out, d_in), rank = mod.shape, mod.rank
        n = d_out * d_in
        want = {"sparse_values": None, "sparse_mask": ((n + 7) // 8,), "u": (d_out, rank), "v": (rank, d_in)}
        got = {}
        for factor, shape in want.items():
            t = tensors.get(f"{path}.{factor}")
            if t is None:
                raise refuse(path, factor)
            if factor == "sparse_values":
                shape = (t.numel(),) if t.dim() == 1 else ("n",)
            why = _problem(t, shape, "uint8" if factor == "sparse_mask" else "float")
            if why is not None:
                raise refuse(path, factor, why)
            got[factor] = t
        mask = torch.from_numpy(np.unpackbits(got["sparse_mask"].numpy(), count=n).astype(bool)).reshape(d_out, d_in)
        kept = int(mask.sum())
        if kept != got["sparse_values"].numel():
            raise refuse(path, "sparse_values", f"{got['sparse_values'].numel()} values for the {kept} the mask marks")
        sparse = torch.zeros((d_out, d_in), dtype=got["sparse_values"].dtype)
        sparse[mask] = got["sparse_values"]
        out[f"{path}.sparse"] = sparse
        out[f"{path}.u"], out[f"{path}.v"] = got["u"], got["v"]
    for r in records:
        key = f"{r.qualname}.m2"
        t = tensors.get(key)
        if t is None:
            raise refuse(r.path, f"m2 ({r.qualname})")
        d_in = info.modules[r.path].shape[1]
        why = _problem(t, (d_in,)) or (None if bool((t >= 0).all()) else "negative values")
        if why is not None:
            raise refuse(r.path, f"m2 ({r.qualname})", why)
        out[key] = t
    return out


def _apply_blocks(model: torch.nn.Module, folder: Path, info: RunInfo,
                  summaries: dict | None = None) -> dict[str, torch.Tensor]:
    """Put the factors of every finished block into ``model``; the second moments by qualname.
    ``summaries`` (a dict) receives the stored summaries by qualname (``summaries_of``)."""
    get_adapter(model, allow_generic=info.family == "generic")  # fails clearly on a foreign model
    m2: dict[str, torch.Tensor] = {}
    for b in info.blocks_done:
        tensors = read_block(folder, b, info)
        for path in dict.fromkeys(r.path for r in info.layers if r.block == b):
            mod = info.modules[path]
            try:
                old = model.get_submodule(path)
            except AttributeError:
                raise RunError(f"run folder '{folder}' was made for '{info.model_name}': this model has no "
                               f"layer '{path}'") from None
            w = weight_of(old)
            if list(w.shape) != list(mod.shape):
                raise RunError(f"run folder '{folder}' was made for '{info.model_name}': layer '{path}' "
                               f"is {tuple(mod.shape)} there but {tuple(w.shape)} in this model")
            new = OatsLinear(w, bias_of(old), tensors[f"{path}.sparse"].to(w.dtype), tensors[f"{path}.u"].to(w.dtype),
                             tensors[f"{path}.v"].to(w.dtype))
            set_submodule(model, path, new.to(w.device))
        m2.update({k[:-3]: v for k, v in tensors.items() if k.endswith(".m2")})
        if summaries is not None:
            summaries.update(summaries_of(tensors))
    return m2


def apply_factors(model: torch.nn.Module, folder: str | Path, info: RunInfo) -> None:
    """Replace the model's linears with OatsLinear modules holding the run's factors (every
    block file checked by ``read_block`` first)."""
    _apply_blocks(model, Path(folder), info)


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
    summaries: dict = {}
    m2 = _apply_blocks(model, folder, info, summaries)
    return CompressionRun(
        model=model, model_name=info.model_name, family=info.family, method=info.method, config=info.config,
        layers=list(info.layers), blocks=list(info.blocks), second_moments=m2, calibration=dict(info.calibration),
        timings=dict(info.timings), loaded=loaded,
        block_rates=list(info.block_rates) if info.block_rates is not None else None, allocation=info.allocation,
        summaries=summaries)


def list_runs(root: str | Path) -> list[dict]:
    """Every run folder under ``root``, one row each: name, path, status (complete | unfinished |
    damaged), and for a readable run its ``info`` (``RunInfo``) plus the settings as columns
    (model_name, method, compression, rank_ratio as configured, sparsity, blocks_done, created).

    A damaged folder is reported by name with its ``problem`` (one line); the others still
    list. Nothing one folder holds makes this raise: the app lists runs on every page.
    """
    root = Path(root)
    out = []
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    except OSError:
        return out
    for d in entries:
        try:
            if not os.path.lexists(d / MANIFEST):
                continue
            info = RunInfo.read(d)
            cfg = info.config
            row = {"name": d.name, "path": str(d), "status": info.status, "model_name": info.model_name,
                   "method": info.method, "compression": cfg.compression, "rank_ratio": cfg.rank_ratio,
                   "sparsity": cfg.sparsity, "blocks_done": len(info.blocks_done), "created": info.created,
                   "info": info}
        except Exception as e:  # noqa: BLE001 - one folder's damage is that row's problem, never the list's
            problem = str(e) if isinstance(e, OatsError) else \
                f"run folder '{d}' cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
            row = {"name": d.name, "path": str(d), "status": State.DAMAGED.value, "problem": " ".join(problem.split()),
                   "info": None}
        out.append(row)
    return out


def clear_run_folder(folder: str | Path) -> None:
    """Remove the run files (manifest and block factors) of a folder that holds a run; a folder
    without a manifest is left as it is (its files are not a run's to remove)."""
    folder = Path(folder)
    if not folder.is_dir() or not os.path.lexists(folder / MANIFEST):
        return
    for p in folder.glob("block_*.safetensors"):
        if _RUN_FILE.match(p.name):
            p.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)
