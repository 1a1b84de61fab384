"""Shared fixtures: tiny random causal LMs (gpt_neox, llama, gpt2) with a tokenizer trained here.

Nothing is downloaded. The tokenizer has an EOS token and deliberately no pad token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]  # tests of our own pytest hooks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction: What is 2 + 3? ### Response: 5 ### End",
    "Classify the sentiment of this review: the film was wonderful and moving.",
    "Summarize the paragraph about the history of the printing press in one sentence.",
    "Write a short poem about the sea, the wind and the light on the water.",
    "Extract the names of all people mentioned in the following text: Alice met Bob in Paris.",
    "Input: The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ?",
    "Answer step by step: if a train leaves at 3pm and travels two hours, when does it arrive?",
]

ARCHS = ("gpt_neox", "llama", "gpt2")


def train_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    assert fast.pad_token is None
    fast.save_pretrained(str(folder))
    return fast


def build_tiny_model(arch: str, folder: Path, *, seed: int = 0, hidden: int = 32, layers: int = 3):
    import torch
    from transformers import (AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig)

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(folder)
    vocab = len(tok)
    common = dict(vocab_size=vocab, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    if arch == "gpt_neox":
        config = GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                               intermediate_size=2 * hidden, max_position_embeddings=256,
                               rotary_pct=0.5, **common)
    elif arch == "llama":
        config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=2 * hidden,
                             max_position_embeddings=256, **common)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=256, **common)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: build_tiny_model(arch, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_model(tiny_models) -> Path:
    return tiny_models["gpt_neox"]


def dolly_rows(n: int = 40, *, seed: int = 0) -> list[dict]:
    """Small Dolly-format data: varied lengths, with and without context, four categories."""
    import random

    rng = random.Random(seed)
    cats = ["classification", "open_qa", "summarization", "creative_writing"]
    words = "the a fox dog sea wind light paper press train answer step poem review film".split()
    rows = []
    for i in range(n):
        k = rng.randint(1, 30)
        rows.append({
            "instruction": f"Question {i}: " + " ".join(rng.choice(words) for _ in range(k)),
            "context": " ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) if i % 3 == 0 else "",
            "response": " ".join(rng.choice(words) for _ in range(rng.randint(1, 5))),
            "category": cats[i % len(cats)],
        })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def dolly_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "dolly.jsonl", dolly_rows())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_job(client, job_id: str, until=("done", "failed"), timeout: float = 60.0, every: float = 0.02,
             on_body=None) -> dict:
    """Poll a job through the API until its status is one of ``until``; returns the body.
    ``on_body(body)`` sees every body polled, the last one included."""
    deadline = time.time() + timeout
    while True:
        body = client.get(f"/api/points/{job_id}").get_json()
        if on_body is not None:
            on_body(body)
        if body["status"] in until:
            return body
        assert time.time() < deadline, body
        time.sleep(every)


def poll_streaming(client, job_id: str, *, timeout: float = 90.0, every: float = 0.005):
    """Poll a job through the API to its end; returns (final body, token counts seen while running)."""
    seen = []

    def record(body):
        if body["status"] == "running" and body.get("result"):
            seen.append(len(body["result"]["tokens"]))

    return wait_job(client, job_id, timeout=timeout, every=every, on_body=record), seen


def build_scored_run(root: Path, model: Path, n: int) -> Path:
    """A small run as the live-point tests use it: ``n`` Dolly rows, PCA map, k=3, scored, with
    falloff statistics (2 bins); at ``root/runs/tiny``."""
    from interfaces.cli import main

    data = write_jsonl(root / "d.jsonl", dolly_rows(n))
    run = root / "runs" / "tiny"
    assert main(["build", "--model", str(model), "--data", str(data), "--out", str(run),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--no-progress"]) == 0
    assert main(["score", str(run), "--max-new-tokens", "3", "--no-progress"]) == 0
    assert main(["falloff", str(run), "--bins", "2"]) == 0
    return run


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port for one test module; yields its URL."""
    exe = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI installs the Debian package redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    import redis

    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.time() + 15
    while True:
        try:
            if redis.Redis.from_url(url).ping():
                break
        except redis.ConnectionError:
            pass
        assert proc.poll() is None and time.time() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=10)

def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """One line at the end naming what was skipped and why (e.g. browser tests without Chromium,
    Redis tests without redis-server), so a green run never hides lost coverage."""
    from collections import Counter

    reasons: Counter = Counter()
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = rep.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.write_line(
            f"skipped {sum(reasons.values())} tests: " + "; ".join(f"{n} because {r}" for r, n in reasons.most_common())
            + " (see README, 'Tests')", yellow=True, bold=True)
