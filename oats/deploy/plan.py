"""Per layer, the fastest way to multiply on this machine: measured once per layer shape, cached per CPU.

Whether a sparse layer beats the dense product it replaces depends on the CPU: on a 2-core AMD
EPYC (Zen 4) SmolLM2's export at rho 0.5 decoded 1.3-1.5x faster than the dense model, on a
2-core Intel Xeon 0.77x (its gathers and its memory differ). So the loader measures, on the
machine it runs on, each distinct layer shape of the export in every form it may take, and
keeps per layer the fastest allowed by the user's goal:

``smallest``  S stays in CSR8 (5 bytes an entry, the export's size); only the fused kernel's
              loop is chosen, scalar or vector gathers (``kernels.LOOPS``), which cost the same
              bytes.
``fastest``   also torch's CSR (8 bytes an entry, MKL's kernel) and the folded dense product
              (W = S + U V as one ``nn.Linear``: dense speed and dense size for that layer). A
              layer the sparse kernels cannot beat is folded back, so the model is never slower
              than dense layer by layer; the plan says how many bytes that costs.

Measurement: ``tokens`` rows per call (1, the default: decoding, where sparse kernels can win;
an encoder's sentence or a ViT's image is tens to hundreds of tokens per call, GEMM-bound,
where dense usually wins, ``benchmarks/inference.py``), every layer of a shape called in turn
so the weights come from memory as in a model (not hot in cache), each form timed in turn in
each of ``ROUNDS`` rounds, median kept. About 2-20 ms per shape at one token. The times are cached in a JSON file
beside the compiled kernels (``kernels.kernel_dir()``), keyed by the CPU, the compiled kernel
(source, compiler, flags), torch's version and the thread count: a new kernel or another CPU
measures again. A cache file that cannot be read is ignored with one line and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from oats import resources
from oats.deploy import kernels
from oats.deploy.linear import SparseLowRankLinear
from oats.errors import ConfigError

__all__ = ["FORMS", "GOALS", "Plan", "ShapeChoice", "apply_plan", "check_tokens", "fold", "plan_cache_path", "shape_key"]

log = logging.getLogger(__name__)

GOALS = ("smallest", "fastest")
FORMS = ("csr8", "csr8-vector", "csr", "dense")
"""csr8: the fused kernel with the scalar loop; csr8-vector: with the gathers; csr: torch's CSR
(SparseLowRankLinear kernel="csr"); dense: folded into an nn.Linear."""
ROUNDS = 5
MAX_GROUP_BYTES = 64 * 2**20
"""At most this many dense bytes of one shape's layers are folded at once for the measurement
(more than any CPU's last-level cache, so the weights come from memory)."""
CACHE_VERSION = 1


@dataclass
class ShapeChoice:
    """One distinct layer shape: its layers, what each form took per layer (µs) and the choice."""

    key: str
    layers: list[str]
    times_us: dict[str, float]
    chosen: str
    extra_bytes: int = 0
    """Bytes the choice adds over CSR8 for all its layers (folded or csr)."""


@dataclass
class Plan:
    """What ``apply_plan`` chose for a model, and why."""

    goal: str
    cpu: str
    isa: str | None
    threads: int
    shapes: list[ShapeChoice] = field(default_factory=list)
    from_cache: bool = False
    seconds: float = 0.0
    tokens: int = 1
    """Rows per call the forms were measured at (1: decoding)."""

    @property
    def extra_bytes(self) -> int:
        return sum(s.extra_bytes for s in self.shapes)

    def counts(self) -> dict[str, int]:
        """Layers per chosen form."""
        out: dict[str, int] = {}
        for s in self.shapes:
            out[s.chosen] = out.get(s.chosen, 0) + len(s.layers)
        return out

    def summary(self) -> str:
        """One line: the goal, the machine, the layers per form and the memory it costs."""
        forms = ", ".join(f"{n} {FORM_WORDS[f]}" for f, n in sorted(self.counts().items(), key=lambda kv: -kv[1]))
        cost = f"; {self.extra_bytes / 2**20:.1f} MB more than CSR8" if self.extra_bytes > 0 else ""
        how = "measurements cached for this CPU" if self.from_cache else f"measured in {self.seconds:.1f} s"
        at = "one token per call" if self.tokens == 1 else f"{self.tokens} tokens per call"
        return (f"goal {self.goal} at {at} on {self.cpu} ({self.isa or 'no C kernels'}, {self.threads} threads): "
                f"{forms}{cost} ({how})")

    def rows(self) -> list[dict]:
        """Per shape: layers, µs per form, the choice and why (for tables)."""
        out = []
        for s in self.shapes:
            best = min(s.times_us.values()) if s.times_us else 0.0
            out.append({"shape": s.key, "layers": len(s.layers), **{f"{f} µs": round(t, 1) for f, t in s.times_us.items()},
                        "chosen": s.chosen, "vs dense": _vs_dense(s, best), "extra MB": round(s.extra_bytes / 2**20, 2)})
        return out


FORM_WORDS = {"csr8": "CSR8 (scalar loop)", "csr8-vector": "CSR8 (vector gathers)", "csr": "torch CSR",
              "dense": "folded to dense"}


def _vs_dense(s: ShapeChoice, best: float) -> str:
    dense = s.times_us.get("dense")
    if not dense or not best:
        return ""
    return f"{dense / s.times_us[s.chosen]:.2f}x dense speed"


def shape_key(m: SparseLowRankLinear) -> str:
    """What decides a layer's speed: its shape, rank, U parts, density (to 0.05) and bias."""
    density = m.nnz / max(1, m.out_features * m.in_features)
    return (f"{m.out_features}x{m.in_features} r{m.rank} p{len(m.part_rows)} d{round(density * 20) / 20:.2f} "
            f"b{int(m.bias is not None)}")


def fold(m: SparseLowRankLinear) -> nn.Linear:
    """The layer as one dense ``nn.Linear``: W = S + U V (each U part on its own rows), its bias."""
    w = m.sparse_matrix().to_dense().clone()
    for u, (a, b), (ra, rb) in zip(m.u_parts, m.part_rows, m._part_ranks):
        if rb > ra:
            w[a:b] += u @ m.v[ra:rb]
    out = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    out.weight = nn.Parameter(w.contiguous(), requires_grad=False)
    if m.bias is not None:
        out.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=False)
    return out.eval()


def _as_csr(m: SparseLowRankLinear) -> SparseLowRankLinear:
    crow, col = m.csr_indices()
    return SparseLowRankLinear(m.out_features, m.in_features, m.values, m.u_parts, m.v,
                               None if m.bias is None else m.bias.detach(), part_rows=m.part_rows,
                               crow_indices=crow, col_indices=col, kernel="csr").eval()


def _candidates(goal: str, m: SparseLowRankLinear, tokens: int = 1) -> list[str]:
    """The forms ``goal`` allows for ``m`` here (the CSR8 loops apart only where the fused
    one-token kernel runs: more tokens take the batch kernel, which has one loop)."""
    forms = []
    if m.kernel == "csr8" and m._fused:
        forms.append("csr8")
        if kernels.isa() not in (None, "scalar") and tokens == 1:
            forms.append("csr8-vector")
    elif goal == "smallest":
        return [m.kernel]  # nothing to choose: the layout the module was built with
    else:
        forms.append(m.kernel)
    if goal == "fastest":
        forms += [f for f in ("csr", "dense") if f not in forms]
    return forms


def _build(m: SparseLowRankLinear, form: str) -> nn.Module:
    if form == "dense":
        return fold(m)
    if form == "csr" and m.kernel != "csr":
        return _as_csr(m)
    return m


def _time_forms(group: list[SparseLowRankLinear], forms: list[str], tokens: int = 1) -> dict[str, float]:
    """µs per layer of each form for ``tokens`` rows, every layer of ``group`` called in turn,
    forms interleaved."""
    per_layer = group[0].out_features * group[0].in_features * 4
    group = group[:max(1, MAX_GROUP_BYTES // per_layer)]
    x = torch.randn(tokens, group[0].in_features, generator=torch.Generator().manual_seed(0))
    built = {f: [_build(m, f) for m in group] for f in forms}
    times: dict[str, list[float]] = {f: [] for f in forms}
    with torch.no_grad():
        for r in range(ROUNDS + 1):  # the first round warms up
            for f in forms:
                mods = built[f]
                for m in mods:
                    if isinstance(m, SparseLowRankLinear) and f.startswith("csr8"):
                        m.loop = "vector" if f == "csr8-vector" else "scalar"
                t = time.perf_counter()
                for m in mods:
                    m(x)
                if r:
                    times[f].append((time.perf_counter() - t) / len(mods))
    for m in group:
        m.loop = "scalar"
    return {f: statistics.median(ts) * 1e6 for f, ts in times.items()}


# ----------------------------------------------------------------------------- the cache


def _cache_key() -> str:
    choice = kernels.backend_note()
    lib = ""
    if kernels.backend() == "c":
        lib = kernels.build_c_library().name  # csr8-<hash of source, compiler, flags, CPU>.so
    return hashlib.sha256("\0".join([lib, choice, torch.__version__, str(torch.get_num_threads()),
                                     resources.cpu_name(), " ".join(resources.vector_extensions())]).encode()
                          ).hexdigest()[:16]


def plan_cache_path() -> Path:
    """The file this machine's measurements are cached in (one per CPU, kernel, torch and thread count)."""
    return kernels.kernel_dir() / f"plan-{_cache_key()}.json"


def _read_cache(path: Path) -> dict[str, dict[str, float]]:
    """{shape key: {form: µs}}; {} when there is no file, and one line when it cannot be used."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_bytes()[:4 * 2**20])
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            raise ValueError("not a measurement file of this version")
        shapes = data["shapes"]
        for key, times in shapes.items():
            if not isinstance(key, str) or not isinstance(times, dict) or not all(
                    f in FORMS and isinstance(t, (int, float)) and t > 0 for f, t in times.items()):
                raise ValueError(f"entry {key!r} is damaged")
        return shapes
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning(f"oats: ignored the kernel measurements in {path} ({type(e).__name__}: {e}); measuring again")
        return {}


def _write_cache(path: Path, shapes: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "cpu": resources.cpu_name(), "shapes": shapes},
                                  indent=1))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: the plan still holds for this process
        log.warning(f"oats: could not cache the kernel measurements in {path.parent} ({e})")


# ----------------------------------------------------------------------------- choosing


def _choose(times: dict[str, float], forms: list[str]) -> str:
    """The fastest allowed form; CSR8 (the smallest) unless another is at least 3% faster, so
    that noise does not fold a layer for nothing."""
    base = "csr8" if "csr8" in times else forms[0]
    best = min(forms, key=lambda f: times[f])
    return best if times[best] < 0.97 * times[base] else base


def _extra_bytes(m: SparseLowRankLinear, form: str) -> int:
    """Bytes ``form`` holds for ``m`` beyond its CSR8 layout (values, indices, factors, bias)."""
    if form == "dense":
        bias = 0 if m.bias is None else m.bias.numel() * 4
        return m.out_features * m.in_features * 4 + bias - m.nbytes()
    if form == "csr" and m.kernel != "csr":  # int32 columns and row pointers instead of 8-bit offsets
        return 3 * m.nnz + 4 * (m.out_features + 1) - m.segment_ptr.numel() * 4
    return 0


MAX_TOKENS = 4096


def check_tokens(tokens) -> int:
    """``tokens`` as an int in [1, MAX_TOKENS]; ConfigError (one line) otherwise."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_TOKENS:
        raise ConfigError(f"tokens must be a whole number of tokens per call from 1 to {MAX_TOKENS}, got {tokens!r}")
    return tokens


def apply_plan(model: nn.Module, goal: str = "smallest", tokens: int = 1) -> Plan:
    """Choose each ``SparseLowRankLinear`` of ``model``'s form for ``goal`` (``GOALS``) at
    ``tokens`` rows per call, from this machine's measurements (cached), and put it in place.
    Returns the plan (also set as ``model.oats_plan``)."""
    if goal not in GOALS:
        raise ConfigError(f"unknown goal {goal!r}: use one of {', '.join(GOALS)}")
    check_tokens(tokens)
    t0 = time.perf_counter()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SparseLowRankLinear)}
    groups: dict[str, list[str]] = {}
    for name, m in layers.items():
        groups.setdefault(shape_key(m), []).append(name)
    path = plan_cache_path() if kernels.available() else None
    cache = _read_cache(path) if path else {}
    plan = Plan(goal, resources.cpu_name(), kernels.isa(), torch.get_num_threads(), from_cache=True, tokens=tokens)
    measured = False
    for key, names in groups.items():
        forms = _candidates(goal, layers[names[0]], tokens)
        entry = f"{key} t{tokens}"
        times = cache.get(entry, {})
        if len(forms) > 1 and not all(f in times for f in forms):
            # only the goal's forms: "smallest" never folds a layer, not even to measure it
            times = {**times, **_time_forms([layers[n] for n in names], forms, tokens)}
            cache[entry], measured = times, True
        chosen = _choose(times, forms) if len(forms) > 1 else forms[0]
        extra = sum(_extra_bytes(layers[n], chosen) for n in names)
        plan.shapes.append(ShapeChoice(key, names, {f: times[f] for f in FORMS if f in times}, chosen, extra))
        for n in names:
            _put(model, n, layers[n], chosen)
    if measured and path:
        _write_cache(path, cache)
    plan.from_cache = not measured
    plan.seconds = time.perf_counter() - t0
    model.oats_plan = plan
    return plan


def _put(model: nn.Module, name: str, m: SparseLowRankLinear, form: str) -> None:
    if form in ("csr8", "csr8-vector"):
        m.loop = "vector" if form == "csr8-vector" else "scalar"
        return
    if form == m.kernel:
        return
    new = _build(m, form)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
