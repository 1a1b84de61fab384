"""Reading Dolly-format and other instruction data; bad input gives one clear line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from llm_maps.domains import DomainMap
from llm_maps.errors import LLMMapsError
from pipelines.sources import load_source, parse_columns
from pipelines.splits import assign_splits
from pipelines.templates import get_template

ROWS = [
    {"instruction": "What is 2 + 3?", "context": "", "response": "5", "category": "open_qa"},
    {"instruction": "Summarize.", "context": "A long text.", "response": "Short.", "category": "summarization"},
    {"instruction": "Classify: great film", "context": "", "response": "positive", "category": "classification"},
]


def test_jsonl_csv_parquet_give_the_same_table(tmp_path):
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    csv = tmp_path / "d.csv"
    pd.DataFrame(ROWS).to_csv(csv, index=False)
    pq = tmp_path / "d.parquet"
    pd.DataFrame(ROWS).to_parquet(pq)
    frames = [load_source(p).frame for p in (jl, csv, pq)]
    cols = ["example_id", "instruction", "context", "reference", "category", "task"]
    for f in frames:
        assert f[cols].values.tolist() == [
            ["d-1", "What is 2 + 3?", "", "5", "open_qa", "open_qa"],
            ["d-2", "Summarize.", "A long text.", "Short.", "summarization", "summarization"],
            ["d-3", "Classify: great film", "", "positive", "classification", "classification"],
        ]
    # default ids count records; source_row is the 1-based line number (CSV line 1 is the header)
    assert load_source(csv).frame["source_row"].tolist() == [2, 3, 4]
    info = load_source(jl).info
    assert info["kind"] == "jsonl" and len(info["sha256"]) == 64 and info["rows"] == 3


def test_datasets_folder_and_column_mapping(tmp_path):
    import datasets

    rows = [{"uid": f"u{i}", "question": f"q{i}?", "answer": f"a{i}", "type": "open_qa",
             "split": "train" if i < 3 else "validation"} for i in range(5)]
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    src = load_source(folder, columns=parse_columns("id=uid,instruction=question,response=answer,category=type"))
    f = src.frame
    assert f["example_id"].tolist() == ["u0", "u1", "u2", "u3", "u4"]
    assert f["instruction"].tolist() == ["q0?", "q1?", "q2?", "q3?", "q4?"]
    assert f["split"].tolist() == ["train", "train", "train", "test", "test"]  # validation -> test


@pytest.mark.parametrize("content, message", [
    ('{"instruction": "a", "response": "b"}\n{"instruction": "", "response": "c"}\n',
     r"d.jsonl, line 2, field 'instruction': empty prompt"),
    ('{"instruction": "a", "response": "b"}\n{"response": "c"}\n',
     r"d.jsonl, line 2, field 'instruction': missing"),
    ('{"prompt_text": "a", "response": "b"}\n',
     r"d.jsonl, field 'instruction': column missing"),
    ('{"id": "x", "instruction": "a", "response": "b"}\n\n{"id": "x", "instruction": "c", "response": "d"}\n',
     r"d.jsonl, line 3, field 'id': duplicate id 'x' \(first at line 1\)"),
    ('{"instruction": "a", "response": "b"}\n{"instruction": "a", "response": \n',
     r"d.jsonl, line 2: invalid JSON"),
    ('', r"d.jsonl: empty dataset"),
    ('{"instruction": "a", "response": "b", "split": "holdout"}\n',
     r"d.jsonl, line 1, field 'split': split must be train or test"),
])
def test_bad_jsonl_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(LLMMapsError, match=message) as info:
        load_source(path)
    assert "\n" not in str(info.value)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"instruction": "a", "response": "b"}\n{"instruction": "caf\xe9", "response": "b"}\n')
    with pytest.raises(LLMMapsError, match=r"d.jsonl, line 2: not valid UTF-8 \(byte 0xe9 at column 21\)"):
        load_source(path)


def test_csv_errors_name_line_and_field(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,response\n"multi\nline",ok\n,empty\n', encoding="utf-8")
    with pytest.raises(LLMMapsError, match=r"d.csv, line 4, field 'instruction': empty prompt"):
        load_source(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(LLMMapsError, match="no such file or folder"):
        load_source(tmp_path / "nope.jsonl")
    other = tmp_path / "d.xml"
    other.write_text("<a/>")
    with pytest.raises(LLMMapsError, match="unknown data format '.xml'"):
        load_source(other)


def test_split_by_example_is_deterministic_and_order_free():
    frame = pd.DataFrame({"example_id": [f"e{i}" for i in range(200)], "category": ["a", "b"] * 100})
    a, rule = assign_splits(frame, test_size=0.25, seed=3)
    b, _ = assign_splits(frame.iloc[::-1].reset_index(drop=True), test_size=0.25, seed=3)
    assert dict(zip(a.example_id, a.split)) == dict(zip(b.example_id, b.split))
    assert rule["method"] == "example" and rule["counts"]["test"] == (a.split == "test").sum()
    assert 30 <= rule["counts"]["test"] <= 70
    c, _ = assign_splits(frame, test_size=0.25, seed=4)
    assert (c.split != a.split).any()


def test_split_by_category_holds_out_whole_categories():
    frame = pd.DataFrame({"example_id": [f"e{i}" for i in range(90)], "category": ["a", "b", "c"] * 30})
    out, rule = assign_splits(frame, test_categories=["b"], test_size=0.0)
    assert set(out.loc[out.category == "b", "split"]) == {"test"}
    assert set(out.loc[out.category != "b", "split"]) == {"train"}
    assert rule == {"method": "category", "test_categories": ["b"], "test_size": 0.0, "seed": 0,
                    "counts": {"train": 60, "test": 30}}
    with pytest.raises(LLMMapsError, match="unknown category 'z'"):
        assign_splits(frame, test_categories=["z"])


def test_domain_map_defaults_and_unknown(tmp_path):
    dm = DomainMap.load()
    assert dm.domain_for(category="classification") == "Chollet"
    assert dm.domain_for(category="open_qa") == "Chollet"
    assert dm.domain_for(category="brainstorming") == "Reasoning"
    assert dm.domain_for(category="closed_qa") == "Reasoning"
    assert dm.domain_for(category="Creative Writing") == "Reasoning"
    assert dm.domain_for(task="x", category="mystery", keywords=["logical reasoning"]) == "Reasoning"
    assert dm.domain_for(category="mystery") == "unknown"
    custom = tmp_path / "d.toml"
    custom.write_text('[categories]\nopen_qa = "Chollet"\n[tasks]\n"arithmetic" = "Special"\n')
    dm2 = DomainMap.load(custom)
    assert dm2.domain_for(task="arithmetic/2_digit", category="open_qa") == "Special"
    bad = tmp_path / "bad.toml"
    bad.write_text('[categories]\nopen_qa = 3\n')
    with pytest.raises(LLMMapsError, match=r"bad.toml, field 'categories.open_qa'"):
        DomainMap.load(bad)


def test_dolly_template_matches_dolly_generation_format():
    t = get_template("dolly")
    assert t.render("Name a color.", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nName a color.\n\n### Response:\n")
    assert t.render("Summarize.", "Some text.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nSummarize.\n\nInput:\nSome text.\n\n### Response:\n")
    assert t.stop_strings == ("### End",)


def test_chat_redpajama_and_custom_templates(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    assert get_template("auto", tok).name == "dolly"  # no chat template -> dolly
    with pytest.raises(LLMMapsError, match="has no chat template"):
        get_template("chat", tok)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    chat = get_template("auto", tok)
    assert chat.name == "chat"
    assert chat.render("Hi", "ctx", tokenizer=tok) == "<|user|>Hi\n\nctx\n<|assistant|>"
    assert get_template("redpajama").render("Hi", "") == "<human>: Hi\n<bot>:"
    custom = get_template("Q: {instruction}{context_block}\nA:")
    assert custom.render("Why?", "Because.") == "Q: Why?\n\nBecause.\nA:"
    assert custom.render("Why?", "") == "Q: Why?\nA:"
    with pytest.raises(LLMMapsError, match="neither a known template"):
        get_template("no placeholder")


def test_bigbench_and_lmeval_task_names_find_domains_by_keyword():
    from llm_maps.domains import task_keywords

    dm = DomainMap.load()
    assert "arithmetic" in task_keywords("modified_arithmetic")
    assert task_keywords("bigbench_logical_deduction_multiple_choice") == task_keywords("logical_deduction")
    # no category match: the task's BIG-bench keywords decide, in the order of data/domains.toml
    assert dm.domain_for(task="bigbench_modified_arithmetic_generate_until", category="x") == "Chollet"
    assert dm.domain_for(task="bigbench_logical_deduction_multiple_choice", category="x") == "Reasoning"
    assert dm.domain_for(task="causal_judgment", category="mystery") == "Reasoning"
    assert dm.domain_for(task="not_a_bigbench_task", category="mystery") == "unknown"
