"""Try a variation: the playground opened from an example's drill-down (``?example=<id>``).

The example's instruction and context fill the form, its reference (and choices) are shown as
attached, and every prompt submitted from there carries ``example_id``: the worker scores the
answer with that example's metric and the run's threshold and measures the edited prompt's
distance to the original (``RunSession.variation``). This module draws what the page shows of
it: the attached example, the latest variation's right/wrong badge with its score and distances,
and the history of the variations tried (distance to the original against the score), so a user
who walks a prompt away from the training data sees where the model breaks. Torch-free.
"""

from __future__ import annotations

import dash_bootstrap_components as dbc
import numpy as np
from dash import html

from dashboard import components as C
from dashboard import figures as F


def _value(frame, column: str, row: int):
    """A cell, or None when the column is absent or the cell is null."""
    import pandas as pd

    if column not in frame.columns:
        return None
    v = frame[column].iloc[row]
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    return None if pd.isna(v) else v


def origin(data, example_id) -> dict | None:
    """What the page needs of the example a variation starts from; None when not in the run."""
    if not example_id:
        return None
    row = data.row_of(example_id)
    if row is None:
        return None
    frame = data.frame
    instruction = _value(frame, "instruction", row)
    choices = _value(frame, "choices", row)
    if isinstance(choices, str):  # stored as JSON text by some sources
        import json

        try:
            choices = json.loads(choices)
        except ValueError:
            choices = None
    thresholds = (data.manifest.get("scoring") or {}).get("thresholds") or {}
    metric = _value(frame, "metric", row)
    return {"example_id": str(frame["example_id"].iloc[row]), "row": int(row),
            # a run without the instruction column (imported prompts): the prompt is the text to edit
            "instruction": str(instruction) if instruction is not None else str(frame["prompt"].iloc[row]),
            "context": str(_value(frame, "context", row) or ""), "reference": _value(frame, "reference", row),
            "choices": [str(c) for c in choices] if choices else None, "metric": metric,
            "threshold": thresholds.get(metric) if metric else None, "split": str(frame["split"].iloc[row]),
            "task": str(frame["task"].iloc[row]), "dist_to_train": _value(frame, "dist_to_train", row),
            "score": _value(frame, "score", row), "verdict": C.correctness(data, row)}


def origin_card(o: dict) -> dbc.Card:
    """The attached example: its id, reference (and choices), how it is scored, how it did."""
    metric = (f"scored with {o['metric']}" + (f" (right when score ≥ {o['threshold']:g})" if o["threshold"] is not None
                                               else "")
              if o["metric"] else "scored with the metric `llm-maps score` gives its task")
    original = [f"original: distance to train {C._fmt(o['dist_to_train'])}"]
    if o["verdict"]:
        original.append(f" · the model was {o['verdict']} (score {C._fmt(o['score'], 3)})")
    if o["split"] == "train":
        original.append(" · a train example: unedited, its distance to train is 0 (it is in train)")
    body = [
        html.Div([html.Strong("Variation of "), html.Code(o["example_id"], id="pg-origin-id"),
                  html.Span(f" · {o['task']} · {o['split']}", className="text-muted")], className="small mb-1"),
        html.Div("reference (attached)", className="small text-muted"),
        html.Pre("—" if o["reference"] is None else str(o["reference"]), className="drill-text small mb-1",
                 id="pg-origin-reference"),
    ]
    if o["choices"]:
        body.append(html.Div("choices: " + " · ".join(o["choices"]), className="small mb-1", id="pg-origin-choices"))
    body += [html.Div(metric, className="small text-muted", id="pg-origin-metric"),
             html.Div(original, className="small text-muted", id="pg-origin-original")]
    return dbc.Card(dbc.CardBody(body, className="p-2"), className="mb-1")


def variations(gens, example_id) -> list[dict]:
    """The kept generations that are finished variations of ``example_id``, in the order tried."""
    return [g for g in gens or [] if g.get("status") != "removed" and (g.get("variation") or {}).get("example_id")
            == example_id]


def badge(v: dict):
    if v.get("correct") is None:
        return dbc.Badge("not scored", color="secondary", className="pg-var-badge")
    return dbc.Badge("right" if v["correct"] else "wrong", color="success" if v["correct"] else "danger",
                     className="pg-var-badge")


def latest(g: dict) -> html.Div:
    """The latest variation: badge, score and metric, its distances to train and to the original."""
    v = g["variation"]
    if v.get("score") is None:
        scored = v.get("note") or "not scored"
    else:
        scored = (f"score {v['score']:.3g} · {v['metric']} (right when ≥ {v['threshold']:g})"
                  + (f" · answer: “{str(v['answer']).strip()[:80]}”" if v.get("answer") is not None else ""))
    return html.Div([
        html.Div([html.Span(badge(v), id="pg-var-badge"), html.Span(scored, className="small ms-2",
                                                                     id="pg-var-score")]),
        html.Div(f"distance to train {C._fmt(g.get('dist_to_train'))} · to the original "
                 f"{C._fmt(v.get('dist_to_original'))}", className="small", id="pg-var-dists"),
    ])


def history_table(items: list[dict]):
    """The variations tried, nearest the original first (where along the walk the model broke)."""
    order = sorted(range(len(items)), key=lambda i: (items[i]["variation"].get("dist_to_original") or 0.0, i))
    head = html.Thead(html.Tr([html.Th(h) for h in ("#", "to original", "to train", "score", "", "prompt")]))
    rows = []
    for i in order:
        g, v = items[i], items[i]["variation"]
        rows.append(html.Tr([html.Td(str(i + 1)), html.Td(C._fmt(v.get("dist_to_original")), className="pg-var-orig"),
                             html.Td(C._fmt(g.get("dist_to_train"))), html.Td(C._fmt(v.get("score"), 3)),
                             html.Td(badge(v)),
                             html.Td(html.Span(str(g.get("instruction") or "")[:60],
                                               title=str(g.get("instruction") or "")))],
                            className="pg-var-row"))
    return dbc.Table([head, html.Tbody(rows)], size="sm", className="small mb-0", id="pg-var-table")


def history_figure(items: list[dict], o: dict | None, dark: bool = False):
    """Score against the distance to the original, one marker per variation (green right, red
    wrong); the original example at distance 0 with its stored score."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if o is not None and o.get("score") is not None:
        fig.add_trace(go.Scatter(x=[0.0], y=[float(o["score"])], mode="markers", name="original",
                                 marker={"symbol": "diamond", "size": 11, "color": "#7f7f7f"},
                                 hovertemplate="the original example<br>score %{y:.3g}<extra></extra>"))
    scored = [g for g in items if g["variation"].get("score") is not None]
    if scored:
        colour = ["#2ca02c" if g["variation"]["correct"] else "#d62728" for g in scored]
        fig.add_trace(go.Scatter(
            x=[g["variation"]["dist_to_original"] for g in scored], y=[g["variation"]["score"] for g in scored],
            mode="markers", name="variations", marker={"size": 10, "color": colour, "line": {"width": 1}},
            text=[F.plot_text(str(g.get("instruction") or "")[:80]) for g in scored],
            hovertemplate="%{text}<br>distance to the original %{x:.4g}<br>score %{y:.3g}<extra></extra>",
            meta={"pg_var": len(scored)}))
    fig.update_layout(height=200, margin={"l": 45, "r": 10, "t": 10, "b": 40}, showlegend=False,
                      template=F.template_name(dark))
    fig.update_xaxes(title_text="distance to the original", rangemode="tozero")
    fig.update_yaxes(title_text="score", range=[-0.05, 1.05])
    return fig
