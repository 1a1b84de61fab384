"""The run-folder contract (docs/run-folder.md, llm_maps/contract.py), stage history, the two seeds,
BuildConfig, and the whole pipeline driven by a torch-free fake encoder (tests/fake_encoder.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import dolly_rows, write_jsonl
from fake_encoder import FakeEncoder
from llm_maps import contract
from interfaces.cli import HANDLERS, make_parser
from interfaces.cli.model import cmd_build, cmd_encode
from llm_maps.config import BuildConfig, add_arguments, from_args, option
from llm_maps.contract import COLUMNS, JSON_FILES, Manifest, check
from llm_maps.runfolder import MANIFEST_KEYS, REQUIRED_COLUMNS, Run, file_digest
from pipelines.build import build_run, restage_run, summarize_run
from pipelines.encoder import Encoder
from pipelines.falloff_run import falloff_run
from pipelines.score import score_run

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "run-folder.md"


def _data(tmp_path: Path, n: int = 40, *, outputs: bool = True) -> Path:
    """Dolly rows; with ``outputs`` each row also has an ``output`` (half of them the reference), so
    `score` scores without a model."""
    rows = dolly_rows(n)
    if outputs:
        for i, r in enumerate(rows):
            r["output"] = r["response"] if i % 2 == 0 else "something else entirely"
    return write_jsonl(tmp_path / "dolly.jsonl", rows)


def _build(data: Path, out: Path, **options) -> Path:
    cfg = BuildConfig(data=[str(data)], out=str(out), model="fake", template="dolly", projection="pca",
                      layers=[2, 4], k=3, progress=False)
    return build_run(cfg.replace(**options), encoder=FakeEncoder(), log=lambda m: None)


def _columns_not_in_contract(run_dir: Path, source_columns: set[str]) -> list[str]:
    frame = pd.read_parquet(run_dir / "examples.parquet")
    return [c for c in frame.columns if c not in COLUMNS and c not in source_columns]


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory):
    """A run through every stage: build (encode, project, neighbours), project again, score, falloff,
    probes and CKA (what `llm-maps probe` and `llm-maps compare` keep in a run), and findings. Scoring
    generates nothing (the rows carry outputs; the fake encoder is no language model, so no first-token
    statistics: test_findings checks those columns and `scoring.first_token` against the contract)."""
    root = tmp_path_factory.mktemp("contract")
    data = _data(root)
    run = _build(data, root / "runs" / "r", seed=5)
    first_xy = pd.read_parquet(run / "examples.parquet")[["x", "y"]].to_numpy()
    restage_run(run, stage="project", method="pca", fit_on="all", seed=9)
    score_run(run, splits=("test", "train"), generate="never", metric="exact", progress=False, log=lambda m: None)
    falloff_run(run, n_bins=2, metrics=("cosine",))
    from llm_maps.comparison import group_cka, match_runs, probe_run
    from llm_maps.findings import findings_run
    from llm_maps.runfolder import Run

    probe_run(Run(run), folds=2)
    group_cka(match_runs([Run(run)]))
    findings_run(run, n_boot=100, progress=False)  # Chollet vs Reasoning, two tasks each in test
    from llm_maps.regions import run_regions

    run_regions(run, min_size=3)  # regions.json, regions.parquet
    return run, data, first_xy


# ------------------------------------------------------------------------------ the document


def test_document_tables_are_generated_from_the_types():
    text = DOC.read_text(encoding="utf-8")
    assert contract.render_document(text) == text, \
        "docs/run-folder.md is out of date: run python -m llm_maps.contract --write"
    for key in MANIFEST_KEYS + tuple(Manifest.__annotations__):
        assert f"| `{key}` |" in text
    for col in COLUMNS:
        assert f"| `{col}` |" in text
    for name in JSON_FILES:
        assert f"<!-- generated: {name} -->" in text


def test_required_keys_and_columns_are_the_readers_and_unchanged():
    assert MANIFEST_KEYS == (
        "format_version", "model", "dtype", "device", "prompt_template", "pooling", "add_eos",
        "max_length", "truncation_side", "layers", "default_layer", "projection", "distance_metric",
        "split_rule", "domain_map", "sources", "counts", "versions", "created")
    assert REQUIRED_COLUMNS == (
        "example_id", "split", "task", "category", "domain", "prompt", "reference", "output",
        "score", "correct", "x", "y", "dist_to_train", "nn_train_ids")


def test_check_names_keys_and_values_outside_the_contract(staged_run):
    run, _, _ = staged_run
    manifest = Run(run).manifest
    assert check({**manifest, "bogus": 1}, Manifest) == ["bogus: key not in the contract (Manifest)"]
    bad = {**manifest, "neighbours": {**manifest["neighbours"], "approx": True}}
    assert check(bad, Manifest) == ["neighbours.approx: key not in the contract (NeighboursInfo)"]
    bad = {**manifest, "layers": [2, "4"]}
    assert check(bad, Manifest) == ["layers[1]: expected int, got str ('4')"]
    missing = {k: v for k, v in manifest.items() if k != "created"}
    assert check(missing, Manifest) == ["created: required key missing (Manifest)"]


# ------------------------------------------------------------------------------ what writers emit


def test_every_stage_writes_only_what_the_contract_lists(staged_run):
    run, data, _ = staged_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert check(manifest, Manifest) == []
    source_columns = set().union(*(r.keys() for r in map(json.loads, data.read_text().splitlines())))
    assert _columns_not_in_contract(run, source_columns) == []
    for name, td in JSON_FILES.items():
        path = run / name
        assert path.exists(), name
        assert check(json.loads(path.read_text()), td) == []
    assert list(pd.read_parquet(run / "regions.parquet").columns) == list(contract.REGION_COLUMNS)


def test_a_new_column_outside_the_contract_is_caught(staged_run, tmp_path):
    run, data, _ = staged_run
    frame = pd.read_parquet(run / "examples.parquet").assign(novelty=1.0)
    frame.to_parquet(tmp_path / "examples.parquet")
    assert _columns_not_in_contract(tmp_path, set()) == ["novelty"]


# ------------------------------------------------------------------------------ stage history


def test_each_stage_appends_history_and_reruns_keep_the_old_entries(staged_run):
    run, data, first_xy = staged_run
    manifest = Run(run).manifest
    history = manifest["history"]
    assert [h["stage"] for h in history] == ["encode", "project", "neighbours", "project", "score", "falloff",
                                             "probe", "findings", "regions"]
    encode, project1, neighbours, project2, score, falloff, probe, findings, regions = history
    assert regions["params"]["min_size"] == 3 and regions["outputs"] == ["regions.parquet", "regions.json"]
    # probe and findings record their seeds, parameters and inputs with content hashes
    assert probe["params"]["seed"] == 0 and probe["params"]["folds"] == 2 and probe["outputs"] == ["probes.json"]
    assert findings["params"]["seed"] == 0 and findings["params"]["n_boot"] == 100
    assert findings["params"]["layer"] == 4 and findings["outputs"] == ["findings.json"]
    assert findings["inputs"]["files"]["examples.parquet"] == file_digest(run / "examples.parquet")
    assert set(findings["inputs"]["files"]) == {"examples.parquet", "encodings/layer_2.npy", "encodings/layer_4.npy"}
    assert encode["params"]["seed"] == 5 and encode["params"]["split_seed"] is None
    assert encode["params"]["resolved"] == {"split_seed": 5, "map_seed": 5, "layers": [2, 4], "default_layer": 4,
                                            "max_length": 64}
    assert encode["inputs"]["sources"][0]["sha256"] == manifest["sources"][0]["sha256"]
    assert encode["outputs"] == ["examples.parquet", "encodings/layer_2.npy", "encodings/layer_4.npy"]
    # the superseded map's parameters are still there; the current section is the last entry's
    assert project1["params"] == {"method": "pca", "fit_on": "train", "seed": 5, "layer": 4, "metric": "cosine",
                                  "n_neighbors": 15, "min_dist": 0.1}
    assert project2["params"]["fit_on"] == "all" and project2["params"]["seed"] == 9
    assert manifest["projection"]["fit_on"] == "all" and manifest["projection"]["seed"] == 9
    assert manifest["map_seed"] == 9 and manifest["split_seed"] == 5
    assert neighbours["params"] == {"k": 3, "metric": "cosine", "layer": 4}
    assert score["params"]["metric"] == "exact" and score["params"]["generated_rows"] == 0
    assert falloff["params"] == {"n_bins": 2, "layers": [2, 4], "metrics": ["cosine"], "split": "test"}
    assert falloff["outputs"] == ["falloff.json"]
    assert all(h["versions"]["llm-maps"] and h["created"] for h in history)
    assert manifest["updated"] == regions["created"]
    summary = summarize_run(run).splitlines()
    assert "seeds      split 5, map 9" in summary
    assert (f"history    project, neighbours, project, score, falloff, probe, findings, regions (and 1 earlier); "
            f"last {regions['created']} (manifest.history)") in summary
    # re-scoring appends; the first scoring's entry stays
    score_run(run, splits=("test",), generate="never", metric="contains", progress=False, log=lambda m: None)
    again = Run(run).manifest["history"]
    assert [h["stage"] for h in again][-2:] == ["regions", "score"]
    assert again[:9] == history and again[-1]["params"]["metric"] == "contains"


def test_a_rebuild_keeps_the_replaced_runs_history(tmp_path):
    data = _data(tmp_path, 24)
    run = _build(data, tmp_path / "r", seed=1)
    run = _build(data, tmp_path / "r", seed=2)
    history = Run(run).manifest["history"]
    assert [h["stage"] for h in history] == ["encode", "project", "neighbours"] * 2
    assert [h["params"]["resolved"]["split_seed"] for h in history if h["stage"] == "encode"] == [1, 2]


# ------------------------------------------------------------------------------ seeds


def _cli_config(*argv: str) -> BuildConfig:
    args = make_parser().parse_args(["build", "--model", "fake", "--template", "dolly", "--projection", "pca",
                                     "--layers", "2,4", "--no-progress", *argv])
    return from_args(BuildConfig, args)


def test_map_seed_alone_leaves_the_split_unchanged(tmp_path):
    data = _data(tmp_path, 60, outputs=False)
    runs = {}
    for name, argv in {"a": ["--seed", "3"], "map": ["--seed", "3", "--map-seed", "8"],
                       "split": ["--seed", "3", "--split-seed", "4"]}.items():
        notes: list[str] = []
        cfg = _cli_config("--data", str(data), "--out", str(tmp_path / name), "--test-size", "0.3", *argv)
        build_run(cfg, encoder=FakeEncoder(), log=notes.append)
        runs[name] = (Run(tmp_path / name), notes)
    a, a_notes = runs["a"]
    m, m_notes = runs["map"]
    s, _ = runs["split"]
    assert (a.manifest["split_seed"], a.manifest["map_seed"]) == (3, 3)
    assert (m.manifest["split_seed"], m.manifest["map_seed"]) == (3, 8)
    assert m.manifest["projection"]["seed"] == 8 and m.manifest["split_rule"]["seed"] == 3
    assert m.examples["split"].tolist() == a.examples["split"].tolist()
    assert s.manifest["split_seed"] == 4 and s.examples["split"].tolist() != a.examples["split"].tolist()
    assert a_notes[0] == ("note: --seed 3 seeds the train/test split and the map; give --split-seed or --map-seed "
                          "to change only one (split seed 3, map seed 3)")
    assert m_notes[0].startswith("note: --seed 3 seeds the train/test split;")
    both = _cli_config("--data", "d", "--out", "o", "--split-seed", "1", "--map-seed", "2")
    assert both.seed is None and both.seed_note() is None
    assert (both.resolved_split_seed, both.resolved_map_seed) == (1, 2)
    assert _cli_config("--data", "d", "--out", "o").seed_note() is None  # nothing given: defaults, no note


# ------------------------------------------------------------------------------ BuildConfig and the CLI


def test_build_arguments_are_generated_from_build_config():
    parser = make_parser()
    args = parser.parse_args(["build", "--data", "a.jsonl", "b.jsonl", "--model", "m", "--out", "o", "--layers",
                              "1,3", "--test-categories", "x, y", "--method", "pca", "-k", "4", "--add-eos",
                              "--no-progress", "--format", "jsonl", "--distributed", "--chunk-size", "8"])
    cfg = from_args(BuildConfig, args)
    assert cfg == BuildConfig(data=["a.jsonl", "b.jsonl"], model="m", out="o", layers=[1, 3],
                              test_categories=["x", "y"], projection="pca", k=4, add_eos=True, progress=False,
                              data_format="jsonl", distributed=True, chunk_size=8)
    assert HANDLERS[args.stage] is cmd_build
    # the defaults of the command line are BuildConfig's
    defaults = from_args(BuildConfig, parser.parse_args(["build", "--data", "d", "--model", "m", "--out", "o"]))
    assert defaults == BuildConfig(data=["d"], model="m", out="o")
    # every field is an argument of build; encode takes the encoding ones and is its own command
    build_help = parser._subparsers._group_actions[0].choices["build"].format_help()  # noqa: SLF001
    for f in dataclasses.fields(BuildConfig):
        flag = f.metadata["cli"].flags[-1] if f.metadata["cli"].flags else "--" + f.name.replace("_", "-")
        assert flag in build_help, f.name
    enc = parser.parse_args(["encode", "--data", "d", "--model", "m", "--out", "o", "--metric", "euclidean"])
    assert HANDLERS[enc.stage] is cmd_encode and not hasattr(enc, "projection") and not hasattr(enc, "k")
    assert from_args(BuildConfig, enc, projection=None).metric == "euclidean"
    with pytest.raises(SystemExit):
        parser.parse_args(["encode", "--data", "d", "--model", "m", "--out", "o", "--projection", "pca"])


def test_adding_a_field_to_the_config_is_one_change():
    @dataclasses.dataclass(frozen=True)
    class WithViews(BuildConfig):
        views: str = option("prompt", "views to encode (prompt, completion)", "views")

    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, WithViews, groups=("data", "views"))
    cfg = from_args(WithViews, parser.parse_args(["--data", "d", "--views", "prompt,completion"]))
    assert cfg.views == "prompt,completion" and cfg.data == ["d"]
    assert cfg.record()["views"] == "prompt,completion"
    assert "views:" in parser.format_help() and "views to encode" in parser.format_help()


def test_build_run_keyword_options_are_config_fields(tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        build_run(model="m", out=str(tmp_path / "r"), bogus=1)


# ------------------------------------------------------------------------------ the fake encoder


def test_pipeline_with_the_fake_encoder_writes_a_consistent_run(tmp_path):
    data = _data(tmp_path, 30, outputs=False)
    encoder = FakeEncoder()
    run = build_run(BuildConfig(data=[str(data)], out=str(tmp_path / "r"), model="fake", template="plain",
                                projection="pca", layers=[1, 4], default_layer=4, max_length=12, add_eos=True,
                                k=2, metric="euclidean", progress=False), encoder=encoder, log=lambda m: None)
    assert isinstance(encoder, Encoder)  # the protocol build_run receives
    r = Run(run)
    ex = r.examples
    assert encoder.calls == [{"n": 30, "layers": [1, 4], "add_eos": True, "max_length": 12}]
    assert ex["prompt"].tolist()[0] == dolly_rows(30)[0]["instruction"] + (
        "\n\n" + dolly_rows(30)[0]["context"] if dolly_rows(30)[0]["context"] else "")
    for k in (1, 4):
        expected = np.stack([encoder.vector(p, k, add_eos=True, max_length=12) for p in ex["prompt"]])
        np.testing.assert_array_equal(np.asarray(r.encodings(k)), expected)
    full = [len(p.split()) + 1 for p in ex["prompt"]]
    assert ex["n_tokens"].tolist() == [min(n, 12) for n in full]
    assert ex["truncated"].tolist() == [n > 12 for n in full]
    assert r.manifest["max_length"] == 12 and r.manifest["pooling"] == "eos"
    assert r.manifest["model_info"]["architecture"] == "FakeEncoder" and r.manifest["hidden_size"] == 16
    # distances: exact euclidean nearest train neighbour at the default layer
    enc = np.asarray(r.encodings(4), dtype=np.float32)
    train = np.flatnonzero(ex["split"].to_numpy() == "train")
    for i in (0, 7, 29):
        d = np.linalg.norm(enc[train] - enc[i], axis=1)
        d[train == i] = np.inf
        assert ex["dist_to_train"][i] == pytest.approx(d.min(), rel=1e-5)
        assert ex["nn_train_ids"][i][0] == ex["example_id"][train[np.argmin(d)]]
    n_train = len(train)
    assert f"examples   30 ({n_train} train, {30 - n_train} test)" in summarize_run(run)
    assert f"encoding   {int(ex['n_tokens'].sum())} tokens" in summarize_run(run)


def test_pipeline_with_the_fake_encoder_never_imports_torch(tmp_path):
    data = _data(tmp_path, 20, outputs=False)
    code = (
        "import sys, time\n"
        "from fake_encoder import FakeEncoder\n"
        "from pipelines.build import build_run\n"
        "from llm_maps.config import BuildConfig\n"
        f"cfg = BuildConfig(data=[{str(data)!r}], out={str(tmp_path / 'r')!r}, model='fake', template='dolly',\n"
        "                  projection='pca', layers=[2], progress=False)\n"
        "build_run(cfg, encoder=FakeEncoder(), log=lambda m: None)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ------------------------------------------------------------------------------ old runs


def test_a_run_written_the_old_way_still_opens_and_gains_history(staged_run, tmp_path):
    """The format before this change: only the required manifest keys (no history, no seeds,
    no encoding/neighbours sections) and the old columns."""
    import shutil

    run, _, _ = staged_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "falloff.json").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    legacy = {k: manifest[k] for k in MANIFEST_KEYS}
    (old / "manifest.json").write_text(json.dumps(legacy))
    frame = pd.read_parquet(old / "examples.parquet")
    frame[list(REQUIRED_COLUMNS) + ["instruction", "context", "n_tokens", "truncated"]].to_parquet(
        old / "examples.parquet")
    r = Run(old)
    assert r.layers == [2, 4] and len(r.examples) == 40
    assert "examples   40" in summarize_run(old)
    restage_run(old, stage="neighbours", k=2)
    history = Run(old).manifest["history"]
    assert [h["stage"] for h in history] == ["neighbours"]
    falloff_run(old, n_bins=2, metrics=("cosine",))
    assert [h["stage"] for h in Run(old).manifest["history"]] == ["neighbours", "falloff"]
    from dashboard.data import RunRegistry

    data = RunRegistry([old], []).load(None)
    assert data is not None and len(data.frame) == 40


def test_the_synthetic_runs_of_the_dashboard_tests_follow_the_contract(tmp_path):
    from contract_helpers import assert_follows_contract
    from dashboard.synthetic import write_synthetic_run

    assert_follows_contract(write_synthetic_run(tmp_path / "s", 60, layers=(1, 2)))
    # with conditions (and paths on a token map): conditions.parquet has exactly CONDITION_COLUMNS
    run = write_synthetic_run(tmp_path / "c", 60, layers=(1, 2), conditions=("direct", "cot", "neighbours:2"),
                              token_map=True)
    assert_follows_contract(run)
    cond = pd.read_parquet(run / "conditions.parquet")
    assert list(cond.columns) == list(contract.CONDITION_COLUMNS)
    assert Run(run).manifest["conditions"]["conditions"]["neighbours:2"]["k"] == 2


def test_encode_project_neighbours_commands_one_stage_at_a_time(tmp_path, monkeypatch, capsys):
    """`llm-maps encode` stops before the map; `project` and `neighbours` add it, each with its entry
    (the model is the fake encoder, put where `build_run` loads the real one)."""
    from interfaces.cli import main
    from pipelines.encoder import TransformersEncoder

    monkeypatch.setattr(TransformersEncoder, "load", classmethod(lambda cls, config: FakeEncoder()))
    data = _data(tmp_path, 30, outputs=False)
    out = tmp_path / "r"
    assert main(["encode", "--model", "fake", "--data", str(data), "--out", str(out), "--template", "plain",
                 "--layers", "2,4", "--metric", "euclidean", "--no-progress"]) == 0
    r = Run(out)
    assert r.manifest["projection"] is None and r.manifest["distance_metric"] == "euclidean"
    assert r.examples[["x", "y", "dist_to_train"]].isna().all().all()
    assert [h["stage"] for h in r.manifest["history"]] == ["encode"]
    assert main(["project", str(out), "--method", "pca", "--map-seed", "4"]) == 0
    assert main(["neighbours", str(out), "-k", "2", "--metric", "euclidean"]) == 0
    r = Run(out)
    assert [h["stage"] for h in r.manifest["history"]] == ["encode", "project", "neighbours"]
    assert r.manifest["map_seed"] == 4 and r.manifest["neighbours"]["metric"] == "euclidean"
    assert r.examples[["x", "y", "dist_to_train"]].notna().all().all()
    assert "seeds      split 0, map 4" in capsys.readouterr().out
