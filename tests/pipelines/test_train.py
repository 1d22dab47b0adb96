"""Training and evaluation stages: fixed holdout, clear errors, fixed metric keys, the gates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from edgeloop.core.config import GateSettings, SchemaSettings, SliceSettings, TrainingSettings
from edgeloop.core.errors import EdgeloopError, TrainingError
from pipelines.evaluate import (
    GateResult,
    check_gates,
    confusion_figure,
    evaluate,
    slice_mask,
)
from pipelines.train import (
    TimeFeatures,
    batch_holdout_mask,
    build_pipeline,
    estimator_class,
    features,
    fit,
    holdout_mask,
    labeled_rows,
    make_estimator,
    row_hash,
    split,
    target,
    time_holdout_mask,
)
from tests.conftest import small_reference, small_schema

SCHEMA = small_schema()
SEED = 42


def dataset(rows: int = 300, seed: int = 3) -> pd.DataFrame:
    """``small_reference`` with a ``row_id`` column (r0, r1, ...)."""
    df = small_reference(rows, seed)
    df.insert(0, "row_id", [f"r{i}" for i in range(len(df))])
    return df


def training(**kw) -> TrainingSettings:  # type: ignore[no-untyped-def]
    """Small, fast training settings (10 trees, one job) unless overridden."""
    base = {
        "params": {"n_estimators": 10, "n_jobs": 1},
        "min_train_rows": 20,
        "min_holdout_rows": 5,
    }
    return TrainingSettings(**{**base, **kw})


def ids(frame: pd.DataFrame) -> set[str]:
    return set(frame["row_id"])


# --------------------------------------------------------------------------- holdout membership


def test_holdout_membership_never_changes_when_rows_are_added() -> None:
    small_ids = pd.Series([f"r{i}" for i in range(500)])
    big_ids = pd.Series([f"r{i}" for i in range(3000)])
    small = holdout_mask(small_ids, 0.2, SEED)
    big = holdout_mask(big_ids, 0.2, SEED)
    assert small.any() and (~small).any()
    np.testing.assert_array_equal(small, big[:500])


def test_holdout_membership_does_not_depend_on_row_order_or_index() -> None:
    row_ids = pd.Series([f"r{i}" for i in range(1000)])
    mask = dict(zip(row_ids, holdout_mask(row_ids, 0.2, SEED), strict=True))
    shuffled = row_ids.sample(frac=1.0, random_state=1)  # permuted values and index
    shuffled_mask = holdout_mask(shuffled, 0.2, SEED)
    assert {r: bool(m) for r, m in zip(shuffled, shuffled_mask, strict=True)} == mask
    reindexed = pd.Series(row_ids.to_numpy(), index=range(5000, 6000))
    np.testing.assert_array_equal(
        holdout_mask(reindexed, 0.2, SEED), holdout_mask(row_ids, 0.2, SEED)
    )


def test_split_of_a_grown_dataset_keeps_every_old_row_on_its_side() -> None:
    big = dataset(2000, seed=5)
    small = big.iloc[:600].copy()
    s_small = split(small, SCHEMA, training(), SEED)
    s_big = split(big, SCHEMA, training(), SEED)
    assert ids(s_small.holdout) == ids(s_big.holdout) & ids(small)
    assert ids(s_small.train) == ids(s_big.train) & ids(small)


def test_same_seed_same_split_different_seed_different_split() -> None:
    df = dataset(2000)
    a = split(df, SCHEMA, training(), SEED)
    b = split(df.copy(), SCHEMA, training(), SEED)
    c = split(df, SCHEMA, training(), SEED + 1)
    assert ids(a.holdout) == ids(b.holdout)
    assert ids(a.train) == ids(b.train)
    # ~2 * 0.2 * 0.8 * 2000 = 640 rows expected to differ between independent splits.
    assert len(ids(a.holdout) ^ ids(c.holdout)) > 300
    r1, r2 = row_hash(df["row_id"], 1), row_hash(df["row_id"], 2)
    assert not np.array_equal(r1, r2)
    np.testing.assert_array_equal(r1, row_hash(df["row_id"], 1))


def _batched(rows: int, batches: int, seed: int = 5) -> pd.DataFrame:
    """``dataset`` whose first half is the reference set and the rest ``batches`` batches."""
    df = dataset(rows, seed)
    batch = ["reference"] * (rows // 2) + [f"b{i % batches}" for i in range(rows - rows // 2)]
    return df.assign(batch_id=batch)


def test_every_labeled_production_batch_is_in_the_holdout() -> None:
    # Batches of 3 labeled rows: a 0.2 hash share alone leaves about half of them out.
    df = _batched(600, 100)
    plain = holdout_mask(df["row_id"], 0.2, SEED)
    mask = batch_holdout_mask(df, 0.2, SEED, 1)
    per_batch = pd.Series(mask).groupby(df["batch_id"].to_numpy()).sum()
    assert (pd.Series(plain).groupby(df["batch_id"].to_numpy()).sum() == 0).sum() > 20
    assert (per_batch.drop("reference") >= 1).all()
    assert (mask >= plain).all()  # the hash share stays; the top-up only adds
    reference = (df["batch_id"] == "reference").to_numpy()
    np.testing.assert_array_equal(mask[reference], plain[reference])
    np.testing.assert_array_equal(batch_holdout_mask(df, 0.2, SEED, 0), plain)
    np.testing.assert_array_equal(
        batch_holdout_mask(df.drop(columns="batch_id"), 0.2, SEED, 2), plain
    )
    two = batch_holdout_mask(df, 0.2, SEED, 2)
    assert (pd.Series(two).groupby(df["batch_id"].to_numpy()).sum().drop("reference") >= 2).all()


def test_labels_arriving_in_a_batch_never_move_a_training_row_into_the_holdout() -> None:
    """Labels of a batch arrive over time: a model trained on the earlier rows must never be
    scored on them later. Rows may leave the top-up for training, never the other way."""
    full = _batched(2000, 4, seed=7)
    order = np.random.default_rng(0).permutation(len(full))
    trained_on: set[str] = set()
    for n in range(1000, 2001, 50):  # the reference first, then labels in a random order
        labeled = full.iloc[np.sort(np.r_[np.arange(1000), order[order >= 1000][: n - 1000]])]
        s = split(labeled, SCHEMA, training(holdout_min_per_batch=5), SEED)
        assert not (ids(s.holdout) & trained_on)
        trained_on |= ids(s.train)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_holdout_fraction_is_roughly_respected(fraction: float) -> None:
    df = dataset(2000)
    s = split(df, SCHEMA, training(holdout_fraction=fraction), SEED)
    assert abs(len(s.holdout) / 2000 - fraction) <= 0.05
    assert ids(s.train).isdisjoint(ids(s.holdout))
    assert len(s.train) + len(s.holdout) == 2000


def test_row_hash_is_uniform_in_unit_interval() -> None:
    h = row_hash(pd.Series([f"id-{i}" for i in range(5000)]), SEED)
    assert h.shape == (5000,)
    assert (h >= 0).all() and (h < 1).all()
    assert 0.45 < h.mean() < 0.55
    assert len(np.unique(h)) == 5000


# --------------------------------------------------------------------------- max_rows


def test_max_rows_gives_a_deterministic_subset_of_that_size() -> None:
    df = dataset(1000)
    full = split(df, SCHEMA, training(), SEED)
    a = split(df, SCHEMA, training(max_rows=150), SEED)
    b = split(df.sample(frac=1.0, random_state=9), SCHEMA, training(max_rows=150), SEED)
    assert len(a.train) == 150
    assert ids(a.train) == ids(b.train)
    assert ids(a.train) <= ids(full.train)
    assert ids(a.holdout) == ids(full.holdout)  # the holdout is never subsampled


def test_max_rows_larger_than_data_keeps_everything() -> None:
    df = dataset(300)
    full = split(df, SCHEMA, training(), SEED)
    capped = split(df, SCHEMA, training(max_rows=10_000), SEED)
    assert ids(capped.train) == ids(full.train)


# --------------------------------------------------------------------------- errors


def test_too_few_training_rows_names_min_train_rows() -> None:
    with pytest.raises(TrainingError, match="min_train_rows") as exc:
        split(dataset(40), SCHEMA, training(min_train_rows=50), SEED)
    assert "dataset too small" in str(exc.value)
    assert isinstance(exc.value, EdgeloopError)


def test_too_few_holdout_rows_names_min_holdout_rows() -> None:
    with pytest.raises(TrainingError, match="min_holdout_rows") as exc:
        split(dataset(200), SCHEMA, training(min_holdout_rows=100), SEED)
    assert "holdout" in str(exc.value)


def test_max_rows_below_min_train_rows_is_reported() -> None:
    with pytest.raises(TrainingError, match="min_train_rows"):
        split(dataset(500), SCHEMA, training(max_rows=10, min_train_rows=50), SEED)


def test_missing_class_is_named() -> None:
    df = dataset(400)
    df.loc[df["label"] == 2, "label"] = 1
    with pytest.raises(TrainingError, match="missing from the training data") as exc:
        split(df, SCHEMA, training(), SEED)
    assert "[2]" in str(exc.value)


def test_class_seen_only_in_the_holdout_is_still_missing() -> None:
    df = dataset(600)
    mask = holdout_mask(df["row_id"], 0.2, SEED)
    df.loc[(df["label"] == 2) & ~mask, "label"] = 0
    assert (df.loc[mask, "label"] == 2).any()
    with pytest.raises(TrainingError, match=r"\[2\]"):
        split(df, SCHEMA, training(), SEED)


def test_missing_string_class_is_named() -> None:
    schema = SCHEMA.model_copy(update={"classes": ["low", "mid", "high"]})
    df = dataset(400)
    df["label"] = df["label"].map({0: "low", 1: "mid", 2: "mid"})
    with pytest.raises(TrainingError, match="'high'"):
        split(df, schema, training(), SEED)


def test_unlabeled_rows_are_ignored() -> None:
    df = dataset(600)
    unlabeled = df.index % 3 == 0
    df.loc[unlabeled, "label"] = np.nan  # the column becomes float, as after annotation
    labeled = labeled_rows(df, SCHEMA)
    assert len(labeled) == int((~unlabeled).sum())
    assert labeled["label"].notna().all()
    s = split(df, SCHEMA, training(), SEED)
    assert len(s.train) + len(s.holdout) == len(labeled)
    assert s.train["label"].notna().all() and s.holdout["label"].notna().all()
    assert ids(s.train) | ids(s.holdout) == ids(labeled)
    # Labeled rows keep their membership whether or not unlabeled rows are around.
    s_labeled_only = split(labeled, SCHEMA, training(), SEED)
    assert ids(s_labeled_only.holdout) == ids(s.holdout)


def test_too_few_labeled_rows_counts_only_labeled_ones() -> None:
    df = dataset(400)
    df.loc[df.index >= 30, "label"] = np.nan
    with pytest.raises(TrainingError, match="min_train_rows") as exc:
        split(df, SCHEMA, training(min_train_rows=50), SEED)
    assert "30 labeled" in str(exc.value)


def test_estimator_path_without_module() -> None:
    with pytest.raises(TrainingError, match=r"training\.estimator.*package\.module\.ClassName"):
        estimator_class("RandomForestClassifier")


def test_estimator_path_that_does_not_import() -> None:
    with pytest.raises(TrainingError, match=r"training\.estimator.*cannot import nosuchpkg_xyz"):
        estimator_class("nosuchpkg_xyz.models.Forest")


def test_estimator_path_with_no_such_class() -> None:
    with pytest.raises(TrainingError, match="has no class NoSuchForest"):
        estimator_class("sklearn.ensemble.NoSuchForest")
    with pytest.raises(TrainingError, match="has no class"):
        estimator_class("sklearn.utils.shuffle")  # a function, not a class


@pytest.mark.parametrize(
    "path", ["sklearn.linear_model.LinearRegression", "sklearn.ensemble.RandomForestRegressor"]
)
def test_estimator_that_is_not_a_probabilistic_classifier(path: str) -> None:
    with pytest.raises(TrainingError, match="not a classifier with predict_proba") as exc:
        estimator_class(path)
    assert "training.estimator" in str(exc.value)


def test_estimator_with_predict_proba_that_is_not_a_classifier_is_refused() -> None:
    # GaussianMixture has fit and predict_proba, but it is a clusterer: it ignores y and its
    # "probabilities" are over mixture components, not over schema.classes.
    with pytest.raises(TrainingError, match="not a classifier"):
        make_estimator(training(estimator="sklearn.mixture.GaussianMixture", params={}), SEED)


def test_estimator_class_accepts_classifiers() -> None:
    from sklearn.ensemble import RandomForestClassifier

    assert estimator_class("sklearn.ensemble.RandomForestClassifier") is RandomForestClassifier
    assert estimator_class("sklearn.linear_model.LogisticRegression") is LogisticRegression


def test_unknown_param_is_named() -> None:
    t = training(params={"n_estimatorz": 5, "max_depth": 3})
    with pytest.raises(TrainingError, match="n_estimatorz") as exc:
        make_estimator(t, SEED)
    msg = str(exc.value)
    assert "training.params" in msg
    assert "max_depth" not in msg.split("(it takes")[0]  # only the bad one is blamed
    assert "n_estimators" in msg  # ...and the accepted ones are listed


@pytest.mark.parametrize(
    ("params", "named"),
    [({"n_estimators": -3}, "n_estimators"), ({"criterion": "nope"}, "criterion")],
)
def test_bad_param_value_is_caught_at_make_estimator_time(params: dict, named: str) -> None:
    t = training(params=params)
    with pytest.raises(TrainingError, match=named) as exc:
        make_estimator(t, SEED)
    assert "training.params" in str(exc.value)
    with pytest.raises(TrainingError, match=named):
        build_pipeline(SCHEMA, t, SEED)  # before any data is touched


def test_random_state_comes_from_the_seed_unless_set() -> None:
    assert make_estimator(training(), 7).random_state == 7
    assert make_estimator(training(params={"random_state": 3}), 7).random_state == 3
    est = make_estimator(training(params={"n_estimators": 5, "max_depth": 2}), 7)
    assert (est.n_estimators, est.max_depth) == (5, 2)


class KwargsClassifier(ClassifierMixin, BaseEstimator):
    """A classifier that forwards extra keyword arguments (like xgboost's / lightgbm's)."""

    def __init__(self, C: float = 1.0, **kwargs: object) -> None:
        self.C = C
        self.kwargs = kwargs

    def fit(self, X, y):  # type: ignore[no-untyped-def]
        self.model_ = LogisticRegression(C=self.C, max_iter=500, **self.kwargs).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict(self, X):  # type: ignore[no-untyped-def]
        return self.model_.predict(X)

    def predict_proba(self, X):  # type: ignore[no-untyped-def]
        return self.model_.predict_proba(X)


def test_estimator_taking_kwargs_accepts_extra_params() -> None:
    t = training(estimator="tests.pipelines.test_train.KwargsClassifier", params={"tol": 0.001})
    est = make_estimator(t, SEED)
    assert est.kwargs == {"tol": 0.001}


# --------------------------------------------------------------------------- target


def test_float_labels_read_back_as_ints() -> None:
    df = dataset(50)
    df["label"] = df["label"].astype("float64") + 1.0  # 1.0, 2.0, 3.0
    y = target(df, SCHEMA)
    assert y.dtype == np.int64
    assert set(y.tolist()) <= {1, 2, 3}
    assert 3 in y.tolist() and 3.0 in df["label"].tolist()


def test_string_classes_give_string_labels() -> None:
    schema = SCHEMA.model_copy(update={"classes": ["a", "b", "c"]})
    df = pd.DataFrame({"label": ["a", "c", "b"]})
    assert target(df, schema).tolist() == ["a", "c", "b"]


def test_split_missing_class_check_is_not_fooled_by_float_labels() -> None:
    df = dataset(400)
    df["label"] = df["label"].astype("float64")
    s = split(df, SCHEMA, training(), SEED)  # no false "class(es) [0, 1, 2] missing"
    assert set(target(s.train, SCHEMA).tolist()) == {0, 1, 2}
    df.loc[df["label"] == 2.0, "label"] = 1.0
    with pytest.raises(TrainingError, match=r"\[2\]"):
        split(df, SCHEMA, training(), SEED)


def test_features_are_the_schema_columns_in_order() -> None:
    df = dataset(10)
    assert list(features(df, SCHEMA).columns) == ["age", "income", "score", "region"]


# --------------------------------------------------------------------------- fit


def test_fit_returns_a_pipeline_with_one_probability_column_per_class() -> None:
    df = dataset(600)
    s = split(df, SCHEMA, training(), SEED)
    before = s.train.copy(deep=True)
    model = fit(s.train, SCHEMA, training(), SEED)
    pd.testing.assert_frame_equal(s.train, before)  # input untouched (values and dtypes)
    assert isinstance(model, Pipeline)
    proba = model.predict_proba(features(s.holdout, SCHEMA))
    assert proba.shape == (len(s.holdout), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(model.classes_) == [0, 1, 2]
    # The data has signal: better than chance (1/3) on the holdout.
    acc = (model.predict(features(s.holdout, SCHEMA)) == target(s.holdout, SCHEMA)).mean()
    assert acc > 0.5


def test_fit_on_float_labels_learns_int_classes() -> None:
    df = dataset(400)
    df["label"] = df["label"].astype("float64")
    s = split(df, SCHEMA, training(), SEED)
    before = s.train.copy(deep=True)
    model = fit(s.train, SCHEMA, training(), SEED)
    pd.testing.assert_frame_equal(s.train, before)
    assert list(model.classes_) == [0, 1, 2]
    assert model.predict(features(s.holdout, SCHEMA)).dtype.kind == "i"


def test_fit_is_reproducible_for_a_seed() -> None:
    s = split(dataset(400), SCHEMA, training(), SEED)
    x = features(s.holdout, SCHEMA)
    a = fit(s.train, SCHEMA, training(), 1).predict_proba(x)
    b = fit(s.train, SCHEMA, training(), 1).predict_proba(x)
    np.testing.assert_array_equal(a, b)


def test_fit_handles_unseen_category_at_predict_time() -> None:
    s = split(dataset(400), SCHEMA, training(), SEED)
    model = fit(s.train, SCHEMA, training(), SEED)
    x = features(s.holdout, SCHEMA).copy()
    x["region"] = "atlantis"
    assert model.predict_proba(x).shape == (len(x), 3)


def test_fit_with_another_estimator() -> None:
    t = training(estimator="sklearn.tree.DecisionTreeClassifier", params={"max_depth": 4})
    s = split(dataset(300), SCHEMA, t, SEED)
    model = fit(s.train, SCHEMA, t, SEED)
    assert model.predict_proba(features(s.holdout, SCHEMA)).shape[1] == 3


# --------------------------------------------------------------------------- evaluate

SLICES = [
    SliceSettings(name="north", column="region", op="==", value="north"),
    SliceSettings(name="old", column="age", op=">=", value=60),
    SliceSettings(name="west", column="region", op="==", value="west"),  # never present
]


def _frame_and_labels(rows: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    df = dataset(rows)
    return df, target(df, SCHEMA)


def test_evaluate_has_fixed_keys_per_class_and_per_slice() -> None:
    df, y = _frame_and_labels()
    rng = np.random.default_rng(0)
    perfect = evaluate(y, y.copy(), df, SCHEMA, SLICES)
    noisy = evaluate(y, rng.integers(0, 3, len(y)), df, SCHEMA, SLICES)
    constant = evaluate(y, np.zeros(len(y), dtype=int), df, SCHEMA, SLICES)
    assert set(perfect) == set(noisy) == set(constant)
    for c in SCHEMA.classes:
        for m in ("precision", "recall", "f1", "support"):
            assert f"class_{c}_{m}" in perfect
    for sl in SLICES:
        for m in ("accuracy", "macro_f1", "weighted_f1", "rows"):
            assert f"slice_{sl.name}_{m}" in perfect
    assert {"accuracy", "macro_f1", "weighted_f1", "rows"} <= set(perfect)
    assert all(isinstance(v, float) for v in noisy.values())
    json.dumps(noisy)  # MLflow-ready: plain floats


def test_evaluate_values() -> None:
    df, y = _frame_and_labels()
    perfect = evaluate(y, y.copy(), df, SCHEMA, SLICES)
    assert perfect["accuracy"] == perfect["macro_f1"] == 1.0
    assert perfect["rows"] == float(len(y))
    assert perfect["class_1_f1"] == 1.0
    assert perfect["class_1_support"] == float((y == 1).sum())
    assert perfect["slice_north_rows"] == float((df["region"] == "north").sum())
    assert perfect["slice_old_rows"] == float((df["age"] >= 60).sum())
    assert perfect["slice_north_macro_f1"] == 1.0

    wrong = (y + 1) % 3
    worst = evaluate(y, wrong, df, SCHEMA, SLICES)
    assert worst["accuracy"] == 0.0
    assert worst["class_0_f1"] == 0.0


def test_evaluate_class_missing_from_predictions_scores_zero() -> None:
    df, y = _frame_and_labels()
    pred = np.where(y == 2, 1, y)  # class 2 never predicted
    out = evaluate(y, pred, df, SCHEMA, [])
    assert out["class_2_f1"] == 0.0
    assert out["class_2_recall"] == 0.0
    assert out["class_0_f1"] == 1.0


def test_empty_slice_gives_nan_metrics_and_zero_rows() -> None:
    df, y = _frame_and_labels()
    out = evaluate(y, y.copy(), df, SCHEMA, SLICES)
    assert out["slice_west_rows"] == 0.0
    for m in ("accuracy", "macro_f1", "weighted_f1"):
        assert math.isnan(out[f"slice_west_{m}"])
    assert not math.isnan(out["slice_north_macro_f1"])


FRAME = pd.DataFrame(
    {
        "age": [10, 20, 30, 40, np.nan],
        "region": pd.array(["north", "south", "east", "north", "west"], dtype="str"),
        "count": pd.array([1, 2, None, 4, 5], dtype="Int64"),  # nullable: compares to <NA>
    }
)


@pytest.mark.parametrize(
    ("column", "op", "value", "expected"),
    [
        ("region", "==", "north", [True, False, False, True, False]),
        ("region", "!=", "north", [False, True, True, False, True]),
        ("age", "==", 30, [False, False, True, False, False]),
        ("age", "<", 30, [True, True, False, False, False]),
        ("age", "<=", 30, [True, True, True, False, False]),
        ("age", ">", 30, [False, False, False, True, False]),
        ("age", ">=", 30, [False, False, True, True, False]),
        ("region", "in", ["north", "east"], [True, False, True, True, False]),
        ("region", "in", "south", [False, True, False, False, False]),
        ("age", "in", [10, 40], [True, False, False, True, False]),
        ("count", "<", 3, [True, True, False, False, False]),
        ("count", "!=", 4, [True, True, False, False, True]),
    ],
)
def test_slice_mask_ops(column: str, op: str, value: object, expected: list[bool]) -> None:
    sl = SliceSettings(name="s", column=column, op=op, value=value)
    mask = slice_mask(FRAME, sl)
    assert mask.dtype == bool
    assert mask.tolist() == expected


# --------------------------------------------------------------------------- gates


def _metrics(**kw: float) -> dict[str, float]:
    base = {
        "accuracy": 0.80,
        "macro_f1": 0.70,
        "weighted_f1": 0.75,
        "slice_north_macro_f1": 0.50,
        "slice_north_accuracy": 0.60,
        "slice_north_rows": 40.0,
    }
    return {**base, **kw}


def test_floors_pass() -> None:
    result = check_gates(_metrics(), None, GateSettings(min_accuracy=0.75, min_macro_f1=0.70))
    assert result.passed
    assert result.failed == []
    assert result.summary() == "all gates passed"
    assert [c.name for c in result.checks] == ["min_accuracy", "min_macro_f1"]


def test_floor_failure_names_gate_and_numbers() -> None:
    result = check_gates(_metrics(), None, GateSettings(min_accuracy=0.9, min_macro_f1=0.6))
    assert not result.passed
    assert [c.name for c in result.failed] == ["min_accuracy"]
    detail = result.failed[0].detail
    assert "min_accuracy" in detail and "0.8000" in detail and "0.9000" in detail
    assert result.summary() == detail
    assert "min_macro_f1" not in result.summary()


def test_both_floors_failing_are_both_summarised() -> None:
    result = check_gates(_metrics(), None, GateSettings(min_accuracy=0.9, min_macro_f1=0.9))
    assert len(result.failed) == 2
    assert "min_accuracy" in result.summary() and "min_macro_f1" in result.summary()


def test_nan_metric_fails_its_floor() -> None:
    result = check_gates(_metrics(accuracy=math.nan), None, GateSettings(min_accuracy=0.0))
    assert not result.passed
    assert "n/a" in result.failed[0].detail


def test_slice_floor_judged_with_enough_rows() -> None:
    gates = GateSettings(slice_floors={"north": 0.6}, min_slice_rows=30)
    result = check_gates(_metrics(), None, gates)
    assert not result.passed
    (failed,) = result.failed
    assert failed.name == "slice_north"
    assert "0.5000" in failed.detail and "0.6000" in failed.detail
    assert check_gates(_metrics(slice_north_macro_f1=0.65), None, gates).passed


def test_slice_floor_not_judged_on_too_few_rows() -> None:
    gates = GateSettings(slice_floors={"north": 0.6}, min_slice_rows=50)
    result = check_gates(_metrics(slice_north_rows=12.0), None, gates)
    assert result.passed
    check = next(c for c in result.checks if c.name == "slice_north")
    assert check.passed
    assert "not judged" in check.detail and "12" in check.detail and "50" in check.detail


def test_empty_slice_from_evaluate_is_not_judged() -> None:
    df, y = _frame_and_labels()
    metrics = evaluate(y, y.copy(), df, SCHEMA, SLICES)
    gates = GateSettings(slice_floors={"west": 0.9}, min_slice_rows=1)
    result = check_gates(metrics, None, gates)
    assert result.passed
    assert "not judged" in result.checks[-1].detail


def test_slice_floor_uses_the_gate_metric() -> None:
    gates = GateSettings(metric="accuracy", slice_floors={"north": 0.55}, min_slice_rows=30)
    assert check_gates(_metrics(), None, gates).passed  # accuracy 0.60 (macro_f1 0.50 ignored)


def test_non_inferiority_within_max_regression_passes() -> None:
    gates = GateSettings(max_regression=0.02)
    result = check_gates(_metrics(macro_f1=0.69), _metrics(macro_f1=0.70), gates)
    assert result.passed
    check = result.checks[-1]
    assert check.name == "non_inferiority"
    assert "-0.0100" in check.detail


def test_non_inferiority_better_candidate_passes() -> None:
    result = check_gates(_metrics(macro_f1=0.9), _metrics(macro_f1=0.7), GateSettings())
    assert result.passed
    assert "+0.2000" in result.checks[-1].detail


def test_non_inferiority_worse_fails_with_delta() -> None:
    gates = GateSettings(max_regression=0.02)
    result = check_gates(_metrics(macro_f1=0.65), _metrics(macro_f1=0.70), gates)
    assert not result.passed
    (failed,) = result.failed
    assert failed.name == "non_inferiority"
    assert "0.6500" in failed.detail and "0.7000" in failed.detail
    assert "delta -0.0500" in failed.detail
    assert "-0.0200" in failed.detail
    assert result.summary() == failed.detail


def test_non_inferiority_exactly_at_max_regression_passes() -> None:
    # "worse than the champion by at most max_regression": 0.70 vs 0.72 with 0.02 is allowed.
    gates = GateSettings(max_regression=0.02)
    result = check_gates(_metrics(macro_f1=0.70), _metrics(macro_f1=0.72), gates)
    assert result.passed, result.summary()


def test_non_inferiority_uses_the_gate_metric() -> None:
    gates = GateSettings(metric="accuracy", max_regression=0.0)
    candidate = _metrics(accuracy=0.81, macro_f1=0.10)
    assert check_gates(candidate, _metrics(accuracy=0.80, macro_f1=0.90), gates).passed
    assert not check_gates(candidate, _metrics(accuracy=0.82, macro_f1=0.0), gates).passed


def test_no_champion_means_no_non_inferiority_check() -> None:
    result = check_gates(_metrics(), None, GateSettings())
    assert "non_inferiority" not in [c.name for c in result.checks]
    with_champion = check_gates(_metrics(), _metrics(), GateSettings())
    assert "non_inferiority" in [c.name for c in with_champion.checks]


def test_gate_result_to_dict_and_summary() -> None:
    gates = GateSettings(min_accuracy=0.9, slice_floors={"north": 0.1}, min_slice_rows=30)
    result = check_gates(_metrics(), _metrics(macro_f1=0.71), gates)
    d = result.to_dict()
    assert d["passed"] is False
    assert [c["name"] for c in d["checks"]] == [
        "min_accuracy",
        "min_macro_f1",
        "slice_north",
        "non_inferiority",
    ]
    assert set(d["checks"][0]) == {"name", "value", "bound", "passed", "detail"}
    assert d["checks"][0]["passed"] is False and d["checks"][0]["value"] == 0.8
    json.loads(json.dumps(d))
    assert result.summary().startswith("min_accuracy")
    assert GateResult().passed and GateResult().summary() == "all gates passed"


def test_gates_on_real_evaluate_output_are_json_serialisable() -> None:
    df, y = _frame_and_labels()
    metrics = evaluate(y, y.copy(), df, SCHEMA, SLICES)
    result = check_gates(metrics, metrics, GateSettings(slice_floors={"north": 0.5}))
    assert result.passed
    json.dumps(result.to_dict())


# --------------------------------------------------------------------------- figure


def test_confusion_figure_saves_to_png(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    _, y = _frame_and_labels(100)
    pred = np.roll(y, 1)
    fig = confusion_figure(y, pred, [0, 1, 2], "holdout confusion")
    try:
        assert isinstance(fig, Figure)
        assert fig.axes[0].get_title() == "holdout confusion"
        out = tmp_path / "confusion.png"
        fig.savefig(out)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert out.stat().st_size > 1000
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------- column roles

#: ``small_reference`` with an id, a time and an ignored column beside the features.
ROLES = SchemaSettings(
    features=["age", "income", "score", "region"],
    categorical=["region"],
    target="label",
    classes=[0, 1, 2],
    id="customer_id",
    time="signed_up",
    ignore=["note"],
)


def dated(rows: int = 400, seed: int = 3) -> pd.DataFrame:
    """``dataset`` with an id, an ISO time (one row every 5 hours, shuffled) and a note."""
    df = dataset(rows, seed)
    when = pd.date_range("2024-01-01", periods=rows, freq="5h")
    order = np.random.default_rng(seed).permutation(rows)
    df["customer_id"] = np.arange(1, rows + 1)
    df["signed_up"] = when[order].strftime("%Y-%m-%dT%H:%M:%S")
    df["note"] = "x"
    return df


def test_the_model_reads_only_the_features_unless_time_features_are_derived() -> None:
    df = dated(10)
    assert list(features(df, ROLES).columns) == ["age", "income", "score", "region"]
    derived = ROLES.model_copy(update={"time_features": ["month"]})
    assert list(features(df, derived).columns) == ["age", "income", "score", "region", "signed_up"]
    with pytest.raises(TrainingError, match=r"no column\(s\) \['signed_up'\]"):
        features(df.drop(columns=["signed_up"]), derived)


def test_id_time_and_ignored_columns_never_reach_the_model() -> None:
    s = split(dated(), ROLES, training(), SEED)
    model = fit(s.train, ROLES, training(), SEED)
    assert list(model.feature_names_in_) == ["age", "income", "score", "region"]


# --------------------------------------------------------------------------- time split


def test_time_split_holds_out_the_most_recent_rows() -> None:
    df = dated(500)
    s = split(df, ROLES, training(split="time"), SEED)
    assert len(s.holdout) == 100 and len(s.train) == 400
    newest = set(df.sort_values("signed_up")["row_id"].iloc[-100:])
    assert ids(s.holdout) == newest
    assert s.holdout["signed_up"].min() > s.train["signed_up"].max()
    # The hash split (the default) is not time-ordered.
    hashed = split(df, ROLES, training(), SEED)
    assert hashed.holdout["signed_up"].min() < hashed.train["signed_up"].max()


def test_time_split_reads_epoch_seconds_and_mixed_formats() -> None:
    df = dated(300)
    parsed = pd.to_datetime(df["signed_up"], utc=True)
    epoch = df.assign(
        signed_up=(parsed - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta("1s")
    )
    mixed = df.assign(
        signed_up=parsed.dt.strftime("%Y/%m/%d %H:%M").where(df.index % 2 == 0, df["signed_up"])
    )
    expected = ids(split(df, ROLES, training(split="time"), SEED).holdout)
    assert ids(split(epoch, ROLES, training(split="time"), SEED).holdout) == expected
    assert ids(split(mixed, ROLES, training(split="time"), SEED).holdout) == expected


def test_time_split_ties_are_broken_by_the_row_hash_and_nat_rows_train() -> None:
    df = dated(200)
    df["signed_up"] = ["2024-05-01"] * 150 + [None] * 25 + ["not a date"] * 25
    mask = time_holdout_mask(df, ROLES, 0.2, SEED)
    assert mask.sum() == 40  # round(0.2 * 200), all among the 150 tied rows
    assert not mask[150:].any()  # rows without a parseable time are never held out
    np.testing.assert_array_equal(mask, time_holdout_mask(df.copy(), ROLES, 0.2, SEED))
    assert not np.array_equal(mask, time_holdout_mask(df, ROLES, 0.2, SEED + 1))


def test_time_split_without_a_time_column_names_both_keys() -> None:
    with pytest.raises(TrainingError, match=r"training\.split is 'time'.*schema\.time"):
        split(dataset(100), SCHEMA, training(split="time"), SEED)


def test_time_split_with_no_parseable_time_is_refused() -> None:
    df = dated(100).assign(signed_up="someday")
    with pytest.raises(TrainingError, match=r"no labeled row has a parseable schema\.time"):
        split(df, ROLES, training(split="time"), SEED)


# --------------------------------------------------------------------------- high cardinality


def cities(rows: int = 600, seed: int = 4) -> pd.DataFrame:
    """``dataset`` with ``city``: 300 distinct values, a few frequent ones."""
    df = dataset(rows, seed)
    rng = np.random.default_rng(seed)
    frequent = rng.choice(["paris", "lyon", "nice"], rows)
    rare = np.asarray([f"town{i}" for i in rng.integers(0, 300, rows)])
    df["city"] = pd.array(np.where(rng.random(rows) < 0.5, frequent, rare), dtype="str")
    return df


WIDE = SchemaSettings(
    features=["age", "income", "score", "region", "city"],
    categorical=["region", "city"],
    high_cardinality=["city"],
    target="label",
    classes=[0, 1, 2],
)


def test_high_cardinality_encoding_caps_categories_and_accepts_unseen_values() -> None:
    t = training(max_categories=8)
    s = split(cities(), WIDE, t, SEED)
    model = fit(s.train, WIDE, t, SEED)
    names = list(model.named_steps["features"].get_feature_names_out())
    city = [n for n in names if n.startswith("city_")]
    assert len(city) == 8 and "city_infrequent_sklearn" in city
    assert {"city_paris", "city_lyon", "city_nice"} <= set(city)
    assert [n for n in names if n.startswith("region_")] == [
        "region_east",
        "region_north",
        "region_south",
    ]
    x = features(s.holdout, WIDE).copy()
    x["city"] = "atlantis"  # never seen: pooled with the infrequent values, no error
    x["region"] = "atlantis"
    assert model.predict_proba(x).shape == (len(x), 3)
    encoded = model.named_steps["features"].transform(x.head(1))
    assert encoded[0, names.index("city_infrequent_sklearn")] == 1.0
    assert encoded[0, [names.index(n) for n in names if n.startswith("region_")]].sum() == 0.0


def test_other_categoricals_are_encoded_as_before() -> None:
    pipe = build_pipeline(SCHEMA, training(), SEED)
    ((name, encoder, columns),) = pipe.named_steps["features"].transformers
    assert (name, columns, encoder.handle_unknown) == ("categorical", ["region"], "ignore")


# --------------------------------------------------------------------------- time features


def test_time_features_from_iso_strings_and_epoch_seconds() -> None:
    iso = pd.DataFrame({"t": ["2024-01-01T13:00:00", "2024-07-06 23:30", "31/12/2023", None]})
    epoch = pd.DataFrame({"t": [1704114000, 1720308600, 1703980800, 1704067200]})
    millis = epoch * 1000
    expected = np.array([[0, 1, 13], [5, 7, 23], [6, 12, 0], [np.nan, np.nan, np.nan]])
    got = TimeFeatures(["dayofweek", "month", "hour"]).fit(iso).transform(iso)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(TimeFeatures().fit(epoch).transform(epoch)[:3], expected[:3])
    np.testing.assert_array_equal(TimeFeatures().fit(millis).transform(millis)[:3], expected[:3])
    # The unit is learned at fit: one later row is read the same way.
    one = TimeFeatures(["hour"]).fit(epoch)
    assert one.unit_ == "s" and one.transform(epoch.head(1)).tolist() == [[13.0]]
    assert list(one.get_feature_names_out()) == ["t_hour"]


def test_time_features_are_derived_inside_the_pipeline_and_save_with_skops() -> None:
    import skops.io

    from edgeloop.models.training import _trusted_types

    derived = ROLES.model_copy(update={"time_features": ["dayofweek", "month", "hour"]})
    s = split(dated(), derived, training(split="time"), SEED)
    model = fit(s.train, derived, training(), SEED)
    names = list(model.named_steps["features"].get_feature_names_out())
    assert names == [
        "region_east",
        "region_north",
        "region_south",
        "signed_up_dayofweek",
        "signed_up_month",
        "signed_up_hour",
        "age",
        "income",
        "score",
    ]
    x = features(s.holdout, derived)  # the raw time column
    assert x["signed_up"].iloc[0] == s.holdout["signed_up"].iloc[0]  # an ISO string
    blob = skops.io.dumps(model)
    trusted = _trusted_types(model)
    assert "pipelines.train.TimeFeatures" in trusted
    loaded = skops.io.loads(blob, trusted=trusted)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
