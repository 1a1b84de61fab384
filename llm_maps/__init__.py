"""LLM Maps: where a language model's prompts live, and how accuracy falls off away from its
training data.

This package is the torch-free core: the run-folder contract, the statistics (falloff, findings,
compare, conditions, regions), the job queue, the domain map. Offline model work lives in
``pipelines``, the web app in ``dashboard``, the ways in (command line, demo, Python API) in
``interfaces``.

The Python API is re-exported here, lazily (importing ``llm_maps`` or any of its modules stays
cheap, and a view-only install never imports torch):

    import llm_maps

    run = llm_maps.open_run("data/runs/demo")
    run.findings()["verdict"]

``open_run``, ``Run``, ``compare``, ``compare_figures``, ``show``, ``Dashboard``, ``build``,
``score``, ``atlas`` and ``finetune`` are those of ``interfaces.api`` (documented there).
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

# the public names of the Python API (interfaces/api.py), imported on first use: the one import
# from this core up into the top layer (import-linter lists it as an allowed exception)
API = ("open_run", "Run", "compare", "compare_figures", "show", "Dashboard", "build", "score", "atlas", "finetune")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from interfaces import api

        return getattr(api, name)
    raise AttributeError(f"module 'llm_maps' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
