"""The evaluation tasks' registry and the base class every task's evaluator derives from.

A task is one class in one module, registered with ``register_task`` (as lm-evaluation-harness
registers a metric with ``higher_is_better``): its record carries the task's name, its
primary (headline) metric and that metric's direction, which models it evaluates (the
``LoadedModel.task`` values, and what such a model is called in words) and the class. The
evaluation, the report, the verdict and the app read the primary metric from here, so a new
task is its own file and one registration, with no table elsewhere to extend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from oats.errors import ConfigError, DataError
from oats.evaluation.common import metric_key


@dataclass(frozen=True)
class Task:
    """One evaluation task's record."""

    name: str
    """The task's name, as ``LoadedModel.task`` spells it ("causal-lm")."""
    primary: str
    """The headline metric (a key of the metrics the evaluator returns)."""
    higher_is_better: bool
    """The primary metric's direction."""
    evaluator: type
    """The ``Evaluator`` subclass that measures it."""
    model_kind: str
    """What a model of the task is called in words ("causal language model")."""
    models: tuple[str, ...]
    """The ``LoadedModel.task`` values it evaluates (by default its own name)."""


_TASKS: dict[str, Task] = {}


def register_task(name: str, *, primary: str, higher_is_better: bool, model_kind: str,
                  models: tuple[str, ...] | None = None):
    """Class decorator: register an ``Evaluator`` subclass as the evaluation of ``name``."""
    def wrap(cls: type) -> type:
        if name in _TASKS:
            raise ConfigError(f"evaluation task {name!r} is already registered")
        _TASKS[name] = Task(name, primary, bool(higher_is_better), cls, model_kind, tuple(models or (name,)))
        cls.task = name
        return cls
    return wrap


def unregister_task(name: str) -> None:
    """Remove a registered task (a test's toy task)."""
    _TASKS.pop(name, None)


def tasks() -> tuple[Task, ...]:
    """The registered tasks, in registration order."""
    return tuple(_TASKS.values())


def task_for(model_task: str | None) -> Task | None:
    """The task that evaluates models of ``model_task`` (a ``LoadedModel.task``), or None."""
    return next((t for t in _TASKS.values() if model_task in t.models), None)


def primary_metric(task: str | None) -> tuple[str, bool] | None:
    """(primary metric, higher is better) of a task or of the task a model's task is evaluated
    by; None for an unknown one. The one answer the report, the verdict and the app ask."""
    record = _TASKS.get(task) if isinstance(task, str) else None
    record = record or task_for(task)
    return (record.primary, record.higher_is_better) if record else None


def task_of(primary: str) -> str | None:
    """The (first registered) task whose primary metric is ``primary``."""
    return next((t.name for t in _TASKS.values() if t.primary == primary), None)


def a_model_of(task: str | None) -> str:
    """A model of ``task`` in words, with its article: "a sentence encoder", "a causal language
    model", "a model of an unknown kind" (never "a encoder model" or "a None model")."""
    if not task:
        return "a model of an unknown kind"
    record = task_for(task)
    name = record.model_kind if record else f"{task} model"
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


class _PrimaryMetrics(Mapping):
    """{task: (primary metric, higher is better)}, read live from the registry."""

    def __getitem__(self, task):
        if task not in _TASKS:
            raise KeyError(task)
        return _TASKS[task].primary, _TASKS[task].higher_is_better

    def __iter__(self):
        return iter(list(_TASKS))

    def __len__(self):
        return len(_TASKS)

    def __repr__(self):
        return repr(dict(self))


PRIMARY_METRIC: Mapping[str, tuple[str, bool]] = _PrimaryMetrics()
"""The headline metric of each registered task and whether higher is better (derived from the
registry, so a task registered later is in it)."""


class Evaluator:
    """The evaluation of one task at one setting, with its dense reference computed once.

    ``Evaluator(loaded, quick=..., text=..., image_folder=...)`` builds the registered task's
    evaluator for ``loaded.task`` (the base class picks the subclass, so callers need not know
    the tasks); ``reference(model)`` returns what fidelity needs from the model in dense mode
    (None for LMs), and ``metrics(model, ref)`` evaluates the model in its current modes. A
    sweep computes the reference once from the dense model and scores every run against it
    (their dense weights are the same).

    A subclass implements ``prepare`` (build its data, add to ``settings``, return
    {domain: data}, domain "" for the user's own), ``reference``, ``metrics`` and
    ``tokens_per_pass``, and sets ``needs_tokenizer`` when it feeds text.
    """

    task: str = ""
    needs_tokenizer: bool = False

    def __new__(cls, loaded, **kwargs):
        if cls is Evaluator:
            model_task = getattr(loaded, "task", None)
            record = task_for(model_task)
            if record is None:
                raise DataError(f"no evaluation for task {model_task!r}: expected one of "
                                f"{', '.join(t for r in _TASKS.values() for t in r.models)}")
            cls = record.evaluator
        return super().__new__(cls)

    def __init__(self, loaded, *, quick: bool = False, text=None, image_folder=None):
        self.loaded = loaded
        self.quick = bool(quick)
        self.settings: dict = {"task": self.task, "quick": self.quick}
        if self.needs_tokenizer and loaded.tokenizer is None:
            raise DataError("this model has no tokenizer, so text cannot be fed to it: load it with its tokenizer")
        units = self.prepare(1 if quick else 0, text, image_folder)
        self.domains = tuple(d for d in units if d)
        self.settings.update(domains=list(self.domains))

    def prepare(self, q: int, text, image_folder) -> dict:
        """Build the evaluation data at size index ``q`` (0 default, 1 quick): {domain: data}."""
        raise NotImplementedError

    def reference(self, model):
        """What fidelity needs from the model with every replaced linear in dense mode."""
        raise NotImplementedError

    def metrics(self, model, ref) -> dict[str, float]:
        """Metrics of ``model`` in its current modes (``ref`` from ``reference``)."""
        raise NotImplementedError

    def tokens_per_pass(self) -> int:
        """Tokens one ``metrics`` call feeds the model (padding included): what an evaluation costs."""
        raise NotImplementedError

    @staticmethod
    def _spread(metric: str, values: dict[str, float], mean=None) -> dict[str, float]:
        """{metric: mean over the domains, metric@domain: each}; the user's data ("") is the metric."""
        if list(values) == [""]:
            return {metric: values[""]}
        out = {metric: float(np.mean(list(values.values()))) if mean is None else mean}
        out.update({metric_key(metric, d): v for d, v in values.items()})
        return out

    def key(self) -> tuple:
        return (self.task, self.quick, hashlib.sha1(repr(sorted(self.settings.items())).encode()).hexdigest())
