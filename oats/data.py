"""Calibration and evaluation data that exist on every machine, plus the user's own files.

The built-in text and images come in domains (``oats.corpora``: the Python manual, Python
code, Shakespeare, State of the Union speeches; photos, drawings, textures), each split into a
calibration part and a held-out evaluation part that share no paragraph (no image). The
default calibration is a mix: an equal share of every domain's calibration part.

Every loader returns a list of model-input dicts (batches), ready for ``model(**batch)``:
``input_ids``/``attention_mask`` for text, ``pixel_values`` for images.
"""

from __future__ import annotations

import functools
import io
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oats import corpora, untrusted
from oats.errors import ConfigError, DataError
from oats.models.weights import check_safetensors_file
from oats.models.zoo import LoadedModel

# Defaults, sized for two CPU cores: one dense forward pass over the default set takes about
# 30 s for SmolLM2-135M (16 x 256 tokens) and about 12 s for DINOv2-S (32 crops at 224 px).
# OATS only needs per-channel second moments, which 4k tokens estimate well. (The paper uses
# 128 x 2048 tokens of C4 and 2048 ImageNet images.)
LM_N_SAMPLES = 16
"""Causal LMs: number of calibration windows."""
LM_SEQ_LEN = 256
"""Causal LMs: tokens per window."""
ENCODER_N_SAMPLES = 128
"""Encoders: number of calibration sentences."""
ENCODER_MAX_LENGTH = 128
"""Encoders: sentences are truncated to this many tokens."""
VISION_N_SAMPLES = 32
"""Vision models: number of calibration crops."""
BATCH_SIZE = 8
"""Samples per batch (the first dimension of every tensor)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

MAX_UPLOAD_MB = 20
"""Largest upload the app accepts (also ``server.maxUploadSize`` in .streamlit/config.toml)."""

UPLOAD_TYPES = {
    "image": ("png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"),
    "text": ("txt", "md"),
    "safetensors": ("safetensors",),
}
"""The only kinds of file the app takes: images, calibration text, safetensors weights."""


# --------------------------------------------------------------------------------------
# Text


def calibration_text(domain: str = "manual") -> str:
    """The calibration part of a text domain (``oats.corpora``); no paragraph of
    ``evaluation_text(domain)``."""
    return corpora.text(domain, "calibration")


def evaluation_text(domain: str = "manual") -> str:
    """The held-out evaluation part of a text domain; no paragraph of ``calibration_text(domain)``."""
    return corpora.text(domain, "evaluation")


_TOKEN_CACHE: dict[tuple, list[int]] = {}


def _domain_ids(tokenizer, domain: str, part: str) -> list[int]:
    """Token ids of a built-in domain part, tokenized once per tokenizer (a few hundred
    thousand tokens take a second or two)."""
    name = getattr(tokenizer, "name_or_path", None)
    if not name:  # no name to know it by again: tokenize every time
        return _tokenize(tokenizer, corpora.text(domain, part))
    key = (type(tokenizer).__name__, name, len(tokenizer) if hasattr(tokenizer, "__len__") else None, domain, part)
    if key not in _TOKEN_CACHE:
        if len(_TOKEN_CACHE) > 64:
            _TOKEN_CACHE.clear()
        _TOKEN_CACHE[key] = _tokenize(tokenizer, corpora.text(domain, part))
    return _TOKEN_CACHE[key]


def shares(n: int, k: int) -> list[int]:
    """``n`` samples over ``k`` domains as evenly as possible (the first ones get the remainder)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def _tokenize(tokenizer, text: str) -> list[int]:
    # verbose=False: a whole book is longer than model_max_length, and that is fine here.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return list(ids)


def text_batches(
    tokenizer,
    text: str,
    n_samples: int,
    seq_len: int,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
) -> list[dict[str, torch.Tensor]]:
    """Random fixed-length token windows from ``text``, the way LM calibration sets are cut.

    The text is tokenized once (no special tokens); ``n_samples`` window starts are drawn
    uniformly with ``numpy.random.default_rng(seed)`` among positions that leave one more token
    after the window (so a window can also serve next-token prediction).

    Returns ``ceil(n_samples / batch_size)`` dicts with ``input_ids`` (int64) and
    ``attention_mask`` (all ones), each of shape (b, seq_len), b = batch_size except maybe
    in the last batch. Raises DataError when the text has fewer than seq_len + 1 tokens.
    """
    n_samples = _positive_int("number of samples", n_samples)
    seq_len = _positive_int("sequence length", seq_len)
    batch_size = _positive_int("batch size", batch_size)
    if not text or not text.strip():
        raise DataError("the calibration text is empty: give a text file with some prose in it")
    windows = _windows(_tokenize(tokenizer, text), n_samples, seq_len, np.random.default_rng(seed))
    return [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}
        for chunk in torch.split(windows, batch_size)
    ]


def _windows(ids: list[int], n_samples: int, seq_len: int, rng: np.random.Generator) -> torch.Tensor:
    """(n_samples, seq_len) windows of ``ids`` at random starts that leave one more token."""
    if len(ids) < seq_len + 1:
        raise DataError(
            f"the text has {len(ids)} tokens, fewer than the {seq_len + 1} one window of {seq_len} needs: "
            "give a longer text or a shorter sequence length"
        )
    tokens = torch.tensor(ids, dtype=torch.long)
    starts = rng.integers(0, len(ids) - seq_len, size=n_samples)
    return torch.stack([tokens[s : s + seq_len] for s in starts])


def domain_text_batches(tokenizer, domain: str | None, n_samples: int, seq_len: int, seed: int = 0,
                        batch_size: int = BATCH_SIZE) -> list[dict[str, torch.Tensor]]:
    """Calibration windows from a built-in text domain, or from every domain in equal shares
    (``domain`` None or "mix"; windows in domain order). Each domain draws with its own
    generator (``corpora.seeded``), so one domain's windows do not depend on the others'."""
    n_samples = _positive_int("number of samples", n_samples)
    seq_len = _positive_int("sequence length", seq_len)
    batch_size = _positive_int("batch size", batch_size)
    domain = corpora.check_domain(domain, "text")
    names = corpora.domains("text") if domain == corpora.MIX else (domain,)
    parts = [_windows(_domain_ids(tokenizer, d, "calibration"), n, seq_len, corpora.seeded(seed, d))
             for d, n in zip(names, shares(n_samples, len(names))) if n]
    windows = torch.cat(parts)
    return [{"input_ids": chunk, "attention_mask": torch.ones_like(chunk)} for chunk in torch.split(windows, batch_size)]


MAX_TEXT_BYTES = 32 * 1024**2
"""The largest text file read for calibration or evaluation. The built-in calibration text is
0.3 MB and the default calibration needs 4k tokens, so 32 MB (a few novels) is far more than
any run uses; tokenizing it takes about a minute and a few hundred MB for the token list,
which keeps a path typed into the app (or ``--calib-source /dev/zero``) from eating the
machine's memory."""


def _text_from_bytes(raw: bytes, what: str) -> str:
    """``raw`` as UTF-8 text (a BOM allowed), or a one-line DataError naming ``what``."""
    if b"\x00" in raw[:65536]:
        raise DataError(f"{what} looks binary, not text: give a UTF-8 text file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{what} is not UTF-8 text: convert it to UTF-8 or give another file") from None
    if not text.strip():
        raise DataError(f"{what} is empty: give a text file with some prose in it")
    return text


def _read_user_file(p: Path, what: str, max_bytes: int, noun: str, kind: str, hint: str) -> bytes:
    """The bytes of a file the user named: a regular file of at most ``max_bytes``, read with
    ``oats.untrusted.read_capped`` (no FIFO that blocks, no device that never ends); DataError
    otherwise. ``noun`` ("text file"), ``kind`` ("a text file") and ``hint`` word the refusals."""
    try:
        untrusted.regular_file(p)
    except FileNotFoundError:
        raise DataError(f"{noun} {what} does not exist: check the path") from None
    except PermissionError:
        raise DataError(f"cannot read {what} (permission denied): check its permissions") from None
    except untrusted.BadFile as exc:
        if p.is_dir():
            raise DataError(f"{what} is a folder, not {kind}: {hint}") from None
        raise DataError(f"{what} is not {kind} ({exc}): {hint}") from None
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a loop of links
        raise DataError(f"{what} cannot be opened ({getattr(exc, 'strerror', None) or exc}): check the path") from None
    try:
        return untrusted.read_capped(p, max_bytes)
    except untrusted.BadFile as exc:
        raise DataError(f"{what} is too large ({exc}): give a smaller file") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} ({exc.strerror or exc}): check its permissions") from None


def read_text_file(path: str | os.PathLike) -> str:
    """The contents of a UTF-8 text file; DataError if missing, unreadable, binary, empty, not a
    regular file (a folder, FIFO, device or socket) or larger than ``MAX_TEXT_BYTES``."""
    p = _user_path(path)
    raw = _read_user_file(p, repr(str(p)), MAX_TEXT_BYTES, "text file", "a text file",
                          "give the path of a UTF-8 text file")
    return _text_from_bytes(raw, repr(str(p)))


def _user_path(path: str | os.PathLike) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "~nobody/x": no such user, so the path is taken literally
        return Path(path)


# Sentences: prose paragraphs only (indented blocks are code or grammar), split after . ! ?
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
MIN_SENTENCE_WORDS = 6
MAX_SENTENCE_WORDS = 60


def split_sentences(text: str) -> list[str]:
    """Sentences of ``MIN_SENTENCE_WORDS``..``MAX_SENTENCE_WORDS`` words from prose paragraphs.

    Indented blocks (code, grammar rules) and underlines of headings are skipped; line breaks
    inside a paragraph are joined. Duplicates are dropped, order is kept.
    """
    sentences: list[str] = []
    seen: set[str] = set()
    for para in re.split(r"\n\s*\n", text):
        lines = [ln for ln in para.splitlines() if ln.strip()]
        if not lines or any(ln.startswith((" ", "\t")) for ln in lines):
            continue
        if len(lines) == 2 and set(lines[1].strip()) <= set("*=-~^#"):
            continue  # a heading and its underline
        flat = " ".join(ln.strip() for ln in lines)
        for sentence in _SENTENCE_END.split(flat):
            sentence = sentence.strip()
            n_words = len(sentence.split())
            letters = sum(c.isalpha() for c in sentence)
            if not (MIN_SENTENCE_WORDS <= n_words <= MAX_SENTENCE_WORDS):
                continue
            if letters < 0.6 * len(sentence) or sentence in seen:
                continue
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


def code_snippets(text: str) -> list[str]:
    """Blank-line separated chunks of source of ``MIN_SENTENCE_WORDS``..``MAX_SENTENCE_WORDS``
    words (what a sentence is for the code domain), duplicates dropped, order kept."""
    out: list[str] = []
    seen: set[str] = set()
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if MIN_SENTENCE_WORDS <= len(para.split()) <= MAX_SENTENCE_WORDS and para not in seen:
            seen.add(para)
            out.append(para)
    return out


def _units(domain: str, body: str) -> list[str]:
    return code_snippets(body) if corpora.TEXT_DOMAINS[domain].kind == "code" else split_sentences(body)


@functools.lru_cache(maxsize=None)
def _domain_sentences(domain: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    calib = _units(domain, corpora.text(domain, "calibration"))
    seen = set(calib)
    return tuple(calib), tuple(s for s in _units(domain, corpora.text(domain, "evaluation")) if s not in seen)


def calibration_sentences(domain: str = "manual") -> list[str]:
    """Sentences of a text domain's calibration part (code snippets for the code domain);
    disjoint from ``evaluation_sentences(domain)``."""
    return list(_domain_sentences(domain)[0])


def evaluation_sentences(domain: str = "manual") -> list[str]:
    """Sentences of a text domain's evaluation part, minus any that also occur in calibration."""
    return list(_domain_sentences(domain)[1])


def pick_sentences(sentences: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` of ``sentences`` at random without repeats (repeating only when there are fewer)."""
    pick = rng.choice(len(sentences), size=min(n, len(sentences)), replace=False)
    if n > len(sentences):  # more samples than sentences: repeat, never fail
        pick = np.concatenate([pick, rng.choice(len(sentences), size=n - len(sentences))])
    return [sentences[i] for i in pick]


def sentence_batches(
    tokenizer,
    sentences: Sequence[str],
    batch_size: int = BATCH_SIZE,
    max_length: int = ENCODER_MAX_LENGTH,
) -> list[dict[str, torch.Tensor]]:
    """Padded batches of sentences for encoders, in the given order.

    Each dict holds what the tokenizer returns (``input_ids``, ``attention_mask`` and, for
    BERT, ``token_type_ids``), each of shape (b, longest sentence of the batch in tokens,
    at most ``max_length``); padded positions have attention_mask 0.
    """
    batch_size = _positive_int("batch size", batch_size)
    max_length = _positive_int("maximum length", max_length)
    sentences = [s for s in sentences if isinstance(s, str) and s.strip()]
    if not sentences:
        raise DataError("no sentences to encode: give a text file with some prose in it")
    if getattr(tokenizer, "pad_token", None) is None:
        raise DataError("the tokenizer has no padding token, so sentences cannot be batched: set tokenizer.pad_token")
    batches = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(
            list(sentences[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        batches.append({k: v for k, v in enc.items() if isinstance(v, torch.Tensor)})
    return batches


# --------------------------------------------------------------------------------------
# Images


def _rgb(array: np.ndarray) -> np.ndarray:
    """Any 2-D/3-D image array as contiguous H x W x 3 uint8."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        hi = 1.0 if a.max() <= 1.0 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    elif a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise DataError(f"an image array of shape {tuple(np.shape(array))} is not H x W x 3: give an RGB image")
    return np.ascontiguousarray(a)


@functools.lru_cache(maxsize=1)
def _bundled() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data as sk
    from PIL import Image
    from sklearn.datasets import load_sample_images

    images: dict[str, np.ndarray] = {}
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "camera",
        "hubble_deep_field",
        "retina",
        "immunohistochemistry",
        "coins",
        "moon",
    ):
        try:
            images[name] = _rgb(getattr(sk, name)())
        except Exception:  # noqa: BLE001 - some skimage builds fetch files on demand
            pass
    try:
        images["motorcycle"] = _rgb(sk.stereo_motorcycle()[0])
    except Exception:  # noqa: BLE001
        pass
    try:
        sample = load_sample_images()
        for fname, img in zip(sample.filenames, sample.images):
            images[Path(fname).stem] = _rgb(img)
    except Exception:  # noqa: BLE001
        pass
    try:
        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as fh:
            images["grace_hopper"] = _rgb(np.asarray(Image.open(fh).convert("RGB")))
    except Exception:  # noqa: BLE001
        pass
    for a in images.values():
        a.setflags(write=False)  # cached and shared: nobody may change them
    return images


def bundled_images() -> dict[str, np.ndarray]:
    """The photos shipped with scikit-image, scikit-learn and matplotlib, as RGB uint8.

    Returns name -> read-only array of shape (H, W, 3): astronaut, chelsea (a cat), coffee,
    rocket, camera, hubble_deep_field, retina, immunohistochemistry, coins, moon, motorcycle,
    china, flower, grace_hopper (grey ones are repeated over three channels). Loaded once.
    """
    images = _bundled()
    if not images:
        raise DataError("no bundled images could be read: reinstall scikit-image, or give an image folder")
    return dict(images)


@functools.lru_cache(maxsize=None)
def _skimage_domain(domain: str) -> dict[str, np.ndarray]:
    import skimage.data as sk

    images = {}
    for name in corpora.image_names(domain):
        try:
            # binary_blobs draws new blobs on every call unless given a seed: without one the
            # drawings calibration set, and so every ViT run on it, changed from process to process
            args = {"rng": 0} if name == "binary_blobs" else {}
            images[name] = _rgb(getattr(sk, name)(**args))
        except Exception:  # noqa: BLE001 - some skimage builds fetch files on demand
            pass
    for a in images.values():
        a.setflags(write=False)
    return images


def domain_images(domain: str, part: str | None = None) -> dict[str, np.ndarray]:
    """The images of a built-in image domain (``oats.corpora.IMAGE_DOMAINS``): all of them, or
    the "calibration" or "evaluation" part (no image is in both)."""
    if domain not in corpora.IMAGE_DOMAINS:
        raise ConfigError(f"unknown image domain {domain!r}: choose one of {', '.join(corpora.IMAGE_DOMAINS)}")
    images = _bundled() if domain == "photos" else _skimage_domain(domain)
    if len(images) < 2:
        raise DataError(f"the {domain} images could not be read: reinstall scikit-image, or give an image folder")
    if part is None:
        return dict(images)
    calib, held = corpora.split_images(list(images))
    if part not in ("calibration", "evaluation"):
        raise ConfigError(f"unknown part {part!r}: expected 'calibration' or 'evaluation'")
    return {n: images[n] for n in (calib if part == "calibration" else held)}


def _describe(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return repr(str(src))
    return "the given data"


MAX_IMAGE_BYTES = 64 * 1024**2
"""The largest image file read: a 36-megapixel JPEG is about 15 MB, a PNG of it under 100 MB
at worst; the pixel cap below is what bounds the memory, this only bounds the read."""

MAX_IMAGE_PIXELS = 36_000_000
"""The most pixels an image may have (6000 x 6000, or a 24-megapixel camera's 6000 x 4000 with
room to spare). Decoded, an image costs 3 bytes a pixel as RGB and up to three copies while it
is converted (about 330 MB at this cap); calibration crops it down to 224 px anyway. A
12000 x 12000 PNG of one colour is 140 KB on disk and would take 430 MB as RGB, 1.3 GB with its
copies: it is refused from its header, before any pixel is decoded."""

MAX_FOLDER_ENTRIES = 100_000
"""The most entries (files and folders) an image folder scan visits; ImageNet's validation
set is 50k files. A scan that reaches it stops and says so instead of walking ``/`` or ``/proc``."""


def load_image(src: str | os.PathLike | bytes | io.IOBase, what: str | None = None) -> np.ndarray:
    """Read one image (path, bytes or binary file object) as RGB uint8 of shape (H, W, 3).

    A path must be a regular file of at most ``MAX_IMAGE_BYTES``; every image is refused
    (DataError, one line) when its header declares more than ``MAX_IMAGE_PIXELS`` pixels,
    before any pixel is decoded. ``what`` names the image in messages (default: its path).
    """
    from PIL import Image

    what = what or _describe(src)
    if isinstance(src, (str, os.PathLike)):
        p = _user_path(src)
        fh: Any = io.BytesIO(_read_user_file(p, what, MAX_IMAGE_BYTES, "image", "an image", "give a PNG or JPEG file"))
    elif isinstance(src, (bytes, bytearray, memoryview)):
        fh = io.BytesIO(bytes(src))
    else:
        fh = src
    unreadable = f"{what} is not an image that can be read (corrupt or unknown format): give a PNG or JPEG file"
    try:
        with warnings.catch_warnings():
            # Pillow warns (on stderr) from 89 megapixels; the stricter cap below refuses in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)  # reads the header only
        with img:
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise DataError(f"{what} is {w} x {h} pixels, over the limit of {MAX_IMAGE_PIXELS // 1_000_000} "
                                "megapixels: downscale it (2048 px on the long side is plenty) and try again")
            img.load()
            rgb = img.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{what} has too many pixels to decode safely: downscale it to under "
                        f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels") from exc
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file trips any of Pillow's decoders (struct.error, ...)
        raise DataError(unreadable) from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def image_files(path: str | os.PathLike) -> list[Path]:
    """The image files under ``path`` (by suffix, sorted); DataError if there is no such folder or no image.

    The walk never follows links to folders, skips what is not a regular file (FIFOs, devices,
    sockets, links to them) and entries that cannot be read or vanish while it runs, and stops
    with a DataError after ``MAX_FOLDER_ENTRIES`` entries.
    """
    root = _user_path(path)
    shown = repr(str(root))
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise DataError(f"image folder {shown} does not exist: check the path") from None
    except PermissionError:
        raise DataError(f"cannot read image folder {shown} (permission denied): check its permissions") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"image folder {shown} cannot be opened ({getattr(exc, 'strerror', None) or exc}): "
                        "check the path") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"{shown} is not a folder: give a folder of images (or use the bundled images)")
    errors: list[OSError] = []
    files: list[Path] = []
    seen = 0
    for folder, dirs, names in os.walk(root, onerror=errors.append, followlinks=False):
        seen += len(dirs) + len(names)
        if seen > MAX_FOLDER_ENTRIES:
            raise DataError(f"folder {shown} holds more than {MAX_FOLDER_ENTRIES:,} files and folders: give a "
                            "smaller folder of images (a few hundred are plenty for calibration)")
        for n in names:
            if not n.lower().endswith(IMAGE_SUFFIXES):
                continue
            f = Path(folder) / n
            try:
                if stat.S_ISREG(os.stat(f).st_mode):
                    files.append(f)
            except (OSError, ValueError):  # vanished, unreadable, a dangling link
                continue
    if not files and errors and Path(errors[0].filename or "") == root:
        raise DataError(f"cannot read image folder {shown} ({errors[0].strerror or errors[0]}): check its "
                        "permissions")
    if not files:
        raise DataError(
            f"folder {shown} has no images ({', '.join(IMAGE_SUFFIXES)}): "
            "put some there, or use the bundled images"
        )
    return sorted(files)


def load_image_folder(
    path: str | os.PathLike, max_images: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Every image under ``path`` (sub-folders too, ImageNet style) as RGB uint8 arrays.

    Files are taken by suffix (``IMAGE_SUFFIXES``) in sorted order; with ``max_images``, a
    random subset of that many (``default_rng(seed)``), so a large folder is not read whole.
    Keys are paths relative to ``path``. Raises DataError if the folder does not exist,
    holds no image, or one of the chosen files is not a readable image.
    """
    root = Path(path).expanduser()
    files = image_files(root)
    if max_images is not None and len(files) > _positive_int("maximum number of images", max_images):
        pick = np.random.default_rng(seed).choice(len(files), size=max_images, replace=False)
        files = [files[i] for i in sorted(pick)]
    return {str(p.relative_to(root)): load_image(p) for p in files}


def _image_spec(loaded: Any) -> tuple[int, tuple, tuple]:
    if isinstance(loaded, tuple) and len(loaded) == 3:
        size, mean, std = loaded
    else:
        size = getattr(loaded, "image_size", None)
        mean = getattr(loaded, "image_mean", None)
        std = getattr(loaded, "image_std", None)
    if not size or mean is None or std is None:
        raise DataError("this model takes no images (no image size or normalisation): use text data instead")
    return int(size), tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _crop_box(h: int, w: int, rng: np.random.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random crop covering ``scale`` of the area with aspect ``ratio`` (RandomResizedCrop)."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw = int(round(np.sqrt(target * aspect)))
        ch = int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    side = min(h, w)  # fall back to a centred square
    return (h - side) // 2, (w - side) // 2, side, side


def image_batches(
    loaded: LoadedModel | tuple[int, Sequence[float], Sequence[float]],
    images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    n_samples: int,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    augment: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Model-ready crops of ``images``: list of ``{"pixel_values": (b, 3, S, S) float32}``.

    ``loaded`` gives S (image size) and the normalisation (mean, std on the 0..1 scale),
    either as a LoadedModel or as a tuple (S, mean, std). Images are visited in a shuffled
    round robin (each image once before any repeats). With ``augment`` (calibration), each
    sample is a random resized crop (35-100% of the area, aspect 3/4..4/3) flipped
    left-right half of the time; without it (evaluation), the centred square, resized.
    Deterministic for a given seed.
    """
    from PIL import Image

    size, mean, std = _image_spec(loaded)
    n_samples = _positive_int("number of samples", n_samples)
    batch_size = _positive_int("batch size", batch_size)
    arrays = list(images.values()) if isinstance(images, Mapping) else list(images)
    if not arrays:
        raise DataError("no images given: use the bundled images or an image folder")
    arrays = [_rgb(a) for a in arrays]
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < n_samples:
        order.extend(rng.permutation(len(arrays)).tolist())
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    samples = []
    for idx in order[:n_samples]:
        a = arrays[idx]
        h, w = a.shape[:2]
        if augment:
            top, left, ch, cw = _crop_box(h, w, rng)
            flip = bool(rng.random() < 0.5)
        else:
            side = min(h, w)
            top, left, ch, cw = (h - side) // 2, (w - side) // 2, side, side
            flip = False
        crop = Image.fromarray(a[top : top + ch, left : left + cw]).resize((size, size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
        if flip:
            x = x.flip(-1)
        samples.append((x - mean_t) / std_t)
    stacked = torch.stack(samples).contiguous()
    return [{"pixel_values": chunk} for chunk in torch.split(stacked, batch_size)]


# --------------------------------------------------------------------------------------
# One call for the pipeline


def calibration_batches(
    loaded: LoadedModel,
    n_samples: int | None = None,
    seq_len: int | None = None,
    source: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    domain: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Calibration batches suited to the model's task.

    Without ``source``, the built-in data: the calibration part of one domain
    (``oats.corpora``), or with ``domain`` None / "mix" (the default) an equal share of each
    domain's calibration part. With ``source``, the user's text file or image folder (the
    domain is then ignored).

    - causal-lm: ``n_samples`` (default ``LM_N_SAMPLES``) random windows of ``seq_len``
      (default ``LM_SEQ_LEN``) tokens.
    - encoder: ``n_samples`` (default ``ENCODER_N_SAMPLES``) sentences drawn at random (code
      snippets for the code domain), padded per batch, truncated to ``seq_len`` (default
      ``ENCODER_MAX_LENGTH``) tokens.
    - vision: ``n_samples`` (default ``VISION_N_SAMPLES``) random crops of the images.
    """
    task = getattr(loaded, "task", None)
    if task in ("causal-lm", "encoder") and loaded.tokenizer is None:
        raise DataError("this model has no tokenizer, so text cannot be fed to it: load it with its tokenizer")
    if task == "causal-lm":
        n = LM_N_SAMPLES if n_samples is None else n_samples
        length = LM_SEQ_LEN if seq_len is None else seq_len
        if source is None:
            return domain_text_batches(loaded.tokenizer, domain, n, length, seed=seed, batch_size=batch_size)
        return text_batches(loaded.tokenizer, read_text_file(source), n, length, seed=seed, batch_size=batch_size)
    if task == "encoder":
        n = _positive_int("number of samples", ENCODER_N_SAMPLES if n_samples is None else n_samples)
        if source is not None:
            sentences = split_sentences(read_text_file(source))
            if not sentences:
                raise DataError(
                    f"no sentences of {MIN_SENTENCE_WORDS}-{MAX_SENTENCE_WORDS} words found in {str(source)!r}: "
                    "give a file with prose paragraphs"
                )
            picked = pick_sentences(sentences, n, np.random.default_rng(seed))
        else:
            name = corpora.check_domain(domain, "text")
            names = corpora.domains("text") if name == corpora.MIX else (name,)
            picked = [s for d, k in zip(names, shares(n, len(names))) if k
                      for s in pick_sentences(calibration_sentences(d), k, corpora.seeded(seed, d))]
        return sentence_batches(
            loaded.tokenizer, picked, batch_size=batch_size,
            max_length=ENCODER_MAX_LENGTH if seq_len is None else seq_len,
        )
    if task == "vision":
        n = _positive_int("number of samples", VISION_N_SAMPLES if n_samples is None else n_samples)
        if source is None:
            name = corpora.check_domain(domain, "images")
            names = corpora.domains("images") if name == corpora.MIX else (name,)
            parts = [image_batches(loaded, domain_images(d, "calibration"), k, seed=seed, batch_size=k)[0]
                     ["pixel_values"] for d, k in zip(names, shares(n, len(names))) if k]
            return [{"pixel_values": c} for c in torch.cat(parts).split(_positive_int("batch size", batch_size))]
        if _user_path(source).is_file():
            images = {Path(source).name: load_image(source)}
        else:
            images = load_image_folder(source, max_images=max(n, 1), seed=seed)
        return image_batches(loaded, images, n, seed=seed, batch_size=batch_size)
    raise DataError(f"no calibration data for task {task!r}: expected 'causal-lm', 'encoder' or 'vision'")


# --------------------------------------------------------------------------------------
# The user's files, checked before anything uses them


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
    # the same checks as a file named by its path: the pixel cap before decoding, strict UTF-8
    if kind == "image":
        load_image(bytes(data), what=f"upload '{name}'")
    elif kind == "text":
        _text_from_bytes(bytes(data), f"upload '{name}'")
    else:
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
    if source is None or not str(source).strip():
        raise DataError(f"no {kind} given: upload or type one, or use the built-in calibration data")
    if kind == "text file":
        read_text_file(source)
    elif kind == "image folder":
        files = image_files(source)
        load_image(files[0])
    else:
        raise ConfigError(f"unknown calibration source kind {kind!r}: expected 'text file' or 'image folder'")
