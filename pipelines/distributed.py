"""`llm-maps build --distributed`: encoding split into chunks that Celery workers run (REDIS_URL).

The client tokenizes every prompt and plans the batches exactly as ``encode_to_folder`` would
(``tokenize_prompts`` + ``plan_batches``), groups consecutive batches into chunks and writes the plan
and the token ids into ``RUN.partial/.distributed/`` — a folder every worker must reach (shared
storage). Each chunk task (``encode_chunk``) forwards its batches with ``last_token_states`` and
writes ``chunk_<i>.npz`` (rows + float16 states per layer) atomically. The client waits, then
assembles ``encodings/layer_<k>.npy``. Same batches, same code, same model and dtype: the
encodings are byte-identical to a single-process build on the same kind of device. Chunk files that
already exist (an interrupted build run again) are reused.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.jobs import BUILD_QUEUE, TASK_ENCODE_CHUNK, TASK_SCORE_CHUNK, TASK_VIEWS_CHUNK, celery_app
from llm_maps.runfolder import ENCODINGS, write_json_atomic
from pipelines.encode import (EncodeResult, _fingerprint as _encode_fingerprint, batch_limits, encode_identity,
                              last_token_states, normalize_layers, pad_token_id, plan_batches, resolve_max_length,
                              states_to_fp16, tokenize_prompts)
from pipelines.generate import choice_loglikelihoods_batch, choice_tokens, generate
from pipelines.models import load_model, resolve_device
from pipelines.views import (DEFAULT_ATLAS_MAX_TOKENS, COMPLETION, ViewsResult, _fingerprint as _views_fingerprint,
                             plan_view_passes, segment_targets, states_at, target_file, view_dir)

DIST_DIR = ".distributed"
PLAN = "plan.json"
_ENCODERS: OrderedDict = OrderedDict()  # worker side: the build model(s) resident, at most one


def chunk_batches(batches: Sequence[np.ndarray], chunk_size: int) -> list[list[list[int]]]:
    """Consecutive batches grouped into chunks of at least ``chunk_size`` prompts (the last may be smaller)."""
    chunks, current, n = [], [], 0
    for b in batches:
        current.append([int(i) for i in b])
        n += len(b)
        if n >= chunk_size:
            chunks.append(current)
            current, n = [], 0
    if current:
        chunks.append(current)
    return chunks


def chunk_path(dist: Path, chunk: int) -> Path:
    return dist / f"chunk_{chunk:05d}.npz"


def client_device(spec: dict) -> str:
    """The device kind the batches are planned for: the spec's, or this machine's kind for "auto"
    (pass --batch-tokens to choose)."""
    return resolve_device(spec.get("device") or "auto")


def open_plan(dist: Path, fingerprint: str, write: Callable[[Path], dict]) -> None:
    """Keep ``dist`` and its finished chunks when its plan has ``fingerprint`` (an interrupted call
    run again); else start it afresh: ``write(dist)`` stores what the chunks read and returns the
    plan, written last (``plan.json``, atomically, with the fingerprint)."""
    try:
        same = json.loads((dist / PLAN).read_text(encoding="utf-8"))["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        same = False
    if not same:
        shutil.rmtree(dist, ignore_errors=True)
        dist.mkdir(parents=True)
        write_json_atomic(dist / PLAN, {"fingerprint": fingerprint, **write(dist)})


def _save_sequences(dist: Path, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Token ids of every sequence as ``tokens.npy`` + ``offsets.npy`` (what the chunks read); their lengths."""
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    np.save(dist / "offsets.npy", offsets)
    np.save(dist / "tokens.npy", np.concatenate([np.asarray(s, dtype=np.int64) for s in ids])
            if len(ids) else np.zeros(0, dtype=np.int64))
    return lengths


def _workers_listening(app, queue: str, timeout: float = 3.0) -> list[str]:
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues or []))


def run_chunks(app, task: str, pending: Sequence[int], kwargs, *, desc: str, progress: bool = True,
               poll: float = 0.2) -> None:
    """Send one ``task`` per pending chunk to the build queue (``kwargs(i)``) and wait for all of them;
    a chunk that fails on a worker is a clear error. Chunks are acked late and idempotent: a chunk of a
    worker that dies comes back after the broker's visibility timeout."""
    from tqdm.auto import tqdm

    listening = _workers_listening(app, BUILD_QUEUE)
    if not listening:
        raise LLMMapsError("--distributed: no `llm-maps worker` is listening on REDIS_URL (start one or more "
                           "with the same REDIS_URL and access to this folder)")
    results = {i: app.send_task(task, queue=BUILD_QUEUE, kwargs=kwargs(i)) for i in pending}
    bar = tqdm(total=len(pending), unit="chunk", disable=not progress, desc=f"{desc} on {len(listening)} worker(s)",
               dynamic_ncols=True)
    try:
        while results:
            for i, res in list(results.items()):
                if res.ready():
                    if res.failed():
                        raise LLMMapsError(f"--distributed: chunk {i} failed on a worker: {res.result!r}")
                    res.forget()
                    del results[i]
                    bar.update(1)
            time.sleep(poll)
    finally:
        bar.close()


def run_plan(app, task: str, dist: Path, fingerprint: str, write: Callable[[Path], dict], n_chunks: int, kwargs, *,
             what: str, desc: str, finished: Callable[[Path, int], Path] = chunk_path, progress: bool = True,
             poll: float = 0.2, log=print) -> tuple[list[int], float]:
    """One distributed stage: ``open_plan`` (a same-fingerprint plan keeps its finished chunks), then
    ``run_chunks`` on the chunks whose ``finished(dist, i)`` file is missing. Returns (the chunks run
    here, their wall seconds)."""
    open_plan(dist, fingerprint, write)
    pending = [i for i in range(n_chunks) if not finished(dist, i).exists()]
    start = time.perf_counter()
    if pending:
        log(f"distributed {what}: {len(pending)} of {n_chunks} chunks, work folder {dist}")
        run_chunks(app, task, pending, kwargs, desc=desc, progress=progress, poll=poll)
    else:
        log(f"distributed {what}: all {n_chunks} chunks already finished, work folder {dist}")
    return pending, time.perf_counter() - start


def encode_distributed(loaded, prompts: Sequence[str], work: str | Path, *, spec: dict, layers: Sequence[int],
                       add_eos: bool = False, max_length: int | None = None, batch_tokens: int | None = None,
                       max_batch: int | None = None, chunk_size: int = 512, progress: bool = True,
                       log=print, poll: float = 0.2):
    """Encode ``prompts`` into ``work/encodings`` with the Celery workers. ``loaded`` may be a
    weights-free ``load_model(..., weights=False)``; ``spec`` = how workers load the model
    (model, gguf_file, revision, dtype, device). Returns (EncodeResult, {device, dtype, chunks, workers})."""
    app = celery_app()
    layers = normalize_layers(layers, loaded.num_layers)
    max_length = resolve_max_length(loaded, max_length)
    batch_tokens, max_batch = batch_limits(client_device(spec), batch_tokens, max_batch)
    ids, truncated = tokenize_prompts(loaded.tokenizer, prompts, add_eos=add_eos, max_length=max_length)
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    n, hidden = len(ids), int(loaded.model.config.hidden_size)
    chunks = chunk_batches(plan_batches(lengths, batch_tokens=batch_tokens, max_batch=max_batch), max(1, chunk_size))
    fp = _encode_fingerprint(ids, layers, {**encode_identity(loaded), "dtype": spec.get("dtype"), "chunks": chunks})

    dist = Path(work).resolve() / DIST_DIR

    def write(folder: Path) -> dict:
        _save_sequences(folder, ids)
        return {"n": n, "hidden": hidden, "layers": layers, "pad_id": pad_token_id(loaded.tokenizer), "chunks": chunks}

    pending, seconds = run_plan(
        app, TASK_ENCODE_CHUNK, dist, fp, write, len(chunks),
        lambda i: {"work": str(Path(work).resolve()), "chunk": i, "fingerprint": fp, "spec": spec},
        what="encoding", desc="encode (distributed)", progress=progress, poll=poll, log=log)
    resumed_rows = int(sum(len(b) for i in set(range(len(chunks))) - set(pending) for b in chunks[i]))

    # assemble: every row written exactly once, in the order of examples.parquet
    enc_dir = Path(work) / ENCODINGS
    enc_dir.mkdir(parents=True, exist_ok=True)
    for stale in enc_dir.glob("layer_*.npy"):
        stale.unlink()
    arrays = {k: np.lib.format.open_memmap(enc_dir / f"layer_{k}.npy", mode="w+", dtype=np.float16,
                                           shape=(n, hidden)) for k in layers}
    seen = np.zeros(n, dtype=bool)
    clipped, devices, dtypes, workers = 0, set(), set(), set()
    for i in range(len(chunks)):
        with np.load(chunk_path(dist, i)) as data:
            meta = json.loads(str(data["meta"]))
            rows = data["rows"]
            for k in layers:
                arrays[k][rows] = data[f"layer_{k}"]
        seen[rows] = True
        clipped += int(meta["clipped"])
        devices.add(meta["device"]), dtypes.add(meta["dtype"]), workers.add(meta["worker"])
    for arr in arrays.values():
        arr.flush()
    del arrays
    if not seen.all():
        raise LLMMapsError(f"--distributed: {int((~seen).sum())} rows missing from the chunk files")
    shutil.rmtree(dist, ignore_errors=True)
    tokens_encoded = int(sum(lengths[r].sum() for i in pending for r in chunks[i]))
    result = EncodeResult(layers=layers, n_tokens=lengths, truncated=truncated, seconds=seconds,
                          tokens_encoded=tokens_encoded, resumed_rows=resumed_rows, clipped_values=clipped)
    return result, {"device": ",".join(sorted(devices)), "dtype": ",".join(sorted(dtypes)), "chunks": len(chunks),
                    "workers": sorted(workers)}


# ------------------------------------------------------------------------------ worker side

def _encoder(spec: dict):
    key = json.dumps(spec, sort_keys=True)
    if key not in _ENCODERS:
        _ENCODERS.clear()  # one build model resident at a time (beside the runs' sessions)
        _ENCODERS[key] = load_model(spec["model"], gguf_file=spec.get("gguf_file"), revision=spec.get("revision"),
                                    dtype=spec.get("dtype") or "auto", device=spec.get("device") or "auto",
                                    any_model=bool(spec.get("any_model")))
    return _ENCODERS[key]


def _current_plan(dist: Path, fingerprint: str, chunk: int, kind: str) -> dict:
    """The plan a chunk belongs to; a chunk of a replaced plan (another fingerprint) is stale."""
    plan = json.loads((dist / PLAN).read_text(encoding="utf-8"))
    if plan["fingerprint"] != fingerprint:
        raise LLMMapsError(f"{dist}: the {kind} plan changed; chunk {chunk} is stale")
    return plan


def _open_npz_chunk(dist: Path, fingerprint: str, chunk: int, kind: str) -> tuple[dict, dict | None]:
    """(the chunk's current plan, the meta of its ``chunk_<i>.npz`` when already written, else None)."""
    plan = _current_plan(dist, fingerprint, chunk, kind)
    out = chunk_path(dist, chunk)
    if not out.exists():
        return plan, None
    with np.load(out) as data:
        return plan, json.loads(str(data["meta"]))


def _sequences(dist: Path) -> tuple[np.ndarray, np.ndarray]:
    """The plan's token ids (memory-mapped, concatenated) and the offsets of each sequence in them."""
    return np.load(dist / "tokens.npy", mmap_mode="r"), np.load(dist / "offsets.npy")


def encode_chunk(*, work: str, chunk: int, fingerprint: str, spec: dict, worker: str = "?") -> dict:
    """Encode one chunk of a distributed build into ``chunk_<i>.npz`` (idempotent). Returns its meta."""
    dist = Path(work) / DIST_DIR
    plan, done = _open_npz_chunk(dist, fingerprint, chunk, "build")
    if done is not None:
        return done
    loaded = _encoder(spec)
    tokens, offsets = _sequences(dist)
    layers = [int(k) for k in plan["layers"]]
    start = time.perf_counter()
    rows, parts, clipped = [], {k: [] for k in layers}, 0
    for batch in plan["chunks"][chunk]:
        seqs = [tokens[offsets[i]:offsets[i + 1]].tolist() for i in batch]
        half, n_clipped = states_to_fp16(last_token_states(loaded.model, seqs, layers, pad_id=int(plan["pad_id"]),
                                                           device=loaded.device))
        clipped += n_clipped
        rows.extend(batch)
        for k in layers:
            parts[k].append(half[k])
    meta = {"chunk": chunk, "rows": len(rows), "clipped": clipped, "device": loaded.device, "dtype": loaded.dtype,
            "worker": worker, "seconds": round(time.perf_counter() - start, 3)}
    _save_chunk(dist, chunk, meta, rows=np.asarray(rows, dtype=np.int64),
                **{f"layer_{k}": np.concatenate(parts[k]) for k in layers})
    return meta


def _save_chunk(dist: Path, chunk: int, meta: dict, **arrays: np.ndarray) -> None:
    """``chunk_<i>.npz`` (the arrays and ``meta``), atomically: a temp file, fsync, then renamed."""
    tmp = dist / f".chunk_{chunk:05d}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, chunk_path(dist, chunk))


# ------------------------------------------------------------------------------ score --distributed

SCORE_DIR = ".distributed-score"


def score_spec(manifest: dict, dtype: str = "auto", device: str = "auto") -> dict:
    """How the workers load a run's model for its score chunks."""
    return {"model": manifest["model"], "gguf_file": None, "revision": manifest.get("model_revision"),
            "dtype": dtype, "device": device}


def score_chunk_path(dist: Path, chunk: int) -> Path:
    return dist / f"chunk_{chunk:05d}.json"


def plan_score_chunks(tokenizer, prompts: Sequence[str], gen_rows: Sequence[int], mc_choices: dict, *,
                      device: str, chunk_size: int, max_new_tokens: int | Sequence[int] | np.ndarray = 48) -> list[dict]:
    """Chunks of a distributed ``score``: generation rows longest prompt first, ``chunk_size`` a chunk,
    each with its rows' limits (``max_new_tokens``: one int, or one per prompt: per-task budgets);
    multiple-choice rows in the batches ``choice_loglikelihoods_batch`` plans for the whole set (same
    order, same padding), grouped like ``build --distributed`` groups encoding batches."""
    chunks: list[dict] = []
    gen_rows = [int(i) for i in gen_rows]
    if gen_rows:
        ids, _ = tokenize_prompts(tokenizer, [prompts[i] for i in gen_rows])
        order = np.argsort([-len(s) for s in ids], kind="stable")
        limits = np.broadcast_to(np.asarray(max_new_tokens, dtype=np.int64), (len(prompts),))
        for group in chunk_batches([[gen_rows[j]] for j in order], max(1, chunk_size)):
            rows = [b[0] for b in group]
            chunks.append({"kind": "generate", "rows": rows, "max_new_tokens": [int(limits[i]) for i in rows]})
    mc_rows = sorted(int(i) for i in mc_choices)
    if mc_rows:
        packed = choice_tokens(tokenizer, [prompts[i] for i in mc_rows], [mc_choices[i] for i in mc_rows])
        lengths = [len(ctx) + sum(len(c) for c in conts) for ctx, conts in packed]
        batch_tokens, max_batch = batch_limits(device)
        batches = [np.asarray(mc_rows)[b] for b in plan_batches(lengths, batch_tokens=batch_tokens, max_batch=max_batch)]
        for group in chunk_batches(batches, max(1, chunk_size)):
            chunks.append({"kind": "mc", "batches": group})
    return chunks


def score_distributed(loaded, prompts: Sequence[str], gen_rows, mc_choices: dict, run_dir: str | Path, *, spec: dict,
                      gen_kwargs: dict, max_new_tokens: int | Sequence[int] | np.ndarray | None = None,
                      chunk_size: int = 512, folder: str = SCORE_DIR, keep: bool = False, progress: bool = True,
                      log=print, poll: float = 0.2):
    """Generate for ``gen_rows`` and score the choices of ``mc_choices`` ({row: choices}) on the
    Celery workers (``max_new_tokens``: one limit or one per prompt, e.g. the per-task budgets of
    ``--max-new-tokens auto``; default ``gen_kwargs["max_new_tokens"]``), in chunks
    (``plan_score_chunks``) written to ``run_dir/<folder>`` (default ``.distributed-score``; one
    folder per call that must survive the next, e.g. each pass of ``score --conditions``); an
    interrupted run resumes from its finished chunks. The folder is removed once read unless
    ``keep`` (the caller removes it after storing the results, so that a re-run of a multi-pass
    command resumes every finished pass). ``loaded``: weights-free is enough. Returns
    (generation columns as ``score.generate_outputs`` gives them or None, {row: choice logprobs} or
    None, {device, dtype, chunks, workers})."""
    import hashlib

    app = celery_app()
    device = client_device(spec)
    prompts = [str(p) for p in prompts]
    limits = gen_kwargs["max_new_tokens"] if max_new_tokens is None else max_new_tokens
    chunks = plan_score_chunks(loaded.tokenizer, prompts, gen_rows, mc_choices, device=device, chunk_size=chunk_size,
                               max_new_tokens=limits)
    used = sorted({int(i) for c in chunks for i in (c.get("rows") or [r for b in c.get("batches", []) for r in b])})
    inputs = {"prompts": {str(i): prompts[i] for i in used},
              "choices": {str(i): list(mc_choices[i]) for i in sorted(mc_choices)}}
    plan = {"chunks": chunks, "generate": gen_kwargs, "spec": spec,
            "model": {k: loaded.info.get(k) for k in ("model", "revision", "file_sha256")}}
    fp = hashlib.sha256(json.dumps([plan, inputs], sort_keys=True, default=str).encode()).hexdigest()
    dist = Path(run_dir).resolve() / folder

    def write(path: Path) -> dict:
        write_json_atomic(path / "inputs.json", inputs)
        return plan

    pending, seconds = run_plan(
        app, TASK_SCORE_CHUNK, dist, fp, write, len(chunks),
        lambda i: {"work": str(Path(run_dir).resolve()), "chunk": i, "fingerprint": fp, "folder": folder},
        what="scoring", desc="score (distributed)", finished=score_chunk_path, progress=progress, poll=poll, log=log)

    cols = None
    if len(gen_rows):
        cols = {"output": {}, "output_token_ids": {}, "output_logprobs": {}, "stop_reason": {}}
    mc_values = {} if mc_choices else None
    devices, dtypes, workers, tokens, slots = set(), set(), set(), 0, set()
    new_tokens = 0  # generated by the chunks this call ran (the rate's numerator; resumed chunks took no time now)
    for i in range(len(chunks)):
        data = json.loads(score_chunk_path(dist, i).read_text(encoding="utf-8"))
        meta = data["meta"]
        devices.add(meta["device"]), dtypes.add(meta["dtype"]), workers.add(meta["worker"])
        for key, value in data["rows"].items():
            row = int(key)
            if meta["kind"] == "generate":
                for col in cols:
                    cols[col][row] = value[col]
                tokens += len(value["output_token_ids"])
                new_tokens += len(value["output_token_ids"]) if i in pending else 0
                slots.add(meta["slots"])
            else:
                mc_values[row] = value
    missing = set(int(i) for i in gen_rows) - set(cols["output"] if cols else ())
    missing |= set(mc_choices) - set(mc_values or ())
    if missing:
        raise LLMMapsError(f"--distributed: {len(missing)} rows missing from the chunk files")
    if cols is not None:
        cols.update({"_seconds": seconds, "_tokens": tokens, "_new_tokens": new_tokens,
                     "_slots": max(slots) if slots else None})
    if not keep:
        shutil.rmtree(dist, ignore_errors=True)
    return cols, mc_values, {"device": ",".join(sorted(devices)), "dtype": ",".join(sorted(dtypes)),
                             "chunks": len(chunks), "workers": sorted(workers)}


def score_chunk(*, work: str, chunk: int, fingerprint: str, folder: str = SCORE_DIR, worker: str = "?") -> dict:
    """Run one chunk of a distributed ``score`` (work folder ``work/<folder>``) into ``chunk_<i>.json``
    (idempotent). Returns its meta."""
    dist = Path(work) / folder
    plan = _current_plan(dist, fingerprint, chunk, "score")
    out = score_chunk_path(dist, chunk)
    if out.exists():
        return json.loads(out.read_text(encoding="utf-8"))["meta"]
    inputs = json.loads((dist / "inputs.json").read_text(encoding="utf-8"))
    prompts, choices = inputs["prompts"], inputs["choices"]
    loaded = _encoder(plan["spec"])
    item = plan["chunks"][chunk]
    start = time.perf_counter()
    rows: dict = {}
    meta = {"chunk": chunk, "kind": item["kind"], "device": loaded.device, "dtype": loaded.dtype, "worker": worker}
    if item["kind"] == "generate":
        g = plan["generate"]
        stats: dict = {}
        results = generate(loaded, [prompts[str(i)] for i in item["rows"]], max_new_tokens=item["max_new_tokens"],
                           temperature=g["temperature"], top_p=g["top_p"], seed=g["seed"],
                           stop_strings=g["stop_strings"], max_length=g["max_length"], batch_size=g["batch_size"],
                           keys=item["rows"], stats=stats)
        for i, res in zip(item["rows"], results):
            rows[str(i)] = {"output": res.text, "output_token_ids": res.token_ids,
                            "output_logprobs": [round(x, 6) for x in res.logprobs], "stop_reason": res.stop_reason}
        meta["slots"] = stats.get("slots")
    else:
        for batch in item["batches"]:  # each planned batch as one forward, exactly as a single process runs it
            res = choice_loglikelihoods_batch(loaded, [prompts[str(i)] for i in batch], [choices[str(i)] for i in batch],
                                              batch_tokens=1 << 62, max_batch=len(batch))
            for i, r in zip(batch, res):
                rows[str(i)] = [round(x["logprob"], 6) for x in r]
    meta["seconds"] = round(time.perf_counter() - start, 3)
    write_json_atomic(out, {"meta": meta, "rows": rows})
    return meta


# ------------------------------------------------------------------------------ views and atlas --distributed

VIEWS_DIR = ".distributed-views"


def segments_distributed(loaded, segments, out_dir: str | Path, *, layers: dict, n_rows: dict, spec: dict,
                         batch_tokens: int | None = None, max_batch: int | None = None, chunk_size: int = 512,
                         progress: bool = True, log=print, poll: float = 0.2) -> tuple[float, int, int, int, dict]:
    """``views.run_segments`` on the Celery workers: the planned passes (``views.plan_views`` /
    ``completion_segments``) in the batches ``run_segments`` forms, ``chunk_size`` passes or more a
    chunk (``views_chunk``), written under ``out_dir/.distributed-views`` and assembled here into
    the same files (byte-identical on the same kind of device); an interrupted call resumes from
    its finished chunks. ``loaded``: weights-free is enough; ``spec``: how workers load the model.
    Returns (seconds, tokens forwarded, resumed passes, values clipped, {device, dtype, chunks, workers})."""
    app = celery_app()
    out_dir = Path(out_dir).resolve()
    targets, all_layers = segment_targets(segments, layers, n_rows)
    hidden = int(loaded.model.config.hidden_size)
    lengths = np.array([len(s.ids) for s in segments], dtype=np.int64)
    batch_tokens, max_batch = batch_limits(client_device(spec), batch_tokens, max_batch)
    chunks = chunk_batches(plan_batches(lengths, batch_tokens=batch_tokens, max_batch=max_batch), max(1, chunk_size))
    fp = _views_fingerprint(segments, {t: layers[t] for t in targets}, {t: n_rows[t] for t in targets},
                      {**encode_identity(loaded), "spec": spec, "chunks": chunks})
    dist = out_dir / VIEWS_DIR

    def write(folder: Path) -> dict:
        _save_sequences(folder, [s.ids for s in segments])
        kept = [[(targets.index(t), r, p) for t, r, p in s.takes if t in layers] for s in segments]
        take_offsets = np.zeros(len(segments) + 1, dtype=np.int64)
        take_offsets[1:] = np.cumsum([len(k) for k in kept])
        flat = np.array([x for k in kept for x in k], dtype=np.int64).reshape(-1, 3)  # (target, row, position)
        np.save(folder / "take_offsets.npy", take_offsets)
        np.save(folder / "takes.npy", flat)
        return {"targets": targets, "layers": {t: [int(k) for k in layers[t]] for t in targets},
                "all_layers": all_layers, "pad_id": pad_token_id(loaded.tokenizer), "chunks": chunks}

    pending, seconds = run_plan(
        app, TASK_VIEWS_CHUNK, dist, fp, write, len(chunks),
        lambda i: {"work": str(out_dir), "chunk": i, "fingerprint": fp, "spec": spec},
        what="passes", desc="encode views (distributed)", progress=progress, poll=poll, log=log)
    resumed = int(sum(len(b) for i in set(range(len(chunks))) - set(pending) for b in chunks[i]))

    # assemble: the files run_segments writes, every kept state written once
    takes = np.load(dist / "takes.npy")
    for t in targets:
        view_dir(out_dir, t).mkdir(parents=True, exist_ok=True)
        for stale in view_dir(out_dir, t).glob("layer_*.npy"):
            stale.unlink()
    arrays = {(t, k): np.lib.format.open_memmap(target_file(out_dir, t, k), mode="w+", dtype=np.float16,
                                                shape=(n_rows[t], hidden)) for t in targets for k in layers[t]}
    written = np.zeros(len(takes), dtype=bool)
    clipped, devices, dtypes, workers = 0, set(), set(), set()
    for i in range(len(chunks)):
        with np.load(chunk_path(dist, i)) as data:
            meta = json.loads(str(data["meta"]))
            for k in all_layers:
                idx = data[f"takes_{k}"]
                states = data[f"layer_{k}"]
                for j, t in enumerate(targets):
                    here = takes[idx, 0] == j
                    if k in layers[t] and here.any():
                        arrays[(t, k)][takes[idx[here], 1]] = states[here]
                written[idx] = True
        clipped += int(meta["clipped"])
        devices.add(meta["device"]), dtypes.add(meta["dtype"]), workers.add(meta["worker"])
    for arr in arrays.values():
        arr.flush()
    arrays.clear()
    if not written.all():
        raise LLMMapsError(f"--distributed: {int((~written).sum())} states missing from the chunk files")
    shutil.rmtree(dist, ignore_errors=True)
    total = int(sum(lengths[b].sum() for i in pending for b in chunks[i]))
    return seconds, total, resumed, clipped, {"device": ",".join(sorted(devices)), "dtype": ",".join(sorted(dtypes)),
                                              "chunks": len(chunks), "workers": sorted(workers)}


def encode_views_distributed(loaded, frame, out_dir: str | Path, *, spec: dict, layers: Sequence[int],
                             views: Sequence[str] = (COMPLETION,), atlas: bool = False,
                             atlas_layers: Sequence[int] | None = None,
                             atlas_max_tokens: int = DEFAULT_ATLAS_MAX_TOKENS, seed: int = 0, add_eos: bool = False,
                             max_length: int | None = None, batch_tokens: int | None = None,
                             max_batch: int | None = None, completion_rows: np.ndarray | None = None,
                             chunk_size: int = 512, progress: bool = True, log=print) -> ViewsResult:
    """``views.encode_views_to_folder`` on the Celery workers of REDIS_URL (``segments_distributed``;
    ``loaded`` may be weights-free, ``spec``: how workers load the model); the same files."""
    plan, target_layers = plan_view_passes(loaded, frame, layers=layers, views=views, atlas=atlas,
                                           atlas_layers=atlas_layers, atlas_max_tokens=atlas_max_tokens, seed=seed,
                                           add_eos=add_eos, max_length=max_length, completion_rows=completion_rows,
                                           log=log)
    seconds, total, resumed, clipped, info = segments_distributed(
        loaded, plan.segments, out_dir, layers=target_layers, n_rows=plan.n_rows, spec=spec,
        batch_tokens=batch_tokens, max_batch=max_batch, chunk_size=chunk_size, progress=progress, log=log)
    return ViewsResult(plan=plan, layers=target_layers, seconds=seconds, tokens_forwarded=total,
                       resumed_segments=resumed, clipped_values=clipped, device=info.pop("device"),
                       dtype=info.pop("dtype"), distributed=info)


def views_chunk(*, work: str, chunk: int, fingerprint: str, spec: dict, worker: str = "?") -> dict:
    """Forward one chunk of ``segments_distributed`` into ``chunk_<i>.npz`` (idempotent): per layer,
    the kept states (float16, as ``run_segments`` stores them) and the indices of their takes."""
    dist = Path(work) / VIEWS_DIR
    plan, done = _open_npz_chunk(dist, fingerprint, chunk, "views")
    if done is not None:
        return done
    loaded = _encoder(spec)
    tokens, offsets = _sequences(dist)
    take_offsets = np.load(dist / "take_offsets.npy")
    takes = np.load(dist / "takes.npy")
    targets = plan["targets"]
    wanted = {j: {int(k) for k in plan["layers"][t]} for j, t in enumerate(targets)}
    all_layers = [int(k) for k in plan["all_layers"]]
    start = time.perf_counter()
    idx: dict[int, list[np.ndarray]] = {k: [] for k in all_layers}
    parts: dict[int, list[np.ndarray]] = {k: [] for k in all_layers}
    clipped = 0
    for batch in plan["chunks"][chunk]:
        seqs = [tokens[offsets[i]:offsets[i + 1]].tolist() for i in batch]
        spans = [np.arange(take_offsets[i], take_offsets[i + 1]) for i in batch]
        states = states_at(loaded.model, seqs, [takes[sp, 2].tolist() for sp in spans], all_layers,
                           pad_id=int(plan["pad_id"]), device=loaded.device)
        for k, per_seq in states.items():
            for sp, st in zip(spans, per_seq):
                half, n_clip = states_to_fp16({0: st})  # per pass and layer, as run_segments converts
                clipped += n_clip
                keep = np.array([int(k) in wanted[int(j)] for j in takes[sp, 0]], dtype=bool)
                idx[k].append(sp[keep])
                parts[k].append(half[0][keep])
    hidden = int(loaded.model.config.hidden_size)
    meta = {"chunk": chunk, "passes": int(sum(len(b) for b in plan["chunks"][chunk])), "clipped": clipped,
            "device": loaded.device, "dtype": loaded.dtype, "worker": worker,
            "seconds": round(time.perf_counter() - start, 3)}
    arrays: dict[str, np.ndarray] = {}
    for k in all_layers:
        arrays[f"takes_{k}"] = np.concatenate(idx[k]) if idx[k] else np.zeros(0, dtype=np.int64)
        arrays[f"layer_{k}"] = np.concatenate(parts[k]) if parts[k] else np.zeros((0, hidden), dtype=np.float16)
    _save_chunk(dist, chunk, meta, **arrays)
    return meta
