"""A run's report: one self-contained HTML file (``oats report RUN``, the app's "Write report").

The file opens from disk with no server and no network: Plotly's JavaScript is inlined from the
installed ``plotly`` package (never a CDN), and a Content-Security-Policy in the page refuses
every fetch (no ``http:`` image, font, script or XHR can load even if a figure names one). It
holds the run's settings (only those its method reads, as the Compress page summarises them),
its evaluation (every variant the run has, per domain, with the text it was measured on), the
per-layer table, a few standard figures, the figures the user pinned while exploring, and the
commands that reproduce the run.

Pins live in the run folder (``<run>/report/pins/<name>.json``: Plotly JSON in a small
wrapper), so the CLI's report has them too. A run folder may come from someone else: every
string from it is HTML-escaped, every pin is read as an untrusted file (size cap, strict JSON,
trace types that fetch nothing, images only as ``data:`` URIs), and a damaged pin is one line in
the report, never a crash.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from oats import corpora, untrusted
from oats.errors import RunError
from oats.evaluation import primary_metric
from oats.explain import quality
from oats.methods import registry
from oats.runs.evaluations import read_evaluation
from oats.runs.folders import atomic_write_bytes, write_error
from oats.runs.info import RunInfo
from oats.explain.runs import sweep_evaluation
from oats.runner.sweep import load_meta, load_results
from oats.models.zoo import PRESETS
from oats.runner.request import request_from_manifest

REPORT_DIR = "report"
PINS_DIR = "pins"
REPORT_FILE = "report.html"
PIN_FORMAT = 1
MAX_PIN_BYTES = 16 * 1024**2
"""A pinned figure is the Plotly JSON of one chart: heat maps are pooled to at most a few
hundred thousand cells (a few MB); anything larger is not one of ours."""
MAX_PINS = 64
"""Pins read into one report at most (the newest first); the others are named as left out."""
SAFE_TRACES = frozenset({"bar", "scatter", "scattergl", "heatmap", "histogram", "histogram2d", "box", "violin",
                         "contour", "image", "pie", "table", "funnel", "waterfall"})
"""Trace types a pin may hold: those that draw from their own data. Map and geo traces fetch
tiles or topology from the network, so a pin holding one is refused."""
VARIANT_NAMES = {"dense": "dense", "sparse": "sparse only", "lowrank": "low-rank only"}
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'")
"""Nothing from outside the file: inline scripts and styles (Plotly's own), images only as data
URIs. ``unsafe-eval``: Plotly.js compiles a few functions at run time (no fetch)."""


# ----------------------------------------------------------------------------- pins


@dataclass(frozen=True)
class Pin:
    """One pinned figure: its file name, the chart's key, title, when it was pinned, the figure."""

    name: str
    key: str
    title: str
    created: str
    figure: dict
    run_created: str | None = None
    """The ``created`` stamp of the run it was pinned on: a folder compressed again (--overwrite)
    is another run, and its report leaves the old run's pins out."""


def pins_folder(run_folder: str | Path) -> Path:
    return Path(run_folder) / REPORT_DIR / PINS_DIR


def plain_name(text: str, limit: int = 60) -> str:
    """``text`` as part of a file name: letters, digits, '_', '.', '-' only, no leading dot."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:limit].strip("._") or "chart"


def pin_name(key: str, title: str = "") -> str:
    """The file stem of a chart's pin: its key in plain characters plus a short hash of key and
    title, so a chart drawn for two layers (same key, another title) gives two pins."""
    plain = plain_name(key)
    digest = hashlib.sha1(f"{key}\0{title}".encode("utf-8", "replace")).hexdigest()[:10]
    return f"{plain}-{digest}"


def _checked_pins_folder(run_folder: str | Path, create: bool) -> Path:
    """The pins folder, refused (RunError) when a link in the run folder leads it elsewhere."""
    folder = pins_folder(run_folder)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        untrusted.inside(run_folder, folder)
    except untrusted.BadFile as e:
        raise RunError(f"the run's report folder cannot be used ({e}): delete '{folder.parent}'") from None
    except OSError as e:
        raise (write_error(e, folder, "choose a runs folder you can write to") or
               RunError(f"'{folder}' cannot be made ({e.strerror or type(e).__name__})")) from None
    return folder


def save_pin(run_folder: str | Path, key: str, title: str, figure_json: str) -> str:
    """Keep a figure (its Plotly JSON text) as a pin of the run; returns the pin's name.
    RunError (one line) when it is too large or the run folder cannot be written."""
    if len(figure_json.encode("utf-8", "replace")) > MAX_PIN_BYTES:
        raise RunError(f"this figure is over the {MAX_PIN_BYTES // 1024**2} MB a pin may hold: pin a smaller view")
    name = pin_name(key, title)
    body = json.dumps({"format": PIN_FORMAT, "key": str(key), "title": str(title),
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_created": _run_created(run_folder)}
                      )[:-1] + ', "figure": ' + figure_json + "}"
    folder = _checked_pins_folder(run_folder, create=True)
    atomic_write_bytes(folder / f"{name}.json", body.encode("utf-8", "replace"), then="pin it again")
    return name


def _run_created(run_folder: str | Path) -> str | None:
    try:
        return RunInfo.read(run_folder).created or None
    except RunError:
        return None


def remove_pin(run_folder: str | Path, name: str) -> None:
    """Unpin: delete the pin file ``name`` (a plain name only; one already gone is fine)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)) or name.startswith("."):
        return
    path = pins_folder(run_folder) / f"{name}.json"
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RunError(f"the pin '{path}' could not be removed ({e.strerror or type(e).__name__})") from None


def is_pinned(run_folder: str | Path, key: str, title: str = "") -> bool:
    try:
        return (pins_folder(run_folder) / f"{pin_name(key, title)}.json").is_file()
    except OSError:
        return False


def _clean_figure(fig) -> dict:
    """A pin's figure checked: {"data": [traces of SAFE_TRACES], "layout": {...}} that Plotly's
    own validation accepts, layout images only as data URIs; BadFile (the reason) otherwise."""
    import plotly.graph_objects as go
    if not isinstance(fig, dict) or not isinstance(fig.get("data", []), list) or \
            not isinstance(fig.get("layout", {}), dict):
        raise untrusted.BadFile("it is not a Plotly figure")
    for trace in fig.get("data", []):
        kind = trace.get("type", "scatter") if isinstance(trace, dict) else None
        if kind not in SAFE_TRACES:
            raise untrusted.BadFile(f"it holds a trace of type {str(kind)[:40]!r}, which a report does not draw")
        if kind == "image" and not str(trace.get("source", "data:")).startswith("data:"):
            raise untrusted.BadFile("its image trace names a file outside the report")
    layout = dict(fig.get("layout", {}))
    if isinstance(layout.get("images"), list):
        layout["images"] = [i for i in layout["images"] if isinstance(i, dict) and
                            str(i.get("source", "")).startswith("data:")]
    layout.pop("template", None)  # Plotly's default template is what the page draws anyway
    try:
        checked = go.Figure({"data": fig.get("data", []), "layout": layout})
    except (ValueError, TypeError) as e:
        raise untrusted.BadFile(f"Plotly refuses it ({' '.join(str(e).split())[:100]})") from None
    return json.loads(checked.to_json())


def read_pin(path: Path) -> Pin:
    """One pin file, read as untrusted (BadFile with the reason when it cannot be drawn)."""
    body = untrusted.read_json(path, max_bytes=MAX_PIN_BYTES)
    if not isinstance(body, dict) or body.get("format") != PIN_FORMAT:
        raise untrusted.BadFile("it is not a pin this oats writes")
    return Pin(name=path.stem, key=str(body.get("key", ""))[:200], title=str(body.get("title", ""))[:500],
               created=str(body.get("created", ""))[:40], figure=_clean_figure(body.get("figure")),
               run_created=body["run_created"] if isinstance(body.get("run_created"), str) else None)


def pin_files(run_folder: str | Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime_ns) of each pin file: cheap (no file is opened), the cache key of a listing."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in
                            os.scandir(pins_folder(run_folder)) if e.name.endswith(".json")))[:MAX_PINS]
    except OSError:
        return ()


def read_pins(run_folder: str | Path) -> tuple[list[Pin], list[str]]:
    """(the run's pins, oldest first; one line per pin file that could not be read)."""
    folder = pins_folder(run_folder)
    try:
        if not folder.is_dir():
            return [], []
        untrusted.inside(run_folder, folder)
        files = sorted((p for p in folder.iterdir() if p.suffix == ".json"), key=lambda p: p.name)
    except (OSError, untrusted.BadFile) as e:
        return [], [f"the pinned figures in '{folder}' could not be listed ({e})"]
    pins, problems = [], []
    if len(files) > MAX_PINS:
        problems.append(f"{len(files) - MAX_PINS} more pin files left out (a report draws at most {MAX_PINS})")
        files = files[:MAX_PINS]
    for path in files:
        try:
            pins.append(read_pin(path))
        except (OSError, untrusted.BadFile, RecursionError) as e:
            problems.append(f"pin '{path.name}' could not be read ({str(e) or type(e).__name__}): unpin it or pin again")
    pins.sort(key=lambda p: (p.created, p.name))
    current = _run_created(run_folder)
    old = [p for p in pins if p.run_created and current and p.run_created != current]
    if old:
        problems.append(f"{len(old)} pin{'s' * (len(old) > 1)} left out: pinned on an earlier run in this folder "
                        f"(made {old[0].run_created}; this run was made {current}): pin the figures again")
    return [p for p in pins if all(p is not o for o in old)], problems


# ----------------------------------------------------------------------------- what the report says


def variant_names(info: RunInfo) -> dict[str, str]:
    """The variants the run has (``registry.run_variants``), its compressed one named after its terms."""
    return {m: registry.terms(info.method, info.config) if m == "both" else VARIANT_NAMES.get(m, m)
            for m in registry.run_variants(info)}


def settings_rows(info: RunInfo) -> list[tuple[str, str]]:
    """(label, value) of the run's settings: the ones its method reads (as the Compress page's
    summary names them), then what it was calibrated on and what it made."""
    cfg, record = info.config, registry.find(info.method)
    rows = [("model", info.model_name), ("method", info.method + (f": {record.description}" if record else "")),
            ("compression ρ", f"{cfg.compression:g} (effective {info.effective_compression:.3f})"),
            ("sparsity pattern", str(cfg.sparsity))]
    if record is None or record.uses_rank_ratio:
        rows.append(("rank ratio κ", f"{info.rank_ratio:g}"))
    if record is None or record.iterative:
        rows.append(("solver", f"{cfg.solver}, ≤ {cfg.iterations} iterations"))
    if record is not None and record.uses_shrink:
        rows.append(("Gram shrinkage λ", f"{record.shrink(cfg):g}"))
    if info.allocation:
        rows.append(("allocation", json.dumps(info.allocation, sort_keys=True)[:300]))
    rows.append(("calibrated on", info.calibrated_on()))
    kept = f"{info.params_kept / 1e6:.2f} M of {info.params_dense / 1e6:.2f} M" if info.params_dense else "?"
    rows += [("block-linear parameters kept", kept),
             ("matrices / blocks", f"{len(info.layers)} / {len(info.blocks)}")]
    errs = sorted(l.scaled_error for l in info.layers)
    if errs:
        rows.append(("median scaled error", f"{errs[len(errs) // 2]:.4f}"))
    total = info.timings.get("total_s")
    if isinstance(total, (int, float)):
        rows.append(("compression time", f"{total:.1f} s"))
    rows += [("created", info.created or "?"), ("status", info.status)]
    if info.budget_note:
        rows.append(("how it spends the budget", info.budget_note))
    return rows


def run_evaluation(folder: str | Path, info: RunInfo, read=read_evaluation) -> dict | None:
    """The run's saved evaluation (``evaluation.json``, through ``read``: the app passes its
    cached reader), else its row of the sweep that made it (with that sweep's evaluation
    settings); {"results", "settings" (a dict or None), "quick", "created"} or None."""
    ev = read(folder)
    if ev is not None:
        settings = ev.get("settings")
        return {**ev, "settings": settings if isinstance(settings, dict) else None}
    if not info.sweep:
        return None
    try:
        res = sweep_evaluation(load_results(info.sweep), Path(folder).name)
        meta = load_meta(info.sweep)
    except Exception:  # noqa: BLE001 - a sweep table that cannot be read only means no evaluation to show
        return None
    if not res:
        return None
    settings = meta.get("evaluation") if isinstance(meta, dict) else None
    return {"results": res, "quick": bool(meta.get("quick")), "settings": settings if isinstance(settings, dict)
            else None, "created": f"from sweep '{Path(str(info.sweep)).name}'"}


def primary(info: RunInfo, results: dict) -> tuple[str, bool] | None:
    """(primary metric, higher is better): the run's task's, else the one among the results."""
    task = info.task if isinstance(info.task, str) else getattr(PRESETS.get(info.model_name), "task", None)
    keys = [k for v in results.values() for k in v]
    own = primary_metric(task)
    return own if own and own[0] in keys else quality.primary_of(keys)


def evaluation_table(results: dict, names: dict[str, str], metric: str | None) -> tuple[list[str], list[list]]:
    """(column titles, rows): a row per variant the run has, the primary metric's mean, its value
    on each domain, then the other metrics' means (the Compress page's table)."""
    keys = [k for m in results.values() for k in m]
    doms = quality.domains_of(results.values(), metric) if metric else []
    cols = quality.shown_metrics(keys, metric) if metric else list(dict.fromkeys(keys))
    head = ["variant", "mode"] + [quality.column_label(c, bool(doms) and c == metric) for c in cols]
    rows = [[names[mode], mode] + [vals.get(c) for c in cols] for mode, vals in results.items() if mode in names]
    return head, rows


def measured_on(info: RunInfo, ev: dict, metric: str | None) -> str:
    """The sentence under the evaluation: the text it holds for, its size and how means are taken."""
    doms = quality.domains_of(ev["results"].values(), metric) if metric else []
    task = info.task if isinstance(info.task, str) else None
    size = quality.size_note(ev.get("settings"))
    parts = [("Quick evaluation set" if ev.get("quick") else "Evaluation set") + f" ({ev.get('created', '?')}), "
             f"measured on {quality.describe(ev.get('settings'), doms, task)}"]
    parts += [size] if size else []
    parts += [quality.mean_note(metric)] if metric and doms else []
    return "; ".join(parts) + ". Fidelity metrics compare each variant with the dense model on held-out data."


LAYER_COLUMNS = ("layer", "kind", "shape", "rank", "nonzeros", "parameters", "scaled error", "output error",
                 "iterations", "time (s)")


def layer_rows(info: RunInfo) -> list[list]:
    """The per-layer table of the Compress page: one row per matrix."""
    return [[l.qualname, l.kind, "×".join(map(str, l.shape)), l.rank, l.nnz, l.params, l.scaled_error,
             l.output_error, l.iterations, l.time_s] for l in info.layers]


def _number(x: float) -> str:
    return repr(float(x)) if float(x) != int(x) or abs(x) >= 1e15 else str(int(x))


def reproduce_commands(folder: str | Path, info: RunInfo, ev: dict | None) -> list[str]:
    """The shell commands that make this run again (its model, method and the settings the method
    reads, its calibration) and evaluate it; every value quoted for a POSIX shell."""
    cfg, record = info.config, registry.find(info.method)
    out = Path(folder).name or "run"
    args = ["oats", "compress", info.model_name, "--method", info.method, "--compression", _number(cfg.compression),
            "--sparsity", str(cfg.sparsity)]
    if record is None or record.uses_rank_ratio:
        args += ["--rank-ratio", _number(cfg.rank_ratio)]
    if record is None or record.iterative:
        args += ["--iterations", str(cfg.iterations), "--solver", str(cfg.solver)]
    if record is not None and record.uses_shrink and cfg.shrink is not None:
        args += ["--shrink", _number(cfg.shrink)]
    try:
        req = request_from_manifest(info.to_manifest())
    except Exception:  # noqa: BLE001 - an old or odd manifest: the command without its calibration details
        req = None
    if req is not None:
        if req.calib_source:
            args += ["--calib-source", str(req.calib_source)]
        elif req.calib_domain:
            args += ["--calib-domain", str(req.calib_domain)]
        args += ["--calib-samples", str(req.calib_samples)] if req.calib_samples else []
        args += ["--seq-len", str(req.seq_len)] if req.seq_len else []
        args += ["--seed", str(req.seed)] if req.seed else []
        if req.allocation is not None:
            args += ["--allocation", "owl", "--owl-lambda", _number(req.allocation.lam),
                     "--owl-m", _number(req.allocation.threshold)]
    args += ["--out", out]
    evaluate = ["oats", "evaluate", out] + (["--quick"] if ev and ev.get("quick") else [])
    return [shlex.join(args), shlex.join(evaluate)]


# ----------------------------------------------------------------------------- figures


def _plain(text) -> str:
    """A string from the run as Plotly shows it literally (Plotly reads a subset of HTML)."""
    return html.escape(str(text), quote=False)


def standard_figures(info: RunInfo, ev: dict | None, names: dict[str, str], metric: tuple[str, bool] | None) -> list:
    """The figures every report has: the evaluation (mean and per domain, when evaluated), the
    per-layer error overview and the output error along depth."""
    import plotly.graph_objects as go
    figs = []
    if ev is not None and metric is not None:
        key, higher = metric
        shown = {m: v for m, v in ev["results"].items() if m in names and key in v}
        if shown:
            fig = go.Figure(go.Bar(x=[_plain(names[m]) for m in shown], y=[v[key] for v in shown.values()],
                                   text=[quality.fmt(v[key]) for v in shown.values()], textposition="outside"))
            label = quality.column_label(key, False)
            figs.append(_log_if_spread(_titled(
                fig, f"Evaluation: {label} ({'higher' if higher else 'lower'} is better)"
                + (", mean over the domains" if quality.domains_of(shown.values(), key) else ""), "variant", label),
                [v[key] for v in shown.values()], label))
        doms = quality.domains_of(shown.values(), key)
        if doms:
            fig = go.Figure([go.Bar(name=_plain(names[m]), x=[_plain(corpora.title(d)) for d in doms],
                                    y=[v.get(f"{key}@{d}") for d in doms]) for m, v in shown.items()])
            figs.append(_log_if_spread(_titled(fig, f"Evaluation per domain: {label}", "held-out domain", label),
                                       [v.get(f"{key}@{d}") for v in shown.values() for d in doms], label))
    if info.layers:
        x = [_plain(l.qualname) for l in info.layers]
        fig = go.Figure([go.Bar(name="scaled error ‖(W − W′) D‖ / ‖W D‖", x=x, y=[l.scaled_error for l in info.layers]),
                         go.Bar(name="output error ‖X (W − W′)ᵀ‖ / ‖X Wᵀ‖", x=x,
                                y=[l.output_error for l in info.layers])])
        fig.update_xaxes(type="category")
        figs.append(_titled(fig, "Error per layer (calibration inputs)", "layer (block.name)", "relative error"))
    if info.blocks:
        blocks = sorted(info.blocks, key=lambda b: b.index)
        fig = go.Figure(go.Scatter(x=[b.index for b in blocks], y=[b.output_error for b in blocks],
                                   mode="lines+markers", name="block output error"))
        figs.append(_titled(fig, "Block output error along depth (calibration inputs)", "block (depth)",
                            "‖block′(x) − block(x)‖ / ‖block(x)‖"))
    return [json.loads(f.to_json()) for f in figs]


def _log_if_spread(fig, values, label: str):
    """A log y axis when the values span orders of magnitude (``quality.log_range``)."""
    span = quality.log_range(values)
    if span is not None:
        fig.update_yaxes(type="log", title_text=_plain(f"{label}, log scale"), dtick=1, tickformat="~g", range=span)
    return fig


def _titled(fig, title: str, x: str, y: str):
    fig.update_layout(title=dict(text=_plain(title), x=0.0, xanchor="left"), height=400, barmode="group",
                      margin=dict(l=70, r=30, t=60, b=90), legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title_text=_plain(x))
    fig.update_yaxes(title_text=_plain(y))
    return fig


# ----------------------------------------------------------------------------- HTML


def _e(value) -> str:
    """Any value from the run as HTML text: escaped, never markup."""
    return html.escape(str(value), quote=True)


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return _e(quality.fmt(v))
    return _e(v)


def _table(head: list[str], rows: list[list], cls: str = "") -> str:
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows]
    return "\n".join(out) + "</tbody></table>"


def _script_json(obj) -> str:
    """JSON for inside a <script> element: no "</script>", "<!--" or line separators can end it."""
    text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    for a, b in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                 ("\u2029", "\\u2029")):
        text = text.replace(a, b)
    return text


def _figure_div(fig: dict, index: int) -> str:
    return (f'<div class="figure" id="figure-{index}"></div>\n<script>Plotly.newPlot("figure-{index}", '
            f'{_script_json(fig.get("data", []))}, {_script_json(fig.get("layout", {}))}, '
            '{"displaylogo": false, "responsive": true});</script>')


STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}table{border-collapse:
collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:
#f4f4f4}.settings th{width:16em}.figure{margin:1em 0}
pre{background:#f6f6f6;padding:.8em;overflow:auto;white-space:pre-wrap}.problem{color:#a00}.note{color:#555}"""


def _evaluation_html(info: RunInfo, ev: dict | None, names: dict[str, str], metric) -> str:
    if ev is None:
        return ('<p class="note">Not evaluated yet: run the <code>oats evaluate</code> command below, or press '
                "Evaluate on the app's Compress page.</p>")
    key = metric[0] if metric else None
    head, rows = evaluation_table(ev["results"], names, key)
    out = [f"<p>Variants: {_e(' vs '.join(names.values()))}"
           + (f"; {_e(quality.column_label(key, False))}: {'higher' if metric[1] else 'lower'} is better"
              if metric else "") + ".</p>",
           _table(head, rows, "evaluation"), f'<p class="note">{_e(measured_on(info, ev, key))}</p>']
    every = quality.ordered_metrics([k for m in ev["results"].values() for k in m], key)
    if len(every) > len(head) - 2:
        full = [[names[m], m] + [v.get(c) for c in every] for m, v in ev["results"].items() if m in names]
        titles = [quality.column_label(c, False) for c in every]
        out.append("<details><summary>Every metric, per domain</summary>"
                   + _table(["variant", "mode"] + titles, full, "evaluation-all") + "</details>")
    return "\n".join(out)


def build_report(run_folder: str | Path) -> str:
    """The report of a run folder as one HTML document (RunError, one line, for a missing or
    damaged run)."""
    import plotly.offline
    folder = Path(run_folder)
    info = RunInfo.read(folder)
    names = variant_names(info)
    ev = run_evaluation(folder, info)
    metric = primary(info, ev["results"]) if ev else None
    pins, problems = read_pins(folder)
    figs = standard_figures(info, ev, names, metric)
    n = len(figs)
    body = [f"<h1>Report: {_e(folder.name)}</h1>",
            f'<p class="note">Written {_e(time.strftime("%Y-%m-%d %H:%M"))} by oats from the run folder '
            f"{_e(folder)}. Self-contained: it opens offline, with no server.</p>",
            "<h2>Settings</h2>", '<table class="settings"><tbody>'
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in settings_rows(info)) + "</tbody></table>",
            "<h2>Evaluation</h2>", _evaluation_html(info, ev, names, metric),
            "<h2>Figures</h2>", *(_figure_div(f, i) for i, f in enumerate(figs)),
            "<h2>Pinned figures</h2>"]
    if not pins:
        body.append('<p class="note">No figure pinned: tick "Pin to report" under a chart in the app.</p>')
    for i, pin in enumerate(pins, start=n):
        body += [f'<h3 class="pin">{_e(pin.title or pin.key)}</h3>',
                 f'<p class="note">chart {_e(pin.key)}, pinned {_e(pin.created)}</p>', _figure_div(pin.figure, i)]
    body += [f'<p class="problem">{_e(p)}</p>' for p in problems]
    body += ["<h2>Per layer</h2>", _table(list(LAYER_COLUMNS), layer_rows(info), "layers"),
             "<h2>Reproduce</h2>", "<p>Compress the same model with the same settings, then evaluate it:</p>",
             '<pre class="reproduce">' + _e("\n".join(reproduce_commands(folder, info, ev))) + "</pre>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
            '<meta name="referrer" content="no-referrer">'
            f"<title>Report: {_e(folder.name)}</title><style>{STYLE}</style>"
            f"<script>{plotly.offline.get_plotlyjs()}</script></head>\n<body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def default_report_path(run_folder: str | Path) -> Path:
    return Path(run_folder) / REPORT_DIR / REPORT_FILE


def write_report(run_folder: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's report (default ``<run>/report/report.html``) atomically; returns its path."""
    text = build_report(run_folder)
    path = Path(out) if out is not None else default_report_path(run_folder)
    if path.is_dir():  # --out a folder: the report goes in it, named after the run
        path = path / f"{plain_name(Path(run_folder).resolve().name, 120)}-report.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (write_error(e, path.parent, "choose another --out") or
               RunError(f"'{path.parent}' cannot be made ({e.strerror or type(e).__name__}): choose another --out")) from None
    atomic_write_bytes(path, text.encode("utf-8"), then="choose another --out")
    return path
