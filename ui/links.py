"""A link for every view: the run, the page, the layer and each page's main settings in the URL.

The one place that decides what a link holds: ``COMMON`` (every page) and ``PAGES`` (per page,
keyed by the page's title in app.py) name the session-state keys that go into the URL and how their
values are written and read. app.py calls, around ``nav.run()``:

* ``restore_run`` then, after the sidebar, ``restore_page`` — on the first script run of a
  session only (a link opened, or a reload): each URL parameter whose key is not set yet is
  checked and put into ``st.session_state``, where the page's widget finds it. Later runs never
  restore: Streamlit clears the query string on a page switch, and keys that hold a run path
  (``wt-rho-{path}``) are per run on purpose, so a new run starts at its own settings.
* ``write`` before and after the page: the current values back into ``st.query_params`` (before,
  because a page that calls ``st.stop()`` ends the script; after, for what the page set).

URL values are untrusted. A value that does not parse, is out of a slider's range, names a run
not in this runs folder or a layer not in the run is dropped, and one ``st.info`` line says so.
Select boxes and radios fall back to their default by themselves for a value not among their
options (Streamlit 1.67 does so silently, checked in tests/test_links.py); sliders raise, so
their ranges are here. A widget that still raises on a linked value is a last resort of
``guard``: the linked values are dropped and the page drawn again with its defaults.

Why not Streamlit's own ``bind="query-params"``: it needs an edit at every widget, names the
parameter after the key (several keys hold a run's folder path), and cannot hold the run or
layer, which are plain session keys shared by all pages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import streamlit as st

from ui.state import complete_runs, LAYER_KEY, run_info, RUN_KEY
from ui.text import FIGURE_HOOKS, esc

PRESENT_KEY = "present"
RESTORED_KEY = "_links_restored"   # set once the first run of a session has read the URL
REJECTED_KEY = "_links_rejected"   # what the link asked for and did not get, shown once
MAX_TEXT = 400                     # the app's text boxes take at most 400 characters
FONT_SCALE = 1.45                  # presentation mode: figure fonts, and Streamlit's root font size
HEIGHT_SCALE = 1.3                 # presentation mode: figure heights
NOTE_SCALE = 1.2                   # presentation mode: annotations (subplot titles sit side by side)


@dataclass(frozen=True)
class Link:
    """One URL parameter: ``param`` in the URL, ``key`` in session state ("{path}" stands for the
    current run's folder path, as the pages build such keys); ``kind`` says how it is written and
    read: run or sweep (a folder name for a run's or sweep's path), layer, bool, int, float or str; ``lo``/``hi`` a
    number's range; ``read`` a widget key whose value is newer than ``key``'s (the layer picker
    copies its choice into LAYER_KEY only while the page runs)."""

    param: str
    key: str
    kind: str = "str"
    lo: float | None = None
    hi: float | None = None
    read: str | None = None

    def session_key(self, path: str | None) -> str:
        return self.key.replace("{path}", path or "")


LAYER = Link("layer", LAYER_KEY, "layer", read="layer_pick")
COMMON = [Link("run", RUN_KEY, "run"), Link("present", PRESENT_KEY, "bool")]
PAGES: dict[str, list[Link]] = {
    "Compress": [],
    "Spectra": [LAYER, Link("esd", "esd-on", "bool")],
    "Outliers": [LAYER, Link("threshold", "outlier-threshold", "float", 2.0, 50.0),
                 Link("massive", "massive-on", "bool"), Link("photo", "massive-photo"),
                 Link("sample", "massive-sample"), Link("text", "massive-text"),
                 Link("block", "massive-block", "int", 0, 10_000), Link("k", "massive-k", "int", 0, 64),
                 Link("how", "massive-how")],
    "Error budget": [],
    "Walkthrough": [LAYER, Link("rho", "wt-rho-{path}", "float", 0.05, 0.95),
                    Link("kappa", "wt-kappa-{path}", "float", 0.0, 0.9)],
    "Heads": [Link("layer", "heads_layer_{path}", "int", 0, 10_000), Link("head", "heads_head_{path}", "int", 0, 10_000),
              Link("mode", "heads_focus_mode_{path}"), Link("vs", "heads_other_{path}", "run"),
              Link("photo", "heads_photo"), Link("text", "heads_text")],
    "ViT attention": [Link("image", "vit_source"), Link("photo", "vit_photo"), Link("fusion", "vit_fusion"),
            Link("discard", "vit_discard", "float", 0.0, 0.9), Link("topk", "vit_topk", "int", 1, 50),
            Link("view", "vit_layer_view"), Link("second", "vit_second"), Link("steps", "vit_steps", "int", 1, 1024)],
    "Compare": [Link("sweep", "sweep-pick", "sweep"), Link("domain", "sweep-domain"), Link("rate", "sweep-rank-rate", "float", 0.0, 1.0)],
    "Calibration": [Link("method", "calibration-method")],
    "Deploy": [],
}


def page_name(page) -> str:
    """The table's name of a StreamlitPage: its title (the URL path of the default page is "")."""
    return page.title


def links_of(page) -> list[Link]:
    return COMMON[:1] + PAGES.get(page_name(page), []) + COMMON[1:]


# ----------------------------------------------------------------------------- values <-> text


def _runs_by_name() -> dict[str, str]:
    return {Path(r["path"]).name: r["path"] for r in complete_runs()}


def _layers(path: str | None) -> list[str] | None:
    if not path:
        return None
    try:
        return [r.qualname for r in run_info(path).layers]
    except Exception:  # noqa: BLE001 - a run whose manifest cannot be read: the layer picker decides
        return None


def parse(link: Link, raw: str, path: str | None = None):
    """The session value of a URL text, or ValueError with why it is not one."""
    raw = raw.strip()
    if len(raw) > MAX_TEXT or any(ord(c) < 32 for c in raw):
        raise ValueError("not a value this page takes")
    if link.kind == "bool":
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("not 0 or 1")
    if link.kind in ("int", "float"):
        try:
            value = int(raw) if link.kind == "int" else float(raw)
        except ValueError:
            raise ValueError("not a number") from None
        if not math.isfinite(value) or (link.lo is not None and value < link.lo) or \
                (link.hi is not None and value > link.hi):
            raise ValueError(f"outside {link.lo:g}…{link.hi:g}")
        return value
    if link.kind == "run":
        runs = _runs_by_name()
        if raw not in runs:
            raise ValueError("no such run in this runs folder")
        return runs[raw]
    if link.kind == "sweep":  # the Compare page's options are the sweep folders' paths
        from oats.runner.sweep import list_sweeps
        found = [p for p in list_sweeps() if p.name == raw]
        if not found:
            raise ValueError("no such sweep in this runs folder")
        return found[0]
    if link.kind == "layer":
        layers = _layers(path)
        if layers is not None and raw not in layers:
            raise ValueError("not a layer of this run")
    return raw


def text(link: Link, value) -> str | None:
    """The URL text of a session value, or None for one the URL does not hold."""
    if value is None or isinstance(value, (list, tuple, dict, set)):
        return None
    if link.kind == "bool":
        return "1" if value else "0"
    if link.kind == "float" and isinstance(value, (int, float)):
        return f"{value:g}"
    if link.kind in ("run", "sweep"):
        return Path(str(value)).name
    return str(value)


# ----------------------------------------------------------------------------- URL -> session


def _restore(links: list[Link], path: str | None) -> None:
    params = st.query_params.to_dict()
    rejected = st.session_state.setdefault(REJECTED_KEY, [])
    restored = st.session_state.setdefault("_links_keys", [])
    for link in links:
        raw = params.get(link.param)
        key = link.session_key(path)
        if raw is None or key in st.session_state or (link.read and link.read in st.session_state):
            continue
        try:
            st.session_state[key] = parse(link, raw, path)
            restored.append(key)
        except ValueError as e:
            rejected.append(f"{link.param} '{esc(raw, 60)}' ({e})")


def restore_run() -> None:
    """Before the sidebar, on a session's first run: the run (and presentation mode) of the URL."""
    if st.session_state.get(RESTORED_KEY):
        return
    _restore(COMMON, None)


def restore_page(page) -> None:
    """After the sidebar, on a session's first run: the page's own settings of the URL, checked
    against the run the sidebar settled on; then one line about what could not be used."""
    if st.session_state.get(RESTORED_KEY):
        return
    st.session_state[RESTORED_KEY] = True
    _restore(PAGES.get(page_name(page), []), st.session_state.get(RUN_KEY))
    rejected = st.session_state.pop(REJECTED_KEY, [])
    if rejected:
        st.info("This link asked for " + "; ".join(rejected) + ": showing the defaults instead.",
                icon=":material/link_off:")


def guard(page) -> None:
    """``page.run()``; should a widget still refuse a value the link gave it (a page whose
    ranges changed since this table was written), the linked values are dropped and the page
    drawn again with its defaults, with one line saying so, instead of an exception."""
    keys = st.session_state.pop("_links_keys", None) or []
    try:
        page.run()
    except Exception as e:  # noqa: BLE001 - re-raised unless a linked value may be the cause
        if not keys:
            raise
        for key in keys:
            st.session_state.pop(key, None)
        st.session_state[REJECTED_KEY] = [f"settings this page could not take ({esc(type(e).__name__)})"]
        st.session_state[RESTORED_KEY] = False  # the next run says so, and restores nothing more
        try:
            st.query_params.clear()
        except Exception:  # noqa: BLE001 - parameters bound to widgets stay
            pass
        st.rerun()


# ----------------------------------------------------------------------------- session -> URL


def params(page) -> dict[str, str]:
    """The current view's URL parameters."""
    path = st.session_state.get(RUN_KEY)
    out = {}
    for link in links_of(page):
        key = link.session_key(path)
        value = st.session_state.get(link.read) if link.read and link.read in st.session_state else None
        value = st.session_state.get(key) if value is None else value
        shown = text(link, value)
        if shown is not None and not (link.kind == "bool" and link.key == PRESENT_KEY and shown == "0"):
            out[link.param] = shown
    return out


KEPT = {"job"}  # pages/home.py's own: the compression this tab started, followed across a reload


def write(page, pages=()) -> str:
    """Put the current view into the URL (sending only what changed); returns the full link
    (``pages``: every page of the app, to find the app's own address in the browser's)."""
    wanted = params(page)
    current = st.query_params.to_dict()
    for k in current:
        if k not in wanted and k not in KEPT:
            try:
                del st.query_params[k]
            except Exception:  # noqa: BLE001 - a parameter bound to a widget is the widget's
                pass
    changed = {k: v for k, v in wanted.items() if current.get(k) != v}
    if changed:
        st.query_params.update(changed)
    return f"{app_url(pages)}/{page.url_path}" + (f"?{urlencode(wanted)}" if wanted else "")


def app_url(pages=()) -> str:
    """The app's address as the browser sees it (``st.context.url``; on the server's first page,
    before st.navigation ran, that still ends in the page's path: cut off here); "" outside a browser."""
    base = (st.context.url or "").rstrip("/")
    tail = base.rsplit("/", 1)[-1]
    if "/" in base.split("://", 1)[-1] and tail in {p.url_path for p in pages if p.url_path}:
        base = base[: -len(tail) - 1]
    return base


# ----------------------------------------------------------------------------- sidebar, presentation


def sidebar_tools():
    """The presentation toggle and a slot for the link, at the bottom of the sidebar; returns the slot."""
    with st.sidebar:
        st.toggle("Presentation mode", key=PRESENT_KEY,
                  help="Larger text and figures, for a projector. Kept in the link.")
        return st.empty()


def show_link(slot, url: str) -> None:
    """The view's full URL in a code block (its copy button copies it)."""
    with slot.container():
        st.caption("Link to this view: opening it (or reloading) brings back the run, page, layer and "
                   "settings. The button at its right copies it.")
        st.code(url, language=None, wrap_lines=True)


PRESENT_CSS = f"""<style>
html {{ font-size: {16 * FONT_SCALE:.0f}px; }}
[data-testid="stMainBlockContainer"] {{ max-width: 100%; padding-left: 2rem; padding-right: 2rem; }}
</style>"""


def presentation() -> None:
    """Larger text in presentation mode (Streamlit sizes its text in rem); figures grow in ``presented``."""
    if st.session_state.get(PRESENT_KEY):
        st.html(PRESENT_CSS)


def _font_sizes(obj, path: str = "", in_font: bool = False):
    """(property path, size) of every font size set in a Plotly JSON dict."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else k
            if k == "size" and in_font and isinstance(v, (int, float)):
                yield sub, v
            elif isinstance(v, (dict, list)):
                yield from _font_sizes(v, sub, k.endswith("font"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _font_sizes(v, f"{path}[{i}]", in_font)


def presented(fig):
    """In presentation mode, ``fig`` with every font and its height scaled up (once); a figure hook
    of ``ui.text.plain_figure``, so every chart drawn through ``ui.widgets.chart`` gets it."""
    if not st.session_state.get(PRESENT_KEY) or getattr(fig, "_oats_presented", False):
        return fig
    base_set = fig.layout.font.size is not None
    for path, size in list(_font_sizes(fig.layout.to_plotly_json())):
        fig.layout[path] = size * (NOTE_SCALE if path.startswith("annotations") else FONT_SCALE)
    if not base_set:  # Plotly's default is 12 px
        fig.layout.font.size = 12 * FONT_SCALE
    for trace in fig.data:
        for path, size in list(_font_sizes(trace.to_plotly_json())):
            trace[path] = size * FONT_SCALE
    if fig.layout.height:
        fig.layout.height = round(fig.layout.height * HEIGHT_SCALE)
    if fig.layout.margin.t is not None:  # room for the larger title above subplot titles
        fig.layout.margin.t = round(fig.layout.margin.t * FONT_SCALE)
    fig._oats_presented = True
    return fig


if presented not in FIGURE_HOOKS:
    FIGURE_HOOKS.append(presented)
