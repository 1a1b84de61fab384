"""What a presenter sees (issue 33): test points, and users' points, drawn above train points in every
colouring, on the page and in the export alike; "dim train" kept in the URL; the condition-outcome
colour draws only its scored examples; every figure text and marker at WCAG AA contrast in both
themes (measured in Chromium) and switches that show their state; bin counts that never overlap;
the Examples table's scores in view; `view=tokens` without a run says so; an export without the
exporting machine's paths."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dashboard import conditions_view as CV
from dashboard import figures as F
from dashboard.data import RunRegistry
from dashboard.synthetic import write_synthetic_run
from dashboard_helpers import CHROMIUM_FLAGS, ConsoleLog, chromium_path, live_server, require_browser
from llm_maps.jobs import PointStore

N = 240
NAMES = ("direct", "cot")


def _page(name: str):
    """A page module as Dash loaded it (importing dashboard.pages.X again would register it twice)."""
    return sys.modules[f"pages.{name}"]


def _walk(c):
    yield c
    kids = getattr(c, "children", None)
    for k in (kids if isinstance(kids, (list, tuple)) else [kids] if kids is not None else []):
        if hasattr(k, "to_plotly_json"):
            yield from _walk(k)


def _by_id(c, id_):
    return [x for x in _walk(c) if getattr(x, "id", None) == id_]


def _points(data) -> list[dict]:
    """Two saved points as pipelines.jobrun.point_record stores them: a placed prompt and a
    generation of three tokens (its path), with an expected accuracy (the playground's falloff
    marker)."""
    out = []
    for i, row in enumerate((int(np.flatnonzero(data.is_train)[0]), int(np.flatnonzero(~data.is_train)[0]))):
        x, y = float(data.x[row]), float(data.y[row])
        point = {"id": f"p{i}", "created": 1000.0 + i, "kind": "place", "instruction": f"question {i}", "context": "",
                 "options": {}, "prompt": f"Q: question {i}", "x": x, "y": y, "dist_to_train": 0.05,
                 "domain": "Chollet", "neighbours": [{"example_id": str(data.frame["example_id"].iloc[j]),
                                                      "distance": 0.1 * (j + 1)} for j in (1, 2)],
                 "expected_accuracy": {"accuracy": 0.5, "low": 0.3, "high": 0.7, "domain": "Chollet", "bin": 0, "n": 20},
                 "x_tokens": None, "y_tokens": None}
        if i == 1:
            tokens = [{"text": f" t{k}", "id": 10 + k, "logprob": -0.5 * k, "top": [], "x": x + 0.4 * (k + 1),
                       "y": y - 0.3 * (k + 1), "dist": 0.3, "step": 0.1} for k in range(3)]
            point.update(kind="generate", options={"max_new_tokens": 3, "temperature": 0.0}, output=" t0 t1 t2",
                         tokens=tokens, stop_reason="length", n_tokens=3, mean_logprob=-0.5, perplexity=1.6,
                         path_length=0.3, final_dist=0.3, reference="prompts", mean_dist=None, max_dist=None)
        out.append(point)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from dashboard.app import create_app

    root = tmp_path_factory.mktemp("presenter")
    run = write_synthetic_run(root / "syn", N, layers=(1, 2), seed=21, conditions=NAMES)
    data = RunRegistry([run]).load("syn")
    store = PointStore(root / "state")
    points = _points(data)
    for p in points:
        store.add("syn", p)
    app = create_app([run], [], state_dir=root / "state")
    return {"run": run, "data": data, "app": app, "points": points, "root": root}


# --- colours ----------------------------------------------------------------------------------------

def _scale_samples(scale) -> list[str]:
    import plotly.colors as pc

    return [pc.label_rgb(pc.unlabel_rgb(c)) if c.startswith("rgb") else c
            for c in pc.sample_colorscale(scale, [i / 100 for i in range(101)], colortype="rgb")]


def _hex(colour: str) -> str:
    if colour.startswith("#"):
        return colour
    r, g, b = (int(float(v)) for v in colour[colour.index("(") + 1:colour.index(")")].split(",")[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def test_every_figure_colour_meets_wcag_contrast_on_both_themes():
    """Markers and lines: 3:1 against white and plotly_dark's #111111 alike, so a figure the browser
    switches between themes stays readable; continuous scales at every step; text on a colour
    (the falloff's bin counts): 4.5:1."""
    from dashboard import findings_view as FV

    assert F.contrast_ratio("#ffffff", "#000000") == pytest.approx(21.0)
    assert F.contrast_ratio("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # WCAG's own example
    fixed = [c for table in F.FIXED_COLOURS.values() for c in table.values()]
    named = {"palette": F.PALETTE, "fixed": fixed, "outcome": CV.OUTCOME_COLOURS, "conditions": CV.CONDITION_PALETTE,
             "lines": [F.NEIGHBOUR_COLOUR, F.REFERENCE_GREY, F.ALL_GREY, F.MISSING, FV.DIFF_COLOUR]}
    for name, scale in F.CONTINUOUS_SCALES.items():
        named[f"scale {name}"] = [_hex(c) for c in _scale_samples(scale)]
    bad = [(name, c, bg, round(F.contrast_ratio(c, bg), 2)) for name, colours in named.items() for c in colours
           for bg in (F.LIGHT_BG, F.DARK_BG) if F.contrast_ratio(c, bg) < 3.0]
    assert bad == []
    for c in [*F.PALETTE, *fixed, F.ALL_GREY]:
        assert F.contrast_ratio(F.text_on(c), c) >= 4.5, c
    # the map's points are drawn opaque below 50k points (a translucent colour is a lighter one)
    assert F.points_opacity(49_999) == 1.0


def test_neighbour_lines_are_not_a_domain_colour(site):
    """The lines to the nearest training examples (Map page and playground) are one colour, far from
    every domain's (Chollet's points are orange; the lines were the same orange)."""
    def distance(a: str, b: str) -> float:  # in RGB, 0..441
        ca, cb = (np.array([int(c[i:i + 2], 16) for i in (1, 3, 5)], dtype=float) for c in (a, b))
        return float(np.linalg.norm(ca - cb))

    data = site["data"]
    row = int(np.flatnonzero(~data.is_train)[0])
    over = F.overlay_trace(data, row, data.neighbours(row))
    assert over.line.color == F.NEIGHBOUR_COLOUR and set(over.marker.color) == {F.NEIGHBOUR_COLOUR}
    assert min(distance(F.NEIGHBOUR_COLOUR, c) for c in F.FIXED_COLOURS["domain"].values()) > 150
    js = (Path(F.__file__).parent / "assets" / "playground.js").read_text()
    assert f"const NEIGHBOUR = '{F.NEIGHBOUR_COLOUR}';" in js  # the playground draws the same lines
    assert "const PROB_SCALE = " + json.dumps(F.SCORE_SCALE).replace('"', "'") + ';' in js
    assert "'#ff7f0e'" not in js and "RdYlGn" not in js


# --- the map: drawing order, dim train, the outcome colour ------------------------------------------

def test_test_points_are_drawn_above_train_points_in_every_colouring(site):
    data = site["data"]
    assert data.is_train[:10].any() and (~data.is_train[:10]).any()  # rows interleave train and test
    for colour in [v for v, _, _ in F.COLOUR_OPTIONS] + [F.OUTCOME]:
        fig = F.view_figure(data, colour=colour, dark=False)
        rows = np.asarray(fig.data[F.POINTS].customdata)
        train = data.is_train[rows]
        k = int(train.sum())
        assert train[:k].all() and not train[k:].any(), colour  # every train point before every test point
        keep = np.arange(N)
        if colour == F.OUTCOME:  # only the examples scored under both conditions, no grey "unscored"
            codes = CV.outcome_codes(CV.conditions_of(data), *NAMES)
            keep = np.flatnonzero(codes != 4)
            assert 0 < len(keep) < N and set(codes[rows].tolist()) <= {0, 1, 2, 3}
            names = [t.name for t in fig.data[F.LEGEND0:] if t.showlegend]
            assert not any(n.startswith(CV.NOT_BOTH) for n in names) and len(names) == 4
            assert fig.layout.title.text == f"{len(keep)} of {N} examples scored under both conditions"
        assert sorted(rows.tolist()) == keep.tolist(), colour
        spec = F.colour_spec(data, colour, rows, pair=None)
        assert np.asarray(fig.data[F.POINTS].marker.color).tolist() == np.asarray(spec.values).tolist()
        assert fig.data[F.POINTS].marker.opacity == 1.0
    # dim train: train points faint, test points as they were; the Map page keeps it from the URL
    fig = F.view_figure(data, colour="correct", dim_train=True)
    rows = np.asarray(fig.data[F.POINTS].customdata)
    assert np.asarray(fig.data[F.POINTS].marker.opacity).tolist() == \
        np.where(data.is_train[rows], F.DIM_OPACITY, 1.0).astype(np.float32).tolist()
    with site["app"].server.test_request_context("/map"):
        page = _page("map").layout(run="syn", colour="correct", dim="1")
        assert _by_id(page, "map-dim")[0].value is True
        opacity = _by_id(page, "map-graph")[0].figure.data[F.POINTS].marker.opacity
        assert min(opacity) == pytest.approx(F.DIM_OPACITY) and max(opacity) == 1.0
        assert _by_id(_page("map").layout(run="syn"), "map-dim")[0].value is False


def test_the_export_draws_test_and_users_points_above_train_and_names_no_local_path(site, tmp_path, monkeypatch):
    import shutil

    from dashboard.export import export_html, export_map_figure
    from dashboard.userpoints import user_points_traces

    fig = export_map_figure(site["data"])
    assert [t.name for t in fig.data][0] == "train" and all(t.name.startswith("test") for t in fig.data[1:])
    stars = [t for t in user_points_traces(site["points"]) if t.meta["user"] == "point"]
    # users' stars are WebGL traces, drawn after (above) the map's WebGL points; an SVG trace would
    # be drawn under every WebGL point
    assert [t.type for t in stars] == ["scattergl", "scattergl"]
    # an export of a run in the home folder whose note and findings name local paths
    home = tmp_path / "home" / "ann"
    run = home / "runs" / "syn"
    shutil.copytree(site["run"], run)
    monkeypatch.setenv("HOME", str(home))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["notes"] = [f"built from {run}/examples.parquet with {home}/models/m.gguf"]
    manifest["model"] = str(home / "models" / "m.gguf")
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "findings.json").write_text("{not json")  # its error names the file
    out = export_html(run, tmp_path / "out.html", plotlyjs="cdn", points=site["points"])
    text = out.read_text()
    assert str(home) not in text and str(tmp_path) not in text
    assert "syn/findings.json: unreadable findings" in text
    # in the file too: the train trace, then the test traces, then the users' stars (WebGL)
    at = [text.index(f'"name":"{name}"') for name in ("train", "test: correct", "question 0")]
    assert at == sorted(at) and '"type":"scattergl"' in text[at[2] - 3000:at[2] + 3000]


def test_falloff_bin_counts_sit_in_lanes_and_read_on_their_colour():
    """Bins crowded at small distances (equal-count bins of a skewed distance) in three groups:
    every count gets a label, labels of a lane never touch on the narrowest figure allowed, each
    group has lanes of its own, and each label's text reads on its colour."""
    def group(medians, n):
        bins = [{"median": m, "n": n, "accuracy": 0.5, "low": 0.4, "high": 0.6, "lo": m - 0.001, "hi": m + 0.001,
                 "correct": n // 2, "bin": i} for i, m in enumerate(medians)]
        return {"bins": bins, "accuracy": 0.5, "n": n * len(bins), "trend": None}

    stats = {"all": group([0.001, 0.0015, 0.002, 0.004, 0.03], 175),
             "Chollet": group([0.0012, 0.0016, 0.0025, 0.03, 0.031], 90),
             "Reasoning": group([0.0011, 0.0018, 0.0022, 0.02, 0.04], 85)}
    fig = F.falloff_figure(stats, ["all", "Chollet", "Reasoning"], min_width=700)
    labels = [a for a in fig.layout.annotations if a.name == "bin-count"]
    assert len(labels) == 15 and {a.bgcolor for a in labels} == {F.ALL_GREY, "#e6550d", "#3182bd"}
    lo, hi = fig.layout.xaxis.range
    per_px = (hi - lo) / (700 - 70)
    lanes: dict[float, list] = {}
    for a in labels:
        half = (len(a.text) * F.COUNT_CHAR_PX + F.COUNT_PAD_PX) / 2 * per_px
        lanes.setdefault(a.yshift, []).append((a.x - half, a.x + half, a.bgcolor))
        assert F.contrast_ratio(a.font.color, a.bgcolor) >= 4.5
    for lane in lanes.values():
        assert len({c for _, _, c in lane}) == 1  # one group per lane
        lane.sort()
        assert all(b[0] - a[1] >= F.COUNT_GAP_PX * per_px - 1e-12 for a, b in zip(lane, lane[1:]))
    assert len(lanes) > 3  # crowded groups took a second lane
    assert fig.layout.yaxis.tickvals[-1] == 1 and fig.layout.yaxis.range[1] >= 1.04 + 0.045 * len(lanes) - 1e-9


def test_a_view_without_a_run_says_it_needs_one(site):
    with site["app"].server.test_request_context("/map"):
        page = _page("map").layout(view="tokens")
        (banner,) = _by_id(page, "run-banner")
        text = "".join(str(c) if isinstance(c, str) else "" for c in banner.children)
        assert "The token map (atlas) view needs a run: add run=RUN to the address" in text
        assert not _by_id(page, "map-graph")  # no map of another view, silently
        assert _by_id(_page("map").layout(), "map-graph")  # no view, no run: the default run's map


# --- in the browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(site):
    require_browser()
    from playwright.sync_api import sync_playwright

    with live_server(site["app"]) as url, sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        page = chromium.new_context(viewport={"width": 1400, "height": 900}).new_page()
        yield url, page, ConsoleLog(page)
        chromium.close()


# WCAG 2 contrast of what a figure draws, from the colours the browser computed: every text (4.5:1,
# against its annotation's box or the plot's background), every SVG marker, line, error bar and
# shape (3:1: a marker passes on its fill or its outline), and the colours of the WebGL traces
# (their markers are not in the DOM: read from the trace, with its opacity); and the page's switches
# (3:1 for the track or outline that shows the state, 4.5:1 for the label).
CONTRAST = """(graphs) => {
  const parse = (s) => { const m = (s || '').match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const v = m[1].split(',').map(Number); return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1]; };
  const hex = (s) => { const h = s.replace('#', ''); const f = h.length === 3 ? h.split('').map((c) => c + c).join('') : h;
    return [0, 2, 4].map((i) => parseInt(f.slice(i, i + 2), 16)).concat([1]); };
  const probe = document.createElement('div');
  document.body.appendChild(probe);
  const colour = (s) => { if (s && s[0] === '#') return hex(s); probe.style.color = ''; probe.style.color = s;
    return parse(getComputedStyle(probe).color); };  // any CSS colour ("white", "rgb(17,17,17)")
  const lum = (c) => { const l = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2]; };
  const ratio = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const over = (c, a, bg) => [0, 1, 2].map((i) => a * c[i] + (1 - a) * bg[i]).concat([1]);
  const alpha = (el, own) => { let a = own; for (let e = el; e && e.tagName !== 'svg'; e = e.parentElement) a *= +getComputedStyle(e).opacity; return a; };
  const shown = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0 && !el.closest('.hoverlayer'); };
  const out = {checked: 0, failures: []};
  for (const sel of graphs) {
    const gd = document.querySelector(sel + ' .js-plotly-plot');
    if (!gd || !gd._fullLayout) { out.failures.push([sel, 'no figure']); continue; }
    const bg = colour(gd._fullLayout.plot_bgcolor);
    for (const t of gd.querySelectorAll('.main-svg text')) {
      if (!t.textContent.trim() || !shown(t)) continue;
      const cs = getComputedStyle(t);
      let back = bg;
      const box = t.closest('.annotation') && t.closest('.annotation').querySelector('rect.bg');
      if (box) { const b = parse(getComputedStyle(box).fill); const a = b ? b[3] * +getComputedStyle(box).fillOpacity : 0;
        if (a > 0) back = over(b, a, bg); }
      const fill = parse(cs.fill);
      const r = ratio(over(fill, alpha(t, fill[3] * +cs.fillOpacity), back), back);
      out.checked++;
      if (r < 4.5) out.failures.push([sel, 'text', t.textContent.slice(0, 40), cs.fill, r.toFixed(2)]);
    }
    const marks = '.scatterlayer path.point, .legendpoints path, .scatterlayer path.js-line, .errorbar path, .shapelayer path';
    for (const p of gd.querySelectorAll(marks)) {
      if (!shown(p)) continue;
      const cs = getComputedStyle(p);
      const line = p.classList.contains('js-line') || !!p.closest('.errorbar') || !!p.closest('.shapelayer')
        || (p.closest('.legendpoints') && cs.fill === 'none');
      let best = 0;
      const f = parse(cs.fill), s = parse(cs.stroke);
      if (!line && f && f[3] * +cs.fillOpacity > 0) best = Math.max(best, ratio(over(f, alpha(p, f[3] * +cs.fillOpacity), bg), bg));
      if (s && parseFloat(cs.strokeWidth) > 0 && s[3] * +cs.strokeOpacity > 0) best = Math.max(best, ratio(over(s, alpha(p, s[3] * +cs.strokeOpacity), bg), bg));
      if (best === 0 && !line && !(f && f[3] * +cs.fillOpacity > 0)) continue;  // nothing drawn (e.g. a zero-width band edge)
      if (best === 0) continue;
      out.checked++;
      if (best < 3) out.failures.push([sel, line ? 'line' : 'marker', (p.closest('.trace') || p).getAttribute('class'), cs.fill, cs.stroke, best.toFixed(2)]);
    }
    for (const t of gd._fullData) {
      if (t.type !== 'scattergl' || t.visible !== true || !t._length) continue;
      const m = t.marker || {};
      let used = [];
      if (typeof m.color === 'string') used = [m.color];
      else if (m.color && m.colorscale) {
        const scale = m.colorscale.map((s) => s[1]);
        if (m.showscale) used = scale;
        else { const k = scale.length / 2; const seen = new Set(Array.from(m.color)); used = Array.from(seen).map((c) => scale[2 * Math.round(c)]).filter(Boolean); void k; }
      } else if (m.color && m.color.length) used = Array.from(new Set(Array.from(m.color)));
      const op = typeof m.opacity === 'number' ? m.opacity : 1;
      for (const c of used) {
        const v = colour(c); if (!v) continue;
        const r = ratio(over(v, op * v[3], bg), bg);
        out.checked++;
        if (r < 3) out.failures.push([sel, 'webgl', t.name, c, r.toFixed(2)]);
      }
    }
  }
  const behind = (el) => { for (let e = el.parentElement; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0) return c; } return [255, 255, 255, 1]; };
  for (const input of document.querySelectorAll('.form-switch input')) {
    const cs = getComputedStyle(input), back = behind(input);
    const shows = parse(input.checked ? cs.backgroundColor : cs.borderTopColor);
    const r = ratio(over(shows, shows[3], back), back);
    out.checked++;
    if (r < 3) out.failures.push(['switch', input.id, input.checked, input.checked ? cs.backgroundColor : cs.borderTopColor, r.toFixed(2)]);
    if (!input.checked && parse(cs.backgroundColor)[3] > 0 && ratio(parse(cs.backgroundColor), back) > 1.2)
      out.failures.push(['switch', input.id, 'off but filled', cs.backgroundColor]);
    const label = document.querySelector(`label[for="${input.id}"]`);
    if (label) { const lc = parse(getComputedStyle(label).color), lb = behind(label);
      const lr = ratio(over(lc, lc[3], lb), lb); out.checked++;
      if (lr < 4.5) out.failures.push(['switch label', input.id, getComputedStyle(label).color, lr.toFixed(2)]); }
  }
  probe.remove();
  return out;
}"""

PAGES = [  # (path, the graphs to measure, what says the page has drawn them)
    ("/map?run=syn&colour=correct&mine=1", ["#map-graph"],
     "() => { const gd = document.querySelector('#map-graph .js-plotly-plot'); return gd && gd._fullData && "
     "gd._fullData.some((t) => t.meta && t.meta.user === 'point'); }"),
    ("/findings?run=syn", ["#findings-curves", "#findings-contrast", "#findings-detector"],
     "() => { const gd = document.querySelector('#findings-contrast .js-plotly-plot'); return gd && gd._fullData && gd._fullData.length > 2; }"),
    ("/falloff?run=syn", ["#falloff-graph"],
     "() => { const gd = document.querySelector('#falloff-graph .js-plotly-plot'); return gd && gd._fullData && gd._fullData.length === 3; }"),
    ("/playground?run=syn&ids=p0,p1", ["#pg-graph", "#pg-falloff"],
     "() => { const gd = document.querySelector('#pg-falloff .js-plotly-plot'); const m = document.querySelector('#pg-graph .js-plotly-plot');"
     " return gd && gd.layout.meta && gd.layout.meta.pg_marker === 'p1' && m && m.data.filter((t) => t.meta && t.meta.pg === 'path').length === 1; }"),
]


def _settle(page):
    page.wait_for_function("() => !document.querySelector('._dash-loading-callback')", timeout=30_000)
    page.wait_for_timeout(400)


def test_figures_and_switches_meet_wcag_contrast_in_both_themes(browser):
    """Each page is measured twice: opened in one theme (the server builds its figures in it) and
    switched to the other in the browser (the figures change template, not colours)."""
    url, page, log = browser
    page.goto(f"{url}/runs")
    page.wait_for_selector("#theme-dark")
    seen = []
    try:
        for i, (path, graphs, ready) in enumerate(PAGES):
            page.goto(url + path)
            page.wait_for_function(ready, timeout=60_000)
            _settle(page)
            for _ in range(2):
                dark = page.locator("#theme-dark").is_checked()
                bg = page.evaluate(f"() => document.querySelector('{graphs[0]} .js-plotly-plot')._fullLayout.paper_bgcolor")
                assert (bg == "rgb(17,17,17)") == dark, (path, bg, dark)
                got = page.evaluate(CONTRAST, graphs)
                assert got["failures"] == [], (path, "dark" if dark else "light", got["failures"])
                assert got["checked"] > 10
                seen.append((path, dark))
                page.locator("#theme-dark").set_checked(not dark)
                page.wait_for_function(f"() => document.querySelector('{graphs[-1]} .js-plotly-plot')._fullLayout"
                                       f".paper_bgcolor {'!==' if dark else '==='} 'rgb(17,17,17)'", timeout=20_000)
                page.wait_for_timeout(300)  # the other stylesheet has loaded
    finally:
        if page.locator("#theme-dark").is_checked():
            page.locator("#theme-dark").uncheck()
    assert len(seen) == 2 * len(PAGES) and {d for _, d in seen} == {False, True}
    assert log.take() == []


GD = "document.querySelector('#map-graph .js-plotly-plot')"


def test_the_map_draws_test_above_train_dims_train_and_keeps_it_in_the_url(browser, site):
    url, page, log = browser
    data = site["data"]
    page.goto(f"{url}/map?run=syn&colour=correct&mine=1")
    page.wait_for_function(f"() => {GD} && {GD}._fullData && {GD}._fullData.some((t) => t.meta && t.meta.user === 'point')",
                           timeout=30_000)
    page.wait_for_function("() => window.llmMapsState.payloads.syn")
    order = F.draw_order(data, np.arange(N)).tolist()
    types = page.evaluate(f"() => {GD}._fullData.map((t) => [t.type, (t.meta || {{}}).user || null])")
    # the points (WebGL, test rows after train rows), then the users' stars as later WebGL traces
    assert types[0] == ["scattergl", None] and [t for t in types if t[1] == "point"] == [["scattergl", "point"]] * 2
    assert types.index(["scattergl", "point"]) > 0
    assert page.evaluate(f"() => Array.from({GD}._fullData[0].customdata)") == order
    # dim train, in the browser: train points faint, the URL keeps it, a reload brings it back
    page.locator("#map-dim").check()
    page.wait_for_function(f"() => typeof {GD}._fullData[0].marker.opacity !== 'number'", timeout=20_000)
    opacity = page.evaluate(f"() => Array.from({GD}._fullData[0].marker.opacity)")
    assert opacity == pytest.approx(np.where(data.is_train[order], F.DIM_OPACITY, 1.0).tolist())
    page.wait_for_function("() => window.location.search.includes('dim=1')")
    page.reload()
    page.wait_for_function(f"() => {GD} && {GD}._fullData && typeof {GD}._fullData[0].marker.opacity !== 'number'",
                           timeout=30_000)
    assert page.locator("#map-dim").is_checked()
    # recolour in the browser (no server figure): still test above train, still dimmed
    page.wait_for_function("() => window.llmMapsState.payloads.syn")
    page.click("#map-colour")
    page.get_by_role("option", name="domain", exact=True).click()
    page.wait_for_function(f"() => {GD}.layout.legend.title.text === 'domain'", timeout=20_000)
    assert page.evaluate(f"() => Array.from({GD}._fullData[0].customdata)") == order
    assert page.evaluate(f"() => Array.from({GD}._fullData[0].marker.opacity)") == pytest.approx(opacity)
    # the condition outcome: only the examples scored under both
    page.click("#map-colour")
    page.get_by_role("option", name="condition outcome (B vs A)", exact=True).click()
    codes = CV.outcome_codes(CV.conditions_of(data), *NAMES)
    rows = F.draw_order(data, np.flatnonzero(codes != 4)).tolist()
    page.wait_for_function(f"() => {GD}._fullData[0]._length === {len(rows)}", timeout=20_000)
    assert page.evaluate(f"() => Array.from({GD}._fullData[0].customdata)") == rows
    assert page.evaluate(f"() => {GD}._fullLayout.title.text") == f"{len(rows)} of {N} examples scored under both conditions"
    page.locator("#map-dim").uncheck()
    page.wait_for_function("() => !window.location.search.includes('dim=1')")
    assert log.take() == []


def test_bin_counts_do_not_overlap_and_the_scores_are_in_view(browser):
    url, page, log = browser
    page.goto(f"{url}/falloff?run=syn&bins=10")
    page.wait_for_function("() => { const gd = document.querySelector('#falloff-graph .js-plotly-plot');"
                           " return gd && gd._fullData && gd._fullData.length === 3; }", timeout=30_000)
    _settle(page)
    boxes = page.evaluate("""() => Array.from(document.querySelectorAll('#falloff-graph .annotation'))
        .filter((a) => /^n=\\d+$/.test(a.textContent.trim()))
        .map((a) => { const r = a.querySelector('rect.bg').getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })""")
    assert len(boxes) == 30
    overlaps = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]]
    assert overlaps == []
    # the Examples table at 1400 x 900: the score columns are on screen without scrolling sideways
    page.goto(f"{url}/examples?run=syn")
    page.wait_for_function("() => (document.querySelector(\".ag-row[row-index='0'] [col-id='example_id']\") || {}).innerText",
                           timeout=20_000)
    right = page.evaluate("() => document.querySelector('#examples-grid .ag-body-viewport').getBoundingClientRect().right")
    for col in ("score", "correctness", "✓ · direct", "✓ · cot"):
        box = page.locator(f".ag-header-cell[col-id='{col}']").bounding_box()
        assert box is not None and box["x"] + box["width"] <= right, col
    assert page.evaluate("() => window.scrollX") == 0
    assert log.take() == []
