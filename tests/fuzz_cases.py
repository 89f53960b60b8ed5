"""Fuzzing the loaders of shared files (issue 21, "Hostile input"): tampered exports and run
folders, generated from valid tiny ones, run one by one in a worker process that may crash.

Pieces (used by ``tests/test_fuzz.py`` and ``benchmarks/fuzz.py``):

``build_seeds(root)``   the valid originals, built once: a tiny Llama compressed with OATS, saved as
                        a run folder, exported sparse (CSR8, format 2), sparse in CSR (format 1)
                        and folded.
``gen_case(ch, inv)``   a case: a seed kind and one to three mutations, as plain JSON (so a case
                        is its own reproduction). ``ch`` draws the choices: ``RandomChooser``
                        (seeded, for the long campaign) or ``DrawChooser`` (hypothesis).
``make_case``           a seed copied and mutated on disk; ``judge`` then says, from the files
                        alone, how severe the result is: ``same`` (nothing that matters changed),
                        ``lenient`` (valid, maybe different), ``suspect`` (may load only to the
                        untampered outputs) or ``invalid`` (must be refused).
``Worker``              a long-lived ``python tests/fuzz_cases.py --worker SEEDS`` subprocess fed
                        one request per line; it prints ``starting N`` before each, so a dead
                        worker ("crash") or a silent one ("hang") is pinned to its case.
``classify``            the worker's report and the severity as one outcome: loaded, refused
                        (good), or raw (any other exception), silent (a wrong load), multiline
                        (an OatsError of more than one line), crash, hang, oom (an allocation
                        past the worker's address-space cap) and code_ran (the folder's own
                        Python ran: it writes a marker file) (failures).
``KNOWN``, ``REGRESSIONS``  the issue's reported cases and what the campaigns found, run first.

A load that succeeds is followed by two forward passes on a fixed input: a silent
out-of-bounds read shows up as outputs that differ between the two, or are not finite; the
kernels of one export (csr8, csr, auto) must agree with each other.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

KINDS = ("sparse", "csr", "folded", "run")
OPS = {"sparse": ("csr8", "csr", "auto"), "csr": ("csr8", "csr", "auto"), "folded": ("auto",),
       "run": ("info", "list", "load_run")}
FOLDER = {"sparse": "export", "csr": "export", "folded": "export", "run": "run"}
GOOD = ("loaded", "refused")
FAILURES = ("raw", "silent", "multiline", "crash", "hang", "oom", "code_ran")
OUTCOMES = GOOD + FAILURES
SEVERITY = ("same", "lenient", "suspect", "invalid")
TOLERANCE = 1e-5
MEMORY_CAP = 6 * 1024**3  # the worker's address space: an allocation past it is reported as "oom"

DTYPES = ("int8", "int16", "int32", "int64", "uint8", "float16", "float64", "bool", "float32", "bfloat16")
INDEX_VALUES = ("-1", "255", "256", "300", "1e9", "2^31-1", "d_in", "nnz+1", "decrease", "0", "2^63-1",
                "shift", "swap", "dup")  # the last three keep the arrays plausible: pointers monotone, values in range
HEADER_LENGTHS = ("0", "1", "7", "2^64-1", "2^63", "size", "size+1", "1e9", "header-1", "header+1")
JSON_OPS = ("wrong_type", "missing", "huge_float", "huge_int", "int_2^63", "infinity", "nan", "deep", "root",
            "huge_string", "corrupt", "negative", "empty_container", "bool", "small_int", "large_int", "swap",
            "float", "string", "alias")
STRINGS = ("eager", "flash_attention_2", "sdpa", "timm", "LlamaModel", "LlamaForSequenceClassification", "folded",
           "sparse", "csr", "csr8", "generic", "../x", "", "os.system", "transformers")
SMALL_INTS = (0, 1, 2, -1, 5, 63, 64, 65, 256, 272)
LARGE_INTS = (10**5, 10**7, 10**9, 2**31, 2**40)
# keys the loaders build from, aimed at directly half the time ("*": one of that object's keys)
DIRECTED = {
    "config.json": [("hidden_size",), ("intermediate_size",), ("num_hidden_layers",), ("vocab_size",),
                    ("num_attention_heads",), ("num_key_value_heads",), ("max_position_embeddings",),
                    ("head_dim",), ("model_type",), ("architectures",), ("auto_map",), ("torch_dtype",),
                    ("tie_word_embeddings",), ("rope_scaling",), ("rms_norm_eps",)],
    "oats_export.json": [("oats_export",), ("layout",), ("kind",), ("class",), ("attn_implementation",),
                         ("aliases",), ("aliases",), ("layers",), ("layers", "*"), ("layers", "*", "shape"),
                         ("layers", "*", "shape", 0), ("layers", "*", "shape", 1), ("layers", "*", "rank"),
                         ("layers", "*", "nnz"), ("layers", "*", "bias"), ("layers", "*", "index"),
                         ("layers", "*", "part_rows")],
    "manifest.json": [("format",), ("complete",), ("family",), ("model_name",), ("method",), ("blocks_done",),
                      ("blocks_done", 0), ("modules",), ("modules", "*", "shape"), ("modules", "*", "shape", 1),
                      ("modules", "*", "rank"), ("layers",), ("layers", 0), ("layers", 0, "shape"),
                      ("layers", 0, "rank"), ("layers", 0, "path"), ("config",), ("config", "compression"),
                      ("config", "rank_ratio"), ("config", "iterations"), ("blocks",), ("params",)],
}
FS_OPS = ("delete", "dir", "fifo", "symlink_out", "symlink_devzero", "symlink_devnull", "empty", "grow",
          "symlink_loop")
GROW_TO = 2**36  # a sparse file: 64 GiB that take no disk
SHAPES = ("short", "long", "transposed", "extra_dim", "flat", "empty", "scalar")


# ----------------------------------------------------------------------------- seeds


def tiny_model():
    """The base model of every seed: a one-block tiny Llama, the same weights every time. Its MLP
    is 272 wide, so down_proj's rows have a full 256-column CSR8 segment and a narrow one (16)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=272, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def fixed_input():
    import torch
    return torch.arange(12).reshape(1, 12) * 5 % 64


def build_seeds(root: str | Path) -> Path:
    """The valid originals under ``root``: ``run/``, ``sparse/``, ``csr/`` and ``folded/``, each
    holding its folder (``run`` or ``export``), and ``inventory.json`` (what each file holds)."""
    import torch
    from safetensors.torch import load_file, save_file

    import oats
    from oats.deploy import kernels
    from oats.deploy.export import EXPORT_FILE, SPARSE_FILE
    sys.path.insert(0, str(HERE))
    from tiny_models import batches

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = oats.OatsConfig(compression=0.5, rank_ratio=0.25, iterations=2)
    run = oats.compress_model(tiny_model(), batches(n=1), cfg, model_name="tiny")
    oats.save_run(run, root / "run" / "run")
    oats.export_run(run, root / "sparse" / "export", "sparse")
    oats.export_run(run, root / "folded" / "export", "folded")
    # format 1: S in CSR, as oats wrote before CSR8 (the conversion test_export.py checks)
    old = root / "csr" / "export"
    shutil.copytree(root / "sparse" / "export", old)
    info = json.loads((old / EXPORT_FILE).read_text())
    tensors = load_file(str(old / SPARSE_FILE))
    for path, spec in info["layers"].items():
        crow, col = kernels.csr8_to_csr(tensors.pop(f"{path}.segment_ptr"), tensors.pop(f"{path}.col_offsets"),
                                        *spec["shape"])
        tensors[f"{path}.crow_indices"], tensors[f"{path}.col_indices"] = crow, col.to(torch.int16)
        spec["index"] = "csr"
    save_file(tensors, str(old / SPARSE_FILE))
    info["oats_export"] = 1
    (old / EXPORT_FILE).write_text(json.dumps(info, indent=1))
    (root / "inventory.json").write_text(json.dumps(inventory(root)))
    return root


def inventory(root: Path) -> dict:
    """Per seed kind, per file: "json", or a safetensors file's tensors {name: [dtype, shape]}."""
    from safetensors import safe_open
    out = {}
    for kind in KINDS:
        folder = root / kind / FOLDER[kind]
        files = {}
        for p in sorted(folder.iterdir()):
            if p.suffix == ".json":
                files[p.name] = "json"
            elif p.suffix == ".safetensors":
                with safe_open(str(p), "pt") as fh:
                    files[p.name] = {k: [str(fh.get_slice(k).get_dtype()), list(fh.get_slice(k).get_shape())]
                                     for k in fh.keys()}
        out[kind] = files
    return out


# ----------------------------------------------------------------------------- choosing


class RandomChooser:
    """The choices of ``gen_case`` from a seeded ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def unit(self) -> float:
        return round(self.rng.random(), 4)


class DrawChooser:
    """The choices of ``gen_case`` drawn by hypothesis (``st.composite``'s ``draw``), so it shrinks."""

    def __init__(self, draw):
        from hypothesis import strategies as st
        self.draw, self.st = draw, st

    def choice(self, seq):
        return self.draw(self.st.sampled_from(list(seq)))

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def unit(self) -> float:
        return self.draw(self.st.integers(0, 10000)) / 10000


def cases_strategy(inv: dict):
    """A hypothesis strategy of cases (``gen_case`` over drawn choices)."""
    from hypothesis import strategies as st

    @st.composite
    def case(draw):
        return gen_case(DrawChooser(draw), inv)
    return case()


FAMILIES = ("dtype", "shape", "index", "nonfinite", "drop", "extra", "truncate", "header_len", "header_bytes",
            "header_edit", "json", "fs", "remote_code", "folder", "edge", "shard_index")
EDGE_OPS = ("zero_nnz", "zero_rank", "one_row", "empty_rows")
# a folded export's shard index (model.safetensors.index.json), and how a loader must take it
SHARD_OPS = {"self": "same", "split": "same", "outside": "invalid", "absolute": "invalid", "missing": "invalid",
             "partial": "suspect", "dtype_shard": "invalid", "dotdot": "invalid"}
FOLDER_OPS = ("rename", "rename", "delete", "fifo", "empty", "symlink_devzero", "symlink_out", "symlink_loop")
FOLDER_NAMES = ("run\nTraceback (most recent call last):", "a b", "ü-run", "-r", "x" * 200, "run'\"",
                "![x](http:example.invalid%2Fx.png)", "run\r", "run\x1b[31m")
ODD_NAMES = ("evil\nname", "a" * 5000, "model.layers.0.mlp.down_proj.values\r", "../../etc/passwd", "\u202eevil",
             "", "__metadata__x", "model.layers.0.mlp.down_proj.values.values")


def _index_tensors(tensors: dict) -> list[str]:
    return [k for k in tensors if k.rsplit(".", 1)[-1] in ("segment_ptr", "col_offsets", "crow_indices",
                                                            "col_indices", "sparse_mask")]


def gen_mutation(ch, files: dict) -> dict:
    """One mutation of a seed whose files are ``files`` (its inventory entry)."""
    st_files = sorted(f for f, v in files.items() if v != "json")
    json_files = sorted(f for f, v in files.items() if v == "json")
    fam = ch.choice(FAMILIES)
    if fam == "folder":
        return {"fam": fam, "file": ".", "op": ch.choice(FOLDER_OPS), "name": ch.choice(FOLDER_NAMES)}
    if fam == "shard_index" and "model.safetensors" in files:
        return {"fam": fam, "op": ch.choice(sorted(SHARD_OPS))}
    if fam == "shard_index":
        fam = "edge"
    if fam == "edge":
        layers = sorted({n.rsplit(".", 1)[0] for n in (files.get("sparse_lowrank.safetensors") or
                                                         files.get("block_000.safetensors") or {})
                         if n.startswith("model.layers.") and n.endswith((".values", ".sparse_values"))})
        if layers:
            return {"fam": fam, "layer": ch.choice(layers), "op": ch.choice(EDGE_OPS)}
        fam = "json"
    if fam == "remote_code" and "config.json" in files:
        return {"fam": fam, "file": "config.json", "auto": ch.choice(("AutoConfig", "AutoModelForCausalLM", "both")),
                "model_type": ch.choice(("llama", "fuzz-remote"))}
    if fam in ("json", "remote_code"):
        fam = "json"
        f = ch.choice(json_files)
        mut = {"fam": fam, "file": f, "op": ch.choice(JSON_OPS), "at": ch.unit(), "size": ch.choice((1, 2, 3))}
        if f in DIRECTED and ch.integer(0, 1):
            mut["key"] = list(ch.choice(DIRECTED[f]))
        return mut
    if fam == "fs":
        return {"fam": fam, "file": ch.choice(sorted(files)), "op": ch.choice(FS_OPS)}
    f = ch.choice(st_files)
    names = sorted(files[f])
    idx = _index_tensors(files[f])
    if fam == "index" and idx:
        return {"fam": fam, "file": f, "tensor": ch.choice(sorted(idx)), "value": ch.choice(INDEX_VALUES),
                "at": ch.unit(), "dtype": ch.choice(("keep", "keep", "int32", "int64", "int16", "int8"))}
    if fam == "index":
        fam = "dtype"
    # the sparse layers' tensors are where the loaders' own checks are: pick them more often
    layer = [n for n in names if n.startswith("model.layers.")]
    pick = ch.choice(layer if layer and ch.integer(0, 3) else names)
    if fam == "dtype":
        return {"fam": fam, "file": f, "tensor": pick, "dtype": ch.choice(DTYPES)}
    if fam == "shape":
        return {"fam": fam, "file": f, "tensor": pick, "how": ch.choice(SHAPES)}
    if fam == "nonfinite":
        return {"fam": fam, "file": f, "tensor": pick, "value": ch.choice(("nan", "inf", "-inf")),
                "at": ch.choice(("all", ch.unit()))}
    if fam == "drop":
        return {"fam": fam, "file": f, "tensor": pick}
    if fam == "extra":
        layer_paths = sorted({n.rsplit(".", 1)[0] for n in layer}) or ["model"]
        suffix = ch.choice(("crow_indices", "col_indices", "segment_ptr", "col_offsets", "u1", "bias", "junk",
                            "values", "u", "sparse_mask", "odd"))
        name = ch.choice(ODD_NAMES) if suffix == "odd" else f"{ch.choice(layer_paths)}.{suffix}"
        return {"fam": fam, "file": f, "tensor": name,
                "dtype": ch.choice(("int32", "float32", "uint8")), "n": ch.choice((0, 1, 7, 300))}
    if fam == "truncate":
        return {"fam": fam, "file": f, "at": ch.unit()}
    if fam == "header_len":
        return {"fam": fam, "file": f, "value": ch.choice(HEADER_LENGTHS)}
    if fam == "header_bytes":
        return {"fam": fam, "file": f, "at": ch.unit(), "byte": ch.integer(0, 255), "n": ch.choice((1, 1, 4, 64))}
    return {"fam": "header_edit", "file": f, "tensor": pick,
            "field": ch.choice(("dtype", "shape", "offsets_past_end", "offsets_overlap", "offsets_reversed",
                                "shape_huge", "shape_negative", "duplicate", "metadata", "shape_float", "newline_key")),
            "dtype": ch.choice(("I8", "U8", "I16", "I32", "I64", "F16", "F64", "BOOL", "BF16", "F32", "XX"))}


def gen_case(ch, inv: dict) -> dict:
    """A case: a seed kind and one to three mutations (JSON: it reproduces itself)."""
    kind = ch.choice(KINDS)
    n = ch.choice((1, 1, 1, 2, 3))
    muts = [gen_mutation(ch, inv[kind]) for _ in range(n)]
    shard = [m for m in muts if m["fam"] == "shard_index"]
    return {"kind": kind, "muts": shard[:1] or muts}  # a shard index is judged alone (see judge)


_F, _M = "sparse_lowrank.safetensors", "manifest.json"
_DOWN, _Q = "model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"
KNOWN = [
    # the reported cases, first in every campaign and in the test
    {"kind": "csr", "muts": [{"fam": "index", "file": _F, "tensor": f"{_DOWN}.col_indices", "value": "1e9",
                              "at": 0.5, "dtype": "int32"}]},  # int32 column 1e9: SIGSEGV with kernel csr
    {"kind": "sparse", "muts": [{"fam": "index", "file": _F, "tensor": f"{_DOWN}.col_offsets", "value": "-1",
                                 "at": 0.999, "dtype": "int8"}]},  # int8 -1 in the last (narrow) segment
    {"kind": "sparse", "muts": [{"fam": "index", "file": _F, "tensor": f"{_DOWN}.col_offsets", "value": "300",
                                 "at": 0.01, "dtype": "int16"}]},  # int16 300 in a full segment: wraps
    {"kind": "sparse", "muts": [{"fam": "index", "file": _F, "tensor": f"{_DOWN}.col_offsets", "value": "1e9",
                                 "at": 0.01, "dtype": "int32"}]},
    {"kind": "sparse", "muts": [{"fam": "nonfinite", "file": _F, "tensor": f"{_Q}.values", "value": "nan",
                                 "at": 0.3}]},
    {"kind": "sparse", "muts": [{"fam": "dtype", "file": _F, "tensor": f"{_Q}.u0", "dtype": "int32"}]},
    {"kind": "sparse", "muts": [{"fam": "remote_code", "file": "config.json", "auto": "both",
                                 "model_type": "llama"}]},
    {"kind": "folded", "muts": [{"fam": "remote_code", "file": "config.json", "auto": "both",
                                 "model_type": "fuzz-remote"}]},
    {"kind": "sparse", "muts": [{"fam": "json", "file": "config.json", "op": "large_int", "at": 0.3, "size": 1,
                                 "key": ["hidden_size"]}]},  # hidden size 10^7
    {"kind": "run", "muts": [{"fam": "json", "file": _M, "op": "root", "at": 0.99, "size": 1}]},  # 100k brackets
    {"kind": "run", "muts": [{"fam": "json", "file": _M, "op": "infinity", "at": 0.5, "size": 1,
                              "key": ["params"]}]},
    {"kind": "run", "muts": [{"fam": "fs", "file": "block_000.safetensors", "op": "symlink_out"}]},
    {"kind": "run", "muts": [{"fam": "dtype", "file": "block_000.safetensors",
                              "tensor": f"{_Q}.sparse_mask", "dtype": "float32"}]},  # a float mask
    {"kind": "run", "muts": [{"fam": "shape", "file": "block_000.safetensors", "tensor": f"{_Q}.u",
                              "how": "short"}]},  # a short factor
    {"kind": "run", "muts": [{"fam": "drop", "file": "block_000.safetensors", "tensor": f"{_Q}.v"}]},
    {"kind": "sparse", "muts": [{"fam": "fs", "file": _F, "op": "fifo"}]},
    {"kind": "run", "muts": [{"fam": "fs", "file": _M, "op": "fifo"}]},
    {"kind": "folded", "muts": [{"fam": "fs", "file": "model.safetensors", "op": "symlink_devzero"}]},
]


REGRESSIONS = [
    # what the campaigns found (/work/notes/fuzz_findings.md F1-F4), kept so they stay fixed
    {"kind": "folded", "muts": [{"fam": "dtype", "file": "model.safetensors", "tensor": "lm_head.weight",
                                 "dtype": "bool"}]},  # F1: an integer weight of a folded export, cast silently
    {"kind": "folded", "muts": [{"fam": "dtype", "file": "model.safetensors",
                                 "tensor": "model.layers.0.input_layernorm.weight", "dtype": "int64"}]},
    {"kind": "sparse", "muts": [{"fam": "dtype", "file": _F, "tensor": "model.layers.0.self_attn.v_proj.values",
                                 "dtype": "float16"}]},  # F2: half values load, the forward raises
    {"kind": "sparse", "muts": [{"fam": "dtype", "file": _F, "tensor": f"{_Q}.values", "dtype": "bfloat16"}]},
    {"kind": "run", "muts": [{"fam": "json", "file": _M, "op": "empty_container", "at": 0.5, "size": 1,
                              "key": ["blocks_done"]}]},  # F3: a complete run of no blocks: the dense model
    {"kind": "run", "muts": [{"fam": "fs", "file": "block_000.safetensors", "op": "grow"}]},  # F4: read whole
    {"kind": "run", "muts": [{"fam": "json", "file": _M, "op": "missing", "at": 0.3604, "size": 3,
                              "key": ["layers", 0]}]},  # F3: a layer record gone: its factors skipped
    {"kind": "sparse", "muts": [{"fam": "dtype", "file": _F, "tensor": f"{_DOWN}.values", "dtype": "float64"}]},
    # F5: a folder name with a newline, quoted raw in the error: two lines
    {"kind": "run", "muts": [{"fam": "folder", "file": ".", "op": "rename", "name": FOLDER_NAMES[0]},
                             {"fam": "drop", "file": "block_000.safetensors", "tensor": f"{_Q}.v"}]},
    {"kind": "folded", "muts": [{"fam": "folder", "file": ".", "op": "rename", "name": FOLDER_NAMES[0]},
                                {"fam": "fs", "file": "model.safetensors", "op": "delete"}]},
    # F6: a block file that links to itself (Path.resolve raises RuntimeError on 3.11)
    {"kind": "run", "muts": [{"fam": "fs", "file": "block_000.safetensors", "op": "symlink_loop"}]},
]


def random_cases(seed: int, n: int, inv: dict):
    """``n`` cases: the ``KNOWN`` and ``REGRESSIONS`` ones, then cases drawn from ``seed`` (the long
    campaign's generator)."""
    rng = random.Random(seed)
    ch = RandomChooser(rng)
    fixed = KNOWN + REGRESSIONS
    for i in range(n):
        yield copy.deepcopy(fixed[i]) if i < len(fixed) else gen_case(ch, inv)


# ----------------------------------------------------------------------------- mutating


def _torch_dtype(name: str):
    import torch
    return getattr(torch, name)


def _index_value(text: str, t, d_in: int, nnz: int) -> int:
    return {"-1": -1, "255": 255, "256": 256, "300": 300, "1e9": 10**9, "2^31-1": 2**31 - 1, "d_in": d_in,
            "nnz+1": nnz + 1, "0": 0, "2^63-1": 2**63 - 1}[text]


def _edit_tensors(path: Path, fn) -> None:
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(path))
    fn(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _layer_shape(folder: Path, kind: str, tensor: str) -> tuple[int, int, int]:
    """(d_out, d_in, nnz) of the layer a tensor belongs to, from the seed's own manifest."""
    layer = tensor.rsplit(".", 1)[0]
    if kind == "run":
        m = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").is_file() else {}
        shape = (m.get("modules") or {}).get(layer, {}).get("shape", [64, 64])
        return shape[0], shape[1], 0
    m = json.loads((folder / "oats_export.json").read_text())
    spec = m["layers"].get(layer, {"shape": [64, 64], "nnz": 0})
    return spec["shape"][0], spec["shape"][1], spec["nnz"]


def _mutate_tensor(seed_folder: Path, folder: Path, kind: str, mut: dict) -> None:
    import torch
    path = folder / mut["file"]
    fam, name = mut["fam"], mut.get("tensor")

    def edit(tensors):
        if fam == "extra":
            tensors[name] = torch.ones(mut["n"], dtype=_torch_dtype(mut["dtype"]))
            return
        if name not in tensors:
            return
        t = tensors[name]
        if fam == "dtype":
            dt = _torch_dtype(mut["dtype"])
            tensors[name] = t.to(dt) if dt != torch.bool else t != 0
        elif fam == "drop":
            del tensors[name]
        elif fam == "shape":
            how = mut["how"]
            flat = t.reshape(-1)
            if how == "short":
                tensors[name] = t[: max(0, t.shape[0] - 1)] if t.ndim else flat[:0]
            elif how == "long":
                tensors[name] = torch.cat([t, t[:1]]) if t.ndim and t.shape[0] else torch.zeros(1, dtype=t.dtype)
            elif how == "transposed":
                tensors[name] = t.t().contiguous() if t.ndim == 2 else t.reshape(-1, 1)
            elif how == "extra_dim":
                tensors[name] = t[None]
            elif how == "flat":
                tensors[name] = flat.clone() if t.ndim != 1 else t.reshape(1, -1)
            elif how == "empty":
                tensors[name] = flat[:0].clone()
            else:
                tensors[name] = flat[:1].reshape(()).clone() if flat.numel() else torch.zeros((), dtype=t.dtype)
        elif fam == "nonfinite":
            if not t.is_floating_point() or not t.numel():
                tensors[name] = t.to(torch.float32)
                t = tensors[name]
            t = t.clone()
            value = float(mut["value"])
            if mut["at"] == "all":
                t.fill_(value)
            else:
                t.reshape(-1)[min(t.numel() - 1, int(mut["at"] * t.numel()))] = value
            tensors[name] = t
        elif fam == "index":
            d_out, d_in, nnz = _layer_shape(seed_folder / FOLDER[kind], kind, name)
            if mut["dtype"] != "keep":
                t = t.to(_torch_dtype(mut["dtype"]))
            t = t.clone()
            if not t.numel():
                return
            i = min(t.numel() - 1, int(mut["at"] * t.numel()))
            flat = t.reshape(-1)
            if mut["value"] in ("shift", "swap", "dup"):
                if t.numel() < 3:
                    return
                i = min(max(1, i), t.numel() - 2)
                if mut["value"] == "shift":  # a pointer moved between its neighbours: entries change rows
                    lo, hi = int(flat[i - 1]), int(flat[i + 1])
                    flat[i] = lo + (hi - lo) * (int(mut["at"] * 1000) % 7) // 6
                elif mut["value"] == "swap":
                    flat[i], flat[i + 1] = flat[i + 1].clone(), flat[i].clone()
                else:
                    flat[i] = flat[i - 1]
            elif mut["value"] == "decrease":
                if t.numel() >= 2:
                    i = max(1, i)
                    t.reshape(-1)[i] = t.reshape(-1)[i - 1] - 1 if int(t.reshape(-1)[i - 1]) > 0 else 0
                    if int(t.reshape(-1)[i - 1]) == 0:
                        t.reshape(-1)[i - 1] = 1
            else:
                v = _index_value(mut["value"], t, d_in, nnz)
                # a value the dtype cannot hold is stored as the dtype stores it (int16 300 fits, uint8 wraps)
                info = torch.iinfo(t.dtype) if not t.is_floating_point() and t.dtype != torch.bool else None
                if info is not None and not info.min <= v <= info.max:
                    v = (v - info.min) % (info.max - info.min + 1) + info.min
                t.reshape(-1)[i] = v
            tensors[name] = t

    _edit_tensors(path, edit)


def _header(path: Path) -> tuple[int, dict, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8:8 + n]), data[8 + n:]


def _mutate_bytes(folder: Path, mut: dict) -> None:
    path = folder / mut["file"]
    data = path.read_bytes()
    fam = mut["fam"]
    n = struct.unpack("<Q", data[:8])[0]
    if fam == "truncate":
        path.write_bytes(data[: int(mut["at"] * (len(data) - 1))])
    elif fam == "header_len":
        v = {"0": 0, "1": 1, "7": 7, "2^64-1": 2**64 - 1, "2^63": 2**63, "size": len(data), "size+1": len(data) + 1,
             "1e9": 10**9, "header-1": n - 1, "header+1": n + 1}[mut["value"]]
        path.write_bytes(struct.pack("<Q", v) + data[8:])
    elif fam == "header_bytes":
        at = 8 + int(mut["at"] * max(0, n - 1))
        b = bytearray(data)
        for k in range(mut["n"]):
            if at + k < 8 + n:
                b[at + k] = (mut["byte"] + 37 * k) % 256
        path.write_bytes(bytes(b))
    else:  # header_edit
        header = json.loads(data[8:8 + n])
        body = data[8 + n:]
        entry = header.get(mut["tensor"])
        if entry is None:
            return
        field = mut["field"]
        if field == "dtype":
            entry["dtype"] = mut["dtype"]
        elif field == "shape":
            entry["shape"] = list(reversed(entry["shape"])) + [1] if entry["shape"] else [2]
        elif field == "shape_huge":
            entry["shape"] = [2**40] + entry["shape"][1:]
        elif field == "shape_negative":
            entry["shape"] = [-1] + entry["shape"][1:]
        elif field == "shape_float":
            entry["shape"] = [d + 0.5 for d in entry["shape"]] or [0.5]
        elif field == "metadata":
            header["__metadata__"] = {"format": ["pt"], "evil": {"a": 1}}
        elif field in ("duplicate", "newline_key"):
            # JSON text that a dict cannot say: the same key twice (the second another tensor's
            # entry), or a tensor name with a newline in it
            other = next((k for k in header if k not in ("__metadata__", mut["tensor"])), mut["tensor"])
            text = json.dumps(header)
            dup = json.dumps(mut["tensor"] if field == "duplicate" else mut["tensor"] + "\nTraceback")
            text = text[:-1] + f", {dup}: {json.dumps(header[other])}}}"
            if field == "newline_key":
                text = text.replace(json.dumps(mut["tensor"]) + ":", dup + ":", 1)
            raw = text.encode()
            path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
            return
        elif field == "offsets_past_end":
            entry["data_offsets"] = [entry["data_offsets"][0], len(body) + 4096]
        elif field == "offsets_overlap":
            entry["data_offsets"] = [0, entry["data_offsets"][1] - entry["data_offsets"][0]]
        else:
            entry["data_offsets"] = list(reversed(entry["data_offsets"]))
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def _json_paths(obj, prefix=(), out=None, limit=400):
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            _json_paths(v, prefix + (k,), out, limit)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out.append(prefix + (i,))
            _json_paths(v, prefix + (i,), out, limit)
    return out


def _mutate_json(folder: Path, mut: dict) -> None:
    path = folder / mut["file"]
    text = path.read_text()
    op = mut["op"]
    if op == "corrupt":
        cut = int(mut["at"] * len(text))
        path.write_text(text[:cut] + ["}", "\x00", "{{", "\"", "\\u12"][mut["size"] % 5] + text[cut + mut["size"]:])
        return
    if op == "root":
        path.write_text(["[]", "5", "\"run\"", "null", "[" * 100_000 + "]" * 100_000][min(4, int(mut["at"] * 5))])
        return
    obj = json.loads(text)
    if mut.get("key"):
        where, o = [], obj
        for i, k in enumerate(mut["key"]):
            if k == "*":
                if not isinstance(o, dict) or not o:
                    return
                keys = sorted(o)
                k = keys[min(len(keys) - 1, int(mut["at"] * len(keys)))]
            if isinstance(o, dict):
                if k not in o and (i < len(mut["key"]) - 1 or op == "missing"):
                    return
            elif not (isinstance(o, list) and isinstance(k, int) and k < len(o)):
                return
            where.append(k)
            if i < len(mut["key"]) - 1:
                o = o[k]
        where = tuple(where)  # a last key the file lacks is added
    else:
        paths = _json_paths(obj)
        if not paths:
            return
        where = paths[min(len(paths) - 1, int(mut["at"] * len(paths)))]
    parent = obj
    for k in where[:-1]:
        parent = parent[k]
    key = where[-1]
    old = parent.get(key) if isinstance(parent, dict) else parent[key]
    raw = None  # text to splice in where JSON cannot say it (NaN, 1e400, 100k brackets)
    if op == "missing":
        del parent[key]
    elif op == "wrong_type":
        parent[key] = ([1, 2] if not isinstance(old, list) else {"a": 1}) if not isinstance(old, str) else 7
    elif op == "huge_float":
        raw = "1e400"
    elif op == "huge_int":
        raw = "9" * 5000
    elif op == "int_2^63":
        parent[key] = 2**63
    elif op == "infinity":
        raw = "Infinity"
    elif op == "nan":
        raw = "NaN"
    elif op == "deep":
        raw = "[" * 100_000 + "]" * 100_000 if mut["size"] == 1 else "[" * 40 + "]" * 40
    elif op == "huge_string":
        parent[key] = "x" * (10**6 if mut["size"] < 3 else 2 * 10**7)
    elif op == "negative":
        parent[key] = -1 if not isinstance(old, list) else [-1] * max(1, len(old))
    elif op == "empty_container":
        parent[key] = {} if isinstance(old, dict) else []
    elif op == "bool":
        parent[key] = True
    elif op == "small_int":
        parent[key] = SMALL_INTS[min(len(SMALL_INTS) - 1, int(mut["at"] * len(SMALL_INTS)))]
    elif op == "large_int":
        parent[key] = LARGE_INTS[min(len(LARGE_INTS) - 1, int(mut["at"] * len(LARGE_INTS)))]
    elif op == "swap":
        parent[key] = list(reversed(old)) if isinstance(old, list) else old
    elif op == "string":
        parent[key] = STRINGS[min(len(STRINGS) - 1, int(mut["at"] * len(STRINGS)))]
    elif op == "alias":  # one weight read in place of another (both are in the file)
        pairs = [("lm_head.weight", "model.embed_tokens.weight"), ("model.embed_tokens.weight", "lm_head.weight"),
                 ("model.norm.weight", "model.layers.0.input_layernorm.weight")]
        a, b = pairs[min(2, int(mut["at"] * 3))]
        parent[key] = {a: b}
    elif op == "float":
        parent[key] = (old + 0.5) if isinstance(old, (int, float)) and not isinstance(old, bool) else 0.5
    if raw is None:
        path.write_text(json.dumps(obj, indent=1))
        return
    marker = "__oats_fuzz_marker__"
    parent[key] = marker
    path.write_text(json.dumps(obj, indent=1).replace(f'"{marker}"', raw))


def _mutate_fs(folder: Path, outside: Path, mut: dict) -> None:
    path = folder / mut["file"]
    op = mut["op"]
    if not path.exists() and not path.is_symlink():
        return
    if op == "symlink_out":
        outside.mkdir(parents=True, exist_ok=True)
        target = outside / mut["file"]
        if path.is_file() and path.stat().st_size > 64 * 1024**2:
            target.write_bytes(b"")  # a grown file: its copy grown alike (a copy would write it all)
            os.truncate(target, path.stat().st_size)
        elif path.is_file():
            shutil.copyfile(path, target)
        path.unlink()
        path.symlink_to(target)
        return
    if op == "grow":
        if path.is_file():
            os.truncate(path, GROW_TO)
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    if op == "dir":
        path.mkdir()
    elif op == "fifo":
        os.mkfifo(path)
    elif op == "symlink_devzero":
        path.symlink_to("/dev/zero")
    elif op == "symlink_devnull":
        path.symlink_to("/dev/null")
    elif op == "symlink_loop":  # a link to itself: ELOOP on every open
        path.symlink_to(path.name)
    elif op == "empty":
        path.write_bytes(b"")


def _shard_index(folder: Path, outside: Path, mut: dict) -> None:
    """A model.safetensors.index.json beside model.safetensors, naming shards in or out of the folder."""
    import torch
    from safetensors.torch import load_file, save_file
    t = load_file(str(folder / "model.safetensors"))
    names = sorted(t)
    op = mut["op"]
    if op in ("split", "dtype_shard"):
        half = len(names) // 2
        a, b = {k: t[k] for k in names[:half]}, {k: t[k] for k in names[half:]}
        if op == "dtype_shard":
            b[names[-1]] = b[names[-1]].to(torch.int8)
        save_file(a, str(folder / "model-00001-of-00002.safetensors"))
        save_file(b, str(folder / "model-00002-of-00002.safetensors"))
        wm = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    elif op == "outside":
        outside.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "model.safetensors", outside / "model.safetensors")
        wm = {k: "../../outside/model.safetensors" for k in names}
    else:
        target = {"self": "model.safetensors", "absolute": "/dev/zero", "missing": "model-00009.safetensors",
                  "partial": "model.safetensors", "dotdot": ".."}[op]
        wm = {k: target for k in (names[: len(names) // 2] if op == "partial" else names)}
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in t.values())}, "weight_map": wm}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


def _plain(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _grown(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() and p.stat().st_size > 64 * 1024**2 for p in folder.iterdir())


def _mutate_edge(folder: Path, kind: str, mut: dict) -> None:
    """A valid layer at an edge the kernels must handle: no non-zeros, rank 0, every entry in one
    row, or the first rows empty. Tensors and manifest are changed together."""
    import torch
    from safetensors.torch import load_file, save_file
    layer, op = mut["layer"], mut["op"]
    if kind == "run":
        f, man = folder / "block_000.safetensors", folder / "manifest.json"
        t, m = load_file(str(f)), json.loads(man.read_text())
        d_out, d_in = m["modules"][layer]["shape"]
        import numpy as np
        mask = np.unpackbits(t[f"{layer}.sparse_mask"].numpy(), count=d_out * d_in).reshape(d_out, d_in)
        s = torch.zeros(d_out, d_in)
        s[torch.from_numpy(mask.astype(bool))] = t[f"{layer}.sparse_values"]
        s = _edge_dense(s, op)
        if op == "zero_rank":
            t[f"{layer}.u"], t[f"{layer}.v"] = torch.zeros(d_out, 0), torch.zeros(0, d_in)
            m["modules"][layer]["rank"] = 0
        keep = s != 0
        t[f"{layer}.sparse_values"] = s[keep].contiguous()
        t[f"{layer}.sparse_mask"] = torch.from_numpy(np.packbits(keep.numpy().reshape(-1)))
        save_file(t, str(f))
        man.write_text(json.dumps(m, indent=1))
        return
    from oats.deploy import kernels
    from oats.deploy.linear import pack_csr
    f, man = folder / "sparse_lowrank.safetensors", folder / "oats_export.json"
    t, m = load_file(str(f)), json.loads(man.read_text())
    spec = m["layers"][layer]
    d_out, d_in = spec["shape"]
    if f"{layer}.segment_ptr" in t:
        crow, col = kernels.csr8_to_csr(t.pop(f"{layer}.segment_ptr"), t.pop(f"{layer}.col_offsets"), d_out, d_in)
        csr8 = True
    else:
        crow, col = t.pop(f"{layer}.crow_indices"), t.pop(f"{layer}.col_indices")
        csr8 = False
    import warnings
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        s = torch.sparse_csr_tensor(crow.long(), col.long(), t[f"{layer}.values"], (d_out, d_in),
                                    check_invariants=True).to_dense()
    s = _edge_dense(s, op)
    p = pack_csr(s)
    if csr8:
        t[f"{layer}.segment_ptr"], t[f"{layer}.col_offsets"] = kernels.csr_to_csr8(p["crow_indices"],
                                                                                    p["col_indices"], d_out, d_in)
    else:
        t[f"{layer}.crow_indices"], t[f"{layer}.col_indices"] = p["crow_indices"], p["col_indices"]
    t[f"{layer}.values"] = p["values"]
    spec["nnz"] = int(p["values"].numel())
    if op == "zero_rank":
        t[f"{layer}.u0"], t[f"{layer}.v"] = torch.zeros(d_out, 0), torch.zeros(0, d_in)
        spec["rank"] = 0
    save_file({k: v.contiguous() for k, v in t.items()}, str(f))
    man.write_text(json.dumps(m, indent=1))


def _edge_dense(s, op: str):
    import torch
    if op == "zero_nnz":
        return torch.zeros_like(s)
    if op == "one_row":  # every entry of S in the last row, every column of it set
        out = torch.zeros_like(s)
        out[-1] = torch.linspace(-1, 1, s.shape[1]) + 0.01
        return out
    if op == "empty_rows":
        s = s.clone()
        s[: s.shape[0] // 2] = 0
    return s


def _mutate_folder(folder: Path, outside: Path, mut: dict) -> Path:
    """The case's folder itself renamed (odd names), or replaced; returns where it now is."""
    if not folder.is_dir() or folder.is_symlink():
        return folder
    op = mut["op"]
    if op == "rename":
        new = folder.parent / mut["name"]
        os.rename(folder, new)
        return new
    if op == "symlink_out":
        outside.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(outside / folder.name))
        folder.symlink_to(outside / folder.name)
        return folder
    shutil.rmtree(folder)
    if op == "fifo":
        os.mkfifo(folder)
    elif op == "empty":
        folder.write_bytes(b"")
    elif op == "symlink_devzero":
        folder.symlink_to("/dev/zero")
    elif op == "symlink_loop":
        folder.symlink_to(folder.name)
    return folder


REMOTE_CODE = """import pathlib
pathlib.Path({marker!r}).write_text("the folder's own code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class FuzzConfig(LlamaConfig):
    model_type = {model_type!r}


class FuzzModel(LlamaForCausalLM):
    config_class = FuzzConfig
"""


def _remote_code(folder: Path, marker: Path, mut: dict) -> None:
    """A config that names the folder's own code (auto_map): loading it must not run that code."""
    for name in ("configuration_fuzz.py", "modeling_fuzz.py"):
        (folder / name).write_text(REMOTE_CODE.format(marker=str(marker), model_type=mut["model_type"]))
    cfg = json.loads((folder / "config.json").read_text())
    auto = {"AutoConfig": "configuration_fuzz.FuzzConfig", "AutoModelForCausalLM": "modeling_fuzz.FuzzModel"}
    cfg["auto_map"] = auto if mut["auto"] == "both" else {mut["auto"]: auto[mut["auto"]]}
    cfg["model_type"] = mut["model_type"]
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))


def marker(work: str | Path) -> Path:
    """The file a case's own code writes when it runs (``remote_code``)."""
    return Path(work) / "code-ran"


def make_case(seeds: str | Path, case: dict, work: str | Path) -> Path:
    """The case's folder (``work/root/<run|export>``), its seed copied and mutated; ``work/outside``
    receives the targets of symlinks that lead out of it. Returns the folder."""
    seeds, work = Path(seeds), Path(work)
    kind = case["kind"]
    folder = work / "root" / FOLDER[kind]
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(seeds / kind / FOLDER[kind], folder)
    for mut in case["muts"]:
        fam = mut["fam"]
        if fam == "folder":
            try:
                folder = _mutate_folder(folder, work / "outside", mut)
            except OSError:
                pass
            continue
        # an earlier mutation deleted the file or put a FIFO, a link or a folder in its place: reading
        # it here could block (FIFO) or never end (/dev/zero)
        needs = {"edge": ("sparse_lowrank.safetensors", "oats_export.json") if kind != "run"
                 else ("block_000.safetensors", "manifest.json"),
                 "shard_index": ("model.safetensors",), "fs": ()}.get(fam, (mut.get("file", ""),))
        if not all(_plain(folder / n) for n in needs):
            continue
        if fam != "fs" and _grown(folder):
            continue  # an earlier mutation grew a file to GROW_TO: reading it here would take that much memory
        try:
            if fam == "json":
                _mutate_json(folder, mut)
            elif fam == "remote_code":
                _remote_code(folder, marker(work), mut)
            elif fam == "edge":
                _mutate_edge(folder, kind, mut)
            elif fam == "shard_index":
                _shard_index(folder, work / "outside", mut)
            elif fam == "fs":
                _mutate_fs(folder, work / "outside", mut)
            elif fam in ("truncate", "header_len", "header_bytes", "header_edit"):
                _mutate_bytes(folder, mut)
            else:
                _mutate_tensor(seeds / kind, folder, kind, mut)
        except Exception:  # an earlier mutation made the file unreadable to this one: leave it
            continue
    return folder


# ----------------------------------------------------------------------------- judging


def _strict_json(path: Path):
    """The JSON of a file as a careful reader takes it, or None when it must be refused."""
    def no_constant(_):
        raise ValueError("constant")

    def finite(text):
        x = float(text)
        if not math.isfinite(x):
            raise ValueError("inf")
        return x
    try:
        if path.stat().st_size > 64 * 1024**2:  # a grown file: never read whole here either
            return None
        text = path.read_bytes()
        if text.count(b"[") + text.count(b"{") > 10_000:
            return None
        obj = json.loads(text, parse_constant=no_constant, parse_float=finite)
    except (ValueError, RecursionError, OSError):
        return None

    def depth(o):
        if isinstance(o, dict):
            return 1 + max((depth(v) for v in o.values()), default=0)
        if isinstance(o, list):
            return 1 + max((depth(v) for v in o), default=0)
        return 0
    return obj if depth(obj) <= 32 else None


def _json_severity(seed: Path, path: Path, name: str, kind: str, case: dict) -> str:
    if path.stat().st_size > 64 * 1024**2:
        return "invalid"
    obj = _strict_json(path)
    if obj is None or not isinstance(obj, dict):
        return "invalid"
    orig = json.loads(seed.read_text())
    for mut in case["muts"]:  # what an "edge" case changed on purpose, with its tensors, is no tampering
        if mut["fam"] == "edge":
            where = "modules" if name == "manifest.json" else "layers"
            try:
                for k in ("nnz", "rank"):
                    if k in orig.get(where, {}).get(mut["layer"], {}):
                        orig[where][mut["layer"]][k] = obj[where][mut["layer"]][k]
            except (KeyError, TypeError):
                pass
    if obj == orig:
        return "same"
    if name == "config.json" and "auto_map" in obj:
        return "lenient"
    required = {"manifest.json": ("format", "model_name", "config", "layers", "blocks", "method"),
                "oats_export.json": ("oats_export", "layout", "class") + (("layers",) if kind != "folded" else ()),
                "config.json": ("hidden_size", "num_hidden_layers", "model_type")}.get(name, ())
    for k in required:
        if k not in obj:
            return "invalid"
    if name == "oats_export.json":
        if obj.get("oats_export") != orig["oats_export"] or obj.get("layout") != orig["layout"]:
            return "lenient"  # another format or layout: refused, or read as that
        # what the loader builds from: it may load only to the untampered outputs
        if {k: v for k, v in obj.items() if k != "run" and k != "load"} != \
                {k: v for k, v in orig.items() if k != "run" and k != "load"}:
            return "suspect"
        return "same"
    if name == "generation_config.json":
        return "same"
    if name == "manifest.json":
        return "suspect"  # no manifest edit may change what load_run builds: refused, or the same model
    return "lenient"


def _float_ok(t, shape=None) -> bool:
    import torch
    return (t.is_floating_point() and bool(torch.isfinite(t).all())
            and (shape is None or tuple(t.shape) == tuple(shape)))


def _int_ok(t) -> bool:
    return not t.is_floating_point() and not t.is_complex() and str(t.dtype) != "torch.bool" and t.ndim == 1


def _tensors_severity(seed: Path, path: Path, name: str, kind: str, seed_folder: Path, folder: Path) -> str:
    import torch
    from safetensors.torch import load_file
    try:
        got = load_file(str(path))
    except Exception:
        return "invalid"
    orig = load_file(str(seed))
    if set(got) == set(orig) and all(got[k].dtype == orig[k].dtype and torch.equal(got[k], orig[k]) for k in orig):
        return "same"
    if set(orig) - set(got):
        return "invalid"  # a tensor the model needs is gone
    # the arrays are judged against the case's own manifest where it is sound (an "edge" case
    # changes both consistently), else against the seed's
    man = "manifest.json" if kind == "run" else "oats_export.json"
    m = _strict_json(folder / man) if (folder / man).is_file() and not (folder / man).is_symlink() else None
    if not isinstance(m, dict):
        m = json.loads((seed_folder / man).read_text())
    try:
        return _arrays_severity(got, orig, kind, m)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return "invalid"


def _arrays_severity(got: dict, orig: dict, kind: str, m: dict) -> str:
    import torch
    severity = "lenient"
    if kind == "run":
        for layer, spec in m["modules"].items():
            d_out, d_in = spec["shape"]
            r = spec["rank"]
            vals, mask = got[f"{layer}.sparse_values"], got[f"{layer}.sparse_mask"]
            if not (_float_ok(vals) and vals.ndim == 1 and _float_ok(got[f"{layer}.u"], (d_out, r))
                    and _float_ok(got[f"{layer}.v"], (r, d_in))):
                return "invalid"
            if mask.dtype != torch.uint8 or mask.ndim != 1 or mask.numel() != -(-d_out * d_in // 8):
                return "invalid"
            import numpy as np
            bits = np.unpackbits(mask.numpy(), count=d_out * d_in)
            if int(bits.sum()) != vals.numel():
                return "invalid"
        return severity
    for k, t in orig.items():  # the dense weights (and, for folded, every weight)
        if any(k.startswith(p + ".") for p in m.get("layers", {})) and kind != "folded":
            continue
        if not _float_ok(got[k], t.shape):
            return "invalid"
    if kind == "folded":
        return severity
    from oats.deploy import kernels
    for layer, spec in m["layers"].items():
        d_out, d_in = spec["shape"]
        vals = got[f"{layer}.values"]
        if not (_float_ok(vals) and vals.ndim == 1):
            return "invalid"
        nnz = vals.numel()
        r = spec["rank"]
        for k in orig:  # the factors and bias
            if k.startswith(layer + ".") and (k.endswith((".v", ".bias")) or k.rsplit(".", 1)[1].startswith("u")):
                want = orig[k].shape
                if not spec.get("part_rows") and k.endswith(".v"):
                    want = (r, d_in)
                elif not spec.get("part_rows") and k.endswith(".u0"):
                    want = (d_out, r)
                if not _float_ok(got[k], want):
                    return "invalid"
        if kind == "sparse":
            ptr, off = got[f"{layer}.segment_ptr"], got[f"{layer}.col_offsets"]
            nseg = kernels.segments(d_in)
            if not (_int_ok(ptr) and _int_ok(off) and ptr.numel() == d_out * nseg + 1 and off.numel() == nnz):
                return "invalid"
            p = ptr.to(torch.int64)
            if int(p[0]) != 0 or int(p[-1]) != nnz or bool((p[1:] < p[:-1]).any()):
                return "invalid"
            seg = torch.repeat_interleave(torch.arange(d_out * nseg) % nseg, p[1:] - p[:-1])
            width = torch.clamp(d_in - seg * kernels.SEGMENT, max=kernels.SEGMENT)
            o = off.to(torch.int64)
            if nnz and (bool((o < 0).any()) or bool((o >= width).any())):
                return "invalid"
        else:
            crow, col = got[f"{layer}.crow_indices"], got[f"{layer}.col_indices"]
            if not (_int_ok(crow) and _int_ok(col) and crow.numel() == d_out + 1 and col.numel() == nnz):
                return "invalid"
            c = crow.to(torch.int64)
            if int(c[0]) != 0 or int(c[-1]) != nnz or bool((c[1:] < c[:-1]).any()):
                return "invalid"
            cc = col.to(torch.int64)
            if nnz and (int(cc.min()) < 0 or int(cc.max()) >= d_in):
                return "invalid"
    return severity


def judge(seeds: str | Path, case: dict, folder: str | Path) -> dict:
    """Per file of the seed: its severity after the mutations (see the module docstring)."""
    seeds, folder = Path(seeds), Path(folder)
    kind = case["kind"]
    seed_folder = seeds / kind / FOLDER[kind]
    out = {}
    for seed in sorted(seed_folder.iterdir()):
        name = seed.name
        p = folder / name
        optional = name == "generation_config.json"
        if p.is_symlink():
            target = Path(os.path.realpath(p))
            if not target.is_file() or str(target).startswith("/dev") or kind == "run":
                out[name] = "lenient" if optional else "invalid"
                continue
            # an export's file linked to a copy outside: the same data, read from elsewhere
        if not p.exists() or not p.is_file():
            out[name] = "lenient" if optional else "invalid"
            continue
        if seed.suffix == ".json":
            out[name] = _json_severity(seed, p, name, kind, case)
        else:
            out[name] = _tensors_severity(seed, p, name, kind, seed_folder, folder)
        if optional and out[name] == "invalid":
            out[name] = "lenient"
    for mut in case["muts"]:
        if mut["fam"] == "shard_index":
            out["model.safetensors.index.json"] = SHARD_OPS[mut["op"]]
    if any(m["fam"] == "edge" for m in case["muts"]):
        # an edge case changes the outputs on purpose: "loads only to the untampered outputs" no longer holds
        out = {k: "lenient" if v in ("suspect", "same") else v for k, v in out.items()}
    return out


def op_severity(kind: str, op: str, files: dict) -> str:
    """The severity of the files an operation reads (run info and listing read only the manifest)."""
    if kind == "run" and op in ("info", "list"):
        return files.get("manifest.json", "invalid")
    return max(files.values(), key=SEVERITY.index, default="same")


# ----------------------------------------------------------------------------- outcomes


def classify(report: dict, severity: str) -> tuple[str, str]:
    """(outcome, why) of one operation, from the worker's report and the files' severity."""
    r = report.get("result")
    if r in ("refused", "raw") and (report["type"] == "MemoryError" or "MemoryError" in report["message"]):
        # the worker's address-space cap stopped an allocation: without it, the OOM killer's turn
        return "oom", f"tried to allocate past the worker's {MEMORY_CAP / 1024**3:.0f} GB cap ({report['type']}: " \
                      f"{report['message'][:200]})"
    if r == "refused":
        if "\n" in report["message"].strip() or not report["message"].strip():
            return "multiline", f"{report['type']}: {report['message'][:300]!r}"
        return "refused", f"{report['type']}: {report['message'][:300]}"
    if r == "raw":
        return "raw", f"{report['type']}: {report['message'][:300]}"
    if r in ("crash", "hang"):
        return r, report.get("message", "")
    if r == "listed":
        bad = [row for row in report["rows"] if "\n" in (row.get("problem") or "")]
        if bad:
            return "multiline", f"list_runs problem: {bad[0]['problem'][:300]!r}"
        if severity == "invalid" and any(row["status"] != "damaged" for row in report["rows"]):
            return "silent", f"list_runs shows an invalid run as {report['rows'][0]['status']}"
        return "loaded", "listed"
    # loaded
    if "finite" not in report:  # read, no model to run (RunInfo.read)
        return ("silent", "read an invalid manifest without complaint") if severity == "invalid" else ("loaded", "read")
    if report.get("finite") is False:
        return "silent", "loaded, and its outputs are not finite"
    if report.get("deterministic") is False:
        return "silent", "loaded, and two forward passes on the same input differ"
    if severity == "invalid":
        return "silent", f"loaded an invalid input (outputs {'equal' if report.get('same') else 'differ from'} " \
                         "the untampered ones)"
    if severity in ("suspect", "same") and report.get("same") is False:
        return "silent", f"loaded with outputs that differ from the untampered ones (max diff {report.get('diff')})"
    return "loaded", "same outputs" if report.get("same") else f"outputs differ ({report.get('diff')})"


# ----------------------------------------------------------------------------- the worker process


def _forward(model):
    import torch
    with torch.no_grad():
        x = fixed_input()
        kw = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
        return model(input_ids=x, **kw).logits.detach().clone()


def _load(kind: str, op: str, folder: Path):
    import oats
    if kind == "run":
        return oats.load_run(folder, model=tiny_model()).model.eval()
    return oats.load_compressed(folder, kernel=op)


def _perform(kind: str, op: str, folder: Path, refs: dict | None) -> dict:
    import torch

    import oats
    if kind == "run" and op == "info":
        oats.RunInfo.read(folder)
        return {"result": "loaded"}
    if kind == "run" and op == "list":
        rows = oats.list_runs(folder.parent)
        return {"result": "listed", "rows": [{"status": r["status"], "problem": r.get("problem")} for r in rows]}
    model = _load(kind, op, folder)
    a, b = _forward(model), _forward(model)
    out = {"result": "loaded", "finite": bool(torch.isfinite(a).all() and torch.isfinite(b).all()),
           "deterministic": bool(torch.equal(a, b)), "output": a.reshape(-1).tolist()}
    if refs is not None and (kind, op) in refs:
        ref = refs[kind, op]
        if a.shape == ref.shape and out["finite"]:
            diff = float((a - ref).abs().max())
            out["same"], out["diff"] = diff <= TOLERANCE, diff
        else:
            out["same"], out["diff"] = False, "shape" if a.shape != ref.shape else "nan"
    return out


def worker_main(seeds: str) -> None:
    """Read requests ({"n", "kind", "op", "folder"}) from stdin, one a line; answer each with
    ``starting N`` then one JSON line. The untampered outputs are computed first."""
    import resource
    # a tampered config or header may ask for any amount of memory: fail inside this process
    # (a MemoryError, reported as raw) instead of pushing the shared machine into swap
    limit = MEMORY_CAP
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import warnings
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(1)
    import oats
    from oats.models.loaded import quiet_transformers
    seeds = Path(seeds)
    refs = {}
    with quiet_transformers():
        for kind in KINDS:
            for op in OPS[kind]:
                if op in ("info", "list"):
                    continue
                refs[kind, op] = _forward(_load(kind, op, seeds / kind / FOLDER[kind]))
    # the protocol on private copies of stdin/stdout: a library that prints, or asks y/N on the
    # terminal (transformers' remote-code prompt), reads /dev/null and writes to stderr instead
    requests = os.fdopen(os.dup(0), "r")
    out = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)
    print("ready", file=out, flush=True)
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        print(f"starting {req['n']}", file=out, flush=True)
        try:
            with quiet_transformers():
                rep = _perform(req["kind"], req["op"], Path(req["folder"]), refs)
        except oats.OatsError as e:
            rep = {"result": "refused", "type": type(e).__name__, "message": str(e)}
        except BaseException as e:  # noqa: BLE001 - anything else is what the fuzzing looks for
            if isinstance(e, KeyboardInterrupt):
                raise
            msg = str(e)
            rep = {"result": "raw", "type": type(e).__name__, "message": " ".join(msg.split())[:500]}
        print(json.dumps({"n": req["n"], **rep}), file=out, flush=True)


class Worker:
    """A long-lived worker subprocess; ``run`` sends one request and waits at most ``timeout`` s.

    A worker that dies is reported as a crash, one that does not answer in time is killed and
    reported as a hang; either way the next request starts a fresh worker."""

    def __init__(self, seeds: str | Path, timeout: float = 60.0, start_timeout: float = 300.0):
        self.seeds, self.timeout, self.start_timeout = str(seeds), timeout, start_timeout
        self.proc = None
        self.restarts = 0
        self._buf = b""

    def _start(self) -> None:
        # remote code that does run is copied into HF_MODULES_CACHE: a scratch folder, not the user's cache
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   HF_MODULES_CACHE=str(Path(self.seeds) / "hf-modules"), HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", self.seeds],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=str(ROOT), env=env, start_new_session=True)
        self._buf = b""
        line = self._readline(self.start_timeout)
        if line != "ready":
            self.close()
            raise RuntimeError(f"the fuzz worker did not start (said {line!r})")

    def _readline(self, timeout: float) -> str | None:
        """One line from the worker, None when it closed its output or ``timeout`` passed ("" then)."""
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0:
                return ""
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()

    def run(self, n: int, kind: str, op: str, folder: str | Path) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write((json.dumps({"n": n, "kind": kind, "op": op, "folder": str(folder)}) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died(n)
        end = time.monotonic() + self.timeout
        started = False
        while True:
            line = self._readline(max(0.0, end - time.monotonic()))
            if line is None:
                return self._died(n)
            if line == "":
                self.close()
                return {"result": "hang", "message": f"no answer in {self.timeout:.0f} s"
                        + ("" if started else " (never started)")}
            if line == f"starting {n}":
                started = True
                continue
            if line.startswith("{"):
                rep = json.loads(line)
                if rep.get("n") == n:
                    return rep

    def _died(self, n: int) -> dict:
        code = self.proc.wait()
        self.proc = None
        self.restarts += 1
        what = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        return {"result": "crash", "message": f"the worker died ({what})"}

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self.restarts += 1


# ----------------------------------------------------------------------------- one case, end to end


def run_case(worker: Worker, seeds: str | Path, case: dict, work: str | Path, n: int) -> list[dict]:
    """Every operation of ``case`` (its kind's OPS) through ``worker``: one result dict per op
    (op, outcome, why, severity)."""
    folder = make_case(seeds, case, work)
    files = judge(seeds, case, folder)
    out, outputs = [], {}
    for i, op in enumerate(OPS[case["kind"]]):
        rep = worker.run(n * 10 + i, case["kind"], op, folder)
        sev = op_severity(case["kind"], op, files)
        outcome, why = classify(rep, sev)
        if marker(work).exists():
            marker(work).unlink()
            outcome, why = "code_ran", f"the folder's own code ran ({rep.get('result')}: {why})"
        out.append({"op": op, "outcome": outcome, "why": why, "severity": sev})
        outputs[op] = rep.get("output") if outcome == "loaded" and rep.get("finite") else None
    # the kernels of one export must agree with each other, whatever the case holds
    loaded = {op: o for op, o in outputs.items() if o is not None}
    if len(loaded) > 1:
        import torch
        first, ref = next(iter(loaded.items()))
        ref = torch.tensor(ref)
        for r in out:
            o = loaded.get(r["op"])
            if o is not None and r["op"] != first:
                diff = float((torch.tensor(o) - ref).abs().max()) if len(o) == len(ref) else float("inf")
                if diff > 1e-4 * max(1.0, float(ref.abs().max())):
                    r["outcome"], r["why"] = "silent", f"kernel {r['op']} and kernel {first} disagree (max diff {diff})"
    shutil.rmtree(work, ignore_errors=True)
    return out


def family(case: dict) -> str:
    """The case's mutation families, joined (a case of one mutation: its family)."""
    return "+".join(sorted({m["fam"] for m in case["muts"]}))


def reproduction(case: dict, op: str) -> str:
    """A few lines of Python that rebuild the case and run the operation in this process."""
    return ("import sys; sys.path.insert(0, 'tests'); import fuzz_cases as f\n"
            f"f.reproduce({json.dumps(case)}, op={op!r})")


def reproduce(case: dict, op: str, seeds: str | Path | None = None, work: str | Path = "/tmp/fuzz-repro"):
    """Rebuild ``case`` under ``work`` (seeds built there too unless given) and run ``op`` here,
    printing what the worker would report (a crash kills this process: that is the finding)."""
    work = Path(work)
    if seeds is None:
        seeds = work / "seeds"
        if not (seeds / "inventory.json").exists():
            build_seeds(seeds)
    folder = make_case(seeds, case, work / "case")
    print("files:", judge(seeds, case, folder))
    import oats
    try:
        rep = _perform(case["kind"], op, folder, None)
    except oats.OatsError as e:
        rep = {"result": "refused", "type": type(e).__name__, "message": str(e)}
    print(rep)
    return rep


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        worker_main(sys.argv[2])
    else:
        sys.exit("usage: fuzz_cases.py --worker SEEDS")
