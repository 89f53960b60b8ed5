"""Held-out perplexity of SmolLM2-135M compressed by each method at the default settings.

The paper's ordering on a language model, checked on the embedded one: at ρ 0.5 with the
default calibration (16 windows of 256 tokens), iterations (80) and rank ratio (0.25),
held-out perplexity must come out dense < OATS < Wanda < magnitude. Each method compresses
a fresh copy of the same loaded model on the same calibration batches; every model is
evaluated on the same default evaluation split (``oats.evaluation``). SparseGPT is measured
too (``--methods``), for the README's comparison; it is not part of the ordering.

A benchmark rather than a test: compressing SmolLM2 at the default settings and evaluating
four models takes minutes. The tests compare OATS and Wanda layer by layer on SmolLM2 at
smaller settings (tests/test_integration.py).

Prints one line per model and a table; exits 1 when the ordering does not hold.
Run: .venv/bin/python benchmarks/quality.py [--compression 0.5] [--methods oats,wanda,magnitude]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

ORDER = ("dense", "oats", "wanda", "magnitude")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compression", type=float, default=0.5)
    ap.add_argument("--methods", default="oats,wanda,magnitude",
                    help="comma-separated; the ordering is checked on those of oats, wanda, magnitude given")
    args = ap.parse_args()
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine

    from oats import OatsConfig, compress_model
    from oats.data import calibration_batches
    from oats.evaluation import evaluate_model
    from oats.models.zoo import load_model, preset_available

    ok, how = preset_available("smollm2-135m")
    if not ok:
        print(f"smollm2-135m is not installed: {how}", file=sys.stderr)
        return 2
    loaded = load_model("smollm2-135m")
    batches = calibration_batches(loaded)
    cfg = OatsConfig(compression=args.compression, rank_ratio=loaded.default_rank_ratio)
    rows = [{"model": "dense", "perplexity": evaluate_model(loaded.model, loaded)["perplexity"], "seconds": 0.0}]
    print(f"dense: perplexity {rows[0]['perplexity']:.2f}", flush=True)
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        t = time.perf_counter()
        run = compress_model(copy.deepcopy(loaded.model), batches, cfg, method=method, model_name="smollm2-135m")
        seconds = time.perf_counter() - t
        ppl = evaluate_model(run.model, loaded)["perplexity"]
        rows.append({"model": method, "perplexity": ppl, "seconds": seconds})
        print(f"{method}: perplexity {ppl:.2f} (compressed in {seconds:.0f} s)", flush=True)
        del run

    ppl = {r["model"]: r["perplexity"] for r in rows}
    checked = [m for m in ORDER if m in ppl]
    holds = all(ppl[a] < ppl[b] for a, b in zip(checked, checked[1:]))
    print(f"\nSmolLM2-135M, ρ {args.compression}, κ {loaded.default_rank_ratio}, default calibration "
          f"({sum(int(b['input_ids'].numel()) for b in batches)} tokens) and evaluation\n")
    print("| model | held-out perplexity | compression s |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['perplexity']:.2f} | {r['seconds']:.0f} |")
    print(f"\nordering {' < '.join(checked)}: {'holds' if holds else 'DOES NOT HOLD'}")
    return 0 if holds else 1


if __name__ == "__main__":
    sys.exit(main())
