"""A run's model and map loaded once, to place typed prompts and draw generations as paths.

``RunSession`` reuses the pieces ``llm-maps build`` and ``score`` use — the run's template,
``encode_one`` (same tokenisation, pooling and truncation, so a typed prompt's encoding equals
what build would store), the saved ``Projection`` (no refit, no numba), exact ``knn`` over the
train rows of the default layer, and ``generate`` with hidden states — so a point placed here
and a point in the run are comparable. ``SessionPool`` keeps at most N sessions (LRU).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from llm_maps.conditions import DEFAULT_COT_CUE, cot_choice_prompt, cot_prompt, extract_answer, is_numeric
from llm_maps.errors import LLMMapsError
from llm_maps.falloff import FALLOFF_FILE, expected_accuracy, falloff_stats
from llm_maps.neighbours import knn, pairwise_distances
from llm_maps.runfolder import PROJECTION, Run, RunIds, check_run_files, layer_file
from llm_maps.scoring import example_metric, get_metric, metric_names, run_thresholds
from pipelines.encode import encode_one
from pipelines.generate import choice_loglikelihoods, generate
from pipelines.models import load_model
from pipelines.nearest import TokenAtlas
from pipelines.project import Projection
from pipelines.score import _choices, _null
from pipelines.templates import PromptTemplate


class RunSession:
    def __init__(self, run_dir: str | Path, *, device: str = "auto", dtype: str = "auto", warm: bool = True):
        start = time.perf_counter()
        self.run = Run(run_dir)
        m = self.manifest = self.run.manifest
        check_run_files(self.run.path, m)  # a file that does not match the manifest: named, before any load
        if not m.get("projection"):
            raise LLMMapsError(f"{self.run.path}: run has no projection (run `llm-maps project` first)")
        self.loaded = load_model(m["model"], revision=m.get("model_revision"), dtype=dtype, device=device)
        self.template = PromptTemplate.from_manifest(m["prompt_template"])
        self.layer = self.run.default_layer
        self.metric = m.get("distance_metric", "cosine")
        self.k = int((m.get("neighbours") or {}).get("k", 10))
        self.projection = Projection.load(self.run.path / PROJECTION)
        enc = self.run.encodings(self.layer)
        ex = self.run.examples
        self.fit_enc = (np.asarray(enc[self.projection.fit_rows], dtype=np.float32)
                        if self.projection.method == "umap" else None)  # [F, H]
        is_train = (ex["split"] == "train").to_numpy()
        self.train_rows = np.flatnonzero(is_train)
        self.train_enc = np.asarray(enc[self.train_rows], dtype=np.float32)  # [T, H]
        _check_servable(self.run.path, self.layer, enc, self.train_enc, self.loaded)
        self.train_ids = ex["example_id"].to_numpy()[self.train_rows]
        self.train_domains = ex["domain"].to_numpy()[self.train_rows]
        self.falloff = self._falloff_stats(ex)
        self._load_atlas(ex)
        self._example_rows: dict[str, int] | None = None  # example_id -> row (variations), built on first use
        self._lock = threading.Lock()  # one forward at a time per model
        self.load_seconds = time.perf_counter() - start
        self.warm_seconds = 0.0
        if warm:  # first call pays tokenizer/allocator warm-up here, not on a request
            t = time.perf_counter()
            self.place("warm-up")
            self.warm_seconds = time.perf_counter() - t

    @property
    def name(self) -> str:
        return self.run.name

    def _falloff_stats(self, ex) -> dict | None:
        path = self.run.path / FALLOFF_FILE
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            for v in data.get("variants", []):
                if v.get("default"):
                    return v["stats"]
        test = ex[(ex["split"] == "test") & ex["correct"].notna()]
        if len(test) == 0:
            return None
        return falloff_stats(test["dist_to_train"].to_numpy(dtype=float),
                             test["correct"].astype(object).tolist(), test["domain"].tolist(),
                             tasks=test["task"].astype(str).tolist())

    def _load_atlas(self, ex) -> None:
        """The token atlas of the map layer (when the run has one): generated tokens are measured
        against it and placed on the token map (fitted on train prompts + atlas tokens)."""
        self.atlas = TokenAtlas.of(self.run, self.layer)

    def atlas_step(self, state: np.ndarray) -> dict:
        """For one (fp16-rounded) state: distance to the nearest atlas state, that training step
        (example, position, token and its context) and the position on the token map."""
        return self.atlas.step(state)

    # ------------------------------------------------------------------ pieces
    def prompt_for(self, instruction: str, context: str = "") -> str:
        return self.template.render(instruction, context, tokenizer=self.loaded.tokenizer)

    def n_tokens(self, prompt: str) -> int:
        return len(self.loaded.tokenizer(prompt)["input_ids"]) + (1 if self.manifest["add_eos"] else 0)

    def project(self, states: np.ndarray) -> np.ndarray:
        """2-D positions [M, 2] of encodings [M, H] with the run's saved map (fp16-rounded like the
        run's stored encodings, so a typed prompt lands exactly where build put the same prompt)."""
        states = np.atleast_2d(states).astype(np.float16).astype(np.float32)
        return self.projection.transform(states, self.fit_enc)

    def _where(self, state: np.ndarray, domain: str | None) -> dict:
        state = state.astype(np.float16).astype(np.float32)  # as stored in the run: same distances
        dists, idx = knn(state[None, :], self.train_enc, k=self.k, metric=self.metric)
        keep = idx[0] >= 0
        neighbours = [{"example_id": str(self.train_ids[j]), "distance": float(d)}
                      for j, d in zip(idx[0][keep], dists[0][keep])]
        xy = self.project(state)[0]
        dist = float(dists[0][0])
        if domain is None and neighbours:
            votes = Counter(self.train_domains[j] for j in idx[0][keep])
            top = max(votes.values())
            domain = next(str(self.train_domains[j]) for j in idx[0][keep] if votes[self.train_domains[j]] == top)
        expected = expected_accuracy(self.falloff, domain, dist) if self.falloff and domain else None
        return {"x": float(xy[0]), "y": float(xy[1]), "dist_to_train": dist, "neighbours": neighbours,
                "domain": domain, "expected_accuracy": expected}

    # ------------------------------------------------------------------ jobs
    def place(self, instruction: str, context: str = "", *, domain: str | None = None) -> dict:
        prompt = self.prompt_for(instruction, context)
        with self._lock:
            state = encode_one(self.loaded, prompt, layers=[self.layer], add_eos=self.manifest["add_eos"],
                               max_length=self.manifest["max_length"])[self.layer]
        out = {"prompt": prompt, **self._where(state, domain), "state": state}
        if self.atlas is not None:  # the prompt's place on the token map too
            step = self.atlas_step(state.astype(np.float16).astype(np.float32))
            out["x_tokens"], out["y_tokens"] = step["x"], step["y"]
        return out

    # ------------------------------------------------------------------ try a variation
    def example_row(self, example_id: str) -> int:
        """Row of ``example_id`` in examples.parquet, or LLMMapsError naming the field."""
        if self._example_rows is None:
            self._example_rows = {str(v): i for i, v in enumerate(self.run.examples["example_id"].tolist())}
        row = self._example_rows.get(str(example_id))
        if row is None:
            raise LLMMapsError(f"field 'example_id': unknown example '{str(example_id)[:80]}' in run '{self.name}'")
        return int(row)

    def variation(self, example_id: str, placed: dict, output: str | None = None, *, cot: bool = False) -> dict:
        """Score an edited prompt of a run's example as ``llm-maps score`` would score the example.

        The metric is the example's stored ``metric`` (else the run's rule: ``metric_for`` with the
        manifest's metric spec) and ``correct`` is ``score >= scoring.thresholds[metric]``. Text
        metrics score ``output`` (a chain-of-thought variation, ``cot``: the answer extracted from it
        by ``llm_maps.conditions.extract_answer``); multiple choice scores the choice with the highest
        log-likelihood given the edited prompt (``cot``: after the prompt, the reasoning and
        "So the answer is", as ``score --conditions cot`` does). ``dist_to_original``: the edited
        prompt's distance to the example's stored encoding, at the map layer, in the run's metric,
        both fp16-rounded as ``dist_to_train`` is."""
        row = self.example_row(example_id)
        ex = self.run.examples
        state = self._state_of(placed)
        original = np.asarray(self.run.encodings(self.layer)[row], dtype=np.float32)
        dist = float(pairwise_distances(state[None, :], original[None, :], self.metric)[0, 0])
        stored = ex["dist_to_train"].iloc[row]
        out: dict = {"example_id": str(ex["example_id"].iloc[row]), "metric": None, "threshold": None,
                     "answer": None, "extraction": None, "score": None, "correct": None,
                     "dist_to_original": max(dist, 0.0),
                     "original_dist_to_train": None if _null(stored) else float(stored), "note": None}
        ref = ex["reference"].iloc[row]
        if _null(ref) or not str(ref).strip():
            out["note"] = "the example has no reference to score against"
            return out
        ref = str(ref)
        choices = _choices(ex["choices"].iloc[row]) if "choices" in ex.columns else None
        scoring = self.manifest.get("scoring") or {}
        stored_metric = ex["metric"].iloc[row] if "metric" in ex.columns else None
        metric = example_metric(stored=None if _null(stored_metric) else stored_metric, category=str(ex["category"].iloc[row]),
                                task=str(ex["task"].iloc[row]), has_choices=choices is not None, scoring=scoring)
        if metric not in metric_names():
            out["note"] = f"metric '{metric}' cannot be computed on a variation"
            return out
        scorer = get_metric(metric)
        threshold = float(run_thresholds(scoring)[metric])
        out.update(metric=metric, threshold=threshold)
        if scorer.uses_choices:
            if choices is None:
                out["note"] = "the example has no choices"
                return out
            if cot and output is None:
                out["note"] = "generate the reasoning to score a step-by-step variation"
                return out
            prompt = cot_choice_prompt(placed["prompt"], output) if cot else placed["prompt"]
            with self._lock:
                lls = choice_loglikelihoods(self.loaded, prompt, choices)
            answer = scorer.answer(choices, [c["logprob"] for c in lls])
            score = float(scorer.score(answer, ref))
            rule = "choice_after_reasoning" if cot else "output"
        else:
            if output is None:
                out["note"] = "placed only: generate an answer to score it"
                return out
            answer, rule = extract_answer(output, numeric=is_numeric(ref)) if cot else (output, "output")
            score = float(scorer.score(answer, ref))
        out.update(answer=answer, extraction=rule, score=score, correct=bool(score >= threshold))
        return out

    @staticmethod
    def _state_of(placed: dict) -> np.ndarray:
        state = placed.get("state")
        if state is None:
            raise LLMMapsError("generate: the placed prompt has no hidden state")
        return np.asarray(state, dtype=np.float16).astype(np.float32)

    def generate(self, instruction: str, context: str = "", *, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, domain: str | None = None, top: int = 5,
                 on_token: Callable[[dict], None] | None = None, placed: dict | None = None,
                 teacher_force: str | None = None, cot: bool = False) -> dict:
        """Place the prompt (unless ``placed`` is given), then generate; every token with its
        logprob, top alternatives and its position on the map (its hidden state at the default
        layer, projected).

        With a token atlas (``"reference": "atlas"``) each token's ``dist`` is to the nearest
        atlas state, ``nearest`` names that training step and ``x``, ``y`` are on the token map;
        without one (``"reference": "prompts"``) ``dist`` is to the nearest train prompt end and
        ``x``, ``y`` on the prompt map. ``teacher_force``: feed this text's tokens instead of
        choosing them (what a training reference looks like on the same path). ``cot``: "think step
        by step" as ``score --conditions cot`` asks it (``llm_maps.conditions.cot_prompt``): the
        answer starts with the cue; the prompt (its place, neighbours, expected accuracy) stays the
        plain one, the result's ``response_prefix`` is the cue and ``output`` what follows it."""
        forced = None
        if teacher_force is not None:
            forced = list(self.loaded.tokenizer(teacher_force, add_special_tokens=False)["input_ids"])
            if not forced:
                raise LLMMapsError("generate: teacher_force tokenizes to no tokens")
            max_new_tokens = len(forced)

        result = dict(placed) if placed is not None else self.place(instruction, context, domain=domain)
        tokens: list[dict] = []
        result["tokens"] = tokens

        prev = [self._state_of(result)]

        def each(_row, tok, state):
            state = state.astype(np.float16).astype(np.float32)  # as the run stores encodings
            if self.atlas is not None:
                where = self.atlas_step(state)
            else:
                xy = self.project(state)[0]
                dist, _ = knn(state[None, :], self.train_enc, k=1, metric=self.metric)
                where = {"x": float(xy[0]), "y": float(xy[1]), "dist": float(dist[0, 0])}
            step = float(pairwise_distances(prev[0][None, :], state[None, :], self.metric)[0, 0])
            prev[0] = state
            item = {"text": tok.text, "id": tok.id, "logprob": tok.logprob,
                    "top": [{"text": t, "logprob": lp} for t, lp in tok.top], **where, "step": step}
            tokens.append(item)
            if on_token is not None:
                on_token(item)

        text = cot_prompt(result["prompt"], DEFAULT_COT_CUE) if cot else result["prompt"]
        if cot:
            result["response_prefix"] = DEFAULT_COT_CUE
        with self._lock:
            res = generate(self.loaded, [text], max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, seed=seed, stop_strings=self.template.stop_strings, top_alternatives=top,
                           hidden_layer=self.layer, max_length=self.manifest["max_length"], on_token=each,
                           forced_ids=forced)[0]
        # tokens after a stop string were streamed but are not part of the answer
        del tokens[len(res.tokens):]
        result["output"] = res.text
        result["stop_reason"] = res.stop_reason
        result.pop("state", None)
        result["reference"] = "atlas" if self.atlas is not None else "prompts"
        result.update(path_summary(tokens, result["dist_to_train"], atlas=self.atlas is not None))
        return result


def path_summary(tokens: list[dict], start_dist: float, *, atlas: bool = False) -> dict:
    """What the playground compares generations by: mean log-likelihood per token, perplexity,
    number of tokens, path length in the full hidden space (sum of the steps from the prompt's
    state through every token's state, in the run's distance metric) and the final point's
    distance to the nearest train example (with an atlas: to the nearest training step; then
    also ``mean_dist`` and ``max_dist``, the weakest step)."""
    n = len(tokens)
    mean = float(np.mean([t["logprob"] for t in tokens])) if n else None
    out = {"n_tokens": n, "mean_logprob": mean, "perplexity": float(np.exp(-mean)) if n else None,
           "path_length": float(sum(t["step"] for t in tokens)),
           "final_dist": float(tokens[-1]["dist"]) if n else float(start_dist)}
    if atlas:
        dists = [float(t["dist"]) for t in tokens]
        out["mean_dist"] = float(np.mean(dists)) if n else None
        out["max_dist"] = float(np.max(dists)) if n else None
    return out


def _check_servable(run_dir: Path, layer: int, enc: np.ndarray, train_enc: np.ndarray, loaded) -> None:
    """What the file check cannot see from headers: encodings as wide as the model's hidden states,
    and train encodings that are all finite (a NaN would make every distance NaN). One-line errors."""
    width = getattr(loaded.model.config, "hidden_size", None)
    if width is not None and enc.shape[1] != int(width):
        raise LLMMapsError(f"{layer_file(run_dir, layer)}: hidden size {enc.shape[1]}, but the model's is {width}")
    bad = ~np.isfinite(train_enc).all(axis=1)
    if bad.any():
        raise LLMMapsError(f"{layer_file(run_dir, layer)}: {int(bad.sum())} train rows hold NaN or infinite values "
                           "(re-encode the run)")


class SessionPool:
    """At most ``max_models`` RunSessions resident; the least recently used is evicted."""

    def __init__(self, run_dirs, *, max_models: int = 2, device: str = "auto", dtype: str = "auto",
                 factory=RunSession, ids=None):
        # run id -> folder, by the rule the web process uses (``ids``: a shared ``RunIds``)
        self.paths = dict((ids or RunIds()).assign(run_dirs))
        self.max_models = max(1, int(max_models))
        self.device, self.dtype, self.factory = device, dtype, factory
        self._sessions: OrderedDict[str, RunSession] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run: str) -> RunSession:
        with self._lock:
            if run in self._sessions:
                self._sessions.move_to_end(run)
                return self._sessions[run]
            if run not in self.paths:
                raise LLMMapsError(f"run '{run}' is not served by this worker (serves: {', '.join(self.paths)})")
            while len(self._sessions) >= self.max_models:
                self._sessions.popitem(last=False)
            session = self.factory(self.paths[run], device=self.device, dtype=self.dtype)
            self._sessions[run] = session
            return session

    def forget(self, run: str) -> None:
        """Drop a run's loaded session (its files changed): the next ``get`` loads it again."""
        with self._lock:
            self._sessions.pop(run, None)

    def update(self, paths: dict) -> tuple[list[str], list[str]]:
        """Serve the runs ``paths`` (run id -> folder) from now on: a run that left (or whose folder
        changed) is dropped from memory. Returns the ids (added, removed)."""
        with self._lock:
            added = [r for r in paths if self.paths.get(r) != paths[r]]
            removed = [r for r in self.paths if r not in paths]
            for run in [*removed, *added]:
                self._sessions.pop(run, None)
            self.paths = dict(paths)
        return added, removed

    @property
    def resident(self) -> list[str]:
        return list(self._sessions)
