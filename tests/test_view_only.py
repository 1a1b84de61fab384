"""The view-only install: with the model stack unimportable (torch, transformers, umap, peft, ...),
a prebuilt run opens, its findings compute, `info`, `findings`, `compare` and `export` run, `serve`
serves the pages, the playground says what to install, and a model command says it in one line.

The model packages are made unimportable in subprocesses by a ``sitecustomize`` on PYTHONPATH whose
import finder refuses them (as if they were not installed; ``importlib.util.find_spec`` refuses
them too). The environment a plain ``pip install llm-maps`` makes is measured in the manual
(docs/install.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dashboard.synthetic import write_synthetic_run
from live_helpers import http, serving

# the [model] extra of pyproject.toml, by import name, and what it brings along
BLOCKED = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "gguf", "umap", "pynndescent", "numba",
           "peft", "rouge_score", "nltk")
INSTALL = 'pip install "llm-maps[model]"'

SITECUSTOMIZE = f"""
import sys

BLOCKED = {BLOCKED!r}


class _NoModelStack:
    \"\"\"The model stack is not installed (the view-only install).\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (view-only test)", name=name)
        return None


sys.meta_path.insert(0, _NoModelStack())
"""


def _cli_module() -> str:
    """The command line's module (``interfaces.cli``; ``llm_maps.cli`` before the move)."""
    return "interfaces.cli" if importlib.util.find_spec("interfaces.cli") else "llm_maps.cli"


@pytest.fixture(scope="module")
def view_only(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """Two prebuilt runs over the same examples, and the environment without the model stack."""
    root = tmp_path_factory.mktemp("view-only")
    small = write_synthetic_run(root / "runs" / "small", 240, layers=(1, 2), seed=5)
    large = write_synthetic_run(root / "runs" / "large", 240, layers=(1, 2, 3), seed=5, hidden=24)
    block = root / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "LLM_MAPS_STATE": str(root / "state")}
    env.pop("REDIS_URL", None)
    return small, large, env


def _python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", _cli_module(), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_the_model_stack_is_unimportable_in_the_subprocesses(view_only, tmp_path):
    _, _, env = view_only
    proc = _python("""
        import importlib.util
        for name in ("torch", "transformers", "umap", "peft"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(f"{name} imported")
        from llm_maps import model_stack
        print(model_stack.available(), model_stack.missing())
        print(model_stack.message("encoding"))
    """, env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "False ['torch', 'transformers']"
    assert lines[1] == f"encoding needs the model stack (torch, transformers not installed): {INSTALL}"


def test_the_python_api_reads_analyses_and_draws_a_run_without_torch(view_only, tmp_path):
    small, large, env = view_only
    proc = _python(f"""
        import json, sys
        import llm_maps

        run = llm_maps.open_run({str(small)!r})
        assert len(run.examples) == 240 and run.encodings(1).shape == (240, 16)
        findings = run.findings(n_boot=200)
        falloff = run.falloff()
        figures = [run.map(colour="domain"), run.falloff_figure(), *run.findings_figures(n_boot=200).values()]
        comparison = llm_maps.compare([run, {str(large)!r}], cka="skip")
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        print(json.dumps({{"verdict": findings["verdict"], "variants": len(falloff["variants"]),
                          "figures": len(figures), "runs": len(comparison["runs"]), "heavy": heavy}}))
    """, env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["verdict"] and out["variants"] == 4 and out["figures"] >= 5 and out["runs"] == 2
    assert out["heavy"] == []


def test_info_findings_compare_and_export_run_without_torch(view_only, tmp_path):
    small, large, env = view_only
    info = _cli(["info", str(small)], env, tmp_path)
    assert info.returncode == 0, info.stderr
    assert "findings" in info.stdout or "falloff" in info.stdout
    findings = _cli(["findings", str(small), "--bootstrap", "200", "--json", str(tmp_path / "f.json")], env, tmp_path)
    assert findings.returncode == 0, findings.stderr
    assert json.loads((tmp_path / "f.json").read_text())["verdict"]
    compare = _cli(["compare", str(small), str(large), "--json", str(tmp_path / "c.json")], env, tmp_path)
    assert compare.returncode == 0, compare.stderr
    assert len(json.loads((tmp_path / "c.json").read_text())["runs"]) == 2
    export = _cli(["export", str(small), "--html", str(tmp_path / "small.html")], env, tmp_path)
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "small.html").stat().st_size > 100_000  # the map, falloff and findings, plotly.js inlined


def test_a_model_command_says_in_one_line_what_to_install(view_only, tmp_path):
    small, _, env = view_only
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"q{i}", "response": f"a{i}", "category": "open_qa"}) + "\n"
                            for i in range(12)), encoding="utf-8")
    build = _cli(["build", "--model", str(tmp_path / "no-model"), "--data", str(data), "--out", str(tmp_path / "r"),
                  "--no-progress"], env, tmp_path)
    assert build.returncode == 2, build.stderr
    assert build.stderr.strip().count("\n") == 0 and INSTALL in build.stderr, build.stderr
    assert not (tmp_path / "r").exists()


def test_serve_shows_the_pages_and_the_playground_says_what_to_install(view_only, tmp_path):
    small, large, env = view_only
    with serving([str(small), str(large)], tmp_path, env=env) as srv:
        for page in ("/map", "/findings", "/falloff", "/compare", "/examples", "/runs", "/playground"):
            status, _, raw = http(f"{srv.url}{page}?run=small")
            assert status == 200 and b"_dash-" in raw, (page, srv.log())
        status, _, body = srv.call("/api/runs")
        assert status == 200 and {r["run"] for r in body["runs"]} == {"small", "large"}, body
        assert "Traceback" not in srv.log()
        # no embedded worker is started without the model stack: said once, in one line
        assert "llm-maps serve: note: no embedded worker (the playground is off): the worker needs the model " \
               "stack" in srv.log() and INSTALL in srv.log()
        assert "llm-maps worker" not in srv.log() and "cannot load run" not in srv.log()
    worker = _cli(["worker", str(small)], env, tmp_path)
    assert worker.returncode == 2 and worker.stderr.strip().count("\n") == 0 and INSTALL in worker.stderr
    # the playground's own layout: unavailable, with the line that says what to install
    proc = _python(f"""
        import sys
        import dash
        from dashboard.app import create_app

        app = create_app([{str(small)!r}], [])
        entry = next(p for p in dash.page_registry.values() if p["path"] == "/playground")
        page = sys.modules[entry["module"]]
        with app.server.test_request_context("/playground?run=small"):
            tree = page.layout(run="small")

        def walk(node):
            yield node
            kids = getattr(node, "children", None)
            for kid in (kids if isinstance(kids, (list, tuple)) else [kids] if kids is not None else []):
                yield from walk(kid)

        nodes = {{getattr(n, "id", None): n for n in walk(tree) if getattr(n, "id", None)}}
        print(nodes["pg-unavailable"].children)
        print(nodes["pg-submit"].disabled)
    """, env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    line, disabled = proc.stdout.splitlines()[-2:]
    assert INSTALL in line and "torch" in line and disabled == "True"
