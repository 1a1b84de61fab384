"""Pure figure builders: the map (Scattergl with typed arrays), its colouring, and the falloff plot.

Figures are plain plotly objects built from numpy arrays (plotly serialises them as base64 typed
arrays). The map's trace layout is fixed so callbacks can patch parts of it:

    data[0]  the points            (customdata = row index in examples.parquet, left out when the
                                    points are every row in order: then row = point number)
    data[1]  neighbour overlay     (lines from the selected point to its nearest train examples)
    data[2]  density heatmap       (only when the points are sampled, e.g. 1M points zoomed out)
    data[3:] legend slots          (LEGEND_SLOTS tiny traces; unused ones hidden)
"""

from __future__ import annotations

import html

from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from llm_maps.falloff import format_slope

POINTS, OVERLAY, DENSITY, LEGEND0 = 0, 1, 2, 3
LEGEND_SLOTS = 30
HOVER_TEXT_MAX = 20_000    # runs above this many rows get a short tooltip; details show below the map
MAX_POINTS = 200_000       # above this many rows in view, draw a density heatmap + a sample

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
           "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
FIXED_COLOURS = {
    "split": {"train": "#b8c0c8", "test": "#1f77b4"},
    "correct": {"train": "#d5d9de", "test: correct": "#2ca02c", "test: wrong": "#d62728",
                "test: unscored": "#8c8c8c"},
    "domain": {"Chollet": "#e6550d", "Reasoning": "#3182bd"},
}
MISSING = "#c0c0c0"
MISSING_BAND = 0.04  # the grey band below a continuous scale for rows without a value

COLOUR_OPTIONS = [  # value, label, kind
    ("split", "split (train / test)", "categorical"),
    ("correct", "correctness", "categorical"),
    ("score", "score", "continuous"),
    ("dist", "distance to train", "continuous"),
    ("domain", "domain", "categorical"),
    ("task", "task", "categorical"),
    ("category", "category", "categorical"),
    ("out_len", "output length", "continuous"),
]
COLOUR_KIND = {v: k for v, _, k in COLOUR_OPTIONS}
CONTINUOUS_SCALES = {"score": "RdYlGn", "dist": "Viridis", "out_len": "Cividis"}
NEEDS_SCORES = ("correct", "score", "out_len")  # colours a run without scores cannot offer


OUTCOME = "outcome"  # "condition outcome" of two conditions (dashboard/conditions_view.py), runs with conditions


def has_conditions(data) -> bool:
    from dashboard.conditions_view import conditions_of

    cd = conditions_of(data)
    return cd is not None and bool(cd.names)


def colour_choice(data, colour) -> str:
    """``colour`` if this run can colour by it, else "split"."""
    if colour == OUTCOME:
        return OUTCOME if has_conditions(data) else "split"
    return "split" if colour not in COLOUR_KIND or (colour in NEEDS_SCORES and not data.has_scores) else colour


def colour_dropdown(data, *, note: bool = False) -> list[dict]:
    """The colour dropdown's options; those needing scores are disabled on a run without them
    (``note``: say so in the correctness and score labels). "condition outcome" only on a run with
    conditions."""
    out = [{"label": lbl + (" (no scores yet)" if note and v in ("correct", "score") and not data.has_scores else ""),
            "value": v, "disabled": v in NEEDS_SCORES and not data.has_scores}
           for v, lbl, _ in COLOUR_OPTIONS]
    if has_conditions(data):
        out.append({"label": "condition outcome (B vs A)", "value": OUTCOME, "disabled": False})
    return out

EXPORT_CONFIG = {"displaylogo": False, "scrollZoom": True,
                 "toImageButtonOptions": {"format": "png", "scale": 2},
                 "modeBarButtonsToAdd": ["lasso2d", "select2d"]}
LEGEND_BG = {False: "rgba(255,255,255,0.6)", True: "rgba(0,0,0,0.4)"}


def template_name(dark: bool) -> str:
    return "plotly_dark" if dark else "plotly_white"


@dataclass
class ColourSpec:
    values: np.ndarray            # [M] codes (categorical) or floats with NaN mapped (continuous)
    colorscale: list
    cmin: float
    cmax: float
    legend: list[tuple[str, str]]  # (name, colour) for categorical
    title: str
    continuous: bool


def stepped_scale(colours: list[str]) -> list:
    """A colour scale mapping integer code k (cmin=-0.5, cmax=K-0.5) to colours[k]."""
    k = max(len(colours), 1)
    scale = []
    for i, c in enumerate(colours or ["#888888"]):
        scale += [[i / k, c], [(i + 1) / k, c]]
    return scale


def category_colours(column: str, names: list[str]) -> list[str]:
    fixed = FIXED_COLOURS.get(column, {})
    return [fixed.get(n) or (MISSING if n == "(none)" else PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)]


def colour_spec(data, colour_by: str, rows: np.ndarray, dist: np.ndarray | None = None,
                pair: tuple[str | None, str | None] | None = None) -> ColourSpec:
    """How to colour ``rows`` of a run by one of COLOUR_OPTIONS, or by OUTCOME of the conditions
    ``pair`` (A, B)."""
    if colour_by == OUTCOME:
        from dashboard.conditions_view import outcome_spec

        return outcome_spec(data, np.asarray(rows), pair)
    label = dict((v, lbl) for v, lbl, _ in COLOUR_OPTIONS).get(colour_by, colour_by)
    if COLOUR_KIND.get(colour_by) == "categorical":
        cat = data.cats[colour_by]
        colours = category_colours(colour_by, cat.names)
        codes = cat.codes[rows]
        present = np.bincount(codes, minlength=len(cat.names)) > 0 if len(codes) else np.zeros(len(cat.names), bool)
        legend = [(n, c) for n, c, p in zip(cat.names, colours, present) if p]
        return ColourSpec(codes, stepped_scale(colours), -0.5, len(colours) - 0.5, legend, label, False)
    source = {"score": data.score, "dist": data.dist if dist is None else dist, "out_len": data.out_len}[colour_by]
    vals = np.asarray(source[rows], dtype=np.float32)
    finite = np.isfinite(vals)
    lo, hi = (float(vals[finite].min()), float(vals[finite].max())) if finite.any() else (0.0, 1.0)
    if colour_by == "score":
        lo, hi = 0.0, 1.0
    if hi <= lo:
        hi = lo + 1.0
    import plotly.colors as pc

    base = pc.get_colorscale(CONTINUOUS_SCALES[colour_by])
    if finite.all():
        return ColourSpec(vals, base, lo, hi, [], label, True)
    g = MISSING_BAND
    span = hi - lo
    vals = np.where(finite, vals, lo - span * g).astype(np.float32)
    f = g / (1 + g)
    scale = [[0.0, MISSING], [f, MISSING]] + [[f + p * (1 - f), c] for p, c in base]
    return ColourSpec(vals, scale, lo - span * g, hi, [], label + " (grey: none)", True)


def typed_array(values: np.ndarray) -> dict:
    """A numpy array as a plotly.js typed-array spec (base64), for payloads built outside a Figure
    (e.g. a dash Patch), which would otherwise be sent as JSON lists."""
    import base64

    values = np.ascontiguousarray(values)
    code = {np.dtype(np.uint8): "u1", np.dtype(np.uint16): "u2", np.dtype(np.int32): "i4",
            np.dtype(np.float32): "f4", np.dtype(np.float64): "f8"}.get(values.dtype)
    if code is None:
        values, code = values.astype(np.float32), "f4"
    return {"dtype": code, "bdata": base64.b64encode(values.tobytes()).decode("ascii")}


def points_marker(spec: ColourSpec, n_points: int) -> dict:
    size = 6 if n_points < 5_000 else 4 if n_points < 50_000 else 3
    marker = {"color": spec.values, "colorscale": spec.colorscale, "cmin": spec.cmin, "cmax": spec.cmax,
              "size": size, "opacity": 0.85 if n_points < 50_000 else 0.7, "showscale": spec.continuous}
    if spec.continuous:
        marker["colorbar"] = {"title": {"text": spec.title}, "thickness": 14}
    return marker


def plot_text(value) -> str:
    """Text for plotly to draw as text: plotly renders a subset of HTML in legends, hovers,
    annotations and titles (``<a href>``, ``<span style>``, ``<b>``, ``<br>``...), so ``&``, ``<`` and
    ``>`` of user or data text are escaped (plotly shows ``&lt;`` as ``<``). The one rule for every
    figure the app, the playground and the HTML export draw (assets/dashboard.js ``plotText`` in
    the browser)."""
    return html.escape(str(value), quote=False)


def legend_traces(spec: ColourSpec) -> list[go.Scatter]:
    """LEGEND_SLOTS tiny traces carrying the categorical legend (unused slots hidden); plain SVG
    traces, since every WebGL trace costs a draw pass."""
    out = []
    entries = spec.legend[:LEGEND_SLOTS]
    for i in range(LEGEND_SLOTS):
        if i < len(entries):
            name, colour = entries[i]
            out.append(go.Scatter(x=[None], y=[None], mode="markers", name=plot_text(name), showlegend=True,
                                  marker={"color": colour, "size": 9}, hoverinfo="skip"))
        else:
            out.append(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                  name=""))
    return out


def hover_text(data, rows: np.ndarray) -> np.ndarray | None:
    """Per-point tooltips only for small runs; larger ones show details below the map on hover."""
    return data.hover[rows] if data.n <= HOVER_TEXT_MAX else None


SHORT_HOVER = "%{x:.3g}, %{y:.3g} · details below the map<extra></extra>"


def is_identity(rows: np.ndarray, n: int) -> bool:
    return len(rows) == n and (n == 0 or (int(rows[0]) == 0 and int(rows[-1]) == n - 1))


def points_trace(data, rows: np.ndarray, spec: ColourSpec) -> go.Scattergl:
    """The points: float32 coordinates, typed-array colours; customdata (int32 row numbers) only
    when the points are not simply every row in order."""
    rows = np.asarray(rows, dtype=np.int32)
    text = hover_text(data, rows)
    extra = {} if is_identity(rows, data.n) else {"customdata": rows}
    return go.Scattergl(
        x=data.x[rows], y=data.y[rows], mode="markers", name="examples", showlegend=False,
        marker=points_marker(spec, len(rows)), text=text, **extra,
        hovertemplate="%{text}<extra></extra>" if text is not None else SHORT_HOVER)


def overlay_spec(data, row: int | None, neighbours: list[tuple[int, float | None]]) -> dict:
    """The neighbour overlay's arrays (what the browser restyles data[1] with)."""
    if row is None:
        return {"x": [], "y": [], "size": [], "color": [], "text": []}
    xs, ys, sizes, colours, text = [], [], [], [], []
    x0, y0 = float(data.x[row]), float(data.y[row])
    for j, d in neighbours:
        xs += [x0, float(data.x[j]), None]
        ys += [y0, float(data.y[j]), None]
        sizes += [16, 11, 0]
        colours += ["#000000", "#ff7f0e", "#ff7f0e"]
        text += ["selected", f"neighbour, distance {d:.4g}" if d is not None else "neighbour", ""]
    if not neighbours:
        xs, ys, sizes, colours, text = [x0], [y0], [16], ["#000000"], ["selected"]
    return {"x": xs, "y": ys, "size": sizes, "color": colours, "text": text}


def overlay_trace(data, row: int | None, neighbours: list[tuple[int, float | None]]) -> go.Scattergl:
    """Lines from the selected point to its nearest train examples, with both ends marked."""
    o = overlay_spec(data, row, neighbours)
    return go.Scattergl(x=o["x"], y=o["y"], mode="lines+markers", name="neighbours", showlegend=False,
                        line={"color": "#ff7f0e", "width": 1.5}, text=o["text"], hoverinfo="text",
                        marker={"size": o["size"], "color": o["color"], "symbol": "circle-open",
                                "line": {"width": 2}})


def density_trace(x: np.ndarray, y: np.ndarray, rows: np.ndarray | None, *, bins: int = 200) -> go.Heatmap:
    """Counts on a bins × bins grid (log-scaled colour) of all rows, for views too big to draw."""
    if rows is None or len(rows) == 0:
        return go.Heatmap(z=[], visible=False, showscale=False, hoverinfo="skip", name="density")
    xs, ys = x[rows], y[rows]
    ok = np.isfinite(xs) & np.isfinite(ys)
    h, xe, ye = np.histogram2d(xs[ok], ys[ok], bins=bins)
    z = np.log10(h.T + 1).astype(np.float32)
    z[h.T == 0] = np.nan
    return go.Heatmap(z=z, x=((xe[:-1] + xe[1:]) / 2).astype(np.float32), y=((ye[:-1] + ye[1:]) / 2).astype(np.float32),
                      colorscale="Greys", showscale=False, opacity=0.45, hoverinfo="skip", name="density",
                      zsmooth=False)


def map_figure(data, rows: np.ndarray, spec: ColourSpec, *, selected: int | None = None,
               neighbours=(), density_rows: np.ndarray | None = None, dark: bool = False,
               uirevision: str = "map") -> go.Figure:
    fig = go.Figure([points_trace(data, rows, spec), overlay_trace(data, selected, list(neighbours)),
                     density_trace(data.x, data.y, density_rows)] + legend_traces(spec))
    fig.update_layout(
        template=template_name(dark), uirevision=uirevision,
        margin={"l": 10, "r": 10, "t": 30, "b": 10}, height=640, dragmode="zoom", hovermode="closest",
        xaxis={"showgrid": False, "zeroline": False, "showticklabels": False, "title": None},
        yaxis={"showgrid": False, "zeroline": False, "showticklabels": False, "title": None},
        legend={"title": {"text": spec.title}, "itemsizing": "constant", "bgcolor": LEGEND_BG[dark]},
        title={"text": map_title(len(rows), data.n, density_rows is not None),
               "font": {"size": 13}, "x": 0.01})
    return fig


def view_figure(data, *, colour: str = "split", layer: int | None = None, split=None, domain=None, task=None,
                score=None, dist=None, search: str | None = "", selected: int | None = None, dark: bool = False,
                xrange=None, yrange=None, uirevision: str | None = None,
                pair: tuple[str | None, str | None] | None = None) -> go.Figure:
    """The map figure for one view: the rows passing the filters (a slider at its full range
    constrains nothing), a sample plus a density layer above MAX_POINTS rows in view, coloured by
    ``colour`` (OUTCOME: of the conditions ``pair``). The Map page's first figure and every figure
    of a large run, the playground's map and the server's warm-up all come from here."""
    from dashboard.filters import Filters, active_range, filter_mask, value_bounds, view_rows

    layer_dist = data.distances(layer) if layer is not None else data.dist
    if split is not None and not len(split):
        split = ["\0none"]  # nothing ticked: no rows (the browser does the same)
    f = Filters.make(split=split, domain=domain, task=task,
                     score=active_range(score, value_bounds(data.score)) if data.has_scores else None,
                     dist=active_range(dist, value_bounds(data.dist)), search=search)
    rows = np.flatnonzero(filter_mask(data, f, layer_dist))
    drawn, sampled = view_rows(data.x, data.y, rows, max_points=MAX_POINTS, xrange=xrange, yrange=yrange)
    spec = colour_spec(data, colour, drawn, layer_dist, pair)
    return map_figure(data, drawn, spec, selected=selected,
                      neighbours=data.neighbours(selected) if selected is not None else (),
                      density_rows=rows if sampled else None, dark=dark,
                      uirevision=data.id if uirevision is None else uirevision)


def map_title(drawn: int, n: int, sampled: bool = False) -> str:
    return f"{drawn:,} of {n:,} examples" + (" (sampled; zoom in for all)" if sampled else "")


def client_options(data) -> dict:
    """How the browser colours points itself (mirrors ``colour_spec``), per colour option."""
    import plotly.colors as pc

    out = {}
    for value, label, kind in COLOUR_OPTIONS:
        if kind == "categorical":
            names = data.cats[value].names
            out[value] = {"kind": kind, "title": label, "names": names, "colours": category_colours(value, names)}
        else:
            out[value] = {"kind": kind, "title": label, "scale": pc.get_colorscale(CONTINUOUS_SCALES[value]),
                          "fixed": [0.0, 1.0] if value == "score" else None}
    if has_conditions(data):
        from dashboard.conditions_view import client_option

        out[OUTCOME] = client_option()
    return out


# --- falloff ------------------------------------------------------------------------------

def falloff_groups(stats: dict, domains: list[str] | None = None, *, include_all: bool = True) -> list[str]:
    names = [k for k in stats if k != "all"]
    if domains:
        names = [k for k in names if k in domains]
    return (["all"] if include_all else []) + names


def falloff_figure(stats: dict, groups: list[str], *, layout: str = "overlay", title: str = "",
                   dark: bool = False, metric: str = "cosine") -> go.Figure:
    """Accuracy per distance bin with Wilson 95 % intervals, one line per group (overlaid) or one
    panel per group (side by side). Bin counts are shown as text and in the hover."""
    from plotly.subplots import make_subplots

    groups = [g for g in groups if g in stats and stats[g]["bins"]]
    side = layout == "side" and len(groups) > 1
    fig = make_subplots(rows=1, cols=len(groups), shared_yaxes=True,
                                subplot_titles=[plot_text(g) for g in groups]) if side else go.Figure()
    colours = {"all": "#555555", "Chollet": FIXED_COLOURS["domain"]["Chollet"],
               "Reasoning": FIXED_COLOURS["domain"]["Reasoning"]}
    for i, g in enumerate(groups):
        entry = stats[g]
        bins = [b for b in entry["bins"] if b["n"]]
        x = [b["median"] for b in bins]
        y = [b["accuracy"] for b in bins]
        colour = colours.get(g, PALETTE[i % len(PALETTE)])
        slope = format_slope(entry.get("trend"))
        name = (f"{plot_text(g)} · acc {entry['accuracy']:.2f}, n={entry['n']}"
                + (f" · slope {slope} log-odds per unit distance" if slope else " · slope: not enough variation"))
        # bin counts above each error bar (never on the marker or the bar itself)
        for b in bins:
            fig.add_annotation(x=b["median"], y=b["high"], yshift=9, text=f"n={b['n']}", showarrow=False,
                               font={"size": 10, "color": colour}, xref=f"x{i + 1 if side and i else ''}",
                               yref=f"y{i + 1 if side and i else ''}", name="bin-count")
        trace = go.Scatter(
            x=x, y=y, mode="lines+markers", name=name, line={"color": colour, "width": 2},
            marker={"size": 8, "color": colour},
            error_y=bins_error_y(bins, colour),
            customdata=[[b["lo"], b["hi"], b["n"], b["correct"], b["low"], b["high"]] for b in bins],
            hovertemplate=("distance %{customdata[0]:.4g}–%{customdata[1]:.4g}<br>accuracy %{y:.3f} "
                           "[%{customdata[4]:.3f}, %{customdata[5]:.3f}]<br>%{customdata[3]} / %{customdata[2]} correct"
                           f"<extra>{plot_text(g)}</extra>"))
        if side:
            fig.add_trace(trace, row=1, col=i + 1)
        else:
            fig.add_trace(trace)
    return falloff_layout(fig, side=side, dark=dark, title=title, height=480, legend_y=-0.18,
                          x_title=f"distance to nearest train prompt ({metric}, bin median)")


def bins_error_y(bins, colour: str) -> dict:
    """Asymmetric error bars from each bin's accuracy to its interval (``low``, ``high``)."""
    return {"type": "data", "symmetric": False, "array": [b["high"] - b["accuracy"] for b in bins],
            "arrayminus": [b["accuracy"] - b["low"] for b in bins], "color": colour, "thickness": 1.2}


def falloff_layout(fig: go.Figure, *, side: bool, dark: bool, title: str, height: int, legend_y: float,
                   x_title: str) -> go.Figure:
    """The layout every accuracy-vs-distance figure shares (one panel, or domains side by side)."""
    fig.update_layout(template=template_name(dark), height=height, title={"text": plot_text(title)},
                      margin={"l": 50, "r": 20, "t": 60, "b": 50}, legend={"orientation": "h", "y": legend_y})
    fig.update_yaxes(range=[-0.02, 1.12])
    if side:
        fig.update_yaxes(title_text="accuracy (95 % interval)", col=1)
    else:
        fig.update_layout(yaxis_title="accuracy (95 % interval)")
    fig.update_xaxes(title_text=x_title)
    return fig
