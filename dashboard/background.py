"""The banner that says what is being built beside the server (the demo's full run while its first
slice is served): its stage and time, then that the full run is ready and a refresh shows it.
Reads STATE/background.json (``llm_maps.jobs.read_background``) every few seconds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dash
import flask
from dash import Input, Output, State, dcc, html

from llm_maps.jobs import read_background

POLL_MS = 3000


def banner() -> html.Div:
    """The banner's place in the app layout (empty while nothing is built beside the server)."""
    return html.Div([dcc.Interval(id="background-poll", interval=POLL_MS),
                     dcc.Store(id="background-seen"),
                     html.Div(id="background-status", role="status", className="background-status")])


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def status_text(status: dict[str, Any] | None, seen: str | None, now: float | None = None) -> tuple[Any, str | None]:
    """(banner content, the state to remember): a running build with its stage and time; once it is
    done, a notice only on pages opened before it was (they still show the first slice)."""
    if not status:
        return None, seen
    state = status.get("state")
    now = time.time() if now is None else now
    if state == "running":
        stage = f"stage {status.get('stage_index')} of {status.get('stages')} ({status.get('stage')})" \
            if status.get("stage_index") else str(status.get("stage") or "")
        text = (f"Building the full {status.get('task', '')} run in the background: {stage}, "
                f"{_minutes(now - float(status.get('started') or now))} so far. This map is a first slice; "
                "the full run replaces it when it is ready.")
        return html.Span(text), seen or "running"
    if state == "done":
        if seen == "running":  # this page shows the slice: say so, once
            return [html.Span("The full run is ready. "), html.A("Refresh to see it", href="", id="background-refresh")], \
                "done"
        return None, "done"
    if state in ("failed", "stopped"):
        return html.Span(f"The background build {state}: {status.get('error') or 'no reason given'}. Re-run "
                         "`llm-maps demo` to resume it."), state
    return None, seen


@dash.callback(Output("background-status", "children"), Output("background-seen", "data"),
               Input("background-poll", "n_intervals"), State("background-seen", "data"))
def _poll(_n: int | None, seen: str | None):
    state_dir = flask.current_app.config.get("LLM_MAPS_STATE")
    status = read_background(Path(state_dir)) if state_dir else None
    return status_text(status, seen)
