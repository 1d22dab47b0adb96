"""Suite bootstrap from a reference frame, and loading suites from JSON files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import SchemaSettings
from edgeloop.core.errors import SuiteError
from edgeloop.data.readers import load_suite
from pipelines.profile import NUMERIC_TYPES, bootstrap_suite
from pipelines.validate import validate_frame
from tests.conftest import shop_reference

SCHEMA = SchemaSettings(
    features=["x1", "x2", "x3", "color"], categorical=["color"], target="label", classes=[0, 1, 2]
)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return shop_reference()


@pytest.fixture(scope="module")
def suite(reference: pd.DataFrame) -> dict:
    return bootstrap_suite(reference, SCHEMA, name="shop")


def find(suite: dict, kind: str, column: str | None = None) -> list[dict]:
    return [
        e["kwargs"]
        for e in suite["expectations"]
        if e["type"] == kind and (column is None or e["kwargs"].get("column") == column)
    ]


def one(suite: dict, kind: str, column: str | None = None) -> dict:
    found = find(suite, kind, column)
    assert len(found) == 1, f"{kind} on {column}: {found}"
    return found[0]


# --------------------------------------------------------------------------- bootstrap


def test_reference_passes_its_own_suite(reference, suite) -> None:
    report = validate_frame(reference, suite, batch="reference")
    assert report.success, [f.describe() for f in report.failed]
    assert report.evaluated == len(suite["expectations"])
    assert report.suite == "shop"


def test_suite_is_plain_json(suite) -> None:
    text = json.dumps(suite, allow_nan=False)
    assert json.loads(text) == suite
    assert suite["name"] == "shop"
    assert suite["meta"]["reference_rows"] == 200


def test_suite_has_exact_column_set(suite) -> None:
    kw = one(suite, "expect_table_columns_to_match_set")
    assert kw["column_set"] == ["x1", "x2", "x3", "color", "label"]
    assert kw["exact_match"] is True
    assert one(suite, "expect_table_row_count_to_be_between")["min_value"] == 1


@pytest.mark.parametrize("column", ["x1", "x2", "x3"])
def test_numeric_ranges_have_a_margin(reference, suite, column) -> None:
    lo, hi = reference[column].min(), reference[column].max()
    # The observed range (soft); a count-like column also has a hard ">= 0" of its own.
    (kw,) = [
        k for k in find(suite, "expect_column_values_to_be_between", column) if "max_value" in k
    ]
    assert kw["min_value"] < lo or kw["min_value"] == 0 == lo
    assert kw["max_value"] > hi
    # 10 % of the observed span on each side (rounded outwards for integers).
    pad = 0.1 * (hi - lo)
    assert kw["min_value"] == pytest.approx(lo - pad, abs=1.0)
    assert kw["max_value"] == pytest.approx(hi + pad, abs=1.0)
    assert one(suite, "expect_column_values_to_be_in_type_list", column)["type_list"] == (
        NUMERIC_TYPES
    )
    assert find(suite, "expect_column_values_to_not_be_null", column)


def test_integer_columns_get_integer_bounds(reference, suite) -> None:
    kw = one(suite, "expect_column_values_to_be_between", "x3")
    assert isinstance(kw["min_value"], int) and isinstance(kw["max_value"], int)
    span = reference["x3"].max() - reference["x3"].min()
    assert kw["min_value"] == int(np.floor(reference["x3"].min() - 0.1 * span))
    assert kw["max_value"] == int(np.ceil(reference["x3"].max() + 0.1 * span))


def test_float_column_bounds_are_exact(reference, suite) -> None:
    kw = one(suite, "expect_column_values_to_be_between", "x2")
    lo, hi = float(reference["x2"].min()), float(reference["x2"].max())
    assert kw["min_value"] == pytest.approx(lo - 0.1 * (hi - lo), abs=1e-6)
    assert kw["max_value"] == pytest.approx(hi + 0.1 * (hi - lo), abs=1e-6)


def test_margin_parameter_widens_ranges(reference) -> None:
    narrow = bootstrap_suite(reference, SCHEMA, margin=0.0)
    wide = bootstrap_suite(reference, SCHEMA, margin=0.5)
    n = one(narrow, "expect_column_values_to_be_between", "x2")
    w = one(wide, "expect_column_values_to_be_between", "x2")
    assert n["min_value"] == pytest.approx(reference["x2"].min())
    assert n["max_value"] == pytest.approx(reference["x2"].max())
    assert w["min_value"] < n["min_value"] and w["max_value"] > n["max_value"]


def test_category_set_is_the_seen_values(reference, suite) -> None:
    kw = one(suite, "expect_column_values_to_be_in_set", "color")
    assert kw["value_set"] == sorted(reference["color"].unique())
    assert kw["value_set"] == ["blue", "green", "red"]
    assert one(suite, "expect_column_values_to_be_of_type", "color")["type_"] == "str"
    assert not find(suite, "expect_column_values_to_be_between", "color")


def test_target_checked_against_class_set(suite) -> None:
    kw = one(suite, "expect_column_values_to_be_in_set", "label")
    assert kw["value_set"] == [0, 1, 2]
    # Production batches are unlabeled: the target must not be required.
    assert not find(suite, "expect_column_values_to_not_be_null", "label")


def test_class_set_comes_from_config_not_data(reference) -> None:
    schema = SchemaSettings(
        features=SCHEMA.features, categorical=["color"], target="label", classes=[0, 1, 2, 3]
    )
    kw = one(bootstrap_suite(reference, schema), "expect_column_values_to_be_in_set", "label")
    assert kw["value_set"] == [0, 1, 2, 3]


def test_column_with_nulls_gets_no_not_null_and_still_passes(reference) -> None:
    df = reference.copy()
    df["x2"] = df["x2"].astype("float64")
    df.loc[[5, 6], "x2"] = np.nan
    suite = bootstrap_suite(df, SCHEMA)
    assert not find(suite, "expect_column_values_to_not_be_null", "x2")
    assert find(suite, "expect_column_values_to_not_be_null", "x1")
    assert validate_frame(df, suite).success


def test_constant_column_still_gets_room(reference) -> None:
    df = reference.assign(x1=5)
    kw = one(bootstrap_suite(df, SCHEMA), "expect_column_values_to_be_between", "x1")
    assert kw["min_value"] < 5 < kw["max_value"]


def test_too_many_categories_drops_the_set(reference) -> None:
    suite = bootstrap_suite(reference, SCHEMA, max_categories=2)
    assert not find(suite, "expect_column_values_to_be_in_set", "color")
    assert find(suite, "expect_column_values_to_be_of_type", "color")


def test_non_numeric_column_not_declared_categorical_is_refused(reference) -> None:
    schema = SchemaSettings(features=SCHEMA.features, target="label", classes=[0, 1, 2])
    with pytest.raises(ValueError, match="'color'") as info:
        bootstrap_suite(reference, schema)
    assert "categorical" in str(info.value)


def test_reference_missing_a_configured_column_is_refused(reference) -> None:
    with pytest.raises(ValueError, match="x3"):
        bootstrap_suite(reference.drop(columns=["x3"]), SCHEMA)


# --------------------------------------------------------------------------- load_suite


def test_load_suite_round_trip_validates(reference, suite, tmp_path: Path) -> None:
    on_disk = {
        **suite,
        "id": "0000-copied-from-elsewhere",
        "expectations": [{**e, "id": f"id-{i}"} for i, e in enumerate(suite["expectations"])],
    }
    path = tmp_path / "shop.json"
    path.write_text(json.dumps(on_disk))
    loaded = load_suite(path)
    assert "id" not in loaded
    assert all("id" not in e for e in loaded["expectations"])
    assert loaded["expectations"] == suite["expectations"]
    assert validate_frame(reference, loaded).success


def test_load_suite_defaults_name_to_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "minimal.json"
    path.write_text(
        json.dumps(
            {
                "expectations": [
                    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}}
                ]
            }
        )
    )
    assert load_suite(path)["name"] == "minimal"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"name": "x", "expectations": [', "not valid JSON"),
        ("", "not valid JSON"),
        ('{"name": "x"}', "expectations"),
        ('{"name": "x", "expectations": {"type": "a"}}', "expectations"),
        ('["not", "a", "mapping"]', "expectations"),
        ('{"name": "x", "expectations": [{"kwargs": {}}]}', "expectations[0] needs a 'type'"),
    ],
)
def test_bad_suite_file_raises_suite_error_naming_file(tmp_path: Path, content, fragment) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_suite_file_raises_suite_error_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "expectations" / "batch.json"
    with pytest.raises(SuiteError, match="not found") as info:
        load_suite(path)
    assert str(path) in str(info.value)


def test_invalid_kwargs_raise_suite_error(reference, tmp_path: Path) -> None:
    path = tmp_path / "badkw.json"
    bad = {"column": "x1", "max_value": 10, "maximum": 3}
    path.write_text(
        json.dumps(
            {"expectations": [{"type": "expect_column_values_to_be_between", "kwargs": bad}]}
        )
    )
    with pytest.raises(SuiteError, match="maximum"):
        validate_frame(reference, load_suite(path))


def test_unknown_expectation_type_is_not_silently_dropped(reference, tmp_path: Path) -> None:
    """A typo in an expectation type must not turn a check into "passed, 0 evaluated".

    GX's ExpectationSuite logs and skips expectations it cannot build instead of raising.
    """
    path = tmp_path / "typo.json"
    exps = [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
        # A check that would fail (x1 has values above 0), misspelled:
        {"type": "expect_column_values_to_be_betwen", "kwargs": {"column": "x1", "max_value": 0}},
    ]
    path.write_text(json.dumps({"name": "typo", "expectations": exps}))
    with pytest.raises(SuiteError, match="expect_column_values_to_be_betwen"):
        suite = load_suite(path)
        report = validate_frame(reference, suite)
        pytest.fail(f"validated with {report.evaluated} of {len(exps)} expectations evaluated")
