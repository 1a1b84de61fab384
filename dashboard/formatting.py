"""How the pages write numbers (a leaf module: the components and the views share it)."""

from __future__ import annotations

import numpy as np


def fmt(value, digits: int = 4) -> str:
    """A number for people: ``digits`` significant digits, "—" for None or NaN, else ``str``."""
    if value is None:
        return "—"
    try:
        if value != value:
            return "—"
    except (TypeError, ValueError):
        pass
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}g}"
    return str(value)
