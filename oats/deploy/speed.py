"""How fast an export runs here, beside the floor this machine sets.

``machine_floors`` measures the two limits (memory bandwidth by copying a large tensor,
the fp32 GEMM rate by a square matmul); ``floor_seconds`` says which one binds a step that
reads some bytes of weights and does some FLOPs. ``compare_speed`` times a run's dense
model against its sparse export, in turn in each round, for the app's Deploy page; the
fuller comparison is ``benchmarks/inference.py``.
"""

from __future__ import annotations

import inspect
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

from oats import resources
from oats.compress.records import CompressionRun
from oats.deploy import kernels
from oats.data import evaluation_sentences, evaluation_text, sentence_batches
from oats.deploy.export import export_run, load_compressed, sparse_modules


def median_time(fn: Callable[[], object], rounds: int = 5) -> float:
    """Median seconds of ``fn()`` over ``rounds`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def machine_floors(mb: int = 256, gemm: int = 2048) -> dict:
    """{"bandwidth": bytes/s of a tensor copy (read + write), "gemm": fp32 FLOP/s of a square matmul}."""
    x = torch.randn(mb * 2**18)
    y = torch.empty_like(x)
    copy_s = median_time(lambda: y.copy_(x), 7)
    a, b = torch.randn(gemm, gemm), torch.randn(gemm, gemm)
    gemm_s = median_time(lambda: a @ b, 5)
    return {"bandwidth": 2 * x.numel() * 4 / copy_s, "gemm": 2 * gemm**3 / gemm_s}


def floor_seconds(nbytes: float, flops: float, floors: dict) -> tuple[float, str]:
    """The least time a step can take: its weights streamed at the bandwidth ("B") or its FLOPs
    at the GEMM rate ("C"), whichever is longer."""
    b, c = nbytes / floors["bandwidth"], flops / floors["gemm"]
    return (b, "B") if b >= c else (c, "C")


def weight_cost(model: nn.Module, paths) -> tuple[int, int]:
    """(bytes read, multiply-adds) per token by the linears at ``paths`` (plus a causal LM's head).

    A sparse layer counts its values, indices and factors as read and nnz + factor entries as
    multiply-adds; a dense one its weight."""
    sp = sparse_modules(model)
    nbytes = macs = 0
    for p in paths:
        if p in sp:
            nbytes += sp[p].nbytes()
            macs += sp[p].params
        else:
            w = model.get_submodule(p).weight
            nbytes += w.numel() * w.element_size()
            macs += w.numel()
    head = getattr(model, "lm_head", None)
    if head is not None:
        nbytes += head.weight.numel() * head.weight.element_size()
        macs += head.weight.numel()
    return nbytes, macs


def decode_seconds(model: nn.Module, prompt: torch.Tensor, new: int) -> float:
    """Seconds for ``new`` greedy tokens after ``prompt`` with the KV cache (prefill not counted)."""
    # transformers >= 5.2x names the key-value cache ``cache``; earlier versions ``past_key_values``
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        past, nxt = getattr(out, key), out.logits[:, -1:].argmax(-1)
        t = time.perf_counter()
        for _ in range(new):
            out = model(input_ids=nxt, use_cache=True, **{key: past})
            past, nxt = getattr(out, key), out.logits[:, -1:].argmax(-1)
        return time.perf_counter() - t


def forward_kwargs(model: nn.Module, batch: dict) -> dict:
    kw = dict(batch)
    if "input_ids" in kw and getattr(getattr(model, "config", None), "use_cache", None) is not None:
        kw["use_cache"] = False
    return kw


def _workload(run: CompressionRun, new_tokens: int):
    """(unit, items per call, tokens per call, fn(model) -> seconds) for the run's task."""
    loaded = run.loaded
    task = getattr(loaded, "task", None)
    if task == "causal-lm":
        prompt = torch.tensor([loaded.tokenizer(evaluation_text())["input_ids"][:16]])
        return "tokens/s (batch-1 greedy decode)", new_tokens, 1, lambda m: decode_seconds(m, prompt, new_tokens)
    if task == "encoder":
        batch = sentence_batches(loaded.tokenizer, evaluation_sentences()[:8], batch_size=8)[0]
        items, tokens = 8, batch["input_ids"].numel()  # padding is computed too
    else:
        size = getattr(loaded, "image_size", None) or 224
        batch = {"pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))}
        patch = 14 if "dinov2" in type(run.model).__name__.lower() else 16
        items, tokens = 1, 1 + (size // patch) ** 2

    def call(m):
        with torch.no_grad():
            t = time.perf_counter()
            if type(m).__module__.startswith("timm"):
                m(batch["pixel_values"])
            else:
                m(**forward_kwargs(m, batch))
            return time.perf_counter() - t
    unit = "sentences/s (batch 8)" if task == "encoder" else "images/s (batch 1)"
    return unit, items, tokens, call


def compare_speed(run: CompressionRun, rounds: int = 3, new_tokens: int = 16,
                  progress: Callable[[float, str], None] | None = None, goal: str = "smallest") -> dict:
    """Throughput of the run's dense model and of its sparse export loaded for ``goal``
    (``oats/deploy/plan.py``: "smallest" or "fastest"), timed in turn each round.

    Returns {"unit", "dense", "export" (items/s), "floor_dense", "floor_export" (items/s at
    the floor), "bound_dense", "bound_export" ("B" bandwidth or "C" GEMM), "threads", "cpu"
    (the CPU's name and vector extensions), "kernels" (the CSR8 build), "plan" (one line: what
    the loader chose per layer) and "plan_rows" (per layer shape)}. The run's model is left in
    the mode it was in.
    """
    say = progress or (lambda f, m: None)
    say(0.0, "measuring this machine's bandwidth and GEMM rate")
    floors = machine_floors(mb=128, gemm=1024)
    say(0.15, "exporting the run (sparse layout)")
    unit, items, tokens, call = _workload(run, new_tokens)
    with tempfile.TemporaryDirectory(prefix="oats-speed-") as tmp:
        export_run(run, f"{tmp}/export", "sparse")
        say(0.2, f"loading it for the goal '{goal}' (the first time on this machine, each layer shape is measured)")
        model = load_compressed(f"{tmp}/export", goal=goal, tokens=tokens)
    paths = list(run.modules())
    times = {"dense": [], "export": []}
    with run.use_mode("dense"):
        head = weight_cost(run.model, [])  # the head only; the block linears' dense weights added here
        dense_cost = (head[0] + sum(m.weight.numel() * m.weight.element_size() for m in run.modules().values()),
                      head[1] + sum(m.weight.numel() for m in run.modules().values()))
        variants = {"dense": run.model, "export": model}
        for m in variants.values():
            call(m)
        for r in range(rounds):
            for k, m in variants.items():
                say(0.3 + 0.7 * (2 * r + (k == "export")) / (2 * rounds), f"round {r + 1} of {rounds}: {k}")
                times[k].append(call(m))
    say(1.0, "done")
    out = {"unit": unit, "threads": torch.get_num_threads(),
           "cpu": f"{resources.cpu_name()} ({', '.join(resources.vector_extensions()) or 'no vector extensions'})",
           "kernels": kernels.backend_note(), "plan": model.oats_plan.summary(), "plan_rows": model.oats_plan.rows()}
    for k, cost in (("dense", dense_cost), ("export", weight_cost(model, paths))):
        # one call: ``tokens`` tokens through every layer (decoding: once per new token)
        steps = new_tokens if unit.startswith("tokens") else 1
        fl, bound = floor_seconds(cost[0], 2 * cost[1] * tokens, floors)
        out[k] = items / statistics.median(times[k])
        out[f"floor_{k}"] = items / (fl * steps)
        out[f"bound_{k}"] = bound
    return out
