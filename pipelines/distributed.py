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
from typing import Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import ENCODINGS, write_json_atomic

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


def _workers_listening(app, queue: str, timeout: float = 3.0) -> list[str]:
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(name for name, queues in replies.items() if any(q.get("name") == queue for q in queues or []))


def encode_distributed(loaded, prompts: Sequence[str], work: str | Path, *, spec: dict, layers: Sequence[int],
                       add_eos: bool = False, max_length: int | None = None, batch_tokens: int | None = None,
                       max_batch: int | None = None, chunk_size: int = 512, progress: bool = True,
                       log=print, poll: float = 0.2):
    """Encode ``prompts`` into ``work/encodings`` with the Celery workers. ``loaded`` may be a
    weights-free ``load_model(..., weights=False)``; ``spec`` = how workers load the model
    (model, gguf_file, revision, dtype, device). Returns (EncodeResult, {device, dtype, chunks, workers})."""
    from tqdm.auto import tqdm

    from llm_maps.jobs import BUILD_QUEUE, TASK_ENCODE_CHUNK, celery_app
    from pipelines.encode import (EncodeResult, _fingerprint, batch_limits, encode_identity, normalize_layers,
                                  pad_token_id, plan_batches, resolve_max_length, tokenize_prompts)

    app = celery_app()
    layers = normalize_layers(layers, loaded.num_layers)
    max_length = resolve_max_length(loaded, max_length)
    device = spec.get("device") or "auto"
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"  # this machine's kind; pass --batch-tokens to choose
    batch_tokens, max_batch = batch_limits(device, batch_tokens, max_batch)
    ids, truncated = tokenize_prompts(loaded.tokenizer, prompts, add_eos=add_eos, max_length=max_length)
    lengths = np.array([len(s) for s in ids], dtype=np.int64)
    n, hidden = len(ids), int(loaded.model.config.hidden_size)
    chunks = chunk_batches(plan_batches(lengths, batch_tokens=batch_tokens, max_batch=max_batch), max(1, chunk_size))
    fp = _fingerprint(ids, layers, {**encode_identity(loaded), "dtype": spec.get("dtype"), "chunks": chunks})

    dist = Path(work).resolve() / DIST_DIR
    plan_file = dist / PLAN
    try:
        same = json.loads(plan_file.read_text(encoding="utf-8"))["fingerprint"] == fp
    except (OSError, ValueError, KeyError):
        same = False
    if not same:
        shutil.rmtree(dist, ignore_errors=True)
        dist.mkdir(parents=True)
        offsets = np.zeros(n + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lengths)
        np.save(dist / "offsets.npy", offsets)
        np.save(dist / "tokens.npy", np.concatenate([np.asarray(s, dtype=np.int64) for s in ids])
                if n else np.zeros(0, dtype=np.int64))
        write_json_atomic(plan_file, {"fingerprint": fp, "n": n, "hidden": hidden, "layers": layers,
                                      "pad_id": pad_token_id(loaded.tokenizer), "chunks": chunks})
    pending = [i for i in range(len(chunks)) if not chunk_path(dist, i).exists()]
    resumed_rows = int(sum(len(b) for i in set(range(len(chunks))) - set(pending) for b in chunks[i]))
    start = time.perf_counter()
    if pending:
        listening = _workers_listening(app, BUILD_QUEUE)
        if not listening:
            raise LLMMapsError("--distributed: no `llm-maps worker` is listening on REDIS_URL (start one or more "
                               "with the same REDIS_URL and access to this folder)")
        log(f"distributed encoding: {len(pending)} of {len(chunks)} chunks to {len(listening)} worker(s), "
            f"work folder {dist}")
        results = {i: app.send_task(TASK_ENCODE_CHUNK, queue=BUILD_QUEUE,
                                    kwargs={"work": str(Path(work).resolve()), "chunk": i, "fingerprint": fp,
                                            "spec": spec})
                   for i in pending}
        bar = tqdm(total=len(pending), unit="chunk", disable=not progress, desc="encode (distributed)",
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
    seconds = time.perf_counter() - start

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
    from pipelines.models import load_model

    key = json.dumps(spec, sort_keys=True)
    if key not in _ENCODERS:
        _ENCODERS.clear()  # one build model resident at a time (beside the runs' sessions)
        _ENCODERS[key] = load_model(spec["model"], gguf_file=spec.get("gguf_file"), revision=spec.get("revision"),
                                    dtype=spec.get("dtype") or "auto", device=spec.get("device") or "auto")
    return _ENCODERS[key]


def encode_chunk(*, work: str, chunk: int, fingerprint: str, spec: dict, worker: str = "?") -> dict:
    """Encode one chunk of a distributed build into ``chunk_<i>.npz`` (idempotent). Returns its meta."""
    from pipelines.encode import last_token_states, states_to_fp16

    dist = Path(work) / DIST_DIR
    plan = json.loads((dist / PLAN).read_text(encoding="utf-8"))
    if plan["fingerprint"] != fingerprint:
        raise LLMMapsError(f"{dist}: the build plan changed; chunk {chunk} is stale")
    out = chunk_path(dist, chunk)
    if out.exists():
        with np.load(out) as data:
            return json.loads(str(data["meta"]))
    loaded = _encoder(spec)
    tokens = np.load(dist / "tokens.npy", mmap_mode="r")
    offsets = np.load(dist / "offsets.npy")
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
    tmp = dist / f".chunk_{chunk:05d}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, rows=np.asarray(rows, dtype=np.int64), meta=np.array(json.dumps(meta)),
                 **{f"layer_{k}": np.concatenate(parts[k]) for k in layers})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return meta
