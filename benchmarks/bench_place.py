"""Placing a new prompt on a built run's map: encode + saved projection + exact neighbours.

Run:  python benchmarks/bench_place.py [RUN_DIR] [--n 20]

Loads the run's model as recorded in its manifest, the saved projection (arrays + JSON), and
the memory-mapped encodings; places one warm-up prompt, then times N prompts (p50 / p95 of the
whole placement and of each part). Needs a built run (default: the demo run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from llm_maps.runfolder import PROJECTION, Run
    from interfaces.demo import DEMO_RUN
    from pipelines.encode import encode_one
    from pipelines.models import load_model
    from llm_maps.neighbours import knn
    from pipelines.project import Projection
    from pipelines.templates import PromptTemplate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(DEMO_RUN))
    ap.add_argument("--n", type=int, default=20)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    run = Run(args.run)
    m = run.manifest
    loaded = load_model(m["model"], revision=m.get("model_revision"))
    proj = Projection.load(run.path / PROJECTION)
    layer = run.default_layer
    enc = run.encodings(layer)
    fit = np.asarray(enc[proj.fit_rows], dtype=np.float32)  # kept in memory by a worker
    is_train = (run.examples["split"] == "train").to_numpy()
    train = np.asarray(enc[is_train], dtype=np.float32)
    tmpl = PromptTemplate.from_manifest(m["prompt_template"])
    cold = time.perf_counter() - t0

    def place(text: str):
        t = [time.perf_counter()]
        prompt = tmpl.render(text, "", tokenizer=loaded.tokenizer)
        state = encode_one(loaded, prompt, layers=[layer], add_eos=m["add_eos"], max_length=m["max_length"])[layer]
        t.append(time.perf_counter())
        xy = proj.transform(state[None, :], fit)
        t.append(time.perf_counter())
        dists, idx = knn(state[None, :], train, k=10, metric=m["distance_metric"])
        t.append(time.perf_counter())
        return np.diff(t), xy, dists

    place("warm-up: what is 2 plus 2?")
    parts = []
    for i in range(args.n):
        d, _, _ = place(f"Question {i}: what is {i} plus {i * 3}? Explain briefly.")
        parts.append(d)
    parts = np.array(parts) * 1000
    total = parts.sum(axis=1)
    print(f"run                 {run.path} ({len(is_train)} examples, projection {proj.method})")
    print(f"cold start          {cold:.2f} s (model + projection + encodings)")
    print(f"place p50 / p95     {statistics.median(total):.1f} / {np.percentile(total, 95):.1f} ms")
    for name, col in zip(("encode", "project", "neighbours"), parts.T):
        print(f"  {name:<17} p50 {statistics.median(col):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
