"""Read instruction datasets (Dolly format by default) into one normalised table.

Output columns: ``example_id, instruction, context, reference, category, task, split`` plus any
other columns of the source (e.g. ``choices``), and ``source_row`` (1-based line number for text
files, record number otherwise) so later errors can point back at the source.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import parquet_errors

# canonical field -> accepted source column names, first match wins
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("example_id", "id", "uid", "idx"),
    "instruction": ("instruction", "prompt", "question", "query"),
    "context": ("context", "input", "passage"),
    "response": ("response", "output", "answer", "target", "reference"),
    "category": ("category", "type"),
    "task": ("task", "task_name"),
    "split": ("split",),
}
REQUIRED = ("instruction", "response")
SPLIT_ALIASES = {"train": "train", "training": "train", "test": "test", "validation": "test",
                 "valid": "test", "val": "test", "dev": "test", "eval": "test"}
TEXT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                 ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Source:
    """A loaded source: records plus provenance for the manifest."""

    name: str
    kind: str
    frame: Any  # pandas.DataFrame
    info: dict = field(default_factory=dict)


def parse_columns(spec: str | Iterable[str] | None) -> dict[str, str]:
    """Parse ``instruction=question,response=answer`` into a mapping canonical -> source column.

    An empty right-hand side (``response=``) means "this source has no such column".
    """
    if not spec:
        return {}
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    mapping = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise LLMMapsError(f"--columns: '{item}' is not of the form field=column")
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in ALIASES:
            raise LLMMapsError(f"--columns: unknown field '{key}' (known: {', '.join(ALIASES)})")
        mapping[key] = value.strip()
    return mapping


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise LLMMapsError(f"{path}, line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} "
                           f"at column {col})") from None


def read_jsonl_objects(path: Path, text: str) -> list[tuple[int, dict]]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LLMMapsError(f"{path}, line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise LLMMapsError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
        records.append((lineno, obj))
    return records


def _read_json(path: Path, text: str) -> list[tuple[int, dict]]:
    stripped = text.lstrip()
    if not stripped.startswith("["):
        return read_jsonl_objects(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LLMMapsError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    records = []
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise LLMMapsError(f"{path}, record {i}: expected a JSON object, got {type(obj).__name__}")
        records.append((i, obj))
    return records


def _read_csv(path: Path, text: str, delimiter: str) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return []
    header = [h.strip() for h in header]
    records = []
    start = reader.line_num + 1
    try:
        for row in reader:
            lineno, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise LLMMapsError(f"{path}, line {lineno}: {len(row)} fields, header has {len(header)}")
            records.append((lineno, dict(zip(header, row))))
    except csv.Error as exc:
        raise LLMMapsError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    return records


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq

    with parquet_errors(path):
        table = pq.read_table(path)
    return [(i, rec) for i, rec in enumerate(table.to_pylist(), start=1)]


def _read_datasets(spec: str, split: str | None) -> tuple[list[tuple[int, dict]], dict]:
    try:
        import datasets
    except ImportError:
        raise LLMMapsError(f"{spec}: reading a datasets id/folder needs the 'datasets' package "
                           "(pip install datasets)") from None
    path = Path(spec)
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(spec)
    except Exception as exc:
        raise LLMMapsError(f"{spec}: could not load dataset ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    records: list[tuple[int, dict]] = []
    if isinstance(ds, datasets.DatasetDict):
        names = [split] if split else list(ds.keys())
        for name in names:
            if name not in ds:
                raise LLMMapsError(f"{spec}: no split '{name}' (has: {', '.join(ds.keys())})")
            for rec in ds[name]:
                rec = dict(rec)
                if len(names) > 1 or SPLIT_ALIASES.get(name):
                    rec.setdefault("split", name)
                records.append((len(records) + 1, rec))
    else:
        records = [(i, dict(rec)) for i, rec in enumerate(ds, start=1)]
    info = {"kind": "datasets", "id": spec, "fingerprint": getattr(ds, "_fingerprint", None)}
    return records, info


def _resolve_columns(path: object, columns: set[str], mapping: dict[str, str]) -> dict[str, str | None]:
    resolved: dict[str, str | None] = {}
    for key, aliases in ALIASES.items():
        if key in mapping:
            col = mapping[key] or None
            if col is not None and col not in columns:
                raise LLMMapsError(f"{path}, field '{col}': column missing (mapped from {key}; "
                                   f"columns: {', '.join(sorted(columns))})")
            resolved[key] = col
            continue
        resolved[key] = next((a for a in aliases if a in columns), None)
    for key in REQUIRED:
        if resolved[key] is None and key not in mapping:
            raise LLMMapsError(f"{path}, field '{key}': column missing (columns: "
                               f"{', '.join(sorted(columns)) or 'none'}; map one with --columns {key}=NAME)")
    return resolved


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    return value if isinstance(value, str) else str(value)


def load_source(data: str | Path, *, columns: dict[str, str] | None = None,
                split: str | None = None, fmt: str | None = None) -> Source:
    """Load one dataset: a JSONL/JSON/CSV/TSV/Parquet file, a `datasets` folder, or a hub id."""
    import pandas as pd

    mapping = dict(columns or {})
    spec = str(data)
    path = Path(spec).expanduser()
    kind = fmt or TEXT_SUFFIXES.get(path.suffix.lower())
    if path.is_file():
        if kind is None:
            raise LLMMapsError(f"{path}: unknown data format '{path.suffix}' (use .jsonl, .json, .csv, "
                               ".tsv or .parquet, or --format)")
        if kind == "parquet":
            records = _read_parquet(path)
        else:
            text = _decode(path, path.read_bytes())
            if kind == "jsonl":
                records = read_jsonl_objects(path, text)
            elif kind == "json":
                records = _read_json(path, text)
            else:
                records = _read_csv(path, text, "\t" if kind == "tsv" else ",")
        info = {"kind": kind, "path": str(path.resolve()), "sha256": sha256_file(path)}
        name = path.stem
    elif path.is_dir() or (not path.exists() and "/" in spec and not spec.startswith((".", "/", "~"))
                           and spec.count("/") == 1):
        records, info = _read_datasets(spec, split)
        name = path.name if path.is_dir() else spec.split("/")[-1]
    else:
        raise LLMMapsError(f"{spec}: no such file or folder")

    if not records:
        raise LLMMapsError(f"{spec}: empty dataset (no examples)")
    all_columns: set[str] = set()
    for _, rec in records:
        all_columns.update(rec.keys())
    where = path if path.exists() else spec
    resolved = _resolve_columns(where, all_columns, mapping)
    unit = "line" if kind in ("jsonl", "csv", "tsv") else "row"

    rows = []
    seen: dict[str, int] = {}
    used = {c for c in resolved.values() if c}
    for record_no, (rowno, rec) in enumerate(records, start=1):
        def loc(fieldname: str) -> str:
            return f"{where}, {unit} {rowno}, field '{fieldname}'"

        out: dict[str, Any] = {}
        icol = resolved["instruction"]
        if icol not in rec:
            raise LLMMapsError(f"{loc(icol)}: missing")
        instruction = _text(rec[icol])
        if not instruction.strip():
            raise LLMMapsError(f"{loc(icol)}: empty prompt")
        out["instruction"] = instruction
        out["context"] = _text(rec.get(resolved["context"])) if resolved["context"] else ""
        rcol = resolved["response"]
        if rcol:
            if rcol not in rec:
                raise LLMMapsError(f"{loc(rcol)}: missing")
            out["reference"] = _text(rec[rcol]) if rec[rcol] is not None else None
        else:
            out["reference"] = None
        if resolved["id"]:
            ex_id = _text(rec.get(resolved["id"])).strip()
            if not ex_id:
                raise LLMMapsError(f"{loc(resolved['id'])}: empty id")
        else:
            ex_id = f"{name}-{record_no}"
        if ex_id in seen:
            raise LLMMapsError(f"{loc(resolved['id'] or 'id')}: duplicate id '{ex_id}' "
                               f"(first at {unit} {seen[ex_id]})")
        seen[ex_id] = rowno
        out["example_id"] = ex_id
        category = _text(rec.get(resolved["category"])).strip() if resolved["category"] else ""
        task = _text(rec.get(resolved["task"])).strip() if resolved["task"] else ""
        out["category"] = category or task or "uncategorized"
        out["task"] = task or out["category"]
        if resolved["split"]:
            raw_split = _text(rec.get(resolved["split"])).strip().lower()
            if raw_split not in SPLIT_ALIASES:
                raise LLMMapsError(f"{loc(resolved['split'])}: split must be train or test "
                                   f"(got '{raw_split}')")
            out["split"] = SPLIT_ALIASES[raw_split]
        else:
            out["split"] = None
        out["source_row"] = rowno
        for key, value in rec.items():
            if key not in used and key not in out:
                out[key] = value
        rows.append(out)
    frame = pd.DataFrame(rows)
    info.update({"rows": len(frame), "columns": {k: v for k, v in resolved.items() if v}})
    return Source(name=name, kind=info["kind"], frame=frame, info=info)
