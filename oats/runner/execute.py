"""The one compress step: check, load, calibrate, resume or reuse, compress into a run folder,
evaluate. ``oats compress``, the app's background jobs (in a thread or a worker process) and
``oats sweep`` all call :func:`execute`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from oats import corpora, data
from oats.compress import pipeline
from oats.compress.pipeline import resolve_device
from oats.compress.records import CompressionRun
from oats.errors import OatsError
from oats.evaluation import evaluate, run_modes
from oats.models import zoo
from oats.runner.request import CompressRequest, check_calib_domain, data_kind
from oats.runs.estimate import this_machine
from oats.runs.evaluations import save_evaluation
from oats.runs.folders import RunWriter, check_run_folder, clear_run_folder, load_run
from oats.runs.lazy import open_lazy
from oats.runs.state import Action, FolderState, inspect

IF_EXISTS = ("resume", "replace")
"""What ``execute`` does with a folder that already holds files: continue or reuse the same run
(another run there is an error), or replace whatever is there."""


class Cancelled(Exception):
    """Raised by a progress callback to stop a compression after the block in progress."""


@dataclass
class Outcome:
    """What ``execute`` did."""

    run: CompressionRun
    """The compressed model and its records (``run.loaded`` is the loaded model)."""
    folder: Path
    status: str
    """The ``Action`` taken, in its past tense (``Action.done``): "computed" (from scratch),
    "resumed" (after ``resumed_blocks`` finished ones) or "reused" (the folder already held the
    complete run)."""
    resumed_blocks: int = 0
    load_s: float = 0.0
    evaluation_note: str = ""
    """"" when the evaluation was saved or not asked for; else why it is missing."""

    def message(self) -> str:
        if self.status == Action.REUSE.done:
            return REUSED_MESSAGE
        return f"compressed {len(self.run.blocks)} blocks in {self.run.timings['total_s']:.0f} s" + self.evaluation_note


REUSED_MESSAGE = "already compressed with these settings: opened the saved run"
"""The one line for a request whose folder already holds its complete run (a job says it too)."""


def _quiet(**_fields) -> None:
    pass


def folder_state(request: CompressRequest, folder: Path, if_exists: str = "resume") -> FolderState:
    """``oats.runs.state.inspect`` of ``folder`` for ``request`` under ``if_exists``, refused
    (RunError, one line) when the folder holds another run or a damaged one and ``if_exists``
    is "resume", or cannot be a run folder at all (``check_run_folder``: a file, a name too long,
    not writable, someone else's files).

    Everything here is decided before the model loads.
    """
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {IF_EXISTS}, not {if_exists!r}")
    check_run_folder(folder)
    return inspect(folder, request, replace=if_exists == "replace").check()


def execute(request: CompressRequest, folder: str | Path, *,
            update: Callable[..., None] | None = None,
            progress: Callable[[int, int, str], None] | None = None,
            if_exists: str = "resume", loaded: zoo.LoadedModel | None = None,
            batches: list[dict] | None = None, extra: dict | None = None, blocks=None) -> Outcome:
    """Compress ``request`` into ``folder`` and return what happened.

    Args:
        update: callable(stage=..., message=...) at each stage change.
        progress: callable(done_blocks, total_blocks, message) after every block; it may raise
            ``Cancelled`` to stop there (finished blocks stay on disk and resume later).
        if_exists: see ``IF_EXISTS``.
        loaded: the model already loaded by ``request.model`` (``zoo.load_model``); it is
            compressed in place (a sweep passes a fresh copy per run).
        batches: the calibration batches already made for ``request`` (a sweep shares them).
        extra: more manifest entries (a sweep records its folder).
        blocks: None (the blocks are compressed here), or callable(request, writer, progress,
            compress) -> run that compresses them elsewhere: ``compress(dispatch)`` runs the
            pipeline with ``dispatch`` (``oats.runner.blocks_ray.RayBlocks``: Ray tasks).

    Errors are ``OatsError`` with one line for anything the user can fix; they are raised
    before the model loads when the request itself is wrong.
    """
    update = update or _quiet
    folder = Path(folder)
    request.check()
    resolve_device(request.device)
    action = folder_state(request, folder, if_exists).action
    t0 = time.perf_counter()
    if loaded is None:
        update(stage="loading", message=f"loading {request.model}" + (" (blocks stay on disk)" if request.from_disk else ""))
        loaded = zoo.load_model(request.model, trust_remote_code=request.trust_remote_code,
                                **({"from_disk": True} if request.from_disk else {}))
    if action is Action.REUSE:
        if request.from_disk:  # the model stays on disk: the run is opened the same way
            run = open_lazy(folder, loaded=loaded)
        else:
            run = load_run(folder, model=loaded.model)
        run.loaded = loaded
        return Outcome(run=run, folder=folder, status=Action.REUSE.done, load_s=time.perf_counter() - t0)
    if request.calib_source is None:  # a domain of the other kind is one line, before any work
        check_calib_domain(request.calib_domain, data_kind(request.model, getattr(loaded, "task", None)))
    if batches is None:
        update(stage="calibration data", message="preparing calibration data")
        batches = data.calibration_batches(loaded, n_samples=request.calib_samples, seq_len=request.seq_len,
                                           source=request.calib_source, seed=request.seed,
                                           domain=request.calib_domain)
    t_load = time.perf_counter() - t0
    resume = None
    if action is Action.RESUME:
        # from disk: the finished blocks' factors are read from the folder as their turn comes
        resume = (open_lazy(folder, allow_partial=True, loaded=loaded, stream=False) if request.from_disk
                  else load_run(folder, model=loaded.model, allow_partial=True))
        update(message=f"resuming after {len(resume.blocks)} finished blocks")
    else:
        clear_run_folder(folder)
    writer = RunWriter(folder, extra={"calibration_request": request.calibration_request(),
                                      "model_source": loaded.source, "task": loaded.task,
                                      "machine": this_machine(),  # for the time estimate of later runs
                                      **(extra or {})})
    update(stage="compressing", message="capturing calibration inputs")

    def compress(dispatch=None) -> CompressionRun:
        return _compress(request, loaded, batches, progress, writer, resume, dispatch)
    run = compress() if blocks is None else blocks(request, writer, progress, compress)
    run.calibration.update(calibration_record(request, loaded, batches))
    run.timings["load_s"] = t_load
    writer.finish(run)
    run.loaded = loaded
    outcome = Outcome(run=run, folder=folder, status=(Action.RESUME if resume is not None else Action.COMPUTE).done,
                      resumed_blocks=len(resume.blocks) if resume is not None else 0, load_s=t_load)
    if request.evaluate:
        if loaded.disk is not None:  # the model never was in memory: evaluated streamed, a matrix at a time
            run = outcome.run = open_lazy(folder, loaded=loaded)
        update(stage="evaluating", message="evaluating dense, compressed, sparse-only and low-rank-only")
        outcome.evaluation_note = evaluate_and_save(run, folder)
    return outcome


def calibration_record(request: CompressRequest, loaded, batches: list[dict]) -> dict:
    """What the manifest's ``calibration`` says about the data, beside the batches and tokens
    the pipeline counted: its ``domain`` ("mix" or one domain; None for the user's own data),
    the ``domains`` it drew from, the user's ``source``, and the ``samples`` (sequences,
    sentences or images) in the batches."""
    kind = data_kind(request.model, getattr(loaded, "task", None))
    domain = request.domain
    if domain is None:
        domains = []
    elif domain == corpora.MIX:
        domains = list(corpora.domains(kind or "text"))
    else:
        domains = [domain]
    samples = 0
    for b in batches:
        t = b.get("input_ids", b.get("pixel_values")) if isinstance(b, dict) else None
        if t is None and isinstance(b, dict):
            t = next((v for v in b.values() if isinstance(v, torch.Tensor)), None)
        samples += int(t.shape[0]) if isinstance(t, torch.Tensor) and t.dim() else 0
    return {"domain": domain, "domains": domains, "source": request.calib_source, "samples": samples,
            "kind": kind}


def _compress(request: CompressRequest, loaded, batches, progress, writer, resume, dispatch=None) -> CompressionRun:
    """``compress_model`` with the request's settings, saving every block through ``writer``
    (each manifest written on the way already names the calibration data)."""
    described = calibration_record(request, loaded, batches)

    def block_done(run: CompressionRun, block: int) -> None:
        run.calibration.update(described)
        writer.block_done(run, block)

    return pipeline.compress_model(loaded.model, batches, request.config, method=request.method, progress=progress,
                          model_name=request.model, device=request.device, allow_generic=request.generic,
                          on_block_done=block_done, resume=resume, allocation=request.allocation,
                          disk=loaded.disk, block_inputs=request.block_inputs, dispatch=dispatch)


def evaluate_and_save(run: CompressionRun, folder: str | Path, quick: bool = False) -> str:
    """Evaluate the variants of ``run`` its method has (``run_modes``) and write
    ``evaluation.json`` with what it was measured on (the evaluation's settings: text or images,
    domains, windows, sentences); returns a note for the job message ("" on success)."""
    try:
        ev = evaluate(run, run.loaded, modes=run_modes(run.method, run.config), quick=quick)
    except OatsError as e:
        return f" (evaluation failed: {one_line(e)})"
    save_evaluation(folder, ev.metrics, quick, settings=ev.settings, time_s=ev.time_s)
    return ""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def failure_line(exc: BaseException) -> str:
    """The one line shown for an exception raised by ``execute``."""
    if isinstance(exc, OatsError):
        return one_line(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: choose a smaller model or fewer calibration samples"
    return f"unexpected {type(exc).__name__}: {one_line(exc)} (please report it with the settings used)"


def replace_model(loaded: zoo.LoadedModel, model) -> zoo.LoadedModel:
    """``loaded`` with another model object (a sweep compresses a fresh copy per run)."""
    return dataclasses.replace(loaded, model=model)
