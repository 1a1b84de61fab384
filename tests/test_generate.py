"""The generator: continuous batching equals HF generate one prompt at a time (rows finishing at
different steps by EOS, stop strings and their own limits), logprobs are the model's, sampling is
seeded and follows the model's distribution, streaming sees every token in order; multiple-choice
log-likelihoods equal a full-sequence forward per choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import ARCHS
from pipelines.generate import (_kv_bytes_per_token, _uniform, choice_loglikelihoods, choice_loglikelihoods_batch,
                                generate, plan_slots)
from pipelines.models import load_model

PROMPTS = ["What is 2 + 3?", "Write a short poem about the sea, the wind and the light.", "Hi",
           "Classify the sentiment of this review: the film was wonderful.",
           "Summarize the paragraph about the history of the printing press in one sentence.",
           "Answer step by step: if a train leaves at 3pm", "The quick brown fox"]


def hf_greedy(loaded, prompt: str, max_new_tokens: int, eos: int | None = None) -> list[int]:
    """Reference: transformers' own generate on the prompt alone (no padding), cut at EOS."""
    ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]])
    eos = loaded.tokenizer.eos_token_id if eos is None else eos
    hf = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               do_sample=False, eos_token_id=eos, pad_token_id=eos)
    new = hf[0, ids.shape[1]:].tolist()
    return new[: new.index(eos)] if eos in new else new


def full_logprobs(loaded, prompt: str, token_ids: list[int]) -> list[float]:
    ids = loaded.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(loaded.model(torch.tensor([ids + token_ids])).logits[0].float(), -1)
    return [float(lp[len(ids) - 1 + j, t]) for j, t in enumerate(token_ids)]


@pytest.mark.parametrize("arch", ARCHS)
def test_continuous_batching_equals_hf_generate_with_rows_finishing_apart(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    # 2 slots for 7 prompts of 40 tokens: slots refill from the queue and the cache window shifts
    stats_: dict = {}
    long = generate(loaded, PROMPTS, max_new_tokens=40, batch_size=2, stats=stats_)
    assert stats_["slots"] == 2 and stats_["prefills"] >= 4 and stats_["shifts"] >= 1, stats_
    for prompt, r in zip(PROMPTS, long):
        assert r.token_ids == hf_greedy(loaded, prompt, 40)
    # a frequent greedy token as EOS, so that rows end by EOS at different steps (and some never do)
    limits = [9, 3, 12, 6, 1, 10, 7]
    free = generate(loaded, PROMPTS, max_new_tokens=12)
    counts = np.bincount(np.concatenate([r.token_ids for r in free]))
    loaded.tokenizer.eos_token = loaded.tokenizer.convert_ids_to_tokens(int(np.argsort(counts)[-2]))
    eos = loaded.tokenizer.eos_token_id
    res = generate(loaded, PROMPTS, max_new_tokens=limits, top_alternatives=3, batch_size=2)
    reasons = set()
    for prompt, limit, r in zip(PROMPTS, limits, res):
        expected = hf_greedy(loaded, prompt, limit, eos)
        assert r.token_ids == expected
        assert r.stop_reason == ("eos" if len(expected) < limit else "length")
        reasons.add(r.stop_reason)
        np.testing.assert_allclose(r.logprobs, full_logprobs(loaded, prompt, r.token_ids), atol=1e-4)
        for t in r.tokens:
            assert len(t.top) == 3 and t.top[0][1] >= t.logprob - 1e-6  # greedy: the chosen one is the top
            assert t.text == loaded.tokenizer.decode([t.id])
        assert r.text == loaded.tokenizer.decode(r.token_ids, skip_special_tokens=True).strip()
    assert reasons == {"eos", "length"}
    # the same outputs whatever the number of slots (one at a time, all at once)
    for batch_size in (1, None):
        again = generate(loaded, PROMPTS, max_new_tokens=limits, batch_size=batch_size)
        assert [r.token_ids for r in again] == [r.token_ids for r in res]
        for a, b in zip(again, res):
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_common_prompt_prefix_is_computed_once_with_the_same_outputs(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    prompts = ["Below is an instruction that describes a task. " + p for p in PROMPTS]
    shared_stats: dict = {}
    res = generate(loaded, prompts, max_new_tokens=[8, 3, 10, 5, 6, 9, 4], top_alternatives=2, batch_size=3,
                   stats=shared_stats)
    common = loaded.tokenizer(prompts[0])["input_ids"]
    for p in prompts[1:]:
        ids = loaded.tokenizer(p)["input_ids"]
        common = common[: next((j for j, (a, b) in enumerate(zip(common, ids)) if a != b), min(len(common), len(ids)))]
    assert shared_stats["shared_prefix"] == len(common) >= 8
    plain = generate(loaded, prompts, max_new_tokens=[8, 3, 10, 5, 6, 9, 4], batch_size=3, share_prefix=False)
    for prompt, limit, r, q in zip(prompts, [8, 3, 10, 5, 6, 9, 4], res, plain):
        assert r.token_ids == q.token_ids == hf_greedy(loaded, prompt, limit)
        np.testing.assert_allclose(r.logprobs, full_logprobs(loaded, prompt, r.token_ids), atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_stop_strings_cut_output_and_tokens(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    free = generate(loaded, PROMPTS, max_new_tokens=12)
    stop = loaded.tokenizer.decode(free[2].token_ids[2:4])  # appears in row 2 after 2 tokens
    cut = generate(loaded, PROMPTS, max_new_tokens=12, stop_strings=[stop], batch_size=3)
    for f, c in zip(free, cut):
        text = loaded.tokenizer.decode(f.token_ids, skip_special_tokens=False)
        if stop in text:
            assert c.stop_reason == "stop_string" and stop not in c.text
            # exactly the tokens that end before the stop string starts
            keep = [j for j in range(len(f.token_ids) + 1)
                    if len(loaded.tokenizer.decode(f.token_ids[:j], skip_special_tokens=False)) <= text.index(stop)]
            assert c.token_ids == f.token_ids[: max(keep)]
        else:
            assert c.token_ids == f.token_ids and c.stop_reason == f.stop_reason
    assert cut[2].stop_reason == "stop_string" and len(cut[2].token_ids) <= 2


def test_sampling_is_seeded_per_row_whatever_the_batch(tiny_models):
    loaded = load_model(str(tiny_models["llama"]))
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    a = generate(loaded, PROMPTS, **kw)
    b = generate(loaded, PROMPTS, batch_size=2, **kw)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    # a row's samples depend on (seed, key, step) only: alone with its key, it samples the same
    alone = generate(loaded, PROMPTS[3:4], keys=[3], **kw)[0]
    assert alone.token_ids == a[3].token_ids
    other = generate(loaded, PROMPTS, **{**kw, "seed": 8})
    assert [r.token_ids for r in other] != [r.token_ids for r in a]
    np.testing.assert_allclose(a[0].logprobs, full_logprobs(loaded, PROMPTS[0], a[0].token_ids), atol=1e-4)


def test_sampling_follows_the_models_distribution(tiny_models):
    """First tokens of 3000 rows (keys 0..2999) against softmax(logits / T), chi-square; top-p never
    draws outside the nucleus."""
    loaded = load_model(str(tiny_models["gpt2"]))
    prompt, temperature, n = "The quick brown fox", 1.5, 3000
    with torch.no_grad():
        logits = loaded.model(torch.tensor([loaded.tokenizer(prompt)["input_ids"]])).logits[0, -1].float()
    probs = torch.softmax(logits.double() / temperature, -1).numpy()
    res = generate(loaded, [prompt] * n, max_new_tokens=1, temperature=temperature, seed=3)
    drawn = np.array([r.token_ids[0] if r.token_ids else loaded.tokenizer.eos_token_id for r in res])
    observed = np.bincount(drawn, minlength=len(probs))
    expected = probs * n
    big = expected >= 5  # pool the rare tokens into one cell
    obs, exp = observed[big], expected[big]
    if (~big).any():
        obs, exp = np.append(obs, observed[~big].sum()), np.append(exp, expected[~big].sum())
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
    # the counter-based uniforms are uniform
    assert stats.kstest(_uniform(3, np.arange(5000), np.zeros(5000, dtype=np.int64)), "uniform").pvalue > 1e-3
    top_p = 0.5
    order = np.argsort(-probs, kind="stable")
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1].tolist())
    res = generate(loaded, [prompt] * 500, max_new_tokens=1, temperature=temperature, top_p=top_p, seed=4)
    assert {r.token_ids[0] for r in res if r.token_ids} <= nucleus


def test_streaming_sees_every_token_in_order_and_hidden_states_trace_the_path(tiny_models):
    loaded = load_model(str(tiny_models["llama"]))
    for hidden_layer in (None, 3):
        streamed: dict[int, list[int]] = {}
        res = generate(loaded, PROMPTS[:4], max_new_tokens=[5, 2, 6, 4], hidden_layer=hidden_layer, batch_size=2,
                       on_token=lambda r, t, h: streamed.setdefault(r, []).append((t.id, h)))
        for r, g in enumerate(res):
            assert [s[0] for s in streamed[r]] == g.token_ids
            assert all((s[1] is None) == (hidden_layer is None) for s in streamed[r])
    assert all(len(g.hidden) == len(g.tokens) for g in res)
    # the state of generated token j = last-position state of prompt + tokens[:j+1] run alone
    for r in (0, 2):
        ids = loaded.tokenizer(PROMPTS[r])["input_ids"]
        for j, h in enumerate(res[r].hidden):
            with torch.no_grad():
                ref = loaded.model(torch.tensor([ids + res[r].token_ids[: j + 1]]),
                                   output_hidden_states=True).hidden_states[3][0, -1].numpy()
            np.testing.assert_allclose(h, ref, rtol=1e-3, atol=1e-4)
            np.testing.assert_array_equal(streamed[r][j][1], h)


def test_slots_come_from_the_kv_cache_memory(tiny_models, monkeypatch):
    import pipelines.generate as gen
    from transformers import DynamicCache

    loaded = load_model(str(tiny_models["llama"]))
    ids = torch.tensor([loaded.tokenizer(PROMPTS[1])["input_ids"]])
    with torch.no_grad():
        cache = loaded.model(ids, use_cache=True, cache=DynamicCache(config=loaded.model.config)).cache
    real = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers) // ids.shape[1]
    assert _kv_bytes_per_token(loaded.model) == real
    per_slot = real * 100 + 3 * 4 * loaded.model.config.vocab_size
    monkeypatch.setattr(gen, "CPU_KV_BUDGET", per_slot * 5 + 1)
    assert plan_slots(loaded, 1000, 100) == 5
    assert plan_slots(loaded, 3, 100) == 3 and plan_slots(loaded, 1000, 100, batch_size=2) == 2
    monkeypatch.setattr(gen, "CPU_KV_BUDGET", 1)
    assert plan_slots(loaded, 1000, 100) == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_choice_loglikelihoods_equal_full_sequence_scores(tiny_models, arch):
    loaded = load_model(str(tiny_models[arch]))
    prompts = ["Classify the sentiment of this review: the film was wonderful.\nAnswer:", "Is the sea wet?\nAnswer:",
               "Hi", "Write a short poem about the sea, the wind and the light on the water.\nAnswer:"]
    choices = [[" positive", " negative", " it was a film about the sea"], [" yes", " no"], [" a"],
               [" the sea", " wind and light", " no", " a poem about the paper press and the train"]]
    # a small token budget: several length-sorted batches
    batched = choice_loglikelihoods_batch(loaded, prompts, choices, batch_tokens=60)
    for prompt, opts, res in zip(prompts, choices, batched):
        assert [r["choice"] for r in res] == opts
        for r, choice in zip(res, opts):
            ctx = loaded.tokenizer(prompt)["input_ids"]
            whole = loaded.tokenizer(prompt + choice)["input_ids"]
            cont = whole[len(ctx):]
            with torch.no_grad():
                lp = torch.log_softmax(loaded.model(torch.tensor([whole])).logits[0].float(), -1)
            picked = [float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)]
            assert r["logprob"] == pytest.approx(sum(picked), abs=1e-4)
            greedy = all(int(lp[len(ctx) - 1 + j].argmax()) == t for j, t in enumerate(cont))
            assert r["greedy"] == greedy and r["n_tokens"] == len(cont) and math.isfinite(r["logprob"])
        single = choice_loglikelihoods(loaded, prompt, opts)
        np.testing.assert_allclose([r["logprob"] for r in res], [r["logprob"] for r in single], atol=1e-4)
