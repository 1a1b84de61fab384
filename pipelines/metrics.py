"""Text metrics for scoring an output against its reference. Pure functions, no model needed.

``mc`` (multiple choice by log-likelihood) needs the model and lives in pipelines.score; its
score is 1 when the reference choice has the highest summed log-probability (lm-eval's ``acc``).
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

from llm_maps.errors import LLMMapsError

TEXT_METRICS = ("exact", "contains", "rougeL")
ALL_METRICS = TEXT_METRICS + ("mc",)
DEFAULT_THRESHOLDS = {"exact": 0.5, "contains": 0.5, "mc": 0.5, "rougeL": 0.4}
# categories whose references are free text: ROUGE-L; the rest (short answers): answer-contained
FREE_TEXT_CATEGORIES = {"summarization", "creative_writing", "copywriting", "brainstorming",
                        "general_qa", "open_qa_long"}

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = (text or "").lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(output: str, reference: str) -> float:
    return float(normalize_answer(output) == normalize_answer(reference))


def answer_contained(output: str, reference: str) -> float:
    """1 when the normalised reference appears in the normalised output as whole words."""
    ref = normalize_answer(reference)
    if not ref:
        return 0.0
    return float(f" {ref} " in f" {normalize_answer(output)} ")


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(output: str, reference: str) -> float:
    return float(_rouge().score(reference or "", output or "")["rougeL"].fmeasure)


TEXT_METRIC_FUNCS = {"exact": exact_match, "contains": answer_contained, "rougeL": rouge_l}


def parse_metric_spec(spec: str | None) -> tuple[str, dict[str, str]]:
    """``auto`` | a metric name | ``default,category=metric,task=metric`` -> (default, overrides)."""
    default, overrides = "auto", {}
    for part in (spec or "auto").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            key, _, value = part.partition("=")
            if value.strip() not in ALL_METRICS:
                raise LLMMapsError(f"--metric: unknown metric '{value.strip()}' for '{key.strip()}' "
                                   f"(known: {', '.join(ALL_METRICS)})")
            overrides[key.strip()] = value.strip()
        else:
            if part not in ALL_METRICS + ("auto",):
                raise LLMMapsError(f"--metric: unknown metric '{part}' (auto, {', '.join(ALL_METRICS)})")
            default = part
    return default, overrides


def parse_thresholds(spec: str | None) -> dict[str, float]:
    out = dict(DEFAULT_THRESHOLDS)
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ALL_METRICS:
            raise LLMMapsError(f"--threshold: expected metric=value with metric in {', '.join(ALL_METRICS)}, got '{part}'")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise LLMMapsError(f"--threshold: '{value}' is not a number") from None
    return out


def metric_for(category: str, task: str, has_choices: bool, default: str, overrides: dict[str, str]) -> str:
    """Which metric scores one example: task override, category override, default, else auto."""
    for key in (task, str(task).split("/")[0], category):
        if key in overrides:
            return overrides[key]
    if default != "auto":
        return default
    if has_choices:
        return "mc"
    return "rougeL" if category in FREE_TEXT_CATEGORIES else "contains"


def run_thresholds(scoring: dict | None) -> dict[str, float]:
    """The thresholds a scored run decided ``correct`` with (defaults for metrics it did not set)."""
    return {**DEFAULT_THRESHOLDS, **((scoring or {}).get("thresholds") or {})}


def example_metric(*, stored, category: str, task: str, has_choices: bool, scoring: dict | None) -> str:
    """The metric of one example of a run: the one `score` stored for it (examples.parquet
    ``metric``), else the run's rule (``metric_for`` with the metric spec `score` was given)."""
    if stored is not None and stored == stored and str(stored):  # not None / NaN / ""
        return str(stored)
    scoring = scoring or {}
    default = scoring.get("metric_default")
    overrides = scoring.get("metric_overrides")
    if default is None:
        default, overrides = parse_metric_spec(scoring.get("metric") or "auto")
    return metric_for(category, task, has_choices, default, overrides or {})
