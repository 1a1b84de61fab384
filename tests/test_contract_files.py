"""Every file a stage writes is in the contract (``FILES`` in llm_maps/contract.py, docs/run-folder.md),
with every key, column and array of it: real runs of tiny models through every stage, the working
files of resumable and distributed stages caught mid-way, a fine-tuning group, and compare --json.

``check_folder`` names each file no pattern matches and each key, column or array its block does not
list; a stage that starts writing something new fails here until it is declared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import dolly_rows, write_jsonl
from interfaces.cli import main
from llm_maps import contract
from llm_maps.contract import CompareFile, FinetuneFile, check, check_folder, declared_file
from llm_maps.runfolder import partial_dir


def _source_columns(data: Path) -> set[str]:
    return set().union(*(json.loads(line).keys() for line in data.read_text().splitlines()))


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _finished(folder: Path, kind: str = "run") -> list[str]:
    """Files of a finished run (or group) that are declared only as working files or temporaries."""
    finished = {"run": {"run"}, "group": {"run", "group"}}[kind]
    out = []
    for rel in _files(folder):
        entry = declared_file(rel, kind)
        if entry is not None and entry.where not in finished:
            out.append(f"{rel}: {entry.where} file left in a finished {kind}")
    return out


def _build_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["build", "--model", str(model), "--data", str(data), "--out", str(out), "--template", "dolly",
            "--projection", "pca", "--k", "3", "--layers", "1,3", "--no-progress", *extra]


# ------------------------------------------------------------------------------ a run through every stage


@pytest.fixture(scope="module")
def staged(tiny_models, tmp_path_factory):
    """A llama run with both views and the token atlas, scored, its completion view and atlas redone
    on the finished run, scored under three conditions, with falloff, findings, probes, regions and
    CKA; a second (gpt_neox) run over the same examples; `compare --json` of the two."""
    root = tmp_path_factory.mktemp("files")
    data = write_jsonl(root / "d.jsonl", dolly_rows(40))
    run, other = root / "runs" / "r", root / "runs" / "o"
    assert main(_build_args(tiny_models["llama"], data, run, "--views", "prompt,completion", "--token-atlas")) == 0
    assert main(["score", str(run), "--max-new-tokens", "3", "--no-progress"]) == 0
    assert main(["encode", str(run), "--view", "completion", "--no-progress"]) == 0  # with the outputs
    assert main(["atlas", str(run), "--atlas-max-tokens", "150", "--no-progress"]) == 0
    assert main(["score", str(run), "--conditions", "direct,cot,neighbours:2", "--limit-per-task", "2",
                 "--cot-max-new-tokens", "4", "--max-new-tokens", "3", "--no-progress"]) == 0
    assert main(["falloff", str(run), "--bins", "2"]) == 0
    assert main(["findings", str(run), "--bootstrap", "100", "--no-progress"]) == 0
    assert main(["probe", str(run), "--folds", "2", "--bootstrap", "100", "--targets", "domain,correct",
                 "--no-progress"]) == 0
    from llm_maps.regions import run_regions

    run_regions(run)
    assert main(_build_args(tiny_models["gpt_neox"], data, other)) == 0
    assert main(["score", str(other), "--max-new-tokens", "2", "--no-progress"]) == 0
    compare_json = root / "compare.json"
    assert main(["compare", str(run), str(other), "--json", str(compare_json), "--no-progress"]) == 0
    return run, other, compare_json, data


def test_every_file_a_stage_writes_into_a_run_is_declared(staged):
    run, other, _, data = staged
    files = _files(run)
    for expected in ("tokens.parquet", "encodings/tokens/layer_3.npy", "encodings/completion/layer_1.npy",
                     "projection_tokens/projection.json", "projection_completion/components.npy",
                     "conditions.parquet", "falloff.json", "findings.json", "probes.json", "cka.json",
                     "regions.json", "regions.parquet"):
        assert expected in files, expected
    for folder in (run, other):
        assert check_folder(folder, source_columns=_source_columns(data)) == []
        assert _finished(folder) == []  # no working file or temporary left behind


def test_compare_json_follows_its_declaration(staged):
    run, other, compare_json, _ = staged
    result = json.loads(compare_json.read_text())
    assert check(result, CompareFile) == []
    assert [r["path"] for r in result["runs"]] == [str(run), str(other)]
    assert result["cka"]["layer_pairs"] and result["falloff"][0]["stats"] is not None
    assert set(result["provenance"]) == {"params", "inputs", "versions", "created"}
    # declared, not required: a file written before it has none
    assert check({k: v for k, v in result.items() if k != "provenance"}, CompareFile) == []
    assert check({**result, "bogus": 1}, CompareFile) == ["bogus: key not in the contract (CompareFile)"]


def test_a_file_key_column_or_array_outside_the_contract_is_named(staged, tmp_path):
    run, _, _, data = staged
    copy = tmp_path / "r"
    shutil.copytree(run, copy)
    (copy / "notes.txt").write_text("x")
    (copy / "encodings" / "layer_1.npy").rename(copy / "encodings" / "layer_one.npy")
    tokens = pd.read_parquet(copy / "tokens.parquet")
    tokens.assign(extra=1).drop(columns=["token_text"]).to_parquet(copy / "tokens.parquet")
    falloff = json.loads((copy / "falloff.json").read_text())
    (copy / "falloff.json").write_text(json.dumps({**falloff, "extra": 1}))
    (copy / ".distributed").mkdir()
    np.savez(copy / ".distributed" / "chunk_00000.npz", meta=np.array(json.dumps(
        {"chunk": 0, "rows": 1, "clipped": 0, "device": "cpu", "dtype": "float32", "worker": "w", "seconds": 0.1,
         "more": 1})), rows=np.zeros(1), layer_1=np.zeros((1, 2)), other=np.zeros(1))
    assert check_folder(copy, source_columns=_source_columns(data)) == [
        ".distributed/chunk_00000.npz: other: array not in the contract",
        ".distributed/chunk_00000.npz: meta.more: key not in the contract (EncodeChunkMeta)",
        "encodings/layer_one.npy: file not in the contract",
        "falloff.json: extra: key not in the contract (FalloffFile)",
        "notes.txt: file not in the contract",
        "tokens.parquet: extra: column not in the contract",
        "tokens.parquet: token_text: required column missing",
    ]
    assert _finished(copy) == [".distributed/chunk_00000.npz: work file left in a finished run"]


def test_a_group_file_or_key_outside_the_contract_is_named(tmp_path):
    group = tmp_path / "g"
    (group / "checkpoints" / "step-000004" / "model").mkdir(parents=True)
    (group / "checkpoints" / "step-000004" / "model" / "config.json").write_text("{}")
    (group / "checkpoints" / "step-000004" / "state.pt").write_bytes(b"")
    (group / "checkpoints" / "step-000004" / "adapter.bin").write_bytes(b"")
    (group / "step-000004.partial" / "encodings").mkdir(parents=True)
    (group / "step-000004.partial" / "encodings" / "layer_2.npy").write_bytes(b"")
    (group / "finetune.json").write_text(json.dumps({
        "settings": {"steps": 4, "mode": "lora", "novel": 1}, "checkpoints": ["step-000004"],
        "curve": {"train": [{"step": 1, "loss": 2.0, "lr": 0.1}], "eval": [{"step": 0, "loss": 2.1, "x": 0}]}}))
    assert check_folder(group, "group") == [
        "checkpoints/step-000004/adapter.bin: file not in the contract",
        "finetune.json: settings.novel: key not in the contract (FinetuneSettings)",
        "finetune.json: curve.eval[0].x: key not in the contract (EvalLossPoint)",
    ]
    assert _finished(group, "group") == [
        "step-000004.partial/encodings/layer_2.npy: group work file left in a finished group"]


def test_patterns_match_what_they_say():
    assert declared_file("encodings/layer_12.npy").path == "encodings/layer_<k>.npy"
    assert declared_file("projection_tokens/fit_rows.npy") is not None
    assert declared_file("projection_tokens/other.npy") is None
    assert declared_file(".distributed-conditions/neighbours-2.generate/chunk_00003.json").schema == \
        ".distributed-score/chunk_<i>.json"
    inner = declared_file(".extras.partial/encodings/tokens/layer_2.npy")
    assert (inner.path, inner.where) == ("encodings/tokens/layer_<k>.npy", "work")
    assert declared_file(".projection.123.tmp/mean.npy").where == "temporary"
    assert declared_file("step-000002/manifest.json", "group").path == "manifest.json"
    assert declared_file("finetune.json") is None and declared_file("finetune.json", "group") is not None
    assert declared_file("checkpoints/step-000002/model/model.safetensors", "group") is not None
    assert declared_file("step-000002/checkpoints/x", "group") is None
    for f in contract.FILES:  # every schema a file names is a block of the document
        assert f.schema is None or f.schema in contract.generated_blocks(), f.path


# ------------------------------------------------------------------------------ working files, interrupted


class Interrupted(Exception):
    pass


def _interrupt_after(monkeypatch, module, name: str, calls: int) -> None:
    """``module.name`` raises Interrupted on its call number ``calls + 1`` (a killed process, as the
    files see it: each stage checkpoints in a finally block)."""
    real = getattr(module, name)
    seen = {"n": 0}

    def wrapped(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] > calls:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_an_interrupted_build_leaves_only_declared_working_files(tiny_models, tmp_path, monkeypatch):
    import pipelines.encode as encode
    import pipelines.views as views

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(24))
    for name, extra, module, fn, state in (
            ("plain", [], encode, "last_token_states", "encodings/.state.json"),
            ("views", ["--views", "prompt,completion", "--token-atlas"], views, "states_at",
             "encodings/.views-state.json")):
        run = tmp_path / "runs" / name
        args = _build_args(tiny_models["gpt2"], data, run, "--batch-tokens", "96", *extra)
        with monkeypatch.context() as m:
            _interrupt_after(m, module, fn, 1)
            with pytest.raises(Interrupted):
                main(args)
        work = partial_dir(run)
        assert state in _files(work) and check_folder(work) == [], name
        assert main(args) == 0  # resumes, then publishes
        assert not work.exists() and check_folder(run, source_columns=_source_columns(data)) == []
        assert _finished(run) == []
    # a later stage on the finished run, interrupted: its work folder inside the run
    with monkeypatch.context() as m:
        _interrupt_after(m, views, "states_at", 1)
        with pytest.raises(Interrupted):
            main(["atlas", str(run), "--batch-tokens", "96", "--no-progress"])
    assert "encodings/.views-state.json" in [f.removeprefix(".extras.partial/") for f in _files(run)]
    assert check_folder(run, source_columns=_source_columns(data)) == []
    assert main(["atlas", str(run), "--batch-tokens", "96", "--no-progress"]) == 0
    assert _finished(run) == [] and check_folder(run, source_columns=_source_columns(data)) == []


def test_a_build_resumed_with_other_views_leaves_no_working_files(tiny_models, tmp_path, monkeypatch):
    import pipelines.encode as encode

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(16))
    run = tmp_path / "runs" / "r"
    args = _build_args(tiny_models["gpt2"], data, run, "--batch-tokens", "96")
    with monkeypatch.context() as m:
        _interrupt_after(m, encode, "last_token_states", 1)
        with pytest.raises(Interrupted):
            main(args)
    assert main(args + ["--views", "prompt,completion"]) == 0
    assert _finished(run) == []


# ------------------------------------------------------------------------------ distributed working files


@pytest.fixture
def in_process_workers(monkeypatch):
    """`--distributed` with the chunk tasks run in this process (no Redis, no Celery worker): after the
    chunks of each distributed step ran, ``seen`` gets (the folder checked, its files, check_folder's
    problems) for the run folder (or RUN.partial) the step writes into."""
    import pipelines.distributed as distributed
    from llm_maps.jobs import TASK_ENCODE_CHUNK, TASK_SCORE_CHUNK, TASK_VIEWS_CHUNK

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")  # never reached: the tasks run here
    tasks = {TASK_ENCODE_CHUNK: distributed.encode_chunk, TASK_SCORE_CHUNK: distributed.score_chunk,
             TASK_VIEWS_CHUNK: distributed.views_chunk}
    seen: list[tuple[Path, list[str], list[str]]] = []

    def run_chunks(app, task, pending, kwargs, *, desc, progress=True, poll=0.2):
        work = None
        for i in pending:
            kw = kwargs(i)
            tasks[task](**kw, worker="in-process")
            work = Path(kw["work"])
        top = next((p for p in [work, *work.parents] if p.name.endswith(".partial") and not p.name.startswith(".")),
                   None)
        top = top or (work.parent if work.name.startswith(".") else work)
        seen.append((top, _files(top), check_folder(top)))

    monkeypatch.setattr(distributed, "run_chunks", run_chunks)
    return seen


def test_distributed_working_files_are_declared(tiny_models, tmp_path, in_process_workers):
    seen = in_process_workers
    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(24))
    run = tmp_path / "runs" / "r"
    assert main(_build_args(tiny_models["gpt2"], data, run, "--distributed", "--chunk-size", "8")) == 0
    assert main(_build_args(tiny_models["gpt2"], data, run, "--distributed", "--chunk-size", "8",
                            "--views", "prompt,completion", "--token-atlas")) == 0
    assert main(["score", str(run), "--max-new-tokens", "2", "--distributed", "--chunk-size", "8",
                 "--no-progress"]) == 0
    assert main(["score", str(run), "--conditions", "direct,cot", "--limit-per-task", "2", "--cot-max-new-tokens",
                 "3", "--max-new-tokens", "2", "--distributed", "--chunk-size", "4", "--no-progress"]) == 0
    assert main(["atlas", str(run), "--distributed", "--chunk-size", "8", "--no-progress"]) == 0
    files = {f for _, fs, _ in seen for f in fs}
    for expected in (".distributed/plan.json", ".distributed/tokens.npy", ".distributed/offsets.npy",
                     ".distributed/chunk_00000.npz", ".distributed-views/plan.json", ".distributed-views/takes.npy",
                     ".distributed-views/take_offsets.npy", ".distributed-views/chunk_00000.npz",
                     ".distributed-score/plan.json", ".distributed-score/inputs.json",
                     ".distributed-score/chunk_00000.json", ".distributed-conditions/cot.generate/plan.json",
                     ".extras.partial/.distributed-views/plan.json"):
        assert expected in files, expected
    assert [p for _, _, problems in seen for p in problems] == []
    assert check_folder(run, source_columns=_source_columns(data)) == [] and _finished(run) == []


# ------------------------------------------------------------------------------ a fine-tuning group


@pytest.mark.slow  # 11-20 s: training, two checkpoint runs scored as the base run
def test_a_fine_tuning_group_holds_only_declared_files(tiny_models, tmp_path, monkeypatch):
    import pipelines.finetune as ft
    from llm_maps.stages import FinetuneConfig

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(24))
    base = tmp_path / "runs" / "base"
    assert main(_build_args(tiny_models["llama"], data, base)) == 0
    assert main(["score", str(base), "--max-new-tokens", "2", "--no-progress"]) == 0
    assert main(["falloff", str(base), "--bins", "2"]) == 0
    group = tmp_path / "runs" / "g"
    saving: list[list[str]] = []
    real_save = ft.save_merged

    def save_merged(*args, **kwargs):  # the checkpoint folder while it is being saved
        real_save(*args, **kwargs)
        saving.append(check_folder(group, "group") + [f for f in _files(group) if ".partial/" in f][:1])

    monkeypatch.setattr(ft, "save_merged", save_merged)
    ft.finetune(base, group, FinetuneConfig(steps=2, save_every=1, lr=5e-3, batch_size=4, progress=False),
                log=lambda m: None)
    assert saving and all(len(s) == 1 and s[0].startswith("checkpoints/step-") for s in saving)
    assert {"finetune.json", "checkpoints/step-000002/state.pt", "step-000000/manifest.json",
            "step-000002/examples.parquet"} <= set(_files(group))
    assert check_folder(group, "group", source_columns=_source_columns(data)) == []
    assert _finished(group, "group") == []
    assert check(json.loads((group / "finetune.json").read_text()), FinetuneFile) == []
    out = tmp_path / "cmp.json"
    assert main(["compare", str(group / "step-000000"), str(group / "step-000002"), "--json", str(out),
                 "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["loss_curve"] is not None and check(result, CompareFile) == []


def test_the_result_readers_name_the_file_and_why_it_cannot_be_read(tmp_path):
    """falloff.json, regions.json and findings.json share one reader (runfolder.read_result_json):
    none is (None, None); one that is not JSON, not UTF-8, not an object, lacks a required key or
    is of a newer format is (None, one line naming the file and why), never an exception."""
    from dashboard.data import _read_falloff
    from llm_maps.findings import read_findings
    from llm_maps.regions import FORMAT_VERSION, read_regions

    assert read_regions(tmp_path) == (None, None) and read_findings(tmp_path) == (None, None)
    assert _read_falloff(tmp_path) == (None, None)
    regions, findings, falloff = tmp_path / "regions.json", tmp_path / "findings.json", tmp_path / "falloff.json"
    cases = [
        (read_regions, regions, b"{not json", "unreadable regions (Expecting property name enclosed in double quotes: "
                                              "line 1 column 2 (char 1))"),
        (read_regions, regions, b'{"regions": {}}', "unreadable regions (no 'regions' list)"),
        (read_regions, regions, json.dumps({"regions": [], "format_version": FORMAT_VERSION + 1}).encode(),
         f"unreadable regions (format_version {FORMAT_VERSION + 1} is newer than this reader's ({FORMAT_VERSION}))"),
        (read_findings, findings, b'{"domains": {}, "contrast": []}', "unreadable findings (no 'contrast' object)"),
        (read_findings, findings, b"\xff\xfe", "unreadable findings ('utf-8' codec can't decode byte 0xff in "
                                              "position 0: invalid start byte)"),
        (_read_falloff, falloff, b"[1, 2]", "unreadable falloff statistics ('list' object has no attribute 'get'); "
                                           "computing them on the fly"),
    ]
    for reader, path, raw, why in cases:
        path.write_bytes(raw)
        assert reader(tmp_path) == (None, f"{path}: {why}"), raw
    regions.write_text(json.dumps({"regions": [{"region": 0}], "format_version": FORMAT_VERSION}))
    assert read_regions(tmp_path) == ({"regions": [{"region": 0}], "format_version": FORMAT_VERSION}, None)


def test_parquet_errors_are_one_line_naming_the_file(tmp_path):
    from llm_maps.errors import LLMMapsError
    from llm_maps.runfolder import parquet_errors

    path = tmp_path / "t.parquet"
    with pytest.raises(LLMMapsError) as got, parquet_errors(path, "missing (run `llm-maps x`)"):
        pd.read_parquet(path)
    assert str(got.value) == f"{path}: missing (run `llm-maps x`)"
    path.write_bytes(b"PAR1 this is no Parquet file")
    with pytest.raises(LLMMapsError) as got, parquet_errors(path):
        pd.read_parquet(path)
    assert str(got.value).startswith(f"{path}: unreadable Parquet (ArrowInvalid: ") and "\n" not in str(got.value)
    with pytest.raises(LLMMapsError) as got, parquet_errors(path):  # our own errors pass as they are
        raise LLMMapsError(f"{path}, field 'x': required column missing")
    assert str(got.value) == f"{path}, field 'x': required column missing"
