"""Regions (llm_maps/regions.py): planted regions in synthetic encodings are recovered, a region worse
than its tasks elsewhere is flagged and a region made of a hard task is not, the expected accuracy
and the q-values equal hand and statsmodels computations, keywords of a planted vocabulary are found;
the files follow the contract; and in Chromium the Map page shows the layer and the table, whose row
click filters the map and the Examples page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm_maps.contract import REGION_COLUMNS, RegionsFile, check
from llm_maps.regions import (bh_qvalues, class_keywords, expected_accuracy, find_regions, format_regions,
                              read_region_labels, region_statistics, run_regions, sign_flip_p)
from llm_maps.runfolder import Run

ARI_MIN = 0.9  # planted regions must be recovered at least this well (adjusted Rand index)
N_TASKS = 10
PER_TASK = 8  # examples of each task in each mixed region (half of them test)
MIXED = 5  # planted regions 0-3 ordinary, region 4 the bad one; each holds every task
BAD = 4
HARD = 5  # planted region 5: one hard task, all of its examples
VOCAB = ("volcano", "lava", "magma")


def planted(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(examples, encodings [N, 64] float16, planted region per row). Regions 0-4 each hold PER_TASK
    examples of every task; the model is right on 80 % of test examples everywhere except region 4
    (10 %); region 5 is the whole of one hard task (10 % right). Region 4's instructions speak of
    volcanoes."""
    rng = np.random.default_rng(seed)
    rows = []
    for region in range(MIXED):
        for t in range(N_TASKS):
            for j in range(PER_TASK):
                rows.append((region, f"task_{t:02d}", j % 2 == 1))
    for j in range(PER_TASK * 6):
        rows.append((HARD, "hard_task", j % 2 == 1))
    region = np.array([r[0] for r in rows])
    task = np.array([r[1] for r in rows], dtype=object)
    test = np.array([r[2] for r in rows])
    n = len(rows)
    p = np.where(region == BAD, 0.1, np.where(region == HARD, 0.1, 0.8))
    correct = rng.random(n) < p
    centres = rng.normal(size=(HARD + 1, 64)) * 6.0
    enc = (centres[region] + rng.normal(size=(n, 64))).astype(np.float16)
    xy = rng.normal(size=(HARD + 1, 2)) * 10
    xy = xy[region] + rng.normal(size=(n, 2))
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    instr = [f"please answer the {words[r]} question number {i} about {VOCAB[i % 3]} eruptions" if r == BAD else
             f"please answer the {words[r]} question number {i}" for i, r in enumerate(region)]
    ids = np.array([f"ex-{i:04d}" for i in range(n)], dtype=object)
    from llm_maps.neighbours import nearest_train

    dist, nn_rows, nn_d = nearest_train(enc, ~test, k=3, metric="cosine")
    frame = pd.DataFrame({
        "example_id": ids, "split": np.where(test, "test", "train"), "task": task, "category": task,
        "domain": np.where(np.char.startswith(task.astype(str), "hard"), "Reasoning", "Chollet"),
        "prompt": [f"### Instruction:\n{t}\n### Response:\n" for t in instr], "reference": ["ref"] * n,
        "output": pd.array(["out"] * n, dtype="string"),
        "score": pd.array(np.where(test, correct.astype(float), np.nan), dtype="Float64"),
        "correct": pd.array([bool(c) if s else None for c, s in zip(correct, test)], dtype="boolean"),
        "x": xy[:, 0], "y": xy[:, 1], "dist_to_train": dist, "nn_train_ids": [list(ids[r]) for r in nn_rows],
        "nn_train_dists": [list(d) for d in nn_d], "instruction": instr, "context": [""] * n,
    })
    return frame, enc, region


def write_planted_run(path: Path, seed: int = 0) -> Path:
    from dashboard.synthetic import write_synthetic_run
    from llm_maps.runfolder import layer_file, write_json_atomic, write_parquet_atomic

    frame, enc, _ = planted(seed)
    write_synthetic_run(path, len(frame), hidden=64, layers=(2,), seed=seed)
    write_parquet_atomic(path / "examples.parquet", frame)
    np.save(layer_file(path, 2), enc)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["counts"].update(train=int((frame["split"] == "train").sum()), test=int((frame["split"] == "test").sum()),
                              tasks=int(frame["task"].nunique()))
    write_json_atomic(path / "manifest.json", manifest)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_planted_run(tmp_path_factory.mktemp("regions") / "planted")


@pytest.fixture(scope="module")
def found(run_dir):
    return find_regions(run_dir, min_size=15, seed=0)


def _match(found_labels: np.ndarray, planted_labels: np.ndarray) -> dict[int, int]:
    """planted region -> the found region holding most of its examples."""
    return {p: int(np.bincount(found_labels[(planted_labels == p) & (found_labels >= 0)]).argmax())
            for p in np.unique(planted_labels)}


# --- the core --------------------------------------------------------------------------------------

def test_planted_regions_are_recovered(found):
    from sklearn.metrics import adjusted_rand_score

    _, _, truth = planted()
    assert found["n_regions"] == HARD + 1
    assert adjusted_rand_score(truth, found.labels) >= ARI_MIN
    assert found["params"]["pca_dims"] == 32 and found["params"]["min_size"] == 15 and found["params"]["seed"] == 0


def test_above_the_cluster_limit_a_sample_is_clustered_and_the_rest_join_their_nearest(found):
    from llm_maps.regions import cluster
    from sklearn.metrics import adjusted_rand_score

    _, enc, truth = planted()
    coords = enc.astype(np.float64)
    labels, info = cluster(coords, min_size=15, max_rows=200, seed=0)
    assert info == {"cluster_rows": 200, "min_cluster_size": round(15 * 200 / len(coords)),
                    "min_samples": round(15 * 200 / len(coords))}
    assert adjusted_rand_score(truth, labels) >= ARI_MIN
    again, _ = cluster(coords, min_size=15, max_rows=200, seed=0)
    assert again.tolist() == labels.tolist()  # seeded


def test_a_region_worse_than_its_tasks_is_flagged_and_a_hard_task_is_not(found):
    _, _, truth = planted()
    match = _match(found.labels, truth)
    rows = {r["region"]: r for r in found["regions"]}
    bad, hard = rows[match[BAD]], rows[match[HARD]]
    assert bad["worse"] and bad["q_value"] < 0.05 and bad["difference_high"] < 0
    assert bad["n_tasks_compared"] == N_TASKS and bad["difference"] < -0.4
    assert found["worse"] == [match[BAD]]
    # the hard task's region: its accuracy is as low, but its task has no examples elsewhere to predict it
    assert hard["accuracy"] < 0.3 and not hard["worse"]
    assert hard["expected_accuracy"] is None and hard["p_value"] is None and hard["n_tasks_compared"] == 0
    for p in range(BAD):  # the ordinary regions do better than their tasks elsewhere (pulled down by region 4)
        r = rows[match[p]]
        assert not r["worse"] and r["difference"] > 0


def test_expected_accuracy_equals_a_hand_computation():
    labels = np.array([0, 0, 0, 1, 1, -1, 0, 1])
    task = ["a", "a", "b", "a", "b", "b", "c", "c"]
    correct = np.array([1, 0, 1, 1, 0, 1, 0, np.nan])  # NaN: not scored
    # region 0: task a outside = [1] -> 1.0; task b outside = [0, 1] -> 0.5; task c outside: none
    exp = expected_accuracy(labels=labels, task=task, correct=correct, region=0, min_outside=1)
    assert np.array_equal(exp, [1.0, 1.0, 0.5, np.nan, np.nan, np.nan, np.nan, np.nan], equal_nan=True)
    # by default a task needs 5 scored test examples outside before they make an expectation: none here
    assert np.isnan(expected_accuracy(labels=labels, task=task, correct=correct, region=0)).all()
    default = region_statistics(labels=labels, is_train=np.zeros(8, bool), task=task, domain=["d"] * 8,
                                correct=correct, n_boot=200)
    assert default[0]["expected_accuracy"] is None and default[0]["n_tasks_compared"] == 0
    rows = region_statistics(labels=labels, is_train=np.zeros(8, bool), task=task, domain=["d"] * 8,
                             correct=correct, n_boot=200, min_outside=1)
    r0 = rows[0]
    assert r0["accuracy"] == pytest.approx(2 / 4) and r0["n_scored"] == 4
    assert r0["expected_accuracy"] == pytest.approx((1.0 + 1.0 + 0.5) / 3) and r0["n_expected"] == 3
    assert r0["n_outside"] == 3  # a: one outside, b: two; c none
    assert r0["accuracy_low"] is None and r0["difference_low"] is None  # 3 and 2 tasks: no interval over tasks
    line = next(t for t in format_regions({"params": {"min_size": 2, "pca_dims": 2, "seed": 0, "alpha": 0.05,
                                                      "min_tasks": 5, "uncovered_below": 0.0},
                                           "view": "prompt", "layer": 1, "metric": "cosine", "explained_variance": 1.0,
                                           "n_regions": 2, "n_in_regions": 7, "n_examples": 8, "n_noise": 1,
                                           "expected": "", "interval": "",
                                           "regions": [{**r, "n_train": 0, "n_test": r["n"], "coverage": 0.0,
                                                        "uncovered": False, "keywords": []} for r in rows]}
                                          ).splitlines() if t.startswith("  R0 "))
    assert " 0.50 (4) " in line and "0.83 (3, 3)" in line and " -0.17 " in line and "[" not in line
    assert r0["difference"] == pytest.approx(((1 - 1.0) + (0 - 1.0) + (1 - 0.5)) / 3)
    assert r0["n_tasks_compared"] == 2
    # region 1: a (1) against a outside [1, 0] -> 0.5; b (0) against b outside [1, 1] -> 1.0; c unscored
    r1 = rows[1]
    assert r1["expected_accuracy"] == pytest.approx(0.75) and r1["difference"] == pytest.approx(((1 - .5) + (0 - 1)) / 2)
    # a train row never counts as scored
    rows_t = region_statistics(labels=labels, is_train=np.array([1, 0, 0, 0, 0, 0, 0, 0], bool), task=task,
                               domain=["d"] * 8, correct=correct, n_boot=200, min_outside=1)
    assert rows_t[0]["n_scored"] == 3 and rows_t[0]["n_train"] == 1


def test_sign_flip_p_value_is_exact():
    assert sign_flip_p(np.array([-1.0, -2.0, -3.0])) == pytest.approx(1 / 8)
    assert sign_flip_p(np.array([-1.0, 2.0])) == pytest.approx(3 / 4)  # sums -1 +2=1, 1+2=3, -1-2=-3, 1-2=-1
    assert sign_flip_p(np.array([])) is None
    big = sign_flip_p(-np.ones(20), seed=1)  # 2^20 patterns: sampled, never below 1 / (flips + 1)
    assert 0 < big < 0.001


def test_bh_q_values_match_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = [0.001, 0.04, 0.03, 0.2, 0.0125, 0.5, 0.049, 1.0]
    q = bh_qvalues(p)
    assert q == pytest.approx(list(multipletests(p, method="fdr_bh")[1]))
    with_none = bh_qvalues([None, 0.01, None, 0.04])  # None stays out of the family
    assert with_none[0] is None and with_none[2] is None
    assert with_none[1:4:2] == pytest.approx(list(multipletests([0.01, 0.04], method="fdr_bh")[1]))


def test_keywords_of_a_planted_vocabulary(found):
    _, _, truth = planted()
    match = _match(found.labels, truth)
    words = {r["region"]: r["keywords"] for r in found["regions"]}
    assert set(VOCAB) <= set(words[match[BAD]])
    assert "eruptions" in words[match[BAD]]
    assert words[match[0]][0] == "alpha"  # the word only region 0 has
    # directly: class-based TF-IDF on three texts per class
    kw = class_keywords(["red apple pie", "red apple tart", "blue ocean wave", "blue ocean tide"], np.array([0, 0, 1, 1]),
                        n=2)
    assert kw == {0: ["apple", "red"], 1: ["blue", "ocean"]}


def test_region_shares_coverage_and_central_example(found):
    for r in found["regions"]:
        assert r["n"] == r["n_train"] + r["n_test"]
        assert r["coverage"] == pytest.approx(r["n_train"] / r["n"])
        assert sum(t["n"] for t in r["domains"]) == r["n"]
        assert r["central_example"].startswith("ex-") and r["central_text"].startswith("please answer")
        assert r["mean_dist_to_train"] is not None and r["mean_dist_to_train"] >= 0
    assert found["uncovered"] == []  # every planted region is half train


def test_uncovered_regions_are_listed_apart(tmp_path):
    labels = np.array([0] * 6 + [1] * 6)
    is_train = np.array([True] * 3 + [False] * 3 + [False] * 6)
    rows = region_statistics(labels=labels, is_train=is_train, task=["t"] * 12, domain=["d"] * 12,
                             correct=np.ones(12), n_boot=100)
    assert [r["uncovered"] for r in rows] == [False, True] and rows[1]["coverage"] == 0.0


def test_the_files_follow_the_contract_and_the_stage_is_in_the_history(run_dir, tmp_path):
    out = tmp_path / "regions-copy.json"
    result = run_regions(run_dir, min_size=15, seed=0, json_path=out)
    assert check(json.loads((run_dir / "regions.json").read_text()), RegionsFile) == []
    assert json.loads(out.read_text()) == json.loads((run_dir / "regions.json").read_text())
    assert json.loads(json.dumps(result)) == json.loads(out.read_text())  # the API's result is the file
    table = pd.read_parquet(run_dir / "regions.parquet")
    assert list(table.columns) == list(REGION_COLUMNS) and len(table) == result["n_examples"]
    labels = read_region_labels(run_dir, Run(run_dir).examples["example_id"].tolist())
    assert labels.tolist() == table["region"].tolist()
    entry = Run(run_dir).manifest["history"][-1]
    assert entry["stage"] == "regions" and entry["outputs"] == ["regions.parquet", "regions.json"]
    assert entry["params"]["min_size"] == 15 and entry["params"]["view"] == "prompt" and entry["params"]["layer"] == 2
    text = format_regions(result)
    assert "worse than their tasks predict" in text and f"R{result['worse'][0]}" in text.split("worse than")[1]
    # deterministic: the same seed gives the same file (but for the wall time)
    again = find_regions(run_dir, min_size=15, seed=0)
    assert {**again, "seconds": 0} == {**result, "seconds": 0}


def test_bad_arguments_are_one_line_errors(run_dir):
    from llm_maps.errors import LLMMapsError

    with pytest.raises(LLMMapsError, match="--layer: layer 7 is not stored"):
        find_regions(run_dir, layer=7)
    with pytest.raises(LLMMapsError, match="--view: the run has no view 'completion'"):
        find_regions(run_dir, view="completion")
    with pytest.raises(LLMMapsError, match="--min-size"):
        find_regions(run_dir, min_size=1)


# --- the dashboard ---------------------------------------------------------------------------------

def test_dashboard_filters_and_layer_without_a_browser(run_dir):
    from dashboard.data import RunRegistry
    from dashboard.filters import Filters, filter_mask
    from dashboard.regions_view import playground_region, region_layer, regions_of, table_rows
    from dashboard.table import query_table

    run_regions(run_dir, min_size=15, seed=0)
    data = RunRegistry([run_dir]).load("planted")
    rd, error = regions_of(data)
    assert error is None and rd is not None
    worst = rd.result["worse"][0]
    mask = filter_mask(data, Filters.make(region=worst))
    assert mask.tolist() == (rd.labels == worst).tolist()
    rows = table_rows(rd)
    assert rows[0]["region"] == worst and rows[0]["status"].startswith("worse")  # sorted by the difference
    layer = region_layer(data)
    assert len(layer["annotations"]) == rd.result["n_regions"] == len(layer["shapes"])
    got = query_table(data, {"startRow": 0, "endRow": 500, "filterModel": {
        "region": {"filterType": "number", "type": "equals", "filter": worst}}})
    assert got["rowCount"] == int((rd.labels == worst).sum())
    from dashboard.export import export_html

    html = export_html(run_dir, run_dir.parent / "export.html").read_text(encoding="utf-8")  # the export has the layer
    assert html.count('"captureevents":true') == rd.result["n_regions"] and '"type":"path"' in html
    member = data.frame["example_id"].iloc[int(np.flatnonzero(data.is_train & (rd.labels == worst))[0])]
    text = str(playground_region(data, {"neighbours": [{"example_id": member, "distance": 0.1}]}))
    assert f"region R{worst}" in text and "nearest training example" in text


def test_map_page_shows_the_layer_and_table_and_a_row_click_filters(run_dir):
    from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser

    require_browser()
    from playwright.sync_api import sync_playwright

    from dashboard.app import create_app
    from dashboard.data import RunRegistry
    from dashboard.regions_view import regions_of

    run_regions(run_dir, min_size=15, seed=0)
    data = RunRegistry([run_dir]).load("planted")
    rd, _ = regions_of(data)
    worst = rd.result["worse"][0]
    members = np.flatnonzero(rd.labels == worst).tolist()
    gd = "document.querySelector('#map-graph .js-plotly-plot')"
    app = create_app([run_dir], [])
    with live_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
        log = ConsoleLog(page)
        page.goto(f"{url}/map?run=planted&regions=1")
        page.wait_for_function(f"() => {gd} && {gd}._fullData && {gd}._fullData[0]._length === {data.n}",
                               timeout=30_000)
        # the layer: one outline and one label per region, labels at the regions' centres
        page.wait_for_function(f"() => ({gd}.layout.annotations || []).filter(a => (a.name || '')"
                               f".startsWith('llm-region')).length === {rd.result['n_regions']}", timeout=20_000)
        labels = page.evaluate(f"() => {gd}.layout.annotations.filter(a => a.name.startsWith('llm-region'))"
                               ".map(a => [a.text, a.x, a.y])")
        for text, x, y in labels:
            rid = int(text.split("</b>")[0].replace("<b>R", ""))
            rows = rd.labels == rid
            assert x == pytest.approx(float(np.median(data.x[rows])), rel=1e-4)
            assert y == pytest.approx(float(np.median(data.y[rows])), rel=1e-4)
        assert page.evaluate(f"() => {gd}.layout.shapes.filter(s => s.name.startsWith('llm-region')).length") == \
            rd.result["n_regions"]
        # the table, sorted by the difference: the flagged region first
        page.wait_for_selector("#regions-grid .ag-row[row-index='0'] [col-id='region']", timeout=20_000)
        first = page.locator("#regions-grid .ag-row[row-index='0'] [col-id='region']").first
        assert first.inner_text() == str(worst)
        assert "worse" in page.locator("#regions-grid .ag-row[row-index='0'] [col-id='status']").first.inner_text()
        # a row click filters the map to that region, kept in the URL
        page.locator("#regions-grid .ag-row[row-index='0'] [col-id='keywords']").first.click()
        page.wait_for_function(f"() => {gd}._fullData[0]._length === {len(members)}", timeout=20_000)
        drawn = page.evaluate(f"() => Array.from({gd}._fullData[0].customdata)")
        assert sorted(drawn) == members
        page.wait_for_function(f"() => window.location.search.includes('region={worst}')", timeout=10_000)
        assert "regions=1" in page.url
        # the layer survives the redraw, the chosen region's outline emphasised
        widths = page.evaluate(f"() => {gd}.layout.shapes.filter(s => s.name.startsWith('llm-region'))"
                               ".map(s => s.line.width)")
        assert max(widths) == 3.5 and len(widths) == rd.result["n_regions"]
        # the URL opens the same view; the link opens the Examples page on the same region
        page.goto(page.url)
        page.wait_for_function(f"() => {gd} && {gd}._fullData && {gd}._fullData[0]._length === {len(members)}",
                               timeout=30_000)
        page.click("#map-region-examples")
        page.wait_for_selector("#examples-region", timeout=20_000)
        page.wait_for_function("() => (document.querySelector(\".ag-row[row-index='0'] [col-id='region']\") || {})"
                               ".innerText", timeout=20_000)
        cells = page.locator("#examples-grid .ag-row [col-id='region']").all_inner_texts()
        assert cells and set(cells) == {str(worst)}
        assert f"region={worst}" in page.url
        assert log.take() == []
        browser.close()
