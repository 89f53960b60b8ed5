"""The Deploy measurement of a run whose model stays on disk (``oats.runs.lazy.LazyRun``).

``speed.compare_speed`` exports the run and times the whole exported model against the whole
dense one: both in memory at once. For a mid-size model (Llama-3.1-8B: 16 GB in bf16, twice
that in fp32) that cannot run on a 24 GB machine, so a lazily opened run is measured one matrix
at a time instead: each replaced matrix is read from disk with the run's reader, built as the
deployed layer the export would build (``SparseLowRankLinear`` from the stored sparse term and
factors, then the form ``oats.deploy.plan`` picks for the goal, as ``load_compressed`` does) and
as the dense layer (the original weight in fp32, what the dense model computes with), timed on
one token (decoding) and on a prompt-sized batch, and dropped. Held while timing: the dense
weight and the deployed layer of one matrix (and a folded copy with the "fastest" goal, which may
fold a layer to a dense one). Building the deployed layer takes more for a moment: the reader
densifies the sparse term of that one matrix, and the CSR to CSR8 conversion and its check
(``oats.deploy.kernels``) hold int64 copies of the indices: 1.7 GB above the open run for a
14336 x 4096 term at half density (``peak_bytes`` says about how much for a run).

Matrices of the same shape, rank and density (to 0.05: what decides a layer's speed, as in
``plan.shape_key``) are measured once and counted as many times as they occur: 4 to 7 distinct
groups for a Llama, where measuring all 224 matrices of an 8B model would read the 16 GB again.
The model's block-linear time per token is the sum over its matrices. Only the block linears
are timed: the embeddings, attention's score and softmax, the norms and the head are the same
in the dense model and in the export (the export replaces the block linears only), and timing
them would need the whole model in memory, which is what this path avoids.

One matrix called again and again stays in the CPU's cache when it fits there, so groups whose
matrices are smaller than the last-level cache (tiny models) read faster than in a model, on
both sides alike; every matrix of a mid-size model (64 MB and more in fp32) comes from memory
as in a model.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from oats import resources
from oats.deploy import kernels
from oats.deploy.export import _parts
from oats.deploy.linear import SparseLowRankLinear, pack_csr
from oats.deploy.plan import GOALS, ROUNDS as PLAN_TIMED, apply_plan, check_tokens
from oats.deploy.speed import floor_seconds, machine_floors
from oats.errors import ConfigError
from oats.runs.lazy import LazyRun, streamed_seconds

__all__ = ["PROMPT_TOKENS", "ROUNDS", "MatrixGroup", "StreamedSpeed", "deployed_layer", "dense_layer",
           "matrix_groups", "peak_bytes", "streamed_estimate", "streamed_speed"]

PROMPT_TOKENS = 128
"""Rows of the prompt-sized batch (a prompt of a few sentences: prefill, GEMM-bound)."""
ROUNDS = 5
"""Timed calls per layer and batch size (after one warm-up), dense and deployed in turn; the median is kept."""
DECODE_AS_TOKENS = 16
"""A one-token call reads the whole matrix for one row: memory-bound, it costs about as much as a
GEMM over this many rows."""
SPARSE_BATCH_COST = 3
"""A sparse product on a batch of rows takes about this many times the dense one's time here
(the 8B-shaped run: 2.3x to 3.5x at 128 tokens)."""
PLAN_ROUNDS = PLAN_TIMED + 1
"""The plan's timed rounds and its warm-up round."""


@dataclass
class MatrixGroup:
    """The replaced matrices that share a shape, rank and density: one of them is measured."""

    key: str
    shape: tuple[int, int]
    rank: int
    paths: list[str]
    form: str = ""
    """What the deployed layer is at one token (``plan.FORMS``), and at the prompt when it differs."""
    ms: dict[str, float] = field(default_factory=dict)
    """Milliseconds per call of the measured matrix: dense_decode, deployed_decode, dense_prompt, deployed_prompt."""
    nbytes: dict[str, int] = field(default_factory=dict)
    """Bytes one decoding step reads for one matrix: dense, deployed."""
    macs: dict[str, int] = field(default_factory=dict)
    """Multiply-adds per token for one matrix: dense, deployed."""

    def row(self) -> dict:
        n, ms = len(self.paths), self.ms
        return {"shape": f"{self.shape[0]} x {self.shape[1]}", "rank": self.rank, "count": n,
                "dense ms (1 token)": ms["dense_decode"], "deployed ms (1 token)": ms["deployed_decode"],
                f"dense ms ({PROMPT_TOKENS} tokens)": ms["dense_prompt"],
                f"deployed ms ({PROMPT_TOKENS} tokens)": ms["deployed_prompt"],
                "× dense speed (1 token)": ms["dense_decode"] / ms["deployed_decode"], "form": self.form,
                "measured": self.paths[0]}


@dataclass
class StreamedSpeed:
    """What ``streamed_speed`` measured: per group, and the block linears' totals in seconds."""

    goal: str
    prompt_tokens: int
    groups: list[MatrixGroup]
    totals: dict[str, float]
    """dense_decode, deployed_decode, dense_prompt, deployed_prompt (seconds for every block linear
    of the model, counted per group), floor_dense, floor_deployed (decoding, at this machine's floor)."""
    bounds: dict[str, str]
    """dense, deployed: "B" (bandwidth) or "C" (GEMM rate), what binds the decoding floor."""
    cpu: str
    threads: int
    kernels: str
    seconds: float

    @property
    def matrices(self) -> int:
        return sum(len(g.paths) for g in self.groups)

    def rows(self) -> list[dict]:
        return [g.row() for g in self.groups]


def _modules(run: LazyRun) -> dict:
    """The manifest's shape and rank of every replaced matrix of the run's finished blocks."""
    info = run.info_modules()
    return {p: info[p] for p in dict.fromkeys(r.path for r in run.layers)}


def _bias(run: LazyRun, path: str) -> torch.Tensor | None:
    b = getattr(run.model.get_submodule(path), "bias", None)
    return None if b is None or b.device.type == "meta" else b.detach().float()


def matrix_groups(run: LazyRun) -> list[MatrixGroup]:
    """The run's replaced matrices grouped by shape, rank, U parts, density (to 0.05) and bias, in
    the order they first occur (from the manifest: nothing is read)."""
    groups: dict[str, MatrixGroup] = {}
    for path, mod in _modules(run).items():
        recs = [r for r in run.layers if r.path == path]
        d_out, d_in = mod.shape
        density = sum(r.nnz for r in recs) / max(1, d_out * d_in)
        parts = len(recs) if any(r.rows is not None for r in recs) else 1
        key = (f"{d_out}x{d_in} r{mod.rank} p{parts} d{round(density * 20) / 20:.2f} "
               f"b{int(getattr(run.model.get_submodule(path), 'bias', None) is not None)}")
        groups.setdefault(key, MatrixGroup(key, (d_out, d_in), mod.rank, [])).paths.append(path)
    return list(groups.values())


def deployed_layer(run: LazyRun, path: str) -> SparseLowRankLinear:
    """The layer at ``path`` as a sparse export loads it (S in CSR8 where the kernels run, else
    torch's CSR; one U per part of a fused matrix), built from the run's block file: the dense
    sparse term of this one matrix is read, packed and dropped."""
    f = run.reader.factors(path)
    csr = pack_csr(f.pop("sparse").float())
    u, v = f["u"].float(), f["v"].float()
    d_out, d_in = run.info_modules()[path].shape
    us, rows = _parts(run, path, SimpleNamespace(u=u, rank=u.shape[1], out_features=d_out))
    return SparseLowRankLinear(d_out, d_in, csr["values"], us, v, _bias(run, path), part_rows=rows,
                               crow_indices=csr["crow_indices"], col_indices=csr["col_indices"]).eval()


def dense_layer(run: LazyRun, path: str) -> nn.Linear:
    """The layer at ``path`` as the dense model computes it: the original weight in fp32."""
    w = run.reader.weight(path).float()
    b = _bias(run, path)
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    out.weight = nn.Parameter(w, requires_grad=False)
    if b is not None:
        out.bias = nn.Parameter(b, requires_grad=False)
    return out.eval()


def _planned(layer: SparseLowRankLinear, goal: str, tokens: int) -> tuple[nn.Module, str]:
    """The form ``goal`` picks for ``layer`` at ``tokens`` rows per call on this machine
    (``plan.apply_plan``: measured once per shape and cached per CPU, as ``load_compressed`` does)."""
    holder = nn.ModuleDict({"layer": layer})
    plan = apply_plan(holder, goal, tokens)
    return holder["layer"], plan.shapes[0].chosen


def _times(dense: nn.Module, deployed: nn.Module, tokens: int, rounds: int) -> tuple[float, float]:
    """Median ms per call of each layer on ``tokens`` rows, called in turn each round after a warm-up."""
    x = torch.randn(tokens, dense.in_features, generator=torch.Generator().manual_seed(0))
    ts: dict[int, list[float]] = {0: [], 1: []}
    with torch.no_grad():
        for r in range(rounds + 1):
            for i, m in enumerate((dense, deployed)):
                t = time.perf_counter()
                m(x)
                if r:
                    ts[i].append(time.perf_counter() - t)
    return statistics.median(ts[0]) * 1e3, statistics.median(ts[1]) * 1e3


def _cost(m: nn.Module) -> tuple[int, int]:
    """(bytes read, multiply-adds) per token of one built layer."""
    if isinstance(m, SparseLowRankLinear):
        return m.nbytes(), m.params
    nbytes = sum(t.numel() * t.element_size() for t in m.parameters())
    return nbytes, m.weight.numel()


def _measure(run: LazyRun, g: MatrixGroup, goal: str, prompt: int, rounds: int) -> None:
    """Fill ``g`` from its first matrix: the deployed layer built first (its dense sparse term
    dropped before the dense weight is read), each batch size planned and timed, then all dropped."""
    path = g.paths[0]
    run.reader.enter(path)  # the reader's record of what is resident (tests read its max_blocks_resident)
    try:
        base = deployed_layer(run, path)
        dense = dense_layer(run, path)
        layer, form = _planned(base, goal, 1)
        g.ms["dense_decode"], g.ms["deployed_decode"] = _times(dense, layer, 1, rounds)
        g.nbytes = {"dense": _cost(dense)[0], "deployed": _cost(layer)[0]}
        g.macs = {"dense": _cost(dense)[1], "deployed": _cost(layer)[1]}
        del layer  # a folded copy ("fastest") goes before the prompt's plan builds its own
        layer, at_prompt = _planned(base, goal, prompt)
        g.ms["dense_prompt"], g.ms["deployed_prompt"] = _times(dense, layer, prompt, rounds)
        g.form = form if at_prompt == form else f"{form} ({at_prompt} at {prompt} tokens)"
    finally:
        run.reader.leave(path)


def _check(run, goal: str, prompt: int, rounds: int) -> None:
    if not isinstance(run, LazyRun):
        raise ConfigError("the streamed Deploy measurement is for a run opened with its model on disk "
                          "(oats.runs.lazy.open_lazy); a run in memory is timed whole by compare_speed")
    if goal not in GOALS:
        raise ConfigError(f"unknown goal {goal!r}: use one of {', '.join(GOALS)}")
    check_tokens(prompt)
    if not run.layers:
        raise ConfigError("the run has no compressed block yet: there is no deployed layer to measure")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 100:
        raise ConfigError(f"rounds must be a whole number from 1 to 100, got {rounds!r}")


def streamed_speed(run: LazyRun, goal: str = "smallest", prompt: int = PROMPT_TOKENS, rounds: int = ROUNDS,
                   progress: Callable[[float, str], None] | None = None) -> StreamedSpeed:
    """Time every distinct replaced matrix of a lazily opened run, dense against deployed for
    ``goal``, one matrix in memory at a time (see the module docstring), and total them over the
    model's block linears. ``progress(fraction, message)`` is told before each group.
    ConfigError (one line) for a run in memory or a bad goal, prompt or rounds."""
    _check(run, goal, prompt, rounds)
    say = progress or (lambda f, m: None)
    t0 = time.perf_counter()
    say(0.0, "measuring this machine's bandwidth and GEMM rate")
    floors = machine_floors(mb=128, gemm=1024)
    groups = matrix_groups(run)
    weights = [math.prod(g.shape) for g in groups]  # one matrix read and timed per group: by its size
    done = 0.0
    for i, g in enumerate(groups):
        say(0.05 + 0.95 * done / sum(weights), f"shape {i + 1} of {len(groups)}: {g.shape[0]} x {g.shape[1]} "
                                                f"({len(g.paths)} matrices of it), reading and timing one")
        _measure(run, g, goal, prompt, rounds)
        done += weights[i]
    say(1.0, "done")
    totals = {k: sum(g.ms[k] * len(g.paths) for g in groups) / 1e3
              for k in ("dense_decode", "deployed_decode", "dense_prompt", "deployed_prompt")}
    bounds = {}
    for k in ("dense", "deployed"):
        nbytes = sum(g.nbytes[k] * len(g.paths) for g in groups)
        macs = sum(g.macs[k] * len(g.paths) for g in groups)
        totals[f"floor_{k}"], bounds[k] = floor_seconds(nbytes, 2 * macs, floors)
    return StreamedSpeed(goal, prompt, groups, totals, bounds,
                         f"{resources.cpu_name()} ({', '.join(resources.vector_extensions()) or 'no vector extensions'})",
                         torch.get_num_threads(), kernels.backend_note(), time.perf_counter() - t0)


def streamed_estimate(run: LazyRun, goal: str = "smallest", prompt: int = PROMPT_TOKENS,
                      rounds: int = ROUNDS) -> float:
    """About how long ``streamed_speed`` takes here, before it starts, counting the plan's own
    measurement of each shape (skipped where this machine has it cached, so a later measurement is
    quicker): reading each group's one matrix (``lazy.streamed_seconds``'s per-element cost,
    measured once per run) three times over (the weight, the sparse term and factors, the
    packing; five for "fastest", which also folds and converts it), and the timed calls at the
    measured per-multiply-add cost, a one-token call counted as ``DECODE_AS_TOKENS`` rows and a
    sparse call on a batch as ``SPARSE_BATCH_COST`` dense ones. Within 1.7x of what it took for
    the 8B-shaped run here (both goals)."""
    one, two = streamed_seconds(run, 1), streamed_seconds(run, 2)
    per_mac_all = max(two - one, 0.0)  # every replaced matrix, one token
    read_all = max(one - per_mac_all, 0.0)
    mods = _modules(run)
    share = sum(math.prod(g.shape) for g in matrix_groups(run)) / max(1, sum(math.prod(m.shape) for m in mods.values()))
    d, b = DECODE_AS_TOKENS, prompt
    ours = (rounds + 1) * (d + b + d + SPARSE_BATCH_COST * b)  # dense and deployed, one token and the batch
    if goal == "fastest":  # the plan times csr8 (two loops), csr and dense at one token, the three at the batch
        plan, reads = PLAN_ROUNDS * (4 * d + (2 * SPARSE_BATCH_COST + 1) * b), 5
    else:  # the two loops of csr8 at one token; nothing to choose at the batch
        plan, reads = PLAN_ROUNDS * 2 * d, 3
    return 1.5 + share * (reads * read_all + per_mac_all * (ours + plan))


def peak_bytes(run: LazyRun, goal: str = "smallest") -> int:
    """About how much memory ``streamed_speed`` takes above the open run, for a moment: for the
    largest matrix, its fp32 weight and densified sparse term (4 bytes an entry each) and about 40
    bytes per non-zero of packing, conversion and check; "fastest" also holds the plan's folded
    copy and torch CSR form while it times them (4 bytes an entry, 32 a non-zero). Measured for
    14336 x 4096 at half density: 1.8 GB ("smallest"), 3.0 GB ("fastest")."""
    if not run.layers:
        return 0
    biggest = max(_modules(run), key=lambda p: math.prod(run.info_modules()[p].shape))
    nnz = sum(r.nnz for r in run.layers if r.path == biggest)
    numel = math.prod(run.info_modules()[biggest].shape)
    return 8 * numel + 40 * nnz + (4 * numel + 32 * nnz if goal == "fastest" else 0)
