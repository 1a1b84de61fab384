"""`llm-maps demo` and `llm-maps serve` as processes: one URL line from a real WSGI server, and
SIGTERM / SIGINT stop the demo, its `serve` child and the worker together, freeing the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import build_scored_run, free_port


@pytest.fixture(scope="module")
def scored_run(tiny_model, tmp_path_factory) -> Path:
    return build_scored_run(tmp_path_factory.mktemp("demo-proc"), tiny_model, 24)


def _env() -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1"}


def _wait_ready(proc: subprocess.Popen, port: int, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def _port_free(port: int) -> bool:
    """Whether a new server can listen on ``port`` (as servers do, with SO_REUSEADDR: connections
    of the old one may linger in TIME_WAIT, which never stops a server from starting)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            return True
        except OSError:
            return False


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _ignoring(sig):
    """A child that starts with ``sig`` ignored, as under `nohup ... &` or a CI runner that ignores it."""
    return lambda: signal.signal(sig, signal.SIG_IGN)


@pytest.mark.parametrize("sig, inherited", [(signal.SIGTERM, None), (signal.SIGINT, None),
                                            (signal.SIGINT, signal.SIGINT)],
                         ids=["SIGTERM", "SIGINT", "SIGINT-after-a-parent-ignored-it"])
def test_signal_to_demo_stops_serve_and_worker_and_frees_the_port(scored_run, tmp_path, sig, inherited):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "interfaces.cli", "demo", "--out", str(scored_run),
                             "--port", str(port), "--no-progress"], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_ignoring(inherited) if inherited else None)
    kids: list = []
    try:
        _wait_ready(proc, port)
        # the demo became the server (same pid): the memory its build held is given back, and the
        # process tree is what `llm-maps serve` with its worker is
        assert " serve " in " ".join(psutil.Process(proc.pid).cmdline())
        kids = _descendants(proc.pid)
        cmdlines = [" ".join(k.cmdline()) for k in kids]
        assert len(kids) == 1 and " worker " in cmdlines[0], cmdlines
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:  # whatever happened, nothing of the demo is left running, holding the port
        for p in [proc.pid]:
            try:
                os.killpg(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)
    assert proc.returncode == 0, err
    gone, alive = psutil.wait_procs(kids, timeout=5)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]
    assert _port_free(port)
    # the server announced itself once, with its URL, and no development-server warning
    assert err.count(f"http://127.0.0.1:{port}") == 1, err
    assert f"llm-maps: dashboard on http://127.0.0.1:{port}/ (Ctrl-C to stop)" in err
    assert "development server" not in err and "Dash is running" not in err, err
    assert "Traceback" not in err, err
    # the demo printed the run's summary and the stage times it recorded
    assert "stage times" in out and "examples" in out


def test_serve_on_a_busy_port_is_one_clear_line(scored_run, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "interfaces.cli", "serve", str(scored_run), "--port", str(port),
                              "--no-worker"], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(
        f"llm-maps serve: error: cannot listen on 127.0.0.1:{port}: "), res.stderr
    assert "Traceback" not in res.stderr
