"""Map page: every example as a WebGL point; colour, filters, selection summary, drill-down.

The first figure is built into the page layout (no callback before the first draw). After that,
for runs of at most ``CLIENT_MAX_POINTS`` the browser keeps the run's per-point arrays (fetched
once from ``/_llm_maps/points``) and recolours and filters the map itself (assets/dashboard.js,
``mapApply``), with no server round trip. The server still does what needs the whole run: text
search (a bitmask of hits), the drill-down and neighbour lines, hover details, selection summaries,
and, for larger runs, drawing a sample plus a density layer for the current view.

The WebGL renderer (``renderer=webgl`` in the URL, and by default for runs above
``WEBGL_FROM_POINTS``; ``renderer=plotly`` keeps the Plotly map) draws every point of any run
(assets/mapgl.js, glscatter.js): the page holds no figure, only the run's description
(``points.gl_meta``), and the browser fetches the arrays it needs as raw bytes. The same callbacks
serve both: hover, click and selection reach the same stores (``map-hover-row``, ``map-click-row``,
``map-select-rows``, a bitmask there), and the neighbour lines, your points and the Regions layer
come as the same specs.
"""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components as C
from dashboard import figures as F
from dashboard import regions_view as RV
from dashboard.components import register_path_callback
from dashboard.conditions_view import map_controls
from dashboard.filters import accuracy_words, search_hits, selected_rows, selection_summary, value_bounds
from dashboard.points import atlas_count, gl_meta, map_mode
from dashboard.userpoints import map_layer_controls, register_map_layer

dash.register_page(__name__, path="/map", name="Map", title="LLM Maps · map", order=0)

SELECT_HINT = "Lasso or box-select points for a summary."


def _range_slider(id_, values: np.ndarray, current, *, disabled=False):
    """A range slider over ``values`` with round bounds and a round step (a power of ten, about
    1/200 of the range), so its number boxes show short values ("0.0221"), never cut ones."""
    import math

    lo, hi = value_bounds(values)
    digits = max(0, -math.floor(math.log10((hi - lo) / 200)))
    step = 10.0 ** -digits
    lo, hi = round(math.floor(lo / step) * step, digits), round(math.ceil(hi / step) * step, digits)
    value = current if current else [lo, hi]
    return dcc.RangeSlider(id=id_, min=lo, max=hi, step=step, value=value, marks=None,
                           disabled=disabled, tooltip={"placement": "bottom", "always_visible": False},
                           updatemode="mouseup")


def renderer_controls(mode: str, density) -> list:
    """The renderer switch (reloads the page with renderer=webgl|plotly) and the WebGL map's
    density layer option (the Plotly map draws one by itself above CLIENT_MAX_POINTS)."""
    return [
        dbc.Switch(id="map-webgl", label="WebGL renderer: every point", value=mode == "webgl",
                   className="mb-0 small"),
        html.Div(dbc.Switch(id="map-density", label="density layer", value=density in ("1", "true"),
                            className="mb-0 small"), hidden=mode != "webgl"),
    ]


def map_area(mode: str, figure):
    """The map itself: a dcc.Graph holding the first figure (Plotly), or the WebGL map's element
    (assets/mapgl.js draws into it; same id, so every callback on the page serves both)."""
    if mode != "webgl":
        return dcc.Loading(dcc.Graph(id="map-graph", figure=figure, config=F.EXPORT_CONFIG, style={"height": "640px"}),
                           delay_show=400, type="dot")
    return html.Div(id="map-graph", className="map-gl-host", style={"height": "640px"})


def layout(run=None, colour="split", layer=None, split=None, domain=None, task=None, score=None, dist=None,
           q="", sel=None, mine=None, view=None, ca=None, cb=None, dim=None, regions=None, region=None,
           renderer=None, density=None, **_):
    data, error = C.load(run, view)
    if data is None:
        return C.no_run_page(run, error)
    colour_opts = F.colour_dropdown(data, note=True)
    colour = F.colour_choice(data, colour)
    layer = C.query_int(layer, data.default_layer)
    if layer not in data.layers or not data.distances_available(layer, data.metric):
        layer = data.default_layer
    layer_opts = [{"label": f"layer {k}" + (" (map)" if k == data.default_layer else ""), "value": k,
                   "disabled": not data.distances_available(k, data.metric)} for k in data.layers]
    split_value = C.query_list(split) or data.option_names("split")
    rd, regions_error = RV.regions_of(data)
    region_id = RV.region_value(region)
    region_id = region_id if rd is not None and region_id in rd.by_id else None
    controls = [
        C.run_picker(data.base_id),
        C.view_picker(data),
        dbc.Label("Colour by", className="mb-0 small"),
        dcc.Dropdown(id="map-colour", options=colour_opts, value=colour, clearable=False, className="mb-2"),
        *map_controls(data, ca, cb),
        # test points are always drawn above train points; this makes the train points faint too
        dbc.Switch(id="map-dim", label="dim train points", value=dim in ("1", "true"), className="mb-2 small"),
        dbc.Label("Layer (distances)", className="mb-0 small"),
        dcc.Dropdown(id="map-layer", options=layer_opts, value=layer, clearable=False, className="mb-2"),
        dbc.Label("Split", className="mb-0 small"),
        dcc.Checklist(id="map-split", options=data.option_names("split"), value=split_value, inline=True,
                      inputClassName="me-1", labelClassName="me-3", className="mb-2"),
        dbc.Label("Domain", className="mb-0 small"),
        dcc.Dropdown(id="map-domain", options=data.option_names("domain"), value=C.query_list(domain), multi=True,
                     placeholder="all domains", className="mb-2"),
        dbc.Label("Task", className="mb-0 small"),
        dcc.Dropdown(id="map-task", options=data.option_names("task"), value=C.query_list(task), multi=True,
                     placeholder="all tasks", className="mb-2"),
        dbc.Label("Score" + ("" if data.has_scores else " (no scores yet)"), className="mb-0 small"),
        _range_slider("map-score", data.score, C.query_range(score), disabled=not data.has_scores),
        dbc.Label("Distance to train", className="mb-0 small"),
        _range_slider("map-dist", data.dist, C.query_range(dist)),
        dbc.Label("Search prompts", className="mb-0 small"),
        dbc.Input(id="map-search", type="search", value=q or "", debounce=True, placeholder="text in prompts",
                  className="mb-2"),
        *map_layer_controls(data.base_id, show=mine in ("1", "true")),
        *RV.regions_controls(data, rd, show=regions in ("1", "true"), region=region_id),
    ]
    mode = map_mode(data.n, renderer, atlas_count(data))
    controls += renderer_controls(mode, density)
    row = C.row_of(data, sel)
    try:
        figure = None if mode == "webgl" else F.view_figure(data, colour=colour, layer=layer, split=split_value, domain=C.query_list(domain),
                         task=C.query_list(task), score=C.query_range(score), dist=C.query_range(dist), search=q,
                         selected=row, dark=C.dark_cookie(), pair=(ca, cb), dim_train=dim in ("1", "true"),
                         region=region_id)
    except Exception as exc:  # noqa: BLE001 - e.g. distances of a layer that cannot be read
        return dbc.Container([C.run_picker(data.base_id), C.banner(f"could not draw the map: {exc}", id="run-banner")],
                             fluid=True, className="pt-3")
    return dbc.Container([
        dcc.Store(id="map-run", data=data.id), dcc.Store(id="map-mode", data=mode),
        dcc.Store(id="map-selected", data=sel),
        dcc.Store(id="map-search-hits", data=search_hits(data, q) if mode != "server" else None),
        dcc.Store(id="map-renderer", data=renderer if renderer in ("webgl", "plotly") else None),
        dcc.Store(id="map-gl-meta", data=gl_meta(data) if mode == "webgl" else None),
        dcc.Store(id="map-request"), dcc.Store(id="map-click-row"),
        # the WebGL map draws the selected example's neighbour lines from this from the start
        dcc.Store(id="map-overlay", data=F.overlay_spec(data, row, data.neighbours(row)) if mode == "webgl" and row is not None
                  else None),
        dcc.Store(id="map-hover-row"), dcc.Store(id="map-select-rows"),
        html.Div(id="url-sync", hidden=True), html.Div(id="map-init", hidden=True),
        html.Div(id="map-applied", hidden=True), html.Div(id="map-overlay-applied", hidden=True),
        dbc.Row([
            dbc.Col(controls, md=3, className="pt-2"),
            dbc.Col([
                map_area(mode, figure),
                html.Div([html.Div(id="map-hover", className="small text-muted hover-line flex-grow-1"),
                          C.export_buttons("map-graph")], className="d-flex align-items-start"),
                dbc.Row([
                    dbc.Col(dbc.Card(dbc.CardBody(html.Div(SELECT_HINT, id="map-selection", className="small"))), md=4),
                    dbc.Col(dbc.Card(dbc.CardBody(html.Div(C.drilldown(data, row), id="map-drill"))), md=8),
                ], className="mt-2"),
                dbc.Card(dbc.CardBody([html.H6("Regions", className="mb-1"),
                                       RV.regions_panel(data, rd, regions_error, region_id)]),
                         className="mt-2", id="regions-card"),
            ], md=9),
        ]),
    ], fluid=True)


# Colour and filters: the browser (client mode) or, for large runs, a request for a new figure.
dash.clientside_callback(
    dash.ClientsideFunction("llm_maps", "mapApply"), Output("map-request", "data"),
    Input("map-colour", "value"), Input("map-layer", "value"), Input("map-split", "value"),
    Input("map-domain", "value"), Input("map-task", "value"), Input("map-score", "value"),
    Input("map-dist", "value"), Input("map-search", "value"), Input("map-search-hits", "data"),
    Input("map-graph", "relayoutData"), Input("map-cond-a", "value"), Input("map-cond-b", "value"),
    Input("map-dim", "value"), Input("map-region", "value"), Input("map-density", "value"),
    State("map-run", "data"), State("map-mode", "data"), State("map-score", "min"), State("map-score", "max"),
    State("map-dist", "min"), State("map-dist", "max"), State("theme-dark", "value"),
    State("plot-templates", "data"), State("map-gl-meta", "data"),
)
dash.clientside_callback(dash.ClientsideFunction("llm_map_gl", "pickRenderer"), Output("map-webgl", "className"),
                         Input("map-webgl", "value"), prevent_initial_call=True)


@callback(Output("map-graph", "figure"), Input("map-request", "data"), State("map-selected", "data"),
          State("map-run", "data"), prevent_initial_call=True)
def server_figure(req, selected, run_id):
    """A new figure for a large run (sampled + density), drawn by the server."""
    data = C.loaded(run_id)
    if not req:
        raise PreventUpdate
    xr = tuple(req["xrange"]) if req.get("xrange") else None
    yr = tuple(req["yrange"]) if req.get("yrange") else None
    return F.view_figure(data, colour=req.get("colour") or "split", layer=req.get("layer"), split=req.get("split"),
                   domain=req.get("domain"), task=req.get("task"), score=req.get("score"), dist=req.get("dist"),
                   search=req.get("q"), selected=C.row_of(data, selected), dark=bool(req.get("dark")),
                   xrange=xr, yrange=yr, pair=(req.get("ca"), req.get("cb")), dim_train=bool(req.get("dim")),
                   region=RV.region_value(req.get("region")))


@callback(Output("map-search-hits", "data"), Input("map-search", "value"), State("map-run", "data"),
          State("map-mode", "data"), prevent_initial_call=True)
def on_search(q, run_id, mode):
    """Text search stays on the server (prompts are not sent to the browser): a bitmask of hits."""
    data = C.loaded(run_id)
    if mode not in ("client", "webgl"):
        raise PreventUpdate
    return search_hits(data, q)


@callback(Output("map-overlay", "data"), Input("map-selected", "data"), State("map-run", "data"),
          prevent_initial_call=True)
def on_selected(selected, run_id):
    """Neighbour lines for the selected point (the browser restyles data[1] with them)."""
    data = C.loaded(run_id)
    row = C.row_of(data, selected)
    return F.overlay_spec(data, row, data.neighbours(row) if row is not None else [])


dash.clientside_callback(dash.ClientsideFunction("llm_maps", "mapOverlay"), Output("map-overlay-applied", "children"),
                         Input("map-overlay", "data"))
dash.clientside_callback(dash.ClientsideFunction("llm_maps", "mapPointRow"), Output("map-click-row", "data"),
                         Input("map-graph", "clickData"), prevent_initial_call=True)
dash.clientside_callback(dash.ClientsideFunction("llm_maps", "mapPointRow"), Output("map-hover-row", "data"),
                         Input("map-graph", "hoverData"), prevent_initial_call=True)
dash.clientside_callback(dash.ClientsideFunction("llm_maps", "mapSelectRows"), Output("map-select-rows", "data"),
                         Input("map-graph", "selectedData"), prevent_initial_call=True)


@callback(Output("map-selected", "data"), Input("map-click-row", "data"), State("map-run", "data"),
          prevent_initial_call=True)
def on_click(row, run_id):
    data = C.loaded(run_id)
    if row is None or not 0 <= int(row) < data.n:
        raise PreventUpdate
    return str(data.frame["example_id"].iloc[int(row)])


@callback(Output("map-drill", "children"), Input("map-selected", "data"), State("map-run", "data"),
          prevent_initial_call=True)
def show_selected(selected, run_id):
    data = C.loaded(run_id)
    return C.drilldown(data, C.row_of(data, selected))


def summary_block(data, rows: np.ndarray):
    s = selection_summary(data, rows)
    return html.Div([
        html.Div([html.Strong(f"{s['count']:,} selected"), f" ({s['train']:,} train) · {accuracy_words(s)}"],
                 id="selection-count"),
        html.Div(f"{s['n_tasks']} tasks (train and test):", className="text-muted mt-1"),
        html.Ul([html.Li(f"{name} ({n})") for name, n in s["tasks"]], className="mb-0 ps-3", id="selection-tasks"),
    ])


@callback(Output("map-selection", "children"), Input("map-select-rows", "data"), State("map-run", "data"),
          prevent_initial_call=True)
def on_select(rows, run_id):
    """The selection's summary: ``rows`` a list of row numbers (the Plotly map) or a little-endian
    bitmask {"bits": base64, "n": N} (the WebGL map, whose selections can hold every point)."""
    data, _ = C.load(run_id)
    if isinstance(rows, dict):
        rows = selected_rows(rows, data.n) if data is not None else np.zeros(0, dtype=np.int64)
    else:
        rows = np.asarray([r for r in (rows or []) if isinstance(r, int) and 0 <= r < (data.n if data else 0)],
                          dtype=np.int64)
    if data is None or not len(rows):
        return SELECT_HINT
    return summary_block(data, rows)


@callback(Output("map-hover", "children"), Input("map-hover-row", "data"), State("map-run", "data"),
          prevent_initial_call=True)
def on_hover(row, run_id):
    data = C.loaded(run_id)
    if row is None or not 0 <= int(row) < data.n:
        raise PreventUpdate
    r = data.frame.iloc[int(row)]
    first = data.text_preview(int(row), 200).split("\n", 1)[0]
    return f"{r['example_id']} · {r['task']} · {r['split']} · {first}"


dash.clientside_callback(
    dash.ClientsideFunction("llm_maps", "syncMapUrl"),
    Output("url-sync", "children"),
    Input("map-run", "data"), Input("map-colour", "value"), Input("map-layer", "value"),
    Input("map-split", "value"), Input("map-domain", "value"), Input("map-task", "value"),
    Input("map-score", "value"), Input("map-dist", "value"), Input("map-search", "value"),
    Input("map-selected", "data"), Input("map-user", "value"), Input("map-cond-a", "value"),
    Input("map-cond-b", "value"), Input("map-dim", "value"), Input("map-regions", "value"), Input("map-region", "value"),
    Input("map-density", "value"),
    State("map-score", "min"), State("map-score", "max"), State("map-dist", "min"), State("map-dist", "max"),
    State("map-split", "options"), State("map-renderer", "data"),
)


@callback(Output("map-regions-layer", "data"), Input("map-regions", "value"), Input("map-region", "value"),
          Input("theme-dark", "value"), State("map-run", "data"))
def regions_layer(show, region, dark, run_id):
    """The Regions layer (outlines and labels, the chosen region emphasised) that assets/regions.js
    keeps on the map; empty when switched off."""
    data, _ = C.load(run_id)
    if data is None or not show:
        return {"shapes": [], "annotations": []}
    return RV.region_layer(data, selected=RV.region_value(region), dark=bool(dark))


dash.clientside_callback(dash.ClientsideFunction("llm_regions", "layer"), Output("map-regions-applied", "children"),
                         Input("map-regions-layer", "data"))


@callback(Output("map-region", "value"), Output("map-regions", "value"), Input("regions-grid", "cellClicked"),
          State("map-region", "value"), prevent_initial_call=True)
def on_region_row(cell, current):
    """A row of the Regions table: show only that region on the map (its outline emphasised);
    clicking the chosen region's row again shows them all."""
    region = RV.region_value((cell or {}).get("rowId"))
    if region is None:
        raise PreventUpdate
    return (None if region == RV.region_value(current) else region), True


@callback(Output("map-region-link", "children"), Input("map-region", "value"), State("map-run", "data"),
          prevent_initial_call=True)
def region_link(region, run_id):
    data = C.loaded(run_id)
    return RV.region_link(data, RV.region_value(region))


C.register_export("map-graph")
register_map_layer()
C.register_view_picker()
register_path_callback()  # the drill-down's condition paths, on every page that shows it
