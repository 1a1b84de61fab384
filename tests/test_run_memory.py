"""How the dashboard holds a run in memory (dashboard/data.py, llm_maps.runfolder ``arrow_lists``):
list columns as Arrow arrays, category columns as codes, example ids looked up without a dict,
one example's text without the whole column; each read back equal to the plain pandas read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboard.data import RunData, own_texts
from dashboard.synthetic import synthetic_frame, write_synthetic_run
from llm_maps.runfolder import EXAMPLES, Run, write_parquet_atomic


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = write_synthetic_run(tmp_path_factory.mktemp("mem") / "run", 300, seed=3)
    frame = pd.read_parquet(path / EXAMPLES)
    # instruction/context as Dolly has them: both, one of them, neither (then the prompt is the text)
    frame["instruction"] = pd.array([["  Add them. ", "Name it", "", None][i % 4] for i in range(len(frame))],
                                    dtype="string")
    frame["context"] = pd.array([["1 and 2", "", " ctx ", None, ""][i % 5] for i in range(len(frame))], dtype="string")
    frame.loc[7, "nn_train_ids"] = None  # a row without neighbours
    write_parquet_atomic(path / EXAMPLES, frame)
    return path


def test_arrow_lists_read_the_same_values_as_pandas(run):
    plain, arrow = Run(run).examples, Run(run, arrow_lists=True).examples
    assert list(arrow.columns) == list(plain.columns)
    assert isinstance(arrow["nn_train_ids"].dtype, pd.ArrowDtype) and not isinstance(plain["nn_train_ids"].dtype,
                                                                                       pd.ArrowDtype)
    for col in ("nn_train_ids", "nn_train_dists"):
        for a, b in zip(arrow[col], plain[col]):
            assert (a is pd.NA) if b is None else list(a) == list(b)  # a missing list: pd.NA in Arrow
    others = [c for c in plain.columns if c not in ("nn_train_ids", "nn_train_dists")]
    pd.testing.assert_frame_equal(arrow[others], plain[others])


def test_the_dashboard_frame_keeps_every_value(run):
    data, plain = RunData(run, "run"), Run(run).examples
    for col in ("split", "domain", "task", "category"):
        assert isinstance(data.frame[col].dtype, pd.CategoricalDtype)
        assert data.frame[col].astype(str).tolist() == plain[col].astype(str).tolist()
        assert (data.frame[col] == plain[col].iloc[5]).tolist() == (plain[col] == plain[col].iloc[5]).tolist()
    assert data.is_train.tolist() == (plain["split"] == "train").tolist()


def test_rows_of_example_ids_as_a_dict_over_the_column_gives_them(run):
    data = RunData(run, "run")
    index = {v: i for i, v in enumerate(data.frame["example_id"].astype(str))}
    ids = ["ex-0000299", "ex-0000000", "nope", "ex-0000150", "ex-0000000"]
    assert data.rows_of(ids) == {i: index[i] for i in ids if i in index} == {"ex-0000299": 299, "ex-0000000": 0,
                                                                             "ex-0000150": 150}
    assert data.rows_of([]) == {} and data.row_of(None) is None and data.row_of("nope") is None
    assert data.row_of("ex-0000042") == 42
    plain = Run(run).examples
    for row in (0, 7, 11):
        want = [] if plain["nn_train_ids"].iloc[row] is None else [index[i] for i in plain["nn_train_ids"].iloc[row]]
        assert [r for r, _ in data.neighbours(row)] == want
        assert [d for _, d in data.neighbours(row)] == pytest.approx(
            [] if not want else list(plain["nn_train_dists"].iloc[row][:len(want)]))


def test_one_examples_text_is_the_texts_columns_row(run):
    fresh = RunData(run, "run")
    singles = [fresh.text_of(r) for r in range(fresh.n)]  # before ``texts`` is built
    assert "texts" not in fresh._lazy
    texts = fresh.texts
    assert singles == list(texts)
    # the rule itself: instruction, a blank line, context; either alone; else the prompt
    assert texts[0] == "Add them.\n\n1 and 2" and texts[1] == "Name it" and texts[2] == "ctx"
    assert texts[3] == str(fresh.frame["prompt"].iloc[3]).strip() and texts[5] == "Name it\n\n1 and 2"
    frame = synthetic_frame(4, seed=1).drop(columns=["nn_train_ids"])
    assert list(own_texts(frame)) == [p.strip() for p in frame["prompt"]]  # a run with neither column
    assert np.array_equal(own_texts(frame.iloc[[2]]), own_texts(frame)[[2]])


def test_serve_gives_arrow_the_c_librarys_allocator_unless_told_otherwise():
    """`llm-maps serve` (interfaces.cli, imported with "serve" as its first argument) sets Arrow's
    allocator before pyarrow loads: the C library's, whose freed memory release_freed_memory gives
    back (mimalloc kept ~60 MB of a million-row read); a value set in the environment wins; the
    other verbs, and Python code importing the module, keep pyarrow's own."""
    import os
    import subprocess
    import sys

    code = "import interfaces.cli, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}

    def backend(*argv, **extra):
        return subprocess.run([sys.executable, "-c", code, *argv], env={**env, **extra}, capture_output=True,
                              text=True, check=True).stdout.strip()

    own = subprocess.run([sys.executable, "-c", "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert own != "system"
    assert backend("serve", "data/runs") == "system"
    assert backend("serve", ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"
    assert backend("build", "--help") == backend() == own


def test_the_web_process_limits_its_malloc_arenas_unless_told_otherwise():
    """dashboard.app.serve calls limit_malloc_arenas before its threads start: glibc's mallopt takes
    it (True); a MALLOC_ARENA_MAX in the environment wins (nothing set, False). Run in a child
    process: the setting is the process's own."""
    import os
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    code = "from dashboard.data import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def limited(**extra):
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert limited() == "True"
    assert limited(MALLOC_ARENA_MAX="4") == "False"
    import inspect

    from dashboard import app

    source = inspect.getsource(app.serve)
    assert source.index("limit_malloc_arenas()") < source.index("create_app(")
