"""Playground latency in the browser on a real run (default: the demo run, CPU): time from the
Submit click to (a) the typed prompt's point drawn on the map and (b) the first streamed token
drawn, and to the generation's end; median and spread over several submissions.

Run:  python benchmarks/bench_playground.py [RUN_DIR] [--n 7] [--max-new-tokens 16]

Starts `llm-maps serve RUN` (web + embedded worker, fresh state folder) and drives
/playground in headless system Chromium (Playwright, software WebGL as in bench_dashboard).
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


if __name__ == "__main__":
    raise SystemExit(main())
