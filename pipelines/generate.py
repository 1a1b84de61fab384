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
        raise LLMMapsError(f"--max-new-tokens: {max_new_tokens} leaves no room for the prompt "
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
        past = out.past_key_values
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
                        past_key_values=past, use_cache=True, output_hidden_states=want_hidden)
            past = out.past_key_values
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
    """Sum of log-probabilities of each choice after ``prompt``; ``greedy`` if every choice token
    is the argmax. One forward over the prompt, then all choices at once on its KV cache."""
    import torch

    model, tok = loaded.model, loaded.tokenizer
    if not choices:
        raise LLMMapsError("multiple choice: an example has no choices")
    pairs = [continuation_ids(tok, prompt, c) for c in choices]
    ctx = pairs[0][0]
    conts = [p[1] if p[0] == ctx else tok(c, add_special_tokens=False)["input_ids"] for p, c in zip(pairs, choices)]
    if any(len(c) == 0 for c in conts):
        raise LLMMapsError("multiple choice: a choice tokenizes to nothing")
    dev = loaded.device
    n, width, lc = len(conts), max(len(c) for c in conts), len(ctx)
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ctx], device=dev), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # [V]
        past = out.past_key_values
        past.batch_repeat_interleave(n)
        inp = torch.zeros((n, width), dtype=torch.long, device=dev)
        cmask = torch.zeros((n, width), dtype=torch.long, device=dev)
        for i, c in enumerate(conts):
            inp[i, : len(c)] = torch.tensor(c)
            cmask[i, : len(c)] = 1
        mask = torch.cat([torch.ones((n, lc), dtype=torch.long, device=dev), cmask], dim=1)
        positions = (lc + torch.arange(width, device=dev))[None, :].expand(n, width)
        out2 = model(input_ids=inp, attention_mask=mask, position_ids=positions, past_key_values=past,
                     use_cache=False)
        logp = torch.log_softmax(out2.logits.float(), dim=-1)  # [n, width, V]
    results = []
    for i, c in enumerate(conts):
        lps = [float(first[c[0]])]
        greedy = [int(first.argmax()) == c[0]]
        for j in range(1, len(c)):
            row = logp[i, j - 1]
            lps.append(float(row[c[j]]))
            greedy.append(int(row.argmax()) == c[j])
        results.append({"choice": choices[i], "logprob": float(sum(lps)), "n_tokens": len(c),
                        "n_chars": len(choices[i]), "greedy": all(greedy)})
    return results
