"""Runs page: every run the app knows about, with its manifest; unreadable ones say why."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import dcc, html

from dashboard import components as C

dash.register_page(__name__, path="/runs", name="Runs", title="LLM Maps · runs", order=3)


def _card(entry) -> dbc.Card:
    if not entry.ok:
        return dbc.Card(dbc.CardBody([html.H5(entry.id), html.Div(str(entry.path), className="small text-muted"),
                                      C.banner(entry.error, className="mt-2 mb-0")]), className="mb-3 run-card")
    m = entry.manifest
    counts = m.get("counts", {})
    data, error = C.load(entry.id)
    accuracy = "not scored yet"
    if data is not None and data.has_scores:
        s = data.cats["correct"].codes
        k, n = int((s == 1).sum()), int(((s == 1) | (s == 2)).sum())
        accuracy = f"{k / n:.3f} ({k} / {n} scored test examples)"
    sources = ", ".join(str(s.get("path") or s.get("id") or s.get("kind")) for s in m.get("sources", []))
    proj = m.get("projection") or {}
    rows = [("model", m.get("model")), ("data", sources),
            ("examples", f"{counts.get('examples', '?')} ({counts.get('train', '?')} train, {counts.get('test', '?')} test)"),
            ("domains", ", ".join(f"{k}: {v}" for k, v in (counts.get("by_domain") or {}).items())),
            ("layers", f"{m.get('layers')} (default {m.get('default_layer')})"),
            ("map", f"{proj.get('method', '?')} fit on {proj.get('fit_on', '?')}"),
            ("distance", m.get("distance_metric")), ("accuracy", accuracy), ("created", m.get("created"))]
    links = [dcc.Link(p, href=C.url(f"/{p.lower()}?run={entry.id}"), className="me-3") for p in ("Map", "Falloff", "Examples")]
    body = [html.H5(entry.id), html.Div(str(entry.path), className="small text-muted mb-2"),
            html.Table([html.Tr([html.Th(k, className="pe-3 small"), html.Td(str(v), className="small")])
                        for k, v in rows])]
    if error:
        body.append(C.banner(error, className="mt-2"))
    return dbc.Card(dbc.CardBody(body + [html.Div(links, className="mt-2")]), className="mb-3 run-card")


def layout(**_):
    entries = C.registry().entries()
    if not entries:
        return dbc.Container(dbc.Alert("No runs found: build one with `llm-maps build` or `llm-maps demo`, or "
                                       "start `llm-maps serve RUN_DIR`.", color="info"), className="pt-3")
    return dbc.Container([html.H4("Runs", className="mt-3")] + [_card(e) for e in entries], className="pt-2")
