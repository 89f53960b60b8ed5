"""Summaries stored at compression time (oats.compress.summaries): every per-layer view reads
them and shows the numbers it computes without them (small matrices: the exact path), a run
folder keeps them, old runs without them still open and compute, and damaged ones are refused."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from oats import OatsConfig, compress_model, save_run
from oats.compress import summaries as S
from oats.errors import RunError
from oats.explain import budget, heavytail, outliers, spectra
from oats.runs.folders import RunInfo, load_run, read_block, summaries_of

from tiny_models import batches, compressed, tiny_llama

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=6)
TOL = 1e-6


@pytest.fixture(scope="module")
def run():
    return compress_model(tiny_llama(), batches(), CFG, model_name="tiny")


def fresh(run):
    """The same run without its summaries: every view computes, as for a run made before them."""
    return dataclasses.replace(run, summaries={})


def close(a, b, tol=TOL):
    """Equal to ``tol`` relative to the largest magnitude (arrays, floats, None); 1e-6 by
    default: a small model's stored numbers must be the views' own to that."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
    return bool(np.all(np.abs(a - b) <= tol * scale))


def same_rows(rows_a, rows_b, tol=TOL):
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], (int, float)) and not isinstance(ra[k], bool) or ra[k] is None:
                if isinstance(ra[k], float) and isinstance(rb[k], float) and math.isnan(ra[k]):
                    assert math.isnan(rb[k]), k
                    continue
                assert close(ra[k], rb[k], tol), (ra["layer"], k, ra[k], rb[k])
            else:
                assert ra[k] == rb[k], k


def test_every_matrix_has_a_summary_of_the_right_lengths(run):
    assert set(run.summaries) == {r.qualname for r in run.layers}
    for rec in run.layers:
        s = run.summary(rec.qualname)
        assert set(s) == set(S.KEYS)  # small matrices: the exact path stores every spectrum
        for key, t in s.items():
            # the exact path keeps fp64: the views' own numbers, not rounded
            assert t.dim() == 1 and t.dtype == torch.float64 and bool(torch.isfinite(t).all())
            assert t.numel() == S.expected_length(key, rec.shape, rec.rank), key
    assert fresh(run).summary("0.q") is None


def test_stored_spectra_are_the_views_own_numbers(run):
    for rec in run.layers:
        a, b = spectra.layer_spectra(run, rec.qualname), spectra.layer_spectra(fresh(run), rec.qualname)
        assert list(a.values) == list(spectra.SPECTRA)
        for k in spectra.SPECTRA:
            assert close(a.values[k], b.values[k]), (rec.qualname, k)
            assert close(a.captured[k], b.captured[k])
        assert close(a.lowrank_share, b.lowrank_share)
        assert a.values["L"].size == rec.rank


def test_stored_spectra_match_an_svd(run):
    """Not only the views' own Gram route: the stored values are the matrices' singular values."""
    for rec in run.layers[:4]:
        f = run.factors(rec.qualname)
        d = spectra.scaled_terms(run, rec.qualname)["D"]
        s = run.summary(rec.qualname)
        w = f["weight"].double()
        l_raw = f["u"].double() @ f["v"].double()
        for key, m in (("sv_W", w), ("sv_WD", w * d.double()), ("sv_SL", f["sparse"].double() + l_raw),
                       ("sv_S", f["sparse"].double()), ("sv_WD_S", (w - f["sparse"].double()) * d.double())):
            assert close(s[key], torch.linalg.svdvals(m), 1e-5), (rec.qualname, key)
        assert close(s["sv_L_unscaled"], torch.linalg.svdvals(l_raw)[:rec.rank], 1e-5)


def test_overview_budget_columns_and_alpha_read_the_same_numbers(run):
    a, b = spectra.spectra_overview(run), spectra.spectra_overview(fresh(run))
    assert np.allclose(a.heat, b.heat, rtol=0, atol=1e-6)
    same_rows(a.rows, b.rows)
    same_rows(budget.layer_budget(run), budget.layer_budget(fresh(run)))
    same_rows(heavytail.alpha_table(run), heavytail.alpha_table(fresh(run)))
    for rec in run.layers:
        x, y = outliers.column_shares(run, rec.qualname), outliers.column_shares(fresh(run), rec.qualname)
        for field in ("scale", "weight_norm", "energy", "sparse_energy", "lowrank_energy", "sparse_share", "ratio"):
            assert close(getattr(x, field), getattr(y, field)), (rec.qualname, field)
        assert np.array_equal(x.kept_per_column, y.kept_per_column)
        assert x.kept_per_column.sum() == rec.nnz


def test_layer_esd_reads_the_same_eigenvalues_and_fits(run):
    for rec in run.layers[:7]:
        a, b = heavytail.layer_esd(run, rec.qualname), heavytail.layer_esd(fresh(run), rec.qualname)
        assert list(a.eigenvalues) == list(b.eigenvalues)
        for k in a.eigenvalues:
            assert close(a.eigenvalues[k], b.eigenvalues[k]), (rec.qualname, k)
        same_rows([dict(r, layer=k) for k, r in zip(a.eigenvalues, a.table())],
                  [dict(r, layer=k) for k, r in zip(b.eigenvalues, b.table())])


def test_budget_numbers_from_the_summary_are_the_records(run):
    """The stored norms give the recorded scaled error (||W D - S - L|| / ||W D||)."""
    for row, rec in zip(budget.layer_budget(run), run.layers):
        assert abs(row["both"] - rec.scaled_error) < 1e-4 * max(rec.scaled_error, 1e-3)


def test_a_saved_run_keeps_its_summaries_and_views(run, tmp_path):
    folder = save_run(run, tmp_path / "r")
    back = load_run(folder, model=tiny_llama())
    assert set(back.summaries) == set(run.summaries)
    for q, s in run.summaries.items():
        assert set(back.summary(q)) == set(s)
        for k, t in s.items():
            assert torch.equal(back.summary(q)[k], t), (q, k)
    same_rows(budget.layer_budget(back), budget.layer_budget(run))
    same_rows(heavytail.alpha_table(back), heavytail.alpha_table(run), 0)
    assert np.array_equal(spectra.spectra_overview(back).heat, spectra.spectra_overview(run).heat)
    info = RunInfo.read(folder)
    grouped = summaries_of(read_block(folder, 0, info))
    assert set(grouped) == {r.qualname for r in run.layers if r.block == 0}


def _edit_block(folder, fn):
    f = folder / "block_000.safetensors"
    t = load_file(str(f))
    fn(t)
    save_file(t, str(f))


def test_a_run_folder_without_summaries_opens_and_computes(run, tmp_path):
    folder = save_run(run, tmp_path / "old")
    _edit_block(folder, lambda t: [t.pop(k) for k in [k for k in t if ".summary." in k]])
    back = load_run(folder, model=tiny_llama())
    assert back.summary("0.q") is None and back.summary("1.q") is not None
    same_rows(budget.layer_budget(back), budget.layer_budget(run))


@pytest.mark.parametrize("damage, why", [
    (lambda t: t.update({"0.q.summary.sv_W": t["0.q.summary.sv_W"][:-1]}), "shape"),
    (lambda t: t.update({"0.q.summary.budget": t["0.q.summary.budget"] * float("nan")}), "NaN"),
    (lambda t: t.update({"0.q.summary.sv_WD": -t["0.q.summary.sv_WD"]}), "negative"),
    (lambda t: t.update({"0.q.summary.col_nnz": t["0.q.summary.col_nnz"].to(torch.int64)}), "not floats"),
])
def test_a_damaged_summary_is_refused_in_one_line(run, tmp_path, damage, why):
    folder = save_run(run, tmp_path / "bad")
    _edit_block(folder, damage)
    with pytest.raises(RunError) as e:
        load_run(folder, model=tiny_llama())
    msg = str(e.value)
    assert "damaged summary" in msg and why in msg and "\n" not in msg


def test_an_unknown_summary_key_is_a_stray(run, tmp_path):
    folder = save_run(run, tmp_path / "stray")
    _edit_block(folder, lambda t: t.update({"0.q.summary.nonsense": torch.ones(3)}))
    with pytest.raises(RunError, match="which the manifest does not name"):
        load_run(folder, model=tiny_llama())


def test_fused_parts_have_their_own_summaries():
    """A fused q/k/v matrix (Phi-3): each part's summary is that part's, as factors() slices it."""
    run = compressed("phi3").run
    for rec in run.layers:
        s = run.summary(rec.qualname)
        f = run.factors(rec.qualname)
        assert s["sv_W"].numel() == min(rec.shape)
        assert close(s["sv_W"], spectra.singular_values(f["weight"]))
        assert int(s["col_nnz"].sum()) == rec.nnz
    same_rows(budget.layer_budget(run), budget.layer_budget(fresh(run)))


def test_large_path_spectra_are_close_to_svdvals(monkeypatch):
    """The large path (Gram eigenvalues in fp32, L from its factors), forced on a small matrix:
    top values to 1e-5 of svdvals; it leaves out what LARGE_SPECTRA leaves out."""
    monkeypatch.setattr(S, "EXACT_MAX_DIM", 8)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 40, generator=g)
    sparse = w * (torch.rand(96, 40, generator=g) > 0.5)
    u, v = torch.randn(96, 5, generator=g), torch.randn(5, 40, generator=g) * 0.1
    d = torch.rand(40, generator=g) + 0.5
    for wt, st, ut, vt, dt in ((w, sparse, u, v, d), (w.T, sparse.T, v.T, u.T, torch.rand(96, generator=g) + 0.5)):
        s = S.layer_summary(wt, st, ut, vt, dt, 5)
        assert S.SV_KEYS["S"] not in s  # the one spectrum the large path leaves to the heavy-tail toggle
        for key, m in (("sv_W", wt), ("sv_WD", wt * dt), ("sv_SL", st + ut @ vt), ("sv_WD_S", (wt - st) * dt)):
            ref = torch.linalg.svdvals(m.double())
            assert torch.allclose(s[key][:10].double(), ref[:10], rtol=1e-5), key
        assert torch.allclose(s["sv_L"].double(), torch.linalg.svdvals((ut @ vt * dt).double())[:5], rtol=1e-6)
