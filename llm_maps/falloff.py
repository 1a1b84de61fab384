"""Falloff statistics: accuracy against distance to the nearest training prompt.

Torch-free and pure (numpy/pandas), shared by `llm-maps falloff` (which writes
``falloff.json`` into a run) and the dashboard (which draws it, or computes it on the fly for the
stored ``dist_to_train`` when a run has no ``falloff.json``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from .contract import ExpectedAccuracy, FalloffBin, FalloffGroup, FalloffTrend, OverTasks
from .resample import Z95 as Z95, task_mean_interval, wilson_interval as wilson_interval

import numpy as np

FALLOFF_FILE = "falloff.json"


def equal_count_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges (n_bins + 1, fewer if values repeat) holding about equal counts."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return np.array([])
    n_bins = max(1, min(int(n_bins), len(values)))
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1))
    return np.unique(edges)


def assign_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per value (right-closed bins; the first bin includes its lower edge)."""
    if len(edges) < 2:
        return np.zeros(len(values), dtype=int)
    idx = np.searchsorted(edges, values, side="left") - 1
    return np.clip(idx, 0, len(edges) - 2)


MIN_CLUSTERS_FOR_CLAIM = 5  # fewer tasks than this: a trend is shown, never called a finding


def logistic_trend(distance: np.ndarray, correct: np.ndarray, *, clusters: np.ndarray | None = None,
                   ridge: float = 1e-6, max_iter: int = 100) -> FalloffTrend:
    """Logistic regression of correct on distance (IRLS); slope with its 95 % Wald interval. With
    ``clusters`` (each row's task), the standard error is task-clustered (the sandwich estimator
    with statsmodels' small-sample factor G/(G-1) * (N-1)/(N-2)), since the examples of a task are
    not independent: the ordinary one understates it. The one trend of the project: the Falloff
    page, `llm-maps falloff`, the Compare curves and the summaries all use it. The clustered interval
    uses Student's t with (tasks - 1) degrees of freedom."""
    x = np.asarray(distance, dtype=float)
    y = np.asarray(correct, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    g = None if clusters is None else np.asarray(clusters, dtype=object)[ok]
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or y.min() == y.max():
        return {"n": int(n), "slope": None, "slope_low": None, "slope_high": None, "intercept": None,
                "note": "not enough variation to fit"}
    X = np.column_stack([np.ones(n), x])
    beta = np.zeros(2)
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(X @ beta)))
        w = np.maximum(p * (1 - p), 1e-12)
        hess = X.T @ (X * w[:, None]) + ridge * np.eye(2)
        step = np.linalg.solve(hess, X.T @ (y - p) - ridge * beta)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = 1 / (1 + np.exp(-(X @ beta)))
    bread = np.linalg.inv(X.T @ (X * np.maximum(p * (1 - p), 1e-12)[:, None]) + ridge * np.eye(2))
    out: FalloffTrend = {"n": int(n), "intercept": float(beta[0]), "slope": float(beta[1])}
    if g is None:
        cov = bread
        out["se_type"] = "model-based (examples independent)"
    else:
        names, codes = np.unique(g.astype(str), return_inverse=True)
        n_g = len(names)
        if n_g < 2:
            return {**out, "slope_low": None, "slope_high": None, "clusters": int(n_g),
                    "note": "one task only: no task-clustered interval"}
        scores = np.zeros((n_g, 2))
        np.add.at(scores, codes, X * (y - p)[:, None])  # each task's summed score
        cov = bread @ (scores.T @ scores) @ bread * (n_g / (n_g - 1)) * ((n - 1) / (n - 2))
        out["clusters"] = int(n_g)
        out["se_type"] = "task-clustered (sandwich)"
    se = float(math.sqrt(max(cov[1, 1], 0.0)))
    # with few clusters the normal quantile is too narrow: Student's t with G - 1 degrees of freedom
    # (the usual small-cluster rule; benchmarks/calibration.py: 6.2 % null claims at 24 tasks, 6.8 % with z)
    q = Z95 if g is None else float(_t_quantile(int(out["clusters"]) - 1))
    out["slope_low"], out["slope_high"], out["slope_se"] = float(beta[1] - q * se), float(beta[1] + q * se), se
    return out


def _t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def clustered_trends(stats: Mapping[str, Any]) -> bool:
    """Whether every fitted trend of a falloff (e.g. a falloff.json variant's stats) has a
    task-clustered interval: files written before trends were clustered do not, and readers
    recompute them rather than show an interval that treats examples as independent."""
    return all((st.get("trend") or {}).get("slope") is None or "clusters" in st["trend"] for st in stats.values())


FALLOFF_BOOT = 2000  # task-bootstrap replicates of the accuracies' intervals over tasks


def _add_over_tasks(target: OverTasks, correct: np.ndarray, codes: np.ndarray, sel: np.ndarray, seed: int) -> None:
    """Set task_low, task_high (a task-clustered bootstrap 95 % interval of the accuracy of rows
    ``sel``, never narrower than Wilson's; None with fewer than MIN_TASKS_FOR_INTERVAL tasks) and
    n_tasks on ``target``."""
    _, target["task_low"], target["task_high"], target["n_tasks"] = task_mean_interval(
        correct[sel], codes[sel], n_boot=FALLOFF_BOOT, rng=np.random.default_rng(seed), bounds=(0.0, 1.0),
        proportion=True)


def bin_interval(b: Mapping[str, Any]) -> tuple[float | None, float | None, str]:
    """A bin's (or group's) 95 % interval to show: over tasks (task_low, task_high) where the
    statistics have it, else Wilson's over examples (low, high); and which it is."""
    if b.get("task_low") is not None and b.get("task_high") is not None:
        return b["task_low"], b["task_high"], "over tasks"
    return b.get("low"), b.get("high"), "Wilson, over examples"


def group_falloff(distance: np.ndarray, correct: np.ndarray, edges: np.ndarray,
                  tasks: np.ndarray | None = None, codes: np.ndarray | None = None) -> FalloffGroup:
    """Accuracy per distance bin (given edges) with Wilson intervals, plus the logistic trend.
    With ``tasks``: the trend's interval is task-clustered, and every accuracy also gets a
    task-clustered interval (task_low, task_high: examples within a task are not independent);
    ``codes``: the tasks as integer codes, when the caller has them already."""
    distance = np.asarray(distance, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    if codes is None and tasks is not None:
        codes = np.unique(np.asarray(tasks).astype(str), return_inverse=True)[1]
    bins: list[FalloffBin] = []
    idx = assign_bins(distance, edges)
    for b in range(max(len(edges) - 1, 0)):
        sel = idx == b
        n, k = int(sel.sum()), int(correct[sel].sum())
        low, high = wilson_interval(k, n)
        entry: FalloffBin = {"bin": b, "lo": float(edges[b]), "hi": float(edges[b + 1]),
                             "median": float(np.median(distance[sel])) if n else None,
                             "n": n, "correct": k, "accuracy": (k / n) if n else None,
                             "low": low if n else None, "high": high if n else None}
        if codes is not None and n:
            _add_over_tasks(entry, correct, codes, sel, seed=b + 1)
        bins.append(entry)
    n, k = len(distance), int(correct.sum())
    low, high = wilson_interval(k, n)
    out: FalloffGroup = {"n": n, "correct": k, "accuracy": (k / n) if n else None, "low": low if n else None,
                         "high": high if n else None, "bins": bins,
                         "trend": logistic_trend(distance, correct, clusters=tasks)}
    if codes is not None and n:
        _add_over_tasks(out, correct, codes, np.ones(n, dtype=bool), seed=0)
    return out


def falloff_stats(distance: np.ndarray, correct: np.ndarray, groups: Iterable[str] | None = None, *,
                  n_bins: int = 5, per_group_bins: bool = True,
                  tasks: Iterable[str] | None = None) -> dict[str, FalloffGroup]:
    """Falloff for all examples and per group (e.g. domain). Only rows with a finite distance and
    a non-null ``correct`` count. Bins are equal-count, per group by default. ``tasks`` (each row's
    task): the trends' intervals are task-clustered."""
    distance = np.asarray(distance, dtype=float)
    correct_arr = np.asarray([np.nan if c is None or (isinstance(c, float) and math.isnan(c)) else float(c)
                              for c in correct])
    keep = np.isfinite(distance) & np.isfinite(correct_arr)
    groups_arr = np.asarray(list(groups) if groups is not None else ["all"] * len(distance), dtype=object)
    tasks_arr = None if tasks is None else np.asarray([str(t) for t in tasks], dtype=object)[keep]
    codes = None if tasks_arr is None else np.unique(tasks_arr.astype(str), return_inverse=True)[1]
    d, c, g = distance[keep], correct_arr[keep] > 0.5, groups_arr[keep]
    overall_edges = equal_count_edges(d, n_bins)
    out = {"all": group_falloff(d, c, overall_edges, tasks_arr, codes)}
    if groups is not None:
        for name in sorted(set(g.tolist())):
            sel = g == name
            edges = equal_count_edges(d[sel], n_bins) if per_group_bins else overall_edges
            out[str(name)] = group_falloff(d[sel], c[sel], edges, None if tasks_arr is None else tasks_arr[sel],
                                           None if codes is None else codes[sel])
    return out


def expected_accuracy(stats: Mapping[str, FalloffGroup], group: str, distance: float) -> ExpectedAccuracy | None:
    """Accuracy (and intervals: Wilson's, and over tasks where the stats have it) of the bin
    ``distance`` falls in, for one group of falloff stats."""
    entry = stats.get(group) or stats.get("all")
    if not entry or not entry["bins"]:
        return None
    edges = np.array([b["lo"] for b in entry["bins"]] + [entry["bins"][-1]["hi"]])
    b = entry["bins"][int(assign_bins(np.array([distance]), edges)[0])]
    out: ExpectedAccuracy = {"domain": group if group in stats else "all", "accuracy": b["accuracy"], "low": b["low"],
                             "high": b["high"], "n": b["n"], "bin": b["bin"]}
    if "n_tasks" in b:
        out["task_low"], out["task_high"], out["n_tasks"] = b.get("task_low"), b.get("task_high"), b["n_tasks"]
    return out


def expected_words(exp: Mapping[str, Any]) -> str:
    """An expected accuracy with the interval to show (bin_interval) and what it rests on:
    "0.35 [0.11, 0.56] (95 % over 9 tasks, n=86)", or Wilson's with why there is none over tasks."""
    lo, hi, kind = bin_interval(exp)
    head = f"{exp['accuracy']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")
    n, tasks = exp.get("n"), exp.get("n_tasks")
    if kind == "over tasks":
        return f"{head} (95 % over {tasks} tasks, n={n})"
    why = ("no falloff intervals over tasks here: re-run llm-maps falloff" if tasks is None else
           f"{tasks} task{'s' if tasks != 1 else ''}, too few for an interval over tasks")
    return f"{head} (95 % Wilson over {n} examples; {why})"


SLOPE_UNIT = "log-odds of correct per unit of distance"


def format_slope(trend: Mapping[str, Any] | None, *, unit: bool = False) -> str | None:
    """A logistic trend's slope with its 95 % interval, to 3 significant digits whatever the
    distance's scale (euclidean slopes are small: -0.0123, not -0.00); None when not fitted."""
    if not trend or trend.get("slope") is None:
        return None
    if trend.get("slope_low") is None or trend.get("slope_high") is None:
        return f"{trend['slope']:.3g} [no interval]" + (f" {SLOPE_UNIT}" if unit else "")
    text = f"{trend['slope']:.3g} [{trend['slope_low']:.3g}, {trend['slope_high']:.3g}]"
    return text + (f" {SLOPE_UNIT}" if unit else "")


def slope_verdict(trend: Mapping[str, Any] | None) -> str:
    """A plain reading of the slope's 95 % interval."""
    if not trend or trend.get("slope") is None:
        return "not enough variation to fit"
    if trend.get("slope_low") is None or trend.get("slope_high") is None:
        return str(trend.get("note") or "no interval")
    clusters = trend.get("clusters")
    if clusters is not None and clusters < MIN_CLUSTERS_FOR_CLAIM:
        return f"no claim: only {clusters} tasks"
    if trend["slope_high"] < 0:
        return "falls with distance"
    if trend["slope_low"] > 0:
        return "rises with distance"
    return "no clear trend (interval spans 0)"
