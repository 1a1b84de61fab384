"""Examples page: every example in a server-side table; a row opens the drill-down."""

from __future__ import annotations

import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components as C
from dashboard import conditions_view as CV
from dashboard.table import NUMBER_COLUMNS, query_table

dash.register_page(__name__, path="/examples", name="Examples", title="LLM Maps · examples", order=2)

# widths leave room for each header's text plus its sort and menu icons (a narrow "split" had its
# icon over its text)
COLUMNS = [("example_id", 190), ("split", 110), ("task", 200), ("domain", 120), ("text", 360), ("reference", 160),
           ("output", 200), ("score", 100), ("correctness", 160), ("dist_to_train", 160)]


def layout(run=None, sel=None, view=None, **_):
    data, error = C.load(run, None if view == "tokens" else view)
    if data is None:
        return C.no_run_page(run, error)
    column_defs = [{"field": c, "width": w, "sortable": True,
                    "filter": "agNumberColumnFilter" if c in NUMBER_COLUMNS else "agTextColumnFilter",
                    **({"valueFormatter": {"function": "params.value == null ? '' : d3.format('.4~g')(params.value)"}}
                       if c in NUMBER_COLUMNS else {})}
                   for c, w in COLUMNS]
    cd, cond_error = data.conditions()
    for name in (cd.names if cd is not None else []):  # one answer and one correct column per condition
        column_defs += [{"field": CV.answer_column(name), "headerName": CV.answer_column(name), "width": 180,
                         "sortable": True, "filter": "agTextColumnFilter"},
                        {"field": CV.correct_column(name), "headerName": CV.correct_column(name), "width": 130,
                         "sortable": True, "filter": "agTextColumnFilter"}]
    grid = dag.AgGrid(id="examples-grid", columnDefs=column_defs, rowModelType="infinite",
                      dashGridOptions={"pagination": True, "paginationPageSize": 50, "cacheBlockSize": 50,
                                       "rowSelection": {"mode": "singleRow", "checkboxes": False,
                                                        "enableClickSelection": True},
                                       "maxBlocksInCache": 20},
                      getRowId="params.data.example_id", style={"height": "560px"}, className="ag-theme-alpine")
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
        grid,
        dbc.Card(dbc.CardBody(html.Div(id="examples-drill")), className="mt-2"),
    ], fluid=True)


@callback(Output("examples-grid", "getRowsResponse"), Input("examples-grid", "getRowsRequest"),
          State("examples-run", "data"))
def rows(request, run_id):
    data, _ = C.load(run_id)
    if data is None or not request:
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
    data, _ = C.load(run_id)
    if data is None:
        raise PreventUpdate
    return C.drilldown(data, C.row_of(data, sel))


dash.clientside_callback(dash.ClientsideFunction("llm_maps", "syncExamplesUrl"), Output("examples-url-sync", "children"),
                         Input("examples-run", "data"), Input("examples-selected", "data"))
