"""Figures of a run comparison (llm_maps.comparison), shared by the Compare page, `llm-maps compare
--html` and the compare section of `llm-maps export`: scaling / trajectory curves, falloff per run,
aligned maps (morphing), CKA heatmaps and probes by layer. Pure: plotly objects from the result
dict; user text (task names, example ids) goes into hover text HTML-escaped."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from dashboard.figures import FIXED_COLOURS, PALETTE, REFERENCE_GREY, bin_interval, template_name
from dashboard.bundle import plotly_script
from llm_maps.comparison import CLASSES, aligned_maps, match_runs, read_probes

MAP_POINTS = 4000  # points drawn on the aligned maps (a fixed sample above this)
AXIS_TITLES = {"n_params": "parameters (log scale)", "step": "checkpoint step", "order": "run (order given)"}


def run_colours(n: int) -> list[str]:
    """One colour per run, light to dark along the run order (viridis)."""
    from plotly.colors import sample_colorscale

    return sample_colorscale("Viridis", [0.0] if n == 1 else [0.85 * i / (n - 1) for i in range(n)])


def _esc(text: object) -> str:
    return html.escape(str(text), quote=False)


def _errors(entries_acc, low, high) -> dict:
    return {"type": "data", "symmetric": False,
            "array": [None if a is None or h is None else h - a for a, h in zip(entries_acc, high)],
            "arrayminus": [None if a is None or lo is None else a - lo for a, lo in zip(entries_acc, low)],
            "thickness": 1.2}


def scaling_figure(result: dict, *, tasks: Sequence[str] = (), axis: str | None = None, dark: bool = False) -> go.Figure:
    """Accuracy per domain (thick) and per chosen task (thin) against n_params (log), step or run
    order; every run a dot with its 95 % Wilson interval."""
    kind = axis or result["axis"]["kind"]
    x = _axis_values(result, kind)
    names = [r["name"] for r in result["runs"]]
    fig = go.Figure()
    for i, (d, e) in enumerate(result["domains"].items()):
        acc = [r["accuracy"] for r in e["runs"]]
        colour = FIXED_COLOURS["domain"].get(d, PALETTE[i % len(PALETTE)])
        fig.add_trace(go.Scatter(
            x=x, y=acc, mode="lines+markers", name=f"{d} ({e['n_tasks']} tasks, {e['n_examples']} examples)",
            line={"color": colour, "width": 3}, marker={"size": 10, "color": colour},
            error_y={**_errors(acc, [r["low"] for r in e["runs"]], [r["high"] for r in e["runs"]]), "color": colour},
            customdata=[[n, r["n"], r["correct"]] for n, r in zip(names, e["runs"])],
            hovertemplate="%{customdata[0]}<br>accuracy %{y:.3f}<br>%{customdata[2]} / %{customdata[1]} correct"
                          f"<extra>{_esc(d)}</extra>"))
    for j, t in enumerate(tasks):
        e = result["tasks"].get(t)
        if e is None:
            continue
        colour = PALETTE[(j + 2) % len(PALETTE)]
        fig.add_trace(go.Scatter(
            x=x, y=e["accuracy"], mode="lines+markers", name=f"{_esc(t)} ({e['class'] or 'unscored'})",
            line={"color": colour, "width": 1.5, "dash": "dot"}, marker={"size": 7, "color": colour},
            error_y={**_errors(e["accuracy"], e["low"], e["high"]), "color": colour},
            customdata=[[n, k] for n, k in zip(names, e["n"])],
            hovertemplate="%{customdata[0]}<br>accuracy %{y:.3f} (n=%{customdata[1]})" f"<extra>{_esc(t)}</extra>"))
    fig.update_layout(template=template_name(dark), height=420, margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      title={"text": f"Accuracy against {AXIS_TITLES[kind].split(' (')[0]} (95 % Wilson intervals)"},
                      legend={"orientation": "h", "y": -0.2}, yaxis={"title": "accuracy", "range": [-0.02, 1.05]},
                      xaxis={"title": AXIS_TITLES[kind], "type": "log" if kind == "n_params" else "linear"})
    if kind == "order":
        fig.update_xaxes(tickvals=x, ticktext=[_esc(n) for n in names])
    return fig


def _axis_values(result: dict, kind: str) -> list[float]:
    if kind == "order" or any(r.get(kind) is None for r in result["runs"]):
        return [float(i + 1) for i in range(len(result["runs"]))]
    return [float(r[kind]) for r in result["runs"]]


def loss_figure(curve: dict, *, dark: bool = False) -> go.Figure:
    """The fine-tuning loss against the step: train (per step) and the held-out slice (per checkpoint)."""
    fig = go.Figure()
    for key, name, mode in (("train", "train", "lines"), ("eval", "held-out slice of train", "lines+markers")):
        points = curve.get(key) or []
        if points:
            fig.add_trace(go.Scatter(x=[p["step"] for p in points], y=[p["loss"] for p in points], mode=mode,
                                     name=name, hovertemplate="step %{x}<br>loss %{y:.4f}<extra>" + name + "</extra>"))
    fig.update_layout(template=template_name(dark), height=320, margin={"l": 50, "r": 20, "t": 50, "b": 50},
                      title={"text": f"Fine-tuning loss ({_esc(curve.get('mode') or '?')})"},
                      legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="loss (nats per reference token)")
    return fig


def falloff_overlay_figure(result: dict, *, dark: bool = False) -> go.Figure:
    """Per domain (one panel each), accuracy against the percentile of distance to train, one line
    per run (light to dark in run order), with 95 % Wilson intervals."""
    from plotly.subplots import make_subplots

    curves = [c for c in result["falloff"] if c.get("stats")]
    domains = sorted({d for c in curves for d in c["stats"] if d != "all"}) or ["all"]
    fig = make_subplots(rows=1, cols=len(domains), shared_yaxes=True, subplot_titles=[_esc(d) for d in domains])
    colours = run_colours(len(result["falloff"]))
    for i, c in enumerate(result["falloff"]):
        if not c.get("stats"):
            continue
        for j, d in enumerate(domains):
            entry = c["stats"].get(d)
            if not entry:
                continue
            bins = [b for b in entry["bins"] if b["n"]]
            acc = [b["accuracy"] for b in bins]
            iv = [bin_interval(b) for b in bins]  # (low, high, which)
            fig.add_trace(go.Scatter(
                x=[b["median"] for b in bins], y=acc, mode="lines+markers", name=_esc(c["run"]), legendgroup=c["run"],
                showlegend=j == 0, line={"color": colours[i], "width": 2}, marker={"color": colours[i], "size": 7},
                error_y={**_errors(acc, [lo for lo, _, _ in iv], [hi for _, hi, _ in iv]), "color": colours[i]},
                customdata=[[b["n"], b["correct"], *v] for b, v in zip(bins, iv)],
                hovertemplate="percentile %{x:.2f}<br>accuracy %{y:.3f} [%{customdata[2]:.3f}, %{customdata[3]:.3f}] "
                              "(%{customdata[4]})<br>%{customdata[1]} / %{customdata[0]} correct"
                              f"<extra>{_esc(c['run'])} · {_esc(d)}</extra>"), row=1, col=j + 1)
    scale = (result["falloff"][0].get("scale") if result["falloff"] else "percentile") or "percentile"
    metric = next((c.get("metric") for c in result["falloff"] if c.get("metric")), None)
    xtitle = "percentile of distance to train among the run's test examples" if scale == "percentile" \
        else f"distance to nearest train prompt ({metric or 'raw'}, bin median)"
    fig.update_layout(template=template_name(dark), height=400, margin={"l": 50, "r": 20, "t": 60, "b": 50},
                      title={"text": "Falloff per run: accuracy against distance to train (95 % Wilson intervals)"},
                      legend={"orientation": "h", "y": -0.25})
    fig.update_yaxes(range=[-0.02, 1.08])
    fig.update_yaxes(title_text="accuracy", col=1)
    fig.update_xaxes(title_text=xtitle)
    return fig


def map_sample(n: int, limit: int = MAP_POINTS, seed: int = 0) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def map_payload(group, coords: list[np.ndarray | None], *, limit: int = MAP_POINTS) -> dict:
    """What the page's morphing map needs (a fixed sample of points): per run x and y (aligned
    to the first run), the example ids, hover text and colour (by domain)."""
    rows = map_sample(group.n, limit)
    frame = group.frame
    train = frame["split"].astype(str).to_numpy()[rows] == "train"
    rows = np.concatenate([rows[train], rows[~train]])  # test points drawn above train points (figures.draw_order)
    domains = frame["domain"].astype(str).to_numpy()[rows]
    names = sorted(set(domains.tolist()))
    colours = {d: FIXED_COLOURS["domain"].get(d, PALETTE[i % len(PALETTE)]) for i, d in enumerate(names)}
    ids = frame["example_id"].astype(str).to_numpy()[rows]
    text = [f"{_esc(i)}<br>{_esc(t)} · {s}" for i, t, s in zip(ids, frame["task"].astype(str).to_numpy()[rows],
                                                                frame["split"].astype(str).to_numpy()[rows])]
    xs, ys = [], []
    for c in coords:
        c = coords[0] if c is None else c
        xs.append(np.round(c[rows, 0], 4).tolist())
        ys.append(np.round(c[rows, 1], 4).tolist())
    return {"runs": list(group.names), "x": xs, "y": ys, "ids": ids.tolist(), "text": text,
            "colour": [colours[d] for d in domains], "legend": [[d, colours[d]] for d in names],
            "n": int(group.n), "drawn": int(len(rows))}


def _arrows(payload: dict, ids: Sequence[str], x: list, y: list) -> list[dict]:
    index = {e: i for i, e in enumerate(payload["ids"])}
    out = []
    for e in ids:
        i = index.get(e)
        if i is None:
            continue
        out.append({"x": x[i], "y": y[i], "ax": payload["x"][0][i], "ay": payload["y"][0][i], "xref": "x",
                    "yref": "y", "axref": "x", "ayref": "y", "showarrow": True, "arrowhead": 2, "arrowsize": 1.2,
                    "arrowwidth": 1.6, "arrowcolor": "#d62728", "text": ""})
    return out


def aligned_map_figure(payload: dict, *, t: float = 0.0, arrows: Sequence[str] = (), dark: bool = False) -> go.Figure:
    """The aligned maps at slider position ``t`` (0 = first run, 1 = second, fractions morph
    linearly between neighbouring runs); arrows from each chosen example's place in the first
    run to its place now. dashboard/assets/compare.js redraws the same in the browser."""
    x, y = interpolate(payload, t)
    fig = go.Figure(go.Scattergl(x=x, y=y, mode="markers", text=payload["text"], hovertemplate="%{text}<extra></extra>",
                                 marker={"color": payload["colour"], "size": 5 if payload["drawn"] > 2000 else 7,
                                         "opacity": 1}, showlegend=False, name="examples"))
    for name, colour in payload["legend"]:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=_esc(name), marker={"color": colour, "size": 9},
                                 hoverinfo="skip"))
    fig.update_layout(template=template_name(dark), height=560, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      title={"text": _map_title(payload, t)}, annotations=_arrows(payload, arrows, x, y),
                      xaxis={"visible": False}, yaxis={"visible": False}, legend={"itemsizing": "constant"},
                      hovermode="closest", uirevision="compare-map")
    return fig


def _map_title(payload: dict, t: float) -> str:
    runs = payload["runs"]
    i = int(round(t))
    where = _esc(runs[i]) if abs(t - i) < 1e-9 else f"{_esc(runs[int(t)])} → {_esc(runs[int(t) + 1])}"
    drawn = f" ({payload['drawn']:,} of {payload['n']:,} drawn)" if payload["drawn"] < payload["n"] else ""
    return f"Maps aligned to {_esc(runs[0])}: {where}{drawn}"


def interpolate(payload: dict, t: float) -> tuple[list, list]:
    """Positions at slider position ``t`` (linear between neighbouring runs)."""
    last = len(payload["runs"]) - 1
    t = min(max(float(t), 0.0), float(last))
    i = min(int(np.floor(t)), max(last - 1, 0))
    f = t - i
    if last == 0 or f == 0:
        return payload["x"][i], payload["y"][i]
    x0, x1 = np.asarray(payload["x"][i]), np.asarray(payload["x"][i + 1])
    y0, y1 = np.asarray(payload["y"][i]), np.asarray(payload["y"][i + 1])
    return ((1 - f) * x0 + f * x1).tolist(), ((1 - f) * y0 + f * y1).tolist()


def animated_map_figure(payload: dict, *, steps: int = 6, arrows: Sequence[str] = ()) -> go.Figure:
    """The aligned maps as a plotly animation (for standalone HTML): a slider with one stop per
    run and a play button; ``steps`` in-between frames morph each run into the next."""
    fig = aligned_map_figure(payload, t=0.0, arrows=arrows)
    runs = payload["runs"]
    frames, slider_steps = [], []
    for i in range(len(runs)):
        for s in range(steps if i < len(runs) - 1 else 1):
            t = i + s / steps
            x, y = interpolate(payload, t)
            name = f"t{t:.3f}"
            frames.append(go.Frame(name=name, data=[go.Scattergl(x=x, y=y)], traces=[0],
                                   layout={"annotations": _arrows(payload, arrows, x, y),
                                           "title": {"text": _map_title(payload, t)}}))
            if s == 0:
                slider_steps.append({"label": _esc(runs[i]), "method": "animate",
                                     "args": [[name], {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
                                                       "transition": {"duration": 0}}]})
    fig.frames = frames
    fig.update_layout(
        updatemenus=[{"type": "buttons", "direction": "left", "x": 0, "y": -0.02, "xanchor": "left", "yanchor": "top",
                      "buttons": [{"label": "▶ play", "method": "animate",
                                   "args": [None, {"frame": {"duration": 120, "redraw": True}, "fromcurrent": True,
                                                   "transition": {"duration": 0}}]}]}],
        sliders=[{"active": 0, "x": 0.12, "len": 0.88, "y": -0.02, "yanchor": "top", "steps": slider_steps,
                  "currentvalue": {"prefix": "run: "}}],
        margin={"l": 10, "r": 10, "t": 50, "b": 80}, height=620)
    return fig


def cka_matrix(pairs: list[dict], run_a: str, run_b: str) -> tuple[list[int], list[int], np.ndarray]:
    """(layers of run_a, layers of run_b, CKA [La, Lb]) from a comparison's layer pairs."""
    vals = {}
    for p in pairs:
        if p["run_a"] == run_a and p["run_b"] == run_b:
            vals[(p["layer_a"], p["layer_b"])] = p["cka"]
        if p["run_a"] == run_b and p["run_b"] == run_a:
            vals[(p["layer_b"], p["layer_a"])] = p["cka"]
    la = sorted({a for a, _ in vals})
    lb = sorted({b for _, b in vals})
    z = np.full((len(la), len(lb)), np.nan)
    for (a, b), v in vals.items():
        z[la.index(a), lb.index(b)] = np.nan if v is None else v
    if run_a == run_b:  # within a run only the upper triangle is stored: mirror it
        z = np.where(np.isnan(z), z.T, z)
    return la, lb, z


def cka_figure(pairs: list[dict], run_a: str, run_b: str, *, dark: bool = False) -> go.Figure:
    """Linear CKA heatmaps: run_a's layers against run_b's, and between the layers of run_a."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=[f"{_esc(run_a)} vs {_esc(run_b)}", f"within {_esc(run_a)}"])
    for col, (a, b) in enumerate(((run_a, run_b), (run_a, run_a)), start=1):
        la, lb, z = cka_matrix(pairs, a, b)
        if not la:
            continue
        fig.add_trace(go.Heatmap(
            z=np.round(z, 4), x=[f"L{k}" for k in lb], y=[f"L{k}" for k in la], zmin=0, zmax=1, colorscale="Viridis",
            showscale=col == 2, colorbar={"title": {"text": "CKA"}},
            text=[[("" if np.isnan(v) else f"{v:.2f}") for v in row] for row in z], texttemplate="%{text}",
            hovertemplate=f"{_esc(a)} %{{y}} · {_esc(b)} %{{x}}<br>CKA %{{z:.4f}}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=f"{_esc(b)} layer", row=1, col=col)
        fig.update_yaxes(title_text=f"{_esc(a)} layer", row=1, col=col)
    fig.update_layout(template=template_name(dark), height=420, margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      title={"text": "Representation similarity (linear CKA, all shared examples)"})
    return fig


PROBE_COLOURS = {"domain": "#e6550d", "task": "#3182bd", "correct": "#2ca02c"}


def probes_figure(probes: dict | None, *, dark: bool = False, title: str = "") -> go.Figure:
    """Probe accuracy minus chance (the class prior) by layer per target, with its task-clustered
    95 % interval; 0 (chance) dashed. Rows of an older probes.json (no interval) are drawn without."""
    fig = go.Figure()
    rows = (probes or {}).get("layers", [])
    layers = sorted({r["layer"] for r in rows})
    for target in [t for t in PROBE_COLOURS if any(r["target"] == t for r in rows)]:
        rs = sorted((r for r in rows if r["target"] == target), key=lambda r: r["layer"])
        colour = PROBE_COLOURS[target]
        diff = [r.get("minus_baseline", r["accuracy"] - r["baseline"]) for r in rs]
        fig.add_trace(go.Scatter(
            x=[r["layer"] for r in rs], y=diff, mode="lines+markers", name=target,
            line={"color": colour, "width": 2}, marker={"color": colour, "size": 8},
            error_y={**_errors(diff, [r.get("minus_baseline_low") for r in rs],
                               [r.get("minus_baseline_high") for r in rs]), "color": colour},
            customdata=[[r["n"], r["n_tasks"], r["cv"], r["baseline"], r["accuracy"],
                         "above chance" if r.get("above_chance") else "not above chance"] for r in rs],
            hovertemplate="layer %{x}<br>probe − chance %{y:+.3f} (accuracy %{customdata[4]:.3f}, chance "
                          "%{customdata[3]:.3f}): %{customdata[5]}<br>n=%{customdata[0]}, %{customdata[1]} tasks, "
                          f"%{{customdata[2]}}<extra>{target}</extra>"))
    if layers:
        fig.add_trace(go.Scatter(x=[layers[0], layers[-1]], y=[0, 0], mode="lines", name="chance (class prior)",
                                 line={"color": REFERENCE_GREY, "dash": "dash", "width": 1.5}, hoverinfo="skip"))
    fig.update_layout(template=template_name(dark), height=400, margin={"l": 50, "r": 20, "t": 50, "b": 40},
                      title={"text": title or "Linear probes by layer: accuracy minus chance (95 % intervals: "
                                              "tasks resampled; for the task target, examples within their task)"},
                      xaxis={"title": "layer (hidden_states index)", "dtick": 1}, legend={"orientation": "h", "y": -0.2},
                      yaxis={"title": "probe accuracy − chance", "range": [-1.02, 1.02]})
    return fig


def classes_table_html(result: dict) -> str:
    """Per domain: task counts per curve class (an HTML table for the standalone file)."""
    head = "<tr><th>domain</th>" + "".join(f"<th>{c}</th>" for c in CLASSES) + "<th>tasks</th></tr>"
    rows = "".join(f"<tr><td>{_esc(d)}</td>" + "".join(f"<td>{e['classes'][c]}</td>" for c in CLASSES)
                   + f"<td>{e['n_tasks']}</td></tr>" for d, e in result["domains"].items())
    return f"<table class='classes'>{head}{rows}</table>"


def compare_section(runs, result: dict, *, include_plotlyjs=False, probes: dict | None = None) -> str:
    """The comparison as an HTML fragment (figures as divs, plotly.js not included): what the
    standalone export and `llm-maps compare --html` show."""

    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
    group = match_runs(runs)

    payload = map_payload(group, aligned_maps(group)["coords"], limit=3000)
    names = [r["name"] for r in result["runs"]]
    parts = [f"<h2 id='compare'>Compare: {', '.join(_esc(n) for n in names)}</h2>",
             f"<p class='note'>{result['n_examples']} shared examples ({result['n_test']} test, "
             f"{result['n_tasks']} tasks); {_esc(result['unit'])}.</p>"]
    figs = [("compare-scaling", scaling_figure(result))]
    parts_after = {"compare-scaling": "<ul class='note'>" + "".join(f"<li>{_esc(e['verdict'])}</li>"
                                                                    for e in result["domains"].values()) + "</ul>"
                   + classes_table_html(result) + f"<p class='note'>{_esc(result['class_rule'])}</p>"}
    figs.append(("compare-falloff", falloff_overlay_figure(result)))
    figs.append(("compare-map", animated_map_figure(payload, arrows=[m["example_id"] for m in result["moved"]["top"][:5]])))
    res = result["alignment"]["procrustes_residual"]
    parts_after["compare-map"] = ("<p class='note'>Procrustes residual per run: " + ", ".join(
        f"{_esc(n)} {'-' if r is None else format(r, '.3f')}" for n, r in zip(names, res))
        + f". Arrows: the five examples whose {result['moved']['k']} nearest train examples changed most.</p>"
        + _movers_html(result))
    if result["cka"]["layer_pairs"]:
        figs.append(("compare-cka", cka_figure(result["cka"]["layer_pairs"], names[0], names[-1])))
    for i, run in enumerate(runs):

        p = read_probes(run) if probes is None else probes.get(names[i])
        if p:
            figs.append((f"compare-probes-{i}", probes_figure(p, title=f"Linear probes of {_esc(names[i])} by layer")))
    for div_id, fig in figs:
        parts.append(fig.to_html(full_html=False, include_plotlyjs=include_plotlyjs, config=config, div_id=div_id))
        include_plotlyjs = False
        parts.append(parts_after.get(div_id, ""))
    return "".join(parts)


def _movers_html(result: dict) -> str:
    names = [r["name"] for r in result["runs"]]
    head = "<tr><th>example</th><th>task</th><th>split</th>" + "".join(f"<th>J {_esc(n)}</th>" for n in names[1:]) + "</tr>"
    rows = "".join(f"<tr><td>{_esc(m['example_id'])}</td><td>{_esc(m['task'])}</td><td>{_esc(m['split'])}</td>"
                   + "".join(f"<td>{'-' if v is None else format(v, '.2f')}</td>" for v in m["jaccard"][1:]) + "</tr>"
                   for m in result["moved"]["top"][:10])
    return f"<table class='movers'>{head}{rows}</table>"


def compare_html(runs, result: dict, out: str | Path, *, plotlyjs: str = "inline") -> Path:
    """`llm-maps compare --html`: the comparison as one standalone HTML file."""
    out = Path(out)
    body = ([plotly_script()] if plotlyjs == "inline" else []) + [
        compare_section(runs, result, include_plotlyjs=False if plotlyjs == "inline" else "cdn")]
    doc = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>LLM Maps · compare</title><style>"
           + STYLE + "</style></head><body>" + "".join(body) + "</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:1rem auto;padding:0 1rem}"
         ".note{color:#666;font-size:0.9rem}table{border-collapse:collapse;font-size:0.85rem;margin:0.5rem 0}"
         "td,th{border:1px solid #ddd;padding:2px 6px}")
