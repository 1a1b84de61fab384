"""How often each verdict claims a difference, on simulated runs with a known answer.

Run:  python benchmarks/calibration.py [--sets 200] [--bootstrap 1000] [--seed 0]

Each scenario simulates two domains (Chollet, Reasoning) of tasks with ``per_task`` test examples.
A task sits at a mean distance m_t ~ U(0, 1) with its examples at m_t ± spread; the log-odds of a
correct answer are 0.5 + task effect + between · (m_t − 0.5) + within · (x − m_t): ``between``
makes far *tasks* harder, ``within`` makes far *examples of a task* harder. For every data set it
runs ``llm_maps.findings.compute_findings`` (task bootstrap, task-label permutations) and the
falloff trend of each domain (``llm_maps.falloff.logistic_trend``, task-clustered, and the
model-based one it replaced), and counts how often each verdict claims a difference:

  pooled / within / between  verdict_detail is "supported" or "reversed"
  trend                      a domain's trend says "falls" or "rises with distance" (both domains
                             counted; clustered vs model-based standard errors)
  probe                      a linear probe of the domain is "above chance" on encodings that carry
                             the tasks but not the domain (a null in every scenario)

Null scenarios should claim at most 6 % (printed with the Monte Carlo standard error); the others
show power. tests/test_calibration.py runs a small version.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass(frozen=True)
class Scenario:
    name: str
    within: tuple[float, float] = (0.0, 0.0)  # within-task slope (per unit distance) of A, B
    between: tuple[float, float] = (0.0, 0.0)  # between-task slope of A, B
    task_sd: tuple[float, float] = (0.7, 0.7)  # spread of task difficulty (log-odds) in A, B
    n_tasks: int = 24
    per_task: int = 20
    spread: float = 0.25
    null: tuple[str, ...] = field(default=("pooled", "within", "between"))  # parts with no true difference


SCENARIOS = [
    Scenario("equal domains, no falloff", null=("pooled", "within", "between", "trend")),
    Scenario("equal domains, equal falloff", within=(-2.0, -2.0), between=(-2.0, -2.0)),
    Scenario("far tasks harder in Chollet only", within=(-1.0, -1.0), between=(-4.0, 0.0), null=("within",)),
    Scenario("spread of task difficulty differs", task_sd=(0.3, 1.5), within=(-1.0, -1.0), between=(-1.0, -1.0)),
    Scenario("6 tasks per domain", within=(-1.0, -1.0), between=(-1.0, -1.0), n_tasks=6),
    Scenario("true within-task difference", within=(-4.0, 0.0), null=("between",)),
]


def simulate(sc: Scenario, seed: int) -> dict:
    """One data set of ``sc``: arrays distance, correct, domain, task (as compute_findings takes them)."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {"distance": [], "correct": [], "domain": [], "task": []}
    for i, name in enumerate(("Chollet", "Reasoning")):
        for t in range(sc.n_tasks):
            m = rng.random()
            x = m + rng.uniform(-sc.spread, sc.spread, sc.per_task)
            logit = 0.5 + rng.normal(0, sc.task_sd[i]) + sc.between[i] * (m - 0.5) + sc.within[i] * (x - m)
            cols["distance"] += list(x)
            cols["correct"] += list(rng.random(sc.per_task) < 1 / (1 + np.exp(-logit)))
            cols["domain"] += [name] * sc.per_task
            cols["task"] += [f"{name}/t{t}"] * sc.per_task
    return {k: np.array(v, dtype=object if k in ("domain", "task") else None) for k, v in cols.items()}


def probe_null(sc: Scenario, seed: int, n_boot: int) -> float:
    """1.0 when a linear probe of the domain claims "above chance" on encodings that carry the
    tasks but not the domain (each task its own random centre, 8 dimensions): a null for probes."""
    from llm_maps.comparison import probe_scores

    data = simulate(sc, seed)
    rng = np.random.default_rng(seed + 1)
    names, codes = np.unique(data["task"], return_inverse=True)
    x = rng.normal(size=(len(names), 8))[codes] + rng.normal(size=(len(codes), 8))
    res = probe_scores(x, data["domain"].astype(str), data["task"].astype(str), folds=4, n_boot=n_boot, seed=seed)
    return float(res["above_chance"])


def claims(sc: Scenario, seed: int, n_boot: int, verdicts: tuple[str, ...] | None = None) -> dict[str, float]:
    """For one data set: 1.0 where a verdict claims a difference, else 0.0 (trends: the share of
    the two domains whose trend claims one). ``verdicts``: only these (default: all)."""
    from llm_maps.falloff import logistic_trend, slope_verdict
    from llm_maps.findings import compute_findings

    verdicts = verdicts or COLUMNS
    data = simulate(sc, seed)
    out: dict[str, float] = {}
    if {"pooled", "within", "between"} & set(verdicts):
        res = compute_findings(**data, n_boot=n_boot, seed=seed, details=False)
        out.update({part: float(res["verdict_detail"][part] != "not supported")
                    for part in ("pooled", "within", "between")})
    if "trend" in verdicts:
        clustered = model = 0.0
        for name in ("Chollet", "Reasoning"):
            sel = data["domain"] == name
            x, y = data["distance"][sel].astype(float), data["correct"][sel].astype(float)
            clustered += slope_verdict(logistic_trend(x, y, clusters=data["task"][sel])).endswith("with distance") / 2
            model += slope_verdict(logistic_trend(x, y)).endswith("with distance") / 2
        out["trend"], out["trend (model-based SE)"] = clustered, model
    if "probe" in verdicts:
        out["probe"] = probe_null(sc, seed, n_boot)
    return out


def rates(sc: Scenario, *, sets: int, n_boot: int, seed: int = 0,
          verdicts: tuple[str, ...] | None = None) -> dict[str, float]:
    """Claim rate of every verdict (or of ``verdicts``) over ``sets`` data sets of ``sc``."""
    total: dict[str, float] = {}
    for k in range(sets):
        for key, v in claims(sc, seed * 100_000 + k, n_boot, verdicts).items():
            total[key] = total.get(key, 0.0) + v
    return {key: v / sets for key, v in total.items()}


COLUMNS = ("pooled", "within", "between", "trend", "trend (model-based SE)", "probe")


def table(results: list[tuple[Scenario, dict[str, float]]], sets: int) -> str:
    mc = math.sqrt(0.05 * 0.95 / sets)
    lines = [f"claim rates over {sets} data sets per scenario (Monte Carlo SE at 5 %: ±{mc:.3f}); "
             "* = a null (no true difference: aim ≤ 0.06), else power", "",
             "| scenario | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for sc, r in results:
        cells = [("-" if c not in r else f"{r[c]:.3f}{'*' if c.split(' ')[0] in sc.null or c == 'probe' else ''}")
                 for c in COLUMNS]
        lines.append(f"| {sc.name} ({sc.n_tasks} tasks x {sc.per_task}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=200)
    ap.add_argument("--bootstrap", type=int, default=1000, help="replicates and permutations per data set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verdicts", default=None, help="comma-separated, of: " + ", ".join(COLUMNS[:4]) + ", probe "
                    "(default: all)")
    args = ap.parse_args(argv)
    verdicts = tuple(v.strip() for v in args.verdicts.split(",")) if args.verdicts else None
    results = []
    for sc in SCENARIOS:
        start = time.perf_counter()
        results.append((sc, rates(sc, sets=args.sets, n_boot=args.bootstrap, seed=args.seed, verdicts=verdicts)))
        print(f"  {sc.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(table(results, args.sets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
