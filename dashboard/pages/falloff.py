"""Falloff page: accuracy against distance to the nearest training prompt, per domain."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html

from dashboard import components as C
from dashboard import conditions_view as CV
from dashboard import figures as F
from dashboard.falloff_view import falloff_view
from llm_maps.errors import LLMMapsError
from llm_maps.falloff import SLOPE_UNIT, format_slope, slope_verdict

dash.register_page(__name__, path="/falloff", name="Falloff", title="LLM Maps · falloff", order=1)

NO_SCORES = ("No scores yet: this run has no scored test examples, so there is no accuracy to plot. "
             "Score it with `llm-maps score RUN`, then `llm-maps falloff RUN`.")


def condition_controls(data, cond) -> list:
    """The conditions to overlay: none unless the URL picks some (the run's own scores, every scored
    test example, are what the page opens on; a condition covers a subset), hidden on a run without
    conditions; a conditions.parquet that cannot be read is said in one line."""
    cd, error = data.conditions()
    names = cd.names if cd is not None and data.view == "prompt" else []
    picked = C.query_list(cond)
    value = [c for c in picked if c in names]
    out = [html.Div([dbc.Label("Conditions (conditions.parquet)", className="mb-0 small"),
                     dcc.Dropdown(id="falloff-conditions", options=names, value=value, multi=True,
                                  placeholder="none: the run's own scores", className="mb-2")],
                    id="falloff-conditions-box", hidden=not names)]
    if error:
        out.append(dbc.Alert(f"Conditions cannot be shown: {error}", color="warning", className="small py-1",
                             id="falloff-conditions-error"))
    elif cd is not None and data.view != "prompt":
        out.append(html.Div("conditions: shown in the prompt view", className="small text-muted mb-2"))
    return out


def layout(run=None, layer=None, metric=None, bins="5", domain=None, task=None, mode="overlay", view=None, cond=None,
           **_):
    data, error = C.load(run, None if view == "tokens" else view)
    if data is None:
        return C.no_run_page(run, error)
    layer = C.query_int(layer, data.default_layer)
    metric = metric if metric in ("cosine", "euclidean") else data.metric
    stored = {(int(v["layer"]), v["metric"]) for v in (data.falloff_file or {}).get("variants", [])}
    controls = [
        C.run_picker(data.base_id),
        C.view_picker(data, ("prompt", "completion")),
        *C.layer_and_metric("falloff", data, layer, metric),
        dbc.Label("Bins (equal count)", className="mb-0 small"),
        dcc.Dropdown(id="falloff-bins", options=[{"label": str(b), "value": b} for b in (3, 4, 5, 6, 8, 10, 15, 20)],
                     value=C.query_int(bins, 5), clearable=False, className="mb-2"),
        dbc.Label("Domains", className="mb-0 small"),
        dcc.Dropdown(id="falloff-domain", options=data.option_names("domain"), value=C.query_list(domain),
                     multi=True, placeholder="all domains", className="mb-2"),
        dbc.Label("Tasks", className="mb-0 small"),
        dcc.Dropdown(id="falloff-task", options=data.option_names("task"), value=C.query_list(task), multi=True,
                     placeholder="all tasks", className="mb-2"),
        dbc.RadioItems(id="falloff-mode", options=[{"label": "overlaid", "value": "overlay"},
                                                   {"label": "side by side", "value": "side"}],
                       value=mode if mode in ("overlay", "side") else "overlay", inline=True, className="mb-2"),
        *condition_controls(data, cond),
        html.Div(f"falloff.json: {len(stored)} stored variant(s)" if stored else
                 "no falloff.json: statistics are computed on the fly", className="small text-muted"),
    ]
    body = [dcc.Graph(id="falloff-graph", config=F.EXPORT_CONFIG),
            html.Div([html.Div(id="falloff-source", className="small flex-grow-1"), C.export_buttons("falloff-graph")],
                     className="d-flex align-items-start"),
            html.Div(id="falloff-table", className="mt-3")]
    return dbc.Container([
        dcc.Store(id="falloff-run", data=data.id), html.Div(id="falloff-url-sync", hidden=True),
        dbc.Row([dbc.Col(controls, md=3, className="pt-2"),
                 dbc.Col(([dbc.Alert(NO_SCORES, color="warning", id="no-scores")] if not data.has_scores else [])
                         + ([dbc.Alert(data.falloff_error, color="warning")] if data.falloff_error else [])
                         + body, md=9)]),
    ], fluid=True)


def bins_table(stats: dict, groups: list[str], metric: str) -> html.Div:
    """The plotted numbers as a table: per group its trend (slope, interval, verdict) and per bin
    the distance range, examples, correct, accuracy and its 95 % interval (over tasks where the
    statistics have it: F.bin_interval)."""
    head = html.Thead(html.Tr([html.Th(h) for h in ("group", "bin", f"{metric} distance", "examples", "correct",
                                                    "accuracy", "95 % interval")]))
    rows = []
    for g in groups:
        entry = stats[g]
        slope = format_slope(entry.get("trend"))
        glo, ghi, kind = F.bin_interval(entry)
        rows.append(html.Tr(html.Td([html.Strong(g), f" · accuracy {entry['accuracy']:.3f} "
                                     f"[{glo:.3f}, {ghi:.3f}] ({kind}), n={entry['n']} · "
                                     + (f"logistic slope {slope} {SLOPE_UNIT} (95 % interval): "
                                        f"{slope_verdict(entry.get('trend'))}" if slope else
                                        "logistic slope: not enough variation to fit")],
                                    colSpan=7, className="falloff-group-row"), className="table-light"))
        for b in entry["bins"]:
            rows.append(html.Tr([html.Td(g), html.Td(b["bin"] + 1), html.Td(f"{b['lo']:.4g} – {b['hi']:.4g}"),
                                 html.Td(b["n"]), html.Td(b["correct"]),
                                 html.Td("—" if b["accuracy"] is None else f"{b['accuracy']:.3f}"),
                                 html.Td("—" if b["low"] is None else "[{:.3f}, {:.3f}] ({})".format(*F.bin_interval(b)))],
                                className="falloff-bin-row"))
    return html.Div([html.H6("Bins", className="mb-1"),
                     dbc.Table([head, html.Tbody(rows)], size="sm", bordered=False, hover=True,
                               className="small falloff-bins mb-0", id="falloff-bins-table")])


@callback(Output("falloff-graph", "figure"), Output("falloff-source", "children"), Output("falloff-table", "children"),
          Input("falloff-layer", "value"), Input("falloff-metric", "value"), Input("falloff-bins", "value"),
          Input("falloff-domain", "value"), Input("falloff-task", "value"), Input("falloff-mode", "value"),
          Input("falloff-conditions", "value"), State("falloff-run", "data"), State("theme-dark", "value"))
def update_falloff(layer, metric, bins, domains, tasks, mode, conditions=None, run_id=None, dark=False):
    data = C.loaded(run_id)
    cd = CV.conditions_of(data) if data.view == "prompt" else None
    if cd is not None and conditions:
        return condition_overlay(data, cd, [c for c in cd.names if c in conditions], layer=layer, metric=metric,
                                 bins=int(bins or 5), domains=domains, tasks=tasks, mode=mode, dark=bool(dark))
    fig, stats, groups, source = falloff_view(data, layer=layer, metric=metric, n_bins=int(bins or 5),
                                                domains=domains, tasks=tasks, mode=mode, dark=bool(dark))
    if stats is None:
        return fig, dbc.Alert(NO_SCORES if source == "no scores yet" else source, color="warning", className="mt-2"), None
    return (fig, html.Span(f"Statistics {source}; bins of equal count per group; error bars: "
                           f"{F.interval_words(stats)}; n = test examples per bin; slope: logistic regression of correct on "
                           f"distance, in {SLOPE_UNIT}, with its 95 % interval.", id="falloff-source-text"),
            bins_table(stats, [g for g in groups if g in stats], metric))


def condition_overlay(data, cd, conditions: list[str], *, layer, metric, bins: int, domains, tasks, mode, dark: bool):
    """The figure, source line and bins table of the conditions overlay: per condition and domain,
    accuracy against the example's own distance to train in the chosen layer and metric."""
    try:
        dist = data.distances(layer, metric)
    except LLMMapsError as exc:
        fig = F.falloff_figure({}, [], title="no falloff to show", dark=dark)
        return fig, dbc.Alert(str(exc), color="warning", className="mt-2"), None
    key = ("cond_falloff", int(layer), metric, bins, tuple(sorted(tasks or ())), tuple(conditions))
    per_cond = data._cached(key, lambda: CV.condition_falloff(data, cd, conditions, dist=dist, n_bins=bins,
                                                              tasks=tasks or None))
    groups = CV.condition_groups(per_cond, domains or None)
    title = f"{data.base_id}: accuracy vs the example's distance to train, per condition (layer {layer}, {metric})"
    fig = CV.conditions_falloff_figure(per_cond, conditions, groups, layout=mode, title=title, dark=dark,
                                       metric=metric)
    n_ex = {c: per_cond[c]["stats"]["all"]["n"] for c in conditions}
    n_tasks = {c: per_cond[c]["tasks"].get("all", 0) for c in conditions}
    counts = "; ".join(f"{c}: {n_ex[c]} examples in {n_tasks[c]} tasks" for c in conditions)
    flat, keys = CV.flat_stats(per_cond, conditions, groups)
    return (fig, html.Span(f"Conditions from conditions.parquet ({counts}). x: each example's own distance to "
                           f"the nearest train prompt ({metric}, layer {layer}), the same for every condition; bins "
                           f"of equal count per condition and domain; error bars: {F.interval_words(flat)}; "
                           f"slope: logistic regression of correct on distance, in {SLOPE_UNIT}.",
                           id="falloff-source-text"),
            bins_table(flat, keys, metric))


dash.clientside_callback(
    dash.ClientsideFunction("llm_maps", "syncFalloffUrl"), Output("falloff-url-sync", "children"),
    Input("falloff-run", "data"), Input("falloff-layer", "value"), Input("falloff-metric", "value"),
    Input("falloff-bins", "value"), Input("falloff-domain", "value"), Input("falloff-task", "value"),
    Input("falloff-mode", "value"), Input("falloff-conditions", "value"), State("falloff-conditions", "options"))
C.register_export("falloff-graph")
