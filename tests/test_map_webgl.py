"""The Map page's WebGL renderer (renderer=webgl: assets/mapgl.js, mapgl-ui.js, glscatter.js): the
raw-bytes array endpoints behind the app's auth and prefix, which renderer a page gets, and in real
headless Chromium (software GL, SwiftShader) both of its backends drawing every point with the
colours, legends, filters and drawing order of the Plotly map; hover, click (drill-down and
neighbour lines), box and lasso selection with their summaries, the dark theme, PNG/SVG export,
the density option, your points and paths, the Regions layer, condition outcomes, the renderer
switch and the fall back to Plotly where WebGL2 is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dashboard import figures as F
from dashboard.data import RunRegistry
from dashboard.filters import Filters, filter_mask, selected_rows
from dashboard.points import CLIENT_MAX_POINTS, WEBGL_FROM_POINTS, gl_page_hint, map_mode
from dashboard.synthetic import write_synthetic_run
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser, selection_text

XSS = "<img src=x onerror=alert(1)> & <b>not bold</b>"
N = 240
LAST = "window.llmMapGL && window.llmMapGL.state.last"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gl_runs")
    scored = write_synthetic_run(root / "scored", N, layers=(1, 2), prompts={0: XSS}, seed=1)
    cond = write_synthetic_run(root / "cond", 150, conditions=("direct", "cot"), seed=5)
    return {"root": root, "scored": scored, "cond": cond, "state": root / "state"}


@pytest.fixture(scope="module")
def scored_data(runs):
    return RunRegistry([runs["scored"]]).load("scored")


def _app(runs, **kw):
    from dashboard.app import create_app

    return create_app([runs["scored"], runs["cond"]], [], state_dir=runs["state"], **kw)


# --- without a browser -----------------------------------------------------------------------------

def test_arrays_come_as_raw_bytes_behind_the_apps_auth_and_prefix(runs, scored_data):
    client = _app(runs, auth="ann:pw", prefix="/team/").server.test_client()
    head = {"Authorization": "Basic " + __import__("base64").b64encode(b"ann:pw").decode()}
    assert client.get("/team/_llm_maps/array?run=scored&name=x").status_code == 401
    r = client.get("/team/_llm_maps/array?run=scored&name=x", headers=head)
    assert r.status_code == 200 and r.mimetype == "application/octet-stream"
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-LLM-Maps-Dtype"] == "f4"
    assert np.array_equal(np.frombuffer(r.data, dtype=np.float32), scored_data.x, equal_nan=True)
    r = client.get("/team/_llm_maps/array?run=scored&name=cat_task", headers=head)
    assert np.frombuffer(r.data, dtype=np.uint8).tolist() == scored_data.cats["task"].codes.tolist()
    assert client.get("/team/_llm_maps/array?run=scored&name=prompt", headers=head).status_code == 404
    assert client.get("/team/_llm_maps/array?run=nope&name=x", headers=head).status_code == 404
    hover = client.get("/team/_llm_maps/hover?run=scored", headers=head)
    assert hover.mimetype == "application/json" and hover.json == scored_data.hover.tolist()
    # the page head starts fetching the first frame's arrays when the map is the WebGL one
    page = client.get("/team/map?run=scored&renderer=webgl&colour=task", headers=head).get_data(as_text=True)
    assert 'data-gl="scored" data-gl-arrays="x,y,cat_split,cat_task" data-plen=' in page
    assert "data-gl=" not in client.get("/team/map?run=scored", headers=head).get_data(as_text=True)


def test_the_renderer_a_page_gets():
    big, mid = CLIENT_MAX_POINTS + 1, WEBGL_FROM_POINTS + 1
    assert [map_mode(100, None), map_mode(100, "webgl"), map_mode(100, "plotly")] == ["client", "webgl", "client"]
    assert [map_mode(WEBGL_FROM_POINTS, None), map_mode(mid, None), map_mode(mid, "plotly")] == ["client", "webgl",
                                                                                                "client"]
    assert [map_mode(big, None), map_mode(big, "webgl"), map_mode(big, "plotly")] == ["webgl", "webgl", "server"]
    # a token map with atlas tokens to draw under its prompts: only the WebGL map draws them
    assert [map_mode(100, None, atlas=5), map_mode(100, "plotly", atlas=5)] == ["webgl", "client"]

    class Entry:
        ok, id = True, "big"
        manifest = {"counts": {"examples": big}}

    class Registry:
        def entry(self, run_id):
            return Entry()

    assert gl_page_hint(Registry(), {}) == ("big", ["x", "y", "cat_split"])
    assert gl_page_hint(Registry(), {"renderer": "plotly"}) is None
    assert gl_page_hint(Registry(), {"view": "tokens", "colour": "score"}) == ("big::tokens", ["x", "y", "cat_split", "score"])
    Entry.manifest = {"counts": {"examples": 10}}
    assert gl_page_hint(Registry(), {}) is None and gl_page_hint(Registry(), {"renderer": "webgl"})[0] == "big"
    Entry.manifest = {"counts": {"examples": 10}, "token_atlas": {"tokens": 7}}  # the token map draws its atlas
    assert gl_page_hint(Registry(), {"view": "tokens"})[0] == "big::tokens" and gl_page_hint(Registry(), {}) is None


def test_a_selection_bitmask_decodes_to_its_rows():
    import base64

    mask = np.zeros(21, dtype=bool)
    mask[[0, 5, 20]] = True
    bits = base64.b64encode(np.packbits(mask, bitorder="little").tobytes()).decode()
    assert selected_rows({"bits": bits, "n": 21}, 21).tolist() == [0, 5, 20]
    assert selected_rows({"bits": bits, "n": 20}, 21).tolist() == []  # another run's mask
    assert selected_rows({"bits": "not base64!", "n": 21}, 21).tolist() == []


# --- in the browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(runs):
    require_browser()
    from playwright.sync_api import sync_playwright

    from llm_maps.jobs import PointStore

    store = PointStore(runs["state"])
    store.add("scored", {"id": "p-star", "run": "scored", "instruction": "<b>my</b> question", "x": 0.5, "y": 0.5,
                         "dist_to_train": 0.1})
    store.add("scored", {"id": "p-path", "run": "scored", "instruction": "a generation", "x": -5.0, "y": -5.0,
                         "reference": "prompt", "output": "ok",
                         "tokens": [{"x": -4.0, "y": -4.0, "logprob": -0.1, "text": "o"},
                                    {"x": -3.0, "y": -4.5, "logprob": -2.0, "text": "k"}]})
    app = _app(runs)
    with live_server(app) as url, sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        log = ConsoleLog(page)
        page.callbacks = []  # the Dash callbacks the page asked the server for: their outputs
        page.on("request", lambda r: page.callbacks.append(json.loads(r.post_data or "{}").get("output", ""))
                if "_dash-update-component" in r.url else None)
        page.chromium = chromium
        yield url, page, log
        chromium.close()


def _open(page, url: str, n: int, timeout: int = 30_000) -> dict:
    page.goto(url)
    page.wait_for_function(f"() => {LAST} && {LAST}.m === {n}", timeout=timeout)
    page.wait_for_function("() => !document.querySelector('._dash-loading-callback')", timeout=20_000)
    page.wait_for_timeout(300)
    return page.evaluate("() => window.llmMapGL.drawn()")


def _wait_drawn(page, cond: str, timeout: int = 20_000) -> dict:
    page.wait_for_function(f"() => {LAST} && (() => {{ const d = window.llmMapGL.drawn(); return {cond}; }})()",
                           timeout=timeout)
    return page.evaluate("() => window.llmMapGL.drawn()")


def _mask(data, **kw):
    return np.flatnonzero(filter_mask(data, Filters.make(**kw))).tolist()


def _rgb(colour: str) -> list[int]:
    h = colour.lstrip("#")
    return [int(h[i:i + 2], 16) for i in (0, 2, 4)]


@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_every_point_drawn_recoloured_and_filtered_in_the_browser(browser, scored_data, backend):
    url, page, log = browser
    d = _open(page, f"{url}/map?run=scored&renderer=webgl&glbackend={backend}", N)
    assert page.evaluate("() => window.llmMapGL.backend()") == backend
    order = F.draw_order(scored_data, np.arange(N))  # train rows first: test points drawn above them
    assert d["rows"] == order.tolist() and d["values"] == scored_data.cats["split"].codes[order].tolist()
    assert d["legend"] == ["test", "train"] and d["title"] == f"{N} of {N} examples" and d["size"] == 6
    page.callbacks.clear()
    page.click("#map-colour")
    page.get_by_role("option", name="domain", exact=True).click()
    d = _wait_drawn(page, "d.legendTitle === 'domain'")
    assert d["values"] == scored_data.cats["domain"].codes[order].tolist() and d["legend"] == ["Chollet", "Reasoning"]
    page.get_by_label("train", exact=True).uncheck()
    page.click("#map-domain")
    page.get_by_role("option", name="Reasoning", exact=True).click()
    expect = _mask(scored_data, split=["test"], domain=["Reasoning"])
    d = _wait_drawn(page, f"d.rows.length === {len(expect)}")
    assert d["rows"] == expect and d["values"] == scored_data.cats["domain"].codes[expect].tolist()
    assert d["title"] == f"{len(expect)} of {N} examples"
    page.wait_for_function("() => location.search.includes('domain=Reasoning')")
    assert "renderer=webgl" in page.url and "split=test" in page.url and "colour=domain" in page.url
    assert page.callbacks == []  # recolour and filter never asked the server
    # a continuous colour on another layer: the server's colour scale bounds
    page.click("#map-layer")
    page.get_by_role("option", name="layer 1", exact=True).click()
    page.click("#map-colour")
    page.get_by_role("option", name="distance to train", exact=True).click()
    d = _wait_drawn(page, "d.legendTitle === 'distance to train'")
    spec = F.colour_spec(scored_data, "dist", np.array(expect), scored_data.distances(1))
    assert d["continuous"] and d["values"] == pytest.approx(spec.values.tolist())
    assert (d["lo"], d["hi"]) == pytest.approx((spec.cmin, spec.cmax))
    # text search (the server's bitmask of hits); the point is drawn in its category's colour
    row = next(r for r in expect if r != 0)  # row 0 holds the XSS prompt
    page.fill("#map-search", f"Prompt {row} of")
    page.press("#map-search", "Enter")
    page.get_by_label("train", exact=True).check()
    page.click("#map-colour")
    page.get_by_role("option", name="domain", exact=True).click()
    d = _wait_drawn(page, "d.rows.length === 1 && d.legendTitle === 'domain'")
    assert d["rows"] == [row]
    colour = F.FIXED_COLOURS["domain"][scored_data.frame["domain"].iloc[row]]
    assert page.evaluate(f"() => window.llmMapGL.colourAt({row})")[:3] == _rgb(colour)
    assert log.take() == []


def test_a_click_on_colour_split_or_dim_draws_at_once_and_dash_finds_it_drawn(browser, scored_data):
    """Recolour and filter from the click itself (mapgl.js directChange), then Dash's callback with
    the same view: one draw per click, the same rows and colours as Dash's view, no server call."""
    url, page, log = browser
    _open(page, f"{url}/map?run=scored&renderer=webgl&glbackend=cpu", N)
    order = F.draw_order(scored_data, np.arange(N))
    state = "window.llmMapGL.state"

    def click_then_dash(act, cond):
        seq = page.evaluate(f"() => {state}.seq")
        act()
        d = _wait_drawn(page, cond)
        assert page.evaluate(f"() => {LAST}.direct") is True  # drawn from the click, before Dash's call
        page.wait_for_function(f"() => {state}.s && !{state}.s.direct")  # Dash's call has come since
        page.wait_for_timeout(200)
        assert page.evaluate(f"() => {state}.seq") == seq + 1  # ... and found the view drawn
        return d

    page.callbacks.clear()
    choose_task = lambda: (page.click("#map-colour"), page.get_by_role("option", name="task", exact=True).click())  # noqa: E731
    d = click_then_dash(choose_task, "d.legendTitle === 'task'")
    assert d["rows"] == order.tolist() and d["values"] == scored_data.cats["task"].codes[order].tolist()
    d = click_then_dash(lambda: page.get_by_label("train", exact=True).uncheck(), f"d.rows.length < {N}")
    expect = _mask(scored_data, split=["test"])
    assert d["rows"] == expect and d["values"] == scored_data.cats["task"].codes[expect].tolist()
    d = click_then_dash(lambda: page.get_by_label("train", exact=True).check(), f"d.rows.length === {N}")
    assert d["rows"] == order.tolist() and d["train"] == -1
    d = click_then_dash(lambda: page.get_by_text("dim train points").click(), "d.train >= 0")
    assert d["train"] == scored_data.cats["split"].names.index("train") and d["rows"] == order.tolist()
    page.wait_for_function("() => location.search.includes('colour=task') && location.search.includes('dim=1')")
    assert page.callbacks == [] and log.take() == []


def test_a_colour_click_reaches_dash_after_its_frame_the_last_choice_wins(browser, scored_data):
    """mapgl.js holds a colour option's click from Dash until the frame with the new colours has
    been presented, then gives it back: Dash's dropdown (its value, the menu closing, mapApply, the
    URL) follows the frame; two choices in one task give Dash the last only; a menu closed in
    between still gets its value (set_props); without animation frames Dash hears of it anyway; a
    colour Dash chose meanwhile stands."""
    url, page, log = browser
    _open(page, f"{url}/map?run=scored&renderer=webgl&glbackend=cpu", N)
    page.callbacks.clear()
    page.evaluate("""() => {  // each call Dash makes to the map's callback, and when
      const C = window.dash_clientside.llm_maps, f = C.mapApply;
      window.__dash = [];
      C.mapApply = function (colour, ...rest) { window.__dash.push([colour, performance.now()]); return f.call(this, colour, ...rest); };
      const sp = window.dash_clientside.set_props;
      window.__setProps = [];
      window.dash_clientside.set_props = (id, props) => { window.__setProps.push([id, props]); return sp(id, props); };
    }""")
    trigger = "document.getElementById('map-colour')"
    pick = "(name) => [...document.querySelectorAll('[role=option]')].find((o) => o.textContent.trim() === name)"

    def dash_heard(colour):
        page.wait_for_function(f"() => window.__dash.some((c) => c[0] === '{colour}')")
        page.wait_for_timeout(200)
        return page.evaluate("() => window.__dash.splice(0)")

    page.click("#map-colour")
    # at the first frame after the click: the new colours drawn, the menu still open, Dash not told
    page.evaluate(f"""() => window.addEventListener('click', () => requestAnimationFrame(() => {{
      window.__atFrame = [{LAST}.legendTitle, {trigger}.getAttribute('aria-expanded'), window.__dash.length]; }}),
      {{capture: true, once: true}})""")
    page.get_by_role("option", name="task", exact=True).click()
    d = _wait_drawn(page, "d.legendTitle === 'task'")
    assert d["values"] == scored_data.cats["task"].codes[F.draw_order(scored_data, np.arange(N))].tolist()
    page.wait_for_function(f"() => {LAST}.presented")
    assert page.evaluate("() => window.__atFrame") == ["task", "true", 0]
    heard = dash_heard("task")
    assert [c for c, _ in heard] == ["task"]
    assert heard[0][1] > page.evaluate(f"() => {LAST}.presented")  # Dash heard after the frame was on screen
    assert page.evaluate(f"() => [{trigger}.getAttribute('aria-expanded'), {trigger}.textContent]") == ["false", "task"]
    page.wait_for_function("() => location.search.includes('colour=task')")
    # two choices in one task: the map draws each, Dash hears of the last only
    page.click("#map-colour")
    page.get_by_role("option", name="split (train / test)", exact=True).wait_for()
    page.evaluate(f"() => {{ const pick = {pick}; pick('split (train / test)').click(); pick('domain').click(); }}")
    assert _wait_drawn(page, "d.legendTitle === 'domain'")["legendTitle"] == "domain"
    assert [c for c, _ in dash_heard("domain")] == ["domain"]
    assert page.evaluate(f"() => [{trigger}.getAttribute('aria-expanded'), {trigger}.textContent]") == ["false", "domain"]
    page.wait_for_function("() => location.search.includes('colour=domain')")
    assert page.evaluate("() => window.__setProps") == []
    # the menu closed before the click is given back (its option is gone): Dash gets the value itself
    page.click("#map-colour")
    page.get_by_role("option", name="task", exact=True).wait_for()
    page.evaluate(f"() => {{ ({pick})('task').click(); "
                  "document.activeElement.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape', bubbles: true})); }")
    page.wait_for_function(f"() => {trigger}.getAttribute('aria-expanded') === 'false'")
    assert [c for c, _ in dash_heard("task")] == ["task"]
    assert page.evaluate("() => window.__setProps") == [["map-colour", {"value": "task"}]]
    page.wait_for_function("() => location.search.includes('colour=task')")
    assert _wait_drawn(page, "d.legendTitle === 'task'")["legendTitle"] == "task"
    # no animation frames (a hidden tab): the click is given back all the same, 250 ms on
    page.click("#map-colour")
    page.get_by_role("option", name="domain", exact=True).wait_for()
    page.evaluate("() => { window.__raf = window.requestAnimationFrame; window.requestAnimationFrame = () => 0; }")
    page.evaluate(f"() => ({pick})('domain').click()")
    assert [c for c, _ in dash_heard("domain")] == ["domain"]
    page.evaluate("() => { window.requestAnimationFrame = window.__raf; }")
    assert page.evaluate(f"() => [{trigger}.getAttribute('aria-expanded'), {trigger}.textContent]") == ["false", "domain"]
    assert _wait_drawn(page, "d.legendTitle === 'domain'")["legendTitle"] == "domain"
    # Dash chose another colour while a click was held (as the keyboard does): Dash's choice stands
    page.click("#map-colour")
    page.get_by_role("option", name="task", exact=True).wait_for()
    page.evaluate(f"() => {{ ({pick})('task').click(); window.dash_clientside.set_props('map-colour', {{value: 'split'}}); }}")
    assert [c for c, _ in dash_heard("split")] == ["split"]
    page.wait_for_timeout(300)  # past both of the held click's timers
    assert _wait_drawn(page, "d.legendTitle.startsWith('split')")["legendTitle"].startswith("split")
    assert page.evaluate("() => window.__dash") == [] and "colour=" not in page.evaluate("() => location.search")
    page.keyboard.press("Escape")
    assert page.callbacks == [] and log.take() == []


def test_hover_click_and_the_neighbour_lines(browser, scored_data):
    url, page, log = browser
    _open(page, f"{url}/map?run=scored&renderer=webgl", N)
    pos = page.evaluate("() => window.llmMapGL.pixel(0)")
    page.mouse.move(pos[0] + 1, pos[1] + 1)
    page.wait_for_function("() => { const t = document.querySelector('.llm-gl-tip'); return t && !t.hidden "
                           "&& t.textContent.length > 3 && t.textContent !== '…'; }", timeout=10_000)
    tip = page.inner_text(".llm-gl-tip")
    assert tip.startswith(XSS)  # the prompt's text as text, never HTML
    page.wait_for_function("() => document.querySelector('#map-hover').innerText.startsWith('ex-0000000')")
    page.mouse.click(pos[0] + 1, pos[1] + 1)
    page.wait_for_selector("#drill-panel-content", timeout=15_000)
    assert page.inner_text("#drill-panel-content h6") == "Example ex-0000000"
    nbrs = scored_data.neighbours(0)
    page.wait_for_function(f"() => (window.llmMapGL.state.overlay || {{x: []}}).x.length === {3 * len(nbrs)}")
    ends = page.evaluate("() => window.llmMapGL.state.overlay.x")
    assert ends[1::3] == pytest.approx([float(scored_data.x[j]) for j, _ in nbrs])
    page.wait_for_function("() => location.search.includes('sel=ex-0000000')")
    # the link opens the same example with its lines, drawn from the page's first frame
    _open(page, page.url, N)
    assert len(page.evaluate("() => window.llmMapGL.state.overlay.x")) == 3 * len(nbrs)
    assert page.evaluate("() => document.querySelector('#map-drill h6').innerText") == "Example ex-0000000"
    assert log.dialogs == [] and log.take() == []


def _summary(d, rows: np.ndarray) -> str:
    return selection_text(d, rows)


def _inside(xs, ys, poly) -> np.ndarray:
    inside = np.zeros(len(xs), dtype=bool)
    for (xi, yi), (xj, yj) in zip(poly, poly[-1:] + poly[:-1]):
        with np.errstate(divide="ignore", invalid="ignore"):
            cross = ((yi > ys) != (yj > ys)) & (xs < (xj - xi) * (ys - yi) / (yj - yi) + xi)
        inside ^= cross
    return inside


def test_box_and_lasso_selection_summaries(browser, scored_data):
    url, page, log = browser
    _open(page, f"{url}/map?run=scored&renderer=webgl", N)
    d = scored_data
    xs, ys = d.x.astype(np.float64), d.y.astype(np.float64)
    page.click(".llm-gl-modebar [data-mode=select]")
    a = page.evaluate(f"() => window.llmMapGL.toPage({np.quantile(xs, 0.2)}, {np.quantile(ys, 0.8)})")
    b = page.evaluate(f"() => window.llmMapGL.toPage({np.quantile(xs, 0.8)}, {np.quantile(ys, 0.2)})")
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=8)
    page.mouse.up()
    page.wait_for_selector("#selection-count", timeout=15_000)
    box = page.evaluate("() => window.llmMapGL.state.sel.shape")
    rows = np.flatnonzero((xs > box["x0"]) & (xs < box["x1"]) & (ys > box["y0"]) & (ys < box["y1"]))
    assert 10 < len(rows) < N
    assert page.inner_text("#selection-count") == _summary(d, rows)
    assert page.evaluate("() => window.llmMapGL.drawn().selected") == len(rows)
    # lasso: a triangle
    page.click(".llm-gl-modebar [data-mode=lasso]")
    corners = [(np.quantile(xs, 0.1), np.quantile(ys, 0.1)), (np.quantile(xs, 0.9), np.quantile(ys, 0.2)),
               (np.quantile(xs, 0.5), np.quantile(ys, 0.95))]
    pts = [page.evaluate(f"() => window.llmMapGL.toPage({x}, {y})") for x, y in corners]
    page.mouse.move(*pts[0])
    page.mouse.down()
    for p in pts[1:] + pts[:1]:
        page.mouse.move(*p, steps=6)
    page.mouse.up()
    page.wait_for_function("() => window.llmMapGL.state.sel && window.llmMapGL.state.sel.shape.type === 'lasso'")
    poly = [tuple(p) for p in page.evaluate("() => window.llmMapGL.state.sel.shape.points")]
    rows = np.flatnonzero(_inside(xs, ys, poly))
    assert 10 < len(rows) < N
    page.wait_for_function(f"() => document.querySelector('#selection-count').innerText.startsWith('{len(rows)} selected')")
    assert page.inner_text("#selection-count") == _summary(d, rows)
    # a double click clears it
    page.mouse.dblclick(*pts[0])
    page.wait_for_function("() => document.querySelector('#map-selection').innerText.startsWith('Lasso or box-select')")
    assert log.take() == []


def test_dark_theme_export_and_the_density_option(browser):
    import plotly.io as pio

    url, page, log = browser
    dark_bg = pio.templates["plotly_dark"].layout.paper_bgcolor
    _open(page, f"{url}/map?run=scored&renderer=webgl", N)
    try:
        page.locator("#theme-dark").check()
        page.wait_for_function(f"() => window.llmMapGL.drawn().theme === '{dark_bg}'")
        bg = page.evaluate("() => getComputedStyle(document.querySelector('.llm-gl')).backgroundColor")
        assert bg.replace(" ", "") == dark_bg.replace(" ", "")
    finally:
        page.locator("#theme-dark").uncheck()
    page.wait_for_function("() => window.llmMapGL.drawn().theme === 'white'")
    for button, fmt in (("#map-graph-png", "png"), ("#map-graph-svg", "svg")):
        with page.expect_download() as dl:
            page.click(button)
        body = open(dl.value.path(), "rb").read()
        assert dl.value.suggested_filename == f"llm-maps-map.{fmt}"
        if fmt == "png":
            assert body[:8] == b"\x89PNG\r\n\x1a\n"
            assert int.from_bytes(body[16:20], "big") == 2 * page.evaluate(
                "() => Math.round(document.querySelector('.llm-gl').getBoundingClientRect().width)")
        else:
            assert body.startswith(b"<svg") and b"<image" in body and f"{N} of {N} examples".encode() in body
    # the density layer (an option): counts of the drawn points under them, kept in the URL
    page.click("#map-density")
    page.wait_for_function("() => location.search.includes('density=1')")
    page.wait_for_function("""() => { const c = window.llmMapGL.state.dens, d = c.getContext('2d')
        .getImageData(0, 0, c.width, c.height).data; let k = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) k++;
        return k > 1000; }""", timeout=10_000)
    assert log.take() == []


def test_your_points_condition_outcomes_and_the_renderer_switch(browser, runs):
    url, page, log = browser
    _open(page, f"{url}/map?run=scored&renderer=webgl", N)
    page.click("#map-user")
    page.wait_for_function("() => (window.llmMapGL.state.user || []).length === 3")  # 2 stars, 1 path
    kinds = page.evaluate("() => window.llmMapGL.state.user.map((t) => t.meta.user + ':' + t.meta.id)")
    assert sorted(kinds) == ["path:p-path", "point:p-path", "point:p-star"]
    # the star is drawn over the points (on the layer above them, at its place)
    page.wait_for_function("""() => { const [x, y] = window.llmMapGL.toPage(0.5, 0.5), c = window.llmMapGL.state.over,
        r = c.getBoundingClientRect(); return c.getContext('2d').getImageData(Math.round(x - r.left),
        Math.round(y - r.top), 1, 1).data[3] === 255; }""", timeout=10_000)
    page.wait_for_function("() => location.search.includes('mine=1')")
    # condition outcomes: only the examples scored under both, their outcome codes, counted legend
    data = RunRegistry([runs["cond"]]).load("cond")
    from dashboard.conditions_data import conditions_of, outcome_codes, scored_under_both

    d = _open(page, f"{url}/map?run=cond&renderer=webgl&colour=outcome&ca=direct&cb=cot",
              len(scored_under_both(data, np.arange(data.n), ("direct", "cot"))))
    rows = F.draw_order(data, scored_under_both(data, np.arange(data.n), ("direct", "cot")))
    codes = outcome_codes(conditions_of(data), "direct", "cot")
    assert d["rows"] == rows.tolist() and d["values"] == codes[rows].tolist()
    assert d["legendTitle"].endswith("cot vs direct") and all("(" in name for name in d["legend"])
    # the switch draws the same view with Plotly
    page.click("#map-webgl")
    page.wait_for_url("**renderer=plotly**", timeout=20_000)
    gd = "document.querySelector('#map-graph .js-plotly-plot')"
    page.wait_for_function(f"() => {gd} && {gd}._fullData && {gd}._fullData[0]._length === {len(rows)}", timeout=30_000)
    assert "colour=outcome" in page.url
    assert log.take() == []


def test_without_webgl2_the_cpu_draws_or_plotly_does(browser):
    url, first, _ = browser
    no_webgl2 = ("(() => { const get = HTMLCanvasElement.prototype.getContext; HTMLCanvasElement.prototype.getContext ="
                 " function (kind, ...rest) { return kind === 'webgl2' ? null : get.call(this, kind, ...rest); }; })()")
    context = first.chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.add_init_script(no_webgl2)
        log = ConsoleLog(page)
        _open(page, f"{url}/map?run=scored&renderer=webgl", N)
        assert page.evaluate("() => window.llmMapGL.backend()") == "cpu"
        page.goto(f"{url}/map?run=scored&renderer=webgl&glbackend=gpu")  # the GPU asked for: the Plotly map instead
        page.wait_for_url("**renderer=plotly**", timeout=20_000)
        gd = "document.querySelector('#map-graph .js-plotly-plot')"
        page.wait_for_function(f"() => {gd} && {gd}._fullData && {gd}._fullData[0]._length === {N}", timeout=30_000)
        assert log.take() == []
    finally:
        context.close()


def test_the_first_frame_is_the_cpus_then_a_real_gpu_takes_over(browser, scored_data):
    """Unless a backend is asked for, the CPU draws the first frame (no WebGL context in front of
    it); the worker's answer then decides: here SwiftShader, so the CPU stays; a browser whose
    WebGL is a real GPU (the probe's answer replaced) moves the same view to the GPU."""
    url, first, _ = browser
    order = F.draw_order(scored_data, np.arange(N)).tolist()
    view = f"{url}/map?run=scored&renderer=webgl&colour=task"
    gpu = ("Object.defineProperty(window, 'GLScatter', {configurable: true, get() { return this.__gls; },"
           " set(v) { v.probeSoftware = () => Promise.resolve(false); this.__gls = v; }});")
    for script, backend in ((None, "cpu"), (gpu, "gpu")):
        context = first.chromium.new_context(viewport={"width": 1400, "height": 1000})
        try:
            page = context.new_page()
            if script:
                page.add_init_script(script)
            log = ConsoleLog(page)
            page.add_init_script("window.__backends = []; setInterval(() => { const m = window.llmMapGL &&"
                                 " window.llmMapGL.state.last; if (m && !window.__backends.includes(m.backend))"
                                 " window.__backends.push(m.backend); }, 5);")
            _open(page, view, N)
            page.wait_for_function(f"() => !window.llmMapGL.state.upgrade && {LAST}.backend === '{backend}'")
            page.wait_for_timeout(300)
            assert page.evaluate("() => window.__backends") == (["cpu"] if backend == "cpu" else ["cpu", "gpu"])
            d = page.evaluate("() => window.llmMapGL.drawn()")
            assert d["rows"] == order and d["values"] == scored_data.cats["task"].codes[order].tolist()
            row = order[-1]  # drawn last, so on top: its task's colour where it is
            colour = F.category_colours("task", scored_data.cats["task"].names)[scored_data.cats["task"].codes[row]]
            assert page.evaluate(f"() => window.llmMapGL.colourAt({row})")[:3] == _rgb(colour)
            assert log.take() == []
        finally:
            context.close()


def test_the_regions_layer_on_the_webgl_map(browser, tmp_path):
    from dashboard.app import create_app
    from dashboard.regions_view import region_layer, regions_of
    from llm_maps.regions import run_regions
    from test_regions import write_planted_run

    run_dir = write_planted_run(tmp_path / "planted")
    run_regions(run_dir, min_size=15, seed=0)
    data = RunRegistry([run_dir]).load("planted")
    layer = region_layer(data)
    context = browser[1].chromium.new_context(viewport={"width": 1400, "height": 1100})
    with live_server(create_app([run_dir], [], state_dir=tmp_path / "state")) as url:
        page = context.new_page()
        log = ConsoleLog(page)
        _open(page, f"{url}/map?run=planted&renderer=webgl&regions=1", data.n)
        page.wait_for_function(f"() => window.llmMapGL.state.labels.length === {len(layer['annotations'])}",
                               timeout=20_000)
        label = page.evaluate("() => window.llmMapGL.state.labels[0]")
        box = page.evaluate("() => window.llmMapGL.state.over.getBoundingClientRect().toJSON()")
        page.mouse.click(box["x"] + (label["x0"] + label["x1"]) / 2, box["y"] + (label["y0"] + label["y1"]) / 2)
        rid = label["region"]  # clicking a label shows only that region, as its row in the table does
        page.wait_for_function(f"() => location.search.includes('region={rid}')", timeout=20_000)
        rd, _ = regions_of(data)
        members = np.flatnonzero(rd.labels == rid).tolist()
        d = _wait_drawn(page, f"d.rows.length === {len(members)}")
        assert sorted(d["rows"]) == members
        assert log.take() == []
    context.close()


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_the_token_map_draws_every_atlas_token_under_the_prompts(browser, tmp_path, backend):
    """view=tokens: every token of the atlas (tokens.parquet) drawn faintly by its own renderer on the
    canvas below the prompts', its arrays as raw bytes; a recolour does not draw them again."""
    import pandas as pd

    from dashboard.app import create_app
    from llm_maps.runfolder import EXAMPLES, MANIFEST, write_json_atomic, write_parquet_atomic

    run = write_synthetic_run(tmp_path / "tok", 200, token_map=True, seed=4)
    ex = pd.read_parquet(run / EXAMPLES)
    train = ex[ex["split"] == "train"]
    T, rng = 3000, np.random.default_rng(0)
    rows = rng.choice(train.index.to_numpy(), T)
    tokens = pd.DataFrame({"row": rows.astype(np.int64), "example_id": ex["example_id"].to_numpy()[rows],
                           "position": np.arange(T, dtype=np.int64) % 7, "token_id": np.arange(T, dtype=np.int64),
                           "token_text": [f"t{i}" for i in range(T)],
                           "x": rng.uniform(ex["x_tokens"].min(), ex["x_tokens"].max(), T),
                           "y": rng.uniform(ex["y_tokens"].min(), ex["y_tokens"].max(), T)})
    write_parquet_atomic(run / "tokens.parquet", tokens)
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["token_atlas"].update(tokens=T, examples=int(len(set(rows))))
    write_json_atomic(run / MANIFEST, manifest)
    app = create_app([run], [], state_dir=tmp_path / "state")
    client = app.server.test_client()
    got = client.get("/_llm_maps/array?run=tok::tokens&name=atlas_y")
    assert np.array_equal(np.frombuffer(got.data, dtype=np.float32), tokens["y"].to_numpy(dtype=np.float32))
    assert client.get("/_llm_maps/array?run=tok&name=atlas_y").status_code == 404  # the prompt view has none
    context = browser[1].chromium.new_context(viewport={"width": 1400, "height": 1000})
    with live_server(app) as url:
        page = context.new_page()
        log = ConsoleLog(page)
        _open(page, f"{url}/map?run=tok&view=tokens&renderer=webgl&glbackend={backend}", 200)
        state = "window.llmMapGL.state"
        page.wait_for_function(f"() => {state}.atlas && {state}.atlas.m === {T} && {state}.atlasKey")
        assert page.evaluate(f"() => {state}.atlas.backend") == backend
        assert page.inner_text(".llm-gl-title") == f"200 of 200 examples · {T:,} atlas tokens under them"
        below = page.evaluate(f"() => !!({state}.atlasCanvas.compareDocumentPosition({state}.map.canvas)"
                              " & Node.DOCUMENT_POSITION_FOLLOWING)")
        assert below  # the prompts' canvas comes after (is drawn above) the atlas tokens' one
        # a token's pixel on the atlas canvas is its grey; the plot's corner is not
        pick = f"""(xy) => {{ const r = {state}.plot.getBoundingClientRect(), p = window.llmMapGL.toPage(xy[0], xy[1]);
                    let best = null;  // the most covered pixel next to the token's centre (a 2-pixel point)
                    for (const dx of [-1, 0, 1]) for (const dy of [-1, 0, 1]) {{
                      const px = {state}.atlas.readPixel(p[0] - r.left + dx, p[1] - r.top + dy);
                      if (!best || px[3] > best[3] || (px[3] === best[3] && px[0] < best[0])) best = px; }}
                    return best; }}"""
        token = page.evaluate(pick, [float(tokens["x"].iloc[0]), float(tokens["y"].iloc[0])])
        corner = page.evaluate(f"() => {state}.atlas.readPixel(1, 1)")
        assert token != corner and token[3] > 0
        key = page.evaluate(f"() => {{ window.__atlasKey = {state}.atlasKey; return true; }}")
        page.click("#map-colour")
        page.get_by_role("option", name="task", exact=True).click()
        _wait_drawn(page, "d.legendTitle === 'task'")
        assert key and page.evaluate(f"() => window.__atlasKey === {state}.atlasKey")  # not drawn again
        assert log.take() == []
    context.close()
