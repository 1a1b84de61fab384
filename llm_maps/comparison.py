"""Compare runs over the same examples: scaling / trajectory curves, aligned maps, movers, CKA, probes.

Pure and torch-free (numpy, pandas, scipy, scikit-learn), shared by `llm-maps compare`,
`llm-maps probe` and the dashboard's Compare page.

Runs compare when they hold the same examples, matched by ``example_id`` and a hash of the prompt
(and the split); a mismatch is one line with the counts of matched, missing and changed rows.
Every array here is in the *group order*: the row order of the first run, each other run's rows
permuted to it.

Encodings are never all in memory at once: CKA keeps one layer of one run (centred, float32) and
streams the other through its memory map in row chunks, accumulating the cross-covariance
``Xa^T Xb`` (hidden_a x hidden_b) in float64; probes load one layer of one run at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import LLMMapsError
from .falloff import falloff_stats, wilson_interval
from .runfolder import ENCODINGS, EXAMPLES, FINETUNE_FILE, Run, check_writable, model_label, record_stage, write_json_atomic
from .resample import interval_95 as _interval, small_cluster, task_mean_interval, task_resample_counts
from .neighbours import nearest_train

COMPARE_VERSION = 1
ONLINE_CKA_LIMIT = 2e10  # multiply-adds of CKA done on request ("auto": about a second or two of BLAS)
PROBES_FILE = "probes.json"
CKA_FILE = "cka.json"
CHANGE = 0.10  # accuracy change (fraction) below which a task's curve counts as flat
EMERGENT_SHARE = 2 / 3  # share of the rise in one step that makes a rising curve "emergent"
CLASSES = ("flat", "smooth", "emergent", "inverse", "unclear")
CLASS_RULE = ("Each task's curve runs from the smallest (or earliest) run to the largest (or latest). "
              f"flat: the last run's accuracy is within {CHANGE:.2f} of the first's; inverse: it is lower by "
              f"{CHANGE:.2f} or more; smooth: it is higher by {CHANGE:.2f} or more and no single step between "
              f"consecutive runs carries {EMERGENT_SHARE:.0%} of the rise; emergent: higher by {CHANGE:.2f} or more "
              f"and one step carries at least {EMERGENT_SHARE:.0%} of the rise (needs 3 or more runs; with 2 runs a "
              "rise is smooth). A class is given only when the task's change from the first run to the last (on its "
              "test examples scored in both: a 95 % percentile bootstrap over them, paired) lies wholly on the "
              f"class's side: within ±{CHANGE:.2f} for flat, at most -{CHANGE:.2f} for inverse, at least "
              f"+{CHANGE:.2f} for smooth and emergent; otherwise unclear (measured_class keeps the curve's own).")
PROBE_TARGETS = ("domain", "task", "correct")


# --------------------------------------------------------------------------- matching

def prompt_hash(text: object) -> str:
    """sha256 of the prompt's UTF-8 text, first 16 hex digits."""
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()[:16]


@dataclass
class RunGroup:
    """Runs over the same examples; ``orders[r]`` = run r's rows in the group order (run 0's rows)."""
    runs: list[Run]
    orders: list[np.ndarray]  # [R] of [N] int64

    @property
    def n(self) -> int:
        return len(self.orders[0])

    @property
    def frame(self) -> Any:
        """The first run's examples (the group order)."""
        return self.runs[0].examples

    def column(self, r: int, name: str) -> np.ndarray:
        """One column of run r in the group order."""
        out: np.ndarray = self.runs[r].examples[name].to_numpy()[self.orders[r]]
        return out

    @property
    def names(self) -> list[str]:
        return unique_names(self.runs)


def unique_names(runs: Sequence[Run]) -> list[str]:
    """Run folder names, made unique with their parent folder (then a number) where they clash."""
    names = [r.name for r in runs]
    out = []
    for i, r in enumerate(runs):
        name = names[i]
        if names.count(name) > 1:
            name = f"{r.path.parent.name}/{name}"
        while name in out:
            name = f"{name}-{i + 1}"
        out.append(name)
    return out


def match_runs(runs: Sequence[Run]) -> RunGroup:
    """Check that every run holds the same examples as the first; the rows of each in that order.

    Raises LLMMapsError (one line: matched / missing / changed counts and the first culprit) when a
    run holds other examples, or the same ids with another prompt or split."""
    import pandas as pd

    runs = list(runs)
    if len(runs) < 1:
        raise LLMMapsError("compare: give at least one run")
    ref = runs[0].examples
    ids0 = ref["example_id"].astype(str).to_numpy()
    key0 = np.array([prompt_hash(p) + "|" + str(s) for p, s in zip(ref["prompt"], ref["split"])], dtype=object)
    orders = [np.arange(len(ref), dtype=np.int64)]
    names = unique_names(runs)
    for r, run in enumerate(runs[1:], start=1):
        frame = run.examples
        ids = frame["example_id"].astype(str).to_numpy()
        pos = pd.Index(ids).get_indexer(ids0)  # [N0] row in this run, -1 when absent
        found = pos >= 0
        key = np.array([prompt_hash(p) + "|" + str(s) for p, s in zip(frame["prompt"], frame["split"])], dtype=object)
        same = np.zeros(len(ids0), dtype=bool)
        same[found] = key[pos[found]] == key0[found]
        n_changed = int((found & ~same).sum())
        n_missing = int((~found).sum()) + int(len(ids) - found.sum())
        n_matched = int(same.sum())
        if n_missing or n_changed:
            if n_changed:
                i = int(np.flatnonzero(found & ~same)[0])
                what = "prompt" if key[pos[i]].split("|")[0] != key0[i].split("|")[0] else "split"
                first = f"first: example '{ids0[i]}' has another {what}"
            elif (~found).any():
                first = f"first: example '{ids0[int(np.flatnonzero(~found)[0])]}' is not in '{names[r]}'"
            else:
                extra = np.setdiff1d(ids, ids0)
                first = f"first: example '{extra[0]}' is only in '{names[r]}'"
            raise LLMMapsError(f"runs '{names[0]}' and '{names[r]}' do not hold the same examples (matched by "
                               f"example_id and prompt hash): {n_matched} matched, {n_missing} missing, "
                               f"{n_changed} changed; {first}")
        orders.append(pos.astype(np.int64))
    return RunGroup(runs, orders)


# --------------------------------------------------------------------------- runs and axes

def run_info(run: Run, name: str | None = None) -> dict[str, Any]:
    m = run.manifest
    step = m.get("step")
    n_params = m.get("n_params")
    return {"name": name or run.name, "model": str(m.get("model")), "model_name": model_label(m),
            "n_params": int(n_params) if n_params is not None else None,
            "step": int(step) if step is not None else None, "base_run": m.get("base_run"),
            "path": str(run.path), "layers": run.layers, "default_layer": run.default_layer}


def x_axis(infos: Sequence[dict[str, Any]], prefer: str | None = None) -> tuple[str, list[float]]:
    """What the curves are plotted against: ``step`` when every run has one (a fine-tuning
    trajectory), else ``n_params`` when every run has it (a scaling curve, log scale), else the
    order the runs were given in. ``prefer`` picks one of the available axes."""
    have = {"step": all(i.get("step") is not None for i in infos),
            "n_params": all(i.get("n_params") for i in infos), "order": True}
    kind = prefer if prefer in have and have[prefer] else next(k for k in ("step", "n_params", "order") if have[k])
    if kind == "order":
        return kind, [float(i + 1) for i in range(len(infos))]
    return kind, [float(i[kind]) for i in infos]


def available_axes(infos: Sequence[dict[str, Any]]) -> list[str]:
    out = [k for k in ("step", "n_params") if all(i.get(k) is not None and (k != "n_params" or i.get(k))
                                                 for i in infos)]
    return out + ["order"]


# --------------------------------------------------------------------------- accuracy curves

def _correct_matrix(group: RunGroup) -> np.ndarray:
    """[R, N] float: 1 correct, 0 wrong, NaN unscored (train rows are NaN)."""
    out = np.full((len(group.runs), group.n), np.nan)
    for r in range(len(group.runs)):
        c = group.runs[r].examples["correct"].astype("boolean").to_numpy(dtype=float, na_value=np.nan)
        split = group.runs[r].examples["split"].to_numpy()
        c = np.where(split == "test", c, np.nan)
        out[r] = c[group.orders[r]]
    return out


def classify_curve(x: Sequence[float], accuracy: Sequence[float | None], *, change: float = CHANGE,
                   emergent_share: float = EMERGENT_SHARE) -> str | None:
    """flat / smooth / emergent / inverse (see CLASS_RULE); None when a run has no accuracy."""
    if any(a is None or (isinstance(a, float) and math.isnan(a)) for a in accuracy) or len(accuracy) < 2:
        return None
    a = np.asarray(accuracy, dtype=float)[np.argsort(np.asarray(x, dtype=float), kind="stable")]
    d = a[-1] - a[0]
    eps = 1e-12
    if abs(d) < change - eps:
        return "flat"
    if d < 0:
        return "inverse"
    if len(a) >= 3 and np.max(np.diff(a)) >= emergent_share * d - eps:
        return "emergent"
    return "smooth"


def paired_change(a: np.ndarray, b: np.ndarray, *, n_boot: int, rng: np.random.Generator) -> dict[str, Any]:
    """mean(b - a) over one task's examples scored in both runs (0/1 each), with a 95 % percentile
    bootstrap over those examples (independent within a task); low/high None with fewer than 2."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(d)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    lo = hi = None
    if n >= 2:
        idx = rng.integers(0, n, size=(n_boot, n))
        lo, hi = _interval(d[idx].mean(axis=1))
    return {"value": float(d.mean()), "low": lo, "high": hi, "n": n}


def settled_class(measured: str | None, interval: Mapping[str, Any], *, threshold: float = CHANGE) -> str | None:
    """The measured class where the change's interval (paired_change) lies wholly on its side of the
    boundary (CLASS_RULE), else "unclear"; None stays None."""
    lo, hi = interval.get("low"), interval.get("high")
    if measured is None:
        return None
    if lo is None or hi is None:
        return "unclear"
    eps = 1e-12
    clear = {"flat": -threshold < lo and hi < threshold, "inverse": hi <= -threshold + eps}.get(
        measured, lo >= threshold - eps)
    return measured if clear else "unclear"


def _acc_entry(k: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(k, n)
    return {"accuracy": (k / n) if n else None, "low": low if n else None, "high": high if n else None,
            "n": int(n), "correct": int(k)}


def accuracy_curves(group: RunGroup, x: Sequence[float], *, change: float = CHANGE, n_boot: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """Per task and per domain: accuracy of every run (Wilson 95 % over examples), the task's
    curve class, class counts per domain, and per domain a sign test over tasks between the
    first and the last run on the x axis, and the change of accuracy between them on the examples
    scored in both, with a task-clustered bootstrap 95 % interval (``n_boot`` replicates, ``seed``)."""
    from scipy.stats import binomtest

    correct = _correct_matrix(group)  # [R, N]
    first, last = int(np.argmin(x)), int(np.argmax(x))
    task = group.frame["task"].astype(str).to_numpy()
    domain = group.frame["domain"].astype(str).to_numpy()
    scored_any = np.isfinite(correct).any(axis=0)
    tasks: dict[str, Any] = {}
    for t in sorted(set(task[scored_any].tolist())):
        rows = task == t
        doms = domain[rows]
        values, counts = np.unique(doms, return_counts=True)
        entry: dict[str, Any] = {"domain": str(values[np.argmax(counts)]), "accuracy": [], "low": [], "high": [],
                                 "n": []}
        for r in range(len(group.runs)):
            c = correct[r, rows]
            c = c[np.isfinite(c)]
            e = _acc_entry(int(c.sum()), len(c))
            for key in ("accuracy", "low", "high", "n"):
                entry[key].append(e[key])
        entry["measured_class"] = classify_curve(x, entry["accuracy"], change=change)
        both = rows & np.isfinite(correct[first]) & np.isfinite(correct[last])
        entry["change"] = paired_change(correct[first, both], correct[last, both], n_boot=n_boot,
                                        rng=np.random.default_rng([seed, len(tasks)]))
        entry["class"] = settled_class(entry["measured_class"], entry["change"], threshold=change)
        tasks[t] = entry
    domains: dict[str, Any] = {}
    for d in sorted(set(domain[scored_any].tolist())):
        rows = domain == d
        runs_acc = []
        for r in range(len(group.runs)):
            c = correct[r, rows]
            c = c[np.isfinite(c)]
            runs_acc.append(_acc_entry(int(c.sum()), len(c)))
        dtasks = [t for t, e in tasks.items() if e["domain"] == d]
        class_counts = {k: sum(1 for t in dtasks if tasks[t]["class"] == k) for k in CLASSES}
        up = sum(1 for t in dtasks if _delta(tasks[t], first, last) > 0)
        down = sum(1 for t in dtasks if _delta(tasks[t], first, last) < 0)
        p = float(binomtest(up, up + down, 0.5).pvalue) if up + down else None
        both = rows & np.isfinite(correct[first]) & np.isfinite(correct[last])
        est, lo, hi, _ = task_mean_interval(correct[last, both] - correct[first, both], task[both], n_boot=n_boot,
                                            rng=np.random.default_rng(seed), bounds=(-1.0, 1.0))
        moved = {"value": est, "low": lo, "high": hi} if np.isfinite(est) else None
        domains[d] = {"runs": runs_acc, "n_tasks": len(dtasks), "n_examples": int(runs_acc[0]["n"]),
                      "classes": class_counts, "sign_test": {"up": up, "down": down, "ties": len(dtasks) - up - down,
                                                       "p_value": p}, "change": moved,
                      "verdict": _domain_verdict(d, runs_acc, first, last, up, down, len(dtasks), p, moved)}
    return {"tasks": tasks, "domains": domains,
            "classes": {k: sum(1 for e in tasks.values() if e["class"] == k) for k in CLASSES},
            "rule": CLASS_RULE, "unit": "accuracy on scored test examples; 95 % Wilson intervals over examples; "
                                        "a domain's change from the first run to the last: task-clustered 95 % "
                                        "interval; verdicts: sign test over tasks (tasks are the unit of "
                                        "independence)"}


def _delta(entry: dict[str, Any], first: int, last: int) -> float:
    a, b = entry["accuracy"][first], entry["accuracy"][last]
    return 0.0 if a is None or b is None else b - a


def _domain_verdict(domain: str, runs_acc: list[dict[str, Any]], first: int, last: int, up: int, down: int,
                    n_tasks: int, p: float | None, moved: Mapping[str, Any] | None = None) -> str:
    a, b = runs_acc[first], runs_acc[last]
    if a["accuracy"] is None or b["accuracy"] is None:
        return f"{domain}: not supported: no scored test examples in some run"
    change = ""
    if moved is not None:
        change = f"; change {moved['value']:+.2f}" + (
            f" [{moved['low']:+.2f}, {moved['high']:+.2f}] over tasks" if moved["low"] is not None
            and moved["high"] is not None else " (no interval over tasks)")
    head = (f"{domain}: accuracy {a['accuracy']:.2f} [{a['low']:.2f}, {a['high']:.2f}] -> {b['accuracy']:.2f} "
            f"[{b['low']:.2f}, {b['high']:.2f}] ({b['n']} examples, {n_tasks} tasks){change}; "
            f"{up} tasks up, {down} down")
    if p is None:
        return head + "; not supported: no task changed"
    if p < 0.05:
        return head + f"; {'rises' if up > down else 'falls'} (sign test over tasks p = {p:.3g})"
    return head + f"; not supported: sign test over tasks p = {p:.3g}"


# --------------------------------------------------------------------------- train tasks vs held-out tasks

TRAIN_TASKS, HELD_OUT = "train tasks", "held-out tasks"
MIN_GAIN_TASKS = 5  # tasks a class needs before its change (or the difference) can be called supported
GAIN_UNIT = ("accuracy on the test examples scored in every run (pooled over the class's tasks); 95 % intervals: "
             "percentile bootstrap over tasks (a resampled task brings all its examples; the same tasks in "
             "every run, so a change is paired); train tasks have examples in the train split, held-out tasks "
             "none")


def _boot_ratio(w: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per replicate: sum(w * num) / sum(w * den) (NaN where no example was drawn)."""
    d = w @ den
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, (w @ num) / np.where(d > 0, d, 1.0), np.nan)


def _ci(point: float, reps: np.ndarray) -> dict[str, Any]:
    low, high = _interval(reps)
    return {"value": float(point), "low": low, "high": high}


def _excludes_zero(ci: dict[str, Any]) -> bool:
    return ci["low"] is not None and (ci["low"] > 0 or ci["high"] < 0)


def task_gain(group: RunGroup, x: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
              min_tasks: int = MIN_GAIN_TASKS) -> dict[str, Any]:
    """Accuracy of the tasks the train split holds (train tasks) and of the tasks it does not
    (held-out tasks) in every run, the change from the first run to the last on the x axis (the
    base model to the last checkpoint of a fine-tune) per class, and the difference of the two
    changes, each with a task-clustered bootstrap interval (``n_boot`` replicates, ``seed``). Only
    test examples scored in every run count, so every run is measured on the same examples."""
    frame = group.frame
    task = frame["task"].astype(str).to_numpy()
    train_tasks = set(task[(frame["split"] == "train").to_numpy()].tolist())
    return task_gain_arrays(_correct_matrix(group), task, np.array([t in train_tasks for t in task], dtype=bool), x,
                            names=group.names, n_boot=n_boot, seed=seed, min_tasks=min_tasks)


def task_gain_arrays(correct: np.ndarray, task: np.ndarray, train_task: np.ndarray, x: Sequence[float], *,
                     names: Sequence[str], n_boot: int = 2000, seed: int = 0,
                     min_tasks: int = MIN_GAIN_TASKS) -> dict[str, Any]:
    """`task_gain` on arrays: ``correct`` [R, N] (1, 0, NaN = unscored or not a test example),
    ``task`` [N], ``train_task`` [N] (the example's task has train examples), ``x`` [R]."""

    correct = np.asarray(correct, dtype=float)
    task = np.asarray(task).astype(str)
    keep = np.isfinite(correct).all(axis=0)
    n_runs = correct.shape[0]
    first, last = int(np.argmin(x)), int(np.argmax(x))
    rng = np.random.default_rng(seed)
    names = list(names)
    out: dict[str, Any] = {"unit": GAIN_UNIT, "runs": names, "first": names[first], "last": names[last],
                           "n_boot": int(n_boot), "seed": int(seed), "min_tasks": int(min_tasks), "classes": {}}
    change_reps: dict[str, np.ndarray] = {}
    for cls in (TRAIN_TASKS, HELD_OUT):
        in_cls = keep & (train_task if cls == TRAIN_TASKS else ~np.asarray(train_task, dtype=bool))
        tasks = sorted(set(task[in_cls].tolist()))
        entry: dict[str, Any] = {"tasks": tasks, "n_tasks": len(tasks), "n_examples": int(in_cls.sum())}
        if not tasks:
            entry.update(runs=[], change=None, verdict=f"{cls}: not supported: no test examples scored in every run")
            out["classes"][cls] = entry
            continue
        pos = {t: i for i, t in enumerate(tasks)}
        col = np.array([pos[t] for t in task[in_cls]])
        n_t = np.bincount(col, minlength=len(tasks)).astype(float)  # [T] examples per task
        k_t = np.stack([np.bincount(col, weights=correct[r, in_cls], minlength=len(tasks))
                        for r in range(n_runs)])  # [R, T] correct per task
        w = task_resample_counts(n_tasks=len(tasks), n_boot=n_boot, rng=rng)  # [B, T]
        entry["runs"] = [{"run": names[r], **_ci(k_t[r].sum() / n_t.sum(), _boot_ratio(w, k_t[r], n_t))}
                         for r in range(n_runs)]
        delta = k_t[last] - k_t[first]
        change_reps[cls] = _boot_ratio(w, delta, n_t)
        entry["change"] = _ci(delta.sum() / n_t.sum(), change_reps[cls])
        entry["verdict"] = _gain_verdict(cls, entry, min_tasks)
        out["classes"][cls] = entry
    a, b = out["classes"][TRAIN_TASKS], out["classes"][HELD_OUT]
    if a.get("change") is None or b.get("change") is None:
        out["difference"] = None
        out["verdict"] = "train tasks vs held-out tasks: not supported: a class has no test examples scored in every run"
        return out
    diff = _ci(a["change"]["value"] - b["change"]["value"], change_reps[TRAIN_TASKS] - change_reps[HELD_OUT])
    out["difference"] = diff
    head = (f"train tasks minus held-out tasks, change in accuracy {names[first]} -> {names[last]}: "
            f"{_pp(diff['value'])} [{_pp(diff['low'])}, {_pp(diff['high'])}] percentage points "
            f"({a['n_tasks']} vs {b['n_tasks']} tasks)")
    if min(a["n_tasks"], b["n_tasks"]) < min_tasks:
        out["verdict"] = head + f"; not supported: fewer than {min_tasks} tasks in a class"
    elif not _excludes_zero(diff):
        out["verdict"] = head + "; not supported: the interval includes 0"
    else:
        out["verdict"] = head + ("; supported: the train tasks gained more" if diff["value"] > 0 else
                                 "; supported: the held-out tasks gained more")
    return out


def _pp(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:+.1f}"


def _gain_verdict(cls: str, entry: dict[str, Any], min_tasks: int) -> str:
    c = entry["change"]
    head = (f"{cls}: change {_pp(c['value'])} [{_pp(c['low'])}, {_pp(c['high'])}] percentage points "
            f"({entry['n_examples']} examples, {entry['n_tasks']} tasks)")
    if entry["n_tasks"] < min_tasks:
        return head + f"; not supported: fewer than {min_tasks} tasks"
    if not _excludes_zero(c):
        return head + "; not supported: the interval includes 0"
    return head + ("; rises" if c["value"] > 0 else "; falls")


def format_task_gain(result: dict[str, Any]) -> str:
    """The train-tasks vs held-out-tasks table (runs as columns) and the verdicts."""
    names = result["runs"]
    lines = ["accuracy, train tasks vs held-out tasks (95 % task-bootstrap intervals; "
             f"{result['n_boot']} replicates):",
             f"  {'':<16}" + "".join(f"{n:>24}" for n in names)]
    for cls, e in result["classes"].items():
        cells = "".join(f"{r['value']:>7.3f} [{r['low'] if r['low'] is not None else float('nan'):.3f}, "
                        f"{r['high'] if r['high'] is not None else float('nan'):.3f}]" .rjust(24) for r in e["runs"])
        lines.append(f"  {cls:<16}{cells}   ({e['n_tasks']} tasks, {e['n_examples']} examples)")
    lines += [f"  {e['verdict']}" for e in result["classes"].values()]
    lines.append(f"  {result['verdict']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- falloff

def distance_percentile(distance: np.ndarray) -> np.ndarray:
    """Each distance's percentile (0-1) among the given distances (mid-rank: (rank - 1/2) / n; ties
    share their average rank). NaN stays NaN. The findings issue defines the same scale (the
    percentile among the run's test distances); this is the simple transform used here."""
    from scipy.stats import rankdata

    d = np.asarray(distance, dtype=float)
    out = np.full(len(d), np.nan)
    ok = np.isfinite(d)
    if ok.any():
        out[ok] = (rankdata(d[ok], method="average") - 0.5) / ok.sum()
    return out


def falloff_curves(group: RunGroup, *, n_bins: int = 5, scale: str = "percentile") -> list[dict[str, Any]]:
    """Per run: falloff statistics per domain (llm_maps.falloff) of its test examples against
    ``dist_to_train``, raw or as a percentile among the run's test distances."""
    out: list[dict[str, Any]] = []
    for r, run in enumerate(group.runs):
        f = run.examples
        test = (f["split"] == "test").to_numpy()
        dist = f["dist_to_train"].to_numpy(dtype=float, na_value=np.nan)[test]
        correct = f["correct"].astype("boolean").to_numpy(dtype=object, na_value=None)[test]
        if not any(c is not None for c in correct) or not np.isfinite(dist).any():
            out.append({"run": group.names[r], "scale": scale, "stats": None})
            continue
        values = distance_percentile(dist) if scale == "percentile" else dist
        stats = falloff_stats(values, correct, f["domain"].astype(str).to_numpy()[test], n_bins=n_bins,
                              tasks=f["task"].astype(str).to_numpy()[test])
        out.append({"run": group.names[r], "scale": scale, "metric": run.manifest.get("distance_metric"),
                    "stats": stats})
    return out


# --------------------------------------------------------------------------- aligned maps

def procrustes_align(source: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Align a 2-D map to a target map of the same points: translation, isotropic scaling and an
    orthogonal transform (rotation or reflection; scipy.linalg.orthogonal_procrustes).

    Returns ``aligned`` [M, 2] (source in the target's frame), ``rotation`` [2, 2], ``scale``,
    and ``residual``: the Procrustes disparity, the sum of squared differences between the
    standardised target and the aligned standardised source (0 = the same shape; at most 1),
    as scipy.spatial.procrustes reports it."""
    from scipy.linalg import orthogonal_procrustes

    s = np.asarray(source, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    mu_s, mu_t = s.mean(axis=0), t.mean(axis=0)
    a, b = s - mu_s, t - mu_t
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        raise LLMMapsError("alignment: a map has all its points in one place")
    a, b = a / na, b / nb
    rot, sv_sum = orthogonal_procrustes(a, b)  # min ||a @ rot - b||, sv_sum = sum of the singular values
    aligned_unit = sv_sum * (a @ rot)
    residual = float(np.sum((aligned_unit - b) ** 2))
    fit = {"rotation": rot, "scale": float(sv_sum * nb / na), "source_mean": mu_s, "target_mean": mu_t,
           "residual": max(residual, 0.0)}
    fit["aligned"] = apply_alignment(fit, s)
    return fit


def apply_alignment(fit: dict[str, Any], xy: np.ndarray) -> np.ndarray:
    """Points of the source map [M, 2] in the target's frame (the fit of ``procrustes_align``)."""
    out: np.ndarray = (np.asarray(xy, dtype=np.float64) - fit["source_mean"]) @ fit["rotation"] * fit["scale"] \
        + fit["target_mean"]
    return out


def aligned_maps(group: RunGroup) -> dict[str, Any]:
    """Every run's 2-D map aligned to the first run's (Procrustes on all shared examples placed in
    both maps); residuals as ``procrustes_align`` defines them (0 for the first run)."""
    coords: list[np.ndarray | None] = []
    residuals: list[float | None] = []
    ref = np.column_stack([group.column(0, "x").astype(float), group.column(0, "y").astype(float)])
    ok = np.isfinite(ref).all(axis=1)
    for r in range(len(group.runs)):
        xy = np.column_stack([group.column(r, "x").astype(float), group.column(r, "y").astype(float)])
        both = ok & np.isfinite(xy).all(axis=1)
        if both.sum() < 3:
            coords.append(None)
            residuals.append(None)
            continue
        fit = procrustes_align(xy[both], ref[both])
        coords.append(apply_alignment(fit, xy))
        residuals.append(0.0 if r == 0 else round(fit["residual"], 9))
    return {"coords": coords, "residuals": residuals}


# --------------------------------------------------------------------------- who moved

def _neighbour_lists(group: RunGroup, r: int) -> list[list[str]]:
    """Run r's stored k nearest train ids (group order); computed from the default layer when the
    run stores none."""
    frame = group.runs[r].examples
    lists = [list(v) if v is not None else [] for v in frame["nn_train_ids"]]
    if not any(lists) and (frame["split"] == "train").any():

        run = group.runs[r]
        nb: Any = run.manifest.get("neighbours") or {}
        k = int(nb.get("k", 10))
        _, rows, _ = nearest_train(run.encodings(), (frame["split"] == "train").to_numpy(), k=k,
                                   metric=run.manifest.get("distance_metric") or "cosine")
        ids = frame["example_id"].astype(str).to_numpy()
        lists = [[str(ids[j]) for j in row if j >= 0] for row in rows]
    return [lists[i] for i in group.orders[r]]


def neighbour_jaccard(group: RunGroup, *, k: int | None = None) -> tuple[np.ndarray, int]:
    """[R, N] Jaccard index of each example's k nearest train set in run r with that in the first
    run (1 = the same neighbours, 0 = none shared), in each run's full encoding space as its
    ``nn_train_ids`` store it; k = the smallest stored k of the runs unless given."""
    lists = [_neighbour_lists(group, r) for r in range(len(group.runs))]
    stored_k = min((max((len(v) for v in lst), default=0) for lst in lists), default=0)
    k = stored_k if k is None else min(int(k), stored_k)
    out = np.full((len(group.runs), group.n), np.nan)
    base = [set(v[:k]) for v in lists[0]]
    for r, lst in enumerate(lists):
        for i, v in enumerate(lst):
            a, b = base[i], set(v[:k])
            union = len(a | b)
            out[r, i] = len(a & b) / union if union else np.nan
    return out, int(k)


def top_movers(group: RunGroup, jaccard: np.ndarray, *, run: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The examples whose k nearest train sets changed between the first run and ``run`` (default
    the last), most changed (lowest Jaccard) first, ties by example id; examples whose neighbours
    did not change are left out."""
    run = len(group.runs) - 1 if run is None else int(run)
    j = jaccard[run]
    ids = group.frame["example_id"].astype(str).to_numpy()
    ok = np.flatnonzero(np.isfinite(j) & (j < 1))
    order = ok[np.lexsort((ids[ok], j[ok]))][:limit]
    frame = group.frame
    return [{"example_id": str(ids[i]), "row": int(i), "jaccard": [None if not np.isfinite(v) else round(float(v), 4)
                                                                   for v in jaccard[:, i]],
             "task": str(frame["task"].iloc[i]), "domain": str(frame["domain"].iloc[i]),
             "split": str(frame["split"].iloc[i])} for i in order]


# --------------------------------------------------------------------------- CKA (streamed)

@dataclass(frozen=True)
class LayerSource:
    """One stored layer of one run, read in the group order: an array or memory map [N, H] and the
    rows to take (None = in order)."""
    run: str
    layer: int
    array: np.ndarray
    rows: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        n = len(self.rows) if self.rows is not None else self.array.shape[0]
        return n, int(self.array.shape[1])

    @property
    def dtype(self) -> type[np.floating[Any]]:
        return np.float64 if self.array.dtype == np.float64 else np.float32

    def block(self, start: int, stop: int) -> np.ndarray:
        if self.rows is not None:  # read sorted (memory map friendly), then put back in group order
            sel = self.rows[start:stop]
            rows = np.sort(sel)
            x = np.asarray(self.array[rows], dtype=self.dtype)
            out: np.ndarray = x[np.searchsorted(rows, sel)]
            return out
        return np.asarray(self.array[start:stop], dtype=self.dtype)


def _chunk_rows(hidden_a: int, hidden_b: int, budget: int = 64 << 20) -> int:
    return max(256, int(budget // (4 * max(hidden_a, hidden_b, 1))))


def column_means(src: LayerSource) -> np.ndarray:
    n, h = src.shape
    total = np.zeros(h)
    step = _chunk_rows(h, h)
    for s in range(0, n, step):
        total += src.block(s, min(n, s + step)).sum(axis=0, dtype=np.float64)
    return total / max(n, 1)


def _centred(src: LayerSource, mean: np.ndarray) -> np.ndarray:
    """The whole layer, centred, in compute precision (float32 for stored fp16): [N, H]."""
    n, h = src.shape
    out = np.empty((n, h), dtype=src.dtype)
    step = _chunk_rows(h, h)
    for s in range(0, n, step):
        e = min(n, s + step)
        out[s:e] = src.block(s, e) - mean.astype(src.dtype)
    return out


def _cross_sq(left: np.ndarray, right: LayerSource, right_mean: np.ndarray) -> float:
    """||left^T (right - mean)||_F^2 with ``right`` streamed in row chunks (float64 accumulator)."""
    n, h = right.shape
    acc = np.zeros((left.shape[1], h))
    step = _chunk_rows(left.shape[1], h)
    dt = np.result_type(left.dtype, right.dtype)
    for s in range(0, n, step):
        e = min(n, s + step)
        acc += left[s:e].T.astype(dt, copy=False) @ (right.block(s, e) - right_mean.astype(right.dtype))
    flat = acc.ravel()
    return float(np.dot(flat, flat))  # no [H_a, H_b] temporary


def cka_pairs(sources: Sequence[LayerSource], pairs: Iterable[tuple[int, int]], *,
              progress: Callable[[int], None] | None = None) -> dict[tuple[int, int], float]:
    """Linear CKA (Kornblith et al. 2019) for index pairs of ``sources`` (all with the same rows):

        CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),  Xc = X - column means.

    Streamed: one source is held centred in memory at a time (the left of its pairs); the right
    of each pair is read chunk by chunk from its memory map. ``progress(k)`` is called as pairs
    finish."""
    pairs = sorted({(min(a, b), max(a, b)) for a, b in pairs})
    n0 = {s.shape[0] for s in sources}
    if len(n0) > 1:
        raise LLMMapsError(f"CKA: layers hold different numbers of rows ({sorted(n0)})")
    needed = sorted({i for p in pairs for i in p})
    means = {i: column_means(sources[i]) for i in needed}
    self_sq: dict[int, float] = {}
    out: dict[tuple[int, int], float] = {}
    by_left: dict[int, list[int]] = {}
    for a, b in pairs:
        by_left.setdefault(a, []).append(b)
    for i in needed:
        by_left.setdefault(i, [])
    for a in sorted(by_left):
        left = _centred(sources[a], means[a])  # the only layer held whole
        self_sq[a] = _cross_sq(left, sources[a], means[a]) if a not in self_sq else self_sq[a]
        for b in by_left[a]:
            if b == a:
                out[(a, b)] = 1.0 if self_sq[a] > 0 else math.nan
                continue
            out[(a, b)] = _cross_sq(left, sources[b], means[b])
            if progress:
                progress(1)
        del left
    for (a, b), v in list(out.items()):
        if a != b:
            denom = math.sqrt(self_sq[a] * self_sq[b])  # sqrt(fl(s * s)) == s: CKA(X, X) is exactly 1
            out[(a, b)] = v / denom if denom > 0 else math.nan
    return out


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two in-memory arrays [N, P], [N, Q] (the streamed code on two sources)."""
    return cka_pairs([LayerSource("x", 0, np.asarray(x)), LayerSource("y", 0, np.asarray(y))], [(0, 1)])[(0, 1)]


def run_fingerprint(run: Run) -> str:
    """Identifies one build of a run (cache key for CKA between runs)."""
    m: Any = run.manifest
    key = json.dumps([m.get("created"), m.get("model"), m.get("layers"), (m.get("counts") or {}).get("examples"),
                      run.path.name], default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def group_sources(group: RunGroup, layers: dict[int, Sequence[int]] | None = None) -> list[LayerSource]:
    names = group.names
    out = []
    for r, run in enumerate(group.runs):
        for k in (layers or {}).get(r, run.layers):
            out.append(LayerSource(names[r], int(k), run.encodings(k), None if r == 0 else group.orders[r]))
    return out


def group_cka(group: RunGroup, *, between: str = "all", cache: str = "use", progress: bool = False) -> list[dict[str, Any]]:
    """Linear CKA between every stored layer of every pair of runs (``between="first"``: only
    pairs with the first run) and between the layers of each run.

    ``cache``: "use" reads pairs stored in each run's cka.json and stores the new ones there;
    "read" only reads them (the web process: pairs not stored are left out unless computed by the
    caller); "auto" reads them and computes the missing ones without storing them when that takes
    at most ONLINE_CKA_LIMIT multiply-adds (else leaves them out); "off" neither reads nor writes."""
    names = group.names
    sources = group_sources(group)
    index = {(s.run, s.layer): i for i, s in enumerate(sources)}
    prints = [run_fingerprint(r) for r in group.runs]
    wanted = []
    for a in range(len(group.runs)):
        for b in range(a, len(group.runs)):
            if between == "first" and a != 0 and a != b:
                continue
            for la in group.runs[a].layers:
                for lb in group.runs[b].layers:
                    if a == b and lb < la:
                        continue
                    wanted.append((a, b, int(la), int(lb)))
    stored = {}
    if cache in ("use", "read", "auto"):
        for a, run in enumerate(group.runs):
            for e in _read_cka_cache(run).get("pairs", []):
                stored[(prints[a], e["other"], int(e["layer_a"]), int(e["layer_b"]))] = float(e["cka"])
    values: dict[tuple[int, int, int, int], float] = {}
    todo = []
    for a, b, la, lb in wanted:
        v = stored.get((prints[a], prints[b], la, lb))
        if v is None:
            v = stored.get((prints[b], prints[a], lb, la))
        if v is not None:
            values[(a, b, la, lb)] = v
        elif cache != "read":
            todo.append((a, b, la, lb))
    if todo and cache == "auto":
        hidden = {(names[r], int(k)): int(run.encodings(k).shape[1]) for r, run in enumerate(group.runs)
                  for k in run.layers}
        cost = sum(group.n * hidden[(names[a], la)] * hidden[(names[b], lb)] for a, b, la, lb in todo)
        if cost > ONLINE_CKA_LIMIT:
            todo = []
    if todo:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len([t for t in todo if not (t[0] == t[1] and t[2] == t[3])]), desc="CKA layer pairs",
                       unit="pair")
        got = cka_pairs(sources, [(index[(names[a], la)], index[(names[b], lb)]) for a, b, la, lb in todo],
                        progress=bar.update if bar else None)
        if bar:
            bar.close()
        for a, b, la, lb in todo:
            i, j = index[(names[a], la)], index[(names[b], lb)]
            values[(a, b, la, lb)] = got[(min(i, j), max(i, j))]
        if cache == "use":
            for a, run in enumerate(group.runs):
                mine = [(b, la, lb, v) for (a2, b, la, lb), v in values.items() if a2 == a]
                _write_cka_cache(run, [{"other": prints[b], "other_name": names[b], "layer_a": la, "layer_b": lb,
                                        "cka": v} for b, la, lb, v in mine])
    return [{"run_a": names[a], "run_b": names[b], "layer_a": la, "layer_b": lb,
             "cka": None if v is None or math.isnan(v) else round(float(v), 6)}
            for (a, b, la, lb), v in sorted(values.items())]


def _read_cka_cache(run: Run) -> dict[str, Any]:
    path = run.path / CKA_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data.get("pairs"), list) else {}
    except (FileNotFoundError, ValueError, UnicodeDecodeError, AttributeError):
        return {}


def _write_cka_cache(run: Run, entries: list[dict[str, Any]]) -> None:
    old = _read_cka_cache(run).get("pairs", [])
    keys = {(e["other"], e["layer_a"], e["layer_b"]) for e in entries}
    pairs = [e for e in old if (e.get("other"), e.get("layer_a"), e.get("layer_b")) not in keys] + entries
    try:
        write_json_atomic(run.path / CKA_FILE, {"format_version": 1, "self": run_fingerprint(run),
                                                "measure": "linear CKA", "pairs": pairs})
    except OSError as exc:  # a read-only run still compares; its CKA cache is not kept, and that is said
        print(f"llm-maps compare: note: {run.path / CKA_FILE}: not kept ({exc.strerror or exc}); CKA is "
              "recomputed next time", file=sys.stderr)


# --------------------------------------------------------------------------- probes

def _probe_target(frame: Any, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) used for one probe target."""
    if target == "correct":
        c = frame["correct"].astype("boolean")
        rows = np.flatnonzero((frame["split"] == "test").to_numpy() & c.notna().to_numpy())
        return rows, c.to_numpy(dtype=object, na_value=None)[rows].astype(bool).astype(str)
    if target not in ("domain", "task"):
        raise LLMMapsError(f"--targets: unknown probe target '{target}' (domain, task, correct)")
    return np.arange(len(frame)), frame[target].astype(str).to_numpy()


def probe_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, folds: int = 5, max_dim: int = 256,
                 c: float = 1.0, seed: int = 0, max_iter: int = 300, tasks: np.ndarray | None = None,
                 n_boot: int = 1000) -> dict[str, Any]:
    """Cross-validated accuracy of a logistic-regression probe predicting ``y`` from ``x`` [N, H]
    (standardised, PCA to ``max_dim`` dimensions when H is larger, both fitted inside each fold),
    judged against chance: the class prior (the share of the most frequent class, what always
    answering it scores). ``groups`` (e.g. task): no group in both the training and the test folds
    (StratifiedGroupKFold when every class spans enough groups, else GroupKFold); else
    StratifiedKFold. Tasks are the unit of independence: the intervals of the accuracy, of the
    chance level and of ``probe - chance`` come from a task-clustered bootstrap (``tasks``, default
    ``groups``; small-cluster corrected), and ``above_chance`` says whether that difference's
    interval lies above 0. Also n, folds, cv and whether every fold's fit converged."""
    from sklearn.base import clone
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y)
    classes, class_counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError("only one class")
    if groups is not None:
        n_groups = len(np.unique(groups))
        k = min(folds, n_groups)
        if k < 2:
            raise ValueError("fewer than 2 groups")
        groups_per_class = min(len(np.unique(np.asarray(groups)[y == cl])) for cl in classes)
        if groups_per_class >= k:  # every class can be in every fold: stratify too
            cv: Any = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            cv_name = f"StratifiedGroupKFold({k}) by task"
        else:
            cv = GroupKFold(n_splits=k)
            cv_name = f"GroupKFold({k}) by task"
    else:
        k = min(folds, int(np.min(class_counts)))
        if k < 2:
            raise ValueError("a class has fewer than 2 examples")
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        cv_name = f"StratifiedKFold({k})"
    steps = [StandardScaler()]
    if x.shape[1] > max_dim:
        steps.append(PCA(n_components=max_dim, svd_solver="auto", random_state=seed))
    pred = np.empty(len(y), dtype=y.dtype)
    iterations, converged = [], True
    for train, test in cv.split(x, y, groups):
        model = make_pipeline(*[clone(s_) for s_ in steps], LogisticRegression(C=c, max_iter=max_iter))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x[train], y[train])
        n_iter = int(np.max(model[-1].n_iter_))
        iterations.append(n_iter)
        converged &= n_iter < max_iter
        pred[test] = model.predict(x[test])
    n = len(y)
    hits = pred == y
    out = {"accuracy": float(hits.mean()), "baseline": float(class_counts.max() / n), "n": n,
           "n_classes": int(len(classes)), "folds": k, "cv": cv_name,
           "features": f"standardised, PCA to {max_dim} dimensions inside each fold" if x.shape[1] > max_dim
           else "standardised", "C": c, "iterations": max(iterations), "converged": bool(converged)}
    return {**out, **probe_intervals(hits, y, tasks if tasks is not None else groups, n_boot=n_boot, seed=seed)}


def probe_intervals(hits: np.ndarray, y: np.ndarray, tasks: np.ndarray | None, *, n_boot: int,
                    seed: int) -> dict[str, Any]:
    """Bootstrap 95 % intervals of a probe's accuracy (the mean of ``hits``), of the chance level
    (the share of the data's largest class) and of their difference, from the same replicates.
    Tasks are resampled with replacement (spread by sqrt(G/(G-1))); where each class is one task
    (the target is the task itself), resampling tasks would resample the classes, so examples are
    resampled within each task instead (chance is then fixed); without tasks, or with fewer than 2,
    examples are resampled. The chance level of a replicate is the share of the data's largest
    class in it: the largest share of each replicate would sit above the estimate."""

    hits = np.asarray(hits, dtype=float)
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    units = np.arange(len(hits)) if tasks is None else np.unique(np.asarray(tasks).astype(str), return_inverse=True)[1]
    n_units = int(units.max()) + 1 if len(units) else 0
    if n_units < 2:
        units, n_units = np.arange(len(hits)), len(hits)
    rng = np.random.default_rng(seed + 31337)
    one_class_per_unit = n_units < len(hits) and len(classes) == n_units and \
        len(set(zip(units.tolist(), codes.tolist()))) == n_units
    if one_class_per_unit:  # examples resampled within their task: each task (class) keeps its size
        w = np.zeros((n_boot, len(hits)))
        for t in range(n_units):
            idx = np.flatnonzero(units == t)
            w[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_boot)
        unit, spread_over = f"examples within {n_units} tasks", len(hits)
    else:
        w = task_resample_counts(n_tasks=n_units, n_boot=n_boot, rng=rng)[:, units]  # [B, N] row weights
        unit = f"{n_units} " + ("tasks" if tasks is not None and n_units < len(hits) else "examples")
        spread_over = n_units
    total = w.sum(1)
    acc = (w @ hits) / total
    major = int(np.argmax(np.bincount(codes)))
    base = (w @ (codes == major).astype(float)) / total
    est_acc, est_base = float(hits.mean()), float(np.mean(codes == major))
    diff = small_cluster(est_acc - est_base, acc - base, spread_over)
    lo, hi = _interval(small_cluster(est_acc, acc, spread_over))
    blo, bhi = _interval(small_cluster(est_base, base, spread_over))
    dlo, dhi = _interval(diff)
    return {"low": lo, "high": hi, "baseline_low": blo, "baseline_high": bhi, "minus_baseline": est_acc - est_base,
            "minus_baseline_low": dlo, "minus_baseline_high": dhi,
            "above_chance": bool(dlo is not None and dlo > 0), "interval_unit": unit}


def probe_run(run: Run, *, layers: Sequence[int] | None = None, targets: Sequence[str] = PROBE_TARGETS,
              folds: int = 5, max_dim: int = 256, seed: int = 0, progress: bool = False,
              save: bool = True, n_boot: int = 1000, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Linear probes of every stored layer (or ``layers``) of one run for each target; one layer
    in memory at a time. Domain and correctness are cross-validated grouped by task (the probe
    must carry over to unseen tasks); task itself with stratified folds. Written to RUN/probes.json
    when ``save``."""
    frame = run.examples
    layers = list(layers) if layers else run.layers
    if save:  # a read-only run fails now, not after the probes
        check_writable(run.path, [PROBES_FILE], hint="use --json FILE for a copy elsewhere")
    for k in layers:
        if int(k) not in run.layers:
            raise LLMMapsError(f"--layers: layer {k} is not stored in {run.path} (stored: {run.layers})")
    tasks = frame["task"].astype(str).to_numpy()
    plan, skipped = [], []
    for target in targets:
        rows, y = _probe_target(frame, target)
        if len(np.unique(y)) < 2:
            skipped.append({"target": target, "reason": "fewer than 2 classes" if len(rows) else "no rows"})
            continue
        if target == "task":  # tasks need examples in every fold
            vals, counts = np.unique(y, return_counts=True)
            keep = np.isin(y, vals[counts >= 2])
            rows, y = rows[keep], y[keep]
        plan.append((target, rows, y))
    out_rows = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(layers) * len(plan), desc=f"probes {run.name}", unit="probe")
    for k in layers:
        x_all = np.asarray(run.encodings(int(k)), dtype=np.float32)  # one layer in memory: [N, H]
        for target, rows, y in plan:
            groups = None if target == "task" else tasks[rows]
            try:
                res = probe_scores(x_all[rows], y, groups, folds=folds, max_dim=max_dim, seed=seed, tasks=tasks[rows],
                                   n_boot=n_boot)
            except ValueError as exc:
                if not any(s["target"] == target for s in skipped):
                    skipped.append({"target": target, "reason": str(exc)})
                if bar:
                    bar.update(1)
                continue
            out_rows.append({"layer": int(k), "target": target, "accuracy": round(res["accuracy"], 6),
                             "baseline": round(res["baseline"], 6), "low": res["low"], "high": res["high"],
                             "baseline_low": res["baseline_low"], "baseline_high": res["baseline_high"],
                             "minus_baseline": round(res["minus_baseline"], 6),
                             "minus_baseline_low": res["minus_baseline_low"],
                             "minus_baseline_high": res["minus_baseline_high"], "above_chance": res["above_chance"],
                             "n": res["n"], "n_tasks": int(len(np.unique(tasks[rows]))),
                             "n_classes": res["n_classes"], "cv": res["cv"], "features": res["features"],
                             "converged": res["converged"]})
            if bar:
                bar.update(1)
        del x_all
    if bar:
        bar.close()
    settings = {"layers": [int(k) for k in layers], "targets": list(targets), "folds": folds, "max_dim": max_dim,
                "C": 1.0, "seed": seed, "bootstrap": n_boot}
    result = {"format_version": 2, "run": run.name, "model": run.manifest.get("model"),
              "probe": "logistic regression (scikit-learn, C=1), cross-validated (folds grouped by task for domain "
                       "and correct); chance: the class prior (the largest class share); accuracy pooled over the "
                       "folds; 95 % intervals of the accuracy, chance and probe - chance from a task-clustered "
                       f"bootstrap (B = {n_boot}; for the task target, whose classes are the tasks, examples are "
                       "resampled within their task instead: each row's interval_unit says which); above chance "
                       "when probe - chance's interval lies above 0",
              "settings": settings, "layers": out_rows, "skipped": skipped, "fingerprint": run_fingerprint(run)}
    if save:
        record_stage(run.path, "probe", {k: v for k, v in settings.items() if k != "seed"},
                     outputs={PROBES_FILE: result}, seed=seed, given=given,
                     inputs=[EXAMPLES, *(f"{ENCODINGS}/layer_{int(k)}.npy" for k in layers)])
    return result


def read_probes(run: Run) -> dict[str, Any] | None:
    """RUN/probes.json when it belongs to this build of the run."""
    try:
        data = json.loads((run.path / PROBES_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        return None
    if int(data.get("format_version") or 1) < 2:  # chance and intervals were another rule: computed again
        return None
    if data.get("fingerprint") not in (None, run_fingerprint(run)):
        return None
    return data


# --------------------------------------------------------------------------- everything


def loss_curve(runs: Sequence[Run]) -> dict[str, Any] | None:
    """The fine-tuning loss curve of these runs: the ``finetune.json`` of the group folder holding
    the checkpoint runs (those with a ``step`` above 0) when they share one, else None."""
    folders = {Path(r.path).resolve().parent for r in runs if (r.manifest.get("step") or 0) > 0}
    if len(folders) != 1:
        return None
    path = folders.pop() / FINETUNE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        curve = data["curve"]
        train = [{"step": int(e["step"]), "loss": float(e["loss"])} for e in curve.get("train", [])]
        held = [{"step": int(e["step"]), "loss": float(e["loss"])} for e in curve.get("eval", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    settings = data.get("settings") or {}
    return {"path": str(path), "train": train, "eval": held, "mode": settings.get("mode"),
            "unit": "mean cross-entropy per reference token (nats); eval: the held-out slice of the train split "
                    f"({settings.get('eval_rows', '?')} examples)"}


def compare_runs(runs: Sequence[Run], *, axis: str | None = None, n_bins: int = 5, cka: str = "use",
                 cka_between: str = "all", movers: int = 20, progress: bool = False) -> dict[str, Any]:
    """The comparison `llm-maps compare` writes as JSON (and the page draws)."""
    group = match_runs(runs)
    names = group.names
    infos = [run_info(r, n) for r, n in zip(group.runs, names)]
    if axis is not None and axis not in available_axes(infos):
        lacking = next((i["name"] for i in infos if i.get(axis) is None or (axis == "n_params" and not i[axis])),
                       infos[0]["name"])
        raise LLMMapsError(f"--axis {axis}: run '{lacking}' has no '{axis}' in its manifest (available: "
                           f"{', '.join(available_axes(infos))})")
    kind, x = x_axis(infos, axis)
    curves = accuracy_curves(group, x)
    align = aligned_maps(group)
    jac, k = neighbour_jaccard(group)
    result = {
        "format_version": COMPARE_VERSION,
        "runs": infos,
        "n_examples": group.n,
        "n_test": int((group.frame["split"] == "test").sum()),
        "n_tasks": int(group.frame["task"].nunique()),
        "axis": {"kind": kind, "values": x, "log": kind == "n_params"},
        "tasks": curves["tasks"],
        "domains": curves["domains"],
        "classes": curves["classes"],
        "class_rule": curves["rule"],
        "unit": curves["unit"],
        "task_gain": task_gain(group, x),
        "falloff": falloff_curves(group, n_bins=n_bins),
        "loss_curve": loss_curve(group.runs),
        "alignment": {"method": "orthogonal Procrustes (translation, isotropic scale, rotation or reflection) "
                                "of each run's 2-D map onto the first run's, on all shared examples",
                      "procrustes_residual": align["residuals"]},
        "moved": {"k": k, "measure": "Jaccard index of the k nearest train examples in the full space, run vs the "
                                     "first run (1 = same neighbours)",
                  "mean_jaccard": [None if not np.isfinite(jac[r]).any() else round(float(np.nanmean(jac[r])), 4)
                                   for r in range(len(group.runs))],
                  "top": top_movers(group, jac, limit=movers)},
        "cka": {"measure": "linear CKA (Kornblith et al. 2019) on the encodings of all shared examples",
                "layer_pairs": group_cka(group, between=cka_between, cache=cka, progress=progress) if cka != "skip"
                else []},
    }
    return result


def format_compare(result: dict[str, Any]) -> str:
    """A short text summary of a comparison (what `llm-maps compare` prints)."""
    lines = [f"{len(result['runs'])} runs over the same {result['n_examples']} examples "
             f"({result['n_test']} test, {result['n_tasks']} tasks); axis: {result['axis']['kind']}"]
    for i, r in enumerate(result["runs"]):
        res = result["alignment"]["procrustes_residual"][i]
        model = r.get("model_name") or r["model"]
        lines.append(f"  {r['name']:<20} {model:<30} n_params {r['n_params'] or '-':>12}  step "
                     f"{r['step'] if r['step'] is not None else '-':>6}  map residual "
                     f"{'-' if res is None else format(res, '.3f')}  mean neighbour Jaccard "
                     f"{result['moved']['mean_jaccard'][i]}")
    lines.append("")
    for d, e in result["domains"].items():
        lines.append(e["verdict"])
        lines.append("  task classes: " + ", ".join(f"{k} {v}" for k, v in e["classes"].items()))
    lines.append("task classes (all): " + ", ".join(f"{k} {v}" for k, v in result["classes"].items()))
    if result.get("task_gain"):
        lines += ["", format_task_gain(result["task_gain"])]
    pairs = result["cka"]["layer_pairs"]
    if pairs:
        lines.append("")
        lines.append("linear CKA, same-run layers excluded (run_a layer_a ~ run_b layer_b):")
        for p in [p for p in pairs if p["run_a"] != p["run_b"]][:40]:
            lines.append(f"  {p['run_a']} {p['layer_a']:>3} ~ {p['run_b']} {p['layer_b']:>3}: {p['cka']}")
    return "\n".join(lines)


def format_probes(result: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"linear probes of {result['run']} ({result['probe']})",
             f"  {'layer':>5}  {'target':<8}  {'accuracy':>8}  {'95% interval':>15}  {'chance':>6}  "
             f"{'probe - chance [95%]':>24}  {'n':>6}  {'tasks':>5}  cv"]
    for r in result["layers"]:
        below = r.get("minus_baseline_high") is not None and r["minus_baseline_high"] < 0
        minus = (f"{r['minus_baseline']:+.3f} [{f(r['minus_baseline_low'])}, {f(r['minus_baseline_high'])}]"
                 + (" *" if r.get("above_chance") else " !" if below else "")) if "minus_baseline" in r else "-"
        lines.append(f"  {r['layer']:>5}  {r['target']:<8}  {r['accuracy']:>8.3f}  [{f(r['low'])}, {f(r['high'])}]  "
                     f"{r['baseline']:>6.3f}  {minus:>24}  {r['n']:>6}  {r['n_tasks']:>5}  {r['cv']}")
    lines.append("  (* above chance: the interval of probe - chance lies above 0; ! below chance: it lies below 0, "
                 "the probe does worse than always answering the largest class, so the layer shows no usable "
                 "signal for that target; intervals resample tasks, for the task target examples within their task)")
    for s in result["skipped"]:
        lines.append(f"  skipped {s['target']}: {s['reason']}")
    return "\n".join(lines)
