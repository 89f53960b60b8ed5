"""Runs opened without their model in memory: the lazy run handle for mid-size models.

``load_run`` rebuilds the whole model in fp32 and gives every replaced layer the original
weight, the sparse term as a dense matrix and the two factors: more than twice the model's
fp32 linear bytes (a 3B model needs about 27 GB, an 8B one about 68 GB). A :class:`LazyRun`
is the same run read on demand instead:

* the model is built on the meta device (``zoo.load_model(..., from_disk=True)``): the
  embeddings, norms and head are read from the model's own safetensors files (kept in their
  stored dtype where the loader keeps them so); every replaced linear is a
  :class:`StreamedLinear`, a placeholder with shapes only;
* a whole-model forward (evaluation, Heads, attributions, massive activations, the
  Walkthrough's Gram replay) streams: each replaced linear reads what its mode needs (the
  original weight from the model's memory-mapped safetensors, the sparse term and the factors
  from the run's block file) just before it runs, computes in fp32, and drops it again, so at
  most one matrix (never more than one block) of replaced weights is resident;
* a per-layer view (``factors``, ``summary``) reads that one layer, the last two kept;
* the second moments (one vector per matrix: a few MB for an 8B model) are read at open.

The numbers are those of the in-memory path: the stored bf16/fp16 weights are widened to fp32
exactly as the in-memory loader widens them, the factors are the stored fp32 tensors.
``open_run`` picks the in-memory path for runs that fit easily (faster for small models) and
this one otherwise, behind the same ``CompressionRun`` interface, so pages have one way to ask.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from oats.compress.records import CompressionRun
from oats.core.linear import OatsLinear, apply_terms
from oats.errors import OatsError, RunError
from oats.models import zoo
from oats.models.hub import attach_stored_head
from oats.models.stored import CHUNK_BYTES
from oats.models.weights import DiskWeights
from oats.models.adapters import bias_of, get_adapter, set_submodule, weight_of
from oats.resources import available_memory
from oats.runs.folders import SUMMARY, _block_file, _problem, checked_summaries, load_run, summaries_of
from oats.runs.info import RunInfo

__all__ = ["LAZY_ENV", "LazyRun", "StreamedHead", "StreamedLinear", "open_run", "open_lazy", "wants_lazy",
           "in_memory_bytes", "streamed_seconds"]

LAZY_ENV = "OATS_LAZY_RUNS"
"""``1``: open every run whose model is a local safetensors folder lazily; ``0``: never;
unset: lazily when the in-memory open would take more than ``LAZY_SHARE`` of free memory."""

LAZY_SHARE = 0.4
"""Above this share of the available memory a run is opened lazily: the app holds two runs
(``ui.runtime.RUNS``) and computes beside them."""


class _Reader:
    """Reads one layer at a time: the original weight from the model's safetensors files (in
    their stored dtype), the sparse term and the factors from the run's block file, each
    checked as ``oats.runs.folders.read_block`` checks a whole block."""

    def __init__(self, folder: Path, info: RunInfo, disk):
        self.folder, self.info, self.disk = folder, info, disk
        self.block_of = {r.path: r.block for r in info.layers}
        self._lock = threading.Lock()
        self.resident: dict[str, int] = {}  # path -> block of the matrices being computed with now
        self.max_blocks_resident = 0  # the most distinct blocks ever resident at once (tests read it)
        self.loads = 0

    def weight(self, path: str) -> torch.Tensor:
        key = f"{path}.weight"
        if not self.disk.has(key):
            raise RunError(f"the weights of '{self.info.model_name}' have no tensor {key!r}: the model folder is not "
                           "the one this run was made from")
        with safe_open(str(self.disk.where[key]), framework="pt", device="cpu") as fh:
            t = fh.get_tensor(key)
        want = tuple(self.info.modules[path].shape)
        if tuple(t.shape) != want:
            raise RunError(f"run folder '{self.folder}' was made for '{self.info.model_name}': layer '{path}' is {want} "
                           f"there but {tuple(t.shape)} in the model's files")
        return t

    def factors(self, path: str, which: tuple[str, ...] = ("sparse", "u", "v")) -> dict[str, torch.Tensor]:
        """The layer's sparse term (densified: this one matrix only), u and v, as stored."""
        block = self.block_of[path]
        real = _block_file(self.folder, block, whole=False)
        mod = self.info.modules[path]
        (d_out, d_in), rank = mod.shape, mod.rank
        name = real.name
        want = {"u": (d_out, rank), "v": (rank, d_in)}
        out: dict[str, torch.Tensor] = {}
        try:
            with safe_open(str(real), framework="pt", device="cpu") as fh:
                keys = set(fh.keys())
                for f in which:
                    parts = ("sparse_values", "sparse_mask") if f == "sparse" else (f,)
                    for part in parts:
                        if f"{path}.{part}" not in keys:
                            raise RunError(f"run folder '{self.folder}': {name} has no {part} for layer '{path}': the "
                                           "run is damaged, compress again")
                        # its size from the header, before it is read: no more values than the layer has
                        size = math.prod(fh.get_slice(f"{path}.{part}").get_shape())
                        if size > (d_out * d_in + 7) // 8 * (8 if part != "sparse_mask" else 1) or (
                                part in want and size != math.prod(want[part])):
                            self._check(torch.empty(0), ("a size that fits the layer",), "float", path, part, name)
                    if f == "sparse":
                        out["sparse"] = self._sparse(fh.get_tensor(f"{path}.sparse_values"),
                                                     fh.get_tensor(f"{path}.sparse_mask"), d_out, d_in, path, name)
                    else:
                        t = fh.get_tensor(f"{path}.{f}")
                        self._check(t, want[f], "float", path, f, name)
                        out[f] = t
        except RunError:
            raise
        except Exception as e:  # noqa: BLE001 - a sound header over damaged data
            raise RunError(f"run folder '{self.folder}': {name} is unreadable ({type(e).__name__}): compress "
                           "again") from None
        return out

    def _check(self, t, shape, dtype, path, factor, name):
        why = _problem(t, shape, dtype)
        if why is not None:
            raise RunError(f"run folder '{self.folder}': {name} holds a damaged {factor} for layer '{path}' ({why}): "
                           "the run is damaged, compress again")

    def mask(self, path: str) -> torch.Tensor:
        """Where the layer's sparse term is non-zero (d_out, d_in), from its mask bits alone."""
        real = _block_file(self.folder, self.block_of[path], whole=False)
        (d_out, d_in) = self.info.modules[path].shape
        n = d_out * d_in
        key = f"{path}.sparse_mask"
        try:
            with safe_open(str(real), framework="pt", device="cpu") as fh:
                if key not in set(fh.keys()) or math.prod(fh.get_slice(key).get_shape()) != (n + 7) // 8:
                    raise RunError(f"run folder '{self.folder}': {real.name} has no sound sparse_mask for layer "
                                   f"'{path}': the run is damaged, compress again")
                bits = fh.get_tensor(key)
        except RunError:
            raise
        except Exception as e:  # noqa: BLE001 - a sound header over damaged data
            raise RunError(f"run folder '{self.folder}': {real.name} is unreadable ({type(e).__name__}): compress "
                           "again") from None
        self._check(bits, ((n + 7) // 8,), "uint8", path, "sparse_mask", real.name)
        return torch.from_numpy(np.unpackbits(bits.numpy(), count=n).view(bool)).reshape(d_out, d_in)

    def _sparse(self, vals, bits, d_out, d_in, path, name) -> torch.Tensor:
        n = d_out * d_in
        self._check(bits, ((n + 7) // 8,), "uint8", path, "sparse_mask", name)
        self._check(vals, (vals.numel(),) if vals.dim() == 1 else ("n",), "float", path, "sparse_values", name)
        # a view of the unpacked bytes as bools (no copy), filled in mask order by masked_scatter_:
        # 0.8 s for a 14336 x 4096 term here, where astype + index assignment took 2.1 s
        mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).view(bool)).reshape(d_out, d_in)
        if int(mask.sum()) != vals.numel():
            self._check(vals, ("the mask's count",), "float", path, "sparse_values", name)
        return torch.zeros((d_out, d_in), dtype=vals.dtype).masked_scatter_(mask, vals)

    def tensors_of_block(self, block: int, suffix: str) -> dict[str, torch.Tensor]:
        """Every tensor of one block file whose name ends with ``suffix`` (the m2 vectors, the
        stored summaries), by name."""
        real = _block_file(self.folder, block, whole=False)
        with safe_open(str(real), framework="pt", device="cpu") as fh:
            keys = [k for k in fh.keys() if k.endswith(suffix) or suffix in k]
            side = max((max(m.shape) for m in self.info.modules.values()), default=0)
            for k in keys:  # vectors, one value per row or column at most: sized from the header first
                if math.prod(fh.get_slice(k).get_shape()) > side:
                    raise RunError(f"run folder '{self.folder}': {real.name} holds {k!r} larger than any layer's "
                                   "side: the run is damaged, compress again")
            return {k: fh.get_tensor(k) for k in keys}

    # resident bookkeeping: what "never more than one block resident" is checked on
    def enter(self, path: str) -> None:
        with self._lock:
            self.resident[path] = self.block_of[path]
            self.loads += 1
            self.max_blocks_resident = max(self.max_blocks_resident, len(set(self.resident.values())))

    def leave(self, path: str) -> None:
        with self._lock:
            self.resident.pop(path, None)


_NEEDS = {"dense": ("weight",), "both": ("sparse", "u", "v"), "sparse": ("sparse",), "lowrank": ("u", "v")}
"""What each mode of a replaced linear computes with (``OatsLinear.forward``)."""


class StreamedLinear(OatsLinear):
    """An ``OatsLinear`` whose tensors live on disk: shapes only (the meta device) until it runs.

    ``forward`` reads what its mode needs, computes in fp32 and drops it; ``effective_weight``
    reads and returns a fresh fp32 matrix. The bias (small) stays in memory.
    """

    def __init__(self, path: str, shape: tuple[int, int], rank: int, bias: torch.Tensor | None, reader: _Reader,
                 mode: str = "both"):
        d_out, d_in = shape
        meta = dict(device="meta", dtype=torch.float32)
        super().__init__(torch.empty(d_out, d_in, **meta), bias, torch.empty(d_out, d_in, **meta),
                         torch.empty(d_out, rank, **meta), torch.empty(rank, d_in, **meta), mode=mode)
        self.path = path
        self._reader = reader

    def _read(self, need: tuple[str, ...]) -> dict[str, torch.Tensor]:
        out = {}
        if "weight" in need:
            out["weight"] = self._reader.weight(self.path).float()
        rest = tuple(n for n in need if n != "weight")
        if rest:
            out.update({k: v.float() for k, v in self._reader.factors(self.path, rest).items()})
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # attributions: backward reads the layer again
            return _Streamed.apply(x, self, self.mode)
        return self._compute(x, self.mode)

    def _compute(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        # computed from local tensors, the module itself never changes: forwards in several
        # threads (the app's sessions) cannot see each other's tensors
        self._reader.enter(self.path)
        try:
            t = self._read(_NEEDS[mode])
            return apply_terms(x, mode, t.get("weight"), t.get("sparse"), t.get("u"), t.get("v"), self.bias)
        finally:
            self._reader.leave(self.path)

    def effective_weight(self, mode: str | None = None) -> torch.Tensor:
        mode = mode or self.mode
        t = self._read(_NEEDS[mode])
        if mode == "dense":
            return t["weight"]
        if mode == "sparse":
            return t["sparse"]
        low = t["u"] @ t["v"]
        return low if mode == "lowrank" else t["sparse"] + low


class _Streamed(torch.autograd.Function):
    """A streamed linear under autograd (integrated gradients, attributions): the forward keeps
    nothing of the layer for the backward, which reads it again, so a backward through the whole
    model holds one matrix at a time, as the forward does. Gradients flow to the input only
    (the weights are not trained)."""

    @staticmethod
    def forward(ctx, x, module, mode):
        ctx.module, ctx.mode = module, mode
        with torch.no_grad():
            return module._compute(x, mode)

    @staticmethod
    def backward(ctx, grad):
        module, mode = ctx.module, ctx.mode
        module._reader.enter(module.path)
        try:
            t = module._read(_NEEDS[mode])
            g = grad.to(torch.float32)
            if mode == "dense":
                out = g @ t["weight"]
            elif mode == "sparse":
                out = g @ t["sparse"]
            else:
                out = (g @ t["u"]) @ t["v"]
                if mode == "both":
                    out = out + g @ t["sparse"]
        finally:
            module._reader.leave(module.path)
        return out.to(grad.dtype), None, None


class StreamedHead(torch.nn.Module):
    """An untied LM head read from the model's files a slice of rows at a time on each forward:
    fp32 logits as ``oats.models.stored.StoredHead`` gives them, with nothing of the head
    resident between forwards (Llama-3.1-8B's is 1 GB in bf16, a quarter of the app's budget)."""

    def __init__(self, disk, key: str, shape: tuple[int, int], bias: torch.Tensor | None,
                 chunk_bytes: int = CHUNK_BYTES):
        super().__init__()
        self.disk, self.key, self.chunk_bytes = disk, key, chunk_bytes
        self.out_features, self.in_features = shape
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        # shapes only (the meta device), so code that asks for the head's weight sees its shape and dtype
        self.weight = torch.nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.float()
        rows = max(1, int(self.chunk_bytes) // (4 * self.in_features))
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.float32, device=x.device)
        with safe_open(str(self.disk.where[self.key]), framework="pt", device="cpu") as fh:
            sl = fh.get_slice(self.key)
            for a in range(0, self.out_features, rows):
                b = min(self.out_features, a + rows)
                bias = None if self.bias is None else self.bias[a:b].float()
                out[..., a:b] = torch.nn.functional.linear(x, sl[a:b].float(), bias)
        return out


def _attach_head(loaded) -> None:
    """The head of a lazily opened causal LM: the tied embedding's (``attach_stored_head``), or
    an untied one streamed from the files (``StreamedHead``)."""
    model = loaded.model
    head = model.get_output_embeddings()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if head is None or tied or getattr(head, "weight", None) is None or head.weight.device.type != "meta":
        attach_stored_head(loaded)
        return
    path = next(p for p, m in model.named_modules() if m is head)
    key = f"{path}.weight"
    if not loaded.disk.has(key):
        attach_stored_head(loaded)  # says in one line that the files lack it
        return
    bias = loaded.disk.tensor(f"{path}.bias", dtype=torch.float32) if getattr(head, "bias", None) is not None else None
    set_submodule(model, path, StreamedHead(loaded.disk, key, tuple(head.weight.shape), bias))


class LazyRun(CompressionRun):
    """A ``CompressionRun`` whose model and factors stay on disk (see the module docstring).

    ``run.model`` streams its replaced linears; ``factors(q)`` and ``summary(q)`` read one
    layer. ``folder`` is the run folder, ``reader`` the per-layer reader (its
    ``max_blocks_resident`` records how many blocks were ever resident at once)."""

    folder: Path = None
    reader: _Reader = None
    lazy = True

    def _layer_tensors(self, path: str) -> dict[str, torch.Tensor]:
        cache = self.__dict__.setdefault("_cache", OrderedDict())
        if path not in cache:
            t = {"weight": self.reader.weight(path).float()}
            t.update(self.reader.factors(path))
            cache[path] = t
            while len(cache) > 2:
                cache.popitem(last=False)
        cache.move_to_end(path)
        return cache[path]

    def info_modules(self) -> dict:
        """The manifest's shape and rank of every replaced matrix, by module path."""
        return self.reader.info.modules

    def sparse_mask(self, qualname: str) -> torch.Tensor:
        rec = self.layer(qualname)
        cached = self.__dict__.get("_cache", {}).get(rec.path)
        mask = cached["sparse"] != 0 if cached is not None else self.reader.mask(rec.path)
        return mask if rec.rows is None else mask[slice(*rec.rows)]

    def summary(self, qualname: str) -> dict[str, torch.Tensor] | None:
        rec = self.layer(qualname)
        cache = self.__dict__.setdefault("_summaries", {})
        if rec.block not in cache:  # checked as read_block checks them: sound, complete, or none
            tensors = self.reader.tensors_of_block(rec.block, SUMMARY)
            mates = [r for r in self.layers if r.block == rec.block]
            cache[rec.block] = summaries_of(checked_summaries(self.folder, f"block_{rec.block:03d}.safetensors",
                                                              tensors, mates))
        return cache[rec.block].get(qualname) or None

    def apply_block(self, block: torch.nn.Module, block_path: str, index: int) -> None:
        """Put the stored factors of block ``index`` into ``block`` (its weights already read):
        how a from-disk compression resumes a finished block to carry its inputs forward."""
        for path in dict.fromkeys(r.path for r in self.layers if r.block == index):
            rel = path[len(block_path) + 1:]
            old = block.get_submodule(rel)
            w = weight_of(old)
            f = self.reader.factors(path)
            set_submodule(block, rel, OatsLinear(w, bias_of(old), f["sparse"].to(w.dtype), f["u"].to(w.dtype),
                                                 f["v"].to(w.dtype)))


def streamed_seconds(run, tokens: int, passes: int = 1) -> float | None:
    """About how long ``passes`` whole-model forwards over ``tokens`` tokens take for a lazily
    opened run (None for a run in memory: as fast as the model is). Measured on the spot, once
    per run: the largest replaced matrix read, widened and unpacked (the reading cost scales
    with each matrix's size) and one product with it (the computing cost scales with the
    matrix's parameters times the tokens)."""
    if not isinstance(run, LazyRun):
        return None
    probe = run.__dict__.get("_probe")
    if probe is None:
        path = max(run.info_modules(), key=lambda p: math.prod(run.info_modules()[p].shape))
        n = math.prod(run.info_modules()[path].shape)
        t0 = time.perf_counter()
        w = run.reader.weight(path).float()
        f = run.reader.factors(path)
        t1 = time.perf_counter()
        x = torch.randn(64, w.shape[1])
        torch.nn.functional.linear(x, f["sparse"])
        t2 = time.perf_counter()
        probe = run.__dict__["_probe"] = ((t1 - t0) / n, (t2 - t1) / (n * 64))
        del w, f
    per_read, per_mac = probe
    total = sum(math.prod(m.shape) for m in run.info_modules().values())
    return passes * total * (per_read + per_mac * max(int(tokens), 1))


def _second_moments(reader: _Reader, info: RunInfo) -> dict[str, torch.Tensor]:
    m2: dict[str, torch.Tensor] = {}
    for b in info.blocks_done:
        for k, t in reader.tensors_of_block(b, ".m2").items():
            if not k.endswith(".m2"):
                continue
            rec = next((r for r in info.layers if r.qualname == k[:-3]), None)
            if rec is None:
                raise RunError(f"run folder '{reader.folder}': block_{b:03d}.safetensors holds {k!r}, which the "
                               "manifest does not name: the run is damaged, compress again")
            reader._check(t, (info.modules[rec.path].shape[1],), "float", rec.path, f"m2 ({k[:-3]})",
                          f"block_{b:03d}.safetensors")
            m2[k[:-3]] = t
    return m2


def open_lazy(folder: str | Path, allow_partial: bool = False, loaded=None, stream: bool = True) -> LazyRun:
    """The run of ``folder`` with its model on disk (a local folder of safetensors weights).

    ``loaded``: the meta-device model to use (``zoo.load_model(name, from_disk=True)``; loaded
    here when None). ``stream``: give the model its streamed linears, block norms and head (for
    viewing and evaluating); False leaves ``loaded.model`` as it is (a from-disk compression
    resuming: it reads each block itself and asks ``apply_block`` for the finished ones).
    RunError / ModelLoadError (one line) when the run or its model cannot be opened this way."""
    folder = Path(folder)
    info = RunInfo.read(folder)
    if not info.complete and not allow_partial:
        raise RunError(f"run '{folder.name}' is unfinished ({len(info.blocks_done)} blocks done): "
                       f"resume it with 'oats compress --resume' or delete it")
    if loaded is None:
        loaded = zoo.load_model(info.model_name, from_disk=True, viewing=stream)
    model = loaded.model
    get_adapter(model, allow_generic=info.family == "generic")
    reader = _Reader(folder, info, loaded.disk)
    _check_shapes(folder, info, model)
    if stream:
        _stream_linears(model, info, reader, loaded.disk)
        _load_rest(model, loaded.disk, info)
        _attach_head(loaded)  # evaluation's logits, from the stored head in row slices
    run = LazyRun(model=model, model_name=info.model_name, family=info.family, method=info.method, config=info.config,
                  layers=list(info.layers), blocks=list(info.blocks), second_moments=_second_moments(reader, info),
                  calibration=dict(info.calibration), timings=dict(info.timings), loaded=loaded,
                  block_rates=list(info.block_rates) if info.block_rates is not None else None,
                  allocation=info.allocation)
    run.folder, run.reader = folder, reader
    return run


def _check_shapes(folder: Path, info: RunInfo, model: torch.nn.Module) -> None:
    """RunError (one line) when the model lacks a layer of the run or has it in another shape."""
    for path, mod in info.modules.items():
        try:
            old = model.get_submodule(path)
        except AttributeError:
            raise RunError(f"run folder '{folder}' was made for '{info.model_name}': this model has no "
                           f"layer '{path}'") from None
        if list(weight_of(old).shape) != list(mod.shape):
            raise RunError(f"run folder '{folder}' was made for '{info.model_name}': layer '{path}' is "
                           f"{tuple(mod.shape)} there but {tuple(weight_of(old).shape)} in this model")


def _stream_linears(model: torch.nn.Module, info: RunInfo, reader: _Reader, disk) -> None:
    """A ``StreamedLinear`` in place of every replaced linear of the finished blocks."""
    for b in info.blocks_done:
        for path in dict.fromkeys(r.path for r in info.layers if r.block == b):
            mod = info.modules[path]
            bias = bias_of(model.get_submodule(path))
            if bias is not None and bias.device.type == "meta":
                bias = disk.tensor(f"{path}.bias", dtype=torch.float32)
            set_submodule(model, path, StreamedLinear(path, tuple(mod.shape), mod.rank, bias, reader))


def _load_rest(model: torch.nn.Module, disk, info: RunInfo) -> None:
    """Read every block tensor that is not a replaced linear's (norms, unreplaced modules: small)."""
    adapter = get_adapter(model, allow_generic=info.family == "generic")
    done = set(info.blocks_done)
    for i, (bpath, block) in enumerate(adapter.blocks(model)):
        if i not in done:  # an unfinished run's later blocks stay on disk (shapes only): per-layer views only
            continue
        for name, module in block.named_modules():
            if isinstance(module, StreamedLinear):
                continue
            mpath = f"{bpath}.{name}" if name else bpath
            disk.load(module, mpath, recurse=False)


def in_memory_bytes(info: RunInfo, disk=None) -> int:
    """About what ``load_run`` takes: the model in fp32 plus, per replaced linear, its dense
    sparse term and the factors (the original weight is the model's own)."""
    extra = sum(m.shape[0] * m.shape[1] + m.rank * (m.shape[0] + m.shape[1]) for m in info.modules.values())
    if disk is None:  # the whole model from its files' headers (an unfinished run names only some layers)
        folder = _local_safetensors(info.model_name)
        try:
            disk = DiskWeights(folder) if folder is not None else None
        except OatsError:
            disk = None
    model = disk.numel if disk is not None else sum(m.shape[0] * m.shape[1] for m in info.modules.values())
    return 4 * (model + extra)


def _local_safetensors(name: str) -> Path | None:
    p = Path(os.path.expanduser(name))
    try:
        return p if p.is_dir() and any(p.glob("*.safetensors")) else None
    except OSError:
        return None


def wants_lazy(info: RunInfo) -> bool:
    """Whether ``open_run`` opens this run lazily (see ``LAZY_ENV``)."""
    setting = os.environ.get(LAZY_ENV, "").strip()
    if setting == "0" or _local_safetensors(info.model_name) is None:
        return False
    if setting == "1":
        return True
    return in_memory_bytes(info) > LAZY_SHARE * available_memory()


def open_run(folder: str | Path, allow_partial: bool = False) -> CompressionRun:
    """The run of ``folder`` for viewing: in memory (``load_run``) where it fits easily, else a
    ``LazyRun`` (its model a local safetensors folder). One way for every page to ask."""
    info = RunInfo.read(Path(folder))
    if wants_lazy(info):
        return open_lazy(folder, allow_partial=allow_partial)
    # presets, hub and timm models: in memory (load_run says so in one line when it cannot fit)
    return load_run(folder, allow_partial=allow_partial)
