"""Server-side rows for the examples table (AG Grid infinite row model): filter, sort, page."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard import regions_data as RD
from dashboard.conditions_data import table_columns

TEXT_COLUMNS = ["example_id", "split", "task", "category", "domain", "text", "reference", "output", "correctness"]
NUMBER_COLUMNS = ["score", "dist_to_train"]
CELL_CHARS = 300


def table_frame(data) -> pd.DataFrame:
    """The columns the table shows (text shortened), built once per run; with regions, the region
    (``regions_data``; -1: none); with conditions, an answer and a correct column per condition after
    them (``conditions_view.table_columns``)."""
    def build():
        f = data.frame
        regions, _ = RD.regions_of(data)
        region = {} if regions is None else {"region": regions.labels.astype(np.int64)}  # -1: in none
        text = pd.Series(data.texts, dtype="string")  # instruction, then context (not the template)
        return pd.DataFrame({
            "row": np.arange(data.n), "example_id": f["example_id"].astype(str), "split": f["split"].astype(str),
            "task": f["task"].astype(str), "category": f["category"].astype(str), "domain": f["domain"].astype(str),
            "text": text.str.slice(0, CELL_CHARS),
            "reference": f["reference"].astype("string").fillna("").str.slice(0, CELL_CHARS),
            "output": f["output"].astype("string").fillna("").str.slice(0, CELL_CHARS),
            "score": data.score.astype(float), "correctness": np.array(data.cats["correct"].names)[data.cats["correct"].codes],
            "dist_to_train": data.dist.astype(float), **region, **table_columns(data)})
    return data._cached("table", build)


def _one_condition(col: pd.Series, cond: dict) -> pd.Series:
    kind, typ = cond.get("filterType"), cond.get("type")
    if kind == "number":
        v, v2 = cond.get("filter"), cond.get("filterTo")
        ops = {"equals": lambda: col == v, "notEqual": lambda: col != v, "lessThan": lambda: col < v,
               "lessThanOrEqual": lambda: col <= v, "greaterThan": lambda: col > v,
               "greaterThanOrEqual": lambda: col >= v, "inRange": lambda: (col >= v) & (col <= v2),
               "blank": lambda: col.isna(), "notBlank": lambda: col.notna()}
        return ops.get(typ, lambda: pd.Series(True, index=col.index))().fillna(False)
    s = col.astype(str).str.lower()
    v = str(cond.get("filter") or "").lower()
    ops = {"contains": lambda: s.str.contains(v, regex=False), "notContains": lambda: ~s.str.contains(v, regex=False),
           "equals": lambda: s == v, "notEqual": lambda: s != v, "startsWith": lambda: s.str.startswith(v),
           "endsWith": lambda: s.str.endswith(v), "blank": lambda: s == "", "notBlank": lambda: s != ""}
    return ops.get(typ, lambda: pd.Series(True, index=col.index))()


def apply_filter_model(frame: pd.DataFrame, model: dict | None) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for column, cond in (model or {}).items():
        if column not in frame:
            continue
        if "conditions" in cond:
            parts = [_one_condition(frame[column], c) for c in cond["conditions"]]
            m = parts[0]
            for p in parts[1:]:
                m = (m & p) if cond.get("operator", "AND") == "AND" else (m | p)
        else:
            m = _one_condition(frame[column], cond)
        mask &= m
    return frame[mask]


def query_table(data, request: dict) -> dict:
    """AG Grid getRowsRequest -> getRowsResponse: {"rowData": [...], "rowCount": total}."""
    frame = apply_filter_model(table_frame(data), request.get("filterModel"))
    sort = [s for s in request.get("sortModel") or [] if s.get("colId") in frame]
    if sort:
        frame = frame.sort_values([s["colId"] for s in sort], ascending=[s.get("sort") != "desc" for s in sort],
                                  kind="stable", na_position="last")
    start, end = int(request.get("startRow", 0)), int(request.get("endRow", 100))
    page = frame.iloc[start:end]
    rows = page.astype(object).where(page.notna(), None).to_dict("records")
    return {"rowData": rows, "rowCount": int(len(frame))}
