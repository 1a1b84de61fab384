"""Scale-out: a real redis-server, two real `llm-maps worker` processes (Celery, REDIS_URL), the JSON
API of a web process on the same Redis, and `build --distributed` against a plain build."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import dolly_rows, free_port, poll_streaming, wait_job, write_jsonl
from contract_helpers import assert_follows_contract
from interfaces.cli import main

HEARTBEAT = 2  # seconds: the workers' heartbeat timeout in these tests


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("scale")
    data = write_jsonl(root / "d.jsonl", dolly_rows(40))
    run = root / "runs" / "tiny"
    args = ["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--template", "dolly",
            "--projection", "pca", "--k", "3", "--layers", "1,3", "--batch-tokens", "256", "--no-progress"]
    assert main(args + ["--out", str(run)]) == 0
    return run, args


def _start_worker(run: Path, url: str) -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": url, "LLM_MAPS_HEARTBEAT_TIMEOUT": str(HEARTBEAT)}
    return subprocess.Popen([sys.executable, "-m", "interfaces.cli", "worker", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_listening(url: str, n: int, timeout: float = 60.0) -> None:
    from llm_maps.jobs import BUILD_QUEUE, celery_app
    from pipelines.distributed import _workers_listening

    deadline = time.time() + timeout
    while len(_workers_listening(celery_app(url), BUILD_QUEUE, timeout=1.0)) < n:
        assert time.time() < deadline, f"{n} workers did not start"


@pytest.fixture(scope="module")
def workers(redis_url, plain_run):
    run, _ = plain_run
    procs = [_start_worker(run, redis_url) for _ in range(2)]
    try:
        _wait_listening(redis_url, 2)
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def web(redis_url, plain_run, monkeypatch, tmp_path):
    from dashboard.app import create_app

    monkeypatch.setenv("REDIS_URL", redis_url)
    app = create_app([plain_run[0]], state_dir=tmp_path / "state")
    return app.server.test_client(), app.server.config["LLM_MAPS_QUEUE"]




def test_web_process_with_redis_stays_torch_free(redis_url, plain_run):
    code = ("import sys; import dashboard.app as a; c = a.create_app([sys.argv[1]], []).server.test_client(); "
            "r = c.post('/api/runs/tiny/points', json={'instruction': 'hello'}); assert r.status_code == 202, r.data; "
            "import celery, redis; "
            "bad = [m for m in ('torch', 'transformers', 'pipelines') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(plain_run[0])], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "REDIS_URL": redis_url})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_jobs_run_on_both_workers_and_equal_the_embedded_path(workers, web, plain_run):
    from pipelines.engine import RunSession

    client, queue = web
    run, _ = plain_run
    texts = [f"Question {i}: the sea and the wind {i}" for i in range(8)]
    place_ids = []
    for text in texts:
        r = client.post("/api/runs/tiny/points", json={"instruction": text})
        assert r.status_code == 202
        place_ids.append(r.get_json()["id"])
    greedy_id = client.post("/api/runs/tiny/points", json={"instruction": "Write a poem about the light.",
                                                           "generate": True, "max_new_tokens": 12}).get_json()["id"]
    stream_id = client.post("/api/runs/tiny/points", json={"instruction": "Tell a long story.", "generate": True,
                                                           "max_new_tokens": 150, "temperature": 0.8,
                                                           "seed": 3}).get_json()["id"]
    body, seen_partial = poll_streaming(client, stream_id, every=0.003)
    assert body["status"] == "done", body
    tokens = body["result"]["tokens"]
    # streaming: tokens were visible while the job was still running, before the last one
    assert any(0 < n < len(tokens) for n in seen_partial), (seen_partial, len(tokens))

    session = RunSession(run, warm=False)
    for job_id, text in zip(place_ids, texts):
        res = wait_job(client, job_id, every=0.01)
        assert res["status"] == "done", res
        res, expected = res["result"], session.place(text)
        assert res["prompt"] == expected["prompt"]
        assert res["x"] == pytest.approx(expected["x"], abs=1e-6) and res["y"] == pytest.approx(expected["y"], abs=1e-6)
        assert [n["example_id"] for n in res["neighbours"]] == [n["example_id"] for n in expected["neighbours"]]
        assert [n["distance"] for n in res["neighbours"]] == pytest.approx(
            [n["distance"] for n in expected["neighbours"]], abs=1e-6)
    greedy = wait_job(client, greedy_id, every=0.01)
    assert greedy["status"] == "done", greedy
    expected = session.generate("Write a poem about the light.", max_new_tokens=12)
    assert greedy["result"]["output"] == expected["output"]
    assert [t["id"] for t in greedy["result"]["tokens"]] == [t["id"] for t in expected["tokens"]]

    ran_on = {queue.get(j)["worker"] for j in place_ids + [greedy_id, stream_id]}
    assert len(ran_on) == 2, ran_on  # both workers served the same queue
    assert {int(w.rsplit(":", 1)[1]) for w in ran_on} == {p.pid for p in workers}
    # points are kept for the run (in Redis, shared by every web process)
    points = client.get("/api/runs/tiny/points").get_json()["points"]
    assert {p["id"] for p in points} >= set(place_ids + [greedy_id, stream_id])


def test_distributed_build_equals_a_plain_build(workers, plain_run, redis_url, monkeypatch, tmp_path):
    run, args = plain_run
    monkeypatch.setenv("REDIS_URL", redis_url)
    out = tmp_path / "runs" / "dist"
    assert main(args + ["--out", str(out), "--distributed", "--chunk-size", "6"]) == 0
    for k in (1, 3):
        assert (out / "encodings" / f"layer_{k}.npy").read_bytes() == (run / "encodings" / f"layer_{k}.npy").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "examples.parquet"), pd.read_parquet(run / "examples.parquet"))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in run.iterdir())
    for b in sorted((run / "projection").iterdir()):  # the saved map too
        assert (out / "projection" / b.name).read_bytes() == b.read_bytes(), b.name
    m_plain, m_dist = (json.loads((r / "manifest.json").read_text()) for r in (run, out))
    dist = m_dist["encoding"].pop("distributed")
    assert dist["chunks"] >= 4 and len(dist["workers"]) == 2, dist  # both workers took chunks
    h_plain, h_dist = m_plain.pop("history"), m_dist.pop("history")
    assert [h["stage"] for h in h_dist] == [h["stage"] for h in h_plain] == ["encode", "project", "neighbours"]
    assert (h_dist[0]["params"].pop("distributed"), h_dist[0]["params"].pop("chunk_size")) == (True, 6)
    assert (h_plain[0]["params"].pop("distributed"), h_plain[0]["params"].pop("chunk_size")) == (False, 512)
    for m in (m_plain, m_dist):
        m.pop("created")
        for key in ("seconds", "tokens_per_second"):
            m["encoding"].pop(key)
        for section in ("projection", "neighbours"):  # wall times of those stages (issue 20)
            m[section].pop("seconds")
    for h in h_plain + h_dist:
        h.pop("created")
    assert h_dist == h_plain  # the same parameters, inputs and versions otherwise
    assert m_dist == m_plain
    assert not (out.parent / "dist.partial").exists()


def test_distributed_score_equals_a_plain_score_and_resumes(workers, redis_url, monkeypatch, tmp_path, tiny_models,
                                                           capsys):
    import numpy as np

    import pipelines.distributed as distributed
    from llm_maps.runfolder import Run

    rows = dolly_rows(30)
    for i, row in enumerate(rows):
        row["split"] = "train" if i < 8 else "test"
        if i % 3 == 1:
            row["choices"] = [row["response"], "the sea", "a fox and a dog"]
    data = write_jsonl(tmp_path / "mc.jsonl", rows)
    plain = tmp_path / "runs" / "plain"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(plain),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--no-progress"]) == 0
    dist = tmp_path / "runs" / "dist"
    shutil.copytree(plain, dist)
    score = ["--max-new-tokens", "6", "--splits", "test,train", "--no-progress"]
    assert main(["score", str(plain)] + score) == 0

    monkeypatch.setenv("REDIS_URL", redis_url)
    real_run_chunks = distributed.run_chunks

    def interrupted(app, task, pending, kwargs, **kw):  # chunk 0 finishes here, then the client dies
        distributed.score_chunk(**kwargs(pending[0]), worker="before-the-interruption")
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "run_chunks", interrupted)
    assert main(["score", str(dist), "--distributed", "--chunk-size", "5"] + score) == 130
    assert "interrupted (re-run the same command to resume)" in capsys.readouterr().err
    assert (dist / distributed.SCORE_DIR / "chunk_00000.json").exists()
    monkeypatch.setattr(distributed, "run_chunks", real_run_chunks)
    capsys.readouterr()
    assert main(["score", str(dist), "--distributed", "--chunk-size", "5"] + score) == 0
    err = capsys.readouterr().err
    n_chunks = Run(dist).manifest["scoring"]["generation"]["distributed"]["chunks"]
    assert f"distributed scoring: {n_chunks - 1} of {n_chunks} chunks" in err  # the finished chunk was reused
    assert not (dist / distributed.SCORE_DIR).exists()

    a, b = Run(plain).examples, Run(dist).examples
    assert b["choice_logprobs"].notna().sum() == 10 and b["output"].notna().all()
    for col in ("output", "stop_reason", "metric", "score", "correct"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("output_token_ids", "choice_logprobs"):
        assert [None if v is None else list(v) for v in a[col]] == [None if v is None else list(v) for v in b[col]]
    for x, y in zip(a["output_logprobs"], b["output_logprobs"]):
        np.testing.assert_allclose(list(x), list(y), atol=1e-5)
    gen = Run(dist).manifest["scoring"]["generation"]
    assert n_chunks >= 6 and "before-the-interruption" in gen["distributed"]["workers"]
    assert len(gen["distributed"]["workers"]) == 3, gen  # both workers took chunks, plus the interrupted client
    for col in ("first_entropy", "first_top_prob", "first_kl_to_mean"):  # generate's prefill vs a separate pass
        # (KL: a difference of two sums of the entropy's size, so an absolute tolerance)
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-5,
                                   atol=1e-5 if col == "first_kl_to_mean" else 1e-7, err_msg=col)
    plain_scoring, dist_scoring = Run(plain).manifest["scoring"], Run(dist).manifest["scoring"]
    assert plain_scoring["first_token"].pop("sources") == {"generation": 30, "choices": 0, "separate": 0}
    assert plain_scoring["first_token"].pop("separate") == {}
    assert dist_scoring["first_token"].pop("sources") == {"generation": 0, "choices": 0, "separate": 30}
    assert dist_scoring["first_token"].pop("separate") == {
        "distributed scoring (the passes ran on the workers)": b["example_id"].tolist()}
    for m in (plain_scoring, dist_scoring):
        m.pop("created")
        m.pop("generation")
        m["first_token"].pop("seconds")  # wall time of the first-token pass
        m.pop("choices", None)  # wall time of the local multiple-choice pass (chunks report theirs in generation)
    assert plain_scoring == dist_scoring


def test_distributed_score_with_auto_budgets_equals_a_plain_score(workers, redis_url, monkeypatch, tmp_path,
                                                                   tiny_models):
    """``--max-new-tokens auto --distributed``: the per-task budgets, computed once here from the
    references, travel with each chunk as per-row limits; outputs and manifest equal a local run."""
    import numpy as np

    from llm_maps.runfolder import Run

    rows = dolly_rows(16, seed=5)
    for i, r in enumerate(rows):  # two tasks with very different reference lengths (budgets)
        r["response"] = "yes" if i % 2 else "the fox " * 6
        r["category"] = "classification" if i % 2 else "creative_writing"
    data = write_jsonl(tmp_path / "budgets.jsonl", rows)
    plain = tmp_path / "runs" / "plain"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(plain),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--test-size", "0.5", "--no-progress"]) == 0
    dist = tmp_path / "runs" / "dist"
    shutil.copytree(plain, dist)
    score = ["--max-new-tokens", "auto", "--no-progress"]
    assert main(["score", str(plain)] + score) == 0
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["score", str(dist), "--distributed", "--chunk-size", "2"] + score) == 0

    a, b = Run(plain).examples, Run(dist).examples
    test = (b["split"] == "test").to_numpy()
    assert test.sum() >= 6 and b.loc[test, "output"].notna().all()
    for col in ("output", "stop_reason", "metric", "score", "correct"):
        assert a[col].tolist() == b[col].tolist(), col
    assert [None if v is None else list(v) for v in a["output_token_ids"]] == \
        [None if v is None else list(v) for v in b["output_token_ids"]]
    for x, y in zip(a["output_logprobs"][test], b["output_logprobs"][test]):
        np.testing.assert_allclose(list(x), list(y), atol=1e-5)
    g_plain, g_dist = Run(plain).manifest["scoring"]["generation"], Run(dist).manifest["scoring"]["generation"]
    budgets = g_dist["token_budgets"]
    assert g_dist["max_new_tokens"] == "auto" and len(set(budgets.values())) == 2, budgets
    for task, ids, reason in zip(b["task"][test], b["output_token_ids"][test], b["stop_reason"][test]):
        assert len(ids) <= budgets[task]  # each row's own limit applied on the worker
        assert reason != "length" or len(ids) == budgets[task]
    assert len({len(ids) for ids, r in zip(b["output_token_ids"][test], b["stop_reason"][test]) if r == "length"}) == 2
    dist_info = g_dist.pop("distributed")
    assert dist_info["chunks"] >= 4 and len(dist_info["workers"]) == 2, dist_info
    for g in (g_plain, g_dist):  # wall times, rates and the local batch size differ; the rest is the same
        for key in ("created", "seconds", "tokens_per_second", "batch_size"):
            g.pop(key)
    assert g_dist == g_plain
    assert not (dist / ".distributed-score").exists()
    assert_follows_contract(dist)  # max_new_tokens "auto" and the budgets are contract keys


def test_distributed_conditions_equal_a_local_run_and_resume(workers, redis_url, monkeypatch, tmp_path, tiny_models,
                                                             capsys):
    """``score RUN --conditions direct,cot,neighbours:2 --distributed``: direct through score's
    distributed path, then each condition's generation and multiple-choice passes (cot: after its
    reasoning) on the workers, one work folder per pass. Interrupted in the third pass, a re-run
    resumes the finished passes and chunks; conditions.parquet equals a local run's."""
    import re

    import numpy as np

    import pipelines.distributed as distributed
    from llm_maps.conditions import CONDITIONS_FILE
    from llm_maps.runfolder import Run
    from pipelines.conditions import WORK_DIR

    rows = dolly_rows(40, seed=6)
    for i, row in enumerate(rows):  # short prompts: two demonstrations fit the tiny model's 256 positions
        row.update(instruction=" ".join(row["instruction"].split()[:8]), context="",
                   split="train" if i < 16 else "test")
        if i % 3 == 1:
            row["choices"] = [row["response"], "the sea", "a fox and a dog"]
    data = write_jsonl(tmp_path / "cond.jsonl", rows)
    plain, dist = tmp_path / "runs" / "plain", tmp_path / "runs" / "dist"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(plain),
                 "--template", "plain", "--projection", "pca", "--k", "3", "--token-atlas", "--no-progress"]) == 0
    shutil.copytree(plain, dist)
    score = ["--conditions", "direct,cot,neighbours:2", "--limit-per-task", "2", "--cot-max-new-tokens", "5",
             "--max-new-tokens", "4", "--no-progress"]
    assert main(["score", str(plain)] + score) == 0

    monkeypatch.delenv("REDIS_URL", raising=False)
    capsys.readouterr()
    assert main(["score", str(dist), "--distributed"] + score) == 2  # no Redis: one line, nothing written
    assert capsys.readouterr().err == ("llm-maps score: error: --distributed: set REDIS_URL to the Redis the "
                                       "`llm-maps worker` processes use\n")
    assert not (dist / CONDITIONS_FILE).exists() and not Run(dist).manifest.get("scoring")

    monkeypatch.setenv("REDIS_URL", redis_url)
    real_run_chunks = distributed.run_chunks
    folders = []

    def interrupted(app, task, pending, kwargs, **kw):  # the neighbours' generation: chunk 0 here, then it dies
        folders.append(kwargs(pending[0]).get("folder"))
        if folders[-1] == f"{WORK_DIR}/neighbours-2.generate":
            distributed.score_chunk(**kwargs(pending[0]), worker="before-the-interruption")
            raise KeyboardInterrupt
        return real_run_chunks(app, task, pending, kwargs, **kw)

    monkeypatch.setattr(distributed, "run_chunks", interrupted)
    args = ["score", str(dist), "--distributed", "--chunk-size", "2"] + score
    assert main(args) == 130
    assert folders == [distributed.SCORE_DIR] + [f"{WORK_DIR}/{p}" for p in ("cot.generate", "cot.choices",
                                                                             "neighbours-2.generate")]
    assert not (dist / CONDITIONS_FILE).exists() and not (dist / distributed.SCORE_DIR).exists()
    assert (dist / WORK_DIR / "neighbours-2.generate" / "chunk_00000.json").exists()
    monkeypatch.setattr(distributed, "run_chunks", real_run_chunks)
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    ran = {m[3]: (m[1], int(m[2])) for m in re.finditer(r"distributed scoring: (\w+) (?:of )?(\d+) chunks(?: already "
                                                        r"finished)?, work folder \S+/([\w.-]+)", err)}
    assert set(ran) == {"cot.generate", "cot.choices", "neighbours-2.generate", "neighbours-2.choices"}, err
    assert ran["cot.generate"][0] == ran["cot.choices"][0] == "all"  # the finished passes were reused
    n = ran["neighbours-2.generate"][1]
    assert n >= 4 and ran["neighbours-2.generate"][0] == str(n - 1)  # and the finished chunk
    assert not (dist / WORK_DIR).exists() and not (dist / distributed.SCORE_DIR).exists()

    a, b = pd.read_parquet(plain / CONDITIONS_FILE), pd.read_parquet(dist / CONDITIONS_FILE)
    assert len(b) == 3 * 8 and b["condition"].value_counts().to_dict() == {"direct": 8, "cot": 8, "neighbours:2": 8}
    assert b["choice_logprobs"].notna().sum() == 3 * 3 and b["path_dists"].notna().all()
    for col in ("example_id", "condition", "prompt", "output", "answer", "extraction", "metric", "score", "correct",
                "n_tokens", "stop_reason", "dist_to_train", "path_mean_dist", "path_max_dist"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("choice_logprobs", "path_dists", "path_x", "path_y"):
        assert [None if v is None else list(v) for v in a[col]] == [None if v is None else list(v) for v in b[col]]
    np.testing.assert_allclose(a["mean_logprob"].to_numpy(float), b["mean_logprob"].to_numpy(float), atol=1e-5)

    m_plain, m_dist = Run(plain).manifest, Run(dist).manifest
    assert m_dist["scoring"]["generation"]["distributed"]["chunks"] >= 4  # direct: score's distributed path
    infos = {}
    for m in (m_plain, m_dist):
        section = json.loads(json.dumps(m["conditions"]))
        for info in section["conditions"].values():
            for key in ("seconds", "tokens_per_second", "created"):
                info.pop(key)
        infos[id(m)] = section
    ran_on = {name: infos[id(m_dist)]["conditions"][name].pop("distributed") for name in ("cot", "neighbours:2")}
    assert "distributed" not in infos[id(m_dist)]["conditions"]["direct"]  # stored rows: nothing ran
    assert infos[id(m_plain)] == infos[id(m_dist)]
    assert all(r["chunks"] >= 4 for r in ran_on.values()), ran_on
    assert "before-the-interruption" in ran_on["neighbours:2"]["workers"]
    pool = (set(ran_on["cot"]["workers"]) | set(ran_on["neighbours:2"]["workers"])) - {"before-the-interruption"}
    assert len(pool) == 2, ran_on  # both workers took chunks
    params, plain = m_dist["history"][-1]["params"], m_plain["history"][-1]["params"]
    assert (params.pop("distributed"), params.pop("chunk_size")) == (True, 2)
    assert (plain.pop("distributed"), plain.pop("chunk_size")) == (False, 512)
    # the command as given says where it ran, and the rest is the same
    assert (params["given"].pop("distributed"), params["given"].pop("chunk_size")) == (True, 2)
    assert (plain["given"].pop("distributed"), plain["given"].pop("chunk_size")) == (False, 512)
    assert params == plain
    assert_follows_contract(dist)


def _same_files(a: Path, b: Path, *subs: str) -> list[str]:
    """Every file under ``subs`` of run ``a`` exists in run ``b`` with the same bytes; their names."""
    names = sorted(p.relative_to(a).as_posix() for sub in subs for p in (a / sub).rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for sub in subs for p in (b / sub).rglob("*") if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return names


def _without_wall_times(manifest: dict) -> tuple[dict, list]:
    """(manifest, the distributed records popped) without the keys that differ between a local and a
    distributed run of the same thing: wall times, rates, resumed rows and where it ran."""
    m = json.loads(json.dumps(manifest))
    popped = []
    m.pop("created", None), m.pop("updated", None)
    for key in ("seconds", "tokens_per_second", "resumed_rows"):
        m["encoding"].pop(key)
    popped.append(m["encoding"].pop("distributed", None))
    for section in ("projection", "neighbours"):
        m[section].pop("seconds", None)
    for section in (m.get("token_atlas") or {}, (m.get("view_settings") or {}).get("completion") or {}):
        for key in ("seconds", "tokens_per_second"):
            section.pop(key, None)
        popped.append(section.pop("distributed", None))
    for h in m["history"]:
        h.pop("created")
        for key in ("distributed", "chunk_size"):
            h["params"].pop(key, None)
            (h["params"].get("given") or {}).pop(key, None)  # the command as given says where it ran
    return m, popped


def test_distributed_views_and_atlas_build_equals_a_plain_build_and_resumes(workers, redis_url, monkeypatch,
                                                                            tmp_path, tiny_models, capsys):
    """``build --views prompt,completion --token-atlas --distributed``: the planned passes (prompt end,
    every reference token, the completion EOS; separate passes where left truncation changes the
    prefix) go to the workers in chunks; an interrupted build resumes from its finished chunks and
    every file equals a plain build's."""
    import pipelines.distributed as distributed

    data = write_jsonl(tmp_path / "views.jsonl", dolly_rows(24, seed=3))
    args = ["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--template", "dolly",
            "--projection", "pca", "--k", "3", "--layers", "1,3", "--views", "prompt,completion", "--token-atlas",
            "--atlas-layers", "2", "--max-length", "170", "--batch-tokens", "512", "--no-progress"]
    plain, dist = tmp_path / "runs" / "plain", tmp_path / "runs" / "dist"
    assert main(args + ["--out", str(plain)]) == 0
    frame = pd.read_parquet(plain / "examples.parquet")
    assert 0 < frame["truncated"].sum() < len(frame) and frame["truncated_completion"].sum() > frame["truncated"].sum()

    monkeypatch.setenv("REDIS_URL", redis_url)
    real_run_chunks = distributed.run_chunks

    def interrupted(app, task, pending, kwargs, **kw):  # chunk 0 finishes here, then the client dies
        assert task == "llm_maps.views_chunk"
        distributed.views_chunk(**kwargs(pending[0]), worker="before-the-interruption")
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "run_chunks", interrupted)
    capsys.readouterr()
    assert main(args + ["--out", str(dist), "--distributed", "--chunk-size", "4"]) == 130
    assert (dist.parent / "dist.partial" / distributed.VIEWS_DIR / "chunk_00000.npz").exists()
    monkeypatch.setattr(distributed, "run_chunks", real_run_chunks)
    capsys.readouterr()
    assert main(args + ["--out", str(dist), "--distributed", "--chunk-size", "4"]) == 0
    err = capsys.readouterr().err
    m_plain, m_dist = (json.loads((r / "manifest.json").read_text()) for r in (plain, dist))
    n_chunks = m_dist["encoding"]["distributed"]["chunks"]
    assert n_chunks >= 4 and f"distributed passes: {n_chunks - 1} of {n_chunks} chunks" in err, err
    assert m_dist["encoding"]["resumed_rows"] > 0 == m_plain["encoding"]["resumed_rows"]

    names = _same_files(plain, dist, "encodings", "projection", "projection_completion", "projection_tokens")
    assert {"encodings/layer_1.npy", "encodings/completion/layer_3.npy", "encodings/tokens/layer_2.npy",
            "encodings/tokens/layer_3.npy"} <= set(names)
    assert sorted(p.name for p in dist.iterdir()) == sorted(p.name for p in plain.iterdir())
    pd.testing.assert_frame_equal(pd.read_parquet(dist / "examples.parquet"), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(dist / "tokens.parquet"), pd.read_parquet(plain / "tokens.parquet"))
    (a, _), (b, ran) = _without_wall_times(m_plain), _without_wall_times(m_dist)
    assert a == b
    assert all(r == m_dist["encoding"]["distributed"] for r in ran), ran  # one set of passes, recorded each place
    assert "before-the-interruption" in ran[0]["workers"] and len(ran[0]["workers"]) == 3, ran[0]  # + both workers
    assert not (dist.parent / "dist.partial").exists()
    assert_follows_contract(dist)


def test_encode_view_and_atlas_of_an_existing_run_distributed_equal_local(workers, redis_url, monkeypatch, tmp_path,
                                                                          tiny_models, capsys):
    """``atlas RUN --distributed`` and ``encode RUN --view completion --completion-model M
    --distributed`` (another model, loaded by the workers) write what the local commands write."""
    data = write_jsonl(tmp_path / "existing.jsonl", dolly_rows(20, seed=4))
    local, dist = tmp_path / "runs" / "local", tmp_path / "runs" / "dist"
    assert main(["build", "--model", str(tiny_models["gpt2"]), "--data", str(data), "--out", str(local),
                 "--template", "dolly", "--projection", "pca", "--k", "3", "--no-progress"]) == 0
    shutil.copytree(local, dist)
    other = ["--completion-model", str(tiny_models["llama"])]
    assert main(["atlas", str(local), "--atlas-layers", "2", "--no-progress"]) == 0
    assert main(["encode", str(local), "--view", "completion", "--no-progress"] + other) == 0
    monkeypatch.delenv("REDIS_URL", raising=False)
    capsys.readouterr()
    assert main(["atlas", str(dist), "--distributed", "--no-progress"]) == 2  # no Redis: one line, nothing written
    assert capsys.readouterr().err == ("llm-maps atlas: error: --distributed: set REDIS_URL to the Redis the "
                                       "`llm-maps worker` processes use\n")
    assert not (dist / ".extras.partial").exists() and not (dist / "tokens.parquet").exists()
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["atlas", str(dist), "--atlas-layers", "2", "--distributed", "--chunk-size", "3", "--no-progress"]) == 0
    assert main(["encode", str(dist), "--view", "completion", "--distributed", "--chunk-size", "3",
                 "--no-progress"] + other) == 0
    assert capsys.readouterr().err.count("distributed passes: ") == 2

    names = _same_files(local, dist, "encodings", "projection", "projection_completion", "projection_tokens")
    assert {"encodings/tokens/layer_2.npy", "encodings/tokens/layer_3.npy", "encodings/completion/layer_3.npy"} <= set(names)
    pd.testing.assert_frame_equal(pd.read_parquet(dist / "examples.parquet"), pd.read_parquet(local / "examples.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(dist / "tokens.parquet"), pd.read_parquet(local / "tokens.parquet"))
    m_local, m_dist = (json.loads((r / "manifest.json").read_text()) for r in (local, dist))
    assert m_dist["view_settings"]["completion"]["model_info"]["architecture"] == "LlamaModel"
    (a, _), (b, ran) = _without_wall_times(m_local), _without_wall_times(m_dist)
    assert a == b
    assert [h["params"]["distributed"] for h in m_dist["history"][-2:]] == [True, True]
    atlas_ran, view_ran = ran[1], ran[2]
    assert atlas_ran["chunks"] >= 3 and view_ran["chunks"] >= 3, ran
    assert len(set(atlas_ran["workers"]) | set(view_ran["workers"])) == 2, ran  # both workers took chunks
    assert not (dist / ".extras.partial").exists()
    assert_follows_contract(dist)


def test_killed_worker_fails_its_job_and_queued_jobs_survive_a_restart(workers, web, plain_run, redis_url):
    client, queue = web
    run, _ = plain_run
    job_id = client.post("/api/runs/tiny/points", json={"instruction": "Tell a long story.", "generate": True,
                                                        "max_new_tokens": 250}).get_json()["id"]
    wait_job(client, job_id, until=("running", "done", "failed"), every=0.01)
    pid = int(queue.get(job_id)["worker"].rsplit(":", 1)[1])
    victim = next(p for p in workers if p.pid == pid)
    os.kill(pid, signal.SIGSTOP)  # freeze it mid-job (no more heartbeats), then kill it
    assert client.get(f"/api/points/{job_id}").get_json()["status"] == "running"
    os.kill(pid, signal.SIGKILL)
    victim.wait(timeout=10)
    start = time.time()
    body = wait_job(client, job_id, timeout=15, every=0.01)
    assert body["status"] == "failed" and "stopped responding" in body["error"], body
    assert f"no heartbeat for {HEARTBEAT:g} s" in body["error"]
    assert time.time() - start < HEARTBEAT + 3  # within the heartbeat timeout plus polling

    # stop the other worker too (graceful); jobs queued meanwhile wait in Redis for a new worker
    other = next(p for p in workers if p.pid != pid)
    other.terminate()
    other.wait(timeout=30)
    queued = [client.post("/api/runs/tiny/points", json={"instruction": f"while down {i}"}).get_json()["id"]
              for i in range(3)]
    time.sleep(0.5)
    assert [client.get(f"/api/points/{j}").get_json()["status"] for j in queued] == ["queued"] * 3
    fresh = _start_worker(run, redis_url)
    workers.append(fresh)  # the fixture stops it
    for j in queued:
        assert wait_job(client, j, timeout=60, every=0.01)["status"] == "done"
    assert {queue.get(j)["worker"].rsplit(":", 1)[1] for j in queued} == {str(fresh.pid)}


def test_redis_queue_is_bounded_claims_once_and_fails_stale_jobs_like_the_embedded_one(redis_url):
    from llm_maps.jobs import JobQueue, QueueFull, RedisJobQueue

    q = RedisJobQueue(redis_url, max_queued=2, heartbeat_timeout=0.3, prefix="unit")
    ids = [q.submit("nobody", "place", {"instruction": f"q{i}"}) for i in range(2)]  # no worker serves 'nobody'
    with pytest.raises(QueueFull) as info:
        q.submit("nobody", "place", {"instruction": "too many"})
    assert info.value.retry_after >= 1
    assert q.get(ids[0])["status"] == "queued"
    job = q.claim_id(ids[0], "host:123")
    assert job["status"] == "running" and job["worker"] == "host:123"
    assert q.claim_id(ids[0], "host:456") is None  # a redelivered message does not run it twice
    q.submit("nobody", "place", {"instruction": "room again"})  # a claimed job frees its place
    q.heartbeat(ids[0])
    assert q.get(ids[0])["status"] == "running"
    time.sleep(0.5)
    failed = q.get(ids[0])
    # the same reason, word for word, as the embedded queue gives
    embedded = JobQueue.__new__(JobQueue)
    embedded.heartbeat_timeout = 0.3
    assert failed["status"] == "failed" and failed["error"] == embedded._stale_failure(job)["error"]
    assert failed["error"] == "worker host:123 stopped responding (no heartbeat for 0.3 s); the job did not finish"
    assert q.reap() == 0  # already failed; nothing left running


def test_unreachable_redis_is_a_503(plain_run, monkeypatch, tmp_path):
    from dashboard.app import create_app

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    client = create_app([plain_run[0]], state_dir=tmp_path / "state").server.test_client()
    start = time.time()
    r = client.post("/api/runs/tiny/points", json={"instruction": "x"})
    assert r.status_code == 503 and "queue unavailable" in r.get_json()["error"] and int(r.headers["Retry-After"]) >= 1
    assert time.time() - start < 30


def test_redis_queue_cancels_like_the_embedded_one(redis_url):
    from llm_maps.jobs import RedisJobQueue

    q = RedisJobQueue(redis_url, max_queued=1, prefix="cancel")
    queued = q.submit("nobody", "place", {"instruction": "q"})
    assert q.cancel(queued)["status"] == "cancelled"
    assert q.claim_id(queued, "w") is None  # its Celery message, when delivered, runs nothing
    running = q.submit("nobody", "generate", {"instruction": "r"})  # the cancelled job freed its place
    q.claim_id(running, "w")
    assert not q.cancel_requested(running)
    assert q.cancel(running)["cancel_requested"] is True and q.cancel_requested(running)
    q.mark_cancelled(running, {"tokens": [{"text": "a"}], "stop_reason": "cancelled"})
    job = q.get(running)
    assert job["status"] == "cancelled" and job["result"]["tokens"] == [{"text": "a"}]
    assert not q.redis.sismember(q._running, running) and q.cancel("nope") is None


def test_a_starting_worker_sends_the_tasks_of_queued_jobs_again(redis_url, monkeypatch):
    """A task a worker received but had not claimed when it stopped (killed, or restarted in place
    after a Redis outage) is gone from the broker, and its job would stay queued forever: a starting
    worker sends the task of every job of its runs still queued again (``claim_id`` runs a job sent
    twice once); running, cancelled and other runs' jobs get none."""
    import redis

    from llm_maps.jobs import RedisJobQueue, run_queue_name

    q = RedisJobQueue(redis_url, prefix="resend")
    broker = redis.Redis.from_url(redis_url)
    run, other = "resend-run", "resend-other"

    def sent(queue_run):  # the job ids of the tasks waiting in a run's Celery queue, oldest first
        return [json.loads(m)["headers"]["argsrepr"].strip("[]'") for m in reversed(broker.lrange(run_queue_name(queue_run), 0, -1))]

    lost, running, cancelled, waiting = (q.submit(run, "place", {"instruction": f"q{i}"}) for i in range(4))
    theirs = q.submit(other, "place", {"instruction": "theirs"})
    assert sent(run) == [lost, running, cancelled, waiting] and sent(other) == [theirs]
    assert all(q.get(j)["sent"] for j in (lost, waiting))
    # a job whose task could not be sent, nor the job failed (Redis gone between): its client is
    # told 503, it stays queued unsent, and it is never sent again (it would make an unasked point)
    import llm_maps.jobs as jobs

    class _Broken:
        def send_task(self, *a, **k):
            raise ConnectionError("broker gone")

    def gone(*a, **k):
        raise jobs.QueueUnavailable("Redis: ConnectionError")

    with monkeypatch.context() as m:
        m.setattr(jobs, "celery_app", lambda url=None: _Broken())
        m.setattr(q, "update", gone)
        with pytest.raises(jobs.QueueUnavailable):
            q.submit(run, "place", {"instruction": "told 503"})
    told = next(j for j in (i.decode() for i in broker.zrange(q._waiting_of(run), 0, -1))
                if j not in (lost, running, cancelled, waiting))
    assert q.get(told)["status"] == "queued" and "sent" not in q.get(told)
    # its task did reach the broker, but Redis went before the job was confirmed: 503, and the task,
    # when a worker gets it, runs nothing (the worker waits for the confirmation, then fails the job)
    import redis as redis_lib

    def unreachable(*a, **k):
        raise redis_lib.ConnectionError("gone")

    with monkeypatch.context() as m:
        m.setattr(q, "_modify", unreachable)
        with pytest.raises(jobs.QueueUnavailable):
            q.submit(run, "place", {"instruction": "told 503 too"})
    arrived = sent(run)[-1]
    assert arrived not in (lost, running, cancelled, waiting, told) and "sent" not in q.get(arrived)
    assert q.claim_id(arrived, "w", confirm_wait=0.1) is None
    refused = q.get(arrived)
    assert refused["status"] == "failed" and refused["refused"] is True
    assert refused["error"] == "its submission was never confirmed (the web process answered 503)"
    broker.lrem(run_queue_name(run), 1, broker.lindex(run_queue_name(run), 0))  # (that task is spent)
    # a task that arrives before its job is confirmed (the web process a moment behind) waits for it
    import threading

    with monkeypatch.context() as m:
        m.setattr(q, "_modify", unreachable)
        with pytest.raises(jobs.QueueUnavailable):
            q.submit(run, "place", {"instruction": "confirmed late"})
    late = sent(run)[-1]
    broker.lrem(run_queue_name(run), 1, broker.lindex(run_queue_name(run), 0))
    threading.Timer(0.3, lambda: q._modify(late, lambda j: {**j, "sent": True})).start()
    assert q.claim_id(late, "w", confirm_wait=5)["status"] == "running"
    broker.rpop(run_queue_name(run))  # received by a worker that then stopped before claiming it
    assert sent(run) == [running, cancelled, waiting]
    q.claim_id(running, "w")
    q.cancel(cancelled)
    assert q.resend_queued([run]) == 2
    assert sent(run) == [running, cancelled, waiting, lost, waiting] and sent(other) == [theirs]
    assert q.claim_id(waiting, "w")["status"] == "running" and q.claim_id(waiting, "w2") is None  # runs once
    assert q.claim_id(lost, "w")["status"] == "running"
    assert q.resend_queued([run]) == 0


def test_a_worker_restarted_in_place_fails_the_job_it_was_running_at_once(redis_url, monkeypatch):
    """After a Redis outage a Celery worker restarts itself in the same process (same pid, so the same
    id): the job it was running was cut off, and the new process fails it at once instead of leaving
    it to its lapsed heartbeats (20 s by default). Only its own jobs, and only after such a restart."""
    from llm_maps.jobs import RedisJobQueue
    from pipelines.celery_app import RESTARTED, recover

    q = RedisJobQueue(redis_url, prefix="recover", heartbeat_timeout=60)
    run = "recover-run"
    mine, theirs, queued = (q.submit(run, "place", {"instruction": f"q{i}"}) for i in range(3))
    q.claim_id(mine, "host:1")
    q.claim_id(theirs, "host:2")
    said: list[str] = []
    monkeypatch.delenv(RESTARTED, raising=False)  # a first start: its id may be an old process's
    assert recover(q, "host:1", [run], said.append) == (0, 1)
    assert q.get(mine)["status"] == "running"
    monkeypatch.setenv(RESTARTED, "host:1")  # what _restart_after_outage leaves for the new process
    assert recover(q, "host:1", [run], said.append) == (1, 1)
    failed = q.get(mine)
    assert failed["status"] == "failed" and failed["error"] == ("worker host:1 restarted after a Redis outage while "
                                                                "running it; the job did not finish")
    assert q.get(theirs)["status"] == "running" and q.get(queued)["status"] == "queued"
    assert RESTARTED not in os.environ
    assert said[-1] == "worker host:1: failed 1 job(s) it was running before it restarted; sent the tasks of 1 queued job(s) again"
    # Redis not up when a worker starts: it starts all the same (Celery waits for Redis, and the
    # outage watch restarts the process once Redis is back)
    from llm_maps.jobs import QueueUnavailable

    class _Down:
        def fail_worker_jobs(self, *a):
            raise QueueUnavailable("Redis: ConnectionError")

        resend_queued = fail_worker_jobs

    monkeypatch.setenv(RESTARTED, "host:1")
    assert recover(_Down(), "host:1", [run], said.append) == (0, 0)
    assert said[-1] == ("worker host:1: Redis unreachable at start (QueueUnavailable); what an earlier process "
                        "left is put right once it is back")


def test_after_a_redis_outage_the_worker_restarts_once_its_running_job_has_ended(monkeypatch):
    """Redis back after an outage: the worker restarts in place (Celery 5 takes no tasks after it
    reconnects) only once the job it is running has ended, so a job that outlived the outage
    finishes instead of being cut off; with no job running it restarts at once."""
    import threading

    import pipelines.celery_app as celery_app

    class _Restarted(Exception):
        pass

    class _Redis:
        def __init__(self, down: int):
            self.down = down

        def ping(self):
            if self.down > 0:
                self.down -= 1
                raise ConnectionError("Redis is down")
            return True

    class _Queue:
        job_timeout = 30.0

        def __init__(self, down: int):
            self.redis = _Redis(down)

    restarts, said = [], []

    def execv(path, args):
        restarts.append(time.time())
        raise _Restarted()

    monkeypatch.setattr(celery_app.os, "execv", execv)
    monkeypatch.setattr(celery_app, "_STATE", {"worker_id": "host:1", "running": "job-1"})
    monkeypatch.delenv(celery_app.RESTARTED, raising=False)
    ended = []

    def end_the_job():
        ended.append(time.time())
        celery_app._STATE["running"] = None

    threading.Timer(0.6, end_the_job).start()
    with pytest.raises(_Restarted):
        celery_app._restart_after_outage(_Queue(down=2), said.append, every=0.05)
    assert restarts[0] >= ended[0] and os.environ[celery_app.RESTARTED] == "host:1"
    assert said == ["worker host:1: Redis is back after an outage; restarting once job job-1 ends",
                    "worker host:1: Redis is back after an outage; restarting this worker"]
    # nothing running: at once; and no restart without an outage first
    said.clear()
    with pytest.raises(_Restarted):
        celery_app._restart_after_outage(_Queue(down=1), said.append, every=0.05)
    assert said == ["worker host:1: Redis is back after an outage; restarting this worker"]
    monkeypatch.delenv(celery_app.RESTARTED)


def test_a_job_outlives_a_queue_briefly_unreachable(tmp_path, monkeypatch):
    """A partial result that cannot be written, or a cancel that cannot be read, while the queue is
    unreachable (a Redis outage) does not end the job: it goes on; its point and its "done", which
    cannot be written at first either, are written once the queue is back, and it ends done."""
    import pipelines.jobrun as jobrun
    from llm_maps.jobs import JobQueue, PointStore, QueueUnavailable
    from pipelines.jobrun import execute_job

    queue = JobQueue(tmp_path)
    points = PointStore(tmp_path, jobs=queue)
    result = {"prompt": "q", "x": 0.5, "y": -0.5, "dist_to_train": 0.1, "neighbours": [], "tokens": [{"text": "a"}]}
    update, asked = queue.update, []

    refusals = {"done": 1, "keep_pending": 2}

    def down_for_partials(job_id, **fields):
        if ("status" not in fields and "result" in fields) or (fields.get("status") == "done" and refusals["done"]):
            refusals["done"] -= fields.get("status") == "done"
            raise QueueUnavailable("Redis: ConnectionError")
        return update(job_id, **fields)

    keep_pending = points.keep_pending

    def keep_pending_later(run, point):
        if refusals["keep_pending"]:
            refusals["keep_pending"] -= 1
            raise QueueUnavailable("Redis: ConnectionError")
        return keep_pending(run, point)

    def unreadable(job_id):
        asked.append(job_id)
        raise QueueUnavailable("Redis: ConnectionError")

    def run(session, job, publish, cancelled, **kw):
        for k in range(3):
            publish({"tokens": [{"text": "a"}] * k})
            assert cancelled() is False
            time.sleep(0.12)
        return dict(result)

    monkeypatch.setattr(queue, "update", down_for_partials)
    monkeypatch.setattr(queue, "cancel_requested", unreadable)
    monkeypatch.setattr(points, "keep_pending", keep_pending_later)
    monkeypatch.setattr(jobrun, "run_job", run)
    job_id = queue.submit("syn", "generate", {"instruction": "q"})

    class _Pool:
        def get(self, run):
            return object()

    assert execute_job(queue, points, _Pool(), queue.claim(["syn"], "w"), "w") == "done"
    assert queue.get(job_id)["status"] == "done" and queue.get(job_id)["result"]["tokens"] == [{"text": "a"}]
    assert [p["id"] for p in points.list("syn")] == [job_id] and len(asked) >= 2
    assert refusals == {"done": 0, "keep_pending": 0}


def test_a_job_whose_result_cannot_be_saved_for_long_fails_saying_so(tmp_path, monkeypatch):
    import pipelines.jobrun as jobrun
    from llm_maps.jobs import JobQueue, PointStore, QueueUnavailable
    from pipelines.jobrun import execute_job

    queue = JobQueue(tmp_path, heartbeat_timeout=0.25)
    points = PointStore(tmp_path, jobs=queue)

    def down(run, point):
        raise QueueUnavailable("Redis: BusyLoadingError")

    monkeypatch.setattr(points, "keep_pending", down)
    monkeypatch.setattr(jobrun, "run_job", lambda session, job, **kw: {"prompt": "q", "x": 0.0, "y": 0.0})
    job_id = queue.submit("syn", "place", {"instruction": "q"})

    class _Pool:
        def get(self, run):
            return object()

    t0 = time.time()
    assert execute_job(queue, points, _Pool(), queue.claim(["syn"], "w"), "w") == "failed"
    assert 0.5 <= time.time() - t0 < 5
    job = queue.get(job_id)
    assert job["status"] == "failed" and job["error"] == ("its result could not be saved: the job queue stayed "
                                                          "unreachable for 0.5 s")
    assert points.list("syn") == []
