"""`llm-maps falloff`: accuracy vs distance to train, per domain, for every stored layer and
both distance metrics; written to RUN/falloff.json and printed as a table."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from llm_maps.conditions import condition_rows
from llm_maps.contract import FALLOFF_FORMAT_VERSION
from llm_maps.errors import LLMMapsError
from llm_maps.falloff import FALLOFF_FILE, SLOPE_UNIT, falloff_stats, format_slope, slope_verdict
from llm_maps.runfolder import EXAMPLES, Run, layer_file, record_stage
from llm_maps.neighbours import nearest_train


def falloff_run(run_dir: str | Path, *, n_bins: int = 5, layers: Sequence[int] | None = None,
                metrics: Sequence[str] = ("cosine", "euclidean"), split: str = "test",
                condition: str | None = None, write: bool = True) -> dict:
    """``condition``: correctness under that condition of conditions.parquet (the examples scored
    under it; the distance stays the example's own); the result is returned, falloff.json (the
    run's direct falloff) is left as it is. ``write=False``: only returned (the Python API's
    ``Run.falloff``), neither falloff.json nor the history is touched."""
    import time

    start = time.perf_counter()
    run = Run(run_dir)
    frame = run.examples
    manifest = run.manifest
    if condition is not None:
        cond_rows, cond_correct = condition_rows(run, condition, split)
    if condition is None and frame["correct"].notna().sum() == 0:
        raise LLMMapsError(f"{run.path / EXAMPLES}, field 'correct': no scored examples (run `llm-maps score` first)")
    if n_bins < 1:
        raise LLMMapsError(f"--bins: must be >= 1, got {n_bins}")
    layers = list(layers) if layers else run.layers
    for k in layers:
        if k not in run.layers:
            raise LLMMapsError(f"--layers: layer {k} is not stored in this run (stored: {run.layers})")
    is_train = (frame["split"] == "train").to_numpy()
    rows = (frame["split"] == split).to_numpy()
    correct = frame["correct"].astype("boolean").to_numpy(dtype=object, na_value=None)[rows]
    if condition is not None:
        rows = np.zeros(len(frame), dtype=bool)
        rows[cond_rows] = True
        correct = np.array(cond_correct, dtype=object)  # cond_rows are sorted, as rows' True entries
    domains = frame["domain"].to_numpy()[rows]
    tasks = frame["task"].astype(str).to_numpy()[rows]  # the trends' intervals are task-clustered
    default_metric = manifest.get("distance_metric", "cosine")
    variants = []
    for k in layers:
        enc = None
        for metric in metrics:
            is_default = k == run.default_layer and metric == default_metric
            if is_default:
                dist = frame["dist_to_train"].to_numpy(dtype=float)
            else:
                enc = run.encodings(k) if enc is None else enc
                dist, _, _ = nearest_train(enc, is_train, k=1, metric=metric)
            variants.append({"layer": int(k), "metric": metric, "default": bool(is_default),
                             "stats": falloff_stats(dist[rows], correct, domains, n_bins=n_bins, tasks=tasks)})
    out = {"format_version": FALLOFF_FORMAT_VERSION, "split": split, "n_bins": n_bins, "binning": "equal-count",
           "correct_threshold": (manifest.get("scoring") or {}).get("thresholds"),
           "default_layer": run.default_layer, "default_metric": default_metric, "variants": variants,
           "seconds": round(time.perf_counter() - start, 2)}
    if condition is not None:
        return {**out, "condition": condition}
    if not write:
        return out
    record_stage(run.path, "falloff", {"n_bins": n_bins, "layers": [int(k) for k in layers], "metrics": list(metrics),
                                       "split": split},
                 outputs={FALLOFF_FILE: out}, inputs=[EXAMPLES, *(str(layer_file("", k)) for k in layers)],
                 sources={"examples": f"{EXAMPLES}:split,domain,correct,dist_to_train"})
    return out


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def _over(st: dict) -> str:
    """An accuracy's interval over tasks, when it has one, and a separator."""
    if st.get("task_low") is None or st.get("task_high") is None:
        return ""
    return f"[{_fmt(st['task_low'])}, {_fmt(st['task_high'])}] over tasks, "


def format_falloff(result: dict, *, all_variants: bool = True) -> str:
    """The default variant as a table per domain, then the trend slope of every variant."""
    lines = []
    default = next((v for v in result["variants"] if v["default"]), result["variants"][0])
    lines.append(f"accuracy vs distance to train ({result['split']}"
                 + (f", condition {result['condition']}" if result.get("condition") else "")
                 + f", layer {default['layer']}, "
                 f"{default['metric']}, {result['n_bins']} equal-count bins; accuracies with 95% intervals over "
                 "tasks (a task bootstrap) and Wilson's over examples; slopes with task-clustered ones)")
    for group, st in default["stats"].items():
        lines.append("")
        tasks = st.get("n_tasks", (st.get("trend") or {}).get("clusters"))
        lines.append(f"{group}: accuracy {_fmt(st['accuracy'])} {_over(st)}[{_fmt(st['low'])}, {_fmt(st['high'])}] "
                     f"Wilson, n={st['n']}" + (f" in {tasks} tasks" if tasks is not None else ""))
        lines.append(f"  {'distance':>23}  {'n':>5}  {'acc':>6}  {'over tasks':<15} Wilson")
        for b in st["bins"]:
            over = (f"[{_fmt(b['task_low'])}, {_fmt(b['task_high'])}]" if b.get("task_low") is not None
                    and b.get("task_high") is not None else "-")
            lines.append(f"  {b['lo']:>10.4f} – {b['hi']:<10.4f}  {b['n']:>5}  {_fmt(b['accuracy']):>6}  "
                         f"{over:<15} [{_fmt(b['low'])}, {_fmt(b['high'])}]")
        t = st["trend"]
        if t.get("slope") is not None:
            lines.append(f"  logistic slope {format_slope(t)} {SLOPE_UNIT} (95% interval; {slope_verdict(t)}; "
                         "pooled: between and within tasks, which `llm-maps findings` separates)")
    if all_variants and len(result["variants"]) > 1:
        groups = [g for g in default["stats"] if g != "all"]
        lines.append("")
        lines.append(f"logistic slope [95% interval] per layer and metric ({SLOPE_UNIT}; "
                     "cosine and euclidean distances have different scales):")
        width = max([26] + [len(g) for g in groups])
        lines.append(f"  {'layer':>5}  {'metric':<9}  " + "  ".join(f"{g:>{width}}" for g in ["all"] + groups))
        for v in result["variants"]:
            cells = [format_slope(v["stats"].get(g, {}).get("trend")) or "-" for g in ["all"] + groups]
            lines.append(f"  {v['layer']:>5}  {v['metric']:<9}  " + "  ".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)
