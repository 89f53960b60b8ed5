"""The sweep's runs as Ray tasks: on a local Ray instance, or on an existing Ray cluster
(``RayEngine``; the blocks of one run as Ray tasks use it too: ``oats.runner.blocks_ray``).

Each (method, rate, rank ratio) of a sweep is one task that calls the single runner
(``oats.runner.execute.execute``) on its own run folder. The runs root must be storage that
this machine and every worker see at the same path (a shared file system): the tasks write
their run folders there, and the sweep on this machine then reads them to evaluate. Before
anything is submitted, one task writes a probe file there and this machine reads it back.

A task whose worker dies, or that raises something other than an ``OatsError``, is retried
(``RayEngine.retries`` times); a retry resumes after the blocks its run folder already holds.
A task that still fails is reported with its one-line cause and does not stop the others.

Ray is an optional extra (``pip install 'oats-explorer[cluster]'``); it is imported only when
a Ray engine is opened.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from oats.errors import ConfigError, OatsError, RunError
from oats.runner.execute import execute, failure_line
from oats.runner.request import CompressRequest
from oats.runs.folders import clear_run_folder

INSTALL_HINT = "pip install 'oats-explorer[cluster]'"
PROBE_PREFIX = ".oats-probe-"


def import_ray():
    """The ``ray`` module, or ConfigError (one line) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def local_runtime_env() -> dict:
    """What a local instance's workers need to import this very ``oats`` (a source checkout
    included): its folder first on their PYTHONPATH."""
    here = str(Path(__file__).resolve().parents[2])  # the folder holding oats/
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


@dataclass
class TaskReport:
    """What one task did: ``status`` is "computed", "resumed" or "reused" (as
    ``execute``'s Outcome), or "failed" with ``error`` its one line."""

    name: str
    status: str
    resumed_blocks: int = 0
    total_s: float = 0.0
    host: str = ""
    pid: int = 0
    error: str = ""


def compress_task(request_json: str, folder: str, extra: dict) -> dict:
    """One sweep run, in a Ray worker: compress (or resume) ``folder`` and report.

    An ``OatsError`` is a setting the user must change: it is returned, not retried; anything
    else raises, so that Ray retries the task (which then resumes after the finished blocks).
    """
    request = CompressRequest.from_json(request_json)
    try:
        outcome = execute(request, folder, if_exists="resume", extra=extra)
    except OatsError as e:
        return {"status": "failed", "error": failure_line(e)}
    return {"status": outcome.status, "resumed_blocks": outcome.resumed_blocks,
            "total_s": float(outcome.run.timings.get("total_s", 0.0)), "host": socket.gethostname(),
            "pid": os.getpid()}


def probe_task(folder: str, token: str) -> str:
    """Write ``token`` into a probe file in ``folder`` from a worker; '' or the failure."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{PROBE_PREFIX}{token}").write_text(token)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return ""


@dataclass
class RayEngine:
    """Runs a sweep's compressions as Ray tasks.

    address: an existing cluster ("ray://host:10001", "host:6379" or "auto"); None starts a
    local instance for the sweep and stops it afterwards (``num_cpus`` CPUs; None: all). When
    this process is already connected to Ray, that connection is used and left open.
    cpus_per_task, gpus_per_task: what each task reserves (a task given a GPU compresses on it).
    retries: how many times a task whose worker died or that raised is run again.
    """

    address: str | None = None
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    num_cpus: int | None = None
    retries: int = 3
    _ray: object = field(default=None, repr=False)
    _owned: bool = field(default=False, repr=False)

    def check(self) -> None:
        """ConfigError (one line) for a bad setting or a missing Ray, before anything starts."""
        if not self.cpus_per_task > 0:
            raise ConfigError(f"--cpus-per-task must be above 0, not {self.cpus_per_task:g}")
        if not self.gpus_per_task >= 0:
            raise ConfigError(f"--gpus-per-task must be 0 or more, not {self.gpus_per_task:g}")
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, not {self.retries}")
        import_ray()

    def open(self) -> None:
        self.check()
        ray = self._ray = import_ray()
        if ray.is_initialized():
            self._owned = False
            return
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                         runtime_env=local_runtime_env())
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray instance"
            raise ConfigError(f"could not connect to {where}: {' '.join(str(e).split())[:200]}") from None
        self._owned = True

    def close(self) -> None:
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._owned = False

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def check_shared(self, root: Path, timeout_s: float = 300.0) -> None:
        """RunError (one line) unless a worker can write into ``root`` and this machine sees
        what it wrote: the runs root must be shared storage."""
        ray = self._ray
        root = Path(root).resolve()
        token = secrets.token_hex(8)
        probe = ray.remote(num_cpus=self.cpus_per_task)(probe_task)
        try:
            problem = ray.get(probe.remote(str(root), token), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RunError(f"no Ray worker ran a task within {timeout_s:.0f} s: does the cluster have "
                           f"{self.cpus_per_task:g} free CPUs per task?") from None
        if problem:
            raise RunError(f"a Ray worker cannot write into the runs folder '{root}' ({problem[:150]}): "
                           "give a --root on storage every worker can write")
        seen = root / f"{PROBE_PREFIX}{token}"
        try:
            ok = seen.read_text() == token
        except OSError:
            ok = False
        finally:
            seen.unlink(missing_ok=True)
        if not ok:
            raise RunError(f"the runs folder '{root}' is not shared: a Ray worker wrote there but this machine "
                           "does not see the file; give a --root on storage shared by this machine and every worker")

    def compress(self, tasks: list[tuple[CompressRequest, Path, str]], extra: dict,
                 on_done: Callable[[TaskReport, int, int], None] | None = None) -> dict[str, TaskReport]:
        """Run ``tasks`` ((request, run folder, ``Action`` compute | resume: ``oats.runs.state``))
        on Ray; a report per run name.

        A "compute" folder (damaged, or holding an unfinished run of other settings) is
        emptied here first, so that every attempt of its task, a retry included, resumes.
        on_done: callable(report, done, total) as each task ends.
        """
        for _, folder, status in tasks:
            if status == "compute":
                clear_run_folder(folder)
        fn = self.remote(compress_task)
        pending = {fn.remote(req.to_json(), str(Path(folder).resolve()), extra): Path(folder).name
                   for req, folder, _ in tasks}
        reports: dict[str, TaskReport] = {}
        for name, body in self.each_done(pending):
            reports[name] = TaskReport(name=name, **body)
            if on_done is not None:
                on_done(reports[name], len(reports), len(tasks))
        return reports

    def remote(self, fn: Callable):
        """``fn`` as a Ray task of this engine: its CPUs and GPUs reserved, run again (up to
        ``retries`` times) when its worker dies or it raises (a task returns, not raises, the
        ``OatsError`` that a retry would only repeat)."""
        return self._ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.retries,
                                retry_exceptions=True)(fn)

    def each_done(self, pending: dict):
        """(key, what the task returned) for each task of ``pending`` (its ObjectRef -> a key) as
        it ends, first finished first; a task that failed every retry gives {"status": "failed",
        "error": its one line}, so that the others are still waited for."""
        ray = self._ray
        pending = dict(pending)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            key = pending.pop(ref)
            try:
                body = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a task that failed every retry: keep the others
                cause = getattr(e, "cause", None) or e
                body = {"status": "failed", "error": failure_line(cause) if isinstance(cause, BaseException)
                        else " ".join(str(e).split())[:300]}
            yield key, body
