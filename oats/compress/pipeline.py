"""Sequential compression, block by block (OATS, Section 3.3).

For each block in order: hook its linears, run the calibration inputs (which already went
through the compressed earlier blocks) through the still-dense block to collect per-channel
second moments, compress every linear, then re-run the compressed block to produce the next
block's inputs. Embeddings, norms and heads stay dense.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from oats.compress.allocation import Owl, block_rates_for, parse_allocation
from oats.compress.calibration import (BlockInputs, capture_block_inputs, check_block_inputs, dense_block_stats,
                                       run_block)
from oats.compress.preflight import calibration_tokens, check_weights, estimate_compression_memory
from oats.compress.records import BlockRecord, CompressionRun, LayerRecord
from oats.compress.summaries import summary_of
from oats.config import OatsConfig
from oats.core.decompose import Decomposition, dense_budget
from oats.core.linear import OatsLinear, use_mode
from oats.errors import ConfigError
from oats.methods import registry
from oats.models.adapters import LinearRef, bias_of, get_adapter, set_submodule, weight_of
from oats.resources import COMPRESSION_MARGIN, FROM_DISK_MARGIN, check_memory, map_on_cores, return_freed_memory


def decompose_block(method: str, weights: list[torch.Tensor], second_moments: list[torch.Tensor],
                    grams: list[torch.Tensor | None], config: OatsConfig, device=None) -> list[Decomposition]:
    """Run ``method`` on the matrices of one block (the dispatch of ``compress_block``).

    ``grams[i]`` is the (d_in, d_in) input Gram of matrix i, collected only for methods whose
    statistics are "gram" (None otherwise).
    """
    return registry.get(method).decompose(weights, second_moments, grams, config, device=device)


ProgressFn = Callable[[int, int, str], None]


def _fuse(parts: list[tuple[LinearRef, Decomposition]], d_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assemble (sparse, u, v) of a whole (possibly fused) matrix from its parts' decompositions."""
    if len(parts) == 1 and parts[0][0].rows is None:
        dec = parts[0][1]
        return dec.sparse, dec.u, dec.v
    d_in = parts[0][1].sparse.shape[1]
    r_total = sum(dec.rank for _, dec in parts)
    sparse = torch.zeros(d_out, d_in, dtype=parts[0][1].sparse.dtype)
    u = torch.zeros(d_out, r_total, dtype=sparse.dtype)
    v = torch.zeros(r_total, d_in, dtype=sparse.dtype)
    c = 0
    for ref, dec in parts:
        a, b = ref.rows
        sparse[a:b] = dec.sparse.cpu()
        u[a:b, c:c + dec.rank] = dec.u.cpu()  # block-diagonal: each part's low rank stays its own
        v[c:c + dec.rank] = dec.v.cpu()
        c += dec.rank
    return sparse, u, v


class _OutputError:
    """Hooks on replaced linears: accumulate ||y' - y||^2 and ||y - b||^2 per part, where y' is
    the layer's actual (compressed) output and y = x W^T + b the dense one on the same input."""

    def __init__(self):
        self.num: dict[str, torch.Tensor] = {}
        self.den: dict[str, torch.Tensor] = {}
        self.current_mask = None
        self._handles = []

    def hook(self, module: OatsLinear, parts: list[tuple[str, tuple[int, int] | None]]):
        def fn(m, inp, out):
            x, y_c = inp[0].detach(), out.detach()
            mask = self.current_mask
            if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x, y_c = x[mask], y_c[mask]
            # y_d = x W^T without bias (it cancels in y' - y); the difference is formed in place
            # in y_d, so the hook holds one output-sized temporary besides the layer's outputs
            y_d = torch.nn.functional.linear(x, m.weight).reshape(-1, y_c.shape[-1])
            y = y_d.square().sum(0)
            y_d.sub_(y_c.reshape(-1, y_c.shape[-1]))
            if m.bias is not None:
                y_d.add_(m.bias)
            e = y_d.square().sum(0)
            for q, rows in parts:
                sl = slice(*rows) if rows else slice(None)
                self.num[q] = self.num.get(q, 0) + e[sl].sum()
                self.den[q] = self.den.get(q, 0) + y[sl].sum()
        self._handles.append(module.register_forward_hook(fn))

    def result(self, qualname: str) -> float | None:
        if qualname not in self.num:
            return None
        return float((self.num[qualname] / self.den[qualname].clamp_min(1e-30)).sqrt())

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def _decompose(block: nn.Module, by_path: dict[str, list[LinearRef]], stats, gram: bool, method: str,
               config: OatsConfig, device) -> tuple[dict[LinearRef, Decomposition], float]:
    """Step 2 of ``compress_block``: decompose every matrix of the block (each part of a fused
    one on its own); (decomposition per part, seconds)."""
    t0 = time.perf_counter()
    weights, norms, grams, meta = [], [], [], []
    for path, prefs in by_path.items():
        w_full = weight_of(block.get_submodule(path)).float()
        m2 = stats.mean(path)
        g = stats.gram(path) if gram else None
        for ref in prefs:
            w = w_full[ref.rows[0]:ref.rows[1]] if ref.rows else w_full
            weights.append(w)
            norms.append(m2)
            grams.append(g)
            meta.append(ref)
    decs = decompose_block(method, weights, norms, grams, config, device=device)
    del grams
    stats.grams.clear()
    return dict(zip(meta, decs)), time.perf_counter() - t0


def _replace_linears(block: nn.Module, index: int, block_path: str, by_path: dict[str, list[LinearRef]], stats,
                     dec_by_ref: dict[LinearRef, Decomposition], dconfig: OatsConfig, per_matrix_time: float):
    """Put an ``OatsLinear`` in place of every linear of the block; (layer records, second
    moments by qualified name, the new modules by path)."""
    records: list[LayerRecord] = []
    m2_out: dict[str, torch.Tensor] = {}
    new_modules: dict[str, OatsLinear] = {}
    for path, prefs in by_path.items():
        old = block.get_submodule(path)
        w_full = weight_of(old)
        sparse, u, v = _fuse([(r, dec_by_ref[r]) for r in prefs], w_full.shape[0])
        new = OatsLinear(w_full, bias_of(old), sparse.to(w_full.dtype), u.to(w_full.dtype), v.to(w_full.dtype))
        new.to(w_full.device)
        set_submodule(block, path, new)
        new_modules[path] = new
        for ref in prefs:
            dec = dec_by_ref[ref]
            d_out, d_in = dec.shape
            qual = f"{index}.{ref.name}"
            m2_out[qual] = stats.mean(path).cpu()
            records.append(LayerRecord(
                block=index, name=ref.name, path=f"{block_path}.{path}", kind=ref.kind, rows=ref.rows,
                shape=(d_out, d_in), rank=dec.rank, nnz=dec.nnz, params=dec.params,
                budget=dense_budget(d_out, d_in, dconfig), scaled_error=dec.error, output_error=None,
                iterations=dec.iterations, time_s=per_matrix_time, history=dec.history.to_dict()))
    return records, m2_out, new_modules


def _summaries(index: int, by_path: dict[str, list[LinearRef]], new_modules: dict[str, OatsLinear],
               records: list[LayerRecord], m2_out: dict[str, torch.Tensor], eps: float) -> dict[str, dict]:
    """Each matrix's summary (``oats.compress.summaries``), from the terms the new modules hold,
    sliced as ``CompressionRun.factors`` slices them (a fused part: its rows and its own rank
    columns, in the records' order), one matrix per core like the decompositions."""
    rank = {r.qualname: r.rank for r in records}
    items = []
    for path, prefs in by_path.items():
        mod, start = new_modules[path], 0
        for ref in prefs:
            q = f"{index}.{ref.name}"
            if ref.rows is None:
                items.append((q, mod.weight, mod.sparse, mod.u, mod.v))
            else:
                rows, cols = slice(*ref.rows), slice(start, start + rank[q])
                items.append((q, mod.weight[rows], mod.sparse[rows], mod.u[rows, cols], mod.v[cols]))
            start += rank[q]
    out = map_on_cores(lambda it: summary_of(it[1], it[2], it[3], it[4], m2_out[it[0]], rank[it[0]], eps), items,
                       cost=lambda it: int(it[1].shape[0]) * int(it[1].shape[1]) * min(it[1].shape),
                       device=items[0][1].device if items else None,
                       item_bytes=lambda it: 6 * 4 * it[1].numel())  # W D, S, L and their sums side by side
    return {it[0]: summ for it, summ in zip(items, out)}


def _rerun(block: nn.Module, adapter, index: int, by_path, new_modules, inputs: BlockInputs, dense_out,
           records: list[LayerRecord]) -> tuple[float, list[torch.Tensor]]:
    """Step 3 of ``compress_block``: re-run the compressed block for the next inputs, filling
    each layer record's output error; (the block's relative output error, next inputs)."""
    oerr = _OutputError()
    for path, prefs in by_path.items():
        oerr.hook(new_modules[path], [(f"{index}.{r.name}", r.rows) for r in prefs])
    num = den = 0.0
    next_hidden = []
    try:
        for i, (h, a, kw) in enumerate(zip(inputs.hidden, inputs.args, inputs.kwargs)):
            oerr.current_mask = inputs.token_masks[i]
            out = adapter.block_output(block(h, *a, **kw)).detach()
            next_hidden.append(out)
            diff, ref_out = out - dense_out[i], dense_out[i]
            mask = inputs.token_masks[i]
            if mask is not None and tuple(out.shape[:2]) == tuple(mask.shape):
                diff, ref_out = diff[mask], ref_out[mask]
            num += float(diff.float().square().sum())
            den += float(ref_out.float().square().sum())
    finally:
        oerr.remove()
    for rec in records:
        rec.output_error = oerr.result(rec.qualname)
    return (num / max(den, 1e-30)) ** 0.5, next_hidden


@torch.no_grad()
def compress_block(model: nn.Module, adapter, index: int, block_path: str, block: nn.Module,
                   inputs: BlockInputs, config: OatsConfig, method: str = "oats", device=None,
                   next_inputs: str = "compressed", summaries: dict | None = None,
                   ) -> tuple[list[LayerRecord], BlockRecord, dict[str, torch.Tensor], list[torch.Tensor]]:
    """Compress one block in place. Returns (layer records, block record, statistics, next inputs):
    the compressed block's outputs, or with ``next_inputs="dense"`` the dense block's (the
    ``BLOCK_INPUTS`` of ``oats.compress.calibration``).

    ``summaries``: a dict (``CompressionRun.summaries``) that receives each matrix's summary
    (``oats.compress.summaries``), computed while the terms are in memory; None: no summaries."""
    record = registry.get(method)
    dconfig = record.decompose_config(config)
    # the diagonal second moments are collected (and kept in the run) for every method; the Gram too if needed
    gram = record.statistics == "gram"
    refs = adapter.linears(model, block)
    by_path: dict[str, list[LinearRef]] = {}
    for ref in refs:
        by_path.setdefault(ref.path, []).append(ref)

    # 1. statistics of the dense block on the (already compressed) inputs
    t0 = time.perf_counter()
    stats, dense_out = dense_block_stats(block, adapter, inputs, by_path, gram=gram)
    t_stats = time.perf_counter() - t0

    # 2. decompose every matrix of the block
    dec_by_ref, t_dec = _decompose(block, by_path, stats, gram, method, config, device)
    per_matrix_time = t_dec / max(len(dec_by_ref), 1)
    records, m2_out, new_modules = _replace_linears(block, index, block_path, by_path, stats, dec_by_ref, dconfig,
                                                    per_matrix_time)
    if summaries is not None:
        summaries.update(_summaries(index, by_path, new_modules, records, m2_out, config.eps))

    # 3. re-run the compressed block: next inputs, output errors
    error, next_hidden = _rerun(block, adapter, index, by_path, new_modules, inputs, dense_out, records)
    brec = BlockRecord(index=index, path=block_path, output_error=error, stats_time_s=t_stats, decompose_time_s=t_dec)
    return records, brec, m2_out, dense_out if next_inputs == "dense" else next_hidden


def resolve_device(device) -> torch.device | None:
    """None (stay where the model is), or a torch.device that exists here; ConfigError otherwise."""
    if device is None or device == "":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not understood: use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} is not available here (no CUDA GPU): use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported: use cpu or cuda")
    return dev


def _to(batch: dict, dev: torch.device) -> dict:
    return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def compress_model(model: nn.Module, calibration: list[dict], config: OatsConfig | None = None,
                   method: str = "oats", progress: ProgressFn | None = None, *, model_name: str = "",
                   device=None, allow_generic: bool = False, on_block_done=None,
                   resume: CompressionRun | None = None, block_rates: list[float] | None = None,
                   allocation=None, disk=None, block_inputs: str = "compressed", dispatch=None) -> CompressionRun:
    """Compress every linear inside the transformer blocks of ``model``, in place.

    Args:
        model: a model an adapter supports (see ``oats.models.adapters``), in eval mode.
        calibration: model-input dicts (``oats.data.calibration_batches``).
        config: budgets and solver; ``OatsConfig()`` by default.
        method: a registered method (``oats.methods.names()``: "oats", "wanda", "sparsegpt",
            "magnitude", "lowrank" and any registered later). Every method keeps (1 - rho) of
            each matrix's parameters (its ``budget_note`` says how).
        progress: callable(done_blocks, total_blocks, message), called as blocks finish.
        device: "cpu" or "cuda": the model (block forward passes) and the decompositions move
            there; None keeps the model where it is.
        on_block_done: callable(run_so_far, block_index) after each block (used to save).
        resume: a partial run of this model (``oats.runs.folders.load_run(..., allow_partial=True)``):
            its blocks are already compressed in ``model`` and are only run forward.
        block_rates: per-block compression rates (one per block, each in (0, 1)) instead of
            ``config.compression`` everywhere; ``config.compression`` should be their mean.
        allocation: "uniform" (default), "owl" or an ``oats.compress.allocation.Owl``: compute the
            per-block rates OWL-style from a dense statistics pass first (mean rate kept).
        disk: the larger-than-memory mode (``loaded.disk`` of ``oats.models.zoo.load_model(...,
            from_disk=True)``): the blocks of ``model`` are on the meta device; each is read
            from the weight files just before its turn and dropped once ``on_block_done`` has
            saved it, so ``run.model`` ends without its blocks (the run folder has them). The
            blocks run on the CPU; ``device`` places the decompositions only.
        block_inputs: "compressed" (default: each block calibrated on the outputs of the
            compressed blocks before it) or "dense" (on the dense model's own block inputs:
            blocks independent); ``oats.compress.calibration.BLOCK_INPUTS``. Recorded in
            ``run.calibration`` when dense; a resumed run must have been made the same way.
        dispatch: with dense block inputs only: callable(index, block_path, inputs, config)
            called instead of compressing each block here (``oats.runner.blocks_ray`` sends it
            to a Ray task); the block is only run forward, dense, for the next one's inputs.

    Returns:
        A ``CompressionRun``; ``run.model`` is ``model`` with its linears replaced.
    """
    s = _settings(config, method, model_name, device, allow_generic, allocation, block_rates, disk, resume,
                  calibration)
    check_block_inputs(block_inputs, resume)
    if dispatch is not None and block_inputs != "dense":
        raise ValueError("blocks are compressed elsewhere only with dense block inputs (they depend on each other)")
    if disk is not None:
        return_freed_memory()  # so that each dropped block's memory really leaves the process
    elif s.device is not None:
        model.to(s.device)
        calibration = [_to(b, s.device) for b in calibration]
    model.eval()
    adapter = get_adapter(model, allow_generic=allow_generic)
    blocks = adapter.blocks(model)
    # Fail in a second, not half-way: patterns that do not fit, damaged weights, too little memory.
    skip = {b.index for b in resume.blocks} if resume is not None else set()
    check_weights(adapter, model, blocks, s.config, skip=skip, values=disk is None)
    tokens = calibration_tokens(calibration, model)
    check_memory(estimate_compression_memory(adapter, model, blocks, tokens, method, from_disk=disk is not None),
                 what=f"compressing '{model_name or type(model).__name__}' on {tokens} calibration tokens",
                 margin=COMPRESSION_MARGIN if disk is None else FROM_DISK_MARGIN)
    rates, alloc_info = _block_rates(s, model, calibration, len(blocks), resume, progress, disk)
    run = CompressionRun(model=model, model_name=model_name, family=adapter.family, method=method,
                         config=s.config, layers=[], blocks=[], second_moments={},
                         calibration={"batches": len(calibration)}, timings={},
                         block_rates=rates, allocation=alloc_info)
    if block_inputs != "compressed":  # (a run that says nothing was calibrated on compressed inputs)
        run.calibration["block_inputs"] = block_inputs
    done = _take_over(run, resume, s.config, method, rates)
    return _compress_blocks(run, adapter, blocks, calibration, done, s, disk, progress, on_block_done, resume,
                            block_inputs, dispatch)


@dataclass(frozen=True)
class CompressionSettings:
    """``compress_model``'s settings, checked before any work: the config with the method's
    own settings filled in, the method, the device (None: where the model is), the OWL
    allocation (None: uniform or given rates) and the per-block rates given (None: none)."""

    config: OatsConfig
    method: str = "oats"
    device: torch.device | None = None
    allow_generic: bool = False
    owl: Owl | None = None
    block_rates: tuple | None = None


def _settings(config, method, model_name, device, allow_generic, allocation, block_rates, disk, resume,
              calibration) -> CompressionSettings:
    """``compress_model``'s arguments checked (ConfigError, one line) into its settings."""
    record = registry.get(method)
    # the settings left to the method filled in (the run records what it really used)
    config = record.resolved(config or OatsConfig())
    record.decompose_config(config)  # validates the method and its settings before any work
    owl = parse_allocation(allocation)
    if owl is not None and block_rates is not None:
        raise ConfigError("give either block_rates or an allocation, not both")
    if owl is not None:
        owl.check(config)
    if not calibration:
        raise ConfigError("no calibration data: give at least one calibration batch")
    dev = resolve_device(device)
    if disk is not None:
        # (OWL's dense outlier pass streams the blocks from disk as the compression does)
        if resume is not None and not hasattr(resume, "apply_block"):
            raise ConfigError("a run compressed from disk resumes from its folder: open it with "
                              "oats.runs.lazy.open_lazy(folder, allow_partial=True, stream=False)")
    return CompressionSettings(config, method, dev, allow_generic, owl,
                               None if block_rates is None else tuple(block_rates))


def _block_rates(s: CompressionSettings, model, calibration, n_blocks: int, resume, progress, disk=None):
    """(per-block rates or None, the allocation record) of a run: the rates given, OWL's (the
    resumed run's own, or from a dense statistics pass now: from disk, its blocks streamed one
    at a time), or None for the uniform rate."""
    if s.block_rates is not None:
        rates = _check_block_rates(s.block_rates, n_blocks, s.config)
        return rates, {"name": "given", "block_rates": rates}
    if s.owl is None:
        return None, None
    if resume is not None and resume.block_rates is not None:
        return list(resume.block_rates), resume.allocation
    t0 = time.perf_counter()
    rates, alloc_info = block_rates_for(model, calibration, s.config, s.owl, allow_generic=s.allow_generic,
                                        disk=disk)
    alloc_info["time_s"] = time.perf_counter() - t0
    if progress:
        progress(0, n_blocks, "OWL block rates " + ", ".join(f"{r:.3f}" for r in rates))
    return rates, alloc_info


def _take_over(run: CompressionRun, resume: CompressionRun | None, config: OatsConfig, method: str,
               block_rates) -> set[int]:
    """The blocks of ``resume`` moved into ``run`` (ConfigError when it was made otherwise); their indices."""
    if resume is None:
        return set()
    if resume.config != config or resume.method != method:
        raise ConfigError("the run to resume was made with other settings: resume with the same "
                          "method, compression, rank ratio, iterations and sparsity")
    if (resume.block_rates is None) != (block_rates is None) or (
            block_rates is not None and any(abs(a - b) > 1e-9 for a, b in zip(resume.block_rates, block_rates))):
        raise ConfigError("the run to resume was made with another budget allocation: resume with the same "
                          "allocation (uniform or OWL with the same parameters)")
    run.layers, run.blocks = list(resume.layers), list(resume.blocks)
    run.second_moments = dict(resume.second_moments)
    run.summaries = dict(resume.summaries)  # (a lazily opened resume reads its own from the folder)
    return {b.index for b in resume.blocks}


def _compress_blocks(run: CompressionRun, adapter, blocks, calibration, done: set[int], s: CompressionSettings,
                     disk, progress, on_block_done, resume=None, block_inputs="compressed",
                     dispatch=None) -> CompressionRun:
    """Capture the first block's inputs, then compress the blocks in order (carrying the inputs
    of the ``done`` ones forward), calling the hooks after each; the run with its timings.
    With dense block inputs the dense blocks' outputs are carried forward (a done block runs
    in its dense mode), and ``dispatch`` may take each block's compression elsewhere."""
    model, config, block_rates = run.model, s.config, run.block_rates
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    inputs = capture_block_inputs(model, adapter, blocks[0][1], calibration)
    run.calibration["tokens"] = inputs.tokens
    run.timings["capture_s"] = time.perf_counter() - t0
    total = len(blocks)
    if progress:
        progress(0, total, f"captured {inputs.tokens} calibration tokens")
    for i, (path, block) in enumerate(blocks):
        if disk is not None:  # read this block's weights now (it was on the meta device)
            disk.load(block, path)
            check_weights(adapter, model, [(path, block)], config)
        if i in done:  # already compressed: only carry the inputs forward
            if disk is not None and block_inputs == "compressed":  # its factors come from the run folder
                resume.apply_block(block, path, i)
            with use_mode(block, "dense") if block_inputs == "dense" else nullcontext():  # dense: the dense outputs
                inputs.hidden = run_block(block, adapter, inputs)
            if disk is not None:
                disk.release(block)
            continue
        bconfig = config if block_rates is None else config.replace(compression=block_rates[i])
        if dispatch is not None:  # compressed elsewhere: only the dense outputs are needed here
            dispatch(i, path, inputs, bconfig)
            inputs.hidden = run_block(block, adapter, inputs)
            if disk is not None:
                disk.release(block)
            continue
        recs, brec, m2, next_hidden = compress_block(model, adapter, i, path, block, inputs, bconfig, s.method,
                                                     s.device, next_inputs=block_inputs,
                                                     summaries=run.summaries)
        run.layers.extend(recs)
        run.blocks.append(brec)
        run.second_moments.update(m2)
        inputs.hidden = next_hidden
        if on_block_done:
            on_block_done(run, i)
        if disk is not None:  # saved: drop its weights and factors
            disk.release(block)
        if progress:
            progress(i + 1, total, f"block {i}: output error {brec.output_error:.4f}")
    run.timings["stats_s"] = sum(b.stats_time_s for b in run.blocks)
    run.timings["decompose_s"] = sum(b.decompose_time_s for b in run.blocks)
    run.timings["total_s"] = time.perf_counter() - t_all
    return run


def _check_block_rates(rates, n_blocks: int, config: OatsConfig) -> list[float]:
    rates = [float(r) for r in rates]
    if len(rates) != n_blocks:
        raise ConfigError(f"block_rates has {len(rates)} values but the model has {n_blocks} blocks: give one per block")
    if config.nm is not None:
        raise ConfigError(f"per-block compression rates do not apply to sparsity {config.sparsity} (N:M fixes the "
                          "rate): use sparsity 'row' or 'layer'")
    for r in rates:
        OatsConfig(compression=r)  # same message as a bad compression anywhere
    return rates
