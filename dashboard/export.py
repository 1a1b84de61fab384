"""`llm-maps export RUN --html FILE`: one standalone HTML file with the map, the falloff plot and the
findings (when `llm-maps findings` has written them)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from dashboard import figures as F
from dashboard.bundle import plotly_script
from dashboard.data import RunData, falloff_for, load_run, _stamp
from dashboard.regions_view import add_region_layer
from dashboard.compare_figures import compare_section
from dashboard.filters import view_rows
from dashboard.findings_view import export_section
from dashboard.userpoints import user_points_traces
from llm_maps.comparison import compare_runs
from llm_maps.runfolder import Run, model_label, model_name, run_name


def export_map_figure(data: RunData, *, max_points: int = 20_000, seed: int = 0) -> go.Figure:
    """The map coloured by split and correctness (train / test correct / wrong / unscored), one trace
    per group so the legend toggles them; at most ``max_points`` points (a fixed sample). The train
    trace comes first, so test points are drawn above train points, as on the Map page
    (``figures.draw_order``); users' points added after them are drawn above both."""
    rows, sampled = _sample_rows(data, max_points, seed)
    cat = data.cats["correct"]
    colours = F.category_colours("correct", cat.names)
    order = sorted(range(len(cat.names)), key=lambda code: cat.names[code] != "train")  # train first
    traces = []
    for code in order:
        name, colour = cat.names[code], colours[code]
        r = rows[cat.codes[rows] == code]
        if len(r) == 0:
            continue
        label = "test" if (name == "test: unscored" and not data.has_scores) else name
        traces.append(go.Scattergl(x=np.round(data.x[r], 3), y=np.round(data.y[r], 3), mode="markers", name=label,
                                   text=data.hover[r], hovertemplate="%{text}<extra></extra>",
                                   marker={"color": colour, "size": 4 if len(rows) > 5000 else 6,
                                           "opacity": F.points_opacity(len(rows))}))
    fig = go.Figure(traces)
    title = f"{F.plot_text(data.id)}: {data.n:,} examples" + (f" ({len(rows):,} drawn)" if sampled else "")
    fig.update_layout(template="plotly_white", height=620, title=title, hovermode="closest",
                      legend={"itemsizing": "constant"}, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      xaxis={"visible": False}, yaxis={"visible": False})
    return fig


def local_paths_out(text: str, run_dir: Path, data: RunData) -> str:
    """``text`` without the local paths of the machine that exported it: the run's folder (as given
    and resolved) becomes the run's name, the model's file its name, the home folder ``~``. A note,
    an error or a findings line that named a path then names what a reader can know."""

    swaps: list[tuple[str, str]] = []
    model = str(data.manifest.get("model") or "")
    if model and Path(model).is_absolute():
        swaps.append((model, model_name(data.manifest)))
    for path in {str(run_dir.resolve()), str(run_dir.absolute()), str(run_dir)}:
        if Path(path).is_absolute():
            swaps.append((path, data.id))
    swaps.append((str(Path.home()), "~"))
    for path, name in sorted(swaps, key=lambda s: -len(s[0])):  # the longest first: a run inside home
        if len(path) > 1:
            text = text.replace(path, name)
    return text


def _sample_rows(data: RunData, max_points: int, seed: int):
    return view_rows(data.x, data.y, np.arange(data.n), max_points=max_points, seed=seed)


def export_html(run_dir: str | Path, out: str | Path, *, max_points: int = 20_000, plotlyjs: str = "inline",
                points: list[dict] | None = None, compare: list[str | Path] | None = None) -> Path:
    """Write the standalone HTML file and return its path. ``plotlyjs``: "inline" (works offline;
    the app's own plotly.js bundle of the traces drawn here, 1.5 MB instead of 4.8) or "cdn" (a much
    smaller file that loads the full plotly.js from the CDN). ``points``: users' saved
    points (playground results) drawn on the map as stars, generations with their paths.
    ``compare``: other runs over the same examples; adds the Compare section (this run first)."""

    run_dir, out = Path(run_dir), Path(out)
    data = load_run(str(run_dir), _stamp(run_dir), run_name(run_dir))
    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
    fig = export_map_figure(data, max_points=max_points)
    for trace in user_points_traces(points or [], kind="prompt"):
        fig.add_trace(trace)
    add_region_layer(fig, data)  # the Regions layer (llm-maps regions), when the run has one
    parts = [plotly_script()] if plotlyjs == "inline" else []
    parts.append(fig.to_html(full_html=False, include_plotlyjs=False if plotlyjs == "inline" else "cdn",
                             config=config, div_id="map"))
    if "tokens" in data.views:  # the token map: prompts on the map fitted with the atlas; generation paths
        tokens = data.for_view("tokens")
        fig = export_map_figure(tokens, max_points=max_points)
        fig.update_layout(title=f"{data.id}: token map (train prompts + {data.manifest['token_atlas']['tokens']:,} "
                                "training-reference tokens); generations measured against the token atlas")
        for trace in user_points_traces(points or [], kind="tokens"):
            fig.add_trace(trace)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, config=config, div_id="token-map"))
    stats, source = falloff_for(data)
    if stats is not None:
        groups = F.falloff_groups(stats)
        fig = F.falloff_figure(stats, groups, title="Accuracy vs distance to the nearest training prompt",
                               metric=data.metric)
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, config=config, div_id="falloff"))
        parts.append(f"<p class='note'>Falloff statistics {html.escape(source)}; error bars: "
                     f"{html.escape(F.interval_words(stats))}.</p>")
    else:
        parts.append(f"<p class='note' id='falloff'>No falloff plot: {html.escape(source)}.</p>")
    if compare:

        group = [Run(run_dir)] + [Run(p) for p in compare]
        parts.append(compare_section(group, compare_runs(group, cka="auto")))

    parts.append(export_section(run_dir))
    parts[1 if plotlyjs == "inline" else 0:] = [local_paths_out(p, run_dir, data) for p in
                                                 parts[1 if plotlyjs == "inline" else 0:]]
    m = data.manifest
    c = m.get("counts", {})
    head = (f"<h2>{html.escape(data.id)}</h2><p class='note'>model {html.escape(model_label(m))} · "
            f"{c.get('examples', data.n)} examples ({c.get('train', '?')} train, {c.get('test', '?')} test) · "
            f"layer {m.get('default_layer')} · {html.escape(str(m.get('distance_metric')))} distance · made with LLM Maps</p>")
    doc = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(f"LLM Maps · {data.id}") +
           "</title><style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:1rem auto;padding:0 1rem}"
           ".note{color:#666;font-size:0.9rem}</style></head><body>" + head + "".join(parts) + "</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out
