"""Run-level stages for the completion view and the token atlas (see pipelines/views.py).

- ``encode_extras``: the passes a build asks for (prompt view shared with completion and atlas);
- ``finish_extras``: projections, distances, ``tokens.parquet`` and manifest entries for them;
- ``encode_view_run`` / ``atlas_run``: the same for an existing run (`llm-maps encode RUN --view
  completion`, `llm-maps atlas RUN`), in a work folder inside the run, swapped in when done.

Files (beside the prompt view's, which keeps its paths):

    encodings/completion/layer_<k>.npy   float16 [N, H]
    projection_completion/               the completion view's own map
    encodings/tokens/layer_<k>.npy       float16 [T, H], the atlas
    tokens.parquet                       row, example_id, position, token_id, token_text, x, y
    projection_tokens/                   the token map: fitted on train prompts + atlas tokens

Columns: ``completion_source``, ``n_tokens_completion``, ``truncated_completion``,
``x_completion``, ``y_completion``, ``dist_to_train_completion``, ``nn_train_ids_completion``,
``nn_train_dists_completion``; ``x_tokens``, ``y_tokens`` (every example's prompt on the token map).
Manifest: ``views``, ``view_settings`` and ``token_atlas``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.jobs import redis_url
from llm_maps.neighbours import nearest_train
from llm_maps.runfolder import (ENCODINGS, EXAMPLES, history_entry, layer_file, read_manifest, replacing_dir,
                                write_parquet_atomic)
from pipelines.distributed import encode_views_distributed, segments_distributed
from pipelines.encode import default_layers, resolve_max_length
from pipelines.models import load_model
from pipelines.project import fit_projection
from pipelines.runwrite import commit_run_files
from pipelines.views import (COMPLETION, DEFAULT_ATLAS_MAX_TOKENS, TOKENS, ViewsResult, completion_segments,
                             completion_texts, empty_completions, encode_views_to_folder, parse_views,
                             run_segments, target_file, view_dir)

TOKENS_FILE = "tokens.parquet"
PROJECTION_COMPLETION = "projection_completion"
PROJECTION_TOKENS = "projection_tokens"


def wants_extras(views: Sequence[str] | str | None, token_atlas: bool) -> bool:
    return COMPLETION in parse_views(views) or bool(token_atlas)


def _load_other(model: str, *, dtype: str, device: str, weights: bool = True):
    return load_model(model, dtype=dtype, device=device, any_model=True, weights=weights)


def encode_extras(loaded, frame, work: Path, *, views: Sequence[str], layers: Sequence[int], default_layer: int,
                  token_atlas: bool,
                  atlas_layers: Sequence[int] | None, atlas_max_tokens: int, seed: int, add_eos: bool,
                  max_length: int | None, batch_tokens: int | None, completion_model: str | None = None,
                  dtype: str = "auto", device: str = "auto", progress: bool = True, log=print,
                  completion_rows: np.ndarray | None = None, spec: dict | None = None,
                  chunk_size: int = 512) -> dict:
    """Encode the requested views (prompt included when asked) and the atlas into ``work``.

    Returns what ``finish_extras`` and the manifest need: the ViewsResult of the shared passes and,
    with ``completion_model``, the other model's completion encodings' settings. ``spec`` (how
    workers load the run's model): every pass runs in chunks of ``chunk_size`` on the Celery workers
    of REDIS_URL (``--distributed``; ``loaded`` may be weights-free), the other model's too."""
    views = parse_views(views) if views else []
    # the atlas always holds the map layer (the token map and path distances use it)
    atlas_layers = sorted({int(default_layer)} | {int(x) for x in (atlas_layers or [])})
    shared_views = [v for v in views if not (v == COMPLETION and completion_model)]
    out: dict = {"views": views, "completion_model": completion_model}
    if shared_views or token_atlas:
        log(f"encoding {', '.join(shared_views + (['token atlas'] if token_atlas else []))} in shared passes")
        passes = dict(layers=layers, views=shared_views, atlas=token_atlas, atlas_layers=atlas_layers,
                      atlas_max_tokens=atlas_max_tokens, seed=seed, add_eos=add_eos, max_length=max_length,
                      batch_tokens=batch_tokens, progress=progress, completion_rows=completion_rows, log=log)
        if spec is not None:
            out["result"] = encode_views_distributed(loaded, frame, work, spec=spec, chunk_size=chunk_size, **passes)
        else:
            out["result"] = encode_views_to_folder(loaded, frame, work, **passes)
    if COMPLETION in views and completion_model:
        other = _load_other(completion_model, dtype=dtype, device=device, weights=spec is None)
        texts, sources = completion_texts(frame)
        n_empty = empty_completions(texts)
        if n_empty:
            log(f"completion view: {n_empty} of {len(frame)} rows have an empty completion (encoded as prompt + EOS)")
        max_len = resolve_max_length(other, max_length)
        segs, lengths, trunc = completion_segments(other.tokenizer, frame["prompt"].tolist(), texts,
                                                   max_length=max_len, eos_token_id=other.tokenizer.eos_token_id)
        other_layers = default_layers(other.num_layers)
        log(f"encoding the completion view with {completion_model}, layers {other_layers}")
        where: dict = {}
        if spec is not None:
            other_spec = {"model": completion_model, "gguf_file": None, "revision": None, "dtype": dtype,
                          "device": device, "any_model": True}
            seconds, total, _, _, where = segments_distributed(
                other, segs, work, layers={COMPLETION: other_layers}, n_rows={COMPLETION: len(frame)},
                spec=other_spec, batch_tokens=batch_tokens, chunk_size=chunk_size, progress=progress, log=log)
        else:
            seconds, total, _, _ = run_segments(other, segs, work, layers={COMPLETION: other_layers},
                                                n_rows={COMPLETION: len(frame)}, batch_tokens=batch_tokens,
                                                progress=progress, desc="encode completion")
        out["other"] = {"model": completion_model, "model_info": other.info, "layers": other_layers,
                        "default_layer": max(other_layers), "n_tokens": lengths, "truncated": trunc,
                        "sources": sources, "empty_completions": n_empty, "seconds": seconds, "tokens": total,
                        **({"distributed": {k: where[k] for k in ("chunks", "workers")}} if where else {})}
    return out


def _fit_view_projection(enc: np.ndarray, fit_rows: np.ndarray, projection: dict | None, seed: int,
                         layer: int, metric: str):
    p = projection or {}
    return fit_projection(enc, fit_rows, method=p.get("method", "umap"), metric=metric, seed=int(p.get("seed", seed)),
                          n_neighbors=int(p.get("n_neighbors", 15)), min_dist=float(p.get("min_dist", 0.1)),
                          layer=layer)


def finish_extras(folder: Path, frame, manifest: dict, extras: dict, *, project: bool = True, k: int | None = None,
                  prompt_folder: Path | None = None):
    """Columns, projections, distances, tokens.parquet and manifest entries for the extras in
    ``folder`` (a build's work folder, or an existing run's, whose prompt encodings are in
    ``prompt_folder``). Returns (frame, manifest)."""
    import pandas as pd

    frame = frame.copy()
    manifest = dict(manifest)
    k = int(k or (manifest.get("neighbours") or {}).get("k", 10))
    prompt_folder = Path(prompt_folder or folder)
    res: ViewsResult | None = extras.get("result")
    views = list(dict.fromkeys(["prompt", *(manifest.get("views") or []), *extras["views"]]))
    metric = manifest.get("distance_metric") or "cosine"
    is_train = frame["split"].to_numpy() == "train"
    settings = dict(manifest.get("view_settings") or {})
    projection = manifest.get("projection") or {}
    seed = int(projection.get("seed", 0) or 0)
    ids = frame["example_id"].astype(str).to_numpy()
    if COMPLETION in extras["views"]:
        other = extras.get("other")
        if other:
            n_tok, trunc, sources = other["n_tokens"], other["truncated"], other["sources"]
            layers, default = other["layers"], other["default_layer"]
            model_info = {"model": other["model"], "model_info": other["model_info"]}
            n_empty = other["empty_completions"]
        else:
            plan = res.plan
            n_tok, trunc, sources = plan.completion_tokens, plan.completion_truncated, plan.completion_source
            layers, default = res.layers[COMPLETION], int(manifest["default_layer"])
            model_info = {"model": manifest["model"]}
            n_empty = plan.completion_empty
        frame["completion_source"] = pd.Series(sources, dtype=object).to_numpy()
        frame["n_tokens_completion"] = np.asarray(n_tok, dtype=np.int64)
        frame["truncated_completion"] = np.asarray(trunc, dtype=bool)
        entry = {**model_info, "layers": [int(x) for x in layers], "default_layer": int(default),
                 "pooling": "eos", "path": f"{ENCODINGS}/{COMPLETION}",
                 "sources": {s: int(n) for s, n in pd.Series(sources).value_counts().sort_index().items()},
                 "empty_completions": int(n_empty or 0), "projection": None}
        ran_on = other.get("distributed") if other else res.distributed
        if ran_on:  # --distributed: the chunks and the workers that encoded the view
            entry["distributed"] = ran_on
        enc = np.load(target_file(folder, COMPLETION, default), mmap_mode="r")
        if project and projection:
            fit_rows = np.flatnonzero(is_train) if projection.get("fit_on", "train") == "train" else np.arange(len(frame))
            proj, coords = _fit_view_projection(enc, fit_rows, projection, seed, default, metric)
            with replacing_dir(folder / PROJECTION_COMPLETION) as tmp:
                proj.save(tmp)
            frame["x_completion"], frame["y_completion"] = coords[:, 0], coords[:, 1]
            entry["projection"] = {**proj.describe(), "fit_on": projection.get("fit_on", "train"),
                                   "path": PROJECTION_COMPLETION}
        if project:
            nearest, rows, dists = nearest_train(enc, is_train, k=k, metric=metric)
            frame["dist_to_train_completion"] = nearest
            frame["nn_train_ids_completion"] = [[str(ids[r]) for r in row if r >= 0] for row in rows]
            frame["nn_train_dists_completion"] = [[float(d) for d, r in zip(dr, row) if r >= 0]
                                                  for dr, row in zip(dists, rows)]
            entry["neighbours"] = {"k": int(k), "layer": int(default), "metric": metric, "exact": True}
        settings[COMPLETION] = entry
    if res is not None and res.plan.tokens is not None:
        tokens = res.plan.tokens.copy()
        atlas_layers = [int(x) for x in res.layers[TOKENS]]
        map_layer = int(manifest["default_layer"])
        info = {**res.plan.atlas, "layers": atlas_layers, "path": f"{ENCODINGS}/{TOKENS}", "file": TOKENS_FILE,
                "map_layer": map_layer, "tokens_per_second": round(res.tokens_per_second, 1),
                "seconds": round(res.seconds, 3), "projection": None,
                **({"distributed": res.distributed} if res.distributed else {})}
        if project and projection and map_layer in atlas_layers and len(tokens):
            prompt_enc = np.load(layer_file(prompt_folder, map_layer), mmap_mode="r")
            atlas_enc = np.load(target_file(folder, TOKENS, map_layer), mmap_mode="r")
            both = np.concatenate([np.asarray(prompt_enc), np.asarray(atlas_enc)])  # [N + T, H]
            fit_rows = np.concatenate([np.flatnonzero(is_train), len(frame) + np.arange(len(tokens))])
            proj, coords = _fit_view_projection(both, fit_rows, projection, seed, map_layer, metric)
            proj.params["fit_set"] = "train prompts + atlas tokens"
            proj.params["n_prompt_rows"] = int(len(frame))
            with replacing_dir(folder / PROJECTION_TOKENS) as tmp:
                proj.save(tmp)
            frame["x_tokens"], frame["y_tokens"] = coords[: len(frame), 0], coords[: len(frame), 1]
            tokens["x"], tokens["y"] = coords[len(frame):, 0], coords[len(frame):, 1]
            info["projection"] = {**proj.describe(), "path": PROJECTION_TOKENS}
        write_parquet_atomic(folder / TOKENS_FILE, tokens)
        manifest["token_atlas"] = info
    manifest["views"] = views
    if settings:
        manifest["view_settings"] = settings
    return frame, manifest


# --------------------------------------------------------------------------- existing runs

def _run_extras(run_dir: str | Path, *, views: Sequence[str], token_atlas: bool, atlas_layers=None,
                atlas_max_tokens: int = DEFAULT_ATLAS_MAX_TOKENS, completion_model: str | None = None,
                batch_tokens: int | None = None, dtype: str = "auto", device: str = "auto", seed: int | None = None,
                distributed: bool = False, chunk_size: int = 512, progress: bool = True, log=print,
                given: dict | None = None) -> dict:
    import pandas as pd

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    frame = pd.read_parquet(run_dir / EXAMPLES)
    views = [v for v in (parse_views(views) if views else []) if v != "prompt"]
    if token_atlas and not (frame["split"] == "train").any():
        raise LLMMapsError(f"{run_dir / EXAMPLES}, field 'split': no train rows (the token atlas holds train "
                           "references)")
    if COMPLETION in views:
        completion_texts(frame)  # one-line error before loading anything
    work = run_dir / ".extras.partial"  # kept when interrupted: the same command resumes
    reuse = _reusable_completion_rows(run_dir, frame, manifest, views, completion_model)
    if reuse is not None:
        log(f"completion view: {int(reuse.sum())} of {len(frame)} rows unchanged (reference as before), "
            f"re-encoding {int((~reuse).sum())}")
    spec = None
    if distributed:
        if not redis_url():
            raise LLMMapsError("--distributed: set REDIS_URL to the Redis the `llm-maps worker` processes use")
        spec = {"model": manifest["model"], "gguf_file": None, "revision": manifest.get("model_revision"),
                "dtype": dtype, "device": device}
    loaded = load_model(manifest["model"], revision=manifest.get("model_revision"), dtype=dtype, device=device,
                        weights=not distributed and bool(token_atlas or (COMPLETION in views and not completion_model)))
    work.mkdir(exist_ok=True)
    seed = int((manifest.get("projection") or {}).get("seed", 0) or 0) if seed is None else int(seed)
    extras = encode_extras(loaded, frame, work, views=views, layers=manifest["layers"],
                           default_layer=int(manifest["default_layer"]), token_atlas=token_atlas,
                           atlas_layers=atlas_layers, atlas_max_tokens=atlas_max_tokens, seed=seed,
                           add_eos=bool(manifest.get("add_eos")), max_length=int(manifest["max_length"]),
                           batch_tokens=batch_tokens, completion_model=completion_model, dtype=dtype, device=device,
                           progress=progress, log=log, completion_rows=None if reuse is None else ~reuse, spec=spec,
                           chunk_size=chunk_size)
    if reuse is not None:  # copy the unchanged rows from the run's current completion view
        for k in extras["result"].layers[COMPLETION]:
            new = np.load(target_file(work, COMPLETION, k), mmap_mode="r+")
            new[reuse] = np.load(target_file(run_dir, COMPLETION, k), mmap_mode="r")[reuse]
            new.flush()
            del new
    # projections, distances and tokens.parquet in the work folder too, then the pieces are swapped in
    frame_out, manifest_out = finish_extras(work, frame, manifest, extras, prompt_folder=run_dir)
    files = {}  # the prepared views, maps and tokens table, moved in by commit_run_files
    for sub in ([COMPLETION] if COMPLETION in views else []) + ([TOKENS] if token_atlas else []):
        files[f"{ENCODINGS}/{sub}"] = work / ENCODINGS / sub
    for name in ([PROJECTION_COMPLETION] if COMPLETION in views else []) + \
                ([PROJECTION_TOKENS] if token_atlas else []):
        if (work / name).exists():
            files[name] = work / name
    if token_atlas:
        files[TOKENS_FILE] = work / TOKENS_FILE
    params = {"views": views, "token_atlas": bool(token_atlas), "completion_model": completion_model,
              "atlas_layers": atlas_layers, "atlas_max_tokens": int(atlas_max_tokens), "seed": seed,
              "reused_rows": int(reuse.sum()) if reuse is not None else 0, "distributed": bool(distributed),
              "chunk_size": int(chunk_size), **({"given": dict(given)} if given is not None else {})}
    outputs = ([f"{ENCODINGS}/{COMPLETION}/", f"{PROJECTION_COMPLETION}/", "view_settings"] if COMPLETION in views
               else []) + ([f"{ENCODINGS}/{TOKENS}/", TOKENS_FILE, f"{PROJECTION_TOKENS}/", "token_atlas"]
                           if token_atlas else [])
    entry = history_entry("atlas" if token_atlas and not views else "encode-view", params,
                          {"examples": EXAMPLES, "encodings": f"{ENCODINGS}/"}, outputs)
    commit_run_files(run_dir, frame_out, manifest_out, entry, files=files,
                     inputs=[EXAMPLES, *(str(layer_file("", k)) for k in manifest["layers"])])
    shutil.rmtree(work, ignore_errors=True)
    return manifest_out


def _reusable_completion_rows(run_dir: Path, frame, manifest: dict, views, completion_model) -> np.ndarray | None:
    """[N] bool: rows whose completion-view encoding can be kept when the view is encoded again (same
    model and layers, and the row's completion was and still is its reference: prompt and
    reference do not change in a run); None when nothing can be kept."""
    old = (manifest.get("view_settings") or {}).get(COMPLETION)
    if COMPLETION not in views or completion_model or not old or old.get("model") != manifest["model"] \
            or [int(k) for k in old.get("layers", [])] != [int(k) for k in manifest["layers"]] \
            or "completion_source" not in frame.columns:
        return None
    if not all(target_file(run_dir, COMPLETION, k).exists() for k in manifest["layers"]):
        return None
    _, sources = completion_texts(frame)
    reuse = (frame["completion_source"].to_numpy() == "reference") & (np.asarray(sources) == "reference")
    return reuse if reuse.any() else None


def encode_view_run(run_dir: str | Path, *, view: str, completion_model: str | None = None, **kwargs) -> dict:
    """`llm-maps encode RUN --view completion`: add (or redo) a view of an existing run."""
    views = parse_views([view])
    if views == ["prompt"]:
        raise LLMMapsError("--view prompt: the prompt view is what `llm-maps build` writes; "
                           "give --view completion")
    return _run_extras(run_dir, views=views, token_atlas=False, completion_model=completion_model, **kwargs)


def atlas_run(run_dir: str | Path, **kwargs) -> dict:
    """`llm-maps atlas RUN`: add (or redo) the token atlas of an existing run."""
    return _run_extras(run_dir, views=[], token_atlas=True, **kwargs)
