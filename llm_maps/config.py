"""Typed configuration of `llm-maps build` and `llm-maps encode`: ``BuildConfig``.

One dataclass, one field per parameter, each with its help text and CLI flags in the field's
metadata. The command line is generated from it (``add_arguments``), parsed back into it
(``from_args``), ``pipelines.build.build_run`` takes it, and the first entry of a run's
``manifest.history`` records it (``BuildConfig.record``). Adding a build parameter is one
change: a new field here (with ``option(...)``); see docs/run-folder.md, "Extending the contract".

Torch-free: the CLI imports this to build its parser.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

__all__ = ["Option", "option", "BuildConfig", "add_arguments", "from_args", "config_values", "record",
           "fields_of", "flags_of", "parse_layers", "parse_layers_or_all", "parse_list"]


def parse_layers(text: str) -> list[int]:
    """'8,15,22' -> [8, 15, 22] (the type of --layers)."""
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def parse_layers_or_all(text: str) -> list[int] | str:
    """'all' -> 'all' (every hidden state, 0 = embeddings .. last), else ``parse_layers``."""
    return "all" if text.strip().lower() == "all" else parse_layers(text)


def parse_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (comma-separated names)."""
    return [t.strip() for t in text.split(",") if t.strip()]


@dataclass(frozen=True)
class Option:
    """How one config field appears on the command line."""

    help: str
    group: str
    flags: tuple[str, ...] = ()  # default: ("--field-name",)
    type: Callable[[str], Any] | None = None  # default: the default's type (int, float, str)
    choices: Sequence[str] | None = None
    nargs: str | None = None
    metavar: str | None = None
    required: bool = False  # required on the command line (the API may leave it for later)
    action: str | None = None  # "store_true" / "store_false" for flags
    record: bool = True  # recorded in manifest.history (False: how the run was made, not what)
    positional: bool = False  # an argument without a flag (RUN_DIR)
    aliases: tuple[str, ...] = ()  # old spellings: still accepted, with a note naming the flag to use
    cli: bool = True  # on the command line (False: a parameter of the Python API only)


def option(default: Any, help: str, group: str, **kwargs: Any) -> Any:
    """A dataclass field with its CLI ``Option``; lists must default to None (immutable configs)."""
    return field(default=default, metadata={"cli": Option(help=help, group=group, **kwargs)})


DATA, SPLIT, MODEL, PROJECTION, DISTANCES, OUTPUT, SCALE_OUT, VIEWS = (
    "data", "split", "model and encoding", "projection", "distances", "output", "scale-out",
    "views and token atlas")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `llm-maps build` (and `encode`, which stops before the map) is given.

    ``seed`` is the default of both ``split_seed`` (which examples are test) and ``map_seed``
    (UMAP/PCA); give those to change one without the other.
    """

    # ---------------------------------------------------------------- data
    data: Sequence[str] | None = option(
        None, "JSONL/JSON/CSV/TSV/Parquet file(s), a saved `datasets` folder, or a hub id "
              "(e.g. databricks/databricks-dolly-15k)", DATA, nargs="+", metavar="DATA", required=True)
    columns: str | Mapping[str, str] | None = option(
        None, "column mapping for non-Dolly data, e.g. 'instruction=question,response=answer,"
              "context=passage,category=type,id=uid,split=split' (empty value = no such column)", DATA)
    data_format: str | None = option(None, "data format when the file suffix does not tell", DATA,
                                     flags=("--format",), choices=("jsonl", "json", "csv", "tsv", "parquet"))
    source_split: str | None = option(None, "split of a `datasets` source to read (default: all)", DATA)
    limit: int | None = option(None, "use only the first N examples", DATA, type=int)
    domain_map: str | None = option(None, "TOML domain map (default: data/domains.toml)", DATA)
    # ---------------------------------------------------------------- split
    split_by: str = option("auto", "auto: the source's split column when present, else by example", SPLIT,
                           choices=("auto", "source", "example", "category"))
    test_size: float = option(0.2, "fraction of examples sent to test", SPLIT)
    test_categories: Sequence[str] | None = option(
        None, "comma-separated categories held out entirely (out-of-distribution test)", SPLIT, type=parse_list)
    n_test_categories: int = option(0, "hold out N categories chosen by seed", SPLIT)
    seed: int | None = option(None, "seed of both the train/test split and the map (default 0); "
                                    "--split-seed / --map-seed set one alone", SPLIT, type=int)
    split_seed: int | None = option(None, "seed of the train/test split (default: --seed)", SPLIT, type=int)
    map_seed: int | None = option(None, "seed of the 2-D map, UMAP or PCA (default: --seed)", SPLIT, type=int)
    # ---------------------------------------------------------------- model and encoding
    model: str = option("", "hub id (e.g. databricks/dolly-v2-3b), local folder, or path to a .gguf file",
                        MODEL, required=True)
    gguf_file: str | None = option(None, "GGUF file name inside the --model folder", MODEL)
    revision: str | None = option(None, "hub revision", MODEL)
    template: str = option("auto", "auto | dolly | chat | redpajama | plain | a template string with "
                                   "{instruction}, {context}, {context_block}", MODEL)
    layers: Sequence[int] | str | None = option(
        None, "hidden_states indices to store, e.g. '8,15,22,30', or 'all' (0 = embeddings .. last; default: "
              "last + 3 evenly spaced)", MODEL, type=parse_layers_or_all)
    default_layer: int | None = option(None, "layer used for the map and distances (default: the last stored)",
                                       MODEL, type=int)
    add_eos: bool = option(False, "pool at an appended EOS token (pooling=eos)", MODEL, action="store_true")
    max_length: int | None = option(None, "keep the last N tokens (default: min(model max positions, 2048))",
                                    MODEL, type=int)
    batch_tokens: int | None = option(
        None, "padded tokens per batch (default: 1024 on CPU, where small batches stay in cache and run "
              "fastest; 32768 on CUDA)", MODEL, type=int)
    dtype: str = option("auto", "auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16", MODEL)
    device: str = option("auto", "auto | cpu | cuda | cuda:N", MODEL)
    progress: bool = option(True, "no progress bar", MODEL, flags=("--no-progress",), action="store_false",
                            record=False)
    # ---------------------------------------------------------------- projection (None: stop after encoding)
    projection: str | None = option("umap", "2-D map method", PROJECTION, flags=("--projection", "--method"),
                                    choices=("umap", "pca"))
    fit_on: str = option("train", "examples the map is fitted on", PROJECTION, choices=("train", "all"))
    n_neighbors: int = option(15, "UMAP n_neighbors", PROJECTION)
    min_dist: float = option(0.1, "UMAP min_dist", PROJECTION)
    # ---------------------------------------------------------------- distances
    metric: str = option("cosine", "distance metric of the map and of the distances to train", DISTANCES,
                         choices=("cosine", "euclidean"), flags=("--distance-metric",), aliases=("--metric",))
    k: int = option(10, "nearest train examples kept per example", DISTANCES, flags=("-k", "--k"))
    # ---------------------------------------------------------------- output
    out: str = option("", "run folder to write", OUTPUT, metavar="RUN_DIR", required=True, record=False)
    # ---------------------------------------------------------------- scale-out
    distributed: bool = option(
        False, "encode in chunks on the `llm-maps worker` processes of REDIS_URL (they must reach the --out "
               "folder's parent and the model); same result as a local build", SCALE_OUT, action="store_true")
    chunk_size: int = option(512, "prompts per distributed chunk (default 512)", SCALE_OUT)
    # ---------------------------------------------------------------- views and token atlas (pipelines/atlas.py)
    views: str = option("prompt", "prompt,completion: also encode prompt + completion + EOS (completion: the "
                                  "reference; a scored test row's output)", VIEWS)
    token_atlas: bool = option(False, "also keep every train reference token's teacher-forced state (generations "
                                      "are measured against it)", VIEWS, action="store_true")
    atlas_layers: Sequence[int] | None = option(None, "atlas layers besides the map layer", VIEWS, type=parse_layers)
    atlas_max_tokens: int = option(200_000, "cap on atlas tokens (a seeded sample of train examples above it)",
                                   VIEWS)
    completion_model: str | None = option(
        None, "encode the completion view with this model instead (any transformers model with hidden states, "
              "e.g. a reward model; pooled at the last token)", VIEWS)

    # ---------------------------------------------------------------- derived values
    @property
    def resolved_split_seed(self) -> int:
        return self.split_seed if self.split_seed is not None else (self.seed or 0)

    @property
    def resolved_map_seed(self) -> int:
        return self.map_seed if self.map_seed is not None else (self.seed or 0)

    def seed_note(self) -> str | None:
        """A note when ``seed`` drives both seeds, though the user may have meant only one."""
        if self.seed is None or (self.split_seed is not None and self.map_seed is not None):
            return None
        both = self.split_seed is None and self.map_seed is None
        which = "the train/test split and the map" if both else (
            "the train/test split" if self.split_seed is None else "the map")
        return (f"note: --seed {self.seed} seeds {which}; give --split-seed or --map-seed to change only one "
                f"(split seed {self.resolved_split_seed}, map seed {self.resolved_map_seed})")

    def record(self, *, groups: Iterable[str] | None = None, exclude_groups: Iterable[str] = ()) -> dict[str, Any]:
        """The recorded fields (of ``groups``, default all but ``exclude_groups``) as JSON-ready values."""
        return record(self, groups=groups, exclude_groups=exclude_groups)

    def replace(self, **changes: Any) -> "BuildConfig":
        return dataclasses.replace(self, **changes)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def option_of(f: "dataclasses.Field[Any]") -> Option:
    """The command-line declaration of a config field."""
    opt = f.metadata.get("cli")
    if not isinstance(opt, Option):
        raise TypeError(f"config field '{f.name}' has no Option (declare it with option(...))")
    return opt


C = TypeVar("C")


class _OldSpelling(argparse.Action):
    """An old flag that still works: stores like the new one and says which flag to use."""

    def __init__(self, *args: Any, new_flag: str = "", **kwargs: Any) -> None:
        self.new_flag = new_flag
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        import sys

        print(f"{parser.prog}: note: {option_string} is now {self.new_flag}; the old spelling still works",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def fields_of(cls: type[Any]) -> list["dataclasses.Field[Any]"]:
    """The fields of a config class that are on the command line, in declaration order."""
    return [f for f in dataclasses.fields(cls) if option_of(f).cli]


def record(config: Any, *, groups: Iterable[str] | None = None, exclude_groups: Iterable[str] = ()) -> dict[str, Any]:
    """A config's recorded fields (of ``groups``, default all but ``exclude_groups``) as JSON-ready
    values: what a stage's ``manifest.history`` entry keeps under ``params``."""
    wanted = None if groups is None else set(groups)
    skip = set(exclude_groups)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        opt = option_of(f)
        if not opt.record or (wanted is not None and opt.group not in wanted) or opt.group in skip:
            continue
        out[f.name] = _jsonable(getattr(config, f.name))
    return out


def flags_of(f: "dataclasses.Field[Any]") -> tuple[str, ...]:
    """The command-line spelling of a field: its flags (``--field-name`` by default) or, for a
    positional argument, its metavar."""
    opt = option_of(f)
    if opt.positional:
        return (opt.metavar or f.name.upper(),)
    return opt.flags or ("--" + f.name.replace("_", "-"),)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any], *, groups: Sequence[str] | None = (),
                  extra: Iterable[str] = (), defaults: Mapping[str, Any] | None = None,
                  required: bool = True) -> None:
    """Add the fields of ``cls`` in ``groups`` (None: every group), and the fields named in ``extra``,
    to ``parser``: one argparse group per config group, in field order. ``defaults`` overrides field
    defaults (and makes the field optional); ``required=False`` makes every argument optional."""
    names = set(extra)
    arg_groups: dict[str, Any] = {}
    for f in fields_of(cls):
        opt = option_of(f)
        if groups is not None and opt.group not in groups and f.name not in names:
            continue
        g = parser if opt.positional else arg_groups.get(opt.group)
        if g is None:
            g = arg_groups[opt.group] = parser.add_argument_group(opt.group)
        default = (defaults or {}).get(f.name, f.default)
        kwargs: dict[str, Any] = {"help": opt.help, "default": default}
        if opt.action in ("store_true", "store_false"):
            kwargs["action"] = opt.action
        else:
            if opt.action:
                kwargs["action"] = opt.action
            kwargs["type"] = opt.type or (type(default) if isinstance(default, (int, float)) and
                                          not isinstance(default, bool) else str)
            if opt.choices:
                kwargs["choices"] = list(opt.choices)
            if opt.nargs:
                kwargs["nargs"] = opt.nargs
            if opt.metavar:
                kwargs["metavar"] = opt.metavar
            if opt.required and required and f.name not in (defaults or {}) and not opt.positional:
                kwargs["required"] = True
        if opt.positional:
            g.add_argument(f.name, **kwargs)
            continue
        flags = flags_of(f)
        g.add_argument(*flags, dest=f.name, **kwargs)
        for old in opt.aliases:
            alias = {k: v for k, v in kwargs.items() if k not in ("help", "required", "action")}
            g.add_argument(old, dest=f.name, help=argparse.SUPPRESS, action=_OldSpelling, new_flag=flags[0], **alias)


def config_values(cls: type[Any], args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` that ``args`` has (those its parser was given by ``add_arguments``)."""
    return {f.name: getattr(args, f.name) for f in fields_of(cls) if hasattr(args, f.name)}


def from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """``cls`` from a parsed namespace; fields the parser did not have keep their defaults."""
    return cls(**{**config_values(cls, args), **overrides})
