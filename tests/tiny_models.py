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
