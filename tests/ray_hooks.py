"""Loaded in every Ray worker of tests/test_ray_sweep.py (``worker_process_setup_hook``).

It wraps ``RunWriter.block_done`` in the worker only: when the test names a run and a block
in ``$OATS_TEST_FAULTS/target.json``, the worker that has just saved that block of that run
either SIGKILLs itself once that block is saved (``"do": "kill"``, once: it first writes
``killed.json`` with the saved block files' times and its pid) or raises instead of saving it
(``"do": "raise"``, every attempt). Production
code has no test hooks.
"""

import json
import os
import signal
import time
from pathlib import Path

import oats.runs.folders as folders


def install() -> None:
    faults = Path(os.environ["OATS_TEST_FAULTS"])
    original = folders.RunWriter.block_done

    def block_done(self, run, block):
        target = faults / "target.json"
        spec = json.loads(target.read_text()) if target.is_file() else None
        if spec is not None and spec["do"] == "raise" and self.folder.name == spec["run"] and block == spec["block"]:
            raise RuntimeError("injected failure")  # before saving: every retry fails here again
        original(self, run, block)
        if spec is None or self.folder.name != spec["run"] or block != spec["block"]:
            return
        killed = faults / "killed.json"
        if killed.exists():
            return
        files = {p.name: p.stat().st_mtime_ns for p in sorted(self.folder.glob("block_*.safetensors"))}
        killed.write_text(json.dumps({"pid": os.getpid(), "blocks": files}))
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached

    folders.RunWriter.block_done = block_done
