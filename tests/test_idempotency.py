"""Idempotency keys on POST /api/runs/<run>/points: a request sent again with the ``Idempotency-Key``
of one that made a job gets that job (202, ``Idempotent-Replayed: true``), never a second one, so a
client told 503 whose job was made after all (Redis took the confirmation and its reply was lost)
can find out by sending it again. Both queues, on a real Redis, and through the real server; and
the Redis queue's writes whose reply was lost (made once, found in place)."""

from __future__ import annotations

import json
import threading

import pytest

from dashboard.synthetic import write_synthetic_run
from live_helpers import http, serving, strict_json
import llm_maps.jobs as jobs
from llm_maps.jobs import (CONFIRM_WAIT, JobQueue, KeyInFlight, KeyReused, QueueUnavailable, RedisJobQueue,
                           request_fingerprint)


@pytest.fixture(params=["embedded", "redis"])
def queue(request, tmp_path):
    if request.param == "embedded":
        return JobQueue(tmp_path / "state")
    import redis

    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return RedisJobQueue(url, prefix="idem")


def _waiting(queue) -> int:
    return queue._count_waiting() if isinstance(queue, JobQueue) else int(queue.redis.zcard(queue._waiting))


def _unconfirmed(q, monkeypatch, run: str, body: dict, key: str | None) -> str:
    """A job whose submission wrote it and sent its task, but whose confirmation never landed (Redis
    gone): its client was told 503. Returns its id (the run's newest waiting job)."""
    import redis

    def unreachable(*a, **k):
        raise redis.ConnectionError("gone")

    with monkeypatch.context() as m:
        m.setattr(q, "_modify", unreachable)
        with pytest.raises(QueueUnavailable):
            q.submit_once(run, "place", body, key) if key else q.submit(run, "place", body)
    job = q.redis.zrange(q._waiting_of(run), -1, -1)[0].decode()
    assert q.get(job)["status"] == "queued" and "sent" not in q.get(job)
    return job


def _age(q, job: str) -> None:
    """Make ``job`` older than a submission can still be in flight."""
    record = json.loads(q.redis.get(q._key(job)))
    q.redis.set(q._key(job), json.dumps({**record, "created": record["created"] - CONFIRM_WAIT - 1}))


def test_the_same_key_and_request_get_the_same_job_and_another_request_is_refused(queue):
    body = {"instruction": "what is 2 plus 2?"}
    first = queue.submit_once("syn", "place", body, "k-1")
    assert first[1] is False and queue.get(first[0])["status"] == "queued"
    assert queue.submit_once("syn", "place", dict(body), "k-1") == (first[0], True)
    assert queue.replay("k-1", request_fingerprint("syn", "place", body)) == first[0]
    assert queue.replay("k-2", request_fingerprint("syn", "place", body)) is None
    assert _waiting(queue) == 1
    # the same key with another body, kind or run: 422, nothing made
    for run, kind, other in (("syn", "place", {"instruction": "what is 3 plus 3?"}),
                             ("syn", "generate", body), ("other", "place", body)):
        with pytest.raises(KeyReused, match="^Idempotency-Key was already used for another request"):
            queue.submit_once(run, kind, other, "k-1")
    assert _waiting(queue) == 1
    # another key: another job; a job that ran (done, failed, cancelled) is answered again as it is
    second = queue.submit_once("syn", "place", body, "k-2")
    assert second[1] is False and second[0] != first[0] and _waiting(queue) == 2
    job = queue.claim_id(first[0], "w") if isinstance(queue, RedisJobQueue) else queue.claim(["syn"], "w")
    assert job["id"] == first[0]
    queue.finish(first[0], {"x": 1.0})
    assert queue.submit_once("syn", "place", body, "k-1") == (first[0], True)
    queue.cancel(second[0])
    assert queue.submit_once("syn", "place", body, "k-2") == (second[0], True)
    failed = queue.submit_once("syn", "place", body, "k-3")[0]
    queue.fail(failed, "the worker could not place it")
    assert queue.submit_once("syn", "place", body, "k-3") == (failed, True)
    # a job gone from the store (its retention passed) no longer holds its key: a new job
    if isinstance(queue, JobQueue):
        queue.cache.delete(f"job:{first[0]}")
    else:
        queue.redis.delete(queue._key(first[0]))
    third = queue.submit_once("syn", "place", body, "k-1")
    assert third[1] is False and third[0] not in (first[0], second[0], failed)


def test_concurrent_requests_with_one_key_make_one_job(queue):
    """Eight requests at once with one key: one job; every other request is answered with it, or (on
    Redis, while the first is still being confirmed) 409, to be sent again."""
    got, lock = [], threading.Lock()

    def send():
        try:
            job, replayed = queue.submit_once("syn", "place", {"instruction": "once"}, "same")
            out = ("again" if replayed else "made", job)
        except KeyInFlight:
            out = ("in flight", None)
        with lock:
            got.append(out)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [job for what, job in got if what == "made"]
    assert len(got) == 8 and len(made) == 1 and _waiting(queue) == 1
    assert all(job == made[0] for what, job in got if what == "again")
    if isinstance(queue, JobQueue):  # one transaction: never in flight
        assert [what for what, _ in got].count("again") == 7
    assert queue.submit_once("syn", "place", {"instruction": "once"}, "same") == (made[0], True)


def test_a_refused_or_lost_submission_sent_again_with_its_key(redis_url, monkeypatch):
    """Scale-out: a submission answered 503 whose job was refused makes a new job when sent again; one
    whose confirmation Redis took (its reply lost, the client told 503) is answered with its job, which
    runs; one still being submitted is answered 409; one never confirmed (its submitter gone) gives
    way to a new job, and a starting worker fails such a job left without a key."""
    import redis

    import llm_maps.jobs as jobs

    redis.Redis.from_url(redis_url).flushdb()
    q = RedisJobQueue(redis_url, prefix="idem-faults")
    body = {"instruction": "sent again"}

    class _Broken:
        def send_task(self, *a, **k):
            raise ConnectionError("broker gone")

    # 1. the broker refused the task: the job is refused; the same key then makes a new job
    with monkeypatch.context() as m:
        m.setattr(jobs, "celery_app", lambda url=None: _Broken())
        with pytest.raises(QueueUnavailable, match=r"^job queue unavailable \(broker: ConnectionError\)"):
            q.submit_once("r", "place", body, "a")
    assert q.redis.zcard(q._waiting_of("r")) == 0  # a refused job gives back its place at once
    (refused,) = [json.loads(q.redis.get(k))["id"] for k in q.redis.keys("idem-faults:job:*")]
    assert q.get(refused)["refused"] is True and q.get(refused)["error"] == "could not queue the job (ConnectionError)"
    new, replayed = q.submit_once("r", "place", body, "a")
    assert not replayed and new != refused and q.get(new)["sent"] is True
    assert q.submit_once("r", "place", body, "a") == (new, True)

    # 2. Redis took the confirmation, then went before its reply: the client is told 503 (and the
    # job cannot be refused, Redis being gone); the same key then answers with that job, which runs
    real_modify = q._modify

    def applied_then_lost(job_id, change):
        real_modify(job_id, change)
        raise redis.ConnectionError("Connection closed by server.")

    def gone(*a, **k):
        raise QueueUnavailable("Redis: ConnectionError")

    with monkeypatch.context() as m:
        m.setattr(q, "_modify", applied_then_lost)
        m.setattr(q, "update", gone)
        with pytest.raises(QueueUnavailable, match=r"^job queue unavailable \(Redis: ConnectionError\)"):
            q.submit_once("r", "place", {"instruction": "lost reply"}, "b")
    lost = q.redis.zrange(q._waiting_of("r"), -1, -1)[0].decode()
    assert q.get(lost)["sent"] is True and q.get(lost)["status"] == "queued"
    assert q.submit_once("r", "place", {"instruction": "lost reply"}, "b") == (lost, True)
    assert q.claim_id(lost, "w")["status"] == "running"

    # 3. a submission not confirmed yet: the same key is answered 409 while it may still be; once it
    # cannot be any more (CONFIRM_WAIT), that job is refused and a new one made in its place
    flight = _unconfirmed(q, monkeypatch, "r", {"instruction": "in flight"}, "c")
    with pytest.raises(KeyInFlight, match="^a request with this Idempotency-Key is still being submitted"):
        q.submit_once("r", "place", {"instruction": "in flight"}, "c")
    _age(q, flight)
    again, replayed = q.submit_once("r", "place", {"instruction": "in flight"}, "c")
    assert not replayed and again != flight and q.get(again)["sent"] is True
    old = q.get(flight)
    assert old["status"] == "failed" and old["refused"] is True
    assert old["error"] == "its submission was never confirmed (the web process answered 503)"
    assert q.redis.zscore(q._waiting_of("r"), flight) is None and q.redis.zscore(q._waiting, flight) is None

    # 4. without a key, such a job would hold its place until its retention: a starting worker fails it
    orphan = _unconfirmed(q, monkeypatch, "r", {"instruction": "no key"}, None)
    assert q.resend_queued(["r"]) == 2 and q.get(orphan)["status"] == "queued"  # (new, again: sent again)
    _age(q, orphan)
    assert q.resend_queued(["r"]) == 2
    assert q.get(orphan)["status"] == "failed" and q.get(orphan)["refused"] is True
    assert q.redis.zscore(q._waiting_of("r"), orphan) is None


def test_idempotency_keys_through_the_real_server(tmp_path):
    data = tmp_path / "runs"
    write_synthetic_run(data / "syn", 30, seed=4)
    env = {"LLM_MAPS_EXPECT_WORKERS": "1", "LLM_MAPS_ALLOWED_ORIGINS": "https://partner.example"}
    with serving(["--data", str(data), "--no-worker"], tmp_path, env=env) as srv:
        queue = JobQueue(tmp_path / "state")
        body = {"instruction": "what is 4 plus 4?"}
        key = {"Idempotency-Key": "2f1c6d3e-0b9a-4c1e-9d5f-7a8b9c0d1e2f"}
        status, headers, reply = srv.call("/api/runs/syn/points", "POST", body, key)
        assert status == 503 and reply == {"error": "no worker serves run 'syn' yet; retry later"}
        queue.register_worker("h:1", ["syn"], "ready")
        status, headers, reply = srv.call("/api/runs/syn/points", "POST", body, key)
        assert status == 202 and "Idempotent-Replayed" not in headers
        job = reply["id"]
        assert headers["Location"].endswith(f"/api/points/{job}")
        # sent again (the header as a structured-field string too): the same job
        for k in (key, {"Idempotency-Key": f'"{key["Idempotency-Key"]}"'}):
            status, headers, reply = srv.call("/api/runs/syn/points", "POST", body, k)
            assert (status, reply, headers["Idempotent-Replayed"]) == (202, {"id": job}, "true")
            assert headers["Location"].endswith(f"/api/points/{job}")
        # without a key, or with another: new jobs
        assert srv.call("/api/runs/syn/points", "POST", body)[2]["id"] != job
        assert srv.call("/api/runs/syn/points", "POST", body, {"Idempotency-Key": "other"})[2]["id"] != job
        # the key with another request: 422, nothing made
        status, _, reply = srv.call("/api/runs/syn/points", "POST", {"instruction": "what is 5 plus 5?"}, key)
        assert status == 422 and reply == {"error": "Idempotency-Key was already used for another request (another "
                                                    "run or body); use a new key for a new request"}
        assert queue._count_waiting("syn") == 3
        # keys that are not 1-255 printable ASCII characters: 400, named
        for bad in ("", "  ", '""', "k" * 256, "tab\there", "caf\u00e9"):
            status, _, reply = srv.call("/api/runs/syn/points", "POST", body, {"Idempotency-Key": bad})
            assert status == 400 and reply == {"error": "Idempotency-Key: 1 to 255 printable ASCII characters "
                                                        "(e.g. a UUID)"}, (bad, status, reply)
        assert srv.call("/api/runs/syn/points", "POST", body, {"Idempotency-Key": "k" * 255})[0] == 202
        # a run no worker can serve takes no new job, but a request already answered 202 gets its job
        queue.register_worker("h:1", ["syn"], "ready", broken={"syn": "its files do not fit its model"})
        status, headers, reply = srv.call("/api/runs/syn/points", "POST", body, key)
        assert (status, reply, headers["Idempotent-Replayed"]) == (202, {"id": job}, "true")
        status, _, reply = srv.call("/api/runs/syn/points", "POST", body, {"Idempotency-Key": "new"})
        assert status == 503 and reply["error"].startswith("run 'syn' cannot be served")
        # another site allowed in may send the header and read the answer's
        status, headers, _ = http(f"{srv.url}/api/runs/syn/points", "OPTIONS", None,
                                  {"Origin": "https://partner.example", "Access-Control-Request-Method": "POST",
                                   "Access-Control-Request-Headers": "content-type, idempotency-key"})
        assert "Idempotency-Key" in headers["Access-Control-Allow-Headers"].split(", ")
        status, headers, raw = http(f"{srv.url}/api/runs/syn/points", "POST", body,
                                    {**key, "Origin": "https://partner.example"})
        assert status == 202 and strict_json(raw) == {"id": job}
        assert "Idempotent-Replayed" in headers["Access-Control-Expose-Headers"].split(", ")
        assert "Traceback" not in srv.log()


def _lose_reply_once(monkeypatch, match, meanwhile=None):
    """The first MULTI/EXEC whose commands ``match`` lands in Redis and its reply is lost, as when the
    connection drops while the reply is read (redis-py, watching keys, then raises WatchError and
    the caller retries); ``meanwhile(commands)``: what another client does in between."""
    import redis
    from redis.client import Pipeline

    real, state = Pipeline._execute_transaction, {"lost": 0}

    def lossy(self, connection, commands, raise_on_error):
        out = real(self, connection, commands, raise_on_error)
        if not state["lost"] and match(commands):
            state["lost"] += 1
            if meanwhile is not None:
                meanwhile(commands)
            self.watching = True  # (it is, while EXEC's reply is read)
            raise redis.ConnectionError("Connection closed by server.")
        return out

    monkeypatch.setattr(Pipeline, "_execute_transaction", lossy)
    return state


def _sets(commands, part: str) -> list:
    return [c[0] for c in commands if c[0][0] == "SET" and part in str(c[0][1])]


def test_a_lost_reply_of_a_redis_transaction_is_neither_409_nor_503(redis_url, monkeypatch):
    """redis-py answers a reply lost while watching with WatchError: the submission's own transaction
    (job and key binding) is then found already made, and its confirmation found already taken, even
    where a worker claimed the job in between; the request is answered 202 with its one job."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    q = RedisJobQueue(redis_url, prefix="idem-lost")
    made = _lose_reply_once(monkeypatch, lambda cmds: bool(_sets(cmds, ":key:")))
    job, replayed = q.submit_once("r", "place", {"instruction": "made once"}, "k")
    assert made["lost"] == 1 and not replayed and q.get(job)["sent"] is True
    assert [i.decode() for i in q.redis.zrange(q._waiting_of("r"), 0, -1)] == [job]
    # the same without a key: the transaction written again is the same job
    monkeypatch.undo()
    made = _lose_reply_once(monkeypatch, lambda cmds: any(c[0][0] == "ZADD" for c in cmds))
    plain = q.submit("r", "place", {"instruction": "no key"})
    assert made["lost"] == 1 and q.get(plain)["sent"] is True and q.redis.zcard(q._waiting_of("r")) == 2
    # the confirmation taken, its reply lost, and a worker (its task already there) claims the job
    monkeypatch.undo()
    claimed = []
    confirm = _lose_reply_once(
        monkeypatch, lambda cmds: any('"sent": true' in str(c[2]) for c in _sets(cmds, ":job:")),
        meanwhile=lambda cmds: claimed.append(RedisJobQueue(redis_url, prefix="idem-lost").claim_id(
            json.loads(_sets(cmds, ":job:")[0][2])["id"], "w", confirm_wait=0.1)))
    job, replayed = q.submit_once("r", "place", {"instruction": "claimed meanwhile"}, "k2")
    assert confirm["lost"] == 1 and not replayed
    assert claimed[0]["id"] == job and q.get(job)["status"] == "running" and q.get(job)["worker"] == "w"


def test_a_stale_job_confirmed_while_its_key_is_sent_again_is_answered_not_refused(redis_url, monkeypatch):
    """The key's first job looks never confirmed (older than CONFIRM_WAIT) to a request sent again,
    and its submitter confirms it at that moment: the transaction that would refuse it fails (the
    job's key is watched), and the retry answers with that job, which stays confirmed."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    q = RedisJobQueue(redis_url, prefix="idem-race")
    first = _unconfirmed(q, monkeypatch, "r", {"instruction": "slow"}, "k")
    _age(q, first)
    other = RedisJobQueue(redis_url, prefix="idem-race")
    real_standing, calls = RedisJobQueue._standing, []

    def standing_then_confirmed(self, bound, fingerprint, job):
        out = real_standing(self, bound, fingerprint, job)
        calls.append(out)
        if len(calls) == 1:  # read as stale; the submitter's confirmation lands now
            other._modify(first, lambda j: {**j, "sent": True})
        return out

    monkeypatch.setattr(RedisJobQueue, "_standing", standing_then_confirmed)
    assert q.submit_once("r", "place", {"instruction": "slow"}, "k") == (first, True)
    assert calls == [None, first]
    job = q.get(first)
    assert job["status"] == "queued" and job["sent"] is True and "refused" not in job
    assert [i.decode() for i in q.redis.zrange(q._waiting_of("r"), 0, -1)] == [first]


def test_409_while_a_submission_is_in_flight_through_the_real_server_on_redis(tmp_path, redis_url):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    data = tmp_path / "runs"
    write_synthetic_run(data / "syn", 30, seed=5)
    with serving(["--data", str(data), "--no-worker"], tmp_path, env={"REDIS_URL": redis_url}) as srv:
        q = RedisJobQueue(redis_url)  # the server's queue (default prefix)
        body, key = {"instruction": "in flight"}, {"Idempotency-Key": "flight-1"}
        status, _, reply = srv.call("/api/runs/syn/points", "POST", body, key)
        assert status == 202
        job = reply["id"]
        record = json.loads(q.redis.get(q._key(job)))  # as if its submission were not confirmed yet
        q.redis.set(q._key(job), json.dumps({k: v for k, v in record.items() if k != "sent"}))
        status, headers, reply = srv.call("/api/runs/syn/points", "POST", body, key)
        assert (status, headers["Retry-After"]) == (409, "1")
        assert reply == {"error": "a request with this Idempotency-Key is still being submitted; retry in a moment"}
        record = json.loads(q.redis.get(q._key(job)))  # ... and now never to be
        q.redis.set(q._key(job), json.dumps({**record, "created": record["created"] - CONFIRM_WAIT - 1}))
        status, headers, reply = srv.call("/api/runs/syn/points", "POST", body, key)
        assert status == 202 and reply["id"] != job and "Idempotent-Replayed" not in headers
        assert q.get(job)["status"] == "failed" and q.get(job)["refused"] is True
        assert srv.call(f"/api/points/{job}")[2]["error"] == ("its submission was never confirmed (the web process "
                                                              "answered 503)")
        assert "Traceback" not in srv.log()


def test_a_stale_job_gives_its_place_in_a_full_queue_to_its_retry(redis_url, monkeypatch):
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    q = RedisJobQueue(redis_url, prefix="idem-full", max_queued=1)
    stale = _unconfirmed(q, monkeypatch, "r", {"instruction": "x"}, "k")
    with pytest.raises(jobs.QueueFull, match=r"^queue full \(1 jobs waiting for run 'r'\)"):
        q.submit("r", "place", {"instruction": "another"})  # the run's one place is taken
    _age(q, stale)
    job, replayed = q.submit_once("r", "place", {"instruction": "x"}, "k")
    assert not replayed and [i.decode() for i in q.redis.zrange(q._waiting_of("r"), 0, -1)] == [job]
    assert q.get(stale)["refused"] is True


def test_a_workers_transition_whose_reply_was_lost_counts_as_made(redis_url, monkeypatch):
    """The same lost reply on a worker's writes: a claim, a heartbeat and the "done" that landed are
    found in place (before, ``finish`` read its own "done" as a job ended meanwhile, and the worker
    dropped the point of a done job)."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    q = RedisJobQueue(redis_url, prefix="idem-worker")
    job = q.submit("r", "place", {"instruction": "x"})
    for status, act in (("running", lambda: q.claim_id(job, "w")), ("running", lambda: q.heartbeat(job)),
                        ("done", lambda: q.finish(job, {"x": 1.0}))):
        monkeypatch.undo()
        lost = _lose_reply_once(monkeypatch, lambda cmds, s=status: any(
            f'"status": "{s}"' in str(c[2]) for c in _sets(cmds, ":job:")))
        got = act()
        assert lost["lost"] == 1, status
        assert got is True or (got["status"] == status and got["worker"] == "w"), (status, got)
    monkeypatch.undo()
    done = q.get(job)
    assert done["status"] == "done" and done["result"] == {"x": 1.0} and q.redis.zcard(q._waiting_of("r")) == 0
    assert not q.redis.sismember(q._running, job)
    # and a job already final still refuses a later write
    assert q.finish(job, {"x": 2.0}) is False and q.get(job)["result"] == {"x": 1.0}
