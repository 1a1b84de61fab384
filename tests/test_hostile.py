"""The JSON API against a hostile client, table-driven: every field with bad types, out-of-range
numbers, lone surrogates, deep nesting and oversize bodies, on the embedded queue and on Redis.
Each answer is checked for its status, its JSON shape ({"error": "... the field named ..."}) and that
nothing was queued; after the table the server still answers and accepts a good point. Also: JSON
404s and security headers on every response, body caps for Dash callbacks, CSV exports with formula
cells neutralised, saved points read through an index, and runs whose files do not match their
manifest reported as broken by /api/runs, the Runs page and the worker."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
import uuid

import numpy as np
import pytest

from dashboard.synthetic import write_synthetic_run
from llm_maps.jobs import JobQueue, PointStore

GOOD = {"instruction": "What is the capital of France?"}
INT_MAX = 2**63 - 1


def _cases():
    """(id, body, status, text the error must contain): every field x every way to get it wrong."""
    rows = [
        # instruction
        ("instr-missing", {"context": "only"}, 422, "field 'instruction': required"),
        ("instr-null", {"instruction": None}, 422, "field 'instruction'"),
        ("instr-empty", {"instruction": "   "}, 422, "field 'instruction': required"),
        ("instr-int", {"instruction": 5}, 422, "field 'instruction': expected a string"),
        ("instr-list", {"instruction": ["a"]}, 422, "field 'instruction': expected a string"),
        ("instr-object", {"instruction": {"a": 1}}, 422, "field 'instruction': expected a string"),
        ("instr-bool", {"instruction": True}, 422, "field 'instruction': expected a string"),
        ("instr-surrogate", {"instruction": "ok \ud800 ok"}, 422, "field 'instruction': not valid Unicode"),
        ("instr-low-surrogate", {"instruction": "\udfff"}, 422, "field 'instruction': not valid Unicode"),
        ("instr-long", {"instruction": "x" * 8001}, 413, "field 'instruction': input is 8001 characters"),
        # context
        ("ctx-int", {**GOOD, "context": 3}, 422, "field 'context': expected a string"),
        ("ctx-surrogate", {**GOOD, "context": "\ud83d"}, 422, "field 'context': not valid Unicode"),
        ("ctx-long", {"instruction": "x", "context": "y" * 8000}, 413, "field 'context': input is 8001 characters"),
        # generate
        ("gen-string", {**GOOD, "generate": "yes"}, 422, "field 'generate': expected true or false"),
        ("gen-int", {**GOOD, "generate": 1}, 422, "field 'generate': expected true or false"),
        # max_new_tokens
        ("mnt-string", {**GOOD, "max_new_tokens": "5"}, 422, "field 'max_new_tokens': expected an integer"),
        ("mnt-float", {**GOOD, "max_new_tokens": 1.5}, 422, "field 'max_new_tokens': expected an integer"),
        ("mnt-bool", {**GOOD, "max_new_tokens": True}, 422, "field 'max_new_tokens': expected an integer, got a boolean"),
        ("mnt-zero", {**GOOD, "max_new_tokens": 0}, 422, "field 'max_new_tokens': must be between 1 and 512"),
        ("mnt-negative", {**GOOD, "max_new_tokens": -1}, 422, "field 'max_new_tokens': must be between 0 and"),
        ("mnt-over", {**GOOD, "max_new_tokens": 513}, 422, "field 'max_new_tokens': must be between 1 and 512"),
        ("mnt-2^64", {**GOOD, "max_new_tokens": 2**64}, 422, f"field 'max_new_tokens': must be between 0 and {INT_MAX}"),
        # temperature
        ("temp-string", {**GOOD, "temperature": "hot"}, 422, "field 'temperature': expected a number"),
        ("temp-bool", {**GOOD, "temperature": False}, 422, "field 'temperature': expected a number, got a boolean"),
        ("temp-negative", {**GOOD, "temperature": -0.5}, 422, "field 'temperature': must be 0 (greedy) or between 0.01 and 5"),
        ("temp-tiny", {**GOOD, "temperature": 1e-300}, 422, "field 'temperature': must be 0 (greedy) or between"),
        ("temp-over", {**GOOD, "temperature": 5.5}, 422, "field 'temperature': must be 0 (greedy) or between"),
        ("temp-huge", {**GOOD, "temperature": 1e308}, 422, "field 'temperature'"),
        ("temp-list", {**GOOD, "temperature": [1]}, 422, "field 'temperature': expected a number"),
        # top_p
        ("top_p-zero", {**GOOD, "top_p": 0}, 422, "field 'top_p': must be between 0.01 and 1"),
        ("top_p-tiny", {**GOOD, "top_p": 1e-300}, 422, "field 'top_p': must be between 0.01 and 1"),
        ("top_p-over", {**GOOD, "top_p": 1.5}, 422, "field 'top_p': must be between 0.01 and 1"),
        ("top_p-string", {**GOOD, "top_p": "high"}, 422, "field 'top_p': expected a number"),
        # seed
        ("seed-negative", {**GOOD, "seed": -1}, 422, f"field 'seed': must be between 0 and {INT_MAX}"),
        ("seed-2^63", {**GOOD, "seed": 2**63}, 422, f"field 'seed': must be between 0 and {INT_MAX}"),
        ("seed-2^200", {**GOOD, "seed": 2**200}, 422, "field 'seed': must be between 0 and"),
        ("seed-float", {**GOOD, "seed": 1.5}, 422, "field 'seed': expected an integer"),
        ("seed-string", {**GOOD, "seed": "7"}, 422, "field 'seed': expected an integer"),
        ("seed-bool", {**GOOD, "seed": True}, 422, "field 'seed': expected an integer, got a boolean"),
        # domain
        ("domain-int", {**GOOD, "domain": 4}, 422, "field 'domain': expected a string"),
        ("domain-surrogate", {**GOOD, "domain": "\udc00"}, 422, "field 'domain': not valid Unicode"),
        ("domain-long", {**GOOD, "domain": "d" * 201}, 413, "field 'domain': 201 characters; the limit is 200"),
        # unknown fields and shapes
        ("unknown-field", {**GOOD, "colour": "red"}, 422, "field 'colour': unknown field"),
        ("unknown-surrogate-key", {**GOOD, "\ud800": 1}, 422, "unknown field"),
        ("array-body", [GOOD], 422, "body: expected a JSON object"),
        ("string-body", "hello", 422, "body: expected a JSON object"),
        ("nested-field", {"instruction": [[[["deep"]]]]}, 422, "field 'instruction': expected a string"),
    ]
    return rows


RAW = [  # bodies no JSON encoder would write
    ("not-json", b"{oops", 422, "body: invalid JSON"),
    ("not-utf8", b'{"instruction": "\xff\xfe"}', 422, "body: not valid UTF-8"),
    ("deep-10000", b"[" * 10000 + b"]" * 10000, 422, "body: JSON nested 10000 levels deep; the limit is 8"),
    ("deep-object", b'{"instruction": ' + b'{"a": ' * 50 + b"1" + b"}" * 50 + b"}", 422, "body: JSON nested 51 levels"),
    ("null", b"null", 422, "body: expected a JSON object"),
    ("deep-unclosed", b"[" * 200_000, 413, "body: 200000 bytes"),
    ("nan", b'{"instruction": "x", "temperature": NaN}', 422, "field 'temperature': must be a finite number"),
    ("infinity", b'{"instruction": "x", "top_p": -Infinity}', 422, "field 'top_p': must be a finite number"),
    ("huge-int-literal", b'{"instruction": "x", "seed": ' + b"9" * 5000 + b"}", 422, "body: invalid JSON"),
    ("brackets-in-strings", b'{"instruction": "' + b"[{" * 500 + b'"}', 202, None),
    ("empty", b"", 422, "body: invalid JSON"),
    ("oversize-domain", json.dumps({**GOOD, "domain": "d" * 10_000_000}).encode(), 413, "body: 10000"),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("hostile") / "syn", 40, seed=3)


@pytest.fixture(params=["embedded", "redis"])
def api(request, run_dir, tmp_path, monkeypatch):
    """(test client, queue) of an app on the embedded queue or on a real Redis (no workers)."""
    from dashboard.app import create_app

    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        monkeypatch.setenv("REDIS_URL", url)
        import redis

        redis.Redis.from_url(url).flushdb()
    else:
        monkeypatch.delenv("REDIS_URL", raising=False)
    app = create_app([run_dir], [], state_dir=tmp_path / "state")
    return app.server.test_client(), app.server.config["LLM_MAPS_QUEUE"]


def _page(name: str):
    """A page module as Dash loaded it (importing dashboard.pages.X again would register it twice)."""
    import sys

    return sys.modules[f"pages.{name}"]


def _waiting(queue) -> int:
    return queue._count_waiting() if isinstance(queue, JobQueue) else int(queue.redis.zcard(queue._waiting))


def _healthy(client) -> None:
    r = client.get("/api/runs")
    assert r.status_code == 200 and r.get_json()["runs"][0]["ok"] is True
    assert client.get("/api/health").status_code == 200


def test_every_field_rejects_bad_input_with_a_json_error_naming_it(api):
    client, queue = api
    for name, body, status, message in _cases():
        r = client.post("/api/runs/syn/points", json=body)
        assert r.status_code == status, (name, r.status_code, r.data[:300])
        assert r.is_json and set(r.get_json()) == {"error"}, (name, r.data[:300])
        assert message in r.get_json()["error"], (name, r.get_json())
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    for name, raw, status, message in RAW:
        before = _waiting(queue)
        r = client.post("/api/runs/syn/points", data=raw, content_type="application/json")
        assert r.status_code == status, (name, r.status_code, r.data[:300])
        assert r.is_json, name
        if message is not None:
            assert set(r.get_json()) == {"error"} and message in r.get_json()["error"], (name, r.get_json())
            assert _waiting(queue) == before, name  # nothing was queued
    assert _waiting(queue) == 1  # only the one valid body (brackets inside a string)
    _healthy(client)
    r = client.post("/api/runs/syn/points", json={**GOOD, "seed": INT_MAX, "temperature": 0, "top_p": 0.01,
                                                  "domain": "d" * 200, "max_new_tokens": 512, "generate": True})
    assert r.status_code == 202, r.get_json()  # the limits themselves are accepted
    job = queue.get(r.get_json()["id"])
    assert job["payload"]["seed"] == INT_MAX and job["payload"]["domain"] == "d" * 200
    assert job["run"] == "syn" and job["run_key"].endswith("|40")


def test_unknown_api_paths_and_methods_answer_json_and_every_response_has_security_headers(api, run_dir):
    client, _ = api
    for method, path, status in (("get", "/api/nope", 404), ("post", "/api/runs/syn/nope/deeper", 404),
                                 ("get", "/api/points/x/cancel/more", 404), ("put", "/api/runs", 404),
                                 ("get", "/api/runs/nope/points", 404), ("get", "/_llm_maps/points?run=nope", 404)):
        r = getattr(client, method)(path)
        assert r.status_code == status and r.is_json and set(r.get_json()) == {"error"}, (path, r.data[:200])
    assert client.get("/api/nope").get_json() == {"error": "no such API path '/api/nope'"}
    for path in ("/api/runs", "/map", "/api/nope", "/assets/style.css", "/_dash-layout"):
        r = client.get(path)
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["X-Frame-Options"] == "SAMEORIGIN", path
        assert r.headers["Content-Security-Policy"] == "frame-ancestors 'self'", path


def test_body_caps_for_the_api_and_dash_callbacks(api, monkeypatch):
    from dashboard.api import max_body_bytes

    client, queue = api
    cap = max_body_bytes()
    r = client.post("/api/runs/syn/points", data=b" " * (cap + 1), content_type="application/json")
    assert r.status_code == 413 and r.get_json() == {"error": f"body: {cap + 1} bytes; the limit is {cap} bytes"}
    # the longest valid point, every character escaped, fits under the cap
    body = json.dumps({"instruction": "\U0001F600" * 4000, "domain": "\U0001F600" * 200}).encode()
    assert len(body) < cap
    assert client.post("/api/runs/syn/points", data=body, content_type="application/json").status_code == 202
    monkeypatch.setenv("LLM_MAPS_MAX_BODY", "100000")
    r = client.post("/_dash-update-component", data=b"{" + b" " * 100_000 + b"}", content_type="application/json")
    assert r.status_code == 413 and r.get_json() == {"error": "body: 100002 bytes; the limit is 100000 bytes"}
    r = client.post("/_dash-update-component", data=b'{"output": 5}', content_type="application/json")
    assert r.status_code != 413  # a small callback body goes through to Dash
    _healthy(client)


def test_queued_cancelled_jobs_free_their_places(api):
    client, queue = api
    queue.max_queued = 3
    ids = [client.post("/api/runs/syn/points", json=GOOD).get_json()["id"] for _ in range(3)]
    r = client.post("/api/runs/syn/points", json=GOOD)
    assert r.status_code == 503 and "queue full (3 jobs waiting for run 'syn')" in r.get_json()["error"]
    for job_id in ids:
        assert client.post(f"/api/points/{job_id}/cancel").get_json()["status"] == "cancelled"
        assert client.post(f"/api/points/{job_id}/cancel").get_json()["status"] == "cancelled"  # counted once
    assert _waiting(queue) == 0
    assert [client.post("/api/runs/syn/points", json=GOOD).status_code for _ in range(4)] == [202, 202, 202, 503]


# --- CSV exports ----------------------------------------------------------------------------------

FORMULAS = ["=HYPERLINK(\"http://x.example\",\"click\")", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1"]


def test_csv_cells_a_spreadsheet_would_evaluate_are_neutralised(api, tmp_path):
    import pandas as pd

    from llm_maps.csvsafe import neutralise, neutralise_frame

    assert [neutralise(v) for v in FORMULAS] == ["'" + v for v in FORMULAS]
    assert [neutralise(v) for v in ("plain", "a=b", "", None, -1.5, 3)] == ["plain", "a=b", "", None, -1.5, 3]
    frame = neutralise_frame(pd.DataFrame({"t": ["=1", "x"], "n": [-1.0, 2.0]}))
    assert frame["t"].tolist() == ["'=1", "x"] and frame["n"].tolist() == [-1.0, 2.0]

    client, _ = api
    store = client.application.config["LLM_MAPS_POINTS"]
    for i, text in enumerate(FORMULAS):
        store.add("syn", {"id": f"p{i}", "created": 1.0 + i, "kind": "generate", "instruction": text,
                          "context": text, "options": {"seed": 7}, "x": -1.5, "y": 2.0, "dist_to_train": 0.1,
                          "domain": "-dom", "neighbours": [], "expected_accuracy": None, "output": text})
    # a seed stored before the limits existed (>= 2^63) no longer breaks the export
    store.add("syn", {"id": "big", "created": 99.0, "kind": "place", "instruction": "ok", "context": "",
                      "options": {"seed": 2**64}, "x": 0.0, "y": 0.0, "neighbours": []})
    r = client.get("/api/runs/syn/points?format=csv")
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [row["id"] for row in rows] == [f"p{i}" for i in range(len(FORMULAS))] + ["big"]
    for row, text in zip(rows, FORMULAS):
        for col in ("instruction", "context", "output"):
            assert row[col] == "'" + text, (col, row[col])
        assert row["domain"] == "'-dom" and row["x"] == "-1.5" and row["seed"] == "7"  # numbers untouched
    assert rows[-1]["seed"] == str(2**64)
    assert client.get("/api/runs/syn/points?format=jsonl").status_code == 200
    assert client.get("/api/runs/syn/points").get_json()["points"][-1]["options"]["seed"] == 2**64


# --- saved points through an index ------------------------------------------------------------------

def test_saved_points_are_parsed_once_per_change(tmp_path, monkeypatch, run_dir):
    from dashboard.app import create_app

    store = PointStore(tmp_path)
    for i in range(100):
        store.add("syn", {"id": f"p{i}", "kind": "place", "instruction": f"q{i}", "options": {}})
    reads = []
    real = type(store.directory).read_text

    def counting(self, *a, **kw):
        if self.name == "syn.jsonl":
            reads.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(type(store.directory), "read_text", counting)
    app = create_app([run_dir], [], state_dir=tmp_path)
    ids = [f"p{i}" for i in range(99, -1, -1)] + ["missing"]
    with app.server.test_request_context("/playground"):
        out = _page("playground").stored_points("syn", ids)
    assert [g["id"] for g in out] == ids and out[0]["instruction"] == "q99" and out[-1]["status"] == "loading"
    assert len(reads) == 1  # 100 ids: one parse (it was one per id)
    points = app.server.config["LLM_MAPS_POINTS"]
    assert [points.get("syn", f"p{i}")["instruction"] for i in range(100)] == [f"q{i}" for i in range(100)]
    assert len(reads) == 1  # unchanged file: no parse at all
    points.add("syn", {"id": "new", "kind": "place", "instruction": "n", "options": {}})
    assert points.get("syn", "new")["instruction"] == "n" and len(reads) == 2
    assert points.delete("syn", "p5") and points.get("syn", "p5") is None and len(points.list("syn")) == 100


# --- runs whose files do not match their manifest ----------------------------------------------------

def test_broken_runs_are_reported_naming_the_file_by_the_api_the_runs_page_and_the_worker(tmp_path):
    from dashboard.app import create_app
    from llm_maps.runfolder import layer_file
    from pipelines.engine import SessionPool
    from pipelines.worker import execute_job

    good = write_synthetic_run(tmp_path / "good", 30, seed=1)
    short = tmp_path / "short"
    shutil.copytree(good, short)
    enc = np.load(layer_file(short, 2))
    np.save(layer_file(short, 2), enc[:-3])  # 27 rows for 30 examples
    unreadable = tmp_path / "unreadable"
    shutil.copytree(good, unreadable)
    (unreadable / "examples.parquet").write_bytes(b"PAR1 this is not parquet")
    wide = tmp_path / "wide"
    shutil.copytree(good, wide)
    manifest = json.loads((wide / "manifest.json").read_text())
    manifest["counts"]["examples"] = 31
    (wide / "manifest.json").write_text(json.dumps(manifest))

    app = create_app([good, short, unreadable, wide], [], state_dir=tmp_path / "state")
    client = app.server.test_client()
    runs = {r["run"]: r for r in client.get("/api/runs").get_json()["runs"]}
    assert runs["good"]["ok"] is True
    assert runs["short"]["ok"] is False and runs["short"]["error"] == (
        f"{layer_file(short, 2)}: shape (27, 16), expected (30, hidden) to match examples.parquet")
    assert runs["unreadable"]["ok"] is False and runs["unreadable"]["error"].startswith(
        f"{unreadable / 'examples.parquet'}: unreadable Parquet")
    assert runs["wide"]["error"] == f"{wide / 'examples.parquet'}: 30 rows, but the manifest says 31 examples"
    for run in ("short", "unreadable", "wide"):
        r = client.get(f"/_llm_maps/dist?run={run}&layer=2")
        assert r.status_code == 404 and r.get_json()["error"] == runs[run]["error"]  # was a 409 IndexError
        r = client.post(f"/api/runs/{run}/points", json=GOOD)
        assert r.status_code == 404 and runs[run]["error"] in r.get_json()["error"]
    with app.server.test_request_context("/runs"):
        page = json.dumps(_page("runs").layout().to_plotly_json(), default=str)
    assert runs["short"]["error"] in page and runs["wide"]["error"] in page
    # the worker: the job fails with the same message, not "internal error (IndexError)"
    queue, points = JobQueue(tmp_path / "wstate"), PointStore(tmp_path / "wstate")
    pool = SessionPool([short])
    job_id = queue.submit("short", "place", {"instruction": "x"})
    assert execute_job(queue, points, pool, queue.claim(["short"], "w"), "w") == "failed"
    assert queue.get(job_id)["error"] == runs["short"]["error"]
    # fixed files are seen at once
    np.save(layer_file(short, 2), enc)
    assert {r["run"]: r["ok"] for r in client.get("/api/runs").get_json()["runs"]}["short"] is True


@pytest.mark.parametrize("listen", [{"host": "127.0.0.1", "port": 0}, {"listen": "127.0.0.1:0 127.0.0.1:0"}])
def test_the_wsgi_servers_own_errors_are_json(listen):
    """Bodies over LLM_MAPS_MAX_BODY never reach the app: waitress answers them from the header,
    and malformed requests too. Those answers are JSON with the security headers, like the app's,
    on one listener and on several."""
    import socket
    import threading

    from waitress.server import create_server

    from dashboard.hardening import json_error_server

    def app(environ, start_response):  # never reached by the requests below
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    server = create_server(app, max_request_body_size=1000, **listen)
    json_error_server(server)
    ports = ([server.effective_port] if hasattr(server, "effective_port")
             else [port for _, port in server.effective_listen])
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def ask(port, raw):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(raw)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head, _, payload = reply.partition(b"\r\n\r\n")
        return head.decode().lower(), json.loads(payload)

    try:
        for port in ports:
            head, body = ask(port, b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"[" * 100)
            assert head.startswith("http/1.1 413 request entity too large"), head
            assert "content-type: application/json" in head and "x-content-type-options: nosniff" in head
            assert body == {"error": "body: 5000 bytes; the limit is 1000 bytes"}
            head, body = ask(port, b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
            assert head.startswith("http/1.1 400 bad request"), head
            assert body["error"].startswith("Bad Request: ") and "content-length" in body["error"].lower()
    finally:
        server.close()
        thread.join(timeout=10)


# --- a finished job and its point -------------------------------------------------------------------

class _Pool:
    def get(self, run):
        return object()  # run_job is replaced below: no model


def _stores(kind, tmp_path, redis_url=None, heartbeat_timeout=None):
    """A queue and a point store of one state, and a second point store of it (another process's
    view: it opens its own queue)."""
    if kind == "file":
        queue = JobQueue(tmp_path, heartbeat_timeout=heartbeat_timeout)
        return queue, PointStore(tmp_path, jobs=queue), PointStore(tmp_path)
    from llm_maps.jobs import RedisJobQueue, RedisPointStore

    prefix = f"t{uuid.uuid4().hex[:8]}"
    queue = RedisJobQueue(redis_url, heartbeat_timeout=heartbeat_timeout, prefix=prefix)
    return queue, RedisPointStore(redis_url, prefix=prefix, jobs=queue), RedisPointStore(redis_url, prefix=prefix)


def _stored(kind, points, run):
    """What the store holds, pending points included: (id, pending) per point."""
    if kind == "file":
        lines = (points.directory / f"{run}.jsonl").read_text().splitlines()
        last = {json.loads(line)["id"]: json.loads(line) for line in lines if line.strip()}
    else:
        last = {k.decode(): json.loads(v) for k, v in points.redis.hgetall(points._keys(run)[0]).items()}
    return sorted((i, bool(p.get("pending"))) for i, p in last.items())


@pytest.fixture(params=["file", "redis"])
def store_kind(request):
    return request.param


@pytest.fixture
def redis_if(store_kind, request):
    return request.getfixturevalue("redis_url") if store_kind == "redis" else None


def test_a_job_is_done_only_once_its_point_is_listed_and_a_fenced_one_keeps_none(tmp_path, monkeypatch,
                                                                                  store_kind, redis_if):
    """A job's point is kept pending before the job is marked done and shown from the moment it is
    done (a client told "done" lists it; one polling in between used to miss it); a job failed
    meanwhile keeps no point."""
    import pipelines.jobrun as jobrun
    from pipelines.worker import execute_job

    queue, points, reader = _stores(store_kind, tmp_path, redis_if)
    result = {"prompt": "q", "x": 0.5, "y": -0.5, "dist_to_train": 0.1, "neighbours": []}
    monkeypatch.setattr(jobrun, "run_job", lambda session, job, **kw: dict(result))
    seen_at_finish = []
    finish = queue.finish

    def finishing(job_id, res):
        seen_at_finish.append((_stored(store_kind, points, "syn"), reader.list("syn"), reader.get("syn", job_id)))
        return finish(job_id, res)

    monkeypatch.setattr(queue, "finish", finishing)
    first = queue.submit("syn", "place", {"instruction": "q"})
    assert execute_job(queue, points, _Pool(), queue.claim_id(first, "w") if store_kind == "redis"
                       else queue.claim(["syn"], "w"), "w") == "done"
    # kept, pending, before "done"; not shown while the job runs
    assert seen_at_finish == [([(first, True)], [], None)]
    assert queue.get(first)["status"] == "done" and _stored(store_kind, points, "syn") == [(first, False)]
    assert [(p["id"], p["x"], "pending" in p) for p in reader.list("syn")] == [(first, 0.5, False)]
    # failed meanwhile (its client was told so): fenced, and its point taken back
    second = queue.submit("syn", "place", {"instruction": "q2"})
    job = queue.claim_id(second, "w") if store_kind == "redis" else queue.claim(["syn"], "w")
    monkeypatch.setattr(jobrun, "run_job", lambda session, job, **kw: (queue.fail(second, "told failed"), result)[1])
    assert execute_job(queue, points, _Pool(), job, "w") == "fenced"
    assert queue.get(second)["status"] == "failed" and [p["id"] for p in reader.list("syn")] == [first]
    assert _stored(store_kind, points, "syn") == [(first, False)]
    # a job run again (its worker died between the two): one point, the later one
    points.add("syn", {**points.list("syn")[0], "x": 9.0})
    assert [(p["id"], p["x"]) for p in points.list("syn")] == [(first, 9.0)]
    assert [(p["id"], p["x"]) for p in reader.list("syn")] == [(first, 9.0)]


class _Killed(BaseException):
    """The worker process ending mid-step (kill -9, os.execv after a Redis outage): no handler runs."""


def test_a_worker_that_dies_between_the_point_and_done_leaves_no_point_of_a_failed_job(tmp_path, monkeypatch,
                                                                                      store_kind, redis_if):
    """The fault suite's Redis phase found a point of a job that was failed: the worker kept it and
    then died (restarting after the outage) before marking the job done; the job was failed by its
    missed heartbeats. Now such a point is pending: never shown, and removed once its job is failed.
    And the other way round: a worker that dies after "done" leaves a point that readers commit."""
    import pipelines.jobrun as jobrun
    from pipelines.worker import execute_job

    queue, points, reader = _stores(store_kind, tmp_path, redis_if, heartbeat_timeout=1.0)
    result = {"prompt": "q", "x": 0.5, "y": -0.5, "dist_to_train": 0.1, "neighbours": []}
    monkeypatch.setattr(jobrun, "run_job", lambda session, job, **kw: dict(result))
    claim = (lambda job_id: queue.claim_id(job_id, "w")) if store_kind == "redis" else (lambda _: queue.claim(["syn"], "w"))

    def killed(*args, **kwargs):
        raise _Killed()

    # dies before "done"
    lost = queue.submit("syn", "place", {"instruction": "q"})
    monkeypatch.setattr(queue, "finish", killed)
    with pytest.raises(_Killed):
        execute_job(queue, points, _Pool(), claim(lost), "w")
    monkeypatch.undo()
    monkeypatch.setattr(jobrun, "run_job", lambda session, job, **kw: dict(result))
    assert _stored(store_kind, points, "syn") == [(lost, True)]
    assert reader.list("syn") == [] and reader.get("syn", lost) is None  # running: not shown
    time.sleep(1.2)  # its heartbeats stopped: failed by the next reader
    assert reader.list("syn") == [] and queue.get(lost)["status"] == "failed"
    assert _stored(store_kind, points, "syn") == []  # and removed
    # dies after "done", before the point is committed
    done = queue.submit("syn", "place", {"instruction": "q2"})
    monkeypatch.setattr(points, "commit", killed)
    with pytest.raises(_Killed):
        execute_job(queue, points, _Pool(), claim(done), "w")
    assert queue.get(done)["status"] == "done" and _stored(store_kind, points, "syn") == [(done, True)]
    assert reader.get("syn", done)["x"] == 0.5 and "pending" not in reader.get("syn", done)
    assert [p["id"] for p in reader.list("syn")] == [done] and _stored(store_kind, points, "syn") == [(done, False)]
