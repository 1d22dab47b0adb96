"""MLflow set-up: the embedded SQLite store under ``mlflow/`` or a team server from the env.

Nothing is configured on import: callers ask for a client with ``mlflow_client(settings)``,
which points the ``mlflow`` module at the right store for this process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import StoreError

DATA_EXPERIMENT = keys.DATA_EXPERIMENT


def tracking_uri(settings: Settings) -> str:
    """``MLFLOW_TRACKING_URI`` (or the config) if set, else SQLite under ``paths.mlflow``."""
    if settings.services.mlflow_tracking_uri:
        return settings.services.mlflow_tracking_uri
    return f"sqlite:///{settings.path('mlflow') / 'mlflow.db'}"


def is_embedded(settings: Settings) -> bool:
    return not settings.services.mlflow_tracking_uri


def artifact_root(settings: Settings) -> Path:
    return settings.path("mlflow") / "artifacts"


def experiment_name(settings: Settings, kind: str) -> str:
    return f"{settings.project}-{kind}"


def configure(settings: Settings) -> str:
    """Point this process's ``mlflow`` at the project's store; returns the URI."""
    # lazy (here and below): MLflow takes ~3 s to import, and the serving worker imports this
    # module at start but MLflow only once it has a challenger (edgeloop/serving/worker.py)
    import mlflow

    uri = tracking_uri(settings)
    if is_embedded(settings):
        settings.path("mlflow").mkdir(parents=True, exist_ok=True)
    # MLflow also writes the URI into os.environ (for subprocesses); left there, it would read
    # as the user's MLFLOW_TRACKING_URI override when the next config is loaded in this process.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    # The registry lives in the same store.
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return uri


def ensure_experiment(settings: Settings, kind: str) -> str:
    """Create (or find) the experiment; embedded stores keep artifacts under ``mlflow/``."""
    import mlflow  # lazy: see configure
    from mlflow.tracking import MlflowClient

    configure(settings)
    name = experiment_name(settings, kind)
    client = MlflowClient()
    try:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if is_embedded(settings):
            # Without an explicit location MLflow writes to ./mlruns of whatever the cwd is.
            location = (artifact_root(settings) / name).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException as exc:
            # Created by another thread or process since the lookup (the retrain flow's
            # recovery task and its cache lookup both ask, at once, on a new store): use it.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id
    except mlflow.exceptions.MlflowException as exc:
        raise StoreError(f"MLflow store {tracking_uri(settings)} is not usable: {exc}") from None
    except Exception as exc:  # connection errors to a team server come in many types
        raise StoreError(f"MLflow store {tracking_uri(settings)} is unreachable: {exc}") from None


#: Set by ``edgeloop up`` for the processes it starts: where its MLflow UI answers.
ENV_MLFLOW_UI_URL = "EDGELOOP_MLFLOW_UI_URL"


def run_url(settings: Settings, experiment_id: str, run_id: str) -> str:
    """Where to see a run: the UI path on a server, or the store-relative locator locally."""
    base = settings.services.mlflow_tracking_uri
    if not base.startswith("http"):
        # `edgeloop up` serves the MLflow UI on the embedded store and says where.
        base = os.environ.get(ENV_MLFLOW_UI_URL, "")
    if base.startswith("http"):
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow ui -> experiment {experiment_id}, run {run_id}"


def log_dict_params(params: dict[str, Any]) -> None:
    """Log params, truncating values MLflow would refuse (6000 chars)."""
    import mlflow  # lazy: see configure

    mlflow.log_params({k: str(v)[:5000] for k, v in params.items()})
