"""What the per-layer views draw first, computed once while compressing: a matrix's *summary*.

The Spectra, Error budget, Outliers and Heavy-tail views need, per matrix, full singular-value
spectra and a few norms of the whole matrix. On a mid-size model that is minutes per page (one
14336 x 4096 matrix, four spectra; an 8B model has 224 matrices), so the pipeline computes them
right after each block's decomposition, while the terms are in memory, and the run folder keeps
them (``<qualname>.summary.<key>`` tensors in the block file). A view asks ``run.summary(q)``
and computes as before when the run has none (runs made before summaries existed).

Everything is in the scaled space of ``oats.explain.common`` (A = W D, S = S' D, L = (u v) D),
built by the same operations, so a view reading a summary shows the numbers it would compute.

Two paths, by the smaller dimension of the matrix:

* **exact** (min(d_out, d_in) <= ``EXACT_MAX_DIM``): every spectrum by ``singular_values``, the
  function the views themselves use, so a small model's numbers are the views' own, bit for
  bit; all of ``SPECTRA`` are stored.
* **large**: the eigenvalues of the fp32 Gram matrix on the smaller side (W D's shares W's
  when the Gram is d_in x d_in, D G D), in fp32; only ``LARGE_SPECTRA`` are stored (the
  ones the whole-model tables need), the one-layer views compute the rest on demand.

Measured on Llama-3.1-8B shapes (random weights, default OATS settings, 23-24 iterations), CPU
seconds on one thread each (the pipeline gives every matrix one thread, as it does OATS), on
the busy 2-core development machine: summary / OATS = 0.93 / 2.9 s (32%) for 1024 x 4096,
10.4 / 23.4 s (44%) for 4096 x 4096, 20.2 / 101.5 s (20%) for 14336 x 4096, 23.9 / 107.8 s (22%)
for 4096 x 14336: 24% of one block's OATS time. Three fp32 eigendecompositions of a 4096 x 4096
Gram (2.2 s each, 9% of OATS on the square matrix apiece) are most of it; storing only W D would
bring the square matrix to about 20%. Accuracy against fp64 ``torch.linalg.svdvals``: relative
error of the largest and the 100th singular value at most 8e-7 and 6e-7 (1024 x 4096), 2.4e-6
and 1.6e-6 (4096 x 4096), 2.3e-6 and 7.5e-7 (W of 14336 x 4096); at most 1.8e-5 over the top
half of any spectrum; L's values 6e-8.

L has rank r: its r non-zero singular values come from the two thin factors (QR of each, then
the r x r core) on the large path, never from an m x n product.
"""

from __future__ import annotations

import torch

from oats.core.decompose import input_scale

EXACT_MAX_DIM = 768
"""Matrices whose smaller side is at most this get the exact path (fp64 Gram eigenvalues of the
views' own ``singular_values``): every model embedded in the project (hidden sizes 384-576)."""

SV_KEYS = {"W": "sv_W", "W D": "sv_WD", "L": "sv_L", "W D - S": "sv_WD_S", "S + L": "sv_SL", "S": "sv_S",
           "L unscaled": "sv_L_unscaled"}
"""Spectrum name (as the views label it) -> summary key. "S + L", "S" and "L unscaled" are the
compressed weight and its terms *unscaled* (the heavy-tail view's matrices); the others scaled."""

SPECTRA = tuple(SV_KEYS)
"""Every spectrum a summary can hold (the exact path stores all)."""

LARGE_SPECTRA = ("W", "W D", "L", "W D - S", "S + L", "L unscaled")
"""The spectra the large path stores: what the whole-model tables (spectra overview, α of every
layer) and the Spectra view need, so that view's first draw is a read (without "W D - S" it took
7.3 s on a 4096 x 4096 layer of the Llama-3.1-8B shapes here, against the 3 s a per-layer page
may take). "S" (the heavy-tail view of one layer, behind a toggle) would cost one more Gram and
eigendecomposition, about 13% of OATS's own time on a 4096 x 4096 matrix: computed when asked."""

BUDGET = ("A", "S", "L", "A - S", "A - L", "A - S - L")
"""Order of the ``budget`` vector: squared Frobenius norms (fp64) of the scaled terms."""

COLUMNS = ("col_weight_norm", "col_energy", "col_sparse", "col_lowrank", "col_nnz")
"""Per input column (d_in,): ||W[:, j]||, ||A[:, j]||^2, ||S[:, j]||^2, ||L[:, j]||^2, non-zeros of S."""

KEYS = tuple(SV_KEYS.values()) + ("budget",) + COLUMNS

REQUIRED = tuple(SV_KEYS[k] for k in LARGE_SPECTRA) + ("budget",) + COLUMNS
"""What every stored summary holds, on either path (the exact path adds the S spectrum): a
summary with one of these missing is a damaged one, refused as such by its readers."""


def singular_values(a: torch.Tensor):
    """Singular values of a matrix, descending, fp64 numpy (min(d_out, d_in) of them).

    Through the eigenvalues of the smaller fp64 Gram matrix: several times faster than an
    SVD here, and accurate to about 1e-8 of the largest value, far below what a log plot of
    a weight spectrum shows.
    """
    a = a.detach().double().cpu()
    g = a.T @ a if a.shape[0] >= a.shape[1] else a @ a.T
    return torch.linalg.eigvalsh(g).flip(0).clamp_min(0).sqrt().numpy()


def expected_length(key: str, shape: tuple[int, int], rank: int) -> int | None:
    """How many values summary ``key`` holds for a (d_out, d_in) matrix of ``rank``; None for
    an unknown key (a reader refuses it)."""
    d_out, d_in = int(shape[0]), int(shape[1])
    n = min(d_out, d_in)
    if key in (SV_KEYS["L"], SV_KEYS["L unscaled"]):
        return min(max(int(rank), 0), n)
    if key in SV_KEYS.values():
        return n
    if key == "budget":
        return len(BUDGET)
    if key in COLUMNS:
        return d_in
    return None


def scaled(weight: torch.Tensor, sparse: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
           d: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"W", "D", "A", "S", "L"} of one matrix in fp32, by the operations of
    ``oats.explain.common.scaled_terms`` (so the same bits)."""
    w = weight.detach().float()
    return {"W": w, "D": d, "A": w * d, "S": sparse.detach().float() * d,
            "L": (u.detach().float() @ v.detach().float()) * d}


_GRAM_BLOCKS = 8
"""Column blocks of ``_gram``: only the blocks on and below the diagonal are multiplied, 56% of
the full product's work (a symmetric rank-k update, which torch does not offer)."""


def _gram(x: torch.Tensor) -> torch.Tensor:
    """The Gram matrix on the smaller side of ``x`` (x^T x or x x^T), its *lower triangle* only
    (the upper one is zeros): all that ``eigvalsh`` reads."""
    if x.shape[0] < x.shape[1]:
        x = x.T
    n = x.shape[1]
    g = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    step = -(-n // _GRAM_BLOCKS)
    for j in range(0, n, step):
        g[j:, j:j + step] = x[:, j:].T @ x[:, j:j + step]
    return g


def _from_gram(g: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(g, UPLO="L").flip(0).clamp_min(0).sqrt()


def _lowrank_values(u: torch.Tensor, v: torch.Tensor, rank: int) -> torch.Tensor:
    """The non-zero singular values of u @ v (u: m x r, v: r x n) from the thin factors, fp64."""
    if rank <= 0 or u.numel() == 0 or v.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    ru = torch.linalg.qr(u.double(), mode="r")[1]
    rv = torch.linalg.qr(v.double().T, mode="r")[1]
    return torch.linalg.svdvals(ru @ rv.T)[:rank]


def _spectra_exact(t: dict, sparse: torch.Tensor, u: torch.Tensor, v: torch.Tensor, rank: int) -> dict:
    s_raw = sparse.detach().float()
    l_raw = u.detach().float() @ v.detach().float()
    mats = {"W": t["W"], "W D": t["A"], "W D - S": t["A"] - t["S"], "S + L": s_raw + l_raw, "S": s_raw}
    out = {k: torch.from_numpy(singular_values(m)) for k, m in mats.items()}
    out["L"] = torch.from_numpy(singular_values(t["L"])[:max(rank, 0)])
    out["L unscaled"] = torch.from_numpy(singular_values(l_raw)[:max(rank, 0)])
    return out


def _spectra_large(t: dict, sparse: torch.Tensor, u: torch.Tensor, v: torch.Tensor, rank: int) -> dict:
    w, d = t["W"], t["D"]
    g_w = _gram(w)
    out = {"W": _from_gram(g_w)}
    # A^T A = D (W^T W) D when the Gram is on the input side: no second product
    g_a = d[:, None] * g_w * d[None, :] if w.shape[0] >= w.shape[1] else _gram(t["A"])
    del g_w
    out["W D"] = _from_gram(g_a)
    del g_a
    uf, vf = u.detach().float(), v.detach().float()
    out["W D - S"] = _from_gram(_gram(t["A"] - t["S"]))
    out["S + L"] = _from_gram(_gram(torch.addmm(sparse.detach().float(), uf, vf)))
    out["L"] = _lowrank_values(uf, vf * d, rank)
    out["L unscaled"] = _lowrank_values(uf, vf, rank)
    return out


def layer_summary(weight: torch.Tensor, sparse: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                  d: torch.Tensor, rank: int) -> dict[str, torch.Tensor]:
    """The summary of one (d_out, d_in) matrix (a fused part: its own rows and rank columns),
    ``d`` its input scale D: small 1-D tensors by ``KEYS``, fp64 on the exact path, fp32 on the
    large one (which leaves out the spectra not in ``LARGE_SPECTRA``); ``budget`` always fp64."""
    t = scaled(weight, sparse, u, v, d)
    exact = min(weight.shape) <= EXACT_MAX_DIM
    spectra = (_spectra_exact if exact else _spectra_large)(t, sparse, u, v, int(rank))
    # exact: kept in fp64, the views' own numbers; large: fp32 (computed so), half the bytes
    dtype = torch.float64 if exact else torch.float32
    out = {SV_KEYS[k]: x.detach().to(dtype).cpu() for k, x in spectra.items()}
    out.update({k: x if k == "budget" else x.to(dtype) for k, x in term_norms(t).items()})
    return out


_ROWS = 1024
"""Rows per fp64 chunk of ``term_norms``: a few MB at a time, never fp64 copies of a whole large matrix."""


def term_norms(t: dict) -> dict[str, torch.Tensor]:
    """``budget`` and the ``COLUMNS`` vectors of one matrix's scaled terms (``scaled``), in fp64,
    accumulated over row chunks: what the Error budget and Outliers views show (a summary
    stores the vectors in fp32; a view without one computes them here)."""
    d_in = t["W"].shape[1]
    tot = torch.zeros(len(BUDGET), dtype=torch.float64)
    cols = {k: torch.zeros(d_in, dtype=torch.float64) for k in COLUMNS}
    for i in range(0, t["W"].shape[0], _ROWS):
        w, a, s, l = (t[k][i:i + _ROWS].double().cpu() for k in ("W", "A", "S", "L"))
        a2, s2, l2 = a.square(), s.square(), l.square()
        tot += torch.stack([a2.sum(), s2.sum(), l2.sum(), (a - s).square().sum(), (a - l).square().sum(),
                            (a - s - l).square().sum()])
        cols["col_weight_norm"] += w.square().sum(0)
        cols["col_energy"] += a2.sum(0)
        cols["col_sparse"] += s2.sum(0)
        cols["col_lowrank"] += l2.sum(0)
        cols["col_nnz"] += (s != 0).sum(0)
    cols["col_weight_norm"] = cols["col_weight_norm"].sqrt()
    return {"budget": tot, **cols}


def summary_of(weight: torch.Tensor, sparse: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
               second_moments: torch.Tensor | None, rank: int, eps: float) -> dict[str, torch.Tensor]:
    """``layer_summary`` with D from the recorded second moments, as the views compute it
    (``oats.explain.common.layer_scale``)."""
    d = input_scale(second_moments, int(weight.shape[1]), eps).to(weight.device)
    return layer_summary(weight, sparse, u, v, d, rank)
