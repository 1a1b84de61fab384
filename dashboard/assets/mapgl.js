// The Map page's WebGL renderer (renderer=webgl in the URL; by default above 200k points): every
// point of the run drawn by assets/glscatter.js from arrays fetched once, each as raw little-endian
// bytes (/_llm_maps/array?run=R&name=x: float32 coordinates and values, uint8/uint16 category
// codes). It does what the Plotly map does, in the browser and without a server round trip for
// recolour and filter: the same colour options, colour scales and legends (mirroring
// dashboard/figures.py colour_spec and assets/dashboard.js colourSpec), the same filters
// (dashboard.js filterRows) and drawing order (train first), hover (a tooltip, and the details
// below the map from the server), click (drill-down, neighbour lines), box and lasso selection (its
// summary from the server, sent as a bitmask), zoom, pan, your points and paths, the Regions
// layer, an optional density layer, the dark theme, and PNG/SVG export. Layers drawn over the
// points (neighbour lines, your points, regions, the selection outline) are a 2-D canvas above
// the WebGL one; the density layer a 2-D canvas below it.
(() => {
  const NO = () => window.dash_clientside.no_update;
  const HIT_PX = 8;  // hover/click radius in CSS pixels
  const GL = {el: null, map: null, meta: null, run: null, cache: {}, seq: 0, key: null, mode: 'zoom', rows: null,
              vis: null, visStale: true, grid: null, spec: null, theme: null, overlay: null, user: [],
              regions: {shapes: [], annotations: []}, sel: null, density: false, densityImg: null, labels: [],
              last: null, pending: 0};
  const L = () => window.llmMaps;

  // --- data ------------------------------------------------------------------------------------
  function array(run, name, meta) {
    const cache = (GL.cache[run] = GL.cache[run] || {});
    if (!cache[name]) {
      const spec = meta.arrays[name];
      if (!spec) return Promise.reject(new Error('no array ' + name));
      const TYPES = {u1: Uint8Array, u2: Uint16Array, i4: Int32Array, f4: Float32Array};
      const early = window.__llmGL && window.__llmGL.run === run && window.__llmGL.arrays[name];
      if (early) {  // fetched from the page head (assets/early.js)
        delete window.__llmGL.arrays[name];
        cache[name] = early.then((buf) => new TYPES[spec.dtype](buf));
        cache[name].catch(() => { delete cache[name]; });
        return cache[name];
      }
      cache[name] = L().fetchBinary(L().url('/_llm_maps/array?run=') + encodeURIComponent(run) + '&name=' + name)
        .then((buf) => new TYPES[spec.dtype](buf));
      cache[name].catch(() => { delete cache[name]; });
    }
    return cache[name];
  }

  function layerDist(run, meta, layer) {
    if (layer === null || layer === undefined || layer === meta.default_layer) return array(run, 'dist', meta);
    const cache = (GL.cache[run] = GL.cache[run] || {}), key = 'dist@' + layer;
    if (!cache[key]) {
      cache[key] = L().fetchBinary(L().url('/_llm_maps/dist?run=') + encodeURIComponent(run) + '&layer=' + layer)
        .then((buf) => new Float32Array(buf));
      cache[key].catch(() => { delete cache[key]; });
    }
    return cache[key];
  }

  function hoverTexts(run, meta) {
    if (!meta.hover) return Promise.resolve(null);
    const cache = (GL.cache[run] = GL.cache[run] || {});
    if (!cache.hover) {
      cache.hover = fetch(L().url('/_llm_maps/hover?run=') + encodeURIComponent(run), {credentials: 'same-origin'})
        .then((r) => (r.ok ? r.json() : null));
      cache.hover.catch(() => { delete cache.hover; });
    }
    return cache.hover;
  }

  // What one view needs: every array its filters and its colour read.
  function needed(s) {
    const out = ['x', 'y', 'cat_split'];
    if (s.domain && s.domain.length) out.push('cat_domain');
    if (s.task && s.task.length) out.push('cat_task');
    if (s.scoreRange) out.push('score');
    if (s.region !== null) out.push('region');
    const o = s.meta.options[s.colour];
    if (o && o.kind === 'categorical') out.push('cat_' + s.colour);
    else if (s.colour === 'score' || s.colour === 'out_len') out.push(s.colour);
    else if (o && o.kind === 'outcome') (s.meta.conditions || []).forEach((_, i) => out.push('cond_' + i));
    return Array.from(new Set(out)).filter((n) => s.meta.arrays[n]);
  }

  // A value column for the GPU: non-finite values become GLScatter.MISSING_VALUE (drawn grey).
  function cleaned(name, arr) {
    const cache = (GL.cache[GL.run] = GL.cache[GL.run] || {}), key = 'clean:' + name;
    if (cache[key]) return cache[key];
    let out = arr;
    for (let i = 0; i < arr.length; i++) {
      if (!Number.isFinite(arr[i])) {
        out = Float32Array.from(arr, (v) => (Number.isFinite(v) ? v : window.GLScatter.MISSING_VALUE));
        break;
      }
    }
    cache[key] = out;
    return out;
  }

  // The colouring of ``rows`` (figures.colour_spec): what the GPU binds, the legend or colour bar.
  function colourOf(P, colour, rows, dist, pair) {
    const o = P.h.options[colour];
    if (o.kind === 'outcome' || o.kind === 'categorical') {
      let codes, name, title = o.title;
      if (o.kind === 'outcome') {
        const oc = L().outcomeCodes(P, pair);
        codes = oc.codes; name = 'outcome:' + oc.a + '\u0000' + oc.b; title = o.title + ': ' + oc.b + ' vs ' + oc.a;
      } else {
        codes = P.a['cat_' + colour]; name = 'cat_' + colour;
      }
      const counts = new Uint32Array(o.names.length);
      for (let i = 0; i < rows.length; i++) counts[codes[rows[i]]]++;
      const legend = o.names.map((n, i) => [o.kind === 'outcome' ? n + ' (' + counts[i] + ')' : n, o.colours[i]])
        .filter((_, i) => (o.kind === 'outcome' && i < 4) || counts[i] > 0);
      return {continuous: false, name, values: codes, colours: o.colours, legend, title};
    }
    const src = colour === 'score' ? P.a.score : colour === 'dist' ? dist : P.a.out_len;
    let lo = Infinity, hi = -Infinity, allFinite = true;
    for (let i = 0; i < rows.length; i++) {
      const v = src[rows[i]];
      if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } else allFinite = false;
    }
    if (lo === Infinity) { lo = 0; hi = 1; }
    if (o.fixed) { lo = o.fixed[0]; hi = o.fixed[1]; }
    if (hi <= lo) hi = lo + 1;
    const name = 'v:' + (colour === 'dist' ? 'dist@' + GL.distLayer : colour);
    // the colour bar: the scale, with figures.MISSING_BAND of grey below it when some rows have no value
    const g = P.h.band, f = g / (1 + g);
    const bar = allFinite ? o.scale : [[0, P.h.missing], [f, P.h.missing]].concat(o.scale.map(([p, c]) => [f + p * (1 - f), c]));
    return {continuous: true, name, values: cleaned(name, src), scale: o.scale, bar, lo, hi, legend: [],
            title: o.title + (allFinite ? '' : ' (grey: none)'), missing: !allFinite};
  }

  // --- the view: data <-> pixels ---------------------------------------------------------------
  function plotSize() {
    const r = GL.plot.getBoundingClientRect();
    return {w: Math.max(r.width, 1), h: Math.max(r.height, 1), left: r.left, top: r.top};
  }

  function toPixel(x, y, size = plotSize()) {
    const v = GL.map.view;
    return [(x - v.x0) / (v.x1 - v.x0) * size.w, (1 - (y - v.y0) / (v.y1 - v.y0)) * size.h];
  }

  function toData(px, py, size = plotSize()) {
    const v = GL.map.view;
    return [v.x0 + px / size.w * (v.x1 - v.x0), v.y0 + (1 - py / size.h) * (v.y1 - v.y0)];
  }

  function homeView(x, y) {  // every finite point in view, with a margin
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, bad = false;
    for (let i = 0; i < x.length; i++) {
      const a = x[i], b = y[i];
      if (!Number.isFinite(a) || !Number.isFinite(b)) { bad = true; continue; }
      if (a < x0) x0 = a; if (a > x1) x1 = a; if (b < y0) y0 = b; if (b > y1) y1 = b;
    }
    if (x0 === Infinity) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
    const px = (x1 - x0) * 0.04 || 1, py = (y1 - y0) * 0.04 || 1;
    return {view: {x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py}, nonFinite: bad};
  }

  function setView(v) {
    GL.map.view = v;
    GL.hoverRow = null;
    schedule();
  }

  let frameQueued = false;
  function schedule() {
    if (frameQueued) return;
    frameQueued = true;
    requestAnimationFrame(() => { frameQueued = false; paint(); });
  }

  function paint() {
    if (!GL.map) return;
    const s = plotSize(), ratio = window.devicePixelRatio || 1;
    GL.map.resize(s.w, s.h, ratio);
    // the CPU backend paints the plot's own colour under what is drawn lowest (the atlas tokens, else
    // the points) when nothing is drawn below that
    const bg = GL.density || !GL.theme ? null : GL.theme.plot;
    GL.map.background = GL.atlas ? null : bg;
    GL.map.render();
    if (GL.atlas) paintAtlas(s, ratio, bg);
    for (const c of [GL.over, GL.dens]) {
      const w = Math.round(s.w * ratio), h = Math.round(s.h * ratio);
      if (c.width !== w) c.width = w;
      if (c.height !== h) c.height = h;
    }
    // the layers above and below the points are drawn again only when what they show changed (an
    // untouched canvas costs the browser nothing to composite)
    const v = GL.map.view, frame = [v.x0, v.x1, v.y0, v.y1, s.w, s.h, ratio, GL.theme && GL.theme.paper];
    const densKey = frame.concat([GL.density, GL.densityImg, GL.rows]);
    if (!same(densKey, GL.densKey)) {
      const dctx = GL.dens.getContext('2d');
      dctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      drawDensity(dctx, s);
      GL.densKey = frame.concat([GL.density, GL.densityImg, GL.rows]);
    }
    const overKey = frame.concat([GL.overlay, GL.user, GL.regions, GL.sel]);
    if (GL.drag || GL.overDrag || !same(overKey, GL.overKey)) {
      const octx = GL.over.getContext('2d');
      octx.setTransform(ratio, 0, 0, ratio, 0, 0);
      window.llmMapGLOverlay.draw(octx, s, GL);
      GL.overKey = overKey;
      GL.overDrag = !!GL.drag;  // once more after a drag, to take its outline away
    }
  }

  // The token map's atlas tokens, under the points: drawn again only when the view, size or theme changed.
  function paintAtlas(size, ratio, bg) {
    const a = GL.atlas, v = GL.map.view, dark = !!(GL.theme && GL.theme.dark);
    const key = [v.x0, v.x1, v.y0, v.y1, size.w, size.h, ratio, bg, dark];
    if (same(key, GL.atlasKey)) return;
    a.view = v;
    a.resize(size.w, size.h, ratio);
    a.background = bg;
    a.setCategorical('c', [dark ? '#9aa0a6' : '#8a8f98']);
    const t0 = performance.now();
    a.render();
    GL.atlasKey = key;
    GL.atlasFrameMs = Math.round(performance.now() - t0);
  }

  // After the first frame, in the tokens view: every atlas token, faint, under the prompts (their
  // own renderer on the canvas below the points'; no hover: the prompts are what is pointed at).
  async function loadAtlas(run, meta) {
    if (!meta.atlas || GL.run !== run || GL.atlas) return;
    const [x, y] = await Promise.all([array(run, 'atlas_x', meta), array(run, 'atlas_y', meta)]);
    if (GL.run !== run || GL.atlas || !GL.map) return;
    const a = window.GLScatter.create(GL.atlasCanvas, GL.map.backend);
    a.column('x', x);
    a.column('y', y);
    a.column('c', new Uint8Array(x.length));
    const order = new Uint32Array(x.length);
    for (let i = 0; i < order.length; i++) order[i] = i;
    a.setOrder(order);
    a.style = {size: 2, alpha: 0.45, dimAlpha: 0.45, train: -1};
    GL.atlas = a; GL.atlasKey = null;
    GL.atlasNote = ' · ' + x.length.toLocaleString('en-US') + ' atlas tokens under them';
    GL.title.textContent = (GL.titleBase || '') + GL.atlasNote;
    schedule();
  }

  function same(a, b) { return !!b && a.length === b.length && a.every((x, i) => x === b[i]); }

  // --- filters and colours -> the GPU ----------------------------------------------------------
  async function apply(s) {
    const fresh = GL.key === null;
    setTheme(s.dark, s.templates);
    if (GL.density !== !!s.density) { GL.density = !!s.density; GL.densityImg = null; schedule(); }
    const query = (s.q || '').trim();
    const pair = s.colour === 'outcome' ? [s.ca, s.cb] : null;
    const key = JSON.stringify([s.colour, s.layer, s.split, s.domain, s.task, s.score, s.dist, query, pair, !!s.dim,
                                s.region]);
    if (!fresh && key === GL.key) return;
    if (query && (!s.hits || s.hits.q !== query)) return;  // the server's hits come next
    GL.key = key;
    const seq = ++GL.seq;
    const meta = s.meta, run = s.run;
    const f = {split: s.split, domain: s.domain, task: s.task, region: s.region,
               score: meta.has_scores ? L().activeRange(s.score, s.smin, s.smax) : null,
               dist: L().activeRange(s.dist, s.dmin, s.dmax), bits: query ? L().decodeBits(s.hits.bits) : null};
    const want = needed(Object.assign({}, s, {meta, scoreRange: f.score}));
    const needDist = f.dist !== null || s.colour === 'dist';
    GL.pending += 1;
    try {
      const got = await Promise.all(want.map((n) => array(run, n, meta)));
      const dist = needDist ? await layerDist(run, meta, s.layer) : null;
      if (seq !== GL.seq || GL.run !== run) return;
      const P = {h: meta, a: {}};
      want.forEach((n, i) => { P.a[n] = got[i]; });
      GL.P = P;
      GL.distLayer = s.layer === null || s.layer === undefined ? meta.default_layer : s.layer;
      const rowsKey = JSON.stringify([s.split, s.domain, s.task, f.score, f.dist, f.dist && GL.distLayer, query, s.region,
                                      pair]);
      draw(P, f, dist, s.colour, pair, !!s.dim, rowsKey);
      GL.last.called = s.calledAt;  // when the page's callback (or a direct click) asked for this view
      GL.last.direct = !!s.direct;
    } finally {
      GL.pending -= 1;
    }
  }

  // The rows drawn, in drawing order (train first): filters.filter_mask, and for the outcome colour
  // only the rows scored under both conditions; the same as last time when the filters are.
  function drawnRows(P, f, dist, pair, rowsKey) {
    if (GL.rows && GL.rowsKey === rowsKey) return GL.rows;
    let rows = L().filterRows(P, f, dist);
    if (pair) {
      const codes = L().outcomeCodes(P, pair).codes;
      rows = rows.filter((r) => codes[r] !== 4);
    }
    if (GL.nonFinite) rows = rows.filter((r) => Number.isFinite(P.a.x[r]) && Number.isFinite(P.a.y[r]));
    rows = L().drawOrder(P, rows);
    GL.map.setOrder(new Uint32Array(rows.buffer, rows.byteOffset, rows.length));
    GL.rowsKey = rowsKey;
    GL.visStale = true; GL.densityImg = null;
    clearSelection(false);
    return rows;
  }

  function draw(P, f, dist, colour, pair, dim, rowsKey) {
    const t0 = performance.now();
    const map = GL.map;
    map.column('x', P.a.x);
    map.column('y', P.a.y);
    map.column('split', P.a.cat_split);
    const rows = drawnRows(P, f, dist, pair, rowsKey), m = rows.length, n = P.h.n;
    const t1 = performance.now();
    const spec = colourOf(P, colour, rows, dist, pair);
    if (spec.name.startsWith('outcome:') && GL.outcomeName && GL.outcomeName !== spec.name) map.dropColumn(GL.outcomeName);
    if (spec.name.startsWith('outcome:')) GL.outcomeName = spec.name;
    map.column(spec.name, spec.values);
    if (spec.continuous) map.setContinuous(spec.name, spec.scale, spec.lo, spec.hi, P.h.missing);
    else map.setCategorical(spec.name, spec.colours);
    const train = P.h.names.split.indexOf('train');
    map.style = {size: m < 5000 ? 6 : m < 50000 ? 4 : 3, alpha: m < 50000 ? 1 : 0.7, dimAlpha: P.h.dim_opacity,
                 train: dim && train >= 0 ? train : -1};
    GL.rows = rows; GL.spec = spec;
    const t2 = performance.now();
    const note = (P.h.options[colour] && P.h.options[colour].note) || '';
    GL.titleBase = m.toLocaleString('en-US') + ' of ' + n.toLocaleString('en-US') + ' examples' + note;
    GL.title.textContent = GL.titleBase + (GL.atlasNote || '');
    legend(spec);
    paint();
    if (window.__llmSyncDraw) map.finish();  // benchmarks: the drawing done, not only asked for
    GL.last = {seq: GL.seq, colour, m, n, legendTitle: spec.title, title: GL.title.textContent, backend: map.backend,
               ms: Math.round(performance.now() - t0), rows_ms: Math.round(t1 - t0), colour_ms: Math.round(t2 - t1),
               at: Math.round(performance.now()), presented: null};
    const last = GL.last;  // the frame after the next one: the frame holding this draw has been presented
    requestAnimationFrame(() => requestAnimationFrame(() => { last.presented = performance.now(); }));
  }

  // --- legend and colour bar (HTML beside the plot; names as text, never HTML) ----------------------
  function legend(spec) {
    const box = GL.legend;
    box.textContent = '';
    const title = document.createElement('div');
    title.className = 'llm-gl-legend-title';
    title.textContent = spec.title;
    box.appendChild(title);
    if (!spec.continuous) {
      for (const [name, colour] of spec.legend.slice(0, GL.meta.legend_slots)) {
        const item = document.createElement('div');
        item.className = 'llm-gl-legend-item';
        const sw = document.createElement('span');
        sw.className = 'llm-gl-swatch';
        sw.style.background = colour;
        const label = document.createElement('span');
        label.textContent = name;
        item.append(sw, label);
        box.appendChild(item);
      }
      return;
    }
    const bar = document.createElement('div');
    bar.className = 'llm-gl-colourbar';
    const stops = spec.bar.map(([p, c]) => c + ' ' + (100 - p * 100) + '%').reverse();
    bar.style.background = 'linear-gradient(to bottom, ' + stops.join(', ') + ')';
    const ticks = document.createElement('div');
    ticks.className = 'llm-gl-ticks';
    for (const v of [spec.hi, (spec.lo + spec.hi) / 2, spec.lo]) {
      const t = document.createElement('span');
      t.textContent = formatTick(v);
      ticks.appendChild(t);
    }
    const row = document.createElement('div');
    row.className = 'llm-gl-barrow';
    row.append(bar, ticks);
    box.appendChild(row);
  }

  function formatTick(v) {
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : String(Number(v.toPrecision(3)));
  }

  // --- the theme: the template's colours ---------------------------------------------------------
  function setTheme(dark, templates) {
    const t = templates && templates[dark ? 'dark' : 'light'];
    if (!t || !GL.root) return;
    const lay = t.template.layout, font = (lay.font && lay.font.color) || (dark ? '#f2f5fa' : '#2a3f5f');
    const theme = {paper: lay.paper_bgcolor || (dark ? 'rgb(17,17,17)' : 'white'), plot: lay.plot_bgcolor || lay.paper_bgcolor,
                   font, legendBg: t.legend_bg, dark: !!dark};
    if (GL.theme && GL.theme.paper === theme.paper && GL.theme.font === theme.font) return;
    GL.theme = theme;
    GL.root.style.background = theme.paper;
    GL.root.style.color = theme.font;
    GL.plot.style.background = theme.plot;
    GL.legend.style.background = theme.legendBg;
    GL.root.dataset.theme = dark ? 'dark' : 'light';
    schedule();
  }

  // --- density layer (option): counts of the drawn points on a 200 x 200 grid, log scale ----------
  function drawDensity(ctx, size) {
    ctx.clearRect(0, 0, size.w, size.h);
    if (!GL.density || !GL.rows || !GL.P) return;
    const B = 200, h = GL.home;
    if (!GL.densityImg) {
      const x = GL.P.a.x, y = GL.P.a.y, rows = GL.rows, counts = new Float32Array(B * B);
      const sx = B / (h.x1 - h.x0), sy = B / (h.y1 - h.y0);
      let top = 0;
      for (let i = 0; i < rows.length; i++) {
        const r = rows[i], bx = Math.floor((x[r] - h.x0) * sx), by = Math.floor((y[r] - h.y0) * sy);
        if (bx >= 0 && bx < B && by >= 0 && by < B) { const k = (B - 1 - by) * B + bx; counts[k]++; if (counts[k] > top) top = counts[k]; }
      }
      const img = new ImageData(B, B), lt = Math.log10(top + 1) || 1, base = GL.theme && GL.theme.dark ? 255 : 0;
      for (let k = 0; k < B * B; k++) {
        if (!counts[k]) continue;
        const t = Math.log10(counts[k] + 1) / lt;
        img.data[k * 4] = img.data[k * 4 + 1] = img.data[k * 4 + 2] = base;
        img.data[k * 4 + 3] = Math.round(255 * 0.45 * (0.15 + 0.85 * t));
      }
      const c = document.createElement('canvas');
      c.width = B; c.height = B;
      c.getContext('2d').putImageData(img, 0, 0);
      GL.densityImg = c;
    }
    const [px0, py1] = toPixel(h.x0, h.y0, size), [px1, py0] = toPixel(h.x1, h.y1, size);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(GL.densityImg, px0, py0, px1 - px0, py1 - py0);
  }

  // --- hit testing: a uniform grid over every point, built once per run ----------------------------
  function grid() {
    if (GL.grid) return GL.grid;
    const x = GL.P.a.x, y = GL.P.a.y, n = x.length, h = GL.home;
    const G = Math.max(1, Math.min(1024, Math.ceil(Math.sqrt(n / 4))));
    const sx = G / (h.x1 - h.x0), sy = G / (h.y1 - h.y0);
    const cell = new Int32Array(n), start = new Uint32Array(G * G + 1);
    for (let i = 0; i < n; i++) {
      const cx = Math.floor((x[i] - h.x0) * sx), cy = Math.floor((y[i] - h.y0) * sy);
      const c = cx >= 0 && cx < G && cy >= 0 && cy < G ? cx + cy * G : -1;
      cell[i] = c;
      if (c >= 0) start[c + 1]++;
    }
    for (let c = 0; c < G * G; c++) start[c + 1] += start[c];
    const fill = start.slice(0, G * G), rows = new Uint32Array(start[G * G]);
    for (let i = 0; i < n; i++) if (cell[i] >= 0) rows[fill[cell[i]]++] = i;
    GL.grid = {G, sx, sy, start, rows};
    return GL.grid;
  }

  function visible() {
    if (!GL.visStale && GL.vis) return GL.vis;
    const n = GL.P.h.n, vis = GL.vis && GL.vis.length === n ? GL.vis.fill(0) : new Uint8Array(n), rows = GL.rows;
    for (let i = 0; i < rows.length; i++) vis[rows[i]] = 1;
    GL.vis = vis; GL.visStale = false;
    return vis;
  }

  // The drawn row nearest to pixel (px, py) within HIT_PX, or null.
  function hit(px, py) {
    if (!GL.rows || !GL.P) return null;
    const g = grid(), vis = visible(), size = plotSize(), h = GL.home, x = GL.P.a.x, y = GL.P.a.y;
    const [dx, dy] = toData(px, py, size), v = GL.map.view;
    const rx = HIT_PX * (v.x1 - v.x0) / size.w, ry = HIT_PX * (v.y1 - v.y0) / size.h;
    const c0 = Math.max(0, Math.floor((dx - rx - h.x0) * g.sx)), c1 = Math.min(g.G - 1, Math.floor((dx + rx - h.x0) * g.sx));
    const r0 = Math.max(0, Math.floor((dy - ry - h.y0) * g.sy)), r1 = Math.min(g.G - 1, Math.floor((dy + ry - h.y0) * g.sy));
    if ((c1 - c0 + 1) * (r1 - r0 + 1) > 40000) return null;  // zoomed far out of the map
    let best = null, bestD = 1;
    for (let cy = r0; cy <= r1; cy++) {
      for (let cx = c0; cx <= c1; cx++) {
        const c = cx + cy * g.G;
        for (let k = g.start[c]; k < g.start[c + 1]; k++) {
          const r = g.rows[k];
          if (!vis[r]) continue;
          const ex = (x[r] - dx) / rx, ey = (y[r] - dy) / ry, d = ex * ex + ey * ey;
          if (d <= bestD) { bestD = d; best = r; }
        }
      }
    }
    return best;
  }

  // --- selection: box or lasso over the drawn points -> a bitmask for the server --------------------
  function inPolygon(px, py, poly) {
    let inside = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > py) !== (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }

  function select(shape) {  // shape: {type: 'box', x0, x1, y0, y1} or {type: 'lasso', points: [[x, y]...]} in data units
    const x = GL.P.a.x, y = GL.P.a.y, rows = GL.rows, n = GL.P.h.n, mask = new Uint8Array(n);
    let bx0, bx1, by0, by1;
    if (shape.type === 'box') { [bx0, bx1, by0, by1] = [shape.x0, shape.x1, shape.y0, shape.y1]; } else {
      bx0 = Math.min(...shape.points.map((p) => p[0])); bx1 = Math.max(...shape.points.map((p) => p[0]));
      by0 = Math.min(...shape.points.map((p) => p[1])); by1 = Math.max(...shape.points.map((p) => p[1]));
    }
    let count = 0;
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i], a = x[r], b = y[r];
      if (!(a > bx0 && a < bx1 && b > by0 && b < by1)) continue;
      if (shape.type === 'lasso' && !inPolygon(a, b, shape.points)) continue;
      mask[r] = 1; count++;
    }
    GL.map.dropColumn('sel');
    GL.map.column('sel', mask);
    GL.map.setSelection('sel');
    GL.sel = {shape, count, mask};
    schedule();
    const bits = new Uint8Array((n + 7) >> 3);
    for (let r = 0; r < n; r++) if (mask[r]) bits[r >> 3] |= 1 << (r & 7);
    let s = '';
    for (let i = 0; i < bits.length; i += 0x8000) s += String.fromCharCode.apply(null, bits.subarray(i, i + 0x8000));
    setProps('map-select-rows', {data: count ? {bits: btoa(s), n} : []});
  }

  function clearSelection(tell) {
    if (!GL.sel) return;
    GL.sel = null;
    GL.map.setSelection(null);
    GL.map.dropColumn('sel');
    schedule();
    if (tell) setProps('map-select-rows', {data: []});
  }

  function setProps(id, props) {
    const sp = window.dash_clientside && window.dash_clientside.set_props;
    if (sp) sp(id, props);
  }

  // --- building the page's map ----------------------------------------------------------------
  function container(timeout = 60000) {
    const t0 = performance.now();
    return new Promise((resolve, reject) => {
      const poll = () => {
        const el = document.getElementById('map-graph');
        if (el) return resolve(el);
        if (performance.now() - t0 > timeout) return reject(new Error('no #map-graph'));
        requestAnimationFrame(poll);
      };
      poll();
    });
  }

  function part(parent, tag, cls) {
    const e = document.createElement(tag);
    e.className = cls;
    parent.appendChild(e);
    return e;
  }

  function init(el, s) {
    if (GL.map && GL.map.gl) { const ext = GL.map.gl.getExtension('WEBGL_lose_context'); if (ext) ext.loseContext(); }
    Object.assign(GL, {el, run: s.run, meta: s.meta, map: null, key: null, rows: null, rowsKey: null, grid: null, vis: null, sel: null,
                       densKey: null, overKey: null, atlas: null, atlasKey: null, atlasNote: '', titleBase: '',
                       theme: null, P: null, densityImg: null, hoverRow: null});
    el.textContent = '';
    const root = part(el, 'div', 'llm-gl');
    GL.root = root;
    GL.title = part(root, 'div', 'llm-gl-title');
    GL.plot = part(root, 'div', 'llm-gl-plot');
    GL.dens = part(GL.plot, 'canvas', 'llm-gl-layer');
    GL.atlasCanvas = part(GL.plot, 'canvas', 'llm-gl-layer llm-gl-atlas');
    const canvas = part(GL.plot, 'canvas', 'llm-gl-layer llm-gl-points');
    GL.over = part(GL.plot, 'canvas', 'llm-gl-layer llm-gl-over');
    GL.legend = part(root, 'div', 'llm-gl-legend');
    GL.tip = part(root, 'div', 'llm-gl-tip');
    GL.tip.hidden = true;
    // the GPU; the CPU where WebGL is software (?glbackend=gpu|cpu chooses). Unless chosen, the
    // first frame is the CPU's (asking whether WebGL here is a GPU would start the browser's GPU
    // process in front of it: ~0.25 s with SwiftShader); upgrade() then moves to a real GPU
    const backend = new URLSearchParams(window.location.search).get('glbackend') || 'auto';
    GL.upgrade = backend === 'auto';
    try {
      GL.map = window.GLScatter.create(canvas, backend === 'auto' ? 'cpu' : backend);
    } catch (e) {  // no WebGL2 here: the Plotly map instead
      console.warn('llm-maps map: ' + e.message + '; drawing with Plotly');
      const L = window.dash_clientside && window.dash_clientside.llm_maps;
      const q = new URLSearchParams(L && L._search ? L._search() : window.location.search);
      q.set('renderer', 'plotly');
      window.location.replace(window.location.pathname + '?' + q.toString());
      return false;
    }
    GL.map.view = {x0: 0, x1: 1, y0: 0, y1: 1};
    GL.home = null;
    window.llmMapGLUI.modebar(root, GL);
    window.llmMapGLUI.events(GL, {hit, select, clearSelection, setView, setProps, toData, toPixel, plotSize, hoverTexts,
                                  schedule});
    new ResizeObserver(() => schedule()).observe(GL.plot);
    return true;
  }

  // Every array the first view needs is asked for at once, before the map's element exists; the
  // rest of the run's arrays after the first frame (so a recolour or filter finds them here).
  const applyReady = async (s) => {
    for (const k of ['split', 'domain', 'task']) if (Array.isArray(s[k])) s[k] = s[k].slice().sort();  // order-free
    GL.s = s;
    const want = needed(Object.assign({}, s, {scoreRange: s.meta.has_scores ? L().activeRange(s.score, s.smin, s.smax) : null}));
    want.forEach((n) => array(s.run, n, s.meta).catch(() => {}));
    const el = await container();
    const fresh = GL.el !== el || GL.run !== s.run;
    if (fresh && !init(el, s)) return;
    const [x, y] = await Promise.all([array(s.run, 'x', s.meta), array(s.run, 'y', s.meta)]);
    if (!GL.home && GL.el === el) {
      const h = homeView(x, y);
      GL.home = h.view; GL.nonFinite = h.nonFinite;
      GL.map.view = Object.assign({}, h.view);
    }
    await apply(s);
    if (fresh) {
      afterPaint(() => {
        prefetch(s.run, s.meta);
        upgrade().catch(onError);
        loadAtlas(s.run, s.meta).catch(onError);
      });
    }
  };

  // --- the controls drawn from at once --------------------------------------------------------------
  // A click on a colour option, a split box or the dim switch changes the view here, from the
  // arrays already in the page, in the click's own task; Dash's callback (mapApply) follows with
  // the same view and finds it drawn (for a colour option: after the frame, see below). Anything
  // else (keyboard, the other controls) goes through Dash only.
  function directChange(target) {
    const s = GL.s;
    if (!s || !target || !target.closest || !GL.el || !document.body.contains(GL.el)) return null;
    // a label passes its click on to its box: the box's click is the one change (split, dim)
    if (target.tagName === 'INPUT' && target.name === 'map-split' && target.closest('#map-split')) {
      const cur = s.split || [], v = target.value;
      return {split: cur.includes(v) ? cur.filter((x) => x !== v) : cur.concat([v])};
    }
    const opt = target.closest('[role=option]'), colour = document.getElementById('map-colour');
    if (opt) {
      const pop = opt.closest('[role=dialog]'), input = opt.querySelector('input');
      if (!colour || !pop || !input || colour.getAttribute('aria-controls') !== pop.id) return null;
      if (input.disabled || opt.getAttribute('aria-disabled') === 'true') return null;  // Dash refuses it too
      return s.meta.options[input.value] ? {colour: input.value} : null;
    }
    return target.id === 'map-dim' ? {dim: !s.dim} : null;
  }

  // A colour option's click is held from Dash until the frame with the new colours is on screen,
  // then given back as the same element's click: Dash's handling of it (the menu closing, its store,
  // the callbacks after; 15-25 ms on these machines) would otherwise run in front of that frame and
  // show the new colours a frame later. The menu closes those ~30 ms later. A second choice made in
  // between replaces the first (each hold's own timers, ``turn``); a colour Dash chose meanwhile
  // (the keyboard) wins over the held one; a map or run gone meanwhile drops it. (A split box or the
  // dim switch is not held: their own handling is short, and a box must show its new state at once.)
  const held = {el: null, value: null, before: null, run: null, turn: 0};
  let replaying = false;
  function giveBack() {
    const {el, value, run} = held;
    held.el = null;
    if (!el || !document.getElementById('map-colour') || GL.run !== run) return;
    const opt = el.closest('[role=option]'), input = opt && opt.querySelector('input');
    if (el.isConnected && input && input.value === value) {
      replaying = true;
      try { el.click(); } finally { replaying = false; }
    } else {  // the menu went meanwhile, or its rows now show other options
      try { window.dash_clientside.set_props('map-colour', {value}); } catch (err) { onError(err); }
    }
  }

  function dashChose(colour) {  // Dash's own call for a view while a click is held
    if (held.el && colour !== held.value && colour !== held.before) held.el = null;
  }

  document.addEventListener('click', (e) => {
    if (replaying) return;  // Dash's turn
    const change = directChange(e.target);
    if (!change) return;
    if (change.colour !== undefined && !held.el) held.before = GL.s.colour;  // what Dash has
    const s = Object.assign({}, GL.s, change, {calledAt: performance.now(), direct: true});
    applyReady(s).catch(onError);
    if (change.colour === undefined) return;
    e.preventDefault();  // the option's box keeps its state until Dash hears of the click
    e.stopImmediatePropagation();
    const turn = held.turn + 1;
    Object.assign(held, {el: e.target, value: change.colour, run: s.run, turn});
    const give = () => { if (held.turn === turn) giveBack(); };
    afterPaint(give);
    setTimeout(give, 250);  // no animation frames (a hidden tab): Dash hears of it all the same
  }, true);

  // After the first frame: where WebGL is a real GPU (asked in a worker), the map moves to it.
  async function upgrade() {
    if (!GL.upgrade || !GL.map) return;
    GL.upgrade = false;
    const cpu = GL.map;
    if (await window.GLScatter.probeSoftware() || GL.map !== cpu) return;
    const canvas = cpu.canvas.cloneNode(false);
    let map;
    try { map = window.GLScatter.create(canvas, 'gpu'); } catch (e) { return; }
    cpu.canvas.replaceWith(canvas);
    map.view = cpu.view;
    clearSelection(true);
    Object.assign(GL, {map, key: null, rows: null, rowsKey: null, outcomeName: null});
    if (GL.atlas) {  // the atlas tokens move too (a canvas with a 2-D context cannot take a WebGL one)
      const c = GL.atlasCanvas.cloneNode(false);
      GL.atlasCanvas.replaceWith(c);
      Object.assign(GL, {atlasCanvas: c, atlas: null, atlasKey: null});
      loadAtlas(GL.run, GL.meta).catch(onError);
    }
    if (GL.s) applyReady(GL.s).catch(onError);
  }

  function afterPaint(fn) { requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(fn, 0))); }

  async function prefetch(run, meta) {  // one at a time: the page stays responsive meanwhile
    for (const name of Object.keys(meta.arrays)) {
      if (GL.run !== run) return;
      try { await array(run, name, meta); } catch (e) { /* asked for again when needed */ }
    }
    hoverTexts(run, meta).catch(() => {});
  }

  // --- export: the figure as one PNG (2x), or an SVG holding it as an image ------------------------
  function exportImage(format) {
    const scale = 2, root = GL.root.getBoundingClientRect(), s = plotSize();
    const W = Math.round(root.width), H = Math.round(root.height);
    const c = document.createElement('canvas');
    c.width = W * scale; c.height = H * scale;
    const ctx = c.getContext('2d');
    ctx.scale(scale, scale);
    const th = GL.theme || {paper: 'white', plot: 'white', font: '#2a3f5f', legendBg: 'rgba(255,255,255,0.6)'};
    ctx.fillStyle = th.paper; ctx.fillRect(0, 0, W, H);
    const ox = s.left - root.left, oy = s.top - root.top;
    ctx.fillStyle = th.plot; ctx.fillRect(ox, oy, s.w, s.h);
    ctx.save(); ctx.translate(ox, oy); ctx.beginPath(); ctx.rect(0, 0, s.w, s.h); ctx.clip();
    drawDensity(ctx, s);
    if (GL.atlas) {
      GL.atlasKey = null;
      paintAtlas(s, scale, GL.density ? null : th.plot);
      ctx.drawImage(GL.atlas.canvas, 0, 0, s.w, s.h);
      GL.atlasKey = null;
    }
    GL.map.resize(s.w, s.h, scale);
    GL.map.render();
    ctx.drawImage(GL.map.canvas, 0, 0, s.w, s.h);
    GL.map.resize(s.w, s.h, window.devicePixelRatio || 1);
    GL.map.render();
    if (GL.atlas) schedule();  // its canvas back to the page's scale
    window.llmMapGLOverlay.draw(ctx, s, GL);
    ctx.restore();
    window.llmMapGLOverlay.chrome(ctx, GL, th, root);
    const png = c.toDataURL('image/png');
    if (format !== 'svg') return Promise.resolve(png);
    const esc = (t) => String(t).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
    return Promise.resolve('data:image/svg+xml;charset=utf-8,' + encodeURIComponent(
      `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="${W}" height="${H}">` +
      `<image x="0" y="0" width="${W}" height="${H}" xlink:href="${png}"/>` +
      `<text x="-9999" y="-9999" opacity="0">${esc(GL.title.textContent)}</text></svg>`));
  }

  function download(format) {
    return exportImage(format).then((href) => {
      const a = document.createElement('a');
      a.href = href;
      a.download = 'llm-maps-map.' + format;
      document.body.appendChild(a);
      a.click();
      setTimeout(() => a.remove(), 1000);
    });
  }

  function onError(e) { console.warn('llm-maps map (WebGL):', e && e.message ? e.message : e); }

  window.llmMapGL = {
    apply(s) { dashChose(s.colour); s.calledAt = performance.now(); applyReady(s).catch(onError); },
    active() { return !!(GL.map && GL.el && document.body.contains(GL.el)); },
    overlay(o) { GL.overlay = o; if (GL.map) schedule(); },
    user(traces) { GL.user = traces || []; if (GL.map) schedule(); },
    regions(layer) { GL.regions = layer || {shapes: [], annotations: []}; if (GL.map) schedule(); },
    theme(dark, templates) { if (GL.map) setTheme(dark, templates); },
    exportImage, download,
    // for tests and benchmarks
    state: GL,
    pixel(row) {
      const s = plotSize(), [px, py] = toPixel(GL.P.a.x[row], GL.P.a.y[row], s);
      return [s.left + px, s.top + py];
    },
    drawn() {
      const sp = GL.spec, rows = Array.from(GL.rows || []);
      return {rows, values: rows.map((r) => sp.values[r]), legend: sp.legend.map((e) => e[0]), title: GL.title.textContent,
              legendTitle: sp.title, continuous: sp.continuous, lo: sp.lo, hi: sp.hi, size: GL.map.style.size,
              alpha: GL.map.style.alpha, train: GL.map.style.train, selected: GL.sel ? GL.sel.count : 0,
              theme: GL.theme && GL.theme.paper};
    },
    toPage(x, y) {  // data coordinates -> page pixels
      const s = plotSize(), [px, py] = toPixel(x, y, s);
      return [s.left + px, s.top + py];
    },
    colourAt(row) {  // the colour drawn where a row's point is (RGBA), for tests
      const [px, py] = toPixel(GL.P.a.x[row], GL.P.a.y[row]);
      return GL.map.readPixel(px, py);
    },
    backend() { return GL.map && GL.map.backend; },
  };
  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    llm_map_gl: {
      pickRenderer(webgl) {  // the renderer switch: the same view, drawn by the other renderer
        if (webgl === null || webgl === undefined) return NO();
        const L = window.dash_clientside.llm_maps;
        const q = new URLSearchParams(L._search());
        q.set('renderer', webgl ? 'webgl' : 'plotly');
        L._go(window.location.pathname + '?' + q.toString());
        return NO();
      },
    },
  });
})();
