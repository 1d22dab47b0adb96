"""Regression targets from a user's CSV: inferred task and range, the config init writes, and
the suites it bootstraps, checked with real Great Expectations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from edgeloop.core.config import load_settings
from edgeloop.core.errors import EdgeloopError
from pipelines.labels import labels_suite
from pipelines.profile import bootstrap_suite
from pipelines.roles import infer_roles, target_range
from pipelines.validate import normalize_batch, validate_frame
from tests.conftest import git_init, housing_reference, housing_schema, run_cli


def test_a_continuous_target_is_regression_with_a_widened_rounded_range() -> None:
    df = housing_reference()
    r = infer_roles(df, "price")
    assert r.task == "regression" and r.classes == ()
    lo, hi = float(df["price"].min()), float(df["price"].max())
    assert r.observed == (lo, hi)
    low, high = r.target_range or (0.0, 0.0)
    # Widened by half the width on each side, rounded outwards; a price is never below 0.
    assert high >= hi + 0.5 * (hi - lo) and high - (hi + 0.5 * (hi - lo)) < 10
    assert low == 0.0
    assert (low, high) == (0.0, 920.0)
    assert r.schema()["task"] == "regression" and r.schema()["classes"] == []
    assert r.gate_defaults() == {"metric": "r2", "min_lift_over_baseline": 0.05, "baseline": "mean"}
    assert r.training_defaults() == {
        "split": "time",
        "estimator": "sklearn.ensemble.RandomForestRegressor",
        "params": {"n_estimators": 200, "n_jobs": -1},
    }
    assert r.other_defaults()["shadow"] == {"metric": "abs_error"}
    text = r.summary()
    assert "continuous: regression" in text and "non-integer values" in text
    assert "[0, 920]" in text and "recall floors" not in text


def test_range_rounding_keeps_negative_targets_and_the_column_name_rule() -> None:
    temps = pd.Series([-3.2, 4.1, 11.7, 18.05])
    # A temperature may go below 0: widened, rounded to two digits of the width (21.25).
    assert target_range(temps, "temperature") == (-14.0, 29.0)
    assert target_range(pd.Series([0.12, 0.37, 0.5]), "ratio") == (-0.08, 0.69)
    assert target_range(pd.Series([250_000.0, 410_000.0]), "price") == (170_000.0, 490_000.0)
    # A constant target still gets room (its magnitude stands in for the width).
    assert target_range(pd.Series([1000.0, 1000.0]), "amount") == (500.0, 1500.0)


def test_few_integer_values_stay_classification_and_task_overrides() -> None:
    df = housing_reference()
    r = infer_roles(df, "rooms")  # 6 integer values: classes
    assert r.task == "classification" and r.classes == (1, 2, 3, 4, 5, 6)
    forced = infer_roles(df, "rooms", task="regression")
    assert forced.task == "regression" and forced.task_reason == "set by --task"
    # 1..6 widened by 2.5 each side; "rooms" is not named like an amount: no floor at 0.
    assert forced.target_range == (-1.5, 8.5)
    with pytest.raises(EdgeloopError, match=r"non-integer values .* cannot be classes"):
        infer_roles(df, "price", task="classification")
    with pytest.raises(EdgeloopError, match=r"--task regression: .*'district' is not numeric"):
        infer_roles(df, "district", task="regression")
    many = df.assign(visits=np.arange(len(df)) * 7)  # many integers: a count, regressed
    assert infer_roles(many, "visits").task == "regression"


def _regression_project(tmp_path: Path, *flags: str) -> tuple[Path, str]:
    """``edgeloop init --data houses.csv --target price`` in a new git repository; (root, what
    init printed)."""
    root = tmp_path / "houses"
    root.mkdir()
    git_init(root)
    src = tmp_path / "houses.csv"
    housing_reference().to_csv(src, index=False)
    out = run_cli("init", "--data", str(src), "--target", "price", *flags, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    return root, out.stdout


@pytest.mark.slow
def test_init_writes_a_regression_config_and_suites_through_the_cli(tmp_path: Path) -> None:
    root, printed = _regression_project(tmp_path)
    assert "continuous: regression (300 distinct values, non-integer values)" in printed
    assert "labels accepted in [0, 920]" in printed
    cfg = yaml.safe_load((root / "edgeloop.yaml").read_text(encoding="utf-8"))
    assert cfg["schema"]["task"] == "regression" and cfg["schema"]["classes"] == []
    assert cfg["schema"]["target_range"] == [0.0, 920.0]
    assert cfg["training"]["estimator"] == "sklearn.ensemble.RandomForestRegressor"
    assert cfg["training"]["params"] == {"n_estimators": 200, "n_jobs": -1}
    gates = cfg["gates"]
    assert (gates["metric"], gates["baseline"], gates["min_lift_over_baseline"]) == (
        "r2",
        "mean",
        0.05,
    )
    assert gates["class_recall_floors"] == {}
    assert cfg["shadow"]["metric"] == "abs_error" and cfg["edge_cases"]["min_margin"] == 0.0
    settings = load_settings(root / "edgeloop.yaml")  # a valid regression config
    assert settings.data_schema.is_regression
    suite = json.loads(settings.suite_path().read_text(encoding="utf-8"))
    on_target = [e for e in suite["expectations"] if e["kwargs"].get("column") == "price"]
    assert [(e["type"], e["severity"]) for e in on_target] == [
        ("expect_column_values_to_be_in_type_list", "critical"),
        ("expect_column_values_to_be_between", "warning"),
    ]
    labels = json.loads(settings.suite_path("labels").read_text(encoding="utf-8"))
    assert labels == labels_suite(settings.data_schema)


@pytest.mark.slow
def test_init_task_flag_regresses_a_few_valued_integer_target(tmp_path: Path) -> None:
    root = tmp_path / "rooms"
    root.mkdir()
    git_init(root)
    src = tmp_path / "rooms.csv"
    housing_reference().drop(columns=["price"]).to_csv(src, index=False)
    out = run_cli("init", "--data", str(src), "--target", "rooms", "--task", "regression", cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "continuous: regression (set by --task)" in out.stdout
    cfg = yaml.safe_load((root / "edgeloop.yaml").read_text(encoding="utf-8"))
    assert cfg["schema"]["task"] == "regression" and cfg["schema"]["target_range"] == [-1.5, 8.5]
    bad = run_cli("init", "--data", str(src), "--target", "rooms", "--task", "nope", cwd=root)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_batch_suite_checks_the_target_type_hard_and_its_range_soft() -> None:
    schema = housing_schema()  # target_range [0, 1000]
    ref = housing_reference()
    suite = bootstrap_suite(ref, schema)
    assert validate_frame(ref, suite).failed == ()
    # Production batches arrive unlabeled: the all-null target passes both checks.
    unlabeled = normalize_batch(housing_reference(50, seed=2).drop(columns=["price"]), schema)
    assert validate_frame(unlabeled, suite).failed == ()
    # A labeled batch with one implausible price: a warning on that row, not a quarantine.
    odd = housing_reference(50, seed=3)
    odd.loc[7, "price"] = 5000.0
    (failed,) = validate_frame(odd, suite).failed
    assert (failed.expectation, failed.severity, failed.rows) == (
        "expect_column_values_to_be_between",
        "warning",
        (7,),
    )
    # A text label: the type check (hard) fails; no class-set check is there at all.
    texts = odd.assign(price=odd["price"].astype("str").astype("object"))
    texts.loc[3, "price"] = "cheap"
    failed_types = {f.expectation: f for f in validate_frame(texts, suite).failed}
    hard = failed_types["expect_column_values_to_be_in_type_list"]
    assert hard.severity == "critical" and 3 in hard.rows
    assert not any(e["type"] == "expect_column_values_to_be_in_set" and
                   e["kwargs"]["column"] == "price" for e in suite["expectations"])  # fmt: skip


def test_batch_suite_without_a_configured_range_uses_the_observed_one() -> None:
    schema = housing_schema().model_copy(update={"target_range": None})
    ref = housing_reference()
    suite = bootstrap_suite(ref, schema)
    (between,) = [
        e for e in suite["expectations"]
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "price"
    ]  # fmt: skip
    lo, hi = float(ref["price"].min()), float(ref["price"].max())
    pad = 0.1 * (hi - lo)
    assert between["kwargs"]["min_value"] == pytest.approx(lo - pad)
    assert between["kwargs"]["max_value"] == pytest.approx(hi + pad)
