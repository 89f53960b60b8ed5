"""Every cached analysis call of the app, in one place (the convention: a page never defines its
own ``st.cache_data`` function; it calls one from here).

Each takes (path, mtime, ...) so a rewritten run recomputes; the run comes from the cached
loader (``ui.runtime.load_run_cached``), so no tensor is ever hashed; arguments whose name
starts with "_" (a loaded run, an image) are not hashed either, so the key before them must
name them. Calls that switch the shared model's modes hold ``MODEL_LOCK``.
"""

from __future__ import annotations

import streamlit as st

from oats.data import bundled_images
from oats.errors import OatsError
from oats.explain import budget, common, heads, heavytail, outliers, spectra, vit
from oats.explain import text as text_explain
from oats.explain import walkthrough as walk_view
from oats.methods import registry
from ui.runtime import load_run_cached
from ui.state import MODEL_LOCK, run_info
from ui.text import esc

def _run(path: str, mtime: float):
    return load_run_cached(path, mtime)


@st.cache_data(show_spinner=False, max_entries=4)
def _spectra_overview(path: str, mtime: float) -> spectra.SpectraOverview:
    return spectra.spectra_overview(_run(path, mtime))


def spectra_overview(path: str, mtime: float, layers: int) -> spectra.SpectraOverview:
    """Two spectra per matrix for the whole run (seconds for a small model, about 20 s for
    smollm2-135m's 210 matrices on two cores): computed once, shared by every session."""
    with st.spinner(f"Computing the spectra of all {layers} layers (once for this run, shared by everyone "
                    f"who opens it) ..."):
        return _spectra_overview(path, mtime)


@st.cache_data(show_spinner=False, max_entries=64)
def layer_spectra(path: str, mtime: float, qualname: str) -> spectra.LayerSpectra:
    return spectra.layer_spectra(_run(path, mtime), qualname)


@st.cache_data(show_spinner=False, max_entries=4)
def second_moments_by_input(path: str, mtime: float) -> outliers.SecondMomentsByInput:
    return outliers.second_moments_by_input(_run(path, mtime))


@st.cache_data(show_spinner=False, max_entries=64)
def column_shares(path: str, mtime: float, qualname: str) -> outliers.ColumnShares:
    return outliers.column_shares(_run(path, mtime), qualname)


@st.cache_data(show_spinner=False, max_entries=64)
def mask_density(path: str, mtime: float, qualname: str) -> common.Heat:
    return outliers.mask_density(_run(path, mtime), qualname)


@st.cache_data(show_spinner="Measuring every layer's error budget ...", max_entries=4)
def layer_budget(path: str, mtime: float) -> list[dict]:
    return budget.layer_budget(_run(path, mtime))


def replay_of(run):
    """(the Walkthrough's replay of ``run``'s method, whether it is the run's own solver), from
    the method registry (``registry.replay_for``): the page names no method."""
    return registry.replay_for(run.method)


@st.cache_data(show_spinner=False, max_entries=8)
def layer_gram(path: str, mtime: float, qualname: str):
    """The layer's input Gram as the compression saw it (``walk_view.layer_gram``), on the
    run's own calibration data (the default data when its manifest does not record it)."""
    from oats.data import calibration_batches
    run = _run(path, mtime)
    info = run_info(path)
    cal = info.calibration_request or {}
    batches = calibration_batches(run.loaded, n_samples=cal.get("samples"), seq_len=cal.get("seq_len"),
                                  source=cal.get("source"), seed=cal.get("seed") or 0,
                                  domain=info.calibration_domain)
    with MODEL_LOCK:
        return walk_view.layer_gram(run, qualname, batches)


@st.cache_data(show_spinner="Reading this layer's saved result ...", max_entries=8)
def saved_walkthrough(path: str, mtime: float, qualname: str) -> walk_view.Walkthrough:
    return walk_view.saved_walkthrough(_run(path, mtime), qualname)


@st.cache_data(show_spinner="Decomposing this layer ...", max_entries=32)
def walkthrough(path: str, mtime: float, qualname: str, compression: float, rank_ratio: float) -> walk_view.Walkthrough:
    run = _run(path, mtime)
    f = run.factors(qualname)
    replay, _ = replay_of(run)
    if replay is None:
        raise OatsError(f"no registered method says how to replay a run of {run.method!r}")
    config = run.config.replace(compression=compression, rank_ratio=rank_ratio)
    if replay.gram:
        return walk_view.walkthrough(f["weight"], run.second_moments[qualname], config, replay,
                                     gram=layer_gram(path, mtime, qualname))
    method = registry.find(run.method)
    scaled = method.scaled if method is not None else True
    return walk_view.walkthrough(f["weight"], run.second_moments[qualname] if scaled else None, config, replay)


@st.cache_data(show_spinner=False, max_entries=4)
def ablation_reference(path: str, mtime: float) -> list[dict]:
    from oats.evaluation import evaluate_model
    run = _run(path, mtime)
    with MODEL_LOCK:
        return budget.ablation_reference(run, lambda: evaluate_model(run.model, run.loaded, quick=True))


@st.cache_data(show_spinner=False, max_entries=256)
def block_ablation(path: str, mtime: float, block: int) -> list[dict]:
    from oats.evaluation import evaluate_model
    run = _run(path, mtime)
    with MODEL_LOCK:
        return budget.block_ablation(run, block, lambda: evaluate_model(run.model, run.loaded, quick=True))


# ----------------------------------------------------------------------------- heavy-tailed spectra


@st.cache_data(show_spinner="Fitting power laws to this layer's spectra ...", max_entries=64)
def layer_esd(path: str, mtime: float, qualname: str) -> heavytail.LayerESD:
    return heavytail.layer_esd(_run(path, mtime), qualname)


@st.cache_data(show_spinner=False, max_entries=2048)
def layer_alpha(path: str, mtime: float, qualname: str) -> dict:
    return heavytail.layer_alpha(_run(path, mtime), qualname)


_ALPHA_DONE: set[tuple[str, float]] = set()
"""Runs whose every layer's α has been fitted in this process (shown without asking again)."""


def alpha_done(path: str, mtime: float) -> bool:
    return (path, mtime) in _ALPHA_DONE


def alpha_table(path: str, mtime: float, run) -> list[dict]:
    """Every layer's α and stable rank, dense and compressed; each layer cached, a progress bar
    while any is computed (for everyone who opens the run afterwards, it is there at once)."""
    names = [r.qualname for r in run.layers]
    if (path, mtime) in _ALPHA_DONE:
        return [layer_alpha(path, mtime, q) for q in names]
    bar = st.progress(0.0, text=f"Fitting power laws to {len(names)} layers (dense and compressed) ...")
    rows = []
    for i, q in enumerate(names):
        rows.append(layer_alpha(path, mtime, q))
        bar.progress((i + 1) / len(names), text=f"Fitting power laws: {i + 1}/{len(names)} layers ({esc(q)})")
    bar.empty()
    _ALPHA_DONE.add((path, mtime))
    return rows


# ----------------------------------------------------------------------------- massive activations


@st.cache_data(show_spinner="One forward pass of the dense and of the compressed model ...", max_entries=16)
def massive_profile(path: str, mtime: float, input_key: str, _text: str | None, _image=None):
    from oats.explain import activations
    run = _run(path, mtime)
    with MODEL_LOCK:
        return activations.massive_activations(run, activations.make_input(run, text=_text, image=_image))


@st.cache_data(show_spinner=False, max_entries=4)
def evaluation_tokens(path: str, mtime: float) -> int:
    from oats.evaluation import evaluation_tokens as tokens
    return tokens(_run(path, mtime).loaded, quick=True)


@st.cache_data(show_spinner=False, max_entries=256)
def channel_intervention(path: str, mtime: float, block: int, channels: tuple[int, ...],
                         values: tuple[float, ...] | None) -> list[dict]:
    """The quick evaluation of the dense and compressed model with ``channels`` of ``block``'s
    input set to ``values`` (zero when None)."""
    from oats.evaluation import evaluate_model, prepare_reference
    from oats.explain import activations
    run = _run(path, mtime)
    with MODEL_LOCK:
        return activations.intervention(run, block, list(channels), None if values is None else list(values),
                                        lambda: evaluate_model(run.model, run.loaded, quick=True),
                                        prepare=lambda: prepare_reference(run.model, run.loaded, quick=True))


@st.cache_data(show_spinner="Counting the run's bytes ...", max_entries=16)
def deploy_sizes(path: str, mtime: float) -> dict:
    """Bytes of the run's block linears dense, as a sparse export (memory, disk) and folded."""
    from oats.deploy.export import size_report
    return size_report(_run(path, mtime))


# ----------------------------------------------------------------------------- attention heads


@st.cache_data(max_entries=12, show_spinner="Running the input through the dense model and its variants ...")
def head_view(path: str, mtime: float, text: str | None, photo: str | None, _run) -> heads.HeadView:
    image = bundled_images()[photo] if photo else None
    with MODEL_LOCK:  # the shared model's modes are switched (and restored)
        return heads.explain_heads(_run, text=text, image=image)


@st.cache_data(max_entries=6, show_spinner="Running the input through the second run's dense and compressed models ...")
def compressed_view(path: str, mtime: float, text: str | None, photo: str | None) -> heads.HeadView:
    """The dense and compressed heads of another run (the diff needs no single-term variants)."""
    image = bundled_images()[photo] if photo else None
    other = load_run_cached(path, mtime)
    with MODEL_LOCK:
        return heads.explain_heads(other, text=text, image=image, modes=("dense", "both"))


@st.cache_data(max_entries=24, show_spinner=False)
def text_explanation(path: str, mtime: float, text: str, second: str | None, steps: int, with_ig: bool,
                     _run) -> text_explain.TextExplanation:
    with MODEL_LOCK:  # steps double for a variant whose attributions miss completeness (to IG_MAX_STEPS)
        return text_explain.explain_text(_run, text, second, steps=steps, attributions=with_ig,
                                         max_steps=max(steps, text_explain.IG_MAX_STEPS))


# ----------------------------------------------------------------------------- ViT attention and attribution


@st.cache_data(max_entries=24, show_spinner="Rolling out attention for each model of the run ...")
def attention_cached(path: str, mtime: float, image_key: str, head_fusion: str, discard_ratio: float,
                     _run, _image) -> vit.AttentionMaps:
    with MODEL_LOCK:  # explain switches the shared model's modes (and restores them)
        return vit.explain(_run, _image, head_fusion=head_fusion, discard_ratio=discard_ratio,
                           modes=vit.compared_modes(_run))


@st.cache_data(max_entries=48, show_spinner=False)
def attribution_cached(path: str, mtime: float, image_key: str, method: str, mode: str, steps: int,
                       _run, _image) -> vit.AttributionMaps:
    with MODEL_LOCK:
        return vit.explain_attributions(_run, _image, methods=[method], modes=[mode], steps=steps)
