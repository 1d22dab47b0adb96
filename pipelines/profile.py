"""Suite bootstrap: write a first Great Expectations suite from a reference data set.

GX 1.x removed its profilers, so this is ours. The suite it writes is a starting point the user
then edits (plain JSON under ``expectations/``). Every expectation carries a GX ``severity``:
``"critical"`` is **hard** (the failing rows are quarantined), ``"warning"`` is **soft** (the
rows are accepted and the failure is listed in the batch's report as a warning; a column in
``validation.hard_columns`` turns its soft expectations hard). By column role:

* table: the exact column set (``schema.columns``) and a row count between 1 and ``max_rows``
  (hard);
* id (``schema.id``): not null and unique within the batch (hard); never a range or a value set;
* time (``schema.time``): text is ``dateutil``-parseable (GX), epoch numbers have a numeric
  dtype, not null when the reference has no nulls (all hard); plus edgeloop's time check (hard,
  ``pipelines.validate``), configured in ``meta.edgeloop.time``: every value parses
  (``pipelines.timecol.parse_time``) and is plausible: not before ``earliest`` = the reference's
  first time minus ``max(10 x the reference's time span, 365 days)``, and not after *now*
  (evaluated when the batch is validated) plus ``future_tolerance_days`` (2 days, more when the
  reference itself reaches further into the future);
* numeric features: a numeric dtype and not-null when the reference has no nulls (hard); a
  **hard** ``>= 0`` only for a column that was never negative *and* is a count or an amount:
  its name says so (``is_count_or_amount``) or its values look like a count (whole numbers
  with zeros among them, ``looks_like_count``); a **soft** observed range, widened by
  ``margin`` of the span on each side, for every numeric column;
* categorical features: string dtype and not-null when the reference has no nulls (hard); the set
  of seen values is **soft** (a new category lets the row in); ``schema.high_cardinality``
  columns (and columns with more than ``max_categories`` values) get no value set at all;
* ignored columns: only their presence (through the column set);
* the target: values in the configured class set (hard; nulls allowed: production batches are
  unlabeled); a regression target instead gets a numeric dtype (hard: a text label cannot be
  trained on) and ``schema.target_range`` (else the observed range widened by ``margin``) as a
  **soft** range: an unusual value is reported, not quarantined.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd

from edgeloop.core.config import SchemaSettings
from pipelines.timecol import epoch_unit, parse_time

#: pandas dtype names a numeric feature may arrive as (CSV gives int64/float64, Parquet may
#: give narrower or nullable ones).
NUMERIC_TYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float32", "float64", "Int8", "Int16", "Int32", "Int64", "Float32", "Float64",
]  # fmt: skip
#: pandas dtype names a boolean feature may arrive as (nullable or not).
BOOL_TYPES = ["bool", "boolean"]

HARD: Literal["critical"] = "critical"
SOFT: Literal["warning"] = "warning"

#: Name words of a count or an amount: such a column, when never negative in the reference,
#: gets a hard ``>= 0`` (a negative count is impossible, not just unusual).
COUNT_OR_AMOUNT_WORDS = frozenset(
    {
        "count", "counts", "cnt", "num", "qty", "quantity", "quantities", "amount", "amounts",
        "price", "prices", "cost", "costs", "total", "totals", "fee", "fees", "balance",
        "balances", "income", "incomes", "salary", "salaries", "age", "days", "duration",
        "durations", "calls", "visits", "clicks", "orders", "items", "views", "events",
        "purchases", "transactions", "months", "weeks", "years", "hours", "minutes", "seconds",
        "tenure", "charge", "charges", "payment", "payments", "revenue", "spend", "paid",
    }
)  # fmt: skip
#: Name prefixes that say "number of": ``n_items``, ``num_visits``, ``nb_orders``.
COUNT_PREFIXES = ("n_", "num_", "nb_")

#: Time plausibility: the earliest accepted time is the reference's first one minus this many
#: reference spans, or minus ``MIN_PAST_MARGIN``, whichever reaches further back.
PAST_SPANS = 10
MIN_PAST_MARGIN = pd.Timedelta(days=365)
FUTURE_TOLERANCE_DAYS = 2.0


def _expect(kind: str, severity: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "severity": severity}


def _bound(value: float, integer: bool, up: bool) -> float | int:
    if integer:
        return int(math.ceil(value) if up else math.floor(value))
    return float(round(value, 6))


def name_words(column: str) -> list[str]:
    """``"TotalCharges"`` -> ``["total", "charges"]``; ``"n_items"`` -> ``["n", "items"]``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", column)
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def is_count_or_amount(column: str) -> bool:
    """True when the name reads as a count or an amount: one of its words (camelCase and
    ``_``/``-``/space separated) is in ``COUNT_OR_AMOUNT_WORDS``, or it starts with one of
    ``COUNT_PREFIXES``. ``page_views`` is a count by this rule, ``stage`` is not ("age" must be
    a whole word)."""
    if column.lower().startswith(COUNT_PREFIXES):
        return True
    return any(w in COUNT_OR_AMOUNT_WORDS for w in name_words(column))


def looks_like_count(values: pd.Series) -> bool:
    """Whole numbers, never negative, with zeros among them and more than two distinct values:
    how a count looks whatever its name (``support_calls``: 0, 1, 2, 5); a 0/1 flag or a
    strictly positive measurement is not taken for one."""
    v = values.dropna()
    if v.empty or not bool((v % 1 == 0).all()) or float(v.min()) < 0:
        return False
    return bool((v == 0).any()) and int(v.nunique()) > 2


def _examples(values: pd.Series, limit: int = 5) -> list[str]:
    return [str(v) for v in values.head(limit).tolist()]


def _id_expectations(df: pd.DataFrame, column: str) -> list[dict[str, Any]]:
    s = df[column]
    if s.isna().any():
        raise ValueError(f"id column {column!r} has {int(s.isna().sum())} null value(s)")
    dup = s[s.duplicated(keep=False)]
    if len(dup):
        raise ValueError(
            f"id column {column!r} is not unique: {dup.nunique()} value(s) repeat,"
            f" e.g. {_examples(dup.drop_duplicates())}"
        )
    return [
        _expect("expect_column_values_to_not_be_null", HARD, column=column),
        _expect("expect_column_values_to_be_unique", HARD, column=column),
    ]


def _utc_iso(ts: pd.Timestamp) -> str:
    return str(ts.tz_convert("UTC").isoformat())


def _time_expectations(
    df: pd.DataFrame, column: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """GX expectations for the time column, and edgeloop's time check (``meta.edgeloop.time``)."""
    s = df[column]
    unit = epoch_unit(s)
    parsed = parse_time(s, unit or "auto")
    bad = s[s.notna() & parsed.isna()]
    if len(bad):
        raise ValueError(
            f"time column {column!r}: {len(bad)} value(s) do not parse as dates or times,"
            f" e.g. {_examples(bad)}"
        )
    if parsed.isna().all():
        raise ValueError(f"time column {column!r} has no values in the reference data")
    exps: list[dict[str, Any]] = []
    if pd.api.types.is_numeric_dtype(s):
        exps.append(
            _expect(
                "expect_column_values_to_be_in_type_list",
                HARD,
                column=column,
                type_list=NUMERIC_TYPES,
            )
        )
    elif not pd.api.types.is_datetime64_any_dtype(s):
        exps.append(_expect("expect_column_values_to_be_dateutil_parseable", HARD, column=column))
    if not s.isna().any():
        exps.append(_expect("expect_column_values_to_not_be_null", HARD, column=column))
    first, last = parsed.min(), parsed.max()
    margin = max(PAST_SPANS * (last - first), MIN_PAST_MARGIN)
    try:
        earliest = first - margin
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        earliest = pd.Timestamp("1678-01-01", tz="UTC")
    # A reference that already reaches into the future (bookings, due dates) must pass itself.
    ahead = (last - pd.Timestamp(datetime.now(UTC))) / pd.Timedelta(days=1)
    tolerance = max(FUTURE_TOLERANCE_DAYS, float(math.ceil(ahead)) + FUTURE_TOLERANCE_DAYS)
    check = {
        "column": column,
        "earliest": _utc_iso(earliest),
        "future_tolerance_days": tolerance,
        "unit": unit,
        "severity": HARD,
        "reference_first": _utc_iso(first),
        "reference_last": _utc_iso(last),
    }
    return exps, check


def _numeric_expectations(s: pd.Series, col: str, margin: float) -> list[dict[str, Any]]:
    if not pd.api.types.is_numeric_dtype(s):
        raise ValueError(
            f"column {col!r} is not numeric (dtype {s.dtype}); list it under schema.categorical"
        )
    if s.isna().all():
        raise ValueError(
            f"column {col!r} has no values in the reference data: cannot derive a range"
        )
    exps = [
        _expect(
            "expect_column_values_to_be_in_type_list", HARD, column=col, type_list=NUMERIC_TYPES
        )
    ]
    if not s.isna().any():
        exps.append(_expect("expect_column_values_to_not_be_null", HARD, column=col))
    lo, hi = float(s.min()), float(s.max())
    span = hi - lo
    # A constant column still gets some room: a margin of its magnitude, or 1.
    pad = margin * span if span > 0 else max(abs(hi) * margin, 1.0)
    integer = pd.api.types.is_integer_dtype(s) or bool((s.dropna() % 1 == 0).all())
    low = lo - pad
    if lo >= 0 and (is_count_or_amount(col) or looks_like_count(s)):
        # Impossible, not unusual: a negative count or amount quarantines its row.
        exps.append(_expect("expect_column_values_to_be_between", HARD, column=col, min_value=0))
        low = max(low, 0.0)
    exps.append(
        _expect(
            "expect_column_values_to_be_between",
            SOFT,
            column=col,
            min_value=_bound(low, integer, up=False),
            max_value=_bound(hi + pad, integer, up=True),
        )
    )
    return exps


def _categorical_expectations(
    s: pd.Series, col: str, *, value_set: bool, max_categories: int
) -> list[dict[str, Any]]:
    # A category is usually text; booleans and integer codes (``--categorical``) keep their type,
    # and their value set holds the values as they are (GX compares them by type too).
    if pd.api.types.is_bool_dtype(s):
        exps = [
            _expect(
                "expect_column_values_to_be_in_type_list", HARD, column=col, type_list=BOOL_TYPES
            )
        ]
        values: list[Any] = sorted(bool(v) for v in s.dropna().unique())
    elif pd.api.types.is_numeric_dtype(s):
        exps = [
            _expect(
                "expect_column_values_to_be_in_type_list", HARD, column=col, type_list=NUMERIC_TYPES
            )
        ]
        values = sorted(v.item() if hasattr(v, "item") else v for v in s.dropna().unique())
    else:
        exps = [_expect("expect_column_values_to_be_of_type", HARD, column=col, type_="str")]
        values = sorted(str(v) for v in s.dropna().unique())
    if not s.isna().any():
        exps.append(_expect("expect_column_values_to_not_be_null", HARD, column=col))
    if value_set and len(values) <= max_categories:
        exps.append(
            _expect("expect_column_values_to_be_in_set", SOFT, column=col, value_set=values)
        )
    return exps


def _target_expectations(
    df: pd.DataFrame, schema: SchemaSettings, margin: float
) -> list[dict[str, Any]]:
    target = schema.target
    if not schema.is_regression:
        return [
            _expect(
                "expect_column_values_to_be_in_set",
                HARD,
                column=target,
                value_set=list(schema.classes),
            )
        ]
    s = df[target]
    if not pd.api.types.is_numeric_dtype(s) or s.isna().all():
        raise ValueError(f"regression target {target!r} has no numeric values in the reference")
    if schema.target_range is not None:
        low, high = schema.target_range
    else:
        lo, hi = float(s.min()), float(s.max())
        pad = margin * (hi - lo) if hi > lo else max(abs(hi) * margin, 1.0)
        low, high = lo - pad, hi + pad
    # No not-null: production batches arrive unlabeled (an all-null target column).
    return [
        _expect(
            "expect_column_values_to_be_in_type_list",
            HARD,
            column=target,
            type_list=NUMERIC_TYPES,
        ),
        _expect(
            "expect_column_values_to_be_between",
            SOFT,
            column=target,
            min_value=float(low),
            max_value=float(high),
        ),
    ]


def bootstrap_suite(
    df: pd.DataFrame,
    schema: SchemaSettings,
    *,
    name: str = "batch",
    margin: float = 0.1,
    max_rows: int = 10_000_000,
    max_categories: int = 100,
) -> dict[str, Any]:
    """Build a suite (as a JSON-ready dict) that ``df`` passes and that catches common breakage.

    Raises ``ValueError`` naming the column when the reference cannot back a role: a non-numeric
    numeric feature, an id with nulls or duplicates, a time column with values that do not parse.
    """
    missing = [c for c in schema.columns if c not in df.columns]
    if missing:
        raise ValueError(f"reference data lacks configured columns {missing}")
    exps: list[dict[str, Any]] = [
        _expect(
            "expect_table_columns_to_match_set",
            HARD,
            column_set=list(schema.columns),
            exact_match=True,
        ),
        _expect("expect_table_row_count_to_be_between", HARD, min_value=1, max_value=max_rows),
    ]
    edgeloop_meta: dict[str, Any] = {}
    if schema.id is not None:
        exps += _id_expectations(df, schema.id)
    if schema.time is not None:
        time_exps, edgeloop_meta["time"] = _time_expectations(df, schema.time)
        exps += time_exps
    for col in schema.features:
        if col in schema.categorical:
            exps += _categorical_expectations(
                df[col],
                col,
                value_set=col not in schema.high_cardinality,
                max_categories=max_categories,
            )
        else:
            exps += _numeric_expectations(df[col], col, margin)
    exps += _target_expectations(df, schema, margin)
    meta: dict[str, Any] = {
        "generated_by": "edgeloop init (pipelines.profile.bootstrap_suite)",
        "reference_rows": len(df),
        "margin": margin,
        "note": "A starting point: edit ranges, sets and null policy to match what you know.",
        "severity": "critical = hard (failing rows are quarantined); warning = soft (rows are"
        " accepted and the failure is reported); validation.hard_columns makes a column's soft"
        " expectations hard",
    }
    if edgeloop_meta:
        meta["edgeloop"] = edgeloop_meta
    return {"name": name, "meta": meta, "expectations": exps}
