"""The job queue between the web process and workers, and the per-run store of user points.

Embedded default: a diskcache folder (SQLite, safe across processes) — no server to install.
Torch-free: the web process submits and reads jobs; ``llm-maps worker`` claims and runs them.

A job record (``contract.JobRecord``, docs/run-folder.md): ``{id, run, kind, payload, status, error,
result, created, started, finished, heartbeat, worker}`` with ``status`` queued -> running -> done | failed | cancelled. Claiming pops the id and
marks the job running in one transaction, so a job is never lost between the two. A running job
whose worker stops heart-beating (killed, crashed) is failed with a reason after
``heartbeat_timeout`` seconds — by whoever looks at it next (a reader or a worker).

Scale-out: with ``REDIS_URL`` set, ``make_queue`` returns a ``RedisJobQueue`` (same interface,
records as JSON in Redis) whose jobs are delivered to ``llm-maps worker`` processes as Celery
tasks (``pipelines.celery_app``), sent by task name so this module stays torch-free.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, cast

from .contract import JobPayload, JobRecord, KeyBinding, PointRecord
from .errors import LLMMapsError
from .runfolder import is_group

DEFAULTS = {  # each overridable with LLM_MAPS_<NAME> in the environment, e.g. LLM_MAPS_MAX_QUEUED=200
    "max_queued": float(os.environ.get("LLM_MAPS_MAX_QUEUED", 64)),  # waiting jobs of one run
    "max_queued_total": float(os.environ.get("LLM_MAPS_MAX_QUEUED_TOTAL", 1024)),  # of all runs together
    "heartbeat_timeout": float(os.environ.get("LLM_MAPS_HEARTBEAT_TIMEOUT", 20)),
    "job_timeout": float(os.environ.get("LLM_MAPS_JOB_TIMEOUT", 300)),
    "retention": float(os.environ.get("LLM_MAPS_RETENTION", 7 * 24 * 3600)),
}


BACKGROUND_FILE = "background.json"  # STATE/background.json: a build beside the server (contract.BackgroundStatus)
FINAL = ("done", "failed", "cancelled")  # a job in one of these states never changes again


class QueueFull(LLMMapsError):
    def __init__(self, queued: int, retry_after: int, run: str | None = None):
        super().__init__(f"queue full ({queued} jobs waiting" + (f" for run '{run}'" if run else "") + "); retry later")
        self.retry_after = retry_after


class QueueUnavailable(QueueFull):
    """The queue's server cannot be reached: answered like a full queue (503 + Retry-After)."""

    def __init__(self, reason: str, retry_after: int = 5):
        LLMMapsError.__init__(self, f"job queue unavailable ({reason}); retry later")
        self.retry_after = retry_after


class KeyReused(LLMMapsError):
    """An idempotency key sent again with another request (another run or body): answered 422."""

    def __init__(self) -> None:
        super().__init__("Idempotency-Key was already used for another request (another run or body); "
                         "use a new key for a new request")


class KeyInFlight(LLMMapsError):
    """The first request with an idempotency key is still being submitted: answered 409 + Retry-After."""
    retry_after = 1

    def __init__(self) -> None:
        super().__init__("a request with this Idempotency-Key is still being submitted; retry in a moment")


CONFIRM_WAIT = 5.0  # scale-out: how long a job's task may wait for the web process's confirmation


def request_fingerprint(run: str, kind: str, payload: JobPayload) -> str:
    """What an idempotency key is bound to: the run, the kind and the (validated) payload."""
    text = json.dumps([run, kind, payload], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _outside_group(folder: Path) -> Path:
    """``folder``, or the folder holding it when it is a fine-tuning group: a group's runs share the
    state folder of the runs beside the group (one served however it was given)."""

    return folder.parent if is_group(folder) else folder


def default_state_dir(run_dirs: Iterable[str | Path]) -> Path:
    env = os.environ.get("LLM_MAPS_STATE")
    if env:
        return Path(env)
    first = next(iter(run_dirs), None)
    base = _outside_group(Path(first).resolve().parent) if first is not None else Path.cwd() / "data" / "runs"
    return base / ".llm-maps-state"


def state_dir_for(runs: Iterable[str | Path], data_dirs: Iterable[str | Path]) -> Path:
    """Where the job queue, user points and run ids of a set of served runs live (the web process
    and its workers use the same rule): LLM_MAPS_STATE, else beside the first run given, else in the
    first data folder (a run of a fine-tuning group, or a group given as the data folder: beside
    the group)."""
    runs, data_dirs = list(runs), list(data_dirs)
    if os.environ.get("LLM_MAPS_STATE") or runs:
        return default_state_dir(runs)
    if not data_dirs:
        return default_state_dir([])

    first = Path(data_dirs[0])
    return (first.resolve().parent if is_group(first) else first) / ".llm-maps-state"


class _Staleness:
    """What both queues share: the heartbeat rule and reason text, and the job transitions."""
    heartbeat_timeout: float

    def get(self, job_id: str) -> JobRecord | None:
        raise NotImplementedError

    def update(self, job_id: str, **fields: Any) -> bool:
        """Change a job that is not final yet (refreshing its heartbeat); False when it is final or
        gone: a job in a final state never changes again (a frozen worker's late writes are dropped)."""
        raise NotImplementedError

    def workers(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_worker(self, worker_id: str, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def _running_ids(self) -> list[str]:
        raise NotImplementedError

    def _timeout(self, job: JobRecord) -> float:
        # the claiming worker's own timeout (it sets its heartbeat cadence), else ours
        return float(job.get("heartbeat_timeout") or self.heartbeat_timeout)

    def _stale(self, job: JobRecord) -> bool:
        return time.time() - (job.get("heartbeat") or job.get("started") or 0) > self._timeout(job)

    def _stale_failure(self, job: JobRecord) -> JobRecord:
        return {"status": "failed", "finished": time.time(),
                "error": f"worker {job.get('worker') or '?'} stopped responding (no heartbeat for "
                         f"{self._timeout(job):g} s); the job did not finish"}

    # job transitions, the same for every queue: each is an ``update`` of the record
    # (each returns False when the job was already final: the caller's claim on it has ended)
    def heartbeat(self, job_id: str) -> bool:
        return self.update(job_id)

    def finish(self, job_id: str, result: dict[str, Any]) -> bool:
        return self.update(job_id, status="done", result=result, finished=time.time())

    def fail(self, job_id: str, error: str, result: dict[str, Any] | None = None) -> bool:
        return self.update(job_id, status="failed", error=error, finished=time.time(),
                           **({"result": result} if result is not None else {}))

    # idempotency keys (``Idempotency-Key`` on POST /api/runs/<run>/points): a request sent again with
    # the key of one answered 202 (or whose answer was lost) gets the same job, never a second one
    def submit_once(self, run: str, kind: str, payload: JobPayload, key: str,
                    run_key: str | None = None) -> tuple[str, bool]:
        """``submit`` under an idempotency key: (job id, True) when the key's earlier request made a
        job that stands (queued, running or final), else a new job bound to the key (False). Raises
        ``KeyReused`` for a key bound to another request, ``KeyInFlight`` while the key's first
        request is still being submitted."""
        raise NotImplementedError

    def replay(self, key: str, fingerprint: str) -> str | None:
        """The job ``submit_once`` would answer with again for ``key`` (None: it would submit anew);
        read-only, for a request refused before it reaches the queue (no worker serves its run)."""
        raise NotImplementedError

    def _standing(self, bound: KeyBinding | None, fingerprint: str, job: JobRecord | None) -> str | None:
        """Of a key's binding ``{"job", "fp"}`` and its job: the job id to answer with again, or None
        (no binding, the job expired, or it was refused: its client was answered 503)."""
        if bound is None:
            return None
        if bound["fp"] != fingerprint:
            raise KeyReused()
        if job is None or job.get("refused"):
            return None
        if self._unconfirmed(job):
            if time.time() - float(job.get("created") or 0) < CONFIRM_WAIT:
                raise KeyInFlight()
            return None  # never confirmed: it never runs (its submitter crashed, or Redis went away)
        return str(bound["job"])

    def _unconfirmed(self, job: JobRecord) -> bool:
        """A queued job whose submission was not confirmed (scale-out only: ``sent``)."""
        return False

    # cancelling: a queued job is never run; a running one is asked to stop (its worker checks
    # ``cancel_requested`` between tokens and ends it with ``mark_cancelled``, keeping what it made)
    @staticmethod
    def _cancelled(job: JobRecord) -> JobRecord | None:
        if job["status"] == "queued":
            return {**job, "status": "cancelled", "finished": time.time()}
        if job["status"] == "running" and not job.get("cancel_requested"):
            return {**job, "cancel_requested": True}
        return None

    # worker liveness: each worker beats a record {runs, status (starting|ready|gone), beat, timeout,
    # reason} under its id; ``llm-maps serve``'s supervisor marks one it saw die as gone, with the
    # reason, at once; /api/health reads ``run_liveness``
    def register_worker(self, worker_id: str, runs: Iterable[str], status: str = "ready",
                        broken: dict[str, str] | None = None) -> None:
        """Record that ``worker_id`` serves ``runs`` (run ids) and is alive now; ``broken``: runs it
        cannot serve, with the reason."""
        self._set_worker(worker_id, {"runs": sorted(runs), "status": status, "beat": time.time(),
                                     "reason": None, "timeout": self.heartbeat_timeout,
                                     **({"broken": dict(broken)} if broken else {})})

    def worker_gone(self, worker_id: str, reason: str) -> None:
        """Mark a worker dead (it exited, was killed) so health stops counting it at once."""
        old = self.workers().get(worker_id) or {"runs": []}
        self._set_worker(worker_id, {**old, "status": "gone", "reason": reason, "beat": old.get("beat"),
                                     "gone": time.time()})

    def run_liveness(self, runs: Iterable[str]) -> dict[str, dict[str, Any]]:
        """For each run id: ``{"live": bool, "workers": [ids], "reason": str | None}``. A worker is live
        when it beat within the heartbeat timeout and has not been marked gone."""
        now, records = time.time(), self.workers()
        out: dict[str, dict[str, Any]] = {}
        for run in runs:
            mine = {w: r for w, r in records.items() if run in (r.get("runs") or ())}
            # each worker's own timeout (it sets its beat cadence), else ours
            live = [w for w, r in mine.items() if r.get("status") != "gone"
                    and now - float(r.get("beat") or 0) <= float(r.get("timeout") or self.heartbeat_timeout)]
            ready = [w for w in live if mine[w].get("status") == "ready"]
            broken = {w: (mine[w].get("broken") or {}).get(run) for w in ready}
            reason = None
            if ready and all(broken.values()):  # loaded, but its files do not fit its model
                reason = f"worker {ready[0]} cannot serve it: {broken[ready[0]]}"
                ready = []
            elif not ready:
                if live:
                    reason = f"worker {live[0]} is starting (loading the model)"
                elif not mine:
                    reason = "no worker has registered for this run"
                else:
                    last_id, last = max(mine.items(), key=lambda kv: float(kv[1].get("gone") or kv[1].get("beat") or 0))
                    reason = (f"worker {last_id} {last['reason']}" if last.get("status") == "gone" and last.get("reason")
                              else f"worker {last_id} stopped responding (no heartbeat for "
                                   f"{now - float(last.get('beat') or 0):.0f} s)")
            out[run] = {"live": bool(ready), "workers": [w for w in ready if not broken.get(w)], "reason": reason}
        return out

    def refusal(self, run: str) -> str | None:
        """Why a job for ``run`` would never run, or None when it will (now, or once a worker that is
        starting or restarting is ready): no worker serves the run (one that appeared after the
        workers started, before one picks it up), or every live worker that serves it cannot (its
        files do not fit its model). Said without worker ids or paths."""
        now = time.time()
        records = [r for r in self.workers().values() if run in (r.get("runs") or ())]
        if not records:
            return f"no worker serves run '{run}' yet"
        fresh = [r for r in records if r.get("status") != "gone"
                 and now - float(r.get("beat") or 0) <= float(r.get("timeout") or self.heartbeat_timeout)]
        reasons = [(r.get("broken") or {}).get(run) for r in fresh]
        if fresh and all(reasons):
            return f"run '{run}' cannot be served: {reasons[0]}"
        return None

    def fail_worker_jobs(self, worker_id: str, reason: str) -> int:
        """Fail the running jobs of a worker known to be dead (instead of waiting for the heartbeat
        timeout). Returns how many."""
        n = 0
        for job_id in self._running_ids():
            job = self.get(job_id)
            if job is not None and job["status"] == "running" and job.get("worker") == worker_id:
                self.update(job_id, status="failed", finished=time.time(), error=reason)
                n += 1
        return n

    @staticmethod
    def _prune_workers(records: dict[str, Any], keep: float = 3600.0) -> dict[str, Any]:
        now = time.time()
        return {w: r for w, r in records.items() if now - float(r.get("gone") or r.get("beat") or 0) < keep}

    def cancel_requested(self, job_id: str) -> bool:
        return bool((self.get(job_id) or {}).get("cancel_requested"))

    def mark_cancelled(self, job_id: str, partial: dict[str, Any] | None = None) -> None:
        self.update(job_id, status="cancelled", finished=time.time(),
                    **({"result": partial} if partial is not None else {}))


def _queue_prefix(run: str) -> str:
    """The key prefix of one run's queue in the embedded store: a fixed-length digest, so that one
    run's key range (diskcache pulls ``prefix-000..`` to ``prefix-999..``) never holds another's
    (with ``queue:<run>`` the range of run ``a`` held the jobs of run ``a-2``)."""
    return "q:" + hashlib.sha256(run.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def worker_name() -> str:
    """A worker's id in job records and the liveness registry: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _new_job(job_id: str, run: str, kind: str, payload: JobPayload, run_key: str | None = None) -> JobRecord:
    """``run_key`` (``runfolder.run_key``) names the very run the web process meant: a worker whose
    run of that id is another run fails the job instead of answering from the wrong map."""
    return {"id": job_id, "run": run, "kind": kind, "payload": payload, "status": "queued", "error": None,
            "result": None, "created": time.time(), "started": None, "finished": None, "heartbeat": None,
            "worker": None, "run_key": run_key}


class JobQueue(_Staleness):
    def __init__(self, directory: str | Path, *, max_queued: int | None = None,
                 heartbeat_timeout: float | None = None, job_timeout: float | None = None,
                 retention: float | None = None):
        import diskcache

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # every value stays inside SQLite (never moved to a side file, which a reader could miss
        # between the lookup and the open): a record is replaced atomically, readable at any moment
        self.cache = diskcache.Cache(str(self.directory / "jobs"), timeout=60, eviction_policy="none",
                                     disk_min_file_size=2**40)
        self.max_queued = int(max_queued or DEFAULTS["max_queued"])
        self.max_queued_total = max(self.max_queued, int(DEFAULTS["max_queued_total"]))
        self.heartbeat_timeout = float(heartbeat_timeout or DEFAULTS["heartbeat_timeout"])
        self.job_timeout = float(job_timeout or DEFAULTS["job_timeout"])
        self.retention = float(retention or DEFAULTS["retention"])

    # ------------------------------------------------------------------ web side
    def submit(self, run: str, kind: str, payload: JobPayload, run_key: str | None = None) -> str:
        """Queue a job. Each run has its own bound (``max_queued``), so one run's jobs that nobody
        serves never starve the others; ``max_queued_total`` bounds all runs together."""
        with self.cache.transact():
            return self._enqueue(run, kind, payload, run_key)

    def _enqueue(self, run: str, kind: str, payload: JobPayload, run_key: str | None) -> str:
        mine, waiting = self._count_waiting(run), self._count_waiting()
        if mine >= self.max_queued:
            raise QueueFull(mine, retry_after=max(1, int(self.heartbeat_timeout // 4)), run=run)
        if waiting >= self.max_queued_total:
            raise QueueFull(waiting, retry_after=max(1, int(self.heartbeat_timeout // 4)))
        job_id = uuid.uuid4().hex
        self.cache.set(f"job:{job_id}", _new_job(job_id, run, kind, payload, run_key), expire=self.retention)
        self.cache.push(job_id, prefix=_queue_prefix(run), side="back")
        self._count(run, 1)
        return job_id

    def submit_once(self, run: str, kind: str, payload: JobPayload, key: str,
                    run_key: str | None = None) -> tuple[str, bool]:
        fingerprint = request_fingerprint(run, kind, payload)
        with self.cache.transact():  # the key's lookup and its new job in one transaction
            again = self.replay(key, fingerprint)
            if again is not None:
                return again, True
            job_id = self._enqueue(run, kind, payload, run_key)
            binding: KeyBinding = {"job": job_id, "fp": fingerprint}
            self.cache.set(f"key:{_key_digest(key)}", binding, expire=self.retention)
        return job_id, False

    def replay(self, key: str, fingerprint: str) -> str | None:
        bound = self.cache.get(f"key:{_key_digest(key)}")
        return self._standing(bound, fingerprint, self.cache.get(f"job:{bound['job']}") if bound else None)

    def _count_waiting(self, run: str | None = None) -> int:
        return max(0, int(self.cache.get("waiting" if run is None else f"waiting:{_queue_prefix(run)}", 0)))

    def _count(self, run: str, step: int) -> None:
        """Move the waiting counts (all runs, and ``run``'s) by ``step`` (inside a transaction)."""
        self.cache.incr("waiting", step, default=0)
        self.cache.incr(f"waiting:{_queue_prefix(run)}", step, default=0)

    def get(self, job_id: str) -> JobRecord | None:
        job: JobRecord | None = self.cache.get(f"job:{job_id}", retry=True)
        if job is not None and job["status"] == "running" and self._stale(job):
            self._fail_stale(job_id)
            job = self.cache.get(f"job:{job_id}")
        return job

    def _fail_stale(self, job_id: str) -> None:
        with self.cache.transact():
            job = self.cache.get(f"job:{job_id}")
            if job is None or job["status"] != "running" or not self._stale(job):
                return
            job.update(self._stale_failure(job))
            self.cache.set(f"job:{job_id}", job, expire=self.retention)

    def reap(self) -> int:
        """Fail every running job whose worker stopped heart-beating. Returns how many.

        Looks only at the index of running jobs, never at every stored job."""
        n = 0
        for job_id in list(self.cache.get("running", ())):
            job = self.cache.get(f"job:{job_id}")
            if job is None or job["status"] != "running":
                self._untrack(job_id)
            elif self._stale(job):
                self._fail_stale(job_id)
                self._untrack(job_id)
                n += 1
        return n

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a job (see ``_cancelled``); returns its record, None when unknown."""
        with self.cache.transact():
            job: JobRecord | None = self.cache.get(f"job:{job_id}")
            if job is None:
                return None
            new = self._cancelled(job)
            if new is None:
                return job
            if new["status"] == "cancelled":  # a queued job: its place in the queue is free now
                new["slot_freed"] = True
                self._count(job["run"], -1)
            self.cache.set(f"job:{job_id}", new, expire=self.retention)
            return new

    def _untrack(self, job_id: str) -> None:
        with self.cache.transact():
            running = set(self.cache.get("running", ()))
            running.discard(job_id)
            self.cache.set("running", running)

    # ------------------------------------------------------------------ worker side
    def _running_ids(self) -> list[str]:
        return list(self.cache.get("running", ()))

    def workers(self) -> dict[str, Any]:
        return dict(self.cache.get("workers", {}))

    def _set_worker(self, worker_id: str, record: dict[str, Any]) -> None:
        with self.cache.transact():
            records = self._prune_workers(dict(self.cache.get("workers", {})))
            records[worker_id] = record
            self.cache.set("workers", records)

    def claim(self, runs: Iterable[str], worker: str) -> JobRecord | None:
        """Pop the oldest queued job of any of ``runs`` (run ids, matched exactly) and mark it running,
        in one transaction (ids of expired or cancelled jobs on the way are dropped)."""
        for run in runs:
            self._migrate_legacy(run)
            with self.cache.transact():
                while True:
                    _, job_id = self.cache.pull(prefix=_queue_prefix(run), side="front")
                    if job_id is None:
                        break
                    job = self.cache.get(f"job:{job_id}")
                    if not (job or {}).get("slot_freed"):
                        self._count((job or {}).get("run", run), -1)
                    if job is None or job["status"] != "queued":
                        continue
                    job = cast(JobRecord, job)
                    if job["run"] != run:  # never run one run's job on another: back to its own queue
                        self.cache.push(job_id, prefix=_queue_prefix(job["run"]), side="front")
                        self._count(job["run"], 1)
                        continue
                    now = time.time()
                    job.update({"status": "running", "started": now, "heartbeat": now, "worker": worker,
                                "heartbeat_timeout": self.heartbeat_timeout})
                    self.cache.set(f"job:{job_id}", job, expire=self.retention)
                    self.cache.set("running", set(self.cache.get("running", ())) | {job_id})
                    return job
        return None

    def _migrate_legacy(self, run: str) -> None:
        """Jobs queued by an older version under ``queue:<run>`` (a key range that also held the
        jobs of ``<run>-2`` etc.) move to their own run's queue, in order."""
        legacy = f"queue:{run}"
        with self.cache.transact():
            while True:
                _, job_id = self.cache.pull(prefix=legacy, side="front")
                if job_id is None:
                    return
                job = self.cache.get(f"job:{job_id}")
                self.cache.push(job_id, prefix=_queue_prefix(job["run"] if job else run), side="back")
                self.cache.incr(f"waiting:{_queue_prefix(job['run'] if job else run)}", 1, default=0)  # counted per run now

    def update(self, job_id: str, **fields: Any) -> bool:
        with self.cache.transact():
            job = self.cache.get(f"job:{job_id}")
            if job is None or job["status"] in FINAL:
                return False
            if job["status"] == "queued" and fields.get("status") in FINAL:  # ended before a worker took it
                fields = {**fields, "slot_freed": True}  # (e.g. its run was removed): its place is free
                self._count(job["run"], -1)
            job.update(fields)
            job["heartbeat"] = time.time()
            self.cache.set(f"job:{job_id}", job, expire=self.retention)
            if job["status"] in FINAL:
                self._untrack(job_id)  # (a nested transaction: the same one)
            return True

    def close(self) -> None:
        self.cache.close()


class _CommittedPoints:
    """What both point stores share: a job's point is kept ``pending`` (``keep_pending``) before the
    job is marked done and ``commit``-ted after, and a pending point is shown only once its job is
    done, so that the point and the job's "done" appear together whatever happens between the two
    writes: a reader that finds a pending point of a done job commits it (its worker died after
    marking it done), one of a failed or cancelled job removes it (its worker died, or froze, before;
    the job was failed without it); one of a job still running, or unknown, is not shown."""

    def __init__(self, jobs: Any = None):
        self._jobs = jobs  # the queue of the same state (``get(job_id)``); opened when first needed

    def add(self, run: str, point: PointRecord) -> None:
        raise NotImplementedError

    def delete(self, run: str, point_id: str) -> bool:
        raise NotImplementedError

    def _job_queue(self) -> Any:
        raise NotImplementedError

    def keep_pending(self, run: str, point: PointRecord) -> None:
        self.add(run, cast(PointRecord, {**point, "pending": True}))

    def commit(self, run: str, point: PointRecord) -> PointRecord:
        """Keep ``point`` as done (without ``pending``); returns what was kept."""
        kept = cast(PointRecord, {k: v for k, v in point.items() if k != "pending"})
        self.add(run, kept)
        return kept

    def _settled(self, run: str, points: list[PointRecord]) -> list[PointRecord]:
        """``points`` as readers see them: pending ones shown only once their job is done."""
        if not any(p.get("pending") for p in points):
            return points
        if self._jobs is None:
            self._jobs = self._job_queue()
        out = []
        for point in points:
            if point.get("pending"):
                status = (self._jobs.get(str(point.get("id"))) or {}).get("status")
                if status == "done":
                    point = self.commit(run, point)
                elif status in FINAL:
                    self.delete(run, str(point.get("id")))
                    continue
                else:
                    continue
            out.append(point)
        return out


class PointStore(_CommittedPoints):
    """User points of each run in their own JSONL file (``points/<run>.jsonl``), never in the run."""

    def __init__(self, directory: str | Path, jobs: Any = None):
        super().__init__(jobs)
        self.state = Path(directory)
        self.directory = Path(directory) / "points"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[tuple[int, int, int], list[PointRecord], dict[str, PointRecord]]] = {}  # run -> (file stamp, points, {id: point}): parsed once per change

    def _path(self, run: str) -> Path:
        if "/" in run or run.startswith("."):
            raise LLMMapsError(f"bad run name '{run}'")
        return self.directory / f"{run}.jsonl"

    @contextmanager
    def _locked(self, run: str) -> Iterator[None]:
        with open(self.directory / f".{run}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, run: str, point: PointRecord) -> None:
        """Keep ``point`` (appended: one of the same id, a job run again after its worker died,
        replaces the earlier one where it stood, as ``_read`` reads them)."""
        with self._locked(run), open(self._path(run), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(point, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _rewrite(self, run: str, points: list[PointRecord]) -> None:
        tmp = self._path(run).with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in points), encoding="utf-8")
        os.replace(tmp, self._path(run))

    def _read(self, run: str) -> tuple[list[PointRecord], dict[str, PointRecord]]:
        """The run's points and an index by id, parsed again only when the file changed (its size,
        mtime or inode: appends and the replace of a delete both change one)."""
        path = self._path(run)
        try:
            st = path.stat()
        except FileNotFoundError:
            return [], {}
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._index.get(run)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        by_id: dict[str, PointRecord] = {}  # a later line of an id replaces the earlier one in its place
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    point = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash: skip it, keep the rest
                by_id[str(point.get("id"))] = point
        out = list(by_id.values())
        self._index[run] = (stamp, out, by_id)
        return out, by_id

    def _job_queue(self) -> "JobQueue":
        return JobQueue(self.state)

    def list(self, run: str) -> list[PointRecord]:
        return self._settled(run, list(self._read(run)[0]))

    def get(self, run: str, point_id: str) -> PointRecord | None:
        point = self._read(run)[1].get(point_id)
        shown = self._settled(run, [point]) if point else []
        return shown[0] if shown else None

    def delete(self, run: str, point_id: str) -> bool:
        with self._locked(run):
            points = self._read(run)[0]
            keep = [p for p in points if p.get("id") != point_id]
            if len(keep) == len(points):
                return False
            self._rewrite(run, keep)
            return True


# ---------------------------------------------------------------------------------- scale-out
# REDIS_URL set: job records live in Redis and jobs reach the workers as Celery tasks sent *by
# name* (the web process never imports the task code, which imports torch).

TASK_RUN_JOB = "llm_maps.run_job"
TASK_ENCODE_CHUNK = "llm_maps.encode_chunk"
TASK_SCORE_CHUNK = "llm_maps.score_chunk"
TASK_VIEWS_CHUNK = "llm_maps.views_chunk"
BUILD_QUEUE = "llm-maps.build"
_APPS: dict[str, Any] = {}


def redis_url() -> str | None:
    return os.environ.get("REDIS_URL") or None


def run_queue_name(run: str) -> str:
    """The Celery queue of one run's jobs (workers consume the queues of the runs they serve)."""
    return f"llm-maps.run.{run}"


def celery_app(url: str | None = None) -> Any:
    """The Celery app on ``url`` (default REDIS_URL): Redis as broker and result backend, one task at
    a time per worker, nothing prefetched (a killed worker holds no queued job), acked on receipt."""
    url = url or redis_url()
    if not url:
        raise LLMMapsError("REDIS_URL is not set")
    app = _APPS.get(url)
    if app is None:
        from celery import Celery

        app = Celery("llm_maps", broker=url, backend=url, set_as_current=False)
        app.conf.update(
            task_serializer="json", result_serializer="json", accept_content=["json"],
            task_acks_late=False, worker_prefetch_multiplier=1, worker_disable_prefetch=True,
            task_default_queue="llm-maps", result_expires=int(DEFAULTS["retention"]),
            broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
            # acks-late tasks (build chunks) of a killed worker come back after this many seconds
            broker_transport_options={"visibility_timeout": int(os.environ.get("LLM_MAPS_VISIBILITY_TIMEOUT", 900))},
        )
        _APPS[url] = app
    return app


def _unavailable_when_redis_is(cls: Any) -> Any:
    """Every public method of ``cls`` raises ``QueueUnavailable`` (answered 503 + Retry-After) when
    the Redis server cannot be reached, instead of redis-py's connection errors (a 500); redis-py
    reconnects by itself once the server is back."""
    import functools

    def guard(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            import redis

            try:
                return method(*args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                raise QueueUnavailable(f"Redis: {type(exc).__name__}") from None
        return guarded

    for name in dir(cls):  # its own methods and those of _Staleness
        value = getattr(cls, name)
        if not name.startswith("_") and callable(value) and not isinstance(vars(cls).get(name), staticmethod):
            setattr(cls, name, guard(value))
    return cls


@_unavailable_when_redis_is
class RedisJobQueue(_Staleness):
    """``JobQueue``'s interface on Redis: records as JSON (expiring after ``retention``), a sorted
    set of waiting ids (bounded), a set of running ids (for the reaper); each submitted job is sent
    as a Celery task to its run's queue and claimed by id (``claim_id``) by whichever worker gets it."""

    def __init__(self, url: str | None = None, *, max_queued: int | None = None,
                 heartbeat_timeout: float | None = None, job_timeout: float | None = None,
                 retention: float | None = None, prefix: str = "llm-maps"):
        import redis

        self.url = url or redis_url()
        if not self.url:
            raise LLMMapsError("REDIS_URL is not set")
        self.redis = redis.Redis.from_url(self.url)
        self.max_queued = int(max_queued or DEFAULTS["max_queued"])
        self.max_queued_total = max(self.max_queued, int(DEFAULTS["max_queued_total"]))
        self.heartbeat_timeout = float(heartbeat_timeout or DEFAULTS["heartbeat_timeout"])
        self.job_timeout = float(job_timeout or DEFAULTS["job_timeout"])
        self.retention = float(retention or DEFAULTS["retention"])
        self.prefix = prefix
        self._waiting, self._running = f"{prefix}:waiting", f"{prefix}:running"

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _waiting_of(self, run: str) -> str:
        return f"{self.prefix}:waiting:{_queue_prefix(run)}"

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.retention * 1000))

    def _modify(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Read-modify-write one record atomically (optimistic WATCH). ``change(job)`` returns the new
        record, or None to leave it alone. Returns the new record or None. A write whose reply was
        lost (the connection dropped while it was read: redis-py raises WatchError, and this tries
        again) is found in place and counts as done, not as a job changed meanwhile (a worker's
        ``finish`` would otherwise read its own "done" as fenced and drop the point)."""
        import redis

        key = self._key(job_id)
        written: bytes | None = None
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]  # (redis-py leaves it unannotated)
                    raw = pipe.get(key)
                    if written is not None and raw == written:
                        pipe.unwatch()
                        return cast(JobRecord, json.loads(raw))
                    job = json.loads(raw) if raw else None
                    new = change(job) if job is not None else None
                    if new is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    written = self._put(pipe, job_id, new)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    # ------------------------------------------------------------------ web side
    def _put(self, pipe: Any, job_id: str, new: JobRecord) -> bytes:
        """Queue (in ``pipe``'s transaction) the write of a job's record and of the indexes its status
        puts it in (running: the running set; final: out of every index). Returns the bytes written."""
        written = json.dumps(new).encode()
        pipe.set(self._key(job_id), written, px=self._ttl_ms)
        if new["status"] == "running" or new["status"] in FINAL:
            pipe.zrem(self._waiting, job_id)
            pipe.zrem(self._waiting_of(new["run"]), job_id)
            (pipe.sadd if new["status"] == "running" else pipe.srem)(self._running, job_id)
        return written

    # (Redis errors become QueueUnavailable in every public method: _unavailable_when_redis_is)
    def submit(self, run: str, kind: str, payload: JobPayload, run_key: str | None = None) -> str:
        return self._submit(run, kind, payload, run_key)[0]

    def submit_once(self, run: str, kind: str, payload: JobPayload, key: str,
                    run_key: str | None = None) -> tuple[str, bool]:
        return self._submit(run, kind, payload, run_key, key)

    def _bound_key(self, key: str) -> str:
        return f"{self.prefix}:key:{_key_digest(key)}"

    def replay(self, key: str, fingerprint: str) -> str | None:
        raw = self.redis.get(self._bound_key(key))
        bound = json.loads(raw) if raw else None
        return self._standing(bound, fingerprint, self.get(bound["job"]) if bound else None)

    def _unconfirmed(self, job: JobRecord) -> bool:
        return job["status"] == "queued" and not job.get("sent")

    def _refuse(self, job_id: str, error: str) -> None:
        """Fail a job whose client is answered 503 (``refused``: its idempotency key, sent again,
        makes a new job), best effort: Redis may be gone, and a job never confirmed never runs anyway."""
        try:
            self.update(job_id, status="failed", error=error, finished=time.time(), refused=True)
        except QueueUnavailable:
            pass

    def _submit(self, run: str, kind: str, payload: JobPayload, run_key: str | None = None,
                key: str | None = None) -> tuple[str, bool]:
        import redis

        job_id = uuid.uuid4().hex
        job = _new_job(job_id, run, kind, payload, run_key)
        fingerprint = request_fingerprint(run, kind, payload) if key is not None else ""
        bound_key = self._bound_key(key) if key is not None else None
        mine_key = self._waiting_of(run)
        for k in (self._waiting, mine_key):
            self.redis.zremrangebyscore(k, "-inf", time.time() - self.retention)
        retry = max(1, int(self.heartbeat_timeout // 4))
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self._waiting, mine_key, *([bound_key] if bound_key else []))  # type: ignore[no-untyped-call]
                    stale = None  # the key's earlier job, never confirmed: refused in the same transaction
                    if bound_key:
                        raw = pipe.get(bound_key)
                        bound = json.loads(raw) if raw else None
                        if bound and bound.get("job") == job_id:
                            # this very transaction landed, and its reply was lost (redis-py then
                            # raises WatchError, not ConnectionError): the job is made; go on
                            pipe.unwatch()
                            break
                        earlier = None
                        if bound:
                            pipe.watch(self._key(bound["job"]))  # type: ignore[no-untyped-call]
                            got = pipe.get(self._key(bound["job"]))
                            earlier = json.loads(got) if got else None
                        again = self._standing(bound, fingerprint, earlier)
                        if again is not None:
                            pipe.unwatch()
                            return again, True
                        if earlier is not None and self._unconfirmed(earlier):
                            stale = earlier
                    mine, waiting = int(pipe.zcard(mine_key)), int(pipe.zcard(self._waiting))
                    if stale is not None and pipe.zscore(self._waiting, stale["id"]) is not None:
                        waiting -= 1  # the stale job gives its place to this one
                        mine -= stale["run"] == run
                    if mine >= self.max_queued or waiting >= self.max_queued_total:
                        pipe.unwatch()
                        raise (QueueFull(mine, retry, run=run) if mine >= self.max_queued else QueueFull(waiting, retry))
                    pipe.multi()
                    if stale is not None:
                        self._put(pipe, stale["id"], self._never_confirmed(stale))
                    pipe.set(self._key(job_id), json.dumps(job), px=self._ttl_ms)
                    pipe.zadd(self._waiting, {job_id: job["created"]})
                    pipe.zadd(mine_key, {job_id: job["created"]})
                    if bound_key:
                        binding: KeyBinding = {"job": job_id, "fp": fingerprint}
                        pipe.set(bound_key, json.dumps(binding), px=self._ttl_ms)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        try:
            celery_app(self.url).send_task(TASK_RUN_JOB, args=[job_id], queue=run_queue_name(run))
        except Exception as exc:  # noqa: BLE001 - the broker refused: never leave a job queued forever
            self._refuse(job_id, f"could not queue the job ({type(exc).__name__})")
            raise QueueUnavailable(f"broker: {type(exc).__name__}") from None
        # confirmed (``sent``, while still queued) before the client is told 202: a worker runs only a
        # confirmed job (``claim_id`` waits a moment for it), and only a confirmed job's task is sent
        # again (``resend_queued``), so a job whose client was told 503 never runs, even where its
        # task reached the broker (Redis gone before its reply, or before this mark). The one case
        # left: Redis took the mark and its reply was lost; the client, told 503, that sends its
        # request again with the same Idempotency-Key gets this job (``_standing``).
        try:
            confirmed = self._modify(job_id, lambda j: {**j, "sent": True} if j["status"] == "queued" else None)
            if confirmed is None:  # not queued any more: a lost reply of our mark, then a worker ran it
                confirmed = self.get(job_id) or {}  # (or failed, unconfirmed, by a worker)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._refuse(job_id, "its submission could not be confirmed (Redis unreachable); it was refused")
            raise QueueUnavailable(f"Redis: {type(exc).__name__}") from None
        if not confirmed.get("sent"):  # failed meanwhile by a worker that waited for the confirmation in vain
            raise QueueUnavailable("the job could not be confirmed in time")
        return job_id, False

    @staticmethod
    def _never_confirmed(job: JobRecord) -> JobRecord:
        return cast(JobRecord, {**job, "status": "failed", "finished": time.time(), "refused": True,
                                "error": "its submission was never confirmed (the web process answered 503)"})

    def _refuse_unconfirmed(self, job_id: str) -> JobRecord | None:
        """Fail the job if it is still unconfirmed (``_never_confirmed``); None when it is not (any more)."""
        return self._modify(job_id, lambda j: self._never_confirmed(j) if self._unconfirmed(j) else None)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.get(self._key(job_id))
        job = json.loads(raw) if raw else None
        if job is not None and job["status"] == "running" and self._stale(job):
            job = self._modify(job_id, lambda j: {**j, **self._stale_failure(j)}
                               if j["status"] == "running" and self._stale(j) else None) or self.get(job_id)
        return job

    def reap(self) -> int:
        """Fail every running job whose worker stopped heart-beating. Returns how many."""
        n = 0
        for raw_id in self.redis.smembers(self._running):
            job_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            raw = self.redis.get(self._key(job_id))
            job = json.loads(raw) if raw else None
            if job is None or job["status"] != "running":
                self.redis.srem(self._running, job_id)
            elif self._stale(job) and (self.get(job_id) or {}).get("status") == "failed":
                n += 1
        return n

    def _running_ids(self) -> list[str]:
        return [i.decode() if isinstance(i, bytes) else i for i in self.redis.smembers(self._running)]

    def workers(self) -> dict[str, Any]:
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
                for k, v in self.redis.hgetall(f"{self.prefix}:workers").items()}

    def _set_worker(self, worker_id: str, record: dict[str, Any]) -> None:
        key = f"{self.prefix}:workers"
        stale = set(self.workers()) - set(self._prune_workers(self.workers()))
        with self.redis.pipeline() as pipe:
            if stale:
                pipe.hdel(key, *stale)
            pipe.hset(key, worker_id, json.dumps(record))
            pipe.execute()

    # ------------------------------------------------------------------ worker side
    def claim_id(self, job_id: str, worker: str, confirm_wait: float = CONFIRM_WAIT) -> JobRecord | None:
        """Mark a queued, confirmed job running for ``worker``; None when it is not queued (expired,
        already claimed by a redelivered message, failed). A job not confirmed yet (its task can
        arrive before the web process marks it ``sent``) is waited for up to ``confirm_wait`` s, then
        failed: its client was answered 503 (``_submit``)."""
        def change(job: JobRecord) -> JobRecord | None:
            if job["status"] != "queued" or not job.get("sent"):
                return None
            now = time.time()
            return {**job, "status": "running", "started": now, "heartbeat": now, "worker": worker,
                    "heartbeat_timeout": self.heartbeat_timeout}

        deadline = time.time() + confirm_wait
        while True:
            job = self._modify(job_id, change)
            if job is not None:
                return job
            current = self.get(job_id)
            if current is not None and current["status"] == "queued":
                # (confirmed meanwhile, so not refused: claimed on the next turn)
                if time.time() < deadline or self._refuse_unconfirmed(job_id) is None:
                    time.sleep(0.02)
                    continue
            self.redis.zrem(self._waiting, job_id)
            return None

    def resend_queued(self, runs: Iterable[str]) -> int:
        """Send the task of every job of ``runs`` still queued again (confirmed ones only: never one
        whose client was told 503); returns how many. A worker calls it when it starts: a
        task it had received but not yet claimed when it stopped (killed, or restarted after a Redis
        outage) is gone with it, and its job would wait forever. A task sent twice runs once
        (``claim_id`` skips a job that is no longer queued). A job left unconfirmed for longer than
        ``CONFIRM_WAIT`` (its client was answered 503) is failed, giving back its place in the queue."""
        n = 0
        for run in runs:
            for raw_id in self.redis.zrange(self._waiting_of(run), 0, -1):
                job_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                job = self.get(job_id)
                if job is None or job["status"] != "queued":
                    continue
                if job.get("sent"):
                    celery_app(self.url).send_task(TASK_RUN_JOB, args=[job_id], queue=run_queue_name(run))
                    n += 1
                elif time.time() - float(job.get("created") or 0) >= CONFIRM_WAIT:
                    self._refuse_unconfirmed(job_id)
        return n

    def update(self, job_id: str, **fields: Any) -> bool:
        return self._modify(job_id, lambda job: None if job["status"] in FINAL
                            else cast(JobRecord, {**job, **fields, "heartbeat": time.time()})) is not None

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a job (see ``_cancelled``); returns its record, None when unknown."""
        return self._modify(job_id, self._cancelled) or self.get(job_id)

    def close(self) -> None:
        self.redis.close()


@_unavailable_when_redis_is
class RedisPointStore(_CommittedPoints):
    """``PointStore``'s interface in Redis (REDIS_URL): every web process and worker, on any machine,
    sees the same points. No expiry; durable as far as the Redis server persists (RDB/AOF)."""

    def __init__(self, url: str | None = None, *, prefix: str = "llm-maps", jobs: Any = None):
        import redis

        super().__init__(jobs)
        url = url or redis_url()
        if not url:
            raise LLMMapsError("REDIS_URL is not set")
        self.url = url
        self.redis = redis.Redis.from_url(url)
        self.prefix = prefix

    def _job_queue(self) -> "RedisJobQueue":
        return RedisJobQueue(self.url, prefix=self.prefix)

    def _keys(self, run: str) -> tuple[str, str]:
        if "/" in run or run.startswith("."):
            raise LLMMapsError(f"bad run name '{run}'")
        return f"{self.prefix}:points:{run}", f"{self.prefix}:points-order:{run}"

    def add(self, run: str, point: PointRecord) -> None:
        data, order = self._keys(run)
        with self.redis.pipeline() as pipe:  # MULTI/EXEC: both or neither
            pipe.hset(data, point["id"], json.dumps(point, ensure_ascii=False))
            pipe.zadd(order, {point["id"]: float(point.get("created") or time.time())})
            pipe.execute()

    def list(self, run: str) -> list[PointRecord]:
        data, order = self._keys(run)
        ids = self.redis.zrange(order, 0, -1)
        if not ids:
            return []
        return self._settled(run, [json.loads(raw) for raw in self.redis.hmget(data, cast(Any, ids)) if raw])

    def get(self, run: str, point_id: str) -> PointRecord | None:
        raw = self.redis.hget(self._keys(run)[0], point_id)
        shown = self._settled(run, [json.loads(raw)]) if raw else []
        return shown[0] if shown else None

    def delete(self, run: str, point_id: str) -> bool:
        data, order = self._keys(run)
        with self.redis.pipeline() as pipe:
            pipe.hdel(data, point_id)
            pipe.zrem(order, point_id)
            removed, _ = pipe.execute()
        return bool(removed)


def make_queue(state_dir: str | Path, **kwargs: Any) -> "JobQueue | RedisJobQueue":
    """The job queue to use: ``RedisJobQueue`` when REDIS_URL is set, else the embedded ``JobQueue``."""
    return RedisJobQueue(**kwargs) if redis_url() else JobQueue(state_dir, **kwargs)


def make_points(state_dir: str | Path, jobs: Any = None) -> "PointStore | RedisPointStore":
    """Where user points live: Redis when REDIS_URL is set, else ``state_dir/points/<run>.jsonl``;
    ``jobs``: the queue of the same state, when the caller has one open."""
    return RedisPointStore(jobs=jobs) if redis_url() else PointStore(state_dir, jobs=jobs)


def read_background(state_dir: str | Path) -> dict[str, Any] | None:
    """STATE/background.json (what a build beside the server is doing), or None when there is none
    or it cannot be read (it is being replaced: the next poll reads it)."""
    try:
        data = json.loads((Path(state_dir) / BACKGROUND_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
