"""Shared by the model benchmarks: print a figures dict as aligned ``key  value`` lines and
optionally write it as JSON (``--json FILE``)."""

from __future__ import annotations

import json
from pathlib import Path


def report(figures: dict, json_path: str | None = None) -> None:
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n")
