"""The method registry: one ``Method`` record per compression method, registered by its own file.

A method is everything the rest of the package needs to know about it, as data:

- ``name``, ``description`` (one line) and ``budget_note`` (how it spends the budget of
  (1 - rho) d_out d_in parameters per matrix; it goes into each run's manifest);
- ``statistics``: what the pipeline's statistics pass must collect for it: ``"none"`` (the
  weights alone), ``"diagonal"`` (the per-channel second moments E[x_j^2]) or ``"gram"``
  (the full input Gram matrix E[x x^T] as well);
- ``decompose_config(config)``: the configuration it really decomposes with (and a
  ``ConfigError`` for settings it cannot run); ``rank_ratio(config)``: the share of the
  kept parameters it really spends on the low-rank term;
- ``run_modes``: the evaluation modes worth measuring for its runs;
- ``iterative``, ``uses_rank_ratio`` and ``uses_shrink``: which settings shape its result, for
  sweeps and run identities;
- ``replay``: how the app's Walkthrough replays one layer of its runs step by step (a
  ``Replay``; None: it has no replay of its own, and the Walkthrough uses a registered replay
  that ``covers`` or ``stands_in`` for its statistics, see ``replay_for``);
- ``compress``: the per-block function
  ``compress(weights, second_moments, grams, config, device) -> list[Decomposition]``.

A file adds a method with the decorator::

    @register(Method(name="mine", description="...", budget_note="...", statistics="diagonal"))
    def compress(weights, second_moments, grams, config, device=None):
        return [...]

Every reader (pipeline, memory estimate, evaluation, sweeps, CLI, app) asks the registry,
so a method registered later (a plug-in, a test) shows up everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from oats.config import OatsConfig
from oats.core.decompose import Decomposition
from oats.core.linear import MODES
from oats.errors import ConfigError

STATISTICS = ("none", "diagonal", "gram")
"""What a method's statistics pass collects, from least to most."""

ONE_TERM_MODES = ("dense", "both")
"""Evaluation modes of a method with one kind of term: its "sparse" mode would repeat "both"
and its "lowrank" mode would be an empty model (or the other way round)."""

RESERVED_NAMES = frozenset({"dense"})
"""Names a method cannot take: sweep tables use "dense" for the uncompressed row."""

BlockFn = Callable[[list[torch.Tensor], list, list, OatsConfig, object], list[Decomposition]]


def rank_zero(config: OatsConfig) -> OatsConfig:
    """The decomposition config of a sparse-only method: the same, with rank ratio 0."""
    return config.replace(rank_ratio=0.0)


def no_rank(config) -> float:
    """The rank ratio of a sparse-only method: 0."""
    return 0.0


WalkFn = Callable[..., tuple[dict, dict]]


@dataclass(frozen=True)
class Replay:
    """How the Walkthrough replays one layer of a method, step by step, from a run's weights.

    ``walk(weight, second_moments, gram, config, trace) -> (history, extras)`` decomposes one
    (d_out, d_in) matrix and calls ``trace(step, L D, S D)`` after each step with the terms in
    the scaled space (D = the input scale of ``second_moments``); ``history`` holds per-step
    lists "error", "sparse_energy", "lowrank_energy" (and "output_error" when it fits an
    output error), ``extras`` the Walkthrough's ``kept`` (the step the method keeps) and
    ``fallback`` (its rank-0 result beat every step). ``gram``: it needs the layer's input
    Gram (recomputed from the run's calibration data), which ``walk`` then receives.

    The words are the page's: ``step`` names one step ("Iteration", "Alternation"),
    ``intro`` explains the replay, ``one_step`` why kappa = 0 is a single step, and
    ``rank_zero`` names the method it is at kappa = 0.

    ``covers`` and ``stands_in`` are statistics kinds (``STATISTICS``): a method with no
    replay of its own whose statistics this replay ``covers`` is replayed by it as its own
    solver; one whose statistics it ``stands_in`` for is replayed by it with a note that the
    replay is not the run's method.
    """

    walk: WalkFn
    step: str = "Iteration"
    gram: bool = False
    intro: str = ""
    one_step: str = ""
    rank_zero: str = ""
    covers: tuple[str, ...] = ()
    stands_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    """One compression method (see the module docstring for the fields)."""

    name: str
    description: str
    budget_note: str
    title: str = ""
    """The method's name in prose ("OATS", "HASSLE-free"); its ``name`` when empty."""
    statistics: str = "diagonal"
    run_modes: tuple[str, ...] = ONE_TERM_MODES
    iterative: bool = False
    """Runs the alternating solver: ``iterations`` and ``solver`` shape its result (sweeps put
    them in the run name and match a reused run on the whole configuration)."""
    uses_rank_ratio: bool = False
    """Reads the user's rank ratio kappa (sweeps run it once per rank ratio; others once)."""
    uses_shrink: bool = False
    """Solves with the shrunk Gram H_lambda = (1 - lambda) H + lambda diag(H) (``config.shrink``
    shapes its result: part of its runs' identity and folder name; ignored for the others)."""
    default_shrink: float = 0.0
    """The Gram shrinkage it uses when ``config.shrink`` is None (only if ``uses_shrink``)."""
    thresholding: bool = False
    """Its result is OATS's alternating thresholding on the scaled weight (``decompose``)."""
    replay: Replay | None = None
    """How the Walkthrough replays one of its layers (see ``Replay``; None: see ``replay_for``)."""
    decompose_config: Callable[[OatsConfig], OatsConfig] = rank_zero
    rank_ratio: Callable[[object], float] = no_rank
    """kappa the method really uses (reads only ``config.rank_ratio``)."""
    compress: BlockFn | None = None
    working_copies: float = 11.0
    """Peak memory of decomposing one matrix, in copies of that matrix in fp32 (what the memory
    pre-flight and ``map_on_cores`` plan with). Measured here, one 8192 x 2048 matrix on one
    thread, a fresh process with a fixed mmap threshold: OATS 10.7 (its default), Wanda and
    magnitude 6.4, SparseGPT 5.5 and HASSLE-free 17 besides their Gram, low-rank SVD 4.6."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]*", self.name):
            raise ValueError(f"a method name is letters, digits and '_', got {self.name!r}")
        if self.name in RESERVED_NAMES:
            raise ValueError(f"the method name {self.name!r} is reserved")
        if self.statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {', '.join(STATISTICS)}, got {self.statistics!r}")
        modes = tuple(self.run_modes)
        if not modes or modes[0] != "dense" or "both" not in modes or not set(modes) <= set(MODES):
            raise ValueError(f"run_modes start with 'dense', include 'both' and come from {', '.join(MODES)}; "
                             f"got {modes!r}")
        object.__setattr__(self, "run_modes", modes)

    @property
    def scaled(self) -> bool:
        """Whether it scales the weights by the inputs (D = sqrt of the second moments)."""
        return self.statistics != "none"

    def shrink(self, config) -> float:
        """The Gram shrinkage lambda a run of this method with ``config`` uses (0 for a method
        that reads no Gram)."""
        if not self.uses_shrink:
            return 0.0
        value = getattr(config, "shrink", None)
        return float(self.default_shrink if value is None else value)

    def resolved(self, config):
        """``config`` with the settings left to the method (``shrink`` None) filled in as it runs
        them: what a run records, so that a later change of a default cannot change what a
        recorded run means."""
        if self.uses_shrink and config.shrink is None:
            return config.replace(shrink=self.shrink(config))
        return config

    @property
    def two_terms(self) -> bool:
        """Whether its runs have both a sparse and a low-rank term worth looking at apart."""
        return "sparse" in self.run_modes and "lowrank" in self.run_modes

    def decompose(self, weights: Sequence[torch.Tensor], second_moments: Sequence[torch.Tensor | None],
                  grams: Sequence[torch.Tensor | None], config: OatsConfig, device=None) -> list[Decomposition]:
        """Compress the matrices of one block: the method's own config and scaling, then ``compress``.

        ``second_moments[i]`` is matrix i's (d_in,) mean squared input (replaced by None for a
        method that does not scale), ``grams[i]`` its (d_in, d_in) Gram (None unless the
        method's statistics are "gram").
        """
        if self.compress is None:
            raise ValueError(f"method {self.name!r} has no compress function: register it with @register(...)")
        dconfig = self.decompose_config(config)
        if self.uses_shrink:
            dconfig = dconfig.replace(shrink=self.shrink(config))
        moments = list(second_moments) if self.scaled else [None] * len(weights)
        return list(self.compress(list(weights), moments, list(grams), dconfig, device))


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Callable[[BlockFn], BlockFn]:
    """Decorator for a per-block function: registers ``method`` with it as ``compress``."""
    if not isinstance(method, Method):
        raise TypeError(f"register takes a Method record, got {type(method).__name__}")

    def decorate(fn: BlockFn) -> BlockFn:
        if method.name in _METHODS:
            raise ValueError(f"a method named {method.name!r} is already registered")
        _METHODS[method.name] = replace(method, compress=fn)
        return fn
    return decorate


def unregister(name: str) -> None:
    """Remove a method (tests that register their own); a name not registered is ignored."""
    _METHODS.pop(name, None)


def names() -> list[str]:
    """The registered method names, in registration order (the built-ins first)."""
    return list(_METHODS)


def all_methods() -> list[Method]:
    return list(_METHODS.values())


def get(name: str) -> Method:
    """The method called ``name``; ConfigError (one line, with the choices) when there is none."""
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {name!r}: choose one of {', '.join(_METHODS)}") from None


def title(name: str) -> str:
    """A method's name in prose: its record's ``title``, else the name as it is (an unknown one too)."""
    record = find(name)
    return (record.title if record is not None else "") or name


def find(name: str) -> Method | None:
    """The method called ``name``, or None (for names read from run folders of any origin)."""
    return _METHODS.get(name) if isinstance(name, str) else None


def replay_for(name: str) -> tuple[Replay | None, bool]:
    """(the replay the Walkthrough runs for a run of method ``name``, whether it is the run's own
    solver): the method's own ``replay``; else the first registered replay that ``covers`` its
    statistics (its solver), then the first that ``stands_in`` for them (not its solver). A
    method not registered here is taken as one with diagonal statistics. (None, False) when no
    replay fits."""
    method = find(name)
    if method is not None and method.replay is not None:
        return method.replay, True
    stats = method.statistics if method is not None else "diagonal"
    replays = [m.replay for m in _METHODS.values() if m.replay is not None]
    for r in replays:
        if stats in r.covers:
            return r, True
    for r in replays:
        if stats in r.stands_in:
            return r, False
    return None, False


def used_rank_ratio(name: str, config) -> float:
    """The rank ratio a run of method ``name`` really used (0 for a method not registered here)."""
    method = find(name)
    return method.rank_ratio(config) if method is not None else 0.0


def used_shrink(name: str, config) -> float:
    """The Gram shrinkage a run of method ``name`` really used (0 for a method not registered here)."""
    method = find(name)
    return method.shrink(config) if method is not None else 0.0


def run_modes(name: str) -> tuple[str, ...]:
    """The evaluation modes worth measuring for a run of ``name`` (dense, both when not registered)."""
    method = find(name)
    return method.run_modes if method is not None else ONE_TERM_MODES


def variants(name: str, config=None) -> tuple[str, ...]:
    """The variants a run of method ``name`` has: dense, "both" (the compressed model) and, for a
    method with a sparse and a low-rank term, "sparse" (sparse-only) and "lowrank" (low-rank-only).

    The one answer every page, figure and summary asks. With the run's ``config``, a two-term
    method that really spent kappa = 0 (no low-rank term) or 1 (no sparse term) has one term too:
    its single-term variants would repeat the compressed model or be an all-zero one.
    """
    modes = run_modes(name)
    if config is not None and len(modes) > len(ONE_TERM_MODES):
        try:
            kappa = float(used_rank_ratio(name, config))
        except Exception:  # noqa: BLE001 - a config the method cannot read keeps the method's variants
            return modes
        if kappa <= 0.0 or kappa >= 1.0:
            return ONE_TERM_MODES
    return modes


def check_modes(modes, allowed: Sequence[str] = MODES, *, need_dense: bool = False) -> tuple[str, ...]:
    """The one check of variant names that every caller (evaluation, CLI, the explain views)
    uses: ``modes`` as a tuple in the order given, each among ``allowed`` (by default every
    variant name, ``oats.core.linear.MODES``; pass ``variants(...)`` or ``run_variants(run)``
    for the variants one run has), at least one, and "dense" first when ``need_dense``.
    ConfigError (one line, with the choices) otherwise."""
    if isinstance(modes, str):
        modes = (modes,)
    try:
        modes = tuple(modes)
    except TypeError:
        raise ConfigError(f"modes must be a list of variant names among {', '.join(allowed)}") from None
    bad = [m for m in modes if m not in allowed]
    if bad:
        raise ConfigError(f"unknown variant {bad[0]!r}: choose among {', '.join(allowed)}")
    if not modes:
        raise ConfigError(f"no variant given: choose among {', '.join(allowed)}")
    if need_dense:
        if "dense" not in modes:
            raise ConfigError(f"the variants must include dense (the reference), got {', '.join(modes)}")
        modes = ("dense",) + tuple(m for m in modes if m != "dense")
    return modes


def run_variants(run) -> tuple[str, ...]:
    """``variants`` of a run (a CompressionRun or a RunInfo: anything with ``method`` and ``config``)."""
    return variants(getattr(run, "method", None), getattr(run, "config", None))


def terms(name: str, config=None) -> str:
    """What the compressed model of a run of ``name`` is made of: "sparse + low-rank", "sparse"
    or "low-rank" (labels that follow the method, for its "both" variant)."""
    if "sparse" in variants(name, config):
        return "sparse + low-rank"
    try:
        kappa = float(used_rank_ratio(name, config if config is not None else OatsConfig()))
    except Exception:  # noqa: BLE001 - a config the method cannot read: the usual one-term method
        kappa = 0.0
    return "low-rank" if kappa >= 1.0 else "sparse"


class _Field(Mapping):
    """A live read-only mapping name -> one field of every registered method."""

    def __init__(self, field: str):
        self._field = field

    def __getitem__(self, name: str) -> str:
        method = find(name)
        if method is None:
            raise KeyError(name)
        return getattr(method, self._field)

    def __iter__(self) -> Iterator[str]:
        return iter(names())

    def __len__(self) -> int:
        return len(_METHODS)

    def __repr__(self) -> str:
        return repr(dict(self))


METHODS: Mapping[str, str] = _Field("description")
"""Method name -> one-line description, for every registered method."""

BUDGET_NOTES: Mapping[str, str] = _Field("budget_note")
"""Method name -> how it spends the budget of (1 - rho) d_out d_in parameters per matrix."""
