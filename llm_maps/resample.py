"""The task bootstrap and the sign-flip test every verdict uses: tasks, not examples, are the unit of
independence. Torch-free, numpy only (llm_maps.falloff, findings, conditions, regions and comparison
build on it)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
MAX_FLIPS = 4096  # sign patterns of a sign-flip p-value: every one up to 12 tasks, else this many at random
# Fewer tasks than this: no interval over tasks. Resampling 2, 3 or 4 tasks gives only 3, 10 or 35
# distinct replicates, whose percentiles say little (the same count a claim needs: findings).
MIN_TASKS_FOR_INTERVAL = 5
Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (95 % by default)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always contains p (guards float error at k = 0 and k = n)
    return (max(0.0, min(centre - half, p)), min(1.0, max(centre + half, p)))


def at_least_wilson(lo: float | None, hi: float | None, k: float, n: float) -> tuple[float | None, float | None]:
    """An accuracy's interval over tasks, never narrower than Wilson's over its examples (k of n):
    the task bootstrap collapses to a point when every task scores 0 (or 1), and so can any
    interval from a few tasks of like accuracy. None stays None."""
    if lo is None or hi is None or n <= 0:
        return lo, hi
    wlo, whi = wilson_interval(int(round(k)), int(round(n)))
    return min(lo, wlo), max(hi, whi)


def task_resample_counts(*, n_tasks: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[B, T] how often each of ``n_tasks`` tasks is drawn in each of ``n_boot`` replicates."""
    return rng.multinomial(n_tasks, np.full(n_tasks, 1.0 / n_tasks), size=n_boot).astype(float)


def interval_95(values: np.ndarray) -> tuple[float | None, float | None]:
    """The 2.5th and 97.5th percentiles of the finite ``values`` (None with fewer than 10)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 10:
        return None, None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def task_ratio_interval(num: np.ndarray, den: np.ndarray, estimate: float, *, n_boot: int,
                        rng: np.random.Generator, bounds: tuple[float, float]) -> tuple[float | None, float | None]:
    """Task-clustered bootstrap 95 % interval of sum(num) / sum(den) over tasks (num, den [G]: e.g.
    each task's correct and scored examples), replicates spread by sqrt(G/(G-1)) (small_cluster) and
    the interval clipped to ``bounds`` (the spread can carry it past them). None with fewer than
    MIN_TASKS_FOR_INTERVAL tasks (no replicate is drawn then)."""
    g = len(num)
    if g < MIN_TASKS_FOR_INTERVAL or not np.isfinite(estimate):
        return None, None
    counts = task_resample_counts(n_tasks=g, n_boot=n_boot, rng=rng)  # [B, G]
    d = counts @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(d > 0, (counts @ num) / np.where(d > 0, d, 1.0), np.nan)
    lo, hi = interval_95(small_cluster(estimate, reps, g))
    if lo is None or hi is None:
        return None, None
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


def task_mean_interval(values: np.ndarray, task: np.ndarray, *, n_boot: int, rng: np.random.Generator,
                       bounds: tuple[float, float], proportion: bool = False) -> tuple[float, float | None,
                                                                                       float | None, int]:
    """The mean of ``values`` over the rows (e.g. correct, or one condition's minus another's), with
    its task-clustered bootstrap 95 % interval (task_ratio_interval of each task's sum over its rows;
    ``task`` [n] any labels, or integer codes as they are), and the number of tasks: (mean, low,
    high, tasks). ``proportion`` (values 0/1: an accuracy): the interval never narrower than
    Wilson's over the rows (at_least_wilson)."""
    task = np.asarray(task)
    codes = task if np.issubdtype(task.dtype, np.integer) else np.unique(task, return_inverse=True)[1]
    num = np.bincount(codes, weights=np.asarray(values, dtype=float))
    den = np.bincount(codes).astype(float)
    num, den = num[den > 0], den[den > 0]  # codes no row of these has
    est = float(num.sum() / den.sum()) if den.sum() else math.nan
    lo, hi = task_ratio_interval(num, den, est, n_boot=n_boot, rng=rng, bounds=bounds)
    if proportion:
        lo, hi = at_least_wilson(lo, hi, num.sum(), den.sum())
    return est, lo, hi, len(den)


def sign_flip_p(values: np.ndarray, *, seed: int = 0, max_flips: int = MAX_FLIPS,
                two_sided: bool = False) -> float | None:
    """P-value of the sum of ``values`` (one per task) under sign flips: one-sided, the share of
    sign patterns whose flipped sum is at most the observed one; ``two_sided``, whose flipped sum is
    at least as far from 0 (every pattern when there are at most ``max_flips``, counting the identity;
    else ``max_flips`` seeded ones, plus one). None without values. Under the null each task's
    difference is as likely negative as positive."""
    v = np.asarray(values, dtype=float)
    g = len(v)
    if g == 0:
        return None
    observed = float(v.sum())
    tol = 1e-12 * max(1.0, float(np.abs(v).sum()))

    def hits(sums: np.ndarray) -> np.ndarray:
        return np.abs(sums) >= abs(observed) - tol if two_sided else sums <= observed + tol

    if 2 ** g <= max_flips:
        signs = 1.0 - 2.0 * ((np.arange(2 ** g)[:, None] >> np.arange(g)[None, :]) & 1)  # [2^g, g]
        return float(np.mean(hits(signs @ v)))
    rng = np.random.default_rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(max_flips, g))
    return float((1 + np.sum(hits(signs @ v))) / (max_flips + 1))


def small_cluster(est: float, reps: np.ndarray, n_tasks: int) -> np.ndarray:
    """Bootstrap replicates spread by sqrt(G / (G - 1)) around the estimate: the task bootstrap's
    variance is (G - 1) / G of the unbiased one for G tasks (the CR1 correction of clustered
    standard errors), which matters with few tasks."""
    if n_tasks < 2 or not np.isfinite(est):
        return np.asarray(reps, dtype=float)
    out: FloatArray = est + math.sqrt(n_tasks / (n_tasks - 1)) * (np.asarray(reps, dtype=float) - est)
    return out
