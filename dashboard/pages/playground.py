"""Playground: type a prompt, see where it lands among the run's training examples, and watch a
generation stream in as a path through the map.

The page is a client of the JSON API (dashboard/api.py): the browser posts the form to
``POST /api/runs/<run>/points`` and polls ``GET /api/points/<id>`` (assets/playground.js), so a
request never blocks a Dash callback and the page shows exactly the errors the API gives (413,
422, 503, failed jobs). Streamed tokens and paths are drawn by the browser; the server draws what
needs the run: the base map, the neighbour list and lines, the expected accuracy and its falloff
plot and the drill-down. The compare table of the kept generations is drawn by the browser too.

A shared link (``?ids=``) opens saved points: the ids are deduplicated (first appearance kept) and
capped at MAX_SHARED_IDS (parse_ids), the points read from the store once and sent with the page
(shared_points), and the browser draws them all in one go.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

import dash
import dash_bootstrap_components as dbc
from dash import ALL, Input, Output, State, callback, ctx, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components as C
from dashboard import figures as F
from dashboard import regions_view as RV
from dashboard import variation as V
from dashboard.data import falloff_for
from llm_maps.conditions import DEFAULT_COT_CUE
from llm_maps.falloff import expected_words
from llm_maps import model_stack
from llm_maps.jobs import redis_url
from llm_maps.tokens import read_tokens

dash.register_page(__name__, path="/playground", name="Playground", title="LLM Maps · playground", order=1.5)

COT_CUE = DEFAULT_COT_CUE  # "think step by step" is the `cot` condition: llm_maps.conditions.cot_prompt
# the label says what the switch does: the same construction as `llm-maps score --conditions cot`
COT_LABEL = (f"think step by step: the answer starts with “{COT_CUE}” (as the cot condition); the prompt's "
             "place on the map does not change")
YOUR_PROMPT_COLOUR = F.NEIGHBOUR_COLOUR  # your prompt on the small falloff plot (reads on both themes)
DEFAULT_MAX_TOKENS = 48
MAX_SHARED_IDS = 100  # saved points a shared link may open at once (the rest are dropped, with a message)
SUMMARY_FIELDS = ("n_tokens", "mean_logprob", "perplexity", "path_length", "final_dist", "mean_dist", "max_dist")
ATLAS_SAMPLE = 4000  # atlas tokens drawn faintly under the token map


def _float(value, default):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def gen_entry(point: dict, status: str = "done") -> dict:
    """What the page keeps of one generation (the compare table's row; tokens stay in the browser)."""
    opts = point.get("options") or {}
    return {"id": point["id"], "status": status, "hidden": False, "kind": point.get("kind"),
            "instruction": point.get("instruction", ""), "temperature": opts.get("temperature"),
            "seed": opts.get("seed"), "cot": bool(opts.get("cot")), "dist_to_train": point.get("dist_to_train"),
            **{k: point.get(k) for k in SUMMARY_FIELDS}, **({"variation": point["variation"]}
                                                          if point.get("variation") else {})}


class SharedIds(NamedTuple):
    ids: list[str]  # the ids opened: each once, in the order of first appearance, at most the cap
    listed: int  # different ids in the link
    duplicates: int  # repeats of an id already listed (opened once)
    dropped: int  # different ids past the cap (not opened)
    cap: int


def parse_ids(ids, cap: int = MAX_SHARED_IDS) -> SharedIds:
    """The ``ids=`` of a shared link (comma-separated): blanks skipped, each id once in the order
    it first appears, the first ``cap`` of them kept."""
    seen: dict[str, None] = {}
    total = 0
    for part in str(ids or "").split(","):
        pid = part.strip()
        if pid:
            total += 1
            seen.setdefault(pid, None)
    unique = list(seen)
    cap = max(0, int(cap))
    return SharedIds(unique[:cap], len(unique), total - len(unique), max(0, len(unique) - cap), cap)


def shared_points(run: str, ids: list[str]) -> tuple[list[dict], dict[str, dict]]:
    """The saved points of a shared link, from one read of the store: the page's entries in the
    link's order (ids not in the store are 'loading': jobs the browser polls) and the points found,
    by id (sent with the page, so the browser draws them all at once instead of one request each)."""
    import flask

    store = flask.current_app.config.get("LLM_MAPS_POINTS")
    by_id = {p.get("id"): p for p in store.list(run)} if (store is not None and ids) else {}  # one read
    gens, found = [], {}
    for pid in ids:
        point = by_id.get(pid)
        if point:
            found[pid] = point
        gens.append(gen_entry(point) if point else {"id": pid, "status": "loading", "hidden": False})
    return gens, found


def stored_points(run: str, ids: list[str]) -> list[dict]:
    """The saved points of a shared link, in its order (unknown ids are left to the browser)."""
    return shared_points(run, ids)[0]


def shared_notice(shared: SharedIds):
    """What a shared link lost on the way: ids past the cap (dropped) and repeated ids (opened once)."""
    out = []
    if shared.dropped:
        out.append(dbc.Alert(
            f"This link lists {shared.listed} saved points; the playground opens at most {shared.cap} at once, "
            f"so the last {shared.dropped} were dropped.", color="warning", className="small py-2 mb-1",
            id="pg-ids-capped"))
    if shared.duplicates:
        n = shared.duplicates
        out.append(html.Div(f"{n} repeated id{'s' if n != 1 else ''} in the link opened once.",
                            className="small text-muted mb-1", id="pg-ids-duplicates"))
    return out


def map_choices(data) -> list[str]:
    """The maps a path can be drawn on: the token map first when the run has a token atlas."""
    return ["tokens", "prompt"] if "tokens" in data.views else ["prompt"]


def atlas_trace(data):
    """A fixed sample of the atlas tokens, as open circles under the token map's points (their text
    on hover)."""
    import numpy as np
    import plotly.graph_objects as go


    def build():
        tokens = read_tokens(data.path, data.manifest)
        if "x" not in tokens.columns or not len(tokens):
            return None
        rows = np.arange(len(tokens))
        if len(rows) > ATLAS_SAMPLE:
            rows = np.sort(np.random.default_rng(0).choice(rows, ATLAS_SAMPLE, replace=False))
        t = tokens.iloc[rows]
        text = [f"training step {F.plot_text(e)} #{p}: {F.plot_text(repr(s))}"
                for e, p, s in zip(t["example_id"], t["position"], t["token_text"])]
        # an SVG trace: drawn under the map's WebGL points (the prompts, test ones on top), as thin
        # open circles in the train grey (3:1 on both themes)
        return go.Scatter(x=t["x"].to_numpy(), y=t["y"].to_numpy(), mode="markers", name="atlas tokens",
                          text=text, hoverinfo="text",
                          marker={"size": 4, "color": F.TRAIN_GREY, "symbol": "circle-open", "line": {"width": 1}},
                          meta={"atlas": True})
    return data._cached("pg_atlas_trace", build)


def base_figure(data, colour: str, dark: bool, map_kind: str = "prompt"):
    """The run's map as on the Map page (same colours, sampled + density for large runs): the prompt
    map, or the token map (prompts placed on the map fitted with the token atlas, and a faint
    sample of the atlas tokens)."""
    shown = data.for_view("tokens") if map_kind == "tokens" else data
    fig = F.view_figure(shown, colour=colour, dark=dark, uirevision=f"pg-{data.id}-{map_kind}")
    if map_kind == "tokens":
        trace = atlas_trace(data)
        if trace is not None:
            fig.add_trace(trace)
    # pg_base tells the browser which figure this is (it redraws our traces on the one it wants)
    fig.update_layout(height=560, meta={"pg_base": colour if map_kind == "prompt" else f"{colour}|{map_kind}",
                                        "pg_map": map_kind})
    return fig


def unavailable() -> str | None:
    """Why the playground cannot run here, or None: no model stack in this install (the view-only
    ``pip install llm-maps``) and no Celery workers elsewhere (REDIS_URL), so no worker can run jobs."""

    if redis_url() or model_stack.available():
        return None
    return model_stack.message("The playground (placing and generating prompts)")


def layout(run=None, instruction="", context="", mode="greedy", temperature="0.8", seed="0", max=None, cot=None,
           colour="split", ids=None, map=None, example=None, **_):
    data, error = C.load(run)
    if data is None:
        return C.no_run_page(run, error)
    origin = V.origin(data, example)  # try a variation: opened from an example's drill-down
    if origin is not None and not instruction and not context:  # (a shared link keeps its edited text)
        instruction, context = origin["instruction"], origin["context"]
    maps = map_choices(data)
    map_kind = map if map in maps else maps[0]
    map_labels = {"tokens": "token map (paths against the training references)",
                  "prompt": "prompt map (neighbour lines)"}
    colour = F.colour_choice(data, colour)
    colour_opts = F.colour_dropdown(data)
    shared = parse_ids(ids)
    gens, found = shared_points(data.id, shared.ids)
    notice = shared_notice(shared)
    off = unavailable()
    form = [
        C.run_picker(data.id),
        *([dbc.Alert(off, color="secondary", className="small py-2", id="pg-unavailable")] if off else []),
        html.Div(V.origin_card(origin) if origin else None, id="pg-origin"),
        html.Div(dbc.Button("detach (edit freely, unscored)", id="pg-detach", size="sm", color="secondary",
                            outline=True, className="py-0"), id="pg-detach-box", hidden=origin is None,
                 className="mb-2"),
        *([dbc.Alert(f"example {str(example)[:80]!r} is not in run '{data.id}'", color="warning",
                     className="small py-2", id="pg-origin-missing")] if example and origin is None else []),
        dbc.Label("Instruction", html_for="pg-instruction", className="mb-0 small"),
        dbc.Textarea(id="pg-instruction", value=instruction or "", rows=4, className="mb-2",
                     placeholder="Ask the model something…"),
        dbc.Label("Context (optional)", html_for="pg-context", className="mb-0 small"),
        dbc.Textarea(id="pg-context", value=context or "", rows=2, className="mb-2"),
        dbc.Switch(id="pg-cot", label=COT_LABEL, value=cot in ("1", "true", True),
                   className="mb-2"),
        dbc.RadioItems(id="pg-mode", options=[{"label": "greedy", "value": "greedy"},
                                              {"label": "sampled", "value": "sampled"}],
                       value="sampled" if mode == "sampled" else "greedy", inline=True, className="mb-1"),
        dbc.Row([
            dbc.Col([dbc.Label("temperature", className="mb-0 small"),
                     dbc.Input(id="pg-temperature", type="number", min=0.05, max=5, step=0.05,
                               value=_float(temperature, 0.8), size="sm")]),
            dbc.Col([dbc.Label("seed", className="mb-0 small"),
                     dbc.Input(id="pg-seed", type="number", step=1, value=C.query_int(seed, 0), size="sm")]),
            dbc.Col([dbc.Label("max new tokens", className="mb-0 small"),
                     dbc.Input(id="pg-max", type="number", min=0, step=1, size="sm",
                               value=C.query_int(max, DEFAULT_MAX_TOKENS))]),
        ], className="g-2 mb-2"),
        html.Div("0 new tokens: only place the prompt.", className="small text-muted mb-2"),
        html.Div([dbc.Button("Submit", id="pg-submit", color="primary", className="me-2", disabled=bool(off)),
                  dbc.Button("Cancel", id="pg-cancel", color="secondary", outline=True, disabled=True)],
                 className="mb-2"),
        dbc.Alert(id="pg-error", color="danger", is_open=False, className="small py-2"),
        html.Div(id="pg-status", className="small text-muted", children="Submit a prompt to place it on the map."),
        dbc.Progress(id="pg-progress", value=0, max=100, className="mt-1 mb-2", style={"height": "6px"}),
        html.Div([html.Span("your points: ", className="small text-muted"),
                  html.A("CSV", href=C.url(f"/api/runs/{data.id}/points?format=csv"), className="small me-2",
                         id="pg-export-csv"),
                  html.A("JSONL", href=C.url(f"/api/runs/{data.id}/points?format=jsonl"), className="small",
                         id="pg-export-jsonl")]),
    ]
    return dbc.Container([
        dcc.Store(id="pg-run", data=data.id), dcc.Store(id="pg-palette", data=F.PALETTE),
        dcc.Store(id="pg-gens", data=gens),
        # the saved points of a shared link, drawn at once (key: this page, so the browser knows a new one)
        dcc.Store(id="pg-shared", data={"key": uuid.uuid4().hex, "points": found}),
        dcc.Store(id="pg-current"), dcc.Store(id="pg-overlay"), dcc.Store(id="pg-nbr-pick"),
        dcc.Store(id="pg-example", data=origin["example_id"] if origin else None),
        html.Div(id="pg-url-sync", hidden=True), html.Div(id="pg-drawn", hidden=True),
        html.Div(id="pg-submitted", hidden=True), html.Div(id="pg-cancelled", hidden=True),
        html.Div(id="pg-compared", hidden=True),
        dbc.Row([
            dbc.Col(form, md=3, className="pt-2"),
            dbc.Col([
                html.Div(notice, id="pg-ids-notice", className="pt-2" if notice else None),
                dbc.Row([dbc.Col(dcc.Dropdown(id="pg-colour", options=colour_opts, value=colour, clearable=False),
                                 md=4),
                         dbc.Col(html.Div("★ your prompt · path: one arrow per generated token, coloured by its "
                                          "probability (red low, green high)", className="small text-muted pt-2"),
                                 md=8)], className="mb-1"),
                html.Div(dbc.RadioItems(id="pg-map", options=[{"label": map_labels[m], "value": m} for m in maps],
                                        value=map_kind, inline=True, className="small"),
                         hidden=len(maps) < 2, className="mb-1"),
                dcc.Graph(id="pg-graph", figure=base_figure(data, colour, C.dark_cookie(), map_kind),
                          config=F.EXPORT_CONFIG,
                          style={"height": "560px"}),
                html.Div(C.export_buttons("pg-graph"), className="d-flex justify-content-end"),
                html.H6("Generation", className="mt-2 mb-1"),
                html.Div(id="pg-stream", className="pg-stream", children=html.Span(
                    "The answer streams in here; hover a token for its probability and the alternatives.",
                    className="text-muted")),
                html.H6("Compare", className="mt-3 mb-1"),
                html.Div(id="pg-compare"),
            ], md=6),
            dbc.Col([
                html.Div([html.H6("Variations", className="mt-2 mb-1"),
                          html.Div(id="pg-var-result", className="mb-1", children=html.Span(
                              "Edit the prompt and submit: each answer is scored against the attached reference.",
                              className="small text-muted")),
                          dcc.Graph(id="pg-var-plot", config={"displaylogo": False}, style={"height": "200px"},
                                    figure=V.history_figure([], origin, C.dark_cookie())),
                          html.Div(id="pg-var-history", className="table-responsive")],
                         id="pg-variation", hidden=origin is None),
                html.H6("Expected accuracy", className="mt-2 mb-1"),
                html.Div(id="pg-expected", className="small", children="—"),
                dcc.Graph(id="pg-falloff", config={"displaylogo": False}, style={"height": "260px"},
                          figure=_empty_falloff(C.dark_cookie())),
                html.H6("Nearest training examples", className="mt-2 mb-1"),
                html.Div(id="pg-neighbours", className="small"),
                dbc.Card(dbc.CardBody(html.Div(id="pg-drill")), className="mt-2", id="pg-drill-card"),
            ], md=3),
        ]),
    ], fluid=True)


def _empty_falloff(dark: bool = False):
    """The expected-accuracy box before a prompt: in the page's theme (its template; the text in the
    template's colour, which reads on either)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.update_layout(template=F.template_name(dark), height=260, margin={"l": 40, "r": 10, "t": 10, "b": 40},
                      xaxis={"visible": False}, yaxis={"visible": False},
                      annotations=[{"text": "submit a prompt", "showarrow": False}])
    return fig


@callback(Output("pg-graph", "figure"), Input("pg-colour", "value"), Input("pg-map", "value"), State("pg-run", "data"),
          State("theme-dark", "value"), prevent_initial_call=True)
def recolour(colour, map_kind, run_id, dark):
    data = C.loaded(run_id)
    return base_figure(data, colour or "split", bool(dark), map_kind if map_kind in map_choices(data) else "prompt")


def neighbour_rows(data, neighbours) -> list[tuple[int, float]]:
    out, rows = [], data.rows_of(n.get("example_id") for n in neighbours or [])
    for n in neighbours or []:
        row = rows.get(str(n.get("example_id")))
        if row is not None:
            out.append((int(row), float(n.get("distance") or 0.0)))
    return out


@callback(Output("pg-neighbours", "children"), Output("pg-overlay", "data"), Output("pg-expected", "children"),
          Output("pg-falloff", "figure"), Input("pg-current", "data"), Input("pg-map", "value"),
          State("pg-run", "data"), State("theme-dark", "value"), prevent_initial_call=True)
def show_current(current, map_kind, run_id, dark):
    """The current point's neighbours (list + line ends on the map shown) and its expected accuracy."""
    data = C.loaded(run_id)
    if not current:
        raise PreventUpdate
    shown = data.for_view("tokens") if map_kind == "tokens" and "tokens" in data.views else data
    nbrs = neighbour_rows(data, current.get("neighbours"))
    items = []
    for row, dist in nbrs:
        r = data.frame.iloc[row]
        verdict = C.correctness(data, row)  # None unless scored (`llm-maps score RUN --splits train,test`)
        first = data.text_preview(row, 160).split("\n", 1)[0]
        answer = C.known_answer(data, row, 80, className="text-muted text-truncate pg-nbr-answer")
        items.append(html.Li(html.Button([
            html.Div([html.Code(str(r["example_id"])), f" · {r['task']} · {r['domain']} · distance {dist:.4g}"]
                     + ([html.Span(f" · {verdict}", className=f"pg-verdict-{verdict}")] if verdict else [])),
            html.Div(first, className="text-truncate pg-nbr-text"), *([answer] if answer is not None else [])],
            id={"type": "pg-nbr", "index": str(r["example_id"])}, className="pg-nbr btn p-0 text-start"),
            className="mb-1"))
    overlay = {"x": [float(shown.x[row]) for row, _ in nbrs], "y": [float(shown.y[row]) for row, _ in nbrs],
               "text": [f"{F.plot_text(data.frame['example_id'].iloc[row])} · distance {dist:.4g}" for row, dist in nbrs],
               "id": current.get("id")}
    exp = current.get("expected_accuracy")
    dist = current.get("dist_to_train")
    if exp:
        words = expected_words(exp)
        text = [html.Strong(words.split(" ", 1)[0]), " " + words.split(" ", 1)[1] + " — ",
                f"test accuracy of {exp['domain']} prompts at this distance ({dist:.4g}; bin {exp['bin'] + 1})"]
    else:
        text = ["no falloff statistics for this run (score it first); distance to train ",
                html.Strong(f"{dist:.4g}" if dist is not None else "—")]
    # the region it falls in: its nearest training example's (dashboard/regions_view.py)
    expected = html.Div([html.Div(text, id="pg-expected-text"), RV.playground_region(data, current)])
    return (html.Ol(items, className="ps-3 mb-0", id="pg-neighbour-list"), overlay, expected,
            _falloff_with_marker(data, current, bool(dark)))


def _falloff_with_marker(data, current: dict, dark: bool):
    import plotly.graph_objects as go

    n_bins = int((data.falloff_file or {}).get("n_bins", 5))
    stats, _ = falloff_for(data, n_bins=n_bins)
    exp = current.get("expected_accuracy")
    if not stats:
        return _empty_falloff(dark)
    group = exp["domain"] if exp else (current.get("domain") if current.get("domain") in stats else "all")
    fig = F.falloff_figure(stats, [group], dark=dark, metric=data.metric, min_width=320)
    if exp:
        fig.add_trace(go.Scatter(
            x=[current["dist_to_train"]], y=[exp["accuracy"]], mode="markers", name="your prompt",
            marker={"symbol": "star", "size": 16, "color": YOUR_PROMPT_COLOUR},
            error_y={"type": "data", "symmetric": False, "array": [exp["high"] - exp["accuracy"]],
                     "arrayminus": [exp["accuracy"] - exp["low"]], "color": YOUR_PROMPT_COLOUR},
            hovertemplate="your prompt<br>distance %{x:.4g}<br>expected accuracy %{y:.3f}<extra></extra>"))
        lo, hi = fig.layout.xaxis.range or (current["dist_to_train"], current["dist_to_train"])
        pad = (hi - lo) * 0.05
        fig.update_xaxes(range=[min(lo, current["dist_to_train"] - pad), max(hi, current["dist_to_train"] + pad)])
    fig.update_layout(height=260, margin={"l": 45, "r": 10, "t": 10, "b": 40}, showlegend=False, title=None,
                      meta={"pg_marker": current.get("id")})
    fig.update_xaxes(title_text="distance to train")
    fig.update_yaxes(title_text="accuracy")
    return fig


@callback(Output("pg-drill", "children"), Input({"type": "pg-nbr", "index": ALL}, "n_clicks"),
          State("pg-run", "data"), prevent_initial_call=True)
def drill(clicks, run_id):
    if not any(clicks or []) or not isinstance(ctx.triggered_id, dict):
        raise PreventUpdate
    data = C.loaded(run_id)
    return C.drilldown(data, C.row_of(data, ctx.triggered_id["index"]))


@callback(Output("pg-var-result", "children"), Output("pg-var-plot", "figure"), Output("pg-var-history", "children"),
          Input("pg-gens", "data"), Input("pg-example", "data"), State("pg-run", "data"), State("theme-dark", "value"))
def variation_panel(gens, example_id, run_id, dark):
    """Try a variation: the latest variation's badge and distances, and every variation tried."""
    data = C.loaded(run_id)
    if not example_id:
        raise PreventUpdate
    items = V.variations(gens, example_id)
    if not items:
        raise PreventUpdate
    return V.latest(items[-1]), V.history_figure(items, V.origin(data, example_id), bool(dark)), V.history_table(items)


@callback(Output("pg-example", "data"), Output("pg-origin", "children"), Output("pg-variation", "hidden"),
          Output("pg-detach-box", "hidden"), Input("pg-detach", "n_clicks"), prevent_initial_call=True)
def detach(n):
    """Back to a free prompt: nothing attached, nothing scored."""
    if not n:
        raise PreventUpdate
    return None, None, True, True


dash.clientside_callback(dash.ClientsideFunction("playground", "submit"), Output("pg-submitted", "children"),
                         Input("pg-submit", "n_clicks"),
                         State("pg-run", "data"), State("pg-instruction", "value"), State("pg-context", "value"),
                         State("pg-mode", "value"), State("pg-temperature", "value"), State("pg-seed", "value"),
                         State("pg-max", "value"), State("pg-cot", "value"), State("pg-example", "data"),
                         prevent_initial_call=True)
dash.clientside_callback(dash.ClientsideFunction("playground", "cancel"), Output("pg-cancelled", "children"),
                         Input("pg-cancel", "n_clicks"), prevent_initial_call=True)
# the compare table: one row per kept generation (mean log-likelihood, perplexity, tokens, path length
# in the full space, final distance to train; with a token atlas the mean and the largest distance of
# the steps to their nearest training steps), show/hide and remove. Drawn by the browser: as Dash
# components, a shared link's 100 rows (~1,500 components) took the renderer seconds to mount.
dash.clientside_callback(dash.ClientsideFunction("playground", "compare"), Output("pg-compared", "children"),
                         Input("pg-gens", "data"), State("pg-palette", "data"))
dash.clientside_callback(dash.ClientsideFunction("playground", "draw"), Output("pg-drawn", "children"),
                         Input("pg-gens", "data"), Input("pg-overlay", "data"), Input("pg-graph", "figure"),
                         State("pg-run", "data"), State("pg-palette", "data"), State("pg-shared", "data"))
dash.clientside_callback(dash.ClientsideFunction("playground", "syncUrl"), Output("pg-url-sync", "children"),
                         Input("pg-run", "data"), Input("pg-instruction", "value"), Input("pg-context", "value"),
                         Input("pg-mode", "value"), Input("pg-temperature", "value"), Input("pg-seed", "value"),
                         Input("pg-max", "value"), Input("pg-cot", "value"), Input("pg-colour", "value"),
                         Input("pg-gens", "data"), Input("pg-map", "value"), Input("pg-example", "data"),
                         State("pg-map", "options"))
C.register_export("pg-graph")
