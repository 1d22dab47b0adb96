"""Hard and soft expectations on a realistic file: an id, dates in two formats, epoch seconds,
nulls, a high-cardinality string, a count and a non-count numeric (issue 22)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import SchemaSettings, ValidationSettings
from edgeloop.core.errors import SuiteError
from pipelines.profile import bootstrap_suite, is_count_or_amount
from pipelines.timecol import parse_time
from pipelines.validate import (
    TIME_PARSEABLE,
    TIME_PLAUSIBLE,
    ValidationReport,
    decide,
    normalize_batch,
    validate_frame,
)

ROWS = 300
START = pd.Timestamp("2023-01-01", tz="UTC")
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
FEATURES = ["n_orders", "score", "plan", "city"]


def customers(first_id: int, rows: int, start: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Customers with consecutive ids, signing up one a day from ``start``."""
    rng = np.random.default_rng(seed)
    days = start + pd.to_timedelta(np.arange(rows), unit="D")
    # Two formats in one column, as merged exports have: ISO and day-first dd/mm/yyyy.
    signup = [
        d.strftime("%Y-%m-%d") if i % 2 else d.strftime("%d/%m/%Y") for i, d in enumerate(days)
    ]
    income = rng.normal(40_000, 8_000, rows).round(2)
    income[::25] = np.nan  # nulls in the reference: no not-null check for income
    return pd.DataFrame(
        {
            "customer_id": np.arange(first_id, first_id + rows),
            "signup": pd.array(signup, dtype="str"),
            # Epoch seconds, an hour after midnight.
            "event_ts": (days - EPOCH) // pd.Timedelta(seconds=1) + 3600,
            "n_orders": rng.integers(0, 20, rows),
            "score": rng.normal(0.0, 1.0, rows).round(4),  # negative values: not a count
            "income": income,
            "plan": pd.array(rng.choice(["basic", "plus", "pro"], rows), dtype="str"),
            "city": pd.array([f"city-{i}" for i in rng.integers(0, 10_000, rows)], dtype="str"),
            "churn": rng.choice([0, 1], rows, p=[0.85, 0.15]),
        }
    )


def schema(time: str) -> SchemaSettings:
    other = "event_ts" if time == "signup" else "signup"
    return SchemaSettings(
        features=[*FEATURES, "income"],
        categorical=["plan", "city"],
        high_cardinality=["city"],
        target="churn",
        classes=[0, 1],
        id="customer_id",
        time=time,
        ignore=[other],
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return customers(1, ROWS, START, seed=0)


@pytest.fixture(scope="module", params=["signup", "event_ts"], ids=["text-dates", "epoch-s"])
def setup(request, reference) -> tuple[SchemaSettings, dict]:
    s = schema(request.param)
    return s, bootstrap_suite(reference, s, name="customers")


def later_batch(seed: int = 1) -> pd.DataFrame:
    """The next customers (ids and dates beyond the reference's), unlabeled."""
    later = START + pd.Timedelta(days=ROWS + 30)
    return customers(ROWS + 1, 100, later, seed=seed).drop(columns=["churn"])


def run(df: pd.DataFrame, s: SchemaSettings, suite: dict, **settings) -> ValidationReport:
    report = validate_frame(normalize_batch(df, s), suite, batch="b")
    return decide(report, ValidationSettings(**settings))


def kinds(suite: dict, column: str) -> dict[str, str]:
    """expectation type -> severity for one column (the last one wins for repeated types)."""
    return {
        e["type"]: e["severity"]
        for e in suite["expectations"]
        if e["kwargs"].get("column") == column
    }


# --------------------------------------------------------------------------- the suite


def test_reference_passes_its_own_suite(reference, setup) -> None:
    s, suite = setup
    report = run(reference, s, suite)
    assert report.success, [f.describe() for f in report.failed]
    assert report.decision == "accepted"
    # GX's expectations and edgeloop's time check(s).
    assert report.evaluated > len(suite["expectations"])
    json.dumps(suite, allow_nan=False)


def test_every_expectation_has_a_severity(setup) -> None:
    _, suite = setup
    assert {e["severity"] for e in suite["expectations"]} == {"critical", "warning"}


def test_table_and_id_are_hard_and_the_id_has_no_range_or_set(setup) -> None:
    s, suite = setup
    table = next(
        e for e in suite["expectations"] if e["type"] == "expect_table_columns_to_match_set"
    )
    assert table["kwargs"]["column_set"] == s.columns and table["severity"] == "critical"
    assert kinds(suite, "customer_id") == {
        "expect_column_values_to_not_be_null": "critical",
        "expect_column_values_to_be_unique": "critical",
    }


def test_time_column_checks_and_their_bounds_live_in_meta(reference, setup) -> None:
    s, suite = setup
    check = suite["meta"]["edgeloop"]["time"]
    assert check["column"] == s.time
    assert check["future_tolerance_days"] == 2
    assert "now" not in json.dumps(check)  # "now" is taken when a batch is validated
    # 10 reference spans (more than 365 days here) before the reference's first time.
    times = parse_time(reference[s.time])
    span = times.max() - times.min()
    assert span > pd.Timedelta(days=40)
    assert pd.Timestamp(check["earliest"]) == times.min() - 10 * span
    assert pd.Timestamp(check["reference_last"]) == times.max()
    if s.time == "signup":
        assert kinds(suite, "signup")["expect_column_values_to_be_dateutil_parseable"] == "critical"
        assert check["unit"] is None
    else:
        assert check["unit"] == "s"
        assert kinds(suite, "event_ts")["expect_column_values_to_be_in_type_list"] == "critical"
    assert "expect_column_values_to_be_between" not in kinds(suite, s.time)


def test_ignored_column_is_only_present(setup) -> None:
    s, suite = setup
    assert kinds(suite, s.ignore[0]) == {}


def test_numeric_severities_follow_the_count_rule(setup) -> None:
    _, suite = setup
    orders = [e for e in suite["expectations"] if e["kwargs"].get("column") == "n_orders"]
    between = [e for e in orders if e["type"] == "expect_column_values_to_be_between"]
    assert [(e["severity"], e["kwargs"].get("min_value")) for e in between] == [
        ("critical", 0),  # a count never negative in the reference: a hard >= 0
        ("warning", 0),  # and the observed range, soft (not below 0)
    ]
    assert "max_value" not in between[0]["kwargs"]
    score = kinds(suite, "score")
    assert score["expect_column_values_to_be_between"] == "warning"
    assert score["expect_column_values_to_not_be_null"] == "critical"
    assert score["expect_column_values_to_be_in_type_list"] == "critical"
    # income is an amount but has nulls: no not-null check; never negative: a hard >= 0.
    income = [e for e in suite["expectations"] if e["kwargs"].get("column") == "income"]
    assert not any(e["type"] == "expect_column_values_to_not_be_null" for e in income)
    assert ("critical", 0) in [
        (e["severity"], e["kwargs"].get("min_value"))
        for e in income
        if e["type"] == "expect_column_values_to_be_between"
    ]


def test_categorical_sets_are_soft_and_high_cardinality_has_none(setup) -> None:
    _, suite = setup
    assert kinds(suite, "plan") == {
        "expect_column_values_to_be_of_type": "critical",
        "expect_column_values_to_not_be_null": "critical",
        "expect_column_values_to_be_in_set": "warning",
    }
    assert "expect_column_values_to_be_in_set" not in kinds(suite, "city")
    assert kinds(suite, "churn") == {"expect_column_values_to_be_in_set": "critical"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("n_orders", True),
        ("order_count", True),
        ("TotalCharges", True),
        ("unit_price", True),
        ("age", True),
        ("days_since_signup", True),
        ("num_visits", True),
        ("score", False),
        ("page_views", True),
        ("stage", False),
        ("temperature", False),
        ("MonthlyCharges", True),
    ],
)
def test_count_or_amount_names(name: str, expected: bool) -> None:
    assert is_count_or_amount(name) is expected


def test_a_never_negative_non_count_gets_only_a_soft_range(reference) -> None:
    df = reference.assign(score=reference["score"].abs())
    suite = bootstrap_suite(df, schema("signup"))
    assert kinds(suite, "score")["expect_column_values_to_be_between"] == "warning"
    assert (
        len([e for e in suite["expectations"] if e["kwargs"].get("column") == "score"]) == 3
    )  # dtype, not-null, soft range


def test_duplicate_ids_in_the_reference_are_named(reference) -> None:
    df = reference.copy()
    df.loc[10, "customer_id"] = 5
    with pytest.raises(ValueError, match="'customer_id' is not unique") as info:
        bootstrap_suite(df, schema("signup"))
    assert "'5'" in str(info.value)


def test_unparseable_reference_time_is_named_with_examples(reference) -> None:
    df = reference.copy()
    df.loc[3, "signup"] = "next tuesday"
    with pytest.raises(ValueError, match="'signup'") as info:
        bootstrap_suite(df, schema("signup"))
    assert "next tuesday" in str(info.value)


# --------------------------------------------------------------------------- clean later batch


def test_clean_later_batch_is_accepted_with_warnings(setup) -> None:
    s, suite = setup
    df = later_batch()
    df.loc[5, "score"] = 50.0  # far outside the observed range: unusual, not impossible
    df.loc[8, "plan"] = "enterprise"  # a category the reference never had
    report = run(df, s, suite)
    assert report.decision == "accepted", report.reason
    assert report.rows_accepted == 100 and report.bad_rows == ()
    assert report.errors == ()
    assert {(f.expectation, f.column) for f in report.warnings} == {
        ("expect_column_values_to_be_between", "score"),
        ("expect_column_values_to_be_in_set", "plan"),
    }
    assert all(f.severity == "warning" for f in report.warnings)
    assert report.warning_rows == (5, 8)
    assert "warnings (rows accepted)" in report.reason and "between(score)" in report.reason
    md = report.to_markdown()
    assert "## Warnings (rows accepted)" in md and "## Failed expectations" not in md
    assert "enterprise" in md and "50.0" in md
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["rows_with_warnings"] == 2 and len(d["warnings"]) == 2
    assert {f["severity"] for f in d["failed"]} == {"warning"}
    assert not any(f["hard"] for f in d["failed"])


def test_hard_columns_turn_a_soft_check_hard(setup) -> None:
    s, suite = setup
    df = later_batch()
    df.loc[8, "plan"] = "enterprise"
    report = run(df, s, suite, hard_columns=["plan"])
    assert report.decision == "partial"
    assert report.bad_rows == (8,)
    assert report.warnings == ()
    assert report.to_dict()["failed"][0]["hard"] is True


def test_now_is_taken_at_validation_time(setup) -> None:
    s, suite = setup
    df = later_batch()
    # The same batch, validated as if it were mid-way through it: its later half is then in
    # the future (beyond now + 2 days).
    now = START + pd.Timedelta(days=ROWS + 80)
    early = validate_frame(normalize_batch(df, s), suite, now=now)
    (failure,) = early.failed
    assert failure.expectation == TIME_PLAUSIBLE and failure.column == s.time
    future = parse_time(df[s.time]) > now + pd.Timedelta(days=2)
    assert 0 < failure.unexpected_count < 100
    assert failure.rows == tuple(np.flatnonzero(future.to_numpy()))
    assert failure.kwargs["now"] == now.isoformat()
    assert validate_frame(normalize_batch(df, s), suite).success


# --------------------------------------------------------------------------- corrupt batch


def corrupt_batch(time: str) -> pd.DataFrame:
    df = later_batch(seed=2)
    df.loc[3, "customer_id"] = int(df.loc[2, "customer_id"])  # duplicate id (rows 2 and 3)
    future = pd.Timestamp.now(tz="UTC") + pd.DateOffset(years=5)
    if time == "signup":
        df.loc[10, "signup"] = "31/02/2024"  # no such day
        df.loc[20, "signup"] = future.strftime("%Y-%m-%d")
    else:
        df["event_ts"] = df["event_ts"].astype("int64")
        df.loc[10, "event_ts"] = 42  # 1970: before the earliest plausible time
        df.loc[20, "event_ts"] = int(future.timestamp())
    df.loc[30, "n_orders"] = -3  # a negative count
    df["score"] = df["score"].astype("float64")
    df.loc[40, "score"] = np.nan  # no nulls in the reference's score
    return df


def test_corrupt_batch_is_quarantined_row_by_row_naming_columns_and_values(setup) -> None:
    s, suite = setup
    df = corrupt_batch(s.time or "")
    report = run(df, s, suite)
    assert report.decision == "partial", report.reason
    assert report.bad_rows == (2, 3, 10, 20, 30, 40)
    assert report.rows_accepted == 94
    by = {(f.expectation, f.column): f for f in report.errors}
    dup = by[("expect_column_values_to_be_unique", "customer_id")]
    assert dup.rows == (2, 3) and set(dup.examples) == {int(df.loc[2, "customer_id"])}
    assert by[("expect_column_values_to_be_between", "n_orders")].examples == [-3]
    assert by[("expect_column_values_to_not_be_null", "score")].rows == (40,)
    plausible = by[(TIME_PLAUSIBLE, s.time)]
    if s.time == "signup":
        assert by[("expect_column_values_to_be_dateutil_parseable", "signup")].examples == [
            "31/02/2024"
        ]
        assert plausible.rows == (20,)
        assert (TIME_PARSEABLE, "signup") not in by  # GX's parse check covers text
    else:
        assert plausible.rows == (10, 20) and plausible.examples[0] == 42
    assert plausible.kwargs["min_value"] == suite["meta"]["edgeloop"]["time"]["earliest"]
    described = "\n".join(f.describe() for f in report.errors)
    assert f"column '{s.time}'" in described
    for column in ("customer_id", "n_orders", "score", s.time):
        assert column in report.reason
    md = report.to_markdown()
    assert TIME_PLAUSIBLE in md and "## Failed expectations" in md


def test_epoch_number_too_large_for_a_time_is_unparseable_and_named() -> None:
    s = schema("event_ts")
    suite = bootstrap_suite(customers(1, ROWS, START, seed=0), s)
    batch = later_batch()
    batch.loc[6, "event_ts"] = 10**15  # seconds: year 31 million
    report = run(batch, s, suite)
    (failure,) = report.errors
    assert (failure.expectation, failure.column) == (TIME_PARSEABLE, "event_ts")
    assert failure.rows == (6,) and failure.examples == [10**15]
    assert report.decision == "partial" and report.bad_rows == (6,)


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        ({"earliest": "not a date"}, "earliest"),
        ({"column": None}, "column"),
        ({"unit": "days"}, "unit"),
        ({"severity": "fatal"}, "severity"),
    ],
)
def test_bad_time_check_settings_raise_suite_error(reference, edit, fragment) -> None:
    suite = bootstrap_suite(reference, schema("signup"))
    time = {**suite["meta"]["edgeloop"]["time"], **edit}
    broken = {**suite, "meta": {**suite["meta"], "edgeloop": {"time": time}}}
    with pytest.raises(SuiteError, match=r"meta\.edgeloop\.time") as info:
        validate_frame(reference, broken)
    assert fragment in str(info.value)


def test_edited_time_bounds_are_used(reference) -> None:
    """Users edit the bounds in the suite file: a later earliest makes old dates implausible."""
    s = schema("signup")
    suite = bootstrap_suite(reference, s)
    suite["meta"]["edgeloop"]["time"]["earliest"] = "2023-06-01"
    report = run(reference, s, suite)
    (failure,) = report.errors
    assert (failure.expectation, failure.column) == (TIME_PLAUSIBLE, "signup")
    assert report.decision == "quarantined"  # most of the year is before June: > 20 % of rows
