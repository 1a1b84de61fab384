"""Commands that run a model: build, encode, project, neighbours, atlas, score, finetune, lm-eval.

Each takes its stage's config (``llm_maps.stages``) and calls the pipeline function; pipelines
import torch only inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any, Callable

from llm_maps.conditions import format_summary, parse_conditions, summarize, with_examples
from llm_maps.config import BuildConfig, option_of, record
from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import Run, read_manifest
from llm_maps.stages import (STAGES, AtlasConfig, DemoDataConfig, EncodeConfig, FinetuneConfig, ImportLmevalConfig,
                             LmevalConfig, NeighboursConfig, ProjectConfig, ScoreConfig, _LmevalCommon)
from pipelines import demo_data
from pipelines.atlas import atlas_run, encode_view_run
from pipelines.build import build_run, restage_run, summarize_run
from pipelines.conditions import score_conditions
from pipelines.finetune import finetune
from pipelines.lmeval import build_lmeval_run, run_lmeval
from pipelines.score import score_run
from pipelines.sources import parse_columns

from .common import log


def cmd_build(cfg: BuildConfig) -> int:
    print(summarize_run(build_run(cfg, log=log)))
    return 0


def cmd_encode(cfg: EncodeConfig) -> int:
    if cfg.run is not None:
        return _encode_view(cfg)
    missing = [f"--{n}" for n in ("model", "data", "out") if not getattr(cfg, n)]
    if missing:
        raise LLMMapsError(f"encode: give {', '.join(missing)} (or RUN_DIR --view completion for an existing run)")
    build = BuildConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(BuildConfig)})
    print(summarize_run(build_run(build.replace(projection=None), log=log)))
    return 0


def _encode_view(cfg: EncodeConfig) -> int:
    if not cfg.view:
        raise LLMMapsError("encode RUN_DIR: give --view completion (to build a new run use --model, --data, --out)")
    assert cfg.run is not None
    encode_view_run(cfg.run, view=cfg.view, completion_model=cfg.completion_model, batch_tokens=cfg.batch_tokens,
                    dtype=cfg.dtype, device=cfg.device, distributed=cfg.distributed, chunk_size=cfg.chunk_size,
                    progress=cfg.progress, log=log, given=record(cfg))
    print(summarize_run(cfg.run))
    return 0


def cmd_atlas(cfg: AtlasConfig) -> int:
    atlas_run(cfg.run, atlas_layers=cfg.atlas_layers, atlas_max_tokens=cfg.atlas_max_tokens,
              batch_tokens=cfg.batch_tokens, dtype=cfg.dtype, device=cfg.device, seed=cfg.seed,
              distributed=cfg.distributed, chunk_size=cfg.chunk_size, progress=cfg.progress, log=log,
              given=record(cfg))
    print(summarize_run(cfg.run))
    return 0


def cmd_project(cfg: ProjectConfig) -> int:
    restage_run(cfg.run, stage="project", method=cfg.projection, fit_on=cfg.fit_on, seed=cfg.seed,
                layer=cfg.layer, n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, given=record(cfg))
    print(summarize_run(cfg.run))
    return 0


def cmd_neighbours(cfg: NeighboursConfig) -> int:
    restage_run(cfg.run, stage="neighbours", k=cfg.k, metric=cfg.metric, layer=cfg.layer, given=record(cfg))
    print(summarize_run(cfg.run))
    return 0


def score_arguments(cfg: ScoreConfig) -> dict[str, Any]:
    """``score_run``'s keyword arguments from the `score` config."""
    return dict(splits=cfg.split_list, generate=cfg.generate, metric=cfg.metric, thresholds=cfg.threshold,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                batch_size=cfg.batch_size, mc_output=cfg.mc_output, dtype=cfg.dtype, device=cfg.device,
                distributed=cfg.distributed, chunk_size=cfg.chunk_size, progress=cfg.progress, log=log,
                given=record(cfg))


def cmd_score(cfg: ScoreConfig) -> int:
    if cfg.conditions:
        return _score_conditions(cfg)
    result = score_run(cfg.run, **score_arguments(cfg))
    print(summarize_run(cfg.run))
    print("metrics    " + ", ".join(f"{m}: {n}" for m, n in result["by_metric"].items())
          + f" (thresholds: {', '.join(f'{m} {t:g}' for m, t in result['thresholds'].items())})")
    return 0


def _score_conditions(cfg: ScoreConfig) -> int:
    """`score RUN --conditions ...`: today's scoring first when the run has none (or --generate
    always), then every other condition; already scored (example, condition) rows are skipped."""
    conds = parse_conditions(cfg.conditions or "")  # a bad list fails before any model is loaded
    if "direct" in [c.name for c in conds] and (cfg.generate == "always" or not read_manifest(cfg.run).get("scoring")):
        score_run(cfg.run, **score_arguments(cfg))
    score_conditions(cfg.run, conditions=[c.name for c in conds], cot_cue=cfg.cot_cue,
                     cot_max_new_tokens=cfg.cot_max_new_tokens, limit_per_task=cfg.limit_per_task,
                     tasks=[t.strip() for t in cfg.tasks.split(",") if t.strip()] if cfg.tasks else None,
                     rescore=cfg.rescore or cfg.generate == "always", batch_size=cfg.batch_size,
                     dtype=cfg.dtype, device=cfg.device, distributed=cfg.distributed, chunk_size=cfg.chunk_size,
                     progress=cfg.progress, log=log, given=record(cfg))
    try:
        print(format_summary(summarize(with_examples(Run(cfg.run)), n_boot=1000, slopes=False)))
    except LLMMapsError as exc:
        print(f"summary: {exc}")
    return 0


def _lmeval_kwargs(cfg: _LmevalCommon) -> dict[str, Any]:
    """``build_lmeval_run``'s keyword arguments: the build settings the command shows, and its own."""
    st = STAGES["import-lmeval"]
    names = [f.name for f in dataclasses.fields(BuildConfig)
             if option_of(f).group in (st.fields or ()) or f.name in (*st.extra, "out", "test_size", "seed")]
    build = {name: getattr(cfg, name) for name in names}
    return dict(results=cfg.results, lmeval_metric=cfg.lmeval_metric, threshold=cfg.threshold, train=cfg.train,
                train_template=build.pop("template"), columns=parse_columns(cfg.columns) if cfg.columns else None,
                log=log, **build)


def cmd_import_lmeval(cfg: ImportLmevalConfig) -> int:
    print(summarize_run(build_lmeval_run(samples_files=list(cfg.samples or ()), **_lmeval_kwargs(cfg))))
    return 0


def cmd_lmeval(cfg: LmevalConfig) -> int:
    with tempfile.TemporaryDirectory(prefix="llm-maps-lmeval-") as tmp:
        files = run_lmeval(model=cfg.model, tasks=[t.strip() for t in cfg.tasks.split(",") if t.strip()],
                           output_dir=Path(cfg.samples_dir) if cfg.samples_dir else Path(tmp),
                           include_path=cfg.include_path, limit=cfg.lmeval_limit,
                           batch_size=cfg.lmeval_batch_size, device=cfg.device)
        run = build_lmeval_run(samples_files=files, **_lmeval_kwargs(cfg))
    print(summarize_run(run))
    return 0


def cmd_make_demo_data(cfg: DemoDataConfig) -> int:
    argv = [*(["--bigbench-dir", cfg.bigbench_dir] if cfg.bigbench_dir else []),
            *(["--out", cfg.out] if cfg.out else []), "--seed", str(cfg.seed)]
    return demo_data.main(argv) or 0


def cmd_finetune(cfg: FinetuneConfig) -> int:
    print(finetune(cfg.run, cfg.out, cfg, log=log))
    return 0


COMMANDS: dict[str, Callable[[Any], int]] = {
    "build": cmd_build, "encode": cmd_encode, "atlas": cmd_atlas, "project": cmd_project,
    "neighbours": cmd_neighbours, "score": cmd_score, "import-lmeval": cmd_import_lmeval, "lmeval": cmd_lmeval,
    "make-demo-data": cmd_make_demo_data, "finetune": cmd_finetune,
}
