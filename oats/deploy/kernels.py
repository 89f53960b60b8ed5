"""CSR8: the sparse term's compact layout, and the compiled kernels that multiply with it.

CSR8 is compressed sparse rows whose columns are cut into 256-wide segments: one int32
pointer per (row, segment) pair and one *8-bit* column offset per non-zero (its column minus
the segment's first column), the values in row order as in CSR. An entry costs 4 + 1 bytes
instead of CSR's 4 + 4 (torch's CSR kernels take 32- or 64-bit indices only); the pointers
add 4 bytes per row and segment (under 1% at the embedded models' shapes). At OATS's rho 0.5,
kappa 0.25 that puts the block linears at 0.60x the dense bytes, against 0.88x for torch's
CSR (measured by ``benchmarks/inference.py``).

No maintained CPU library multiplies such a layout, so oats carries two kernels, ``matvec``
for one token (four sums per row keep independent gathers in flight) and ``matmat`` for a
batch (tiles of 16 batch columns summed in registers), rows shared among torch's threads.
Two backends compile them, chosen once per process (``backend()``):

``c``      ``csr8.c`` beside this file, compiled on first use by the machine's C compiler
           (``$CC``, else cc / gcc / clang; ``-O3 -march=native -fopenmp``) into
           ``~/.cache/oats/kernels`` (``OATS_KERNEL_DIR``), once per machine (~0.3 s), then
           loaded with ctypes. It uses the OpenMP runtime torch already loaded and adds about
           1 MB to a process.
``numba``  the same loops compiled by numba, where no C compiler works (a slim container).
           Importing numba and loading its compiled code adds about 120 MB to a process, and
           its kernels are slower (``benchmarks/inference.py`` times both).

``OATS_CSR8_BACKEND=c|numba`` forces one. Neither is imported or built by ``import oats``.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from oats.deploy import numba_kernels  # numba itself is imported on its first call only
from oats.errors import ConfigError

__all__ = ["BACKENDS", "SEGMENT", "KernelBuildError", "available", "backend", "backend_note", "build_c_library",
           "LOOPS", "fused_available", "isa", "slr_matvec_checked",
           "check_csr", "check_csr8", "csr8_bytes", "csr8_matmul", "csr8_to_csr", "csr_to_csr8", "segments"]

SEGMENT = 256
BACKENDS = ("c", "numba")
BACKEND_ENV = "OATS_CSR8_BACKEND"
KERNEL_DIR_ENV = "OATS_KERNEL_DIR"
SOURCE = Path(__file__).with_name("csr8.c")
C_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
ISA_ENV = "OATS_CSR8_ISA"
ISA_FLAGS = {"native": (), "avx2": ("-mno-avx512f",), "scalar": ("-mno-avx",)}
"""What the C kernels may use, on top of ``-march=native``: everything the CPU has (the
default), AVX2 at most (``-mno-avx512f``: how the kernels run on a CPU without AVX-512,
measured on one that has it), or no vector extension (the portable loop). Set by
``OATS_CSR8_ISA`` before the first call; each choice is its own library in the cache."""


class KernelBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded here (one line: why)."""


def segments(d_in: int) -> int:
    return max(1, -(-d_in // SEGMENT))


def csr8_bytes(d_out: int, d_in: int, nnz: int, value_bytes: int = 4) -> int:
    """Bytes of S in CSR8: values, 8-bit offsets and the int32 (row, segment) pointers."""
    return nnz * (value_bytes + 1) + 4 * (d_out * segments(d_in) + 1)


def csr_to_csr8(crow: torch.Tensor, col: torch.Tensor, d_out: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(segment_ptr int32 of d_out * segments + 1, col_offsets uint8) of a CSR matrix whose
    columns are sorted within each row; the values keep their order."""
    nseg = segments(d_in)
    crow = crow.to(torch.int64)
    col = col.to(torch.int64)
    rows = torch.repeat_interleave(torch.arange(d_out), crow[1:] - crow[:-1])
    counts = torch.bincount(rows * nseg + col // SEGMENT, minlength=d_out * nseg)
    ptr = torch.zeros(d_out * nseg + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr.to(torch.int32), (col % SEGMENT).to(torch.uint8)


def csr8_to_csr(ptr: torch.Tensor, offsets: torch.Tensor, d_out: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(crow_indices int32, col_indices int32) of a CSR8 matrix."""
    nseg = segments(d_in)
    ptr = ptr.to(torch.int64)
    seg = torch.repeat_interleave(torch.arange(d_out * nseg) % nseg, ptr[1:] - ptr[:-1])
    return ptr[::nseg].to(torch.int32), (seg * SEGMENT + offsets.to(torch.int64)).to(torch.int32)


# ----------------------------------------------------------------------------- checking indices
#
# The compiled loops and torch's CSR kernels (built with check_invariants=False) read memory at
# whatever the indices say, so indices from a file are checked completely, once, before either
# sees them: on their own values (an int32 offset of 10^9 or an int8 -1 must be refused, not
# wrapped by the cast to the kernel's narrower type).

INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
"""Integer types an index array may arrive in (the file's); the values must fit the layout."""

MAX_NNZ = torch.iinfo(torch.int32).max
"""The layouts hold int32 pointers."""


def _integer(t: torch.Tensor, name: str, length: int) -> torch.Tensor:
    """``t`` as int64 when it is a 1-D integer array of ``length`` entries; ValueError otherwise."""
    if not isinstance(t, torch.Tensor) or t.dtype not in INDEX_DTYPES:
        kind = str(t.dtype).replace("torch.", "") if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} is {kind}, not an integer array")
    if t.ndim != 1 or t.numel() != length:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, not ({length},)")
    return t.to(torch.int64)


def _pointers(ptr: torch.Tensor, name: str, length: int, nnz: int) -> torch.Tensor:
    """Checked pointers as int64: from 0 to nnz, never decreasing."""
    if nnz > MAX_NNZ:
        raise ValueError(f"the sparse term holds {nnz} values, more than int32 pointers address")
    p = _integer(ptr, name, length)
    if int(p[0]) != 0 or int(p[-1]) != nnz:
        raise ValueError(f"{name} is out of range (from {int(p[0])} to {int(p[-1])}, not from 0 to the {nnz} values)")
    drop = (p[1:] < p[:-1]).nonzero()
    if drop.numel():
        raise ValueError(f"{name} is out of range (it decreases at entry {int(drop[0]) + 1})")
    return p


def _increasing(cols: torch.Tensor, starts: torch.Tensor, name: str, what: str) -> None:
    """Columns strictly increasing within each run of entries that ``starts`` (int64 pointers) bound."""
    if cols.numel() < 2:
        return
    same = torch.ones(cols.numel() - 1, dtype=torch.bool)
    inner = starts[(starts > 0) & (starts < cols.numel())]
    same[inner - 1] = False  # entry i-1 and entry i belong to different runs
    bad = ((cols[1:] <= cols[:-1]) & same).nonzero()
    if bad.numel():
        raise ValueError(f"{name} is out of order (entry {int(bad[0]) + 1} does not follow entry {int(bad[0])} "
                         f"within its {what})")


def check_csr(crow: torch.Tensor, col: torch.Tensor, d_out: int, d_in: int, nnz: int) -> None:
    """CSR indices that address only S's own entries: ``crow`` integer, d_out + 1 pointers from 0
    to ``nnz``, never decreasing; ``col`` integer, ``nnz`` columns in [0, d_in), strictly
    increasing within each row. ValueError (a short reason) otherwise."""
    p = _pointers(crow, "crow_indices", d_out + 1, nnz)
    c = _integer(col, "col_indices", nnz)
    if nnz:
        lo, hi = int(c.min()), int(c.max())
        if lo < 0 or hi >= d_in:
            bad = lo if lo < 0 else hi
            raise ValueError(f"col_indices is out of range (column {bad} in a layer of {d_in} columns)")
    _increasing(c, p, "col_indices", "row")


def check_csr8(ptr: torch.Tensor, offsets: torch.Tensor, d_out: int, d_in: int, nnz: int) -> None:
    """CSR8 indices that address only S's own entries: ``ptr`` integer, one pointer per (row,
    segment) and one more, from 0 to ``nnz``, never decreasing; ``offsets`` integer, ``nnz``
    offsets each below the width of its own segment (256, or the last, narrower one), strictly
    increasing within a segment. The offsets are judged on their own values, whatever their
    dtype, so a wider integer type is accepted only when every value fits. ValueError otherwise."""
    nseg = segments(d_in)
    p = _pointers(ptr, "segment_ptr", d_out * nseg + 1, nnz)
    off = _integer(offsets, "col_offsets", nnz)
    if not nnz:
        return
    seg = torch.repeat_interleave(torch.arange(d_out * nseg) % nseg, p[1:] - p[:-1])
    width = torch.where(seg == nseg - 1, d_in - (nseg - 1) * SEGMENT, SEGMENT)
    bad = ((off < 0) | (off >= width)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"col_offsets is out of range (offset {int(off[i])} at entry {i}, in a segment of "
                         f"{int(width[i])} columns)")
    _increasing(off, p, "col_offsets", "segment")



# ----------------------------------------------------------------------------- the C backend


def kernel_dir() -> Path:
    env = os.environ.get(KERNEL_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "oats" / "kernels"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    return next((p for p in map(shutil.which, ("cc", "gcc", "clang")) if p), None)


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the machine's architecture, CPU model and flags
    (a cache folder shared by several machines keeps one library per kind of CPU)."""
    sig = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            sig += "".join(sorted({ln for ln in f if ln.startswith(("model name", "flags", "Features"))}))
    except OSError:
        sig += platform.processor()
    return sig


def isa_choice() -> str:
    """``OATS_CSR8_ISA`` (native, avx2 or scalar; native when unset); ConfigError otherwise."""
    isa = os.environ.get(ISA_ENV, "").strip().lower() or "native"
    if isa not in ISA_FLAGS:
        raise ConfigError(f"{ISA_ENV}={isa!r} is not a kernel build: use one of {', '.join(ISA_FLAGS)}, or unset it")
    return isa


def c_flags() -> tuple[str, ...]:
    """The compiler flags of the C kernels in this process (``C_FLAGS`` and the ISA's)."""
    return C_FLAGS + ISA_FLAGS[isa_choice()]


def build_c_library(folder: str | Path | None = None) -> Path:
    """The compiled C kernels for this machine: built into ``folder`` (default ``kernel_dir()``)
    unless a library for the same source, compiler, flags and CPU is there already. Raises
    KernelBuildError (one line) when there is no compiler or it fails."""
    cc = _compiler()
    if cc is None:
        raise KernelBuildError("no C compiler found (set CC, or install gcc or clang)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"the C compiler {cc!r} does not run: {e}") from None
    flags = c_flags()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, " ".join(flags), _cpu_signature()])
                         .encode()).hexdigest()[:16]
    folder = kernel_dir() if folder is None else Path(folder).expanduser()
    path = folder / f"csr8-{key}.so"
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".csr8-{key}-{os.getpid()}-{threading.get_ident()}.so"
        proc = subprocess.run([cc, *flags, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"could not compile the CSR8 kernels into {folder}: {e}") from None
    if proc.returncode:
        tmp.unlink(missing_ok=True)
        why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise KernelBuildError(f"{Path(cc).name} could not compile the CSR8 kernels: {why}")
    os.replace(tmp, path)  # atomic: a concurrent process sees the whole library or none
    return path


def _load_c(path: Path):
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise KernelBuildError(f"could not load the compiled CSR8 kernels {path}: {e}") from None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.csr8_matvec.argtypes = [p, p, p, p, p, i64, i64, ctypes.c_int]
    lib.csr8_matvec.restype = None
    lib.csr8_matmat.argtypes = [p, p, p, p, p, i64, i64, i64, ctypes.c_int]
    lib.csr8_matmat.restype = None
    lib.slr_matvec.argtypes = [p, p, p, p, p, p, p, p, p, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    lib.slr_matvec.restype = None
    lib.csr8_isa.argtypes = []
    lib.csr8_isa.restype = ctypes.c_char_p
    return lib


def _matmul_c(lib, ptr, off, val, x: torch.Tensor, d_out: int, nseg: int) -> torch.Tensor:
    threads = torch.get_num_threads()
    x = x.detach().contiguous()
    if x.shape[0] == 1:
        out = torch.empty(1, d_out)
        lib.csr8_matvec(ptr.data_ptr(), off.data_ptr(), val.data_ptr(), x.data_ptr(), out.data_ptr(), d_out, nseg,
                        threads)
        return out
    xt = x.t().contiguous()
    out = torch.empty(d_out, x.shape[0])
    lib.csr8_matmat(ptr.data_ptr(), off.data_ptr(), val.data_ptr(), xt.data_ptr(), out.data_ptr(), d_out, nseg,
                    x.shape[0], threads)
    return out.t()


# ----------------------------------------------------------------------------- choosing


_LOCK = threading.Lock()
_CHOICE: dict = {}


def _numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def _resolve() -> dict:
    """{"name": "c" | "numba" | None, "note": one line, "lib": the C library}: decided once."""
    with _LOCK:
        if _CHOICE:
            return _CHOICE
        forced = os.environ.get(BACKEND_ENV, "").strip().lower()
        if forced and forced not in BACKENDS:
            raise ConfigError(f"{BACKEND_ENV}={forced!r} is not a CSR8 backend: use one of {', '.join(BACKENDS)}, "
                              "or unset it")
        why_not_c = f"{BACKEND_ENV}={forced}"
        if forced in ("", "c"):
            try:
                path = build_c_library()
                lib = _load_c(path)
                flags = " ".join(c_flags()[:3] + c_flags()[len(C_FLAGS):])
                _CHOICE.update(name="c", lib=lib, isa=lib.csr8_isa().decode(),
                               note=f"C ({Path(_compiler()).name} {flags}; {lib.csr8_isa().decode()} loops)")
                return _CHOICE
            except KernelBuildError as e:
                why_not_c = str(e)
        if forced in ("", "numba") and _numba_installed():
            _CHOICE.update(name="numba", lib=None, note=f"numba (not C: {why_not_c})")
        else:
            _CHOICE.update(name=None, lib=None, note=f"none (not C: {why_not_c}; numba is not installed)")
        return _CHOICE


def backend() -> str | None:
    """The backend the CSR8 kernels run on in this process: "c", "numba", or None (neither:
    SparseLowRankLinear then uses torch's CSR kernel). The first call may compile (~0.3 s)."""
    return _resolve()["name"]


def backend_note() -> str:
    """One line: the backend, and why not C when it is not."""
    return _resolve()["note"]


def fused_available() -> bool:
    """Whether the fused one-token layer kernel (``slr_matvec``: S x + U (V x) + b in one call)
    runs here: the C backend only."""
    return backend() == "c"


def isa() -> str | None:
    """The vector extension the C kernels were built with: "avx512", "avx2", "scalar", or None
    when the C backend is not the one in use."""
    choice = _resolve()
    return choice.get("isa") if choice["name"] == "c" else None


LOOPS = ("scalar", "vector")
"""The fused kernel's two loops over a row's entries (see csr8.c): "vector" gathers 16 (AVX-512)
or 8 (AVX2) values of x at a time, and is the scalar loop again on a build with neither."""


def slr_matvec_checked(ptr, offsets, values, v, u, bias, x: torch.Tensor, d_out: int, d_in: int,
                       loop: str = "scalar") -> torch.Tensor:
    """(1, d_out) = x S^T + (x V^T) U^T + bias for one token x (1, d_in) float32, contiguous;
    v (r, d_in) and u (d_out, r) float32 contiguous (one U part), bias float32 or None; ``loop``
    one of ``LOOPS``. The C backend only (``fused_available``); the caller checked every buffer
    once (SparseLowRankLinear)."""
    lib = _resolve()["lib"]
    r = int(v.shape[0])
    out = torch.empty(1, d_out)
    tmp = torch.empty(max(r, 1))
    lib.slr_matvec(ptr.data_ptr(), offsets.data_ptr(), values.data_ptr(), x.data_ptr(), v.data_ptr(), u.data_ptr(),
                   None if bias is None else bias.data_ptr(), tmp.data_ptr(), out.data_ptr(), d_out, d_in,
                   segments(d_in), r, 1 if loop == "vector" else 0, torch.get_num_threads())
    return out


def available() -> bool:
    """Whether the CSR8 kernels can run here."""
    return backend() is not None


def csr8_matmul(ptr: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor, d_in: int,
                x: torch.Tensor, *, using: str | None = None) -> torch.Tensor:
    """x S^T for x (n, d_in) float32 on the CPU, S (d_out, d_in) in CSR8; (n, d_out). No
    autograd. ``using`` picks a backend ("c" or "numba"; default: ``backend()``)."""
    if not (x.dtype == values.dtype == torch.float32 and ptr.dtype == torch.int32 and offsets.dtype == torch.uint8
            and x.device.type == values.device.type == "cpu" and x.dim() == 2 and x.shape[1] == d_in
            and ptr.is_contiguous() and offsets.is_contiguous() and values.is_contiguous()):
        raise ValueError("csr8_matmul takes float32 CPU tensors: x (n, d_in), contiguous int32 pointers, uint8 "
                         "offsets and float32 values")  # the compiled loops would read them as such
    return matmul_checked(ptr, offsets, values, d_in, x, using)


def matmul_checked(ptr, offsets, values, d_in: int, x: torch.Tensor, using: str | None = None) -> torch.Tensor:
    """``csr8_matmul`` without its checks, for callers that made them once (SparseLowRankLinear:
    its buffers at construction, x's dtype and device at each call): a decoding step makes ~200
    calls, and the checks cost ~1-2 µs each."""
    nseg = segments(d_in)
    d_out = (ptr.shape[0] - 1) // nseg
    choice = _resolve()
    name = using or choice["name"]
    if name == "c":
        lib = choice["lib"] if choice["name"] == "c" else _load_c(build_c_library())
        return _matmul_c(lib, ptr, offsets, values, x, d_out, nseg)
    if name == "numba":
        return numba_kernels.csr8_matmul(ptr, offsets, values, x, d_out, nseg)
    raise RuntimeError(f"no CSR8 kernel here: {choice['note']}")
