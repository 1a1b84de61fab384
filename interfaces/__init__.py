"""The top layer: the ways in (the `llm-maps` command line, the demo, the worker supervisor and the
Python API). It composes `pipelines` (model work) and `dashboard` (web), which never import each
other or this package; below them the torch-free core `llm_maps`. See docs/architecture.md.
"""
