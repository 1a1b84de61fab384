"""What every command module shares."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """Progress and notes go to stderr; results to stdout."""
    print(message, file=sys.stderr)
