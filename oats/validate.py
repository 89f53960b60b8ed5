"""Checks on what a user hands us, in one place: the library, the CLI and the app call these.

Each check raises a typed :class:`~oats.errors.OatsError` whose message is one line, "what is
wrong: what to do". The CLI prints it with status 2, the app shows it with ``st.error``.
Configuration values are checked by :class:`oats.config.OatsConfig`; model names by
:func:`oats.models.zoo.check_model_name`; calibration files and folders by :mod:`oats.data`. This
module adds the checks that span those: uploads, safetensors files, run folder names, the
weights of a model before compressing it, and whether a compression fits in memory.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import torch

from oats.errors import ConfigError, DataError, ModelLoadError, RunError
from oats.methods import registry
from oats.resources import MEMORY_ENV, MEMORY_MARGIN, available_memory, check_memory  # noqa: F401

MAX_UPLOAD_MB = 20
"""Largest upload the app accepts (also ``server.maxUploadSize`` in .streamlit/config.toml)."""

UPLOAD_TYPES = {
    "image": ("png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"),
    "text": ("txt", "md"),
    "safetensors": ("safetensors",),
}
"""The only kinds of file the app takes: images, calibration text, safetensors weights."""

_RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_MAX_HEADER = 100 * 1024 * 1024


# ----------------------------------------------------------------------------- names and files


def check_model_name(name: str) -> str:
    """Resolve what ``name`` refers to without loading it; see :func:`oats.models.zoo.check_model_name`."""
    from oats.models.zoo import check_model_name as _check
    return _check(name)


def check_resumable(folder: str | Path) -> dict:
    """The manifest of an unfinished run folder to continue; RunError when there is nothing to resume."""
    from oats.runs.folders import read_manifest
    m = read_manifest(folder)
    if m.get("complete"):
        raise RunError(f"run '{folder}' is already complete: nothing to resume")
    return m


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


def check_upload(filename: str, data: bytes, kind: str, max_mb: float = MAX_UPLOAD_MB) -> bytes:
    """Check an uploaded file before anything uses it: its type, its size, and its content.

    kind: "image" (must decode as an image), "text" (UTF-8 text) or "safetensors" (a valid
    header). Returns ``data`` unchanged.
    """
    if kind not in UPLOAD_TYPES:
        raise ConfigError(f"unknown upload kind {kind!r}: expected one of {', '.join(UPLOAD_TYPES)}")
    name = Path(str(filename)).name
    suffix = Path(name).suffix.lower().lstrip(".")
    allowed = UPLOAD_TYPES[kind]
    if suffix not in allowed:
        raise DataError(f"upload '{name}' is not a{'n' if kind == 'image' else ''} {kind} file: "
                        f"give a file ending in {', '.join('.' + s for s in allowed)}")
    size_mb = len(data) / 2**20  # MB as Streamlit's maxUploadSize counts them
    if size_mb > max_mb:
        raise DataError(f"upload '{name}' is {size_mb:.1f} MB, over the {max_mb:g} MB limit: give a smaller file")
    if not data:
        raise DataError(f"upload '{name}' is empty: give a file with something in it")
    if kind == "image":
        from oats.data import load_image
        try:
            load_image(bytes(data))
        except DataError:
            raise DataError(f"upload '{name}' is not an image that can be read (corrupt or unknown format): "
                            "give a PNG or JPEG file") from None
    elif kind == "text":
        if b"\x00" in data[:65536]:
            raise DataError(f"upload '{name}' looks binary, not text: give a UTF-8 text file")
        try:
            text = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"upload '{name}' is not UTF-8 text: convert it to UTF-8 or give another file") from None
        if not text.strip():
            raise DataError(f"upload '{name}' is empty: give a text file with some prose in it")
    else:
        import tempfile
        with tempfile.NamedTemporaryFile(suffix=".safetensors") as tmp:
            tmp.write(data)
            tmp.flush()
            check_safetensors_file(tmp.name, what=f"upload '{name}'")
    return data


def check_calibration_source(kind: str, source: str | Path | None) -> None:
    """A calibration text file or image folder is usable (before a model is loaded).

    kind: "text file" or "image folder" (the app's choices; the CLI's --calib-source is
    checked the same way once the model's task is known). A text file must be UTF-8 prose;
    an image folder must hold at least one image, and its first image must decode.
    """
    from oats import data
    if source is None or not str(source).strip():
        raise DataError(f"no {kind} given: upload or type one, or use the built-in calibration data")
    if kind == "text file":
        data.read_text_file(source)
    elif kind == "image folder":
        files = data.image_files(source)
        data.load_image(files[0])
    else:
        raise ConfigError(f"unknown calibration source kind {kind!r}: expected 'text file' or 'image folder'")


# ----------------------------------------------------------------------------- a model before compressing


def check_weights(adapter, model: torch.nn.Module, blocks: list[tuple[str, torch.nn.Module]], config,
                  skip: set[int] = frozenset()) -> None:
    """Before any work: every matrix to compress fits the sparsity pattern and is finite.

    Names the first offending layer, so a damaged checkpoint or an N:M pattern that does not
    divide a layer's input size fails in a second instead of half-way through the model.
    """
    from oats.models.adapters import weight_of
    for i, (bpath, block) in enumerate(blocks):
        if i in skip:
            continue
        seen: set[str] = set()
        for ref in adapter.linears(model, block):
            if ref.path in seen:
                continue
            seen.add(ref.path)
            w = weight_of(block.get_submodule(ref.path))
            d_out, d_in = w.shape
            nm = config.nm
            if nm is not None and d_in % nm[1] != 0:
                raise ConfigError(f"sparsity {config.sparsity} needs each layer's input size to be a multiple of "
                                  f"{nm[1]}, but layer '{bpath}.{ref.path}' has d_in = {d_in}: "
                                  "choose an M that divides it")
            if not bool(torch.isfinite(w).all()):
                raise ModelLoadError(f"layer '{bpath}.{ref.path}' has NaN or inf weights: the model's weights are "
                                     "damaged; load them again from a clean copy")


# ----------------------------------------------------------------------------- memory


def calibration_tokens(batches: list[dict], model: torch.nn.Module) -> int:
    """How many token positions the calibration batches feed each block (the activations' rows)."""
    total = 0
    for b in batches:
        if "input_ids" in b:
            total += int(b["input_ids"].numel())
        elif "pixel_values" in b:
            px = b["pixel_values"]
            cfg = getattr(model, "config", None)
            patch = getattr(cfg, "patch_size", None) or 16
            patch = patch[0] if isinstance(patch, (list, tuple)) else patch
            extra = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
            total += int(px.shape[0]) * ((int(px.shape[-2]) // patch) * (int(px.shape[-1]) // patch) + extra)
        else:
            for v in b.values():
                if isinstance(v, torch.Tensor):
                    total += int(v.shape[0] * (v.shape[1] if v.dim() > 1 else 1))
                    break
    return total


def estimate_compression_memory(adapter, model: torch.nn.Module, blocks, n_tokens: int, method: str) -> dict:
    """Bytes the compression will allocate beyond the loaded model, by part (fp32 everywhere).

    calibration activations: block inputs, their next-block outputs and the dense outputs kept
    to measure the output error (3 x tokens x hidden); block activations: one block's
    intermediate activations on the calibration set (its widest layer); decomposition: the
    working copies of the largest matrix (about 8 of its size, plus its Gram when the method's
    statistics are "gram", as SparseGPT's); factors: the sparse and low-rank terms of every
    compressed matrix (about twice its size).
    """
    if not blocks:
        return {"calibration activations": 0, "block activations": 0, "decomposition": 0, "factors": 0}
    gram = registry.get(method).statistics == "gram"
    from oats.models.adapters import weight_of
    shapes = []
    for _, block in blocks[:1]:
        for ref in adapter.linears(model, block):
            shapes.append(tuple(weight_of(block.get_submodule(ref.path)).shape))
    hidden = max(min(s[1] for s in shapes), 1)
    widest = max(max(s) for s in shapes)
    biggest = max(s[0] * s[1] for s in shapes)
    biggest_in = max(s[1] for s in shapes)
    per_block = sum(s[0] * s[1] for s in shapes)
    parts = {
        "calibration activations": 3 * n_tokens * hidden * 4,
        "block activations": 2 * n_tokens * widest * 4,
        "decomposition": 8 * biggest * 4 + (biggest_in * biggest_in * 4 * 2 if gram else 0),
        "factors": 2 * per_block * len(blocks) * 4,
    }
    return parts
