"""Regions: where on the map the model fails, and whether it fails there more than its tasks explain.

A *region* is a dense group of examples in the full encoding space (not the 2-D map), found over
train and test examples together with a standard density-based clustering from scikit-learn:

1. the encodings of one stored layer and view, centred on the train mean (raw hidden states are
   dominated by a few huge dimensions) and, for the cosine metric, scaled to unit length;
2. PCA to a few dozen dimensions (``pca_dims``; fitted on at most ``PCA_FIT_MAX`` seeded rows);
3. ``sklearn.cluster.HDBSCAN`` with ``min_cluster_size = min_size``; label -1 = in no region (above
   ``CLUSTER_MAX`` rows on a seeded sample, the other rows joining their nearest sampled row).

Per region: its examples (train / test), tasks and domains with shares, the accuracy of its scored
test examples with a task-clustered interval, the **expected accuracy from its tasks** (each scored
test example's task accuracy *outside* the region, averaged), the difference with a task-clustered
interval and a one-sided p-value (tasks' differences sign-flipped), Benjamini-Hochberg q-values
across regions, the mean distance to train, the share of train examples (coverage), keywords by
class-based TF-IDF over the instructions, and the instruction nearest the region's centre.

A region is flagged *worse than its tasks predict* when q < 0.05, the interval of the difference
lies below 0 and at least ``MIN_TASKS_FOR_CLAIM`` tasks were compared (tasks are the unit of
independence, as in ``llm_maps.findings``, whose bootstrap helpers this module uses). A region made
of one hard task has no outside examples to compare with, so it is never flagged: hard because of
its tasks is not the same as hard because of where it lies. *Uncovered* regions (fewer than
``UNCOVERED_BELOW`` of their examples are train examples) are listed apart.

``find_regions`` returns exactly what ``regions.json`` holds (a ``Regions`` dict, with the
per-example labels as ``.labels``); ``write_regions`` writes ``regions.json`` and
``regions.parquet`` (example_id -> region) into the run with a history entry; ``run_regions`` is
the whole ``llm-maps regions`` command and ``format_regions`` its printed table. Torch-free.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from .errors import LLMMapsError
from .findings import ALPHA, MIN_TASKS_FOR_CLAIM, run_views, variant_distances, view_encodings
from .resample import MAX_FLIPS, MIN_TASKS_FOR_INTERVAL, at_least_wilson, sign_flip_p, task_ratio_interval
from .runfolder import (ENCODINGS, EXAMPLES, Run, check_writable, parquet_errors, read_result_json, record_stage,
                        write_json_atomic)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

REGIONS_FILE = "regions.json"
REGIONS_TABLE = "regions.parquet"
FORMAT_VERSION = 1
PCA_DIMS = 32  # "a few dozen": HDBSCAN's density estimates degrade in many more dimensions
PCA_FIT_MAX = 20_000  # rows the PCA is fitted on (a seeded sample beyond this); every row is projected
CLUSTER_MAX = 30_000  # rows HDBSCAN clusters (quadratic time); beyond, the rest join their nearest sampled row
UNCOVERED_BELOW = 0.1  # a region with a smaller share of train examples is "uncovered"
N_KEYWORDS = 6
N_BOOT = 2000
CHUNK_ROWS = 8192
TEXT_CHARS = 300
INTERVAL = ("accuracy and difference: 95 % percentile interval of a task-clustered bootstrap (the region's tasks "
            "resampled with replacement, replicates spread by sqrt(G/(G-1)) for G tasks; none with fewer than "
            f"{MIN_TASKS_FOR_INTERVAL} tasks; an accuracy's never narrower than Wilson's over its examples); "
            "p-value: one-sided, the compared tasks' differences sign-flipped (every pattern up to "
            f"{int(math.log2(MAX_FLIPS))} tasks), so with G tasks no p-value is below 2^-G; q-values: "
            "Benjamini-Hochberg across the regions with a p-value")
MIN_OUTSIDE = 5  # scored test examples a task needs outside a region before its accuracy there is an expectation
EXPECTED = ("expected accuracy: each scored test example's task accuracy outside the region (scored test examples of "
            "the same task in other regions or in none), averaged over the region's scored test examples whose task "
            f"has at least {MIN_OUTSIDE} such examples; difference = accuracy - expected on those examples")


def default_min_size(n: int) -> int:
    """The default ``min_size``: 1 % of the examples, at least 10 and at most 200."""
    return int(min(200, max(10, round(0.01 * n))))


class Regions(dict[str, Any]):
    """What ``regions.json`` holds (a plain dict: ``json.dump`` writes it as is), with the per-example
    region labels beside it: ``labels`` [N] int (-1 = none) and ``example_ids`` [N], in the order
    of examples.parquet."""

    labels: IntArray
    example_ids: list[str]


# --- clustering ------------------------------------------------------------------------------------

def reduce_encodings(encodings: np.ndarray, *, is_train: np.ndarray, normalize: bool, pca_dims: int = PCA_DIMS,
                     seed: int = 0, fit_max: int = PCA_FIT_MAX) -> tuple[np.ndarray, dict[str, Any]]:
    """[N, d] float32: ``encodings`` [N, H] (any float dtype, memory-mapped is fine) centred on the
    mean of the train rows, scaled to unit length when ``normalize`` (cosine), projected by a PCA
    (seeded; fitted on at most ``fit_max`` seeded rows). Read in chunks, so a float16 [N, H] file is
    never held as float32 whole. Returns (coordinates, info)."""
    from sklearn.decomposition import PCA

    n, h = encodings.shape
    is_train = np.asarray(is_train, dtype=bool)
    train_rows = np.flatnonzero(is_train)
    if len(train_rows) == 0:
        raise LLMMapsError("regions: the run has no train examples (the encodings are centred on their mean)")
    total = np.zeros(h, dtype=np.float64)
    for start in range(0, len(train_rows), CHUNK_ROWS):
        total += np.asarray(encodings[train_rows[start:start + CHUNK_ROWS]], dtype=np.float64).sum(0)
    mean = (total / len(train_rows)).astype(np.float32)

    def prepared(rows: np.ndarray | slice) -> np.ndarray:
        x = np.asarray(encodings[rows], dtype=np.float32) - mean
        if normalize:
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    rng = np.random.default_rng(seed)
    fit_rows = np.arange(n) if n <= fit_max else np.sort(rng.choice(n, size=fit_max, replace=False))
    dims = int(max(1, min(pca_dims, h, len(fit_rows) - 1)))
    pca = PCA(n_components=dims, svd_solver="auto", random_state=seed)
    pca.fit(prepared(fit_rows))
    out = np.empty((n, dims), dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = pca.transform(prepared(slice(start, min(n, start + CHUNK_ROWS))))
    info = {"pca_dims": dims, "pca_fit_rows": int(len(fit_rows)),
            "explained_variance": float(np.sum(pca.explained_variance_ratio_))}
    return out, info


def cluster(coords: np.ndarray, *, min_size: int, min_samples: int | None = None, max_rows: int = CLUSTER_MAX,
            seed: int = 0) -> tuple[IntArray, dict[str, Any]]:
    """HDBSCAN labels [N] of ``coords`` (-1 = in no region), renumbered by size: region 0 is the
    largest (ties: the one whose first example comes first). HDBSCAN itself has no randomness, but
    scikit-learn's is quadratic in time: above ``max_rows`` rows it clusters a seeded sample of
    ``max_rows`` (``min_size`` and ``min_samples`` scaled by the sample's share) and every other row
    takes the region of its nearest sampled row (exact, euclidean). Returns (labels, info)."""
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics import pairwise_distances_argmin

    if min_size < 2:
        raise LLMMapsError(f"--min-size: at least 2 examples make a region, got {min_size}")
    n = len(coords)
    info: dict[str, Any] = {"cluster_rows": int(n), "min_cluster_size": int(min_size),
                            "min_samples": int(min_size if min_samples is None else min_samples)}
    if n < 2:
        return np.full(n, -1, dtype=np.int64), info
    sample = np.arange(n)
    if n > max_rows:
        sample = np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))
        share = max_rows / n
        info.update(cluster_rows=int(max_rows), min_cluster_size=max(2, round(min_size * share)),
                    min_samples=max(1, round(info["min_samples"] * share)))
    extra = {"copy": True} if "copy" in HDBSCAN().get_params() else {}
    model = HDBSCAN(min_cluster_size=info["min_cluster_size"], min_samples=info["min_samples"], metric="euclidean",
                    **extra)
    fitted = np.asarray(model.fit_predict(np.asarray(coords[sample], dtype=np.float64)), dtype=np.int64)
    raw = np.full(n, -1, dtype=np.int64)
    raw[sample] = fitted
    if len(sample) < n:
        rest = np.setdiff1d(np.arange(n), sample)
        nearest = pairwise_distances_argmin(np.asarray(coords[rest], dtype=np.float64),
                                            np.asarray(coords[sample], dtype=np.float64))
        raw[rest] = fitted[np.asarray(nearest, dtype=np.int64)]
    found = [lab for lab in np.unique(raw) if lab >= 0]
    order = sorted(found, key=lambda lab: (-int((raw == lab).sum()), int(np.flatnonzero(raw == lab)[0])))
    labels = np.full(n, -1, dtype=np.int64)
    for new, old in enumerate(order):
        labels[raw == old] = new
    return labels, info


# --- statistics ------------------------------------------------------------------------------------

def expected_accuracy(*, labels: np.ndarray, task: Sequence[Any], correct: np.ndarray,
                      region: int, min_outside: int = MIN_OUTSIDE) -> FloatArray:
    """[N] for each scored example of ``region`` (``correct`` finite), the accuracy of the scored
    examples of its task outside the region (NaN where the task has fewer than ``min_outside``, and
    for every other row). ``correct`` [N]: 1 / 0 for scored test examples, NaN for the rest."""
    labels = np.asarray(labels)
    y = np.asarray(correct, dtype=float)
    names, codes = np.unique(np.asarray([str(t) for t in task], dtype=object), return_inverse=True)
    scored = np.isfinite(y)
    out_sel = scored & (labels != region)
    n_out = np.bincount(codes[out_sel], minlength=len(names)).astype(float)
    k_out = np.bincount(codes[out_sel], weights=y[out_sel], minlength=len(names))
    with np.errstate(invalid="ignore", divide="ignore"):
        task_out = np.where(n_out >= max(min_outside, 1), k_out / np.where(n_out > 0, n_out, 1.0), np.nan)
    out = np.full(len(y), np.nan)
    inside = scored & (labels == region)
    out[inside] = task_out[codes[inside]]
    return out


def bh_qvalues(p_values: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg q-values (scipy.stats.false_discovery_control), None left out of the
    family and kept as None."""
    from scipy.stats import false_discovery_control

    idx = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if idx:
        q = false_discovery_control(np.array([float(p_values[i] or 0.0) for i in idx]), method="bh")
        for i, v in zip(idx, np.atleast_1d(q)):
            out[i] = float(v)
    return out


def _shares(values: np.ndarray, limit: int | None = None) -> list[dict[str, Any]]:
    names, counts = np.unique(values, return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (-int(counts[i]), str(names[i])))
    total = max(1, int(counts.sum()))
    return [{"name": str(names[i]), "n": int(counts[i]), "share": float(counts[i] / total)}
            for i in order[:limit]]


def region_statistics(*, labels: np.ndarray, is_train: np.ndarray, task: Sequence[Any], domain: Sequence[Any],
                      correct: np.ndarray, dist: np.ndarray | None = None, n_boot: int = N_BOOT, seed: int = 0,
                      uncovered_below: float = UNCOVERED_BELOW, alpha: float = ALPHA,
                      min_tasks: int = MIN_TASKS_FOR_CLAIM, min_outside: int = MIN_OUTSIDE) -> list[dict[str, Any]]:
    """The statistics of every region (labels >= 0), in region order, without keywords and central
    examples (``find_regions`` adds those). ``correct`` [N]: 1 / 0 for scored test examples, NaN
    otherwise (train rows never count); ``dist`` [N] distance to train (NaN: none)."""
    labels = np.asarray(labels, dtype=np.int64)
    is_train = np.asarray(is_train, dtype=bool)
    task_arr = np.asarray([str(t) for t in task], dtype=object)
    dom_arr = np.asarray([str(d) for d in domain], dtype=object)
    y = np.where(is_train, np.nan, np.asarray(correct, dtype=float))
    names, codes = np.unique(task_arr, return_inverse=True)
    scored = np.isfinite(y)
    n_all = np.bincount(codes[scored], minlength=len(names)).astype(float)
    k_all = np.bincount(codes[scored], weights=y[scored], minlength=len(names))
    d = None if dist is None else np.asarray(dist, dtype=float)
    rows: list[dict[str, Any]] = []
    for r in range(int(labels.max()) + 1 if len(labels) else 0):
        rng = np.random.default_rng([seed, r])
        inside = labels == r
        sc = scored & inside
        n_in = np.bincount(codes[sc], minlength=len(names)).astype(float)
        k_in = np.bincount(codes[sc], weights=y[sc], minlength=len(names))
        n_out, k_out = n_all - n_in, k_all - k_in
        scored_tasks = np.flatnonzero(n_in > 0)
        n_sc = int(sc.sum())
        acc = float(k_in.sum() / n_sc) if n_sc else None
        acc_lo, acc_hi = at_least_wilson(*task_ratio_interval(k_in[scored_tasks], n_in[scored_tasks],
                                                              acc if acc is not None else math.nan, n_boot=n_boot,
                                                              rng=rng, bounds=(0.0, 1.0)), k_in.sum(), n_sc)
        # tasks with scored test examples inside and at least min_outside outside
        comp = np.flatnonzero((n_in > 0) & (n_out >= max(min_outside, 1)))
        w = n_in[comp]
        diff_t = k_in[comp] / np.maximum(w, 1) - k_out[comp] / np.maximum(n_out[comp], 1)  # [G]
        n_exp = int(w.sum())
        expected = float((w * (k_out[comp] / np.maximum(n_out[comp], 1))).sum() / n_exp) if n_exp else None
        diff = float((w * diff_t).sum() / n_exp) if n_exp else None
        d_lo, d_hi = task_ratio_interval(w * diff_t, w, diff if diff is not None else math.nan, n_boot=n_boot,
                                         rng=rng, bounds=(-1.0, 1.0))
        p = sign_flip_p(w * diff_t, seed=seed + r) if len(comp) else None
        n = int(inside.sum())
        n_train = int((inside & is_train).sum())
        test_d = None
        if d is not None:
            dd = d[inside & ~is_train]
            dd = dd[np.isfinite(dd)]
            test_d = float(dd.mean()) if len(dd) else None
        coverage = n_train / n if n else 0.0
        rows.append({
            "region": r, "label": "", "n": n, "n_train": n_train, "n_test": n - n_train, "n_scored": n_sc,
            "coverage": float(coverage), "uncovered": bool(coverage < uncovered_below),
            "n_tasks": int(len(np.unique(task_arr[inside]))), "tasks": _shares(task_arr[inside], 10),
            "domains": _shares(dom_arr[inside]),
            "accuracy": acc, "accuracy_low": acc_lo, "accuracy_high": acc_hi, "n_tasks_scored": int(len(scored_tasks)),
            "expected_accuracy": expected, "n_expected": n_exp, "n_outside": int(n_out[comp].sum()),
            "n_tasks_compared": int(len(comp)),
            "difference": diff, "difference_low": d_lo, "difference_high": d_hi,
            "p_value": p, "q_value": None, "worse": False, "mean_dist_to_train": test_d,
            "keywords": [], "central_example": "", "central_text": "",
        })
    for row, q in zip(rows, bh_qvalues([row["p_value"] for row in rows])):
        row["q_value"] = q
        row["worse"] = bool(q is not None and q < alpha and row["difference_high"] is not None
                            and row["difference_high"] < 0 and row["n_tasks_compared"] >= min_tasks)
    return rows


# --- labels ----------------------------------------------------------------------------------------

def class_keywords(texts: Sequence[str], labels: np.ndarray, *, n: int = N_KEYWORDS) -> dict[int, list[str]]:
    """Words that tell each region apart: class-based TF-IDF (as BERTopic's c-TF-IDF) over the
    texts, every region one class and the examples in no region one more. A term's weight in a
    class is tf * log(1 + A / f): tf = the share of the class's term occurrences that are this term
    (each counted once per text), f = its occurrences in all classes, A = the mean occurrences per
    class. Words are scikit-learn's CountVectorizer's (lowercase, letters only, English stop words
    removed). Region -> its ``n`` best words, best first (ties: alphabetical)."""
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

    labels = np.asarray(labels, dtype=np.int64)
    n_regions = int(labels.max()) + 1 if len(labels) else 0
    if n_regions == 0:
        return {}
    vec = CountVectorizer(lowercase=True, stop_words="english", token_pattern=r"(?u)\b[^\W\d_]{2,}\b", binary=True)
    try:
        x = vec.fit_transform([str(t or "") for t in texts])  # [N, V]
    except ValueError:  # no words at all
        return {r: [] for r in range(n_regions)}
    cls = np.where(labels >= 0, labels, n_regions)
    member = sparse.csr_matrix((np.ones(len(cls)), (cls, np.arange(len(cls)))), shape=(n_regions + 1, len(cls)))
    counts = np.asarray((member @ x).todense(), dtype=float)  # [C, V]
    per_class = counts.sum(1, keepdims=True)
    tf = counts / np.maximum(per_class, 1.0)
    f = counts.sum(0)
    a = float(per_class[per_class > 0].mean()) if (per_class > 0).any() else 1.0
    weight = tf * np.log1p(a / np.maximum(f, 1.0))[None, :]
    vocab = np.asarray(vec.get_feature_names_out(), dtype=object)
    out = {}
    for r in range(n_regions):
        order = np.lexsort((vocab, -weight[r]))
        out[r] = [str(vocab[j]) for j in order[:n] if counts[r, j] > 0]
    return out


def central_rows(coords: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Region -> the row of its member nearest the mean of its members' coordinates."""
    labels = np.asarray(labels)
    out = {}
    for r in range(int(labels.max()) + 1 if len(labels) else 0):
        rows = np.flatnonzero(labels == r)
        c = np.asarray(coords[rows], dtype=np.float64)
        out[r] = int(rows[int(np.argmin(((c - c.mean(0)) ** 2).sum(1)))])
    return out


# --- run folders -----------------------------------------------------------------------------------

def _texts(frame: Any) -> list[str]:
    """Each example's instruction (its prompt when the run stores none)."""
    prompt = frame["prompt"].astype("string").fillna("")
    if "instruction" not in frame.columns:
        return [str(t) for t in prompt]
    instr = frame["instruction"].astype("string").fillna("")
    return [str(t) for t in instr.where(instr.str.strip() != "", prompt)]


def _shorten(text: str, chars: int = TEXT_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= chars else text[:chars - 1].rstrip() + "…"


def _view_layer(run: Run, view: str, layer: int | None) -> int:
    views = run_views(run.manifest)
    if view not in views:
        raise LLMMapsError(f"--view: the run has no view '{view}' (views: {', '.join(views)})")
    if view == "prompt":
        layers, default = run.layers, run.default_layer
    else:
        settings = (run.manifest.get("view_settings") or {}).get(view) or {}
        layers = [int(k) for k in settings.get("layers", run.layers)]
        default = int(settings.get("default_layer", run.default_layer))
    chosen = default if layer is None else int(layer)
    if chosen not in layers:
        raise LLMMapsError(f"--layer: layer {chosen} is not stored in the {view} view (stored: {layers})")
    return chosen


def find_regions(run: Run | str | Path, *, layer: int | None = None, view: str = "prompt",
                 min_size: int | None = None, seed: int = 0, pca_dims: int = PCA_DIMS,
                 min_samples: int | None = None, n_boot: int = N_BOOT, uncovered_below: float = UNCOVERED_BELOW,
                 n_keywords: int = N_KEYWORDS) -> Regions:
    """Regions of a run (see the module's docstring). Returns what ``regions.json`` holds, with the
    labels per example as ``.labels`` (nothing is written: see ``write_regions``)."""
    t0 = time.perf_counter()
    run = run if isinstance(run, Run) else Run(run)
    layer = _view_layer(run, view, layer)
    frame = run.examples
    n = len(frame)
    min_size = default_min_size(n) if min_size is None else int(min_size)
    if min_size < 2:
        raise LLMMapsError(f"--min-size: at least 2 examples make a region, got {min_size}")
    metric = str(run.manifest.get("distance_metric", "cosine"))
    is_train = (frame["split"] == "train").to_numpy()
    enc = view_encodings(run, view, layer)
    if enc.shape[0] != n:
        raise LLMMapsError(f"{run.path}: the {view} encodings of layer {layer} have {enc.shape[0]} rows, "
                           f"examples.parquet {n}")
    coords, info = reduce_encodings(enc, is_train=is_train, normalize=metric == "cosine", pca_dims=pca_dims, seed=seed)
    labels, cinfo = cluster(coords, min_size=min_size, min_samples=min_samples, seed=seed)
    correct = frame["correct"].astype("boolean").to_numpy(dtype=float, na_value=np.nan)
    test_rows = np.flatnonzero(~is_train)
    dist = np.full(n, np.nan)
    if len(test_rows):
        dist[test_rows] = variant_distances(run, rows=test_rows, layer=layer, metric=metric, view=view)
    task = frame["task"].astype(str).to_numpy()
    rows = region_statistics(labels=labels, is_train=is_train, task=task, domain=frame["domain"].astype(str).to_numpy(),
                             correct=correct, dist=dist, n_boot=n_boot, seed=seed, uncovered_below=uncovered_below)
    texts = _texts(frame)
    words = class_keywords(texts, labels, n=n_keywords)
    centres = central_rows(coords, labels)
    ids = frame["example_id"].astype(str).tolist()
    for row in rows:
        r = row["region"]
        row["keywords"] = words.get(r, [])
        row["label"] = f"R{r}" + (": " + ", ".join(row["keywords"][:3]) if row["keywords"] else "")
        row["central_example"] = ids[centres[r]]
        row["central_text"] = _shorten(texts[centres[r]])
    scored = np.isfinite(correct) & ~is_train
    test_d = dist[np.isfinite(dist)]
    notes = list(run.manifest.get("notes") or [])
    if not scored.any():
        notes.append(f"no scored test examples: accuracies are missing (run `llm-maps score {run.path}` first)")
    if rows and not any(r["n_tasks_compared"] >= MIN_TASKS_FOR_CLAIM for r in rows):
        notes.append(f"no region has {MIN_TASKS_FOR_CLAIM} or more tasks with scored test examples both inside and "
                     "outside it, so none can be flagged: regions here follow tasks (a region made of one task has "
                     "no outside examples to be compared with)")
    params = {"method": "HDBSCAN", "min_size": min_size, "min_samples": min_samples if min_samples is not None else min_size,
              "pca_dims": int(info["pca_dims"]), "pca_fit_rows": int(info["pca_fit_rows"]),
              "cluster_rows": int(cinfo["cluster_rows"]), "min_cluster_size": int(cinfo["min_cluster_size"]),
              "seed": int(seed),
              "centre": "train mean", "normalize": metric == "cosine", "uncovered_below": float(uncovered_below),
              "keywords": int(n_keywords), "bootstrap": int(n_boot), "max_flips": MAX_FLIPS, "alpha": ALPHA,
              "min_tasks": MIN_TASKS_FOR_CLAIM, "min_outside": MIN_OUTSIDE}
    out = Regions({
        "format_version": FORMAT_VERSION, "view": view, "layer": int(layer), "metric": metric,
        "model": run.manifest.get("model"), "params": params, "explained_variance": float(info["explained_variance"]),
        "n_examples": n, "n_train": int(is_train.sum()), "n_test": int((~is_train).sum()), "n_scored": int(scored.sum()),
        "n_regions": len(rows), "n_in_regions": int((labels >= 0).sum()), "n_noise": int((labels < 0).sum()),
        "accuracy": float(np.nanmean(correct[scored])) if scored.any() else None,
        "mean_dist_to_train": float(test_d.mean()) if len(test_d) else None,
        "regions": rows, "worse": [r["region"] for r in rows if r["worse"]],
        "uncovered": [r["region"] for r in rows if r["uncovered"]],
        "interval": INTERVAL, "expected": EXPECTED, "notes": notes,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    out.labels = labels
    out.example_ids = ids
    return out


def write_regions(run_dir: str | Path, regions: Regions, *, given: Mapping[str, Any] | None = None) -> list[Path]:
    """Write ``regions.parquet`` (example_id, region) and ``regions.json`` into a finished run, each
    atomically, with a ``regions`` entry in the manifest's history (``runfolder.record_stage``: the
    parameters, the seed, the input files with their content hashes; ``given``: the command's config
    as given). Returns the paths."""
    import pandas as pd

    run_dir = Path(run_dir)
    table = pd.DataFrame({"example_id": pd.array(regions.example_ids, dtype="string"),
                          "region": np.asarray(regions.labels, dtype=np.int32)})
    view, layer = regions["view"], regions["layer"]
    enc = f"{ENCODINGS}/layer_{layer}.npy" if view == "prompt" else f"{ENCODINGS}/{view}/layer_{layer}.npy"
    params = {"view": view, "layer": layer, **{k: v for k, v in regions["params"].items() if k != "seed"}}
    record_stage(run_dir, "regions", params, outputs={REGIONS_TABLE: table, REGIONS_FILE: dict(regions)},
                 inputs=[EXAMPLES, enc], seed=int(regions["params"]["seed"]), given=given)
    return [run_dir / REGIONS_TABLE, run_dir / REGIONS_FILE]


def read_regions(run_dir: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """RUN/regions.json: (result, None), (None, None) when there is none, (None, reason) when it
    cannot be read."""
    return read_result_json(Path(run_dir) / REGIONS_FILE, "regions", {"regions": list}, newest=FORMAT_VERSION)


def read_region_labels(run_dir: str | Path, example_ids: Sequence[str]) -> np.ndarray:
    """[N] the region of each of ``example_ids`` from RUN/regions.parquet (-1: none, or an example the
    file does not list). LLMMapsError naming the file when it is missing or unreadable."""
    import pandas as pd

    path = Path(run_dir) / REGIONS_TABLE
    with parquet_errors(path, f"missing (run `llm-maps regions {Path(run_dir)}`)"):
        table = pd.read_parquet(path, columns=["example_id", "region"])
    lookup = dict(zip(table["example_id"].astype(str), table["region"].astype(int)))
    return np.array([lookup.get(str(e), -1) for e in example_ids], dtype=np.int64)


def run_regions(run_dir: str | Path, *, layer: int | None = None, view: str = "prompt", min_size: int | None = None,
                seed: int = 0, json_path: str | Path | None = None, write: bool = True,
                given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``llm-maps regions RUN``: find the regions, write regions.parquet and regions.json into the
    run (with a history entry; ``given``: the command's config as given) when ``write``, and the
    result to ``json_path`` too when given.
    Returns what regions.json holds; ``format_regions`` is the table the command prints. A run it
    cannot write into is a one-line error before any work."""
    if write:
        check_writable(run_dir, [REGIONS_TABLE, REGIONS_FILE])
    regions = find_regions(run_dir, layer=layer, view=view, min_size=min_size, seed=seed)
    if write:
        write_regions(run_dir, regions, given=given)
    if json_path is not None:
        write_json_atomic(json_path, dict(regions))
    return dict(regions)


def _f(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def sorted_regions(regions: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Regions by difference, most negative first (regions without one last, by id)."""
    return sorted(regions, key=lambda r: (r.get("difference") is None, r.get("difference") or 0.0, r["region"]))


def format_regions(result: Mapping[str, Any], *, limit: int | None = 30) -> str:
    """The regions as text: a table sorted by the difference (most negative first), the flagged
    regions, the uncovered ones listed apart, and the notes."""
    p = result["params"]
    lines = [f"regions ({result['view']} view, layer {result['layer']}, {result['metric']}; HDBSCAN min_size "
             f"{p['min_size']} on {p['pca_dims']} PCA dims, {result['explained_variance']:.0%} of the variance, seed "
             f"{p['seed']}): {result['n_regions']} regions hold {result['n_in_regions']:,} of {result['n_examples']:,} "
             f"examples ({result['n_noise']:,} in none)", ""]
    regions = sorted_regions(result["regions"])
    head = (f"  {'region':<6} {'train':>6} {'test':>5} {'tasks':>5} {'accuracy [95% CI] (n)':<26} "
            f"{'expected (n in, out)':<20} {'difference [95% CI]':<24} {'cmp':>3} {'q':>6} {'cover':>5} {'dist':>7}  "
            "keywords")

    def ci(v: float | None, lo: float | None, hi: float | None, spec: str = ".2f") -> str:
        return _f(v, spec) + (f" [{_f(lo, spec)}, {_f(hi, spec)}]" if lo is not None and hi is not None else "")

    def line(r: Mapping[str, Any]) -> str:
        acc = f"{ci(r['accuracy'], r['accuracy_low'], r['accuracy_high'])} ({r['n_scored']})"
        exp = f"{_f(r['expected_accuracy'])} ({r['n_expected']}, {r.get('n_outside', '?')})"
        diff = ci(r["difference"], r["difference_low"], r["difference_high"], "+.2f")
        flag = " worse" if r["worse"] else ""
        return (f"  R{r['region']:<5} {r['n_train']:>6} {r['n_test']:>5} {r['n_tasks']:>5} {acc:<26} "
                f"{exp:<20} {diff:<24} {r['n_tasks_compared']:>3} {_f(r['q_value'], '.3f'):>6} "
                f"{r['coverage']:>5.2f} "
                f"{_f(r['mean_dist_to_train'], '.4g'):>7}  {', '.join(r['keywords'][:4])}{flag}")

    covered = [r for r in regions if not r["uncovered"]]
    if regions:
        lines.append(head)
        lines += [line(r) for r in covered[:limit]]
        if limit is not None and len(covered) > limit:
            lines.append(f"  ... {len(covered) - limit} more (regions.json has them all)")
    worse = [r for r in regions if r["worse"]]
    lines += ["", (f"worse than their tasks predict (q < {p['alpha']}, interval below 0, at least {p['min_tasks']} "
                   f"tasks compared): " + (", ".join(f"R{r['region']} ({_f(r['difference'], '+.2f')})" for r in worse)
                                          if worse else "none"))]
    uncovered = [r for r in regions if r["uncovered"]]
    lines.append(f"uncovered (train share below {p['uncovered_below']:.0%}):" + (" none" if not uncovered else ""))
    if uncovered:
        lines.append(head)
        lines += [line(r) for r in uncovered]
    lines += ["", f"(tasks: of all its examples; n: its scored test examples; expected (n in, out): over the scored "
                  f"test examples inside whose task has {p.get('min_outside', 1)} or more outside, from that many "
                  f"outside; cmp: tasks compared so; an interval over tasks needs {MIN_TASKS_FOR_INTERVAL}; cover: "
                  "train share; dist: mean "
                  f"distance to train of its test examples; {result['expected']}; {result['interval']})"]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)
