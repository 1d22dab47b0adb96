"""The time column: parsed the same way by validation, training and ``init``.

Accepted: ISO 8601 dates and timestamps, common day-first or month-first formats (``05/01/2024``,
``2024/01/05 13:00``), and epoch seconds or milliseconds (numeric columns). Values that do not
parse become ``NaT``; a caller decides whether that is an error (validation names the rows).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

#: Epoch seconds between these bounds (1973..2286) are taken for seconds, larger for milliseconds.
_EPOCH_S = (1e8, 1e10)
_EPOCH_MS = (1e11, 1e13)

TimeUnit = Literal["auto", "s", "ms"]


def epoch_unit(values: pd.Series) -> Literal["s", "ms"] | None:
    """``"s"``/``"ms"`` when a numeric column looks like epoch seconds/milliseconds, else None."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return None
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty or not bool((v % 1 == 0).all()):
        return None
    lo, hi = float(v.min()), float(v.max())
    if _EPOCH_S[0] <= lo and hi < _EPOCH_S[1]:
        return "s"
    if _EPOCH_MS[0] <= lo and hi < _EPOCH_MS[1]:
        return "ms"
    return None


_NUMERIC_DATE = r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-]\d{2,4}"


def day_first_order(text: pd.Series) -> bool:
    """Whether ``nn/nn/yyyy`` dates in this column are day-first: one value whose first part is
    over 12 (31/01/2024) makes the column day-first, one whose second part is (01/31/2024)
    month-first; a column with neither is ambiguous and read month-first. One order per column:
    dateutil alone would read 31/01 day-first and 01/02 month-first in the same column."""
    parts = text.str.extract(_NUMERIC_DATE).dropna().astype(int)
    if parts.empty:
        return False
    return bool((parts[0] > 12).any()) and not bool((parts[1] > 12).any())


def parse_time(values: pd.Series, unit: TimeUnit = "auto") -> pd.Series:
    """``values`` as UTC datetimes (``NaT`` where a value does not parse); the input is not
    modified. Numeric values are epoch seconds or milliseconds (``unit``, or detected)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = pd.to_datetime(values, utc=True)
        return pd.Series(parsed, index=values.index, name=values.name)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        found = epoch_unit(values) if unit == "auto" else unit
        if found is None:
            return pd.Series(
                pd.NaT, index=values.index, name=values.name, dtype="datetime64[ns, UTC]"
            )
        return pd.Series(
            pd.to_datetime(pd.to_numeric(values, errors="coerce"), unit=found, utc=True),
            index=values.index,
            name=values.name,
        )
    text = values.astype("string").str.strip()
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    if day_first_order(text):
        # Only the nn/nn/yyyy values: dayfirst would misread ISO dates (2024-01-05 as May 1).
        numeric = text.str.match(_NUMERIC_DATE).fillna(False).astype(bool)
        parsed[numeric] = pd.to_datetime(
            text[numeric], errors="coerce", utc=True, format="mixed", dayfirst=True
        )
    return pd.Series(parsed, index=values.index, name=values.name)


def parse_share(values: pd.Series, unit: TimeUnit = "auto") -> float:
    """Share of the non-null values that parse as times (1.0 for an all-null column)."""
    present = values.notna()
    n = int(present.sum())
    if n == 0:
        return 1.0
    return float(np.count_nonzero(parse_time(values[present], unit).notna()) / n)
