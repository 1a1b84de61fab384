"""The example notebook (docs/examples/quickstart.ipynb) runs to the end on a run the test builds,
and ``llm_maps.show`` serves the dashboard from a Jupyter kernel (Dash's Jupyter mode)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dashboard.synthetic import write_synthetic_run

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "examples" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two scored runs over the same examples (a small and a larger synthetic model)."""
    root = tmp_path_factory.mktemp("nb")
    small = write_synthetic_run(root / "small", 240, layers=(1, 2), seed=5)
    large = write_synthetic_run(root / "large", 240, layers=(1, 2, 3), seed=5, hidden=24)
    return small, large


def _execute(nb, cwd: Path, env: dict[str, str], monkeypatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_the_quickstart_notebook_runs_on_a_built_run(two_runs, tmp_path, monkeypatch):
    from llm_maps.findings import findings_run

    small, large = two_runs
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _execute(nb, tmp_path, {"LLM_MAPS_RUN": str(small), "LLM_MAPS_COMPARE_RUNS": f"{small}{os.pathsep}{large}"},
             monkeypatch)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # the findings verdict the notebook prints is the one `llm-maps findings` computes
    assert findings_run(small, write=False, progress=False)["verdict"] in text
    assert "no runs to compare" not in text
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    # falloff, findings curves, the custom figure, and the comparison's accuracy and falloff
    assert len(figures) == 5
    titles = [str(((f["data"]["application/vnd.plotly.v1+json"].get("layout") or {}).get("title") or {}).get("text"))
              for f in figures]
    assert any("accuracy vs distance to train" in t for t in titles)
    assert any("Accuracy per task" in t for t in titles)
    assert not (small / "findings.json").exists()  # reading a run writes nothing into it


def test_show_serves_the_dashboard_from_a_jupyter_kernel(two_runs, tmp_path, monkeypatch):
    small, _ = two_runs
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import urllib.request\n"
        "import llm_maps\n"
        f"board = llm_maps.show({str(small)!r}, block=False, height=500)\n"
        "print('status', urllib.request.urlopen(board.url + 'map', timeout=60).status)\n"
        "board.stop()\n"
        "try:\n"
        "    urllib.request.urlopen(board.url + 'map', timeout=5)\n"
        "    print('still serving')\n"
        "except OSError:\n"
        "    print('stopped')\n")])
    _execute(nb, tmp_path, {}, monkeypatch)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"], outputs
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "<iframe" in html and 'height="500"' in html  # drawn inline in the cell
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "status 200" in text and "stopped" in text
