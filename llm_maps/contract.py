"""The run folder's contract as types: manifest and its sections, example columns, the JSON files
a run holds (falloff.json), stage history, and the records of the state folder (jobs, points); every
file a run or a fine-tuning group may hold (``FILES``, with tokens.parquet, finetune.json and the
working files of resumable and distributed stages) and the JSON of `compare --json`.

docs/run-folder.md is written from this module: each key's type and meaning live here
(``Annotated[type, "meaning"]``), and the tables between the ``<!-- generated: ... -->`` markers
of that document are ``python -m llm_maps.contract --write docs/run-folder.md``'s output;
tests/test_contract.py fails when the document and these types disagree, or when a writer emits
a manifest key, a nested key or a column that is not listed here.

Adding a manifest key, a section key or a column: add it here (with its meaning), run the command
above, and describe anything more in the prose of docs/run-folder.md. Torch-free.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, TypedDict, Union

# Leave the format at 1 while changes are additions a reader may ignore (new keys, new files);
# raise it only when an old reader would misread a new run. What changed, when: docs/run-folder.md.
FORMAT_VERSION = 1
FALLOFF_FORMAT_VERSION = 1
PROJECTION_FORMAT_VERSION = 1

JSONScalar = Union[str, int, float, bool, None]

# ================================================================================ manifest sections


class PromptTemplateInfo(TypedDict, total=False):
    name: Annotated[str, "dolly | chat | redpajama | plain | custom"]
    stop_strings: Annotated[list[str], "generation stops at the first of these"]
    template: Annotated[str, "the user template string (custom only)"]
    chat_template: Annotated[str, "the tokenizer's chat template (chat only), for provenance"]


class ModelInfo(TypedDict, total=False):
    model: Annotated[str, "the --model given"]
    revision: Annotated[str | None, "hub revision or commit hash"]
    file_sha256: Annotated[str | None, "sha256 of the (first) weights file; null above 1 GB"]
    gguf_file: Annotated[str, "GGUF file name (GGUF models)"]
    converted_to: Annotated[str, "cached safetensors folder a GGUF model was converted to"]
    architecture: Annotated[str, "transformers class, e.g. GPTNeoXForCausalLM"]
    num_layers: Annotated[int, "transformer layers (hidden_states has num_layers + 1 entries)"]
    hidden_size: Annotated[int, "width of an encoding"]


class ProjectionInfo(TypedDict, total=False):
    method: Annotated[str, "umap | pca"]
    metric: Annotated[str, "cosine | euclidean (cosine PCA normalises rows first)"]
    fit_on: Annotated[str, "train | all: the rows the map was fitted on"]
    path: Annotated[str, "folder of the saved projection, relative to the run (projection)"]
    seed: Annotated[int, "the map seed (random_state)"]
    layer: Annotated[int | None, "the stored layer the map was fitted on"]
    n_fit: Annotated[int, "rows fitted"]
    n_neighbors: Annotated[int, "UMAP n_neighbors (after clipping to the fit size)"]
    min_dist: Annotated[float, "UMAP min_dist"]
    placement: Annotated[str, "how non-fit rows and new prompts are placed (UMAP)"]
    normalize: Annotated[bool, "rows scaled to unit length before PCA (cosine)"]
    explained_variance_ratio: Annotated[list[float], "PCA: variance share of the two axes"]
    seconds: Annotated[float, "wall time of the fit and placement"]
    fit_set: Annotated[str, "the token map: what it was fitted on ('train prompts + atlas tokens')"]
    n_prompt_rows: Annotated[int, "the token map: rows of its fit set that are prompts (the atlas tokens follow)"]


class SplitCounts(TypedDict):
    train: Annotated[int, "train examples"]
    test: Annotated[int, "test examples"]


class SplitRule(TypedDict, total=False):
    method: Annotated[str, "source | example | category"]
    counts: Annotated[SplitCounts, "examples per split"]
    test_size: Annotated[float, "probability of test per example (example, category)"]
    seed: Annotated[int, "the split seed (example, category)"]
    test_categories: Annotated[list[str], "categories held out entirely (category)"]


class DomainMapInfo(TypedDict, total=False):
    path: Annotated[str | None, "the TOML domain map used"]
    categories: Annotated[dict[str, str], "category -> domain"]
    tasks: Annotated[dict[str, str], "task -> domain"]
    keywords: Annotated[dict[str, str], "keyword -> domain"]
    unknown_categories: Annotated[dict[str, int], "categories with no domain -> examples (domain 'unknown')"]


class SourceInfo(TypedDict, total=False):
    kind: Annotated[str, "jsonl | json | csv | tsv | parquet | datasets | lm-eval-samples"]
    path: Annotated[str, "absolute path of a file source"]
    sha256: Annotated[str, "content hash of a file source"]
    id: Annotated[str, "hub id or folder of a `datasets` source"]
    fingerprint: Annotated[str | None, "the `datasets` fingerprint"]
    rows: Annotated[int, "examples read"]
    columns: Annotated[dict[str, str], "canonical field -> source column used"]
    task: Annotated[str, "lm-eval task (lm-eval samples)"]
    results: Annotated[str, "lm-eval results file (lm-eval samples)"]
    results_sha256: Annotated[str, "its content hash"]
    lm_eval_version: Annotated[str | None, "lm-eval version that wrote it"]
    lmeval_model: Annotated[str | None, "model lm-eval evaluated"]


class Counts(TypedDict):
    examples: Annotated[int, "rows of examples.parquet"]
    train: Annotated[int, "train rows"]
    test: Annotated[int, "test rows"]
    tasks: Annotated[int, "distinct tasks"]
    truncated: Annotated[int, "prompts cut to max_length"]
    by_domain: Annotated[dict[str, int], "domain -> rows"]
    by_split_domain: Annotated[dict[str, int], "'split/domain' -> rows"]
    by_category: Annotated[dict[str, int], "category -> rows"]


class DistributedInfo(TypedDict, total=False):
    chunks: Annotated[int, "chunks the prompts (with views or the atlas: their shared passes) were encoded in"]
    workers: Annotated[list[str], "Celery workers that encoded them"]


class EncodingInfo(TypedDict, total=False):
    seconds: Annotated[float, "wall time of the encoding"]
    tokens: Annotated[int, "tokens in all prompts (after truncation)"]
    tokens_per_second: Annotated[float, "tokens forwarded per second"]
    resumed_rows: Annotated[int, "rows taken from an interrupted build"]
    clipped_to_float16: Annotated[int, "values outside the float16 range, clipped"]
    batch_tokens: Annotated[int | None, "--batch-tokens given (null: the device default)"]
    distributed: Annotated[DistributedInfo, "build --distributed only"]


class _Timed(TypedDict, total=False):
    seconds: Annotated[float, "wall time of the stage (s)"]


class NeighboursInfo(_Timed):
    k: Annotated[int, "nearest train examples kept per row (nn_train_ids)"]
    layer: Annotated[int, "stored layer the distances are measured in"]
    metric: Annotated[str, "cosine | euclidean"]
    exact: Annotated[bool, "exact search (always true)"]


class GenerationInfo(TypedDict, total=False):
    max_new_tokens: Annotated[int | Literal["auto"], "generation limit, or 'auto': per-task budgets (token_budgets)"]
    temperature: Annotated[float, "0 = greedy"]
    top_p: Annotated[float, "nucleus sampling"]
    seed: Annotated[int, "sampling seed"]
    batch_size: Annotated[int, "prompts per generation batch"]
    stop_strings: Annotated[list[str], "from the prompt template"]
    device: Annotated[str, "where it ran"]
    dtype: Annotated[str, "model dtype"]
    seconds: Annotated[float, "wall time"]
    tokens: Annotated[int, "tokens generated"]
    tokens_per_second: Annotated[float, "generation rate"]
    created: Annotated[str, "ISO time (UTC)"]
    token_budgets: Annotated[dict[str, int], "task -> max new tokens (--max-new-tokens auto, pipelines/budgets.py)"]
    reference_tokens: Annotated[dict[str, int], "task -> tokens of its longest reference (auto budgets)"]
    budget_rule: Annotated[str, "how a task's budget follows from its references"]
    budget_params: Annotated[dict[str, Any], "the rule's factor, margin, floor and ceiling"]
    stopped_by_length: Annotated[int, "outputs that reached their token budget"]
    distributed: Annotated[dict[str, Any], "score --distributed: chunks and the workers that ran them"]


class LmevalTaskInfo(TypedDict, total=False):
    metric: Annotated[str, "lm-eval metric used as score"]
    filter: Annotated[str, "lm-eval filter"]
    n: Annotated[int, "documents"]
    mean: Annotated[float, "mean score of the samples"]
    aggregate: Annotated[float, "lm-eval's aggregate (equal to mean)"]
    output_type: Annotated[str | None, "lm-eval output type"]


class _FirstTokenSources(TypedDict, total=False):
    sources: Annotated[dict[str, int], "pass -> rows whose statistics it gave: generation (generate's prefill), "
                                       "choices (the multiple-choice forward), separate (a pass of its own)"]
    separate: Annotated[dict[str, list[str]], "why rows needed the separate pass -> their example_ids"]


class FirstTokenInfo(_FirstTokenSources):
    columns: Annotated[list[str], "the columns written: first_entropy, first_top_prob, first_kl_to_mean"]
    units: Annotated[str, "nats (entropy, KL); probability (top)"]
    mean_over: Annotated[str, "the train prompts the mean next-token distribution is over (all, or a seeded sample)"]
    rows: Annotated[int, "rows computed in this scoring"]
    seconds: Annotated[float, "wall time"]


class ScoringInfo(TypedDict, total=False):
    splits: Annotated[list[str], "splits scored"]
    metric: Annotated[str, "the --metric spec given (or 'primary' for lm-eval)"]
    metric_default: Annotated[str, "metric for rows no override names"]
    metric_overrides: Annotated[dict[str, str], "category/task -> metric"]
    thresholds: Annotated[dict[str, float], "metric -> score threshold for correct"]
    correct_rule: Annotated[str, "how correct follows from score"]
    by_metric: Annotated[dict[str, int], "metric -> rows scored with it"]
    scored: Annotated[int, "rows with a score"]
    unscored_no_reference: Annotated[int, "selected rows without a reference"]
    accuracy: Annotated[float | None, "mean correct over scored rows"]
    mc_output: Annotated[str, "generate | choice (multiple choice output)"]
    generation: Annotated[GenerationInfo | None, "the last generation's settings (null: none)"]
    created: Annotated[str, "ISO time (UTC)"]
    source: Annotated[str, "'lm-eval' when scores came from lm-eval samples"]
    per_task: Annotated[dict[str, LmevalTaskInfo], "lm-eval task -> its metric and means"]
    per_task_means_match_results: Annotated[bool, "the samples' means equal lm-eval's aggregates"]
    choices: Annotated[dict[str, Any] | None, "multiple-choice log-likelihoods: examples and seconds"]
    first_token: Annotated[FirstTokenInfo | None, "the last first-token statistics run (pipelines/first_token.py; "
                                                  "null: none ran, e.g. --generate never)"]


class ConditionDistributedInfo(TypedDict, total=False):
    chunks: Annotated[int, "chunks its generation and multiple-choice passes ran in"]
    workers: Annotated[list[str], "Celery workers that ran them"]


class ConditionInfo(TypedDict, total=False):
    kind: Annotated[str, "direct | cot | neighbours"]
    k: Annotated[int, "neighbours:K: demonstrations per prompt"]
    cue: Annotated[str, "cot: the cue after the prompt"]
    max_new_tokens: Annotated[int | str, "generation budget (cot: --cot-max-new-tokens; direct: as scored)"]
    extraction: Annotated[str, "how the scored answer is taken from the output (EXTRACTION_RULES)"]
    examples: Annotated[int, "examples in conditions.parquet under this condition (earlier runs' rows included)"]
    n_tasks: Annotated[int, "their tasks"]
    accuracy: Annotated[float | None, "fraction correct among them"]
    seconds: Annotated[float, "generation + scoring time of the last run that scored it"]
    tokens: Annotated[int, "tokens generated then"]
    tokens_per_second: Annotated[float, "their rate"]
    created: Annotated[str, "ISO time (UTC) it was last scored"]
    distributed: Annotated[ConditionDistributedInfo, "score --conditions --distributed only (generation and multiple "
                                                     "choice on the workers; the conditioned prompts' encodings and "
                                                     "the token-atlas paths in the scoring process)"]


class ConditionsInfo(TypedDict, total=False):
    file: Annotated[str, "conditions.parquet"]
    conditions: Annotated[dict[str, ConditionInfo], "condition name (direct, cot, neighbours:3) -> settings"]
    limit_per_task: Annotated[int | None, "at most this many test examples per task were scored (null: all)"]
    tasks: Annotated[list[str] | None, "only these tasks were scored (null: every task)"]
    split: Annotated[str, "the split scored (test)"]
    layer: Annotated[int, "layer of dist_to_train and the path distances (the run's default layer)"]
    metric: Annotated[str, "distance metric of those (the run's)"]
    atlas: Annotated[bool, "path distances were measured against the token atlas"]


class HistoryEntry(TypedDict):
    """One stage run on this run folder (see "Stage history" in docs/run-folder.md)."""

    stage: Annotated[str, "encode | project | neighbours | score | falloff (and later stages)"]
    params: Annotated[dict[str, Any], "the stage's parameters, as given and as resolved"]
    inputs: Annotated[dict[str, Any], "what it read: files relative to the run, sources, model"]
    outputs: Annotated[list[str], "what it wrote: files, columns (as 'examples.parquet:col') and manifest keys"]
    versions: Annotated[dict[str, str], "package versions (python, llm-maps, torch, ...)"]
    created: Annotated[str, "ISO time (UTC)"]


# ================================================================================ the manifest


class ManifestRequired(TypedDict):
    """Keys every run has (a reader may rely on them; old runs have exactly these at least)."""

    format_version: Annotated[int, "run format (1); a reader refuses a newer one"]
    model: Annotated[str, "hub id, folder or .gguf path of the model"]
    dtype: Annotated[str, "dtype the encodings were computed in (float32, bfloat16, ...)"]
    device: Annotated[str, "device they were computed on (cpu, cuda, ...)"]
    prompt_template: Annotated[PromptTemplateInfo, "how prompts were rendered"]
    pooling: Annotated[str, "last | eos: the position encoded"]
    add_eos: Annotated[bool, "an EOS token was appended before encoding"]
    max_length: Annotated[int, "prompts keep their last max_length tokens"]
    truncation_side: Annotated[str, "always 'left'"]
    layers: Annotated[list[int], "stored hidden_states indices (encodings/layer_<k>.npy)"]
    default_layer: Annotated[int, "layer of the map and of dist_to_train"]
    projection: Annotated[ProjectionInfo | None, "the current map (null: not projected yet)"]
    distance_metric: Annotated[str, "cosine | euclidean: metric of dist_to_train"]
    split_rule: Annotated[SplitRule, "how train/test was decided"]
    domain_map: Annotated[DomainMapInfo, "the domain map and the categories it did not know"]
    sources: Annotated[list[SourceInfo], "data sources with content hashes"]
    counts: Annotated[Counts, "row counts (rewritten with examples.parquet)"]
    versions: Annotated[dict[str, str], "package versions at build time"]
    created: Annotated[str, "ISO time (UTC) of the build"]


class Manifest(ManifestRequired, total=False):
    """manifest.json. Keys below the required ones were added later; old runs may lack them."""

    model_revision: Annotated[str | None, "hub revision or commit hash"]
    model_file_sha256: Annotated[str | None, "sha256 of the weights file (GGUF: of the .gguf)"]
    model_info: Annotated[ModelInfo, "what loading the model reported"]
    hidden_size: Annotated[int, "width of an encoding"]
    notes: Annotated[list[str], "caveats about the run that every reader shows (runfolder.add_note; e.g. the "
                                "demo's)"]
    max_positions: Annotated[int | None, "the model's context in tokens (null: unknown); the API refuses a "
                                         "max_new_tokens that does not fit it"]
    split_seed: Annotated[int, "seed of the train/test split"]
    map_seed: Annotated[int, "seed of the current map"]
    encoding: Annotated[EncodingInfo, "how the encoding went"]
    neighbours: Annotated[NeighboursInfo, "the current dist_to_train / nn_train_ids"]
    scoring: Annotated[ScoringInfo, "the current score / correct columns"]
    prompt_note: Annotated[str, "a note on how prompts were made (lm-eval imports)"]
    updated: Annotated[str, "ISO time (UTC) of the last stage run on the finished run"]
    history: Annotated[list[HistoryEntry], "every stage run on this run, oldest first, kept across re-runs"]
    n_params: Annotated[int, "model parameters (tied weights once), counted at build time; the scaling axis of compare"]
    step: Annotated[int, "fine-tuning step of a checkpoint run (0 = the base model); the trajectory axis of compare"]
    base_run: Annotated[str, "the run a checkpoint run was fine-tuned from"]
    views: Annotated[list[str], "encoded views: prompt, completion (encodings/<view>/, pipelines/atlas.py)"]
    view_settings: Annotated[dict[str, ViewSettingsInfo], "per view other than prompt (completion): its model, "
                                                         "layers, map and distances"]
    token_atlas: Annotated[TokenAtlasInfo, "the token atlas (tokens.parquet, encodings/tokens/) and its map"]
    conditions: Annotated[ConditionsInfo, "conditions.parquet: the conditions scored (llm_maps/conditions.py)"]
    # New manifest keys go here (NotRequired), with their meaning; then regenerate the doc tables.


MANIFEST_SECTIONS: dict[str, Any] = {}  # filled below: section TypedDicts documented in the doc


# ================================================================================ examples.parquet


@dataclass(frozen=True)
class Column:
    dtype: str
    meaning: str
    required: bool = False  # every run has it (readers may rely on it)
    stage: str = "build"  # the stage that writes it


COLUMNS: dict[str, Column] = {
    "example_id": Column("string", "unique id (the source's id, or <source>-<n>; <source>:<id> when several "
                                   "sources are combined)", True),
    "split": Column("string", "train | test", True),
    "task": Column("string", "the task (falls back to the category)", True),
    "category": Column("string", "the source's category (falls back to the task, else 'uncategorized')", True),
    "domain": Column("string", "the domain the domain map gives (or 'unknown')", True),
    "prompt": Column("string", "the exact text given to the tokenizer", True),
    "reference": Column("string?", "the reference answer (null: none)", True),
    "output": Column("string?", "the model's output (null before scoring)", True, "score"),
    "score": Column("float?", "score in [0, 1] (null: unscored)", True, "score"),
    "correct": Column("bool?", "score >= threshold of its metric (null: unscored)", True, "score"),
    "x": Column("float", "map position (NaN before `project`)", True, "project"),
    "y": Column("float", "map position (NaN before `project`)", True, "project"),
    "dist_to_train": Column("float", "distance, at the default layer in the full space, to the nearest train "
                                     "example (for a train example: the nearest other one)", True, "neighbours"),
    "nn_train_ids": Column("list[string]", "example_ids of the k nearest train examples, nearest first", True,
                           "neighbours"),
    "nn_train_dists": Column("list[float]", "their distances", False, "neighbours"),
    "instruction": Column("string", "the instruction the prompt was made from"),
    "context": Column("string", "the context ('' when none)"),
    "n_tokens": Column("int", "tokens encoded (after truncation, with EOS when added)"),
    "truncated": Column("bool", "the prompt was cut to its last max_length tokens"),
    "source_row": Column("int", "line or row of the example in its source"),
    "choices": Column("list[string]?", "answer options of a multiple-choice example"),
    "keywords": Column("list[string]? | string?", "keywords the domain map may use"),
    "metric": Column("string?", "metric the score was computed with", False, "score"),
    "output_token_ids": Column("list[int]?", "token ids of the generated output", False, "score"),
    "output_logprobs": Column("list[float]?", "their log-probabilities", False, "score"),
    "stop_reason": Column("string?", "why generation stopped (eos, stop_string, length)", False, "score"),
    "choice_logprobs": Column("list[float]?", "log-likelihood of each choice (multiple choice)", False, "score"),
    "doc_id": Column("int", "lm-eval document id", False, "import-lmeval"),
    "doc_hash": Column("string?", "lm-eval's hash of the document (for joining back)", False, "import-lmeval"),
    "prompt_hash": Column("string?", "lm-eval's hash of the prompt", False, "import-lmeval"),
    "target_hash": Column("string?", "lm-eval's hash of the target", False, "import-lmeval"),
    "lmeval_metric": Column("string", "lm-eval metric used as score", False, "import-lmeval"),
    "lmeval_filter": Column("string", "lm-eval filter of the response", False, "import-lmeval"),
    "output_type": Column("string", "lm-eval output type (multiple_choice, loglikelihood, generate_until)",
                          False, "import-lmeval"),
    "target_logprob": Column("float?", "log-likelihood of the target (loglikelihood tasks)", False, "import-lmeval"),
    "target_is_greedy": Column("bool?", "the target is the greedy continuation (loglikelihood tasks)", False,
                               "import-lmeval"),
    "completion_source": Column("string", "what the completion view encoded: reference | output", False,
                                "encode --view completion"),
    "n_tokens_completion": Column("int", "tokens of the completion view (prompt + completion + EOS, after "
                                  "truncation)", False, "encode --view completion"),
    "truncated_completion": Column("bool", "the completion view was cut to its last max_length tokens", False,
                                   "encode --view completion"),
    "x_completion": Column("float", "x on the completion view's map", False, "encode --view completion"),
    "y_completion": Column("float", "y on the completion view's map", False, "encode --view completion"),
    "dist_to_train_completion": Column("float", "dist_to_train in the completion view", False,
                                       "encode --view completion"),
    "nn_train_ids_completion": Column("list[string]", "nn_train_ids in the completion view", False,
                                      "encode --view completion"),
    "nn_train_dists_completion": Column("list[float]", "their distances", False, "encode --view completion"),
    "x_tokens": Column("float", "x of the prompt on the token map (train prompts + atlas tokens)", False, "atlas"),
    "y_tokens": Column("float", "y of the prompt on the token map", False, "atlas"),
    "first_entropy": Column("float", "entropy (nats) of the next-token distribution at the end of the prompt "
                                     "(NaN: not computed; rows of the scored splits only)", False, "score"),
    "first_top_prob": Column("float", "probability of the most likely first token (NaN: not computed)", False,
                             "score"),
    "first_kl_to_mean": Column("float", "KL divergence (nats) of that distribution from the mean over train "
                                        "prompts (NaN: not computed, or no train prompts)", False, "score"),
    # New columns go here, with their meaning and writing stage; then regenerate the doc tables.
}
# Other columns of a source are kept as they are (values that Arrow cannot store as one type become
# JSON strings); the contract test allows those only when the source had them.

REQUIRED_COLUMNS: tuple[str, ...] = tuple(name for name, c in COLUMNS.items() if c.required)

# ================================================================================ conditions.parquet

CONDITION_COLUMNS: dict[str, Column] = {
    "example_id": Column("string", "the example (examples.parquet's example_id)", True, "score --conditions"),
    "condition": Column("string", "direct | cot | neighbours:K", True, "score --conditions"),
    "prompt": Column("string", "the exact text given to the tokenizer under this condition", True,
                     "score --conditions"),
    "output": Column("string?", "the model's output (multiple choice under direct --mc-output choice: the "
                                "chosen option)", True, "score --conditions"),
    "answer": Column("string?", "what was scored: the output (direct, neighbours) or the answer extracted from "
                                "the reasoning (cot)", True, "score --conditions"),
    "extraction": Column("string", "rule that gave the answer: output, answer_is, last_line, last_number, "
                                   "choice_after_reasoning, empty", True, "score --conditions"),
    "metric": Column("string?", "metric the score was computed with (the example's, as `score` chose it)", True,
                     "score --conditions"),
    "score": Column("float?", "score in [0, 1] (null: no reference)", True, "score --conditions"),
    "correct": Column("bool?", "score >= the run's threshold of its metric (null: unscored)", True,
                      "score --conditions"),
    "n_tokens": Column("int?", "tokens generated (null: none, e.g. multiple choice scored by log-likelihood)", True,
                       "score --conditions"),
    "mean_logprob": Column("float?", "mean log-probability of the generated tokens", True, "score --conditions"),
    "stop_reason": Column("string?", "why generation stopped (eos, stop_string, length)", False,
                          "score --conditions"),
    "choice_logprobs": Column("list[float]?", "log-likelihood of each choice (multiple choice; cot: after the "
                                              "reasoning)", False, "score --conditions"),
    "dist_to_train": Column("float", "distance of this condition's prompt (its last-token state at the default "
                                     "layer, as build encodes prompts) to the nearest train example, in the run's "
                                     "metric", True, "score --conditions"),
    "path_dists": Column("list[float]?", "with a token atlas: each generated token's state's distance to the "
                                         "nearest atlas state (null without an atlas)", False, "score --conditions"),
    "path_mean_dist": Column("float?", "mean of path_dists (null without an atlas or output)", True,
                             "score --conditions"),
    "path_max_dist": Column("float?", "the largest of path_dists: the step farthest from any training "
                                      "response", True, "score --conditions"),
    "path_x": Column("list[float]?", "each generated token on the token map (null without an atlas)", False,
                     "score --conditions"),
    "path_y": Column("list[float]?", "y on the token map", False, "score --conditions"),
}
# ================================================================================ regions.parquet

REGION_COLUMNS: dict[str, Column] = {
    "example_id": Column("string", "the example (examples.parquet's example_id)", True, "regions"),
    "region": Column("int", "its region in regions.json (-1: in none)", True, "regions"),
}
MANIFEST_KEYS: tuple[str, ...] = tuple(ManifestRequired.__annotations__)

# ================================================================================ falloff.json


class OverTasks(TypedDict, total=False):
    task_low: Annotated[float | None, "task-clustered bootstrap 95% interval of accuracy, lower (tasks resampled; "
                                      "never narrower than Wilson's; null: fewer than 5 tasks); written when the "
                                      "rows' tasks are known"]
    task_high: Annotated[float | None, "upper"]
    n_tasks: Annotated[int, "tasks among the examples"]


class FalloffBin(OverTasks):
    bin: Annotated[int, "bin index, nearest first"]
    lo: Annotated[float, "lower distance edge"]
    hi: Annotated[float, "upper distance edge"]
    median: Annotated[float | None, "median distance in the bin"]
    n: Annotated[int, "examples"]
    correct: Annotated[int, "correct examples"]
    accuracy: Annotated[float | None, "correct / n"]
    low: Annotated[float | None, "Wilson 95% interval, lower"]
    high: Annotated[float | None, "Wilson 95% interval, upper"]


class FalloffTrend(TypedDict, total=False):
    n: Annotated[int, "examples fitted"]
    intercept: Annotated[float | None, "logistic intercept"]
    slope: Annotated[float | None, "logistic slope of correct on distance, per unit distance"]
    slope_low: Annotated[float | None, "95% Wald interval, lower"]
    slope_high: Annotated[float | None, "95% Wald interval, upper"]
    slope_se: Annotated[float, "standard error of the slope"]
    se_type: Annotated[str, "task-clustered (sandwich) | model-based (examples independent)"]
    clusters: Annotated[int, "tasks the standard error is clustered on (fewer than 5: no claim)"]
    note: Annotated[str, "why no slope (or no interval) was fitted"]


class FalloffGroup(OverTasks):
    n: Annotated[int, "examples (with a distance and a correct value)"]
    correct: Annotated[int, "correct examples"]
    accuracy: Annotated[float | None, "correct / n"]
    low: Annotated[float | None, "Wilson 95% interval, lower"]
    high: Annotated[float | None, "Wilson 95% interval, upper"]
    bins: Annotated[list[FalloffBin], "equal-count distance bins"]
    trend: Annotated[FalloffTrend, "logistic regression of correct on distance"]


class FalloffVariant(TypedDict):
    layer: Annotated[int, "stored layer the distances are measured in"]
    metric: Annotated[str, "cosine | euclidean"]
    default: Annotated[bool, "the run's default layer and metric (distances = dist_to_train)"]
    stats: Annotated[dict[str, FalloffGroup], "'all' and each domain -> its falloff"]


class FalloffFile(_Timed):
    format_version: Annotated[int, "falloff.json format (1)"]
    split: Annotated[str, "rows the statistics are over (test)"]
    n_bins: Annotated[int, "equal-count bins asked for"]
    binning: Annotated[str, "'equal-count'"]
    correct_threshold: Annotated[dict[str, float] | None, "the scoring thresholds in force"]
    default_layer: Annotated[int, "the run's default layer"]
    default_metric: Annotated[str, "the run's distance metric"]
    variants: Annotated[list[FalloffVariant], "one per stored layer and metric"]


# ================================================================================ JSON outputs of research
# instruments (findings.json, compare, conditions, ...): one TypedDict per file in this section, and
# a row in JSON_FILES below, so the doc and the contract test pick them up.

class ProjectionFile(TypedDict):
    format_version: Annotated[int, "projection.json format (1)"]
    method: Annotated[str, "umap | pca"]
    metric: Annotated[str, "cosine | euclidean"]
    params: Annotated[dict[str, Any], "the fit's parameters (as manifest.projection has them)"]


class ProbeRow(TypedDict, total=False):
    layer: Annotated[int, "stored layer probed"]
    target: Annotated[str, "domain | task | correct"]
    accuracy: Annotated[float, "cross-validated accuracy, pooled over the folds"]
    baseline: Annotated[float, "chance: the class prior, the largest class share (format 1: each training fold's "
                               "majority class, pooled)"]
    low: Annotated[float | None, "95 % interval of accuracy, task-clustered bootstrap (format 1: Wilson over examples)"]
    high: Annotated[float | None, "upper"]
    baseline_low: Annotated[float | None, "95 % interval of the chance level (same replicates: the share of the "
                                          "data's largest class in each; fixed for the task target, whose "
                                          "examples are resampled within their task)"]
    baseline_high: Annotated[float | None, "upper"]
    minus_baseline: Annotated[float, "accuracy - chance (format 2)"]
    minus_baseline_low: Annotated[float | None, "its 95 % task-clustered bootstrap interval, lower"]
    minus_baseline_high: Annotated[float | None, "upper"]
    above_chance: Annotated[bool, "the interval of accuracy - chance lies above 0"]
    n: Annotated[int, "examples probed"]
    n_tasks: Annotated[int, "tasks among them"]
    n_classes: Annotated[int, "classes of the target"]
    cv: Annotated[str, "StratifiedGroupKFold(k) or GroupKFold(k) by task (domain, correct) | StratifiedKFold(k) "
                       "(task)"]
    features: Annotated[str, "what the probe saw (standardised; PCA inside each fold when wider than --max-dim)"]
    converged: Annotated[bool, "every fold's lbfgs fit converged"]


class ProbesFileOptional(TypedDict, total=False):
    settings: Annotated[dict[str, Any], "layers, targets, folds, max_dim, C, seed, bootstrap (format 2)"]


class ProbesFile(ProbesFileOptional):
    format_version: Annotated[int, "probes.json format (2: chance = class prior, task-clustered intervals)"]
    run: Annotated[str, "the run's folder name"]
    model: Annotated[str | None, "the run's model"]
    probe: Annotated[str, "how the probes were fitted and scored, in words"]
    layers: Annotated[list[ProbeRow], "one row per stored layer and target"]
    skipped: Annotated[list[dict[str, str]], "targets not probed, with the reason"]
    fingerprint: Annotated[str, "the build of the run it belongs to (llm_maps.comparison.run_fingerprint)"]


class CkaPair(TypedDict):
    other: Annotated[str, "fingerprint of the other run (this run's own for pairs within it)"]
    other_name: Annotated[str, "the other run's name when computed"]
    layer_a: Annotated[int, "layer of this run"]
    layer_b: Annotated[int, "layer of the other run"]
    cka: Annotated[float | None, "linear CKA over all shared examples (null: a layer that does not vary)"]


class CkaFile(TypedDict):
    format_version: Annotated[int, "cka.json format (1)"]
    self: Annotated[str, "this run's fingerprint"]
    measure: Annotated[str, "'linear CKA'"]
    pairs: Annotated[list[CkaPair], "cached by `llm-maps compare`; read by the Compare page"]


# ================================================================================ findings.json
# (llm_maps/findings.py: `llm-maps findings`; slopes are per unit distance percentile, intervals
# task-clustered bootstrap 95 %)


class FindingsPart(TypedDict):
    slope_a: Annotated[float | None, "slope of domain a (pooled: logistic on the distance percentile; within: "
                                     "conditional logit, task fixed effects; between: logistic on the task's mean "
                                     "distance percentile)"]
    slope_b: Annotated[float | None, "slope of domain b"]
    slope_diff: Annotated[float | None, "slope_a - slope_b (negative: a falls off more steeply)"]
    low: Annotated[float | None, "task-clustered bootstrap 95% interval of slope_diff, lower (small-cluster "
                                 "corrected from format 2)"]
    high: Annotated[float | None, "upper"]
    p_value: Annotated[float | None, "two-sided, domain labels permuted across tasks (null: not computed)"]
    se: Annotated[float | None, "standard error the interval implies ((high - low) / 3.92)"]
    mdd: Annotated[float | None, "minimum detectable difference (80% power, 5% level)"]
    bootstrap_failed: Annotated[int, "replicates whose fit failed (one class or separation), left out"]
    permutations: Annotated[int, "permutations that fitted (0: no p-value)"]


class FindingsContrastParts(TypedDict, total=False):
    within: Annotated[FindingsPart, "the within-task contrast (format 2)"]
    between: Annotated[FindingsPart, "the between-task contrast (format 2)"]


class FindingsContrast(FindingsPart, FindingsContrastParts):
    """The pooled contrast (its FindingsPart keys), the domains and sizes, and the other parts."""

    a: Annotated[str, "first domain of the contrast (--contrast A,B): the hypothesis is that a falls off more "
                      "steeply than b"]
    b: Annotated[str, "second domain"]
    n_tasks_a: Annotated[int, "tasks in domain a"]
    n_tasks_b: Annotated[int, "tasks in domain b"]
    n_a: Annotated[int, "scored examples in domain a"]
    n_b: Annotated[int, "scored examples in domain b"]


class FindingsQuartileRequired(TypedDict):
    n: Annotated[int, "examples in the domain's nearest (near) or farthest (far) quarter"]
    correct: Annotated[int, "correct examples"]
    accuracy: Annotated[float | None, "correct / n"]
    low: Annotated[float | None, "Wilson 95% interval, lower"]
    high: Annotated[float | None, "Wilson 95% interval, upper"]


class FindingsQuartile(FindingsQuartileRequired, total=False):
    percentile_max: Annotated[float, "near: the quarter's largest distance percentile"]
    percentile_min: Annotated[float, "far: the quarter's smallest distance percentile"]
    task_low: Annotated[float | None, "task-clustered bootstrap 95% interval of accuracy, lower (never narrower "
                                      "than Wilson's; null: fewer than 5 tasks)"]
    task_high: Annotated[float | None, "upper"]
    n_tasks: Annotated[int, "tasks among the quarter's examples"]


class FindingsBin(TypedDict):
    lo: Annotated[float, "lower edge (distance percentile)"]
    hi: Annotated[float, "upper edge"]
    x: Annotated[float, "mean percentile of its examples"]
    n: Annotated[int, "examples"]
    correct: Annotated[int, "correct examples"]
    accuracy: Annotated[float, "correct / n"]
    low: Annotated[float, "Wilson 95% interval, lower"]
    high: Annotated[float, "Wilson 95% interval, upper"]


class FindingsCurve(TypedDict):
    x: Annotated[list[float], "distance percentiles 0, 0.05, ..., 1"]
    p: Annotated[list[float], "fitted probability of a correct answer there"]
    low: Annotated[list[float] | None, "pointwise bootstrap 95% band, lower (null: too few replicates)"]
    high: Annotated[list[float] | None, "upper"]


class RiskCoveragePoint(TypedDict):
    coverage: Annotated[float, "fraction of examples answered, nearest first"]
    n: Annotated[int, "examples answered"]
    accuracy: Annotated[float, "their accuracy"]


class ConfidenceBin(TypedDict):
    x: Annotated[float, "mean distance percentile of the bin"]
    n: Annotated[int, "examples"]
    mean: Annotated[float, "mean of the statistic"]


class FindingsConfidence(TypedDict):
    n: Annotated[int, "examples with the statistic"]
    mean: Annotated[float, "its mean"]
    slope: Annotated[float | None, "least-squares slope of the statistic on distance percentile"]
    low: Annotated[float | None, "task-clustered bootstrap 95% interval, lower"]
    high: Annotated[float | None, "upper"]
    bins: Annotated[list[ConfidenceBin], "means in equal-width percentile bins"]


class FindingsDomainTaskInterval(TypedDict, total=False):
    accuracy_task_low: Annotated[float | None, "task-clustered bootstrap 95% interval of accuracy, lower (never "
                                               "narrower than Wilson's; null: fewer than 5 tasks)"]
    accuracy_task_high: Annotated[float | None, "upper"]


class FindingsDomain(FindingsDomainTaskInterval):
    n: Annotated[int, "scored test examples in the domain"]
    n_tasks: Annotated[int, "their tasks"]
    correct: Annotated[int, "correct examples"]
    accuracy: Annotated[float, "correct / n"]
    accuracy_low: Annotated[float, "Wilson 95% interval, lower"]
    accuracy_high: Annotated[float, "Wilson 95% interval, upper"]
    slope: Annotated[float | None, "logistic slope of correct on distance percentile"]
    slope_low: Annotated[float | None, "task-clustered bootstrap 95% interval, lower"]
    slope_high: Annotated[float | None, "upper"]
    intercept: Annotated[float | None, "logistic intercept"]
    slope_raw: Annotated[float | None, "the slope per unit raw distance"]
    auroc: Annotated[float | None, "AUROC of distance for an error (0.5: no signal)"]
    auroc_low: Annotated[float | None, "task-clustered bootstrap 95% interval, lower"]
    auroc_high: Annotated[float | None, "upper"]
    slope_within_task: Annotated[float | None, "conditional-logit (task fixed effects) slope"]
    slope_within_task_low: Annotated[float | None, "task-clustered bootstrap 95% interval, lower"]
    slope_within_task_high: Annotated[float | None, "upper"]
    n_tasks_within: Annotated[int, "tasks with both right and wrong answers (they carry the within-task slope)"]
    near: Annotated[FindingsQuartile, "accuracy in the nearest quarter"]
    far: Annotated[FindingsQuartile, "accuracy in the farthest quarter"]
    bins: Annotated[list[FindingsBin], "accuracy in equal-width percentile bins"]
    curve: Annotated[FindingsCurve | None, "the fitted logistic curve (null: no slope)"]
    risk_coverage: Annotated[list[RiskCoveragePoint], "accuracy answering only the nearest fraction"]
    confidence: Annotated[dict[str, FindingsConfidence], "first-token column -> its relation to distance "
                                                        "(empty when the run has none)"]
    bootstrap_failed: Annotated[int | None, "replicates whose fit failed (null: no replicates)"]


class DistanceRaw(TypedDict):
    n: Annotated[int, "test examples with a distance"]
    min: Annotated[float, "smallest raw distance"]
    max: Annotated[float, "largest"]
    quartiles: Annotated[list[float], "25th, 50th, 75th percentiles of the raw distances"]


class _RobustnessOld(TypedDict):
    layer: Annotated[int, "stored layer"]
    metric: Annotated[str, "cosine | euclidean"]
    view: Annotated[str, "prompt | completion ..."]
    centred: Annotated[bool, "encodings centred on the train mean (cosine only)"]
    slope_a: Annotated[float | None, "slope of domain a"]
    slope_b: Annotated[float | None, "slope of domain b"]
    slope_diff: Annotated[float | None, "slope_a - slope_b"]
    low: Annotated[float | None, "task-clustered bootstrap 95% interval, lower"]
    high: Annotated[float | None, "upper"]


class RobustnessRow(_RobustnessOld, total=False):
    excludes_0: Annotated[bool, "the interval excludes 0 (format 2; format 1 called it 'supported')"]
    p_value: Annotated[float | None, "permutation p-value of this variant"]
    p_holm: Annotated[float | None, "p_value Holm-adjusted across the table"]
    supported_adjusted: Annotated[bool, "the directional verdict on the Holm-adjusted p is 'supported'"]


class _FindingsOptional(TypedDict, total=False):
    verdict_detail: Annotated[dict[str, str], "pooled, within, between -> supported | not supported | reversed "
                                              "(format 2)"]
    condition: Annotated[str, "the condition of conditions.parquet whose correctness was analysed (`findings "
                              "--condition`; absent: examples.parquet's, i.e. direct)"]


class FindingsFile(_FindingsOptional):
    format_version: Annotated[int, "findings.json format (2: within/between contrasts, verdict_detail, "
                                   "robustness p-values)"]
    split: Annotated[str, "rows analysed (test)"]
    layer: Annotated[int, "stored layer of the distances"]
    metric: Annotated[str, "cosine | euclidean"]
    view: Annotated[str, "prompt or another encoded view"]
    centred: Annotated[bool, "distances on train-mean-centred encodings"]
    model: Annotated[str | None, "the run's model"]
    n_test: Annotated[int, "scored examples with a distance"]
    n_tasks: Annotated[int, "their tasks (the unit of independence)"]
    contrast: Annotated[FindingsContrast, "slope difference a - b"]
    verdict: Annotated[str, "plain verdict from the contrast's numbers (may say 'not supported')"]
    unit: Annotated[str, "what a slope means"]
    interval: Annotated[str, "how the intervals and p-value were computed"]
    bootstrap: Annotated[int, "bootstrap replicates (and permutations)"]
    seed: Annotated[int, "resampling seed"]
    distance_raw: Annotated[DistanceRaw, "the raw distances behind the percentile scale"]
    domains: Annotated[dict[str, FindingsDomain], "domain -> its statistics"]
    risk_coverage: Annotated[list[RiskCoveragePoint], "over all domains"]
    notes: Annotated[list[str], "caveats to read with the numbers"]
    robustness: Annotated[list[RobustnessRow], "the contrast for every stored layer x metric x view x "
                                               "raw/centred ([] with --no-robustness)"]


# ================================================================================ regions.json
# (llm_maps/regions.py: `llm-maps regions`; tasks are the unit of independence)


class RegionShare(TypedDict):
    name: Annotated[str, "a task or domain"]
    n: Annotated[int, "the region's examples in it (train and test)"]
    share: Annotated[float, "n / the region's examples"]


class RegionRowOutside(TypedDict, total=False):
    n_outside: Annotated[int, "scored test examples outside it that expected_accuracy rests on (the compared tasks'); "
                              "written by newer versions"]


class RegionRow(RegionRowOutside):
    region: Annotated[int, "region id (regions.parquet's region; 0 = the largest)"]
    label: Annotated[str, "R<id> and its first keywords"]
    n: Annotated[int, "examples (train and test)"]
    n_train: Annotated[int, "train examples"]
    n_test: Annotated[int, "test examples"]
    n_scored: Annotated[int, "scored test examples"]
    coverage: Annotated[float, "n_train / n: the share of train examples"]
    uncovered: Annotated[bool, "coverage below params.uncovered_below (listed apart)"]
    n_tasks: Annotated[int, "tasks among its examples"]
    tasks: Annotated[list[RegionShare], "its tasks, most examples first (at most 10)"]
    domains: Annotated[list[RegionShare], "its domains, most examples first"]
    accuracy: Annotated[float | None, "accuracy of its scored test examples (null: none)"]
    accuracy_low: Annotated[float | None, "task-clustered bootstrap 95% interval, lower (never narrower than "
                                          "Wilson's; null: fewer than 5 tasks)"]
    accuracy_high: Annotated[float | None, "upper"]
    n_tasks_scored: Annotated[int, "tasks of its scored test examples"]
    expected_accuracy: Annotated[float | None, "each scored test example's task accuracy outside the region, averaged "
                                               "(null: no task has params.min_outside scored test examples outside)"]
    n_expected: Annotated[int, "scored test examples with an expected accuracy (their task has params.min_outside "
                               "or more outside)"]
    n_tasks_compared: Annotated[int, "tasks with scored test examples inside and params.min_outside or more outside"]
    difference: Annotated[float | None, "accuracy - expected on those examples (negative: worse than its tasks "
                                        "predict)"]
    difference_low: Annotated[float | None, "task-clustered bootstrap 95% interval, lower (null: fewer than 5 "
                                            "tasks compared)"]
    difference_high: Annotated[float | None, "upper"]
    p_value: Annotated[float | None, "one-sided: the compared tasks' differences sign-flipped (null: none compared)"]
    q_value: Annotated[float | None, "Benjamini-Hochberg across the regions with a p-value"]
    worse: Annotated[bool, "worse than its tasks predict: q < alpha, the interval below 0, at least min_tasks tasks "
                           "compared"]
    mean_dist_to_train: Annotated[float | None, "mean distance to train of its test examples (the run's metric, this "
                                                "layer and view)"]
    keywords: Annotated[list[str], "words that tell it apart (class-based TF-IDF over the instructions)"]
    central_example: Annotated[str, "example_id of the member nearest its centre (in the PCA space)"]
    central_text: Annotated[str, "that example's instruction (shortened)"]


class _RegionsParamsRequired(TypedDict):
    method: Annotated[str, "'HDBSCAN' (sklearn.cluster.HDBSCAN)"]
    min_size: Annotated[int, "min_cluster_size (--min-size; default 1 % of the examples, 10 to 200)"]
    min_samples: Annotated[int, "HDBSCAN min_samples (on all rows; scaled like min_size on a sample)"]
    pca_dims: Annotated[int, "PCA dimensions clustered in"]
    pca_fit_rows: Annotated[int, "rows the PCA was fitted on (a seeded sample above 20,000)"]
    cluster_rows: Annotated[int, "rows HDBSCAN clustered (a seeded sample above 30,000; the others take the region "
                                 "of their nearest sampled row)"]
    min_cluster_size: Annotated[int, "HDBSCAN's min_cluster_size on those rows (min_size scaled by their share)"]
    seed: Annotated[int, "seed of the PCA, its sample, the bootstrap and the sign flips"]
    centre: Annotated[str, "'train mean': encodings centred on the train mean before the PCA"]
    normalize: Annotated[bool, "rows scaled to unit length after centring (cosine runs)"]
    uncovered_below: Annotated[float, "a region with a smaller train share is uncovered"]
    keywords: Annotated[int, "keywords kept per region"]
    bootstrap: Annotated[int, "task bootstrap replicates"]
    max_flips: Annotated[int, "sign patterns of the p-value (all of them up to log2 of this many tasks)"]
    alpha: Annotated[float, "q-value threshold of a flag"]
    min_tasks: Annotated[int, "tasks compared a flag needs"]


class RegionsParams(_RegionsParamsRequired, total=False):
    min_outside: Annotated[int, "scored test examples a task needs outside a region to be compared (written by "
                                "newer versions; older files compared a task with any)"]


class RegionsFile(TypedDict):
    format_version: Annotated[int, "regions.json format (1)"]
    view: Annotated[str, "encoding view clustered (prompt or another)"]
    layer: Annotated[int, "stored layer clustered"]
    metric: Annotated[str, "the run's distance metric (cosine: unit rows; mean_dist_to_train)"]
    model: Annotated[str | None, "the run's model"]
    params: Annotated[RegionsParams, "the clustering's and the statistics' parameters"]
    explained_variance: Annotated[float, "variance share of the PCA dimensions"]
    n_examples: Annotated[int, "examples clustered (train and test)"]
    n_train: Annotated[int, "train examples"]
    n_test: Annotated[int, "test examples"]
    n_scored: Annotated[int, "scored test examples"]
    n_regions: Annotated[int, "regions found"]
    n_in_regions: Annotated[int, "examples in a region"]
    n_noise: Annotated[int, "examples in none (region -1)"]
    accuracy: Annotated[float | None, "accuracy of all scored test examples"]
    mean_dist_to_train: Annotated[float | None, "mean distance to train of all test examples"]
    regions: Annotated[list[RegionRow], "one per region, by id"]
    worse: Annotated[list[int], "regions worse than their tasks predict"]
    uncovered: Annotated[list[int], "regions with too few train examples"]
    interval: Annotated[str, "how the intervals, p- and q-values were computed"]
    expected: Annotated[str, "how the expected accuracy and the difference were computed"]
    notes: Annotated[list[str], "caveats to read with the numbers"]
    seconds: Annotated[float, "wall time (s)"]


JSON_FILES: dict[str, Any] = {
    "falloff.json": FalloffFile,
    "projection/projection.json": ProjectionFile,
    "probes.json": ProbesFile,
    "cka.json": CkaFile,
    "findings.json": FindingsFile,
    "regions.json": RegionsFile,
}

# ================================================================================ tokens.parquet
# (the token atlas's rows: pipelines/views.py plans them, pipelines/atlas.py writes them)

TOKEN_COLUMNS: dict[str, Column] = {
    "row": Column("int", "row of encodings/tokens/layer_<k>.npy that holds this token's state", True, "atlas"),
    "example_id": Column("string", "the train example whose reference the token is from", True, "atlas"),
    "position": Column("int", "the token's position in that reference (0 = the first response token)", True,
                       "atlas"),
    "token_id": Column("int", "the token id", True, "atlas"),
    "token_text": Column("string", "the token decoded on its own", True, "atlas"),
    "x": Column("float", "x on the token map (absent when the run has no map)", False, "atlas"),
    "y": Column("float", "y on the token map", False, "atlas"),
}


class TokenAtlasInfo(TypedDict, total=False):
    """manifest.token_atlas: the token atlas (build --token-atlas, `llm-maps atlas`)."""

    tokens: Annotated[int, "rows of tokens.parquet and of encodings/tokens/layer_<k>.npy"]
    examples: Annotated[int, "train examples whose reference tokens are in the atlas"]
    train_examples: Annotated[int, "train examples of the run"]
    sampled: Annotated[bool, "the examples are a seeded sample (their tokens exceeded max_tokens)"]
    max_tokens: Annotated[int, "--atlas-max-tokens"]
    seed: Annotated[int, "seed of the sample"]
    layers: Annotated[list[int], "stored atlas layers (the map layer and --atlas-layers)"]
    map_layer: Annotated[int, "layer of the token map and of path distances (the run's default layer)"]
    path: Annotated[str, "folder of the atlas layers, relative to the run (encodings/tokens)"]
    file: Annotated[str, "tokens.parquet"]
    tokens_per_second: Annotated[float, "tokens forwarded per second"]
    seconds: Annotated[float, "wall time of the shared passes"]
    projection: Annotated[ProjectionInfo | None, "the token map (projection_tokens/; null: no map)"]
    distributed: Annotated[DistributedInfo, "--distributed only"]


class ViewSettingsInfo(TypedDict, total=False):
    """manifest.view_settings[view]: a view other than prompt (build --views, `llm-maps encode --view`)."""

    model: Annotated[str, "model whose states the view holds (the run's, or --completion-model)"]
    model_info: Annotated[ModelInfo, "what loading --completion-model reported (another model only)"]
    layers: Annotated[list[int], "stored layers of the view"]
    default_layer: Annotated[int, "layer of its map and distances"]
    pooling: Annotated[str, "'eos': the state at the EOS after prompt + completion"]
    path: Annotated[str, "folder of its layer files, relative to the run (encodings/<view>)"]
    sources: Annotated[dict[str, int], "completion source (reference | output) -> rows"]
    empty_completions: Annotated[int, "rows with an empty completion, encoded as prompt + EOS"]
    projection: Annotated[ProjectionInfo | None, "its map (projection_<view>/; null: none)"]
    neighbours: Annotated[NeighboursInfo, "its dist_to_train_<view> / nn_train_ids_<view>"]
    distributed: Annotated[DistributedInfo, "--distributed only"]


# ================================================================================ finetune.json
# (a fine-tuning group's own file, pipelines/finetune.py: beside its step-* runs, not in a run)


class FinetuneSettings(TypedDict, total=False):
    steps: Annotated[int, "optimizer steps"]
    lr: Annotated[float, "peak learning rate (resolved)"]
    warmup: Annotated[float, "share of the steps warming up, then cosine decay"]
    batch_size: Annotated[int, "examples per optimizer step"]
    batch_tokens: Annotated[int, "padded tokens per micro-batch (resolved)"]
    full: Annotated[bool, "every weight tuned (else LoRA)"]
    lora_r: Annotated[int, "LoRA rank"]
    lora_alpha: Annotated[int, "LoRA alpha"]
    lora_dropout: Annotated[float, "LoRA dropout"]
    seed: Annotated[int, "seed of the example order, held-out slice and LoRA init"]
    save_every: Annotated[int, "a checkpoint every this many steps (resolved)"]
    eval_fraction: Annotated[float, "share of the train split held out for the eval loss"]
    mode: Annotated[str, "lora | full"]
    base_run: Annotated[str, "absolute path of the base run"]
    base_model: Annotated[str, "the base run's model"]
    train_rows: Annotated[int, "train examples trained on"]
    eval_rows: Annotated[int, "train examples held out for the eval loss"]
    precision: Annotated[str, "bf16 autocast | float32"]
    target_modules: Annotated[list[str], "LoRA target modules ([] with full)"]


class TrainLossPoint(TypedDict):
    step: Annotated[int, "optimizer step (1 = after the first)"]
    loss: Annotated[float, "mean cross-entropy per reference token of the step's batch (nats)"]
    lr: Annotated[float, "learning rate after the step"]


class EvalLossPoint(TypedDict):
    step: Annotated[int, "step of the checkpoint (0 = the base model)"]
    loss: Annotated[float, "mean cross-entropy per reference token of the held-out slice (nats)"]


class FinetuneCurve(TypedDict):
    train: Annotated[list[TrainLossPoint], "one point per optimizer step"]
    eval: Annotated[list[EvalLossPoint], "one point per checkpoint, and step 0"]


class FinetuneRuns(TypedDict):
    views: Annotated[list[str], "views the checkpoint runs were built with"]
    token_atlas: Annotated[bool, "the checkpoint runs have a token atlas"]


class _FinetuneFileOptional(TypedDict, total=False):
    runs: Annotated[FinetuneRuns, "how the checkpoint runs were built (absent in groups from before it)"]


class FinetuneFile(_FinetuneFileOptional):
    settings: Annotated[FinetuneSettings, "the training's settings (a resumed finetune must match them)"]
    curve: Annotated[FinetuneCurve, "the loss curve"]
    checkpoints: Annotated[list[str], "saved checkpoints: step-NNNNNN (checkpoints/ and the runs of the group)"]


GROUP_JSON_FILES: dict[str, Any] = {"finetune.json": FinetuneFile}

# ================================================================================ working files
# (resumable and distributed stages: kept while a stage runs and after it was interrupted, so that the
# same command resumes; removed when it finishes)


class EncodeState(TypedDict):
    fingerprint: Annotated[str, "hash of the token ids, layers and model: a resume needs the same"]
    n: Annotated[int, "prompts encoded"]
    layers: Annotated[list[int], "layers written"]


class ViewsState(TypedDict):
    fingerprint: Annotated[str, "hash of the passes, their targets and layers, and the model"]
    segments: Annotated[int, "forward passes planned (rows of .views-done.npy)"]


class WorkerSpec(TypedDict, total=False):
    model: Annotated[str, "model the workers load"]
    gguf_file: Annotated[str | None, "GGUF file in it"]
    revision: Annotated[str | None, "hub revision"]
    dtype: Annotated[str, "dtype asked for"]
    device: Annotated[str, "device asked for"]
    any_model: Annotated[bool, "a backbone without a language-model head will do (--completion-model)"]


class EncodePlan(TypedDict):
    fingerprint: Annotated[str, "hash of the token ids, layers, model, dtype and chunks"]
    n: Annotated[int, "prompts"]
    hidden: Annotated[int, "width of an encoding"]
    layers: Annotated[list[int], "layers to write"]
    pad_id: Annotated[int, "padding token id"]
    chunks: Annotated[list[list[list[int]]], "chunk -> batches -> prompt rows (the batches encode_to_folder plans)"]


class ViewsPlan(TypedDict):
    fingerprint: Annotated[str, "hash of the passes, targets, layers, model, spec and chunks"]
    targets: Annotated[list[str], "what the passes fill: prompt, completion, tokens"]
    layers: Annotated[dict[str, list[int]], "target -> layers"]
    all_layers: Annotated[list[int], "every layer a target keeps"]
    pad_id: Annotated[int, "padding token id"]
    chunks: Annotated[list[list[list[int]]], "chunk -> batches -> passes"]


class ScoreChunkPlan(TypedDict, total=False):
    kind: Annotated[Literal["generate", "mc"], "generation or multiple-choice log-likelihoods"]
    rows: Annotated[list[int], "generate: the rows (of the prompts given) to generate for"]
    max_new_tokens: Annotated[list[int], "generate: each row's limit"]
    batches: Annotated[list[list[int]], "mc: batches of rows, as a single process plans them"]


class GenerateSettings(TypedDict, total=False):
    max_new_tokens: Annotated[int | str, "limit given (int, 'auto', or 'per row')"]
    temperature: Annotated[float, "0 = greedy"]
    top_p: Annotated[float, "nucleus sampling"]
    seed: Annotated[int, "sampling seed"]
    stop_strings: Annotated[list[str], "generation stops at the first of these"]
    batch_size: Annotated[int | None, "prompts per generation batch (null: the default)"]
    max_length: Annotated[int | None, "prompts keep their last max_length tokens"]


class PlanModel(TypedDict):
    model: Annotated[str | None, "the model the client loaded"]
    revision: Annotated[str | None, "its revision"]
    file_sha256: Annotated[str | None, "its weights' hash"]


class ScorePlan(TypedDict):
    fingerprint: Annotated[str, "hash of the plan and the inputs"]
    chunks: Annotated[list[ScoreChunkPlan], "the chunks"]
    generate: Annotated[GenerateSettings, "generation settings ({} for a choices-only pass)"]
    spec: Annotated[WorkerSpec, "how the workers load the model"]
    model: Annotated[PlanModel, "the model the plan was made with"]


class ScoreInputs(TypedDict):
    prompts: Annotated[dict[str, str], "row -> prompt (the rows some chunk uses)"]
    choices: Annotated[dict[str, list[str]], "row -> answer options (multiple choice)"]


class ScoreChunkMeta(TypedDict, total=False):
    chunk: Annotated[int, "chunk index"]
    kind: Annotated[str, "generate | mc"]
    device: Annotated[str, "where it ran"]
    dtype: Annotated[str, "model dtype"]
    worker: Annotated[str, "worker that ran it"]
    slots: Annotated[int | None, "generate: continuous-batching slots used"]
    seconds: Annotated[float, "wall time"]


class GeneratedRow(TypedDict):
    output: Annotated[str, "generated text"]
    output_token_ids: Annotated[list[int], "its token ids"]
    output_logprobs: Annotated[list[float], "their log-probabilities"]
    stop_reason: Annotated[str, "eos | stop_string | length"]


class ScoreChunkFile(TypedDict):
    meta: Annotated[ScoreChunkMeta, "what ran it"]
    rows: Annotated[dict[str, GeneratedRow | list[float]], "row -> its output (generate) or its choices' "
                                                           "log-likelihoods (mc)"]


class EncodeChunkMeta(TypedDict):
    chunk: Annotated[int, "chunk index"]
    rows: Annotated[int, "prompts encoded"]
    clipped: Annotated[int, "values clipped to the float16 range"]
    device: Annotated[str, "where it ran"]
    dtype: Annotated[str, "model dtype"]
    worker: Annotated[str, "worker that ran it"]
    seconds: Annotated[float, "wall time"]


class ViewsChunkMeta(TypedDict):
    chunk: Annotated[int, "chunk index"]
    passes: Annotated[int, "forward passes run"]
    clipped: Annotated[int, "values clipped to the float16 range"]
    device: Annotated[str, "where it ran"]
    dtype: Annotated[str, "model dtype"]
    worker: Annotated[str, "worker that ran it"]
    seconds: Annotated[float, "wall time"]


WORK_JSON_FILES: dict[str, Any] = {
    "encodings/.state.json": EncodeState,
    "encodings/.views-state.json": ViewsState,
    ".distributed/plan.json": EncodePlan,
    ".distributed/chunk_<i>.npz: meta": EncodeChunkMeta,
    ".distributed-views/plan.json": ViewsPlan,
    ".distributed-views/chunk_<i>.npz: meta": ViewsChunkMeta,
    ".distributed-score/plan.json": ScorePlan,
    ".distributed-score/inputs.json": ScoreInputs,
    ".distributed-score/chunk_<i>.json": ScoreChunkFile,
}

# ================================================================================ compare --json FILE
# (llm_maps/comparison.py compare_runs, written by `llm-maps compare --json FILE` outside any run)


class CompareRunInfo(TypedDict):
    name: Annotated[str, "the run's name in the comparison (unique)"]
    model: Annotated[str, "manifest.model"]
    model_name: Annotated[str, "the model as readers show it (runfolder.model_label)"]
    n_params: Annotated[int | None, "manifest.n_params"]
    step: Annotated[int | None, "manifest.step (fine-tuning checkpoints)"]
    base_run: Annotated[str | None, "manifest.base_run"]
    path: Annotated[str, "the run folder"]
    layers: Annotated[list[int], "stored layers"]
    default_layer: Annotated[int, "the run's default layer"]


class CompareAxis(TypedDict):
    kind: Annotated[str, "step | n_params | order"]
    values: Annotated[list[float], "each run's x"]
    log: Annotated[bool, "plot on a log scale (n_params)"]


_CompareTaskRequired = TypedDict("_CompareTaskRequired", {  # functional form: "class" is a Python keyword
    "domain": Annotated[str, "the task's (majority) domain"],
    "accuracy": Annotated[list[float | None], "per run, accuracy on the task's scored test examples"],
    "low": Annotated[list[float | None], "Wilson 95% interval, lower"],
    "high": Annotated[list[float | None], "upper"],
    "n": Annotated[list[int], "scored examples"],
    "class": Annotated[str | None, "flat | smooth | emergent | inverse, or unclear when its change's interval "
                                   "crosses the class's boundary (CLASS_RULE; null: a run without accuracy)"],
})


class CompareTaskChange(TypedDict):
    value: Annotated[float | None, "accuracy of the last run minus the first, on the task's test examples scored in "
                                   "both (null: none)"]
    low: Annotated[float | None, "95% percentile bootstrap over those examples (paired), lower (null: fewer than 2)"]
    high: Annotated[float | None, "upper"]
    n: Annotated[int, "those examples"]


class CompareTask(_CompareTaskRequired, total=False):
    measured_class: Annotated[str | None, "the class of the measured curve, before the interval is asked "
                                          "(written by newer versions)"]
    change: Annotated[CompareTaskChange, "the change a class is judged on (written by newer versions)"]


class CompareAccuracy(TypedDict):
    accuracy: Annotated[float | None, "correct / n"]
    low: Annotated[float | None, "Wilson 95% interval, lower"]
    high: Annotated[float | None, "upper"]
    n: Annotated[int, "scored test examples"]
    correct: Annotated[int, "correct among them"]


class SignTest(TypedDict):
    up: Annotated[int, "tasks whose accuracy rose from the first run to the last"]
    down: Annotated[int, "tasks whose accuracy fell"]
    ties: Annotated[int, "tasks unchanged"]
    p_value: Annotated[float | None, "two-sided sign test (null: no task changed)"]


class CompareDomainChange(TypedDict, total=False):
    change: Annotated["CompareInterval | None", "accuracy of the last run on the x axis minus the first, on the "
                                                "test examples scored in both, with a task-clustered bootstrap 95% "
                                                "interval (null: no example scored in both)"]


class CompareDomain(CompareDomainChange):
    runs: Annotated[list[CompareAccuracy], "per run"]
    n_tasks: Annotated[int, "tasks of the domain"]
    n_examples: Annotated[int, "scored test examples (first run)"]
    classes: Annotated[dict[str, int], "curve class -> tasks"]
    sign_test: Annotated[SignTest, "tasks up vs down"]
    verdict: Annotated[str, "plain verdict"]


class CompareInterval(TypedDict):
    value: Annotated[float, "the estimate"]
    low: Annotated[float | None, "task-bootstrap 95% interval, lower (null: too few replicates)"]
    high: Annotated[float | None, "upper"]


class TaskGainRun(CompareInterval):
    run: Annotated[str, "run name"]


class _TaskGainClassOptional(TypedDict, total=False):
    runs: Annotated[list[TaskGainRun], "accuracy per run"]
    change: Annotated[CompareInterval | None, "last run minus first (null: no examples)"]
    verdict: Annotated[str, "plain verdict"]


class TaskGainClass(_TaskGainClassOptional):
    tasks: Annotated[list[str], "the class's tasks"]
    n_tasks: Annotated[int, "their number"]
    n_examples: Annotated[int, "test examples scored in every run"]


class TaskGain(TypedDict):
    unit: Annotated[str, "what the numbers are"]
    runs: Annotated[list[str], "run names"]
    first: Annotated[str, "the run with the smallest x"]
    last: Annotated[str, "the run with the largest x"]
    n_boot: Annotated[int, "bootstrap replicates"]
    seed: Annotated[int, "bootstrap seed"]
    min_tasks: Annotated[int, "tasks a class needs before a change is called supported"]
    classes: Annotated[dict[str, TaskGainClass], "'train tasks' | 'held-out tasks' -> accuracy and change"]
    difference: Annotated[CompareInterval | None, "change of train tasks minus change of held-out tasks"]
    verdict: Annotated[str, "plain verdict"]


class _CompareFalloffOptional(TypedDict, total=False):
    metric: Annotated[str | None, "the run's distance metric (absent when stats is null)"]


class CompareFalloff(_CompareFalloffOptional):
    run: Annotated[str, "run name"]
    scale: Annotated[str, "percentile | raw: the distance scale"]
    stats: Annotated[dict[str, FalloffGroup] | None, "'all' and each domain -> falloff (null: nothing scored)"]


class LossPoint(TypedDict):
    step: Annotated[int, "step"]
    loss: Annotated[float, "loss (nats)"]


class CompareLossCurve(TypedDict):
    path: Annotated[str, "the group's finetune.json"]
    train: Annotated[list[LossPoint], "training loss per step"]
    eval: Annotated[list[LossPoint], "held-out loss per checkpoint"]
    mode: Annotated[str | None, "lora | full"]
    unit: Annotated[str, "what the loss is"]


class CompareAlignment(TypedDict):
    method: Annotated[str, "how the maps were aligned"]
    procrustes_residual: Annotated[list[float | None], "per run (0 for the first; null: too few shared points)"]


class Mover(TypedDict):
    example_id: Annotated[str, "the example"]
    row: Annotated[int, "its row in the comparison"]
    jaccard: Annotated[list[float | None], "per run, Jaccard index with the first run's neighbours"]
    task: Annotated[str, "its task"]
    domain: Annotated[str, "its domain"]
    split: Annotated[str, "train | test"]


class CompareMoved(TypedDict):
    k: Annotated[int, "neighbours compared"]
    measure: Annotated[str, "what the index is"]
    mean_jaccard: Annotated[list[float | None], "per run"]
    top: Annotated[list[Mover], "examples whose neighbours changed most"]


class CkaLayerPair(TypedDict):
    run_a: Annotated[str, "run name"]
    run_b: Annotated[str, "run name (run_a for pairs within a run)"]
    layer_a: Annotated[int, "layer of run_a"]
    layer_b: Annotated[int, "layer of run_b"]
    cka: Annotated[float | None, "linear CKA (null: a layer that does not vary)"]


class CompareCka(TypedDict):
    measure: Annotated[str, "what is measured"]
    layer_pairs: Annotated[list[CkaLayerPair], "every pair computed ([] with --no-cka)"]


class Provenance(TypedDict):
    params: Annotated[dict[str, Any], "the command's parameters"]
    inputs: Annotated[dict[str, Any], "what it read, with content hashes (runs: path -> manifest hash)"]
    versions: Annotated[dict[str, str], "package versions"]
    created: Annotated[str, "ISO time (UTC)"]


class _CompareFileOptional(TypedDict, total=False):
    provenance: Annotated[Provenance, "what produced the file: parameters, inputs, versions, time"]


class CompareFile(_CompareFileOptional):
    format_version: Annotated[int, "compare format (1)"]
    runs: Annotated[list[CompareRunInfo], "the runs, in the order given"]
    n_examples: Annotated[int, "examples shared by every run"]
    n_test: Annotated[int, "test examples among them"]
    n_tasks: Annotated[int, "their tasks"]
    axis: Annotated[CompareAxis, "what the curves are drawn against"]
    tasks: Annotated[dict[str, CompareTask], "task -> accuracy per run and curve class"]
    domains: Annotated[dict[str, CompareDomain], "domain -> accuracy per run, classes, sign test"]
    classes: Annotated[dict[str, int], "curve class -> tasks"]
    class_rule: Annotated[str, "how a task's class follows from its curve"]
    unit: Annotated[str, "what the accuracies are"]
    task_gain: Annotated[TaskGain, "train tasks vs held-out tasks"]
    falloff: Annotated[list[CompareFalloff], "per run, falloff against the distance percentile"]
    loss_curve: Annotated[CompareLossCurve | None, "the fine-tuning loss curve (null: not a fine-tuning group)"]
    alignment: Annotated[CompareAlignment, "the maps aligned to the first run's"]
    moved: Annotated[CompareMoved, "how each example's neighbours changed"]
    cka: Annotated[CompareCka, "linear CKA between layers"]


OUTPUT_JSON_FILES: dict[str, Any] = {"compare --json FILE": CompareFile}

# ================================================================================ every file
# Every path a run or a fine-tuning group may hold, with the stage that writes it. Patterns: <name>
# stands for a part of one path part (<k> a layer, <i> a chunk, <step>, <pid>, <ns>: digits), {a,b}
# for one of the names, ** for any path below; a folder that `holds` "run" holds a run's files (its own patterns apply under it).
# tests/test_contract_files.py fails on any file a stage writes that no pattern here matches.

FileScope = Literal["run", "work", "group", "group work", "temporary"]


@dataclass(frozen=True)
class RunFile:
    path: str
    where: FileScope  # run: a finished run; work: a stage's working file; group: a fine-tuning group
    stage: str  # the stage (command) that writes it
    meaning: str
    schema: str | None = None  # the generated block (in docs/run-folder.md) listing its keys or columns
    holds: str | None = None  # "run": a folder whose files are a run's
    arrays: tuple[str, ...] = ()  # .npz: the names of the arrays it holds (patterns)


_ARRAYS = "{fit_rows,embedding,mean,components}"
_VIEW_MAPS = "{projection,projection_completion,projection_tokens}"
_SCORE_WORK = "{.distributed-score,.distributed-conditions/<condition>.<pass>}"

FILES: tuple[RunFile, ...] = (
    # ---------------------------------------------------------------- a finished run
    RunFile("manifest.json", "run", "every stage", "provenance and parameters (written last)", "manifest"),
    RunFile("examples.parquet", "run", "build (columns: later stages)", "one row per example", "columns"),
    RunFile("encodings/layer_<k>.npy", "run", "build, encode", "float16 [N, H]: the prompt view, row i = example i"),
    RunFile("encodings/completion/layer_<k>.npy", "run", "build --views completion, encode --view completion",
            "float16 [N, H]: the completion view"),
    RunFile("encodings/tokens/layer_<k>.npy", "run", "build --token-atlas, atlas",
            "float16 [T, H]: the token atlas, row t = tokens.parquet's row t"),
    RunFile(f"{_VIEW_MAPS}/projection.json", "run", "build, project (projection/); the views' and the token "
            "map's with them", "a fitted 2-D map: projection/ of the prompt view, projection_completion/ of the "
            "completion view, projection_tokens/ the token map", "projection/projection.json"),
    RunFile(f"{_VIEW_MAPS}/{_ARRAYS}.npy", "run", "as projection.json",
            "the map's arrays: fit_rows [F] and embedding [F, 2] (UMAP), mean [H] and components [2, H] (PCA)"),
    RunFile("tokens.parquet", "run", "build --token-atlas, atlas", "the token atlas's tokens", "tokens.parquet"),
    RunFile("falloff.json", "run", "falloff", "accuracy vs distance to train", "falloff.json"),
    RunFile("probes.json", "run", "probe, compare --probes", "linear probes per layer", "probes.json"),
    RunFile("cka.json", "run", "compare", "CKA between this run's layers and other runs'", "cka.json"),
    RunFile("findings.json", "run", "findings", "does accuracy fall off more steeply in one domain", "findings.json"),
    RunFile("conditions.parquet", "run", "score --conditions", "one row per example and condition",
            "conditions.parquet"),
    RunFile("regions.json", "run", "regions", "regions of the encoding space and how the model does in them",
            "regions.json"),
    RunFile("regions.parquet", "run", "regions", "each example's region", "regions.parquet"),
    # ---------------------------------------------------------------- working files of a run
    RunFile("encodings/.state.json", "work", "build, encode (resumable encoding)",
            "what the encodings being written are of (in RUN.partial/)", "encodings/.state.json"),
    RunFile("encodings/.done.npy", "work", "build, encode", "bool [N]: prompts encoded so far"),
    RunFile("encodings/.views-state.json", "work", "build --views/--token-atlas, encode --view, atlas",
            "what the shared passes being written are of", "encodings/.views-state.json"),
    RunFile("encodings/.views-done.npy", "work", "as .views-state.json", "bool [S]: passes run so far"),
    RunFile(".distributed/plan.json", "work", "build --distributed", "the chunks the workers encode (in "
            "RUN.partial/, on storage every worker reaches)", ".distributed/plan.json"),
    RunFile(".distributed/{tokens,offsets}.npy", "work", "build --distributed",
            "int64: every prompt's token ids, concatenated, and where each starts ([N + 1])"),
    RunFile(".distributed/chunk_<i>.npz", "work", "build --distributed (a worker)",
            "a chunk's encodings: rows [R], layer_<k> float16 [R, H], meta (JSON)",
            ".distributed/chunk_<i>.npz: meta", arrays=("meta", "rows", "layer_<k>")),
    RunFile(".distributed-views/plan.json", "work", "build/encode --view/atlas --distributed",
            "the chunks of the shared passes", ".distributed-views/plan.json"),
    RunFile(".distributed-views/{tokens,offsets,take_offsets,takes}.npy", "work", "as plan.json",
            "int64: the passes' token ids and offsets; the states the passes keep ([K, 3]: target, row, "
            "position) and where each pass's states start"),
    RunFile(".distributed-views/chunk_<i>.npz", "work", "as plan.json (a worker)",
            "a chunk's states: takes_<k> (indices into takes.npy), layer_<k> float16, meta (JSON)",
            ".distributed-views/chunk_<i>.npz: meta", arrays=("meta", "takes_<k>", "layer_<k>")),
    RunFile(f"{_SCORE_WORK}/plan.json", "work", "score --distributed, score --conditions --distributed",
            "the generation and multiple-choice chunks (one folder per condition and pass: generate, choices)",
            ".distributed-score/plan.json"),
    RunFile(f"{_SCORE_WORK}/inputs.json", "work", "as plan.json", "the prompts and choices the chunks read",
            ".distributed-score/inputs.json"),
    RunFile(f"{_SCORE_WORK}/chunk_<i>.json", "work", "as plan.json (a worker)", "a chunk's outputs",
            ".distributed-score/chunk_<i>.json"),
    RunFile(".extras.partial/", "work", "encode --view, atlas",
            "the new view's or atlas's files (as in a run), swapped into the run when done", holds="run"),
    # ---------------------------------------------------------------- a fine-tuning group
    RunFile("finetune.json", "group", "finetune", "settings and loss curve (written when training ends)",
            "finetune.json"),
    RunFile("step-<step>/", "group", "finetune", "a run per checkpoint (step-000000: the base run's files "
            "hard-linked, with step 0)", holds="run"),
    RunFile("checkpoints/step-<step>/model/**", "group", "finetune",
            "the merged transformers model (config, weights, tokenizer)"),
    RunFile("checkpoints/step-<step>/state.pt", "group", "finetune", "torch.save: step, trainable weights, "
            "optimizer, scheduler, RNG state, loss curve, settings (what a resumed finetune starts from)"),
    RunFile("step-<step>.partial/", "group work", "finetune", "step 0 being linked, or a checkpoint run being "
            "built", holds="run"),
    RunFile("checkpoints/step-<step>.partial/**", "group work", "finetune", "a checkpoint being saved "
            "(model.partial/, model.partial-adapter/: the LoRA adapter before merging)"),
    # ---------------------------------------------------------------- temporaries of atomic writes
    RunFile("**/.<name>.<pid>.tmp", "temporary", "every writer", "a file being written (os.replace'd into place)"),
    RunFile("**/.<name>.<pid>.tmp.npy", "temporary", "every writer", "an array being written (save_npy_atomic)"),
    RunFile("**/.<name>.<pid>.tmp/**", "temporary", "project, build, atlas", "a folder being written "
            "(replacing_dir), swapped in whole"),
    RunFile("**/.<name>.old-<pid>-<ns>/**", "temporary", "project, build, atlas", "the folder a swap replaced, "
            "removed once the new one is in place"),
    RunFile("**/.chunk_<i>.<pid>.tmp", "temporary", "a worker", "a chunk file being written"),
    RunFile(".write-check.<pid>", "temporary", "every stage", "the check that a run is writable"),
)

# what each kind of folder may hold
FOLDER_SCOPES: dict[str, tuple[str, ...]] = {"run": ("run", "work", "temporary"),
                                             "group": ("group", "group work", "temporary")}


_NUMBERS = {"k", "i", "step", "pid", "ns"}  # placeholders that stand for digits


def _regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".+")
            i += 2
        elif pattern[i] == "<":
            j = pattern.index(">", i)
            out.append(r"\d+" if pattern[i + 1:j] in _NUMBERS else "[^/]+")
            i = j + 1
        elif pattern[i] == "{":
            j = pattern.index("}", i)
            out.append("(?:" + "|".join(_regex(p) for p in pattern[i + 1:j].split(",")) + ")")
            i = j + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def declared_file(relpath: str, folder: str = "run") -> RunFile | None:
    """The entry of FILES that ``relpath`` (relative to a run, or to a group with ``folder="group"``)
    matches; for a file under a folder that holds a run, the run's entry (``where`` the folder's when
    that is a working folder). None: not in the contract."""
    for f in FILES:
        if f.where not in FOLDER_SCOPES[folder]:
            continue
        if f.holds:
            m = re.fullmatch(_regex(f.path) + "(?P<rest>.+)", relpath)
            inner = declared_file(m["rest"], f.holds) if m else None
            if inner is not None:  # a run's file in a working folder (RUN/.extras.partial/) is a working file
                return replace(inner, where=f.where) if f.where != "group" and inner.where == "run" else inner
        elif re.fullmatch(_regex(f.path), relpath):
            return f
    return None


def schemas() -> dict[str, Any]:
    """Block name -> the TypedDict (JSON) or column table (Parquet) that RunFile.schema names."""
    return {"manifest": Manifest, "columns": COLUMNS, "conditions.parquet": CONDITION_COLUMNS,
            "regions.parquet": REGION_COLUMNS, "tokens.parquet": TOKEN_COLUMNS, **JSON_FILES, **GROUP_JSON_FILES,
            **WORK_JSON_FILES, **OUTPUT_JSON_FILES}


def check_file(path: str | Path, entry: RunFile, *, source_columns: Any = ()) -> list[str]:
    """What in the file at ``path`` its entry does not declare: JSON keys (nested), Parquet columns
    (and required columns missing), .npz arrays. ``source_columns``: columns of examples.parquet a
    source had (kept as they are)."""
    import json

    path = Path(path)
    schema = schemas()[entry.schema] if entry.schema else None
    if path.suffix == ".json" and schema is not None:
        return check(json.loads(path.read_text(encoding="utf-8")), schema)
    if path.suffix == ".parquet" and schema is not None:
        import pyarrow.parquet as pq

        names = [n for n in pq.read_schema(path).names if not n.startswith("__index_level_")]
        extra = set(source_columns) if entry.schema == "columns" else set()
        return ([f"{c}: column not in the contract" for c in names if c not in schema and c not in extra]
                + [f"{c}: required column missing" for c, col in schema.items() if col.required and c not in names])
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as data:
            problems = [f"{k}: array not in the contract" for k in data.files
                        if not any(re.fullmatch(_regex(a), k) for a in entry.arrays)]
            if schema is not None and "meta" in data.files:
                problems += check(json.loads(str(data["meta"])), schema, "meta")
        return problems
    return []


def check_folder(folder: str | Path, kind: str = "run", *, source_columns: Any = ()) -> list[str]:
    """Every file under a run (``kind="run"``; RUN.partial/ too) or a fine-tuning group (``"group"``)
    that the contract does not declare, and every key, column or array of its files that it does not
    list: [] when the folder follows the contract."""
    folder = Path(folder)
    problems: list[str] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        entry = declared_file(rel, kind)
        if entry is None:
            problems.append(f"{rel}: file not in the contract")
        else:
            problems += [f"{rel}: {p}" for p in check_file(path, entry, source_columns=source_columns)]
    return problems


def files_table() -> str:
    rows = ["| path | in | written by | keys | meaning |", "|---|---|---|---|---|"]
    for f in FILES:
        keys = f"`{f.schema}`" if f.schema else ("arrays " + ", ".join(f"`{a}`" for a in f.arrays) if f.arrays
                                                 else "a run's files" if f.holds == "run" else "")
        if f.schema and f.arrays:
            keys += "; arrays " + ", ".join(f"`{a}`" for a in f.arrays)
        rows.append(f"| `{f.path}` | {f.where} | {_cell(f.stage)} | {keys} | {_cell(f.meaning)} |")
    return "\n".join(rows)

# ================================================================================ state folder
# (the job queue and user points: beside the runs, never inside them)

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class JobPayload(TypedDict, total=False):
    instruction: Annotated[str, "the typed prompt's instruction"]
    context: Annotated[str, "its context"]
    generate: Annotated[bool, "generate after placing"]
    max_new_tokens: Annotated[int, "generation limit"]
    temperature: Annotated[float, "0 = greedy"]
    top_p: Annotated[float, "nucleus sampling"]
    seed: Annotated[int, "sampling seed"]
    domain: Annotated[str, "domain to read the expected accuracy in"]
    example_id: Annotated[str, "a variation of this example of the run (try a variation): the answer is scored with "
                               "its metric and the run's threshold, and the prompt's distance to it is measured"]
    cot: Annotated[bool, "think step by step, as the cot condition (llm_maps.conditions.cot_prompt): the answer "
                         "starts with the cue after the plain prompt (placed as typed); a variation scores the "
                         "answer extracted from the reasoning (llm_maps.conditions.extract_answer)"]


class JobRecord(TypedDict, total=False):
    id: Annotated[str, "uuid hex"]
    run: Annotated[str, "run name"]
    kind: Annotated[str, "place | generate"]
    payload: Annotated[JobPayload, "what was asked"]
    status: Annotated[JobStatus, "queued | running | done | failed | cancelled"]
    error: Annotated[str | None, "one-line reason (failed)"]
    result: Annotated[dict[str, Any] | None, "the point so far (running) or in full (done)"]
    created: Annotated[float, "epoch seconds"]
    started: Annotated[float | None, "epoch seconds"]
    finished: Annotated[float | None, "epoch seconds"]
    heartbeat: Annotated[float | None, "epoch seconds of the worker's last sign of life"]
    worker: Annotated[str | None, "worker name"]
    heartbeat_timeout: Annotated[float, "the claiming worker's heartbeat timeout (s)"]
    cancel_requested: Annotated[bool, "a user asked a running job to stop"]
    run_key: Annotated[str | None, "runfolder.run_key of the run the web process meant; a worker whose run of that id differs fails the job"]
    slot_freed: Annotated[bool, "a cancelled queued job already gave back its place in the queue"]
    sent: Annotated[bool, "scale-out: confirmed by the web process once its Celery task was sent (a worker runs, and sends again, only confirmed jobs)"]
    refused: Annotated[bool, "scale-out: failed while being submitted (its client was answered 503): its Idempotency-Key, sent again, makes a new job"]


class Neighbour(TypedDict):
    example_id: Annotated[str, "a train example"]
    distance: Annotated[float, "its distance to the point"]


class ExpectedAccuracyOverTasks(TypedDict, total=False):
    task_low: Annotated[float | None, "the bin's interval over tasks, lower (falloff.json's task_low: null with "
                                      "fewer than 5 tasks); absent when the falloff has none"]
    task_high: Annotated[float | None, "upper"]
    n_tasks: Annotated[int, "tasks in that bin"]


class ExpectedAccuracy(ExpectedAccuracyOverTasks):
    domain: Annotated[str, "domain whose falloff was read ('all' when unknown)"]
    accuracy: Annotated[float | None, "accuracy of the distance bin the point falls in"]
    low: Annotated[float | None, "Wilson 95% interval, lower"]
    high: Annotated[float | None, "Wilson 95% interval, upper"]
    n: Annotated[int, "examples in that bin"]
    bin: Annotated[int, "the bin"]


class TokenAlternative(TypedDict):
    text: Annotated[str, "token text"]
    logprob: Annotated[float, "its log-probability"]


class NearestStep(TypedDict):
    example_id: Annotated[str, "the training example of the nearest atlas state"]
    position: Annotated[int, "its reference token's position (0 = first response token)"]
    token_text: Annotated[str, "that token"]
    before: Annotated[str, "a few reference tokens before it"]
    after: Annotated[str, "a few after it"]


class TokenStepRequired(TypedDict):
    text: Annotated[str, "generated token"]
    id: Annotated[int, "token id"]
    logprob: Annotated[float, "its log-probability"]
    top: Annotated[list[TokenAlternative], "the most likely alternatives"]
    x: Annotated[float, "map position of its hidden state (the token map when the run has a token atlas)"]
    y: Annotated[float, "map position"]
    dist: Annotated[float, "distance to the nearest train example (with a token atlas: the nearest atlas state)"]
    step: Annotated[float, "distance from the previous state"]


class TokenStep(TokenStepRequired, total=False):
    nearest: Annotated[NearestStep, "the nearest training step (runs with a token atlas)"]


class Variation(TypedDict):
    """How a variation of a run's example did (a job with ``example_id``)."""

    example_id: Annotated[str, "the example the prompt was edited from"]
    metric: Annotated[str | None, "exact | contains | rougeL | mc: the example's stored metric, else the run's rule "
                                  "(null: no reference)"]
    threshold: Annotated[float | None, "the run's scoring.thresholds[metric]"]
    answer: Annotated[str | None, "what was scored: the output, the answer extracted from a step-by-step output, or "
                                  "the chosen choice (multiple choice)"]
    extraction: Annotated[str | None, "rule that gave the answer (conditions.parquet's extraction rules)"]
    score: Annotated[float | None, "score in [0, 1] (null: not scored, see note)"]
    correct: Annotated[bool | None, "score >= threshold (null: not scored)"]
    dist_to_original: Annotated[float, "the prompt's distance to the example's stored encoding (map layer, run's "
                                       "metric, fp16 as dist_to_train)"]
    original_dist_to_train: Annotated[float | None, "the example's stored dist_to_train"]
    note: Annotated[str | None, "why it was not scored (no reference, placed only)"]


class PointRecord(TypedDict, total=False):
    """A user's point (points/<run>.jsonl in the state folder): a placed or generated prompt."""

    id: Annotated[str, "the job id"]
    created: Annotated[float, "epoch seconds"]
    kind: Annotated[str, "place | generate"]
    pending: Annotated[bool, "kept before its job was marked done: shown only once the job is done"]
    instruction: Annotated[str, "typed instruction"]
    context: Annotated[str, "typed context"]
    options: Annotated[dict[str, JSONScalar], "generation options given"]
    prompt: Annotated[str, "the rendered prompt"]
    x: Annotated[float, "map position"]
    y: Annotated[float, "map position"]
    dist_to_train: Annotated[float, "distance to the nearest train example"]
    neighbours: Annotated[list[Neighbour], "nearest train examples"]
    domain: Annotated[str | None, "given, or the majority domain of the neighbours"]
    expected_accuracy: Annotated[ExpectedAccuracy | None, "from falloff.json"]
    output: Annotated[str, "generated text (generate)"]
    tokens: Annotated[list[TokenStep], "each generated token and where it lies (generate)"]
    stop_reason: Annotated[str, "eos | stop_string | length | cancelled"]
    n_tokens: Annotated[int, "tokens generated"]
    mean_logprob: Annotated[float | None, "mean log-likelihood per token"]
    perplexity: Annotated[float | None, "exp(-mean_logprob)"]
    path_length: Annotated[float, "sum of the steps through the hidden space"]
    final_dist: Annotated[float, "last state's distance to the nearest train example"]
    reference: Annotated[str, "what token distances are measured against: atlas | prompts"]
    mean_dist: Annotated[float | None, "mean of the tokens' atlas distances (token atlas)"]
    max_dist: Annotated[float | None, "the largest (the weakest step; token atlas)"]
    response_prefix: Annotated[str, "think step by step: the cue the answer started with (as the cot condition); "
                                    "output is what followed it"]
    x_tokens: Annotated[float | None, "the prompt's place on the token map (token atlas)"]
    y_tokens: Annotated[float | None, "y on the token map"]
    variation: Annotated[Variation, "a variation of a run's example: its score and distance to the original"]


class BackgroundStatus(TypedDict):
    """STATE/background.json: a build running beside the server (the demo's full run after its first
    slice); the pages show it."""

    task: Annotated[str, "what is running (demo)"]
    run: Annotated[str, "the run it will replace (folder name)"]
    state: Annotated[Literal["running", "done", "failed", "stopped"], "running, then done, failed or stopped"]
    stage: Annotated[str, "the stage now running (encode, score, publish)"]
    stage_index: Annotated[int | None, "its place, 1-based"]
    stages: Annotated[int, "how many stages"]
    started: Annotated[float, "Unix time it started"]
    updated: Annotated[float, "Unix time of this record"]
    pid: Annotated[int, "its process"]
    error: Annotated[str | None, "why it failed or stopped"]


class KeyBinding(TypedDict):
    job: Annotated[str, "the job the key's first request made (uuid hex); kept as long as jobs are (LLM_MAPS_RETENTION)"]
    fp: Annotated[str, "sha256 of the request it was made for ([run, kind, payload] as canonical JSON): the key sent with another request is answered 422"]


STATE_RECORDS: dict[str, Any] = {"job record": JobRecord, "points/<run>.jsonl line": PointRecord,
                                 "background.json": BackgroundStatus,
                                 "idempotency key binding": KeyBinding}

MANIFEST_SECTIONS.update({
    "prompt_template": PromptTemplateInfo, "model_info": ModelInfo, "projection": ProjectionInfo,
    "split_rule": SplitRule, "split_rule.counts": SplitCounts, "domain_map": DomainMapInfo,
    "sources[]": SourceInfo, "counts": Counts, "encoding": EncodingInfo, "encoding.distributed": DistributedInfo,
    "neighbours": NeighboursInfo, "scoring": ScoringInfo, "scoring.generation": GenerationInfo,
    "scoring.per_task{}": LmevalTaskInfo, "scoring.first_token": FirstTokenInfo, "history[]": HistoryEntry,
    "conditions": ConditionsInfo, "conditions.conditions{}": ConditionInfo,
    "conditions.conditions{}.distributed": ConditionDistributedInfo,
    "view_settings{}": ViewSettingsInfo, "token_atlas": TokenAtlasInfo,
})

# ================================================================================ checking values


def _hints(td: Any) -> dict[str, Any]:
    return typing.get_type_hints(td, include_extras=True)


def is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def check(value: Any, tp: Any, where: str = "") -> list[str]:
    """Where ``value`` does not fit type ``tp``: keys a TypedDict does not list, missing required
    keys, values of the wrong kind. [] when it fits."""
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return []
    if origin is Union or (sys.version_info >= (3, 10) and isinstance(tp, types.UnionType)):
        options = typing.get_args(tp)
        results = [check(value, o, where) for o in options]
        return [] if any(not r for r in results) else min(results, key=len)
    if origin is Literal:
        return [] if value in typing.get_args(tp) else [f"{where}: {value!r} is not one of {typing.get_args(tp)}"]
    if is_typeddict(tp):
        if not isinstance(value, Mapping):
            return [f"{where}: expected an object ({tp.__name__}), got {type(value).__name__}"]
        hints = _hints(tp)
        problems = [f"{where}.{k}: key not in the contract ({tp.__name__})".lstrip(".")
                    for k in value if k not in hints]
        problems += [f"{where}.{k}: required key missing ({tp.__name__})".lstrip(".")
                     for k in tp.__required_keys__ if k not in value]
        for k, v in value.items():
            if k in hints:
                problems += check(v, hints[k], f"{where}.{k}".lstrip("."))
        return problems
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return [f"{where}: expected a list, got {type(value).__name__}"]
        args = typing.get_args(tp)
        out: list[str] = []
        for i, v in enumerate(value):
            out += check(v, args[0] if args else Any, f"{where}[{i}]")
        return out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            return [f"{where}: expected an object, got {type(value).__name__}"]
        args = typing.get_args(tp)
        out = []
        for k, v in value.items():
            out += check(v, args[1] if args else Any, f"{where}[{k!r}]")
        return out
    if tp is type(None):
        return [] if value is None else [f"{where}: expected null, got {type(value).__name__}"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(tp, type):
        ok = isinstance(value, tp)
    else:
        return []
    return [] if ok else [f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r:.40})"]


# ================================================================================ the document


def _type_name(tp: Any) -> str:
    tp = _strip(tp)
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if origin is Union or (sys.version_info >= (3, 10) and isinstance(tp, types.UnionType)):
        return " \\| ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin in (dict, Mapping):
        k, v = typing.get_args(tp)
        return f"{{{_type_name(k)}: {_type_name(v)}}}"
    if is_typeddict(tp):
        return f"object ({tp.__name__})"
    return {str: "string", int: "int", float: "float", bool: "bool"}.get(tp, getattr(tp, "__name__", str(tp)))


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, '<' before a letter (a would-be HTML tag) as &lt;."""
    return re.sub(r"<(?=[A-Za-z/!])", "&lt;", text.replace("|", "\\|"))


def table(td: Any) -> str:
    """A Markdown table of a TypedDict's keys: key, type, required, meaning."""
    hints = _hints(td)
    rows = ["| key | type | required | meaning |", "|---|---|---|---|"]
    for key, tp in hints.items():
        meaning = typing.get_args(tp)[1] if typing.get_origin(tp) is Annotated else ""
        req = "yes" if key in td.__required_keys__ else ""
        rows.append(f"| `{key}` | {_type_name(tp)} | {req} | {_cell(meaning)} |")
    return "\n".join(rows)


def columns_table(columns: dict[str, Column] | None = None) -> str:
    rows = ["| column | type | required | written by | meaning |", "|---|---|---|---|---|"]
    for name, c in (COLUMNS if columns is None else columns).items():
        rows.append(f"| `{name}` | {_cell(c.dtype)} | {'yes' if c.required else ''} | {c.stage} | {_cell(c.meaning)} |")
    return "\n".join(rows)


def generated_blocks() -> dict[str, str]:
    """name -> Markdown of every generated block of docs/run-folder.md."""
    blocks = {"manifest": table(Manifest), "columns": columns_table(),
              "conditions.parquet": columns_table(CONDITION_COLUMNS),
              "regions.parquet": columns_table(REGION_COLUMNS)}
    for name, td in MANIFEST_SECTIONS.items():
        blocks[f"manifest.{name}"] = table(td)
    for name, td in JSON_FILES.items():
        blocks[name] = table(td)
        for sub in _nested_typeddicts(td):
            blocks[f"{name}: {sub.__name__}"] = table(sub)
    for name, td in STATE_RECORDS.items():
        blocks[name] = table(td)
        for sub in _nested_typeddicts(td):
            blocks[f"{name}: {sub.__name__}"] = table(sub)
    blocks["files"] = files_table()
    blocks["tokens.parquet"] = columns_table(TOKEN_COLUMNS)
    # the group's, the working and the output files: a nested object documented above is not repeated
    documented = {*MANIFEST_SECTIONS.values(), *(s for td in JSON_FILES.values() for s in _nested_typeddicts(td))}
    for registry in (GROUP_JSON_FILES, WORK_JSON_FILES, OUTPUT_JSON_FILES):
        for name, td in registry.items():
            blocks[name] = table(td)
            for sub in _nested_typeddicts(td, set(documented)):
                blocks[f"{name}: {sub.__name__}"] = table(sub)
                documented.add(sub)
    return blocks


def _nested_typeddicts(td: Any, seen: set[Any] | None = None) -> list[Any]:
    seen = set() if seen is None else seen
    out: list[Any] = []

    def walk(tp: Any) -> None:
        tp = _strip(tp)
        if is_typeddict(tp):
            if tp not in seen:
                seen.add(tp)
                out.append(tp)
                for h in _hints(tp).values():
                    walk(h)
            return
        for a in typing.get_args(tp):
            walk(a)

    for h in _hints(td).values():
        walk(h)
    return out


BEGIN, END = "<!-- generated: {} -->", "<!-- end generated -->"


def render_document(text: str) -> str:
    """``text`` with every generated block replaced by what the types give now."""
    for name, body in generated_blocks().items():
        begin = BEGIN.format(name)
        start = text.find(begin)
        if start < 0:
            raise KeyError(f"docs/run-folder.md has no block '{begin}': add it where it belongs")
        stop = text.find(END, start)
        text = text[:start] + begin + "\n" + body + "\n" + text[stop:]
    return text


def main(argv: list[str] | None = None) -> int:
    """``python -m llm_maps.contract --write docs/run-folder.md``: regenerate its tables; without
    ``--write``: exit 1 when they are out of date."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m llm_maps.contract")
    p.add_argument("doc", nargs="?", default=str(Path(__file__).resolve().parents[1] / "docs" / "run-folder.md"))
    p.add_argument("--write", action="store_true", help="rewrite the document's generated blocks")
    args = p.parse_args(argv)
    path = Path(args.doc)
    return sync_generated(path, render_document(path.read_text(encoding="utf-8")), write=args.write,
                          how=f"python -m llm_maps.contract --write {path}")


def sync_generated(path: Path, new: str, *, write: bool, how: str) -> int:
    """A generated document: rewrite it with ``new`` (``write``), or exit status 1 with one line
    saying how to regenerate it when it differs (the check the tests run)."""
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    if write:
        if new != current:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: regenerated")
        return 0
    if new != current:
        print(f"{path}: out of date; run {how}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
