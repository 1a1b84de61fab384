"""Whether the model stack is installed, and the one line that says how to get it.

``pip install llm-maps`` is the view-only install: it reads, analyses and shows runs (the core, the
dashboard without the playground, ``info``, ``findings``, ``compare``, ``export``, ``serve``).
Encoding, scoring, maps fitted with UMAP, fine-tuning and the worker need the ``[model]`` extra
(torch, transformers, ...). Whoever needs it asks here first, so a missing package is one line
naming what to install, never a traceback from deep inside a stage.

Torch-free: it only looks for the packages (``importlib.util.find_spec``), never imports them.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

from .errors import LLMMapsError

MODEL_INSTALL = 'pip install "llm-maps[model]"'

# importable name -> what it does here (the [model] extra of pyproject.toml)
MODEL_PACKAGES: dict[str, str] = {
    "torch": "runs the model",
    "transformers": "loads models and tokenizers",
    "tokenizers": "tokenizes prompts",
    "safetensors": "reads and writes weights",
    "accelerate": "places large models",
    "gguf": "reads GGUF files",
    "umap": "fits UMAP maps",
    "peft": "LoRA fine-tuning",
    "rouge_score": "ROUGE-L scoring",
}
# what loading a model (encode, score, the worker) cannot do without
MODEL_CORE: tuple[str, ...] = ("torch", "transformers")


def installed(name: str) -> bool:
    """Whether ``name`` can be imported (looked up, not imported; a package made unimportable, as
    the view-only tests do, counts as missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a module without a spec
        return False


def missing(packages: Sequence[str] = MODEL_CORE) -> list[str]:
    """The packages of ``packages`` that cannot be imported, in order."""
    return [name for name in packages if not installed(name)]


def available(packages: Sequence[str] = MODEL_CORE) -> bool:
    """True when every package of ``packages`` (default: torch and transformers) is installed."""
    return not missing(packages)


def message(what: str, packages: Sequence[str] = MODEL_CORE) -> str:
    """One line: ``what`` needs the model stack, which packages are missing and what to install."""
    gone = missing(packages) or list(packages)
    return f"{what} needs the model stack ({', '.join(gone)} not installed): {MODEL_INSTALL}"


def require(what: str, packages: Sequence[str] = MODEL_CORE) -> None:
    """Raise a one-line ``LLMMapsError`` (see ``message``) unless ``packages`` are installed."""
    if missing(packages):
        raise LLMMapsError(message(what, packages))
