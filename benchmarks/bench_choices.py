"""Multiple-choice scoring throughput against encoding the same prompts, in one run.

Run:  python benchmarks/bench_choices.py [--n 128] [--baseline]

The demo model (SmolLM2-135M-Instruct) and a fixed seeded sample of the demo's multiple-choice
examples (prompt from the template, 2-6 choices each). Prints:

- encode: ``encode_to_folder`` on the prompts (tokens/s = prompt tokens / s);
- choices: ``choice_loglikelihoods_batch`` on the same prompts and their choices (tokens/s =
  prompt + choice tokens forwarded / s), and its ratio to encode (the issue's aim: >= 70 %);
- with ``--baseline``: the previous implementation (batches of 8 examples: prompts forwarded with
  a KV cache, the cache repeated per choice, then the choices) on the same examples, its tokens/s,
  the speed-up, and the largest difference between the two sets of log-likelihoods.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _figures import report  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def baseline_choices(loaded, prompts, choices, batch: int = 8):
    """The multiple-choice scorer before issue 21 (examples 8 at a time, sorted by prompt length)."""
    import torch

    from pipelines.encode import pad_left, pad_token_id
    from pipelines.generate import continuation_ids

    model, tok = loaded.model, loaded.tokenizer
    dev = loaded.device
    out_all = {}
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for b in range(0, len(order), batch):
        rows = order[b: b + batch]
        ctxs, conts = [], []
        for i in rows:
            ctx = list(tok(prompts[i])["input_ids"])
            conts.append([continuation_ids(tok, prompts[i], c)[1] for c in choices[i]])
            ctxs.append(ctx)
        n_c = max(len(r) for r in conts)
        width = max(len(c) for r in conts for c in r)
        ids, mask, pos = pad_left(ctxs, pad_token_id(tok), dev)
        inp = torch.zeros((len(rows) * n_c, width), dtype=torch.long)
        cmask = torch.zeros((len(rows) * n_c, width), dtype=torch.long)
        for k, row in enumerate(conts):
            for j in range(n_c):
                c = row[min(j, len(row) - 1)]
                inp[k * n_c + j, : len(c)] = torch.tensor(c)
                cmask[k * n_c + j, : len(c)] = 1
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
            past = out.cache
            if n_c > 1:
                past.batch_repeat_interleave(n_c)
            full_mask = torch.cat([mask.repeat_interleave(n_c, dim=0), cmask.to(dev)], dim=1)
            positions = pos[:, -1:].repeat_interleave(n_c, dim=0) + 1 + torch.arange(width, device=dev)[None, :]
            out2 = model(input_ids=inp.to(dev), attention_mask=full_mask, position_ids=positions, cache=past,
                         use_cache=False)
            logp = torch.log_softmax(out2.logits.float(), dim=-1)
            for k, (i, row) in enumerate(zip(rows, conts)):
                res = []
                for j, c in enumerate(row):
                    c_t = torch.tensor(c, device=dev)
                    lps = torch.cat([first[k, c_t[:1]], logp[k * n_c + j, torch.arange(len(c) - 1, device=dev), c_t[1:]]])
                    res.append(float(lps.sum()))
                out_all[i] = res
    return [out_all[i] for i in range(len(prompts))]


def main(argv=None) -> int:
    import numpy as np
    import torch

    from interfaces.demo import DEMO_DATA, demo_model_path
    from pipelines.encode import encode_to_folder, normalize_layers, tokenize_prompts
    from pipelines.generate import choice_loglikelihoods_batch, choice_tokens
    from pipelines.models import load_model
    from pipelines.templates import get_template

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="multiple-choice examples (a fixed seeded sample)")
    ap.add_argument("--baseline", action="store_true", help="also time the previous implementation")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds of each (best counts)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 on a machine shared with other jobs: no waiting on descheduled threads)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model or str(demo_model_path()), dtype=args.dtype, device=args.device)
    rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()]
    rows = random.Random(0).sample([r for r in rows if r.get("choices")], args.n)
    tmpl = get_template("auto", loaded.tokenizer)
    prompts = [tmpl.render(r["instruction"], r["context"], tokenizer=loaded.tokenizer) for r in rows]
    choices = [[str(c) for c in r["choices"]] for r in rows]
    layers = normalize_layers(None, loaded.num_layers)
    sync = torch.cuda.synchronize if loaded.device.startswith("cuda") else (lambda: None)

    prompt_tokens = sum(len(s) for s in tokenize_prompts(loaded.tokenizer, prompts)[0])
    packed = choice_tokens(loaded.tokenizer, prompts, choices)
    mc_tokens = sum(len(ctx) + sum(len(c) for c in conts) for ctx, conts in packed)
    with tempfile.TemporaryDirectory() as tmp:  # warm-up
        encode_to_folder(loaded, prompts[:8], tmp, layers=layers, progress=False)
    choice_loglikelihoods_batch(loaded, prompts[:8], choices[:8])

    def run_encode():
        with tempfile.TemporaryDirectory() as tmp:
            encode_to_folder(loaded, prompts, tmp, layers=layers, progress=False)

    def run_ours():
        return choice_loglikelihoods_batch(loaded, prompts, choices)

    def run_baseline():
        return baseline_choices(loaded, prompts, choices)

    # rounds alternate the order; the best time of each counts (the machine may be shared)
    runs = {"encode": run_encode, "ours": run_ours, **({"baseline": run_baseline} if args.baseline else {})}
    times: dict = {k: [] for k in runs}
    results: dict = {}
    for rnd in range(args.rounds):
        for name in (list(runs) if rnd % 2 == 0 else list(runs)[::-1]):
            sync()
            start = time.perf_counter()
            results[name] = runs[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    encode_s, ours_s = min(times["encode"]), min(times["ours"])
    ours = results["ours"]

    figures = {
        "model": loaded.info.get("model"), "device": loaded.device, "dtype": loaded.dtype,
        "threads": torch.get_num_threads(), "examples": len(prompts),
        "choices": sum(len(c) for c in choices), "prompt_tokens": prompt_tokens, "mc_tokens": mc_tokens,
        "encode_tokens_per_s": round(prompt_tokens / encode_s, 1),
        "choices_tokens_per_s": round(mc_tokens / ours_s, 1),
        "choices_of_encode": round(mc_tokens / ours_s / (prompt_tokens / encode_s), 3),
        "encode_examples_per_s": round(len(prompts) / encode_s, 2),
        "choices_examples_per_s": round(len(prompts) / ours_s, 2),
    }
    figures["choices_of_encode_each_round"] = [round((mc_tokens / o) / (prompt_tokens / e), 3)
                                               for e, o in zip(times["encode"], times["ours"])]
    if args.baseline:
        base_s = min(times["baseline"])
        diff = max(abs(a - b["logprob"]) for ra, rb in zip(results["baseline"], ours) for a, b in zip(ra, rb))
        figures.update({"baseline_tokens_per_s": round(mc_tokens / base_s, 1),
                        "baseline_examples_per_s": round(len(prompts) / base_s, 2),
                        "speedup": round(base_s / ours_s, 2), "max_abs_logprob_diff": float(np.float32(diff))})
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
