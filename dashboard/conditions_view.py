"""Conditions in the dashboard: conditions.parquet (``llm-maps score RUN --conditions ...``) read once
per run, and what the pages draw from it.

* Falloff page: accuracy against the example's own distance to train, per condition and domain
  (``condition_falloff``, ``conditions_falloff_figure``);
* Map page: the colour "condition outcome" of two conditions A and B (``outcome_spec``): helped (B
  right where A was wrong), hurt, both right, both wrong; grey: not scored under both;
* Examples table: an answer and a correct column per condition (``table_columns``);
* drill-down: every condition side by side (``drill_section``), and a condition's path on the
  token map (``path_figure``) when the run has a token atlas.

Reading and pairing are ``llm_maps.conditions`` (the module `llm-maps conditions` uses), so the
pages and the command count the same examples. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llm_maps.conditions import (CONDITIONS_FILE, DIRECT, EXTRACTION_RULES, OUTCOMES, condition_names,
                                 read_conditions, with_examples)
from llm_maps.errors import LLMMapsError

NOT_BOTH = "not scored under both"
OUTCOME_NAMES = [*OUTCOMES, NOT_BOTH]  # codes 0..4 of outcome_codes
OUTCOME_COLOURS = ["#1a9641", "#d7191c", "#74add1", "#fdae61", "#d5d9de"]
OUTCOME_TITLE = "condition outcome"
DOMAIN_DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
DOMAIN_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star"]
CONDITION_PALETTE = ["#444444", "#e6550d", "#3182bd", "#31a354", "#756bb1", "#e7298a", "#8c564b", "#17becf"]
CELL_CHARS = 300


@dataclass
class ConditionsData:
    """A run's conditions: ``frame`` is conditions.parquet joined with the examples
    (``llm_maps.conditions.with_examples``: one row per example and condition, with ``row``, ``split``,
    ``task``, ``domain`` and ``example_dist``); ``names`` the conditions (direct first); ``codes``
    [len(names), N] uint8 per example row: 0 not scored under the condition, 1 wrong, 2 right."""
    frame: pd.DataFrame
    names: list[str]
    codes: np.ndarray
    path: object

    def index(self, name: str) -> int:
        return self.names.index(name)

    def default_pair(self) -> tuple[str, str]:
        """direct -> the first other condition (or the first two stored; one alone: itself twice)."""
        a = DIRECT if DIRECT in self.names else self.names[0]
        others = [n for n in self.names if n != a]
        return a, (others[0] if others else a)

    def pair(self, a: str | None, b: str | None) -> tuple[str, str]:
        """The conditions to compare: the given ones when stored, else the default pair's."""
        da, db = self.default_pair()
        return (a if a in self.names else da), (b if b in self.names else db)

    def rows_of(self, row: int) -> pd.DataFrame:
        """The example's rows, one per condition, in ``names`` order."""
        sub = self.frame[self.frame["row"] == int(row)]
        order = {n: i for i, n in enumerate(self.names)}
        return sub.iloc[np.argsort([order[c] for c in sub["condition"].astype(str)], kind="stable")]


def load_conditions(data) -> ConditionsData | None:
    """``data``'s conditions.parquet read and joined once (None when the run has none); a broken
    file raises LLMMapsError naming the file, row and field."""
    frame = read_conditions(data.path)
    if frame is None:
        return None
    path = data.path / CONDITIONS_FILE
    joined = with_examples(data.run, frame)
    joined["condition"] = joined["condition"].astype(str)
    dup = joined.duplicated(["example_id", "condition"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise LLMMapsError(f"{path}, row {i + 1}: example '{joined['example_id'].iloc[i]}' appears twice under "
                           f"condition '{joined['condition'].iloc[i]}'")
    names = condition_names(joined) if len(joined) else []
    codes = np.zeros((len(names), data.n), dtype=np.uint8)
    correct = joined["correct"].astype("boolean")
    for i, name in enumerate(names):
        sel = (joined["condition"] == name).to_numpy() & correct.notna().to_numpy()
        codes[i, joined["row"].to_numpy()[sel]] = np.where(correct[sel].to_numpy(dtype=bool), 2, 1)
    return ConditionsData(joined, names, codes, path)


def conditions_of(data) -> ConditionsData | None:
    """The run's conditions, or None (no file, or one that cannot be read: pages say why)."""
    return data.conditions()[0] if data is not None else None


# --- the map's colour ------------------------------------------------------------------------------

def outcome_codes(cd: ConditionsData, a: str, b: str) -> np.ndarray:
    """[N] uint8 index into OUTCOME_NAMES of condition b against condition a, per example row."""
    ca, cb = cd.codes[cd.index(a)], cd.codes[cd.index(b)]
    out = np.full(ca.shape, 4, dtype=np.uint8)
    both = (ca > 0) & (cb > 0)
    ra, rb = ca == 2, cb == 2
    out[both & ~ra & rb] = 0  # helped
    out[both & ra & ~rb] = 1  # hurt
    out[both & ra & rb] = 2  # both right
    out[both & ~ra & ~rb] = 3  # both wrong
    return out


def outcome_legend(codes: np.ndarray) -> list[tuple[str, str]]:
    """The legend of drawn points' outcome codes: every outcome with its count, then the grey ones
    when there are any (assets/dashboard.js ``colourSpec`` builds the same)."""
    counts = np.bincount(codes, minlength=len(OUTCOME_NAMES))
    return [(f"{name} ({int(counts[i])})", OUTCOME_COLOURS[i]) for i, name in enumerate(OUTCOME_NAMES)
            if i < 4 or counts[i] > 0]


def outcome_title(a: str, b: str) -> str:
    return f"{OUTCOME_TITLE}: {b} vs {a}"


def outcome_spec(data, rows: np.ndarray, pair: tuple[str | None, str | None] | None = None):
    """The map's ColourSpec for "condition outcome" of ``rows`` (a run without conditions: every
    point grey)."""
    from dashboard.figures import ColourSpec, stepped_scale

    cd = conditions_of(data)
    if cd is None or not cd.names:
        codes = np.full(len(rows), 4, dtype=np.uint8)
        title = OUTCOME_TITLE + " (no conditions in this run)"
    else:
        a, b = cd.pair(*(pair or (None, None)))
        codes = outcome_codes(cd, a, b)[rows]
        title = outcome_title(a, b)
    return ColourSpec(codes, stepped_scale(OUTCOME_COLOURS), -0.5, len(OUTCOME_COLOURS) - 0.5,
                      outcome_legend(codes), title, False)


def client_arrays(data) -> dict[str, np.ndarray]:
    """Per condition its codes (0 unscored, 1 wrong, 2 right) for the browser: ``cond_<i>``."""
    cd = conditions_of(data)
    return {} if cd is None else {f"cond_{i}": cd.codes[i] for i in range(len(cd.names))}


def client_header(data) -> dict:
    cd = conditions_of(data)
    return {"conditions": [] if cd is None else cd.names,
            "default_pair": list(cd.default_pair()) if cd is not None and cd.names else None}


def client_option() -> dict:
    return {"kind": "outcome", "title": OUTCOME_TITLE, "names": OUTCOME_NAMES, "colours": OUTCOME_COLOURS}


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


# --- the Falloff page --------------------------------------------------------------------------------

def condition_falloff(data, cd: ConditionsData, names: list[str], *, dist: np.ndarray, n_bins: int = 5,
                      tasks: list[str] | None = None) -> dict[str, dict]:
    """Per condition ``llm_maps.falloff.falloff_stats`` of its scored test examples against ``dist``
    (the example's own distance to train, [N] by row: the same x for every condition), grouped by
    domain with equal-count bins per group, plus the tasks per group and per bin:
    {condition: {"stats": {...}, "tasks": {group: n}, "bin_tasks": {group: [n per bin]}}}."""
    from llm_maps.falloff import assign_bins, falloff_stats

    f = cd.frame
    out: dict[str, dict] = {}
    for name in names:
        sub = f[(f["condition"] == name) & (f["split"] == "test") & f["correct"].notna()]
        if tasks:
            sub = sub[sub["task"].isin(tasks)]
        rows = sub["row"].to_numpy()
        x = np.asarray(dist, dtype=float)[rows]
        stats = falloff_stats(x, sub["correct"].astype(bool).tolist(), sub["domain"].astype(str).tolist(),
                              n_bins=int(n_bins), tasks=sub["task"].astype(str).tolist())
        keep = np.isfinite(x)
        task = sub["task"].astype(str).to_numpy()
        dom = sub["domain"].astype(str).to_numpy()
        n_tasks, bin_tasks = {}, {}
        for group, entry in stats.items():
            sel = keep & ((dom == group) if group != "all" else True)
            n_tasks[group] = int(len(set(task[sel].tolist())))
            if entry["bins"]:
                edges = np.array([b["lo"] for b in entry["bins"]] + [entry["bins"][-1]["hi"]])
                idx = assign_bins(x[sel], edges)
                bin_tasks[group] = [int(len(set(task[sel][idx == b["bin"]].tolist()))) for b in entry["bins"]]
            else:
                bin_tasks[group] = []
        out[name] = {"stats": stats, "tasks": n_tasks, "bin_tasks": bin_tasks}
    return out


def condition_groups(per_cond: dict[str, dict], domains: list[str] | None) -> list[str]:
    """The domains drawn: those picked, else every domain any condition has."""
    have = sorted({g for v in per_cond.values() for g in v["stats"] if g != "all"})
    return [d for d in have if d in domains] if domains else have


def conditions_falloff_figure(per_cond: dict[str, dict], conditions: list[str], domains: list[str], *,
                              layout: str = "overlay", title: str = "", dark: bool = False,
                              metric: str = "cosine", colours: dict[str, str] | None = None):
    """Accuracy per distance bin with Wilson 95 % intervals, one trace per condition and domain:
    overlaid (colour: condition, dash and marker: domain) or one panel per domain side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from dashboard.figures import bins_error_y, falloff_layout, plot_text
    from llm_maps.falloff import format_slope

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
            legend = (f"{plot_text(name)} · {plot_text(dom)} · acc {entry['accuracy']:.2f} "
                      f"[{entry['low']:.2f}, {entry['high']:.2f}], n={entry['n']} examples in {n_tasks} tasks"
                      + (f" · slope {slope} log-odds per unit distance" if slope else ""))
            trace = go.Scatter(
                x=[b["median"] for b, _ in bins], y=[b["accuracy"] for b, _ in bins], mode="lines+markers",
                name=legend, meta={"condition": name, "domain": dom},
                line={"color": colours[name], "width": 2, "dash": "solid" if side else DOMAIN_DASHES[j % 6]},
                marker={"size": 8, "color": colours[name], "symbol": "circle" if side else DOMAIN_SYMBOLS[j % 6]},
                error_y=bins_error_y([b for b, _ in bins], colours[name]),
                customdata=[[b["lo"], b["hi"], b["n"], b["correct"], b["low"], b["high"], t] for b, t in bins],
                hovertemplate=(f"{plot_text(name)} · {plot_text(dom)}<br>distance %{{customdata[0]:.4g}}–"
                               f"%{{customdata[1]:.4g}} ({metric}, the example's own prompt)<br>accuracy %{{y:.3f}} "
                               "[%{customdata[4]:.3f}, %{customdata[5]:.3f}] (Wilson 95 %)<br>%{customdata[3]} / "
                               "%{customdata[2]} examples correct, in %{customdata[6]} tasks<extra></extra>"))
            if side:
                fig.add_trace(trace, row=1, col=j + 1)
            else:
                fig.add_trace(trace)
    return falloff_layout(fig, side=side, dark=dark, title=title, height=520, legend_y=-0.2,
                          x_title=f"the example's distance to the nearest train prompt ({metric}, bin median)")


def condition_colours(names: list[str]) -> dict[str, str]:
    return {n: CONDITION_PALETTE[i % len(CONDITION_PALETTE)] for i, n in enumerate(names)}


def flat_stats(per_cond: dict[str, dict], conditions: list[str], domains: list[str]) -> tuple[dict, list[str]]:
    """{"cot · Chollet": group stats} and its keys in drawing order, for the page's bins table."""
    out = {}
    for name in conditions:
        for dom in domains:
            entry = per_cond.get(name, {}).get("stats", {}).get(dom)
            if entry and entry["bins"]:
                out[f"{name} · {dom}"] = entry
    return out, list(out)


# --- the Examples table ------------------------------------------------------------------------------

def answer_column(name: str) -> str:
    return f"answer · {name}"


def correct_column(name: str) -> str:
    return f"✓ · {name}"


def table_columns(data) -> dict[str, np.ndarray]:
    """Per condition the answer (shortened) and "correct" / "wrong" ("" when not scored) of every
    example row ("" for examples not asked under it)."""
    cd = conditions_of(data)
    if cd is None:
        return {}
    out: dict[str, np.ndarray] = {}
    f = cd.frame
    for i, name in enumerate(cd.names):
        sub = f[f["condition"] == name]
        answer = np.full(data.n, "", dtype=object)
        answer[sub["row"].to_numpy()] = sub["answer"].astype("string").fillna("").str.slice(0, CELL_CHARS) \
            .to_numpy(dtype=object)
        out[answer_column(name)] = answer
        out[correct_column(name)] = np.array(["", "wrong", "correct"], dtype=object)[cd.codes[i]]
    return out


# --- the drill-down ------------------------------------------------------------------------------------

def _fmt(value, digits: int = 4) -> str:
    from dashboard.components import _fmt as fmt

    return fmt(value, digits)


def _text(value) -> str:
    return "" if value is None or (np.ndim(value) == 0 and pd.isna(value)) else str(value)


def has_path(r) -> bool:
    px = r.get("path_x") if hasattr(r, "get") else None
    return px is not None and np.ndim(px) == 1 and len(px) > 0


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

    from dashboard.figures import plot_text, template_name, view_figure

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
              "line": {"color": "#333333", "width": 1}}
    if finite.any():
        marker.update(color=np.where(finite, dists, np.nanmin(dists)), colorscale="Viridis", showscale=True,
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
        from dashboard import components as C
        from dashboard.figures import EXPORT_CONFIG

        if not clicks or not key:
            raise PreventUpdate
        if clicks % 2 == 0:  # a second click hides it again
            return None
        data, error = C.load(key.get("run"))
        row = C.row_of(data, key.get("ex")) if data is not None else None
        if data is None or row is None:
            return html.Div(error or f"no example '{key.get('ex')}'", className="small text-danger")
        try:
            fig = path_figure(data, row, str(key.get("cond")), dark=bool(dark))
        except LLMMapsError as exc:
            return html.Div(str(exc), className="small text-danger")
        return dcc.Graph(figure=fig, config=EXPORT_CONFIG, className="cond-path-graph")
