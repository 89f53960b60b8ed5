"""Files that may come from someone else: the one place for the limits and checks on reading them.

Run folders and exports get shared (downloaded, mailed, put on a class drive), and the app reads
paths typed into a page, so every reader treats its input as hostile:

- only a regular file is opened (a FIFO would block forever, ``/dev/zero`` never ends, a
  device or socket is no data), and never more than a stated number of bytes is read;
- JSON is parsed without ``NaN``/``Infinity`` (not JSON, and they overflow every ``int()``),
  without numbers that round to infinity, and no deeper than ``MAX_JSON_DEPTH`` (a file of
  100k ``[`` is a RecursionError in the parser, a crash of the caller, not a damaged file);
- a file a folder names must lie inside that folder once symlinks are resolved, so a tampered
  folder cannot make oats read (and re-export) a file from elsewhere on the machine.

The functions raise :class:`BadFile` with a short reason; each caller wraps it in its own typed
error (``RunError``, ``DataError``, ``ModelLoadError``) that says what to do, in one line.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path

__all__ = ["BadFile", "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "inside", "parse_json", "read_capped", "read_json",
           "regular_file"]

MAX_JSON_BYTES = 64 * 1024**2
"""A run manifest of the largest model this project targets (8B, 224 layers with their error
histories) is a few MB; an export manifest far less."""

MAX_JSON_DEPTH = 32
"""Manifests nest four levels deep (layers -> record -> history -> list); 32 leaves room for
whatever a later writer adds, and is far below the parser's recursion limit."""


class BadFile(ValueError):
    """A file that cannot be trusted as what it claims to be; ``str()`` is the short reason."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: str | os.PathLike) -> os.stat_result:
    """The ``stat`` of ``path`` when it is a regular file (symlinks followed); BadFile otherwise.

    FileNotFoundError and PermissionError pass through: callers word those themselves.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a link to itself, or a chain of links too long to follow
            raise BadFile("it is a loop of symbolic links") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise BadFile(f"it is {_kind(st.st_mode)}, not a file")
    return st


def read_capped(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; BadFile when it is not a regular
    file or is larger (checked while reading too: ``/proc`` files report size 0)."""
    regular_file(path)
    # O_NONBLOCK: a path swapped for a FIFO between the check and the open does not block here.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BadFile(f"it is {_kind(st.st_mode)}, not a file")
        if st.st_size > max_bytes:
            raise BadFile(f"it is {_size(st.st_size)}, over the {_size(max_bytes)} this reader accepts")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BadFile(f"it is over the {_size(max_bytes)} this reader accepts")
    return data


def _size(n: int) -> str:
    return f"{n / 1024**2:.0f} MB" if n >= 1024**2 else f"{n} bytes"


def _no_constant(name: str):
    raise BadFile(f"it holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise BadFile(f"it holds the number {text[:20]}, too large for a float")
    return x


def _depth_ok(obj, limit: int) -> None:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                raise BadFile(f"it nests deeper than {limit} levels")
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))


def _nesting(text: str, limit: int) -> None:
    """Refuse text whose brackets nest deeper than ``limit`` before the parser recurses into it
    (strings are skipped, so brackets inside them do not count)."""
    depth, in_str, esc = 0, False, False
    if text.count("[") + text.count("{") <= limit:
        return
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise BadFile(f"it nests deeper than {limit} levels")
        elif ch in "]}":
            depth -= 1


def parse_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH):
    """JSON text as Python objects, strictly: no NaN/Infinity, finite floats, integers of at
    most 4300 digits (Python's own limit), at most ``max_depth`` levels; BadFile otherwise."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, (bytes, bytearray)) else str(data)
    except UnicodeDecodeError:
        raise BadFile("it is not UTF-8 text") from None
    _nesting(text, max_depth)
    try:
        obj = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except BadFile:
        raise
    except RecursionError:
        raise BadFile(f"it nests deeper than {max_depth} levels") from None
    except ValueError as e:  # JSONDecodeError, and int() of more than 4300 digits
        raise BadFile(f"it is not valid JSON ({' '.join(str(e).split())[:120]})") from None
    _depth_ok(obj, max_depth)
    return obj


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """``parse_json`` of a regular file of at most ``max_bytes``."""
    return parse_json(read_capped(path, max_bytes), max_depth)


def inside(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` resolved (symlinks followed), refused with BadFile when it leads outside ``folder``."""
    try:
        root = Path(folder).resolve()
        real = Path(path).resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError on a link loop, later ones OSError
        raise BadFile(f"'{Path(path).name}' is a loop of symbolic links") from None
    if real != root and root not in real.parents:
        raise BadFile(f"'{Path(path).name}' leads outside the folder (a link to {real})")
    return real
