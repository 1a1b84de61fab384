"""The run folder: the contract between pipelines (writers) and the dashboard/worker (readers).

The contract is docs/run-folder.md (every file, column and manifest key), written from the types
in ``llm_maps.contract``. Everything here is torch-free so the web process can import it.

Layout::

    RUN/manifest.json             provenance and parameters (written last)
    RUN/examples.parquet          one row per example
    RUN/encodings/layer_<k>.npy   float16 [N, hidden], row i = example i
    RUN/projection/               the fitted 2-D map (plain arrays + JSON, no pickle)

A run is built in ``RUN.partial/`` beside its final place and moved there with ``os.replace``:
a folder without ``.partial`` in its name and with a manifest is finished.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import time
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, cast

import numpy as np

from .contract import FORMAT_VERSION, MANIFEST_KEYS, REQUIRED_COLUMNS, HistoryEntry, Manifest
from .errors import LLMMapsError
from ._version import __version__

__all__ = ["FORMAT_VERSION", "MANIFEST_KEYS", "REQUIRED_COLUMNS", "MANIFEST", "EXAMPLES", "ENCODINGS",
           "PROJECTION", "FINETUNE_FILE", "CHECKPOINTS", "Run", "RunIds", "find_runs", "runs_in", "is_group",
           "run_group", "run_name", "is_run_dir", "split_run_args", "model_name", "model_label", "read_manifest",
           "publish", "replacing_dir", "write_json_atomic", "write_parquet_atomic", "save_npy_atomic", "layer_file",
           "partial_dir", "package_versions", "now_iso", "history_entry", "with_history", "add_note",
           "file_digest", "check_writable", "record_stage", "commit_stage"]

MANIFEST = "manifest.json"
FINETUNE_FILE = "finetune.json"  # a fine-tuning group's settings and loss curve (pipelines/finetune.py)
CHECKPOINTS = "checkpoints"  # a fine-tuning group's checkpoints (merged models, training state)
EXAMPLES = "examples.parquet"
ENCODINGS = "encodings"
PROJECTION = "projection"

PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pandas", "pyarrow", "umap-learn",
            "scikit-learn", "gguf")


def package_versions() -> dict[str, str]:
    """Versions of python, llm-maps and the packages a run's numbers depend on (those installed)."""
    return dict(_package_versions())


@lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:  # read once per process (~30 ms)
    out = {"python": platform.python_version(), "llm-maps": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return tuple(out.items())


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def history_entry(stage: str, params: Mapping[str, Any], inputs: Mapping[str, Any],
                  outputs: Sequence[str]) -> HistoryEntry:
    """One ``manifest.history`` entry: a stage, its parameters, what it read and wrote, when, with what."""
    return {"stage": stage, "params": dict(params), "inputs": dict(inputs), "outputs": list(outputs),
            "versions": package_versions(), "created": now_iso()}


def with_history(manifest: Mapping[str, Any], *entries: HistoryEntry) -> dict[str, Any]:
    """A copy of ``manifest`` with ``entries`` appended to its history (earlier entries kept)."""
    return {**manifest, "history": [*(manifest.get("history") or []), *entries]}


def add_note(run_dir: str | Path, note: str) -> bool:
    """Keep a caveat about a run in the run (``manifest.notes``), where every reader finds it (findings,
    the Findings page, exports, `info`), not in one stage's output that a re-run replaces. Recorded
    in the history; a note already there is not added twice. Returns whether it was added."""
    manifest = read_manifest(run_dir)
    notes = list(manifest.get("notes") or [])
    if note in notes:
        return False
    commit_stage(run_dir, history_entry("note", {"note": note}, {}, [MANIFEST]), outputs={},
                 manifest={"notes": [*notes, note]})
    return True


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's content (streamed; remembered per size and modification time)."""
    import hashlib

    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = "sha256:" + h.hexdigest()
    return _DIGESTS[key]


def check_writable(run_dir: str | Path, files: Sequence[str], *, hint: str = "") -> None:
    """Fail at once, in one line, when ``files`` cannot be written into the run (a read-only copy, a
    shared folder): before a stage spends minutes on a result it could not keep."""
    run_dir = Path(run_dir)
    probe = run_dir / f".write-check.{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise LLMMapsError(f"{run_dir}: cannot write {', '.join(files)} into this run "
                           f"({exc.strerror or exc}){'; ' + hint if hint else ''}") from None


def record_stage(run_dir: str | Path, stage: str, params: Mapping[str, Any], *, outputs: Mapping[str, Any],
                 inputs: Sequence[str] = (), given: Mapping[str, Any] | None = None,
                 seed: int | None = None, sources: Mapping[str, Any] | None = None,
                 manifest: Mapping[str, Any] | None = None) -> HistoryEntry:
    """A stage's files written into a run with its history entry (``commit_stage``): the entry keeps
    the parameters (``params`` as resolved; ``given``: the stage's config as the user gave it), the
    seed, ``sources`` and the input files with their content hashes, the outputs (the files, and
    ``manifest.json`` when the stage sets ``manifest`` keys) and the package versions."""
    recorded = dict(params)
    if seed is not None:
        recorded["seed"] = int(seed)
    if given is not None:
        recorded["given"] = dict(given)
    entry = history_entry(stage, recorded, dict(sources or {}), [*outputs, *([MANIFEST] if manifest else [])])
    return commit_stage(run_dir, entry, outputs=outputs, manifest=manifest, inputs=inputs)


def commit_stage(run_dir: str | Path, entry: HistoryEntry, *, outputs: Mapping[str, Any],
                 manifest: Mapping[str, Any] | None = None, inputs: Sequence[str] = ()) -> HistoryEntry:
    """The one way a stage writes into a finished run. First a check that the run can be written (a
    read-only run: one line naming it and the files, before anything changes); the content hashes
    of ``inputs`` (files relative to the run) go into the entry's ``inputs.files``. Then each of
    ``outputs`` (file name -> a pandas DataFrame for ``.parquet``, a prepared file or folder (a
    ``Path``) moved into place, or a JSON-ready value), each atomically; last the manifest, with
    ``manifest`` keys set and ``entry`` appended to its history, in one replace: a reader sees the
    old run or the new one. Errors are raised, never swallowed. Returns the entry as recorded."""
    run_dir = Path(run_dir)
    check_writable(run_dir, list(outputs) or [MANIFEST])
    digests = {name: file_digest(run_dir / name) for name in inputs if (run_dir / name).is_file()}
    entry = cast(HistoryEntry, {**entry, "inputs": {**entry["inputs"], "files": digests}})
    name = MANIFEST
    try:
        for name, value in outputs.items():
            target = run_dir / name
            if isinstance(value, Path):
                if value.is_dir():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _swap_in(value, target)
                else:
                    os.replace(value, target)
            elif name.endswith(".parquet"):
                write_parquet_atomic(target, value)
            else:
                write_json_atomic(target, value)
        current = read_manifest(run_dir)
        write_json_atomic(run_dir / MANIFEST, {**with_history({**current, **(manifest or {})}, entry),
                                               "updated": entry["created"]})
    except OSError as exc:
        raise LLMMapsError(f"{run_dir / name}: cannot write ({exc.strerror or exc})") from None
    return entry


def partial_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + ".partial")


def layer_file(run_dir: str | Path, layer: int) -> Path:
    return Path(run_dir) / ENCODINGS / f"layer_{int(layer)}.npy"


@contextmanager
def parquet_errors(path: str | Path, missing: str = "missing") -> Iterator[None]:
    """Around the reading of a Parquet file: a missing file raises LLMMapsError ``"{path}: {missing}"``,
    any other failure (pyarrow raises several types for corrupt files) ``"{path}: unreadable
    Parquet (Type: message)"``, one line each."""
    try:
        yield
    except FileNotFoundError:
        raise LLMMapsError(f"{path}: {missing}") from None
    except LLMMapsError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise LLMMapsError(f"{path}: unreadable Parquet ({type(exc).__name__}: {exc})") from None


def read_result_json(path: str | Path, what: str, required: Mapping[str, type],
                     newest: int | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON result a stage wrote (falloff.json, regions.json, findings.json): (data, None); (None,
    None) when there is none; (None, ``"{path}: unreadable {what} (why)"``) when it is not JSON, one
    of ``required`` (key -> type) is missing or of another type, or its ``format_version`` is newer
    than ``newest``."""
    path = Path(path)
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for key, kind in required.items():
            if not isinstance(data.get(key), kind):
                raise ValueError(f"no '{key}' {'list' if kind is list else 'object' if kind is dict else kind.__name__}")
        if newest is not None and int(data.get("format_version", 0)) > newest:
            raise ValueError(f"format_version {data.get('format_version')} is newer than this reader's ({newest})")
        return data, None
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
        return None, f"{path}: unreadable {what} ({exc})"


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


def write_parquet_atomic(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame as zstd Parquet, atomically."""
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


def read_manifest(run_dir: str | Path) -> Manifest:
    """The manifest of a finished run, with its required keys checked (one-line errors)."""
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
    if not isinstance(manifest, dict):
        raise LLMMapsError(f"{path}: corrupt manifest (not a JSON object)")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise LLMMapsError(f"{path}, field '{missing[0]}': missing from manifest")
    if manifest["format_version"] > FORMAT_VERSION:
        raise LLMMapsError(f"{path}, field 'format_version': {manifest['format_version']} is newer "
                           f"than this version of llm-maps understands ({FORMAT_VERSION})")
    return cast(Manifest, manifest)


def _read_arrow_lists(path: Path) -> Any:
    """A Parquet file as pandas reads it, but for its list columns: Arrow arrays (``pd.ArrowDtype``)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    names = schema.names
    lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
    frame = pd.read_parquet(path, columns=[n for n in names if n not in lists])
    table = pq.read_table(path, columns=lists)
    for name in lists:
        frame[name] = pd.Series(pd.arrays.ArrowExtensionArray(table[name]), index=frame.index)
    return frame[[n for n in names if n in frame.columns]]


class Run:
    """Read-only view of a finished run: manifest, examples, memory-mapped encodings."""

    def __init__(self, run_dir: str | Path, *, arrow_lists: bool = False):
        """``arrow_lists``: list columns (``nn_train_ids``...) stay Arrow arrays in ``examples``
        (``pd.ArrowDtype``; a row's value is a Python list) rather than a NumPy array per row: a
        run of a million rows holds ~250 MB less (the dashboard reads runs so)."""
        self.path = Path(run_dir)
        self.manifest: Manifest = read_manifest(self.path)
        self._examples: Any = None
        self._arrow_lists = arrow_lists

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.path.name

    @property
    def examples(self) -> Any:
        """examples.parquet as a pandas DataFrame (read once, required columns checked)."""
        if self._examples is None:
            import pandas as pd

            path = self.path / EXAMPLES
            with parquet_errors(path):
                frame = _read_arrow_lists(path) if self._arrow_lists else pd.read_parquet(path)
            missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
            if missing:
                raise LLMMapsError(f"{path}, field '{missing[0]}': required column missing")
            self._examples = frame
        return self._examples

    @property
    def layers(self) -> list[int]:
        """The stored layers (``hidden_states`` indices: 0 = embeddings .. the last layer)."""
        return [int(k) for k in self.manifest["layers"]]

    @property
    def default_layer(self) -> int:
        """The layer of the map and of ``dist_to_train``."""
        return int(self.manifest["default_layer"])

    def encodings(self, layer: int | None = None) -> np.ndarray:
        """Memory-mapped float16 [N, hidden] encodings of one stored layer."""
        layer = self.default_layer if layer is None else int(layer)
        if layer not in self.layers:
            raise LLMMapsError(f"{self.path}: layer {layer} is not stored (stored: {self.layers})")
        path = layer_file(self.path, layer)
        try:
            array: np.ndarray = np.load(path, mmap_mode="r")
            return array
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


def _unfinished(root: Path) -> list[Path]:
    """Builds in progress (or interrupted) directly under ``root``: ``NAME.partial`` without ``NAME``."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name.endswith(".partial") and not p.with_name(p.name[:-len(".partial")]).exists())


def is_group(folder: str | Path) -> bool:
    """A fine-tuning group (``llm-maps finetune --out GROUP``): not a run itself, it holds
    ``finetune.json`` (written when training ends) or ``checkpoints/`` (while it trains)."""
    folder = Path(folder)
    return not (folder / MANIFEST).exists() and ((folder / FINETUNE_FILE).is_file()
                                                 or (folder / CHECKPOINTS).is_dir())


def run_group(run_dir: str | Path) -> str | None:
    """The name of the group a run belongs to (the group folder holding it), else None."""
    parent = Path(run_dir).absolute().parent
    return parent.name if is_group(parent) else None


def run_name(run_dir: str | Path) -> str:
    """The id a run's folder asks for (``RunIds`` gives it unless it is taken): the folder's name;
    for a run of a group, ``GROUP.NAME`` (``demo-ft.step-000048``): readable, unambiguous beside
    other groups' ``step-*`` runs, and free of "/" (it is a URL path part and a file name)."""
    run_dir = Path(run_dir)
    group = run_group(run_dir)
    return f"{group}.{run_dir.name}" if group else run_dir.name


def runs_in(root: str | Path, *, unfinished: bool = False) -> list[Path]:
    """The one rule for the runs a folder of runs holds, used by the dashboard, the worker and
    ``llm-maps serve``: its finished runs (``find_runs``) and those of each fine-tuning group in it
    (``is_group``: ``GROUP/step-*``), a group's runs at the group's place in name order; ``root``
    a group itself: its runs. ``unfinished``: then the builds still in progress (``NAME.partial``
    without a finished ``NAME``), top level and in groups, so they show as such."""
    root = Path(root)
    if not root.is_dir():
        return []
    groups = [] if is_group(root) else sorted(p for p in root.iterdir()
                                               if p.is_dir() and not p.name.startswith(".")
                                               and not p.name.endswith(".partial") and is_group(p))
    done = sorted([*find_runs(root), *groups])
    out = [r for p in done for r in (find_runs(p) if p in groups else [p])]
    if unfinished:
        out += [p for folder in (root, *groups) for p in _unfinished(folder)]
    return out


def is_run_dir(path: str | Path) -> bool:
    """A folder that is a run, or one being built: a manifest, a ``.partial`` name, or a
    ``NAME.partial`` beside it."""
    path = Path(path)
    return (path / MANIFEST).exists() or path.name.endswith(".partial") or partial_dir(path).exists()


def split_run_args(paths: Iterable[str | Path], *, strict: bool = True) -> tuple[list[Path], list[Path]]:
    """(runs, folders of runs) among folders given where runs are expected (``llm-maps serve RUN...``,
    ``llm-maps worker RUN...``): a folder that is no run but holds runs, or is a group, is the folder
    of runs it is. ``strict``: a folder that does not exist, or is neither, is a one-line
    LLMMapsError saying what to type; else it stays a run (shown as unreadable, with why)."""
    runs: list[Path] = []
    folders: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            if strict:
                raise LLMMapsError(f"{p}: no such run folder")
            runs.append(p)
        elif not p.is_dir() or is_run_dir(p):
            runs.append(p)
        elif is_group(p) or runs_in(p, unfinished=True):
            folders.append(p)
        elif strict:
            raise LLMMapsError(f"{p}: neither a run (no {MANIFEST}) nor a folder of runs; give a run folder, or "
                               f"`--data {p}` to serve the runs built there later")
        else:
            runs.append(p)
    return runs, folders


def run_ids(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """The one rule for run ids, shared by the web process, the worker and the point store: a run's
    id is its folder name (a group's run: ``GROUP.NAME``, see ``run_name``); the second folder of the
    same name (in the order given, a folder seen twice counted once) is ``name-2``, the third
    ``name-3``. Returns ``(id, path)`` in order.
    (``RunIds`` keeps the ids of runs seen before when new ones appear.)"""
    return RunIds().assign(paths)


class RunIds:
    """Run ids that stay put for the life of a run: the first time a folder is seen it gets an id by
    the rule of ``run_ids`` (its name, or ``name-2``... when that id is taken), and it keeps that id
    while it exists and after it is gone (a later run never takes the id of an earlier one, so points
    saved on a run stay with it). With a ``state_dir`` the assignment is kept in
    ``state_dir/run-ids.json`` (under a file lock), shared by the web process and its workers and
    kept across restarts; without one, for the life of this object."""

    FILE = "run-ids.json"

    def __init__(self, state_dir: str | Path | None = None):
        self.file = Path(state_dir) / self.FILE if state_dir is not None else None
        self._ids: dict[str, str] = {}  # resolved folder -> id, in the order assigned
        self._stamp: tuple[int, int] | None = None

    def assign(self, paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
        """``(id, path)`` for ``paths`` in order (a folder given twice counted once)."""
        items: list[tuple[str, Path]] = []
        seen: set[str] = set()
        for p in map(Path, paths):
            key = str(p.resolve())
            if key not in seen:
                seen.add(key)
                items.append((key, p))
        self._refresh()
        if any(key not in self._ids for key, _ in items):
            with self._locked():
                self._refresh(force=True)
                taken = set(self._ids.values())
                seen_names: dict[str, int] = {}  # how many folders of each name have an id
                for known in self._ids:
                    seen_names[run_name(Path(known))] = seen_names.get(run_name(Path(known)), 0) + 1
                for key, p in items:
                    if key not in self._ids:
                        name = run_name(p) or "run"
                        n = seen_names.get(name, 0) + 1
                        run_id = name if n == 1 else f"{name}-{n}"  # the second "tiny" is tiny-2, the third tiny-3
                        while run_id in taken:  # a folder really named "tiny-2" beside two "tiny": "tiny-2-2"
                            run_id += "-2"
                        seen_names[name] = n
                        self._ids[key] = run_id
                        taken.add(run_id)
                self._save()
        return [(self._ids[key], p) for key, p in items]

    def known(self, path: str | Path) -> str | None:
        """The id ``path`` was given before, if it was (nothing is assigned or written)."""
        self._refresh()
        return self._ids.get(str(Path(path).resolve()))

    def _refresh(self, force: bool = False) -> None:
        if self.file is None:
            return
        try:
            st = self.file.stat()
        except OSError:  # none yet (or no folder to hold one)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if force or stamp != self._stamp:
            try:
                data = json.loads(self.file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise LLMMapsError(f"{self.file}: unreadable run-id map ({exc})") from None
            ids = data.get("ids") if isinstance(data, dict) else None
            if not isinstance(ids, dict):
                raise LLMMapsError(f"{self.file}, field 'ids': missing or not an object")
            self._ids.update({str(k): str(v) for k, v in ids.items()})
            self._stamp = stamp

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self.file is not None:
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                lock = open(self.file.with_name(f".{self.FILE}.lock"), "w")
            except OSError:  # a read-only state folder (e.g. runs on a read-only volume): ids for the life
                self.file = None  # of this process, as with no state folder, rather than no service
        if self.file is None:
            yield
            return
        import fcntl

        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self) -> None:
        if self.file is not None:
            write_json_atomic(self.file, {"ids": self._ids})
            st = self.file.stat()
            self._stamp = (st.st_mtime_ns, st.st_size)


def run_key(manifest: Mapping[str, Any]) -> str:
    """What tells two runs apart beyond their ids (same on every machine that has a copy of the run)."""
    counts = manifest.get("counts") or {}
    return f"{manifest.get('created')}|{manifest.get('model')}|{counts.get('examples')}"


def check_run_files(run_dir: str | Path, manifest: Mapping[str, Any]) -> None:
    """Raise LLMMapsError naming the file when a run's files do not match its manifest: the examples
    file unreadable or of another row count, an encodings file missing, of another shape or row
    count. Reads only file headers (Parquet footer, .npy header), never the data."""
    run_dir = Path(run_dir)
    n = (manifest.get("counts") or {}).get("examples")
    path = run_dir / EXAMPLES
    with parquet_errors(path):
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
    if n is not None and rows != int(n):
        raise LLMMapsError(f"{path}: {rows} rows, but the manifest says {n} examples")
    hidden = None
    for layer in manifest.get("layers") or []:
        path = layer_file(run_dir, layer)
        try:
            arr = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise LLMMapsError(f"{path}: missing (layer {layer} is listed in the manifest)") from None
        except (ValueError, OSError) as exc:
            raise LLMMapsError(f"{path}: corrupt encodings ({exc})") from None
        if arr.ndim != 2 or arr.shape[0] != rows:
            raise LLMMapsError(f"{path}: shape {tuple(arr.shape)}, expected ({rows}, hidden) to match "
                               f"{EXAMPLES}")
        if hidden is not None and arr.shape[1] != hidden:
            raise LLMMapsError(f"{path}: hidden size {arr.shape[1]}, other layers have {hidden}")
        hidden = arr.shape[1]
        model_hidden = manifest.get("hidden_size") or (manifest.get("model_info") or {}).get("hidden_size")
        if model_hidden is not None and hidden != int(model_hidden):
            raise LLMMapsError(f"{path}: hidden size {hidden}, but the model's is {model_hidden} "
                               "(manifest field 'hidden_size')")


def model_name(manifest: Mapping[str, Any]) -> str:
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


def model_label(manifest: Mapping[str, Any]) -> str:
    """The model of a run as a reader should see it: ``model_name``, and for a run of a fine-tuning
    group its step: ``pythia-70m, step 48``. A checkpoint's merged model (``GROUP/checkpoints/
    step-N/model``) is named by the model it was tuned from (the base run's, else the group's
    ``finetune.json``); never a path."""
    step = manifest.get("step")
    if step is None:
        return model_name(manifest)
    base: Mapping[str, Any] | None = None
    if int(step) > 0 and manifest.get("base_run"):
        try:
            base = read_manifest(str(manifest["base_run"]))
        except (LLMMapsError, OSError):
            base = None
    merged = Path(str(manifest.get("model") or ""))
    if int(step) > 0 and base is None and merged.parent.parent.name == CHECKPOINTS:
        group = merged.parent.parent.parent
        try:
            settings = json.loads((group / FINETUNE_FILE).read_text(encoding="utf-8")).get("settings") or {}
            base = {"model": settings["base_model"]} if settings.get("base_model") else None
        except (OSError, ValueError, AttributeError):
            base = None
    return f"{model_name(base or manifest)}, step {int(step)}"
