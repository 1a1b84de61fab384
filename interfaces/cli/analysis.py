"""Commands that read and analyse runs (no model needed): info, falloff, findings, conditions,
probe, compare, export, regions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

from dashboard.compare_figures import compare_html
from dashboard.export import export_html
from dashboard.findings_view import write_findings_html
from dashboard.userpoints import load_points
from llm_maps.comparison import PROBE_TARGETS, compare_runs, format_compare, format_probes, probe_run
from llm_maps.conditions import format_summary, summarize, with_examples
from llm_maps.config import record
from llm_maps.errors import LLMMapsError
from llm_maps.findings import findings_run, format_findings
from llm_maps.jobs import default_state_dir
from llm_maps.runfolder import MANIFEST, Run, RunIds, check_writable, file_digest, history_entry, run_name, write_json_atomic
from llm_maps.regions import format_regions, run_regions
from llm_maps.stages import (CompareConfig, ConditionsConfig, ExportConfig, FalloffConfig, FindingsConfig,
                             InfoConfig, ProbeConfig, RegionsConfig)
from pipelines.build import summarize_run
from pipelines.falloff_run import falloff_run, format_falloff


def cmd_info(cfg: InfoConfig) -> int:
    for i, run in enumerate(cfg.runs):
        if i:
            print()
        print(summarize_run(run))
    return 0


def cmd_falloff(cfg: FalloffConfig) -> int:
    result = falloff_run(cfg.run, n_bins=cfg.bins, layers=cfg.layers,
                         metrics=[m.strip() for m in cfg.metrics.split(",") if m.strip()], split=cfg.split,
                         condition=cfg.condition)
    print(format_falloff(result))
    return 0


def cmd_findings(cfg: FindingsConfig) -> int:
    result = findings_run(cfg.run, layer=cfg.layer, metric=cfg.metric, view=cfg.view, centred=cfg.centred,
                          contrast=cfg.contrast_list, n_boot=cfg.bootstrap, seed=cfg.seed, split=cfg.split,
                          robustness=cfg.robustness, progress=cfg.progress, condition=cfg.condition,
                          given=record(cfg))
    print(format_findings(result))
    if cfg.json:
        write_json_atomic(cfg.json, result)
    if cfg.html:
        out = write_findings_html(result, cfg.html, title=Path(cfg.run).resolve().name)
        print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_conditions(cfg: ConditionsConfig) -> int:
    contrast = [c.strip() for c in cfg.contrast.split(",")] if cfg.contrast else ["Chollet", "Reasoning"]
    summary = summarize(with_examples(Run(cfg.run)), baseline=cfg.baseline, n_boot=cfg.bootstrap, seed=cfg.seed,
                        contrast=contrast)
    if cfg.json == "-":
        print(json.dumps(summary, indent=1))
        return 0
    print(format_summary(summary))
    if cfg.json:
        write_json_atomic(cfg.json, summary)
    return 0


def cmd_probe(cfg: ProbeConfig) -> int:
    targets = [t.strip() for t in cfg.targets.split(",") if t.strip()] if cfg.targets else list(PROBE_TARGETS)
    run = Run(cfg.run)
    # kept in RUN/probes.json with a history entry; a read-only run is refused before the probes run,
    # unless --json FILE takes the result elsewhere
    result = probe_run(run, layers=cfg.layers, targets=targets, folds=cfg.folds, max_dim=cfg.max_dim, seed=cfg.seed,
                       progress=cfg.progress, n_boot=cfg.bootstrap, save=not cfg.json or _writable(run.path),
                       given=record(cfg))
    if cfg.json:
        write_json_atomic(cfg.json, result)
    print(format_probes(result))
    return 0


def _writable(path: Path) -> bool:
    try:
        check_writable(path, [])
        return True
    except LLMMapsError:
        return False


def provenance(cfg: Any, runs: list[Run]) -> dict[str, Any]:
    """What produced a file written outside any run (``compare --json``): the parameters, the runs it
    read with their manifests' content hashes, the package versions and the time."""
    entry = history_entry("compare", record(cfg), {"runs": {str(r.path): file_digest(r.path / MANIFEST)
                                                            for r in runs}}, [])
    return {"params": entry["params"], "inputs": entry["inputs"], "versions": entry["versions"],
            "created": entry["created"]}


def cmd_compare(cfg: CompareConfig) -> int:
    if len(cfg.runs) < 2:
        raise LLMMapsError("compare: give at least two runs")
    runs = [Run(r) for r in cfg.runs]
    result = compare_runs(runs, axis=cfg.axis, n_bins=cfg.bins, cka="use" if cfg.cka else "skip",
                          cka_between=cfg.cka_between, progress=cfg.progress)
    if cfg.probes:
        for run in runs:
            probe_run(run, folds=cfg.folds, progress=cfg.progress)
    if cfg.json:
        write_json_atomic(cfg.json, {**result, "provenance": provenance(cfg, runs)})
    if cfg.html:
        out = compare_html(runs, result, cfg.html)
        print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    print(format_compare(result))
    return 0


def cmd_export(cfg: ExportConfig) -> int:
    if not cfg.html:
        raise LLMMapsError("export: give --html FILE")
    points = None
    if cfg.points:
        ids = None if cfg.points == "all" else [i for i in cfg.points.split(",") if i.strip()]
        state = Path(cfg.state) if cfg.state else default_state_dir([cfg.run])
        run_id = RunIds(state).known(cfg.run) or run_name(cfg.run)  # the id its points were saved under
        points = load_points(run_id, state, ids, run_dirs=[cfg.run])
    out = export_html(cfg.run, cfg.html, max_points=cfg.max_points, plotlyjs=cfg.plotlyjs, points=points,
                      compare=cfg.compare)
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_regions(cfg: RegionsConfig) -> int:
    result = run_regions(cfg.run, layer=cfg.layer, view=cfg.view, min_size=cfg.min_size, seed=cfg.seed,
                         json_path=cfg.json, given=record(cfg))
    print(format_regions(result))
    return 0


COMMANDS: dict[str, Callable[[Any], int]] = {
    "regions": cmd_regions, "info": cmd_info, "falloff": cmd_falloff, "findings": cmd_findings, "conditions": cmd_conditions,
    "probe": cmd_probe, "compare": cmd_compare, "export": cmd_export,
}
