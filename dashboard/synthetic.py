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


COT_CUE = "Let's think step by step."


def synthetic_conditions(frame: pd.DataFrame, names: tuple[str, ...], *, seed: int = 0,
                         paths: bool = False) -> pd.DataFrame:
    """conditions.parquet of a scored synthetic run (llm_maps/contract.py CONDITION_COLUMNS), one row
    per test example and condition, with known results:

    * ``direct``: the example's own prompt, output, score and correct (as examples.parquet keeps it);
    * ``cot``: correct with a flatter falloff than direct (seeded); every 7th test example has no
      reference under it (score and correct null): not scored;
    * ``neighbours:K``: only the first half of the test examples of each task (as ``--limit-per-task``
      leaves them), correct with a probability that falls less with distance; its prompt's own
      distance is 0.8 of the example's.

    ``paths``: each generated token on the token map (``path_x``, ``path_y``, ``path_dists`` and their
    mean and max): a walk from the example's place on it (``x_tokens``), else those columns are null."""
    rng = np.random.default_rng(seed + 7)
    test = frame[frame["split"] == "test"]
    rows = []
    for name in names:
        kind, _, arg = name.partition(":")
        if kind == "neighbours":
            rank = test.groupby("task").cumcount().to_numpy()
            size = test.groupby("task")["task"].transform("size").to_numpy()
            chosen = test[rank < (size + 1) // 2]
        else:
            chosen = test
        for pos, (i, r) in enumerate(chosen.iterrows()):
            dist = float(r["dist_to_train"])
            steep = 12.0 if r["domain"] == "Chollet" else 3.0
            if kind == "direct":
                correct, prompt, output = r["correct"], r["prompt"], r["output"]
                answer, rule, cdist = output, "output", dist
            elif kind == "cot":
                p = 1 / (1 + np.exp(-(2.0 - steep * 0.5 * dist)))
                correct = None if pos % 7 == 3 else bool(rng.random() < p)
                answer = r["reference"] if correct else "no idea"
                prompt, output = f"{r['prompt']}\n{COT_CUE}", f"First I add.\nSo the answer is {answer}."
                rule, cdist = "answer_is", dist
            else:
                p = 1 / (1 + np.exp(-(2.0 - steep * 0.3 * dist)))
                correct = bool(rng.random() < p)
                answer = r["reference"] if correct else "something"
                prompt = "".join(f"Demo {j}.\n" for j in range(int(arg))) + str(r["prompt"])
                output, rule, cdist = answer, "output", dist * 0.8
            correct = None if correct is None or pd.isna(correct) else bool(correct)
            n_tok = 3 + (i % 5) + (6 if kind == "cot" else 0)
            row = {"example_id": r["example_id"], "condition": name, "prompt": prompt, "output": output,
                   "answer": answer, "extraction": rule, "metric": "exact" if correct is not None else None,
                   "score": None if correct is None else float(correct), "correct": correct, "n_tokens": n_tok,
                   "mean_logprob": -0.1 * (1 + i % 4), "stop_reason": "eos", "choice_logprobs": None,
                   "dist_to_train": cdist, "path_dists": None, "path_mean_dist": None, "path_max_dist": None,
                   "path_x": None, "path_y": None}
            if paths:
                steps = rng.normal(size=(n_tok, 2)).cumsum(axis=0) * 0.5
                d = np.round(dist + np.abs(rng.normal(size=n_tok)) * 0.1, 6)
                row.update(path_x=(r["x_tokens"] + steps[:, 0]).tolist(), path_y=(r["y_tokens"] + steps[:, 1]).tolist(),
                           path_dists=d.tolist(), path_mean_dist=float(d.mean()), path_max_dist=float(d.max()))
            rows.append(row)
    out = pd.DataFrame(rows)
    return out.astype({"example_id": "string", "condition": "string", "prompt": "string", "output": "string",
                       "answer": "string", "extraction": "string", "metric": "string", "score": "Float64",
                       "correct": "boolean", "n_tokens": "Int64", "mean_logprob": "Float64",
                       "stop_reason": "string", "dist_to_train": "float64", "path_mean_dist": "Float64",
                       "path_max_dist": "Float64"})


def _conditions_manifest(cond: pd.DataFrame, names: tuple[str, ...], layer: int, atlas: bool) -> dict:
    info = {}
    for name in names:
        sub = cond[cond["condition"] == name]
        kind, _, arg = name.partition(":")
        scored = sub["correct"].dropna()
        entry = {"kind": kind, "max_new_tokens": 256 if kind == "cot" else 32,
                 "extraction": "answer_is" if kind == "cot" else "output", "examples": int(len(sub)),
                 "n_tasks": 0, "accuracy": float(scored.astype(bool).mean()) if len(scored) else None,
                 "seconds": 0.0, "tokens": int(sub["n_tokens"].sum()), "tokens_per_second": 0.0,
                 "created": "2025-01-01T00:00:00Z"}
        if kind == "neighbours":
            entry["k"] = int(arg)
        if kind == "cot":
            entry["cue"] = COT_CUE
        info[name] = entry
    return {"file": "conditions.parquet", "conditions": info, "limit_per_task": None, "split": "test",
            "layer": int(layer), "metric": "cosine", "atlas": bool(atlas)}


def write_synthetic_run(path: str | Path, n: int = 200, *, hidden: int = 16, layers: tuple[int, ...] = (2,),
                        seed: int = 0, scored: bool = True, k: int = 3, n_tasks: int = 12,
                        prompts: dict[int, str] | None = None, falloff: dict | None = None,
                        conditions: tuple[str, ...] | None = None, token_map: bool = False) -> Path:
    """Write a complete synthetic run folder at ``path`` and return it. ``conditions`` (e.g.
    ``("direct", "cot", "neighbours:2")``, needs ``scored``): also conditions.parquet
    (``synthetic_conditions``) and the manifest's ``conditions`` section. ``token_map``: a token map
    (``x_tokens``, ``y_tokens``, a small tokens.parquet, the manifest's ``token_atlas``), and then the
    conditions carry paths on it."""
    path = Path(path)
    (path / ENCODINGS).mkdir(parents=True, exist_ok=True)
    frame = synthetic_frame(n, seed=seed, n_tasks=n_tasks, k=k, scored=scored, prompts=prompts)
    if token_map:
        frame["x_tokens"] = frame["x"] * 0.5 + 3.0
        frame["y_tokens"] = frame["y"] * 0.5 - 2.0
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
    if token_map:
        train = frame[frame["split"] == "train"].head(5)
        tokens = pd.DataFrame({"row": train.index.to_numpy(dtype=np.int64), "example_id": train["example_id"].to_numpy(),
                               "position": np.zeros(len(train), dtype=np.int64),
                               "token_id": np.arange(len(train), dtype=np.int64),
                               "token_text": [f"tok{j}" for j in range(len(train))],
                               "x": train["x_tokens"].to_numpy() + 0.25, "y": train["y_tokens"].to_numpy() - 0.25})
        write_parquet_atomic(path / "tokens.parquet", tokens)
        manifest["token_atlas"] = {"tokens": len(tokens), "examples": len(tokens), "train_examples": len(tokens),
                                   "sampled": False, "layers": [], "map_layer": int(layers[-1]),
                                   "path": f"{ENCODINGS}/tokens", "file": "tokens.parquet",
                                   "projection": {"method": "synthetic", "fit_set": "train prompts + atlas tokens"}}
    if conditions:
        if not scored:
            raise ValueError("conditions need a scored synthetic run")
        cond = synthetic_conditions(frame, tuple(conditions), seed=seed, paths=token_map)
        write_parquet_atomic(path / "conditions.parquet", cond)
        manifest["conditions"] = _conditions_manifest(cond, tuple(conditions), int(layers[-1]), token_map)
        for name, entry in manifest["conditions"]["conditions"].items():
            entry["n_tasks"] = int(frame.loc[frame["example_id"].isin(cond.loc[cond["condition"] == name, "example_id"]),
                                              "task"].nunique())
    if falloff is not None:
        (path / "falloff.json").write_text(json.dumps(falloff), encoding="utf-8")
    write_json_atomic(path / MANIFEST, manifest)
    return path
