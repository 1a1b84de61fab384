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
from llm_maps.neighbours import METRICS


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
