"""Reading a run's token atlas (torch-free: the dashboard reads ``tokens.parquet`` for the token
map and the nearest step's context; the worker, pipelines/nearest.py, searches the states).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .errors import LLMMapsError
from .runfolder import parquet_errors

if TYPE_CHECKING:
    import pandas as pd

TOKENS_FILE = "tokens.parquet"
TOKENS_DIR = "tokens"


def has_atlas(manifest: Mapping[str, Any]) -> bool:
    return bool(manifest.get("token_atlas"))


def read_tokens(run_dir: str | Path, manifest: Mapping[str, Any]) -> pd.DataFrame:
    """tokens.parquet of a run with an atlas, checked against the manifest."""
    import pandas as pd

    path = Path(run_dir) / TOKENS_FILE
    with parquet_errors(path, "missing (the manifest lists a token atlas; re-run `llm-maps atlas`)"):
        tokens = pd.read_parquet(path)
    for col in ("row", "example_id", "position", "token_id", "token_text"):
        if col not in tokens.columns:
            raise LLMMapsError(f"{path}, field '{col}': required column missing")
    expected = (manifest.get("token_atlas") or {}).get("tokens")
    if expected is not None and len(tokens) != int(expected):
        raise LLMMapsError(f"{path}: {len(tokens)} rows but the manifest's token_atlas lists {expected}")
    return tokens


def atlas_file(run_dir: str | Path, layer: int) -> Path:
    return Path(run_dir) / "encodings" / TOKENS_DIR / f"layer_{int(layer)}.npy"


def load_atlas(run_dir: str | Path, manifest: Mapping[str, Any], layer: int) -> np.ndarray:
    """Memory-mapped float16 [T, H] atlas states of one layer."""
    info = manifest.get("token_atlas") or {}
    if int(layer) not in [int(k) for k in info.get("layers", [])]:
        raise LLMMapsError(f"{run_dir}: the token atlas has no layer {layer} (has {info.get('layers')})")
    path = atlas_file(run_dir, layer)
    try:
        arr: np.ndarray = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise LLMMapsError(f"{path}: missing") from None
    except ValueError as exc:
        raise LLMMapsError(f"{path}: corrupt encodings ({exc})") from None
    if info.get("tokens") is not None and arr.shape[0] != int(info["tokens"]):
        raise LLMMapsError(f"{path}: {arr.shape[0]} rows but the manifest's token_atlas lists {info['tokens']}")
    return arr
