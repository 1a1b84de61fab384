"""The calibration study (benchmarks/calibration.py) in a small form: on null scenarios the
verdicts rarely claim a difference, the confounded scenario (far tasks harder in one domain,
equal within-task slopes) is a between-task difference and not a within-task one, a true
within-task difference is found, and the task-clustered trend claims a falloff that is not there
far less often than the model-based standard error did."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_small_calibration_run():
    import calibration as cal

    by_name = {sc.name: sc for sc in cal.SCENARIOS}
    null = cal.rates(by_name["equal domains, no falloff"], sets=24, n_boot=200, seed=1)
    assert null["pooled"] <= 2 / 24 and null["between"] <= 2 / 24 and null["within"] <= 3 / 24, null
    assert null["trend"] <= 2 / 24 < null["trend (model-based SE)"], null  # clustered SEs fix the trend verdict
    confounded = cal.rates(by_name["far tasks harder in Chollet only"], sets=12, n_boot=200, seed=1)
    assert confounded["between"] >= 10 / 12 and confounded["within"] <= 2 / 12, confounded
    true_within = cal.rates(by_name["true within-task difference"], sets=12, n_boot=200, seed=1)
    assert true_within["within"] >= 8 / 12, true_within
    text = cal.table([(by_name["equal domains, no falloff"], null)], 24)
    row = next(line for line in text.splitlines() if line.startswith("| equal domains, no falloff (24 tasks x 20) |"))
    assert row.split(" | ")[1:] == [f"{null['pooled']:.3f}*", f"{null['within']:.3f}*", f"{null['between']:.3f}*",
                                    f"{null['trend']:.3f}*", f"{null['trend (model-based SE)']:.3f}*",
                                    f"{null['probe']:.3f}* |"]
    assert null["probe"] <= 2 / 24, null  # a probe judged at the task level: rarely "above chance" on null data
