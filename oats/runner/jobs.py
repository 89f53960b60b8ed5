"""Background compression for the app, no Streamlit here.

A job runs ``oats.runner.execute.execute`` for one request into one run folder (so every finished
block is on disk: a job cut short by a restart shows up as an unfinished run and resumes)
and reports its progress in a thread-safe ``JobState`` the page polls. Jobs are keyed by
their run folder, and the folder name is derived from the request, so asking twice for the
same compression computes it once. Jobs run one at a time (the rest wait as "queued"): two
compressions side by side on a few cores would only slow each other down.

Where the work runs (``JobRunner(isolation=...)``):

* ``"process"`` (the app's runner): each job is a child process (``python -m oats.runner.worker``)
  that reports its progress as JSON lines on stdout. The compression then has an
  interpreter of its own: the app's page runs, and Streamlit's full garbage collection after
  every script and fragment run (which holds the interpreter lock), cannot stall it, and a
  crash of the compression cannot take the app down. Measured in ``benchmarks/app.py``.
* ``"thread"``: a daemon thread in this process (the same ``execute``, for library use and tests
  that replace parts of the pipeline in-process).

After compressing, a job evaluates the dense, compressed, sparse-only and low-rank-only
variants (``oats.evaluation.evaluate_run``) and keeps the result next to the run as
``evaluation.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from oats.errors import RunError
from oats.runner.execute import REUSED_MESSAGE, Cancelled, execute, failure_line, one_line
from oats.runner.request import CompressRequest
from oats.runs.folders import run_dir, runs_root
from oats.runs.state import Action, State, inspect

STATUSES = ("queued", "running", "done", "failed", "cancelled")


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


def _cancelled_message(done: int, total: int) -> str:
    return (f"stopped after {done} of {total or '?'} blocks: finished blocks are saved; resume the run from the "
            f"list of saved runs")


def _work_in_thread(job: Job, compute_lock: threading.Lock) -> None:
    with compute_lock:
        job._update(status="running", stage="loading", message=f"loading {job.request.model}", started=time.time())
        try:
            if job._cancel.is_set():
                raise Cancelled
            message = execute(job.request, job.folder, update=job._update, progress=job._progress).message()
            job._update(status="done", stage="done", finished=time.time(), message=message)
        except Cancelled:
            st = job.state()
            job._update(status="cancelled", stage="cancelled", finished=time.time(),
                        message=_cancelled_message(st.done, st.total))
        except Exception as e:  # noqa: BLE001 - a job must end with a line, never a dead thread
            job._update(status="failed", stage="failed", finished=time.time(), error=failure_line(e))


EVENT_PREFIX = "@oats-job "
"""Marks the worker's progress lines on its stdout (anything else a library prints is ignored)."""


def _work_in_process(job: Job, compute_lock: threading.Lock) -> None:
    """Run ``execute`` in ``python -m oats.runner.worker`` and mirror its events into the job."""
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
                            error=f"could not start the compression process: {one_line(e)}")
                return
            job._attach(proc)
            try:
                proc.stdin.write(job.request.to_json() + "\n")
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
            # a damaged folder is not refused here: the job's compression reports it (its one line)
            found = inspect(folder, request)
            if found.state is State.OTHER_RUN:
                raise found.refusal()
            job = Job(request, folder)
            self._jobs[key] = job
            if found.action is Action.REUSE:
                job._update(status="done", stage="done", done=1, total=1, finished=time.time(),
                            message=REUSED_MESSAGE)
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
