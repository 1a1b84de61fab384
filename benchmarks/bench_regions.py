"""Regions (`llm-maps regions`, llm_maps/regions.py): time and peak memory of the whole stage on
synthetic runs of planted clusters, 15k examples x 576 dimensions and 100k x 2048 (float16 encodings
on disk, as a run stores them).

    python benchmarks/bench_regions.py [--sizes 15000x576,100000x2048] [--threads 2] [--keep DIR]

Each size runs in a fresh process (so its peak resident memory is its own) limited to ``--threads``
BLAS/OpenMP threads: find_regions (train-mean centring, PCA, HDBSCAN, the statistics, keywords)
and write_regions. Prints seconds, peak RSS, regions found and the adjusted Rand index against the
planted clusters."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_run(path: Path, n: int, hidden: int, *, clusters: int = 40, seed: int = 0) -> Path:
    """A synthetic run (dashboard.synthetic) whose encodings are ``clusters`` planted clusters
    (tasks), float16, written in chunks; instructions carry a word per cluster."""
    import numpy as np

    from dashboard.synthetic import write_synthetic_run
    from llm_maps.runfolder import layer_file, write_parquet_atomic

    write_synthetic_run(path, n, hidden=8, layers=(2,), seed=seed, n_tasks=clusters)
    import pandas as pd

    frame = pd.read_parquet(path / "examples.parquet")
    codes = pd.Categorical(frame["task"]).codes.astype(np.int64)
    frame["instruction"] = [f"question {i % 97} about topic{c} and item{i % 13}" for i, c in enumerate(codes)]
    write_parquet_atomic(path / "examples.parquet", frame)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, hidden)).astype(np.float32) * 3.0
    offset = rng.normal(size=hidden).astype(np.float32) * 50.0  # a few huge shared dimensions, as in real states
    out = np.lib.format.open_memmap(layer_file(path, 2), mode="w+", dtype=np.float16, shape=(n, hidden))
    for start in range(0, n, 8192):
        stop = min(n, start + 8192)
        block = centres[codes[start:stop]] + rng.normal(size=(stop - start, hidden)).astype(np.float32) + offset
        out[start:stop] = block.astype(np.float16)
    out.flush()
    del out
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["hidden_size"] = hidden
    (path / "manifest.json").write_text(json.dumps(manifest))
    np.save(path / "planted.npy", codes)
    return path


def child(run: str) -> None:
    """Run the stage on ``run`` and print one JSON line of measurements."""
    import resource

    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    from llm_maps.regions import find_regions, write_regions

    t0 = time.perf_counter()
    regions = find_regions(run)
    t1 = time.perf_counter()
    write_regions(run, regions)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    ari = adjusted_rand_score(np.load(Path(run) / "planted.npy"), regions.labels)
    print(json.dumps({"find": t1 - t0, "write": t2 - t1, "peak_mib": peak, "regions": regions["n_regions"],
                      "noise": regions["n_noise"], "ari": ari, "min_size": regions["params"]["min_size"],
                      "pca_fit_rows": regions["params"]["pca_fit_rows"]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="15000x576,100000x2048")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", default=None, help="build the runs here (kept); default: a temporary folder")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-regions-"))
    env = {**os.environ, **{k: str(args.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                             "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")},
           "PYTHONPATH": str(ROOT)}
    print(f"regions: find_regions + write_regions, {args.threads} threads, default --min-size, 32 PCA dims")
    for size in args.sizes.split(","):
        n, hidden = (int(v) for v in size.lower().split("x"))
        run = root / f"run-{n}x{hidden}"
        if not (run / "manifest.json").exists():
            t = time.perf_counter()
            make_run(run, n, hidden)
            print(f"  built {run.name} in {time.perf_counter() - t:.1f} s "
                  f"({n * hidden * 2 / 1e6:.0f} MB of float16 encodings)")
        out = subprocess.run([sys.executable, __file__, "--child", str(run)], env=env, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:])
            raise SystemExit(out.returncode)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {n:>7,} x {hidden:<5} {m['find'] + m['write']:7.1f} s (find {m['find']:.1f}, write {m['write']:.1f})"
              f"   peak RSS {m['peak_mib']:7.0f} MiB   {m['regions']} regions, {m['noise']:,} in none, "
              f"ARI {m['ari']:.3f} vs planted (min_size {m['min_size']}, PCA fitted on {m['pca_fit_rows']:,} rows)")


if __name__ == "__main__":
    main()
