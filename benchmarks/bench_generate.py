"""Generation throughput: the generator against the previous implementation and the roofline, in one run.

Run:  python benchmarks/bench_generate.py [--n 64] [--max-new-tokens 32] [--baseline-batch 16] [--compile]

Both use the demo model (SmolLM2-135M-Instruct), greedy, the same prompts (a fixed seeded sample of
the demo test set) and the template's stop strings:

- baseline: the generator as it was before continuous batching (kept below as ``baseline_generate``:
  fixed batches of ``--baseline-batch`` prompts sorted by length, a DynamicCache grown by
  concatenation, every row computed until the whole batch is done, per-row Python every step);
- ours: ``pipelines.generate.generate`` on all prompts at once (slots sized by KV-cache memory,
  pre-allocated cache, finished rows leave and are refilled).

Prints generated tokens/s of each, the speed-up, whether greedy outputs are token-for-token
identical, and the roofline: 2·N FLOPs a generated token over a matmul peak measured in the same
process, and the weight bytes read each decode step over a measured memory bandwidth. Then one
prompt alone (the playground's path, with hidden states): time to first token and tokens/s of
both. ``--compile`` also times ``torch.compile`` of the model's forward (off by default in the
package: see the printed ratio).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _figures import report  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def baseline_generate(loaded, prompts, *, max_new_tokens=64, stop_strings=(), hidden_layer=None, on_token=None):
    """The generator before issue 21 (greedy path, verbatim apart from the ``cache=`` keyword)."""
    import numpy as np
    import torch

    from pipelines.encode import pad_left, pad_token_id, tokenize_prompts
    from pipelines.generate import Generation, GeneratedToken, _cut_at_stop

    model, tok = loaded.model, loaded.tokenizer
    limit = loaded.max_positions or 2048
    ids, _ = tokenize_prompts(tok, prompts, max_length=limit - max_new_tokens)
    n = len(ids)
    eos = tok.eos_token_id
    ids_t, mask, pos = pad_left(ids, pad_token_id(tok), loaded.device)
    results = [Generation(prompt_tokens=len(s)) for s in ids]
    done = [False] * n
    texts_ids: list[list[int]] = [[] for _ in range(n)]
    want_hidden = hidden_layer is not None
    with torch.inference_mode():
        out = model(input_ids=ids_t, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        past = out.cache
        logits = out.logits[:, -1, :]
        last_pos = pos[:, -1:]
        for step in range(max_new_tokens):
            logp = torch.log_softmax(logits.float(), dim=-1)
            nxt = logp.argmax(dim=-1)
            chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist()
            nxt_list = nxt.tolist()
            fed_rows = []
            for r in range(n):
                if done[r]:
                    continue
                t = nxt_list[r]
                if eos is not None and t == eos:
                    done[r] = True
                    results[r].stop_reason = "eos"
                    continue
                results[r].tokens.append(GeneratedToken(id=int(t), text=tok.decode([t]), logprob=float(chosen[r])))
                texts_ids[r].append(int(t))
                fed_rows.append(r)
                if stop_strings and _cut_at_stop(tok.decode(texts_ids[r], skip_special_tokens=False),
                                                 stop_strings) is not None:
                    done[r] = True
                    results[r].stop_reason = "stop_string"
            all_done = all(done) or step == max_new_tokens - 1
            if all_done and not want_hidden:
                if on_token is not None:
                    for r in fed_rows:
                        on_token(r, results[r].tokens[-1], None)
                break
            feed = torch.where(torch.tensor(done) & (nxt == eos if eos is not None else False),
                               torch.full_like(nxt, pad_token_id(tok)), nxt)
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype)], dim=1)
            last_pos = last_pos + 1
            out = model(input_ids=feed[:, None], attention_mask=mask, position_ids=last_pos, cache=past,
                        use_cache=True, output_hidden_states=want_hidden)
            past = out.cache
            logits = out.logits[:, -1, :]
            for r in fed_rows:
                state = out.hidden_states[hidden_layer][r, -1].float().cpu().numpy() if want_hidden else None
                if state is not None:
                    results[r].hidden.append(state)
                if on_token is not None:
                    on_token(r, results[r].tokens[-1], state)
            if all_done:
                break
    for r, res in enumerate(results):
        text = tok.decode(texts_ids[r], skip_special_tokens=True)
        if stop_strings:
            cut = _cut_at_stop(tok.decode(texts_ids[r], skip_special_tokens=False), stop_strings)
            if cut is not None:
                keep = 0
                for j in range(len(texts_ids[r])):
                    if len(tok.decode(texts_ids[r][: j + 1], skip_special_tokens=False)) > cut:
                        break
                    keep = j + 1
                res.tokens, res.hidden = res.tokens[:keep], res.hidden[:keep]
                text = tok.decode(texts_ids[r][:keep], skip_special_tokens=True)
        res.text = text.strip()
    return results


def memory_bandwidth(device: str, mbytes: int = 256, seconds: float = 2.0) -> float:
    """Bytes/s read by a reduction over a tensor much larger than the caches."""
    import torch

    a = torch.ones(mbytes * (1 << 20) // 4, dtype=torch.float32, device=device)
    a.sum()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a.sum()
        reps += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return a.numel() * 4 * reps / (time.perf_counter() - start)


def matmul_params(model) -> tuple[int, int]:
    """(N: parameters in a token's matmuls, LM head included; bytes of the weights read a step)."""
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    positional = sum(p.numel() for name, p in model.named_parameters() if "wpe" in name or "embed_positions" in name)
    n = total - positional - (0 if emb is head else emb.numel())
    return n, n * emb.element_size()


def main(argv=None) -> int:
    import torch

    from interfaces.demo import DEMO_DATA, demo_model_path
    from pipelines.generate import generate
    from pipelines.models import load_model
    from pipelines.templates import get_template

    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model or str(demo_model_path()), device=args.device, dtype=args.dtype)
    rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()]
    rows = random.Random(1).sample([r for r in rows if r["split"] == "test"], args.n)
    tmpl = get_template("auto", loaded.tokenizer)
    prompts = [tmpl.render(r["instruction"], r["context"], tokenizer=loaded.tokenizer) for r in rows]
    stops = list(tmpl.stop_strings)
    sync = torch.cuda.synchronize if loaded.device.startswith("cuda") else (lambda: None)
    generate(loaded, prompts[:2], max_new_tokens=4)  # warm-up
    baseline_generate(loaded, prompts[:2], max_new_tokens=4)

    timed = _time_both(loaded, prompts, stops, args, sync)
    figures = _batched_figures(loaded, prompts, args, timed)
    figures.update(_single_figures(loaded, prompts, stops, args))
    if args.compile:
        figures.update(_compiled_figures(loaded, prompts, stops, args, sync, ours=timed["ours"],
                                         ours_s=min(timed["ours_times"])))
    report(figures, args.json)
    return 0


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--baseline-batch", type=int, default=16, help="the previous default batch (16 on CPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="slots of ours (default: from KV memory)")
    ap.add_argument("--single", type=int, default=4, help="prompts timed alone (playground path)")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds of each (best counts)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the forward")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 on a machine shared with other jobs: no waiting on descheduled threads)")
    return ap.parse_args(argv)


def _time_both(loaded, prompts, stops, args, sync) -> dict:
    """The baseline (fixed batches, longest first) and ours (all prompts at once), each timed in
    ``args.rounds`` rounds: their outputs, our stats and the times."""
    from pipelines.generate import generate

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))

    def run_baseline():
        out = {}
        for b in range(0, len(order), args.baseline_batch):
            idx = order[b: b + args.baseline_batch]
            for i, res in zip(idx, baseline_generate(loaded, [prompts[i] for i in idx],
                                                     max_new_tokens=args.max_new_tokens, stop_strings=stops)):
                out[i] = res
        return out

    def run_ours():
        st: dict = {}
        out = generate(loaded, prompts, max_new_tokens=args.max_new_tokens, stop_strings=stops,
                       batch_size=args.batch_size, stats=st)
        return out, st

    # rounds alternate the order (baseline first, then ours first, ...); the best time of each counts
    # (the machine may be shared: the minimum is the least disturbed run)
    base_times, ours_times = [], []
    for rnd in range(args.rounds):
        for which in (("baseline", "ours") if rnd % 2 == 0 else ("ours", "baseline")):
            sync()
            start = time.perf_counter()
            if which == "baseline":
                base = run_baseline()
            else:
                ours, stats = run_ours()
            sync()
            (base_times if which == "baseline" else ours_times).append(time.perf_counter() - start)
    return {"base": base, "ours": ours, "stats": stats, "base_times": base_times, "ours_times": ours_times}


def _batched_figures(loaded, prompts, args, timed: dict) -> dict:
    """Throughput of both, against the matmul and memory rooflines of the device."""
    import torch

    from bench_encode import matmul_peak

    base, ours, stats = timed["base"], timed["ours"], timed["stats"]
    base_times, ours_times = timed["base_times"], timed["ours_times"]
    base_s, ours_s = min(base_times), min(ours_times)
    dev = loaded.device
    tokens = sum(len(r.tokens) for r in ours)
    same = sum(ours[i].token_ids == base[i].token_ids for i in range(len(prompts)))
    n_params, weight_bytes = matmul_params(loaded.model)
    peak_dtype = torch.bfloat16 if loaded.dtype == "bfloat16" and dev.startswith("cuda") else torch.float32
    peak = matmul_peak(dev, peak_dtype)
    bandwidth = memory_bandwidth(dev)
    steps = stats["decode_steps"] + 1
    compute_roof = peak / (2 * n_params)  # generated tokens/s if every FLOP ran at the matmul peak
    memory_roof = tokens / steps * bandwidth / weight_bytes  # at the mean rows a step, weights read once a step
    ours_tps, base_tps = tokens / ours_s, sum(len(r.tokens) for r in base.values()) / base_s
    return {
        "model": loaded.info.get("model"), "device": dev, "dtype": loaded.dtype, "threads": torch.get_num_threads(),
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "generated_tokens": tokens,
        "prompt_tokens": sum(r.prompt_tokens for r in ours),
        "baseline_batch": args.baseline_batch, "slots": stats["slots"], "decode_steps": stats["decode_steps"],
        "prefills": stats["prefills"], "mean_rows_a_step": round(tokens / steps, 1),
        "baseline_tokens_per_s": round(base_tps, 1), "ours_tokens_per_s": round(ours_tps, 1),
        "speedup": round(ours_tps / base_tps, 2),
        "speedup_each_round": [round(b / o, 2) for b, o in zip(base_times, ours_times)],
        "ours_prefill_share": round(stats["prefill_seconds"] / ours_s, 2),
        "identical_greedy_outputs": f"{same}/{len(prompts)}",
        "peak_matmul_gflops": round(peak / 1e9, 1), "memory_gb_per_s": round(bandwidth / 1e9, 1),
        "matmul_params_m": round(n_params / 1e6, 1),
        "roofline_compute_tokens_per_s": round(compute_roof, 1),
        "roofline_memory_tokens_per_s": round(memory_roof, 1),
        "ours_of_roofline": round(ours_tps / min(compute_roof, memory_roof), 3),
        "ours_mfu_incl_prompt": round((tokens + sum(r.prompt_tokens for r in ours)) * 2 * n_params / ours_s / peak, 3),
    }


def _single_figures(loaded, prompts, stops, args) -> dict:
    """One prompt alone with hidden states (the worker's generate job): first-token latency and rate."""
    from pipelines.generate import generate

    figures = {}
    layer = loaded.num_layers
    for name, fn in (("baseline", baseline_generate), ("ours", generate)):
        first, total_t, total_tok = [], 0.0, 0
        for p in prompts[: args.single]:
            seen: list[float] = []
            start = time.perf_counter()
            res = fn(loaded, [p], max_new_tokens=args.max_new_tokens, stop_strings=stops, hidden_layer=layer,
                     on_token=lambda r, t, h: seen.append(time.perf_counter()))[0]
            total_t += time.perf_counter() - start
            total_tok += len(res.tokens)
            if seen:
                first.append(seen[0] - start)
        figures[f"single_{name}_first_token_ms"] = round(1000 * sum(first) / max(len(first), 1), 1)
        figures[f"single_{name}_tokens_per_s"] = round(total_tok / total_t, 1)
    return figures


def _compiled_figures(loaded, prompts, stops, args, sync, *, ours, ours_s: float) -> dict:
    """Ours with ``torch.compile`` of the forward: warm-up, rate and whether the outputs stay the same."""
    import torch

    from pipelines.generate import generate

    figures = {}
    forward = loaded.model.forward
    loaded.model.forward = torch.compile(forward, dynamic=True)
    try:
        start = time.perf_counter()
        generate(loaded, prompts[:8], max_new_tokens=4)
        figures["compile_warmup_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        compiled = generate(loaded, prompts, max_new_tokens=args.max_new_tokens, stop_strings=stops,
                            batch_size=args.batch_size)
        sync()
        comp_s = time.perf_counter() - start
        figures["compiled_tokens_per_s"] = round(sum(len(r.tokens) for r in compiled) / comp_s, 1)
        figures["compiled_vs_ours"] = round(ours_s / comp_s, 2)
        figures["compiled_identical"] = \
            f"{sum(c.token_ids == o.token_ids for c, o in zip(compiled, ours))}/{len(ours)}"
    except Exception as exc:  # noqa: BLE001 - a compiler failure is a finding, reported with the figures
        figures["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        loaded.model.forward = forward
    return figures


if __name__ == "__main__":
    sys.exit(main())
