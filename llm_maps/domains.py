"""Task/category -> domain mapping, read from an editable TOML file (data/domains.toml)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import LLMMapsError

UNKNOWN_DOMAIN = "unknown"
DEFAULT_DOMAIN_FILE = Path(__file__).resolve().parent.parent / "data" / "domains.toml"


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
        wanted = {_norm(k) for k in keywords}
        for key, domain in self.keywords.items():
            if key in wanted:
                return domain
        return UNKNOWN_DOMAIN

    def to_manifest(self) -> dict:
        return {"path": self.path, "categories": self.categories, "tasks": self.tasks,
                "keywords": self.keywords}
