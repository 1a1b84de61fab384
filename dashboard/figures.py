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
from llm_maps.falloff import bin_interval, format_slope
from llm_maps.resample import MIN_TASKS_FOR_INTERVAL
from dashboard.conditions_data import OUTCOME_COLOURS, OUTCOME_NOTE, OUTCOME_TITLE, client_option, conditions_of, outcome_codes, outcome_legend, outcome_title, scored_under_both
from dashboard.filters import Filters, active_range, filter_mask, value_bounds, view_rows

POINTS, OVERLAY, DENSITY, LEGEND0 = 0, 1, 2, 3
LEGEND_SLOTS = 30
HOVER_TEXT_MAX = 20_000    # runs above this many rows get a short tooltip; details show below the map
MAX_POINTS = 200_000       # above this many rows in view, draw a density heatmap + a sample

# Every marker and line colour the figures use meets WCAG AA's 3:1 for graphics against the plot
# background of both themes (plotly_white's white and plotly_dark's #111111: relative luminance
# between about 0.12 and 0.30), so a figure the browser switches between themes stays readable
# without being redrawn. Text uses the template's font colour (4.5:1 in both); text on a colour
# (the falloff's bin counts) is black on a colour of luminance >= 0.18. tests/test_contrast.py checks
# these lists and, in Chromium, every drawn text and marker.
LIGHT_BG, DARK_BG = "#ffffff", "#111111"
PALETTE = ["#1f77b4", "#d95f02", "#2ca02c", "#d62728", "#9467bd", "#a0673a", "#d0509a", "#7f7f7f",
           "#8c8c00", "#1794a5", "#5c84e3", "#c86f00", "#00a36a", "#d2643c", "#ab6ac7", "#b27f00",
           "#cd5d8e", "#0099b3", "#759819", "#9174d9"]
TRAIN_GREY = "#8a9099"
FIXED_COLOURS = {
    "split": {"train": TRAIN_GREY, "test": "#1f77b4"},
    "correct": {"train": TRAIN_GREY, "test: correct": "#2ca02c", "test: wrong": "#d62728",
                "test: unscored": "#9467bd"},
    "domain": {"Chollet": "#e6550d", "Reasoning": "#3182bd"},
}
NEIGHBOUR_COLOUR = "#d81b9c"  # the selected point, its neighbours and the lines to them (not a domain's orange)
REFERENCE_GREY = "#808080"    # reference lines (zero, chance)
MISSING = TRAIN_GREY
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
# continuous scales within the same luminance band: hue carries the order (red-amber-green for
# scores, a viridis-like and a cividis-like sequence)
SCORE_SCALE = [[0.0, "#d02c2a"], [0.25, "#cf5500"], [0.5, "#bd7800"], [0.75, "#9c8a00"], [1.0, "#2d9a00"]]
DIST_SCALE = [[i / 6, c] for i, c in enumerate(["#7847d0", "#3767e6", "#0087ab", "#00968a", "#00a34a", "#769c00",
                                                 "#9c9300"])]
LENGTH_SCALE = [[i / 6, c] for i, c in enumerate(["#446ab1", "#57759c", "#6b7d8b", "#86826e", "#93894e", "#a08c24",
                                                   "#a98d00"])]
CONTINUOUS_SCALES = {"score": SCORE_SCALE, "dist": DIST_SCALE, "out_len": LENGTH_SCALE}
NEEDS_SCORES = ("correct", "score", "out_len")  # colours a run without scores cannot offer


OUTCOME = "outcome"  # "condition outcome" of two conditions (dashboard/conditions_view.py), runs with conditions


def has_conditions(data) -> bool:
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
    base = CONTINUOUS_SCALES[colour_by]
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


DIM_OPACITY = 0.2  # train points with "dim train" on


def points_opacity(n_points: int) -> float:
    """Full opacity up to 50k points (the colours meet WCAG contrast at full opacity; test points
    are drawn above train points, so nothing needs to show through), 0.7 for denser maps."""
    return 1.0 if n_points < 50_000 else 0.7


def points_marker(spec: ColourSpec, n_points: int, dim: np.ndarray | None = None) -> dict:
    """The points' marker; ``dim``: [M] bool, points drawn faint (train points with "dim train")."""
    size = 6 if n_points < 5_000 else 4 if n_points < 50_000 else 3
    opacity = points_opacity(n_points)
    marker = {"color": spec.values, "colorscale": spec.colorscale, "cmin": spec.cmin, "cmax": spec.cmax,
              "size": size, "opacity": opacity, "showscale": spec.continuous}
    if dim is not None and dim.any():
        marker["opacity"] = np.where(dim, DIM_OPACITY, opacity).astype(np.float32)
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


def draw_order(data, rows: np.ndarray) -> np.ndarray:
    """``rows`` in drawing order: train rows first, then the others (test), each in row order, so
    test points are drawn above train points in every colouring (assets/dashboard.js ``drawOrder``)."""
    rows = np.asarray(rows)
    train = data.is_train[rows]
    return np.concatenate([rows[train], rows[~train]]) if train.any() and not train.all() else rows


def points_trace(data, rows: np.ndarray, spec: ColourSpec, *, dim_train: bool = False) -> go.Scattergl:
    """The points: float32 coordinates, typed-array colours; customdata (int32 row numbers) only
    when the points are not simply every row in order. ``dim_train``: train points faint."""
    rows = np.asarray(rows, dtype=np.int32)
    text = hover_text(data, rows)
    extra = {} if is_identity(rows, data.n) else {"customdata": rows}
    return go.Scattergl(
        x=data.x[rows], y=data.y[rows], mode="markers", name="examples", showlegend=False,
        marker=points_marker(spec, len(rows), data.is_train[rows] if dim_train else None), text=text, **extra,
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
        colours += [NEIGHBOUR_COLOUR] * 3
        text += ["selected", f"neighbour, distance {d:.4g}" if d is not None else "neighbour", ""]
    if not neighbours:
        xs, ys, sizes, colours, text = [x0], [y0], [16], [NEIGHBOUR_COLOUR], ["selected"]
    return {"x": xs, "y": ys, "size": sizes, "color": colours, "text": text}


def overlay_trace(data, row: int | None, neighbours: list[tuple[int, float | None]]) -> go.Scattergl:
    """Lines from the selected point to its nearest train examples, with both ends marked."""
    o = overlay_spec(data, row, neighbours)
    return go.Scattergl(x=o["x"], y=o["y"], mode="lines+markers", name="neighbours", showlegend=False,
                        line={"color": NEIGHBOUR_COLOUR, "width": 1.5}, text=o["text"], hoverinfo="text",
                        marker={"size": o["size"], "color": o["color"], "symbol": "circle-open",
                                "line": {"width": 2}, "opacity": 1})


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
               uirevision: str = "map", dim_train: bool = False, note: str = "") -> go.Figure:
    """The map of ``rows``, drawn in the order given (``view_figure`` puts train rows first)."""
    fig = go.Figure([points_trace(data, rows, spec, dim_train=dim_train),
                     overlay_trace(data, selected, list(neighbours)),
                     density_trace(data.x, data.y, density_rows)] + legend_traces(spec))
    fig.update_layout(
        template=template_name(dark), uirevision=uirevision,
        margin={"l": 10, "r": 10, "t": 30, "b": 10}, height=640, dragmode="zoom", hovermode="closest",
        xaxis={"showgrid": False, "zeroline": False, "showticklabels": False, "title": None},
        yaxis={"showgrid": False, "zeroline": False, "showticklabels": False, "title": None},
        legend={"title": {"text": spec.title}, "itemsizing": "constant", "bgcolor": LEGEND_BG[dark]},
        title={"text": map_title(len(rows), data.n, density_rows is not None) + note,
               "font": {"size": 13}, "x": 0.01})
    return fig


def view_figure(data, *, colour: str = "split", layer: int | None = None, split=None, domain=None, task=None,
                score=None, dist=None, search: str | None = "", selected: int | None = None, dark: bool = False,
                xrange=None, yrange=None, uirevision: str | None = None,
                pair: tuple[str | None, str | None] | None = None, dim_train: bool = False,
                region: int | None = None) -> go.Figure:
    """The map figure for one view: the rows passing the filters (a slider at its full range
    constrains nothing), a sample plus a density layer above MAX_POINTS rows in view, coloured by
    ``colour`` (OUTCOME: of the conditions ``pair``, only the examples scored under both), train
    points drawn first (``draw_order``: test points above them), faint with ``dim_train``; ``region``:
    only that region of regions.json (dashboard/regions_view.py). The Map
    page's first figure and every figure of a large run, the playground's map and the server's
    warm-up all come from here."""

    layer_dist = data.distances(layer) if layer is not None else data.dist
    if split is not None and not len(split):
        split = ["\0none"]  # nothing ticked: no rows (the browser does the same)
    f = Filters.make(split=split, domain=domain, task=task,
                     score=active_range(score, value_bounds(data.score)) if data.has_scores else None,
                     dist=active_range(dist, value_bounds(data.dist)), search=search, region=region)
    rows = np.flatnonzero(filter_mask(data, f, layer_dist))
    note = ""
    if colour == OUTCOME:  # the outcome of two conditions: only the examples scored under both

        rows, note = scored_under_both(data, rows, pair), OUTCOME_NOTE
    drawn, sampled = view_rows(data.x, data.y, rows, max_points=MAX_POINTS, xrange=xrange, yrange=yrange)
    drawn = draw_order(data, drawn)
    spec = colour_spec(data, colour, drawn, layer_dist, pair)
    return map_figure(data, drawn, spec, selected=selected,
                      neighbours=data.neighbours(selected) if selected is not None else (),
                      density_rows=rows if sampled else None, dark=dark,
                      uirevision=data.id if uirevision is None else uirevision, dim_train=dim_train, note=note)


def map_title(drawn: int, n: int, sampled: bool = False) -> str:
    return f"{drawn:,} of {n:,} examples" + (" (sampled; zoom in for all)" if sampled else "")


def client_options(data) -> dict:
    """How the browser colours points itself (mirrors ``colour_spec``), per colour option."""
    out = {}
    for value, label, kind in COLOUR_OPTIONS:
        if kind == "categorical":
            names = data.cats[value].names
            out[value] = {"kind": kind, "title": label, "names": names, "colours": category_colours(value, names)}
        else:
            out[value] = {"kind": kind, "title": label, "scale": CONTINUOUS_SCALES[value],
                          "fixed": [0.0, 1.0] if value == "score" else None}
    if has_conditions(data):

        out[OUTCOME] = client_option()
    return out


# --- falloff ------------------------------------------------------------------------------

def falloff_groups(stats: dict, domains: list[str] | None = None, *, include_all: bool = True) -> list[str]:
    names = [k for k in stats if k != "all"]
    if domains:
        names = [k for k in names if k in domains]
    return (["all"] if include_all else []) + names


ALL_GREY = "#7a7a7a"  # the "all" line of falloff plots


def relative_luminance(colour: str) -> float:
    """WCAG 2 relative luminance of ``#rrggbb`` (or ``#rgb``)."""
    h = colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    rgb = (int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast_ratio(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two colours (1 to 21)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_on(colour: str) -> str:
    """Black or white, whichever reads better on ``colour`` (on the palettes' colours: >= 4.5:1)."""
    return "#000000" if contrast_ratio("#000000", colour) >= contrast_ratio("#ffffff", colour) else "#ffffff"


COUNT_FONT, COUNT_CHAR_PX, COUNT_PAD_PX, COUNT_GAP_PX, COUNT_LANE_PX = 10, 6.2, 6, 6, 15


def count_lanes(groups: list[list[tuple[float, str]]], *, span: float, plot_px: float) -> list[list[int]]:
    """Rows ("lanes") for the bin-count labels of each group, so no two labels overlap: each group
    gets lanes of its own (their colour says whose they are), and a label that would touch the one
    before it on its lane, on a plot ``plot_px`` wide showing ``span`` data units, moves to the next
    lane of its group. Returns each label's lane, group by group (labels given sorted by x)."""
    per_px = span / max(plot_px, 1.0)
    out, offset = [], 0
    for labels in groups:
        ends: list[float] = []  # right edge of the last label on each of this group's lanes
        lanes = []
        for x, text in labels:
            half = (len(text) * COUNT_CHAR_PX + COUNT_PAD_PX) / 2 * per_px
            lane = next((k for k, end in enumerate(ends) if x - half >= end + COUNT_GAP_PX * per_px), len(ends))
            if lane == len(ends):
                ends.append(0.0)
            ends[lane] = x + half
            lanes.append(offset + lane)
        out.append(lanes)
        offset += max(len(ends), 1)
    return out


def falloff_figure(stats: dict, groups: list[str], *, layout: str = "overlay", title: str = "",
                   dark: bool = False, metric: str = "cosine", min_width: int = 700) -> go.Figure:
    """Accuracy per distance bin with 95 % intervals (over tasks where the stats have them, else
    Wilson's over examples), one line per group (overlaid) or one
    panel per group (side by side). Bin counts are shown above the plot in the group's colour, one
    row of labels per group (more when they would touch on a figure ``min_width`` pixels wide: no
    two overlap), and in the hover."""
    from plotly.subplots import make_subplots

    groups = [g for g in groups if g in stats and stats[g]["bins"]]
    side = layout == "side" and len(groups) > 1
    fig = make_subplots(rows=1, cols=len(groups), shared_yaxes=True,
                                subplot_titles=[plot_text(g) for g in groups]) if side else go.Figure()
    colours = {"all": ALL_GREY, "Chollet": FIXED_COLOURS["domain"]["Chollet"],
               "Reasoning": FIXED_COLOURS["domain"]["Reasoning"]}
    counts = []  # per group: (colour, x axis, [(x, text)])
    for i, g in enumerate(groups):
        entry = stats[g]
        bins = [b for b in entry["bins"] if b["n"]]
        x = [b["median"] for b in bins]
        y = [b["accuracy"] for b in bins]
        colour = colours.get(g, PALETTE[i % len(PALETTE)])
        slope = format_slope(entry.get("trend"))
        name = (f"{plot_text(g)} · acc {entry['accuracy']:.2f}, n={entry['n']}"
                + (f" · slope {slope} log-odds per unit distance" if slope else " · slope: not enough variation"))
        counts.append((colour, f"x{i + 1 if side and i else ''}", [(b["median"], f"n={b['n']}") for b in bins]))
        trace = go.Scatter(
            x=x, y=y, mode="lines+markers", name=name, line={"color": colour, "width": 2},
            marker={"size": 8, "color": colour},
            error_y=bins_error_y(bins, colour),
            customdata=[[b["lo"], b["hi"], b["n"], b["correct"], *bin_interval(b)] for b in bins],
            hovertemplate=("distance %{customdata[0]:.4g}–%{customdata[1]:.4g}<br>accuracy %{y:.3f} "
                           "[%{customdata[4]:.3f}, %{customdata[5]:.3f}] (%{customdata[6]})<br>%{customdata[3]} / "
                           f"%{{customdata[2]}} correct<extra>{plot_text(g)}</extra>"))
        if side:
            fig.add_trace(trace, row=1, col=i + 1)
        else:
            fig.add_trace(trace)
    fig = falloff_layout(fig, side=side, dark=dark, title=title, height=480, legend_y=-0.18,
                         x_title=f"distance to nearest train prompt ({metric}, bin median)")
    return add_bin_counts(fig, counts, side=side, plot_px=(min_width - 70) / (len(groups) if side else 1))


def add_bin_counts(fig: go.Figure, counts: list[tuple[str, str, list[tuple[float, str]]]], *, side: bool,
                   plot_px: float) -> go.Figure:
    """The bin counts as labels in lanes above the data (``count_lanes``): black or white text on
    the group's colour, so they read in both themes. Each x axis gets an explicit range (the lanes
    are laid out for it) and the y axis room above 1 for the lanes."""
    if not counts:
        return fig
    xs = {}
    for _, axis, labels in counts:
        xs.setdefault(axis, []).extend(x for x, _ in labels)
    ranges = {}
    for axis, vals in xs.items():
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.06 or max(abs(lo) * 0.06, 1e-3)
        ranges[axis] = (lo - pad, hi + pad)
    lanes_used = 0
    by_axis: dict[str, list[int]] = {}
    for k, (_, axis, _) in enumerate(counts):
        by_axis.setdefault(axis, []).append(k)
    lane_of: dict[int, list[int]] = {}
    for axis, ks in by_axis.items():
        lo, hi = ranges[axis]
        lanes = count_lanes([counts[k][2] for k in ks], span=hi - lo, plot_px=plot_px)
        for k, ls in zip(ks, lanes):
            lane_of[k] = ls
            lanes_used = max(lanes_used, max(ls, default=-1) + 1)
    top = max(1.12, 1.04 + 0.045 * lanes_used)
    for k, (colour, axis, labels) in enumerate(counts):
        for (x, text), lane in zip(labels, lane_of[k]):
            fig.add_annotation(x=x, y=top, yanchor="top", yshift=-2 - COUNT_LANE_PX * lane, text=text,
                               showarrow=False, font={"size": COUNT_FONT, "color": text_on(colour)},
                               bgcolor=colour, borderpad=1, xref=axis, yref=axis.replace("x", "y"),
                               name="bin-count")
    fig.update_yaxes(range=[-0.02, top], tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1])  # accuracy: no tick above 1
    for axis, (lo, hi) in ranges.items():
        fig.update_layout({("xaxis" + axis[1:]): {"range": [lo, hi]}})
    return fig


def interval_words(stats) -> str:
    """What the error bars of these falloff statistics are: over tasks, Wilson's over examples, or
    both (a bin holding fewer than MIN_TASKS_FOR_INTERVAL tasks has no interval over tasks)."""
    kinds = {bin_interval(b)[2] for g in stats.values() for b in g.get("bins", []) if b.get("n")}
    if kinds == {"over tasks"}:
        return "95 % intervals over tasks (a task bootstrap: examples within a task are not independent)"
    if "over tasks" in kinds:
        return ("95 % intervals over tasks (a task bootstrap), Wilson's over examples where a bin holds fewer than "
                f"{MIN_TASKS_FOR_INTERVAL} tasks (the hover and the table say which)")
    return "Wilson 95 % intervals (examples as independent)"


def bins_error_y(bins, colour: str) -> dict:
    """Asymmetric error bars from each bin's accuracy to its interval (bin_interval)."""
    iv = [bin_interval(b) for b in bins]
    return {"type": "data", "symmetric": False, "array": [hi - b["accuracy"] for b, (_, hi, _) in zip(bins, iv)],
            "arrayminus": [b["accuracy"] - lo for b, (lo, _, _) in zip(bins, iv)], "color": colour, "thickness": 1.2}


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


def outcome_spec(data, rows: np.ndarray, pair: tuple[str | None, str | None] | None = None):
    """The map's ColourSpec for "condition outcome" of ``rows`` (a run without conditions: every
    point grey)."""
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
