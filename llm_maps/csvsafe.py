"""CSV cells a spreadsheet would evaluate, neutralised (OWASP "CSV injection").

A text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
formula by Excel, LibreOffice and Google Sheets; such a cell gets a leading ``'`` (shown by none
of them, and read back as text). Numbers are never touched: ``-0.5`` stays a number. Every CSV the
product writes goes through ``neutralise_frame`` (or ``neutralise`` per cell).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> object:
    """One cell: a string that a spreadsheet would evaluate -> ``'`` + string; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def neutralise_frame(frame: "pd.DataFrame") -> "pd.DataFrame":
    """A copy of a DataFrame with every text cell neutralised (numeric columns untouched)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype) in ("string", "str"):
            out[col] = out[col].map(neutralise)
    return out
