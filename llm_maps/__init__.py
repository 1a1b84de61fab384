"""LLM Maps: where a language model's prompts live, and how accuracy falls off away from its
training data.

This package holds what both sides share and what must stay light (no torch): the CLI shell,
the run-folder contract, the domain map. Offline work lives in ``pipelines``; the web app in
``dashboard``.
"""

__version__ = "0.1.0"
