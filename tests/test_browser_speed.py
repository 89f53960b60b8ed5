"""A compression started in the browser runs in the worker process and gives the CLI's run.

A compression in the app's own process would stall behind Streamlit's full garbage collection
after every run of the progress fragment (it holds the interpreter lock); a job therefore runs
in a worker process (``python -m oats.runner.worker``). This test checks that behaviour, not a
speed: the job's process is a child of the app's server running the worker module for the
run folder, the page shows the progress, and the run is the CLI's run layer by layer. How long
the app takes beside the CLI (about 1.1-1.2x) is measured and printed by benchmarks/app.py: a
wall-clock ratio depends on what else the machine runs, so it is no test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import skip_or_fail
from browser_helpers import app_page, requirements, served_app, settle, wait_idle

pytestmark = pytest.mark.browser

MODEL = "minilm-l6"
SAMPLES = 32  # calibration sentences: a shorter job
HANG_GUARD_S = 1800  # only a hang ends the wait: minutes of a loaded two-core machine are no failure


def worker_children(pid: int) -> list[list[str]]:
    """The command lines of ``pid``'s child processes that run the compression worker module."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            with open(entry / "stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if "oats.runner.worker" in argv:
            out.append(argv)
    return out


def test_app_compression_runs_in_the_worker_and_gives_the_cli_run(tmp_path):
    why = requirements()
    if why:
        skip_or_fail(why)

    from oats.runs.folders import read_manifest
    from oats.models.zoo import PRESETS, load_model
    load_model(MODEL)  # the preset is converted once, before either side needs it
    kappa = PRESETS[MODEL].default_rank_ratio
    subprocess.run([sys.executable, "-m", "oats.cli", "compress", MODEL, "--compression", "0.5", "--rank-ratio",
                    str(kappa), "--calib-samples", str(SAMPLES), "--out", str(tmp_path / "cli"), "--quiet"],
                   check=True, capture_output=True)

    runs = tmp_path / "runs"
    runs.mkdir()
    with served_app(runs, tmp_path / "streamlit.log", with_pid=True) as (url, pid):
        with app_page(url) as page:
            settle(page, 0)
            main = page.locator('[data-testid="stMain"]')
            samples = main.get_by_role("spinbutton", name="Calibration samples")
            samples.fill(str(SAMPLES))
            samples.press("Enter")
            settle(page, 0)
            assert samples.input_value() == str(SAMPLES)
            evaluate = main.get_by_role("checkbox", name="Evaluate when done")
            main.get_by_text("Evaluate when done").click()
            settle(page, 0)
            assert not evaluate.is_checked()
            wait_idle(pid)  # the app's start-up imports are done, as when a person fills the form
            t0 = time.perf_counter()
            main.locator('[data-testid="stBaseButton-primary"]', has_text="Compress").click()
            done = page.locator('[data-testid="stAlertContentSuccess"]', has_text=f"{MODEL}: compressed")
            progress_seen = False
            workers: list[list[str]] = []
            while not done.count():
                assert time.perf_counter() - t0 < HANG_GUARD_S, f"the app's compression did not finish in {HANG_GUARD_S} s"
                assert page.locator('[data-testid="stException"]').count() == 0
                progress_seen |= page.get_by_text("blocks", exact=False).count() > 0
                workers = workers or worker_children(pid)
                page.wait_for_timeout(100)
    assert workers, "no 'python -m oats.runner.worker' child of the app's server was seen while it compressed"
    (run_folder,) = list(runs.iterdir())
    assert workers[0][1:] == ["-m", "oats.runner.worker", str(run_folder)], workers
    assert os.path.realpath(workers[0][0]) == os.path.realpath(sys.executable)
    assert progress_seen, "the page never showed the compression's progress"
    app_m, cli_m = read_manifest(next(runs.iterdir())), read_manifest(tmp_path / "cli")
    assert app_m["complete"] and cli_m["complete"]
    keys = ("qualname", "rank", "nnz", "scaled_error")  # the same request gives the same run
    assert [{k: l[k] for k in keys} for l in app_m["layers"]] == [{k: l[k] for k in keys} for l in cli_m["layers"]]
