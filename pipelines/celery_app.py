"""Celery on REDIS_URL: the tasks `llm-maps worker` runs when scaled out.

    llm_maps.run_job       one place/generate job by id (queue ``llm-maps.run.<run>``), with this
                           process's SessionPool: claim it in the RedisJobQueue, then the same
                           ``execute_job`` as the embedded worker (heartbeats, streaming, timeout)
    llm_maps.encode_chunk  one chunk of a ``build --distributed`` (queue ``llm-maps.build``)
    llm_maps.score_chunk   one chunk of a ``score --distributed`` (same queue, same acks-late retry)
    llm_maps.views_chunk   one chunk of the completion view / token atlas passes with ``--distributed``

The app's configuration lives in ``llm_maps.jobs.celery_app`` (torch-free) so that the web process
sends tasks by name with the same settings and never imports this module. Workers use the solo
pool: one task at a time in the process that holds the models.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from llm_maps.jobs import (BUILD_QUEUE, TASK_ENCODE_CHUNK, TASK_RUN_JOB, TASK_SCORE_CHUNK, TASK_VIEWS_CHUNK,
                           RedisJobQueue, RedisPointStore, celery_app, run_queue_name, worker_name)
from pipelines.distributed import encode_chunk, score_chunk, views_chunk
from pipelines.engine import SessionPool
from pipelines.jobrun import Presence, execute_job, warm_pool

_STATE: dict = {}  # set by serve_celery: pool, queue, points, worker id


def make_app(url: str | None = None):
    """The Celery app on ``url`` (default REDIS_URL) with this module's tasks registered."""
    app = celery_app(url)
    if TASK_RUN_JOB not in app.tasks:
        app.task(name=TASK_RUN_JOB, ignore_result=False)(run_job_task)
        # acks late: a chunk of a worker that dies comes back (chunks are idempotent)
        app.task(name=TASK_ENCODE_CHUNK, acks_late=True, reject_on_worker_lost=True)(encode_chunk_task)
        app.task(name=TASK_SCORE_CHUNK, acks_late=True, reject_on_worker_lost=True)(score_chunk_task)
        app.task(name=TASK_VIEWS_CHUNK, acks_late=True, reject_on_worker_lost=True)(views_chunk_task)
    return app


def _state() -> dict:
    if not _STATE:  # a task executed outside serve_celery (e.g. eagerly in a test): serve no runs
        queue = RedisJobQueue()
        _STATE.update(pool=SessionPool([]), queue=queue, points=RedisPointStore(jobs=queue),
                      worker_id=f"{socket.gethostname()}:{os.getpid()}", last_reap=0.0)
    return _STATE


def run_job_task(job_id: str) -> dict:
    st = _state()
    queue = st["queue"]
    if time.time() - st["last_reap"] > queue.heartbeat_timeout / 2:
        queue.reap()  # jobs of workers that died, even when nobody polls them
        st["last_reap"] = time.time()
    st["running"] = job_id  # (a restart after a Redis outage waits for it: _restart_after_outage)
    try:
        job = queue.claim_id(job_id, st["worker_id"])
        if job is None:  # expired, failed, or already taken by another delivery of the same message
            return {"id": job_id, "status": "skipped"}
        return {"id": job_id, "status": execute_job(queue, st["points"], st["pool"], job, st["worker_id"])}
    finally:
        st["running"] = None


def encode_chunk_task(*, work: str, chunk: int, fingerprint: str, spec: dict) -> dict:
    return encode_chunk(work=work, chunk=chunk, fingerprint=fingerprint, spec=spec,
                        worker=_STATE.get("worker_id") or f"{socket.gethostname()}:{os.getpid()}")


def score_chunk_task(*, work: str, chunk: int, fingerprint: str, folder: str = ".distributed-score") -> dict:
    return score_chunk(work=work, chunk=chunk, fingerprint=fingerprint, folder=folder,
                       worker=_STATE.get("worker_id") or f"{socket.gethostname()}:{os.getpid()}")


def views_chunk_task(*, work: str, chunk: int, fingerprint: str, spec: dict) -> dict:
    return views_chunk(work=work, chunk=chunk, fingerprint=fingerprint, spec=spec,
                       worker=_STATE.get("worker_id") or f"{socket.gethostname()}:{os.getpid()}")


def serve_celery(run_dirs, *, max_models: int = 2, device: str = "auto", dtype: str = "auto", log=print,
                 loglevel: str = "WARNING") -> int:
    """Load + warm the runs, then run a solo-pool Celery worker on their queues and the build queue."""
    app = make_app()
    pool = SessionPool(run_dirs, max_models=max_models, device=device, dtype=dtype)
    worker_id = worker_name()
    queue = RedisJobQueue()
    _STATE.update(pool=pool, queue=queue, points=RedisPointStore(jobs=queue), worker_id=worker_id, last_reap=0.0)
    presence = Presence(queue, worker_id, list(pool.paths)).start() if pool.paths else None  # for /api/health
    recover(queue, worker_id, list(pool.paths), log)  # before the models load: a cut-off job fails at once
    warm_pool(pool, worker_id, log)
    queues = [run_queue_name(run) for run in pool.paths] + [BUILD_QUEUE]
    from celery.signals import worker_ready

    def on_ready(**_):
        if presence is not None:
            presence.ready()
        log(f"worker {worker_id}: ready, consuming {', '.join(queues)}")

    worker_ready.connect(on_ready, weak=False)
    threading.Thread(target=_restart_after_outage, args=(queue, log), daemon=True,
                     name="llm-maps-broker-watch").start()
    try:
        _worker_main(app, queues, loglevel)
    finally:
        if presence is not None:
            presence.stop()
    return 0


RESTARTED = "LLM_MAPS_RESTARTED_WORKER"  # set by _restart_after_outage: the id of the process restarted


def recover(queue, worker_id: str, runs: list[str], log=print) -> tuple[int, int]:
    """What a starting worker puts right (returns how many of each): where this process restarted
    itself in place (``_restart_after_outage``: same pid, same id), a job still running under its id
    was its own, cut off, and is failed now rather than when its heartbeats lapse; and the task of
    every job of its runs still queued is sent again (one it had received but not claimed when it
    stopped would wait forever; ``claim_id`` runs a job sent twice once)."""
    failed = resent = 0
    try:
        if os.environ.pop(RESTARTED, None) == worker_id:
            failed = queue.fail_worker_jobs(worker_id, f"worker {worker_id} restarted after a Redis outage while "
                                                       "running it; the job did not finish")
        resent = queue.resend_queued(runs)
    except Exception as exc:  # noqa: BLE001 - Redis not up (yet): Celery waits for it, and the outage watch
        # restarts this process once it is back, which comes here again
        log(f"worker {worker_id}: Redis unreachable at start ({type(exc).__name__}); what an earlier process "
            "left is put right once it is back")
        return failed, resent
    if failed or resent:
        log(f"worker {worker_id}: failed {failed} job(s) it was running before it restarted; sent the tasks of "
            f"{resent} queued job(s) again")
    return failed, resent


def _restart_after_outage(queue, log, every: float = 1.0) -> None:
    """Once Redis is reachable again after an outage, start this worker afresh in the same process
    (same pid, so the same worker id): Celery 5's consumer reconnects to Redis but then stops taking
    tasks (celery/celery#8091, #9054), which would leave every later job queued forever. A job running
    then is let finish first (it outlived an outage shorter than its heartbeat timeout: its partial
    results and heartbeats resume), for up to the job timeout; one still running is failed when the
    new process starts (``recover``)."""
    lost = False
    while True:
        time.sleep(every)
        try:
            queue.redis.ping()
        except Exception:  # noqa: BLE001 - any failure to reach Redis is an outage
            lost = True
            continue
        if lost:
            worker, job = _STATE.get("worker_id"), _STATE.get("running")
            if job:
                log(f"worker {worker}: Redis is back after an outage; restarting once job {job} ends")
                deadline = time.time() + queue.job_timeout
                while _STATE.get("running") and time.time() < deadline:
                    time.sleep(min(every, 0.1))
            log(f"worker {worker}: Redis is back after an outage; restarting this worker")
            os.environ[RESTARTED] = str(worker)
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _worker_main(app, queues, loglevel: str) -> None:
    app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1", "-Q", ",".join(queues),
                     "-n", f"llm-maps-{os.getpid()}@{socket.gethostname()}", "--without-gossip", "--without-mingle",
                     "--without-heartbeat", f"--loglevel={loglevel}"])
