"""The scoring-metric registry (llm_maps.scoring): a metric registered once is what `score` uses
(--metric, per-task overrides, --threshold, the stored metric and correct), a text metric from the
output, a model-based one from the stored choice log-likelihoods; no other edit, no model needed to
re-score stored outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard.synthetic import write_synthetic_run
from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import EXAMPLES, Run, write_parquet_atomic
from llm_maps.scoring import (Metric, default_thresholds, get_metric, metric_names, parse_metric_spec,
                              register_metric, same_choice, unregister_metric)
from pipelines.score import score_run


@pytest.fixture
def metric():
    """A text metric known only to this test: the share of the reference's characters in the output."""
    def overlap(output: str, reference: str) -> float:
        ref = set(reference)
        return len(ref & set(output)) / len(ref) if ref else 0.0

    m = register_metric(Metric("char_overlap", 0.75, overlap, description="test metric"))
    yield m
    unregister_metric("char_overlap")
    assert "char_overlap" not in metric_names()


def test_registering_makes_a_metric_known_everywhere(metric):
    assert get_metric("char_overlap") is metric and not metric.uses_choices
    assert default_thresholds()["char_overlap"] == 0.75
    assert parse_metric_spec("contains,arithmetic=char_overlap") == ("contains", {"arithmetic": "char_overlap"})
    with pytest.raises(LLMMapsError, match="unknown metric 'nope'.*char_overlap"):
        parse_metric_spec("nope")
    with pytest.raises(ValueError):
        register_metric(Metric("a,b", 0.5, metric.score))


def test_a_registered_text_metric_scores_a_run_without_other_edits(tmp_path, metric):
    run_dir = write_synthetic_run(tmp_path / "run", n=60)
    section = score_run(run_dir, generate="never", metric="char_overlap", thresholds="char_overlap=0.5",
                        progress=False, log=lambda m: None)
    ex = Run(run_dir).examples
    test = ex[ex["split"] == "test"]
    assert (test["metric"] == "char_overlap").all() and ex.loc[ex["split"] == "train", "metric"].isna().all()
    expected = [metric.score(str(o), str(r)) for o, r in zip(test["output"], test["reference"])]
    np.testing.assert_allclose(test["score"].astype(float), expected)
    assert test["correct"].tolist() == [s >= 0.5 for s in expected]
    assert section["thresholds"]["char_overlap"] == 0.5 and section["by_metric"] == {"char_overlap": len(test)}
    hist = Run(run_dir).manifest["history"][-1]
    assert hist["stage"] == "score" and hist["params"]["metric"] == "char_overlap"

    # a per-category override beside a built-in default, re-scored from the stored outputs
    score_run(run_dir, generate="never", metric=f"exact,{test['category'].iloc[0]}=char_overlap", progress=False,
              log=lambda m: None)
    test = Run(run_dir).examples.query("split == 'test'")
    assert set(test["metric"]) == {"exact", "char_overlap"}
    assert (test.loc[test["category"] == test["category"].iloc[0], "metric"] == "char_overlap").all()


def test_a_registered_choice_metric_scores_from_the_stored_loglikelihoods(tmp_path):
    """A model-based metric (here lm-eval's acc_norm: log-likelihood per character) reuses the choice
    log-likelihoods `score` stores; with them stored, re-scoring needs no model."""
    run_dir = write_synthetic_run(tmp_path / "run", n=40)
    frame = pd.read_parquet(run_dir / EXAMPLES)
    rng = np.random.default_rng(0)
    choices = [[str(r), "x", "a much longer wrong answer"] for r in frame["reference"]]
    lps = [[float(v) for v in rng.normal(-5, 2, size=3)] for _ in range(len(frame))]
    frame["choices"], frame["choice_logprobs"] = choices, lps
    frame["output"] = pd.array([None] * len(frame), dtype="string")
    write_parquet_atomic(run_dir / EXAMPLES, frame)
    norm = register_metric(Metric("mc_norm", 0.5, same_choice,
                                  choose=lambda ch, lp: int(np.argmax([v / len(c) for c, v in zip(ch, lp)]))))
    try:
        section = score_run(run_dir, generate="never", metric="mc_norm", mc_output="choice", progress=False,
                            log=lambda m: None)
        test = Run(run_dir).examples.query("split == 'test'")
        picks = [c[int(np.argmax([v / len(x) for x, v in zip(c, lp)]))] for c, lp in
                 zip(test["choices"], test["choice_logprobs"])]
        assert test["output"].tolist() == picks  # mc_output choice: the picked choice is the output
        assert test["score"].tolist() == [float(p == r) for p, r in zip(picks, test["reference"])]
        assert section["by_metric"] == {"mc_norm": len(test)} and norm.uses_choices

        # rows without choices cannot be scored by it: one line naming the row and the field
        frame.loc[frame["split"] == "test", "choices"] = None
        write_parquet_atomic(run_dir / EXAMPLES, frame)
        with pytest.raises(LLMMapsError, match="field 'choices': metric mc_norm needs choices"):
            score_run(run_dir, generate="never", metric="mc_norm", progress=False, log=lambda m: None)
    finally:
        unregister_metric("mc_norm")
