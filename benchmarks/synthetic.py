"""Synthetic mid-size models: random-weight Llama checkpoints laid out as ``save_pretrained``
writes them, for benchmarks at a scale no embedded model has.

``write_llama(folder, "8b")`` writes Llama-3.1-8B's shapes (32 blocks, hidden 4096, MLP 14336,
32 heads, 8 key-value heads, vocabulary 128256, untied head), ``"1b"`` Llama-3.2-1B's (16 blocks,
hidden 2048, MLP 8192, 32 heads, 8 key-value heads, vocabulary 128256, head tied to the
embedding); ``blocks=`` keeps the shapes with fewer blocks. Like ``save_pretrained``:
bf16 shards ``model-0000i-of-0000N.safetensors`` of at most 5 GB (tensors in the model's own
order), ``model.safetensors.index.json`` (weight_map, metadata.total_size), ``config.json``
(torch_dtype bfloat16) and a tokenizer that loads offline (``_common.write_tokenizer``).
The rotary scaling of the real models (rope_scaling "llama3") is left out: it changes no shape.

Each shard is written tensor by tensor and each tensor in chunks of rows (the safetensors
header is computed from the shapes first), so memory stays at one chunk, never a shard or the
model: the 8B (16 GB on disk) is written in a few hundred MB. Weights: normal, std 0.02, bf16,
every chunk from its own fixed seed (the same folder whatever the chunking of another run);
norms: ones. A folder written completely before (the index is written last, and every shard
has its expected size) is reused as it is.

Run: .venv/bin/python benchmarks/synthetic.py 8b --folder /tmp/oats-mid/8b [--blocks N]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_tokenizer  # noqa: E402

SHAPES = {
    "8b": dict(blocks=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256, tied=False,
               rope_theta=500000.0),
    "1b": dict(blocks=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8, vocab=128256, tied=True,
               rope_theta=500000.0),
}
"""Llama-3.1-8B and Llama-3.2-1B, as their config.json files give them."""
MAX_SHARD_BYTES = 5 * 10**9
"""``save_pretrained``'s default max_shard_size ("5GB")."""
CHUNK_ELEMENTS = 1 << 24
"""Rows are generated this many weights at a time (64 MB in fp32)."""
STD = 0.02


def tensors(shape: dict, blocks: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor, in the model's state_dict order."""
    h, inter, heads, kv = shape["hidden"], shape["intermediate"], shape["heads"], shape["kv_heads"]
    kvd = kv * (h // heads)
    out = [("model.embed_tokens.weight", (shape["vocab"], h))]
    for i in range(shape["blocks"] if blocks is None else blocks):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kvd, h)),
                (p + "self_attn.v_proj.weight", (kvd, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                (p + "mlp.down_proj.weight", (h, inter)),
                (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    out.append(("model.norm.weight", (h,)))
    if not shape["tied"]:
        out.append(("lm_head.weight", (shape["vocab"], h)))
    return out


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def shards(names: list[tuple[str, tuple[int, ...]]]) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split in order into shards of at most ``MAX_SHARD_BYTES`` (bf16), as save_pretrained does."""
    out, size = [[]], 0
    for name, dims in names:
        b = 2 * _numel(dims)
        if out[-1] and size + b > MAX_SHARD_BYTES:
            out.append([])
            size = 0
        out[-1].append((name, dims))
        size += b
    return out


def _header(items) -> bytes:
    """The safetensors header of these bf16 tensors, in this order, padded to 8 bytes."""
    head, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dims in items:
        n = 2 * _numel(dims)
        head[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_tensor(f, name: str, dims: tuple[int, ...], seed: int, index: int) -> None:
    import torch
    if len(dims) == 1 or name.endswith("norm.weight"):
        f.write(torch.ones(dims, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
        return
    rows, cols = dims
    step = max(CHUNK_ELEMENTS // cols, 1)
    for k, r0 in enumerate(range(0, rows, step)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + index * 10_007 + k)
        chunk = (torch.randn(min(step, rows - r0), cols, generator=g) * STD).to(torch.bfloat16)
        f.write(chunk.view(torch.int16).numpy().tobytes())


def _config(shape: dict, blocks: int):
    from transformers import LlamaConfig
    h = shape["hidden"]
    cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=h, intermediate_size=shape["intermediate"],
                      num_hidden_layers=blocks, num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv_heads"], head_dim=h // shape["heads"],
                      max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=shape["rope_theta"],
                      tie_word_embeddings=shape["tied"], bos_token_id=128000, eos_token_id=128001,
                      architectures=["LlamaForCausalLM"])
    cfg.dtype = "bfloat16"
    return cfg


def complete(folder: Path) -> bool:
    """Whether ``folder`` holds a model this module finished writing: its index (written last)
    and every shard it names at the size its header and data take."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file() or not (folder / "config.json").is_file():
        return False
    try:
        meta = json.loads(index.read_text())
        want = meta["metadata"]["shard_sizes"]
        return all((folder / n).is_file() and (folder / n).stat().st_size == s for n, s in want.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_llama(folder: str | Path, size: str = "8b", blocks: int | None = None, seed: int = 0) -> dict:
    """Write (or reuse) the synthetic model; returns {"folder", "params", "bytes", "seconds", "reused"}."""
    folder = Path(folder)
    shape = SHAPES[size]
    n_blocks = shape["blocks"] if blocks is None else int(blocks)
    names = tensors(shape, n_blocks)
    params = sum(_numel(d) for _, d in names)
    if complete(folder):
        cfg = json.loads((folder / "config.json").read_text())
        if cfg.get("num_hidden_layers") == n_blocks and cfg.get("hidden_size") == shape["hidden"]:
            return {"folder": str(folder), "params": params, "bytes": 2 * params, "seconds": 0.0, "reused": True}
    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors.index.json").unlink(missing_ok=True)  # not complete until rewritten
    parts = shards(names)
    weight_map, sizes, index = {}, {}, 0
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        with open(folder / fname, "wb") as f:
            f.write(_header(part))
            for name, dims in part:
                _write_tensor(f, name, dims, seed, index)
                weight_map[name] = fname
                index += 1
        sizes[fname] = (folder / fname).stat().st_size
    _config(shape, n_blocks).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())  # as the real checkpoints' config.json say it
    (folder / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16"}, indent=2, sort_keys=True))
    write_tokenizer(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 2 * params, "shard_sizes": sizes}, "weight_map": weight_map}, indent=2))
    return {"folder": str(folder), "params": params, "bytes": 2 * params, "seconds": time.perf_counter() - t,
            "reused": False}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("size", choices=sorted(SHAPES))
    ap.add_argument("--folder", required=True, help="where to write it (under /tmp: the 8B takes 16 GB)")
    ap.add_argument("--blocks", type=int, default=None, help="fewer blocks, same shapes")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    r = write_llama(args.folder, args.size, args.blocks)
    what = "reused" if r["reused"] else f"written in {r['seconds']:.0f} s"
    print(f"{args.size}: {r['params'] / 1e9:.2f} B parameters, {r['bytes'] / 1e9:.1f} GB bf16 at {r['folder']} ({what})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
