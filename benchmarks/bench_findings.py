"""Findings: the task-clustered bootstrap, batched (all replicates' logistic fits at once, a few
Newton steps in numpy) next to refitting statsmodels' Logit once per replicate, on the same rows
and the same resamples; and a whole `compute_findings` call (B = 2000, permutations included).

    python benchmarks/bench_findings.py [--tasks 30] [--per-task 20] [--boot 2000] [--loop 200]

The statsmodels loop runs ``--loop`` replicates and is scaled to B (it is linear in B)."""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import statsmodels.api as sm

    from llm_maps.findings import compute_findings, fit_logistic, task_resample_counts

    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=30)
    ap.add_argument("--per-task", type=int, default=20)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--loop", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.tasks * args.per_task
    task = np.repeat(np.arange(args.tasks), args.per_task)
    x = rng.random(n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 + rng.normal(0, 0.7, args.tasks)[task] - 3 * x)))).astype(float)
    counts = task_resample_counts(n_tasks=args.tasks, n_boot=args.boot, rng=rng)
    weights = counts[:, task]

    t0 = time.perf_counter()
    _, slopes, ok = fit_logistic(x=x, y=y, weights=weights)
    batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref = []
    X = sm.add_constant(x)
    for r in range(args.loop):
        rows = np.repeat(np.arange(n), weights[r].astype(int))
        ref.append(sm.Logit(y[rows], X[rows]).fit(disp=0).params[1])
    loop = (time.perf_counter() - t0) * args.boot / args.loop
    err = float(np.max(np.abs(np.array(ref) - slopes[:args.loop])))

    dom = np.where(task < args.tasks // 2, "Chollet", "Reasoning")
    t0 = time.perf_counter()
    res = compute_findings(distance=x, correct=y > 0.5, domain=dom, task=task.astype(str), n_boot=args.boot)
    whole = time.perf_counter() - t0
    print(f"{n} examples in {args.tasks} tasks, B = {args.boot} task-clustered replicates")
    print(f"  batched Newton (numpy):          {batched:7.2f} s  ({ok.mean():.1%} of fits converged)")
    print(f"  statsmodels Logit per replicate: {loop:7.2f} s  (measured on {args.loop}, scaled to B)")
    print(f"  speed-up:                        {loop / batched:7.1f} x   max |slope difference| {err:.1e}")
    print(f"  compute_findings (2 domains, bootstrap + {res['contrast']['permutations']} permutations, "
          f"AUROC, within-task, curves): {whole:.2f} s")


if __name__ == "__main__":
    main()
