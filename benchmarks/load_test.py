"""Load test of the live-point API on loopback (bounded in count and time).

Run:  python benchmarks/load_test.py [RUN_DIR] [--clients 20 --place 200 --generate 20]

Starts `llm-maps serve RUN` (its embedded worker included) on 127.0.0.1, then N concurrent
clients submit the place and generate jobs and poll them to the end; a 503 is an answer (queue
full) and is retried after its Retry-After, a bounded number of times. Checks that every request
got an answer, that no job was lost (every accepted id reached done/failed) or duplicated (ids
unique; the run's point store holds each done job exactly once), and reports latencies.

Faults:  python benchmarks/load_test.py RUN_DIR --duration 60 --kill-every 15 [--clients 20]

N clients submit for ``--duration`` seconds while the embedded worker is SIGKILLed every
``--kill-every`` seconds (`llm-maps serve` restarts it). Reports jobs accepted, done, failed (with
their reasons), lost (accepted but never final: must be 0), p50/p95 latency, the restarts seen and
how long /api/health answered 503; then the web process's peak memory while clients send
oversize bodies (200 MB declared, 20 MB sent each, 4 at once), against its resting memory.

Fault suite:  python benchmarks/load_test.py RUN_DIR --fault-suite [--clients 20 --phase 10 --outage 5]

N clients submit and poll while the embedded worker is SIGKILLed, then frozen with SIGSTOP, a run is
added to the served folder, renamed and removed; then on Redis (serve + a Celery worker) Redis is
stopped and started again. Checks that no answer is a 5xx other than 503 with Retry-After, no job is
seen both failed and done, none is lost, and every done job has exactly one saved point
(benchmarks/_faults.py; tests/test_fault_suite.py runs a short form in CI).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    from _live import LiveServer, call

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(Path(__file__).resolve().parent.parent / "data" / "runs" / "demo"))
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--place", type=int, default=200)
    ap.add_argument("--generate", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole test")
    ap.add_argument("--duration", type=float, default=60.0, help="with --kill-every: seconds of load")
    ap.add_argument("--kill-every", type=float, default=None, help="SIGKILL the embedded worker every N seconds")
    ap.add_argument("--fault-suite", action="store_true", help="kill -9, SIGSTOP, runs added/renamed/removed, "
                    "Redis stopped and started, under load (see the module doc)")
    ap.add_argument("--phase", type=float, default=10.0, help="with --fault-suite: seconds of load between faults")
    ap.add_argument("--outage", type=float, default=5.0, help="with --fault-suite: seconds Redis stays down")
    ap.add_argument("--no-redis", action="store_true", help="with --fault-suite: leave out the Redis phase")
    args = ap.parse_args(argv)
    if args.fault_suite:
        from _faults import run_suite

        results = run_suite(Path(args.run), clients=args.clients, phase=args.phase, outage=args.outage,
                            redis=not args.no_redis)
        ok = all(r["ok"] for r in results)
        print("OK" if ok else "PROBLEM")
        return 0 if ok else 1
    if args.kill_every:
        return run_faults(args)

    work = [("place", i) for i in range(args.place)] + [("generate", i) for i in range(args.generate)]
    work.sort(key=lambda w: (w[1] % 10, w[0]))  # interleave the generate jobs
    lock = threading.Lock()
    results, accepted, answered_503, errors = [], [], Counter(), []
    stop_at = time.time() + args.deadline

    with LiveServer(Path(args.run), env={"LLM_MAPS_MAX_QUEUED": "64"}) as srv:
        def client():
            while time.time() < stop_at:
                with lock:
                    if not work:
                        return
                    kind, i = work.pop()
                body = {"instruction": f"Load test {kind} {i}: what is {i} times 3?"}
                if kind == "generate":
                    body.update(generate=True, max_new_tokens=args.max_new_tokens)
                t = time.perf_counter()
                for attempt in range(50):
                    status, reply, headers = srv.submit(body)
                    if status != 503:
                        break
                    with lock:
                        answered_503[kind] += 1
                    time.sleep(float(headers.get("Retry-After", 1)))
                if status != 202:
                    with lock:
                        errors.append((kind, status, reply))
                    continue
                job = reply["id"]
                with lock:
                    accepted.append(job)
                while time.time() < stop_at:
                    st = srv.status(job)
                    if st["status"] in ("done", "failed"):
                        break
                    time.sleep(0.02)
                with lock:
                    results.append((kind, job, st["status"], time.perf_counter() - t, st.get("error")))

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - start
        points = call(f"{srv.url}/api/runs/{srv.run.name}/points")[1]["points"]

    total = args.place + args.generate
    done = [r for r in results if r[2] == "done"]
    failed = [r for r in results if r[2] == "failed"]
    stored = Counter(p["id"] for p in points)
    print(f"jobs: {total} submitted by {args.clients} clients in {wall:.1f} s")
    print(f"answered: {len(results)} finished ({len(done)} done, {len(failed)} failed), "
          f"{sum(answered_503.values())} 503 answers (retried), {len(errors)} other errors")
    print(f"lost: {len(accepted) - len(results)}   duplicated ids: {len(accepted) - len(set(accepted))}   "
          f"points stored: {len(stored)} (duplicates {sum(v - 1 for v in stored.values())}, "
          f"missing {len({r[1] for r in done} - set(stored))})")
    for kind in ("place", "generate"):
        lat = sorted(r[3] for r in done if r[0] == kind)
        if lat:
            print(f"{kind:<8} end-to-end latency  p50 {statistics.median(lat):.2f} s  "
                  f"p95 {lat[int(0.95 * (len(lat) - 1))]:.2f} s  max {lat[-1]:.2f} s  (n={len(lat)})")
    if failed:
        print("failures:", Counter(r[4] for r in failed).most_common(3))
    ok = (len(results) == len(accepted) == total and not errors and len(accepted) == len(set(accepted))
          and set(stored) == {r[1] for r in done})
    print("OK" if ok else "PROBLEM")
    return 0 if ok else 1


def _workers(pid: int) -> list:
    """The live embedded worker processes of `llm-maps serve` ``pid`` (a killed one not yet reaped is skipped)."""
    import psutil

    out = []
    for c in psutil.Process(pid).children():
        try:
            if c.status() != psutil.STATUS_ZOMBIE and "worker" in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:
            continue
    return out


def _oversize(port: int, declared: int = 200_000_000, send: int = 20_000_000) -> str:
    """POST a body declared ``declared`` bytes long, sending up to ``send`` of them until the server
    answers; returns the answer's status line."""
    import select
    import socket

    chunk = b"[" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /api/runs/x/points HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % declared)
        sent = 0
        try:
            while sent < send and not select.select([s], [], [], 0)[0]:  # stop once the answer is there
                s.sendall(chunk)
                sent += len(chunk)
            return s.recv(4096).split(b"\r\n", 1)[0].decode() + f" (after {sent / 1e6:.1f} MB sent)"
        except OSError as exc:
            return f"(no answer: {type(exc).__name__})"


def run_faults(args) -> int:
    """The fault run (see the module's doc): load with the worker killed every --kill-every s."""
    import os
    import signal

    import psutil

    from _live import LiveServer, call

    lock = threading.Lock()
    accepted, finals, answered_503, errors = {}, {}, Counter(), []
    kills, health_503, restarts_seen = [], [0.0], set()
    with LiveServer(Path(args.run), env={"LLM_MAPS_MAX_QUEUED": "64", "LLM_MAPS_HEARTBEAT_TIMEOUT": "5",
                                         "LLM_MAPS_RESTART_BACKOFF": "1"}) as srv:
        web = psutil.Process(srv.proc.pid)
        stop_at = time.time() + args.duration  # from the moment the server and its worker are up
        drain_until = stop_at + 120

        def client(k: int):
            i = 0
            while time.time() < stop_at:
                i += 1
                body = {"instruction": f"Fault test {k}.{i}: what is {i} times {k}?"}
                if i % 3 == 0:  # one job in three a generation
                    body.update(generate=True, max_new_tokens=args.max_new_tokens)
                t = time.perf_counter()
                status, reply, headers = srv.submit(body)
                if status == 503:
                    with lock:
                        answered_503["submit"] += 1
                    time.sleep(float(headers.get("Retry-After", 1)))
                    continue
                if status != 202:
                    with lock:
                        errors.append((status, reply))
                    continue
                job = reply["id"]
                with lock:
                    accepted[job] = t
                while time.time() < drain_until:
                    st = srv.status(job)
                    if st.get("status") in ("done", "failed", "cancelled"):
                        with lock:
                            finals[job] = (st["status"], time.perf_counter() - t, st.get("error"),
                                           body.get("generate", False))
                        break
                    time.sleep(0.05)

        def killer():
            while time.time() < stop_at - 1:
                time.sleep(args.kill_every)
                if time.time() >= stop_at:
                    return
                for w in _workers(srv.proc.pid):
                    os.kill(w.pid, signal.SIGKILL)
                    kills.append(w.pid)

        def watch_health():
            last = time.time()
            while time.time() < drain_until and (time.time() < stop_at or len(finals) < len(accepted)):
                status = call(f"{srv.url}/api/health", timeout=10)[0]
                now = time.time()
                if status == 503:
                    health_503[0] += now - last
                for w in _workers(srv.proc.pid):
                    restarts_seen.add(w.pid)
                last = now
                time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        threads += [threading.Thread(target=killer, daemon=True), threading.Thread(target=watch_health)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads[: args.clients]:
            th.join()
        wall = time.perf_counter() - start
        threads[-1].join()
        points = call(f"{srv.url}/api/runs/{srv.run.name}/points")[1]["points"]
        rest, peak, answers = _memory_under_oversize(srv, web)
        healthy = call(f"{srv.url}/api/runs", timeout=10)[0] == 200
    return _fault_report(args, accepted=accepted, finals=finals, errors=errors, answered_503=answered_503,
                         kills=kills, restarts_seen=restarts_seen, wall=wall, points=points, health_503=health_503[0],
                         rest=rest, peak=peak, answers=answers, healthy=healthy)


def _memory_under_oversize(srv, web) -> tuple[int, int, list]:
    """The web process's resting memory and its peak while 4 clients send oversize bodies, and
    the answers they got."""
    rest = web.memory_info().rss
    peak, answers, sampling = [rest], [], [True]

    def sample():
        while sampling[0]:
            peak[0] = max(peak[0], web.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=lambda: answers.append(_oversize(srv.port))) for _ in range(4)]
    for th in senders:
        th.start()
    for th in senders:
        th.join()
    sampling[0] = False
    sampler.join()
    return rest, peak[0], answers


def _fault_report(args, *, accepted, finals, errors, answered_503, kills, restarts_seen, wall, points, health_503,
                  rest, peak, answers, healthy) -> int:
    """Print what the fault run saw; 0 when no job was lost and the server stayed healthy."""
    done = {j: f for j, f in finals.items() if f[0] == "done"}
    failed = {j: f for j, f in finals.items() if f[0] == "failed"}
    lost = [j for j in accepted if j not in finals]
    stored = Counter(p["id"] for p in points)
    print(f"faults: {args.clients} clients for {args.duration:g} s, embedded worker SIGKILLed every "
          f"{args.kill_every:g} s ({len(kills)} kills, {len(restarts_seen)} worker processes seen); wall {wall:.1f} s")
    print(f"jobs: accepted {len(accepted)}, done {len(done)}, failed {len(failed)}, lost {len(lost)}; "
          f"{answered_503['submit']} submissions answered 503 (retried), {len(errors)} other errors")
    reasons = Counter(re.sub(r"\S+:\d+", "HOST:PID", f[2] or "(none)") for f in failed.values())
    for reason, n in reasons.most_common(5):
        print(f"  failed x{n}: {reason}")
    print(f"points stored: {len(stored)} (duplicates {sum(v - 1 for v in stored.values())}, "
          f"missing {len(set(done) - set(stored))})")
    for kind, gen in (("place", False), ("generate", True)):
        lat = sorted(f[1] for f in done.values() if f[3] == gen)
        if lat:
            print(f"{kind:<8} end-to-end latency  p50 {statistics.median(lat):.2f} s  "
                  f"p95 {lat[int(0.95 * (len(lat) - 1))]:.2f} s  max {lat[-1]:.2f} s  (n={len(lat)})")
    print(f"/api/health answered 503 for {health_503:.1f} s in all")
    print(f"web process memory: resting {rest / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB under 4 concurrent "
          f"200 MB-declared bodies (20 MB sent each); answers: {Counter(answers).most_common()}; "
          f"healthy after: {healthy}")
    ok = not lost and not errors and set(stored) == set(done) and healthy and all(" 413 " in a for a in answers)
    print("OK" if ok else "PROBLEM")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
