"""Conditions in the dashboard, what the pages draw (the data side is ``dashboard.conditions_data``).

* Falloff page: accuracy against the example's own distance to train, per condition and domain
  (``condition_falloff``, ``conditions_falloff_figure``);
* Map page: the colour "condition outcome" of two conditions A and B (``figures.outcome_spec``):
  helped (B right where A was wrong), hurt, both right, both wrong; grey: not scored under both;
  the controls that pick A and B (``map_controls``);
* Examples table: an answer and a correct column per condition (``table_columns``);
* drill-down: every condition side by side (``drill_section``), and a condition's path on the
  token map (``path_figure``) when the run has a token atlas.

Reading and pairing are ``llm_maps.conditions`` (the module `llm-maps conditions` uses), so the
pages and the command count the same examples. Torch-free.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard.conditions_data import (CELL_CHARS, CONDITION_PALETTE, DOMAIN_DASHES, DOMAIN_SYMBOLS, NOT_BOTH,
                                       OUTCOME_COLOURS, OUTCOME_NAMES, OUTCOME_NOTE, OUTCOME_TITLE, ConditionsData,
                                       _text, answer_column, client_arrays, client_header, client_option,
                                       condition_colours, condition_falloff, condition_groups, conditions_of,
                                       correct_column, flat_stats, has_path, load_conditions, outcome_codes,
                                       outcome_legend, outcome_title, scored_under_both, table_columns)
from dashboard.formatting import fmt as _fmt
from llm_maps.conditions import CONDITIONS_FILE, DIRECT, EXTRACTION_RULES, OUTCOMES, condition_names
from llm_maps.errors import LLMMapsError
from dashboard.figures import DIST_SCALE, REFERENCE_GREY, bin_interval, bins_error_y, falloff_layout, outcome_spec, plot_text, template_name, view_figure
from llm_maps.falloff import format_slope

__all__ = ["ConditionsData", "load_conditions", "conditions_of", "outcome_codes", "outcome_legend", "outcome_title",
           "outcome_spec", "client_arrays", "client_header", "client_option", "scored_under_both", "map_controls",
           "condition_falloff", "condition_groups", "conditions_falloff_figure", "condition_colours", "flat_stats",
           "answer_column", "correct_column", "table_columns", "has_path", "drill_section", "path_figure",
           "OUTCOME_NAMES", "OUTCOME_COLOURS", "OUTCOME_TITLE", "OUTCOME_NOTE", "NOT_BOTH", "DOMAIN_DASHES",
           "DOMAIN_SYMBOLS", "CONDITION_PALETTE", "CELL_CHARS", "CONDITIONS_FILE", "DIRECT", "EXTRACTION_RULES",
           "OUTCOMES", "condition_names", "LLMMapsError", "np", "pd", "_text"]

def map_controls(data, ca=None, cb=None) -> list:
    """The two condition dropdowns of the Map page (shown when the run has conditions)."""
    import dash_bootstrap_components as dbc
    from dash import dcc, html

    cd, error = data.conditions()
    names = cd.names if cd is not None else []
    a, b = cd.pair(ca, cb) if names else (None, None)
    box = [dbc.Label("Condition outcome: B against A (colour “condition outcome”)", className="mb-0 small"),
           dbc.Row([dbc.Col(dcc.Dropdown(id="map-cond-a", options=names, value=a, clearable=False), width=6),
                    dbc.Col(dcc.Dropdown(id="map-cond-b", options=names, value=b, clearable=False), width=6)],
                   className="g-1 mb-2")]
    out = [html.Div(box, id="map-cond-box", hidden=not names)]
    if error:
        out.append(html.Div(error, className="small text-danger mb-2", id="map-cond-error"))
    return out


def conditions_falloff_figure(per_cond: dict[str, dict], conditions: list[str], domains: list[str], *,
                              layout: str = "overlay", title: str = "", dark: bool = False,
                              metric: str = "cosine", colours: dict[str, str] | None = None):
    """Accuracy per distance bin with 95 % intervals (figures.bin_interval), one trace per condition and domain:
    overlaid (colour: condition, dash and marker: domain) or one panel per domain side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots


    side = layout == "side" and len(domains) > 1
    fig = make_subplots(rows=1, cols=len(domains), shared_yaxes=True,
                        subplot_titles=[plot_text(d) for d in domains]) if side else go.Figure()
    colours = colours or condition_colours(conditions)
    for j, dom in enumerate(domains):
        for name in conditions:
            entry = per_cond.get(name, {}).get("stats", {}).get(dom)
            if not entry or not entry["bins"]:
                continue
            n_tasks = per_cond[name]["tasks"].get(dom, 0)
            bin_tasks = per_cond[name]["bin_tasks"].get(dom, [])
            bins = [(b, t) for b, t in zip(entry["bins"], bin_tasks) if b["n"]]
            slope = format_slope(entry.get("trend"))
            glo, ghi, kind = bin_interval(entry)  # over tasks where the statistics have it, else Wilson's
            legend = (f"{plot_text(name)} · {plot_text(dom)} · acc {entry['accuracy']:.2f} "
                      f"[{glo:.2f}, {ghi:.2f}] ({kind}), n={entry['n']} examples in {n_tasks} tasks"
                      + (f" · slope {slope} log-odds per unit distance" if slope else ""))
            trace = go.Scatter(
                x=[b["median"] for b, _ in bins], y=[b["accuracy"] for b, _ in bins], mode="lines+markers",
                name=legend, meta={"condition": name, "domain": dom},
                line={"color": colours[name], "width": 2, "dash": "solid" if side else DOMAIN_DASHES[j % 6]},
                marker={"size": 8, "color": colours[name], "symbol": "circle" if side else DOMAIN_SYMBOLS[j % 6]},
                error_y=bins_error_y([b for b, _ in bins], colours[name]),
                customdata=[[b["lo"], b["hi"], b["n"], b["correct"], lo, hi, t, kind]
                            for (b, t), (lo, hi, kind) in zip(bins, (bin_interval(b) for b, _ in bins))],
                hovertemplate=(f"{plot_text(name)} · {plot_text(dom)}<br>distance %{{customdata[0]:.4g}}–"
                               f"%{{customdata[1]:.4g}} ({metric}, the example's own prompt)<br>accuracy %{{y:.3f}} "
                               "[%{customdata[4]:.3f}, %{customdata[5]:.3f}] (95 %, %{customdata[7]})<br>%{customdata[3]} / "
                               "%{customdata[2]} examples correct, in %{customdata[6]} tasks<extra></extra>"))
            if side:
                fig.add_trace(trace, row=1, col=j + 1)
            else:
                fig.add_trace(trace)
    return falloff_layout(fig, side=side, dark=dark, title=title, height=520, legend_y=-0.2,
                          x_title=f"the example's distance to the nearest train prompt ({metric}, bin median)")


# --- the drill-down ------------------------------------------------------------------------------------


def drill_section(data, row: int):
    """Every condition of the example side by side: prompt (collapsed), output, answer and the rule
    that took it, score and verdict, the conditioned prompt's distance to train, the path's mean
    and largest distance, and a button drawing the path on the token map (with a token atlas)."""
    import dash_bootstrap_components as dbc
    from dash import html

    cd, error = data.conditions()
    if error:
        return [html.Div(f"Conditions: {error}", className="small text-danger mb-2", id="drill-conditions-error")]
    if cd is None:
        return []
    rows = cd.rows_of(row)
    if not len(rows):
        return []
    ex_id = str(data.frame["example_id"].iloc[row])
    cols, paths = [], []
    for _, r in rows.iterrows():
        name = str(r["condition"])
        ok = r["correct"]
        verdict = "not scored" if pd.isna(ok) else ("correct" if bool(ok) else "wrong")
        rule = _text(r.get("extraction"))
        facts = [("score", _fmt(r["score"], 3)), ("correctness", verdict),
                 ("distance to train (this prompt)", _fmt(r["dist_to_train"])),
                 ("path mean / max distance", f"{_fmt(r.get('path_mean_dist'))} / {_fmt(r.get('path_max_dist'))}"),
                 ("tokens", _fmt(r.get("n_tokens"))), ("mean log-prob", _fmt(r.get("mean_logprob"), 3))]
        body = [
            html.Div([html.Code(name, className="drill-cond-name"), " ",
                      dbc.Badge(verdict, color={"correct": "success", "wrong": "danger"}.get(verdict, "secondary"),
                                className="ms-1 drill-cond-verdict")], className="fw-semibold mb-1"),
            html.Details([html.Summary("prompt", className="small text-muted"),
                          html.Pre(_text(r["prompt"]), className="drill-text drill-cond-prompt small")],
                         className="mb-1"),
            html.Div("output", className="small text-muted"),
            html.Pre(_text(r["output"]) or "—", className="drill-text drill-cond-output small"),
            html.Div([html.Span("answer ", className="small text-muted"),
                      html.Code(_text(r["answer"]) or "—", className="drill-cond-answer"),
                      html.Span(f" (rule: {rule})", title=EXTRACTION_RULES.get(rule, ""),
                                className="small text-muted drill-cond-rule")], className="mb-1"),
            html.Table([html.Tr([html.Th(k, className="pe-2 small fw-normal text-muted"),
                                 html.Td(v, className="small")]) for k, v in facts], className="mb-1 drill-cond-facts"),
        ]
        if has_path(r):  # the button in the card, its figure below the cards (full width)
            key = {"run": data.base_id, "ex": ex_id, "cond": name}
            body.append(dbc.Button("path on the token map", id={"type": "cond-path", **key}, size="sm",
                                   color="secondary", outline=True, className="py-0"))
            paths.append(html.Div(id={"type": "cond-path-out", **key}))
        cols.append(dbc.Col(dbc.Card(dbc.CardBody(body, className="p-2"), className="h-100"),
                            className="drill-condition mb-2", md=max(3, 12 // max(len(rows), 1)),
                            id=f"drill-condition-{name}"))
    return [html.Div(f"{len(rows)} conditions (conditions.parquet)", className="small text-muted"),
            dbc.Row(cols, className="g-2 mb-2 drill-conditions"), *paths]


def path_figure(data, row: int, name: str, *, dark: bool = False):
    """One condition's generated tokens as a path on the token map (the run's map fitted with the
    token atlas, prompts placed on it): the example's prompt as a star, then one arrow per token,
    coloured by its distance to the nearest atlas state."""
    import plotly.graph_objects as go


    cd = conditions_of(data)
    sub = cd.rows_of(row) if cd is not None else None
    if sub is None or name not in set(sub["condition"]):
        raise LLMMapsError(f"example row {row} has no condition '{name}'")
    r = sub[sub["condition"] == name].iloc[0]
    if not has_path(r):
        raise LLMMapsError(f"condition '{name}' of this example has no path (the run has no token atlas)")
    px = np.asarray(r["path_x"], dtype=float)
    py = np.asarray(r["path_y"], dtype=float)
    pd_ = r.get("path_dists")
    dists = np.asarray(pd_, dtype=float) if pd_ is not None and np.ndim(pd_) == 1 and len(pd_) == len(px) \
        else np.full(len(px), np.nan)
    if "tokens" in data.views:
        tokens = data.for_view("tokens")
        fig = view_figure(tokens, colour="split", dark=dark, uirevision=f"cond-path-{data.id}-{row}-{name}")
        start = (float(tokens.x[row]), float(tokens.y[row]))
    else:  # path coordinates without a token map to draw them on
        fig, start = go.Figure(), None
    text = [f"step {k + 1}" + ("" if not np.isfinite(d) else f": distance {d:.4g} to the nearest atlas state")
            for k, d in enumerate(dists)]
    finite = np.isfinite(dists)
    marker = {"symbol": ["circle"] + ["arrow"] * (len(px) - 1), "angleref": "previous", "size": 11,
              "line": {"color": REFERENCE_GREY, "width": 1}}
    if finite.any():
        marker.update(color=np.where(finite, dists, np.nanmin(dists)), colorscale=DIST_SCALE, showscale=True,
                      colorbar={"title": {"text": "distance to atlas"}, "thickness": 12, "x": 1.02})
    else:
        marker["color"] = "#d62728"
    fig.add_trace(go.Scatter(x=px, y=py, mode="lines+markers", name=f"{plot_text(name)}: path",
                             line={"color": "#d62728", "width": 1.5}, marker=marker, text=text, hoverinfo="text",
                             meta={"cond_path": name}, showlegend=False))
    if start is not None:
        fig.add_trace(go.Scatter(x=[start[0]], y=[start[1]], mode="markers", name="the example's prompt",
                                 marker={"symbol": "star", "size": 18, "color": "#ffd92f",
                                         "line": {"color": "#000000", "width": 1.5}},
                                 text=["the example's prompt (direct) on the token map"], hoverinfo="text",
                                 meta={"cond_path_start": True}, showlegend=False))
    mean = np.nanmean(dists) if finite.any() else np.nan
    fig.update_layout(template=template_name(dark), height=420, showlegend=False, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title={"text": plot_text(f"{name}: {len(px)} generated tokens on the token map · mean distance "
                                               f"{_fmt(mean)}, max {_fmt(np.nanmax(dists) if finite.any() else None)}"),
                             "font": {"size": 13}, "x": 0.01})
    return fig
