"""How fast the app is while it works, in headless Chromium, side by side in one run.

    .venv/bin/python benchmarks/app.py                 # the full benchmark (about 10 minutes)
    .venv/bin/python benchmarks/app.py --sessions 4    # fewer simultaneous viewers

It starts ``streamlit run app.py`` on 127.0.0.1 against a fresh runs folder and measures:

1. **App vs CLI.** minilm-l6 and dinov2-small at the default settings (ρ 0.5, the preset's κ,
   80 iterations, default calibration, no evaluation): wall time of ``oats compress`` (a
   process, as a user runs it) and of the same request from the Compress page, with the page
   open and its progress showing (click to the "compressed" message).
2. **First visits.** For a run of each embedded model (smollm2-135m's made with the CLI at 8
   iterations: the pages' cost does not depend on them), pick the run in the sidebar, then
   open Spectra, Outliers, Error budget and Walkthrough for the first time: seconds to the
   page's first figure, and to the end of its script.
3. **Switching while compressing.** One session compresses dinov2-small again; another
   switches between the pages of the loaded minilm-l6 run: page times (navigation to the
   script's end), p50 / p95 / max, and that compression's time against the CLI's.
4. **A room of viewers.** N sessions at once (default 8), each visiting every page of the
   loaded minilm-l6 run twice while one compression of dinov2-small runs: exception elements
   seen, page times p50 / p95 / max, the compression's time against the CLI's, and the peak
   resident memory of the app process and of the compression process.
5. **A room of remote viewers.** The same visits by N sessions that speak Streamlit's
   websocket protocol without a browser (``RemoteViewer``): the viewers' browsers run on
   their own machines, as in a classroom, so this machine does only the app's work. Page
   times are navigation to the end of the page's script as the server reports it.

Preset conversions are done before anything is timed. Everything is printed as tables at the
end (and written to artifacts/bench-app.json). Needs Chromium at /usr/bin/chromium and the
playwright package (``make test`` installs both requirements' Python side; ``.ci/run``
installs Chromium).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from browser_helpers import CHROMIUM, LAUNCH_ARGS, cpu_seconds, requirements, served_app, wait_idle  # noqa: E402

PAGES = ["Compress", "Spectra", "Outliers", "Error budget", "Walkthrough", "Compare"]
FIRST_VISIT = ["Spectra", "Outliers", "Error budget", "Walkthrough"]
MODELS = ["minilm-l6", "dinov2-small"]


# ----------------------------------------------------------------------------- helpers


def request_for(model: str, iterations: int = 80, samples: int | None = None):
    from oats.config import OatsConfig
    from oats.runner.jobs import CompressRequest
    from oats.models.zoo import PRESETS
    cfg = OatsConfig(compression=0.5, rank_ratio=PRESETS[model].default_rank_ratio, iterations=iterations)
    return CompressRequest(model=model, config=cfg, calib_samples=samples, evaluate=False)


def cli_compress(model: str, out: Path, iterations: int = 80, samples: int | None = None) -> float:
    """Wall seconds of ``oats compress`` as a user runs it (a fresh process)."""
    req = request_for(model, iterations, samples)
    cmd = [sys.executable, "-m", "oats.cli", "compress", model, "--compression", "0.5", "--rank-ratio",
           str(req.config.rank_ratio), "--iterations", str(iterations), "--out", str(out), "--quiet"]
    if samples:
        cmd += ["--calib-samples", str(samples)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def warm_presets(models: list[str]) -> None:
    """Convert the presets into the on-disk cache (once) before anything is timed."""
    code = "import sys\nfrom oats.models.zoo import load_model\nfor m in sys.argv[1:]: load_model(m)"
    subprocess.run([sys.executable, "-c", code, *models], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them (the worker's is a job thread)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _machine_cpu() -> float:
    """CPU seconds the whole machine spent busy (user + nice + system + irq), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Usage:
    """What the app process and its children (the worker) use during a ``with`` block, sampled
    every 0.2 s: CPU seconds of the app, of the workers and of everything else on the machine
    (the browsers, this script), and the peak resident memory of the app and of a worker."""

    def __init__(self, app_pid: int):
        self.app_pid = app_pid

    def _sample(self) -> None:
        for pid in [self.app_pid] + children(self.app_pid):
            try:
                self._cpu[pid] = cpu_seconds(pid)
            except OSError:
                continue
            rss = _rss(pid)
            if pid == self.app_pid:
                self.app_peak_rss = max(self.app_peak_rss, rss)
            else:
                self.worker_peak_rss = max(self.worker_peak_rss, rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.2)

    def __enter__(self):
        self._cpu: dict[int, float] = {}
        self.app_peak_rss = self.worker_peak_rss = 0
        self._start = {pid: cpu_seconds(pid) for pid in [self.app_pid] + children(self.app_pid)}
        self._total0 = _machine_cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.app = self._cpu.get(self.app_pid, 0.0) - self._start.get(self.app_pid, 0.0)
        self.worker = sum(v - self._start.get(p, 0.0) for p, v in self._cpu.items() if p != self.app_pid)
        self.other = _machine_cpu() - self._total0 - self.app - self.worker

    def row(self) -> dict:
        return {"app_cpu_s": self.app, "worker_cpu_s": self.worker, "other_cpu_s": self.other}


# ----------------------------------------------------------------------------- the browser side


# The waits poll inside the page (one predicate, every 100 ms) rather than from here: eight
# sessions polled over the DevTools protocol cost more CPU than the app they measured.
_SETTLED = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return app && app.getAttribute('data-test-script-state') !== 'running'
        && !document.querySelector('[data-testid="stSpinner"]');
}"""

_PAGE_DONE = """(title) => {
    const fresh = [...document.querySelectorAll('[data-testid="stMain"] [data-stale="false"] h1')]
        .some(h => h.textContent.includes(title));
    if (!fresh) return false;
    if (window.__oatsFirst === undefined
        && document.querySelector('[data-testid="stMain"] [data-stale="false"] .js-plotly-plot'))
        window.__oatsFirst = performance.now();
    const app = document.querySelector('[data-testid="stApp"]');
    return app.getAttribute('data-test-script-state') !== 'running'
        && !document.querySelector('[data-testid="stSpinner"]');
}"""


async def settle(page, timeout: float = 300.0) -> None:
    """Until the script has finished and no spinner is left."""
    await page.wait_for_timeout(150)
    await page.wait_for_function(_SETTLED, polling=100, timeout=timeout * 1000)


async def open_app(browser, url: str):
    context = await browser.new_context(viewport={"width": 1440, "height": 1000})
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_selector('[data-testid="stSidebarNav"]', timeout=180_000)
    await settle(page)
    return page


async def visit(page, title: str) -> tuple[float, float | None]:
    """Open page ``title`` from the navigation: (seconds to the end of its script, seconds to its
    first figure or None when it drew none), measured by the page's own clock."""
    t0 = await page.evaluate("() => { window.__oatsFirst = undefined; return performance.now(); }")
    await page.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    await page.wait_for_function(_PAGE_DONE, arg=title, polling=100, timeout=300_000)
    end, first = await page.evaluate("() => [performance.now(), window.__oatsFirst ?? null]")
    return (end - t0) / 1000, (None if first is None else (first - t0) / 1000)


async def pick(page, label: str, option: str) -> None:
    await page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name=label).click()
    await page.get_by_role("option", name=option).first.click()
    await settle(page)


async def fill_form(page, model: str, iterations: int = 80, samples: int = 0) -> None:
    main = page.locator('[data-testid="stMain"]')
    await main.get_by_role("combobox", name="Model").click()
    await page.get_by_role("option", name=model).first.click()
    await settle(page)
    for label, value in (("Iterations", iterations), ("Calibration samples", samples)):
        box = main.get_by_role("spinbutton", name=label)
        if await box.input_value() != str(value):
            await box.fill(str(value))
            await box.press("Enter")
            await settle(page)
    evaluate = main.get_by_role("checkbox", name="Evaluate when done")
    if await evaluate.is_checked():
        await main.get_by_text("Evaluate when done").click()
        await settle(page)


async def compress_in_app(page, model: str, iterations: int = 80, samples: int = 0, shot: Path | None = None) -> float:
    """Click Compress on a filled form; seconds until the page shows the run compressed
    (``shot``: a screenshot of the page once its progress shows a few blocks done)."""
    if await page.locator('[data-testid="stMain"] h1', has_text="Compress a model").count() == 0:
        await visit(page, "Compress")
    await fill_form(page, model, iterations, samples)
    button = page.locator('[data-testid="stMain"] [data-testid="stBaseButton-primary"]', has_text="Compress")
    done = page.locator('[data-testid="stAlertContentSuccess"]', has_text=f"{model}: compressed")
    failed = page.locator('[data-testid="stAlertContentError"]')
    t0 = time.perf_counter()
    await button.click()
    while await done.count():  # the message of an earlier job goes once this one is drawn
        await page.wait_for_timeout(50)
    progress = page.locator('[data-testid="stMain"]').get_by_text(f"Compressing {model}: 3/")
    while True:
        if await done.count():
            return time.perf_counter() - t0
        if shot is not None and await progress.count():
            await page.screenshot(path=str(shot))
            shot = None
        if await failed.count():
            raise RuntimeError(await failed.first.inner_text())
        if time.perf_counter() - t0 > 1200:
            raise TimeoutError(f"{model} did not finish in the app")
        await page.wait_for_timeout(100)


async def exceptions(page) -> int:
    return await page.locator('[data-testid="stException"]').count()


# ----------------------------------------------------------------------------- viewers without a browser


class RemoteViewer:
    """One app session driven through Streamlit's own websocket protocol, the messages a
    browser sends and receives, with no rendering: a viewer whose browser runs on their own
    machine, as in a classroom, costs this machine only what the app does for it.

    ``visit(title)`` asks for a page (a ``rerun_script`` message carrying the page and the
    sidebar's widget values, as the browser's navigation sends it) and returns the seconds
    until the server reports that page's script finished (navigation to the script's end);
    exception elements the script sent are counted. Fragment reruns that a browser on the
    Compress page would ask for every second while a job runs are not sent (each viewer stays
    on that page for a fraction of a second)."""

    def __init__(self, url: str):
        self.url = url.replace("http://", "ws://") + "/_stcore/stream"
        self.pages: dict[str, str] = {}
        self.selectboxes: dict[str, tuple[str, list[str]]] = {}
        self.widgets: dict[str, str] = {}
        self.exceptions = 0
        self.ws = None

    async def open(self) -> "RemoteViewer":
        import websockets
        self.ws = await websockets.connect(self.url, subprotocols=["streamlit"], max_size=None)
        await self._run("")
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def _run(self, page_hash: str) -> float:
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
        msg = BackMsg()
        msg.rerun_script.page_script_hash = page_hash
        for wid, value in self.widgets.items():
            w = msg.rerun_script.widget_states.widgets.add()
            w.id, w.string_value = wid, value
        t0 = time.perf_counter()
        await self.ws.send(msg.SerializeToString())
        while True:
            fm = ForwardMsg()
            fm.ParseFromString(await self.ws.recv())
            kind = fm.WhichOneof("type")
            if kind == "navigation":
                self.pages = {p.page_name: p.page_script_hash for p in fm.navigation.app_pages}
            elif kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                el = fm.delta.new_element
                if el.WhichOneof("type") == "selectbox":
                    self.selectboxes[el.selectbox.label] = (el.selectbox.id, list(el.selectbox.options))
                elif el.WhichOneof("type") == "exception":
                    self.exceptions += 1
            elif kind == "script_finished" and fm.script_finished in (fm.FINISHED_SUCCESSFULLY,
                                                                       fm.FINISHED_WITH_COMPILE_ERROR):
                return time.perf_counter() - t0

    async def pick(self, label: str, starts_with: str) -> None:
        """Choose the sidebar selectbox ``label``'s option that starts with ``starts_with``."""
        wid, options = self.selectboxes[label]
        self.widgets[wid] = next(o for o in options if o.startswith(starts_with))
        await self._run(self.pages.get("Compress", ""))

    async def visit(self, title: str) -> float:
        return await self._run(self.pages[title])


# ----------------------------------------------------------------------------- the benchmark


def idle_chromium(folder: Path) -> str:
    """A launcher that starts Chromium, and so every tab it forks, under the idle scheduling
    policy: it runs on whatever CPU the app and its compression leave. (Plain ``nice`` does not
    hold: Chromium raises its own tabs' priority when it may.)"""
    path = folder / "chromium-idle"
    path.write_text(f'#!/bin/sh\nexec chrt --idle 0 {CHROMIUM} "$@"\n')
    path.chmod(0o755)
    return str(path)


async def run_benchmark(url: str, runs: Path, pid: int, cli: dict[str, float], sessions: int,
                        smol_run: str | None, room_only: bool = False, chromium: str = CHROMIUM) -> dict:
    from playwright.async_api import async_playwright

    out: dict = {"cli_s": cli}
    names = {m: request_for(m).folder_name() for m in MODELS}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=LAUNCH_ARGS)
        try:
            a = await open_app(browser, url)
            wait_idle(pid)  # a user takes longer than the app's start-up to fill the form
            if not room_only:
                # 1. app vs CLI, the page open with its progress showing
                app_s = {}
                for model in MODELS:
                    app_s[model] = await compress_in_app(a, model, shot=ROOT / "artifacts" / f"bench-app-{model}.png")
                    print(f"  app {model}: {app_s[model]:.1f} s (CLI {cli[model]:.1f} s)", flush=True)
                out["app_s"] = app_s

                # 2. first visits after picking a run
                if smol_run:
                    names["smollm2-135m"] = smol_run
                first: dict = {}
                for model, name in names.items():
                    page = await open_app(browser, url)
                    await pick(page, "Model", model)
                    await pick(page, "Run", name)
                    first[model] = {}
                    for title in FIRST_VISIT:
                        end, fig = await visit(page, title)
                        first[model][title] = {"first_figure_s": fig, "script_end_s": end}
                        assert await exceptions(page) == 0, f"{model} {title}: exception element"
                    print(f"  first visits {model}: " + ", ".join(
                        f"{t} {v['first_figure_s']:.2f}/{v['script_end_s']:.2f} s" for t, v in first[model].items()),
                        flush=True)
                    await page.context.close()
                out["first_visit"] = first

            # the pages' session: the minilm-l6 run, every page visited once (everything cached)
            viewer = await open_app(browser, url)
            await pick(viewer, "Model", "minilm-l6")
            await pick(viewer, "Run", names["minilm-l6"])
            for title in PAGES:
                await visit(viewer, title)

            async def again(model: str) -> float:
                shutil.rmtree(runs / request_for(model).folder_name())
                return await compress_in_app(a, model)

            # 3. switching pages while a compression runs
            switch: list[float] = []
            w0 = time.time()
            with Usage(pid) as cpu:
                task = asyncio.create_task(again("dinov2-small"))
                while not task.done():
                    for title in PAGES:
                        if task.done():
                            break
                        switch.append((await visit(viewer, title))[0])
                await task
            out["switch_while_compressing"] = {"times": switch, "compression_s": task.result(), **cpu.row(),
                                               "window": (w0, time.time())}
            print(f"  switching while compressing: {len(switch)} switches, p95 {pct(switch, 0.95):.2f} s; "
                  f"compression {task.result():.1f} s", flush=True)

            # 4. a room of viewers
            viewers = [viewer] + [await open_app(browser, url) for _ in range(sessions - 1)]
            for v in viewers[1:]:
                await pick(v, "Model", "minilm-l6")
                await pick(v, "Run", names["minilm-l6"])
            times: list[float] = []
            seen_exc = 0

            async def walk(v) -> None:
                nonlocal seen_exc
                for _ in range(2):
                    for title in PAGES:
                        times.append((await visit(v, title))[0])
                        seen_exc += await exceptions(v)

            w0 = time.time()
            with Usage(pid) as cpu:
                task = asyncio.create_task(again("dinov2-small"))
                await asyncio.gather(*(walk(v) for v in viewers))
                room_compression = await task
            out["room"] = {"sessions": sessions, "times": times, "exceptions": seen_exc,
                           "compression_s": room_compression, "app_peak_rss": cpu.app_peak_rss,
                           "worker_peak_rss": cpu.worker_peak_rss, **cpu.row(), "window": (w0, time.time())}
            print(f"  {sessions} sessions: {len(times)} page visits, p95 {pct(times, 0.95):.2f} s, "
                  f"{seen_exc} exceptions; compression {room_compression:.1f} s", flush=True)
            for v in viewers[1:]:  # their tabs close: part 5 has this machine to the app
                await v.context.close()

            # 5. a room of viewers whose browsers are elsewhere (this script stands in for their
            # network clients: back to the normal policy, so that it answers at once)
            if os.sched_getscheduler(0) == os.SCHED_IDLE:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            remote = [await RemoteViewer(url).open() for _ in range(sessions)]
            for v in remote:
                await v.pick("Model", "minilm-l6")
                await v.pick("Run", names["minilm-l6"] + " ")
            r_times: list[float] = []

            async def walk_remote(v) -> None:
                for _ in range(2):
                    for title in PAGES:
                        r_times.append(await v.visit(title))

            w0 = time.time()
            with Usage(pid) as cpu:
                task = asyncio.create_task(again("dinov2-small"))
                await asyncio.gather(*(walk_remote(v) for v in remote))
                remote_compression = await task
            out["remote_room"] = {"sessions": sessions, "times": r_times,
                                  "exceptions": sum(v.exceptions for v in remote),
                                  "compression_s": remote_compression, "app_peak_rss": cpu.app_peak_rss,
                                  "worker_peak_rss": cpu.worker_peak_rss, **cpu.row(), "window": (w0, time.time())}
            for v in remote:
                await v.close()
            print(f"  {sessions} remote viewers: {len(r_times)} page visits, p95 {pct(r_times, 0.95):.2f} s, "
                  f"{out['remote_room']['exceptions']} exceptions; compression {remote_compression:.1f} s", flush=True)
        finally:
            await browser.close()
    return out


def report(r: dict) -> str:
    lines = []
    if "app_s" in r:
        lines += ["", "App vs CLI (same request, one run of each, this machine)", "",
                  "| model | oats compress s | app s | ratio |", "|---|---|---|---|"]
        for m in MODELS:
            lines.append(f"| {m} | {r['cli_s'][m]:.1f} | {r['app_s'][m]:.1f} | {r['app_s'][m] / r['cli_s'][m]:.2f} |")
        lines += ["", "First visit after picking a run: seconds to the first figure / to the end of the script", "",
                  "| model | " + " | ".join(FIRST_VISIT) + " |", "|---" * (len(FIRST_VISIT) + 1) + "|"]
    for m, pages in r.get("first_visit", {}).items():
        cells = [f"{v['first_figure_s']:.2f} / {v['script_end_s']:.2f}" if v["first_figure_s"] is not None
                 else f"– / {v['script_end_s']:.2f}" for v in pages.values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    sw, room, rr = r["switch_while_compressing"], r["room"], r.get("remote_room")
    dino = r["cli_s"]["dinov2-small"]
    lines += ["", "While dinov2-small compresses in the app (CLI: %.1f s; browser sessions: %s priority)"
              % (dino, r.get("browsers", "equal")), "",
              "| situation | page visits | p50 s | p95 s | max s | exceptions | compression s | vs CLI |",
              "|---|---|---|---|---|---|---|---|",
              f"| one viewer switching pages | {len(sw['times'])} | {pct(sw['times'], .5):.2f} | "
              f"{pct(sw['times'], .95):.2f} | {max(sw['times']):.2f} | 0 | {sw['compression_s']:.1f} | "
              f"{sw['compression_s'] / dino:.2f} |",
              f"| {room['sessions']} sessions, every page twice | {len(room['times'])} | {pct(room['times'], .5):.2f} | "
              f"{pct(room['times'], .95):.2f} | {max(room['times']):.2f} | {room['exceptions']} | "
              f"{room['compression_s']:.1f} | {room['compression_s'] / dino:.2f} |",
              *([f"| {rr['sessions']} remote viewers (no browser here), every page twice | {len(rr['times'])} | "
                 f"{pct(rr['times'], .5):.2f} | {pct(rr['times'], .95):.2f} | {max(rr['times']):.2f} | "
                 f"{rr['exceptions']} | {rr['compression_s']:.1f} | {rr['compression_s'] / dino:.2f} |"] if rr else []),
              "", "The app's own part of those page visits (seconds its server spent on each script run, "
                  "from $OATS_PAGE_TIMINGS; the rest of a page time is the browser, on this same machine):", "",
              f"- one viewer: {len(sw['server_s'])} runs, p50 {pct(sw['server_s'], .5):.2f}, "
              f"p95 {pct(sw['server_s'], .95):.2f}, max {max(sw['server_s'], default=float('nan')):.2f}",
              f"- {room['sessions']} sessions: {len(room['server_s'])} runs, p50 {pct(room['server_s'], .5):.2f}, "
              f"p95 {pct(room['server_s'], .95):.2f}, max {max(room['server_s'], default=float('nan')):.2f}",
              "", "CPU seconds used meanwhile (app process / compression process / everything else: the browser "
                  "sessions and this script)", "",
              f"- one viewer: {sw['app_cpu_s']:.1f} / {sw['worker_cpu_s']:.1f} / {sw['other_cpu_s']:.1f}",
              f"- {room['sessions']} sessions: {room['app_cpu_s']:.1f} / {room['worker_cpu_s']:.1f} / "
              f"{room['other_cpu_s']:.1f}",
              "", f"Peak resident memory during the {room['sessions']} sessions: app process "
                  f"{room['app_peak_rss'] / 2**30:.2f} GB, compression process {room['worker_peak_rss'] / 2**30:.2f} GB"]
    if rr:
        lines += ["", f"The {rr['sessions']} remote viewers (Streamlit's websocket protocol, no rendering on this "
                      f"machine): app process / compression process / everything else CPU s "
                      f"{rr['app_cpu_s']:.1f} / {rr['worker_cpu_s']:.1f} / {rr['other_cpu_s']:.1f}; server time per "
                      f"script run p50 {pct(rr['server_s'], .5):.2f}, p95 {pct(rr['server_s'], .95):.2f} s; peak "
                      f"resident memory: app process {rr['app_peak_rss'] / 2**30:.2f} GB, compression process "
                      f"{rr['worker_peak_rss'] / 2**30:.2f} GB"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=8, help="simultaneous browser sessions in part 4")
    ap.add_argument("--no-smollm2", action="store_true", help="skip smollm2-135m's first visits")
    ap.add_argument("--browsers", choices=("idle", "equal"), default="idle",
                    help="idle (default): the browser sessions, which stand in for the viewers' own machines, "
                         "and this script run under the idle scheduling policy, on the CPU the app leaves; "
                         "equal: they compete with the app for this machine's two cores as equals")
    ap.add_argument("--room-only", action="store_true",
                    help="only parts 3 and 4 (the runs they view are made with the CLI first)")
    args = ap.parse_args()
    from oats.resources import machine_line  # after --help: it loads torch
    print(machine_line(), flush=True)  # every figure below was measured on this machine
    why = requirements()
    if why:
        print(f"benchmarks/app.py: {why}", file=sys.stderr)
        return 2
    from oats.models.zoo import preset_available
    models = MODELS + ([] if args.no_smollm2 or not preset_available("smollm2-135m")[0] else ["smollm2-135m"])
    print(f"torch threads: {os.cpu_count()} cores; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}",
          flush=True)
    print("converting presets (not timed) ...", flush=True)
    warm_presets(models)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="oats-bench-app-"))
    runs = work / "runs"
    runs.mkdir()
    try:
        cli = {}
        for m in MODELS:
            cli[m] = cli_compress(m, work / f"cli-{m}")
            print(f"  oats compress {m}: {cli[m]:.1f} s", flush=True)
            if args.room_only:  # the run the app would have made
                shutil.copytree(work / f"cli-{m}", runs / request_for(m).folder_name())
        smol = None
        if "smollm2-135m" in models and not args.room_only:
            smol = "smollm2-135m-cli-it8"
            cli_compress("smollm2-135m", runs / smol, iterations=8)
        timings = work / "script-times.jsonl"
        with served_app(runs, work / "streamlit.log", with_pid=True, env={"OATS_PAGE_TIMINGS": str(timings)}) \
                as (url, pid):
            chromium = CHROMIUM
            if args.browsers == "idle":  # the app (started above) keeps the normal policy
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
                chromium = idle_chromium(work)
            result = asyncio.run(run_benchmark(url, runs, pid, cli, args.sessions, smol, args.room_only, chromium))
        script_times = [json.loads(line) for line in timings.read_text().splitlines()] if timings.exists() else []
        for part in ("switch_while_compressing", "room", "remote_room"):
            if part not in result:
                continue
            a, b = result[part]["window"]
            result[part]["server_s"] = [t["s"] for t in script_times if a <= t["end"] <= b and t["page"] in PAGES]
        result["browsers"] = args.browsers
        text = report(result)
        print(text)
        dest = ROOT / "artifacts"
        dest.mkdir(exist_ok=True)
        (dest / "bench-app.json").write_text(json.dumps(result, indent=1))
        (dest / "bench-app.md").write_text(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
