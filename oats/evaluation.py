"""How good is a compressed model? One evaluation per task, the same for every method.

- causal LMs: perplexity on held-out text, exp of the mean next-token negative
  log-likelihood over fixed-length windows spread evenly over the text (the built-in
  evaluation split ``oats.data.evaluation_text()``, never the calibration text; or the
  user's text; or WikiText-2's test split through ``datasets`` when the network is there).
- encoders: fidelity to the dense model on held-out sentences: ``cosine``, the mean cosine
  between each sentence's compressed and dense embedding (mean pooling over real tokens),
  and ``spearman``, the rank correlation between the pairwise cosine similarities of the
  sentences under the two models.
- ViTs: ``cls_cosine``, the mean cosine between compressed and dense CLS features of
  evaluation crops of the bundled photos (other crops than calibration's; the user's folder
  when given); ``probe_acc``, a logistic-regression probe fitted on *dense* CLS features of
  scikit-learn digits and scored on the evaluated model's features of held-out digits;
  ``top1`` when the model has a classification head and a labelled folder is given.

A model is evaluated in its current modes (per-layer modes respected); fidelity metrics
compare against the same model with every ``OatsLinear`` in "dense" mode. The dense
reference is computed once per model (and per evaluation setting) and cached while the
model's weights are unchanged.

``oats.evaluate(run_or_model, ...)`` returns an ``Evaluation``; ``evaluate_model`` and
``evaluate_run`` return plain dicts for the app.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from oats.compress.records import CompressionRun
from oats.methods import registry
from oats.core.linear import MODES, oats_layers, use_mode
from oats import corpora
from oats.data import (_domain_ids, _tokenize, domain_images, evaluation_sentences, image_batches, load_image_folder,
                       read_text_file, sentence_batches, split_sentences)
from oats.errors import ConfigError, DataError
from oats.models import hub
from oats.models.adapters import no_cache_kwargs
from oats.models.vision import is_timm, patch_size

PRIMARY_METRIC: dict[str, tuple[str, bool]] = {
    "causal-lm": ("perplexity", False),
    "encoder": ("cosine", True),
    "vision": ("cls_cosine", True),
}
"""The headline metric of each task and whether higher is better."""

# Evaluation sizes: (default, quick). quick is for the app's per-block ablations (a few
# seconds on the embedded models on 2 CPU cores); the default is a moderate, stable set.
LM_WINDOWS = (8, 1)
"""Causal LMs: windows of evaluation text per domain (the user's text: 4x as many)."""
LM_SEQ_LEN = (256, 128)
"""Causal LMs: tokens per window."""
LM_BATCH = 4
ENCODER_SENTENCES = (32, 8)
"""Encoders: held-out sentences per domain (the user's text: 4x as many)."""
VISION_IMAGES = (12, 3)
"""ViTs: evaluation crops per image domain (the user's folder: at most 32 / 8 images)."""
USER_FACTOR = 4
"""A user's own text or folder is one domain: it gets about what all built-in domains get."""
DOMAIN_SEP = "@"
"""A per-domain metric is named ``<metric>@<domain>`` (``perplexity@verse``); the metric
without a domain is the mean over the domains (for perplexity, exp of the mean NLL, i.e. the
geometric mean of the domains' perplexities: each domain weighs the same)."""
PROBE_SPLIT = ((400, 200), (200, 100))
"""ViTs: digits for (fitting the probe on dense features, scoring it)."""
PROBE_PATCHES = 4
"""ViTs: digits are shown at PROBE_PATCHES x PROBE_PATCHES patches (56 px for patch 14):
an 8x8 digit has no more detail, and the forward is cheap."""
EVAL_SEED = 1234
"""Seed of the evaluation crops and the digits split (calibration uses seed 0)."""

def run_modes(method: str, config=None) -> tuple[str, ...]:
    """The modes worth evaluating for a run of ``method`` with ``config``: the variants the run
    has (``registry.variants``: its method record says, and a two-term method that spent
    kappa = 0 or 1 has one term). A sparse-only method's "sparse" mode is its "both", and its
    "lowrank" mode is an empty model, so neither is measured."""
    return registry.variants(method, config)


METRIC_NAMES: dict[str, str] = {
    "perplexity": "perplexity",
    "nll": "NLL",
    "cosine": "cosine to dense",
    "spearman": "Spearman",
    "cls_cosine": "CLS cosine to dense",
    "probe_acc": "probe accuracy",
    "top1": "top-1 accuracy",
}
"""What the pages, tables and figures call each metric (the keys stay the files' and the CLI's):
``cls_cosine`` reads "CLS cosine to dense"."""


def metric_name(key: str) -> str:
    """A metric's display name: ``METRIC_NAMES``, per domain "perplexity · Shakespeare"
    (``perplexity@verse``); a name not in the table (a metric added later) as it is, with
    underscores as spaces."""
    base, domain = split_key(key)
    name = METRIC_NAMES.get(base, base.replace("_", " "))
    return name if domain is None else f"{name} · {corpora.title(domain)}"


TASK_NAMES: dict[str, str] = {"causal-lm": "causal language model", "encoder": "sentence encoder",
                              "vision": "vision model"}


def a_model_of(task: str | None) -> str:
    """A model of ``task`` in words, with its article: "a sentence encoder", "a causal language
    model", "a model of an unknown kind" (never "a encoder model" or "a None model")."""
    if not task:
        return "a model of an unknown kind"
    name = TASK_NAMES.get(task, f"{task} model")
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def metric_key(metric: str, domain: str) -> str:
    """The name of ``metric`` measured on one domain: ``perplexity@verse``."""
    return f"{metric}{DOMAIN_SEP}{domain}"


def split_key(key: str) -> tuple[str, str | None]:
    """(metric, domain or None) of a metric's name."""
    metric, sep, domain = str(key).partition(DOMAIN_SEP)
    return metric, (domain if sep else None)


def per_domain(metrics: dict, metric: str) -> dict[str, float]:
    """{domain: value} of ``metric`` in one mode's metrics, in the order they were measured."""
    out = {}
    for key, value in metrics.items():
        m, d = split_key(key)
        if m == metric and d is not None:
            out[d] = value
    return out


# ----------------------------------------------------------------------------- text sources


def wikitext2_text(split: str = "test") -> str:
    """WikiText-2 (raw) through ``datasets``; DataError (one line) when it cannot be had."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise DataError("WikiText-2 needs the 'datasets' package and the network (pip install datasets): "
                        "use --text FILE or the built-in evaluation text instead") from None
    if not hub.hub_reachable():
        raise DataError("WikiText-2 needs the network (the Hugging Face hub is not reachable): "
                        "use --text FILE or the built-in evaluation text instead")
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as e:  # noqa: BLE001 - any download/parse failure is one line
        raise DataError(f"could not load WikiText-2 ({type(e).__name__}): use --text FILE or the built-in "
                        "evaluation text instead") from None
    return "\n\n".join(t for t in ds["text"] if t.strip())


def _resolve_text(text) -> tuple[str | None, str]:
    """(text or None for the built-in split, a short description)."""
    if text is None:
        return None, ("built-in evaluation parts of " + ", ".join(corpora.domains("text"))
                      + " (each disjoint from its calibration part)")
    if isinstance(text, os.PathLike):
        return read_text_file(text), f"file {os.fspath(text)}"
    if not isinstance(text, str) or not text.strip():
        raise DataError("the evaluation text is empty: give some prose, a text file, or leave it out for the "
                        "built-in evaluation text")
    return text, f"given text ({len(text.split())} words)"


# ----------------------------------------------------------------------------- helpers


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _last_hidden(out) -> torch.Tensor:
    h = getattr(out, "last_hidden_state", None)
    if h is None:
        hs = getattr(out, "hidden_states", None)
        if not hs:
            raise DataError("the model returns no hidden states to take features from: evaluate a base model "
                            "(e.g. AutoModel) instead")
        h = hs[-1]
    return h


def _vision_forward(model: nn.Module, pixel_values: torch.Tensor, want_logits: bool = False):
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
    return _last_hidden(out)[:, 0], logits


def _cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def _pairwise_cos(e: torch.Tensor) -> np.ndarray:
    n = torch.nn.functional.normalize(e.double(), dim=-1)
    sims = (n @ n.T).numpy()
    iu = np.triu_indices(sims.shape[0], k=1)
    return sims[iu]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr
    if a.size < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place."""
    return tuple((t.data_ptr(), t._version) for t in list(model.parameters()) + list(model.buffers())
                 if t.dtype.is_floating_point and t.dim() >= 2)


# ----------------------------------------------------------------------------- evaluators


class Evaluator:
    """The evaluation of one task at one setting, with its dense reference computed once.

    ``Evaluator(loaded, quick=..., text=..., image_folder=...)``; ``reference(model)``
    returns what fidelity needs from the model in dense mode (None for LMs), and
    ``metrics(model, ref)`` evaluates the model in its current modes. A sweep computes the
    reference once from the dense model and scores every run against it (their dense
    weights are the same).
    """

    def __init__(self, loaded, *, quick: bool = False, text=None, image_folder=None):
        task = getattr(loaded, "task", None)
        if task not in PRIMARY_METRIC:
            raise DataError(f"no evaluation for task {task!r}: expected one of {', '.join(PRIMARY_METRIC)}")
        self.loaded = loaded
        self.task = task
        self.quick = bool(quick)
        q = 1 if quick else 0
        self.settings: dict = {"task": task, "quick": self.quick}
        if task in ("causal-lm", "encoder") and loaded.tokenizer is None:
            raise DataError("this model has no tokenizer, so text cannot be fed to it: load it with its tokenizer")
        if task == "causal-lm":
            body, what = _resolve_text(text)
            n, seq = LM_WINDOWS[q], LM_SEQ_LEN[q]
            if body is None:
                self._windows = {d: self._lm_windows(_domain_ids(loaded.tokenizer, d, "evaluation"), n, seq)
                                 for d in corpora.domains("text")}
            else:
                self._windows = {"": self._lm_windows(_tokenize(loaded.tokenizer, body), USER_FACTOR * n, seq)}
            windows = sum(int(w.shape[0]) for w in self._windows.values())
            self.settings.update(text=what, windows=windows, seq_len=seq, tokens_scored=windows * (seq - 1))
        elif task == "encoder":
            body, what = _resolve_text(text)
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
                self._batches[d] = sentence_batches(loaded.tokenizer, [sentences[i] for i in pick], batch_size=16)
            self.settings.update(text=what, sentences=sum(sum(int(b["input_ids"].shape[0]) for b in v)
                                                         for v in self._batches.values()))
        else:
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
        self.domains = tuple(d for d in self._units() if d)
        self.settings.update(domains=list(self.domains))

    def _units(self) -> dict:
        return {"causal-lm": getattr(self, "_windows", None), "encoder": getattr(self, "_batches", None),
                "vision": getattr(self, "_img_batches", None)}[self.task]

    @staticmethod
    def _spread(metric: str, values: dict[str, float], mean=None) -> dict[str, float]:
        """{metric: mean over the domains, metric@domain: each}; the user's data ("") is the metric."""
        if list(values) == [""]:
            return {metric: values[""]}
        out = {metric: float(np.mean(list(values.values()))) if mean is None else mean}
        out.update({metric_key(metric, d): v for d, v in values.items()})
        return out

    # -- causal LM

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

    @torch.no_grad()
    def _perplexity(self, model: nn.Module) -> dict[str, float]:
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

    # -- encoder

    @torch.no_grad()
    def _embeddings(self, model: nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for domain, batches in self._batches.items():
            out[domain] = torch.cat([_mean_pool(_last_hidden(model(**b)), b.get("attention_mask")).float()
                                     for b in batches])
        return out

    # -- vision

    @torch.no_grad()
    def _cls(self, model: nn.Module, batches, want_logits=False):
        feats, logits = [], []
        for b in batches:
            f, lg = _vision_forward(model, b["pixel_values"], want_logits)
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

    # -- the two public steps

    def reference(self, model: nn.Module):
        """What fidelity needs from the model with every replaced linear in dense mode."""
        if self.task == "causal-lm":
            return None
        with use_mode(model, "dense"):
            if self.task == "encoder":
                return {"emb": self._embeddings(model)}
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
        """Metrics of ``model`` in its current modes (``ref`` from ``reference``)."""
        if self.task == "causal-lm":
            return self._perplexity(model)
        if self.task == "encoder":
            emb = self._embeddings(model)
            dense = ref["emb"]
            out = self._spread("cosine", {d: float(_cosine_rows(e, dense[d]).mean()) for d, e in emb.items()})
            everything, dense_all = torch.cat(list(emb.values())), torch.cat(list(dense.values()))
            out["spearman"] = _spearman(_pairwise_cos(everything), _pairwise_cos(dense_all))
            return out
        want_top1 = self._folder is not None and self._has_head(model)
        cos, logits = {}, None
        for d, batches in self._img_batches.items():
            cls, logits = self._cls(model, batches, want_logits=want_top1)
            cos[d] = float(_cosine_rows(cls, ref["cls"][d]).mean())
        feats, _ = self._cls(model, ref["score_batches"])
        out = {**self._spread("cls_cosine", cos), "probe_acc": float(ref["probe"].score(feats.numpy(), ref["score_y"]))}
        if want_top1 and logits is not None:
            labels = self._folder_labels(model)
            out["top1"] = float((logits.argmax(-1).numpy() == labels).mean())
        return out

    def tokens_per_pass(self) -> int:
        """Tokens one ``metrics`` call feeds the model (padding included): what an evaluation costs."""
        if self.task == "causal-lm":
            return int(sum(w.numel() for w in self._windows.values()))
        if self.task == "encoder":
            return int(sum(b["input_ids"].numel() for v in self._batches.values() for b in v))
        ph, pw = patch_size(self.loaded.model, default=16)
        images = sum(int(b["pixel_values"].shape[0]) * ((int(b["pixel_values"].shape[-2]) // ph)
                                                        * (int(b["pixel_values"].shape[-1]) // pw) + 1)
                     for v in self._img_batches.values() for b in v)
        return images + self._probe[1] * (PROBE_PATCHES * PROBE_PATCHES + 1)

    def key(self) -> tuple:
        return (self.task, self.quick, hashlib.sha1(repr(sorted(self.settings.items())).encode()).hexdigest())


_REFERENCES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _cached_reference(model: nn.Module, ev: Evaluator):
    per_model = _REFERENCES.setdefault(model, {})
    key = ev.key() + (_fingerprint(model),)
    if key not in per_model:
        per_model.clear()  # one setting at a time per model: the app's quick ablations
        per_model[key] = ev.reference(model)
    return per_model[key]


def _evaluator(loaded, quick, text, image_folder) -> Evaluator:
    if loaded is None:
        raise DataError("evaluation needs the loaded model (tokenizer, image settings): pass loaded=oats.models.zoo.load_model(...)")
    return Evaluator(loaded, quick=quick, text=text, image_folder=image_folder)


# ----------------------------------------------------------------------------- public API


def evaluate_model(model: nn.Module, loaded, *, quick: bool = False, text=None,
                   image_folder=None) -> dict[str, float]:
    """Metrics of ``model`` in its current modes (per-layer modes respected).

    Args:
        model: the model (its replaced linears in whatever modes they are in).
        loaded: the ``oats.models.zoo.LoadedModel`` it came from (task, tokenizer, image settings).
        quick: a small evaluation set (a few seconds on the embedded models).
        text: evaluation text (a string, or a path as ``pathlib.Path``) instead of the
            built-in evaluation split; causal LMs and encoders.
        image_folder: ViTs: evaluate on these images (and top-1 when the model has a
            classification head and the images sit in class sub-folders).

    Returns: {"perplexity", "nll"} | {"cosine", "spearman"} | {"cls_cosine", "probe_acc"[, "top1"]}.
    """
    ev = _evaluator(loaded, quick, text, image_folder)
    return ev.metrics(model, _cached_reference(model, ev))


def prepare_reference(model: nn.Module, loaded, *, quick: bool = False, text=None, image_folder=None) -> None:
    """Compute (or find cached) the dense reference that fidelity metrics compare against, now.

    Call it before changing what the model computes in a way its weights do not show (a
    forward hook, e.g. ``oats.explain.activations.channel_intervention``): a reference computed
    later, under the hook, would compare the changed model with itself."""
    _cached_reference(model, _evaluator(loaded, quick, text, image_folder))


def evaluation_tokens(loaded, *, quick: bool = False, text=None, image_folder=None) -> int:
    """Tokens one evaluation of one model feeds it (padding included), without running it."""
    return _evaluator(loaded, quick, text, image_folder).tokens_per_pass()


def _check_modes(modes) -> tuple[str, ...]:
    modes = tuple(modes)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigError(f"unknown mode {bad[0]!r}: choose among {', '.join(MODES)}" if bad else
                          f"no mode to evaluate: choose among {', '.join(MODES)}")
    return modes


def evaluate_run(run, loaded=None, modes=("dense", "both", "sparse", "lowrank"), quick: bool = False,
                 text=None, image_folder=None) -> dict[str, dict[str, float]]:
    """Metrics of a ``CompressionRun`` in each of ``modes`` (model-wide); modes are restored.

    ``loaded`` defaults to ``run.loaded``. Returns {mode: {metric: value}}.
    """
    modes = _check_modes(modes)
    ev = _evaluator(loaded if loaded is not None else getattr(run, "loaded", None), quick, text, image_folder)
    ref = _cached_reference(run.model, ev)
    out = {}
    for mode in modes:
        with run.use_mode(mode):
            out[mode] = ev.metrics(run.model, ref)
    return out


@dataclass
class Evaluation:
    """What ``oats.evaluation`` returns: metrics per mode, the primary metric, the settings."""

    model_name: str
    task: str
    metrics: dict[str, dict[str, float]]
    """{mode: {metric: value}}; mode "current" means the model as it was (per-layer modes)."""
    primary: str
    higher_is_better: bool
    settings: dict = field(default_factory=dict)
    time_s: float = 0.0

    def value(self, mode: str = "both", metric: str | None = None) -> float:
        return self.metrics[mode][metric or self.primary]

    def to_dict(self) -> dict:
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None  # JSON has no inf / NaN
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            return x
        return clean(asdict(self))


def evaluate(target, loaded=None, *, modes=None, quick: bool = False, text=None, image_folder=None) -> Evaluation:
    """Evaluate a run, a loaded model or a model: ``oats.evaluate(run)``.

    Args:
        target: a ``CompressionRun`` (modes default to those that mean something for its
            method: all four for OATS, dense and both otherwise), a ``LoadedModel``, or an
            ``nn.Module`` (then give ``loaded``; modes default to all four when it has
            replaced linears, else "dense").
        modes: modes to evaluate model-wide, or ("current",) for the model as it is.
        quick, text, image_folder: as in ``evaluate_model``.
    """
    t0 = time.perf_counter()
    name = ""
    if isinstance(target, CompressionRun):
        model, name = target.model, target.model_name
        loaded = loaded if loaded is not None else target.loaded
        default = run_modes(target.method, target.config)
    elif hasattr(target, "model") and hasattr(target, "task"):
        model, loaded, name = target.model, target, target.name
        default = MODES if oats_layers(model) else ("dense",)
    elif isinstance(target, nn.Module):
        model = target
        name = getattr(loaded, "name", "")
        default = MODES if oats_layers(model) else ("dense",)
    else:
        raise ConfigError(f"cannot evaluate a {type(target).__name__}: give a CompressionRun, a LoadedModel or a model")
    modes = tuple(modes) if modes is not None else tuple(default)
    ev = _evaluator(loaded, quick, text, image_folder)
    ref = _cached_reference(model, ev)
    metrics: dict[str, dict[str, float]] = {}
    for mode in modes:
        if mode == "current":
            metrics[mode] = ev.metrics(model, ref)
            continue
        _check_modes([mode])
        with use_mode(model, mode):
            metrics[mode] = ev.metrics(model, ref)
    primary, higher = PRIMARY_METRIC[ev.task]
    return Evaluation(model_name=name, task=ev.task, metrics=metrics, primary=primary, higher_is_better=higher,
                      settings=ev.settings, time_s=time.perf_counter() - t0)
