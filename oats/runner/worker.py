"""One background compression in a process of its own: ``python -m oats.runner.worker RUN_FOLDER``.

Started by ``oats.runner.jobs.JobRunner(isolation="process")``. Reads the request (JSON, one line)
from stdin, runs ``oats.runner.execute.execute`` into RUN_FOLDER and reports on stdout, one JSON
object per line behind ``oats.runner.jobs.EVENT_PREFIX``: ``update`` (stage changes), ``progress``
(after every block), then exactly one of ``done``, ``failed`` or ``cancelled``. A later
``cancel`` line on stdin, or stdin closing (the app went away), stops it after the block in
progress; the finished blocks stay on disk and the run resumes from them.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from oats.runner.execute import Cancelled, execute, failure_line
from oats.runner.jobs import EVENT_PREFIX
from oats.runner.request import CompressRequest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = sys.stdout
    lock = threading.Lock()

    def emit(event: str, **fields) -> None:
        with lock:
            out.write(EVENT_PREFIX + json.dumps({"event": event, **fields}) + "\n")
            out.flush()

    # Libraries may print to stdout; the parent only reads marked lines, but keep them apart.
    sys.stdout = sys.stderr
    folder = Path(argv[0])
    try:
        req = CompressRequest.from_json(sys.stdin.readline())
    except Exception as e:  # noqa: BLE001 - a malformed request is one line too
        emit("failed", error=f"the compression request could not be read ({type(e).__name__})")
        return 2
    stop = threading.Event()

    def listen() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                stop.set()
        stop.set()  # stdin closed: the app is gone, stop after this block

    threading.Thread(target=listen, daemon=True, name="oats-worker-stdin").start()

    def progress(done: int, total: int, message: str) -> None:
        emit("progress", done=done, total=total, message=message)
        if stop.is_set():
            raise Cancelled

    emit("update", status="running", stage="loading", message=f"loading {req.model}", started=time.time())
    try:
        message = execute(req, folder, update=lambda **kw: emit("update", **kw), progress=progress).message()
    except Cancelled:
        emit("cancelled")
        return 0
    except Exception as e:  # noqa: BLE001 - every failure reaches the app as one line
        emit("failed", error=failure_line(e))
        return 1
    emit("done", message=message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
