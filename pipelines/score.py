"""`llm-maps score`: generate outputs for a run's examples and score them.

Generation runs only for rows without an output (or all with ``generate="always"``); scoring
reads stored outputs and stored choice log-likelihoods, so re-scoring with another metric or
threshold never re-runs generation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import EXAMPLES, history_entry, read_manifest, with_history
from pipelines.metrics import (TEXT_METRIC_FUNCS, metric_for, parse_metric_spec, parse_thresholds)


def _choices(value) -> list[str] | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if not isinstance(value, (list, tuple, np.ndarray)):
        return None
    return [str(v) for v in value] if len(value) else None


def _null(value) -> bool:
    """True for None / NaN / pd.NA; a list or array (even empty) is a value."""
    import pandas as pd

    if isinstance(value, (list, tuple, np.ndarray)):
        return False
    return bool(pd.isna(value))


def generate_outputs(loaded, frame, rows: np.ndarray, *, stop_strings: Sequence[str], max_new_tokens: int | Sequence[int] | np.ndarray,
                     temperature: float, top_p: float, seed: int, batch_size: int | None, max_length: int | None,
                     progress: bool = True, on_first=None) -> dict:
    """Generate for ``rows`` of ``frame`` (one continuously batched ``generate``; each row samples
    with its own stream, keyed by its row); returns column -> {row: value}. ``max_new_tokens``: one
    int, or an [N] array over the frame's rows (per-task budgets). ``on_first``: see ``generate``."""
    from tqdm.auto import tqdm

    from pipelines.generate import generate

    prompts = frame["prompt"].to_numpy()
    cols = {"output": {}, "output_token_ids": {}, "output_logprobs": {}, "stop_reason": {}}
    bar = tqdm(total=len(rows), unit="ex", desc="generate", disable=not progress, dynamic_ncols=True)
    start, n_tokens = time.perf_counter(), [0]

    def on_progress(finished: int, tokens: int) -> None:
        n_tokens[0] += tokens
        if finished:
            bar.update(finished)
            bar.set_postfix_str(f"{n_tokens[0] / max(time.perf_counter() - start, 1e-9):.1f} tok/s", refresh=False)

    stats: dict = {}
    limits = np.broadcast_to(np.asarray(max_new_tokens, dtype=np.int64), (len(frame),))[rows]
    results = generate(loaded, [prompts[i] for i in rows], max_new_tokens=[int(v) for v in limits], temperature=temperature,
                       top_p=top_p, seed=seed, stop_strings=stop_strings, max_length=max_length,
                       batch_size=batch_size, keys=[int(i) for i in rows], on_progress=on_progress, stats=stats,
                       on_first=on_first)
    bar.close()
    for i, res in zip(rows, results):
        cols["output"][i] = res.text
        cols["output_token_ids"][i] = res.token_ids
        cols["output_logprobs"][i] = [round(x, 6) for x in res.logprobs]
        cols["stop_reason"][i] = res.stop_reason
    cols["_seconds"] = time.perf_counter() - start
    cols["_tokens"] = sum(len(r.tokens) for r in results)
    cols["_slots"] = stats.get("slots")
    return cols


def choice_scores(loaded, prompts: Sequence[str], choices: Sequence[Sequence[str]], *,
                  progress: bool = True, on_first=None) -> list[list[float]]:
    """Choice log-likelihoods (rounded as stored) of each example, batched across examples.
    ``on_first``: see ``choice_loglikelihoods_batch``."""
    from tqdm.auto import tqdm

    from pipelines.generate import choice_loglikelihoods_batch

    bar = tqdm(total=len(prompts), desc="choices", unit="ex", disable=not progress, dynamic_ncols=True)
    res = choice_loglikelihoods_batch(loaded, prompts, choices, on_progress=bar.update, on_first=on_first)
    bar.close()
    return [[round(x["logprob"], 6) for x in r] for r in res]


def score_run(run_dir: str | Path, *, splits: Sequence[str] = ("test",), generate: str = "auto",
              metric: str | None = "auto", thresholds: str | None = None, max_new_tokens: int | str = 48,
              temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int | None = None,
              mc_output: str = "generate", dtype: str = "auto", device: str = "auto", progress: bool = True,
              distributed: bool = False, chunk_size: int = 512, log=print) -> dict:
    """Generate (when needed) and score; rewrites examples.parquet and the manifest atomically.

    ``mc_output="choice"``: examples scored by multiple choice are not generated; their output is
    the choice with the highest log-likelihood (as lm-eval reports it), which is much faster.
    ``distributed=True``: generation and choice log-likelihoods run in chunks of ``chunk_size``
    rows on the Celery workers of REDIS_URL (``pipelines.distributed.score_distributed``), with the
    same results as here.
    ``max_new_tokens="auto"``: a budget per task that fits its references (pipelines.budgets).
    """
    import pandas as pd

    from pipelines.build import _write_run_files, now_iso

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    frame = pd.read_parquet(run_dir / EXAMPLES)
    default, overrides = parse_metric_spec(metric)
    thr = parse_thresholds(thresholds)
    if generate not in ("auto", "always", "never"):
        raise LLMMapsError(f"--generate: must be auto, always or never, got '{generate}'")
    bad = [s for s in splits if s not in ("train", "test")]
    if bad:
        raise LLMMapsError(f"--splits: unknown split '{bad[0]}' (train, test)")
    selected = frame["split"].isin(list(splits)).to_numpy()
    if "choices" not in frame.columns:
        frame["choices"] = None
    choices = [_choices(c) for c in frame["choices"]]
    metrics = [metric_for(cat, task, ch is not None, default, overrides)
               for cat, task, ch in zip(frame["category"], frame["task"], choices)]
    for i in np.flatnonzero(selected):
        if metrics[i] == "mc" and choices[i] is None:
            raise LLMMapsError(f"{run_dir / EXAMPLES}, row {i + 1} ({frame['example_id'][i]}), field 'choices': "
                               "metric mc needs choices")
    for col in ("output_token_ids", "output_logprobs", "stop_reason", "choice_logprobs"):
        if col not in frame.columns:
            frame[col] = None
    frame["output"] = frame["output"].astype(object)
    outputs_missing = np.array([_null(v) for v in frame["output"]])
    if mc_output not in ("generate", "choice"):
        raise LLMMapsError(f"--mc-output: must be generate or choice, got '{mc_output}'")
    wants_text = selected & ~(np.array([m == "mc" for m in metrics]) & (mc_output == "choice"))
    if generate == "always":
        gen_rows = np.flatnonzero(wants_text)
    elif generate == "auto":
        gen_rows = np.flatnonzero(wants_text & outputs_missing)
    else:
        gen_rows = np.array([], dtype=int)
    mc_rows = np.array([i for i in np.flatnonzero(selected)
                        if metrics[i] == "mc" and (_null(frame["choice_logprobs"][i]) or generate == "always")],
                       dtype=int)

    loaded, gen_info = None, manifest.get("scoring", {}).get("generation")
    stops = list(manifest["prompt_template"].get("stop_strings") or [])
    gen_kwargs = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                  "stop_strings": stops, "batch_size": batch_size, "max_length": manifest.get("max_length")}
    cols, mc_values, dist_info, collector = None, None, None, None
    budgets, choices_seconds = None, None
    if len(gen_rows) or len(mc_rows):
        from pipelines.models import load_model

        if distributed:
            from llm_maps.jobs import redis_url

            if not redis_url():
                raise LLMMapsError("--distributed: set REDIS_URL to the Redis the `llm-maps worker` processes use")
        loaded = load_model(manifest["model"], revision=manifest.get("model_revision"), dtype=dtype, device=device,
                            weights=not distributed)
        mode = "greedy" if temperature == 0 else f"temperature {temperature}, top-p {top_p}"
        if max_new_tokens == "auto":
            from pipelines.budgets import BUDGET_RULE, row_budgets, task_budgets

            tasks_gen = set(frame["task"].to_numpy()[gen_rows].tolist())
            of_tasks = frame["task"].isin(tasks_gen).to_numpy()
            budgets = task_budgets(loaded.tokenizer, frame["task"][of_tasks].tolist(),
                                   frame["reference"][of_tasks].tolist())
            per_row = row_budgets(frame["task"], budgets, BUDGET_RULE["floor"])
            limit_text = (f"per-task budgets of {int(per_row[gen_rows].min())}-{int(per_row[gen_rows].max())} "
                          "new tokens (from the references)" if len(gen_rows) else "")
        else:
            per_row = int(max_new_tokens)
            limit_text = f"max {per_row} new tokens"
        if distributed:
            from pipelines.distributed import score_distributed, score_spec

            log(f"scoring on the workers of REDIS_URL: {len(gen_rows)} outputs to generate ({limit_text}, "
                f"{mode}), {len(mc_rows)} multiple-choice examples")
            spec = score_spec(manifest, dtype, device)
            cols, mc_values, dist_info = score_distributed(
                loaded, frame["prompt"].tolist(), gen_rows, {int(i): choices[i] for i in mc_rows}, run_dir,
                spec=spec, gen_kwargs=gen_kwargs, max_new_tokens=per_row, chunk_size=chunk_size, progress=progress,
                log=log)
        else:
            if generate != "never":  # first-token statistics from the passes below (train mean first)
                from pipelines.first_token import FirstTokenCollector

                collector = FirstTokenCollector.start(frame, selected, loaded=loaded, always=generate == "always",
                                                      max_length=manifest.get("max_length"), progress=progress)
            if len(gen_rows):
                log(f"generating {len(gen_rows)} outputs ({limit_text}, {mode}) on {loaded.device}")
                cols = generate_outputs(loaded, frame, gen_rows, stop_strings=stops, max_new_tokens=per_row,
                                        temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                                        max_length=manifest.get("max_length"), progress=progress,
                                        on_first=collector and collector.hook(gen_rows, "generation"))
            if len(mc_rows):
                start = time.perf_counter()
                scored = choice_scores(loaded, [frame["prompt"][i] for i in mc_rows], [choices[i] for i in mc_rows],
                                       progress=progress, on_first=collector and collector.hook(mc_rows, "choices"))
                mc_values = dict(zip(mc_rows.tolist(), scored))
                choices_seconds = time.perf_counter() - start
                log(f"scored {len(mc_rows)} multiple-choice examples by log-likelihood in {choices_seconds:.1f} s")
    if cols is not None:
        for col in ("output", "output_token_ids", "output_logprobs", "stop_reason"):
            values = frame[col].astype(object).to_numpy(copy=True)
            for i, v in cols[col].items():
                values[i] = v
            frame[col] = values
        where = dist_info or {"device": loaded.device, "dtype": loaded.dtype}
        gen_info = {"max_new_tokens": max_new_tokens,
                    **({"token_budgets": {t: b["max_new_tokens"] for t, b in budgets.items()},
                        "reference_tokens": {t: b["reference_tokens"] for t, b in budgets.items()},
                        "budget_rule": "min(ceiling, max(floor, ceil(factor * longest reference tokens) + margin))",
                        "budget_params": BUDGET_RULE} if budgets is not None else {}),
                    "stopped_by_length": int(sum(1 for v in cols["stop_reason"].values() if v == "length")),
                    "temperature": temperature, "top_p": top_p, "seed": seed,
                    "batch_size": cols["_slots"], "stop_strings": stops, "device": where["device"],
                    "dtype": where["dtype"], "seconds": round(cols["_seconds"], 2), "tokens": cols["_tokens"],
                    "tokens_per_second": round(cols.get("_new_tokens", cols["_tokens"]) / max(cols["_seconds"], 1e-9), 1),
                    **({"distributed": {k: dist_info[k] for k in ("chunks", "workers")}} if dist_info else {}),
                    "created": now_iso()}
    if mc_values is not None:
        values = frame["choice_logprobs"].astype(object).to_numpy(copy=True)
        for i, v in mc_values.items():
            values[i] = v
        frame["choice_logprobs"] = values

    ft_info = (manifest.get("scoring") or {}).get("first_token")
    if generate != "never":  # first-token statistics (entropy, top probability, KL to the train mean)
        from pipelines.first_token import add_first_token_columns
        from pipelines.models import load_model as _load_model

        try:
            loaded, ran = add_first_token_columns(  # (--distributed: the client's model has no weights)
                frame, selected, loaded=None if distributed else loaded, always=generate == "always",
                max_length=manifest.get("max_length"),
                load=lambda: _load_model(manifest["model"], revision=manifest.get("model_revision"), dtype=dtype,
                                         device=device), progress=progress, log=log,
                collector=collector, distributed=distributed)
            ft_info = ran or ft_info
        except (LLMMapsError, OSError) as exc:
            if loaded is not None or generate == "always":
                raise
            # every output is stored already (nothing else needed the model): score without the
            # first-token statistics rather than fail, and say why
            log(f"note: first-token statistics skipped: the model could not be loaded ({exc})")
    scores = np.full(len(frame), np.nan)
    used = [None] * len(frame)
    no_reference = 0
    for i in np.flatnonzero(selected):
        ref = frame["reference"][i]
        if _null(ref) or not str(ref).strip():
            no_reference += 1
            continue
        m = metrics[i]
        if m == "mc":
            lps = frame["choice_logprobs"][i]
            if _null(lps):
                continue
            lps = list(lps)
            pred = choices[i][int(np.argmax(lps))]
            scores[i] = float(pred.strip() == str(ref).strip())
            if mc_output == "choice" and _null(frame.at[i, "output"]):
                frame.at[i, "output"] = pred
        else:
            out = frame["output"][i]
            if _null(out):
                continue
            scores[i] = TEXT_METRIC_FUNCS[m](str(out), str(ref))
        used[i] = m
    frame["metric"] = used
    frame["score"] = pd.array([None if np.isnan(s) else float(s) for s in scores], dtype="Float64")
    frame["correct"] = pd.array([None if np.isnan(s) or used[i] is None else bool(s >= thr[used[i]])
                                 for i, s in enumerate(scores)], dtype="boolean")
    scored = frame["score"].notna()
    by_metric = {m: int(n) for m, n in pd.Series([u for u in used if u]).value_counts().items()}
    acc = float(frame.loc[scored, "correct"].astype(float).mean()) if scored.any() else None
    manifest = {**manifest, "scoring": {
        "splits": list(splits), "metric": metric or "auto", "metric_default": default, "metric_overrides": overrides,
        "thresholds": thr, "correct_rule": "score >= thresholds[metric]", "by_metric": by_metric,
        "scored": int(scored.sum()), "unscored_no_reference": no_reference, "accuracy": acc, "mc_output": mc_output,
        "generation": gen_info, "first_token": ft_info, "created": now_iso(),
        **({"choices": {"examples": int(len(mc_rows)), "seconds": round(choices_seconds, 2)}}
           if choices_seconds is not None
           else {"choices": manifest.get("scoring", {}).get("choices")} if manifest.get("scoring", {}).get("choices")
           else {})}}
    entry = history_entry(
        "score", {"splits": list(splits), "generate": generate, "metric": metric or "auto", "thresholds": thr,
                  "mc_output": mc_output, "max_new_tokens": max_new_tokens, "temperature": temperature,
                  "top_p": top_p, "seed": seed, "batch_size": batch_size, "generated_rows": int(len(gen_rows)),
                  "choice_rows": int(len(mc_rows))},
        {"examples": f"{EXAMPLES}:prompt,reference,output,choices", "model": manifest["model"],
         "model_revision": manifest.get("model_revision")},
        [f"{EXAMPLES}:{c}" for c in ("output", "output_token_ids", "output_logprobs", "stop_reason",
                                      "choice_logprobs", "metric", "score", "correct",
                                      "first_entropy", "first_top_prob", "first_kl_to_mean")] + ["scoring"])
    manifest = with_history(manifest, entry)
    manifest["updated"] = entry["created"]
    _write_run_files(run_dir, frame, manifest)
    return manifest["scoring"]
