"""The fault suite (benchmarks/_faults.py, `python benchmarks/load_test.py RUN --fault-suite`) in a
short form: 20 clients against the real `llm-maps serve` while its worker is killed and frozen, a
run is added, renamed and removed, and Redis is stopped and started again."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import build_scored_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.slow
def test_fault_suite_loses_nothing_and_answers_no_5xx_but_503(tmp_path, tiny_models, redis_url):
    from _faults import run_suite

    run = build_scored_run(tmp_path, tiny_models["gpt2"], 24)
    lines: list[str] = []
    embedded, redis = run_suite(run, clients=20, phase=4.0, outage=3.0, log=lines.append)
    print("\n".join(lines))
    assert embedded["events"] == ["kill -9 of the worker", "SIGSTOP of the worker", "a run added",
                                  "that run renamed", "that run removed"]
    assert redis["events"] == ["Redis stopped", "Redis started again"]
    for result in (embedded, redis):
        assert result["bad_answers"] == [] and result["flips"] == [] and result["lost"] == 0, result
        assert result["points_missing"] == 0 and result["points_extra"] == 0 and result["healthy"], result
        assert result["done"] >= 20 and result["ok"], result
    assert redis["refused_503"] > 0  # submissions while Redis was down were answered 503 (and retried)
