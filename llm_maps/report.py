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

if TYPE_CHECKING:
    import pandas as pd

from .falloff import (FALLOFF_FILE, SLOPE_UNIT, clustered_trends, falloff_stats, format_slope, slope_verdict,
                      wilson_interval)


def _split_scored(frame: pd.DataFrame) -> tuple[str, np.ndarray]:
    """(split name, rows) of the scored examples to report: the test split when it has scores."""
    scored = frame["correct"].notna().to_numpy()
    test = scored & (frame["split"] == "test").to_numpy()
    return ("test", test) if test.any() else ("scored", scored)


def accuracy_lines(frame: pd.DataFrame) -> list[str]:
    """Accuracy overall and per domain, each with its Wilson 95 % interval, examples and tasks."""
    name, rows = _split_scored(frame)
    if not rows.any():
        return []
    sub = frame.loc[rows]
    correct = sub["correct"].astype(bool).to_numpy()

    def line(label: str, sel: np.ndarray) -> str:
        k, n = int(correct[sel].sum()), int(sel.sum())
        lo, hi = wilson_interval(k, n)
        return (f"{label} {k / n:.3f} [{lo:.3f}, {hi:.3f}] on {n} {name} examples, "
                f"{sub.loc[sel, 'task'].nunique()} tasks")

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
           f"slope in {SLOPE_UNIT} [95% interval, task-clustered]"]
    width = max(len(g) for g in stats)
    for group, st in stats.items():
        bins = [b for b in st["bins"] if b["n"]]
        ends = (f"; accuracy {bins[0]['accuracy']:.2f} in the nearest bin (n={bins[0]['n']}), "
                f"{bins[-1]['accuracy']:.2f} in the farthest (n={bins[-1]['n']})") if len(bins) > 1 else ""
        out.append(f"  {group:<{width}} {format_slope(st['trend']) or '-'}: {slope_verdict(st['trend'])}{ends}")
    return out
