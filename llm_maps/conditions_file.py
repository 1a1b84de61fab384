"""conditions.parquet, read: the rows of a run's test set asked under other conditions, joined with
the examples (``with_examples``), and a condition's outcomes as findings and falloff use them
(``condition_rows``). The statistics over them are ``llm_maps.conditions``; this reader sits below
``llm_maps.findings`` so that both can use it (no import circle)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .contract import CONDITION_COLUMNS
from .errors import LLMMapsError
from .runfolder import parquet_errors

if TYPE_CHECKING:
    import pandas as pd

    from .runfolder import Run

__all__ = ["CONDITIONS_FILE", "DIRECT", "has_conditions", "read_conditions", "with_examples", "condition_names",
           "condition_rows"]

CONDITIONS_FILE = "conditions.parquet"
DIRECT = "direct"


def has_conditions(manifest: Mapping[str, Any]) -> bool:
    return bool((manifest.get("conditions") or {}).get("conditions"))


def read_conditions(run_dir: str | Path) -> pd.DataFrame | None:
    """RUN/conditions.parquet, or None when the run has none; required columns checked."""
    import pandas as pd

    path = Path(run_dir) / CONDITIONS_FILE
    if not path.exists():
        return None
    with parquet_errors(path):
        frame = pd.read_parquet(path)
    for name, col in CONDITION_COLUMNS.items():
        if col.required and name not in frame.columns:
            raise LLMMapsError(f"{path}, field '{name}': required column missing")
    return frame


def with_examples(run: Run, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """conditions.parquet joined with the examples' ``row``, ``split``, ``task``, ``domain`` and
    ``example_dist`` (the example's own distance to train, ``dist_to_train`` of examples.parquet:
    the distance falloff and findings use for every condition, so conditions share one x)."""
    import pandas as pd

    cond = read_conditions(run.path) if frame is None else frame
    if cond is None:
        raise LLMMapsError(f"{run.path / CONDITIONS_FILE}: missing (run `llm-maps score {run.path} "
                           "--conditions direct,cot` first)")
    ex = run.examples
    info = pd.DataFrame({"example_id": ex["example_id"].astype(str).to_numpy(), "row": np.arange(len(ex)),
                         "split": ex["split"].astype(str).to_numpy(), "task": ex["task"].astype(str).to_numpy(),
                         "domain": ex["domain"].astype(str).to_numpy(),
                         "example_dist": ex["dist_to_train"].to_numpy(dtype=float, na_value=np.nan)})
    out = cond.assign(example_id=cond["example_id"].astype(str)).merge(info, on="example_id", how="left",
                                                                      validate="many_to_one")
    unknown = out["row"].isna()
    if unknown.any():
        raise LLMMapsError(f"{run.path / CONDITIONS_FILE}, row {int(np.flatnonzero(unknown)[0]) + 1}, field "
                           f"'example_id': '{out['example_id'][unknown].iloc[0]}' is not in examples.parquet")
    out["row"] = out["row"].astype(int)
    return out


def condition_names(frame: pd.DataFrame) -> list[str]:
    """Stored conditions, direct first, then in the order first seen."""
    names = list(dict.fromkeys(frame["condition"].astype(str)))
    return sorted(names, key=lambda n: (n != DIRECT, names.index(n)))


def condition_rows(run: Run, condition: str, split: str = "test") -> tuple[np.ndarray, list[Any]]:
    """(rows of examples.parquet, their correct under ``condition``): what falloff and findings use
    with ``--condition`` (the example's own distance stays the x)."""
    import pandas as pd

    frame = with_examples(run)
    names = condition_names(frame)
    if condition not in names:
        raise LLMMapsError(f"--condition: '{condition}' is not in {run.path / CONDITIONS_FILE} "
                           f"(conditions: {', '.join(names)})")
    sub = frame[(frame["condition"] == condition) & (frame["split"] == split)].sort_values("row")
    correct = [None if pd.isna(v) else bool(v) for v in sub["correct"].astype(object)]
    return sub["row"].to_numpy(dtype=np.int64), correct
