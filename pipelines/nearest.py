"""Nearest rows of large float16 matrices for one query at a time (a generated token), in the worker.

``StateIndex`` keeps the matrices as they are stored (float16, memory-mapped copy-on-write, so
nothing is copied) plus one float32 norm per row. A query is one matrix-vector product per part
in float16 (torch's CPU kernel: half the bytes of float32, and the scan is memory-bound) against
the *unit* query, so a score is ``|a| cos`` (no float16 overflow for any state below 65504 in
norm), with float16 rounding (relative 5e-4). The best ``rerank`` candidates are then measured
exactly in float64 with the definitions of ``llm_maps.neighbours`` (cosine: ``1 - cos``;
euclidean), and the k best of those returned, ties by row. The result is the full scan's unless
more than ``rerank`` rows lie within the scan's rounding of the nearest one (then one of those
near-ties, with its exact distance).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.neighbours import METRICS, knn
from llm_maps.tokens import has_atlas, load_atlas, read_tokens
from pipelines.project import Projection, _smooth_knn_weights


class StateIndex:
    def __init__(self, parts: Sequence[np.ndarray], *, metric: str = "cosine", rerank: int = 64, chunk: int = 32768):
        import torch

        if metric not in METRICS:
            raise LLMMapsError(f"unknown distance metric '{metric}' (cosine, euclidean)")
        self.metric, self.rerank = metric, int(rerank)
        self.parts = [p if isinstance(p, np.ndarray) and p.dtype == np.float16 else np.asarray(p, dtype=np.float16)
                      for p in parts]
        self.sizes = [len(p) for p in self.parts]
        self.offsets = np.cumsum([0] + self.sizes)
        self.n = int(self.offsets[-1])
        self.tensors = [torch.from_numpy(_writable(p)) for p in self.parts]
        self.norms = []  # float32 [n_p] per part
        for p in self.parts:
            norms = np.empty(len(p), dtype=np.float32)
            for s in range(0, len(p), chunk):
                block = np.asarray(p[s:s + chunk], dtype=np.float32)
                norms[s:s + chunk] = np.linalg.norm(block, axis=1)
            self.norms.append(norms)
        self.norm_t = [torch.from_numpy(np.maximum(nm, 1e-30)) for nm in self.norms]

    def _scores(self, q16, part: int, qnorm: float):
        """Smaller is nearer: -cos (cosine) or |a|^2 - 2 |q| (a . q/|q|) (euclidean, without |q|^2)."""
        dots = (self.tensors[part] @ q16).float()
        if self.metric == "cosine":
            return -(dots / self.norm_t[part])
        return self.norm_t[part] ** 2 - 2.0 * qnorm * dots

    def search(self, query: np.ndarray, k: int = 1, parts: Sequence[int] | None = None,
               every: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(distances [k], global rows [k]) of the k nearest rows of one query [H] among ``parts``
        (all by default); sorted by distance, then row. ``every``: all measured candidates (at
        least the ``rerank`` best of every part), sorted the same way."""
        import torch

        q = np.asarray(query, dtype=np.float64).reshape(-1)
        qn = float(np.linalg.norm(q))
        unit = q / max(qn, 1e-30)
        q16 = torch.from_numpy(unit.astype(np.float16))
        parts = list(range(len(self.parts))) if parts is None else list(parts)
        cand = []
        for p in parts:
            if not self.sizes[p]:
                continue
            scores = self._scores(q16, p, qn)
            m = min(max(self.rerank, int(k)), self.sizes[p])
            top = torch.topk(scores, m, largest=False).indices.numpy()
            cand.append(self.offsets[p] + np.sort(top))
        if not cand:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        rows = np.concatenate(cand)
        d = self.exact(q, rows)
        order = np.lexsort((rows, d))
        if not every:
            order = order[: int(k)]
        return d[order], rows[order]

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Global rows as float64 [M, H]."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.parts[0].shape[1]), dtype=np.float64)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            out[sel] = self.parts[p][rows[sel] - self.offsets[p]]
        return out

    def exact(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        x = self.rows(rows)
        if self.metric == "cosine":
            xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
            return np.clip(1.0 - xn @ (q / max(float(np.linalg.norm(q)), 1e-30)), 0.0, 2.0)
        return np.sqrt(np.maximum(np.einsum("ij,ij->i", x, x) - 2.0 * x @ q + q @ q, 0.0))


def _writable(arr: np.ndarray) -> np.ndarray:
    """A writable view for torch.from_numpy without copying: read-only memory maps are reopened
    copy-on-write (nothing is written back); other read-only arrays are copied."""
    if arr.flags.writeable:
        return arr
    if isinstance(arr, np.memmap) and arr.filename:
        return np.load(arr.filename, mmap_mode="c")
    return np.array(arr)


class TokenAtlas:
    """A run's token atlas at one layer, loaded for measuring generated tokens against it.

    Every state is measured against the atlas (the nearest training response step) and placed on
    the token map (fitted on the train prompts' encodings followed by the atlas tokens). ``step``
    answers one state at a time (the playground, token by token: ``StateIndex``, no copy of the
    memory-mapped atlas); ``steps`` answers many at once (``llm-maps score --conditions``: exact
    chunked matrix products, ``llm_maps.neighbours.knn``). Both give the same nearest rows (up to
    exact ties) and the same map position rule: UMAP's fuzzy weights of the ``n_neighbors`` nearest
    fitted points, or the PCA's linear map."""

    def __init__(self, run, layer: int):
        m = run.manifest
        info = m.get("token_atlas") or {}
        ex = run.examples
        self.metric = m.get("distance_metric", "cosine")
        self.tokens = read_tokens(run.path, m)
        self.states = load_atlas(run.path, m, layer)  # [T, H] float16, memory-mapped
        self.projection = Projection.load(run.path / info["projection"]["path"])
        n = len(ex)
        fit_rows = np.asarray(self.projection.fit_rows, dtype=np.int64)
        prompt_fit = fit_rows[fit_rows < n]  # train prompts in the token map's fit set
        self.prompt_states = np.asarray(run.encodings(layer)[prompt_fit], dtype=np.float16)
        # index rows: [atlas tokens (T) | fitted prompts]; where each sits in the projection's fit set
        where = np.full(int(n + len(self.tokens)), -1, dtype=np.int64)
        where[fit_rows] = np.arange(len(fit_rows))
        self.to_fit = np.concatenate([where[n + np.arange(len(self.tokens))], where[prompt_fit]])
        self.ids = self.tokens["example_id"].astype(str).to_numpy()
        self.positions = self.tokens["position"].to_numpy()
        self.texts = self.tokens["token_text"].astype(str).to_numpy()
        self.n = len(self.tokens)
        self._index: StateIndex | None = None

    @classmethod
    def of(cls, run, layer: int) -> "TokenAtlas | None":
        """The run's atlas at ``layer``, or None when it has none there (or no token map)."""
        info = run.manifest.get("token_atlas") or {}
        if not has_atlas(run.manifest) or int(layer) not in [int(k) for k in info.get("layers", [])] \
                or not info.get("projection"):
            return None
        return cls(run, layer)

    @property
    def index(self) -> StateIndex:
        if self._index is None:
            self._index = StateIndex([self.states, self.prompt_states], metric=self.metric)
        return self._index

    @property
    def n_neighbors(self) -> int:
        return 1 if self.projection.method == "pca" else min(int(self.projection.params["n_neighbors"]),
                                                              len(self.projection.embedding))

    def _map(self, states: np.ndarray, rows: np.ndarray, dists: np.ndarray) -> np.ndarray:
        """Positions [M, 2] of ``states`` [M, H] on the token map, given their nearest index rows
        and distances [M, >= n_neighbors] (sorted)."""
        proj = self.projection
        if proj.method == "pca":
            return proj.transform(states)
        k = self.n_neighbors
        w = _smooth_knn_weights(dists[:, :k])
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
        emb = proj.embedding.astype(np.float64)
        return np.einsum("mk,mkd->md", w, emb[self.to_fit[rows[:, :k]]])

    def context(self, row: int, before: int = 6, after: int = 2) -> tuple[str, str, str]:
        """(text before, token, text after) of atlas row ``row`` within its training reference."""
        ids, texts = self.ids, self.texts
        lo, hi = row, row
        while lo > 0 and ids[lo - 1] == ids[row] and row - lo < before:
            lo -= 1
        while hi + 1 < len(ids) and ids[hi + 1] == ids[row] and hi - row < after:
            hi += 1
        return "".join(texts[lo:row]), str(texts[row]), "".join(texts[row + 1:hi + 1])

    def step(self, state: np.ndarray) -> dict:
        """For one (fp16-rounded) state: distance to the nearest atlas state, that training step
        (example, position, token and its context) and the position on the token map."""
        dists, rows = self.index.search(state, k=self.n_neighbors, every=True)
        first = int(np.flatnonzero(rows < self.n)[0])  # the nearest atlas token (always a candidate)
        row = int(rows[first])
        before, tok, after = self.context(row)
        xy = self._map(np.asarray(state, dtype=np.float64)[None, :], rows[None, :], dists[None, :])[0]
        return {"dist": float(dists[first]), "x": float(xy[0]), "y": float(xy[1]),
                "nearest": {"example_id": str(self.ids[row]), "position": int(self.positions[row]),
                            "token_text": tok, "before": before, "after": after}}

    def steps(self, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For states [M, H] (fp16-rounded): (distance to the nearest atlas state [M], that atlas
        row [M], position on the token map [M, 2]), exact, in chunks."""
        states = np.asarray(states, dtype=np.float32)
        if not len(states):
            return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros((0, 2))
        if self.projection.method == "pca":
            dist, row = knn(states, self.states, k=1, metric=self.metric)
            return dist[:, 0], row[:, 0], self.projection.transform(states)
        # one search over [atlas | fitted prompts] gives the map's neighbours and, for almost every
        # state, its nearest atlas row (atlas rows come first, so ties resolve as a search of the
        # atlas alone would); only states with no atlas row among them search the atlas again
        base = np.concatenate([np.asarray(self.states), self.prompt_states])
        nd, nr = knn(states, base, k=self.n_neighbors, metric=self.metric)
        # the neighbours' distances measured again one state at a time, as ``step`` measures them:
        # the map's weights hinge on which distances are exactly 0 (UMAP's rho), and a matrix
        # product rounds a state's distance to itself to 1e-16 where a vector product gives 0
        for i in range(len(states)):
            d = self.index.exact(np.asarray(states[i], dtype=np.float64), nr[i])
            order = np.lexsort((nr[i], d))
            nd[i], nr[i] = d[order], nr[i][order]
        in_atlas = (nr >= 0) & (nr < self.n)
        first = in_atlas.argmax(axis=1)
        at = np.arange(len(states))
        dist, row = nd[at, first].copy(), nr[at, first].copy()
        missing = ~in_atlas.any(axis=1)
        if missing.any():
            d2, r2 = knn(states[missing], self.states, k=1, metric=self.metric)
            dist[missing], row[missing] = d2[:, 0], r2[:, 0]
        return dist, row, self._map(states, nr, nd)
