"""Deployable exports (``oats export``, ``oats.load_compressed``): round trips on tiny models of
every adapter family in both layouts, the folded layout loaded by plain transformers / timm in
a process that never imports oats, the sparse layout's parameter count against the run's
budget, and bad input (one line, status 2, nothing written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tiny_models import CALIB, CASES, assert_cli_fails, compressed, llm_folder as _llm_folder, output as _output

import oats
from oats.cli import main as cli_main
from oats.core.linear import OatsLinear
from oats.deploy.export import (EXPORT_FILE, SPARSE_FILE, block_linear_bytes, export_folder_bytes, export_run,
                                load_compressed, size_report, sparse_modules)
from oats.deploy import kernels
from oats.deploy.linear import SparseLowRankLinear, pack_csr
from oats.errors import ConfigError, RunError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every family's tiny compressed model exported in both layouts (once for the module)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name in CASES:
        c = compressed(name)
        for layout in ("sparse", "folded"):
            out[name, layout] = export_run(c.run, root / f"{name}-{layout}", layout)
    return out


# ----------------------------------------------------------------------------- the sparse module


def test_csr_packing_is_exact_and_narrow():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 300, generator=g) * (torch.rand(7, 300, generator=g) < 0.3)
    s[2] = 0  # an empty row
    p = pack_csr(s)
    assert p["col_indices"].dtype == torch.int16 and p["crow_indices"].dtype == torch.int32
    assert p["values"].numel() == int((s != 0).sum()) and int(p["crow_indices"][-1]) == p["values"].numel()
    dense = torch.zeros(s.shape)
    for r in range(s.shape[0]):
        a, b = int(p["crow_indices"][r]), int(p["crow_indices"][r + 1])
        dense[r, p["col_indices"][a:b].long()] = p["values"][a:b]
    assert torch.equal(dense, s)
    assert pack_csr(torch.ones(2, 40000))["col_indices"].dtype == torch.int32  # beyond int16


def test_csr8_layout_round_trips_and_is_five_bytes_an_entry():
    g = torch.Generator().manual_seed(3)
    for d_out, d_in in ((7, 300), (5, 256), (4, 1000), (3, 17)):
        s = torch.randn(d_out, d_in, generator=g) * (torch.rand(d_out, d_in, generator=g) < 0.3)
        s[1] = 0  # an empty row
        s[0, -1] = 2.5  # the last column, in the last (partial) segment
        p = pack_csr(s)
        ptr, off = kernels.csr_to_csr8(p["crow_indices"], p["col_indices"], d_out, d_in)
        nseg = -(-d_in // 256)
        assert ptr.dtype == torch.int32 and off.dtype == torch.uint8 and ptr.shape == (d_out * nseg + 1,)
        assert int(ptr[-1]) == p["values"].numel() and bool((ptr[1:] >= ptr[:-1]).all())
        crow, col = kernels.csr8_to_csr(ptr, off, d_out, d_in)
        assert torch.equal(crow, p["crow_indices"]) and torch.equal(col, p["col_indices"].int())
        nnz = p["values"].numel()
        assert kernels.csr8_bytes(d_out, d_in, nnz) == nnz * 5 + 4 * (d_out * nseg + 1)


def _backend_or_fail(name: str) -> None:
    """Both backends must run where the suite runs (a C compiler and numba are on every machine
    the project supports); a machine without one skips, CI fails (conftest.skip_or_fail)."""
    from conftest import skip_or_fail
    if name == "c":
        try:
            kernels.build_c_library()
        except kernels.KernelBuildError as e:
            skip_or_fail(f"the C backend cannot run here: {e}")
    elif not kernels._numba_installed():
        skip_or_fail("numba is not installed (a dependency of oats)")


@pytest.mark.parametrize("backend", kernels.BACKENDS)
def test_both_csr8_backends_equal_the_exact_product_at_every_batch_size(backend):
    _backend_or_fail(backend)
    g = torch.Generator().manual_seed(4)
    # widths with a partial last segment, exactly one segment and several; an empty row; batch
    # sizes below, at and past the C kernel's 16-column tiles
    for d_out, d_in in ((24, 40), (33, 600), (64, 512), (5, 256)):
        s = torch.randn(d_out, d_in, generator=g) * (torch.rand(d_out, d_in, generator=g) < 0.35)
        s[3] = 0
        s[0, -1] = 1.5
        p = pack_csr(s)
        ptr, off = kernels.csr_to_csr8(p["crow_indices"], p["col_indices"], d_out, d_in)
        for n in (1, 2, 7, 16, 17, 33, 64):
            x = torch.randn(n, d_in, generator=g)
            got = kernels.csr8_matmul(ptr, off, p["values"], d_in, x, using=backend)
            assert got.shape == (n, d_out)
            assert _max_rel(got, (x.double() @ s.double().T).float()) < 1e-6
        # a non-contiguous input (a slice of a wider batch) gives the same numbers
        xs = torch.randn(9, 2 * d_in, generator=g)[:, ::2]
        assert _max_rel(kernels.csr8_matmul(ptr, off, p["values"], d_in, xs, using=backend), xs @ s.T) < 1e-6


def test_csr8_module_equals_the_csr_module_and_keeps_only_its_layout():
    g = torch.Generator().manual_seed(4)
    for d_out, d_in in ((24, 40), (33, 600)):
        s = torch.randn(d_out, d_in, generator=g) * (torch.rand(d_out, d_in, generator=g) < 0.35)
        u, v = torch.randn(d_out, 4, generator=g), torch.randn(4, d_in, generator=g)
        m8 = SparseLowRankLinear(d_out, d_in, **pack_csr(s), u=u, v=v, kernel="csr8")
        mc = SparseLowRankLinear(d_out, d_in, **pack_csr(s), u=u, v=v, kernel="csr")
        assert m8.kernel == "csr8" and mc.kernel == "csr" and m8.nbytes() < mc.nbytes()
        assert {n for n, _ in m8.named_buffers()} >= {"segment_ptr", "col_offsets"}
        assert not {n for n, _ in m8.named_buffers()} & {"crow_indices", "col_indices"}
        for n in (1, 7):
            x = torch.randn(n, d_in, generator=g)
            ref = (x.double() @ (s + u @ v).double().T).float()
            with torch.no_grad():
                assert _max_rel(m8(x), ref) < 1e-6 and _max_rel(mc(x), ref) < 1e-6
        # a forward that needs gradients runs torch's CSR product, and its gradient is right
        x = torch.randn(3, d_in, generator=g, requires_grad=True)
        m8(x).sum().backward()
        assert _max_rel(x.grad, (s + u @ v).sum(0).expand(3, d_in)) < 1e-5


def test_indices_out_of_range_are_refused_before_any_kernel_reads_them():
    """The compiled kernels do not check bounds: a damaged file must be refused at construction."""
    g = torch.Generator().manual_seed(5)
    s = torch.randn(6, 300, generator=g) * (torch.rand(6, 300, generator=g) < 0.4)
    p = pack_csr(s)
    ptr, off = kernels.csr_to_csr8(p["crow_indices"], p["col_indices"], 6, 300)
    u, v = torch.zeros(6, 0), torch.zeros(0, 300)
    SparseLowRankLinear(6, 300, p["values"], u, v, segment_ptr=ptr, col_offsets=off, kernel="csr8")  # intact
    bad = [dict(segment_ptr=ptr.clone().index_fill_(0, torch.tensor([len(ptr) - 1]), len(p["values"]) + 5),
                col_offsets=off),  # the last pointer past the values
           dict(segment_ptr=torch.flip(ptr, [0]), col_offsets=off),  # decreasing pointers
           dict(segment_ptr=ptr, col_offsets=torch.full_like(off, 60))]  # columns 316 of 300 (last segment 44 wide)
    for kw in bad:
        with pytest.raises(ValueError, match="out of range"):
            SparseLowRankLinear(6, 300, p["values"], u, v, kernel="csr8", **kw)
    col = p["col_indices"].clone().to(torch.int32)
    col[0] = 300
    with pytest.raises(ValueError, match="out of range"):
        SparseLowRankLinear(6, 300, p["values"], u, v, crow_indices=p["crow_indices"], col_indices=col, kernel="csr")


@pytest.mark.parametrize("kernel", ["csr8", "csr"])
def test_sparse_low_rank_linear_computes_s_plus_uv_without_a_dense_s(kernel):
    if kernel == "csr8":
        _backend_or_fail(kernels.backend())
    g = torch.Generator().manual_seed(1)
    s = torch.randn(24, 40, generator=g) * (torch.rand(24, 40, generator=g) < 0.4)
    u, v, b = torch.randn(24, 3, generator=g), torch.randn(3, 40, generator=g), torch.randn(24, generator=g)
    m = SparseLowRankLinear(24, 40, **pack_csr(s), u=u, v=v, bias=b, kernel=kernel)
    x = torch.randn(2, 5, 40, generator=g)
    ref = x @ (s + u @ v).T + b
    assert _max_rel(m(x), ref) < 1e-6
    one = x[:1, :1]  # one token: the matrix-vector path
    assert m(one).shape == (1, 1, 24) and _max_rel(m(one), one @ (s + u @ v).T + b) < 1e-6
    assert all(t.shape != (24, 40) for t in m.buffers())  # no (d_out, d_in) tensor is held
    assert m.params == int((s != 0).sum()) + 3 * (24 + 40)
    # a fused matrix: two parts with their own rows and ranks
    u1, u2 = torch.randn(10, 2, generator=g), torch.randn(14, 1, generator=g)
    full_u = torch.zeros(24, 3)
    full_u[:10, :2], full_u[10:, 2:] = u1, u2
    fused = SparseLowRankLinear(24, 40, **pack_csr(s), u=[u1, u2], v=v, part_rows=[(0, 10), (10, 24)],
                                kernel=kernel)
    assert _max_rel(fused(x), x @ (s + full_u @ v).T) < 1e-6
    assert fused.params == int((s != 0).sum()) + 10 * 2 + 14 + 3 * 40
    with pytest.raises(ValueError):
        SparseLowRankLinear(24, 41, **pack_csr(s), u=u, v=v)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("layout", ["sparse", "folded"])
@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_equals_the_runs_sparse_plus_low_rank_mode(name, layout, exports):
    c = compressed(name)
    model = load_compressed(exports[name, layout])
    with torch.no_grad(), c.run.use_mode("both"):
        ref = _output(c.run.model, c.batch)
        dense_ref = c.ref
        got = _output(model, c.batch)
    assert _max_rel(got, ref) <= 1e-5
    assert _max_rel(got, dense_ref) > 1e-3  # it is the compressed model, not the dense one
    assert not any(isinstance(m, OatsLinear) for m in model.modules())
    if layout == "sparse":
        layers = sparse_modules(model)
        assert set(layers) == set(c.run.modules())
        # no original weight and no dense S: the compressed layers hold less than their dense weights
        dense_bytes = sum(m.weight.numel() * 4 + (m.bias.numel() * 4 if m.bias is not None else 0)
                          for m in c.run.modules().values())
        assert block_linear_bytes(model) < dense_bytes


@pytest.mark.parametrize("name", ["llama", "phi3", "bert"])
def test_size_report_is_what_the_export_holds(name, exports):
    from safetensors import safe_open
    c = compressed(name)
    folder = exports[name, "sparse"]
    sizes = size_report(c.run)
    assert sizes["sparse_memory"] == block_linear_bytes(load_compressed(folder))
    assert sizes["sparse_csr"] == block_linear_bytes(load_compressed(folder, kernel="csr"))
    with safe_open(str(folder / SPARSE_FILE), "pt") as f:
        prefixes = tuple(p + "." for p in c.run.modules())
        on_disk = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
                      if k.startswith(prefixes))
    assert sizes["sparse_disk"] == sizes["sparse_csr8"] == on_disk < sizes["sparse_csr"] < sizes["dense"]
    if kernels.available():
        assert sizes["kernel"] == "csr8" and sizes["sparse_memory"] == sizes["sparse_csr8"]
    assert sizes["dense"] == sum(4 * (m.weight.numel() + (m.bias.numel() if m.bias is not None else 0))
                                 for m in c.run.modules().values())


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_both_kernels_and_format_1_exports_load_to_the_same_outputs(name, exports, tmp_path):
    """kernel="csr" gives the same model as the default; a format-1 export (S in CSR on disk, as
    oats wrote before CSR8) still loads, to the same outputs."""
    from safetensors.torch import load_file, save_file
    c = compressed(name)
    folder = exports[name, "sparse"]
    with torch.no_grad():
        ref = _output(load_compressed(folder), c.batch)
        csr = load_compressed(folder, kernel="csr")
        assert {m.kernel for m in sparse_modules(csr).values()} == {"csr"}
        assert _max_rel(_output(csr, c.batch), ref) < 1e-6
    old = tmp_path / "format1"
    shutil.copytree(folder, old)
    info = json.loads((old / EXPORT_FILE).read_text())
    tensors = load_file(str(old / SPARSE_FILE))
    for path, spec in info["layers"].items():
        crow, col = kernels.csr8_to_csr(tensors.pop(f"{path}.segment_ptr"), tensors.pop(f"{path}.col_offsets"),
                                        *spec["shape"])
        tensors[f"{path}.crow_indices"], tensors[f"{path}.col_indices"] = crow, col.to(torch.int16)
    save_file(tensors, str(old / SPARSE_FILE))
    info["oats_export"] = 1
    (old / EXPORT_FILE).write_text(json.dumps(info))
    with torch.no_grad():
        assert _max_rel(_output(load_compressed(old), c.batch), ref) < 1e-6
    with pytest.raises(ConfigError, match="unknown kernel"):
        load_compressed(folder, kernel="bsr")


@pytest.mark.parametrize("name", list(CASES))
def test_sparse_layouts_parameter_count_is_the_runs_budget(name, exports):
    c = compressed(name)
    model = load_compressed(exports[name, "sparse"])
    info = json.loads((exports[name, "sparse"] / EXPORT_FILE).read_text())
    kept = sum(m.params for m in sparse_modules(model).values())
    assert kept == c.run.params_kept == info["run"]["params_kept"]
    assert kept <= sum(r.budget + r.shape[0] for r in c.run.layers)  # the budgets' rounding, < 1 entry a row
    assert sum(s["nnz"] for s in info["layers"].values()) == sum(r.nnz for r in c.run.layers)


_PLAIN = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import load_file, save_file
    out = {}
    for name, folder, kind, cls in json.loads(sys.argv[1]):
        batch = load_file(folder + "/batch.safetensors")
        if kind == "timm":
            import timm
            model = timm.create_model("local-dir:" + folder, pretrained=True).eval()
            y = model(batch["pixel_values"])
        else:
            import transformers
            model = getattr(transformers, cls).from_pretrained(folder).eval()
            kw = dict(batch)
            if "input_ids" in kw and getattr(model.config, "use_cache", None) is not None:
                kw["use_cache"] = False
            with torch.no_grad():
                res = model(**kw)
            y = res.logits if getattr(res, "logits", None) is not None else res.last_hidden_state
        out[name] = y.detach().contiguous()
    assert not any(m == "oats" or m.startswith("oats.") for m in sys.modules), "oats was imported"
    save_file(out, sys.argv[2])
""")


def test_folded_loads_with_plain_transformers_and_timm_without_oats(exports, tmp_path):
    from safetensors.torch import load_file, save_file
    jobs = []
    for name in CASES:
        folder = exports[name, "folded"]
        info = json.loads((folder / EXPORT_FILE).read_text())
        assert not (folder / SPARSE_FILE).exists() and (folder / "model.safetensors").is_file()
        save_file({k: v.contiguous() for k, v in compressed(name).batch.items()}, str(folder / "batch.safetensors"))
        jobs.append([name, str(folder), info["kind"], info["class"]])
    result = tmp_path / "out.safetensors"
    script = tmp_path / "plain.py"
    script.write_text(_PLAIN)
    # -I: no current folder and no PYTHON* variables on the path, so nothing can pull oats in by accident
    proc = subprocess.run([sys.executable, "-I", str(script), json.dumps(jobs), str(result)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = load_file(str(result))
    for name in CASES:
        c = compressed(name)
        with torch.no_grad(), c.run.use_mode("both"):
            ref = _output(c.run.model, c.batch)
        assert _max_rel(got[name], ref) <= 1e-5, name


# ----------------------------------------------------------------------------- bf16 exports


BF16_TOLERANCE = 0.01
"""Largest output difference of a bf16 export from the fp32 one, relative to the output's
largest value: bf16 keeps 8 bits of mantissa (a relative rounding of at most 2^-9 = 0.2% per
value); through the tiny models' blocks the roundings add up to 0.2-0.45% (measured)."""


@pytest.mark.parametrize("layout", ["sparse", "folded"])
@pytest.mark.parametrize("name", ["llama", "phi3", "gpt2", "bert", "vit", "dinov2", "timm-vit"])
def test_a_bf16_export_is_half_the_size_and_computes_as_the_fp32_one(name, layout, exports, tmp_path):
    from safetensors import safe_open
    c = compressed(name)
    fp32 = exports[name, layout]
    bf16 = export_run(c.run, tmp_path / "bf16", layout, dtype="bf16")
    assert json.loads((bf16 / EXPORT_FILE).read_text())["dtype"] == "bf16"
    assert json.loads((fp32 / EXPORT_FILE).read_text())["dtype"] == "fp32"
    files = sorted(bf16.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as fh:
            floats = {fh.get_slice(k).get_dtype() for k in fh.keys()} & {"F32", "BF16", "F16", "F64"}
        assert floats == {"BF16"}, f.name  # every float tensor, the factors and the dense rest
    weights = SPARSE_FILE if layout == "sparse" else "model.safetensors"  # (another test adds a batch file to fp32)
    ratio = (bf16 / weights).stat().st_size / (fp32 / weights).stat().st_size
    assert export_folder_bytes(bf16) == (bf16 / weights).stat().st_size
    assert 0.5 <= ratio < (0.7 if layout == "sparse" else 0.51)  # the sparse indices keep their size
    model, ref_model = load_compressed(bf16), load_compressed(fp32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # computes in fp32, as before
    with torch.no_grad():
        got, ref = _output(model, c.batch), _output(ref_model, c.batch)
    diff = _max_rel(got, ref)
    assert 0 < diff <= BF16_TOLERANCE, diff


# ----------------------------------------------------------------------------- the command and bad input


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    t = tmp_path_factory.mktemp("export-cli")
    llm = _llm_folder(t / "llm")
    assert cli_main(["compress", str(llm), "--out", str(t / "runs" / "run"), "--quiet", *CALIB]) == 0
    return t / "runs" / "run"


def test_oats_export_writes_a_folder_that_loads(run_folder, tmp_path, capsys):
    out = tmp_path / "exp"
    assert cli_main(["export", str(run_folder), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert f"to {out}" in cap.out and len(cap.out.splitlines()) == 1 and cap.err == ""
    info = json.loads((out / EXPORT_FILE).read_text())
    assert info["layout"] == "sparse" and info["run"]["model_name"] == str(run_folder.parent.parent / "llm")
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()
    run = oats.load_run(run_folder)
    ids = torch.randint(3, 20, (2, 10), generator=torch.Generator().manual_seed(3))
    model = oats.load_compressed(out)
    with torch.no_grad():
        ref = run.model(input_ids=ids, use_cache=False).logits
        got = model(input_ids=ids, use_cache=False).logits
    assert _max_rel(got, ref) <= 1e-5
    # --dtype bf16: the same model to bf16's rounding, in half the bytes
    half = tmp_path / "exp-bf16"
    assert cli_main(["export", str(run_folder), "--out", str(half), "--dtype", "bf16"]) == 0
    assert "of weights in bf16" in capsys.readouterr().out
    with torch.no_grad():
        got16 = oats.load_compressed(half)(input_ids=ids, use_cache=False).logits
    assert 0 < _max_rel(got16, got) <= BF16_TOLERANCE
    assert export_folder_bytes(half) < 0.7 * export_folder_bytes(out)
    # --force replaces an export; without it a second export is refused and changes nothing
    before = (out / SPARSE_FILE).read_bytes()
    assert cli_main(["export", str(run_folder), "--out", str(out), "--format", "folded", "--force"]) == 0
    assert capsys.readouterr().err == ""  # no progress bars of transformers' own
    assert not (out / SPARSE_FILE).exists() and json.loads((out / EXPORT_FILE).read_text())["layout"] == "folded"
    assert before and list(out.parent.glob(".exp.*")) == []


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["format", "dtype", "nonempty", "unfinished", "damaged", "missing", "runfolder",
                                  "file"])
def test_bad_export_is_one_line_status_2_and_writes_nothing(case, run_folder, tmp_path, capsys):
    out = tmp_path / "out"
    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    args = ["export", str(run), "--out", str(out)]
    if case == "format":
        args += ["--format", "dense"]
        message = "unknown export format 'dense': use sparse"
    elif case == "dtype":
        args += ["--dtype", "fp8"]
        message = "unknown export dtype 'fp8': use fp32 (the default) or bf16"
    elif case == "nonempty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        message = "exists and is not empty: choose another --out, or pass --force"
    elif case == "unfinished":
        m = json.loads((run / "manifest.json").read_text())
        m["complete"] = False
        (run / "manifest.json").write_text(json.dumps(m))
        message = "is unfinished"
    elif case == "damaged":
        (run / "manifest.json").write_text('{"format": 1, "model_name": ')
        message = "manifest"
    elif case == "missing":
        (run / "block_001.safetensors").unlink()
        message = "is missing block_001.safetensors"
    elif case == "runfolder":
        args = ["export", str(run), "--out", str(run), "--force"]
        message = "would replace the run folder"
    else:
        out.write_text("a file")
        message = "is a file"
    before = {p: _snapshot(p) if p.is_dir() else p.read_bytes() for p in (run, out) if p.exists()}
    assert_cli_fails(args, message, capsys)
    after = {p: _snapshot(p) if p.is_dir() else p.read_bytes() for p in (run, out) if p.exists()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in before)


def test_loading_what_is_not_an_export_is_refused(run_folder, tmp_path):
    with pytest.raises(RunError, match="is not an oats export"):
        load_compressed(run_folder)
    with pytest.raises(RunError, match="is not a folder"):
        load_compressed(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / EXPORT_FILE).write_text("{not json")
    with pytest.raises(RunError, match="is damaged"):
        load_compressed(tmp_path / "bad")


def test_a_damaged_sparse_export_is_refused(exports, tmp_path):
    folder = tmp_path / "x"
    shutil.copytree(exports["llama", "sparse"], folder)
    (folder / SPARSE_FILE).write_bytes(b"garbage")
    with pytest.raises(RunError, match="missing or unreadable"):
        load_compressed(folder)
    shutil.copytree(exports["bert", "sparse"], tmp_path / "y")
    from safetensors.torch import load_file, save_file
    t = load_file(str(tmp_path / "y" / SPARSE_FILE))
    del t[next(k for k in t if k.endswith(".values"))]
    save_file(t, str(tmp_path / "y" / SPARSE_FILE))
    with pytest.raises(RunError, match="damaged"):
        load_compressed(tmp_path / "y")


def test_unknown_layout_in_the_library(exports):
    with pytest.raises(ConfigError, match="unknown export format"):
        export_run(compressed("llama").run, Path("/nonexistent/never"), "csr")


# ----------------------------------------------------------------------------- speed helpers


def test_floors_and_weight_costs(exports):
    from oats.deploy.speed import floor_seconds, weight_cost
    floors = {"bandwidth": 1e10, "gemm": 1e11}
    assert floor_seconds(2e9, 1e9, floors) == (0.2, "B")
    assert floor_seconds(1e6, 1e12, floors) == (10.0, "C")
    c = compressed("llama")
    model = load_compressed(exports["llama", "sparse"])
    head = model.lm_head.weight.numel()
    nbytes, macs = weight_cost(model, list(c.run.modules()))
    assert (nbytes, macs) == (block_linear_bytes(model) + 4 * head, c.run.params_kept + head)
    with c.run.use_mode("dense"):
        assert weight_cost(c.run.model, []) == (4 * head, head)


def test_compare_speed_reports_both_models_and_their_floors(run_folder):
    from oats.deploy.speed import compare_speed
    run = oats.load_run(run_folder)
    seen = []
    res = compare_speed(run, rounds=1, new_tokens=2, progress=lambda f, m: seen.append(f))
    assert res["unit"].startswith("tokens/s") and res["threads"] == torch.get_num_threads()
    for k in ("dense", "export"):
        assert res[k] > 0 and res[f"floor_{k}"] > 0 and res[f"bound_{k}"] in ("B", "C")
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert all(m.mode == "both" for m in run.modules().values())  # left as it was
