"""First-token statistics: how sure the model is at the step that decides a one-token answer.

For every prompt, the model's next-token distribution p at the end of the prompt (exactly the
prompt the encoder reads, without an appended EOS, the same left truncation): its entropy (nats),
its top probability, and KL(p || m), where m is the model's *average* next-token distribution over
the run's train prompts: the "constant" answer a model tends to fall back to out of distribution
(Kang et al. 2023, "Deep Neural Networks Tend to Extrapolate Predictably").

``llm-maps score`` takes them from the passes it runs anyway (``FirstTokenCollector``): the
prefill of ``generate`` and the multiple-choice forward of ``choice_loglikelihoods_batch`` both
end with the next-token distribution at the end of the prompt, reduced batch by batch to the three
numbers (``logprob_stats``). Only rows neither pass covered (outputs stored, not generated now; a
prompt that generation truncated differently; ``--distributed``) get a separate forward pass
(``next_token_logprobs``: the encoder's batching, length-sorted, left-padded with position ids, so
padding never changes a result, the LM head at the last position only). The mean m always has its
own pass over (at most ``MAX_MEAN_PROMPTS``) train prompts, before the others. Stored as the
columns ``first_entropy``, ``first_top_prob``, ``first_kl_to_mean``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from pipelines.encode import batch_limits, pad_left, pad_token_id, plan_batches, resolve_max_length, tokenize_prompts

COLUMNS = ("first_entropy", "first_top_prob", "first_kl_to_mean")
# the passes a row's statistics can come from (manifest scoring.first_token.sources)
SOURCES = ("generation", "choices", "separate")


def next_token_logprobs(loaded, prompts: Sequence[str], *, max_length: int | None = None,
                        batch_tokens: int | None = None, progress: bool = True,
                        desc: str = "first token") -> Iterator[tuple[np.ndarray, Any]]:
    """Yield (prompt indices [b], log-probabilities [b, V] as a float32 torch tensor) per batch."""
    import torch
    from tqdm.auto import tqdm


    ids = prompt_ids(loaded, prompts, max_length=max_length)
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


def prompt_ids(loaded, prompts: Sequence[str], *, max_length: int | None = None) -> list[list[int]]:
    """The token ids the statistics are of: the prompt as the encoder reads it (no EOS), its last
    ``max_length`` tokens (default: the model's limit, at most 2048)."""
    ids, _ = tokenize_prompts(loaded.tokenizer, prompts, add_eos=False,
                              max_length=resolve_max_length(loaded, max_length))
    return ids


def logprob_stats(lp, mean=None) -> dict[str, np.ndarray]:
    """{column: [b] float64} of next-token log-probabilities ``lp`` [b, V]: entropy (nats), top
    probability, and KL(p || m) (nats) from the mean distribution whose log is ``mean`` [V] (NaN
    when ``mean`` is None). The one place the three statistics are computed."""
    import torch

    lp = lp.float()
    p = lp.exp()
    zero = p == 0  # tokens a model rules out (log-probability -inf): 0 log 0 = 0
    out = {"first_entropy": (-(p * lp).masked_fill(zero, 0.0).sum(-1)).double().cpu().numpy(),
           "first_top_prob": p.max(-1).values.double().cpu().numpy(),
           "first_kl_to_mean": np.full(lp.shape[0], np.nan)}
    if mean is not None:
        kl = (p.double() * (lp.double() - mean.to(lp.device)[None, :])).masked_fill(zero, 0.0).sum(-1)
        out["first_kl_to_mean"] = torch.clamp(kl, min=0.0).cpu().numpy()
    return out


def mean_logprobs(loaded, train_prompts: Sequence[str], *, max_length: int | None = None,
                  progress: bool = True):
    """The log of the mean next-token distribution over ``train_prompts`` ([V] float64 tensor), or
    None when there are none."""
    if not len(train_prompts):
        return None
    total: Any = None
    for _, lp in next_token_logprobs(loaded, train_prompts, max_length=max_length, progress=progress,
                                     desc="first token (train mean)"):
        s = lp.double().exp().sum(0)
        total = s if total is None else total + s
    return (total / len(train_prompts)).clamp_min(1e-300).log()


def first_token_stats(loaded, prompts: Sequence[str], *, train_prompts: Sequence[str] = (),
                      max_length: int | None = None, progress: bool = True, mean: Any = None) -> dict[str, np.ndarray]:
    """{column: [len(prompts)] float64}: entropy (nats) and top probability of the next-token
    distribution at the end of each prompt, and its KL divergence (nats) from the mean of those
    distributions over ``train_prompts`` (or the given ``mean``, see ``mean_logprobs``; NaN when
    there is neither)."""
    if mean is None:
        mean = mean_logprobs(loaded, train_prompts, max_length=max_length, progress=progress)
    out = {c: np.full(len(prompts), np.nan) for c in COLUMNS}
    for rows, lp in next_token_logprobs(loaded, prompts, max_length=max_length, progress=progress):
        for col, values in logprob_stats(lp, mean).items():
            out[col][rows] = values
    return out


MAX_MEAN_PROMPTS = 500


def wanted_rows(frame, selected: np.ndarray, *, always: bool) -> np.ndarray:
    """Rows of ``frame`` whose statistics this scoring computes: the ``selected`` rows that lack
    them (all of them when ``always``)."""
    if not all(col in frame.columns for col in COLUMNS[:2]):
        return np.flatnonzero(selected)
    missing = frame[list(COLUMNS[:2])].isna().any(axis=1).to_numpy()
    return np.flatnonzero(selected & (missing | always))


def mean_prompt_rows(frame, max_mean_prompts: int = MAX_MEAN_PROMPTS) -> tuple[np.ndarray, int]:
    """(the train rows the mean is over, the number of train rows): every train prompt, or a fixed
    random sample (seed 0) of ``max_mean_prompts`` of them in a larger run."""
    train = np.flatnonzero((frame["split"] == "train").to_numpy())
    n_train = len(train)
    if n_train > max_mean_prompts:
        train = np.sort(np.random.default_rng(0).choice(train, size=max_mean_prompts, replace=False))
    return train, n_train


class FirstTokenCollector:
    """The statistics of the ``rows`` of ``frame`` that scoring computes, taken from the passes it
    runs anyway: ``hook(frame_rows, source)`` is the ``on_first`` callback of ``generate`` and of
    ``choice_loglikelihoods_batch`` (called with prompt indices [b], log-probabilities [b, V] at
    the end of each prompt, and the number of prompt tokens the pass used [b]). A row is taken
    only when its pass read the same prompt tokens as the separate pass would (the same left
    truncation); the first pass to cover a row gives its numbers. Each batch is reduced to three
    numbers a row at once (never [N, V]). The train mean is computed first, by ``start``."""

    def __init__(self, frame, rows: np.ndarray, *, loaded, max_length: int | None, mean: Any,
                 mean_over: tuple[int, int], progress: bool = True):
        self.frame, self.rows = frame, np.asarray(rows, dtype=np.int64)
        self.loaded, self.max_length = loaded, max_length
        self.mean, self.mean_over, self.progress = mean, mean_over, progress
        self.values = {c: np.full(len(frame), np.nan) for c in COLUMNS}
        self.source = np.full(len(frame), "", dtype=object)
        self.expected = np.full(len(frame), -1, dtype=np.int64)  # prompt tokens the separate pass reads
        prompts = frame["prompt"].to_numpy()
        if len(self.rows):
            ids = prompt_ids(loaded, [str(prompts[i]) for i in self.rows], max_length=max_length)
            self.expected[self.rows] = [len(s) for s in ids]
        self.truncated: dict[int, str] = {}  # row -> the pass that read it with another truncation
        self.seconds = 0.0

    @classmethod
    def start(cls, frame, selected: np.ndarray, *, loaded, always: bool, max_length: int | None,
              progress: bool = True, max_mean_prompts: int = MAX_MEAN_PROMPTS) -> "FirstTokenCollector | None":
        """None when no row needs statistics; else the collector, with the train mean computed."""
        rows = wanted_rows(frame, selected, always=always)
        if not len(rows):
            return None
        t0 = time.perf_counter()
        train, n_train = mean_prompt_rows(frame, max_mean_prompts)
        prompts = frame["prompt"].to_numpy()
        mean = mean_logprobs(loaded, [str(prompts[i]) for i in train], max_length=max_length, progress=progress)
        out = cls(frame, rows, loaded=loaded, max_length=max_length, mean=mean, mean_over=(len(train), n_train),
                  progress=progress)
        out.seconds += time.perf_counter() - t0
        return out

    def hook(self, frame_rows: Sequence[int], source: str) -> Callable[[np.ndarray, Any, np.ndarray], None]:
        """The ``on_first`` callback of a pass over the prompts of ``frame_rows`` (in that order)."""
        if source not in SOURCES:
            raise ValueError(f"source: one of {SOURCES}, got {source!r}")
        frame_rows = np.asarray(frame_rows, dtype=np.int64)

        def on_first(indices, lp, prompt_tokens) -> None:
            t0 = time.perf_counter()
            rows = frame_rows[np.asarray(indices, dtype=np.int64)]
            take = (self.expected[rows] >= 0) & (self.source[rows] == "")
            same = self.expected[rows] == np.asarray(prompt_tokens, dtype=np.int64)
            self.truncated.update({int(r): source for r in rows[take & ~same]})
            take &= same
            if take.any():
                import torch

                keep = rows[take]
                for col, values in logprob_stats(lp[torch.as_tensor(np.flatnonzero(take), device=lp.device)],
                                                 self.mean).items():
                    self.values[col][keep] = values
                self.source[keep] = source
            self.seconds += time.perf_counter() - t0

        return on_first

    def finish(self, *, distributed: bool = False, log=print) -> dict:
        """Run the separate pass for the rows no pass covered, write the columns into the frame;
        returns the provenance for the manifest (``scoring.first_token``)."""
        t0 = time.perf_counter()
        frame, prompts = self.frame, self.frame["prompt"].to_numpy()
        rest = self.rows[self.source[self.rows] == ""]
        if len(rest):
            stats = first_token_stats(self.loaded, [str(prompts[i]) for i in rest], mean=self.mean,
                                      max_length=self.max_length, progress=self.progress)
            for col in COLUMNS:
                self.values[col][rest] = stats[col]
            self.source[rest] = "separate"
        for col in COLUMNS:
            if col not in frame.columns:
                frame[col] = np.nan
            values = frame[col].to_numpy(dtype=float, na_value=np.nan, copy=True)
            values[self.rows] = self.values[col][self.rows]
            frame[col] = values
        self.seconds += time.perf_counter() - t0
        why = ("distributed scoring (the passes ran on the workers)" if distributed
               else "not generated or scored by choices in this scoring (outputs stored)")
        ids = frame["example_id"].to_numpy()
        separate: dict[str, list[str]] = {}
        for r in rest:
            reason = (f"prompt truncated differently by the {self.truncated[int(r)]} pass" if int(r) in self.truncated
                      else why)
            separate.setdefault(reason, []).append(str(ids[r]))
        sources = {s: int((self.source[self.rows] == s).sum()) for s in SOURCES}
        n_mean, n_train = self.mean_over
        log(f"first-token statistics for {len(self.rows)} examples ({sources['generation']} from generation, "
            f"{sources['choices']} from the multiple-choice pass, {sources['separate']} by a separate pass; "
            f"train mean over {n_mean} of {n_train} prompts) in {self.seconds:.1f} s")
        return {"columns": list(COLUMNS), "units": "nats (entropy, KL); probability (top)",
                "mean_over": f"{n_mean} train prompts" + (f" (a random sample, seed 0, of {n_train})"
                                                         if n_mean < n_train else ""),
                "rows": int(len(self.rows)), "seconds": round(self.seconds, 2),
                "sources": sources, "separate": separate}


def add_first_token_columns(frame, selected: np.ndarray, *, loaded, load: Callable[[], object], always: bool,
                            max_length: int | None, progress: bool = True, log=print,
                            max_mean_prompts: int = MAX_MEAN_PROMPTS, collector: FirstTokenCollector | None = None,
                            distributed: bool = False) -> tuple[object, dict | None]:
    """Fill the first-token columns of ``frame`` for the ``selected`` rows that lack them (all of
    them when ``always``): from ``collector`` (the passes scoring ran, see ``FirstTokenCollector``)
    where it covered them, by a separate pass for the rest; loads the model with ``load()`` only
    when there is work and none is loaded. Returns (the loaded model or None, provenance for the
    manifest or None when nothing ran)."""
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = np.nan
    if collector is None:
        if not len(wanted_rows(frame, selected, always=always)):
            return loaded, None
        loaded = loaded if loaded is not None else load()
        collector = FirstTokenCollector.start(frame, selected, loaded=loaded, always=always, max_length=max_length,
                                              progress=progress, max_mean_prompts=max_mean_prompts)
        assert collector is not None
    return loaded, collector.finish(distributed=distributed, log=log)
