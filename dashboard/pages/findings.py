"""Findings page: does accuracy fall off more steeply with distance to train in one domain than in
another? Curves on the percentile scale with bands, AUROC per domain, the contrast with its
interval, first-token confidence vs distance, the verdict and the robustness table.

The statistics come from RUN/findings.json (``llm-maps findings``, B = 2000 and the robustness
table) when it holds the chosen variant; otherwise they are computed here (B = 1000) for the chosen
layer, metric, view and encodings, when the run is small enough to measure distances on the fly.
"""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, callback, dcc, html

from dashboard import components as C
from dashboard import figures as F
from dashboard import findings_view as V
from llm_maps.errors import LLMMapsError
from llm_maps.findings import DEFAULT_CONTRAST, FINDINGS_FILE, FIRST_TOKEN_COLUMNS, compute_findings, read_findings, run_views, variant_distances

dash.register_page(__name__, path="/findings", name="Findings", title="LLM Maps · findings", order=2)

ONLINE_BOOTSTRAP = 1000
GRAPHS = ("findings-curves", "findings-contrast", "findings-detector", "findings-confidence")
NO_SCORES = ("No scores yet: this run has no scored test examples. Score it with `llm-maps score RUN`, then "
             "`llm-maps findings RUN`.")


def _stored(data) -> tuple[dict | None, str | None]:
    """RUN/findings.json, read again when the file changes."""
    try:
        st = (data.path / FINDINGS_FILE).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        stamp = None
    return data._cached(("findings_file", stamp), lambda: read_findings(data.path))


def _matches(stored: dict, layer: int, metric: str, view: str, centred: bool, contrast: tuple) -> bool:
    return (int(stored.get("layer", -1)), stored.get("metric"), stored.get("view"),
                             bool(stored.get("centred")), (stored["contrast"]["a"], stored["contrast"]["b"])) == \
        (int(layer), metric, view, bool(centred), tuple(contrast))


def findings_for(data, *, layer: int, metric: str, view: str = "prompt", centred: bool = False,
                 contrast: tuple = DEFAULT_CONTRAST, n_boot: int = ONLINE_BOOTSTRAP) -> tuple[dict, str]:
    """(result, where it came from): findings.json when it holds this variant, else computed (cached
    per run). LLMMapsError when impossible (no scores, one domain, a run too large, ...)."""
    stored, _ = _stored(data)
    if stored is not None and _matches(stored, layer, metric, view, centred, contrast):
        return stored, f"from findings.json (B = {stored.get('bootstrap')})"
    if not data.has_scores:
        raise LLMMapsError(NO_SCORES)
    if not data.distances_available(layer, metric):
        raise LLMMapsError(f"this variant's distances are not stored and the run is too large to compute them here: "
                           f"run `llm-maps findings {data.path} --layer {layer} --metric {metric}`")

    def build():
        frame = data.frame
        rows = np.flatnonzero(~data.is_train)
        dist = variant_distances(data.run, rows=rows, layer=layer, metric=metric, view=view, centred=centred)
        first = {c: frame[c].to_numpy(dtype=float, na_value=np.nan)[rows] for c in FIRST_TOKEN_COLUMNS
                 if c in frame.columns}
        res = compute_findings(distance=dist, correct=data.correct.to_numpy(dtype=object, na_value=None)[rows],
                               domain=frame["domain"].astype(str).to_numpy()[rows],
                               task=frame["task"].astype(str).to_numpy()[rows], contrast=contrast, n_boot=n_boot,
                               first_token=first or None, where=f"run '{data.id}'")
        robust = (stored or {}).get("robustness") if stored and (stored["contrast"]["a"], stored["contrast"]["b"]) \
            == tuple(contrast) else []
        return {"split": "test", "layer": layer, "metric": metric, "view": view, "centred": centred,
                "model": data.manifest.get("model"), **res, "robustness": robust or []}

    return data._cached(("findings", layer, metric, view, centred, tuple(contrast), n_boot), build), \
        f"computed here (B = {n_boot})"


def _graph(graph_id: str) -> html.Div:
    return html.Div([dcc.Graph(id=graph_id, config=F.EXPORT_CONFIG),
                     html.Div(C.export_buttons(graph_id), className="d-flex justify-content-end")],
                    id=f"{graph_id}-box", className="mb-3")


def _table(rows: list[list[str]], table_id: str) -> dbc.Table:
    return dbc.Table([html.Thead(html.Tr([html.Th(c) for c in rows[0]])),
                      html.Tbody([html.Tr([html.Td(c) for c in r]) for r in rows[1:]])],
                     id=table_id, size="sm", striped=True, className="small")


def layout(run=None, layer=None, metric=None, view="prompt", centred="raw", a=None, b=None, **_):
    data, error = C.load(run)
    if data is None:
        return C.no_run_page(run, error)
    stored, stored_error = _stored(data)
    base = stored or {}
    layer = C.query_int(layer, int(base.get("layer", data.default_layer)))
    layer = layer if layer in data.layers else data.default_layer
    metric = metric if metric in ("cosine", "euclidean") else base.get("metric", data.metric)
    views = run_views(data.manifest)
    view = view if view in views else "prompt"
    domains = data.option_names("domain")
    a = a if a in domains else (base.get("contrast") or {}).get("a", DEFAULT_CONTRAST[0])
    b = b if b in domains else (base.get("contrast") or {}).get("b", DEFAULT_CONTRAST[1])
    controls = [
        C.run_picker(data.id),
        *C.layer_and_metric("findings", data, layer, metric),
        dbc.Label("View", className="mb-0 small"),
        dcc.Dropdown(id="findings-view", options=views, value=view, clearable=False, className="mb-2"),
        dbc.Label("Encodings", className="mb-0 small"),
        dbc.RadioItems(id="findings-centred", options=[{"label": "raw", "value": "raw"},
                                                       {"label": "train-mean-centred", "value": "centred"}],
                       value="centred" if centred == "centred" else "raw", className="mb-2"),
        dbc.Label("Contrast: domain A − domain B", className="mb-0 small"),
        dcc.Dropdown(id="findings-a", options=domains, value=a, clearable=False, className="mb-1"),
        dcc.Dropdown(id="findings-b", options=domains, value=b, clearable=False, className="mb-2"),
        html.Div("findings.json: " + (f"layer {base['layer']}, {base['metric']}, B = {base.get('bootstrap')}"
                                      if stored else "none (run `llm-maps findings RUN` for B = 2000 and the "
                                                     "robustness table)"), className="small text-muted"),
    ]
    body = [html.Div(id="findings-verdict", className="mb-2"), html.Div(id="findings-source", className="small mb-2"),
            _graph("findings-curves"), html.Div(id="findings-domains", className="mb-3"),
            _graph("findings-contrast"), _graph("findings-detector"), _graph("findings-confidence"),
            html.H5("Robustness", className="mt-2"), html.Div(id="findings-robustness")]
    alerts = ([dbc.Alert(NO_SCORES, color="warning", id="no-scores")] if not data.has_scores else []) + \
        ([dbc.Alert(stored_error, color="warning")] if stored_error else [])
    return dbc.Container([
        dcc.Store(id="findings-run", data=data.id), html.Div(id="findings-url-sync", hidden=True),
        dbc.Row([dbc.Col(controls, md=3, className="pt-2"), dbc.Col(alerts + body, md=9)]),
    ], fluid=True)


def _empty(title: str, dark: bool):
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(template=F.template_name(dark), height=200, title={"text": title},
                      xaxis={"visible": False}, yaxis={"visible": False})
    return fig


@callback(Output("findings-verdict", "children"), Output("findings-source", "children"),
          *[Output(g, "figure") for g in GRAPHS], *[Output(f"{g}-box", "hidden") for g in GRAPHS],
          Output("findings-domains", "children"), Output("findings-robustness", "children"),
          Input("findings-layer", "value"), Input("findings-metric", "value"), Input("findings-view", "value"),
          Input("findings-centred", "value"), Input("findings-a", "value"), Input("findings-b", "value"),
          State("findings-run", "data"), State("theme-dark", "value"))
def update_findings(layer, metric, view, centred, a, b, run_id, dark=False):
    data = C.loaded(run_id)
    dark = bool(dark)
    try:
        result, source = findings_for(data, layer=int(layer), metric=metric, view=view or "prompt",
                                      centred=centred == "centred", contrast=(a, b))
    except LLMMapsError as exc:
        empty = [_empty("", dark)] * len(GRAPHS)
        return (dbc.Alert(str(exc), color="warning", id="findings-error"), "", *empty, *([True] * len(GRAPHS)),
                None, None)
    figs = V.figures(result, dark=dark)
    verdict = dbc.Alert([html.Strong(result["verdict"], id="findings-verdict-text")], color=V.verdict_colour(result),
                        id="findings-verdict-alert")
    notes = [html.Li(n) for n in result.get("notes") or []]
    src = html.Div([html.Span(f"{V.describe(result)}; statistics {source}. {result.get('unit', '')}. "
                              f"{result.get('interval', '')}.", id="findings-source-text"),
                    html.Ul(notes, className="mb-0") if notes else None])
    robust = (_table(V.robustness_rows(result), "findings-robustness-table") if result.get("robustness") else
              html.Div("The robustness table (every stored layer, metric and view, raw and centred) comes from "
                       "findings.json: run `llm-maps findings RUN` for this contrast.", className="small text-muted"))
    out_figs = [figs.get(g) or _empty("no first-token statistics in this run: re-run `llm-maps score`", dark)
                for g in GRAPHS]
    return (verdict, src, *out_figs, *[g not in figs for g in GRAPHS],
            [_table(V.domain_rows(result), "findings-domain-table"), _table(V.parts_rows(result), "findings-parts-table")],
            robust)


dash.clientside_callback(
    """function (run, layer, metric, view, centred, a, b) {
        return window.dash_clientside.llm_maps._write({run, layer, metric, view: view === 'prompt' ? null : view,
                                                       centred: centred === 'centred' ? 'centred' : null, a, b});
    }""", Output("findings-url-sync", "children"),
    Input("findings-run", "data"), Input("findings-layer", "value"), Input("findings-metric", "value"),
    Input("findings-view", "value"), Input("findings-centred", "value"), Input("findings-a", "value"),
    Input("findings-b", "value"))
for _g in GRAPHS:
    C.register_export(_g)
