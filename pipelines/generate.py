"""Generation and log-likelihoods with the run's model: the one generator of LLM Maps.

- ``generate``: batched (left padding, explicit position ids, KV cache), greedy or sampled
  (temperature, top-p, seed), stop strings and EOS; per generated token its id, text,
  log-probability under the model, optional top alternatives, and optional hidden state at one
  layer (the state of the token when it is fed back, i.e. the path through the space). A callback
  sees each token as it is produced (streaming).
- ``choice_loglikelihoods``: multiple choice the way lm-eval scores it: the summed log-probability
  of each choice's tokens after the prompt (prompt computed once, its KV cache shared by the
  choices), plus whether each choice is the greedy continuation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from pipelines.encode import pad_left, pad_token_id, tokenize_prompts
from pipelines.models import kv_cache, with_cache


@dataclass
class GeneratedToken:
    id: int
    text: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Generation:
    prompt_tokens: int
    text: str = ""
    tokens: list[GeneratedToken] = field(default_factory=list)
    hidden: list[np.ndarray] = field(default_factory=list)  # per token [H] (when requested)
    stop_reason: str = "length"  # "eos" | "stop_string" | "length"

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def logprobs(self) -> list[float]:
        return [t.logprob for t in self.tokens]


def _cut_at_stop(text: str, stops: Sequence[str]) -> int | None:
    cuts = [text.find(s) for s in stops if s and s in text]
    return min(cuts) if cuts else None


def generate(loaded, prompts: Sequence[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, stop_strings: Sequence[str] = (),
             top_alternatives: int = 0, hidden_layer: int | None = None,
             max_length: int | None = None,
             on_token: Callable[[int, GeneratedToken, np.ndarray | None], None] | None = None) -> list[Generation]:
    """Generate a continuation for each prompt (one batch; call per batch for large sets)."""
    import torch

    model, tok = loaded.model, loaded.tokenizer
    if max_new_tokens < 1:
        raise LLMMapsError(f"--max-new-tokens: must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise LLMMapsError(f"--temperature: must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise LLMMapsError(f"--top-p: must be in (0, 1], got {top_p}")
    limit = loaded.max_positions or 2048
    room = min(max_length or limit, limit) - max_new_tokens
    if room < 1:
        raise LLMMapsError(f"max new tokens (--max-new-tokens, max_new_tokens): {max_new_tokens} leaves no room for the prompt "
                           f"(model maximum positions {limit})")
    ids, _ = tokenize_prompts(tok, prompts, max_length=room)
    n = len(ids)
    eos = tok.eos_token_id
    ids_t, mask, pos = pad_left(ids, pad_token_id(tok), loaded.device)
    gen = None
    if temperature > 0:
        gen = torch.Generator(device=loaded.device)
        gen.manual_seed(0 if seed is None else int(seed))
    results = [Generation(prompt_tokens=len(s)) for s in ids]
    done = [False] * n
    texts_ids: list[list[int]] = [[] for _ in range(n)]
    want_hidden = hidden_layer is not None
    with torch.inference_mode():
        # logits_to_keep=1: the LM head only at the last position (the prefill's big saving)
        out = model(input_ids=ids_t, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        past = kv_cache(out)
        logits = out.logits[:, -1, :]
        last_pos = pos[:, -1:]
        for step in range(max_new_tokens):
            logp = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                if top_p < 1.0:
                    sorted_p, order = probs.sort(dim=-1, descending=True)
                    keep = sorted_p.cumsum(-1) - sorted_p < top_p
                    sorted_p = sorted_p * keep
                    probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
                nxt = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=gen)[:, 0]
            else:
                nxt = logp.argmax(dim=-1)
            chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist()
            top = None
            if top_alternatives:
                tv, ti = logp.topk(top_alternatives, dim=-1)
                top = (tv.tolist(), ti.tolist())
            nxt_list = nxt.tolist()
            fed_rows = []
            for r in range(n):
                if done[r]:
                    continue
                t = nxt_list[r]
                if eos is not None and t == eos:
                    done[r] = True
                    results[r].stop_reason = "eos"
                    continue
                alts = [(tok.decode([i]), float(v)) for v, i in zip(top[0][r], top[1][r])] if top else []
                token = GeneratedToken(id=int(t), text=tok.decode([t]), logprob=float(chosen[r]), top=alts)
                results[r].tokens.append(token)
                texts_ids[r].append(int(t))
                fed_rows.append(r)
                if stop_strings:
                    text = tok.decode(texts_ids[r], skip_special_tokens=False)
                    if _cut_at_stop(text, stop_strings) is not None:
                        done[r] = True
                        results[r].stop_reason = "stop_string"
            all_done = all(done) or step == max_new_tokens - 1
            if all_done and not want_hidden:
                if on_token is not None:
                    for r in fed_rows:
                        on_token(r, results[r].tokens[-1], None)
                break
            feed = torch.where(torch.tensor(done, device=nxt.device) & (nxt == eos if eos is not None else False),
                               torch.full_like(nxt, pad_token_id(tok)), nxt)
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], dim=1)
            last_pos = last_pos + 1
            out = model(input_ids=feed[:, None], attention_mask=mask, position_ids=last_pos,
                        **with_cache(past), use_cache=True, output_hidden_states=want_hidden)
            past = kv_cache(out)
            logits = out.logits[:, -1, :]
            for r in fed_rows:
                state = out.hidden_states[hidden_layer][r, -1].float().cpu().numpy() if want_hidden else None
                if state is not None:
                    results[r].hidden.append(state)
                if on_token is not None:
                    on_token(r, results[r].tokens[-1], state)
            if all_done:
                break
    for r, res in enumerate(results):
        text = tok.decode(texts_ids[r], skip_special_tokens=True)
        if stop_strings:
            full = tok.decode(texts_ids[r], skip_special_tokens=False)
            cut = _cut_at_stop(full, stop_strings)
            if cut is not None:
                # keep only the tokens that end before the stop string starts
                keep, length = 0, 0
                for j in range(len(texts_ids[r])):
                    length = len(tok.decode(texts_ids[r][: j + 1], skip_special_tokens=False))
                    if length > cut:
                        break
                    keep = j + 1
                res.tokens = res.tokens[:keep]
                res.hidden = res.hidden[:keep]
                text = tok.decode(texts_ids[r][:keep], skip_special_tokens=True)
        res.text = text.strip()
    return results


def continuation_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, continuation) as lm-eval splits them: encode the whole text and take
    what follows the prompt's own tokens (falls back to encoding the continuation alone)."""
    ctx = tokenizer(prompt)["input_ids"]
    whole = tokenizer(prompt + continuation)["input_ids"]
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return list(ctx), list(whole[len(ctx):])
    return list(ctx), list(tokenizer(continuation, add_special_tokens=False)["input_ids"])


def choice_loglikelihoods(loaded, prompt: str, choices: Sequence[str]) -> list[dict]:
    """Sum of log-probabilities of each choice after ``prompt`` (see ``choice_loglikelihoods_batch``)."""
    return choice_loglikelihoods_batch(loaded, [prompt], [choices])[0]


def choice_loglikelihoods_batch(loaded, prompts: Sequence[str], choices: Sequence[Sequence[str]]) -> list[list[dict]]:
    """For each prompt, the summed log-probability of each of its choices' tokens, and whether
    every choice token is the argmax (lm-eval's ``is_greedy``).

    Two forwards per batch: the left-padded prompts once (KV cache), then every (prompt, choice)
    continuation at once on that cache repeated per choice; examples with fewer choices are
    padded with dummies that are ignored.
    """
    import torch

    model, tok = loaded.model, loaded.tokenizer
    if len(prompts) != len(choices):
        raise ValueError("one choice list per prompt")
    ctxs, conts = [], []
    for prompt, options in zip(prompts, choices):
        if not options:
            raise LLMMapsError("multiple choice: an example has no choices")
        ctx = list(tok(prompt)["input_ids"])
        row = []
        for c in options:
            c_ctx, c_ids = continuation_ids(tok, prompt, c)
            c_ids = c_ids if c_ctx == ctx else list(tok(c, add_special_tokens=False)["input_ids"])
            if not c_ids:
                raise LLMMapsError("multiple choice: a choice tokenizes to nothing")
            row.append(c_ids)
        ctxs.append(ctx)
        conts.append(row)
    dev = loaded.device
    b, n_c = len(ctxs), max(len(r) for r in conts)
    width = max(len(c) for r in conts for c in r)
    ids, mask, pos = pad_left(ctxs, pad_token_id(tok), dev)
    inp = torch.zeros((b * n_c, width), dtype=torch.long)
    cmask = torch.zeros((b * n_c, width), dtype=torch.long)
    for i, row in enumerate(conts):
        for j in range(n_c):
            c = row[min(j, len(row) - 1)]  # dummies repeat the last choice
            inp[i * n_c + j, : len(c)] = torch.tensor(c)
            cmask[i * n_c + j, : len(c)] = 1
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, V]
        past = kv_cache(out)
        if n_c > 1:
            past.batch_repeat_interleave(n_c)
        full_mask = torch.cat([mask.repeat_interleave(n_c, dim=0), cmask.to(dev)], dim=1)
        positions = pos[:, -1:].repeat_interleave(n_c, dim=0) + 1 + torch.arange(width, device=dev)[None, :]
        out2 = model(input_ids=inp.to(dev), attention_mask=full_mask, position_ids=positions,
                     **with_cache(past), use_cache=False)
        logp = torch.log_softmax(out2.logits.float(), dim=-1)  # [B * C, W, V]
        results = []
        for i, row in enumerate(conts):
            res = []
            for j, c in enumerate(row):
                c_t = torch.tensor(c, device=dev)
                lps = torch.cat([first[i, c_t[:1]], logp[i * n_c + j, torch.arange(len(c) - 1, device=dev), c_t[1:]]])
                greedy = bool(first[i].argmax() == c_t[0]) and bool(
                    (logp[i * n_c + j, : len(c) - 1].argmax(-1) == c_t[1:]).all())
                res.append({"choice": choices[i][j], "logprob": float(lps.sum()), "n_tokens": len(c),
                            "n_chars": len(choices[i][j]), "greedy": greedy})
            results.append(res)
    return results
