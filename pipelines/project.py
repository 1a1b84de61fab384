"""2-D projections (UMAP, PCA) that are saved as plain arrays + JSON and place new points.

A saved projection never needs a pickle and never runs numba on the request path:
- PCA: ``mean`` and ``components``; a new point is ``(x - mean) @ components.T``.
- UMAP: the fitted 2-D embedding of the fit set; a new point goes to the membership-weighted
  mean of its ``n_neighbors`` nearest fit points in the full space, with UMAP's own weights
  (``exp(-(d - rho) / sigma)``, sigma solved so the weights sum to log2(k)). That is the
  initialisation umap-learn's ``transform`` starts from, computed with exact neighbours and
  numpy only. Non-fit examples of a run (e.g. test points when fitting on train) are placed the
  same way, so they and later user prompts follow one rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_maps import model_stack
from llm_maps.contract import PROJECTION_FORMAT_VERSION
from llm_maps.errors import LLMMapsError
from llm_maps.neighbours import knn

METHODS = ("umap", "pca")


def _smooth_knn_weights(dists: np.ndarray, n_iter: int = 64, bandwidth: float = 1.0) -> np.ndarray:
    """UMAP's fuzzy membership weights for rows of neighbour distances [M, k] (sorted)."""
    d = np.where(np.isfinite(dists), dists, np.nan)
    k = np.sum(np.isfinite(dists), axis=1)
    target = np.log2(np.maximum(k, 2)) * bandwidth
    rho = np.nanmin(np.where(d > 0, d, np.nan), axis=1)
    rho = np.where(np.isfinite(rho), rho, 0.0)
    lo = np.zeros(len(d))
    hi = np.full(len(d), np.inf)
    mid = np.ones(len(d))
    for _ in range(n_iter):
        w = np.exp(-np.maximum(np.nan_to_num(d, nan=np.inf) - rho[:, None], 0.0) / mid[:, None])
        total = w.sum(axis=1)
        too_big = total > target
        hi = np.where(too_big, mid, hi)
        lo = np.where(too_big, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2.0, (lo + hi) / 2.0)
    return np.exp(-np.maximum(np.nan_to_num(d, nan=np.inf) - rho[:, None], 0.0) / mid[:, None])


@dataclass
class Projection:
    method: str
    metric: str
    params: dict = field(default_factory=dict)
    fit_rows: np.ndarray | None = None  # [F] rows of the run the map was fitted on
    embedding: np.ndarray | None = None  # [F, 2] their fitted coordinates (UMAP)
    mean: np.ndarray | None = None  # [H] (PCA)
    components: np.ndarray | None = None  # [2, H] (PCA)

    def describe(self) -> dict:
        return {"method": self.method, "metric": self.metric, **self.params}

    # ---------------------------------------------------------------- placing points
    def transform(self, x: np.ndarray, fit_encodings: np.ndarray | None = None) -> np.ndarray:
        """2-D positions [M, 2] for encodings ``x`` [M, H] (same layer as the fit).

        UMAP needs ``fit_encodings`` = the run's encodings at ``fit_rows`` (memory-mapped).
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if self.method == "pca":
            if self.params.get("normalize"):
                x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
            return (x - self.mean) @ self.components.T
        if fit_encodings is None:
            raise LLMMapsError("UMAP placement needs the run's fit-set encodings")
        k = min(int(self.params["n_neighbors"]), len(self.embedding))
        dists, idx = knn(x, fit_encodings, k=k, metric=self.metric)
        weights = _smooth_knn_weights(dists)
        weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), 1e-300)
        return np.einsum("mk,mkd->md", weights, self.embedding[idx].astype(np.float64))

    # ---------------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": PROJECTION_FORMAT_VERSION, "method": self.method, "metric": self.metric, "params": self.params}
        (folder / "projection.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        arrays = {"fit_rows": self.fit_rows, "embedding": self.embedding, "mean": self.mean,
                  "components": self.components}
        for name, arr in arrays.items():
            if arr is not None:
                np.save(folder / f"{name}.npy", arr, allow_pickle=False)

    @classmethod
    def load(cls, folder: str | Path) -> "Projection":
        folder = Path(folder)
        path = folder / "projection.json"
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LLMMapsError(f"{path}: missing (run `llm-maps project` on this run)") from None
        except json.JSONDecodeError as exc:
            raise LLMMapsError(f"{path}: corrupt ({exc})") from None

        def arr(name):
            p = folder / f"{name}.npy"
            return np.load(p, allow_pickle=False) if p.exists() else None

        proj = cls(method=meta["method"], metric=meta["metric"], params=meta.get("params", {}),
                   fit_rows=arr("fit_rows"), embedding=arr("embedding"), mean=arr("mean"),
                   components=arr("components"))
        needed = ("mean", "components") if proj.method == "pca" else ("fit_rows", "embedding")
        for name in needed:
            if getattr(proj, name) is None:
                raise LLMMapsError(f"{folder / (name + '.npy')}: missing")
        return proj


def fit_projection(encodings: np.ndarray, fit_rows: np.ndarray, *, method: str = "umap",
                   metric: str = "cosine", seed: int = 0, n_neighbors: int = 15,
                   min_dist: float = 0.1, layer: int | None = None) -> tuple[Projection, np.ndarray]:
    """Fit on ``encodings[fit_rows]``; return the projection and 2-D positions [N, 2] of all rows."""
    if method not in METHODS:
        raise LLMMapsError(f"--projection: unknown method '{method}' (umap, pca)")
    x_all = np.asarray(encodings, dtype=np.float32)  # [N, H]
    fit_rows = np.asarray(fit_rows, dtype=np.int64)
    x_fit = x_all[fit_rows]
    n_fit = len(fit_rows)
    if method == "pca":
        from sklearn.decomposition import PCA

        normalize = metric == "cosine"
        xf = x_fit.astype(np.float64)
        if normalize:
            xf = xf / np.maximum(np.linalg.norm(xf, axis=1, keepdims=True), 1e-30)
        if n_fit < 2:
            raise LLMMapsError("--projection pca: needs at least 2 examples to fit")
        pca = PCA(n_components=2, svd_solver="full", random_state=seed).fit(xf)
        comps = pca.components_.copy()
        # fix the sign of each axis (largest-magnitude loading positive) so refits agree
        signs = np.sign(comps[np.arange(2), np.argmax(np.abs(comps), axis=1)])
        comps *= signs[:, None]
        proj = Projection("pca", metric, {"normalize": normalize, "seed": seed, "layer": layer,
                                          "n_fit": n_fit,
                                          "explained_variance_ratio": (pca.explained_variance_ratio_).tolist()},
                          fit_rows=fit_rows, mean=pca.mean_, components=comps)
        return proj, proj.transform(x_all)
    model_stack.require("--projection umap (or use --projection pca)", ("umap",))
    import umap  # slow import (numba); only here

    n_neighbors = max(2, min(n_neighbors, n_fit - 1))
    if n_fit < 4:
        raise LLMMapsError("--projection umap: needs at least 4 examples to fit (use pca)")
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                        random_state=seed, init="spectral" if n_fit > n_neighbors + 2 else "random")
    import warnings

    with warnings.catch_warnings():  # "n_jobs overridden by random_state": expected, we want determinism
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        emb = reducer.fit_transform(x_fit).astype(np.float64)  # [F, 2]
    proj = Projection("umap", metric, {"n_neighbors": n_neighbors, "min_dist": min_dist, "seed": seed,
                                       "layer": layer, "n_fit": n_fit,
                                       "placement": "umap-membership-weighted-mean-of-exact-knn"},
                      fit_rows=fit_rows, embedding=emb)
    coords = np.empty((len(x_all), 2))
    coords[fit_rows] = emb
    rest = np.setdiff1d(np.arange(len(x_all)), fit_rows)
    if len(rest):
        coords[rest] = proj.transform(x_all[rest], x_fit)
    return proj, coords
