// Clientside callbacks: keep page state in the URL (replaceState: no reload, no router round
// trip), switch runs, switch the light/dark theme.
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  llm_maps: {
    _write(params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) {
        if (v === null || v === undefined || v === '') continue;
        if (Array.isArray(v)) { v.forEach((x) => q.append(k, x)); } else { q.set(k, v); }
      }
      const url = window.location.pathname + (q.toString() ? '?' + q.toString() : '');
      if (url !== window.location.pathname + window.location.search) {
        window.history.replaceState(window.history.state, '', url);
      }
      return window.dash_clientside.no_update;
    },
    _range(v, lo, hi) {
      if (!v || v.length !== 2) return null;
      if (Math.abs(v[0] - lo) < 1e-12 && Math.abs(v[1] - hi) < 1e-12) return null;
      return v.join(',');
    },
    syncMapUrl(run, colour, layer, split, domain, task, score, dist, q, sel, smin, smax, dmin, dmax, splitOpts) {
      const L = window.dash_clientside.llm_maps;
      const allSplits = (splitOpts || []).length === (split || []).length;
      return L._write({run, colour: colour === 'split' ? null : colour, layer, split: allSplits ? null : (split.length ? split : ['none']),
        domain, task, score: L._range(score, smin, smax), dist: L._range(dist, dmin, dmax), q, sel});
    },
    syncFalloffUrl(run, layer, metric, bins, domain, task, mode) {
      return window.dash_clientside.llm_maps._write({run, layer, metric, bins, domain, task, mode});
    },
    syncExamplesUrl(run, sel) {
      return window.dash_clientside.llm_maps._write({run, sel});
    },
    pickRun(run) {
      if (!run) return window.dash_clientside.no_update;
      const current = new URLSearchParams(window.location.search).get('run');
      if (current === run) return window.dash_clientside.no_update;
      const path = window.location.pathname === '/' ? '/map' : window.location.pathname;
      window.location.assign(path + '?run=' + encodeURIComponent(run));
      return window.dash_clientside.no_update;
    },
    theme(dark) {
      const link = document.getElementById('theme-css');
      const href = dark ? '/assets/themes/darkly.min.css' : '/assets/themes/flatly.min.css';
      if (link && link.getAttribute('href') !== href) link.setAttribute('href', href);
      document.documentElement.setAttribute('data-bs-theme', dark ? 'dark' : 'light');
      return window.dash_clientside.no_update;
    },
  },
});
