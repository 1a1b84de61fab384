"""Writing a run's examples and manifest, with the manifest's counts: a new run's work folder
(``write_run_files``, published whole by the build) and a finished run that `score`, `project`,
`neighbours`, `encode --view` and `atlas` rewrite (``commit_run_files``, through the core's one
way into a run, ``llm_maps.runfolder.commit_stage``)."""

from __future__ import annotations

import json
from pathlib import Path

from typing import Any, Mapping, Sequence

from llm_maps.contract import HistoryEntry
from llm_maps.runfolder import EXAMPLES, MANIFEST, commit_stage, write_json_atomic, write_parquet_atomic

__all__ = ["write_run_files", "commit_run_files", "run_counts", "frame_for_parquet"]


def run_counts(frame) -> dict:
    """The manifest's ``counts``: examples by split, domain, category; tasks; truncated prompts."""
    def vc(col):
        return {str(k): int(v) for k, v in frame[col].value_counts().sort_index().items()}

    by_split_domain = {f"{s}/{d}": int(n) for (s, d), n in
                       frame.groupby(["split", "domain"]).size().sort_index().items()}
    return {"examples": int(len(frame)), "train": int((frame["split"] == "train").sum()),
            "test": int((frame["split"] == "test").sum()), "by_domain": vc("domain"),
            "by_split_domain": by_split_domain, "by_category": vc("category"),
            "tasks": int(frame["task"].nunique()),
            "truncated": int(frame["truncated"].sum()) if "truncated" in frame.columns else 0}


def frame_for_parquet(frame):
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


def write_run_files(folder: Path, frame, manifest: dict) -> None:
    """examples.parquet, then the manifest (with the frame's counts), each written atomically."""
    manifest = {**manifest, "counts": run_counts(frame)}
    write_parquet_atomic(folder / EXAMPLES, frame_for_parquet(frame))
    write_json_atomic(folder / MANIFEST, manifest)


def commit_run_files(run_dir: Path, frame, manifest: Mapping[str, Any], entry: HistoryEntry, *,
                     files: Mapping[str, Path] | None = None, inputs: Sequence[str] = (EXAMPLES,)) -> HistoryEntry:
    """A stage that rewrites a finished run's examples.parquet: ``files`` (prepared files and folders,
    e.g. a view's encodings) moved in, then examples.parquet, then the manifest (``manifest``'s keys
    and the frame's counts) with ``entry`` appended, through ``commit_stage`` (a read-only run is one
    line; ``inputs`` hashed into the entry before anything changes)."""
    changed = {k: v for k, v in manifest.items() if k != "history"}
    changed["counts"] = run_counts(frame)
    return commit_stage(run_dir, entry, outputs={**(files or {}), EXAMPLES: frame_for_parquet(frame)},
                        manifest=changed, inputs=inputs)
