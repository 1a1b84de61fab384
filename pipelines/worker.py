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
from llm_maps.jobs import JobQueue, PointStore, worker_name
from llm_maps.runfolder import run_key

PLACE_FIELDS = ("prompt", "x", "y", "dist_to_train", "neighbours", "domain", "expected_accuracy", "x_tokens",
                "y_tokens")
GENERATE_FIELDS = ("output", "tokens", "stop_reason", "n_tokens", "mean_logprob", "perplexity", "path_length",
                   "final_dist", "reference", "mean_dist", "max_dist")


class JobTimeout(Exception):
    pass


class JobFenced(Exception):
    """The job is no longer this worker's (it was failed meanwhile, e.g. while the worker was frozen):
    stop, and keep nothing of it."""


class JobCancelled(Exception):
    """The user cancelled a running job; ``partial`` is what it had produced."""

    def __init__(self, partial: dict):
        super().__init__("cancelled")
        self.partial = partial


def run_job(session, job: dict, *, publish=None, deadline: float | None = None, cancelled=None) -> dict:
    """Execute one job dict on a RunSession; ``publish(partial_result)`` streams progress and
    ``cancelled()`` (checked before every token) stops a generation early."""
    p = job["payload"]
    origin = p.get("example_id")
    if origin:  # a variation of a run's example: an unknown id fails the job before any work
        session.example_row(origin)
    placed = session.place(p["instruction"], p.get("context") or "", domain=p.get("domain"))
    public = {k: v for k, v in placed.items() if k != "state"}  # the hidden state stays in the worker
    if job["kind"] == "place":
        if origin:
            public["variation"] = session.variation(origin, placed, None, cot=bool(p.get("cot")))
        return public
    if publish is not None:
        publish({**public, "tokens": []})
    tokens: list[dict] = []

    def on_token(item: dict) -> None:
        tokens.append(item)
        if deadline is not None and time.time() > deadline:
            raise JobTimeout()
        if cancelled is not None and cancelled():
            raise JobCancelled({**public, "tokens": list(tokens), "stop_reason": "cancelled"})
        if publish is not None:
            publish({**public, "tokens": list(tokens)})

    if cancelled is not None and cancelled():
        raise JobCancelled({**public, "tokens": [], "stop_reason": "cancelled"})
    # RunSession.generate drops the prompt's hidden state from what it returns
    result = session.generate(p["instruction"], p.get("context") or "",
                              max_new_tokens=int(p.get("max_new_tokens") or 64),
                              temperature=float(p.get("temperature") or 0.0), top_p=float(p.get("top_p") or 1.0),
                              seed=p.get("seed"), placed=placed, on_token=on_token,
                              teacher_force=p.get("teacher_force"))
    if origin:  # scored with the example's metric and the run's threshold (RunSession.variation)
        result["variation"] = session.variation(origin, placed, result.get("output"), cot=bool(p.get("cot")))
    return result


def point_record(job: dict, result: dict) -> dict:
    """What the per-run point store keeps of a finished job."""
    p = job["payload"]
    return {"id": job["id"], "created": job["created"], "kind": job["kind"], "instruction": p["instruction"],
            "context": p.get("context") or "", "options": {k: p.get(k) for k in ("max_new_tokens", "temperature",
                                                                               "top_p", "seed") if k in p},
            **{k: result.get(k) for k in PLACE_FIELDS},
            **({k: result.get(k) for k in GENERATE_FIELDS} if job["kind"] == "generate" else {}),
            **({"variation": result["variation"]} if result.get("variation") else {})}


class _Heartbeat:
    def __init__(self, queue: JobQueue, job_id: str, every: float):
        self.queue, self.job_id, self.every = queue, job_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                self.queue.heartbeat(self.job_id)
            except Exception as exc:  # noqa: BLE001 - the queue briefly unreachable: beat again next time
                print(f"heartbeat of job {self.job_id} failed: {type(exc).__name__}", file=sys.stderr)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Presence:
    """Keeps this worker's liveness record fresh from a side thread (``/api/health`` reads it), so a
    worker busy with a long job still counts as alive; marks it gone on a clean stop. ``broken``:
    runs this worker cannot serve, with the reason (health and the API say so instead of taking jobs
    that would fail)."""

    def __init__(self, queue, worker_id: str, runs, every: float | None = None):
        self.queue, self.worker_id, self.runs = queue, worker_id, list(runs)
        self.every = every or max(0.5, queue.heartbeat_timeout / 5)
        self.status = "starting"
        self.broken: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="llm-maps-presence")

    def beat(self) -> None:
        try:
            self.queue.register_worker(self.worker_id, self.runs, self.status, broken=self.broken)
        except Exception as exc:  # noqa: BLE001 - a missed beat (queue briefly unreachable) is no crash
            print(f"worker {self.worker_id}: liveness beat failed: {type(exc).__name__}", file=sys.stderr)

    def _run(self):
        while not self._stop.wait(self.every):
            self.beat()

    def start(self) -> "Presence":
        self.beat()
        self._thread.start()
        return self

    def ready(self) -> None:
        self.status = "ready"
        self.beat()

    def stop(self, reason: str = "stopped") -> None:
        self._stop.set()
        try:
            self.queue.worker_gone(self.worker_id, reason)
        except Exception:  # noqa: BLE001
            pass


def warm_pool(pool, worker_id: str, log=print, runs=None, broken: dict | None = None) -> None:
    """Load + warm the first runs at start (or ``runs``), not on the first request. A run that cannot
    be served (its files do not match its model) goes into ``broken`` with the reason."""
    for run in (list(pool.paths)[: pool.max_models] if runs is None else runs):
        start = time.perf_counter()
        try:
            session = pool.get(run)
        except Exception as exc:  # noqa: BLE001 - keep serving the other runs; its jobs fail with this
            log(f"worker {worker_id}: cannot load run {run}: {type(exc).__name__}: {exc}")
            if broken is not None and isinstance(exc, LLMMapsError):  # said by run id, not by path
                broken[run] = str(exc).replace(str(Path(pool.paths[run]).resolve()), run).replace(str(pool.paths[run]), run)
            continue
        if broken is not None:
            broken.pop(run, None)
        log(f"worker {worker_id}: {run} ready in {time.perf_counter() - start:.1f} s "
            f"(model {getattr(session, 'load_seconds', 0):.1f} s, warm-up {getattr(session, 'warm_seconds', 0):.2f} s)")


def execute_job(queue, points, pool, job: dict, worker_id: str) -> str:
    """Run one claimed job to its end on either queue (JobQueue or RedisJobQueue): heart-beat while it
    runs, stream partial results, keep the point, record done/failed. Returns the final status."""
    deadline = time.time() + queue.job_timeout
    last = [0.0]

    def publish(partial, job_id=job["id"]):
        now = time.time()
        if now - last[0] >= 0.05:  # at most 20 writes a second
            if not queue.update(job_id, result=partial):  # failed (or gone) meanwhile: not ours any more
                raise JobFenced()
            last[0] = now

    checked = [0.0, False]

    def cancelled(job_id=job["id"]):
        now = time.time()
        if not checked[1] and now - checked[0] >= 0.1:  # at most 10 reads a second
            checked[0], checked[1] = now, queue.cancel_requested(job_id)
        return checked[1]

    try:
        with _Heartbeat(queue, job["id"], every=max(0.5, queue.heartbeat_timeout / 5)):
            session = pool.get(job["run"])
            manifest = getattr(session, "manifest", None)
            if job.get("run_key") and manifest is not None and run_key(manifest) != job["run_key"]:
                raise LLMMapsError(f"run '{job['run']}' of worker {worker_id} is another run than the one the "
                                   f"web process serves under that id ({pool.paths.get(job['run'])}); "
                                   "give the worker the same run folders, in the same order")
            result = run_job(session, job, publish=publish, deadline=deadline, cancelled=cancelled)
        # done only if the job is still ours and running (fencing: a job a client was told failed
        # stays failed); only then is its point kept (the point's id is the job's)
        if not queue.finish(job["id"], result):
            raise JobFenced()
        points.add(job["run"], point_record(job, result))
        return "done"
    except JobFenced:
        print(f"worker {worker_id}: job {job['id']} was ended meanwhile ({(queue.get(job['id']) or {}).get('status')}); "
              "its result is dropped", file=sys.stderr)
        return "fenced"
    except JobCancelled as exc:
        queue.mark_cancelled(job["id"], exc.partial)
        return "cancelled"
    except JobTimeout:
        queue.fail(job["id"], f"timed out after {queue.job_timeout:g} s")
    except LLMMapsError as exc:
        queue.fail(job["id"], str(exc))
    except Exception as exc:  # noqa: BLE001 - a job failure must never kill the worker
        print(f"worker {worker_id}: job {job['id']} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        queue.fail(job["id"], f"internal error ({type(exc).__name__}); see the worker log")
    return "failed"


class RunFinder:
    """The runs a worker serves: the folders given plus the finished runs in data folders (those of
    fine-tuning groups in them included: ``runfolder.runs_in``), looked for again every ``every``
    seconds (a run published while serving is picked up, one removed is dropped), each with the id
    the web process gives it (``RunIds`` in the shared state folder)."""

    def __init__(self, runs=(), data_dirs=(), *, ids=None, every: float = 2.0):
        from llm_maps.runfolder import RunIds

        self.runs, self.data_dirs = [Path(r) for r in runs], [Path(d) for d in data_dirs]
        self.ids, self.every = ids or RunIds(), every
        self._last = 0.0
        self._stamps: dict[str, int | None] | None = None

    def paths(self) -> dict[str, Path]:
        from llm_maps.runfolder import runs_in

        self._last = time.time()
        return dict(self.ids.assign([*self.runs, *(p for d in self.data_dirs for p in runs_in(d))]))

    def changed(self, paths: dict[str, Path]) -> list[str]:
        """Runs whose manifest changed since the last look (rebuilt or fixed in place): the worker
        loads them again instead of answering from the old build, and looks again at one it could
        not serve. None on the first look."""
        from llm_maps.runfolder import MANIFEST

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
    from llm_maps.runfolder import RunIds
    from pipelines.engine import SessionPool

    queue = JobQueue(state_dir)
    points = PointStore(state_dir)
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
    from llm_maps.jobs import redis_url, state_dir_for

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if redis_url():  # scale-out: a Celery worker on REDIS_URL (it handles SIGTERM/SIGINT itself)
        from pipelines.celery_app import serve_celery

        log(f"llm-maps worker: serving {', '.join(Path(r).name for r in run_dirs) or 'build chunks only'} "
            f"from Celery on REDIS_URL")
        from llm_maps.runfolder import runs_in

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
