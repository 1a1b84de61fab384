"""The run folder: the contract between pipelines (writers) and the dashboard/worker (readers).

See shared/DESIGN.md. Everything here is torch-free so the web process can import it.

Layout::

    RUN/manifest.json             provenance and parameters (written last)
    RUN/examples.parquet          one row per example
    RUN/encodings/layer_<k>.npy   float16 [N, hidden], row i = example i
    RUN/projection/               the fitted 2-D map (plain arrays + JSON, no pickle)

A run is built in ``RUN.partial/`` beside its final place and moved there with ``os.replace``:
a folder without ``.partial`` in its name and with a manifest is finished.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import LLMMapsError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXAMPLES = "examples.parquet"
ENCODINGS = "encodings"
PROJECTION = "projection"

REQUIRED_COLUMNS = (
    "example_id", "split", "task", "category", "domain", "prompt", "reference", "output",
    "score", "correct", "x", "y", "dist_to_train", "nn_train_ids",
)
MANIFEST_KEYS = (
    "format_version", "model", "dtype", "device", "prompt_template", "pooling", "add_eos",
    "max_length", "truncation_side", "layers", "default_layer", "projection", "distance_metric",
    "split_rule", "domain_map", "sources", "counts", "versions", "created",
)


def partial_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + ".partial")


def layer_file(run_dir: str | Path, layer: int) -> Path:
    return Path(run_dir) / ENCODINGS / f"layer_{int(layer)}.npy"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_parquet_atomic(path: str | Path, frame) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def publish(work_dir: str | Path, run_dir: str | Path) -> Path:
    """Move a finished work folder to its final place, replacing an older run there.

    The old run is moved aside first and removed only after the new one is in place, so a
    reader always sees either the old finished run or the new one.
    """
    work_dir, run_dir = Path(work_dir), Path(run_dir)
    if not (work_dir / MANIFEST).exists():
        raise LLMMapsError(f"{work_dir}: refusing to publish a run without {MANIFEST}")
    _swap_in(work_dir, run_dir)
    return run_dir


def _swap_in(new: Path, final: Path) -> None:
    """Put folder ``new`` at ``final``: the old one is moved aside first and removed only after
    the new one is in place, so a reader sees either the old or the new folder, whole."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def replacing_dir(final: str | Path) -> Iterator[Path]:
    """Write a sub-folder of a run (e.g. projection/) beside it, then swap it in."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _swap_in(tmp, final)


def read_manifest(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if run_dir.name.endswith(".partial"):
        raise LLMMapsError(f"{run_dir}: this run is still being built (or was interrupted); "
                           "re-run the same build command to finish it")
    if not path.exists():
        if partial_dir(run_dir).exists():
            raise LLMMapsError(f"{run_dir}: run is not finished ({partial_dir(run_dir).name} exists); "
                               "re-run the same build command to finish it")
        raise LLMMapsError(f"{path}: no such run (manifest missing)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LLMMapsError(f"{path}: corrupt manifest ({exc})") from None
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise LLMMapsError(f"{path}, field '{missing[0]}': missing from manifest")
    if manifest["format_version"] > FORMAT_VERSION:
        raise LLMMapsError(f"{path}, field 'format_version': {manifest['format_version']} is newer "
                           f"than this version of llm-maps understands ({FORMAT_VERSION})")
    return manifest


class Run:
    """Read-only view of a finished run: manifest, examples, memory-mapped encodings."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir)
        self.manifest = read_manifest(self.path)
        self._examples = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def examples(self):
        if self._examples is None:
            import pandas as pd

            path = self.path / EXAMPLES
            try:
                frame = pd.read_parquet(path)
            except FileNotFoundError:
                raise LLMMapsError(f"{path}: missing") from None
            except Exception as exc:  # pyarrow raises several types for corrupt files
                raise LLMMapsError(f"{path}: unreadable Parquet ({type(exc).__name__}: {exc})") from None
            missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
            if missing:
                raise LLMMapsError(f"{path}, field '{missing[0]}': required column missing")
            self._examples = frame
        return self._examples

    @property
    def layers(self) -> list[int]:
        return [int(k) for k in self.manifest["layers"]]

    @property
    def default_layer(self) -> int:
        return int(self.manifest["default_layer"])

    def encodings(self, layer: int | None = None) -> np.ndarray:
        """Memory-mapped float16 [N, hidden] encodings of one stored layer."""
        layer = self.default_layer if layer is None else int(layer)
        if layer not in self.layers:
            raise LLMMapsError(f"{self.path}: layer {layer} is not stored (stored: {self.layers})")
        path = layer_file(self.path, layer)
        try:
            return np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise LLMMapsError(f"{path}: missing") from None
        except ValueError as exc:
            raise LLMMapsError(f"{path}: corrupt encodings ({exc})") from None


def find_runs(root: str | Path) -> list[Path]:
    """Finished runs directly under ``root`` (folders with a manifest, not ``.partial``)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".partial")
                  and (p / MANIFEST).exists())


def model_name(manifest: dict) -> str:
    """The model as a reader should see it: a hub id as is (``org/name``), a local folder or file
    by its name only (``SmolLM2-135M-Instruct.Q4_1.gguf``), never the author's file system. The
    manifest keeps the full path."""
    import re

    model = str(manifest.get("model") or "")
    gguf = (manifest.get("model_info") or {}).get("gguf_file")
    hub_like = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model) is not None
    if hub_like and not Path(model).exists():
        return model + (f" ({gguf})" if gguf else "")
    name = Path(model.rstrip("/\\")).name or model
    return name + (f" ({Path(gguf).name})" if gguf and Path(gguf).name != name else "")
