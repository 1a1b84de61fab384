"""Generation throughput: batched (left-padded, KV cache) vs one prompt at a time, in one run.

Run:  python benchmarks/bench_generate.py [--n 32] [--max-new-tokens 32] [--batch-size 16]

Both loops use pipelines.generate.generate with the demo model (SmolLM2-135M-Instruct), greedy,
the same prompts (a fixed seeded sample of the demo test set) and the template's stop strings;
prints generated tokens/s of each and their ratio. Greedy outputs are identical in both modes
(checked). Scoring time for the whole demo run is what `llm-maps score` logs
(manifest["scoring"]["generation"]).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    import torch

    from pipelines.demo import DEMO_DATA, demo_model_path
    from pipelines.generate import generate
    from pipelines.models import load_model
    from pipelines.templates import get_template

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    loaded = load_model(args.model or str(demo_model_path()), device=args.device)
    rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()]
    rows = random.Random(1).sample([r for r in rows if r["split"] == "test"], args.n)
    tmpl = get_template("auto", loaded.tokenizer)
    prompts = [tmpl.render(r["instruction"], r["context"], tokenizer=loaded.tokenizer) for r in rows]
    stops = list(tmpl.stop_strings)
    generate(loaded, prompts[:2], max_new_tokens=4)  # warm-up

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    start = time.perf_counter()
    batched = {}
    for b in range(0, len(order), args.batch_size):
        idx = order[b: b + args.batch_size]
        for i, res in zip(idx, generate(loaded, [prompts[i] for i in idx], max_new_tokens=args.max_new_tokens,
                                        stop_strings=stops)):
            batched[i] = res
    batched_s = time.perf_counter() - start

    start = time.perf_counter()
    single = {i: generate(loaded, [p], max_new_tokens=args.max_new_tokens, stop_strings=stops)[0]
              for i, p in enumerate(prompts)}
    single_s = time.perf_counter() - start
    same = sum(batched[i].token_ids == single[i].token_ids for i in range(len(prompts)))
    tokens = sum(len(r.tokens) for r in batched.values())
    figures = {
        "device": loaded.device, "dtype": loaded.dtype, "threads": torch.get_num_threads(),
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "generated_tokens": tokens,
        "batched_tokens_per_s": round(tokens / batched_s, 1),
        "single_tokens_per_s": round(sum(len(r.tokens) for r in single.values()) / single_s, 1),
        "speedup": round(single_s / batched_s, 2),
        "identical_greedy_outputs": f"{same}/{len(prompts)}",
    }
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
