"""Conditions: the same test examples asked in other ways, torch-free (read by the dashboard too).

A *condition* is how a test example's prompt is put to the model:

* ``direct``: the run's own prompt (what ``llm-maps score`` scored; examples.parquet keeps it);
* ``cot``: the prompt followed by a chain-of-thought cue (default ``Let's think step by step.``),
  a larger token budget, and the final answer extracted from the reasoning by a stated rule
  (``extract_answer``; multiple choice: the choice with the highest log-likelihood as a
  continuation of the reasoning plus ``So the answer is``, as lm-eval does for its CoT variants);
* ``neighbours:K``: the K nearest *training* examples (by the run's distance, nearest first: the
  run's ``nn_train_ids``) prepended as demonstrations (prompt + reference in the template's
  format) before the example's own prompt.

``pipelines/conditions.py`` generates and scores them into ``conditions.parquet`` (one row per
example and condition, ``direct`` included so the file compares conditions on its own); this
module reads that file and summarises it: accuracy per domain and condition with task-clustered
intervals, the paired difference of two conditions (McNemar's test on the discordant pairs, and a
task-clustered interval of the accuracy difference), and the falloff slope per condition on the
Findings distance scale (``llm_maps.findings``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .conditions_file import (CONDITIONS_FILE, DIRECT, condition_names, condition_rows, has_conditions,
                              read_conditions, with_examples)
from .errors import LLMMapsError
from .falloff import wilson_interval
from .findings import MIN_TASKS_FOR_CLAIM, UNIT, compute_findings, weighted_auroc
from .resample import MIN_TASKS_FOR_INTERVAL, at_least_wilson, sign_flip_p, small_cluster, task_resample_counts

if TYPE_CHECKING:
    import pandas as pd

    from .runfolder import Run

COT, NEIGHBOURS = "cot", "neighbours"
DEFAULT_COT_CUE = "Let's think step by step."
DEFAULT_COT_MAX_NEW_TOKENS = 256
MC_COT_SUFFIX = "\nSo the answer is "  # a CoT output + this, then each choice (lm-eval's CoT multiple choice)
EXTRACTION_RULES = {
    "output": "direct: the output as generated (multiple choice: the choice with the highest log-likelihood)",
    "answer_is": "the text after the last 'the answer is', to the end of its line, without trailing punctuation",
    "last_line": "no 'the answer is': the last non-empty line",
    "last_number": "numeric reference: the first number after the last 'the answer is', else the last number",
    "choice_after_reasoning": "multiple choice: the choice with the highest log-likelihood after the reasoning "
                              "plus 'So the answer is'",
    "empty": "the output is empty",
}
OUTCOMES = ("helped", "hurt", "both right", "both wrong")


def cot_prompt(prompt: str, cue: str = DEFAULT_COT_CUE) -> str:
    """The ``cot`` condition's prompt: ``prompt`` (as placed on the map) with the chain-of-thought
    ``cue`` as the start of the response. The one construction behind ``llm-maps score --conditions
    cot`` and the playground's "think step by step" (the worker generates from it; the point on the
    map stays the plain prompt's)."""
    if not cue:
        return prompt
    return prompt + cue if not prompt or prompt[-1].isspace() else f"{prompt} {cue}"


def cot_choice_prompt(prompt: str, output: str | None, cue: str = DEFAULT_COT_CUE) -> str:
    """What a multiple-choice answer is scored after under ``cot`` (lm-eval's CoT multiple choice):
    the cot prompt, the generated reasoning, then ``So the answer is``."""
    return f"{cot_prompt(prompt, cue)} {output or ''}".rstrip() + MC_COT_SUFFIX


@dataclass(frozen=True)
class Condition:
    name: str  # as written on the command line and stored: direct, cot, neighbours:3
    kind: str  # direct | cot | neighbours
    k: int = 0  # neighbours:K


def parse_conditions(text: str | Sequence[str] | None) -> list[Condition]:
    """``direct,cot,neighbours:3`` -> conditions, in order, without repeats."""
    parts = text.split(",") if isinstance(text, str) else list(text or [])
    out: list[Condition] = []
    for raw in parts:
        name = str(raw).strip()
        if not name:
            continue
        kind, sep, arg = name.partition(":")
        if kind in (DIRECT, COT) and not sep:
            cond = Condition(name, kind)
        elif kind == NEIGHBOURS and sep:
            try:
                k = int(arg)
            except ValueError:
                k = 0
            if k < 1 or str(k) != arg.strip():
                raise LLMMapsError(f"--conditions: '{name}': K of neighbours:K must be a whole number >= 1")
            cond = Condition(f"{NEIGHBOURS}:{k}", NEIGHBOURS, k)
        else:
            raise LLMMapsError(f"--conditions: unknown condition '{name}' (direct, cot, neighbours:K)")
        if cond.name not in [c.name for c in out]:
            out.append(cond)
    if not out:
        raise LLMMapsError("--conditions: give at least one of direct, cot, neighbours:K")
    return out


# --- answer extraction (cot) -----------------------------------------------------------------------

_ANSWER_IS = re.compile(r"answer\s+is\b\s*[:\-]?\s*", re.IGNORECASE)
_NUMBER = re.compile(r"[-−]?\d[\d,]*(?:\.\d+)?|[-−]?\.\d+")
_NUMERIC = re.compile(r"^\s*[-−]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)\s*\.?\s*$")
_TRIM = " \t\"'`*_.,;:!)("


def is_numeric(reference: Any) -> bool:
    """A reference that is one number (``42``, ``-3.5``, ``1,024``): scored by the last number rule."""
    return reference is not None and bool(_NUMERIC.match(str(reference)))


def _number(text: str) -> str:
    return text.replace(",", "").replace("−", "-").rstrip(".")


def extract_answer(output: str | None, *, numeric: bool = False) -> tuple[str, str]:
    """(answer, rule) of a chain-of-thought output; the rules are ``EXTRACTION_RULES``."""
    text = (output or "").strip()
    if not text:
        return "", "empty"
    hits = list(_ANSWER_IS.finditer(text))
    after = text[hits[-1].end():].split("\n", 1)[0] if hits else None
    if numeric:
        if after is not None and (m := _NUMBER.search(after)):
            return _number(m.group()), "last_number"
        nums = _NUMBER.findall(text)
        if nums:
            return _number(nums[-1]), "last_number"
    if after is not None:
        answer = after.strip().strip(_TRIM).strip()
        if answer:
            return answer, "answer_is"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1], "last_line"


# --- reading ---------------------------------------------------------------------------------------

def paired(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """One row per example scored under both ``a`` and ``b``: example columns plus ``correct_a``,
    ``correct_b`` and ``outcome`` (helped: b right where a was wrong; hurt; both right; both wrong)."""
    keep = ["example_id", "row", "split", "task", "domain", "example_dist"]
    keep = [c for c in keep if c in frame.columns]
    scored = frame[frame["correct"].notna()]
    left = scored[scored["condition"] == a][keep + ["correct"]].rename(columns={"correct": "correct_a"})
    right = scored[scored["condition"] == b][["example_id", "correct"]].rename(columns={"correct": "correct_b"})
    both = left.merge(right, on="example_id", how="inner")
    both["correct_a"] = both["correct_a"].astype(bool)
    both["correct_b"] = both["correct_b"].astype(bool)
    both["outcome"] = outcomes(both["correct_a"].to_numpy(), both["correct_b"].to_numpy())
    return both.sort_values("row").reset_index(drop=True)


def outcomes(correct_a: np.ndarray, correct_b: np.ndarray) -> np.ndarray:
    """helped / hurt / both right / both wrong of condition b against condition a, per example."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    return np.where(a & b, "both right", np.where(~a & ~b, "both wrong", np.where(b, "helped", "hurt")))


# --- statistics ------------------------------------------------------------------------------------

def mcnemar(*, b: int, c: int, exact: bool | None = None) -> dict[str, Any]:
    """McNemar's test of a paired 2x2 table from its discordant counts ``b`` (right under the first
    condition only) and ``c`` (right under the second only), as statsmodels computes it: exact
    (two-sided binomial on min(b, c) of b + c, p capped at 1) or the chi-square with continuity
    correction, (|b - c| - 1)^2 / (b + c) on 1 df. ``exact=None``: exact when b + c < 25."""
    from scipy import stats

    n = int(b) + int(c)
    exact = n < 25 if exact is None else bool(exact)
    if n == 0:
        return {"b": int(b), "c": int(c), "exact": exact, "statistic": 0.0 if exact else None, "p_value": 1.0}
    if exact:
        statistic = float(min(b, c))
        p = float(min(1.0, 2.0 * stats.binom.cdf(statistic, n, 0.5)))
    else:
        statistic = float((abs(b - c) - 1.0) ** 2 / n)
        p = float(stats.chi2.sf(statistic, 1))
    return {"b": int(b), "c": int(c), "exact": exact, "statistic": statistic, "p_value": p}


def _task_boot(task: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[B, n] row weights: tasks resampled with replacement (tasks are the unit of independence)."""
    names, codes = np.unique(task, return_inverse=True)
    counts = task_resample_counts(n_tasks=len(names), n_boot=n_boot, rng=np.random.default_rng(seed))
    weights: np.ndarray = counts[:, codes]
    return weights


def _percentile_interval(values: np.ndarray, est: float | None = None, n_tasks: int = 0,
                         bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float | None, float | None]:
    """The 2.5th and 97.5th percentiles of bootstrap ``values``; with ``est`` and ``n_tasks``, the
    replicates first spread by sqrt(G / (G - 1)) around the estimate (findings.small_cluster: the
    task bootstrap's variance is (G - 1) / G of the unbiased one with G tasks), kept within ``bounds``."""
    if est is not None and n_tasks >= 2 and np.isfinite(est):
        values = np.clip(small_cluster(est, values, n_tasks), *bounds)
    v = values[np.isfinite(values)]
    if len(v) < 10:
        return None, None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def accuracy_with_interval(correct: np.ndarray, task: np.ndarray, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Accuracy with a task-clustered bootstrap 95 % interval (never narrower than Wilson's; None
    with fewer than MIN_TASKS_FOR_INTERVAL tasks) and the Wilson interval (examples as independent)
    beside it."""

    y = np.asarray(correct, dtype=float)
    n, k = len(y), int(y.sum())
    n_tasks = len(set(task.tolist()))
    lo = hi = None
    if n_tasks >= MIN_TASKS_FOR_INTERVAL:
        w = _task_boot(task, n_boot, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            lo, hi = _percentile_interval((w @ y) / w.sum(axis=1), k / n if n else None, n_tasks, (0.0, 1.0))
        lo, hi = at_least_wilson(lo, hi, k, n)
    wlo, whi = wilson_interval(k, n)
    return {"n": n, "n_tasks": n_tasks, "correct": k, "accuracy": k / n if n else None, "low": lo, "high": hi,
            "wilson_low": wlo, "wilson_high": whi}


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, task: np.ndarray, *, n_boot: int,
                      seed: int) -> dict[str, Any]:
    """Accuracy of b minus accuracy of a on the same examples: the difference, a task-clustered
    bootstrap 95 % interval, a two-sided sign-flip test over tasks (each task's summed difference,
    as likely negative as positive under the null: tasks are the unit of independence), McNemar's
    test on the discordant examples beside it (examples as independent: shown, not used), and a
    verdict ("supported" only with at least MIN_TASKS_FOR_CLAIM tasks, when the interval excludes 0
    and the task-level p < 0.05)."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    n = len(a)
    n_tasks = len(set(task.tolist()))
    diff = float(b.mean() - a.mean()) if n else None
    lo = hi = None
    if n_tasks >= MIN_TASKS_FOR_INTERVAL:
        w = _task_boot(task, n_boot, seed)
        with np.errstate(invalid="ignore", divide="ignore"):
            lo, hi = _percentile_interval((w @ (b.astype(float) - a.astype(float))) / w.sum(axis=1), diff, n_tasks,
                                          (-1.0, 1.0))
    test = mcnemar(b=int((a & ~b).sum()), c=int((~a & b).sum()))
    codes = np.unique(task, return_inverse=True)[1]
    per_task = np.bincount(codes, weights=b.astype(float) - a.astype(float)) if n else np.zeros(0)
    p_task = sign_flip_p(per_task, seed=seed, two_sided=True)
    table = {"both_right": int((a & b).sum()), "a_only": int((a & ~b).sum()), "b_only": int((~a & b).sum()),
             "both_wrong": int((~a & ~b).sum())}
    if lo is None or hi is None:
        verdict = (f"not supported: {n_tasks} task{'s' if n_tasks != 1 else ''} (a task-clustered interval needs "
                   f"{MIN_TASKS_FOR_INTERVAL})")
    elif n_tasks < MIN_TASKS_FOR_CLAIM:
        verdict = f"not supported: only {n_tasks} tasks (a claim needs {MIN_TASKS_FOR_CLAIM})"
    elif 2.0 ** (1 - n_tasks) >= 0.05:  # the two-sided sign-flip test's smallest p: 2 of 2^G patterns
        verdict = (f"not supported: with {n_tasks} tasks the sign-flip test over tasks cannot reach p < 0.05 "
                   f"(its smallest p is {2.0 ** (1 - n_tasks):.3g})")
    elif (lo > 0 or hi < 0) and p_task is not None and p_task < 0.05:
        verdict = "supported: " + ("helps" if lo > 0 else "hurts")
    else:
        verdict = "not supported: the interval includes 0" if lo <= 0 <= hi else \
            f"not supported: sign-flip test over tasks p = {p_task:.3g}"
    return {"n": n, "n_tasks": n_tasks, "diff": diff, "low": lo, "high": hi, "table": table, "p_value": p_task,
            "mcnemar": test, "verdict": verdict}


def summarize(frame: pd.DataFrame, *, baseline: str | None = None, split: str = "test", n_boot: int = 2000,
              seed: int = 0, contrast: Sequence[str] = ("Chollet", "Reasoning"),
              slopes: bool = True) -> dict[str, Any]:
    """The `llm-maps conditions` summary of ``with_examples(run)``: per domain and condition the
    accuracy (task-clustered interval); per domain each condition against ``baseline`` (default
    direct, else the first) on the examples scored under both; per condition the falloff slope per
    domain and the Chollet - Reasoning contrast on the Findings scale (percentile of the example's
    distance among the compared examples). JSON-ready."""

    frame = frame[(frame["split"] == split) & frame["correct"].notna()]
    if frame.empty:
        raise LLMMapsError(f"{CONDITIONS_FILE}: no scored {split} examples under any condition")
    names = condition_names(frame)
    baseline = baseline or (DIRECT if DIRECT in names else names[0])
    if baseline not in names:
        raise LLMMapsError(f"--baseline: '{baseline}' is not scored in this run (conditions: {', '.join(names)})")
    domains = sorted(frame["domain"].astype(str).unique())
    acc: list[dict[str, Any]] = []
    for dom in domains:
        for name in names:
            sub = frame[(frame["domain"] == dom) & (frame["condition"] == name)]
            if len(sub):
                acc.append({"domain": dom, "condition": name,
                            **accuracy_with_interval(sub["correct"].to_numpy(dtype=bool),
                                                     sub["task"].astype(str).to_numpy(), n_boot=n_boot, seed=seed)})
    pairs: list[dict[str, Any]] = []
    for name in names:
        if name == baseline:
            continue
        both = paired(frame, baseline, name)
        for dom in domains + ["all"]:
            sub = both if dom == "all" else both[both["domain"] == dom]
            if len(sub):
                pairs.append({"domain": dom, "a": baseline, "b": name,
                              **paired_difference(sub["correct_a"].to_numpy(), sub["correct_b"].to_numpy(),
                                                  sub["task"].astype(str).to_numpy(), n_boot=n_boot, seed=seed)})
    paths = path_stats(frame, names, domains, n_boot=n_boot, seed=seed)
    falloff: list[dict[str, Any]] = []
    if slopes:
        common = set.intersection(*(set(frame.loc[frame["condition"] == n, "example_id"]) for n in names))
        for name in names:
            sub = frame[(frame["condition"] == name) & frame["example_id"].isin(common)].sort_values("row")
            entry: dict[str, Any] = {"condition": name, "n": len(sub)}
            try:
                res = compute_findings(distance=sub["example_dist"].to_numpy(dtype=float),
                                       correct=sub["correct"].astype(bool).tolist(),
                                       domain=sub["domain"].tolist(), task=sub["task"].tolist(),
                                       contrast=tuple(contrast), n_boot=n_boot, seed=seed, n_bins=5,
                                       where=f"{CONDITIONS_FILE} ({name})")
                entry.update({"domains": {d: {k: st[k] for k in ("n", "n_tasks", "accuracy", "slope", "slope_low",
                                                                 "slope_high")}
                                          for d, st in res["domains"].items()},
                              "contrast": res["contrast"], "verdict": res["verdict"]})
            except LLMMapsError as exc:
                entry["error"] = str(exc)
            falloff.append(entry)
    return {"split": split, "baseline": baseline, "conditions": names, "n_examples": int(frame["example_id"].nunique()),
            "n_tasks": int(frame["task"].nunique()), "accuracy": acc, "paired": pairs, "paths": paths,
            "falloff": falloff,
            "unit": {"accuracy": "fraction of examples correct", "diff": "accuracy of b minus accuracy of a on the "
                     "examples scored under both (a = the baseline)", "slope": UNIT,
                     "path": "distance (the run's metric, default layer) of a generated token's state to the "
                             "nearest token-atlas state (a training response step); per example its mean and "
                             "max over the generated tokens"},
            "interval": (f"95 % percentile interval of a task-clustered bootstrap (tasks resampled with replacement; "
                         f"replicates spread by sqrt(G/(G-1)) for G tasks), B = {n_boot}, seed {seed}; task p: a two-sided "
                         "sign-flip test of the tasks' summed differences (every sign pattern up to 12 tasks); "
                         "McNemar's test on the discordant examples beside it (examples as independent; exact "
                         "binomial when fewer than 25, else chi-square with continuity correction); a difference is "
                         f"claimed only with at least {MIN_TASKS_FOR_CLAIM} tasks, when the interval excludes 0 and "
                         "the task p < 0.05")}


def path_stats(frame: pd.DataFrame, names: Sequence[str], domains: Sequence[str], *, n_boot: int,
               seed: int) -> list[dict[str, Any]]:
    """Per domain and condition with token-atlas paths: the mean over examples of each path's mean
    and max distance to the atlas (task-clustered intervals), and the AUROC of the path's max
    distance for an error (does a chain that strays far from every training response go wrong
    more often?). Empty without an atlas."""

    if "path_max_dist" not in frame.columns:
        return []
    out: list[dict[str, Any]] = []
    for dom in domains:
        for name in names:
            sub = frame[(frame["domain"] == dom) & (frame["condition"] == name) & frame["path_max_dist"].notna()]
            if not len(sub):
                continue
            task = sub["task"].astype(str).to_numpy()
            mean_d = sub["path_mean_dist"].to_numpy(dtype=float)
            max_d = sub["path_max_dist"].to_numpy(dtype=float)
            err = ~sub["correct"].to_numpy(dtype=bool)
            row: dict[str, Any] = {"domain": dom, "condition": name, "n": len(sub),
                                   "n_tasks": len(set(task.tolist())),
                                   "mean_dist": float(mean_d.mean()), "max_dist": float(max_d.mean()),
                                   "mean_dist_low": None, "mean_dist_high": None, "max_dist_low": None,
                                   "max_dist_high": None,
                                   "auroc_max_dist_error": _num(weighted_auroc(score=max_d, positive=err)[0]),
                                   "auroc_low": None, "auroc_high": None}
            if row["n_tasks"] >= MIN_TASKS_FOR_INTERVAL:
                w = _task_boot(task, n_boot, seed)
                with np.errstate(invalid="ignore", divide="ignore"):
                    row["mean_dist_low"], row["mean_dist_high"] = _percentile_interval(
                        (w @ mean_d) / w.sum(axis=1), row["mean_dist"], row["n_tasks"])
                    row["max_dist_low"], row["max_dist_high"] = _percentile_interval(
                        (w @ max_d) / w.sum(axis=1), row["max_dist"], row["n_tasks"])
                row["auroc_low"], row["auroc_high"] = _percentile_interval(
                    weighted_auroc(score=max_d, positive=err, weights=w), row["auroc_max_dist_error"], row["n_tasks"],
                    (0.0, 1.0))
            out.append(row)
    return out


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_summary(s: Mapping[str, Any]) -> str:
    """The summary as the text `llm-maps conditions` prints."""
    lines = [f"conditions ({s['split']}): {', '.join(s['conditions'])}; {s['n_examples']} examples in "
             f"{s['n_tasks']} tasks", "", "accuracy per domain and condition (95% task-clustered interval):",
             f"  {'domain':<12} {'condition':<14} {'n':>5} {'tasks':>5} {'acc':>5}  interval"]
    for r in s["accuracy"]:
        interval = (f"[{_f(r['low'])}, {_f(r['high'])}]" if r["low"] is not None and r["high"] is not None else
                    f"[{_f(r.get('wilson_low'))}, {_f(r.get('wilson_high'))}] Wilson over examples ({r['n_tasks']} tasks: "
                    f"too few for an interval over tasks)")
        lines.append(f"  {r['domain']:<12} {r['condition']:<14} {r['n']:>5} {r['n_tasks']:>5} {_f(r['accuracy']):>5}  "
                     f"{interval}")
    if s["paired"]:
        lines += ["", f"paired difference against {s['baseline']} (accuracy of b - a on the same examples):",
                  f"  {'domain':<12} {'b':<14} {'n':>5} {'tasks':>5} {'diff':>6}  {'interval':<16} {'b only':>6} "
                  f"{'a only':>6} {'task p':>7} {'McNemar p':>9}  verdict"]
        for r in s["paired"]:
            lines.append(f"  {r['domain']:<12} {r['b']:<14} {r['n']:>5} {r['n_tasks']:>5} {_f(r['diff'], '+.2f'):>6}  "
                         f"{'[' + _f(r['low'], '+.2f') + ', ' + _f(r['high'], '+.2f') + ']':<16} "
                         f"{r['table']['b_only']:>6} {r['table']['a_only']:>6} {_f(r.get('p_value'), '.3g'):>7} "
                         f"{_f(r['mcnemar']['p_value'], '.3g'):>9}"
                         f"  {r['verdict']}")
    if s.get("paths"):
        lines += ["", "chain distance to the training responses (token atlas; mean over examples of each path's "
                      "mean / max step distance, 95% task-clustered interval; AUROC of the max for an error):",
                  f"  {'domain':<12} {'condition':<14} {'n':>5} {'mean step':<24} {'farthest step':<24} AUROC(error)"]
        for r in s["paths"]:
            lines.append(f"  {r['domain']:<12} {r['condition']:<14} {r['n']:>5} "
                         f"{_f(r['mean_dist'], '.4f') + ' [' + _f(r['mean_dist_low'], '.4f') + ', ' + _f(r['mean_dist_high'], '.4f') + ']':<24} "
                         f"{_f(r['max_dist'], '.4f') + ' [' + _f(r['max_dist_low'], '.4f') + ', ' + _f(r['max_dist_high'], '.4f') + ']':<24} "
                         f"{_f(r['auroc_max_dist_error'])} [{_f(r['auroc_low'])}, {_f(r['auroc_high'])}]")
    if s["falloff"]:
        lines += ["", "falloff slope per condition (log-odds per unit distance percentile, 95% task-clustered "
                      "interval; the examples scored under every condition):"]
        for r in s["falloff"]:
            if "error" in r:
                lines.append(f"  {r['condition']:<14} not computed: {r['error']}")
                continue
            parts = [f"{d} {_f(st['slope'])} [{_f(st['slope_low'])}, {_f(st['slope_high'])}] ({st['n_tasks']} tasks)"
                     for d, st in r["domains"].items()]
            lines.append(f"  {r['condition']:<14} " + "; ".join(parts))
            lines.append(f"  {'':<14} {r['verdict']}")
    lines += ["", f"({s['interval']})"]
    return "\n".join(lines)
