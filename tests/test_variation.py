"""Try a variation: a prompt edited from a run's example is scored with that example's metric and
the run's threshold, and measured against the original example as well as against train."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_jsonl
from interfaces.cli import main
from llm_maps.conditions import EXTRACTION_RULES, cot_choice_prompt, extract_answer, is_numeric
from llm_maps.contract import PointRecord, check
from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import Run
from llm_maps.scoring import get_metric
from pipelines.worker import point_record, run_job

THRESHOLDS = {"contains": 0.5, "rougeL": 0.2, "mc": 0.5, "exact": 0.5}  # rougeL: not the default 0.4


def _rows():
    """Arithmetic (contains), summaries (rougeL) and multiple choice, train and test."""
    rows = []
    for i in range(24):
        row = {"id": f"q{i}", "instruction": f"Question {i}: what is {i} plus {i}?",
               "context": "the sea and the wind" if i % 3 == 0 else "",
               "response": str(2 * i) if i % 2 == 0 else f"the answer is {2 * i} and the sea",
               "category": ["arithmetic", "summarization"][i % 2], "split": "train" if i < 14 else "test"}
        if i % 4 == 1:
            row["choices"] = [f"the answer is {2 * i} and the sea", str(2 * i + 1), "seven"]
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("variation")
    data = write_jsonl(root / "d.jsonl", _rows())
    out = root / "run"
    assert main(["build", "--model", str(tiny_models["llama"]), "--data", str(data), "--out", str(out),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--no-progress"]) == 0
    assert main(["score", str(out), "--max-new-tokens", "4", "--threshold", "rougeL=0.2", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def session(run):
    from pipelines.engine import RunSession

    return RunSession(run, warm=False)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _fp16(state) -> np.ndarray:
    return np.asarray(state, dtype=np.float16).astype(np.float64)


def test_the_unedited_prompt_is_the_example_itself(run, session):
    """Unedited: distance ~0 to the original, the stored dist_to_train, and with the stored output
    the stored score, metric and correctness (so a variation is scored as `llm-maps score` scores)."""
    r = Run(run)
    ex = r.examples
    assert r.manifest["scoring"]["thresholds"] == THRESHOLDS
    test = np.flatnonzero((ex["split"] == "test").to_numpy())
    seen = set()
    for i in test:
        placed = session.place(ex["instruction"][i], ex["context"][i])
        assert placed["prompt"] == ex["prompt"][i]
        v = session.variation(ex["example_id"][i], placed, ex["output"][i])
        assert v["dist_to_original"] == pytest.approx(0.0, abs=1e-6)  # both fp16-rounded: the same vector
        assert placed["dist_to_train"] == pytest.approx(ex["dist_to_train"][i], abs=1e-6)
        assert v["original_dist_to_train"] == pytest.approx(float(ex["dist_to_train"][i]))
        assert v["metric"] == ex["metric"][i] and v["threshold"] == THRESHOLDS[v["metric"]]
        assert v["score"] == pytest.approx(float(ex["score"][i])) and v["correct"] == bool(ex["correct"][i])
        if v["metric"] != "mc":
            ref = ex["reference"][i]
            assert v["answer"] == ex["output"][i] and v["extraction"] == "output"
            assert v["score"] == get_metric(v["metric"]).score(ex["output"][i], ref)
        seen.add(v["metric"])
    assert seen == {"contains", "rougeL", "mc"}
    # a train example: its metric comes from the run's rule (train rows are not scored)
    j = int(np.flatnonzero((ex["split"] == "train").to_numpy() & (ex["category"] == "summarization").to_numpy()
                           & ex["choices"].isna().to_numpy())[0])
    v = session.variation(ex["example_id"][j], session.place(ex["instruction"][j], ex["context"][j]), "the sea")
    assert v["metric"] == "rougeL" and v["threshold"] == 0.2
    assert v["score"] == get_metric("rougeL").score("the sea", ex["reference"][j])
    assert v["dist_to_original"] == pytest.approx(0.0, abs=1e-6)


def _job(kind: str, instruction: str, context: str, example_id: str, **kw) -> dict:
    return {"id": "j", "created": 1.0, "kind": kind,
            "payload": {"instruction": instruction, "context": context, "example_id": example_id, **kw}}


def test_an_edited_prompt_is_scored_with_the_examples_metric_and_threshold(run, session):
    r = Run(run)
    ex = r.examples
    enc = r.encodings()
    train = np.flatnonzero((ex["split"] == "train").to_numpy())
    checked = set()
    for i in np.flatnonzero((ex["split"] == "test").to_numpy() & (ex["metric"] != "mc").to_numpy()):
        edited = ex["instruction"][i] + " Answer with the paper and the press."
        job = _job("generate", edited, ex["context"][i], ex["example_id"][i], max_new_tokens=6)
        res = run_job(session, job)
        v, metric = res["variation"], ex["metric"][i]
        assert res["prompt"] != ex["prompt"][i] and v["metric"] == metric
        assert v["score"] == get_metric(metric).score(res["output"], ex["reference"][i])
        assert v["correct"] == (v["score"] >= THRESHOLDS[metric])
        # distances by hand: the edited prompt's encoding, fp16 as stored, to the original and to train
        state = _fp16(session.place(edited, ex["context"][i])["state"])
        assert v["dist_to_original"] == pytest.approx(_cosine(state, enc[i]), abs=1e-5)
        assert v["dist_to_original"] > 1e-4
        nearest = min(_cosine(state, enc[t]) for t in train)
        assert res["dist_to_train"] == pytest.approx(nearest, abs=1e-5)
        record = point_record(job, res)
        assert record["variation"] == v and check(record, PointRecord) == []  # the contract (docs/run-folder.md)
        checked.add(metric)
    assert checked == {"contains", "rougeL"}
    # placed only: distances, but a text metric has nothing to score
    i = int(np.flatnonzero((ex["split"] == "test").to_numpy() & (ex["metric"] == "contains").to_numpy())[0])
    res = run_job(session, _job("place", ex["instruction"][i] + " now", "", ex["example_id"][i]))
    v = res["variation"]
    assert v["score"] is None and v["correct"] is None and v["note"].startswith("placed only")
    assert v["dist_to_original"] > 0 and v["metric"] == "contains"


def test_multiple_choice_takes_the_choice_the_edited_prompt_makes_most_likely(run, session):
    from pipelines.generate import choice_loglikelihoods

    ex = Run(run).examples
    rows = np.flatnonzero((ex["split"] == "test").to_numpy() & (ex["metric"] == "mc").to_numpy())
    assert len(rows) >= 2
    for i in rows:
        choices = list(ex["choices"][i])
        for edited in (ex["instruction"][i] + " Pick one.", "Question: " + ex["instruction"][i][::-1]):
            res = run_job(session, _job("place", edited, ex["context"][i], ex["example_id"][i]))
            lls = [c["logprob"] for c in choice_loglikelihoods(session.loaded, res["prompt"], choices)]
            best = choices[int(np.argmax(lls))]
            v = res["variation"]
            assert v["metric"] == "mc" and v["answer"] == best and v["extraction"] == "output"
            assert v["score"] == float(best == ex["reference"][i]) and v["correct"] == (v["score"] >= 0.5)
    # step by step: the choice most likely after the prompt, the reasoning and "So the answer is"
    i = int(rows[0])
    choices = list(ex["choices"][i])
    res = run_job(session, _job("generate", ex["instruction"][i], ex["context"][i],
                                ex["example_id"][i], cot=True, max_new_tokens=5))
    # as `score --conditions cot` does it: the prompt, the cue, the reasoning, "So the answer is"
    lls = [c["logprob"] for c in choice_loglikelihoods(session.loaded, cot_choice_prompt(res["prompt"], res["output"]),
                                                       choices)]
    v = res["variation"]
    assert v["answer"] == choices[int(np.argmax(lls))] and v["extraction"] == "choice_after_reasoning"
    assert v["score"] == float(v["answer"] == ex["reference"][i])


def test_a_step_by_step_variation_scores_the_extracted_answer(run, session):
    ex = Run(run).examples
    i = int(np.flatnonzero((ex["split"] == "test").to_numpy() & (ex["metric"] == "contains").to_numpy())[0])
    res = run_job(session, _job("generate", ex["instruction"][i], ex["context"][i],
                                ex["example_id"][i], cot=True, max_new_tokens=8))
    v, ref = res["variation"], ex["reference"][i]
    answer, rule = extract_answer(res["output"], numeric=is_numeric(ref))
    assert is_numeric(ref) and v["answer"] == answer and v["extraction"] == rule and rule in EXTRACTION_RULES
    assert v["score"] == get_metric("contains").score(answer, ref)


def test_an_unknown_example_fails_the_job_and_the_api_answers_422(run, session, tmp_path):
    from dashboard.app import create_app

    with pytest.raises(LLMMapsError, match=r"field 'example_id': unknown example 'nope' in run 'run'"):
        run_job(session, _job("generate", "x", "", "nope"))
    app = create_app([run], state_dir=tmp_path / "state")
    client = app.server.test_client()
    cases = [({"instruction": "x", "example_id": "nope"}, "field 'example_id': unknown example 'nope' in run 'run'"),
             ({"instruction": "x", "example_id": 3}, "field 'example_id': expected a string"),
             ({"instruction": "x", "example_id": "  "}, "field 'example_id': must be an example id of the run"),
             ({"instruction": "x", "example_id": "q15", "cot": "yes"}, "field 'cot': expected true or false")]
    for body, message in cases:
        r = client.post("/api/runs/run/points", json=body)
        assert r.status_code == 422 and r.get_json()["error"].startswith(message), (body, r.get_json())
    r = client.post("/api/runs/run/points", json={"instruction": "x", "example_id": "q15",
                                                  "cot": True, "generate": True})
    assert r.status_code == 202
    payload = app.server.config["LLM_MAPS_QUEUE"].get(r.get_json()["id"])["payload"]
    assert payload["example_id"] == "q15" and payload["cot"] is True


def test_think_step_by_step_is_the_cot_condition(run, session, tmp_path):
    """The playground's "think step by step" and `score --conditions cot` are one construction
    (llm_maps.conditions.cot_prompt): the answer starts with the cue after the plain prompt, so the
    point on the map is the plain prompt's, and the generated answer is the cot condition's."""
    import shutil

    import pandas as pd

    import pipelines.conditions as PC
    from llm_maps.conditions import DEFAULT_COT_CUE, cot_prompt
    from pipelines.conditions import score_conditions

    assert PC.cot_prompt is cot_prompt  # the pipeline uses the shared function, not a copy
    assert cot_prompt("Q: 2 + 2?\nA:") == "Q: 2 + 2?\nA: Let's think step by step."
    assert cot_prompt("### Response:\n") == "### Response:\nLet's think step by step."
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    score_conditions(copy, conditions="direct,cot", cot_max_new_tokens=6, progress=False, log=lambda m: None)
    cond = pd.read_parquet(copy / "conditions.parquet")
    cot = cond[cond["condition"] == "cot"].set_index("example_id")
    ex = Run(run).examples
    checked = 0
    for i in np.flatnonzero((ex["split"] == "test").to_numpy())[:4]:
        plain = run_job(session, _job("place", ex["instruction"][i], ex["context"][i], None))
        res = run_job(session, _job("generate", ex["instruction"][i], ex["context"][i], None, cot=True,
                                    max_new_tokens=6))
        # placed as the plain prompt: the same prompt, point and distance as without the cue
        assert res["prompt"] == plain["prompt"] == ex["prompt"][i] and DEFAULT_COT_CUE not in res["prompt"]
        assert (res["x"], res["y"], res["dist_to_train"]) == (plain["x"], plain["y"], plain["dist_to_train"])
        assert res["response_prefix"] == DEFAULT_COT_CUE
        # generated as the cot condition generated it: from the same text, the same answer
        row = cot.loc[ex["example_id"][i]]
        assert row["prompt"] == cot_prompt(res["prompt"]) and row["output"] == res["output"]
        record = point_record(_job("generate", ex["instruction"][i], ex["context"][i], None, cot=True), res)
        assert record["response_prefix"] == DEFAULT_COT_CUE and record["options"]["cot"] is True
        assert check(record, PointRecord) == []
        checked += 1
    assert checked == 4
