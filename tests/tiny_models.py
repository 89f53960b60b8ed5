"""Tiny random models and calibration batches shared by the unit tests (no downloads)."""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import transformers
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from oats.compress.pipeline import compress_model
from oats.config import OatsConfig
from oats.models.adapters import get_adapter


def tiny_llama(seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def batches(seed: int = 1, n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 64, (2, 12), generator=g)} for _ in range(n)]


def assert_cli_fails(argv, message, capsys):
    """The CLI exits with status 2 and prints exactly one line, containing ``message``, no traceback."""
    import sys

    import pytest

    from oats.cli import main as cli_main
    with pytest.raises(SystemExit) as e:
        sys.exit(cli_main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


WORDS = ("the quick brown fox jumps over a lazy dog while python code runs fast and every statement has "
         "a value that names an object in memory").split()


def word_tokenizer():
    """A whitespace word-level tokenizer over WORDS (unknown words -> [UNK]), no downloads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")


CALIB = ["--calib-samples", "2", "--seq-len", "8", "--iterations", "3"]
"""The CLI's calibration arguments for a quick compression of ``llm_folder``'s model."""


def llm_folder(path, **overrides):
    """A tiny Llama (hidden 32, two blocks, seed 0) with ``word_tokenizer``, saved to ``path``:
    a model folder the CLI and the app load by path. ``overrides`` go into its LlamaConfig."""
    tok = word_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **overrides)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_llama_folder(folder, hidden: int = 16, layers: int = 2, seed: int = 0, max_shard_size=None, dtype=None):
    """A tiny Llama with a word-level tokenizer, saved with ``save_pretrained`` to ``folder``.

    Every weight matrix is drawn from one seeded generator in the order of the sorted
    parameter names (vectors keep their initial values, ones for the norms), so the same
    arguments give the same weights whatever transformers' own initialisation does.
    ``max_shard_size`` (e.g. "20KB") splits the weights into several safetensors files;
    ``dtype`` (e.g. torch.bfloat16) stores them in that dtype, as mid-size checkpoints are.
    """
    from pathlib import Path

    tok = word_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name in sorted(params):
            p = params[name]
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    folder = Path(folder)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    tok.save_pretrained(folder)
    return folder


def tiny_text(words: int = 400, seed: int = 0) -> str:
    """Text of the tiny tokenizer's words, for calibration or evaluation."""
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (words,), generator=g))


def without_keys(x, keys):
    """``x`` (a manifest's JSON) without the entries named in ``keys`` or ending in ``_s``, at
    any depth: what differs between two runs of the same settings (times, versions, paths)."""
    if isinstance(x, dict):
        return {k: without_keys(v, keys) for k, v in x.items() if k not in keys and not k.endswith("_s")}
    if isinstance(x, list):
        return [without_keys(v, keys) for v in x]
    return x


# ----------------------------------------------------------------------------- every adapter family
# One tiny random model per supported family (and variants: a task head, DINOv2's SwiGLU, timm),
# with its calibration batches and the names the adapter must find. A new family adds its case
# here: tests/test_contracts_adapters.py fails for a registered family without one.

FAMILY_CFG = OatsConfig(compression=0.5, rank_ratio=0.25, iterations=5)
"""The settings ``compressed(name)`` compresses each family's tiny model with."""

HIDDEN = 128   # large enough that integer rounding of the budgets stays under ~2%
BLOCKS = 2
VOCAB = 100
SEQ = 8
IMAGE = 32


def _decoder_kwargs() -> dict:
    # num_key_value_heads < num_attention_heads: k and v (64 rows) differ from q (128 rows)
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                num_hidden_layers=BLOCKS, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**_decoder_kwargs()))


def _qwen2():
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_decoder_kwargs()))


def _mistral():
    return transformers.MistralForCausalLM(transformers.MistralConfig(**_decoder_kwargs()))


def _phi3():
    return transformers.Phi3ForCausalLM(transformers.Phi3Config(**_decoder_kwargs()))


def _gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=BLOCKS, n_head=4, n_positions=64,
        bos_token_id=1, eos_token_id=2))


def _bert():
    return transformers.BertModel(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=BLOCKS, num_attention_heads=4,
        intermediate_size=2 * HIDDEN, max_position_embeddings=64, pad_token_id=0))


def _vit_config():
    return transformers.ViTConfig(image_size=IMAGE, patch_size=8, hidden_size=HIDDEN,
                                  num_hidden_layers=BLOCKS, num_attention_heads=4,
                                  intermediate_size=2 * HIDDEN, num_labels=3,
                                  attn_implementation="eager")


def _vit():
    return transformers.ViTModel(_vit_config())


def _vit_cls():
    return transformers.ViTForImageClassification(_vit_config())


def _dinov2(swiglu: bool = False):
    return transformers.Dinov2Model(transformers.Dinov2Config(
        image_size=IMAGE, patch_size=8, hidden_size=HIDDEN, num_hidden_layers=BLOCKS,
        num_attention_heads=4, mlp_ratio=2, use_swiglu_ffn=swiglu))


def _timm_vit():
    import timm
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMAGE, patch_size=8,
                             depth=BLOCKS, embed_dim=HIDDEN, num_heads=2, num_classes=10)


def tokens(seed: int, n: int, padded: bool = False) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        batch = {"input_ids": torch.randint(3, VOCAB, (2, SEQ), generator=g)}
        if padded:  # right padding: the second sequence has 3 real tokens
            mask = torch.ones(2, SEQ, dtype=torch.long)
            mask[1, 3:] = 0
            batch["input_ids"][1, 3:] = 0
            batch["attention_mask"] = mask
        out.append(batch)
    return out


def pixels(seed: int, n: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(2, 3, IMAGE, IMAGE, generator=g)} for _ in range(n)]


LLAMA_NAMES = ("q", "k", "v", "o", "gate", "up", "down")
ENCODER_NAMES = ("q", "k", "v", "o", "fc1", "fc2")


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    batches: Callable[[int, int], list[dict]]
    family: str
    names: tuple[str, ...]           # canonical names of one block's records, in order
    modules_per_block: int           # replaced modules (OatsLinear) per block
    fused: str | None = None         # module path (in the block) of the fused q/k/v matrix
    pixels: bool = False


CASES = {
    "llama": Case(_llama, tokens, "llama", LLAMA_NAMES, 7),
    "qwen2": Case(_qwen2, tokens, "llama", LLAMA_NAMES, 7),
    "mistral": Case(_mistral, tokens, "llama", LLAMA_NAMES, 7),
    "phi3": Case(_phi3, tokens, "phi3", ("q", "k", "v", "o", "gate_up", "down"), 4,
                 fused="self_attn.qkv_proj"),
    "gpt2": Case(_gpt2, tokens, "gpt2", ENCODER_NAMES, 4, fused="attn.c_attn"),
    "bert": Case(_bert, functools.partial(tokens, padded=True), "bert", ENCODER_NAMES, 6),
    "vit": Case(_vit, pixels, "vit", ENCODER_NAMES, 6, pixels=True),
    "vit-cls": Case(_vit_cls, pixels, "vit", ENCODER_NAMES, 6, pixels=True),
    "dinov2": Case(_dinov2, pixels, "dinov2", ENCODER_NAMES, 6, pixels=True),
    "dinov2-swiglu": Case(functools.partial(_dinov2, swiglu=True), pixels, "dinov2", LLAMA_NAMES, 7,
                          pixels=True),
    "timm-vit": Case(_timm_vit, pixels, "timm-vit", ENCODER_NAMES, 4, fused="attn.qkv", pixels=True),
}
FUSED = [k for k, c in CASES.items() if c.fused]


def output(model: nn.Module, batch: dict) -> torch.Tensor:
    """The model's main output tensor (logits or last hidden states)."""
    if type(model).__module__.startswith("timm"):
        return model(batch["pixel_values"])
    kw = dict(batch)
    if "input_ids" in kw and getattr(model.config, "use_cache", None) is not None:
        kw["use_cache"] = False
    out = model(**kw)
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    raise AssertionError(f"no output tensor in {type(out).__name__}")


@functools.cache
def compressed(name: str) -> SimpleNamespace:
    """Build, record the dense outputs and weights, compress (once per family)."""
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().eval()
    calibration = case.batches(1, 2)
    batch = case.batches(2, 1)[0]
    with torch.no_grad():
        ref = output(model, batch)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adapter = get_adapter(model)
    torch.manual_seed(0)
    run = compress_model(model, calibration, FAMILY_CFG)
    return SimpleNamespace(case=case, run=run, ref=ref, batch=batch, original=original,
                           adapter=adapter, calibration=calibration)
