"""Compare page: several runs over the same examples side by side (llm_maps.comparison).

Scaling / trajectory curves per domain and task with curve classes, falloff per run, maps aligned
to the first run that morph from run to run (slider and play: assets/compare.js, in the browser),
the examples whose nearest train set changed most, linear CKA heatmaps and linear probes by layer.

The comparison of a set of runs is computed once (bounded cache keyed on the runs' files). CKA and
probes come from the runs' cka.json / probes.json (written by `llm-maps compare` / `llm-maps
probe`); on runs small enough they are computed here instead, never written.
"""

from __future__ import annotations

import functools
import threading
from urllib.parse import urlencode

import dash
import dash_bootstrap_components as dbc
import numpy as np
from dash import Input, Output, State, callback, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import compare_figures as CF
from dashboard import components as C
from dashboard.figures import EXPORT_CONFIG, interval_words
from llm_maps.errors import LLMMapsError
from dashboard.data import _stamp
from llm_maps.comparison import CLASSES, aligned_maps, available_axes, compare_runs, falloff_curves, match_runs, neighbour_jaccard, probe_run, read_probes, top_movers

dash.register_page(__name__, path="/compare", name="Compare", title="LLM Maps · compare", order=2)

PROBE_ONLINE_LIMIT = 2e6  # examples x hidden x layers probed on request when no probes.json is stored
GRAPHS = ("compare-scaling-graph", "compare-falloff-graph", "compare-map-graph", "compare-cka-graph",
          "compare-probes-graph")
_LOCK = threading.Lock()


class Comparison:
    """One set of runs compared: the result dict, the group, Jaccard matrix, map payload, probes."""

    def __init__(self, datas):
        runs = [d.run for d in datas]
        self.ids = [d.id for d in datas]
        self.result = compare_runs(runs, cka="auto")
        self.group = match_runs(runs)
        self.jaccard, _ = neighbour_jaccard(self.group)
        self.payload = CF.map_payload(self.group, aligned_maps(self.group)["coords"])
        self.names = [r["name"] for r in self.result["runs"]]
        self.probes, self.probe_notes = {}, {}
        for name, run in zip(self.names, runs):
            stored = read_probes(run)
            size = len(run.examples) * int(run.encodings(run.default_layer).shape[1]) * len(run.layers)
            if stored is not None:
                self.probes[name], self.probe_notes[name] = stored, "from probes.json"
            elif size <= PROBE_ONLINE_LIMIT:
                self.probes[name] = probe_run(run, save=False)
                self.probe_notes[name] = "computed on the fly"
            else:
                self.probes[name] = None
                self.probe_notes[name] = (f"not computed yet: run `llm-maps probe RUN_DIR` on run {name} "
                                          f"(or `llm-maps compare ... --probes`)")


@functools.lru_cache(maxsize=4)
def _comparison_cached(key: tuple) -> Comparison:
    return Comparison([C.registry().load(run_id) for run_id, _ in key])


def comparison(run_ids) -> Comparison:
    """The (cached) comparison of these runs; LLMMapsError when they cannot be compared."""
    datas = [C.registry().load(r) for r in run_ids]
    key = tuple((d.id, (str(d.path), _stamp(d.path), _extra_stamp(d.path))) for d in datas)
    with _LOCK:
        return _comparison_cached(key)


def _extra_stamp(path) -> tuple:
    out = []
    for name in ("cka.json", "probes.json"):
        try:
            st = (path / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def default_runs(entries=None) -> list[str]:
    """Without ?runs=: the first fine-tuning group's readable runs (by step) when one has two or
    more; else the first readable run and every other one with the same example counts (a likely
    group: sizes of one model family)."""
    entries = C.registry().entries() if entries is None else entries
    for runs in C.registry().groups(entries).values():
        ids = [e.id for e in runs if e.ok]
        if len(ids) >= 2:
            return ids
    entries = [e for e in entries if e.ok]
    if not entries:
        return []
    def counts(e):
        c = (e.manifest or {}).get("counts") or {}
        return (c.get("examples"), c.get("train"), c.get("test"))
    first = entries[0]
    return [e.id for e in entries if counts(e) == counts(first)]


def _run_options(entries):
    return [{"label": C.run_label(e), "value": e.id, "disabled": not e.ok} for e in entries]


def _group_links(entries, current) -> html.Div:
    """One click to compare each fine-tuning group (its readable runs, by step); the group shown now
    is marked."""
    links = []
    for name, runs in C.registry().groups(entries).items():
        ids = [e.id for e in runs if e.ok]
        if len(ids) < 2:
            continue
        shown = list(current) == ids
        links.append(html.Li(dcc.Link(f"compare this group: {name} ({len(ids)} runs)" + (" · shown" if shown else ""),
                                      href=C.url("/compare?" + urlencode([("runs", i) for i in ids])),
                                      className="compare-group-link small")))
    return html.Ul(links, id="compare-groups", className="list-unstyled mb-2") if links else \
        html.Div(id="compare-groups", hidden=True)


def _label(text, **kw):
    return dbc.Label(text, className="mb-0 small", **kw)


def _graph_block(graph_id, figure, note=None, extra=None):
    return html.Div([
        dcc.Graph(id=graph_id, figure=figure, config=EXPORT_CONFIG),
        html.Div([html.Div(note or "", id=f"{graph_id}-note", className="small text-muted flex-grow-1"),
                  C.export_buttons(graph_id)], className="d-flex align-items-start"),
        *(extra or []),
    ], className="mb-4")


def layout(runs=None, axis=None, task=None, t="0", ids=None, cka_a=None, cka_b=None, probe=None, moved=None,
           fscale=None, **_):
    entries = C.registry().entries()
    run_ids = C.query_list(runs) or default_runs(entries)
    picker = html.Div([_label("Runs to compare (the first is the reference map)", html_for="compare-runs"),
                       dcc.Dropdown(id="compare-runs", options=_run_options(entries), value=run_ids, multi=True),
                       _group_links(entries, run_ids)],
                      className="mb-2")
    if len(run_ids) < 2:
        return dbc.Container([picker, dbc.Alert(
            "Choose two or more runs over the same examples (model sizes, checkpoints of a fine-tune), or run "
            "`llm-maps compare RUN1 RUN2 ... --json FILE` on the command line.", color="info", id="compare-empty")],
            fluid=True, className="pt-3")
    try:
        cmp = comparison(run_ids)
    except LLMMapsError as exc:
        return dbc.Container([picker, C.banner(str(exc), id="compare-banner")], fluid=True, className="pt-3")
    except Exception as exc:  # noqa: BLE001 - a corrupt file can raise anything; never take the app down
        return dbc.Container([picker, C.banner(f"could not compare: {type(exc).__name__}: {exc}", id="compare-banner")],
                             fluid=True, className="pt-3")
    res, names, dark = cmp.result, cmp.names, C.dark_cookie()
    axes = _axes(res)
    axis = axis if axis in axes else res["axis"]["kind"]
    tasks = [t_ for t_ in C.query_list(task) if t_ in res["tasks"]]
    try:
        t_value = min(max(float(t), 0.0), float(len(names) - 1))
    except (TypeError, ValueError):
        t_value = 0.0
    cka_a = cka_a if cka_a in names else names[0]
    cka_b = cka_b if cka_b in names else names[-1]
    probe = probe if probe in names else names[0]
    moved_run = moved if moved in names[1:] else names[-1]
    movers = _movers(cmp, names.index(moved_run))
    arrow_ids = [i for i in C.query_list(ids) if i in cmp.payload["ids"]] if ids is not None else \
        [m["example_id"] for m in movers[:5] if m["example_id"] in cmp.payload["ids"]]

    controls = [
        picker,
        _label("x axis"),
        dbc.RadioItems(id="compare-axis", options=[{"label": CF.AXIS_TITLES[a], "value": a} for a in axes], value=axis,
                       className="mb-2 small"),
        _label("Tasks on the curve plot"),
        dcc.Dropdown(id="compare-tasks", options=sorted(res["tasks"]), value=tasks, multi=True,
                     placeholder="domains only", className="mb-2"),
        html.Hr(),
        _label("CKA: run against run"),
        dcc.Dropdown(id="compare-cka-a", options=names, value=cka_a, clearable=False, className="mb-1"),
        dcc.Dropdown(id="compare-cka-b", options=names, value=cka_b, clearable=False, className="mb-2"),
        _label("Probes of run"),
        dcc.Dropdown(id="compare-probe-run", options=names, value=probe, clearable=False, className="mb-2"),
        html.Hr(),
        html.Div(_run_table(res), className="small"),
    ]
    scaling = CF.scaling_figure(res, tasks=tasks, axis=axis, dark=dark)
    verdicts = _verdicts(res)
    scale = "raw" if fscale == "raw" else "percentile"
    fres = _falloff_result(cmp, scale)
    falloff = CF.falloff_overlay_figure(fres, dark=dark)
    bars = interval_words({f"{c['run']}/{d}": e for c in fres["falloff"] if c.get("stats")
                          for d, e in c["stats"].items()})
    map_fig = CF.aligned_map_figure(cmp.payload, t=t_value, arrows=arrow_ids, dark=dark)
    map_note = _map_note(res, names)
    map_extra = _map_controls(cmp, names, t_value=t_value, arrow_ids=arrow_ids, movers=movers, moved_run=moved_run)
    cka_fig = CF.cka_figure(res["cka"]["layer_pairs"], cka_a, cka_b, dark=dark)
    cka_note = _cka_note(res, names)
    probes_fig = CF.probes_figure(cmp.probes.get(probe), dark=dark, title=f"Linear probes of {probe} by layer")
    body = [
        html.H5("Accuracy against model size / checkpoint", className="mt-2"),
        _graph_block("compare-scaling-graph", scaling, extra=[verdicts]),
    ]
    if res.get("loss_curve"):
        body += [html.H5("Fine-tuning loss"),
                 _graph_block("compare-loss-graph", CF.loss_figure(res["loss_curve"], dark=dark),
                              note=res["loss_curve"]["unit"])]
    body += [
        html.H5("Falloff per run"),
        dbc.RadioItems(id="compare-falloff-scale", options=[
            {"label": "percentile of distance", "value": "percentile"}, {"label": "raw distance", "value": "raw"}],
            value=scale, inline=True, className="small"),
        _graph_block("compare-falloff-graph", falloff,
                     note="Percentile: each test example's distance to train as its percentile among the run's test "
                          "distances (0-1; raw distances differ in scale between models and metrics); equal-count bins "
                          f"per domain and run; error bars: {bars}."),
        html.H5("Aligned maps"),
        _graph_block("compare-map-graph", map_fig, note=map_note, extra=map_extra),
        html.H5("Representation similarity"),
        _graph_block("compare-cka-graph", cka_fig, note=cka_note),
        html.H5("Linear probes"),
        _graph_block("compare-probes-graph", probes_fig, note=_probe_note(cmp, probe)),
    ]
    return dbc.Container([
        dcc.Store(id="compare-key", data=[cmp.ids]), dcc.Store(id="compare-map-data", data=cmp.payload),
        html.Div(id="compare-url-sync", hidden=True), html.Div(id="compare-morphed", hidden=True),
        html.Div(id="compare-nav", hidden=True),
        dbc.Row([dbc.Col(controls, md=3, className="pt-2"), dbc.Col(body, md=9)]),
    ], fluid=True)


def _verdicts(res: dict):
    """Under the scaling plot: each domain's verdict, the task classes, every task's accuracy per run."""
    return html.Div([
        html.Ul([html.Li(e["verdict"], className="small") for e in res["domains"].values()], id="compare-verdicts"),
        _classes_table(res),
        html.Div(res["class_rule"], className="small text-muted", id="compare-class-rule"),
        html.Details([html.Summary(f"every task ({len(res['tasks'])}): class and accuracy per run", className="small"),
                      _tasks_table(res)], className="mt-1"),
        html.Div(res["unit"], className="small text-muted"),
        *([g] if (g := _gain_table(res.get("task_gain"))) is not None else []),
    ])


def _map_note(res: dict, names: list[str]) -> str:
    residuals = res["alignment"]["procrustes_residual"]
    return ("Orthogonal Procrustes of each run's 2-D map onto the first run's (all shared examples); "
            "residual (0 = same shape): " + ", ".join(f"{n} {'-' if r is None else format(r, '.3f')}"
                                                      for n, r in zip(names, residuals))
            + ". Colour: domain. Arrows: from an example's place in the first run to its place now.")


def _map_controls(cmp: Comparison, names: list[str], *, t_value: float, arrow_ids: list, movers: list,
                  moved_run: str) -> list:
    """Under the aligned maps: play and the morph slider, the arrows, the top movers."""
    res = cmp.result
    marks = {i: {"label": n} for i, n in enumerate(names)}
    return [
        dbc.Row([
            dbc.Col(dbc.Button("▶ play", id="compare-play", size="sm", color="primary", n_clicks=0), width="auto"),
            dbc.Col(dcc.Slider(id="compare-t", min=0, max=len(names) - 1, step=0.05, value=t_value, marks=marks,
                               updatemode="drag"), className="pt-1"),
        ], className="align-items-center mb-2"),
        dcc.Interval(id="compare-tick", interval=80, disabled=True),
        _label("Arrows for"),
        dcc.Dropdown(id="compare-arrows", options=_arrow_options(cmp, movers, arrow_ids), value=arrow_ids,
                     multi=True, placeholder="examples (top movers listed)", className="mb-2"),
        dbc.Row([dbc.Col(_label(f"Examples whose {res['moved']['k']} nearest train examples changed most, "
                                f"{names[0]} →"), width="auto"),
                 dbc.Col(dcc.Dropdown(id="compare-moved-run", options=names[1:], value=moved_run, clearable=False),
                         md=4)], className="align-items-center mb-1"),
        html.Div(_movers_table(movers, names), id="compare-movers"),
    ]


def _falloff_result(cmp: Comparison, scale: str) -> dict:
    """The comparison with its falloff curves on ``scale`` (the result holds the percentile ones)."""
    if scale == "percentile":
        return cmp.result

    return {**cmp.result, "falloff": falloff_curves(cmp.group, scale="raw")}


def _axes(res) -> list[str]:
    return available_axes(res["runs"])


def _run_table(res) -> html.Table:
    """The runs compared: name, the model by its name (a checkpoint's: the model tuned, and the
    step), the model's path a tooltip for the owner only (``C.is_owner``)."""
    owner = C.is_owner()
    rows = [html.Tr([html.Th(h, className="pe-2") for h in ("run", "model", "n_params", "step")])]
    for r in res["runs"]:
        rows.append(html.Tr([html.Td(r["name"], className="pe-2"),
                             html.Td(r.get("model_name") or r["model"], className="pe-2 text-break compare-model",
                                     title=r["model"] if owner else None),
                             html.Td(f"{r['n_params']:,}" if r["n_params"] else "—", className="pe-2"),
                             html.Td("—" if r["step"] is None else str(r["step"]))]))
    return html.Table(rows, id="compare-run-table")


def _classes_table(res) -> html.Table:
    head = html.Tr([html.Th("domain", className="pe-3")] + [html.Th(c, className="pe-3") for c in CLASSES]
                   + [html.Th("tasks")])
    rows = [html.Tr([html.Td(d, className="pe-3")] + [html.Td(str(e["classes"][c]), className="pe-3") for c in CLASSES]
                    + [html.Td(str(e["n_tasks"]))]) for d, e in res["domains"].items()]
    total = html.Tr([html.Td("all", className="pe-3 fw-bold")]
                    + [html.Td(str(res["classes"][c]), className="pe-3 fw-bold") for c in CLASSES]
                    + [html.Td(str(sum(res["classes"].values())), className="fw-bold")])
    return html.Table([head] + rows + [total], className="small mb-1", id="compare-classes")


def _gain_table(gain) -> html.Div | None:
    """Train tasks vs held-out tasks: accuracy per run with task-bootstrap intervals, the verdicts."""
    if not gain:
        return None

    def cell(e):
        if e.get("low") is None:
            return f"{e['value']:.3f}"
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    head = html.Tr([html.Th("", className="pe-3")] + [html.Th(n, className="pe-3") for n in gain["runs"]]
                   + [html.Th("tasks", className="pe-2"), html.Th("examples")])
    rows = [html.Tr([html.Td(cls, className="pe-3")] + [html.Td(cell(r), className="pe-3") for r in e["runs"]]
                    + [html.Td(str(e["n_tasks"]), className="pe-2"), html.Td(str(e["n_examples"]))])
            for cls, e in gain["classes"].items() if e["runs"]]
    verdicts = [e["verdict"] for e in gain["classes"].values()] + [gain["verdict"]]
    return html.Div([html.Div(f"Train tasks vs held-out tasks, {gain['first']} → {gain['last']}",
                              className="small fw-bold"),
                     html.Table([head] + rows, className="small mb-1"),
                     html.Ul([html.Li(v, className="small") for v in verdicts], className="mb-1"),
                     html.Div(gain["unit"], className="small text-muted")], id="compare-task-gain", className="mt-2")


def _tasks_table(res) -> html.Table:
    names = [r["name"] for r in res["runs"]]
    order = {c: i for i, c in enumerate(CLASSES)}
    tasks = sorted(res["tasks"].items(), key=lambda kv: (order.get(kv[1]["class"], 9), kv[1]["domain"], kv[0]))
    head = html.Tr([html.Th(h, className="pe-3") for h in ("task", "domain", "class")]
                   + [html.Th(n, className="pe-2") for n in names])
    rows = [html.Tr([html.Td(t, className="pe-3"), html.Td(e["domain"], className="pe-3"),
                     html.Td(e["class"] or "—", className="pe-3")]
                    + [html.Td("—" if a is None else f"{a:.2f} (n={n})", className="pe-2")
                       for a, n in zip(e["accuracy"], e["n"])]) for t, e in tasks]
    return html.Table([head] + rows, className="small", id="compare-tasks-table")


def _movers(cmp: Comparison, run: int) -> list[dict]:
    return top_movers(cmp.group, cmp.jaccard, run=run, limit=20)


def _movers_table(movers, names):
    if not movers:
        return html.Div("No example's nearest train examples changed between these runs.",
                        className="small text-muted", id="compare-movers-table")
    head = html.Tr([html.Th(h, className="pe-3") for h in ("example", "task", "domain", "split")]
                   + [html.Th(f"J {n}", className="pe-2") for n in names[1:]])
    rows = [html.Tr([html.Td(m["example_id"], className="pe-3"), html.Td(m["task"], className="pe-3"),
                     html.Td(m["domain"], className="pe-3"), html.Td(m["split"], className="pe-3")]
                    + [html.Td("—" if v is None else f"{v:.2f}", className="pe-2") for v in m["jaccard"][1:]])
            for m in movers]
    return html.Table([head] + rows, className="small", id="compare-movers-table")


def _arrow_options(cmp, movers, current) -> list[str]:
    drawn = set(cmp.payload["ids"])
    return list(dict.fromkeys([m["example_id"] for m in movers if m["example_id"] in drawn] + list(current)))


def _cka_note(res, names) -> str:
    pairs = res["cka"]["layer_pairs"]
    have = {(p["run_a"], p["run_b"]) for p in pairs}
    missing = [f"{a}~{b}" for i, a in enumerate(names) for b in names[i:] if (a, b) not in have]
    note = ("Linear CKA (Kornblith et al. 2019) between the stored layers, over all shared examples "
            "(1 = the same geometry up to rotation and scale).")
    if missing:
        note += (" Not computed yet for " + ", ".join(missing) + ": these runs are too large to compute it here; "
                 "run `llm-maps compare` on them (it stores the result in each run's cka.json).")
    return note


def _probe_note(cmp, name) -> str:
    p = cmp.probes.get(name)
    base = cmp.probe_notes.get(name, "")
    if not p:
        return base
    skipped = "; ".join(f"{s['target']} skipped: {s['reason']}" for s in p.get("skipped", []))
    rows = p.get("layers", [])
    n_tasks = max((r["n_tasks"] for r in rows), default=0)
    return (f"{base}. Logistic regression, cross-validated (domain and correctness grouped by task: unseen tasks in "
            f"each test fold; task stratified); plotted: accuracy minus chance (the class prior), dashed at 0; error "
            f"bars: bootstrap 95 %, tasks resampled (for the task target, whose classes are the tasks, examples within "
            f"their task) (a probe is above chance when its bar lies above 0); "
            f"{rows[0]['n'] if rows else 0} examples, {n_tasks} tasks." + (f" {skipped}." if skipped else ""))


def _load(key):
    if not key:
        raise PreventUpdate
    try:
        return comparison(key[0])
    except Exception:  # noqa: BLE001 - the layout already showed why
        raise PreventUpdate from None


@callback(Output("compare-scaling-graph", "figure"), Input("compare-axis", "value"), Input("compare-tasks", "value"),
          State("compare-key", "data"), State("theme-dark", "value"), prevent_initial_call=True)
def update_scaling(axis, tasks, key, dark=False):
    cmp = _load(key)
    return CF.scaling_figure(cmp.result, tasks=tasks or [], axis=axis, dark=bool(dark))


@callback(Output("compare-falloff-graph", "figure"), Input("compare-falloff-scale", "value"),
          State("compare-key", "data"), State("theme-dark", "value"), prevent_initial_call=True)
def update_falloff(scale, key, dark=False):
    cmp = _load(key)
    return CF.falloff_overlay_figure(_falloff_result(cmp, scale), dark=bool(dark))


@callback(Output("compare-cka-graph", "figure"), Input("compare-cka-a", "value"), Input("compare-cka-b", "value"),
          State("compare-key", "data"), State("theme-dark", "value"), prevent_initial_call=True)
def update_cka(run_a, run_b, key, dark=False):
    cmp = _load(key)
    return CF.cka_figure(cmp.result["cka"]["layer_pairs"], run_a, run_b, dark=bool(dark))


@callback(Output("compare-probes-graph", "figure"), Output("compare-probes-graph-note", "children"),
          Input("compare-probe-run", "value"), State("compare-key", "data"), State("theme-dark", "value"),
          prevent_initial_call=True)
def update_probes(name, key, dark=False):
    cmp = _load(key)
    return (CF.probes_figure(cmp.probes.get(name), dark=bool(dark), title=f"Linear probes of {name} by layer"),
            _probe_note(cmp, name))


@callback(Output("compare-movers", "children"), Output("compare-arrows", "options"),
          Input("compare-moved-run", "value"), State("compare-arrows", "value"), State("compare-key", "data"),
          prevent_initial_call=True)
def update_movers(name, current, key):
    cmp = _load(key)
    movers = _movers(cmp, cmp.names.index(name))
    return _movers_table(movers, cmp.names), _arrow_options(cmp, movers, current or [])


# in the browser: morph the map, play, URL state, switching runs
dash.clientside_callback(dash.ClientsideFunction("llm_maps_compare", "morph"), Output("compare-morphed", "children"),
                         Input("compare-t", "value"), Input("compare-arrows", "value"),
                         State("compare-map-data", "data"), prevent_initial_call=True)
dash.clientside_callback(dash.ClientsideFunction("llm_maps_compare", "play"),
                         Output("compare-tick", "disabled"), Output("compare-play", "children"),
                         Output("compare-t", "value"),
                         Input("compare-play", "n_clicks"), State("compare-tick", "disabled"),
                         State("compare-t", "value"), State("compare-map-data", "data"), prevent_initial_call=True)
dash.clientside_callback(dash.ClientsideFunction("llm_maps_compare", "tick"),
                         Output("compare-t", "value", allow_duplicate=True),
                         Output("compare-tick", "disabled", allow_duplicate=True),
                         Output("compare-play", "children", allow_duplicate=True),
                         Input("compare-tick", "n_intervals"), State("compare-t", "value"),
                         State("compare-map-data", "data"), prevent_initial_call=True)
dash.clientside_callback(dash.ClientsideFunction("llm_maps_compare", "syncUrl"), Output("compare-url-sync", "children"),
                         Input("compare-runs", "value"), Input("compare-axis", "value"), Input("compare-tasks", "value"),
                         Input("compare-t", "value"), Input("compare-arrows", "value"), Input("compare-cka-a", "value"),
                         Input("compare-cka-b", "value"), Input("compare-probe-run", "value"),
                         Input("compare-moved-run", "value"), Input("compare-falloff-scale", "value"))
dash.clientside_callback(dash.ClientsideFunction("llm_maps_compare", "pickRuns"), Output("compare-nav", "children"),
                         Input("compare-runs", "value"), prevent_initial_call=True)
for _graph in GRAPHS:
    C.register_export(_graph)
