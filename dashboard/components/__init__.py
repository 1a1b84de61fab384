"""Shared page components. User text (prompts, outputs, references) is always passed to Dash as
plain strings, which React renders as text: never as HTML or Markdown."""

from __future__ import annotations

from urllib.parse import urlencode

import dash_bootstrap_components as dbc
import flask
import numpy as np
from dash import dcc, html
from dash.exceptions import PreventUpdate

from dashboard.conditions_view import drill_section, path_figure
from dashboard.figures import EXPORT_CONFIG
from dashboard.formatting import fmt as _fmt
from llm_maps.errors import LLMMapsError
from dashboard.data import VIEW_LABELS, preview, run_views, split_key, view_key


def registry():
    """The RunRegistry of the app serving this request."""
    return flask.current_app.config["LLM_MAPS_REGISTRY"]


def url(path: str) -> str:
    """An app path ("/map?run=x") under the URL prefix of the app serving this request."""
    prefix = flask.current_app.config.get("LLM_MAPS_PREFIX", "/") if flask.has_app_context() else "/"
    return prefix.rstrip("/") + path


def dark_cookie() -> bool:
    """Whether this request's page is in the dark theme (the browser sets the cookie)."""
    try:
        return flask.request.cookies.get("llm_maps_theme") == "dark"
    except RuntimeError:  # no request (e.g. called from a test)
        return False


def load(run_id, view: str | None = None):
    """(RunData, None) or (None, error message) — pages show the message as a banner. ``run_id`` may
    be a page's run key (``RUN::VIEW``), or give ``view``."""

    if view not in (None, "", "prompt") and not split_key(run_id)[0]:
        # a view belongs to a run: without run= the page would silently show another view of another run
        label = VIEW_LABELS.get(str(view), str(view))
        having = [e.id for e in registry().entries() if e.ok and view in _views_of(e)]
        return None, (f"The {label} view needs a run: add run=RUN to the address (view={view} alone names no run)"
                      + (f"; runs with this view: {', '.join(having)}" if having else "; no run here has this view"))
    try:
        return registry().load(view_key(run_id, view) if view else (run_id or None)), None
    except LLMMapsError as exc:
        return None, str(exc)
    except Exception as exc:  # a corrupt file can raise anything; never take the app down
        return None, f"could not read run '{run_id}': {type(exc).__name__}: {exc}"


def loaded(run_id):
    """The run a callback works on, or no update (PreventUpdate) where it cannot be read: the page's
    layout, which loaded it first, already shows why."""
    data, _ = load(run_id)
    if data is None:
        raise PreventUpdate
    return data


def _views_of(entry) -> list[str]:
    try:
        return run_views(entry.manifest or {})
    except Exception:  # noqa: BLE001 - an odd manifest: no views to offer
        return []


def no_run_page(run, error: str) -> dbc.Container:
    """A page for a run that cannot be shown: the run picker, the reason, a link to the runs."""
    return dbc.Container([run_picker(run), banner(error, id="run-banner"),
                          dcc.Link("choose another run", href=url("/runs"))], fluid=True, className="pt-3")


def banner(message: str, color: str = "danger", className: str = "", **kwargs) -> dbc.Alert:
    return dbc.Alert([html.Strong("This run cannot be shown. " if color == "danger" else ""), message],
                     color=color, className=f"run-banner {className}".strip(), **kwargs)


def is_owner() -> bool:
    """Whether this request carries the app's credentials (``LLM_MAPS_AUTH`` set, and given): only
    then do pages show local paths (folders, model files), as tooltips. Without credentials nobody
    is known to be the owner, so no page holds a path of the machine serving it."""
    try:
        return bool(flask.current_app.config.get("LLM_MAPS_AUTHORISED", lambda: False)())
    except RuntimeError:  # no request (e.g. called from a test)
        return False


def run_label(entry) -> str:
    """A run as the run pickers list it: its id, the fine-tuning group it belongs to, unreadable."""
    return entry.id + (f" · group {entry.group}" if entry.group else "") + ("" if entry.ok else " (unreadable)")


def run_picker(current: str | None) -> html.Div:
    entries = registry().entries()
    options = [{"label": run_label(e), "value": e.id} for e in entries]
    return html.Div([dbc.Label("Run", html_for="run-picker", className="mb-0 small"),
                     dcc.Dropdown(id="run-picker", options=options, value=current, clearable=False)],
                    className="mb-2")


def view_picker(data, allowed=("prompt", "completion", "tokens")):
    """The view switch (prompt | completion | token map) of a run that has more than the prompt
    view; changing it reloads the page with ``view=`` in the URL."""

    views = [v for v in data.views if v in allowed]
    if len(views) < 2:
        return html.Div(id="view-picker-none", hidden=True)
    return html.Div([dbc.Label("View", html_for="view-picker", className="mb-0 small"),
                     dcc.Dropdown(id="view-picker", options=[{"label": VIEW_LABELS[v], "value": v} for v in views],
                                  value=data.view, clearable=False),
                     html.Div(id="view-nav", hidden=True)], className="mb-2")


def layer_and_metric(page: str, data, layer: int, metric: str) -> list:
    """The layer and distance-metric pickers of a statistics page (ids ``<page>-layer``, ``<page>-metric``)."""
    return [
        dbc.Label("Layer", className="mb-0 small"),
        dcc.Dropdown(id=f"{page}-layer", options=[{"label": f"layer {k}", "value": k} for k in data.layers],
                     value=layer, clearable=False, className="mb-2"),
        dbc.Label("Distance metric", className="mb-0 small"),
        dcc.Dropdown(id=f"{page}-metric", options=["cosine", "euclidean"], value=metric, clearable=False,
                     className="mb-2"),
    ]


def register_view_picker() -> None:
    import dash
    from dash import Input, Output

    dash.clientside_callback(dash.ClientsideFunction("llm_maps", "pickView"), Output("view-nav", "children"),
                             Input("view-picker", "value"), prevent_initial_call=True)


def query_list(value) -> list[str]:
    if value is None or value == "":
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if v != ""]


def query_range(value) -> list[float] | None:
    try:
        lo, hi = (float(v) for v in str(value).split(","))
        return [lo, hi]
    except (TypeError, ValueError):
        return None


def query_int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _text_block(label: str, value, cls: str) -> html.Div:
    import pandas as pd

    text = "" if value is None or (np.ndim(value) == 0 and pd.isna(value)) else str(value)
    return html.Div([html.Div(label, className="small text-muted"),
                     html.Pre(text if text else "—", className=f"drill-text {cls}")], className="mb-2")


def drilldown(data, row: int | None) -> html.Div:
    """Everything about one example and its nearest training examples (text + distance)."""
    if row is None:
        return html.Div("Click a point (or a table row) to see its prompt, output and nearest training "
                        "examples.", className="text-muted small", id="drill-empty")
    r = data.frame.iloc[row]
    fields = [("example", r["example_id"]), ("split", r["split"]), ("task", r["task"]),
              ("category", r["category"]), ("domain", r["domain"])]
    verdict = correctness(data, row)
    if verdict is not None or not data.is_train[row]:  # a train example: only what is known
        fields += [("score", _fmt(data.score[row], 3)), ("correctness", verdict or "not scored")]
    fields.append(("distance to train", _fmt(data.dist[row])))
    table = html.Table([html.Tr([html.Th(k, className="pe-3 small"), html.Td(str(v), className="small")])
                        for k, v in fields], className="mb-2")
    nbrs = data.neighbours(row)
    items = []
    for j, d in nbrs:
        items.append(html.Li([
            html.Div([html.Code(str(data.frame["example_id"].iloc[j])), html.Span(f"  distance {_fmt(d)}",
                                                                                  className="small text-muted")]),
            html.Pre(data.text_preview(j), className="drill-text drill-neighbour small"),
            known_answer(data, j, className="small text-muted drill-neighbour-answer")], className="mb-1"))
    own = data.text_of(row)
    if own == str(r["prompt"]).strip():  # no template around it: the prompt is the example's text
        text = [_text_block("prompt", r["prompt"], "drill-prompt")]
    else:  # the example's own text first; the exact templated prompt one click away
        text = [_text_block("instruction and context", own, "drill-question"),
                html.Details([html.Summary("exact prompt given to the model", className="small text-muted"),
                              html.Pre(str(r["prompt"]), className="drill-text drill-prompt")], className="mb-2")]
    return html.Div([
        html.H6(["Example ", html.Code(str(r["example_id"]))]), table, *text,
        _text_block("reference", r["reference"], "drill-reference"),
        _text_block("output", r["output"], "drill-output"),
        *condition_blocks(data, row),
        html.Div(f"{len(nbrs)} nearest training examples", className="small text-muted"),
        html.Ol(items, className="drill-neighbours ps-3"),
        dcc.Link("show on the map", href=url(f"/map?run={data.id}&sel={r['example_id']}"), className="small"),
        dcc.Link("try a variation", id="drill-try-variation", className="small ms-3",
                 href=url(f"/playground?{urlencode({'run': data.base_id, 'example': str(r['example_id'])})}")),
    ], id="drill-panel-content")


def condition_blocks(data, row: int) -> list:
    """Every condition the example was asked under, side by side (dashboard/conditions_view.py)."""
    return drill_section(data, row)


def correctness(data, row: int) -> str | None:
    """"correct" / "wrong" when the example was scored (a train example too, after
    `llm-maps score --splits train`), else None."""
    import pandas as pd

    ok = data.correct.iloc[row]  # nullable boolean: pd.NA when not scored
    return None if pd.isna(ok) else ("correct" if bool(ok) else "wrong")


def known_answer(data, row: int, chars: int = 120, **kwargs) -> html.Div | None:
    """What is known about a (training) example's answer: its reference, and the model's score on
    it when it was scored; None when nothing is."""
    import pandas as pd


    ref = data.frame["reference"].iloc[row] if "reference" in data.frame else None
    ref = None if ref is None or (np.ndim(ref) == 0 and pd.isna(ref)) or not str(ref).strip() else str(ref)
    verdict = correctness(data, row)
    if ref is None and verdict is None:
        return None
    parts = []
    if ref is not None:
        parts.append(f"answer: {preview(ref, chars)}")
    if verdict is not None:
        parts.append(f"model {verdict} (score {_fmt(data.score[row], 3)})")
    return html.Div(" · ".join(parts), **kwargs)


def row_of(data, example_id) -> int | None:
    if example_id is None:
        return None
    return data.row_of(example_id)


def export_buttons(graph_id: str) -> html.Div:
    """PNG and SVG download buttons for one figure (Plotly.downloadImage in the browser)."""
    return html.Div([
        html.Span("download", className="small text-muted me-1"),
        dbc.Button("PNG", id=f"{graph_id}-png", size="sm", color="secondary", outline=True, className="me-1 py-0"),
        dbc.Button("SVG", id=f"{graph_id}-svg", size="sm", color="secondary", outline=True, className="py-0"),
        html.Div(id=f"{graph_id}-exported", hidden=True),
    ], className="export-buttons text-nowrap")


def register_export(graph_id: str) -> None:
    """The clientside callback behind ``export_buttons(graph_id)``."""
    import dash
    from dash import Input, Output

    dash.clientside_callback(dash.ClientsideFunction("llm_maps", "exportFigure"),
                             Output(f"{graph_id}-exported", "children"),
                             Input(f"{graph_id}-png", "n_clicks"), Input(f"{graph_id}-svg", "n_clicks"),
                             prevent_initial_call=True)


def register_path_callback() -> None:
    """The drill-down's "path on the token map" buttons (one callback for every page showing the
    drill-down; called once, by the Map page)."""
    import dash
    from dash import MATCH, Input, Output, State, dcc, html
    from dash.exceptions import PreventUpdate

    @dash.callback(Output({"type": "cond-path-out", "run": MATCH, "ex": MATCH, "cond": MATCH}, "children"),
                   Input({"type": "cond-path", "run": MATCH, "ex": MATCH, "cond": MATCH}, "n_clicks"),
                   State({"type": "cond-path", "run": MATCH, "ex": MATCH, "cond": MATCH}, "id"),
                   State("theme-dark", "value"), prevent_initial_call=True)
    def _draw_path(clicks, key, dark=False):
        if not clicks or not key:
            raise PreventUpdate
        if clicks % 2 == 0:  # a second click hides it again
            return None
        data, error = load(key.get("run"))
        row = row_of(data, key.get("ex")) if data is not None else None
        if data is None or row is None:
            return html.Div(error or f"no example '{key.get('ex')}'", className="small text-danger")
        try:
            fig = path_figure(data, row, str(key.get("cond")), dark=bool(dark))
        except LLMMapsError as exc:
            return html.Div(str(exc), className="small text-danger")
        return dcc.Graph(figure=fig, config=EXPORT_CONFIG, className="cond-path-graph")
