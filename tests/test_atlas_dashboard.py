"""The completion view and the token map in the dashboard: the data layer, then the pages in real
headless Chromium with a tiny-model run (completion view + token atlas), the real API and worker."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pandas as pd
import pytest

from conftest import dolly_rows, write_jsonl
from dashboard.data import RunRegistry, nearest_train_distance
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser
from interfaces.cli import main
from llm_maps.errors import LLMMapsError
from test_playground import GD, job, submit, traces, wait_status

MGD = "document.querySelector('#map-graph .js-plotly-plot')"


@pytest.fixture(scope="module")
def views_run(tmp_path_factory, tiny_models):
    """40 Dolly rows, PCA maps, scored (so test rows' completions are their outputs), with the
    completion view (added after scoring) and the token atlas; layers 1-3, map layer 3."""
    root = tmp_path_factory.mktemp("views")
    data = write_jsonl(root / "d.jsonl", dolly_rows(40))
    run = root / "runs" / "tiny"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--token-atlas", "--no-progress"]) == 0
    assert main(["score", str(run), "--max-new-tokens", "3", "--no-progress"]) == 0
    assert main(["encode", str(run), "--view", "completion", "--no-progress"]) == 0
    return run


def test_views_in_the_data_layer(views_run):
    reg = RunRegistry([views_run])
    base = reg.load("tiny")
    assert base.views == ["prompt", "completion", "tokens"] and base.view == "prompt"
    comp = reg.load("tiny::completion")
    assert comp is base.for_view("completion") and comp.id == "tiny::completion" and comp.base_id == "tiny"
    ex = base.frame
    np.testing.assert_array_equal(comp.x, ex["x_completion"].to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(comp.dist, ex["dist_to_train_completion"].to_numpy(dtype=np.float32))
    assert list(comp.frame["nn_train_ids"].iloc[5]) == list(ex["nn_train_ids_completion"].iloc[5])
    # scored test rows are encoded with their outputs
    scored = (ex["split"] == "test") & ex["score"].notna()
    assert scored.any() and (ex.loc[scored, "completion_source"] == "output").all()
    assert (ex.loc[ex["split"] == "train", "completion_source"] == "reference").all()
    # another layer's distances come from the completion encodings, exactly
    enc = np.load(views_run / "encodings" / "completion" / "layer_1.npy")
    np.testing.assert_allclose(comp.distances(1), nearest_train_distance(enc, comp.is_train, "cosine"))
    assert not np.allclose(comp.distances(1), base.distances(1))
    tokens = reg.load("tiny::tokens")
    np.testing.assert_array_equal(tokens.x, ex["x_tokens"].to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(tokens.dist, base.dist)  # the token map keeps the prompt distances
    with pytest.raises(LLMMapsError, match="has no answer view"):
        reg.load("tiny::answer")


def test_api_says_what_paths_are_measured_against(views_run, tmp_path):
    from dashboard.app import create_app

    app = create_app([views_run], [], state_dir=tmp_path / "state")
    runs = app.server.test_client().get("/api/runs").get_json()["runs"]
    assert runs[0]["reference"] == "atlas" and runs[0]["views"] == ["prompt", "completion"]


@pytest.fixture(scope="module")
def site(views_run, tmp_path_factory):
    require_browser()
    from playwright.sync_api import sync_playwright

    from dashboard.app import create_app
    from pipelines.worker import serve_jobs

    state = tmp_path_factory.mktemp("state")
    app = create_app([views_run], [], state_dir=state)
    stop = threading.Event()
    worker = threading.Thread(target=serve_jobs, args=([views_run],), daemon=True,
                              kwargs=dict(state_dir=state, stop=stop, poll=0.02, log=lambda m: None))
    worker.start()
    with live_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        log = ConsoleLog(page)
        yield {"url": url, "page": page, "log": log, "state": state}
        browser.close()
    stop.set()
    worker.join(timeout=30)


def map_xy(page) -> list[float]:
    return page.evaluate(f"() => Array.from({MGD}._fullData[0].x)")


def test_view_switch_on_map_falloff_and_examples_is_kept_in_the_url(site, views_run):
    url, page, log = site["url"], site["page"], site["log"]
    ex = pd.read_parquet(views_run / "examples.parquet")
    page.goto(f"{url}/map?run=tiny")
    page.wait_for_function(f"() => {MGD} && {MGD}._fullData && {MGD}._fullData[0]._length === 40", timeout=30_000)
    assert sorted(map_xy(page)) == pytest.approx(sorted(ex["x"]), abs=1e-3)
    page.click("#view-picker")
    page.get_by_text("prompt + completion", exact=True).click()
    page.wait_for_function("() => location.search.includes('view=completion')", timeout=20_000)
    page.wait_for_function(f"() => {MGD} && {MGD}._fullData && {MGD}._fullData[0]._length === 40", timeout=30_000)
    assert sorted(map_xy(page)) == pytest.approx(sorted(ex["x_completion"]), abs=1e-3)
    # a colour change keeps view= (and run=) in the URL
    page.click("#map-colour")
    page.get_by_text("domain", exact=True).click()
    page.wait_for_function("() => location.search.includes('colour=domain')", timeout=20_000)
    assert "view=completion" in page.url and "run=tiny" in page.url
    page.goto(f"{url}/map?run=tiny&view=tokens&renderer=plotly")  # the WebGL map's default: tests/test_map_webgl.py
    page.wait_for_function(f"() => {MGD} && {MGD}._fullData && {MGD}._fullData[0]._length === 40", timeout=30_000)
    assert sorted(map_xy(page)) == pytest.approx(sorted(ex["x_tokens"]), abs=1e-3)
    # examples: the table's distances are the view's
    page.goto(f"{url}/examples?run=tiny&view=completion")
    page.wait_for_selector(".ag-row", timeout=30_000)
    page.locator(".ag-header-cell[col-id='dist_to_train']").click()  # sort ascending
    page.wait_for_timeout(800)
    first = page.locator(".ag-row[row-index='0'] .ag-cell[col-id='example_id']").inner_text()
    assert first == ex.loc[ex["dist_to_train_completion"].idxmin(), "example_id"]
    page.wait_for_function("() => location.search.includes('view=completion')", timeout=10_000)
    # falloff: drawn from the completion distances, the title says so
    page.goto(f"{url}/falloff?run=tiny&view=completion")
    page.wait_for_function("() => { const gd = document.querySelector('#falloff-graph .js-plotly-plot');"
                           " return gd && gd.layout && gd.layout.title && gd.layout.title.text.includes('completion view'); }",
                           timeout=30_000)
    assert "view=completion" in page.url
    assert log.take() == []


def test_playground_draws_paths_on_the_token_map(site, views_run):
    url, page, log = site["url"], site["page"], site["log"]
    page.goto(f"{url}/playground?run=tiny")
    page.wait_for_function(f"() => {GD} && {GD}.layout && ({GD}.layout.meta || {{}}).pg_map === 'tokens'",
                           timeout=30_000)
    job_id = submit(page, "Write a short poem about the sea", max_tokens=6)
    wait_status(page, job_id)
    final = job(url, job_id)["result"]
    assert final["reference"] == "atlas" and final["tokens"]
    toks = final["tokens"]
    page.wait_for_function(f"(n) => {GD}.data.some((t) => t.meta && t.meta.pg === 'path' && t.x.length === n)",
                           arg=len(toks) + 1, timeout=20_000)
    path = traces(page, "path")[0]
    assert path["x"][0] == pytest.approx(final["x_tokens"]) and path["x"][1:] == pytest.approx([t["x"] for t in toks])
    assert traces(page, "point")[0]["x"] == pytest.approx([final["x_tokens"]])
    # hovering a token: its nearest training step with a few tokens of context
    title = page.locator("#pg-stream .pg-tok").first.get_attribute("title")
    n = toks[0]["nearest"]
    assert f"nearest training step: {n['example_id']} #{n['position']}" in title
    assert f"[{n['token_text']}]" in title
    row = page.locator(".pg-compare-table tbody tr").first
    assert float(row.locator(".pg-cmp-max-dist").inner_text()) == pytest.approx(final["max_dist"], rel=1e-3)
    # the prompt map stays a choice: the point at its prompt-map place, no path there
    page.locator("#pg-map input[value='prompt']").check()  # clicks, then verifies the radio took it
    try:
        page.wait_for_function(f"() => ({GD}.layout.meta || {{}}).pg_map === 'prompt' && "
                               f"{GD}.data.some((t) => t.meta && t.meta.pg === 'point')", timeout=20_000)
    except Exception as e:  # say what the page shows (this wait timed out in full-suite runs only)
        state = page.evaluate(f"() => ({{meta: {GD}.layout.meta, traces: {GD}.data.map((t) => t.meta || null), "
                              "radio: Array.from(document.querySelectorAll('#pg-map input')).map((i) => [i.value, i.checked]), "
                              "url: location.href}})")
        raise AssertionError(f"map switch not drawn: {state}; console: {log.take()}") from e
    page.wait_for_timeout(300)
    assert traces(page, "point")[0]["x"] == pytest.approx([final["x"]]) and traces(page, "path") == []
    page.wait_for_function("() => location.search.includes('map=prompt')", timeout=10_000)
    assert log.take() == []


def test_saved_points_layer_and_export_draw_paths_on_the_token_map(site, views_run, tmp_path):
    from llm_maps.jobs import PointStore

    url, page, log = site["url"], site["page"], site["log"]
    saved = [p for p in PointStore(site["state"]).list("tiny") if p.get("tokens")]
    assert saved and saved[0]["reference"] == "atlas"
    user = (f"(kind) => {{ const gd = {MGD}; return gd && gd.data ? "
            "gd.data.filter((t) => t.meta && t.meta.user === kind).map((t) => Array.from(t.x)) : []; }")
    page.goto(f"{url}/map?run=tiny&view=tokens&mine=1&renderer=plotly")
    page.wait_for_function(f"() => ({user})('path').length === {len(saved)}", timeout=30_000)
    p = saved[0]
    assert page.evaluate(user, "path")[0] == pytest.approx([p["x_tokens"]] + [t["x"] for t in p["tokens"]])
    page.goto(f"{url}/map?run=tiny&mine=1")  # the prompt map: the point, not the token-map path
    page.wait_for_function(f"() => ({user})('point').length === {len(saved)}", timeout=30_000)
    assert page.evaluate(user, "path") == [] and page.evaluate(user, "point")[0] == pytest.approx([p["x"]])
    assert log.take() == []

    out = tmp_path / "map.html"
    assert main(["export", str(views_run), "--html", str(out), "--plotlyjs", "cdn", "--points", "all",
                 "--state", str(site["state"])]) == 0
    text = out.read_text()
    token_map = json.loads(re.search(r'Plotly\.newPlot\(\s*"token-map",\s*(\[.*?\]),\s*\{', text, re.S).group(1))
    paths = [t for t in token_map if (t.get("meta") or {}).get("user") == "path"]
    assert paths and paths[0]["x"] == pytest.approx([p["x_tokens"]] + [t["x"] for t in p["tokens"]])
    assert "nearest training step" in paths[0]["text"][1]
    prompt_map = json.loads(re.search(r'Plotly\.newPlot\(\s*"map",\s*(\[.*?\]),\s*\{', text, re.S).group(1))
    assert not [t for t in prompt_map if (t.get("meta") or {}).get("user") == "path"]
