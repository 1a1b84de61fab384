"""Scoring metrics: how `score`, `score --conditions` and the playground decide that an answer is
right. Torch-free: the registry, the text metrics and the rule that picks an example's metric.

A metric is one ``Metric`` registered with ``register_metric``; everything that scores reads the
registry (``get_metric``, ``metric_names``, ``default_thresholds``), so a new metric is one
registration (here, or in any module imported before scoring) and no other edit:

- a **text metric** scores the generated output (or the answer extracted from a chain of thought)
  against the reference: ``Metric("exact", 0.5, score=exact_match)``;
- a **model-based metric** (multiple choice) scores an answer the model picks among the example's
  choices: ``choose`` maps the choices and their summed log-likelihoods after the prompt (the pass
  ``score`` runs once per example and stores in examples.parquet ``choice_logprobs``, reused by every
  such metric) to the index of the answer, which ``score`` then scores against the reference.
  ``mc`` (lm-eval's ``acc``) picks the highest log-likelihood.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import LLMMapsError
from . import model_stack

__all__ = ["Metric", "register_metric", "unregister_metric", "get_metric", "metric_names", "default_thresholds",
           "normalize_answer", "exact_match", "answer_contained", "rouge_l", "same_choice", "argmax_choice",
           "FREE_TEXT_CATEGORIES", "parse_metric_spec", "parse_thresholds", "metric_for", "run_thresholds",
           "example_metric"]

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
def _rouge() -> Any:

    model_stack.require("ROUGE-L scoring", ("rouge_score",))
    from rouge_score import rouge_scorer  # type: ignore[import-untyped,unused-ignore]

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(output: str, reference: str) -> float:
    return float(_rouge().score(reference or "", output or "")["rougeL"].fmeasure)


def same_choice(answer: str, reference: str) -> float:
    """1 when the chosen answer is the reference choice (surrounding spaces ignored)."""
    return float(answer.strip() == reference.strip())


def argmax_choice(choices: Sequence[str], logprobs: Sequence[float]) -> int:
    """The choice with the highest summed log-likelihood (lm-eval's ``acc``)."""
    return int(np.argmax(list(logprobs)))


@dataclass(frozen=True)
class Metric:
    """A scoring metric. ``score(answer, reference)`` in [0, 1]; ``threshold``: the default of
    ``correct = score >= threshold`` (``--threshold`` overrides it). ``choose``: None for a text
    metric (the answer is the output); for a model-based metric, the index of the answer given the
    example's choices and their log-likelihoods (the example must have choices)."""
    name: str
    threshold: float
    score: Callable[[str, str], float]
    choose: Callable[[Sequence[str], Sequence[float]], int] | None = None
    description: str = ""

    @property
    def uses_choices(self) -> bool:
        """Scored from the model's choice log-likelihoods (not from a generated output)."""
        return self.choose is not None

    def answer(self, choices: Sequence[str], logprobs: Sequence[float]) -> str:
        """The choice a model-based metric picks."""
        if self.choose is None:
            raise ValueError(f"metric '{self.name}' scores text, not choices")
        return choices[self.choose(choices, logprobs)]


_REGISTRY: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Make ``metric`` known to `score` (``--metric``, ``--threshold``), `score --conditions` and
    the playground; a name registered again is replaced. Returns the metric."""
    if not metric.name or metric.name == "auto" or any(c in metric.name for c in ",= "):
        raise ValueError(f"metric name '{metric.name}': not auto, no commas, '=' or spaces")
    _REGISTRY[metric.name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Forget metric ``name`` (tests)."""
    _REGISTRY.pop(name, None)


def metric_names() -> tuple[str, ...]:
    """Every registered metric, in registration order."""
    return tuple(_REGISTRY)


def get_metric(name: str) -> Metric:
    """The registered metric ``name`` (LLMMapsError naming the known ones when there is none)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise LLMMapsError(f"unknown metric '{name}' (known: {', '.join(_REGISTRY)})") from None


def default_thresholds() -> dict[str, float]:
    return {name: m.threshold for name, m in _REGISTRY.items()}


register_metric(Metric("exact", 0.5, exact_match, description="normalised output equals the reference"))
register_metric(Metric("contains", 0.5, answer_contained,
                       description="the normalised reference appears in the normalised output as whole words"))
register_metric(Metric("rougeL", 0.4, rouge_l, description="ROUGE-L F-measure of the output against the reference"))
register_metric(Metric("mc", 0.5, same_choice, choose=argmax_choice,
                       description="multiple choice: the choice with the highest log-likelihood is the reference"))


def parse_metric_spec(spec: str | None) -> tuple[str, dict[str, str]]:
    """``auto`` | a metric name | ``default,category=metric,task=metric`` -> (default, overrides)."""
    default, overrides = "auto", {}
    known = metric_names()
    for part in (spec or "auto").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            key, _, value = part.partition("=")
            if value.strip() not in known:
                raise LLMMapsError(f"--metric: unknown metric '{value.strip()}' for '{key.strip()}' "
                                   f"(known: {', '.join(known)})")
            overrides[key.strip()] = value.strip()
        else:
            if part not in known + ("auto",):
                raise LLMMapsError(f"--metric: unknown metric '{part}' (auto, {', '.join(known)})")
            default = part
    return default, overrides


def parse_thresholds(spec: str | None) -> dict[str, float]:
    out = default_thresholds()
    known = metric_names()
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in known:
            raise LLMMapsError(f"--threshold: expected metric=value with metric in {', '.join(known)}, got '{part}'")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise LLMMapsError(f"--threshold: '{value}' is not a number") from None
    return out


def metric_for(category: str, task: str, has_choices: bool, default: str, overrides: Mapping[str, str]) -> str:
    """Which metric scores one example: task override, category override, default, else auto
    (``mc`` with choices, ROUGE-L for free-text categories, else answer-contained)."""
    for key in (task, str(task).split("/")[0], category):
        if key in overrides:
            return overrides[key]
    if default != "auto":
        return default
    if has_choices:
        return "mc"
    return "rougeL" if category in FREE_TEXT_CATEGORIES else "contains"


def run_thresholds(scoring: Mapping[str, Any] | None) -> dict[str, float]:
    """The thresholds a scored run decided ``correct`` with (defaults for metrics it did not set)."""
    return {**default_thresholds(), **((scoring or {}).get("thresholds") or {})}


def example_metric(*, stored: Any, category: str, task: str, has_choices: bool,
                   scoring: Mapping[str, Any] | None) -> str:
    """The metric of one example of a run: the one `score` stored for it (examples.parquet
    ``metric``), else the run's rule (``metric_for`` with the metric spec `score` was given)."""
    if stored is not None and stored == stored and str(stored):  # not None / NaN / ""
        return str(stored)
    scoring = scoring or {}
    default = scoring.get("metric_default")
    overrides = scoring.get("metric_overrides")
    if default is None:
        default, overrides = parse_metric_spec(scoring.get("metric") or "auto")
    return metric_for(category, task, has_choices, str(default), overrides or {})
