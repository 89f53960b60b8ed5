"""OATS for one weight matrix: pure functions on tensors, no hooks, no model knowledge.

Notation (Zhang & Papyan, ICLR 2025): W is (d_out, d_in), D = diag(sqrt(E[x_j^2])) the input
scale, A = W D the scaled weight. Alternating thresholding finds S (sparse) and L (rank r)
minimising ||A - S - L||_F, then unscales: S' = S D^-1, L' = L D^-1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .config import OatsConfig
from .errors import ConfigError

# Fast solver: extra columns carried by the subspace iteration beyond the rank.
_OVERSAMPLE = 8
# Fast solver: never stop before this many iterations (the first ones move the most).
_MIN_ITERS = 8


# ----------------------------------------------------------------------------- budgets


def rank_budget(d_out: int, d_in: int, config: OatsConfig) -> int:
    """r = floor(kappa * density * d_out * d_in / (d_out + d_in)), as the reference computes it."""
    return int(config.rank_ratio * config.density * (d_out * d_in) / (d_out + d_in))


def prune_fraction(config: OatsConfig) -> float:
    """Fraction of the *sparse term's* entries set to zero: 1 - (1 - kappa) * density."""
    return 1.0 - (1.0 - config.rank_ratio) * config.density


def row_keep(d_in: int, config: OatsConfig) -> int:
    """Entries each row of the sparse term keeps (row-wise): d_in - floor(d_in * prune_fraction)."""
    return d_in - int(d_in * prune_fraction(config))


def sparse_budget(d_out: int, d_in: int, config: OatsConfig) -> int:
    """Total non-zeros allowed in the sparse term for this matrix."""
    nm = config.nm
    if nm is not None:
        return d_out * (d_in // nm[1]) * nm[0]
    if config.sparsity == "layer":
        n = d_out * d_in
        return n - int(n * prune_fraction(config))
    return d_out * row_keep(d_in, config)


def check_shape(d_out: int, d_in: int, config: OatsConfig) -> None:
    """Raise ConfigError when the pattern cannot apply to a (d_out, d_in) matrix."""
    nm = config.nm
    if nm is not None and d_in % nm[1] != 0:
        raise ConfigError(
            f"sparsity {config.sparsity} needs the input size to be a multiple of {nm[1]}, "
            f"but a layer has d_in = {d_in}: choose an M that divides it"
        )


def input_scale(input_sq_norms: torch.Tensor | None, d_in: int, eps: float,
                device=None) -> torch.Tensor:
    """D as a (d_in,) fp32 vector: sqrt of the mean squared input, floored at eps * mean(D).

    ``None`` means unscaled (D = 1).
    """
    if input_sq_norms is None:
        return torch.ones(d_in, dtype=torch.float32, device=device)
    m2 = input_sq_norms.detach().to(device=device, dtype=torch.float32).reshape(-1)
    if m2.numel() != d_in:
        raise ConfigError(f"input_sq_norms has {m2.numel()} entries but the weight has d_in = {d_in}")
    if not torch.isfinite(m2).all():
        raise ConfigError("input statistics contain NaN or inf: check the model's activations on the calibration data")
    d = m2.clamp_min(0).sqrt()
    mean = d.mean()
    if mean <= 0:  # nothing ever fired: fall back to unscaled
        return torch.ones_like(d)
    return d.clamp_min(eps * mean)


# ----------------------------------------------------------------------------- projections


def hard_threshold(r: torch.Tensor, config: OatsConfig) -> torch.Tensor:
    """Keep the largest-magnitude entries of r (..., d_out, d_in) allowed by the budget.

    Exact counts even with ties (indices come from topk, never from a value comparison).
    """
    d_out, d_in = r.shape[-2:]
    nm = config.nm
    if nm is not None:
        n, m = nm
        g = r.reshape(*r.shape[:-1], d_in // m, m)
        idx = g.abs().topk(n, dim=-1, sorted=False).indices
        out = torch.zeros_like(g).scatter_(-1, idx, g.gather(-1, idx))
        return out.reshape(r.shape)
    if config.sparsity == "layer":
        k = sparse_budget(d_out, d_in, config)
        flat = r.reshape(*r.shape[:-2], d_out * d_in)
        idx = flat.abs().topk(k, dim=-1, sorted=False).indices
        return torch.zeros_like(flat).scatter_(-1, idx, flat.gather(-1, idx)).reshape(r.shape)
    k = row_keep(d_in, config)
    if k >= d_in:
        return r.clone()
    if k <= 0:
        return torch.zeros_like(r)
    if 2 * k > d_in:  # cheaper to select what is dropped
        idx = r.abs().topk(d_in - k, dim=-1, largest=False, sorted=False).indices
        return r.scatter(-1, idx, 0.0)
    idx = r.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(r).scatter_(-1, idx, r.gather(-1, idx))


def _truncated_svd(a: torch.Tensor, r: int):
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u[..., :r], s[..., :r], vh[..., :r, :]


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


def _record(hist: History, a_norm2: torch.Tensor, resid: torch.Tensor, s: torch.Tensor, l_norm2: torch.Tensor):
    """Append one iteration to each batch member's history (batched: lists of History)."""
    err = resid.pow(2).sum(dim=(-2, -1))
    se = s.pow(2).sum(dim=(-2, -1))
    for i, h in enumerate(hist):
        an = float(a_norm2[i]) or 1.0
        h.error.append(math.sqrt(float(err[i]) / an))
        h.sparse_energy.append(float(se[i]) / an)
        h.lowrank_energy.append(float(l_norm2[i]) / an)


def _solve(a: torch.Tensor, r: int, config: OatsConfig, trace=None):
    """Alternating thresholding on a batch of scaled weights a (B, m, n).

    Returns (S, U*s, Vh, s, histories). ``trace`` (optional callable) receives
    (iteration, L, S) after every iteration: the walkthrough uses it.
    """
    bsz, m, n = a.shape
    hists = [History() for _ in range(bsz)]
    a_norm2 = a.pow(2).sum(dim=(-2, -1))
    s = torch.zeros_like(a)
    if r == 0:
        s = hard_threshold(a, config)
        _record(hists, a_norm2, a - s, s, torch.zeros(bsz))
        empty_u = a.new_zeros(bsz, m, 0)
        if trace is not None:
            trace(1, torch.zeros_like(a), s)
        return s, empty_u, a.new_zeros(bsz, 0, n), a.new_zeros(bsz, 0), hists

    fast = config.solver == "fast"
    p = min(r + _OVERSAMPLE, min(m, n))
    q = None
    prev_err = None
    for t in range(config.iterations):
        resid_target = a - s  # what the SVD sees
        if not fast or t == 0:
            u, sv, vh = torch.linalg.svd(resid_target, full_matrices=False)
            if fast:
                q = u[..., :p]
            u, sv, vh = u[..., :r], sv[..., :r], vh[..., :r, :]
        else:
            # One step of subspace iteration from the previous subspace, then Rayleigh-Ritz:
            # the target changes little between iterations, so this tracks the top-r space.
            y = resid_target @ (resid_target.transpose(-2, -1) @ q)
            q, _ = torch.linalg.qr(y)
            b = q.transpose(-2, -1) @ resid_target
            ub, sb, vhb = torch.linalg.svd(b, full_matrices=False)
            q = q @ ub
            u, sv, vh = q[..., :r], sb[..., :r], vhb[..., :r, :]
        us = u * sv.unsqueeze(-2)
        low = us @ vh
        r_after_l = a - low
        s = hard_threshold(r_after_l, config)
        resid = r_after_l - s
        _record(hists, a_norm2, resid, s, sv.pow(2).sum(-1))
        if trace is not None:
            trace(t + 1, low, s)
        if fast:
            err = torch.tensor([h.error[-1] for h in hists])
            if prev_err is not None and t + 1 >= _MIN_ITERS:
                if bool(((prev_err - err) <= config.tol * prev_err.clamp_min(1e-30)).all()):
                    break
            prev_err = err
    return s, us, vh, sv, hists


def decompose_many(weights: list[torch.Tensor], input_sq_norms: list[torch.Tensor | None],
                   config: OatsConfig, device=None) -> list[Decomposition]:
    """Decompose several matrices, batching those of the same shape. See ``decompose``."""
    if len(weights) != len(input_sq_norms):
        raise ValueError("weights and input_sq_norms must have the same length")
    out: list[Decomposition | None] = [None] * len(weights)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(weights):
        if w.dim() != 2:
            raise ConfigError(f"a weight must be a matrix (d_out, d_in), got shape {tuple(w.shape)}")
        groups.setdefault(tuple(w.shape), []).append(i)
    for (d_out, d_in), idxs in groups.items():
        check_shape(d_out, d_in, config)
        dev = device if device is not None else weights[idxs[0]].device
        w = torch.stack([weights[i].detach().to(device=dev, dtype=torch.float32) for i in idxs])
        if not torch.isfinite(w).all():
            raise ConfigError("a weight matrix contains NaN or inf: the model's weights are damaged")
        d = torch.stack([input_scale(input_sq_norms[i], d_in, config.eps, device=dev) for i in idxs])
        a = w * d.unsqueeze(-2)
        r = rank_budget(d_out, d_in, config)
        s, us, vh, sv, hists = _solve(a, r, config)
        inv = (1.0 / d).unsqueeze(-2)
        for j, i in enumerate(idxs):
            out[i] = Decomposition(
                sparse=(s[j] * inv[j]).contiguous(),
                u=us[j].contiguous(),
                v=(vh[j] * inv[j]).contiguous(),
                scale=d[j],
                singular_values=sv[j].contiguous(),
                history=hists[j],
                config=config,
            )
    return out  # type: ignore[return-value]


def decompose(weight: torch.Tensor, input_sq_norms: torch.Tensor | None,
              config: OatsConfig | None = None, device=None, trace=None) -> Decomposition:
    """Split one weight matrix into a sparse term plus a low-rank term (OATS, Algorithm 1).

    Args:
        weight: (d_out, d_in) weight, any float dtype; computed in fp32.
        input_sq_norms: (d_in,) mean over calibration tokens of x_j^2, or None for unscaled.
        config: budgets, pattern, iterations and solver; defaults to ``OatsConfig()``.
        device: where to compute (defaults to the weight's device).
        trace: optional callable(iteration, L_scaled, S_scaled) called after each iteration.

    Returns:
        A ``Decomposition`` with unscaled factors and the per-iteration history.
    """
    config = config or OatsConfig()
    if trace is None:
        return decompose_many([weight], [input_sq_norms], config, device=device)[0]
    if weight.dim() != 2:
        raise ConfigError(f"a weight must be a matrix (d_out, d_in), got shape {tuple(weight.shape)}")
    d_out, d_in = weight.shape
    check_shape(d_out, d_in, config)
    dev = device if device is not None else weight.device
    w = weight.detach().to(device=dev, dtype=torch.float32)
    d = input_scale(input_sq_norms, d_in, config.eps, device=dev)
    r = rank_budget(d_out, d_in, config)
    s, us, vh, sv, hists = _solve((w * d).unsqueeze(0), r, config,
                                  trace=lambda t, l, s_: trace(t, l[0], s_[0]))
    return Decomposition(sparse=s[0] / d, u=us[0], v=vh[0] / d, scale=d,
                         singular_values=sv[0], history=hists[0], config=config)
