"""A torch-free encoder for tests of the pipeline's plumbing (``pipelines.encoder.Encoder``).

Each prompt's encoding at layer k is a fixed function of its words: the sum of one pseudo-random
unit vector per word (seeded by the word's sha256), plus ``k`` times a vector seeded by the whole
prompt. Prompts that share words are near each other, so maps and distances have structure, and
every value is known in advance (``FakeEncoder.vector``). Tokens are whitespace words.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llm_maps.runfolder import save_npy_atomic
from pipelines.encode import EncodeResult


@lru_cache(maxsize=None)
def _unit(text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


class FakeEncoder:
    def __init__(self, *, num_layers: int = 4, hidden_size: int = 16, max_positions: int | None = 64):
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.max_positions = max_positions
        self.device = "cpu"
        self.dtype = "float32"
        self.info: dict[str, Any] = {"model": "fake", "revision": None, "file_sha256": None,
                                     "architecture": "FakeEncoder", "num_layers": num_layers,
                                     "hidden_size": hidden_size}
        self.tokenizer = None
        self.calls: list[dict[str, Any]] = []

    def tokens(self, prompt: str, add_eos: bool = False, max_length: int | None = None) -> list[str]:
        words = prompt.split() + (["<eos>"] if add_eos else [])
        return words[-max_length:] if max_length is not None else words

    def vector(self, prompt: str, layer: int, *, add_eos: bool = False, max_length: int | None = None) -> np.ndarray:
        words = self.tokens(prompt, add_eos, max_length)
        v = np.sum([_unit(w.lower(), self.hidden_size) for w in words], axis=0)
        return (v + 0.1 * layer * _unit(" ".join(words), self.hidden_size)).astype(np.float16)

    def encode(self, prompts: Sequence[str], out_dir: Path, *, layers: Sequence[int], add_eos: bool,
               max_length: int | None, batch_tokens: int | None, progress: bool,
               log: Callable[[str], Any]) -> EncodeResult:
        start = time.perf_counter()
        self.calls.append({"n": len(prompts), "layers": list(layers), "add_eos": add_eos, "max_length": max_length})
        limit = max_length or self.max_positions
        enc = Path(out_dir) / "encodings"
        enc.mkdir(parents=True, exist_ok=True)
        for k in layers:
            save_npy_atomic(enc / f"layer_{k}.npy",
                            np.stack([self.vector(p, k, add_eos=add_eos, max_length=limit) for p in prompts]))
        full = np.array([len(self.tokens(p, add_eos)) for p in prompts], dtype=np.int64)
        n_tokens = np.minimum(full, limit) if limit else full
        return EncodeResult(layers=list(layers), n_tokens=n_tokens, truncated=full > n_tokens,
                            seconds=time.perf_counter() - start, tokens_encoded=int(n_tokens.sum()),
                            resumed_rows=0, clipped_values=0)
