"""The app's own plotly.js build (tools/plotly-bundle): where it is, and as an inline <script>.

Light on purpose (no dash import): `llm-maps export` uses it too."""

from __future__ import annotations

import re
from pathlib import Path

PLOTLY_BUNDLE = Path(__file__).resolve().parent / "assets" / "vendor" / "plotly-llm-maps.min.js"


def bundle_path(prefix: str = "/") -> str:
    """The bundle's URL path in an app served under ``prefix`` (it lives in the assets folder)."""
    return f"{prefix}assets/vendor/{PLOTLY_BUNDLE.name}"


def bundle_version(path: Path = PLOTLY_BUNDLE) -> str | None:
    """The plotly.js version in a bundle's header comment ("plotly.js v4.1.1"), or None."""
    with open(path, encoding="utf-8") as f:
        head = f.read(400)
    m = re.search(r"plotly\.js v(\d+\.\d+\.\d+)", head)
    return m.group(1) if m else None


def plotly_script() -> str:
    """The bundle (scatter, scattergl, heatmap) as an inline <script>."""
    code = PLOTLY_BUNDLE.read_text(encoding="utf-8")
    if "</script" in code.lower():  # cannot happen with a minified bundle; never write a broken page
        raise ValueError(f"{PLOTLY_BUNDLE}: contains '</script', cannot be inlined")
    return f"<script>{code}</script>"
