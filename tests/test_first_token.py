"""First-token statistics taken from the passes scoring runs anyway (generate's prefill, the
multiple-choice forward) equal the separate pass's (pipelines/first_token.py) on the same prompts;
rows neither pass covered still get the separate pass, and the manifest says which rows came from
which pass."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import write_jsonl
from interfaces.cli import main
from llm_maps.runfolder import EXAMPLES, Run
from pipelines.first_token import COLUMNS, FirstTokenCollector, first_token_stats, logprob_stats
from pipelines.generate import choice_loglikelihoods_batch, generate
from pipelines.models import load_model


def assert_same_stats(got: dict, want: dict, rows=None) -> None:
    for col in COLUMNS:
        g = np.asarray(got[col], dtype=float)
        w = np.asarray(want[col], dtype=float)
        if rows is not None:
            g = g[rows]
        assert not np.isnan(g).any() and not np.isnan(w).any(), col
        # the KL is a difference of two sums of the entropy's size (a few nats on a tiny random
        # model, whose KL is ~1e-3): float32 log-probabilities agree to ~1e-7 relative, hence atol
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 if col == "first_kl_to_mean" else 1e-7, err_msg=col)


def test_logprob_stats_on_a_known_distribution():
    import torch

    p = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    m = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    out = logprob_stats(p.log(), m.log())
    np.testing.assert_allclose(out["first_entropy"], [1.5 * np.log(2), np.log(4)], rtol=1e-6)
    np.testing.assert_allclose(out["first_top_prob"], [0.5, 0.25], rtol=1e-6)
    # KL(p || uniform) = log 4 - H(p)
    np.testing.assert_allclose(out["first_kl_to_mean"], [np.log(4) - 1.5 * np.log(2), 0.0], atol=1e-7)
    assert np.isnan(logprob_stats(p.log())["first_kl_to_mean"]).all()  # no train mean: NaN


def _frame() -> pd.DataFrame:
    """Prompts of varied length sharing their first words (generate computes a shared prefix once)."""
    words = "the fox and the dog ran to the sea while the wind blew over the water".split()
    prompts = [f"Answer step by step: question {i}: " + " ".join(words[: 1 + (7 * i) % len(words)])
               for i in range(14)]
    return pd.DataFrame({"example_id": [f"e{i}" for i in range(14)], "prompt": prompts,
                         "split": ["train"] * 5 + ["test"] * 9})


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "gpt2"])
def test_generation_and_choice_passes_give_the_separate_pass_statistics(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    frame = _frame()
    prompts = frame["prompt"].tolist()
    test = np.flatnonzero(frame["split"] == "test")
    train = [prompts[i] for i in np.flatnonzero(frame["split"] == "train")]
    want = first_token_stats(loaded, [prompts[i] for i in test], train_prompts=train, progress=False)
    gen_rows, mc_rows = test[:6], test[4:]  # e9, e10: both generated and scored by choices
    choices = [["yes", "no", " the sea"]] * len(mc_rows)

    collector = FirstTokenCollector.start(frame, (frame["split"] == "test").to_numpy(), loaded=loaded, always=True,
                                          max_length=None, progress=False)
    assert collector is not None
    calls: list[int] = []
    hook = collector.hook(gen_rows, "generation")

    def counting(rows, lp, n_tokens):
        calls.extend(int(r) for r in rows)
        assert lp.shape == (len(rows), loaded.model.config.vocab_size)
        hook(rows, lp, n_tokens)

    stats: dict = {}
    with_hook = generate(loaded, [prompts[i] for i in gen_rows], max_new_tokens=3, batch_size=2, stats=stats,
                         on_first=counting)
    assert stats["prefills"] >= 3 and stats["shared_prefix"] >= 4  # several prefills, a shared prefix
    assert sorted(calls) == list(range(len(gen_rows)))  # every prompt once
    plain = generate(loaded, [prompts[i] for i in gen_rows], max_new_tokens=3, batch_size=2)
    assert [r.token_ids for r in with_hook] == [r.token_ids for r in plain]  # the hook changes nothing
    batches: list[int] = []
    choice_loglikelihoods_batch(loaded, [prompts[i] for i in mc_rows], choices, batch_tokens=64,
                                on_first=collector.hook(mc_rows, "choices"), on_progress=batches.append)
    assert len(batches) >= 2  # several batches
    info = collector.finish(log=lambda m: None)

    assert_same_stats({c: frame[c].to_numpy()[test] for c in COLUMNS}, want)
    assert frame.loc[frame["split"] == "train", list(COLUMNS)].isna().all().all()
    assert info["sources"] == {"generation": 6, "choices": len(mc_rows) - 2, "separate": 0}  # first pass wins
    assert info["separate"] == {} and info["rows"] == len(test) and info["mean_over"] == "5 train prompts"


def _rows() -> list[dict]:
    rows = []
    for i in range(18):
        row = {"id": f"q{i}", "instruction": f"Question {i}: what is {i} plus {i}?" + " more" * i,
               "context": "", "response": str(2 * i), "category": ["arithmetic", "summarization"][i % 2],
               "split": "train" if i < 6 else "test"}
        if i % 3 == 1:
            row["choices"] = [str(2 * i), str(2 * i + 1), "seven"]
        rows.append(row)
    return rows


MAX_LENGTH, NEW_TOKENS = 160, 24  # generation's room for the prompt: 160 - 24 = 136 tokens


@pytest.fixture(scope="module")
def built(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("first_token")
    data = write_jsonl(root / "d.jsonl", _rows())
    out = root / "run"
    assert main(["build", "--model", str(tiny_models["llama"]), "--data", str(data), "--out", str(out),
                 "--template", "dolly", "--projection", "pca", "--max-length", str(MAX_LENGTH), "--no-progress"]) == 0
    return out


def test_score_takes_the_statistics_from_its_passes_and_the_rest_from_a_separate_pass(built, tiny_models, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(built, run_dir)
    assert main(["score", str(run_dir), "--max-new-tokens", str(NEW_TOKENS), "--mc-output", "choice",
                 "--batch-size", "3", "--no-progress"]) == 0
    run = Run(run_dir)
    ex = run.examples
    loaded = load_model(str(tiny_models["llama"]))
    test = np.flatnonzero(ex["split"] == "test")
    train = [ex["prompt"][i] for i in np.flatnonzero(ex["split"] == "train")]
    want = first_token_stats(loaded, [ex["prompt"][i] for i in test], train_prompts=train, max_length=MAX_LENGTH,
                             progress=False)
    assert_same_stats({c: ex[c].to_numpy() for c in COLUMNS}, want, rows=test)

    # which pass each row's numbers came from: generation read the prompts that fit its room as the
    # separate pass reads them; a longer one it cut shorter (the room), a multiple-choice prompt
    # longer than max_length it did not cut at all
    n_tokens = np.array([len(loaded.tokenizer(p)["input_ids"]) for p in ex["prompt"]])
    is_mc = ex["metric"].to_numpy() == "mc"
    gen_cut = [ex["example_id"][i] for i in test if not is_mc[i] and n_tokens[i] > MAX_LENGTH - NEW_TOKENS]
    mc_cut = [ex["example_id"][i] for i in test if is_mc[i] and n_tokens[i] > MAX_LENGTH]
    assert gen_cut and mc_cut and len(gen_cut) < (~is_mc[test]).sum() and len(mc_cut) < is_mc[test].sum()
    info = run.manifest["scoring"]["first_token"]
    assert info["sources"] == {"generation": int((~is_mc[test]).sum()) - len(gen_cut),
                               "choices": int(is_mc[test].sum()) - len(mc_cut), "separate": len(gen_cut + mc_cut)}
    assert info["separate"] == {"prompt truncated differently by the generation pass": gen_cut,
                                "prompt truncated differently by the choices pass": mc_cut}
    assert info["rows"] == len(test) and info["mean_over"] == "6 train prompts"
    from llm_maps.contract import Manifest, check

    assert check(json.loads((run_dir / "manifest.json").read_text()), Manifest) == []

    # a run scored before the statistics existed: outputs stored, nothing regenerated; every row
    # gets the separate pass, and the same numbers
    frame = pd.read_parquet(run_dir / EXAMPLES).drop(columns=list(COLUMNS))
    frame.to_parquet(run_dir / EXAMPLES)
    generation = run.manifest["scoring"]["generation"]
    assert main(["score", str(run_dir), "--max-new-tokens", str(NEW_TOKENS), "--mc-output", "choice",
                 "--no-progress"]) == 0
    again = Run(run_dir)
    assert again.manifest["scoring"]["generation"] == generation  # nothing generated
    assert_same_stats({c: again.examples[c].to_numpy() for c in COLUMNS}, want, rows=test)
    info = again.manifest["scoring"]["first_token"]
    assert info["sources"] == {"generation": 0, "choices": 0, "separate": len(test)}
    assert info["separate"] == {"not generated or scored by choices in this scoring (outputs stored)":
                                [ex["example_id"][i] for i in test]}
