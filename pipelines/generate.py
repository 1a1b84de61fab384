"""Generation and log-likelihoods with the run's model: the one generator of LLM Maps.

- ``generate`` (``ContinuousBatcher``: ``ContinuousBatcher(loaded, prompts, **settings).run()``):
  continuous batching on a pre-allocated KV cache. Prompts are taken longest first
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


def _shared_prefix(ids: list[list[int]], lengths: np.ndarray) -> int:
    """How many first tokens all prompts share (0 when under ``MIN_SHARED_PREFIX``); at least one
    token of every prompt is left to prefill."""
    first, shared = ids[0], int(lengths.min()) - 1
    for seq in ids[1:]:
        j = 0
        while j < shared and seq[j] == first[j]:
            j += 1
        shared = j
    return shared if shared >= MIN_SHARED_PREFIX else 0


class _SlotBatch:
    """The rows being decoded: slots ``[0, active)`` of the pre-allocated slot cache, each with its
    start column, position id, tokens generated and attention mask; every forward writes column
    ``c`` (decode) or the columns just before it (prefill) and reads from ``r0``, the first column
    any active row uses. ``insert`` prefills prompts into free slots, ``decode`` runs one step of
    the active slots, ``remove`` drops finished slots (the last ones fill the holes)."""

    def __init__(self, model, device, n_slots: int, columns: int, pad: int):
        import torch

        self.model, self.device, self.pad = model, device, pad
        self.slots = _Slots(n_slots, columns)
        self.cache = _slot_cache(model, self.slots)
        self.row_of = np.full(n_slots, -1, dtype=np.int64)
        self.start = np.zeros(n_slots, dtype=np.int64)  # first column of the row's prompt
        self.pos = np.zeros(n_slots, dtype=np.int64)  # position id of the next token fed
        self.n_gen = np.zeros(n_slots, dtype=np.int64)
        self.mask = torch.zeros((n_slots, columns), dtype=torch.bool, device=device)
        self.active = self.c = self.r0 = 0
        self.steps = self.prefills = self.shifts = 0
        self.shared, self.prefix_kv = 0, None

    @property
    def free(self) -> int:
        return self.slots.n_slots - self.active

    def share_prefix(self, prefix: list[int]) -> None:
        """Compute the keys and values of ``prefix`` (the prompts' common first tokens) once; every
        prefill copies them into its slots and forwards only the rest of each prompt."""
        import torch
        from transformers import DynamicCache

        with torch.inference_mode():
            pcache = DynamicCache(config=self.model.config)
            self.model(input_ids=torch.as_tensor([prefix], device=self.device), cache=pcache, use_cache=True,
                       logits_to_keep=1)
        self.shared = len(prefix)
        self.prefix_kv = [(layer.keys, layer.values) for layer in pcache.layers]

    def _move_columns(self, lo: int, hi: int, dst: int) -> None:
        """Move the active slots' columns [lo, hi) to start at ``dst``."""
        a, width = self.active, hi - lo
        self.shifts += 1
        for layer in self.cache.layers:
            if layer.is_initialized:
                layer.keys[:a, :, dst:dst + width] = layer.keys[:a, :, lo:hi].clone()
                layer.values[:a, :, dst:dst + width] = layer.values[:a, :, lo:hi].clone()
        block = self.mask[:a, lo:hi].clone()
        self.mask[:a] = False
        self.mask[:a, dst:dst + width] = block
        self.start[:a] += dst - lo
        self.r0 += dst - lo
        self.c += dst - lo

    def insert(self, group: np.ndarray, seqs: list[list[int]], prompt_lengths: np.ndarray):
        """Prefill rows ``group`` (their prompts' own tokens ``seqs``, after the shared prefix) into
        the next free slots, ending at the current column (the shared prefix, copied, then each
        prompt's tokens, left-padded). Returns their next-token logits [k, V] (float32)."""
        import torch

        dev, shared = self.device, self.shared
        k, width = len(seqs), max(len(s) for s in seqs)
        a = self.active
        if self.c < width + shared:  # shift the active rows right to make room on the left
            if a:
                self._move_columns(self.r0, self.c, self.r0 + width + shared - self.c)
            self.c = width + shared
        c = self.c
        inp, mask2, positions = pad_left(seqs, self.pad, dev)
        valid = mask2.bool()
        causal = torch.ones((width, width), dtype=torch.bool, device=dev).tril()
        allowed = (causal[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=dev)[None]
        if shared:
            for layer, (pk, pv) in zip(self.cache.layers, self.prefix_kv):
                if not layer.is_initialized:
                    layer.lazy_initialization(pk, pv)
                layer.keys[a:a + k, :, c - width - shared:c - width] = pk
                layer.values[a:a + k, :, c - width - shared:c - width] = pv
            allowed = torch.cat([torch.ones((k, width, shared), dtype=torch.bool, device=dev), allowed], dim=-1)
            positions = positions + shared
        self.slots.rows, self.slots.write, self.slots.read = slice(a, a + k), slice(c - width, c), slice(c - width - shared, c)
        out = self.model(input_ids=inp, attention_mask=attention_mask_4d(self.model, allowed[:, None]),
                         position_ids=positions, cache=self.cache, use_cache=True, logits_to_keep=1)
        self.mask[a:a + k] = False
        self.mask[a:a + k, c - width - shared:c - width] = True
        self.mask[a:a + k, c - width:c] = valid
        self.start[a:a + k] = c - width - shared
        self.pos[a:a + k], self.n_gen[a:a + k], self.row_of[a:a + k] = prompt_lengths, 0, group
        self.active = a + k
        self.r0 = int(self.start[:a + k].min())
        self.prefills += 1
        return out.logits[:, -1, :].float()

    def remove(self, keep: np.ndarray) -> np.ndarray:
        """Drop the active slots where ``keep`` is False: the last kept slots fill the holes.
        Returns the old slot of each new slot."""
        import torch

        a = self.active
        new_a = int(keep.sum())
        holes = np.flatnonzero(~keep[:new_a])
        movers = new_a + np.flatnonzero(keep[new_a:a])
        perm = np.arange(new_a)
        if len(holes):
            perm[holes] = movers
            lo, hi = self.r0, self.c
            h_t, m_t = torch.as_tensor(holes, device=self.device), torch.as_tensor(movers, device=self.device)
            for layer in self.cache.layers:
                if layer.is_initialized:
                    layer.keys[h_t, :, lo:hi] = layer.keys[m_t, :, lo:hi]
                    layer.values[h_t, :, lo:hi] = layer.values[m_t, :, lo:hi]
            self.mask[h_t] = self.mask[m_t]
            for arr in (self.row_of, self.start, self.pos, self.n_gen):
                arr[holes] = arr[movers]
        self.active = new_a
        if new_a:
            self.r0 = int(self.start[:new_a].min())
        return perm

    def decode(self, feed, hidden_layer: int | None):
        """One step of the active slots: feed them ``feed`` [A]; returns the next-token logits [A, V]
        (float32) and, with ``hidden_layer``, the fed tokens' hidden states there ([A, H] numpy)."""
        import torch

        a = self.active
        if self.c >= self.slots.columns:  # window full: shift everything to column 0
            self._move_columns(self.r0, self.c, 0)
        c, r0 = self.c, self.r0
        self.mask[:a, c] = True
        self.slots.rows, self.slots.write, self.slots.read = slice(0, a), slice(c, c + 1), slice(r0, c + 1)
        allowed = self.mask[:a, r0:c + 1][:, None, None, :]
        out = self.model(input_ids=feed[:, None], attention_mask=attention_mask_4d(self.model, allowed),
                         position_ids=torch.as_tensor(self.pos[:a, None], device=self.device), cache=self.cache,
                         use_cache=True, output_hidden_states=hidden_layer is not None)
        self.c = c + 1
        self.pos[:a] += 1
        self.steps += 1
        states = (out.hidden_states[hidden_layer][:, -1].float().cpu().numpy() if hidden_layer is not None
                  else None)
        return out.logits[:, -1, :].float(), states


class _Chooser:
    """The next token of each active slot: forced, sampled (temperature, top-p, from the row's own
    counter-based random stream) or greedy; with its log-probability and the top alternatives."""

    def __init__(self, device, *, temperature: float, top_p: float, seed: int, row_keys: np.ndarray,
                 forced_ids: Sequence[int] | None, k_top: int):
        import torch

        self.device, self.temperature, self.top_p, self.seed = device, temperature, top_p, seed
        self.row_keys, self.k_top = row_keys, k_top
        self.forced = (torch.as_tensor(list(forced_ids), dtype=torch.long, device=device)
                       if forced_ids is not None else None)

    def __call__(self, logits, rows: np.ndarray, n_gen: np.ndarray):
        """``rows``, ``n_gen``: the row of each active slot and how many tokens it has generated."""
        import torch

        logp = torch.log_softmax(logits, dim=-1)  # [A, V]
        if self.temperature > 0 and self.forced is None:
            nxt = self._sample(logits, rows, n_gen)
        elif self.forced is not None:
            nxt = self.forced[torch.as_tensor(n_gen, device=self.device)]
        else:
            nxt = logp.argmax(dim=-1)
        chosen = logp.gather(-1, nxt[:, None])[:, 0]
        top = logp.topk(self.k_top, dim=-1) if self.k_top else None
        return nxt, chosen, top

    def _sample(self, logits, rows: np.ndarray, n_gen: np.ndarray):
        import torch

        probs = torch.softmax(logits / self.temperature, dim=-1)
        order_v = None
        if self.top_p < 1.0:
            probs, order_v = probs.sort(dim=-1, descending=True)
            probs = probs * (probs.cumsum(-1) - probs < self.top_p)
        cdf = probs.cumsum(-1)
        u = torch.as_tensor(_uniform(self.seed, self.row_keys[rows], n_gen), dtype=cdf.dtype, device=self.device)
        idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=cdf.shape[-1] - 1)
        return order_v.gather(-1, idx)[:, 0] if order_v is not None else idx[:, 0]


class _Transcript:
    """What every row has generated so far: token ids, log-probabilities, top alternatives, hidden
    states and why it stopped; ``results`` turns it into ``Generation``s."""

    def __init__(self, tokenizer, n: int, m_max: int, k_top: int):
        self.tok, self.k_top = tokenizer, k_top
        self.ids = np.zeros((n, m_max), dtype=np.int64)
        self.logprobs = np.zeros((n, m_max), dtype=np.float64)
        self.count = np.zeros(n, dtype=np.int64)
        self.top_v = np.zeros((n, m_max, k_top), dtype=np.float64) if k_top else None
        self.top_i = np.zeros((n, m_max, k_top), dtype=np.int64) if k_top else None
        self.reasons = np.array(["length"] * n, dtype=object)
        self.hidden: list[list[np.ndarray]] = [[] for _ in range(n)]
        self._texts: dict[int, str] = {}

    def text_of(self, t: int) -> str:
        if t not in self._texts:
            self._texts[t] = self.tok.decode([t])
        return self._texts[t]

    def token(self, r: int, j: int) -> GeneratedToken:
        alts = ([(self.text_of(int(i)), float(v)) for v, i in zip(self.top_v[r, j], self.top_i[r, j])]
                if self.k_top else [])
        t = int(self.ids[r, j])
        return GeneratedToken(id=t, text=self.text_of(t), logprob=float(self.logprobs[r, j]), top=alts)

    def record(self, rows: np.ndarray, at: np.ndarray, toks: np.ndarray, lps: np.ndarray, top, keep: np.ndarray) -> None:
        """Token ``at`` of ``rows``: ``toks[keep]`` with log-probabilities ``lps[keep]`` (``top``: the
        step's top alternatives of every slot, ``keep`` selects the recorded ones)."""
        self.ids[rows, at], self.logprobs[rows, at] = toks[keep], lps[keep]
        if self.k_top:
            self.top_v[rows, at], self.top_i[rows, at] = top.values.cpu().numpy()[keep], top.indices.cpu().numpy()[keep]

    def stop_string_hits(self, rows: np.ndarray, stop_strings: Sequence[str]) -> np.ndarray:
        """Whether each of ``rows``' text so far contains a stop string."""
        decoded = self.tok.batch_decode([self.ids[r, :self.count[r]].tolist() for r in rows], skip_special_tokens=False)
        return np.array([_cut_at_stop(t, stop_strings) is not None for t in decoded], dtype=bool)

    def results(self, prompt_lengths: np.ndarray, stop_strings: Sequence[str]) -> list[Generation]:
        results = []
        for r in range(len(self.count)):
            res = Generation(prompt_tokens=int(prompt_lengths[r]), stop_reason=str(self.reasons[r]))
            res.tokens = [self.token(r, j) for j in range(self.count[r])]
            res.hidden = self.hidden[r]
            results.append(res)
        for r in np.flatnonzero(self.reasons == "stop_string"):
            self._cut_at_stop_string(results[r], self.ids[r, :self.count[r]].tolist(), stop_strings)
        finals = self.tok.batch_decode([res.token_ids for res in results], skip_special_tokens=True)
        for res, text in zip(results, finals):
            res.text = text.strip()
        return results

    def _cut_at_stop_string(self, res: Generation, seq: list[int], stop_strings: Sequence[str]) -> None:
        """Keep only the tokens that end before the stop string starts."""
        cut = _cut_at_stop(self.tok.decode(seq, skip_special_tokens=False), stop_strings)
        prefixes = self.tok.batch_decode([seq[: j + 1] for j in range(len(seq))], skip_special_tokens=False)
        keep = next((j for j, p in enumerate(prefixes) if len(p) > cut), len(seq))
        res.tokens = res.tokens[:keep]
        res.hidden = res.hidden[:keep]


OnToken = Callable[[int, GeneratedToken, "np.ndarray | None"], None]
OnFirst = Callable[[np.ndarray, "torch.Tensor", np.ndarray], None]


class ContinuousBatcher:
    """The continuous-batching generator (see the module's docstring): built on a loaded model and
    prompts with the generation settings (checked and tokenized here), ``run`` generates and
    returns one ``Generation`` per prompt; ``stats`` then holds slots, columns, decode steps,
    prefills, shifts, prefill seconds and the shared prefix. The arguments are ``generate``'s."""

    def __init__(self, loaded, prompts: Sequence[str], *, max_new_tokens: int | Sequence[int] = 64,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 stop_strings: Sequence[str] = (), top_alternatives: int = 0, hidden_layer: int | None = None,
                 max_length: int | None = None, batch_size: int | None = None, keys: Sequence[int] | None = None,
                 share_prefix: bool = True, forced_ids: Sequence[int] | None = None):
        self.loaded, self.n = loaded, len(prompts)
        self.limits = self._limits(max_new_tokens, forced_ids)
        if temperature < 0:
            raise LLMMapsError(f"--temperature: must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise LLMMapsError(f"--top-p: must be in (0, 1], got {top_p}")
        self.stop_strings, self.hidden_layer = stop_strings, hidden_layer
        self.stats: dict = {}
        if self.n == 0:
            return
        self._tokenize(prompts, max_length, share_prefix)
        m_max = int(self.limits.max())
        span = int(self.lengths.max()) + m_max
        self.columns = span + max(16, span // 4)  # room to write before the window is shifted left
        self.n_slots = plan_slots(loaded, self.n, self.columns, batch_size)
        self.k_top = int(top_alternatives or 0)
        row_keys = np.arange(self.n, dtype=np.int64) if keys is None else np.asarray(list(keys), dtype=np.int64)
        self._choose = _Chooser(loaded.device, temperature=temperature, top_p=top_p,
                                seed=0 if seed is None else int(seed), row_keys=row_keys, forced_ids=forced_ids,
                                k_top=self.k_top)
        self._out = _Transcript(loaded.tokenizer, self.n, m_max, self.k_top)

    def _limits(self, max_new_tokens, forced_ids) -> np.ndarray:
        limits = _per_row(max_new_tokens, self.n, "max_new_tokens")
        if forced_ids is not None:
            if not len(forced_ids):
                raise LLMMapsError("forced_ids: no tokens to force")
            limits = np.minimum(limits, len(forced_ids))
        if self.n and limits.min() < 1:
            raise LLMMapsError(f"--max-new-tokens: must be >= 1, got {int(limits.min())}")
        return limits

    def _tokenize(self, prompts: Sequence[str], max_length: int | None, share_prefix: bool) -> None:
        """Token ids of the prompts, cut on the left to leave room for their new tokens; the longest
        is prefilled first (the widest prefill comes first)."""
        limit = self.loaded.max_positions or 2048
        rooms = min(max_length or limit, limit) - self.limits
        if rooms.min() < 1:
            raise LLMMapsError(f"max new tokens (--max-new-tokens, max_new_tokens): {int(self.limits.max())} leaves no "
                               f"room for the prompt (model maximum positions {limit})")
        ids, _ = tokenize_prompts(self.loaded.tokenizer, prompts)
        self.ids = [seq[-int(room):] if len(seq) > room else seq for seq, room in zip(ids, rooms)]
        self.lengths = np.array([len(s) for s in self.ids], dtype=np.int64)
        self.order = np.argsort(-self.lengths, kind="stable")
        self.shared = _shared_prefix(self.ids, self.lengths) if self.n > 1 and share_prefix else 0

    def run(self, *, on_token: OnToken | None = None, on_progress: Callable[[int, int], None] | None = None,
            on_first: OnFirst | None = None) -> list[Generation]:
        """Generate every prompt's continuation (``on_token``, ``on_progress``, ``on_first``: see ``generate``)."""
        import torch

        if self.n == 0:
            return []
        loaded = self.loaded
        batch = _SlotBatch(loaded.model, loaded.device, self.n_slots, self.columns, pad_token_id(loaded.tokenizer))
        if self.shared:
            batch.share_prefix(self.ids[0][:self.shared])
        self._queued, self._prefill_s = 0, 0.0
        self._prefill_tokens, _ = batch_limits(loaded.device)
        logits = None
        with torch.inference_mode():
            while self._queued < self.n or batch.active:
                if self._wants_refill(batch):
                    logits = self._refill(batch, logits, on_first)
                logits = self._step(batch, logits, on_token, on_progress)
        self.stats = {"slots": self.n_slots, "columns": self.columns, "decode_steps": batch.steps,
                      "prefills": batch.prefills, "shifts": batch.shifts, "prefill_seconds": self._prefill_s,
                      "shared_prefix": self.shared}
        return self._out.results(self.lengths, self.stop_strings)

    def _wants_refill(self, batch: _SlotBatch) -> bool:
        """Refill when prompts wait and an eighth of the slots (or all that wait) are free."""
        waiting = self.n - self._queued
        return bool(waiting) and batch.free >= min(max(1, self.n_slots // 8), waiting)

    def _refill(self, batch: _SlotBatch, logits, on_first: OnFirst | None):
        """Prefill waiting prompts into every free slot (in prefills of at most the device's token
        budget); returns the logits of the active rows followed by those of the new ones."""
        import torch

        parts = [] if logits is None else [logits]
        t0 = time.perf_counter()
        free, qi = batch.free, self._queued
        while free and qi < self.n:
            width = int(self.lengths[self.order[qi]]) - self.shared  # what the prefill forwards
            take = int(max(1, min(free, self.n - qi, self._prefill_tokens // max(width, 1))))
            group = self.order[qi: qi + take]
            new = batch.insert(group, [self.ids[r][self.shared:] for r in group], self.lengths[group])
            if on_first is not None:
                on_first(group, torch.log_softmax(new, dim=-1), self.lengths[group])
            parts.append(new)
            qi, free = qi + take, free - take
        self._queued = qi
        self._prefill_s += time.perf_counter() - t0
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _step(self, batch: _SlotBatch, logits, on_token: OnToken | None,
              on_progress: Callable[[int, int], None] | None):
        """Choose and record every active row's next token; rows that finished leave (at once, or
        after the feed that gives their last token's hidden state); the rest are fed their token.
        Returns the next logits (None when no row is active)."""
        import torch

        want_hidden = self.hidden_layer is not None
        a = batch.active
        nxt, chosen, top = self._choose(logits, batch.row_of[:a], batch.n_gen[:a])
        is_eos, finished = self._record(batch, nxt, chosen, top, on_token, on_progress)
        leave_now = is_eos | (finished & (not want_hidden))
        leave_after = finished & want_hidden
        if leave_now.any():
            perm = batch.remove(~leave_now)
            nxt, leave_after = nxt[torch.as_tensor(perm, device=batch.device)], leave_after[perm]
        if not batch.active:
            return None
        logits, states = batch.decode(nxt, self.hidden_layer)
        if want_hidden:
            for s in range(batch.active):
                r = int(batch.row_of[s])
                self._out.hidden[r].append(states[s])
                if on_token is not None:
                    on_token(r, self._out.token(r, self._out.count[r] - 1), states[s])
        if leave_after.any():
            perm = batch.remove(~leave_after)
            logits = logits[torch.as_tensor(perm, device=batch.device)] if batch.active else None
        return logits

    def _record(self, batch: _SlotBatch, nxt, chosen, top, on_token: OnToken | None,
                on_progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray]:
        """Record the chosen tokens (EOS is not recorded); returns per active slot whether it chose
        EOS and whether it is finished (its limit or a stop string)."""
        out, a = self._out, batch.active
        toks, lps = nxt.cpu().numpy(), chosen.cpu().numpy()
        rows = batch.row_of[:a].copy()
        eos = self.loaded.tokenizer.eos_token_id
        is_eos = toks == eos if eos is not None else np.zeros(a, dtype=bool)
        rec = np.flatnonzero(~is_eos)
        rr, jj = rows[rec], batch.n_gen[rec]
        out.record(rr, jj, toks, lps, top, rec)
        batch.n_gen[rec] += 1
        out.count[rr] = batch.n_gen[rec]
        out.reasons[rows[is_eos]] = "eos"
        finished = np.zeros(a, dtype=bool)
        finished[rec] = batch.n_gen[rec] >= self.limits[rr]
        if self.stop_strings:
            hit = out.stop_string_hits(rr, self.stop_strings)
            if hit.any():
                finished[rec[hit]] = True
                out.reasons[rr[hit]] = "stop_string"
        if on_token is not None and self.hidden_layer is None:
            for r, j in zip(rr, jj):
                on_token(int(r), out.token(r, j), None)
        if on_progress is not None:
            on_progress(int(is_eos.sum() + finished.sum()), len(rec))
        return is_eos, finished


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
    """Generate a continuation for each prompt (any number: they are batched continuously; see
    ``ContinuousBatcher``).

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
    batcher = ContinuousBatcher(loaded, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=seed, stop_strings=stop_strings, top_alternatives=top_alternatives,
                                hidden_layer=hidden_layer, max_length=max_length, batch_size=batch_size, keys=keys,
                                share_prefix=share_prefix, forced_ids=forced_ids)
    results = batcher.run(on_token=on_token, on_progress=on_progress, on_first=on_first)
    if stats is not None:
        stats.update(batcher.stats)
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
