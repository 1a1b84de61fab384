"""Regions in the dashboard: regions.json and regions.parquet (``llm-maps regions RUN``, see
``llm_maps.regions``) read once per run, and what the pages draw from them.

* Map page: the Regions layer (an outline per region, a 2-sigma ellipse of its members' map
  positions, and a label at its centre; flagged regions red, uncovered ones dotted), drawn as
  layout shapes and annotations that assets/regions.js keeps on the map; the Regions table (sorted
  by the difference) whose row click filters the map to that region (``region=K`` in the URL);
* Examples page: ``?region=K`` shows that region's examples (the table's ``region`` column);
* playground: the region a typed prompt falls in (its nearest training example's) and its accuracy;
* the standalone export: the layer on its map.

Regions live in the full encoding space, not on the map: an outline is only where a region's
members happen to land in 2-D. Torch-free.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode

import dash_ag_grid as dag
import dash_bootstrap_components as dbc
import numpy as np
from dash import dcc, html

from dashboard import components as C
from dashboard import figures as F
from dashboard.regions_data import RegionsData, region_mask, region_value, regions_of
from llm_maps.regions import MIN_OUTSIDE, REGIONS_FILE, REGIONS_TABLE, sorted_regions
from llm_maps.resample import MIN_TASKS_FOR_INTERVAL

WORSE, UNCOVERED, PLAIN = "#d62728", "#7b3294", "#3a3a3a"
ELLIPSE_SIGMA = 2.0  # outline: the 2-sigma ellipse of the members' map positions (about 86 % of a normal cloud)
ELLIPSE_POINTS = 48
HINT = "No regions for this run yet: run `llm-maps regions RUN` (it writes regions.json and regions.parquet)."


def _num(v, spec: str = ".2f") -> str:
    return "—" if v is None else format(v, spec)


def region_summary(r: dict) -> str:
    """One line: accuracy with its interval, what its tasks predict, the difference and q."""
    acc = f"accuracy {_num(r['accuracy'])}"
    if r.get("accuracy_low") is not None:
        acc += f" [{_num(r['accuracy_low'])}, {_num(r['accuracy_high'])}]"
    acc += f" on {r['n_scored']} scored test examples ({r['n_tasks_scored']} tasks)"
    if r.get("expected_accuracy") is None:
        need = f"{MIN_OUTSIDE} or more" if r.get("n_outside") is not None else "any"  # older files: any
        exp = f"no expected accuracy (none of its tasks has {need} scored test examples outside it)"
    else:
        outside = f" from {r['n_outside']} outside" if r.get("n_outside") is not None else ""
        exp = (f"its tasks predict {_num(r['expected_accuracy'])} (on {r['n_expected']} examples{outside}), "
               f"difference {_num(r['difference'], '+.2f')}")
        if r.get("difference_low") is not None:
            exp += f" [{_num(r['difference_low'], '+.2f')}, {_num(r['difference_high'], '+.2f')}]"
        if r.get("q_value") is not None:
            exp += f", q = {r['q_value']:.3g}"
    return f"{acc}; {exp}"


def _status(r: dict) -> str:
    return "worse than its tasks predict" if r["worse"] else ("uncovered" if r["uncovered"] else "")


def _colour(r: dict, dark: bool) -> str:
    return WORSE if r["worse"] else UNCOVERED if r["uncovered"] else ("#e8e8e8" if dark else PLAIN)


def ellipse_path(xs: np.ndarray, ys: np.ndarray, sigma: float = ELLIPSE_SIGMA) -> str | None:
    """An SVG path (data coordinates) of the ``sigma`` ellipse of the points' covariance; None for
    fewer than 3 points or no spread."""
    ok = np.isfinite(xs) & np.isfinite(ys)
    pts = np.column_stack([xs[ok], ys[ok]]).astype(float)
    if len(pts) < 3:
        return None
    mean = pts.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(pts.T))
    if not np.all(np.isfinite(vals)) or vals.max() <= 0:
        return None
    t = np.linspace(0, 2 * math.pi, ELLIPSE_POINTS, endpoint=False)
    circle = np.column_stack([np.cos(t), np.sin(t)]) * (sigma * np.sqrt(np.maximum(vals, 1e-12)))[None, :]
    ring = mean + circle @ vecs.T
    return "M " + " L ".join(f"{x:.5g},{y:.5g}" for x, y in ring) + " Z"


def region_layer(data, *, selected: int | None = None, dark: bool = False) -> dict:
    """The Regions layer for ``data``'s map: {"shapes": [...], "annotations": [...]} (plotly layout
    items; assets/regions.js names them and keeps them on the map). The selected region's outline is
    drawn thicker. Empty lists when the run has no regions."""
    rd, _ = regions_of(data)
    if rd is None:
        return {"shapes": [], "annotations": []}
    shapes, notes = [], []
    for rid in rd.ids():
        r = rd.by_id[rid]
        rows = np.flatnonzero(rd.labels == rid)
        xs, ys = data.x[rows], data.y[rows]
        ok = np.isfinite(xs) & np.isfinite(ys)
        if not ok.any():
            continue
        colour = _colour(r, dark)
        path = ellipse_path(xs, ys)
        chosen = selected is not None and rid == selected
        if path is not None:
            shapes.append({"type": "path", "path": path, "xref": "x", "yref": "y", "layer": "above",
                           "line": {"color": colour, "width": 3.5 if chosen else (2.2 if r["worse"] else 1.3),
                                    "dash": "dot" if r["uncovered"] else "solid"},
                           "fillcolor": "rgba(0,0,0,0)", "editable": False})
        status = _status(r)
        hover = (f"<b>{F.plot_text(r['label'])}</b><br>{r['n_train']} train, {r['n_test']} test · "
                 f"{r['n_tasks']} tasks (top: {F.plot_text(r['tasks'][0]['name']) if r['tasks'] else '—'})<br>"
                 f"{F.plot_text(region_summary(r))}" + (f"<br>{status}" if status else ""))
        acc = "" if r["accuracy"] is None else f" · {r['accuracy']:.2f}"
        notes.append({"x": float(np.median(xs[ok])), "y": float(np.median(ys[ok])), "xref": "x", "yref": "y",
                      # the label sits just above the centre, a short line pointing at it: the points stay in view
                      "text": f"<b>R{rid}</b>{acc}", "showarrow": True, "arrowhead": 0, "arrowwidth": 1,
                      "arrowcolor": colour, "ax": 0, "ay": -18, "hovertext": hover,
                      "font": {"size": 10, "color": "#111111"}, "bgcolor": "rgba(255,255,255,0.8)",
                      "bordercolor": colour, "borderwidth": 2 if (chosen or r["worse"]) else 1, "borderpad": 2,
                      "opacity": 1.0 if (selected is None or chosen) else 0.55, "captureevents": True})
    return {"shapes": shapes, "annotations": notes}


def add_region_layer(fig, data, *, dark: bool = False):
    """``fig`` (a map of ``data``) with the Regions layer in its layout (the standalone export)."""
    layer = region_layer(data, dark=dark)
    if layer["shapes"] or layer["annotations"]:
        fig.update_layout(shapes=list(fig.layout.shapes or ()) + layer["shapes"],
                          annotations=list(fig.layout.annotations or ()) + layer["annotations"])
    return fig


# --- the Map page's controls and table ------------------------------------------------------------

def region_options(rd: RegionsData | None) -> list[dict]:
    if rd is None:
        return []
    return [{"label": rd.by_id[i]["label"], "value": i} for i in rd.ids()]


def table_rows(rd: RegionsData) -> list[dict]:
    """One row per region for the Regions table, sorted by the difference (most negative first)."""
    out = []
    for r in sorted_regions(rd.result["regions"]):
        top = r["tasks"][0] if r["tasks"] else None
        out.append({
            "id": str(r["region"]), "region": int(r["region"]), "label": r["label"], "keywords": ", ".join(r["keywords"]),
            "train": r["n_train"], "test": r["n_test"], "tasks": r["n_tasks"],
            "top_task": f"{top['name']} ({top['share']:.0%})" if top else "",
            "accuracy": r["accuracy"], "accuracy_ci": _ci(r["accuracy_low"], r["accuracy_high"]),
            "expected": r["expected_accuracy"], "outside": r.get("n_outside"), "difference": r["difference"],
            "difference_ci": _ci(r["difference_low"], r["difference_high"], "+.2f"),
            "compared": r["n_tasks_compared"], "q": r["q_value"], "status": _status(r), "coverage": r["coverage"],
            "dist": r["mean_dist_to_train"], "central": r["central_text"],
        })
    return out


def _ci(lo, hi, spec: str = ".2f") -> str:
    return "" if lo is None or hi is None else f"[{lo:{spec}}, {hi:{spec}}]"


NUMBER = "params.value == null ? '' : d3.format('{}')(params.value)"
INTERVAL_TIP = (f"a task bootstrap (the region's tasks resampled): none with fewer than {MIN_TASKS_FOR_INTERVAL} "
                "tasks; an accuracy's never narrower than Wilson's over its examples")
# numbers sort with the rows that have none last, ascending or descending (AG Grid puts nulls first);
# the function is assets/regions.js's
NULLS_LAST = "regionsNullsLast"


def column_defs() -> list[dict]:
    def num(field, header, width, spec=".2f", **kw):
        return {"field": field, "headerName": header, "width": width, "sortable": True,
                "filter": "agNumberColumnFilter", "valueFormatter": {"function": NUMBER.format(spec)},
                "comparator": {"function": NULLS_LAST}, **kw}

    def text(field, header, width, **kw):
        return {"field": field, "headerName": header, "width": width, "sortable": True,
                "filter": "agTextColumnFilter", **kw}

    return [num("region", "region", 100, "d", pinned="left"), text("status", "flag", 190),
            text("keywords", "keywords", 220),
            num("difference", "difference", 150, "+.2f", sort="asc"),
            text("difference_ci", "95% CI over tasks", 170, headerTooltip=INTERVAL_TIP),
            num("accuracy", "accuracy", 120), text("accuracy_ci", "95% CI over tasks", 170, headerTooltip=INTERVAL_TIP),
            num("expected", "expected", 120), num("outside", "expected from (outside)", 190, "d"),
            num("compared", "tasks compared", 150, "d"), num("q", "q", 90, ".3f"), num("train", "train", 90, "d"),
            num("test", "test", 90, "d"), num("tasks", "tasks", 90, "d"), text("top_task", "top task", 220),
            num("coverage", "train share", 120), num("dist", "mean distance", 140, ".4g"),
            text("central", "instruction nearest the centre", 360)]


def regions_panel(data, rd: RegionsData | None, error: str | None, region: int | None):
    """The Map page's Regions section: the table (or why there is none) and what it means."""
    if rd is None:
        return html.Div(error or HINT, className=f"small {'text-danger' if error else 'text-muted'}",
                        id="regions-missing")
    res = rd.result
    p = res["params"]
    view_note = "" if res["view"] == getattr(data, "view", "prompt") else \
        f" Found in the {res['view']} view; drawn here on the {data.view} map."
    head = (f"{res['n_regions']} regions ({res['n_in_regions']:,} of {res['n_examples']:,} examples; HDBSCAN, "
            f"min size {p['min_size']}, {p['pca_dims']} PCA dims of layer {res['layer']}, {res['view']} view). "
            f"Sorted by the difference between a region's accuracy and what its tasks predict (each test example's "
            f"task accuracy outside the region); flagged: q < {p['alpha']} (Benjamini-Hochberg), interval below 0, "
            f"at least {p['min_tasks']} tasks compared. Click a row to show only that region on the map." + view_note)
    grid = dag.AgGrid(id="regions-grid", columnDefs=column_defs(), rowData=table_rows(rd),
                      getRowId="params.data.id",
                      dashGridOptions={"rowSelection": {"mode": "singleRow", "checkboxes": False,
                                                        "enableClickSelection": True},
                                       "domLayout": "normal", "tooltipShowDelay": 300},
                      rowClassRules={"regions-worse": "params.data.status.startsWith('worse')",
                                     "regions-uncovered": "params.data.status === 'uncovered'"},
                      style={"height": "320px"}, className="ag-theme-alpine")
    notes = [html.Div(f"note: {n}", className="small text-muted") for n in res.get("notes", [])]
    return html.Div([html.Div(head, className="small text-muted mb-1", id="regions-head"), grid, *notes])


def regions_controls(data, rd: RegionsData | None, *, show: bool, region: int | None) -> list:
    """The Map page's layer switch and region filter (both kept in the URL: ``regions=1``, ``region=K``)."""
    opts = region_options(rd)
    value = region if region is not None and any(o["value"] == region for o in opts) else None
    return [
        dcc.Store(id="map-regions-layer"), html.Div(id="map-regions-applied", hidden=True),
        dbc.Switch(id="map-regions", label="show regions" + ("" if rd is not None else " (none yet)"), value=show,
                   disabled=rd is None, className="mb-0 small"),
        dcc.Dropdown(id="map-region", options=opts, value=value, placeholder="all regions", clearable=True,
                     disabled=rd is None, className="mb-1"),
        html.Div(region_link(data, value), id="map-region-link", className="small mb-2"),
    ]


def region_link(data, region: int | None):
    """A link to the Examples page filtered to ``region`` (nothing when none is chosen)."""
    if region is None:
        return None
    q = {"run": data.base_id, **({"view": data.view} if data.view == "completion" else {}), "region": int(region)}
    return dcc.Link(f"examples of region R{region} →", href=C.url(f"/examples?{urlencode(q)}"),
                    id="map-region-examples")


# --- the playground ----------------------------------------------------------------------------------

def playground_region(data, current: dict):
    """Which region a typed prompt falls in: the region of its nearest training example (the
    worker's first neighbour, in the full encoding space), with that region's accuracy."""
    rd, error = regions_of(data)
    if rd is None:
        return html.Div(error or "regions: none for this run (`llm-maps regions RUN`)",
                        className="small text-muted mt-1", id="pg-region")
    nbrs = current.get("neighbours") or []
    row = data.row_of(nbrs[0].get("example_id")) if nbrs else None
    if row is None:
        return html.Div("region: unknown (no nearest training example)", className="small text-muted mt-1",
                        id="pg-region")
    rid = int(rd.labels[row])
    how = "the region of its nearest training example (in the full encoding space)"
    if rid < 0 or rid not in rd.by_id:
        return html.Div(f"region: none — its nearest training example is in no region ({how})",
                        className="small mt-1", id="pg-region")
    r = rd.by_id[rid]
    status = _status(r)
    return html.Div([html.Strong(f"region {r['label']}"), f" ({how}): {region_summary(r)}",
                     *([html.Span(f" · {status}", className="text-danger" if r["worse"] else "")] if status else [])],
                    className="small mt-1", id="pg-region")


__all__ = ["REGIONS_FILE", "REGIONS_TABLE", "RegionsData", "regions_of", "region_value", "region_mask",
           "region_layer", "add_region_layer", "table_rows", "column_defs", "regions_panel", "regions_controls",
           "region_link", "playground_region", "ellipse_path", "region_summary"]
