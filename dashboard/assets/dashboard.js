// Clientside callbacks: keep page state in the URL (replaceState: no reload, no router round
// trip), switch runs, switch the light/dark theme (page and figures), export figures, and draw
// the map in the browser: the run's per-point arrays are fetched once (/_llm_maps/points, a
// binary blob of typed arrays) and colour and filter changes become one Plotly.update of the
// points and legend traces of the graph that is already drawn, with no server round trip. This
// mirrors dashboard/figures.py (colour_spec, points_marker, legend_traces) and
// dashboard/filters.py (filter_mask).
(() => {
  // Dash's polyfill replaces String.prototype.trim with a slower one, which plotly.js calls for
  // every point colour; the browser's own (kept by the page head, see app.py) is correct.
  if (window.__llmNativeTrim && String.prototype.trim !== window.__llmNativeTrim) {
    Object.defineProperty(String.prototype, 'trim', {value: window.__llmNativeTrim, writable: true, configurable: true});
  }
  const NO = () => window.dash_clientside.no_update;
  // The URL path the app lives under (Dash's requests_pathname_prefix, "/" by default): every
  // fetch and link the browser makes goes below it.
  let prefix = null;
  function url(path) {
    if (prefix === null) {
      try { prefix = JSON.parse(document.getElementById('_dash-config').textContent).requests_pathname_prefix || '/'; }
      catch (e) { prefix = '/'; }
    }
    return prefix.replace(/\/$/, '') + path;
  }
  const TYPES = {u1: Uint8Array, u2: Uint16Array, i4: Int32Array, f4: Float32Array};
  const MAP = {payloads: {}, dists: {}, seq: 0};

  function gdOf(id) { return document.querySelector('#' + id + ' .js-plotly-plot'); }

  // Resolves with the graph div once Plotly has drawn it (and ``ready(gd)`` holds).
  function plotted(id, timeout = 120000, ready = () => true) {
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      const poll = () => {
        const gd = gdOf(id);
        if (gd && gd._fullData && gd._fullLayout && ready(gd)) return resolve(gd);
        if (performance.now() - t0 > timeout) return reject(new Error('no figure #' + id));
        requestAnimationFrame(poll);
      };
      poll();
    });
  }

  async function fetchBinary(url) {
    const r = await fetch(url, {credentials: 'same-origin'});
    if (!r.ok) {
      let msg = r.status + '';
      try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.arrayBuffer();
  }

  function parsePayload(buf) {
    const hl = new DataView(buf).getUint32(0, true);
    const h = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, hl)));
    const base = 4 + hl + ((8 - ((4 + hl) % 8)) % 8);
    const a = {};
    for (const [k, s] of Object.entries(h.arrays)) a[k] = new TYPES[s.dtype](buf, base + s.offset, s.length);
    return {h, a, bytes: buf.byteLength};
  }

  function afterPaint(fn) {  // the frame after the next one: the current one has been presented
    requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(fn, 0)));
  }

  function payload(run) {
    if (!MAP.payloads[run]) {
      MAP.payloads[run] = fetchBinary(url('/_llm_maps/points?run=') + encodeURIComponent(run)).then(parsePayload);
      MAP.payloads[run].catch(() => { delete MAP.payloads[run]; });
    }
    return MAP.payloads[run];
  }

  function layerDist(run, P, layer) {
    if (layer === null || layer === undefined || layer === P.h.default_layer) return Promise.resolve(P.a.dist);
    const key = run + '\u0000' + layer;
    if (!MAP.dists[key]) {
      MAP.dists[key] = fetchBinary(url('/_llm_maps/dist?run=') + encodeURIComponent(run) + '&layer=' + layer)
        .then((buf) => new Float32Array(buf));
      MAP.dists[key].catch(() => { delete MAP.dists[key]; });
    }
    return MAP.dists[key];
  }

  function activeRange(v, lo, hi) {  // filters.active_range
    if (!v || v.length !== 2 || v[0] === null || v[1] === null) return null;
    if (Math.abs(v[0] - lo) < 1e-12 && Math.abs(v[1] - hi) < 1e-12) return null;
    return [Math.fround(v[0]), Math.fround(v[1])];  // numpy compares float32 columns in float32
  }

  function allowed(names, wanted, emptyMeansAll) {
    if (!wanted || !wanted.length) return emptyMeansAll ? null : new Uint8Array(names.length);
    const ok = new Uint8Array(names.length);
    for (const w of wanted) { const i = names.indexOf(w); if (i >= 0) ok[i] = 1; }
    return ok;
  }

  function decodeBits(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }

  // filters.filter_mask -> Int32Array of the rows that pass
  function filterRows(P, f, dist) {
    const a = P.a, n = P.h.n;
    const sOK = allowed(P.h.names.split, f.split, false);
    const dOK = allowed(P.h.names.domain, f.domain, true);
    const tOK = allowed(P.h.names.task, f.task, true);
    const cs = a.cat_split, cd = a.cat_domain, ct = a.cat_task, score = a.score;
    const sr = f.score, dr = f.dist, bits = f.bits;
    const rg = f.region === null || f.region === undefined ? null : Number(f.region), reg = a.region;
    const out = new Int32Array(n);
    let m = 0;
    for (let i = 0; i < n; i++) {
      if (!sOK[cs[i]]) continue;
      if (dOK !== null && !dOK[cd[i]]) continue;
      if (tOK !== null && !tOK[ct[i]]) continue;
      if (sr !== null) { const v = score[i]; if (!(v >= sr[0] && v <= sr[1])) continue; }
      if (dr !== null) { const v = dist[i]; if (!(v >= dr[0] && v <= dr[1])) continue; }
      if (bits !== null && !((bits[i >> 3] >> (i & 7)) & 1)) continue;
      if (rg !== null && (!reg || reg[i] !== rg)) continue;  // a region of regions.json (regions_view.region_mask)
      out[m++] = i;
    }
    return out.slice(0, m);
  }

  function gather(src, rows) {
    const out = new src.constructor(rows.length);
    for (let i = 0; i < rows.length; i++) out[i] = src[rows[i]];
    return out;
  }

  function steppedScale(colours) {  // figures.stepped_scale
    const cs = colours.length ? colours : ['#888888'];
    const k = Math.max(colours.length, 1), scale = [];
    cs.forEach((c, i) => { scale.push([i / k, c], [(i + 1) / k, c]); });
    return scale;
  }

  // conditions_view.outcome_codes: B against A per row (0 helped, 1 hurt, 2 both right, 3 both
  // wrong, 4 not scored under both) from each condition's codes (0 unscored, 1 wrong, 2 right)
  function outcomeCodes(P, pair) {
    const names = P.h.conditions || [], dp = P.h.default_pair || [];
    const a = names.includes(pair && pair[0]) ? pair[0] : dp[0];
    const b = names.includes(pair && pair[1]) ? pair[1] : dp[1];
    const ca = P.a['cond_' + names.indexOf(a)], cb = P.a['cond_' + names.indexOf(b)];
    const out = new Uint8Array(P.h.n).fill(4);
    if (!ca || !cb) return {codes: out, a, b};
    for (let i = 0; i < P.h.n; i++) {
      const x = ca[i], y = cb[i];
      if (!x || !y) continue;
      out[i] = x === 2 ? (y === 2 ? 2 : 1) : (y === 2 ? 0 : 3);
    }
    return {codes: out, a, b};
  }

  function colourSpec(P, colour, rows, identity, dist, pair) {  // figures.colour_spec
    const o = P.h.options[colour];
    if (o.kind === 'outcome') {  // conditions_view.outcome_spec: every outcome with its count
      const oc = outcomeCodes(P, pair);
      const codes = identity ? oc.codes : gather(oc.codes, rows);
      const counts = new Uint32Array(o.names.length);
      for (let i = 0; i < codes.length; i++) counts[codes[i]]++;
      const legend = o.names.map((n, i) => [n + ' (' + counts[i] + ')', o.colours[i]]).filter((_, i) => i < 4 || counts[i] > 0);
      return {values: codes, colorscale: steppedScale(o.colours), cmin: -0.5, cmax: o.colours.length - 0.5,
              legend, title: o.title + ': ' + oc.b + ' vs ' + oc.a, continuous: false};
    }
    if (o.kind === 'categorical') {
      const src = P.a['cat_' + colour];
      const codes = identity ? src : gather(src, rows);
      const counts = new Uint32Array(o.names.length);
      for (let i = 0; i < codes.length; i++) counts[codes[i]]++;
      const legend = o.names.map((n, i) => [n, o.colours[i]]).filter((_, i) => counts[i] > 0);
      return {values: codes, colorscale: steppedScale(o.colours), cmin: -0.5, cmax: o.colours.length - 0.5,
              legend, title: o.title, continuous: false};
    }
    const src = colour === 'score' ? P.a.score : colour === 'dist' ? dist : P.a.out_len;
    let vals = identity ? src : gather(src, rows);
    let lo = Infinity, hi = -Infinity, allFinite = true;
    for (let i = 0; i < vals.length; i++) {
      const v = vals[i];
      if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } else allFinite = false;
    }
    if (lo === Infinity) { lo = 0; hi = 1; }
    if (o.fixed) { lo = o.fixed[0]; hi = o.fixed[1]; }
    if (hi <= lo) hi = lo + 1;
    if (allFinite) return {values: vals, colorscale: o.scale, cmin: lo, cmax: hi, legend: [], title: o.title, continuous: true};
    const g = P.h.band, span = hi - lo, fill = Math.fround(lo - span * g);
    vals = Float32Array.from(vals, (v) => (Number.isFinite(v) ? v : fill));
    const f = g / (1 + g);
    const scale = [[0, P.h.missing], [f, P.h.missing]].concat(o.scale.map(([p, c]) => [f + p * (1 - f), c]));
    return {values: vals, colorscale: scale, cmin: lo - span * g, cmax: hi, legend: [], title: o.title + ' (grey: none)',
            continuous: true};
  }

  function pointsMarker(spec, m, dim) {  // figures.points_marker (dim: per point, 1 = faint)
    const opacity = m < 50000 ? 1 : 0.7;
    const marker = {color: spec.values, colorscale: spec.colorscale, cmin: spec.cmin, cmax: spec.cmax,
                    size: m < 5000 ? 6 : m < 50000 ? 4 : 3, opacity, showscale: spec.continuous};
    if (dim && dim.some((v) => v)) marker.opacity = Float32Array.from(dim, (v) => (v ? DIM_OPACITY : opacity));
    if (spec.continuous) marker.colorbar = {title: {text: spec.title}, thickness: 14};
    return marker;
  }

  const DIM_OPACITY = 0.2;  // figures.DIM_OPACITY

  // figures.draw_order: train rows first, then the test rows, each in row order (test points are
  // drawn above train points in every colouring)
  function drawOrder(P, rows) {
    const train = P.h.names.split.indexOf('train'), cs = P.a.cat_split;
    if (train < 0) return rows;
    const out = new Int32Array(rows.length);
    let k = 0;
    for (let i = 0; i < rows.length; i++) if (cs[rows[i]] === train) out[k++] = rows[i];
    if (k === 0 || k === rows.length) return rows;
    for (let i = 0; i < rows.length; i++) if (cs[rows[i]] !== train) out[k++] = rows[i];
    return out;
  }

  function inOrder(rows, n) {  // every row, in row order (the trace then needs no customdata)
    if (rows.length !== n) return false;
    for (let i = 0; i < n; i++) if (rows[i] !== i) return false;
    return true;
  }

  // figures.plot_text: text plotly draws (legend, hover, titles) with & < > escaped, so a name such
  // as <a href=...> is shown as typed, never as a link or styled text
  function plotText(value) {
    return String(value).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  }

  function legendTrace(entry) {  // figures.legend_traces
    return entry ? {type: 'scatter', x: [null], y: [null], mode: 'markers', name: plotText(entry[0]), showlegend: true,
                    marker: {color: entry[1], size: 9}, hoverinfo: 'skip'}
      : {type: 'scatter', x: [null], y: [null], mode: 'markers', showlegend: false, hoverinfo: 'skip', name: ''};
  }

  function currentRows(gd, n) {  // the rows trace 0 draws now: array, null (every row in order) or undefined (unknown)
    const t = gd.data[0];
    if (t.customdata) return t.customdata;
    const len = gd._fullData && gd._fullData[0] ? gd._fullData[0]._length : -1;
    return len === n ? null : undefined;
  }

  function sameRows(a, rows, n) {
    if (a === undefined) return false;
    if (a === null) return rows.length === n;
    if (a.length !== rows.length) return false;
    for (let i = 0; i < rows.length; i++) if (a[i] !== rows[i]) return false;
    return true;
  }

  // One Plotly.update of trace 0 (marker; points only when the rows changed) and the legend slots
  // (3..3+legend_slots), plus the title and legend title: the same figure Plotly.react of the
  // whole figure made, without diffing it.
  function drawPoints(gd, P, rows, colour, dist, pair, dimTrain) {
    const n = P.h.n, m = rows.length, identity = inOrder(rows, n);
    const spec = colourSpec(P, colour, rows, identity, dist, pair);
    const traces = [0], slots = [];
    for (let i = 0; i < P.h.legend_slots; i++) { traces.push(3 + i); slots.push(legendTrace(spec.legend[i])); }
    const train = P.h.names.split.indexOf('train');
    const dim = dimTrain ? Array.from(rows, (r) => P.a.cat_split[r] === train) : null;
    const upd = {
      marker: [pointsMarker(spec, m, dim)].concat(slots.map((t) => t.marker || null)),
      name: [gd.data[0].name].concat(slots.map((t) => t.name)),
      showlegend: [false].concat(slots.map((t) => t.showlegend)),
    };
    if (!sameRows(currentRows(gd, n), rows, n)) {
      const none = slots.map(() => [null]), nulls = slots.map(() => null);
      upd.x = [identity ? P.a.x : gather(P.a.x, rows)].concat(none);
      upd.y = [identity ? P.a.y : gather(P.a.y, rows)].concat(none);
      upd.customdata = [identity ? null : rows].concat(nulls);
      if (P.h.hover) {
        upd.text = [identity ? P.h.hover : Array.from(rows, (i) => P.h.hover[i])].concat(nulls);
        upd.hovertemplate = ['%{text}<extra></extra>'].concat(nulls);
      } else {
        upd.text = [null].concat(nulls);
        upd.hovertemplate = [P.h.short_hover].concat(nulls);
      }
    }
    const note = P.h.options[colour] && P.h.options[colour].note;  // condition outcome: scored under both
    const title = m.toLocaleString('en-US') + ' of ' + n.toLocaleString('en-US') + ' examples' + (note || '');
    return Plotly.update(gd, upd, {'title.text': title, 'legend.title.text': spec.title}, traces);
  }

  function applyTemplate(gd, dark, templates) {
    const t = templates && templates[dark ? 'dark' : 'light'];
    if (!gd || !t || !gd._fullLayout) return Promise.resolve();
    if (gd._fullLayout.paper_bgcolor === t.template.layout.paper_bgcolor) return Promise.resolve();
    return Plotly.relayout(gd, {template: t.template, 'legend.bgcolor': t.legend_bg});
  }

  function rowOf(gd, point) {
    const cd = gd && gd._fullData && gd._fullData[0] && gd._fullData[0].customdata;
    return cd ? Number(cd[point.pointNumber]) : point.pointNumber;
  }

  function onError(e) { console.warn('llm-maps map:', e && e.message ? e.message : e); }

  // Page state goes into the URL once the frame that shows a change has been drawn: a same-document
  // URL change holds back the browser's next frame (in the benchmark's Chromium, ~8 ms of a 100k-point
  // recolour: median 42 -> 36 ms click to frame), and of several writes before then only the last is
  // made. What reads the page's URL reads through here (search(): the state last written); navigating
  // drops a write still waiting (go(), or a move to another page of the app before it is made).
  const URLS = {pending: null, timer: null, from: null};
  const here = () => window.location.pathname + window.location.search;
  // a write still waiting counts only while the page is where it was when the write was asked for
  const waiting = () => URLS.pending !== null && URLS.from === here();
  function flushUrl() {
    if (URLS.pending === null) return;
    const next = URLS.pending, moved = URLS.from !== here();
    URLS.pending = null;
    clearTimeout(URLS.timer);
    if (moved) return;  // the page went elsewhere meanwhile (a link, Back, another page of the app)
    if (next !== here()) {
      window.history.replaceState(window.history.state, '', next);
    }
  }
  function writeUrl(next) {
    const queued = waiting();
    if (!queued) URLS.from = here();
    URLS.pending = next;
    if (queued) return;
    requestAnimationFrame(() => setTimeout(flushUrl, 0));
    URLS.timer = setTimeout(flushUrl, 250);  // animation frames wait while the tab is hidden
  }
  function search() {
    if (!waiting()) return window.location.search;
    const p = URLS.pending;
    return p.includes('?') ? p.slice(p.indexOf('?')) : '';
  }
  function go(href) {
    URLS.pending = null;
    clearTimeout(URLS.timer);
    window.location.assign(href);
  }
  window.addEventListener('pagehide', flushUrl);

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    llm_maps: {
      _write(params) {
        const q = new URLSearchParams();
        for (const [k, v] of Object.entries(params)) {
          if (v === null || v === undefined || v === '') continue;
          if (Array.isArray(v)) { v.forEach((x) => q.append(k, x)); } else { q.set(k, v); }
        }
        const next = window.location.pathname + (q.toString() ? '?' + q.toString() : '');
        if (next !== window.location.pathname + search()) writeUrl(next);
        return NO();
      },
      _search: search,
      _go: go,
      _range(v, lo, hi) {
        if (!v || v.length !== 2) return null;
        if (Math.abs(v[0] - lo) < 1e-12 && Math.abs(v[1] - hi) < 1e-12) return null;
        return v.join(',');
      },
      _key(key) {  // a page's run key "RUN::VIEW" (dashboard/data.py view_key) -> {run, view}
        const i = (key || '').lastIndexOf('::');
        return i < 0 ? {run: key, view: null} : {run: key.slice(0, i), view: key.slice(i + 2)};
      },
      syncMapUrl(key, colour, layer, split, domain, task, score, dist, q, sel, mine, ca, cb, dim, regions, region, density,
                 smin, smax, dmin, dmax, splitOpts, renderer) {
        const L = window.dash_clientside.llm_maps;
        const {run, view} = L._key(key);
        const allSplits = (splitOpts || []).length === (split || []).length;
        const outcome = colour === 'outcome';
        return L._write({run, view, colour: colour === 'split' ? null : colour, layer, split: allSplits ? null : (split.length ? split : ['none']),
          domain, task, score: L._range(score, smin, smax), dist: L._range(dist, dmin, dmax), q, sel, mine: mine ? '1' : null,
          ca: outcome ? ca : null, cb: outcome ? cb : null, dim: dim ? '1' : null, regions: regions ? '1' : null,
          region: region === null || region === undefined ? null : region, density: density ? '1' : null,
          renderer: renderer || null, glbackend: new URLSearchParams(search()).get('glbackend')});
      },
      syncFalloffUrl(key, layer, metric, bins, domain, task, mode, cond, condOpts) {
        const L = window.dash_clientside.llm_maps;
        const {run, view} = L._key(key);
        const all = !condOpts || !condOpts.length || (cond || []).length === condOpts.length;
        return L._write({run, view, layer, metric, bins, domain, task, mode,
          cond: all ? null : ((cond || []).length ? cond : ['none'])});
      },
      syncExamplesUrl(key, sel, filterModel) {
        const L = window.dash_clientside.llm_maps;
        const {run, view} = L._key(key);
        const f = (filterModel || {}).region;  // a region (regions_view): the table's region column, equals K
        const region = f && f.type === 'equals' && f.filter !== null && f.filter !== undefined ? f.filter : null;
        return L._write({run, view, sel, region});
      },
      pickView(view) {  // the view switch: the same page and run in another view (other settings reset)
        if (!view) return NO();
        const q = new URLSearchParams(search());
        if ((q.get('view') || 'prompt') === view) return NO();
        const next = new URLSearchParams();
        if (q.get('run')) next.set('run', q.get('run'));
        if (view !== 'prompt') next.set('view', view);
        go(window.location.pathname + '?' + next.toString());
        return NO();
      },
      pickRun(run) {
        if (!run) return NO();
        const current = new URLSearchParams(search()).get('run');
        if (current === run) return NO();
        const path = window.location.pathname === url('/') ? url('/map') : window.location.pathname;
        go(path + '?run=' + encodeURIComponent(run));
        return NO();
      },
      theme(dark, templates) {
        const link = document.getElementById('theme-css');
        const href = url(dark ? '/assets/themes/darkly.min.css' : '/assets/themes/flatly.min.css');
        if (link && link.getAttribute('href') !== href) link.setAttribute('href', href);
        document.documentElement.setAttribute('data-bs-theme', dark ? 'dark' : 'light');
        document.documentElement.setAttribute('data-ag-theme-mode', dark ? 'dark' : 'light');  // the examples table
        // the server reads this to build figures in the right template from the start
        document.cookie = 'llm_maps_theme=' + (dark ? 'dark' : 'light') + '; path=' + url('/') + '; max-age=31536000; SameSite=Lax';
        document.querySelectorAll('.js-plotly-plot').forEach((gd) => { applyTemplate(gd, dark, templates).catch(onError); });
        if (window.llmMapGL) window.llmMapGL.theme(dark, templates);
        return NO();
      },
      exportFigure() {
        const trig = (window.dash_clientside.callback_context.triggered || [])[0];
        if (!trig) return NO();
        const id = trig.prop_id.split('.')[0];
        const format = id.endsWith('-svg') ? 'svg' : 'png';
        const graph = id.replace(/-(png|svg)$/, '');
        const gd = gdOf(graph);
        if (!gd && graph === 'map-graph' && window.llmMapGL && window.llmMapGL.active()) {  // the WebGL map
          window.llmMapGL.download(format).catch(onError);
          return NO();
        }
        if (!gd) return NO();
        const opts = {format, scale: format === 'png' ? 2 : 1, width: gd._fullLayout.width, height: gd._fullLayout.height};
        Plotly.toImage(gd, opts).then((dataUrl) => {  // PNG base64, SVG URL-encoded
          const a = document.createElement('a');
          a.href = dataUrl;
          a.download = 'llm-maps-' + graph.replace(/-graph$/, '') + '.' + format;
          document.body.appendChild(a);
          a.click();
          setTimeout(() => a.remove(), 1000);
        }).catch(onError);
        return NO();
      },
      // Colour/filter changes. Client mode: redraw here and return no_update. Server mode (large
      // runs): return a request the server answers with a new (sampled) figure.
      mapApply(colour, layer, split, domain, task, score, dist, q, hits, relayout, ca, cb, dim, region, density, run, mode,
               smin, smax, dmin, dmax, dark, templates, meta) {
        if (mode === 'webgl') {  // every point on the GPU: assets/mapgl.js
          window.llmMapGL.apply({colour, layer, split, domain, task, score, dist, q, hits, ca, cb, dim, density, run, smin,
                                 smax, dmin, dmax, dark, templates, meta, region: region === undefined ? null : region});
          return NO();
        }
        const trig = (window.dash_clientside.callback_context.triggered || []).map((t) => t.prop_id);
        const byRelayout = trig.length === 1 && trig[0].startsWith('map-graph.');
        const query = (q || '').trim();
        const pair = colour === 'outcome' ? [ca, cb] : null;  // the conditions matter only to that colour
        if (region === undefined) region = null;
        const key = JSON.stringify([colour, layer, split, domain, task, score, dist, query, pair, !!dim, region]);
        const gdNow = gdOf('map-graph');
        if (!gdNow || gdNow.__llmView === undefined) {
          // the first call for this graph: the figure built into the page already shows this view
          plotted('map-graph').then((gd) => {
            if (gd.__llmView === undefined) gd.__llmView = key;
            applyTemplate(gd, dark, templates).catch(onError);
            // the run's arrays once the first frame is on screen, so their download and parsing
            // never hold it back
            if (mode === 'client') afterPaint(() => payload(run).catch(onError));
          }).catch(onError);
          return NO();
        }
        if (mode !== 'client') {
          const r = relayout || {};
          let xrange = null, yrange = null;
          if (byRelayout) {
            if ('xaxis.range[0]' in r && 'yaxis.range[0]' in r) {
              xrange = [r['xaxis.range[0]'], r['xaxis.range[1]']];
              yrange = [r['yaxis.range[0]'], r['yaxis.range[1]']];
            } else if (!r['xaxis.autorange']) return NO();
          } else if (key === gdNow.__llmView) return NO();
          gdNow.__llmView = key;
          return {colour, layer, split, domain, task, score, dist, q, dark: !!dark, xrange, yrange, ca, cb, dim: !!dim,
                  region};
        }
        if (byRelayout || key === gdNow.__llmView) return NO();
        if (query && (!hits || hits.q !== query)) return NO();  // the server's hits come next
        gdNow.__llmView = key;
        const seq = ++MAP.seq;
        (async () => {
          const P = await payload(run);
          const d = await layerDist(run, P, layer);
          if (seq !== MAP.seq) return;
          let rows = filterRows(P, {split, domain, task, score: P.h.has_scores ? activeRange(score, smin, smax) : null,
                                    dist: activeRange(dist, dmin, dmax), bits: query ? decodeBits(hits.bits) : null,
                                    region}, d);
          if (pair) {  // conditions_view.scored_under_both: the outcome colour draws only these
            const codes = outcomeCodes(P, pair).codes;
            rows = rows.filter((r) => codes[r] !== 4);
          }
          rows = drawOrder(P, rows);
          const gd = await plotted('map-graph');
          if (seq !== MAP.seq) return;
          await drawPoints(gd, P, rows, colour, d, pair, !!dim);
        })().catch(onError);
        return NO();
      },
      mapOverlay(o) {
        if (window.llmMapGL) window.llmMapGL.overlay(o);  // the WebGL map draws it too (mapgl.js)
        const gd = gdOf('map-graph');
        if (!gd || !o) return NO();
        Plotly.restyle(gd, {x: [o.x], y: [o.y], text: [o.text], 'marker.size': [o.size], 'marker.color': [o.color]}, [1])
          .catch(onError);
        return NO();
      },
      mapPointRow(ev) {
        const points = (ev && ev.points) || [];
        if (!points.length || points[0].curveNumber !== 0) return NO();
        return rowOf(gdOf('map-graph'), points[0]);
      },
      mapSelectRows(ev) {
        const gd = gdOf('map-graph');
        const points = ((ev && ev.points) || []).filter((p) => p.curveNumber === 0);
        return points.map((p) => rowOf(gd, p));
      },
    },
  });
  window.llmMapsState = MAP;  // for tests and benchmarks
  // for playground.js and the WebGL map (mapgl.js), which filters and colours as this file does
  window.llmMaps = {url, plotted, plotText, fetchBinary, filterRows, drawOrder, outcomeCodes, activeRange, decodeBits};
})();
