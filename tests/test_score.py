"""Scoring: generation stored with logprobs, per-task metrics, re-scoring without generation,
falloff statistics written into the run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import write_jsonl
from contract_helpers import assert_follows_contract
from interfaces.cli import main
from llm_maps.errors import LLMMapsError
from llm_maps.falloff import falloff_stats
from llm_maps.runfolder import Run
from pipelines.generate import choice_loglikelihoods, generate
from llm_maps.scoring import answer_contained, exact_match, metric_for, normalize_answer, rouge_l
from pipelines.models import load_model


def test_text_metrics():
    assert normalize_answer("The  Answer, is: 42!") == "answer is 42"
    assert exact_match("42.", "42") == 1.0 and exact_match("it is 42", "42") == 0.0
    assert answer_contained("I think it is 42.", "42") == 1.0
    assert answer_contained("I think it is 420.", "42") == 0.0  # whole words only
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("a cat sat", "the cat sat on the mat") == pytest.approx(2 * (2 / 3 * 2 / 6) / (2 / 3 + 2 / 6))
    assert metric_for("summarization", "t", False, "auto", {}) == "rougeL"
    assert metric_for("open_qa", "t", False, "auto", {}) == "contains"
    assert metric_for("open_qa", "t", True, "auto", {}) == "mc"
    assert metric_for("open_qa", "arith/2d", False, "auto", {"arith": "exact"}) == "exact"


def _rows():
    rows = []
    for i in range(16):
        row = {"id": f"q{i}", "instruction": f"Question {i}: what is {i} plus {i}?", "context": "",
               "response": str(2 * i), "category": ["arithmetic", "summarization"][i % 2],
               "split": "train" if i < 8 else "test"}
        if i % 4 == 1:
            row["choices"] = [str(2 * i), str(2 * i + 1), "seven"]
        rows.append(row)
    return rows


@pytest.fixture
def run_dir(tiny_models, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", _rows())
    out = tmp_path / "run"
    assert main(["build", "--model", str(tiny_models["llama"]), "--data", str(data), "--out", str(out),
                 "--template", "dolly", "--projection", "pca", "--no-progress"]) == 0
    return out


def test_score_generates_scores_and_rescoring_does_not_regenerate(run_dir, tiny_models, capsys):
    assert main(["score", str(run_dir), "--max-new-tokens", "5", "--batch-size", "3", "--no-progress"]) == 0
    run = Run(run_dir)
    ex = run.examples.set_index("example_id")
    test, train = ex[ex.split == "test"], ex[ex.split == "train"]
    assert test["output"].notna().all() and train["output"].isna().all()
    assert train["score"].isna().all() and train["correct"].isna().all()  # unscored stays null, never 0
    assert test["score"].notna().all()
    # per-example metric: mc where choices exist, else by category
    assert test.loc["q9", "metric"] == "mc" and test.loc["q13", "metric"] == "mc"
    assert test.loc["q8", "metric"] == "contains" and test.loc["q11", "metric"] == "rougeL"
    # outputs equal a direct greedy generation, with the model's logprobs
    loaded = load_model(str(tiny_models["llama"]))
    direct = generate(loaded, [test.loc["q10", "prompt"]], max_new_tokens=5, stop_strings=["### End"])[0]
    assert test.loc["q10", "output"] == direct.text
    assert list(test.loc["q10", "output_token_ids"]) == direct.token_ids
    np.testing.assert_allclose(list(test.loc["q10", "output_logprobs"]), direct.logprobs, atol=1e-5)
    # mc: the argmax of the stored choice log-likelihoods against the reference
    lls = choice_loglikelihoods(loaded, test.loc["q9", "prompt"], ["18", "19", "seven"])
    np.testing.assert_allclose(list(test.loc["q9", "choice_logprobs"]), [r["logprob"] for r in lls], atol=1e-4)
    assert test.loc["q9", "score"] == float(np.argmax([r["logprob"] for r in lls]) == 0)
    # contains / rougeL scores are the metric of the stored output
    assert test.loc["q8", "score"] == answer_contained(test.loc["q8", "output"], "16")
    assert test.loc["q11", "score"] == pytest.approx(rouge_l(test.loc["q11", "output"], "22"))
    assert test["correct"].tolist() == (test["score"] >= test["metric"].map({"mc": .5, "contains": .5, "rougeL": .4})).tolist()
    m = run.manifest["scoring"]
    assert m["thresholds"]["rougeL"] == 0.4 and m["generation"]["max_new_tokens"] == 5
    # test rows 8..15: even = arithmetic (contains), 11 and 15 = summarization (rougeL), 9 and 13 have choices
    assert m["scored"] == 8 and m["by_metric"] == {"contains": 4, "rougeL": 2, "mc": 2}

    # re-score with another metric: no model load, same outputs, new scores
    outputs = test["output"].tolist()
    import pipelines.models as models

    def boom(*a, **k):
        raise AssertionError("re-scoring must not load the model")

    orig = models.load_model
    models.load_model = boom
    try:
        assert main(["score", str(run_dir), "--generate", "never", "--metric", "exact",
                     "--threshold", "exact=1.0"]) == 0
    finally:
        models.load_model = orig
    ex2 = Run(run_dir).examples.set_index("example_id")
    t2 = ex2[ex2.split == "test"]
    assert t2["output"].tolist() == outputs
    assert set(t2["metric"]) == {"exact"}
    assert t2["score"].tolist() == [exact_match(o, r) for o, r in zip(t2["output"], t2["reference"])]
    assert Run(run_dir).manifest["scoring"]["thresholds"]["exact"] == 1.0
    assert_follows_contract(run_dir)
    assert [h["stage"] for h in Run(run_dir).manifest["history"]][-2:] == ["score", "score"]


def test_falloff_written_for_every_layer_and_metric(run_dir, capsys):
    assert main(["falloff", str(run_dir)]) == 2  # not scored yet: clear error
    assert "no scored examples" in capsys.readouterr().err
    assert main(["score", str(run_dir), "--max-new-tokens", "3", "--no-progress"]) == 0
    assert main(["falloff", str(run_dir), "--bins", "2"]) == 0
    printed = capsys.readouterr().out
    run = Run(run_dir)
    data = json.loads((run_dir / "falloff.json").read_text())
    assert [(v["layer"], v["metric"]) for v in data["variants"]] == [
        (k, m) for k in run.layers for m in ("cosine", "euclidean")]
    default = [v for v in data["variants"] if v["default"]]
    assert len(default) == 1 and default[0]["layer"] == run.default_layer and default[0]["metric"] == "cosine"
    ex = run.examples
    test = ex[ex.split == "test"]
    expected = falloff_stats(test["dist_to_train"].to_numpy(), test["correct"].astype(object).tolist(),
                             test["domain"].tolist(), n_bins=2)
    assert default[0]["stats"]["all"]["n"] == expected["all"]["n"] == 8
    assert [b["correct"] for b in default[0]["stats"]["all"]["bins"]] == [b["correct"] for b in expected["all"]["bins"]]
    assert set(default[0]["stats"]) == {"all", "Chollet", "Reasoning"}
    assert "accuracy vs distance to train" in printed and "Chollet:" in printed and "Reasoning:" in printed
    assert_follows_contract(run_dir)
    assert [h["stage"] for h in run.manifest["history"]] == ["encode", "project", "neighbours", "score", "falloff"]


def test_mc_without_choices_is_a_clear_error(run_dir, capsys):
    assert main(["score", str(run_dir), "--metric", "mc", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "field 'choices': metric mc needs choices" in err and "row " in err
    assert Run(run_dir).examples["score"].isna().all()  # nothing written


def test_mc_output_choice_skips_generation_for_multiple_choice(run_dir):
    assert main(["score", str(run_dir), "--max-new-tokens", "3", "--mc-output", "choice", "--no-progress"]) == 0
    ex = Run(run_dir).examples.set_index("example_id")
    for eid in ("q9", "q13"):
        row = ex.loc[eid]
        assert row["metric"] == "mc" and row["output_token_ids"] is None
        assert row["output"] == list(row["choices"])[int(np.argmax(list(row["choice_logprobs"])))]
    assert ex.loc["q8", "output_token_ids"] is not None  # text metrics still generate
    assert Run(run_dir).manifest["scoring"]["mc_output"] == "choice"
