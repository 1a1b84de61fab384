"""Findings (llm_maps.findings, `llm-maps findings`, the Findings page): every statistic against a
reference implementation on the same rows (statsmodels, scikit-learn, scipy), simulated runs with
a known answer, clustering, first-token statistics on a tiny model, bad input, the CLI's JSON
shape, the standalone HTML, the export section and the page."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dashboard.synthetic import write_synthetic_run
from interfaces.cli import main
from llm_maps.errors import LLMMapsError
from llm_maps.findings import (compute_findings, conditional_logit_slope, fit_logistic, fit_ols_slope,
                               percentile_scale, task_resample_counts, variant_distances, weighted_auroc)
from llm_maps.runfolder import Run, read_manifest, write_json_atomic, write_parquet_atomic


def simulate(seed: int, slope_a: float, slope_b: float, *, n_tasks: int = 30, per_task: int = 20,
             task_sd: float = 0.7, duplicate: int = 1) -> dict:
    """Two domains of ``n_tasks`` tasks each; log-odds of correct = 1.5 + task effect + slope * distance
    (distance uniform on [0, 1]); every example repeated ``duplicate`` times."""
    rng = np.random.default_rng(seed)
    cols = {"distance": [], "correct": [], "domain": [], "task": []}
    for name, slope in (("Chollet", slope_a), ("Reasoning", slope_b)):
        for t in range(n_tasks):
            x = rng.random(per_task)
            p = 1 / (1 + np.exp(-(1.5 + rng.normal(0, task_sd) + slope * x)))
            y = rng.random(per_task) < p
            cols["distance"] += list(np.repeat(x, duplicate))
            cols["correct"] += list(np.repeat(y, duplicate))
            cols["domain"] += [name] * per_task * duplicate
            cols["task"] += [f"{name}/t{t}"] * per_task * duplicate
    return {k: np.array(v, dtype=object if k in ("domain", "task") else None) for k, v in cols.items()}


# --- each statistic equals a reference implementation on the same rows ------------------------------

def test_statistics_equal_statsmodels_sklearn_and_scipy_on_the_same_rows():
    import statsmodels.api as sm
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score
    from statsmodels.discrete.conditional_models import ConditionalLogit
    from statsmodels.stats.proportion import proportion_confint

    sim = simulate(3, -3.0, -1.0, n_tasks=12, per_task=25)
    sim["distance"] = np.round(sim["distance"] * 40) / 10  # raw units (0..4) with ties
    res = compute_findings(**sim, n_boot=200, seed=1)
    pct = percentile_scale(sim["distance"])
    np.testing.assert_allclose(pct, (rankdata(sim["distance"]) - 0.5) / len(pct))
    assert res["n_test"] == 600 and res["n_tasks"] == 24
    for name in ("Chollet", "Reasoning"):
        sel = sim["domain"] == name
        x, y, raw = pct[sel], sim["correct"][sel].astype(float), sim["distance"][sel]
        st = res["domains"][name]
        ref = sm.Logit(y, sm.add_constant(x)).fit(disp=0)
        assert st["slope"] == pytest.approx(ref.params[1], rel=1e-8)
        assert st["intercept"] == pytest.approx(ref.params[0], rel=1e-8)
        assert st["slope_raw"] == pytest.approx(sm.Logit(y, sm.add_constant(raw)).fit(disp=0).params[1], rel=1e-8)
        assert st["auroc"] == pytest.approx(roc_auc_score(y == 0, raw), abs=1e-12)  # the percentile keeps the order
        cl = ConditionalLogit(y, x[:, None], groups=sim["task"][sel]).fit(disp=0, method="newton")
        assert st["slope_within_task"] == pytest.approx(cl.params[0], abs=1e-6)
        assert st["n"] == 300 and st["n_tasks"] == 12 and st["accuracy"] == pytest.approx(y.mean())
        near = x <= np.quantile(x, 0.25)
        assert st["near"]["n"] == near.sum() and st["near"]["accuracy"] == pytest.approx(y[near].mean())
        lo, hi = proportion_confint(int(y[near].sum()), int(near.sum()), method="wilson")
        assert (st["near"]["low"], st["near"]["high"]) == (pytest.approx(lo), pytest.approx(hi))
        assert st["slope_low"] < st["slope"] < st["slope_high"]
        assert st["auroc_low"] < st["auroc"] < st["auroc_high"]
    con = res["contrast"]
    assert con["slope_diff"] == pytest.approx(res["domains"]["Chollet"]["slope"] - res["domains"]["Reasoning"]["slope"])


def test_a_bootstrap_replicate_is_the_fit_on_its_resampled_tasks():
    """A replicate weights each row by how often its task was drawn: the same as refitting on the
    materialised resample (statsmodels Logit / WLS, scikit-learn AUROC with repeated rows)."""
    import statsmodels.api as sm
    from sklearn.metrics import roc_auc_score

    sim = simulate(5, -2.0, 0.0, n_tasks=10, per_task=15)
    sel = sim["domain"] == "Chollet"
    x, y = sim["distance"][sel].astype(float), sim["correct"][sel].astype(float)
    codes = np.unique(sim["task"][sel], return_inverse=True)[1]
    counts = task_resample_counts(n_tasks=10, n_boot=5, rng=np.random.default_rng(0))
    assert (counts.sum(1) == 10).all()
    w = counts[:, codes]
    _, slopes, ok = fit_logistic(x=x, y=y, weights=w)
    auc = weighted_auroc(score=np.round(x, 1), positive=y == 0, weights=w)
    ols = fit_ols_slope(x=x, y=y, weights=w)
    for r in range(5):
        rows = np.repeat(np.arange(len(x)), w[r].astype(int))
        assert ok[r]
        assert slopes[r] == pytest.approx(sm.Logit(y[rows], sm.add_constant(x[rows])).fit(disp=0).params[1], rel=1e-8)
        assert auc[r] == pytest.approx(roc_auc_score(y[rows] == 0, np.round(x[rows], 1)), abs=1e-12)
        assert ols[r] == pytest.approx(sm.OLS(y[rows], sm.add_constant(x[rows])).fit().params[1], rel=1e-8)
    # the within-task replicates come from the per-task log-likelihoods: close to a refit
    from statsmodels.discrete.conditional_models import ConditionalLogit

    _, reps, _ = conditional_logit_slope(x=x, y=y, task=codes, task_weights=counts[:2])
    for r in range(2):
        # materialise each drawn copy of a task as its own group
        xs, ys, gs, g = [], [], [], 0
        for t in range(10):
            for _ in range(int(counts[r, t])):
                xs.append(x[codes == t]), ys.append(y[codes == t]), gs.append(np.full((codes == t).sum(), g))
                g += 1
        ref = ConditionalLogit(np.concatenate(ys), np.concatenate(xs)[:, None], groups=np.concatenate(gs)).fit(
            disp=0, method="newton")
        assert reps[r] == pytest.approx(ref.params[0], abs=2e-3)
    # one class only or no spread: no fit
    assert not fit_logistic(x=x, y=np.ones_like(y))[2][0] and not fit_logistic(x=np.ones_like(x), y=y)[2][0]


# --- simulated runs with a known answer -----------------------------------------------------------------

def test_steep_versus_flat_domain_is_detected_and_the_verdict_says_so():
    sim = simulate(0, -4.0, 0.0)
    res = compute_findings(**sim, n_boot=1000, seed=0)
    con = res["contrast"]
    assert con["high"] < 0 and con["low"] < con["slope_diff"] < con["high"]
    assert con["p_value"] < 0.01 and con["permutations"] == 1000
    assert (con["n_tasks_a"], con["n_tasks_b"], con["n_a"], con["n_b"]) == (30, 30, 600, 600)
    assert res["verdict"].startswith("Chollet falls off more steeply than Reasoning: slope difference "
                                     f"(Chollet − Reasoning) {con['slope_diff']:+.2f} [{con['low']:+.2f}, {con['high']:+.2f}]")
    assert "30 vs 30 tasks" in res["verdict"]
    assert res["verdict_detail"]["pooled"] == "supported"
    # the other order states the other hypothesis ("Reasoning falls off more steeply"): the data say
    # the reverse, and the verdict says so (never a claim of the hypothesis)
    rev = compute_findings(**sim, contrast=("Reasoning", "Chollet"), n_boot=1000, seed=0)
    assert rev["contrast"]["slope_diff"] == pytest.approx(-con["slope_diff"]) and rev["contrast"]["low"] > 0
    assert rev["verdict_detail"]["pooled"] == "reversed"
    assert rev["verdict"].startswith("reversed: Chollet falls off more steeply than Reasoning, the opposite of the "
                                     "hypothesis that Reasoning falls off more steeply")
    assert res["domains"]["Chollet"]["auroc_low"] > 0.5  # distance flags the steep domain's errors


def test_the_verdict_claims_a_difference_only_when_interval_and_permutation_test_agree():
    from llm_maps.findings import verdict_line

    con = {"a": "Chollet", "b": "Reasoning", "slope_diff": -2.84, "low": -6.57, "high": -0.63, "p_value": 0.03,
           "n_tasks_a": 23, "n_tasks_b": 18, "n_a": 448, "n_b": 426, "mdd": 4.2}
    assert verdict_line(con).startswith("Chollet falls off more steeply than Reasoning: slope difference "
                                        "(Chollet − Reasoning) -2.84 [-6.57, -0.63] per unit percentile, p = 0.03")
    assert verdict_line({**con, "p_value": None}).startswith(  # no permutations run: no claim
        "not supported: the slope difference (Chollet − Reasoning) -2.84 [-6.57, -0.63] per unit percentile excludes "
        "0, but no permutation test was run")
    assert verdict_line({**con, "n_tasks_b": 4}).startswith(  # too few tasks: no claim
        "not supported: Reasoning has only 4 tasks; no claim is made with fewer than 5 tasks per domain")
    assert verdict_line({**con, "slope_a": 0.4, "slope_b": 3.2}).startswith(  # nothing falls off
        "not supported: Chollet's accuracy does not fall with distance (slope +0.40)")
    assert verdict_line({**con, "slope_diff": 2.84, "low": 0.63, "high": 6.57, "slope_b": -3.0}).startswith(
        "reversed: Reasoning falls off more steeply than Chollet, the opposite of the hypothesis")
    assert verdict_line({**con, "p_value": 0.058}) == (
        "not supported: the slope difference (Chollet − Reasoning) -2.84 has interval [-6.57, -0.63], which "
        "excludes 0, but the permutation test does not reject equal slopes (p = 0.058) (23 vs 18 tasks, 448 vs "
        "426 examples)")
    assert verdict_line({**con, "high": 0.5, "p_value": 0.01}).startswith(
        "not supported: the slope difference (Chollet − Reasoning) -2.84 has interval [-6.57, +0.50], which includes 0")


def test_equal_slopes_give_an_interval_covering_zero_in_at_least_90_percent_of_seeds():
    covered, verdicts = 0, set()
    seeds = range(40)
    for seed in seeds:
        res = compute_findings(**simulate(100 + seed, -2.0, -2.0, n_tasks=20, per_task=15), n_boot=300, seed=seed,
                               permutation=False, details=False)
        con = res["contrast"]
        covered += con["low"] <= 0 <= con["high"]
        verdicts.add(res["verdict"].split(":")[0])
        # the minimum detectable difference (80 % power, 5 % level) from the interval's standard error
        se = (con["high"] - con["low"]) / (2 * 1.959963984540054)
        assert con["mdd"] == pytest.approx((1.959963984540054 + 0.8416212335729143) * se)
        if con["low"] <= 0 <= con["high"]:
            assert f"a difference smaller than {con['mdd']:.2f} cannot be detected" in res["verdict"]
    assert covered / len(seeds) >= 0.9
    assert "not supported" in verdicts


def test_duplicating_every_example_does_not_shrink_the_clustered_interval():
    from llm_maps.falloff import logistic_trend

    once = compute_findings(**simulate(7, -3.0, -1.0, n_tasks=12, per_task=10), n_boot=300, seed=3)
    ten = compute_findings(**simulate(7, -3.0, -1.0, n_tasks=12, per_task=10, duplicate=10), n_boot=300, seed=3)
    for key in ("slope_diff", "low", "high"):
        assert ten["contrast"][key] == pytest.approx(once["contrast"][key], rel=1e-6)
    for name in ("Chollet", "Reasoning"):
        a, b = once["domains"][name], ten["domains"][name]
        assert (b["slope_low"], b["slope_high"]) == (pytest.approx(a["slope_low"], rel=1e-6),
                                                      pytest.approx(a["slope_high"], rel=1e-6))
        assert (b["auroc_low"], b["auroc_high"]) == (pytest.approx(a["auroc_low"]), pytest.approx(a["auroc_high"]))
    assert ten["contrast"]["mdd"] == pytest.approx(once["contrast"]["mdd"], rel=1e-6)
    # an interval that treats examples as independent shrinks by about sqrt(10)
    sim1 = simulate(7, -3.0, -1.0, n_tasks=12, per_task=10)
    sim10 = simulate(7, -3.0, -1.0, n_tasks=12, per_task=10, duplicate=10)
    w1 = logistic_trend(sim1["distance"], sim1["correct"])
    w10 = logistic_trend(sim10["distance"], sim10["correct"])
    ratio = (w1["slope_high"] - w1["slope_low"]) / (w10["slope_high"] - w10["slope_low"])
    assert ratio == pytest.approx(math.sqrt(10), rel=0.01)


# --- bad input: one line, no traceback ------------------------------------------------------------------

def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    sim = simulate(1, -2.0, 0.0, n_tasks=5, per_task=10)
    with pytest.raises(LLMMapsError, match="no scored test examples"):
        compute_findings(**{**sim, "correct": [None] * len(sim["correct"])})
    one = {**sim, "domain": np.array(["Chollet"] * len(sim["domain"]), dtype=object)}
    with pytest.raises(LLMMapsError, match=r"all in one domain \('Chollet'\)"):
        compute_findings(**one)
    single = {**sim, "task": np.where(sim["domain"] == "Chollet", "Chollet/only", sim["task"])}
    with pytest.raises(LLMMapsError, match="domain 'Chollet' has only 1 task"):
        compute_findings(**single)
    with pytest.raises(LLMMapsError, match="no scored test examples in domain 'Agentic'"):
        compute_findings(**sim, contrast=("Chollet", "Agentic"))
    with pytest.raises(LLMMapsError, match="at least 100 replicates"):
        compute_findings(**sim, n_boot=10)
    # through the CLI: exit 2 and one line on stderr
    unscored = write_synthetic_run(tmp_path / "unscored", 80, scored=False, seed=2)
    assert main(["findings", str(unscored), "--bootstrap", "200"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'correct': no scored test examples" in err and "Traceback" not in err
    run = write_synthetic_run(tmp_path / "onetask", 200, seed=3)
    frame = pd.read_parquet(run / "examples.parquet")
    frame.loc[frame["domain"] == "Chollet", "task"] = "classification/only"
    write_parquet_atomic(run / "examples.parquet", frame)
    assert main(["findings", str(run), "--bootstrap", "200", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'task': domain 'Chollet' has only 1 task" in err
    assert not (run / "findings.json").exists()
    for args, msg in ((["--contrast", "Chollet"], "give two domains"), (["--layer", "7"], "layer 7 is not stored"),
                      (["--view", "completion"], "no view 'completion'")):
        assert main(["findings", str(unscored), *args]) == 2
        assert msg in capsys.readouterr().err


# --- the run-level command ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def syn_run(tmp_path_factory):
    """A synthetic scored run (two stored layers) with a second view, and first-token columns."""
    root = tmp_path_factory.mktemp("findings")
    run = write_synthetic_run(root / "syn", 600, layers=(1, 2), seed=1)
    frame = pd.read_parquet(run / "examples.parquet")
    rng = np.random.default_rng(0)
    frame["first_entropy"] = frame["dist_to_train"] * 3 + rng.normal(0, 0.1, len(frame))
    frame["first_top_prob"] = 1 / (1 + frame["first_entropy"])
    frame["first_kl_to_mean"] = np.abs(rng.normal(0, 1, len(frame)))
    write_parquet_atomic(run / "examples.parquet", frame)
    (run / "encodings" / "completion").mkdir()
    for k in (1, 2):
        np.save(run / "encodings" / "completion" / f"layer_{k}.npy",
                rng.normal(size=(len(frame), 16)).astype(np.float16))
    manifest = read_manifest(run)
    write_json_atomic(run / "manifest.json", {**manifest, "views": ["completion"]})
    return run


INTERFACE_DOMAIN_KEYS = {"n", "n_tasks", "accuracy", "slope", "slope_low", "slope_high", "auroc", "auroc_low",
                         "auroc_high", "slope_within_task"}


def test_findings_command_writes_the_json_shape_html_and_run_file(syn_run, tmp_path, capsys):
    out_json, out_html = tmp_path / "f.json", tmp_path / "f.html"
    assert main(["findings", str(syn_run), "--json", str(out_json), "--html", str(out_html), "--bootstrap", "300",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out_json.read_text())
    assert json.loads((syn_run / "findings.json").read_text()) == res
    assert {"split", "layer", "metric", "view", "n_test", "domains", "contrast", "verdict", "robustness"} <= set(res)
    from llm_maps.contract import FindingsFile, check

    assert check(res, FindingsFile) == []  # every key and value as docs/run-folder.md lists them
    assert (res["split"], res["layer"], res["metric"], res["view"]) == ("test", 2, "cosine", "prompt")
    run = Run(syn_run)
    test = run.examples[run.examples["split"] == "test"]
    assert res["n_test"] == len(test) and set(res["domains"]) == {"Chollet", "Reasoning"}
    for name, st in res["domains"].items():
        assert INTERFACE_DOMAIN_KEYS <= set(st) and st["n"] == int((test["domain"] == name).sum())
        assert st["slope"] < 0  # the synthetic run's accuracy falls with distance in both domains
        assert set(st["confidence"]) == {"first_entropy", "first_top_prob", "first_kl_to_mean"}
        assert st["confidence"]["first_entropy"]["slope"] > 0 and st["confidence"]["first_top_prob"]["slope"] < 0
    assert set(res["contrast"]) >= {"a", "b", "slope_diff", "low", "high", "p_value"}
    assert (res["contrast"]["a"], res["contrast"]["b"]) == ("Chollet", "Reasoning")
    # same numbers as the compute function on the stored distances
    ref = compute_findings(distance=test["dist_to_train"].to_numpy(), correct=test["correct"].astype(object).tolist(),
                           domain=test["domain"].tolist(), task=test["task"].tolist(), n_boot=300, seed=0)
    assert res["contrast"]["slope_diff"] == pytest.approx(ref["contrast"]["slope_diff"])
    assert res["verdict"] == ref["verdict"] and res["verdict"] in printed
    # robustness: every stored layer x metric x view, raw and centred (cosine: centring cannot move euclidean)
    combos = [(r["view"], r["layer"], r["metric"], r["centred"]) for r in res["robustness"]]
    assert combos == [(v, k, m, c) for v in ("prompt", "completion") for k in (1, 2)
                      for m, c in (("cosine", False), ("cosine", True), ("euclidean", False))]
    for r in res["robustness"]:
        assert {"layer", "metric", "view", "centred", "slope_diff", "low", "high", "excludes_0", "p_value", "p_holm",
                "supported_adjusted"} <= set(r) and "supported" not in r
    own = next(r for r in res["robustness"] if (r["view"], r["layer"], r["metric"], r["centred"]) == ("prompt", 2, "cosine", False))
    assert (own["slope_diff"], own["low"], own["high"], own["p_value"]) == (
        res["contrast"]["slope_diff"], res["contrast"]["low"], res["contrast"]["high"], res["contrast"]["p_value"])
    from statsmodels.stats.multitest import multipletests

    ps = [r["p_value"] for r in res["robustness"]]
    assert [r["p_holm"] for r in res["robustness"]] == pytest.approx(list(multipletests(ps, method="holm")[1]))
    assert set(res["verdict_detail"]) == {"pooled", "within", "between"} and res["format_version"] == 2
    # `llm-maps info` leads with the verdict; its falloff trends are task-clustered
    capsys.readouterr()
    assert main(["info", str(syn_run)]) == 0
    info = capsys.readouterr().out.splitlines()
    assert info[1] == f"findings   {res['verdict']}"
    assert info[2] == ("           hypothesis: Chollet falls off more steeply than Reasoning; "
                       + ", ".join(f"{k}: {res['verdict_detail'][k]}" for k in ("pooled", "within", "between"))
                       + f" (layer 2, cosine, {res['n_tasks']} tasks)")
    assert any(line.startswith("falloff ") and "task-clustered" in line for line in info)
    html = out_html.read_text()
    assert "plotly.js v" in html and html.count("Plotly.newPlot") == 4 and "findings-robustness" in html
    assert "https://" not in html.split("</script>", 1)[1].split("made with")[0].replace("https://github.com", "")


def test_variant_distances_raw_centred_and_views(syn_run):
    from scipy.spatial.distance import cdist

    run = Run(syn_run)
    is_train = (run.examples["split"] == "train").to_numpy()
    rows = np.flatnonzero(~is_train)
    for view, folder in (("prompt", syn_run / "encodings"), ("completion", syn_run / "encodings" / "completion")):
        enc = np.load(folder / "layer_1.npy").astype(np.float32)
        mean = enc[is_train].mean(0)
        for centred in (False, True):
            e = enc - mean if centred else enc
            ref = cdist(e[rows], e[is_train], "cosine").min(1)
            got = variant_distances(run, rows=rows, layer=1, metric="cosine", view=view, centred=centred)
            np.testing.assert_allclose(got, ref, atol=1e-5)
        eu = variant_distances(run, rows=rows, layer=1, metric="euclidean", view=view)
        np.testing.assert_allclose(eu, cdist(enc[rows], enc[is_train]).min(1), rtol=1e-4)
    # the run's own variant is the stored column
    np.testing.assert_array_equal(variant_distances(run, rows=rows, layer=2, metric="cosine"),
                                  run.examples["dist_to_train"].to_numpy()[rows])


def test_export_gains_a_findings_section(syn_run, tmp_path):
    out = tmp_path / "export.html"
    if not (syn_run / "findings.json").exists():
        assert main(["findings", str(syn_run), "--bootstrap", "200", "--no-robustness", "--no-progress"]) == 0
    assert main(["export", str(syn_run), "--html", str(out), "--plotlyjs", "cdn"]) == 0
    text = out.read_text()
    assert "<h3>Findings</h3>" in text and "id='findings-verdict'" in text and 'id="findings-curves"' in text
    verdict = json.loads((syn_run / "findings.json").read_text())["verdict"]
    import html as _html

    assert _html.escape(verdict) in text


# --- first-token statistics on a tiny model ---------------------------------------------------------------

def test_first_token_statistics_equal_a_direct_softmax(tiny_models, tmp_path):
    import torch

    from conftest import write_jsonl
    from pipelines.models import load_model

    rows = [{"id": f"q{i}", "instruction": f"Question {i}: what is {i} plus {i}?" + " more" * (i % 5), "context": "",
             "response": str(2 * i), "category": ["arithmetic", "summarization"][i % 2],
             "split": "train" if i < 8 else "test"} for i in range(14)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    run_dir = tmp_path / "run"
    model = tiny_models["gpt2"]
    assert main(["build", "--model", str(model), "--data", str(data), "--out", str(run_dir), "--template", "dolly",
                 "--projection", "pca", "--no-progress"]) == 0
    assert main(["score", str(run_dir), "--max-new-tokens", "2", "--batch-size", "4", "--no-progress"]) == 0
    run = Run(run_dir)
    ex = run.examples
    loaded = load_model(str(model))

    def logprobs(prompt):
        ids = loaded.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            return torch.log_softmax(loaded.model(**ids).logits[0, -1].double(), -1)

    mean = torch.stack([logprobs(p).exp() for p in ex["prompt"][ex["split"] == "train"]]).mean(0)
    test = np.flatnonzero(ex["split"] == "test")
    assert ex["first_entropy"][ex["split"] == "train"].isna().all()  # only the scored split
    for i in test:
        lp = logprobs(ex["prompt"][i])
        p = lp.exp()
        assert ex["first_entropy"][i] == pytest.approx(float(-(p * lp).sum()), rel=1e-5)
        assert ex["first_top_prob"][i] == pytest.approx(float(p.max()), rel=1e-5)
        assert ex["first_kl_to_mean"][i] == pytest.approx(float((p * (lp - mean.log())).sum()), rel=1e-4, abs=1e-7)
    info = run.manifest["scoring"]["first_token"]
    assert info["rows"] == len(test) and info["mean_over"] == "8 train prompts"
    # what scoring wrote is what the run contract lists (docs/run-folder.md)
    from llm_maps.contract import COLUMNS, Manifest, check

    assert check(json.loads((run_dir / "manifest.json").read_text()), Manifest) == []
    assert {"first_entropy", "first_top_prob", "first_kl_to_mean"} <= set(ex.columns) <= set(COLUMNS) | set(rows[0])
    # re-scoring stored outputs keeps them and loads no model
    before = ex["first_entropy"].to_numpy(copy=True)
    assert main(["score", str(run_dir), "--generate", "never", "--metric", "exact"]) == 0
    after = Run(run_dir)
    np.testing.assert_array_equal(after.examples["first_entropy"].to_numpy(), before)
    assert after.manifest["scoring"]["first_token"] == info


# --- the page ---------------------------------------------------------------------------------------------

def test_findings_page_layout_and_callback_build_without_a_browser(syn_run, tmp_path):
    import sys

    import dash

    from dashboard.app import create_app

    app = create_app([syn_run], [])
    entry = next(p for p in dash.page_registry.values() if p["path"] == "/findings")
    page = sys.modules[entry["module"]]  # the module as Dash's pages loader imported it
    client = app.server.test_client()
    assert client.get("/findings?run=syn").status_code == 200
    with app.server.test_request_context("/findings?run=syn"):
        tree = page.layout(run="syn", centred="centred", layer="1")
        ids = {c.id for c in _walk(tree) if getattr(c, "id", None)}
        assert {"findings-layer", "findings-metric", "findings-view", "findings-centred", "findings-a", "findings-b",
                "findings-curves", "findings-contrast", "findings-detector", "findings-confidence",
                "findings-curves-png", "findings-curves-svg", "findings-robustness"} <= ids
        layer = next(c for c in _walk(tree) if getattr(c, "id", None) == "findings-layer")
        assert layer.value == 1
        out = page.update_findings(2, "cosine", "prompt", "raw", "Chollet", "Reasoning", "syn", False)
        verdict, figs = out[0], out[2:6]
        stored = json.loads((syn_run / "findings.json").read_text()) if (syn_run / "findings.json").exists() else None
        text = _text(verdict)
        assert text.startswith(("Chollet falls off", "Reasoning falls off", "not supported"))
        if stored and stored["layer"] == 2 and stored["metric"] == "cosine" and not stored["centred"]:
            assert text == stored["verdict"] and "from findings.json" in _text(out[1])
        assert [len(f.data) > 0 for f in figs] == [True] * 4
        # another variant is computed here
        out = page.update_findings(1, "euclidean", "completion", "centred", "Reasoning", "Chollet", "syn", True)
        assert "computed here (B = 1000)" in _text(out[1]) and "view completion, centred" in _text(out[1])
        bad = page.update_findings(2, "cosine", "prompt", "raw", "Chollet", "Chollet", "syn", False)
        assert "must differ" in _text(bad[0])


def _walk(node):
    yield node
    children = getattr(node, "children", None)
    if children is None:
        return
    for child in children if isinstance(children, (list, tuple)) else [children]:
        if child is not None and not isinstance(child, (str, int, float)):
            yield from _walk(child)


def _text(node) -> str:
    if node is None:
        return ""
    if isinstance(node, (str, int, float)):
        return str(node)
    children = getattr(node, "children", None)
    if isinstance(children, (list, tuple)):
        return "".join(_text(c) for c in children)
    return _text(children)


def test_findings_page_in_the_browser(syn_run):
    from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser

    require_browser()
    from playwright.sync_api import sync_playwright

    from dashboard.app import create_app

    if not (syn_run / "findings.json").exists():
        assert main(["findings", str(syn_run), "--bootstrap", "200", "--no-progress"]) == 0
    stored = json.loads((syn_run / "findings.json").read_text())
    app = create_app([syn_run], [])
    with live_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
        log = ConsoleLog(page)
        try:
            page.goto(f"{url}/findings?run=syn")
            page.wait_for_selector("#findings-verdict-text", timeout=30_000)
            assert page.inner_text("#findings-verdict-text") == stored["verdict"]
            page.wait_for_function("() => document.querySelector('#findings-curves .js-plotly-plot')?._fullData"
                                   "?.length > 0", timeout=30_000)
            rows = page.eval_on_selector_all("#findings-robustness-table tbody tr", "els => els.length")
            assert rows == len(stored["robustness"])
            page.click("#nav-findings")  # the navbar links the page
            page.wait_for_selector("#findings-verdict-text", timeout=30_000)
            page.locator("label", has_text="train-mean-centred").click()  # URL state follows the controls
            page.wait_for_function("() => location.search.includes('centred=centred')", timeout=20_000)
            page.wait_for_function("() => document.querySelector('#findings-source-text')?.innerText"
                                   ".includes('computed here')", timeout=30_000)
            with page.expect_download() as dl:
                page.click("#findings-contrast-svg")
            assert dl.value.suggested_filename == "llm-maps-findings-contrast.svg"
            page.goto(page.url)  # a reload keeps the variant
            page.wait_for_function("() => document.querySelector('#findings-source-text')?.innerText"
                                   ".includes('centred')", timeout=30_000)
            assert log.take() == []
        finally:
            browser.close()


# --- within vs between tasks, direction, multiplicity, few tasks -------------------------------------

def simulate_hybrid(seed: int, *, within_a: float, within_b: float, between_a: float, between_b: float,
                    n_tasks: int = 24, per_task: int = 20, spread: float = 0.25, task_sd: float = 0.3) -> dict:
    """benchmarks/calibration.py's simulation: tasks at a mean distance m_t ~ U(0, 1), examples at
    m_t +/- spread; ``between`` makes far tasks harder, ``within`` far examples of a task."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import calibration

    return calibration.simulate(calibration.Scenario("test", within=(within_a, within_b), between=(between_a, between_b),
                                                     task_sd=(task_sd, task_sd), n_tasks=n_tasks, per_task=per_task,
                                                     spread=spread), seed)


def test_within_and_between_contrasts_equal_an_independent_recomputation():
    """between = statsmodels Logit on the task-mean percentile; its permutation p = refits on the tasks a
    permutation gives each domain; within's interval = per-domain conditional-logit replicates on the
    same task draws, spread by sqrt(G/(G-1)), differenced, percentiles."""
    import statsmodels.api as sm

    from llm_maps.findings import small_cluster

    sim = simulate_hybrid(4, within_a=-2.0, within_b=-1.0, between_a=-3.0, between_b=0.0, n_tasks=8, per_task=15)
    res = compute_findings(**sim, n_boot=200, seed=3)
    con = res["contrast"]
    pct = percentile_scale(sim["distance"])
    xbar, ys, codes = {}, {}, {}
    for name in ("Chollet", "Reasoning"):
        sel = sim["domain"] == name
        x, y, task = pct[sel], sim["correct"][sel].astype(float), sim["task"][sel]
        names, codes[name] = np.unique(task, return_inverse=True)
        xbar[name] = np.array([x[codes[name] == t].mean() for t in range(len(names))])[codes[name]]
        ys[name] = y
        ref = sm.Logit(y, sm.add_constant(xbar[name])).fit(disp=0)
        assert con["between"]["slope_a" if name == "Chollet" else "slope_b"] == pytest.approx(ref.params[1], rel=1e-7)
        assert con["within"]["slope_a" if name == "Chollet" else "slope_b"] == pytest.approx(
            res["domains"][name]["slope_within_task"])
    # within: the same task draws (the seed's first two multinomial draws), replicate by replicate
    rng = np.random.default_rng(3)
    counts = {name: task_resample_counts(n_tasks=8, n_boot=200, rng=rng) for name in ("Chollet", "Reasoning")}
    reps = {}
    for name in ("Chollet", "Reasoning"):
        sel = sim["domain"] == name
        est, r, _ = conditional_logit_slope(x=pct[sel], y=ys[name], task=codes[name], task_weights=counts[name])
        reps[name] = small_cluster(est, r, 8)
    diff = reps["Chollet"] - reps["Reasoning"]
    diff = diff[np.isfinite(diff)]
    assert (con["within"]["low"], con["within"]["high"]) == (pytest.approx(np.percentile(diff, 2.5)),
                                                           pytest.approx(np.percentile(diff, 97.5)))
    # between's permutation p: each permutation's slopes refitted on the rows of the tasks it gives a domain
    labels = np.zeros((200, 16))
    labels[:, :8] = 1.0
    labels = np.random.default_rng(3 + 7919).permuted(labels, axis=1)
    x_all = np.r_[xbar["Chollet"], xbar["Reasoning"]]
    y_all = np.r_[ys["Chollet"], ys["Reasoning"]]
    c_all = np.r_[codes["Chollet"], codes["Reasoning"] + 8]
    d = []
    for row in labels:
        mine = row[c_all] > 0.5
        sa = fit_logistic(x=x_all[mine], y=y_all[mine])[1][0]
        sb = fit_logistic(x=x_all[~mine], y=y_all[~mine])[1][0]
        d.append(sa - sb)
    d = np.array(d)
    d = d[np.isfinite(d)]
    expected = (1 + np.sum(np.abs(d) >= abs(con["between"]["slope_diff"]) - 1e-12)) / (len(d) + 1)
    assert con["between"]["p_value"] == pytest.approx(expected) and con["between"]["permutations"] == len(d)


def test_with_few_tasks_the_permutation_test_is_exact_and_equals_refits_over_every_assignment():
    """3 + 3 tasks have 20 assignments to the two domains (fewer than the permutations asked for):
    each part's p is the share of all 20 whose slope difference is as large as the observed one,
    refitted with statsmodels (Logit; ConditionalLogit for within), so it can never fall below
    2 / 20 (an assignment and its mirror tie). The within part once compared a finer estimate of the
    observed slope with grid estimates of the permuted ones, and printed p = 0.002 for 3 + 3 tasks."""
    import itertools

    import statsmodels.api as sm
    from statsmodels.discrete.conditional_models import ConditionalLogit

    sim = simulate_hybrid(5, within_a=-4.0, within_b=0.0, between_a=-2.0, between_b=0.0, n_tasks=3, per_task=60,
                          spread=0.3)
    res = compute_findings(**sim, n_boot=200, seed=1)
    con = res["contrast"]
    assert "every one of the 20 assignments of the tasks to the two domains (exact)" in res["interval"]
    pct = percentile_scale(sim["distance"])
    y = sim["correct"].astype(float)
    names = list(np.unique(sim["task"][sim["domain"] == "Chollet"])) + \
        list(np.unique(sim["task"][sim["domain"] == "Reasoning"]))
    code = np.array([names.index(t) for t in sim["task"]])
    xbar = np.array([pct[code == t].mean() for t in range(6)])[code]

    def slope(part, rows):
        if part == "within":
            return ConditionalLogit(y[rows], pct[rows][:, None], groups=code[rows]).fit(disp=0).params[0]
        x = pct if part == "pooled" else xbar
        return sm.Logit(y[rows], sm.add_constant(x[rows])).fit(disp=0).params[1]

    for part in ("pooled", "between", "within"):
        d = []
        for chosen in itertools.combinations(range(6), 3):  # the first is the observed: tasks 0-2 to a
            mine = np.isin(code, chosen)
            d.append(slope(part, mine) - slope(part, ~mine))
        d = np.array(d)
        expected = np.mean(np.abs(d) >= abs(d[0]) - 1e-9 * max(1.0, abs(d[0])))
        got = con if part == "pooled" else con[part]
        assert got["permutations"] == 20 and got["p_value"] == pytest.approx(expected, abs=1e-12), part
        assert got["p_value"] >= 2 / 20
        assert got["slope_diff"] == pytest.approx(d[0], rel=1e-3 if part == "within" else 1e-6), part


def test_the_within_task_spread_counts_the_tasks_that_carry_information():
    """Tasks all right (or all wrong) drop out of the conditional logit: the sqrt(G/(G-1)) spread of
    the within-task interval uses the G tasks left (6 of 8 here), for a domain and in the contrast."""
    from llm_maps.findings import small_cluster

    sim = simulate_hybrid(7, within_a=-3.0, within_b=-1.0, between_a=0.0, between_b=0.0, n_tasks=8, per_task=30)
    for name in ("Chollet", "Reasoning"):  # two tasks of each domain answered right throughout
        for t in sorted(set(sim["task"][sim["domain"] == name]))[:2]:
            sim["correct"][sim["task"] == t] = True
    res = compute_findings(**sim, n_boot=200, seed=3)
    pct = percentile_scale(sim["distance"])
    rng = np.random.default_rng(3)
    counts = {name: task_resample_counts(n_tasks=8, n_boot=200, rng=rng) for name in ("Chollet", "Reasoning")}
    reps = {}
    for name in ("Chollet", "Reasoning"):
        sel = sim["domain"] == name
        codes = np.unique(sim["task"][sel], return_inverse=True)[1]
        est, r, informative = conditional_logit_slope(x=pct[sel], y=sim["correct"][sel].astype(float), task=codes,
                                                      task_weights=counts[name])
        assert informative == 6 and res["domains"][name]["n_tasks_within"] == 6
        reps[name] = small_cluster(est, r, 6)
        d = res["domains"][name]
        lo, hi = np.percentile(reps[name][np.isfinite(reps[name])], [2.5, 97.5])
        assert (d["slope_within_task_low"], d["slope_within_task_high"]) == (pytest.approx(lo), pytest.approx(hi))
    diff = reps["Chollet"] - reps["Reasoning"]
    diff = diff[np.isfinite(diff)]
    assert (res["contrast"]["within"]["low"], res["contrast"]["within"]["high"]) == (
        pytest.approx(np.percentile(diff, 2.5)), pytest.approx(np.percentile(diff, 97.5)))


def test_far_tasks_harder_in_one_domain_is_a_between_difference_not_a_within_one():
    """Equal within-task slopes, far tasks harder only in Chollet: the pooled slope mixes the two; the
    verdict says which part carries it."""
    res = compute_findings(**simulate_hybrid(12, within_a=-1.0, within_b=-1.0, between_a=-6.0, between_b=0.0),
                           n_boot=1000, seed=0)
    assert res["verdict_detail"]["pooled"] == "supported"  # the pooled slope alone would claim a steeper falloff
    assert res["verdict_detail"]["within"] == "not supported"
    assert res["verdict_detail"]["between"] == "supported"
    assert "far tasks are harder in Chollet than in Reasoning" in res["verdict"]
    assert "within a task, distance is not shown to matter more in Chollet than in Reasoning" in res["verdict"]
    within = res["contrast"]["within"]
    assert within["low"] < 0 < within["high"]


def test_a_within_task_difference_the_other_way_is_reversed():
    res = compute_findings(**simulate_hybrid(5, within_a=0.0, within_b=-6.0, between_a=0.0, between_b=0.0,
                                             spread=0.5), n_boot=1000, seed=0)
    assert res["verdict_detail"]["within"] == "reversed"
    assert "within a task, distance matters more in Reasoning than in Chollet, the reverse" in res["verdict"]
    assert res["verdict_detail"]["pooled"] in ("reversed", "not supported")  # never "supported"


def test_fewer_than_five_tasks_per_domain_make_no_claim():
    res = compute_findings(**simulate(0, -6.0, 0.0, n_tasks=4, per_task=60), n_boot=500, seed=0)
    con = res["contrast"]
    # 4 tasks a domain: no interval over tasks (the task bootstrap's would have excluded 0), no claim
    assert con["low"] is None and con["high"] is None and con["slope_diff"] < 0 and con["p_value"] is not None
    assert res["verdict_detail"] == {"pooled": "not supported", "within": "not supported", "between": "not supported"}
    assert res["verdict"].startswith("not supported: Chollet has only 4 tasks; no claim is made with fewer than 5")


def test_a_part_that_could_not_be_fitted_says_so_in_words():
    from llm_maps.findings import part_sentence

    con = {"a": "Chollet", "b": "Reasoning",
           "between": {"slope_diff": None, "low": None, "high": None, "p_value": None},
           "within": {"slope_diff": -0.5, "low": None, "high": None, "p_value": 0.4}}
    assert part_sentence("between", con, "not supported") == \
        "far tasks are not shown to be harder in Chollet than in Reasoning (no difference could be fitted)"
    assert part_sentence("within", con, "not supported").endswith("(difference -0.50 [no interval], p = 0.4)")


def test_the_findings_pages_domain_table_shows_task_clustered_accuracies_and_labels_old_files_wilson():
    from dashboard.findings_view import domain_rows

    res = compute_findings(**simulate(8, -2.0, -1.0, n_tasks=6, per_task=20), n_boot=200, seed=0)
    rows = domain_rows(res)
    assert rows[0][3] == "accuracy [95 %]" and rows[0][7] == "nearest quarter [95 %]"
    st = res["domains"]["Chollet"]
    chollet = next(r for r in rows if r[0] == "Chollet")
    assert chollet[3] == f"{st['accuracy']:.2f} [{st['accuracy_task_low']:.2f}, {st['accuracy_task_high']:.2f}]"
    near = st["near"]
    assert chollet[7] == f"{near['accuracy']:.2f} [{near['task_low']:.2f}, {near['task_high']:.2f}] (n={near['n']})"
    # a findings.json written before the task-clustered keys: Wilson's interval, said to be Wilson's
    old = {"domains": {"Chollet": {k: v for k, v in st.items() if k not in ("accuracy_task_low", "accuracy_task_high")}
                       | {"near": {k: v for k, v in near.items() if k not in ("task_low", "task_high")}}}}
    cell = domain_rows(old)[1]
    assert cell[3] == f"{st['accuracy']:.2f} [{st['accuracy_low']:.2f}, {st['accuracy_high']:.2f}] Wilson"
    assert cell[7] == f"{near['accuracy']:.2f} [{near['low']:.2f}, {near['high']:.2f}] Wilson (n={near['n']})"


def test_the_robustness_note_gives_the_floor_an_exact_test_really_has():
    """5 + 5 tasks: 252 assignments, and the observed one ties with its mirror, so no p is below
    2/252 and 9 Holm-adjusted rows cannot go below 0.071 (with 1/252 the note was not printed);
    4 + 6 tasks: 210 assignments and no mirror, 1/210; many tasks: random permutations, 1/(B+1)."""
    from llm_maps.findings import robustness_floor_note

    assert robustness_floor_note(9, 5, 5, 300) == ("robustness: with 9 variants and only 252 ways to assign the 10 tasks "
                                                   "to the two domains, no Holm-adjusted p can fall below 0.071: more "
                                                   "tasks are needed for 'supported (adjusted)' to be reachable")
    assert robustness_floor_note(9, 4, 6, 300) is None  # 9 / 210 = 0.043
    assert robustness_floor_note(11, 4, 6, 300).endswith("below 0.052: more tasks are needed for 'supported (adjusted)' "
                                                         "to be reachable")
    assert robustness_floor_note(120, 20, 20, 2000).startswith("robustness: with 120 variants and 2000 permutations no "
                                                              "Holm-adjusted p can fall below 0.060")
    assert robustness_floor_note(0, 5, 5, 300) is None


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from llm_maps.findings import holm

    ps = [0.01, 0.04, 0.03, 0.2, 0.005, 0.5]
    assert holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]))
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    assert holm([]) == []


def test_domain_and_quarter_accuracies_have_task_clustered_intervals_and_few_tasks_say_no_claim():
    """Each domain's accuracy, and its nearest and farthest quarter's, with a task bootstrap interval
    (recomputed here on the same draws, never narrower than Wilson's); the printed table shows them;
    a domain of fewer than MIN_TASKS_FOR_CLAIM tasks gets no interval over tasks and 'no claim'; the
    table says how many replicates failed to fit."""
    from llm_maps.findings import MIN_TASKS_FOR_CLAIM, format_findings, small_cluster, wilson_interval

    sim = simulate(6, -2.0, -1.0, n_tasks=6, per_task=40)
    res = compute_findings(**sim, n_boot=200, seed=2)
    for name, st in res["domains"].items():
        sel = sim["domain"] == name
        pct = percentile_scale(sim["distance"])[sel]
        y, task = sim["correct"][sel].astype(float), sim["task"][sel]
        codes = np.unique(task, return_inverse=True)[1]
        for key, rows, seed in (("domain", np.ones(len(y), dtype=bool), 2),
                                ("near", pct <= np.quantile(pct, 0.25), 3), ("far", pct >= np.quantile(pct, 0.75), 4)):
            k_t = np.bincount(codes[rows], weights=y[rows], minlength=6)
            n_t = np.bincount(codes[rows], minlength=6).astype(float)
            counts = task_resample_counts(n_tasks=int((n_t > 0).sum()), n_boot=200, rng=np.random.default_rng(seed))
            reps = (counts @ k_t[n_t > 0]) / (counts @ n_t[n_t > 0])
            est = k_t.sum() / n_t.sum()
            lo, hi = np.clip(np.percentile(small_cluster(est, reps, int((n_t > 0).sum())), [2.5, 97.5]), 0, 1)
            wlo, whi = wilson_interval(int(k_t.sum()), int(n_t.sum()))
            got = ((st["accuracy_task_low"], st["accuracy_task_high"]) if key == "domain"
                   else (st[key]["task_low"], st[key]["task_high"]))
            assert got == (pytest.approx(min(lo, wlo)), pytest.approx(max(hi, whi))), (name, key)
    text = format_findings({**res, "split": "test", "layer": 1, "metric": "cosine", "view": "prompt"})
    st = res["domains"]["Chollet"]
    row = next(line for line in text.splitlines() if line.startswith("  Chollet "))
    assert f"{st['accuracy']:.2f} [{st['accuracy_task_low']:.2f}, {st['accuracy_task_high']:.2f}]" in row
    assert f"{st['near']['accuracy']:.2f} [{st['near']['task_low']:.2f}, {st['near']['task_high']:.2f}]" in row
    assert "no claim" not in row
    # 3 tasks a domain: no interval over tasks (3 tasks resampled: 10 distinct replicates), no claim
    few = compute_findings(**simulate(6, -2.0, -1.0, n_tasks=3, per_task=40), n_boot=200, seed=2)
    st = few["domains"]["Chollet"]
    assert st["accuracy_task_low"] is None and st["near"]["task_low"] is None and st["slope_low"] is None
    row = next(line for line in format_findings({**few, "split": "test", "layer": 1, "metric": "cosine",
                                                 "view": "prompt"}).splitlines() if line.startswith("  Chollet "))
    assert f" {st['accuracy']:.2f} [{st['accuracy_low']:.2f}, {st['accuracy_high']:.2f}]w " in row  # Wilson's, marked
    assert f"[{st['far']['low']:.2f}, {st['far']['high']:.2f}]w" in row and st["auroc_low"] is None
    assert row.endswith("(no claim: only 3 tasks)") and MIN_TASKS_FOR_CLAIM > 3
    failed = {**res, "contrast": {**res["contrast"], "bootstrap_failed": 17}}
    assert "; 17 of 200 replicates failed to fit, left out" in format_findings(
        {**failed, "split": "test", "layer": 1, "metric": "cosine", "view": "prompt"})


def test_a_note_about_the_run_stays_with_the_run_through_re_runs(tmp_path, capsys):
    """The demo's caveat lives in the manifest: re-running `llm-maps findings` (as the README
    suggests) keeps it, and `info` shows it; a note is added once, with a history entry."""
    from llm_maps.runfolder import add_note

    run = write_synthetic_run(tmp_path / "noted", 300, seed=2)
    note = "a demonstration of the method, not evidence about the claim"
    assert add_note(run, note) is True and add_note(run, note) is False
    manifest = read_manifest(run)
    assert manifest["notes"] == [note] and [h["stage"] for h in manifest["history"]].count("note") == 1
    for _ in range(2):  # as the demo wrote it, then as a user re-runs it
        assert main(["findings", str(run), "--bootstrap", "200", "--no-robustness", "--no-progress"]) == 0
        assert json.loads((run / "findings.json").read_text())["notes"][0] == note
    capsys.readouterr()
    assert main(["info", str(run)]) == 0
    assert f"note       {note}" in capsys.readouterr().out.splitlines()
