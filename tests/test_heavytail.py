"""Heavy-tailed spectra: the power-law fit recovers planted exponents; per-layer ESDs of a run."""

import math

import numpy as np
import pytest
import torch

from oats import OatsConfig, compress_model
from oats.explain import heavytail as ht
from tiny_models import batches, tiny_llama


def pareto(alpha: float, n: int, xmin: float = 1.0, seed: int = 0) -> np.ndarray:
    """Samples with density ∝ x^(−alpha) above xmin (inverse CDF)."""
    u = np.random.default_rng(seed).random(n)
    return xmin * (1.0 - u) ** (-1.0 / (alpha - 1.0))


def matrix_with_spectrum(eigs: np.ndarray, d_out: int, seed: int = 0) -> torch.Tensor:
    """W = U diag(sqrt(eigs)) V^T with random orthonormal U, V: W^T W has exactly these eigenvalues."""
    rng = np.random.default_rng(seed)
    n = len(eigs)
    u, _ = np.linalg.qr(rng.standard_normal((d_out, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return torch.tensor(u @ np.diag(np.sqrt(eigs)) @ v.T)


@pytest.mark.parametrize("alpha", [2.0, 2.5, 4.0])
def test_fit_recovers_a_planted_exponent_from_samples(alpha):
    f = ht.fit_power_law(pareto(alpha, 3000, seed=int(alpha * 10)))
    assert f.alpha == pytest.approx(alpha, abs=0.2)
    assert f.sigma == pytest.approx((f.alpha - 1) / math.sqrt(f.n_tail))
    assert f.ks < 0.05 and f.n == 3000


def test_fit_recovers_exponent_and_cutoff_of_a_matrix_with_a_known_heavy_tail():
    # a body of 250 eigenvalues spread in (0, 1) and a tail of 350 with alpha = 2.5 above 1
    rng = np.random.default_rng(3)
    eigs = np.concatenate([rng.uniform(0.01, 0.9, 250), pareto(2.5, 350, xmin=1.0, seed=4)])
    w = matrix_with_spectrum(eigs, 800)
    ev = ht.eigenvalues(w)
    np.testing.assert_allclose(np.sort(ev), np.sort(eigs), rtol=1e-6)
    f = ht.fit_power_law(ev)
    assert f.alpha == pytest.approx(2.5, abs=0.2)
    assert 0.8 < f.xmin < 1.3 and 280 < f.n_tail < 390
    # the shuffled matrix has the same entries and a bulk without that tail: its largest
    # eigenvalue is far below W's
    r = ht.eigenvalues(ht.shuffled(w))
    assert torch.equal(torch.sort(ht.shuffled(w).flatten()).values, torch.sort(w.flatten()).values)
    assert r.max() < 0.2 * ev.max()


def test_fit_refuses_too_few_or_equal_values():
    assert ht.fit_power_law([1.0, 2.0, 3.0]) is None
    assert ht.fit_power_law(np.ones(50)) is None
    assert ht.fit_power_law(np.zeros(50)) is None
    f = ht.fit_power_law(pareto(3.0, 200), min_tail=150)
    assert f.n_tail >= 150


def test_log_density_integrates_to_one_and_fit_pdf_matches_its_tail():
    x = pareto(2.5, 5000, seed=7)
    c, d = ht.log_density(x, bins=30)
    edges = np.geomspace(x.min(), x.max() * (1 + 1e-12), 31)
    full = np.zeros(30)
    full[np.isin(np.sqrt(edges[:-1] * edges[1:]), c)] = d
    assert (full * np.diff(edges)).sum() == pytest.approx(1.0)
    f = ht.fit_power_law(x)
    mid = (c > 2) & (c < 20)
    assert np.median(np.abs(np.log(f.pdf(c[mid]) / d[mid]))) < 0.2
    assert f.pdf([0.5 * f.xmin])[0] == 0.0


@pytest.fixture(scope="module")
def run():
    return compress_model(tiny_llama(layers=2), batches(), OatsConfig(compression=0.5, rank_ratio=0.3, iterations=3))


def test_layer_esd_of_a_run(run):
    q = run.layers[-1].qualname  # 0.down / 1.down: 128 inputs, 64 outputs
    e = ht.layer_esd(run, q)
    f = run.factors(q)
    w, s, l = f["weight"].double(), f["sparse"].double(), f["u"].double() @ f["v"].double()
    np.testing.assert_allclose(np.sort(e.eigenvalues["W"]), np.sort(torch.linalg.svdvals(w).numpy() ** 2), rtol=1e-7)
    np.testing.assert_allclose(np.sort(e.eigenvalues["S + L"]), np.sort(torch.linalg.svdvals(s + l).numpy() ** 2),
                               rtol=1e-6, atol=1e-9)
    assert len(e.eigenvalues["L"]) == run.layer(q).rank
    assert list(e.eigenvalues) == ["W", "S + L", "S", "L", ht.SHUFFLED]
    rows = {r["matrix"]: r for r in e.table()}
    assert rows["W"]["stable_rank"] == pytest.approx(
        float((torch.linalg.svdvals(w) ** 2).sum() / torch.linalg.svdvals(w).max() ** 2), rel=1e-2)
    assert all(r["alpha"] is None or r["alpha"] > 1 for r in rows.values())
    assert 0 <= e.spikes <= min(run.layer(q).shape)


def test_alpha_table_and_the_sentence(run):
    rows = ht.alpha_table(run)
    assert [r["layer"] for r in rows] == [r.qualname for r in run.layers]
    for r in rows:
        if r["alpha_dense"] is not None and r["alpha_compressed"] is not None:
            assert r["delta_alpha"] == pytest.approx(r["alpha_compressed"] - r["alpha_dense"])
    again = ht.layer_alpha(run, rows[0]["layer"])
    assert again == rows[0]
    s = ht.compression_effect(rows)
    assert "median Δα" in s and s.count(".") >= 1


def test_the_sentence_reads_the_numbers():
    rows = [{"layer": f"{b}.{n}", "block": b, "name": n, "kind": "mlp", "alpha_dense": 3.0,
             "alpha_compressed": 3.0 + (1.0 if n == "fc2" else 0.1) + 0.1 * b, "alpha_se_dense": 0.1,
             "alpha_se_compressed": 0.1} for b in range(4) for n in ("fc1", "fc2")]
    for r in rows:
        r["delta_alpha"] = r["alpha_compressed"] - r["alpha_dense"]
    s = ht.compression_effect(rows)
    assert s.startswith("Yes: compression raises α in 8 of 8 layers (sign test p = 0.0078; median Δα = +0.70")
    assert "most in the fc2 matrices (median +1.15)" in s and "least in fc1 (+0.25)" in s
    assert "blocks 0–1 +0.60 vs blocks 2–3 +0.80" in s
    assert ht.compression_effect([]).startswith("No layer has a power-law fit")


def test_fit_is_the_clauset_estimator_checked_against_scipy():
    """The chosen x_min minimises scipy's KS statistic among all candidates, and alpha is the closed-form MLE."""
    from scipy import stats
    rng = np.random.default_rng(11)
    x = np.sort(np.concatenate([rng.lognormal(0, 0.5, 150), pareto(3.0, 80, xmin=3.0, seed=12)]))
    f = ht.fit_power_law(x, min_tail=10)

    def mle(xmin):
        tail = x[x >= xmin]
        return 1 + tail.size / np.log(tail / xmin).sum()

    def ks(xmin):
        tail = x[x >= xmin]
        a = mle(xmin)
        return stats.kstest(tail, lambda v: 1 - (v / xmin) ** (1 - a)).statistic

    cands = x[: x.size - 10 + 1]
    d = np.array([ks(c) for c in cands])
    assert f.xmin == cands[int(np.argmin(d))]
    assert f.ks == pytest.approx(d.min(), rel=1e-9)
    assert f.alpha == pytest.approx(mle(f.xmin), rel=1e-12)


def test_sign_test_and_an_unclear_shift():
    assert ht.sign_test(8, 8) == pytest.approx(2 / 256)
    assert ht.sign_test(0, 8) == ht.sign_test(8, 8) and ht.sign_test(2, 4) == 1.0
    rows = [{"layer": f"{b}.q", "block": b, "name": "q", "alpha_dense": 3.0, "alpha_compressed": 3.0 + d,
             "alpha_se_dense": 0.3, "alpha_se_compressed": 0.3, "delta_alpha": d}
            for b, d in enumerate([0.1, -0.05, 0.02, -0.1, 0.05, 0.03])]
    assert ht.compression_effect(rows).startswith("Not clearly: compression raises α in 4 of 6 layers (sign test p = 0.69")
