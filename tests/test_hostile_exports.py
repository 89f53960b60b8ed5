"""Hostile exports (issue 21): one table of damaged or tampered export folders, each loaded by
``oats.load_compressed`` with every kernel that applies, each with the exact outcome it expects.

The folders are made from real tiny exports (a Llama of one block whose MLP is 300 wide, so
its down projection has a full 256-column CSR8 segment and a narrower last one; attention with
biases): the sparse layout (CSR8), the same in format 1 (CSR on disk) and the folded layout.

Every load runs in a child process, one per CSR8 backend (the C kernels, and numba through
``OATS_CSR8_BACKEND``): a tampered index that slipped through would read out of bounds and kill
the process, so the parent checks each child's exit status (no signal), its stderr (no
traceback) and that every case reported. A case that must load is compared with the run's own
model; every refusal must be the expected typed error with exactly the expected one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from oats.deploy import kernels
from oats.deploy.export import EXPORT_FILE, SPARSE_FILE, export_run
from oats.models.guard import MAX_DIMENSION

ROOT = Path(__file__).resolve().parents[1]
DOWN = "model.layers.0.mlp.down_proj"  # (32, 300): segments of 256 and 44 columns
Q = "model.layers.0.self_attn.q_proj"  # (32, 32) with a bias: one segment, 32 wide
IDS = [[3, 7, 1, 9, 12, 5], [4, 4, 8, 2, 60, 33]]
AGAIN = "export the run again"
ALL = "…"  # in an expected message: any text


# ----------------------------------------------------------------------------- the real exports


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """{"sparse", "csr", "folded"}: the tiny model's exports, and the run model's logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from oats.compress.pipeline import compress_model
    from oats.config import OatsConfig

    root = tmp_path_factory.mktemp("hostile-bases")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=300, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      attention_bias=True)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, 64, (2, 8), generator=g)} for _ in range(2)]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = compress_model(model, calib, OatsConfig(compression=0.5, rank_ratio=0.25, iterations=2))
        out = {layout: export_run(run, root / layout, layout) for layout in ("sparse", "folded")}
        with torch.no_grad(), run.use_mode("both"):
            ref = run.model(input_ids=torch.tensor(IDS), use_cache=False).logits
    finally:
        torch.set_num_threads(n)
    # format 1: S in CSR on disk (int32 row pointers, int16 columns), as oats wrote before CSR8
    out["csr"] = root / "csr"
    shutil.copytree(out["sparse"], out["csr"])
    info = json.loads((out["csr"] / EXPORT_FILE).read_text())
    t = load_file(str(out["csr"] / SPARSE_FILE))
    for path, spec in info["layers"].items():
        crow, col = kernels.csr8_to_csr(t.pop(f"{path}.segment_ptr"), t.pop(f"{path}.col_offsets"), *spec["shape"])
        t[f"{path}.crow_indices"], t[f"{path}.col_indices"] = crow, col.to(torch.int16)
    save_file(t, str(out["csr"] / SPARSE_FILE))
    info["oats_export"] = 1
    (out["csr"] / EXPORT_FILE).write_text(json.dumps(info))
    out["ref"] = ref
    return out


# ----------------------------------------------------------------------------- editing a copy


def _tensors(folder: Path, name: str = SPARSE_FILE) -> dict:
    return load_file(str(folder / name))


def _save(folder: Path, t: dict, name: str = SPARSE_FILE) -> None:
    save_file({k: v.contiguous() for k, v in t.items()}, str(folder / name), metadata={"format": "pt"})


def _edit_tensors(fn: Callable[[dict], dict | None], name: str = SPARSE_FILE):
    """A mutation that edits the weight file's tensors; ``fn`` may return message fields."""
    def mutate(folder: Path):
        t = _tensors(folder, name)
        fields = fn(t)
        _save(folder, t, name)
        return fields
    return mutate


def _edit_json(fn: Callable[[dict], None], name: str = EXPORT_FILE):
    def mutate(folder: Path):
        m = json.loads((folder / name).read_text())
        fn(m)
        (folder / name).write_text(json.dumps(m))
    return mutate


def _write(name: str, text: str):
    def mutate(folder: Path):
        (folder / name).write_text(text)
    return mutate


def _segments(t: dict, path: str = DOWN, d_in: int = 300) -> torch.Tensor:
    """The segment (0 = full, 1 = last) of each entry of a layer's CSR8 S."""
    ptr = t[f"{path}.segment_ptr"].long()
    nseg = kernels.segments(d_in)
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1) % nseg, ptr[1:] - ptr[:-1])


def _set_offset(dtype: torch.dtype, value: int, segment: int, path: str = DOWN):
    """The first offset of ``path`` in ``segment`` set to ``value``, the offsets stored as ``dtype``."""
    def fn(t):
        off = t[f"{path}.col_offsets"].to(dtype)
        j = int((_segments(t, path, 300 if path == DOWN else 32) == segment).nonzero()[0])
        off[j] = value
        t[f"{path}.col_offsets"] = off
        return {"j": j}
    return fn


def _set(key: str, index: int, value, dtype: torch.dtype | None = None):
    def fn(t):
        x = t[key] if dtype is None else t[key].to(dtype)
        x.view(-1)[index] = value
        t[key] = x
        return {"n": t[key].numel()}
    return fn


def _swap_in_segment(t):
    seg = _segments(t)
    ptr = t[f"{DOWN}.segment_ptr"].long()
    r = int(((ptr[1:] - ptr[:-1]) >= 2).nonzero()[0])  # a segment of two entries or more
    j = int(ptr[r])
    off = t[f"{DOWN}.col_offsets"].clone()
    off[j], off[j + 1] = int(off[j + 1]), int(off[j])
    t[f"{DOWN}.col_offsets"] = off
    assert int(seg[j]) == int(seg[j + 1])
    return {"j": j}


def _cut(key: str, n: int = 1):
    def fn(t):
        size = t[key].numel()
        t[key] = t[key][:size - n].clone()
        return {"n": size, "m": size - n}
    return fn


def _drop(key: str):
    return lambda t: t.pop(key) is None


def _nnz(t, path: str = DOWN) -> dict:
    return {"nnz": t[f"{path}.values"].numel()}


def _layer(path: str, key: str, value):
    return _edit_json(lambda m: m["layers"][path].__setitem__(key, value))


def _symlink_outside(name: str):
    """``name`` replaced by a link to a copy of itself outside the folder."""
    def mutate(folder: Path):
        outside = folder.parent / f"{folder.name}-outside-{name}"
        shutil.move(str(folder / name), outside)
        (folder / name).symlink_to(outside)
        return {"real": str(outside.resolve())}
    return mutate


def _fifo(name: str):
    def mutate(folder: Path):
        (folder / name).unlink()
        os.mkfifo(folder / name)
    return mutate


def _truncate(name: str):
    def mutate(folder: Path):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:len(data) // 2])
    return mutate


def _oversized_header(name: str):
    def mutate(folder: Path):
        data = bytearray((folder / name).read_bytes())
        data[:8] = struct.pack("<Q", 2**40)
        (folder / name).write_bytes(bytes(data))
    return mutate


def _overlapping_offsets(folder: Path):
    """Two tensors' data_offsets made to overlap (the header stays the same length)."""
    path = folder / SPARSE_FILE
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    key = f"{Q}.v"
    a, b = header[key]["data_offsets"]
    header[key]["data_offsets"] = [a - 8, b - 8]
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= n
    path.write_bytes(data[:8] + text.ljust(n, b" ") + data[8 + n:])


def _evil_code(model_type: str | None):
    """config.json asks for the folder's own code (auto_map); the code, if ever run, leaves a mark."""
    def mutate(folder: Path):
        payload = f"open({str(folder / 'CODE_RAN')!r}, 'w').write('ran')\n"
        (folder / "configuration_evil.py").write_text(payload + "from transformers import LlamaConfig\n"
                                                      "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n")
        (folder / "modeling_evil.py").write_text(payload)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                           "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        if model_type:
            cfg["model_type"] = model_type
        (folder / "config.json").write_text(json.dumps(cfg))
    return mutate


def _config(key: str, value):
    return _edit_json(lambda c: c.__setitem__(key, value), "config.json")


def _remove(name: str):
    return lambda folder: (folder / name).unlink()


def _rename_layer(folder: Path):
    new = DOWN.replace("layers.0", "layers.5")
    m = json.loads((folder / EXPORT_FILE).read_text())
    m["layers"][new] = m["layers"].pop(DOWN)
    (folder / EXPORT_FILE).write_text(json.dumps(m))
    t = _tensors(folder)
    _save(folder, {k.replace(DOWN, new): v for k, v in t.items()})


def _replace_in_manifest(old: str, new: str):
    def mutate(folder: Path):
        text = (folder / EXPORT_FILE).read_text()
        assert old in text
        (folder / EXPORT_FILE).write_text(text.replace(old, new, 1))
    return mutate


def _manifest_nnz_infinity(folder: Path):
    m = json.loads((folder / EXPORT_FILE).read_text())
    m["layers"][DOWN]["nnz"] = 123456789
    (folder / EXPORT_FILE).write_text(json.dumps(m).replace("123456789", "Infinity"))


def _oversized_manifest(folder: Path):
    text = (folder / EXPORT_FILE).read_text()
    (folder / EXPORT_FILE).write_text(text + " " * (17 * 1024**2))


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    base: str                       # "sparse", "csr" (format 1) or "folded"
    mutate: Callable | None         # edits the copy; may return fields for the message
    error: str | None               # the oats.errors class expected; None: it loads, to the run's outputs
    message: str = ""               # exact, with {folder} and the fields; ALL matches any text
    crash: bool = False             # unchecked, this would read out of bounds (SIGSEGV or garbage)
    marks: dict = field(default_factory=dict)


def _layer_error(path: str, what: str) -> str:
    return f"'{{folder}}': layer '{path}': {what}: {AGAIN}"


def _bad(what: str) -> str:
    return f"'{{folder}}': {what}: {AGAIN}"


def _manifest_bad(what: str) -> str:
    return _bad(f"{EXPORT_FILE} is damaged ({what})")


ARCH = "LlamaForCausalLM"
SAFETENSORS_BAD = "is missing or unreadable (not a sound safetensors file: damaged, truncated or another format)"
MEMORY = ("the export '{folder}' needs about … of memory (weights …) but … is available: use a smaller model or a "
          "machine with more memory…")

CASES: dict[str, Case] = {
    # --- intact, and what may differ and still load
    "valid": Case("sparse", None, None),
    "offsets_int32_in_range": Case("sparse", _edit_tensors(lambda t: t.__setitem__(
        f"{DOWN}.col_offsets", t[f"{DOWN}.col_offsets"].to(torch.int32))), None),
    "config_auto_map_known_architecture": Case("sparse", _evil_code(None), None),
    # --- CSR8 column offsets: judged on their own values, before any cast to uint8
    "offset_int32_1e9_full_segment": Case("sparse", _edit_tensors(_set_offset(torch.int32, 10**9, 0)), "RunError",
                                          _layer_error(DOWN, "col_offsets is out of range (offset 1000000000 at entry "
                                                             "{j}, in a segment of 256 columns)"), crash=True),
    "offset_int16_300_full_segment": Case("sparse", _edit_tensors(_set_offset(torch.int16, 300, 0)), "RunError",
                                          _layer_error(DOWN, "col_offsets is out of range (offset 300 at entry {j}, in "
                                                             "a segment of 256 columns)"), crash=True),
    "offset_int8_minus1_last_segment": Case("sparse", _edit_tensors(_set_offset(torch.int8, -1, 0, Q)), "RunError",
                                            _layer_error(Q, "col_offsets is out of range (offset -1 at entry {j}, in a "
                                                            "segment of 32 columns)"), crash=True),
    "offset_int64_negative_full_segment": Case("sparse", _edit_tensors(_set_offset(torch.int64, -2**40, 0)),
                                               "RunError", _layer_error(DOWN, "col_offsets is out of range (offset "
                                                                              "-1099511627776 at entry {j}, in a "
                                                                              "segment of 256 columns)"), crash=True),
    "offset_uint8_past_narrow_last_segment": Case("sparse", _edit_tensors(_set_offset(torch.uint8, 60, 1)), "RunError",
                                                  _layer_error(DOWN, "col_offsets is out of range (offset 60 at entry "
                                                                     "{j}, in a segment of 44 columns)"), crash=True),
    "offsets_float": Case("sparse", _edit_tensors(lambda t: t.__setitem__(
        f"{DOWN}.col_offsets", t[f"{DOWN}.col_offsets"].float())), "RunError",
        _layer_error(DOWN, "col_offsets is float32, not an integer array")),
    "offsets_out_of_order": Case("sparse", _edit_tensors(_swap_in_segment), "RunError",
                                 _layer_error(DOWN, "col_offsets is out of order (entry {j1} does not follow entry {j} "
                                                    "within its segment)")),
    "offsets_one_short": Case("sparse", _edit_tensors(_cut(f"{DOWN}.col_offsets")), "RunError",
                              _layer_error(DOWN, "col_offsets has shape ({m},), not ({n},)"), crash=True),
    # --- CSR8 segment pointers
    "segment_ptr_past_the_end": Case("sparse", _edit_tensors(lambda t: _nnz(t) | _set(
        f"{DOWN}.segment_ptr", -1, t[f"{DOWN}.values"].numel() + 5)(t)), "RunError",
        _layer_error(DOWN, "segment_ptr is out of range (from 0 to {nnz5}, not from 0 to the {nnz} values)"),
        crash=True),
    "segment_ptr_negative_start": Case("sparse", _edit_tensors(lambda t: _nnz(t) | _set(
        f"{DOWN}.segment_ptr", 0, -1)(t)), "RunError",
        _layer_error(DOWN, "segment_ptr is out of range (from -1 to {nnz}, not from 0 to the {nnz} values)"),
        crash=True),
    "segment_ptr_huge_in_the_middle": Case("sparse", _edit_tensors(_set(f"{DOWN}.segment_ptr", 1, 2**31 - 1)),
                                           "RunError", _layer_error(DOWN, "segment_ptr is out of range (it decreases "
                                                                          "at entry 2)"), crash=True),
    "segment_ptr_int64_beyond_int32": Case("sparse", _edit_tensors(_set(f"{DOWN}.segment_ptr", 1, 2**40, torch.int64)),
                                           "RunError", _layer_error(DOWN, "segment_ptr is out of range (it decreases "
                                                                          "at entry 2)"), crash=True),
    "segment_ptr_float": Case("sparse", _edit_tensors(lambda t: t.__setitem__(
        f"{DOWN}.segment_ptr", t[f"{DOWN}.segment_ptr"].double())), "RunError",
        _layer_error(DOWN, "segment_ptr is float64, not an integer array")),
    "segment_ptr_one_short": Case("sparse", _edit_tensors(_cut(f"{DOWN}.segment_ptr")), "RunError",
                                  _layer_error(DOWN, "segment_ptr has shape ({m},), not ({n},)"), crash=True),
    # --- values and factors: floats, finite, of the manifest's rank
    "values_nan": Case("sparse", _edit_tensors(_set(f"{DOWN}.values", 0, float("nan"))), "RunError",
                       _layer_error(DOWN, "values holds NaN or infinite values")),
    "values_inf": Case("sparse", _edit_tensors(_set(f"{Q}.values", 3, float("inf"))), "RunError",
                       _layer_error(Q, "values holds NaN or infinite values")),
    "values_integer": Case("sparse", _edit_tensors(lambda t: t.__setitem__(
        f"{DOWN}.values", (t[f"{DOWN}.values"] * 100).to(torch.int32))), "RunError",
        _layer_error(DOWN, "values is int32, not a float array")),
    "values_float16": Case("sparse", _edit_tensors(lambda t: t.__setitem__(
        f"{DOWN}.values", t[f"{DOWN}.values"].to(torch.float16))), "RunError",
        _layer_error(DOWN, "values is float16, the architecture's weights are float32")),
    "factor_v_float64": Case("sparse", _edit_tensors(lambda t: t.__setitem__(f"{Q}.v", t[f"{Q}.v"].double())),
        "RunError", _layer_error(Q, "v is float64, the architecture's weights are float32")),
    "factors_integer": Case("sparse", _edit_tensors(lambda t: t.__setitem__(
        f"{DOWN}.u0", (t[f"{DOWN}.u0"] * 100).to(torch.int64))), "RunError",
        _layer_error(DOWN, "u is int64, not a float array")),
    "factor_v_bool": Case("sparse", _edit_tensors(lambda t: t.__setitem__(f"{Q}.v", t[f"{Q}.v"] > 0)), "RunError",
                          _layer_error(Q, "v is bool, not a float array")),
    "factor_v_nan": Case("sparse", _edit_tensors(_set(f"{Q}.v", 5, float("nan"))), "RunError",
                         _layer_error(Q, "v holds NaN or infinite values")),
    "bias_inf": Case("sparse", _edit_tensors(_set(f"{Q}.bias", 0, float("-inf"))), "RunError",
                     _layer_error(Q, "bias holds NaN or infinite values")),
    "factor_v_short_of_rank": Case("sparse", _edit_tensors(lambda t: {"r": t[f"{DOWN}.v"].shape[0]} | {
        "r1": t.__setitem__(f"{DOWN}.v", t[f"{DOWN}.v"][:-1].clone()) or t[f"{DOWN}.v"].shape[0]}), "RunError",
        _layer_error(DOWN, "v has shape ({r1}, 300), the manifest says rank {r}")),
    "factor_u_missing": Case("sparse", _edit_tensors(_drop(f"{DOWN}.u0")), "RunError",
                             _layer_error(DOWN, f"{SPARSE_FILE} has no tensor '{DOWN}.u0'")),
    "factor_u_extra_part": Case("sparse", _edit_tensors(lambda t: t.__setitem__(f"{DOWN}.u1", t[f"{DOWN}.u0"].clone())),
                                "RunError", _bad(f"{SPARSE_FILE} holds tensor '{DOWN}.u1', which the {ARCH} "
                                                 "architecture has no place for")),
    # --- the other tensors of the file
    "tensor_unknown_name": Case("sparse", _edit_tensors(lambda t: t.__setitem__("evil.payload", torch.zeros(3))),
                                "RunError", _bad(f"{SPARSE_FILE} holds tensor 'evil.payload', which the {ARCH} "
                                                 "architecture has no place for")),
    "tensors_of_a_layer_the_manifest_does_not_name": Case(
        "sparse", _edit_json(lambda m: m["layers"].pop(DOWN)), "RunError",
        _bad(f"{SPARSE_FILE} holds tensor '{DOWN}.{ALL}', which the {ARCH} architecture has no place for")),
    "dense_weight_nan": Case("sparse", _edit_tensors(_set("model.norm.weight", 2, float("nan"))), "RunError",
                             _bad("tensor 'model.norm.weight' holds NaN or infinite values")),
    "dense_weight_integer": Case("sparse", _edit_tensors(lambda t: t.__setitem__(
        "model.embed_tokens.weight", t["model.embed_tokens.weight"].to(torch.int32))), "RunError",
        _bad("tensor 'model.embed_tokens.weight' is int32, the architecture's is float32")),
    "dense_weight_wrong_shape": Case("sparse", _edit_tensors(_cut("model.norm.weight")), "RunError",
                                     _bad("tensor 'model.norm.weight' has shape (31,), the architecture's is (32,)")),
    "dense_weight_missing": Case("sparse", _edit_tensors(_drop("model.norm.weight")), "RunError",
                                 _bad(f"{SPARSE_FILE} has no tensor 'model.norm.weight'")),
    # --- format 1: S in CSR
    "csr_valid": Case("csr", None, None),
    "csr_col_int32_1e9": Case("csr", _edit_tensors(_set(f"{DOWN}.col_indices", 0, 10**9, torch.int32)), "RunError",
                              _layer_error(DOWN, "col_indices is out of range (column 1000000000 in a layer of 300 "
                                                 "columns)"), crash=True),
    "csr_col_negative": Case("csr", _edit_tensors(_set(f"{DOWN}.col_indices", 4, -1)), "RunError",
                             _layer_error(DOWN, "col_indices is out of range (column -1 in a layer of 300 columns)"),
                             crash=True),
    "csr_col_repeated": Case("csr", _edit_tensors(lambda t: _set(f"{DOWN}.col_indices", 1,
                                                                 int(t[f"{DOWN}.col_indices"][0]))(t)), "RunError",
                             _layer_error(DOWN, "col_indices is out of order (entry 1 does not follow entry 0 within "
                                                "its row)")),
    "csr_crow_past_the_end": Case("csr", _edit_tensors(lambda t: _nnz(t) | _set(
        f"{DOWN}.crow_indices", -1, t[f"{DOWN}.values"].numel() + 7)(t)), "RunError",
        _layer_error(DOWN, "crow_indices is out of range (from 0 to {nnz7}, not from 0 to the {nnz} values)"),
        crash=True),
    "csr_col_float": Case("csr", _edit_tensors(lambda t: t.__setitem__(
        f"{DOWN}.col_indices", t[f"{DOWN}.col_indices"].half())), "RunError",
        _layer_error(DOWN, "col_indices is float16, not an integer array")),
    # --- oats_export.json
    "manifest_100k_brackets": Case("sparse", _write(EXPORT_FILE, "[" * 100_000), "RunError",
                                   _manifest_bad("it nests deeper than 32 levels")),
    "manifest_infinity": Case("sparse", _manifest_nnz_infinity, "RunError",
                              _manifest_bad("it holds Infinity, which is not a JSON number")),
    "manifest_number_past_float": Case("sparse", _replace_in_manifest('"rank_ratio": ', '"rank_ratio": 1e999, "x": '),
                                       "RunError", _manifest_bad("it holds the number 1e999, too large for a float")),
    "manifest_not_an_object": Case("sparse", _write(EXPORT_FILE, "[1, 2]"), "RunError",
                                   _manifest_bad("not a JSON object")),
    "manifest_format_true": Case("sparse", _edit_json(lambda m: m.__setitem__("oats_export", True)), "RunError",
                                 _manifest_bad("oats_export True is not a format number")),
    "manifest_format_newer": Case("sparse", _edit_json(lambda m: m.__setitem__("oats_export", 3)), "RunError",
                                  "'{folder}' was exported by a newer oats (format 3): upgrade oats"),
    "manifest_kind_unknown": Case("sparse", _edit_json(lambda m: m.__setitem__("kind", "pickle")), "RunError",
                                  _manifest_bad("kind 'pickle' is not one of transformers, timm")),
    "manifest_class_not_a_model": Case("sparse", _edit_json(lambda m: m.__setitem__("class", "AutoTokenizer")),
                                       "RunError", _bad(f"{EXPORT_FILE} names 'AutoTokenizer', which is not a "
                                                        "transformers model class")),
    "manifest_class_unknown": Case("sparse", _edit_json(lambda m: m.__setitem__("class", "NoSuchModelForCausalLM")),
                                   "RunError", "'{folder}': this transformers has no model class "
                                               "'NoSuchModelForCausalLM': upgrade transformers"),
    "manifest_class_not_a_name": Case("sparse", _edit_json(lambda m: m.__setitem__("class", "os.system")), "RunError",
                                      _manifest_bad("class 'os.system' is not a class name")),
    "manifest_attention_from_the_hub": Case("sparse", _edit_json(lambda m: m.__setitem__(
        "attn_implementation", "kernels-community/flash-attn")), "RunError",
        _manifest_bad("attn_implementation 'kernels-community/flash-attn' is not one of eager, sdpa, flash_attention_2, "
                      "flash_attention_3, flex_attention")),
    "manifest_shape_strings": Case("sparse", _layer(DOWN, "shape", ["32", 300]), "RunError",
                                   _manifest_bad(f"layer '{DOWN}' has shape ['32', 300], not two sizes from 1 to "
                                                 f"{MAX_DIMENSION}")),
    "manifest_shape_past_int32": Case("sparse", _layer(DOWN, "shape", [2**40, 300]), "RunError",
                                      _manifest_bad(f"layer '{DOWN}' has shape [1099511627776, 300], not two sizes "
                                                    f"from 1 to {MAX_DIMENSION}")),
    "manifest_shape_not_the_architectures": Case("sparse", _layer(DOWN, "shape", [32, 301]), "RunError",
                                                 _bad(f"layer '{DOWN}' is (32, 301) in the manifest, not a linear of "
                                                      "that shape in the architecture")),
    "manifest_rank_past_the_shape": Case("sparse", _layer(DOWN, "rank", 10**6), "RunError",
                                         _manifest_bad(f"layer '{DOWN}' has rank 1000000, not a count from 0 to 32")),
    "manifest_nnz_not_the_files": Case("sparse", _layer(DOWN, "nnz", 7), "RunError",
                                       _bad(f"layer '{DOWN}': {ALL} values, the manifest says 7")),
    "manifest_bias_a_string": Case("sparse", _layer(Q, "bias", "yes"), "RunError",
                                   _manifest_bad(f"layer '{Q}' has bias 'yes', not true or false")),
    "manifest_bias_false_with_a_bias_tensor": Case("sparse", _layer(Q, "bias", False), "RunError",
                                                   _bad(f"{SPARSE_FILE} holds tensor '{Q}.bias', which the {ARCH} "
                                                        "architecture has no place for")),
    "manifest_part_rows_out_of_range": Case("sparse", _layer(DOWN, "part_rows", [[0, 999]]), "RunError",
                                            _manifest_bad(f"layer '{DOWN}' has part_rows [[0, 999]], not row ranges "
                                                          "[start, stop] within its 32 rows")),
    "manifest_layer_name_a_path": Case("sparse", _edit_json(lambda m: m["layers"].__setitem__(
        "../../etc", m["layers"].pop(DOWN))), "RunError", _manifest_bad("layer name '../../etc' is not a module path")),
    "manifest_layer_not_in_the_architecture": Case("sparse", _rename_layer, "RunError",
                                                   _bad(f"layer '{DOWN.replace('layers.0', 'layers.5')}' is not in "
                                                        f"the {ARCH} architecture")),
    "manifest_layers_a_list": Case("sparse", _edit_json(lambda m: m.__setitem__("layers", [])), "RunError",
                                   _manifest_bad("it names no compressed layers")),
    "manifest_aliases_not_names": Case("sparse", _edit_json(lambda m: m.__setitem__("aliases", {"a": 5})), "RunError",
                                       _manifest_bad("aliases is not a table of tensor names")),
    "manifest_a_named_pipe": Case("sparse", _fifo(EXPORT_FILE), "RunError",
                                  _manifest_bad("it is a named pipe, not a file")),
    "manifest_oversized": Case("sparse", _oversized_manifest, "RunError",
                               _manifest_bad("it is 17 MB, over the 16 MB this reader accepts")),
    "manifest_symlink_outside": Case("sparse", _symlink_outside(EXPORT_FILE), "RunError",
                                     _manifest_bad(f"'{EXPORT_FILE}' leads outside the folder (a link to {{real}})")),
    # --- config.json
    "config_auto_map_unknown_architecture": Case("sparse", _evil_code("evil"), "RunError",
                                                 _bad("config.json needs the folder's own code (auto_map), which oats "
                                                      "never runs")),
    "config_hidden_size_1e7": Case("sparse", _config("hidden_size", 10**7), "ResourceError", MEMORY),
    "config_hidden_size_a_string": Case("sparse", _config("hidden_size", "32"), "RunError",
                                        "'{folder}': config.json declares hidden_size = '32', not a plausible width: "
                                        "fix config.json or use the model's original files"),
    "config_100k_brackets": Case("sparse", _write("config.json", "{\"a\": " + "[" * 100_000), "RunError",
                                 _bad("config.json is damaged (it nests deeper than 32 levels)")),
    "config_missing": Case("sparse", _remove("config.json"), "RunError", _bad("config.json is missing")),
    "config_of_another_architecture": Case("sparse", _write("config.json", json.dumps({"model_type": "bert"})),
                                           "RunError", _bad(f"config.json describes a BertConfig, not the config of "
                                                            f"{ARCH}")),
    # --- the weights file
    "weights_truncated": Case("sparse", _truncate(SPARSE_FILE), "RunError", _bad(f"{SPARSE_FILE} {SAFETENSORS_BAD}")),
    "weights_header_oversized": Case("sparse", _oversized_header(SPARSE_FILE), "RunError",
                                     _bad(f"{SPARSE_FILE} {SAFETENSORS_BAD}")),
    "weights_offsets_overlap": Case("sparse", _overlapping_offsets, "RunError",
                                    _bad(f"{SPARSE_FILE} is missing or unreadable (SafetensorError)")),
    "weights_symlink_outside": Case("sparse", _symlink_outside(SPARSE_FILE), "RunError",
                                    _bad(f"{SPARSE_FILE} is refused ('{SPARSE_FILE}' leads outside the folder (a link "
                                         "to {real}))")),
    "weights_a_named_pipe": Case("sparse", _fifo(SPARSE_FILE), "RunError",
                                 _bad(f"{SPARSE_FILE} is refused (it is a named pipe, not a file)")),
    "weights_missing": Case("sparse", _remove(SPARSE_FILE), "RunError", _bad(f"{SPARSE_FILE} is missing or unreadable")),
    # --- the folded layout
    "folded_valid": Case("folded", None, None),
    "folded_weight_nan": Case("folded", _edit_tensors(_set(f"{DOWN}.weight", 0, float("nan")), "model.safetensors"),
                              "RunError", _bad(f"tensor '{DOWN}.weight' holds NaN or infinite values")),
    "folded_weight_integer": Case("folded", _edit_tensors(lambda t: t.__setitem__(
        f"{DOWN}.weight", (t[f"{DOWN}.weight"] * 100).to(torch.int32)), "model.safetensors"), "RunError",
        _bad(f"tensor '{DOWN}.weight' is I32 in the weights file, not a float type")),
    "folded_weight_missing": Case("folded", _edit_tensors(_drop(f"{DOWN}.weight"),
                                                          "model.safetensors"), "RunError",
                                  _bad(f"model.safetensors has no tensor '{DOWN}.weight'")),
    "folded_unknown_tensor": Case("folded", _edit_tensors(lambda t: t.__setitem__("evil.payload", torch.zeros(2)),
                                                          "model.safetensors"), "RunError",
                                  _bad(f"model.safetensors holds tensor 'evil.payload', which the {ARCH} architecture "
                                       "has no place for")),
    "folded_truncated": Case("folded", _truncate("model.safetensors"), "RunError",
                             _bad(f"model.safetensors {SAFETENSORS_BAD}")),
    "folded_symlink_outside": Case("folded", _symlink_outside("model.safetensors"), "RunError",
                                   _bad("model.safetensors is refused ('model.safetensors' leads outside the folder (a "
                                        "link to {real}))")),
    "folded_hidden_size_1e7": Case("folded", _config("hidden_size", 10**7), "ResourceError", MEMORY),
    "folded_auto_map_unknown_architecture": Case("folded", _evil_code("evil"), "RunError",
                                                 _bad("config.json needs the folder's own code (auto_map), which oats "
                                                      "never runs")),
    "folded_class_not_a_model": Case("folded", _edit_json(lambda m: m.__setitem__("class", "AutoConfig")), "RunError",
                                     _bad(f"{EXPORT_FILE} names 'AutoConfig', which is not a transformers model class")),
}


# ----------------------------------------------------------------------------- running them


CHILD = textwrap.dedent("""
    import json, sys, torch
    from safetensors.torch import save_file
    import oats
    jobs, out = json.loads(sys.argv[1]), sys.argv[2]
    ids = torch.tensor(json.loads(sys.argv[3]))
    with open(out + "/results.jsonl", "w") as fh:
        for name, folder, kernel in jobs:
            print(name, kernel, file=sys.stderr, flush=True)  # a crash names its case
            try:
                model = oats.load_compressed(folder, kernel=kernel)
                with torch.no_grad():
                    y = model(input_ids=ids, use_cache=False).logits
                kernels = sorted({m.kernel for m in model.modules() if hasattr(m, "segment_ptr") or
                                  hasattr(m, "crow_indices")})
                save_file({"y": y.contiguous()}, f"{out}/{name}-{kernel}.safetensors")
                row = {"error": None, "kernels": kernels}
            except Exception as e:
                row = {"error": type(e).__name__, "module": type(e).__module__, "message": str(e)}
            fh.write(json.dumps({"case": name, "kernel": kernel, **row}) + "\\n")
            fh.flush()
""")

RUNS = {"c": ("csr8", "csr", "auto"), "numba": ("csr8", "auto")}
"""The kernels each CSR8 backend runs a sparse case with (csr does not use the backend)."""


def _backend_or_fail(name: str) -> None:
    from conftest import skip_or_fail
    if name == "c" and kernels._compiler() is None:
        skip_or_fail("no C compiler here: the C backend cannot be built")
    if name == "numba" and not kernels._numba_installed():
        skip_or_fail("numba is not installed (a dependency of oats)")


@pytest.fixture(scope="module")
def folders(bases, tmp_path_factory):
    """Each case's folder (a copy of its base, mutated) and the fields of its message."""
    root = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, case in CASES.items():
        folder = root / name
        shutil.copytree(bases[case.base], folder)
        fields = (case.mutate(folder) if case.mutate else None) or {}
        if "j" in fields:
            fields["j1"] = fields["j"] + 1
        if "nnz" in fields:
            fields.update(nnz5=fields["nnz"] + 5, nnz7=fields["nnz"] + 7)
        out[name] = (folder, fields)
    return out


@pytest.fixture(scope="module", params=list(RUNS))
def results(request, folders, tmp_path_factory):
    """{(case, kernel): what the load gave} from one child process with this CSR8 backend; the
    child must end by itself (no signal), with no traceback."""
    backend = request.param
    _backend_or_fail(backend)
    out = tmp_path_factory.mktemp(f"hostile-{backend}")
    jobs = []
    for name, case in CASES.items():
        for kernel in (("auto",) if case.base == "folded" else RUNS[backend]):
            jobs.append([name, str(folders[name][0]), kernel])
    env = {**os.environ, kernels.BACKEND_ENV: backend, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs), str(out), json.dumps(IDS)], cwd=ROOT,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
    assert proc.returncode == 0, f"the {backend} child died (status {proc.returncode}) at case {last}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [[r["case"], r["kernel"]] for r in rows] == [[n, k] for n, _, k in jobs]
    return backend, out, {(r["case"], r["kernel"]): r for r in rows}


def _expected(case: Case, folder: Path, fields: dict) -> re.Pattern:
    text = case.message.format(folder=folder, **fields)
    return re.compile(".*".join(re.escape(part) for part in text.split(ALL)), re.S)


def test_the_table_covers_the_issue():
    crash = [n for n, c in CASES.items() if c.crash]
    refused = [n for n, c in CASES.items() if c.error]
    assert len(refused) >= 35 and len(crash) >= 10
    assert {c.base for c in CASES.values()} == {"sparse", "csr", "folded"}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_export(name, results, folders, bases):
    backend, out, rows = results
    case = CASES[name]
    folder, fields = folders[name]
    mine = {k: r for (n, k), r in rows.items() if n == name}
    for kernel, r in mine.items():
        where = f"{name} with kernel {kernel} on the {backend} backend"
        if case.error is None:
            assert r["error"] is None, f"{where}: {r}"
            y = load_file(str(out / f"{name}-{kernel}.safetensors"))["y"]
            rel = float((y - bases["ref"]).abs().max() / bases["ref"].abs().max())
            assert rel < 1e-5, f"{where}: outputs differ from the run's ({rel:.2e})"
            if case.base != "folded":
                want = {"csr": ["csr"]}.get(kernel, ["csr8"])
                assert r["kernels"] == want, where
        else:
            assert (r["error"], r["module"]) == (case.error, "oats.errors"), f"{where}: {r}"
            assert "\n" not in r["message"], f"{where}: more than one line: {r['message']!r}"
            assert _expected(case, folder, fields).fullmatch(r["message"]), \
                f"{where}:\n got  {r['message']}\n want {case.message.format(folder=folder, **fields)}"
    assert not (folder / "CODE_RAN").exists(), f"{name}: the folder's own code ran"
