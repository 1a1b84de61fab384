"""The playground in real headless Chromium: a tiny-model run, the real API and a real worker (in a
thread of this process), the page driving them like a user."""

from __future__ import annotations

import threading
import time
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import build_scored_run
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser
from interfaces.cli import main
from llm_maps.errors import LLMMapsError

XSS = "<script>alert(1)</script> **not bold** <b>tag</b>"
GD = "document.querySelector('#pg-graph .js-plotly-plot')"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_models):
    return build_scored_run(tmp_path_factory.mktemp("playground"), tiny_models["gpt2"], 40)


def slow_session_factory():
    """Real RunSessions whose tokens arrive 40 ms apart (so streaming and cancel are observable)
    and which fail on request (to see a failed job on the page)."""
    from pipelines.engine import RunSession

    class Session(RunSession):
        def generate(self, instruction, context="", *, on_token=None, **kw):
            if "PLEASE FAIL" in instruction:
                raise LLMMapsError("the model refused this prompt")

            def slow(item):
                time.sleep(0.04)
                if on_token is not None:
                    on_token(item)
            return super().generate(instruction, context, on_token=slow, **kw)

    return Session


@pytest.fixture(scope="module")
def site(tiny_run, tmp_path_factory):
    require_browser()
    from playwright.sync_api import sync_playwright

    from dashboard.app import create_app
    from pipelines.engine import SessionPool
    from pipelines.worker import serve_jobs

    state = tmp_path_factory.mktemp("state")
    app = create_app([tiny_run], [], state_dir=state)
    stop = threading.Event()
    pool = SessionPool([tiny_run], factory=slow_session_factory())
    worker = threading.Thread(target=serve_jobs, args=([tiny_run],), daemon=True,
                              kwargs=dict(state_dir=state, stop=stop, pool=pool, poll=0.02, log=lambda m: None))
    worker.start()
    with live_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1100})
        page = context.new_page()
        log = ConsoleLog(page)
        yield {"url": url, "page": page, "log": log, "context": context, "app": app, "state": state}
        browser.close()
    stop.set()
    worker.join(timeout=30)


def traces(page, kind: str) -> list[dict]:
    """Our traces on the map of one kind (point, path, neighbours): x, y, id."""
    return page.evaluate(f"""() => {{ const gd = {GD}; if (!gd || !gd.data) return [];
        return gd.data.filter((t) => t.meta && t.meta.pg === '{kind}')
                      .map((t) => ({{x: Array.from(t.x), y: Array.from(t.y), id: t.meta.id}})); }}""")


def job(url: str, job_id: str) -> dict:
    import json
    import urllib.request

    return json.loads(urllib.request.urlopen(f"{url}/api/points/{job_id}").read())


def wait_status(page, job_id: str, statuses=("done", "failed", "cancelled"), timeout=60_000):
    page.wait_for_function(
        """([id, st]) => { const g = (window.llmPlayground.gens || []).find((x) => x.id === id);
                           return g && st.includes(g.status); }""", arg=[job_id, list(statuses)], timeout=timeout)


def submit(page, instruction: str, *, max_tokens: int = 12, sampled: bool = False, cot: bool = False) -> str:
    before = page.evaluate("() => window.llmPlayground.gens.length")
    page.fill("#pg-instruction", instruction)
    page.fill("#pg-max", str(max_tokens))
    page.locator("#pg-mode").get_by_text("sampled" if sampled else "greedy", exact=True).click()
    if page.is_checked("#pg-cot") != cot:
        page.click("#pg-cot")
    page.click("#pg-submit")
    page.wait_for_function("(n) => window.llmPlayground.gens.length > n", arg=before, timeout=20_000)
    return page.evaluate("() => window.llmPlayground.gens.slice(-1)[0].id")


def test_submit_places_the_point_streams_and_draws_the_path(site, tiny_run):
    url, page, log = site["url"], site["page"], site["log"]
    page.goto(f"{url}/playground?run=tiny")
    page.wait_for_function(f"() => {GD} && {GD}._fullData && {GD}._fullData[0]._length === 40", timeout=30_000)
    job_id = submit(page, XSS, max_tokens=40)
    # the point and one line to each of its k=3 nearest training examples appear
    page.wait_for_function("() => window.llmPlayground.timing[Object.keys(window.llmPlayground.timing)[0]].point",
                           timeout=30_000)
    point = traces(page, "point")
    assert len(point) == 1 and point[0]["id"] == job_id
    page.wait_for_function(f"() => {GD}.data.some((t) => t.meta && t.meta.pg === 'neighbours')", timeout=20_000)
    nbr = traces(page, "neighbours")[0]
    assert len(nbr["x"]) == 9 and nbr["x"][0::3] == [point[0]["x"][0]] * 3  # three segments from the point
    # the streamed text grows while the job runs
    counts = []
    deadline = time.time() + 60
    while time.time() < deadline:
        counts.append(page.locator("#pg-stream .pg-tok").count())
        if page.evaluate("(id) => window.llmPlayground.gens.find((g) => g.id === id).status", job_id) == "done":
            break
        time.sleep(0.05)
    wait_status(page, job_id)
    final = job(url, job_id)
    assert final["status"] == "done", final
    tokens = final["result"]["tokens"]
    assert len(tokens) >= 3
    assert any(0 < c < len(tokens) for c in counts), (counts, len(tokens))  # seen partly streamed
    # the path: the prompt's point, then one step per generated token, at the worker's positions
    page.wait_for_function(f"(n) => {GD}.data.some((t) => t.meta && t.meta.pg === 'path' && t.x.length === n)",
                           arg=len(tokens) + 1, timeout=20_000)
    path = traces(page, "path")[0]
    assert path["x"][1:] == pytest.approx([t["x"] for t in tokens]) and path["x"][0] == pytest.approx(final["result"]["x"])
    # the streamed text: one span per token, text as generated, hover = probability and alternatives
    spans = page.locator("#pg-stream .pg-tok")
    assert spans.count() == len(tokens)
    assert "".join(spans.all_text_contents()) == "".join(t["text"] for t in tokens)
    assert spans.first.get_attribute("title").startswith(f"token 1: ") and "top alternatives" in spans.first.get_attribute("title")
    # neighbours listed with task/domain/distance; clicking one opens the drill-down
    nbr_ids = [n["example_id"] for n in final["result"]["neighbours"]]
    items = page.locator("#pg-neighbour-list li")
    assert items.count() == 3 and nbr_ids[0] in items.first.inner_text()
    items.nth(1).locator("button").click()
    page.wait_for_function("(id) => document.querySelector('#pg-drill') && document.querySelector('#pg-drill').innerText.includes(id)",
                           arg=nbr_ids[1], timeout=20_000)
    # expected accuracy with its interval, and a marker on the small falloff plot
    exp = final["result"]["expected_accuracy"]
    from llm_maps.falloff import bin_interval, expected_words

    lo, hi, _ = bin_interval(exp)  # over tasks where the run's falloff has it, else Wilson's (the text names it)
    assert expected_words(exp) in page.inner_text("#pg-expected-text")
    assert f"{exp['accuracy']:.2f} [{lo:.2f}, {hi:.2f}] (95 % " in expected_words(exp)
    marker = page.evaluate("""() => { const gd = document.querySelector('#pg-falloff .js-plotly-plot');
        const t = gd.data.find((d) => d.name === 'your prompt'); return t && [t.x[0], t.y[0]]; }""")
    assert marker == pytest.approx([final["result"]["dist_to_train"], exp["accuracy"]])
    # the compare table's row, with the worker's summary; the user's text shown literally
    row = page.locator(".pg-compare-table tbody tr").first
    assert row.locator(".pg-cmp-prompt").inner_text() == XSS
    cells = row.locator("td").all_inner_texts()
    assert cells[3] == "done" and cells[4] == str(len(tokens))
    assert float(cells[5]) == pytest.approx(final["result"]["mean_logprob"], rel=1e-3)
    assert float(cells[7]) == pytest.approx(final["result"]["path_length"], rel=1e-3)
    assert not log.dialogs and page.locator("#pg-stream script").count() == 0
    assert log.take() == []


def test_rejected_input_and_failed_jobs_show_their_message(site):
    url, page, log = site["url"], site["page"], site["log"]
    page.goto(f"{url}/playground?run=tiny")
    page.wait_for_selector("#pg-submit")
    page.fill("#pg-instruction", "   ")
    page.click("#pg-submit")
    page.wait_for_selector("#pg-error", state="visible", timeout=20_000)
    assert page.inner_text("#pg-error") == "Invalid input (422): field 'instruction': required, a non-empty string"
    page.fill("#pg-instruction", "x" * 8001)
    page.click("#pg-submit")
    page.wait_for_function("() => ((document.querySelector('#pg-error') || {}).innerText || '').includes('413')", timeout=20_000)
    assert page.inner_text("#pg-error") == ("Input too long (413): field 'instruction': input is 8001 characters; "
                                            "the limit is 8000")
    # a full queue: the playground says so and sends the prompt again (with its Idempotency-Key) as
    # the answer's Retry-After says; once a place is free the job is made, once
    queue = site["app"].server.config["LLM_MAPS_QUEUE"]
    queue.max_queued, saved = 0, queue.max_queued
    keys = []
    page.on("request", lambda req: keys.append(req.headers.get("idempotency-key"))
            if req.method == "POST" and req.url.endswith("/api/runs/tiny/points") else None)
    try:
        page.fill("#pg-instruction", "a fine prompt")
        page.fill("#pg-max", "0")  # (placed only)
        page.click("#pg-submit")
        page.wait_for_function("() => ((document.querySelector('#pg-status') || {}).innerText || '')"
                               ".includes('trying again')", timeout=20_000)
        assert page.inner_text("#pg-status").startswith("queue full (0 jobs waiting for run 'tiny'); retry later; "
                                                        "trying again in 3 s")
    finally:
        queue.max_queued = saved
    page.wait_for_function("() => (window.llmPlayground.gens || []).some((g) => g.instruction === 'a fine prompt')",
                           timeout=20_000)
    made = [g["id"] for g in page.evaluate("() => window.llmPlayground.gens") if g["instruction"] == "a fine prompt"]
    assert len(made) == 1 and len(keys) >= 2 and len(set(keys)) == 1 and len(keys[0]) == 36, keys
    assert queue.get(made[0])["payload"]["instruction"] == "a fine prompt"
    wait_status(page, made[0])
    job_id = submit(page, "PLEASE FAIL now", max_tokens=5)
    wait_status(page, job_id)
    page.wait_for_function("() => ((document.querySelector('#pg-error') || {}).innerText || '').includes('failed')", timeout=20_000)
    assert page.inner_text("#pg-error") == "The job failed: the model refused this prompt"
    assert page.inner_text("#pg-status") == "failed"
    # the browser logs the refused requests themselves (a 503 each time the full queue was tried);
    # nothing else went wrong
    errors = [e.split("status of ")[1][:3] for e in log.take()]
    assert errors[:3] == ["422", "413", "503"] and set(errors[3:]) <= {"503"}, errors


def test_cancel_compare_hide_remove_and_the_link_restores_the_view(site):
    url, page, log = site["url"], site["page"], site["log"]
    page.goto(f"{url}/playground?run=tiny")
    page.wait_for_selector("#pg-submit")
    long_id = submit(page, "Tell a very long story.", max_tokens=150)
    page.wait_for_function("(id) => (((window.llmPlayground.results[id] || {}).tokens) || []).length >= 2",
                           arg=long_id, timeout=30_000)
    page.click("#pg-cancel")
    wait_status(page, long_id, ("cancelled",), timeout=30_000)
    assert 2 <= len(job(url, long_id)["result"]["tokens"]) < 150
    # the same instruction directly and with "think step by step" (sampled): two generations compared
    a = submit(page, "Name three colours.", max_tokens=6)
    wait_status(page, a)
    b = submit(page, "Name three colours.", max_tokens=6, sampled=True, cot=True)
    wait_status(page, b)
    # step by step is the cot condition: the answer starts with the cue, the prompt placed is the
    # plain one (the same point as the direct question's)
    ra, rb = job(url, a)["result"], job(url, b)["result"]
    assert rb["response_prefix"] == "Let's think step by step." and "response_prefix" not in ra
    assert rb["prompt"] == ra["prompt"] and "step by step" not in rb["prompt"]
    assert (rb["x"], rb["y"], rb["dist_to_train"]) == (ra["x"], ra["y"], ra["dist_to_train"])
    page.wait_for_function(f"() => {GD}.data.filter((t) => t.meta && t.meta.pg === 'point').length === 3",
                           timeout=20_000)
    rows = page.locator(".pg-compare-table tbody tr")
    assert rows.count() == 3 and rows.nth(1).locator("td").nth(2).inner_text() == "greedy"
    assert rows.nth(2).locator("td").nth(2).inner_text().startswith("T=0.8 seed 0")
    assert rows.nth(0).locator(".pg-cmp-status").inner_text() == "cancelled"
    # recolouring the map (same choices as the Map page) keeps the points and paths on it
    page.click("#pg-colour")
    page.get_by_text("domain", exact=True).click()
    page.wait_for_function(f"() => ({GD}.layout.meta || {{}}).pg_base === 'domain' && "
                           f"{GD}.data.filter((t) => t.meta && t.meta.pg === 'point').length === 3", timeout=20_000)
    assert page.evaluate(f"() => {GD}.layout.legend.title.text") == "domain"
    # hide the first (its path and point leave the map), remove the cancelled one
    page.locator("button", has_text="hide").nth(1).click()
    page.wait_for_function(f"(id) => !{GD}.data.some((t) => t.meta && t.meta.id === id)", arg=a, timeout=20_000)
    assert {t["id"] for t in traces(page, "point")} == {long_id, b}
    page.locator("button", has_text="remove").first.click()
    page.wait_for_function("() => document.querySelectorAll('.pg-compare-table tbody tr').length === 2", timeout=20_000)
    # the URL holds the view: the form and the kept generations (saved points) come back from a link
    page.wait_for_function("(ids) => location.search.includes(ids)", arg=f"ids={a}%2C{b}", timeout=20_000)
    query = parse_qs(urlparse(page.url).query)
    assert query["instruction"] == ["Name three colours."] and query["cot"] == ["1"] and query["mode"] == ["sampled"]
    assert query["colour"] == ["domain"]
    other = site["context"].new_page()
    other_log = ConsoleLog(other)
    other.goto(page.url)
    other.wait_for_function(f"() => {GD} && {GD}.data.filter((t) => t.meta && t.meta.pg === 'point').length === 2",
                            timeout=30_000)
    assert other.input_value("#pg-instruction") == "Name three colours." and other.is_checked("#pg-cot")
    assert other.evaluate(f"() => ({GD}.layout.meta || {{}}).pg_base") == "domain"
    n_b = len(job(url, b)["result"]["tokens"])
    assert sorted(len(p["x"]) for p in traces(other, "path")) == sorted(
        [len(job(url, a)["result"]["tokens"]) + 1, n_b + 1])
    assert other.locator(".pg-compare-table tbody tr").count() == 2
    other.close()
    assert log.take() == [] and other_log.take() == []


def test_export_includes_saved_points_and_their_paths(site, tiny_run, tmp_path, capsys):
    """`llm-maps export --points` draws the playground's saved points (and paths) in the standalone HTML."""
    import json
    import re

    from llm_maps.jobs import PointStore

    saved = PointStore(site["state"]).list("tiny")
    gens = [p for p in saved if p["kind"] == "generate" and p["tokens"]]
    assert len(saved) >= 3 and gens
    out = tmp_path / "map.html"
    assert main(["export", str(tiny_run), "--html", str(out), "--plotlyjs", "cdn", "--points", "all",
                 "--state", str(site["state"])]) == 0
    text = out.read_text()
    data = json.loads(re.search(r'Plotly\.newPlot\(\s*"map",\s*(\[.*?\]),\s*\{', text, re.S).group(1))
    stars = [t for t in data if (t.get("meta") or {}).get("user") == "point"]
    paths = {t["meta"]["id"]: t for t in data if (t.get("meta") or {}).get("user") == "path"}
    assert [t["meta"]["id"] for t in stars] == [p["id"] for p in saved]
    for p in gens:
        assert len(paths[p["id"]]["x"]) == len(p["tokens"]) + 1
        assert paths[p["id"]]["x"][1:] == pytest.approx([t["x"] for t in p["tokens"]])
    assert "<script>alert(1)" not in text  # the saved XSS instruction stays text
    one = tmp_path / "one.html"
    assert main(["export", str(tiny_run), "--html", str(one), "--plotlyjs", "cdn", "--points", gens[0]["id"],
                 "--state", str(site["state"])]) == 0
    assert one.read_text().count('"user":"point"') + one.read_text().count('"user": "point"') == 1
    capsys.readouterr()
    assert main(["export", str(tiny_run), "--html", str(tmp_path / "bad.html"), "--points", "nope",
                 "--state", str(site["state"])]) == 2
    assert capsys.readouterr().err.strip() == "llm-maps export: error: --points: no saved point 'nope' for run 'tiny'"
    assert not (tmp_path / "bad.html").exists()


def test_map_page_shows_saved_points_as_a_layer(site):
    from llm_maps.jobs import PointStore

    url, page, log = site["url"], site["page"], site["log"]
    saved = PointStore(site["state"]).list("tiny")
    gens = [p for p in saved if p.get("tokens")]
    mgd = "document.querySelector('#map-graph .js-plotly-plot')"
    user = (f"(kind) => {{ const gd = {mgd}; return gd && gd.data ? "
            "gd.data.filter((t) => t.meta && t.meta.user === kind).map((t) => t.meta.id) : []; }")
    page.goto(f"{url}/map?run=tiny")
    page.wait_for_function(f"() => {mgd} && {mgd}._fullData && {mgd}._fullData[0]._length === 40", timeout=30_000)
    assert page.evaluate(user, "point") == [] and page.inner_text("#map-user-count") == f"{len(saved)} saved points"
    page.click("#map-user")
    page.wait_for_function(f"(n) => ({user})('point').length === n", arg=len(saved), timeout=20_000)
    assert page.evaluate(user, "point") == [p["id"] for p in saved]
    assert sorted(page.evaluate(user, "path")) == sorted(p["id"] for p in gens)
    page.wait_for_function("() => location.search.includes('mine=1')", timeout=10_000)
    # recolouring in the browser keeps the layer; the link restores it
    page.click("#map-colour")
    page.get_by_text("domain", exact=True).click()
    page.wait_for_function(f"() => {mgd}.layout.legend.title.text === 'domain'", timeout=20_000)
    page.wait_for_timeout(300)
    assert len(page.evaluate(user, "point")) == len(saved)
    page.goto(page.url)
    page.wait_for_function(f"(n) => ({user})('point').length === n", arg=len(saved), timeout=30_000)
    assert page.get_attribute("#map-user-csv", "href") == "/api/runs/tiny/points?format=csv"
    page.click("#map-user")
    page.wait_for_function(f"() => ({user})('point').length === 0", timeout=20_000)
    assert page.evaluate(f"() => {mgd}._fullData[0]._length") == 40  # the examples themselves untouched
    assert log.take() == []


def test_try_a_variation_from_an_examples_drill_down(site, tiny_run):
    """The drill-down's "try a variation" opens the playground with the example attached; each
    answer gets a right/wrong badge (the example's metric and the run's threshold) and its
    distances to train and to the original; the variations tried are kept, nearest first."""
    import numpy as np

    from llm_maps.runfolder import Run
    from llm_maps.scoring import get_metric

    url, page, log = site["url"], site["page"], site["log"]
    ex = Run(tiny_run).examples
    i = int(np.flatnonzero((ex["split"] == "test").to_numpy() & (ex["context"] != "").to_numpy())[0])
    eid, metric, ref = str(ex["example_id"][i]), str(ex["metric"][i]), str(ex["reference"][i])
    page.goto(f"{url}/examples?run=tiny&sel={eid}")
    page.wait_for_selector("#drill-try-variation", timeout=30_000)
    page.click("#drill-try-variation")
    page.wait_for_function("(id) => ((document.querySelector('#pg-origin-id') || {}).innerText || '') === id",
                           arg=eid, timeout=30_000)
    assert page.input_value("#pg-instruction") == ex["instruction"][i]
    assert page.input_value("#pg-context") == ex["context"][i]
    assert page.inner_text("#pg-origin-reference") == ref
    assert page.inner_text("#pg-origin-metric").startswith(f"scored with {metric} (right when score ≥ ")
    page.wait_for_function("(id) => new URLSearchParams(location.search).get('example') === id", arg=eid,
                           timeout=10_000)

    def shown(selector: str, text: str) -> None:
        page.wait_for_function("([s, t]) => ((document.querySelector(s) || {}).innerText || '').trim() === t",
                               arg=[selector, text], timeout=30_000)

    # unedited, greedy with the budget `score` had: the stored output, score and verdict; at the original
    first = submit(page, ex["instruction"][i], max_tokens=3)
    wait_status(page, first)
    res = job(url, first)["result"]
    v = res["variation"]
    assert v["example_id"] == eid and v["metric"] == metric
    assert v["dist_to_original"] == pytest.approx(0.0, abs=1e-5)
    assert res["dist_to_train"] == pytest.approx(float(ex["dist_to_train"][i]), abs=1e-5)
    assert res["output"] == ex["output"][i]
    assert v["score"] == pytest.approx(float(ex["score"][i])) and v["correct"] == bool(ex["correct"][i])
    shown("#pg-var-badge", "right" if v["correct"] else "wrong")
    shown("#pg-var-dists", f"distance to train {res['dist_to_train']:.4g} · to the original {v['dist_to_original']:.4g}")
    # edited: walked away from the original, scored against the same reference
    second = submit(page, ex["instruction"][i] + " the paper press and the light on the water", max_tokens=3)
    wait_status(page, second)
    res2 = job(url, second)["result"]
    v2 = res2["variation"]
    assert v2["dist_to_original"] > 1e-4
    assert v2["score"] == get_metric(metric).score(res2["output"], ref)
    assert v2["correct"] == (v2["score"] >= v2["threshold"])
    shown("#pg-var-badge", "right" if v2["correct"] else "wrong")
    shown("#pg-var-dists", f"distance to train {res2['dist_to_train']:.4g} · to the original "
                           f"{v2['dist_to_original']:.4g}")
    page.wait_for_function("() => document.querySelectorAll('#pg-var-table tbody tr').length === 2", timeout=20_000)
    assert page.locator("#pg-var-table .pg-var-orig").all_inner_texts() == [
        f"{v['dist_to_original']:.4g}", f"{v2['dist_to_original']:.4g}"]  # nearest the original first
    assert page.locator("#pg-var-table .pg-var-badge").all_inner_texts() == [
        "right" if x["correct"] else "wrong" for x in (v, v2)]
    assert page.evaluate("""() => { const gd = document.querySelector('#pg-var-plot .js-plotly-plot');
        const t = gd.data.find((d) => d.meta && d.meta.pg_var); return t && Array.from(t.x); }""") == pytest.approx(
        [v["dist_to_original"], v2["dist_to_original"]])
    # the link keeps the attached example and the variations tried
    page.wait_for_function("(ids) => location.search.includes(ids)", arg=f"{first}%2C{second}", timeout=20_000)
    page.goto(page.url)
    page.wait_for_function("() => document.querySelectorAll('#pg-var-table tbody tr').length === 2", timeout=30_000)
    assert page.inner_text("#pg-origin-id") == eid
    # detached: a free prompt again, not scored
    page.click("#pg-detach")
    page.wait_for_function("() => !document.querySelector('#pg-origin-id')", timeout=20_000)
    third = submit(page, "Name three colours.", max_tokens=2)
    wait_status(page, third)
    assert "variation" not in job(url, third)["result"]
    page.wait_for_function("() => !new URLSearchParams(location.search).get('example')", timeout=10_000)
    assert log.take() == []
