"""Conditions in the dashboard (conditions.parquet of `llm-maps score --conditions`): the data layer,
the Falloff overlay, the Map's "condition outcome" colour, the Examples columns and the drill-down,
each checked against numbers recomputed here from the files; a run without conditions and a run
with a broken file; then the Falloff and Map pages in real headless Chromium."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from dashboard import conditions_view as CV
from dashboard import figures as F
from dashboard.data import RunRegistry
from dashboard.synthetic import write_synthetic_run
from dashboard.table import query_table
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser
from llm_maps.conditions import OUTCOMES, paired, with_examples
from llm_maps.runfolder import Run

NAMES = ["direct", "cot", "neighbours:2"]
N = 240


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond_runs")
    cond = write_synthetic_run(root / "cond", N, layers=(1, 2), seed=11, conditions=tuple(NAMES), token_map=True)
    plain = write_synthetic_run(root / "plain", 120, seed=12)
    broken = write_synthetic_run(root / "broken", 80, seed=13, conditions=("direct", "cot"))
    (broken / "conditions.parquet").write_bytes(b"PAR1 this is not parquet")
    twice = write_synthetic_run(root / "twice", 80, seed=14, conditions=("direct", "cot"))
    c = pd.read_parquet(twice / "conditions.parquet")
    pd.concat([c, c.iloc[[3]]], ignore_index=True).to_parquet(twice / "conditions.parquet")
    return {"cond": cond, "plain": plain, "broken": broken, "twice": twice}


@pytest.fixture(scope="module")
def data(runs):
    return RunRegistry([runs["cond"]]).load("cond")


@pytest.fixture(scope="module")
def app(runs, tmp_path_factory):
    from dashboard.app import create_app

    return create_app([runs["cond"], runs["plain"], runs["broken"], runs["twice"]], [],
                      state_dir=tmp_path_factory.mktemp("cond_state"))


def _file(run) -> pd.DataFrame:
    """conditions.parquet with each example's row, domain, task, split and distance, joined here."""
    cond = pd.read_parquet(run / "conditions.parquet")
    ex = pd.read_parquet(run / "examples.parquet").reset_index(drop=True)
    ex["row"] = np.arange(len(ex))
    return cond.merge(ex[["example_id", "row", "domain", "task", "split", "dist_to_train"]],
                      on="example_id", suffixes=("", "_example"))


def _walk(c):
    yield c
    ch = getattr(c, "children", None)
    for x in (ch if isinstance(ch, (list, tuple)) else [ch] if ch is not None else []):
        yield from _walk(x)


def _texts(c) -> str:
    return " ".join(x for x in _walk(c) if isinstance(x, str))


def _by_id(c, id_):
    return [x for x in _walk(c) if getattr(x, "id", None) == id_]


# --- data layer ----------------------------------------------------------------------------------

def test_conditions_are_read_once_per_run_and_match_the_file(runs, data):
    cd, error = data.conditions()
    assert error is None and cd.names == NAMES
    assert data.conditions()[0] is cd and data.for_view("tokens").conditions()[0] is cd  # once, shared by views
    f = _file(runs["cond"])
    for i, name in enumerate(NAMES):
        sub = f[(f["condition"] == name) & f["correct"].notna()]
        want = np.zeros(N, dtype=np.uint8)
        want[sub["row"].to_numpy()] = np.where(sub["correct"].astype(bool), 2, 1)
        assert cd.codes[i].tolist() == want.tolist()
    # direct is what examples.parquet keeps
    test = ~data.is_train
    assert cd.codes[0][test].tolist() == np.where(data.correct.to_numpy(dtype=bool)[test], 2, 1).tolist()
    assert (cd.codes[:, data.is_train] == 0).all()
    # cot has unscored examples (every 7th), neighbours:2 only half of each task's test examples
    assert ((cd.codes[1] == 0) & test).sum() > 0 and ((cd.codes[2] == 0) & test).sum() >= test.sum() // 2 - 12


def test_the_file_is_read_once_and_again_when_it_changes(tmp_path, monkeypatch):
    run = write_synthetic_run(tmp_path / "fresh", 90, seed=21, conditions=("direct", "cot", "neighbours:2"))
    reads = []
    from dashboard import conditions_data

    real = conditions_data.read_conditions
    monkeypatch.setattr(conditions_data, "read_conditions", lambda path: reads.append(path) or real(path))
    reg = RunRegistry([run])
    data = reg.load("fresh")
    for _ in range(3):  # the map, the table and the drill-down of one run
        assert reg.load("fresh").conditions()[0].names == ["direct", "cot", "neighbours:2"]
    assert len(reads) == 1 and reg.load("fresh") is data
    c = pd.read_parquet(run / "conditions.parquet")  # cot scored again elsewhere: the run reloads
    c[c["condition"] != "neighbours:2"].to_parquet(run / "conditions.parquet")
    again = reg.load("fresh")
    assert again is not data and again.conditions()[0].names == ["direct", "cot"] and len(reads) == 2


def test_a_broken_conditions_file_is_one_line_on_every_page(app, runs):
    reg = RunRegistry([runs["broken"], runs["twice"], runs["plain"]])
    cd, error = reg.load("broken").conditions()
    assert cd is None and "conditions.parquet: unreadable Parquet" in error and "\n" not in error
    _, error = reg.load("twice").conditions()
    last = len(pd.read_parquet(runs["twice"] / "conditions.parquet"))  # the repeated row is the last one
    assert error.endswith("appears twice under condition 'direct'") and f"conditions.parquet, row {last}:" in error
    assert reg.load("plain").conditions() == (None, None)
    falloff, examples, map_ = (sys.modules[f"pages.{p}"] for p in ("falloff", "examples", "map"))
    C = sys.modules["dashboard.components"]
    with app.server.test_request_context("/"):
        page = falloff.layout(run="broken")
        assert "Conditions cannot be shown:" in _texts(_by_id(page, "falloff-conditions-error")[0])
        assert _by_id(page, "falloff-conditions-box")[0].hidden
        fig, _, _ = falloff.update_falloff(2, "cosine", 5, None, None, "overlay", [], "broken")
        assert [t.name.split(" ")[0] for t in fig.data] == ["all", "Chollet", "Reasoning"]  # the page as before
        assert "unreadable Parquet" in _texts(_by_id(examples.layout(run="broken"), "examples-conditions-error")[0])
        page = map_.layout(run="broken")
        assert "unreadable Parquet" in _texts(_by_id(page, "map-cond-error")[0])
        assert "outcome" not in [o["value"] for o in _by_id(page, "map-colour")[0].options]
        data = C.load("broken")[0]
        drill = C.drilldown(data, int(np.flatnonzero(~data.is_train)[0]))
        assert "unreadable Parquet" in _texts(_by_id(drill, "drill-conditions-error")[0])
        assert app.server.test_client().get("/_llm_maps/points?run=broken").status_code == 200


# --- the Map page's colour ------------------------------------------------------------------------

@pytest.mark.parametrize("a,b", [("direct", "cot"), ("cot", "neighbours:2"), ("neighbours:2", "direct"),
                                 ("cot", "cot")])
def test_outcome_colour_matches_the_paired_examples(runs, data, a, b):
    cd = CV.conditions_of(data)
    codes = CV.outcome_codes(cd, a, b)
    # reference 1: llm_maps.conditions.paired (what `llm-maps conditions` counts)
    both = paired(with_examples(Run(runs["cond"])), a, b)
    assert codes[both["row"].to_numpy()].tolist() == [CV.OUTCOME_NAMES.index(o) for o in both["outcome"]]
    assert np.delete(codes, both["row"].to_numpy()).tolist() == [4] * (N - len(both))
    # reference 2: the file, paired here
    f = _file(runs["cond"])
    fa = f[(f["condition"] == a) & f["correct"].notna()].set_index("row")["correct"].astype(bool)
    fb = f[(f["condition"] == b) & f["correct"].notna()].set_index("row")["correct"].astype(bool)
    common = fa.index.intersection(fb.index)
    ra, rb = fa[common].to_numpy(), fb[common].to_numpy()
    counts = [int((~ra & rb).sum()), int((ra & ~rb).sum()), int((ra & rb).sum()), int((~ra & ~rb).sum())]
    rows = np.arange(N)
    spec = F.colour_spec(data, "outcome", rows, pair=(a, b))
    assert spec.values.tolist() == codes.tolist() and not spec.continuous
    assert spec.legend == [(f"{o} ({n})", c) for o, n, c in zip(OUTCOMES, counts, CV.OUTCOME_COLOURS)] + \
        [(f"not scored under both ({N - len(common)})", CV.OUTCOME_COLOURS[4])]
    assert spec.title == f"condition outcome: {b} vs {a}"
    if a == b:
        assert counts[0] == counts[1] == 0
    # the drawn rows only: counts of those
    test = np.flatnonzero(~data.is_train)
    legend = dict((n.rsplit(" (", 1)[0], int(n.rsplit("(", 1)[1][:-1])) for n, _ in
                  F.colour_spec(data, "outcome", test, pair=(a, b)).legend)
    assert legend["helped"] == counts[0] and legend.get("not scored under both", 0) == len(test) - len(common)


def test_map_page_and_payload_offer_the_outcome_colour(app, data):
    from dashboard.points import unpack

    map_ = sys.modules["pages.map"]
    with app.server.test_request_context("/"):
        page = map_.layout(run="cond", colour="outcome", ca="cot", cb="neighbours:2")
        assert _by_id(page, "map-colour")[0].value == "outcome"
        assert (_by_id(page, "map-cond-a")[0].value, _by_id(page, "map-cond-b")[0].value) == ("cot", "neighbours:2")
        assert _by_id(page, "map-cond-a")[0].options == NAMES and not _by_id(page, "map-cond-box")[0].hidden
        fig = _by_id(page, "map-graph")[0].figure
        want = CV.outcome_codes(CV.conditions_of(data), "cot", "neighbours:2")
        # only the examples scored under both, test points drawn above train points
        rows = np.asarray(fig.data[F.POINTS].customdata)
        assert rows.tolist() == F.draw_order(data, np.flatnonzero(want != 4)).tolist()
        assert np.asarray(fig.data[F.POINTS].marker.color).tolist() == want[rows].tolist()
        assert fig.layout.title.text == f"{len(rows)} of {N} examples scored under both conditions"
        # unknown conditions in the URL: the default pair (direct -> cot)
        page = map_.layout(run="cond", colour="outcome", ca="nope")
        assert (_by_id(page, "map-cond-a")[0].value, _by_id(page, "map-cond-b")[0].value) == ("direct", "cot")
        # a large run's figure comes from the server with the same colours
        fig = map_.server_figure({"colour": "outcome", "ca": "neighbours:2", "cb": "direct", "split": ["test"]},
                                 None, "cond")
        rows = np.asarray(fig.data[F.POINTS].customdata)
        codes = CV.outcome_codes(CV.conditions_of(data), "neighbours:2", "direct")
        assert rows.tolist() == np.flatnonzero(~data.is_train & (codes != 4)).tolist()
        assert np.asarray(fig.data[F.POINTS].marker.color).tolist() == codes[rows].tolist()
    header, arrays = unpack(app.server.test_client().get("/_llm_maps/points?run=cond").data)
    assert header["conditions"] == NAMES and header["default_pair"] == ["direct", "cot"]
    assert header["options"]["outcome"]["names"] == CV.OUTCOME_NAMES
    for i in range(3):
        assert arrays[f"cond_{i}"].tolist() == CV.conditions_of(data).codes[i].tolist()


# --- the Falloff page ------------------------------------------------------------------------------

def _reference_bins(run, name: str, domain: str, n_bins: int):
    """Equal-count bins of the example's own distance for one condition and domain, with statsmodels'
    Wilson intervals, the intervals over tasks (a task bootstrap on the bin's tasks, seed bin + 1,
    spread by sqrt(G/(G-1)); from 5 tasks, never narrower than Wilson's) and the tasks per bin,
    recomputed from the files."""
    from statsmodels.stats.proportion import proportion_confint

    from llm_maps.resample import small_cluster, task_resample_counts

    f = _file(run)
    sub = f[(f["condition"] == name) & f["correct"].notna() & (f["split"] == "test") & (f["domain"] == domain)]
    x = sub["dist_to_train_example"].to_numpy(dtype=float)
    y = sub["correct"].astype(bool).to_numpy()
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, x, side="left") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        sel = idx == b
        k, n = int(y[sel].sum()), int(sel.sum())
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        tasks = sub["task"].to_numpy()[sel]
        names = sorted(set(tasks))
        k_t = np.array([y[sel][tasks == t].sum() for t in names], dtype=float)
        n_t = np.array([(tasks == t).sum() for t in names], dtype=float)
        counts = task_resample_counts(n_tasks=len(names), n_boot=2000, rng=np.random.default_rng(b + 1))
        reps = (counts @ k_t) / (counts @ n_t)
        tlo, thi = np.clip(np.percentile(small_cluster(k / n, reps, len(names)), [2.5, 97.5]), 0, 1) \
            if len(names) >= 5 else (None, None)  # 5 tasks or more, and never narrower than Wilson's
        tlo, thi = (None, None) if tlo is None else (min(tlo, lo), max(thi, hi))
        out.append({"n": n, "correct": k, "accuracy": k / n, "low": lo, "high": hi, "median": float(np.median(x[sel])),
                    "tasks": tasks.tolist(), "task_low": tlo, "task_high": thi})
    return out, len(sub), sub["task"].nunique()


def test_falloff_overlay_per_condition_and_domain_is_recomputed_exactly(app, runs, data):
    from statsmodels.stats.proportion import proportion_confint

    falloff = sys.modules["pages.falloff"]
    with app.server.test_request_context("/"):
        page = falloff.layout(run="cond")  # the run's own scores first; conditions are a choice in the URL
        assert _by_id(page, "falloff-conditions")[0].value == [] and not _by_id(page, "falloff-conditions-box")[0].hidden
        assert _by_id(falloff.layout(run="cond", cond=NAMES), "falloff-conditions")[0].value == NAMES
        assert _by_id(falloff.layout(run="cond", cond="none"), "falloff-conditions")[0].value == []
        assert _by_id(falloff.layout(run="cond", cond=["cot", "x"]), "falloff-conditions")[0].value == ["cot"]
        fig, source, table = falloff.update_falloff(2, "cosine", 4, None, None, "overlay", ["cot", "direct"], "cond")
    # one trace per condition and domain, in the page's condition order
    assert [(t.meta["condition"], t.meta["domain"]) for t in fig.data] == \
        [(c, d) for d in ("Chollet", "Reasoning") for c in ("direct", "cot")]
    for t in fig.data:
        bins, n, n_tasks = _reference_bins(runs["cond"], t.meta["condition"], t.meta["domain"], 4)
        assert list(t.y) == pytest.approx([b["accuracy"] for b in bins])
        assert list(t.x) == pytest.approx([b["median"] for b in bins])
        # error bars: the interval over tasks (Wilson's where a bin holds fewer than 5 tasks)
        over = [(b["task_low"], b["task_high"]) if b["task_low"] is not None else (b["low"], b["high"]) for b in bins]
        assert list(t.error_y.array) == pytest.approx([hi - b["accuracy"] for b, (_, hi) in zip(bins, over)])
        assert list(t.error_y.arrayminus) == pytest.approx([b["accuracy"] - lo for b, (lo, _) in zip(bins, over)])
        assert [c[2] for c in t.customdata] == [b["n"] for b in bins]
        assert [c[6] for c in t.customdata] == [len(set(b["tasks"])) for b in bins]
        assert f"n={n} examples in {n_tasks} tasks" in t.name
        # the legend's accuracy: over tasks from 5 tasks on, else Wilson's (statsmodels), named either way
        k = sum(b["correct"] for b in bins)
        if n_tasks >= 5:
            assert "] (over tasks), n=" in t.name
        else:
            lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
            assert f"acc {k / n:.2f} [{lo:.2f}, {hi:.2f}] (Wilson, over examples), n={n}" in t.name
    text = _texts(source)
    f = _file(runs["cond"])
    for name in ("direct", "cot"):
        sub = f[(f["condition"] == name) & f["correct"].notna()]
        assert f"{name}: {len(sub)} examples in {sub['task'].nunique()} tasks" in text
    assert "each example's own distance" in text and "95 % intervals over tasks (a task bootstrap" in text
    assert _texts(table).count("cot · Chollet") == 1 + 4  # its group row, then one row per bin
    # another layer: the example's distance in that layer, computed from the encodings
    with app.server.test_request_context("/"):
        fig1, _, _ = falloff.update_falloff(1, "cosine", 3, ["Reasoning"], None, "side", ["neighbours:2"], "cond")
    sub = f[(f["condition"] == "neighbours:2") & f["correct"].notna() & (f["domain"] == "Reasoning")]
    x = data.distances(1)[sub["row"].to_numpy()]
    edges = np.unique(np.quantile(x, np.linspace(0, 1, 4)))
    idx = np.clip(np.searchsorted(edges, x, side="left") - 1, 0, len(edges) - 2)
    y = sub["correct"].astype(bool).to_numpy()
    assert [(t.meta["condition"], t.meta["domain"]) for t in fig1.data] == [("neighbours:2", "Reasoning")]
    assert list(fig1.data[0].y) == pytest.approx([y[idx == b].mean() for b in range(len(edges) - 1)])
    # no condition picked: the page as without conditions (falloff of examples.parquet's scores)
    with app.server.test_request_context("/"):
        fig0, source0, _ = falloff.update_falloff(2, "cosine", 4, None, None, "overlay", [], "cond")
    assert [t.name.split(" ")[0] for t in fig0.data] == ["all", "Chollet", "Reasoning"]
    assert "computed on the fly" in _texts(source0)


# --- Examples table and drill-down ----------------------------------------------------------------

def test_examples_table_has_an_answer_and_correct_column_per_condition(app, runs, data):
    f = _file(runs["cond"])
    out = query_table(data, {"startRow": 0, "endRow": N})
    rows = {r["example_id"]: r for r in out["rowData"]}
    for name in NAMES:
        sub = f[f["condition"] == name]
        for _, r in sub.iterrows():
            got = rows[r["example_id"]]
            assert got[f"answer · {name}"] == (r["answer"] if pd.notna(r["answer"]) else "")
            assert got[f"✓ · {name}"] == ("" if pd.isna(r["correct"]) else "correct" if r["correct"] else "wrong")
        missing = set(rows) - set(sub["example_id"])
        assert all(rows[i][f"✓ · {name}"] == "" and rows[i][f"answer · {name}"] == "" for i in missing)
    # filterable and sortable on the server like the other columns
    right = query_table(data, {"startRow": 0, "endRow": 5, "filterModel": {
        "✓ · cot": {"filterType": "text", "type": "equals", "filter": "correct"}}})
    assert right["rowCount"] == int((f[f["condition"] == "cot"]["correct"] == True).sum())  # noqa: E712
    srt = query_table(data, {"startRow": 0, "endRow": 3, "sortModel": [{"colId": "answer · neighbours:2",
                                                                         "sort": "desc"}]})
    first = sorted((rows[i]["answer · neighbours:2"] for i in rows), reverse=True)[:3]
    assert [r["answer · neighbours:2"] for r in srt["rowData"]] == first
    examples = sys.modules["pages.examples"]
    with app.server.test_request_context("/"):
        grid = _by_id(examples.layout(run="cond"), "examples-grid")[0]
        fields = [c["field"] for c in grid.columnDefs]
        plain = [c["field"] for c in _by_id(examples.layout(run="plain"), "examples-grid")[0].columnDefs]
    # each condition's correct column right after the run's own scores (in view on a 1400 px window),
    # its answer column last
    assert fields == plain[:4] + [f"✓ · {n}" for n in NAMES] + plain[4:] + [f"answer · {n}" for n in NAMES]
    assert plain == [c for c, _ in examples.COLUMNS] and plain[:4] == ["example_id", "split", "score", "correctness"]


def test_drilldown_shows_every_condition_side_by_side_with_its_path(app, runs, data):
    C = sys.modules["dashboard.components"]
    f = _file(runs["cond"])
    counts = f[f["correct"].notna()].groupby("example_id")["condition"].nunique()
    ex_id = counts[counts == 3].index[0]  # scored under all three
    row = data.row_of(ex_id)
    with app.server.test_request_context("/"):
        drill = C.drilldown(data, row)
    for name in NAMES:
        card = _by_id(drill, f"drill-condition-{name}")[0]
        r = f[(f["example_id"] == ex_id) & (f["condition"] == name)].iloc[0]
        text = _texts(card)
        for part in (r["prompt"], r["output"], r["answer"], f"rule: {r['extraction']}",
                     f"{r['dist_to_train']:.4g}", f"{r['path_mean_dist']:.4g} / {r['path_max_dist']:.4g}"):
            assert str(part) in text, (name, part)
        assert ("correct" if r["correct"] else "wrong") in text
        button = _by_id(card, {"type": "cond-path", "run": "cond", "ex": ex_id, "cond": name})
        assert len(button) == 1
        fig = CV.path_figure(data, row, name)
        path = [t for t in fig.data if (t.meta or {}).get("cond_path") == name][0]
        assert list(path.x) == pytest.approx(list(r["path_x"])) and list(path.y) == pytest.approx(list(r["path_y"]))
        assert list(path.marker.color) == pytest.approx(list(r["path_dists"]))
        star = [t for t in fig.data if (t.meta or {}).get("cond_path_start")][0]
        tok = data.for_view("tokens")
        assert (star.x[0], star.y[0]) == pytest.approx((float(tok.x[row]), float(tok.y[row])))
    # the conditions sit between the output and the neighbours, and a train example has none
    nodes = list(_walk(drill))
    where = {key: next(i for i, x in enumerate(nodes) if key in (getattr(x, "className", None) or "").split()
                       or getattr(x, "id", None) == key)
             for key in ("drill-output", "drill-condition-direct", "drill-neighbours")}
    assert where["drill-output"] < where["drill-condition-direct"] < where["drill-neighbours"]
    with app.server.test_request_context("/"):
        assert not _by_id(C.drilldown(data, int(np.flatnonzero(data.is_train)[0])), "drill-condition-direct")


# --- a run without conditions ---------------------------------------------------------------------

def test_a_run_without_conditions_renders_everything_as_before(app, runs):
    from dashboard.points import unpack

    plain = RunRegistry([runs["plain"]]).load("plain")
    assert [o["value"] for o in F.colour_dropdown(plain)] == [v for v, _, _ in F.COLOUR_OPTIONS]
    assert F.colour_choice(plain, "outcome") == "split" and "outcome" not in F.client_options(plain)
    assert list(query_table(plain, {"startRow": 0, "endRow": 1})["rowData"][0]) == \
        ["row", "example_id", "split", "task", "category", "domain", "text", "reference", "output", "score",
         "correctness", "dist_to_train"]
    header, arrays = unpack(app.server.test_client().get("/_llm_maps/points?run=plain").data)
    assert header["conditions"] == [] and not [k for k in arrays if k.startswith("cond_")]
    falloff, map_ = sys.modules["pages.falloff"], sys.modules["pages.map"]
    C = sys.modules["dashboard.components"]
    with app.server.test_request_context("/"):
        assert _by_id(falloff.layout(run="plain"), "falloff-conditions-box")[0].hidden
        assert not _by_id(falloff.layout(run="plain"), "falloff-conditions-error")
        fig, _, _ = falloff.update_falloff(2, "cosine", 5, None, None, "overlay", [], "plain")
        assert [t.name.split(" ")[0] for t in fig.data] == ["all", "Chollet", "Reasoning"]
        page = map_.layout(run="plain", colour="outcome")
        assert _by_id(page, "map-colour")[0].value == "split" and _by_id(page, "map-cond-box")[0].hidden
        drill = C.drilldown(plain, int(np.flatnonzero(~plain.is_train)[0]))
        assert "conditions (conditions.parquet)" not in _texts(drill)


# --- in the browser ------------------------------------------------------------------------------------

FGD = "document.querySelector('#falloff-graph .js-plotly-plot')"
GD = "document.querySelector('#map-graph .js-plotly-plot')"


@pytest.fixture(scope="module")
def browser(app):
    require_browser()
    from playwright.sync_api import sync_playwright

    with live_server(app) as url, sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = b.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        yield url, page, ConsoleLog(page)
        b.close()


def _overlay(page, n: int):
    page.wait_for_function(f"() => {FGD} && {FGD}._fullData && {FGD}._fullData.length === {n} && "
                           f"{FGD}._fullData.every(t => t.meta && t.meta.condition)", timeout=30_000)
    return page.evaluate(f"() => {FGD}._fullData.map(t => [t.meta.condition, t.meta.domain, Array.from(t.y)])")


def test_falloff_page_overlays_conditions_in_the_browser(browser, runs):
    url, page, log = browser
    page.goto(f"{url}/falloff?run=cond&bins=4")  # opens on the run's own scores: no condition traces
    page.wait_for_function(f"() => {FGD} && {FGD}._fullData && {FGD}._fullData.length > 0 && "
                           f"{FGD}._fullData.every(t => !(t.meta && t.meta.condition))", timeout=30_000)
    assert page.eval_on_selector("#falloff-conditions", "el => el.innerText").strip().startswith("none")
    page.goto(f"{url}/falloff?run=cond&bins=4&" + "&".join(f"cond={c}" for c in NAMES))
    traces = _overlay(page, 6)
    assert [(c, d) for c, d, _ in traces] == [(c, d) for d in ("Chollet", "Reasoning") for c in NAMES]
    for c, d, y in traces:
        assert y == pytest.approx([b["accuracy"] for b in _reference_bins(runs["cond"], c, d, 4)[0]])
    legend = page.evaluate(f"() => Array.from({FGD}.querySelectorAll('.legend text.legendtext')).map(t => t.textContent)")
    assert len(legend) == 6 and all(" examples in " in t and " tasks" in t for t in legend)
    # drop cot from the control: 4 traces, and the URL keeps the choice
    page.click("#falloff-conditions")
    page.get_by_role("option", name="cot", exact=True).click()  # a picked option: unpicks it
    page.keyboard.press("Escape")
    traces = _overlay(page, 4)
    assert [(c, d) for c, d, _ in traces] == [(c, d) for d in ("Chollet", "Reasoning") for c in ("direct", "neighbours:2")]
    page.wait_for_function("() => window.location.search.includes('cond=direct')")
    assert "cond=neighbours%3A2" in page.url and "cond=cot" not in page.url
    page.reload()
    assert len(_overlay(page, 4)) == 4
    assert "each example's own distance" in page.inner_text("#falloff-source-text")
    assert log.take() == []


def test_map_colours_by_condition_outcome_in_the_browser(browser, data):
    url, page, log = browser
    page.goto(f"{url}/map?run=cond")
    page.wait_for_function(f"() => {GD} && {GD}._fullData && {GD}._fullData[0]._length === {N}", timeout=30_000)
    page.wait_for_function("() => window.llmMapsState.payloads.cond")
    page.click("#map-colour")
    page.get_by_role("option", name="condition outcome (B vs A)", exact=True).click()
    cd = CV.conditions_of(data)

    def check(a, b):
        codes = CV.outcome_codes(cd, a, b)
        rows = F.draw_order(data, np.flatnonzero(codes != 4))  # scored under both only, test above train
        legend = [n for n, _ in CV.outcome_legend(codes[rows])]
        page.wait_for_function(f"() => {GD} && {GD}._fullData && {GD}.layout.legend.title.text === "
                               f"'condition outcome: {b} vs {a}' && {GD}._fullData[0]._length === {len(rows)}",
                               timeout=20_000)
        assert page.evaluate(f"() => Array.from({GD}._fullData[0].customdata)") == rows.tolist()
        assert page.evaluate(f"() => Array.from({GD}._fullData[0].marker.color)") == codes[rows].tolist()
        assert page.evaluate(f"() => {GD}._fullData.filter(t => t.showlegend).map(t => t.name)") == legend
        assert page.evaluate(f"() => {GD}._fullLayout.title.text") == \
            f"{len(rows)} of {N} examples scored under both conditions"

    check("direct", "cot")
    page.click("#map-cond-b")
    page.get_by_role("option", name="neighbours:2", exact=True).click()
    check("direct", "neighbours:2")
    page.wait_for_function("() => window.location.search.includes('cb=neighbours')")
    assert "colour=outcome" in page.url and "ca=direct" in page.url
    page.reload()  # the URL brings the same colouring back, drawn by the server
    check("direct", "neighbours:2")
    # the drill-down of an example asked under every condition, and one condition's path
    counts = cd.frame.groupby("example_id")["condition"].nunique()
    ex_id = counts[counts == 3].index[0]
    page.goto(f"{url}/map?run=cond&sel={ex_id}")
    page.wait_for_selector("#drill-condition-cot", timeout=20_000)
    assert page.locator(".drill-condition .drill-cond-name").all_inner_texts() == NAMES
    page.locator("#drill-condition-cot button", has_text="path on the token map").click()
    page.wait_for_function("() => { const gd = document.querySelector('.cond-path-graph .js-plotly-plot');"
                           " return gd && gd._fullData && gd._fullData.some(t => t.meta && t.meta.cond_path === 'cot'); }",
                           timeout=20_000)
    r = cd.frame[(cd.frame["example_id"] == ex_id) & (cd.frame["condition"] == "cot")].iloc[0]
    xs = page.evaluate("() => Array.from(document.querySelector('.cond-path-graph .js-plotly-plot')._fullData"
                       ".find(t => t.meta && t.meta.cond_path).x)")
    assert xs == pytest.approx(list(r["path_x"]))
    assert log.take() == []


def test_examples_table_shows_the_condition_columns_in_the_browser(browser, data):
    url, page, log = browser
    page.goto(f"{url}/examples?run=cond")
    page.wait_for_function("() => (document.querySelector(\".ag-row[row-index='0'] [col-id='example_id']\") || {})"
                           ".innerText", timeout=20_000)
    # the grid draws only the columns in view (column virtualisation): ask it for its columns, then
    # bring the last one into view and read the drawn header
    headers = page.evaluate("() => dash_ag_grid.getApi('examples-grid').getColumnDefs().map(c => c.headerName || c.field)")
    assert headers[4:7] == [f"✓ · {n}" for n in NAMES] and headers[-3:] == [f"answer · {n}" for n in NAMES]
    # the score columns are in view without scrolling sideways (1400 px window)
    page.wait_for_function("""() => document.querySelector(".ag-header-cell[col-id='✓ · neighbours:2'] .ag-header-cell-text")""",
                           timeout=10_000)
    assert page.locator(".ag-header-cell[col-id='✓ · neighbours:2'] .ag-header-cell-text").inner_text() == \
        "✓ · neighbours:2"
    first = query_table(data, {"startRow": 0, "endRow": 1})["rowData"][0]
    for col in ("✓ · cot", "✓ · neighbours:2", "answer · cot"):
        # the grid draws only the columns in view (column virtualisation): the answers come last
        page.wait_for_function(f"""() => {{ dash_ag_grid.getApi('examples-grid').ensureColumnVisible('{col}', 'end');
            return (document.querySelector(".ag-row[row-index='0'] [col-id='{col}']") || {{}}).innerText !== undefined; }}""",
                               timeout=10_000)
        assert page.locator(f".ag-row[row-index='0'] [col-id='{col}']").first.inner_text() == first[col]
    assert log.take() == []
