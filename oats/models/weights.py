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
