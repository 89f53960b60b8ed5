"""The explain views (oats.explain.spectra, outliers, budget, walkthrough, runs), their figures and oats.jobs on tiny models built in the test (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oats import OatsConfig, compress_model, decompose, save_run

from oats.explain import budget, common, outliers, runs, spectra, walkthrough
from oats.methods import registry

from ui import budget_figures, charts, outlier_figures, run_figures, spectra_figures, walkthrough_figures
from oats.core.decompose import input_scale, rank_budget
from oats.runs.folders import RunInfo, read_manifest
from oats.runner.jobs import JobRunner
from oats.runner.sweep import plan
from oats.runner.request import CompressRequest, request_from_manifest
from oats.runs.evaluations import read_evaluation, save_evaluation

CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=8)


from tiny_models import batches, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def run():
    return compress_model(tiny_llama(), batches(), CFG, model_name="tiny")


# ----------------------------------------------------------------------------- downsampling and ranks


def test_downsample_pools_blocks_exactly():
    a = np.arange(7 * 10, dtype=float).reshape(7, 10) - 30
    h = common.downsample(a, max_rows=3, max_cols=4, how="mean")
    assert h.factor == (3, 3) and h.z.shape == (3, 4)
    assert list(h.rows) == [0, 3, 6] and list(h.cols) == [0, 3, 6, 9]
    assert h.z[0, 0] == pytest.approx(a[:3, :3].mean())
    assert h.z[2, 3] == pytest.approx(a[6:, 9:].mean())  # the ragged corner: one entry
    hm = common.downsample(a, 3, 4, how="max")
    assert hm.z[1, 2] == a[3:6, 6:9].max()
    ha = common.downsample(a, 3, 4, how="absmax")
    assert ha.z[0, 0] == np.abs(a[:3, :3]).max() == 30
    small = common.downsample(a, 100, 100)
    assert small.factor == (1, 1) and np.array_equal(small.z, a)
    big = common.downsample(torch.randn(1000, 3000), how="absmax")
    assert big.z.shape[0] <= common.HEAT_MAX and big.z.shape[1] <= common.HEAT_MAX
    with pytest.raises(ValueError, match="2-D"):
        common.downsample(np.zeros(3))


def test_singular_values_match_svd_both_orientations():
    torch.manual_seed(0)
    for shape in ((40, 13), (13, 40)):
        a = torch.randn(*shape) * torch.logspace(0, -2, shape[1])
        ours = spectra.singular_values(a)
        ref = torch.linalg.svdvals(a.double()).numpy()
        assert len(ours) == 13
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9 * ref[0])


def test_effective_and_stable_rank():
    assert spectra.effective_rank(np.ones(10)) == pytest.approx(10)
    assert spectra.effective_rank([5.0, 0, 0]) == pytest.approx(1)
    assert 1 < spectra.effective_rank([3.0, 1.0]) < 2
    assert spectra.stable_rank([3.0, 4.0]) == pytest.approx(25 / 16)
    assert spectra.stable_rank(np.ones(7)) == pytest.approx(7)
    assert spectra.energy_captured([3.0, 4.0], 1) == pytest.approx(9 / 25)
    assert spectra.effective_rank([]) == 0 and spectra.stable_rank([]) == 0


# ----------------------------------------------------------------------------- spectra


def test_layer_spectra_of_a_real_decomposition(run):
    rec = run.layer("1.down")
    sp = spectra.layer_spectra(run, "1.down")
    f = run.factors("1.down")
    d = input_scale(run.second_moments["1.down"], rec.shape[1], run.config.eps)
    np.testing.assert_allclose(sp.values["W"], torch.linalg.svdvals(f["weight"].double()).numpy(), rtol=1e-5)
    np.testing.assert_allclose(sp.values["W D"], torch.linalg.svdvals((f["weight"] * d).double()).numpy(), rtol=1e-5)
    assert len(sp.values["L"]) == rec.rank > 0
    # L is the best rank-r term of W D - S of the previous iteration (S moves a little in the
    # last step): its values are close to the top r of W D - S's, and all positive
    np.testing.assert_allclose(sp.values["L"], sp.values["W D - S"][:rec.rank], rtol=0.05)
    assert (sp.values["L"] > 0).all()
    assert sp.lowrank_share == pytest.approx(rec.history["lowrank_energy"][-1], rel=1e-3)
    # removing the sparse term concentrates the spectrum: the top r hold more of it
    assert sp.captured["W D - S"] > sp.captured["W D"]
    rows = {r["matrix"]: r for r in sp.table()}
    assert rows["L"]["values"] == rec.rank and rows["W"]["effective_rank"] <= min(rec.shape)


def test_spectra_overview(run):
    ov = spectra.spectra_overview(run, points=32)
    assert ov.heat.shape == (len(run.layers), 32) and ov.labels == [r.qualname for r in run.layers]
    assert np.allclose(ov.heat[:, 0], 0) and (np.diff(ov.heat, axis=1) <= 1e-9).all()  # normalised, descending
    for row, rec in zip(ov.rows, run.layers):
        assert row["rank"] == rec.rank and row["rank_frac"] == pytest.approx(rec.rank / min(rec.shape))
        assert 1 <= row["stable_rank_WD"] <= row["effective_rank_WD"] + 1e-9 <= min(rec.shape) + 1e-9
    fig = spectra_figures.spectra_overview_figure(ov)
    assert fig.data[0].z.shape == ov.heat.shape and "log" in fig.data[0].colorbar.title.text
    assert fig.layout.xaxis.title.text.startswith("relative singular value index")


def test_spectrum_figure_marks_rank(run):
    sp = spectra.layer_spectra(run, "0.q")
    fig = spectra_figures.spectrum_figure(sp)
    assert len(fig.data) == 4 and fig.layout.yaxis.type == "log"
    assert [s.x0 for s in fig.layout.shapes] == [sp.rank]
    np.testing.assert_allclose(fig.data[0].y, np.maximum(sp.values["W"], 1e-12))


# ----------------------------------------------------------------------------- outliers


def test_input_moments_group_shared_inputs(run):
    mom = outliers.second_moments_by_input(run)
    assert mom.labels[:4] == ["0.q,k,v", "0.o", "0.gate,up", "0.down"]
    assert len(mom.labels) == 8 and mom.widths() == [64, 128]
    labels, m = mom.matrix(128)
    assert labels == ["0.down", "1.down"] and m.shape == (2, 128)
    np.testing.assert_allclose(mom.m2[0], run.second_moments["0.k"].double().numpy())


def test_outlier_table_finds_a_planted_channel(run):
    mom = outliers.second_moments_by_input(run)
    m2 = mom.m2[1].copy()
    m2[17] = np.median(m2) * 400  # RMS 20x the median
    planted = outliers.SecondMomentsByInput(["0.o"], [["0.o"]], [m2])
    rows = outliers.outlier_table(planted, threshold=10)
    assert rows[0]["outliers"] >= 1 and rows[0]["channels"].split()[0] == "17"
    assert rows[0]["max_ratio"] == pytest.approx(20, rel=0.05)
    counts = [outliers.outlier_table(mom, t)[0]["outliers"] for t in (1.1, 2, 5, 50)]
    assert counts == sorted(counts, reverse=True)
    ch = outliers.outlier_channels(planted, 10)
    assert ch[0]["channel"] == 17 and ch[0]["inputs"] == 1
    fig = outlier_figures.outlier_counts_figure(rows, 10)
    assert list(fig.data[0].y) == [rows[0]["outliers"]] and "10× median" in fig.layout.yaxis.title.text
    with pytest.raises(ValueError):
        outliers.outlier_table(mom, 0)


def test_column_shares_add_up(run):
    q = "0.gate"
    cs = outliers.column_shares(run, q)
    t = common.scaled_terms(run, q)
    assert cs.sparse_energy.sum() == pytest.approx(float(t["S"].double().square().sum()), rel=1e-6)
    assert cs.lowrank_energy.sum() == pytest.approx(float(t["L"].double().square().sum()), rel=1e-6)
    assert ((cs.sparse_share >= 0) & (cs.sparse_share <= 1)).all()
    assert cs.kept_per_column.sum() == run.layer(q).nnz
    s = cs.summary(threshold=1.0)  # half the channels are above the median
    assert 0 < s["outlier_channels"] < len(cs.scale)
    fig = outlier_figures.column_figure(cs, 1.0)
    assert len(fig.data) == 5 and fig.layout.yaxis.type == "log"
    h = outliers.mask_density(run, q, max_size=16)
    assert h.z.shape == (16, 16) and h.z.mean() == pytest.approx(run.layer(q).nnz / (128 * 64))


# ----------------------------------------------------------------------------- error budget


def test_layer_budget_matches_the_records(run):
    rows = budget.layer_budget(run)
    assert [r["layer"] for r in rows] == [r.qualname for r in run.layers]
    for row, rec in zip(rows, run.layers):
        assert row["both"] == pytest.approx(rec.scaled_error, rel=1e-3)
        assert row["both"] < row["sparse_only"] and row["both"] < row["lowrank_only"]
        total = row["sparse_energy"] + row["lowrank_energy"] + row["residual_energy"] + row["interaction"]
        assert total == pytest.approx(1.0)
        assert row["residual_energy"] == pytest.approx(row["both"] ** 2)
    fig = budget_figures.error_budget_figure(rows)
    assert [t.name for t in fig.data] == ["sparse term only", "low-rank term only", "sparse + low-rank"]
    np.testing.assert_allclose(fig.data[2].y, [r["both"] for r in rows])
    blocks = budget.block_errors(run)
    assert [b["block_output_error"] for b in blocks] == [b.output_error for b in run.blocks]


def test_block_ablation_restores_modes_and_moves_the_output(run):
    x = batches(seed=5, n=1)[0]
    with torch.no_grad(), run.use_mode("dense"):
        ref = run.model(**x).logits

    def evaluate():
        with torch.no_grad():
            out = run.model(**x).logits
        return {"distance": float((out - ref).norm() / ref.norm())}

    before = {n: m.mode for n, m in run.modules().items()}
    base = budget.ablation_reference(run, evaluate)
    rows = budget.block_ablation(run, 1, evaluate)
    assert {n: m.mode for n, m in run.modules().items()} == before
    assert base[0]["distance"] == 0 and base[1]["distance"] > 0
    by = {r["change"]: r["distance"] for r in rows}
    assert by["low-rank term off"] > base[1]["distance"] and by["sparse term off"] > base[1]["distance"]
    fig = budget_figures.ablation_figure(base + rows, "distance", higher_is_better=False)
    assert len(fig.data) == 2 and len(fig.layout.shapes) == 2
    with pytest.raises(ValueError, match="block 9"):
        budget.block_ablation(run, 9, evaluate)


# ----------------------------------------------------------------------------- walkthrough


def test_walkthrough_snapshots_follow_the_solver(run):
    f = run.factors("0.o")
    m2 = run.second_moments["0.o"]
    cfg = OatsConfig(compression=0.6, rank_ratio=0.3, iterations=30, solver="exact")
    wt = walkthrough.walkthrough(f["weight"], m2, cfg, registry.replay_for("oats")[0], max_snapshots=6, max_size=16)
    dec = decompose(f["weight"], m2, cfg)
    assert wt.history == dec.history.to_dict()  # same solver, same answer
    its = wt.iterations
    assert its[0] == 1 and its[-1] == 30 and len(its) <= 7 and its == sorted(its)
    assert wt.rank == rank_budget(64, 64, cfg)
    # the last snapshot's residual is |W D - S - L| of the final decomposition, pooled
    d = dec.scale
    resid = (f["weight"] - dec.sparse - dec.u @ dec.v) * d
    np.testing.assert_allclose(wt.snapshots[-1].residual.z, common.downsample(resid, 16, 16, "absmax").z,
                               rtol=1e-3, atol=1e-5)
    assert wt.at(2).iteration in (1, its[1]) and wt.at(1000).iteration == 30
    fig = walkthrough_figures.walkthrough_figure(wt, wt.snapshots[-1])
    assert len(fig.data) == 3 and all(t.zmax == wt.zmax for t in fig.data)
    obj = walkthrough_figures.objective_figure(wt.history, 30)
    assert list(obj.data[0].y) == wt.history["error"] and obj.layout.shapes[0].x0 == 30


# ----------------------------------------------------------------------------- runs, sweeps, jobs


def test_manifest_summaries(run, tmp_path):
    save_run(run, tmp_path / "r")
    info = RunInfo.read(tmp_path / "r")
    s = runs.run_summary(info)
    assert s["params_dense"] == run.params_dense and s["params_kept"] == run.params_kept
    assert s["compression"] == pytest.approx(1 - run.params_kept / run.params_dense)
    times = runs.block_times(info)
    assert [t["block"] for t in times] == [0, 1]
    assert times[0]["total_s"] == pytest.approx(run.blocks[0].stats_time_s + run.blocks[0].decompose_time_s)
    rows = runs.layer_errors_from_manifests([tmp_path / "r"])
    assert [r["scaled_error"] for r in rows] == [r.scaled_error for r in run.layers]
    fig = run_figures.layer_compare_figure(rows)
    assert len(fig.data) == 1 and list(fig.data[0].y) == [r.scaled_error for r in run.layers]


def test_sweep_series():
    rows = [{"model": "m", "method": "oats", "compression": c, "mode": "both", "cosine": 1 - c / 2, "run": "x"}
            for c in (0.6, 0.3)]
    rows += [{"model": "m", "method": "wanda", "compression": 0.3, "mode": "both", "cosine": 0.7, "run": "y"},
             {"model": "m", "method": "dense", "compression": 0.0, "mode": "dense", "cosine": 1.0, "run": ""}]
    assert runs.metric_columns(rows) == ["cosine"]
    s = runs.sweep_series(rows, "cosine")
    assert s["oats · both"] == ([0.3, 0.6], [0.85, 0.7])
    assert s["wanda · both"] == ([0.3], [0.7]) and s["dense"] == ([0.3, 0.6], [1.0, 1.0])
    fig = run_figures.sweep_figure(s, "cosine", True)
    assert {t.name for t in fig.data} == set(s) and "higher is better" in fig.layout.yaxis.title.text
    assert fig.layout.yaxis.type != "log"
    ppl = {"oats · both": ([0.3, 0.5], [14.2, 22.0]), "oats · sparse": ([0.3, 0.5], [1.2e8, 6.9e7])}
    fig = run_figures.sweep_figure(ppl, "perplexity", False)
    assert fig.layout.yaxis.type == "log" and "log scale" in fig.layout.yaxis.title.text
    assert fig.layout.yaxis.ticktext and all(t not in ("2", "5") for t in fig.layout.yaxis.ticktext)


def _minor_digit_free(ticktext) -> bool:
    """No bare 2 or 5 between powers of ten on a wide log axis (Plotly's '2, 10k, 5')."""
    return all(not t.startswith(("2", "5")) for t in ticktext)


def test_evaluation_chart_is_log_when_values_span_decades():
    """SmolLM2's numbers: dense and compressed stay readable beside collapsed variants, each value
    printed on its bar; a narrow span stays linear."""
    smol = {"dense": {"perplexity": 13.46}, "both": {"perplexity": 21.33}, "sparse": {"perplexity": 9.2e7},
            "lowrank": {"perplexity": 5.8e8}}
    fig = run_figures.evaluation_figure(smol, "perplexity", False)
    y = fig.layout.yaxis
    assert y.type == "log" and "log scale" in y.title.text and "lower is better" in y.title.text
    assert list(fig.data[0].text) == ["13.46", "21.33", "9.2×10⁷", "5.8×10⁸"]
    assert fig.data[0].textposition == "outside"
    lo, hi = y.range  # log10 units: the smallest bar rises above the floor, the tallest has room for its label
    assert lo < np.log10(13.46) - 0.3 and hi > np.log10(5.8e8)
    assert y.tickmode == "array" and len(y.tickvals) == len(y.ticktext) <= 8 and _minor_digit_free(y.ticktext)
    assert all(np.log10(v) == round(np.log10(v)) for v in y.tickvals)  # powers of ten only
    narrow = {"dense": {"perplexity": 13.46}, "both": {"perplexity": 21.33}, "sparse": {"perplexity": 48.0}}
    fig = run_figures.evaluation_figure(narrow, "perplexity", False)
    assert fig.layout.yaxis.type != "log" and "log" not in fig.layout.yaxis.title.text
    assert list(fig.data[0].text) == ["13.46", "21.33", "48"]
    acc = {"dense": {"accuracy": 0.0}, "both": {"accuracy": 0.8}}  # a zero never makes a log axis
    assert run_figures.evaluation_figure(acc, "accuracy", True).layout.yaxis.type != "log"
    # a one-term run's compressed bar is named after its term, not "sparse + low-rank"
    wanda = {"dense": {"perplexity": 13.46}, "both": {"perplexity": 19.1}}
    fig = run_figures.evaluation_figure(wanda, "perplexity", False, variants={"dense": "dense", "both": "sparse"})
    assert list(fig.data[0].x) == ["dense", "sparse"]


def test_log_axes_label_every_tick_in_full():
    """One helper for every log axis: within two decades 1-2-5 steps written out ('20', '50'),
    wider spans powers of ten only ('10⁴'), never bare minor digits."""
    vals, text = charts.log_ticks([13.46, 21.33, 40.0])
    assert text == ["10", "20", "50", "100"] and vals == [10.0, 20.0, 50.0, 100.0]
    vals, text = charts.log_ticks([1e-12, 5.0, float("nan"), -1, None])
    assert len(vals) <= 8 and _minor_digit_free(text) and text[0] == "10⁻¹²" and "1" in text
    import plotly.graph_objects as go
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3e2, 2e4, 7e6]))
    charts.log_axis(fig, title_text="y")
    assert fig.layout.yaxis.type == "log" and list(fig.layout.yaxis.ticktext) == ["100", "1000", "10⁴", "10⁵", "10⁶", "10⁷"]
    from plotly.subplots import make_subplots
    fig = make_subplots(rows=2, cols=1)
    fig.add_trace(go.Scatter(x=[1, 2], y=[1, 2]), 1, 1)
    fig.add_trace(go.Scatter(x=[1, 2], y=[1e-3, 1e3]), 2, 1)
    charts.log_axis(fig, row=2, col=1)
    assert fig.layout.yaxis.type != "log" and fig.layout.yaxis2.type == "log"
    assert list(fig.layout.yaxis2.ticktext) == ["0.001", "0.01", "0.1", "1", "10", "100", "1000"]
    charts.log_axis(go.Figure(), title_text="empty")  # no data: Plotly's powers of ten, no failure


def test_request_folder_names_are_deterministic():
    a = CompressRequest("minilm-l6", OatsConfig())
    assert a.folder_name() == CompressRequest("minilm-l6", OatsConfig()).folder_name() == "minilm-l6-oats-c0.5-k0.25-row-mix"
    # the name a sweep gives the same run, so each reuses the other's
    assert a.folder_name() == plan("minilm-l6", "oats", "0.5", "0.25")[0].folder_name()
    names = {a.folder_name(), CompressRequest("minilm-l6", OatsConfig(compression=0.6)).folder_name(),
             CompressRequest("minilm-l6", OatsConfig(sparsity="2:8")).folder_name(),
             CompressRequest("minilm-l6", OatsConfig(), calib_source="/x.txt").folder_name(),
             CompressRequest("/data/models/minilm-l6", OatsConfig()).folder_name(),
             CompressRequest("minilm-l6", OatsConfig(), method="wanda").folder_name(),
             CompressRequest("minilm-l6", OatsConfig(iterations=20)).folder_name(),
             CompressRequest("minilm-l6", OatsConfig(), calib_samples=16).folder_name()}
    assert len(names) == 8 and all("/" not in n and ":" not in n for n in names)


@pytest.fixture
def fake_zoo(monkeypatch):
    """oats.models.zoo.load_model / oats.data.calibration_batches answering with the tiny Llama."""
    from oats import data
    from oats.models import zoo

    def load(name, **kw):
        if name != "tiny":
            raise zoo.ModelLoadError(f"unknown model {name!r}: use a preset")
        return zoo.LoadedModel(name="tiny", model=tiny_llama(), task="causal-lm", source="test")

    monkeypatch.setattr(zoo, "load_model", load)
    monkeypatch.setattr(data, "calibration_batches", lambda loaded, **kw: batches())


def test_job_compresses_in_the_background_once(tmp_path, fake_zoo):
    runner = JobRunner()
    req = CompressRequest("tiny", CFG, evaluate=False)
    job = runner.start(req, root=tmp_path)
    assert runner.start(req, root=tmp_path) is job  # the same request while running: the same job
    s = job.wait(600)  # a hang guard: a loaded machine is slow, not broken
    assert s.status == "done", s.error
    assert (s.done, s.total) == (2, 2) and len(s.log) == 3 and s.log[-1].startswith("block 1: output error")
    m = read_manifest(job.folder)
    assert m["complete"] and m["model_name"] == "tiny" and m["task"] == "causal-lm"
    assert request_from_manifest(m, evaluate=False) == req
    again = runner.start(req, root=tmp_path)  # finished on disk: nothing recomputed
    assert again is not job and again.state().status == "done" and again.thread is None
    assert "already compressed" in again.state().message


def test_job_errors_are_one_line_and_cancel_stops(tmp_path, fake_zoo):
    runner = JobRunner()
    bad = runner.start(CompressRequest("nope", CFG, evaluate=False), root=tmp_path).wait(600)
    assert bad.status == "failed" and bad.error == "unknown model 'nope': use a preset" and "\n" not in bad.error
    odd = runner.start(CompressRequest("tiny", CFG, method="svdllm", evaluate=False), root=tmp_path).wait(600)
    assert odd.status == "failed" and "unknown method 'svdllm'" in odd.error
    with runner._compute:  # another compression is running: the new one queues
        job = runner.start(CompressRequest("tiny", CFG.replace(compression=0.6), evaluate=False), root=tmp_path)
        assert job.state().status == "queued"
        job.cancel()
    s = job.wait(600)
    assert s.status == "cancelled" and "resume" in s.message
    assert not runner.active()


def test_evaluation_file_roundtrip(tmp_path):
    save_evaluation(tmp_path, {"dense": {"cosine": 1.0}, "both": {"cosine": np.float64(0.9)}}, quick=True)
    ev = read_evaluation(tmp_path)
    assert ev["quick"] is True and ev["results"]["both"]["cosine"] == 0.9
    (tmp_path / "evaluation.json").write_text("{broken")
    assert read_evaluation(tmp_path) is None
    assert read_evaluation(tmp_path / "missing") is None
