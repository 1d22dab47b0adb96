"""Loading a registered model version, ready to score (by both processes of the service).

Imported only when the first model is loaded: MLflow and scikit-learn cost seconds to import,
and the serving process starts its worker first so that both import them at once.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import mlflow.artifacts
import numpy as np
from mlflow.models import Model
from mlflow.utils.file_utils import local_file_uri_to_path

from edgeloop.core.config import Settings
from edgeloop.core.errors import RegistryError
from edgeloop.serving.predictors import (
    Predictor,
    fast_predictor,
    generic_predictor,
    has_members,
    is_regression_model,
    sample_columns,
)
from edgeloop.serving.schema import InputSchema
from edgeloop.tracking import trusted
from pipelines.score import target_scale

log = logging.getLogger("edgeloop.service")


@dataclass(frozen=True)
class LoadedModel:
    """One registry version, ready to score."""

    alias: str
    version: str
    uri: str
    model: Any
    schema: InputSchema
    #: Empty for a regressor.
    classes: tuple[Any, ...]
    class_keys: tuple[str, ...]
    #: Classification: rows x classes probabilities; regression: rows x (value, spread).
    predict: Predictor
    fast_path: bool
    loaded_at: float
    regression: bool = False
    #: A regressor with ensemble members: its answers carry their spread and a confidence.
    members: bool = False
    #: A regressor's training-target standard deviation (NaN if the model carries none).
    scale: float = float("nan")

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "uri": self.uri,
            "task": "regression" if self.regression else "classification",
            "fast_path": self.fast_path,
            "schema": self.schema.source,
            "loaded_at": self.loaded_at,
        }
        if self.regression:
            out["members"] = self.members
            out["target_scale"] = self.scale if self.scale == self.scale else None
        return out


def prepare_model(
    model: Any, schema: InputSchema, *, alias: str, version: str, uri: str, classes: Sequence[Any]
) -> LoadedModel:
    """Choose the fastest exact way to score ``model`` (checking the fast path warms it up)."""
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
        sample = sample_columns(schema, model)
        try:
            expected = generic(sample)
            # Batches and single rows may take different routes: check both.
            # NaN equals NaN here: a regressor without members has no spread on either path.
            same = np.array_equal(candidate(sample), expected, equal_nan=True) and all(
                np.array_equal(
                    candidate([c[i : i + 1] for c in sample]), expected[i : i + 1], equal_nan=True
                )
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
    regression = is_regression_model(model)
    return LoadedModel(
        alias=alias,
        version=str(version),
        uri=uri,
        model=model,
        schema=schema,
        classes=values,
        class_keys=tuple(str(c) for c in values),
        predict=predict,
        fast_path=fast,
        loaded_at=time.time(),
        regression=regression,
        members=regression and has_members(model),
        scale=target_scale(model) if regression else float("nan"),
    )


def load_version(settings: Settings, client: Any, alias: str, version: str) -> LoadedModel:
    """Load one registered version by number (not by alias: the alias may move meanwhile)."""
    # The version's own artifact location, fetched once: the model and its signature are read
    # from the copy, with no dependence on this process's global MLflow URIs.
    uri = client.get_model_version_download_uri(settings.model_name, str(version))
    with tempfile.TemporaryDirectory(prefix="edgeloop-model-") as tmp:
        if uri.startswith("file:"):
            # The embedded store: read in place (MLflow leaves this helper unannotated).
            local = local_file_uri_to_path(uri)  # type: ignore[no-untyped-call]
        else:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        # The types skops may build come from edgeloop's fixed list, not the artifact's.
        model = trusted.load_model(local, f"model v{version}")
        signature = Model.load(local).signature
    schema = InputSchema.from_signature(signature.inputs if signature else None)
    if schema is None:
        schema = InputSchema.from_settings(settings)
    row_id = settings.data_schema.id
    if row_id is not None and row_id not in schema.columns:
        schema = replace(schema, passthrough=frozenset({row_id}))
    regression = is_regression_model(model)
    if regression != settings.data_schema.is_regression:
        # A classifier's classes answered as values (or the reverse) would be wrong answers.
        raise RegistryError(
            f"model v{version} is a {'regressor' if regression else 'classifier'} but"
            f" schema.task is {settings.data_schema.task!r}: it was not loaded"
        )
    classes = [] if regression else getattr(model, "classes_", None)
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
