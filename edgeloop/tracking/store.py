"""MLflow set-up: the embedded SQLite store under ``mlflow/`` or a team server from the env.

Nothing is configured on import: callers ask for a client with ``mlflow_client(settings)``,
which points the ``mlflow`` module at the right store for this process.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import MovedStoreError, StoreError
from edgeloop.core.layout import Layout

DATA_EXPERIMENT = keys.DATA_EXPERIMENT


def tracking_uri(settings: Settings) -> str:
    """``MLFLOW_TRACKING_URI`` (or the config) if set, else SQLite under ``paths.mlflow``."""
    if settings.services.mlflow_tracking_uri:
        return settings.services.mlflow_tracking_uri
    return f"sqlite:///{store_file(settings)}"


def store_file(settings: Settings) -> Path:
    """The embedded store's SQLite file."""
    return Layout.of(settings).mlflow / "mlflow.db"


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
        check_location(settings)
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


# ----------------------------------------------------------- a moved or copied project
# MLflow stores every artifact location as an absolute URI (a relative one is resolved
# against the working directory when the experiment is created), so the store of a copied
# project still points at the original's artifacts. Commands refuse such a store;
# ``relocate`` rewrites its locations to this project's folders.

#: Columns of MLflow's SQLite schema that hold artifact locations (absent tables are skipped).
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)

_checked: set[Path] = set()


def _local_path(location: str) -> Path | None:
    """The folder a ``file:`` URI or a plain path names; None for other schemes (s3, http)."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme and location.startswith("/"):
        return Path(location)
    return None


def _connect(db: Path, *, write: bool = False) -> sqlite3.Connection:
    mode = "rw" if write else "ro"
    return sqlite3.connect(f"{db.as_uri()}?mode={mode}", uri=True, timeout=30)


def recorded_location(settings: Settings) -> Path | None:
    """The ``mlflow/`` folder the embedded store's experiments keep artifacts in, if that is
    not this project's (None when they are, or there is no store yet)."""
    db = store_file(settings)
    if not db.is_file():
        return None
    here = Layout.of(settings).mlflow.resolve()
    try:
        with contextlib.closing(_connect(db)) as con:
            rows = con.execute("SELECT name, artifact_location FROM experiments").fetchall()
    except sqlite3.Error:
        return None  # not an MLflow store yet: MLflow reports it with context
    for name, location in rows:
        path = _local_path(location or "")
        # edgeloop's experiments: <mlflow>/artifacts/<name> (see ensure_experiment)
        if path is None or path.name != name or path.parent.name != "artifacts":
            continue
        if path.parent.parent.resolve() != here:
            return path.parent.parent
    return None


def check_location(settings: Settings) -> None:
    """Refuse (``MovedStoreError``) an embedded store whose artifacts are elsewhere: the
    project was moved or copied, and MLflow would read and write the other folder."""
    db = store_file(settings)
    if db in _checked:
        return
    old = recorded_location(settings)
    if old is None:
        _checked.add(db)
        return
    here = Layout.of(settings).mlflow
    state = (
        "a copy: its commands would read and write the original's artifacts"
        if old.exists()
        else "moved: that folder no longer exists"
    )
    raise MovedStoreError(
        f"the MLflow store {db} keeps its artifacts in {old}, not in this project's {here}"
        f" (this project is {state}). Run 'edgeloop relocate' to point the store at {here}."
    )


@dataclass(frozen=True)
class Relocation:
    """What ``relocate`` rewrote: the old and new folders and the rows per column."""

    old: str
    new: str
    rows: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prefixes(old: Path, new: Path) -> list[tuple[str, str]]:
    """(old, new) prefixes in both spellings MLflow stores: ``file://`` URI and plain path."""
    return [(old.as_uri() + "/", new.as_uri() + "/"), (f"{old}/", f"{new}/")]


def relocate(settings: Settings) -> Relocation:
    """Point the embedded store's artifact locations at this project's folders, in one
    transaction; ``missing`` lists model versions whose artifacts are not here."""
    if not is_embedded(settings):
        raise StoreError("relocate applies to the embedded MLflow store, not to a server")
    db = store_file(settings)
    if not db.is_file():
        raise StoreError(f"no MLflow store at {db}: nothing to relocate")
    here = Layout.of(settings).mlflow
    old_mlflow = recorded_location(settings)
    if old_mlflow is None:
        return Relocation(str(here), str(here))
    pairs = _prefixes(old_mlflow, here)
    # The project's root too (MLflow's own Default experiment writes under <root>/mlruns).
    with contextlib.suppress(ValueError):
        rel = here.relative_to(settings.root)
        if old_mlflow.parts[-len(rel.parts) :] == rel.parts:
            old_root = Path(*old_mlflow.parts[: -len(rel.parts)])
            pairs += _prefixes(old_root, settings.root)
    rows: dict[str, int] = {}
    with contextlib.closing(_connect(db, write=True)) as con, con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, column in LOCATION_COLUMNS:
            if table not in tables:
                continue
            for before, after in pairs:
                # Names from LOCATION_COLUMNS only; the values are parameters.
                cur = con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?)"
                    f" WHERE substr({column}, 1, ?) = ?",
                    (after, len(before) + 1, len(before), before),
                )
                if cur.rowcount:
                    key = f"{table}.{column}"
                    rows[key] = rows.get(key, 0) + cur.rowcount
        versions = (
            con.execute("SELECT name, version, storage_location FROM model_versions").fetchall()
            if "model_versions" in tables
            else []
        )
    _checked.discard(db)
    missing = [
        f"{name} v{version}"
        for name, version, location in versions
        if (path := _local_path(location or "")) is not None and not (path / "MLmodel").is_file()
    ]
    return Relocation(str(old_mlflow), str(here), rows, missing)
