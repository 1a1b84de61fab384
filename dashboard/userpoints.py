"""Users' points (the worker API's store) as map traces: the Map page's "your points" layer and the
standalone HTML export. Each point is a star; a generation adds its path — the prompt's point, then
one arrow per generated token, coloured and sized by the token's probability (as the playground
draws it live in assets/playground.js).

The stars are WebGL traces (Scattergl), like the map's points: plotly.js draws every WebGL trace on
one canvas above the SVG traces, so an SVG star would sit under the points; as a later WebGL trace
it is drawn above them. Paths stay SVG (their arrows point along the path on screen, which only SVG
markers can: ``angleref``), so dense points can cover them ("dim train points" on the Map page)."""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go

from dashboard import components as C
from dashboard import figures as F
from dashboard.data import split_key
from llm_maps.errors import LLMMapsError
from llm_maps.falloff import expected_words
from llm_maps.jobs import default_state_dir, make_points


def load_points(run: str, state_dir: str | Path | None = None, ids: list[str] | None = None,
                run_dirs=()) -> list[dict]:
    """The run's saved points (all, or ``ids`` in that order; unknown ids are an error)."""
    store = make_points(Path(state_dir) if state_dir else default_state_dir(run_dirs))
    points = store.list(run)
    if not ids:
        return points
    by_id = {p["id"]: p for p in points}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise LLMMapsError(f"--points: no saved point '{missing[0]}' for run '{run}'")
    return [by_id[i] for i in ids]


def _label(point: dict, chars: int = 100) -> str:
    """The point's first line, shortened, escaped for plotly (F.plot_text: drawn as text, never HTML)."""
    text = str(point.get("instruction") or "").strip().splitlines()
    return F.plot_text((text[0][:chars] if text else point.get("id", "")) or point.get("id", ""))


def nearest_text(t: dict) -> str:
    """A token's nearest training step, for hover text: distance, example, position, context."""
    n = t.get("nearest")
    if not n:
        return f" · dist {t['dist']:.4g}" if t.get("dist") is not None else ""
    esc = F.plot_text
    return (f" · dist {t['dist']:.4g}<br>nearest training step: {esc(n['example_id'])} #{n['position']}: "
            f"…{esc(n.get('before', ''))}[{esc(n['token_text'])}]{esc(n.get('after', ''))}…")


def point_xy(point: dict, kind: str) -> tuple[float | None, float | None]:
    """Where a saved point sits on a map: ``prompt`` (x, y) or ``tokens`` (x_tokens, y_tokens)."""
    if kind == "tokens":
        return point.get("x_tokens"), point.get("y_tokens")
    if kind == "prompt":
        return point.get("x"), point.get("y")
    return None, None  # the completion map has no place for a prompt alone


def path_map(point: dict) -> str:
    """The map a generation's token coordinates belong to: the token map when measured against
    the atlas, else the prompt map."""
    return "tokens" if point.get("reference") == "atlas" else "prompt"


def user_points_traces(points: list[dict], *, paths: bool = True, kind: str = "prompt") -> list:
    """Stars for the points and, for generations, their paths (SVG scatter: arrows need angleref) on
    the map ``kind`` (prompt | tokens | completion): a path is drawn on the map its tokens were
    placed on (the token map for runs with an atlas)."""
    traces = []
    for i, p in enumerate(points):
        px, py = point_xy(p, kind)
        if px is None or py is None:
            continue
        colour = F.PALETTE[i % len(F.PALETTE)]
        toks = [t for t in (p.get("tokens") or []) if t.get("x") is not None] if path_map(p) == kind else []
        if paths and toks:
            probs = [math.exp(t["logprob"]) for t in toks]
            traces.append(go.Scatter(
                x=[px] + [t["x"] for t in toks], y=[py] + [t["y"] for t in toks], mode="lines+markers",
                name=f"path: {_label(p, 40)}", showlegend=False, line={"color": colour, "width": 1.5},
                marker={"symbol": ["circle"] + ["arrow"] * len(toks), "angleref": "previous",
                        "size": [0] + [7 + 9 * q for q in probs], "color": [1.0] + probs, "cmin": 0, "cmax": 1,
                        "colorscale": F.SCORE_SCALE, "line": {"color": colour, "width": 1}, "opacity": 1},
                text=["prompt"] + [f"token {k + 1}: {F.plot_text(repr(t['text']))} · p={q:.1%}{nearest_text(t)}"
                                   for k, (t, q) in enumerate(zip(toks, probs))],
                hoverinfo="text", meta={"user": "path", "id": p["id"]}))
        exp = p.get("expected_accuracy") or {}
        hover = (f"your point: {_label(p)}<br>distance to train {p.get('dist_to_train', float('nan')):.4g}"
                 + (f"<br>expected accuracy {expected_words(exp)}" if exp else "")
                 + (f"<br>output: {F.plot_text(str(p.get('output'))[:100])}" if p.get("output") else ""))
        traces.append(go.Scattergl(x=[px], y=[py], mode="markers", name=_label(p, 40),
                                 legendgroup="user", legendgrouptitle={"text": "your points"},
                                 marker={"symbol": "star", "size": 18, "color": colour,
                                         "line": {"color": "#000000", "width": 1.5}},
                                 hovertext=[hover], hoverinfo="text", meta={"user": "point", "id": p["id"]}))
    return traces


# --- the Map page's "your points" layer ------------------------------------------------------

def map_layer_controls(run_id: str, show: bool = False) -> list:
    """A switch for the layer and the CSV/JSONL downloads of the run's saved points."""
    import dash_bootstrap_components as dbc
    from dash import dcc, html

    return [
        dcc.Store(id="map-user-layer"), html.Div(id="map-user-applied", hidden=True),
        dbc.Switch(id="map-user", label="show your points (playground)", value=show, className="mb-0 small"),
        html.Div([html.Span(id="map-user-count", className="text-muted me-2"),
                  html.A("CSV", href=C.url(f"/api/runs/{run_id}/points?format=csv"), className="me-2", id="map-user-csv"),
                  html.A("JSONL", href=C.url(f"/api/runs/{run_id}/points?format=jsonl"), id="map-user-jsonl")],
                 className="small mb-2"),
    ]


def register_map_layer() -> None:
    """Callbacks behind ``map_layer_controls``: the server draws the traces, the browser keeps them
    on the map (assets/playground.js, ``userLayer``)."""
    import dash
    import flask
    from dash import Input, Output, State

    @dash.callback(Output("map-user-layer", "data"), Output("map-user-count", "children"),
                   Input("map-user", "value"), State("map-run", "data"))
    def _user_layer(show, key):
        run_id, view = split_key(key)
        store = flask.current_app.config.get("LLM_MAPS_POINTS")
        points = store.list(run_id) if (store is not None and run_id) else []
        count = f"{len(points)} saved point{'s' if len(points) != 1 else ''}"
        traces = user_points_traces(points, kind=view or "prompt")
        return ([t.to_plotly_json() for t in traces] if show else []), count

    dash.clientside_callback(dash.ClientsideFunction("playground", "userLayer"),
                             Output("map-user-applied", "children"), Input("map-user-layer", "data"))
