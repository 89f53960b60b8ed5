"""The CSR8 kernels' backends (``oats/deploy/kernels.py``): the C library is built once per
machine and reused, a compiler that fails is one line and numba takes over, ``import oats``
and a C-backed forward never import numba, and a bad backend name is one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from oats.deploy import kernels
from oats.deploy.linear import pack_csr

ROOT = Path(__file__).resolve().parents[1]


def _c_or_fail():
    from conftest import skip_or_fail
    if kernels._compiler() is None:
        skip_or_fail("no C compiler here: the C backend cannot be built")


def test_the_c_library_is_built_once_and_computes_the_product(tmp_path):
    _c_or_fail()
    path = kernels.build_c_library(tmp_path / "k")
    assert path.is_file() and path.parent == tmp_path / "k"
    stamp = path.stat().st_mtime_ns
    again = kernels.build_c_library(tmp_path / "k")  # same source, compiler, flags, CPU: reused
    assert again == path and again.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "k").iterdir()] == [path.name]  # no temporary file left
    lib = kernels._load_c(path)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(40, 700, generator=g) * (torch.rand(40, 700, generator=g) < 0.3)
    p = pack_csr(s)
    ptr, off = kernels.csr_to_csr8(p["crow_indices"], p["col_indices"], 40, 700)
    for n in (1, 20):
        x = torch.randn(n, 700, generator=g)
        got = kernels._matmul_c(lib, ptr, off, p["values"], x, 40, kernels.segments(700))
        assert float((got - x @ s.T).abs().max()) < 1e-4 * float((x @ s.T).abs().max())


def test_a_compiler_that_fails_or_is_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")  # runs, and fails every compilation
    with pytest.raises(kernels.KernelBuildError) as e:
        kernels.build_c_library(tmp_path)
    assert "could not compile" in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(kernels.KernelBuildError) as e:
        kernels.build_c_library(tmp_path)
    assert "does not run" in str(e.value) and "\n" not in str(e.value)


def _child(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter (the backend is chosen once per process); its last
    stdout line is JSON."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


FORWARD = """
    import json, sys, torch
    import oats
    numba_after_import = "numba" in sys.modules
    from oats.deploy import kernels
    from oats.deploy.linear import SparseLowRankLinear, pack_csr
    g = torch.Generator().manual_seed(0)
    s = torch.randn(30, 300, generator=g) * (torch.rand(30, 300, generator=g) < 0.4)
    m = SparseLowRankLinear(30, 300, **pack_csr(s), u=torch.zeros(30, 0), v=torch.zeros(0, 300))
    x = torch.randn(5, 300, generator=g)
    with torch.no_grad():
        err = max(float((m(x[i:i + n]) - x[i:i + n] @ s.T).abs().max()) for i, n in ((0, 1), (0, 5)))
    layer = sys.modules["numba"].threading_layer() if "numba" in sys.modules else None
    print(json.dumps({"backend": kernels.backend(), "note": kernels.backend_note(), "kernel": m.kernel,
                      "err": err, "numba_after_import": numba_after_import, "numba": "numba" in sys.modules,
                      "layer": layer}))
"""


def test_import_oats_and_a_c_backed_forward_never_import_numba(tmp_path):
    _c_or_fail()
    r = _child(FORWARD, OATS_KERNEL_DIR=str(tmp_path))  # an empty folder: this process compiles
    assert r["backend"] == "c" and r["kernel"] == "csr8" and r["err"] < 1e-4
    assert not r["numba_after_import"] and not r["numba"]
    assert len(list(tmp_path.glob("csr8-*.so"))) == 1


def test_without_a_working_compiler_numba_takes_over_and_says_why(tmp_path):
    if not kernels._numba_installed():
        from conftest import skip_or_fail
        skip_or_fail("numba is not installed (a dependency of oats)")
    r = _child(FORWARD, OATS_KERNEL_DIR=str(tmp_path), CC="false")
    assert r["backend"] == "numba" and r["kernel"] == "csr8" and r["err"] < 1e-4 and r["numba"]
    assert r["note"].startswith("numba (not C:") and "could not compile" in r["note"]
    assert r["layer"] == "omp"  # torch's OpenMP runtime, not a second pool
    forced = _child(FORWARD, OATS_CSR8_BACKEND="numba")
    assert forced["backend"] == "numba" and forced["note"] == "numba (not C: OATS_CSR8_BACKEND=numba)"


def test_a_bad_backend_name_is_one_clear_error(tmp_path):
    code = """
        import json, oats
        from oats.errors import ConfigError
        try:
            oats.load_compressed(%r)
            print(json.dumps({"error": None}))
        except ConfigError as e:
            print(json.dumps({"error": str(e)}))
    """ % str(tmp_path)
    r = _child(code, OATS_CSR8_BACKEND="fortran")
    assert r["error"] == ("OATS_CSR8_BACKEND='fortran' is not a CSR8 backend: use one of c, numba, or unset it")


def test_tensors_the_compiled_loops_would_misread_are_refused():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(8, 300, generator=g) * (torch.rand(8, 300, generator=g) < 0.4)
    p = pack_csr(s)
    ptr, off = kernels.csr_to_csr8(p["crow_indices"], p["col_indices"], 8, 300)
    x = torch.randn(3, 300, generator=g)
    for args in ((ptr, off, p["values"], 300, x.double()), (ptr.long(), off, p["values"], 300, x),
                 (ptr, off.int(), p["values"], 300, x), (ptr, off, p["values"].double(), 300, x),
                 (ptr, off, p["values"], 300, x[:, :299]), (ptr, off, p["values"], 300, x[0])):
        with pytest.raises(ValueError, match="float32 CPU tensors"):
            kernels.csr8_matmul(*args)
