"""Encoding exactness: batched, left-padded rows equal unbatched forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ARCHS
from pipelines.encode import (default_layers, encode_to_folder, normalize_layers, plan_batches,
                              tokenize_prompts)
from pipelines.models import load_model
from llm_maps.errors import LLMMapsError

PROMPTS = [
    "What is 2 + 3?",
    "Classify the sentiment of this review: the film was wonderful and moving, and the sea was calm.",
    "Hi",
    "Summarize the paragraph about the history of the printing press in one sentence, please.",
    "Write a short poem about the sea.",
    "Extract the names: Alice met Bob in Paris. " * 6,
    "a",
]


def reference_states(loaded, prompt: str, layers, *, add_eos=False, max_length=None):
    """The contract's definition: the prompt alone, unbatched, no padding, CausalLM forward."""
    ids = loaded.tokenizer(prompt)["input_ids"]
    if add_eos:
        ids = ids + [loaded.tokenizer.eos_token_id]
    if max_length is not None:
        ids = ids[-max_length:]
    with torch.no_grad():
        out = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return {k: out.hidden_states[k][0, -1].float().numpy() for k in layers}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("add_eos", [False, True])
def test_batched_rows_equal_unbatched_forward(tiny_models, tmp_path, arch, add_eos):
    loaded = load_model(str(tiny_models[arch]))
    assert loaded.tokenizer.pad_token is None
    layers = [0, 1, 3]
    # tiny token budget: several batches, each mixing lengths so left padding is exercised
    res = encode_to_folder(loaded, PROMPTS, tmp_path, layers=layers, add_eos=add_eos,
                           batch_tokens=120, max_batch=4, progress=False)
    assert res.layers == layers
    for k in layers:
        enc = np.load(tmp_path / "encodings" / f"layer_{k}.npy")
        assert enc.dtype == np.float16 and enc.shape == (len(PROMPTS), 32)
        for i, prompt in enumerate(PROMPTS):
            ref = reference_states(loaded, prompt, [k], add_eos=add_eos)[k]
            # fp16 storage: compare against the fp16-rounded reference, rel. error <= 1e-3
            ref16 = ref.astype(np.float16).astype(np.float32)
            rel = np.linalg.norm(enc[i].astype(np.float32) - ref16) / np.linalg.norm(ref16)
            assert rel <= 1e-3, (arch, k, i, rel)


def test_truncation_keeps_last_tokens(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models["llama"]))
    long_prompt = "Extract the names: Alice met Bob in Paris. " * 12
    ids, truncated = tokenize_prompts(loaded.tokenizer, [long_prompt, "Hi"], add_eos=True, max_length=16)
    full = loaded.tokenizer(long_prompt)["input_ids"] + [loaded.tokenizer.eos_token_id]
    assert ids[0] == full[-16:] and ids[0][-1] == loaded.tokenizer.eos_token_id
    assert truncated.tolist() == [True, False]
    res = encode_to_folder(loaded, [long_prompt, "Hi"], tmp_path, layers=[3], add_eos=True,
                           max_length=16, progress=False)
    assert res.n_tokens.tolist()[0] == 16 and res.truncated.tolist() == [True, False]
    enc = np.load(tmp_path / "encodings" / "layer_3.npy")
    ref = reference_states(loaded, long_prompt, [3], add_eos=True, max_length=16)[3]
    np.testing.assert_allclose(enc[0].astype(np.float32), ref, rtol=2e-3, atol=2e-3)


def test_max_length_beyond_model_positions_is_rejected(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models["gpt2"]))
    with pytest.raises(LLMMapsError, match="maximum positions"):
        encode_to_folder(loaded, PROMPTS, tmp_path, layers=[1], max_length=10_000, progress=False)


def test_resume_after_interruption_continues_where_it_stopped(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models["gpt_neox"]))
    prompts = PROMPTS * 3
    full = tmp_path / "full"
    encode_to_folder(loaded, prompts, full, layers=[2, 3], batch_tokens=60, max_batch=2, progress=False)

    part = tmp_path / "part"
    seen: list[int] = []

    def stop_after_three(b, rows):
        seen.extend(rows.tolist())
        if b == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_to_folder(loaded, prompts, part, layers=[2, 3], batch_tokens=60, max_batch=2,
                         progress=False, on_batch=stop_after_three, checkpoint_seconds=1e9)
    first = set(seen)
    assert 0 < len(first) < len(prompts)
    seen.clear()
    res = encode_to_folder(loaded, prompts, part, layers=[2, 3], batch_tokens=60, max_batch=2,
                           progress=False, on_batch=lambda b, rows: seen.extend(rows.tolist()))
    # the second call only encoded what the first did not
    assert res.resumed_rows == len(first)
    assert set(seen) == set(range(len(prompts))) - first
    for k in (2, 3):
        np.testing.assert_array_equal(np.load(part / "encodings" / f"layer_{k}.npy"),
                                      np.load(full / "encodings" / f"layer_{k}.npy"))
    assert not (part / "encodings" / ".done.npy").exists()


def test_plan_batches_sorted_and_within_budget():
    lengths = [5, 50, 7, 49, 3, 48, 20, 21]
    batches = plan_batches(lengths, batch_tokens=100, max_batch=3)
    flat = np.concatenate(batches).tolist()
    assert sorted(flat) == list(range(len(lengths)))
    assert flat == sorted(range(len(lengths)), key=lambda i: -lengths[i])
    for b in batches:
        assert len(b) <= 3 and max(lengths[i] for i in b) * len(b) <= 100
    assert [b.tolist() for b in batches] == [[1, 3], [5, 7], [6, 2, 0], [4]]


def test_layer_defaults_and_range():
    assert default_layers(30) == [8, 15, 22, 30]
    assert default_layers(3) == [1, 2, 3]
    assert normalize_layers([-1, 0, 2], 3) == [0, 2, 3]
    with pytest.raises(LLMMapsError, match="layer 7 is out of range"):
        normalize_layers([7], 3)
