"""Ways to score a model: its own ``predict_proba`` on a DataFrame, or a fast path.

``fast_predictor`` implements the pipeline edgeloop trains (one-hot encoder + passthrough in a
ColumnTransformer, then a forest) directly: no pandas, no scikit-learn validation per call.
It must be checked against the pipeline before use (``loading.prepare_model`` does).

Imported only once a model is loaded (scikit-learn and pandas cost seconds to import).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from edgeloop.serving.schema import InputSchema

Predictor = Callable[[list[list[Any]]], np.ndarray]
"""Columns (as ``InputSchema.coerce`` returns them) -> class probabilities, one row each."""


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
    """The model's own ``predict_proba`` on a DataFrame."""
    # Inputs of an all-required schema are finite (JSON has no NaN/Infinity and nulls are
    # refused), so scikit-learn's per-call finiteness scan is wasted work for them.
    assume_finite = schema.all_required

    def predict(cols: list[list[Any]]) -> Any:
        with sklearn.config_context(assume_finite=assume_finite):
            return model.predict_proba(_frame(schema, cols))

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
    columns, passthrough of numeric ones), classifier])`` with dense output; a random forest or
    extra-trees classifier is summed tree by tree (what it does itself, minus joblib and
    validation per call). The caller must check it against the pipeline before using it.
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
        walks = [
            (
                t.tree_.children_left.tolist(),
                t.tree_.children_right.tolist(),
                t.tree_.feature.tolist(),
                t.tree_.threshold.tolist(),
                table.tolist(),
            )
            for t, (_, table) in zip(est.estimators_, trees, strict=True)
        ]
        zeros = [0.0] * width

        def predict_one(cols: list[list[Any]]) -> Any:
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
