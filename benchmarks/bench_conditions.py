"""Chain-of-thought scoring: batched generation against one prompt at a time, and where the time goes.

Run:  python benchmarks/bench_conditions.py [RUN] [--n 24] [--max-new-tokens 96] [--single 6]

On a built run (default: the demo run, data/runs/demo) with its model: the cot prompts (prompt +
"Let's think step by step.") of the first ``--n`` test examples of generated-answer tasks.

- batched: ``pipelines.generate.generate`` on all of them at once (what `score --conditions cot` does);
- one at a time: the same generator called with one prompt per call, on the first ``--single`` of
  them (the rate a per-example loop would get), greedy outputs compared token for token.

Then the other stages of `score --conditions cot` on the same rows, timed in the same process:
answer extraction + metric scoring, encoding the cued prompts for their distance to train, and
(with a token atlas) the teacher-forced path states and their atlas distances. Prints tokens/s of
each way, the speed-up, and each stage's share of the condition's time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _figures import report  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def main(argv=None) -> int:
    import numpy as np
    import torch

    from llm_maps.conditions import DEFAULT_COT_CUE, extract_answer, is_numeric
    from llm_maps.neighbours import knn
    from llm_maps.runfolder import Run
    from pipelines.conditions import continuation_states, cot_prompt
    from interfaces.demo import DEMO_RUN
    from pipelines.encode import encode_prompts
    from pipelines.generate import generate
    from llm_maps.scoring import get_metric
    from pipelines.models import load_model
    from pipelines.nearest import TokenAtlas
    from pipelines.templates import PromptTemplate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(DEMO_RUN))
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--single", type=int, default=6, help="prompts generated one at a time")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    run = Run(args.run)
    m = run.manifest
    ex = run.examples
    test = ex[(ex["split"] == "test") & ex["reference"].notna()]
    if "metric" in test.columns:
        test = test[test["metric"].fillna("") != "mc"]
    rows = test.groupby("task", sort=False).head(max(1, args.n // max(test["task"].nunique(), 1)) + 1).head(args.n)
    loaded = load_model(m["model"], revision=m.get("model_revision"), device=args.device, dtype=args.dtype)
    template = PromptTemplate.from_manifest(m["prompt_template"])
    stops = list(template.stop_strings)
    prompts = [cot_prompt(p, DEFAULT_COT_CUE) for p in rows["prompt"]]
    generate(loaded, prompts[:2], max_new_tokens=4, stop_strings=stops)  # warm-up

    start = time.perf_counter()
    batched = generate(loaded, prompts, max_new_tokens=args.max_new_tokens, stop_strings=stops)
    gen_s = time.perf_counter() - start
    tokens = sum(len(g.tokens) for g in batched)

    k = min(args.single, len(prompts))
    start = time.perf_counter()
    alone = [generate(loaded, [p], max_new_tokens=args.max_new_tokens, stop_strings=stops)[0] for p in prompts[:k]]
    alone_s = time.perf_counter() - start
    alone_tokens = sum(len(g.tokens) for g in alone)

    refs = [str(r) for r in rows["reference"]]
    metrics = rows["metric"].fillna("contains").tolist() if "metric" in rows.columns else ["contains"] * len(rows)
    start = time.perf_counter()
    for g, ref, metric in zip(batched, refs, metrics):
        answer, _ = extract_answer(g.text, numeric=is_numeric(ref))
        get_metric(metric).score(answer, ref)  # text metrics (multiple choice left out above)
    score_s = time.perf_counter() - start

    layer = run.default_layer
    train = np.asarray(run.encodings(layer)[(ex["split"] == "train").to_numpy()], dtype=np.float32)
    start = time.perf_counter()
    enc = encode_prompts(loaded, prompts, layers=[layer], add_eos=bool(m.get("add_eos")),
                         max_length=m.get("max_length"))[layer]
    knn(enc.astype(np.float32), train, k=1, metric=m.get("distance_metric", "cosine"))
    dist_s = time.perf_counter() - start

    atlas = TokenAtlas.of(run, layer)
    path_s = None
    if atlas is not None:
        start = time.perf_counter()
        states = continuation_states(loaded, prompts, [g.token_ids for g in batched], layer=layer,
                                     max_length=m.get("max_length"))
        flat = np.concatenate([s for s in states if len(s)])
        atlas.steps(flat)
        path_s = time.perf_counter() - start

    total = gen_s + score_s + dist_s + (path_s or 0.0)
    figures = {
        "run": str(run.path), "model": loaded.info.get("model"), "device": loaded.device, "dtype": loaded.dtype,
        "threads": torch.get_num_threads(), "prompts": len(prompts), "tasks": int(rows["task"].nunique()),
        "max_new_tokens": args.max_new_tokens, "generated_tokens": tokens,
        "batched_tokens_per_s": round(tokens / gen_s, 1),
        "one_at_a_time_tokens_per_s": round(alone_tokens / alone_s, 1),
        "speedup": round((tokens / gen_s) / (alone_tokens / alone_s), 2),
        "identical_greedy_outputs": f"{sum(a.token_ids == b.token_ids for a, b in zip(alone, batched))}/{k}",
        "generation_s": round(gen_s, 2), "extraction_and_scoring_s": round(score_s, 4),
        "prompt_distance_s": round(dist_s, 2), "atlas_paths_s": None if path_s is None else round(path_s, 2),
        "atlas_tokens": None if atlas is None else atlas.n,
        "share_generation": round(gen_s / total, 3), "share_extraction_and_scoring": round(score_s / total, 4),
        "share_prompt_distance": round(dist_s / total, 3),
        "share_atlas_paths": None if path_s is None else round(path_s / total, 3),
    }
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
