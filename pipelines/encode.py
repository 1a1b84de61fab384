"""Encode prompts: the hidden state at each prompt's last token, for selected layers.

Exactness contract (docs/run-folder.md, "Encodings"): row i of ``encodings/layer_<k>.npy`` equals, within fp16
rounding, ``hidden_states[k][0, -1]`` of a forward pass on ``tokenizer(prompt_i)`` alone (plus EOS
when ``add_eos``; keeping the *last* ``max_length`` tokens when longer). Batching sorts prompts
by length, pads on the left, and passes a matching attention mask and position ids, so padding
never changes an encoding. Results stream into memory-mapped ``.npy`` files with a ``done``
mask, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import ENCODINGS, save_npy_atomic, write_json_atomic

FP16_MAX = float(np.finfo(np.float16).max)


def default_layers(num_layers: int, n: int = 4) -> list[int]:
    """The last layer plus ``n - 1`` evenly spaced ones (indices into ``hidden_states``)."""
    picks = {round(num_layers * (i + 1) / n) for i in range(n)}
    return sorted(k for k in picks if 0 < k <= num_layers)


def normalize_layers(layers: Sequence[int] | str | None, num_layers: int) -> list[int]:
    """Stored layer indices, sorted: ``None`` the default, ``"all"`` every hidden state (0 = the
    embeddings .. num_layers), else the given ones (negative counts from the end)."""
    if isinstance(layers, str):
        if layers != "all":
            raise LLMMapsError(f"--layers: expected 'all' or comma-separated integers, got '{layers}'")
        return list(range(num_layers + 1))
    if not layers:
        return default_layers(num_layers)
    out = []
    for k in layers:
        k = int(k)
        if not -num_layers - 1 <= k <= num_layers:
            raise LLMMapsError(f"--layers: layer {k} is out of range (hidden_states has indices "
                               f"0..{num_layers})")
        out.append(k % (num_layers + 1))
    return sorted(set(out))


def tokenize_prompts(tokenizer, prompts: Sequence[str], *, add_eos: bool = False,
                     max_length: int | None = None) -> tuple[list[list[int]], np.ndarray]:
    """Token ids per prompt exactly as ``tokenizer(prompt)`` gives them, + EOS, keeping the last
    ``max_length`` tokens. Returns (ids, truncated[N] bool)."""
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise LLMMapsError("--add-eos: the tokenizer has no EOS token")
    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    ids, truncated = [], np.zeros(len(encoded), dtype=bool)
    for i, seq in enumerate(encoded):
        seq = list(seq)
        if add_eos:
            seq.append(eos)
        if not seq:
            raise LLMMapsError(f"prompt {i + 1}: tokenizes to no tokens")
        if max_length is not None and len(seq) > max_length:
            seq = seq[-max_length:]
            truncated[i] = True
        ids.append(seq)
    return ids, truncated


def plan_batches(lengths: Sequence[int], *, batch_tokens: int, max_batch: int) -> list[np.ndarray]:
    """Length-sorted batches (longest first, so memory peaks early) within a padded-token budget."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches, current, longest = [], [], 0
    for idx in order:
        n = int(lengths[idx])
        new_longest = max(longest, n)
        if current and (new_longest * (len(current) + 1) > batch_tokens or len(current) >= max_batch):
            batches.append(np.array(current))
            current, new_longest = [], n
        current.append(int(idx))
        longest = new_longest
    if current:
        batches.append(np.array(current))
    return batches


def padded_tokens(lengths: np.ndarray, rows: np.ndarray) -> int:
    """Tokens one left-padded batch forwards (its size times its longest prompt)."""
    return int(len(rows) * lengths[rows].max()) if len(rows) else 0


def progress_order(batches: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """The longest batch first (memory peaks at once), the others in a seeded random order.

    Length-sorted order makes a progress bar lie: the first (longest) batches run at a rate
    far below the average, so early ETAs are several times too long. In random order the rate
    so far is an unbiased estimate of the rate to come. Order never changes an encoding.
    """
    if len(batches) <= 2:
        return list(batches)
    rest = np.random.default_rng(seed).permutation(len(batches) - 1) + 1
    return [batches[0]] + [batches[i] for i in rest]


def pad_left(batch: Sequence[Sequence[int]], pad_id: int, device: str):
    """Left-padded input ids, attention mask and position ids (0 at each prompt's first token)."""
    import torch

    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def pad_token_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


def last_token_states(model, batch: Sequence[Sequence[int]], layers: Sequence[int], *, pad_id: int,
                      device: str) -> dict[int, np.ndarray]:
    """Forward one left-padded batch; return {layer: float32 [B, H]} at the last position."""
    import torch

    ids, mask, positions = pad_left(batch, pad_id, device)
    base = getattr(model, "base_model", model)  # skip the LM head: logits are not needed
    with torch.inference_mode():
        out = base(input_ids=ids, attention_mask=mask, position_ids=positions,
                   output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states
    return {k: hidden[k][:, -1, :].float().cpu().numpy() for k in layers}


def states_to_fp16(states: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], int]:
    """float32 states -> float16 as stored (values beyond the fp16 range clipped); (states, n clipped)."""
    out, clipped = {}, 0
    for k, arr in states.items():
        over = np.abs(arr) > FP16_MAX
        if over.any():
            clipped += int(over.sum())
            np.clip(arr, -FP16_MAX, FP16_MAX, out=arr)
        out[k] = arr.astype(np.float16)
    return out, clipped


def resolve_max_length(loaded, max_length: int | None) -> int:
    limit = loaded.max_positions
    if max_length is None:
        max_length = min(limit or 2048, 2048)
    if limit is not None and max_length > limit:
        raise LLMMapsError(f"--max-length: {max_length} exceeds the model's maximum positions ({limit})")
    return max_length


def batch_limits(device: str, batch_tokens: int | None = None, max_batch: int | None = None) -> tuple[int, int]:
    """(padded tokens per batch, prompts per batch): the defaults depend on the device."""
    on_gpu = str(device).startswith("cuda")
    return batch_tokens or (32768 if on_gpu else 1024), max_batch or (256 if on_gpu else 64)


@dataclass
class EncodeResult:
    layers: list[int]
    n_tokens: np.ndarray  # [N] tokens per prompt after truncation
    truncated: np.ndarray  # [N] bool
    seconds: float
    tokens_encoded: int  # tokens forwarded in this call (0 when everything was resumed)
    resumed_rows: int
    clipped_values: int  # values outside the float16 range, clipped
    device: str | None = None  # where it ran, when not the encoder's own device (distributed workers)
    dtype: str | None = None
    distributed: dict | None = None  # chunks and workers of a distributed encode


def _fingerprint(ids: list[list[int]], layers: list[int], extra: dict) -> str:
    digest = hashlib.sha256(json.dumps({"layers": layers, **extra}, sort_keys=True, default=str).encode())
    for seq in ids:
        digest.update(np.asarray(seq, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def encode_identity(loaded) -> dict:
    """What, besides the token ids and layers, decides an encoding (part of resume fingerprints)."""
    return {"model": loaded.info.get("model"), "sha": loaded.info.get("file_sha256"), "dtype": loaded.dtype,
            "hidden": int(loaded.model.config.hidden_size)}


class Resumable:
    """Float16 arrays filled batch by batch into memory-mapped ``.npy`` files, with a ``done`` mask of
    the units written (prompts, or the passes of the views). The arrays are flushed and the mask
    saved every ``checkpoint_seconds`` and when the loop ends, however it ends; a later run whose
    ``fingerprint`` (what decides the values) is the same resumes from the last checkpoint, any other
    starts over. ``files``: key -> (path, shape); ``stale``: files to delete when starting over;
    ``state``: kept beside the fingerprint in ``.<prefix>state.json`` (contract.EncodeState, ViewsState)."""

    def __init__(self, enc_dir: Path, prefix: str, fingerprint: str, n: int,
                 files: dict[Hashable, tuple[Path, tuple[int, int]]], stale: Iterable[Path], state: dict[str, Any]):
        self.state_path, self.done_path = enc_dir / f".{prefix}state.json", enc_dir / f".{prefix}done.npy"
        resume = False
        if self.state_path.exists() and self.done_path.exists():
            try:
                resume = json.loads(self.state_path.read_text())["fingerprint"] == fingerprint
            except (json.JSONDecodeError, KeyError):
                resume = False
        if resume:
            self.done = np.load(self.done_path)
            self.arrays = {key: np.lib.format.open_memmap(path, mode="r+") for key, (path, _) in files.items()}
        else:
            for old in list(stale):
                old.unlink()
            for path, _ in files.values():
                path.parent.mkdir(parents=True, exist_ok=True)
            self.done = np.zeros(n, dtype=bool)
            self.arrays = {key: np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
                           for key, (path, shape) in files.items()}
            write_json_atomic(self.state_path, {"fingerprint": fingerprint, **state})
            save_npy_atomic(self.done_path, self.done)
        self.resumed = int(self.done.sum())

    def checkpoint(self) -> None:
        for arr in self.arrays.values():
            arr.flush()
        save_npy_atomic(self.done_path, self.done)

    def run(self, batches: Sequence[np.ndarray], bar, step: Callable[[int, np.ndarray], int], *,
            on_batch: Callable[[int, np.ndarray], None] | None = None, checkpoint_seconds: float = 10.0) -> float:
        """``step(b, rows)`` forwards batch ``b`` and writes its ``rows`` into ``arrays``, returning
        how far the bar moves; then the rows count as done. Returns the seconds it took; once every
        batch is done the mask and state files go (the arrays are complete)."""
        start = last = time.perf_counter()
        try:
            for b, rows in enumerate(batches):
                advance = step(b, rows)
                self.done[rows] = True
                bar.update(advance)
                if on_batch is not None:
                    on_batch(b, rows)
                if time.perf_counter() - last > checkpoint_seconds:
                    self.checkpoint()
                    last = time.perf_counter()
        finally:
            self.checkpoint()
            bar.close()
        seconds = time.perf_counter() - start
        self.arrays.clear()
        self.state_path.unlink(missing_ok=True)
        self.done_path.unlink(missing_ok=True)
        return seconds


def encode_to_folder(loaded, prompts: Sequence[str], out_dir: str | Path, *, layers: Sequence[int],
                     add_eos: bool = False, max_length: int | None = None,
                     batch_tokens: int | None = None, max_batch: int | None = None,
                     progress: bool = True, checkpoint_seconds: float = 10.0,
                     on_batch: Callable[[int, np.ndarray], None] | None = None) -> EncodeResult:
    """Encode ``prompts`` into ``out_dir/encodings/layer_<k>.npy`` (float16), resumably."""
    from tqdm.auto import tqdm

    model, tokenizer = loaded.model, loaded.tokenizer
    layers = normalize_layers(layers, loaded.num_layers)
    max_length = resolve_max_length(loaded, max_length)
    batch_tokens, max_batch = batch_limits(loaded.device, batch_tokens, max_batch)

    ids, truncated = tokenize_prompts(tokenizer, prompts, add_eos=add_eos, max_length=max_length)
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    n, hidden = len(ids), int(model.config.hidden_size)
    enc_dir = Path(out_dir) / ENCODINGS
    enc_dir.mkdir(parents=True, exist_ok=True)
    store = Resumable(enc_dir, "", _fingerprint(ids, layers, encode_identity(loaded)), n,
                      {k: (enc_dir / f"layer_{k}.npy", (n, hidden)) for k in layers},
                      stale=enc_dir.glob("layer_*.npy"), state={"n": n, "layers": layers})

    todo = np.flatnonzero(~store.done)
    batches = plan_batches(lengths[todo], batch_tokens=batch_tokens, max_batch=max_batch)
    batches = [todo[b] for b in progress_order(batches)]
    pad_id = pad_token_id(tokenizer)
    total_tokens = int(lengths[todo].sum())
    clipped = examples_done = 0
    start = time.perf_counter()
    # one bar over the work itself: padded tokens forwarded, batches in an order whose running
    # rate is representative (see progress_order), so the percentage and the ETA mean what they say
    bar = tqdm(total=sum(padded_tokens(lengths, rows) for rows in batches), unit="tok", unit_scale=True,
               disable=not progress, desc="encode", dynamic_ncols=True, smoothing=0.05)

    def step(b: int, rows: np.ndarray) -> int:
        nonlocal clipped, examples_done
        states = last_token_states(model, [ids[i] for i in rows], layers, pad_id=pad_id, device=loaded.device)
        half, n_clipped = states_to_fp16(states)
        clipped += n_clipped
        order = np.argsort(rows)
        for k, arr in half.items():
            store.arrays[k][rows[order]] = arr[order]
        examples_done += len(rows)
        elapsed = time.perf_counter() - start
        bar.set_postfix_str(f"{store.resumed + examples_done}/{n} prompts, "
                            f"{examples_done / max(elapsed, 1e-9):.1f} prompts/s", refresh=False)
        return padded_tokens(lengths, rows)

    seconds = store.run(batches, bar, step, on_batch=on_batch, checkpoint_seconds=checkpoint_seconds)
    return EncodeResult(layers=layers, n_tokens=lengths, truncated=truncated, seconds=seconds,
                        tokens_encoded=total_tokens, resumed_rows=store.resumed, clipped_values=clipped)


def encode_one(loaded, prompt: str, *, layers: Sequence[int], add_eos: bool = False,
               max_length: int | None = None) -> dict[int, np.ndarray]:
    """The same encoding for a single prompt (what the worker does for a typed prompt)."""
    ids, _ = tokenize_prompts(loaded.tokenizer, [prompt], add_eos=add_eos, max_length=max_length)
    states = last_token_states(loaded.model, ids, list(layers), pad_id=pad_token_id(loaded.tokenizer),
                               device=loaded.device)
    return {k: v[0] for k, v in states.items()}


def encode_prompts(loaded, prompts: Sequence[str], *, layers: Sequence[int], add_eos: bool = False,
                   max_length: int | None = None, batch_tokens: int | None = None, max_batch: int | None = None,
                   progress: bool = False, desc: str = "encode") -> dict[int, np.ndarray]:
    """The build's encodings of ``prompts`` in memory: {layer: float16 [N, H]} (same tokenisation,
    truncation, pooling and fp16 rounding as ``encode_to_folder``), in length-sorted batches."""
    from tqdm.auto import tqdm

    layers = list(layers)
    ids, _ = tokenize_prompts(loaded.tokenizer, prompts, add_eos=add_eos, max_length=max_length)
    hidden = int(loaded.model.config.hidden_size)
    out = {k: np.zeros((len(ids), hidden), dtype=np.float16) for k in layers}
    batch_tokens, max_batch = batch_limits(loaded.device, batch_tokens, max_batch)
    pad = pad_token_id(loaded.tokenizer)
    with tqdm(total=len(ids), unit="prompt", desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for rows in plan_batches([len(s) for s in ids], batch_tokens=batch_tokens, max_batch=max_batch):
            half, _ = states_to_fp16(last_token_states(loaded.model, [ids[i] for i in rows], layers, pad_id=pad,
                                                       device=loaded.device))
            for k, arr in half.items():
                out[k][rows] = arr
            bar.update(len(rows))
    return out
