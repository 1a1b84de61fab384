"""Live points: the job queue, a real worker process, the JSON API, reliability."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import build_scored_run, free_port, poll_streaming, wait_job
from llm_maps.contract import JobRecord, PointRecord, check
from llm_maps.jobs import JobQueue, PointStore, QueueFull


# --- the queue and the point store ------------------------------------------------------------

def test_queue_claims_in_order_atomically_and_is_bounded(tmp_path):
    q = JobQueue(tmp_path, max_queued=2)
    ids = [q.submit("r1", "place", {"instruction": f"q{i}"}) for i in range(2)]
    with pytest.raises(QueueFull) as info:  # each run has its own bound...
        q.submit("r1", "place", {"instruction": "too many"})
    assert info.value.retry_after >= 1 and "queue full (2 jobs waiting for run 'r1')" in str(info.value)
    other = q.submit("r2", "place", {"instruction": "x"})  # ...so a run nobody serves never starves the others
    q.max_queued_total = 3  # and all runs together have theirs
    with pytest.raises(QueueFull) as info:
        q.submit("r3", "place", {"instruction": "over the total"})
    assert "queue full (3 jobs waiting)" in str(info.value)
    q.max_queued = 3
    assert q.claim(["r1"], "w1")["id"] == ids[0]
    job = q.get(ids[0])
    assert job["status"] == "running" and job["worker"] == "w1"
    # a second queue object on the same folder (another process, a restart) sees the same state
    q2 = JobQueue(tmp_path, max_queued=2)
    assert q2.claim(["r2", "r1"], "w2")["id"] == other
    assert q2.claim(["r1"], "w2")["id"] == ids[1]
    assert q2.claim(["r1", "r2"], "w2") is None
    q2.finish(ids[1], {"x": 1.0})
    assert q.get(ids[1])["status"] == "done" and q.get(ids[1])["result"] == {"x": 1.0}
    assert check(q.get(ids[1]), JobRecord) == [] and check(q.get(ids[0]), JobRecord) == []
    q.submit("r1", "place", {"instruction": "room again"})  # claimed jobs free their places
    q.submit("r1", "place", {"instruction": "and again"})
    assert (q._count_waiting("r1"), q._count_waiting("r2"), q._count_waiting()) == (2, 0, 2)


def test_running_job_without_heartbeat_fails_with_reason(tmp_path):
    q = JobQueue(tmp_path, heartbeat_timeout=0.3)
    job_id = q.submit("r", "generate", {"instruction": "x"})
    q.claim(["r"], "host:123")
    q.heartbeat(job_id)
    assert q.get(job_id)["status"] == "running"
    time.sleep(0.5)
    job = q.get(job_id)
    assert job["status"] == "failed"
    assert job["error"] == "worker host:123 stopped responding (no heartbeat for 0.3 s); the job did not finish"


def test_point_store_persists_and_deletes(tmp_path):
    s = PointStore(tmp_path)
    s.add("demo", {"id": "a", "x": 1.0})
    s.add("demo", {"id": "b", "x": 2.0})
    with open(tmp_path / "points" / "demo.jsonl", "a") as fh:
        fh.write('{"id": "torn')  # a crash mid-write loses only that line
    assert [p["id"] for p in PointStore(tmp_path).list("demo")] == ["a", "b"]
    assert s.delete("demo", "a") is True and s.delete("demo", "zzz") is False
    assert [p["id"] for p in s.list("demo")] == ["b"]
    assert s.list("other") == []


# --- a real worker process behind the real API ------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("live")
    return build_scored_run(root, tiny_models["gpt2"], 30), root / "state"


def _start_worker(run: Path, state: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "interfaces.cli", "worker", str(run), "--state", str(state)],
                            env={**os.environ, **{k: str(v) for k, v in env.items()}},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _client(run: Path, state: Path):
    from dashboard.app import create_app

    return create_app([run], state_dir=state).server.test_client()




def test_place_and_generate_through_the_api(live):
    from pipelines.engine import RunSession

    run, state = live
    client = _client(run, state)
    # queued before any worker runs: the job waits and survives until a worker starts
    r = client.post("/api/runs/tiny/points", json={"instruction": "Question 3: the sea and the wind"})
    assert r.status_code == 202
    place_id = r.get_json()["id"]
    assert client.get(f"/api/points/{place_id}").get_json()["status"] == "queued"
    worker = _start_worker(run, state)
    try:
        body = wait_job(client, place_id)
        assert body["status"] == "done", body
        res = body["result"]
        expected = RunSession(run, warm=False).place("Question 3: the sea and the wind")
        assert res["prompt"] == expected["prompt"]
        assert res["x"] == pytest.approx(expected["x"], abs=1e-6) and res["y"] == pytest.approx(expected["y"], abs=1e-6)
        assert [n["example_id"] for n in res["neighbours"]] == [n["example_id"] for n in expected["neighbours"]]
        assert set(res["expected_accuracy"]) >= {"domain", "accuracy", "low", "high", "n"}

        r = client.post("/api/runs/tiny/points", json={"instruction": "Write a poem about the light.", "generate": True,
                                                      "max_new_tokens": 120, "temperature": 0.8, "seed": 3})
        gen_id = r.get_json()["id"]
        body, seen_partial = poll_streaming(client, gen_id, every=0.005)
        assert body["status"] == "done", body
        tokens = body["result"]["tokens"]
        assert len(tokens) >= 2
        # streaming: tokens were visible while the job was still running, before the last one
        assert any(0 < n < len(tokens) for n in seen_partial), (seen_partial, len(tokens))
        for t in tokens:
            assert set(t) == {"text", "id", "logprob", "top", "x", "y", "dist", "step"} and t["logprob"] <= 0
        assert body["result"]["output"] is not None

        # user points persist per run, outside the run folder, and can be deleted
        pts = client.get("/api/runs/tiny/points").get_json()["points"]
        assert [p["id"] for p in pts] == [place_id, gen_id]
        assert pts[1]["kind"] == "generate" and pts[1]["options"]["seed"] == 3
        assert [check(p, PointRecord) for p in pts] == [[], []]  # the contract (docs/run-folder.md)
        assert client.delete(f"/api/runs/tiny/points/{place_id}").status_code == 200
        assert [p["id"] for p in client.get("/api/runs/tiny/points").get_json()["points"]] == [gen_id]
        assert client.delete(f"/api/runs/tiny/points/{place_id}").status_code == 404
        assert not any(p.name.startswith("points") for p in run.iterdir())
        # a web restart loses no finished result
        again = _client(run, state)
        assert again.get(f"/api/points/{gen_id}").get_json()["result"]["tokens"] == tokens
    finally:
        worker.terminate()
        worker.wait(timeout=20)


def test_api_errors(live):
    run, state = live
    client = _client(run, state)
    cases = [
        ("/api/runs/nope/points", {"instruction": "x"}, 404, "unknown run 'nope'"),
        ("/api/runs/tiny/points", {"context": "only"}, 422, "field 'instruction'"),
        ("/api/runs/tiny/points", {"instruction": "x", "temperature": -1}, 422, "field 'temperature'"),
        ("/api/runs/tiny/points", {"instruction": "x", "max_new_tokens": 0}, 422, "field 'max_new_tokens'"),
        ("/api/runs/tiny/points", {"instruction": "x", "top_p": "high"}, 422, "field 'top_p'"),
        ("/api/runs/tiny/points", {"instruction": "x", "colour": "red"}, 422, "field 'colour': unknown field"),
        ("/api/runs/tiny/points", {"instruction": "x" * 8001}, 413, "8001 characters"),
        ("/api/runs/tiny/points", {"instruction": "the sea " * 200}, 413, "tokens; this run's limit is 256"),
    ]
    for url, body, status, message in cases:
        r = client.post(url, json=body)
        assert r.status_code == status and message in r.get_json()["error"], (body, r.get_json())
    r = client.post("/api/runs/tiny/points", data="{oops", content_type="application/json")
    assert r.status_code == 422 and "invalid JSON" in r.get_json()["error"]
    assert client.get("/api/points/doesnotexist").status_code == 404
    ex = client.get("/api/runs/tiny/examples/d-1").get_json()
    assert ex["example_id"] == "d-1" and isinstance(ex["nn_train_ids"], list)
    assert client.get("/api/runs/tiny/examples/nope").status_code == 404
    runs = client.get("/api/runs").get_json()["runs"]
    assert runs[0]["run"] == "tiny" and runs[0]["counts"]["examples"] == 30


def test_queue_full_is_503_with_retry_after(live, tmp_path, monkeypatch):
    run, _ = live
    from dashboard.app import create_app

    app = create_app([run], state_dir=tmp_path / "state")
    app.server.config["LLM_MAPS_QUEUE"].max_queued = 2
    client = app.server.test_client()
    assert [client.post("/api/runs/tiny/points", json={"instruction": "x"}).status_code for _ in range(2)] == [202, 202]
    r = client.post("/api/runs/tiny/points", json={"instruction": "x"})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "queue full" in r.get_json()["error"]


def test_killed_worker_leaves_the_job_failed(live, tmp_path):
    run, _ = live
    state = tmp_path / "state"
    client = _client(run, state)
    worker = _start_worker(run, state, LLM_MAPS_HEARTBEAT_TIMEOUT=2)
    try:
        job_id = client.post("/api/runs/tiny/points", json={"instruction": "Tell a long story.", "generate": True,
                                                            "max_new_tokens": 200}).get_json()["id"]
        wait_job(client, job_id, until=("running", "done", "failed"))
        os.kill(worker.pid, signal.SIGSTOP)  # freeze it mid-job (no more heartbeats), then kill it
        assert client.get(f"/api/points/{job_id}").get_json()["status"] == "running"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        start = time.time()
        body = wait_job(client, job_id, timeout=15)
        assert body["status"] == "failed" and "stopped responding" in body["error"]
        assert time.time() - start < 5  # within the heartbeat timeout (2 s) plus polling
    finally:
        if worker.poll() is None:
            worker.kill()


def test_serve_starts_a_worker_and_stops_it_on_sigterm(live, tmp_path):
    import psutil

    from live_helpers import worker_children

    run, _ = live
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", str(run), "--port", str(port)],
                             env={**os.environ, "LLM_MAPS_STATE": str(tmp_path / "state")},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        workers = []
        while not workers:
            assert serve.poll() is None and time.time() < deadline
            workers = worker_children(serve.pid)
            time.sleep(0.2)
        serve.terminate()
        serve.wait(timeout=20)
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive  # the embedded worker never outlives the server
    finally:
        if serve.poll() is None:
            serve.kill()


def test_a_worker_whose_run_of_that_id_is_another_run_fails_the_job(tmp_path):
    """Workers with their own state folders (Celery workers on other machines) may give a run id to
    another run than the web process does: the job's run key tells, and the job fails naming it."""
    from pipelines.worker import execute_job
    from llm_maps.runfolder import run_key

    queue, points = JobQueue(tmp_path), PointStore(tmp_path)

    class Pool:
        paths = {"tiny": tmp_path / "elsewhere" / "tiny"}

        def get(self, run):
            return type("Session", (), {"manifest": {"created": "2026-01-02", "model": "m", "counts": {"examples": 5}}})()

    job_id = queue.submit("tiny", "place", {"instruction": "x"},
                          run_key=run_key({"created": "2026-01-01", "model": "m", "counts": {"examples": 5}}))
    assert execute_job(queue, points, Pool(), queue.claim(["tiny"], "w"), "w") == "failed"
    job = queue.get(job_id)
    assert job["status"] == "failed" and job["error"].startswith(
        f"run 'tiny' of worker w is another run than the one the web process serves under that id "
        f"({tmp_path / 'elsewhere' / 'tiny'})")
    assert points.list("tiny") == []


def test_job_timeout_and_errors_fail_the_job_but_not_the_worker(tmp_path):
    from llm_maps.errors import LLMMapsError
    from pipelines.worker import execute_job

    class SlowSession:
        def place(self, instruction, context="", domain=None):
            if instruction == "bad":
                raise LLMMapsError("prompt is 9000 tokens; this run's limit is 2048")
            if instruction == "crash":
                raise RuntimeError("boom")
            return {"prompt": instruction, "x": 0.0, "y": 0.0, "dist_to_train": 0.1, "neighbours": [],
                    "domain": None, "expected_accuracy": None}

        def generate(self, instruction, context="", *, on_token=None, placed=None, **kw):
            for i in range(100):
                time.sleep(0.02)
                on_token({"text": "a", "id": i, "logprob": -1.0, "top": [], "x": 0.0, "y": 0.0})
            return {**placed, "tokens": [], "output": "a" * 100}

    class Pool:
        max_models = 1
        paths = {"r": tmp_path}

        def get(self, run):
            return SlowSession()

    q = JobQueue(tmp_path / "state", job_timeout=0.3)
    points = PointStore(tmp_path / "state")
    outcomes = {}
    for name, kind in (("slow", "generate"), ("bad", "place"), ("crash", "place"), ("ok", "place")):
        job_id = q.submit("r", kind, {"instruction": name})
        job = q.claim(["r"], "w")
        assert execute_job(q, points, Pool(), job, "w") in ("done", "failed")
        outcomes[name] = q.get(job_id)
    assert outcomes["slow"]["status"] == "failed" and outcomes["slow"]["error"] == "timed out after 0.3 s"
    assert outcomes["bad"]["error"] == "prompt is 9000 tokens; this run's limit is 2048"
    assert outcomes["crash"]["error"] == "internal error (RuntimeError); see the worker log"  # no stack trace
    assert outcomes["ok"]["status"] == "done"
    assert [p["instruction"] for p in points.list("r")] == ["ok"]


def test_cancel_stops_a_running_generation_and_skips_a_queued_job(tmp_path):
    """A running generation stops at the next token after cancel and keeps what it made (not stored
    as a point); a queued job is cancelled before any worker sees it and is never run."""
    import threading

    from pipelines.worker import execute_job

    started = threading.Event()

    class SlowSession:
        def place(self, instruction, context="", domain=None):
            return {"prompt": instruction, "x": 0.0, "y": 0.0, "dist_to_train": 0.1, "neighbours": [],
                    "domain": None, "expected_accuracy": None, "state": np.zeros(4, dtype=np.float32)}

        def generate(self, instruction, context="", *, on_token=None, placed=None, **kw):
            for i in range(500):
                time.sleep(0.01)
                on_token({"text": "a", "id": i, "logprob": -1.0, "top": [], "x": 0.0, "y": 0.0})
                if i == 3:
                    started.set()
            return {**placed, "tokens": [], "output": "a" * 500}

    class Pool:
        paths = {"r": tmp_path}

        def get(self, run):
            return SlowSession()

    q = JobQueue(tmp_path / "state")
    points = PointStore(tmp_path / "state")
    queued = q.submit("r", "place", {"instruction": "never"})
    assert q.cancel(queued)["status"] == "cancelled" and q.cancel("nope") is None
    running = q.submit("r", "generate", {"instruction": "long", "max_new_tokens": 500})
    job = q.claim(["r"], "w")
    assert job["id"] == running  # the cancelled job was skipped
    outcome = []
    t = threading.Thread(target=lambda: outcome.append(execute_job(q, points, Pool(), job, "w")))
    t.start()
    assert started.wait(10)
    after = q.cancel(running)
    assert after["status"] == "running" and after["cancel_requested"] is True
    t.join(20)
    assert outcome == ["cancelled"]
    final = q.get(running)
    assert final["status"] == "cancelled" and final["result"]["stop_reason"] == "cancelled"
    assert 4 <= len(final["result"]["tokens"]) < 500 and "state" not in final["result"]
    assert q.cancel(running)["status"] == "cancelled"  # final states never change
    assert points.list("r") == [] and q.claim(["r"], "w") is None
    assert q.get(queued)["status"] == "cancelled" and q.get(queued)["started"] is None


def test_cancel_export_and_single_point_through_the_api(live, tmp_path):
    import csv
    import io

    run, _ = live
    state = tmp_path / "state"
    client = _client(run, state)
    job_id = client.post("/api/runs/tiny/points", json={"instruction": "queued, then cancelled"}).get_json()["id"]
    r = client.post(f"/api/points/{job_id}/cancel")
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert client.get(f"/api/points/{job_id}").get_json()["status"] == "cancelled"
    assert client.post("/api/points/nope/cancel").status_code == 404
    # two finished points in the store (as the worker writes them), exported both ways
    store = PointStore(state)
    gen = {"id": "g1", "created": 1.0, "kind": "generate", "instruction": 'say "hi", then\na comma',
           "context": "", "options": {"max_new_tokens": 4, "temperature": 0.7, "seed": 3}, "prompt": "P",
           "x": 1.5, "y": -2.0, "dist_to_train": 0.25, "domain": "Chollet",
           "neighbours": [{"example_id": "d-1", "distance": 0.25}, {"example_id": "d-2", "distance": 0.5}],
           "expected_accuracy": {"domain": "Chollet", "accuracy": 0.5, "low": 0.2, "high": 0.8, "n": 4, "bin": 0},
           "output": "hi, there", "tokens": [{"text": "hi", "logprob": -0.5}], "stop_reason": "eos", "n_tokens": 1,
           "mean_logprob": -0.5, "perplexity": 1.6487, "path_length": 0.3, "final_dist": 0.2}
    store.add("tiny", gen)
    store.add("tiny", {"id": "p1", "created": 2.0, "kind": "place", "instruction": "<script>x</script>", "context": "",
                       "options": {}, "prompt": "Q", "x": 0.0, "y": 0.0, "dist_to_train": 0.1, "domain": None,
                       "neighbours": [], "expected_accuracy": None})
    assert client.get("/api/runs/tiny/points/g1").get_json() == gen
    assert client.get("/api/runs/tiny/points/zzz").status_code == 404
    r = client.get("/api/runs/tiny/points?format=jsonl")
    assert r.status_code == 200 and 'filename="tiny-points.jsonl"' in r.headers["Content-Disposition"]
    assert [json.loads(line) for line in r.get_data(as_text=True).splitlines()] == store.list("tiny")
    r = client.get("/api/runs/tiny/points?format=csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["id"] for row in rows] == ["g1", "p1"]
    assert rows[0]["instruction"] == gen["instruction"] and rows[0]["neighbours"] == "d-1:0.25;d-2:0.5"
    assert (rows[0]["x"], rows[0]["expected_accuracy"], rows[0]["seed"], rows[0]["path_length"]) == ("1.5", "0.5", "3", "0.3")
    # a falloff.json without intervals over tasks: Wilson's, named so
    assert [rows[0][k] for k in ("expected_low", "expected_high", "expected_task_low", "expected_tasks")] == \
        ["0.2", "0.8", "", ""]
    assert list(rows[0])[-3:] == ["expected_task_low", "expected_task_high", "expected_tasks"]  # appended last
    assert rows[1]["instruction"] == "<script>x</script>" and rows[1]["output"] == "" and rows[1]["neighbours"] == ""
    assert client.get("/api/runs/tiny/points?format=xml").status_code == 422
