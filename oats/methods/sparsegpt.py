"""SparseGPT (Frantar & Alistarh, 2023): sparse only, chosen and compensated with Optimal
Brain Surgeon updates on the full Gram matrix X^T X of the layer's calibration inputs.

Same budget accounting as OATS: each row keeps d_in - floor(d_in rho) entries ("row"), the
matrix keeps the same total ("layer"), or each row keeps N of every M inputs ("N:M"). The
history holds the *scaled* error ||(W - W') D||_F / ||W D||_F (D from the Gram's diagonal)
so it is read on the same axis as OATS.

Gram shrinkage (``config.shrink`` = lambda; when not given, 0: SparseGPT as published): the sweep solves with
H_lambda = (1 - lambda) H + lambda diag(H) (``shrunk_gram``) instead of H. lambda = 0 is SparseGPT
as published; lambda = 1 leaves only the diagonal, so the OBS updates vanish (H^-1 is diagonal)
and each column block prunes, row by row, its share of the smallest w_ij^2 (H_jj + damp):
Wanda's score |w_ij| ||X_j||, up to the damping and the per-block shares. Between the two, the
calibration inputs' correlations count less, for inputs of another kind than the calibration's.
The scale D of the history is sqrt(diag H), the same for every lambda.
"""

from __future__ import annotations

import contextlib

import torch

from oats.config import OatsConfig
from oats.core.decompose import Decomposition, History, check_shape, input_scale, row_keep, sparse_budget, top_k_mask
from oats.errors import ConfigError
from oats.methods.registry import Method, register
from oats.resources import map_on_cores, matrix_cost, one_thread


def _inverse_cholesky(gram: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp I)^-1, H = gram, damp = percdamp * mean diag(H).

    fp64 for the factorisations (they are d_in^3 and run once per matrix). When H is
    numerically not positive definite even after damping, the damping grows tenfold until
    it is (a layer whose inputs span few directions).
    """
    h = gram.detach().to(torch.float64).clone()
    n = h.shape[0]
    mean_diag = float(torch.diagonal(h).mean())
    if not mean_diag > 0:  # the layer never saw a non-zero input: nothing to learn from H
        h = torch.eye(n, dtype=torch.float64)
        mean_diag = 1.0
    damp = percdamp * mean_diag
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(h + damp * torch.eye(n, dtype=torch.float64))
        if int(info) == 0:
            break
        damp *= 10.0
    else:
        raise ConfigError("the Gram matrix of a layer's inputs is not positive definite even with strong "
                          "damping: check the calibration data for NaN or inf")
    hinv = torch.cholesky_inverse(chol)
    return torch.linalg.cholesky(hinv, upper=True)


def shrunk_gram(gram: torch.Tensor, shrink: float) -> torch.Tensor:
    """H_lambda = (1 - lambda) H + lambda diag(H): the Gram a Gram-aware method solves with.

    ``gram`` itself when lambda = 0 (the full Gram, bit for bit); otherwise fp64, its
    off-diagonal entries (1 - lambda) H_ij and its diagonal exactly H's (so lambda = 1 gives
    diag(H) exactly, and D = sqrt(diag H) is the same for every lambda).
    """
    shrink = float(shrink)
    if shrink == 0.0:
        return gram
    h = gram.detach().to(torch.float64)
    out = h * (1.0 - shrink)
    out.diagonal().copy_(h.diagonal())
    return out


def _cumulative_share(total: int, start: int, stop: int, width: int) -> int:
    """How many of ``total`` prunes fall in columns [start, stop) of ``width`` when they are
    spread evenly with cumulative rounding (the shares of all blocks add up to ``total``)."""
    return total * stop // width - total * start // width


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k smallest entries along the last dim (exact count, ties to the lowest index)."""
    return top_k_mask(scores, k, largest=False)


def _sweep(w: torch.Tensor, q_all: torch.Tensor, u_chol: torch.Tensor, cfg: OatsConfig, blocksize: int,
           prune: int) -> None:
    """The OBS column sweep of ``sparsegpt``: fills ``q_all`` with the pruned, updated weights.

    ``w`` (updated in place by the lazy block updates), ``u_chol`` the upper Cholesky factor
    of H^-1; ``prune`` is the prune count per row ("row") or per matrix ("layer").
    """
    d_out, d_in = w.shape
    nm = cfg.nm
    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        cnt = i2 - i1
        w1 = w[:, i1:i2].clone()
        u1 = u_chol[i1:i2, i1:i2]
        d1 = torch.diagonal(u1)
        err1 = torch.zeros_like(w1)
        scores = w1.square() / d1.square().unsqueeze(0)
        if nm is not None:
            pruned = torch.zeros_like(w1, dtype=torch.bool)
        elif cfg.sparsity == "layer":
            k = _cumulative_share(prune, i1, i2, d_in)
            pruned = _smallest(scores.reshape(-1), k).reshape(w1.shape)
        else:
            pruned = _smallest(scores, _cumulative_share(prune, i1, i2, d_in))
        for i in range(cnt):
            if nm is not None and i % nm[1] == 0:
                group = w1[:, i:i + nm[1]].square() / d1[i:i + nm[1]].square().unsqueeze(0)
                pruned[:, i:i + nm[1]] = _smallest(group, nm[1] - nm[0])
            col = w1[:, i]
            q = col.masked_fill(pruned[:, i], 0.0)
            e = (col - q) / u1[i, i]
            # the rest of the block absorbs the pruned weights' error (OBS update)
            w1[:, i:].sub_(e.unsqueeze(1) * u1[i, i:].unsqueeze(0))
            w1[:, i] = q
            err1[:, i] = e
        q_all[:, i1:i2] = w1
        if i2 < d_in:  # lazy update of every later column at once
            w[:, i2:].sub_(err1 @ u_chol[i1:i2, i2:])


@torch.no_grad()
def check_gram(gram: torch.Tensor, d_in: int, percdamp: float) -> None:
    """ConfigError (one line) for a Gram of the wrong shape, with NaN/inf, or a damping outside (0, 1)."""
    if tuple(gram.shape) != (d_in, d_in):
        raise ConfigError(f"the Gram matrix is {tuple(gram.shape)} but the weight has d_in = {d_in}: "
                          "give the (d_in, d_in) Gram of this layer's inputs")
    if not torch.isfinite(gram).all():
        raise ConfigError("input statistics contain NaN or inf: check the model's activations on the calibration data")
    if not 0.0 < percdamp < 1.0:
        raise ConfigError(f"percdamp must be in (0, 1), got {percdamp!r}")


def sparsegpt(weight: torch.Tensor, gram: torch.Tensor, config: OatsConfig, blocksize: int = 128,
              percdamp: float = 0.01, device=None) -> Decomposition:
    """SparseGPT: prune with Optimal Brain Surgeon updates on the full input Gram matrix.

    Args:
        weight: (d_out, d_in).
        gram: (d_in, d_in) mean over calibration tokens of x x^T (any positive multiple
            works: the damping is relative). Its diagonal gives the scale D of the history.
        config: compression, pattern and Gram shrinkage (``shrink``: the sweep uses
            ``shrunk_gram(gram, config.shrink)``); the rank ratio is ignored (rank 0).
        blocksize: columns per lazy-update block (rounded down to a multiple of M for N:M).
        percdamp: damping, as a fraction of the mean diagonal of the Gram matrix.

    Column by column, the pruned weights' error is spread onto the columns not yet visited,
    through the Cholesky factor U of H^-1 (H = gram + damp I): err = (w - q) / U_ii,
    W[:, i:] -= err U[i, i:]. Masks are chosen per block of columns from w^2 / U_ii^2 with
    the weights already updated by the earlier blocks.

    Budget, exactly as the other methods:
      - "row": each row prunes floor(d_in rho) entries; every column block gets its share of
        that count (cumulative rounding over the blocks), chosen per row within the block,
        so each row keeps exactly ``row_keep(d_in)`` entries.
      - "layer": the matrix's prune count is spread over the column blocks the same way and
        chosen over the whole (d_out, block) slice, so the matrix keeps exactly
        ``sparse_budget`` entries (rows may differ).
      - "N:M": each row keeps the N of every M consecutive inputs with the largest score,
        chosen when the sweep reaches the group.

    Returns a rank-0 ``Decomposition`` whose single history entry is the scaled error.
    """
    on_cpu = (torch.device(device) if device is not None else weight.device).type == "cpu"
    with one_thread() if on_cpu else contextlib.nullcontext():
        return _sparsegpt(weight, gram, config, blocksize, percdamp, device)


def _sparsegpt(weight, gram, config, blocksize, percdamp, device) -> Decomposition:
    cfg = config.replace(rank_ratio=0.0)
    if weight.dim() != 2:
        raise ConfigError(f"a weight must be a matrix (d_out, d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    check_shape(d_out, d_in, cfg)
    check_gram(gram, d_in, percdamp)
    dev = torch.device(device) if device is not None else weight.device
    w = weight.detach().to(device=dev, dtype=torch.float32).clone()
    if not torch.isfinite(w).all():
        raise ConfigError("a weight matrix contains NaN or inf: the model's weights are damaged")
    w0 = w.clone()
    # An input that never fires: its weights do nothing, so they score 0 and are pruned first.
    w[:, torch.diagonal(gram).to(dev) <= 0] = 0.0
    u_chol = _inverse_cholesky(shrunk_gram(gram.to(dev), cfg.shrink or 0.0), percdamp).to(torch.float32)

    nm = cfg.nm
    if nm is not None:
        blocksize = max(nm[1], blocksize // nm[1] * nm[1])
    # prunes per matrix ("layer") or per row ("row"; unused for N:M)
    prune = d_out * d_in - sparse_budget(d_out, d_in, cfg) if cfg.sparsity == "layer" else d_in - row_keep(d_in, cfg)

    q_all = torch.zeros_like(w)
    _sweep(w, q_all, u_chol, cfg, blocksize, prune)

    diag = torch.diagonal(gram).to(device=dev, dtype=torch.float32)
    scale = input_scale(diag, d_in, cfg.eps, device=dev)
    a2 = float((w0 * scale).square().sum())
    e2 = float(((w0 - q_all) * scale).square().sum())
    s2 = float((q_all * scale).square().sum())
    hist = History(error=[(e2 / max(a2, 1e-30)) ** 0.5], sparse_energy=[s2 / max(a2, 1e-30)], lowrank_energy=[0.0])
    return Decomposition(sparse=q_all, u=w.new_zeros(d_out, 0), v=w.new_zeros(0, d_in), scale=scale,
                         singular_values=w.new_zeros(0), history=hist, config=cfg)


@register(Method(
    name="sparsegpt",
    working_copies=5.5,  # measured: see registry.Method.working_copies
    title="SparseGPT",
    description="sparse only: OBS weight updates on the full input Gram matrix (SparseGPT)",
    budget_note="rank 0; each row keeps d_in - floor(d_in rho) entries, its prunes spread over the column "
                "blocks by cumulative rounding and chosen by w^2 / [H^-1]_jj, kept weights updated by OBS "
                "(per matrix for 'layer'; N of every M for N:M)",
    statistics="gram",
    uses_shrink=True,
))
def compress(weights, second_moments, grams, config: OatsConfig, device=None) -> list[Decomposition]:
    """SparseGPT on every matrix of the block, each with its input Gram, on every core (``map_on_cores``)."""
    return map_on_cores(lambda a: sparsegpt(a[0], a[1], config, device=device), zip(weights, grams),
                        cost=lambda a: matrix_cost(a[0]), device=device,
                        item_bytes=lambda a: 4 * (5.5 * a[0].numel() + 2 * a[1].numel()))  # working copies + Gram
