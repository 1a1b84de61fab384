"""The package version (one place: llm_maps/__init__ re-exports it)."""

__version__ = "0.1.0"
