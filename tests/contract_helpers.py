"""``assert_follows_contract``: a finished run holds only files, manifest keys, nested keys, columns
and JSON keys that llm_maps/contract.py (and so docs/run-folder.md) lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from llm_maps.contract import CONDITION_COLUMNS, COLUMNS, JSON_FILES, Manifest, check, check_folder, declared_file


def assert_follows_contract(run_dir: Path, source_columns: Iterable[str] = ()) -> None:
    """``source_columns``: columns the test's data had that the run keeps as they are."""
    run_dir = Path(run_dir)
    assert check(json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")), Manifest) == []
    extra = set(source_columns)
    columns = pd.read_parquet(run_dir / "examples.parquet").columns
    assert [c for c in columns if c not in COLUMNS and c not in extra] == []
    for name, td in JSON_FILES.items():
        if (run_dir / name).exists():
            assert check(json.loads((run_dir / name).read_text(encoding="utf-8")), td) == [], name
    if (run_dir / "conditions.parquet").exists():  # `score --conditions`: its columns and no others
        columns = list(pd.read_parquet(run_dir / "conditions.parquet").columns)
        assert [c for c in columns if c not in CONDITION_COLUMNS] == []
        assert [c for c, col in CONDITION_COLUMNS.items() if col.required and c not in columns] == []
    # every file is declared (FILES), with its keys, columns and arrays; none is a leftover working file
    assert check_folder(run_dir, source_columns=extra) == []
    left = [p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()]
    assert [f for f in left if getattr(declared_file(f), "where", None) != "run"] == []
