"""The fault suite of `python benchmarks/load_test.py RUN --fault-suite` (and of
tests/test_fault_suite.py, in a short form): N clients keep submitting and polling jobs while, one
phase after another,

    embedded  `llm-maps serve --data DIR` with its embedded worker:
              kill -9 of the worker, SIGSTOP of the worker (the supervisor kills and replaces it),
              a run added to DIR, that run renamed, that run removed;
    redis     `llm-maps serve --data DIR` on REDIS_URL with a Celery `llm-maps worker`:
              Redis stopped for a while, then started again (its append-only file keeps the jobs).

Each submission carries an ``Idempotency-Key``; one answered 503 or 409, or whose answer was lost,
is sent again with its key until it is answered otherwise (so a job made although its client was
told 503 is found, not left as a point nobody asked for).

Checked, for every request and every job: no answer in the 5xx range other than a 503 with a
Retry-After; no job seen failed and later done (or done and later failed); every accepted job ends
(done, failed, cancelled) or belongs to a run that was renamed or removed (a 404 naming that); every
done job of a run still served has exactly one saved point, and every saved point is a done job's.
Bounded in time; loopback only.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FINAL = ("done", "failed", "cancelled")


@dataclass
class Tally:
    """What the clients saw, shared between their threads."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict = field(default_factory=dict)      # job id -> run
    finals: dict = field(default_factory=dict)        # job id -> final status
    gone: set = field(default_factory=set)            # jobs whose run was renamed/removed (404)
    flips: list = field(default_factory=list)         # (job, statuses seen) with a final state changed
    bad: list = field(default_factory=list)           # (method, path, status, body): 5xx but 503+Retry-After
    answers: Counter = field(default_factory=Counter)  # status code -> count
    refused_503: int = 0
    replayed: int = 0                                  # answered 202 with the job of an earlier try (its key)
    reasons: Counter = field(default_factory=Counter)  # why jobs failed (host:pid left out)

    def answer(self, method: str, path: str, status: int, body, headers: dict) -> None:
        with self.lock:
            self.answers[status] += 1
            if status >= 500 and not (status == 503 and headers.get("Retry-After")):
                self.bad.append((method, path, status, str(body)[:200]))


class Load:
    """``clients`` threads submitting to the runs in ``targets`` (changed by the phases) and
    polling each job to its end."""

    def __init__(self, url: str, tally: Tally, clients: int, *, generate_every: int = 4, max_new_tokens: int = 8):
        self.url, self.tally, self.clients = url, tally, clients
        self.targets: list[str] = []
        self.generate_every, self.max_new_tokens = generate_every, max_new_tokens
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]

    def _call(self, path: str, method: str = "GET", body=None, headers: dict | None = None):
        from _live import call

        try:
            status, reply, headers = call(self.url + path, method, body, timeout=30, headers=headers)
        except (OSError, ValueError) as exc:  # a connection refused or reset counts as a bad answer
            status, reply, headers = 599, {"error": f"{type(exc).__name__}: {exc}"}, {}
        self.tally.answer(method, path, status, reply, headers)
        return status, reply, headers

    def _client(self, k: int) -> None:
        rng, i = random.Random(k), 0
        while not self.stop.is_set():
            targets = list(self.targets)
            if not targets:
                time.sleep(0.1)
                continue
            i += 1
            run = rng.choice(targets)
            body = {"instruction": f"Fault suite {k}.{i}: what is {i} plus {k}?"}
            if i % self.generate_every == 0:
                body.update(generate=True, max_new_tokens=self.max_new_tokens)
            key = {"Idempotency-Key": uuid.uuid4().hex}
            deadline = time.time() + 30  # (bounded: finish() waits for the clients)
            while True:  # sent again with its key while refused (503, 409) or its answer lost
                status, reply, headers = self._call(f"/api/runs/{run}/points", "POST", body, key)
                if status not in (503, 409, 599) or time.time() > deadline:
                    break
                with self.tally.lock:
                    self.tally.refused_503 += status == 503
                time.sleep(min(1.0, float(headers.get("Retry-After") or 1)))
            if status != 202:
                continue  # a 404 for a run just renamed or removed; anything else is in the tally
            with self.tally.lock:
                self.tally.accepted[reply["id"]] = run
                self.tally.replayed += headers.get("Idempotent-Replayed") == "true"
            self._follow(reply["id"])

    def _follow(self, job: str, timeout: float = 120.0) -> None:
        seen: list[str] = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, reply, _ = self._call(f"/api/points/{job}")
            if status == 404 and "no longer served" in str(reply.get("error")):
                with self.tally.lock:
                    self.tally.gone.add(job)
                return
            if status == 200:
                if not seen or seen[-1] != reply["status"]:
                    seen.append(reply["status"])
                if reply["status"] in FINAL:
                    time.sleep(0.3)  # and once more: a final state never changes
                    again = self._call(f"/api/points/{job}")[1]
                    with self.tally.lock:
                        self.tally.finals[job] = reply["status"]
                        if reply["status"] == "failed":
                            self.tally.reasons[re.sub(r"\S+:\d+", "HOST:PID", str(reply.get("error")))[:160]] += 1
                        if again.get("status") not in (reply["status"], None):
                            self.tally.flips.append((job, seen + [again.get("status")]))
                    return
            time.sleep(0.1)

    def start(self) -> "Load":
        for th in self.threads:
            th.start()
        return self

    def finish(self, timeout: float = 150.0) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(timeout=timeout)


def _workers(pid: int) -> list:
    import psutil

    try:
        return [c for c in psutil.Process(pid).children(recursive=True) if "worker" in " ".join(c.cmdline())]
    except psutil.NoSuchProcess:
        return []


def _until(check, timeout: float, every: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = check()
        if out:
            return out
        time.sleep(every)
    return None


def embedded_phases(run: Path, *, clients: int, phase: float, log=print) -> dict:
    """kill -9, SIGSTOP, a run added, renamed, removed: on `llm-maps serve --data DIR`."""
    from _live import LiveServer, call

    data = Path(tempfile.mkdtemp(prefix="llm-maps-faults-"))
    shutil.copytree(run, data / "main")
    tally, events = Tally(), []
    env = {"LLM_MAPS_HEARTBEAT_TIMEOUT": "3", "LLM_MAPS_RESTART_BACKOFF": "0.5", "LLM_MAPS_MAX_QUEUED": "64"}
    with LiveServer(data / "main", env=env, args=["--data", str(data)]) as srv:
        load = Load(srv.url, tally, clients)
        load.targets = ["main"]
        load.start()

        def step(name: str, action) -> None:
            time.sleep(phase)
            t = time.time()
            action()
            events.append(name)
            log(f"  [{time.time() - t:5.1f} s] {name}")

        def kill():
            for w in _workers(srv.proc.pid):
                os.kill(w.pid, signal.SIGKILL)

        def freeze():
            frozen = _workers(srv.proc.pid)
            for w in frozen:
                os.kill(w.pid, signal.SIGSTOP)
            _until(lambda: {w.pid for w in _workers(srv.proc.pid)}.isdisjoint({w.pid for w in frozen}), 60)

        def add():
            shutil.copytree(run, data / "added")
            load.targets = ["main", "added"]

        def rename():
            (data / "added").rename(data / "renamed")
            load.targets = ["main", "renamed"]

        def remove():
            load.targets = ["main"]
            shutil.rmtree(data / "renamed")

        for name, action in (("kill -9 of the worker", kill), ("SIGSTOP of the worker", freeze),
                             ("a run added", add), ("that run renamed", rename), ("that run removed", remove)):
            step(name, action)
        time.sleep(phase)
        load.finish()
        points = {p["id"] for p in call(f"{srv.url}/api/runs/main/points")[1]["points"]}
        healthy = _until(lambda: call(f"{srv.url}/api/health", timeout=10)[0] == 200, 60) is not None
        odd = _odd_points(srv.url, tally, points)
    shutil.rmtree(data, ignore_errors=True)
    return _report("embedded", tally, events, points, {"main"}, healthy, log, odd)


def redis_phases(run: Path, *, clients: int, phase: float, outage: float, log=print) -> dict:
    """Redis stopped and started again under load, on serve + one Celery worker."""
    from _live import LiveServer, call, free_port

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    folder = Path(tempfile.mkdtemp(prefix="llm-maps-faults-redis-"))
    data = folder / "runs"
    shutil.copytree(run, data / "main")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    def start_redis():
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                                 "--appendfsync", "always", "--dir", str(folder)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if _until(lambda: _pings(url), 15, 0.05) is None:
            raise RuntimeError("redis-server did not start")
        return proc

    redis_proc = start_redis()
    env = {"REDIS_URL": url, "LLM_MAPS_HEARTBEAT_TIMEOUT": "5", "LLM_MAPS_EXPECT_WORKERS": "1"}
    worker_log = open(folder / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "worker", str(data / "main")],
                              env={**os.environ, **env}, stdout=worker_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    tally, events = Tally(), []
    try:
        with LiveServer(data / "main", env=env, args=["--data", str(data), "--no-worker"], wait_worker=False) as srv:
            if _until(lambda: call(f"{srv.url}/api/health", timeout=10)[0] == 200, 180) is None:
                raise RuntimeError("the Celery worker did not come up:\n" + srv.read_log())
            load = Load(srv.url, tally, clients)
            load.targets = ["main"]
            load.start()
            time.sleep(phase)
            redis_proc.terminate()
            redis_proc.wait(timeout=15)
            events.append("Redis stopped")
            log(f"  Redis stopped for {outage:g} s")
            time.sleep(outage)
            redis_proc = start_redis()
            events.append("Redis started again")
            log("  Redis started again")
            time.sleep(phase)
            load.finish()
            points = {p["id"] for p in call(f"{srv.url}/api/runs/main/points")[1]["points"]}
            healthy = _until(lambda: call(f"{srv.url}/api/health", timeout=10)[0] == 200, 60) is not None
            odd = _odd_points(srv.url, tally, points)
    finally:
        for proc in (worker,):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        redis_proc.terminate()
        redis_proc.wait(timeout=15)
        worker_log.close()
        worker_said = (folder / "worker.log").read_text(errors="replace")
        shutil.rmtree(folder, ignore_errors=True)
    out = _report("redis", tally, events, points, {"main"}, healthy, log, odd)
    if not out["ok"]:
        log("  the Celery worker's log ends:\n" + worker_said[-3000:])
    return out


def _pings(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.ConnectionError:
        return False


def _odd_points(url: str, tally: Tally, points: set, most: int = 5) -> list[str]:
    """For a saved point whose job no client saw done (or that no client was answered 202 for): the
    job as the server tells it now, one line each (at most ``most``), so that a failed run says
    where an extra point came from."""
    from _live import call

    out = []
    for job in sorted(j for j in points if tally.finals.get(j) != "done")[:most]:
        try:
            status, reply, _ = call(f"{url}/api/points/{job}", timeout=10)
        except (OSError, ValueError) as exc:  # the report is still made
            status, reply = 599, {"error": f"{type(exc).__name__}: {exc}"}
        seen = ("accepted, seen " + tally.finals[job] if job in tally.finals
                else "accepted, never seen final" if job in tally.accepted else "never answered 202 to a client")
        out.append(f"point {job}: {seen}; the server says {status} {reply.get('status')} {reply.get('error') or ''}")
    return out


def _report(name: str, tally: Tally, events: list, points: set, kept_runs: set, healthy: bool, log,
            odd: list[str] | None = None) -> dict:
    done = {j for j, s in tally.finals.items() if s == "done"}
    lost = [j for j in tally.accepted if j not in tally.finals and j not in tally.gone]
    done_kept = {j for j in done if tally.accepted[j] in kept_runs}
    out = {"phase": name, "events": events, "accepted": len(tally.accepted), "done": len(done),
           "failed": sum(s == "failed" for s in tally.finals.values()), "gone": len(tally.gone), "lost": len(lost),
           "flips": tally.flips, "bad_answers": tally.bad, "refused_503": tally.refused_503,
           "replayed": tally.replayed,
           "answers": dict(sorted(tally.answers.items())),
           "points_missing": len(done_kept - points), "points_extra": len(points - done_kept), "healthy": healthy}
    out["ok"] = (not lost and not tally.flips and not tally.bad and not out["points_missing"]
                 and not out["points_extra"] and healthy and len(done) > 0)
    log(f"{name}: {' -> '.join(events)}")
    log(f"  jobs accepted {out['accepted']}, done {out['done']}, failed {out['failed']}, of a run gone "
        f"{out['gone']}, lost {out['lost']}; 503 answers to submissions (each sent again with its key) "
        f"{out['refused_503']}, answered with the job of an earlier try {out['replayed']}")
    log(f"  answers by status {out['answers']}; 5xx other than 503 + Retry-After: {len(tally.bad)}; "
        f"jobs failed then done (or the reverse): {len(tally.flips)}")
    log(f"  saved points vs done jobs of the runs still served: missing {out['points_missing']}, "
        f"extra {out['points_extra']}; healthy after: {healthy}; {'OK' if out['ok'] else 'PROBLEM'}")
    for reason, n in tally.reasons.most_common(4):
        log(f"  failed x{n}: {reason}")
    for item in (tally.bad[:3] + tally.flips[:3]):
        log(f"    {item}")
    for line in odd or []:
        log(f"  {line}")
    return out


def run_suite(run: Path, *, clients: int = 20, phase: float = 10.0, outage: float = 5.0, redis: bool = True,
              log=print) -> list[dict]:
    log(f"fault suite: {clients} clients, {phase:g} s between faults, run {run}")
    results = [embedded_phases(run, clients=clients, phase=phase, log=log)]
    if redis:
        results.append(redis_phases(run, clients=clients, phase=phase, outage=outage, log=log))
    return results
