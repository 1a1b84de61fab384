"""Encoding throughput: the batched pipeline vs a naive one-prompt-at-a-time loop, and MFU.

Run:  python benchmarks/bench_encode.py [--n 256] [--model PATH_OR_GGUF] [--device cpu|cuda]

Prints, from one run: tokens/s of `encode_to_folder` (length-sorted, left-padded batches,
LM head skipped, streamed to disk) and of a naive loop (`model(**tokenizer(prompt),
output_hidden_states=True)` per prompt, as one would write it by hand); their ratio; and MFU =
useful forward FLOPs / s over a matmul peak measured in the same process (fp32 on CPU; bf16 on
CUDA). Useful FLOPs per prompt of T tokens: 2 * N_nonembedding * T + 2 * layers * hidden * T^2
(causal attention scores and values). Padding is not counted as useful.
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


def matmul_peak(device: str, dtype, seconds: float = 3.0, n: int = 2048) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(5):
            a @ b
        reps += 5
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def useful_flops(model, lengths) -> float:
    cfg = model.config
    n_params = sum(p.numel() for name, p in model.named_parameters()
                   if "embed" not in name and "wte" not in name and "wpe" not in name and "lm_head" not in name)
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    return float(sum(2 * n_params * t + 2 * layers * hidden * t * t for t in lengths))


def main(argv=None) -> int:
    import torch

    from interfaces.demo import DEMO_DATA, demo_model_path
    from pipelines.encode import encode_to_folder, normalize_layers, tokenize_prompts
    from pipelines.models import load_model
    from pipelines.templates import get_template

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="prompts (a fixed seeded sample of the demo set)")
    ap.add_argument("--model", default=None, help="default: the demo model (SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--naive-n", type=int, default=None, help="prompts for the naive loop (default: all)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    loaded = load_model(args.model or str(demo_model_path()), dtype=args.dtype, device=args.device)
    rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()]
    rows = random.Random(0).sample(rows, min(args.n, len(rows)))
    tmpl = get_template("auto", loaded.tokenizer)
    prompts = [tmpl.render(r["instruction"], r["context"], tokenizer=loaded.tokenizer) for r in rows]
    layers = normalize_layers(None, loaded.num_layers)
    ids, _ = tokenize_prompts(loaded.tokenizer, prompts)
    lengths = [len(s) for s in ids]
    flops = useful_flops(loaded.model, lengths)
    dev = loaded.device
    peak_dtype = torch.bfloat16 if dev.startswith("cuda") and loaded.dtype == "bfloat16" else torch.float32
    peak = matmul_peak(dev, peak_dtype)

    # warm-up (allocator, kernels)
    with tempfile.TemporaryDirectory() as tmp:
        encode_to_folder(loaded, prompts[:16], tmp, layers=layers, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        res = encode_to_folder(loaded, prompts, tmp, layers=layers, progress=False,
                               batch_tokens=args.batch_tokens)
    batched_s = res.seconds

    naive_prompts = prompts[: args.naive_n] if args.naive_n else prompts
    naive_lengths = lengths[: len(naive_prompts)]
    model, tok = loaded.model, loaded.tokenizer
    start = time.perf_counter()
    with torch.inference_mode():
        for p in naive_prompts:
            enc = tok(p, return_tensors="pt").to(dev)
            out = model(**enc, output_hidden_states=True)
            _ = [out.hidden_states[k][0, -1].float().cpu().numpy() for k in layers]
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    naive_s = time.perf_counter() - start

    tokens = sum(lengths)
    batched_tps = tokens / batched_s
    naive_tps = sum(naive_lengths) / naive_s
    naive_flops = useful_flops(model, naive_lengths)
    figures = {
        "model": loaded.info.get("model"), "device": dev, "dtype": loaded.dtype,
        "threads": torch.get_num_threads(), "prompts": len(prompts), "tokens": tokens,
        "mean_tokens": round(tokens / len(prompts), 1),
        "peak_matmul_gflops": round(peak / 1e9, 1),
        "batched_tokens_per_s": round(batched_tps, 1), "naive_tokens_per_s": round(naive_tps, 1),
        "speedup": round(batched_tps / naive_tps, 2),
        "batched_mfu": round(flops / batched_s / peak, 3), "naive_mfu": round(naive_flops / naive_s / peak, 3),
    }
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
