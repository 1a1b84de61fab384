"""The job queue between the web process and workers, and the per-run store of user points.

Embedded default: a diskcache folder (SQLite, safe across processes) — no server to install.
Torch-free: the web process submits and reads jobs; ``llm-maps worker`` claims and runs them.

A job record: ``{id, run, kind, payload, status, error, result, created, started, finished,
heartbeat, worker}`` with ``status`` queued -> running -> done | failed. Claiming pops the id and
marks the job running in one transaction, so a job is never lost between the two. A running job
whose worker stops heart-beating (killed, crashed) is failed with a reason after
``heartbeat_timeout`` seconds — by whoever looks at it next (a reader or a worker).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .errors import LLMMapsError

DEFAULTS = {  # each overridable with LLM_MAPS_<NAME> in the environment, e.g. LLM_MAPS_MAX_QUEUED=200
    "max_queued": float(os.environ.get("LLM_MAPS_MAX_QUEUED", 64)),
    "heartbeat_timeout": float(os.environ.get("LLM_MAPS_HEARTBEAT_TIMEOUT", 20)),
    "job_timeout": float(os.environ.get("LLM_MAPS_JOB_TIMEOUT", 300)),
    "retention": float(os.environ.get("LLM_MAPS_RETENTION", 7 * 24 * 3600)),
}


class QueueFull(LLMMapsError):
    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"queue full ({queued} jobs waiting); retry later")
        self.retry_after = retry_after


def default_state_dir(run_dirs) -> Path:
    env = os.environ.get("LLM_MAPS_STATE")
    if env:
        return Path(env)
    first = next(iter(run_dirs), None)
    base = Path(first).resolve().parent if first is not None else Path.cwd() / "data" / "runs"
    return base / ".llm-maps-state"


class JobQueue:
    def __init__(self, directory: str | Path, *, max_queued: int | None = None,
                 heartbeat_timeout: float | None = None, job_timeout: float | None = None,
                 retention: float | None = None):
        import diskcache

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(str(self.directory / "jobs"), timeout=60, eviction_policy="none")
        self.max_queued = int(max_queued or DEFAULTS["max_queued"])
        self.heartbeat_timeout = float(heartbeat_timeout or DEFAULTS["heartbeat_timeout"])
        self.job_timeout = float(job_timeout or DEFAULTS["job_timeout"])
        self.retention = float(retention or DEFAULTS["retention"])

    # ------------------------------------------------------------------ web side
    def submit(self, run: str, kind: str, payload: dict) -> str:
        with self.cache.transact():
            waiting = self._count_waiting()
            if waiting >= self.max_queued:
                raise QueueFull(waiting, retry_after=max(1, int(self.heartbeat_timeout // 4)))
            job_id = uuid.uuid4().hex
            now = time.time()
            self.cache.set(f"job:{job_id}", {"id": job_id, "run": run, "kind": kind, "payload": payload,
                                             "status": "queued", "error": None, "result": None, "created": now,
                                             "started": None, "finished": None, "heartbeat": None, "worker": None},
                           expire=self.retention)
            self.cache.push(job_id, prefix=f"queue:{run}", side="back")
            self.cache.incr("waiting", 1, default=0)
        return job_id

    def _count_waiting(self) -> int:
        return int(self.cache.get("waiting", 0))

    def get(self, job_id: str) -> dict | None:
        job = self.cache.get(f"job:{job_id}")
        if job is not None and job["status"] == "running" and self._stale(job):
            self._fail_stale(job_id)
            job = self.cache.get(f"job:{job_id}")
        return job

    def _timeout(self, job: dict) -> float:
        # the claiming worker's own timeout (it sets its heartbeat cadence), else ours
        return float(job.get("heartbeat_timeout") or self.heartbeat_timeout)

    def _stale(self, job: dict) -> bool:
        return time.time() - (job.get("heartbeat") or job.get("started") or 0) > self._timeout(job)

    def _fail_stale(self, job_id: str) -> None:
        with self.cache.transact():
            job = self.cache.get(f"job:{job_id}")
            if job is None or job["status"] != "running" or not self._stale(job):
                return
            job.update(status="failed", finished=time.time(),
                       error=f"worker {job.get('worker') or '?'} stopped responding (no heartbeat for "
                             f"{self._timeout(job):g} s); the job did not finish")
            self.cache.set(f"job:{job_id}", job, expire=self.retention)

    def reap(self) -> int:
        """Fail every running job whose worker stopped heart-beating. Returns how many."""
        n = 0
        for key in list(self.cache.iterkeys()):
            if isinstance(key, str) and key.startswith("job:"):
                job = self.cache.get(key)
                if job and job["status"] == "running" and self._stale(job):
                    self._fail_stale(job["id"])
                    n += 1
        return n

    # ------------------------------------------------------------------ worker side
    def claim(self, runs, worker: str) -> dict | None:
        """Pop the oldest queued job of any of ``runs`` and mark it running, atomically."""
        for run in runs:
            with self.cache.transact():
                _, job_id = self.cache.pull(prefix=f"queue:{run}", side="front")
                if job_id is None:
                    continue
                self.cache.incr("waiting", -1, default=1)
                job = self.cache.get(f"job:{job_id}")
                if job is None or job["status"] != "queued":  # expired or cancelled
                    continue
                now = time.time()
                job.update(status="running", started=now, heartbeat=now, worker=worker,
                           heartbeat_timeout=self.heartbeat_timeout)
                self.cache.set(f"job:{job_id}", job, expire=self.retention)
                return job
        return None

    def update(self, job_id: str, **fields) -> None:
        with self.cache.transact():
            job = self.cache.get(f"job:{job_id}")
            if job is None:
                return
            job.update(fields)
            job["heartbeat"] = time.time()
            self.cache.set(f"job:{job_id}", job, expire=self.retention)

    def heartbeat(self, job_id: str) -> None:
        self.update(job_id)

    def finish(self, job_id: str, result: dict) -> None:
        self.update(job_id, status="done", result=result, finished=time.time())

    def fail(self, job_id: str, error: str, result: dict | None = None) -> None:
        self.update(job_id, status="failed", error=error, finished=time.time(),
                    **({"result": result} if result is not None else {}))

    def close(self) -> None:
        self.cache.close()


class PointStore:
    """User points of each run in their own JSONL file (``points/<run>.jsonl``), never in the run."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory) / "points"
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, run: str) -> Path:
        if "/" in run or run.startswith("."):
            raise LLMMapsError(f"bad run name '{run}'")
        return self.directory / f"{run}.jsonl"

    @contextmanager
    def _locked(self, run: str):
        with open(self.directory / f".{run}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, run: str, point: dict) -> None:
        with self._locked(run), open(self._path(run), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(point, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def list(self, run: str) -> list[dict]:
        path = self._path(run)
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash: skip it, keep the rest
        return out

    def delete(self, run: str, point_id: str) -> bool:
        with self._locked(run):
            points = self.list(run)
            keep = [p for p in points if p.get("id") != point_id]
            if len(keep) == len(points):
                return False
            tmp = self._path(run).with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in keep), encoding="utf-8")
            os.replace(tmp, self._path(run))
            return True
