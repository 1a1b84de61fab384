"""First-token statistics: how sure the model is at the step that decides a one-token answer.

For every prompt, the model's next-token distribution p at the end of the prompt (exactly the
prompt the encoder reads, without an appended EOS, the same left truncation): its entropy (nats),
its top probability, and KL(p || m), where m is the model's *average* next-token distribution over
the run's train prompts: the "constant" answer a model tends to fall back to out of distribution
(Kang et al. 2023, "Deep Neural Networks Tend to Extrapolate Predictably").

A separate forward pass (the encoder's batching: length-sorted, left-padded with position ids, so
padding never changes a result), with the LM head at the last position only. ``llm-maps score``
stores the results as the columns ``first_entropy``, ``first_top_prob``, ``first_kl_to_mean``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

COLUMNS = ("first_entropy", "first_top_prob", "first_kl_to_mean")


def next_token_logprobs(loaded, prompts: Sequence[str], *, max_length: int | None = None,
                        batch_tokens: int | None = None, progress: bool = True,
                        desc: str = "first token") -> Iterator[tuple[np.ndarray, Any]]:
    """Yield (prompt indices [b], log-probabilities [b, V] as a float32 torch tensor) per batch."""
    import torch
    from tqdm.auto import tqdm

    from pipelines.encode import (batch_limits, pad_left, pad_token_id, plan_batches, resolve_max_length,
                                  tokenize_prompts)

    max_length = resolve_max_length(loaded, max_length)
    ids, _ = tokenize_prompts(loaded.tokenizer, prompts, add_eos=False, max_length=max_length)
    lengths = [len(s) for s in ids]
    tokens, max_batch = batch_limits(loaded.device, batch_tokens)
    pad_id = pad_token_id(loaded.tokenizer)
    bar = tqdm(total=len(ids), unit="ex", desc=desc, disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for rows in plan_batches(lengths, batch_tokens=tokens, max_batch=max_batch):
        input_ids, mask, positions = pad_left([ids[i] for i in rows], pad_id, loaded.device)
        with torch.inference_mode():
            out = loaded.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False,
                               logits_to_keep=1)
        yield rows, torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        bar.update(len(rows))
        bar.set_postfix_str(f"{bar.n / max(time.perf_counter() - start, 1e-9):.1f} ex/s", refresh=False)
    bar.close()


def first_token_stats(loaded, prompts: Sequence[str], *, train_prompts: Sequence[str],
                      max_length: int | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """{column: [len(prompts)] float64}: entropy (nats) and top probability of the next-token
    distribution at the end of each prompt, and its KL divergence (nats) from the mean of those
    distributions over ``train_prompts`` (NaN when there are none)."""
    import torch

    mean: Any = None
    if len(train_prompts):
        total: Any = None
        for _, lp in next_token_logprobs(loaded, train_prompts, max_length=max_length, progress=progress,
                                         desc="first token (train mean)"):
            s = lp.double().exp().sum(0)
            total = s if total is None else total + s
        mean = (total / len(train_prompts)).clamp_min(1e-300).log()  # [V] log of the mean distribution
    out = {c: np.full(len(prompts), np.nan) for c in COLUMNS}
    for rows, lp in next_token_logprobs(loaded, prompts, max_length=max_length, progress=progress):
        p = lp.exp()
        out["first_entropy"][rows] = (-(p * lp).sum(-1)).double().cpu().numpy()
        out["first_top_prob"][rows] = p.max(-1).values.double().cpu().numpy()
        if mean is not None:
            kl = (p.double() * (lp.double() - mean[None, :])).sum(-1)
            out["first_kl_to_mean"][rows] = torch.clamp(kl, min=0.0).cpu().numpy()
    return out


MAX_MEAN_PROMPTS = 500


def add_first_token_columns(frame, selected: np.ndarray, *, loaded, load: Callable[[], object], always: bool,
                            max_length: int | None, progress: bool = True, log=print,
                            max_mean_prompts: int = MAX_MEAN_PROMPTS) -> tuple[object, dict | None]:
    """Fill the first-token columns of ``frame`` for the ``selected`` rows that lack them (all of
    them when ``always``); loads the model with ``load()`` only when there is work. The mean
    distribution is over every train prompt, or a fixed random sample (seed 0) of
    ``max_mean_prompts`` of them in a larger run. Returns (the loaded model or None, provenance for
    the manifest or None when nothing ran)."""
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = np.nan
    missing = frame[list(COLUMNS[:2])].isna().any(axis=1).to_numpy()
    rows = np.flatnonzero(selected & (missing | always))
    if len(rows) == 0:
        return loaded, None
    loaded = loaded if loaded is not None else load()
    start = time.perf_counter()
    prompts = frame["prompt"].to_numpy()
    train = np.flatnonzero((frame["split"] == "train").to_numpy())
    n_train = len(train)
    if n_train > max_mean_prompts:
        train = np.sort(np.random.default_rng(0).choice(train, size=max_mean_prompts, replace=False))
    stats = first_token_stats(loaded, [prompts[i] for i in rows], train_prompts=[prompts[i] for i in train],
                              max_length=max_length, progress=progress)
    for col in COLUMNS:
        values = frame[col].to_numpy(dtype=float, na_value=np.nan, copy=True)
        values[rows] = stats[col]
        frame[col] = values
    seconds = time.perf_counter() - start
    log(f"first-token statistics for {len(rows)} examples (train mean over {len(train)} of {n_train} prompts) "
        f"in {seconds:.1f} s")
    return loaded, {"columns": list(COLUMNS), "units": "nats (entropy, KL); probability (top)",
                    "mean_over": f"{len(train)} train prompts" + (f" (a random sample, seed 0, of {n_train})"
                                                                 if len(train) < n_train else ""),
                    "rows": int(len(rows)),
                    "seconds": round(seconds, 2)}
