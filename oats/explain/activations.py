"""Massive activations (Sun et al., 2024) in the dense and the compressed model, and an intervention.

For one input (a text, or a photo for a ViT), every block's output hidden states are read
with forward hooks: the largest magnitudes |h[t, c]| per block, which token t and channel c
carry them, and the (tokens x channels) magnitudes of one block, for the dense model and the
compressed one (``run.use_mode``; the run's modes are restored).

**The intervention**: set the top-k outlier channels of a block's *input* (the residual stream
entering it) to zero or to their mean, for every token, and measure the evaluation metric of
the dense and the compressed model. The channels are the k with the largest max_t |x[t, c]|
of the *dense* model's block input on the shown input, and the means are the dense model's
means of those channels over that input's tokens: one intervention, applied to both models.
k = 0 is no intervention at all.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from oats.errors import ConfigError, DataError
from oats.explain.heads import display_token
from oats.explain.vit import image_spec, is_vision_run, patch_grid, prepare_image
from oats.methods import registry
from oats.models.adapters import get_adapter, no_cache_kwargs

MODES = ("dense", "both")
"""The variants this view compares by default: the dense model and the compressed one, whatever
the method (every run has both; a term alone is not a model anyone deploys, and each more variant
costs one more forward of the whole model). Callers may pass any variant names
(``registry.check_modes``)."""
MODE_LABELS = {"dense": "dense", "both": "compressed"}
TOP = 3
"""Magnitudes kept per block along depth."""
MAX_TOKENS = 128
"""Text inputs are cut to this many tokens."""
KEEP_CHANNELS = 64
"""Per block input: the channels ranked by their largest magnitude, this many kept."""
HOW = ("zero", "mean")


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    h = kwargs.get("hidden_states")
    return h if isinstance(h, torch.Tensor) else None


def blocks(run) -> list[nn.Module]:
    """The transformer blocks of the run's model, in order (the adapter the run was made with)."""
    return [b for _, b in get_adapter(run.model, allow_generic=run.family == "generic").blocks(run.model)]


@contextlib.contextmanager
def record_blocks(modules: Sequence[nn.Module]):
    """Record every block's input and output hidden states (batch item 0, fp32, (T, C)) into
    the yielded dict {"inputs": [...], "outputs": [...]} (one entry per call, in order)."""
    store: dict[str, list] = {"inputs": [None] * len(modules), "outputs": [None] * len(modules)}
    hooks = []
    for i, m in enumerate(modules):
        def pre(_m, args, kwargs, i=i):
            h = _hidden(args, kwargs)
            if h is not None:
                store["inputs"][i] = h[0].detach().float().clone()

        def post(_m, _args, out, i=i):
            h = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(h, torch.Tensor):
                store["outputs"][i] = (h[0] if h.dim() == 3 else h).detach().float().clone()
        hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(m.register_forward_hook(post))
    try:
        yield store
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def channel_intervention(block: nn.Module, channels: Sequence[int], values: Sequence[float] | float | None = None):
    """While active, the block's input hidden states have ``channels`` set to ``values`` (0 when
    None; one value per channel, or one for all) at every token. No channel: nothing changes
    (no hook is even registered)."""
    idx = [int(c) for c in channels]
    if not idx:
        yield
        return
    if values is None:
        values = 0.0
    vals = torch.as_tensor(values, dtype=torch.float32)
    if vals.dim() == 1 and vals.numel() != len(idx):
        raise ConfigError(f"{len(idx)} channels but {vals.numel()} values: give one value per channel or one for all")

    def pre(_m, args, kwargs):
        h = _hidden(args, kwargs)
        if h is None:
            return None
        if max(idx) >= h.shape[-1] or min(idx) < 0:
            raise ConfigError(f"channel {max(idx)} is outside the block input's {h.shape[-1]} channels")
        h = h.clone()
        h[..., idx] = vals.to(h.dtype)
        if args and isinstance(args[0], torch.Tensor):
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- inputs


@dataclass
class ModelInput:
    """One input ready for the model: the keyword arguments and a label per token."""

    kwargs: dict
    tokens: list[str]
    description: str


def text_input(run, text: str, max_tokens: int = MAX_TOKENS) -> ModelInput:
    tok = getattr(getattr(run, "loaded", None), "tokenizer", None)
    if tok is None:
        raise DataError("this run's model has no tokenizer, so text cannot be fed to it: pick a photo for a ViT run")
    if not isinstance(text, str) or not text.strip():
        raise DataError("the text is empty: type a sentence or pick one")
    enc = tok(text, return_tensors="pt", truncation=True, max_length=max_tokens)
    ids = enc["input_ids"][0].tolist()
    # as a reader writes them (no "##" / "Ġ" marks), numbered: the same word can appear twice
    tokens = [f"{i}:{display_token(t)}" for i, t in enumerate(tok.convert_ids_to_tokens(ids))]
    return ModelInput(dict(enc), tokens, f"{len(ids)} tokens")


def image_input(run, image: np.ndarray) -> ModelInput:
    px, _ = prepare_image(image, image_spec(run))
    gh, gw = patch_grid(run.model, px)
    return ModelInput({"pixel_values": px}, [], f"{gh}×{gw} patches")


def _image_tokens(n: int, grid: tuple[int, int]) -> list[str]:
    prefix = n - grid[0] * grid[1]
    names = ["CLS"] + [f"reg{i}" for i in range(1, prefix)]
    return names[:prefix] + [f"patch {r},{c}" for r in range(grid[0]) for c in range(grid[1])]


def make_input(run, text: str | None = None, image: np.ndarray | None = None) -> ModelInput:
    """A text for a text model, an RGB image (H, W, 3) for a ViT."""
    if is_vision_run(run):
        if image is None:
            raise DataError("this run compresses a vision transformer: give a photo, not a text")
        return image_input(run, image)
    if text is None:
        raise DataError("this run compresses a text model: give a text")
    return text_input(run, text)


# ----------------------------------------------------------------------------- the profile


@dataclass
class ModeProfile:
    """One model's block outputs on one input."""

    top: np.ndarray             # (blocks, TOP) largest |h| of each block output, descending
    top_token: np.ndarray       # (blocks, TOP) their token indices
    top_channel: np.ndarray     # (blocks, TOP) their channel indices
    median: np.ndarray          # (blocks,) median |h| of each block output
    magnitudes: np.ndarray      # (blocks, T, C) |h| of every block output (float32)
    input_channels: np.ndarray  # (blocks, KEEP_CHANNELS) block-input channels by largest |x|, descending
    input_max: np.ndarray       # (blocks, KEEP_CHANNELS) their largest |x|
    input_mean: np.ndarray      # (blocks, KEEP_CHANNELS) their mean x over the tokens
    seconds: float


@dataclass
class MassiveActivations:
    tokens: list[str]
    description: str
    modes: dict[str, ModeProfile] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return next(iter(self.modes.values())).top.shape[0]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def rows(self) -> list[dict]:
        """One row per (model, block, rank): magnitude, token, channel, ratio to the block's median."""
        out = []
        for mode, p in self.modes.items():
            for b in range(p.top.shape[0]):
                for r in range(p.top.shape[1]):
                    out.append({"model": MODE_LABELS.get(mode, mode), "block": b, "rank": r + 1,
                                "magnitude": float(p.top[b, r]), "token": self.tokens[int(p.top_token[b, r])],
                                "channel": int(p.top_channel[b, r]),
                                "x_median": float(p.top[b, r] / p.median[b]) if p.median[b] > 0 else float("inf")})
        return out

    def top_channels(self, block: int, k: int, mode: str = "dense") -> tuple[list[int], list[float]]:
        """The k channels of ``block``'s input with the largest magnitudes (in ``mode``) and their means."""
        p = self.modes[mode]
        k = int(k)
        if k < 0 or k > p.input_channels.shape[1]:
            raise ConfigError(f"k must be between 0 and {p.input_channels.shape[1]}, got {k}")
        if not 0 <= block < p.input_channels.shape[0]:
            raise ConfigError(f"block must be between 0 and {p.input_channels.shape[0] - 1}, got {block}")
        return [int(c) for c in p.input_channels[block, :k]], [float(v) for v in p.input_mean[block, :k]]


def _profile(store: dict, seconds: float) -> ModeProfile:
    outs = store["outputs"]
    if any(o is None for o in outs):
        raise DataError("a block of this model returned no hidden states that could be read")
    mags = torch.stack([o.abs() for o in outs])  # (blocks, T, C)
    nb, t, c = mags.shape
    flat = mags.reshape(nb, -1)
    k = min(TOP, flat.shape[1])
    top, where = flat.topk(k, dim=1)
    ins = [x if x is not None else torch.zeros(t, c) for x in store["inputs"]]
    inp = torch.stack(ins)  # (blocks, T, C)
    imax = inp.abs().amax(dim=1)
    kc = min(KEEP_CHANNELS, c)
    ival, ich = imax.topk(kc, dim=1)
    imean = torch.gather(inp.mean(dim=1), 1, ich)
    return ModeProfile(top.numpy(), (where // c).numpy(), (where % c).numpy(), flat.median(dim=1).values.numpy(),
                       mags.numpy().astype(np.float32), ich.numpy(), ival.numpy(), imean.numpy(), seconds)


@torch.no_grad()
def forward(run, inp: ModelInput) -> None:
    """One forward pass of the run's model, in its current modes, on one input."""
    run.model(**inp.kwargs, **no_cache_kwargs(run.model))


def massive_activations(run, inp: ModelInput, modes: Sequence[str] = MODES) -> MassiveActivations:
    """Block outputs of the run's dense and compressed model on one input (modes restored)."""
    modes = registry.check_modes(modes)
    mods = blocks(run)
    out = MassiveActivations(inp.tokens, inp.description)
    for mode in modes:
        with run.use_mode(mode), record_blocks(mods) as store:
            t0 = time.perf_counter()
            forward(run, inp)
            secs = time.perf_counter() - t0
        out.modes[mode] = _profile(store, secs)
    if not out.tokens:  # an image: name the tokens once their number is known
        px = inp.kwargs["pixel_values"]
        out.tokens = _image_tokens(out.modes[modes[0]].magnitudes.shape[1], patch_grid(run.model, px))
    return out


def intervention(run, block: int, channels: Sequence[int], values: Sequence[float] | None,
                 evaluate: Callable[[], dict], modes: Sequence[str] = MODES,
                 prepare: Callable[[], None] | None = None) -> list[dict]:
    """``evaluate()`` (e.g. the quick evaluation) of each mode with the channels of ``block``'s
    input set to ``values`` (zero when None). Modes are restored.

    ``prepare()`` runs first, without the intervention: give it whatever ``evaluate`` computes
    once and caches, such as the dense reference of a fidelity metric
    (``oats.evaluation.prepare_reference``), or that reference would be taken from the changed model.
    """
    modes = registry.check_modes(modes)
    mods = blocks(run)
    if not 0 <= block < len(mods):
        raise ConfigError(f"block must be between 0 and {len(mods) - 1}, got {block}")
    if prepare is not None:
        prepare()
    rows = []
    for mode in modes:
        with run.use_mode(mode), channel_intervention(mods[block], channels, values):
            t0 = time.perf_counter()
            m = evaluate()
            rows.append({"model": MODE_LABELS.get(mode, mode), "block": block, "k": len(channels),
                         "set_to": "zero" if values is None else "mean", **m, "seconds": time.perf_counter() - t0})
    return rows


def worsening(reference: float, intervened: float, higher_is_better: bool) -> float:
    """How much the metric worsens under the intervention, in its own units (> 0: worse)."""
    return (reference - intervened) if higher_is_better else (intervened - reference)


def estimated_seconds(profile: MassiveActivations, eval_tokens: int, evaluations: int) -> float:
    """A rough cost of ``evaluations`` evaluations of ``eval_tokens`` tokens each, from the
    dense forward pass of the shown input (seconds per token; short inputs overestimate it)."""
    p = profile.modes.get("dense") or next(iter(profile.modes.values()))
    return p.seconds / max(profile.n_tokens, 1) * eval_tokens * evaluations
