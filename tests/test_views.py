"""The completion view and the token atlas: exactness against unbatched forward passes, the
atlas cap, resume, and one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ARCHS
from llm_maps.errors import LLMMapsError
from pipelines.models import load_model
from pipelines.views import atlas_sample, encode_views_to_folder, parse_views, plan_views

PROMPTS = [
    "What is 2 + 3?",
    "Classify the sentiment of this review: the film was wonderful and moving, and the sea was calm.",
    "Hi",
    "Summarize the paragraph about the history of the printing press in one sentence, please.",
    "Write a short poem about the sea.",
    "Extract the names: Alice met Bob in Paris. " * 4,
]
REFERENCES = ["5", "positive, and moving", "Hello there, how are you", "The press spread books.",
              "The sea, the wind and the light on the water.", "Alice, Bob"]


def views_frame(n_test_scored: int = 1) -> pd.DataFrame:
    """Rows 0-3 train, 4-5 test; the last ``n_test_scored`` test rows have an output and score."""
    split = ["train"] * 4 + ["test"] * 2
    output = [None] * 6
    score = [np.nan] * 6
    for r in range(6 - n_test_scored, 6):
        output[r], score[r] = "the water is calm", 0.0
    return pd.DataFrame({"example_id": [f"e{i}" for i in range(6)], "split": split, "prompt": PROMPTS,
                         "reference": REFERENCES, "output": output, "score": score})


def full_forward(loaded, ids: list[int], layer: int) -> np.ndarray:
    """The contract's definition: one sequence, unbatched, no padding, CausalLM forward: [T, H]."""
    with torch.no_grad():
        out = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer][0].float().numpy()


def rel_err(stored: np.ndarray, ref: np.ndarray) -> float:
    ref16 = ref.astype(np.float16).astype(np.float32)
    return float(np.linalg.norm(stored.astype(np.float32) - ref16) / np.linalg.norm(ref16))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("max_length", [None, 12])
def test_completion_and_atlas_rows_equal_unbatched_forward(tiny_models, tmp_path, arch, max_length):
    loaded = load_model(str(tiny_models[arch]))
    tok = loaded.tokenizer
    assert tok.pad_token is None
    frame = views_frame()
    layers = [1, 3]
    res = encode_views_to_folder(loaded, frame, tmp_path, layers=layers, views=["prompt", "completion"], atlas=True,
                                 max_length=max_length, batch_tokens=60, max_batch=3, progress=False)
    limit = max_length or 256
    eos = tok.eos_token_id
    comp = np.load(tmp_path / "encodings" / "completion" / "layer_3.npy")
    prompt = np.load(tmp_path / "encodings" / "layer_3.npy")
    atlas = np.load(tmp_path / "encodings" / "tokens" / "layer_3.npy")
    assert comp.dtype == np.float16 and comp.shape == (6, 32)
    tokens = res.plan.tokens
    assert tokens["row"].tolist() == list(range(len(tokens))) and atlas.shape == (len(tokens), 32)
    assert set(tokens["example_id"]) == {"e0", "e1", "e2", "e3"}
    assert res.plan.completion_source == ["reference"] * 5 + ["output"]
    truncated = 0
    for i in range(6):
        p = tok(PROMPTS[i])["input_ids"]
        text = "the water is calm" if i == 5 else REFERENCES[i]
        c = tok(text, add_special_tokens=False)["input_ids"]
        seq = (p + c + [eos])[-limit:]
        truncated += len(p + c + [eos]) > limit
        assert res.plan.completion_tokens[i] == len(seq)
        assert rel_err(comp[i], full_forward(loaded, seq, 3)[-1]) <= 1e-3, (arch, i)
        assert rel_err(prompt[i], full_forward(loaded, p[-limit:], 3)[-1]) <= 1e-3, (arch, i)
        if i < 4:  # the atlas: every kept reference token at its own position, teacher-forced
            whole = p + c
            seq = whole[-limit:]
            cut = len(whole) - len(seq)
            states = full_forward(loaded, seq, 3)
            mine = tokens[tokens["example_id"] == f"e{i}"]
            expected_pos = [j for j in range(len(c)) if len(p) + j - cut >= 0]
            assert mine["position"].tolist() == expected_pos
            assert mine["token_id"].tolist() == [c[j] for j in expected_pos]
            assert mine["token_text"].tolist() == [tok.decode([c[j]]) for j in expected_pos]
            for row, j in zip(mine["row"], mine["position"]):
                assert rel_err(atlas[row], states[len(p) + j - cut]) <= 1e-3, (arch, i, j)
    if max_length:
        assert truncated >= 3 and res.plan.completion_truncated.sum() == truncated
        # a reference longer than the window keeps only its last tokens
        assert tokens.loc[tokens["example_id"] == "e2", "position"].min() > 0
    else:
        assert truncated == 0
        # without truncation a train row costs one pass: prompt end, reference tokens, completion EOS
        assert len(res.plan.segments) == 6


def test_atlas_cap_is_a_deterministic_seeded_sample(tiny_models):
    loaded = load_model(str(tiny_models["gpt2"]))
    frame = views_frame()
    full = plan_views(loaded.tokenizer, frame, views=[], atlas=True, max_length=256)
    total = len(full.tokens)
    assert full.atlas["sampled"] is False and full.atlas["tokens"] == total
    a = plan_views(loaded.tokenizer, frame, views=[], atlas=True, max_length=256, atlas_max_tokens=total - 3, seed=7)
    b = plan_views(loaded.tokenizer, frame, views=[], atlas=True, max_length=256, atlas_max_tokens=total - 3, seed=7)
    pd.testing.assert_frame_equal(a.tokens, b.tokens)
    assert a.atlas["sampled"] is True and a.atlas["tokens"] == len(a.tokens) <= total - 3
    assert a.atlas["examples"] == a.tokens["example_id"].nunique() < 4
    # the rule: a seeded permutation of the train rows, each taken while the total fits
    n_tokens = np.array([4, 10, 3, 7, 0, 0])
    rows, sampled = atlas_sample(n_tokens, np.arange(4), max_tokens=12, seed=1)
    order = np.random.default_rng(1).permutation(np.arange(4))
    used, expected = 0, []
    for r in order:
        if used + n_tokens[r] <= 12:
            expected.append(r)
            used += n_tokens[r]
    assert sampled and rows.tolist() == sorted(expected) and n_tokens[rows].sum() <= 12
    assert atlas_sample(n_tokens, np.arange(4), max_tokens=24, seed=1)[1] is False


def test_resume_after_interruption_is_byte_identical(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models["llama"]))
    frame = pd.concat([views_frame()] * 3, ignore_index=True)
    frame["example_id"] = [f"e{i}" for i in range(len(frame))]
    kw = dict(layers=[2, 3], views=["prompt", "completion"], atlas=True, batch_tokens=60, max_batch=2, progress=False)
    encode_views_to_folder(loaded, frame, tmp_path / "full", **kw)

    def stop(b, rows):
        if b == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_views_to_folder(loaded, frame, tmp_path / "part", on_batch=stop, checkpoint_seconds=1e9, **kw)
    res = encode_views_to_folder(loaded, frame, tmp_path / "part", **kw)
    assert 0 < res.resumed_segments < len(res.plan.segments)
    for sub in ("", "completion/", "tokens/"):
        for k in (2, 3):
            a = (tmp_path / "full" / "encodings" / f"{sub}layer_{k}.npy").read_bytes()
            assert a == (tmp_path / "part" / "encodings" / f"{sub}layer_{k}.npy").read_bytes()
    assert not (tmp_path / "part" / "encodings" / ".views-done.npy").exists()


def test_bad_input_is_a_one_line_error(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models["gpt_neox"]))
    with pytest.raises(LLMMapsError, match="unknown view 'answer'"):
        parse_views("prompt,answer")
    frame = views_frame()
    for missing in (None, np.nan):  # null: the row has no reference (unlike '', an empty one)
        frame["reference"] = frame["reference"].astype(object)
        frame.loc[2, "reference"] = missing
        with pytest.raises(LLMMapsError, match=r"row 2 \(id 'e2'\), field 'reference': null, no completion"):
            encode_views_to_folder(loaded, frame, tmp_path, layers=[3], views=["completion"], progress=False)
    only_test = views_frame().assign(split="test")
    with pytest.raises(LLMMapsError, match="no train rows"):
        encode_views_to_folder(loaded, only_test, tmp_path, layers=[3], views=[], atlas=True, progress=False)
    assert not (tmp_path / "encodings").exists()  # nothing half-written


def test_build_with_views_and_atlas_matches_adding_them_later(tiny_models, tmp_path):
    """`build --views prompt,completion --token-atlas` writes the files, columns and manifest entries;
    `encode RUN --view completion` and `atlas RUN` on a prompt-only run give the same encodings."""
    from conftest import dolly_rows, write_jsonl
    from interfaces.cli import main
    from llm_maps.runfolder import Run

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(24))
    model = str(tiny_models["gpt_neox"])
    common = ["--model", model, "--data", str(data), "--template", "dolly", "--projection", "pca", "--k", "3",
              "--no-progress"]
    both = tmp_path / "both"
    assert main(["build", *common, "--out", str(both), "--views", "prompt,completion", "--token-atlas"]) == 0
    run = Run(both)
    m, ex = run.manifest, run.examples
    assert m["views"] == ["prompt", "completion"]
    assert m["view_settings"]["completion"]["default_layer"] == m["default_layer"]
    assert m["token_atlas"]["layers"] == [m["default_layer"]] and m["token_atlas"]["sampled"] is False
    for col in ("completion_source", "x_completion", "dist_to_train_completion", "nn_train_ids_completion",
                "x_tokens", "y_tokens"):
        assert ex[col].notna().all(), col
    assert set(ex["completion_source"]) == {"reference"}
    tokens = pd.read_parquet(both / "tokens.parquet")
    assert list(tokens.columns[:5]) == ["row", "example_id", "position", "token_id", "token_text"]
    assert tokens["example_id"].isin(ex.loc[ex["split"] == "train", "example_id"]).all()
    atlas = np.load(both / "encodings" / "tokens" / f"layer_{m['default_layer']}.npy")
    assert atlas.shape[0] == len(tokens) == m["token_atlas"]["tokens"]

    plain = tmp_path / "plain"
    assert main(["build", *common, "--out", str(plain)]) == 0
    assert "views" not in Run(plain).manifest
    assert main(["encode", str(plain), "--view", "completion", "--no-progress"]) == 0
    assert main(["atlas", str(plain), "--no-progress"]) == 0
    later = Run(plain)
    for sub in ("", "completion/", "tokens/"):  # same states (batches differ: fp16 rounding may flip a bit)
        k = m["default_layer"]
        np.testing.assert_allclose(np.load(plain / "encodings" / f"{sub}layer_{k}.npy").astype(np.float32),
                                   np.load(both / "encodings" / f"{sub}layer_{k}.npy").astype(np.float32),
                                   rtol=2e-3, atol=1e-4)
    pd.testing.assert_frame_equal(pd.read_parquet(plain / "tokens.parquet"), tokens, rtol=1e-3)
    np.testing.assert_allclose(later.examples["dist_to_train_completion"], ex["dist_to_train_completion"],
                               rtol=0.02, atol=1e-6)
    assert later.manifest["views"] == ["prompt", "completion"] and "token_atlas" in later.manifest
    assert not (plain / ".extras.partial").exists()


def test_cli_errors_are_one_line(tiny_models, tmp_path, capsys):
    from conftest import dolly_rows, write_jsonl
    from interfaces.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(12))
    out = tmp_path / "run"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(out),
                 "--views", "prompt,answer", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "llm-maps build: error: --views: unknown view 'answer' (known: prompt, completion)"
    assert not out.exists()
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(out),
                 "--projection", "pca", "--no-progress", "--test-size", "0.5"]) == 0
    frame = pd.read_parquet(out / "examples.parquet")
    frame["split"] = "test"
    frame.to_parquet(out / "examples.parquet")
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    assert main(["atlas", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no train rows" in err
    assert main(["encode", str(out), "--view", "summary", "--no-progress"]) == 2
    assert "unknown view 'summary'" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing half-written


def test_an_empty_output_is_the_models_own_empty_completion(tiny_models, tmp_path):
    """A scored test row whose output is empty is encoded as prompt + EOS (the model said nothing)."""
    loaded = load_model(str(tiny_models["gpt2"]))
    frame = views_frame()
    frame.loc[5, "output"] = ""
    res = encode_views_to_folder(loaded, frame, tmp_path, layers=[3], views=["completion"], progress=False)
    assert res.plan.completion_source[5] == "output"
    ids = loaded.tokenizer(PROMPTS[5])["input_ids"] + [loaded.tokenizer.eos_token_id]
    comp = np.load(tmp_path / "encodings" / "completion" / "layer_3.npy")
    assert rel_err(comp[5], full_forward(loaded, ids, 3)[-1]) <= 1e-3


def test_completion_model_is_any_hidden_state_model_pooled_at_the_last_token(tiny_models, tmp_path):
    """--completion-model: a sequence-classification (reward) model encodes the completion view,
    at its last layers, pooled at the last token (its tokenizer's EOS), recorded in the manifest."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from conftest import dolly_rows, write_jsonl
    from interfaces.cli import main
    from llm_maps.runfolder import Run

    reward = tmp_path / "reward"
    tok = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    torch.manual_seed(1)
    cfg = LlamaConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=48, max_position_embeddings=256, vocab_size=len(tok), num_labels=1,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.eos_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(str(reward))
    tok.save_pretrained(str(reward))
    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(16))
    run = tmp_path / "run"
    assert main(["build", "--model", str(tiny_models["gpt_neox"]), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--views", "prompt,completion",
                 "--completion-model", str(reward), "--no-progress"]) == 0
    r = Run(run)
    settings = r.manifest["view_settings"]["completion"]
    assert settings["model"] == str(reward) and settings["layers"] == [1, 2] and settings["default_layer"] == 2
    assert settings["model_info"]["architecture"] == "LlamaModel"
    enc = np.load(run / "encodings" / "completion" / "layer_2.npy")
    assert enc.shape == (16, 24)
    base = LlamaForSequenceClassification.from_pretrained(str(reward)).model
    for i in (0, 7):
        row = r.examples.iloc[i]
        ids = tok(row["prompt"])["input_ids"] + tok(row["reference"], add_special_tokens=False)["input_ids"] \
            + [tok.eos_token_id]
        with torch.no_grad():
            ref = base(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0, -1].numpy()
        assert rel_err(enc[i], ref) <= 1e-3
    assert r.examples["dist_to_train_completion"].notna().all()


def test_encoding_the_completion_view_again_after_scoring_reencodes_only_outputs(tiny_models, tmp_path, capsys):
    """After `score`, `encode RUN --view completion` encodes the scored test rows with their outputs and
    keeps the rows whose completion is still the reference, byte for byte."""
    import torch

    from conftest import dolly_rows, write_jsonl
    from interfaces.cli import main

    data = write_jsonl(tmp_path / "d.jsonl", dolly_rows(20))
    run = tmp_path / "run"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--views", "prompt,completion",
                 "--no-progress"]) == 0
    before = np.load(run / "encodings" / "completion" / "layer_3.npy")
    assert main(["score", str(run), "--max-new-tokens", "4", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["encode", str(run), "--view", "completion", "--no-progress"]) == 0
    ex = pd.read_parquet(run / "examples.parquet")
    outputs = (ex["completion_source"] == "output").to_numpy()
    assert outputs.sum() == ((ex["split"] == "test") & ex["score"].notna()).sum() > 0
    assert f"{int((~outputs).sum())} of {len(ex)} rows unchanged" in capsys.readouterr().err
    after = np.load(run / "encodings" / "completion" / "layer_3.npy")
    assert after[~outputs].tobytes() == before[~outputs].tobytes()
    loaded = load_model(str(tiny_models["gpt2"]))
    tok = loaded.tokenizer
    for i in np.flatnonzero(outputs)[:3]:
        ids = tok(ex["prompt"][i])["input_ids"] + tok(ex["output"][i], add_special_tokens=False)["input_ids"] \
            + [tok.eos_token_id]
        assert rel_err(after[i], full_forward(loaded, ids, 3)[-1]) <= 1e-3


def test_an_empty_reference_is_encoded_as_prompt_and_eos_and_counted(tiny_models, tmp_path):
    """An empty reference (Dolly's "Say nothing." rows) is a legitimate empty completion: the
    completion view encodes prompt + EOS, exactly the prompt view's state with add_eos, and the
    rows are counted and said; only a null reference (none at all) is an error."""
    loaded = load_model(str(tiny_models["llama"]))
    tok = loaded.tokenizer
    frame = views_frame()
    frame.loc[1, "reference"] = ""  # a train row
    frame.loc[4, "reference"] = ""  # an unscored test row (its completion is its reference)
    frame.loc[5, "output"] = ""  # a scored test row whose output is empty
    said = []
    res = encode_views_to_folder(loaded, frame, tmp_path / "c", layers=[1, 3], views=["prompt", "completion"],
                                 add_eos=True, batch_tokens=60, max_batch=3, progress=False, log=said.append)
    assert res.plan.completion_empty == 3
    assert res.plan.completion_source == ["reference"] * 5 + ["output"]
    assert "completion view: 3 of 6 rows have an empty completion (encoded as prompt + EOS)" in said
    comp = np.load(tmp_path / "c" / "encodings" / "completion" / "layer_3.npy")
    prompt = np.load(tmp_path / "c" / "encodings" / "layer_3.npy")
    eos = tok.eos_token_id
    for i in (1, 4, 5):
        ids = tok(PROMPTS[i])["input_ids"] + [eos]
        assert res.plan.completion_tokens[i] == len(ids)
        assert rel_err(comp[i], full_forward(loaded, ids, 3)[-1]) <= 1e-3, i
        np.testing.assert_allclose(comp[i].astype(np.float32), prompt[i].astype(np.float32), rtol=2e-3, atol=1e-3)
    for i in (0, 2, 3):  # the other rows as before
        ids = tok(PROMPTS[i])["input_ids"] + tok(REFERENCES[i], add_special_tokens=False)["input_ids"] + [eos]
        assert rel_err(comp[i], full_forward(loaded, ids, 3)[-1]) <= 1e-3, i
    assert encode_views_to_folder(loaded, views_frame(), tmp_path / "n", layers=[3], views=["completion"],
                                  progress=False, log=said.append).plan.completion_empty == 0


def test_build_views_completion_with_an_empty_reference(tiny_models, tmp_path, capsys):
    """`build --views completion` on Dolly data with an empty response builds; that row's completion
    state is the state of tokenizer(prompt) + EOS run alone, and the build says how many rows had one."""
    from conftest import dolly_rows, write_jsonl
    from interfaces.cli import main
    from llm_maps.runfolder import Run

    rows = dolly_rows(12)
    rows[3]["instruction"], rows[3]["response"] = "Say nothing.", ""
    rows[8]["response"] = ""
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(out),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--views", "completion",
                 "--token-atlas", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "completion view: 2 of 12 rows have an empty completion (encoded as prompt + EOS)" in \
        captured.out + captured.err
    run = Run(out)
    ex, m = run.examples, run.manifest
    assert m["views"] == ["prompt", "completion"]
    assert m["view_settings"]["completion"]["sources"] == {"reference": 12}
    assert m["view_settings"]["completion"]["empty_completions"] == 2
    empty = np.flatnonzero((ex["reference"] == "").to_numpy())
    assert len(empty) == 2 and "Say nothing." in ex["prompt"][empty[0]]
    assert ex["x_completion"].notna().all() and ex["dist_to_train_completion"].notna().all()
    loaded = load_model(str(tiny_models["gpt2"]))
    tok = loaded.tokenizer
    k = m["default_layer"]
    comp = np.load(out / "encodings" / "completion" / f"layer_{k}.npy")
    for i in empty:
        ids = tok(ex["prompt"][i])["input_ids"] + [tok.eos_token_id]
        assert ex["n_tokens_completion"][i] == len(ids)
        assert rel_err(comp[i], full_forward(loaded, ids, k)[-1]) <= 1e-3, i
    # the token atlas holds every token of the non-empty train references and none of the empty ones
    import pandas as pd

    tokens = pd.read_parquet(out / "tokens.parquet")
    train = ex[ex["split"] == "train"]
    expected = {eid: len(tok(ref, add_special_tokens=False)["input_ids"])
                for eid, ref in zip(train["example_id"], train["reference"])}
    assert tokens.groupby("example_id").size().to_dict() == {e: n for e, n in expected.items() if n}
    assert any(n == 0 for n in expected.values())  # an empty train reference was really there
