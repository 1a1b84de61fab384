"""The second hardening pass, through the real server process that `llm-maps serve` runs (waitress,
its embedded worker and supervisor), never a test client:

* bodies between the API's cap and the server's answer a JSON 413 (a hop-by-hop header made them 500);
* runs added, renamed and removed while serving keep their ids, reach the worker, and answer 404
  once gone; runs whose files do not fit their model are reported, not served;
* a frozen worker (SIGSTOP) is killed and replaced, and the job a client was told failed stays failed;
* cross-origin writes are refused; Redis down is a 503 with Retry-After on every queue route;
* the small holes: /api, Dash's own routes, health without details, lower-case auth schemes, NaN.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import build_scored_run, free_port
from dashboard.synthetic import write_synthetic_run
from live_helpers import http, serving, strict_json, until
from llm_maps.jobs import JobQueue, PointStore

AUTH = {"Authorization": "basic " + base64.b64encode(b"ann:pw").decode()}  # lower-case scheme (RFC 7617)


def _no_5xx_but_503(log: str) -> None:
    assert "Traceback" not in log and "hop-by-hop" not in log, log[-3000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_models):
    return build_scored_run(tmp_path_factory.mktemp("faults"), tiny_models["gpt2"], 24)


# --- the web process alone ------------------------------------------------------------------------

def test_limits_origins_and_small_holes_through_the_real_server(tmp_path, monkeypatch):
    data = tmp_path / "runs"
    write_synthetic_run(data / "syn", 40, seed=1)
    broken = write_synthetic_run(data / "wide", 30, seed=2)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["hidden_size"] = 999  # encodings of another width than the model's
    (broken / "manifest.json").write_text(json.dumps(manifest))
    env = {"LLM_MAPS_AUTH": "ann:pw", "LLM_MAPS_EXPECT_WORKERS": "1",
           "LLM_MAPS_ALLOWED_ORIGINS": "https://partner.example"}
    with serving(["--data", str(data), "--no-worker"], tmp_path, env=env, headers=AUTH) as srv:
        queue = JobQueue(tmp_path / "state")
        # 1. bodies over the API's cap and under the server's: JSON 413, never a 500
        for body in ({"instruction": "x" * 150_000}, {"instruction": "hi", "domain": "d" * 1_500_000}):
            status, headers, reply = srv.call("/api/runs/syn/points", "POST", body)
            assert status == 413 and headers["Content-Type"] == "application/json", (status, reply)
            assert reply["error"].startswith(f"body: {len(json.dumps(body))} bytes; the limit is ")
        # a run nobody serves takes no job: 503 naming it (the workers would never run it)
        status, headers, reply = srv.call("/api/runs/syn/points", "POST", {"instruction": "hi"})
        assert status == 503 and headers["Retry-After"] == "2"
        assert reply == {"error": "no worker serves run 'syn' yet; retry later"}
        queue.register_worker("h:1", ["syn"], "ready")
        assert srv.call("/api/runs/syn/points", "POST", {"instruction": "hi"})[0] == 202
        # 4. writes from other sites are refused; the app's own origin and allowed ones are not
        own = srv.url
        for headers, body, expect in [
            ({"Origin": "https://ev.il", "Content-Type": "text/plain"}, b'{"instruction": "x"}', 403),
            ({"Origin": "https://ev.il"}, {"instruction": "x"}, 403),
            ({"Sec-Fetch-Site": "cross-site"}, {"instruction": "x"}, 403),
            ({"Content-Type": "text/plain"}, b'{"instruction": "x"}', 415),
            ({"Content-Type": "application/x-www-form-urlencoded"}, b"instruction=x", 415),
            ({"Origin": own}, {"instruction": "x"}, 202),
            ({"Origin": "https://partner.example"}, {"instruction": "x"}, 202),
        ]:
            status, hdrs, raw = http(f"{own}/api/runs/syn/points", "POST", body, {**AUTH, **headers})
            assert status == expect, (headers, status, raw)
            if status == 403:
                assert "refused" in strict_json(raw)["error"]
            if headers.get("Origin") == "https://partner.example":
                assert hdrs["Access-Control-Allow-Origin"] == "https://partner.example"
        job = srv.call("/api/runs/syn/points", "POST", {"instruction": "to cancel"})[2]["id"]
        assert srv.call(f"/api/points/{job}/cancel", "POST", headers={"Origin": "https://ev.il"})[0] == 403
        assert srv.call(f"/api/points/{job}")[2]["status"] == "queued"
        # 7. a run whose encodings are not as wide as its model is broken, named by file
        runs = {r["run"]: r for r in srv.call("/api/runs")[2]["runs"]}
        assert runs["wide"]["ok"] is False and "hidden size 16, but the model's is 999" in runs["wide"]["error"]
        assert srv.call("/api/runs/wide/points", "POST", {"instruction": "x"})[0] == 404
        # ... and no response of ours holds NaN: a result with NaN reads as null
        nan_job = queue.submit("syn", "place", {"instruction": "nan"})
        queue.claim(["syn"], "h:1")
        queue.finish(nan_job, {"x": float("nan"), "y": float("inf"), "neighbours": [{"distance": float("nan")}]})
        status, _, raw = http(f"{own}/api/points/{nan_job}", headers=AUTH)
        assert status == 200 and b"NaN" not in raw and b"Infinity" not in raw
        assert strict_json(raw)["result"] == {"x": None, "y": None, "neighbours": [{"distance": None}]}
        # 8. small holes
        for path in ("/api", "/api/"):
            status, headers, reply = srv.call(path)
            assert status == 404 and reply == {"error": f"no such API path '/api/'"}, (path, reply)
        for body in (b"garbage", b'{"a": 1}', b'{"output": "nope", "inputs": []}', b"[1, 2]"):
            status, _, raw = http(f"{own}/_dash-update-component", "POST", body,
                                  {**AUTH, "Content-Type": "application/json"})
            assert status == 400 and strict_json(raw)["error"].startswith("callback:"), (body, status, raw)
        for path in ("/_dash-component-suites/..%2f..%2fetc/passwd", "/_dash-component-suites/dash/..%2f..%2fapp.py"):
            assert http(own + path, headers=AUTH)[0] == 404, path
        # health: run names and counts for anyone; worker ids and paths only with the password
        status, _, raw = http(f"{own}/api/health")
        public = raw.decode()
        assert str(tmp_path) not in public and "h:1" not in public, public
        body = strict_json(raw)
        assert body["workers"]["syn"] == {"live": True, "workers": 1, "reason": None}
        assert body["broken"]["wide"].startswith("wide/encodings/layer_")
        detailed = srv.call("/api/health")[2]
        assert detailed["workers"]["syn"]["workers"] == ["h:1"] and str(tmp_path) in detailed["broken"]["wide"]
        assert http(f"{own}/api/runs")[0] == 401  # everything but health needs the password
        assert http(f"{own}/api/runs", headers={"Authorization": "BASIC " + AUTH["Authorization"][6:]})[0] == 200
        _no_5xx_but_503(srv.log())


def test_redis_down_is_a_503_with_retry_after_on_every_queue_route_and_recovers(tmp_path):
    import redis

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port, folder = free_port(), tmp_path / "redis"
    folder.mkdir()
    url = f"redis://127.0.0.1:{port}/0"

    def start_redis():  # durable (append-only file), so a restart keeps the jobs
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                                 "--appendfsync", "always", "--dir", str(folder)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: _pings(redis, url), 15, what="redis-server")
        return proc

    server = start_redis()
    data = tmp_path / "runs"
    write_synthetic_run(data / "syn", 30, seed=3)
    try:
        with serving(["--data", str(data), "--no-worker"], tmp_path, env={"REDIS_URL": url}) as srv:
            status, _, reply = srv.call("/api/runs/syn/points", "POST", {"instruction": "kept across the outage"})
            assert status == 202
            job = reply["id"]
            server.terminate()
            server.wait(timeout=15)
            routes = [("GET", f"/api/points/{job}"), ("GET", "/api/runs/syn/points"),
                      ("GET", "/api/runs/syn/points?format=csv"), ("GET", "/api/runs/syn/points/p1"),
                      ("DELETE", "/api/runs/syn/points/p1"), ("POST", f"/api/points/{job}/cancel"),
                      ("POST", "/api/runs/syn/points")]
            for method, path in routes:
                status, headers, reply = srv.call(path, method, {"instruction": "x"} if method == "POST"
                                                  and path.endswith("/points") else None)
                assert status == 503 and int(headers["Retry-After"]) >= 1, (method, path, status, reply)
                assert reply["error"].startswith("job queue unavailable (Redis"), reply
            server = start_redis()
            status, _, reply = until(lambda: (r := srv.call(f"/api/points/{job}"))[0] == 200 and r, 30,
                                     what="recovery")
            assert reply["status"] == "queued"
            assert srv.call("/api/runs/syn/points")[0] == 200
            assert srv.call("/api/runs/syn/points", "POST", {"instruction": "after"})[0] == 202
            _no_5xx_but_503(srv.log())
    finally:
        server.terminate()
        server.wait(timeout=15)


def _pings(redis, url) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


# --- with the embedded worker ---------------------------------------------------------------------

def _submit(srv, run: str, body: dict, timeout: float = 60):
    """Submit, waiting out 503s (a run not yet picked up by the worker) as their Retry-After says."""
    def attempt():
        status, headers, reply = srv.call(f"/api/runs/{run}/points", "POST", body)
        if status == 503:
            time.sleep(float(headers["Retry-After"]) / 4)
            return None
        assert status == 202, (status, reply)
        return reply["id"]
    return until(attempt, timeout, 0.05, f"a job for {run}")


def _final(srv, job: str, timeout: float = 90) -> dict:
    return until(lambda: (b := srv.call(f"/api/points/{job}")[2])["status"] in ("done", "failed", "cancelled") and b,
                 timeout, 0.05, f"job {job}")


@pytest.mark.slow
def test_runs_added_renamed_and_removed_while_serving_keep_their_ids(tiny_run, tmp_path):
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    shutil.copytree(tiny_run, later / "tiny")
    env = {"LLM_MAPS_HEARTBEAT_TIMEOUT": "3"}
    with serving(["--data", str(first), "--data", str(later)], tmp_path, env=env, ready="health") as srv:
        placed = _final(srv, _submit(srv, "tiny", {"instruction": "Where do I live?"}))
        assert placed["status"] == "done"
        # the model's context is 256 tokens: more new tokens than that is refused at once, named
        status, _, reply = srv.call("/api/runs/tiny/points", "POST", {"instruction": "x", "generate": True,
                                                                      "max_new_tokens": 300})
        assert status == 422 and reply["error"] == ("field 'max_new_tokens': 300 does not fit the model's context of "
                                                    "256 tokens (the prompt needs some of it)")
        # a run of the same name appears in the folder listed first: it never takes the old run's id
        shutil.copytree(tiny_run, first / "tiny")
        assert [r["run"] for r in srv.call("/api/runs")[2]["runs"]] == ["tiny-2", "tiny"]
        assert [p["id"] for p in srv.call("/api/runs/tiny/points")[2]["points"]] == [placed["id"]]
        assert srv.call("/api/runs/tiny-2/points")[2]["points"] == []
        new = _final(srv, _submit(srv, "tiny-2", {"instruction": "And the new one?"}))  # the worker picks it up
        assert new["status"] == "done" and new["run"] == "tiny-2"
        assert [p["id"] for p in srv.call("/api/runs/tiny-2/points")[2]["points"]] == [new["id"]]
        # a run whose train encodings hold NaN: reported and refused, never served from
        shutil.copytree(tiny_run, first / "nan")
        layer = json.loads((first / "nan" / "manifest.json").read_text())["default_layer"]
        enc = np.load(first / "nan" / "encodings" / f"layer_{layer}.npy")
        train = np.flatnonzero(pd.read_parquet(first / "nan" / "examples.parquet")["split"] == "train")
        enc[train[:2]] = np.nan
        np.save(first / "nan" / "encodings" / f"layer_{layer}.npy", enc)
        health = until(lambda: "cannot serve" in ((h := srv.call("/api/health"))[2]["workers"].get("nan", {})
                                                  .get("reason") or "") and h, 30, what="the NaN run reported")
        assert health[0] == 503 and "train rows hold NaN or infinite values" in health[2]["workers"]["nan"]["reason"]
        status, headers, reply = srv.call("/api/runs/nan/points", "POST", {"instruction": "x"})
        assert status == 503 and reply["error"].startswith("run 'nan' cannot be served: nan/encodings/layer_")
        shutil.rmtree(first / "nan")
        # renamed: the old id is gone (404 for its jobs and points), the new name is a new run
        queued = srv.call("/api/runs/tiny-2/points", "POST", {"instruction": "about to move"})[2]["id"]
        (first / "tiny").rename(first / "moved")
        status, _, reply = srv.call(f"/api/points/{queued}")
        assert status == 404 and reply["error"] == f"run 'tiny-2' of point '{queued}' is no longer served"
        for method, path in (("GET", "/api/runs/tiny-2/points"), ("POST", "/api/runs/tiny-2/points"),
                             ("GET", f"/api/points/{new['id']}")):
            assert srv.call(path, method, {"instruction": "x"} if method == "POST" else None)[0] == 404, path
        assert [r["run"] for r in srv.call("/api/runs")[2]["runs"]] == ["moved", "tiny"]
        assert _final(srv, _submit(srv, "moved", {"instruction": "moved?"}))["status"] == "done"
        # removed
        shutil.rmtree(first / "moved")
        assert srv.call("/api/runs/moved/points")[0] == 404
        assert [r["run"] for r in srv.call("/api/runs")[2]["runs"]] == ["tiny"]
        until(lambda: srv.call("/api/health")[0] == 200, 30, what="health after the removal")
        assert _final(srv, _submit(srv, "tiny", {"instruction": "still here?"}))["status"] == "done"
        _no_5xx_but_503(srv.log())
    # the ids were kept in the state folder: a restart gives every run its id again
    assert json.loads((tmp_path / "state" / "run-ids.json").read_text())["ids"] == {
        str((later / "tiny").resolve()): "tiny", str((first / "tiny").resolve()): "tiny-2",
        str((first / "nan").resolve()): "nan", str((first / "moved").resolve()): "moved"}


@pytest.mark.slow
def test_a_frozen_worker_is_killed_and_replaced_and_its_failed_job_stays_failed(tiny_run, tmp_path):
    env = {"LLM_MAPS_HEARTBEAT_TIMEOUT": "2", "LLM_MAPS_RESTART_BACKOFF": "0.5"}
    with serving([str(tiny_run)], tmp_path, env=env, ready="health") as srv:
        [worker] = srv.workers()
        job = _submit(srv, "tiny", {"instruction": "Tell a long story.", "generate": True, "max_new_tokens": 200})
        until(lambda: srv.call(f"/api/points/{job}")[2]["status"] == "running", 30, 0.01, "running")
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            failed = _final(srv, job, 30)
            assert failed["status"] == "failed" and "stopped responding" in failed["error"], failed
            fresh = until(lambda: [w for w in srv.workers() if w.pid != worker.pid], 60, 0.1, "a new worker")
            assert not worker.is_running() or worker.status() == "zombie"  # the frozen one was killed
        finally:
            if worker.is_running():
                os.kill(worker.pid, signal.SIGCONT)
        until(lambda: srv.call("/api/health")[0] == 200, 120, 0.1, "health")
        time.sleep(1)
        again = srv.call(f"/api/points/{job}")[2]
        assert again["status"] == "failed" and again["error"] == failed["error"]  # never done after failed
        assert job not in [p["id"] for p in srv.call("/api/runs/tiny/points")[2]["points"]]
        assert f"embedded worker {socket.gethostname()}:{worker.pid} stopped responding (no heartbeat for" in srv.log()
        assert "and was killed" in srv.log()
        assert _final(srv, _submit(srv, "tiny", {"instruction": "the next job"}))["status"] == "done"
        assert fresh[0].pid in [w.pid for w in srv.workers()]
        _no_5xx_but_503(srv.log())


def test_a_job_failed_meanwhile_stays_failed_and_keeps_no_point(tmp_path):
    """Fencing without processes: a worker whose job was failed while it ran (frozen past its
    heartbeat) finds it so when it publishes or finishes, stops, and keeps nothing."""
    from pipelines.worker import execute_job

    queue, points = JobQueue(tmp_path, heartbeat_timeout=5), PointStore(tmp_path)

    class Session:
        manifest = None

        def place(self, instruction, context="", domain=None):
            # meanwhile a reader found the job stale and failed it
            queue.fail(job["id"], "worker w stopped responding (no heartbeat for 5 s); the job did not finish")
            return {"prompt": instruction, "x": 0.0, "y": 0.0, "dist_to_train": 0.1, "neighbours": [],
                    "domain": None, "expected_accuracy": None, "state": None}

        def generate(self, *a, on_token=None, **k):
            on_token({"text": "late"})
            return {"output": "late"}

    class Pool:
        paths = {"r": tmp_path}

        def get(self, run):
            return Session()

    for kind in ("place", "generate"):
        job_id = queue.submit("r", kind, {"instruction": f"a {kind}"})
        job = queue.claim(["r"], "w")
        assert execute_job(queue, points, Pool(), job, "w") == "fenced"
        final = queue.get(job_id)
        assert final["status"] == "failed" and final["error"].startswith("worker w stopped responding")
        assert not queue.finish(job_id, {"x": 1}) and not queue.update(job_id, result={"x": 2})
        assert queue.get(job_id)["status"] == "failed" and queue.get(job_id).get("result") is None
    assert points.list("r") == []


# --- details the review of this pass found ----------------------------------------------------------

def test_a_queued_job_ended_before_a_worker_took_it_frees_its_place(tmp_path):
    queue = JobQueue(tmp_path, max_queued=1)
    job = queue.submit("gone", "place", {"instruction": "x"})
    assert queue.fail(job, "run 'gone' is no longer served")
    assert queue._count_waiting("gone") == 0 and queue._count_waiting() == 0
    queue.submit("gone", "place", {"instruction": "room again"})  # (the bound is 1: it would be full)
    assert queue.claim(["gone"], "w")["payload"]["instruction"] == "room again"


def test_the_worker_loads_again_a_run_rebuilt_in_place(tmp_path):
    import os as _os

    from pipelines.worker import RunFinder

    a = write_synthetic_run(tmp_path / "runs" / "a", 20, seed=1)
    finder = RunFinder([], [tmp_path / "runs"])
    paths = finder.paths()
    assert finder.changed(paths) == []  # the first look
    assert finder.changed(finder.paths()) == []
    st = (a / "manifest.json").stat()
    _os.utime(a / "manifest.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rebuilt (or fixed) in place
    assert finder.changed(finder.paths()) == ["a"]
    assert finder.changed(finder.paths()) == []


def test_run_ids_follow_the_original_rule_and_survive_a_state_folder_that_cannot_be_written(tmp_path):
    from llm_maps.runfolder import RunIds

    a = write_synthetic_run(tmp_path / "1" / "tiny", 10, seed=1)
    b = write_synthetic_run(tmp_path / "2" / "tiny-2", 10, seed=2)
    c = write_synthetic_run(tmp_path / "3" / "tiny", 10, seed=3)
    d = write_synthetic_run(tmp_path / "4" / "tiny", 10, seed=4)
    ids = RunIds(tmp_path / "state")
    assert ids.assign([a, b, c]) == [("tiny", a), ("tiny-2", b), ("tiny-2-2", c)]
    assert RunIds(tmp_path / "state").assign([d, a]) == [("tiny-3", d), ("tiny", a)]  # kept, and the next one
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the state folder would be")
    assert RunIds(blocked).assign([c, a]) == [("tiny", c), ("tiny-2", a)]  # in memory, still served


def test_cross_origin_rule_behind_a_proxy_and_old_findings_colours():
    import flask

    from dashboard.findings_view import verdict_colour
    from dashboard.hardening import cross_site_refusal

    app = flask.Flask("t")
    cases = [
        ({"Origin": "https://maps.example", "Sec-Fetch-Site": "same-origin"}, None),  # TLS ended at a proxy
        ({"Origin": "https://maps.example", "X-Forwarded-Host": "maps.example"}, None),
        ({"Origin": "http://127.0.0.1:8050"}, None),  # no Sec-Fetch-Site: the host decides, not the scheme
        ({"Origin": "https://ev.il"}, "refused"),
        ({"Origin": "https://ev.il", "Sec-Fetch-Site": "cross-site"}, "refused"),
        ({"Sec-Fetch-Site": "same-site"}, "refused"),
        ({}, None),  # curl, scripts
    ]
    for headers, expected in cases:
        with app.test_request_context("/api/runs/x/points", method="POST", headers=headers,
                                      base_url="http://127.0.0.1:8050"):
            got = cross_site_refusal(flask.request)
            assert (got is None) if expected is None else (expected in got), (headers, got)
    # a findings.json of format 1 (no verdict_detail) is judged by the directional rule on its numbers
    old = {"verdict": "Reasoning falls off more steeply than Chollet: ...",
           "contrast": {"slope_a": 0.5, "slope_b": -0.3, "slope_diff": 0.8, "low": 0.2, "high": 1.4, "p_value": 0.01,
                        "n_tasks_a": 20, "n_tasks_b": 20}}
    assert verdict_colour(old) == "warning"  # reversed: never green
    assert verdict_colour({**old, "contrast": {**old["contrast"], "n_tasks_b": 3}}) == "secondary"
