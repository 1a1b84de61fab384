"""Comparing runs (llm_maps.comparison, `llm-maps compare`, `llm-maps probe`, the Compare page):
statistics against reference formulas and libraries on data with a known answer, then two tiny
models of different sizes built here compared end to end through the CLI and the page in Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboard.synthetic import write_synthetic_run
from llm_maps import comparison as CMP
from llm_maps.runfolder import EXAMPLES, Run, layer_file


def direct_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA written out (Kornblith et al. 2019, eq. for centred X, Y), in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    hsic = np.linalg.norm(yc.T @ xc, "fro") ** 2
    return float(hsic / (np.linalg.norm(xc.T @ xc, "fro") * np.linalg.norm(yc.T @ yc, "fro")))


def random_rotation(dim: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


# --- CKA -------------------------------------------------------------------------------------------

def test_cka_equals_the_direct_formula_is_one_on_itself_and_invariant_to_rotation_and_scale():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) + 5.0  # offset: centring matters
    y = np.tanh(x @ rng.normal(size=(12, 20))) + 0.5 * rng.normal(size=(300, 20))
    expected = direct_cka(x, y)
    assert 0.05 < expected < 0.95
    assert CMP.linear_cka(x, y) == pytest.approx(expected, rel=1e-12, abs=0)
    assert CMP.linear_cka(x, x) == 1.0
    moved = 3.7 * x @ random_rotation(12, rng) + 11.0  # rotation + isotropic scaling + translation
    assert CMP.linear_cka(moved, y) == pytest.approx(expected, rel=1e-10)
    assert CMP.linear_cka(x, moved) == pytest.approx(1.0, rel=1e-12)
    # not invariant to an anisotropic scaling (CKA is not a trivial constant)
    assert abs(CMP.linear_cka(x * np.linspace(0.1, 10, 12), y) - expected) > 1e-3


def test_cka_streams_memory_maps_in_chunks_with_rows_in_group_order(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    n = 1000
    a = (rng.normal(size=(n, 16)) * 2).astype(np.float16)
    b = (np.tanh(a.astype(np.float64) @ rng.normal(size=(16, 24))) + rng.normal(size=(n, 24))).astype(np.float16)
    perm = rng.permutation(n)  # run b stores the examples in another order
    stored_b = np.empty_like(b)
    stored_b[perm] = b
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", stored_b)
    ma, mb = np.load(tmp_path / "a.npy", mmap_mode="r"), np.load(tmp_path / "b.npy", mmap_mode="r")
    calls = []
    real = CMP._chunk_rows
    monkeypatch.setattr(CMP, "_chunk_rows", lambda *a_, **k: calls.append(1) or 128)  # many chunks
    sources = [CMP.LayerSource("a", 0, ma), CMP.LayerSource("b", 0, mb, rows=perm)]
    got = CMP.cka_pairs(sources, [(0, 1), (0, 0), (1, 1)])
    monkeypatch.setattr(CMP, "_chunk_rows", real)
    assert calls
    assert got[(0, 1)] == pytest.approx(direct_cka(a, b), rel=1e-5)  # float32 products of fp16 inputs
    assert got[(0, 0)] == 1.0 and got[(1, 1)] == 1.0


# --- Procrustes ------------------------------------------------------------------------------------

def test_procrustes_recovers_a_known_rotation_exactly_and_its_residual_is_scipys_disparity():
    from scipy.spatial import procrustes as scipy_procrustes

    rng = np.random.default_rng(2)
    target = rng.normal(size=(200, 2)) * [3.0, 1.0]
    theta = 1.1
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    for flip in (np.eye(2), np.diag([1.0, -1.0])):  # a rotation, and a rotation with a reflection
        source = 0.37 * target @ (rot @ flip) + [4.0, -9.0]
        fit = CMP.procrustes_align(source, target)
        np.testing.assert_allclose(fit["aligned"], target, atol=1e-10)
        np.testing.assert_allclose(fit["rotation"], (rot @ flip).T, atol=1e-12)
        assert fit["scale"] == pytest.approx(1 / 0.37, rel=1e-12) and fit["residual"] < 1e-20
    noisy = target + rng.normal(size=target.shape)
    assert CMP.procrustes_align(noisy, target)["residual"] == pytest.approx(scipy_procrustes(target, noisy)[2],
                                                                            rel=1e-10)


# --- probes ----------------------------------------------------------------------------------------

def test_probes_reach_one_on_separable_encodings_and_the_baseline_on_shuffled_labels():
    rng = np.random.default_rng(3)
    n, tasks = 600, np.repeat(np.arange(12), 50)
    domain = np.where(tasks % 3 == 0, "Chollet", "Reasoning")  # 4 tasks vs 8 tasks
    x = rng.normal(size=(n, 10))
    x[:, 0] += np.where(domain == "Chollet", 6.0, -6.0)  # linearly separable along one direction
    res = CMP.probe_scores(x, domain, tasks.astype(str), folds=4)
    assert res["accuracy"] == 1.0 and res["cv"] == "StratifiedGroupKFold(4) by task" and res["n"] == n
    # chance is the class prior: the largest class share (8 of 12 tasks, 400 of 600 examples)
    assert res["baseline"] == pytest.approx(400 / 600)
    assert res["minus_baseline"] == pytest.approx(1 - 400 / 600) and res["above_chance"] is True
    assert res["interval_unit"] == "12 tasks"
    # a class in fewer groups than folds: GroupKFold, as before
    assert CMP.probe_scores(x, domain, tasks.astype(str), folds=5)["cv"] == "GroupKFold(5) by task"
    shuffled = rng.permutation(np.where(rng.random(n) < 0.7, "a", "b"))
    noise = rng.normal(size=(n, 10))
    res = CMP.probe_scores(noise, shuffled, None, folds=5)
    assert res["cv"] == "StratifiedKFold(5)" and res["interval_unit"] == f"{n} examples"
    assert abs(res["accuracy"] - res["baseline"]) <= 0.04, res
    assert res["above_chance"] is False


def test_probe_intervals_are_a_task_bootstrap_of_the_same_replicates():
    """Accuracy, chance and probe - chance from the same task draws, replicate by replicate, spread
    by sqrt(G/(G-1)), percentiles: equal to a hand computation on materialised resamples."""
    from llm_maps.findings import small_cluster, task_resample_counts

    rng = np.random.default_rng(0)
    tasks = np.repeat(np.arange(9), 7)
    y = np.where(rng.random(63) < 0.4, "x", "y")
    hits = rng.random(63) < 0.6
    res = CMP.probe_intervals(hits, y, tasks, n_boot=300, seed=5)
    counts = task_resample_counts(n_tasks=9, n_boot=300, rng=np.random.default_rng(5 + 31337))
    major = "x" if (y == "x").mean() > 0.5 else "y"
    acc, base = [], []
    for r in range(300):
        rows = np.concatenate([np.flatnonzero(tasks == t).repeat(1) for t in range(9) for _ in range(int(counts[r, t]))])
        acc.append(hits[rows].mean())
        base.append((y[rows] == major).mean())  # the data's largest class, in each replicate
    est = hits.mean() - (y == major).mean()
    diff = small_cluster(est, np.array(acc) - np.array(base), 9)
    assert (res["minus_baseline_low"], res["minus_baseline_high"]) == (
        pytest.approx(np.percentile(diff, 2.5)), pytest.approx(np.percentile(diff, 97.5)))
    assert res["minus_baseline"] == pytest.approx(est)


def test_a_probes_chance_level_interval_holds_its_estimate_and_a_task_target_resamples_within_tasks():
    """Chance is the share of the data's largest class: its replicates take that class's share, so
    the interval holds the estimate (the largest share of each replicate sat above it: for the task
    target, 0.094 with an interval of [0.171, 0.377]). Where each class is one task, examples are
    resampled within their task: class shares, and so chance, stay fixed."""
    rng = np.random.default_rng(2)
    tasks = np.repeat(np.arange(11), rng.integers(20, 40, 11))
    hits = rng.random(len(tasks)) < 0.3
    res = CMP.probe_intervals(hits, tasks.astype(str), tasks.astype(str), n_boot=400, seed=1)
    share = np.bincount(tasks).max() / len(tasks)
    assert res["baseline_low"] == pytest.approx(share) and res["baseline_high"] == pytest.approx(share)
    assert res["interval_unit"] == "examples within 11 tasks"
    assert res["minus_baseline_low"] < res["minus_baseline"] < res["minus_baseline_high"]
    assert res["low"] < hits.mean() < res["high"]
    # a label shared by several tasks (domain): tasks resampled; chance's interval holds chance
    domain = np.where(tasks % 3 == 0, "a", "b")
    res = CMP.probe_intervals(hits, domain, tasks.astype(str), n_boot=400, seed=1)
    chance = (domain == "b").mean()
    assert res["interval_unit"] == "11 tasks" and res["baseline_low"] < chance < res["baseline_high"]


def test_probes_on_null_data_rarely_claim_above_chance():
    """Encodings unrelated to the label (which is constant within a task, as domain is): the probe is
    judged at the task level, so it claims 'above chance' in few data sets (it was 62 % with Wilson
    intervals over examples and a training-fold baseline)."""
    claims = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        tasks = np.repeat(np.arange(16), 20)
        task_label = np.where(rng.random(16) < 0.5, "Chollet", "Reasoning")
        task_mean = rng.normal(size=(16, 8))  # tasks differ, but not by domain
        x = task_mean[tasks] + rng.normal(size=(320, 8))
        res = CMP.probe_scores(x, task_label[tasks], tasks.astype(str), folds=4, n_boot=300, seed=seed)
        claims += res["above_chance"]
    assert claims <= 2, claims


# --- curves ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("acc, expected", [
    ([0.5, 0.52, 0.55], "flat"), ([0.6, 0.45, 0.4], "inverse"), ([0.1, 0.3, 0.5], "smooth"),
    ([0.1, 0.12, 0.7], "emergent"), ([0.1, 0.7], "smooth"), ([0.1, 0.35, 0.3, 0.6], "smooth"), ([0.2, 0.9, 0.4], "emergent"), ([0.3, None, 0.5], None)])
def test_curve_classes_follow_the_stated_rule(acc, expected):
    assert CMP.classify_curve(list(range(len(acc))), acc) == expected
    if expected and None not in acc:  # the x order decides, not the order given
        assert CMP.classify_curve(list(range(len(acc)))[::-1], acc[::-1]) == expected


def test_distance_percentile_is_scipys_mean_percentile():
    from scipy.stats import percentileofscore

    d = np.array([0.3, 0.1, 0.1, 0.9, np.nan, 0.5])
    ok = d[np.isfinite(d)]
    expected = [percentileofscore(ok, v, kind="mean") / 100 for v in ok]
    got = CMP.distance_percentile(d)
    np.testing.assert_allclose(got[np.isfinite(d)], expected)
    assert np.isnan(got[4])


def _pair(tmp_path, n=240, **kw):
    a = write_synthetic_run(tmp_path / "small", n, layers=(1, 2), seed=5, **kw)
    b = write_synthetic_run(tmp_path / "large", n, layers=(1, 2, 3), seed=5, hidden=24, **kw)
    return a, b


def _set(run: Path, **columns):
    frame = pd.read_parquet(run / EXAMPLES)
    for k, v in columns.items():
        frame[k] = v
    frame.to_parquet(run / EXAMPLES)


def _set_manifest(run: Path, **keys):
    m = json.loads((run / "manifest.json").read_text())
    m.update(keys)
    (run / "manifest.json").write_text(json.dumps(m))


def test_accuracy_curves_match_direct_counts_and_statsmodels_wilson(tmp_path):
    from scipy.stats import binomtest
    from statsmodels.stats.proportion import proportion_confint

    a, b = _pair(tmp_path)
    frame = pd.read_parquet(a / EXAMPLES)
    test = frame["split"] == "test"
    tasks = sorted(frame["task"].unique())
    # run b: every Chollet test example correct, Reasoning as in run a but the first task all wrong
    cb = frame["correct"].copy()
    cb[test & (frame["domain"] == "Chollet")] = True
    reasoning = sorted(frame.loc[frame["domain"] == "Reasoning", "task"].unique())
    cb[test & (frame["task"] == reasoning[0])] = False
    _set(b, correct=cb)
    _set_manifest(a, n_params=1_000)
    _set_manifest(b, n_params=50_000)
    res = CMP.compare_runs([Run(a), Run(b)], cka="off")
    assert res["axis"] == {"kind": "n_params", "values": [1000.0, 50000.0], "log": True}
    for t in tasks:
        e = res["tasks"][t]
        for r, c in enumerate((frame["correct"], cb)):
            sel = test & (frame["task"] == t) & c.notna()
            k, n = int(c[sel].sum()), int(sel.sum())
            assert e["n"][r] == n and e["accuracy"][r] == pytest.approx(k / n)
            lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
            assert (e["low"][r], e["high"][r]) == pytest.approx((lo, hi), abs=1e-9)
        assert e["measured_class"] == CMP.classify_curve([1000, 50000], e["accuracy"])
        # the class stands only when the paired change's bootstrap interval (recomputed: the task's
        # examples scored in both runs, seed [0, the task's index]) is clear of the boundary
        sel = test & (frame["task"] == t) & frame["correct"].notna() & cb.notna()
        d = cb[sel].astype(float).to_numpy() - frame["correct"][sel].astype(float).to_numpy()
        idx = np.random.default_rng([0, tasks.index(t)]).integers(0, len(d), size=(2000, len(d)))
        lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
        assert e["change"] == {"value": pytest.approx(d.mean()), "low": pytest.approx(lo), "high": pytest.approx(hi),
                               "n": len(d)}
        clear = {"flat": -0.1 < lo and hi < 0.1, "inverse": hi <= -0.1}.get(e["measured_class"], lo >= 0.1)
        assert e["class"] == (e["measured_class"] if clear else "unclear")
        assert e["domain"] == frame.loc[frame["task"] == t, "domain"].iloc[0]
    chollet = res["domains"]["Chollet"]
    up = sum(1 for t in tasks if res["tasks"][t]["domain"] == "Chollet"
             and res["tasks"][t]["accuracy"][1] > res["tasks"][t]["accuracy"][0])
    assert chollet["sign_test"]["up"] == up and chollet["sign_test"]["down"] == 0
    assert chollet["sign_test"]["p_value"] == pytest.approx(binomtest(up, up, 0.5).pvalue)
    assert chollet["runs"][1]["accuracy"] == 1.0 and chollet["n_tasks"] == 6
    assert sum(res["classes"].values()) == len(tasks)
    assert res["tasks"][reasoning[0]]["accuracy"][1] == 0.0
    # each domain's change, first run to last, on the examples scored in both: a task bootstrap of
    # the per-task sums (recomputed on the same draws), spread by sqrt(G/(G-1)), in the verdict too
    from llm_maps.findings import small_cluster, task_resample_counts

    for name in ("Chollet", "Reasoning"):
        sel = test & (frame["domain"] == name) & frame["correct"].notna() & cb.notna()
        g = pd.DataFrame({"task": frame.loc[sel, "task"],
                          "d": cb[sel].astype(float) - frame.loc[sel, "correct"].astype(float)})
        per_task = g.groupby("task")["d"].agg(["sum", "count"]).sort_index()
        est = per_task["sum"].sum() / per_task["count"].sum()
        counts = task_resample_counts(n_tasks=len(per_task), n_boot=2000, rng=np.random.default_rng(0))
        reps = (counts @ per_task["sum"].to_numpy()) / (counts @ per_task["count"].to_numpy(float))
        lo, hi = np.clip(np.percentile(small_cluster(est, reps, len(per_task)), [2.5, 97.5]), -1, 1)
        got = res["domains"][name]["change"]
        assert (got["value"], got["low"], got["high"]) == (pytest.approx(est), pytest.approx(lo), pytest.approx(hi))
        assert f"; change {est:+.2f} [{lo:+.2f}, {hi:+.2f}] over tasks; " in res["domains"][name]["verdict"]
    assert res["domains"]["Chollet"]["change"]["low"] > 0


def test_checkpoints_use_the_step_axis_and_runs_without_either_the_order_given(tmp_path):
    a, b = _pair(tmp_path)
    c = write_synthetic_run(tmp_path / "mid", 240, layers=(1,), seed=5)
    res = CMP.compare_runs([Run(a), Run(c), Run(b)], cka="off")  # older runs: no n_params, no step
    assert res["axis"] == {"kind": "order", "values": [1.0, 2.0, 3.0], "log": False}
    assert [r["name"] for r in res["runs"]] == ["small", "mid", "large"]
    for run, step in ((a, 0), (c, 100), (b, 50)):
        _set_manifest(run, step=step, base_run="small", n_params=10)
    res = CMP.compare_runs([Run(a), Run(c), Run(b)], cka="off")
    assert res["axis"]["kind"] == "step" and res["axis"]["values"] == [0.0, 100.0, 50.0]
    assert [(r["step"], r["base_run"]) for r in res["runs"]] == [(0, "small"), (100, "small"), (50, "small")]
    assert CMP.x_axis(res["runs"], "n_params")[0] == "n_params"  # when every run has it, on request
    _set_manifest(c, step=None)
    with pytest.raises(CMP.LLMMapsError, match="--axis step: run 'mid' has no 'step' in its manifest"):
        CMP.compare_runs([Run(a), Run(c), Run(b)], cka="off", axis="step")
    # the first and last runs on the axis (step 0 and 100) are the ends of each curve
    assert all(e["measured_class"] == CMP.classify_curve([0, 100, 50], e["accuracy"]) for e in res["tasks"].values())


def test_the_comparison_and_its_figures_never_import_torch(tmp_path):
    """What the web process runs for the Compare page (and the export) stays torch-free."""
    import subprocess
    import sys

    a, b = _pair(tmp_path, n=120)
    code = ("import sys; from llm_maps.comparison import compare_runs, probe_run; from llm_maps.runfolder import Run; "
            "import dashboard.compare_figures as CF; import dashboard.app as A; A.create_app([], []); "
            f"runs = [Run({str(a)!r}), Run({str(b)!r})]; res = compare_runs(runs, cka='auto'); probe_run(runs[0], save=False); "
            "CF.compare_section(runs, res); "
            "bad = [m for m in ('torch', 'transformers', 'pipelines') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


def test_movers_are_the_examples_whose_train_neighbours_changed(tmp_path):
    a, b = _pair(tmp_path)
    frame = pd.read_parquet(a / EXAMPLES)
    train_ids = frame.loc[frame["split"] == "train", "example_id"].tolist()
    nn = [list(v) for v in frame["nn_train_ids"]]
    moved = {5: 0.0, 17: 0.5}  # row -> expected Jaccard (k = 3)
    nn[5] = [i for i in train_ids if i not in nn[5]][:3]
    nn[17] = nn[17][:2] + [next(i for i in train_ids if i not in nn[17])]  # 2 shared of 4 -> 0.5
    _set(b, nn_train_ids=nn)
    group = CMP.match_runs([Run(a), Run(b)])
    jac, k = CMP.neighbour_jaccard(group)
    assert k == 3 and np.all(jac[0] == 1.0)
    assert jac[1, 5] == 0.0 and jac[1, 17] == 0.5
    assert np.sum(jac[1] < 1) == 2
    top = CMP.top_movers(group, jac, limit=2)
    assert [(m["example_id"], m["jaccard"][1]) for m in top] == [(frame["example_id"][r], j) for r, j in moved.items()]


def test_runs_in_another_row_order_align_and_the_maps_are_procrustes_aligned(tmp_path):
    a, b = _pair(tmp_path)
    frame = pd.read_parquet(b / EXAMPLES)
    rng = np.random.default_rng(4)
    theta = 0.6
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    xy = frame[["x", "y"]].to_numpy() @ rot * 2.0 + 3.0
    frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
    perm = rng.permutation(len(frame))
    frame = frame.iloc[perm].reset_index(drop=True)
    frame.to_parquet(b / EXAMPLES)
    for k in (1, 2, 3):  # encodings follow the rows
        enc = np.load(layer_file(b, k))
        np.save(layer_file(b, k), enc[perm])
    group = CMP.match_runs([Run(a), Run(b)])
    maps = CMP.aligned_maps(group)
    np.testing.assert_allclose(maps["coords"][1], maps["coords"][0], atol=1e-9)
    assert maps["residuals"][0] == 0.0 and maps["residuals"][1] < 1e-12
    ref = pd.read_parquet(a / EXAMPLES)
    np.testing.assert_array_equal(frame["example_id"].to_numpy()[group.orders[1]], ref["example_id"].to_numpy())
    # CKA of the same layer file content in another row order is exactly the CKA of the original
    pairs = CMP.group_cka(group, cache="off")
    direct = direct_cka(np.load(layer_file(a, 2)), np.load(layer_file(b, 2))[np.argsort(perm)])
    got = next(p["cka"] for p in pairs if (p["run_a"], p["layer_a"], p["run_b"], p["layer_b"]) == ("small", 2, "large", 2))
    assert got == pytest.approx(direct, abs=2e-6)


def test_mismatched_runs_give_one_line_with_the_counts(tmp_path, capsys):
    from interfaces.cli import main

    a, b = _pair(tmp_path)
    frame = pd.read_parquet(b / EXAMPLES)
    frame.loc[3, "prompt"] = "another prompt"
    frame.loc[8, "prompt"] = "and another"
    frame = frame.drop(index=[10]).reset_index(drop=True)
    frame.to_parquet(b / EXAMPLES)
    assert main(["compare", str(a), str(b), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == ("llm-maps compare: error: runs 'small' and 'large' do not hold the same examples (matched by "
                   "example_id and prompt hash): 237 matched, 1 missing, 2 changed; first: example 'ex-0000003' "
                   "has another prompt")
    assert main(["compare", str(a), "--no-progress"]) == 2
    assert "give at least two runs" in capsys.readouterr().err


# --- two tiny models end to end -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sized_runs(tmp_path_factory):
    """Two tiny GPT-NeoX models of different sizes over the same 40 Dolly rows, all layers, scored."""
    from conftest import build_tiny_model, dolly_rows, write_jsonl
    from interfaces.cli import main

    root = tmp_path_factory.mktemp("compare")
    data = write_jsonl(root / "d.jsonl", dolly_rows(40))
    out = {}
    for name, hidden, layers in (("small", 16, 2), ("big", 32, 3)):
        model = build_tiny_model("gpt_neox", root / f"m-{name}", hidden=hidden, layers=layers, seed=1)
        run = root / "runs" / name
        assert main(["build", "--model", str(model), "--data", str(data), "--out", str(run), "--template", "dolly",
                     "--projection", "pca", "--k", "3", "--layers", "all", "--no-progress"]) == 0
        assert main(["score", str(run), "--max-new-tokens", "2", "--no-progress"]) == 0
        out[name] = (run, model, layers)
    return root, out


@pytest.mark.slow
def test_two_model_sizes_compare_through_the_cli(sized_runs, capsys):
    from transformers import AutoModelForCausalLM

    from interfaces.cli import main

    root, runs = sized_runs
    (small, small_model, ls), (big, big_model, lb) = runs["small"], runs["big"]
    for run, model, layers in runs.values():
        m = Run(run).manifest
        assert m["layers"] == list(range(layers + 1))  # --layers all
        assert m["n_params"] == AutoModelForCausalLM.from_pretrained(str(model)).num_parameters() > 0
    out_json, out_html = root / "cmp.json", root / "cmp.html"
    assert main(["compare", str(small), str(big), "--json", str(out_json), "--html", str(out_html),
                 "--no-progress"]) == 0
    res = json.loads(out_json.read_text())
    assert [(r["name"], r["n_params"], r["step"]) for r in res["runs"]] == [
        ("small", Run(small).manifest["n_params"], None), ("big", Run(big).manifest["n_params"], None)]
    assert all(set(r) >= {"name", "model", "n_params", "step"} for r in res["runs"])
    assert res["axis"]["kind"] == "n_params" and res["runs"][0]["n_params"] < res["runs"][1]["n_params"]
    frame = Run(small).examples
    for t, e in res["tasks"].items():
        assert set(e) >= {"domain", "accuracy", "class"} and len(e["accuracy"]) == 2
        for r, run in enumerate((small, big)):
            f = Run(run).examples
            sel = (f["task"] == t) & (f["split"] == "test") & f["correct"].notna()
            assert e["accuracy"][r] == pytest.approx(f.loc[sel, "correct"].astype(float).mean())
    assert set(res["tasks"]) == set(frame.loc[frame["split"] == "test", "task"])
    pairs = res["cka"]["layer_pairs"]
    assert all(set(p) == {"run_a", "run_b", "layer_a", "layer_b", "cka"} for p in pairs)
    between = [p for p in pairs if p["run_a"] != p["run_b"]]
    assert len(between) == (ls + 1) * (lb + 1)
    assert len(pairs) == len(between) + (ls + 1) * (ls + 2) // 2 + (lb + 1) * (lb + 2) // 2
    for p in pairs:
        if p["run_a"] == p["run_b"] and p["layer_a"] == p["layer_b"]:
            enc = np.load(layer_file(runs[p["run_a"]][0], p["layer_a"]))
            # layer 0 (the embedding of the last prompt token, the same for every prompt) does not
            # vary: its CKA is undefined (None), never a made-up number
            assert p["cka"] == (1.0 if np.ptp(enc, axis=0).max() > 0 else None)
    p = next(p for p in between if p["layer_a"] == ls and p["layer_b"] == lb)
    enc_s = np.load(layer_file(small, ls))
    enc_b = np.load(layer_file(big, lb))
    assert p["cka"] == pytest.approx(direct_cka(enc_s, enc_b), abs=2e-6)
    assert res["alignment"]["procrustes_residual"][0] == 0.0 and 0 < res["alignment"]["procrustes_residual"][1] <= 1
    assert json.loads((small / "cka.json").read_text())["pairs"]  # kept for the page
    html = out_html.read_text()
    assert "id='compare-map'" in html.replace('"', "'") and "Plotly" in html
    # probes
    probe_json = root / "probe.json"
    assert main(["probe", str(big), "--json", str(probe_json), "--no-progress"]) == 0
    probes = json.loads(probe_json.read_text())
    assert {(r["layer"], r["target"]) for r in probes["layers"]} >= {(k, "domain") for k in range(lb + 1)}
    assert all(set(r) >= {"layer", "target", "accuracy", "baseline"} for r in probes["layers"])
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["baseline"] <= 1 for r in probes["layers"])
    assert json.loads((big / "probes.json").read_text())["layers"] == probes["layers"]
    # the standalone export gains a Compare section
    export = root / "export.html"
    assert main(["export", str(small), "--html", str(export), "--compare", str(big)]) == 0
    text = export.read_text()
    assert "Compare: small, big" in text and "compare-cka" in text


@pytest.mark.slow
def test_compare_page_morphs_draws_the_heatmap_and_keeps_its_state(sized_runs):
    from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser

    require_browser()
    from playwright.sync_api import sync_playwright

    from dashboard.app import create_app

    root, runs = sized_runs
    small, big = runs["small"][0], runs["big"][0]
    group = CMP.match_runs([Run(small), Run(big)])
    coords = CMP.aligned_maps(group)["coords"]
    train = (group.frame["split"].astype(str) == "train").to_numpy()
    order = np.concatenate([np.flatnonzero(train), np.flatnonzero(~train)])  # test points drawn above train points
    coords = [c[order] for c in coords]
    res_tasks = sorted(CMP.compare_runs([Run(small), Run(big)], cka="off")["tasks"])
    other = write_synthetic_run(root / "other", 40, seed=3)  # other examples: cannot compare
    app = create_app([small, big, other], [])
    gd = "document.querySelector('#compare-map-graph .js-plotly-plot')"
    hm = "document.querySelector('#compare-cka-graph .js-plotly-plot')"
    with live_server(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        log = ConsoleLog(page)
        page.goto(f"{url}/compare?runs=small&runs=big")
        page.wait_for_function(f"() => {gd} && {gd}._fullData && {hm} && {hm}._fullData", timeout=60_000)
        xs = page.evaluate(f"() => Array.from({gd}.data[0].x)")
        np.testing.assert_allclose(xs, np.round(coords[0][:, 0], 4), atol=1e-9)
        heat = page.evaluate(f"() => {hm}._fullData.filter(t => t.type === 'heatmap').map(t => t.z.length)")
        assert heat == [3, 3]  # small's 3 layers against big's 4, and within small
        assert page.locator("#compare-cka-graph .heatmaplayer image, #compare-cka-graph .heatmaplayer rect, "
                            "#compare-cka-graph .hm").count() > 0
        # the slider moves the points: to the end (the big run's aligned map), then half way
        page.locator("#compare-t [role=slider]").focus()
        page.keyboard.press("End")
        page.wait_for_function(f"() => Math.abs({gd}.data[0].x[0] - ({coords[1][0, 0]:.4f})) < 1e-6", timeout=10_000)
        np.testing.assert_allclose(page.evaluate(f"() => Array.from({gd}.data[0].y)"), np.round(coords[1][:, 1], 4),
                                   atol=1e-9)
        assert "t=1" in page.url
        assert page.evaluate(f"() => {gd}.layout.annotations.length") == 5  # arrows for the top movers
        page.keyboard.press("ArrowLeft")  # one step (0.05) back: a morph between the two maps
        mid = 0.05 * np.round(coords[0][0, 0], 4) + 0.95 * np.round(coords[1][0, 0], 4)
        page.wait_for_function(f"() => Math.abs({gd}.data[0].x[0] - ({mid})) < 1e-6", timeout=10_000)
        # play runs from the start to the end on its own
        page.click("#compare-play")
        page.wait_for_function(f"() => Math.abs({gd}.data[0].x[0] - ({coords[1][0, 0]:.4f})) < 1e-6 && "
                               "document.querySelector('#compare-play').textContent.includes('play')", timeout=20_000)
        assert page.locator("#compare-classes").count() == 1 and "emergent" in page.inner_text("#compare-class-rule")
        assert page.locator("#compare-movers-table tr").count() > 1
        assert page.locator("#compare-tasks-table tr").count() == 1 + len(res_tasks)
        probes = "document.querySelector('#compare-probes-graph .js-plotly-plot')"
        assert page.evaluate(f"() => {probes}.data.length") >= 2
        # the URL restores the view
        page.goto(f"{url}/compare?runs=small&runs=big&t=1&cka_a=big&cka_b=big&axis=order&task={res_tasks[0]}&fscale=raw")
        page.wait_for_function(f"() => {gd} && {gd}._fullData && {hm} && {hm}._fullData", timeout=60_000)
        np.testing.assert_allclose(page.evaluate(f"() => Array.from({gd}.data[0].x)"), np.round(coords[1][:, 0], 4),
                                   atol=1e-9)
        assert page.evaluate(f"() => {hm}._fullData.filter(t => t.type === 'heatmap').map(t => t.z.length)") == [4, 4]
        sg = "document.querySelector('#compare-scaling-graph .js-plotly-plot')"
        names = page.evaluate(f"() => {sg}.data.map(t => t.name)")
        assert len(names) == 3 and names[2].startswith(res_tasks[0])  # 2 domains + the task from the URL
        assert page.evaluate(f"() => {sg}.layout.xaxis.type") == "linear"  # axis=order (not log n_params)
        assert "task=" in page.url and "axis=order" in page.url and "fscale=raw" in page.url
        fg = "document.querySelector('#compare-falloff-graph .js-plotly-plot')"
        assert page.evaluate(f"() => {fg}.layout.xaxis.title.text").startswith("distance to nearest train prompt")
        page.click("label[for='_dash-compare-falloff-scale-percentile'], #compare-falloff-scale label >> nth=0")
        page.wait_for_function(f"() => {fg}.layout.xaxis.title.text.startsWith('percentile')", timeout=20_000)
        # every figure downloads as SVG (and PNG)
        with page.expect_download() as dl:
            page.click("#compare-cka-graph-svg")
        assert dl.value.suggested_filename == "llm-maps-compare-cka.svg"
        assert Path(dl.value.path()).read_bytes().startswith(b"<svg")
        with page.expect_download() as dl:
            page.click("#compare-scaling-graph-png")
        assert Path(dl.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # drawn with the app's own plotly.js bundle (heatmap included), never the stock one
        from dashboard.bundle import bundle_version

        assert page.evaluate("() => Plotly.version") == bundle_version()
        assert {n.split("/")[-1].split("?")[0] for n in page.evaluate(
            "() => performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('plotly'))")} \
            == {"plotly-llm-maps.min.js"}
        assert log.take() == []
        # the standalone export's Compare section draws offline, with its animation frames and slider
        from interfaces.cli import main

        export = root / "page-export.html"
        assert main(["export", str(small), "--html", str(export), "--compare", str(big)]) == 0
        page.goto(export.as_uri())
        em = "document.getElementById('compare-map')"
        page.wait_for_function(f"() => {em} && {em}._fullData && {em}._fullData.length > 0", timeout=30_000)
        assert page.evaluate(f"() => {em}._transitionData._frames.length") == 7  # 6 steps small -> big, + big
        assert page.evaluate(f"() => {em}.layout.sliders[0].steps.map(s => s.label)") == ["small", "big"]
        assert page.evaluate("() => document.getElementById('compare-cka').data[0].type") == "heatmap"
        assert log.take() == []
        # mismatched runs: the one-line error as a banner
        page.goto(f"{url}/compare?runs=small&runs=other")
        banner = page.wait_for_selector("#compare-banner", timeout=20_000).inner_text()
        assert "runs 'small' and 'other' do not hold the same examples" in banner and "0 matched, 80 missing" in banner
        assert log.take() == []
        browser.close()


def test_the_falloff_per_run_figure_draws_intervals_over_tasks(tmp_path):
    """Each run's falloff bins carry intervals over tasks (falloff_stats with the tasks); the
    Compare page's figure draws and hovers those, named, not Wilson's."""
    from dashboard.compare_figures import falloff_overlay_figure

    a, b = _pair(tmp_path)
    res = CMP.compare_runs([Run(a), Run(b)], cka="off")
    fig = falloff_overlay_figure(res)
    traces = [t for t in fig.data if t.error_y and t.error_y.array is not None]
    assert traces
    first = res["falloff"][0]["stats"]
    domain = sorted(d for d in first if d != "all")[0]
    bins = [x for x in first[domain]["bins"] if x["n"]]
    assert all(x.get("task_low") is not None for x in bins)
    t = traces[0]
    assert list(t.error_y.array) == pytest.approx([x["task_high"] - x["accuracy"] for x in bins])
    assert list(t.error_y.arrayminus) == pytest.approx([x["accuracy"] - x["task_low"] for x in bins])
    assert [c[4] for c in t.customdata] == ["over tasks"] * len(bins)


def test_a_task_class_stands_only_when_its_change_is_clear_of_the_boundary():
    """settled_class on known intervals (the boundary counts), and paired_change on simulated tasks
    with a known answer: 150 of 200 examples going right stays smooth, 2 of 10 is unclear, no change
    at all is flat."""
    rule = CMP.settled_class
    assert rule("flat", {"low": -0.05, "high": 0.09}) == "flat" and rule("flat", {"low": -0.12, "high": 0.0}) == "unclear"
    assert rule("inverse", {"low": -0.6, "high": -0.1}) == "inverse" and rule("inverse", {"low": -0.6, "high": -0.05}) == "unclear"
    assert rule("smooth", {"low": 0.1, "high": 0.4}) == "smooth" and rule("emergent", {"low": 0.09, "high": 0.9}) == "unclear"
    assert rule(None, {"low": 0.2, "high": 0.3}) is None and rule("flat", {"low": None, "high": None}) == "unclear"
    rng = np.random.default_rng(0)
    a = np.zeros(200)
    b = np.r_[np.ones(150), np.zeros(50)]
    big = CMP.paired_change(a, b, n_boot=2000, rng=rng)
    assert big["value"] == pytest.approx(0.75) and 0.6 < big["low"] < 0.75 < big["high"] < 0.9
    assert rule("smooth", big) == "smooth"
    small = CMP.paired_change(np.r_[np.ones(3), np.zeros(7)], np.r_[np.ones(5), np.zeros(5)], n_boot=2000, rng=rng)
    assert small["value"] == pytest.approx(0.2) and small["low"] < 0.1 and rule("smooth", small) == "unclear"
    same = CMP.paired_change(b, b, n_boot=2000, rng=rng)
    assert (same["value"], same["low"], same["high"]) == (0.0, 0.0, 0.0) and rule("flat", same) == "flat"
    assert CMP.paired_change(np.zeros(0), np.zeros(0), n_boot=10, rng=rng) == {"value": None, "low": None,
                                                                              "high": None, "n": 0}


def test_the_probe_table_marks_above_and_below_chance():
    """format_probes: * where probe - chance's interval lies above 0, ! where it lies below, nothing
    where it holds 0; the footer says what each means."""
    base = {"target": "correct", "accuracy": 0.5, "low": 0.4, "high": 0.6, "baseline": 0.6, "n": 100, "n_tasks": 8,
            "cv": "4-fold"}
    rows = [{**base, "layer": 1, "minus_baseline": 0.2, "minus_baseline_low": 0.1, "minus_baseline_high": 0.3,
             "above_chance": True},
            {**base, "layer": 2, "minus_baseline": -0.073, "minus_baseline_low": -0.129, "minus_baseline_high": -0.024,
             "above_chance": False},
            {**base, "layer": 3, "minus_baseline": 0.01, "minus_baseline_low": -0.05, "minus_baseline_high": 0.07,
             "above_chance": False}]
    text = CMP.format_probes({"run": "r", "probe": "logistic", "layers": rows, "skipped": []}).splitlines()
    assert "+0.200 [0.100, 0.300] *" in text[2] and "-0.073 [-0.129, -0.024] !" in text[3]
    assert "+0.010 [-0.050, 0.070] " in text[4] and "0.070] *" not in text[4] and "0.070] !" not in text[4]
    assert "! below chance: it lies below 0" in text[5]
