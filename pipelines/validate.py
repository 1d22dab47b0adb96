"""Validation stage: check a batch against a Great Expectations suite, decide.

Plain functions, no orchestration, no file I/O (``edgeloop.data.readers`` reads batches and
suites). ``validate_frame`` runs the suite with real GX and returns a ``ValidationReport``;
``decide`` applies the row policy and says which rows go where.

Row policy (``validation.row_policy`` in the config):

* ``rows`` (default): rows that fail a hard row-level expectation (nulls, impossible values, a
  duplicate id; see the severities below) are quarantined and the rest is accepted, unless the
  share of bad rows exceeds ``max_bad_row_fraction``, in which case the whole batch is
  quarantined.
* ``batch``: any failed expectation quarantines the whole batch.

Table-level failures (missing or extra columns, wrong dtype, row count) always quarantine the
whole batch: no row of a batch with the wrong shape can be trusted. A numeric column read as
text because of a few values that are not numbers is not a wrong dtype: those values' rows fail
its type check (``numbers_from_text``), and the other rows are stored as numbers.

Severity (GX's ``severity`` on each expectation): only **hard** failures (``"critical"``, GX's
default, so a suite written without severities is all hard) count for the policy above. **Soft**
failures (``"warning"``, ``"info"``: a value outside the observed range, a new category) leave the
rows accepted and are listed in the report's ``warnings``; ``validation.hard_columns`` makes
the soft expectations of those columns hard.

Besides GX, a suite may carry edgeloop's time check in ``meta.edgeloop.time`` (GX ignores
``meta``): ``{"column", "earliest", "future_tolerance_days", "unit", "severity"}``. Every value of
the column must parse (``pipelines.timecol.parse_time``; left to GX's
``expect_column_values_to_be_dateutil_parseable`` when the suite has it for that column) and lie
between ``earliest`` and *now* (at validation) plus ``future_tolerance_days``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from edgeloop.core.config import SchemaSettings, ValidationSettings
from edgeloop.core.errors import SuiteError
from pipelines.timecol import parse_time
from pipelines.validation_report import Decision, FailedExpectation, ValidationReport, json_safe

__all__ = [
    "TIME_PARSEABLE",
    "TIME_PLAUSIBLE",
    "Decision",
    "FailedExpectation",
    "ValidationReport",
    "decide",
    "normalize_batch",
    "numbers_from_text",
    "validate_frame",
]


def normalize_batch(df: pd.DataFrame, schema: SchemaSettings) -> pd.DataFrame:
    """Give an unlabeled batch an all-null target column, so one suite checks both kinds.

    Production batches usually arrive without labels; labeled batches carry the target. The
    suite lists the target among the expected columns and checks its values only where present.
    Returns a new frame; the input is not modified.
    """
    if schema.target in df.columns:
        return df
    out = df.copy(deep=False)
    out[schema.target] = None
    return out


# --------------------------------------------------------------------------- suites


def _gx_validator(suite: dict[str, Any]) -> Any:
    """An ephemeral GX context with one pandas asset and the suite attached."""
    # lazy: GX costs ~6 s to import and only this function needs it, not the users of
    # ValidationReport and decide.
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    # Progress bars flood stderr in a CLI and in Prefect logs.
    context.variables.progress_bars = {"globally": False}  # type: ignore[assignment]  # GX takes the mapping
    try:
        gx_suite = context.suites.add(gx.ExpectationSuite(**suite))
    except Exception as exc:
        raise SuiteError(f"suite {suite.get('name')!r} is not valid for GX: {exc}") from None
    if len(gx_suite.expectations) != len(suite["expectations"]):
        # GX only logs an expectation it cannot build and drops it: a typo would pass silently.
        built = {e.expectation_type for e in gx_suite.expectations}
        dropped = sorted({e["type"] for e in suite["expectations"]} - built)
        raise SuiteError(
            f"suite {suite.get('name')!r}: GX could not build expectation(s) {dropped or '(some)'}"
            " (unknown type or bad kwargs)"
        )
    batch_def = (
        context.data_sources.add_pandas("edgeloop")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    return context.validation_definitions.add(
        gx.ValidationDefinition(name=f"validate-{gx_suite.name}", data=batch_def, suite=gx_suite)
    )


def _raised(info: Any) -> str | None:
    """The first error message in GX's exception info (flat, or nested per metric in GX 1.x)."""
    if not isinstance(info, dict):
        return None
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    for c in candidates:
        if c.get("raised_exception"):
            msg = str(c.get("exception_message") or "error").strip()
            return (msg.splitlines() or ["error"])[0][:200]
    return None


def _failed_from_result(er: Any) -> FailedExpectation:
    cfg = er.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
    result = er.result or {}
    error = _raised(er.exception_info)
    rows = tuple(int(i) for i in result.get("unexpected_index_list") or ())
    row_level = "unexpected_count" in result and error is None
    return FailedExpectation(
        expectation=cfg.type,
        column=kwargs.get("column"),
        kwargs={k: v for k, v in kwargs.items() if k != "column"},
        row_level=row_level,
        unexpected_count=result.get("unexpected_count"),
        unexpected_percent=_finite(result.get("unexpected_percent")),
        examples=json_safe(list(result.get("partial_unexpected_list") or [])[:20]),
        observed=json_safe(
            result.get("observed_value") if "details" not in result else result.get("details")
        ),
        error=error,
        rows=rows,
        severity=_severity(getattr(cfg, "severity", None)),
    )


def _severity(value: Any) -> str:
    """GX's ``FailureSeverity`` enum (or a plain string, or nothing: critical) as a string."""
    if value is None:
        return "critical"
    return str(getattr(value, "value", value))


def _finite(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def validate_frame(
    df: pd.DataFrame,
    suite: dict[str, Any],
    *,
    batch: str = "batch",
    parameters: dict[str, Any] | None = None,
    now: pd.Timestamp | None = None,
) -> ValidationReport:
    """Run ``suite`` over ``df`` with Great Expectations, then edgeloop's own checks from the
    suite's ``meta.edgeloop`` (the time check: "now" is ``now`` or the time of this call);
    return what failed, row by row.

    The frame is given a fresh 0..n-1 index so GX's ``unexpected_index_list`` are file positions.
    A numeric column read as text for a few stray values is checked as numbers
    (``numbers_from_text``): the rows of those values fail its type check, not the whole batch.
    """
    time_check = _time_settings(suite)
    read = df.reset_index(drop=True)
    frame = numbers_from_text(read, suite)
    failed = _text_in_numbers(read, frame, suite)
    validation = _gx_validator(suite)
    result = validation.run(
        batch_parameters={"dataframe": frame},
        # Suite parameters ({"$PARAMETER": name} in the JSON) filled at run time.
        expectation_parameters=parameters or {},
        # COMPLETE gives unexpected_index_list: the row positions row-level quarantine needs.
        result_format={"result_format": "COMPLETE", "partial_unexpected_count": 20},
    )
    failed += [_failed_from_result(er) for er in result.results if not er.success]
    evaluated = int(result.statistics.get("evaluated_expectations", len(result.results)))
    if time_check is not None:
        checked, time_failed = _check_times(frame, suite, time_check, now)
        evaluated += checked
        failed += time_failed
    return ValidationReport(
        batch=batch,
        suite=str(suite.get("name", "suite")),
        rows=len(frame),
        evaluated=evaluated,
        failed=tuple(failed),
    )


# --------------------------------------------------------------------------- numbers read as text


def _numeric_checks(suite: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Column -> the suite's type check for it, for the columns it types as numbers only."""

    def numeric(name: Any) -> bool:
        try:
            dtype = pd.api.types.pandas_dtype(name)
        except (TypeError, ValueError):
            return False
        return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)

    out = {}
    for e in suite.get("expectations", []):
        kw = e.get("kwargs") or {}
        types = kw.get("type_list") or []
        if e.get("type") == "expect_column_values_to_be_in_type_list" and all(map(numeric, types)):
            out[str(kw.get("column"))] = e
    return {c: e for c, e in out.items() if e["kwargs"]["type_list"]}


def numbers_from_text(df: pd.DataFrame, suite: dict[str, Any]) -> pd.DataFrame:
    """``df`` with each column the suite types as numeric, but read as text, parsed as numbers.

    One stray value (``"?"``, ``"12kg"``) makes a whole CSV column text; its other values are
    numbers still. Values that are not numbers become null here (``validate_frame`` reports their
    rows). A column without a single number is left as it is, for the type check to refuse.
    Returns a new frame; the input is not modified."""
    out = df
    for column in _numeric_checks(suite):
        values = df[column] if column in df.columns else None
        if values is None or not (values.dtype == object or pd.api.types.is_string_dtype(values)):
            continue
        parsed = pd.to_numeric(values.astype("object"), errors="coerce").astype("float64")
        if parsed.notna().any():
            out = out.copy(deep=False) if out is df else out
            out[column] = parsed
    return out


def _text_in_numbers(
    read: pd.DataFrame, parsed: pd.DataFrame, suite: dict[str, Any]
) -> list[FailedExpectation]:
    """The type check's failure, row by row, for the values ``numbers_from_text`` could not parse."""
    failed = []
    for column, check in _numeric_checks(suite).items():
        if column not in read.columns or parsed[column].dtype == read[column].dtype:
            continue
        rows = np.flatnonzero((read[column].notna() & parsed[column].isna()).to_numpy(dtype=bool))
        if len(rows):
            failed.append(
                FailedExpectation(
                    expectation=check["type"],
                    column=column,
                    kwargs={"type_list": check["kwargs"]["type_list"]},
                    row_level=True,
                    unexpected_count=len(rows),
                    unexpected_percent=100.0 * len(rows) / max(len(read), 1),
                    examples=json_safe(read[column].iloc[rows[:20]].tolist()),
                    rows=tuple(int(i) for i in rows),
                    severity=_severity(check.get("severity")),
                )
            )
    return failed


# --------------------------------------------------------------------------- the time check

#: The expectation names edgeloop's time check reports under (not GX types: only in reports).
TIME_PARSEABLE = "edgeloop_time_values_parseable"
TIME_PLAUSIBLE = "edgeloop_time_values_plausible"


@dataclass(frozen=True)
class TimeCheck:
    """``meta.edgeloop.time`` of a suite, checked."""

    column: str
    earliest: pd.Timestamp
    future_tolerance_days: float
    unit: Literal["auto", "s", "ms"] = "auto"
    severity: str = "critical"


def _time_settings(suite: dict[str, Any]) -> TimeCheck | None:
    meta = suite.get("meta") or {}
    cfg = (meta.get("edgeloop") or {}).get("time") if isinstance(meta, dict) else None
    if cfg is None:
        return None
    where = f"suite {suite.get('name')!r}: meta.edgeloop.time"
    if not isinstance(cfg, dict) or not isinstance(cfg.get("column"), str):
        raise SuiteError(f"{where} needs a 'column' (the time column's name)")
    try:
        earliest = pd.Timestamp(cfg["earliest"])
        earliest = earliest.tz_localize("UTC") if earliest.tzinfo is None else earliest
        tolerance = float(cfg.get("future_tolerance_days", 2))
    except (KeyError, TypeError, ValueError) as exc:
        raise SuiteError(
            f"{where} needs 'earliest' (an ISO date) and a numeric 'future_tolerance_days' ({exc})"
        ) from None
    unit = cfg.get("unit") or "auto"
    if unit not in ("auto", "s", "ms"):
        raise SuiteError(f"{where}: unit must be 's', 'ms' or null, not {unit!r}")
    unit = cast(Literal["auto", "s", "ms"], unit)
    severity = str(cfg.get("severity") or "critical")
    if severity not in ("critical", "warning", "info"):
        raise SuiteError(f"{where}: severity must be critical, warning or info, not {severity!r}")
    return TimeCheck(cfg["column"], earliest, tolerance, unit, severity)


def _check_times(
    frame: pd.DataFrame, suite: dict[str, Any], check: TimeCheck, now: pd.Timestamp | None
) -> tuple[int, list[FailedExpectation]]:
    """(checks evaluated, failures): unparseable values (unless GX checks them) and implausible
    ones, each failure with its rows and example values."""
    column = check.column
    gx_parses = any(
        e.get("type") == "expect_column_values_to_be_dateutil_parseable"
        and (e.get("kwargs") or {}).get("column") == column
        for e in suite.get("expectations", [])
    )
    names = [TIME_PLAUSIBLE] if gx_parses else [TIME_PARSEABLE, TIME_PLAUSIBLE]
    if column not in frame.columns:
        # The column-set expectation names the missing column; these only say they could not run.
        error = f"column {column!r} is not in the batch"
        return len(names), [
            FailedExpectation(n, column, {}, False, error=error, severity=check.severity)
            for n in names
        ]
    values = frame[column]
    parsed = _parse(values, check.unit)
    current = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    current = current.tz_localize("UTC") if current.tzinfo is None else current
    latest = current + pd.Timedelta(days=check.future_tolerance_days)
    bounds = {
        "min_value": check.earliest.isoformat(),
        "max_value": latest.isoformat(),
        "future_tolerance_days": check.future_tolerance_days,
        "now": current.isoformat(),
    }
    masks = {
        TIME_PARSEABLE: (values.notna() & parsed.isna(), {"unit": check.unit}),
        TIME_PLAUSIBLE: (parsed.notna() & ((parsed < check.earliest) | (parsed > latest)), bounds),
    }
    failed = []
    for name in names:
        mask, kwargs = masks[name]
        rows = np.flatnonzero(mask.to_numpy(dtype=bool))
        if len(rows):
            failed.append(_time_failure(name, check, kwargs, values, rows))
    return len(names), failed


def _parse(values: pd.Series, unit: Literal["auto", "s", "ms"]) -> pd.Series:
    """``parse_time``, with epoch numbers too large for a timestamp taken as unparseable."""
    try:
        return parse_time(values, unit)
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        if not pd.api.types.is_numeric_dtype(values):
            raise
    # Year 2286 in seconds, 5138 in milliseconds: beyond is no time, only a wrong number.
    limit = 1e10 if unit == "s" else 1e14
    numbers = pd.to_numeric(values, errors="coerce")
    return parse_time(numbers.where(numbers.abs() < limit), unit)


def _time_failure(
    name: str, check: TimeCheck, kwargs: dict[str, Any], values: pd.Series, rows: np.ndarray
) -> FailedExpectation:
    shown = values.iloc[rows[:20]].tolist()
    examples = [v.isoformat() if isinstance(v, pd.Timestamp) else v for v in shown]
    return FailedExpectation(
        expectation=name,
        column=check.column,
        kwargs=kwargs,
        row_level=True,
        unexpected_count=len(rows),
        unexpected_percent=100.0 * len(rows) / max(len(values), 1),
        examples=json_safe(examples),
        rows=tuple(int(i) for i in rows),
        severity=check.severity,
    )


# --------------------------------------------------------------------------- the decision


def decide(report: ValidationReport, settings: ValidationSettings) -> ValidationReport:
    """Apply the row policy to the hard failures: return the report with its decision, reason
    and bad rows. Soft failures (``report.warnings``) never quarantine a row."""
    report = replace(report, hard_columns=tuple(settings.hard_columns))
    if not report.failed:
        return _with(report, "accepted", "all expectations passed", ())
    hard = report.errors
    soft = report.warnings
    noted = f"; warnings (rows accepted): {', '.join(f.short for f in soft)}" if soft else ""
    if not hard:
        return _with(report, "accepted", f"all hard expectations passed{noted}", ())
    everything = tuple(range(report.rows))
    # Most telling first: the shape of the table, then dtypes, then what could not be evaluated
    # (usually a consequence of the first two).
    table_level = sorted(
        (f for f in hard if not f.row_level),
        key=lambda f: (f.error is not None, f.column is not None),
    )
    if table_level:
        missing = {c for f in table_level for c in f.mismatched_columns.get("missing", [])}
        mistyped = {f.column for f in table_level if "type" in f.expectation and not f.error}
        # Expectations on a missing or mistyped column fail too; naming them again adds nothing.
        shown = [
            f
            for f in table_level
            if f.column not in missing and not (f.error and f.column in mistyped)
        ]
        what = "; ".join(f.describe() for f in shown[:3])
        more = f" (+{len(shown) - 3} more)" if len(shown) > 3 else ""
        return _with(report, "quarantined", f"table-level failure: {what}{more}", everything)
    bad = tuple(sorted({i for f in hard for i in f.rows}))
    names = ", ".join(f.short for f in hard)
    if settings.row_policy == "batch":
        return _with(
            report,
            "quarantined",
            f"row_policy=batch and {len(bad)} rows failed: {names}{noted}",
            everything,
        )
    share = len(bad) / max(report.rows, 1)
    if share > settings.max_bad_row_fraction:
        return _with(
            report,
            "quarantined",
            f"{len(bad)} of {report.rows} rows failed ({share:.0%} > max_bad_row_fraction"
            f" {settings.max_bad_row_fraction:.0%}): {names}{noted}",
            everything,
        )
    return _with(report, "partial", f"{len(bad)} bad rows quarantined: {names}{noted}", bad)


def _with(
    report: ValidationReport, decision: Decision, reason: str, bad: Sequence[int]
) -> ValidationReport:
    return replace(report, decision=decision, reason=reason, bad_rows=tuple(bad))
