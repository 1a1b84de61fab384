"""Figures and HTML for the findings (``llm_maps.findings``): shared by the Findings page,
``llm-maps findings --html`` and the Findings section of ``llm-maps export``.

Only scatter traces (the app's plotly bundle draws scatter, scattergl and heatmap). No torch.
"""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from dashboard.figures import ALL_GREY, FIXED_COLOURS, PALETTE, REFERENCE_GREY, bins_error_y, template_name
from dashboard.bundle import plotly_script
from llm_maps.findings import part_verdict, read_findings, robust_excludes_0
from llm_maps.runfolder import model_name

STAT_LABELS = {"first_entropy": "entropy of the next-token distribution (nats)",
               "first_top_prob": "top next-token probability",
               "first_kl_to_mean": "KL to the mean train next-token distribution (nats)"}
PCT_AXIS = "distance to train, percentile among test examples (0 = nearest, 1 = farthest)"


def _colour(name: str, i: int) -> str:
    return FIXED_COLOURS["domain"].get(name, PALETTE[i % len(PALETTE)])


def _f(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def _layout(fig: go.Figure, title: str, dark: bool, height: int = 460) -> go.Figure:
    fig.update_layout(template=template_name(dark), height=height, title={"text": title},
                      margin={"l": 60, "r": 20, "t": 60, "b": 60}, legend={"orientation": "h", "y": -0.22})
    return fig


def describe(result: dict) -> str:
    """One line naming the variant and the sample: what every figure's title refers to."""
    return (f"{result.get('split', 'test')}, layer {result['layer']}, {result['metric']}, view {result['view']}"
            f"{', centred encodings' if result.get('centred') else ''}: {result['n_test']} examples in "
            f"{result['n_tasks']} tasks")


def curves_figure(result: dict, *, dark: bool = False) -> go.Figure:
    """Accuracy against the distance percentile per domain: equal-width bins (Wilson 95 %) and the
    logistic fit with its task-clustered bootstrap 95 % band."""
    fig = go.Figure()
    for i, (name, st) in enumerate(result["domains"].items()):
        colour = _colour(name, i)
        curve = st.get("curve")
        label = (f"{name}: slope {_f(st['slope'])} [{_f(st['slope_low'])}, {_f(st['slope_high'])}] "
                 f"({st['n']} ex., {st['n_tasks']} tasks)")
        if curve and curve.get("low"):
            fig.add_trace(go.Scatter(x=curve["x"], y=curve["high"], mode="lines", line={"width": 0},
                                     hoverinfo="skip", showlegend=False, legendgroup=name))
            fig.add_trace(go.Scatter(x=curve["x"], y=curve["low"], mode="lines", line={"width": 0}, fill="tonexty",
                                     fillcolor=_rgba(colour, 0.18), hoverinfo="skip", showlegend=False,
                                     legendgroup=name))
        if curve:
            fig.add_trace(go.Scatter(x=curve["x"], y=curve["p"], mode="lines", name=label, legendgroup=name,
                                     line={"color": colour, "width": 2},
                                     hovertemplate=f"{html.escape(name)} fit: %{{y:.3f}} at percentile %{{x:.2f}}<extra></extra>"))
        bins = st.get("bins") or []
        fig.add_trace(go.Scatter(
            x=[b["x"] for b in bins], y=[b["accuracy"] for b in bins], mode="markers", legendgroup=name,
            name=f"{name}: accuracy per fifth" if curve else label, showlegend=not curve,
            marker={"color": colour, "size": 8},
            error_y=bins_error_y(bins, colour),
            customdata=[[b["n"], b["correct"], b["low"], b["high"]] for b in bins],
            hovertemplate=(f"{html.escape(name)}<br>accuracy %{{y:.3f}} [%{{customdata[2]:.3f}}, %{{customdata[3]:.3f}}]"
                           "<br>%{customdata[1]} / %{customdata[0]} correct<extra></extra>")))
    fig.update_yaxes(range=[-0.02, 1.05], title_text="accuracy (95 % interval)")
    fig.update_xaxes(range=[-0.02, 1.02], title_text=PCT_AXIS)
    return _layout(fig, f"Accuracy vs distance to train ({describe(result)})", dark)


def detector_figure(result: dict, *, dark: bool = False) -> go.Figure:
    """Distance as an error detector: AUROC per domain (task-clustered 95 % interval; 0.5 = no
    better than chance) and the risk-coverage curve (accuracy answering only the nearest x %)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6],
                        subplot_titles=["AUROC of distance for an error", "accuracy answering only the nearest x %"])
    names = list(result["domains"])
    for i, name in enumerate(names):
        st = result["domains"][name]
        colour = _colour(name, i)
        if st.get("auroc") is not None:
            fig.add_trace(go.Scatter(
                x=[name], y=[st["auroc"]], mode="markers", marker={"color": colour, "size": 11}, showlegend=False,
                error_y={"type": "data", "symmetric": False,
                         "array": [(st["auroc_high"] - st["auroc"]) if st["auroc_high"] is not None else 0],
                         "arrayminus": [(st["auroc"] - st["auroc_low"]) if st["auroc_low"] is not None else 0],
                         "color": colour},
                hovertemplate=(f"{html.escape(name)}: AUROC %{{y:.3f}} [{_f(st['auroc_low'], '.3f')}, "
                               f"{_f(st['auroc_high'], '.3f')}]<extra></extra>")), row=1, col=1)
        rc = st.get("risk_coverage") or []
        fig.add_trace(go.Scatter(x=[r["coverage"] for r in rc], y=[r["accuracy"] for r in rc], mode="lines+markers",
                                 name=name, line={"color": colour}, marker={"size": 5},
                                 hovertemplate=f"{html.escape(name)}: accuracy %{{y:.3f}} answering the nearest "
                                               "%{x:.0%}<extra></extra>"), row=1, col=2)
    rc = result.get("risk_coverage") or []
    if rc:
        fig.add_trace(go.Scatter(x=[r["coverage"] for r in rc], y=[r["accuracy"] for r in rc], mode="lines",
                                 name="all", line={"color": ALL_GREY, "dash": "dot"}), row=1, col=2)
    fig.add_trace(go.Scatter(x=[names[0], names[-1]] if names else [], y=[0.5, 0.5], mode="lines",
                             line={"color": REFERENCE_GREY, "dash": "dash", "width": 1}, hoverinfo="skip",
                             showlegend=False), row=1, col=1)
    fig.update_yaxes(range=[0, 1], title_text="AUROC (95 % interval)", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], title_text="accuracy", row=1, col=2)
    fig.update_xaxes(title_text="coverage (fraction answered, nearest first)", tickformat=".0%", row=1, col=2)
    return _layout(fig, "Distance as an error detector", dark)


# the difference rows, the number the page exists for: one colour that reads on both themes (WCAG
# 3:1 against white and #111111; a dark grey made for the light theme vanished when the browser
# switched the figure to the dark one)
DIFF_COLOUR = "#9467bd"


def contrast_figure(result: dict, *, dark: bool = False) -> go.Figure:
    """Slopes per domain (all examples, and within task) and the contrast, with 95 % intervals."""
    con = result["contrast"]
    rows = []
    for i, (name, st) in enumerate(result["domains"].items()):
        rows.append((f"{name}: slope", st["slope"], st["slope_low"], st["slope_high"], _colour(name, i)))
        rows.append((f"{name}: within task", st["slope_within_task"], st["slope_within_task_low"],
                     st["slope_within_task_high"], _colour(name, i)))
    for part, label in (("pooled", "difference"), ("within", "difference within tasks"),
                        ("between", "difference between tasks")):
        q = con if part == "pooled" else con.get(part)
        if q:
            rows.append((f"{label} {con['a']} − {con['b']}", q["slope_diff"], q["low"], q["high"], DIFF_COLOUR))
    fig = go.Figure()
    for label, v, lo, hi, colour in rows:
        if v is None:
            continue
        fig.add_trace(go.Scatter(
            x=[v], y=[label], mode="markers", showlegend=False,
            marker={"color": colour, "size": 11, "symbol": "diamond" if label.startswith("difference") else "circle"},
            error_x={"type": "data", "symmetric": False, "array": [(hi - v) if hi is not None else 0],
                     "arrayminus": [(v - lo) if lo is not None else 0], "color": colour},
            hovertemplate=f"{html.escape(label)}: {_f(v)} [{_f(lo)}, {_f(hi)}]<extra></extra>"))
    fig.add_shape(type="line", x0=0, x1=0, y0=0, y1=1, yref="paper", line={"color": REFERENCE_GREY, "dash": "dash"})
    fig.update_xaxes(title_text="logistic slope per unit distance percentile (negative = accuracy falls)")
    fig.update_yaxes(autorange="reversed")
    p = con.get("p_value")
    return _layout(fig, f"The contrast: {_f(con['slope_diff'])} [{_f(con['low'])}, {_f(con['high'])}]"
                        + (f", permutation p = {p:.3g}" if p is not None else ""), dark, height=380)


def confidence_figure(result: dict, *, dark: bool = False) -> go.Figure | None:
    """First-token entropy, top probability and KL to the mean train distribution against the
    distance percentile per domain (bin means), with each slope and its 95 % interval."""
    from plotly.subplots import make_subplots

    stats = [s for s in STAT_LABELS if any(s in (st.get("confidence") or {}) for st in result["domains"].values())]
    if not stats:
        return None
    fig = make_subplots(rows=1, cols=len(stats), subplot_titles=[STAT_LABELS[s] for s in stats])
    for i, (name, st) in enumerate(result["domains"].items()):
        for j, s in enumerate(stats):
            c = (st.get("confidence") or {}).get(s)
            if not c:
                continue
            fig.add_trace(go.Scatter(
                x=[b["x"] for b in c["bins"]], y=[b["mean"] for b in c["bins"]], mode="lines+markers",
                name=f"{name}", legendgroup=name, showlegend=j == 0, line={"color": _colour(name, i)},
                customdata=[[b["n"]] for b in c["bins"]],
                hovertemplate=(f"{html.escape(name)}: mean %{{y:.4g}} (n=%{{customdata[0]}})<br>slope {_f(c['slope'], '.3g')} "
                               f"[{_f(c['low'], '.3g')}, {_f(c['high'], '.3g')}] per unit percentile<extra></extra>")),
                row=1, col=j + 1)
    fig.update_xaxes(title_text="distance percentile", range=[-0.02, 1.02])
    return _layout(fig, "Conservative far from the data? The first answer token's distribution", dark, height=420)


def robustness_rows(result: dict) -> list[list[str]]:
    """The robustness table as text cells (header first): each variant's interval and permutation
    p-value, Holm-adjusted across the table, and the directional verdict on the adjusted p."""

    con = result["contrast"]
    out = [["view", "layer", "metric", "encodings", f"slope {con['a']}", f"slope {con['b']}", "difference",
            "95 % interval", "interval excludes 0", "p", "p (Holm)", "supported (adjusted)"]]
    for r in result.get("robustness") or []:
        out.append([r["view"], str(r["layer"]), r["metric"], "centred" if r["centred"] else "raw",
                    _f(r.get("slope_a")), _f(r.get("slope_b")), _f(r["slope_diff"]),
                    f"[{_f(r['low'])}, {_f(r['high'])}]", "yes" if robust_excludes_0(r) else "no",
                    _f(r.get("p_value"), ".3g"), _f(r.get("p_holm"), ".3g"),
                    "yes" if r.get("supported_adjusted") else "no"])
    return out


PARTS = (("pooled", "pooled (all examples)"), ("within", "within tasks (task fixed effects)"),
         ("between", "between tasks (task accuracy vs task distance)"))
VERDICT_COLOURS = {"supported": "success", "reversed": "warning", "not supported": "secondary"}


def verdict_colour(result: dict) -> str:
    """The page's colour for the headline verdict: green only for the hypothesis supported; a
    reversed difference is a warning, never green; older files without verdict_detail are judged by
    the same directional rule on their pooled numbers."""

    detail = (result.get("verdict_detail") or {}).get("pooled")
    if detail is None:  # a format-1 file: the directional rule on its pooled numbers
        con = result.get("contrast") or {}
        detail = part_verdict(con, n_tasks_a=int(con.get("n_tasks_a") or 0), n_tasks_b=int(con.get("n_tasks_b") or 0))
    return VERDICT_COLOURS[detail]


def parts_rows(result: dict) -> list[list[str]]:
    """Pooled, within-task and between-task contrasts side by side, with their verdicts (header first)."""
    con = result["contrast"]
    detail = result.get("verdict_detail") or {}
    out = [["part", f"slope {con['a']}", f"slope {con['b']}", f"difference {con['a']} − {con['b']} [95 %]", "p",
            "minimum detectable", "verdict"]]
    for part, label in PARTS:
        q = con if part == "pooled" else con.get(part)
        if not q:
            continue
        out.append([label, _f(q.get("slope_a")), _f(q.get("slope_b")),
                    f"{_f(q.get('slope_diff'))} [{_f(q.get('low'))}, {_f(q.get('high'))}]", _f(q.get("p_value"), ".3g"),
                    _f(q.get("mdd")), detail.get(part, "-")])
    return out


def domain_rows(result: dict) -> list[list[str]]:
    """Per-domain numbers as text cells (header first)."""
    out = [["domain", "examples", "tasks", "accuracy [95 %]", "slope [95 %]", "within task [95 %]",
            "AUROC error [95 %]", "nearest quarter [95 %]", "farthest quarter [95 %]", "slope per raw unit"]]

    def acc(a, lo, hi, wlo, whi, n=None):  # task-clustered where the file has it (Wilson's over examples before)
        over = f"[{_f(lo)}, {_f(hi)}]" if lo is not None and hi is not None else f"[{_f(wlo)}, {_f(whi)}] Wilson"
        return f"{_f(a)} {over}" + (f" (n={n})" if n is not None else "")

    for name, st in result["domains"].items():
        def q(s):
            return acc(s["accuracy"], s.get("task_low"), s.get("task_high"), s["low"], s["high"], s["n"])
        out.append([name, str(st["n"]), str(st["n_tasks"]),
                    acc(st["accuracy"], st.get("accuracy_task_low"), st.get("accuracy_task_high"),
                        st.get("accuracy_low"), st.get("accuracy_high")),
                    f"{_f(st['slope'])} [{_f(st['slope_low'])}, {_f(st['slope_high'])}]",
                    f"{_f(st['slope_within_task'])} [{_f(st['slope_within_task_low'])}, {_f(st['slope_within_task_high'])}]",
                    f"{_f(st['auroc'], '.3f')} [{_f(st['auroc_low'], '.3f')}, {_f(st['auroc_high'], '.3f')}]",
                    q(st["near"]), q(st["far"]), _f(st.get("slope_raw"), ".4g")])
    return out


def _html_table(rows: list[list[str]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figures(result: dict, *, dark: bool = False) -> dict[str, go.Figure]:
    out = {"findings-curves": curves_figure(result, dark=dark), "findings-contrast": contrast_figure(result, dark=dark),
           "findings-detector": detector_figure(result, dark=dark)}
    conf = confidence_figure(result, dark=dark)
    if conf is not None:
        out["findings-confidence"] = conf
    return out


def findings_section_html(result: dict) -> str:
    """The findings as an HTML fragment (figures need plotly.js loaded before it)."""
    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
    parts = [f"<h3>Findings</h3><p class='verdict' id='findings-verdict'><strong>{html.escape(result['verdict'])}"
             f"</strong></p><p class='note'>{html.escape(describe(result))}. {html.escape(result.get('unit', ''))}. "
             f"{html.escape(result.get('interval', ''))}.</p>"]
    if result.get("model"):  # by its name: an export never holds the author's file system

        parts.append(f"<p class='note'>model {html.escape(model_name({'model': result['model']}))}</p>")
    for note in result.get("notes") or []:
        parts.append(f"<p class='note'>Note: {html.escape(note)}</p>")
    figs = figures(result)
    for div_id, fig in figs.items():
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, config=config, div_id=div_id))
        if div_id == "findings-curves":
            parts.append(_html_table(domain_rows(result), "findings-domains"))
        if div_id == "findings-contrast":
            parts.append(_html_table(parts_rows(result), "findings-parts"))
    if "findings-confidence" not in figs:
        parts.append("<p class='note'>No first-token statistics in this run (re-run <code>llm-maps score</code>).</p>")
    if result.get("robustness"):
        parts.append("<h4>Robustness: the same contrast in every stored layer, metric and view, on raw and "
                     "train-mean-centred encodings</h4>" + _html_table(robustness_rows(result), "findings-robustness"))
    return "".join(parts)


def export_section(run_dir: str | Path) -> str:
    """The Findings section of ``llm-maps export``: RUN/findings.json as ``llm-maps findings`` wrote it."""
    result, error = read_findings(run_dir)
    if result is None:
        return ("<h3 id='findings'>Findings</h3><p class='note'>" + html.escape(
            error or "No findings yet: run `llm-maps findings RUN` (it writes findings.json), then export again.")
            + "</p>")
    return f"<style>{TABLE_STYLE}</style><div id='findings'>" + findings_section_html(result) + "</div>"


TABLE_STYLE = ("table{border-collapse:collapse;font-size:0.85rem;margin:0.5rem 0 1rem}"
               "td,th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left}")
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:1rem auto;padding:0 1rem}"
         ".note{color:#666;font-size:0.9rem}" + TABLE_STYLE)


def write_findings_html(result: dict, out: str | Path, *, title: str) -> Path:
    """One standalone HTML file with the findings, for a blog post: the app's plotly.js bundle
    inlined (works offline, nothing fetched), as ``llm-maps export`` does."""

    out = Path(out)
    script = plotly_script()
    doc = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(f"LLM Maps · findings · {title}")
           + f"</title><style>{STYLE}</style></head><body><h2>{html.escape(title)}</h2>" + script
           + findings_section_html(result) + "<p class='note'>made with LLM Maps</p></body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out
