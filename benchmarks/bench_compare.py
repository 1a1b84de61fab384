"""CKA of all layer pairs and the linear probes for R runs x N examples x hidden H (synthetic), streamed.

    python benchmarks/bench_compare.py                     # 4 runs x 15,000 x 2048, 4 layers each
    python benchmarks/bench_compare.py --n 3000 --hidden 512 --layers 2

Writes R synthetic run folders (float16 encodings, N x H per layer, memory-mapped when read) in a
temporary folder, then times ``llm_maps.comparison.group_cka`` (linear CKA between every stored layer
of every pair of runs and within each run) and ``probe_run`` on every run (domain, task and
correctness, grouped / stratified 5-fold CV). Reports wall time, throughput, the peak of memory
allocated by the computation (tracemalloc: numpy reports its buffers to it) next to what holding
all runs' layers at once would take, and the process's peak RSS (which also counts the memory-
mapped file pages read, reclaimable page cache).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402


def write_runs(root: Path, n_runs: int, n: int, hidden: int, n_layers: int, seed: int = 0) -> list[Path]:
    """Runs over the same examples; each layer a noisy linear image of a shared latent (so CKA
    values are neither 0 nor 1)."""
    from dashboard.synthetic import write_synthetic_run
    from llm_maps.runfolder import layer_file

    rng = np.random.default_rng(seed)
    latent_dim = 64
    latent = rng.normal(size=(n, latent_dim)).astype(np.float32)
    runs = []
    for r in range(n_runs):
        run = write_synthetic_run(root / f"run{r}", n, hidden=8, layers=tuple(range(1, n_layers + 1)), seed=seed,
                                  n_tasks=24)
        for k in range(1, n_layers + 1):
            mix = rng.normal(size=(latent_dim, hidden)).astype(np.float32)
            out = np.lib.format.open_memmap(layer_file(run, k), mode="w+", dtype=np.float16, shape=(n, hidden))
            for s in range(0, n, 4096):
                e = min(n, s + 4096)
                noise = rng.standard_normal(size=(e - s, hidden), dtype=np.float32) * (0.5 + r + k)
                out[s:e] = (latent[s:e] @ mix + noise).astype(np.float16)
            out.flush()
            del out
        runs.append(run)
    return runs


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--n", type=int, default=15_000, help="examples per run")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4, help="stored layers per run")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-dim", type=int, default=256, help="PCA dimensions the probes see")
    ap.add_argument("--no-probes", action="store_true")
    ap.add_argument("--no-cka", action="store_true")
    ap.add_argument("--keep", default=None, help="write the runs here (and keep them) instead of a temp folder")
    args = ap.parse_args(argv)

    from llm_maps.comparison import group_cka, match_runs, probe_run
    from llm_maps.runfolder import Run

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-compare-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        paths = write_runs(root, args.runs, args.n, args.hidden, args.layers)
        print(f"wrote {args.runs} runs x {args.n:,} examples x hidden {args.hidden} x {args.layers} layers "
              f"(float16) in {time.perf_counter() - t0:.1f} s", flush=True)
        runs = [Run(p) for p in paths]
        group = match_runs(runs)
        if not args.no_cka:
            pairs, seconds, peak = measure(lambda: group_cka(group, cache="off", progress=True))
            between = sum(1 for p in pairs if p["run_a"] != p["run_b"])
            within = len(pairs) - between
            sources = args.runs * args.layers
            diagonal = sum(1 for p in pairs if p["run_a"] == p["run_b"] and p["layer_a"] == p["layer_b"])
            flops = 2.0 * args.n * args.hidden * args.hidden * (len(pairs) - diagonal + sources)  # cross + self
            all_fp16 = args.runs * args.layers * args.n * args.hidden * 2
            one_f32 = args.n * args.hidden * 4
            vals = [p["cka"] for p in pairs if p["run_a"] != p["run_b"]]
            print(f"CKA: {len(pairs)} layer pairs ({between} between runs, {within} within runs, incl. the diagonal) "
                  f"in {seconds:.1f} s ({seconds / max(len(pairs), 1):.2f} s a pair; {flops / seconds / 1e9:.0f} GFLOP/s)")
            if vals:
                print(f"  CKA between runs: min {min(vals):.3f}, median {np.median(vals):.3f}, max {max(vals):.3f}")
            print(f"  peak allocated {peak / 2**20:,.0f} MiB; all runs' layers at once would be "
                  f"{all_fp16 / 2**20:,.0f} MiB as float16, {2 * all_fp16 / 2**20:,.0f} MiB as float32 (one layer as "
                  f"float32: {one_f32 / 2**20:,.0f} MiB)", flush=True)
        if not args.no_probes:
            def probes():
                return [probe_run(r, folds=args.folds, max_dim=args.max_dim, progress=True, save=False) for r in runs]

            results, seconds, peak = measure(probes)
            fits = sum(len(r["layers"]) for r in results)
            print(f"probes: {fits} probes (domain, task, correct x {args.layers} layers x {args.runs} runs, "
                  f"{args.folds}-fold CV, PCA to {args.max_dim}) in {seconds:.1f} s ({seconds / max(fits, 1):.2f} s a probe); "
                  f"peak allocated {peak / 2**20:,.0f} MiB")
            for target in ("domain", "task", "correct"):
                rows = [r for res in results for r in res["layers"] if r["target"] == target]
                if rows:
                    print(f"  {target:<8} accuracy {np.mean([r['accuracy'] for r in rows]):.3f} "
                          f"(baseline {np.mean([r['baseline'] for r in rows]):.3f}), {rows[0]['cv']}")
        print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:,.0f} MiB "
              "(counts memory-mapped pages read)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
