"""Helpers for the dashboard tests: a live server in a thread and headless system Chromium."""

from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-gl=angle", "--use-angle=swiftshader"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def require_browser() -> None:
    """Skip browser tests when Chromium or Playwright is missing locally; in CI (``CI`` set) fail
    instead, so a broken install cannot hide them."""
    import pytest

    missing = None
    if not chromium_path():
        missing = "no system Chromium (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install playwright)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {missing}", pytrace=False)
        pytest.skip(missing)


@contextmanager
def live_server(app):
    """Serve a Dash app on 127.0.0.1 (free port) in a daemon thread; yields the base URL."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        thread.join(timeout=5)


class ConsoleLog:
    """Browser console errors (SEVERE) and uncaught page errors seen since the last ``take()``."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def take(self) -> list[str]:
        out, self.errors = self.errors, []
        return out


def selection_text(d, rows) -> str:
    """The Map page's selection line, recomputed from the frame: accuracy with its interval over the
    scored test rows' tasks (a task bootstrap, seed 0, 2000 replicates; never narrower than Wilson's;
    none below 5 tasks) and statsmodels' Wilson interval."""
    import numpy as np
    from statsmodels.stats.proportion import proportion_confint

    from llm_maps.resample import small_cluster, task_resample_counts

    f = d.frame.iloc[rows]
    test = f[(f["split"] == "test") & f["correct"].notna()]
    k, n = int(test["correct"].astype(bool).sum()), len(test)
    low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
    per_task = test.groupby(test["task"].astype(str))["correct"].agg(lambda c: [int(c.astype(bool).sum()), len(c)])
    g = len(per_task)
    on = f"on {n} scored test points in {g} task{'s' if g != 1 else ''}"
    head = f"{len(rows)} selected ({int((f['split'] == 'train').sum())} train) · accuracy {k / n:.3f} "
    if g < 5:
        return head + f"[{low:.3f}, {high:.3f}] Wilson over examples (too few tasks for an interval over tasks: 5 needed) {on}"
    kt = np.array([v[0] for v in per_task], dtype=float)
    nt = np.array([v[1] for v in per_task], dtype=float)
    counts = task_resample_counts(n_tasks=g, n_boot=2000, rng=np.random.default_rng(0))
    tlo, thi = np.clip(np.percentile(small_cluster(k / n, (counts @ kt) / (counts @ nt), g), [2.5, 97.5]), 0, 1)
    return head + f"[{min(tlo, low):.3f}, {max(thi, high):.3f}] over tasks ([{low:.3f}, {high:.3f}] Wilson) {on}"
