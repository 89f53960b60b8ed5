"""How long a compression will take, said before it starts (no Streamlit here).

From this machine's own past runs where it has them: every complete run folder of the same
model and method (and solver, where the method iterates) made on this machine (the manifest's
``machine`` record; a run without one is taken as made here) predicts the new run by scaling
its recorded times to the requested settings:

* the calibration part (capturing the inputs, the statistics, re-running the compressed blocks:
  ``timings.total_s - timings.decompose_s``) in proportion to the calibration tokens;
* the decomposition part (``timings.decompose_s``) for an iterative method (OATS) in
  proportion to the iterations the layers will run: the iteration cap asked for, or, where
  the past run's fast solver stopped before its cap, the iterations it stopped at;
* loading the model and the data (``timings.load_s``, of the runs that loaded the model afresh)
  and the evaluation (``time_s`` of the run's ``evaluation.json``) as they were, plus the start
  of the app's compression process.

The estimate is the median of those predictions, so one run made while the machine was busy
does not decide it. Without such a run it is a rough figure from the default rates below (seconds
per million block-linear weights, measured on minilm-l6 on a 2-core machine), and says so.
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from oats.core.decompose import rank_budget
from oats.errors import OatsError
from oats.methods import registry
from oats.models.weights import check_safetensors_file
from oats.runs.evaluations import read_evaluation
from oats.runs.folders import list_runs

DEFAULT_COMPRESS_S_PER_M = {"oats": 1.2, "wanda": 0.9, "sparsegpt": 2.3, "magnitude": 0.9, "lowrank": 1.3,
                            "hassle": 7.0}
"""Seconds per million block-linear weights to compress with default settings (the calibration
data's default size, 80 iterations of the fast solver), measured on minilm-l6 (10.6 M
block-linear weights) on a 2-core AMD EPYC shared with other work (``oats.runner.execute`` with
two torch threads: OATS 8.4 s, Wanda 10.0 s, SparseGPT 24.3 s, magnitude 16.1 s, low-rank 14.8 s,
HASSLE-free 73.8 s; most of each but HASSLE-free's is the calibration statistics, which every method collects)."""
DEFAULT_CALIBRATION_S_PER_M = DEFAULT_COMPRESS_S_PER_M["wanda"]
"""Seconds per million block-linear weights of what every method does besides its decompositions
(capturing the inputs, the statistics, re-running the compressed blocks): Wanda's rate, whose
own per-matrix work is a small part of it. An iterative method with known shapes adds the shape
model's decomposition time to it."""
DEFAULT_COMPRESS_S_PER_M_OTHER = 2.0
"""The same for a method without a measured rate (a method added later)."""
DEFAULT_LOAD_S_PER_M = 0.3
"""Seconds per million block-linear weights to load the model and prepare the calibration data
(minilm-l6: 2.9 s)."""
DEFAULT_EVALUATE_S_PER_M = 1.2
"""Seconds per million block-linear weights to evaluate a run's variants (dense, compressed and each
term alone) on the default evaluation set (minilm-l6, OATS: 12.4 s)."""
WORKER_START_S = 5.0
"""Seconds to start the app's compression process (``python -m oats.runner.worker`` importing
torch and transformers: 4.1 and 7.8 s measured on the busy 2-core machine), before any load."""
DEFAULT_FROM_DISK_LOAD_S = 10.0
"""Seconds to load a model in the larger-than-memory mode: the model built on the meta device and
its embeddings read, whatever its size (Llama-3.1-8B's shapes: 7.6 s on the busy 2-core machine);
the blocks are read in their turn, inside the compression's time."""
MIN_LOAD_S = 0.5
"""A recorded load shorter than this was of a model already in memory (a sweep hands its loaded
model to every run): it says nothing of loading one afresh, so the estimate leaves it out."""
DEFAULT_ITERATIONS_RUN = 21
"""The iterations the fast solver ran (mean over the layers, at its default cap of 80) when the
default rates were measured."""
_MINILM_BLOCK = ((384, 384),) * 4 + ((1536, 384), (384, 1536))
PRESET_SHAPES = {"minilm-l6": (_MINILM_BLOCK,) * 6, "dinov2-small": (_MINILM_BLOCK,) * 12,
                 "smollm2-135m": (((576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576),
                                   (576, 1536)),) * 30}
"""The block-linear matrix shapes (d_out, d_in) of the embedded models, block by block (their
config files: MiniLM-L6 and DINOv2-S hidden 384, MLP 1536; SmolLM2-135M hidden 576, MLP 1536,
3 key-value heads of 64)."""
PRESET_BLOCK_WEIGHTS = {name: sum(m * n for block in blocks for m, n in block) for name, blocks in PRESET_SHAPES.items()}
"""Block-linear weights of the embedded models (what a run records as ``params_dense``), for the
default rates when no run of the model was ever made here (minilm-l6 10,616,832, dinov2-small
21,233,664, smollm2-135m 106,168,320)."""
DEFAULT_SAMPLES = {"causal-lm": 16, "encoder": 128, "vision": 32}
"""The calibration samples a task takes by default (``oats.data``: LM_N_SAMPLES,
ENCODER_N_SAMPLES, VISION_N_SAMPLES)."""


SHAPE_COST = {"oats": (0.19, 0.0, 2.5e-10), "wanda": (0.0, 3.5e-8, 0.0), "magnitude": (0.0, 3.0e-8, 0.0)}
"""Seconds to decompose one (d_out, d_in) matrix on one thread: ``a + n * (b + c * r) * d_out * d_in``
with r the low-rank term's rank and n the iterations (1 for a method that does not iterate).
Each iteration of the fast solver is a subspace iteration, ~ d_out d_in r, plus a hard threshold
and the residuals, ~ d_out d_in; fitted, the second is lost in the first (b = 0), and ``a`` is
the setup (the scaling, the first basis). Fitted to ``benchmarks/mid_size.py --phase shapes``
(CPU seconds on one core of a 2-core AMD EPYC, random matrices with outlier input channels, the
shapes of Llama-3.2-1B and Llama-3.1-8B; OATS at default settings, 22-23 iterations run on the 1B
shapes, 2 and 6 iterations on the 8B ones): every OATS measurement within 30% (the 1B shapes
-5% to +27%, the 8B ones -21% to +4% at 2 and 6 iterations, -6% to +14% scaled to 21); Wanda and
magnitude within 25% on the matrices of more than 10M weights (their smaller ones take a tenth
of a second). A 14336 x 4096 matrix takes about
2 minutes at 21 iterations: an 8B block's decomposition alone is about 4 minutes on 2 cores."""


def this_machine() -> dict:
    """What a run records about the machine it was made on: host name, CPU count, torch threads."""
    import torch
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


@dataclass(frozen=True)
class PastRun:
    """What the estimate needs of one finished run."""

    model: str
    method: str
    solver: str
    iterations: int
    """The iteration cap it was made with."""
    iterations_done: float
    """The mean iterations its layers ran (the fast solver may stop before the cap)."""
    tokens: float
    samples: int | None
    load_s: float
    total_s: float
    decompose_s: float
    evaluate_s: float | None
    params: int
    host: str | None


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def past_run(info, evaluation: dict | None = None) -> PastRun | None:
    """A complete run's timings as a ``PastRun`` (``info``: its ``RunInfo``; ``evaluation``: its
    ``evaluation.json``); None when it cannot teach the estimate anything: unfinished, no
    timings, or resumed (its ``total_s`` then counts only the blocks of the last session, while
    the per-block sums count them all)."""
    t = info.timings or {}
    total, dec, stats = _num(t.get("total_s")), _num(t.get("decompose_s")), _num(t.get("stats_s"))
    tokens = _num((info.calibration or {}).get("tokens"))
    if not info.complete or not total or total <= 0 or dec is None or not tokens:
        return None
    if stats is not None and total + 0.5 < stats + dec:
        return None  # resumed
    done = [l.iterations for l in info.layers if isinstance(l.iterations, int) and l.iterations > 0]
    samples = (info.calibration or {}).get("samples")
    machine = info.extra.get("machine") if isinstance(info.extra, dict) else None
    ev = _num((evaluation or {}).get("time_s")) if evaluation and not evaluation.get("quick") else None
    return PastRun(model=info.model_name, method=info.method, solver=str(info.config.solver),
                   iterations=int(info.config.iterations), iterations_done=sum(done) / len(done) if done else 1.0,
                   tokens=tokens, samples=samples if isinstance(samples, int) and samples > 0 else None,
                   load_s=_num(t.get("load_s")) or 0.0, total_s=total, decompose_s=min(dec, total), evaluate_s=ev,
                   params=int(info.params_dense or 0),
                   host=machine.get("host") if isinstance(machine, dict) and isinstance(machine.get("host"), str)
                   else None)


def past_runs(root: str | Path) -> list[PastRun]:
    """Every complete run under ``root`` that can teach the estimate (``past_run``)."""
    out = []
    for row in list_runs(root):
        if row.get("info") is None:
            continue
        p = past_run(row["info"], read_evaluation(row["path"]))
        if p is not None:
            out.append(p)
    return out


@dataclass(frozen=True)
class Estimate:
    """The predicted seconds (None: no estimate) and how they were arrived at."""

    seconds: float | None
    compress_s: float | None = None
    load_s: float | None = None
    evaluate_s: float | None = None
    runs: int = 0
    """How many past runs it learned from (0: the default rates)."""
    basis: str = ""
    """Where it comes from, in words that fill the brackets of ``text``."""

    @property
    def text(self) -> str:
        """"about 40 s (from 3 past runs of minilm-l6 with oats on this machine)"."""
        if self.seconds is None:
            return f"no time estimate ({self.basis})"
        return f"about {duration(self.seconds)} ({self.basis})"

    @property
    def parts(self) -> str:
        """"starting and loading 10 s, compressing 20 s, evaluating 15 s" (empty without an estimate)."""
        if self.seconds is None:
            return ""
        out = [f"starting and loading {duration(self.load_s)}", f"compressing {duration(self.compress_s)}"]
        if self.evaluate_s:
            out.append(f"evaluating {duration(self.evaluate_s)}")
        return ", ".join(out)


def duration(seconds: float | None) -> str:
    """Seconds as a person says them: "5 s", "40 s", "2 min", "1.5 h"."""
    s = max(float(seconds or 0.0), 0.0)
    if s < 10:
        return f"{max(round(s), 1)} s"
    if s < 90:
        return f"{int(5 * round(s / 5))} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"


def _iterations(method: str, cap: int, past: PastRun, stop: float | None) -> float:
    """The iterations the layers are expected to run at ``cap``, judged from ``past``.

    A method that does not iterate: as ``past`` ran. A past run whose fast solver stopped before
    its cap (it converged): no more than it ran then. The exact solver: the cap. A past run that
    hit its cap: the cap, but no more than where the fast solver stops (``stop``, the median of
    the other runs that stopped early; without one, ``DEFAULT_ITERATIONS_RUN``, where it stopped
    on the embedded models), since a low cap says nothing of where it would have stopped."""
    record = registry.find(method)
    if record is None or not record.iterative:
        return past.iterations_done
    if past.iterations_done < past.iterations - 0.5:
        return min(float(cap), past.iterations_done)
    if past.solver == "exact":
        return float(cap)
    return min(float(cap), max(past.iterations_done, stop or DEFAULT_ITERATIONS_RUN))


def _compress_s(p: PastRun, method: str, cap: int, tokens: float, stop: float | None) -> float:
    """The seconds to compress the request, scaled from one past run."""
    calib = (p.total_s - p.decompose_s) * tokens / p.tokens
    dec = p.decompose_s * _iterations(method, cap, p, stop) / max(p.iterations_done, 1e-9)
    return calib + dec


def _tokens(p: PastRun, samples: int | None, task: str | None) -> float:
    """The calibration tokens the request will use, from ``p``'s tokens per sample."""
    want = samples or DEFAULT_SAMPLES.get(task or "")
    if want is None or p.samples is None:
        return p.tokens
    return p.tokens / p.samples * want


def estimate(model: str, method: str, config, past: Iterable[PastRun], task: str | None = None,
             samples: int | None = None, evaluate: bool = True, host: str | None = None,
             from_disk: bool = False) -> Estimate:
    """The time a compression of ``model`` with ``method`` and ``config`` (an ``OatsConfig``) will
    take, learned from ``past`` runs of the same model and method on ``host`` (default: this
    machine); ``samples``: the calibration samples asked for (None: the task's default);
    ``evaluate``: whether the evaluation follows; ``from_disk``: the larger-than-memory mode (its
    load reads the embeddings only, each block is read in its turn: ``DEFAULT_FROM_DISK_LOAD_S``)."""
    host = socket.gethostname() if host is None else host
    past = [p for p in past if p.host in (None, host)]
    record = registry.find(method)
    same = [p for p in past if p.model == model and p.method == method]
    if record is not None and record.iterative and any(p.solver == config.solver for p in same):
        same = [p for p in same if p.solver == config.solver]
    if same:
        stops = [p.iterations_done for p in same if p.iterations_done < p.iterations - 0.5]
        stop = statistics.median(stops) if stops else None
        compress = statistics.median(_compress_s(p, method, int(config.iterations), _tokens(p, samples, task), stop)
                                     for p in same)
        params = same[0].params
        loads = [p.load_s for p in same if p.load_s >= MIN_LOAD_S]
        load = WORKER_START_S + (statistics.median(loads) if loads else _load_s(params / 1e6, from_disk))
        evals = [p.evaluate_s for p in same if p.evaluate_s is not None]
        ev = (statistics.median(evals) if evals else DEFAULT_EVALUATE_S_PER_M * params / 1e6) if evaluate else None
        n = len(same)
        basis = f"from {n} past run{'s' if n > 1 else ''} of {model} with {method} on this machine"
        if evaluate and not evals:
            basis += "; the evaluation a rough figure"
        return Estimate(load + compress + (ev or 0.0), compress, load, ev, n, basis)
    return _default(model, method, config, past, task, samples, evaluate, from_disk)


def _load_s(m: float, from_disk: bool) -> float:
    """Seconds to load a model of ``m`` million block-linear weights without a past run of it."""
    return DEFAULT_FROM_DISK_LOAD_S if from_disk else DEFAULT_LOAD_S_PER_M * m


def _default(model, method, config, past, task, samples, evaluate, from_disk=False) -> Estimate:
    """The rough figure from the default rates, scaled by the model's block-linear weights (from a
    past run of the model with another method, its shapes (``model_shapes``), or the embedded
    models' table). An iterative method whose matrix shapes are known (a preset, a local
    folder) is the calibration rate per million weights plus the shape model's decomposition
    (``decompose_seconds``): its cost grows with the rank, so a rate per weight measured on a
    small model would say minutes for an 8B model that takes hours."""
    shapes = model_shapes(model)
    params = next((p.params for p in past if p.model == model and p.params), None) or (
        sum(m * n for block in shapes for m, n in block) if shapes else PRESET_BLOCK_WEIGHTS.get(model))
    if not params:
        return Estimate(None, basis=f"no past run of {model} here, and its size is not known before it loads")
    m = params / 1e6
    record = registry.find(method)
    decompose = decompose_seconds(method, shapes, config) if shapes and record is not None and \
        record.iterative else None
    rate = DEFAULT_CALIBRATION_S_PER_M if decompose is not None else \
        DEFAULT_COMPRESS_S_PER_M.get(method, DEFAULT_COMPRESS_S_PER_M_OTHER)
    if decompose is None and record is not None and record.iterative:  # fewer iterations than the default rate's
        rate *= min(int(config.iterations), DEFAULT_ITERATIONS_RUN) / DEFAULT_ITERATIONS_RUN
    default_samples = DEFAULT_SAMPLES.get(task or "")
    if samples and default_samples:
        rate *= 0.5 + 0.5 * samples / default_samples  # about half of the time is the calibration data's
    compress, load = rate * m + (decompose or 0.0), WORKER_START_S + _load_s(m, from_disk)
    ev = DEFAULT_EVALUATE_S_PER_M * m if evaluate else None
    how = "a rough figure" + ("; the decomposition from its matrix shapes" if decompose is not None else "")
    return Estimate(load + compress + (ev or 0.0), compress, load, ev, 0,
                    f"no past run of {model} with {method} on this machine: {how}")

def matrix_seconds(method: str, d_out: int, d_in: int, config, iterations: float | None = None) -> float | None:
    """The shape model (``SHAPE_COST``): seconds to decompose one matrix with ``method`` at
    ``config`` on one thread; ``iterations``: those the layer runs (default: the cap, but no more
    than where the fast solver stops on real weights, ``DEFAULT_ITERATIONS_RUN``). None for a
    method without a fitted cost."""
    cost, record = SHAPE_COST.get(method), registry.find(method)
    if cost is None or record is None:
        return None
    a, b, c = cost
    if record.iterative:
        n = min(int(config.iterations), DEFAULT_ITERATIONS_RUN) if iterations is None else iterations
        r = rank_budget(d_out, d_in, record.decompose_config(config))
    else:
        n, r = 1, 0
    return a + n * (b + c * r) * d_out * d_in


def decompose_seconds(method: str, shapes, config, threads: int | None = None) -> float | None:
    """The shape model's seconds for every matrix of ``shapes`` (a sequence of blocks, each a
    sequence of (d_out, d_in)): per block, its matrices spread over ``threads`` (default: this
    machine's cores) largest first, as ``oats.resources.map_on_cores`` spreads them, so a block
    takes as long as its busiest thread. None for a method without a fitted cost."""
    threads = max(1, threads or os.cpu_count() or 1)
    total = 0.0
    for block in shapes:
        costs = [matrix_seconds(method, m, n, config) for m, n in block]
        if any(c is None for c in costs):
            return None
        busy = [0.0] * min(threads, max(len(costs), 1))
        for c in sorted(costs, reverse=True):
            busy[busy.index(min(busy))] += c
        total += max(busy, default=0.0)
    return total


_BLOCK_INDEX = re.compile(r"\.(\d+)\.")


def model_shapes(model: str) -> tuple[tuple[tuple[int, int], ...], ...] | None:
    """The block-linear matrix shapes of ``model``, block by block, without loading a weight: an
    embedded model's from ``PRESET_SHAPES``; a local folder's from its safetensors headers (every
    2-D ``.weight`` under a numbered block, e.g. ``model.layers.3.mlp.up_proj.weight``); None
    when they cannot be known before it loads (a hub id, a folder without safetensors)."""
    if model in PRESET_SHAPES:
        return PRESET_SHAPES[model]
    try:
        folder = Path(model).expanduser()
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        return _header_shapes(tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files))
    except (OatsError, OSError, ValueError):
        return None


@functools.lru_cache(maxsize=16)
def _header_shapes(files: tuple[tuple[str, int, int], ...]):
    """``model_shapes`` of these files (path, mtime, size: a rewritten file is read again)."""
    blocks: dict[int, list[tuple[int, int]]] = {}
    for path, _, _ in files:
        for key, entry in check_safetensors_file(path).items():
            found = _BLOCK_INDEX.search(key)
            shape = entry.get("shape") if isinstance(entry, dict) else None
            if found and key.endswith(".weight") and isinstance(shape, list) and len(shape) == 2:
                blocks.setdefault(int(found.group(1)), []).append((int(shape[0]), int(shape[1])))
    return tuple(tuple(blocks[i]) for i in sorted(blocks)) or None
