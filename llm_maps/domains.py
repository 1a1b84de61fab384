"""Task/category -> domain mapping, read from an editable TOML file (data/domains.toml)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from .contract import DomainMapInfo
from .errors import LLMMapsError

UNKNOWN_DOMAIN = "unknown"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_DOMAIN_FILE = DATA_DIR / "domains.toml"
BIGBENCH_KEYWORDS_FILE = DATA_DIR / "bigbench_keywords.json"


@lru_cache(maxsize=1)
def bigbench_keywords() -> dict[str, list[str]]:
    """BIG-bench task -> its keywords (shipped in data/, from the bigbench package's task.json)."""
    try:
        table: dict[str, list[str]] = json.loads(BIGBENCH_KEYWORDS_FILE.read_text(encoding="utf-8"))
        return table
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def task_keywords(task: str | None) -> list[str]:
    """Keywords of a BIG-bench task named plainly, as ``task/subtask``, or as lm-eval names it
    (``bigbench_<task>_multiple_choice``)."""
    if not task:
        return []
    name = str(task).split("/")[0].split(":")[0]
    table = bigbench_keywords()
    if name.startswith("bigbench_"):
        name = name[len("bigbench_"):]
    for suffix in ("", "_multiple_choice", "_generate_until"):
        candidate = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
        if candidate in table:
            return table[candidate]
    return []


def _norm(name: str) -> str:
    return " ".join(str(name).strip().lower().replace("-", "_").replace(" ", "_").split())


@dataclass(frozen=True)
class DomainMap:
    """Lookup order: task name, then category, then keywords (file order)."""

    categories: dict[str, str] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)
    keywords: dict[str, str] = field(default_factory=dict)
    path: str | None = None

    @classmethod
    def load(cls, path: str | Path | None = None) -> "DomainMap":
        path = Path(path) if path is not None else DEFAULT_DOMAIN_FILE
        if not path.exists():
            raise LLMMapsError(f"{path}: domain map file does not exist")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LLMMapsError(f"{path}: not a valid TOML domain map ({exc})") from None
        tables = {}
        for table in ("categories", "tasks", "keywords"):
            entries = raw.get(table, {})
            if not isinstance(entries, dict):
                raise LLMMapsError(f"{path}, field '{table}': must be a table of name = \"domain\"")
            for key, value in entries.items():
                if not isinstance(value, str) or not value.strip():
                    raise LLMMapsError(f"{path}, field '{table}.{key}': domain must be a non-empty string")
            tables[table] = {_norm(k): v.strip() for k, v in entries.items()}
        return cls(**tables, path=str(path))

    def domain_for(self, *, task: str | None = None, category: str | None = None,
                   keywords: Iterable[str] = ()) -> str:
        if task:
            full = _norm(task)
            for candidate in (full, full.split("/")[0]):
                if candidate in self.tasks:
                    return self.tasks[candidate]
        if category and _norm(category) in self.categories:
            return self.categories[_norm(category)]
        wanted = {_norm(k) for k in (list(keywords) or task_keywords(task))}
        for key, domain in self.keywords.items():
            if key in wanted:
                return domain
        return UNKNOWN_DOMAIN

    def to_manifest(self) -> DomainMapInfo:
        return {"path": self.path, "categories": self.categories, "tasks": self.tasks,
                "keywords": self.keywords}
