"""Runs page: every run the app knows about, with its manifest; unreadable ones say why. The runs of
a fine-tuning group are shown together, under the group's name, with a link comparing them. Local
paths (folders, model and data files) only for the owner (``C.is_owner``), as tooltips and lines."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import dcc, html

from dashboard import components as C
from dashboard.filters import accuracy_words, selection_summary
from llm_maps.runfolder import model_label

dash.register_page(__name__, path="/runs", name="Runs", title="LLM Maps · runs", order=3)


def _source(s: dict, owner: bool) -> str:
    """A data source by its name: a file or local folder by its name only, unless for the owner."""
    text = str(s.get("path") or s.get("id") or s.get("kind"))
    return text if owner or not Path(text).is_absolute() else Path(text).name


def _where(entry, owner: bool) -> list:
    """The run's folder (owner only) and its group."""
    out = [html.Div(str(entry.path), className="small text-muted")] if owner else []
    if entry.group:
        out.append(html.Div(f"in group {entry.group}", className="small text-muted run-card-group"))
    return out


def _card(entry, owner: bool) -> dbc.Card:
    if not entry.ok:
        return dbc.Card(dbc.CardBody([html.H5(entry.id), *_where(entry, owner),
                                      C.banner(entry.error, className="mt-2 mb-0")]), className="mb-3 run-card")
    m = entry.manifest
    counts = m.get("counts", {})
    data, error = C.load(entry.id)
    accuracy = "not scored yet"
    if data is not None and data.has_scores:
        s = selection_summary(data, np.arange(data.n))
        accuracy = ("no scored test examples (only train rows are scored)" if s["accuracy"] is None else
                    accuracy_words(s).removeprefix("accuracy ").replace("points", "examples")
                    + f" ({s['correct']} right)")
    sources = ", ".join(_source(s, owner) for s in m.get("sources", []))
    proj = m.get("projection") or {}
    rows = [("model", model_label(m)), ("data", sources),
            ("examples", f"{counts.get('examples', '?')} ({counts.get('train', '?')} train, {counts.get('test', '?')} test)"),
            ("domains", ", ".join(f"{k}: {v}" for k, v in (counts.get("by_domain") or {}).items())),
            ("layers", f"{m.get('layers')} (default {m.get('default_layer')})"),
            ("map", f"{proj.get('method', '?')} fit on {proj.get('fit_on', '?')}"),
            ("distance", m.get("distance_metric")), ("accuracy", accuracy), ("created", m.get("created"))]
    tips = {"model": str(m.get("model"))} if owner else {}
    links = [dcc.Link(p, href=C.url(f"/{p.lower()}?run={entry.id}"), className="me-3") for p in ("Map", "Falloff", "Examples")]
    body = [html.H5(entry.id), *_where(entry, owner),
            html.Table([html.Tr([html.Th(k, className="pe-3 small"),
                                 html.Td(str(v), className=f"small run-{k}", title=tips.get(k))])
                        for k, v in rows], className="mt-2")]
    if error:
        body.append(C.banner(error, className="mt-2"))
    return dbc.Card(dbc.CardBody(body + [html.Div(links, className="mt-2")]), className="mb-3 run-card")


def _group(name: str, runs: list, owner: bool) -> html.Div:
    """A fine-tuning group: its name, its runs by step, one link comparing them."""
    ids = [e.id for e in runs if e.ok]
    steps = [(e.manifest or {}).get("step") for e in runs if e.ok]
    head = [html.H5(f"Group {name}", className="mb-1 run-group-title"),
            html.Div(f"fine-tuning group: {len(runs)} runs" + (
                ", steps " + ", ".join(str(s) for s in steps if s is not None) if any(s is not None for s in steps)
                else ""), className="small text-muted run-group-note")]
    if len(ids) >= 2:
        head.append(dcc.Link("compare this group", href=C.url("/compare?" + urlencode([("runs", i) for i in ids])),
                             className="small run-group-compare"))
    return html.Div([html.Div(head, className="mb-2"), *[_card(e, owner) for e in runs]],
                    className="run-group border-start border-3 ps-3 mb-4")


def layout(**_):
    registry = C.registry()
    entries = registry.entries()
    if not entries:
        return dbc.Container(dbc.Alert("No runs found: build one with `llm-maps build` or `llm-maps demo`, or "
                                       "start `llm-maps serve RUN_DIR`.", color="info"), className="pt-3")
    owner = C.is_owner()
    groups = registry.groups(entries)
    of = {id(e): name for name, runs in groups.items() for e in runs}
    body, shown = [], set()
    for e in entries:  # each group at the place of its first run, its runs together
        name = of.get(id(e))
        if name is None:
            body.append(_card(e, owner))
        elif name not in shown:
            shown.add(name)
            body.append(_group(name, groups[name], owner))
    return dbc.Container([html.H4("Runs", className="mt-3")] + body, className="pt-2")
