"""The README's figures of the demo run, computed by the code that prints them, and the README (and the
manual in docs/) kept in step with them.

    python tools/readme_figures.py            # recompute from data/runs/demo and rewrite the marked blocks
    python tools/readme_figures.py --check    # exit 1 naming each block that drifted (nothing written)
    python tools/readme_figures.py --memory   # also measure the demo's idle memory (starts `llm-maps demo`)

A figure lives in README.md or docs/*.md between two markers, and only there:

    <!-- figures:NAME -->
    ...what this script writes...
    <!-- /figures:NAME -->

NAME is one of:

* ``stage-times``: the line ``llm-maps demo`` prints (``interfaces.demo.format_stage_times`` of the
  times the run recorded);
* ``findings``: what ``llm-maps findings RUN`` prints (``llm_maps.findings.format_findings``, seed 0,
  B = 2000; the robustness table left out): the verdict, the domain table and the contrast;
  ``findings-contrast``: its contrast lines alone;
* ``export-sizes``: the size of ``llm-maps export RUN --html`` with plotly.js inlined (and gzipped)
  and with ``--plotlyjs cdn``;
* ``idle-memory``: the resident memory of the demo's process tree (``llm-maps serve`` and its worker)
  once the demo is built and idle, measured by ``--memory`` (``idle_memory``); without ``--memory``
  that block is left as it is.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
DEMO_RUN = ROOT / "data" / "runs" / "demo"
BLOCK = re.compile(r"(<!-- figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)
WIDTH = 115  # the verdict is wrapped to this many characters, as the README shows it


def stage_times_line(run: Path) -> str:
    """The stage-time line of ``llm-maps demo``, as it prints it for ``run``."""
    from interfaces.demo import format_stage_times, stage_times

    return format_stage_times(stage_times(Path(run)))


def findings_text(run: Path) -> str:
    """``llm-maps findings RUN`` as it prints it (seed 0, B = 2000), without the robustness table."""
    from llm_maps.findings import findings_run, format_findings

    return format_findings(findings_run(run, robustness=False, write=False, progress=False))


def findings_excerpt(printed: str, *, contrast_only: bool = False) -> str:
    """The verdict (wrapped), the domain table (without its long footnote) and the contrast, from
    what ``format_findings`` printed (``contrast_only``: the contrast lines)."""
    parts = printed.strip("\n").split("\n\n")
    verdict = "\n".join(textwrap.wrap(parts[1], WIDTH, break_on_hyphens=False))
    table = "\n".join(line for line in parts[2].splitlines() if not line.startswith("  (slope"))
    contrast = "\n".join(line for line in parts[3].splitlines() if not line.startswith("note:"))
    return contrast if contrast_only else f"{verdict}\n\n{table}\n\n{contrast}"


def export_sizes(run: Path) -> str:
    """One sentence with the sizes of the standalone export of ``run``, as written now."""
    from dashboard.export import export_html

    with tempfile.TemporaryDirectory() as tmp:
        inline = export_html(run, Path(tmp) / "inline.html").read_bytes()
        cdn = export_html(run, Path(tmp) / "cdn.html", plotlyjs="cdn").read_bytes()
    zipped = gzip.compress(inline, compresslevel=6)
    return (f"On the demo run: {len(inline) / 1e6:.2f} MB with plotly.js inlined ({len(zipped) / 1e6:.2f} MB "
            f"gzipped), {len(cdn) / 1e6:.2f} MB with `--plotlyjs cdn`.")


def figures(run: Path = DEMO_RUN, *, findings: bool = True, export: bool = True) -> dict[str, str]:
    """Each block's text, recomputed from ``run``."""
    out = {"stage-times": f"`{stage_times_line(run)}`"}
    if findings:
        printed = findings_text(run)
        out["findings"] = "```\n" + findings_excerpt(printed) + "\n```"
        out["findings-contrast"] = "```\n" + findings_excerpt(printed, contrast_only=True) + "\n```"
    if export:
        out["export-sizes"] = export_sizes(run)
    return out


def blocks(text: str) -> dict[str, str]:
    """The marked blocks of a README: name -> body (without its final newline)."""
    return {m["name"]: m["body"].rstrip("\n") for m in BLOCK.finditer(text)}


def rewrite(text: str, values: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with its blocks named in ``values`` replaced; and the names whose text changed."""
    changed = []

    def sub(m: re.Match) -> str:
        name = m["name"]
        if name not in values:
            return m.group(0)
        if m["body"].rstrip("\n") != values[name]:
            changed.append(name)
        return m.group(1) + values[name] + "\n" + m.group(4)

    return BLOCK.sub(sub, text), changed


def idle_memory(*, command: list[str] | None = None, port: int | None = None, settle: float = 20.0,
                timeout: float = 900.0) -> dict[str, float]:
    """Resident memory (RSS, MB) of the demo's process tree once it serves and is idle: starts
    ``llm-maps demo --port P`` (``command``), waits for ``/api/health`` to say ready (the worker
    live), then until the tree's RSS is steady (``settle`` seconds without a change above 1 %), and
    stops the whole process group. Returns {process name: MB, "total": MB}."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    import psutil

    from interfaces.supervisor import stop_group

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cmd = (command or ["llm-maps", "demo"]) + ["--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:
                    if json.load(r).get("status") == "ready":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{' '.join(cmd)} did not become ready (exit code {proc.poll()})")
            time.sleep(1.0)

        def tree() -> dict[str, float]:
            root = psutil.Process(proc.pid)
            out: dict[str, float] = {}
            for p in [root, *root.children(recursive=True)]:
                try:
                    args = p.cmdline()
                    what = next((f"llm-maps {a}" for a in args if a in ("demo", "serve", "worker")), p.name())
                    out[f"{p.pid} {what}"] = p.memory_info().rss / 1e6
                except psutil.NoSuchProcess:
                    pass
            out["total"] = sum(out.values())
            return out

        last, since = tree(), time.time()
        while time.time() - since < settle:
            time.sleep(2.0)
            now = tree()
            if abs(now["total"] - last["total"]) > 0.01 * last["total"]:
                since = time.time()
            last = now
            if time.time() > deadline:
                break
        return last
    finally:
        stop_group(proc)


def memory_line(mem: dict[str, float]) -> str:
    parts = ", ".join(f"{name.split(' ', 1)[1]} {mb:,.0f} MB" for name, mb in mem.items() if name != "total")
    return (f"Once built and idle, the demo's process tree holds {mem['total'] / 1e3:.2f} GB resident ({parts}), "
            "measured with `python tools/readme_figures.py --memory` (psutil: the RSS of `llm-maps demo`, which "
            "becomes `llm-maps serve`, and every process under it).")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=DEMO_RUN, help="the demo run (default data/runs/demo)")
    ap.add_argument("--files", type=Path, nargs="+", default=FILES, help="the Markdown files with marked blocks "
                    "(default README.md and docs/*.md)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block drifted")
    ap.add_argument("--memory", action="store_true", help="also measure the idle memory (starts the demo)")
    args = ap.parse_args(argv)
    if not (args.run / "manifest.json").exists():
        print(f"{args.run}: no demo run (build it with `llm-maps demo --no-serve`)", file=sys.stderr)
        return 2
    values = figures(args.run)
    if args.memory:
        mem = idle_memory()
        values["idle-memory"] = memory_line(mem)
    found: set[str] = set()
    drifted = 0
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        found |= set(blocks(text))
        new, changed = rewrite(text, values)
        drifted += len(changed)
        if args.check:
            for name in changed:
                print(f"{path.name}: block '{name}' differs from what the code prints for {args.run}:\n"
                      f"{values[name]}", file=sys.stderr)
        elif new != text:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: {', '.join(changed)} rewritten")
    lost = sorted(set(values) - found)
    if lost:  # a figure no file shows any more: its markers were lost
        print(f"no block for: {', '.join(lost)} (add <!-- figures:NAME --> markers)", file=sys.stderr)
        return 1
    return 1 if args.check and drifted else 0


if __name__ == "__main__":
    sys.exit(main())
