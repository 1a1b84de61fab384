"""Exact nearest-neighbour distances in the full encoding space, by chunked matrix products.

numpy only: shared by the pipelines (build, falloff), the worker and the web process."""

from __future__ import annotations

import numpy as np

from .errors import LLMMapsError

METRICS = ("cosine", "euclidean")


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        unit: np.ndarray = x / np.maximum(norms, 1e-30)
        return unit
    return x


def distance_block(q: np.ndarray, b: np.ndarray, metric: str, b_sq: np.ndarray | None = None) -> np.ndarray:
    """Distances [M, Nb] between prepared rows (see ``_prepare``)."""
    dots = q @ b.T
    out: np.ndarray
    if metric == "cosine":
        out = np.clip(1.0 - dots, 0.0, 2.0)
        return out
    q_sq = np.einsum("ij,ij->i", q, q)[:, None]
    b_sq = np.einsum("ij,ij->i", b, b)[None, :] if b_sq is None else b_sq[None, :]
    out = np.sqrt(np.maximum(q_sq + b_sq - 2.0 * dots, 0.0))
    return out


def pairwise_distances(q: np.ndarray, b: np.ndarray, metric: str = "cosine") -> np.ndarray:
    if metric not in METRICS:
        raise LLMMapsError(f"--metric: unknown distance metric '{metric}' (cosine, euclidean)")
    return distance_block(_prepare(q, metric), _prepare(b, metric), metric)


def knn(query: np.ndarray, base: np.ndarray, *, k: int, metric: str = "cosine",
        self_index: np.ndarray | None = None, chunk_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
    """k nearest ``base`` rows for each ``query`` row, exact.

    ``self_index[i]`` (>= 0) is the base row that *is* query i and must be skipped (a train
    example's nearest *other* train example); -1 for none. Returns (dist [M, k], idx [M, k])
    sorted by distance then index; missing neighbours (fewer than k candidates) are inf / -1.
    """
    if metric not in METRICS:
        raise LLMMapsError(f"--metric: unknown distance metric '{metric}' (cosine, euclidean)")
    m, nb = len(query), len(base)
    k = int(k)
    out_d = np.full((m, k), np.inf)
    out_i = np.full((m, k), -1, dtype=np.int64)
    if m == 0 or nb == 0 or k <= 0:
        return out_d, out_i
    b = _prepare(base, metric)
    b_sq = np.einsum("ij,ij->i", b, b) if metric == "euclidean" else None
    rows_per_chunk = max(1, int(chunk_bytes // (8 * nb)))
    kk = min(k, nb)
    for start in range(0, m, rows_per_chunk):
        stop = min(m, start + rows_per_chunk)
        d = distance_block(_prepare(query[start:stop], metric), b, metric, b_sq)  # [C, Nb]
        if self_index is not None:
            own = np.asarray(self_index[start:stop])
            hit = own >= 0
            d[np.flatnonzero(hit), own[hit]] = np.inf
        if kk < nb:
            cand = np.argpartition(d, kk - 1, axis=1)[:, :kk]
        else:
            cand = np.tile(np.arange(nb), (stop - start, 1))
        cand.sort(axis=1)  # index order first, so the stable sort below breaks ties by index
        cd = np.take_along_axis(d, cand, axis=1)
        order = np.argsort(cd, axis=1, kind="stable")
        cand = np.take_along_axis(cand, order, axis=1)
        cd = np.take_along_axis(cd, order, axis=1)
        cand[~np.isfinite(cd)] = -1
        out_d[start:stop, :kk] = cd
        out_i[start:stop, :kk] = cand
    return out_d, out_i


def nearest_train(encodings: np.ndarray, is_train: np.ndarray, *, k: int = 10,
                  metric: str = "cosine") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every example: distance to the nearest train example (itself excluded) and the k
    nearest train rows. Returns (dist_to_train [N], nn_rows [N, k], nn_dists [N, k])."""
    is_train = np.asarray(is_train, dtype=bool)
    train_rows = np.flatnonzero(is_train)
    if len(train_rows) == 0:
        raise LLMMapsError("distances: the run has no train examples")
    position = np.full(len(is_train), -1, dtype=np.int64)
    position[train_rows] = np.arange(len(train_rows))
    dists, idx = knn(encodings, np.asarray(encodings)[train_rows], k=k, metric=metric, self_index=position)
    rows = np.where(idx >= 0, train_rows[np.maximum(idx, 0)], -1)
    nearest = np.where(np.isfinite(dists[:, 0]), dists[:, 0], np.nan)
    return nearest, rows, dists
