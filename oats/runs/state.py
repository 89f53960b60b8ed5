"""What a run folder holds for a compression request, and what to do with it: the one place.

``oats compress``, the app's jobs (``oats.runner.jobs``), ``oats sweep`` and the compress
step itself (``oats.runner.execute``) all call :func:`inspect` and speak its words:

- the folder's ``State`` (``oats.runs.info.State``, the words ``oats runs`` and the app's runs
  list use too): ``empty`` (no manifest), ``unfinished`` / ``complete`` (this
  request's run, partial or whole), ``damaged`` (a manifest that cannot be read) or
  ``other run`` (the manifest records another request's run, complete or not);
- the :class:`Action`: ``compute`` (from scratch, the folder emptied first), ``resume``
  (after the finished blocks), ``reuse`` (open the complete run) or ``refuse`` (one line,
  :meth:`FolderState.refusal`); once done, an action reads as its past tense ("computed",
  "resumed", "reused": ``Outcome.status``, the sweep's log).

Two policies differ between callers, and are arguments rather than copies: ``replace`` (the
CLI's ``--overwrite``) computes whatever is there, and ``redo`` (a sweep) recomputes a damaged
folder or an unfinished run of the same model with other settings, where a single compression
refuses them (a user's folder is not emptied without being asked; a sweep owns its folders'
names). A run of another model is refused under ``redo`` too: it is nobody's sweep run.

The request is only read through ``same_run(manifest)``, ``model`` and ``method`` (a
``oats.runner.request.CompressRequest``), so this module stays below the runner.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from oats.errors import RunError
from oats.runs.info import MANIFEST, State
from oats.runs.folders import read_manifest

__all__ = ["Action", "FolderState", "REMEDY", "State", "inspect", "state_of"]


class Action(str, enum.Enum):
    """What a caller does with the folder."""

    COMPUTE = "compute"
    RESUME = "resume"
    REUSE = "reuse"
    REFUSE = "refuse"

    @property
    def done(self) -> str:
        """The past tense ("computed", "resumed", "reused") that reports the action once done."""
        return {"compute": "computed", "resume": "resumed", "reuse": "reused", "refuse": "refused"}[self.value]


REMEDY = "delete it or change the settings"
"""What a user does about a folder holding another run (a sweep says its own: another --root)."""


@dataclass(frozen=True)
class FolderState:
    """A folder judged for a request: its ``state``, the ``action`` the caller's policy gives,
    the ``manifest`` read (None when empty or damaged) and, when damaged, the ``problem``
    (``read_manifest``'s one line)."""

    folder: Path
    state: State
    action: Action
    manifest: dict | None = None
    problem: str = ""
    remedy: str = REMEDY

    def refusal(self) -> RunError:
        """The one-line error for a refused folder (the one text, written here only)."""
        if self.state is State.DAMAGED:
            return RunError(self.problem)
        m = self.manifest or {}
        return RunError(f"run folder '{self.folder}' holds another compression (of {m.get('model_name')}, "
                        f"{m.get('method')}): {self.remedy}")

    def check(self) -> FolderState:
        """Itself, or its refusal raised."""
        if self.action is Action.REFUSE:
            raise self.refusal()
        return self


def state_of(folder: str | Path, request) -> tuple[State, dict | None, str]:
    """(state, manifest or None, problem) of ``folder`` for ``request``; reads, never writes."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return State.EMPTY, None, ""
    try:
        m = read_manifest(folder)
    except RunError as e:
        return State.DAMAGED, None, str(e)
    if not request.same_run(m):
        return State.OTHER_RUN, m, ""
    return (State.COMPLETE if m.get("complete") else State.UNFINISHED), m, ""


def inspect(folder: str | Path, request, *, replace: bool = False, redo: bool = False,
            remedy: str = REMEDY) -> FolderState:
    """What ``folder`` holds for ``request`` and what to do (see the module docstring for
    ``replace`` and ``redo``). Never raises for what the folder holds: a refused folder has
    ``action`` REFUSE and its ``refusal()`` line; ``.check()`` raises it."""
    folder = Path(folder)
    state, m, problem = state_of(folder, request)
    if replace or state is State.EMPTY:
        action = Action.COMPUTE
    elif state is State.COMPLETE:
        action = Action.REUSE
    elif state is State.UNFINISHED:
        action = Action.RESUME
    elif not redo:
        action = Action.REFUSE
    elif state is State.DAMAGED:
        action = Action.COMPUTE
    else:  # another request's run: a sweep redoes only an unfinished one of its own model
        same_model = m.get("model_name") == request.model
        action = Action.COMPUTE if same_model and not m.get("complete") else Action.REFUSE
    return FolderState(folder, state, action, m, problem, remedy)
