"""Generations measured against the token atlas, through the worker path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import dolly_rows, write_jsonl
from interfaces.cli import main
from llm_maps.contract import Manifest, PointRecord, check
from llm_maps.neighbours import knn
from pipelines.engine import RunSession
from pipelines.nearest import StateIndex
from pipelines.worker import point_record, run_job


@pytest.fixture(scope="module")
def atlas_runs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("atlas")
    data = write_jsonl(root / "d.jsonl", dolly_rows(30))
    common = ["--model", str(tiny_models["llama"]), "--data", str(data), "--template", "dolly", "--projection", "pca",
              "--k", "3", "--no-progress"]
    with_atlas, plain = root / "runs" / "atlas", root / "runs" / "plain"
    assert main(["build", *common, "--out", str(with_atlas), "--token-atlas"]) == 0
    assert main(["build", *common, "--out", str(plain)]) == 0
    import json

    manifest = json.loads((with_atlas / "manifest.json").read_text())
    assert check(manifest, Manifest) == []  # views / token_atlas are in the contract
    return with_atlas, plain


def test_teacher_forced_training_reference_is_on_the_atlas(atlas_runs):
    run, _ = atlas_runs
    session = RunSession(run)
    ex = session.run.examples
    tokens = pd.read_parquet(run / "tokens.parquet")
    train = ex[ex["split"] == "train"]
    for _, row in train.iloc[:3].iterrows():
        job = {"kind": "generate", "payload": {"instruction": row["instruction"], "context": row["context"],
                                               "teacher_force": row["reference"]}}
        result = run_job(session, job)
        mine = tokens[tokens["example_id"] == row["example_id"]]
        assert result["reference"] == "atlas"
        assert [t["id"] for t in result["tokens"]] == mine["token_id"].tolist()
        for t, (_, tok) in zip(result["tokens"], mine.iterrows()):
            assert t["dist"] < 1e-6, t
            assert t["nearest"]["example_id"] == row["example_id"]
            assert t["nearest"]["position"] == tok["position"]
            assert t["nearest"]["token_text"] == tok["token_text"]
            # on the token map the step sits where the build put that atlas token (PCA: one linear map)
            assert t["x"] == pytest.approx(tok["x"], abs=1e-3) and t["y"] == pytest.approx(tok["y"], abs=1e-3)
        assert result["max_dist"] < 1e-6 and result["mean_dist"] < 1e-6
        assert result["max_dist"] == max(t["dist"] for t in result["tokens"])
        # the prompt lands on the token map where the build put it
        assert result["x_tokens"] == pytest.approx(row["x_tokens"], abs=1e-3)
        record = point_record({**job, "id": "p", "created": 1.0}, result)
        assert record["reference"] == "atlas" and record["max_dist"] == result["max_dist"]
        assert check(record, PointRecord) == []  # the contract (docs/run-folder.md)


def test_a_free_generation_is_measured_against_the_atlas_exactly(atlas_runs):
    """Each token's dist and nearest step equal an exact scan of the atlas with that token's state
    (recomputed here by one unbatched forward pass over prompt + generated ids)."""
    import torch

    run, _ = atlas_runs
    session = RunSession(run)
    result = session.generate("Write a short poem about the sea", max_new_tokens=6)
    atlas = np.load(run / "encodings" / "tokens" / f"layer_{session.layer}.npy").astype(np.float32)
    tokens = pd.read_parquet(run / "tokens.parquet")
    assert result["tokens"]
    prompt_ids = session.loaded.tokenizer(result["prompt"])["input_ids"]
    ids = prompt_ids + [t["id"] for t in result["tokens"]]
    with torch.no_grad():
        hidden = session.loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    states = hidden[session.layer][0, len(prompt_ids):].float().numpy().astype(np.float16).astype(np.float32)
    ref_d, ref_i = knn(states, atlas, k=1, metric=session.metric)
    for t, d, i in zip(result["tokens"], ref_d[:, 0], ref_i[:, 0]):
        assert t["dist"] == pytest.approx(d, rel=1e-2, abs=1e-5)
        assert (t["nearest"]["example_id"], t["nearest"]["position"]) == \
            (tokens["example_id"][i], tokens["position"][i])
        assert t["nearest"]["token_text"] == tokens["token_text"][i]
    assert result["mean_dist"] == pytest.approx(np.mean([t["dist"] for t in result["tokens"]]))
    assert result["max_dist"] == max(t["dist"] for t in result["tokens"])


def test_runs_without_atlas_keep_todays_fields(atlas_runs):
    _, plain = atlas_runs
    session = RunSession(plain)
    result = session.generate("Write a short poem about the sea", max_new_tokens=3)
    assert result["reference"] == "prompts"
    assert "mean_dist" not in result and "nearest" not in result["tokens"][0]
    assert "x_tokens" not in result


def test_state_index_equals_a_full_exact_scan(tmp_path):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3000, 48)) * 3 + 1).astype(np.float16)
    a[:, 5] = 200  # an outlier dimension, as real hidden states have
    b = (rng.standard_normal((400, 48)) * 3).astype(np.float16)
    np.save(tmp_path / "a.npy", a)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    queries = (rng.standard_normal((30, 48)) * 3).astype(np.float16).astype(np.float32)
    queries[:, 5] = 190
    queries[:3] = a[:3]
    both = np.concatenate([a, b]).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        index = StateIndex([mapped, b], metric=metric)
        ref_d, ref_i = knn(queries, both, k=5, metric=metric)
        only_b_d, only_b_i = knn(queries, b.astype(np.float32), k=2, metric=metric)
        for q, rd, ri, bd, bi in zip(queries, ref_d, ref_i, only_b_d, only_b_i):
            d, rows = index.search(q, k=5)
            assert rows.tolist() == ri.tolist()
            np.testing.assert_allclose(d, rd, rtol=1e-6, atol=1e-9)
            d, rows = index.search(q, k=2, parts=[1])
            assert (rows - 3000).tolist() == bi.tolist()
        assert index.search(queries[0], k=1)[0][0] < 1e-9  # a stored row finds itself


@pytest.mark.slow  # UMAP (numba) fit: ~40 s on an idle 2-core machine
def test_umap_token_map_placement_equals_the_saved_projection(tiny_models, tmp_path):
    """With a UMAP token map, the worker places a token where the saved projection's own transform
    (exact k nearest of train prompts + atlas tokens) puts its state."""
    from pipelines.project import Projection

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(24))
    run = tmp_path / "runs" / "umap"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--k", "3", "--n-neighbors", "5", "--token-atlas", "--no-progress"]) == 0
    session = RunSession(run)
    ex = session.run.examples
    proj = Projection.load(run / "projection_tokens")
    assert proj.method == "umap" and proj.params["fit_set"] == "train prompts + atlas tokens"
    prompts = np.asarray(session.run.encodings(session.layer), dtype=np.float32)
    atlas = np.load(run / "encodings" / "tokens" / f"layer_{session.layer}.npy").astype(np.float32)
    fit = np.concatenate([prompts, atlas])[proj.fit_rows]
    rng = np.random.default_rng(0)
    for state in [atlas[3], prompts[int(np.flatnonzero(ex["split"] == "test")[0])],
                  atlas[7] + rng.normal(0, 0.05, atlas.shape[1]).astype(np.float32)]:
        state = state.astype(np.float16).astype(np.float32)
        step = session.atlas_step(state)
        expected = proj.transform(state, fit)[0]
        assert [step["x"], step["y"]] == pytest.approx(expected.tolist(), abs=1e-6)
    # the batch path (score --conditions) gives each state what the one-at-a-time path gives
    train_prompts = prompts[np.flatnonzero(ex["split"] == "train")]
    states = np.concatenate([np.stack([atlas[3], atlas[11], prompts[int(np.flatnonzero(ex["split"] == "test")[0])],
                                       atlas[7] + rng.normal(0, 0.5, atlas.shape[1]).astype(np.float32)]),
                             train_prompts]).astype(np.float16).astype(np.float32)
    base = np.concatenate([atlas, prompts[proj.fit_rows[proj.fit_rows < len(ex)]]])
    _, near = knn(states, base, k=int(proj.params["n_neighbors"]), metric=session.metric)
    assert not (near < len(atlas)).any(axis=1).all()  # some states have no atlas row among the map's neighbours
    dist, rows, xy = session.atlas.steps(states)
    exact_d, exact_r = knn(states, atlas, k=1, metric=session.metric)
    assert rows.tolist() == exact_r[:, 0].tolist() and dist == pytest.approx(exact_d[:, 0], abs=1e-12)
    for state, d, r, (x, y) in zip(states, dist, rows, xy):
        step = session.atlas_step(state)
        assert step["dist"] == pytest.approx(d, rel=1e-6, abs=1e-9)
        assert (step["nearest"]["example_id"], step["nearest"]["position"]) == \
            (session.atlas.ids[r], session.atlas.positions[r])
        assert [step["x"], step["y"]] == pytest.approx([x, y], abs=1e-6)
        assert [x, y] == pytest.approx(proj.transform(state, fit)[0].tolist(), abs=1e-6)  # the saved map's own
    # a test prompt placed by the worker lands where the build put it
    row = ex[ex["split"] == "test"].iloc[0]
    placed = session.place(row["instruction"], row["context"])
    assert [placed["x_tokens"], placed["y_tokens"]] == pytest.approx([row["x_tokens"], row["y_tokens"]], abs=1e-4)
