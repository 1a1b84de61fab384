"""The GPU check (benchmarks/gpu_check.py) in its CPU form, so it cannot rot, and the bf16 path on
every machine: CPU bf16 encodings within the stated tolerance of fp32, batched greedy generation
equal to one prompt at a time, multiple choice equal to a full forward per choice, and `score`
in bf16; a CUDA device this machine lacks is a one-line error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import build_scored_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_gpu_check_runs_every_check_in_fp32_and_cpu_bf16(tiny_models, tmp_path, capsys):
    import gpu_check

    out = tmp_path / "figures.json"
    assert gpu_check.main(["--model", str(tiny_models["llama"]), "--device", "cpu", "--n", "12",
                           "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["pass"] is True
    assert set(figures["checks"]) == {f"{c}/{d}" for c in ("encode", "generate", "choices", "first_token", "worker")
                                      for d in ("bfloat16", "float32")} | {"finetune/training"}
    checks = figures["checks"]
    for dtype, tol in (("float32", 1e-3), ("bfloat16", 0.05)):
        enc = checks[f"encode/{dtype}"]
        assert enc["tolerance"] == tol and enc["rows"] == 12 and enc["atlas_tokens"] > 0
        for view in ("prompt", "completion", "atlas"):
            assert enc[f"{view}_rel_err_worst"] <= tol
    # fp32 on the CPU is the reference itself; bf16 really ran in bf16 (its error is not 0)
    assert checks["encode/float32"]["prompt_rel_err_worst"] == 0
    assert checks["encode/bfloat16"]["prompt_rel_err_worst"] > 1e-4
    assert checks["generate/float32"]["identical"] == 12 and checks["generate/float32"]["slots"] >= 1
    assert checks["generate/bfloat16"]["identical_share"] >= gpu_check.BF16_GREEDY_AGREEMENT
    assert checks["choices/float32"]["max_abs_diff_nats"] <= 1e-3
    assert checks["finetune/training"]["resume_bit_identical"] is True
    assert checks["finetune/training"]["loss_last"] < checks["finetune/training"]["loss_first"]
    assert checks["worker/float32"]["nearest"] == checks["worker/float32"]["expected"]
    assert figures["peak_source"] == "measured matmul" and figures["peak_flops"] > 0
    assert "all checks pass on cpu" in capsys.readouterr().out


def test_out_folder_receives_the_figures(tiny_models, tmp_path, monkeypatch):
    import gpu_check

    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.main(["--model", str(tiny_models["gpt2"]), "--device", "cpu", "--n", "6",
                           "--only", "generate,choices"]) == 0
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert sorted(figures["checks"]) == ["choices/bfloat16", "choices/float32", "generate/bfloat16", "generate/float32"]


def test_known_cards_give_their_peak_and_unknown_ones_are_measured(monkeypatch):
    import gpu_check

    assert gpu_check.card_peak("cpu") == (None, "cpu")
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 80GB HBM3")
    assert gpu_check.card_peak("cuda") == (989e12, "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    assert gpu_check.card_peak("cuda:0") == (989e12, "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Some Future Card")
    assert gpu_check.card_peak("cuda") == (None, "Some Future Card")


# --- bf16 on the CPU, stage by stage ----------------------------------------------------------------

def test_cpu_bf16_build_and_score(tiny_models, tmp_path):
    """`build` and `score` with --dtype bfloat16 on the CPU: the run records bf16, its encodings are
    within the bf16 tolerance of an fp32 build of the same rows, and scoring in bf16 completes with
    every test row scored."""
    import gpu_check
    from conftest import dolly_rows, write_jsonl
    from interfaces.cli import main
    from llm_maps.runfolder import Run

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(20))
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main(["build", "--model", str(tiny_models["gpt_neox"]), "--data", str(data), "--out", str(out),
                     "--template", "dolly", "--projection", "pca", "--k", "3", "--dtype", dtype, "--device", "cpu",
                     "--no-progress"]) == 0
        assert main(["score", str(out), "--max-new-tokens", "4", "--dtype", dtype, "--no-progress"]) == 0
        runs[dtype] = Run(out)
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    assert bf16.manifest["dtype"] == "bfloat16" and fp32.manifest["dtype"] == "float32"
    assert bf16.manifest["scoring"]["generation"]["dtype"] == "bfloat16"
    err = gpu_check.rel_errors(bf16.encodings(), fp32.encodings())
    assert 0 < err.max() <= gpu_check.BF16_TOLERANCE["encode"]
    test = bf16.examples[bf16.examples["split"] == "test"]
    assert len(test) > 0 and test["score"].notna().all()


def test_cpu_bf16_generation_batched_equals_one_at_a_time(tiny_models):
    from pipelines.generate import generate
    from pipelines.models import load_model

    loaded = load_model(str(tiny_models["llama"]), device="cpu", dtype="bfloat16")
    assert str(next(loaded.model.parameters()).dtype) == "torch.bfloat16"
    prompts = ["The sea and the wind", "Question 3: what", "a", "Tell a long story about the moon and the sun"]
    batched = generate(loaded, prompts, max_new_tokens=12)
    single = [generate(loaded, [p], max_new_tokens=12)[0] for p in prompts]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert all(len(g.token_ids) > 0 for g in batched)


def test_cpu_bf16_multiple_choice_equals_a_full_forward_per_choice(tiny_models):
    import torch

    from pipelines.generate import choice_loglikelihoods_batch, choice_tokens
    from pipelines.models import load_model

    loaded = load_model(str(tiny_models["gpt2"]), device="cpu", dtype="bfloat16")
    prompts, choices = ["Is the sky blue?", "Pick one:"], [["yes", "no"], ["red", "green", "a blue one"]]
    got = choice_loglikelihoods_batch(loaded, prompts, choices)
    for (ctx_ids, options), rows in zip(choice_tokens(loaded.tokenizer, prompts, choices), got):
        for ids, row in zip(options, rows):
            with torch.inference_mode():
                logits = loaded.model(input_ids=torch.tensor([list(ctx_ids) + list(ids)])).logits.float()
            logp = torch.log_softmax(logits, dim=-1)[0]
            expected = sum(float(logp[len(ctx_ids) + j - 1, t]) for j, t in enumerate(ids))
            assert row["logprob"] == pytest.approx(expected, abs=1e-3)


def test_a_cuda_device_this_machine_lacks_is_a_one_line_error(tiny_models, tmp_path, capsys):
    import torch

    from interfaces.cli import main
    from pipelines.models import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from conftest import dolly_rows, write_jsonl

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(8))
    code = main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(tmp_path / "r"),
                 "--device", "cuda", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == ("llm-maps build: error: --device cuda: CUDA is not available on this machine "
                                     "(use --device cpu or auto)")
    assert not (tmp_path / "r").exists()
    with pytest.raises(Exception, match="--device tpu: unknown device"):
        resolve_device("tpu")
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
