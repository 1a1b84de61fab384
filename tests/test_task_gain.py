"""Train tasks vs held-out tasks across runs (llm_maps.comparison.task_gain): the numbers against a
direct computation on the same rows, the intervals against a replicate-by-replicate bootstrap, and
simulated data with a known answer (verdicts, coverage)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard.synthetic import write_synthetic_run
from llm_maps import comparison as CMP
from llm_maps.runfolder import EXAMPLES, Run


def _runs(tmp_path, n_held: int):
    """Two synthetic runs over the same 240 examples; the first ``n_held`` tasks have no train rows
    (their train rows moved to test in both runs); run b: every train-task test example of the
    first three train tasks correct, the held-out tasks as in run a with one example flipped."""
    paths = [write_synthetic_run(tmp_path / name, 240, layers=(1,), seed=5) for name in ("base", "tuned")]
    frame = pd.read_parquet(paths[0] / EXAMPLES)
    held_out = sorted(frame["task"].unique())[:n_held]
    frame.loc[frame["task"].isin(held_out), "split"] = "test"
    frame.loc[frame["split"] == "train", "correct"] = None
    tuned = frame.copy()
    train_tasks = sorted(set(frame["task"]) - set(held_out))
    tuned.loc[(tuned["split"] == "test") & tuned["task"].isin(train_tasks[:3]), "correct"] = True
    flip = tuned.index[(tuned["split"] == "test") & (tuned["task"] == held_out[0])][0]
    tuned.loc[flip, "correct"] = not bool(frame.loc[flip, "correct"])
    tuned.loc[tuned.index[(tuned["split"] == "test") & (tuned["task"] == train_tasks[4])][0], "correct"] = None
    frame.to_parquet(paths[0] / EXAMPLES)
    tuned.to_parquet(paths[1] / EXAMPLES)
    return paths, frame, tuned, held_out


def _bootstrap_by_hand(rows: pd.DataFrame, counts: np.ndarray) -> np.ndarray:
    """Each replicate built as it is defined: every drawn task's examples, as often as it was drawn,
    pooled; the statistic is their mean of ``value``."""
    tasks = sorted(rows["task"].unique())
    by_task = [rows.loc[rows["task"] == t, "value"].to_numpy(dtype=float) for t in tasks]
    out = []
    for w in counts:
        pooled = np.concatenate([np.tile(v, int(c)) for v, c in zip(by_task, w)])
        out.append(pooled.mean())
    return np.array(out)


def test_accuracy_change_and_intervals_match_a_direct_computation(tmp_path):
    from llm_maps.findings import task_resample_counts

    (a, b), frame, tuned, held_out = _runs(tmp_path, 5)
    all_tasks = sorted(frame["task"].unique())
    res = CMP.task_gain(CMP.match_runs([Run(a), Run(b)]), [0.0, 96.0], n_boot=400, seed=3)
    both = (frame["split"] == "test") & frame["correct"].notna() & tuned["correct"].notna()
    rng = np.random.default_rng(3)
    reps = {}
    for cls, tasks in ((CMP.TRAIN_TASKS, sorted(set(all_tasks) - set(held_out))), (CMP.HELD_OUT, held_out)):
        e = res["classes"][cls]
        sel = both & frame["task"].isin(tasks)
        assert e["tasks"] == sorted(frame.loc[sel, "task"].unique()) and e["n_examples"] == int(sel.sum())
        before = frame.loc[sel, "correct"].astype(float)
        after = tuned.loc[sel, "correct"].astype(float)
        assert e["runs"][0]["value"] == pytest.approx(before.mean())
        assert e["runs"][1]["value"] == pytest.approx(after.mean())
        assert e["change"]["value"] == pytest.approx(after.mean() - before.mean())
        # the intervals: the same task draws, each replicate built example by example
        counts = task_resample_counts(n_tasks=len(e["tasks"]), n_boot=400, rng=rng)
        rows = pd.DataFrame({"task": frame.loc[sel, "task"], "value": after - before})
        reps[cls] = _bootstrap_by_hand(rows, counts)
        assert (e["change"]["low"], e["change"]["high"]) == pytest.approx(tuple(np.percentile(reps[cls], [2.5, 97.5])))
        acc = _bootstrap_by_hand(pd.DataFrame({"task": frame.loc[sel, "task"], "value": before}), counts)
        assert (e["runs"][0]["low"], e["runs"][0]["high"]) == pytest.approx(tuple(np.percentile(acc, [2.5, 97.5])))
    diff = res["difference"]
    assert diff["value"] == pytest.approx(res["classes"][CMP.TRAIN_TASKS]["change"]["value"]
                                          - res["classes"][CMP.HELD_OUT]["change"]["value"])
    assert (diff["low"], diff["high"]) == pytest.approx(
        tuple(np.percentile(reps[CMP.TRAIN_TASKS] - reps[CMP.HELD_OUT], [2.5, 97.5])))
    # the steps order the runs, not the order given
    rev = CMP.task_gain(CMP.match_runs([Run(b), Run(a)]), [96.0, 0.0], n_boot=400, seed=3)
    assert rev["first"] == "base" and rev["last"] == "tuned"
    assert rev["classes"][CMP.HELD_OUT]["change"]["value"] == pytest.approx(
        res["classes"][CMP.HELD_OUT]["change"]["value"])
    # compare_runs carries it and prints the table with the verdicts
    out = CMP.compare_runs([Run(a), Run(b)], cka="skip")
    assert out["task_gain"]["classes"][CMP.HELD_OUT]["n_tasks"] == 5
    text = CMP.format_compare(out)
    assert "accuracy, train tasks vs held-out tasks" in text and out["task_gain"]["verdict"] in text


def _simulate(rng, *, n_train_tasks: int, n_held: int, gain_train: float, gain_held: float, per_task: int = 20):
    tasks = [f"t{i}" for i in range(n_train_tasks)] + [f"h{i}" for i in range(n_held)]
    p = rng.uniform(0.2, 0.6, len(tasks))
    gain = np.array([gain_train] * n_train_tasks + [gain_held] * n_held)
    task = np.repeat(tasks, per_task)
    before = (rng.random(len(task)) < np.repeat(p, per_task)).astype(float)
    after = (rng.random(len(task)) < np.repeat(p + gain, per_task)).astype(float)
    train_task = np.array([t.startswith("t") for t in task])
    return np.stack([before, after]), task, train_task


def test_simulated_gains_give_the_known_verdicts():
    rng = np.random.default_rng(0)
    correct, task, train_task = _simulate(rng, n_train_tasks=30, n_held=12, gain_train=0.25, gain_held=0.0)
    res = CMP.task_gain_arrays(correct, task, train_task, [0, 100], names=["step-0", "step-100"])
    train, held = res["classes"][CMP.TRAIN_TASKS], res["classes"][CMP.HELD_OUT]
    assert train["change"]["low"] < 0.25 < train["change"]["high"] and train["verdict"].endswith("; rises")
    assert held["change"]["low"] < 0 < held["change"]["high"] and held["verdict"].endswith(
        "not supported: the interval includes 0")
    assert res["difference"]["low"] > 0 and res["verdict"].endswith("supported: the train tasks gained more")
    assert "(30 vs 12 tasks)" in res["verdict"] and "percentage points" in res["verdict"]
    # no difference: not supported
    correct, task, train_task = _simulate(rng, n_train_tasks=30, n_held=12, gain_train=0.2, gain_held=0.2)
    res = CMP.task_gain_arrays(correct, task, train_task, [0, 100], names=["a", "b"])
    assert res["verdict"].endswith("not supported: the interval includes 0")
    # too few held-out tasks: not supported whatever the interval says
    correct, task, train_task = _simulate(rng, n_train_tasks=30, n_held=3, gain_train=0.4, gain_held=0.0,
                                          per_task=200)
    res = CMP.task_gain_arrays(correct, task, train_task, [0, 100], names=["a", "b"])
    assert res["verdict"].endswith("not supported: fewer than 5 tasks in a class")
    assert res["classes"][CMP.HELD_OUT]["verdict"].endswith("not supported: fewer than 5 tasks")
    # no held-out tasks at all
    res = CMP.task_gain_arrays(correct[:, train_task], task[train_task], train_task[train_task], [0, 1], names=["a", "b"])
    assert res["difference"] is None and "not supported" in res["verdict"]


def test_the_difference_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Tasks differ in accuracy (the clustering the task bootstrap is for); 300 simulated data sets
    with a true difference of 0.15."""
    rng = np.random.default_rng(1)
    hits = 0
    n_sim = 300
    for _ in range(n_sim):
        correct, task, train_task = _simulate(rng, n_train_tasks=25, n_held=15, gain_train=0.2, gain_held=0.05)
        res = CMP.task_gain_arrays(correct, task, train_task, [0, 1], names=["a", "b"], n_boot=500,
                                   seed=int(rng.integers(1 << 30)))
        hits += res["difference"]["low"] <= 0.15 <= res["difference"]["high"]
    assert 0.90 <= hits / n_sim <= 0.99
