"""Ways to score a model: its own ``predict_proba`` (``predict`` for a regressor) on a
DataFrame, or a fast path.

``fast_predictor`` implements the pipeline edgeloop trains (one-hot encoder + passthrough in a
ColumnTransformer, then a forest) directly: no pandas, no scikit-learn validation per call.
It must be checked against the pipeline before use (``loading.prepare_model`` does).

A regressor's predictor answers two columns per row: the predicted value and the spread of the
ensemble's members (their standard deviation, as ``pipelines.score.predict_with_spread``
defines it; NaN for a model without members). For a random forest or extra trees both come
from one pass over the trees, summed tree by tree in order as the forest's own ``predict``
does, so the value is bit-equal to it.

Imported only once a model is loaded (scikit-learn and pandas cost seconds to import).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.base import is_regressor
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    BaggingRegressor,
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder
from sklearn.utils import check_array

from edgeloop.serving.schema import InputSchema
from pipelines.score import predict_with_spread

Predictor = Callable[[list[list[Any]]], np.ndarray]
"""Columns (as ``InputSchema.coerce`` returns them) -> class probabilities, one row each; for a
regressor, rows x 2: the predicted value and the members' spread (NaN without members)."""

_FORESTS = (RandomForestRegressor, ExtraTreesRegressor)


def final_estimator(model: Any) -> Any:
    """The estimator at the end of a pipeline (or the model itself)."""
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


def is_regression_model(model: Any) -> bool:
    """A regressor: scikit-learn says so, or it predicts without class probabilities (a
    custom training function's model, LightGBM's regressor)."""
    return bool(is_regressor(model)) or not hasattr(model, "predict_proba")


def has_members(model: Any) -> bool:
    """Whether a regressor is an ensemble whose members' spread is known (the models
    ``pipelines.score.predict_with_spread`` measures)."""
    return isinstance(final_estimator(model), (*_FORESTS, BaggingRegressor))


def _value_and_spread(each: list[np.ndarray]) -> np.ndarray:
    """Members' predictions -> rows x (mean, population std), summed member by member in
    order: the forest's own ``predict`` adds its trees one after another, numpy's ``mean``
    over one row would add them pairwise (a different last bit)."""
    n = len(each)
    acc = np.zeros(len(each[0]), dtype=np.float64)
    for v in each:
        acc += v
    mean = acc / n
    sq = np.zeros_like(mean)
    for v in each:
        d = v - mean
        sq += d * d
    return np.column_stack([mean, np.sqrt(sq / n)])


def _frame(schema: InputSchema, cols: list[list[Any]]) -> Any:
    """A DataFrame built column by column from typed arrays (much cheaper than from dicts)."""
    data = {}
    for name, kind, values in zip(schema.columns, schema.kinds, cols, strict=True):
        if kind == "number" or (kind == "integer" and None in values):
            data[name] = np.array(values, dtype=np.float64)
        elif kind == "integer":
            data[name] = np.array(values, dtype=np.int64)
        elif kind == "boolean" and None not in values:
            data[name] = np.array(values, dtype=bool)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            data[name] = arr
    return pd.DataFrame(data, copy=False)


def generic_predictor(model: Any, schema: InputSchema) -> Predictor:
    """The model's own ``predict_proba`` on a DataFrame (a regressor: module docstring)."""
    # Inputs of an all-required schema are finite (JSON has no NaN/Infinity and nulls are
    # refused), so scikit-learn's per-call finiteness scan is wasted work for them.
    assume_finite = schema.all_required
    if is_regression_model(model):
        return _generic_regression(model, schema, assume_finite)

    def predict(cols: list[list[Any]]) -> Any:
        with sklearn.config_context(assume_finite=assume_finite):
            return model.predict_proba(_frame(schema, cols))

    return predict


def _generic_regression(model: Any, schema: InputSchema, assume_finite: bool) -> Predictor:
    est = final_estimator(model)
    if isinstance(est, _FORESTS) and est.n_outputs_ == 1:
        pre = model[:-1] if isinstance(model, Pipeline) else None

        def forest(cols: list[list[Any]]) -> Any:
            with sklearn.config_context(assume_finite=assume_finite):
                x = _frame(schema, cols)
                xt = pre.transform(x) if pre is not None else x
                # What the forest's predict does to its input before asking each tree.
                x32 = check_array(
                    xt, dtype=np.float32, accept_sparse="csr", ensure_all_finite=False
                )
                each = [t.predict(x32, check_input=False) for t in est.estimators_]
            return _value_and_spread(each)

        return forest
    members = has_members(model)

    def predict(cols: list[list[Any]]) -> Any:
        with sklearn.config_context(assume_finite=assume_finite):
            x = _frame(schema, cols)
            value = np.asarray(model.predict(x), dtype=np.float64).reshape(-1)
            # Another ensemble (bagging): its own predict for the value, the members' spread
            # as batch scoring measures it.
            spread = predict_with_spread(model, x)[1] if members else np.full(len(value), np.nan)
        return np.column_stack([value, spread])

    return predict


def _column_names(spec: Any, names: list[str]) -> list[str] | None:
    """A ColumnTransformer column spec as names (None when it is not a plain list)."""
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, list | tuple) and not hasattr(spec, "tolist"):
        return None
    values: list[Any] = list(spec.tolist() if hasattr(spec, "tolist") else spec)
    if all(isinstance(c, str) for c in values):
        return values
    if all(isinstance(c, int) and not isinstance(c, bool) for c in values):
        return [names[c] for c in values]
    return None


def _is_passthrough(trans: Any) -> bool:
    """``"passthrough"``, or the identity FunctionTransformer scikit-learn fits in its place."""
    if isinstance(trans, str):
        return trans == "passthrough"
    return isinstance(trans, FunctionTransformer) and trans.func is None


def fast_predictor(model: Any, schema: InputSchema) -> Predictor | None:
    """A direct implementation of the pipeline edgeloop trains, or None if it is another kind.

    Handles ``Pipeline([ColumnTransformer(OneHotEncoder(handle_unknown="ignore") on some
    columns, passthrough of numeric ones), estimator])`` with dense output; a random forest or
    extra-trees classifier or regressor is summed tree by tree (what it does itself, minus
    joblib and validation per call; a regressor's members' spread beside). The caller must check
    it against the pipeline before using it.
    """
    if not schema.all_required or not isinstance(model, Pipeline) or len(model.steps) != 2:
        return None
    ct, est = model.steps[0][1], model.steps[1][1]
    if not isinstance(ct, ColumnTransformer) or getattr(ct, "sparse_output_", True):
        return None
    names = [str(c) for c in getattr(ct, "feature_names_in_", [])]
    if sorted(names) != sorted(schema.columns):
        return None
    pos = {c: schema.columns.index(c) for c in names}
    kinds = dict(zip(schema.columns, schema.kinds, strict=True))
    numeric: list[tuple[int, int]] = []  # (input position, output column)
    onehot: list[tuple[int, int, dict[Any, int]]] = []  # (input position, output offset, map)
    width = 0
    for name, trans, spec in ct.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        cols = _column_names(spec, names)
        if cols is None:
            return None
        out = ct.output_indices_.get(name)
        if out is None:
            return None
        offset = out.start
        if not cols:
            continue
        if _is_passthrough(trans):
            if any(kinds[c] not in ("number", "integer", "boolean") for c in cols):
                return None
            numeric.extend((pos[c], offset + k) for k, c in enumerate(cols))
            size = len(cols)
        elif isinstance(trans, OneHotEncoder):
            if (
                trans.handle_unknown != "ignore"
                or trans.drop_idx_ is not None
                or getattr(trans, "_infrequent_enabled", False)
                or np.dtype(trans.dtype) != np.float64
            ):
                return None
            size = 0
            for c, cats in zip(cols, trans.categories_, strict=True):
                mapping: dict[Any, int] = {}
                for k, cat in enumerate(cats.tolist()):
                    if isinstance(cat, float) and math.isnan(cat):
                        return None
                    mapping[cat] = k
                onehot.append((pos[c], offset + size, mapping))
                size += len(cats)
        else:
            return None
        if out.stop - out.start != size:
            return None
        width = max(width, out.stop)
    if width != getattr(est, "n_features_in_", -1) or hasattr(est, "feature_names_in_"):
        return None
    regression = is_regression_model(model)
    if regression and has_members(model) and not isinstance(est, _FORESTS):
        return None  # bagging: its members see column subsets; the generic path handles it

    def features(cols: list[list[Any]]) -> Any:
        n = len(cols[0])
        x = np.zeros((n, width), dtype=np.float64)
        for p, j in numeric:
            x[:, j] = cols[p]
        for p, offset, mapping in onehot:
            ks = [mapping.get(v, -1) for v in cols[p]]
            if n == 1:
                if ks[0] >= 0:
                    x[0, offset + ks[0]] = 1.0
            else:
                arr = np.asarray(ks)
                hit = np.flatnonzero(arr >= 0)
                x[hit, offset + arr[hit]] = 1.0
        return x

    zeros = [0.0] * width

    def row_vector(cols: list[list[Any]]) -> list[float]:
        """One row's feature vector, as Python floats (for the tree walks below)."""
        x = list(zeros)
        if numeric:
            # float32, as sklearn rounds its input; overflow becomes inf there too.
            with np.errstate(over="ignore"):
                values = np.array([cols[p][0] for p, _ in numeric], dtype=np.float32).tolist()
            for (_, j), v in zip(numeric, values, strict=True):
                x[j] = v
        for p, offset, mapping in onehot:
            k = mapping.get(cols[p][0], -1)
            if k >= 0:
                x[offset + k] = 1.0
        return x

    if regression:
        if isinstance(est, _FORESTS) and est.n_outputs_ == 1:
            return _forest_regression(est, features, row_vector)

        def predict_value(cols: list[list[Any]]) -> Any:
            with sklearn.config_context(assume_finite=True):
                value = np.asarray(est.predict(features(cols)), dtype=np.float64).reshape(-1)
            return np.column_stack([value, np.full(len(value), np.nan)])

        return predict_value

    if isinstance(est, RandomForestClassifier | ExtraTreesClassifier) and est.n_outputs_ == 1:
        # What each tree's predict_proba does (leaf index -> stored class fractions), with the
        # per-tree table sliced once here instead of on every call.
        n_classes = int(est.n_classes_)
        trees = [
            (t.tree_.apply, np.ascontiguousarray(t.tree_.value[:, 0, :n_classes]))
            for t in est.estimators_
        ]
        n_trees = len(trees)
        # One row (the common request): walking the trees in Python beats 2 x n_trees numpy
        # calls. Same float32 inputs, same comparisons, same summation order as sklearn.
        walks = _walks(est, [table for _, table in trees])

        def predict_one(cols: list[list[Any]]) -> Any:
            x = row_vector(cols)
            acc = [0.0] * n_classes
            for left, right, feature, threshold, leaf_values in walks:
                node = 0
                child = left[0]
                while child != -1:
                    node = child if x[feature[node]] <= threshold[node] else right[node]
                    child = left[node]
                for k, v in enumerate(leaf_values[node]):
                    acc[k] += v
            return np.array([[a / n_trees for a in acc]])

        def predict(cols: list[list[Any]]) -> Any:
            if len(cols[0]) == 1:
                return predict_one(cols)
            x32 = np.ascontiguousarray(features(cols), dtype=np.float32)
            proba = np.zeros((x32.shape[0], n_classes), dtype=np.float64)
            for apply, table in trees:
                proba += table[apply(x32)]
            proba /= n_trees
            return proba

        return predict

    def predict_est(cols: list[list[Any]]) -> Any:
        with sklearn.config_context(assume_finite=True):
            return est.predict_proba(features(cols))

    return predict_est


def _walks(est: Any, tables: list[np.ndarray]) -> list[tuple[list[Any], ...]]:
    """Each tree's arrays as Python lists, with its leaf table (single-row walks)."""
    return [
        (
            t.tree_.children_left.tolist(),
            t.tree_.children_right.tolist(),
            t.tree_.feature.tolist(),
            t.tree_.threshold.tolist(),
            table.tolist(),
        )
        for t, table in zip(est.estimators_, tables, strict=True)
    ]


def _forest_regression(
    est: Any, features: Callable[[list[list[Any]]], Any], row_vector: Callable[..., list[float]]
) -> Predictor:
    """A regression forest tree by tree: each tree's leaf value, their mean (the forest's
    predict) and their spread, with the same sums in the same order as ``_value_and_spread``."""
    # A regression tree's value table is nodes x outputs x 1: the leaf's mean target.
    tables = [np.ascontiguousarray(t.tree_.value[:, 0, 0]) for t in est.estimators_]
    applies = [t.tree_.apply for t in est.estimators_]
    walks = _walks(est, tables)
    n_trees = len(tables)

    def predict_one(cols: list[list[Any]]) -> Any:
        x = row_vector(cols)
        each = []
        for left, right, feature, threshold, leaf_values in walks:
            node = 0
            child = left[0]
            while child != -1:
                node = child if x[feature[node]] <= threshold[node] else right[node]
                child = left[node]
            each.append(leaf_values[node])
        acc = 0.0
        for v in each:
            acc += v
        mean = acc / n_trees
        sq = 0.0
        for v in each:
            d = v - mean
            sq += d * d
        return np.array([[mean, math.sqrt(sq / n_trees)]])

    def predict(cols: list[list[Any]]) -> Any:
        if len(cols[0]) == 1:
            return predict_one(cols)
        x32 = np.ascontiguousarray(features(cols), dtype=np.float32)
        return _value_and_spread(
            [table[apply(x32)] for apply, table in zip(applies, tables, strict=True)]
        )

    return predict


def sample_columns(schema: InputSchema, model: Any, n: int = 48) -> list[list[Any]]:
    """Varied rows to check a fast path against the pipeline: every category, an unknown one,
    numbers over many magnitudes and signs."""
    rng = np.random.default_rng(0)
    kinds = dict(zip(schema.columns, schema.kinds, strict=True))
    cats: dict[str, list[Any]] = {}
    ct = model.steps[0][1]
    for _, trans, spec in ct.transformers_:
        names = _column_names(spec, [str(c) for c in ct.feature_names_in_]) or []
        for k, c in enumerate(names):
            if hasattr(trans, "categories_"):
                seen = trans.categories_[k].tolist()
                if kinds[c] == "string":
                    unknown: Any = "__edgeloop_unknown__"
                else:  # a numeric category column: an unseen number, of the column's type
                    unknown = max(seen) + 1 if seen else 0
                    unknown = int(unknown) if kinds[c] == "integer" else float(unknown)
                cats[c] = [*seen, unknown]
    cols: list[list[Any]] = []
    for c, kind in zip(schema.columns, schema.kinds, strict=True):
        if c in cats:
            cols.append([cats[c][i % len(cats[c])] for i in range(n)])
        elif kind == "boolean":
            cols.append([bool(i % 2) for i in range(n)])
        else:
            scale = 10.0 ** rng.integers(-2, 7, n)
            values = rng.normal(0, 1, n) * scale
            if kind == "integer":
                cols.append([int(v) for v in values])
            else:
                cols.append([float(v) for v in values])
    return cols
