"""Validation with real Great Expectations: reading batches, the suite verdict, the decision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import SchemaSettings, ValidationSettings
from edgeloop.core.errors import BatchReadError, EdgeloopError
from edgeloop.data.readers import read_batch
from pipelines.profile import bootstrap_suite
from pipelines.validate import (
    ValidationReport,
    decide,
    normalize_batch,
    numbers_from_text,
    validate_frame,
)
from tests.conftest import shop_reference

ROWS = 200
SCHEMA = SchemaSettings(
    features=["x1", "x2", "x3", "color"], categorical=["color"], target="label", classes=[0, 1, 2]
)
#: The bootstrapped suite's soft checks here (x3's observed range, color's value set) made hard
#: with ``hard_columns``, so the row-policy tests below cover row-level failures of every kind
#: (with the defaults they only warn: see test_soft_failures_are_accepted_with_warnings).
STRICT = ["x3", "color"]
ROWS_POLICY = ValidationSettings(hard_columns=STRICT)  # row_policy "rows", max_bad_row_fraction 0.2
BATCH_POLICY = ValidationSettings(row_policy="batch", hard_columns=STRICT)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return shop_reference(rows=ROWS)


@pytest.fixture(scope="module")
def suite(reference: pd.DataFrame) -> dict:
    return bootstrap_suite(reference, SCHEMA)


@pytest.fixture
def ref(reference: pd.DataFrame) -> pd.DataFrame:
    """A private copy each test may corrupt."""
    return reference.copy()


def run(df: pd.DataFrame, suite: dict, settings: ValidationSettings = ROWS_POLICY, name="b"):
    return decide(validate_frame(df, suite, batch=name), settings)


def failed_pairs(report: ValidationReport) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in report.failed}


def assert_whole_batch_quarantined(report: ValidationReport) -> None:
    assert report.decision == "quarantined"
    assert report.bad_rows == tuple(range(report.rows))
    assert report.rows_accepted == 0


# --------------------------------------------------------------------------- clean data


def test_clean_data_is_accepted(ref, suite) -> None:
    report = run(ref, suite)
    assert report.success
    assert report.failed == ()
    assert report.decision == "accepted"
    assert report.bad_rows == ()
    assert report.rows == ROWS
    assert report.rows_accepted == ROWS
    assert report.evaluated == len(suite["expectations"])


def test_fresh_sample_of_same_distribution_is_accepted(suite) -> None:
    # Another seed from the same generator stays inside the widened ranges.
    report = run(shop_reference(seed=1, rows=50), suite)
    assert report.decision == "accepted", report.reason


# --------------------------------------------------------------------------- table-level failures


def test_missing_column_quarantines_batch(ref, suite) -> None:
    report = run(ref.drop(columns=["x2"]), suite)
    assert_whole_batch_quarantined(report)
    assert ("expect_table_columns_to_match_set", None) in failed_pairs(report)
    assert "expect_table_columns_to_match_set" in report.reason
    assert "missing" in report.reason and "x2" in report.reason
    assert "x2" in report.failed_columns


def test_extra_column_quarantines_batch(ref, suite) -> None:
    report = run(ref.assign(surprise=1), suite)
    assert_whole_batch_quarantined(report)
    assert failed_pairs(report) == {("expect_table_columns_to_match_set", None)}
    assert "expect_table_columns_to_match_set" in report.reason
    assert "surprise" in report.reason


def test_a_stray_word_in_a_numeric_column_quarantines_its_row_only(ref, suite, tmp_path) -> None:
    # As it arrives from a producer: a CSV with a word where a number belongs makes the whole
    # column text when read; the other values are numbers still.
    ref["x1"] = ref["x1"].astype("object")
    ref.loc[5, "x1"] = "oops"
    path = tmp_path / "dtype.csv"
    ref.to_csv(path, index=False)
    df = read_batch(path)
    assert not pd.api.types.is_numeric_dtype(df["x1"])
    report = run(df, suite)
    assert report.decision == "partial" and report.bad_rows == (5,), report.reason
    by_type = {f.expectation: f for f in report.errors if f.column == "x1"}
    typed = by_type.pop("expect_column_values_to_be_in_type_list")
    assert (typed.row_level, typed.rows, typed.examples) == (True, (5,), ["oops"])
    # The word is no number: x1 has none missing in the reference, so not-null fails there too.
    assert [(k, f.rows) for k, f in by_type.items()] == [
        ("expect_column_values_to_not_be_null", (5,))
    ]
    assert "in_type_list(x1)" in report.reason
    # The range checks ran on the numbers: nothing else failed, and nothing failed to run.
    assert all(f.error is None for f in report.failed)
    assert "| expect_column_values_to_be_in_type_list | x1 | 1 |" in report.to_markdown()


def test_numbers_from_text_parses_the_numeric_columns_only(ref, suite) -> None:
    text = ref.astype({"x1": "str", "color": "str"})
    text.loc[2, "x1"] = "n.a."
    parsed = numbers_from_text(text, suite)
    assert parsed["x1"].dtype == "float64" and np.isnan(parsed.loc[2, "x1"])
    assert parsed["x1"].drop(index=2).tolist() == ref["x1"].drop(index=2).astype(float).tolist()
    assert parsed["color"].dtype == text["color"].dtype  # a categorical stays text
    assert text.loc[2, "x1"] == "n.a."  # the input is not modified
    assert numbers_from_text(ref, suite) is ref  # nothing read as text: the frame itself


def test_a_numeric_column_of_words_quarantines_the_batch(ref, suite) -> None:
    """Not one number: the column is text, a table-level type failure."""
    ref["x1"] = [f"w{i}" for i in range(len(ref))]
    report = run(ref, suite)
    assert_whole_batch_quarantined(report)
    assert ("expect_column_values_to_be_in_type_list", "x1") in failed_pairs(report)
    assert "'x1'" in report.reason
    # Table-level: even with row_policy "rows" no row of it is accepted.
    assert report.rows_accepted == 0


def test_check_that_cannot_run_is_reported_as_error_and_dtype_failure_leads(ref, suite) -> None:
    """A range check on a text column cannot be evaluated: GX raises inside the metric.

    ``FailedExpectation.error`` exists for this ("could not be evaluated"), and ``decide`` sorts
    such failures after the dtype failure that caused them, so the reason starts with the cause.
    """
    ref["x1"] = [f"w{i}" for i in range(len(ref))]
    report = run(ref, suite)
    between = [
        f
        for f in report.failed
        if f.expectation == "expect_column_values_to_be_between" and f.column == "x1"
    ]
    assert between  # the observed range, and for a count-like column its hard ">= 0" too
    for f in between:
        assert f.error, f"range check on text reported as {f.describe()!r}"
        assert "could not be evaluated" in f.describe()
    first = report.reason.removeprefix("table-level failure: ").split(";")[0]
    assert first.startswith("expect_column_values_to_be_in_type_list on column 'x1'"), report.reason


# --------------------------------------------------------------------------- row-level failures


def _nulls(df: pd.DataFrame) -> pd.DataFrame:
    df["x2"] = df["x2"].astype("float64")
    df.loc[[3, 50, 120], "x2"] = np.nan
    return df


def _out_of_range(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[7, "x3"] = 10_000
    df.loc[150, "x3"] = -5
    return df


def _unknown_category(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[11, "color"] = "purple"
    return df


def _bad_label(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[[0, 199], "label"] = 7
    return df


ROW_CASES = {
    "nulls": (_nulls, "expect_column_values_to_not_be_null", "x2", (3, 50, 120)),
    "out_of_range": (_out_of_range, "expect_column_values_to_be_between", "x3", (7, 150)),
    "unknown_category": (_unknown_category, "expect_column_values_to_be_in_set", "color", (11,)),
    "label_outside_classes": (_bad_label, "expect_column_values_to_be_in_set", "label", (0, 199)),
}


@pytest.mark.parametrize("case", ROW_CASES)
def test_row_failure_quarantines_only_bad_rows_under_rows_policy(case, ref, suite) -> None:
    corrupt, expectation, column, rows = ROW_CASES[case]
    report = run(corrupt(ref), suite, ROWS_POLICY)
    assert report.decision == "partial", report.reason
    assert failed_pairs(report) == {(expectation, column)}
    assert report.bad_rows == rows
    assert report.rows_quarantined == len(rows)
    assert report.rows_accepted == ROWS - len(rows)
    (failure,) = report.failed
    assert failure.row_level
    assert failure.unexpected_count == len(rows)
    assert failure.rows == rows
    assert column in report.reason


@pytest.mark.parametrize("case", ROW_CASES)
def test_row_failure_quarantines_batch_under_batch_policy(case, ref, suite) -> None:
    corrupt, expectation, column, _rows = ROW_CASES[case]
    report = run(corrupt(ref), suite, BATCH_POLICY)
    assert_whole_batch_quarantined(report)
    assert failed_pairs(report) == {(expectation, column)}
    assert "row_policy=batch" in report.reason
    assert column in report.reason


def test_bad_rows_are_the_union_of_all_row_failures(ref, suite) -> None:
    df = _unknown_category(_out_of_range(_nulls(ref)))
    df.loc[3, "color"] = "purple"  # row 3 also has a null: counted once
    report = run(df, suite)
    assert report.decision == "partial"
    assert report.bad_rows == (3, 7, 11, 50, 120, 150)
    assert set(report.failed_columns) == {"x2", "x3", "color"}


def test_bad_rows_are_positions_not_index_labels(ref, suite) -> None:
    df = ref.set_index(pd.Index(range(1000, 1000 + ROWS)))  # a frame sliced out of a bigger one
    df.iloc[4, df.columns.get_loc("color")] = "purple"
    report = run(df, suite)
    assert report.bad_rows == (4,)


def test_bad_rows_are_file_positions_after_reading_csv(ref, suite, tmp_path: Path) -> None:
    path = tmp_path / "batch.csv"
    _out_of_range(ref).to_csv(path, index=False)
    report = run(read_batch(path), suite)
    assert report.decision == "partial"
    assert report.bad_rows == (7, 150)
    lines = path.read_text().splitlines()
    assert "10000" in lines[7 + 1]  # CSV line = row + 2 (1-based, after the header)


def test_too_many_bad_rows_quarantines_batch(ref, suite) -> None:
    ref.loc[0:59, "x3"] = 10_000  # 60 of 200 rows = 30 % > 20 %
    report = run(ref, suite)
    assert_whole_batch_quarantined(report)
    assert "60 of 200 rows failed" in report.reason
    assert "max_bad_row_fraction" in report.reason


def test_bad_row_fraction_threshold_is_inclusive(ref, suite) -> None:
    at_limit = ref.copy()
    at_limit.loc[0:39, "x3"] = 10_000  # 40 of 200 = exactly 20 %
    over = ref.copy()
    over.loc[0:40, "x3"] = 10_000  # 41 of 200
    assert run(at_limit, suite).decision == "partial"
    assert run(over, suite).decision == "quarantined"


def test_decide_uses_the_configured_fraction(ref, suite) -> None:
    report = validate_frame(_out_of_range(ref), suite)  # 2 of 200 rows = 1 %
    strict = ValidationSettings(max_bad_row_fraction=0.005, hard_columns=STRICT)
    assert decide(report, ROWS_POLICY).decision == "partial"
    assert decide(report, strict).decision == "quarantined"
    assert report.decision == "accepted" and report.bad_rows == ()  # decide returns a new report


# --------------------------------------------------------------------------- unlabeled batches


def test_unlabeled_batch_passes_after_normalize_and_input_is_untouched(ref, suite) -> None:
    unlabeled = ref.drop(columns=["label"])
    before = unlabeled.copy(deep=True)
    normalized = normalize_batch(unlabeled, SCHEMA)
    assert list(unlabeled.columns) == ["x1", "x2", "x3", "color"]
    pd.testing.assert_frame_equal(unlabeled, before)
    assert list(normalized.columns) == [*SCHEMA.features, SCHEMA.target]
    assert normalized["label"].isna().all()
    report = run(normalized, suite)
    assert report.decision == "accepted", report.reason
    pd.testing.assert_frame_equal(unlabeled, before)


def test_unlabeled_batch_without_normalize_is_quarantined(ref, suite) -> None:
    report = run(ref.drop(columns=["label"]), suite)
    assert report.decision == "quarantined"
    assert "label" in report.reason


def test_normalize_keeps_a_labeled_batch(ref) -> None:
    out = normalize_batch(ref, SCHEMA)
    pd.testing.assert_frame_equal(out, ref)


def test_unlabeled_batch_with_bad_feature_still_fails(ref, suite) -> None:
    df = normalize_batch(_unknown_category(ref).drop(columns=["label"]), SCHEMA)
    report = run(df, suite)
    assert report.decision == "partial"
    assert report.bad_rows == (11,)


# --------------------------------------------------------------------------- reports


def test_markdown_names_failing_expectation_and_column(ref, suite) -> None:
    report = run(_out_of_range(ref), suite, name="shop-batch.csv")
    md = report.to_markdown()
    assert "shop-batch.csv" in md
    assert "partial" in md
    row = next(
        line for line in md.splitlines() if line.startswith("| expect_column_values_to_be_between")
    )
    assert "| x3 |" in row
    assert "10000" in row  # an example of what failed
    assert "198 accepted" in md and "2 quarantined" in md


def test_markdown_of_table_failure_names_missing_column(ref, suite) -> None:
    md = run(ref.drop(columns=["x2"]), suite).to_markdown()
    assert "quarantined" in md
    row = next(
        line for line in md.splitlines() if line.startswith("| expect_table_columns_to_match")
    )
    assert "(table)" in row
    assert "x2" in row


def test_markdown_with_sample_rows(ref, suite) -> None:
    df = _unknown_category(ref)
    report = run(df, suite)
    md = report.to_markdown(sample=df.iloc[list(report.bad_rows)])
    assert "Example quarantined rows" in md
    assert "purple" in md


@pytest.mark.parametrize("case", ["clean", "missing_column", "dtype", *ROW_CASES])
def test_to_dict_is_json_serialisable(case, ref, suite) -> None:
    if case == "clean":
        df = ref
    elif case == "missing_column":
        df = ref.drop(columns=["x2"])
    elif case == "dtype":
        df = ref.assign(x1=ref["x1"].astype("str"))
    else:
        df = ROW_CASES[case][0](ref)
    report = run(df, suite)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["decision"] == report.decision
    assert d["bad_rows_total"] == len(report.bad_rows)
    assert d["rows_accepted"] + d["rows_quarantined"] == ROWS
    assert [f["expectation"] for f in d["failed"]] == [f.expectation for f in report.failed]
    assert all("rows" not in f for f in d["failed"])


def test_to_dict_is_strict_json_when_nulls_failed(ref, suite) -> None:
    """Reports are written for other tools (artifacts, JSON files): NaN is not JSON."""
    report = run(_nulls(ref), suite)
    json.dumps(report.to_dict(), allow_nan=False)


# --------------------------------------------------------------------------- reading files


def assert_read_error(path: Path, *fragments: str) -> BatchReadError:
    with pytest.raises(BatchReadError) as info:
        read_batch(path)
    err = info.value
    assert isinstance(err, EdgeloopError)
    assert str(path) in str(err)
    assert err.path == str(path)
    for fragment in fragments:
        assert fragment in err.problem, err.problem
    return err


def test_read_csv_and_parquet(ref, tmp_path: Path) -> None:
    ref.to_csv(tmp_path / "b.csv", index=False)
    ref.to_parquet(tmp_path / "b.parquet")
    ref.to_parquet(tmp_path / "b.pq")
    for name in ("b.csv", "b.parquet", "b.pq"):
        df = read_batch(tmp_path / name)
        assert list(df.columns) == list(ref.columns)
        assert len(df) == ROWS
        pd.testing.assert_series_equal(df["x3"], ref["x3"])


def test_read_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    assert_read_error(path, "empty", "0 bytes")


def test_read_empty_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    assert_read_error(path, "empty")


def test_read_header_only_csv(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("x1,x2,x3,color,label\n")
    assert_read_error(path, "header", "5 columns", "no rows")


def test_read_blank_lines_only_csv(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("\n\n\n")
    assert_read_error(path, "no header")


def test_read_truncated_parquet(ref, tmp_path: Path) -> None:
    path = tmp_path / "cut.parquet"
    ref.to_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_read_error(path, "unreadable parquet")


def test_read_binary_garbage_with_csv_extension(tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_read_error(path, "not UTF-8")


def test_read_parquet_bytes_named_csv(ref, tmp_path: Path) -> None:
    path = tmp_path / "really-parquet.csv"
    ref.to_parquet(path)
    assert_read_error(path, "CSV")


@pytest.mark.parametrize("name", ["batch.txt", "batch.xlsx", "batch"])
def test_read_wrong_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("x1,x2\n1,2\n")
    assert_read_error(path, "unsupported extension", ".csv")


def test_read_missing_file(tmp_path: Path) -> None:
    assert_read_error(tmp_path / "missing.csv", "not found")


def test_read_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert_read_error(folder, "not a file")


def test_read_csv_with_too_many_fields_in_a_row(tmp_path: Path) -> None:
    path = tmp_path / "malformed.csv"
    path.write_text("x1,x2,color\n1,2.5,red\n3,4.5,blue,EXTRA\n5,6.5,green\n")
    assert_read_error(path, "malformed CSV", "line 3")


def test_read_csv_with_too_many_fields_in_first_row(tmp_path: Path) -> None:
    """pandas takes a first data row with one field too many as 'the first column is an index'.

    That shifts every value one column to the left without a word; it must be an error like
    the same fault one row further down.
    """
    path = tmp_path / "malformed-first.csv"
    path.write_text("x1,x2,color\n1,2.5,red,EXTRA\n3,4.5,blue\n5,6.5,green\n")
    assert_read_error(path, "malformed CSV")


# --------------------------------------------------------------------------- severities


@pytest.mark.parametrize("case", ["out_of_range", "unknown_category"])
def test_soft_failures_are_accepted_with_warnings(case, ref, suite) -> None:
    """With the default settings a value outside the observed range or a new category warns."""
    corrupt, expectation, column, rows = ROW_CASES[case]
    report = run(corrupt(ref), suite, ValidationSettings())
    assert report.decision == "accepted", report.reason
    assert report.bad_rows == () and report.rows_accepted == ROWS
    (warning,) = report.warnings
    assert (warning.expectation, warning.column, warning.severity) == (
        expectation,
        column,
        "warning",
    )
    assert report.errors == ()
    assert report.warning_rows == rows
    md = report.to_markdown()
    assert "## Warnings (rows accepted)" in md and column in md
    assert f"{len(rows)} accepted with warnings" in md


def test_hard_failure_beside_a_soft_one_quarantines_only_the_hard_rows(ref, suite) -> None:
    df = _unknown_category(_nulls(ref))
    report = run(df, suite, ValidationSettings())
    assert report.decision == "partial"
    assert report.bad_rows == (3, 50, 120)
    assert [f.column for f in report.errors] == ["x2"]
    assert [f.column for f in report.warnings] == ["color"]
    assert report.warning_rows == (11,)
    assert "warnings (rows accepted): in_set(color)" in report.reason
    d = report.to_dict()
    assert d["rows_with_warnings"] == 1 and d["warnings"][0].startswith(
        "expect_column_values_to_be_in_set on column 'color'"
    )


def _old_style(suite: dict) -> dict:
    """A suite written before severities existed."""
    return {
        **suite,
        "expectations": [
            {k: v for k, v in e.items() if k != "severity"} for e in suite["expectations"]
        ],
    }


@pytest.mark.parametrize("case", ROW_CASES)
def test_old_suite_without_severities_is_all_hard(case, ref, suite) -> None:
    corrupt, expectation, column, rows = ROW_CASES[case]
    old = _old_style(suite)
    assert all("severity" not in e for e in old["expectations"])
    report = run(corrupt(ref), old, ValidationSettings())
    assert report.decision == "partial", report.reason
    assert failed_pairs(report) == {(expectation, column)}
    assert report.bad_rows == rows
    assert report.warnings == () and all(f.severity == "critical" for f in report.failed)
    assert report.reason == f"{len(rows)} bad rows quarantined: {report.failed[0].short}"
    md = report.to_markdown()
    assert "Warnings" not in md and "## Failed expectations" in md
