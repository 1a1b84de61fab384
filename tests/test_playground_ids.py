"""Shared playground links (``/playground?ids=``): each id once, in the order it first appears, at most
MAX_SHARED_IDS of them (the rest dropped, with a message saying how many and what the cap is), and
the saved points sent with the page and drawn together, not fetched and drawn one by one."""

from __future__ import annotations

import json
import sys
from urllib.parse import parse_qs, urlparse

import pytest

from dashboard.synthetic import write_synthetic_run
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser
from llm_maps.jobs import PointStore

GD = "document.querySelector('#pg-graph .js-plotly-plot')"


def _page(name: str):
    """A page module as Dash loaded it (importing dashboard.pages.X again would register it twice)."""
    return sys.modules[f"pages.{name}"]


def _points(data, n: int) -> list[dict]:
    """n saved points on the run's map, shaped as pipelines.worker.point_record stores them; every
    third one a generation of 2 tokens (its path), the rest placed prompts."""
    out = []
    for i in range(n):
        row = i % len(data.frame)
        x, y = float(data.x[row]), float(data.y[row])
        point = {"id": f"p{i:03d}", "created": 1000.0 + i, "kind": "place", "instruction": f"question {i}",
                 "context": "", "options": {}, "prompt": f"Q: question {i}", "x": x, "y": y,
                 "dist_to_train": 0.1 + i / 1000, "domain": None, "expected_accuracy": None,
                 "neighbours": [{"example_id": str(data.frame["example_id"].iloc[(row + k) % len(data.frame)]),
                                 "distance": 0.2 + k / 10} for k in (1, 2, 3)],
                 "x_tokens": None, "y_tokens": None}
        if i % 3 == 0:
            tokens = [{"text": f" t{k}", "id": 10 + k, "logprob": -0.1 * (k + 1), "top": [],
                       "x": x + 0.01 * (k + 1), "y": y - 0.01 * (k + 1), "dist": 0.3, "step": 0.1} for k in range(2)]
            point.update(kind="generate", options={"max_new_tokens": 2, "temperature": 0.0}, output=" t0 t1",
                         tokens=tokens, stop_reason="length", n_tokens=2, mean_logprob=-0.15, perplexity=1.16,
                         path_length=0.2, final_dist=0.3, reference="prompts", mean_dist=None, max_dist=None)
        out.append(point)
    return out


@pytest.fixture(scope="module")
def shared_site(tmp_path_factory):
    from dashboard.app import create_app
    from dashboard.data import RunRegistry

    tmp = tmp_path_factory.mktemp("shared")
    run = write_synthetic_run(tmp / "syn", 40, seed=7)
    points = _points(RunRegistry([run]).load("syn"), 105)
    store = PointStore(tmp / "state")
    for p in points:
        store.add("syn", p)
    app = create_app([run], [], state_dir=tmp / "state")
    return {"app": app, "points": points, "by_id": {p["id"]: p for p in points}}


# ------------------------------------------------------------------------------ the ids of a link

def test_parse_ids_keeps_each_id_once_in_first_order_and_caps(shared_site):
    pg = _page("playground")
    assert pg.MAX_SHARED_IDS == 100
    out = pg.parse_ids("b, a,,b ,c,a, d,b", cap=3)
    assert out == pg.SharedIds(ids=["b", "a", "c"], listed=4, duplicates=3, dropped=1, cap=3)
    assert pg.parse_ids("x,y", cap=3) == pg.SharedIds(["x", "y"], 2, 0, 0, 3)
    assert pg.parse_ids(None) == pg.SharedIds([], 0, 0, 0, 100)
    assert pg.parse_ids(" , ,") == pg.SharedIds([], 0, 0, 0, 100)
    many = ",".join(f"q{i}" for i in range(150)) + ",q0,q149"
    out = pg.parse_ids(many)
    assert out.ids == [f"q{i}" for i in range(100)]
    assert (out.listed, out.duplicates, out.dropped, out.cap) == (150, 2, 50, 100)


def test_shared_points_gives_the_entries_in_order_and_the_points_found(shared_site):
    pg = _page("playground")
    ids = ["p004", "p000", "nope", "p003"]
    with shared_site["app"].server.test_request_context("/playground"):
        gens, found = pg.shared_points("syn", ids)
        assert pg.stored_points("syn", ids) == gens
    assert [(g["id"], g["status"]) for g in gens] == [("p004", "done"), ("p000", "done"), ("nope", "loading"),
                                                      ("p003", "done")]
    assert list(found) == ["p004", "p000", "p003"]
    assert found["p003"] == shared_site["by_id"]["p003"]  # the whole saved point, tokens included
    assert gens[0]["instruction"] == "question 4" and gens[3]["n_tokens"] == 2


def test_shared_notice_names_the_dropped_count_and_the_cap(shared_site):
    pg = _page("playground")
    assert pg.shared_notice(pg.parse_ids("a,b")) == []
    capped, dupes = pg.shared_notice(pg.parse_ids("a,b,c,a,d,a", cap=2))
    assert capped.id == "pg-ids-capped" and capped.children == (
        "This link lists 4 saved points; the playground opens at most 2 at once, so the last 2 were dropped.")
    assert dupes.id == "pg-ids-duplicates" and dupes.children == "2 repeated ids in the link opened once."
    (one,) = pg.shared_notice(pg.parse_ids("a,a"))
    assert one.children == "1 repeated id in the link opened once."


# ------------------------------------------------------------------------------ in the browser

@pytest.fixture(scope="module")
def browser(shared_site):
    require_browser()
    from playwright.sync_api import sync_playwright

    with live_server(shared_site["app"]) as url, sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        context = chromium.new_context(viewport={"width": 1500, "height": 1100})
        yield {"url": url, "context": context}
        chromium.close()


def _open(browser, query: str):
    page = browser["context"].new_page()
    log = ConsoleLog(page)
    fetched = []  # one saved point per request: what the old page did for each id of the link
    page.on("request", lambda r: fetched.append(r.url) if "/api/runs/syn/points/" in r.url else None)
    page.goto(f"{browser['url']}/playground?run=syn&{query}")
    return page, log, fetched


def _row_ids(page) -> list[str]:
    return [json.loads(i)["index"] for i in page.eval_on_selector_all(
        ".pg-compare-table tbody tr", "(rows) => rows.map((r) => r.id)")]


def _drawn(page, kind: str) -> list[dict]:
    return page.evaluate(f"""() => {GD}.data.filter((t) => t.meta && t.meta.pg === '{kind}')
        .map((t) => ({{id: t.meta.id, x: Array.from(t.x), y: Array.from(t.y)}}))""")


def test_a_long_link_with_repeats_opens_each_point_once_capped_and_drawn_at_once(shared_site, browser):
    by_id = shared_site["by_id"]
    # 105 different ids (5 past the cap of 100), most listed out of order, some repeated
    order = [f"p{i:03d}" for i in [7, 3, 7, 0, *range(1, 105), 3, 104, 50]]
    expected = list(dict.fromkeys(order))[:100]
    assert len(set(order)) == 105 and len(order) - len(set(order)) == 6
    page, log, fetched = _open(browser, "ids=" + ",".join(order))
    page.wait_for_function(f"(n) => {GD} && {GD}.data && "
                           f"{GD}.data.filter((t) => t.meta && t.meta.pg === 'point').length === n",
                           arg=len(expected), timeout=60_000)
    page.wait_for_function("(n) => document.querySelectorAll('.pg-compare-table tbody tr').length === n",
                           arg=len(expected), timeout=30_000)
    # the list: each id once, in the order it first appears in the link, the first 100 of them
    assert _row_ids(page) == expected
    assert page.locator(".pg-compare-table .pg-cmp-prompt").all_inner_texts() == [
        by_id[i]["instruction"] for i in expected]
    assert page.evaluate("() => window.llmPlayground.gens.map((g) => g.id)") == expected
    # the message: how many were dropped and what the cap is; the repeats opened once
    assert page.inner_text("#pg-ids-capped") == (
        "This link lists 105 saved points; the playground opens at most 100 at once, so the last 5 were dropped.")
    assert page.inner_text("#pg-ids-duplicates") == "6 repeated ids in the link opened once."
    assert page.locator("#pg-ids-capped").is_visible()
    # the map: every point's star at its saved place, every generation's path, in the list's order
    stars = _drawn(page, "point")
    assert [s["id"] for s in stars] == expected
    assert [(s["x"], s["y"]) for s in stars] == [([by_id[i]["x"]], [by_id[i]["y"]]) for i in expected]
    paths = _drawn(page, "path")
    gen_ids = [i for i in expected if by_id[i].get("tokens")]
    assert [p["id"] for p in paths] == gen_ids and len(gen_ids) == 34
    for p in paths:
        assert p["x"] == [by_id[p["id"]]["x"]] + [t["x"] for t in by_id[p["id"]]["tokens"]]
    # drawn at once: one draw put them all on the map, from the points sent with the page (no
    # request per point)
    shared = page.evaluate("() => window.llmPlayground.shared")
    assert shared["draws"] == 1 and sorted(shared["ids"]) == sorted(expected)
    assert fetched == []
    # the last point of the list is the current one: its neighbour lines and expected accuracy
    page.wait_for_function(f"(id) => {GD}.data.some((t) => t.meta && t.meta.pg === 'neighbours' && t.meta.id === id)",
                           arg=expected[-1], timeout=30_000)
    assert page.locator("#pg-neighbour-list li").count() == 3
    # the URL now holds the list as opened (the dropped and repeated ids gone)
    page.wait_for_function("(n) => (new URLSearchParams(location.search).get('ids') || '').split(',').length === n",
                           arg=len(expected), timeout=20_000)
    assert parse_qs(urlparse(page.url).query)["ids"] == [",".join(expected)]
    assert log.take() == []
    page.close()


def test_a_short_link_has_no_message_and_keeps_its_order(shared_site, browser):
    ids = ["p010", "p002", "p006"]
    page, log, fetched = _open(browser, "ids=" + ",".join(ids))
    page.wait_for_function(f"() => {GD} && {GD}.data && "
                           f"{GD}.data.filter((t) => t.meta && t.meta.pg === 'point').length === 3", timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('.pg-compare-table tbody tr').length === 3",
                           timeout=30_000)
    assert _row_ids(page) == ids and [s["id"] for s in _drawn(page, "point")] == ids
    assert [p["id"] for p in _drawn(page, "path")] == ["p006"]
    assert page.locator("#pg-ids-capped").count() == 0 and page.locator("#pg-ids-duplicates").count() == 0
    assert fetched == []
    # the table's buttons: hide takes the point off the map (the row stays, dimmed), remove drops it
    row = page.locator(".pg-compare-table tbody tr").nth(1)
    row.get_by_role("button", name="hide").click()
    page.wait_for_function(f"() => !{GD}.data.some((t) => t.meta && t.meta.id === 'p002')", timeout=20_000)
    assert [s["id"] for s in _drawn(page, "point")] == ["p010", "p006"]
    assert row.get_attribute("class") == "pg-hidden" and row.get_by_role("button", name="show").count() == 1
    row.get_by_role("button", name="show").click()
    page.wait_for_function(f"() => {GD}.data.filter((t) => t.meta && t.meta.pg === 'point').length === 3",
                           timeout=20_000)
    page.locator(".pg-compare-table tbody tr").nth(0).get_by_role("button", name="remove").click()
    page.wait_for_function("() => document.querySelectorAll('.pg-compare-table tbody tr').length === 2",
                           timeout=20_000)
    assert _row_ids(page) == ["p002", "p006"] and [s["id"] for s in _drawn(page, "point")] == ["p002", "p006"]
    page.wait_for_function("() => new URLSearchParams(location.search).get('ids') === 'p002,p006'", timeout=20_000)
    assert log.take() == []
    page.close()
