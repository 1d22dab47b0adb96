"""Suite bootstrap: write a first Great Expectations suite from a reference data set.

GX 1.x removed its profilers, so this is ours. The suite it writes is a starting point the user
then edits (it is plain JSON under ``expectations/``):

* the exact column set (features plus the target);
* per numeric column: numeric dtype, not-null when the data has no nulls, a value range
  widened by ``margin`` of the observed span on each side;
* per categorical column: string dtype, not-null when the data has no nulls, the set of seen values;
* the target: values in the configured class set (nulls allowed: production batches are unlabeled);
* row count between 1 and ``max_rows``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from edgeloop.core.config import SchemaSettings

#: pandas dtype names a numeric feature may arrive as (CSV gives int64/float64, Parquet may
#: give narrower or nullable ones).
NUMERIC_TYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float32", "float64", "Int8", "Int16", "Int32", "Int64", "Float32", "Float64",
]  # fmt: skip


def _expect(kind: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs}


def _bound(value: float, integer: bool, up: bool) -> float | int:
    if integer:
        return int(math.ceil(value) if up else math.floor(value))
    return float(round(value, 6))


def bootstrap_suite(
    df: pd.DataFrame,
    schema: SchemaSettings,
    *,
    name: str = "batch",
    margin: float = 0.1,
    max_rows: int = 10_000_000,
    max_categories: int = 100,
) -> dict[str, Any]:
    """Build a suite (as a JSON-ready dict) that ``df`` passes and that catches common breakage."""
    missing = [c for c in schema.columns if c not in df.columns]
    if missing:
        raise ValueError(f"reference data lacks configured columns {missing}")
    exps: list[dict[str, Any]] = [
        _expect(
            "expect_table_columns_to_match_set", column_set=list(schema.columns), exact_match=True
        ),
        _expect("expect_table_row_count_to_be_between", min_value=1, max_value=max_rows),
    ]
    for col in schema.features:
        s = df[col]
        has_nulls = bool(s.isna().any())
        if col in schema.categorical:
            exps.append(_expect("expect_column_values_to_be_of_type", column=col, type_="str"))
            if not has_nulls:
                exps.append(_expect("expect_column_values_to_not_be_null", column=col))
            values = sorted(str(v) for v in s.dropna().unique())
            if len(values) <= max_categories:
                exps.append(
                    _expect("expect_column_values_to_be_in_set", column=col, value_set=values)
                )
            continue
        if not pd.api.types.is_numeric_dtype(s):
            raise ValueError(
                f"column {col!r} is not numeric (dtype {s.dtype}); list it under schema.categorical"
            )
        if s.isna().all():
            raise ValueError(
                f"column {col!r} has no values in the reference data: cannot derive a range"
            )
        exps.append(
            _expect("expect_column_values_to_be_in_type_list", column=col, type_list=NUMERIC_TYPES)
        )
        if not has_nulls:
            exps.append(_expect("expect_column_values_to_not_be_null", column=col))
        lo, hi = float(s.min()), float(s.max())
        span = hi - lo
        # A constant column still gets some room: a margin of its magnitude, or 1.
        pad = margin * span if span > 0 else max(abs(hi) * margin, 1.0)
        integer = pd.api.types.is_integer_dtype(s) or bool((s.dropna() % 1 == 0).all())
        exps.append(
            _expect(
                "expect_column_values_to_be_between",
                column=col,
                min_value=_bound(lo - pad, integer, up=False),
                max_value=_bound(hi + pad, integer, up=True),
            )
        )
    exps.append(
        _expect(
            "expect_column_values_to_be_in_set",
            column=schema.target,
            value_set=list(schema.classes),
        )
    )
    return {
        "name": name,
        "meta": {
            "generated_by": "edgeloop init (pipelines.profile.bootstrap_suite)",
            "reference_rows": len(df),
            "margin": margin,
            "note": "A starting point: edit ranges, sets and null policy to match what you know.",
        },
        "expectations": exps,
    }
