"""Regression targets through the pure stages: split, fit, score, evaluate, gates, edge cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import EdgeCaseSettings, GateSettings, TrainingSettings
from edgeloop.core.errors import TrainingError
from pipelines import evaluate as ev
from pipelines import paired
from pipelines import train as tr
from pipelines.edge_cases import select
from pipelines.score import TARGET_SCALE_ATTR, score_frame
from tests.conftest import housing_reference, housing_schema

SCHEMA = housing_schema()
FOREST = TrainingSettings(
    estimator="sklearn.ensemble.RandomForestRegressor",
    params={"n_estimators": 30, "n_jobs": 1},
)


def _data(rows: int = 400, seed: int = 5) -> pd.DataFrame:
    df = housing_reference(rows, seed)
    df["row_id"] = df["listing_id"].astype("str")
    df["batch_id"] = "reference"
    return df


def test_a_regressor_is_fitted_and_records_the_targets_scale() -> None:
    split = tr.split(_data(), SCHEMA, FOREST, 42)
    model = tr.fit(split.train, SCHEMA, FOREST, 0)
    scale = getattr(model, TARGET_SCALE_ATTR)
    assert scale == pytest.approx(float(np.std(split.train["price"])))
    y_pred = model.predict(tr.features(split.holdout, SCHEMA))
    metrics = ev.evaluate(tr.target(split.holdout, SCHEMA), y_pred, split.holdout, SCHEMA, [])
    # The price is a noisy linear function of the features: a forest explains most of it.
    assert metrics["r2"] > 0.7
    assert 0 < metrics["mae"] < metrics["rmse"] < scale
    assert "accuracy" not in metrics and not any(k.startswith("class_") for k in metrics)


def test_a_classifier_is_refused_for_a_regression_target() -> None:
    wrong = FOREST.model_copy(update={"estimator": "sklearn.ensemble.RandomForestClassifier"})
    with pytest.raises(TrainingError, match="not a regressor"):
        tr.build_pipeline(SCHEMA, wrong, 0)


def test_non_numeric_labels_name_the_values() -> None:
    df = _data(120).astype({"price": "object"})
    df.loc[3, "price"] = "cheap"
    with pytest.raises(TrainingError, match="cheap"):
        tr.target(df, SCHEMA)


def test_score_frame_gives_prediction_spread_and_a_bounded_confidence() -> None:
    df = _data()
    model = tr.fit(df, SCHEMA, FOREST, 0)
    batch = housing_reference(80, seed=9).assign(batch_id="b1")
    batch["row_id"] = batch["listing_id"].astype("str")
    out = score_frame(model, batch, SCHEMA)
    assert list(out.columns) == [
        "row_id", "listing_id", "batch_id", "predicted", "confidence", "margin", "spread", "scale",
    ]  # fmt: skip
    # The members' mean is the forest's own prediction.
    np.testing.assert_array_equal(out["predicted"], model.predict(batch[SCHEMA.inputs]))
    one = score_frame(model, batch.head(1), SCHEMA)  # one row: the same bits too
    assert one["predicted"].iloc[0] == model.predict(batch.head(1)[SCHEMA.inputs])[0]
    assert (out["spread"] > 0).all()
    assert out["confidence"].between(0, 1).all()
    # A row far outside the training data spreads the members more than a typical one.
    odd = batch.head(1).assign(area=2000.0, rooms=30, age=500.0)
    assert score_frame(model, odd, SCHEMA)["spread"].iloc[0] > out["spread"].median()


def test_a_model_without_members_scores_nan_confidence() -> None:
    hgb = TrainingSettings(
        estimator="sklearn.ensemble.HistGradientBoostingRegressor", params={"max_iter": 30}
    )
    model = tr.fit(_data(), SCHEMA, hgb, 0)
    batch = housing_reference(20, seed=9).assign(batch_id="b1")
    batch["row_id"] = batch["listing_id"].astype("str")
    out = score_frame(model, batch, SCHEMA)
    assert out["confidence"].isna().all() and out["spread"].isna().all()
    assert np.isfinite(out["predicted"]).all()


def test_gates_judge_r2_against_the_mean_baseline_and_the_champion() -> None:
    split = tr.split(_data(), SCHEMA, FOREST, 42)
    y = tr.target(split.holdout, SCHEMA)
    good = tr.fit(split.train, SCHEMA, FOREST, 0).predict(tr.features(split.holdout, SCHEMA))
    cand = ev.evaluate(y, good, split.holdout, SCHEMA, [])
    base = ev.baseline_metrics(
        tr.target(split.train, SCHEMA), y, split.holdout, SCHEMA, [], "mean", 0
    )
    assert base["baseline_r2"] < 0.05  # the training mean explains nothing of the holdout
    gates = GateSettings(metric="r2", baseline="mean", min_lift_over_baseline=0.05, min_r2=0.5)
    assert ev.check_gates(cand, None, gates, base).passed
    # A champion clearly better than the candidate: non-inferiority fails on R².
    worse = ev.evaluate(y, good + 0.4 * np.std(y), split.holdout, SCHEMA, [])
    assert worse["r2"] > 0.5
    result = ev.check_gates(worse, cand, gates, base)
    assert [c.name for c in result.failed] == ["non_inferiority"]
    assert "r2" in result.failed[0].detail
    far = ev.evaluate(y, good + np.std(y), split.holdout, SCHEMA, [])
    failed = [c.name for c in ev.check_gates(far, cand, gates, base).failed]
    assert failed == ["min_r2", "min_lift_over_baseline", "non_inferiority"]


def test_paired_r2_error_is_small_for_close_models_and_positive() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(0, 1, 300)
    a = y + rng.normal(0, 0.3, 300)
    b = y + rng.normal(0, 0.3, 300)
    w = np.ones(300)
    strata = np.full(300, "reference")
    se = paired.paired_delta_se(y, a, b, w, strata, [], "r2", seed=1)
    assert 0 < se < 0.05
    assert math.isnan(paired.paired_delta_se(y[:1], a[:1], b[:1], w[:1], strata[:1], [], "r2"))
    same = paired.paired_delta_se(y, a, a, w, strata, [], "mae", seed=1)
    assert same == 0.0


def test_edge_cases_flag_uncertain_and_disagreeing_rows_without_a_class_cap() -> None:
    model = tr.fit(_data(), SCHEMA, FOREST, 0)
    batch = housing_reference(200, seed=9).assign(batch_id="b1")
    batch["row_id"] = batch["listing_id"].astype("str")
    scores = score_frame(model, batch, SCHEMA)
    other = scores["predicted"].to_numpy().copy()
    scale = float(scores["scale"].iloc[0])
    other[:5] += 2 * scale  # five rows where a challenger is far from the champion
    settings = EdgeCaseSettings(
        min_confidence=0.0, min_margin=0.0, budget=10, n_clusters=0, max_class_share=0.1
    )
    picked = select(scores, settings, features=batch[SCHEMA.features], challenger_predicted=other)
    assert set(picked["row_id"]) == set(scores["row_id"].head(5))
    assert (picked["reasons"] == "disagreement").all()
    # Uncertainty: the rows of lowest confidence, the budget filled (no class cap on numbers).
    settings = settings.model_copy(update={"min_confidence": 0.99})
    picked = select(scores, settings, features=batch[SCHEMA.features])
    assert len(picked) == 10
    lowest = scores.nsmallest(10, "confidence")["row_id"]
    assert set(picked["row_id"]) == set(lowest)


# ---------------------------------------------------------------- other estimators
def test_hist_gradient_boosting_splits_on_categories_natively() -> None:
    hgb = TrainingSettings(
        estimator="sklearn.ensemble.HistGradientBoostingRegressor",
        params={"max_iter": 50},
        max_categories=3,
    )
    schema = SCHEMA.model_copy(update={"high_cardinality": ["district"]})
    model = tr.fit(_data(), schema, hgb, 0)
    est = model.named_steps["model"]
    assert list(est.categorical_features) == [0]  # district, as codes, not one-hot columns
    assert model.named_steps["features"].transform(_data(5)[schema.inputs]).shape[1] == 4
    # A district never seen (and a missing one) predict without error.
    odd = housing_reference(3, seed=9).assign(district=["moon", None, "centre"])
    assert np.isfinite(model.predict(odd[schema.inputs])).all()
    # Params that name the categorical features themselves are left alone (one-hot path).
    own = hgb.model_copy(update={"params": {"max_iter": 20, "categorical_features": None}})
    steps = tr.build_pipeline(schema, own, 0).named_steps["features"].transformers
    assert [name for name, _, _ in steps][:1] == ["categorical"]


def test_a_lightgbm_classifier_trains_through_the_pipeline() -> None:
    from tests.conftest import small_reference, small_schema

    schema = small_schema()
    df = small_reference(300)
    df["row_id"] = [f"r{i}" for i in range(len(df))]
    lgbm = TrainingSettings(
        estimator="lightgbm.LGBMClassifier",
        params={"n_estimators": 30, "verbose": -1, "n_jobs": 1},
    )
    split = tr.split(df, schema, lgbm, 42)
    model = tr.fit(split.train, schema, lgbm, 0)
    proba = model.predict_proba(tr.features(split.holdout, schema))
    assert proba.shape == (len(split.holdout), 3)
    assert model.named_steps["model"].random_state == 0  # seeded from seeds.train


def test_a_custom_training_function_is_called_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_models.py").write_text(
        "from sklearn.linear_model import Ridge\n"
        "from sklearn.pipeline import make_pipeline\n"
        "from sklearn.compose import make_column_transformer\n"
        "from sklearn.preprocessing import OneHotEncoder\n"
        "from sklearn.impute import SimpleImputer\n"
        "CALLS = []\n"
        "def fit(x, y, seed):\n"
        "    CALLS.append((len(x), seed))\n"
        "    pre = make_column_transformer((OneHotEncoder(handle_unknown='ignore'), ['district']),"
        " remainder=SimpleImputer())\n"
        "    return make_pipeline(pre, Ridge()).fit(x, y)\n"
        "def broken(x, y, seed):\n"
        "    return 'not a model'\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    custom = TrainingSettings(fit="my_models:fit")
    model = tr.fit(_data(), SCHEMA, custom, 3)
    import my_models  # type: ignore[import-not-found]

    assert my_models.CALLS == [(400, 3)]
    assert getattr(model, TARGET_SCALE_ATTR) > 0
    assert score_frame(model, _data(10), SCHEMA)["confidence"].isna().all()  # no members
    with pytest.raises(TrainingError, match="without \\['predict'\\]"):
        tr.fit(_data(), SCHEMA, TrainingSettings(fit="my_models:broken"), 3)
    with pytest.raises(TrainingError, match="cannot import"):
        tr.fit(_data(), SCHEMA, TrainingSettings(fit="nowhere_pkg:fit"), 3)


def test_last_value_baseline_is_the_latest_earlier_training_target() -> None:
    train = pd.DataFrame({"t": ["2025-01-01", "2025-01-03", "2025-01-05", "bad"]})
    y_train = np.array([1.0, 3.0, 5.0, 100.0])
    holdout = pd.DataFrame({"t": ["2025-01-04", "2024-12-01", "2025-01-09", None, "2025-01-03"]})
    got = ev.last_value_baseline(train, y_train, holdout, "t")
    # Before every training row, or no time: the training mean (27.25).
    np.testing.assert_allclose(got, [3.0, 27.25, 5.0, 27.25, 3.0])


def test_time_split_with_a_last_value_baseline_gates_a_forecast() -> None:
    df = _data(400)
    timed = TrainingSettings(**{**FOREST.model_dump(), "split": "time"})
    split = tr.split(df, SCHEMA, timed, 42)
    assert split.holdout["listed_on"].min() > split.train["listed_on"].max()  # the latest rows
    y = tr.target(split.holdout, SCHEMA)
    base = ev.baseline_metrics(
        tr.target(split.train, SCHEMA), y, split.holdout, SCHEMA, [], "last_value", 0,
        train_frame=split.train,
    )  # fmt: skip
    last = float(tr.target(split.train, SCHEMA)[-1])
    assert base["baseline_mae"] == pytest.approx(float(np.mean(np.abs(y - last))))
