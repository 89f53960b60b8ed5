"""Model weight files on disk: reading a safetensors header without trusting the file.

Only the header is read (8-byte little-endian length, then JSON), so a check is cheap even
for large files, and nothing in the file is executed.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path

from oats import untrusted
from oats.errors import ModelLoadError

_MAX_HEADER = 100 * 1024 * 1024


def check_safetensors_file(path: str | Path, what: str | None = None) -> dict:
    """Read and return the header of a safetensors file, or raise a one-line error.

    Only the header is read (8-byte little-endian length, then JSON), so this is cheap even
    for large files; nothing in the file is executed. The file must be a regular file (a FIFO
    named ``model.safetensors`` would block the open, a link to ``/dev/zero`` never ends), the
    header strict JSON (``oats.untrusted.parse_json``), and every entry a dtype, a shape of
    whole numbers and offsets that lie inside the file.
    """
    p = Path(path)
    what = what or f"'{p}'"
    try:
        if p.is_dir():
            raise IsADirectoryError(str(p))
        size = untrusted.regular_file(p).st_size
        # O_NONBLOCK: a FIFO swapped in after the check does not block the open
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise untrusted.BadFile("it is not a regular file")
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(_MAX_HEADER, size - 8):
                raise ValueError("bad header length")
            try:
                header = untrusted.parse_json(fh.read(n))
            except untrusted.BadFile as exc:  # a damaged header, worded as every other damage
                raise ValueError(str(exc)) from None
        if not isinstance(header, dict):
            raise ValueError("header is not a table")
        end = 0
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            start, stop = entry["data_offsets"]
            shape = entry["shape"]
            if not isinstance(entry["dtype"], str) or not isinstance(shape, list) or not all(
                    type(d) is int and d >= 0 for d in shape) or not all(
                    type(o) is int for o in (start, stop)) or not 0 <= start <= stop:
                raise ValueError(f"bad entry {key!r}")
            end = max(end, stop)
        if 8 + n + end > size:
            raise ValueError("truncated")
    except FileNotFoundError:
        raise ModelLoadError(f"{what} does not exist: check the path") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{what} is a folder, not a safetensors file: give a .safetensors file") from None
    except untrusted.BadFile as exc:
        raise ModelLoadError(f"{what} is not a weights file ({exc}): replace it with the model's own .safetensors "
                             "weights") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what} ({exc.strerror or exc}): check its permissions") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error):
        raise ModelLoadError(f"{what} is not a valid safetensors file (damaged, truncated or another format): "
                             "replace it with the model's own .safetensors weights") from None
    return header


def tensor_count(header: dict) -> int:
    """The number of tensors a safetensors header lists."""
    return sum(1 for k in header if k != "__metadata__")


def safetensors_numel(header: dict) -> int:
    """The number of values the tensors of a safetensors header hold."""
    return sum(math.prod(e["shape"]) for k, e in header.items() if k != "__metadata__")


class DiskWeights:
    """The tensors of a local safetensors model (one file or shards), read a module at a time.

    Larger-than-memory mode: the model is built on the meta device and only what is needed
    now is read from the memory-mapped files (``load``) and dropped again (``release``), so
    the process holds about one transformer block at a time instead of the whole model.
    Tensors are named as in the model's own ``state_dict`` (what ``save_pretrained`` writes).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"'{self.folder}' has no .safetensors weights: the from-disk mode reads only "
                                 "safetensors (save the model with save_pretrained(..., safe_serialization=True))")
        self.where: dict[str, Path] = {}
        self.numel = 0
        for f in files:
            header = check_safetensors_file(f)
            self.numel += safetensors_numel(header)
            for key in header:
                if key != "__metadata__":
                    self.where[key] = f

    @property
    def fp32_bytes(self) -> int:
        """What the whole model takes in memory as fp32 (how every loader keeps it)."""
        return 4 * self.numel

    def has(self, key: str) -> bool:
        return key in self.where

    def load(self, module, prefix: str, recurse: bool = True, dtype="float32") -> None:
        """Give every parameter and buffer of ``module`` (named ``prefix`` in the model) its
        values from the files, as CPU tensors of ``dtype`` ("float32" by default: what the
        blocks compute in; None keeps the file's dtype, e.g. a bf16 embedding table);
        ModelLoadError for a missing one (a buffer the files do not hold and the model
        computed itself stays as it is)."""
        import torch

        items = list(module.named_parameters(recurse=recurse)) + list(module.named_buffers(recurse=recurse))
        wanted: dict[Path, list[tuple[str, str, torch.Tensor]]] = {}
        for name, value in items:
            key = f"{prefix}.{name}" if prefix else name
            if key in self.where:
                wanted.setdefault(self.where[key], []).append((name, key, value))
            elif value.device.type == "meta":
                raise ModelLoadError(f"'{self.folder}' has no tensor {key!r}: the from-disk mode needs weights "
                                     "saved by save_pretrained for this architecture")
            # else: a buffer the model computed itself (rotary frequencies)
        for path, entries in wanted.items():
            with torch.no_grad():
                for (name, key, value), t in zip(entries, self._read(path, [k for _, k, _ in entries], dtype)):
                    if tuple(t.shape) != tuple(value.shape):
                        raise ModelLoadError(f"tensor {key!r} in '{path.name}' has shape {tuple(t.shape)}, the model "
                                             f"expects {tuple(value.shape)}: the files do not match config.json")
                    owner_path, _, attr = name.rpartition(".")
                    owner = module.get_submodule(owner_path) if owner_path else module
                    if attr in owner._parameters:
                        owner._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
                    else:
                        owner._buffers[attr] = t

    def tensor(self, key: str, dtype=None):
        """One tensor of the files, by its ``state_dict`` name, as a CPU tensor of ``dtype``
        (None: the file's own dtype, e.g. bf16, at its size on disk); ModelLoadError when the
        files do not hold it."""
        if key not in self.where:
            raise ModelLoadError(f"'{self.folder}' has no tensor {key!r}: the from-disk mode needs weights saved by "
                                 "save_pretrained for this architecture")
        return self._read(self.where[key], [key], dtype)[0]

    def dtype_of(self, key: str) -> str:
        """The safetensors dtype code ("BF16", "F16", "F32", ...) a tensor has in the files."""
        return str(check_safetensors_file(self.where[key])[key]["dtype"])

    @staticmethod
    def _read(path: Path, keys: list[str], dtype) -> list:
        """The tensors ``keys`` of one file, each in memory of its own (cast to ``dtype``, a torch
        dtype or its name, unless None; integer tensors keep their type). The file is mapped only while they are copied out, so
        no mapping outlives its block, and a tensor already of ``dtype`` is copied once, not twice."""
        import torch
        from safetensors import safe_open

        want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        out = []
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in keys:
                t = fh.get_tensor(key)
                cast = want is not None and t.is_floating_point() and t.dtype != want
                out.append(t.to(want) if cast else t.clone())
        return out

    @staticmethod
    def release(module) -> None:
        """Drop ``module``'s tensors (they go back to the meta device: shapes only)."""
        module.to("meta")
