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
from oats.errors import ConfigError, RunError
from oats.models.adapters import set_submodule
from oats.models.loaded import BUILD_LOCK, quiet_transformers
from oats.runs.folders import load_run
from oats.runs.info import RunInfo

__all__ = ["EXPORT_FILE", "LAYOUTS", "SPARSE_FILE", "block_linear_bytes", "check_layout", "check_out_folder",
           "dense_linear_bytes", "export_folder_bytes", "export_run", "export_run_folder", "load_compressed",
           "read_export_info", "size_report", "sparse_modules"]

EXPORT_FILE = "oats_export.json"
SPARSE_FILE = "sparse_lowrank.safetensors"
EXPORT_FORMAT = 2  # 2: S in CSR8 (format 1: CSR)
LAYOUTS = ("sparse", "folded")


# ----------------------------------------------------------------------------- checks


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown export format {layout!r}: use sparse (compressed S + U V, the default) "
                          "or folded (one dense matrix per layer, loads without oats)")
    return layout


def check_out_folder(out: str | Path, force: bool, protect: str | Path | None = None) -> Path:
    """The export folder, refused when it is a file, holds files (unless ``force``), or would
    replace ``protect`` (the run folder) or a folder above it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export folder '{out}' is a file: choose a folder for --out")
    if protect is not None:
        p, o = Path(protect).resolve(), out.resolve()
        if o == p or o in p.parents:
            raise ConfigError(f"export folder '{out}' would replace the run folder '{protect}': choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"export folder '{out}' exists and is not empty: choose another --out, or pass --force "
                          "to replace it")
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


def _write_sparse(run: CompressionRun, kind: str, folder: Path) -> dict:
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
    save_file({**rest, **tensors}, str(folder / SPARSE_FILE))
    _write_config(model, kind, folder)
    return {"layers": meta, "aliases": aliases}


def _write_folded(model: nn.Module, kind: str, folder: Path) -> dict:
    layers = oats_layers(model)
    types = _skeleton_module_types(model, kind, list(layers))
    folded = {p: _folded_module(m, types[p]) for p, m in layers.items()}
    with _swapped(model, folded):
        if kind == "transformers":
            model.save_pretrained(folder, safe_serialization=True)
        else:
            state, _ = _dedupe(model.state_dict())
            save_file(state, str(folder / "model.safetensors"))
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
               run_folder: str | Path | None = None, info: RunInfo | None = None) -> Path:
    """Write ``run`` (a compressed model in memory) as a deployable folder ``out``.

    The folder is written next to ``out`` under a temporary name and moved into place only
    when complete: a failure leaves ``out`` as it was.
    """
    check_layout(layout)
    out = check_out_folder(out, force, protect=run_folder)
    model = run.model
    kind = _kind(model)
    if not oats_layers(model):
        raise RunError("this model has no compressed layers: nothing to export")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)
    try:
        with torch.no_grad(), quiet_transformers():
            body = _write_sparse(run, kind, tmp) if layout == "sparse" else _write_folded(model, kind, tmp)
        loaded = run.loaded
        extra = {}
        if loaded is not None:
            if loaded.tokenizer is not None:
                loaded.tokenizer.save_pretrained(tmp)
            extra = {"task": loaded.task, "image_size": loaded.image_size,
                     "image_mean": loaded.image_mean, "image_std": loaded.image_std}
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
        manifest = {"oats_export": EXPORT_FORMAT, "layout": layout, "kind": kind, "class": type(model).__name__,
                    "attn_implementation": attn, "load": _load_hint(layout, kind, type(model).__name__),
                    "run": _describe(run, info), **extra, **body}
        (tmp / EXPORT_FILE).write_text(json.dumps(manifest, indent=1))
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
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_run_folder(run_folder: str | Path, out: str | Path, layout: str = "sparse", force: bool = False) -> Path:
    """Export a complete run folder (its base model is loaded by name and the factors applied)."""
    check_layout(layout)
    run_folder = Path(run_folder)
    check_out_folder(out, force, protect=run_folder)
    info = RunInfo.read(run_folder)
    if not info.complete:
        raise RunError(f"run '{run_folder}' is unfinished ({len(info.blocks_done)} blocks done): finish it with "
                       f"'oats compress {info.model_name} --out {run_folder} --resume' before exporting")
    run = load_run(run_folder)
    return export_run(run, out, layout, force, run_folder=run_folder, info=info)


# ----------------------------------------------------------------------------- reading


def read_export_info(folder: str | Path) -> dict:
    """The ``oats_export.json`` of an export folder; RunError (one line) when it is not one."""
    folder = Path(folder)
    hint = "export a run with 'oats export RUN --out DIR'"
    if not folder.is_dir():
        raise RunError(f"'{folder}' is not a folder: {hint}")
    f = folder / EXPORT_FILE
    if not f.is_file():
        raise RunError(f"'{folder}' is not an oats export (no {EXPORT_FILE}): {hint}")
    try:
        m = json.loads(f.read_text())
    except (OSError, ValueError):
        raise RunError(f"'{folder}': {EXPORT_FILE} is damaged: export the run again") from None
    if not isinstance(m, dict) or not isinstance(m.get("oats_export"), int) or m.get("layout") not in LAYOUTS:
        raise RunError(f"'{folder}': {EXPORT_FILE} is damaged: export the run again")
    if m["oats_export"] > EXPORT_FORMAT:
        raise RunError(f"'{folder}' was exported by a newer oats (format {m['oats_export']}): upgrade oats")
    return m


@contextlib.contextmanager
def _empty_weights():
    """Parameters created inside are meta tensors (no memory); buffers stay real."""
    from accelerate import init_empty_weights
    with init_empty_weights(include_buffers=False):
        yield


def _skeleton(folder: Path, m: dict) -> nn.Module:
    if m.get("kind") == "timm":
        import timm
        with _empty_weights():
            return timm.create_model(f"local-dir:{folder}", pretrained=False)
    import transformers
    cls = getattr(transformers, str(m.get("class")), None)
    if cls is None:
        raise RunError(f"'{folder}': this transformers has no model class {m.get('class')!r}: upgrade transformers")
    config = transformers.AutoConfig.from_pretrained(folder)
    if m.get("attn_implementation"):
        config._attn_implementation = m["attn_implementation"]
    with _empty_weights():
        return cls(config)


def _sparse_term(tensors: dict, path: str) -> dict:
    """S of one layer as the export holds it: CSR8 (format 2) or CSR (format 1)."""
    if f"{path}.segment_ptr" in tensors:
        return {"segment_ptr": tensors.pop(f"{path}.segment_ptr"), "col_offsets": tensors.pop(f"{path}.col_offsets")}
    return {"crow_indices": tensors.pop(f"{path}.crow_indices"), "col_indices": tensors.pop(f"{path}.col_indices")}


def _load_sparse(folder: Path, m: dict, kernel: str) -> nn.Module:
    try:
        tensors = load_file(str(folder / SPARSE_FILE))
    except (SafetensorError, OSError, Exception) as e:
        raise RunError(f"'{folder}': {SPARSE_FILE} is missing or unreadable ({type(e).__name__}): export the run "
                       "again") from None
    model = _skeleton(folder, m)
    try:
        for path, spec in m["layers"].items():
            d_out, d_in = spec["shape"]
            bias = tensors.pop(f"{path}.bias", None)
            rows = spec.get("part_rows")
            us = [tensors.pop(f"{path}.u{i}") for i in range(len(rows) if rows else 1)]
            new = SparseLowRankLinear(d_out, d_in, tensors.pop(f"{path}.values"), us, tensors.pop(f"{path}.v"),
                                      bias, part_rows=rows, kernel=kernel, **_sparse_term(tensors, path))
            model.get_submodule(path)  # the layer exists in this architecture
            set_submodule(model, path, new)
    except (KeyError, ValueError, AttributeError, TypeError):
        raise RunError(f"'{folder}': the factors of the compressed layers are damaged: export the run again") from None
    for alias, first in m.get("aliases", {}).items():
        if first in tensors:
            tensors[alias] = tensors[first]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    on_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if unexpected or on_meta:
        what = (unexpected or on_meta)[0]
        raise RunError(f"'{folder}': weights and architecture disagree ({what}): export the run again")
    return model


def load_compressed(folder: str | Path, kernel: str = "auto") -> nn.Module:
    """The model an export folder holds, in eval mode on the CPU, ready to run.

    A sparse export gives the architecture with ``SparseLowRankLinear`` layers, their S held
    for ``kernel`` ("auto": csr8 where its kernels run, "csr8", or "csr": torch's CSR); a
    folded one the plain model (as transformers or timm load it).
    """
    folder = Path(folder)
    if kernel not in KERNELS:
        raise ConfigError(f"unknown kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    if kernel != "csr" and not kernels.available():  # here, not inside a layer: a bad OATS_CSR8_BACKEND is
        if kernel == "auto":                           # one clear line, not a "damaged export"
            kernel = "csr"
        else:
            raise ConfigError(f"the csr8 kernel cannot run here ({kernels.backend_note()}): use kernel 'csr'")
    m = read_export_info(folder)
    with BUILD_LOCK:  # one model built at a time in this process
        if m["layout"] == "sparse":
            model = _load_sparse(folder, m, kernel)
        elif m.get("kind") == "timm":
            import timm
            model = timm.create_model(f"local-dir:{folder}", pretrained=True)
        else:
            import transformers
            cls = getattr(transformers, str(m.get("class")), None)
            if cls is None:
                raise RunError(f"'{folder}': this transformers has no model class {m.get('class')!r}: upgrade "
                               "transformers")
            kw = {"attn_implementation": m["attn_implementation"]} if m.get("attn_implementation") else {}
            with quiet_transformers():
                model = cls.from_pretrained(folder, dtype=torch.float32, use_safetensors=True, **kw)
    return model.eval()


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
        nnz = int(torch.count_nonzero(m.sparse))
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
