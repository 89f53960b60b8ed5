"""Background compression for the app, no Streamlit here.

A job compresses one model into one run folder through ``RunWriter`` (so every finished
block is on disk: a job cut short by a restart shows up as an unfinished run and resumes)
and reports its progress in a thread-safe ``JobState`` the page polls. Jobs are keyed by
their run folder, and the folder name is derived from the request, so asking twice for the
same compression computes it once. Jobs run one at a time (the rest wait as "queued"): two
compressions side by side on a few cores would only slow each other down.

Where the work runs (``JobRunner(isolation=...)``):

* ``"process"`` (the app's runner): each job is a child process (``python -m oats.worker``)
  that reports its progress as JSON lines on stdout. The compression then has an
  interpreter of its own: the app's page runs, and Streamlit's full garbage collection after
  every script and fragment run (which holds the interpreter lock), cannot stall it, and a
  crash of the compression cannot take the app down. Measured in ``benchmarks/app.py``.
* ``"thread"``: a daemon thread in this process (the same steps, for library use and tests
  that replace parts of the pipeline in-process).

After compressing, a job evaluates the dense, compressed, sparse-only and low-rank-only
variants (``oats.evaluation.evaluate_run``) and keeps the result next to the run as
``evaluation.json``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from oats.config import OatsConfig
from oats.errors import OatsError, RunError
from oats.methods import registry

EVALUATION_FILE = "evaluation.json"
STATUSES = ("queued", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class CompressRequest:
    """Everything that decides a compression's result (and so its run folder's name)."""

    model: str
    """Preset name, hub id or local model folder (what ``oats.models.zoo.load_model`` takes)."""
    config: OatsConfig = field(default_factory=OatsConfig)
    method: str = "oats"
    calib_source: str | None = None
    """A text file (text models) or an image folder (vision models); None: the built-in data."""
    calib_samples: int | None = None
    """Calibration sequences or images; None: the data module's default for the task."""
    seed: int = 0
    seq_len: int | None = None
    """Tokens per calibration sequence (causal LMs); None: the data module's default."""
    evaluate: bool = True
    """Evaluate the four variants after compressing (skipped when oats.evaluate is missing)."""

    def folder_name(self) -> str:
        """A readable, deterministic run folder name for this request.

        The same name ``oats sweep`` gives the same run (``oats.runner.sweep.RunSpec.name``), so the
        app and sweeps reuse each other's runs; a calibration file or folder, or non-default
        eps / tol, add a short hash of themselves.
        """
        from oats.runner.sweep import RunSpec
        c = self.config
        name = RunSpec(self.model, self.method, c, None, (self.calib_samples, self.seq_len, self.seed)).name
        default = OatsConfig()
        if self.calib_source or c.eps != default.eps or c.tol != default.tol:
            extra = {"source": self.calib_source or "", "eps": c.eps, "tol": c.tol}
            name += "-" + hashlib.sha1(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
        return name

    def calibration_request(self) -> dict:
        """The manifest's record of the calibration data (the CLI's keys)."""
        return {"samples": self.calib_samples, "seq_len": self.seq_len, "seed": self.seed, "source": self.calib_source}


def request_from_manifest(manifest: dict, evaluate: bool = True) -> CompressRequest:
    """The request that produced a run folder (to resume an unfinished one)."""
    cal = manifest.get("calibration_request") or {}
    return CompressRequest(model=manifest["model_name"], config=OatsConfig(**manifest["config"]),
                           method=manifest["method"], calib_source=cal.get("source"),
                           calib_samples=cal.get("samples"), seed=cal.get("seed") or 0, seq_len=cal.get("seq_len"),
                           evaluate=evaluate)


@dataclass
class JobState:
    """A snapshot of one job. ``error`` is one line (what went wrong and what to do)."""

    folder: str
    model: str
    status: str = "queued"
    stage: str = "waiting"
    done: int = 0
    total: int = 0
    message: str = "waiting for another compression to finish"
    error: str = ""
    log: tuple[str, ...] = ()
    """One line per finished block."""
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started


class Cancelled(Exception):
    """Raised by a progress callback to stop a compression after the block in progress."""


class Job:
    """One compression; ``state()`` is safe to call from any thread."""

    def __init__(self, request: CompressRequest, folder: Path):
        self.request = request
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._state = JobState(folder=str(self.folder), model=request.model)
        self._cancel = threading.Event()
        self._proc = None  # the worker process while one runs (process isolation)
        self.thread: threading.Thread | None = None

    def state(self) -> JobState:
        with self._lock:
            return replace(self._state)

    def cancel(self) -> None:
        """Stop after the block in progress (finished blocks stay on disk, resumable)."""
        self._cancel.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _send_cancel(proc)

    def _attach(self, proc) -> None:
        with self._lock:
            self._proc = proc
        if proc is not None and self._cancel.is_set():
            _send_cancel(proc)

    def wait(self, timeout: float | None = None) -> JobState:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.state()

    def _update(self, **changes) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)

    def _record_progress(self, done: int, total: int, message: str) -> None:
        with self._lock:
            self._state = replace(self._state, done=done, total=total, message=message,
                                  log=self._state.log + (message,))

    def _progress(self, done: int, total: int, message: str) -> None:
        self._record_progress(done, total, message)
        if self._cancel.is_set():
            raise Cancelled


def _send_cancel(proc) -> None:
    """Ask a worker to stop after its block in progress (a line on its stdin)."""
    try:
        proc.stdin.write("cancel\n")
        proc.stdin.flush()
    except (OSError, ValueError):
        pass  # already gone


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def execute(req: CompressRequest, folder: Path, update: Callable[..., None],
            progress: Callable[[int, int, str], None]) -> str:
    """Load, calibrate, resume, compress into ``folder``, evaluate; returns the final message.

    ``update(**fields)`` reports stage changes (``JobState`` fields); ``progress(done, total,
    message)`` is called after every block and raises ``Cancelled`` to stop there. Errors
    propagate (``OatsError`` for expected ones). The same steps run in a job's thread and in
    a job's worker process.
    """
    from oats import data
    from oats.models import zoo
    from oats.runs.folders import MANIFEST, RunWriter, load_run, read_manifest
    from oats.compress.pipeline import compress_model

    registry.get(req.method).decompose_config(req.config)
    t0 = time.perf_counter()
    loaded = zoo.load_model(req.model)
    update(stage="calibration data", message="preparing calibration data")
    batches = data.calibration_batches(loaded, n_samples=req.calib_samples, seq_len=req.seq_len,
                                       source=req.calib_source, seed=req.seed)
    t_load = time.perf_counter() - t0
    resume, owl = None, None
    if (folder / MANIFEST).exists():
        m = read_manifest(folder)
        if not _holds(m, req):
            raise RunError(f"run folder '{folder}' holds another compression: delete it or change the settings")
        resume = load_run(folder, model=loaded.model, allow_partial=True)
        alloc = resume.allocation or {}
        if alloc.get("name") == "owl":  # an OWL run made by the CLI keeps its block rates
            from oats.compress.allocation import Owl
            owl = Owl(lam=alloc["lam"], threshold=alloc["threshold"])
        update(message=f"resuming after {len(resume.blocks)} finished blocks")
    writer = RunWriter(folder, extra={"calibration_request": req.calibration_request(),
                                      "model_source": loaded.source, "task": loaded.task})
    update(stage="compressing", message="capturing calibration inputs")
    run = compress_model(loaded.model, batches, req.config, method=req.method, progress=progress,
                         model_name=req.model, on_block_done=writer.block_done, resume=resume,
                         allocation=owl)
    run.timings["load_s"] = t_load
    writer.finish(run)
    run.loaded = loaded
    note = ""
    if req.evaluate:
        update(stage="evaluating", message="evaluating dense, compressed, sparse-only and low-rank-only")
        note = evaluate_and_save(run, folder)
    return f"compressed {len(run.blocks)} blocks in {run.timings['total_s']:.0f} s" + note


def failure_line(exc: BaseException) -> str:
    """The one line a job shows for an exception raised by ``execute``."""
    if isinstance(exc, OatsError):
        return _one_line(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: choose a smaller model or fewer calibration samples"
    return f"unexpected {type(exc).__name__}: {_one_line(exc)} (please report it with the settings used)"


def _cancelled_message(done: int, total: int) -> str:
    return (f"stopped after {done} of {total or '?'} blocks: finished blocks are saved; resume the run from the "
            f"list of saved runs")


def _work_in_thread(job: Job, compute_lock: threading.Lock) -> None:
    with compute_lock:
        job._update(status="running", stage="loading", message=f"loading {job.request.model}", started=time.time())
        try:
            if job._cancel.is_set():
                raise Cancelled
            message = execute(job.request, job.folder, job._update, job._progress)
            job._update(status="done", stage="done", finished=time.time(), message=message)
        except Cancelled:
            st = job.state()
            job._update(status="cancelled", stage="cancelled", finished=time.time(),
                        message=_cancelled_message(st.done, st.total))
        except Exception as e:  # noqa: BLE001 - a job must end with a line, never a dead thread
            job._update(status="failed", stage="failed", finished=time.time(), error=failure_line(e))


EVENT_PREFIX = "@oats-job "
"""Marks the worker's progress lines on its stdout (anything else a library prints is ignored)."""


def request_to_json(req: CompressRequest) -> str:
    body = {"model": req.model, "config": req.config.to_dict(), "method": req.method,
            "calib_source": req.calib_source, "calib_samples": req.calib_samples, "seed": req.seed,
            "seq_len": req.seq_len, "evaluate": req.evaluate}
    return json.dumps(body)


def request_from_json(text: str) -> CompressRequest:
    body = json.loads(text)
    return CompressRequest(**{**body, "config": OatsConfig(**body["config"])})


def _work_in_process(job: Job, compute_lock: threading.Lock) -> None:
    """Run ``execute`` in ``python -m oats.worker`` and mirror its events into the job."""
    import subprocess
    import sys
    import tempfile

    with compute_lock:
        job._update(status="running", stage="loading", message=f"loading {job.request.model}", started=time.time())
        if job._cancel.is_set():
            st = job.state()
            job._update(status="cancelled", stage="cancelled", finished=time.time(),
                        message=_cancelled_message(st.done, st.total))
            return
        ended = False
        with tempfile.TemporaryFile(mode="w+") as errlog:
            try:
                proc = subprocess.Popen([sys.executable, "-m", "oats.runner.worker", str(job.folder)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errlog, text=True,
                                        bufsize=1)
            except OSError as e:
                job._update(status="failed", stage="failed", finished=time.time(),
                            error=f"could not start the compression process: {_one_line(e)}")
                return
            job._attach(proc)
            try:
                proc.stdin.write(request_to_json(job.request) + "\n")
                proc.stdin.flush()
            except OSError:
                pass  # it died at once: reported below from its exit code
            for line in proc.stdout:
                if not line.startswith(EVENT_PREFIX):
                    continue
                try:
                    event = json.loads(line[len(EVENT_PREFIX):])
                except ValueError:
                    continue
                kind = event.pop("event", None)
                if kind == "update":
                    job._update(**{k: v for k, v in event.items() if k in _EVENT_FIELDS})
                elif kind == "progress":
                    job._record_progress(event["done"], event["total"], event["message"])
                elif kind in ("done", "failed", "cancelled"):
                    ended = True
                    if kind == "cancelled":
                        st = job.state()
                        event = {"message": _cancelled_message(st.done, st.total)}
                    job._update(status=kind, stage=kind, finished=time.time(),
                                **{k: v for k, v in event.items() if k in ("message", "error")})
            code = proc.wait()
            job._attach(None)
            if not ended:
                errlog.seek(0)
                tail = [x for x in errlog.read().strip().splitlines() if x.strip()]
                why = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
                job._update(status="failed", stage="failed", finished=time.time(),
                            error=f"the compression process ended unexpectedly ({why}"
                                  + (f": {tail[-1].strip()[:200]}" if tail else "")
                                  + "): finished blocks are saved; resume the run from the list of saved runs")


_EVENT_FIELDS = {"stage", "message", "done", "total", "status", "started"}


def evaluate_and_save(run, folder: str | Path, quick: bool = False) -> str:
    """Evaluate the variants of ``run`` that mean something for its method (dense, both,
    sparse-only and low-rank-only for OATS; dense and both otherwise) and write
    ``evaluation.json``; returns a note for the job message ("" on success)."""
    try:
        from oats.evaluation import evaluate_run, run_modes
    except ImportError:
        return " (evaluation module not available: no evaluation)"
    try:
        results = evaluate_run(run, run.loaded, modes=run_modes(run.method), quick=quick)
    except OatsError as e:
        return f" (evaluation failed: {_one_line(e)})"
    save_evaluation(folder, results, quick)
    return ""


def save_evaluation(folder: str | Path, results: dict, quick: bool) -> Path:
    """Write {mode: {metric: value}} next to a run (atomic)."""
    from oats.runs.folders import atomic_write_bytes
    path = Path(folder) / EVALUATION_FILE
    body = {"quick": bool(quick), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "results": {m: {k: float(v) for k, v in r.items()} for m, r in results.items()}}
    atomic_write_bytes(path, json.dumps(body, indent=1).encode())
    return path


def read_evaluation(folder: str | Path) -> dict | None:
    """The saved evaluation of a run ({"quick", "created", "results"}), or None."""
    path = Path(folder) / EVALUATION_FILE
    try:
        body = json.loads(path.read_text())
        return body if isinstance(body.get("results"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None


def _holds(manifest: dict, request: CompressRequest) -> bool:
    """Whether a run folder's manifest is this request's run (model, method and settings)."""
    try:
        config = OatsConfig(**manifest["config"])
    except (OatsError, KeyError, TypeError):
        return False
    return (manifest.get("model_name") == request.model and manifest.get("method") == request.method
            and config == request.config)


class JobRunner:
    """Starts jobs and finds them again by run folder.

    ``isolation``: ``"thread"`` runs each job in a daemon thread of this process;
    ``"process"`` in a child process (see the module docstring).
    """

    def __init__(self, isolation: str = "thread"):
        if isolation not in ("thread", "process"):
            raise ValueError(f"isolation must be 'thread' or 'process', not {isolation!r}")
        self.isolation = isolation
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._compute = threading.Lock()

    def start(self, request: CompressRequest, root: str | Path | None = None,
              folder: str | Path | None = None) -> Job:
        """Start compressing ``request`` into ``root/<request.folder_name()>``.

        ``folder``: an existing unfinished run folder to continue instead (one made by
        ``oats compress``, whose name the CLI chose); it must hold this request's run.

        Returns the job already running for that folder, or a finished job at once when the
        folder already holds the complete run. An unfinished folder is resumed.
        """
        from oats.runs.folders import MANIFEST, read_manifest, runs_root
        from oats.validate import run_dir
        if folder is not None:
            folder = Path(folder)
            folder = run_dir(folder.parent, folder.name)
        else:
            folder = run_dir(root if root is not None else runs_root(), request.folder_name())
        key = str(folder.resolve())
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state().active:
                if job.request != request:
                    raise RunError(f"run folder '{folder}' is being written by another compression (of "
                                   f"{job.request.model}): wait for it to finish or change the settings")
                return job
            try:
                m = read_manifest(folder) if (folder / MANIFEST).exists() else None
            except OatsError:
                m = None
            if m is not None and not _holds(m, request):
                raise RunError(f"run folder '{folder}' holds another compression (of {m.get('model_name')}, "
                               f"{m.get('method')}): delete it or change the settings")
            complete = bool(m and m.get("complete"))
            job = Job(request, folder)
            self._jobs[key] = job
            if complete:
                job._update(status="done", stage="done", done=1, total=1, finished=time.time(),
                            message="already compressed with these settings: opened the saved run")
                return job
            work = _work_in_process if self.isolation == "process" else _work_in_thread
            job.thread = threading.Thread(target=work, args=(job, self._compute), daemon=True,
                                          name=f"oats-job-{folder.name}")
            job.thread.start()
            return job

    def get(self, folder: str | Path) -> Job | None:
        with self._lock:
            return self._jobs.get(str(Path(folder).resolve()))

    def jobs(self) -> list[Job]:
        """Every job this process has seen, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def active(self) -> list[Job]:
        return [j for j in self.jobs() if j.state().active]


RUNNER = JobRunner(isolation="process")
"""The process-wide runner the app uses (module state outlives Streamlit reruns)."""
