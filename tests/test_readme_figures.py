"""The README's figures of the demo run come from the code (tools/readme_figures.py): its stage-time
line, its findings (p-values included) and its export sizes are what the code prints, and the
marked blocks of README.md and docs/*.md are rewritten or checked against them. The mechanism is
tested on a small run built here; the check against the real demo run is skipped where
data/runs/demo has not been built."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from dashboard.synthetic import write_synthetic_run

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "tools" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = write_synthetic_run(tmp_path_factory.mktemp("figures") / "demo", 300, layers=(1, 2), seed=3, n_tasks=14)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["encoding"] = {"seconds": 12.34}  # what a build records
    manifest["projection"] = {**manifest["projection"], "seconds": 1.5}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_the_figures_are_what_the_code_prints(run):
    from llm_maps.findings import findings_run

    tool = _tool()
    values = tool.figures(run)
    assert values["stage-times"] == "`stage times encode 12.3 s, project 1.5 s (total 0.2 min)`"
    result = findings_run(run, robustness=False, write=False, progress=False)
    text = values["findings"]
    assert text.startswith("```\n") and text.endswith("\n```")
    lines = text.splitlines()
    assert "\n".join(lines[1:]).startswith("\n".join(textwrap.wrap(result["verdict"], 115, break_on_hyphens=False)))
    con = result["contrast"]
    assert f"p = {con['p_value']:.3g}" in text  # the p-value the README shows is the code's
    assert any(line.startswith("  pooled ") for line in lines) and any(line.startswith("  domain ") for line in lines)
    assert "(slope =" not in text and "note:" not in text
    assert values["findings-contrast"] == "```\n" + "\n".join(
        line for line in lines if line.startswith(("contrast ", "  pooled", "  within", "  between"))) + "\n```"
    sizes = values["export-sizes"]
    from dashboard.export import export_html

    inline = export_html(run, run.parent / "a.html").stat().st_size
    cdn = export_html(run, run.parent / "b.html", plotlyjs="cdn").stat().st_size
    assert sizes.startswith(f"On the demo run: {inline / 1e6:.2f} MB with plotly.js inlined (")
    assert sizes.endswith(f"gzipped), {cdn / 1e6:.2f} MB with `--plotlyjs cdn`.")


def test_the_marked_blocks_are_rewritten_and_checked(run, tmp_path):
    tool = _tool()
    readme = tmp_path / "README.md"
    doc = tmp_path / "page.md"
    readme.write_text("# Demo\n\nIt printed:\n\n<!-- figures:stage-times -->\n`stage times encode 1.0 s`\n"
                      "<!-- /figures:stage-times -->\n\nMore text.\n", encoding="utf-8")
    doc.write_text("Export:\n<!-- figures:export-sizes -->\nold sizes\n<!-- /figures:export-sizes -->\n"
                   "<!-- figures:findings -->\n```\nold\n```\n<!-- /figures:findings -->\n"
                   "<!-- figures:findings-contrast -->\n```\nold\n```\n<!-- /figures:findings-contrast -->\n"
                   "<!-- figures:idle-memory -->\nmeasured by hand\n<!-- /figures:idle-memory -->\n", encoding="utf-8")
    args = ["--run", str(run), "--files", str(readme), str(doc)]
    assert tool.main([*args, "--check"]) == 1  # drifted: nothing written
    assert "encode 1.0 s" in readme.read_text()
    assert tool.main(args) == 0
    values = tool.figures(run)
    assert tool.blocks(readme.read_text()) == {"stage-times": values["stage-times"]}
    got = tool.blocks(doc.read_text())
    assert {k: got[k] for k in ("export-sizes", "findings", "findings-contrast")} == \
        {k: values[k] for k in ("export-sizes", "findings", "findings-contrast")}
    assert got["idle-memory"] == "measured by hand"  # measured only with --memory
    assert readme.read_text().endswith("<!-- /figures:stage-times -->\n\nMore text.\n")
    assert tool.main([*args, "--check"]) == 0
    # a figure whose markers were lost is an error, not silently dropped
    readme.write_text("# Demo\n", encoding="utf-8")
    assert tool.main([*args, "--check"]) == 1
    assert tool.memory_line({"1 llm-maps serve x": 300.0, "2 llm-maps worker y": 1500.0, "total": 1800.0}).startswith(
        "Once built and idle, the demo's process tree holds 1.80 GB resident (llm-maps serve x 300 MB, "
        "llm-maps worker y 1,500 MB)")


@pytest.mark.skipif(not (ROOT / "data" / "runs" / "demo" / "manifest.json").exists(),
                    reason="the demo run is not built (llm-maps demo --no-serve)")
def test_the_readme_shows_what_the_code_prints_for_the_demo():
    tool = _tool()
    assert tool.main(["--check"]) == 0, "run python tools/readme_figures.py"
