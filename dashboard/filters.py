"""Pure filtering: which rows of a run the map and the table show."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from dashboard import regions_data as RD
from llm_maps.falloff import wilson_interval
from llm_maps.resample import MIN_TASKS_FOR_INTERVAL, task_mean_interval

SELECTION_BOOT = 2000  # task-bootstrap replicates of a selection's accuracy


@dataclass(frozen=True)
class Filters:
    split: tuple[str, ...] | None = None     # None = no constraint
    domain: tuple[str, ...] | None = None
    task: tuple[str, ...] | None = None
    score: tuple[float, float] | None = None
    dist: tuple[float, float] | None = None
    search: str = ""
    region: int | None = None  # a region of regions.json (dashboard/regions_data.py)

    @classmethod
    def make(cls, *, split=None, domain=None, task=None, score=None, dist=None, search=None,
             region=None) -> "Filters":
        def tup(v):
            return tuple(v) if v else None

        def rng(v):
            return (float(v[0]), float(v[1])) if v and len(v) == 2 and None not in v else None

        return cls(tup(split), tup(domain), tup(task), rng(score), rng(dist), (search or "").strip(),
                   RD.region_value(region))


def value_bounds(values: np.ndarray) -> tuple[float, float]:
    """The (min, max) a range slider over ``values`` offers (finite values; (0, 1) when none)."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    return (lo, hi + 1e-6) if hi <= lo else (lo, hi)


def active_range(value, bounds: tuple[float, float]):
    """A slider's range, or None when it spans all of ``bounds`` (no constraint: rows without a
    value stay in, e.g. unscored train rows)."""
    if not value or len(value) != 2 or None in value:
        return None
    lo, hi = float(value[0]), float(value[1])
    if abs(lo - bounds[0]) < 1e-12 and abs(hi - bounds[1]) < 1e-12:
        return None
    return [lo, hi]


def filter_mask(data, f: Filters, dist: np.ndarray | None = None) -> np.ndarray:
    """[N] bool of the rows passing every filter. A score or distance range drops rows without one."""
    mask = np.ones(data.n, dtype=bool)
    for column in ("split", "domain", "task"):
        wanted = getattr(f, column)
        if wanted is not None:
            cat = data.cats[column]
            mask &= np.isin(cat.codes, cat.codes_of(wanted))
    if f.score is not None:
        with np.errstate(invalid="ignore"):
            mask &= (data.score >= f.score[0]) & (data.score <= f.score[1])
    if f.dist is not None:
        d = data.dist if dist is None else dist
        with np.errstate(invalid="ignore"):
            mask &= (d >= f.dist[0]) & (d <= f.dist[1])
    if f.search:
        mask &= data.search_mask(f.search)
    if f.region is not None:
        mask &= RD.region_mask(data, f.region)
    return mask


def view_rows(x: np.ndarray, y: np.ndarray, rows: np.ndarray, *, max_points: int,
              xrange=None, yrange=None, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Rows to draw as points: those in the visible window, at most ``max_points`` (a fixed random
    sample when more, in row order). Returns (rows, sampled)."""
    if xrange is not None and yrange is not None:
        xs, ys = x[rows], y[rows]
        keep = (xs >= min(xrange)) & (xs <= max(xrange)) & (ys >= min(yrange)) & (ys <= max(yrange))
        rows = rows[keep]
    if len(rows) <= max_points:
        return rows, False
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(rows), size=max_points, replace=False))
    return rows[pick], True


def selection_summary(data, rows: np.ndarray, *, max_tasks: int = 8) -> dict:
    """Count, test accuracy with its Wilson interval (low, high) and its interval over the tasks of
    the scored test rows (task_low, task_high: a task bootstrap, seed 0, never narrower than Wilson's;
    None below MIN_TASKS_FOR_INTERVAL tasks; n_tasks_scored), and the most frequent tasks of some rows
    (n_tasks: of all of them)."""
    rows = np.asarray(rows, dtype=np.int64)
    cat = data.cats["correct"]
    codes = cat.codes[rows]
    k, wrong = int((codes == 1).sum()), int((codes == 2).sum())
    n = k + wrong
    low, high = wilson_interval(k, n) if n else (None, None)
    task = data.cats["task"]
    scored = (codes == 1) | (codes == 2)
    tlo = thi = None
    g = 0
    if n:
        _, tlo, thi, g = task_mean_interval((codes[scored] == 1).astype(float), task.codes[rows][scored],
                                            n_boot=SELECTION_BOOT, rng=np.random.default_rng(0), bounds=(0.0, 1.0),
                                            proportion=True)
    counts = np.bincount(task.codes[rows], minlength=len(task.names))
    order = np.argsort(-counts, kind="stable")
    tasks = [(task.names[i], int(counts[i])) for i in order[:max_tasks] if counts[i] > 0]
    return {"count": int(len(rows)), "train": int(data.is_train[rows].sum()), "scored": n, "correct": k,
            "accuracy": (k / n) if n else None, "low": low, "high": high, "task_low": tlo, "task_high": thi,
            "n_tasks_scored": g, "tasks": tasks, "n_tasks": int((counts > 0).sum())}


def accuracy_words(s: dict) -> str:
    """A selection's accuracy as the Map page says it: over tasks and Wilson's, or Wilson's alone
    with why (selection_summary's dict)."""
    if s["accuracy"] is None:
        return "no scored test points"
    g = s["n_tasks_scored"]
    on = f"on {s['scored']} scored test points in {g} task{'s' if g != 1 else ''}"
    if s["task_low"] is not None and s["task_high"] is not None:
        return (f"accuracy {s['accuracy']:.3f} [{s['task_low']:.3f}, {s['task_high']:.3f}] over tasks "
                f"([{s['low']:.3f}, {s['high']:.3f}] Wilson) {on}")
    return (f"accuracy {s['accuracy']:.3f} [{s['low']:.3f}, {s['high']:.3f}] Wilson over examples (too few tasks for "
            f"an interval over tasks: {MIN_TASKS_FOR_INTERVAL} needed) {on}")


def selected_rows(spec, n: int) -> np.ndarray:
    """The rows of a selection sent as a little-endian bitmask ({"bits": base64, "n": N}, as the
    WebGL map sends it; the inverse of the packing in ``search_hits``). A malformed mask or one for
    another number of rows selects nothing."""
    try:
        if int(spec.get("n", -1)) != n:
            return np.zeros(0, dtype=np.int64)
        bits = np.frombuffer(base64.b64decode(str(spec.get("bits", "")), validate=True), dtype=np.uint8)
    except (ValueError, TypeError, AttributeError):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.unpackbits(bits, bitorder="little")[:n]).astype(np.int64)


def search_hits(data, q: str) -> dict | None:
    """Rows whose prompt contains ``q``, as a little-endian bitmask (base64) the browser can read."""
    q = (q or "").strip()
    if not q:
        return None
    bits = np.packbits(data.search_mask(q), bitorder="little")
    return {"q": q, "bits": base64.b64encode(bits.tobytes()).decode("ascii")}
