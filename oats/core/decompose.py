"""OATS for one weight matrix: pure functions on tensors, no hooks, no model knowledge.

Notation (Zhang & Papyan, ICLR 2025): W is (d_out, d_in), D = diag(sqrt(E[x_j^2])) the input
scale, A = W D the scaled weight. Alternating thresholding finds S (sparse) and L (rank r)
minimising ||A - S - L||_F, then unscales: S' = S D^-1, L' = L D^-1.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from oats.config import OatsConfig, exact_rate
from oats.errors import ConfigError
from oats.resources import map_on_cores, one_thread

# Fast solver: extra columns carried by the subspace iteration beyond the rank.
_OVERSAMPLE = 8
# Fast solver: never stop before this many iterations (the first ones move the most).
_MIN_ITERS = 8
# Fast solver: momentum on the sparse term fed to the SVD step (restarted when it overshoots).
_MOMENTUM = 0.8


# ----------------------------------------------------------------------------- budgets


# Every budget is the floor of an exact rational (rates through ``exact_rate``), so a product
# that is an integer on paper is that integer here: 80 x 0.2 keeps 64, not 65.


def rank_budget(d_out: int, d_in: int, config: OatsConfig) -> int:
    """r = floor(kappa * density * d_out * d_in / (d_out + d_in)), as the reference computes it."""
    return math.floor(exact_rate(config.rank_ratio) * config.kept * d_out * d_in / (d_out + d_in))


def prune_fraction(config: OatsConfig) -> Fraction:
    """Fraction of the *sparse term's* entries set to zero: 1 - (1 - kappa) * density, exactly."""
    return 1 - (1 - exact_rate(config.rank_ratio)) * config.kept


def row_keep(d_in: int, config: OatsConfig) -> int:
    """Entries each row of the sparse term keeps (row-wise): d_in - floor(d_in * prune_fraction)."""
    return d_in - math.floor(d_in * prune_fraction(config))


def sparse_budget(d_out: int, d_in: int, config: OatsConfig) -> int:
    """Total non-zeros allowed in the sparse term for this matrix."""
    nm = config.nm
    if nm is not None:
        return d_out * (d_in // nm[1]) * nm[0]
    if config.sparsity == "layer":
        n = d_out * d_in
        return n - math.floor(n * prune_fraction(config))
    return d_out * row_keep(d_in, config)


def dense_budget(d_out: int, d_in: int, config: OatsConfig) -> int:
    """floor(density * d_out * d_in): the parameters a matrix may keep under the rate."""
    return math.floor(config.kept * d_out * d_in)


def lowrank_rank(d_out: int, d_in: int, config: OatsConfig) -> int:
    """r = floor(density d_out d_in / (d_out + d_in)): the whole budget spent on rank.

    Never above min(d_out, d_in): d_out d_in / (d_out + d_in) < min(d_out, d_in)."""
    return math.floor(config.kept * d_out * d_in / (d_out + d_in))


def check_shape(d_out: int, d_in: int, config: OatsConfig) -> None:
    """Raise ConfigError when the pattern cannot apply to a (d_out, d_in) matrix."""
    nm = config.nm
    if nm is not None and d_in % nm[1] != 0:
        raise ConfigError(
            f"sparsity {config.sparsity} needs the input size to be a multiple of {nm[1]}, "
            f"but a layer has d_in = {d_in}: choose an M that divides it"
        )


def input_scale(second_moments: torch.Tensor | None, d_in: int, eps: float,
                device=None) -> torch.Tensor:
    """D as a (d_in,) fp32 vector: sqrt of the mean squared input, floored at eps * mean(D).

    ``None`` means unscaled (D = 1).
    """
    if second_moments is None:
        return torch.ones(d_in, dtype=torch.float32, device=device)
    m2 = second_moments.detach().to(device=device, dtype=torch.float32).reshape(-1)
    if m2.numel() != d_in:
        raise ConfigError(f"second_moments has {m2.numel()} entries but the weight has d_in = {d_in}")
    if not torch.isfinite(m2).all():
        raise ConfigError("input statistics contain NaN or inf: check the model's activations on the calibration data")
    d = m2.clamp_min(0).sqrt()
    mean = d.mean()
    if mean <= 0:  # nothing ever fired: fall back to unscaled
        return torch.ones_like(d)
    return d.clamp_min(eps * mean)


# ----------------------------------------------------------------------------- projections


def top_k_mask(mag: torch.Tensor, k: int, largest: bool = True) -> torch.Tensor:
    """Bool mask of the k largest (or smallest) entries of each slice along the last dim.

    Exactly k per slice; ties at the threshold go to the lowest indices. Only the k-th value
    comes from topk (a value, the same whatever the algorithm or thread count), the rest
    from comparisons and a running count, so the mask is a function of the values alone.
    """
    n = mag.shape[-1]
    if k <= 0:
        return torch.zeros_like(mag, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(mag, dtype=torch.bool)
    vals = mag.topk(k, dim=-1, largest=largest, sorted=False).values
    thr = vals.amin(-1, keepdim=True) if largest else vals.amax(-1, keepdim=True)
    kept = mag >= thr if largest else mag <= thr
    if bool((kept.sum(-1) == k).all()):  # no slice ties at its threshold: the usual case
        return kept
    strict = mag > thr if largest else mag < thr
    tied = mag == thr
    need = k - strict.sum(-1, keepdim=True)
    return strict | (tied & (tied.cumsum(-1) <= need))


def hard_threshold(r: torch.Tensor, config: OatsConfig) -> torch.Tensor:
    """Keep the largest-magnitude entries of r (..., d_out, d_in) allowed by the budget.

    Exact counts even with ties, which go to the lowest index (``top_k_mask``), so the
    result depends on the values only: never on the thread count or the selection algorithm.
    """
    d_out, d_in = r.shape[-2:]
    nm = config.nm
    if nm is not None:
        n, m = nm
        g = r.reshape(*r.shape[:-1], d_in // m, m)
        return (g * top_k_mask(g.abs(), n)).reshape(r.shape)
    if config.sparsity == "layer":
        k = sparse_budget(d_out, d_in, config)
        flat = r.reshape(*r.shape[:-2], d_out * d_in)
        return (flat * top_k_mask(flat.abs(), k)).reshape(r.shape)
    k = row_keep(d_in, config)
    if k >= d_in:
        return r.clone()
    if k <= 0:
        return torch.zeros_like(r)
    if r.device.type == "cpu" and r.dtype == torch.float32:
        return _row_threshold_cpu(r, k)
    return r * top_k_mask(r.abs(), k)


def _row_threshold_cpu(r: torch.Tensor, k: int) -> torch.Tensor:
    """Row-wise top-k by magnitude on the CPU, through numpy's introselect.

    np.partition finds each row's k-th largest |r| several times faster than torch.topk
    here; a comparison then builds the mask. Rows with ties at the threshold (more than k
    entries >= it) are redone by ``top_k_mask`` (ties to the lowest index), so each row keeps
    exactly k.
    """
    d_in = r.shape[-1]
    mag_t = r.detach().abs()
    mag = mag_t.numpy().reshape(-1, d_in)
    thr = np.partition(mag, d_in - k, axis=1)[:, d_in - k: d_in - k + 1]
    mask_t = mag_t >= torch.from_numpy(thr).reshape(*r.shape[:-1], 1)
    mask = mask_t.numpy().reshape(-1, d_in)
    tied = np.nonzero(np.count_nonzero(mask, axis=1) != k)[0]
    if tied.size:  # (a view of mask_t: the write carries through)
        mask[tied] = top_k_mask(torch.from_numpy(mag[tied]), k).numpy()
    return r * mask_t  # (several times faster than torch.where here)


# ----------------------------------------------------------------------------- result


@dataclass
class History:
    """Per iteration (after its S step), all relative to ||W D||_F^2 or ||W D||_F.

    error[t]          = ||(W - S' - L') D||_F / ||W D||_F   (the scaled relative error)
    sparse_energy[t]  = ||S||_F^2 / ||W D||_F^2
    lowrank_energy[t] = ||L||_F^2 / ||W D||_F^2
    """

    error: list[float] = field(default_factory=list)
    sparse_energy: list[float] = field(default_factory=list)
    lowrank_energy: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"error": self.error, "sparse_energy": self.sparse_energy, "lowrank_energy": self.lowrank_energy}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(list(d["error"]), list(d["sparse_energy"]), list(d["lowrank_energy"]))


@dataclass
class Decomposition:
    """W ~ sparse + u @ v, all unscaled (in the weight's own units).

    sparse: (d_out, d_in), zeros where pruned.  u: (d_out, r).  v: (r, d_in).
    scale: D, (d_in,).  singular_values: (r,) of the *scaled* low-rank term L = (u @ v) D.
    """

    sparse: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    scale: torch.Tensor
    singular_values: torch.Tensor
    history: History
    config: OatsConfig

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])

    @property
    def nnz(self) -> int:
        return int(torch.count_nonzero(self.sparse))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.sparse.shape)

    @property
    def iterations(self) -> int:
        return len(self.history.error)

    @property
    def error(self) -> float:
        """Final scaled relative error."""
        return self.history.error[-1]

    @property
    def params(self) -> int:
        """Parameters stored: nnz(S) + r * (d_out + d_in) (index storage not counted)."""
        d_out, d_in = self.shape
        return self.nnz + self.rank * (d_out + d_in)

    def lowrank(self) -> torch.Tensor:
        return self.u @ self.v

    def dense(self) -> torch.Tensor:
        """The compressed weight sparse + u @ v, (d_out, d_in)."""
        return self.sparse + self.u @ self.v


# ----------------------------------------------------------------------------- solvers


def _record(hists: list[History], a_norm2: torch.Tensor, err2: torch.Tensor, s_norm2: torch.Tensor,
            l_norm2: torch.Tensor) -> None:
    """Append one iteration to each batch member's history (squared norms in, ratios out)."""
    rows = torch.stack([err2, s_norm2, l_norm2], dim=1) / a_norm2.clamp_min(1e-30).unsqueeze(1)
    for h, (e, se, le) in zip(hists, rows.tolist()):
        h.error.append(math.sqrt(max(e, 0.0)))
        h.sparse_energy.append(se)
        h.lowrank_energy.append(le)


def _exact_l(target: torch.Tensor, r: int, p: int):
    """Best rank-r approximation by a full SVD. Returns (U*s, Vh, s, basis of the top p)."""
    u, sv, vh = torch.linalg.svd(target, full_matrices=False)
    return u[..., :r] * sv[..., :r].unsqueeze(-2), vh[..., :r, :], sv[..., :r], u[..., :p]


def _subspace_l(target: torch.Tensor, r: int, q: torch.Tensor):
    """Rank-r approximation of ``target`` (m, n) from a warm start: q (m, p) spans (about) its
    top-p left singular space from the previous iteration.

    One half step of subspace iteration (P = orth(target^T q)), then Rayleigh-Ritz on the
    right: the best rank-r approximation of target P P^T, through the eigenvectors of the
    small (p, p) matrix C^T C with C = target P. Two (m, n, p) products per call instead of
    a full SVD; the SVD's input changes little between iterations, so this tracks it.
    Returns (U*s, Vh, s, next q).
    """
    pz, _ = torch.linalg.qr(target.transpose(-2, -1) @ q)   # (n, p)
    c = target @ pz                                        # (m, p)
    evals, w = torch.linalg.eigh(c.transpose(-2, -1) @ c)
    evals, w = evals.flip(-1), w.flip(-1)                  # descending
    sv = evals.clamp_min(0).sqrt()
    cw = c @ w                                             # = U diag(sv)
    vh = (pz @ w[..., :r]).transpose(-2, -1)
    return cw[..., :r], vh, sv[..., :r], cw / sv.clamp_min(1e-30 + 1e-7 * sv[..., :1]).unsqueeze(-2)


def _initial_basis(target: torch.Tensor, p: int, steps: int = 4) -> torch.Tensor:
    """A (m, p) orthonormal basis near the top-p left singular space (randomized range finder)."""
    g = torch.Generator(device=target.device).manual_seed(0)
    omega = torch.randn(*target.shape[:-2], target.shape[-1], p, generator=g, device=target.device,
                        dtype=target.dtype)
    q, _ = torch.linalg.qr(target @ omega)
    for _ in range(steps - 1):
        q, _ = torch.linalg.qr(target @ (target.transpose(-2, -1) @ q))
    return q


def _sq(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=(-2, -1)).square()


def _solve(a: torch.Tensor, r: int, config: OatsConfig, trace=None):
    """Alternating thresholding on a batch of scaled weights a (B, m, n).

    Exact solver: Algorithm 1 as published (full SVD, then hard threshold, N times).
    Fast solver: the same two projections and the same objective, with (1) the SVD replaced
    by warm-started subspace iteration, (2) momentum on the sparse term fed to the SVD step
    (S + beta (S - S_prev)); an iteration that would not lower the objective is redone with
    an exact SVD and no momentum, so the error history never increases, and (3) a stop once
    the error's relative decrease per iteration, averaged over the last three, is below tol.

    Returns (S, U*s, Vh, s, histories). ``trace`` (optional) receives (iteration, L, S).

    On the CPU it runs on one thread: the SVD, QR and eigendecomposition of the library round
    differently with a different thread count, and hard thresholding turns a rounding
    difference into a different mask, so a decomposition is defined as its one-thread result
    (parallelism comes from solving several matrices at once, ``decompose_many``).
    """
    with one_thread() if a.device.type == "cpu" else contextlib.nullcontext():
        return _alternate(a, r, config, trace)


def _alternate(a: torch.Tensor, r: int, config: OatsConfig, trace=None):
    """The body of ``_solve``, on the threads the caller gives it."""
    bsz, m, n = a.shape
    hists = [History() for _ in range(bsz)]
    a_norm2 = _sq(a)
    if r == 0:
        s = hard_threshold(a, config)
        s2 = _sq(s)
        _record(hists, a_norm2, _sq(a - s), s2, torch.zeros_like(s2))
        if trace is not None:
            trace(1, torch.zeros_like(a), s)
        return s, a.new_zeros(bsz, m, 0), a.new_zeros(bsz, 0, n), a.new_zeros(bsz, 0), hists

    def finish(us, vh):
        """S step for a given L = us @ vh: (S, ||R - S||^2, ||S||^2) with R = A - L."""
        resid = torch.baddbmm(a, us, vh, alpha=-1.0)
        s_new = hard_threshold(resid, config)
        # ||R - S||^2 directly: ||R||^2 - ||S||^2 (equal on paper) cancels in fp32 when the
        # error is small (0.3% off at a relative error of 0.005)
        return s_new, _sq(resid - s_new), _sq(s_new)

    fast = config.solver == "fast"
    p = min(r + _OVERSAMPLE, m, n)
    s = s_prev = torch.zeros_like(a)
    errs: list[torch.Tensor] = []
    for t in range(config.iterations):
        if not fast:
            us, vh, sv, q = _exact_l(a - s, r, p)
        elif t == 0:
            us, vh, sv, q = _subspace_l(a, r, _initial_basis(a, p))
        else:
            target = torch.add(a - s, s_prev - s, alpha=_MOMENTUM)  # A - (S + beta (S - S_prev))
            us, vh, sv, q = _subspace_l(target, r, q)
        s_new, err2, s_n2 = finish(us, vh)
        if fast and t > 0:
            bad = err2 > errs[-1] * (1 + 1e-6)
            if bool(bad.any()):
                ex = _exact_l(a - s, r, p)
                ex_finish = finish(ex[0], ex[1])
                sel = bad.view(-1, 1, 1)
                us, vh, q, s_new = (torch.where(sel, y, x) for x, y in
                                    ((us, ex[0]), (vh, ex[1]), (q, ex[3]), (s_new, ex_finish[0])))
                sv = torch.where(bad.view(-1, 1), ex[2], sv)
                err2 = torch.where(bad, ex_finish[1], err2)
                s_n2 = torch.where(bad, ex_finish[2], s_n2)
        s_prev, s = s, s_new
        errs.append(err2)
        _record(hists, a_norm2, err2, s_n2, sv.square().sum(-1))
        if trace is not None:
            trace(t + 1, us @ vh, s)
        if fast and t + 1 >= _MIN_ITERS:
            e_now, e_then = errs[-1].sqrt(), errs[-4].sqrt()
            if bool(((e_then - e_now) <= 3 * config.tol * e_now.clamp_min(1e-30)).all()):
                break
    return s, us, vh, sv, hists


WORK_COPIES = 11
"""Peak working memory of one decomposition, in fp32 copies of its matrix (measured 10.7 on an
8192 x 2048 matrix, one thread, fixed mmap threshold; ``registry.Method.working_copies``)."""


def decompose_many(weights: list[torch.Tensor], second_moments: list[torch.Tensor | None],
                   config: OatsConfig, device=None, batched: bool | None = None) -> list[Decomposition]:
    """Decompose several matrices, batching those of the same shape. See ``decompose``.

    ``batched``: solve same-shape matrices as one batch (True) or one at a time (False);
    default (None): batched on a GPU, one at a time on the CPU.

    On the CPU every matrix (or batch) is solved on one thread, and the matrices are spread
    over the threads torch has (``map_on_cores``): the result is the same whatever the
    thread count, the engine or the machine's load (see ``_solve``).
    """
    if len(weights) != len(second_moments):
        raise ValueError("weights and second_moments must have the same length")
    out: list[Decomposition | None] = [None] * len(weights)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(weights):
        if w.dim() != 2:
            raise ConfigError(f"a weight must be a matrix (d_out, d_in), got shape {tuple(w.shape)}")
        groups.setdefault(tuple(w.shape), []).append(i)
    chunks: list[list[int]] = []
    devs: list[torch.device] = []
    for (d_out, d_in), idxs in groups.items():
        check_shape(d_out, d_in, config)
        dev = torch.device(device) if device is not None else weights[idxs[0]].device
        # Batching same-shape matrices pays on a GPU; on the CPU the batch would wait for its
        # slowest member, so matrices go one at a time there.
        batch = dev.type != "cpu" if batched is None else batched
        for chunk in ([idxs] if batch else [[i] for i in idxs]):
            chunks.append(chunk)
            devs.append(dev)

    def solve(j: int) -> list[Decomposition]:
        chunk, dev = chunks[j], devs[j]
        d_out, d_in = weights[chunk[0]].shape
        w = torch.stack([weights[i].detach().to(device=dev, dtype=torch.float32) for i in chunk])
        if not torch.isfinite(w).all():
            raise ConfigError("a weight matrix contains NaN or inf: the model's weights are damaged")
        d = torch.stack([input_scale(second_moments[i], d_in, config.eps, device=dev) for i in chunk])
        a = w * d.unsqueeze(-2)
        r = rank_budget(d_out, d_in, config)
        s, us, vh, sv, hists = _solve(a, r, config)
        inv = (1.0 / d).unsqueeze(-2)
        return [Decomposition(sparse=(s[j] * inv[j]).contiguous(), u=us[j].contiguous(),
                              v=(vh[j] * inv[j]).contiguous(), scale=d[j], singular_values=sv[j].contiguous(),
                              history=hists[j], config=config) for j in range(len(chunk))]

    on_cpu = all(dev.type == "cpu" for dev in devs)
    order = range(len(chunks))
    results = (map_on_cores(solve, order, cost=lambda j: len(chunks[j]) * _cost(weights[chunks[j][0]]),
                            item_bytes=lambda j: WORK_COPIES * 4 * len(chunks[j]) * weights[chunks[j][0]].numel())
               if on_cpu else [solve(j) for j in order])
    for chunk, decs in zip(chunks, results):
        for i, dec in zip(chunk, decs):
            out[i] = dec
    return out  # type: ignore[return-value]


def _cost(w: torch.Tensor) -> int:
    """m n min(m, n): how a decomposition's work grows with the matrix (its SVD-like steps)."""
    m, n = int(w.shape[0]), int(w.shape[1])
    return m * n * min(m, n)


def decompose(weight: torch.Tensor, second_moments: torch.Tensor | None,
              config: OatsConfig | None = None, device=None, trace=None) -> Decomposition:
    """Split one weight matrix into a sparse term plus a low-rank term (OATS, Algorithm 1).

    Args:
        weight: (d_out, d_in) weight, any float dtype; computed in fp32.
        second_moments: (d_in,) mean over calibration tokens of x_j^2, or None for unscaled.
        config: budgets, pattern, iterations and solver; defaults to ``OatsConfig()``.
        device: where to compute (defaults to the weight's device).
        trace: optional callable(iteration, L_scaled, S_scaled) called after each iteration.

    Returns:
        A ``Decomposition`` with unscaled factors and the per-iteration history.
    """
    config = config or OatsConfig()
    if trace is None:
        return decompose_many([weight], [second_moments], config, device=device)[0]
    if weight.dim() != 2:
        raise ConfigError(f"a weight must be a matrix (d_out, d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    check_shape(d_out, d_in, config)
    dev = device if device is not None else weight.device
    w = weight.detach().to(device=dev, dtype=torch.float32)
    d = input_scale(second_moments, d_in, config.eps, device=dev)
    r = rank_budget(d_out, d_in, config)
    s, us, vh, sv, hists = _solve((w * d).unsqueeze(0), r, config,
                                  trace=lambda t, l, s_: trace(t, l[0], s_[0]))
    return Decomposition(sparse=s[0] / d, u=us[0], v=vh[0] / d, scale=d,
                         singular_values=sv[0], history=hists[0], config=config)
