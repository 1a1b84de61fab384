"""The completion view and the token atlas, encoded together with the prompt view in one pass.

Three kinds of state, all from teacher-forced forward passes of the run's model:

- **prompt** (``encodings/layer_<k>.npy``): the state at the last prompt token (see encode.py).
- **completion** (``encodings/completion/layer_<k>.npy``, float16 ``[N, H]``): the state at an EOS
  appended after prompt and completion. The ids are ``tokenizer(prompt).input_ids +
  tokenizer(completion, add_special_tokens=False).input_ids + [eos]``, the last ``max_length``
  kept. The completion of a train row is its ``reference``; of a test row its ``output`` when
  scored, else its ``reference`` (``completion_source``). An empty completion ('') gives
  ``prompt ids + [eos]`` (``ViewPlan.completion_empty`` counts those rows).
- **tokens** (the atlas, ``encodings/tokens/layer_<k>.npy`` float16 ``[T, H]`` + ``tokens.parquet``):
  for every (sampled) train row, the state of each reference token at its own position in
  ``prompt ids + reference ids`` (no EOS; the last ``max_length`` kept) — the state the token has
  when it is fed back during generation.

Attention is causal, so the states of a prefix do not depend on what follows it: every sequence
a row needs that is a prefix of another one it needs is read from the longer one's forward pass
(``plan_segments``). Without truncation a train row costs one pass (prompt end, every reference
token and the completion EOS); when the longest sequence is truncated on the left the prefix
changes and the row gets separate passes. Each row of every file equals the state of an
unbatched forward pass over its own ids (batches are left-padded with explicit position ids).

Results stream into memory-mapped ``.npy`` files with a ``done`` mask per pass, so an interrupted
call resumes where it stopped (same ids, layers and model: byte-identical files).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import ENCODINGS
from pipelines.encode import (EncodeResult, Resumable, batch_limits, encode_identity, normalize_layers, pad_left,
                              pad_token_id, plan_batches, progress_order, resolve_max_length, states_to_fp16)

VIEWS = ("prompt", "completion")
COMPLETION = "completion"
TOKENS = "tokens"
DEFAULT_ATLAS_MAX_TOKENS = 200_000


def parse_views(text: str | Sequence[str] | None) -> list[str]:
    """``"prompt,completion"`` -> ["prompt", "completion"]; unknown names are a one-line error."""
    if text is None:
        return ["prompt"]
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if str(t).strip()]
    for name in names:
        if name not in VIEWS:
            raise LLMMapsError(f"--views: unknown view '{name}' (known: {', '.join(VIEWS)})")
    if not names:
        raise LLMMapsError("--views: give at least one view (prompt, completion)")
    return [v for v in VIEWS if v in names]


def view_dir(run_dir: str | Path, view: str) -> Path:
    """Folder of a view's layer files (the prompt view keeps today's place)."""
    return Path(run_dir) / ENCODINGS if view == "prompt" else Path(run_dir) / ENCODINGS / view


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def completion_texts(frame) -> tuple[list[str], list[str]]:
    """(completion text, source) per row: ``reference`` for train rows; ``output`` for scored test
    rows, else ``reference``. An empty completion (an empty output: the model said nothing; an empty
    reference, e.g. Dolly's "Say nothing." rows) is well defined: the view encodes the prompt
    followed by EOS (``empty_completions`` counts them). A null reference where the reference is the
    completion is a one-line error: null means the row has none, so there is nothing to encode."""
    texts, sources = [], []
    has_score = "score" in frame.columns
    for i, row in enumerate(frame.itertuples(index=False)):
        out = _text(getattr(row, "output", None))
        scored = has_score and _text(getattr(row, "score", None)) is not None
        if row.split != "train" and scored and out is not None:
            texts.append(out)
            sources.append("output")
            continue
        text = _text(row.reference)
        if text is None:
            raise LLMMapsError(f"examples row {i} (id '{row.example_id}'), field 'reference': null, no completion to "
                               "encode (the completion view needs a reference, or an output when scored; an empty "
                               "reference '' is encoded as prompt + EOS)")
        texts.append(text)
        sources.append("reference")
    return texts, sources


def empty_completions(texts: Sequence[str]) -> int:
    """Rows whose completion is empty (''): the completion view encodes them as prompt + EOS."""
    return sum(1 for t in texts if t == "")


# --------------------------------------------------------------------------- planning

@dataclass
class Segment:
    """One forward pass: ``ids`` and the states to keep: (target, destination row, position)."""
    ids: list[int]
    takes: list[tuple[str, int, int]] = field(default_factory=list)


def _keep_last(seq: list[int], max_length: int) -> tuple[list[int], int]:
    """The last ``max_length`` ids and how many were cut from the left."""
    cut = max(0, len(seq) - max_length)
    return seq[cut:], cut


def plan_segments(wants: list[tuple[list[int], list[tuple[str, int, int]]]]) -> list[Segment]:
    """Merge one row's sequences: one that is a prefix of a longer one is read from its pass."""
    segments: list[Segment] = []
    for ids, takes in sorted(wants, key=lambda w: -len(w[0])):
        host = next((s for s in segments if s.ids[: len(ids)] == ids), None)
        if host is None:
            segments.append(Segment(list(ids), list(takes)))
        else:
            host.takes.extend(takes)
    return segments


@dataclass
class ViewPlan:
    segments: list[Segment]
    n_rows: dict  # target -> rows in its files
    prompt_tokens: np.ndarray | None  # [N] (prompt view)
    prompt_truncated: np.ndarray | None
    completion_tokens: np.ndarray | None  # [N] (completion view)
    completion_truncated: np.ndarray | None
    completion_source: list[str] | None
    tokens: Any  # pandas frame of atlas tokens (row, example_id, position, token_id, token_text)
    atlas: dict | None  # what the manifest records about the atlas
    completion_empty: int | None = None  # rows with an empty completion, encoded as prompt + EOS (completion view)


def atlas_sample(n_tokens: np.ndarray, rows: np.ndarray, *, max_tokens: int, seed: int) -> tuple[np.ndarray, bool]:
    """Rows whose reference tokens go into the atlas: all when they fit in ``max_tokens``, else a
    seeded random order of the rows taken while the total stays within the cap (sorted)."""
    rows = np.asarray(rows, dtype=np.int64)
    total = int(n_tokens[rows].sum()) if len(rows) else 0
    if total <= max_tokens:
        return rows, False
    order = np.random.default_rng(seed).permutation(rows)
    chosen, used = [], 0
    for r in order:
        t = int(n_tokens[r])
        if used + t <= max_tokens:
            chosen.append(int(r))
            used += t
    return np.sort(np.asarray(chosen, dtype=np.int64)), True


def plan_views(tokenizer, frame, *, views: Sequence[str], atlas: bool, max_length: int, add_eos: bool = False,
               atlas_max_tokens: int = DEFAULT_ATLAS_MAX_TOKENS, seed: int = 0,
               completion_tokenizer=None, completion_rows: np.ndarray | None = None) -> ViewPlan:
    """Every forward pass the requested views need, prefixes merged (see module doc).
    ``completion_rows`` [N] bool: encode the completion view only there (the rest is reused)."""
    import pandas as pd

    eos = tokenizer.eos_token_id
    n = len(frame)
    views = list(views)
    if COMPLETION in views and eos is None:
        raise LLMMapsError("--views completion: the tokenizer has no EOS token to pool at")
    if atlas and not (frame["split"] == "train").any():
        raise LLMMapsError("--token-atlas: the run has no train rows (the atlas holds train references)")
    if atlas_max_tokens is not None and atlas_max_tokens < 1:
        raise LLMMapsError(f"--atlas-max-tokens: must be >= 1, got {atlas_max_tokens}")
    prompts = frame["prompt"].tolist()
    prompt_ids = [list(s) for s in tokenizer(prompts, add_special_tokens=True)["input_ids"]] if n else []
    for i, s in enumerate(prompt_ids):
        if not s and not add_eos:
            raise LLMMapsError(f"examples row {i} (id '{frame['example_id'].iloc[i]}'), field 'prompt': "
                               "tokenizes to no tokens")
    comp_texts = comp_sources = None
    if COMPLETION in views:
        comp_texts, comp_sources = completion_texts(frame)
    is_train = (frame["split"] == "train").to_numpy()
    ref_ids: dict[int, list[int]] = {}
    atlas_rows = np.zeros(0, dtype=np.int64)
    sampled = False
    if atlas:
        train_rows = np.flatnonzero(is_train)
        refs = [_text(frame["reference"].iloc[r]) for r in train_rows]
        for r, text in zip(train_rows, refs):  # an empty reference ('') adds no tokens; a null one is an error
            if text is None:
                raise LLMMapsError(f"examples row {r} (id '{frame['example_id'].iloc[r]}'), field 'reference': "
                                   "null (the token atlas needs a reference, possibly empty, for each train row)")
        encoded = tokenizer(refs, add_special_tokens=False)["input_ids"] if refs else []
        kept = np.zeros(n, dtype=np.int64)
        for r, ids in zip(train_rows, encoded):
            ref_ids[int(r)] = list(ids)
            whole = len(prompt_ids[r]) + len(ids)
            kept[r] = min(len(ids), max_length) if whole > max_length else len(ids)
        atlas_rows, sampled = atlas_sample(kept, train_rows, max_tokens=int(atlas_max_tokens), seed=seed)
        atlas_set = set(atlas_rows.tolist())
    comp_ids_all = None
    if COMPLETION in views and completion_tokenizer is None:
        comp_ids_all = tokenizer(comp_texts, add_special_tokens=False)["input_ids"] if n else []

    segments: list[Segment] = []
    p_tokens = p_trunc = c_tokens = c_trunc = None
    if "prompt" in views:
        p_tokens, p_trunc = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    if COMPLETION in views:
        c_tokens, c_trunc = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    tok_rows: dict[str, list] = {"row": [], "example_id": [], "position": [], "token_id": []}
    t_count = 0
    ids_col = frame["example_id"].astype(str).tolist()
    for i in range(n):
        wants = []
        base = prompt_ids[i]
        if "prompt" in views:
            seq, cut = _keep_last(base + ([eos] if add_eos else []), max_length)
            p_tokens[i], p_trunc[i] = len(seq), cut > 0
            wants.append((seq, [("prompt", i, len(seq) - 1)]))
        if COMPLETION in views and comp_ids_all is not None:
            seq, cut = _keep_last(base + list(comp_ids_all[i]) + [eos], max_length)
            c_tokens[i], c_trunc[i] = len(seq), cut > 0
            if completion_rows is None or completion_rows[i]:
                wants.append((seq, [(COMPLETION, i, len(seq) - 1)]))
        if atlas and i in atlas_set:
            ref = ref_ids[i]
            seq, cut = _keep_last(base + ref, max_length)
            takes = []
            for j, tid in enumerate(ref):
                pos = len(base) + j - cut
                if pos < 0:
                    continue  # cut off with the left of an over-long reference
                takes.append((TOKENS, t_count, pos))
                tok_rows["row"].append(t_count)
                tok_rows["example_id"].append(ids_col[i])
                tok_rows["position"].append(j)
                tok_rows["token_id"].append(int(tid))
                t_count += 1
            wants.append((seq, takes))
        segments.extend(s for s in plan_segments(wants) if s.takes)
    tokens = None
    atlas_info = None
    if atlas:
        texts = tokenizer.batch_decode([[t] for t in tok_rows["token_id"]]) if t_count else []
        tokens = pd.DataFrame({"row": np.asarray(tok_rows["row"], dtype=np.int64),
                               "example_id": pd.Series(tok_rows["example_id"], dtype=object),
                               "position": np.asarray(tok_rows["position"], dtype=np.int32),
                               "token_id": np.asarray(tok_rows["token_id"], dtype=np.int64),
                               "token_text": pd.Series(texts, dtype=object)})
        n_train = int(is_train.sum())
        atlas_info = {"max_tokens": int(atlas_max_tokens), "sampled": bool(sampled), "seed": int(seed),
                      "examples": int(len(atlas_rows)), "train_examples": n_train, "tokens": int(t_count)}
    n_rows = {"prompt": n, COMPLETION: n, TOKENS: t_count}
    return ViewPlan(segments=segments, n_rows=n_rows, prompt_tokens=p_tokens, prompt_truncated=p_trunc,
                    completion_tokens=c_tokens, completion_truncated=c_trunc, completion_source=comp_sources,
                    tokens=tokens, atlas=atlas_info,
                    completion_empty=empty_completions(comp_texts) if comp_texts is not None else None)


def completion_segments(tokenizer, prompts: Sequence[str], texts: Sequence[str], *, max_length: int,
                        eos_token_id: int | None) -> tuple[list[Segment], np.ndarray, np.ndarray]:
    """Completion-view passes for another model's tokenizer: ``prompt ids + completion ids (+ EOS
    when the tokenizer has one)``, pooled at the last token."""
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    c_ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    segs, lengths, trunc = [], np.zeros(len(p_ids), dtype=np.int64), np.zeros(len(p_ids), dtype=bool)
    for i, (p, c) in enumerate(zip(p_ids, c_ids)):
        seq, cut = _keep_last(list(p) + list(c) + ([eos_token_id] if eos_token_id is not None else []), max_length)
        lengths[i], trunc[i] = len(seq), cut > 0
        segs.append(Segment(seq, [(COMPLETION, i, len(seq) - 1)]))
    return segs, lengths, trunc


# --------------------------------------------------------------------------- forward passes

def states_at(model, batch: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], layers: Sequence[int], *,
              pad_id: int, device: str) -> dict[int, list[np.ndarray]]:
    """Forward one left-padded batch; {layer: [float32 [len(positions[b]), H] per sequence]}."""
    import torch

    ids, mask, pos = pad_left(batch, pad_id, device)
    base = getattr(model, "base_model", model)  # skip the LM head: logits are not needed
    with torch.inference_mode():
        out = base(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True, use_cache=False)
    width = ids.shape[1]
    rows = np.concatenate([np.full(len(p), b) for b, p in enumerate(positions)]).astype(np.int64)
    cols = np.concatenate([width - len(seq) + np.asarray(p, dtype=np.int64) for seq, p in zip(batch, positions)])
    bounds = np.cumsum([0] + [len(p) for p in positions])
    r_t, c_t = torch.as_tensor(rows, device=ids.device), torch.as_tensor(cols, device=ids.device)
    out_states = {}
    for k in layers:
        flat = out.hidden_states[k][r_t, c_t].float().cpu().numpy()  # [sum(P), H]
        out_states[k] = [flat[bounds[b]:bounds[b + 1]] for b in range(len(batch))]
    return out_states


@dataclass
class ViewsResult:
    plan: ViewPlan
    layers: dict  # target -> layers written
    seconds: float
    tokens_forwarded: int  # tokens run through the model in this call (0 when all was resumed)
    resumed_segments: int
    clipped_values: int
    device: str | None = None  # where the passes ran, when not the model's own device (distributed workers)
    dtype: str | None = None
    distributed: dict | None = None  # chunks and workers of distributed passes

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_forwarded / max(self.seconds, 1e-9)


def _fingerprint(segments: list[Segment], layers: dict, n_rows: dict, identity: dict) -> str:
    digest = hashlib.sha256(json.dumps({"layers": layers, "n_rows": n_rows, **identity}, sort_keys=True,
                                       default=str).encode())
    for s in segments:
        digest.update(np.asarray(s.ids, dtype=np.int64).tobytes())
        digest.update(b"|")
        digest.update(json.dumps(s.takes).encode())
        digest.update(b";")
    return digest.hexdigest()


def target_file(out_dir: Path, target: str, layer: int) -> Path:
    return view_dir(out_dir, target) / f"layer_{int(layer)}.npy"


def segment_targets(segments: list[Segment], layers: dict, n_rows: dict) -> tuple[list[str], list[int]]:
    """(targets written, sorted, every layer any of them keeps): the files a set of passes fills."""
    targets = sorted({t for s in segments for t, _, _ in s.takes} | {t for t in layers if n_rows.get(t)})
    targets = [t for t in targets if t in layers]
    return targets, sorted({int(k) for t in targets for k in layers[t]})


def run_segments(loaded, segments: list[Segment], out_dir: str | Path, *, layers: dict, n_rows: dict,
                 batch_tokens: int | None = None, max_batch: int | None = None, progress: bool = True,
                 checkpoint_seconds: float = 10.0, desc: str = "encode views",
                 on_batch: Callable[[int, np.ndarray], None] | None = None) -> tuple[float, int, int, int]:
    """Forward every segment and stream the kept states into ``out_dir/encodings/...`` (float16),
    resumably. ``layers``: target -> layers to write. Returns (seconds, tokens forwarded, resumed
    segments, values clipped to the float16 range)."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    enc_dir = out_dir / ENCODINGS
    enc_dir.mkdir(parents=True, exist_ok=True)
    hidden = int(loaded.model.config.hidden_size)
    targets, all_layers = segment_targets(segments, layers, n_rows)
    fp = _fingerprint(segments, {t: layers[t] for t in targets}, {t: n_rows[t] for t in targets},
                      encode_identity(loaded))
    store = Resumable(enc_dir, "views-", fp, len(segments),
                      {(t, k): (target_file(out_dir, t, k), (n_rows[t], hidden)) for t in targets for k in layers[t]},
                      stale=(old for t in targets for old in view_dir(out_dir, t).glob("layer_*.npy")),
                      state={"segments": len(segments)})

    lengths = np.array([len(s.ids) for s in segments], dtype=np.int64)
    todo = np.flatnonzero(~store.done)
    batch_tokens, max_batch = batch_limits(loaded.device, batch_tokens, max_batch)
    batches = [todo[b] for b in plan_batches(lengths[todo], batch_tokens=batch_tokens, max_batch=max_batch)]
    # longest batch first, then a seeded shuffle: the rate so far predicts the rest (honest ETA)
    batches = progress_order(batches)
    pad_id = pad_token_id(loaded.tokenizer)
    total = int(lengths[todo].sum())
    clipped = 0
    bar = tqdm(total=total, unit="tok", unit_scale=True, disable=not progress, dynamic_ncols=True,
               desc=f"{desc} ({len(todo)} of {len(segments)} passes to run)")

    def step(b: int, rows: np.ndarray) -> int:
        nonlocal clipped
        segs = [segments[i] for i in rows]
        want = [[p for t, _, p in s.takes if t in layers] for s in segs]
        states = states_at(loaded.model, [s.ids for s in segs], want, all_layers, pad_id=pad_id, device=loaded.device)
        for k, per_seq in states.items():
            for s, st in zip(segs, per_seq):
                kept = [(t, r) for t, r, _ in s.takes if t in layers]
                half, n_clip = states_to_fp16({0: st})
                clipped += n_clip
                for (t, r), vec in zip(kept, half[0]):
                    if k in layers[t]:
                        store.arrays[(t, k)][r] = vec
        return int(lengths[rows].sum())

    seconds = store.run(batches, bar, step, on_batch=on_batch, checkpoint_seconds=checkpoint_seconds)
    return seconds, total, store.resumed, clipped


def plan_view_passes(loaded, frame, *, layers: Sequence[int], views: Sequence[str] = (COMPLETION,),
                     atlas: bool = False, atlas_layers: Sequence[int] | None = None,
                     atlas_max_tokens: int = DEFAULT_ATLAS_MAX_TOKENS, seed: int = 0, add_eos: bool = False,
                     max_length: int | None = None, completion_rows: np.ndarray | None = None,
                     log: Callable[[str], Any] = print) -> tuple[ViewPlan, dict]:
    """The passes of ``encode_views_to_folder`` (``plan_views``) and the layers each target keeps."""
    views = parse_views(list(views)) if views else []
    layers = normalize_layers(layers, loaded.num_layers)
    max_length = resolve_max_length(loaded, max_length)
    plan = plan_views(loaded.tokenizer, frame, views=views, atlas=atlas, max_length=max_length, add_eos=add_eos,
                      atlas_max_tokens=atlas_max_tokens, seed=seed, completion_rows=completion_rows)
    if plan.completion_empty:
        log(f"completion view: {plan.completion_empty} of {len(frame)} rows have an empty completion "
            "(encoded as prompt + EOS)")
    target_layers = {v: layers for v in views}
    if atlas:
        target_layers[TOKENS] = normalize_layers(atlas_layers, loaded.num_layers) if atlas_layers else layers
    return plan, target_layers


def encode_views_to_folder(loaded, frame, out_dir: str | Path, *, layers: Sequence[int],
                           views: Sequence[str] = (COMPLETION,), atlas: bool = False,
                           atlas_layers: Sequence[int] | None = None,
                           atlas_max_tokens: int = DEFAULT_ATLAS_MAX_TOKENS, seed: int = 0, add_eos: bool = False,
                           max_length: int | None = None, batch_tokens: int | None = None,
                           max_batch: int | None = None, progress: bool = True, checkpoint_seconds: float = 10.0,
                           on_batch: Callable[[int, np.ndarray], None] | None = None,
                           completion_rows: np.ndarray | None = None,
                           log: Callable[[str], Any] = print) -> ViewsResult:
    """Encode ``views`` (prompt and/or completion) and, with ``atlas``, the token atlas of the
    frame's rows (columns example_id, split, prompt, reference, output, score) into
    ``out_dir/encodings/`` in shared passes. ``atlas_layers`` default to ``layers``. The same on
    the Celery workers of REDIS_URL: ``pipelines.distributed.encode_views_distributed``."""
    plan, target_layers = plan_view_passes(loaded, frame, layers=layers, views=views, atlas=atlas,
                                           atlas_layers=atlas_layers, atlas_max_tokens=atlas_max_tokens, seed=seed,
                                           add_eos=add_eos, max_length=max_length, completion_rows=completion_rows,
                                           log=log)
    seconds, total, resumed, clipped = run_segments(
        loaded, plan.segments, out_dir, layers=target_layers, n_rows=plan.n_rows, batch_tokens=batch_tokens,
        max_batch=max_batch, progress=progress, checkpoint_seconds=checkpoint_seconds, on_batch=on_batch)
    return ViewsResult(plan=plan, layers=target_layers, seconds=seconds, tokens_forwarded=total,
                       resumed_segments=resumed, clipped_values=clipped)


def prompt_result(res: ViewsResult):
    """The prompt view's part of shared passes, as ``encode_to_folder`` reports it."""
    plan = res.plan
    return EncodeResult(layers=res.layers["prompt"], n_tokens=plan.prompt_tokens, truncated=plan.prompt_truncated,
                        seconds=res.seconds, tokens_encoded=res.tokens_forwarded, resumed_rows=res.resumed_segments,
                        clipped_values=res.clipped_values, device=res.device, dtype=res.dtype,
                        distributed=res.distributed)
