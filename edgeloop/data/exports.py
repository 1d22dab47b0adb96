"""Files written for people: CSVs with no cell a spreadsheet would run as a formula, and
markdown with no markup from the data.

OWASP's CSV-injection rule: a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return gets a leading ``'`` so a spreadsheet shows it as text instead of running it.
Only text is touched: numbers stay numbers (-3.5 in a numeric column is a number, not a
formula), and so do missing values. Column names are cells too (feature names come from the
user's header). Files edgeloop reads back (batches, Parquet) never go through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

#: What a spreadsheet reads as the start of a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would execute."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells and column names are safe to open in a spreadsheet."""
    out = frame.copy()
    for i in range(out.shape[1]):
        column = out.iloc[:, i]
        if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
            continue
        # Per cell: an object column can mix numbers (kept) and text (checked).
        out.isetitem(i, column.astype("object").map(safe_cell))
    out.columns = pd.Index([safe_cell(c) for c in out.columns], dtype="object")
    return out


def write_csv_for_people(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` (without its index) as a CSV meant to be opened in a spreadsheet."""
    safe_cells(frame).to_csv(path, index=False)
    return path


_MARKUP = str.maketrans({c: "\\" + c for c in "\\`*<>&"})


def markdown_text(value: Any) -> str:
    """A value from the data (a name, a reason) as plain markdown text: no markup, no HTML."""
    one_line = str(value).replace("\r", " ").replace("\n", " ")
    # `[text](url)` and `![alt](url)` need `](`: without it brackets are only text.
    return one_line.translate(_MARKUP).replace("](", "]\\(")


def markdown_cell(value: Any) -> str:
    """A value as one markdown table cell: a pipe or a newline would break the table."""
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
