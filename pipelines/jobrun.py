"""Running one place / generate job of the playground on a run's session, on either queue (the
embedded ``JobQueue`` or Celery's ``RedisJobQueue``): heart-beats while it runs, streams partial
results, keeps the point, records done / failed. Shared by the embedded worker (pipelines.worker)
and the Celery tasks (pipelines.celery_app); also the worker's liveness record and warm-up.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from llm_maps.conditions import DEFAULT_COT_CUE
from llm_maps.errors import LLMMapsError
from llm_maps.jobs import JobQueue, QueueUnavailable
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
    if p.get("cot"):  # the answer starts with the cue (RunSession.generate): shown while it streams
        public["response_prefix"] = DEFAULT_COT_CUE
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
                              teacher_force=p.get("teacher_force"), **({"cot": True} if p.get("cot") else {}))
    if origin:  # scored with the example's metric and the run's threshold (RunSession.variation)
        result["variation"] = session.variation(origin, placed, result.get("output"), cot=bool(p.get("cot")))
    return result


def point_record(job: dict, result: dict) -> dict:
    """What the per-run point store keeps of a finished job."""
    p = job["payload"]
    return {"id": job["id"], "created": job["created"], "kind": job["kind"], "instruction": p["instruction"],
            "context": p.get("context") or "", "options": {k: p.get(k) for k in ("max_new_tokens", "temperature",
                                                                               "top_p", "seed", "cot") if k in p},
            **{k: result.get(k) for k in PLACE_FIELDS},
            **({k: result.get(k) for k in GENERATE_FIELDS} if job["kind"] == "generate" else {}),
            **({"response_prefix": result["response_prefix"]} if result.get("response_prefix") else {}),
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


def _through_outage(step, until: float, every: float = 0.2):
    """``step()``, tried again while the queue is unreachable (QueueUnavailable), until ``until``."""
    while True:
        try:
            return step()
        except QueueUnavailable:
            if time.time() >= until:
                raise
            time.sleep(every)


def execute_job(queue, points, pool, job: dict, worker_id: str) -> str:
    """Run one claimed job to its end on either queue (JobQueue or RedisJobQueue): heart-beat while it
    runs, stream partial results, keep the point, record done/failed. Returns the final status."""
    deadline = time.time() + queue.job_timeout
    last = [0.0]

    # the queue briefly unreachable (a Redis outage) does not end the job: a partial result not
    # written is written with the next one (or the end), a cancel not read is read next time
    def publish(partial, job_id=job["id"]):
        now = time.time()
        if now - last[0] >= 0.05:  # at most 20 writes a second
            try:
                ours = queue.update(job_id, result=partial)
            except QueueUnavailable:
                return
            if not ours:  # failed (or gone) meanwhile: not ours any more
                raise JobFenced()
            last[0] = now

    checked = [0.0, False]

    def cancelled(job_id=job["id"]):
        now = time.time()
        if not checked[1] and now - checked[0] >= 0.1:  # at most 10 reads a second
            try:
                checked[0], checked[1] = now, queue.cancel_requested(job_id)
            except QueueUnavailable:
                checked[0] = now
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
            # the point first, pending (its id is the job's: shown once the job is done, so a client
            # told "done" finds it listed, and one whose job ends failed, whatever stops us in between,
            # is never shown); then done only if the job is still ours and running (fencing: a job a
            # client was told failed stays failed, and keeps no point); then the point committed.
            # Each step is tried again while the queue is unreachable (a Redis outage), heart-beating,
            # for up to twice the heartbeat timeout (a reader that finds the job's heartbeat older
            # than the timeout fails it meanwhile, and the fencing then drops its point)
            point = point_record(job, result)
            until = time.time() + 2 * queue.heartbeat_timeout
            try:
                _through_outage(lambda: points.keep_pending(job["run"], point), until)
                if not _through_outage(lambda: queue.finish(job["id"], result), until):
                    _through_outage(lambda: points.delete(job["run"], job["id"]), until)
                    raise JobFenced()
                _through_outage(lambda: points.commit(job["run"], point), until)
            except QueueUnavailable:
                raise LLMMapsError(f"its result could not be saved: the job queue stayed unreachable for "
                                   f"{2 * queue.heartbeat_timeout:g} s") from None
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
