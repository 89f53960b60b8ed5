"""Larger than memory: peak RSS of compressing a 300M+ parameter model whole and from disk.

Writes a random Llama-style model (fp32, one safetensors shard per block, a word-level
tokenizer) once to --folder, then compresses it twice with the same quick setting, each in a
fresh process, one after the other:

  memory     the whole model loaded (``oats compress`` as usual);
  from disk  each block read from its shard just before its turn and dropped once saved
             (``--from-disk``), under a cap: the process's RSS above its baseline after the
             imports (interpreter, torch, transformers and its Llama code, accelerate: about
             0.75 GB whatever the model) may not exceed a third of the model's fp32 size.
             This process reads the child's VmRSS every 5 ms and kills it at once past the
             cap; the child's VmHWM (the kernel's exact peak) is checked against it after.

Prints, per mode: peak RSS, the baseline after imports, what the compression added, the
pre-flight estimate (margin included) and the wall time; then whether every block file of
the two runs is byte for byte the same.
Run: .venv/bin/python benchmarks/from_disk.py [--method wanda] [--folder /tmp/oats-llama-300m]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's oats, also for the children (run from REPO)

from benchmarks._common import run_watched, write_tokenizer  # noqa: E402

CHILD = r"""
import json, os, sys, time
from oats.config import OatsConfig  # first: oats sets OMP_WAIT_POLICY before torch loads
import torch, transformers, safetensors, accelerate  # the libraries, with the model's own modeling code:
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # they are the baseline
import transformers.models.llama.modeling_llama
from oats.runner.execute import execute
from oats.runner.request import CompressRequest


def status(key):  # kB -> MB, this process's own
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024


folder, out, method, from_disk, samples, seq_len = sys.argv[1:7]
from_disk = from_disk == "1"
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # the peak from here on
    f.write("5")
print(json.dumps({"base_mb": base}), flush=True)  # the parent's watch starts from here
cfg = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=2)
req = CompressRequest(folder, cfg, method, calib_samples=int(samples), seq_len=int(seq_len), evaluate=False,
                      from_disk=from_disk)
t = time.perf_counter()
outcome = execute(req, out, if_exists="replace")
print(json.dumps({"peak_mb": status("VmHWM"), "base_mb": base, "seconds": time.perf_counter() - t,
                  "blocks": len(outcome.run.blocks)}), flush=True)
"""

def write_model(folder: Path, hidden: int, inter: int, layers: int, vocab: int, seed: int = 0) -> int:
    """A random Llama-style model, one shard per block (written block by block: little memory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    heads, kv = hidden // 64, max(hidden // 256, 1)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    cfg.save_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    kvd = kv * (hidden // heads)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    weight_map, total, numel = {}, 0, 0
    shards = [("model-embed.safetensors", {"model.embed_tokens.weight": rnd(vocab, hidden)})]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append((f"model-block{i:03d}.safetensors", {
            p + "self_attn.q_proj.weight": rnd(hidden, hidden), p + "self_attn.k_proj.weight": rnd(kvd, hidden),
            p + "self_attn.v_proj.weight": rnd(kvd, hidden), p + "self_attn.o_proj.weight": rnd(hidden, hidden),
            p + "mlp.gate_proj.weight": rnd(inter, hidden), p + "mlp.up_proj.weight": rnd(inter, hidden),
            p + "mlp.down_proj.weight": rnd(hidden, inter),
            p + "input_layernorm.weight": torch.ones(hidden), p + "post_attention_layernorm.weight": torch.ones(hidden)}))
    shards.append(("model-head.safetensors", {"model.norm.weight": torch.ones(hidden), "lm_head.weight": rnd(vocab, hidden)}))
    for name, tensors in shards:
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        for k, t in tensors.items():
            weight_map[k] = name
            total += t.numel() * 4
            numel += t.numel()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))
    write_tokenizer(folder)
    return numel


def estimate_mb(folder: Path, method: str, tokens: int, from_disk: bool) -> float:
    from oats.compress.preflight import estimate_compression_memory
    from oats.models import zoo
    from oats.models.adapters import get_adapter
    from oats.resources import COMPRESSION_MARGIN

    lazy = zoo.load_model(str(folder), from_disk=True)  # shapes only: cheap whatever the size
    adapter = get_adapter(lazy.model)
    parts = estimate_compression_memory(adapter, lazy.model, adapter.blocks(lazy.model), tokens, method,
                                        from_disk=from_disk)
    return COMPRESSION_MARGIN * sum(parts.values()) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "oats-llama-300m"))
    ap.add_argument("--method", default="wanda", help="wanda, or oats (run at two iterations)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=26)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--keep", action="store_true", help="keep the run folders (the model folder is always kept)")
    args = ap.parse_args()
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine
    folder = Path(args.folder)
    if not (folder / "config.json").is_file():
        print(f"writing a random Llama-style model to {folder} ...", flush=True)
        write_model(folder, args.hidden, args.intermediate, args.layers, args.vocab)
    from oats.models.weights import DiskWeights
    disk = DiskWeights(folder)
    fp32_mb = disk.fp32_bytes / 2**20
    cap_mb = fp32_mb / 3
    print(f"model: {disk.numel / 1e6:.0f}M parameters, {fp32_mb:.0f} MB in fp32; cap for the from-disk run: "
          f"{cap_mb:.0f} MB above the baseline after imports; {args.method}, {args.calib_samples} x {args.seq_len} "
          "calibration tokens")
    tokens = args.calib_samples * args.seq_len
    work = Path(tempfile.mkdtemp(prefix="oats-from-disk-"))
    results = {}
    try:
        for mode, from_disk, cap in (("memory", "0", 0.0), ("from disk", "1", cap_mb)):
            out = work / mode.replace(" ", "-")
            p = run_watched([sys.executable, "-c", CHILD, str(folder), str(out), args.method, from_disk,
                             str(args.calib_samples), str(args.seq_len)], cap)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            if p.returncode != 0 or not lines or "peak_mb" not in lines[-1]:
                last = lines[-1] if lines else (p.stderr.strip().splitlines() or [str(p.returncode)])[-1]
                print(f"{mode:10s} failed: {last}")
                return 1
            r = json.loads(lines[-1])
            r["estimate_mb"] = estimate_mb(folder, args.method, tokens, from_disk == "1")
            results[mode] = r
        print(f"\n{'mode':10s} {'peak RSS':>9s} {'baseline':>9s} {'added':>8s} {'estimate':>9s} {'cap':>7s} {'time':>7s}")
        for mode, r in results.items():
            cap = f"{cap_mb:5.0f}MB" if mode == "from disk" else "-"
            print(f"{mode:10s} {r['peak_mb']:7.0f}MB {r['base_mb']:7.0f}MB {r['peak_mb'] - r['base_mb']:6.0f}MB "
                  f"{r['estimate_mb']:7.0f}MB {cap:>7s} {r['seconds']:6.1f}s")
        a, b = results["memory"], results["from disk"]
        print(f"from disk / memory, added memory: {(b['peak_mb'] - b['base_mb']) / (a['peak_mb'] - a['base_mb']):.2f}x; "
              f"time: {b['seconds'] / a['seconds']:.2f}x")
        print(f"from-disk peak within the cap (VmHWM): {b['peak_mb'] - b['base_mb'] <= cap_mb}")
        names = sorted(p.name for p in (work / "memory").glob("block_*.safetensors"))
        same = len(names) == args.layers and all(
            (work / "memory" / n).read_bytes() == (work / "from-disk" / n).read_bytes() for n in names)
        print(f"block files identical in both modes: {same} ({len(names)} blocks)")
        return 0 if same else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
