// Playground (pages/playground.py): the page is a client of the JSON API. Submit posts the form to
// POST /api/runs/<run>/points and polls GET /api/points/<id>; the point, its neighbour lines and
// each generation's path are drawn here on the run's map (Plotly.react on the figure the server
// drew, with our traces tagged meta.pg), and the streamed tokens are rendered as text spans
// tinted by probability; the compare table of the kept generations is built here too. A shared link's
// saved points come with the page (pg-shared) and are drawn together. User text only ever goes into
// text nodes and title attributes.
(() => {
  // figures.NEIGHBOUR_COLOUR and figures.SCORE_SCALE: colours that read on both themes
  const NEIGHBOUR = '#d81b9c';
  const PROB_SCALE = [[0.0, '#d02c2a'], [0.25, '#cf5500'], [0.5, '#bd7800'], [0.75, '#9c8a00'], [1.0, '#2d9a00']];
  const FINAL = ['done', 'failed', 'cancelled'];
  const MIN_REDRAW_MS = 300;
  const MAX_MISSES = 10;  // a poll answered 404/5xx this many times in a row: the job is reported failed
  const NO = () => window.dash_clientside.no_update;
  const set = (id, props) => window.dash_clientside.set_props(id, props);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  // state of this page: full results (tokens) per id, the kept generations, timings for the benchmark
  const PG = {results: {}, gens: [], overlay: null, current: null, active: null, run: null, palette: [], map: 'prompt',
              timing: {}, polling: {}, loading: {}, drawing: false, drawPending: false, wantBase: null,
              draws: 0, sharedKey: null, shared: null};

  const plotted = (...args) => window.llmMaps.plotted(...args);  // dashboard.js
  const plotText = (v) => window.llmMaps.plotText(v);  // user text drawn by plotly: escaped (figures.plot_text)
  function pct(logprob) { return (100 * Math.exp(logprob)).toFixed(1) + '%'; }
  function num(v) { return v === null || v === undefined || v === '' || Number.isNaN(Number(v)) ? null : Number(v); }

  function apiMessage(status, body, retryAfter) {
    const what = {404: 'Not found', 413: 'Input too long', 422: 'Invalid input', 503: 'The server is busy'}[status]
      || ('Request failed (HTTP ' + status + ')');
    const msg = (body && body.error) ? body.error : 'no details';
    return what + ' (' + status + '): ' + msg + (retryAfter ? '. Try again in ' + retryAfter + ' s.' : '');
  }

  function showError(text) {
    set('pg-error', {children: text, is_open: true});
  }

  function progress(text, value, opts = {}) {
    set('pg-status', {children: text});
    set('pg-progress', Object.assign({value, striped: false, animated: false}, opts));
  }

  async function readJson(r) { try { return await r.json(); } catch (e) { return null; } }

  const RETRY_FOR_MS = 15000;  // how long a submission is sent again while the server is busy or away

  function idempotencyKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ---------------------------------------------------------------- drawing
  function nearestTip(t) {  // the training step nearest to this token (runs with a token atlas)
    const n = t.nearest;
    if (!n) return t.dist !== undefined ? '\ndistance to train ' + t.dist.toPrecision(4) : '';
    return '\ndistance to the nearest training step ' + t.dist.toPrecision(4) + '\nnearest training step: '
      + n.example_id + ' #' + n.position + ': …' + (n.before || '') + '[' + n.token_text + ']' + (n.after || '') + '…';
  }

  function tokenTip(t, k) {
    const alts = (t.top || []).map((a) => JSON.stringify(a.text) + ' ' + pct(a.logprob)).join(', ');
    return 'token ' + (k + 1) + ': ' + JSON.stringify(t.text) + ' · p=' + pct(t.logprob)
      + (alts ? '\ntop alternatives: ' + alts : '') + nearestTip(t);
  }

  // Where a result sits on the map shown (PG.map: 'tokens' = the token map of a run with an atlas,
  // 'prompt' = the prompt map), and whether its path belongs there: a generation measured against
  // the atlas (reference 'atlas') has its tokens on the token map.
  function startXY(res) {
    return PG.map === 'tokens' ? [res.x_tokens, res.y_tokens] : [res.x, res.y];
  }
  function pathHere(res) { return (res.reference === 'atlas') === (PG.map === 'tokens'); }

  function pgTraces() {
    const traces = [];
    const gens = PG.gens.filter((g) => g.status !== 'removed');
    const o = PG.overlay, cur = o && PG.results[o.id];
    const curGen = o && gens.find((g) => g.id === o.id);
    if (cur && startXY(cur)[0] !== undefined && curGen && !curGen.hidden && o.x.length) {
      const xs = [], ys = [], text = [], size = [];
      const [cx, cy] = startXY(cur);
      o.x.forEach((x, i) => {
        xs.push(cx, x, null); ys.push(cy, o.y[i], null);
        text.push('', o.text[i], ''); size.push(0, 11, 0);
      });
      traces.push({type: 'scatter', mode: 'lines+markers', x: xs, y: ys, text, hoverinfo: 'text', showlegend: false,
                   name: 'neighbours', meta: {pg: 'neighbours', id: o.id},
                   line: {color: NEIGHBOUR, width: 1.5, dash: 'dot'},
                   marker: {size, symbol: 'circle-open', color: NEIGHBOUR, line: {width: 2}, opacity: 1}});
    }
    gens.forEach((g, i) => {
      const res = PG.results[g.id];
      if (!res || res.x === undefined || g.hidden) return;
      const [sx, sy] = startXY(res);
      if (sx === undefined || sx === null) return;
      const colour = PG.palette[i % PG.palette.length] || '#333';
      const toks = pathHere(res) ? (res.tokens || []) : [];
      if (toks.length) {
        const probs = toks.map((t) => Math.exp(t.logprob));
        traces.push({
          type: 'scatter', mode: 'lines+markers', name: 'path', showlegend: false, meta: {pg: 'path', id: g.id},
          x: [sx].concat(toks.map((t) => t.x)), y: [sy].concat(toks.map((t) => t.y)),
          line: {color: colour, width: 1.5},
          marker: {symbol: ['circle'].concat(toks.map(() => 'arrow')), angleref: 'previous',
                   size: [0].concat(probs.map((p) => 7 + 9 * p)), color: [1].concat(probs), cmin: 0, cmax: 1,
                   colorscale: PROB_SCALE, line: {color: colour, width: 1}, opacity: 1},
          text: ['prompt'].concat(toks.map((t, k) => plotText(tokenTip(t, k)))), hoverinfo: 'text'});
      }
      // a WebGL trace, so it is drawn above the map's WebGL points (SVG traces are drawn under them)
      traces.push({type: 'scattergl', mode: 'markers', name: 'your prompt', showlegend: false,
                   meta: {pg: 'point', id: g.id}, x: [sx], y: [sy],
                   text: ['your prompt: ' + plotText(String(g.instruction || '').slice(0, 120))
                          + '\ndistance to train ' + (res.dist_to_train || 0).toPrecision(4)],
                   hoverinfo: 'text', marker: {symbol: 'star', size: 20, color: colour, line: {color: '#000', width: 1.5}}});
    });
    return traces;
  }

  // Our traces on top of the figure the server drew (whose layout.meta.pg_base says which one).
  // Draws never overlap: a request while one is drawing makes one more draw after it (no sooner than
  // MIN_REDRAW_MS after the last began), so a fast stream of tokens costs few redraws and the CPU
  // stays with the worker.
  async function drawNow(wantBase) {
    if (wantBase) PG.wantBase = wantBase;
    if (PG.drawing) { PG.drawPending = true; return; }
    PG.drawing = true;
    try {
      for (;;) {
        PG.drawPending = false;
        const started = performance.now();
        await drawOnce();
        if (!PG.drawPending) break;
        // at most ~3 map redraws a second while tokens stream (the text updates on every token)
        const wait = MIN_REDRAW_MS - (performance.now() - started);
        if (wait > 0) await sleep(wait);
      }
    } finally {
      PG.drawing = false;
    }
  }

  // The figure wanted is read when it is checked (PG.wantBase), never kept from when the draw
  // began: a draw asked for on the old figure (an overlay arriving just before the new map) must
  // not wait for a figure that has been replaced, and must not draw the old one over the new.
  const isWanted = (g) => !PG.wantBase || (g.layout.meta || {}).pg_base === PG.wantBase;

  async function drawOnce() {
    let gd;
    try {  // the figure the server drew for this colour and map
      gd = await plotted('pg-graph', 30000, isWanted);
    } catch (e) {
      return;
    }
    // plotted resolved a moment ago: checked again here, in the same task as the react below
    if (!isWanted(gd)) { PG.drawPending = true; return; }
    PG.map = (gd.layout.meta || {}).pg_map || 'prompt';
    const base = gd.data.filter((t) => !(t.meta && t.meta.pg));
    await Plotly.react(gd, base.concat(pgTraces()), gd.layout);
    const now = performance.now();
    PG.draws += 1;
    if (PG.shared && PG.shared.drawn === undefined) {  // a shared link's points: all on the map now
      PG.shared.drawn = now;
      PG.shared.draws = PG.draws - PG.shared.drawsBefore;
    }
    for (const g of PG.gens) {
      const res = PG.results[g.id], tm = PG.timing[g.id];
      if (!tm || !res) continue;
      if (tm.point === undefined && res.x !== undefined) tm.point = now;
      if (tm.firstToken === undefined && (res.tokens || []).length) tm.firstToken = now;
    }
  }

  function renderStream(id) {
    const res = PG.results[id];
    if (!res) return;
    const toks = res.tokens || [];
    const cue = res.response_prefix ? [{type: 'Span', namespace: 'dash_html_components',
      props: {children: res.response_prefix + ' ', className: 'text-muted pg-cue', title: 'the cue the answer starts with (think step by step)'}}] : [];
    const children = cue.concat(toks.map((t, k) => ({
      type: 'Span', namespace: 'dash_html_components',
      props: {children: t.text, title: tokenTip(t, k), className: 'pg-tok',
              style: {backgroundColor: 'hsla(' + Math.round(120 * Math.exp(t.logprob)) + ', 75%, 50%, 0.35)'}}})));
    if (!toks.length) {
      children.push({type: 'Span', namespace: 'dash_html_components',
                     props: {children: res.tokens ? 'waiting for the first token…' : 'placed (no generation).',
                             className: 'text-muted'}});
    }
    set('pg-stream', {children});
  }

  function setCurrent(id) {
    const res = PG.results[id];
    if (!res || res.x === undefined) return;
    PG.current = id;
    set('pg-current', {data: {id, x: res.x, y: res.y, neighbours: res.neighbours || [], domain: res.domain,
                              dist_to_train: res.dist_to_train, expected_accuracy: res.expected_accuracy}});
    renderStream(id);
  }

  function updateGen(id, fields) {
    PG.gens = PG.gens.map((g) => (g.id === id ? Object.assign({}, g, fields) : g));
    set('pg-gens', {data: PG.gens});
  }

  function summary(res) {
    const out = {};
    for (const k of ['n_tokens', 'mean_logprob', 'perplexity', 'path_length', 'final_dist', 'dist_to_train',
                     'mean_dist', 'max_dist', 'variation']) {
      if (res && res[k] !== undefined) out[k] = res[k];
    }
    return out;
  }

  // ---------------------------------------------------------------- jobs
  async function poll(id, maxTokens) {
    if (PG.polling[id]) return;
    PG.polling[id] = true;
    const started = performance.now();
    let shown = false, misses = 0;
    try {
      for (;;) {
        let r;
        try {
          r = await fetch(window.llmMaps.url('/api/points/') + encodeURIComponent(id), {credentials: 'same-origin'});
        } catch (e) {
          showError('Could not reach the server: ' + (e && e.message ? e.message : e));
          progress('lost contact with the server', 0);
          await sleep(1000);
          continue;
        }
        const job = await readJson(r);
        if (!r.ok || !job) {
          // a job this page was polling that reads as missing, or a server briefly unable to answer
          // (restarting, 5xx), is a transient miss: try again a few times before calling it failed
          if ((r.status === 404 || r.status >= 500 || !job) && misses < MAX_MISSES) {
            misses += 1;
            await sleep(Math.min(2000, 100 * misses));
            continue;
          }
          showError(apiMessage(r.status, job));
          updateGen(id, {status: 'failed'});
          progress('failed', 0);
          return;
        }
        misses = 0;
        const seen = ((PG.results[id] || {}).tokens || []).length;
        const fresh = job.result && (!PG.results[id] || ((job.result.tokens || []).length !== seen)
                                     || (job.result.x !== undefined && PG.results[id].x === undefined));
        if (fresh) {  // redraw only when something new arrived
          const tm = PG.timing[id];
          if (tm && tm.placedSeen === undefined && job.result.x !== undefined) tm.placedSeen = performance.now();
          if (tm && tm.tokenSeen === undefined && (job.result.tokens || []).length) tm.tokenSeen = performance.now();
          PG.results[id] = job.result;
          if (!shown && job.result.x !== undefined) { shown = true; setCurrent(id); }
          if (PG.current === id) renderStream(id);
          drawNow();
        }
        const n = ((job.result || {}).tokens || []).length;
        if (FINAL.includes(job.status)) {
          if (job.result) {  // the final tokens (a stop string's tokens are dropped at the end)
            PG.results[id] = job.result;
            if (PG.current === id) renderStream(id);
            drawNow();
          }
          const secs = ((job.finished || 0) - (job.started || job.created || 0));
          updateGen(id, Object.assign({status: job.status}, summary(job.result)));
          if (PG.active === id) {
            PG.active = null;
            set('pg-cancel', {disabled: true});
            set('pg-submit', {disabled: false});
          }
          if (job.status === 'failed') {
            showError('The job failed: ' + (job.error || 'no reason given'));
            progress('failed', 0);
          } else {
            progress(job.status + (n ? ' · ' + n + ' tokens in ' + secs.toFixed(1) + ' s (' + (n / Math.max(secs, 1e-3)).toFixed(1)
                                   + ' tokens/s)' : ''), 100);
          }
          if (job.status !== 'failed' && !shown && job.result) setCurrent(id);
          return;
        }
        if (job.status === 'queued') {
          progress('queued — waiting for a worker…', 100, {striped: true, animated: false});
        } else {
          const secs = (performance.now() - started) / 1000;
          progress((job.cancel_requested ? 'cancelling · ' : 'running · ')
                   + (job.result && job.result.tokens ? n + (maxTokens ? ' / ' + maxTokens : '') + ' tokens · '
                      + (n / Math.max(secs, 1e-3)).toFixed(1) + ' tokens/s' : 'placing the prompt'),
                   maxTokens ? Math.round(100 * n / maxTokens) : 100, {striped: true, animated: false});
        }
        await sleep(job.status === 'queued' ? 200 : 80);
      }
    } finally {
      delete PG.polling[id];
    }
  }

  async function submitJob(run, instruction, context, mode, temperature, seed, maxTokens, cot, example) {
    set('pg-error', {is_open: false});
    const text = instruction || '';
    // "think step by step" is the cot condition (llm_maps.conditions.cot_prompt): the worker starts
    // the answer with the cue; the instruction, and so the prompt's place on the map, stay as typed
    const stepByStep = Boolean(cot && text.trim());
    const max = num(maxTokens);
    const body = {instruction: text, context: context || ''};
    if (stepByStep) body.cot = true;
    // try a variation: the worker scores the answer against this example's reference
    if (example) body.example_id = example;
    if (max === null || max > 0) {
      body.generate = true;
      if (max !== null) body.max_new_tokens = max;
      body.temperature = mode === 'sampled' ? num(temperature) : 0;
      if (mode === 'sampled' && num(seed) !== null) body.seed = Math.trunc(num(seed));
    }
    const t0 = performance.now();
    progress('submitting…', 0);
    // one key for this submission: sent again with it after a 503 or 409 (as Retry-After says) or a
    // lost answer, for up to RETRY_FOR_MS, the server answers with the job it made, if it made one,
    // never a second (Idempotency-Key)
    const key = idempotencyKey(), until = t0 + RETRY_FOR_MS;
    let r = null, out = null, failure = null;
    for (;;) {
      let wait = null;
      try {
        r = await fetch(window.llmMaps.url('/api/runs/') + encodeURIComponent(run) + '/points', {
          method: 'POST', credentials: 'same-origin',
          headers: {'Content-Type': 'application/json', 'Idempotency-Key': key}, body: JSON.stringify(body)});
        failure = null;
        out = await readJson(r);
        if (r.status === 503 || r.status === 409) wait = Math.min(3, Math.max(0.5, Number(r.headers.get('Retry-After')) || 1));
      } catch (e) {
        r = out = null;
        failure = e;
        wait = 1;
      }
      if (wait === null || performance.now() + wait * 1000 > until) break;
      progress(((out && out.error) || 'the server did not answer') + '; trying again in ' + wait + ' s…', 0);
      await new Promise((done) => setTimeout(done, wait * 1000));
    }
    if (r === null) {
      showError('Could not reach the server: ' + (failure && failure.message ? failure.message : failure));
      progress('not submitted', 0);
      return;
    }
    if (r.status !== 202 || !out || !out.id) {
      showError(apiMessage(r.status, out, r.headers.get('Retry-After')));
      progress('not submitted', 0);
      return;
    }
    const id = out.id;
    PG.timing[id] = {submit: t0, accepted: performance.now()};
    PG.active = id;
    set('pg-cancel', {disabled: false});
    PG.gens = PG.gens.concat([{id, status: 'queued', hidden: false, kind: body.generate ? 'generate' : 'place',
                               instruction: text, temperature: body.generate ? (body.temperature || 0) : null,
                               seed: body.seed === undefined ? null : body.seed, cot: stepByStep}]);
    set('pg-gens', {data: PG.gens});
    poll(id, body.generate ? (max || null) : 0);
  }

  // A shared link: the server sent the saved points it found in the store with the page (pg-shared,
  // one read for the whole list), so they are all drawn by one draw, not one request and redraw
  // each. Taken once per page (its key): the last one becomes the current point (its neighbours,
  // expected accuracy and text), as when it was submitted.
  function adoptShared(shared) {
    if (!shared || !shared.key || shared.key === PG.sharedKey) return;
    PG.sharedKey = shared.key;
    const points = shared.points || {};
    const ids = Object.keys(points);
    for (const id of ids) PG.results[id] = points[id];
    PG.shared = {key: shared.key, ids, start: performance.now(), drawsBefore: PG.draws};
    const last = PG.gens.filter((g) => g.status !== 'removed').slice(-1)[0];
    // right after this callback (not a task later): the server's neighbour lines for it then often
    // arrive while the map is still being drawn, and the first draw has them too
    if (last && points[last.id]) queueMicrotask(() => { if (PG.sharedKey === shared.key) setCurrent(last.id); });
  }

  // ids of a shared link not in the store ('loading') are jobs still queued, running or ended
  // without a saved point: poll them; a saved point not sent with the page is fetched
  async function load(run, g) {
    const id = g.id;
    if (PG.loading[id] || PG.results[id] || PG.polling[id]) return;
    PG.loading[id] = true;
    if (g.status === 'loading') { poll(id, null); return; }
    const r = await fetch(window.llmMaps.url('/api/runs/') + encodeURIComponent(run) + '/points/' + encodeURIComponent(id),
                          {credentials: 'same-origin'});
    const point = await readJson(r);
    if (!r.ok || !point) { showError(apiMessage(r.status, point)); return; }
    PG.results[id] = point;
    const last = PG.gens.filter((x) => x.status !== 'removed').slice(-1)[0];
    if (last && last.id === id) setCurrent(id);
    drawNow();
  }

  // ---------------------------------------------------------------- compare table
  // One row per kept generation, built here as plain DOM (user text only in text nodes and title
  // attributes); the markup is what the Dash components gave (dbc.Table, dbc.Button), row and
  // button ids included. Hide/show and remove are one click listener on the page.
  function fmtG(v, p) {  // Python's format(v, '.<p>g')
    if (v === 0) return Object.is(v, -0) ? '-0' : '0';
    if (!Number.isFinite(v)) return Number.isNaN(v) ? 'nan' : (v > 0 ? 'inf' : '-inf');
    const strip = (s) => (s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s);
    const [m, e] = v.toExponential(p - 1).split('e');
    const exp = Number(e);
    if (exp < -4 || exp >= p) return strip(m) + 'e' + (exp < 0 ? '-' : '+') + String(Math.abs(exp)).padStart(2, '0');
    return strip(v.toFixed(p - 1 - exp));
  }
  function fmt(v) {  // components._fmt: '—' for missing, 4 significant digits
    if (v === null || v === undefined || (typeof v === 'number' && Number.isNaN(v))) return '—';
    return typeof v === 'number' ? fmtG(v, 4) : String(v);
  }
  const dashId = (type, id) => JSON.stringify({index: id, type});

  function el(tag, props, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined) continue;
      if (k === 'style') Object.assign(e.style, v); else if (k === 'data') Object.assign(e.dataset, v);
      else e.setAttribute(k === 'className' ? 'class' : k, v);
    }
    for (const c of [].concat(children === undefined ? [] : children)) {
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function compareTable(gens, palette) {
    gens = (gens || []).filter((g) => g.status !== 'removed');
    if (!gens.length) return el('div', {className: 'small text-muted'}, 'Generations you submit are kept here to compare.');
    const has = (v) => v !== null && v !== undefined;
    const atlas = gens.some((g) => has(g.mean_dist));
    // [header, what it is and its unit] (distances: the run's metric on its hidden states, not the map)
    const head = [['', ''], ['prompt', ''], ['decoding', ''], ['status', ''], ['tokens', 'generated tokens'],
      ['mean log-lik (nats/token)', "mean natural-log probability of each generated token"],
      ['perplexity', 'exp(−mean log-lik): per token, no unit'],
      ['path length', "sum of the distances between successive hidden states, from the prompt's to the last token's "
                      + "(the run's metric)"],
      ['final dist', "the last state's distance to training: to the nearest training prompt, or with a token atlas to "
                     + "the nearest training response step; a placed prompt's own (the run's metric)"]]
      .concat(atlas ? [['mean step dist', "mean distance of each token's state to the training responses (token atlas)"],
                       ['max step dist', 'the farthest of those']] : []).concat([['', '']]);
    const rows = gens.map((g, i) => {
      const dec = g.kind === 'place' ? '—'
        : (!g.temperature ? 'greedy' : 'T=' + fmtG(Number(g.temperature), 6) + ' seed ' + (has(g.seed) ? g.seed : 'None'))
          + (g.cot ? ' · step by step' : '');
      const colour = palette.length ? palette[i % palette.length] : '#333';
      const text = Array.from(String(g.instruction || g.id)).slice(0, 80).join('');
      return el('tr', {id: dashId('pg-row', g.id), className: g.hidden ? 'pg-hidden' : '', data: {pgId: g.id}}, [
        el('td', {}, el('span', {style: {color: colour}}, '●')),
        el('td', {className: 'pg-cmp-prompt'}, el('span', {title: String(g.instruction || '')}, text)),
        el('td', {}, dec), el('td', {className: 'pg-cmp-status'}, has(g.status) ? g.status : ''),
        el('td', {}, has(g.n_tokens) ? String(g.n_tokens) : '—'),
        el('td', {}, fmt(g.mean_logprob)), el('td', {}, fmt(g.perplexity)),
        el('td', {}, fmt(g.path_length)), el('td', {}, fmt(g.final_dist)),
        ...(atlas ? [el('td', {className: 'pg-cmp-mean-dist'}, fmt(g.mean_dist)),
                     el('td', {className: 'pg-cmp-max-dist'}, fmt(g.max_dist))] : []),
        el('td', {className: 'text-nowrap'}, [
          el('button', {id: dashId('pg-hide', g.id), className: 'py-0 me-1 btn btn-outline-secondary btn-sm',
                        type: 'button', data: {pgAction: 'hide', pgId: g.id}}, g.hidden ? 'show' : 'hide'),
          el('button', {id: dashId('pg-remove', g.id), className: 'py-0 btn btn-outline-danger btn-sm',
                        type: 'button', data: {pgAction: 'remove', pgId: g.id}}, 'remove')]),
      ]);
    });
    return el('div', {className: 'table-responsive'},
              el('table', {className: 'small pg-compare-table mb-0 table table-sm table-hover'}, [
                el('thead', {}, el('tr', {}, head.map(([h, tip]) => el('th', tip ? {title: tip} : {}, h)))),
                el('tbody', {}, rows)]));
  }

  // Drawn into #pg-compare (a Div whose children React leaves alone) once the page has it; a newer
  // list replaces a pending one.
  const CMP = {gens: null, palette: [], waiting: false};
  function renderCompare(since = performance.now()) {
    const box = document.getElementById('pg-compare');
    if (!box) {  // the callback ran before React mounted the page: a moment later (not forever)
      if (!CMP.waiting && performance.now() - since < 10000) {
        CMP.waiting = true;
        setTimeout(() => { CMP.waiting = false; renderCompare(since); }, 20);
      }
      return;
    }
    const key = JSON.stringify([CMP.gens, CMP.palette]);
    if (box.firstChild && box.__pgShown === key) return;
    box.__pgShown = key;
    box.replaceChildren(compareTable(CMP.gens, CMP.palette));
  }

  document.addEventListener('click', (ev) => {
    const b = ev.target && ev.target.closest ? ev.target.closest('#pg-compare button[data-pg-action]') : null;
    if (!b) return;
    const id = b.dataset.pgId;
    if (b.dataset.pgAction === 'hide') {
      PG.gens = PG.gens.map((g) => (g.id === id ? Object.assign({}, g, {hidden: !g.hidden}) : g));
    } else {
      PG.gens = PG.gens.filter((g) => g.id !== id);
      if (PG.current === id) { PG.current = null; PG.overlay = null; }
    }
    set('pg-gens', {data: PG.gens});
  });

  // The Map page's "your points" layer: traces drawn by the server (dashboard/userpoints.py), kept on
  // the map across its redraws (a large run's server figures, colour changes) by re-adding them
  // after any plot that lost them.
  // One sync at a time: our own deleteTraces/addTraces fire plotly_afterplot too, and two syncs
  // working on the graph at once would each add the layer (and then keep correcting each other).
  const USER = {traces: [], key: 0, syncing: false, again: false};

  function syncUserLayer(gd) {
    if (USER.syncing) { USER.again = true; return; }
    const have = [];
    gd.data.forEach((t, i) => { if (t.meta && t.meta.user) have.push([t, i]); });
    if (have.length === USER.traces.length && have.every(([t]) => t.meta.key === USER.key)) return;
    const drop = have.map(([, i]) => i);
    const add = USER.traces.map((t) => Object.assign({}, t, {meta: Object.assign({}, t.meta, {key: USER.key})}));
    USER.syncing = true;
    (drop.length ? Plotly.deleteTraces(gd, drop) : Promise.resolve())
      .then(() => (add.length ? Plotly.addTraces(gd, add) : null))
      .catch((e) => console.warn('llm-maps user layer:', e && e.message ? e.message : e))
      .finally(() => {
        USER.syncing = false;
        if (USER.again) { USER.again = false; syncUserLayer(gd); }  // what changed meanwhile
      });
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    playground: {
      userLayer(traces) {
        USER.traces = traces || [];
        USER.key += 1;
        if (window.llmMapGL) window.llmMapGL.user(USER.traces);  // the WebGL map draws them itself (mapgl.js)
        if (document.querySelector('.map-gl-host')) return NO();  // no Plotly map on this page
        plotted('map-graph', 60000).then((gd) => {
          if (!gd.__llmUserHook) {
            gd.__llmUserHook = true;
            gd.on('plotly_afterplot', () => syncUserLayer(gd));
          }
          syncUserLayer(gd);
        }).catch(() => {});  // no map on this page
        return NO();
      },
      submit(n, run, instruction, context, mode, temperature, seed, maxTokens, cot, example) {
        if (!n) return NO();
        submitJob(run, instruction, context, mode, temperature, seed, maxTokens, cot, example)
          .catch((e) => showError(String(e)));
        return NO();
      },
      cancel(n) {
        const id = PG.active;
        if (!n || !id) return NO();
        fetch(window.llmMaps.url('/api/points/') + encodeURIComponent(id) + '/cancel', {method: 'POST', credentials: 'same-origin'})
          .then(async (r) => { if (!r.ok) showError(apiMessage(r.status, await readJson(r))); })
          .catch((e) => showError(String(e)));
        set('pg-status', {children: 'cancelling…'});
        return NO();
      },
      compare(gens, palette) {
        CMP.gens = gens || [];
        CMP.palette = palette || [];
        renderCompare();
        return NO();
      },
      draw(gens, overlay, figure, run, palette, shared) {
        PG.gens = gens || [];
        PG.run = run;
        PG.palette = palette || PG.palette;
        adoptShared(shared);
        const trig = (window.dash_clientside.callback_context.triggered || []).map((t) => t.prop_id);
        if (trig.some((t) => t.startsWith('pg-overlay'))) PG.overlay = overlay;
        for (const g of PG.gens) {
          if (!PG.results[g.id] && (g.status === 'loading' || g.status === 'done')) load(run, g).catch(() => {});
        }
        drawNow(figure && figure.layout && figure.layout.meta ? figure.layout.meta.pg_base : null).catch(() => {});
        return NO();
      },
      syncUrl(run, instruction, context, mode, temperature, seed, max, cot, colour, gens, map, example, maps) {
        const ids = (gens || []).filter((g) => g.status !== 'removed' && g.status !== 'failed').map((g) => g.id);
        return window.dash_clientside.llm_maps._write({
          run, instruction, context, mode: mode === 'sampled' ? mode : null,
          temperature: mode === 'sampled' ? temperature : null, seed: mode === 'sampled' ? seed : null,
          max, cot: cot ? '1' : null, colour: colour === 'split' ? null : colour, ids: ids.join(','),
          map: (maps || []).length > 1 && map !== maps[0].value ? map : null, example});
      },
    },
  });
  window.llmPlayground = PG;  // for tests and benchmarks
})();
