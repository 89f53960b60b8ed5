"""Large tensors kept in their stored dtype (bf16, fp16) while the model computes in fp32.

A mid-size checkpoint is usually bf16: Llama-3.1-8B's embedding table and untied head take
2.1 GB in bf16 and 4.2 GB in fp32. The from-disk mode keeps such tensors as the files store
them and casts at the boundary instead:

- an embedding's output (rows of the table) is cast to fp32 by a forward hook
  (``compute_in_fp32``), so every block sees exactly the hidden states of the model loaded
  whole in fp32 (bf16 and fp16 values are exact in fp32);
- logits come from ``StoredHead``, which casts its weight a slice of rows at a time
  (``chunked_logits``): the temporary is ``CHUNK_BYTES``, never the whole head in fp32.
"""

from __future__ import annotations

import torch
from torch import nn

CHUNK_BYTES = 64 * 2**20
"""The fp32 slice of a stored head cast at once: 4096 rows of a 4096-wide head. Large enough
that one matrix product per slice keeps the BLAS busy, small beside the 0.5-1 GB a bf16 head
of a 128k vocabulary takes itself."""


def _output_to_fp32(_module, _args, out):
    if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != torch.float32:
        return out.float()
    return out


def compute_in_fp32(module: nn.Module):
    """Make ``module`` (an embedding kept in bf16/fp16) return fp32; the hook's handle."""
    return module.register_forward_hook(_output_to_fp32)


def keep_stored_embeddings(model: nn.Module) -> list[str]:
    """Hook every embedding of ``model`` whose table is not fp32 so it returns fp32 (an fp32
    model is left exactly as it is); the paths hooked."""
    hooked = []
    for path, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Embedding) and isinstance(w, torch.Tensor) and w.dtype != torch.float32 \
                and w.device.type != "meta":
            compute_in_fp32(m)
            hooked.append(path)
    return hooked


def chunked_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   chunk_bytes: int = CHUNK_BYTES) -> torch.Tensor:
    """``hidden @ weight.T + bias`` in fp32 for a (vocab, d) ``weight`` of any float dtype,
    cast ``chunk_bytes`` of fp32 rows at a time; (..., vocab) fp32."""
    x = hidden.float()
    vocab, d = weight.shape
    rows = max(1, int(chunk_bytes) // (4 * d))
    out = torch.empty(*x.shape[:-1], vocab, dtype=torch.float32, device=x.device)
    for a in range(0, vocab, rows):
        b = min(vocab, a + rows)
        w = weight[a:b].to(device=x.device, dtype=torch.float32)
        bb = None if bias is None else bias[a:b].to(device=x.device, dtype=torch.float32)
        out[..., a:b] = nn.functional.linear(x, w, bb)
    return out


class StoredHead(nn.Module):
    """An LM head whose weight stays in its stored dtype (or is the embedding's own table, for
    tied heads): fp32 logits computed in row slices (``chunked_logits``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, chunk_bytes: int = CHUNK_BYTES):
        super().__init__()
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_features, self.in_features = (int(n) for n in weight.shape)
        self.chunk_bytes = chunk_bytes

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return chunked_logits(hidden, self.weight, self.bias, self.chunk_bytes)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"dtype={str(self.weight.dtype)[6:]}, chunk_bytes={self.chunk_bytes}")
