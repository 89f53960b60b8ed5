"""Is the exported model smaller, and is it faster? Dense vs sparse exports, measured side by side.

For each embedded model and each rate ρ: an OATS run (κ at the model's default) and, for
SmolLM2, a Wanda run of the same rate, each exported in the sparse layout (``oats export``,
S in CSR8 + U, V) and loaded with ``oats.load_compressed`` once per kernel (``--kernels``:
oats's CSR8 kernel, the default, on this machine's backend, and torch's CSR). Then, in this one
process:

* the machine's floors: memory bandwidth (a large tensor copy) and fp32 GEMM rate;
* the CPU sparse kernels on SmolLM2's layer shapes: dense, torch CSR (32/64-bit indices;
  ``torch.mv`` for one token, ``torch.mm`` for a batch), torch BSR, scipy's CSR, ONNX
  Runtime's sparse operator and OpenVINO with its sparse-weights option (each when
  installed), and oats's CSR8 kernel on each backend it has here, C and numba (hot cache: one
  matrix, called again and again);
* memory: bytes of the block linears (values, indices, factors, biases all counted) and
  bytes on disk, dense vs export; peak and final RSS of a fresh process that loads the
  model and runs it once;
* speed, every variant of a model timed in turn in each round (interleaved, so a busy
  machine slows them alike), median over rounds: SmolLM2 batch-1 greedy decode (32-token
  prompt, 64 new tokens, KV cache) and prefill of 256 tokens; MiniLM sentences/s at batch 1
  and 32; DINOv2 images/s at batch 1 and 16. Beside each, the floor: the time to stream the
  weights a step reads at the measured bandwidth, or its linear-layer FLOPs at the measured
  GEMM rate, whichever is larger (the bound that binds: ``B`` or ``C``).

Runs are compressed with few calibration samples and iterations (printed) and kept under
``--root`` so a rerun only measures. Run:
    .venv/bin/python benchmarks/inference.py [--threads 2] [--rounds 3] [--models ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import os

# Serving runs alone: OpenMP threads may spin a little (GOMP_SPINCOUNT, about a hundred µs
# here) before they sleep, instead of sleeping at once as ``import oats`` makes them
# (OMP_WAIT_POLICY=PASSIVE, for shared machines). Between two layers of a decoding step
# the threads would otherwise be woken ~200 times per token; the README measures both.
# Must be set before torch loads its OpenMP runtime; a value you set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import oats  # noqa: E402, F401  (first: it sets OMP_WAIT_POLICY before torch loads)
import torch

from oats import resources
from oats.compress.pipeline import compress_model
from oats.config import OatsConfig
from oats.data import calibration_batches, evaluation_sentences, evaluation_text, sentence_batches
from oats.deploy import kernels as csr8
from oats.deploy.export import (block_linear_bytes, dense_linear_bytes, export_folder_bytes, export_run,
                                load_compressed, size_report)
from oats.deploy.speed import (decode_seconds, floor_seconds, forward_kwargs, machine_floors, median_time,
                               weight_cost)
from oats.models.zoo import load_model
from oats.runs.folders import load_run, save_run
from oats.runs.info import RunInfo

MODELS = ("smollm2-135m", "minilm-l6", "dinov2-small")
CALIB = {"smollm2-135m": dict(n_samples=4, seq_len=256), "minilm-l6": dict(n_samples=32),
         "dinov2-small": dict(n_samples=8)}


def ort_sparse_matmul(s: torch.Tensor, threads: int):
    """S x for x (d_in, n) by ONNX Runtime's CPU sparse operator (com.microsoft
    SparseToDenseMatMul, S as an ORT CSR sparse tensor); None when onnxruntime is missing."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    d_out, d_in = s.shape
    graph = helper.make_graph(
        [helper.make_node("SparseToDenseMatMul", ["A", "B"], ["Y"], domain="com.microsoft")], "spmm",
        [helper.make_sparse_tensor_value_info("A", TensorProto.FLOAT, [d_out, d_in]),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, [d_in, None])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [d_out, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle ORT threads must not slow the others
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    c = s.to_sparse_csr()
    a = ort.OrtValue.ort_value_from_sparse_tensor(ort.SparseTensor.sparse_csr_from_numpy(
        np.array(s.shape, dtype=np.int64), c.values().numpy(), c.col_indices().numpy(), c.crow_indices().numpy(),
        ort.OrtDevice.make("cpu", 0)))

    def run(xt: torch.Tensor):
        return sess.run_with_ort_values(["Y"], {"A": a, "B": ort.OrtValue.ortvalue_from_numpy(xt.numpy())})[0]
    return run


def openvino_matmul(s: torch.Tensor, n: int, threads: int):
    """x S^T compiled by OpenVINO's CPU plugin with its sparse-weights option on
    (CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE 0.5); None when openvino is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    lin = torch.nn.Linear(s.shape[1], s.shape[0], bias=False)
    lin.weight.data = s
    x = torch.zeros(n, s.shape[1])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(lin, example_input=x)
    req = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                                 "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": 0.5}).create_infer_request()
    return lambda xn: req.infer([xn])


def kernel_table(density: float, rounds: int) -> list[dict]:
    """µs per call of x S^T for SmolLM2's shapes, S unstructured at ``density``."""
    import scipy.sparse
    import warnings
    warnings.filterwarnings("ignore", category=UserWarning)
    backends = [b for b in csr8.BACKENDS if b == csr8.backend() or (b == "numba" and csr8._numba_installed())]
    rows = []
    g = torch.Generator().manual_seed(0)
    for d_out, d_in in ((576, 576), (192, 576), (1536, 576), (576, 1536)):
        w = torch.randn(d_out, d_in, generator=g)
        s = w * (torch.rand(d_out, d_in, generator=g) < density)
        c64 = s.to_sparse_csr()
        c32 = torch.sparse_csr_tensor(c64.crow_indices().int(), c64.col_indices().int(), c64.values(), s.shape)
        bsr = s.to_sparse_bsr((16, 16)) if d_out % 16 == 0 and d_in % 16 == 0 else None
        for n in (1, 32):
            x = torch.randn(n, d_in, generator=g)
            xt = x.t().contiguous()
            cands = {"dense": lambda: torch.nn.functional.linear(x, w),
                     "torch CSR int32": (lambda: torch.mv(c32, x[0])) if n == 1 else (lambda: torch.mm(c32, xt)),
                     "torch CSR int64": (lambda: torch.mv(c64, x[0])) if n == 1 else (lambda: torch.mm(c64, xt))}
            if bsr is not None:
                cands["torch BSR 16x16"] = lambda: torch.mm(bsr, xt)
            sc = scipy.sparse.csr_matrix((c32.values().numpy(), c32.col_indices().numpy(), c32.crow_indices().numpy()),
                                         shape=s.shape)
            cands["scipy CSR (1 thread)"] = lambda: sc @ xt.numpy()
            ort_mm = ort_sparse_matmul(s, torch.get_num_threads())
            if ort_mm is not None:
                cands["ONNX Runtime sparse"] = lambda: ort_mm(xt)
            ov_mm = openvino_matmul(s, n, torch.get_num_threads())
            if ov_mm is not None:
                cands["OpenVINO, sparse weights on"] = lambda xn=x.numpy(): ov_mm(xn)
            ptr, off = csr8.csr_to_csr8(c32.crow_indices(), c32.col_indices(), d_out, d_in)
            for name in backends:
                cands[f"oats CSR8 ({'C' if name == 'c' else name})"] = \
                    lambda name=name, vals=c32.values(): csr8.csr8_matmul(ptr, off, vals, d_in, x, using=name)
            times = {k: median_time(f, max(rounds * 10, 20)) * 1e6 for k, f in cands.items()}
            rows.append({"shape": f"{d_out}x{d_in}", "batch": n, **times})
    return rows


def layer_pair(rho: float, rounds: int, kernel_names: list[str]) -> list[dict]:
    """µs per token of one SparseLowRankLinear as OATS fills it at ``rho`` (κ 0.25: S keeps
    (1 - κ)(1 - ρ) of the entries, plus rank r) and as Wanda does (S keeps 1 - ρ, rank 0)."""
    from oats.core.decompose import rank_budget
    from oats.deploy.linear import SparseLowRankLinear, pack_csr
    g = torch.Generator().manual_seed(1)
    rows = []
    for d_out, d_in in ((576, 576), (1536, 576), (576, 1536)):
        w = torch.randn(d_out, d_in, generator=g)
        x = torch.randn(1, d_in, generator=g)
        r = rank_budget(d_out, d_in, OatsConfig(compression=rho, rank_ratio=0.25))
        oats_s = w * (torch.rand(d_out, d_in, generator=g) < 0.75 * (1 - rho))
        wanda_s = w * (torch.rand(d_out, d_in, generator=g) < (1 - rho))
        layers = {"dense": torch.nn.Linear(d_in, d_out, bias=False)}
        for kern in kernel_names:
            tag = "" if kern == kernel_names[0] else f" ({kern})"
            layers.update({
                f"OATS layer{tag}": SparseLowRankLinear(d_out, d_in, **pack_csr(oats_s), u=torch.randn(d_out, r),
                                                        v=torch.randn(r, d_in), kernel=kern),
                f"Wanda layer{tag}": SparseLowRankLinear(d_out, d_in, **pack_csr(wanda_s), u=torch.zeros(d_out, 0),
                                                         v=torch.zeros(0, d_in), kernel=kern),
                f"OATS sparse term alone{tag}": SparseLowRankLinear(d_out, d_in, **pack_csr(oats_s),
                                                                    u=torch.zeros(d_out, 0), v=torch.zeros(0, d_in),
                                                                    kernel=kern)})
        with torch.no_grad():
            rows.append({"shape": f"{d_out}x{d_in}", "rank": r,
                         **{k: median_time(lambda m=m: m(x), max(rounds * 20, 40)) * 1e6 for k, m in layers.items()}})
    return rows


# ----------------------------------------------------------------------------- runs and exports


def ensure_run(root: Path, name: str, method: str, rho: float, iterations: int):
    """The run (compressed once, then reused from ``root``) with the model it was applied to."""
    folder = root / f"{name}-{method}-{rho}"
    loaded = load_model(name)
    cfg = OatsConfig(compression=rho, rank_ratio=loaded.default_rank_ratio if method == "oats" else 0.0,
                     iterations=iterations)
    try:
        info = RunInfo.read(folder)
        if info.complete and info.config == cfg and info.method == method:
            run = load_run(folder, model=loaded.model, model_name=name)
            run.loaded = loaded
            return run
    except oats.OatsError:
        pass
    batches = calibration_batches(loaded, **CALIB[name])
    run = compress_model(loaded.model, batches, cfg, method=method, model_name=name)
    run.loaded = loaded
    save_run(run, folder)
    return run


def inputs(name: str, loaded) -> dict:
    tok = loaded.tokenizer
    if name == "smollm2-135m":
        ids = torch.tensor([tok(evaluation_text())["input_ids"][:256]])
        return {"prompt": ids[:, :32], "prefill": ids}
    if name == "minilm-l6":
        b32 = sentence_batches(tok, evaluation_sentences()[:32], batch_size=32)[0]
        return {"b1": {k: v[:1] for k, v in b32.items()}, "b32": b32}
    g = torch.Generator().manual_seed(0)
    return {"b1": {"pixel_values": torch.randn(1, 3, 224, 224, generator=g)},
            "b16": {"pixel_values": torch.randn(16, 3, 224, 224, generator=g)}}


def main_output(model, batch: dict) -> torch.Tensor:
    out = model(**forward_kwargs(model, batch))
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


# ----------------------------------------------------------------------------- speed


def interleaved(variants: dict, fn, rounds: int) -> dict:
    """Median seconds of ``fn(model)`` per variant, each round timing every variant in turn
    (in an order rotated by one each round)."""
    for m in variants.values():
        fn(m)  # warm-up
    times = {k: [] for k in variants}
    order = list(variants)
    for r in range(rounds):
        # each round starts one variant later, so no variant always follows the same one
        for k in order[r % len(order):] + order[:r % len(order)]:
            times[k].append(fn(variants[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def timed(f):
    def run(m):
        t = time.perf_counter()
        f(m)
        return time.perf_counter() - t
    return run


# ----------------------------------------------------------------------------- RSS in a fresh process


def rss_child(kind: str, target: str, threads: int, kernel: str = "auto") -> dict:
    code = (
        "import json, sys\n"
        "import oats, torch\n"
        f"torch.set_num_threads({threads})\n"
        "def st(k):\n"
        "    with open('/proc/self/status') as f:\n"
        "        return next(int(l.split()[1]) for l in f if l.startswith(k + ':')) / 1024\n"
        "base = st('VmRSS')\n"
        f"kind, target = {kind!r}, {target!r}\n"
        "if kind == 'dense':\n"
        "    from oats.models.zoo import load_model\n"
        "    model = load_model(target).model\n"
        "else:\n"
        f"    model = oats.load_compressed(target, kernel={kernel!r})\n"
        "with torch.no_grad():\n"
        "    if hasattr(model, 'lm_head') or hasattr(model, 'embeddings') and hasattr(model.embeddings, 'word_embeddings'):\n"
        "        model(input_ids=torch.ones(1, 32, dtype=torch.long))\n"
        "    else:\n"
        "        model(pixel_values=torch.zeros(1, 3, 224, 224))\n"
        "print(json.dumps({'base': base, 'rss': st('VmRSS'), 'peak': st('VmHWM')}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr[-1000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def fmt(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rates", default="0.5,0.6")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--root", default="runs/bench-inference")
    ap.add_argument("--kernels", default="csr8,csr", help="SparseLowRankLinear kernels to time each export with")
    ap.add_argument("--goals", default="smallest,fastest",
                    help="load_compressed goals to time each export with (oats/deploy/plan.py): smallest keeps "
                         "every layer sparse, fastest may fold a layer to dense where that measures faster here")
    ap.add_argument("--no-kernels", action="store_true", help="skip the one-matrix kernel tables")
    ap.add_argument("--no-rss", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rates = [float(r) for r in args.rates.split(",")]
    kernel_names = [k.strip() for k in args.kernels.split(",") if k.strip()]
    goals = [g.strip() for g in args.goals.split(",") if g.strip()]
    if "csr8" in kernel_names and not csr8.available():
        print(f"the csr8 kernel cannot run here ({csr8.backend_note()}): skipped", flush=True)
        kernel_names = [k for k in kernel_names if k != "csr8"] or ["csr"]
    t_start = time.perf_counter()
    lines = [f"CPU: {resources.cpu_name()} ({os.cpu_count()} logical cores; {' '.join(resources.vector_extensions())}); "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
             f"{os.environ.get('OMP_WAIT_POLICY')}, GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}; "
             f"runs: {args.iterations} iterations, calibration {json.dumps(CALIB)}; medians of {args.rounds} rounds; "
             f"CSR8 kernels: {csr8.backend_note()}"]
    floors = machine_floors()
    lines.append(f"machine: memory bandwidth {floors['bandwidth'] / 1e9:.1f} GB/s (copy of 256 MB), "
                 f"fp32 GEMM {floors['gemm'] / 1e9:.1f} GFLOP/s (2048^3)")
    print(lines[-2], lines[-1], sep="\n", flush=True)

    if not args.no_kernels:
        rows = kernel_table(0.375, args.rounds)
        names = [k for k in rows[0] if k not in ("shape", "batch")]
        lines += ["", "Kernels, x S^T for S unstructured at 37.5% density (ρ 0.5, κ 0.25), µs (× dense):", "",
                  "| shape | batch | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for r in rows:
            lines.append(f"| {r['shape']} | {r['batch']} | " + " | ".join(
                f"{r[k]:.0f}" + ("" if k == "dense" else f" ({r[k] / r['dense']:.2f}×)") for k in names) + " |")
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
        pair = layer_pair(0.6, args.rounds, kernel_names)
        names = [k for k in pair[0] if k not in ("shape", "rank")]
        lines += ["", "One layer at ρ 0.6, one token (batch 1), as each method fills it, µs (× Wanda layer):", "",
                  "| shape | rank | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for r in pair:
            lines.append(f"| {r['shape']} | {r['rank']} | " + " | ".join(
                f"{r[k]:.0f} ({r[k] / r['Wanda layer' + k[k.index(' ('):] if k.endswith(')') else 'Wanda layer']:.2f}×)"
                for k in names) + " |")
        print("\n".join(lines[-len(pair) - 4:]), flush=True)

    mem_rows, speed_rows, checks, plans = [], [], [], []
    with torch.no_grad():
        for name in models:
            variants_meta = [("oats", r) for r in rates] + ([("wanda", r) for r in rates] if name == "smollm2-135m" else [])
            dense_loaded = load_model(name)
            dense = dense_loaded.model
            feed = inputs(name, dense_loaded)
            check_batch = {"input_ids": feed["prefill"][:, :64]} if name == "smollm2-135m" else feed["b1"]
            # the rows a call feeds each layer, that the plan measures at: decoding's one token;
            # one sentence or one image otherwise (its batched workload has more, dense wins more)
            per_call = 1 if name == "smollm2-135m" else (
                feed["b1"]["input_ids"].numel() if "input_ids" in feed["b1"] else 1 + (224 // 14) ** 2)
            exports, paths, sizes = {}, None, {}
            for method, rho in variants_meta:
                run = ensure_run(root, name, method, rho, args.iterations)
                with run.use_mode("both"):
                    ref = main_output(run.model, check_batch)
                folder = export_run(run, root / "exports" / f"{name}-{method}-{rho}", "sparse", force=True)
                paths = list(run.modules())
                sizes[f"{method} {rho}"] = size_report(run)
                del run
                for kern in kernel_names:
                    for goal in goals:
                        label = (f"{method} {rho}" + ("" if kern == kernel_names[0] else f" {kern}")
                                 + ("" if goal == goals[0] else f" {goal}"))
                        model = load_compressed(folder, kernel=kern, goal=goal, tokens=per_call)
                        plans.append(f"{name} {label}: {model.oats_plan.summary()}")
                        got = main_output(model, check_batch)
                        checks.append((name, f"{method} {kern} {goal}", rho,
                                       float((got - ref).abs().max() / ref.abs().max())))
                        exports[label] = (folder, model, kern)
            dense_bytes = dense_linear_bytes(dense, paths)
            rss = {} if args.no_rss else {"dense": rss_child("dense", name, args.threads)}
            for label, (folder, model, kern) in exports.items():
                if label.endswith(tuple(f" {g}" for g in goals[1:])):
                    continue  # memory is the first goal's (smallest: the export's own layout); see the plans
                if not args.no_rss:
                    rss[label] = rss_child("export", str(folder), args.threads, kern)
                assert block_linear_bytes(model) == sizes[" ".join(label.split()[:2])][f"sparse_{kern}"]
                mem_rows.append({"model": name, "variant": label, "linear_mb": block_linear_bytes(model) / 1e6,
                                 "linear_disk_mb": sizes[" ".join(label.split()[:2])]["sparse_disk"] / 1e6,
                                 "dense_mb": dense_bytes / 1e6, "disk_mb": export_folder_bytes(folder) / 1e6,
                                 "dense_disk_mb": sum(p.numel() * 4 for p in dense.parameters()) / 1e6,
                                 "rss": rss.get(label), "dense_rss": rss.get("dense")})
            variants = {"dense": dense, **{k: m for k, (_, m, _) in exports.items()}}
            cost = {k: weight_cost(m, paths) for k, m in variants.items()}
            if name == "smollm2-135m":
                n = args.new_tokens
                dec = interleaved(variants, lambda m: decode_seconds(m, feed["prompt"], n), args.rounds)
                speed_rows.append(("SmolLM2 decode, tok/s (batch 1, 32-token prompt, 64 new)",
                                   {k: (n / s, n / (floor_seconds(cost[k][0], 2 * cost[k][1], floors)[0] * n),
                                        floor_seconds(cost[k][0], 2 * cost[k][1], floors)[1]) for k, s in dec.items()}))
                L = feed["prefill"].shape[1]
                pre = interleaved(variants, timed(lambda m: m(input_ids=feed["prefill"], use_cache=False)), args.rounds)
                speed_rows.append((f"SmolLM2 prefill, tok/s ({L} tokens)",
                                   {k: (L / s, L / floor_seconds(cost[k][0], 2 * cost[k][1] * L, floors)[0],
                                        floor_seconds(cost[k][0], 2 * cost[k][1] * L, floors)[1]) for k, s in pre.items()}))
            else:
                unit = "sentences/s" if name == "minilm-l6" else "images/s"
                for key in [k for k in feed]:
                    batch = feed[key]
                    items = next(iter(batch.values())).shape[0]
                    # every position is computed, padding included
                    tokens = batch["input_ids"].numel() if "input_ids" in batch else items * (1 + (224 // 14) ** 2)
                    sec = interleaved(variants, timed(lambda m, b=batch: main_output(m, b)), args.rounds)
                    speed_rows.append((f"{'MiniLM' if name == 'minilm-l6' else 'DINOv2'} {unit}, batch {items}",
                                       {k: (items / s, items / floor_seconds(cost[k][0], 2 * cost[k][1] * tokens, floors)[0],
                                            floor_seconds(cost[k][0], 2 * cost[k][1] * tokens, floors)[1])
                                        for k, s in sec.items()}))
            for row in speed_rows[-2:]:
                print(row[0], {k: f"{v[0]:.2f} (floor {v[1]:.1f} {v[2]})" for k, v in row[1].items()}, flush=True)
            del dense, exports, variants

    lines += ["", "Per-layer plans (load_compressed goal; oats/deploy/plan.py):", ""] + [f"* {p}" for p in plans]
    lines += ["", "Exports equal their run's sparse + low-rank mode (max |diff| / max |ref| on one evaluation batch):",
              "; ".join(f"{n} {m} {r}: {d:.1e}" for n, m, r, d in checks)]
    lines += ["", "Memory (block linears: values, indices, factors, biases; RSS of a fresh process after loading "
              "and one forward pass, less its RSS before loading (Python, torch, transformers), peak in brackets):", "",
              "| model | variant | block linears in memory MB (× dense) | block linears on disk MB (× dense) "
              "| all weights on disk MB (× dense) | RSS − baseline MB, dense [peak] | export [peak] (× dense) |",
              "|---|---|---|---|---|---|---|"]
    for r in mem_rows:
        rss = ("", "")
        if r["rss"]:
            d, e = ({k: v - x["base"] for k, v in x.items()} for x in (r["dense_rss"], r["rss"]))
            rss = (f"{d['rss']:.0f} [{d['peak']:.0f}]", f"{e['rss']:.0f} [{e['peak']:.0f}] "
                   f"({e['rss'] / d['rss']:.2f}×, peak {e['peak'] / d['peak']:.2f}×)")
        lines.append(f"| {r['model']} | {r['variant']} | {r['linear_mb']:.1f} of {r['dense_mb']:.1f} "
                     f"({r['linear_mb'] / r['dense_mb']:.2f}×) | {r['linear_disk_mb']:.1f} "
                     f"({r['linear_disk_mb'] / r['dense_mb']:.2f}×) | {r['disk_mb']:.1f} of {r['dense_disk_mb']:.1f} "
                     f"({r['disk_mb'] / r['dense_disk_mb']:.2f}×) | {rss[0]} | {rss[1]} |")
    lines += ["", "Speed, median of interleaved rounds (× dense) [floor, B: bandwidth-bound, C: GEMM-bound; "
              "the share of its own floor each variant reaches]:", ""]
    for title, vals in speed_rows:
        keys = list(vals)
        lines.append(f"| {title} | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        lines.append("| measured [floor] | " + " | ".join(
            f"{fmt(v[0])}" + ("" if k == "dense" else f" ({v[0] / vals['dense'][0]:.2f}×)")
            + f" [{fmt(v[1])} {v[2]}, {100 * v[0] / v[1]:.0f}%]"
            for k, v in vals.items()) + " |")
        for kern in kernel_names:
            tag = "" if kern == kernel_names[0] else f" {kern}"
            for rho in rates:
                o, w = f"oats {rho}{tag}", f"wanda {rho}{tag}"
                if o in vals and w in vals:
                    lines.append(f"| OATS / Wanda at ρ {rho}, {kern} kernel | {vals[o][0] / vals[w][0]:.2f}× |"
                                 + " |" * (len(keys) - 1))
        lines.append("")
    lines.append(f"total {time.perf_counter() - t_start:.0f} s")
    text = "\n".join(lines)
    print("\n" + text)
    out = Path("artifacts")
    out.mkdir(exist_ok=True)
    (out / "bench-inference.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
