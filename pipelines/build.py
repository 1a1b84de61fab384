"""The whole pipeline for one dataset: source -> prompts -> encodings -> map -> distances -> run.

Each stage is a function over a run folder; ``build_run`` chains them in ``RUN.partial/`` and
publishes the folder with one ``os.replace`` when everything is written.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from llm_maps import __version__
from llm_maps.domains import UNKNOWN_DOMAIN, DomainMap
from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import (EXAMPLES, FORMAT_VERSION, MANIFEST, PROJECTION, layer_file,
                                partial_dir, publish, read_manifest, replacing_dir,
                                write_json_atomic, write_parquet_atomic)

PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pandas", "pyarrow", "umap-learn",
            "scikit-learn", "gguf")


def package_versions() -> dict:
    out = {"python": platform.python_version(), "llm-maps": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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


def _counts(frame) -> dict:
    def vc(col):
        return {str(k): int(v) for k, v in frame[col].value_counts().sort_index().items()}

    by_split_domain = {f"{s}/{d}": int(n) for (s, d), n in
                       frame.groupby(["split", "domain"]).size().sort_index().items()}
    return {"examples": int(len(frame)), "train": int((frame["split"] == "train").sum()),
            "test": int((frame["split"] == "test").sum()), "by_domain": vc("domain"),
            "by_split_domain": by_split_domain, "by_category": vc("category"),
            "tasks": int(frame["task"].nunique()),
            "truncated": int(frame["truncated"].sum()) if "truncated" in frame.columns else 0}


def _frame_for_parquet(frame):
    """Make columns Arrow-friendly: nullable outputs/scores, JSON for ragged extra columns."""
    import pandas as pd
    import pyarrow as pa

    frame = frame.copy()
    for col in frame.columns:
        if frame[col].dtype == object:
            # missing keys in ragged sources come back as float NaN: make them nulls
            # (an explicit object Series: pandas would otherwise infer a str dtype with NaN holes)
            values = [None if v is pd.NA or (isinstance(v, float) and v != v) else v for v in frame[col]]
            try:
                pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
                values = [None if v is None else json.dumps(v, default=str) for v in values]
            frame[col] = pd.Series(values, index=frame.index, dtype=object)
    frame["output"] = frame["output"].astype("string")
    frame["score"] = pd.to_numeric(frame["score"]).astype("Float64")
    frame["correct"] = frame["correct"].astype("boolean")
    return frame


# --------------------------------------------------------------------------- stages

def project_folder(folder: Path, frame, manifest: dict, *, method: str = "umap", fit_on: str = "train",
                   seed: int = 0, layer: int | None = None, n_neighbors: int = 15,
                   min_dist: float = 0.1, metric: str | None = None):
    """Fit the 2-D map on the default layer; write ``projection/``; return (frame, manifest)."""
    from pipelines.project import fit_projection

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
    manifest = {**manifest, "projection": {**proj.describe(), "fit_on": fit_on, "path": PROJECTION}}
    return frame, manifest


def neighbours_folder(folder: Path, frame, manifest: dict, *, k: int = 10, metric: str | None = None,
                      layer: int | None = None):
    """Distance to train and k nearest train ids in the full space of one stored layer."""
    from llm_maps.neighbours import nearest_train

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
    manifest = {**manifest, "distance_metric": metric,
                "neighbours": {"k": int(k), "layer": layer, "metric": metric, "exact": True}}
    return frame, manifest


def _write_run_files(folder: Path, frame, manifest: dict) -> None:
    manifest = {**manifest, "counts": _counts(frame)}
    write_parquet_atomic(folder / EXAMPLES, _frame_for_parquet(frame))
    write_json_atomic(folder / MANIFEST, manifest)


def restage_run(run_dir: str | Path, *, stage: str, **kwargs) -> dict:
    """Re-run ``project`` or ``neighbours`` on a finished run, in place (files swapped atomically)."""
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
    manifest["updated"] = now_iso()
    _write_run_files(run_dir, frame, manifest)
    return manifest


def load_sources(data: str | Path | Sequence[str | Path], *, columns: dict | None = None,
                 source_split: str | None = None, data_format: str | None = None):
    """Load and concatenate sources; returns (frame, [source info]). Ids stay unique."""
    import pandas as pd

    from pipelines.sources import load_source

    datas = [data] if isinstance(data, (str, Path)) else list(data)
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


def build_run(*, model: str, data: str | Sequence[str] | None = None, out: str | Path, template: str = "auto",
              frame=None, sources_info: list | None = None, extra_manifest: dict | None = None,
              columns: dict | None = None, source_split: str | None = None, data_format: str | None = None,
              split_by: str = "auto", test_size: float = 0.2, seed: int = 0,
              test_categories: Sequence[str] | None = None, n_test_categories: int = 0,
              domain_map: str | Path | None = None, layers: Sequence[int] | None = None,
              default_layer: int | None = None, add_eos: bool = False, max_length: int | None = None,
              batch_tokens: int | None = None, dtype: str = "auto", device: str = "auto",
              gguf_file: str | None = None, revision: str | None = None,
              projection: str | None = "umap", fit_on: str = "train", n_neighbors: int = 15,
              min_dist: float = 0.1, metric: str = "cosine", k: int = 10, limit: int | None = None,
              distributed: bool = False, chunk_size: int = 512, progress: bool = True, log=print) -> Path:
    """Build a run folder; returns its path. ``projection=None`` stops after encoding.

    Examples come from ``data`` (paths/ids) or a ready ``frame`` (with ``sources_info``); rows that
    already have a ``prompt`` keep it (e.g. lm-eval's exact context), and given ``output``,
    ``score`` and ``correct`` values are kept. ``distributed=True`` encodes in chunks of
    ``chunk_size`` prompts on the Celery workers of REDIS_URL (pipelines.distributed); this process
    then loads only the tokenizer and config.
    """
    from pipelines.encode import encode_to_folder, normalize_layers
    from pipelines.models import load_model
    from pipelines.splits import assign_splits
    from pipelines.templates import get_template

    out = Path(out)
    if out.name.endswith(".partial"):
        raise LLMMapsError(f"--out {out}: a run name may not end in .partial")
    if metric not in ("cosine", "euclidean"):
        raise LLMMapsError(f"--metric: unknown distance metric '{metric}' (cosine, euclidean)")
    if frame is None:
        frame, sources_info = load_sources(data, columns=columns, source_split=source_split,
                                           data_format=data_format)
    if limit:
        frame = frame.iloc[:limit].reset_index(drop=True)
    frame, split_rule = assign_splits(frame, test_size=test_size, seed=seed, by=split_by,
                                      test_categories=test_categories, n_test_categories=n_test_categories)
    dmap = DomainMap.load(domain_map)
    frame, domain_report = assign_domains(frame, dmap)
    if domain_report["unknown_categories"]:
        unknown = ", ".join(f"{c} ({n})" for c, n in domain_report["unknown_categories"].items())
        log(f"warning: categories with no domain in {dmap.path} (kept as '{UNKNOWN_DOMAIN}'): {unknown}")

    if distributed:
        from llm_maps.jobs import redis_url

        if not redis_url():
            raise LLMMapsError("--distributed: set REDIS_URL to the Redis the `llm-maps worker` processes use")
    loaded = load_model(model, gguf_file=gguf_file, revision=revision, dtype=dtype, device=device,
                        layers_check=list(layers or []) + ([default_layer] if default_layer is not None else []),
                        weights=not distributed)
    layer_list = normalize_layers(layers, loaded.num_layers)
    if default_layer is None:
        default = max(layer_list)
    else:
        default = normalize_layers([default_layer], loaded.num_layers)[0]
        if default not in layer_list:
            layer_list = sorted(set(layer_list) | {default})
    limit_positions = loaded.max_positions
    if max_length is not None and limit_positions is not None and max_length > limit_positions:
        raise LLMMapsError(f"--max-length: {max_length} exceeds the model's maximum positions ({limit_positions})")
    tmpl = get_template(template, loaded.tokenizer)
    given = frame["prompt"].tolist() if "prompt" in frame.columns else [None] * len(frame)
    frame["prompt"] = [p if isinstance(p, str) and p else tmpl.render(i, c, tokenizer=loaded.tokenizer)
                       for p, i, c in zip(given, frame["instruction"], frame["context"])]

    work = partial_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    enc_device, enc_dtype, dist_info = loaded.device, loaded.dtype, None
    if distributed:
        from pipelines.distributed import encode_distributed

        log(f"encoding {len(frame)} prompts with {model} on the workers of REDIS_URL, layers {layer_list}, "
            f"into {work}")
        result, dist_info = encode_distributed(
            loaded, frame["prompt"].tolist(), work, layers=layer_list, add_eos=add_eos, max_length=max_length,
            batch_tokens=batch_tokens, chunk_size=chunk_size, progress=progress, log=log,
            spec={"model": str(model), "gguf_file": gguf_file, "revision": revision, "dtype": dtype,
                  "device": device})
        enc_device, enc_dtype = dist_info.pop("device"), dist_info.pop("dtype")
    else:
        log(f"encoding {len(frame)} prompts with {model} on {loaded.device} ({loaded.dtype}), "
            f"layers {layer_list}, into {work}")
        result = encode_to_folder(loaded, frame["prompt"].tolist(), work, layers=layer_list, add_eos=add_eos,
                                  max_length=max_length, batch_tokens=batch_tokens, progress=progress)
    max_len = max_length or min(loaded.max_positions or 2048, 2048)
    frame["n_tokens"] = result.n_tokens
    frame["truncated"] = result.truncated
    for col in ("output", "score", "correct"):
        if col not in frame.columns:
            frame[col] = None if col in ("output", "correct") else np.nan
    for col in ("x", "y", "dist_to_train"):
        frame[col] = np.nan
    frame["nn_train_ids"] = [[] for _ in range(len(frame))]
    front = ["example_id", "split", "task", "category", "domain", "prompt", "reference", "output", "score",
             "correct", "x", "y", "dist_to_train", "nn_train_ids", "instruction", "context", "n_tokens",
             "truncated"]
    frame = frame[front + [c for c in frame.columns if c not in front]]

    manifest = {
        "format_version": FORMAT_VERSION,
        "model": str(model),
        "model_revision": loaded.info.get("revision"),
        "model_file_sha256": loaded.info.get("file_sha256"),
        "model_info": loaded.info,
        "dtype": enc_dtype,
        "device": enc_device,
        "prompt_template": tmpl.describe(),
        "pooling": "eos" if add_eos else "last",
        "add_eos": bool(add_eos),
        "max_length": int(max_len),
        "truncation_side": "left",
        "layers": layer_list,
        "default_layer": int(default),
        "hidden_size": int(loaded.model.config.hidden_size),
        "projection": None,
        "distance_metric": metric,
        "split_rule": split_rule,
        "domain_map": {**dmap.to_manifest(), **domain_report},
        "sources": sources_info or [],
        "counts": {},
        "versions": package_versions(),
        "created": now_iso(),
        "encoding": {"seconds": round(result.seconds, 3), "tokens": int(result.n_tokens.sum()),
                     "tokens_per_second": round(result.tokens_encoded / max(result.seconds, 1e-9), 1),
                     "resumed_rows": result.resumed_rows, "clipped_to_float16": result.clipped_values,
                     "batch_tokens": batch_tokens, **({"distributed": dist_info} if dist_info else {})},
    }
    manifest.update(extra_manifest or {})
    if projection:
        import time

        log(f"projecting with {projection} (fit on {fit_on})")
        t0 = time.perf_counter()
        frame, manifest = project_folder(work, frame, manifest, method=projection, fit_on=fit_on, seed=seed,
                                         n_neighbors=n_neighbors, min_dist=min_dist)
        t1 = time.perf_counter()
        frame, manifest = neighbours_folder(work, frame, manifest, k=k, metric=metric)
        t2 = time.perf_counter()
        manifest["projection"]["seconds"] = round(t1 - t0, 2)
        manifest["neighbours"]["seconds"] = round(t2 - t1, 2)
        log(f"projected in {t1 - t0:.1f} s, distances to train in {t2 - t1:.1f} s")
    _write_run_files(work, frame, manifest)
    return publish(work, out)


def summarize_run(run_dir: str | Path) -> str:
    """A short human summary of a finished run (what `llm-maps info` prints)."""
    import pandas as pd

    manifest = read_manifest(run_dir)
    frame = pd.read_parquet(Path(run_dir) / EXAMPLES)
    c = manifest["counts"]
    lines = [f"run        {Path(run_dir)}",
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
    enc = manifest.get("encoding") or {}
    if enc:
        lines.append(f"encoding   {enc['tokens']} tokens in {enc['seconds']:.1f} s "
                     f"({enc['tokens_per_second']:.0f} tokens/s)")
    from llm_maps.report import accuracy_lines, falloff_lines

    lines += accuracy_lines(frame)
    if frame["correct"].notna().any() and frame["dist_to_train"].notna().any():
        lines += falloff_lines(run_dir, frame, manifest)
    unknown = manifest["domain_map"].get("unknown_categories") or {}
    if unknown:
        lines.append("unknown    categories with no domain: " + ", ".join(f"{k} ({v})" for k, v in unknown.items()))
    return "\n".join(lines)
