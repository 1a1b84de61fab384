"""Instruction-tune a run's model on its train split and turn each checkpoint into a run.

``llm-maps finetune RUN --out GROUP_DIR``::

    GROUP_DIR/step-000000/      step 0: the base run (its files hard-linked, manifest + step 0)
    GROUP_DIR/step-000050/      a run per saved checkpoint, built by ``build_run`` with the base
                                run's settings on the merged model; manifest ``step``, ``base_run``
    GROUP_DIR/checkpoints/step-000050/model/   the merged model (LoRA folded into the weights)
    GROUP_DIR/checkpoints/step-000050/state.pt trainable weights, optimizer, scheduler, RNG, losses
    GROUP_DIR/finetune.json     settings and the loss curve (train per step, held-out per checkpoint)

The loss is the mean cross-entropy over the reference tokens (and the EOS after them) only: prompt
positions carry the label -100. Each optimizer step takes ``batch_size`` examples in a seeded order
(a fresh permutation per epoch), split into micro-batches of at most ``batch_tokens`` padded tokens
whose gradients accumulate; the step's loss is normalised by its reference tokens, so the result
does not depend on how the step is split. The order of step ``s`` depends only on (seed, s), and a
checkpoint holds the optimizer, scheduler and RNG states: a resumed finetune ends with the weights
an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from llm_maps import model_stack
from llm_maps.config import BuildConfig
from llm_maps.contract import COLUMNS
from llm_maps.errors import LLMMapsError
from llm_maps.falloff import FALLOFF_FILE
from llm_maps.findings import FINDINGS_FILE, findings_run
from llm_maps.stages import FinetuneConfig
from llm_maps.runfolder import (CHECKPOINTS, EXAMPLES, FINETUNE_FILE, MANIFEST, add_note, read_manifest,
                                write_json_atomic)
from pipelines import models  # (models.load_model: looked up when called)
from pipelines.atlas import encode_view_run
from pipelines.build import build_run
from pipelines.falloff_run import falloff_run
from pipelines.score import score_run
from pipelines.views import parse_views

# LoRA target modules per architecture (model_type); others: every linear layer ("all-linear")
LORA_TARGETS: dict[str, list[str]] = {
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
FAN_IN_FAN_OUT = {"gpt2"}  # Conv1D weights are stored transposed

# columns of the base run that a checkpoint run computes anew (or, for a view or atlas the checkpoint
# runs leave out, must not carry over from the base model): every column a stage after the build
# writes, and the build's own per-model columns
_DERIVED_STAGES = ("score", "project", "neighbours", "encode --view completion", "atlas")
_RECOMPUTED = tuple(name for name, c in COLUMNS.items() if c.stage in _DERIVED_STAGES) + (
    "n_tokens", "truncated", "domain")


@dataclass
class TrainRows:
    input_ids: list[list[int]]
    labels: list[list[int]]
    example_ids: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- features and loss

def make_labels(input_ids: Sequence[int], n_prompt: int) -> list[int]:
    """The labels of one example: -100 on the first ``n_prompt`` (prompt) positions, the ids after."""
    return [-100] * n_prompt + [int(t) for t in input_ids[n_prompt:]]


def make_features(tokenizer: Any, prompt: str, reference: str, *, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + reference + EOS, the prompt tokenized as the encoder does
    (``tokenizer(prompt)``); too long: the prompt loses tokens on the left, then the reference on the right."""
    p_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    r_ids = list(tokenizer(reference, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        r_ids.append(int(tokenizer.eos_token_id))
    r_ids = r_ids[:max(1, max_length - 1)]
    p_ids = p_ids[max(0, len(p_ids) - (max_length - len(r_ids))):]
    ids = p_ids + r_ids
    return ids, make_labels(ids, len(p_ids))


def batch_tensors(rows: Sequence[int], data: TrainRows, pad_id: int, device: str) -> tuple[Any, Any, Any]:
    """Right-padded (input_ids, attention_mask, labels) for ``rows``; padding has label -100."""
    import torch

    width = max(len(data.input_ids[r]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(data.input_ids[r])
        ids[i, :n] = torch.tensor(data.input_ids[r])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(data.labels[r])
    return ids.to(device), mask.to(device), labels.to(device)


def summed_loss(model: Any, ids: Any, mask: Any, labels: Any) -> tuple[Any, int]:
    """(sum of the next-token cross-entropy over labelled positions, number of them)."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    target = labels[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return loss, int((target != -100).sum())


def micro_batches(rows: Sequence[int], data: TrainRows, batch_tokens: int) -> list[list[int]]:
    """Split ``rows`` (in order) into micro-batches of at most ``batch_tokens`` padded tokens."""
    out: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for r in rows:
        n = len(data.input_ids[r])
        if cur and max(width, n) * (len(cur) + 1) > batch_tokens:
            out.append(cur)
            cur, width = [], 0
        cur.append(r)
        width = max(width, n)
    if cur:
        out.append(cur)
    return out


def step_rows(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """The rows of optimizer step ``step`` (0-based): a seeded permutation per epoch, streamed."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[pos]))
    return out


def mean_loss(model: Any, data: TrainRows, rows: Sequence[int], *, batch_tokens: int, pad_id: int,
              device: str, autocast: bool = False) -> float:
    """Mean loss per reference token over ``rows`` (no gradient)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        for mb in micro_batches(rows, data, batch_tokens):
            loss, n = summed_loss(model, *batch_tensors(mb, data, pad_id, device))
            total += float(loss)
            count += n
    return total / max(count, 1)


# --------------------------------------------------------------------------- the base run

def base_settings(run_dir: Path) -> tuple[dict[str, Any], BuildConfig]:
    """The base run's manifest and the BuildConfig that rebuilds it on another model."""
    manifest = read_manifest(run_dir)
    history = manifest.get("history") or []
    enc = next((h for h in reversed(history) if h.get("stage") == "encode"), None)
    if enc is None:
        raise LLMMapsError(f"{run_dir}: the run has no 'encode' entry in manifest.history "
                           "(finetune needs a run built by `llm-maps build`)")
    params = dict(enc["params"])
    resolved = params.pop("resolved", {}) or {}
    known = {f for f in BuildConfig.__dataclass_fields__}
    values = {k: v for k, v in params.items() if k in known}
    values.update({"layers": list(manifest["layers"]), "default_layer": int(manifest["default_layer"]),
                   "max_length": int(manifest["max_length"]), "data": None, "limit": None,
                   "split_by": "source", "split_seed": int(resolved.get("split_seed", manifest.get("split_seed", 0)))})
    proj = next((h["params"] for h in reversed(history) if h.get("stage") == "project"), None)
    if proj:
        values.update({"projection": proj["method"], "fit_on": proj["fit_on"], "map_seed": int(proj["seed"]),
                       "n_neighbors": int(proj["n_neighbors"]), "min_dist": float(proj["min_dist"])})
    else:
        values["projection"] = None
    nb = next((h["params"] for h in reversed(history) if h.get("stage") == "neighbours"), None)
    if nb:
        values.update({"k": int(nb["k"]), "metric": nb["metric"]})
    return manifest, BuildConfig(**values)


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of ``src`` under ``dst`` (copy where linking is refused)."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def link_base_run(base: Path, group: Path, manifest: dict[str, Any]) -> Path:
    """Step 0: the base run's files, hard-linked, with ``step`` 0 and ``base_run`` in its manifest."""
    out = group / step_name(0)
    if (out / MANIFEST).exists():
        return out
    tmp = group / (step_name(0) + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _link_tree(base, tmp)
    (tmp / MANIFEST).unlink()
    write_json_atomic(tmp / MANIFEST, {**manifest, "step": 0, "base_run": str(base.resolve())})
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------- training

@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft's own reading of ``model.is_gradient_checkpointing`` (deprecated in transformers 5) warns;
    the call is not ours, so that one warning is silenced while peft wraps a model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _lora_model(model: Any, cfg: FinetuneConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    model_type = str(model.config.model_type)
    targets: Any = LORA_TARGETS.get(model_type, "all-linear")
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      target_modules=targets, task_type="CAUSAL_LM", fan_in_fan_out=model_type in FAN_IN_FAN_OUT)
    with _quiet_peft():
        return get_peft_model(model, lcfg)


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_merged(model: Any, base_model_dir: str, tokenizer: Any, out: Path, *, lora: bool,
                revision: str | None = None) -> None:
    """Write the merged model (LoRA folded in by peft's ``merge_and_unload``) to ``out``, atomically.
    The training model is not touched: the adapter is copied into a fresh base model, loaded from
    ``base_model_dir`` (what transformers loads: a folder, a hub id, or a GGUF file's converted
    safetensors folder, ``LoadedModel.info["converted_to"]``)."""
    import torch
    from transformers import AutoModelForCausalLM

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if lora:
        from peft import PeftModel

        adapter = tmp.with_name(tmp.name + "-adapter")
        shutil.rmtree(adapter, ignore_errors=True)
        model.save_pretrained(str(adapter))
        fresh = AutoModelForCausalLM.from_pretrained(base_model_dir, revision=revision, dtype=torch.float32)
        with _quiet_peft():
            merged = PeftModel.from_pretrained(fresh, str(adapter)).merge_and_unload()
        merged.save_pretrained(str(tmp))
        shutil.rmtree(adapter, ignore_errors=True)
    else:
        model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _last_checkpoint(group: Path) -> tuple[int, Path] | None:
    found = []
    for p in (group / CHECKPOINTS).glob("step-*"):
        if p.name.endswith(".partial") or not (p / "state.pt").exists() or not (p / "model" / "config.json").exists():
            continue
        found.append((int(p.name.split("-")[1]), p))
    return max(found) if found else None


def load_train_rows(run_dir: Path, tokenizer: Any, max_length: int) -> tuple[Any, TrainRows]:
    import pandas as pd

    frame = pd.read_parquet(run_dir / EXAMPLES)
    train = frame[frame["split"] == "train"]
    if "reference" in train.columns:
        train = train[train["reference"].notna() & (train["reference"].astype(str).str.strip() != "")]
    if not len(train):
        raise LLMMapsError(f"{run_dir / EXAMPLES}: no train rows with a reference to fine-tune on")
    data = TrainRows([], [], [str(i) for i in train["example_id"]])
    for prompt, ref in zip(train["prompt"], train["reference"]):
        ids, labels = make_features(tokenizer, str(prompt), str(ref), max_length=max_length)
        data.input_ids.append(ids)
        data.labels.append(labels)
    return frame, data


def eval_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows) of the train split: ``fraction`` held out (at least one row
    when there are two or more), chosen by seed."""
    n_eval = min(n - 1, max(1, round(n * fraction))) if n > 1 and fraction > 0 else 0
    perm = np.random.default_rng([seed, 10**6]).permutation(n)
    return sorted(int(i) for i in perm[n_eval:]), sorted(int(i) for i in perm[:n_eval])


def finetune(run_dir: str | Path, out: str | Path, cfg: FinetuneConfig | None = None, *,
             log: Callable[[str], Any] = print) -> Path:
    """Fine-tune the model of ``run_dir`` on its train split; checkpoints become runs in ``out``.

    Resumes from the last checkpoint in ``out`` when there is one (same settings required)."""
    model_stack.require("llm-maps finetune", ("torch", "transformers", *(() if cfg is not None and cfg.full else ("peft",))))
    cfg = cfg or FinetuneConfig()
    base = Path(run_dir)
    group = Path(out)
    _check_finetune(cfg, base, group)
    manifest, bcfg = base_settings(base)
    loaded = models.load_model(manifest["model"], revision=manifest.get("model_revision"), device=cfg.device,
                               dtype="float32")
    frame, data = load_train_rows(base, loaded.tokenizer, int(manifest["max_length"]))
    train_rows, eval_rows = eval_split(len(data.input_ids), cfg.eval_fraction, cfg.seed)
    trainer = _Trainer(loaded, data, train_rows, eval_rows, cfg, base=base, manifest=manifest)
    if cfg.views is not None:
        bcfg = bcfg.replace(views=cfg.views)
    if cfg.token_atlas is not None:
        bcfg = bcfg.replace(token_atlas=bool(cfg.token_atlas))
    trainer.prepare()
    created = not group.exists()
    group.mkdir(parents=True, exist_ok=True)
    start, curve = trainer.resume(group, log)
    try:
        link_base_run(base, group, manifest)
        trainer.train(group, start, curve)
    except BaseException:
        if created and _last_checkpoint(group) is None:
            shutil.rmtree(group, ignore_errors=True)
        raise
    settings = trainer.settings
    del trainer
    write_json_atomic(group / FINETUNE_FILE, {"settings": settings, "curve": curve,
                                              "checkpoints": [step_name(s) for s in _checkpoint_steps(group)],
                                              "runs": {"views": list(dict.fromkeys(["prompt", *parse_views(bcfg.views)])),
                                                       "token_atlas": bool(bcfg.token_atlas)}})
    if cfg.build:
        build_checkpoint_runs(base, group, manifest, bcfg, frame, progress=cfg.progress, log=log)
    return group


def _check_finetune(cfg: FinetuneConfig, base: Path, group: Path) -> None:
    """One-line errors for settings that cannot train (before the model is loaded)."""
    if cfg.steps is not None and cfg.steps < 1:
        raise LLMMapsError(f"--steps: must be at least 1, got {cfg.steps}")
    if cfg.epochs is not None and cfg.epochs <= 0:
        raise LLMMapsError(f"--epochs: must be above 0, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise LLMMapsError(f"--batch-size: must be at least 1, got {cfg.batch_size}")
    if cfg.save_every is not None and cfg.save_every < 1:
        raise LLMMapsError(f"--save-every: must be at least 1, got {cfg.save_every}")
    if not 0 <= cfg.warmup < 1:
        raise LLMMapsError(f"--warmup: must be in [0, 1), got {cfg.warmup}")
    if group.resolve() == base.resolve() or base.resolve() in group.resolve().parents:
        raise LLMMapsError(f"--out {group}: must not be the base run or inside it")


class _Trainer:
    """One fine-tuning: the model (LoRA or full), its optimizer and schedule, the train and eval rows
    and the settings a resumed run must share (``settings``); ``train`` runs the steps from a
    checkpoint's step, evaluating and saving a checkpoint every ``save_every`` steps."""

    def __init__(self, loaded: Any, data: TrainRows, train_rows: list[int], eval_rows: list[int],
                 cfg: FinetuneConfig, *, base: Path, manifest: dict[str, Any]):
        self.loaded, self.data, self.cfg, self.manifest = loaded, data, cfg, manifest
        self.train_rows, self.eval_rows = train_rows, eval_rows
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, loaded.device
        # where transformers loads the base weights from (a GGUF file is converted once to a folder)
        self.base_weights = str(loaded.info.get("converted_to") or manifest["model"])
        n_train = len(train_rows)
        self.steps = (cfg.steps if cfg.steps is not None
                      else max(1, math.ceil((cfg.epochs or 1.0) * n_train / cfg.batch_size)))
        self.save_every = cfg.save_every or max(1, self.steps // 4)
        self.batch_tokens = cfg.batch_tokens or (16384 if self.device.startswith("cuda") else 1024)
        self.autocast = self.device.startswith("cuda")
        tok = self.tokenizer
        self.pad_id = int(tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id)
        self.settings = {**asdict(cfg), "lr": cfg.resolved_lr(), "steps": self.steps, "save_every": self.save_every,
                         "batch_tokens": self.batch_tokens, "mode": "full" if cfg.full else "lora",
                         "base_run": str(base.resolve()), "base_model": str(manifest["model"]),
                         "train_rows": n_train, "eval_rows": len(eval_rows),
                         "precision": "bf16 autocast" if self.autocast else "float32"}
        for key in ("run", "out", "progress", "device", "build", "epochs", "views", "token_atlas"):  # not the training's
            self.settings.pop(key, None)

    def prepare(self) -> None:
        """The seeded model to train (LoRA adapters unless ``full``), AdamW and the cosine schedule."""
        import torch
        from transformers import get_cosine_schedule_with_warmup

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if not cfg.full:
            self.model = _lora_model(self.model, cfg)
            target_modules = sorted(self.model.peft_config["default"].target_modules)
        else:
            target_modules = []
        self.settings["target_modules"] = target_modules
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.resolved_lr(), weight_decay=0.0)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, int(round(cfg.warmup * self.steps)),
                                                         self.steps)

    def resume(self, group: Path, log: Callable[[str], Any]) -> tuple[int, dict[str, Any]]:
        """(the step to start from, the loss curve so far): the last checkpoint's state in ``group``
        (same settings required), else step 0."""
        import torch

        last = _last_checkpoint(group)
        if last is None:
            return 0, {"train": [], "eval": []}
        state = torch.load(last[1] / "state.pt", weights_only=False)
        settings = self.settings
        if state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise LLMMapsError(f"--out {group}: holds a finetune with other settings ({', '.join(changed)}); "
                               "give another --out or the same settings to resume")
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value.to(named[name].device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
        log(f"{group}: trained to step {start} already; building the runs not built yet" if start >= self.steps
            else f"resuming {group} from step {start}")
        return start, state["curve"]

    def eval_loss(self) -> float:
        self.model.eval()
        loss = mean_loss(self.model, self.data, self.eval_rows, batch_tokens=self.batch_tokens, pad_id=self.pad_id,
                         device=self.device, autocast=self.autocast)
        self.model.train()
        return loss

    def train(self, group: Path, start: int, curve: dict[str, Any]) -> None:
        """Steps ``start`` .. ``steps`` (``curve`` gains their losses), saving checkpoints into ``group``."""
        from tqdm.auto import tqdm

        if start == 0 and self.eval_rows:
            curve["eval"] = [{"step": 0, "loss": self.eval_loss()}]
        bar = tqdm(total=self.steps, initial=start, disable=not self.cfg.progress, desc="finetune", unit="step")
        tokens_seen, t0 = 0, time.perf_counter()
        for step in range(start, self.steps):
            loss, tokens = self._step(step)
            tokens_seen += tokens
            done = step + 1
            curve["train"].append({"step": done, "loss": loss, "lr": self.scheduler.get_last_lr()[0]})
            rate = tokens_seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:.0f}")
            bar.update(1)
            if done % self.save_every == 0 or done == self.steps:
                if self.eval_rows:
                    curve["eval"].append({"step": done, "loss": self.eval_loss()})
                _save_checkpoint(group, done, self.model, self.tokenizer, self.manifest, self.optimizer,
                                 self.scheduler, curve, self.settings, lora=not self.cfg.full,
                                 base_weights=self.base_weights, revision=self.loaded.info.get("revision"))
        bar.close()

    def _step(self, step: int) -> tuple[float, int]:
        """One optimizer step over the step's rows (in micro-batches); (mean loss per reference
        token, tokens forwarded)."""
        import torch

        cfg, data = self.cfg, self.data
        rows = [self.train_rows[i] for i in step_rows(step, len(self.train_rows), cfg.batch_size, cfg.seed)]
        n_ref = sum(sum(1 for t in data.labels[r][1:] if t != -100) for r in rows)
        self.optimizer.zero_grad(set_to_none=True)
        total, tokens = 0.0, 0
        for mb in micro_batches(rows, data, self.batch_tokens):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                loss, _ = summed_loss(self.model, *batch_tensors(mb, data, self.pad_id, self.device))
            (loss / max(n_ref, 1)).backward()
            total += float(loss.detach())
            tokens += sum(len(data.input_ids[r]) for r in mb)
        self.optimizer.step()
        self.scheduler.step()
        return total / max(n_ref, 1), tokens


def _checkpoint_steps(group: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (group / CHECKPOINTS).glob("step-*")
                  if not p.name.endswith(".partial") and (p / "state.pt").exists())


def _save_checkpoint(group: Path, step: int, model: Any, tokenizer: Any, manifest: dict[str, Any], optimizer: Any,
                     scheduler: Any, curve: dict[str, Any], settings: dict[str, Any], *, lora: bool,
                     base_weights: str, revision: str | None = None) -> None:
    import torch

    final = group / CHECKPOINTS / step_name(step)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_merged(model, base_weights, tokenizer, tmp / "model", lora=lora, revision=revision)
    torch.save({"step": step, "trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                "curve": json.loads(json.dumps(curve)), "settings": settings}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def build_checkpoint_runs(base: Path, group: Path, manifest: dict[str, Any], bcfg: BuildConfig, frame: Any, *,
                          progress: bool = True, log: Callable[[str], Any] = print) -> list[Path]:
    """A run per checkpoint (those not built yet): the base run's examples and settings on the merged
    model, with ``step`` and ``base_run`` in the manifest."""
    keep = frame[[c for c in frame.columns if c not in _RECOMPUTED]].copy()
    out = []
    for step in _checkpoint_steps(group):
        run = group / step_name(step)
        if not (run / MANIFEST).exists():
            log(f"building the run of checkpoint step {step}")
            model_dir = (group / CHECKPOINTS / step_name(step) / "model").resolve()
            build_run(bcfg.replace(model=str(model_dir), out=str(run), progress=progress), frame=keep.copy(),
                      sources_info=manifest.get("sources") or [],
                      extra_manifest={"step": int(step), "base_run": str(base.resolve()),
                                      "split_rule": manifest.get("split_rule")}, log=log)
        score_like_base(run, manifest, base_run=base, progress=progress, log=log)
        out.append(run)
    return out


def score_like_base(run: Path, base_manifest: dict[str, Any], *, base_run: Path | None = None, progress: bool = True,
                    log: Callable[[str], Any] = print) -> None:
    """Score ``run`` and compute its falloff as the base run was (same splits, metrics, thresholds,
    generation settings, bins, layers), where the base run was and ``run`` is not yet: then, as the
    base run's were, the completion view of the test rows redone with their outputs and (from
    ``base_run``'s findings.json) the findings of the same variant."""
    for note in base_manifest.get("notes") or []:  # caveats about the base run hold for its checkpoints
        add_note(run, note)
    history = base_manifest.get("history") or []
    score = next((h["params"] for h in reversed(history) if h.get("stage") == "score"), None)
    fall = next((h["params"] for h in reversed(history) if h.get("stage") == "falloff"), None)
    if score and "scoring" not in read_manifest(run):
        log(f"scoring {run.name} as the base run was")
        thresholds = ",".join(f"{m}={t!r}" for m, t in (score.get("thresholds") or {}).items())
        score_run(run, splits=score["splits"], generate=score["generate"], metric=score["metric"],
                  thresholds=thresholds or None, max_new_tokens=score["max_new_tokens"],
                  temperature=score["temperature"], top_p=score["top_p"], seed=score["seed"],
                  batch_size=score.get("batch_size"), mc_output=score.get("mc_output", "generate"),
                  progress=progress, log=log)
    now = read_manifest(run)
    if score and "completion" in (now.get("views") or []) and _view_redone_after_scoring(history) \
            and not _view_redone_after_scoring(now.get("history")):
        # the base run's test rows were re-encoded with their outputs
        log(f"encoding {run.name}'s completion view with its outputs, as the base run's was")
        encode_view_run(run, view="completion", progress=progress, log=log)
    if score and fall and not (run / FALLOFF_FILE).exists():
        falloff_run(run, n_bins=fall["n_bins"], layers=fall["layers"], metrics=fall["metrics"], split=fall["split"])
    base_findings = Path(base_run) / FINDINGS_FILE if base_run is not None else None
    if score and base_findings is not None and base_findings.is_file() and not (run / FINDINGS_FILE).exists():
        _findings_like(run, json.loads(base_findings.read_text(encoding="utf-8")), progress=progress, log=log)


def _view_redone_after_scoring(history: list[dict[str, Any]] | None) -> bool:
    """A run's history has an ``encode-view`` (the completion view redone) after its ``score``."""
    stages = [h.get("stage") for h in history or []]
    return "score" in stages and "encode-view" in stages[stages.index("score"):]


def _findings_like(run: Path, base: dict[str, Any], *, progress: bool, log: Callable[[str], Any]) -> None:
    """findings.json of ``run`` with the base run's variant (layer, metric, view, raw/centred, contrast,
    replicates, seed, with or without the robustness table)."""
    try:
        contrast = base.get("contrast") or {}
        findings_run(run, layer=base.get("layer"), metric=base.get("metric"), view=base.get("view") or "prompt",
                     centred=bool(base.get("centred")), split=base.get("split") or "test", progress=progress,
                     n_boot=int(base.get("bootstrap") or 2000), seed=int(base.get("seed") or 0),
                     robustness=bool(base.get("robustness")),
                     contrast=[contrast["a"], contrast["b"]] if contrast.get("a") and contrast.get("b") else None)
    except LLMMapsError as exc:  # e.g. a domain with one scored task: the base run's findings said the same
        log(f"findings of {run.name}: not computed: {exc}")
