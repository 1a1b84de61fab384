"""Live points on a real run, CPU or GPU: cold worker start, warm place job end to end through
the API (p50/p95), time to the first streamed token, generation tokens/s; and the exact
neighbour search on a synthetic 15k-example run (hidden 576).

Run:  python benchmarks/bench_worker.py [RUN_DIR] [--n 30]     (default RUN_DIR: the demo run)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pct(values, q):
    return float(np.percentile(values, q)) * 1000


def main(argv=None) -> int:
    from _live import LiveServer

    from llm_maps.neighbours import knn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(Path(__file__).resolve().parent.parent / "data" / "runs" / "demo"))
    ap.add_argument("--n", type=int, default=30, help="place jobs timed")
    ap.add_argument("--gen", type=int, default=5, help="generate jobs timed")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args(argv)

    with LiveServer(Path(args.run)) as srv:
        print(f"cold start (web + worker: model load + warm-up)   {srv.cold_start:.1f} s")
        ready = [line for line in srv.read_log().splitlines() if "ready in" in line]
        print(f"  worker says: {ready[0].split(': ', 1)[1] if ready else '?'}")
        place = []
        for i in range(args.n + 2):
            t = time.perf_counter()
            job = srv.submit({"instruction": f"What is {i} plus {2 * i + 7}?"})[1]["id"]
            while srv.status(job)["status"] not in ("done", "failed"):
                time.sleep(0.005)
            if i >= 2:  # first two are warm-up
                place.append(time.perf_counter() - t)
        print(f"place job via API, warm ({args.n})   p50 {pct(place, 50):.0f} ms   p95 {pct(place, 95):.0f} ms")
        first, rates = [], []
        for i in range(args.gen):
            t = time.perf_counter()
            job = srv.submit({"instruction": f"Write a short story about a lighthouse number {i}.",
                              "generate": True, "max_new_tokens": args.max_new_tokens})[1]["id"]
            t_first = None
            while True:
                body = srv.status(job)
                if t_first is None and (body.get("result") or {}).get("tokens"):
                    t_first = time.perf_counter() - t
                if body["status"] in ("done", "failed"):
                    break
                time.sleep(0.005)
            total = time.perf_counter() - t
            n_tok = len(body["result"]["tokens"])
            first.append(t_first if t_first is not None else total)
            if t_first is not None and n_tok > 1:
                rates.append((n_tok - 1) / max(total - t_first, 1e-9))
        print(f"first streamed token ({args.gen})       p50 {pct(first, 50):.0f} ms   max {max(first) * 1000:.0f} ms")
        if rates:
            print(f"generation after the first token    {statistics.median(rates):.1f} tokens/s (median)")

    rng = np.random.default_rng(0)
    train = rng.normal(size=(12000, 576)).astype(np.float16).astype(np.float32)  # 15k run, 80 % train
    queries = rng.normal(size=(50, 576)).astype(np.float32)
    times = []
    for q in queries:
        t = time.perf_counter()
        knn(q[None, :], train, k=10, metric="cosine")
        times.append(time.perf_counter() - t)
    print(f"exact k=10 search, 12k train x 576 (synthetic 15k run)   p50 {pct(times, 50):.1f} ms   "
          f"p95 {pct(times, 95):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
