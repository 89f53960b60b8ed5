"""One folder-state vocabulary (``oats.runs.state``): every caller agrees on what a run folder
holds, and each acts on it as its policy says.

Five folders, one request: empty, unfinished (this request's run, cut after a block), complete
(this request's run), complete of another request, damaged (an unreadable manifest). Asked of
each: ``inspect`` (the state), ``execute``'s ``folder_state`` (one compression), the sweep's
``_inspect`` (recomputes a damaged folder), ``JobRunner.start`` (the app) and ``oats compress``
(a non-empty ``--out`` needs ``--resume`` or ``--overwrite``). The tiny Llama stands in for
the zoo (``tiny_llama_zoo``, conftest.py).
"""

from __future__ import annotations

import pytest

from oats import OatsConfig
from oats.cli import main as cli_main
from oats.errors import RunError
from oats.runner.execute import REUSED_MESSAGE, Cancelled, execute, folder_state
from oats.runner.jobs import JobRunner
from oats.runner.request import CompressRequest
from oats.runner.sweep import _inspect
from oats.runs.folders import read_manifest
from oats.runs.state import Action, State, inspect

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=4)
REQ = CompressRequest("tiny", CFG, evaluate=False)
OTHER = CompressRequest("tiny", CFG.replace(compression=0.6), evaluate=False)


def _cut(done, total, message):
    if done == 1:
        raise Cancelled


@pytest.fixture
def folders(tmp_path, tiny_llama_zoo):
    root = tmp_path / "runs"
    f = {s: root / s.value.replace(" ", "-") for s in State}
    with pytest.raises(Cancelled):
        execute(REQ, f[State.UNFINISHED], progress=_cut)
    execute(REQ, f[State.COMPLETE])
    execute(OTHER, f[State.OTHER_RUN])
    f[State.DAMAGED].mkdir(parents=True)
    (f[State.DAMAGED] / "manifest.json").write_text("{not json")
    return f


# per state: what inspect says, then each caller's action (an exception type: refused)
EXPECTED = {
    State.EMPTY: dict(execute=Action.COMPUTE, sweep=Action.COMPUTE, job="started", cli=0),
    State.UNFINISHED: dict(execute=Action.RESUME, sweep=Action.RESUME, job="started", cli=2),
    State.COMPLETE: dict(execute=Action.REUSE, sweep=Action.REUSE, job="reused", cli=2),
    State.OTHER_RUN: dict(execute=RunError, sweep=RunError, job=RunError, cli=2),
    State.DAMAGED: dict(execute=RunError, sweep=Action.COMPUTE, job="failed", cli=2),
}


def _job(folder):
    try:
        job = JobRunner(isolation="thread").start(REQ, folder=folder)
    except RunError:
        return RunError
    if job.thread is None:
        s = job.state()
        assert s.status == "done" and s.message == REUSED_MESSAGE
        return "reused"
    s = job.wait(300)
    return "started" if s.status == "done" else s.status


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_every_caller_agrees_on_the_folder_state(state, folders, capsys):
    folder, want = folders[state], EXPECTED[state]
    found = inspect(folder, REQ)
    assert found.state is state
    assert (found.action is Action.REFUSE) == (want["execute"] is RunError)
    if want["execute"] is RunError:
        with pytest.raises(RunError) as e:
            folder_state(REQ, folder)
        assert str(e.value) == str(found.refusal()) and "\n" not in str(e.value)
    else:
        assert folder_state(REQ, folder).action is want["execute"]
    if want["sweep"] is RunError:
        with pytest.raises(RunError, match="holds another compression .*: move it away or give another --root"):
            _inspect(REQ, folder)
    else:
        assert _inspect(REQ, folder) is want["sweep"]
    before = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    code = cli_main(["compress", "tiny", "--out", str(folder), "--compression", "0.5", "--iterations", "4", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == want["cli"], err
    if code == 2:  # refused before anything was written
        assert err == [f"oats: error: run folder '{folder}' already holds a run: use --resume to continue it, "
                       "--overwrite to replace it, or another --out"]
        assert sorted(p.name for p in folder.iterdir()) == before
        assert _job(folder) == want["job"]
    else:  # the CLI computed it: now the complete run of this request; a job computes another empty one
        assert inspect(folder, REQ).state is State.COMPLETE
        assert _job(folder.parent / "empty-too") == want["job"]


def test_refusals_are_one_text(folders):
    other = inspect(folders[State.OTHER_RUN], REQ)
    assert str(other.refusal()) == (f"run folder '{folders[State.OTHER_RUN]}' holds another compression (of tiny, "
                                    "oats): delete it or change the settings")
    assert other.check is not None and inspect(folders[State.OTHER_RUN], REQ, replace=True).action is Action.COMPUTE
    # a sweep recomputes an unfinished run of the same model with other settings
    with pytest.raises(Cancelled):
        execute(OTHER, folders[State.EMPTY], progress=_cut)
    assert inspect(folders[State.EMPTY], REQ).state is State.OTHER_RUN
    assert _inspect(REQ, folders[State.EMPTY]) is Action.COMPUTE
    with pytest.raises(RunError, match="holds another compression"):
        folder_state(REQ, folders[State.EMPTY])
    # the words once done are the outcome's statuses
    assert [a.done for a in (Action.COMPUTE, Action.RESUME, Action.REUSE)] == ["computed", "resumed", "reused"]


def test_cli_names_the_folder_by_the_request(tmp_path, tiny_llama_zoo, monkeypatch, capsys):
    monkeypatch.setenv("OATS_RUNS_DIR", str(tmp_path))
    argv = ["compress", "tiny", "--compression", "0.5", "--iterations", "4", "--quiet"]
    assert cli_main(argv) == 0
    folder = tmp_path / REQ.folder_name()
    assert capsys.readouterr().out.strip().endswith(f"saved to {folder}")
    assert REQ.same_run(read_manifest(folder)) and inspect(folder, REQ).state is State.COMPLETE
    # the same command again finds its folder: one line, nothing rewritten
    assert cli_main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
