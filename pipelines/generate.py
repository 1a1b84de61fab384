"""Generation and log-likelihoods with the run's model: the one generator of LLM Maps.

- ``generate``: continuous batching on a pre-allocated KV cache. Prompts are taken longest first
  into a fixed number of *slots* (as many as the KV cache's memory allows: ``plan_slots``);
  every decode step runs only the active slots; a row that finishes (EOS, a stop string, its own
  ``max_new_tokens``) leaves at once and free slots are refilled from the queue, so one long
  answer never holds short ones. The cache is one ``[slots, kv_heads, columns, head_dim]`` tensor
  per layer (a ``transformers`` ``Cache`` of our ``SlotLayer``s, written in place, never grown by
  concatenation); each slot keeps its own start column, position ids and attention mask, so
  padding and batch-mates never change a row's result. Greedy or sampled (temperature, top-p; the
  random stream of a row depends only on the seed, the row's key and the step, not on which rows
  share its batch), stop strings and EOS; per generated token its id, text, log-probability under
  the model, optional top alternatives, and optional hidden state at one layer (the state of the
  token when it is fed back, i.e. the path through the space). ``on_token`` sees every token of
  every row in order as it is produced (streaming).
- ``choice_loglikelihoods_batch``: multiple choice the way lm-eval scores it: the summed
  log-probability of each choice's tokens after the prompt, plus whether each choice is the
  greedy continuation. Each example is packed into one sequence, prompt then every choice, with
  a tree attention mask (a choice sees the prompt and itself, not the other choices) and the
  choices' own position ids, so one forward over length-sorted batches (as ``encode`` plans
  them) scores every choice of many examples; the LM head runs only where a choice token is
  predicted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from pipelines.encode import batch_limits, pad_left, pad_token_id, plan_batches, tokenize_prompts

if TYPE_CHECKING:
    import torch

# Slots (rows decoded together): at most this many, and as many as the KV cache budget holds.
# CPU: at 64 rows a decode step is already compute-bound (2·N FLOPs a row against the weights read
# once), so more rows add latency to every row, not throughput; `--batch-size` raises it.
CPU_MAX_SLOTS = 64
GPU_MAX_SLOTS = 512
CPU_KV_BUDGET = 1 << 30  # bytes of KV cache on CPU
MIN_SHARED_PREFIX = 4  # common first tokens worth computing once for all prompts
GPU_FREE_FRACTION = 0.6  # of the free GPU memory, for the KV cache (the rest: activations, logits)


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


def attention_mask_4d(model, allowed):
    """A bool ``[B, 1, Q, K]`` mask (True = may attend) in the form the model's attention wants:
    bool for SDPA, additive float for eager attention."""
    import torch

    impl = str(getattr(model.config, "_attn_implementation", None) or "sdpa")
    if impl == "sdpa":
        return allowed
    if "flash" in impl or "flex" in impl or "paged" in impl:
        raise LLMMapsError(f"attention implementation '{impl}' takes no 4-D mask; load the model with sdpa or eager")
    dtype = model.dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _kv_bytes_per_token(model) -> int:
    import torch

    cfg = model.config
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    elem = torch.finfo(model.dtype).bits // 8 if model.dtype.is_floating_point else 4
    return 2 * int(cfg.num_hidden_layers) * kv_heads * head_dim * elem


def plan_slots(loaded, n_prompts: int, columns: int, batch_size: int | None = None) -> int:
    """Rows decoded together: as many as a KV cache of ``columns`` tokens a row fits in the memory
    budget (CUDA: a share of the free memory; CPU: ``CPU_KV_BUDGET``), capped by ``batch_size``
    (default: ``GPU_MAX_SLOTS`` / ``CPU_MAX_SLOTS``) and by the number of prompts."""
    import torch

    model = loaded.model
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    per_slot = _kv_bytes_per_token(model) * columns + 3 * 4 * vocab  # + fp32 logits, log-probs, probs
    if str(loaded.device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(loaded.device))
        budget, cap = GPU_FREE_FRACTION * free, GPU_MAX_SLOTS
    else:
        budget, cap = CPU_KV_BUDGET, CPU_MAX_SLOTS
    if batch_size:
        cap = int(batch_size)
    return int(max(1, min(cap, max(n_prompts, 1), budget // max(per_slot, 1))))


class _Slots:
    """Where the next forward reads and writes the slot cache: rows (slots), write columns, read columns."""

    def __init__(self, n_slots: int, columns: int):
        self.n_slots, self.columns = n_slots, columns
        self.rows = slice(0, 0)
        self.write = slice(0, 0)
        self.read = slice(0, 0)


def _slot_cache(model, slots: _Slots):
    """A transformers ``Cache`` of ``SlotLayer``s: per layer one pre-allocated
    ``[slots, kv_heads, columns, head_dim]`` tensor for keys and one for values."""
    import torch
    from transformers.cache_utils import Cache, CacheLayerMixin

    class SlotLayer(CacheLayerMixin):
        is_sliding = False

        def lazy_initialization(self, key_states, value_states) -> None:
            self.device = key_states.device
            shape = (slots.n_slots, key_states.shape[1], slots.columns)
            self.keys = torch.zeros(shape + (key_states.shape[-1],), dtype=key_states.dtype, device=self.device)
            self.values = torch.zeros(shape + (value_states.shape[-1],), dtype=value_states.dtype, device=self.device)
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            self.keys[slots.rows, :, slots.write] = key_states
            self.values[slots.rows, :, slots.write] = value_states
            return self.keys[slots.rows, :, slots.read], self.values[slots.rows, :, slots.read]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return slots.read.stop - slots.read.start, 0

        def get_seq_length(self) -> int:
            return (slots.read.stop - slots.read.start) - (slots.write.stop - slots.write.start)

        def get_max_length(self) -> int:
            return slots.columns

    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    return Cache(layers=[SlotLayer() for _ in range(int(cfg.num_hidden_layers))])


def _uniform(seed: int, keys: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """One uniform number in [0, 1) per (seed, key, step): a counter-based stream (splitmix64), so a
    row's samples do not depend on which rows share its batch or chunk."""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             ^ keys.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             ^ (steps.astype(np.uint64) + np.uint64(1)) * np.uint64(0x94D049BB133111EB))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _per_row(value, n: int, name: str) -> np.ndarray:
    if np.ndim(value) == 0:
        return np.full(n, int(value), dtype=np.int64)
    arr = np.asarray(list(value), dtype=np.int64)
    if len(arr) != n:
        raise ValueError(f"{name}: one value per prompt ({len(arr)} for {n} prompts)")
    return arr


def generate(loaded, prompts: Sequence[str], *, max_new_tokens: int | Sequence[int] = 64, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = None, stop_strings: Sequence[str] = (),
             top_alternatives: int = 0, hidden_layer: int | None = None,
             max_length: int | None = None,
             on_token: Callable[[int, GeneratedToken, np.ndarray | None], None] | None = None,
             batch_size: int | None = None, keys: Sequence[int] | None = None,
             on_progress: Callable[[int, int], None] | None = None,
             stats: dict | None = None, share_prefix: bool = True,
             forced_ids: Sequence[int] | None = None,
             on_first: Callable[[np.ndarray, torch.Tensor, np.ndarray], None] | None = None) -> list[Generation]:
    """Generate a continuation for each prompt (any number: they are batched continuously).

    ``max_new_tokens``: one limit, or one per prompt. ``batch_size``: at most this many rows
    decoded together (default: from the KV cache's memory, see ``plan_slots``). ``keys``: the
    random stream of each row when sampling (default: its index; ``llm-maps score`` passes the
    example's row so a chunk samples what a whole run samples). ``on_token(row, token, state)``:
    every token of every row in order (``state``: its hidden state when ``hidden_layer`` is set).
    ``on_progress(rows_finished, tokens)`` after every step. ``stats`` (a dict) receives slots,
    steps and prefills. ``share_prefix``: the first tokens common to all prompts (at least
    ``MIN_SHARED_PREFIX``, e.g. a chat template's system turn) are computed once.
    ``forced_ids``: teacher forcing, these tokens are fed instead of chosen, in every row (their
    log-probabilities are recorded); a row stops after them (or earlier at EOS / its limit).
    ``on_first(rows, logprobs, prompt_tokens)`` after every prefill: the model's next-token
    log-probabilities at the end of those prompts ([b, V] float32, before temperature or forcing)
    and the prompt tokens read (after truncation) — the first-token statistics without a pass of
    their own (``pipelines.first_token.FirstTokenCollector``).
    """
    import torch

    model, tok = loaded.model, loaded.tokenizer
    n = len(prompts)
    limits = _per_row(max_new_tokens, n, "max_new_tokens")
    if forced_ids is not None:
        if not len(forced_ids):
            raise LLMMapsError("forced_ids: no tokens to force")
        limits = np.minimum(limits, len(forced_ids))
    if n and limits.min() < 1:
        raise LLMMapsError(f"--max-new-tokens: must be >= 1, got {int(limits.min())}")
    if temperature < 0:
        raise LLMMapsError(f"--temperature: must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise LLMMapsError(f"--top-p: must be in (0, 1], got {top_p}")
    if n == 0:
        return []
    limit = loaded.max_positions or 2048
    rooms = min(max_length or limit, limit) - limits
    if rooms.min() < 1:
        raise LLMMapsError(f"max new tokens (--max-new-tokens, max_new_tokens): {int(limits.max())} leaves no room for "
                           f"the prompt (model maximum positions {limit})")
    ids, _ = tokenize_prompts(tok, prompts)
    ids = [seq[-int(room):] if len(seq) > room else seq for seq, room in zip(ids, rooms)]
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    row_keys = np.arange(n, dtype=np.int64) if keys is None else np.asarray(list(keys), dtype=np.int64)
    eos = tok.eos_token_id
    pad = pad_token_id(tok)
    dev = loaded.device
    want_hidden = hidden_layer is not None
    seed = 0 if seed is None else int(seed)

    order = np.argsort(-lengths, kind="stable")  # longest first: the widest prefill comes first
    m_max = int(limits.max())
    span = int(lengths.max()) + m_max
    columns = span + max(16, span // 4)  # room to write before the window is shifted left
    n_slots = plan_slots(loaded, n, columns, batch_size)
    prefill_tokens, _ = batch_limits(dev)
    slots = _Slots(n_slots, columns)
    cache = _slot_cache(model, slots)

    # per slot (numpy, slots [0, A) active)
    row_of = np.full(n_slots, -1, dtype=np.int64)
    start = np.zeros(n_slots, dtype=np.int64)  # first column of the row's prompt
    pos = np.zeros(n_slots, dtype=np.int64)  # position id of the next token fed
    n_gen = np.zeros(n_slots, dtype=np.int64)
    mask = torch.zeros((n_slots, columns), dtype=torch.bool, device=dev)
    # per row
    out_ids = np.zeros((n, m_max), dtype=np.int64)
    out_lp = np.zeros((n, m_max), dtype=np.float64)
    count = np.zeros(n, dtype=np.int64)
    k_top = int(top_alternatives or 0)
    top_v = np.zeros((n, m_max, k_top), dtype=np.float64) if k_top else None
    top_i = np.zeros((n, m_max, k_top), dtype=np.int64) if k_top else None
    reasons = np.array(["length"] * n, dtype=object)
    hidden: list[list[np.ndarray]] = [[] for _ in range(n)]
    texts: dict[int, str] = {}

    def text_of(t: int) -> str:
        if t not in texts:
            texts[t] = tok.decode([t])
        return texts[t]

    state = {"A": 0, "c": 0, "r0": 0, "steps": 0, "prefills": 0, "shifts": 0, "prefill_s": 0.0}

    def move_columns(lo: int, hi: int, dst: int) -> None:
        """Move the active slots' columns [lo, hi) to start at ``dst``."""
        a, width = state["A"], hi - lo
        state["shifts"] += 1
        for layer in cache.layers:
            if layer.is_initialized:
                layer.keys[:a, :, dst:dst + width] = layer.keys[:a, :, lo:hi].clone()
                layer.values[:a, :, dst:dst + width] = layer.values[:a, :, lo:hi].clone()
        block = mask[:a, lo:hi].clone()
        mask[:a] = False
        mask[:a, dst:dst + width] = block
        start[:a] += dst - lo
        state["r0"] += dst - lo
        state["c"] += dst - lo

    # the prompts' common first tokens (a chat template's system turn): their keys and values are
    # computed once and copied into every slot; only the rest of each prompt is prefilled
    shared = 0
    if n > 1 and share_prefix:
        first, shortest = ids[0], int(lengths.min())
        shared = shortest - 1
        for seq in ids[1:]:
            j = 0
            while j < shared and seq[j] == first[j]:
                j += 1
            shared = j
        shared = shared if shared >= MIN_SHARED_PREFIX else 0
    prefix_kv = None
    if shared:
        from transformers import DynamicCache

        with torch.inference_mode():
            pcache = DynamicCache(config=model.config)
            model(input_ids=torch.as_tensor([ids[0][:shared]], device=dev), cache=pcache, use_cache=True,
                  logits_to_keep=1)
        prefix_kv = [(layer.keys, layer.values) for layer in pcache.layers]

    def insert(group: np.ndarray):
        """Prefill prompts ``group`` into the next free slots, ending at the current column (the
        shared prefix, copied, then each prompt's own tokens, left-padded)."""
        seqs = [ids[r][shared:] for r in group]
        k, width = len(seqs), max(len(s) for s in seqs)
        a = state["A"]
        if state["c"] < width + shared:  # shift the active rows right to make room on the left
            if a:
                move_columns(state["r0"], state["c"], state["r0"] + width + shared - state["c"])
            state["c"] = width + shared
        c = state["c"]
        inp, mask2, positions = pad_left(seqs, pad, dev)
        valid = mask2.bool()
        causal = torch.ones((width, width), dtype=torch.bool, device=dev).tril()
        allowed = (causal[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=dev)[None]
        if shared:
            for layer, (pk, pv) in zip(cache.layers, prefix_kv):
                if not layer.is_initialized:
                    layer.lazy_initialization(pk, pv)
                layer.keys[a:a + k, :, c - width - shared:c - width] = pk
                layer.values[a:a + k, :, c - width - shared:c - width] = pv
            allowed = torch.cat([torch.ones((k, width, shared), dtype=torch.bool, device=dev), allowed], dim=-1)
            positions = positions + shared
        slots.rows, slots.write, slots.read = slice(a, a + k), slice(c - width, c), slice(c - width - shared, c)
        out = model(input_ids=inp, attention_mask=attention_mask_4d(model, allowed[:, None]), position_ids=positions,
                    cache=cache, use_cache=True, logits_to_keep=1)
        mask[a:a + k] = False
        mask[a:a + k, c - width - shared:c - width] = True
        mask[a:a + k, c - width:c] = valid
        plen = lengths[group]
        start[a:a + k] = c - width - shared
        pos[a:a + k], n_gen[a:a + k], row_of[a:a + k] = plen, 0, group
        state["A"] = a + k
        state["r0"] = int(start[:a + k].min())
        state["prefills"] += 1
        logits = out.logits[:, -1, :].float()
        if on_first is not None:
            on_first(group, torch.log_softmax(logits, dim=-1), plen)
        return logits

    def remove(keep: np.ndarray) -> np.ndarray:
        """Drop the active slots where ``keep`` is False: the last kept slots fill the holes.
        Returns the old slot of each new slot."""
        a = state["A"]
        new_a = int(keep.sum())
        holes = np.flatnonzero(~keep[:new_a])
        movers = new_a + np.flatnonzero(keep[new_a:a])
        perm = np.arange(new_a)
        if len(holes):
            perm[holes] = movers
            lo, hi = state["r0"], state["c"]
            h_t, m_t = torch.as_tensor(holes, device=dev), torch.as_tensor(movers, device=dev)
            for layer in cache.layers:
                if layer.is_initialized:
                    layer.keys[h_t, :, lo:hi] = layer.keys[m_t, :, lo:hi]
                    layer.values[h_t, :, lo:hi] = layer.values[m_t, :, lo:hi]
            mask[h_t] = mask[m_t]
            for arr in (row_of, start, pos, n_gen):
                arr[holes] = arr[movers]
        state["A"] = new_a
        if new_a:
            state["r0"] = int(start[:new_a].min())
        return perm

    def decode(feed):
        a = state["A"]
        if state["c"] >= columns:  # window full: shift everything to column 0
            move_columns(state["r0"], state["c"], 0)
        c, r0 = state["c"], state["r0"]
        mask[:a, c] = True
        slots.rows, slots.write, slots.read = slice(0, a), slice(c, c + 1), slice(r0, c + 1)
        allowed = mask[:a, r0:c + 1][:, None, None, :]
        out = model(input_ids=feed[:, None], attention_mask=attention_mask_4d(model, allowed),
                    position_ids=torch.as_tensor(pos[:a, None], device=dev), cache=cache, use_cache=True,
                    output_hidden_states=want_hidden)
        state["c"] = c + 1
        pos[:a] += 1
        state["steps"] += 1
        states = out.hidden_states[hidden_layer][:, -1].float().cpu().numpy() if want_hidden else None
        return out.logits[:, -1, :].float(), states

    forced = (torch.as_tensor(list(forced_ids), dtype=torch.long, device=dev)
              if forced_ids is not None else None)

    def select(logits):
        a = state["A"]
        logp = torch.log_softmax(logits, dim=-1)  # [A, V]
        if temperature > 0 and forced is None:
            probs = torch.softmax(logits / temperature, dim=-1)
            order_v = None
            if top_p < 1.0:
                probs, order_v = probs.sort(dim=-1, descending=True)
                probs = probs * (probs.cumsum(-1) - probs < top_p)
            cdf = probs.cumsum(-1)
            u = torch.as_tensor(_uniform(seed, row_keys[row_of[:a]], n_gen[:a]), dtype=cdf.dtype, device=dev)
            idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[-1] - 1)
            nxt = order_v.gather(-1, idx)[:, 0] if order_v is not None else idx[:, 0]
        elif forced is not None:
            nxt = forced[torch.as_tensor(n_gen[:a], device=dev)]
        else:
            nxt = logp.argmax(dim=-1)
        chosen = logp.gather(-1, nxt[:, None])[:, 0]
        top = logp.topk(k_top, dim=-1) if k_top else None
        return nxt, chosen, top

    def token_of(r: int, j: int) -> GeneratedToken:
        alts = ([(text_of(int(i)), float(v)) for v, i in zip(top_v[r, j], top_i[r, j])] if k_top else [])
        t = int(out_ids[r, j])
        return GeneratedToken(id=t, text=text_of(t), logprob=float(out_lp[r, j]), top=alts)

    logits = None
    qi = 0
    refill_at = max(1, n_slots // 8)
    with torch.inference_mode():
        while qi < n or state["A"]:
            free = n_slots - state["A"]
            if qi < n and free >= min(refill_at, n - qi):
                parts = [] if logits is None else [logits]
                t0 = time.perf_counter()
                while free and qi < n:
                    width = int(lengths[order[qi]]) - shared  # what the prefill forwards
                    take = int(max(1, min(free, n - qi, prefill_tokens // max(width, 1))))
                    parts.append(insert(order[qi: qi + take]))
                    qi, free = qi + take, free - take
                logits = torch.cat(parts) if len(parts) > 1 else parts[0]
                state["prefill_s"] += time.perf_counter() - t0
            a = state["A"]
            nxt, chosen, top = select(logits)
            toks, lps = nxt.cpu().numpy(), chosen.cpu().numpy()
            rows = row_of[:a].copy()
            is_eos = toks == eos if eos is not None else np.zeros(a, dtype=bool)
            rec = np.flatnonzero(~is_eos)
            rr, jj = rows[rec], n_gen[rec]
            out_ids[rr, jj], out_lp[rr, jj] = toks[rec], lps[rec]
            if k_top:
                top_v[rr, jj], top_i[rr, jj] = top.values.cpu().numpy()[rec], top.indices.cpu().numpy()[rec]
            n_gen[rec] += 1
            count[rr] = n_gen[rec]
            reasons[rows[is_eos]] = "eos"
            finished = np.zeros(a, dtype=bool)
            finished[rec] = n_gen[rec] >= limits[rr]
            if stop_strings:
                decoded = tok.batch_decode([out_ids[r, :count[r]].tolist() for r in rr], skip_special_tokens=False)
                hit = np.array([_cut_at_stop(t, stop_strings) is not None for t in decoded], dtype=bool)
                if hit.any():
                    finished[rec[hit]] = True
                    reasons[rr[hit]] = "stop_string"
            if on_token is not None and not want_hidden:
                for r, j in zip(rr, jj):
                    on_token(int(r), token_of(r, j), None)
            if on_progress is not None:
                on_progress(int(is_eos.sum() + finished.sum()), len(rec))
            leave_now = is_eos | (finished & (not want_hidden))
            leave_after = finished & want_hidden
            if leave_now.any():
                perm = remove(~leave_now)
                nxt, leave_after = nxt[torch.as_tensor(perm, device=dev)], leave_after[perm]
            if not state["A"]:
                logits = None
                continue
            logits, states = decode(nxt)
            if want_hidden:
                for s in range(state["A"]):
                    r = int(row_of[s])
                    hidden[r].append(states[s])
                    if on_token is not None:
                        on_token(r, token_of(r, count[r] - 1), states[s])
            if leave_after.any():
                perm = remove(~leave_after)
                logits = logits[torch.as_tensor(perm, device=dev)] if state["A"] else None

    if stats is not None:
        stats.update({"slots": n_slots, "columns": columns, "decode_steps": state["steps"],
                      "prefills": state["prefills"], "shifts": state["shifts"],
                      "prefill_seconds": state["prefill_s"], "shared_prefix": shared})
    results = []
    cut_rows = []
    for r in range(n):
        res = Generation(prompt_tokens=int(lengths[r]), stop_reason=str(reasons[r]))
        res.tokens = [token_of(r, j) for j in range(count[r])]
        res.hidden = hidden[r]
        results.append(res)
        if reasons[r] == "stop_string":
            cut_rows.append(r)
    for r in cut_rows:  # keep only the tokens that end before the stop string starts
        seq = out_ids[r, :count[r]].tolist()
        cut = _cut_at_stop(tok.decode(seq, skip_special_tokens=False), stop_strings)
        prefixes = tok.batch_decode([seq[: j + 1] for j in range(len(seq))], skip_special_tokens=False)
        keep = next((j for j, p in enumerate(prefixes) if len(p) > cut), len(seq))
        results[r].tokens = results[r].tokens[:keep]
        results[r].hidden = results[r].hidden[:keep]
    finals = tok.batch_decode([res.token_ids for res in results], skip_special_tokens=True)
    for res, text in zip(results, finals):
        res.text = text.strip()
    return results


def continuation_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (prompt, continuation) as lm-eval splits them: encode the whole text and take
    what follows the prompt's own tokens (falls back to encoding the continuation alone)."""
    ctx = tokenizer(prompt)["input_ids"]
    whole = tokenizer(prompt + continuation)["input_ids"]
    return list(ctx), _continuation(tokenizer, ctx, whole, continuation)


def _continuation(tokenizer, ctx, whole, continuation: str) -> list[int]:
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return list(whole[len(ctx):])
    return list(tokenizer(continuation, add_special_tokens=False)["input_ids"])


def choice_loglikelihoods(loaded, prompt: str, choices: Sequence[str]) -> list[dict]:
    """Sum of log-probabilities of each choice after ``prompt`` (see ``choice_loglikelihoods_batch``)."""
    return choice_loglikelihoods_batch(loaded, [prompt], [choices])[0]


def choice_tokens(tokenizer, prompts: Sequence[str], choices: Sequence[Sequence[str]]):
    """(prompt ids, [choice ids, ...]) per example, tokenized as ``continuation_ids`` does (in two calls)."""
    if len(prompts) != len(choices):
        raise ValueError("one choice list per prompt")
    for i, options in enumerate(choices):
        if not options:
            raise LLMMapsError(f"multiple choice: example {i + 1} has no choices")
    ctxs = tokenizer(list(prompts))["input_ids"] if len(prompts) else []
    wholes = iter(tokenizer([p + c for p, opts in zip(prompts, choices) for c in opts])["input_ids"]
                  if len(prompts) else [])
    out = []
    for i, (ctx, options) in enumerate(zip(ctxs, choices)):
        if not ctx:
            raise LLMMapsError(f"multiple choice: the prompt of example {i + 1} tokenizes to no tokens")
        conts = [_continuation(tokenizer, ctx, next(wholes), c) for c in options]
        if not all(conts):
            raise LLMMapsError(f"multiple choice: a choice of example {i + 1} tokenizes to nothing")
        out.append((list(ctx), conts))
    return out


def _lm_head(model, states):
    """Logits (fp32) of hidden states [M, H] with the model's output layer (and its final logit
    scaling or soft-capping, where the config has one)."""
    import torch

    logits = model.get_output_embeddings()(states).float()
    cfg = model.config
    scale = getattr(cfg, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def choice_loglikelihoods_batch(loaded, prompts: Sequence[str], choices: Sequence[Sequence[str]], *,
                                batch_tokens: int | None = None, max_batch: int | None = None,
                                on_progress: Callable[[int], None] | None = None,
                                on_first: Callable[[np.ndarray, torch.Tensor, np.ndarray], None] | None = None,
                                ) -> list[list[dict]]:
    """For each prompt, the summed log-probability of each of its choices' tokens, and whether
    every choice token is the argmax (lm-eval's ``is_greedy``).

    One forward per batch: each example is one row, its prompt then all its choices, with a tree
    mask (choice tokens attend to the prompt and to their own earlier tokens) and position ids
    restarting after the prompt for every choice; rows are sorted by length and batched within a
    padded-token budget like ``encode`` (``batch_tokens``, ``max_batch``); the LM head runs only on
    the positions that predict a choice token. ``on_progress(n_examples)`` after every batch.
    ``on_first(examples, logprobs, prompt_tokens)`` after every batch: the next-token
    log-probabilities at the end of those prompts ([b, V] float32: the LM-head rows that predict
    each example's first choice token, no extra work) and their prompt tokens (never truncated).
    """
    import torch

    model, tok = loaded.model, loaded.tokenizer
    packed = choice_tokens(tok, prompts, choices)
    if not packed:
        return []
    limit = loaded.max_positions
    for i, (ctx, conts) in enumerate(packed):
        longest = len(ctx) + max(len(c) for c in conts)
        if limit is not None and longest > limit:
            raise LLMMapsError(f"multiple choice: example {i + 1} is {longest} tokens (prompt + choice), over the "
                               f"model's maximum positions ({limit})")
    dev = loaded.device
    batch_tokens, max_batch = batch_limits(dev, batch_tokens, max_batch)
    lengths = [len(ctx) + sum(len(c) for c in conts) for ctx, conts in packed]
    pad = pad_token_id(tok)
    base = getattr(model, "base_model", model)
    results: list[list[dict]] = [[] for _ in packed]
    with torch.inference_mode():
        for rows in plan_batches(lengths, batch_tokens=batch_tokens, max_batch=max_batch):
            width = max(lengths[i] for i in rows)
            ids = np.full((len(rows), width), pad, dtype=np.int64)
            pos = np.zeros((len(rows), width), dtype=np.int64)
            seg = np.full((len(rows), width), -1, dtype=np.int64)  # -1 pad, 0 prompt, j + 1 choice j
            pred_b, pred_t, target, first_at = [], [], [], []
            for b, i in enumerate(rows):
                ctx, conts = packed[i]
                p = len(ctx)
                first_at.append(len(pred_b))  # the prediction at p - 1: the next token after the prompt
                ids[b, :p], pos[b, :p], seg[b, :p] = ctx, np.arange(p), 0
                at = p
                for j, c in enumerate(conts):
                    n_c = len(c)
                    ids[b, at:at + n_c], pos[b, at:at + n_c], seg[b, at:at + n_c] = c, p + np.arange(n_c), j + 1
                    pred_b += [b] * n_c
                    pred_t += [p - 1] + list(range(at, at + n_c - 1))
                    target += c
                    at += n_c
            seg_t = torch.as_tensor(seg, device=dev)
            q = torch.arange(width, device=dev)
            allowed = ((seg_t[:, None, :] >= 0) & (q[None, None, :] <= q[None, :, None])
                       & ((seg_t[:, None, :] == 0) | (seg_t[:, None, :] == seg_t[:, :, None])))
            allowed |= torch.eye(width, dtype=torch.bool, device=dev)[None]  # pad rows: no empty softmax
            out = base(input_ids=torch.as_tensor(ids, device=dev), position_ids=torch.as_tensor(pos, device=dev),
                       attention_mask=attention_mask_4d(model, allowed[:, None]), use_cache=False)
            states = out.last_hidden_state[torch.as_tensor(pred_b, device=dev), torch.as_tensor(pred_t, device=dev)]
            logp = torch.log_softmax(_lm_head(model, states), dim=-1)  # [M, V]
            tgt = torch.as_tensor(target, device=dev)
            lps = logp.gather(-1, tgt[:, None])[:, 0].double().cpu().numpy()
            hits = (logp.argmax(-1) == tgt).cpu().numpy()
            if on_first is not None:
                on_first(np.asarray(rows), logp[torch.as_tensor(first_at, device=dev)],
                         np.array([len(packed[i][0]) for i in rows], dtype=np.int64))
            at = 0
            for b, i in enumerate(rows):
                res = []
                for j, c in enumerate(packed[i][1]):
                    n_c = len(c)
                    res.append({"choice": choices[i][j], "logprob": float(lps[at:at + n_c].sum()), "n_tokens": n_c,
                                "n_chars": len(choices[i][j]), "greedy": bool(hits[at:at + n_c].all())})
                    at += n_c
                results[i] = res
            if on_progress is not None:
                on_progress(len(rows))
    return results
