"""Models from local folders and the Hugging Face hub, loaded with transformers.

A folder saved with ``save_pretrained`` and a hub id both go through transformers'
``from_pretrained`` (safetensors first, else ``torch.load(weights_only=True)``); the task is
read from the config. The hub is tried from the local Hugging Face cache first, and the
network only when a quick probe finds it reachable.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from oats import untrusted
from oats.errors import ModelLoadError, OatsError
from oats.models.guard import LAYER_KEYS as LAYER_FIELDS
from oats.models.guard import check_config_memory, config_parameters
from oats.models.loaded import DEFAULT_RANK_RATIO, LoadedModel, finish, one_line, quiet_transformers
from oats.models.presets import preset_names
from oats.models.vision import IMAGENET_MEAN, IMAGENET_STD, is_vision_config
from oats.models.adapters import get_adapter, set_submodule
from oats.models.stored import StoredHead, keep_stored_embeddings
from oats.models.weights import DiskWeights, check_safetensors_file, safetensors_numel, tensor_count
from oats.resources import check_memory

_HUB_PROBE_TIMEOUT_S = 4.0


def hub_cached(name: str) -> bool:
    """Whether the local Hugging Face cache holds this repository's config.json."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id=name, filename="config.json")
    except Exception:  # noqa: BLE001 - a malformed cache is "not cached"
        return False
    return isinstance(found, str)


MAX_CONFIG_BYTES = 16 * 1024**2
"""config.json is a few KB; the largest real ones (ImageNet-22k label names) are about 1 MB."""


def read_config(name: str, path: Path) -> dict:
    """A model folder's config.json as a dict, read as untrusted input (``oats.untrusted``):
    a regular file of at most ``MAX_CONFIG_BYTES``, strict JSON; one-line ModelLoadError otherwise."""
    file = path / "config.json"
    if not os.path.lexists(file):
        raise ModelLoadError(
            f"folder {name!r} has no config.json: give a folder saved with save_pretrained "
            "(config.json plus model.safetensors)"
        )
    try:
        config = untrusted.read_json(file, max_bytes=MAX_CONFIG_BYTES)
    except FileNotFoundError:  # a dangling link
        raise ModelLoadError(f"config.json in folder {name!r} is a broken link: save the model again with "
                             "save_pretrained") from None
    except untrusted.BadFile as exc:
        raise ModelLoadError(f"config.json in folder {name!r} cannot be used ({exc}): fix it, or save the model "
                             "again with save_pretrained") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read config.json in folder {name!r} ({exc.strerror or exc}): check its "
                             "permissions") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"config.json in folder {name!r} is not a JSON object: fix it, or save the model "
                             "again with save_pretrained")
    return config


def _one_block(config: Any) -> dict:
    """``config`` (a dict or a transformers config) as a dict that declares a single block: what
    the from-disk mode holds in memory at once (embeddings, one block, position buffers)."""
    d = dict(config) if isinstance(config, dict) else config.to_dict()
    for cfg in (d, d.get("text_config")):
        if isinstance(cfg, dict):
            for key in LAYER_FIELDS:
                if key in cfg:
                    cfg[key] = 1
    return d


def check_config_fits(name: str, config: Any, from_disk: bool = False, viewing: bool = False) -> None:
    """Refuse, before anything is allocated, a config that declares more than fits in memory.

    In memory: every weight the config declares, in fp32. From disk (block by block): the
    embeddings, one block and the position buffers, the most the mode holds at once (the head
    is not counted: it is often tied to the embeddings). Sizes that are not plausible numbers
    (negative, text, over 2^31) are refused by ``config_parameters`` itself.
    """
    if from_disk and viewing:  # a run opened lazily (oats.runs.lazy): no block is ever held whole
        config_parameters(config)
        check_config_memory(_one_block(config), f"opening a run of {name!r} with its model on disk (the embeddings "
                                                "in their stored dtype and a layer or two at a time)", bytes_per_value=2)
    elif from_disk:
        config_parameters(config)  # every declared size checked, the block count included
        check_config_memory(_one_block(config), f"compressing {name!r} from disk (one block and the embeddings "
                                                "in fp32, as its config.json declares them)")
    else:
        check_config_memory(config, f"loading {name!r} in fp32 (as its config.json declares it)")


def check_local_folder(name: str, path: Path, from_disk: bool = False, viewing: bool = False) -> None:
    """A model folder has a sound config.json, sound safetensors files that hold tensors, and
    fits in memory in fp32 (from_disk: it is compressed block by block from its files, so only
    one block and the embeddings need to fit). Nothing is allocated and no code of the folder
    runs: config.json and the safetensors headers are read as untrusted files."""
    config = read_config(name, path)
    config_parameters(config)  # every size it declares is a plausible number
    numel = 0
    for f in sorted(path.glob("*.safetensors")):
        what = f"weights file '{f.name}' in folder {name!r}"
        header = check_safetensors_file(f, what=what)
        if not tensor_count(header):
            # transformers would build the model from random values and say nothing
            raise ModelLoadError(f"{what} holds no tensors: replace it with the model's own .safetensors weights")
        numel += safetensors_numel(header)
    if from_disk:
        check_config_fits(name, config, from_disk=True, viewing=viewing)
        if not numel:
            raise ModelLoadError(f"folder {name!r} has no .safetensors weights: compressing from disk reads only "
                                 "safetensors files")
        return
    # the model is loaded in fp32: 4 bytes a parameter, whatever the file's dtype
    check_memory({"weights": 4 * numel}, what=f"loading {name!r} in fp32")
    check_config_fits(name, config)


def task_for(config) -> str:
    """"causal-lm", "vision" or "encoder" for a transformers config."""
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) and not a.startswith("Bert") for a in archs):
        return "causal-lm"
    if is_vision_config(config):
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
    """Load config, weights and tokenizer with transformers; exceptions propagate.

    ``trust_remote_code`` is always passed, False unless the user set it: left unset,
    transformers asks y/N on the terminal for a config with ``auto_map`` (and runs the folder's
    code on "y", or hangs where nobody can answer).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageClassification

    common: dict[str, Any] = {"local_files_only": local_only, "trust_remote_code": bool(trust_remote_code)}
    config = AutoConfig.from_pretrained(source, **common)
    check_config_fits(name, config)  # before from_pretrained allocates what the config declares
    task = task_for(config)
    archs = list(getattr(config, "architectures", None) or [])
    kwargs: dict[str, Any] = dict(common, dtype=torch.float32, output_loading_info=True)
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
        model, info = auto.from_pretrained(source, use_safetensors=True, **kwargs)
    except OSError as exc:
        if "safetensors" not in str(exc):
            raise
        # No safetensors file: transformers then reads the .bin with torch.load(weights_only=True).
        model, info = auto.from_pretrained(source, use_safetensors=False, weights_only=True, **kwargs)
    check_loading_info(name, model, info)

    loaded = LoadedModel(name=name, model=finish(model), task=task, default_rank_ratio=DEFAULT_RANK_RATIO[task])
    if task == "vision":
        loaded.image_size, loaded.image_mean, loaded.image_std = _image_settings(source, config, local_only)
    else:
        _attach_tokenizer(loaded, name, source, common)
    return loaded


# A pooler is what AutoModel adds to BERT-style encoders; checkpoints trained for another head
# (roberta-base, every masked-LM checkpoint) lack it, and oats neither compresses nor reads it.
_MAY_BE_MISSING = ("pooler",)


def check_loading_info(name: str, model, info: dict) -> None:
    """Refuse a model that ``from_pretrained`` completed with random values: weights of the
    architecture the files lack (tied weights and buffers the model computes itself are not
    reported missing) or hold with another shape. Compressing random weights would give a run
    that looks fine and means nothing."""
    missing = sorted(k for k in info.get("missing_keys", ()) if not set(k.split(".")) & set(_MAY_BE_MISSING))
    mismatched = list(info.get("mismatched_keys", ()))
    if missing:
        total = len(model.state_dict())
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelLoadError(f"the weight files of {name!r} lack {len(missing)} of the model's {total} weights "
                             f"({shown}), which would start random: use the model's complete weight files")
    if mismatched:
        first = mismatched[0][0] if isinstance(mismatched[0], (tuple, list)) else mismatched[0]
        raise ModelLoadError(f"{len(mismatched)} weights of {name!r} do not have the shape config.json declares "
                             f"(first: {first}): use the model's own config.json and weight files")


def _attach_tokenizer(loaded: LoadedModel, name: str, source: str, common: dict) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"{name!r} has no usable tokenizer ({one_line(exc, 120)}): save the tokenizer next to the model"
        ) from exc
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token  # needed to pad batches of sentences
    loaded.tokenizer = tokenizer


def load_local_from_disk(name: str, path: Path, trust_remote_code: bool = False, viewing: bool = False) -> LoadedModel:
    """A text model folder for the larger-than-memory mode: the model is built on the meta
    device; the embeddings and the final norm are read from the safetensors files now, every
    transformer block stays on disk (``loaded.disk`` reads one when its turn comes).

    Embedding tables keep the files' dtype (bf16/fp16: half the memory of fp32) and return
    fp32 (``oats.models.stored``), so the blocks compute exactly as in the model loaded whole
    in fp32; an fp32 folder gives the same model as before. The LM head is not needed while
    compressing and stays on the meta device: ``attach_stored_head`` gives it for evaluation."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True,
                                            trust_remote_code=bool(trust_remote_code))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(_explain(name, exc, f"from folder {path}", "check config.json")) from exc
    check_config_fits(name, config, from_disk=True, viewing=viewing)  # before the architecture's buffers are allocated
    task = task_for(config)
    if task == "vision":
        raise ModelLoadError(f"{name!r} is a vision model: compressing from disk supports text models (causal LMs "
                             "and encoders); load it whole instead")
    disk = DiskWeights(path)
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModel
    try:
        with quiet_transformers(), init_empty_weights(include_buffers=False):
            model = auto.from_config(config, dtype=torch.float32, trust_remote_code=bool(trust_remote_code))
        model.eval()
        block_paths = [p for p, _ in get_adapter(model).blocks(model)]
    except OatsError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(_explain(name, exc, f"from folder {path}")) from exc
    head = model.get_output_embeddings()
    for mpath, module in model.named_modules():
        if any(mpath == b or mpath.startswith(b + ".") for b in block_paths) or module is head:
            continue
        disk.load(module, mpath, recurse=False, dtype=None if isinstance(module, torch.nn.Embedding) else "float32")
    keep_stored_embeddings(model)
    loaded = LoadedModel(name=name, model=model, task=task, default_rank_ratio=DEFAULT_RANK_RATIO[task],
                         source=f"local folder {path.resolve()} (blocks read from disk one at a time)", disk=disk)
    _attach_tokenizer(loaded, name, str(path), {"local_files_only": True,
                                               "trust_remote_code": bool(trust_remote_code)})
    return loaded


def attach_stored_head(loaded: LoadedModel) -> StoredHead | None:
    """Give a from-disk causal LM its head for evaluation, in the files' dtype: a ``StoredHead``
    (fp32 logits from row slices of the stored weight) in place of the meta one. A tied head
    shares the embedding table (no second copy); an untied one is read from the files. None
    for a model without a head (an encoder); the head already attached is returned as is."""
    model = loaded.model
    head = model.get_output_embeddings()
    if head is None or isinstance(head, StoredHead):
        return head
    if loaded.disk is None:
        raise ModelLoadError(f"{loaded.name!r} was loaded whole: its head is in memory already")
    path = next(p for p, m in model.named_modules() if m is head)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    key = f"{path}.weight"
    weight = model.get_input_embeddings().weight if tied else loaded.disk.tensor(key)
    bias = loaded.disk.tensor(f"{path}.bias") if getattr(head, "bias", None) is not None else None
    if tuple(weight.shape) != tuple(head.weight.shape):
        raise ModelLoadError(f"tensor {key!r} has shape {tuple(weight.shape)}, the model expects "
                             f"{tuple(head.weight.shape)}: the files do not match config.json")
    stored = StoredHead(weight, bias)
    set_submodule(model, path, stored)
    return stored


def _explain(name: str, exc: BaseException, where: str, hint: str = "check the files in that folder") -> str:
    """One line for an exception transformers raised while loading ``name``."""
    text = one_line(exc)
    if "trust_remote_code" in str(exc):
        return (
            f"{name!r} needs custom code from its repository: pass trust_remote_code "
            "(--trust-remote-code) only if you trust that code"
        )
    if "safetensors" in str(exc) and "weights_only" not in str(exc):
        return f"{name!r} has no weights that load safely ({text}): provide model.safetensors"
    return f"could not load {name!r} {where} ({text})" + (f": {hint}" if hint else "")


def load_local(name: str, path: Path, trust_remote_code: bool) -> LoadedModel:
    """A folder that passed ``check_local_folder`` (via ``oats.models.zoo.check_model_name``)."""
    try:
        loaded = _from_transformers(name, str(path), trust_remote_code, local_only=True)
    except OatsError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(_explain(name, exc, f"from folder {path}")) from exc
    loaded.source = f"local folder {path.resolve()}"
    return loaded


def offline_message(name: str) -> str:
    return (
        f"could not download {name!r} from the Hugging Face hub (no network?): "
        f"use a preset ({preset_names()}) or a local directory"
    )


def hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
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


def load_hub(name: str, trust_remote_code: bool) -> LoadedModel:
    # The local Hugging Face cache first: it works offline and costs no network round trip.
    try:
        with quiet_transformers():
            loaded = _from_transformers(name, name, trust_remote_code, local_only=True)
        loaded.source = f"Hugging Face hub {name} (local cache)"
        return loaded
    except OatsError:
        raise
    except Exception as exc:  # noqa: BLE001
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(_explain(name, exc, "", "")) from exc
    if not hub_reachable():
        raise ModelLoadError(offline_message(name))
    try:
        loaded = _from_transformers(name, name, trust_remote_code, local_only=False)
    except OatsError:
        raise
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if "is not a local folder and is not a valid model identifier" in text or "404" in text:
            raise ModelLoadError(
                f"{name!r} is not a model on the Hugging Face hub (or it is private): "
                f"check the id, or use a preset ({preset_names()})"
            ) from exc
        if "connect" in text.lower() or "timed out" in text.lower():
            raise ModelLoadError(offline_message(name)) from exc
        raise ModelLoadError(_explain(name, exc, "from the Hugging Face hub", "")) from exc
    loaded.source = f"Hugging Face hub {name}"
    return loaded
