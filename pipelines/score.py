"""`llm-maps score`: generate outputs for a run's examples and score them.

Generation runs only for rows without an output (or all with ``generate="always"``); scoring
reads stored outputs and stored choice log-likelihoods, so re-scoring with another metric or
threshold never re-runs generation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.jobs import redis_url
from llm_maps.runfolder import EXAMPLES, history_entry, now_iso, read_manifest
from llm_maps.scoring import get_metric, metric_for, parse_metric_spec, parse_thresholds
from pipelines.budgets import BUDGET_RULE, row_budgets, task_budgets
from pipelines.distributed import score_distributed, score_spec
from pipelines.first_token import FirstTokenCollector, add_first_token_columns
from pipelines.generate import choice_loglikelihoods_batch, generate
from pipelines.models import load_model
from pipelines.runwrite import commit_run_files


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

    bar = tqdm(total=len(prompts), desc="choices", unit="ex", disable=not progress, dynamic_ncols=True)
    res = choice_loglikelihoods_batch(loaded, prompts, choices, on_progress=bar.update, on_first=on_first)
    bar.close()
    return [[round(x["logprob"], 6) for x in r] for r in res]


@dataclass
class ScorePlan:
    """What `score` does to a run, decided before any model is loaded: the examples it scores
    (``selected``), each one's metric and choices, the rows to generate and the rows whose choice
    log-likelihoods a model-based metric needs."""
    run_dir: Path
    manifest: dict
    frame: Any
    splits: list[str]
    generate: str
    metric: str
    default: str
    overrides: dict
    thresholds: dict
    mc_output: str
    selected: np.ndarray
    choices: list
    metrics: list[str]
    gen_rows: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    choice_rows: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))


@dataclass(frozen=True)
class GenerationSettings:
    """How `score` runs the model (``score_run``'s arguments of the same names)."""
    max_new_tokens: int | str = 48
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    distributed: bool = False
    chunk_size: int = 512
    progress: bool = True


@dataclass
class ModelPasses:
    """What the model computed for a plan: generation columns (as ``generate_outputs`` gives them),
    {row: choice log-likelihoods}, where it ran and the first-token statistics' collector."""
    loaded: Any = None
    cols: dict | None = None
    choice_values: dict | None = None
    dist_info: dict | None = None
    collector: Any = None
    budgets: dict | None = None
    choices_seconds: float | None = None


def plan_score(run_dir: str | Path, *, splits: Sequence[str] = ("test",), generate: str = "auto",
               metric: str | None = "auto", thresholds: str | None = None, mc_output: str = "generate") -> ScorePlan:
    """Read the run and decide what to score, generate and compute (one-line errors before any work)."""
    import pandas as pd

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
        if get_metric(metrics[i]).uses_choices and choices[i] is None:
            raise LLMMapsError(f"{run_dir / EXAMPLES}, row {i + 1} ({frame['example_id'][i]}), field 'choices': "
                               f"metric {metrics[i]} needs choices")
    for col in ("output_token_ids", "output_logprobs", "stop_reason", "choice_logprobs"):
        if col not in frame.columns:
            frame[col] = None
    frame["output"] = frame["output"].astype(object)
    if mc_output not in ("generate", "choice"):
        raise LLMMapsError(f"--mc-output: must be generate or choice, got '{mc_output}'")
    plan = ScorePlan(run_dir, manifest, frame, list(splits), generate, metric or "auto", default, overrides, thr,
                     mc_output, selected, choices, metrics)
    plan.gen_rows, plan.choice_rows = _rows_to_compute(plan)
    return plan


def _rows_to_compute(plan: ScorePlan) -> tuple[np.ndarray, np.ndarray]:
    """Rows to generate (their output is missing, or all with ``generate="always"``; not the rows of
    a choice-based metric under ``mc_output="choice"``) and rows whose choice log-likelihoods to
    compute (missing, or all with ``always``)."""
    frame, selected = plan.frame, plan.selected
    by_choice = np.array([get_metric(m).uses_choices for m in plan.metrics], dtype=bool)
    wants_text = selected & ~(by_choice & (plan.mc_output == "choice"))
    if plan.generate == "always":
        gen_rows = np.flatnonzero(wants_text)
    elif plan.generate == "auto":
        gen_rows = np.flatnonzero(wants_text & np.array([_null(v) for v in frame["output"]], dtype=bool))
    else:
        gen_rows = np.array([], dtype=int)
    choice_rows = np.array([i for i in np.flatnonzero(selected)
                            if by_choice[i] and (_null(frame["choice_logprobs"][i]) or plan.generate == "always")],
                           dtype=int)
    return gen_rows, choice_rows


def _token_limits(plan: ScorePlan, loaded, max_new_tokens: int | str) -> tuple[np.ndarray | int, dict | None, str]:
    """New-token limits (one, or per row for ``"auto"``: per-task budgets from the references), the
    budgets and how to say them."""
    frame, gen_rows = plan.frame, plan.gen_rows
    if max_new_tokens != "auto":
        return int(max_new_tokens), None, f"max {int(max_new_tokens)} new tokens"
    tasks_gen = set(frame["task"].to_numpy()[gen_rows].tolist())
    of_tasks = frame["task"].isin(tasks_gen).to_numpy()
    budgets = task_budgets(loaded.tokenizer, frame["task"][of_tasks].tolist(), frame["reference"][of_tasks].tolist())
    per_row = row_budgets(frame["task"], budgets, BUDGET_RULE["floor"])
    text = (f"per-task budgets of {int(per_row[gen_rows].min())}-{int(per_row[gen_rows].max())} "
            "new tokens (from the references)" if len(gen_rows) else "")
    return per_row, budgets, text


def _gen_kwargs(plan: ScorePlan, gen: GenerationSettings) -> dict:
    return {"max_new_tokens": gen.max_new_tokens, "temperature": gen.temperature, "top_p": gen.top_p,
            "seed": gen.seed, "stop_strings": _stops(plan), "batch_size": gen.batch_size,
            "max_length": plan.manifest.get("max_length")}


def _stops(plan: ScorePlan) -> list[str]:
    return list(plan.manifest["prompt_template"].get("stop_strings") or [])


def run_model_passes(plan: ScorePlan, gen: GenerationSettings, *, log=print) -> ModelPasses:
    """Generate ``plan.gen_rows`` and compute the choice log-likelihoods of ``plan.choice_rows``: here
    (with the first-token statistics collected from the same forwards) or on the workers."""
    passes = ModelPasses()
    if not (len(plan.gen_rows) or len(plan.choice_rows)):
        return passes
    manifest = plan.manifest
    if gen.distributed and not redis_url():
        raise LLMMapsError("--distributed: set REDIS_URL to the Redis the `llm-maps worker` processes use")
    passes.loaded = loaded = load_model(manifest["model"], revision=manifest.get("model_revision"), dtype=gen.dtype,
                                        device=gen.device, weights=not gen.distributed)
    mode = "greedy" if gen.temperature == 0 else f"temperature {gen.temperature}, top-p {gen.top_p}"
    limits, passes.budgets, limit_text = _token_limits(plan, loaded, gen.max_new_tokens)
    if gen.distributed:
        log(f"scoring on the workers of REDIS_URL: {len(plan.gen_rows)} outputs to generate ({limit_text}, "
            f"{mode}), {len(plan.choice_rows)} multiple-choice examples")
        passes.cols, passes.choice_values, passes.dist_info = score_distributed(
            loaded, plan.frame["prompt"].tolist(), plan.gen_rows,
            {int(i): plan.choices[i] for i in plan.choice_rows}, plan.run_dir,
            spec=score_spec(manifest, gen.dtype, gen.device), gen_kwargs=_gen_kwargs(plan, gen),
            max_new_tokens=limits, chunk_size=gen.chunk_size, progress=gen.progress, log=log)
        return passes
    if plan.generate != "never":  # first-token statistics from the passes below (train mean first)
        passes.collector = FirstTokenCollector.start(plan.frame, plan.selected, loaded=loaded,
                                                     always=plan.generate == "always",
                                                     max_length=manifest.get("max_length"), progress=gen.progress)
    hook = passes.collector.hook if passes.collector is not None else (lambda rows, source: None)
    if len(plan.gen_rows):
        log(f"generating {len(plan.gen_rows)} outputs ({limit_text}, {mode}) on {loaded.device}")
        passes.cols = generate_outputs(loaded, plan.frame, plan.gen_rows, stop_strings=_stops(plan),
                                       max_new_tokens=limits, temperature=gen.temperature, top_p=gen.top_p,
                                       seed=gen.seed, batch_size=gen.batch_size,
                                       max_length=manifest.get("max_length"), progress=gen.progress,
                                       on_first=hook(plan.gen_rows, "generation"))
    if len(plan.choice_rows):
        rows = plan.choice_rows
        start = time.perf_counter()
        scored = choice_scores(loaded, [plan.frame["prompt"][i] for i in rows], [plan.choices[i] for i in rows],
                               progress=gen.progress, on_first=hook(rows, "choices"))
        passes.choice_values = dict(zip(rows.tolist(), scored))
        passes.choices_seconds = time.perf_counter() - start
        log(f"scored {len(rows)} multiple-choice examples by log-likelihood in {passes.choices_seconds:.1f} s")
    return passes


def store_passes(plan: ScorePlan, passes: ModelPasses, gen: GenerationSettings) -> dict | None:
    """Write the passes' outputs and choice log-likelihoods into the plan's frame; returns the
    manifest's ``scoring.generation`` (the run's earlier one when nothing was generated)."""
    frame, cols = plan.frame, passes.cols
    gen_info = plan.manifest.get("scoring", {}).get("generation")
    if cols is not None:
        for col in ("output", "output_token_ids", "output_logprobs", "stop_reason"):
            _set_rows(frame, col, cols[col])
        gen_info = _generation_info(plan, passes, gen)
    if passes.choice_values is not None:
        _set_rows(frame, "choice_logprobs", passes.choice_values)
    return gen_info


def _set_rows(frame, col: str, values_by_row: dict) -> None:
    values = frame[col].astype(object).to_numpy(copy=True)
    for i, v in values_by_row.items():
        values[i] = v
    frame[col] = values


def _generation_info(plan: ScorePlan, passes: ModelPasses, gen: GenerationSettings) -> dict:
    cols, budgets, dist_info = passes.cols, passes.budgets, passes.dist_info
    where = dist_info or {"device": passes.loaded.device, "dtype": passes.loaded.dtype}
    return {"max_new_tokens": gen.max_new_tokens,
            **({"token_budgets": {t: b["max_new_tokens"] for t, b in budgets.items()},
                "reference_tokens": {t: b["reference_tokens"] for t, b in budgets.items()},
                "budget_rule": "min(ceiling, max(floor, ceil(factor * longest reference tokens) + margin))",
                "budget_params": BUDGET_RULE} if budgets is not None else {}),
            "stopped_by_length": int(sum(1 for v in cols["stop_reason"].values() if v == "length")),
            "temperature": gen.temperature, "top_p": gen.top_p, "seed": gen.seed,
            "batch_size": cols["_slots"], "stop_strings": _stops(plan), "device": where["device"],
            "dtype": where["dtype"], "seconds": round(cols["_seconds"], 2), "tokens": cols["_tokens"],
            "tokens_per_second": round(cols.get("_new_tokens", cols["_tokens"]) / max(cols["_seconds"], 1e-9), 1),
            **({"distributed": {k: dist_info[k] for k in ("chunks", "workers")}} if dist_info else {}),
            "created": now_iso()}


def first_token_statistics(plan: ScorePlan, passes: ModelPasses, gen: GenerationSettings, *, log=print) -> dict | None:
    """Entropy, top probability and KL to the train mean of the next-token distribution after each
    prompt (from the collector, else a pass of their own); returns the manifest's
    ``scoring.first_token`` (the run's earlier one when nothing ran)."""
    manifest = plan.manifest
    ft_info = (manifest.get("scoring") or {}).get("first_token")
    if plan.generate == "never":
        return ft_info
    loaded = passes.loaded
    try:
        loaded, ran = add_first_token_columns(  # (--distributed: the client's model has no weights)
            plan.frame, plan.selected, loaded=None if gen.distributed else loaded, always=plan.generate == "always",
            max_length=manifest.get("max_length"),
            load=lambda: load_model(manifest["model"], revision=manifest.get("model_revision"), dtype=gen.dtype,
                                    device=gen.device), progress=gen.progress, log=log,
            collector=passes.collector, distributed=gen.distributed)
        return ran or ft_info
    except (LLMMapsError, OSError) as exc:
        if loaded is not None or plan.generate == "always":
            raise
        # every output is stored already (nothing else needed the model): score without the
        # first-token statistics rather than fail, and say why
        log(f"note: first-token statistics skipped: the model could not be loaded ({exc})")
        return ft_info


def score_examples(plan: ScorePlan) -> dict:
    """Score every selected example with its metric (a text metric: its output; a model-based
    one: the choice it picks from the stored log-likelihoods, which under ``mc_output="choice"``
    becomes a missing output); sets ``metric``, ``score`` and ``correct``. Returns the counts."""
    import pandas as pd

    frame = plan.frame
    scores = np.full(len(frame), np.nan)
    used: list[str | None] = [None] * len(frame)
    no_reference = 0
    for i in np.flatnonzero(plan.selected):
        ref = frame["reference"][i]
        if _null(ref) or not str(ref).strip():
            no_reference += 1
            continue
        metric = get_metric(plan.metrics[i])
        if metric.uses_choices:
            lps = frame["choice_logprobs"][i]
            if _null(lps):
                continue
            answer = metric.answer(plan.choices[i], list(lps))
            if plan.mc_output == "choice" and _null(frame.at[i, "output"]):
                frame.at[i, "output"] = answer
        else:
            answer = frame["output"][i]
            if _null(answer):
                continue
        scores[i] = metric.score(str(answer), str(ref))
        used[i] = metric.name
    thr = plan.thresholds
    frame["metric"] = used
    frame["score"] = pd.array([None if np.isnan(s) else float(s) for s in scores], dtype="Float64")
    frame["correct"] = pd.array([None if np.isnan(s) or used[i] is None else bool(s >= thr[used[i]])
                                 for i, s in enumerate(scores)], dtype="boolean")
    scored = frame["score"].notna()
    return {"by_metric": {m: int(n) for m, n in pd.Series([u for u in used if u]).value_counts().items()},
            "scored": int(scored.sum()), "unscored_no_reference": no_reference,
            "accuracy": float(frame.loc[scored, "correct"].astype(float).mean()) if scored.any() else None}


def record_scoring(plan: ScorePlan, gen: GenerationSettings, passes: ModelPasses, *, generation: dict | None,
                   first_token: dict | None, counts: dict, given: dict | None = None) -> dict:
    """The manifest's ``scoring`` section and a ``score`` history entry; examples.parquet and the
    manifest written atomically. Returns the section."""
    manifest, old = plan.manifest, plan.manifest.get("scoring", {})
    seconds = passes.choices_seconds
    manifest = {**manifest, "scoring": {
        "splits": plan.splits, "metric": plan.metric, "metric_default": plan.default,
        "metric_overrides": plan.overrides, "thresholds": plan.thresholds,
        "correct_rule": "score >= thresholds[metric]", "by_metric": counts["by_metric"], "scored": counts["scored"],
        "unscored_no_reference": counts["unscored_no_reference"], "accuracy": counts["accuracy"],
        "mc_output": plan.mc_output, "generation": generation, "first_token": first_token, "created": now_iso(),
        **({"choices": {"examples": int(len(plan.choice_rows)), "seconds": round(seconds, 2)}}
           if seconds is not None else {"choices": old.get("choices")} if old.get("choices") else {})}}
    entry = history_entry(
        "score", {"splits": plan.splits, "generate": plan.generate, "metric": plan.metric,
                  "thresholds": plan.thresholds, "mc_output": plan.mc_output, "max_new_tokens": gen.max_new_tokens,
                  "temperature": gen.temperature, "top_p": gen.top_p, "seed": gen.seed, "batch_size": gen.batch_size,
                  "generated_rows": int(len(plan.gen_rows)), "choice_rows": int(len(plan.choice_rows)),
                  **({"given": dict(given)} if given is not None else {})},
        {"examples": f"{EXAMPLES}:prompt,reference,output,choices", "model": manifest["model"],
         "model_revision": manifest.get("model_revision")},
        [f"{EXAMPLES}:{c}" for c in ("output", "output_token_ids", "output_logprobs", "stop_reason",
                                      "choice_logprobs", "metric", "score", "correct",
                                      "first_entropy", "first_top_prob", "first_kl_to_mean")] + ["scoring"])
    commit_run_files(plan.run_dir, plan.frame, manifest, entry)
    return manifest["scoring"]


def score_run(run_dir: str | Path, *, splits: Sequence[str] = ("test",), generate: str = "auto",
              metric: str | None = "auto", thresholds: str | None = None, max_new_tokens: int | str = 48,
              temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, batch_size: int | None = None,
              mc_output: str = "generate", dtype: str = "auto", device: str = "auto", progress: bool = True,
              distributed: bool = False, chunk_size: int = 512, log=print, given: dict | None = None) -> dict:
    """Generate (when needed) and score; rewrites examples.parquet and the manifest atomically:
    ``plan_score`` → ``run_model_passes`` → ``score_examples`` → ``record_scoring``.

    ``metric``: a registered metric (``llm_maps.scoring``), ``auto``, or per category/task overrides.
    ``mc_output="choice"``: examples scored by multiple choice are not generated; their output is
    the choice with the highest log-likelihood (as lm-eval reports it), which is much faster.
    ``distributed=True``: generation and choice log-likelihoods run in chunks of ``chunk_size``
    rows on the Celery workers of REDIS_URL (``pipelines.distributed.score_distributed``), with the
    same results as here.
    ``max_new_tokens="auto"``: a budget per task that fits its references (pipelines.budgets).
    """
    plan = plan_score(run_dir, splits=splits, generate=generate, metric=metric, thresholds=thresholds,
                      mc_output=mc_output)
    gen = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                             batch_size=batch_size, dtype=dtype, device=device, distributed=distributed,
                             chunk_size=chunk_size, progress=progress)
    passes = run_model_passes(plan, gen, log=log)
    generation = store_passes(plan, passes, gen)
    first_token = first_token_statistics(plan, passes, gen, log=log)
    counts = score_examples(plan)
    return record_scoring(plan, gen, passes, generation=generation, first_token=first_token, counts=counts,
                          given=given)
