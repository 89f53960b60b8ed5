"""Every attention head of a compressed model against the dense model's.

For one input (a text for the language models, an image for the vision transformers) the
model runs once per variant: dense, compressed (sparse + low-rank, "both"), sparse-only and
low-rank-only. Each run yields every layer's softmaxed attention, (heads, T, T). What is kept:

- the maps: for text, each head's token-by-token map; for a ViT, each head's attention from
  the CLS token to the patches, on the patch grid;
- per head, its entropy: the mean over query rows of -sum_k p_k ln p_k (nats), over the keys a
  row can see (a causal row sees itself and the tokens before it); for a ViT only the CLS row,
  over all tokens (CLS, registers and patches);
- per head and variant, its distance to the dense head: the Jensen-Shannon divergence in
  bits (0: the same distribution, 1: disjoint supports), averaged over the same rows.

Nothing here draws; ``ui/head_figures.py`` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from oats.core.linear import MODES  # noqa: F401 - heads.MODES: the variants, in the order the view draws them
from oats.errors import ConfigError, UnsupportedModelError
from oats.explain import vit
from oats.methods import registry

MODE_LABELS = vit.MODE_LABELS  # one set of names for the variants, on every page
MAX_TOKENS = 48
"""Text inputs are cut to this many tokens (the maps are T x T per head and layer)."""


@dataclass
class HeadView:
    """Every head of every layer for one input, in each variant."""

    kind: str
    """"text" or "vision"."""
    tokens: list[str]
    """Text: each token decoded on its own (a leading space shows a word start). Vision: "CLS", registers, then patches."""
    maps: dict[str, list[np.ndarray]] = field(default_factory=dict)
    """mode -> per layer: text (heads, T, T); vision (heads, grid_h, grid_w), CLS to patches."""
    entropy: dict[str, np.ndarray] = field(default_factory=dict)
    """mode -> (layers, heads) mean row entropy in nats."""
    distance: dict[str, np.ndarray] = field(default_factory=dict)
    """mode -> (layers, heads) mean Jensen-Shannon divergence to the dense head, in bits."""
    seconds: dict[str, float] = field(default_factory=dict)
    """mode -> seconds for its forward pass and statistics."""
    grid: tuple[int, int] | None = None
    image: np.ndarray | None = None
    """Vision: the (S, S, 3) uint8 crop the model saw."""
    labels: dict[str, str] = field(default_factory=lambda: dict(MODE_LABELS))
    """mode -> its name for this run (the compressed model named after the method's terms)."""

    @property
    def layers(self) -> int:
        return len(self.maps["dense"])

    @property
    def heads(self) -> int:
        return int(self.maps["dense"][0].shape[0])


def entropy(p: np.ndarray) -> np.ndarray:
    """-sum p ln p over the last axis (nats); zero probabilities contribute nothing."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits over the last axis (symmetric, in [0, 1])."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)
    return np.clip((entropy(m) - 0.5 * entropy(p) - 0.5 * entropy(q)) / np.log(2.0), 0.0, 1.0)


def text_attentions(model: nn.Module, batch: dict) -> list[np.ndarray]:
    """Every layer's softmaxed attention (heads, T, T) for one tokenised text (batch of 1).

    A model loaded with SDPA attention returns no maps: it is switched to eager attention,
    which computes the same function.
    """
    kwargs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        out = model(**kwargs, output_attentions=True)
        atts = getattr(out, "attentions", None)
        if not atts and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
            atts = model(**kwargs, output_attentions=True).attentions
    if not atts:
        raise UnsupportedModelError(f"{type(model).__name__} returned no attention maps: load it with "
                                    "attn_implementation='eager'")
    return [a[0].detach().float().cpu().numpy() for a in atts]


def _row_stats(rows: np.ndarray, dense_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(heads,) mean entropy and mean JS divergence to ``dense_rows`` of (heads, R, K) rows."""
    ent = entropy(rows).mean(axis=-1)
    if dense_rows is None:
        return ent, np.zeros_like(ent)
    return ent, js_divergence(rows, dense_rows).mean(axis=-1)


def tokenize(loaded, text: str) -> tuple[dict, list[str]]:
    """A batch of one for ``text`` (at most ``MAX_TOKENS`` tokens) and its tokens as strings."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("type a text to look at (one or two sentences)")
    tok = loaded.tokenizer
    if tok is None:
        raise UnsupportedModelError(f"'{loaded.name}' has no tokenizer: pick a text model's run, or a photo for a ViT")
    batch = tok(text.strip(), return_tensors="pt", truncation=True, max_length=MAX_TOKENS)
    ids = batch["input_ids"][0].tolist()
    return dict(batch), [tok.decode([i]) for i in ids]


def explain_heads(run, text: str | None = None, image: np.ndarray | None = None, modes=None) -> HeadView:
    """Every head of ``run``'s model in each variant for one text (language models) or one
    RGB image (vision transformers). ``modes``: by default the variants the run has
    (``oats.methods.registry.run_variants``). The run's modes are restored afterwards."""
    modes = registry.check_modes(registry.run_variants(run) if modes is None else modes, need_dense=True)
    loaded = getattr(run, "loaded", None)
    vision = vit.is_vision_run(run)
    if vision:
        if image is None:
            raise ConfigError("a vision run needs an image: pick a bundled photo or upload one")
        px, crop = vit.prepare_image(image, vit.image_spec(run))
        grid = vit.patch_grid(run.model, px)
        view = HeadView(kind="vision", tokens=[], grid=grid, image=crop)
    else:
        if loaded is None:
            raise ConfigError("this run has no loaded model to run a text through")
        batch, tokens = tokenize(loaded, text or "")
        view = HeadView(kind="text", tokens=tokens)
    view.labels = vit.mode_labels(run)
    dense_rows: list[np.ndarray] | None = None
    for mode in modes:
        t0 = time.perf_counter()
        with run.use_mode(mode):
            atts = vit.attention_maps(run.model, px) if vision else text_attentions(run.model, batch)
        if vision:
            n = atts[0].shape[-1]
            prefix = n - grid[0] * grid[1]
            if not view.tokens:
                view.tokens = ["CLS"] + [f"register {i}" for i in range(1, prefix)] + \
                              [f"patch {i}" for i in range(grid[0] * grid[1])]
            rows = [a[:, :1, :] for a in atts]  # the CLS row of every head
            view.maps[mode] = [a[:, 0, prefix:].reshape(a.shape[0], *grid) for a in atts]
        else:
            rows = atts
            view.maps[mode] = atts
        stats = [_row_stats(r, None if dense_rows is None else dense_rows[i]) for i, r in enumerate(rows)]
        view.entropy[mode] = np.stack([s[0] for s in stats])
        view.distance[mode] = np.stack([s[1] for s in stats])
        if dense_rows is None:
            dense_rows = rows
        view.seconds[mode] = time.perf_counter() - t0
    return view


def changed_heads(view: HeadView, top: int | None = None) -> list[dict]:
    """One row per (variant, layer, head), the largest distance to dense first."""
    rows = []
    for mode in view.distance:
        if mode == "dense":
            continue
        d = view.distance[mode]
        for layer in range(d.shape[0]):
            for head in range(d.shape[1]):
                rows.append({"variant": view.labels.get(mode, MODE_LABELS[mode]), "layer": layer, "head": head,
                             "js_to_dense_bits": float(d[layer, head]),
                             "entropy_dense_nats": float(view.entropy["dense"][layer, head]),
                             "entropy_variant_nats": float(view.entropy[mode][layer, head])})
    rows.sort(key=lambda r: -r["js_to_dense_bits"])
    return rows[:top] if top else rows


def summary(view: HeadView) -> str:
    """One sentence, from the numbers: how far each variant's heads are from dense, and which
    head changed most in the compressed model."""
    parts = []
    for mode in ("both", "sparse", "lowrank"):
        if mode in view.distance:
            parts.append(f"{view.labels.get(mode, MODE_LABELS[mode])} {np.median(view.distance[mode]):.3f}")
    if not parts:
        return ""
    text = "Median Jensen-Shannon divergence of a head to its dense self (bits): " + ", ".join(parts) + "."
    if "both" in view.distance:
        d = view.distance["both"]
        layer, head = np.unravel_index(int(np.argmax(d)), d.shape)
        text += (f" In the compressed model, layer {layer} head {head} changed most ({d[layer, head]:.3f} bits; "
                 f"entropy {view.entropy['dense'][layer, head]:.2f} → {view.entropy['both'][layer, head]:.2f} nats).")
    return text


# --------------------------------------------------------------------------------------
# Tokens as a reader writes them

_MARKS = {"Ġ": " ", "▁": " ", "Ċ": "⏎", "ĉ": "⇥", "\n": "⏎", "\t": "⇥"}
"""Byte-level BPE (GPT-2, SmolLM) and SentencePiece mark a word start with "Ġ" / "▁" and a newline
with "Ċ"; they reach a page when a token is shown as the tokenizer stores it."""


def display_token(token: str) -> str:
    """``token`` as a reader would write it: no "Ġ" / "▁" word-start marks, no WordPiece "##"
    continuation prefix, newlines and tabs as visible symbols, outer spaces dropped, and "␣" for
    a token that is only white space (so no label is ever empty)."""
    text = str(token)
    if text.startswith("##") and len(text) > 2:
        text = text[2:]
    for mark, shown in _MARKS.items():
        text = text.replace(mark, shown)
    return text.strip() or "␣"


def display_tokens(tokens) -> list[str]:
    """``display_token`` of each token."""
    return [display_token(t) for t in tokens]


def top_targets(row: np.ndarray, tokens: list[str], n: int = 3) -> str:
    """Where one attention row goes, in words: its ``n`` largest entries as "token (0.42), ..."
    (ties to the earlier token)."""
    row = np.asarray(row, dtype=float)
    order = np.argsort(-row, kind="stable")[:n]
    return ", ".join(f"{tokens[i]} ({row[i]:.2f})" for i in order)


# --------------------------------------------------------------------------------------
# Two runs of the same model on one layer


@dataclass
class RunDiff:
    """Per head of one layer: how far run A's and run B's compressed models moved from the dense
    model, and how far apart the two compressed models are, for the same input."""

    layer: int
    js_a: np.ndarray
    """(heads,) mean Jensen-Shannon divergence (bits) of run A's compressed head to the dense head."""
    js_b: np.ndarray
    """(heads,) the same for run B."""
    js_ab: np.ndarray
    """(heads,) mean Jensen-Shannon divergence (bits) between A's and B's compressed heads."""
    maps_a: np.ndarray
    """(heads, ...) run A's compressed maps of the layer (as in ``HeadView.maps``)."""
    maps_b: np.ndarray
    dense_gap: float
    """Largest |difference| between the two runs' dense maps: 0 up to rounding for two runs of
    one model on one input (both share the dense weights)."""


def _distributions(maps: np.ndarray, kind: str) -> np.ndarray:
    """(heads, R, K) attention rows of one layer's maps: text rows as they are; a ViT's CLS row
    over the patches (the map keeps only those) renormalised to sum 1."""
    maps = np.asarray(maps, dtype=np.float64)
    if kind == "text":
        return maps
    rows = maps.reshape(maps.shape[0], 1, -1)
    total = rows.sum(axis=-1, keepdims=True)
    return rows / np.where(total > 0, total, 1.0)


def diff_runs(a: HeadView, b: HeadView, layer: int) -> RunDiff:
    """Run A against run B on ``layer``, both on the same input: their compressed models'
    distances to dense (``HeadView.distance``) and the divergence between the two compressed
    models, head by head (text: the mean over query rows; ViT: the CLS row over the patches)."""
    if a.kind != b.kind or a.tokens != b.tokens or a.layers != b.layers or a.heads != b.heads:
        raise ConfigError("the two runs must be of the same model and see the same input to be compared")
    if not 0 <= layer < a.layers:
        raise ConfigError(f"layer must be between 0 and {a.layers - 1}, got {layer!r}")
    ma, mb = np.asarray(a.maps["both"][layer]), np.asarray(b.maps["both"][layer])
    js_ab = js_divergence(_distributions(ma, a.kind), _distributions(mb, b.kind)).mean(axis=-1)
    gap = float(np.abs(np.asarray(a.maps["dense"][layer]) - np.asarray(b.maps["dense"][layer])).max())
    return RunDiff(layer=layer, js_a=np.asarray(a.distance["both"][layer], dtype=float),
                   js_b=np.asarray(b.distance["both"][layer], dtype=float), js_ab=js_ab, maps_a=ma, maps_b=mb,
                   dense_gap=gap)


def diff_summary(diff: RunDiff, name_a: str, name_b: str) -> str:
    """One sentence from the numbers: which run's compressed heads stay closer to dense on the
    layer, on how many heads, and which head the two runs disagree on most."""
    closer = int((diff.js_a < diff.js_b).sum())
    n = diff.js_a.size
    head = int(np.argmax(diff.js_ab))
    ma, mb = float(np.median(diff.js_a)), float(np.median(diff.js_b))
    lead, other, count = (name_a, name_b, closer) if closer * 2 >= n else (name_b, name_a, n - closer)
    return (f"On layer {diff.layer}, {lead}'s compressed heads stay closer to the dense heads than {other}'s on "
            f"{count} of {n} heads (median Jensen-Shannon divergence to dense: {name_a} {ma:.3f}, {name_b} "
            f"{mb:.3f} bits); the two runs differ most on head {head} ({diff.js_ab[head]:.3f} bits between them).")


def run_names(a: dict, b: dict) -> tuple[str, str]:
    """Short names for two runs in a sentence, from their ``list_runs`` rows: the method and
    compression rate ("OATS 50%"), with the folder name added where that would not tell them apart."""
    def short(r: dict) -> str:
        method = registry.title(r.get("method")) if isinstance(r.get("method"), str) and r.get("method") else "a run"
        c = r.get("compression")
        return f"{method} {c:.0%}" if isinstance(c, (int, float)) else method
    na, nb = short(a), short(b)
    if na == nb:
        na, nb = f"{na} ({a.get('name', 'A')})", f"{nb} ({b.get('name', 'B')})"
    return na, nb
