"""Build the embedded demo dataset (data/demo/bigbench_demo.jsonl) from BIG-bench JSON tasks.

Deterministic: the same BIG-bench files and seed give a byte-identical file. Standard library
only (no torch, no pandas), so it runs anywhere the BIG-bench task files can be read.

Usage::

    python -m pipelines.demo_data --bigbench-dir /path/to/bigbench/benchmark_tasks \\
        --out data/demo/bigbench_demo.jsonl --seed 0

Each output line is one JSON object with the keys, in this order: id, instruction, context,
response, choices, category, task, split, heldout (see ``ROW_KEYS``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")

ROW_KEYS = ("id", "instruction", "context", "response", "choices", "category", "task", "split",
            "heldout")

# category -> domain (mirrors data/domains.toml [categories] for the names the demo uses)
CATEGORY_DOMAIN: dict[str, str] = {
    "classification": "Chollet",
    "information_extraction": "Chollet",
    "open_qa": "Chollet",
    "arithmetic": "Chollet",
    "summarization": "Reasoning",
    "chain_of_thought": "Reasoning",
    "programming": "Reasoning",
    "closed_qa": "Reasoning",
    "creative_writing": "Reasoning",
    "brainstorming": "Reasoning",
}

MAX_PROMPT_CHARS = 700     # instruction + context; longer examples are skipped, never truncated
MAX_RESPONSE_CHARS = 400   # longer references are skipped, never truncated
TEST_FRACTION = 0.25       # near-test share of each non-held-out task
DEFAULT_OUT = Path("data/demo/bigbench_demo.jsonl")

CONTEXT_MODES = ("none", "input", "prefix", "split")


@dataclass(frozen=True)
class TaskSpec:
    """How one BIG-bench task (or a chosen set of its subtasks) becomes demo rows.

    task:     BIG-bench task folder name, e.g. "arithmetic".
    subtasks: subtask folders to read; empty means the task's own task.json holds the examples.
    category: one of ``CATEGORY_DOMAIN``.
    cap:      at most this many examples for the whole spec (balanced over subtasks).
    heldout:  every example goes to test with heldout=True ("far" test).
    template: instruction text; "{input}" is replaced by the example's question text. None:
              task_prefix + example_input_prefix + input, as BIG-bench itself would prompt.
    context:  "none"   - no passage; everything goes into the instruction.
              "input"  - the example input is the passage; the instruction is the template/prefix.
              "prefix" - the task_prefix is the passage (e.g. a table); the input is the question.
              "split"  - the input is cut at the last occurrence of the first ``split_at`` marker
                         found in it: passage before, question after (a leading "Q:" label on
                         the question is dropped).
              BIG-bench's example_input_prefix labels the question, so it is used only with
              "none" and "prefix".
    use_choices:  read target_scores as a multiple-choice example (else use "target" only).
    list_choices: append "Options:\\n- a\\n- b" to the instruction (False where the prompt already
                  names every choice).
    shuffle_choices: reorder choices deterministically (for tasks whose source order nearly
                  always puts the right answer first).
    """

    task: str
    category: str
    cap: int
    subtasks: tuple[str, ...] = ()
    heldout: bool = False
    template: str | None = None
    context: str = "none"
    split_at: tuple[str, ...] = ()
    use_choices: bool = True
    list_choices: bool = True
    shuffle_choices: bool = False


# The demo selection. Roughly half Chollet-domain, half Reasoning-domain; 4 whole tasks held out.
DEMO_TASKS: tuple[TaskSpec, ...] = (
    # ---- Chollet domain -------------------------------------------------------------------
    TaskSpec("arithmetic", "arithmetic", 120,
             subtasks=("2_digit_addition", "2_digit_subtraction", "2_digit_multiplication",
                       "2_digit_division", "3_digit_addition", "3_digit_subtraction"),
             use_choices=False),  # choices are distractors like "banana"; the target is numeric
    TaskSpec("elementary_math_qa", "arithmetic", 100, subtasks=("question_only",)),
    TaskSpec("modified_arithmetic", "arithmetic", 100, heldout=True,
             subtasks=("three_digit_addition_control", "three_digit_addition_plus_one",
                       "three_digit_subtraction_control", "three_digit_subtraction_plus_one",
                       "two_digit_multiplication_control", "two_digit_multiplication_plus_one")),
    TaskSpec("general_knowledge", "open_qa", 70, shuffle_choices=True),
    TaskSpec("qa_wikidata", "open_qa", 100, template="Complete the sentence: {input}"),
    TaskSpec("hindu_knowledge", "open_qa", 90, heldout=True, shuffle_choices=True),
    TaskSpec("emoji_movie", "open_qa", 80, shuffle_choices=True),
    TaskSpec("snarks", "classification", 90, list_choices=False),
    TaskSpec("irony_identification", "classification", 80, list_choices=False),
    TaskSpec("intent_recognition", "classification", 100, list_choices=False),
    TaskSpec("emojis_emotion_prediction", "classification", 90),
    TaskSpec("object_counting", "information_extraction", 100),
    TaskSpec("penguins_in_a_table", "information_extraction", 100, context="prefix"),
    # ---- Reasoning domain -----------------------------------------------------------------
    TaskSpec("gem", "summarization", 100, subtasks=("xsum",), context="input",
             template="Summarize the following article in one sentence."),
    # headline condensation: a technical paper title -> a short plain-language headline
    TaskSpec("scientific_press_release", "summarization", 50),
    TaskSpec("logical_deduction", "chain_of_thought", 100,
             subtasks=("three_objects", "five_objects"),
             template="{input}\nWhich of the following statements is true?"),
    TaskSpec("date_understanding", "chain_of_thought", 100, shuffle_choices=True),
    TaskSpec("navigate", "chain_of_thought", 90, heldout=True),
    TaskSpec("tracking_shuffled_objects", "chain_of_thought", 100, subtasks=("three_objects",)),
    TaskSpec("strategyqa", "chain_of_thought", 100),
    TaskSpec("code_line_description", "programming", 60,
             template="Describe in English what this Python code does:\n{input}"),
    TaskSpec("auto_debugging", "programming", 40),
    TaskSpec("cs_algorithms", "programming", 100, subtasks=("valid_parentheses", "lcs")),
    TaskSpec("strange_stories", "closed_qa", 100, subtasks=("multiple_choice", "boolean"),
             context="split", split_at=("Q:", "\n")),
    TaskSpec("understanding_fables", "closed_qa", 80, heldout=True,
             context="split", split_at=("What is the moral of this story?",)),
    TaskSpec("implicatures", "closed_qa", 100, context="input", list_choices=False),
    TaskSpec("gem", "creative_writing", 100, subtasks=("common_gen",),
             template="Write one sentence that uses all of these words: {input}"),
    TaskSpec("rephrase", "creative_writing", 80),
)


# ---------------------------------------------------------------------------------------------
# small pure helpers


def stable_seed(*parts: object) -> int:
    """A 64-bit seed derived only from ``parts`` (independent of PYTHONHASHSEED and platform)."""
    text = "\x00".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def task_label(spec_task: str, subtask: str) -> str:
    """The row's ``task`` value: "task" or "task/subtask"."""
    return f"{spec_task}/{subtask}" if subtask else spec_task


def validate_specs(specs: Sequence[TaskSpec]) -> None:
    """Reject inconsistent selections: unknown categories/modes, duplicates, half-held-out tasks."""
    seen: set[tuple[str, str]] = set()
    heldout_by_task: dict[str, bool] = {}
    for spec in specs:
        where = f"TaskSpec {spec.task!r}"
        if spec.category not in CATEGORY_DOMAIN:
            raise ValueError(f"{where}: category {spec.category!r} is not one of "
                             f"{', '.join(CATEGORY_DOMAIN)}")
        if spec.context not in CONTEXT_MODES:
            raise ValueError(f"{where}: context {spec.context!r} is not one of "
                             f"{', '.join(CONTEXT_MODES)}")
        if spec.context == "split" and not spec.split_at:
            raise ValueError(f"{where}: context 'split' needs split_at")
        if spec.context == "input" and spec.template and "{input}" in spec.template:
            raise ValueError(f"{where}: with context 'input' the template must not use {{input}}")
        if spec.cap < 1:
            raise ValueError(f"{where}: cap must be >= 1, got {spec.cap}")
        for sub in spec.subtasks or ("",):
            key = (spec.task, sub)
            if key in seen:
                raise ValueError(f"{where}: subtask {sub or '(main)'!r} selected twice")
            seen.add(key)
        # a held-out task must be held out as a whole, including all selected subtasks
        if heldout_by_task.setdefault(spec.task, spec.heldout) != spec.heldout:
            raise ValueError(f"{where}: held out in one spec but not in another")


def load_task_file(path: Path) -> dict[str, Any]:
    """Read and check the fields of a BIG-bench task.json that this script relies on."""
    if not path.is_file():
        raise ValueError(f"{path}: task file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a JSON object")
    for key in ("task_prefix", "example_input_prefix"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{path}: field '{key}' must be a string")
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        raise ValueError(f"{path}: field 'examples' must be a non-empty list")
    for i, ex in enumerate(examples):
        field = f"examples[{i}]"
        if not isinstance(ex, dict):
            raise ValueError(f"{path}: field '{field}' must be an object")
        if not isinstance(ex.get("input"), str):
            raise ValueError(f"{path}: field '{field}.input' must be a string")
        if "target" not in ex and "target_scores" not in ex:
            raise ValueError(f"{path}: field '{field}' has neither 'target' nor 'target_scores'")
        if "target" in ex:
            tgt = ex["target"]
            if not (isinstance(tgt, str)
                    or (isinstance(tgt, list) and all(isinstance(t, str) for t in tgt))):
                raise ValueError(f"{path}: field '{field}.target' must be a string or a list "
                                 "of strings")
        if "target_scores" in ex:
            scores = ex["target_scores"]
            if (not isinstance(scores, dict) or not scores
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               for v in scores.values())):
                raise ValueError(f"{path}: field '{field}.target_scores' must be a non-empty "
                                 "object of choice -> number")
    return data


def first_target(target: str | list[str] | None) -> str:
    """The reference text of a free-form example: the target, or the first of several."""
    if target is None:
        return ""
    if isinstance(target, str):
        return target.strip()
    for item in target:
        if item.strip():
            return item.strip()
    return ""


def best_choice(scores: dict[str, float]) -> str | None:
    """The single highest-scoring choice, or None when the best score is tied or not > 0."""
    top = max(scores.values())
    winners = [c for c, v in scores.items() if v == top]
    if top <= 0 or len(winners) != 1:
        return None
    return winners[0].strip()


def shuffled(items: Sequence[T], seed: int) -> list[T]:
    """A copy of ``items`` in a seeded random order."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def format_options(choices: Sequence[str]) -> str:
    return "Options:\n" + "\n".join(f"- {c}" for c in choices)


def split_passage(text: str, markers: Sequence[str]) -> tuple[str, str] | None:
    """Cut ``text`` at the last occurrence of the first marker that occurs after its start:
    (passage, question). None when no marker cuts it."""
    for marker in markers:
        pos = text.rfind(marker)
        if pos > 0:
            break
    else:
        return None
    passage = text[:pos].strip()
    question = text[pos:].strip()
    if question.startswith("Q:"):
        question = question[2:].strip()
    if not passage or not question:
        return None
    return passage, question


def build_prompt(spec: TaskSpec, task_prefix: str, input_prefix: str,
                 text: str) -> tuple[str, str] | None:
    """(instruction, context) for one example, before choices are listed; None if unusable."""
    task_prefix = task_prefix.strip()
    input_prefix = input_prefix.strip()
    text = text.strip()
    context = ""
    question = text
    if spec.context == "input":
        context, question = text, ""
    elif spec.context == "prefix":
        context, task_prefix = task_prefix, ""
    elif spec.context == "split":
        parts = split_passage(text, spec.split_at)
        if parts is None:
            return None
        context, question = parts
    if spec.context not in ("none", "prefix"):
        input_prefix = ""
    if spec.template is not None:
        instruction = spec.template.replace("{input}", question)
    else:
        lines = [task_prefix] if task_prefix else []
        if question:
            lines.append(f"{input_prefix} {question}" if input_prefix else question)
        instruction = "\n".join(lines)
    return instruction.strip(), context


def example_row(spec: TaskSpec, data: dict[str, Any], subtask: str, index: int,
                example: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Turn one BIG-bench example into a row (without split/heldout), or (None, skip reason)."""
    label = task_label(spec.task, subtask)
    row_id = f"{label}-{index:04d}"
    if not example["input"].strip():
        return None, "empty_input"
    prompt = build_prompt(spec, data.get("task_prefix", ""), data.get("example_input_prefix", ""),
                          example["input"])
    if prompt is None:
        return None, "no_passage_split"
    instruction, context = prompt
    choices: list[str] | None = None
    if spec.use_choices and "target_scores" in example:
        response = best_choice(example["target_scores"])
        if response is None:
            return None, "no_single_best_choice"
        choices = [c.strip() for c in example["target_scores"]]
        if any(not c for c in choices) or len(set(choices)) != len(choices):
            return None, "bad_choices"
        if spec.shuffle_choices:
            choices = shuffled(choices, stable_seed("choices", row_id))
        if spec.list_choices:
            instruction = f"{instruction}\n{format_options(choices)}"
    else:
        response = first_target(example.get("target"))
    if not instruction or not response:
        return None, "empty_instruction_or_response"
    if len(instruction) + len(context) > MAX_PROMPT_CHARS:
        return None, "prompt_too_long"
    if len(response) > MAX_RESPONSE_CHARS:
        return None, "response_too_long"
    row = {"id": row_id, "instruction": instruction, "context": context, "response": response,
           "choices": choices, "category": spec.category, "task": label}
    return row, ""


def candidate_rows(spec: TaskSpec, tasks_dir: Path,
                   skipped: dict[str, int]) -> list[list[dict[str, Any]]]:
    """All usable rows of a spec, one list per subtask, in source order, duplicates dropped."""
    pools = []
    for subtask in spec.subtasks or ("",):
        path = tasks_dir / spec.task / subtask / "task.json" if subtask else \
            tasks_dir / spec.task / "task.json"
        data = load_task_file(path)
        seen: set[tuple[str, str]] = set()
        pool = []
        for index, example in enumerate(data["examples"]):
            row, reason = example_row(spec, data, subtask, index, example)
            if row is None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            key = (row["instruction"], row["context"])
            if key in seen:
                skipped["duplicate_prompt"] = skipped.get("duplicate_prompt", 0) + 1
                continue
            seen.add(key)
            pool.append(row)
        pools.append(pool)
    return pools


def sample_balanced(pools: list[list[dict[str, Any]]], cap: int, seed: int,
                    name: str) -> list[dict[str, Any]]:
    """Shuffle each subtask's pool, interleave them round-robin, keep the first ``cap``."""
    queues = [shuffled(pool, stable_seed(seed, "sample", name, i))
              for i, pool in enumerate(pools)]
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < cap and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(picked) < cap:
                picked.append(queue[depth])
        depth += 1
    return picked


def assign_split(rows: list[dict[str, Any]], spec: TaskSpec, seed: int) -> list[dict[str, Any]]:
    """Held-out spec: all test/heldout. Otherwise, within each task/subtask, a seeded
    TEST_FRACTION share (rounded half up) goes to test as near-test examples."""
    if spec.heldout:
        return [{**r, "split": "test", "heldout": True} for r in rows]
    test_ids: set[str] = set()
    for label in sorted({r["task"] for r in rows}):
        group = [r for r in rows if r["task"] == label]
        order = shuffled(group, stable_seed(seed, "split", label))
        n_test = int(len(order) * TEST_FRACTION + 0.5)
        test_ids.update(r["id"] for r in order[:n_test])
    return [{**r, "split": "test" if r["id"] in test_ids else "train", "heldout": False}
            for r in rows]


def source_index(row_id: str) -> int:
    return int(row_id.rsplit("-", 1)[1])


def resolve_tasks_dir(path: Path) -> Path:
    """Accept the benchmark_tasks folder, the bigbench package folder, or the sdist root."""
    for candidate in (path / "benchmark_tasks", path / "bigbench" / "benchmark_tasks"):
        if candidate.is_dir():
            return candidate
    if not path.is_dir():
        raise ValueError(f"{path}: BIG-bench directory not found")
    return path


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per task/category/domain/split and the mean prompt length."""
    tasks: dict[str, dict[str, Any]] = {}
    categories: dict[str, dict[str, int]] = {}
    domains: dict[str, dict[str, int]] = {}
    for r in rows:
        kind = "train" if r["split"] == "train" else ("far_test" if r["heldout"] else "near_test")
        t = tasks.setdefault(r["task"], {"category": r["category"], "heldout": r["heldout"],
                                         "train": 0, "near_test": 0, "far_test": 0})
        t[kind] += 1
        c = categories.setdefault(r["category"], {"train": 0, "near_test": 0, "far_test": 0})
        c[kind] += 1
        d = domains.setdefault(CATEGORY_DOMAIN[r["category"]],
                               {"train": 0, "near_test": 0, "far_test": 0})
        d[kind] += 1
    lengths = [len(r["instruction"]) + len(r["context"]) for r in rows]
    return {
        "rows": len(rows),
        "train": sum(r["split"] == "train" for r in rows),
        "test": sum(r["split"] == "test" for r in rows),
        "far_test": sum(r["heldout"] for r in rows),
        "heldout_tasks": sorted({r["task"] for r in rows if r["heldout"]}),
        "mean_prompt_chars": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        "max_prompt_chars": max(lengths, default=0),
        "domains": domains,
        "categories": categories,
        "tasks": tasks,
    }


def build_rows(tasks_dir: Path, *, seed: int = 0,
               specs: Sequence[TaskSpec] = DEMO_TASKS) -> tuple[list[dict[str, Any]],
                                                                dict[str, int]]:
    """All demo rows (sorted by task, then source index) and the skip counts."""
    validate_specs(specs)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for spec in specs:
        name = f"{spec.task}:{','.join(spec.subtasks)}"
        pools = candidate_rows(spec, tasks_dir, skipped)
        picked = sample_balanced(pools, spec.cap, seed, name)
        rows.extend(assign_split(picked, spec, seed))
    rows.sort(key=lambda r: (r["task"], source_index(r["id"])))
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("demo rows: field 'id' is not unique")
    return [{k: r[k] for k in ROW_KEYS} for r in rows], dict(sorted(skipped.items()))


def build_demo_set(bigbench_dir: Path, out_path: Path, *, seed: int = 0,
                   specs: Sequence[TaskSpec] = DEMO_TASKS) -> dict[str, Any]:
    """Write the demo JSONL to ``out_path`` and return summary counts."""
    tasks_dir = resolve_tasks_dir(Path(bigbench_dir))
    rows, skipped = build_rows(tasks_dir, seed=seed, specs=specs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(text.encode("utf-8"))
    tmp.replace(out_path)
    summary = summarize(rows)
    summary["skipped"] = skipped
    summary["bytes"] = out_path.stat().st_size
    summary["out"] = str(out_path)
    return summary


def default_bigbench_dir() -> Path:
    """Locate the installed ``bigbench`` package without importing it."""
    spec = importlib.util.find_spec("bigbench")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("--bigbench-dir: not given and no installed 'bigbench' package found "
                         "(pip download bigbench, extract it, and pass its folder)")
    return Path(list(spec.submodule_search_locations)[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bigbench-dir", type=Path, default=None,
                        help="BIG-bench benchmark_tasks folder, bigbench package folder, or "
                             "sdist root (default: the installed bigbench package)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output JSONL (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="sampling/split seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        bigbench_dir = args.bigbench_dir or default_bigbench_dir()
        summary = build_demo_set(bigbench_dir, args.out, seed=args.seed)
    except ValueError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
