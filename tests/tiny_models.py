"""Tiny random models and calibration batches shared by the unit tests (no downloads)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


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


def tiny_llama_folder(folder, hidden: int = 16, layers: int = 2, seed: int = 0, max_shard_size=None):
    """A tiny Llama with a word-level tokenizer, saved with ``save_pretrained`` to ``folder``.

    Every weight matrix is drawn from one seeded generator in the order of the sorted
    parameter names (vectors keep their initial values, ones for the norms), so the same
    arguments give the same weights whatever transformers' own initialisation does.
    ``max_shard_size`` (e.g. "20KB") splits the weights into several safetensors files.
    """
    from pathlib import Path

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
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
