"""Training stage: labeled rows → holdout split → scikit-learn Pipeline → fitted model.

Plain functions. The estimator and its hyperparameters come from ``training`` in the config
(an import path such as ``sklearn.ensemble.RandomForestClassifier`` and a ``params`` mapping);
this is the module to adapt when your model is not one scikit-learn estimator. A
classification project fits a classifier (``predict_proba``: edge cases need probabilities), a
regression project (``schema.task: regression``) a regressor; the fitted regression pipeline
records the training target's standard deviation (``pipelines.score.TARGET_SCALE_ATTR``).

The model reads ``schema.inputs`` only: the features, and the raw time column when
``schema.time_features`` derive from it (inside the Pipeline, so serving and scoring pass the
raw column). The id, the time column otherwise, and ``schema.ignore`` never reach it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, is_classifier, is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder
from sklearn.utils.validation import check_is_fitted

from edgeloop.core.config import SchemaSettings, TrainingSettings
from edgeloop.core.errors import TrainingError
from edgeloop.core.keys import BATCH_ID, REFERENCE_BATCH
from pipelines.score import TARGET_SCALE_ATTR
from pipelines.timecol import epoch_unit, parse_time

ROW_ID = "row_id"


@dataclass(frozen=True)
class Split:
    """Labeled rows divided into a training set and the fixed holdout."""

    train: pd.DataFrame
    holdout: pd.DataFrame


def labeled_rows(df: pd.DataFrame, schema: SchemaSettings) -> pd.DataFrame:
    """Rows whose target is known (production rows are unlabeled until annotated)."""
    return df[df[schema.target].notna()]


def holdout_mask(row_ids: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """True for holdout rows: a hash of (seed, row id), so membership never changes.

    A row that is in the holdout of one dataset version is in the holdout of every later one,
    so successive models are compared on the same rows.
    """
    return row_hash(row_ids, seed) < fraction


def batch_holdout_mask(
    data: pd.DataFrame, fraction: float, seed: int, per_batch: int
) -> np.ndarray:
    """``holdout_mask`` plus, in every production batch, its ``per_batch`` labeled rows with the
    smallest hash (the batch's first rows by hash), so each labeled batch is in the holdout.

    Still a function of the row ids and the seed alone, and stable as labels arrive: a new
    label can push a row out of its batch's top-up (into training), never pull a training row
    in, so a model trained on an earlier version is never scored on rows it learned from.
    Without a ``batch_id`` column, or with ``per_batch`` 0, it is ``holdout_mask``.
    """
    hashed = row_hash(data[ROW_ID], seed)
    mask: np.ndarray = hashed < fraction  # holdout_mask, from the one hash
    if per_batch <= 0 or BATCH_ID not in data.columns or not len(data):
        return mask
    batch = data[BATCH_ID].astype("str").to_numpy()
    production = batch != REFERENCE_BATCH
    if not production.any():
        return mask
    rank = pd.Series(hashed).groupby(batch).rank(method="first").to_numpy()
    topped: np.ndarray = mask | (production & (rank <= per_batch))
    return topped


def row_hash(row_ids: pd.Series, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row id, fixed for a seed (vectorised: ~0.1 s per 1M)."""
    key = f"edgeloop{seed:08d}"[-16:]
    hashed = pd.util.hash_pandas_object(row_ids.astype("str"), index=False, hash_key=key)
    uniform: np.ndarray = hashed.to_numpy(dtype=np.uint64) / float(2**64)
    return uniform


def time_holdout_mask(
    data: pd.DataFrame, schema: SchemaSettings, fraction: float, seed: int
) -> np.ndarray:
    """True for the most recent ``fraction`` of ``data``'s rows by ``schema.time``.

    Ties at the boundary are broken by the row-id hash (fixed for a seed), so the holdout has
    ``round(fraction * rows)`` rows and the same rows every time. Rows whose time is missing or
    does not parse (NaT) cannot be placed in time: they always train, never hold out. Unlike
    the hash split, membership moves as newer rows arrive (the holdout is "the latest data").
    """
    if schema.time is None:
        raise TrainingError(
            "training.split is 'time' but schema.time names no column: set schema.time to the"
            " time column, or use training.split: hash"
        )
    if schema.time not in data.columns:
        raise TrainingError(
            f"training.split is 'time' but schema.time {schema.time!r} is not a column of the dataset"
        )
    when = parse_time(data[schema.time])
    timed = when.notna().to_numpy()
    if len(data) and not timed.any():
        raise TrainingError(
            f"training.split is 'time' but no labeled row has a parseable schema.time"
            f" ({schema.time!r}): examples {data[schema.time].head(3).tolist()}"
        )
    # NaT views as the smallest int64: those rows sort oldest and stay in training.
    order = np.lexsort(
        (row_hash(data[ROW_ID], seed), when.dt.tz_convert(None).to_numpy().view("int64"))
    )
    n_holdout = min(round(fraction * len(data)), int(timed.sum()))
    mask = np.zeros(len(data), dtype=bool)
    mask[order[len(order) - n_holdout :]] = True
    return mask


def split(df: pd.DataFrame, schema: SchemaSettings, training: TrainingSettings, seed: int) -> Split:
    """Labeled rows → (train, holdout); checks there is enough of both and every class to learn.

    ``training.split``: ``hash`` (a fixed hash of the row id topped up per production batch,
    see ``batch_holdout_mask``) or ``time`` (the most recent rows, see ``time_holdout_mask``).
    """
    if ROW_ID not in df.columns:
        raise TrainingError(
            f"the dataset has no {ROW_ID!r} column (load it with DataStore.load_dataset)"
        )
    data = labeled_rows(df, schema)
    labels = target(data, schema)
    allowed = {str(c) for c in schema.classes}
    strange = (
        [] if schema.is_regression else sorted({str(v) for v in set(labels.tolist())} - allowed)
    )
    if strange:
        raise TrainingError(
            f"labels {strange[:10]} are not in schema.classes {list(schema.classes)}: fix the"
            " labels or add the class to the config"
        )
    if training.split == "time":
        mask = time_holdout_mask(data, schema, training.holdout_fraction, seed)
    else:
        mask = batch_holdout_mask(
            data, training.holdout_fraction, seed, training.holdout_min_per_batch
        )
    train, holdout = data[~mask], data[mask]
    if training.max_rows and len(train) > training.max_rows:
        # Deterministic subset: the rows with the smallest hash (another seed than the split).
        order = row_hash(train[ROW_ID], seed + 1).argsort(kind="stable")
        train = train.iloc[order[: training.max_rows]]
    if len(train) < training.min_train_rows:
        raise TrainingError(
            f"dataset too small: {len(train)} labeled training rows (of {len(df)} rows,"
            f" {len(data)} labeled); training.min_train_rows is {training.min_train_rows}"
        )
    if len(holdout) < training.min_holdout_rows:
        raise TrainingError(
            f"dataset too small: {len(holdout)} holdout rows (holdout_fraction"
            f" {training.holdout_fraction}); training.min_holdout_rows is {training.min_holdout_rows}"
        )
    seen = set() if schema.is_regression else {str(v) for v in set(target(train, schema).tolist())}
    missing = [c for c in schema.classes if str(c) not in seen]
    if missing:
        raise TrainingError(
            f"class(es) {missing} missing from the training data ({len(train)} rows): a model"
            " cannot learn a class it never sees; label some examples or drop it from schema.classes"
        )
    return Split(train=train, holdout=holdout)


def estimator_class(path: str, task: str = "classification") -> type[Any]:
    """Import ``package.module.Class``; errors name the key ``training.estimator``."""
    module_name, _, cls_name = path.rpartition(".")
    if not module_name:
        raise TrainingError(f"training.estimator {path!r}: expected 'package.module.ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainingError(
            f"training.estimator {path!r}: cannot import {module_name} ({exc})"
        ) from None
    cls = getattr(module, cls_name, None)
    if cls is None or not inspect.isclass(cls):
        raise TrainingError(f"training.estimator {path!r}: {module_name} has no class {cls_name}")
    if task == "regression":
        if not (hasattr(cls, "fit") and hasattr(cls, "predict")):
            raise TrainingError(f"training.estimator {path!r}: not a regressor with predict")
    elif not (hasattr(cls, "fit") and hasattr(cls, "predict_proba")):
        raise TrainingError(
            f"training.estimator {path!r}: not a classifier with predict_proba (edge cases need"
            " probabilities)"
        )
    return cls


def make_estimator(training: TrainingSettings, seed: int, task: str = "classification") -> Any:
    """The configured estimator, with its params checked now rather than at fit time."""
    cls = estimator_class(training.estimator, task)
    params = dict(training.params)
    sig = inspect.signature(cls.__init__).parameters
    var = {n for n, p in sig.items() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    accepted = set(sig) - {"self"} - var
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.values())
    unknown = [] if takes_kwargs else sorted(set(params) - accepted)
    if unknown:
        raise TrainingError(
            f"training.params: {unknown} are not parameters of {training.estimator}"
            f" (it takes: {', '.join(sorted(accepted))})"
        )
    if "random_state" in accepted and "random_state" not in params:
        params["random_state"] = seed
    try:
        est = cls(**params)
        validate = getattr(est, "_validate_params", None)
        # scikit-learn's own parameter constraints, where the estimator declares them.
        if callable(validate) and hasattr(est, "_parameter_constraints"):
            validate()
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"training.params for {training.estimator}: {exc}") from None
    if task == "regression":
        if not is_regressor(est):
            raise TrainingError(
                f"training.estimator {training.estimator!r}: not a regressor (schema.task is"
                " regression; sklearn's is_regressor says no)"
            )
    elif not is_classifier(est):
        # predict_proba alone is not enough: a mixture model has it, over its own clusters.
        raise TrainingError(
            f"training.estimator {training.estimator!r}: not a classifier (sklearn's is_classifier says no)"
        )
    return est


#: ``schema.time_features`` name -> the pandas ``.dt`` attribute.
_TIME_PARTS = {"dayofweek": "day_of_week", "month": "month", "hour": "hour"}


class TimeFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # sklearn is untyped
    """Day of week (0 = Monday), month (1-12) and hour (0-23, UTC) from a raw time column.

    The column is parsed with ``pipelines.timecol.parse_time`` (ISO text, common formats, epoch
    seconds or milliseconds: the unit is fixed at fit time); a value that does not parse gives
    NaN features, as a missing numeric value does.
    """

    def __init__(self, features: Sequence[str] = ("dayofweek", "month", "hour")) -> None:
        self.features = features

    def fit(self, X: Any, y: Any = None) -> TimeFeatures:
        column = _first_column(X)
        unknown = [f for f in self.features if f not in _TIME_PARTS]
        if unknown:
            raise ValueError(f"unknown time features {unknown} (known: {sorted(_TIME_PARTS)})")
        self.unit_ = epoch_unit(column) or "auto"
        self.column_ = str(column.name) if column.name is not None else "time"
        self.n_features_in_ = 1
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "unit_")
        when = parse_time(_first_column(X), self.unit_)
        parts = [
            getattr(when.dt, _TIME_PARTS[f]).to_numpy(dtype="float64", na_value=np.nan)
            for f in self.features
        ]
        return np.column_stack(parts) if parts else np.empty((len(when), 0))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "unit_")
        return np.asarray([f"{self.column_}_{f}" for f in self.features], dtype=object)


def _first_column(X: Any) -> pd.Series:
    if isinstance(X, pd.DataFrame):
        return X.iloc[:, 0]
    values = np.asarray(X)
    return pd.Series(values[:, 0] if values.ndim == 2 else values)


def build_pipeline(schema: SchemaSettings, training: TrainingSettings, seed: int) -> Pipeline:
    """One-hot encode the categoricals, derive the time features, pass numerics through, then
    the estimator.

    ``schema.high_cardinality`` columns keep their ``training.max_categories`` most frequent
    values (the rest, and values never seen, share one "infrequent" column: no error, no
    quarantine); other categoricals ignore unseen values (all-zero columns).
    """
    estimator = make_estimator(training, seed, schema.task)
    if _native_categorical(estimator, training, schema):
        return _native_pipeline(schema, training, estimator)
    wide = list(schema.high_cardinality)
    encoders: list[tuple[str, Any, list[str]]] = [
        (
            "categorical",
            OneHotEncoder(handle_unknown="ignore"),
            [c for c in schema.categorical if c not in wide],
        )
    ]
    if wide:
        encoder = OneHotEncoder(
            handle_unknown="infrequent_if_exist",
            max_categories=training.max_categories,
            # Dense: at most max_categories columns each, and a sparse block here could turn
            # the whole matrix sparse, which some estimators refuse.
            sparse_output=False,
        )
        encoders.append(("high_cardinality", encoder, wide))
    if schema.time_features and schema.time is not None:
        encoders.append(("time", TimeFeatures(list(schema.time_features)), [schema.time]))
    pre = ColumnTransformer(encoders, remainder="passthrough", verbose_feature_names_out=False)
    return Pipeline([("features", pre), ("model", estimator)])


#: Estimators that split on categories themselves (given integer codes and their positions).
_NATIVE_CATEGORICAL = ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor")


def _native_categorical(estimator: Any, training: TrainingSettings, schema: SchemaSettings) -> bool:
    """Whether the categoricals go to the estimator as codes: a HistGradientBoosting model
    whose params do not say otherwise, and a project with categorical features."""
    return (
        type(estimator).__name__ in _NATIVE_CATEGORICAL
        and "categorical_features" not in training.params
        and bool(schema.categorical)
    )


def _native_pipeline(
    schema: SchemaSettings, training: TrainingSettings, estimator: Any
) -> Pipeline:
    """Categoricals as ordinal codes, first, and the estimator told which columns they are.

    A value never seen in training (or beyond the ``max_categories`` most frequent of a high-
    cardinality column, capped at the 255 categories the estimator can hold) gets code -1, which
    HistGradientBoosting treats as missing: no error, no quarantine, as with one-hot encoding.
    """
    cats = list(schema.categorical)
    wide = set(schema.high_cardinality)
    most = min(training.max_categories, 255) if wide else None
    encoders: list[tuple[str, Any, list[str]]] = [
        (
            f"category_{i}",
            OrdinalEncoder(
                handle_unknown="use_encoded_value",
                unknown_value=-1,
                encoded_missing_value=-1,
                max_categories=most if c in wide else 255,
            ),
            [c],
        )
        for i, c in enumerate(cats)
    ]
    if schema.time_features and schema.time is not None:
        encoders.append(("time", TimeFeatures(list(schema.time_features)), [schema.time]))
    pre = ColumnTransformer(encoders, remainder="passthrough", verbose_feature_names_out=False)
    estimator.set_params(categorical_features=list(range(len(cats))))
    return Pipeline([("features", pre), ("model", estimator)])


def features(df: pd.DataFrame, schema: SchemaSettings) -> pd.DataFrame:
    """The model's input columns (``schema.inputs``), in schema order."""
    inputs = list(schema.inputs)
    missing = [c for c in inputs if c not in df.columns]
    if missing:
        raise TrainingError(f"the data has no column(s) {missing}, which the model reads")
    return df[inputs]


def target(df: pd.DataFrame, schema: SchemaSettings) -> np.ndarray:
    """Labels as the classes' own type (a labeled column read back may be float); float64
    for regression."""
    y = df[schema.target]
    if schema.is_regression:
        numbers = pd.to_numeric(y, errors="coerce")
        bad = y[numbers.isna() & y.notna()]
        if len(bad):
            raise TrainingError(
                f"column {schema.target!r} has non-numeric labels {bad.astype(str).head(5).tolist()}"
                " (schema.task is regression)"
            )
        floats: np.ndarray = numbers.to_numpy(dtype="float64", na_value=np.nan)
        return floats
    if all(isinstance(c, int) for c in schema.classes):
        try:
            values: np.ndarray = y.astype("float64").to_numpy()
        except (TypeError, ValueError):
            raise TrainingError(
                f"column {schema.target!r} has non-numeric labels; classes are integers"
            ) from None
        if not np.all(np.isnan(values) | (values % 1 == 0)):
            bad = sorted({float(v) for v in values if v % 1 != 0})[:5]
            raise TrainingError(
                f"column {schema.target!r} has fractional labels {bad}; classes are integers"
            )
        return values.astype("int64")
    texts: np.ndarray = np.asarray(y.astype("str"))
    return texts


def fit_function(path: str) -> Any:
    """Import ``package.module:function`` (``training.fit``); errors name the key."""
    module_name, _, name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainingError(
            f"training.fit {path!r}: cannot import {module_name} ({exc}); the module must be"
            " installed or under the project root"
        ) from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise TrainingError(f"training.fit {path!r}: {module_name} has no function {name}")
    return fn


def _custom_fit(
    x: pd.DataFrame, y: np.ndarray, schema: SchemaSettings, path: str, seed: int
) -> Any:
    """The user's training function, and a check that what it returns can be served."""
    try:
        model = fit_function(path)(x, y, seed=seed)
    except TrainingError:
        raise
    except Exception as exc:  # the user's code: any failure is a training failure, named
        raise TrainingError(f"training.fit {path!r} failed: {type(exc).__name__}: {exc}") from None
    needs = ("predict",) if schema.is_regression else ("predict", "predict_proba", "classes_")
    missing = [a for a in needs if not hasattr(model, a)]
    if missing:
        raise TrainingError(
            f"training.fit {path!r} returned a {type(model).__name__} without {missing}"
            f" (schema.task {schema.task} needs {list(needs)})"
        )
    return model


def fit(train: pd.DataFrame, schema: SchemaSettings, training: TrainingSettings, seed: int) -> Any:
    """Fit the configured pipeline (or call ``training.fit``) on the training rows (the input
    frame is not modified)."""
    y = target(train, schema)
    if training.fit:
        pipe = _custom_fit(features(train, schema), y, schema, training.fit, seed)
    else:
        pipe = build_pipeline(schema, training, seed)
        try:
            pipe.fit(features(train, schema), y)
        except (ValueError, TypeError) as exc:
            raise TrainingError(f"fitting {training.estimator} failed: {exc}") from None
    if schema.is_regression:
        setattr(pipe, TARGET_SCALE_ATTR, float(np.std(y)))
    return pipe
