"""Typed prompts placed exactly like build would store them; generations as projected paths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import dolly_rows, write_jsonl
from interfaces.cli import main
from llm_maps.neighbours import nearest_train
from llm_maps.runfolder import Run
from pipelines.engine import RunSession, SessionPool


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("engine")
    data = write_jsonl(root / "d.jsonl", dolly_rows(40))
    out = root / "run"
    assert main(["build", "--model", str(tiny_models["llama"]), "--data", str(data), "--out", str(out),
                 "--template", "dolly", "--projection", "umap", "--n-neighbors", "5", "--k", "4",
                 "--test-size", "0.3", "--no-progress"]) == 0
    assert main(["score", str(out), "--max-new-tokens", "3", "--no-progress"]) == 0
    assert main(["falloff", str(out), "--bins", "2"]) == 0
    return out


def test_place_equals_what_build_stored(scored_run):
    session = RunSession(scored_run)
    run = Run(scored_run)
    ex = run.examples
    enc = np.asarray(run.encodings(), dtype=np.float32)
    for i in np.flatnonzero((ex["split"] == "test").to_numpy())[:4]:
        res = session.place(ex["instruction"][i], ex["context"][i])
        assert res["prompt"] == ex["prompt"][i]
        # a test row is placed by the same saved map: the same coordinates, distances, neighbours
        assert res["x"] == pytest.approx(ex["x"][i], abs=1e-6) and res["y"] == pytest.approx(ex["y"][i], abs=1e-6)
        assert res["dist_to_train"] == pytest.approx(ex["dist_to_train"][i], abs=1e-6)
        assert [n["example_id"] for n in res["neighbours"]] == list(ex["nn_train_ids"][i])
        dom = ex.set_index("example_id").loc[list(ex["nn_train_ids"][i]), "domain"]
        assert res["domain"] in set(dom)
        exp = res["expected_accuracy"]
        assert exp is not None and exp["n"] > 0 and 0 <= exp["low"] <= exp["accuracy"] <= exp["high"] <= 1
    assert session.warm_seconds > 0 and session.load_seconds > 0


def test_generate_streams_tokens_with_positions(scored_run):
    session = RunSession(scored_run)
    seen = []
    res = session.generate("Write a short poem about the sea.", max_new_tokens=5, on_token=seen.append)
    assert len(res["tokens"]) >= 1 and seen[: len(res["tokens"])] == res["tokens"]
    for t in res["tokens"]:
        assert set(t) == {"text", "id", "logprob", "top", "x", "y", "dist", "step"}
        assert len(t["top"]) == 5 and t["logprob"] <= 0
        assert t["top"][0]["logprob"] >= t["logprob"] - 1e-6  # greedy picks the top alternative
    direct = session.loaded.tokenizer.decode([t["id"] for t in res["tokens"]], skip_special_tokens=True).strip()
    assert res["output"] == direct
    # the path's first step is the state of prompt + first token, projected with the run's map
    import torch

    ids = session.loaded.tokenizer(res["prompt"])["input_ids"] + [res["tokens"][0]["id"]]
    with torch.no_grad():
        out = session.loaded.model(torch.tensor([ids]), output_hidden_states=True)
    xy = session.project(out.hidden_states[session.layer][0, -1].numpy())[0]
    assert res["tokens"][0]["x"] == pytest.approx(xy[0], abs=1e-3) and res["tokens"][0]["y"] == pytest.approx(xy[1], abs=1e-3)


def test_generation_path_lengths_and_distances_in_the_full_space(scored_run):
    """Each token's distance to train and step from the previous state (prompt first), recomputed
    by brute force from one full forward; the compare-table summary follows from them."""
    import torch

    session = RunSession(scored_run)
    res = session.generate("Write a short poem about the sea.", max_new_tokens=6)
    toks = res["tokens"]
    n_prompt = len(session.loaded.tokenizer(res["prompt"])["input_ids"])
    ids = session.loaded.tokenizer(res["prompt"])["input_ids"] + [t["id"] for t in toks]
    with torch.no_grad():
        hs = session.loaded.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[session.layer][0]
    states = [session.place("Write a short poem about the sea.")["state"]] + [
        hs[n_prompt + i].numpy().astype(np.float16).astype(np.float32) for i in range(len(toks))]
    ex = Run(scored_run).examples
    train = np.asarray(Run(scored_run).encodings(), dtype=np.float32)[(ex["split"] == "train").to_numpy()]
    metric = session.metric
    assert metric == "cosine"

    def cos(a, b):
        return 1 - float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    for i, t in enumerate(toks):
        assert t["step"] == pytest.approx(cos(states[i], states[i + 1]), abs=2e-3)
        assert t["dist"] == pytest.approx(min(cos(states[i + 1], r) for r in train), abs=2e-3)
    assert res["n_tokens"] == len(toks) >= 2
    assert res["path_length"] == pytest.approx(sum(t["step"] for t in toks), rel=1e-9)
    assert res["final_dist"] == toks[-1]["dist"]
    mean = float(np.mean([t["logprob"] for t in toks]))
    assert res["mean_logprob"] == pytest.approx(mean) and res["perplexity"] == pytest.approx(np.exp(-mean))
    assert "state" not in res


def test_session_pool_is_lru_bounded(scored_run, tmp_path):
    made = []

    class Fake:
        def __init__(self, path, **kw):
            made.append(path.name)

    import shutil
    paths = []
    for name in ("a", "b", "c"):
        shutil.copytree(scored_run, tmp_path / name)
        paths.append(tmp_path / name)
    pool = SessionPool(paths, max_models=2, factory=Fake)
    pool.get("a"), pool.get("b"), pool.get("a"), pool.get("c")
    assert pool.resident == ["a", "c"]  # b was least recently used
    pool.get("b")
    assert made == ["a", "b", "c", "b"] and pool.resident == ["c", "b"]
