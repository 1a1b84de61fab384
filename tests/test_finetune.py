"""llm-maps finetune: masked loss, LoRA merge, resume, checkpoint runs, bad input (tiny models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import build_scored_run, dolly_rows, write_jsonl
from interfaces.cli import main
from llm_maps.errors import LLMMapsError


def _base_run(root: Path, model: Path, n: int = 24, test_size: float = 0.2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(root / "d.jsonl", dolly_rows(n))
    run = root / "base"
    assert main(["build", "--model", str(model), "--data", str(data), "--out", str(run), "--template", "dolly",
                 "--projection", "pca", "--k", "3", "--test-size", str(test_size), "--no-progress"]) == 0
    return run


@pytest.fixture(scope="module")
def base_runs(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ft")
    return {arch: _base_run(root / arch, path) for arch, path in tiny_models.items()}


@pytest.fixture(scope="module")
def scored_base(tiny_models, tmp_path_factory) -> Path:
    """A gpt_neox run of 24 Dolly rows, scored (3 new tokens) with falloff (2 bins)."""
    return build_scored_run(tmp_path_factory.mktemp("scored"), tiny_models["gpt_neox"], 24)


@pytest.fixture(scope="module")
def group(scored_base, tmp_path_factory) -> Path:
    """A LoRA finetune of the scored gpt_neox run: 4 steps, checkpoints at 2 and 4, each built as a run,
    scored and with falloff as the base run."""
    from pipelines.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("group") / "g"
    finetune(scored_base, out, FinetuneConfig(steps=4, save_every=2, lr=5e-3, batch_size=4,
                                                        progress=False), log=lambda m: None)
    return out


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# --------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("arch,full", [("gpt_neox", True), pytest.param("llama", True, marks=pytest.mark.slow),
                                       pytest.param("gpt2", True, marks=pytest.mark.slow), ("gpt_neox", False)])
def test_loss_falls_on_a_memorisable_set(arch, full, tiny_models, tmp_path):
    """Six examples, five per step: full tuning memorises them (the loss more than halves). LoRA
    leaves the random output head of a 32-wide model as it is, which caps how far the logits can move
    (|h| |w_out| < 1 here), so its loss falls less, but steadily."""
    from pipelines.finetune import FinetuneConfig, finetune

    base = _base_run(tmp_path, tiny_models[arch], n=6, test_size=0.0)
    out = finetune(base, tmp_path / "g", FinetuneConfig(steps=30, lr=1e-2 if full else 1e-1, full=full, batch_size=5,
                                                        save_every=30, eval_fraction=0.0, build=False, progress=False),
                   log=lambda m: None)
    curve = json.loads((out / "finetune.json").read_text())["curve"]["train"]
    assert [c["step"] for c in curve] == list(range(1, 31))
    first, last = curve[0]["loss"], curve[-1]["loss"]
    if full:
        assert last < 0.5 * first, (first, last)
    else:
        assert last < first - 0.05, (first, last)
        assert np.mean([c["loss"] for c in curve[-5:]]) < np.mean([c["loss"] for c in curve[:5]])


def test_loss_mask_excludes_prompt_tokens(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.finetune import TrainRows, batch_tensors, make_features, make_labels, summed_loss

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    prompt, ref = "### Instruction: What is 2 + 3? ### Response:", " 5 ### End"
    ids, labels = make_features(tok, prompt, ref, max_length=256)
    n_prompt = len(tok(prompt)["input_ids"])
    n_ref = len(tok(ref, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert len(ids) == n_prompt + n_ref and ids[-1] == tok.eos_token_id
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]

    def loss_of(lab: list[int]) -> float:
        data = TrainRows([ids], [lab])
        with torch.no_grad():
            total, count = summed_loss(model, *batch_tensors([0], data, tok.eos_token_id, "cpu"))
        return float(total) / count

    base = loss_of(labels)
    # the same as transformers' own loss (mean over labels != -100, shifted)
    with torch.no_grad():
        hf = float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss)
    assert base == pytest.approx(hf, rel=1e-5)
    # other ids at the prompt positions: masked away, the loss is unchanged
    other = [(t + 7) % len(tok) for t in ids[:n_prompt]] + ids[n_prompt:]
    assert loss_of(make_labels(other, n_prompt)) == base
    # another reference token: the loss changes
    changed = list(labels)
    changed[n_prompt] = (changed[n_prompt] + 7) % len(tok)
    assert loss_of(changed) != pytest.approx(base, rel=1e-6)


def test_accumulated_micro_batches_equal_one_batch(tiny_model, base_runs):
    """The step's gradient does not depend on how --batch-tokens splits it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.finetune import batch_tensors, load_train_rows, micro_batches, summed_loss

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    _, data = load_train_rows(base_runs["gpt_neox"], tok, 256)
    rows = list(range(6))
    grads = []
    for budget in (10**6, 60):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float64)
        mbs = micro_batches(rows, data, budget)
        assert (len(mbs) == 1) == (budget == 10**6)
        n_ref = sum(sum(1 for t in data.labels[r][1:] if t != -100) for r in rows)
        for mb in mbs:
            loss, _ = summed_loss(model, *batch_tensors(mb, data, tok.eos_token_id, "cpu"))
            (loss / n_ref).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- LoRA merge, resume

@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "gpt2"])
def test_merged_lora_weights_equal_base_plus_scaled_ba(arch, tiny_models, base_runs, tmp_path):
    import torch

    from pipelines.finetune import LORA_TARGETS, FinetuneConfig, finetune

    out = finetune(base_runs[arch], tmp_path / "g", FinetuneConfig(steps=3, lr=1e-2, lora_r=4, lora_alpha=12,
                                                                   batch_size=4, build=False, progress=False),
                   log=lambda m: None)
    ck = out / "checkpoints" / "step-000003"
    merged, base = _weights(ck / "model"), _weights(tiny_models[arch])
    trained = torch.load(ck / "state.pt", weights_only=False)["trainable"]
    scaling = 12 / 4  # peft: lora_alpha / r
    a_names = [n for n in trained if ".lora_A." in n]
    assert a_names and all(n.split(".lora_A.")[0].split(".")[-1] in LORA_TARGETS[arch] for n in a_names)
    changed = 0
    for a_name in a_names:
        module = a_name.split(".lora_A.")[0].removeprefix("base_model.model.")
        a, b = trained[a_name], trained[a_name.replace(".lora_A.", ".lora_B.")]
        delta = scaling * (b @ a)
        if arch == "gpt2":  # Conv1D stores the weight transposed (fan_in_fan_out)
            delta = delta.T
        expected = base[module + ".weight"] + delta
        assert torch.allclose(merged[module + ".weight"], expected, rtol=0, atol=1e-6), module
        changed += int(delta.abs().max() > 1e-4)
    assert changed == len(a_names)
    # everything else is the base model's
    lora_weights = {n.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight" for n in a_names}
    for name, value in merged.items():
        if name not in lora_weights:
            assert torch.equal(value, base[name]), name


def test_resume_equals_uninterrupted(base_runs, tmp_path, monkeypatch):
    import torch

    import pipelines.finetune as ft

    cfg = ft.FinetuneConfig(steps=4, save_every=2, lr=1e-2, batch_size=3, build=False, progress=False)
    whole = ft.finetune(base_runs["llama"], tmp_path / "whole", cfg, log=lambda m: None)

    real = ft._save_checkpoint

    def save_then_die(group, step, *args, **kwargs):
        real(group, step, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(base_runs["llama"], tmp_path / "cut", cfg, log=lambda m: None)
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step-000002"]
    assert not (tmp_path / "cut" / "finetune.json").exists()
    monkeypatch.setattr(ft, "_save_checkpoint", real)
    logs: list[str] = []
    cut = ft.finetune(base_runs["llama"], tmp_path / "cut", cfg, log=logs.append)
    assert any("resuming" in m and "step 2" in m for m in logs)

    for step in ("step-000002", "step-000004"):
        a = torch.load(whole / "checkpoints" / step / "state.pt", weights_only=False)
        b = torch.load(cut / "checkpoints" / step / "state.pt", weights_only=False)
        for name in a["trainable"]:
            assert torch.equal(a["trainable"][name], b["trainable"][name]), (step, name)
        wa, wb = _weights(whole / "checkpoints" / step / "model"), _weights(cut / "checkpoints" / step / "model")
        assert all(torch.equal(wa[n], wb[n]) for n in wa)
    ja = json.loads((whole / "finetune.json").read_text())
    jb = json.loads((cut / "finetune.json").read_text())
    assert ja["curve"] == jb["curve"]
    # resuming with other settings is refused
    with pytest.raises(LLMMapsError, match="other settings"):
        ft.finetune(base_runs["llama"], cut, ft.FinetuneConfig(steps=4, save_every=2, lr=1e-3, batch_size=3,
                                                               build=False, progress=False), log=lambda m: None)


# --------------------------------------------------------------------------- checkpoint runs

def test_checkpoint_runs_in_the_group(group, scored_base):
    import pandas as pd

    from llm_maps.runfolder import find_runs, read_manifest

    base = scored_base
    assert [p.name for p in find_runs(group)] == ["step-000000", "step-000002", "step-000004"]
    base_m = read_manifest(base)
    base_frame = pd.read_parquet(base / "examples.parquet")
    for name, step in (("step-000000", 0), ("step-000002", 2), ("step-000004", 4)):
        m = read_manifest(group / name)
        assert m["step"] == step and m["base_run"] == str(base.resolve())
        for key in ("layers", "default_layer", "max_length", "pooling", "prompt_template", "distance_metric",
                    "split_rule", "split_seed"):
            assert m[key] == base_m[key], (name, key)
        assert m["projection"]["method"] == "pca" and m["neighbours"]["k"] == 3
        frame = pd.read_parquet(group / name / "examples.parquet")
        for col in ("example_id", "split", "prompt", "reference", "domain", "task", "n_tokens"):
            assert frame[col].tolist() == base_frame[col].tolist(), (name, col)
        assert frame["dist_to_train"].notna().all()
        # scored and with falloff as the base run: same splits, metric and thresholds, same bins
        for key in ("splits", "metric", "thresholds", "mc_output"):
            assert m["scoring"][key] == base_m["scoring"][key], (name, key)
        assert m["scoring"]["scored"] == base_m["scoring"]["scored"] > 0
        fall = json.loads((group / name / "falloff.json").read_text())
        assert fall["n_bins"] == 2 and fall["split"] == "test"
    assert read_manifest(group / "step-000004")["model"] == str(
        (group / "checkpoints" / "step-000004" / "model").resolve())
    ft = json.loads((group / "finetune.json").read_text())
    assert [c["step"] for c in ft["curve"]["train"]] == [1, 2, 3, 4]
    assert [c["step"] for c in ft["curve"]["eval"]] == [0, 2, 4]
    assert ft["settings"]["mode"] == "lora" and ft["checkpoints"] == ["step-000002", "step-000004"]
    # step 0 reuses the base run's files; the base run's own manifest is untouched
    assert "step" not in read_manifest(base)
    assert (group / "step-000000" / "encodings").is_dir()
    layer = base_m["default_layer"]
    assert np.array_equal(np.load(group / "step-000000" / "encodings" / f"layer_{layer}.npy"),
                          np.load(base / "encodings" / f"layer_{layer}.npy"))


def test_checkpoint_encodings_equal_a_fresh_encode(group):
    import pandas as pd

    from llm_maps.runfolder import read_manifest
    from pipelines.encode import encode_to_folder
    from pipelines.models import load_model

    run = group / "step-000004"
    m = read_manifest(run)
    frame = pd.read_parquet(run / "examples.parquet")
    loaded = load_model(str(group / "checkpoints" / "step-000004" / "model"), device="cpu")
    fresh = group.parent / "fresh"
    encode_to_folder(loaded, frame["prompt"].tolist(), fresh, layers=m["layers"], max_length=m["max_length"],
                     progress=False)
    moved = 0
    for k in m["layers"]:
        got = np.load(run / "encodings" / f"layer_{k}.npy")
        assert np.array_equal(got, np.load(fresh / "encodings" / f"layer_{k}.npy")), k
        moved += int(not np.array_equal(got, np.load(group / "step-000000" / "encodings" / f"layer_{k}.npy")))
    assert moved >= len(m["layers"]) - 1  # layer 0 (embeddings) is not a LoRA target; the others moved


def test_checkpoint_runs_compare_with_the_base_run(group, scored_base):
    from llm_maps.comparison import compare_runs
    from llm_maps.runfolder import Run

    runs = [Run(group / n) for n in ("step-000000", "step-000002", "step-000004")]
    result = compare_runs(runs, cka="skip")
    assert result["axis"]["kind"] == "step" and result["axis"]["values"] == [0.0, 2.0, 4.0]
    assert result["n_examples"] == 24
    assert [r["base_run"] for r in result["runs"]] == [str(scored_base.resolve())] * 3
    assert result["alignment"]["procrustes_residual"][0] == pytest.approx(0.0, abs=1e-9)
    # accuracy per step on the same scored test examples, and a falloff per checkpoint
    assert len(result["falloff"]) == 3
    # the loss curve of the group, as finetune.json holds it, and its figure
    saved = json.loads((group / "finetune.json").read_text())["curve"]
    curve = result["loss_curve"]
    assert [(e["step"], e["loss"]) for e in curve["train"]] == [(e["step"], e["loss"]) for e in saved["train"]]
    assert curve["eval"] == saved["eval"] and curve["mode"] == "lora"
    from dashboard.compare_figures import loss_figure

    fig = loss_figure(curve)
    assert [list(t.x) for t in fig.data] == [[1, 2, 3, 4], [0, 2, 4]]
    # runs that are not a finetune group have none
    assert compare_runs([Run(scored_base), Run(scored_base)], cka="skip")["loss_curve"] is None
    # the base run itself (no step) matches the checkpoint runs example for example
    assert compare_runs([Run(scored_base), runs[-1]], cka="skip")["n_examples"] == 24


# --------------------------------------------------------------------------- bad input

def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_input_one_line_errors_and_no_group(base_runs, tmp_path, capsys):
    import pandas as pd

    base = base_runs["gpt_neox"]
    out = tmp_path / "g"
    assert main(["finetune", str(base), "--out", str(out), "--steps", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "llm-maps finetune: error: --steps: must be at least 1, got 0"
    assert not out.exists()

    bad_model = _copy_run(base, tmp_path / "bad_model")
    m = json.loads((bad_model / "manifest.json").read_text())
    m["model"] = str(tmp_path / "no-such-model")
    (bad_model / "manifest.json").write_text(json.dumps(m))
    assert main(["finetune", str(bad_model), "--out", str(out), "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no-such-model: model path does not exist" in err
    assert not out.exists()

    no_train = _copy_run(base, tmp_path / "no_train")
    frame = pd.read_parquet(no_train / "examples.parquet")
    frame["reference"] = ""
    frame.to_parquet(no_train / "examples.parquet")
    assert main(["finetune", str(no_train), "--out", str(out), "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"llm-maps finetune: error: {no_train / 'examples.parquet'}: no train rows with a reference "
                   "to fine-tune on")
    assert not out.exists()


def test_compare_page_draws_the_loss_curve(group):
    from dashboard.app import create_app

    runs = [group / n for n in ("step-000000", "step-000002", "step-000004")]
    app = create_app(runs, [])
    import sys

    page = sys.modules["pages.compare"]  # as Dash loaded it: importing dashboard.pages.compare would register it twice

    from llm_maps.runfolder import run_name

    with app.server.test_request_context("/compare"):  # a group's runs are served as GROUP.step-N
        tree = page.layout(runs=[run_name(r) for r in runs])

    def find(node, wanted):
        if getattr(node, "id", None) == wanted:
            return node
        children = getattr(node, "children", None)
        for child in children if isinstance(children, (list, tuple)) else [children]:
            if child is not None and not isinstance(child, (str, int, float)):
                hit = find(child, wanted)
                if hit is not None:
                    return hit
        return None

    graph = find(tree, "compare-loss-graph")
    assert graph is not None
    saved = json.loads((group / "finetune.json").read_text())["curve"]
    assert list(graph.figure.data[0].y) == [e["loss"] for e in saved["train"]]
    assert list(graph.figure.data[1].x) == [0, 2, 4]

    # the train-tasks vs held-out-tasks table: what compare computes, as text on the page
    from llm_maps.comparison import match_runs, task_gain
    from llm_maps.runfolder import Run

    def texts(node):
        if isinstance(node, (str, int, float)):
            yield str(node)
            return
        children = getattr(node, "children", None)
        for child in children if isinstance(children, (list, tuple)) else [children]:
            if child is not None:
                yield from texts(child)

    gain = task_gain(match_runs([Run(r) for r in runs]), [0, 2, 4])
    shown = list(texts(find(tree, "compare-task-gain")))
    assert gain["verdict"] in shown and gain["classes"]["train tasks"]["verdict"] in shown
    first = gain["classes"]["train tasks"]["runs"][0]
    assert f"{first['value']:.3f} [{first['low']:.3f}, {first['high']:.3f}]" in shown


# --------------------------------------------------------------------------- checkpoint runs: views, atlas, findings

@pytest.fixture(scope="module")
def views_base(tiny_models, tmp_path_factory) -> Path:
    """A gpt_neox run with the completion view and the token atlas, scored, its test rows' completion
    view redone with their outputs (as the demo does), with falloff and findings."""
    root = tmp_path_factory.mktemp("vbase")
    data = write_jsonl(root / "d.jsonl", dolly_rows(40))
    run = root / "base"
    assert main(["build", "--model", str(tiny_models["gpt_neox"]), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--views", "prompt,completion",
                 "--token-atlas", "--no-progress"]) == 0
    assert main(["score", str(run), "--max-new-tokens", "3", "--no-progress"]) == 0
    assert main(["encode", str(run), "--view", "completion", "--no-progress"]) == 0
    assert main(["falloff", str(run), "--bins", "2"]) == 0
    assert main(["findings", str(run), "--bootstrap", "200", "--no-robustness", "--no-progress"]) == 0
    return run


def test_checkpoint_runs_keep_the_base_runs_views_atlas_and_findings(views_base, tmp_path):
    import pandas as pd

    from llm_maps.runfolder import add_note, read_manifest
    from pipelines.finetune import FinetuneConfig, finetune

    add_note(views_base, "a caveat about the base run")  # (the demo's: its model is tiny)
    group = finetune(views_base, tmp_path / "g", FinetuneConfig(steps=2, save_every=2, lr=5e-3, batch_size=4,
                                                                 progress=False), log=lambda m: None)
    run = group / "step-000002"
    m, base_m = read_manifest(run), read_manifest(views_base)
    assert m["notes"] == ["a caveat about the base run"]  # the checkpoints carry the base run's caveats
    assert m["views"] == base_m["views"] == ["prompt", "completion"] and m["token_atlas"]
    assert (run / "tokens.parquet").exists() and (run / "encodings" / "tokens").is_dir()
    frame = pd.read_parquet(run / "examples.parquet")
    base = pd.read_parquet(views_base / "examples.parquet")
    # the scored test rows' completion view is their own outputs (the checkpoint's), as in the base run
    scored = (frame["split"] == "test") & frame["score"].notna()
    assert scored.any() and (frame.loc[scored, "completion_source"] == "output").all()
    assert (frame.loc[frame["split"] == "train", "completion_source"] == "reference").all()
    assert frame["x_completion"].notna().all() and frame["x_tokens"].notna().all()
    assert not np.allclose(frame["dist_to_train_completion"], base["dist_to_train_completion"])
    # the findings of the base run's variant
    got, want = (json.loads((p / "findings.json").read_text()) for p in (run, views_base))
    for key in ("layer", "metric", "view", "centred", "split"):
        assert got[key] == want[key], key
    assert got["contrast"]["a"] == want["contrast"]["a"] and got["n_test"] == want["n_test"]
    assert got["notes"][0] == "a caveat about the base run"
    assert json.loads((group / "finetune.json").read_text())["runs"] == {"views": ["prompt", "completion"],
                                                                         "token_atlas": True}


def test_checkpoint_runs_can_leave_out_the_completion_view_and_the_atlas(views_base, tmp_path):
    """The demo's lighter checkpoint runs: the prompt view only; no base-model column is carried over."""
    import pandas as pd

    from llm_maps.runfolder import Run, read_manifest
    from pipelines.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(steps=2, save_every=2, lr=5e-3, batch_size=4, progress=False, views="prompt",
                         token_atlas=False)
    group = finetune(views_base, tmp_path / "g", cfg, log=lambda m: None)
    run = group / "step-000002"
    m = read_manifest(run)
    assert m.get("views", ["prompt"]) == ["prompt"] and not m.get("token_atlas")
    assert not (run / "tokens.parquet").exists() and not (run / "encodings" / "completion").exists()
    frame = pd.read_parquet(run / "examples.parquet")
    stale = [c for c in frame.columns if c.endswith("_completion") or c in ("x_tokens", "y_tokens", "completion_source")]
    assert stale == []
    assert Run(run).examples["dist_to_train"].notna().all()
    assert json.loads((group / "finetune.json").read_text())["runs"] == {"views": ["prompt"], "token_atlas": False}
    # step 0 is the base run, views and atlas included
    assert read_manifest(group / "step-000000")["views"] == ["prompt", "completion"]


def test_demo_finetune_tunes_the_demo_run_and_prints_train_vs_held_out_tasks(tiny_models, tmp_path, capsys,
                                                                           monkeypatch):
    """`llm-maps demo --finetune` on a stand-in demo run (tiny model; one task with no train rows):
    scored as the demo is, tuned, checkpoint runs of the prompt view only, and the table of train vs
    held-out tasks that compare computes on the group."""
    from llm_maps.comparison import accuracy_curves, format_task_gain, match_runs, task_gain
    from llm_maps.runfolder import Run, find_runs, read_manifest
    from interfaces import demo

    rows = dolly_rows(40)
    for i, r in enumerate(rows):  # creative_writing: test only (a held-out task); the others 3:1
        r["split"] = "test" if r["category"] == "creative_writing" or i % 5 == 1 else "train"
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    base = tmp_path / "demo"
    assert main(["build", "--model", str(tiny_models["gpt_neox"]), "--data", str(data), "--out", str(base),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--split-by", "source",
                 "--no-progress"]) == 0
    monkeypatch.setattr(demo, "score_demo_conditions", lambda out, progress=True: None)  # not this test's subject
    monkeypatch.setitem(demo.DEMO_SCORING, "max_new_tokens", 3)
    capsys.readouterr()
    group = tmp_path / "demo-ft"
    assert demo.run_demo(base, progress=False, finetune=True, finetune_steps=2, group=group) == 0
    out = capsys.readouterr().out
    assert [p.name for p in find_runs(group)] == ["step-000000", "step-000001", "step-000002"]
    ft = json.loads((group / "finetune.json").read_text())
    assert ft["settings"]["steps"] == 2 and ft["settings"]["save_every"] == 1 and ft["settings"]["lr"] == 5e-4
    assert ft["runs"] == {"views": ["prompt"], "token_atlas": False}
    assert read_manifest(group / "step-000002")["scoring"]["scored"] == read_manifest(base)["scoring"]["scored"] > 0
    runs = [Run(group / n) for n in ("step-000000", "step-000001", "step-000002")]
    gain = task_gain(match_runs(runs), [0, 1, 2])
    assert gain["classes"]["held-out tasks"]["tasks"] == ["creative_writing"]
    assert gain["verdict"].endswith("not supported: fewer than 5 tasks in a class")
    assert format_task_gain(gain) in out
    domains = accuracy_curves(match_runs(runs), [0, 1, 2])["domains"]
    assert all(f"  {e['verdict']}" in out for e in domains.values()) and len(domains) == 2
    # run again: nothing is trained or built twice
    stamp = (group / "step-000002" / "manifest.json").stat().st_mtime_ns
    assert demo.run_demo(base, progress=False, finetune=True, finetune_steps=2, group=group) == 0
    assert (group / "step-000002" / "manifest.json").stat().st_mtime_ns == stamp
    assert "trained to step 2 already" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["demo", "--out", str(base), "--finetune-steps", "0", "--no-serve"]) == 2
    assert capsys.readouterr().err.strip() == "llm-maps demo: error: --finetune-steps: must be at least 1, got 0"


def test_checkpoints_of_a_gguf_model_merge_into_its_converted_weights(base_runs, tmp_path, monkeypatch):
    """A GGUF model (the demo's) is loaded through its converted safetensors folder; the merged
    checkpoint must start from that folder, since transformers cannot read the .gguf path itself."""
    import pipelines.models as models
    from pipelines.finetune import FinetuneConfig, finetune

    base = _copy_run(base_runs["llama"], tmp_path / "base")
    m = json.loads((base / "manifest.json").read_text())
    folder = m["model"]
    m["model"] = str(tmp_path / "shipped" / "model.Q4_1.gguf")  # what a GGUF run's manifest holds
    (base / "manifest.json").write_text(json.dumps(m))
    real = models.load_model

    def load_gguf(spec, **kw):  # stands in for the GGUF conversion (tested in test_realmodel.py)
        assert spec == m["model"]
        loaded = real(folder, **kw)
        loaded.info["converted_to"] = folder
        return loaded

    monkeypatch.setattr(models, "load_model", load_gguf)
    group = finetune(base, tmp_path / "g", FinetuneConfig(steps=1, lr=5e-3, batch_size=4, build=False,
                                                          progress=False), log=lambda m: None)
    merged = _weights(group / "checkpoints" / "step-000001" / "model")
    start = _weights(Path(folder))
    assert merged.keys() == start.keys()
    assert any(not np.array_equal(merged[k].numpy(), start[k].numpy()) for k in merged)
