"""Adapters for the supported families. Each is a small declarative class."""

from __future__ import annotations

from torch import nn

from oats.errors import UnsupportedModelError
from oats.models.adapters.base import Adapter, LinearRef, model_type, register_adapter, weight_of
from oats.models.vision import is_timm_vit


def _present(block: nn.Module, refs: list[LinearRef]) -> list[LinearRef]:
    """Keep the refs whose module exists in this block (e.g. optional biases/variants)."""
    out = []
    for r in refs:
        try:
            block.get_submodule(r.path)
        except AttributeError:
            continue
        out.append(r)
    return out


def _layout(family: str, block: nn.Module, *groups: list[list[LinearRef]]) -> list[LinearRef]:
    """The refs of a block whose module layout varies (library versions, variants).

    Each group (e.g. attention, MLP) lists alternative layouts; the first whose modules all
    exist is taken. A group with no complete alternative raises, so a renamed module is an
    error rather than a silently uncompressed matrix.
    """
    out: list[LinearRef] = []
    for alternatives in groups:
        for refs in alternatives:
            if len(_present(block, refs)) == len(refs):
                out.extend(refs)
                break
        else:
            wanted = " or ".join("(" + ", ".join(r.path for r in refs) + ")" for refs in alternatives)
            raise UnsupportedModelError(
                f"{type(block).__name__} looks like {family} but has none of the expected linears {wanted}: "
                "this library version is not supported (try the generic adapter)")
    return out


@register_adapter
class LlamaAdapter(Adapter):
    family = "llama"
    description = "Llama-style decoder (Llama, SmolLM2, TinyLlama, Qwen2, Mistral): q, k, v, o, gate, up, down"
    block_paths = ["model.layers", "layers"]
    types = ("llama", "qwen2", "mistral", "qwen3", "olmo", "olmo2")

    @classmethod
    def matches(cls, model):
        return model_type(model) in cls.types

    def linears(self, model, block):
        return _layout(self.family, block, [[
            LinearRef("q", "self_attn.q_proj", "attn"), LinearRef("k", "self_attn.k_proj", "attn"),
            LinearRef("v", "self_attn.v_proj", "attn"), LinearRef("o", "self_attn.o_proj", "attn"),
        ]], [[
            LinearRef("gate", "mlp.gate_proj", "mlp"), LinearRef("up", "mlp.up_proj", "mlp"),
            LinearRef("down", "mlp.down_proj", "mlp"),
        ]])


@register_adapter
class Phi3Adapter(Adapter):
    family = "phi3"
    description = "Phi-3 decoder: fused qkv split into q, k, v (each decomposed); gate_up kept whole; o, down"
    block_paths = ["model.layers", "layers"]

    @classmethod
    def matches(cls, model):
        return model_type(model) == "phi3"

    def linears(self, model, block):
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        q = cfg.num_attention_heads * head_dim
        kv = cfg.num_key_value_heads * head_dim
        return [
            LinearRef("q", "self_attn.qkv_proj", "attn", (0, q)),
            LinearRef("k", "self_attn.qkv_proj", "attn", (q, q + kv)),
            LinearRef("v", "self_attn.qkv_proj", "attn", (q + kv, q + 2 * kv)),
            LinearRef("o", "self_attn.o_proj", "attn"),
            LinearRef("gate_up", "mlp.gate_up_proj", "mlp"),
            LinearRef("down", "mlp.down_proj", "mlp"),
        ]


@register_adapter
class GPT2Adapter(Adapter):
    family = "gpt2"
    description = "GPT-2 (Conv1D, transposed weights): fused c_attn split into q, k, v; o, fc1, fc2"
    block_paths = ["transformer.h", "h"]

    @classmethod
    def matches(cls, model):
        return model_type(model) == "gpt2"

    def linears(self, model, block):
        d = weight_of(block.get_submodule("attn.c_attn")).shape[1]
        return [
            LinearRef("q", "attn.c_attn", "attn", (0, d)),
            LinearRef("k", "attn.c_attn", "attn", (d, 2 * d)),
            LinearRef("v", "attn.c_attn", "attn", (2 * d, 3 * d)),
            LinearRef("o", "attn.c_proj", "attn"),
            LinearRef("fc1", "mlp.c_fc", "mlp"),
            LinearRef("fc2", "mlp.c_proj", "mlp"),
        ]


@register_adapter
class BertAdapter(Adapter):
    family = "bert"
    description = "BERT-style encoder (BERT, RoBERTa, MiniLM): q, k, v, o, fc1, fc2"
    block_paths = ["encoder.layer", "bert.encoder.layer", "roberta.encoder.layer"]
    types = ("bert", "roberta", "xlm-roberta", "electra")

    @classmethod
    def matches(cls, model):
        return model_type(model) in cls.types

    def linears(self, model, block):
        return [
            LinearRef("q", "attention.self.query", "attn"), LinearRef("k", "attention.self.key", "attn"),
            LinearRef("v", "attention.self.value", "attn"), LinearRef("o", "attention.output.dense", "attn"),
            LinearRef("fc1", "intermediate.dense", "mlp"), LinearRef("fc2", "output.dense", "mlp"),
        ]


# Attention of HF ViT / DINOv2: transformers 4.x nests it (attention.attention.query, ...),
# transformers 5.x names the projections directly (attention.q_proj, ...).
_VIT_ATTN = [
    [LinearRef("q", "attention.q_proj", "attn"), LinearRef("k", "attention.k_proj", "attn"),
     LinearRef("v", "attention.v_proj", "attn"), LinearRef("o", "attention.o_proj", "attn")],
    [LinearRef("q", "attention.attention.query", "attn"), LinearRef("k", "attention.attention.key", "attn"),
     LinearRef("v", "attention.attention.value", "attn"), LinearRef("o", "attention.output.dense", "attn")],
]


@register_adapter
class HFViTAdapter(Adapter):
    family = "vit"
    description = "Hugging Face ViT: q, k, v, o, fc1, fc2"
    # transformers 5.x: (vit.)layers; 4.x: (vit.)encoder.layer
    block_paths = ["encoder.layer", "vit.encoder.layer", "layers", "vit.layers"]

    @classmethod
    def matches(cls, model):
        return model_type(model) == "vit"

    def linears(self, model, block):
        return _layout(self.family, block, _VIT_ATTN, [
            [LinearRef("fc1", "mlp.fc1", "mlp"), LinearRef("fc2", "mlp.fc2", "mlp")],
            [LinearRef("fc1", "intermediate.dense", "mlp"), LinearRef("fc2", "output.dense", "mlp")],
        ])


@register_adapter
class Dinov2Adapter(Adapter):
    family = "dinov2"
    description = "DINOv2: q, k, v, o, fc1, fc2 (SwiGLU variant: gate, up, down; older transformers: w12, w3)"
    block_paths = ["encoder.layer", "dinov2.encoder.layer", "layers", "dinov2.layers"]

    @classmethod
    def matches(cls, model):
        return model_type(model) == "dinov2"

    def linears(self, model, block):
        return _layout(self.family, block, _VIT_ATTN, [
            [LinearRef("fc1", "mlp.fc1", "mlp"), LinearRef("fc2", "mlp.fc2", "mlp")],
            [LinearRef("gate", "mlp.gate_proj", "mlp"), LinearRef("up", "mlp.up_proj", "mlp"),
             LinearRef("down", "mlp.down_proj", "mlp")],
            [LinearRef("w12", "mlp.weights_in", "mlp"), LinearRef("w3", "mlp.weights_out", "mlp")],
        ])


@register_adapter
class TimmViTAdapter(Adapter):
    family = "timm-vit"
    description = "timm VisionTransformer: fused qkv split into q, k, v; o, fc1, fc2"
    block_paths = ["blocks"]

    @classmethod
    def matches(cls, model):
        return is_timm_vit(model)

    def run_model(self, model, batch):
        return model(batch["pixel_values"])

    def linears(self, model, block):
        d = weight_of(block.get_submodule("attn.qkv")).shape[1]
        return [
            LinearRef("q", "attn.qkv", "attn", (0, d)),
            LinearRef("k", "attn.qkv", "attn", (d, 2 * d)),
            LinearRef("v", "attn.qkv", "attn", (2 * d, 3 * d)),
            LinearRef("o", "attn.proj", "attn"),
            LinearRef("fc1", "mlp.fc1", "mlp"), LinearRef("fc2", "mlp.fc2", "mlp"),
        ]
