// Runs in the page head, before Dash's scripts; dashboard/app.py (index_string) inlines this file
// (no extra request) with its settings as data attributes of the <script> element:
//   data-plen  length of the URL prefix the app lives under ("/" -> 1)
//   data-url   URL of our plotly.js bundle (dashboard/assets/vendor/plotly-llm-maps.min.js, ?m=mtime)
//   data-dcc   URL of dcc's component chunks (PREFIX_dash-component-suites/dash/dcc/)
//   data-gl    (the Map page, when its map is the WebGL one: dashboard/points.py gl_page_hint) the
//              run key, and data-gl-arrays the arrays its first frame needs
// Dash itself does not load this file (assets_ignore in create_app).
//
// (1) Keep the browser's own String.prototype.trim, which Dash's polyfill replaces with a slow one
// (plotly.js parses every point colour with it; dashboard.js puts it back).
// (2) plotly.js, as our own bundle of the three traces the app draws (tools/plotly-bundle: 1.5 MB
// instead of 4.8, evaluated in ~0.2 s instead of ~1 s). window.Plotly starts as a promise-like
// placeholder that dcc.Graph waits on, on every page, so the stock plotly.min.js is never loaded;
// the first `then` loads the bundle. On the pages with graphs (map, falloff, playground) its
// download also starts with the page (preload), and it is run while the server answers the first
// callback (the page layout), so neither waits for the other.
// (3) The WebGL map (data-gl): its first arrays are fetched from here, while Dash's scripts load
// (assets/mapgl.js takes them from window.__llmGL), with dcc's dropdown and slider chunks (Dash
// waits for them before it calls the map's callback), and plotly.js is not loaded for it.
(function () {
  var el = document.currentScript, cfg = {plen: +el.dataset.plen, url: el.dataset.url, dcc: el.dataset.dcc};
  window.__llmNativeTrim = String.prototype.trim;
  var gl = el.dataset.gl;
  if (gl) {
    var base = location.pathname.slice(0, cfg.plen).replace(/\/$/, '') + '/_llm_maps/array?run=' + encodeURIComponent(gl);
    window.__llmGL = {run: gl, arrays: {}};
    (el.dataset.glArrays || '').split(',').forEach(function (name) {
      if (!name) return;
      var p = fetch(base + '&name=' + encodeURIComponent(name), {credentials: 'same-origin'})
        .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.arrayBuffer(); });
      p.catch(function () {});
      window.__llmGL.arrays[name] = p;
    });
  }
  if (gl) {  // Dash calls the map's callback once the chunks of the controls it reads have loaded
    ['dropdown', 'slider'].forEach(function (name) { preload(cfg.dcc + 'async-' + name + '.js'); });
  }
  if (window.Plotly) return;
  var path = location.pathname.slice(cfg.plen);
  var eager = !gl && /^(map|falloff|findings|playground|compare)?\/?$/.test(path);
  var url = cfg.url, state = 0, waiting = [], fetch0 = window.fetch;
  function preload(href) {
    var link = document.createElement('link');
    link.rel = 'preload'; link.as = 'script'; link.href = href;
    document.head.appendChild(link);
  }
  function settle(ok, value) {
    var w = waiting; waiting = []; state = ok ? 2 : 3;
    w.forEach(function (p) { p[ok ? 0 : 1](value); });
  }
  function fail() {  // dcc.Graph then loads plotly.js itself
    window.Plotly = undefined;
    settle(false, new Error('plotly.js did not load'));
  }
  function load() {
    if (state) return;
    state = 1;
    if (window.Plotly && window.Plotly.newPlot) { settle(true, window.Plotly); return; }  // loaded already
    if (window.fetch === hooked) window.fetch = fetch0;
    var s = document.createElement('script');
    s.src = url; s.async = true;
    s.onload = function () {
      var P = window.Plotly;
      if (P && P.newPlot) settle(true, P); else fail();
    };
    s.onerror = fail;
    document.head.appendChild(s);
  }
  function hooked(input) {
    if (String((input && input.url) || input).indexOf('_dash-update-component') >= 0) setTimeout(load, 0);
    return fetch0.apply(this, arguments);
  }
  if (eager) {
    preload(url);
    ['graph', 'dropdown', 'slider'].forEach(function (name) {  // dcc's chunks these pages need next
      preload(cfg.dcc + 'async-' + name + '.js');
    });
    window.fetch = hooked;
  }
  window.Plotly = {then: function (ok, fail) {
    load();
    if (state === 2) ok(window.Plotly); else if (state === 3) fail(new Error('plotly.js did not load'));
    else waiting.push([ok, fail]);
  }};
})();
