"""`llm-maps worker`: loads runs' models (lazily, LRU-bounded) and serves place / generate jobs.

Embedded queue (diskcache, llm_maps.jobs) by default; with REDIS_URL the same jobs run as Celery
tasks (pipelines.celery_app). Each running job heart-beats from a side thread, so a worker that is
killed leaves its job failed (by the reaper) instead of running forever; generate jobs publish
their tokens as they are produced.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from llm_maps.errors import LLMMapsError
from llm_maps.jobs import JobQueue, PointStore, redis_url, state_dir_for, worker_name
from llm_maps.runfolder import MANIFEST, RunIds, runs_in
from pipelines.celery_app import serve_celery
from pipelines.engine import SessionPool
from pipelines.jobrun import (GENERATE_FIELDS, PLACE_FIELDS, JobCancelled, JobFenced, JobTimeout, Presence,
                              execute_job, point_record, run_job, warm_pool)

__all__ = ["RunFinder", "serve_jobs", "main_worker", "worker_name",
           # running one job (pipelines.jobrun), for the callers that import them from here
           "GENERATE_FIELDS", "PLACE_FIELDS", "JobCancelled", "JobFenced", "JobTimeout", "Presence", "execute_job",
           "point_record", "run_job", "warm_pool"]


class RunFinder:
    """The runs a worker serves: the folders given plus the finished runs in data folders (those of
    fine-tuning groups in them included: ``runfolder.runs_in``), looked for again every ``every``
    seconds (a run published while serving is picked up, one removed is dropped), each with the id
    the web process gives it (``RunIds`` in the shared state folder)."""

    def __init__(self, runs=(), data_dirs=(), *, ids=None, every: float = 2.0):
        self.runs, self.data_dirs = [Path(r) for r in runs], [Path(d) for d in data_dirs]
        self.ids, self.every = ids or RunIds(), every
        self._last = 0.0
        self._stamps: dict[str, int | None] | None = None

    def paths(self) -> dict[str, Path]:
        self._last = time.time()
        return dict(self.ids.assign([*self.runs, *(p for d in self.data_dirs for p in runs_in(d))]))

    def changed(self, paths: dict[str, Path]) -> list[str]:
        """Runs whose manifest changed since the last look (rebuilt or fixed in place): the worker
        loads them again instead of answering from the old build, and looks again at one it could
        not serve. None on the first look."""
        def stamp(path: Path) -> int | None:
            try:
                return (path / MANIFEST).stat().st_mtime_ns
            except OSError:
                return None

        now = {run: stamp(path) for run, path in paths.items()}
        before, self._stamps = self._stamps, now
        return [] if before is None else [r for r in now if r in before and before[r] != now[r]]

    def due(self) -> bool:
        return time.time() - self._last >= self.every


def serve_jobs(run_dirs, *, state_dir: str | Path, max_models: int = 2, device: str = "auto", dtype: str = "auto",
               poll: float = 0.1, stop: threading.Event | None = None, max_jobs: int | None = None,
               log=print, pool=None, on_ready=None, data_dirs=()) -> int:
    """Claim and run jobs for ``run_dirs`` (and the runs in ``data_dirs``, looked for again while
    serving) until ``stop`` is set (or ``max_jobs`` are done); ``on_ready()`` is called once the
    runs are loaded, before the first job is claimed."""
    queue = JobQueue(state_dir)
    points = PointStore(state_dir, jobs=queue)
    finder = RunFinder(run_dirs, data_dirs, ids=RunIds(state_dir))
    if pool is None:
        pool = SessionPool([], max_models=max_models, device=device, dtype=dtype)
        paths = finder.paths()
        finder.changed(paths)  # (the first look: what later looks compare with)
        pool.update(paths)
    if not pool.paths and not data_dirs:
        raise LLMMapsError("worker: no runs to serve")
    worker_id = worker_name()
    presence = Presence(queue, worker_id, list(pool.paths)).start()
    try:
        warm_pool(pool, worker_id, log, broken=presence.broken)
        presence.ready()
        if on_ready is not None:
            on_ready()
        return _job_loop(queue, points, pool, presence, finder, worker_id, poll=poll,
                         stop=stop or threading.Event(), max_jobs=max_jobs, log=log)
    finally:
        presence.stop()


def _rescan(pool, presence, finder, worker_id: str, log) -> None:
    """Serve the runs found now: new ones are loaded (a run that cannot be served is reported as
    broken, with its reason), removed ones dropped; the liveness record lists them at once."""
    paths = finder.paths()
    changed = finder.changed(paths)
    for run in changed:  # rebuilt or fixed in place: the next job loads it afresh
        pool.forget(run)
    added, removed = pool.update(paths)
    added += [r for r in changed if r not in added]
    if not added and not removed:
        return
    for run in [*removed, *added]:
        presence.broken.pop(run, None)
    log(f"worker {worker_id}: runs now {', '.join(pool.paths) or 'none'}"
        + (f" (new: {', '.join(added)})" if added else "") + (f" (gone: {', '.join(removed)})" if removed else ""))
    warm_pool(pool, worker_id, log, runs=added[: pool.max_models], broken=presence.broken)
    presence.runs = list(pool.paths)
    presence.beat()


def _job_loop(queue, points, pool, presence, finder, worker_id: str, *, poll: float, stop: threading.Event,
              max_jobs: int | None, log=print) -> int:
    done, last_reap = 0, 0.0
    while not stop.is_set():
        if time.time() - last_reap > queue.heartbeat_timeout / 2:
            queue.reap()
            last_reap = time.time()
        if finder.due():
            _rescan(pool, presence, finder, worker_id, log)
        job = queue.claim(list(pool.paths), worker_id)  # a broken run's jobs fail naming why
        if job is None:
            stop.wait(poll)
            continue
        execute_job(queue, points, pool, job, worker_id)
        done += 1
        if max_jobs is not None and done >= max_jobs:
            break
    return done


def main_worker(run_dirs, *, state_dir: str | Path | None, max_models: int, device: str, dtype: str,
                data_dirs=()) -> int:
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if redis_url():  # scale-out: a Celery worker on REDIS_URL (it handles SIGTERM/SIGINT itself)
        log(f"llm-maps worker: serving {', '.join(Path(r).name for r in run_dirs) or 'build chunks only'} "
            f"from Celery on REDIS_URL")
        return serve_celery([*run_dirs, *(p for d in data_dirs for p in runs_in(d))], max_models=max_models,
                            device=device, dtype=dtype, log=log)
    if not run_dirs and not data_dirs:
        raise LLMMapsError("worker: give at least one RUN_DIR or --data folder (or set REDIS_URL to serve build "
                           "chunks only)")
    state = Path(state_dir) if state_dir else state_dir_for(run_dirs, data_dirs)
    stop, serving = threading.Event(), threading.Event()

    def on_signal(*_):
        stop.set()  # serving: finish the running job, then stop
        if not serving.is_set():  # still loading models: nothing to finish, leave now
            raise SystemExit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    parent = os.environ.get("LLM_MAPS_PARENT_PID")
    if parent:  # started by `llm-maps serve`: stop when that process is gone, never linger
        def watch():
            while not stop.wait(1.0):
                if os.getppid() != int(parent):
                    stop.set()
        threading.Thread(target=watch, daemon=True).start()
    log(f"llm-maps worker: serving {', '.join([*(Path(r).name for r in run_dirs), *(f'the runs in {d}' for d in data_dirs)])} "
        f"from queue {state}")
    serve_jobs(run_dirs, state_dir=state, max_models=max_models, device=device, dtype=dtype, stop=stop, log=log,
               on_ready=serving.set, data_dirs=data_dirs)
    return 0
