"""Is the project's best method best on every domain? OATS, SparseGPT and HASSLE-free side by side.

For each embedded model, at one compression rate (default ρ 0.5), default settings (the default
calibration: the mix of every domain; each method's defaults; the model's κ), the primary
metric on each domain's held-out part:

- smollm2-135m: perplexity; the goal is HASSLE-free at least ``--margin`` (5%) below both OATS
  and SparseGPT (row budgets) on **every** text domain;
- minilm-l6, dinov2-small: cosine to the dense model; the goal is HASSLE-free highest on every
  domain.

The runs go through ``oats.runner.sweep`` (so they are made once under ``--root`` and reused by
the next call, and ``oats sweep`` with the same settings finds them). Prints one table per
model with the margin of HASSLE-free over the better of OATS and SparseGPT on each domain, and
exits 1 when a goal is missed.

Run: .venv/bin/python benchmarks/domains.py [--models smollm2-135m,minilm-l6,dinov2-small]
     [--compression 0.5] [--root runs] [--margin 0.05]
"""

from __future__ import annotations

import argparse
import sys
import time

from oats.resources import cpu_name

METHODS = ("oats", "sparsegpt", "hassle")
BEST = "hassle"


def margins(rows: list[dict], primary: str, higher: bool, domains: list[str]) -> dict[str, dict]:
    """Per domain: each method's value, the best rival (OATS or SparseGPT), and HASSLE-free's
    relative margin over it (positive: better)."""
    both = {r["method"]: r for r in rows if r.get("mode") == "both" and r["method"] in METHODS}
    out = {}
    for d in ["mean", *domains]:
        key = primary if d == "mean" else f"{primary}@{d}"
        vals = {m: both[m].get(key) for m in METHODS if m in both}
        rivals = {m: v for m, v in vals.items() if m != BEST and v is not None}
        best_rival = (max if higher else min)(rivals, key=rivals.get) if rivals else None
        mine = vals.get(BEST)
        if best_rival is None or mine is None:
            out[d] = {"values": vals, "rival": best_rival, "margin": None}
            continue
        r = rivals[best_rival]
        margin = (mine - r) / abs(r) if higher else (r - mine) / r
        out[d] = {"values": vals, "rival": best_rival, "margin": margin}
    return out


def goal_met(table: dict[str, dict], task: str, margin: float) -> list[str]:
    """The domains where the goal is missed (empty: met): a perplexity at least ``margin``
    below the better rival's, or a cosine above both rivals'."""
    missed = []
    for d, row in table.items():
        if d == "mean":
            continue
        m = row["margin"]
        ok = m is not None and (m >= margin if task == "causal-lm" else m > 0)
        if not ok:
            missed.append(d)
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m,minilm-l6,dinov2-small")
    ap.add_argument("--compression", type=float, default=0.5)
    ap.add_argument("--root", default=None, help="runs root (default: $OATS_RUNS_DIR or ./runs)")
    ap.add_argument("--margin", type=float, default=0.05, help="perplexity goal: this much below both rivals")
    args = ap.parse_args()
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine

    from oats.corpora import title
    from oats.evaluation import PRIMARY_METRIC, per_domain
    from oats.models.zoo import load_model, preset_available
    from oats.runner.sweep import sweep

    t_all = time.perf_counter()
    missed_any = False
    print(f"CPU: {cpu_name()}; rho {args.compression}; methods {', '.join(METHODS)} at their defaults")
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        ok, how = preset_available(model)
        if not ok:
            print(f"{model} is not installed: {how}", file=sys.stderr)
            return 2
        t = time.perf_counter()
        loaded = load_model(model)
        result = sweep(model, methods=list(METHODS), compression=[args.compression], root=args.root, loaded=loaded,
                       log=lambda line: print("  " + line, flush=True))
        primary, higher = PRIMARY_METRIC[loaded.task]
        dense = next(r for r in result.rows if r["method"] == "dense")
        domains = list(per_domain(dense, primary))
        table = margins(result.rows, primary, higher, domains)
        print(f"\n{model}: {primary} ({'higher' if higher else 'lower'} is better) on each domain's held-out part, "
              f"{time.perf_counter() - t:.0f} s")
        head = ["method"] + [("mean" if d == "mean" else title(d)) for d in table]
        print(" | ".join(head))
        print(" | ".join(["dense"] + [f"{dense[primary if d == 'mean' else f'{primary}@{d}']:.4g}" for d in table]))
        for m in METHODS:
            print(" | ".join([m] + [("—" if table[d]["values"].get(m) is None else f"{table[d]['values'][m]:.4g}")
                                    for d in table]))
        print(" | ".join([f"{BEST} vs the better rival"] + [
            "—" if table[d]["margin"] is None else f"{100 * table[d]['margin']:+.1f}% vs {table[d]['rival']}"
            for d in table]))
        missed = goal_met(table, loaded.task, args.margin)
        goal = (f"at least {100 * args.margin:.0f}% lower perplexity than OATS and SparseGPT"
                if loaded.task == "causal-lm" else "the highest cosine")
        if missed:
            missed_any = True
            print(f"GOAL MISSED on {', '.join(missed)}: {BEST} does not have {goal} there")
        else:
            print(f"goal met: {BEST} has {goal} on every domain")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s on {cpu_name()}")
    return 1 if missed_any else 0


if __name__ == "__main__":
    sys.exit(main())
