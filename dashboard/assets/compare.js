// The Compare page in the browser: the aligned maps morph from run to run as the slider moves
// (positions interpolated linearly between neighbouring runs, one Plotly.update of the points and
// the arrows, no server round trip), the play button steps the slider, and the page state goes
// into the URL. Mirrors dashboard/compare_figures.py (interpolate, _arrows, _map_title).
(() => {
  const NO = () => window.dash_clientside.no_update;
  const STEP = 0.05;

  function gdOf(id) { return document.querySelector('#' + id + ' .js-plotly-plot'); }

  function esc(s) {
    return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  }

  function interpolate(P, t) {
    const last = P.runs.length - 1;
    t = Math.min(Math.max(Number(t) || 0, 0), last);
    const i = Math.min(Math.floor(t), Math.max(last - 1, 0));
    const f = t - i;
    if (last === 0 || f === 0) return [P.x[i], P.y[i], t];
    const x0 = P.x[i], x1 = P.x[i + 1], y0 = P.y[i], y1 = P.y[i + 1];
    const x = new Array(x0.length), y = new Array(y0.length);
    for (let k = 0; k < x0.length; k++) { x[k] = (1 - f) * x0[k] + f * x1[k]; y[k] = (1 - f) * y0[k] + f * y1[k]; }
    return [x, y, t];
  }

  function arrows(P, ids, x, y) {
    const index = new Map(P.ids.map((e, i) => [e, i]));
    return (ids || []).filter((e) => index.has(e)).map((e) => {
      const i = index.get(e);
      return {x: x[i], y: y[i], ax: P.x[0][i], ay: P.y[0][i], xref: 'x', yref: 'y', axref: 'x', ayref: 'y',
              showarrow: true, arrowhead: 2, arrowsize: 1.2, arrowwidth: 1.6, arrowcolor: '#d62728', text: ''};
    });
  }

  function title(P, t) {
    const i = Math.round(t);
    const where = Math.abs(t - i) < 1e-9 ? esc(P.runs[i])
      : esc(P.runs[Math.floor(t)]) + ' → ' + esc(P.runs[Math.floor(t) + 1]);
    const drawn = P.drawn < P.n ? ' (' + P.drawn.toLocaleString('en-US') + ' of ' + P.n.toLocaleString('en-US') + ' drawn)' : '';
    return 'Maps aligned to ' + esc(P.runs[0]) + ': ' + where + drawn;
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    llm_maps_compare: {
      morph(t, ids, P) {
        if (!P) return NO();
        const gd = gdOf('compare-map-graph');
        if (!gd || !gd._fullData) return NO();
        const [x, y, tt] = interpolate(P, t);
        Plotly.update(gd, {x: [x], y: [y]}, {annotations: arrows(P, ids, x, y), 'title.text': title(P, tt)}, [0])
          .catch((e) => console.warn('llm-maps compare:', e && e.message ? e.message : e));
        return String(tt);
      },
      play(n, disabled, t, P) {
        if (!n || !P) return [NO(), NO(), NO()];
        const last = P.runs.length - 1;
        if (disabled) {  // start (from the beginning when at the end)
          return [false, '❚❚ pause', (Number(t) || 0) >= last - 1e-9 ? 0 : NO()];
        }
        return [true, '▶ play', NO()];
      },
      tick(n, t, P) {
        if (!P) return [NO(), NO(), NO()];
        const last = P.runs.length - 1;
        const next = Math.round(((Number(t) || 0) + STEP) / STEP) * STEP;
        if (next >= last - 1e-9) return [last, true, '▶ play'];
        return [Number(next.toFixed(4)), NO(), NO()];
      },
      syncUrl(runs, axis, tasks, t, ids, ckaA, ckaB, probe, moved, fscale) {
        const w = window.dash_clientside.llm_maps && window.dash_clientside.llm_maps._write;
        if (!w) return NO();
        return w({runs, axis, task: tasks, t: t ? Number(t).toFixed(2).replace(/\.?0+$/, '') : null, ids,
                  cka_a: ckaA, cka_b: ckaB, probe, moved, fscale: fscale === 'raw' ? 'raw' : null});
      },
      pickRuns(runs) {
        if (!runs || runs.length < 2) return NO();
        const L = window.dash_clientside.llm_maps;
        const current = new URLSearchParams(L._search()).getAll('runs');
        if (JSON.stringify(current) === JSON.stringify(runs)) return NO();
        const q = new URLSearchParams();
        runs.forEach((r) => q.append('runs', r));
        L._go(window.location.pathname + '?' + q.toString());
        return NO();
      },
    },
  });
})();
