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
            self.queue.heartbeat(self.job_id)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Presence:
    """Keeps this worker's liveness record fresh from a side thread (``/api/health`` reads it), so a
    worker busy with a long job still counts as alive; marks it gone on a clean stop."""

    def __init__(self, queue, worker_id: str, runs, every: float | None = None):
        self.queue, self.worker_id, self.runs = queue, worker_id, list(runs)
        self.every = every or max(0.5, queue.heartbeat_timeout / 5)
        self.status = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="llm-maps-presence")

    def beat(self) -> None:
        try:
            self.queue.register_worker(self.worker_id, self.runs, self.status)
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


def warm_pool(pool, worker_id: str, log=print) -> None:
    """Load + warm the first runs at start, not on the first request."""
    for run in list(pool.paths)[: pool.max_models]:
        start = time.perf_counter()
        try:
            session = pool.get(run)
        except Exception as exc:  # noqa: BLE001 - keep serving the other runs; its jobs fail with this
            log(f"worker {worker_id}: cannot load run {run}: {type(exc).__name__}: {exc}")
            continue
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
            queue.update(job_id, result=partial)
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
        points.add(job["run"], point_record(job, result))
        queue.finish(job["id"], result)
        return "done"
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


def serve_jobs(run_dirs, *, state_dir: str | Path, max_models: int = 2, device: str = "auto", dtype: str = "auto",
               poll: float = 0.1, stop: threading.Event | None = None, max_jobs: int | None = None,
               log=print, pool=None, on_ready=None) -> int:
    """Claim and run jobs for ``run_dirs`` until ``stop`` is set (or ``max_jobs`` are done);
    ``on_ready()`` is called once the runs are loaded, before the first job is claimed."""
    from pipelines.engine import SessionPool

    queue = JobQueue(state_dir)
    points = PointStore(state_dir)
    pool = pool or SessionPool(run_dirs, max_models=max_models, device=device, dtype=dtype)
    runs = list(pool.paths)
    if not runs:
        raise LLMMapsError("worker: no runs to serve")
    worker_id = worker_name()
    presence = Presence(queue, worker_id, runs).start()
    try:
        warm_pool(pool, worker_id, log)
        presence.ready()
        if on_ready is not None:
            on_ready()
        return _job_loop(queue, points, pool, runs, worker_id, poll=poll, stop=stop or threading.Event(),
                         max_jobs=max_jobs)
    finally:
        presence.stop()


def _job_loop(queue, points, pool, runs, worker_id: str, *, poll: float, stop: threading.Event,
              max_jobs: int | None) -> int:
    done, last_reap = 0, 0.0
    while not stop.is_set():
        if time.time() - last_reap > queue.heartbeat_timeout / 2:
            queue.reap()
            last_reap = time.time()
        job = queue.claim(runs, worker_id)
        if job is None:
            stop.wait(poll)
            continue
        execute_job(queue, points, pool, job, worker_id)
        done += 1
        if max_jobs is not None and done >= max_jobs:
            break
    return done


def main_worker(run_dirs, *, state_dir: str | Path | None, max_models: int, device: str, dtype: str) -> int:
    from llm_maps.jobs import default_state_dir, redis_url

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if redis_url():  # scale-out: a Celery worker on REDIS_URL (it handles SIGTERM/SIGINT itself)
        from pipelines.celery_app import serve_celery

        log(f"llm-maps worker: serving {', '.join(Path(r).name for r in run_dirs) or 'build chunks only'} "
            f"from Celery on REDIS_URL")
        return serve_celery(run_dirs, max_models=max_models, device=device, dtype=dtype, log=log)
    if not run_dirs:
        raise LLMMapsError("worker: give at least one RUN_DIR (or set REDIS_URL to serve build chunks only)")
    state = Path(state_dir) if state_dir else default_state_dir(run_dirs)
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
    log(f"llm-maps worker: serving {', '.join(Path(r).name for r in run_dirs)} from queue {state}")
    serve_jobs(run_dirs, state_dir=state, max_models=max_models, device=device, dtype=dtype, stop=stop, log=log,
               on_ready=serving.set)
    return 0
