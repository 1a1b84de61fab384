"""Talking to a real `llm-maps serve` process in tests: start it (and stop its whole process group),
send raw HTTP, parse JSON strictly (a bare NaN or Infinity is an error, as in JSON.parse)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from conftest import free_port


def strict_json(raw: bytes):
    """JSON as a browser parses it: NaN / Infinity are refused."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(raw, parse_constant=refuse)


def http(url: str, method: str = "GET", body=None, headers: dict | None = None, timeout: float = 30.0):
    """(status, headers, raw body). ``body``: bytes as is, anything else as JSON."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if data is not None and not isinstance(body, bytes) else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def until(check, timeout: float, every: float = 0.05, what: str = "condition"):
    deadline = time.time() + timeout
    while True:
        out = check()
        if out:
            return out
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class Served:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, headers: dict):
        self.proc, self.url, self.log_path, self.headers = proc, url, log, headers

    def call(self, path: str, method: str = "GET", body=None, headers: dict | None = None):
        """(status, headers, parsed JSON body) with the server's default headers (auth)."""
        status, hdrs, raw = http(self.url + path, method, body, {**self.headers, **(headers or {})})
        return status, hdrs, strict_json(raw) if raw else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> list:
        return worker_children(self.proc.pid)


@contextmanager
def serving(args: list[str], tmp_path: Path, *, env: dict | None = None, headers: dict | None = None,
            ready: str | None = "runs", cwd: Path | None = None):
    """`llm-maps serve ARGS --port P` in its own process group (killed whole in the end, whatever
    happens), in ``cwd`` (default: this process's); waits until /api/<ready> answers 200
    (``ready="health"``: the worker is up too)."""
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    full_env = {**os.environ, "LLM_MAPS_STATE": str(tmp_path / "state"), **(env or {})}
    full_env.pop("LLM_MAPS_EXPECT_WORKERS", None) if "LLM_MAPS_EXPECT_WORKERS" not in (env or {}) else None
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", *args, "--port", str(port)],
                                env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    srv = Served(proc, f"http://127.0.0.1:{port}", log, headers or {})
    try:
        def up():
            try:
                return srv.call(f"/api/{ready}")[0] == 200
            except OSError:
                assert proc.poll() is None, srv.log()
                return False
        until(up, 180, 0.1, f"/api/{ready}")
        yield srv
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker too, if it outlived the server
        except ProcessLookupError:
            pass


def worker_children(pid: int) -> list:
    """The worker processes among ``pid``'s children; a child that has just exited (a zombie, or
    gone) is none of them; [] when ``pid`` itself is gone."""
    import psutil

    def cmdline(c) -> str:
        try:
            return " ".join(c.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess, psutil.AccessDenied):
            return ""

    try:
        return [c for c in psutil.Process(pid).children() if "worker" in cmdline(c)]
    except psutil.NoSuchProcess:
        return []
