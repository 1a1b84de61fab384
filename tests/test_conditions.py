"""Conditions (direct, chain of thought, nearest-example prompting) over the whole test set:
answer extraction rules, the neighbours:K prompt, conditions.parquet stored and reread exactly
against recomputation with the model, skipping what is scored, the statistics against statsmodels
and simulated data with a known answer, and falloff / findings / summary by condition."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import dolly_rows, write_jsonl
from interfaces.cli import main
from llm_maps.conditions import (CONDITIONS_FILE, MC_COT_SUFFIX, accuracy_with_interval, extract_answer,
                                 format_summary, is_numeric, mcnemar, outcomes, paired, paired_difference,
                                 parse_conditions, summarize, with_examples)
from llm_maps.contract import CONDITION_COLUMNS, Manifest, check
from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import Run


# --- pure parts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("output, numeric, answer, rule", [
    ("First 3 + 4 = 7. Then 7 * 2 = 14.\nSo the answer is 14.", True, "14", "last_number"),
    ("The answer is 1,024 apples, since 2^10 = 1024... wait", True, "1024", "last_number"),
    ("We add 12 and 30 to get 42", True, "42", "last_number"),
    ("Subtract: 5 - 8 = −3", True, "-3", "last_number"),
    ("Let me see. The answer is: Paris.\nThat is the capital.", False, "Paris", "answer_is"),
    ("so the answer is **positive**", False, "positive", "answer_is"),
    ("It rains a lot there.\nTherefore: London\n", False, "Therefore: London", "last_line"),
    ("No numbers here at all", True, "No numbers here at all", "last_line"),
    ("   ", False, "", "empty"),
    (None, True, "", "empty"),
])
def test_cot_answer_extraction_rules(output, numeric, answer, rule):
    assert extract_answer(output, numeric=numeric) == (answer, rule)


def test_numeric_references():
    assert [is_numeric(r) for r in ("42", " -3.5 ", "1,024", "7.", "x42", "4 apples", "", None)] == \
        [True, True, True, True, False, False, False, False]


def test_parse_conditions():
    assert [(c.name, c.kind, c.k) for c in parse_conditions("direct, cot,neighbours:3,cot")] == \
        [("direct", "direct", 0), ("cot", "cot", 0), ("neighbours:3", "neighbours", 3)]
    for bad, text in [("neighbours", "unknown condition 'neighbours'"), ("neighbours:0", "K of neighbours:K"),
                      ("neighbours:x", "K of neighbours:K"), ("cot:2", "unknown condition 'cot:2'"), ("", "at least one")]:
        with pytest.raises(LLMMapsError, match=text):
            parse_conditions(bad)


@pytest.mark.parametrize("b, c", [(0, 0), (3, 9), (10, 4), (30, 12), (7, 30), (25, 25), (1, 23)])
def test_mcnemar_equals_statsmodels(b, c):
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    table = [[11, b], [c, 5]]
    for exact in (True, False) if b + c else (True,):  # statsmodels divides by b + c for the chi-square
        ref = sm_mcnemar(table, exact=exact, correction=True)
        mine = mcnemar(b=b, c=c, exact=exact)
        assert mine["statistic"] == pytest.approx(float(ref.statistic), rel=1e-12)
        assert mine["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-10)
    assert mcnemar(b=b, c=c)["exact"] is (b + c < 25)


def test_paired_difference_on_simulated_data_with_a_known_answer():
    """40 tasks of 30 examples: condition b fixes 30 % of a's errors and breaks none (true gain
    0.3 x (1 - 0.5) = 0.15), so the interval covers 0.15 and excludes 0; with b = a re-drawn
    independently (no effect) it is not supported."""
    rng = np.random.default_rng(0)
    task = np.repeat(np.arange(40), 30).astype(str)
    skill = rng.uniform(0.2, 0.8, 40)[task.astype(int)]
    a = rng.random(len(task)) < skill
    b = a | (rng.random(len(task)) < 0.3)
    res = paired_difference(a, b, task, n_boot=2000, seed=0)
    truth = 0.3 * (1 - skill.mean())
    assert res["low"] < truth < res["high"] and res["low"] > 0.1
    assert res["verdict"] == "supported: helps"
    assert res["table"]["a_only"] == 0 and res["table"]["b_only"] == int((b & ~a).sum())
    same = rng.random(len(task)) < skill
    null = paired_difference(a, same, task, n_boot=2000, seed=0)
    assert null["low"] < 0 < null["high"] and null["verdict"].startswith("not supported")
    one_task = paired_difference(a[:30], b[:30], task[:30], n_boot=200, seed=0)
    assert one_task["low"] is None and one_task["verdict"].startswith("not supported: 1 task")


def test_with_few_tasks_no_claim_and_intervals_spread_as_the_other_verbs_spread_them():
    """3 tasks with a large gain: McNemar rejects, yet no interval over tasks (fewer than
    MIN_TASKS_FOR_INTERVAL) and no claim (as findings, regions and compare require 5 tasks). With 5:
    the interval is the task bootstrap's percentiles after findings.small_cluster, recomputed here on
    the same draws (an accuracy's never narrower than Wilson's)."""
    from llm_maps.falloff import wilson_interval
    from llm_maps.findings import small_cluster, task_resample_counts

    rng = np.random.default_rng(1)
    task = np.repeat(np.arange(3), 60).astype(str)
    a = rng.random(len(task)) < 0.4
    b = a | (rng.random(len(task)) < 0.5)
    res = paired_difference(a, b, task, n_boot=500, seed=7)
    assert res["mcnemar"]["p_value"] < 0.05 and b.mean() - a.mean() > 0.2
    # no interval over 3 tasks (3 tasks resampled: 10 distinct replicates), so no claim either
    assert res["low"] is None and res["high"] is None
    assert res["verdict"] == "not supported: 3 tasks (a task-clustered interval needs 5)"
    assert accuracy_with_interval(a, task, n_boot=500, seed=7)["low"] is None
    # 5 tasks, all gaining: the two-sided sign-flip test's smallest p is 2/32 = 0.0625, so no claim, said so
    task5 = np.repeat(np.arange(5), 60).astype(str)
    a5 = rng.random(len(task5)) < 0.4
    b5 = a5 | (rng.random(len(task5)) < 0.5)
    five = paired_difference(a5, b5, task5, n_boot=500, seed=7)
    assert five["low"] > 0 and five["p_value"] == pytest.approx(0.0625)
    codes = np.unique(task5, return_inverse=True)[1]
    w = task_resample_counts(n_tasks=5, n_boot=500, rng=np.random.default_rng(7))[:, codes]
    reps = (w @ (b5.astype(float) - a5.astype(float))) / w.sum(axis=1)
    spread = np.clip(small_cluster(float(b5.mean() - a5.mean()), reps, 5), -1, 1)
    assert (five["low"], five["high"]) == (pytest.approx(np.percentile(spread, 2.5)),
                                           pytest.approx(np.percentile(spread, 97.5)))
    acc = accuracy_with_interval(a5, task5, n_boot=500, seed=7)
    spread = np.clip(small_cluster(float(a5.mean()), (w @ a5.astype(float)) / w.sum(axis=1), 5), 0, 1)
    wlo, whi = wilson_interval(int(a5.sum()), len(a5))
    assert (acc["low"], acc["high"]) == (pytest.approx(min(np.percentile(spread, 2.5), wlo)),
                                         pytest.approx(max(np.percentile(spread, 97.5), whi)))
    assert five["verdict"] == ("not supported: with 5 tasks the sign-flip test over tasks cannot reach p < 0.05 "
                               "(its smallest p is 0.0625)")
    # the same gain over 8 tasks is claimed
    task8 = np.repeat(np.arange(8), 60).astype(str)
    a8 = rng.random(len(task8)) < 0.4
    assert paired_difference(a8, a8 | (rng.random(len(task8)) < 0.5), task8, n_boot=500, seed=7)["verdict"] == \
        "supported: helps"


def test_the_verdict_tests_tasks_not_examples_with_a_sign_flip_test_equal_to_scipys():
    """Three of six tasks gain 10 answers and three lose one: McNemar, counting 30 examples against 3
    as independent, rejects; the sign-flip test of the tasks' summed differences (scipy's
    permutation_test over every sign pattern, two-sided) gives p = 0.25, and no claim is made."""
    from scipy.stats import permutation_test

    task = np.repeat([f"t{i}" for i in range(6)], 30)
    a = np.zeros(180, dtype=bool)
    b = a.copy()
    for i in range(3):  # tasks 0-2: 10 answers fixed; tasks 3-5: one answer broken
        b[i * 30:i * 30 + 10] = True
        a[(i + 3) * 30] = True
    res = paired_difference(a, b, task, n_boot=500, seed=0)
    per_task = np.array([(b[task == t].astype(int) - a[task == t].astype(int)).sum() for t in sorted(set(task))])
    ref = permutation_test((per_task,), np.sum, permutation_type="samples", alternative="two-sided",
                           n_resamples=np.inf).pvalue
    assert res["p_value"] == pytest.approx(ref) == pytest.approx(0.25)
    assert res["mcnemar"]["p_value"] < 1e-5
    assert res["low"] > 0 and res["verdict"] == "not supported: sign-flip test over tasks p = 0.25"


def test_outcomes():
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    assert outcomes(a, b).tolist() == ["both right", "hurt", "helped", "both wrong"]


# --- a tiny run end to end --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cond_run(tiny_models, tmp_path_factory):
    """A llama run with a token atlas and 4 tasks (categories) in two domains, scored direct,
    then scored under cot and neighbours:2 on the first 3 test examples of each task."""
    root = tmp_path_factory.mktemp("cond")
    data = write_jsonl(root / "d.jsonl", dolly_rows(48, seed=3))
    run = root / "runs" / "r"
    assert main(["build", "--model", str(tiny_models["llama"]), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--token-atlas", "--no-progress"]) == 0
    assert main(["score", str(run), "--conditions", "direct,cot,neighbours:2", "--limit-per-task", "3",
                 "--cot-max-new-tokens", "5", "--max-new-tokens", "4", "--no-progress"]) == 0
    return run


def test_conditions_are_stored_as_the_contract_says(cond_run):
    run = Run(cond_run)
    table = pd.read_parquet(cond_run / CONDITIONS_FILE)
    assert list(table.columns) == list(CONDITION_COLUMNS)
    manifest = json.loads((cond_run / "manifest.json").read_text())
    assert check(manifest, Manifest) == []
    ex = run.examples
    test = ex[(ex["split"] == "test") & ex["reference"].notna()]
    expected_ids = test.groupby("task", sort=False).head(3)["example_id"].tolist()
    for name in ("direct", "cot", "neighbours:2"):
        sub = table[table["condition"] == name]
        assert sorted(sub["example_id"]) == sorted(expected_ids), name  # the same rows for every condition
        info = manifest["conditions"]["conditions"][name]
        assert info["examples"] == len(expected_ids) and info["n_tasks"] == test["task"].nunique()
        assert info["accuracy"] == pytest.approx(sub["correct"].astype(float).mean())
    assert manifest["conditions"]["limit_per_task"] == 3 and manifest["conditions"]["atlas"] is True
    assert manifest["history"][-1]["stage"] == "conditions"
    # direct rows are what `score` stored
    direct = table[table["condition"] == "direct"].set_index("example_id")
    byid = ex.set_index("example_id")
    for eid, row in direct.iterrows():
        assert row["output"] == byid.at[eid, "output"] and row["answer"] == row["output"]
        assert bool(row["correct"]) == bool(byid.at[eid, "correct"])
        assert row["score"] == pytest.approx(byid.at[eid, "score"])
        assert row["dist_to_train"] == byid.at[eid, "dist_to_train"]
        assert row["n_tokens"] == len(byid.at[eid, "output_token_ids"])
        assert row["mean_logprob"] == pytest.approx(np.mean(byid.at[eid, "output_logprobs"]))


def test_cot_rows_equal_a_recomputation_with_the_model(cond_run):
    """Each cot row: the prompt is the example's prompt + the cue; the output is what the one
    generator gives for it (greedy, 5 tokens); the answer follows the extraction rule and the score
    the example's metric; dist_to_train is the cued prompt encoded as build does, against train;
    path distances are the exact nearest atlas state of each generated token's state."""
    from llm_maps.neighbours import knn
    from pipelines.encode import encode_one
    from pipelines.generate import generate
    from llm_maps.scoring import get_metric
    from pipelines.models import load_model

    run = Run(cond_run)
    ex = run.examples.set_index("example_id")
    m = run.manifest
    table = pd.read_parquet(cond_run / CONDITIONS_FILE)
    cot = table[table["condition"] == "cot"].reset_index(drop=True)
    loaded = load_model(m["model"])
    layer = run.default_layer
    enc = np.asarray(run.encodings(layer), dtype=np.float32)
    train = enc[(run.examples["split"] == "train").to_numpy()]
    atlas = np.load(cond_run / "encodings" / "tokens" / f"layer_{layer}.npy").astype(np.float32)
    # the Dolly prompt ends with "### Response:\n": the cue starts the response
    assert all(ex.at[e, "prompt"].endswith("### Response:\n") for e in cot["example_id"])
    gens = generate(loaded, [ex.at[e, "prompt"] + "Let's think step by step." for e in cot["example_id"]],
                    max_new_tokens=5, stop_strings=m["prompt_template"]["stop_strings"], hidden_layer=layer)
    for (_, row), g in zip(cot.iterrows(), gens):
        e = row["example_id"]
        assert row["prompt"] == ex.at[e, "prompt"] + "Let's think step by step."
        assert row["output"] == g.text and row["n_tokens"] == len(g.tokens)
        ref = ex.at[e, "reference"]
        assert (row["answer"], row["extraction"]) == extract_answer(g.text, numeric=is_numeric(ref))
        assert row["metric"] == ex.at[e, "metric"]
        assert row["score"] == pytest.approx(get_metric(row["metric"]).score(row["answer"], ref))
        assert bool(row["correct"]) == (row["score"] >= m["scoring"]["thresholds"][row["metric"]])
        state = encode_one(loaded, row["prompt"], layers=[layer], add_eos=m["add_eos"],
                           max_length=m["max_length"])[layer].astype(np.float16).astype(np.float32)
        d, _ = knn(state[None], train, k=1, metric=m["distance_metric"])
        assert row["dist_to_train"] == pytest.approx(d[0, 0], rel=1e-4, abs=1e-6)
        hidden = np.array(g.hidden, dtype=np.float32).astype(np.float16).astype(np.float32)
        ref_d, _ = knn(hidden, atlas, k=1, metric=m["distance_metric"])
        assert row["path_dists"] == pytest.approx(ref_d[:, 0].tolist(), rel=2e-2, abs=1e-4)
        assert row["path_mean_dist"] == pytest.approx(np.mean(row["path_dists"]))
        assert row["path_max_dist"] == max(row["path_dists"])
        assert len(row["path_x"]) == len(row["path_y"]) == len(g.tokens)


def test_a_neighbours_prompt_holds_exactly_the_k_nearest_train_examples_in_order(cond_run):
    """Recomputed here: the 2 nearest train examples by exact knn over the stored encodings, each
    rendered with its instruction, context and reference in the Dolly format, nearest first, then
    the example's own prompt."""
    from llm_maps.neighbours import knn
    from pipelines.templates import DOLLY_END_KEY, PromptTemplate

    run = Run(cond_run)
    ex = run.examples
    enc = np.asarray(run.encodings(run.default_layer), dtype=np.float32)
    train_rows = np.flatnonzero((ex["split"] == "train").to_numpy())
    template = PromptTemplate.from_manifest(run.manifest["prompt_template"])
    table = pd.read_parquet(cond_run / CONDITIONS_FILE)
    rows = table[table["condition"] == "neighbours:2"]
    assert len(rows)
    where = {e: i for i, e in enumerate(ex["example_id"])}
    for _, row in rows.iterrows():
        i = where[row["example_id"]]
        _, idx = knn(enc[i:i + 1], enc[train_rows], k=2, metric=run.manifest["distance_metric"])
        nearest = train_rows[idx[0]]
        expected = "".join(template.render(ex["instruction"][j], ex["context"][j]) + ex["reference"][j].strip()
                           + f"\n\n{DOLLY_END_KEY}\n\n" for j in nearest) + ex["prompt"][i]
        assert row["prompt"] == expected
        assert row["prompt"].endswith(ex["prompt"][i])
        positions = [row["prompt"].find(ex["instruction"][j]) for j in nearest]
        assert -1 not in positions and positions == sorted(positions)
        assert row["prompt"].count("### Instruction:") == 3


def test_scored_conditions_are_skipped_unless_asked(cond_run, capsys):
    before = pd.read_parquet(cond_run / CONDITIONS_FILE)
    history = len(json.loads((cond_run / "manifest.json").read_text())["history"])
    assert main(["score", str(cond_run), "--conditions", "cot", "--limit-per-task", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "cot: all" in err and "already scored" in err
    pd.testing.assert_frame_equal(pd.read_parquet(cond_run / CONDITIONS_FILE), before)
    assert len(json.loads((cond_run / "manifest.json").read_text())["history"]) == history
    # a larger limit scores only the new rows; --rescore scores them all again
    assert main(["score", str(cond_run), "--conditions", "cot", "--limit-per-task", "4", "--cot-max-new-tokens", "5",
                 "--no-progress"]) == 0
    after = pd.read_parquet(cond_run / CONDITIONS_FILE)
    per_task = Run(cond_run).examples.query("split == 'test'").groupby("task").size()
    added = int((per_task.clip(upper=4) - per_task.clip(upper=3)).sum())  # the 4th example of each task that has one
    assert added >= 1
    assert (after["condition"] == "cot").sum() == (before["condition"] == "cot").sum() + added
    old = before[before["condition"] == "cot"].set_index("example_id")
    new = after[after["condition"] == "cot"].set_index("example_id").loc[old.index]
    pd.testing.assert_frame_equal(new, old)  # rows scored before are kept as they were
    assert (after["condition"] == "direct").sum() == (before["condition"] == "direct").sum()
    manifest = json.loads((cond_run / "manifest.json").read_text())
    cot_info = manifest["conditions"]["conditions"]["cot"]
    assert cot_info["examples"] == (after["condition"] == "cot").sum()  # the file's rows, earlier ones included
    assert cot_info["accuracy"] == pytest.approx(after.loc[after["condition"] == "cot", "correct"].astype(float).mean())
    assert "neighbours:2" in manifest["conditions"]["conditions"]  # other conditions' entries stay


def test_summary_falloff_and_findings_by_condition(cond_run, capsys):
    run = Run(cond_run)
    frame = with_examples(run)
    s = summarize(frame, n_boot=200, seed=1)
    assert s["baseline"] == "direct" and s["conditions"][0] == "direct"
    for r in s["accuracy"]:
        sub = frame[(frame["domain"] == r["domain"]) & (frame["condition"] == r["condition"])
                    & (frame["split"] == "test") & frame["correct"].notna()]
        assert (r["n"], r["n_tasks"]) == (len(sub), sub["task"].nunique())
        assert r["accuracy"] == pytest.approx(sub["correct"].astype(float).mean())
    for r in s["paired"]:
        both = paired(frame, "direct", r["b"])
        if r["domain"] != "all":
            both = both[both["domain"] == r["domain"]]
        a, b = both["correct_a"].to_numpy(), both["correct_b"].to_numpy()
        assert r["table"] == {"both_right": int((a & b).sum()), "a_only": int((a & ~b).sum()),
                              "b_only": int((~a & b).sum()), "both_wrong": int((~a & ~b).sum())}
        assert r["diff"] == pytest.approx(b.mean() - a.mean())
    assert {(r["domain"], r["condition"]) for r in s["paths"]} == {(r["domain"], r["condition"]) for r in s["accuracy"]}
    from sklearn.metrics import roc_auc_score

    for r in s["paths"]:
        sub = frame[(frame["domain"] == r["domain"]) & (frame["condition"] == r["condition"])
                    & frame["correct"].notna() & frame["path_max_dist"].notna()]
        assert r["n"] == len(sub) and r["max_dist"] == pytest.approx(sub["path_max_dist"].mean())
        assert r["mean_dist"] == pytest.approx(sub["path_mean_dist"].mean())
        err = ~sub["correct"].astype(bool)
        if err.nunique() == 2:
            assert r["auroc_max_dist_error"] == pytest.approx(roc_auc_score(err, sub["path_max_dist"]))
        else:
            assert r["auroc_max_dist_error"] is None
    text = format_summary(s)
    assert "paired difference against direct" in text and "McNemar" in text and "chain distance" in text
    assert main(["conditions", str(cond_run), "--bootstrap", "200", "--json", "-"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["condition"] for r in printed["falloff"]] == s["conditions"]
    # falloff --condition: that condition's correctness at the examples' own distances; falloff.json untouched
    falloff_before = (cond_run / "falloff.json").read_text() if (cond_run / "falloff.json").exists() else None
    from pipelines.falloff_run import falloff_run

    res = falloff_run(cond_run, n_bins=2, condition="cot")
    cot = frame[frame["condition"] == "cot"]
    default = next(v for v in res["variants"] if v["default"])
    assert res["condition"] == "cot" and default["stats"]["all"]["n"] == cot["correct"].notna().sum()
    assert default["stats"]["all"]["accuracy"] == pytest.approx(cot["correct"].astype(float).mean())
    assert ((cond_run / "falloff.json").read_text() if falloff_before is not None else None) == falloff_before
    with pytest.raises(LLMMapsError, match="'neighbours:9' is not in"):
        falloff_run(cond_run, condition="neighbours:9")


def test_bad_requests_fail_before_any_work(cond_run, tmp_path, tiny_models):
    with pytest.raises(LLMMapsError, match="neighbours:5 needs 5 neighbours but the run stores 3"):
        from pipelines.conditions import score_conditions

        score_conditions(cond_run, conditions="neighbours:5")
    with pytest.raises(LLMMapsError, match="--limit-per-task: must be >= 1"):
        score_conditions(cond_run, conditions="cot", limit_per_task=0)
    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(12))
    unscored = tmp_path / "u"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(unscored),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--no-progress"]) == 0
    with pytest.raises(LLMMapsError, match="no scored examples; the direct condition is"):
        score_conditions(unscored, conditions="cot")
    assert not (unscored / CONDITIONS_FILE).exists()


def test_multiple_choice_under_cot_picks_the_choice_after_the_reasoning(tiny_models, tmp_path):
    """A multiple-choice example under cot: its reasoning is generated, then each choice is scored
    as a continuation of prompt + reasoning + 'So the answer is' (as lm-eval's CoT variants do)."""
    from pipelines.generate import choice_loglikelihoods
    from pipelines.models import load_model

    cats = ["classification", "open_qa", "summarization", "creative_writing"]
    rows = [{"instruction": f"Is {w} {i} near?", "context": "", "category": cats[i % 4],
             "choices": ["yes", "no", "maybe"], "response": ["yes", "no", "maybe"][i % 3]}
            for i, w in enumerate(["the sea", "a fox", "the wind", "paper"] * 6)]
    data = write_jsonl(tmp_path / "mc.jsonl", rows)
    run = tmp_path / "mc"
    assert main(["build", "--model", str(tiny_models["gpt_neox"]), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--no-progress"]) == 0
    assert main(["score", str(run), "--conditions", "direct,cot,neighbours:1", "--mc-output", "choice",
                 "--cot-max-new-tokens", "4", "--limit-per-task", "2", "--no-progress"]) == 0
    table = pd.read_parquet(run / CONDITIONS_FILE)
    assert set(table["metric"]) == {"mc"}
    loaded = load_model(str(tiny_models["gpt_neox"]))
    ex = Run(run).examples.set_index("example_id")
    cot = table[table["condition"] == "cot"]
    for _, row in cot.iterrows():
        assert row["extraction"] == "choice_after_reasoning" and row["n_tokens"] >= 1
        lps = [x["logprob"] for x in choice_loglikelihoods(loaded, f"{row['prompt']} {row['output']}".rstrip()
                                                           + MC_COT_SUFFIX, ["yes", "no", "maybe"])]
        assert row["choice_logprobs"] == pytest.approx(lps, abs=1e-4)
        assert row["answer"] == ["yes", "no", "maybe"][int(np.argmax(lps))]
        assert bool(row["correct"]) == (row["answer"] == ex.at[row["example_id"], "reference"])
    # neighbours:1 with --mc-output choice: no generation, the choice is the output
    nb = table[table["condition"] == "neighbours:1"]
    assert nb["n_tokens"].isna().all() and (nb["output"] == nb["answer"]).all()
    for _, row in nb.iterrows():
        lps = [x["logprob"] for x in choice_loglikelihoods(loaded, row["prompt"], ["yes", "no", "maybe"])]
        assert row["choice_logprobs"] == pytest.approx(lps, abs=1e-4)


def test_a_conditioned_multiple_choice_prompt_too_long_for_the_model_is_named(tiny_models, tmp_path):
    rows = [{"instruction": "word " * (10 + i % 5), "context": "", "category": ["classification", "open_qa"][i % 2],
             "choices": ["yes", "no"], "response": "yes"} for i in range(16)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    run = tmp_path / "long"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--no-progress"]) == 0
    assert main(["score", str(run), "--mc-output", "choice", "--no-progress"]) == 0
    from pipelines.conditions import score_conditions

    with pytest.raises(LLMMapsError, match=r"row \d+ \(.+\), condition neighbours:3: the prompt \(\d+ tokens\) and its "
                                           r"longest choice exceed the model's 256 positions; use fewer neighbours"):
        score_conditions(run, conditions="neighbours:3")
    assert not (run / CONDITIONS_FILE).exists()


def test_summary_on_simulated_conditions_with_known_answers():
    """Two domains x 6 tasks x 20 examples. cot helps Chollet (+0.4 of its errors fixed) and leaves
    Reasoning as it is; every wrong cot answer's chain strays farther from the atlas than every
    right one (AUROC 1)."""
    rng = np.random.default_rng(2)
    rows = []
    for d, dom in enumerate(("Chollet", "Reasoning")):
        for t in range(6):
            for j in range(20):
                eid = f"{dom}-{t}-{j}"
                a = bool(rng.random() < 0.4)
                b = a or (dom == "Chollet" and bool(rng.random() < 0.4))
                for cond, c in (("direct", a), ("cot", b)):
                    rows.append({"example_id": eid, "condition": cond, "correct": c, "domain": dom,
                                 "task": f"{dom}-{t}", "split": "test", "row": len(rows),
                                 "example_dist": float(rng.random()),
                                 "path_mean_dist": 0.1 + 0.1 * (not c) + 0.01 * rng.random(),
                                 "path_max_dist": 0.2 + 0.2 * (not c) + 0.05 * rng.random()})
    frame = pd.DataFrame(rows)
    s = summarize(frame, n_boot=1000, seed=0)
    pairs = {r["domain"]: r for r in s["paired"]}
    assert pairs["Chollet"]["verdict"] == "supported: helps" and pairs["Chollet"]["low"] > 0
    assert pairs["Reasoning"]["diff"] == 0 and pairs["Reasoning"]["verdict"].startswith("not supported")
    assert pairs["Reasoning"]["mcnemar"]["p_value"] == 1.0
    paths = {(r["domain"], r["condition"]): r for r in s["paths"]}
    assert paths[("Chollet", "cot")]["auroc_max_dist_error"] == 1.0
    assert paths[("Chollet", "cot")]["n_tasks"] == 6 and paths[("Chollet", "cot")]["auroc_low"] == 1.0
    assert [r["condition"] for r in s["falloff"]] == ["direct", "cot"]
    assert all("error" not in r for r in s["falloff"])
