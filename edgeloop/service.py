"""The prediction service (silent mode): the champion answers, the challenger shadows it.

``create_app(settings)`` builds a Starlette app. At start-up it loads the models that hold the
``champion`` and ``challenger`` aliases in the MLflow registry; a background thread re-reads the
aliases every ``serving.poll_seconds`` and swaps a model in when its alias moves (one reference
assignment, so a request sees either the old model or the new one, never a mix).

``POST /predict`` validates the rows against the champion's input schema (its MLflow
signature), scores them with the champion and answers. Only then are the same rows handed to
the challenger, through a bounded queue consumed by one worker thread: a slow, failing or hung
challenger can never delay or fail an answer; when the queue is full the work is dropped and
counted. Both models' predictions go to the prediction log (``edgeloop.predlog``).

Speed: for the pipeline edgeloop trains (one-hot encoder + passthrough in a ColumnTransformer,
then a forest), the per-request path skips pandas and scikit-learn's per-call validation and
builds the model's feature matrix directly. That fast path is checked against the pipeline's
own ``predict_proba`` on sample rows when a model is loaded and used only if they agree
exactly; any other pipeline runs through scikit-learn as is.

Nothing here runs on import; MLflow, scikit-learn and pandas are imported when the app starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import queue
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeloop.config import Settings
from edgeloop.errors import EdgeloopError
from edgeloop.predlog import Entry, PredictionLog, RowBatch

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


class ServiceError(EdgeloopError):
    """The service cannot start (port in use, unusable address)."""


class InputError(Exception):
    """A request the service refuses; ``field`` and ``row`` say where the problem is."""

    def __init__(
        self, message: str, field: str | None = None, row: int | None = None, status: int = 422
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.row = row
        self.status = status


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
        for reason in ("queue_full", "challenger_stalled", "schema_mismatch", "no_challenger"):
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


# ---------------------------------------------------------------------- shadow scoring
@dataclass(eq=False)
class ShadowItem:
    """One answered request, waiting for the challenger."""

    request_id: str
    ts: float
    batch: RowBatch
    cols: list[list[Any]]
    schema: InputSchema
    champion_keys: list[str]


class _ShadowWorker:
    def __init__(self, scorer: ShadowScorer, size: int, generation: int) -> None:
        self.scorer = scorer
        self.queue: queue.Queue[ShadowItem] = queue.Queue(maxsize=size)
        # Rows waiting, besides requests: a burst of maximal requests must not hold gigabytes.
        self.rows_queued = 0
        self.lock = threading.Lock()
        self.busy_since: float | None = None
        self.retired = False
        self.thread = threading.Thread(
            target=self.run, name=f"edgeloop-shadow-{generation}", daemon=True
        )
        self.thread.start()

    def stalled_for(self, now: float) -> float:
        since = self.busy_since
        return 0.0 if since is None else now - since

    def _taken(self, rows: int) -> None:
        with self.lock:
            self.rows_queued -= rows

    def run(self) -> None:
        while not self.retired:
            try:
                first = self.queue.get(timeout=0.25)
            except queue.Empty:
                continue
            items, rows = [first], len(first.batch)
            self._taken(rows)
            # Linger a little: under load, scoring many requests in one call costs about what
            # one costs, and the challenger then takes far less CPU (and GIL) from the champion.
            deadline = time.monotonic() + SHADOW_LINGER_SECONDS
            while rows < SHADOW_BATCH_ROWS and not self.retired:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self.queue.get(timeout=remaining)
                        if remaining > 0
                        else self.queue.get_nowait()
                    )
                except queue.Empty:
                    break
                items.append(item)
                rows += len(item.batch)
                self._taken(len(item.batch))
            self.busy_since = time.monotonic()
            try:
                self.scorer.score(items)
            except Exception:  # never let one bad batch end shadow scoring
                log.exception("shadow scoring failed")
            finally:
                self.busy_since = None
        # Retired (stopped, or replaced while stuck): what is left was never scored.
        left = 0
        with contextlib.suppress(queue.Empty):
            while True:
                self.queue.get_nowait()
                left += 1
        if left:
            self.scorer.drop("challenger_stalled", left)


class ShadowScorer:
    """Scores answered requests with the challenger, off the request path."""

    def __init__(self, service: Service, size: int, max_rows: int, stall_seconds: float) -> None:
        self.service = service
        self.size = size
        self.max_rows = max_rows
        self.stall_seconds = stall_seconds
        self._generation = 0
        self._lock = threading.Lock()
        self.worker = self._new_worker()
        self._error_logged: set[str] = set()

    def _new_worker(self) -> _ShadowWorker:
        self._generation += 1
        return _ShadowWorker(self, self.size, self._generation)

    # -- request path: must stay cheap and never block
    def offer(self, item: ShadowItem) -> None:
        worker = self.worker
        if worker.stalled_for(time.monotonic()) > self.stall_seconds:
            self.drop("challenger_stalled")
            return
        n = len(item.batch)
        with worker.lock:
            if worker.rows_queued + n <= self.max_rows:
                try:
                    worker.queue.put_nowait(item)
                    worker.rows_queued += n
                    return
                except queue.Full:
                    pass
        self.drop("queue_full")

    def drop(self, reason: str, n: int = 1) -> None:
        self.service.metrics.shadow_dropped.labels(reason).inc(n)

    # -- health
    def stalled_for(self) -> float:
        return self.worker.stalled_for(time.monotonic())

    def healthy(self) -> bool:
        return self.stalled_for() <= self.stall_seconds

    def depth(self) -> int:
        return self.worker.queue.qsize()

    def challenger_changed(self) -> None:
        """A new challenger: if the worker is stuck on the old one, give up on that thread
        (Python cannot kill it; it ends when its call returns) and start a fresh one."""
        with self._lock:
            if not self.healthy():
                old = self.worker
                old.retired = True
                self.worker = self._new_worker()
                log.warning(
                    "shadow worker was stuck for %.0f s: replaced",
                    old.stalled_for(time.monotonic()),
                )

    def stop(self, timeout: float = 2.0) -> None:
        self.worker.retired = True
        self.worker.thread.join(timeout)

    # -- worker thread
    def score(self, items: list[ShadowItem]) -> None:
        svc = self.service
        model = svc.challenger
        if model is None:  # the challenger was removed while this waited
            self.drop("no_challenger", len(items))
            return
        usable: list[tuple[ShadowItem, list[list[Any]]]] = []
        for item in items:
            if item.schema == model.schema:
                usable.append((item, item.cols))
                continue
            try:  # a challenger with other inputs: validate the rows against its own schema
                usable.append((item, model.schema.coerce(item.batch.rows)))
            except InputError as exc:
                self.drop("schema_mismatch")
                if model.version not in self._error_logged:
                    self._error_logged.add(model.version)
                    log.warning("challenger v%s cannot score these rows: %s", model.version, exc)
        if not usable:
            return
        ncols = len(model.schema.columns)
        cols = [[v for _, c in usable for v in c[j]] for j in range(ncols)]
        t0 = time.perf_counter()
        try:
            proba = model.predict_proba(cols)
        except Exception as exc:
            svc.metrics.errors.labels(CHALLENGER, model.version).inc(len(usable))
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
            svc.log_entry(
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
        svc.metrics.challenger_rows.inc(start)
        svc.metrics.agree.inc(agree)
        svc.metrics.disagree.inc(start - agree)


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
        self.predlog: PredictionLog | None = None
        self.shadow: ShadowScorer | None = None
        self._client: Any = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._failed: dict[str, str] = {}
        self.tracking_uri = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the log, read the registry once (so a champion is ready), start the threads."""
        from mlflow.tracking import MlflowClient

        from edgeloop.tracking import configure

        log_path = self.settings.root / self.cfg.log_path
        # Room for at least one maximal request from each model.
        pending = max(self.cfg.log_queue_size, 2 * self.cfg.max_rows_per_request)
        self.predlog = PredictionLog(
            log_path, pending, on_drop=lambda n: self.metrics.log_dropped.inc(n)
        ).start()
        # At most shadow_queue_size requests wait, and (whatever their size) no more rows than
        # one maximal request or shadow_queue_size single rows.
        self.shadow = ShadowScorer(
            self,
            self.cfg.shadow_queue_size,
            max(self.cfg.shadow_queue_size, self.cfg.max_rows_per_request),
            self.stall_seconds,
        )
        self.metrics.shadow_healthy.set_function(lambda: 1.0 if self.shadow_healthy() else 0.0)
        self.metrics.shadow_queue.set_function(
            lambda: float(self.shadow.depth() if self.shadow else 0)
        )
        self.tracking_uri = configure(self.settings)
        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.poll_once()
        self._poller = threading.Thread(
            target=self._poll_loop, name="edgeloop-registry", daemon=True
        )
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5.0)
        if self.shadow is not None:
            self.shadow.stop()
        if self.predlog is not None:
            self.predlog.close()

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
        if alias == CHALLENGER and model is not None and self.shadow is not None:
            self.shadow.challenger_changed()

    # ------------------------------------------------------------------ request path
    def log_entry(self, entry: Entry) -> None:
        if self.predlog is not None:
            self.predlog.submit(entry)

    def shadow_healthy(self) -> bool:
        return self.shadow is None or self.challenger is None or self.shadow.healthy()

    def score(self, body: bytes, t0: float) -> tuple[int, bytes, str]:
        """Parse, validate, predict, answer; then hand the rows to the log and the shadow.

        Returns (status, JSON body, request id).
        """
        import orjson

        model = self.champion  # this request uses this model to the end, whatever swaps
        if model is None:
            return 503, _error(self.reasons[CHAMPION]), ""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return 400, _error(f"the body is not valid JSON: {exc}"), ""
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
            return exc.status, _error(exc.message, exc.field, exc.row), ""
        try:
            proba = model.predict_proba(cols)
        except Exception as exc:
            self.metrics.errors.labels(CHAMPION, model.version).inc()
            log.exception("champion v%s failed", model.version)
            return 500, _error(f"the champion (v{model.version}) failed to score: {exc!r}"), ""
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
        # The answer is ready; what follows only queues work for other threads.
        n = len(rows)
        self.metrics.champion_rows.inc(n)
        ts = time.time()
        batch = RowBatch(rows)
        self.log_entry(
            Entry(
                ts,
                request_id,
                CHAMPION,
                model.version,
                batch,
                [classes[j] for j in idx],
                plist,
                keys,
                latency_ms,
            )
        )
        if self.challenger is not None and self.shadow is not None:
            self.shadow.offer(
                ShadowItem(request_id, ts, batch, cols, model.schema, [keys[j] for j in idx])
            )
        return 200, out, request_id

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
        elif self.shadow is not None:
            stalled = self.shadow.stalled_for()
            body["challenger"]["healthy"] = stalled <= self.stall_seconds
            if stalled > self.stall_seconds:
                body["challenger"]["reason"] = (
                    f"stuck scoring shadow work for {stalled:.1f} s: shadow work is dropped"
                )
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
        status, body, request_id = await self._handle(scope, receive, t0)
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

    async def _handle(self, scope: dict, receive: Callable, t0: float) -> tuple[int, bytes, str]:
        svc = self.service
        if svc.champion is None:
            return 503, _error(svc.reasons[CHAMPION]), ""
        too_big = _error(
            f"the body is larger than serving.max_body_bytes ({self.max_body} bytes):"
            " send fewer rows per request"
        )
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return 413, too_big, ""
                except ValueError:
                    return 400, _error("invalid Content-Length header"), ""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, _error("the client disconnected"), ""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return 413, too_big, ""
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
