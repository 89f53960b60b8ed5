"""Model weight files on disk: reading a safetensors header without trusting the file.

Only the header is read (8-byte little-endian length, then JSON), so a check is cheap even
for large files, and nothing in the file is executed.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from oats.errors import ModelLoadError

_MAX_HEADER = 100 * 1024 * 1024


def check_safetensors_file(path: str | Path, what: str | None = None) -> dict:
    """Read and return the header of a safetensors file, or raise a one-line error.

    Only the header is read (8-byte little-endian length, then JSON), so this is cheap even
    for large files; nothing in the file is executed.
    """
    p = Path(path)
    what = what or f"'{p}'"
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= n <= min(_MAX_HEADER, size - 8):
                raise ValueError("bad header length")
            header = json.loads(fh.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a table")
        end = 0
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            start, stop = entry["data_offsets"]
            end = max(end, int(stop))
        if 8 + n + end > size:
            raise ValueError("truncated")
    except FileNotFoundError:
        raise ModelLoadError(f"{what} does not exist: check the path") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{what} is a folder, not a safetensors file: give a .safetensors file") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {what} ({exc.strerror or exc}): check its permissions") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error):
        raise ModelLoadError(f"{what} is not a valid safetensors file (damaged, truncated or another format): "
                             "replace it with the model's own .safetensors weights") from None
    return header


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

    def load(self, module, prefix: str, recurse: bool = True) -> None:
        """Give every parameter and buffer of ``module`` (named ``prefix`` in the model) its
        values from the files, as fp32 CPU tensors; ModelLoadError for a missing one (a buffer
        the files do not hold and the model computed itself stays as it is)."""
        import torch
        from safetensors import safe_open

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
        # each file is mapped only while its tensors are copied out, so no mapping outlives its block
        for path, entries in wanted.items():
            with safe_open(str(path), framework="pt", device="cpu") as fh, torch.no_grad():
                for name, key, value in entries:
                    t = fh.get_tensor(key).to(torch.float32).clone()
                    if tuple(t.shape) != tuple(value.shape):
                        raise ModelLoadError(f"tensor {key!r} in '{path.name}' has shape {tuple(t.shape)}, the model "
                                             f"expects {tuple(value.shape)}: the files do not match config.json")
                    owner_path, _, attr = name.rpartition(".")
                    owner = module.get_submodule(owner_path) if owner_path else module
                    if attr in owner._parameters:
                        owner._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
                    else:
                        owner._buffers[attr] = t

    @staticmethod
    def release(module) -> None:
        """Drop ``module``'s tensors (they go back to the meta device: shapes only)."""
        module.to("meta")
