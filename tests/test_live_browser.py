"""Live points in real headless Chromium, under hostile text and a flaky server.

User text drawn by plotly is text: saved points whose instruction, output or tokens hold ``<a href>``,
``<span style>`` or ``<b>`` show those characters literally in the Map page's legend and hovers, the
playground's hovers and the standalone HTML export (plotly renders a subset of HTML in labels;
without escaping they became live links and styled text). And the playground treats a poll that
reads as missing (404) or fails (5xx) as a transient miss: it tries again, and reports the job
failed only after ten misses in a row."""

from __future__ import annotations

import pytest

from dashboard.synthetic import write_synthetic_run
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser
from llm_maps.jobs import PointStore

LINK = '<a href="https://evil.example/">CLICK</a> here'
STYLED = 'Tom &amp; Jerry <span style="font-size:40px;color:red">BIG</span>'
OUTPUT = '<span style="color:red">RED</span> <b>bold</b>'
TOKEN = "<b>tok</b>"


def _points(data) -> list[dict]:
    x, y = float(data.x[0]), float(data.y[0])
    tokens = [{"text": TOKEN, "id": 1, "logprob": -0.2, "top": [], "x": x + 0.1, "y": y + 0.1, "dist": 0.3, "step": 0.1}]
    base = {"kind": "generate", "context": "", "options": {}, "prompt": "P", "dist_to_train": 0.25, "domain": None,
            "neighbours": [], "expected_accuracy": None, "stop_reason": "eos", "n_tokens": 1}
    return [{**base, "id": "p1", "created": 1.0, "instruction": LINK, "x": x, "y": y, "output": OUTPUT,
             "tokens": tokens},
            {**base, "id": "p2", "created": 2.0, "instruction": STYLED, "x": x - 0.1, "y": y - 0.1, "output": None,
             "tokens": []}]


HOVER = """async ([sel, kind, id]) => {  // plotly throttles hovers (one per 50 ms): wait around each
  const gd = document.querySelector(sel);
  const pause = () => new Promise((r) => setTimeout(r, 150));
  const i = gd.data.findIndex((t) => t.meta && (t.meta.user === kind || t.meta.pg === kind) && t.meta.id === id);
  Plotly.Fx.unhover(gd);
  await pause();
  if (gd._fullData[i].type === 'scattergl') {
    // a WebGL trace (the stars, drawn above the map's points) is hovered where it is, as by the
    // mouse (plotly.js hovers WebGL points only by position), with the other traces out of the
    // way: a star may sit exactly on an example's point
    const others = gd.data.map((_, j) => j).filter((j) => j !== i);
    const saved = others.map((j) => (gd.data[j].visible === undefined ? true : gd.data[j].visible));
    await Plotly.restyle(gd, {visible: others.map(() => false)}, others);
    const t = gd._fullData[i], xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
    Plotly.Fx.hover(gd, {xpx: xa.l2p(t.x[0]), ypx: ya.l2p(t.y[0])});
    await pause();
    const layer = gd.querySelector('.hoverlayer');
    const out = {text: layer.textContent, links: layer.querySelectorAll('a').length,
                 styled: layer.querySelectorAll('tspan[style*="red"], tspan[style*="40px"], tspan[style*="bold"]').length};
    Plotly.Fx.unhover(gd);
    await Plotly.restyle(gd, {visible: saved}, others);
    return out;
  }
  Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: kind === 'path' ? 1 : 0}]);
  await pause();
  const layer = gd.querySelector('.hoverlayer');
  return {text: layer.textContent, links: layer.querySelectorAll('a').length,
          styled: layer.querySelectorAll('tspan[style*="red"], tspan[style*="40px"], tspan[style*="bold"]').length};
}"""
LEGEND = """(sel) => {
  const gd = document.querySelector(sel);
  const legend = gd.querySelector('.legend');
  return {texts: Array.from(legend.querySelectorAll('text.legendtext')).map((t) => t.textContent),
          links: gd.querySelectorAll('.legend a, .hoverlayer a').length,
          styled: legend.querySelectorAll('tspan[style*="red"], tspan[style*="40px"]').length};
}"""


def _check_hovers(page, sel: str, kinds: dict) -> None:
    """kinds: {(trace kind, point id): literal texts its hover must show}."""
    for (kind, pid), texts in kinds.items():
        out = page.evaluate(HOVER, [sel, kind, pid])
        for text in texts:
            assert text in out["text"], (kind, pid, text, out["text"])
        assert out["links"] == 0 and out["styled"] == 0, (kind, pid, out)


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        yield page, ConsoleLog(page)
        browser.close()


def test_user_text_is_literal_in_the_map_playground_and_export(browser_page, tmp_path):
    from dashboard.app import create_app
    from dashboard.data import RunRegistry
    from dashboard.export import export_html

    page, log = browser_page
    run = write_synthetic_run(tmp_path / "syn", 40, seed=5)
    points = _points(RunRegistry([run]).load("syn"))
    store = PointStore(tmp_path / "state")
    for p in points:
        store.add("syn", p)
    app = create_app([run], [], state_dir=tmp_path / "state")
    with live_server(app) as url:
        # the Map page's layer of saved points: legend and hovers
        mgd = "#map-graph .js-plotly-plot"
        page.goto(f"{url}/map?run=syn&mine=1")
        page.wait_for_function(f"""() => {{ const gd = document.querySelector('{mgd}');
            return gd && gd.data && gd.data.filter((t) => t.meta && t.meta.user === 'point').length === 2; }}""",
                               timeout=30_000)
        legend = page.evaluate(LEGEND, mgd)
        assert LINK[:40] in legend["texts"] and STYLED[:40] in legend["texts"], legend["texts"]
        assert legend["links"] == 0 and legend["styled"] == 0
        _check_hovers(page, mgd, {("point", "p1"): ["your point: " + LINK, "output: " + OUTPUT],
                                  ("point", "p2"): ["your point: " + STYLED],
                                  ("path", "p1"): [f"token 1: '{TOKEN}'"]})
        # the playground, opened on a shared link to the saved points (drawn by playground.js)
        pgd = "#pg-graph .js-plotly-plot"
        page.goto(f"{url}/playground?run=syn&ids=p1,p2")
        page.wait_for_function(f"""() => {{ const gd = document.querySelector('{pgd}');
            return gd && gd.data && gd.data.filter((t) => t.meta && t.meta.pg === 'point').length === 2; }}""",
                               timeout=30_000)
        _check_hovers(page, pgd, {("point", "p1"): ["your prompt: " + LINK],
                                  ("point", "p2"): ["your prompt: " + STYLED],
                                  ("path", "p1"): [f'token 1: "{TOKEN}"']})
        assert page.locator("#pg-compare .pg-cmp-prompt").first.inner_text() == LINK  # HTML text, as typed
        errors = log.take()
    assert errors == []
    # the standalone export
    out = export_html(run, tmp_path / "map.html", points=points)
    page.goto(out.as_uri())
    page.wait_for_function("() => { const gd = document.getElementById('map'); return gd && gd._fullLayout; }",
                           timeout=30_000)
    legend = page.evaluate(LEGEND, "#map")
    assert LINK[:40] in legend["texts"] and STYLED[:40] in legend["texts"] and legend["links"] == 0
    assert legend["styled"] == 0
    _check_hovers(page, "#map", {("point", "p1"): ["your point: " + LINK, "output: " + OUTPUT],
                                 ("point", "p2"): ["your point: " + STYLED]})
    assert log.take() == []


def test_the_playground_retries_transient_misses_and_gives_up_on_a_job_that_stays_missing(browser_page, tmp_path):
    from dashboard.app import create_app

    page, log = browser_page
    run = write_synthetic_run(tmp_path / "syn", 40, seed=6)
    app = create_app([run], [], state_dir=tmp_path / "state")
    queue = app.server.config["LLM_MAPS_QUEUE"]
    job_id = queue.submit("syn", "place", {"instruction": "a job the worker finished"})
    queue.claim(["syn"], "w")
    queue.finish(job_id, {"prompt": "P", "x": 0.1, "y": 0.2, "dist_to_train": 0.3, "neighbours": [], "domain": None,
                          "expected_accuracy": None})
    answers = {"404": 0, "503": 0}

    def flaky(route):  # the first polls of the finished job read as missing, then as a server error
        if answers["404"] < 3:
            answers["404"] += 1
            return route.fulfill(status=404, content_type="application/json", body='{"error": "unknown point"}')
        if answers["503"] < 2:
            answers["503"] += 1
            return route.fulfill(status=503, content_type="text/html", body="<h1>restarting</h1>")
        return route.continue_()

    gone = "0" * 32
    with live_server(app) as url:
        page.route(f"{url}/api/points/{job_id}", flaky)
        page.goto(f"{url}/playground?run=syn&ids={job_id},{gone}")
        status = """([id, st]) => { const g = (window.llmPlayground.gens || []).find((x) => x.id === id);
                                   return g && g.status === st; }"""
        page.wait_for_function(status, arg=[job_id, "done"], timeout=30_000)
        assert answers == {"404": 3, "503": 2}
        assert page.evaluate("(id) => window.llmPlayground.results[id].x", job_id) == 0.1
        # an id that stays unknown: failed after ten misses (0.1 + 0.2 + ... + 1.0 s of waiting)
        page.wait_for_function(status, arg=[gone, "failed"], timeout=30_000)
        assert "Not found (404): unknown point" in page.inner_text("#pg-error")
        page.unroute(f"{url}/api/points/{job_id}")
    log.take()  # the browser logs each 404/503 it was answered


def test_a_submission_whose_answer_was_lost_is_sent_again_and_made_once(browser_page, tmp_path):
    """The playground's POST reaches the server, which makes the job, but the answer never reaches
    the browser (the connection reset): the playground sends it again with the same Idempotency-Key
    and is answered with that job (Idempotent-Replayed), so the prompt is placed once."""
    from dashboard.app import create_app

    page, log = browser_page
    run = write_synthetic_run(tmp_path / "syn", 40, seed=7)
    app = create_app([run], [], state_dir=tmp_path / "state")
    queue = app.server.config["LLM_MAPS_QUEUE"]
    sent, answers = [], []

    def lost_once(route):
        sent.append(route.request.headers.get("idempotency-key"))
        if len(sent) == 1:
            route.fetch()  # the server makes the job ...
            return route.abort("connectionreset")  # ... and its answer is lost
        return route.continue_()

    with live_server(app) as url:
        page.route(f"{url}/api/runs/syn/points", lost_once)
        page.on("response", lambda r: answers.append((r.status, r.headers.get("idempotent-replayed")))
                if r.request.method == "POST" and r.url.endswith("/api/runs/syn/points") else None)
        page.goto(f"{url}/playground?run=syn")
        page.wait_for_selector("#pg-submit")
        page.fill("#pg-instruction", "placed once")
        page.fill("#pg-max", "0")
        page.click("#pg-submit")
        page.wait_for_function("() => (window.llmPlayground.gens || []).length === 1", timeout=30_000)
        job = page.evaluate("() => window.llmPlayground.gens[0].id")
        page.unroute(f"{url}/api/runs/syn/points")
    assert len(sent) == 2 and sent[0] == sent[1] and sent[0]
    assert answers == [(202, "true")]
    assert queue._count_waiting("syn") == 1 and queue.get(job)["payload"]["instruction"] == "placed once"
    log.take()  # the browser logs the reset connection
