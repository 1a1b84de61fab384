"""Map page: every example as a WebGL point; colour, filters, selection summary, drill-down."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, Patch, State, callback, ctx, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components as C
from dashboard import figures as F
from dashboard.filters import Filters, filter_mask, selection_summary, view_rows

dash.register_page(__name__, path="/map", name="Map", title="LLM Maps · map", order=0)


def _range_slider(id_, values: np.ndarray, current, *, disabled=False):
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    value = current if current else [lo, hi]
    return dcc.RangeSlider(id=id_, min=lo, max=hi, step=(hi - lo) / 200, value=value, marks=None,
                           disabled=disabled, tooltip={"placement": "bottom", "always_visible": False},
                           updatemode="mouseup")


def layout(run=None, colour="split", layer=None, split=None, domain=None, task=None, score=None, dist=None,
           q="", sel=None, **_):
    data, error = C.load(run)
    if data is None:
        return dbc.Container([C.run_picker(run), C.banner(error, id="run-banner"),
                              dcc.Link("choose another run", href="/runs")], fluid=True, className="pt-3")
    colour_opts = [{"label": lbl + (" (no scores yet)" if v in ("correct", "score") and not data.has_scores else ""),
                    "value": v, "disabled": v in ("correct", "score", "out_len") and not data.has_scores}
                   for v, lbl, _ in F.COLOUR_OPTIONS]
    if colour not in F.COLOUR_KIND or (colour in ("correct", "score", "out_len") and not data.has_scores):
        colour = "split"
    layer = C.query_int(layer, data.default_layer)
    layer_opts = [{"label": f"layer {k}" + (" (map)" if k == data.default_layer else ""), "value": k,
                   "disabled": not data.distances_available(k, data.metric)} for k in data.layers]
    controls = [
        C.run_picker(data.id),
        dbc.Label("Colour by", className="mb-0 small"),
        dcc.Dropdown(id="map-colour", options=colour_opts, value=colour, clearable=False, className="mb-2"),
        dbc.Label("Layer (distances)", className="mb-0 small"),
        dcc.Dropdown(id="map-layer", options=layer_opts, value=layer, clearable=False, className="mb-2"),
        dbc.Label("Split", className="mb-0 small"),
        dcc.Checklist(id="map-split", options=data.option_names("split"),
                      value=C.query_list(split) or data.option_names("split"), inline=True,
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
    ]
    return dbc.Container([
        dcc.Store(id="map-run", data=data.id),
        dcc.Store(id="map-selected", data=sel), dcc.Store(id="map-drawn", data=False),
        html.Div(id="url-sync", hidden=True),
        dbc.Row([
            dbc.Col(controls, md=3, className="pt-2"),
            dbc.Col([
                dcc.Loading(dcc.Graph(id="map-graph", config=F.EXPORT_CONFIG, style={"height": "640px"}),
                            delay_show=400, type="dot"),
                html.Div(id="map-hover", className="small text-muted hover-line"),
                dbc.Row([
                    dbc.Col(dbc.Card(dbc.CardBody(html.Div("Lasso or box-select points for a summary.",
                                                           id="map-selection", className="small"))), md=4),
                    dbc.Col(dbc.Card(dbc.CardBody(html.Div(C.drilldown(data, C.row_of(data, sel)), id="map-drill"))), md=8),
                ], className="mt-2"),
            ], md=9),
        ]),
    ], fluid=True)


def _state(run_id, colour, layer, split, domain, task, score, dist, search):
    data, error = C.load(run_id)
    if data is None:
        raise PreventUpdate
    f = Filters.make(split=split, domain=domain, task=task, score=score if data.has_scores else None,
                     dist=dist, search=search)
    layer_dist = data.distances(layer) if layer is not None else data.dist
    rows = np.flatnonzero(filter_mask(data, f, layer_dist))
    return data, rows, layer_dist


def _ranges(relayout) -> tuple:
    r = relayout or {}
    if "xaxis.range[0]" in r and "yaxis.range[0]" in r:
        return (r["xaxis.range[0]"], r["xaxis.range[1]"]), (r["yaxis.range[0]"], r["yaxis.range[1]"])
    return None, None


@callback(Output("map-graph", "figure"), Output("map-drawn", "data"),
          Input("map-colour", "value"), Input("map-layer", "value"), Input("map-split", "value"),
          Input("map-domain", "value"), Input("map-task", "value"), Input("map-score", "value"),
          Input("map-dist", "value"), Input("map-search", "value"), Input("map-graph", "relayoutData"),
          Input("map-selected", "data"), State("map-run", "data"), State("map-drawn", "data"))
def update_map(colour, layer, split, domain, task, score, dist, search, relayout, selected, run_id, drawn):
    """The whole figure; or, once it is drawn, a patch for a recolour or a new selected point."""
    data, rows, layer_dist = _state(run_id, colour, layer, split, domain, task, score, dist, search)
    trigger = ctx.triggered_id
    if trigger == "map-selected" and drawn:
        row = C.row_of(data, selected)
        patched = Patch()
        patched["data"][F.OVERLAY] = F.overlay_trace(data, row, data.neighbours(row) if row is not None else []) \
            .to_plotly_json()
        return patched, dash.no_update
    if trigger == "map-graph":
        xr, yr = _ranges(relayout)
        if len(rows) <= F.MAX_POINTS and not (relayout or {}).get("xaxis.autorange"):
            raise PreventUpdate  # everything is drawn already; zoom is the browser's business
    else:
        xr = yr = None
    drawn_rows, sampled = view_rows(data.x, data.y, rows, max_points=F.MAX_POINTS, xrange=xr, yrange=yr)
    spec = F.colour_spec(data, colour, drawn_rows, layer_dist)
    if trigger == "map-colour" and drawn:  # recolour: send only the new colours and legend
        marker = F.points_marker(spec, len(drawn_rows))
        marker["color"] = F.typed_array(marker["color"])
        patched = Patch()
        patched["data"][F.POINTS]["marker"] = marker
        for i, tr in enumerate(F.legend_traces(spec)):
            patched["data"][F.LEGEND0 + i] = tr.to_plotly_json()
        patched["layout"]["legend"]["title"]["text"] = spec.title
        return patched, dash.no_update
    row = C.row_of(data, selected)
    fig = F.map_figure(data, drawn_rows, spec, selected=row, neighbours=data.neighbours(row) if row is not None else (),
                       density_rows=rows if sampled else None, uirevision=data.id)
    return fig, True


@callback(Output("map-selected", "data"), Input("map-graph", "clickData"), State("map-run", "data"),
          prevent_initial_call=True)
def on_click(click, run_id):
    points = (click or {}).get("points") or []
    if not points or points[0].get("curveNumber") != F.POINTS:
        raise PreventUpdate
    data, _ = C.load(run_id)
    return str(data.frame["example_id"].iloc[int(points[0]["customdata"])])


@callback(Output("map-drill", "children"), Input("map-selected", "data"), State("map-run", "data"),
          prevent_initial_call=True)
def show_selected(selected, run_id):
    data, _ = C.load(run_id)
    if data is None:
        raise PreventUpdate
    return C.drilldown(data, C.row_of(data, selected))


@callback(Output("map-selection", "children"), Input("map-graph", "selectedData"), State("map-run", "data"),
          prevent_initial_call=True)
def on_select(selected, run_id):
    data, _ = C.load(run_id)
    rows = [int(p["customdata"]) for p in (selected or {}).get("points", []) if p.get("curveNumber") == F.POINTS]
    if data is None or not rows:
        return "Lasso or box-select points for a summary."
    s = selection_summary(data, np.array(rows))
    acc = ("no scored test points" if s["accuracy"] is None else
           f"accuracy {s['accuracy']:.3f} [{s['low']:.3f}, {s['high']:.3f}] on {s['scored']} scored test points")
    return html.Div([
        html.Div([html.Strong(f"{s['count']:,} selected"), f" ({s['train']:,} train) · {acc}"], id="selection-count"),
        html.Div(f"{s['n_tasks']} tasks:", className="text-muted mt-1"),
        html.Ul([html.Li(f"{name} ({n})") for name, n in s["tasks"]], className="mb-0 ps-3"),
    ])


@callback(Output("map-hover", "children"), Input("map-graph", "hoverData"), State("map-run", "data"),
          prevent_initial_call=True)
def on_hover(hover, run_id):
    points = (hover or {}).get("points") or []
    if not points or points[0].get("curveNumber") != F.POINTS:
        raise PreventUpdate
    data, _ = C.load(run_id)
    row = int(points[0]["customdata"])
    r = data.frame.iloc[row]
    first = str(r["prompt"]).strip().split("\n", 1)[0][:200]
    return f"{r['example_id']} · {r['task']} · {r['split']} · {first}"


dash.clientside_callback(
    dash.ClientsideFunction("llm_maps", "syncMapUrl"),
    Output("url-sync", "children"),
    Input("map-run", "data"), Input("map-colour", "value"), Input("map-layer", "value"),
    Input("map-split", "value"), Input("map-domain", "value"), Input("map-task", "value"),
    Input("map-score", "value"), Input("map-dist", "value"), Input("map-search", "value"),
    Input("map-selected", "data"),
    State("map-score", "min"), State("map-score", "max"), State("map-dist", "min"), State("map-dist", "max"),
    State("map-split", "options"),
)
