"""Examples page: every example in a server-side table; a row opens the drill-down."""

from __future__ import annotations

import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components as C
from dashboard import conditions_view as CV
from dashboard import regions_view as RV
from dashboard.table import NUMBER_COLUMNS, query_table

dash.register_page(__name__, path="/examples", name="Examples", title="LLM Maps · examples", order=2)

# widths leave room for each header's text plus its sort and menu icons (a narrow "split" had its
# icon over its text). The scores come first, after the example (pinned) and its split, then each
# condition's correct column: on a 1400 px wide window they are in view without scrolling sideways;
# the long texts and each condition's answer follow.
COLUMNS = [("example_id", 190), ("split", 110), ("score", 100), ("correctness", 160), ("dist_to_train", 160),
           ("task", 200), ("domain", 120), ("text", 360), ("reference", 160), ("output", 200)]
SCORE_COLUMNS = ("score", "correctness")  # the condition columns "✓ · NAME" go right after these


def layout(run=None, sel=None, view=None, region=None, **_):
    data, error = C.load(run, None if view == "tokens" else view)
    if data is None:
        return C.no_run_page(run, error)
    rd, _ = RV.regions_of(data)
    region_id = RV.region_value(region)
    region_id = region_id if rd is not None and region_id in rd.by_id else None
    column_defs = [{"field": c, "width": w, "sortable": True,
                    "filter": "agNumberColumnFilter" if c in NUMBER_COLUMNS else "agTextColumnFilter",
                    **({"valueFormatter": {"function": "params.value == null ? '' : d3.format('.4~g')(params.value)"}}
                       if c in NUMBER_COLUMNS else {}), **({"pinned": "left"} if c == "example_id" else {})}
                   for c, w in COLUMNS]
    if rd is not None:  # the example's region (regions.parquet; -1: in none), filterable: ?region=K
        column_defs.insert(4, {"field": "region", "width": 110, "sortable": True, "filter": "agNumberColumnFilter"})
    cd, cond_error = data.conditions()
    names = cd.names if cd is not None else []
    # one correct column per condition beside the run's own scores; one answer column per condition last
    after = max(i for i, d in enumerate(column_defs) if d["field"] in SCORE_COLUMNS) + 1
    column_defs[after:after] = [{"field": CV.correct_column(n), "headerName": CV.correct_column(n), "width": 130,
                                 "sortable": True, "filter": "agTextColumnFilter"} for n in names]
    column_defs += [{"field": CV.answer_column(n), "headerName": CV.answer_column(n), "width": 180,
                     "sortable": True, "filter": "agTextColumnFilter"} for n in names]
    grid = dag.AgGrid(id="examples-grid", columnDefs=column_defs, rowModelType="infinite",
                      dashGridOptions={"pagination": True, "paginationPageSize": 50, "cacheBlockSize": 50,
                                       "rowSelection": {"mode": "singleRow", "checkboxes": False,
                                                        "enableClickSelection": True},
                                       "maxBlocksInCache": 20},
                      getRowId="params.data.example_id", style={"height": "560px"}, className="ag-theme-alpine",
                      **({"filterModel": {"region": {"filterType": "number", "type": "equals", "filter": region_id}}}
                         if region_id is not None else {}))
    return dbc.Container([
        dcc.Store(id="examples-run", data=data.id), dcc.Store(id="examples-selected", data=sel),
        html.Div(id="examples-url-sync", hidden=True),
        dbc.Row([dbc.Col(C.run_picker(data.base_id), md=3),
                 dbc.Col(C.view_picker(data, ("prompt", "completion")), md=2),
                 dbc.Col(html.Div(f"{data.n:,} examples; sort and filter from the column headers "
                                  "(done on the server); click a row for details.",
                                  className="small text-muted pt-4"), md=7)]),
        *([dbc.Alert(f"Conditions cannot be shown: {cond_error}", color="warning", className="small py-1",
                     id="examples-conditions-error")] if cond_error else []),
        *([html.Div([f"Region {rd.by_id[region_id]['label']}: {RV.region_summary(rd.by_id[region_id])} · ",
                     dcc.Link("all examples", href=C.url(f"/examples?run={data.base_id}"))],
                    className="small mb-1", id="examples-region")] if region_id is not None else []),
        grid,
        dbc.Card(dbc.CardBody(html.Div(id="examples-drill")), className="mt-2"),
    ], fluid=True)


@callback(Output("examples-grid", "getRowsResponse"), Input("examples-grid", "getRowsRequest"),
          State("examples-run", "data"))
def rows(request, run_id):
    data = C.loaded(run_id)
    if not request:
        raise PreventUpdate
    return query_table(data, request)


@callback(Output("examples-selected", "data"), Input("examples-grid", "cellClicked"), prevent_initial_call=True)
def on_row(cell):
    row_id = (cell or {}).get("rowId")
    if row_id is None:
        raise PreventUpdate
    return row_id


@callback(Output("examples-drill", "children"), Input("examples-selected", "data"), State("examples-run", "data"))
def show(sel, run_id):
    data = C.loaded(run_id)
    return C.drilldown(data, C.row_of(data, sel))


dash.clientside_callback(dash.ClientsideFunction("llm_maps", "syncExamplesUrl"), Output("examples-url-sync", "children"),
                         Input("examples-run", "data"), Input("examples-selected", "data"),
                         Input("examples-grid", "filterModel"))
