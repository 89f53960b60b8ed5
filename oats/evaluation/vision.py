"""ViTs: ``cls_cosine``, the mean cosine between compressed and dense CLS features of
evaluation crops of the bundled photos (other crops than calibration's; the user's folder when
given); ``probe_acc``, a logistic-regression probe fitted on *dense* CLS features of
scikit-learn digits and scored on the evaluated model's features of held-out digits; ``top1``
when the model has a classification head and a labelled folder is given."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from oats import corpora
from oats.core.linear import use_mode
from oats.data import domain_images, image_batches, load_image_folder
from oats.errors import DataError
from oats.evaluation.common import (EVAL_SEED, PROBE_PATCHES, PROBE_SPLIT, VISION_IMAGES, cosine_rows,
                                    last_hidden)
from oats.evaluation.tasks import Evaluator, register_task
from oats.models.vision import is_timm, patch_size


def vision_forward(model: nn.Module, pixel_values: torch.Tensor, want_logits: bool = False):
    """(CLS features (b, hidden), logits or None) of a HF or timm ViT."""
    if is_timm(model):
        feats = model.forward_features(pixel_values)
        logits = model.forward_head(feats) if want_logits else None
        return (feats[:, 0] if feats.dim() == 3 else feats), logits
    kw = {}
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        kw["interpolate_pos_encoding"] = True  # HF ViT refuses other sizes without it
    out = model(pixel_values=pixel_values, output_hidden_states=True, **kw)
    logits = getattr(out, "logits", None) if want_logits else None
    return last_hidden(out)[:, 0], logits


@register_task("vision", primary="cls_cosine", higher_is_better=True, model_kind="vision model")
class VisionEvaluator(Evaluator):
    """CLS cosine to the dense features per image domain and their mean, a linear probe's
    accuracy on digits, and top-1 on a labelled folder."""

    def prepare(self, q: int, text, image_folder) -> dict:
        loaded = self.loaded
        n = VISION_IMAGES[q]
        self._folder = None
        if image_folder is not None:
            images = load_image_folder(image_folder, max_images=(32, 8)[q] * 4, seed=EVAL_SEED)
            self._folder = images
            # centre crops in the folder's order (labels follow it)
            px = torch.cat([image_batches(loaded, [a], 1, augment=False)[0]["pixel_values"]
                            for a in images.values()])
            self._img_batches = {"": [{"pixel_values": c} for c in px.split(8)]}
            self.settings.update(images=f"folder {os.fspath(image_folder)} ({len(images)} images, centre crops)")
        else:
            self._img_batches = {d: image_batches(loaded, domain_images(d, "evaluation"), n, seed=EVAL_SEED,
                                                  augment=True) for d in corpora.domains("images")}
            self.settings.update(images=f"{n} crops per domain of the held-out images of "
                                        f"{', '.join(corpora.domains('images'))} (none is used in calibration)")
        self._probe = PROBE_SPLIT[q]
        self.settings.update(probe=f"digits: fit on {self._probe[0]} (dense features), score on {self._probe[1]}")
        return self._img_batches

    @torch.no_grad()
    def _cls(self, model: nn.Module, batches, want_logits=False):
        feats, logits = [], []
        for b in batches:
            f, lg = vision_forward(model, b["pixel_values"], want_logits)
            feats.append(f.float())
            if lg is not None:
                logits.append(lg.float())
        return torch.cat(feats), (torch.cat(logits) if logits else None)

    def _digits(self):
        """(train batches, train labels, test batches, test labels) for the probe."""
        from sklearn.datasets import load_digits
        d = load_digits()
        rng = np.random.default_rng(EVAL_SEED)
        order = rng.permutation(len(d.target))
        n_fit, n_score = self._probe
        size = PROBE_PATCHES * patch_size(self.loaded.model, default=16)[0]
        mean = torch.tensor(self.loaded.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.loaded.image_std, dtype=torch.float32).view(1, 3, 1, 1)

        def batches(idx):
            x = torch.tensor(d.images[idx], dtype=torch.float32).div_(16.0).unsqueeze(1).repeat(1, 3, 1, 1)
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = (x - mean) / std
            return [{"pixel_values": c} for c in x.split(64)]

        fit, score = order[:n_fit], order[n_fit:n_fit + n_score]
        return batches(fit), d.target[fit], batches(score), d.target[score]

    def _folder_labels(self, model: nn.Module) -> np.ndarray:
        """Class index of each folder image from its sub-folder name (an index or a label name)."""
        names = {}
        cfg = getattr(model, "config", None)
        for i, label in (getattr(cfg, "id2label", None) or {}).items():
            for syn in str(label).split(","):
                names.setdefault(syn.strip().lower(), int(i))
        labels = []
        for rel in self._folder:
            parts = Path(rel).parts
            if len(parts) < 2:
                raise DataError(f"image '{rel}' is not in a class sub-folder: top-1 needs <folder>/<class>/<image>")
            cls = parts[0].strip().lower()
            if cls.isdigit():
                labels.append(int(cls))
            elif cls.replace("_", " ") in names or cls in names:
                labels.append(names.get(cls, names.get(cls.replace("_", " "))))
            else:
                raise DataError(f"class folder '{parts[0]}' matches no label of the model: name class folders by "
                                "class index or by the model's label names")
        return np.asarray(labels)

    def _has_head(self, model: nn.Module) -> bool:
        if is_timm(model):
            return getattr(model, "num_classes", 0) > 0
        return "ForImageClassification" in type(model).__name__


    def reference(self, model: nn.Module):
        with use_mode(model, "dense"):
            cls = {d: self._cls(model, b)[0] for d, b in self._img_batches.items()}
            fit_b, fit_y, score_b, score_y = self._digits()
            fit_x, _ = self._cls(model, fit_b)
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(fit_x.numpy(), fit_y)
        return {"cls": cls, "probe": probe, "score_batches": score_b, "score_y": score_y}

    @torch.no_grad()
    def metrics(self, model: nn.Module, ref) -> dict[str, float]:
        want_top1 = self._folder is not None and self._has_head(model)
        cos, logits = {}, None
        for d, batches in self._img_batches.items():
            cls, logits = self._cls(model, batches, want_logits=want_top1)
            cos[d] = float(cosine_rows(cls, ref["cls"][d]).mean())
        feats, _ = self._cls(model, ref["score_batches"])
        out = {**self._spread("cls_cosine", cos), "probe_acc": float(ref["probe"].score(feats.numpy(), ref["score_y"]))}
        if want_top1 and logits is not None:
            labels = self._folder_labels(model)
            out["top1"] = float((logits.argmax(-1).numpy() == labels).mean())
        return out

    def tokens_per_pass(self) -> int:
        ph, pw = patch_size(self.loaded.model, default=16)
        images = sum(int(b["pixel_values"].shape[0]) * ((int(b["pixel_values"].shape[-2]) // ph)
                                                        * (int(b["pixel_values"].shape[-1]) // pw) + 1)
                     for v in self._img_batches.values() for b in v)
        return images + self._probe[1] * (PROBE_PATCHES * PROBE_PATCHES + 1)
