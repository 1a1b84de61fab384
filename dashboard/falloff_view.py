"""The Falloff page's figure of a run, as the page and the Python API (``Run.falloff_figure``) draw
it: the statistics (``falloff.json`` or computed, ``dashboard.data.falloff_for``) drawn by
``dashboard.figures.falloff_figure``. A leaf module: nothing in the dashboard below the pages imports it."""

from __future__ import annotations

import plotly.graph_objects as go

from dashboard import figures as F
from dashboard.data import falloff_for


def falloff_view(data, *, layer: int | None = None, metric: str | None = None, n_bins: int = 5, domains=None,
                 tasks=None, mode: str = "overlay", dark: bool = False) -> tuple[go.Figure, dict | None, list[str], str]:
    """The Falloff page's figure of one run (or view): ``(figure, stats, groups, source)``, where
    ``stats`` are the statistics drawn (None, with the reason in ``source``, when there are none:
    no scores yet, or distances that cannot be measured here). The page and ``Run.falloff_figure``
    of the Python API both draw this."""
    layer = data.default_layer if layer is None else int(layer)
    metric = metric or data.metric
    stats, source = falloff_for(data, layer=layer, metric=metric, n_bins=int(n_bins or 5), tasks=tasks or None)
    if stats is None:
        return F.falloff_figure({}, [], title="no falloff to show", dark=dark), None, [], source
    groups = F.falloff_groups(stats, domains or None, include_all=not domains)
    view = "" if data.view == "prompt" else f", {data.view} view"
    title = f"{data.base_id}: accuracy vs distance to train (layer {layer}, {metric}{view})"
    return F.falloff_figure(stats, groups, layout=mode, title=title, metric=metric, dark=dark), stats, groups, source
