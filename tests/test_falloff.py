"""Falloff statistics on small hand-checkable inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm_maps.falloff import (bin_interval, equal_count_edges, expected_accuracy, falloff_stats, logistic_trend,
                              wilson_interval)


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901624, abs=1e-6) and high == pytest.approx(0.9433178, abs=1e-6)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    for k, n in ((0, 3), (3, 3), (1, 7), (0, 1000)):
        low, high = wilson_interval(k, n)
        assert low <= k / n <= high
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_equal_count_bins_and_accuracy_per_bin():
    d = np.arange(12, dtype=float)  # 0..11
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    edges = equal_count_edges(d, 3)
    np.testing.assert_allclose(edges, [0, 11 / 3, 22 / 3, 11])
    stats = falloff_stats(d, correct, n_bins=3)["all"]
    assert [b["n"] for b in stats["bins"]] == [4, 4, 4]
    assert [b["correct"] for b in stats["bins"]] == [4, 3, 1]
    assert [b["accuracy"] for b in stats["bins"]] == [1.0, 0.75, 0.25]
    assert stats["n"] == 12 and stats["correct"] == 8
    assert stats["trend"]["slope"] < 0 and stats["trend"]["slope_high"] > stats["trend"]["slope"]


def test_groups_nulls_and_expected_accuracy():
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4, np.nan, 0.5])
    c = [True, True, False, False, True, True, True, True, True, None]
    g = ["A", "A", "A", "A", "B", "B", "B", "B", "B", "B"]
    stats = falloff_stats(d, c, g, n_bins=2)
    assert stats["all"]["n"] == 8  # NaN distance and null correct are left out, never counted as wrong
    assert stats["A"]["accuracy"] == 0.5 and stats["B"]["accuracy"] == 1.0
    assert [b["accuracy"] for b in stats["A"]["bins"]] == [1.0, 0.0]
    exp = expected_accuracy(stats, "A", 0.35)
    assert exp["accuracy"] == 0.0 and exp["n"] == 2 and exp["domain"] == "A"
    assert expected_accuracy(stats, "A", 0.05)["accuracy"] == 1.0  # below the first edge -> first bin
    assert expected_accuracy(stats, "zzz", 0.35)["domain"] == "all"


def test_logistic_trend_recovers_slope():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 4000)
    p = 1 / (1 + np.exp(-(2.0 - 4.0 * x)))
    y = rng.random(4000) < p
    t = logistic_trend(x, y)
    assert t["slope_low"] < -4.0 < t["slope_high"]
    assert t["intercept"] == pytest.approx(2.0, abs=0.3)
    assert logistic_trend(x, np.ones_like(x))["slope"] is None


def test_the_trend_is_task_clustered_as_statsmodels_clusters_it():
    """With each row's task, the slope's standard error is the cluster-robust one statsmodels
    computes (its default small-sample correction), wider than the model-based one when tasks
    differ; with fewer than 5 tasks the trend makes no claim."""
    import statsmodels.api as sm

    from llm_maps.falloff import falloff_stats, logistic_trend, slope_verdict

    rng = np.random.default_rng(0)
    n, g = 600, rng.integers(0, 15, 600)
    x = rng.random(n) + 0.3 * rng.normal(size=15)[g]
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.5 - 1.5 * x + rng.normal(0, 1.2, 15)[g])))).astype(float)
    t = logistic_trend(x, y, clusters=g)
    ref = sm.Logit(y, sm.add_constant(x)).fit(disp=0, cov_type="cluster", cov_kwds={"groups": g})
    assert t["slope"] == pytest.approx(ref.params[1], rel=1e-6)
    assert t["slope_se"] == pytest.approx(ref.bse[1], rel=1e-6)
    assert (t["clusters"], t["se_type"]) == (15, "task-clustered (sandwich)")
    from scipy.stats import t as student  # the interval: Student's t with (tasks - 1) degrees of freedom

    assert t["slope_high"] - t["slope"] == pytest.approx(student.ppf(0.975, 14) * ref.bse[1], rel=1e-6)
    plain = logistic_trend(x, y)
    assert plain["se_type"] == "model-based (examples independent)" and plain["slope_se"] < t["slope_se"]
    stats = falloff_stats(x, y.astype(bool).tolist(), ["A"] * n, n_bins=3, tasks=[f"t{v}" for v in g])
    assert stats["A"]["trend"]["slope_se"] == pytest.approx(ref.bse[1], rel=1e-6)
    few = logistic_trend(x[g < 4], y[g < 4], clusters=g[g < 4])
    assert few["clusters"] == 4 and slope_verdict(few) == "no claim: only 4 tasks"
    one = logistic_trend(x[g == 0], y[g == 0], clusters=g[g == 0])
    assert one["slope_low"] is None and slope_verdict(one) == "one task only: no task-clustered interval"


def test_with_tasks_every_accuracy_gets_an_interval_over_tasks_and_the_figure_draws_it():
    """Each bin's and each group's accuracy: a task bootstrap (recomputed here on the same draws:
    seed 0 for the group, bin + 1 for a bin), spread by sqrt(G/(G-1)); the Falloff figure's error
    bars and hover use it, and stats without it (an older falloff.json) keep Wilson's, said so."""
    from dashboard.figures import bin_interval, bins_error_y
    from llm_maps.resample import small_cluster, task_resample_counts

    rng = np.random.default_rng(5)
    task = np.repeat([f"t{i:02d}" for i in range(10)], 40)
    skill = np.repeat(np.linspace(0.2, 0.9, 10), 40)
    dist = rng.random(400)
    correct = rng.random(400) < skill - 0.3 * dist
    stats = falloff_stats(dist, correct.tolist(), ["A"] * 400, n_bins=4, tasks=task)
    st = stats["A"]
    edges = equal_count_edges(dist, 4)
    idx = np.clip(np.searchsorted(edges, dist, side="right") - 1, 0, 3)

    def over_tasks(sel, seed):
        names = sorted(set(task[sel]))
        k = np.array([correct[sel & (task == t)].sum() for t in names], dtype=float)
        n = np.array([(sel & (task == t)).sum() for t in names], dtype=float)
        counts = task_resample_counts(n_tasks=len(names), n_boot=2000, rng=np.random.default_rng(seed))
        reps = (counts @ k) / (counts @ n)
        return tuple(np.clip(np.percentile(small_cluster(k.sum() / n.sum(), reps, len(names)), [2.5, 97.5]), 0, 1))

    assert (st["task_low"], st["task_high"]) == pytest.approx(over_tasks(np.ones(400, dtype=bool), 0))
    assert st["n_tasks"] == 10
    for b in st["bins"]:
        sel = idx == b["bin"]
        assert b["n"] == int(sel.sum())
        assert (b["task_low"], b["task_high"]) == pytest.approx(over_tasks(sel, b["bin"] + 1))
    bars = bins_error_y(st["bins"], "#000")
    assert bars["array"] == pytest.approx([b["task_high"] - b["accuracy"] for b in st["bins"]])
    assert bin_interval(st["bins"][0])[2] == "over tasks"
    old = {k: v for k, v in st["bins"][0].items() if k not in ("task_low", "task_high", "n_tasks")}
    assert bin_interval(old) == (old["low"], old["high"], "Wilson, over examples")
    # without tasks: Wilson's only, as before
    assert "task_low" not in falloff_stats(dist, correct.tolist(), n_bins=4)["all"]["bins"][0]


def test_the_error_bars_are_named_for_what_they_are_when_some_bins_hold_one_task():
    from dashboard.figures import interval_words

    rng = np.random.default_rng(1)
    dist = rng.random(300)
    correct = (rng.random(300) < 0.6).tolist()
    domain = ["A"] * 100 + ["B"] * 200
    task = ["a0"] * 100 + [f"b{i}" for i in rng.integers(0, 5, 200)]  # A: one task; B: five
    stats = falloff_stats(dist, correct, domain, n_bins=3, tasks=task)
    assert all(b.get("task_low") is None for b in stats["A"]["bins"])
    assert interval_words({"B": stats["B"]}).startswith("95 % intervals over tasks (a task bootstrap:")
    assert interval_words({"A": stats["A"]}) == "Wilson 95 % intervals (examples as independent)"
    assert interval_words(stats) == ("95 % intervals over tasks (a task bootstrap), Wilson's over examples where a "
                                     "bin holds fewer than 5 tasks (the hover and the table say which)")


def test_an_expected_accuracy_carries_its_bins_intervals_and_says_which_it_shows():
    """falloff.expected_accuracy: the bin's Wilson interval and, where the stats have them, its
    interval over tasks and tasks; expected_words shows the one bin_interval picks, and why not the
    other."""
    from llm_maps.falloff import expected_words

    rng = np.random.default_rng(2)
    task = np.repeat([f"t{i}" for i in range(8)], 30)
    dist = rng.random(240)
    stats = falloff_stats(dist, (rng.random(240) < 0.6).tolist(), ["A"] * 240, n_bins=2, tasks=task)
    b = stats["A"]["bins"][1]
    exp = expected_accuracy(stats, "A", 0.99)
    assert exp == {"domain": "A", "accuracy": b["accuracy"], "low": b["low"], "high": b["high"], "n": b["n"], "bin": 1,
                   "task_low": b["task_low"], "task_high": b["task_high"], "n_tasks": 8}
    assert expected_words(exp) == (f"{b['accuracy']:.2f} [{b['task_low']:.2f}, {b['task_high']:.2f}] "
                                   f"(95 % over 8 tasks, n={b['n']})")
    four = {**exp, "task_low": None, "task_high": None, "n_tasks": 4}
    assert expected_words(four) == (f"{b['accuracy']:.2f} [{b['low']:.2f}, {b['high']:.2f}] (95 % Wilson over "
                                    f"{b['n']} examples; 4 tasks, too few for an interval over tasks)")
    old = {k: v for k, v in exp.items() if k not in ("task_low", "task_high", "n_tasks")}  # an older falloff.json
    assert expected_words(old).endswith("examples; no falloff intervals over tasks here: re-run llm-maps falloff)")
    assert set(expected_accuracy(falloff_stats(dist, [True] * 240, n_bins=2), "A", 0.5)) == \
        {"domain", "accuracy", "low", "high", "n", "bin"}


def test_an_interval_over_tasks_needs_five_tasks_and_an_accuracys_is_never_narrower_than_wilsons():
    """Resampling 2-4 tasks gives 3-35 distinct replicates: no interval over tasks below 5 tasks (the
    figures then show Wilson's, named). When every task scores 0 the task bootstrap collapses to
    [0, 0]; an accuracy's interval is then Wilson's (statsmodels). A difference is not widened."""
    from statsmodels.stats.proportion import proportion_confint

    from llm_maps.resample import MIN_TASKS_FOR_INTERVAL, task_mean_interval

    assert MIN_TASKS_FOR_INTERVAL == 5
    task = np.repeat(np.arange(6), 10)
    zeros = np.zeros(60)
    raw = task_mean_interval(zeros, task, n_boot=500, rng=np.random.default_rng(0), bounds=(0.0, 1.0))
    assert raw == (0.0, 0.0, 0.0, 6)  # the task bootstrap alone: a point
    got = task_mean_interval(zeros, task, n_boot=500, rng=np.random.default_rng(0), bounds=(0.0, 1.0), proportion=True)
    assert got[:3] == pytest.approx((0.0, *proportion_confint(0, 60, alpha=0.05, method="wilson"))) and got[2] > 0.05
    four = task_mean_interval(np.ones(40), np.repeat(np.arange(4), 10), n_boot=500, rng=np.random.default_rng(0),
                              bounds=(0.0, 1.0), proportion=True)
    assert four == (1.0, None, None, 4)
    # a difference of two accuracies is not widened: the task bootstrap alone, recomputed here
    from llm_maps.resample import small_cluster, task_resample_counts

    diff = np.zeros(60)
    diff[::7] = 1.0  # tasks of unlike means, every one known to the bootstrap
    est, lo, hi, g = task_mean_interval(diff, task, n_boot=500, rng=np.random.default_rng(0), bounds=(-1.0, 1.0))
    counts = task_resample_counts(n_tasks=6, n_boot=500, rng=np.random.default_rng(0))
    sums = np.bincount(task, weights=diff)
    reps = (counts @ sums) / (counts @ np.full(6, 10.0))
    want = np.clip(np.percentile(small_cluster(diff.mean(), reps, 6), [2.5, 97.5]), -1, 1)
    assert (est, g) == (pytest.approx(diff.mean()), 6) and (lo, hi) == pytest.approx(tuple(want))
    assert hi - lo < np.subtract(*proportion_confint(int(diff.sum()), 60, alpha=0.05, method="wilson")[::-1])
    # a falloff bin of 4 tasks: Wilson's, named so
    rng = np.random.default_rng(3)
    stats = falloff_stats(rng.random(80), (rng.random(80) < 0.5).tolist(), n_bins=2,
                          tasks=np.repeat(["a", "b", "c", "d"], 20))
    b = stats["all"]["bins"][0]
    assert b["task_low"] is None and b["n_tasks"] == 4
    assert bin_interval(b) == (b["low"], b["high"], "Wilson, over examples")
