"""The generator: batched greedy equals one-at-a-time, logprobs are the model's, stop strings cut."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import ARCHS
from pipelines.generate import choice_loglikelihoods, choice_loglikelihoods_batch, generate
from pipelines.models import load_model

PROMPTS = ["What is 2 + 3?", "Write a short poem about the sea, the wind and the light.", "Hi",
           "Classify the sentiment of this review: the film was wonderful."]


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_greedy_equals_single_and_hf_generate(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    batched = generate(loaded, PROMPTS, max_new_tokens=8, top_alternatives=3)
    for prompt, res in zip(PROMPTS, batched):
        single = generate(loaded, [prompt], max_new_tokens=8)[0]
        assert res.token_ids == single.token_ids
        np.testing.assert_allclose(res.logprobs, single.logprobs, atol=1e-4)
        ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]])
        hf = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                   pad_token_id=loaded.tokenizer.eos_token_id)
        hf_new = hf[0, ids.shape[1]:].tolist()
        eos = loaded.tokenizer.eos_token_id
        hf_new = hf_new[: hf_new.index(eos)] if eos in hf_new else hf_new
        assert res.token_ids == hf_new
        # each logprob is log softmax of the model's logits for that token
        with torch.no_grad():
            full = torch.tensor([ids[0].tolist() + res.token_ids])
            logits = loaded.model(full).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        start = ids.shape[1]
        expected = [float(lp[start - 1 + j, t]) for j, t in enumerate(res.token_ids)]
        np.testing.assert_allclose(res.logprobs, expected, atol=1e-4)
        for t in res.tokens:
            assert len(t.top) == 3 and t.top[0][1] >= t.logprob - 1e-6  # greedy: the chosen one is the top


def test_sampling_is_seeded_and_hidden_states_trace_the_path(tiny_models):
    loaded = load_model(str(tiny_models["llama"]))
    a = generate(loaded, PROMPTS[:2], max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    b = generate(loaded, PROMPTS[:2], max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    streamed = []
    res = generate(loaded, PROMPTS[:1], max_new_tokens=5, hidden_layer=3,
                   on_token=lambda r, t, h: streamed.append((r, t.id, h)))[0]
    assert [s[1] for s in streamed] == res.token_ids
    assert len(res.hidden) == len(res.tokens)
    # the state of generated token j = last-position state of prompt + tokens[:j+1] run alone
    ids = loaded.tokenizer(PROMPTS[0])["input_ids"]
    for j, h in enumerate(res.hidden):
        with torch.no_grad():
            ref = loaded.model(torch.tensor([ids + res.token_ids[: j + 1]]),
                               output_hidden_states=True).hidden_states[3][0, -1].numpy()
        np.testing.assert_allclose(h, ref, rtol=1e-3, atol=1e-4)


def test_stop_strings_cut_output_and_tokens(tiny_models):
    loaded = load_model(str(tiny_models["gpt2"]))
    free = generate(loaded, ["Hi"], max_new_tokens=12)[0]
    assert len(free.tokens) >= 3
    stop = loaded.tokenizer.decode(free.token_ids[2:4])
    cut = generate(loaded, ["Hi"], max_new_tokens=12, stop_strings=[stop])[0]
    assert cut.stop_reason == "stop_string"
    assert stop not in cut.text
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)] and len(cut.token_ids) <= 2


@pytest.mark.parametrize("arch", ARCHS)
def test_choice_loglikelihoods_equal_full_sequence_scores(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    prompt = "Classify the sentiment of this review: the film was wonderful.\nAnswer:"
    choices = [" positive", " negative", " it was a film about the sea"]
    res = choice_loglikelihoods(loaded, prompt, choices)
    for r, choice in zip(res, choices):
        ctx = loaded.tokenizer(prompt)["input_ids"]
        whole = loaded.tokenizer(prompt + choice)["input_ids"]
        cont = whole[len(ctx):]
        with torch.no_grad():
            lp = torch.log_softmax(loaded.model(torch.tensor([whole])).logits[0].float(), -1)
        expected = sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert r["logprob"] == pytest.approx(expected, abs=1e-3)
        assert r["n_tokens"] == len(cont) and math.isfinite(r["logprob"])


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_choices_equal_one_example_at_a_time(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    prompts = ["Is the sea wet?\nAnswer:", "Classify the sentiment of this long review: the film was wonderful "
               "and moving and the light on the water was calm.\nAnswer:", "Hi"]
    choices = [[" yes", " no"], [" positive", " negative", " it was about the sea and the wind"], [" a"]]
    batched = choice_loglikelihoods_batch(loaded, prompts, choices)
    for p, c, res in zip(prompts, choices, batched):
        single = choice_loglikelihoods(loaded, p, c)
        assert [r["choice"] for r in res] == c
        np.testing.assert_allclose([r["logprob"] for r in res], [r["logprob"] for r in single], atol=2e-4)
        assert [r["greedy"] for r in res] == [r["greedy"] for r in single]
