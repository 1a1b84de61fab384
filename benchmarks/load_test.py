"""Load test of the live-point API on loopback (bounded in count and time).

Run:  python benchmarks/load_test.py [RUN_DIR] [--clients 20 --place 200 --generate 20]

Starts `llm-maps serve RUN` (its embedded worker included) on 127.0.0.1, then N concurrent
clients submit the place and generate jobs and poll them to the end; a 503 is an answer (queue
full) and is retried after its Retry-After, a bounded number of times. Checks that every request
got an answer, that no job was lost (every accepted id reached done/failed) or duplicated (ids
unique; the run's point store holds each done job exactly once), and reports latencies.
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
