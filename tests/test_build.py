"""End to end: `llm-maps build` on a tiny model writes a complete, consistent run folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import dolly_rows, write_jsonl
from contract_helpers import assert_follows_contract
from interfaces.cli import main
from llm_maps.runfolder import MANIFEST_KEYS, REQUIRED_COLUMNS, Run, find_runs, partial_dir
from pipelines.encode import encode_one
from pipelines.models import load_model
from llm_maps.neighbours import nearest_train
from pipelines.project import Projection


@pytest.fixture(scope="module")
def built_run(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("build")
    data = write_jsonl(root / "dolly.jsonl", dolly_rows(48))
    out = root / "runs" / "r1"
    rc = main(["build", "--model", str(tiny_models["llama"]), "--data", str(data), "--out", str(out),
               "--template", "dolly", "--projection", "pca", "--layers", "1,3", "--test-size", "0.25",
               "--k", "3", "--no-progress"])
    assert rc == 0
    return out, data


def test_run_folder_follows_the_contract(built_run, tiny_models):
    out, data = built_run
    run = Run(out)
    m = run.manifest
    assert set(MANIFEST_KEYS) <= set(m)
    assert m["layers"] == [1, 3] and m["default_layer"] == 3
    assert m["pooling"] == "last" and m["add_eos"] is False and m["truncation_side"] == "left"
    assert m["projection"]["method"] == "pca" and m["projection"]["fit_on"] == "train"
    assert m["distance_metric"] == "cosine"
    assert m["split_rule"]["method"] == "example" and m["split_rule"]["test_size"] == 0.25
    assert m["sources"][0]["path"] == str(data.resolve()) and len(m["sources"][0]["sha256"]) == 64
    assert m["counts"]["examples"] == 48 and m["counts"]["train"] + m["counts"]["test"] == 48
    assert m["counts"]["by_domain"] == {"Chollet": 24, "Reasoning": 24}
    assert {"torch", "transformers", "numpy"} <= set(m["versions"])
    ex = run.examples
    assert set(REQUIRED_COLUMNS) <= set(ex.columns)
    assert ex["example_id"].is_unique and len(ex) == 48
    assert ex["output"].isna().all() and ex["score"].isna().all() and ex["correct"].isna().all()
    assert ex[["x", "y", "dist_to_train"]].notna().all().all()
    assert ex["prompt"][0].startswith("Below is an instruction") and ex["prompt"][0].endswith("### Response:\n")
    enc = run.encodings()
    assert enc.dtype == np.float16 and enc.shape == (48, 32)
    assert isinstance(enc, np.memmap)
    assert not partial_dir(out).exists() and find_runs(out.parent) == [out]
    assert_follows_contract(out)
    assert [h["stage"] for h in m["history"]] == ["encode", "project", "neighbours"]
    assert m["model_info"]["architecture"] == "LlamaForCausalLM" and m["encoding"]["tokens"] == int(ex["n_tokens"].sum())


def test_stored_row_equals_single_prompt_encoding(built_run, tiny_models):
    out, _ = built_run
    run = Run(out)
    loaded = load_model(str(tiny_models["llama"]))
    for i in (0, 17, 47):
        one = encode_one(loaded, run.examples["prompt"][i], layers=[1, 3])
        for k in (1, 3):
            np.testing.assert_allclose(run.encodings(k)[i].astype(np.float32), one[k], rtol=2e-3, atol=2e-3)
    # the default encoder of build_run is this model behind the Encoder protocol
    from pipelines.encoder import Encoder, TransformersEncoder

    enc = TransformersEncoder(loaded=loaded, model_spec=str(tiny_models["llama"]))
    assert isinstance(enc, Encoder)
    assert (enc.num_layers, enc.hidden_size, enc.max_positions) == (3, 32, 256)
    assert run.manifest["hidden_size"] == enc.hidden_size and run.manifest["dtype"] == enc.dtype == "float32"


def test_distances_and_neighbours_are_exact(built_run):
    out, _ = built_run
    run = Run(out)
    ex = run.examples
    is_train = (ex["split"] == "train").to_numpy()
    dist, rows, _ = nearest_train(run.encodings(), is_train, k=3, metric="cosine")
    np.testing.assert_allclose(ex["dist_to_train"], dist)
    ids = ex["example_id"].to_numpy()
    assert [list(v) for v in ex["nn_train_ids"]] == [[ids[r] for r in row] for row in rows]
    for i, nn in enumerate(ex["nn_train_ids"]):
        assert ex["example_id"][i] not in list(nn)  # a train example's neighbours are *other* examples
        assert set(ex.set_index("example_id").loc[list(nn), "split"]) == {"train"}


def test_saved_projection_places_rows_where_they_are(built_run):
    out, _ = built_run
    run = Run(out)
    proj = Projection.load(out / "projection")
    xy = proj.transform(np.asarray(run.encodings(), dtype=np.float32))
    np.testing.assert_allclose(xy[:, 0], run.examples["x"], atol=1e-6)
    np.testing.assert_allclose(xy[:, 1], run.examples["y"], atol=1e-6)


def test_restage_project_and_neighbours_in_place(built_run, tmp_path, capsys):
    import shutil

    out, _ = built_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert main(["neighbours", str(copy), "--metric", "euclidean", "--k", "2", "--layer", "1"]) == 0
    run = Run(copy)
    assert run.manifest["distance_metric"] == "euclidean"
    assert run.manifest["neighbours"] == {"k": 2, "layer": 1, "metric": "euclidean", "exact": True}
    assert all(len(v) == 2 for v in run.examples["nn_train_ids"])
    dist, _, _ = nearest_train(run.encodings(1), (run.examples["split"] == "train").to_numpy(), k=2,
                               metric="euclidean")
    np.testing.assert_allclose(run.examples["dist_to_train"], dist)
    assert main(["project", str(copy), "--method", "pca", "--fit-on", "all"]) == 0
    assert Run(copy).manifest["projection"]["fit_on"] == "all"
    assert "projection pca (euclidean, fit on all)" in capsys.readouterr().out


def test_rebuild_is_deterministic_and_replaces_the_run(built_run, tiny_models, tmp_path):
    out, data = built_run
    out2 = tmp_path / "r2"
    args = ["build", "--model", str(tiny_models["llama"]), "--data", str(data), "--out", str(out2),
            "--template", "dolly", "--projection", "pca", "--layers", "1,3", "--test-size", "0.25",
            "--k", "3", "--no-progress"]
    assert main(args) == 0
    a, b = Run(out).examples, Run(out2).examples
    pd.testing.assert_frame_equal(a, b)
    np.testing.assert_array_equal(Run(out).encodings(), Run(out2).encodings())
    assert main(args) == 0  # building over an existing run replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r2"]


def test_category_split_and_eos_pooling(tiny_models, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(24))
    out = tmp_path / "eos"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(out),
                 "--projection", "pca", "--test-categories", "summarization", "--test-size", "0",
                 "--add-eos", "--max-length", "20", "--no-progress"]) == 0
    run = Run(out)
    ex = run.examples
    assert set(ex.loc[ex.category == "summarization", "split"]) == {"test"}
    assert set(ex.loc[ex.category != "summarization", "split"]) == {"train"}
    assert run.manifest["pooling"] == "eos" and run.manifest["max_length"] == 20
    assert ex["n_tokens"].max() == 20 and ex["truncated"].any()
    assert run.manifest["counts"]["truncated"] == int(ex["truncated"].sum())


def test_unknown_categories_are_kept_and_reported(tiny_models, tmp_path, capsys):
    rows = dolly_rows(12)
    rows[0]["category"] = "astrology"
    rows[5]["category"] = "astrology"
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "u"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(out),
                 "--projection", "pca", "--no-progress"]) == 0
    run = Run(out)
    assert len(run.examples) == 12
    assert run.manifest["domain_map"]["unknown_categories"] == {"astrology": 2}
    assert (run.examples["domain"] == "unknown").sum() == 2
    captured = capsys.readouterr()
    assert "astrology (2)" in captured.err and "astrology (2)" in captured.out


@pytest.mark.parametrize("extra, message", [
    (["--model", "/no/such/model"], "/no/such/model: model path does not exist"),
    (["--layers", "9"], "--layers: layer 9 is out of range"),
    (["--data", "MISSING"], "no such file or folder"),
    (["--max-length", "100000"], "exceeds the model's maximum positions"),
])
def test_bad_input_exits_2_with_one_line_and_leaves_no_finished_run(tiny_models, tmp_path, capsys, extra, message):
    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(8))
    out = tmp_path / "bad"
    args = {"--model": str(tiny_models["gpt2"]), "--data": str(data), "--out": str(out)}
    for key, value in zip(extra[::2], extra[1::2]):
        args[key] = str(tmp_path / value) if value == "MISSING" else value
    argv = ["build", "--projection", "pca", "--no-progress"] + [t for kv in args.items() for t in kv]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("llm-maps build: error: ") and message in err[0], err
    assert not out.exists()
