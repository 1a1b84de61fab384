"""`llm-maps score RUN --conditions direct,cot,neighbours:3`: the test set under other conditions.

For each requested condition and each selected test example (``--limit-per-task N``: the first N
of each task, in row order, the same rows for every condition), build the conditioned prompt
(``llm_maps.conditions`` says how), generate with the run's one generator (greedy, continuous
batching, ``pipelines.score.generate_outputs``), take the answer (CoT: ``extract_answer``;
multiple choice: the choice log-likelihoods of ``pipelines.score.choice_scores``), score it with
the example's metric and the run's thresholds, encode the conditioned prompt as build encodes
prompts (its own distance to train) and, with a token atlas, measure every generated token's
state against the atlas (``TokenAtlas.steps``). ``direct`` rows are what ``score`` stored.

Rows already in conditions.parquet are skipped unless ``rescore``; the file and then the manifest
are rewritten atomically.

``distributed=True`` (``score RUN --conditions ... --distributed``): each condition's generation and
multiple-choice log-likelihoods go to the Celery workers of REDIS_URL in chunks
(``pipelines.distributed.score_distributed``, one work folder per condition and pass under
``RUN/.distributed-conditions``, kept until conditions.parquet is written, so that a re-run after an
interruption resumes every finished pass and chunk); the conditioned prompts' encodings and the
token-atlas paths stay in this process (they need the weights here).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from llm_maps.conditions import (CONDITIONS_FILE, COT, DEFAULT_COT_CUE, DEFAULT_COT_MAX_NEW_TOKENS, DIRECT,
                                 Condition, cot_choice_prompt, cot_prompt, extract_answer, is_numeric, parse_conditions,
                                 read_conditions)
from llm_maps.errors import LLMMapsError
from llm_maps.jobs import redis_url
from llm_maps.neighbours import knn
from llm_maps.runfolder import EXAMPLES, Run, now_iso, record_stage
from llm_maps.scoring import example_metric, get_metric, run_thresholds
from pipelines.distributed import score_distributed, score_spec
from pipelines.encode import batch_limits, encode_prompts, pad_token_id, plan_batches, tokenize_prompts
from pipelines.models import load_model
from pipelines.nearest import TokenAtlas
from pipelines.score import _choices, _null, choice_scores, generate_outputs
from pipelines.templates import PromptTemplate
from pipelines.views import states_at

WORK_DIR = ".distributed-conditions"  # score --conditions --distributed: one sub-folder per condition and pass
COLUMNS = ("example_id", "condition", "prompt", "output", "answer", "extraction", "metric", "score", "correct",
           "n_tokens", "mean_logprob", "stop_reason", "choice_logprobs", "dist_to_train", "path_dists",
           "path_mean_dist", "path_max_dist", "path_x", "path_y")


def select_rows(frame, *, split: str = "test", limit_per_task: int | None = None,
                tasks: Sequence[str] | None = None) -> np.ndarray:
    """Rows of ``split`` with a reference (of ``tasks`` when given); with ``limit_per_task`` the
    first N of each task (row order)."""
    refs = frame["reference"]
    ok = (frame["split"] == split).to_numpy() & np.array([not _null(r) and bool(str(r).strip()) for r in refs])
    if tasks is not None:
        unknown = sorted(set(tasks) - set(frame["task"].astype(str)))
        if unknown:
            raise LLMMapsError(f"--tasks: no task '{unknown[0]}' in the run")
        ok &= frame["task"].astype(str).isin(list(tasks)).to_numpy()
    rows = np.flatnonzero(ok)
    if limit_per_task is not None:
        if limit_per_task < 1:
            raise LLMMapsError(f"--limit-per-task: must be >= 1, got {limit_per_task}")
        rank = frame.iloc[rows].groupby("task", sort=False).cumcount().to_numpy()
        rows = rows[rank < limit_per_task]
    return rows


def neighbour_prompts(frame, rows: np.ndarray, k: int, template, tokenizer=None) -> list[str]:
    """The ``neighbours:k`` prompt of each of ``rows``: its k nearest train examples (``nn_train_ids``,
    nearest first) as demonstrations, then its own instruction and context, in the run's template.
    A run without instructions (an lm-eval import) uses each stored prompt followed by its reference."""
    ids = frame["example_id"].astype(str).to_numpy()
    where = {e: i for i, e in enumerate(ids)}
    has_text = "instruction" in frame.columns
    out = []
    for r in rows:
        nn = frame["nn_train_ids"].iloc[r]
        nn = [] if _null(nn) else [str(x) for x in nn]
        if len(nn) < k:
            raise LLMMapsError(f"{EXAMPLES}, row {r + 1} ({ids[r]}), field 'nn_train_ids': {len(nn)} neighbours stored, "
                               f"neighbours:{k} needs {k} (re-run `llm-maps neighbours RUN --k {k}`)")
        demos = []
        for e in nn[:k]:
            j = where.get(e)
            if j is None:
                raise LLMMapsError(f"{EXAMPLES}, row {r + 1}, field 'nn_train_ids': '{e}' is not an example of the run")
            demos.append(j)
        if has_text:
            shots = [(str(frame["instruction"].iloc[j]), _text(frame["context"].iloc[j]) if "context" in frame.columns
                      else "", str(frame["reference"].iloc[j])) for j in demos]
            ctx = _text(frame["context"].iloc[r]) if "context" in frame.columns else ""
            out.append(template.render_with_demonstrations(shots, str(frame["instruction"].iloc[r]), ctx,
                                                           tokenizer=tokenizer))
        else:
            shots_text = "".join(f"{frame['prompt'].iloc[j]}{str(frame['reference'].iloc[j]).strip()}\n\n" for j in demos)
            out.append(shots_text + str(frame["prompt"].iloc[r]))
    return out


def _text(value) -> str:
    return "" if _null(value) else str(value)


def continuation_states(loaded, prompts: Sequence[str], continuations: Sequence[Sequence[int]], *, layer: int,
                        max_length: int | None) -> list[np.ndarray]:
    """For each (prompt, generated token ids): the state [n, H] (fp16-rounded) of every generated
    token at ``layer`` as it is fed back after the prompt (the path a generation takes: what
    ``generate(hidden_layer=...)`` records), teacher-forced in length-sorted batches. Tokens cut
    off by ``max_length`` (the last ``max_length`` of prompt + output kept) are absent."""
    ids, _ = tokenize_prompts(loaded.tokenizer, prompts)
    seqs, positions = [], []
    for p, c in zip(ids, continuations):
        seq = list(p) + [int(t) for t in c]
        cut = max(0, len(seq) - max_length) if max_length else 0
        seqs.append(seq[cut:])
        positions.append([j - cut for j in range(len(p), len(seq)) if j >= cut])
    out: list[np.ndarray] = [np.zeros((0, int(loaded.model.config.hidden_size)), dtype=np.float32)] * len(seqs)
    todo = [i for i, pos in enumerate(positions) if pos]
    batch_tokens, max_batch = batch_limits(loaded.device)
    pad = pad_token_id(loaded.tokenizer)
    for batch in plan_batches([len(seqs[i]) for i in todo], batch_tokens=batch_tokens, max_batch=max_batch):
        rows = [todo[b] for b in batch]
        states = states_at(loaded.model, [seqs[i] for i in rows], [positions[i] for i in rows], [layer], pad_id=pad,
                           device=loaded.device)[layer]
        for i, s in zip(rows, states):
            out[i] = s.astype(np.float16).astype(np.float32)
    return out


class _Passes:
    """Where a condition's generation and multiple-choice log-likelihoods run: in this process
    (``score.generate_outputs`` / ``score.choice_scores``) or, ``distributed``, on the Celery workers
    (``distributed.score_distributed`` in ``RUN/.distributed-conditions/<condition>.<pass>``, kept
    for a re-run until ``done``); ``ran`` counts each condition's chunks and workers."""

    def __init__(self, run_dir: Path, *, distributed: bool, chunk_size: int, spec: dict, progress: bool, log):
        self.run_dir, self.distributed, self.chunk_size = run_dir, distributed, chunk_size
        self.spec, self.progress, self.log = spec, progress, log
        self.ran: dict[str, dict] = {}

    def _dispatch(self, loaded, name: str, step: str, prompts: Sequence[str], gen_rows, mc_choices: dict, *,
                  gen_kwargs: dict, max_new_tokens):
        cols, mc_values, info = score_distributed(
            loaded, prompts, gen_rows, mc_choices, self.run_dir, spec=self.spec, gen_kwargs=gen_kwargs,
            max_new_tokens=max_new_tokens, chunk_size=self.chunk_size,
            folder=f"{WORK_DIR}/{name.replace(':', '-')}.{step}", keep=True, progress=self.progress, log=self.log)
        ran = self.ran.setdefault(name, {"chunks": 0, "workers": set()})
        ran["chunks"] += int(info["chunks"])
        ran["workers"] |= set(info["workers"])
        return cols, mc_values

    def generate(self, loaded, name: str, prompts: Sequence[str], rows: np.ndarray, *, stops: list[str],
                 max_new_tokens: np.ndarray | int, batch_size: int | None, max_length: int | None) -> dict:
        """Greedy outputs of ``prompts[rows]`` (``max_new_tokens``: one limit or one per prompt), as
        ``score.generate_outputs`` returns them."""
        import pandas as pd

        if not self.distributed:
            return generate_outputs(loaded, pd.DataFrame({"prompt": list(prompts)}), rows, stop_strings=stops,
                                    max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0, seed=0,
                                    batch_size=batch_size, max_length=max_length, progress=self.progress)
        gen_kwargs = {"max_new_tokens": max_new_tokens if isinstance(max_new_tokens, int) else "per row",
                      "temperature": 0.0, "top_p": 1.0, "seed": 0, "stop_strings": stops, "batch_size": batch_size,
                      "max_length": max_length}
        cols, _ = self._dispatch(loaded, name, "generate", prompts, rows, {}, gen_kwargs=gen_kwargs,
                                 max_new_tokens=max_new_tokens)
        return cols

    def choice_lls(self, loaded, name: str, prompts: Sequence[str], choices: Sequence[Sequence[str]]
                   ) -> list[list[float]]:
        """Each prompt's choice log-likelihoods (rounded as stored), as ``score.choice_scores`` gives them."""
        if not self.distributed:
            return choice_scores(loaded, prompts, choices, progress=self.progress)
        _, values = self._dispatch(loaded, name, "choices", prompts, [], dict(enumerate(choices)), gen_kwargs={},
                                   max_new_tokens=0)  # no generation in this pass
        return [values[i] for i in range(len(prompts))]

    def info(self, name: str) -> dict:
        """The condition's manifest record of where it ran (nothing for a local run)."""
        ran = self.ran.get(name)
        return {"distributed": {"chunks": ran["chunks"], "workers": sorted(ran["workers"])}} if ran else {}

    def done(self) -> None:
        shutil.rmtree(self.run_dir / WORK_DIR, ignore_errors=True)


class _Model:
    """The run's model, loaded on first use (a run of direct rows without an atlas needs none)."""

    def __init__(self, manifest: dict, dtype: str, device: str, loaded=None):
        self.manifest, self.dtype, self.device, self._loaded = manifest, dtype, device, loaded

    def __call__(self):
        if self._loaded is None:
            self._loaded = load_model(self.manifest["model"], revision=self.manifest.get("model_revision"),
                                      dtype=self.dtype, device=self.device)
        return self._loaded


def score_conditions(run_dir: str | Path, *, conditions: str | Sequence[str] = "direct,cot",
                     cot_cue: str = DEFAULT_COT_CUE, cot_max_new_tokens: int = DEFAULT_COT_MAX_NEW_TOKENS,
                     limit_per_task: int | None = None, tasks: Sequence[str] | None = None,
                     rescore: bool = False, batch_size: int | None = None,
                     dtype: str = "auto", device: str = "auto", distributed: bool = False, chunk_size: int = 512,
                     progress: bool = True, log=print, loaded=None, given: dict | None = None) -> dict:
    """Score the run's test examples under ``conditions``; returns the manifest's conditions section.
    ``distributed``: generation and multiple choice in chunks of ``chunk_size`` rows on the Celery
    workers of REDIS_URL (the same results as here)."""
    run_dir = Path(run_dir)
    run = Run(run_dir)
    manifest = dict(run.manifest)
    frame = run.examples.reset_index(drop=True)
    conds = parse_conditions(conditions)
    _check_request(run_dir, manifest, frame, conds, cot_max_new_tokens=cot_max_new_tokens, distributed=distributed)
    rows = select_rows(frame, limit_per_task=limit_per_task, tasks=tasks)
    if not len(rows):
        raise LLMMapsError(f"{run_dir / EXAMPLES}: no test examples with a reference to score")
    scorer = _ConditionScorer(run, frame, manifest, cot_cue=cot_cue, cot_max_new_tokens=cot_max_new_tokens,
                              batch_size=batch_size, progress=progress, log=log)
    ids = scorer.ids
    existing = read_conditions(run_dir)
    done: set[tuple[str, str]] = set()
    if existing is not None and not rescore:
        done = set(zip(existing["example_id"].astype(str), existing["condition"].astype(str)))
    scorer.start(_Model(manifest, dtype, device, loaded),
                 _Passes(run_dir, distributed=distributed, chunk_size=chunk_size,
                         spec=score_spec(manifest, dtype, device), progress=progress, log=log))
    new_parts, infos = [], dict((manifest.get("conditions") or {}).get("conditions") or {})
    for cond in conds:
        todo = np.array([r for r in rows if (ids[r], cond.name) not in done], dtype=int)
        if cond.kind == DIRECT:
            todo = np.array([r for r in todo if not _null(frame["correct"].iloc[r])], dtype=int)
        if not len(todo):
            log(f"{cond.name}: all {len(rows)} selected examples already scored (--rescore to score them again)")
            continue
        table, infos[cond.name] = scorer.score(cond, todo)
        new_parts.append(table)
    if not new_parts:
        scorer.passes.done()
        return dict(manifest.get("conditions") or {})
    table = _merged_table(new_parts, existing, frame, infos)
    section = {"file": CONDITIONS_FILE, "conditions": infos, "limit_per_task": limit_per_task,
               "tasks": sorted(set(tasks)) if tasks is not None else None, "split": "test",
               "layer": scorer.layer, "metric": scorer.metric_name, "atlas": scorer.atlas is not None}
    record_stage(run_dir, "conditions",
                 {"conditions": [c.name for c in conds], "cot_cue": cot_cue, "cot_max_new_tokens": int(cot_max_new_tokens),
                  "limit_per_task": limit_per_task, "tasks": sorted(set(tasks)) if tasks is not None else None,
                  "rescore": bool(rescore), "batch_size": batch_size, "distributed": bool(distributed),
                  "chunk_size": int(chunk_size), "decoding": "greedy"},
                 outputs={CONDITIONS_FILE: table}, manifest={"conditions": section}, given=given,
                 inputs=[EXAMPLES, f"encodings/layer_{scorer.layer}.npy"],
                 sources={"examples": f"{EXAMPLES}:prompt,instruction,context,reference,choices,nn_train_ids,metric,"
                                      "output,correct", "model": manifest["model"]})
    scorer.passes.done()  # the results are stored: the distributed passes' work folders are no longer needed
    return section


def _check_request(run_dir: Path, manifest: dict, frame, conds: Sequence[Condition], *, cot_max_new_tokens: int,
                   distributed: bool) -> None:
    """One-line errors before any work: settings, a scored run, enough stored neighbours."""
    if cot_max_new_tokens < 1:
        raise LLMMapsError(f"--cot-max-new-tokens: must be >= 1, got {cot_max_new_tokens}")
    if distributed and not redis_url():
        raise LLMMapsError("--distributed: set REDIS_URL to the Redis the `llm-maps worker` processes use")
    scoring = manifest.get("scoring") or {}
    if not scoring or "correct" not in frame.columns or frame["correct"].notna().sum() == 0:
        raise LLMMapsError(f"{run_dir / EXAMPLES}, field 'correct': no scored examples; the direct condition is "
                           f"`llm-maps score {run_dir}` (run it first, or add direct to --conditions)")
    k_max = int((manifest.get("neighbours") or {}).get("k", 0) or 0)
    for c in conds:
        if c.kind == "neighbours" and k_max and c.k > k_max:
            raise LLMMapsError(f"--conditions: {c.name} needs {c.k} neighbours but the run stores {k_max} "
                               f"(re-run `llm-maps neighbours {run_dir} --k {c.k}`)")


class _ConditionScorer:
    """Scores one condition's rows of a run at a time (``score``): what every condition shares, the
    examples' metrics, choices and thresholds, the template, the direct budgets, the map layer and
    the train encodings, the model and where its passes run (``start``)."""

    def __init__(self, run: Run, frame, manifest: dict, *, cot_cue: str, cot_max_new_tokens: int,
                 batch_size: int | None, progress: bool, log):
        self.run, self.frame, self.manifest, self.log, self.progress = run, frame, manifest, log, progress
        self.cot_cue, self.cot_max_new_tokens, self.batch_size = cot_cue, cot_max_new_tokens, batch_size
        self.scoring = scoring = manifest.get("scoring") or {}
        self.thresholds = run_thresholds(scoring)
        self.choices = [_choices(c) for c in (frame["choices"] if "choices" in frame.columns else [None] * len(frame))]
        stored = frame["metric"].to_numpy(dtype=object) if "metric" in frame.columns else [None] * len(frame)
        self.metrics = [example_metric(stored=None if _null(m) else m, category=str(cat), task=str(task),
                                       has_choices=ch is not None, scoring=scoring)
                        for m, cat, task, ch in zip(stored, frame["category"], frame["task"], self.choices)]
        self.mc_output = scoring.get("mc_output", "generate")
        self.layer = run.default_layer
        self.metric_name = manifest.get("distance_metric", "cosine")
        self.template = PromptTemplate.from_manifest(manifest["prompt_template"])
        self.stops = list(self.template.stop_strings)
        self.max_length = manifest.get("max_length")
        self.ids = frame["example_id"].astype(str).to_numpy()

    def start(self, model: _Model, passes: _Passes) -> None:
        """The model (loaded on first use), where the passes run, the token atlas, the train encodings."""
        self.model, self.passes = model, passes
        self.atlas = TokenAtlas.of(self.run, self.layer)
        train_rows = np.flatnonzero((self.frame["split"] == "train").to_numpy())
        self.train_enc = np.asarray(self.run.encodings(self.layer)[train_rows], dtype=np.float32)
        self.budgets = _direct_budgets(self.scoring, self.frame)

    def score(self, cond: Condition, todo: np.ndarray):
        """The rows ``todo`` under ``cond``: (their table, the condition's manifest record)."""
        import pandas as pd

        frame, model = self.frame, self.model
        start = time.perf_counter()
        part, gen = _score_condition(cond, frame, todo, model=model, passes=self.passes, template=self.template,
                                     metrics=self.metrics, choices=self.choices, thresholds=self.thresholds,
                                     mc_output=self.mc_output, stops=self.stops, budgets=self.budgets,
                                     cot_cue=self.cot_cue, cot_max_new_tokens=self.cot_max_new_tokens,
                                     batch_size=self.batch_size, max_length=self.max_length, log=self.log)
        # the conditioned prompt's own distance to train (direct: the stored one)
        if cond.kind == DIRECT:
            part["dist_to_train"] = frame["dist_to_train"].to_numpy(dtype=float)[todo]
        else:
            part["dist_to_train"] = _prompt_distances(model(), part["prompt"], layer=self.layer,
                                                      train_enc=self.train_enc, metric=self.metric_name,
                                                      add_eos=bool(self.manifest.get("add_eos")),
                                                      max_length=self.max_length, progress=self.progress)
        _add_paths(part, self.atlas, model, layer=self.layer, max_length=self.max_length, log=self.log)
        seconds = time.perf_counter() - start
        table = pd.DataFrame(part)
        info = self._info(cond, table, todo, gen, seconds)
        acc = info["accuracy"]
        self.log(f"{cond.name}: {len(table)} examples in {info['n_tasks']} tasks scored in {seconds:.1f} s"
                 + (f", accuracy {acc:.3f}" if acc is not None else "")
                 + (f", {gen['tokens']} tokens at {info['tokens_per_second']:.1f} tok/s" if gen.get("tokens") else ""))
        return table, info

    def _info(self, cond: Condition, table, todo: np.ndarray, gen: dict, seconds: float) -> dict:
        scored = table["correct"].notna()
        info = {"kind": cond.kind, "examples": int(len(table)),
                "n_tasks": int(self.frame["task"].iloc[todo].nunique()),
                "accuracy": float(table.loc[scored, "correct"].astype(float).mean()) if scored.any() else None,
                "seconds": round(seconds, 2), "tokens": int(gen.get("tokens", 0)),
                "tokens_per_second": round(gen.get("new_tokens", 0) / max(gen.get("seconds", 0.0), 1e-9), 1)
                if gen.get("tokens") else 0.0, **self.passes.info(cond.name), "created": now_iso()}
        if cond.kind == COT:
            info.update({"cue": self.cot_cue, "max_new_tokens": int(self.cot_max_new_tokens),
                         "extraction": "extract_answer (last_number for a numeric reference, answer_is, last_line); "
                                       "multiple choice: choice_after_reasoning"})
        elif cond.kind == "neighbours":
            info.update({"k": cond.k, "max_new_tokens": gen.get("max_new_tokens", "as direct"), "extraction": "output"})
        else:
            info.update({"max_new_tokens": (self.scoring.get("generation") or {}).get("max_new_tokens", "as scored"),
                         "extraction": "output"})
        return info


def _merged_table(new_parts: list, existing, frame, infos: dict):
    """conditions.parquet: the rows scored now, then those kept from the file, in condition order
    (direct first) and row order; ``infos``' examples, tasks and accuracy then describe the file
    (rows kept from earlier runs included; seconds and tokens the run that last scored the condition)."""
    import pandas as pd

    table = pd.concat(new_parts, ignore_index=True)
    if existing is not None:
        replaced = set(zip(table["example_id"], table["condition"]))
        keep = [(e, c) not in replaced for e, c in zip(existing["example_id"].astype(str),
                                                       existing["condition"].astype(str))]
        table = pd.concat([existing[keep], table], ignore_index=True)
    ids = frame["example_id"].astype(str).to_numpy()
    order = {e: i for i, e in enumerate(ids)}
    cond_order = {c: i for i, c in enumerate(dict.fromkeys([DIRECT] + list(infos)))}
    table = table.assign(_r=table["example_id"].map(order), _c=table["condition"].map(lambda c: cond_order.get(c, 99)))
    table = table.sort_values(["_c", "_r"], kind="stable").drop(columns=["_r", "_c"]).reset_index(drop=True)
    table = _typed(table)
    task_of = dict(zip(ids, frame["task"].astype(str)))
    for name, info in infos.items():
        rows_c = table[table["condition"] == name]
        if len(rows_c):
            scored_c = rows_c["correct"].dropna()
            info.update({"examples": int(len(rows_c)), "n_tasks": int(rows_c["example_id"].map(task_of).nunique()),
                         "accuracy": float(scored_c.astype(float).mean()) if len(scored_c) else None})
    return table


def _typed(table):
    """conditions.parquet's columns in contract order with stable Arrow types."""
    import pandas as pd

    for col in COLUMNS:
        if col not in table.columns:
            table[col] = None
    table = table[list(COLUMNS)].copy()
    table["example_id"] = table["example_id"].astype(str)
    for col in ("score", "mean_logprob", "path_mean_dist", "path_max_dist", "dist_to_train"):
        table[col] = pd.array([None if _null(v) else float(v) for v in table[col]], dtype="Float64")
    table["correct"] = pd.array([None if _null(v) else bool(v) for v in table["correct"]], dtype="boolean")
    table["n_tokens"] = pd.array([None if _null(v) else int(v) for v in table["n_tokens"]], dtype="Int64")
    for col in ("choice_logprobs", "path_dists", "path_x", "path_y"):
        table[col] = [None if v is None or (not isinstance(v, (list, np.ndarray)) and _null(v))
                      else [float(x) for x in v] for v in table[col]]
    return table


def _direct_budgets(scoring: dict, frame) -> np.ndarray | int:
    """Per-row max new tokens as direct generation used them (per-task budgets of --max-new-tokens
    auto, else its number; 48 when nothing was generated)."""
    gen = scoring.get("generation") or {}
    per_task = gen.get("token_budgets")
    if per_task:
        floor = int(min(per_task.values()))
        return np.array([int(per_task.get(t, floor)) for t in frame["task"]], dtype=np.int64)
    m = gen.get("max_new_tokens", 48)
    return int(m) if isinstance(m, (int, float)) else 48


def _score_condition(cond: Condition, frame, todo: np.ndarray, *, model, passes: _Passes, template, metrics, choices,
                     thresholds, mc_output, stops, budgets, cot_cue, cot_max_new_tokens, batch_size, max_length,
                     log) -> tuple[dict, dict]:
    """Columns of one condition's rows (without dist_to_train and paths) and generation figures."""
    n = len(todo)
    prompts = frame["prompt"].astype(str).to_numpy()
    refs = [str(frame["reference"].iloc[r]) for r in todo]
    row_metrics = [metrics[r] for r in todo]
    by_choice = [i for i in range(n) if get_metric(row_metrics[i]).uses_choices]  # model-based: multiple choice
    out: dict = {"example_id": [str(frame["example_id"].iloc[r]) for r in todo], "condition": [cond.name] * n,
                 "metric": row_metrics}
    gen: dict = {}
    if cond.kind == DIRECT:
        outputs = [None if _null(v) else str(v) for v in frame["output"].iloc[todo]]
        token_ids = _lists(frame, "output_token_ids", todo)
        lps = _lists(frame, "output_logprobs", todo)
        out.update({"prompt": [prompts[r] for r in todo], "output": outputs, "answer": outputs,
                    "extraction": ["output"] * n,
                    "score": frame["score"].to_numpy(dtype=float, na_value=np.nan)[todo],
                    "correct": [None if _null(v) else bool(v) for v in frame["correct"].iloc[todo]],
                    "n_tokens": [None if t is None else len(t) for t in token_ids],
                    "mean_logprob": [float(np.mean(x)) if x else None for x in lps],
                    "stop_reason": [None if _null(v) else str(v) for v in
                                    (frame["stop_reason"].iloc[todo] if "stop_reason" in frame.columns else [None] * n)],
                    "choice_logprobs": _lists(frame, "choice_logprobs", todo), "_token_ids": token_ids})
        return out, gen

    loaded = model()
    if cond.kind == COT:
        cprompts = [cot_prompt(prompts[r], cot_cue) for r in todo]
        limits: np.ndarray | int = int(cot_max_new_tokens)
        generate_rows = np.arange(n)
    else:
        cprompts = neighbour_prompts(frame, todo, cond.k, template, tokenizer=loaded.tokenizer)
        limits = budgets[todo] if isinstance(budgets, np.ndarray) else int(budgets)
        is_choice = np.isin(np.arange(n), by_choice)
        generate_rows = np.flatnonzero(~is_choice) if mc_output == "choice" else np.arange(n)
        gen["max_new_tokens"] = "as direct" if isinstance(budgets, np.ndarray) else int(budgets)
    limit = loaded.max_positions
    if limit and by_choice:  # fail before any generation, naming the example
        lengths = [len(x) for x in loaded.tokenizer([cprompts[i] for i in by_choice])["input_ids"]]
        extra = int(cot_max_new_tokens) + 16 if cond.kind == COT else 0
        for i, length in zip(by_choice, lengths):
            longest = max(len(loaded.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices[todo[i]])
            if length + extra + longest > limit:
                raise LLMMapsError(f"{EXAMPLES}, row {todo[i] + 1} ({frame['example_id'].iloc[todo[i]]}), condition "
                                   f"{cond.name}: the prompt ({length} tokens{' + the reasoning' if extra else ''}) and "
                                   f"its longest choice exceed the model's {limit} positions"
                                   + (f"; use fewer neighbours than {cond.k}" if cond.k else ""))
    outputs: list[str | None] = [None] * n
    token_ids: list[list[int] | None] = [None] * n
    mean_lp: list[float | None] = [None] * n
    stop: list[str | None] = [None] * n
    if len(generate_rows):
        log(f"{cond.name}: generating {len(generate_rows)} outputs")
        cols = passes.generate(loaded, cond.name, cprompts, generate_rows, stops=stops, max_new_tokens=limits,
                               batch_size=batch_size, max_length=max_length)
        for i in generate_rows:
            outputs[i] = cols["output"][i]
            token_ids[i] = list(cols["output_token_ids"][i])
            lp = cols["output_logprobs"][i]
            mean_lp[i] = float(np.mean(lp)) if len(lp) else None
            stop[i] = cols["stop_reason"][i]
        gen.update({"tokens": int(cols["_tokens"]), "seconds": float(cols["_seconds"]),
                    "new_tokens": int(cols.get("_new_tokens", cols["_tokens"]))})  # resumed chunks took no time now
    answers: list[str | None] = list(outputs)
    extraction = ["output"] * n
    choice_lps: list[list[float] | None] = [None] * n
    if by_choice:
        if cond.kind == COT:
            mc_prompts = [cot_choice_prompt(prompts[todo[i]], outputs[i], cot_cue) for i in by_choice]
        else:
            mc_prompts = [cprompts[i] for i in by_choice]
        scored = passes.choice_lls(loaded, cond.name, mc_prompts, [choices[todo[i]] for i in by_choice])
        for i, lp in zip(by_choice, scored):
            choice_lps[i] = lp
            pick = get_metric(row_metrics[i]).answer(choices[todo[i]], lp)
            answers[i] = pick
            extraction[i] = "choice_after_reasoning" if cond.kind == COT else "output"
            if outputs[i] is None:
                outputs[i] = pick
    if cond.kind == COT:
        for i in sorted(set(range(n)) - set(by_choice)):
            answers[i], extraction[i] = extract_answer(outputs[i], numeric=is_numeric(refs[i]))
    scores = np.full(n, np.nan)
    for i in range(n):
        metric = get_metric(row_metrics[i])
        if metric.uses_choices or answers[i] is not None:
            scores[i] = metric.score(str(answers[i]), refs[i])
    out.update({"prompt": cprompts, "output": outputs, "answer": answers, "extraction": extraction, "score": scores,
                "correct": [None if np.isnan(s) else bool(s >= thresholds[m]) for s, m in zip(scores, row_metrics)],
                "n_tokens": [None if t is None else len(t) for t in token_ids], "mean_logprob": mean_lp,
                "stop_reason": stop, "choice_logprobs": choice_lps, "_token_ids": token_ids})
    return out, gen


def _lists(frame, col: str, rows: np.ndarray) -> list:
    if col not in frame.columns:
        return [None] * len(rows)
    return [None if v is None or (not isinstance(v, (list, np.ndarray)) and _null(v)) else [x for x in v]
            for v in frame[col].iloc[rows]]


def _prompt_distances(loaded, prompts: Sequence[str], *, layer: int, train_enc: np.ndarray, metric: str,
                      add_eos: bool, max_length: int | None, progress: bool) -> np.ndarray:
    """Each prompt's distance to the nearest train example, encoded as build encodes prompts."""
    enc = encode_prompts(loaded, list(prompts), layers=[layer], add_eos=add_eos, max_length=max_length,
                         progress=progress, desc="encode prompts")[layer]
    dist, _ = knn(enc.astype(np.float32), train_enc, k=1, metric=metric)
    return np.where(np.isfinite(dist[:, 0]), dist[:, 0], np.nan)


def _add_paths(part: dict, atlas, model, *, layer: int, max_length: int | None, log) -> None:
    """path_dists / path_mean_dist / path_max_dist / path_x / path_y (null without an atlas or output)."""
    token_ids = part.pop("_token_ids")
    n = len(token_ids)
    empty: list = [None] * n
    part.update({"path_dists": list(empty), "path_mean_dist": list(empty), "path_max_dist": list(empty),
                 "path_x": list(empty), "path_y": list(empty)})
    if atlas is None:
        return
    have = [i for i in range(n) if token_ids[i]]
    if not have:
        return
    states = continuation_states(model(), [part["prompt"][i] for i in have], [token_ids[i] for i in have],
                                 layer=layer, max_length=max_length)
    sizes = [len(s) for s in states]
    flat = np.concatenate([s for s in states if len(s)]) if any(sizes) else np.zeros((0, 1))
    dist, _, xy = atlas.steps(flat)
    at = 0
    for i, size in zip(have, sizes):
        if size:
            d = dist[at:at + size]
            part["path_dists"][i] = d.tolist()
            part["path_mean_dist"][i] = float(d.mean())
            part["path_max_dist"][i] = float(d.max())
            part["path_x"][i] = xy[at:at + size, 0].tolist()
            part["path_y"][i] = xy[at:at + size, 1].tolist()
        at += size
    log(f"measured {len(flat)} generated tokens against the token atlas")
