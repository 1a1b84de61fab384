"""The Python API (interfaces/api.py, re-exported by ``llm_maps``): what it returns is what the
commands write and the pages draw, computed by the same code; reading a run writes nothing into it;
the model stages take the commands' parameters."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import llm_maps
from dashboard.synthetic import write_synthetic_run
from llm_maps.errors import LLMMapsError
from llm_maps.findings import findings_run
from llm_maps.runfolder import write_json_atomic


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """A scored synthetic run with a completion view."""
    root = tmp_path_factory.mktemp("api")
    run = write_synthetic_run(root / "syn", 300, layers=(1, 2), seed=3)
    (run / "encodings" / "completion").mkdir()
    rng = np.random.default_rng(0)
    for k in (1, 2):
        np.save(run / "encodings" / "completion" / f"layer_{k}.npy", rng.normal(size=(300, 16)).astype(np.float16))
    manifest = json.loads((run / "manifest.json").read_text())
    write_json_atomic(run / "manifest.json", {**manifest, "views": ["completion"]})
    return run


def test_importing_llm_maps_stays_light_and_the_api_is_re_exported():
    code = ("import sys, llm_maps, llm_maps.runfolder\n"
            "before = sorted(m for m in ('interfaces.api', 'dash', 'plotly', 'torch') if m in sys.modules)\n"
            "run_cls = llm_maps.Run\n"
            "after = sorted(m for m in ('interfaces.api', 'dash', 'plotly', 'torch') if m in sys.modules)\n"
            "print(before, after)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    before, after = out.split("] [")
    assert before == "[" and "'interfaces.api'" in after and "torch" not in after  # light until the API is used
    from interfaces import api

    plain = [n for n in llm_maps.API if n not in ("compare", "atlas")]
    assert {name: getattr(llm_maps, name) for name in plain} == {name: getattr(api, name) for name in plain}
    with pytest.raises(AttributeError):
        llm_maps.no_such_name  # noqa: B018


def test_compare_and_atlas_are_the_api_functions_beside_the_core_modules(tmp_path, monkeypatch):
    """``llm_maps.compare`` and ``llm_maps.atlas`` are the API's functions; the core modules they use
    are ``llm_maps.comparison`` and ``llm_maps.tokens`` (no name shared by a module and a function)."""
    from interfaces import api
    from llm_maps import tokens as atlas_module
    from llm_maps import comparison as CMP

    assert CMP.compare_runs and atlas_module.read_tokens  # the modules, as before
    calls = []
    monkeypatch.setattr(api, "compare", lambda runs, **kw: calls.append(("compare", runs, kw)) or "c")
    monkeypatch.setattr(api, "atlas", lambda run, **kw: calls.append(("atlas", run, kw)) or "a")
    assert llm_maps.compare(["a", "b"], cka="skip") == "c" and llm_maps.atlas("r", device="cpu") == "a"
    assert calls == [("compare", ["a", "b"], {"cka": "skip"}), ("atlas", "r", {"device": "cpu"})]


def test_open_run_examples_and_memory_mapped_encodings(syn):
    run = llm_maps.open_run(syn)
    assert llm_maps.open_run(run) is run and isinstance(run, llm_maps.Run)
    assert len(run.examples) == 300 and {"example_id", "split", "domain", "correct", "dist_to_train"} <= set(run.examples)
    assert run.views == ["prompt", "completion"] and run.layers == [1, 2] and run.default_layer == 2
    prompt, completion = run.encodings(), run.encodings(1, view="completion")
    assert isinstance(prompt, np.memmap) and prompt.shape == (300, 16) and prompt.dtype == np.float16
    assert isinstance(completion, np.memmap)
    np.testing.assert_array_equal(completion, np.load(syn / "encodings" / "completion" / "layer_1.npy"))
    with pytest.raises(LLMMapsError, match="no view 'tokens'"):
        run.encodings(view="tokens")
    with pytest.raises(LLMMapsError, match="layer 7 is not stored"):
        run.encodings(7)
    with pytest.raises(LLMMapsError, match="no such run"):
        llm_maps.open_run(syn.parent / "missing")


def test_findings_are_the_commands_and_the_stored_file_is_read_when_it_holds_the_variant(syn):
    run = llm_maps.open_run(syn)
    computed = run.findings(n_boot=300)
    assert not (syn / "findings.json").exists()  # computing writes nothing
    expected = findings_run(syn, n_boot=300, write=False, progress=False)
    assert {k: v for k, v in computed.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}
    written = run.findings(n_boot=300, write=True)
    assert json.loads((syn / "findings.json").read_text())["verdict"] == written["verdict"]
    stored = json.loads((syn / "findings.json").read_text())
    stored["verdict"] = "from the file"  # proves the file is what comes back
    write_json_atomic(syn / "findings.json", stored)
    assert run.findings(n_boot=300)["verdict"] == "from the file"
    assert run.findings(n_boot=300, stored=False)["verdict"] == expected["verdict"]
    assert run.findings(n_boot=300, layer=1)["layer"] == 1  # another variant: computed
    (syn / "findings.json").unlink()


def test_falloff_is_the_commands_and_the_stored_file_is_read_when_it_holds_the_variants(syn):
    from pipelines.falloff_run import falloff_run

    run = llm_maps.open_run(syn)
    computed = run.falloff(n_bins=4)
    assert not (syn / "falloff.json").exists()
    expected = falloff_run(syn, n_bins=4, write=False)
    assert computed["variants"] == expected["variants"] and len(computed["variants"]) == 4
    falloff_run(syn, n_bins=4)  # `llm-maps falloff --bins 4`
    saved = json.loads((syn / "falloff.json").read_text())
    saved["variants"][0]["stats"]["all"]["n"] = -1  # proves the file is what comes back
    write_json_atomic(syn / "falloff.json", saved)
    assert run.falloff(n_bins=4, layers=[1], metrics=["cosine"])["variants"][0]["stats"]["all"]["n"] == -1
    assert run.falloff(n_bins=3)["variants"][0]["stats"]["all"]["n"] > 0  # other bins: computed
    (syn / "falloff.json").unlink()


def test_figures_are_the_pages_figures(syn):
    from dashboard import figures as F
    from dashboard import findings_view as V
    from dashboard.data import _stamp, load_run
    from dashboard.falloff_view import falloff_view

    run = llm_maps.open_run(syn)
    data = load_run(str(syn), _stamp(syn), run.name)
    assert run.map(colour="domain").to_json() == F.view_figure(data, colour="domain").to_json()
    page_fig, _, _, _ = falloff_view(data, n_bins=4, mode="side")
    assert run.falloff_figure(n_bins=4, layout="side").to_json() == page_fig.to_json()
    figs = run.findings_figures(n_boot=200)
    expected = V.figures(findings_run(syn, n_boot=200, write=False, progress=False))
    assert list(figs) == list(expected)
    assert figs["findings-curves"].to_json() == expected["findings-curves"].to_json()
    with pytest.raises(LLMMapsError, match="no completion view"):  # encoded, but without a map of its own
        run.map(view="completion")
    unscored = llm_maps.open_run(write_synthetic_run(syn.parent / "unscored", 60, scored=False))
    with pytest.raises(LLMMapsError, match="no falloff to draw"):
        unscored.falloff_figure()


def test_compare_and_its_figures(tmp_path):
    small = write_synthetic_run(tmp_path / "small", 200, layers=(1, 2), seed=5)
    large = write_synthetic_run(tmp_path / "large", 200, layers=(1, 2, 3), seed=5, hidden=24)
    result = llm_maps.compare([small, llm_maps.open_run(large)], cka="skip")
    assert [r["name"] for r in result["runs"]] == ["small", "large"] and result["n_examples"] == 200
    figs = llm_maps.compare_figures(result)
    assert set(figs) == {"accuracy", "falloff"}
    other = write_synthetic_run(tmp_path / "other", 200, layers=(1,), seed=6)
    with pytest.raises(LLMMapsError, match="do not hold the same examples"):
        llm_maps.compare([small, other])


def test_stage_parameters_are_the_commands(tmp_path):
    with pytest.raises(LLMMapsError, match="unknown parameter 'max_tokens'.*did you mean 'max_new_tokens'"):
        llm_maps.score(tmp_path, max_tokens=3)
    with pytest.raises(LLMMapsError, match="build: give"):
        llm_maps.build(model="m")


def test_build_and_score_through_the_api(tiny_model, dolly_jsonl, tmp_path):
    run = llm_maps.build(model=str(tiny_model), data=dolly_jsonl, out=tmp_path / "tiny", template="dolly",
                         projection="pca", k=3, progress=False)
    assert isinstance(run, llm_maps.Run) and run.examples["correct"].isna().all()
    history = {h["stage"]: h for h in run.manifest["history"]}
    assert history["encode"]["params"]["model"] == str(tiny_model)
    assert run.manifest["projection"]["method"] == "pca"
    scored = llm_maps.score(run, max_new_tokens=3, progress=False)
    assert scored.examples.loc[scored.examples["split"] == "test", "correct"].notna().all()


def test_show_outside_jupyter_serves_until_stopped(syn, capsys):
    import urllib.request

    board = llm_maps.show(syn, block=False)
    assert urllib.request.urlopen(board.url + "map", timeout=60).status == 200
    assert urllib.request.urlopen(board.url + "api/runs", timeout=60).status == 200
    board.stop()
    with pytest.raises(OSError):  # refused (URLError) or reset
        urllib.request.urlopen(board.url + "map", timeout=5)
    assert f"dashboard on {board.url}" in capsys.readouterr().out
