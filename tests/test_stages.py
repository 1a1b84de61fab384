"""Every stage declared once (llm_maps/stages.py): its flags and --help, its history entry and its
row in docs/commands.md come from the config class; the layers and circles checked by
import-linter; one way to write into a run (record_stage)."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from interfaces.cli import HANDLERS, main, make_parser
from llm_maps.config import fields_of, flags_of, from_args, option, option_of, record
from llm_maps.runfolder import check_writable, file_digest, read_manifest, record_stage
from llm_maps.stages import COMMANDS_DOC, STAGES, FindingsConfig, commands_document, commands_table, stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from dashboard.synthetic import write_synthetic_run

    return write_synthetic_run(tmp_path_factory.mktemp("stages") / "run", n=240)


def _subparser(parser, name):
    return parser._subparsers._group_actions[0].choices[name]  # noqa: SLF001


def test_every_declared_stage_has_a_command_a_handler_and_a_docs_section():
    parser = make_parser()
    assert set(HANDLERS) == set(STAGES)
    doc = commands_document()
    for name, st in STAGES.items():
        help_text = _subparser(parser, name).format_help()
        assert f"### `llm-maps {name}`" in doc
        for f in fields_of(st.config):
            opt = option_of(f)
            if st.fields is not None and opt.group not in st.fields and f.name not in st.extra:
                continue
            spelling = flags_of(f)[0]
            assert spelling in help_text, (name, f.name)
            assert f"`{spelling}`" in commands_table(name), (name, f.name)


def test_docs_commands_md_is_generated_from_the_declarations():
    assert COMMANDS_DOC.read_text(encoding="utf-8") == commands_document(), \
        "docs/commands.md is stale: python -m llm_maps.stages --write"


def test_a_field_added_to_a_config_appears_in_flags_history_and_docs(tiny_run, tmp_path, monkeypatch):
    """One change (a field) reaches the command line, the history entry and the docs table."""

    @dataclasses.dataclass(frozen=True)
    class FindingsPlus(FindingsConfig):
        shrink: float = option(0.5, "shrinkage of the slope towards 0", "findings")

    monkeypatch.setitem(STAGES, "findings", dataclasses.replace(STAGES["findings"], config=FindingsPlus))
    args = make_parser().parse_args(["findings", "RUN", "--shrink", "0.25", "--bootstrap", "10"])
    cfg = from_args(FindingsPlus, args)
    assert cfg.shrink == 0.25 and cfg.bootstrap == 10 and cfg.run == "RUN"
    assert "--shrink SHRINK" in _subparser(make_parser(), "findings").format_help()
    assert "| `--shrink` | `0.5` | yes | shrinkage of the slope towards 0 |" in commands_table("findings")
    # the history entry keeps the config as given: through record_stage, into the manifest
    run = shutil.copytree(tiny_run, tmp_path / "r")
    entry = record_stage(run, "findings", {"layer": 4}, outputs={"findings.json": {"ok": 1}}, given=record(cfg),
                         seed=cfg.seed)
    assert entry["params"]["given"]["shrink"] == 0.25 and entry["params"]["seed"] == 0
    assert read_manifest(run)["history"][-1]["params"]["given"]["shrink"] == 0.25
    assert "run" not in entry["params"]["given"] and "json" not in entry["params"]["given"]  # how, not what


def test_every_stage_that_writes_into_a_run_keeps_its_config_as_given(tiny_run, tmp_path, monkeypatch):
    """Through the command line: a field added to a stage's config reaches its history entry too."""
    from llm_maps.stages import ProjectConfig

    @dataclasses.dataclass(frozen=True)
    class ProjectPlus(ProjectConfig):
        spread: float = option(1.0, "UMAP spread", "projection")

    monkeypatch.setitem(STAGES, "project", dataclasses.replace(STAGES["project"], config=ProjectPlus))
    run = shutil.copytree(tiny_run, tmp_path / "r")
    assert main(["project", str(run), "--projection", "pca", "--spread", "2.5", "--map-seed", "3"]) == 0
    entry = read_manifest(run)["history"][-1]
    assert entry["stage"] == "project" and entry["params"]["seed"] == 3
    assert entry["params"]["given"] == {"projection": "pca", "fit_on": "train", "n_neighbors": 15, "min_dist": 0.1,
                                        "layer": None, "seed": 3, "spread": 2.5}
    assert entry["inputs"]["files"]["examples.parquet"].startswith("sha256:")
    assert main(["neighbours", str(run), "-k", "2"]) == 0
    assert read_manifest(run)["history"][-1]["params"]["given"] == {"metric": "cosine", "k": 2, "layer": None}


def test_the_two_metrics_have_their_own_names_and_the_old_spelling_says_which(capsys):
    parser = make_parser()
    score = parser.parse_args(["score", "R", "--score-metric", "exact"])
    assert score.metric == "exact"
    old = parser.parse_args(["score", "R", "--metric", "rougeL"])
    assert old.metric == "rougeL"
    assert "--metric is now --score-metric; the old spelling still works" in capsys.readouterr().err
    findings = parser.parse_args(["findings", "R", "--metric", "euclidean"])
    assert findings.metric == "euclidean"
    assert "--metric is now --distance-metric" in capsys.readouterr().err
    assert parser.parse_args(["neighbours", "R", "--distance-metric", "euclidean"]).metric == "euclidean"
    with pytest.raises(SystemExit):  # the old spelling keeps the new one's choices
        parser.parse_args(["findings", "R", "--metric", "manhattan"])
    assert "--metric" not in _subparser(parser, "score").format_help()  # only the new name is advertised


def test_a_new_stage_is_one_declaration_and_one_handler(monkeypatch, capsys):
    @dataclasses.dataclass(frozen=True)
    class EchoConfig:
        word: str = option("", "what to say", "echo", positional=True, metavar="WORD")
        times: int = option(1, "how often", "echo")

    monkeypatch.setattr("llm_maps.stages.STAGES", dict(STAGES))
    import llm_maps.stages as stages_module

    stage("echo", "say a word")(EchoConfig)
    monkeypatch.setattr("interfaces.cli.STAGES", stages_module.STAGES)
    monkeypatch.setitem(HANDLERS, "echo", lambda cfg: print(" ".join([cfg.word] * cfg.times)) or 0)
    assert main(["echo", "hi", "--times", "3"]) == 0
    assert capsys.readouterr().out.strip() == "hi hi hi"


# ------------------------------------------------------------------------------ writing into a run


def _read_only(path: Path) -> bool:
    """Make ``path`` read-only; False when this process can write there anyway (root ignores modes,
    so the immutable attribute is tried)."""
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        check_writable(path, [])
    except Exception:  # noqa: BLE001
        return True
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
        return True
    return False


def _writable_again(path: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("command", [["findings", "--bootstrap", "20", "--no-robustness"], ["probe", "--folds", "2"]])
def test_writing_into_a_read_only_run_fails_in_one_line_and_leaves_it_as_it_was(tiny_run, tmp_path, command):
    run = tmp_path / "ro"
    shutil.copytree(tiny_run, run)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    if not _read_only(run):
        _writable_again(run)
        pytest.skip("this process can write into read-only folders (root without chattr)")
    try:
        proc = subprocess.run([sys.executable, "-m", "interfaces.cli", command[0], str(run), *command[1:]],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
    finally:
        _writable_again(run)
    err = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    assert proc.returncode == 2, proc.stderr
    assert len(err) == 1 and err[0].startswith(f"llm-maps {command[0]}: error: {run}: cannot write"), proc.stderr
    assert "--json FILE" in err[0] and "Traceback" not in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_record_stage_hashes_inputs_and_writes_atomically(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "r")
    (run / "examples.parquet").write_bytes(b"rows")
    entry = record_stage(run, "probe", {"folds": 2}, outputs={"probes.json": {"a": 1}}, inputs=["examples.parquet"],
                         seed=7)
    import hashlib

    assert entry["inputs"]["files"] == {"examples.parquet": "sha256:" + hashlib.sha256(b"rows").hexdigest()}
    assert file_digest(run / "examples.parquet") == entry["inputs"]["files"]["examples.parquet"]
    assert entry["params"] == {"folds": 2, "seed": 7} and entry["outputs"] == ["probes.json"]
    assert json.loads((run / "probes.json").read_text()) == {"a": 1}
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary file left


# ------------------------------------------------------------------------------ the layers


def test_import_linter_keeps_the_layers_and_fails_on_a_planted_upward_import(tmp_path):
    exe = Path(sys.executable).with_name("lint-imports")
    ok = subprocess.run([str(exe)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ok.returncode == 0, ok.stdout[-3000:]
    # the same check on a copy of the code with one upward import planted in the core
    copy = tmp_path / "src"
    for pkg in ("interfaces", "pipelines", "dashboard", "llm_maps"):
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    falloff = copy / "llm_maps" / "falloff.py"
    falloff.write_text(falloff.read_text() + "\n\ndef _planted():\n    from dashboard import figures  # noqa\n")
    bad = subprocess.run([str(exe)], capture_output=True, text=True, cwd=copy, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(copy)})
    assert bad.returncode != 0
    assert "llm_maps.falloff -> dashboard.figures" in bad.stdout


def test_function_level_imports_of_our_own_modules_are_the_listed_few():
    """Only heavy third-party libraries are imported inside functions; our own modules at the top
    (where import-linter and a reader see them). The one exception: the lazy re-export of the API."""
    allowed = {("llm_maps/__init__.py", "interfaces")}
    found = []
    for pkg in ("interfaces", "pipelines", "dashboard", "llm_maps"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom):
                        mod = "." if node.level else (node.module or "")
                    elif isinstance(node, ast.Import):
                        mod = node.names[0].name
                    else:
                        continue
                    root = mod.split(".")[0]
                    rel = str(path.relative_to(ROOT))
                    if (mod == "." or root in ("interfaces", "pipelines", "dashboard", "llm_maps")) \
                            and (rel, root or ".") not in allowed:
                        found.append(f"{rel}:{node.lineno} {mod}")
    assert found == []


def test_no_function_is_longer_than_120_lines():
    long = []
    for pkg in ("interfaces", "pipelines", "dashboard", "llm_maps", "benchmarks"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 120:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []
