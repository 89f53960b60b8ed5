"""Compress: choose a model and settings, watch the blocks go by, open and summarise saved runs (the
runs list is its own section, ``ui.runs_list``; the tour's pages come from ``ui.navigation``)."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import streamlit as st

from ui.runtime import load_run_cached
from ui.state import (complete_runs, current_path, JOB_KEY, method_choices, method_help, MODEL_LOCK,
                      run_info, RUN_KEY, run_mtime, run_task, saved_evaluation)
from oats.evaluation import primary_metric  # the task registry's answer
from ui.widgets import chart, how_to_read, table
from ui.text import esc
from ui import navigation
from ui.runs_list import saved_runs  # the runs list: a section of its own
from oats.explain import runs as summaries
from ui import evaluations, run_figures
from oats.explain import quality
from oats import corpora
from oats.config import DEFAULT_RANK_RATIO, OatsConfig
from oats.methods import registry
from oats.errors import DataError, OatsError
from oats.runs import estimate
from oats.runs.folders import run_dir, runs_root
from oats.runner.execute import evaluate_and_save
from oats.runner.jobs import RUNNER
from oats.runner.request import CompressRequest, data_kind
from oats.data import MAX_UPLOAD_MB, UPLOAD_TYPES, check_calibration_source, check_upload
from oats.models.zoo import available_models, check_model_name, too_big_for_memory

OTHER = "other: a hub id or a local folder"
VARIANTS = {"dense": "dense", "both": "sparse + low-rank", "sparse": "sparse only", "lowrank": "low-rank only"}


def variant_names(info) -> dict[str, str]:
    """The variants the run has (``registry.run_variants``), named after its method's terms."""
    return {m: registry.terms(info.method, info.config) if m == "both" else VARIANTS[m]
            for m in registry.run_variants(info)}

st.title("Compress a model")
st.caption("OATS splits every weight matrix of the transformer blocks, scaled by the RMS of its inputs, into a "
           "**sparse term** plus a **low-rank term** (Zhang & Papyan, ICLR 2025). Pick a model and a budget; "
           "the run is saved block by block, so it keeps going while you look at other pages.")


# ----------------------------------------------------------------------------- the form


def _save_upload(upload) -> str:
    """Keep an uploaded calibration text (checked first) under the runs folder; returns its path.
    The file is named by its content's hash plus the upload's name kept to plain characters (the
    name is the sender's: it may be long, hidden, or hold anything)."""
    data = check_upload(upload.name, upload.getvalue(), "text")
    folder = runs_root() / "uploads"
    plain = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(upload.name).name)[-80:].lstrip("._") or "upload.txt"
    path = folder / f"{hashlib.sha1(data).hexdigest()[:10]}-{plain}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(data)
    except OSError as e:
        raise DataError(f"the upload could not be kept in '{folder}' ({e.strerror or type(e).__name__}): "
                        "free disk space or choose another runs folder") from None
    return str(path)


def _calib_domains(kind: str | None) -> tuple[str, ...]:
    """The built-in calibration domains the form offers for a model of ``kind`` (all when unknown)."""
    return corpora.domains(kind) if kind else corpora.domains("text") + corpora.domains("images")


def _calib_label(choice: str) -> str:
    if choice == corpora.MIX:
        return "mix of every domain (default)"
    return f"{choice}: {corpora.title(choice)}"


def new_compression() -> None:
    models = available_models()
    presets = {m["name"]: m for m in models}
    st.subheader("New compression")
    c1, c2 = st.columns([2, 3])
    with c1:
        names = list(presets) + [OTHER]
        first = "minilm-l6" if presets.get("minilm-l6", {}).get("available") else names[0]  # the quickest
        choice = st.selectbox("Model", names, index=names.index(first),
                              format_func=lambda n: n if n == OTHER else
                              f"{n} — {presets[n]['task']}" + ("" if presets[n]["available"] else " (not installed)"))
        typed = ""
        if choice == OTHER:
            typed = st.text_input("Hub id or local folder", placeholder="gpt2, facebook/dinov2-small, ./my-model",
                                  help="Hub ids need the network; a local folder needs config.json and weights.")
        else:
            m = presets[choice]
            st.caption(m["description"] if m["available"] else f"Not installed here: `{m['install']}`")
    model = typed.strip() if choice == OTHER else choice
    default_kappa = presets[choice]["default_rank_ratio"] if choice in presets else DEFAULT_RANK_RATIO
    with c2:
        a, b = st.columns(2)
        method = a.selectbox("Method", list(method_choices()), help=method_help())
        sparsity = b.selectbox("Sparsity pattern", ["row", "layer", "N:M"],
                               help="row: each row of the sparse term keeps the same count (the paper's default); "
                                    "layer: one threshold per matrix; N:M: keep N of every M inputs.")
        nm = "2:8"
        if sparsity == "N:M":
            nm = b.text_input("N:M", "2:8", help="Keeps N of every M consecutive inputs of a row; the rank then "
                                                 "follows from (N/M)/(1 − κ), so the compression rate is derived.")
        rho = a.slider("Compression rate ρ", 0.05, 0.95, 0.5, 0.05, disabled=sparsity == "N:M",
                       help="Fraction of each matrix's parameters removed (index storage not counted).")
        record = registry.find(method)  # κ, iterations and solver only for a method that reads them
        kappa, iterations, solver = float(default_kappa), 80, "fast"
        if record is not None and record.uses_rank_ratio:
            kappa = b.slider("Rank ratio κ", 0.0, 0.9, float(default_kappa), 0.05, key=f"kappa-{choice}",
                             help="Share of the kept parameters spent on the low-rank term; κ = 0 is Wanda.")
        if record is not None and record.iterative:
            iterations = a.number_input("Iterations", 1, 500, 80,
                                        help="Alternating-thresholding iterations (the fast solver stops earlier "
                                             "once the error stops improving).")
            solver = b.selectbox("Solver", ["fast", "exact"],
                                 help="exact: a full SVD every iteration (Algorithm 1).")
        shrink = None  # the method's own default
        if record is not None and record.uses_shrink:
            shrink = a.slider("Gram shrinkage λ", 0.0, 1.0, float(record.default_shrink), 0.05,
                              key=f"shrink-{method}",
                              help="Solve with (1 − λ) H + λ diag(H) instead of the calibration inputs' Gram H: "
                                   "0 trusts their correlations fully, 1 keeps only their second moments (OATS's "
                                   f"scaling). This method's default: {record.default_shrink:g}.")
    kind = data_kind(model, presets[choice]["task"] if choice in presets else None)  # None: not known yet
    c3, c4 = st.columns([2, 3])
    with c3:
        source_kind = st.radio("Calibration data", ["built-in", "text file", "image folder"], horizontal=True,
                               help="Built-in: the project's own text (the Python manual, Python code, "
                                    "Shakespeare, State of the Union addresses) or images (photos, drawings, "
                                    "textures), a mix of every domain or one of them; or your own data.")
    source, domain = None, None
    with c4:
        if source_kind == "built-in":
            domain = st.selectbox("Built-in calibration data", [corpora.MIX, *_calib_domains(kind)],
                                  key=f"calib-domain-{kind}", format_func=_calib_label,
                                  help="mix (the default): an equal share of every domain of the model's kind; "
                                       "one domain: calibrate on that text or those images only.")
            domain = None if domain == corpora.MIX else domain
        elif source_kind == "text file":
            upload = st.file_uploader(f"Upload a text file (at most {MAX_UPLOAD_MB} MB)",
                                      type=list(UPLOAD_TYPES["text"]))
            typed_path = st.text_input("… or a path to a text file on this machine")
            source = upload if upload is not None else (typed_path.strip() or None)
        elif source_kind == "image folder":
            source = st.text_input("Path to a folder of images", placeholder="/data/images").strip() or None
        samples = st.number_input("Calibration samples (0: the default for the task)", 0, 4096, 0)
        shown = registry.variants(method)
        evaluate = st.checkbox("Evaluate when done (" + ", ".join(
                                   {"dense": "dense", "both": "compressed", "sparse": "sparse-only",
                                    "lowrank": "low-rank-only"}[m] for m in shown) + ")", value=True,
                               help="Takes about as long as the compression itself on the embedded models.")

    _estimate_line(model, method, rho, kappa, int(iterations), nm if sparsity == "N:M" else sparsity, solver,
                   shrink, int(samples) or None, evaluate, presets[choice]["task"] if choice in presets else None)
    if not st.button("Compress", type="primary", icon=":material/play_arrow:"):
        return
    # The library's own checks, in the CLI's order, before a job starts: one line, nothing lost.
    try:
        config = OatsConfig(compression=rho, rank_ratio=kappa, iterations=int(iterations),
                            sparsity=nm if sparsity == "N:M" else sparsity, solver=solver, shrink=shrink)
        # a local folder too large for memory is compressed from disk, block by block (as `oats compress`)
        too_big = too_big_for_memory(model)
        check_model_name(model, from_disk=too_big is not None)
        if source_kind != "built-in":
            if source is not None and not isinstance(source, str):
                source = _save_upload(source)
            check_calibration_source(source_kind, source)
        req = CompressRequest(model=model, config=config, method=method, calib_source=source,
                              calib_domain=domain, calib_samples=int(samples) or None, evaluate=evaluate,
                              from_disk=too_big is not None)
        req.check()
        job = RUNNER.start(req)
    except OatsError as e:
        st.error(esc(e))
        return
    except Exception as e:  # noqa: BLE001 - a path or upload nobody foresaw is one line, not a traceback
        st.error(f"the compression could not start ({esc(type(e).__name__)}: {esc(e, 200)}): check the model "
                 "name and the calibration data")
        return
    if too_big is not None:
        st.info(f"{esc(str(too_big).rsplit(': ', 1)[0])}: it is compressed from disk, one block in memory at a time "
                "(the same run), and evaluated with the model streamed from disk.")
    st.session_state[JOB_KEY] = str(job.folder)
    st.session_state.pop("_job_opened", None)
    _link_job(job.folder)


# ----------------------------------------------------------------------------- time estimate


def _past_runs(model: str, method: str) -> list:
    """The complete runs of ``model`` that can teach the estimate (``oats.runs.estimate``); the
    evaluation file is read only for those of ``method``."""
    out = []
    for r in complete_runs():
        info = r["info"]
        if info is None or info.model_name != model:
            continue
        p = estimate.past_run(info, saved_evaluation(r["path"]) if info.method == method else None)
        if p is not None:
            out.append(p)
    return out


def time_estimate(model: str, method: str, config: OatsConfig, samples: int | None, evaluate: bool,
                  task: str | None) -> estimate.Estimate:
    # a local folder too large for memory is compressed from disk (as the button decides): its load is seconds
    from_disk = Path(model).expanduser().is_dir() and too_big_for_memory(model) is not None
    return estimate.estimate(model, method, config, _past_runs(model, method), task=task, samples=samples,
                             evaluate=evaluate, from_disk=from_disk)


def _estimate_line(model, method, rho, kappa, iterations, sparsity, solver, shrink, samples, evaluate, task) -> None:
    """How long the compression should take on this machine, said before the button."""
    if not model:
        return
    try:
        config = OatsConfig(compression=rho, rank_ratio=kappa, iterations=iterations, sparsity=sparsity,
                            solver=solver, shrink=shrink)
    except OatsError:
        return  # the settings' own error is said when Compress is pressed
    est = time_estimate(model, method, config, samples, evaluate, task)
    st.caption(f"**Time on this machine: {esc(est.text)}**" + (f": {esc(est.parts)}." if est.parts else "."),
               help="Learned from the run folders this machine made of the same model and method (their recorded "
                    "load, calibration, decomposition and evaluation times, scaled to the calibration samples and "
                    "iterations asked for; the median over the runs). Without one, a rough rate per million weights "
                    "measured on a 2-core machine. A busy machine takes longer.")


# ----------------------------------------------------------------------------- progress


def _draw_job(job) -> None:
    s = job.state()
    if s.active:
        label = (f"Compressing {esc(s.model)}: {s.done}/{s.total} blocks" if s.total
                 else f"{esc(s.model)}: {esc(s.stage)} ...")
        box = st.status(label, state="running", expanded=True)  # not `with`: leaving it marks it complete
        box.progress(s.fraction, text=f"{esc(s.message)}  ({s.elapsed:.0f} s)")
        for line in s.log[-8:]:
            box.caption(esc(line))
        if box.button("Stop after this block", key=f"stop-{s.folder}"):
            job.cancel()
    elif s.status == "done":
        st.success(f"{esc(s.model)}: {esc(s.message)}. Run folder: {esc(s.folder)}", icon=":material/check_circle:")
    elif s.status == "cancelled":
        st.warning(esc(s.message))
    else:
        st.error(f"Compression of {esc(s.model)} failed: {esc(s.error)}")


LIVE_KEY = "_live_jobs"


@st.fragment(run_every=1.0)
def _live(folder: str | None) -> None:
    """Every running or queued job, this session's last (others' too: the runner is shared),
    redrawn each second; when any of them ends, the whole app reruns so the sidebar and the
    run list pick up its run."""
    own = RUNNER.get(folder) if folder else None
    active = RUNNER.active()
    for j in active:
        if j is not own:
            _draw_job(j)
    if own is not None:
        _draw_job(own)
    now = {str(j.folder) for j in active}
    before = st.session_state.get(LIVE_KEY, now)
    st.session_state[LIVE_KEY] = now
    if before - now:
        s = own.state() if own is not None else None
        if s is not None and s.status == "done":
            st.session_state[RUN_KEY] = s.folder
        st.rerun()


# The URL's query parameter naming the run folder of the compression this tab started, so a
# reload (which loses the session) still follows it and opens its run when it is done. (Comments,
# not docstrings: Streamlit would draw a bare string at a page's top level.)
JOB_PARAM = "job"


def _link_job(folder) -> None:
    st.query_params[JOB_PARAM] = Path(folder).name


def _job_from_link() -> None:
    """The job of the URL's ``job`` parameter becomes this session's own when it has none (a
    reload); a name that is not a run folder's, or a job this app is not running, is one line."""
    name = st.query_params.get(JOB_PARAM)
    if not name or st.session_state.get(JOB_KEY):
        return
    try:
        folder = run_dir(runs_root(), name)
    except OatsError:
        st.query_params.pop(JOB_PARAM, None)
        st.warning(f"The link's compression '{esc(name, 80)}' is not a run folder name: ignored.")
        return
    if RUNNER.get(folder) is None:
        st.query_params.pop(JOB_PARAM, None)
        st.caption(f"The compression of the link ({esc(name, 80)}) is not running in this app (the app restarted?): "
                   "an unfinished run resumes from the list of saved runs.")
        return
    st.session_state[JOB_KEY] = str(folder)


# A compression that finished up to this long before this session started is still announced
# (the tab was reloaded while it ran, or just after).
RECENT_S = 600
SEEN_KEY = "_jobs_seen"


def finished_elsewhere() -> None:
    """One line per compression that finished since this session started (or just before) that
    this session did not start or open: "The compression of X finished at HH:MM", and a button
    that opens its run. The runner is the app's, so others' compressions are announced too."""
    started = st.session_state.setdefault("_session_started", time.time())
    own = st.session_state.get(JOB_KEY)
    seen = st.session_state.setdefault(SEEN_KEY, set())
    root = Path(runs_root()).resolve()
    for job in RUNNER.jobs()[-20:]:
        s = job.state()
        if (s.status != "done" or s.finished is None or s.finished < started - RECENT_S or s.folder in seen
                or s.folder == own or s.folder == current_path()):
            continue
        if Path(s.folder).resolve().parent != root:  # a run this app's runs folder does not list
            continue
        a, b = st.columns([5, 1])
        a.info(f"The compression of {esc(s.model, 120)} finished at {time.strftime('%H:%M', time.localtime(s.finished))} "
               f"({esc(Path(s.folder).name, 120)}): open it", icon=":material/check_circle:")
        if b.button("Open", key=f"open-finished-{s.folder}", icon=":material/folder_open:"):
            seen.add(s.folder)
            st.session_state[RUN_KEY] = s.folder
            st.rerun()


def progress() -> None:
    _job_from_link()
    finished_elsewhere()
    folder = st.session_state.get(JOB_KEY)
    job = RUNNER.get(folder) if folder else None
    if RUNNER.active():
        _live(folder)
        return
    st.session_state.pop(LIVE_KEY, None)
    if job is None:
        return
    s = job.state()
    _draw_job(job)
    if not s.active:
        st.query_params.pop(JOB_PARAM, None)  # followed to its end: a later reload keeps the user's choice
    if s.status == "done" and st.session_state.get("_job_opened") != folder:
        st.session_state["_job_opened"] = folder  # open the new run once, then let the user choose
        if st.session_state.get(RUN_KEY) != s.folder:
            st.session_state[RUN_KEY] = s.folder
            st.rerun()


# ----------------------------------------------------------------------------- summary


def summary() -> None:
    path = current_path()
    if not path:
        return
    try:
        info = run_info(path)
    except OatsError as e:
        st.error(esc(e))
        return
    s = summaries.run_summary(info)
    cfg = info.config
    st.subheader(f"Summary: {esc(Path(path).name)}")
    record = registry.find(info.method)  # only the settings the run's method reads, κ as it really used it
    kappa = f"κ = {info.rank_ratio:g} · " if record is not None and record.uses_rank_ratio else ""
    solver = (f" · {cfg.solver} solver, ≤ {cfg.iterations} iterations" if record is not None and record.iterative
              else "")
    if record is not None and record.uses_shrink:
        solver += f" · Gram shrinkage λ = {record.shrink(cfg):g}"
    st.caption(f"{esc(info.model_name)} · {esc(info.method)} · ρ = {cfg.compression:g} (effective "
               f"{info.effective_compression:.3f}) · {kappa}{cfg.sparsity}{solver} · "
               f"calibrated on {esc(info.calibrated_on())}")
    c = st.columns(5)
    c[0].metric("Block-linear parameters, dense", f"{s['params_dense'] / 1e6:.2f} M")
    c[1].metric("… after compression", f"{s['params_kept'] / 1e6:.2f} M", f"-{s['compression']:.1%}",
                delta_color="off")
    c[2].metric("Matrices / blocks", f"{s['matrices']} / {s['blocks']}")
    c[3].metric("Median scaled error", f"{s['median_scaled_error']:.4f}")
    c[4].metric("Compression time", f"{s['total_s']:.1f} s" if s["total_s"] else "?")

    names = variant_names(info)
    st.markdown("**Evaluation: " + " vs ".join(esc(n) for n in names.values()) + "**")
    ev = evaluations.run_evaluation(path, info)  # its own, or its row of the sweep that made it
    task = run_task(info)
    if ev is None:
        st.caption("Not evaluated yet (runs made by the app are evaluated when they finish).")
        if st.button(f"Evaluate the {len(names)} variants", icon=":material/speed:"):
            try:
                run = load_run_cached(path, run_mtime(path))
                # the cached run is shared by every session: switch its modes under the lock
                with st.spinner("Evaluating " + ", ".join(names.values()) + " ..."), MODEL_LOCK:
                    note = evaluate_and_save(run, path)
            except OatsError as e:
                st.error(esc(e))
                return
            if note:
                st.error(esc(note.strip(" ()")))
            else:
                st.rerun()
    else:
        results = ev["results"]
        pm = (primary_metric(task) if task else None) or quality.primary_of(k for v in results.values() for k in v)
        doms = quality.domains_of(results.values(), pm[0]) if pm else []
        measured_on = quality.describe(ev.get("settings"), doms, task)
        if pm:  # the primary metric's mean, then its value on each domain, then the other metrics
            rows = evaluations.evaluation_rows(results, pm[0], names)
        else:
            rows = evaluations.metric_columns([{"variant": names[mode], "mode": mode, **vals}
                                               for mode, vals in results.items() if mode in names])
        table(rows, f"{Path(path).name}-evaluation", key="csv-eval")
        if pm and any(pm[0] in v for v in results.values()):
            shown = {m: v for m, v in results.items() if m in names}
            mean = ("mean over the domains, " if doms else "") + f"on {measured_on}"
            chart(run_figures.evaluation_figure(shown, *pm, measured_on=mean, variants=names), key="eval-chart")
            if doms:
                chart(run_figures.domain_evaluation_figure(shown, *pm, doms, evaluations.titles(doms), names,
                                                       measured_on=f"on {measured_on}"), key="eval-domain-chart")
            how_to_read(("One bar per variant of the same model, on held-out data: dense (the original weights), "
                         "sparse + low-rank (the compressed model), the sparse term alone (every low-rank term zeroed) "
                         "and the low-rank term alone (every sparse term zeroed). The compressed bar should sit close "
                         "to dense; the two single-term bars show how much each term carries on its own: usually "
                         "neither does, because the method fitted them together."
                         if "sparse" in names else
                         f"One bar per model, on held-out data: dense (the original weights) and the compressed model "
                         f"({esc(names.get('both', 'compressed'))}: this method keeps one term, so there is no "
                         f"single-term variant to show). The compressed bar should sit close to dense.")
                        + (" The second chart splits the first by domain: the held-out part of each kind of data, "
                           "none of it seen in calibration. A method can keep one domain close to dense and lose "
                           "another; the first chart's bar is their " + ("geometric " if pm[0] == "perplexity" else "")
                           + "mean." if doms else ""))
        st.caption(("Quick evaluation set" if ev.get("quick") else "Evaluation set") + f" ({esc(ev.get('created', ''))}), "
                   f"measured on {esc(measured_on)}"
                   + (f"; {esc(quality.mean_note(pm[0]))}" if pm and doms else "")
                   + ". Fidelity metrics compare each variant with the dense model on held-out data.")

    left, right = st.columns(2)
    with left:
        chart(run_figures.block_time_figure(summaries.block_times(info)), key="time-chart")
    with right:
        st.markdown("**Per layer**")
        rows = [{k: getattr(l, k) for k in ("qualname", "kind", "shape", "rank", "nnz", "params", "scaled_error",
                                             "output_error", "iterations", "time_s")} for l in info.layers]
        for r in rows:
            r["shape"] = "×".join(map(str, r["shape"]))
        table(rows, f"{Path(path).name}-layers", key="csv-layers", height=360)


TOUR = [  # (page title, what to do there): the page's file and icon come from ui/navigation.py
    ("Compress",
     "Pick **minilm-l6**, method **oats**, compression ρ **0.5**, rank ratio κ **0.25**, and press **Compress** "
     "({minilm_time}). Ask the room first: what share of the weights is left, and where does it go? "
     "When it is done, the run opens in the sidebar and its evaluation appears below: the compressed model stays "
     "close to the dense one, while the sparse term alone or the low-rank term alone do not."),
    ("Spectra",
     "Layer **0.q**: the dashed line is the rank r the budget allows. W D's top r singular values hold well under "
     "half of its energy, so a rank-r term alone cannot hold the layer; W D − S's top r hold most of it: once the "
     "sparse term has taken the large entries, what is left is close to low rank (the legend gives both shares). "
     "Try a **fc2** layer: a wider matrix, a different picture."),
    ("Outliers",
     "The heat map of input second moments: a few channels carry far larger activations than the rest. That is "
     "why OATS scales by D = sqrt(mean x²) before splitting: errors on those channels cost more. Move the "
     "threshold; pick a flagged channel and see whether the sparse or the low-rank term keeps its weights."),
    ("Error budget",
     "Each bar is one layer's scaled error with both terms, the sparse term alone and the low-rank term alone: "
     "neither alone is close. Under Per-block ablation, pick block **2** and press **Measure** to see what turning one block's term off does to the "
     "model's cosine."),
    ("Walkthrough",
     "Layer **0.q** again: move the iteration slider from 1 to the end and watch L and S settle and the residual "
     "shrink; the objective never rises. Set κ to **0** (Wanda's mask: no low-rank term) and compare the final "
     "error; then back to 0.25."),
    ("Heads",
     "To finish: which attention heads did the compression change? The compressed rows look like the dense one; "
     "the sparse-only and low-rank-only rows do not."),
]


def tour() -> None:
    """A ten-minute guided tour for teaching, each step a link to its page. The first step says how
    long its compression takes on this machine (the estimate the form shows), not a fixed promise."""
    with st.expander("Guided tour for teaching: compress MiniLM and look inside, in ten minutes",
                     icon=":material/tour:"):
        est = time_estimate("minilm-l6", "oats", OatsConfig(compression=0.5, rank_ratio=0.25), None, True, "encoder")
        for i, (title, text) in enumerate(TOUR, start=1):
            c1, c2 = st.columns([1, 4])
            page = navigation.page(title)
            c1.page_link(page.file, label=f"{i}. {title}", icon=page.icon)
            c2.markdown(text.replace("{minilm_time}", esc(est.text)))


tour()
new_compression()
progress()
st.divider()
saved_runs()
st.divider()
summary()
