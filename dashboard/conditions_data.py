"""Conditions in the dashboard, the data side: conditions.parquet (``llm-maps score RUN --conditions
...``) read once per run (``ConditionsData``), the outcome codes of two conditions, the columns the
Examples table and the browser get, and the falloff per condition. No figures or components (those
are ``dashboard.conditions_view``), so the figures, the table and the data cache can use it without
an import circle. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llm_maps.conditions import (CONDITIONS_FILE, DIRECT, EXTRACTION_RULES, OUTCOMES, condition_names,
                                 read_conditions, with_examples)
from llm_maps.errors import LLMMapsError
from llm_maps.falloff import assign_bins, falloff_stats
NOT_BOTH = "not scored under both"
OUTCOME_NAMES = [*OUTCOMES, NOT_BOTH]  # codes 0..4 of outcome_codes
OUTCOME_COLOURS = ["#1a9641", "#d7191c", "#4a90c4", "#b8741a", "#8a9099"]  # WCAG 3:1 in both themes (figures.py)
OUTCOME_TITLE = "condition outcome"
DOMAIN_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
DOMAIN_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star"]
CONDITION_PALETTE = ["#7a7a7a", "#e6550d", "#3182bd", "#2a9a3a", "#756bb1", "#e7298a", "#a0673a", "#1794a5"]
OUTCOME_NOTE = " scored under both conditions"  # the map's title: "108 of 2,448 examples scored under both conditions"
CELL_CHARS = 300


@dataclass
class ConditionsData:
    """A run's conditions: ``frame`` is conditions.parquet joined with the examples
    (``llm_maps.conditions.with_examples``: one row per example and condition, with ``row``, ``split``,
    ``task``, ``domain`` and ``example_dist``); ``names`` the conditions (direct first); ``codes``
    [len(names), N] uint8 per example row: 0 not scored under the condition, 1 wrong, 2 right."""
    frame: pd.DataFrame
    names: list[str]
    codes: np.ndarray
    path: object

    def index(self, name: str) -> int:
        return self.names.index(name)

    def default_pair(self) -> tuple[str, str]:
        """direct -> the first other condition (or the first two stored; one alone: itself twice)."""
        a = DIRECT if DIRECT in self.names else self.names[0]
        others = [n for n in self.names if n != a]
        return a, (others[0] if others else a)

    def pair(self, a: str | None, b: str | None) -> tuple[str, str]:
        """The conditions to compare: the given ones when stored, else the default pair's."""
        da, db = self.default_pair()
        return (a if a in self.names else da), (b if b in self.names else db)

    def rows_of(self, row: int) -> pd.DataFrame:
        """The example's rows, one per condition, in ``names`` order."""
        sub = self.frame[self.frame["row"] == int(row)]
        order = {n: i for i, n in enumerate(self.names)}
        return sub.iloc[np.argsort([order[c] for c in sub["condition"].astype(str)], kind="stable")]


def load_conditions(data) -> ConditionsData | None:
    """``data``'s conditions.parquet read and joined once (None when the run has none); a broken
    file raises LLMMapsError naming the file, row and field."""
    frame = read_conditions(data.path)
    if frame is None:
        return None
    path = data.path / CONDITIONS_FILE
    joined = with_examples(data.run, frame)
    joined["condition"] = joined["condition"].astype(str)
    dup = joined.duplicated(["example_id", "condition"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise LLMMapsError(f"{path}, row {i + 1}: example '{joined['example_id'].iloc[i]}' appears twice under "
                           f"condition '{joined['condition'].iloc[i]}'")
    names = condition_names(joined) if len(joined) else []
    codes = np.zeros((len(names), data.n), dtype=np.uint8)
    correct = joined["correct"].astype("boolean")
    for i, name in enumerate(names):
        sel = (joined["condition"] == name).to_numpy() & correct.notna().to_numpy()
        codes[i, joined["row"].to_numpy()[sel]] = np.where(correct[sel].to_numpy(dtype=bool), 2, 1)
    return ConditionsData(joined, names, codes, path)


def conditions_of(data) -> ConditionsData | None:
    """The run's conditions, or None (no file, or one that cannot be read: pages say why)."""
    return data.conditions()[0] if data is not None else None


# --- the map's colour ------------------------------------------------------------------------------

def outcome_codes(cd: ConditionsData, a: str, b: str) -> np.ndarray:
    """[N] uint8 index into OUTCOME_NAMES of condition b against condition a, per example row."""
    ca, cb = cd.codes[cd.index(a)], cd.codes[cd.index(b)]
    out = np.full(ca.shape, 4, dtype=np.uint8)
    both = (ca > 0) & (cb > 0)
    ra, rb = ca == 2, cb == 2
    out[both & ~ra & rb] = 0  # helped
    out[both & ra & ~rb] = 1  # hurt
    out[both & ra & rb] = 2  # both right
    out[both & ~ra & ~rb] = 3  # both wrong
    return out


def outcome_legend(codes: np.ndarray) -> list[tuple[str, str]]:
    """The legend of drawn points' outcome codes: every outcome with its count, then the grey ones
    when there are any (assets/dashboard.js ``colourSpec`` builds the same)."""
    counts = np.bincount(codes, minlength=len(OUTCOME_NAMES))
    return [(f"{name} ({int(counts[i])})", OUTCOME_COLOURS[i]) for i, name in enumerate(OUTCOME_NAMES)
            if i < 4 or counts[i] > 0]


def outcome_title(a: str, b: str) -> str:
    return f"{OUTCOME_TITLE}: {b} vs {a}"


def client_arrays(data) -> dict[str, np.ndarray]:
    """Per condition its codes (0 unscored, 1 wrong, 2 right) for the browser: ``cond_<i>``."""
    cd = conditions_of(data)
    return {} if cd is None else {f"cond_{i}": cd.codes[i] for i in range(len(cd.names))}


def client_header(data) -> dict:
    cd = conditions_of(data)
    return {"conditions": [] if cd is None else cd.names,
            "default_pair": list(cd.default_pair()) if cd is not None and cd.names else None}


def client_option() -> dict:
    return {"kind": "outcome", "title": OUTCOME_TITLE, "names": OUTCOME_NAMES, "colours": OUTCOME_COLOURS,
            "note": OUTCOME_NOTE}


def scored_under_both(data, rows: np.ndarray, pair: tuple[str | None, str | None] | None = None) -> np.ndarray:
    """The ``rows`` scored under both conditions of ``pair``: what the "condition outcome" colour
    draws (the others have no outcome; a run without conditions: none). assets/dashboard.js
    ``mapApply`` keeps the same rows."""
    cd = conditions_of(data)
    rows = np.asarray(rows)
    if cd is None or not cd.names:
        return rows[:0]
    a, b = cd.pair(*(pair or (None, None)))
    return rows[outcome_codes(cd, a, b)[rows] != 4]


# --- the Falloff page --------------------------------------------------------------------------------

def condition_falloff(data, cd: ConditionsData, names: list[str], *, dist: np.ndarray, n_bins: int = 5,
                      tasks: list[str] | None = None) -> dict[str, dict]:
    """Per condition ``llm_maps.falloff.falloff_stats`` of its scored test examples against ``dist``
    (the example's own distance to train, [N] by row: the same x for every condition), grouped by
    domain with equal-count bins per group, plus the tasks per group and per bin:
    {condition: {"stats": {...}, "tasks": {group: n}, "bin_tasks": {group: [n per bin]}}}."""

    f = cd.frame
    out: dict[str, dict] = {}
    for name in names:
        sub = f[(f["condition"] == name) & (f["split"] == "test") & f["correct"].notna()]
        if tasks:
            sub = sub[sub["task"].isin(tasks)]
        rows = sub["row"].to_numpy()
        x = np.asarray(dist, dtype=float)[rows]
        stats = falloff_stats(x, sub["correct"].astype(bool).tolist(), sub["domain"].astype(str).tolist(),
                              n_bins=int(n_bins), tasks=sub["task"].astype(str).tolist())
        keep = np.isfinite(x)
        task = sub["task"].astype(str).to_numpy()
        dom = sub["domain"].astype(str).to_numpy()
        n_tasks, bin_tasks = {}, {}
        for group, entry in stats.items():
            sel = keep & ((dom == group) if group != "all" else True)
            n_tasks[group] = int(len(set(task[sel].tolist())))
            if entry["bins"]:
                edges = np.array([b["lo"] for b in entry["bins"]] + [entry["bins"][-1]["hi"]])
                idx = assign_bins(x[sel], edges)
                bin_tasks[group] = [int(len(set(task[sel][idx == b["bin"]].tolist()))) for b in entry["bins"]]
            else:
                bin_tasks[group] = []
        out[name] = {"stats": stats, "tasks": n_tasks, "bin_tasks": bin_tasks}
    return out


def condition_groups(per_cond: dict[str, dict], domains: list[str] | None) -> list[str]:
    """The domains drawn: those picked, else every domain any condition has."""
    have = sorted({g for v in per_cond.values() for g in v["stats"] if g != "all"})
    return [d for d in have if d in domains] if domains else have


def condition_colours(names: list[str]) -> dict[str, str]:
    return {n: CONDITION_PALETTE[i % len(CONDITION_PALETTE)] for i, n in enumerate(names)}


def flat_stats(per_cond: dict[str, dict], conditions: list[str], domains: list[str]) -> tuple[dict, list[str]]:
    """{"cot · Chollet": group stats} and its keys in drawing order, for the page's bins table."""
    out = {}
    for name in conditions:
        for dom in domains:
            entry = per_cond.get(name, {}).get("stats", {}).get(dom)
            if entry and entry["bins"]:
                out[f"{name} · {dom}"] = entry
    return out, list(out)


# --- the Examples table ------------------------------------------------------------------------------

def answer_column(name: str) -> str:
    return f"answer · {name}"


def correct_column(name: str) -> str:
    return f"✓ · {name}"


def table_columns(data) -> dict[str, np.ndarray]:
    """Per condition the answer (shortened) and "correct" / "wrong" ("" when not scored) of every
    example row ("" for examples not asked under it)."""
    cd = conditions_of(data)
    if cd is None:
        return {}
    out: dict[str, np.ndarray] = {}
    f = cd.frame
    for i, name in enumerate(cd.names):
        sub = f[f["condition"] == name]
        answer = np.full(data.n, "", dtype=object)
        answer[sub["row"].to_numpy()] = sub["answer"].astype("string").fillna("").str.slice(0, CELL_CHARS) \
            .to_numpy(dtype=object)
        out[answer_column(name)] = answer
        out[correct_column(name)] = np.array(["", "wrong", "correct"], dtype=object)[cd.codes[i]]
    return out


def _text(value) -> str:
    return "" if value is None or (np.ndim(value) == 0 and pd.isna(value)) else str(value)


def has_path(r) -> bool:
    px = r.get("path_x") if hasattr(r, "get") else None
    return px is not None and np.ndim(px) == 1 and len(px) > 0
