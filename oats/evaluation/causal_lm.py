"""Causal LMs: perplexity on held-out text, exp of the mean next-token negative log-likelihood
over fixed-length windows spread evenly over the text (the built-in evaluation split
``oats.data.evaluation_text()``, never the calibration text; or the user's text; or
WikiText-2's test split through ``datasets`` when the network is there)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from oats import corpora
from oats.data import _domain_ids, _tokenize
from oats.errors import DataError
from oats.evaluation.common import LM_BATCH, LM_SEQ_LEN, LM_WINDOWS, USER_FACTOR, resolve_text
from oats.evaluation.tasks import Evaluator, register_task
from oats.models.adapters import no_cache_kwargs


@register_task("causal-lm", primary="perplexity", higher_is_better=False, model_kind="causal language model")
class CausalLMEvaluator(Evaluator):
    """Perplexity (and its log, the NLL) per text domain and their mean; no dense reference."""

    needs_tokenizer = True

    def prepare(self, q: int, text, image_folder) -> dict:
        body, what = resolve_text(text)
        n, seq = LM_WINDOWS[q], LM_SEQ_LEN[q]
        tok = self.loaded.tokenizer
        if body is None:
            self._windows = {d: self._lm_windows(_domain_ids(tok, d, "evaluation"), n, seq)
                             for d in corpora.domains("text")}
        else:
            self._windows = {"": self._lm_windows(_tokenize(tok, body), USER_FACTOR * n, seq)}
        windows = sum(int(w.shape[0]) for w in self._windows.values())
        self.settings.update(text=what, windows=windows, seq_len=seq, tokens_scored=windows * (seq - 1))
        return self._windows

    @staticmethod
    def _lm_windows(ids: list[int], n: int, seq_len: int) -> torch.Tensor:
        """``n`` windows spread evenly over the text (deterministic)."""
        if len(ids) < seq_len + 1:
            raise DataError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {seq_len}: "
                            "give a longer text")
        n = min(n, len(ids) // seq_len) or 1
        starts = np.linspace(0, len(ids) - seq_len, n).round().astype(int)
        tokens = torch.tensor(ids, dtype=torch.long)
        return torch.stack([tokens[s:s + seq_len] for s in starts])

    def reference(self, model: nn.Module):
        return None

    @torch.no_grad()
    def metrics(self, model: nn.Module, ref) -> dict[str, float]:
        kw = no_cache_kwargs(model)
        nlls = {}
        for domain, windows in self._windows.items():
            total, count = 0.0, 0
            for chunk in windows.split(LM_BATCH):
                logits = model(input_ids=chunk, **kw).logits[:, :-1].float()
                target = chunk[:, 1:]
                total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                                 target.reshape(-1), reduction="sum"))
                count += target.numel()
            nlls[domain] = total / max(count, 1)
        out = self._spread("nll", nlls)
        ppl = {d: math.exp(min(v, 700.0)) for d, v in nlls.items()}
        out.update(self._spread("perplexity", ppl, mean=math.exp(min(out["nll"], 700.0))))
        return out

    def tokens_per_pass(self) -> int:
        return int(sum(w.numel() for w in self._windows.values()))
