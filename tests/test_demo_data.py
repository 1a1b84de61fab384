"""The embedded BIG-bench demo set: the committed file's schema; the builder on a fake BIG-bench.

Offline and fast: nothing here needs the real BIG-bench package.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipelines.demo_data import (  # noqa: E402
    CATEGORY_DOMAIN,
    MAX_PROMPT_CHARS,
    ROW_KEYS,
    TaskSpec,
    build_demo_set,
    load_task_file,
    validate_specs,
)

DEMO_FILE = ROOT / "data" / "demo" / "bigbench_demo.jsonl"
DOMAINS_TOML = ROOT / "data" / "domains.toml"


# ------------------------------------------------------------------------------------------
# (a) the committed data file


@pytest.fixture(scope="module")
def demo_rows() -> list[dict]:
    assert DEMO_FILE.is_file(), f"{DEMO_FILE} is missing; run python -m pipelines.demo_data"
    rows = []
    for n, line in enumerate(DEMO_FILE.read_text(encoding="utf-8").splitlines(), start=1):
        assert line.strip(), f"line {n} is blank"
        rows.append(json.loads(line))
    return rows


def parent_task(task: str) -> str:
    return task.split("/", 1)[0]


def test_demo_file_size_and_encoding():
    raw = DEMO_FILE.read_bytes()
    assert len(raw) < 2_000_000
    raw.decode("utf-8")
    assert raw.endswith(b"\n") and b"\r" not in raw


def test_demo_rows_follow_schema(demo_rows):
    assert 2000 <= len(demo_rows) <= 3000
    ids = [r["id"] for r in demo_rows]
    assert len(set(ids)) == len(ids)
    for r in demo_rows:
        where = r.get("id")
        assert tuple(r) == ROW_KEYS, where
        assert isinstance(r["id"], str) and r["id"].startswith(r["task"] + "-"), where
        assert isinstance(r["instruction"], str) and r["instruction"].strip(), where
        assert isinstance(r["context"], str), where
        assert isinstance(r["response"], str) and r["response"].strip(), where
        assert r["category"] in CATEGORY_DOMAIN, where
        assert isinstance(r["task"], str) and r["task"], where
        assert r["split"] in ("train", "test"), where
        assert isinstance(r["heldout"], bool), where
        if r["heldout"]:
            assert r["split"] == "test", where
        if r["choices"] is not None:
            assert isinstance(r["choices"], list) and len(r["choices"]) >= 2, where
            assert all(isinstance(c, str) and c.strip() for c in r["choices"]), where
            assert len(set(r["choices"])) == len(r["choices"]), where
            assert r["response"] in r["choices"], where
        assert len(r["instruction"]) + len(r["context"]) <= MAX_PROMPT_CHARS, where


def test_demo_prompts_are_short_on_average(demo_rows):
    lengths = [len(r["instruction"]) + len(r["context"]) for r in demo_rows]
    assert sum(lengths) / len(lengths) <= 250


def test_demo_categories_map_to_domains_toml():
    tomllib = pytest.importorskip("tomllib")
    table = tomllib.loads(DOMAINS_TOML.read_text(encoding="utf-8"))["categories"]
    for category, domain in CATEGORY_DOMAIN.items():
        assert table.get(category) == domain, category


def test_demo_splits_cover_both_domains(demo_rows):
    seen = {(CATEGORY_DOMAIN[r["category"]], r["split"], r["heldout"]) for r in demo_rows}
    for domain in ("Chollet", "Reasoning"):
        assert (domain, "train", False) in seen
        assert (domain, "test", False) in seen, f"{domain}: no near test rows"
        assert (domain, "test", True) in seen, f"{domain}: no far (held-out) test rows"
    n_train = sum(r["split"] == "train" for r in demo_rows)
    assert 0.55 <= n_train / len(demo_rows) <= 0.75


def test_demo_heldout_tasks_are_whole(demo_rows):
    heldout = {parent_task(r["task"]) for r in demo_rows if r["heldout"]}
    assert 4 <= len(heldout) <= 6
    for r in demo_rows:
        if parent_task(r["task"]) in heldout:
            assert r["heldout"] and r["split"] == "test", r["id"]
    held_domains = {CATEGORY_DOMAIN[r["category"]] for r in demo_rows if r["heldout"]}
    assert held_domains == {"Chollet", "Reasoning"}


def test_demo_per_task_caps(demo_rows):
    per_parent: dict[str, int] = {}
    for r in demo_rows:
        per_parent[parent_task(r["task"])] = per_parent.get(parent_task(r["task"]), 0) + 1
    assert 20 <= len(per_parent) <= 28
    assert max(per_parent.values()) <= 200  # gem holds two specs of <= 100 each


# ------------------------------------------------------------------------------------------
# (b) the builder on a synthetic BIG-bench folder


def write_task(root: Path, rel: str, data: dict) -> Path:
    path = root / rel / "task.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def make_fake_bigbench(tmp_path: Path) -> Path:
    tasks = tmp_path / "bigbench" / "benchmark_tasks"
    write_task(tasks, "fake_math", {
        "name": "fake_math", "keywords": ["arithmetic"], "description": "sums",
        "examples": [
            {"input": "What is 1 plus 1?", "target": "2"},
            {"input": "What is 2 plus 2?", "target": ["4", "four"]},
            {"input": "   ", "target": "0"},                      # empty input: skipped
            {"input": "What is 3 plus 3?", "target": ""},          # empty answer: skipped
            {"input": "What is 4 plus 4?", "target": "8"},
            {"input": "What is 1 plus 1?", "target": "2"},         # duplicate prompt: skipped
            {"input": "x" * (MAX_PROMPT_CHARS + 1), "target": "1"},  # too long: skipped
            {"input": "What is 5 plus 5?", "target": "10"},
        ],
    })
    write_task(tasks, "fake_mc", {"name": "fake_mc", "keywords": [], "description": "parent"})
    for sub in ("a", "b"):
        write_task(tasks, f"fake_mc/{sub}", {
            "name": sub, "keywords": ["multiple choice"], "description": "mc",
            "task_prefix": "Pick the colour.\n", "example_input_prefix": "\nThing: ",
            "examples": [
                {"input": f"sky {sub}", "target_scores": {"blue": 1, "red": 0}},
                {"input": f"grass {sub}", "target_scores": {"blue": 0, "green": 1.0}},
                {"input": f"tie {sub}", "target_scores": {"x": 1, "y": 1}},  # tie: skipped
                {"input": f"blood {sub}", "target_scores": {" red ": 1, "blue": 0}},
            ],
        })
    write_task(tasks, "fake_story", {
        "name": "fake_story", "keywords": ["reading comprehension"], "description": "stories",
        "example_input_prefix": "Context: ",
        "examples": [
            {"input": "Ann has a cat.\nQ:What does Ann have?",
             "target_scores": {"a cat": 1, "a dog": 0}},
            {"input": "Bob is tall. Q: Is Bob tall?", "target_scores": {"yes": 1, "no": 0}},
            {"input": "No question here", "target_scores": {"yes": 1, "no": 0}},  # no split
        ],
    })
    return tmp_path / "bigbench"


FAKE_SPECS = (
    TaskSpec("fake_math", "arithmetic", 10),
    TaskSpec("fake_mc", "classification", 5, subtasks=("a", "b")),
    TaskSpec("fake_story", "closed_qa", 10, heldout=True, context="split",
             split_at=("Q:", "\n")),
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_on_fake_bigbench(tmp_path):
    src = make_fake_bigbench(tmp_path)
    out = tmp_path / "out" / "demo.jsonl"
    summary = build_demo_set(src, out, seed=0, specs=FAKE_SPECS)
    rows = read_jsonl(out)
    by_id = {r["id"]: r for r in rows}

    # exact rows and splits for seed 0 (pinned: a change here changes the committed demo set)
    assert [(r["id"], r["split"], r["heldout"]) for r in rows] == [
        ("fake_math-0000", "test", False),
        ("fake_math-0001", "train", False),
        ("fake_math-0004", "train", False),
        ("fake_math-0007", "train", False),
        # fake_mc: 3 usable rows per subtask, cap 5 balanced round-robin -> one is dropped
        ("fake_mc/a-0000", "train", False),
        ("fake_mc/a-0001", "test", False),
        ("fake_mc/a-0003", "train", False),
        ("fake_mc/b-0000", "train", False),
        ("fake_mc/b-0003", "test", False),
        ("fake_story-0000", "test", True),
        ("fake_story-0001", "test", True),
    ]
    mc_ids = [i for i in by_id if i.startswith("fake_mc/")]
    assert len(mc_ids) == 5
    assert {i.split("-")[0] for i in mc_ids} == {"fake_mc/a", "fake_mc/b"}
    assert all(i.rsplit("-", 1)[1] in ("0000", "0001", "0003") for i in mc_ids)

    assert by_id["fake_math-0001"] == {
        "id": "fake_math-0001", "instruction": "What is 2 plus 2?", "context": "",
        "response": "4", "choices": None, "category": "arithmetic", "task": "fake_math",
        "split": by_id["fake_math-0001"]["split"], "heldout": False,
    }
    mc = by_id.get("fake_mc/a-0003") or by_id["fake_mc/b-0003"]
    sub = mc["task"].split("/")[1]
    assert mc["instruction"] == f"Pick the colour.\nThing: blood {sub}\nOptions:\n- red\n- blue"
    assert mc["response"] == "red" and mc["choices"] == ["red", "blue"]
    assert by_id["fake_story-0000"]["context"] == "Ann has a cat."
    assert by_id["fake_story-0000"]["instruction"] == \
        "What does Ann have?\nOptions:\n- a cat\n- a dog"
    assert by_id["fake_story-0001"]["context"] == "Bob is tall."
    assert by_id["fake_story-0001"]["instruction"] == "Is Bob tall?\nOptions:\n- yes\n- no"
    assert by_id["fake_story-0001"]["response"] == "yes"

    # splits: held-out task all test; others 25% (rounded half up) near test per (sub)task
    assert all(r["split"] == "test" and r["heldout"] for r in rows if r["task"] == "fake_story")
    assert not any(r["heldout"] for r in rows if r["task"] != "fake_story")
    assert sum(r["split"] == "test" for r in rows if r["task"] == "fake_math") == 1
    for sub in ("fake_mc/a", "fake_mc/b"):
        group = [r for r in rows if r["task"] == sub]
        assert sum(r["split"] == "test" for r in group) == int(len(group) * 0.25 + 0.5)
    assert summary["rows"] == 11 and summary["far_test"] == 2
    assert summary["train"] + summary["test"] == 11
    assert summary["skipped"] == {"duplicate_prompt": 1, "empty_input": 1,
                                  "empty_instruction_or_response": 1,
                                  "no_passage_split": 1, "no_single_best_choice": 2,
                                  "prompt_too_long": 1}


def test_build_is_byte_identical_across_runs(tmp_path):
    src = make_fake_bigbench(tmp_path)
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    build_demo_set(src, first, seed=3, specs=FAKE_SPECS)
    build_demo_set(src / "benchmark_tasks", second, seed=3, specs=FAKE_SPECS)
    assert first.read_bytes() == second.read_bytes()


def test_seed_changes_sampling_not_schema(tmp_path):
    src = make_fake_bigbench(tmp_path)
    outs = []
    for seed in range(6):
        out = tmp_path / f"s{seed}.jsonl"
        build_demo_set(src, out, seed=seed, specs=FAKE_SPECS)
        outs.append(out.read_bytes())
    assert len(set(outs)) > 1


def test_malformed_task_file_names_file_and_field(tmp_path):
    bad = write_task(tmp_path, "bad", {"name": "bad", "examples": [{"input": "q",
                                                                     "target_scores": []}]})
    with pytest.raises(ValueError, match=r"bad.task\.json: field 'examples\[0\]\.target_scores'"):
        load_task_file(bad)
    empty = write_task(tmp_path, "empty", {"name": "empty"})
    with pytest.raises(ValueError, match=r"empty.task\.json: field 'examples'"):
        load_task_file(empty)
    with pytest.raises(ValueError, match="task file not found"):
        build_demo_set(tmp_path, tmp_path / "o.jsonl",
                       specs=(TaskSpec("missing", "open_qa", 5),))


def test_specs_must_hold_out_whole_tasks():
    with pytest.raises(ValueError, match="held out in one spec but not in another"):
        validate_specs((TaskSpec("t", "open_qa", 5, subtasks=("a",), heldout=True),
                        TaskSpec("t", "open_qa", 5, subtasks=("b",))))
    with pytest.raises(ValueError, match="category"):
        validate_specs((TaskSpec("t", "poetry", 5),))
