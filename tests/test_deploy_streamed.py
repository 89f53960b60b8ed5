"""The Deploy measurement of a run whose model stays on disk (``oats.deploy.streamed``): every
replaced matrix is covered once by its group, the deployed layers built from the reader compute
what the in-memory run's layers compute, and the Deploy page measures a lazily opened run from
its button."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_lazy_run import bf16_model, run_folder  # noqa: F401 - the tiny bf16 Llama and its run

from oats.deploy import streamed
from oats.deploy.linear import SparseLowRankLinear
from oats.errors import ConfigError
from oats.runs import lazy
from oats.runs.folders import load_run


@pytest.fixture(scope="module")
def lazy_run(run_folder):  # noqa: F811
    return lazy.open_lazy(run_folder)


def test_groups_cover_every_replaced_matrix_once(lazy_run):
    groups = streamed.matrix_groups(lazy_run)
    paths = [p for g in groups for p in g.paths]
    replaced = set(lazy_run.info_modules())
    assert sorted(paths) == sorted(replaced) and len(paths) == len(set(paths))
    for g in groups:  # one kind per group: shape and rank
        assert {tuple(lazy_run.info_modules()[p].shape) for p in g.paths} == {g.shape}
        assert {lazy_run.info_modules()[p].rank for p in g.paths} == {g.rank}
    # a Llama block: q and o (32 x 32), k and v (16 x 32), gate and up (64 x 32), down (32 x 64)
    assert sorted((g.shape, len(g.paths)) for g in groups) == [((16, 32), 6), ((32, 32), 6), ((32, 64), 3),
                                                               ((64, 32), 6)]


def test_deployed_layers_from_the_reader_compute_the_in_memory_layers(run_folder, lazy_run):  # noqa: F811
    mem = load_run(run_folder)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3))
    for path, m in mem.modules().items():
        dep, dense = streamed.deployed_layer(lazy_run, path), streamed.dense_layer(lazy_run, path)
        assert isinstance(dep, SparseLowRankLinear) and dep.nnz == int(torch.count_nonzero(m.sparse))
        xi = x[..., :m.in_features]
        with torch.no_grad():
            assert torch.allclose(dep(xi), m(xi), atol=1e-5, rtol=1e-5), path  # S + U V (+ b): mode "both"
            assert torch.allclose(dep(xi[0, :1]), m(xi[0, :1]), atol=1e-5, rtol=1e-5), path  # one token
            assert torch.allclose(dense(xi), torch.nn.functional.linear(xi, m.weight, m.bias), atol=1e-6), path
        assert dense.weight.dtype == torch.float32


@pytest.mark.parametrize("goal", ["smallest", "fastest"])
def test_the_streamed_timings_add_up_over_the_model(lazy_run, goal):
    said = []
    res = streamed.streamed_speed(lazy_run, goal, prompt=8, rounds=2, progress=lambda f, m: said.append((f, m)))
    assert res.matrices == len(lazy_run.info_modules()) == sum(r["count"] for r in res.rows())
    assert len(res.groups) == 4 and len(said) == 2 + len(res.groups) and said[-1][0] == 1.0
    assert [f for f, _ in said] == sorted(f for f, _ in said)
    for g in res.groups:
        assert set(g.ms) == {"dense_decode", "deployed_decode", "dense_prompt", "deployed_prompt"}
        assert all(t > 0 for t in g.ms.values())
        if goal == "smallest":
            assert g.form.startswith("csr8") or g.form == "csr"  # never folded back to dense
    for k in ("dense_decode", "deployed_decode", "dense_prompt", "deployed_prompt"):
        assert res.totals[k] == pytest.approx(sum(g.ms[k] * len(g.paths) for g in res.groups) / 1e3)
    # the floor: the dense side reads every weight in fp32, the deployed one what the export holds
    dense_bytes = sum(4 * m.shape[0] * m.shape[1] for m in lazy_run.info_modules().values())
    assert sum(g.nbytes["dense"] * len(g.paths) for g in res.groups) == dense_bytes
    assert res.totals["floor_dense"] > 0 and res.totals["floor_deployed"] > 0
    assert 0 < streamed.streamed_estimate(lazy_run) < streamed.streamed_estimate(lazy_run, "fastest")
    assert lazy_run.reader.max_blocks_resident == 1 and not lazy_run.reader.resident  # one matrix at a time
    first = next(r for r in lazy_run.layers if r.shape == (64, 32))  # gate of block 0: the first of the largest
    assert streamed.peak_bytes(lazy_run) == 8 * 64 * 32 + 40 * first.nnz
    assert streamed.peak_bytes(lazy_run, "fastest") == 12 * 64 * 32 + 72 * first.nnz  # + the plan's fold and CSR


def test_a_run_in_memory_or_a_bad_goal_is_one_line(run_folder, lazy_run):  # noqa: F811
    with pytest.raises(ConfigError, match="model on disk"):
        streamed.streamed_speed(load_run(run_folder))
    with pytest.raises(ConfigError, match="unknown goal"):
        streamed.streamed_speed(lazy_run, "quickest")
    with pytest.raises(ConfigError, match="tokens"):
        streamed.streamed_speed(lazy_run, prompt=0)
    with pytest.raises(ConfigError, match="rounds"):
        streamed.streamed_speed(lazy_run, rounds=0)
    empty = lazy.open_lazy(run_folder)
    empty.layers = []
    with pytest.raises(ConfigError, match="no compressed block"):
        streamed.streamed_speed(empty)
    assert streamed.peak_bytes(empty) == 0 and streamed.matrix_groups(empty) == []


def _drawn(at):
    """``at`` run once more, with neither an exception nor an error on the page."""
    at.run()
    assert not at.exception and not at.error, [*at.exception, *at.error]
    return at


def test_the_deploy_page_measures_a_lazy_run(run_folder, monkeypatch):  # noqa: F811
    from streamlit.testing.v1 import AppTest

    import ui.runtime as runtime
    for name, value in (("OATS_RUNS_DIR", str(run_folder.parent)), (lazy.LAZY_ENV, "1")):
        monkeypatch.setenv(name, value)
    runtime.RUNS.clear()
    at = _drawn(AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300))
    at.switch_page("pages/deploy.py")
    _drawn(at)
    assert any("Measuring takes about" in i.value for i in at.info)
    assert not any(b.label == "Measure throughput" for b in at.button)  # the whole-model path is not offered
    next(b for b in at.button if b.label.startswith("Measure the block linears (about")).click()
    _drawn(at)
    frames = [d.value for d in at.dataframe]
    per_shape = next(f for f in frames if "count" in f.columns)
    assert per_shape["count"].sum() == 21 and len(per_shape) == 4
    assert {"dense ms (1 token)", "deployed ms (1 token)", "form"} <= set(per_shape.columns)
    totals = next(f for f in frames if "tokens/s" in f.columns)
    assert len(totals) == 2 and (totals["tokens/s"] > 0).all()
    assert any("Only the block linears are timed" in m.value for m in at.markdown)
    runtime.RUNS.clear()
