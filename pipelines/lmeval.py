"""Import lm-evaluation-harness results (``--log_samples`` output) as a run, or run lm-eval.

lm-eval writes, per run, ``results_<time>.json`` (aggregates, task configs) and, per task,
``samples_<task>_<time>.jsonl`` (one line per document: ``doc_id``, ``doc``, ``target``,
``arguments`` (the requests: context + continuation or generation kwargs), ``resps`` /
``filtered_resps``, ``filter``, ``metrics``, per-document metric values, and ``doc_hash`` /
``prompt_hash`` / ``target_hash``). Each logged document becomes one test example:
``prompt`` = the context string lm-eval gave the model, ``reference`` = the target,
``output`` = the filtered response, ``score`` = the task's primary metric. The per-task mean of
``score`` is checked against the aggregate in ``results_*.json``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence

from llm_maps.errors import LLMMapsError
from pipelines.build import build_run, load_sources
from pipelines.models import resolve_device
from pipelines.sources import read_jsonl_objects, sha256_file

SAMPLES_RE = re.compile(r"^samples_(?P<task>.+)_(?P<time>\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$")
PRIMARY_METRICS = ("acc", "exact_match", "acc_norm", "em", "f1", "mcc", "bleu", "rouge1", "rougeL")
OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "generate_until", "loglikelihood_rolling")


def _load_results(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LLMMapsError(f"{path}: results file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LLMMapsError(f"{path}: not valid JSON ({exc})") from None
    for key in ("results", "configs"):
        if not isinstance(data.get(key), dict):
            raise LLMMapsError(f"{path}, field '{key}': missing (not an lm-eval results file, or an "
                               "lm-eval version this importer does not know; lm-eval >= 0.4 writes it)")
    return data


def find_results_file(samples: Path) -> Path:
    m = SAMPLES_RE.match(samples.name)
    if m:
        same = samples.with_name(f"results_{m.group('time')}.json")
        if same.exists():
            return same
    found = sorted(samples.parent.glob("results_*.json"))
    if len(found) == 1:
        return found[0]
    raise LLMMapsError(f"{samples}: cannot find its results_*.json beside it "
                       f"({'none' if not found else f'{len(found)} candidates'}); pass --results")


def _requests(arguments, where: str) -> list[tuple]:
    """lm-eval 0.4.x logs ``{"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}``; older
    versions a list of [ctx, cont] lists. Returns [(ctx, second), ...]."""
    if isinstance(arguments, dict):
        out = []
        for key in sorted(arguments, key=lambda k: int(k.rsplit("_", 1)[-1]) if k.rsplit("_", 1)[-1].isdigit() else 0):
            req = arguments[key]
            if not isinstance(req, dict) or "arg_0" not in req:
                raise LLMMapsError(f"{where}, field 'arguments.{key}': expected {{arg_0, arg_1}}")
            out.append((req["arg_0"], req.get("arg_1")))
        return out
    if isinstance(arguments, list) and all(isinstance(a, (list, tuple)) and a for a in arguments):
        return [(a[0], a[1] if len(a) > 1 else None) for a in arguments]
    raise LLMMapsError(f"{where}, field 'arguments': unknown shape (lm-eval version not supported)")


def _as_float(value, where: str, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LLMMapsError(f"{where}, field '{field}': not a number ({value!r})") from None


def read_samples(path: Path, *, task: str, config: dict, metric: str | None, filter_name: str | None):
    """Rows (dicts) of one samples file, plus (metric, filter) used."""
    output_type = config.get("output_type")
    if output_type not in OUTPUT_TYPES:
        raise LLMMapsError(f"{path}, field 'output_type': task '{task}' has unknown output type {output_type!r}")
    rows, chosen_metric, chosen_filter = [], metric, filter_name
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LLMMapsError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    for lineno, s in read_jsonl_objects(path, text):
        where = f"{path}, line {lineno}"
        for field in ("doc_id", "arguments", "filtered_resps", "target"):
            if field not in s:
                raise LLMMapsError(f"{where}, field '{field}': missing (not an lm-eval samples line)")
        flt = s.get("filter", "none")
        if chosen_filter is None:
            chosen_filter = flt
        if flt != chosen_filter:
            continue
        if chosen_metric is None:
            listed = s.get("metrics") or [k for k in PRIMARY_METRICS if k in s]
            chosen_metric = next((m for m in PRIMARY_METRICS if m in listed), listed[0] if listed else None)
            if chosen_metric is None:
                raise LLMMapsError(f"{where}, field 'metrics': no metric logged; pass --metric")
        if chosen_metric not in s:
            raise LLMMapsError(f"{where}, field '{chosen_metric}': metric not in this samples file "
                               f"(has: {', '.join(s.get('metrics') or []) or 'none'})")
        score = _as_float(s[chosen_metric], where, chosen_metric)
        if not 0.0 <= score <= 1.0 or math.isnan(score):
            raise LLMMapsError(f"{where}, field '{chosen_metric}': {score} is not a score in [0, 1] "
                               "(choose another metric with --metric)")
        reqs = _requests(s["arguments"], where)
        if not reqs or not isinstance(reqs[0][0], str):
            raise LLMMapsError(f"{where}, field 'arguments': no context string")
        prompt = reqs[0][0]
        resps = s["filtered_resps"]
        choices = None
        target = s["target"]
        if output_type == "multiple_choice":
            choices = [r[1] for r in reqs]
            delim = config.get("target_delimiter", " ")
            labels = target if isinstance(target, list) else [target]
            try:
                gold = [int(t) if not isinstance(t, str) or t.strip().lstrip("-").isdigit() else choices.index(delim + t)
                        for t in labels]
            except ValueError:
                raise LLMMapsError(f"{where}, field 'target': {target!r} is neither a choice index nor a choice") from None
            if any(not 0 <= g < len(choices) for g in gold):
                raise LLMMapsError(f"{where}, field 'target': index {target!r} out of range for {len(choices)} choices")
            strip = (lambda c: c[len(delim):] if delim and c.startswith(delim) else c)
            reference = strip(choices[gold[0]])
            lls = [_as_float(r[0] if isinstance(r, (list, tuple)) else r, where, "filtered_resps") for r in resps]
            output = strip(choices[max(range(len(lls)), key=lambda i: lls[i])]) if lls else None
            choices_out = [strip(c) for c in choices]
            extra = {"choice_logprobs": lls}
        elif output_type in ("loglikelihood", "loglikelihood_rolling"):
            reference = reqs[0][1] if isinstance(reqs[0][1], str) else (str(target) if target is not None else "")
            first = resps[0] if resps else None
            lp = _as_float(first[0] if isinstance(first, (list, tuple)) else first, where, "filtered_resps")
            greedy = bool(first[1]) if isinstance(first, (list, tuple)) and len(first) > 1 else None
            output = reqs[0][1] if greedy else None
            choices_out, extra = None, {"target_logprob": lp, "target_is_greedy": greedy}
        else:  # generate_until
            reference = target if isinstance(target, str) else (json.dumps(target) if target is not None else "")
            output = resps[0] if isinstance(resps, list) and resps else resps
            output = output if isinstance(output, str) else json.dumps(output)
            choices_out, extra = None, {}
        if reference is None or not str(reference).strip():
            raise LLMMapsError(f"{where}, field 'target': task '{task}' has no reference for this document")
        rows.append({"example_id": f"{task}/{s['doc_id']}", "task": task, "category": task,
                     "instruction": prompt, "context": "", "prompt": prompt, "reference": str(reference).strip(),
                     "output": output, "score": score, "choices": choices_out, "split": "test",
                     "doc_id": s["doc_id"], "doc_hash": s.get("doc_hash"), "prompt_hash": s.get("prompt_hash"),
                     "target_hash": s.get("target_hash"), "lmeval_metric": chosen_metric,
                     "lmeval_filter": chosen_filter, "output_type": output_type, "source_row": lineno, **extra})
    if not rows:
        raise LLMMapsError(f"{path}: no samples")
    return rows, chosen_metric, chosen_filter


def read_lmeval(samples_files: Sequence[str | Path], *, results: str | Path | None = None,
                metric: str | None = None, threshold: float = 0.5):
    """Read samples files into one test frame; check per-task means against the aggregates."""
    import pandas as pd


    if not samples_files:
        raise LLMMapsError("import-lmeval: no samples files given")
    all_rows, per_task, infos, seen = [], {}, [], set()
    for f in samples_files:
        path = Path(f)
        if not path.is_file():
            raise LLMMapsError(f"{path}: no such file")
        m = SAMPLES_RE.match(path.name)
        res_path = Path(results) if results else find_results_file(path)
        res = _load_results(res_path)
        task = m.group("task") if m else None
        if task not in res["configs"]:
            task = next((t for t in res["configs"] if path.name.startswith(f"samples_{t}_")), None)
        if task is None:
            raise LLMMapsError(f"{path}: its task is not in {res_path} (configs: {', '.join(res['configs'])})")
        if task in seen:
            raise LLMMapsError(f"{path}: task '{task}' given twice")
        seen.add(task)
        rows, used_metric, used_filter = read_samples(path, task=task, config=res["configs"][task], metric=metric,
                                                      filter_name=None)
        key = f"{used_metric},{used_filter}"
        aggregate = res["results"].get(task, {}).get(key)
        if aggregate is None:
            raise LLMMapsError(f"{res_path}, field 'results.{task}.{key}': missing aggregate for this metric")
        scores = [r["score"] for r in rows]
        mean = sum(scores) / len(scores)  # lm-eval's own `mean` aggregation
        if abs(mean - float(aggregate)) > 1e-9:
            raise LLMMapsError(f"{path}: mean {used_metric} of the samples ({mean!r}) differs from the aggregate "
                               f"in {res_path} ({aggregate!r}); incomplete samples file?")
        per_task[task] = {"metric": used_metric, "filter": used_filter, "n": len(rows), "mean": mean,
                          "aggregate": float(aggregate), "output_type": res["configs"][task].get("output_type")}
        infos.append({"kind": "lm-eval-samples", "path": str(path.resolve()), "sha256": sha256_file(path),
                      "task": task, "results": str(res_path.resolve()), "results_sha256": sha256_file(res_path),
                      "lm_eval_version": res.get("lm_eval_version"), "lmeval_model": res.get("model_name")})
        all_rows.extend(rows)
    frame = pd.DataFrame(all_rows)
    frame["correct"] = frame["score"] >= threshold
    scoring = {"source": "lm-eval", "metric": metric or "primary", "per_task": per_task,
               "thresholds": {"lm-eval": threshold}, "correct_rule": f"score >= {threshold}",
               "scored": int(len(frame)), "accuracy": float(frame["correct"].mean())}
    return frame, infos, scoring


def run_lmeval(*, model: str, tasks: Sequence[str], output_dir: str | Path, include_path: str | None = None,
               limit: int | None = None, batch_size: int = 8, device: str = "auto",
               num_fewshot: int | None = None) -> list[Path]:
    """Run lm-eval through its Python API and write its --log_samples files; returns them."""
    try:
        import lm_eval
        from lm_eval.loggers import EvaluationTracker
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise LLMMapsError("running lm-eval needs the lmeval extra: pip install -e '.[lmeval]'") from None
    output_dir = Path(output_dir)
    tracker = EvaluationTracker(output_path=str(output_dir))
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={model}", tasks=list(tasks), num_fewshot=num_fewshot,
        batch_size=batch_size, device=resolve_device(device), limit=limit, log_samples=True,
        task_manager=TaskManager(include_path=include_path) if include_path else TaskManager(),
        evaluation_tracker=tracker)
    if results is None:
        raise LLMMapsError("lm-eval returned no results")
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    return sorted(output_dir.rglob("samples_*.jsonl"))


def build_lmeval_run(*, samples_files: Sequence[str | Path], model: str, out: str | Path,
                     results: str | Path | None = None, lmeval_metric: str | None = None, threshold: float = 0.5,
                     train: Sequence[str] | None = None, train_template: str = "auto", columns: dict | None = None,
                     test_size: float = 0.5, seed: int | None = None, log=print, **build_kwargs) -> Path:
    """Import lm-eval samples, add training prompts (``train`` data, templated) or split the
    documents themselves, and encode everything into a run with ``model``."""
    import pandas as pd


    frame, infos, scoring = read_lmeval(samples_files, results=results, metric=lmeval_metric, threshold=threshold)
    split_by = "source"
    if train:
        train_frame, train_infos = load_sources(train, columns=columns)
        train_frame = train_frame.assign(split="train", example_id=[f"train:{i}" for i in train_frame["example_id"]])
        frame = pd.concat([train_frame, frame], ignore_index=True)
        infos = train_infos + infos
    else:
        split_seed = build_kwargs.get("split_seed")
        split_seed = split_seed if split_seed is not None else (seed or 0)
        log(f"no --train data: splitting the lm-eval documents themselves ({1 - test_size:.0%} train, "
            f"seed {split_seed})")
        split_by = "example"
    scoring["per_task_means_match_results"] = True
    return build_run(model=model, frame=frame, sources_info=infos, out=out, template=train_template,
                     split_by=split_by, test_size=test_size, seed=seed, log=log,
                     extra_manifest={"scoring": scoring,
                                     "prompt_note": "test rows keep lm-eval's context string verbatim as prompt; "
                                                    "the template applies to --train rows and typed prompts"},
                     **build_kwargs)
