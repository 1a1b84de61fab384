"""lm-eval import: output produced here by lm-eval itself (Python API) on a tiny random model with
local task YAMLs and JSONL data, offline; then imported into a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from contract_helpers import assert_follows_contract  # noqa: E402
from interfaces.cli import main  # noqa: E402
from llm_maps.errors import LLMMapsError  # noqa: E402
from llm_maps.runfolder import Run  # noqa: E402
from pipelines.generate import choice_loglikelihoods  # noqa: E402
from pipelines.lmeval import read_lmeval, run_lmeval  # noqa: E402
from pipelines.models import load_model  # noqa: E402

MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
GEN_YAML = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
LL_YAML = """task: tiny_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text}}}}"
doc_to_target: " {{{{word}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _write_tasks(folder: Path, gen_answers: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mc = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b)], "label": 0}
          for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (7, 3), (4, 4), (6, 2), (9, 1)]]
    words = "sea wind light paper press train answer step".split()
    gen = [{"question": f"Repeat the word: {w}", "answer": (gen_answers[i] if gen_answers else w)}
           for i, w in enumerate(words)]
    ll = [{"text": f"The quick brown fox jumps over the lazy", "word": w} for w in ("dog", "sea", "fox", "light")]
    for name, rows, yaml in (("mc", mc, MC_YAML), ("gen", gen, GEN_YAML), ("ll", ll, LL_YAML)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (folder / f"tiny_{name}.yaml").write_text(yaml.format(data=data), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def lmeval_output(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("lmeval")
    model = str(tiny_models["gpt_neox"])
    tasks = ["tiny_mc", "tiny_gen", "tiny_ll"]
    first = run_lmeval(model=model, tasks=tasks, output_dir=root / "pass1",
                       include_path=str(_write_tasks(root / "tasks1")), batch_size=4, device="cpu")
    # second pass: make half of the generation targets equal to what the model says, so exact
    # match has both 1s and 0s
    gen_file = next(f for f in first if "tiny_gen" in f.name)
    said = [json.loads(line)["filtered_resps"][0] for line in gen_file.read_text().splitlines()]
    words = "sea wind light paper press train answer step".split()
    answers = [said[i] if i % 2 == 0 else w for i, w in enumerate(words)]
    files = run_lmeval(model=model, tasks=tasks, output_dir=root / "pass2",
                       include_path=str(_write_tasks(root / "tasks2", answers)), batch_size=4, device="cpu")
    return model, files, root


def test_import_matches_lmeval_aggregates_exactly(lmeval_output):
    model, files, _ = lmeval_output
    assert sorted(f.name.split("_20")[0] for f in files) == ["samples_tiny_gen", "samples_tiny_ll", "samples_tiny_mc"]
    frame, infos, scoring = read_lmeval(files)
    results_file = Path(infos[0]["results"])
    results = json.loads(results_file.read_text())["results"]
    for task, metric in (("tiny_mc", "acc"), ("tiny_gen", "exact_match"), ("tiny_ll", "acc")):
        rows = frame[frame.task == task]
        assert scoring["per_task"][task]["metric"] == metric
        assert rows["score"].mean() == results[task][f"{metric},none"]  # exactly
        assert len(rows) == results[task]["sample_len"]
    gen = frame[frame.task == "tiny_gen"].sort_values("doc_id")
    assert gen["score"].tolist() == [1.0, 0.0] * 4  # even docs' targets are the model's own output
    assert gen["output"].iloc[0] == gen["reference"].iloc[0]
    assert gen["prompt"].iloc[1] == "Repeat the word: wind\nAnswer:"
    mc = frame[frame.task == "tiny_mc"].sort_values("doc_id")
    first = mc.iloc[0]
    assert first["prompt"] == "Question: What is 1 plus 2?\nAnswer:" and first["reference"] == "3"
    assert list(first["choices"]) == ["3", "4", "2"]
    assert first["output"] == first["choices"][int(np.argmax(first["choice_logprobs"]))]
    assert len(first["doc_hash"]) == 64 and len(first["prompt_hash"]) == 64
    assert first["example_id"] == "tiny_mc/0"
    # lm-eval's log-likelihoods agree with ours on the same model
    loaded = load_model(model)
    ours = choice_loglikelihoods(loaded, first["prompt"], [" 3", " 4", " 2"])
    np.testing.assert_allclose([r["logprob"] for r in ours], first["choice_logprobs"], atol=1e-3)
    ll = frame[frame.task == "tiny_ll"]
    assert set(ll["reference"]) == {"dog", "sea", "fox", "light"}
    assert (ll["correct"] == (ll["score"] >= 0.5)).all()


def test_import_lmeval_cli_builds_a_run_with_train_data(lmeval_output, tmp_path):
    model, files, _ = lmeval_output
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"instruction": f"Add {i} and {i}.", "response": str(2 * i),
                                         "category": "arithmetic"}) + "\n" for i in range(10)))
    domains = tmp_path / "domains.toml"
    domains.write_text('[categories]\narithmetic = "Chollet"\n[tasks]\ntiny_mc = "Chollet"\ntiny_gen = "Reasoning"\n'
                       'tiny_ll = "Reasoning"\n')
    out = tmp_path / "run"
    assert main(["import-lmeval", *map(str, files), "--model", model, "--out", str(out), "--train", str(train),
                 "--template", "dolly", "--domain-map", str(domains), "--projection", "pca", "--no-progress"]) == 0
    run = Run(out)
    ex = run.examples
    assert (ex.split == "train").sum() == 10 and (ex.split == "test").sum() == 8 + 8 + 4
    test = ex[ex.split == "test"]
    assert test["prompt"].str.startswith(("Question:", "Repeat", "The quick")).all()  # verbatim contexts
    assert ex[ex.split == "train"]["prompt"].str.startswith("Below is an instruction").all()
    assert set(test["domain"]) == {"Chollet", "Reasoning"}
    assert test["score"].notna().all() and ex[ex.split == "train"]["score"].isna().all()
    assert run.manifest["scoring"]["source"] == "lm-eval"
    assert run.manifest["sources"][-1]["lm_eval_version"]
    assert_follows_contract(out)
    assert test["dist_to_train"].notna().all()


def _copy(files, dest: Path) -> list[Path]:
    dest.mkdir()
    out = []
    for f in files:
        out.append(Path(shutil.copy(f, dest / f.name)))
    res = next(f.parent.glob("results_*.json"))
    shutil.copy(res, dest / res.name)
    return out


@pytest.mark.parametrize("mutate, message", [
    (lambda lines: lines[:1] + ["{not json"] + lines[2:], r"samples_tiny_mc_.*, line 2: invalid JSON"),
    (lambda lines: [json.dumps({k: v for k, v in json.loads(lines[0]).items() if k != "arguments"})] + lines[1:],
     r"line 1, field 'arguments': missing"),
    (lambda lines: [json.dumps({**json.loads(lines[0]), "arguments": "??"})] + lines[1:],
     r"line 1, field 'arguments': unknown shape"),
    (lambda lines: lines[:-1], r"differs from the aggregate"),
])
def test_bad_samples_files_fail_with_file_line_field(lmeval_output, tmp_path, mutate, message):
    _, files, _ = lmeval_output
    copies = _copy(files, tmp_path / "c")
    mc = next(f for f in copies if "tiny_mc" in f.name)
    mc.write_text("\n".join(mutate(mc.read_text().splitlines())) + "\n")
    with pytest.raises(LLMMapsError, match=message):
        read_lmeval([mc])


def test_unknown_metric_and_missing_reference(lmeval_output, tmp_path, tiny_models, capsys):
    _, files, _ = lmeval_output
    copies = _copy(files, tmp_path / "c")
    mc = next(f for f in copies if "tiny_mc" in f.name)
    with pytest.raises(LLMMapsError, match=r"line 1, field 'f1': metric not in this samples file \(has: acc, acc_norm\)"):
        read_lmeval([mc], metric="f1")
    gen = next(f for f in copies if "tiny_gen" in f.name)
    lines = gen.read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "target": ""})
    gen.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["import-lmeval", str(gen), "--model", str(tiny_models["gpt2"]), "--out", str(out),
                 "--projection", "pca", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "line 3, field 'target': task 'tiny_gen' has no reference" in err
    assert not out.exists() and not Path(str(out) + ".partial").exists()  # nothing written
    results = next((tmp_path / "c").glob("results_*.json"))
    results.write_text(json.dumps({"results": {}}))
    with pytest.raises(LLMMapsError, match=r"results_.*\.json, field 'configs': missing"):
        read_lmeval([mc])
