"""Dashboard speed on a synthetic run, in real headless Chromium, next to the shared Plotly baseline.

    python benchmarks/bench_dashboard.py                 # 100k (hidden 576) and 1M, both renderers, the baseline
    python benchmarks/bench_dashboard.py --sizes 100000 --renderers webgl --no-baseline

For each size: writes a synthetic run (dashboard.synthetic); for each renderer of the Map page
(``plotly``: the Plotly map, which samples 200k points above 200k; ``webgl``: every point,
assets/mapgl.js, with the backend the browser picks, the CPU where WebGL is software as on these
machines; ``webgl-gpu``: the same with its WebGL2 backend forced, ``glbackend=gpu``) starts `llm-maps serve` in its own process, waits until
/api/health says it is ready (the run loaded), opens /map in Chromium with software WebGL (the
baseline's flags) and measures
  first paint     navigation start -> the frame after the map holds every (or the sampled) point
                  (the figure comes with the page layout); bytes of the layout and callbacks
  points payload  the per-point arrays the browser fetches once after the first paint (runs up to
                  200k points): bytes and when they had arrived
  recolour        choose another colour in the UI (the click event on the option, the menu opened 0.3 s
                  before) -> frame after the new colours are drawn (in the
                  browser: one Plotly.update with typed arrays; for larger runs a server figure);
                  server requests, server time (request start -> first byte) and bytes
  filter          untick "train" (the click event) -> frame after only the test points are drawn; same fields
                  (the WebGL map: also *_call_ms, from the page's own call for the view, its click
                  listener or Dash's callback, to the same frame: the clock the baseline's restyle
                  has, which starts at the Plotly.restyle call)
  click floor     the same click clock on a page whose click changes one colour and nothing else
                  (FLOOR_PAGE, a fresh browser each repetition): no click -> frame can be shorter
  memory          resident memory of the web process after these (the WebGL map: and a click on a
                  point, its drill-down)
(the WebGL map: first paint when every point is drawn, recolour and filter when the new colours
or rows are drawn, clocked in the page as the baseline clocks itself: measure_webgl), and runs
/work/shared/bench/plotly_baseline.py (plain Plotly HTML) for the same size: repetition by
repetition, each in a fresh browser, so that the load of a shared machine falls on all alike. Then
prints ratios (ours / baseline) and issue 31's table (WebGL map, its forced WebGL2 backend, Plotly
map and plain Plotly side by side). Each figure is the median over --reps repetitions (3). Needs
playwright (pip) and chromium (apt); no `playwright install`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from dashboard import figures as F  # noqa: E402 - after the repository is on the path
from dashboard.synthetic import write_synthetic_run  # noqa: E402
BASELINE = Path(os.environ.get("LLM_MAPS_BASELINE", "/work/shared/bench/plotly_baseline.py"))
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu-sandbox", "--use-gl=angle", "--use-angle=swiftshader"]
GD = "document.querySelector('#map-graph .js-plotly-plot')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int) -> subprocess.Popen:
    import urllib.request

    # --no-worker: the embedded job worker would be starting up (imports, CPU) while the page loads
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", str(run), "--port", str(port), "--no-worker",
                             "--prefix", "/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    for _ in range(600):
        try:  # ready: listening, and the run a first visit opens is loaded (503 while warming)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=60).read()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("server exited")
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


class Traffic:
    """Server time and bytes of the Dash callback responses seen since ``reset()``."""

    def __init__(self, page):
        self.items = []
        page.on("requestfinished", self._done)

    def _done(self, request):
        if any(k in request.url for k in ("_dash-update-component", "_dash-layout", "/_llm_maps/")):
            t = request.timing
            try:
                resp = request.response()
                size = len(resp.body()) if resp and resp.status == 200 else 0
            except Exception:  # noqa: BLE001 - the page went away first
                return
            self.items.append({"server_ms": t["responseStart"] - t["requestStart"], "bytes": size})

    def reset(self):
        self.items = []

    def summary(self):
        return {"server_ms": round(max((i["server_ms"] for i in self.items), default=0), 1),
                "bytes": sum(i["bytes"] for i in self.items), "requests": len(self.items)}


# The clock of a UI change starts at the browser's click event (its timeStamp: when the browser
# made it, before any listener of the page ran), not at the test driver's call (Playwright's own
# checks before it clicks take 50-150 ms of no concern to the page).
CLICK_CLOCK = "() => { window.__clickAt = null; window.addEventListener('click', " \
              "(e) => { window.__clickAt = e.timeStamp; }, {capture: true, once: true}); }"


# A person opens the colour menu, reads it, then clicks an option: the clock starts at that click,
# with the menu open and drawn (the menu's own opening work, ~100 ms of Dash's dropdown in these
# browsers, would otherwise land in the recolour of a click made the instant it opens).
MENU_SETTLE_MS = 300


def open_colour_menu(page) -> None:
    page.click("#map-colour")
    page.wait_for_timeout(MENU_SETTLE_MS)


def frame_after(page, condition: str, timeout=600_000) -> float:
    page.wait_for_function(f"() => {condition}", polling="raf", timeout=timeout)
    return page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))")


def measure(pw, chromium: str, url: str, n_expected: int, n_test: int, sampled: bool) -> dict:
    browser = pw.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
    try:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        traffic = Traffic(page)
        page.goto(url, wait_until="commit", timeout=600_000)
        painted = frame_after(page, f"{GD} && {GD}._fullData && {GD}._fullData[0] && {GD}._fullData[0]._length === {n_expected}")
        out = {"first_paint_ms": round(painted, 1), "first_paint_payload_bytes": traffic.summary()["bytes"]}
        if not sampled:  # the browser fetches the run's arrays once, after the first paint
            run = url.split("run=")[1].split("&")[0]
            got = page.evaluate("async (run) => { const P = await window.llmMapsState.payloads[run]; "
                                "return [P.bytes, performance.now()]; }", run)
            out["points_payload_bytes"], out["points_loaded_ms"] = got[0], round(got[1], 1)
        page.wait_for_timeout(1500)
        t0 = page.evaluate("() => performance.now()")
        responsive = page.evaluate("() => performance.now()") - t0
        out["main_thread_probe_ms"] = round(responsive, 1)
        # recolour by task (41-50 categories) through the UI
        traffic.reset()
        open_colour_menu(page)
        page.evaluate(CLICK_CLOCK)
        page.get_by_role("option", name="task", exact=True).click()
        t0 = page.evaluate("() => window.__clickAt")
        t1 = frame_after(page, f"{GD}._fullLayout.legend.title.text === 'task'")
        page.wait_for_timeout(300)
        out["recolour_ms"] = round(t1 - t0, 1)
        out["recolour_server"] = traffic.summary()
        # filter: only test points
        traffic.reset()
        page.evaluate(f"() => {{ window.__prevTrace = {GD}._fullData[0]; }}")
        page.evaluate(CLICK_CLOCK)
        page.get_by_label("train", exact=True).uncheck()
        t0 = page.evaluate("() => window.__clickAt")
        # a sampled view keeps drawing MAX_POINTS points: wait for the new figure itself
        cond = (f"{GD}._fullData[0]._length === {n_test}" if not sampled
                else f"{GD}._fullData[0] !== window.__prevTrace && {GD}._fullData[0]._length <= {n_test} && "
                     f"{GD}._fullLayout.legend.title.text === 'task'")
        t1 = frame_after(page, cond)
        page.wait_for_timeout(300)
        out["filter_ms"] = round(t1 - t0, 1)
        out["filter_server"] = traffic.summary()
        return out
    finally:
        browser.close()


# The click clock's floor: the same browser, flags and Playwright click on a page whose click only
# changes one colour. Playwright clicks just after a frame (its checks wait for animation frames),
# so the first frame after a click comes ~12 ms later and the frame after it another 16.7 ms on:
# no page's click -> frame can be shorter than this.
FLOOR_PAGE = ("<div role=listbox><div id=opt role=option aria-selected=false style='width:240px;height:40px'>task</div>"
              "</div><script>document.getElementById('opt').addEventListener('click', (e) => { const t = e.timeStamp;"
              " e.currentTarget.style.background = e.currentTarget.style.background ? '' : '#1f77b4';"
              " requestAnimationFrame(() => requestAnimationFrame(() => { window.__floor.push(performance.now() - t); }));"
              " }); window.__floor = [];</script>")


def measure_floor(pw, chromium: str, clicks: int = 5) -> float:
    """Click -> the frame after the next one on FLOOR_PAGE (ms): the median of ``clicks`` clicks."""
    browser = pw.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
    try:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.set_content(FLOOR_PAGE)
        for i in range(clicks):
            page.wait_for_timeout(MENU_SETTLE_MS)
            page.get_by_role("option", name="task", exact=True).click()
            page.wait_for_function(f"() => window.__floor.length === {i + 1}")
        return round(statistics.median(page.evaluate("() => window.__floor")), 1)
    finally:
        browser.close()


def median_of(reps: list[dict]) -> dict:
    """Each number the median over the repetitions (nested dicts too); anything else from the first."""
    out = {}
    for key, first in reps[0].items():
        if isinstance(first, dict):
            out[key] = median_of([r[key] for r in reps])
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            out[key] = round(statistics.median(r[key] for r in reps), 1)
        else:
            out[key] = first
    return out


def run_baseline(sizes, chromium, reps: int) -> dict:
    if not BASELINE.exists():
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        subprocess.run([sys.executable, str(BASELINE), *map(str, sizes), "--reps", str(reps), "--chromium", chromium,
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        return {int(k): v for k, v in json.loads(out.read_text()).items()}


# renderer=plotly, renderer=webgl (its backend chosen by the browser: the CPU where WebGL is software,
# as here), and renderer=webgl with its WebGL2 backend forced (glbackend=gpu: SwiftShader here)
RENDERERS = ("plotly", "webgl", "webgl-gpu")
GL = "window.llmMapGL && window.llmMapGL.state.last"


def measure_webgl(pw, chromium: str, url: str, n_expected: int, n_test: int, rss=None) -> dict:
    """The WebGL map (renderer=webgl): first paint (every point), recolour and filter, clocked in the
    page as the plain Plotly baseline clocks itself: to two animation frames after the draw
    (``presented``), from navigation start or from the click event; with one difference that can
    only make ours slower: the draw is waited for (``__llmSyncDraw``: a one-pixel read makes a
    software GPU finish it; animation frames do not wait for SwiftShader). ``*_cdp_ms``: the same
    moment as this script's other figures see it (the condition polled from here, then two frames)."""
    browser = pw.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
    try:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.add_init_script("window.__llmSyncDraw = true;")
        traffic = Traffic(page)
        page.goto(url, wait_until="commit", timeout=600_000)
        cdp = frame_after(page, f"{GL} && {GL}.m === {n_expected} && {GL}.presented")
        last = page.evaluate(f"() => {GL}")
        out = {"first_paint_ms": round(last["presented"], 1), "first_paint_cdp_ms": round(cdp, 1),
               "first_paint_payload_bytes": traffic.summary()["bytes"], "points_drawn": last["m"],
               "backend": last["backend"], "draw_ms": last["ms"]}
        page.wait_for_timeout(1500)
        for name, act, cond in (
                ("recolour", lambda: (open_colour_menu(page), page.evaluate(CLICK_CLOCK),
                                      page.get_by_role("option", name="task", exact=True).click()),
                 f"{GL}.legendTitle === 'task'"),
                ("filter", lambda: (page.evaluate(CLICK_CLOCK), page.get_by_label("train", exact=True).uncheck()),
                 f"{GL}.m === {n_test} && {GL}.legendTitle === 'task'")):
            traffic.reset()
            act()
            cdp = frame_after(page, f"{cond} && {GL}.presented")
            got = page.evaluate(f"() => [window.__clickAt, {GL}.presented, {GL}.ms, {GL}.called]")
            page.wait_for_timeout(300)
            out[f"{name}_ms"] = round(got[1] - got[0], 1)
            out[f"{name}_dash_ms"] = round(got[3] - got[0], 1)  # click -> the page's code is asked for the view
            # the baseline's own clock: from the page's call (Plotly.restyle there, the page's listener
            # or callback here) to the same two frames after; the click's own wait for a frame left out
            out[f"{name}_call_ms"] = round(got[1] - got[3], 1)
            out[f"{name}_cdp_ms"] = round(cdp - got[0], 1)
            out[f"{name}_draw_ms"] = got[2]
            out[f"{name}_server"] = traffic.summary()
        # a click on a drawn point: its drill-down (the web process's memory is measured before it, as
        # the issue measured it, and after it)
        if rss is not None:
            out["web_rss_mb_before_click"] = round(rss(), 1)
        traffic.reset()
        xy = page.evaluate("() => window.llmMapGL.pixel(window.llmMapGL.state.rows[0])")
        page.mouse.click(xy[0], xy[1])
        page.wait_for_selector("#drill-panel-content", timeout=600_000)
        out["click_server"] = traffic.summary()
        return out
    finally:
        browser.close()


def _url(port: int, run: Path, renderer: str) -> str:
    return (f"http://127.0.0.1:{port}/map?run={run.name}&renderer={renderer.split('-')[0]}"
            + ("&glbackend=gpu" if renderer == "webgl-gpu" else ""))


def bench_size(pw, args, tmp: Path, n: int) -> tuple[dict, dict]:
    """One synthetic run of ``n`` points, measured with each renderer, each in its own server (so
    each renderer's web process memory is its own), and the plain Plotly page: repetition by
    repetition, each in a fresh browser, so that the load of a shared machine falls on all of
    them alike. Returns (ours by renderer, the baseline)."""
    t = time.time()
    hidden = args.hidden if n <= 200_000 else 16  # the map never reads encodings
    run = write_synthetic_run(tmp / f"synthetic_{n}", n, hidden=hidden, layers=(30,), n_tasks=48)
    n_test = int((pd.read_parquet(run / "examples.parquet", columns=["split"])["split"] == "test").sum())
    write_s = time.time() - t
    servers, reps, base, floors = {}, {r: [] for r in args.renderers}, [], []
    try:
        for renderer in args.renderers:
            t = time.time()
            port = free_port()
            servers[renderer] = (start_server(run, port), port, round(time.time() - t, 1))
        for _ in range(args.reps):
            for renderer in args.renderers:
                url = _url(servers[renderer][1], run, renderer)
                pid = servers[renderer][0].pid
                reps[renderer].append(measure_webgl(pw, args.chromium, url, n, n_test, lambda: rss_mb(pid))
                                      if renderer.startswith("webgl")
                                      else measure(pw, args.chromium, url, min(n, F.MAX_POINTS),
                                                   min(n_test, F.MAX_POINTS), n > F.MAX_POINTS))
            floors.append(measure_floor(pw, args.chromium))
            if not args.no_baseline:
                base += [b for b in [run_baseline([n], args.chromium, 1).get(n)] if b]
        out = {}
        for renderer, got in reps.items():
            res = median_of(got)
            res["first_paint_ms_each"] = [r["first_paint_ms"] for r in got]
            res["click_floor_ms"] = round(statistics.median(floors), 1)
            sampled = not renderer.startswith("webgl") and n > F.MAX_POINTS
            res.update(renderer=renderer, points=n, drawn=min(n, F.MAX_POINTS) if sampled else n, sampled=sampled,
                       hidden=hidden, write_run_s=round(write_s, 1), server_start_s=servers[renderer][2],
                       web_rss_mb=round(rss_mb(servers[renderer][0].pid), 1))
            out[renderer] = res
            print(json.dumps({"dashboard": res}), flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    return out, ({**median_of(base), "reps": len(base)} if base else {})


ISSUE_WEB_MEMORY_MB = 1180.0  # the web process at 1M points when issue 31 was written (the Plotly map)


def _s(ms: float | None) -> str:
    if ms is None:
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 100 else f"{ms:.0f} ms"


def issue_table(results: dict, base: dict) -> str:
    """The table of issue 31: the WebGL map next to the Plotly map and the plain Plotly page, all
    measured in this run; "ratio" is WebGL over what the aim compares with."""
    def get(n, renderer, key):
        return (results.get(n) or {}).get(renderer, {}).get(key)

    def restyle(n):
        b = base.get(n) or {}
        vals = [b[k] for k in ("recolour_strings_ms", "recolour_numeric_ms") if b.get(k) is not None]
        return min(vals) if vals else None

    b100, b1m = base.get(100_000) or {}, base.get(1_000_000) or {}
    rows = [  # figure, aim, key, size, plain Plotly, reference of the aim (ms), aim as a ratio of it
        ("100k first paint", "≤ 0.5× plain Plotly", "first_paint_ms", 100_000, b100.get("first_paint_ms"),
         b100.get("first_paint_ms"), 0.5),
        ("100k recolour (click → frame)", "≤ 0.1× Plotly restyle", "recolour_ms", 100_000, restyle(100_000),
         restyle(100_000), 0.1),
        ("100k filter (click → frame)", "≤ 0.1× Plotly restyle", "filter_ms", 100_000, restyle(100_000),
         restyle(100_000), 0.1),
        ("click → frame on an empty page (the clock's floor)", "(no aim)", "click_floor_ms", 100_000, None,
         restyle(100_000), None),
        ("100k recolour, call → frame (the restyle's own clock)", "(no aim)", "recolour_call_ms", 100_000, None,
         restyle(100_000), None),
        ("1M first paint, every point", "≤ plain Plotly at 100k", "first_paint_ms", 1_000_000, b1m.get("first_paint_ms"),
         b100.get("first_paint_ms"), 1.0),
        ("1M recolour", "≤ 0.3 s", "recolour_ms", 1_000_000, restyle(1_000_000), 300.0, 1.0),
        ("1M filter", "(no aim)", "filter_ms", 1_000_000, None, None, None),
    ]
    lines = ["| figure | aim | WebGL map | ratio | met | its WebGL2 backend (forced) | Plotly map (sampled above 200k) "
             "| plain Plotly |", "|---|---|---|---|---|---|---|---|"]
    for name, aim, key, n, plain, ref, goal in rows:
        gl = get(n, "webgl", key)
        ratio = gl / ref if gl is not None and ref else None
        met = "—" if ratio is None or goal is None else ("yes" if ratio <= goal else "no")
        # the clock's floor is the same for every renderer: once, in the first column
        others = ("—", "—") if key == "click_floor_ms" else (_s(get(n, "webgl-gpu", key)), _s(get(n, "plotly", key)))
        lines.append(f"| {name} | {aim} | {_s(gl)} | {'—' if ratio is None else f'{ratio:.3f}'} | {met} | "
                     f"{others[0]} | {others[1]} | {_s(plain)} |")
    # the aim's reference: the issue's 1.18 GB (the Plotly map's memory then, after first paint,
    # recolour and filter); then the same after a click on a point too (no aim: the issue's
    # process did not click; its click added 0.66 GB)
    for key, name, goal in (("web_rss_mb_before_click", "web process memory at 1M", "≤ 0.5× the issue's 1.18 GB"),
                            ("web_rss_mb", "the same after a click on a point too", "(no aim)")):
        mem = {r: get(1_000_000, r, key) or (get(1_000_000, r, "web_rss_mb") if r == "plotly" else None)
               for r in RENDERERS}
        if mem["webgl"] is None:
            continue
        ratio = mem["webgl"] / ISSUE_WEB_MEMORY_MB
        gb = {r: "—" if v is None else f"{v / 1024:.2f} GB" for r, v in mem.items()}
        met = ("yes" if ratio <= 0.5 else "no") if goal.startswith("≤") else "—"
        lines.append(f"| {name} | {goal} | {gb['webgl']} | {ratio:.3f} | {met} | {gb['webgl-gpu']} | "
                     f"{gb['plotly']}{' (now)' if mem['plotly'] else ''} | — |")
    return "\n".join(lines)


def write_atlas(run: Path, tokens: int, seed: int = 0) -> None:
    """Give a synthetic run with a token map (write_synthetic_run(token_map=True)) an atlas of
    ``tokens`` tokens spread over its token map (tokens.parquet and the manifest's count)."""
    import numpy as np

    from llm_maps.runfolder import EXAMPLES, MANIFEST, write_json_atomic, write_parquet_atomic

    ex = pd.read_parquet(run / EXAMPLES, columns=["example_id", "split", "x_tokens", "y_tokens"])
    rng = np.random.default_rng(seed)
    rows = rng.choice(np.flatnonzero(ex["split"].to_numpy() == "train"), tokens)
    write_parquet_atomic(run / "tokens.parquet", pd.DataFrame({
        "row": rows.astype(np.int64), "example_id": ex["example_id"].to_numpy()[rows],
        "position": np.zeros(tokens, dtype=np.int64), "token_id": np.arange(tokens, dtype=np.int64),
        "token_text": np.full(tokens, "tok"),
        "x": ex["x_tokens"].to_numpy()[rows] + rng.normal(0, 0.3, tokens),
        "y": ex["y_tokens"].to_numpy()[rows] + rng.normal(0, 0.3, tokens)}))
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["token_atlas"].update(tokens=tokens, examples=int(len(set(rows.tolist()))))
    write_json_atomic(run / MANIFEST, manifest)


def bench_atlas(pw, args, tmp: Path, examples: int, tokens: int) -> dict:
    """The token map (view=tokens) of a run of ``examples`` prompts whose atlas holds ``tokens``
    tokens (a 15k-example Dolly run's atlas reaches a million): when every atlas token is drawn
    (from navigation start), and one pan frame with them (prompts and tokens drawn again)."""
    run = write_synthetic_run(tmp / f"atlas_{tokens}", examples, hidden=16, layers=(30,), n_tasks=48, token_map=True)
    write_atlas(run, tokens)
    port = free_port()
    server = start_server(run, port)
    try:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=FLAGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(f"http://127.0.0.1:{port}/map?run={run.name}&view=tokens", wait_until="commit", timeout=600_000)
            state = "window.llmMapGL && window.llmMapGL.state"
            page.wait_for_function(f"() => {state}.atlas && {state}.atlas.m === {tokens} && {state}.atlasKey",
                                   polling="raf", timeout=180_000)
            drawn = page.evaluate("() => performance.now()")
            page.wait_for_timeout(1000)
            pan, frame = page.evaluate(f"""() => {{ const GL = {state}, v = GL.map.view, d = (v.x1 - v.x0) * 0.1;
                const t0 = performance.now();
                GL.map.view = {{x0: v.x0 + d, x1: v.x1 + d, y0: v.y0, y1: v.y1}};
                GL.api.schedule();
                return new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(
                    () => r([performance.now() - t0, GL.atlasFrameMs])))); }}""")
        finally:
            browser.close()
        return {"atlas_tokens": tokens, "examples": examples, "atlas_drawn_ms": round(drawn, 1),
                "pan_two_frames_ms": round(pan, 1), "atlas_frame_ms": frame,
                "web_rss_mb": round(rss_mb(server.pid), 1)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--renderers", nargs="+", choices=RENDERERS, default=list(RENDERERS),
                    help="the Map page's renderers to measure (renderer= in its URL)")
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="fresh browsers per size (here and in the baseline); medians")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--atlas-tokens", type=int, nargs="*", default=[],
                    help="also the token map of a 15k-prompt run with an atlas of this many tokens (e.g. 1000000)")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    results, base = {}, {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        for n in args.sizes:
            results[n], b = bench_size(pw, args, Path(tmp), n)
            if b:
                base[n] = b
                print(json.dumps({"baseline": b}), flush=True)
        for n, b in base.items():
            for renderer, ours in results[n].items():
                ratios = {"first_paint": ours["first_paint_ms"] / b["first_paint_ms"],
                          "recolour_vs_strings": ours["recolour_ms"] / b["recolour_strings_ms"],
                          "recolour_vs_numeric": ours["recolour_ms"] / b["recolour_numeric_ms"],
                          "filter_vs_numeric_restyle": ours["filter_ms"] / b["recolour_numeric_ms"]}
                ours["baseline"] = b
                ours["ratios"] = {k: round(v, 2) for k, v in ratios.items()}
                print(json.dumps({"points": n, "renderer": renderer, "ratios_ours_over_baseline": ours["ratios"]}),
                      flush=True)
        for tokens in args.atlas_tokens:
            results[f"atlas_{tokens}"] = got = bench_atlas(pw, args, Path(tmp), 15_000, tokens)
            print(json.dumps({"token_map": got}), flush=True)
    print(issue_table(results, base), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({str(k): v for k, v in results.items()} | {"baseline": base}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
