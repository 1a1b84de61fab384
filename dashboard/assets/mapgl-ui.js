// The WebGL map's interaction and 2-D layers (assets/mapgl.js builds the map and calls these):
//   llmMapGLUI.modebar   zoom / pan / box select / lasso / reset / PNG buttons
//   llmMapGLUI.events    hover (tooltip, details below the map), click (drill-down), drag to zoom,
//                        pan, box-select or lasso, wheel zoom, double-click (reset, or clear the
//                        selection)
//   llmMapGLOverlay.draw    what is drawn over the points: Regions outlines and labels, your points
//                           and paths, the neighbour lines of the selected example, the selection
//   llmMapGLOverlay.chrome  title and legend, for the exported image
// Plotly's own figure specs are read as they are (the neighbour overlay of figures.overlay_spec,
// the traces of userpoints.user_points_traces, the shapes and annotations of
// regions_view.region_layer), so the server builds them once for both renderers.
(() => {
  const FONT = '"Open Sans", verdana, arial, sans-serif';
  const CSS = `
.llm-gl { position: relative; height: 640px; font-family: ${FONT}; overflow: hidden; user-select: none; }
.llm-gl-title { position: absolute; left: 12px; top: 6px; font-size: 13px; white-space: nowrap; }
.llm-gl-plot { position: absolute; left: 10px; top: 30px; right: 200px; bottom: 10px; }
.llm-gl-layer { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.llm-gl-over { cursor: crosshair; touch-action: none; }
.llm-gl[data-mode=pan] .llm-gl-over { cursor: move; }
.llm-gl-legend { position: absolute; right: 10px; top: 30px; width: 180px; max-height: 600px; overflow: hidden;
  font-size: 12px; padding: 4px 6px; }
.llm-gl-legend-title { margin-bottom: 4px; }
.llm-gl-legend-item { display: flex; align-items: center; gap: 6px; line-height: 18px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.llm-gl-swatch { display: inline-block; width: 9px; height: 9px; border-radius: 50%; flex: none; }
.llm-gl-barrow { display: flex; gap: 6px; height: 300px; }
.llm-gl-colourbar { width: 14px; height: 100%; }
.llm-gl-ticks { display: flex; flex-direction: column; justify-content: space-between; font-size: 11px; }
.llm-gl-modebar { position: absolute; right: 10px; top: 2px; display: flex; gap: 2px; z-index: 2; }
.llm-gl-modebar button { font-size: 12px; line-height: 16px; padding: 1px 5px; border: 1px solid rgba(128,128,128,0.5);
  border-radius: 3px; background: transparent; color: inherit; opacity: 0.75; }
.llm-gl-modebar button.active { opacity: 1; border-color: currentColor; }
.llm-gl-tip { position: absolute; z-index: 3; pointer-events: none; font-size: 12px; padding: 3px 6px; max-width: 420px;
  background: rgba(255,255,255,0.95); color: #2a3f5f; border: 1px solid #888; border-radius: 3px; white-space: pre-wrap; }
.llm-gl[data-theme=dark] .llm-gl-tip { background: rgba(30,30,30,0.95); color: #f2f5fa; }
`;
  const style = document.createElement('style');
  style.textContent = CSS;
  document.head.appendChild(style);

  const MODES = [['zoom', 'Zoom (drag a box)', '⊕'], ['pan', 'Pan', '✥'], ['select', 'Box select', '▭'],
                 ['lasso', 'Lasso select', '◌']];

  function modebar(root, GL) {
    const bar = document.createElement('div');
    bar.className = 'llm-gl-modebar';
    const buttons = [];
    const setMode = (mode) => {
      GL.mode = mode;
      root.dataset.mode = mode;
      buttons.forEach((b) => b.classList.toggle('active', b.dataset.mode === mode));
    };
    for (const [mode, title, icon] of MODES) {
      const b = document.createElement('button');
      b.type = 'button'; b.title = title; b.textContent = icon; b.dataset.mode = mode;
      b.setAttribute('aria-label', title);
      b.addEventListener('click', () => setMode(mode));
      buttons.push(b);
      bar.appendChild(b);
    }
    const extra = [['reset', 'Reset axes', '⌂', () => { GL.map.view = Object.assign({}, GL.home); GL.api.schedule(); }],
                   ['png', 'Download plot as a PNG', '⤓', () => window.llmMapGL.download('png')]];
    for (const [name, title, icon, fn] of extra) {
      const b = document.createElement('button');
      b.type = 'button'; b.title = title; b.textContent = icon; b.dataset.action = name;
      b.setAttribute('aria-label', title);
      b.addEventListener('click', fn);
      bar.appendChild(b);
    }
    root.appendChild(bar);
    setMode(GL.mode || 'zoom');
  }

  // --- pointer events ------------------------------------------------------------------------------
  function local(GL, e) {
    const r = GL.over.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  }

  // plotly hover text (figures.plot_text: & < > escaped; <br> lines, <b>) -> plain text, never parsed as HTML
  function tipLines(text) {
    return String(text).replace(/<br\s*\/?>/gi, '\n').replace(/<\/?b>/gi, '').replace(/&lt;/g, '<').replace(/&gt;/g, '>')
      .replace(/&quot;/g, '"').replace(/&#x27;/g, "'").replace(/&#39;/g, "'").replace(/&amp;/g, '&');
  }

  function showTip(GL, px, py, text) {
    const tip = GL.tip;
    if (text === null) { tip.hidden = true; return; }
    tip.textContent = text;
    tip.hidden = false;
    const root = GL.root.getBoundingClientRect(), plot = GL.plot.getBoundingClientRect();
    const x = plot.left - root.left + px + 12, y = plot.top - root.top + py + 12;
    tip.style.left = Math.min(x, root.width - tip.offsetWidth - 4) + 'px';
    tip.style.top = Math.min(y, root.height - tip.offsetHeight - 4) + 'px';
  }

  function fmt(v) { return String(Number(Number(v).toPrecision(3))); }

  function hover(GL, api, px, py) {
    const label = GL.labels.find((b) => px >= b.x0 && px <= b.x1 && py >= b.y0 && py <= b.y1);
    if (label) { showTip(GL, px, py, tipLines(label.hover || label.text)); GL.hoverRow = null; return; }
    const row = api.hit(px, py);
    if (row === null) { showTip(GL, px, py, null); GL.hoverRow = null; return; }
    const x = GL.P.a.x[row], y = GL.P.a.y[row];
    const short = fmt(x) + ', ' + fmt(y) + ' · details below the map';
    api.hoverTexts(GL.run, GL.meta).then((texts) => {
      if (GL.hoverRow === row) showTip(GL, px, py, texts ? tipLines(texts[row]) : short);
    }).catch(() => {});
    if (GL.hoverRow !== row) {
      GL.hoverRow = row;
      showTip(GL, px, py, GL.meta.hover ? '…' : short);
      api.setProps('map-hover-row', {data: row});
    }
  }

  function click(GL, api, px, py) {
    const label = GL.labels.find((b) => px >= b.x0 && px <= b.x1 && py >= b.y0 && py <= b.y1);
    if (label && label.region !== null) { api.setProps('map-region', {value: label.region}); return; }
    const row = api.hit(px, py);
    if (row !== null) api.setProps('map-click-row', {data: row});
  }

  function finishDrag(GL, api, d) {
    const size = api.plotSize();
    if (d.mode === 'zoom') {
      const [ax, ay] = api.toData(Math.min(d.x0, d.x), Math.max(d.y0, d.y), size);
      const [bx, by] = api.toData(Math.max(d.x0, d.x), Math.min(d.y0, d.y), size);
      const v = GL.map.view, wide = Math.abs(d.x - d.x0) > 4, tall = Math.abs(d.y - d.y0) > 4;
      api.setView({x0: wide ? ax : v.x0, x1: wide ? bx : v.x1, y0: tall ? ay : v.y0, y1: tall ? by : v.y1});
    } else if (d.mode === 'select') {
      const [ax, ay] = api.toData(Math.min(d.x0, d.x), Math.max(d.y0, d.y), size);
      const [bx, by] = api.toData(Math.max(d.x0, d.x), Math.min(d.y0, d.y), size);
      api.select({type: 'box', x0: ax, x1: bx, y0: ay, y1: by});
    } else if (d.mode === 'lasso' && d.lasso.length > 2) {
      api.select({type: 'lasso', points: d.lasso.map(([px, py]) => api.toData(px, py, size))});
    }
  }

  function events(GL, api) {
    GL.api = api;
    const over = GL.over;
    let drag = null, hoverQueued = null;
    over.addEventListener('pointerdown', (e) => {
      if (e.button !== 0 || !GL.P) return;
      const [x, y] = local(GL, e);
      drag = {x0: x, y0: y, x, y, mode: GL.mode, view: Object.assign({}, GL.map.view), lasso: [[x, y]], moved: false};
      over.setPointerCapture(e.pointerId);
      e.preventDefault();
    });
    over.addEventListener('pointermove', (e) => {
      const [x, y] = local(GL, e);
      if (drag) {
        drag.x = x; drag.y = y;
        drag.moved = drag.moved || Math.hypot(x - drag.x0, y - drag.y0) > 4;
        if (drag.mode === 'lasso') drag.lasso.push([x, y]);
        if (drag.mode === 'pan') {
          const v = drag.view, s = api.plotSize();
          const dx = (x - drag.x0) / s.w * (v.x1 - v.x0), dy = (y - drag.y0) / s.h * (v.y1 - v.y0);
          GL.map.view = {x0: v.x0 - dx, x1: v.x1 - dx, y0: v.y0 + dy, y1: v.y1 + dy};
        }
        GL.drag = drag.moved ? drag : null;
        api.schedule();
        return;
      }
      if (!GL.P) return;
      if (hoverQueued) { hoverQueued = [x, y]; return; }
      hoverQueued = [x, y];
      requestAnimationFrame(() => { const [hx, hy] = hoverQueued; hoverQueued = null; hover(GL, api, hx, hy); });
    });
    over.addEventListener('pointerup', (e) => {
      if (!drag) return;
      const d = drag;
      drag = null; GL.drag = null;
      if (!d.moved) click(GL, api, d.x0, d.y0);
      else if (d.mode !== 'pan') finishDrag(GL, api, d);
      api.schedule();
    });
    over.addEventListener('pointerleave', () => { if (!drag) { GL.tip.hidden = true; GL.hoverRow = null; } });
    over.addEventListener('dblclick', () => {
      if (GL.sel) { api.clearSelection(true); return; }
      api.setView(Object.assign({}, GL.home));
    });
    over.addEventListener('wheel', (e) => {
      if (!GL.P) return;
      e.preventDefault();
      const [px, py] = local(GL, e), [cx, cy] = api.toData(px, py), v = GL.map.view, f = Math.exp(e.deltaY * 0.0015);
      api.setView({x0: cx - (cx - v.x0) * f, x1: cx + (v.x1 - cx) * f, y0: cy - (cy - v.y0) * f, y1: cy + (v.y1 - cy) * f});
    }, {passive: false});
  }

  // --- 2-D layers over the points ------------------------------------------------------------------
  function values(v) {  // a plotly array: a list or a typed-array spec {dtype, bdata}
    if (!v) return [];
    if (Array.isArray(v)) return v;
    if (v.bdata) {
      const T = {f4: Float32Array, f8: Float64Array, i4: Int32Array, u1: Uint8Array, u2: Uint16Array}[v.dtype];
      const s = atob(v.bdata), b = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) b[i] = s.charCodeAt(i);
      return Array.from(new T(b.buffer));
    }
    return [v];
  }

  function scaleColour(scale, cmin, cmax, value) {
    const rgba = window.GLScatter.sampleScale(scale, 64);
    const t = Math.min(Math.max((value - cmin) / ((cmax - cmin) || 1), 0), 1), k = Math.round(t * 63) * 4;
    return `rgb(${rgba[k]},${rgba[k + 1]},${rgba[k + 2]})`;
  }

  function star(ctx, x, y, r) {
    ctx.beginPath();
    for (let i = 0; i < 10; i++) {
      const a = -Math.PI / 2 + i * Math.PI / 5, rr = i % 2 ? r * 0.45 : r;
      ctx.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
    }
    ctx.closePath();
  }

  function arrow(ctx, x, y, angle, size) {
    ctx.save();
    ctx.translate(x, y);
    ctx.rotate(angle);
    ctx.beginPath();
    ctx.moveTo(size * 0.5, 0);
    ctx.lineTo(-size * 0.5, -size * 0.4);
    ctx.lineTo(-size * 0.5, size * 0.4);
    ctx.closePath();
    ctx.restore();
  }

  function drawTrace(ctx, t, P) {  // a user_points_traces trace: a path (lines + arrows) or a star
    const xs = values(t.x), ys = values(t.y), m = t.marker || {};
    const pts = xs.map((x, i) => (x === null || ys[i] === null ? null : P(x, ys[i])));
    if ((t.mode || '').includes('lines')) {
      ctx.strokeStyle = (t.line && t.line.color) || '#444';
      ctx.lineWidth = (t.line && t.line.width) || 1.5;
      ctx.beginPath();
      let open = false;
      pts.forEach((p) => { if (!p) { open = false; return; } if (open) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]); open = true; });
      ctx.stroke();
    }
    const symbols = values(m.symbol), sizes = values(m.size), colours = values(m.color);
    pts.forEach((p, i) => {
      if (!p) return;
      const sym = symbols.length > 1 ? symbols[i] : (symbols[0] || 'circle');
      const size = Number(sizes.length > 1 ? sizes[i] : (sizes[0] || 6));
      if (!size) return;
      const c = colours.length > 1 ? colours[i] : colours[0];
      ctx.fillStyle = typeof c === 'number' ? scaleColour(m.colorscale || [[0, '#000'], [1, '#000']], m.cmin ?? 0, m.cmax ?? 1, c) : (c || '#444');
      ctx.strokeStyle = (m.line && m.line.color) || 'rgba(0,0,0,0)';
      ctx.lineWidth = (m.line && m.line.width) || 0;
      if (sym === 'arrow' && i > 0 && pts[i - 1]) arrow(ctx, p[0], p[1], Math.atan2(p[1] - pts[i - 1][1], p[0] - pts[i - 1][0]), size);
      else if (sym === 'star') star(ctx, p[0], p[1], size / 2);
      else { ctx.beginPath(); ctx.arc(p[0], p[1], size / 2, 0, 2 * Math.PI); }
      ctx.fill();
      if (ctx.lineWidth) ctx.stroke();
    });
  }

  function drawNeighbours(ctx, o, P) {  // figures.overlay_spec: lines from the selected point, open circles
    if (!o || !o.x || !o.x.length) return;
    const pts = o.x.map((x, i) => (x === null || o.y[i] === null ? null : P(x, o.y[i])));
    ctx.strokeStyle = o.color[0];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let open = false;
    pts.forEach((p) => { if (!p) { open = false; return; } if (open) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]); open = true; });
    ctx.stroke();
    ctx.lineWidth = 2;
    pts.forEach((p, i) => {
      if (!p || !o.size[i]) return;
      ctx.strokeStyle = o.color[i];
      ctx.beginPath();
      ctx.arc(p[0], p[1], o.size[i] / 2, 0, 2 * Math.PI);
      ctx.stroke();
    });
  }

  function drawRegions(ctx, layer, P, GL) {  // regions_view.region_layer: outlines (paths), labels
    for (const s of layer.shapes || []) {
      const nums = (s.path || '').match(/-?[\d.]+(?:e[-+]?\d+)?/gi) || [];
      ctx.strokeStyle = (s.line && s.line.color) || '#444';
      ctx.lineWidth = (s.line && s.line.width) || 1;
      ctx.setLineDash(s.line && s.line.dash === 'dot' ? [2, 3] : []);
      ctx.beginPath();
      for (let i = 0; i + 1 < nums.length; i += 2) {
        const [px, py] = P(Number(nums[i]), Number(nums[i + 1]));
        if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      }
      ctx.closePath();
      ctx.stroke();
    }
    ctx.setLineDash([]);
    for (const a of layer.annotations || []) {
      const [px, py] = P(a.x, a.y), text = tipLines(String(a.text || '').replace(/<[^>]*>/g, ''));
      const m = /^<b>R(\d+)<\/b>/.exec(a.text || '');
      ctx.font = `bold ${(a.font && a.font.size) || 10}px ${FONT}`;
      const w = ctx.measureText(text).width + 6, h = 15, ly = py + (a.ay || -18);
      ctx.globalAlpha = a.opacity ?? 1;
      ctx.strokeStyle = a.arrowcolor || '#444';
      ctx.lineWidth = a.arrowwidth || 1;
      ctx.beginPath(); ctx.moveTo(px, py); ctx.lineTo(px, ly + h / 2); ctx.stroke();
      ctx.fillStyle = a.bgcolor || 'rgba(255,255,255,0.8)';
      ctx.fillRect(px - w / 2, ly - h / 2, w, h);
      ctx.strokeStyle = a.bordercolor || '#444';
      ctx.lineWidth = a.borderwidth || 1;
      ctx.strokeRect(px - w / 2, ly - h / 2, w, h);
      ctx.fillStyle = (a.font && a.font.color) || '#111111';
      ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
      ctx.fillText(text, px, ly);
      ctx.globalAlpha = 1;
      GL.labels.push({x0: px - w / 2, x1: px + w / 2, y0: ly - h / 2, y1: ly + h / 2, text, hover: a.hovertext,
                      region: m ? Number(m[1]) : null});
    }
    ctx.textAlign = 'start'; ctx.textBaseline = 'alphabetic';
  }

  function drawSelection(ctx, GL, P, size) {
    const d = GL.drag;
    ctx.setLineDash([4, 3]);
    ctx.lineWidth = 1;
    ctx.strokeStyle = GL.theme && GL.theme.dark ? '#eeeeee' : '#333333';
    ctx.fillStyle = 'rgba(128,128,128,0.12)';
    if (d && (d.mode === 'zoom' || d.mode === 'select')) {
      ctx.fillRect(Math.min(d.x0, d.x), Math.min(d.y0, d.y), Math.abs(d.x - d.x0), Math.abs(d.y - d.y0));
      ctx.strokeRect(Math.min(d.x0, d.x), Math.min(d.y0, d.y), Math.abs(d.x - d.x0), Math.abs(d.y - d.y0));
    } else if (d && d.mode === 'lasso') {
      ctx.beginPath(); d.lasso.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y))); ctx.closePath();
      ctx.fill(); ctx.stroke();
    } else if (GL.sel) {
      const s = GL.sel.shape;
      ctx.beginPath();
      const poly = s.type === 'box' ? [[s.x0, s.y0], [s.x1, s.y0], [s.x1, s.y1], [s.x0, s.y1]] : s.points;
      poly.forEach(([x, y], i) => { const [px, py] = P(x, y); if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py); });
      ctx.closePath(); ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  function draw(ctx, size, GL) {
    ctx.clearRect(0, 0, size.w, size.h);
    GL.labels = [];
    if (!GL.map || !GL.home) return;
    const v = GL.map.view;
    const P = (x, y) => [(x - v.x0) / (v.x1 - v.x0) * size.w, (1 - (y - v.y0) / (v.y1 - v.y0)) * size.h];
    drawRegions(ctx, GL.regions || {}, P, GL);
    for (const t of GL.user || []) drawTrace(ctx, t, P);
    drawNeighbours(ctx, GL.overlay, P);
    drawSelection(ctx, GL, P, size);
  }

  // Title and legend for the exported image, where the page shows them.
  function chrome(ctx, GL, th, root) {
    const at = (el) => { const r = el.getBoundingClientRect(); return [r.left - root.left, r.top - root.top, r.width, r.height]; };
    const [tx, ty] = at(GL.title);
    ctx.fillStyle = th.font;
    ctx.font = `13px ${FONT}`;
    ctx.textBaseline = 'top';
    ctx.fillText(GL.title.textContent, tx, ty + 2);
    const [lx, ly, lw, lh] = at(GL.legend);
    ctx.fillStyle = th.legendBg;
    ctx.fillRect(lx, ly, lw, lh);
    ctx.fillStyle = th.font;
    ctx.font = `12px ${FONT}`;
    for (const el of GL.legend.querySelectorAll('.llm-gl-legend-title, .llm-gl-legend-item span:last-child, .llm-gl-ticks span')) {
      const [x, y] = at(el);
      ctx.fillText(el.textContent, x, y + 2);
    }
    for (const el of GL.legend.querySelectorAll('.llm-gl-swatch')) {
      const [x, y, w] = at(el);
      ctx.fillStyle = el.style.background;
      ctx.beginPath(); ctx.arc(x + w / 2, y + w / 2, w / 2, 0, 2 * Math.PI); ctx.fill();
    }
    const bar = GL.legend.querySelector('.llm-gl-colourbar');
    if (bar && GL.spec && GL.spec.scale) {
      const [x, y, w, h] = at(bar), g = ctx.createLinearGradient(0, y + h, 0, y);
      GL.spec.bar.forEach(([p, c]) => g.addColorStop(Math.min(Math.max(p, 0), 1), c));
      ctx.fillStyle = g;
      ctx.fillRect(x, y, w, h);
    }
    ctx.textBaseline = 'alphabetic';
  }

  window.llmMapGLUI = {modebar, events};
  window.llmMapGLOverlay = {draw, chrome};
})();
