"""Encoders: fidelity to the dense model on held-out sentences: ``cosine``, the mean cosine
between each sentence's compressed and dense embedding (mean pooling over real tokens), and
``spearman``, the rank correlation between the pairwise cosine similarities of the sentences
under the two models."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from oats import corpora
from oats.core.linear import use_mode
from oats.data import evaluation_sentences, sentence_batches, split_sentences
from oats.errors import DataError
from oats.evaluation.common import (ENCODER_SENTENCES, EVAL_SEED, USER_FACTOR, cosine_rows, last_hidden, mean_pool,
                                    pairwise_cos, resolve_text, spearman)
from oats.evaluation.tasks import Evaluator, register_task


@register_task("encoder", primary="cosine", higher_is_better=True, model_kind="sentence encoder")
class EncoderEvaluator(Evaluator):
    """Cosine to the dense embeddings per text domain and their mean, and the Spearman
    correlation of the pairwise similarities over all sentences."""

    needs_tokenizer = True

    def prepare(self, q: int, text, image_folder) -> dict:
        body, what = resolve_text(text)
        n = ENCODER_SENTENCES[q]
        rng = np.random.default_rng(EVAL_SEED)
        if body is None:
            groups = {d: evaluation_sentences(d) for d in corpora.domains("text")}
        else:
            groups, n = {"": split_sentences(body)}, USER_FACTOR * n
        if any(len(g) < 2 for g in groups.values()):
            raise DataError("the evaluation text has fewer than 2 sentences of 6-60 words: give more prose")
        self._batches = {}
        for d, sentences in groups.items():
            pick = sorted(rng.choice(len(sentences), size=min(n, len(sentences)), replace=False))
            self._batches[d] = sentence_batches(self.loaded.tokenizer, [sentences[i] for i in pick], batch_size=16)
        self.settings.update(text=what, sentences=sum(sum(int(b["input_ids"].shape[0]) for b in v)
                                                     for v in self._batches.values()))
        return self._batches

    @torch.no_grad()
    def _embeddings(self, model: nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for domain, batches in self._batches.items():
            out[domain] = torch.cat([mean_pool(last_hidden(model(**b)), b.get("attention_mask")).float()
                                     for b in batches])
        return out

    def reference(self, model: nn.Module):
        with use_mode(model, "dense"):
            return {"emb": self._embeddings(model)}

    @torch.no_grad()
    def metrics(self, model: nn.Module, ref) -> dict[str, float]:
        emb = self._embeddings(model)
        dense = ref["emb"]
        out = self._spread("cosine", {d: float(cosine_rows(e, dense[d]).mean()) for d, e in emb.items()})
        everything, dense_all = torch.cat(list(emb.values())), torch.cat(list(dense.values()))
        out["spearman"] = spearman(pairwise_cos(everything), pairwise_cos(dense_all))
        return out

    def tokens_per_pass(self) -> int:
        return int(sum(b["input_ids"].numel() for v in self._batches.values() for b in v))
