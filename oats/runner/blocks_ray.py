"""One model's blocks compressed in parallel, as Ray tasks (``oats compress --engine ray
--block-inputs dense``).

Sequential compression (the default) calibrates block i on what the compressed blocks before
it output, so block i cannot start before block i-1 is done. With dense block inputs
(``oats.compress.calibration.BLOCK_INPUTS``) every block is calibrated on the dense model's
own activations, so the blocks are independent:

1. this machine (the driver) runs the usual pipeline pass with ``dispatch``: each block's
   dense inputs are captured (the previous dense block's outputs; from disk each block is
   read, run and released) and sent, with the block's settings, to a Ray task through the
   object store (which spills to disk when full); the driver only runs the block forward;
2. each task loads its block's weights (the from-disk reader for a run from disk, the model
   otherwise), compresses it with ``compress_block`` exactly as the local pipeline does, and
   writes its block file into the run folder (which must be storage every worker shares;
   checked first, as ``oats sweep --engine ray`` checks its runs root);
3. the driver gathers the records as tasks end and rewrites the manifest in block order after
   each, so a driver stopped half-way leaves a run that resumes (``--resume``) after the
   finished blocks, whichever they are.

The run folder is the same as a local ``--block-inputs dense`` run's: block files byte for
byte, the manifest but for times (tests/test_block_parallel.py).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict
from pathlib import Path

import torch

from oats.compress.calibration import BlockInputs
from oats.compress.pipeline import compress_block, resolve_device
from oats.compress.records import BlockRecord, CompressionRun, LayerRecord
from oats.config import OatsConfig
from oats.core.linear import OatsLinear
from oats.errors import ConfigError, OatsError, RunError
from oats.models import zoo
from oats.models.adapters import bias_of, get_adapter, set_submodule, weight_of
from oats.runner.cluster import RayEngine
from oats.runner.execute import Outcome, execute, failure_line
from oats.runner.request import CompressRequest
from oats.runs.folders import apply_factors, atomic_save_tensors, block_tensors
from oats.runs.info import RunInfo


def block_file(folder: Path, index: int) -> Path:
    """Where a run folder keeps block ``index`` (``oats.runs.folders``' layout)."""
    return folder / f"block_{index:03d}.safetensors"


def _moved(inputs: BlockInputs, device) -> BlockInputs:
    """``inputs`` with every tensor (the hidden states, masks and the replayed arguments) on ``device``."""
    def to(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, (tuple, list)):
            return type(x)(to(v) for v in x)
        if isinstance(x, dict):
            return {k: to(v) for k, v in x.items()}
        return x
    return BlockInputs(hidden=to(inputs.hidden), args=to(inputs.args), kwargs=to(inputs.kwargs),
                       token_masks=to(inputs.token_masks))


def compress_one_block(request: CompressRequest, folder: Path, index: int, path: str, inputs: BlockInputs,
                       config: OatsConfig) -> dict:
    """Compress block ``index`` (module ``path``) of ``request``'s model on its captured
    ``inputs`` and write its block file into ``folder``; what the driver needs of it (records,
    second moments, each replaced linear's shape and rank).

    The block is compressed as ``compress_model`` compresses it here: in memory the block (and
    its inputs) move to the request's device, from disk the block stays on the CPU and the
    device places the decompositions only."""
    loaded = zoo.load_model(request.model, trust_remote_code=request.trust_remote_code,
                            **({"from_disk": True} if request.from_disk else {}))
    model = loaded.model
    model.eval()
    adapter = get_adapter(model, allow_generic=request.generic)
    block = model.get_submodule(path)
    device = resolve_device(request.device)
    if loaded.disk is not None:
        loaded.disk.load(block, path)
    elif device is not None:
        block.to(device)
        inputs = _moved(inputs, device)
    summaries: dict = {}
    recs, brec, m2, _ = compress_block(model, adapter, index, path, block, inputs, config, request.method, device,
                                       summaries=summaries)
    run = CompressionRun(model=model, model_name=request.model, family=adapter.family, method=request.method,
                         config=config, layers=recs, blocks=[brec], second_moments=m2, calibration={}, timings={},
                         summaries=summaries)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(block_tensors(run, index), block_file(folder, index),
                        then=f"resume with 'oats compress {request.model} --out {folder} --resume'")
    mods = run.modules()
    shapes = {p: [*mods[p].weight.shape, mods[p].rank] for p in dict.fromkeys(r.path for r in recs)}
    return {"status": "computed", "layers": [r.to_dict() for r in recs], "block": asdict(brec),
            "m2": {k: v.cpu() for k, v in m2.items()}, "summaries": summaries, "shapes": shapes,
            "host": socket.gethostname(), "pid": os.getpid()}


def block_task(request_json: str, folder: str, index: int, path: str, inputs: BlockInputs, config: dict) -> dict:
    """One block, in a Ray worker (``compress_one_block``). An ``OatsError`` is returned as
    {"status": "failed", "error": its line} (a retry would repeat it); anything else raises,
    so Ray runs the task again."""
    try:
        return compress_one_block(CompressRequest.from_json(request_json), Path(folder), index, path, inputs,
                                  OatsConfig.from_dict(config))
    except OatsError as e:
        return {"status": "failed", "error": failure_line(e)}


def _placeholder(model: torch.nn.Module, path: str, d_out: int, d_in: int, rank: int) -> OatsLinear:
    """An ``OatsLinear`` put in place of ``path`` while its factors are only on disk: the dense
    weight as it is (by reference), the terms on the meta device with their shapes, so the
    run's manifest can be written (it needs each replaced linear's shape and rank)."""
    old = model.get_submodule(path)
    w = weight_of(old)
    new = OatsLinear(w, bias_of(old), torch.empty(d_out, d_in, device="meta", dtype=w.dtype),
                     torch.empty(d_out, rank, device="meta", dtype=w.dtype),
                     torch.empty(rank, d_in, device="meta", dtype=w.dtype))
    set_submodule(model, path, new)
    return new


class RayBlocks:
    """``execute``'s ``blocks``: the blocks of one run compressed as Ray tasks of an opened
    ``RayEngine`` (module docstring)."""

    def __init__(self, engine: RayEngine):
        self.engine = engine

    def __call__(self, request: CompressRequest, writer, progress, compress) -> CompressionRun:
        folder = writer.folder.resolve()
        fn = self.engine.remote(block_task)
        body = request.to_json()
        pending: dict = {}

        def dispatch(index: int, path: str, inputs: BlockInputs, config: OatsConfig) -> None:
            # the arguments go to the object store now: the driver's inputs may change afterwards
            pending[fn.remote(body, str(folder), index, path, _moved(inputs, "cpu"), config.to_dict())] = index

        t0 = time.perf_counter()
        run = compress(dispatch)
        run = self._gather(run, pending, writer, progress)
        run.timings["total_s"] = time.perf_counter() - t0  # the dense pass and the tasks it waited for
        return run

    def _gather(self, run: CompressionRun, pending: dict, writer, progress) -> CompressionRun:
        """Take each task's block into ``run`` as it ends, the manifest rewritten in block
        order each time; RunError (one line) when a block failed (the others are kept)."""
        total = len(run.blocks) + len(pending)
        failed: list[tuple[int, str]] = []
        for index, body in self.engine.each_done(pending):
            if body.get("status") != "computed":
                failed.append((index, body.get("error", "failed")))
                continue
            brec = self._take(run, index, body)
            writer.manifest(run)
            if progress:
                progress(len(run.blocks), total, f"block {index}: output error {brec.output_error:.4f}")
        if failed:
            index, error = min(failed)
            raise RunError(f"{len(failed)} of {len(pending)} blocks failed (block {index}: {error}); the finished "
                           f"blocks are saved: resume with 'oats compress {run.model_name} --out {writer.folder} "
                           "--resume'")
        run.timings["stats_s"] = sum(b.stats_time_s for b in run.blocks)
        run.timings["decompose_s"] = sum(b.decompose_time_s for b in run.blocks)
        if not any(p.device.type == "meta" for p in run.model.parameters()):  # in memory (not from disk):
            apply_factors(run.model, writer.folder, RunInfo.of_run(run, complete=False))  # the compressed model
        return run

    @staticmethod
    def _take(run: CompressionRun, index: int, body: dict) -> BlockRecord:
        """One finished block's records and statistics into ``run``, in block order; its record."""
        run.layers.extend(LayerRecord.from_dict(d) for d in body["layers"])
        run.layers.sort(key=lambda r: r.block)  # stable: a block's matrices keep their order
        brec = BlockRecord(**body["block"])
        run.blocks.append(brec)
        run.blocks.sort(key=lambda b: b.index)
        run.second_moments.update(body["m2"])
        run.summaries.update(body.get("summaries") or {})
        for path, (d_out, d_in, rank) in body["shapes"].items():
            _placeholder(run.model, path, d_out, d_in, rank)
        return brec


def compress_on_ray(request: CompressRequest, folder: str | Path, engine: RayEngine, **options) -> Outcome:
    """``execute`` with the blocks of ``request`` compressed as Ray tasks of ``engine``, an
    unopened ``RayEngine`` (opened here, and closed after when it started a local instance; a
    process already connected to Ray keeps its connection). The request must calibrate on
    dense block inputs, and every worker must be able to write where ``folder`` is (both
    checked before the model loads). ``options``: ``execute``'s."""
    if request.block_inputs != "dense":
        raise ConfigError("the blocks of one model are compressed in parallel only with --block-inputs dense "
                          "(compressed inputs chain each block to the one before it)")
    request.check()
    folder = Path(folder)
    with engine:
        engine.check_shared(folder.resolve().parent)
        return execute(request, folder, blocks=RayBlocks(engine), **options)
