"""The prediction service (silent mode): the champion answers, the challenger shadows it.

``create_app(settings)`` builds a Starlette app. At start-up it loads the models that hold the
``champion`` and ``challenger`` aliases in the MLflow registry; a background thread re-reads the
aliases every ``serving.poll_seconds`` and swaps a model in when its alias moves (one reference
assignment, so a request sees either the old model or the new one, never a mix).

``POST /predict`` validates the rows against the champion's input schema (its MLflow
signature), scores them with the champion and answers. Only then is the request (its body and
the champion's probabilities) handed to a **worker process**, with one non-blocking write on a
Unix socket pair: the worker scores the rows with the challenger (which it loads by version,
following the alias moves the service tells it about) and writes both models' predictions to
the prediction log (``edgeloop.serving.predlog``). So challenger scoring, row hashing and SQLite writes
never take the serving process's GIL or delay an answer; a slow, failing or hung challenger
cannot fail one. Work beyond the bounds (``serving.shadow_queue_size``,
``serving.log_queue_size``) is dropped and counted, never queued without bound. The worker
reports its counters back for ``/metrics``; it stops with the service and is restarted (and
counted) if it dies.

Speed: for the pipeline edgeloop trains (one-hot encoder + passthrough in a ColumnTransformer,
then a forest), the per-request path skips pandas and scikit-learn's per-call validation and
builds the model's feature matrix directly. That fast path is checked against the pipeline's
own ``predict_proba`` on sample rows when a model is loaded and used only if they agree
exactly; any other pipeline runs through scikit-learn as is.

Nothing here runs on import; MLflow, scikit-learn and pandas are imported when the app starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import pickle
import queue
import socket
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from edgeloop.core.config import Settings
from edgeloop.core.errors import InputError, ServiceError
from edgeloop.serving.predlog import Entry, PredictionLog, RowBatch, connect

if TYPE_CHECKING:
    import numpy as np
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("edgeloop.service")

CHAMPION = "champion"
CHALLENGER = "challenger"
#: Requests with a body larger than this are parsed and scored in a worker thread, so one big
#: request does not hold the event loop while small ones wait. Small ones run inline: a thread
#: hop costs more than scoring a row.
INLINE_MAX_BODY = 16_384
#: The shadow worker scores queued requests together, up to this many rows per call.
SHADOW_BATCH_ROWS = 2048
#: ... waiting up to this long for more requests to join a batch (shadow answers are not urgent).
SHADOW_LINGER_SECONDS = 0.05
#: A challenger busy on one batch for longer than this is reported unhealthy and new shadow
#: work is dropped at once instead of waiting in the queue.
DEFAULT_STALL_SECONDS = 10.0
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


# ---------------------------------------------------------------------- input schema
_JSON_TYPE = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPE.get(
        type(value), "object" if isinstance(value, dict) else type(value).__name__
    )


class _Mismatch(Exception):
    pass


# Converters take a JSON value and return what the model gets, or raise _Mismatch. They test
# `type(v) is ...` rather than isinstance: True is an int to Python but not a number to us.
def _to_number(v: Any) -> float:
    t = type(v)
    if t is float:
        return v
    if t is int:
        return float(v)
    raise _Mismatch


def _to_integer(v: Any) -> int:
    t = type(v)
    if t is int and -(2**63) <= v < 2**63:
        return v
    if t is float and v.is_integer() and -(2.0**63) <= v < 2.0**63:
        return int(v)
    raise _Mismatch


def _to_string(v: Any) -> str:
    if type(v) is str:
        return v
    raise _Mismatch


def _to_boolean(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise _Mismatch


def _to_any(v: Any) -> Any:
    if isinstance(v, dict | list):
        raise _Mismatch
    return v


_CONVERTERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "number": (_to_number, "a number"),
    "integer": (_to_integer, "an integer"),
    "string": (_to_string, "a string"),
    "boolean": (_to_boolean, "a boolean"),
    "any": (_to_any, "a scalar"),
}
# MLflow DataType names -> our kinds.
_KIND_OF = {
    "double": "number",
    "float": "number",
    "long": "integer",
    "integer": "integer",
    "string": "string",
    "boolean": "boolean",
}


@dataclass(frozen=True)
class InputSchema:
    """The columns a model takes, with the JSON type each accepts."""

    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    required: tuple[bool, ...]
    source: str = "signature"
    _index: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    _plan: tuple[tuple[str, Callable[[Any], Any], str, bool], ...] = field(
        default=(), compare=False, repr=False
    )

    def __post_init__(self) -> None:
        # Precomputed once per model: the per-row loop only indexes tuples.
        object.__setattr__(self, "_index", frozenset(self.columns))
        plan = tuple(
            (c, *_CONVERTERS[k], r)
            for c, k, r in zip(self.columns, self.kinds, self.required, strict=True)
        )
        object.__setattr__(self, "_plan", plan)

    @classmethod
    def from_signature(cls, inputs: Any) -> InputSchema | None:
        """From an MLflow signature's input schema (None if it is not a named-column schema)."""
        if inputs is None or not inputs.has_input_names():
            return None
        columns, kinds, required = [], [], []
        for spec in inputs.inputs:
            type_name = getattr(getattr(spec, "type", None), "name", "")
            columns.append(spec.name)
            kinds.append(_KIND_OF.get(type_name, "any"))
            required.append(bool(getattr(spec, "required", True)))
        return cls(tuple(columns), tuple(kinds), tuple(required))

    @classmethod
    def from_settings(cls, settings: Settings) -> InputSchema:
        """The config's features (for a model logged without a signature)."""
        schema = settings.data_schema
        kinds = tuple("string" if c in schema.categorical else "number" for c in schema.features)
        return cls(tuple(schema.features), kinds, (True,) * len(kinds), source="config")

    @property
    def all_required(self) -> bool:
        return all(self.required)

    def describe(self) -> str:
        return ", ".join(f"{c} ({k})" for c, k in zip(self.columns, self.kinds, strict=True))

    def coerce(self, rows: Sequence[Any]) -> list[list[Any]]:
        """Validate rows; the values column by column, as the model takes them.

        Raises InputError naming the first bad field and its row.
        """
        if len(rows) >= 16 and self.all_required:
            cols = self._coerce_columns(rows)
            if cols is not None:
                return cols
        return self._coerce_rows(rows)

    def _coerce_columns(self, rows: Sequence[Any]) -> list[list[Any]] | None:
        """Many well-formed rows, a whole column at a time (about 5x faster than row by row).

        None means "something is wrong somewhere": the row-by-row pass then names it.
        """
        ncols = len(self.columns)
        # Every column present and no other key: a dict of exactly ncols keys that has them all.
        if any(type(r) is not dict or len(r) != ncols for r in rows):
            return None
        cols: list[list[Any]] = []
        try:
            for name, kind in zip(self.columns, self.kinds, strict=True):
                col = [r[name] for r in rows]
                types = set(map(type, col))
                if kind == "number":
                    if types != {float}:
                        if not types <= {float, int}:
                            return None
                        col = [float(v) for v in col]
                elif types != {_EXACT_TYPE.get(kind)}:
                    return None  # wrong or mixed types; "any" always takes the careful path
                elif kind == "integer" and (min(col) < -(2**63) or max(col) >= 2**63):
                    return None
                cols.append(col)
        except KeyError:
            return None
        return cols

    def _coerce_rows(self, rows: Sequence[Any]) -> list[list[Any]]:
        plan = self._plan
        cols: list[list[Any]] = [[] for _ in plan]
        appends = [c.append for c in cols]
        ncols = len(plan)
        for i, row in enumerate(rows):
            if type(row) is not dict:
                raise InputError(
                    f"row {i} must be an object of fields, got {_json_type(row)}", None, i
                )
            found = ncols
            for (name, convert, wanted, required), append in zip(plan, appends, strict=True):
                v = row.get(name, _MISSING)
                if v is _MISSING or v is None:
                    if required:
                        what = "missing field" if v is _MISSING else "null is not allowed for field"
                        raise InputError(f"{what} {name!r} (expected {wanted})", name, i)
                    found -= v is _MISSING
                    append(None)
                    continue
                try:
                    append(convert(v))
                except _Mismatch:
                    raise InputError(
                        f"field {name!r} must be {wanted}, got {_json_type(v)}", name, i
                    ) from None
            # Every key found was a column: any other key is one the model does not take.
            if len(row) != found:
                extra = next(k for k in row if k not in self._index)
                raise InputError(
                    f"unexpected field {extra!r} (the model takes: {self.describe()})", extra, i
                )
        return cols


_MISSING = object()
_EXACT_TYPE: dict[str, type] = {"integer": int, "string": str, "boolean": bool}


def rows_of(data: Any, schema: InputSchema) -> list[Any]:
    """The rows of a body: ``{"rows": [...]}``, a list of rows, or one row object."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if "rows" in data and "rows" not in schema._index:
            rows = data["rows"]
            others = [k for k in data if k != "rows"]
            if others:
                raise InputError(
                    f"unexpected key {others[0]!r} next to 'rows' (send {{\"rows\": [...]}})",
                    others[0],
                )
            if not isinstance(rows, list):
                raise InputError(
                    f"'rows' must be a list of row objects, got {_json_type(rows)}", "rows"
                )
            return rows
        return [data]
    raise InputError(
        f'the body must be a row object, a list of rows or {{"rows": [...]}}, got {_json_type(data)}'
    )


# ---------------------------------------------------------------------- models
Predictor = Callable[[list[list[Any]]], "np.ndarray"]


def _frame(schema: InputSchema, cols: list[list[Any]]) -> Any:
    """A DataFrame built column by column from typed arrays (much cheaper than from dicts)."""
    import numpy as np
    import pandas as pd

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
    import sklearn

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
    spec = list(spec.tolist() if hasattr(spec, "tolist") else spec)
    if all(isinstance(c, str) for c in spec):
        return spec
    if all(isinstance(c, int) and not isinstance(c, bool) for c in spec):
        return [names[c] for c in spec]
    return None


def _is_passthrough(trans: Any) -> bool:
    """``"passthrough"``, or the identity FunctionTransformer scikit-learn fits in its place."""
    from sklearn.preprocessing import FunctionTransformer

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
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

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

    import sklearn

    def predict_est(cols: list[list[Any]]) -> Any:
        with sklearn.config_context(assume_finite=True):
            return est.predict_proba(features(cols))

    return predict_est


def _sample_columns(schema: InputSchema, model: Any, n: int = 48) -> list[list[Any]]:
    """Varied rows to check a fast path against the pipeline: every category, an unknown one,
    numbers over many magnitudes and signs."""
    import numpy as np

    rng = np.random.default_rng(0)
    kinds = dict(zip(schema.columns, schema.kinds, strict=True))
    cats: dict[str, list[Any]] = {}
    ct = model.steps[0][1]
    for _, trans, spec in ct.transformers_:
        cols = _column_names(spec, [str(c) for c in ct.feature_names_in_]) or []
        for k, c in enumerate(cols):
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


@dataclass(frozen=True)
class LoadedModel:
    """One registry version, ready to score."""

    alias: str
    version: str
    uri: str
    model: Any
    schema: InputSchema
    classes: tuple[Any, ...]
    class_keys: tuple[str, ...]
    predict_proba: Predictor
    fast_path: bool
    loaded_at: float

    def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "uri": self.uri,
            "fast_path": self.fast_path,
            "schema": self.schema.source,
            "loaded_at": self.loaded_at,
        }


def prepare_model(
    model: Any, schema: InputSchema, *, alias: str, version: str, uri: str, classes: Sequence[Any]
) -> LoadedModel:
    """Choose the fastest exact way to score ``model`` (checking the fast path warms it up)."""
    import numpy as np

    # Per-request joblib dispatch costs more than it saves on the small batches a service sees,
    # and concurrent requests already use the cores: score each request on one thread.
    for _, step in getattr(model, "steps", [("", model)]):
        if getattr(step, "n_jobs", None) not in (None, 1):
            with contextlib.suppress(Exception):
                step.n_jobs = None
    generic = generic_predictor(model, schema)
    predict, fast = generic, False
    candidate = None
    try:
        candidate = fast_predictor(model, schema)
    except Exception:  # an unexpected pipeline shape: the generic path is always correct
        log.exception("fast path for %s v%s could not be built", alias, version)
    if candidate is not None:
        sample = _sample_columns(schema, model)
        try:
            expected = generic(sample)
            # Batches and single rows may take different routes: check both.
            same = np.array_equal(candidate(sample), expected) and all(
                np.array_equal(candidate([c[i : i + 1] for c in sample]), expected[i : i + 1])
                for i in range(len(sample[0]))
            )
        except Exception:
            log.exception("fast path for %s v%s failed its check", alias, version)
            same = False
        if same:
            predict, fast = candidate, True
        else:
            log.warning(
                "fast path for %s v%s disagrees with the pipeline: not used", alias, version
            )
    values = tuple(c.item() if hasattr(c, "item") else c for c in classes)
    return LoadedModel(
        alias=alias,
        version=str(version),
        uri=uri,
        model=model,
        schema=schema,
        classes=values,
        class_keys=tuple(str(c) for c in values),
        predict_proba=predict,
        fast_path=fast,
        loaded_at=time.time(),
    )


def load_version(settings: Settings, client: Any, alias: str, version: str) -> LoadedModel:
    """Load one registered version by number (not by alias: the alias may move meanwhile)."""
    import tempfile

    import mlflow.artifacts
    import mlflow.sklearn
    from mlflow.models import Model
    from mlflow.utils.file_utils import local_file_uri_to_path

    # The version's own artifact location, fetched once: the model and its signature are read
    # from the copy, with no dependence on this process's global MLflow URIs.
    uri = client.get_model_version_download_uri(settings.model_name, str(version))
    with tempfile.TemporaryDirectory(prefix="edgeloop-model-") as tmp:
        if uri.startswith("file:"):
            local = local_file_uri_to_path(uri)  # the embedded store: read in place
        else:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        model = mlflow.sklearn.load_model(local)
        signature = Model.load(local).signature
    schema = InputSchema.from_signature(signature.inputs if signature else None)
    if schema is None:
        schema = InputSchema.from_settings(settings)
    classes = getattr(model, "classes_", None)
    if classes is None:
        classes = settings.data_schema.classes
    return prepare_model(
        model,
        schema,
        alias=alias,
        version=str(version),
        uri=f"models:/{settings.model_name}/{version}",
        classes=list(classes),
    )


# ---------------------------------------------------------------------- metrics
class Metrics:
    """Prometheus metrics in a registry of this app's own (never the process-global one)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgeloop_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "edgeloop_predict_latency_seconds",
            "Time to answer /predict, server side",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "edgeloop_predicted_rows", "Rows scored, by alias", ["alias"], registry=r
        )
        self.shadow = Counter(
            "edgeloop_shadow_agreement",
            "Shadow-scored rows: does the challenger predict the champion's class?",
            ["outcome"],
            registry=r,
        )
        self.errors = Counter(
            "edgeloop_model_errors",
            "Scoring failures by model (alias, version)",
            ["alias", "version"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "edgeloop_shadow_dropped",
            "Requests not shadow-scored, by reason (queue_full, challenger_stalled, ...)",
            ["reason"],
            registry=r,
        )
        self.log_dropped = Counter(
            "edgeloop_prediction_log_dropped",
            "Prediction-log records dropped (queue full or write error)",
            registry=r,
        )
        self.version = Gauge(
            "edgeloop_model_version",
            "Registry version loaded per alias (0 = none)",
            ["alias"],
            registry=r,
        )
        self.shadow_healthy = Gauge(
            "edgeloop_shadow_healthy", "1 unless the challenger is stuck scoring", registry=r
        )
        self.shadow_queue = Gauge(
            "edgeloop_shadow_queue_depth", "Requests waiting for the challenger", registry=r
        )
        self.worker_restarts = Counter(
            "edgeloop_worker_restarts",
            "Times the worker process (shadow scoring, prediction log) died and was restarted",
            registry=r,
        )
        self.registry_errors = Counter(
            "edgeloop_registry_errors",
            "Failed registry reads and model loads",
            ["kind"],
            registry=r,
        )
        # Known label sets exist from the start, so dashboards and alerts see zeros, not gaps.
        for alias in (CHAMPION, CHALLENGER):
            self.rows.labels(alias)
            self.version.labels(alias).set(0)
        for outcome in ("agree", "disagree"):
            self.shadow.labels(outcome)
        for reason in (
            "queue_full",
            "challenger_stalled",
            "schema_mismatch",
            "no_challenger",
            "worker_restarting",
            "worker_restarted",
        ):
            self.shadow_dropped.labels(reason)
        for kind in ("poll", "load"):
            self.registry_errors.labels(kind)
        # Children used on every request, resolved once.
        self.predict_status = {
            s: self.requests.labels("predict", str(s)) for s in (200, 400, 413, 422, 500, 503)
        }
        self.champion_rows = self.rows.labels(CHAMPION)
        self.challenger_rows = self.rows.labels(CHALLENGER)
        self.agree = self.shadow.labels("agree")
        self.disagree = self.shadow.labels("disagree")

    def count(self, endpoint: str, status: int) -> None:
        if endpoint == "predict" and status in self.predict_status:
            self.predict_status[status].inc()
        else:
            self.requests.labels(endpoint, str(status)).inc()


# ---------------------------------------------------------------------- the worker process
# Everything that happens after an answer (challenger scoring, row hashing, prediction-log
# writes) runs in one child process, so it never competes with requests for the serving
# process's GIL. The serving process only frames one message per answered request and hands it
# to an asyncio transport (a non-blocking send on a Unix socket pair); the bounds below are
# checked on the serving side against counters the worker publishes in shared memory, so a
# check costs a few loads, not a round trip.

#: Shared int64 slots the worker writes and the service reads.
_TAKEN_ITEMS, _TAKEN_ROWS, _RECEIVED_LOG_ROWS = 0, 1, 2
#: Shared float64 slot: time.monotonic() at which the challenger became busy (0 when idle).
#: CLOCK_MONOTONIC is system-wide on Linux, so both processes read the same clock.
_BUSY_SINCE = 0
#: How often the worker sends its counters (when they changed).
WORKER_REPORT_SECONDS = 0.1
#: The worker reads what has arrived, then pauses this long before reading again (unless more
#: is waiting): one wake-up per few requests instead of one per request, so on a small machine
#: it preempts the serving process (and the clients) less often. Nothing it does is urgent.
WORKER_READ_PAUSE_SECONDS = 0.005
_READ_CHUNK = 1 << 20
#: Bytes the serving side may hold for a worker that is slow to read (beyond, work is dropped).
MAX_UNSENT_BYTES = 64 * 1024 * 1024
#: Longest wait at start-up for the worker to load the challenger before the service starts.
WORKER_START_SECONDS = 60.0
_FRAME = struct.Struct("<Q")


def _pack(message: tuple[Any, ...]) -> bytes:
    blob = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(blob)) + blob


def _unpack(buf: bytearray) -> list[Any]:
    """Complete messages at the front of ``buf`` (removed from it)."""
    out = []
    pos = 0
    while len(buf) - pos >= _FRAME.size:
        (size,) = _FRAME.unpack_from(buf, pos)
        end = pos + _FRAME.size + size
        if len(buf) < end:
            break
        # A copy, not a memoryview: a live view would stop ``del buf[:pos]`` from resizing.
        out.append(pickle.loads(buf[pos + _FRAME.size : end]))
        pos = end
    del buf[:pos]
    return out


class Answered(NamedTuple):
    """What the worker needs about one answered request (a tuple: cheap to build and pickle)."""

    request_id: str
    ts: float
    version: str
    latency_ms: float
    classes: tuple[Any, ...]
    class_keys: tuple[str, ...]
    #: The champion's probabilities, float64, row-major (n x len(classes)).
    proba: bytes
    n: int
    #: How the rows sit in ``body``: 0 a list, 1 ``{"rows": [...]}``, 2 one row object.
    shape: int
    body: bytes
    #: The challenger version to shadow with (None: log only).
    shadow: str | None


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker process is started with (pickled to it)."""

    settings: Settings
    log_path: str
    log_pending_rows: int
    stall_seconds: float
    poll_seconds: float


class _Protocol(asyncio.Protocol):
    """The serving side of one worker's socket: reads its reports, notices when it dies."""

    def __init__(self, link: WorkerLink, generation: int) -> None:
        self.link = link
        self.generation = generation
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for message in _unpack(self.buf):
            self.link.on_report(self.generation, message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.on_lost(self.generation)


class WorkerLink:
    """Starts, feeds, watches and stops the worker process; turns its reports into metrics.

    ``forward`` runs on the event loop only; ``start``/``stop``/``set_challenger`` from threads.
    """

    def __init__(
        self, service: Service, loop: asyncio.AbstractEventLoop, config: WorkerConfig
    ) -> None:
        self.service = service
        self.metrics = service.metrics
        self.loop = loop
        self.config = config
        cfg = service.cfg
        self.max_items = cfg.shadow_queue_size
        # At most shadow_queue_size requests wait, and (whatever their size) no more rows than
        # one maximal request or shadow_queue_size single rows.
        self.max_rows = max(cfg.shadow_queue_size, cfg.max_rows_per_request)
        # Rows sent but not yet read by the worker (it then applies its own bound).
        self.max_log_rows = max(cfg.log_queue_size, 2 * cfg.max_rows_per_request)
        self.generation = 0
        self.proc: Any = None
        self.transport: asyncio.WriteTransport | None = None
        self.ints: Any = None
        self.floats: Any = None
        self.sent_items = self.sent_rows = self.sent_log_rows = 0
        self.restarts = 0
        self.challenger: str | None = None
        self.stopping = False
        self._cond = threading.Condition()
        self._ready = False
        self._loaded: str | None = None
        self._load_failed: str | None = None
        self._last: dict[tuple[str, ...], int] = {}
        self._backoff = 0.0

    # ------------------------------------------------------------------ lifecycle (threads)
    def start(self) -> None:
        """Spawn the worker and connect to it (returns before it has imported anything)."""
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork with threads
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # A bigger kernel buffer (capped by net.core.wmem_max) takes a few 1,000-row requests
        # in one send, so the event loop rarely has to finish a write later.
        with contextlib.suppress(OSError):
            parent.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        ints, floats = ctx.RawArray("q", 3), ctx.RawArray("d", 1)
        with self._cond:
            self.generation += 1
            generation = self.generation
            self._ready, self._loaded, self._load_failed, self._last = False, None, None, {}
        proc = ctx.Process(
            target=worker_main,
            args=(self.config, child, ints, floats, self.challenger),
            name=f"edgeloop-worker-{generation}",
            daemon=True,  # never outlives an interpreter that exits without stopping it
        )
        try:
            proc.start()
        finally:
            child.close()

        async def connect() -> None:
            transport, _ = await self.loop.create_unix_connection(
                lambda: _Protocol(self, generation), sock=parent
            )
            # Counters are reset together with the channel they describe.
            self.sent_items = self.sent_rows = self.sent_log_rows = 0
            self.ints, self.floats, self.proc = ints, floats, proc
            self.transport = transport  # type: ignore[assignment]

        asyncio.run_coroutine_threadsafe(connect(), self.loop).result(30)
        log.info("worker process %d started (shadow scoring, prediction log)", proc.pid)

    def wait_ready(self, challenger: str | None, timeout: float) -> bool:
        """Wait until the worker runs and (if there is one) has loaded ``challenger``."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._ready and challenger in (None, self._loaded, self._load_failed),
                timeout,
            )

    def set_challenger(self, version: str | None) -> None:
        """The challenger alias moved: the worker preloads the new version."""
        self.challenger = version
        self.loop.call_soon_threadsafe(self._send, ("challenger", version))

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to write what it holds and exit; kill it if it does not."""
        self.stopping = True

        def close() -> None:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(_pack(("stop",)))
                self.transport.write_eof()  # still read its last report

        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            self.loop.call_soon_threadsafe(close)
        proc = self.proc
        if proc is None:
            return
        proc.join(timeout)
        if proc.is_alive():
            log.warning("worker process %d did not stop in %.0f s: killed", proc.pid, timeout)
            proc.kill()
            proc.join(5.0)

        def drop() -> None:
            if self.transport is not None:
                self.transport.abort()

        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(drop)

    def _restart(self, generation: int) -> None:
        """A worker died: count it, count what it held, start another (with a backoff)."""
        old = self.proc
        if old is not None:
            old.join(5.0)
        with self._cond:
            if self.stopping or generation != self.generation:
                return
        # What was sent and never taken is lost with it.
        lost_items = self.sent_items - (self.ints[_TAKEN_ITEMS] if self.ints else 0)
        lost_log = self.sent_log_rows - (self.ints[_RECEIVED_LOG_ROWS] if self.ints else 0)
        if lost_items > 0:
            self.metrics.shadow_dropped.labels("worker_restarted").inc(lost_items)
        if lost_log > 0:
            self.metrics.log_dropped.inc(lost_log)
        self.restarts += 1
        self.metrics.worker_restarts.inc()
        code = old.exitcode if old is not None else None
        log.warning("worker process died (exit code %s): restarting", code)
        # A worker that dies at once (a broken environment) is not restarted in a tight loop.
        self._backoff = min(30.0, self._backoff * 2 or 0.5)
        time.sleep(self._backoff if self.restarts > 1 else 0.0)
        if not self.stopping:
            self.start()

    # ------------------------------------------------------------------ event loop
    def on_lost(self, generation: int) -> None:
        if generation == self.generation and not self.stopping:
            self.transport = None
            self.loop.run_in_executor(None, self._restart, generation)

    def on_report(self, generation: int, message: tuple[Any, ...]) -> None:
        if generation != self.generation:
            return
        kind = message[0]
        if kind == "counts":
            self._apply(message[1])
        elif kind in ("ready", "loaded", "load_failed"):
            with self._cond:
                if kind == "ready":
                    self._ready = True
                    self._backoff = 0.0
                elif kind == "loaded":
                    self._loaded = message[1]
                else:
                    self._load_failed = message[1]
                self._cond.notify_all()

    def _apply(self, counts: dict[tuple[str, ...], int]) -> None:
        """Cumulative counts from the worker -> increments of this process's counters."""
        m = self.metrics
        for key, value in counts.items():
            delta = value - self._last.get(key, 0)
            if delta <= 0:
                continue
            self._last[key] = value
            what = key[0]
            if what == "rows":
                m.challenger_rows.inc(delta)
            elif what == "agree":
                m.agree.inc(delta)
            elif what == "disagree":
                m.disagree.inc(delta)
            elif what == "error":
                m.errors.labels(CHALLENGER, key[1]).inc(delta)
            elif what == "dropped":
                m.shadow_dropped.labels(key[1]).inc(delta)
            elif what == "log_dropped":
                m.log_dropped.inc(delta)
            elif what == "load_error":
                m.registry_errors.labels("load").inc(delta)

    def _send(self, message: tuple[Any, ...]) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(_pack(message))

    def stalled_for(self) -> float:
        floats = self.floats
        since = floats[_BUSY_SINCE] if floats is not None else 0.0
        return 0.0 if since == 0.0 else max(0.0, time.monotonic() - since)

    def depth(self) -> int:
        return self.sent_items - self.ints[_TAKEN_ITEMS] if self.ints is not None else 0

    def forward(self, a: Answered) -> None:
        """Hand an answered request to the worker: never blocks; drops (and counts) when full."""
        t = self.transport
        n = a.n
        shadow = a.shadow
        m = self.metrics
        if t is None or t.is_closing() or t.get_write_buffer_size() > MAX_UNSENT_BYTES:
            m.log_dropped.inc(n)
            if shadow is not None:
                m.shadow_dropped.labels("worker_restarting" if t is None else "queue_full").inc()
            return
        ints = self.ints
        keep_log = self.sent_log_rows - ints[_RECEIVED_LOG_ROWS] + n <= self.max_log_rows
        if shadow is not None:
            if self.stalled_for() > self.config.stall_seconds:
                m.shadow_dropped.labels("challenger_stalled").inc()
                shadow = None
            elif (
                self.sent_items - ints[_TAKEN_ITEMS] >= self.max_items
                or self.sent_rows - ints[_TAKEN_ROWS] + n > self.max_rows
            ):
                m.shadow_dropped.labels("queue_full").inc()
                shadow = None
        if not keep_log:
            m.log_dropped.inc(n)
            if shadow is None:
                return
        if shadow is not None:
            self.sent_items += 1
            self.sent_rows += n
        if keep_log:
            self.sent_log_rows += n
        # A plain tuple pickles three times faster than the named one (no class lookup).
        t.write(_pack(("answered", tuple(a), keep_log, shadow)))

    def info(self) -> dict[str, Any]:
        proc = self.proc
        return {
            "pid": proc.pid if proc is not None else None,
            "alive": bool(proc is not None and proc.is_alive()),
            "restarts": self.restarts,
            "challenger_loaded": self._loaded,
        }


# ---------------------------------------------------------------------- inside the worker
@dataclass(eq=False)
class ShadowItem:
    """One answered request, waiting for the challenger (in the worker process)."""

    request_id: str
    ts: float
    batch: RowBatch
    champion_keys: list[str]


class _Shadow:
    """One thread scoring queued requests with the challenger. Replaced (not killed: Python
    cannot) when it is stuck on a challenger that has since been replaced."""

    def __init__(self, worker: _Worker, generation: int) -> None:
        self.worker = worker
        self.retired = False
        self.thread = threading.Thread(
            target=self.run, name=f"edgeloop-shadow-{generation}", daemon=True
        )
        self.thread.start()

    def _busy(self, since: float) -> None:
        if not self.retired:
            self.worker.floats[_BUSY_SINCE] = since

    def run(self) -> None:
        w = self.worker
        q = w.queue
        while not self.retired:
            w.ensure_model(self)
            try:
                first = q.get(timeout=0.25)
            except queue.Empty:
                continue
            items = [first]
            rows = w.taken(first)
            # Linger a little: under load, scoring many requests in one call costs about what
            # one costs.
            deadline = time.monotonic() + SHADOW_LINGER_SECONDS
            while rows < SHADOW_BATCH_ROWS and not self.retired:
                remaining = deadline - time.monotonic()
                try:
                    item = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                rows += w.taken(item)
            w.ensure_model(self)  # the items may name a challenger that is not loaded yet
            self._busy(time.monotonic())
            try:
                w.score(items)
            except Exception:  # never let one bad batch end shadow scoring
                log.exception("shadow scoring failed")
            finally:
                self._busy(0.0)


class _Worker:
    """The worker process: reads answered requests, logs them, shadows them, reports."""

    def __init__(self, config: WorkerConfig, sock: socket.socket, ints: Any, floats: Any) -> None:
        self.config = config
        self.settings = config.settings
        self.sock = sock
        self.ints = ints
        self.floats = floats
        self.counts: dict[tuple[str, ...], int] = {}
        self.queue: queue.SimpleQueue[ShadowItem] = queue.SimpleQueue()
        self.wanted: str | None = None
        self.model: LoadedModel | None = None
        self._failed: tuple[str, float] | None = None
        self._client: Any = None
        self._error_logged: set[str] = set()
        self._send_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.predlog = PredictionLog(
            Path(config.log_path),
            config.log_pending_rows,
            on_drop=lambda n: self.count(("log_dropped",), n),
        )
        self._generation = 0
        self.shadow: _Shadow | None = None

    def count(self, key: tuple[str, ...], n: int = 1) -> None:
        # Three threads count (reader, shadow, log writer): a read-modify-write needs the lock.
        with self._count_lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def send(self, message: tuple[Any, ...]) -> None:
        # A service that is gone shows as end-of-file on the next read; the log is still written.
        with self._send_lock, contextlib.suppress(OSError):
            self.sock.sendall(_pack(message))

    def taken(self, item: ShadowItem) -> int:
        n = len(item.batch)
        self.ints[_TAKEN_ROWS] += n
        self.ints[_TAKEN_ITEMS] += 1
        return n

    # ------------------------------------------------------------------ challenger
    def ensure_model(self, shadow: _Shadow) -> None:
        """Load the wanted challenger version if it is not the one loaded (shadow thread)."""
        wanted = self.wanted
        current = self.model.version if self.model is not None else None
        if wanted == current:
            return
        if wanted is None:
            self.model = None
            return
        failed = self._failed
        if (
            failed
            and failed[0] == wanted
            and time.monotonic() - failed[1] < self.config.poll_seconds
        ):
            return  # a failed load is retried every poll, not in a tight loop
        # No lock: a thread stuck in a load must not block its replacement; a load that
        # finishes for a retired thread is discarded.
        shadow._busy(time.monotonic())  # a load that hangs is a stall too
        try:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                from edgeloop.tracking.store import configure

                uri = configure(self.settings)
                self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            model = load_version(self.settings, self._client, CHALLENGER, wanted)
        except Exception as exc:
            self.count(("load_error",))
            self._failed = (wanted, time.monotonic())
            log.warning("worker: cannot load challenger v%s: %s", wanted, exc)
            self.send(("load_failed", wanted))  # the service need not wait for it
            return
        finally:
            shadow._busy(0.0)
        self._failed = None
        if shadow.retired:
            return
        self.model = model
        log.info(
            "worker: challenger v%s loaded%s", wanted, " (fast path)" if model.fast_path else ""
        )
        self.send(("loaded", wanted))

    def want(self, version: str | None) -> None:
        """The challenger to use from now on; a thread stuck on the old one is replaced."""
        if version == self.wanted:
            return
        self.wanted = version
        shadow = self.shadow
        if shadow is not None and version is not None:
            since = self.floats[_BUSY_SINCE]
            stalled = since and time.monotonic() - since > self.config.stall_seconds
            if stalled:
                shadow.retired = True
                self.floats[_BUSY_SINCE] = 0.0
                self._start_shadow()
                log.warning("worker: shadow thread was stuck: replaced")

    def _start_shadow(self) -> None:
        self._generation += 1
        self.shadow = _Shadow(self, self._generation)

    def score(self, items: list[ShadowItem]) -> None:
        model = self.model
        if model is None or model.version != self.wanted:
            self.count(("dropped", "no_challenger"), len(items))
            return
        usable: list[tuple[ShadowItem, list[list[Any]]]] = []
        for item in items:
            try:  # the challenger validates the rows against its own schema
                usable.append((item, model.schema.coerce(item.batch.rows)))
            except InputError as exc:
                self.count(("dropped", "schema_mismatch"))
                if model.version not in self._error_logged:
                    self._error_logged.add(model.version)
                    log.warning("challenger v%s cannot score these rows: %s", model.version, exc)
        if not usable:
            return
        ncols = len(model.schema.columns)
        cols = (
            usable[0][1]
            if len(usable) == 1
            else [[v for _, c in usable for v in c[j]] for j in range(ncols)]
        )
        t0 = time.perf_counter()
        try:
            proba = model.predict_proba(cols)
        except Exception as exc:
            self.count(("error", model.version), len(usable))
            if model.version not in self._error_logged:
                self._error_logged.add(model.version)
                log.warning("challenger v%s failed to score: %r", model.version, exc)
            return
        latency_ms = (time.perf_counter() - t0) * 1000.0
        idx = proba.argmax(axis=1).tolist()
        plist = proba.tolist()
        keys = model.class_keys
        start = agree = 0
        for item, _ in usable:
            n = len(item.batch)
            mine = idx[start : start + n]
            agree += sum(keys[j] == k for j, k in zip(mine, item.champion_keys, strict=True))
            self.predlog.submit(
                Entry(
                    ts=item.ts,
                    request_id=item.request_id,
                    alias=CHALLENGER,
                    version=model.version,
                    batch=item.batch,
                    predicted=[model.classes[j] for j in mine],
                    probabilities=plist[start : start + n],
                    class_keys=keys,
                    latency_ms=latency_ms,
                )
            )
            start += n
        self.count(("rows",), start)
        self.count(("agree",), agree)
        self.count(("disagree",), start - agree)

    # ------------------------------------------------------------------ the channel
    def answered(self, a: Answered, keep_log: bool, shadow: str | None) -> None:
        import numpy as np
        import orjson

        try:
            data = orjson.loads(a.body)
            rows = data if a.shape == 0 else data["rows"] if a.shape == 1 else [data]
            batch = RowBatch(rows)
            proba = np.frombuffer(a.proba, dtype=np.float64).reshape(a.n, len(a.classes))
            idx = proba.argmax(axis=1).tolist()
        except Exception:  # cannot happen for a body the service accepted; never fatal
            log.exception("worker: unreadable request %s", a.request_id)
            if keep_log:
                self.count(("log_dropped",), a.n)
            if shadow is not None:
                self.count(("dropped", "no_challenger"))
            return
        finally:
            if keep_log:
                self.ints[_RECEIVED_LOG_ROWS] += a.n
        if keep_log:
            self.predlog.submit(
                Entry(
                    a.ts,
                    a.request_id,
                    CHAMPION,
                    a.version,
                    batch,
                    [a.classes[j] for j in idx],
                    proba.tolist(),
                    a.class_keys,
                    a.latency_ms,
                )
            )
        if shadow is not None:
            self.want(shadow)
            keys = a.class_keys
            self.queue.put(ShadowItem(a.request_id, a.ts, batch, [keys[j] for j in idx]))

    def run(self, challenger: str | None) -> None:
        import select

        self.predlog.start()
        self.wanted = challenger
        self._start_shadow()
        self.send(("ready", os.getpid()))
        buf = bytearray()
        reported: dict[tuple[str, ...], int] = {}
        next_report = time.monotonic() + WORKER_REPORT_SECONDS
        stop = False
        while not stop:
            timeout = max(0.0, next_report - time.monotonic())
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if readable:
                data = self.sock.recv(_READ_CHUNK)
                if not data:
                    break  # the service closed its end (or died): finish up
                buf += data
                for message in _unpack(buf):
                    kind = message[0]
                    if kind == "answered":
                        self.answered(Answered._make(message[1]), *message[2:])
                    elif kind == "challenger":
                        self.want(message[1])
                    elif kind == "stop":
                        stop = True
                        break
                if len(data) < _READ_CHUNK and not stop:
                    time.sleep(WORKER_READ_PAUSE_SECONDS)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + WORKER_REPORT_SECONDS
                with self._count_lock:
                    changed = self.counts != reported
                    if changed:
                        reported = dict(self.counts)
                if changed:
                    self.send(("counts", reported))
        # Stopping: what is still queued for the challenger is not scored; the log is written.
        if self.shadow is not None:
            self.shadow.retired = True
        left = 0
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
                left += 1
        if left:
            self.count(("dropped", "challenger_stalled"), left)
        self.predlog.close(timeout=8.0)
        with self._count_lock:
            final = dict(self.counts)
        self.send(("counts", final))


def worker_main(
    config: WorkerConfig, sock: socket.socket, ints: Any, floats: Any, challenger: str | None
) -> None:
    """Entry point of the worker process."""
    import signal

    # Ctrl-C and SIGTERM reach the whole process group: the service stops this process itself
    # (after the log is written), and it also exits when the service's end of the socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    applog = logging.getLogger("edgeloop")
    if not applog.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        applog.addHandler(handler)
        applog.setLevel(logging.INFO)
    code = 0
    try:
        _Worker(config, sock, ints, floats).run(challenger)
    except Exception:
        log.exception("worker process failed")
        code = 1
    finally:
        logging.shutdown()
    # A challenger thread stuck in a call must not keep the process alive.
    os._exit(code)


# ---------------------------------------------------------------------- the service
class Service:
    """Models, background threads and the request handlers of one app."""

    def __init__(self, settings: Settings, *, stall_seconds: float = DEFAULT_STALL_SECONDS) -> None:
        self.settings = settings
        self.cfg = settings.serving
        self.stall_seconds = stall_seconds
        self.metrics = Metrics()
        self.champion: LoadedModel | None = None
        self.challenger: LoadedModel | None = None
        self.reasons: dict[str, str] = {
            CHAMPION: "the service is starting: the registry has not been read yet",
            CHALLENGER: "the registry has not been read yet",
        }
        #: The event loop that serves requests (set by the app's lifespan before ``start``).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.link: WorkerLink | None = None
        self._client: Any = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._failed: dict[str, str] = {}
        self.tracking_uri = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the worker process, read the registry once (so a champion is ready), poll."""
        from edgeloop.tracking.store import configure

        if self.loop is None:
            raise ServiceError("Service.start needs the event loop that serves requests")
        log_path = self.settings.root / self.cfg.log_path
        connect(log_path).close()  # a bad log path fails here, not in the worker
        config = WorkerConfig(
            settings=self.settings,
            log_path=str(log_path),
            # Room for at least one maximal request from each model.
            log_pending_rows=max(self.cfg.log_queue_size, 2 * self.cfg.max_rows_per_request),
            stall_seconds=self.stall_seconds,
            poll_seconds=self.cfg.poll_seconds,
        )
        # Started first: it imports MLflow and scikit-learn while this process loads the models.
        self.link = WorkerLink(self, self.loop, config)
        self.link.start()
        self.metrics.shadow_healthy.set_function(lambda: 1.0 if self.shadow_healthy() else 0.0)
        self.metrics.shadow_queue.set_function(lambda: float(self.link.depth() if self.link else 0))
        from mlflow.tracking import MlflowClient

        self.tracking_uri = configure(self.settings)
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.poll_once()
        chall = self.challenger
        if not self.link.wait_ready(chall.version if chall else None, WORKER_START_SECONDS):
            log.warning(
                "the worker process is not ready after %.0f s: starting anyway (shadow work"
                " and log records are dropped and counted until it is)",
                WORKER_START_SECONDS,
            )
        self._poller = threading.Thread(
            target=self._poll_loop, name="edgeloop-registry", daemon=True
        )
        self._poller.start()

    def stop(self) -> None:
        """Stop polling; the worker writes the log records it holds and exits (or is killed)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5.0)
        if self.link is not None:
            self.link.stop()

    # ------------------------------------------------------------------ registry
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # the loop must survive anything a registry can throw
                log.exception("registry poll failed")

    def _read_aliases(self) -> dict[str, str] | None:
        """alias -> version; None when the registered model does not exist (yet)."""
        from mlflow.exceptions import MlflowException

        try:
            rm = self._client.get_registered_model(self.settings.model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return {a: str(v) for a, v in (rm.aliases or {}).items()}

    def poll_once(self) -> None:
        """Read the aliases; load and swap in any model whose alias moved."""
        name = self.settings.model_name
        try:
            aliases = self._read_aliases()
        except Exception as exc:
            # Keep serving what is loaded: a registry blip must not take the service down.
            self.metrics.registry_errors.labels("poll").inc()
            msg = f"registry {self.tracking_uri} unreachable: {exc}"
            for alias in (CHAMPION, CHALLENGER):
                if getattr(self, alias) is None:
                    self.reasons[alias] = msg
            log.warning(msg)
            return
        every = f"every {self.cfg.poll_seconds:g} s"
        for alias in (CHAMPION, CHALLENGER):
            wanted = (aliases or {}).get(alias)
            current: LoadedModel | None = getattr(self, alias)
            if wanted is None:
                why = f"no version of registered model {name!r} holds alias {alias!r}"
                if aliases is None:
                    why += f" (the model does not exist yet in {self.tracking_uri})"
                else:
                    known = ", ".join(f"{a}=v{v}" for a, v in sorted(aliases.items())) or "none"
                    why += f" (aliases: {known})"
                self.reasons[alias] = f"{why}; the registry is re-read {every}"
                if current is not None:
                    log.warning(
                        "alias %s removed from %s: unloading v%s", alias, name, current.version
                    )
                    self._swap(alias, None)
                continue
            if current is not None and current.version == wanted:
                continue
            try:
                loaded = load_version(self.settings, self._client, alias, wanted)
            except Exception as exc:
                self.metrics.registry_errors.labels("load").inc()
                self.reasons[alias] = (
                    f"cannot load {name} v{wanted} ({alias}): {exc}; retried {every}"
                )
                if self._failed.get(alias) != wanted:  # log once per version, not every poll
                    self._failed[alias] = wanted
                    log.exception("cannot load %s v%s for %s", name, wanted, alias)
                continue
            self._failed.pop(alias, None)
            log.info(
                "%s: %s v%s loaded%s",
                alias,
                name,
                wanted,
                " (fast path)" if loaded.fast_path else "",
            )
            self._swap(alias, loaded)

    def _swap(self, alias: str, model: LoadedModel | None) -> None:
        # One reference assignment: a request holds the model it started with to the end.
        setattr(self, alias, model)
        self.metrics.version.labels(alias).set(int(model.version) if model else 0)
        if alias == CHALLENGER and self.link is not None:
            self.link.set_challenger(model.version if model else None)

    # ------------------------------------------------------------------ request path
    def shadow_healthy(self) -> bool:
        return (
            self.link is None
            or self.challenger is None
            or self.link.stalled_for() <= self.stall_seconds
        )

    def score(self, body: bytes, t0: float) -> tuple[int, bytes, str, Answered | None]:
        """Parse, validate, predict, answer.

        Returns (status, JSON body, request id, what to hand to the worker process once the
        answer is sent: None for an error).
        """
        import orjson

        model = self.champion  # this request uses this model to the end, whatever swaps
        if model is None:
            return 503, _error(self.reasons[CHAMPION]), "", None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return 400, _error(f"the body is not valid JSON: {exc}"), "", None
        try:
            rows = rows_of(data, model.schema)
            if not rows:
                raise InputError("no rows: send at least one row")
            if len(rows) > self.cfg.max_rows_per_request:
                raise InputError(
                    f"{len(rows)} rows is more than serving.max_rows_per_request"
                    f" ({self.cfg.max_rows_per_request}): split the request"
                )
            cols = model.schema.coerce(rows)
        except InputError as exc:
            return exc.status, _error(exc.message, exc.field, exc.row), "", None
        try:
            proba = model.predict_proba(cols)
        except Exception as exc:
            self.metrics.errors.labels(CHAMPION, model.version).inc()
            log.exception("champion v%s failed", model.version)
            return (
                500,
                _error(f"the champion (v{model.version}) failed to score: {exc!r}"),
                "",
                None,
            )
        idx = proba.argmax(axis=1).tolist()
        plist = proba.tolist()
        classes, keys = model.classes, model.class_keys
        request_id = uuid.uuid4().hex
        out = orjson.dumps(
            {
                "request_id": request_id,
                "model": {"alias": CHAMPION, "version": model.version},
                "predictions": [
                    {"class": classes[j], "probabilities": dict(zip(keys, p, strict=True))}
                    for j, p in zip(idx, plist, strict=True)
                ],
            }
        )
        latency_ms = (time.perf_counter() - t0) * 1000.0
        # The answer is ready; what follows only describes it for the worker process.
        n = len(rows)
        self.metrics.champion_rows.inc(n)
        chall = self.challenger
        answered = Answered(
            request_id,
            time.time(),
            model.version,
            latency_ms,
            classes,
            keys,
            proba.tobytes(),
            n,
            0 if rows is data else 2 if rows[0] is data else 1,
            body,
            chall.version if chall is not None else None,
        )
        return 200, out, request_id, answered

    def readiness(self) -> tuple[int, dict[str, Any]]:
        champ, chall = self.champion, self.challenger
        body: dict[str, Any] = {
            "ready": champ is not None,
            "model": self.settings.model_name,
            "champion": champ.info() if champ else None,
            "challenger": chall.info() if chall else None,
        }
        if champ is None:
            body["reason"] = self.reasons[CHAMPION]
        for alias in (CHAMPION, CHALLENGER):
            if alias in self._failed:  # still serving the previous version, if any
                body[f"{alias}_load_error"] = self.reasons[alias]
        if chall is None:
            body["challenger_reason"] = self.reasons[CHALLENGER]
        elif self.link is not None:
            stalled = self.link.stalled_for()
            body["challenger"]["healthy"] = stalled <= self.stall_seconds
            if stalled > self.stall_seconds:
                body["challenger"]["reason"] = (
                    f"stuck scoring shadow work for {stalled:.1f} s: shadow work is dropped"
                )
        if self.link is not None:
            body["worker"] = self.link.info()
        return (200 if champ is not None else 503), body


def _error(message: str, field: str | None = None, row: int | None = None) -> bytes:
    import orjson

    return orjson.dumps({"error": message, "field": field, "row": row})


# ---------------------------------------------------------------------- ASGI
_JSON_HEADERS = [(b"content-type", b"application/json")]


class _PredictEndpoint:
    """``POST /predict`` as a bare ASGI app: no Request/Response objects on the hot path."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.max_body = service.cfg.max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        t0 = time.perf_counter()
        svc = self.service
        status, body, request_id, answered = await self._handle(scope, receive, t0)
        headers = list(_JSON_HEADERS)
        if request_id:
            headers.append((b"x-request-id", request_id.encode()))
        if status == 413:
            headers.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        svc.metrics.count("predict", status)
        if status == 200:
            svc.metrics.latency.observe(time.perf_counter() - t0)
        if answered is not None and svc.link is not None:
            # After the answer is sent, on the event loop: a non-blocking write, never a wait.
            svc.link.forward(answered)

    async def _handle(
        self, scope: dict, receive: Callable, t0: float
    ) -> tuple[int, bytes, str, Answered | None]:
        svc = self.service
        if svc.champion is None:
            return 503, _error(svc.reasons[CHAMPION]), "", None
        too_big = _error(
            f"the body is larger than serving.max_body_bytes ({self.max_body} bytes):"
            " send fewer rows per request"
        )
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return 413, too_big, "", None
                except ValueError:
                    return 400, _error("invalid Content-Length header"), "", None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, _error("the client disconnected"), "", None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return 413, too_big, "", None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if size <= INLINE_MAX_BODY:
            return svc.score(body, t0)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(svc.score, body, t0)


def create_app(
    settings: Settings, *, shadow_stall_seconds: float = DEFAULT_STALL_SECONDS
) -> Starlette:
    """The prediction service for ``settings`` (models load when the app starts)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    from starlette.routing import Route

    service = Service(settings, stall_seconds=shadow_stall_seconds)

    def json_response(status: int, payload: Any) -> Response:
        import orjson

        return Response(orjson.dumps(payload), status_code=status, media_type="application/json")

    async def healthz(request: Request) -> Response:
        service.metrics.count("healthz", 200)
        return json_response(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        status, body = service.readiness()
        service.metrics.count("readyz", status)
        return json_response(status, body)

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        service.metrics.count("metrics", 200)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Loading MLflow and the models takes seconds: keep the event loop free meanwhile.
        service.loop = asyncio.get_running_loop()
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = Starlette(
        routes=[
            Route("/predict", _PredictEndpoint(service), methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.service = service
    return app


# ---------------------------------------------------------------------- running it
def bind_socket(host: str, port: int) -> socket.socket:
    """Bind now, so "port in use" is a clear error before anything slow happens."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServiceError(
            f"cannot serve on {host}:{port}: unknown host ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    # Like uvicorn: a restarted service can take its port back from TIME_WAIT connections at
    # once. A port another process listens on still fails (EADDRINUSE).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServiceError(
                f"port {port} on {host} is already in use (another 'edgeloop serve'?):"
                " stop it or choose another port with --port"
            ) from None
        raise ServiceError(f"cannot serve on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the service with uvicorn until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    sock = bind_socket(host, port)
    # The service's own messages (models loaded, swapped, failing) next to uvicorn's.
    applog = logging.getLogger("edgeloop")
    if not applog.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        applog.addHandler(handler)
        applog.setLevel(logging.INFO)
    config = uvicorn.Config(
        create_app(settings),
        lifespan="on",
        # Access logs cost ~10 % of a single-row request; /metrics counts requests instead.
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    log.info("edgeloop serve: http://%s:%d (model %s)", host, port, settings.model_name)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled once it has shut down cleanly: not an error.
        pass
    except SystemExit:
        # uvicorn exits this way when the app's start-up fails; it has logged why.
        if server.started:
            raise
    finally:
        sock.close()
    if not server.started:
        raise ServiceError("the service did not start (see the log above)")
