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
    frame.loc[2, "reference"] = "  "
    with pytest.raises(LLMMapsError, match=r"row 2 \(id 'e2'\), field 'reference': empty completion"):
        encode_views_to_folder(loaded, frame, tmp_path, layers=[3], views=["completion"], progress=False)
    only_test = views_frame().assign(split="test")
    with pytest.raises(LLMMapsError, match="no train rows"):
        encode_views_to_folder(loaded, only_test, tmp_path, layers=[3], views=[], atlas=True, progress=False)
    assert not (tmp_path / "encodings").exists()  # nothing half-written
