"""The dashboard: data layer and pure figure/filter functions on runs written in the test, then the
pages in real headless Chromium (Playwright driving the system browser; nothing downloaded)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dashboard import figures as F
from dashboard.data import RunRegistry, falloff_for, load_run, nearest_train_distance
from dashboard.filters import Filters, filter_mask, selection_summary, view_rows
from dashboard.synthetic import write_synthetic_run
from dashboard.table import query_table
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser, selection_text
from llm_maps.falloff import falloff_stats, wilson_interval

XSS = "<script>alert(1)</script> **not bold** <b>raw tag</b> [link](http://example.com)\nsecond line"
N = 240


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash_runs")
    scored = write_synthetic_run(root / "scored", N, layers=(1, 2), prompts={0: XSS}, seed=1)
    unscored = write_synthetic_run(root / "unscored", 120, scored=False, seed=2)
    # a run with falloff.json as `llm-maps falloff` writes it (stats deliberately for 3 bins)
    withfile = write_synthetic_run(root / "withfile", 150, seed=3)
    data = RunRegistry([withfile]).load("withfile")
    test = ~data.is_train
    stats = falloff_stats(data.dist[test], data.correct.to_numpy(dtype=object, na_value=None)[test],
                          data.frame["domain"].to_numpy()[test], n_bins=3,
                          tasks=data.frame["task"].astype(str).to_numpy()[test])
    (withfile / "falloff.json").write_text(json.dumps({
        "format_version": 1, "split": "test", "n_bins": 3, "binning": "equal-count", "correct_threshold": 0.5,
        "variants": [{"layer": 2, "metric": "cosine", "default": True, "stats": stats}]}))
    broken = write_synthetic_run(root / "broken", 50, seed=4)
    (broken / "examples.parquet").write_bytes(b"this is not parquet")
    half = root / "half.partial"
    half.mkdir()
    return {"root": root, "scored": scored, "unscored": unscored, "withfile": withfile, "broken": broken}


@pytest.fixture(scope="module")
def scored_data(runs):
    return RunRegistry([runs["scored"]]).load("scored")


# --- data layer and pure functions ---------------------------------------------------------------

def test_registry_lists_good_broken_and_unfinished_runs(runs):
    reg = RunRegistry([], [runs["root"]])
    entries = {e.id: e for e in reg.entries()}
    assert set(entries) == {"broken", "scored", "unscored", "withfile", "half.partial"}
    assert entries["scored"].ok and entries["scored"].manifest["counts"]["examples"] == N
    assert "still being built" in entries["half.partial"].error
    with pytest.raises(Exception, match="unreadable Parquet"):
        reg.load("broken")
    assert reg.load("scored").n == N  # a broken run does not stop the others


def test_run_cache_is_bounded_and_keyed_on_files(runs):
    info = load_run.cache_info()
    assert info.maxsize is not None and info.maxsize <= 16
    a = RunRegistry([runs["scored"]]).load("scored")
    assert RunRegistry([runs["scored"]]).load("scored") is a


def test_concurrent_first_loads_read_a_run_once(tmp_path):
    import threading

    run = write_synthetic_run(tmp_path / "fresh", 90, seed=7)
    reg, barrier, got = RunRegistry([run]), threading.Barrier(6), []

    def visit():
        barrier.wait()
        got.append(reg.load("fresh"))

    misses = load_run.cache_info().misses
    threads = [threading.Thread(target=visit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(got) == 6 and all(d is got[0] for d in got)
    assert load_run.cache_info().misses == misses + 1


def test_warm_loads_the_runs_a_first_visit_opens(tmp_path):
    from dashboard.app import create_app
    from dashboard.points import points_payload, prepare_first_view

    a = write_synthetic_run(tmp_path / "given" / "a", 60, seed=8)
    broken = write_synthetic_run(tmp_path / "given" / "bad", 30, seed=9)
    (broken / "examples.parquet").write_bytes(b"nope")
    b = write_synthetic_run(tmp_path / "given" / "b", 70, seed=10)
    assert RunRegistry([a, broken, b]).warm(prepare=prepare_first_view) == ["a", "b"]  # the broken one is skipped
    loaded = RunRegistry([a]).load("a")
    assert "points_payload" in loaded._lazy and loaded._lazy["points_payload"] == points_payload(loaded)
    # a data folder: only the default run (the first good one), which /map opens without ?run=
    folder = tmp_path / "folder"
    for name, seed in (("c", 11), ("d", 12)):
        write_synthetic_run(folder / name, 40, seed=seed)
    assert RunRegistry([], [folder]).warm() == ["c"]
    # the served app warms in a background thread, and says so on /api/health; an app made for tests does not
    import threading

    gate = threading.Event()
    app = create_app([b, broken], [], warm=True)
    held = threading.Thread(target=gate.wait)  # stands in for a warm-up still loading
    held.start()
    real, app.server.config["LLM_MAPS_WARM"] = app.server.config["LLM_MAPS_WARM"], held
    client = app.server.test_client()
    r = client.get("/api/health")
    assert r.status_code == 503 and r.json["status"] == "warming" and r.headers["Retry-After"] == "1"
    gate.set()
    held.join(10)
    real.join(60)
    app.server.config["LLM_MAPS_WARM"] = real
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json == {"status": "ready", "runs": 2}
    assert "LLM_MAPS_WARM" not in create_app([b], []).server.config
    assert create_app([b], []).server.test_client().get("/api/health").json["status"] == "ready"
    # behind basic auth, probes still reach /api/health (and nothing else)
    guarded = create_app([b], [], auth="ann:s3cret").server.test_client()
    assert guarded.get("/api/health").status_code == 200 and guarded.get("/api/runs").status_code == 401
    # a run whose warm-up fails in an unexpected way is skipped, not the end of the warm-up
    assert RunRegistry([a, b]).warm(prepare=lambda d: {}["boom"] if d.id == "a" else None) == ["b"]


FORKED_WORKER = """
import json, os, sys, time
from pathlib import Path
from dashboard import data as D
from dashboard.app import create_app
run = Path(sys.argv[1])
app = create_app([run], [], warm=True)
app.server.config["LLM_MAPS_WARM"].join(60)
D._load_lock(str(run)).acquire()  # as if a warm-up were mid-load when gunicorn --preload forks
D._LOAD_LOCKS_GUARD.acquire()
pid = os.fork()
if pid == 0:
    try:
        client, deadline = app.server.test_client(), time.time() + 60
        while client.get("/api/health").status_code != 200 and time.time() < deadline:
            time.sleep(0.05)
        n = app.server.config["LLM_MAPS_REGISTRY"].load(run.name).n
        print(json.dumps({"n": n, "health": client.get("/api/health").json["status"],
                          "cached": D.load_run.cache_info().currsize}), flush=True)
    finally:
        os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_forked_worker_warms_itself_and_never_waits_on_the_parents_locks(tmp_path):
    run = write_synthetic_run(tmp_path / "forked", 80, seed=13)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", FORKED_WORKER, str(run)], capture_output=True, text=True,
                         timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"n": 80, "health": "ready", "cached": 1}


def test_filter_mask_counts_are_exact(scored_data):
    d, f = scored_data, scored_data.frame
    assert filter_mask(d, Filters.make(split=["test"])).sum() == (f["split"] == "test").sum()
    m = filter_mask(d, Filters.make(split=["test"], domain=["Chollet"]))
    assert m.sum() == ((f["split"] == "test") & (f["domain"] == "Chollet")).sum()
    tasks = sorted(f["task"].unique())[:2]
    m = filter_mask(d, Filters.make(task=tasks, score=[0.5, 1.0], dist=[0.0, 0.2]))
    expect = f["task"].isin(tasks) & (f["score"] >= 0.5) & (f["dist_to_train"] <= 0.2)
    assert m.sum() == expect.sum()
    assert filter_mask(d, Filters.make(search="PROMPT 17 of")).tolist() == (f["prompt"].str.startswith("Prompt 17 of")).tolist()
    assert filter_mask(d, Filters.make(search="<script>")).sum() == 1


def test_view_rows_samples_a_fixed_subset():
    x = np.arange(1000, dtype=np.float32)
    rows, sampled = view_rows(x, x, np.arange(1000), max_points=2000)
    assert not sampled and len(rows) == 1000
    rows, sampled = view_rows(x, x, np.arange(1000), max_points=100, seed=3)
    again, _ = view_rows(x, x, np.arange(1000), max_points=100, seed=3)
    assert sampled and len(rows) == 100 and np.array_equal(rows, again) and np.all(np.diff(rows) > 0)
    rows, sampled = view_rows(x, x, np.arange(1000), max_points=100, xrange=(10, 59.5), yrange=(0, 999))
    assert not sampled and rows.tolist() == list(range(10, 60))


def test_colour_specs(scored_data):
    rows = np.arange(scored_data.n)
    spec = F.colour_spec(scored_data, "domain", rows)
    assert not spec.continuous and spec.values.tolist() == scored_data.cats["domain"].codes.tolist()
    assert [n for n, _ in spec.legend] == ["Chollet", "Reasoning"]
    assert spec.colorscale == [[0.0, "#e6550d"], [0.5, "#e6550d"], [0.5, "#3182bd"], [1.0, "#3182bd"]]
    corr = F.colour_spec(scored_data, "correct", rows)
    test = ~scored_data.is_train
    assert set(corr.values[scored_data.is_train].tolist()) == {0}
    assert set(corr.values[test].tolist()) <= {1, 2}
    score = F.colour_spec(scored_data, "score", rows)
    assert score.continuous and (score.cmin, score.cmax) == (0.0, 1.0)
    out_len = F.colour_spec(scored_data, "out_len", rows)
    assert out_len.continuous and np.isfinite(out_len.values).all()


def test_map_figure_uses_typed_arrays_and_fixed_slots(scored_data):
    rows = np.flatnonzero(~scored_data.is_train)
    fig = F.map_figure(scored_data, rows, F.colour_spec(scored_data, "split", rows))
    js = fig.to_plotly_json()
    assert len(js["data"]) == F.LEGEND0 + F.LEGEND_SLOTS
    payload = fig.to_json()
    assert '"bdata"' in payload  # numpy arrays travel as base64 typed arrays
    assert len(fig.data[F.POINTS].x) == len(rows)
    assert list(fig.data[F.POINTS].customdata) == rows.tolist()
    assert js["data"][F.POINTS]["x"]["dtype"] == "f4" and js["data"][F.POINTS]["customdata"]["dtype"] == "i4"
    # every row in order: no customdata (row = point number), and small runs carry hover text
    full = F.map_figure(scored_data, np.arange(scored_data.n), F.colour_spec(scored_data, "split", np.arange(scored_data.n)))
    assert full.data[F.POINTS].customdata is None and len(full.data[F.POINTS].text) == scored_data.n
    ta = F.typed_array(np.array([1, 2, 3], dtype=np.uint8))
    assert ta == {"dtype": "u1", "bdata": "AQID"}


def test_points_payload_round_trips_and_matches_the_server_arrays(runs, scored_data):
    from dashboard.app import create_app
    from dashboard.points import pack, unpack

    header, arrays = unpack(pack({"a": 1}, {"u": np.array([1, 2, 3], np.uint8), "f": np.array([0.5, np.nan], np.float32)}))
    assert header == {"a": 1} and arrays["u"].tolist() == [1, 2, 3] and np.isnan(arrays["f"][1])
    client = create_app([runs["scored"]], []).server.test_client()
    r = client.get("/_llm_maps/points?run=scored")
    assert r.status_code == 200 and r.mimetype == "application/octet-stream"
    header, arrays = unpack(r.data)
    assert header["n"] == N and header["hover"] == scored_data.hover.tolist()
    assert np.array_equal(arrays["x"], scored_data.x) and np.array_equal(arrays["cat_task"], scored_data.cats["task"].codes)
    np.testing.assert_array_equal(arrays["score"], scored_data.score)
    assert header["options"]["domain"]["colours"] == ["#e6550d", "#3182bd"]
    assert header["names"]["split"] == ["test", "train"]
    r = client.get("/_llm_maps/dist?run=scored&layer=1")
    assert r.status_code == 200
    np.testing.assert_array_equal(np.frombuffer(r.data, np.float32), scored_data.distances(1))
    assert client.get("/_llm_maps/points?run=nope").status_code == 404


def test_search_hits_bitmask_and_full_ranges(scored_data):
    import base64

    from dashboard.filters import active_range, search_hits, value_bounds

    hits = search_hits(scored_data, " prompt 17 of ")
    bits = np.unpackbits(np.frombuffer(base64.b64decode(hits["bits"]), np.uint8), bitorder="little")[:scored_data.n]
    assert hits["q"] == "prompt 17 of" and bits.astype(bool).tolist() == filter_mask(scored_data, Filters.make(search="prompt 17 of")).tolist()
    assert search_hits(scored_data, "  ") is None
    lo, hi = value_bounds(scored_data.dist)
    assert active_range([lo, hi], (lo, hi)) is None and active_range([lo, 0.1], (lo, hi)) == [lo, 0.1]


def test_selection_summary_accuracy_and_interval(scored_data):
    rows = np.arange(60)
    s = selection_summary(scored_data, rows)
    codes = scored_data.cats["correct"].codes[rows]
    k, n = int((codes == 1).sum()), int(((codes == 1) | (codes == 2)).sum())
    assert s["count"] == 60 and s["scored"] == n and s["correct"] == k
    assert (s["low"], s["high"]) == pytest.approx(wilson_interval(k, n))
    assert sum(c for _, c in s["tasks"]) <= 60 and s["n_tasks"] >= len(s["tasks"])
    # the interval over the scored rows' tasks (a task bootstrap, recomputed): selection_text's numbers
    from dashboard.filters import accuracy_words
    from dashboard_helpers import selection_text

    assert f"{s['count']} selected ({s['train']} train) · {accuracy_words(s)}" == selection_text(scored_data, rows)
    scored = (codes == 1) | (codes == 2)
    assert s["n_tasks_scored"] == len(set(scored_data.frame["task"].astype(str).to_numpy()[rows][scored]))


def test_table_query_sorts_filters_and_pages_on_the_server(scored_data):
    out = query_table(scored_data, {"startRow": 0, "endRow": 10, "sortModel": [{"colId": "dist_to_train", "sort": "desc"}],
                                    "filterModel": {"split": {"filterType": "text", "type": "equals", "filter": "test"}}})
    f = scored_data.frame
    test = f[f["split"] == "test"]
    assert out["rowCount"] == len(test)
    assert [r["example_id"] for r in out["rowData"]] == test.sort_values("dist_to_train", ascending=False)["example_id"][:10].tolist()
    out = query_table(scored_data, {"startRow": 5, "endRow": 8, "filterModel": {
        "score": {"filterType": "number", "type": "greaterThanOrEqual", "filter": 0.5}}})
    assert out["rowCount"] == int((f["score"] >= 0.5).sum()) and len(out["rowData"]) == 3


def test_falloff_from_file_or_on_the_fly(runs, scored_data):
    withfile = RunRegistry([runs["withfile"]]).load("withfile")
    stats, source = falloff_for(withfile, n_bins=3)
    assert source == "from falloff.json" and len(stats["all"]["bins"]) == 3
    stats5, source5 = falloff_for(withfile, n_bins=5)
    assert source5 == "computed on the fly" and len(stats5["all"]["bins"]) == 5
    stats, source = falloff_for(scored_data, n_bins=4)
    test = ~scored_data.is_train
    assert stats["all"]["n"] == int(test.sum()) and {"Chollet", "Reasoning"} <= set(stats)
    # another stored layer: distances computed exactly from the memory-mapped encodings
    stats1, source1 = falloff_for(scored_data, layer=1, n_bins=4)
    assert source1 == "computed on the fly" and stats1["all"]["n"] == int(test.sum())
    unscored = RunRegistry([runs["unscored"]]).load("unscored")
    assert falloff_for(unscored) == (None, "no scores yet")


def test_a_falloff_file_with_unclustered_trends_is_recomputed_clustered(tmp_path):
    """falloff.json written before trends were task-clustered (no `clusters`): the page does not show
    its examples-independent intervals, it recomputes the trends task-clustered."""
    old = write_synthetic_run(tmp_path / "old", 150, seed=3)
    data = RunRegistry([old]).load("old")
    test = ~data.is_train
    args = (data.dist[test], data.correct.to_numpy(dtype=object, na_value=None)[test],
            data.frame["domain"].to_numpy()[test])
    (old / "falloff.json").write_text(json.dumps({
        "format_version": 1, "split": "test", "n_bins": 3, "binning": "equal-count", "correct_threshold": 0.5,
        "variants": [{"layer": 2, "metric": "cosine", "default": True, "stats": falloff_stats(*args, n_bins=3)}]}))
    stats, source = falloff_for(RunRegistry([old]).load("old"), n_bins=3)
    clustered = falloff_stats(*args, n_bins=3, tasks=data.frame["task"].astype(str).to_numpy()[test])
    assert source == "computed on the fly"
    for group in ("all", "Chollet", "Reasoning"):
        assert stats[group]["trend"]["slope_se"] == pytest.approx(clustered[group]["trend"]["slope_se"])
        assert stats[group]["trend"]["clusters"] == clustered[group]["trend"]["clusters"] > 2


def test_online_distances_match_brute_force(scored_data):
    enc = np.asarray(scored_data.run.encodings(1), dtype=np.float64)
    train = np.flatnonzero(scored_data.is_train)
    got = nearest_train_distance(scored_data.run.encodings(1), scored_data.is_train, "euclidean")
    full = np.sqrt(((enc[:, None, :] - enc[None, train, :]) ** 2).sum(-1))
    full[train, np.arange(len(train))] = np.inf
    np.testing.assert_allclose(got, full.min(1), rtol=1e-3, atol=1e-3)


def test_web_process_never_imports_torch():
    code = ("import sys; import dashboard.app as a; app = a.create_app([], []); import dashboard.export; "
            "bad = [m for m in ('torch', 'transformers', 'pipelines') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_basic_auth_from_environment(runs, monkeypatch):
    from dashboard.app import create_app

    monkeypatch.setenv("LLM_MAPS_AUTH", "ann:s3cret")
    client = create_app([runs["scored"]], []).server.test_client()
    assert client.get("/runs").status_code == 401
    import base64

    good = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ann:nope").decode()}
    assert client.get("/runs", headers=bad).status_code == 401
    assert client.get("/runs", headers=good).status_code == 200


def test_export_writes_one_small_standalone_file(runs, tmp_path):
    from interfaces.cli import main

    out = tmp_path / "scored.html"
    assert main(["export", str(runs["scored"]), "--html", str(out), "--plotlyjs", "cdn"]) == 0
    text = out.read_text()
    assert text.count("Plotly.newPlot") == 2 and 'id="map"' in text and 'id="falloff"' in text
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)" in text
    assert out.stat().st_size < 400_000
    inline = tmp_path / "inline.html"
    assert main(["export", str(runs["unscored"]), "--html", str(inline)]) == 0
    assert "No falloff plot: no scores yet" in inline.read_text()


def test_every_dashboard_asset_ships_in_the_package():
    """A wheel (non-editable install) carries every file the pages load, the plotly bundle included."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).resolve().parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dashboard"]
    files = [p.relative_to(root / "dashboard").as_posix() for p in (root / "dashboard" / "assets").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert "assets/vendor/plotly-llm-maps.min.js" in files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert missing == []


def test_serve_command_binds_localhost(runs):
    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", str(runs["scored"]), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/runs", timeout=5) as r:
                    assert r.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
                time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.url.endswith("/map")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- in the browser ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser_page(runs):
    require_browser()
    from playwright.sync_api import sync_playwright

    from dashboard.app import create_app

    app = create_app([runs["scored"], runs["unscored"], runs["withfile"], runs["broken"]], [])
    with live_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        log = ConsoleLog(page)
        page.callbacks = []  # the Dash callbacks the page asked the server for: their outputs
        page.on("request", lambda r: page.callbacks.append(json.loads(r.post_data or "{}").get("output", ""))
                if "_dash-update-component" in r.url else None)
        yield url, page, log
        browser.close()


GD = "document.querySelector('#map-graph .js-plotly-plot')"
FGD = "document.querySelector('#falloff-graph .js-plotly-plot')"


def _wait_points(page, n: int | None = None, timeout: int = 20_000):
    cond = f"{GD} && {GD}._fullData && {GD}._fullData[0]" + (f" && {GD}._fullData[0]._length === {n}" if n is not None else "")
    page.wait_for_function("() => " + cond, timeout=timeout)
    return page.evaluate(f"() => {GD}._fullData[0]._length")


def _settle(page):
    page.wait_for_function("() => !document.querySelector('._dash-loading-callback')", timeout=20_000)
    page.wait_for_timeout(300)


def _drawn_rows(page) -> list[int]:
    """The rows drawn as points (customdata, or every row in order when there is none)."""
    return page.evaluate(f"""() => {{ const t = {GD}._fullData[0];
        return t.customdata ? Array.from(t.customdata) : Array.from({{length: t._length}}, (_, i) => i); }}""")


def _mask(data, **kw):
    return np.flatnonzero(filter_mask(data, Filters.make(**kw))).tolist()


def test_map_page_loads_colours_and_filters(browser_page, scored_data):
    url, page, log = browser_page
    page.callbacks.clear()
    page.goto(f"{url}/map?run=scored")
    assert _wait_points(page, N) == N
    _settle(page)
    # the first figure comes with the page: no callback draws it
    assert not [c for c in page.callbacks if "map-graph.figure" in c]
    before = page.evaluate(f"() => {GD}._fullData[0].marker.colorscale")
    assert before == F.colour_spec(scored_data, "split", np.arange(N)).colorscale
    page.wait_for_function("() => window.llmMapsState.payloads.scored")
    page.callbacks.clear()
    # recolour by domain, in the browser: the marker colours become the domain codes, the legend follows
    page.click("#map-colour")
    page.get_by_role("option", name="domain", exact=True).click()
    page.wait_for_function(f"() => JSON.stringify({GD}._fullData[0].marker.colorscale).includes('#e6550d')")
    colours = page.evaluate(f"() => Array.from({GD}._fullData[0].marker.color)")
    order = F.draw_order(scored_data, np.arange(N))  # train rows first: test points drawn above them
    assert _drawn_rows(page) == order.tolist()
    assert colours == scored_data.cats["domain"].codes[order].tolist()
    legend = page.evaluate(f"() => {GD}._fullData.filter(t => t.showlegend).map(t => t.name)")
    assert legend == ["Chollet", "Reasoning"]
    # filter: only test points, only one domain -> exactly those rows, still coloured by domain
    page.get_by_label("train", exact=True).uncheck()
    n_test = int((~scored_data.is_train).sum())
    assert _wait_points(page, n_test) == n_test
    page.click("#map-domain")
    page.get_by_role("option", name="Reasoning", exact=True).click()
    expect = _mask(scored_data, split=["test"], domain=["Reasoning"])
    assert _wait_points(page, len(expect)) == len(expect)
    assert _drawn_rows(page) == expect
    assert page.evaluate(f"() => Array.from({GD}._fullData[0].marker.color)") == \
        scored_data.cats["domain"].codes[expect].tolist()
    assert page.evaluate(f"() => {GD}._fullLayout.title.text") == f"{len(expect)} of {N} examples"
    page.wait_for_function("() => window.location.search.includes('domain=Reasoning')")
    assert "split=test" in page.url and "colour=domain" in page.url
    assert page.callbacks == []  # recolour and filter never asked the server
    # continuous colour on another layer: distances of layer 1, scale bounds exactly as the server's
    page.click("#map-layer")
    page.get_by_role("option", name="layer 1", exact=True).click()
    page.click("#map-colour")
    page.get_by_role("option", name="distance to train", exact=True).click()
    page.wait_for_function(f"() => {GD}.layout.legend.title.text === 'distance to train' && {GD}._fullData[0].marker.showscale")
    spec = F.colour_spec(scored_data, "dist", np.array(expect), scored_data.distances(1))
    got = page.evaluate(f"() => {{ const m = {GD}._fullData[0].marker; return [Array.from(m.color), m.cmin, m.cmax]; }}")
    assert got[0] == spec.values.tolist() and (got[1], got[2]) == (spec.cmin, spec.cmax)
    # text search runs on the server (a bitmask of hits), the rest stays in the browser
    page.fill("#map-search", "Prompt 1")
    page.press("#map-search", "Enter")
    expect = _mask(scored_data, split=["test"], domain=["Reasoning"], search="Prompt 1")
    assert 0 < len(expect) < n_test and _wait_points(page, len(expect)) == len(expect)
    assert _drawn_rows(page) == expect
    assert [c for c in page.callbacks if "map-graph.figure" in c] == []
    assert log.take() == []


def _pixel(page, row: int) -> list[float]:
    return page.evaluate(f"""() => {{ const gd = {GD}; const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        const t = gd._fullData[0]; const i = t.customdata ? Array.from(t.customdata).indexOf({row}) : {row};
        return [box.left + xa.l2p(t.x[i]), box.top + ya.l2p(t.y[i])]; }}""")


def test_clicking_a_point_shows_its_neighbours(browser_page, scored_data):
    url, page, log = browser_page
    page.goto(f"{url}/map?run=scored")
    _wait_points(page, N)
    _settle(page)
    row = 17
    # click the point at its pixel position (Plotly's own hit test on the WebGL trace)
    pos = _pixel(page, row)
    page.mouse.move(pos[0], pos[1])
    page.mouse.click(pos[0], pos[1])
    page.wait_for_selector("#drill-panel-content", timeout=15_000)
    clicked = page.inner_text("#drill-panel-content h6")
    clicked_row = scored_data.row_of(clicked.replace("Example", "").strip())
    assert np.hypot(scored_data.x[clicked_row] - scored_data.x[row], scored_data.y[clicked_row] - scored_data.y[row]) < 1.0
    nbrs = scored_data.neighbours(clicked_row)
    items = page.locator(".drill-neighbours li code").all_inner_texts()
    assert items == [scored_data.frame["example_id"].iloc[j] for j, _ in nbrs]
    page.wait_for_function(f"() => {GD}._fullData[1].x.length === {3 * len(nbrs)}")
    ends = page.evaluate(f"() => Array.from({GD}._fullData[1].x)")
    assert ends[1::3] == pytest.approx([float(scored_data.x[j]) for j, _ in nbrs])
    page.wait_for_function("(sel) => new URLSearchParams(location.search).get('sel') === sel", arg=clicked.split()[-1])
    assert log.take() == []


def _gap_edge(values: np.ndarray, target: float, window: float) -> float:
    """A coordinate near ``target`` in the middle of the widest gap between points (so a box edge
    there cannot be a pixel away from deciding a point)."""
    v = np.sort(values[(values > target - window) & (values < target + window)])
    i = int(np.argmax(np.diff(v)))
    return float((v[i] + v[i + 1]) / 2)


def test_box_selection_summarises_exactly_the_points_in_the_box(browser_page, scored_data):
    url, page, log = browser_page
    page.goto(f"{url}/map?run=scored")
    _wait_points(page, N)
    _settle(page)
    d = scored_data
    xs, ys = d.x.astype(np.float64), d.y.astype(np.float64)
    wx, wy = (xs.max() - xs.min()) * 0.05, (ys.max() - ys.min()) * 0.05
    x0, x1 = _gap_edge(xs, np.quantile(xs, 0.2), wx), _gap_edge(xs, np.quantile(xs, 0.8), wx)
    y0, y1 = _gap_edge(ys, np.quantile(ys, 0.2), wy), _gap_edge(ys, np.quantile(ys, 0.8), wy)
    page.evaluate(f"() => Plotly.relayout({GD}, {{dragmode: 'select'}})")
    corners = page.evaluate(f"""() => {{ const gd = {GD}; const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const box = gd.querySelector('.nsewdrag').getBoundingClientRect();
        return [[box.left + xa.l2p({x0}), box.top + ya.l2p({y1})], [box.left + xa.l2p({x1}), box.top + ya.l2p({y0})]]; }}""")
    page.mouse.move(*corners[0])
    page.mouse.down()
    page.mouse.move(*corners[1], steps=8)
    page.mouse.up()
    page.wait_for_selector("#selection-count", timeout=15_000)
    sel = page.evaluate(f"() => {GD}.layout.selections[0]")
    bx, by = sorted([sel["x0"], sel["x1"]]), sorted([sel["y0"], sel["y1"]])
    inside = (xs > bx[0]) & (xs < bx[1]) & (ys > by[0]) & (ys < by[1])
    rows = np.flatnonzero(inside)
    assert 10 < len(rows) < N
    # the exact numbers, computed here from the frame
    f = d.frame.iloc[rows]
    assert page.inner_text("#selection-count") == selection_text(d, rows)
    tasks = f["task"].astype(str).value_counts()  # the tasks present (the frame holds them as categories)
    top = sorted(tasks.items(), key=lambda kv: (-kv[1], kv[0]))[:8]
    assert page.locator("#selection-tasks li").all_inner_texts() == [f"{t} ({c})" for t, c in top]
    assert log.take() == []


def _download(page, url: str, ready: str, button: str):
    """Click a download button in a fresh tab (Chromium limits automatic downloads per tab);
    returns (file name, bytes)."""
    tab = page.context.new_page()
    try:
        log = ConsoleLog(tab)
        tab.goto(url)
        tab.wait_for_function(f"() => {ready}", timeout=20_000)
        tab.wait_for_timeout(300)
        with tab.expect_download() as dl:
            tab.click(button)
        body = open(dl.value.path(), "rb").read()
        assert log.take() == []
        return dl.value.suggested_filename, body
    finally:
        tab.close()


def test_figures_export_png_and_svg(browser_page):
    url, page, _ = browser_page
    drawn = f"{GD} && {GD}._fullData && {GD}._fullData[0]._length === {N}"
    name, svg = _download(page, f"{url}/map?run=scored", drawn, "#map-graph-svg")
    svg = svg.decode("utf-8")
    assert name == "llm-maps-map.svg"
    assert svg.startswith("<svg") and "of 240 examples" in svg and "<image" in svg  # WebGL points as an image
    name, png = _download(page, f"{url}/map?run=scored", drawn, "#map-graph-png")
    assert name == "llm-maps-map.png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    name, svg = _download(page, f"{url}/falloff?run=scored", "document.querySelector('#falloff-source-text')",
                          "#falloff-graph-svg")
    assert name == "llm-maps-falloff.svg" and svg.startswith(b"<svg") and b"accuracy" in svg


# WCAG contrast of each element's text against the first opaque background behind it (text
# colour alpha-composited over that background); the smallest of them.
MIN_CONTRAST = """(selectors) => {
  const rgba = (c) => (c.match(/[\\d.]+/g) || []).map(Number).concat([1]).slice(0, 4);
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                       return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const out = {};
  for (const sel of selectors) {
    const el = document.querySelector(sel);
    let bg = [255, 255, 255, 1];
    for (let e = el; e; e = e.parentElement) {
      const b = rgba(getComputedStyle(e).backgroundColor);
      if (b[3] >= 0.99) { bg = b; break; }
    }
    const t = rgba(getComputedStyle(el).color);
    const fg = [0, 1, 2].map((i) => t[i] * t[3] + bg[i] * (1 - t[3]));
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    out[sel] = Math.round((a + 0.05) / (b + 0.05) * 10) / 10;
  }
  return out;
}"""
CONTROLS = ["#map-colour .dash-dropdown-value-item", "#map-split .dash-options-list-option-text",
            "#map-score .dash-range-slider-min-input", "#map-search"]


def test_dark_theme_switches_the_figures(browser_page):
    import plotly.io as pio

    url, page, log = browser_page
    dark_bg = pio.templates["plotly_dark"].layout.paper_bgcolor
    light_bg = pio.templates["plotly_white"].layout.paper_bgcolor
    page.goto(f"{url}/map?run=scored")
    _wait_points(page, N)
    _settle(page)
    assert page.evaluate(f"() => {GD}._fullLayout.paper_bgcolor") == light_bg
    try:
        light = page.evaluate(MIN_CONTRAST, CONTROLS)
        page.locator("#theme-dark").check()
        page.wait_for_function(f"() => {GD}._fullLayout.paper_bgcolor === '{dark_bg}'")
        assert page.evaluate("() => document.documentElement.getAttribute('data-bs-theme')") == "dark"
        page.wait_for_timeout(300)  # the dark stylesheet has loaded
        dark = page.evaluate(MIN_CONTRAST, CONTROLS)
        # the controls stay readable (WCAG AA: 4.5) in both themes, and really changed colour
        assert min(light.values()) >= 4.5 and min(dark.values()) >= 4.5, (light, dark)
        colour_of = "() => getComputedStyle(document.querySelector('#map-colour .dash-dropdown-value-item')).color"
        assert page.evaluate(colour_of) != "rgba(0, 9, 38, 0.9)"
        page.goto(f"{url}/examples?run=scored")  # the table follows the theme
        page.wait_for_selector(".ag-row[row-index='0'] .ag-cell", timeout=20_000)
        grid = page.evaluate(MIN_CONTRAST, [".ag-row[row-index='0'] .ag-cell"])
        assert list(grid.values())[0] >= 4.5
        bg = page.evaluate("() => getComputedStyle(document.querySelector('.ag-root-wrapper')).backgroundColor")
        assert sum(map(float, bg[bg.index("(") + 1:bg.index(")")].split(",")[:3])) < 3 * 100, bg  # dark
        page.goto(f"{url}/falloff?run=scored")  # a figure drawn by the server comes dark too
        page.wait_for_selector("#falloff-source-text", timeout=20_000)
        page.wait_for_function(f"() => {FGD} && {FGD}._fullLayout.paper_bgcolor === '{dark_bg}'")
        page.goto(f"{url}/map?run=scored")  # and the map is built dark from the start (cookie)
        _wait_points(page, N)
        assert page.evaluate(f"() => {GD}.layout.template.layout.paper_bgcolor") == dark_bg
        page.locator("#theme-dark").uncheck()
        page.wait_for_function(f"() => {GD}._fullLayout.paper_bgcolor === '{light_bg}'")
    finally:
        if page.locator("#theme-dark").is_checked():
            page.locator("#theme-dark").uncheck()
    assert log.take() == []


def test_url_restores_the_view_and_user_text_is_literal(browser_page, scored_data):
    url, page, log = browser_page
    sel = scored_data.frame["example_id"].iloc[0]
    page.goto(f"{url}/map?run=scored&colour=correct&split=test&sel={sel}")
    n_test = int((~scored_data.is_train).sum())
    assert _wait_points(page, n_test) == n_test
    assert page.inner_text("#map-colour") .strip() == "correctness"
    page.wait_for_function(f"() => {GD}._fullData[1].x.length === {3 * len(scored_data.neighbours(0))}")
    prompt = page.locator(".drill-prompt")
    assert prompt.inner_text() == XSS
    assert page.locator("#map-drill script, #map-drill b, #map-drill strong, #map-drill a[href='http://example.com']").count() == 0
    assert log.dialogs == []
    assert log.take() == []


def test_page_state_reaches_the_url_after_the_frame_last_write_wins(browser_page):
    """The URL is written once the frame a change draws is on screen: of several writes before it,
    only the last, with one replaceState; what reads the URL meanwhile sees the state last written;
    navigating drops a write still waiting; a hidden tab (no animation frames) still gets it."""
    url, page, log = browser_page
    page.goto(f"{url}/map?run=scored")
    _wait_points(page, N)
    page.wait_for_timeout(500)  # the page's own first write
    page.evaluate("""() => { window.__writes = [];
      const r = history.replaceState.bind(history);
      history.replaceState = (s, t, u) => { window.__writes.push(String(u)); return r(s, t, u); }; }""")
    L = "window.dash_clientside.llm_maps"
    before = page.evaluate("() => location.search")
    got = page.evaluate(f"""() => {{
      {L}._write({{run: 'scored', colour: 'domain'}});
      {L}._write({{run: 'scored', colour: 'task', split: ['test']}});
      return [location.search, {L}._search(), window.__writes.length]; }}""")
    assert got == [before, "?run=scored&colour=task&split=test", 0]
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)))")
    assert page.evaluate("() => [location.search, window.__writes]") == \
        ["?run=scored&colour=task&split=test", ["/map?run=scored&colour=task&split=test"]]
    # the same state again: nothing to write
    page.evaluate(f"() => {L}._write({{run: 'scored', colour: 'task', split: ['test']}})")
    assert page.evaluate(f"() => {L}._search()") == "?run=scored&colour=task&split=test"
    page.wait_for_timeout(400)
    assert page.evaluate("() => window.__writes.length") == 1
    # no animation frames (a hidden tab): written all the same, a moment later
    page.evaluate(f"""() => {{ window.__raf = window.requestAnimationFrame; window.requestAnimationFrame = () => 0;
      {L}._write({{run: 'scored', colour: 'domain'}}); window.requestAnimationFrame = window.__raf; }}""")
    page.wait_for_function("() => location.search === '?run=scored&colour=domain'", timeout=2_000)
    assert page.evaluate("() => window.__writes.length") == 2
    # a move to another page of the app (the navigation bar's links: pushState) before the write
    page.evaluate(f"""() => {{ {L}._write({{run: 'scored', colour: 'correct'}});
      history.pushState(null, '', '/falloff?run=scored'); }}""")
    page.wait_for_timeout(400)
    assert page.evaluate("() => [location.pathname + location.search, window.__writes.length]") == \
        ["/falloff?run=scored", 2]
    page.goto(f"{url}/map?run=scored")
    _wait_points(page, N)
    page.wait_for_timeout(1000)  # the page's own first write (its callbacks write its URL once on load)
    # a write waiting on /map, a move to /falloff, then the same parameters written there: written there
    page.evaluate(f"""() => {{ {L}._write({{run: 'scored', colour: 'correct'}});
      history.pushState(null, '', '/falloff?run=scored'); {L}._write({{run: 'scored', colour: 'correct'}}); }}""")
    page.wait_for_function("() => location.search === '?run=scored&colour=correct'", timeout=2_000)
    assert page.evaluate("() => location.pathname") == "/falloff"
    # a move within the same page (a link to it with another query, Back) before the write: left alone
    page.evaluate(f"""() => {{ {L}._write({{run: 'scored', colour: 'domain'}});
      history.pushState(null, '', location.pathname + '?run=scored&colour=task'); }}""")
    page.wait_for_timeout(400)
    assert page.evaluate("() => location.search") == "?run=scored&colour=task"
    page.goto(f"{url}/map?run=scored")
    _wait_points(page, N)
    page.wait_for_timeout(1000)
    # a navigation goes where it was sent, not where a waiting write would have put the page
    page.evaluate(f"""() => {{ {L}._write({{run: 'scored', colour: 'correct'}});
      {L}._go(location.pathname + '?run=scored&colour=task'); }}""")
    page.wait_for_url("**/map?run=scored&colour=task", timeout=20_000)
    _wait_points(page, N)
    assert page.inner_text("#map-colour").strip() == "task"
    assert log.take() == []


def _falloff_traces(page, n: int):
    page.wait_for_function(f"() => {FGD} && {FGD}._fullData && {FGD}._fullData.length === {n}", timeout=20_000)
    return page.evaluate(f"() => {FGD}._fullData.map(t => [t.name.split(' ')[0], t.x.length])")


def test_falloff_page_draws_stored_or_computed_stats(browser_page):
    url, page, log = browser_page
    page.goto(f"{url}/falloff?run=withfile&bins=3")
    page.wait_for_selector("#falloff-source-text", timeout=20_000)
    assert "from falloff.json" in page.inner_text("#falloff-source-text")
    assert [name for name, _ in _falloff_traces(page, 3)] == ["all", "Chollet", "Reasoning"]
    page.goto(f"{url}/falloff?run=scored&bins=4&mode=side&domain=Chollet&domain=Reasoning")
    page.wait_for_selector("#falloff-source-text", timeout=20_000)
    assert "computed on the fly" in page.inner_text("#falloff-source-text")
    assert _falloff_traces(page, 2) == [["Chollet", 4], ["Reasoning", 4]]
    page.goto(f"{url}/falloff?run=unscored")
    page.wait_for_selector("#no-scores", timeout=20_000)
    assert "No scores yet" in page.inner_text("#no-scores")
    assert log.take() == []


def test_examples_table_and_drilldown(browser_page, scored_data):
    url, page, log = browser_page
    page.goto(f"{url}/examples?run=scored")
    page.wait_for_selector(".ag-row[row-index='0'] .ag-cell", timeout=20_000)
    page.wait_for_function("() => (document.querySelector(\".ag-row[row-index='0'] [col-id='example_id']\") || {}).innerText",
                           timeout=20_000)  # the infinite row model fills rendered rows a moment later
    first = page.locator(".ag-row[row-index='0'] [col-id='example_id']").first.inner_text()
    assert first == scored_data.frame["example_id"].iloc[0]
    page.locator(".ag-row[row-index='0'] [col-id='task']").first.click()
    page.wait_for_selector("#drill-panel-content", timeout=15_000)
    assert page.locator(".drill-prompt").inner_text() == XSS
    page.wait_for_function("() => new URLSearchParams(location.search).get('sel') !== null")
    assert log.take() == []


def test_every_page_draws_with_the_apps_plotly_bundle(browser_page):
    """The stock plotly.min.js (4.8 MB) is never fetched: a page without graphs loads nothing, and
    moving to the map in the browser loads the app's bundle once, which draws the WebGL map."""
    from dashboard.bundle import bundle_version

    url, page, log = browser_page
    page.goto(f"{url}/examples?run=scored")
    page.wait_for_selector(".ag-row[row-index='0'] .ag-cell", timeout=20_000)
    page.wait_for_timeout(300)
    loaded = "() => performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('plotly'))"
    assert page.evaluate(loaded) == [] and page.evaluate("() => typeof window.Plotly.newPlot") == "undefined"
    page.click("#nav-map")  # client-side: dcc.Graph asks the placeholder for plotly.js
    assert _wait_points(page, N) == N
    names = page.evaluate(loaded)
    assert len(names) == 1 and "/assets/vendor/plotly-llm-maps.min.js" in names[0]
    assert page.evaluate(f"() => [Plotly.version, {GD}._fullData[0].type]") == [bundle_version(), "scattergl"]
    page.goto(f"{url}/falloff?run=scored")
    page.wait_for_function(f"() => {FGD} && {FGD}._fullData && {FGD}._fullData.length > 0", timeout=20_000)
    # a full page load preloads the bundle; the browser may list that and the script's own fetch
    assert {n.split("/")[-1].split("?")[0] for n in page.evaluate(loaded)} == {"plotly-llm-maps.min.js"}
    assert log.take() == []


def test_map_still_draws_when_the_bundle_cannot_load(browser_page):
    """If the app's plotly.js fails to load, dcc.Graph falls back to the stock plotly.js."""
    url, page, log = browser_page
    page.route("**/plotly-llm-maps.min.js*", lambda route: route.abort())
    try:
        page.goto(f"{url}/map?run=scored")
        assert _wait_points(page, N) == N
        names = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)"
                              ".filter(n => n.includes('plotly'))")
    finally:
        page.unroute("**/plotly-llm-maps.min.js*")
    assert any("package_data/plotly.min.js" in n for n in names)
    errors = log.take()
    assert errors and all("ERR_FAILED" in e or "Failed to load resource" in e for e in errors), errors


def test_bundle_colours_every_point_exactly_as_stock_plotly(browser_page, tmp_path):
    """The bundle's one patch (colours memoised per distinct value) changes speed, not colours: the
    per-point RGBA the WebGL scatter is given equals stock plotly.js's, for category codes on a
    discrete scale, more distinct continuous values than the memo holds, and colour strings."""
    import plotly

    from dashboard.bundle import PLOTLY_BUNDLE, bundle_version

    stock = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if bundle_version(stock) != bundle_version():
        pytest.skip(f"installed plotly ships plotly.js {bundle_version(stock)}, the bundle is {bundle_version()}")
    rng = np.random.default_rng(0)
    n = 6000
    codes = rng.integers(0, 48, n).tolist()
    discrete = [[k / 48 + e, f"hsl({k * 7},70%,50%)"] for k in range(48) for e in (0, 1 / 48)]
    discrete[-1][0] = 1.0
    cases = [
        {"color": codes, "colorscale": discrete, "cmin": 0, "cmax": 48, "opacity": 0.8},
        {"color": rng.normal(size=n).tolist(), "colorscale": "Viridis", "opacity": 1},  # > 4096 distinct
        {"color": [["#1f77b4", "red", "rgba(0,128,0,0.5)"][c % 3] for c in codes], "opacity": 0.6},
    ]
    xs = rng.normal(size=n).tolist()
    script = """async ([xs, cases]) => {
        const out = [];
        for (const marker of cases) {
            const gd = document.createElement('div'); document.body.appendChild(gd);
            await Plotly.newPlot(gd, [{type: 'scattergl', mode: 'markers', x: xs, y: xs, marker}]);
            out.push(gd._fullLayout._plots.xy._scene.markerOptions[0].colors.map((c) => Array.from(c)));
            Plotly.purge(gd); gd.remove();
        }
        return out;
    }"""
    url, page, log = browser_page
    got = {}
    for name, js in (("stock", stock), ("bundle", PLOTLY_BUNDLE)):
        page.goto("about:blank")
        page.add_script_tag(path=str(js))
        got[name] = page.evaluate(script, [xs, cases])
    assert [len(c) for c in got["bundle"]] == [n, n, n]
    assert got["bundle"] == got["stock"]
    assert got["bundle"][0][0][3] == pytest.approx(0.8) and len({tuple(c) for c in got["bundle"][0]}) == 48
    assert log.take() == []


def test_exported_html_draws_offline_with_the_inlined_bundle(browser_page, runs, tmp_path):
    from interfaces.cli import main

    from dashboard.bundle import PLOTLY_BUNDLE, bundle_version

    url, page, log = browser_page
    out = tmp_path / "inline.html"
    assert main(["export", str(runs["scored"]), "--html", str(out)]) == 0
    text = out.read_text()
    assert text.count("<script>") == 3 and f"plotly.js v{bundle_version()} (MIT" in text  # bundle, map, falloff
    assert PLOTLY_BUNDLE.stat().st_size < out.stat().st_size < PLOTLY_BUNDLE.stat().st_size + 400_000
    page.route("http*://**", lambda route: route.abort())  # standalone: nothing is fetched
    try:
        page.goto(out.as_uri())
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length === 2 && "
                               "document.getElementById('falloff')._fullData", timeout=20_000)
        types = page.evaluate("() => document.getElementById('map')._fullData.map(t => t.type)")
        drawn = page.evaluate("() => document.getElementById('map')._fullData.reduce((a, t) => a + t._length, 0)")
    finally:
        page.unroute("http*://**")
    assert set(types) == {"scattergl"} and drawn == N
    assert log.take() == []


def test_the_app_works_under_a_url_prefix(runs, browser_page, scored_data):
    """Behind a proxy at /team/maps/: pages, assets, the API, the points payload and every link
    live below the prefix."""
    from dashboard.app import create_app, normalise_prefix
    from interfaces.cli import main

    assert [normalise_prefix(p) for p in (None, "", "/", "team/maps", "//team//maps/")] == \
        ["/", "/", "/", "/team/maps/", "/team/maps/"]
    for bad in ("/a b/", "/../", "/./x/"):
        with pytest.raises(ValueError, match="URL prefix"):
            normalise_prefix(bad)
    assert main(["serve", str(runs["scored"]), "--prefix", "<x>", "--no-worker"]) == 2
    app = create_app([runs["scored"]], [], prefix="team/maps")
    c = app.server.test_client()
    assert c.get("/").headers["Location"].endswith("/team/maps/map")
    assert c.get("/team/maps/").headers["Location"].endswith("/team/maps/map")
    assert c.get("/team/maps/api/health").json["status"] == "ready" and c.get("/api/health").status_code == 404
    assert c.get("/team/maps/_llm_maps/points?run=scored").status_code == 200
    page_html = c.get("/team/maps/map").get_data(as_text=True)
    bundle = page_html.split('"/team/maps/assets/vendor/')[1].split('"')[0]  # plotly-llm-maps.min.js?m=...
    assert bundle.startswith("plotly-llm-maps.min.js?m=")
    assert c.get("/team/maps/assets/vendor/" + bundle).headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "immutable" not in c.get("/team/maps/assets/style.css").headers.get("Cache-Control", "")
    _, first, _ = browser_page
    page = first.context.new_page()
    log = ConsoleLog(page)
    try:
        with live_server(app) as url:
            page.goto(f"{url}/team/maps/map?run=scored")
            assert _wait_points(page, N) == N
            page.wait_for_function("() => window.llmMapsState.payloads.scored")
            assert page.evaluate("async () => (await window.llmMapsState.payloads.scored).h.n") == N
            page.click("#map-colour")
            page.get_by_role("option", name="domain", exact=True).click()
            page.wait_for_function(f"() => {GD}._fullLayout.legend.title.text === 'domain'")
            assert page.evaluate(f"() => Array.from({GD}._fullData[0].marker.color)") == \
                scored_data.cats["domain"].codes[F.draw_order(scored_data, np.arange(N))].tolist()
            assert page.get_attribute("#nav-runs", "href") == "/team/maps/runs"
            assert page.get_attribute("#map-user-csv", "href") == "/team/maps/api/runs/scored/points?format=csv"
            runs_seen = "() => fetch(llmMaps.url('/api/runs')).then(r => r.json()).then(j => j.runs.map(r => r.run))"
            assert page.evaluate(runs_seen) == ["scored"]
            page.locator("#theme-dark").check()
            page.wait_for_function("() => document.getElementById('theme-css').getAttribute('href') === "
                                   "'/team/maps/assets/themes/darkly.min.css'")
            page.locator("#theme-dark").uncheck()
            page.click("#nav-runs")
            page.wait_for_selector(".run-card", timeout=20_000)
            hrefs = page.eval_on_selector_all(".run-card a", "els => els.map(e => e.getAttribute('href'))")
            assert hrefs == [f"/team/maps/{p}?run=scored" for p in ("map", "falloff", "examples")]
            assert log.take() == []
    finally:
        page.close()


def test_runs_page_404_and_a_broken_run(browser_page):
    url, page, log = browser_page
    page.goto(f"{url}/map?run=broken")
    page.wait_for_selector(".run-banner", timeout=20_000)
    assert "unreadable Parquet" in page.inner_text(".run-banner")
    page.goto(f"{url}/map?run=scored")  # the app keeps serving the others
    assert _wait_points(page, N) == N
    page.goto(f"{url}/runs")
    page.wait_for_selector(".run-card", timeout=20_000)
    assert page.locator(".run-card").count() == 4 and page.locator(".run-banner").count() == 1
    assert "not scored yet" in page.inner_text("body")
    page.goto(f"{url}/no/such/page")
    page.wait_for_selector("#not-found", timeout=20_000)
    assert page.inner_text("#not-found") == "Page not found"
    # the page itself answers 404 (Chromium says so once, for the document); nothing else failed
    assert log.take() == ["Failed to load resource: the server responded with a status of 404 (NOT FOUND)"]


def test_the_runs_page_gives_test_accuracy_with_its_interval_over_tasks_and_the_api_what_its_accuracy_pools(runs,
                                                                                                           scored_data):
    """A run's card: its test accuracy with the interval over tasks beside Wilson's (the Map page's
    selection words over every row, recomputed from the frame); /api/runs: the manifest's pooled
    accuracy with the splits and rows it pools."""
    import sys

    from dashboard.app import create_app
    from dashboard_helpers import selection_text

    # a run whose scored rows are all train rows: said so, not garbled
    import pandas as pd

    only_train = write_synthetic_run(runs["root"] / "only_train", 60, seed=9)
    frame = pd.read_parquet(only_train / "examples.parquet")
    frame.loc[frame["split"] == "test", "correct"] = None
    frame.loc[frame["split"] == "train", "correct"] = True
    frame.to_parquet(only_train / "examples.parquet")
    app = create_app([runs["scored"], runs["unscored"], only_train], [])
    rows = app.server.test_client().get("/api/runs").get_json()["runs"]
    scored = next(r for r in rows if r["run"] == "scored")
    scoring = json.loads((runs["scored"] / "manifest.json").read_text()).get("scoring") or {}
    assert (scored["accuracy"], scored["accuracy_splits"], scored["accuracy_n"]) == \
        (scoring.get("accuracy"), scoring.get("splits"), scoring.get("scored"))
    with app.server.test_request_context("/runs"):
        page = sys.modules["pages.runs"].layout()
    cells: dict[str, list] = {"accuracy": []}

    def walk(node):
        children = getattr(node, "children", None)
        if "run-accuracy" in str(getattr(node, "className", "") or ""):
            cells["accuracy"].append(children)
        for child in children if isinstance(children, (list, tuple)) else [children]:
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)
    walk(page)
    words = selection_text(scored_data, np.arange(scored_data.n)).split(" · accuracy ", 1)[1]
    expect = words.replace("points", "examples") + f" ({int((scored_data.cats['correct'].codes == 1).sum())} right)"
    assert expect in cells["accuracy"] and "not scored yet" in cells["accuracy"]
    assert "no scored test examples (only train rows are scored)" in cells["accuracy"]
    assert " over tasks ([" in expect and "Wilson) on " in expect
