"""Token atlas: build throughput next to the prompt-only encode, and per-token nearest-atlas latency.

Run:  python benchmarks/bench_atlas.py [--n 256] [--model PATH_OR_GGUF] [--tokens 200000] [--run RUN_DIR]

Prints, from one run:
1. on the first N demo examples with the demo model: seconds and tokens/s of `encode_to_folder`
   (prompt view only) and of `encode_views_to_folder` (prompt + completion + token atlas in shared
   passes), and their ratio of wall time (what the atlas and completion view add to a build);
2. the worker's per-token lookup (`pipelines.nearest.StateIndex`: nearest atlas state, and the
   15 nearest fit rows UMAP placement needs) on a SYNTHETIC float16 atlas of --tokens x 576
   (SmolLM2's hidden size) memory-mapped from disk, and on a real run's atlas with --run: p50 and
   p90 in ms, next to an exact float64 scan (`llm_maps.neighbours.knn`) of the same matrix.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def bench_build(n: int, model: str | None) -> None:
    import pandas as pd

    from pipelines.build import load_sources
    from interfaces.demo import DEMO_DATA, demo_model_path
    from pipelines.encode import encode_to_folder
    from pipelines.models import load_model
    from pipelines.templates import get_template
    from pipelines.views import encode_views_to_folder

    loaded = load_model(model or str(demo_model_path()))
    frame, _ = load_sources(str(DEMO_DATA))
    frame = frame.iloc[:n].reset_index(drop=True)
    tmpl = get_template("chat", loaded.tokenizer)
    frame["prompt"] = [tmpl.render(i, c, tokenizer=loaded.tokenizer) for i, c in zip(frame["instruction"],
                                                                                      frame["context"])]
    frame["split"] = "train"
    frame["output"], frame["score"] = None, np.nan
    layers = [loaded.num_layers]
    with tempfile.TemporaryDirectory() as tmp:
        encode_to_folder(loaded, frame["prompt"].tolist()[:8], Path(tmp) / "warm", layers=layers, progress=False)
        t, c = time.perf_counter(), time.process_time()
        res = encode_to_folder(loaded, frame["prompt"].tolist(), Path(tmp) / "p", layers=layers, progress=False)
        prompt_s, prompt_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        views = encode_views_to_folder(loaded, frame, Path(tmp) / "v", layers=layers, views=["prompt", "completion"],
                                       atlas=True, progress=False)
        views_s, views_cpu = time.perf_counter() - t, time.process_time() - c
    atlas_tokens = len(views.plan.tokens)
    print(f"model {loaded.info.get('model')} on {loaded.device} ({loaded.dtype}), {n} demo examples, layer {layers}")
    print(f"prompt-only encode:            {prompt_s:7.2f} s wall {prompt_cpu:7.2f} s CPU  "
          f"{int(res.n_tokens.sum()):>8} tokens  {res.n_tokens.sum() / prompt_s:8.0f} tokens/s")
    print(f"prompt + completion + atlas:   {views_s:7.2f} s wall {views_cpu:7.2f} s CPU  "
          f"{views.tokens_forwarded:>8} tokens  {views.tokens_forwarded / views_s:8.0f} tokens/s  "
          f"({len(views.plan.segments)} passes for {n} rows; {atlas_tokens} atlas tokens = "
          f"{atlas_tokens / views_s:.0f} atlas tokens/s)")
    print(f"ratio, all three views / prompt only: {views_s / prompt_s:.2f}x wall, {views_cpu / prompt_cpu:.2f}x CPU "
          "(CPU time is the figure to trust on a shared machine)")


def latency(index, queries, k: int) -> tuple[float, float, float]:
    """(p50 wall ms, p90 wall ms, p50 CPU ms of this process: all its threads)."""
    times, cpu = [], []
    for q in queries:
        t, c = time.perf_counter(), time.process_time()
        index.search(q, k=k, every=k > 1)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    times, cpu = np.array(times[3:]) * 1e3, np.array(cpu[3:]) * 1e3
    return float(np.median(times)), float(np.percentile(times, 90)), float(np.median(cpu))


def bench_lookup(atlas: np.ndarray, label: str, n_queries: int = 40, metric: str = "cosine") -> None:
    from llm_maps.neighbours import knn
    from pipelines.nearest import StateIndex

    t = time.perf_counter()
    index = StateIndex([atlas], metric=metric)
    setup = time.perf_counter() - t
    rng = np.random.default_rng(1)
    rows = rng.choice(len(atlas), n_queries, replace=False)
    # queries near atlas states, as a generated token is (fp16, like the worker's states)
    queries = (np.asarray(atlas[np.sort(rows)], dtype=np.float32)
               + 0.05 * rng.standard_normal((n_queries, atlas.shape[1])).astype(np.float32)).astype(np.float16)
    p50, p90, cpu = latency(index, queries, 1)
    p50k, p90k, cpuk = latency(index, queries, 15)
    t = time.perf_counter()
    for q in queries[:3]:
        knn(q[None].astype(np.float32), atlas, k=1, metric=metric)
    scan = (time.perf_counter() - t) / 3 * 1e3
    agree = sum(int(index.search(q, k=1)[1][0]) == int(knn(q[None].astype(np.float32), atlas, k=1, metric=metric)[1][0, 0])
                for q in queries[:5])
    print(f"{label}: {atlas.shape[0]} x {atlas.shape[1]} float16 ({metric}); index set-up {setup:.1f} s")
    print(f"  nearest atlas state (k=1):        p50 {p50:6.1f} ms  p90 {p90:6.1f} ms  (CPU p50 {cpu:6.1f} ms)")
    print(f"  + 15 nearest for UMAP placement:  p50 {p50k:6.1f} ms  p90 {p90k:6.1f} ms  (CPU p50 {cpuk:6.1f} ms)")
    print(f"  exact float64 scan (knn), k=1:    {scan:6.1f} ms per query; same nearest row in {agree}/5")


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="demo examples for the build comparison")
    ap.add_argument("--model", default=None, help="model (default: the demo's SmolLM2 GGUF)")
    ap.add_argument("--tokens", type=int, default=200_000, help="rows of the synthetic atlas")
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--run", default=None, help="also time a real run's atlas (its map layer)")
    ap.add_argument("--skip-build", action="store_true")
    args = ap.parse_args(argv)
    print(f"torch threads {torch.get_num_threads()}")
    if not args.skip_build:
        bench_build(args.n, args.model)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        # synthetic states: clusters in a low-rank subspace + noise, an outlier dimension (as real LMs have)
        centres = rng.standard_normal((512, 64)).astype(np.float32) * 3
        basis = rng.standard_normal((64, args.hidden)).astype(np.float32) / 8
        path = Path(tmp) / "atlas.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(args.tokens, args.hidden))
        for s in range(0, args.tokens, 20000):
            m = min(20000, args.tokens - s)
            x = (centres[rng.integers(0, 512, m)] + rng.standard_normal((m, 64), dtype=np.float32)) @ basis
            x += 0.3 * rng.standard_normal((m, args.hidden), dtype=np.float32)
            x[:, 7] += 40
            out[s:s + m] = x
        out.flush()
        del out
        bench_lookup(np.load(path, mmap_mode="r"), "synthetic atlas (memory-mapped)")
    if args.run:
        from llm_maps.tokens import load_atlas
        from llm_maps.runfolder import read_manifest

        m = read_manifest(args.run)
        bench_lookup(load_atlas(args.run, m, int(m["default_layer"])), f"atlas of {args.run}",
                     metric=m.get("distance_metric", "cosine"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
