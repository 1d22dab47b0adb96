"""Column roles inferred from realistic frames (pure: no project, no stores)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import SchemaSettings
from edgeloop.core.errors import EdgeloopError
from pipelines.roles import Overrides, categorical_limit, infer_roles


def customers(rows: int = 3000, seed: int = 0) -> pd.DataFrame:
    """Customer churn as teams really have it: an id, dates in two formats, an epoch column,
    nulls, a high-cardinality city, a constant and an all-null column, an imbalanced target."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2023-01-01", periods=rows, freq="h")
    iso = days.strftime("%Y-%m-%d").to_numpy(dtype=object)
    dmy = days.strftime("%d/%m/%Y").to_numpy(dtype=object)
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, rows + 1),
            "signup": pd.array(np.where(np.arange(rows) % 2 == 0, iso, dmy), dtype="str"),
            "last_seen_ts": (1_700_000_000 + np.arange(rows) * 3600).astype("int64"),
            "age": rng.integers(18, 90, rows),
            "income": np.where(rng.random(rows) < 0.05, np.nan, rng.normal(5e4, 1e4, rows)),
            "city": pd.array(rng.choice([f"city-{i}" for i in range(400)], rows), dtype="str"),
            "plan": pd.array(
                np.where(rng.random(rows) < 0.1, None, rng.choice(["basic", "pro"], rows)),
                dtype="str",
            ),
            "country": pd.array(["NL"] * rows, dtype="str"),
            "notes": np.full(rows, np.nan),
            "vip": rng.random(rows) < 0.3,
            "churned": (rng.random(rows) < 0.12).astype(int),
        }
    )


def role(roles, column):  # type: ignore[no-untyped-def]
    return next(c for c in roles.columns if c.column == column)


def test_realistic_frame_gets_each_role_with_a_reason() -> None:
    r = infer_roles(customers(), "churned")
    assert r.id == "customer_id"
    assert r.time == "signup"
    assert role(r, "last_seen_ts").role == "ignore"  # a second time column
    assert "epoch seconds" in role(r, "last_seen_ts").reason
    assert r.features == ("age", "income", "city", "plan", "vip")
    assert r.categorical == ("city", "plan", "vip")
    assert r.high_cardinality == ("city",)
    assert set(r.ignore) == {"last_seen_ts", "country", "notes"}
    assert "constant" in role(r, "country").reason
    assert "null" in role(r, "notes").reason
    assert all(c.reason for c in r.columns)
    assert r.classes == (0, 1)
    assert r.imbalanced and r.rare_classes == ("1",)
    # What init writes is a valid schema: id, time and ignored columns are never features.
    schema = SchemaSettings(**r.schema())
    assert "customer_id" not in schema.features and "signup" not in schema.features
    assert set(schema.columns) == set(customers().columns)


def test_gates_follow_the_target() -> None:
    imbalanced = infer_roles(customers(), "churned").gate_defaults()
    assert imbalanced == {
        "metric": "balanced_accuracy",
        "min_lift_over_baseline": 0.05,
        "baseline": "most_frequent",
        "class_recall_floors": {"1": 0.2},
    }
    df = customers().assign(churned=np.arange(3000) % 3)
    balanced = infer_roles(df, "churned")
    assert not balanced.imbalanced
    assert balanced.gate_defaults()["metric"] == "macro_f1"
    assert balanced.gate_defaults()["class_recall_floors"] == {}


def test_summary_names_every_column_the_target_and_the_gates() -> None:
    text = infer_roles(customers(), "churned").summary()
    for column in customers().columns:
        assert column in text
    assert "unique integers named like an id" in text
    assert "imbalanced (rare: 1)" in text
    assert "balanced_accuracy" in text and "most_frequent" in text


def test_string_ids_epoch_time_and_row_counters() -> None:
    df = customers(500).drop(columns=["customer_id", "signup"])
    df.insert(0, "ref", pd.array([f"C-{i:06d}" for i in range(123, 623)], dtype="str"))
    r = infer_roles(df, "churned")
    assert r.id == "ref" and "strings" in role(r, "ref").reason
    assert r.time == "last_seen_ts"
    # An unnamed, strictly increasing integer column is a row counter, not a measurement.
    counter = customers(500).drop(columns=["customer_id"]).assign(n=np.arange(10, 510))
    assert infer_roles(counter, "churned").id == "n"


def test_unique_measurements_and_floats_are_not_ids() -> None:
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "weight_g": rng.permutation(np.arange(1000, 5000))[:300],  # unique, not consecutive
            "ratio": rng.random(300),  # unique floats
            "label": rng.integers(0, 2, 300),
        }
    )
    r = infer_roles(df, "label")
    assert r.id is None
    assert role(r, "weight_g").role == "numeric" and role(r, "ratio").role == "numeric"


def test_text_that_is_not_dates_and_free_text() -> None:
    rng = np.random.default_rng(2)
    df = pd.DataFrame(
        {
            "weekday": pd.array(rng.choice(["Monday", "May", "Sunday"], 300), dtype="str"),
            "comment": pd.array([f"customer said {i} things" for i in range(300)], dtype="str"),
            "x": rng.random(300),
            "label": rng.integers(0, 2, 300),
        }
    )
    r = infer_roles(df, "label")
    assert r.time is None
    assert role(r, "weekday").role == "categorical"
    assert role(r, "comment").role == "ignore"


def test_categorical_limit() -> None:
    assert categorical_limit(100) == 20
    assert categorical_limit(1000) == 50
    assert categorical_limit(1_000_000) == 100


def test_overrides() -> None:
    df = customers(600)
    r = infer_roles(
        df,
        "churned",
        Overrides.of(
            id="customer_id", time="last_seen_ts", ignore="age", numeric=["vip"], categorical="plan"
        ),
    )
    assert r.time == "last_seen_ts" and role(r, "signup").role == "ignore"
    assert role(r, "age").reason == "set by --ignore"
    assert role(r, "vip").role == "numeric"
    assert r.id == "customer_id"


def test_override_naming_no_column_lists_the_columns() -> None:
    with pytest.raises(EdgeloopError, match=r"--id cust: no such column \(columns: customer_id"):
        infer_roles(customers(300), "churned", Overrides.of(id="cust"))
    with pytest.raises(EdgeloopError, match="--ignore nope: no such column"):
        infer_roles(customers(300), "churned", Overrides.of(ignore=["age", "nope"]))
    with pytest.raises(EdgeloopError, match="two roles"):
        infer_roles(customers(300), "churned", Overrides.of(ignore="age", numeric="age"))


def test_id_with_duplicates_names_them() -> None:
    df = customers(300)
    df.loc[[5, 9], "customer_id"] = 4
    df.loc[20, "customer_id"] = 30
    with pytest.raises(
        EdgeloopError,
        match=r"--id customer_id: not unique: 2 value\(s\) occur more than once \(4, 30\)",
    ):
        infer_roles(df, "churned", Overrides.of(id="customer_id"))
    # Inferred, a column with duplicates is simply not an id.
    assert infer_roles(df, "churned").id is None


def test_time_that_does_not_parse_is_named_with_examples() -> None:
    df = customers(300).assign(signup=pd.array(["soon", "2023-01-02", "later"] * 100, dtype="str"))
    with pytest.raises(EdgeloopError, match=r"--time signup: 67% .* \(e\.g\. 'soon', 'later'\)"):
        infer_roles(df, "churned", Overrides.of(time="signup"))


def test_target_one_class_continuous_missing() -> None:
    df = customers(300)
    with pytest.raises(EdgeloopError, match="'churned' has one class only"):
        infer_roles(df.assign(churned=1), "churned")
    price = np.round(np.random.default_rng(0).normal(100, 20, 300), 2)
    assert infer_roles(df.assign(price=price), "price").task == "regression"
    # Many integer values are continuous too (a count, not classes).
    assert infer_roles(df.assign(visits=np.arange(300) * 7), "visits").task == "regression"
    with pytest.raises(EdgeloopError, match="missing labels"):
        infer_roles(df.assign(churned=df["churned"].where(df.index != 3)), "churned")
    with pytest.raises(EdgeloopError, match=r"no column 'label' \(columns: customer_id"):
        infer_roles(df, "label")


def test_string_classes_and_a_ten_class_target_are_not_refused() -> None:
    df = customers(1000).drop(columns=["churned"])
    digits = df.assign(digit=np.arange(1000) % 10)
    r = infer_roles(digits, "digit")
    assert r.classes == tuple(range(10)) and not r.imbalanced
    names = df.assign(kind=pd.array(np.where(np.arange(1000) < 950, "ok", "fraud"), dtype="str"))
    r = infer_roles(names, "kind")
    assert r.classes == ("fraud", "ok") and r.rare_classes == ("fraud",)
