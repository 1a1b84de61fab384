"""Shared by the live-point benchmarks: start `llm-maps serve` (with its embedded worker) on
loopback, wait until the worker is ready, and talk to the JSON API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str = "GET", body: dict | None = None, timeout: float = 30.0, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}"), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


class LiveServer:
    """`llm-maps serve RUN --port P` in a subprocess with a fresh state folder."""

    def __init__(self, run: Path, *, env: dict | None = None, args: list[str] | None = None,
                 wait_worker: bool = True):
        self.run = Path(run)
        self.args, self.wait_worker = args or [str(self.run)], wait_worker
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = Path(tempfile.mkdtemp(prefix="llm-maps-bench-state-"))
        self.log = open(self.state / "serve.log", "w+")
        self.env = {**os.environ, "LLM_MAPS_STATE": str(self.state), **(env or {})}

    def __enter__(self):
        self.started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "serve", *self.args, "--port",
                                      str(self.port), "--prefix", "/"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # its own process group: stopped whole
        deadline = time.time() + 300
        while True:  # web up
            try:
                if call(f"{self.url}/api/runs", timeout=2)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start:\n" + self.read_log())
            time.sleep(0.2)
        while self.wait_worker and "ready in" not in self.read_log():  # worker loaded and warmed
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("worker did not start:\n" + self.read_log())
            time.sleep(0.2)
        self.cold_start = time.perf_counter() - self.started
        return self

    def read_log(self) -> str:
        self.log.flush()
        return (self.state / "serve.log").read_text(errors="replace")

    def __exit__(self, *exc):
        import signal

        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a worker that outlived the server (frozen, say)
        except ProcessLookupError:
            pass
        self.log.close()

    def submit(self, body: dict):
        return call(f"{self.url}/api/runs/{self.run.name}/points", "POST", body)

    def status(self, job_id: str):
        return call(f"{self.url}/api/points/{job_id}")[1]
