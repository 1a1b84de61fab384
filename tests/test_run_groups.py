"""Runs are found where people put them: a fine-tuning group's runs in a runs folder are listed (grouped)
by default, a folder of runs given where a run is expected is served as one, and models are shown by
name (and step), never by a local path (tiny model, a 2-step LoRA group)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from interfaces.cli import main
from test_finetune import _base_run

IDS = ["base", "base-ft.step-000000", "base-ft.step-000001", "base-ft.step-000002"]
MODELS = ["gpt_neox", "gpt_neox, step 0", "gpt_neox, step 1", "gpt_neox, step 2"]
GROUP = IDS[1:]


@pytest.fixture(scope="module")
def work(tiny_models, tmp_path_factory) -> Path:
    """WORK/data/runs/base (24 Dolly rows) and WORK/data/runs/base-ft, a LoRA fine-tune of it (2 steps,
    a checkpoint each): step-000000, step-000001, step-000002 beside checkpoints/ and finetune.json."""
    from pipelines.finetune import FinetuneConfig, finetune

    work = tmp_path_factory.mktemp("first-day")
    runs = work / "data" / "runs"
    base = _base_run(runs, tiny_models["gpt_neox"])
    (runs / "d.jsonl").unlink()  # the data file _base_run writes beside the run
    finetune(base, runs / "base-ft", FinetuneConfig(steps=2, save_every=1, lr=5e-3, batch_size=4, progress=False),
             log=lambda m: None)
    return work


def _no_local_path(text: str, tmp_path_factory) -> None:
    root = str(tmp_path_factory.getbasetemp())
    assert root not in text and str(Path(root).resolve()) not in text, text[max(0, text.find(root) - 300):][:600]


# --------------------------------------------------------------------------- the rule, in one place

def test_a_runs_folder_holds_its_runs_and_its_groups_runs(work, tmp_path, monkeypatch):
    from dashboard.data import RunRegistry
    from llm_maps.jobs import state_dir_for
    from llm_maps.runfolder import (RunIds, find_runs, is_group, model_label, read_manifest, run_group, run_ids,
                                    run_name, runs_in, split_run_args)

    runs = work / "data" / "runs"
    group = runs / "base-ft"
    expected = [runs / "base", group / "step-000000", group / "step-000001", group / "step-000002"]
    assert find_runs(runs) == [runs / "base"]  # directly under the folder only, as before
    assert runs_in(runs) == expected
    assert runs_in(group) == expected[1:]  # a group given as the folder: its runs
    assert [i for i, _ in run_ids(expected)] == IDS
    assert [run_name(p) for p in expected] == IDS and [run_group(p) for p in expected] == [None] + ["base-ft"] * 3
    assert is_group(group) and not is_group(runs) and not is_group(runs / "base")
    assert [model_label(read_manifest(p)) for p in expected] == MODELS
    # the same ids whichever way a run is given, and kept in the state folder
    ids = RunIds(tmp_path / "state")
    assert ids.assign([group / "step-000002", runs / "base"]) == [(IDS[3], group / "step-000002"), ("base", runs / "base")]
    assert [i for i, _ in ids.assign(runs_in(runs))] == IDS
    assert RunIds(tmp_path / "state").known(group / "step-000001") == IDS[2]
    assert RunIds(tmp_path / "state").known(tmp_path) is None
    # a build in progress in a group shows as such
    (group / "step-000003.partial").mkdir()
    try:
        assert runs_in(runs, unfinished=True) == expected + [group / "step-000003.partial"]
        reg = RunRegistry([], [runs])
        entries = reg.entries()
        assert [(e.id, e.group, e.ok) for e in entries] == [
            ("base", None, True), (IDS[1], "base-ft", True), (IDS[2], "base-ft", True), (IDS[3], "base-ft", True),
            ("base-ft.step-000003.partial", "base-ft", False)]
        assert "still being built" in entries[-1].error
        assert {g: [e.id for e in es] for g, es in reg.groups(entries).items()} == {
            "base-ft": GROUP + ["base-ft.step-000003.partial"]}
    finally:
        (group / "step-000003.partial").rmdir()
    # folders of runs given where runs are expected are taken as the folders they are
    assert split_run_args([runs]) == ([], [runs])
    assert split_run_args([group, runs / "base"]) == ([runs / "base"], [group])
    # a group's runs keep their state beside the group, however they are given
    monkeypatch.delenv("LLM_MAPS_STATE", raising=False)
    state = runs.resolve() / ".llm-maps-state"
    assert state_dir_for([group / "step-000001"], []) == state == state_dir_for([], [group])
    assert state_dir_for([], [runs]) == runs / ".llm-maps-state"


def test_a_folder_that_is_neither_a_run_nor_holds_runs_is_refused_saying_what_to_type(work, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no runs here")
    for command in ("serve", "worker"):
        assert main([command, str(empty), "--no-worker"] if command == "serve" else [command, str(empty)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"llm-maps {command}: error: {empty}: neither a run (no manifest.json) nor a folder of runs; give a run "
            f"folder, or `--data {empty}` to serve the runs built there later")
    assert main(["serve", str(tmp_path / "nope"), "--no-worker"]) == 2
    assert capsys.readouterr().err.strip() == f"llm-maps serve: error: {tmp_path / 'nope'}: no such run folder"


def test_the_app_lists_a_group_given_as_a_run_and_shows_paths_to_the_owner_only(work, tmp_path, tmp_path_factory):
    import base64

    from dashboard.app import create_app

    group = work / "data" / "runs" / "base-ft"
    app = create_app([group], [], state_dir=tmp_path / "state")
    client = app.server.test_client()
    got = client.get("/api/runs").get_json()["runs"]
    assert [(r["run"], r["group"], r["model"], r["step"]) for r in got] == list(
        zip(GROUP, ["base-ft"] * 3, MODELS[1:], [0, 1, 2]))
    assert all("path" not in r and "model_path" not in r for r in got)
    _no_local_path(json.dumps(got), tmp_path_factory)
    # with credentials, the owner sees where each run and model is: in the API, and as tooltips
    owner = create_app([group], [], state_dir=tmp_path / "state", auth="ann:s3cret")
    auth = {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret").decode()}
    got = owner.server.test_client().get("/api/runs", headers=auth).get_json()["runs"]
    assert [r["path"] for r in got] == [str(group / n) for n in ("step-000000", "step-000001", "step-000002")]
    assert got[2]["model_path"] == str((group / "checkpoints" / "step-000002" / "model").resolve())
    pages = {n: sys.modules[f"pages.{n}"] for n in ("runs", "compare")}
    for who, headers in (("owner", auth), ("anyone", {})):
        for name, page in pages.items():
            with owner.server.test_request_context(f"/{name}", headers=headers):
                text = json.dumps(page.layout().to_plotly_json(), default=str)
            assert (str(group) in text) == (who == "owner"), (who, name)
            if who == "owner":
                assert str((group / "checkpoints" / "step-000002" / "model").resolve()) in text  # a tooltip


# --------------------------------------------------------------------------- the served app and its worker

def _api_runs(srv) -> list[tuple]:
    status, _, body = srv.call("/api/runs")
    assert status == 200
    return [(r["run"], r["group"], r["model"], r["step"], r["ok"]) for r in body["runs"]]


LISTED = [(i, None if i == "base" else "base-ft", m, None if i == "base" else int(i[-1]), True)
          for i, m in zip(IDS, MODELS)]


@pytest.mark.slow
def test_serve_finds_every_run_grouped_and_shows_no_local_path(work, tmp_path, tmp_path_factory):
    from dashboard_helpers import require_browser
    from live_helpers import http, serving, until

    require_browser()
    from playwright.sync_api import sync_playwright

    runs = work / "data" / "runs"
    # `llm-maps serve` with no arguments, where `llm-maps demo --finetune` leaves the runs
    with serving([], tmp_path, cwd=work, ready="health") as srv:
        assert _api_runs(srv) == LISTED
        _no_local_path(json.dumps(srv.call("/api/runs")[2]), tmp_path_factory)
        health = srv.call("/api/health")[2]
        assert sorted(health["workers"]) == sorted(IDS) and all(v["live"] for v in health["workers"].values())
        # the worker serves the group's runs: the checkpoint's own (merged) model places the prompt
        for run in (IDS[3], IDS[1]):
            job = srv.call(f"/api/runs/{run}/points", "POST", {"instruction": "Where does the fox live?"})[2]["id"]
            done = until(lambda: (b := srv.call(f"/api/points/{job}")[2])["status"] in ("done", "failed") and b, 90,
                         what=f"the job on {run}")
            assert done["status"] == "done" and done["run"] == run, done
            assert [p["id"] for p in srv.call(f"/api/runs/{run}/points")[2]["points"]] == [job]
        status, _, csv = http(f"{srv.url}/api/runs/{IDS[3]}/points?format=csv")
        assert status == 200 and csv.decode().count("\r\n") == 2  # the header and the point
        _no_local_path(csv.decode(), tmp_path_factory)
        with sync_playwright() as pw:
            browser, page, log = _open_page(pw)
            # the Runs page: the base run, then the group with its runs by step and one link comparing them
            page.goto(f"{srv.url}/runs")
            page.wait_for_selector(".run-card", timeout=30_000)
            assert page.locator(".run-card h5").all_inner_texts() == IDS
            assert page.locator(".run-group-title").all_inner_texts() == ["Group base-ft"]
            assert page.locator(".run-group .run-card h5").all_inner_texts() == GROUP
            assert page.locator(".run-group-note").all_inner_texts() == ["fine-tuning group: 3 runs, steps 0, 1, 2"]
            assert page.locator(".run-card-group").all_inner_texts() == ["in group base-ft"] * 3
            assert page.locator(".run-model").all_inner_texts() == MODELS
            _no_local_path(page.content(), tmp_path_factory)
            page.click(".run-group-compare")
            page.wait_for_selector("#compare-run-table", timeout=60_000)
            assert _runs_in_url(page.url) == GROUP
            rows = page.locator("#compare-run-table tr").all_inner_texts()
            assert [r.split("\t") for r in rows] == [["run", "model", "n_params", "step"]] + [
                [f"step-00000{s}", f"gpt_neox, step {s}", f"{_n_params(work):,}", str(s)] for s in range(3)]
            assert [page.locator(".compare-model").nth(i).get_attribute("title") for i in range(3)] == [None] * 3
            # the picker says which group each run belongs to; the Compare page offers the group in one click
            assert page.locator("#compare-runs .dash-dropdown-value-item").all_inner_texts() == [
                f"{i} · group base-ft" for i in GROUP]
            assert page.locator(".compare-group-link").all_inner_texts() == ["compare this group: base-ft (3 runs) · shown"]
            page.wait_for_function("() => document.querySelector('#compare-map-graph .js-plotly-plot')", timeout=30_000)
            _no_local_path(page.content(), tmp_path_factory)
            page.goto(f"{srv.url}/compare?runs=base&runs={IDS[3]}")
            page.wait_for_selector("#compare-run-table", timeout=60_000)
            assert page.locator(".compare-group-link").all_inner_texts() == ["compare this group: base-ft (3 runs)"]
            page.click(".compare-group-link")
            page.wait_for_function("() => document.querySelectorAll('#compare-run-table tr').length === 4",
                                   timeout=60_000)
            assert _runs_in_url(page.url) == GROUP
            # every page's run picker says the group
            page.goto(f"{srv.url}/map?run={IDS[2]}")
            page.wait_for_selector("#run-picker", timeout=30_000)
            until(lambda: page.inner_text("#run-picker").strip() == f"{IDS[2]} · group base-ft", 20,
                  what="the picker's label")
            page.click("#run-picker")
            page.wait_for_selector(".dash-dropdown-option", timeout=10_000)
            assert [t.strip() for t in page.locator(".dash-dropdown-option").all_inner_texts()] == [
                "base"] + [f"{i} · group base-ft" for i in GROUP]
            page.keyboard.press("Escape")
            _no_local_path(page.content(), tmp_path_factory)
            assert log.take() == []
            browser.close()
    # the runs folder given where a run is expected: the same runs, the same ids, the same groups
    with serving([str(runs)], tmp_path, ready="health") as srv, sync_playwright() as pw:
        assert _api_runs(srv) == LISTED
        assert srv.call("/api/health")[2]["status"] == "ready"
        assert "no such run" not in srv.log()
        browser, page, log = _open_page(pw)
        page.goto(f"{srv.url}/runs")
        page.wait_for_selector(".run-card", timeout=30_000)
        assert page.locator(".run-card h5").all_inner_texts() == IDS
        assert page.locator(".run-group .run-card h5").all_inner_texts() == GROUP
        _no_local_path(page.content(), tmp_path_factory)
        page.goto(f"{srv.url}/compare")  # without ?runs=: the group
        page.wait_for_selector("#compare-run-table", timeout=60_000)
        assert [r.split("\t")[:2] for r in page.locator("#compare-run-table tr").all_inner_texts()[1:]] == [
            [f"step-00000{s}", f"gpt_neox, step {s}"] for s in range(3)]
        assert page.locator(".compare-group-link").all_inner_texts() == ["compare this group: base-ft (3 runs) · shown"]
        _no_local_path(page.content(), tmp_path_factory)
        assert log.take() == []
        browser.close()


def _open_page(pw):
    """(browser, page, console log) of a fresh headless Chromium at 1400x1000."""
    from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path

    browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    return browser, page, ConsoleLog(page)


def _runs_in_url(url: str) -> list[str]:
    from urllib.parse import parse_qs, urlparse

    assert urlparse(url).path == "/compare", url
    return parse_qs(urlparse(url).query)["runs"]


def _n_params(work: Path) -> int:
    from llm_maps.runfolder import read_manifest

    return int(read_manifest(work / "data" / "runs" / "base")["n_params"])


def test_exports_of_a_groups_runs_name_the_model_and_step_and_hold_no_local_path(work, tmp_path, tmp_path_factory,
                                                                               capsys):
    group = work / "data" / "runs" / "base-ft"
    steps = [str(group / f"step-00000{s}") for s in range(3)]
    out = tmp_path / "export.html"
    assert main(["export", steps[2], "--html", str(out), "--plotlyjs", "cdn", "--compare", steps[0], steps[1]]) == 0
    text = out.read_text()
    assert f"<h2>{IDS[3]}</h2>" in text and "model gpt_neox, step 2 · " in text
    assert "Compare: step-000002, step-000000, step-000001" in text
    _no_local_path(text, tmp_path_factory)
    html = tmp_path / "compare.html"
    capsys.readouterr()
    assert main(["compare", *steps, "--html", str(html), "--no-cka", "--no-progress"]) == 0
    _no_local_path(html.read_text(), tmp_path_factory)
    printed = capsys.readouterr().out
    assert [line.split()[:2] for line in printed.splitlines()[1:4]] == [
        [f"step-00000{s}", "gpt_neox,"] for s in range(3)]
