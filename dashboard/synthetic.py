"""A valid synthetic run folder of N points, for tests and benchmarks (numpy/pandas only).

Follows the run-folder contract (docs/run-folder.md) without a model: clustered 2-D positions, a
distance to train that grows with the distance from the cluster centre, scores whose accuracy falls
with that distance (steeply in the Chollet domain, gently in the Reasoning domain).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from llm_maps.runfolder import (ENCODINGS, EXAMPLES, FORMAT_VERSION, MANIFEST, layer_file,
                                write_json_atomic, write_parquet_atomic)

CATEGORIES = {"classification": "Chollet", "arithmetic": "Chollet", "open_qa": "Chollet",
              "summarization": "Reasoning", "creative_writing": "Reasoning", "programming": "Reasoning"}


def synthetic_frame(n: int, *, seed: int = 0, n_tasks: int = 12, k: int = 3, scored: bool = True,
                    test_fraction: float = 0.4, prompts: dict[int, str] | None = None) -> pd.DataFrame:
    """The examples table of a synthetic run ([n] rows, required columns + a few extras)."""
    rng = np.random.default_rng(seed)
    cats = list(CATEGORIES)
    task_cat = [cats[t % len(cats)] for t in range(n_tasks)]
    task = rng.integers(0, n_tasks, size=n)
    centres = rng.uniform(-20, 20, size=(n_tasks, 2))
    spread = rng.normal(size=(n, 2)) * rng.uniform(0.5, 3.0, size=n_tasks)[task, None]
    xy = centres[task] + spread
    split = np.where(rng.random(n) < test_fraction, "test", "train")
    if (split == "train").sum() < 2:
        split[:2] = "train"
    dist = (np.hypot(spread[:, 0], spread[:, 1]) / 10 + rng.random(n) * 0.02).astype(np.float64)
    category = np.array(task_cat, dtype=object)[task]
    domain = np.array([CATEGORIES[c] for c in category], dtype=object)
    task_names = np.array([f"{task_cat[t]}/task_{t:02d}" for t in range(n_tasks)], dtype=object)[task]
    ids = np.array([f"ex-{i:07d}" for i in range(n)], dtype=object)
    prompt = [f"Prompt {i} of {task_names[i]}: what is {i % 97} plus {i % 13}?\nSecond line {i}."
              for i in range(n)]
    for i, text in (prompts or {}).items():
        prompt[i] = text
    train_rows = np.flatnonzero(split == "train")
    nn = train_rows[(np.arange(n)[:, None] * 7 + np.arange(1, k + 1)[None, :] * 13) % len(train_rows)]
    nn = np.where(nn == np.arange(n)[:, None], train_rows[0] if train_rows[0] != 0 else train_rows[1], nn)
    frame = pd.DataFrame({
        "example_id": ids, "split": split, "task": task_names, "category": category, "domain": domain,
        "prompt": prompt, "reference": [str((i % 97) + (i % 13)) for i in range(n)],
        "output": pd.array([None] * n, dtype="string"), "score": pd.array([None] * n, dtype="Float64"),
        "correct": pd.array([None] * n, dtype="boolean"),
        "x": xy[:, 0], "y": xy[:, 1], "dist_to_train": dist,
        "nn_train_ids": list(ids[nn]),
        "nn_train_dists": list(np.sort(dist[nn], axis=1) + dist[:, None]),
    })
    if scored:
        steep = np.where(domain == "Chollet", 12.0, 3.0)
        p = 1 / (1 + np.exp(-(2.0 - steep * dist)))
        score = (rng.random(n) < p).astype(float)
        frame["score"] = pd.array(score, dtype="Float64")
        frame["correct"] = pd.array(score > 0.5, dtype="boolean")
        frame["output"] = pd.array([f"answer {i}" * (1 + i % 4) for i in range(n)], dtype="string")
    return frame


def write_synthetic_run(path: str | Path, n: int = 200, *, hidden: int = 16, layers: tuple[int, ...] = (2,),
                        seed: int = 0, scored: bool = True, k: int = 3, n_tasks: int = 12,
                        prompts: dict[int, str] | None = None, falloff: dict | None = None) -> Path:
    """Write a complete synthetic run folder at ``path`` and return it."""
    path = Path(path)
    (path / ENCODINGS).mkdir(parents=True, exist_ok=True)
    frame = synthetic_frame(n, seed=seed, n_tasks=n_tasks, k=k, scored=scored, prompts=prompts)
    write_parquet_atomic(path / EXAMPLES, frame)
    rng = np.random.default_rng(seed + 1)
    for layer in layers:
        out = np.lib.format.open_memmap(layer_file(path, layer), mode="w+", dtype=np.float16, shape=(n, hidden))
        for start in range(0, n, 65536):
            stop = min(n, start + 65536)
            out[start:stop] = rng.normal(size=(stop - start, hidden)).astype(np.float16)
        out.flush()
        del out
    counts = frame["split"].value_counts()
    manifest = {
        "format_version": FORMAT_VERSION, "model": "synthetic/no-model", "dtype": "float16", "device": "cpu",
        "prompt_template": {"name": "plain", "stop_strings": []}, "pooling": "last", "add_eos": False, "max_length": 2048,
        "truncation_side": "left", "layers": list(layers), "default_layer": int(layers[-1]),
        "projection": {"method": "synthetic", "metric": "cosine", "fit_on": "train", "layer": int(layers[-1])},
        "distance_metric": "cosine", "split_rule": {"method": "example"},
        "domain_map": {"categories": CATEGORIES, "unknown_categories": {}},
        "sources": [{"kind": "synthetic", "id": f"dashboard.synthetic(n={n}, seed={seed})", "rows": n}],
        "counts": {"examples": n, "train": int(counts.get("train", 0)), "test": int(counts.get("test", 0)),
                   "tasks": int(frame["task"].nunique()), "truncated": 0,
                   "by_domain": {str(k_): int(v) for k_, v in frame["domain"].value_counts().sort_index().items()},
                   "by_split_domain": {f"{s_}/{d}": int(v) for (s_, d), v in
                                       frame.groupby(["split", "domain"]).size().sort_index().items()},
                   "by_category": {str(k_): int(v) for k_, v in frame["category"].value_counts().sort_index().items()}},
        "versions": {"numpy": np.__version__, "pandas": pd.__version__}, "created": "2025-01-01T00:00:00Z",
    }
    if falloff is not None:
        (path / "falloff.json").write_text(json.dumps(falloff), encoding="utf-8")
    write_json_atomic(path / MANIFEST, manifest)
    return path
