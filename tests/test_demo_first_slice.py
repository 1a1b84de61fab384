"""`llm-maps demo` on a machine without the demo run: a first slice is served at once, the full run
is built in the background (the pages say so), then replaces the slice; Ctrl-C stops it all.
Run with a tiny model and data through the demo's overrides (LLM_MAPS_DEMO_MODEL, ..._DATA)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import free_port
from dashboard.background import status_text
from dashboard_helpers import CHROMIUM_FLAGS, chromium_path, require_browser

ROOT = Path(__file__).resolve().parent.parent


def _demo_data(path: Path, n_tasks: int = 3, per_task: int = 16) -> Path:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rows = []
    for t in range(n_tasks):
        for i in range(per_task):
            rows.append({"id": f"t{t}-{i}", "instruction": f"Task {t}: what follows {words[(i + t) % len(words)]}?",
                         "context": "", "response": words[(i + t + 1) % len(words)], "choices": None,
                         "category": "open_qa", "task": f"demo/task{t}", "split": "test" if i % 4 == 0 else "train",
                         "heldout": False})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, json.loads(r.read() or b"null")


def _wait(predicate, timeout: float, what: str, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None:
            assert proc.poll() is None, f"the demo exited ({proc.returncode}) while waiting for {what}"
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_banner_text_follows_the_background_build():
    running = {"task": "demo", "state": "running", "stage": "score", "stage_index": 2, "stages": 3, "started": 100.0}
    content, seen = status_text(running, None, now=190.0)
    assert content.children == ("Building the full demo run in the background: stage 2 of 3 (score), 1.5 min so "
                                "far. This map is a first slice; the full run replaces it when it is ready.")
    assert seen == "running"
    done = {**running, "state": "done"}
    assert status_text(done, "running")[0][1].children == "Refresh to see it"  # a page opened on the slice
    assert status_text(done, None) == (None, "done")  # a page opened on the full run: nothing to say
    assert status_text(None, None) == (None, None)


@pytest.mark.slow
def test_demo_serves_a_first_slice_then_the_full_run(tiny_models, tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    data = _demo_data(tmp_path / "demo.jsonl")
    out = tmp_path / "runs" / "demo"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           "LLM_MAPS_DEMO_MODEL": str(tiny_models["llama"]), "LLM_MAPS_DEMO_DATA": str(data),
           "LLM_MAPS_DEMO_SLICE": "16",
           "LLM_MAPS_DEMO_SETTINGS": json.dumps({"layers": [1, 2], "default_layer": 2, "projection": "pca", "template": "dolly",
                                                 "views": "prompt", "token_atlas": False})}
    log = tmp_path / "demo.err"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "demo", "--out", str(out), "--port",
                                 str(port), "--no-progress"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    state = tmp_path / "runs" / ".llm-maps-state" / "background.json"
    kids: list = []
    builder = None
    try:
        # the tiny full build takes seconds: it is paused once it says it runs, so that the page is
        # sure to see it running (and resumed once it has)
        _wait(lambda: json.loads(state.read_text())["state"] == "running", 180, "the background build", proc)
        builder = psutil.Process(json.loads(state.read_text())["pid"])
        builder.suspend()
        _wait(lambda: _get(f"{base}/api/health")[0] == 200, 180, "the first map to be served", proc)
        first = json.loads((out / "manifest.json").read_text())
        assert first["counts"]["examples"] < 48  # the slice, not the 48 rows
        assert any("first slice" in n for n in first["notes"])
        kids = psutil.Process(proc.pid).children(recursive=True)
        assert builder in kids and "build-full" in " ".join(builder.cmdline())
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            page.goto(f"{base}/map")
            page.wait_for_function("document.querySelector('#background-status')?.textContent"
                                   ".includes('Building the full demo run')", timeout=20_000)
            builder.resume()
            _wait(lambda: json.loads(state.read_text())["state"] == "done", 300, "the full run", proc)
            # the page opened on the slice says the full run is ready; a refresh shows it
            page.wait_for_function("document.querySelector('#background-status')?.textContent"
                                   ".includes('The full run is ready')", timeout=20_000)
            page.reload()
            page.wait_for_timeout(4000)
            assert page.inner_text("#background-status").strip() == ""
            browser.close()
        full = json.loads((out / "manifest.json").read_text())
        assert full["counts"]["examples"] == 48 and "scoring" in full
        assert not any("first slice" in n for n in full["notes"])
        assert not (tmp_path / "runs" / ".demo.full").exists()  # the staging folder is gone
        status, runs = _get(f"{base}/api/runs")
        assert status == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    gone, alive = psutil.wait_procs(kids, timeout=10)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
    text = log.read_text()
    assert "first map served" in text and "Traceback" not in text, text[-3000:]
