"""Deployable exports of a compressed run, and the loader that turns one back into a model.

Two layouts, both in one folder with ``oats_export.json`` (what it is, how to load it):

``folded``   an ordinary model folder: each replaced weight becomes the one dense matrix
             S + U V. A transformers model is a ``save_pretrained`` folder (config.json,
             model.safetensors, the tokenizer): ``AutoModel*.from_pretrained`` loads it with no
             oats import. A timm model is timm's own folder (config.json with the
             architecture and its arguments, model.safetensors):
             ``timm.create_model("local-dir:DIR", pretrained=True)``. Same quality, dense speed.
``sparse``   config.json (the architecture), the tokenizer, and ``sparse_lowrank.safetensors``
             holding every weight that stays dense (embeddings, norms, heads) plus, per replaced
             layer, S in CSR8 form (``oats/deploy/kernels.py``: int32 pointers per row and
             256-column segment, 8-bit column offsets, values), U, V and the bias. Exports of
             format 1 hold S in CSR (int32 row pointers, 16/32-bit column indices) and load
             too. ``load_compressed`` builds the architecture without
             allocating its linears (meta tensors) and puts ``SparseLowRankLinear`` modules in
             their place: no dense S and no original weight is ever held.

Neither layout carries the original weights, the second moments or anything else the
analysis app keeps: those stay in the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from oats.compress.records import CompressionRun
from oats.core.linear import OatsLinear, oats_layers
from oats.deploy import kernels
from oats.deploy.linear import KERNELS, SparseLowRankLinear, default_kernel, pack_csr
from oats.deploy.plan import GOALS, apply_plan, check_tokens
from oats.errors import ConfigError, ModelLoadError, OatsError, ResourceError, RunError
from oats.models.adapters import set_submodule
from oats.models.guard import MAX_DIMENSION, check_config_memory
from oats.models.loaded import BUILD_LOCK, quiet_transformers
from oats.models.weights import check_safetensors_file
from oats.resources import check_memory
from oats.runs.folders import check_run_folder, load_run, write_error
from oats.runs.info import RunInfo
from oats.untrusted import BadFile, inside, read_json, regular_file

__all__ = ["DTYPES", "EXPORT_FILE", "LAYOUTS", "SPARSE_FILE", "block_linear_bytes", "check_dtype", "check_layout",
           "check_out_folder",
           "dense_linear_bytes", "export_folder_bytes", "export_run", "export_run_folder", "load_compressed",
           "read_export_info", "size_report", "sparse_modules"]

EXPORT_FILE = "oats_export.json"
SPARSE_FILE = "sparse_lowrank.safetensors"
EXPORT_FORMAT = 2  # 2: S in CSR8 (format 1: CSR)
LAYOUTS = ("sparse", "folded")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
"""What an export's float tensors are written in (``--dtype``). bf16 halves the files; a
loaded export computes in fp32 either way (the values are cast up once, when loading)."""


# ----------------------------------------------------------------------------- checks


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown export format {layout!r}: use sparse (compressed S + U V, the default) "
                          "or folded (one dense matrix per layer, loads without oats)")
    return layout


def check_dtype(dtype: str) -> str:
    if not (isinstance(dtype, str) and dtype in DTYPES):
        raise ConfigError(f"unknown export dtype {_show(dtype)}: use fp32 (the default) or bf16 (half the size on "
                          "disk; loads and computes in fp32)")
    return dtype


def _cast(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """``state`` with its float tensors in ``dtype``; tensors that shared storage (a tied
    head) share the cast one, so the writers still store them once."""
    want = DTYPES[dtype]
    done: dict[tuple, torch.Tensor] = {}
    out = {}
    for k, t in state.items():
        if not t.is_floating_point() or t.dtype == want:
            out[k] = t
            continue
        key = (t.data_ptr(), t.numel(), tuple(t.shape), t.stride())
        if key not in done:
            done[key] = t.detach().to(want)
        out[k] = done[key]
    return out


def check_out_folder(out: str | Path, force: bool, protect: str | Path | None = None) -> Path:
    """The export folder, refused when it is a file, holds files (unless ``force``), or would
    replace ``protect`` (the run folder) or a folder above it."""
    out = Path(out)
    # (runs) a name too long, a file, a parent that cannot be made or written: one line before any loading
    check_run_folder(out, "--out", "export folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export folder '{out}' is a file: choose a folder for --out")
    if protect is not None:
        p, o = Path(protect).resolve(), out.resolve()
        if o == p or o in p.parents:
            raise ConfigError(f"export folder '{out}' would replace the run folder '{protect}': choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"export folder '{out}' exists and is not empty: choose another --out, or pass --force "
                          "to replace it")
    # (runs) --force replaces an earlier export, never a run or a folder of someone's files
    if out.is_dir() and (out / "manifest.json").exists():
        raise ConfigError(f"export folder '{out}' holds a run folder (manifest.json): choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_FILE).is_file():
        raise ConfigError(f"export folder '{out}' holds files but no oats export ({EXPORT_FILE}): --force replaces "
                          "only an earlier export; choose another --out")
    return out


def _kind(model: nn.Module) -> str:
    if type(model).__module__.startswith("timm"):
        return "timm"
    if getattr(model, "config", None) is not None and hasattr(model, "save_pretrained"):
        return "transformers"
    raise ConfigError(f"cannot export a {type(model).__name__}: only transformers and timm models can be rebuilt "
                      "from a folder (a model of your own code: use the run folder with oats.load_run)")


# ----------------------------------------------------------------------------- writing


def _skeleton_module_types(model: nn.Module, kind: str, paths: list[str]) -> dict[str, type]:
    """The module class each replaced path had before compression (nn.Linear, Conv1D, ...)."""
    with _empty_weights():
        if kind == "transformers":
            skel = type(model)(model.config)
        else:
            import timm
            skel = timm.create_model(model.pretrained_cfg.get("architecture"), pretrained=False,
                                     **_timm_args(model))
    return {p: type(skel.get_submodule(p)) for p in paths}


def _timm_args(model: nn.Module) -> dict:
    from timm.models._hub import get_model_args
    return dict(get_model_args(model))


def _is_conv1d(cls: type) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return False
    return issubclass(cls, Conv1D)


def _folded_module(m: OatsLinear, cls: type) -> nn.Module:
    w = m.effective_weight("both").detach()
    has_bias = m.bias is not None
    if not _is_conv1d(cls):
        new = nn.Linear(m.in_features, m.out_features, bias=has_bias)
        new.weight.data = w.clone()
    else:  # GPT-2's Conv1D: (d_in, d_out) weight
        new = cls(m.out_features, m.in_features)
        new.weight.data = w.t().contiguous()
        if not has_bias:
            new.bias = None
    if has_bias:
        new.bias.data = m.bias.detach().clone()
    return new.to(w.device)


@contextlib.contextmanager
def _swapped(model: nn.Module, new: dict[str, nn.Module]):
    """Put ``new`` modules at their paths for the duration, then the originals back."""
    old = {p: model.get_submodule(p) for p in new}
    try:
        for p, m in new.items():
            set_submodule(model, p, m)
        yield model
    finally:
        for p, m in old.items():
            set_submodule(model, p, m)


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors sharing storage (tied embeddings) are stored once; the others name the first."""
    out, aliases, seen = {}, {}, {}
    for k, t in state.items():
        key = (t.data_ptr(), t.numel(), tuple(t.shape), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        out[k] = t.detach().cpu().contiguous()
    return out, aliases


def _write_config(model: nn.Module, kind: str, folder: Path) -> None:
    if kind == "transformers":
        model.config.save_pretrained(folder)
    else:
        from timm.models._hub import save_config_for_hf
        save_config_for_hf(model, str(folder / "config.json"))


def _parts(run: CompressionRun, path: str, m: OatsLinear) -> tuple[list[torch.Tensor], list[list[int]] | None]:
    """The U of each part of a fused matrix (its rows, its rank columns), or [u] for a whole one."""
    recs = [r for r in run.layers if r.path == path]
    if not recs or all(r.rows is None for r in recs) or sum(r.rank for r in recs) != m.rank:
        return [m.u], None
    us, rows, start = [], [], 0
    for r in recs:
        a, b = r.rows if r.rows is not None else (0, m.out_features)
        us.append(m.u[a:b, start:start + r.rank])
        rows.append([a, b])
        start += r.rank
    return us, rows


def _write_sparse(run: CompressionRun, kind: str, folder: Path, dtype: str = "fp32") -> dict:
    model = run.model
    layers = oats_layers(model)
    tensors: dict[str, torch.Tensor] = {}
    meta = {}
    for path, m in layers.items():
        csr = pack_csr(m.sparse)
        ptr, offsets = kernels.csr_to_csr8(csr["crow_indices"], csr["col_indices"], m.out_features, m.in_features)
        packed = {"segment_ptr": ptr, "col_offsets": offsets, "values": csr["values"]}
        for k, t in packed.items():
            tensors[f"{path}.{k}"] = t
        us, rows = _parts(run, path, m)
        for i, u in enumerate(us):
            tensors[f"{path}.u{i}"] = u.detach().cpu().contiguous()
        tensors[f"{path}.v"] = m.v.detach().cpu().contiguous()
        if m.bias is not None:
            tensors[f"{path}.bias"] = m.bias.detach().cpu().contiguous()
        meta[path] = {"shape": [m.out_features, m.in_features], "rank": m.rank, "nnz": int(packed["values"].numel()),
                      "bias": m.bias is not None, "index": "csr8", "part_rows": rows}
    prefixes = tuple(p + "." for p in layers)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    rest, aliases = _dedupe(rest)
    clash = set(rest) & set(tensors)
    if clash:
        raise RunError(f"cannot export: tensor names clash ({sorted(clash)[0]})")
    save_file(_cast({**rest, **tensors}, dtype), str(folder / SPARSE_FILE))
    _write_config(model, kind, folder)
    return {"layers": meta, "aliases": aliases}


def _write_folded(model: nn.Module, kind: str, folder: Path, dtype: str = "fp32") -> dict:
    layers = oats_layers(model)
    types = _skeleton_module_types(model, kind, list(layers))
    folded = {p: _folded_module(m, types[p]) for p, m in layers.items()}
    with _swapped(model, folded):
        if kind == "transformers":
            state = None if dtype == "fp32" else _cast(model.state_dict(), dtype)
            model.save_pretrained(folder, safe_serialization=True, state_dict=state)
        else:
            state, _ = _dedupe(model.state_dict())
            save_file(_cast(state, dtype), str(folder / "model.safetensors"))
            _write_config(model, kind, folder)
    return {"layers": {p: {"shape": [m.out_features, m.in_features], "rank": m.rank,
                           "nnz": int(torch.count_nonzero(m.sparse))} for p, m in layers.items()}}


def _describe(run: CompressionRun, info: RunInfo | None) -> dict:
    cfg = run.config
    out = {"model_name": run.model_name, "method": run.method, "family": run.family,
           "compression": cfg.compression, "rank_ratio": cfg.rank_ratio, "sparsity": cfg.sparsity,
           "params_dense": run.params_dense, "params_kept": run.params_kept}
    if info is not None:
        out["created"] = info.created
    return out


def _load_hint(layout: str, kind: str, cls: str) -> str:
    if layout == "sparse":
        return "import oats; model = oats.load_compressed(DIR)"
    if kind == "timm":
        return "import timm; model = timm.create_model('local-dir:DIR', pretrained=True)"
    return f"from transformers import {cls}; model = {cls}.from_pretrained(DIR)"


def export_run(run: CompressionRun, out: str | Path, layout: str = "sparse", force: bool = False,
               run_folder: str | Path | None = None, info: RunInfo | None = None, dtype: str = "fp32") -> Path:
    """Write ``run`` (a compressed model in memory) as a deployable folder ``out``, its float
    tensors in ``dtype`` ("fp32", or "bf16": half the size, see ``DTYPES``).

    The folder is written next to ``out`` under a temporary name and moved into place only
    when complete: a failure leaves ``out`` as it was.
    """
    check_layout(layout)
    check_dtype(dtype)
    out = check_out_folder(out, force, protect=run_folder)
    model = run.model
    kind = _kind(model)
    if not oats_layers(model):
        raise RunError("this model has no compressed layers: nothing to export")
    # ---- (runs) the write section: a full disk or an unwritable folder is one line, "export again"
    writing = out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.chmod(tmp, 0o755)
    except OSError as e:
        raise write_error(e, writing, "export again") from None
    try:
        writing = out / (SPARSE_FILE if layout == "sparse" else "model.safetensors")
        with torch.no_grad(), quiet_transformers():
            body = (_write_sparse(run, kind, tmp, dtype) if layout == "sparse" else
                    _write_folded(model, kind, tmp, dtype))
        loaded = run.loaded
        extra = {}
        if loaded is not None:
            if loaded.tokenizer is not None:
                writing = out / "the tokenizer files"
                loaded.tokenizer.save_pretrained(tmp)
            extra = {"task": loaded.task, "image_size": loaded.image_size,
                     "image_mean": loaded.image_mean, "image_std": loaded.image_std}
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
        manifest = {"oats_export": EXPORT_FORMAT, "layout": layout, "kind": kind, "class": type(model).__name__,
                    "attn_implementation": attn, "dtype": dtype,
                    "load": _load_hint(layout, kind, type(model).__name__),
                    "run": _describe(run, info), **extra, **body}
        writing = out / EXPORT_FILE
        (tmp / EXPORT_FILE).write_text(json.dumps(manifest, indent=1))
        writing = out
        if out.exists():  # --force: the old export goes only once the new one is in place
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except Exception as e:
        err = write_error(e, writing, "export again")
        if err is None:
            raise
        raise err from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # ---- (runs) end of the write section
    return out


def export_run_folder(run_folder: str | Path, out: str | Path, layout: str = "sparse", force: bool = False,
                      dtype: str = "fp32") -> Path:
    """Export a complete run folder (its base model is loaded by name and the factors applied)."""
    check_layout(layout)
    check_dtype(dtype)
    run_folder = Path(run_folder)
    check_out_folder(out, force, protect=run_folder)
    info = RunInfo.read(run_folder)
    if not info.complete:
        raise RunError(f"run '{run_folder}' is unfinished ({len(info.blocks_done)} blocks done): finish it with "
                       f"'oats compress {info.model_name} --out {run_folder} --resume' before exporting")
    run = load_run(run_folder)
    return export_run(run, out, layout, force, run_folder=run_folder, info=info, dtype=dtype)


# ----------------------------------------------------------------------------- reading
#
# An export is a folder someone else made (downloaded, mailed, put on a class drive): every
# file, name, number and array in it is checked before anything is built from it, and every
# refusal is one RunError line naming the folder. The arrays of the compressed layers are
# checked by SparseLowRankLinear itself (``linear.validate_factors``), for every kernel.

MAX_EXPORT_JSON = 16 * 1024**2
"""oats_export.json and config.json of the largest model this project targets are a few kB;
16 MB leaves room and still refuses a file that would fill memory."""

KINDS = ("transformers", "timm")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
"""transformers' own attention implementations; a name of a Hub kernel would be downloaded code."""

_MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
_CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_EXPORT_HINT = "export the run again"


def _show(x, n: int = 60) -> str:
    """A value from a file, quoted and short, for a one-line message."""
    return repr(x)[:n]


def _damaged(folder: Path, what: str) -> RunError:
    return RunError(f"'{folder}': {what}: {_EXPORT_HINT}")


def _count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_layer_spec(path, spec, sparse: bool) -> str | None:
    """What is wrong with one entry of the manifest's ``layers`` (None: nothing)."""
    if not isinstance(path, str) or not _MODULE_PATH.fullmatch(path):
        return f"layer name {_show(path)} is not a module path"
    if not isinstance(spec, dict):
        return f"layer '{path}' is not described by a table"
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(_count(n) and 0 < n <= MAX_DIMENSION for n in shape)):
        return f"layer '{path}' has shape {_show(shape)}, not two sizes from 1 to {MAX_DIMENSION}"
    d_out, d_in = shape
    rank, nnz = spec.get("rank"), spec.get("nnz")
    if not (_count(rank) and 0 <= rank <= min(shape)):
        return f"layer '{path}' has rank {_show(rank)}, not a count from 0 to {min(shape)}"
    if not (_count(nnz) and 0 <= nnz <= d_out * d_in):
        return f"layer '{path}' has nnz {_show(nnz)}, not a count from 0 to {d_out * d_in}"
    if not sparse:
        return None
    if not isinstance(spec.get("bias"), bool):
        return f"layer '{path}' has bias {_show(spec.get('bias'))}, not true or false"
    rows = spec.get("part_rows")
    if rows is not None and not (isinstance(rows, list) and rows and all(
            isinstance(r, list) and len(r) == 2 and all(_count(a) for a in r) and 0 <= r[0] <= r[1] <= d_out
            for r in rows)):
        return f"layer '{path}' has part_rows {_show(rows)}, not row ranges [start, stop] within its {d_out} rows"
    return None


def _check_manifest(folder: Path, m) -> None:
    """Refuse (RunError, one line) a manifest whose fields are not what an export writes."""
    def bad(what: str):
        raise _damaged(folder, f"{EXPORT_FILE} is damaged ({what})")

    if not isinstance(m, dict):
        bad("not a JSON object")
    fmt = m.get("oats_export")
    if not (_count(fmt) and fmt >= 1):
        bad(f"oats_export {_show(fmt)} is not a format number")
    if fmt > EXPORT_FORMAT:
        raise RunError(f"'{folder}' was exported by a newer oats (format {fmt}): upgrade oats")
    if not (isinstance(m.get("layout"), str) and m["layout"] in LAYOUTS):
        bad(f"layout {_show(m.get('layout'))} is not one of {', '.join(LAYOUTS)}")
    if not (isinstance(m.get("kind"), str) and m["kind"] in KINDS):
        bad(f"kind {_show(m.get('kind'))} is not one of {', '.join(KINDS)}")
    cls = m.get("class")
    if not (isinstance(cls, str) and (_CLASS_NAME.fullmatch(cls) or m["kind"] == "timm")):
        bad(f"class {_show(cls)} is not a class name")
    attn = m.get("attn_implementation")
    if attn is not None and not (isinstance(attn, str) and attn in ATTN_IMPLEMENTATIONS):
        bad(f"attn_implementation {_show(attn)} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if not (isinstance(m.get("dtype", "fp32"), str) and m.get("dtype", "fp32") in DTYPES):  # older: no dtype, fp32
        bad(f"dtype {_show(m.get('dtype'))} is not one of {', '.join(DTYPES)}")
    sparse = m["layout"] == "sparse"
    layers = m.get("layers")
    if not isinstance(layers, dict) or (sparse and not layers):
        bad("it names no compressed layers")
    for path, spec in layers.items():
        what = _check_layer_spec(path, spec, sparse)
        if what:
            bad(what)
    aliases = m.get("aliases", {})
    if not (isinstance(aliases, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
        bad("aliases is not a table of tensor names")


def read_export_info(folder: str | Path) -> dict:
    """The ``oats_export.json`` of an export folder, read with a size cap and strict JSON and its
    fields checked; RunError (one line) when it is not one or is damaged."""
    folder = Path(folder)
    hint = "export a run with 'oats export RUN --out DIR'"
    if not folder.is_dir():
        raise RunError(f"'{folder}' is not a folder: {hint}")
    f = folder / EXPORT_FILE
    if not f.exists() and not f.is_symlink():
        raise RunError(f"'{folder}' is not an oats export (no {EXPORT_FILE}): {hint}")
    try:
        inside(folder, f)
        m = read_json(f, MAX_EXPORT_JSON)
    except BadFile as e:
        raise _damaged(folder, f"{EXPORT_FILE} is damaged ({e})") from None
    except OSError as e:
        raise _damaged(folder, f"{EXPORT_FILE} cannot be read ({e.strerror or type(e).__name__})") from None
    _check_manifest(folder, m)
    return m


@contextlib.contextmanager
def _empty_weights():
    """Parameters created inside are meta tensors (no memory); buffers stay real."""
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=False):
        yield


def _read_config(folder: Path) -> dict:
    """The export's config.json, read safely, and refused when the model it declares would not
    fit in memory (before transformers or timm allocates anything from it)."""
    f = folder / "config.json"
    try:
        inside(folder, f)
        cfg = read_json(f, MAX_EXPORT_JSON)
    except FileNotFoundError:
        raise _damaged(folder, "config.json is missing") from None
    except BadFile as e:
        raise _damaged(folder, f"config.json is damaged ({e})") from None
    except OSError as e:
        raise _damaged(folder, f"config.json cannot be read ({e.strerror or type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise _damaged(folder, "config.json is damaged (not a JSON object)")
    what = f"the export '{folder}'"
    try:
        check_config_memory(cfg, what)
        if isinstance(cfg.get("model_args"), dict):  # timm keeps the architecture's sizes here
            check_config_memory(cfg["model_args"], what)
    except ModelLoadError as e:
        raise RunError(f"'{folder}': {e}") from None
    return cfg


def _model_class(folder: Path, m: dict) -> type:
    """The transformers model class the manifest names: only a class of transformers itself."""
    import transformers
    name = m["class"]
    cls = getattr(transformers, name, None)
    if cls is None:
        raise RunError(f"'{folder}': this transformers has no model class {name!r}: upgrade transformers")
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise _damaged(folder, f"{EXPORT_FILE} names {name!r}, which is not a transformers model class")
    return cls


def _transformers_config(folder: Path, cfg: dict, cls: type):
    """The config object, never running the folder's own code (an ``auto_map`` is ignored where
    transformers knows the architecture, refused where it does not: no prompt, no import)."""
    import transformers
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except Exception as e:  # transformers' ValueError/OSError/KeyError texts are many lines
        if isinstance(cfg.get("auto_map"), dict):
            raise _damaged(folder, "config.json needs the folder's own code (auto_map), which oats never runs") \
                from None
        raise _damaged(folder, f"transformers cannot read its config.json ({type(e).__name__})") from None
    if not isinstance(config, cls.config_class):
        raise _damaged(folder, f"config.json describes a {type(config).__name__}, not the config of {cls.__name__}")
    return config


def _timm_model(folder: Path, pretrained: bool) -> nn.Module:
    import timm
    try:
        if pretrained:
            return timm.create_model(f"local-dir:{folder}", pretrained=True)
        with _empty_weights():
            return timm.create_model(f"local-dir:{folder}", pretrained=False)
    except OatsError:
        raise
    except Exception as e:
        raise _damaged(folder, f"timm cannot build the model from its files ({type(e).__name__})") from None


def _skeleton(folder: Path, m: dict) -> nn.Module:
    cfg = _read_config(folder)
    if m["kind"] == "timm":
        return _timm_model(folder, pretrained=False)
    cls = _model_class(folder, m)
    config = _transformers_config(folder, cfg, cls)
    if m.get("attn_implementation"):
        config._attn_implementation = m["attn_implementation"]
    with _empty_weights():
        return cls(config)


def _weights_file(folder: Path, name: str, scale: int = 1) -> dict:
    """The header of a safetensors file of the export, refused unless it is a regular file
    inside the folder with a sound header, small enough to load here (``scale`` times its size:
    2 for a bf16 export, whose values are held in fp32 once loaded)."""
    f = folder / name
    try:
        real = inside(folder, f)
        size = regular_file(real).st_size
    except BadFile as e:
        raise _damaged(folder, f"{name} is refused ({e})") from None
    except OSError:
        raise _damaged(folder, f"{name} is missing or unreadable") from None
    try:
        header = check_safetensors_file(real, name)
    except ModelLoadError:
        raise _damaged(folder, f"{name} is missing or unreadable (not a sound safetensors file: damaged, truncated "
                               "or another format)") from None
    check_memory({"weights": scale * size}, what=f"the export '{folder}'")
    return header


def _take(folder: Path, tensors: dict, path: str, key: str) -> torch.Tensor:
    t = tensors.pop(f"{path}.{key}", None)
    if t is None:
        raise _damaged(folder, f"layer '{path}': {SPARSE_FILE} has no tensor '{path}.{key}'")
    return t


def _sparse_layer(folder: Path, model: nn.Module, tensors: dict, path: str, spec: dict, kernel: str,
                  stored: torch.dtype | None = None) -> nn.Module:
    """One compressed layer, its arrays checked against the manifest and the architecture
    (``stored``: the export's dtype when it is not the architecture's, e.g. bf16: its arrays
    are accepted in it and cast to the architecture's dtype, which the layer computes in)."""
    d_out, d_in = spec["shape"]
    bias = _take(folder, tensors, path, "bias") if spec["bias"] else None
    rows = spec.get("part_rows")
    us = [_take(folder, tensors, path, f"u{i}") for i in range(len(rows) if rows else 1)]
    if f"{path}.segment_ptr" in tensors or f"{path}.crow_indices" not in tensors:
        index = {k: _take(folder, tensors, path, k) for k in ("segment_ptr", "col_offsets")}
    else:  # format 1: S in CSR
        index = {k: _take(folder, tensors, path, k) for k in ("crow_indices", "col_indices")}
    values, v = _take(folder, tensors, path, "values"), _take(folder, tensors, path, "v")
    if values.numel() != spec["nnz"]:
        raise _damaged(folder, f"layer '{path}': {values.numel()} values, the manifest says {spec['nnz']}")
    if v.ndim != 2 or v.shape[0] != spec["rank"]:
        raise _damaged(folder, f"layer '{path}': v has shape {tuple(v.shape)}, the manifest says rank {spec['rank']}")
    try:
        old = model.get_submodule(path)
    except AttributeError:
        raise _damaged(folder, f"layer '{path}' is not in the {type(model).__name__} architecture") from None
    w = getattr(old, "weight", None)
    if not isinstance(w, torch.Tensor) or tuple(w.shape) not in ((d_out, d_in), (d_in, d_out)):
        raise _damaged(folder, f"layer '{path}' is ({d_out}, {d_in}) in the manifest, not a linear of that shape in "
                               "the architecture")
    # the layer computes in its values' dtype: one of another width than the architecture's (float16 values
    # in a float32 model) loads, then fails at the first forward
    for name, t in (("values", values), *((f"u{i}", u) for i, u in enumerate(us)), ("v", v), ("bias", bias)):
        if t is not None and t.is_floating_point() and t.dtype not in (w.dtype, stored):
            raise _damaged(folder, f"layer '{path}': {name} is {str(t.dtype)[6:]}, the architecture's weights are "
                                   f"{str(w.dtype)[6:]}")
    if stored is not None:  # a bf16 export computes as an fp32 one: its values cast up once, here
        values, v, us = _up(values, w.dtype), _up(v, w.dtype), [_up(u, w.dtype) for u in us]
        bias = None if bias is None else _up(bias, w.dtype)
    try:
        return SparseLowRankLinear(d_out, d_in, values, us, v, bias, part_rows=rows, kernel=kernel, **index)
    except ValueError as e:
        raise _damaged(folder, f"layer '{path}': {e}") from None


def _up(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def _check_tensors(folder: Path, model: nn.Module, tensors: dict, file: str, skip: tuple[str, ...] = (),
                   stored: torch.dtype | None = None) -> None:
    """Every tensor a place in the model of its shape and kind, finite; none missing. A float
    tensor may be in ``stored`` (a bf16 export's dtype) where the architecture's is another."""
    expected = model.state_dict(keep_vars=True)
    for k, t in tensors.items():
        e = expected.get(k)
        if e is None or k.startswith(skip):
            raise _damaged(folder, f"{file} holds tensor {_show(k)}, which the {type(model).__name__} architecture "
                                   "has no place for")
        if tuple(t.shape) != tuple(e.shape):
            raise _damaged(folder, f"tensor '{k}' has shape {tuple(t.shape)}, the architecture's is {tuple(e.shape)}")
        if t.dtype != e.dtype and not (t.dtype == stored and e.is_floating_point()):
            raise _damaged(folder, f"tensor '{k}' is {str(t.dtype)[6:]}, the architecture's is {str(e.dtype)[6:]}")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise _damaged(folder, f"tensor '{k}' holds NaN or infinite values")


def _stored_dtype(m: dict) -> torch.dtype | None:
    """The export's float dtype when it is not fp32 (what the architecture is built in), else None."""
    dtype = DTYPES[m.get("dtype", "fp32")]
    return None if dtype == torch.float32 else dtype


def _load_sparse(folder: Path, m: dict, kernel: str) -> nn.Module:
    stored = _stored_dtype(m)
    _weights_file(folder, SPARSE_FILE, scale=1 if stored is None else 2)
    try:
        tensors = load_file(str(inside(folder, folder / SPARSE_FILE)))
    except (SafetensorError, OSError, ValueError) as e:
        raise _damaged(folder, f"{SPARSE_FILE} is missing or unreadable ({type(e).__name__})") from None
    model = _skeleton(folder, m)
    for p, spec in m["layers"].items():
        set_submodule(model, p, _sparse_layer(folder, model, tensors, p, spec, kernel, stored))
    for alias, first in m.get("aliases", {}).items():
        if alias in tensors or first not in tensors:
            raise _damaged(folder, f"alias {_show(alias)} of {_show(first)} does not match the tensors of "
                                   f"{SPARSE_FILE}")
        tensors[alias] = tensors[first]
    _check_tensors(folder, model, tensors, SPARSE_FILE, skip=tuple(p + "." for p in m["layers"]), stored=stored)
    if stored is not None:  # cast up once, as the layers were; an alias stays the tensor it names
        expected, up = model.state_dict(keep_vars=True), {}
        for k, t in tensors.items():
            if t.dtype == stored and expected[k].dtype != stored:
                if id(t) not in up:
                    up[id(t)] = t.to(expected[k].dtype)
                tensors[k] = up[id(t)]
    model.load_state_dict(tensors, strict=False, assign=True)
    on_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if on_meta:
        raise _damaged(folder, f"{SPARSE_FILE} has no tensor '{on_meta[0]}'")
    return model


_FLOAT_CODES = ("F16", "BF16", "F32", "F64")


def _folded_files(folder: Path, scale: int = 1) -> dict[str, str]:
    """The folded model's weight files (the shards an index names, or model.safetensors)
    checked (``scale``: see ``_weights_file``); {tensor name: safetensors dtype code} of what they hold."""
    index = folder / "model.safetensors.index.json"
    if not index.exists() and not index.is_symlink():
        return _dtypes(_weights_file(folder, "model.safetensors", scale))
    try:
        inside(folder, index)
        shards = read_json(index, MAX_EXPORT_JSON).get("weight_map")
    except (BadFile, OSError, AttributeError):
        shards = None
    if not isinstance(shards, dict) or not all(isinstance(v, str) and "/" not in v for v in shards.values()):
        raise _damaged(folder, f"{index.name} is damaged")
    dtypes = {}
    for name in sorted(set(shards.values())):
        dtypes.update(_dtypes(_weights_file(folder, name, scale)))
    return dtypes


def _dtypes(header: dict) -> dict[str, str]:
    return {k: str(e.get("dtype")) for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)}


def _load_folded(folder: Path, m: dict) -> nn.Module:
    cfg = _read_config(folder)
    dtypes = _folded_files(folder, scale=1 if _stored_dtype(m) is None else 2)
    if m["kind"] == "timm":
        model = _timm_model(folder, pretrained=True)
    else:
        cls = _model_class(folder, m)
        config = _transformers_config(folder, cfg, cls)
        kw = {"attn_implementation": m["attn_implementation"]} if m.get("attn_implementation") else {}
        with quiet_transformers():
            model, info = cls.from_pretrained(folder, config=config, dtype=torch.float32, use_safetensors=True,
                                              trust_remote_code=False, local_files_only=True,
                                              output_loading_info=True, **kw)
        # transformers fills a weight the file lacks with random values and only logs it
        tied = set(getattr(model, "all_tied_weights_keys", None) or ())
        missing = sorted(set(info.get("missing_keys") or ()) - tied)
        if missing:
            raise _damaged(folder, f"model.safetensors has no tensor '{missing[0]}'")
        for key in ("unexpected_keys", "mismatched_keys"):
            if info.get(key):
                first = sorted(info[key], key=str)[0]
                raise _damaged(folder, f"model.safetensors holds tensor {_show(first)}, which the "
                                       f"{cls.__name__} architecture has no place for")
    for k, t in model.state_dict().items():
        # transformers and timm cast an integer tensor of the file to the model's float type silently
        if t.is_floating_point() and dtypes.get(k, "F32") not in _FLOAT_CODES:
            raise _damaged(folder, f"tensor '{k}' is {dtypes[k]} in the weights file, not a float type")
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise _damaged(folder, f"tensor '{k}' holds NaN or infinite values")
    return model


def load_compressed(folder: str | Path, kernel: str = "auto", goal: str | None = "smallest",
                    tokens: int = 1) -> nn.Module:
    """The model an export folder holds, in eval mode on the CPU, ready to run.

    A sparse export gives the architecture with ``SparseLowRankLinear`` layers, their S held
    for ``kernel`` ("auto": csr8 where its kernels run, "csr8", or "csr": torch's CSR); a
    folded one the plain model (as transformers or timm load it). Everything in the folder
    is checked first: a damaged or hostile folder is a RunError of one line (ResourceError
    when it declares more than fits in memory), never a crash or code of the folder's own.

    ``goal`` (a sparse export; ``oats/deploy/plan.py``): "smallest" keeps every layer in its
    sparse layout, with the faster of the kernel's loops on this machine; "fastest" may also
    fold a layer to a dense product (or torch's CSR) where that measures faster here, at the
    memory it costs; None measures nothing. ``tokens``: the rows a call feeds each layer, that
    the forms are measured at (1: decoding; an encoder's or a ViT's batch: its tokens). The
    plan is ``model.oats_plan`` (``.summary()``).
    """
    folder = Path(folder)
    if kernel not in KERNELS:
        raise ConfigError(f"unknown kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    if goal is not None and goal not in GOALS:
        raise ConfigError(f"unknown goal {goal!r}: use one of {', '.join(GOALS)}")
    check_tokens(tokens)
    if kernel != "csr" and not kernels.available():  # here, not inside a layer: a bad OATS_CSR8_BACKEND is
        if kernel == "auto":                           # one clear line, not a "damaged export"
            kernel = "csr"
        else:
            raise ConfigError(f"the csr8 kernel cannot run here ({kernels.backend_note()}): use kernel 'csr'")
    try:
        m = read_export_info(folder)
        with BUILD_LOCK:  # one model built at a time in this process
            model = _load_sparse(folder, m, kernel) if m["layout"] == "sparse" else _load_folded(folder, m)
            model.eval()
            if goal is not None and m["layout"] == "sparse":
                apply_plan(model, goal, tokens)
        return model
    except OatsError:
        raise
    except MemoryError:
        raise ResourceError(f"'{folder}' needs more memory than this machine has: load it on a larger machine") \
            from None
    except Exception as e:  # the last resort: whatever a damaged folder breaks is still one line
        raise RunError(f"'{folder}' is a damaged export ({type(e).__name__}): {_EXPORT_HINT}") from None


# ----------------------------------------------------------------------------- sizes


def sparse_modules(model: nn.Module) -> dict[str, SparseLowRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLowRankLinear)}


def block_linear_bytes(model: nn.Module) -> int:
    """Bytes held by the compressed layers of a loaded sparse export (values, indices, factors, biases)."""
    return sum(m.nbytes() for m in sparse_modules(model).values())


def dense_linear_bytes(model: nn.Module, paths) -> int:
    """Bytes of the weights and biases of the linears at ``paths`` of a dense model."""
    total = 0
    for p in paths:
        mod = model.get_submodule(p)
        total += sum(t.numel() * t.element_size() for t in (mod.weight, getattr(mod, "bias", None)) if t is not None)
    return total


def size_report(run: CompressionRun) -> dict:
    """Bytes of the block linears of ``run`` as each form holds them, without writing anything:
    ``dense`` (weights and biases), ``sparse_disk`` (the export file: S in CSR8),
    ``sparse_csr8`` and ``sparse_csr`` (a loaded sparse export with either kernel's layout),
    ``sparse_memory`` (as ``load_compressed`` holds it here: ``kernel``), ``folded`` (= dense);
    plus ``params_dense`` and ``params_kept``. Values, indices, factors and biases all counted."""
    dense = csr8 = csr = 0
    for path, m in oats_layers(run.model).items():
        # a lazily opened run (oats.runs.lazy) has its factors on disk: the manifest's count then
        nnz = (int(torch.count_nonzero(m.sparse)) if m.sparse.device.type != "meta"
               else sum(r.nnz for r in run.layers if r.path == path))
        us, _ = _parts(run, path, m)
        rest = 4 * (m.v.numel() + sum(u.numel() for u in us)) + (0 if m.bias is None else 4 * m.bias.numel())
        dense += 4 * m.weight.numel() + (0 if m.bias is None else 4 * m.bias.numel())
        csr8 += kernels.csr8_bytes(m.out_features, m.in_features, nnz) + rest
        csr += nnz * (4 + 4) + 4 * (m.out_features + 1) + rest
    kernel = default_kernel()
    return {"dense": dense, "folded": dense, "sparse_csr8": csr8, "sparse_csr": csr, "sparse_disk": csr8,
            "sparse_memory": csr8 if kernel == "csr8" else csr, "kernel": kernel,
            "csr8_backend": kernels.backend_note(),
            "params_dense": run.params_dense, "params_kept": run.params_kept}


def export_folder_bytes(folder: str | Path) -> int:
    """Bytes on disk of an export's weight files (tokenizer and JSON not counted)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
