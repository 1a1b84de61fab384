"""Train/test split: from the source when it has one, else a deterministic seeded split."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from llm_maps.errors import LLMMapsError


def _unit_hash(seed: int, key: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key): order-independent."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(frame, *, test_size: float = 0.2, seed: int = 0, by: str = "auto",
                  test_categories: Sequence[str] | None = None, n_test_categories: int = 0):
    """Return ``(frame, split_rule)`` with ``frame['split']`` in {train, test}.

    by="source": keep the source's split column (error if any row lacks one).
    by="example": each example goes to test with probability ``test_size`` (hash of seed+id).
    by="category": whole categories go to test (``test_categories``, or ``n_test_categories``
      chosen by seed); ``test_size`` additionally splits the remaining categories by example
      when > 0, so test has both near (same category) and far (held-out category) examples.
    by="auto": "source" when every row has a split, else "example" (or "category" when
      categories to hold out are given).
    """
    frame = frame.copy()
    has_source = "split" in frame.columns and frame["split"].notna().all()
    if by == "auto":
        if test_categories or n_test_categories:
            by = "category"
        else:
            by = "source" if has_source else "example"
    if not 0.0 <= test_size < 1.0:
        raise LLMMapsError(f"--test-size: must be in [0, 1), got {test_size}")
    if by == "source":
        if not has_source:
            missing = frame.index[frame.get("split").isna()] if "split" in frame.columns else frame.index
            row = frame.loc[missing[0], "source_row"] if "source_row" in frame.columns else missing[0]
            raise LLMMapsError(f"row {row}, field 'split': missing (the source has no split for "
                               "every row; use --split-by example)")
        rule = {"method": "source"}
    elif by == "example":
        u = np.array([_unit_hash(seed, i) for i in frame["example_id"]])
        frame["split"] = np.where(u < test_size, "test", "train")
        rule = {"method": "example", "test_size": test_size, "seed": seed}
    elif by == "category":
        cats = sorted(frame["category"].unique())
        if test_categories:
            held = sorted(set(test_categories))
            unknown = [c for c in held if c not in cats]
            if unknown:
                raise LLMMapsError(f"--test-categories: unknown category '{unknown[0]}' "
                                   f"(have: {', '.join(cats)})")
        else:
            if not 0 < n_test_categories < len(cats):
                raise LLMMapsError(f"--n-test-categories: must be between 1 and {len(cats) - 1}")
            held = sorted(sorted(cats, key=lambda c: _unit_hash(seed, "category:" + c))[:n_test_categories])
        u = np.array([_unit_hash(seed, i) for i in frame["example_id"]])
        in_held = frame["category"].isin(held).to_numpy()
        frame["split"] = np.where(in_held | (u < test_size), "test", "train")
        rule = {"method": "category", "test_categories": held, "test_size": test_size, "seed": seed}
    else:
        raise LLMMapsError(f"--split-by: unknown method '{by}' (auto, source, example, category)")
    counts = frame["split"].value_counts()
    if counts.get("train", 0) == 0:
        raise LLMMapsError("split: no train examples (distances to train need at least one)")
    rule["counts"] = {"train": int(counts.get("train", 0)), "test": int(counts.get("test", 0))}
    return frame, rule
