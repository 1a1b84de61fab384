"""Playground latency in the browser on a real run (default: the demo run, CPU): time from the
Submit click to (a) the typed prompt's point drawn on the map and (b) the first streamed token
drawn, and to the generation's end; median and spread over several submissions.

Run:  python benchmarks/bench_playground.py [RUN_DIR] [--n 7] [--max-new-tokens 16]

Starts `llm-maps serve RUN` (web + embedded worker, fresh state folder) and drives
/playground in headless system Chromium (Playwright, software WebGL as in bench_dashboard).

Shared links (no model needed):
      python benchmarks/bench_playground.py --shared 10,50,100,200/150 [RUN_DIR] [--repeat 3] [--tokens 16]

writes saved points (shaped as pipelines.worker.point_record: a generation of --tokens tokens with
five alternatives each) into a fresh state folder, starts `llm-maps serve RUN --no-worker` and times
each `/playground?ids=` link from navigation to fully drawn: every point's star and path on the map,
the compare table with one row per id, and the last point's neighbour lines. A length N/D is a
link of N ids of which D are different (each repeated id listed again later); the page opens each
id once and at most --cap of them. Without RUN_DIR (or when it does not exist) a synthetic run of
--examples examples is written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = ["What is 17 plus 25?", "Summarise: the cat sat on the mat all day.", "Which is heavier, a kilo of "
           "feathers or a kilo of iron?", "Name a prime number bigger than 50.", "Translate 'good morning' to French.",
           "Is the sentence 'colourless green ideas sleep furiously' grammatical?", "What comes next: 2, 4, 8, 16?",
           "Pick the odd one out: apple, pear, carrot, plum."]


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if any(a == "--shared" or a.startswith("--shared=") for a in argv):
        return main_shared(argv)
    from _live import LiveServer
    from bench_dashboard import FLAGS
    from playwright.sync_api import sync_playwright

    from tests.dashboard_helpers import chromium_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(Path(__file__).resolve().parent.parent / "data" / "runs" / "demo"))
    ap.add_argument("--n", type=int, default=7, help="submissions timed (after one warm-up)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--screenshot", metavar="PNG", help="save the page after the last submission")
    args = ap.parse_args(argv)
    run = Path(args.run)

    with LiveServer(run) as srv, sync_playwright() as pw:
        print(f"server + worker ready in {srv.cold_start:.1f} s (model load and warm-up included)")
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
        page = browser.new_context(viewport={"width": 1500, "height": 1000}).new_page()
        page.goto(f"{srv.url}/playground?run={run.name}")
        page.wait_for_function("() => { const gd = document.querySelector('#pg-graph .js-plotly-plot');"
                               " return gd && gd._fullData && gd._fullData.length; }", timeout=120_000)
        page.fill("#pg-max", str(args.max_new_tokens))
        rows = []
        for i in range(args.n + 1):
            page.fill("#pg-instruction", PROMPTS[i % len(PROMPTS)])
            before = page.evaluate("() => window.llmPlayground.gens.length")
            page.click("#pg-submit")
            page.wait_for_function("(n) => window.llmPlayground.gens.length > n", arg=before, timeout=60_000)
            job_id = page.evaluate("() => window.llmPlayground.gens.slice(-1)[0].id")
            page.wait_for_function("(id) => { const g = window.llmPlayground.gens.find((x) => x.id === id);"
                                   " return g && ['done', 'failed', 'cancelled'].includes(g.status); }",
                                   arg=job_id, timeout=300_000)
            t = page.evaluate("(id) => Object.assign({end: performance.now()}, window.llmPlayground.timing[id])", job_id)
            n_tok = page.evaluate("(id) => (window.llmPlayground.results[id].tokens || []).length", job_id)
            if i == 0:
                continue  # warm-up: first page callbacks, first generation
            rows.append({"point": t["point"] - t["submit"], "first": t["firstToken"] - t["submit"],
                         "done": t["end"] - t["submit"], "tokens": n_tok, "accepted": t["accepted"] - t["submit"],
                         "placed_seen": t["placedSeen"] - t["submit"], "token_seen": t["tokenSeen"] - t["submit"]})
            print(f"  #{i}: point {rows[-1]['point']:.0f} ms · first token {rows[-1]['first']:.0f} ms · "
                  f"{n_tok} tokens done {rows[-1]['done']:.0f} ms")
        if args.screenshot:
            page.wait_for_timeout(1000)
            page.screenshot(path=args.screenshot, full_page=True)
        browser.close()

    def med(k):
        vals = [r[k] for r in rows]
        return f"median {statistics.median(vals):.0f} ms (min {min(vals):.0f}, max {max(vals):.0f})"

    print(f"\n{run.name}: {len(rows)} submissions, greedy, max {args.max_new_tokens} new tokens")
    print(f"submit -> 202 from the API        {med('accepted')}")
    print(f"submit -> placed result polled    {med('placed_seen')}")
    print(f"submit -> point on the map        {med('point')}")
    print(f"submit -> first token polled      {med('token_seen')}")
    print(f"submit -> first streamed token    {med('first')}")
    print(f"submit -> generation done         {med('done')}")
    return 0


# ------------------------------------------------------------------------------- shared links
def shared_points(data, n: int, n_tokens: int, seed: int = 0) -> list[dict]:
    """n saved generations on the run's map, as the worker stores them (pipelines.worker.point_record)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    split = data.frame["split"].to_numpy() if "split" in data.frame else None
    train = np.flatnonzero(split == "train") if split is not None else np.arange(len(data.frame))
    out = []
    for i in range(n):
        row = int(rng.integers(len(data.frame)))
        x, y = float(data.x[row]), float(data.y[row])
        tokens = []
        for k in range(n_tokens):
            x, y = x + float(rng.normal(0, 0.05)), y + float(rng.normal(0, 0.05))
            lp = float(-rng.exponential(0.7))
            tokens.append({"text": f" tok{k}", "id": 100 + k, "logprob": lp,
                           "top": [{"text": f" alt{j}", "logprob": lp - j - 0.5} for j in range(5)],
                           "x": x, "y": y, "dist": float(rng.uniform(0.1, 0.6)), "step": float(rng.uniform(0, 0.2))})
        lps = [t["logprob"] for t in tokens]
        nbrs = [{"example_id": str(data.frame["example_id"].iloc[int(r)]), "distance": float(rng.uniform(0.1, 0.5))}
                for r in rng.choice(train, 3, replace=False)]
        out.append({"id": f"{i:04d}" + "%028x" % int(rng.integers(1 << 62)), "created": 1.7e9 + i, "kind": "generate",
                    "instruction": f"Shared question {i}: what is {i} plus {i + 1}?", "context": "",
                    "options": {"max_new_tokens": n_tokens, "temperature": 0.0},
                    "prompt": f"Q: Shared question {i}\nA:", "x": float(data.x[row]), "y": float(data.y[row]),
                    "dist_to_train": float(rng.uniform(0.1, 0.5)), "neighbours": nbrs, "domain": None,
                    "expected_accuracy": None, "x_tokens": None, "y_tokens": None,
                    "output": "".join(t["text"] for t in tokens), "tokens": tokens, "stop_reason": "length",
                    "n_tokens": n_tokens, "mean_logprob": float(np.mean(lps)),
                    "perplexity": float(np.exp(-np.mean(lps))),
                    "path_length": 0.5, "final_dist": tokens[-1]["dist"] if tokens else 0.3, "reference": "prompts",
                    "mean_dist": None, "max_dist": None})
    return out


# every shared point's star (and path) drawn, the compare table complete, the last one's neighbour lines
READY = """([ids, paths]) => {  // ids: what the page opens (once each, capped), in order
  const gd = document.querySelector('#pg-graph .js-plotly-plot');
  if (!gd || !gd.data) return false;
  const stars = gd.data.filter((t) => t.meta && t.meta.pg === 'point').map((t) => t.meta.id);
  const lines = gd.data.filter((t) => t.meta && t.meta.pg === 'path').length;
  const nbr = gd.data.some((t) => t.meta && t.meta.pg === 'neighbours');
  const rows = document.querySelectorAll('.pg-compare-table tbody tr').length;
  if (stars.length !== ids.length || lines !== paths || !nbr || rows !== ids.length) return false;
  return stars.every((id, i) => id === ids[i]) ? performance.now() : false;
}"""
# Plotly.react calls on the playground's map (Dash's own draw of the base map included)
COUNT_REACTS = """(() => {
  window.__benchReacts = 0;
  let P;
  Object.defineProperty(window, 'Plotly', {configurable: true, get() { return P; }, set(v) {
    P = v;
    if (v && v.react && !v.__benchWrapped) {
      const react = v.react;
      v.react = function (gd, ...a) {
        const el = typeof gd === 'string' ? document.getElementById(gd) : gd;
        if (el && el.closest && el.closest('#pg-graph')) window.__benchReacts += 1;
        return react.call(this, gd, ...a);
      };
      v.__benchWrapped = true;
    }
  }});
})();"""


def main_shared(argv) -> int:
    import os
    import shutil
    import subprocess
    import tempfile
    import time
    import urllib.error

    from _live import call, free_port
    from bench_dashboard import FLAGS
    from playwright.sync_api import sync_playwright

    from dashboard.data import RunRegistry
    from dashboard.synthetic import write_synthetic_run
    from llm_maps.jobs import PointStore
    from tests.dashboard_helpers import chromium_path

    ap = argparse.ArgumentParser(description="shared /playground?ids= links: time until fully drawn")
    ap.add_argument("run", nargs="?", default=None)
    ap.add_argument("--shared", nargs="?", const="10,50,100,200/150", default="10,50,100,200/150",
                    help="link lengths, comma-separated: N ids, or N/D for N ids of which D are different "
                         "(default 10,50,100,200/150)")
    ap.add_argument("--cap", type=int, default=100, help="ids a link opens at most (playground.MAX_SHARED_IDS)")
    ap.add_argument("--repeat", type=int, default=3, help="page loads timed per length (after one warm-up load)")
    ap.add_argument("--tokens", type=int, default=16, help="generated tokens per saved point")
    ap.add_argument("--examples", type=int, default=2300, help="size of the synthetic run (no RUN_DIR)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds one page may take")
    args = ap.parse_args(argv)
    sizes = []  # (label, ids in the link, ids the page opens)
    for spec in (x.strip() for x in args.shared.split(",") if x.strip()):
        n, _, d = spec.partition("/")
        sizes.append((spec, int(n), int(d or n)))
    tmp = Path(tempfile.mkdtemp(prefix="llm-maps-bench-shared-"))
    run = Path(args.run) if args.run and Path(args.run).exists() else write_synthetic_run(tmp / "syn", args.examples)
    data = RunRegistry([run]).load(run.name)
    state = tmp / "state"
    store = PointStore(state)
    points = shared_points(data, max(d for _, _, d in sizes), args.tokens)
    for p in points:
        store.add(data.id, p)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", str(run), "--no-worker",
                             "--port", str(port), "--prefix", "/"], env={**os.environ, "LLM_MAPS_STATE": str(state)},
                            stdout=log, stderr=subprocess.STDOUT)
    results = {}
    try:
        deadline = time.time() + 120
        while True:
            try:
                if call(f"{url}/api/runs", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start:\n" + (tmp / "serve.log").read_text())
            time.sleep(0.2)
        print(f"run {data.id}: {len(data.frame)} examples; {len(points)} saved points of {args.tokens} tokens")
        shown = "&map=prompt" if "tokens" in data.views else ""  # the points' paths are on the prompt map
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=FLAGS)
            context = browser.new_context(viewport={"width": 1500, "height": 1000})
            context.add_init_script(COUNT_REACTS)
            page = context.new_page()
            for label, n, d in sizes:
                distinct = [p["id"] for p in points[:d]]
                ids = (distinct * (n // d + 1))[:n]  # the repeats come after the first listing
                opened = list(dict.fromkeys(ids))[:args.cap]
                n_paths = len(opened) if args.tokens else 0
                rows = []
                for i in range(args.repeat + 1):
                    page.goto("about:blank")
                    page.goto(f"{url}/playground?run={data.id}{shown}&ids={','.join(ids)}", wait_until="commit")
                    ready = page.wait_for_function(READY, arg=[opened, n_paths],
                                                   timeout=args.timeout * 1000, polling=50).json_value()
                    reacts = page.evaluate("() => window.__benchReacts")
                    if i:  # the first load of each length warms the server's caches
                        rows.append((ready, reacts))
                    print(f"  {label:>8} ids #{i}{' (warm-up)' if not i else ''}: {len(opened)} points fully drawn "
                          f"{ready:.0f} ms after navigation · {reacts} map redraws")
                results[label] = (len(opened), rows)
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nshared links on {data.id}: navigation -> every point drawn (median of {args.repeat}; min, max)")
    for label, (opened, rows) in results.items():
        ms = [r[0] for r in rows]
        print(f"  {label:>8} ids ({opened:3d} shown)  {statistics.median(ms):7.0f} ms  "
              f"(min {min(ms):.0f}, max {max(ms):.0f})  "
              f"· map redraws (Plotly.react) {statistics.median([r[1] for r in rows]):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
