"""Supervision of the embedded worker of `llm-maps serve`: restart it when it dies or stops
responding, say so.

``WorkerSupervisor(runs, state_dir).start()`` starts ``llm-maps worker RUN... --state STATE`` and
watches it from a thread. When the worker exits without being asked to (killed, crashed, out of
memory) the supervisor at once

* marks it gone in the queue's liveness registry, with the reason, so ``/api/health`` answers 503
  naming it instead of waiting for its heartbeat to age;
* fails the job it was running with that reason (the job would otherwise wait for the heartbeat
  timeout);
* kills a worker that stopped beating for longer than its heartbeat timeout (frozen, deadlocked),
  as if it had died;
* logs one line and starts a new worker after a back-off: 1 s, then doubling up to 30 s while
  workers keep dying young; a worker that lived 60 s resets it.

Queued jobs are never touched: the next worker claims them. Torch-free (the worker is a separate
process); the web process imports only this module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from llm_maps.jobs import make_queue


def start_worker_process(runs: Iterable[str | Path], state_dir: str | Path,
                         data_dirs: Iterable[str | Path] = ()) -> "subprocess.Popen[Any]":
    """The embedded worker `llm-maps serve` starts when no other worker is configured."""
    cmd = [sys.executable, "-m", "interfaces.cli", "worker", *map(str, runs), "--state", str(state_dir),
           *(a for d in data_dirs for a in ("--data", str(d)))]
    return subprocess.Popen(cmd, env={**os.environ, "LLM_MAPS_PARENT_PID": str(os.getpid())})


def stop_group(proc: "subprocess.Popen[Any]", timeout: float = 30.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything under it: SIGTERM to its
    group, SIGKILL when it has not ended after ``timeout`` seconds; one already gone is fine."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def exit_reason(returncode: int) -> str:
    """``-9`` -> "exited (killed by SIGKILL)", ``1`` -> "exited with code 1"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"exited (killed by {name})"
    return f"exited with code {returncode}"


class WorkerSupervisor:
    def __init__(self, runs: Iterable[str | Path], state_dir: str | Path, *, backoff: float | None = None,
                 max_backoff: float = 30.0, stable_after: float = 60.0,
                 spawn: Callable[..., "subprocess.Popen[Any]"] | None = None,
                 log: Callable[[str], None] | None = None, data_dirs: Iterable[str | Path] = (),
                 check_every: float = 0.5):
        self.runs, self.state_dir = [Path(r) for r in runs], Path(state_dir)
        self.data_dirs = [Path(d) for d in data_dirs]
        self.backoff = float(backoff if backoff is not None else os.environ.get("LLM_MAPS_RESTART_BACKOFF", 1.0))
        self.max_backoff, self.stable_after, self.check_every = max_backoff, stable_after, check_every
        self.spawn = spawn or (lambda runs, state: start_worker_process(runs, state, self.data_dirs))
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.queue = make_queue(self.state_dir)
        self.proc: subprocess.Popen[Any] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="llm-maps-supervisor", daemon=True)

    @property
    def worker_id(self) -> str | None:
        """The running worker's id in job records (``host:pid``, as the worker names itself)."""
        return f"{socket.gethostname()}:{self.proc.pid}" if self.proc is not None else None

    def start(self) -> "WorkerSupervisor":
        with self._lock:
            self.proc = self.spawn(self.runs, self.state_dir)
        self._thread.start()
        return self

    def _watch(self) -> None:
        failures = 0
        while not self._stop.is_set():
            proc, started = self.proc, time.time()
            assert proc is not None  # set by start() before this thread runs
            worker_id = f"{socket.gethostname()}:{proc.pid}"
            hung = None
            while (rc := proc.poll()) is None:
                if self._stop.wait(self.check_every):
                    return
                hung = self._silent_for(worker_id)
                if hung is not None:  # frozen (SIGSTOP, a deadlock, swapped out): its jobs are failed
                    proc.kill()       # by now, and a late result must not come back: kill, then replace
                    rc = proc.wait()
                    break
            if self._stop.is_set():
                return
            lived = time.time() - started
            failures = 1 if lived >= self.stable_after else failures + 1
            delay = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
            reason = (f"stopped responding (no heartbeat for {hung:.0f} s) and was killed" if hung is not None
                      else exit_reason(rc))
            self.log(f"llm-maps serve: embedded worker {worker_id} {reason} after {lived:.0f} s; "
                     f"restarting it in {delay:g} s (restart {self.restarts + 1})")
            try:
                self.queue.worker_gone(worker_id, f"{reason}; restarting in {delay:g} s")
                self.queue.fail_worker_jobs(worker_id, f"worker {worker_id} {reason}; the job did not finish")
            except Exception as exc:  # noqa: BLE001 - the restart matters more than the bookkeeping
                self.log(f"llm-maps serve: could not record the worker's exit: {type(exc).__name__}: {exc}")
            if self._stop.wait(delay):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self.proc = self.spawn(self.runs, self.state_dir)
                self.restarts += 1

    def _silent_for(self, worker_id: str) -> float | None:
        """Seconds since the worker's last liveness beat when that is over its heartbeat timeout
        (it registered, then stopped beating), else None. A worker still starting up has not
        registered yet and is left alone."""
        try:
            record = self.queue.workers().get(worker_id)
        except Exception:  # noqa: BLE001 - the queue briefly unreadable: look again next time
            return None
        if not record or record.get("status") == "gone":
            return None
        silent = time.time() - float(record.get("beat") or 0)
        return silent if silent > float(record.get("timeout") or self.queue.heartbeat_timeout) else None

    def terminate(self) -> None:
        """Stop supervising and send the worker SIGTERM without waiting (safe in a signal handler);
        ``stop()`` then waits for it."""
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and stop the worker (SIGTERM, then SIGKILL after ``timeout``)."""
        with self._lock:
            self._stop.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
