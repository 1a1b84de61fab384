"""What `llm-maps info` adds about results: accuracy per domain and the falloff per domain.

Torch-free; reads a run's examples and (when present) its falloff.json, else computes the falloff
of the stored ``dist_to_train`` with ``llm_maps.falloff`` (the same code `llm-maps falloff` uses).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from .findings import read_findings
from .falloff import bin_interval
from .resample import MIN_TASKS_FOR_INTERVAL, task_mean_interval

if TYPE_CHECKING:
    import pandas as pd

from .falloff import (FALLOFF_FILE, SLOPE_UNIT, clustered_trends, falloff_stats, format_slope, slope_verdict,
                      wilson_interval)


def _split_scored(frame: pd.DataFrame) -> tuple[str, np.ndarray]:
    """(split name, rows) of the scored examples to report: the test split when it has scores."""
    scored = frame["correct"].notna().to_numpy()
    test = scored & (frame["split"] == "test").to_numpy()
    return ("test", test) if test.any() else ("scored", scored)


ACCURACY_BOOT = 2000  # task-bootstrap replicates of `info`'s accuracy intervals (seed 0)


def accuracy_lines(frame: pd.DataFrame) -> list[str]:
    """Accuracy overall and per domain, each with its task-clustered 95 % interval (tasks resampled:
    examples within a task are not independent) and its Wilson interval over examples, examples
    and tasks."""
    name, rows = _split_scored(frame)
    if not rows.any():
        return []
    sub = frame.loc[rows]
    correct = sub["correct"].astype(bool).to_numpy()
    codes = np.unique(sub["task"].astype(str).to_numpy(), return_inverse=True)[1]

    def line(label: str, sel: np.ndarray) -> str:
        k, n = int(correct[sel].sum()), int(sel.sum())
        lo, hi = wilson_interval(k, n)
        _, tlo, thi, tasks = task_mean_interval(correct[sel], codes[sel], n_boot=ACCURACY_BOOT,
                                                rng=np.random.default_rng(0), bounds=(0.0, 1.0), proportion=True)
        clustered = (f"[{tlo:.3f}, {thi:.3f}] over tasks" if tlo is not None and thi is not None
                     else f"(no interval over tasks: {tasks} task{'s' if tasks != 1 else ''}, fewer than "
                          f"{MIN_TASKS_FOR_INTERVAL})")
        return (f"{label} {k / n:.3f} {clustered}, [{lo:.3f}, {hi:.3f}] Wilson over examples; "
                f"{n} {name} examples in {tasks} task{'s' if tasks != 1 else ''}")

    out = [line("accuracy  ", np.ones(len(sub), dtype=bool))]
    domains = sub["domain"].astype(str).to_numpy()
    width = max(len(d) for d in domains)
    out += [line(f"  {d:<{width}}", domains == d) for d in sorted(set(domains))]
    return out


def findings_lines(run_dir: str | Path) -> list[str]:
    """The findings verdict first (findings.json): the directional claim with its numbers, and for
    the pooled, within-task and between-task contrasts whether it is supported, not supported or
    reversed; nothing when there are no findings yet."""

    result, error = read_findings(run_dir)
    if result is None:
        return [f"findings   {error}"] if error else []
    con = result["contrast"]
    out = [f"findings   {result['verdict']}"]
    detail = result.get("verdict_detail")
    if detail:
        out.append(f"           hypothesis: {con['a']} falls off more steeply than {con['b']}; "
                   + ", ".join(f"{part}: {detail[part]}" for part in ("pooled", "within", "between") if part in detail)
                   + f" (layer {result['layer']}, {result['metric']}, {result['n_tasks']} tasks)")
    return out


def falloff_lines(run_dir: str | Path, frame: pd.DataFrame, manifest: Mapping[str, Any]) -> list[str]:
    """The falloff per domain: logistic slope with its interval and verdict, and the accuracy of
    the nearest and the farthest distance bin (from falloff.json's default variant, else computed)."""
    path = Path(run_dir) / FALLOFF_FILE
    stats, source, n_bins = None, "computed now from dist_to_train", 5
    layer, metric = manifest.get("default_layer"), manifest.get("distance_metric", "cosine")
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            variant = next(v for v in data["variants"] if v.get("default"))
            stats, source, n_bins = variant["stats"], FALLOFF_FILE, data.get("n_bins", n_bins)
            layer, metric = variant["layer"], variant["metric"]
            if not clustered_trends(stats):
                stats = None  # written before trends were task-clustered: recomputed below, clustered
        except (OSError, ValueError, KeyError, StopIteration):
            stats = None
    if stats is None:
        source = "computed now from dist_to_train"
        name, rows = _split_scored(frame)
        if not rows.any():
            return []
        stats = falloff_stats(frame["dist_to_train"].to_numpy(dtype=float)[rows],
                              frame["correct"].to_numpy(dtype=object)[rows], frame["domain"].to_numpy()[rows],
                              n_bins=n_bins, tasks=frame["task"].astype(str).to_numpy()[rows])
    out = [f"falloff    layer {layer}, {metric} distance, {n_bins} equal-count bins ({source}); "
           f"slope in {SLOPE_UNIT} [95% interval, task-clustered], pooled between and within tasks "
           "(`llm-maps findings` separates them); bin accuracies with 95% intervals"]
    width = max(len(g) for g in stats)
    for group, st in stats.items():
        bins = [b for b in st["bins"] if b["n"]]
        ends = (f"; accuracy {_acc(bins[0])} in the nearest bin (n={bins[0]['n']}), "
                f"{_acc(bins[-1])} in the farthest (n={bins[-1]['n']})") if len(bins) > 1 else ""
        out.append(f"  {group:<{width}} {format_slope(st['trend']) or '-'}: {slope_verdict(st['trend'])}{ends}")
    return out


def _acc(b: Mapping[str, Any]) -> str:
    """A bin's accuracy with its interval, when it has one (falloff.bin_interval: over tasks where the
    statistics have it, else Wilson's over examples), said which."""
    lo, hi, kind = bin_interval(b)
    if lo is None or hi is None:
        return f"{b['accuracy']:.2f}"
    return f"{b['accuracy']:.2f} [{lo:.2f}, {hi:.2f}] " + ("over tasks" if kind == "over tasks" else "Wilson")
