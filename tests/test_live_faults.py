"""Live points under faults: worker supervision and per-run liveness in /api/health (SIGKILL of the
embedded worker of a real `llm-maps serve`, and of a Celery worker on Redis), queue isolation
(runs `a` and `a-2`; two runs with the same folder name), job records readable at every moment
(a long generation polled every 20 ms), and a body cap that answers before reading the body."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import build_scored_run, free_port
from llm_maps.jobs import JobQueue, RedisJobQueue, _queue_prefix

HEARTBEAT = 2  # seconds: the workers' heartbeat timeout in the process tests


# --- the rules, without processes -------------------------------------------------------------------

def test_one_run_id_rule_for_the_web_process_the_worker_and_the_point_store(tmp_path):
    from dashboard.data import RunRegistry
    from dashboard.synthetic import write_synthetic_run
    from llm_maps.runfolder import run_ids
    from pipelines.engine import SessionPool

    a = write_synthetic_run(tmp_path / "a" / "tiny", 20, seed=1)
    b = write_synthetic_run(tmp_path / "b" / "tiny", 20, seed=2)
    c = write_synthetic_run(tmp_path / "c" / "tiny-2", 20, seed=3)
    paths = [a, b, c, tmp_path / "a" / ".." / "a" / "tiny"]  # the last is `a` again: counted once
    assert run_ids(paths) == [("tiny", a), ("tiny-2", b), ("tiny-2-2", c)]
    assert [(e.id, e.path) for e in RunRegistry(paths).entries()] == run_ids(paths)
    assert SessionPool(paths).paths == dict(run_ids(paths))


def test_embedded_queue_claims_only_jobs_of_exactly_its_run(tmp_path):
    q = JobQueue(tmp_path)
    other = q.submit("a-2", "place", {"instruction": "for a-2"})
    mine = q.submit("a", "place", {"instruction": "for a"})
    also_other = q.submit("a-22", "place", {"instruction": "for a-22"})
    assert q.claim(["a"], "w")["id"] == mine
    assert q.claim(["a"], "w") is None  # the jobs of a-2 and a-22 stay where they are
    assert [q.claim(["a-2"], "w")["id"], q.claim(["a-22"], "w")["id"]] == [other, also_other]
    assert _queue_prefix("a") != _queue_prefix("a-2") and len(_queue_prefix("a")) == len(_queue_prefix("a-2"))
    # jobs an older version queued under "queue:<run>" (a range that held a-2's jobs too) go to their own run
    q2 = JobQueue(tmp_path / "old")
    legacy = {}
    for run in ("a-2", "a", "a"):
        job_id = f"{run}-{len(legacy)}"
        q2.cache.set(f"job:{job_id}", {"id": job_id, "run": run, "kind": "place", "payload": {}, "status": "queued",
                                       "created": time.time()})
        q2.cache.push(job_id, prefix=f"queue:{run}")
        q2.cache.incr("waiting", 1, default=0)
        legacy[job_id] = run
    assert [q2.claim(["a"], "w")["id"], q2.claim(["a"], "w")["id"], q2.claim(["a"], "w")] == ["a-1", "a-2", None]
    assert q2.claim(["a-2"], "w")["id"] == "a-2-0" and q2._count_waiting() == 0


WRITER = """
import sys, time
from llm_maps.jobs import JobQueue
q, n, end = JobQueue(sys.argv[1]), 0, time.time() + float(sys.argv[3])
while time.time() < end:
    n += 1
    q.update(sys.argv[2], result={"tokens": [{"text": f"t{i}", "top": [i + j for j in range(20)]}
                                             for i in range(1000 + n % 50)]})
"""


def test_job_records_are_readable_while_a_worker_rewrites_them(tmp_path):
    """Large records (over 32 KB, which diskcache kept in side files) replaced by a worker process
    while the web process reads them: no read misses (with side files, most reads missed)."""
    import pickle

    q = JobQueue(tmp_path)
    job_id = q.submit("r", "generate", {"instruction": "x"})
    q.claim(["r"], "w")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), job_id, "3"])
    try:
        _until(lambda: (q.get(job_id) or {}).get("result"), 30)
        sizes = set()
        for _ in range(600):  # with side files, most of them missed
            job = q.get(job_id)
            assert job is not None and job["status"] == "running"
            sizes.add(len(job["result"]["tokens"]))
    finally:
        writer.wait(timeout=30)
    assert len(sizes) > 3  # really being rewritten meanwhile
    assert len(pickle.dumps(q.get(job_id), protocol=5)) > 32 * 1024


@pytest.fixture(params=["embedded", "redis"])
def queue(request, tmp_path):
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        q = RedisJobQueue(url, heartbeat_timeout=0.5, prefix=f"live-{time.time_ns()}")
    else:
        q = JobQueue(tmp_path, heartbeat_timeout=0.5)
    yield q
    q.close()


def test_worker_liveness_registry_and_failing_a_dead_workers_jobs(queue):
    assert queue.run_liveness(["a"]) == {"a": {"live": False, "workers": [],
                                               "reason": "no worker has registered for this run"}}
    queue.register_worker("h:1", ["a", "b"], "starting")
    assert queue.run_liveness(["a"])["a"] == {"live": False, "workers": [], "reason": "worker h:1 is starting (loading the model)"}
    queue.register_worker("h:1", ["a", "b"], "ready")
    queue.register_worker("h:2", ["c"], "ready")
    live = queue.run_liveness(["a", "b", "c", "d"])
    assert [live[r]["live"] for r in "abcd"] == [True, True, True, False] and live["a"]["workers"] == ["h:1"]
    mine = queue.submit("a", "generate", {"instruction": "x"})
    other = queue.submit("c", "generate", {"instruction": "y"})
    if isinstance(queue, JobQueue):
        queue.claim(["a"], "h:1"), queue.claim(["c"], "h:2")
    else:
        queue.claim_id(mine, "h:1"), queue.claim_id(other, "h:2")
    queue.worker_gone("h:1", "exited (killed by SIGKILL); restarting in 1 s")
    assert queue.fail_worker_jobs("h:1", "worker h:1 exited (killed by SIGKILL); the job did not finish") == 1
    assert queue.run_liveness(["a"])["a"] == {"live": False, "workers": [],
                                              "reason": "worker h:1 exited (killed by SIGKILL); restarting in 1 s"}
    job = queue.get(mine)
    assert job["status"] == "failed" and job["error"] == "worker h:1 exited (killed by SIGKILL); the job did not finish"
    assert queue.get(other)["status"] == "running"
    time.sleep(0.8)  # h:2 stops beating: stale after the heartbeat timeout
    assert queue.run_liveness(["c"])["c"]["reason"].startswith("worker h:2 stopped responding (no heartbeat for")


def test_health_names_runs_without_a_live_worker_where_workers_are_expected(tmp_path, monkeypatch):
    from dashboard.app import create_app
    from dashboard.synthetic import write_synthetic_run

    run = write_synthetic_run(tmp_path / "syn", 20, seed=1)
    monkeypatch.setenv("LLM_MAPS_EXPECT_WORKERS", "1")
    app = create_app([run], [], state_dir=tmp_path / "state")
    client, queue = app.server.test_client(), app.server.config["LLM_MAPS_QUEUE"]
    r = client.get("/api/health")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.get_json()["status"] == "no worker"
    assert r.get_json()["reason"] == "run 'syn': no worker has registered for this run"
    queue.register_worker("h:9", ["syn"], "ready")
    r = client.get("/api/health")  # probes carry no password: run names and counts, no worker ids
    assert r.status_code == 200 and r.get_json() == {
        "status": "ready", "runs": 1, "broken": {},
        "workers": {"syn": {"live": True, "workers": 1, "reason": None}}}
    queue.worker_gone("h:9", "exited (killed by SIGKILL); restarting in 1 s")
    assert client.get("/api/health").get_json()["reason"] == \
        "run 'syn': worker exited (killed by SIGKILL); restarting in 1 s"
    # with the app's credentials, the details: worker ids
    app = create_app([run], [], state_dir=tmp_path / "state", auth="ann:secret")
    client = app.server.test_client()
    app.server.config["LLM_MAPS_QUEUE"].register_worker("h:9", ["syn"], "ready")
    assert client.get("/api/health").get_json()["workers"]["syn"]["workers"] == 1
    for scheme in ("Basic", "basic", "BASIC"):  # RFC 7617: the scheme is case-insensitive
        r = client.get("/api/health", headers={"Authorization": f"{scheme} " + base64.b64encode(b"ann:secret").decode()})
        assert r.get_json()["workers"] == {"syn": {"live": True, "workers": ["h:9"], "reason": None}}, scheme
        assert client.get("/api/runs", headers={"Authorization": f"{scheme} "
                                                + base64.b64encode(b"ann:secret").decode()}).status_code == 200
    assert client.get("/api/runs", headers={"Authorization": "Bearer " + base64.b64encode(b"ann:secret").decode()}
                      ).status_code == 401


def test_supervisor_restarts_with_back_off_records_the_exit_and_stops_its_worker(tmp_path):
    import re

    from interfaces.supervisor import WorkerSupervisor

    def supervise(code: str, n: int, **kw):
        logs, spawned = [], []

        def spawn(runs, state):
            # worker n + 1 stays up: stop() must end it
            spawned.append(subprocess.Popen([sys.executable, "-c", code if len(spawned) < n else "import time; time.sleep(60)"]))
            return spawned[-1]

        sup = WorkerSupervisor([tmp_path / "r"], tmp_path / "state", spawn=spawn, log=logs.append, **kw).start()
        _until(lambda: len(spawned) > n, 60)
        sup.stop()
        assert spawned[-1].returncode == -signal.SIGTERM and sup.restarts == n
        return logs, spawned

    logs, spawned = supervise("import sys; sys.exit(3)", 5, backoff=0.1, max_backoff=0.4, stable_after=60)
    assert [re.search(r"restarting it in (\S+) s", m).group(1) for m in logs] == ["0.1", "0.2", "0.4", "0.4", "0.4"]
    assert all(f"embedded worker {socket.gethostname()}:{p.pid} exited with code 3" in m for m, p in zip(logs, spawned))
    record = JobQueue(tmp_path / "state").workers()[f"{socket.gethostname()}:{spawned[0].pid}"]
    assert record["status"] == "gone" and record["reason"] == "exited with code 3; restarting in 0.1 s"
    # workers that lived `stable_after` seconds reset the back-off
    logs, _ = supervise("import time; time.sleep(0.4)", 3, backoff=0.1, stable_after=0.3)
    assert [re.search(r"restarting it in (\S+) s", m).group(1) for m in logs] == ["0.1", "0.1", "0.1"]


# --- real processes ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_tiny(tmp_path_factory, tiny_models):
    """Two different runs, both in a folder named `tiny` (ids `tiny` and `tiny-2`)."""
    a = build_scored_run(tmp_path_factory.mktemp("first"), tiny_models["gpt2"], 30)
    b = build_scored_run(tmp_path_factory.mktemp("second"), tiny_models["gpt2"], 24)
    return a, b


def _children(pid: int) -> list:
    from live_helpers import worker_children

    return worker_children(pid)


def _get(url: str):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def _post(url: str, body: dict):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until(check, timeout: float, every: float = 0.05):
    deadline = time.time() + timeout
    while True:
        out = check()
        if out:
            return out
        assert time.time() < deadline, "timed out"
        time.sleep(every)


@pytest.mark.slow
def test_serve_restarts_a_killed_worker_and_health_says_why_meanwhile(two_tiny, tmp_path):
    import psutil

    run = two_tiny[0]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LLM_MAPS_STATE": str(tmp_path / "state"), "LLM_MAPS_HEARTBEAT_TIMEOUT": str(HEARTBEAT),
           "LLM_MAPS_RESTART_BACKOFF": "0.5"}
    env.pop("LLM_MAPS_EXPECT_WORKERS", None)
    log = open(tmp_path / "serve.log", "w+")
    serve = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", str(run), "--port", str(port)],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def health():
            try:
                return _get(f"{base}/api/health")
            except OSError:
                return None
        first = _until(lambda: (h := health()) and h[0] == 200 and h, 120)
        [worker] = _children(serve.pid)
        assert first[1]["workers"]["tiny"]["workers"] == 1  # (probes see counts; ids need the password)
        # a long generation, running when its worker is killed
        status, body = _post(f"{base}/api/runs/tiny/points", {"instruction": "Tell a long story.", "generate": True,
                                                              "max_new_tokens": 200})
        job = body["id"]
        _until(lambda: _get(f"{base}/api/points/{job}")[1]["status"] == "running", 30, 0.01)
        os.kill(worker.pid, signal.SIGKILL)
        code, down, headers = _until(lambda: (h := health()) and h[0] == 503 and h, 5, 0.02)
        assert down["status"] == "no worker" and headers["Retry-After"] == "1"
        assert down["reason"].startswith("run 'tiny': worker exited (killed by SIGKILL); restarting in 0.5 s"), down
        assert str(worker.pid) not in json.dumps(down)
        failed = _until(lambda: (b := _get(f"{base}/api/points/{job}")[1])["status"] != "running" and b, 5, 0.02)
        assert failed["status"] == "failed" and failed["error"] == (
            f"worker {socket.gethostname()}:{worker.pid} exited (killed by SIGKILL); the job did not finish")
        # jobs sent while no worker is alive wait for the next one
        queued = _post(f"{base}/api/runs/tiny/points", {"instruction": "asked while down"})[1]["id"]
        assert _get(f"{base}/api/points/{queued}")[1]["status"] == "queued"
        _until(lambda: health()[0] == 200, 120, 0.1)
        [fresh] = _children(serve.pid)
        assert fresh.pid != worker.pid
        done = _until(lambda: (b := _get(f"{base}/api/points/{queued}")[1])["status"] in ("done", "failed") and b, 60)
        assert done["status"] == "done", done
        nxt = _post(f"{base}/api/runs/tiny/points", {"instruction": "the next job"})[1]["id"]
        assert _until(lambda: (b := _get(f"{base}/api/points/{nxt}")[1])["status"] in ("done", "failed") and b,
                      60)["status"] == "done"
        log.flush()
        text = Path(log.name).read_text()
        assert f"embedded worker {socket.gethostname()}:{worker.pid} exited (killed by SIGKILL)" in text
        assert "restarting it in 0.5 s (restart 1)" in text
        # a 200 MB body is answered 413 from its headers, before it is read; the server stays small
        rss = psutil.Process(serve.pid).memory_info().rss
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /api/runs/tiny/points HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 200000000\r\n\r\n" + b"[" * 65536)
            reply = b""  # headers and body may come in separate packets; the server closes after them,
            try:  # with a reset when our unread upload is still in its buffer
                while chunk := s.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
        head, _, payload = reply.partition(b"\r\n\r\n")
        # over LLM_MAPS_MAX_BODY the WSGI server (waitress) refuses it from the header, before the
        # app (whose JSON 413s cover smaller oversize bodies: tests/test_hostile.py), in the same JSON
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"content-type: application/json" in head.lower() and b"x-content-type-options: nosniff" in head.lower()
        limit = int(os.environ.get("LLM_MAPS_MAX_BODY", str(2 * 1024 * 1024)))
        if payload:  # (a reset may drop it; tests/test_hostile.py checks waitress's JSON errors directly)
            assert json.loads(payload) == {"error": f"body: 200000000 bytes; the limit is {limit} bytes"}
        assert psutil.Process(serve.pid).memory_info().rss - rss < 30e6
        assert health()[0] == 200
    finally:
        workers = _children(serve.pid) if serve.poll() is None else []
        serve.terminate()
        serve.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive  # the supervisor stops its worker with the server
        log.close()


def _start_worker(runs, state: Path | None = None, **env) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "interfaces.cli", "worker", *map(str, runs)] + (["--state", str(state)] if state else [])
    return subprocess.Popen(cmd, env={**os.environ, "LLM_MAPS_HEARTBEAT_TIMEOUT": str(HEARTBEAT),
                                      **{k: str(v) for k, v in env.items()}},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _done(client, job_id: str, timeout: float = 90.0) -> dict:
    return _until(lambda: (b := client.get(f"/api/points/{job_id}").get_json())["status"]
                  in ("done", "failed", "cancelled") and b, timeout, 0.02)


def _check_placed_on_its_own_run(client, two_tiny) -> None:
    from pipelines.engine import RunSession

    text = "Question 3: the sea and the wind"
    jobs = {run: client.post(f"/api/runs/{run}/points", json={"instruction": text}).get_json()["id"]
            for run in ("tiny", "tiny-2")}
    for (run, job_id), folder in zip(jobs.items(), two_tiny):
        body = _done(client, job_id)
        assert body["status"] == "done" and body["run"] == run, body
        expected = RunSession(folder, warm=False).place(text)
        assert body["result"]["x"] == pytest.approx(expected["x"], abs=1e-6)
        assert [n["example_id"] for n in body["result"]["neighbours"]] == [n["example_id"] for n in expected["neighbours"]]
    # the two runs really differ (else this test could not tell them apart)
    a, b = (client.get(f"/api/points/{jobs[r]}").get_json()["result"] for r in ("tiny", "tiny-2"))
    assert (a["x"], a["y"]) != (b["x"], b["y"])


@pytest.mark.slow
def test_same_folder_names_run_on_their_own_run_and_polling_every_20_ms_never_misses(two_tiny, tmp_path):
    from dashboard.app import create_app

    state = tmp_path / "state"
    client = create_app(list(two_tiny), [], state_dir=state).server.test_client()
    assert [r["run"] for r in client.get("/api/runs").get_json()["runs"]] == ["tiny", "tiny-2"]
    worker = _start_worker(two_tiny, state)
    try:
        _check_placed_on_its_own_run(client, two_tiny)
        job_id = client.post("/api/runs/tiny-2/points", json={"instruction": "Tell a long story.", "generate": True,
                                                              "max_new_tokens": 200}).get_json()["id"]
        polls, sizes = 0, []
        while True:
            r = client.get(f"/api/points/{job_id}")
            polls += 1
            assert r.status_code == 200, (polls, r.data[:200])  # never a miss
            body = r.get_json()
            sizes.append(len(r.data))
            if body["status"] in ("done", "failed"):
                break
            time.sleep(0.02)
        assert body["status"] == "done" and body["run"] == "tiny-2", body
        # the record grew past the size where the store used to move it to a file, while polled
        assert max(sizes) > 32 * 1024 and polls > 10, (max(sizes), polls)
    finally:
        _stop(worker)
    # a worker given only the second folder serves it under the web's id for it (`tiny-2`: the ids are
    # shared through the state folder), never as `tiny`; a job for `tiny` is refused, naming the run
    os.environ["LLM_MAPS_EXPECT_WORKERS"] = "1"
    try:
        client2 = create_app(list(two_tiny), [], state_dir=tmp_path / "state2").server.test_client()
    finally:
        del os.environ["LLM_MAPS_EXPECT_WORKERS"]
    assert [r["run"] for r in client2.get("/api/runs").get_json()["runs"]] == ["tiny", "tiny-2"]
    lone = _start_worker([two_tiny[1]], tmp_path / "state2")
    try:
        _until(lambda: client2.get("/api/health").get_json()["workers"]["tiny-2"]["live"], 120, 0.1)
        r = client2.post("/api/runs/tiny/points", json={"instruction": "x"})
        assert r.status_code == 503 and r.get_json() == {"error": "no worker serves run 'tiny' yet; retry later"}
        body = _done(client2, client2.post("/api/runs/tiny-2/points", json={"instruction": "x"}).get_json()["id"])
        assert body["status"] == "done" and body["run"] == "tiny-2"
    finally:
        _stop(lone)


@pytest.mark.slow
def test_redis_health_and_same_folder_names_on_celery_workers(two_tiny, redis_url, tmp_path, monkeypatch):
    import redis

    from dashboard.app import create_app

    redis.Redis.from_url(redis_url).flushdb()
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("LLM_MAPS_EXPECT_WORKERS", "1")
    app = create_app(list(two_tiny), [], state_dir=tmp_path / "state")
    client = app.server.test_client()
    r = client.get("/api/health")
    assert r.status_code == 503 and r.get_json()["reason"] == (
        "run 'tiny': no worker has registered for this run; run 'tiny-2': no worker has registered for this run")
    worker = _start_worker(two_tiny, REDIS_URL=redis_url)
    try:
        _until(lambda: client.get("/api/health").status_code == 200, 120, 0.1)
        _check_placed_on_its_own_run(client, two_tiny)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        start = time.time()
        r = _until(lambda: (h := client.get("/api/health")).status_code == 503 and h, HEARTBEAT + 5, 0.05)
        assert time.time() - start <= HEARTBEAT + 1
        assert "run 'tiny': worker stopped responding (no heartbeat for" in r.get_json()["reason"]
    finally:
        _stop(worker)
