"""Background compression for the app: one daemon thread per job, no Streamlit here.

A job compresses one model into one run folder through ``RunWriter`` (so every finished
block is on disk: a job cut short by a restart shows up as an unfinished run and resumes)
and reports its progress in a thread-safe ``JobState`` the page polls. Jobs are keyed by
their run folder, and the folder name is derived from the request, so asking twice for the
same compression computes it once. Jobs run one at a time (the rest wait as "queued"): two
compressions side by side on a few cores would only slow each other down.

After compressing, a job evaluates the dense, compressed, sparse-only and low-rank-only
variants (``oats.evaluate.evaluate_run``) and keeps the result next to the run as
``evaluation.json``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import OatsConfig
from .errors import OatsError, RunError

EVALUATION_FILE = "evaluation.json"
STATUSES = ("queued", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class CompressRequest:
    """Everything that decides a compression's result (and so its run folder's name)."""

    model: str
    """Preset name, hub id or local model folder (what ``oats.zoo.load_model`` takes)."""
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

        The same name ``oats sweep`` gives the same run (``oats.sweep.RunSpec.name``), so the
        app and sweeps reuse each other's runs; a calibration file or folder, or non-default
        eps / tol, add a short hash of themselves.
        """
        from .sweep import RunSpec
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


class _Cancelled(Exception):
    pass


class Job:
    """One compression; ``state()`` is safe to call from any thread."""

    def __init__(self, request: CompressRequest, folder: Path):
        self.request = request
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._state = JobState(folder=str(self.folder), model=request.model)
        self._cancel = threading.Event()
        self.thread: threading.Thread | None = None

    def state(self) -> JobState:
        with self._lock:
            return replace(self._state)

    def cancel(self) -> None:
        """Stop after the block in progress (finished blocks stay on disk, resumable)."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> JobState:
        if self.thread is not None:
            self.thread.join(timeout)
        return self.state()

    def _update(self, **changes) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)

    def _progress(self, done: int, total: int, message: str) -> None:
        with self._lock:
            self._state = replace(self._state, done=done, total=total, message=message,
                                  log=self._state.log + (message,))
        if self._cancel.is_set():
            raise _Cancelled


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _work(job: Job, compute_lock: threading.Lock) -> None:
    from . import data, zoo
    from .io import MANIFEST, RunWriter, load_run, read_manifest
    from .pipeline import compress_model, method_config

    req, folder = job.request, job.folder
    with compute_lock:
        job._update(status="running", stage="loading", message=f"loading {req.model}", started=time.time())
        try:
            if job._cancel.is_set():
                raise _Cancelled
            method_config(req.method, req.config)
            t0 = time.perf_counter()
            loaded = zoo.load_model(req.model)
            job._update(stage="calibration data", message="preparing calibration data")
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
                    from .allocation import Owl
                    owl = Owl(lam=alloc["lam"], threshold=alloc["threshold"])
                job._update(message=f"resuming after {len(resume.blocks)} finished blocks")
            writer = RunWriter(folder, extra={"calibration_request": req.calibration_request(),
                                              "model_source": loaded.source, "task": loaded.task})
            job._update(stage="compressing", message="capturing calibration inputs")
            run = compress_model(loaded.model, batches, req.config, method=req.method, progress=job._progress,
                                 model_name=req.model, on_block_done=writer.block_done, resume=resume,
                                 allocation=owl)
            run.timings["load_s"] = t_load
            writer.finish(run)
            run.loaded = loaded
            note = ""
            if req.evaluate:
                job._update(stage="evaluating", message="evaluating dense, compressed, sparse-only and low-rank-only")
                note = evaluate_and_save(run, folder)
            job._update(status="done", stage="done", finished=time.time(),
                        message=f"compressed {len(run.blocks)} blocks in {run.timings['total_s']:.0f} s" + note)
        except _Cancelled:
            st = job.state()
            job._update(status="cancelled", stage="cancelled", finished=time.time(),
                        message=f"stopped after {st.done} of {st.total or '?'} blocks: finished blocks are "
                                f"saved; resume the run from the list of saved runs")
        except OatsError as e:
            job._update(status="failed", stage="failed", finished=time.time(), error=_one_line(e))
        except MemoryError:
            job._update(status="failed", stage="failed", finished=time.time(),
                        error="out of memory: choose a smaller model or fewer calibration samples")
        except Exception as e:  # noqa: BLE001 - a job must end with a line, never a dead thread
            job._update(status="failed", stage="failed", finished=time.time(),
                        error=f"unexpected {type(e).__name__}: {_one_line(e)} (please report it with the settings used)")


def evaluate_and_save(run, folder: str | Path, quick: bool = False) -> str:
    """Evaluate the variants of ``run`` that mean something for its method (dense, both,
    sparse-only and low-rank-only for OATS; dense and both otherwise) and write
    ``evaluation.json``; returns a note for the job message ("" on success)."""
    try:
        from .evaluate import evaluate_run, run_modes
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
    from .io import atomic_write_bytes
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
    """Starts jobs and finds them again by run folder (one runner per process)."""

    def __init__(self):
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
        from .io import MANIFEST, read_manifest, runs_root
        from .validate import run_dir
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
            job.thread = threading.Thread(target=_work, args=(job, self._compute), daemon=True,
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


RUNNER = JobRunner()
"""The process-wide runner the app uses (module state outlives Streamlit reruns)."""
