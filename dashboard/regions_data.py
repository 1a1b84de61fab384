"""A run's regions for the dashboard (regions.json and regions.parquet, ``llm-maps regions``), read
once per run view: the data the filters, the tables and the points payload need, apart from what
the pages draw (``dashboard/regions_view.py``), so the filters import no page code. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.regions import read_region_labels, read_regions


@dataclass
class RegionsData:
    """A run's regions: ``result`` is regions.json, ``labels`` [N] the region of each example row
    (-1: none), ``by_id`` region id -> its row of ``result["regions"]``."""
    result: dict
    labels: np.ndarray
    by_id: dict = field(default_factory=dict)

    def ids(self) -> list[int]:
        return sorted(self.by_id)


def regions_of(data) -> tuple[RegionsData | None, str | None]:
    """The run's regions read once per run view: (regions, None); (None, None) when the run has
    none; (None, one-line message) when they cannot be read (pages show it, never fail)."""
    def build():
        result, error = read_regions(data.path)
        if result is None:
            return None, error
        try:
            labels = read_region_labels(data.path, data.frame["example_id"].astype(str).tolist())
        except LLMMapsError as exc:
            return None, str(exc)
        return RegionsData(result, labels, {int(r["region"]): r for r in result["regions"]}), None
    return data._cached("regions", build)


def region_value(value) -> int | None:
    """A region id from the URL or a dropdown ("3", 3), else None."""
    try:
        return None if value in (None, "", "all") else int(value)
    except (TypeError, ValueError):
        return None


def region_mask(data, region: int | None) -> np.ndarray | None:
    """[N] bool of the rows in ``region``; None when no region is chosen (a run without regions: no rows)."""
    if region is None:
        return None
    rd, _ = regions_of(data)
    if rd is None:
        return np.zeros(data.n, dtype=bool)
    return rd.labels == int(region)
