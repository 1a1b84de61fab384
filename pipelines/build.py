"""The whole pipeline for one dataset: source -> prompts -> encodings -> map -> distances -> run.

Each stage is a function over a run folder; ``build_run`` chains them in ``RUN.partial/`` and
publishes the folder with one ``os.replace`` when everything is written.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llm_maps.config import DISTANCES, PROJECTION as PROJECTION_GROUP, BuildConfig
from llm_maps.domains import UNKNOWN_DOMAIN, DomainMap
from llm_maps.errors import LLMMapsError
from llm_maps.neighbours import nearest_train
from llm_maps.report import accuracy_lines, falloff_lines, findings_lines
from llm_maps.runfolder import (ENCODINGS, EXAMPLES, FORMAT_VERSION, MANIFEST, PROJECTION, history_entry, layer_file,
                                now_iso, package_versions, partial_dir, publish, read_manifest, replacing_dir,
                                with_history)
from pipelines.atlas import encode_extras, finish_extras, wants_extras
from pipelines.encode import normalize_layers
from pipelines.encoder import Encoder, TransformersEncoder
from pipelines.project import fit_projection
from pipelines.runwrite import commit_run_files, write_run_files
from pipelines.sources import load_source, parse_columns
from pipelines.splits import assign_splits
from pipelines.templates import get_template
from pipelines.views import parse_views, prompt_result

__all__ = ["BuildConfig", "build_run", "restage_run", "project_folder", "neighbours_folder", "summarize_run",
           "load_sources", "assign_domains", "package_versions", "now_iso"]


def assign_domains(frame, domain_map: DomainMap):
    """Add ``domain``; return (frame, report) where report lists unknown categories/tasks."""
    frame = frame.copy()
    keywords = frame["keywords"] if "keywords" in frame.columns else [()] * len(frame)
    domains = []
    for task, cat, kws in zip(frame["task"], frame["category"], keywords):
        if isinstance(kws, str):
            kws = [k.strip() for k in kws.split(",")]
        elif kws is None or (isinstance(kws, float) and kws != kws):
            kws = ()
        domains.append(domain_map.domain_for(task=task, category=cat, keywords=kws))
    frame["domain"] = domains
    unknown = frame.loc[frame["domain"] == UNKNOWN_DOMAIN, "category"].value_counts()
    return frame, {"unknown_categories": {str(k): int(v) for k, v in unknown.items()}}


# --------------------------------------------------------------------------- stages

def project_folder(folder: Path, frame, manifest: dict, *, method: str = "umap", fit_on: str = "train",
                   seed: int = 0, layer: int | None = None, n_neighbors: int = 15,
                   min_dist: float = 0.1, metric: str | None = None):
    """Fit the 2-D map on the default layer; write ``projection/``; return (frame, manifest).

    The manifest's ``projection`` and ``map_seed`` describe the new map; ``history`` gains a
    ``project`` entry (earlier ones are kept)."""
    layer = int(manifest["default_layer"] if layer is None else layer)
    if layer not in manifest["layers"]:
        raise LLMMapsError(f"--layer: layer {layer} is not stored in this run (stored: {manifest['layers']})")
    metric = metric or manifest.get("distance_metric") or "cosine"
    if fit_on not in ("train", "all"):
        raise LLMMapsError(f"--fit-on: must be train or all, got '{fit_on}'")
    enc = np.load(layer_file(folder, layer), mmap_mode="r")
    fit_rows = np.flatnonzero(frame["split"].to_numpy() == "train") if fit_on == "train" else np.arange(len(frame))
    proj, coords = fit_projection(enc, fit_rows, method=method, metric=metric, seed=seed,
                                  n_neighbors=n_neighbors, min_dist=min_dist, layer=layer)
    with replacing_dir(folder / PROJECTION) as tmp:
        proj.save(tmp)
    frame = frame.copy()
    frame["x"], frame["y"] = coords[:, 0], coords[:, 1]
    entry = history_entry(
        "project", {"method": method, "fit_on": fit_on, "seed": int(seed), "layer": layer, "metric": metric,
                    "n_neighbors": int(n_neighbors), "min_dist": float(min_dist)},
        {"encodings": str(layer_file(".", layer)), "split": f"{EXAMPLES}:split"},
        [f"{PROJECTION}/", f"{EXAMPLES}:x", f"{EXAMPLES}:y", "projection", "map_seed"])
    manifest = with_history({**manifest, "projection": {**proj.describe(), "fit_on": fit_on, "path": PROJECTION},
                             "map_seed": int(seed)}, entry)
    return frame, manifest


def neighbours_folder(folder: Path, frame, manifest: dict, *, k: int = 10, metric: str | None = None,
                      layer: int | None = None):
    """Distance to train and k nearest train ids in the full space of one stored layer."""
    layer = int(manifest["default_layer"] if layer is None else layer)
    if layer not in manifest["layers"]:
        raise LLMMapsError(f"--layer: layer {layer} is not stored in this run (stored: {manifest['layers']})")
    metric = metric or manifest.get("distance_metric") or "cosine"
    enc = np.load(layer_file(folder, layer), mmap_mode="r")
    is_train = frame["split"].to_numpy() == "train"
    nearest, rows, dists = nearest_train(enc, is_train, k=k, metric=metric)
    ids = frame["example_id"].to_numpy()
    frame = frame.copy()
    frame["dist_to_train"] = nearest
    frame["nn_train_ids"] = [[str(ids[r]) for r in row if r >= 0] for row in rows]
    frame["nn_train_dists"] = [[float(d) for d, r in zip(drow, row) if r >= 0] for drow, row in zip(dists, rows)]
    entry = history_entry(
        "neighbours", {"k": int(k), "metric": metric, "layer": layer},
        {"encodings": str(layer_file(".", layer)), "split": f"{EXAMPLES}:split"},
        [f"{EXAMPLES}:dist_to_train", f"{EXAMPLES}:nn_train_ids", f"{EXAMPLES}:nn_train_dists", "neighbours",
         "distance_metric"])
    manifest = with_history({**manifest, "distance_metric": metric,
                             "neighbours": {"k": int(k), "layer": layer, "metric": metric, "exact": True}}, entry)
    return frame, manifest


def restage_run(run_dir: str | Path, *, stage: str, given: dict | None = None, **kwargs) -> dict:
    """Re-run ``project`` or ``neighbours`` on a finished run, in place (files swapped atomically);
    ``given``: the command's config as given, kept in the history entry."""
    import pandas as pd

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    frame = pd.read_parquet(run_dir / EXAMPLES)
    if stage == "project":
        frame, manifest = project_folder(run_dir, frame, manifest, **kwargs)
    elif stage == "neighbours":
        frame, manifest = neighbours_folder(run_dir, frame, manifest, **kwargs)
    else:
        raise ValueError(stage)
    *history, entry = manifest["history"]  # the stage's own entry, appended by project/neighbours_folder
    if given is not None:
        entry = {**entry, "params": {**entry["params"], "given": dict(given)}}
    commit_run_files(run_dir, frame, {**manifest, "history": history}, entry,
                     inputs=[EXAMPLES, entry["inputs"]["encodings"]])
    return read_manifest(run_dir)


def load_sources(data: str | Path | Sequence[str | Path], *, columns: dict | None = None,
                 source_split: str | None = None, data_format: str | None = None):
    """Load and concatenate sources; returns (frame, [source info]). Ids stay unique."""
    import pandas as pd

    datas = [data] if isinstance(data, (str, Path)) else list(data or [])
    if not datas:
        raise LLMMapsError("--data: no dataset given")
    sources = [load_source(d, columns=columns, split=source_split, fmt=data_format) for d in datas]
    frames = []
    for src in sources:
        f = src.frame
        if len(sources) > 1:
            f = f.assign(example_id=[f"{src.name}:{i}" for i in f["example_id"]])
        frames.append(f)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    dup = frame["example_id"].duplicated()
    if dup.any():
        raise LLMMapsError(f"--data, field 'id': duplicate id '{frame['example_id'][dup].iloc[0]}' across sources")
    return frame, [s.info for s in sources]


def _previous_history(out: Path) -> list:
    """The history of the run a rebuild replaces (kept, so superseded parameters stay traceable)."""
    try:
        return list(json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("history") or [])
    except (OSError, ValueError, AttributeError):
        return []


_CONFIG_FIELDS = frozenset(f.name for f in fields(BuildConfig))


def build_run(config: BuildConfig | None = None, *, encoder: "Encoder | None" = None, frame=None,
              sources_info: list | None = None, extra_manifest: dict | None = None,
              log: Callable[[str], Any] = print, **options: Any) -> Path:
    """Build a run folder from ``config`` (a ``BuildConfig``; keyword ``options`` set or override its
    fields, e.g. ``build_run(model=..., data=..., out=...)``); returns its path.
    ``config.projection=None`` stops after encoding (`llm-maps encode`).

    ``encoder`` writes the encodings (default: ``TransformersEncoder.load(config)``, the
    transformers model ``config.model``; see ``pipelines.encoder.Encoder``). Examples come from
    ``config.data`` (paths/ids) or a ready ``frame`` (with ``sources_info``); rows that already have
    a ``prompt`` keep it (e.g. lm-eval's exact context), and given ``output``, ``score`` and
    ``correct`` values are kept. ``config.distributed``: encode in chunks of ``chunk_size`` prompts
    on the Celery workers of REDIS_URL (pipelines.distributed); this process then loads only the
    tokenizer and config. ``config.views`` / ``token_atlas`` / ``atlas_layers`` / ``atlas_max_tokens``
    / ``completion_model``: the completion view and the token atlas (pipelines/atlas.py), encoded
    in the same passes as the prompt view (needs the transformers encoder; distributed too).
    """
    cfg = _resolve_config(config, options, log)
    out = Path(cfg.out)
    split_seed, map_seed = cfg.resolved_split_seed, cfg.resolved_map_seed
    if frame is None:
        columns = parse_columns(cfg.columns) if isinstance(cfg.columns, str) else cfg.columns
        frame, sources_info = load_sources(cfg.data or [], columns=dict(columns) if columns else None,
                                           source_split=cfg.source_split, data_format=cfg.data_format)
    if cfg.limit:
        frame = frame.iloc[:cfg.limit].reset_index(drop=True)
    frame, split_rule = assign_splits(frame, test_size=cfg.test_size, seed=split_seed, by=cfg.split_by,
                                      test_categories=cfg.test_categories, n_test_categories=cfg.n_test_categories)
    dmap = DomainMap.load(cfg.domain_map)
    frame, domain_report = assign_domains(frame, dmap)
    if domain_report["unknown_categories"]:
        unknown_cats = ", ".join(f"{c} ({n})" for c, n in domain_report["unknown_categories"].items())
        log(f"warning: categories with no domain in {dmap.path} (kept as '{UNKNOWN_DOMAIN}'): {unknown_cats}")

    extras_wanted = wants_extras(cfg.views, cfg.token_atlas)
    if encoder is None:
        encoder = TransformersEncoder.load(cfg)
    layer_list, default = _layers(cfg, encoder)
    max_length = cfg.max_length
    if max_length is not None and encoder.max_positions is not None and max_length > encoder.max_positions:
        raise LLMMapsError(f"--max-length: {max_length} exceeds the model's maximum positions ({encoder.max_positions})")
    tmpl = get_template(cfg.template, encoder.tokenizer)
    given = frame["prompt"].tolist() if "prompt" in frame.columns else [None] * len(frame)
    frame["prompt"] = [p if isinstance(p, str) and p else tmpl.render(i, c, tokenizer=encoder.tokenizer)
                       for p, i, c in zip(given, frame["instruction"], frame["context"])]

    work = partial_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    result, extras = _encode(cfg, encoder, frame, work, layer_list=layer_list, default=default,
                             max_length=max_length, split_seed=split_seed, extras_wanted=extras_wanted, log=log)
    max_len = max_length or min(encoder.max_positions or 2048, 2048)
    frame = _run_columns(frame, result)
    manifest = _build_manifest(cfg, encoder, result, out=out, template=tmpl, layer_list=layer_list, default=default,
                               max_len=max_len, split_rule=split_rule, dmap=dmap, domain_report=domain_report,
                               sources_info=sources_info)
    manifest.update(extra_manifest or {})
    if cfg.projection:
        frame, manifest = _project_and_neighbours(work, frame, manifest, cfg, map_seed, log)
    if extras_wanted:
        frame, manifest = finish_extras(work, frame, manifest, extras, project=bool(cfg.projection), k=cfg.k)
    write_run_files(work, frame, manifest)
    return publish(work, out)


def _resolve_config(config: BuildConfig | None, options: dict, log: Callable[[str], Any]) -> BuildConfig:
    """``config`` with ``options`` applied, checked (one-line errors), its seed note said."""
    unknown = sorted(set(options) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(f"build_run: unknown option(s) {', '.join(unknown)} (see llm_maps.config.BuildConfig)")
    cfg = (config or BuildConfig()).replace(**options) if options else (config or BuildConfig())
    if not cfg.model:
        raise LLMMapsError("--model: no model given")
    if not cfg.out:
        raise LLMMapsError("--out: no run folder given")
    out = Path(cfg.out)
    if out.name.endswith(".partial"):
        raise LLMMapsError(f"--out {out}: a run name may not end in .partial")
    if cfg.metric not in ("cosine", "euclidean"):
        raise LLMMapsError(f"--metric: unknown distance metric '{cfg.metric}' (cosine, euclidean)")
    note = cfg.seed_note()
    if note:
        log(note)
    return cfg


def _layers(cfg: BuildConfig, encoder: Encoder) -> tuple[list[int], int]:
    """The stored layers (the default one included) and the default (map) layer."""
    layer_list = normalize_layers(cfg.layers, encoder.num_layers)
    if cfg.default_layer is None:
        return layer_list, max(layer_list)
    default = normalize_layers([cfg.default_layer], encoder.num_layers)[0]
    if default not in layer_list:
        layer_list = sorted(set(layer_list) | {default})
    return layer_list, default


def _encode(cfg: BuildConfig, encoder: Encoder, frame, work: Path, *, layer_list: list[int], default: int,
            max_length: int | None, split_seed: int, extras_wanted: bool, log: Callable[[str], Any]):
    """Encode the prompts into ``work`` (with the completion view and the token atlas in the same
    passes when wanted); returns (the prompt view's EncodeResult, the extras or None)."""
    if not extras_wanted:
        return encoder.encode(frame["prompt"].tolist(), work, layers=layer_list, add_eos=cfg.add_eos,
                              max_length=max_length, batch_tokens=cfg.batch_tokens, progress=cfg.progress,
                              log=log), None
    loaded = getattr(encoder, "loaded", None)
    if loaded is None:
        raise LLMMapsError("--views completion / --token-atlas: need the transformers encoder "
                           f"(got {type(encoder).__name__})")
    # an earlier attempt of this build in the plain encoder (without views) left its resume state: the
    # views pass encodes the prompts itself, so that state is stale and must not reach the run
    for stale in (work / ENCODINGS / ".state.json", work / ENCODINGS / ".done.npy"):
        stale.unlink(missing_ok=True)
    where = "the workers of REDIS_URL" if cfg.distributed else f"{loaded.device} ({loaded.dtype})"
    log(f"encoding {len(frame)} examples with {cfg.model} on {where}, layers {layer_list}, into {work}")
    extras = encode_extras(loaded, frame, work, views=["prompt", *parse_views(cfg.views)], layers=layer_list,
                           default_layer=default, token_atlas=cfg.token_atlas, atlas_layers=cfg.atlas_layers,
                           atlas_max_tokens=cfg.atlas_max_tokens, seed=split_seed, add_eos=cfg.add_eos,
                           max_length=max_length, batch_tokens=cfg.batch_tokens,
                           completion_model=cfg.completion_model, dtype=cfg.dtype, device=cfg.device,
                           progress=cfg.progress, log=log,
                           spec=getattr(encoder, "spec", None) if cfg.distributed else None,
                           chunk_size=cfg.chunk_size)
    return prompt_result(extras["result"]), extras


RUN_FRONT = ["example_id", "split", "task", "category", "domain", "prompt", "reference", "output", "score",
             "correct", "x", "y", "dist_to_train", "nn_train_ids", "instruction", "context", "n_tokens",
             "truncated"]  # examples.parquet's first columns, in this order


def _run_columns(frame, result):
    """examples.parquet's columns after encoding: token counts, empty map and distance columns,
    outputs and scores kept where given, ``RUN_FRONT`` first."""
    frame["n_tokens"] = result.n_tokens
    frame["truncated"] = result.truncated
    for col in ("output", "score", "correct"):
        if col not in frame.columns:
            frame[col] = None if col in ("output", "correct") else np.nan
    for col in ("x", "y", "dist_to_train"):
        frame[col] = np.nan
    frame["nn_train_ids"] = [[] for _ in range(len(frame))]
    return frame[RUN_FRONT + [c for c in frame.columns if c not in RUN_FRONT]]


def _build_manifest(cfg: BuildConfig, encoder: Encoder, result, *, out: Path, template, layer_list: list[int],
                    default: int, max_len: int, split_rule, dmap: DomainMap, domain_report: dict,
                    sources_info: list | None) -> dict:
    """The new run's manifest, its history the replaced run's and an ``encode`` entry."""
    info = encoder.info
    split_seed, map_seed = cfg.resolved_split_seed, cfg.resolved_map_seed
    encode_entry = history_entry(
        "encode", {**cfg.record(exclude_groups=(PROJECTION_GROUP, DISTANCES)),
                   "resolved": {"split_seed": split_seed, "map_seed": map_seed, "layers": layer_list,
                                "default_layer": int(default), "max_length": int(max_len)}},
        {"sources": sources_info or [], "model": str(cfg.model), "model_revision": info.get("revision"),
         "model_file_sha256": info.get("file_sha256")},
        [EXAMPLES, *(str(layer_file(".", k)) for k in layer_list)])
    return {
        "format_version": FORMAT_VERSION,
        "model": str(cfg.model),
        "model_revision": info.get("revision"),
        "model_file_sha256": info.get("file_sha256"),
        "model_info": info,
        "dtype": result.dtype or encoder.dtype,
        "device": result.device or encoder.device,
        "prompt_template": template.describe(),
        "pooling": "eos" if cfg.add_eos else "last",
        "add_eos": bool(cfg.add_eos),
        "max_length": int(max_len),
        "truncation_side": "left",
        "layers": layer_list,
        "default_layer": int(default),
        "hidden_size": int(encoder.hidden_size),
        "max_positions": encoder.max_positions,
        # counted at build time when the encoder knows it (TransformersEncoder.n_params); compare reads it
        **({"n_params": int(n_params)} if (n_params := getattr(encoder, "n_params", None)) is not None else {}),
        "projection": None,
        "distance_metric": cfg.metric,
        "split_rule": split_rule,
        "split_seed": split_seed,
        "domain_map": {**dmap.to_manifest(), **domain_report},
        "sources": sources_info or [],
        "counts": {},
        "versions": package_versions(),
        "created": now_iso(),
        "encoding": {"seconds": round(result.seconds, 3), "tokens": int(result.n_tokens.sum()),
                     "tokens_per_second": round(result.tokens_encoded / max(result.seconds, 1e-9), 1),
                     "resumed_rows": result.resumed_rows, "clipped_to_float16": result.clipped_values,
                     "batch_tokens": cfg.batch_tokens,
                     **({"distributed": result.distributed} if result.distributed else {})},
        "history": [*_previous_history(out), encode_entry],
    }


def _project_and_neighbours(work: Path, frame, manifest: dict, cfg: BuildConfig, map_seed: int,
                            log: Callable[[str], Any]):
    """The map and the distances to train of a new run (timed into the manifest)."""
    log(f"projecting with {cfg.projection} (fit on {cfg.fit_on})")
    t0 = time.perf_counter()
    frame, manifest = project_folder(work, frame, manifest, method=cfg.projection, fit_on=cfg.fit_on,
                                     seed=map_seed, n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist)
    t1 = time.perf_counter()
    frame, manifest = neighbours_folder(work, frame, manifest, k=cfg.k, metric=cfg.metric)
    t2 = time.perf_counter()
    manifest["projection"]["seconds"] = round(t1 - t0, 2)
    manifest["neighbours"]["seconds"] = round(t2 - t1, 2)
    log(f"projected in {t1 - t0:.1f} s, distances to train in {t2 - t1:.1f} s")
    return frame, manifest


def summarize_run(run_dir: str | Path) -> str:
    """A short human summary of a finished run (what `llm-maps info` prints)."""
    import pandas as pd

    manifest = read_manifest(run_dir)
    frame = pd.read_parquet(Path(run_dir) / EXAMPLES)
    c = manifest["counts"]
    lines = [f"run        {Path(run_dir)}", *findings_lines(run_dir),  # the verdict first
             *(f"note       {n}" for n in manifest.get("notes") or []),
             f"model      {manifest['model']} ({manifest['dtype']} on {manifest['device']})",
             f"template   {manifest['prompt_template']['name']}, pooling {manifest['pooling']}, "
             f"max_length {manifest['max_length']} (truncated: {c.get('truncated', 0)})",
             f"layers     {manifest['layers']} (default {manifest['default_layer']})",
             f"examples   {c['examples']} ({c['train']} train, {c['test']} test), {c['tasks']} tasks",
             f"domains    " + ", ".join(f"{d}: {n}" for d, n in c["by_domain"].items())]
    proj = manifest.get("projection")
    if proj:
        lines.append(f"projection {proj['method']} ({proj['metric']}, fit on {proj['fit_on']})")
    if frame["dist_to_train"].notna().any():
        for split in ("train", "test"):
            d = frame.loc[frame["split"] == split, "dist_to_train"].dropna()
            if len(d):
                lines.append(f"dist/{split:<5} {manifest['distance_metric']}: median {d.median():.4f}, "
                             f"p10 {d.quantile(0.1):.4f}, p90 {d.quantile(0.9):.4f}")
    views = manifest.get("views") or []
    if "completion" in views and "dist_to_train_completion" in frame.columns:
        d = frame.loc[frame["split"] == "test", "dist_to_train_completion"].dropna()
        src = (manifest.get("view_settings") or {}).get("completion", {}).get("sources", {})
        lines.append(f"completion view (prompt + completion + EOS): " + ", ".join(f"{k} {v}" for k, v in src.items())
                     + (f"; dist/test median {d.median():.4f}" if len(d) else ""))
    atlas = manifest.get("token_atlas")
    if atlas:
        lines.append(f"atlas      {atlas['tokens']} reference tokens of {atlas['examples']}/{atlas['train_examples']} "
                     f"train examples, layers {atlas['layers']}"
                     + (f" (sampled: cap {atlas['max_tokens']}, seed {atlas['seed']})" if atlas["sampled"] else ""))
    enc = manifest.get("encoding") or {}
    if enc:
        lines.append(f"encoding   {enc['tokens']} tokens in {enc['seconds']:.1f} s "
                     f"({enc['tokens_per_second']:.0f} tokens/s)")
    lines += accuracy_lines(frame)
    if frame["correct"].notna().any() and frame["dist_to_train"].notna().any():
        lines += falloff_lines(run_dir, frame, manifest)
    if "split_seed" in manifest or "map_seed" in manifest:
        lines.append(f"seeds      split {manifest.get('split_seed', '-')}, map {manifest.get('map_seed', '-')}")
    history = manifest.get("history") or []
    if history:
        stages = [h["stage"] for h in history]
        shown = ", ".join(stages[-8:]) + (f" (and {len(stages) - 8} earlier)" if len(stages) > 8 else "")
        lines.append(f"history    {shown}; last {history[-1]['created']} (manifest.history)")
    unknown = manifest["domain_map"].get("unknown_categories") or {}
    if unknown:
        lines.append("unknown    categories with no domain: " + ", ".join(f"{k} ({v})" for k, v in unknown.items()))
    return "\n".join(lines)
