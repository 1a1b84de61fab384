"""Commands that serve: the dashboard (`serve`, with its embedded worker under a supervisor), the
background `worker`, and the `demo` (build if needed, then serve)."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from dashboard.app import normalise_prefix, parse_auth, serve
from interfaces.demo import run_demo
from interfaces.supervisor import WorkerSupervisor
from llm_maps import model_stack
from llm_maps.errors import LLMMapsError
from llm_maps.jobs import state_dir_for
from llm_maps.runfolder import split_run_args
from llm_maps.stages import DemoConfig, ServeConfig, WorkerConfig
from pipelines.worker import main_worker


def cmd_demo(cfg: DemoConfig) -> int:
    if cfg.finetune_steps is not None and cfg.finetune_steps < 1:
        raise LLMMapsError(f"--finetune-steps: must be at least 1, got {cfg.finetune_steps}")
    return int(run_demo(out=Path(cfg.out) if cfg.out else None, rebuild=cfg.rebuild, progress=cfg.progress,
                        serve=cfg.serve, port=cfg.port, finetune=cfg.finetune or cfg.finetune_steps is not None,
                        finetune_steps=cfg.finetune_steps) or 0)


def cmd_serve(cfg: ServeConfig) -> int:
    """Serve the dashboard (a torch-free process: the worker runs the model in its own)."""
    auth = os.environ.get("LLM_MAPS_AUTH") or None
    try:
        parse_auth(auth)
        prefix = normalise_prefix(cfg.prefix if cfg.prefix is not None else os.environ.get("LLM_MAPS_PREFIX"))
    except ValueError as exc:
        raise LLMMapsError(str(exc)) from None
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not auth:
        print(f"llm-maps serve: warning: listening on {cfg.host} without a password; set "
              "LLM_MAPS_AUTH=user:password to require one", file=sys.stderr)
    # a folder of runs (data/runs, a fine-tuning group) given as a run is served as the folder it is
    runs, folders = split_run_args(cfg.runs)
    data_dirs = [*folders, *(Path(d) for d in cfg.data or [])] or ([] if cfg.runs else [Path("data/runs")])
    state = state_dir_for(runs, data_dirs)
    worker = None
    embedded = cfg.worker and not os.environ.get("REDIS_URL")
    if embedded and not model_stack.available():  # a view-only install: the pages, without live points
        print(f"llm-maps serve: note: no embedded worker (the playground is off): "
              f"{model_stack.message('the worker')}", file=sys.stderr)
        embedded = False
    if embedded:
        # restarted (with back-off) whenever it dies or stops responding; it serves the runs given and
        # those the data folders hold, now and later; /api/health says when none is alive
        worker = WorkerSupervisor(runs, state, data_dirs=data_dirs).start()
    if cfg.worker:  # workers expected (embedded, or Celery on REDIS_URL): /api/health checks them
        os.environ.setdefault("LLM_MAPS_EXPECT_WORKERS", "1")

    def stop(signum: int, _frame: object) -> None:
        if worker is not None:  # the worker stops while the server closes, not after
            worker.terminate()
        if signum == signal.SIGTERM:
            sys.exit(0)  # so `finally` waits for the worker
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        serve(runs, data_dirs, host=cfg.host, port=cfg.port, auth=auth, prefix=prefix, announce=announce)
    except KeyboardInterrupt:  # Ctrl-C: a clean stop, not an interrupted job
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not leave the worker behind
            signal.signal(sig, signal.SIG_IGN)
        if worker is not None:
            worker.stop()
    return 0


def announce(url: str) -> None:
    """The one URL line; started by `llm-maps demo`: also how long the first map took."""
    print(f"llm-maps: dashboard on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    started = os.environ.pop("LLM_MAPS_DEMO_STARTED", None)
    if started:
        print(f"llm-maps demo: first map served {(time.time() - float(started)) / 60:.1f} min after `llm-maps demo` "
              "started", file=sys.stderr, flush=True)


def cmd_worker(cfg: WorkerConfig) -> int:
    model_stack.require("llm-maps worker")
    runs, folders = split_run_args(cfg.runs)
    return int(main_worker(runs, state_dir=cfg.state, max_models=cfg.max_models, device=cfg.device, dtype=cfg.dtype,
                           data_dirs=[*folders, *(Path(d) for d in cfg.data or [])]) or 0)


COMMANDS: dict[str, Callable[[Any], int]] = {"serve": cmd_serve, "worker": cmd_worker, "demo": cmd_demo}
