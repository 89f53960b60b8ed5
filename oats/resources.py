"""What the machine gives a computation: memory and CPU threads.

Checks raise :class:`~oats.errors.ResourceError` (or ``ConfigError`` for a bad setting) with one
line, "what is wrong: what to do".
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from concurrent.futures import ThreadPoolExecutor

import torch

from oats.errors import ConfigError, ResourceError

MEMORY_MARGIN = 2.0
"""What an estimate of memory is multiplied by before it is compared with free memory (reading
weights or a file: the tensors and the allocator's slack around them)."""

COMPRESSION_MARGIN = 2.5
"""The same for a compression's pre-flight estimate (``oats.compress.preflight``). That estimate
counts the tensors alive at the peak; the resident memory also holds what glibc keeps of the
freed temporaries, which varies from run to run with the threads' timing: over repeated fresh
runs compressing DINOv2-small added 1.4-1.85x the raw estimate (MiniLM 1.2-1.3x, SmolLM2-135M
1.35x), and 1.0x with a fixed mmap threshold (``benchmarks/memory.py`` prints both side by side)."""

FROM_DISK_MARGIN = 1.25
"""The same for a compression from disk (``--from-disk``): that mode fixes glibc's mmap threshold
(``return_freed_memory``), with which the resident memory is the live tensors (1.0x the raw
estimate in the measurements above, 409-415 MB over five runs), so the margin is only for the
allocator's slack. With x2.5 a 24 GB machine refused Llama-3.1-8B-shaped compressions it runs
in a third of that."""

MEMORY_ENV = "OATS_MEMORY_LIMIT_GB"
"""Caps the memory a compression may plan to use (a share of a workstation); default: what is free."""

def available_memory() -> float:
    """Bytes this process may still use: the system's free memory, capped by $OATS_MEMORY_LIMIT_GB."""
    free = math.inf
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    free = float(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    limit = os.environ.get(MEMORY_ENV, "").strip()
    if limit:
        try:
            cap = float(limit) * 1e9
        except ValueError:
            raise ConfigError(f"{MEMORY_ENV}={limit!r} is not a number of GB: set it to e.g. 4, or unset it") from None
        if not cap > 0:
            raise ConfigError(f"{MEMORY_ENV}={limit!r} must be a positive number of GB: set it to e.g. 4, or unset it")
        free = min(free, cap)
    return free


def check_memory(parts: dict, available: float | None = None, what: str = "this compression",
                 margin: float = MEMORY_MARGIN) -> float:
    """Raise ResourceError when the estimate (times ``margin``) exceeds the memory available;
    return that planned amount in bytes."""
    parts = {k: margin * v for k, v in parts.items()}
    need = float(sum(parts.values()))
    free = available_memory() if available is None else available
    if need > free:
        biggest = max(parts, key=parts.get)
        hint = ("use fewer calibration samples or shorter sequences (--calib-samples, --seq-len)"
                if biggest in ("calibration activations", "block activations") else "use a smaller model or a machine with more memory")
        if os.environ.get(MEMORY_ENV, "").strip():
            hint += f" (or raise {MEMORY_ENV})"
        raise ResourceError(f"{what} needs about {_gb(need)} of memory ({biggest} {_gb(parts[biggest])}) but "
                            f"{_gb(free)} is available: {hint}")
    return need


def _cpuinfo_field(name: str) -> str:
    """The first value of ``name`` in /proc/cpuinfo ("" off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo; the platform's processor name elsewhere): every
    speed figure the project prints names it."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile", "neon",
                     "asimd", "sve")
"""The CPU flags that decide which kernels the libraries run (and so their rounding)."""


def vector_extensions() -> list[str]:
    """Those of ``VECTOR_EXTENSIONS`` this CPU has (from /proc/cpuinfo's flags or Features)."""
    flags = set((_cpuinfo_field("flags") or _cpuinfo_field("features")).split())
    return [f for f in VECTOR_EXTENSIONS if f in flags]


def machine_line() -> str:
    """One line naming where a figure was measured: the CPU, its cores and vector extensions,
    torch's version and thread count. Every benchmark prints it first: a speed figure without
    its machine is not a result (the same export ran 1.5x faster than dense on one 2-core CPU
    and 0.77x on another)."""
    ext = " ".join(vector_extensions()) or "no listed vector extensions"
    return (f"CPU: {cpu_name()} ({os.cpu_count()} logical cores; {ext}); torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def _gb(x: float) -> str:
    return f"{x / 1e9:.3g} GB"


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch with ``n`` intra-op threads inside the block (the setting is per calling thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread():
    """Run torch with one intra-op thread inside the block (``torch_threads(1)``).

    Also a decorator: ``@one_thread()``. Many small operations pay a synchronisation per
    operation with several threads; on a busy 2-core machine that made SparseGPT's column sweep
    of a 576x1536 layer take 4-29 s instead of 0.18 s, and the spectra of all 36 minilm-l6
    matrices 5-47 s instead of 1.2-1.5 s (measured side by side). One thread loses little when
    the machine is idle.
    """
    return torch_threads(1)


def matrix_cost(weight: torch.Tensor) -> int:
    """d_out * d_in^2: how the work of a decomposition on a (d_out, d_in) matrix with a
    (d_in, d_in) Gram grows (its sweeps, products and factorisations), for ordering."""
    return int(weight.shape[0]) * int(weight.shape[1]) ** 2


ROOM_MARGIN = 1.25
"""How much of the memory left ``map_on_cores`` plans to fill with working copies (a measured
peak per item: the allocator's slack around it)."""


def parallel_room(item_bytes: float, margin: float = ROOM_MARGIN) -> int:
    """How many items of ``item_bytes`` working memory fit side by side in the memory left now
    (at least one: a single item is the compression's own, checked by its pre-flight)."""
    if item_bytes <= 0:
        return 1 << 30
    return max(1, int(available_memory() // (margin * item_bytes)))


def map_on_cores(fn, items, cost=None, device=None, item_bytes=None) -> list:
    """``[fn(x) for x in items]``, the items spread over as many threads as torch has
    (``torch.get_num_threads()``), each running torch on one thread (``one_thread``).

    For the matrices of a block, decomposed independently: the results are the same as one at
    a time (each matrix is computed exactly as alone), in the items' order. ``cost(x)`` orders
    the work largest first so the threads finish together. On a GPU, or with one thread, one
    at a time. ``item_bytes(x)``: the working memory of one item; no more items run at once
    than fit in the memory left (``parallel_room``), which changes the time, never the results.
    """
    items = list(items)
    workers = min(len(items), torch.get_num_threads())
    if item_bytes is not None and items:  # no more at once than the memory left holds (a mid-size model's
        workers = min(workers, parallel_room(max(item_bytes(x) for x in items)))  # matrices: 2.5 GB each)
    on_gpu = device is not None and torch.device(device).type != "cpu"
    if workers <= 1 or on_gpu:
        return [fn(x) for x in items]

    def run(i):
        with one_thread():
            return fn(items[i])
    order = sorted(range(len(items)), key=(lambda i: -cost(items[i])) if cost else None)
    out = [None] * len(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="oats-matrix") as pool:
        for i, result in zip(order, pool.map(run, order)):
            out[i] = result
    return out


M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number for the size above which an allocation is its own mapping."""


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Make glibc hand every freed allocation of ``threshold`` bytes or more back to the system.

    glibc raises that threshold each time a large block is freed (up to 32 MB), after which
    blocks of a few MB are carved from its heap and stay in the process when freed. For the
    larger-than-memory mode, which frees one block's tensors before reading the next, that
    made the resident memory grow by about 200 MB a block on a 300M-parameter model; with a
    fixed threshold it returns to the same level after every block (benchmarks/from_disk.py).
    Returns whether it could be set (False off glibc).
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
