"""The 404 page."""

import dash
import dash_bootstrap_components as dbc
from dash import dcc, html

from dashboard import components as C

dash.register_page(__name__, path="/404", title="LLM Maps · not found")


def layout(**_):
    return dbc.Container(dbc.Alert([html.H4("Page not found", id="not-found"),
                                    html.P("There is no such page here."),
                                    dcc.Link("Go to the map", href=C.url("/map")), " · ",
                                    dcc.Link("list the runs", href=C.url("/runs"))], color="secondary"), className="pt-4")
