"""One error type for bad input: the CLI prints its message on one line and exits 2."""

from __future__ import annotations


class LLMMapsError(Exception):
    """A user-facing error. The message is one line naming the file, row and field at fault."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def where(path: object = None, row: int | None = None, field: str | None = None) -> str:
    """Format a location prefix: ``data.jsonl, line 3, field 'instruction'``."""
    parts = []
    if path is not None:
        parts.append(str(path))
    if row is not None:
        parts.append(f"line {row}" if path is not None else f"row {row}")
    if field is not None:
        parts.append(f"field '{field}'")
    return ", ".join(parts)
