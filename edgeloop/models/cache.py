"""Whether a retrain has to run: the dataset version, the cache key, the retrain lock.

A retrain is skipped when a finished, decided run has the same cache key: data version (DVC),
the model-relevant config, the training code's hash and ``max_rows``. ``quick_cache_check``
answers that from DVC and MLflow alone, so the CLI can reply before it starts Prefect.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import BusyError
from edgeloop.core.keys import TRAINING_EXPERIMENT
from edgeloop.core.layout import Layout
from edgeloop.data.store import DataStore
from edgeloop.models.inputs import (
    TRAINING_CODE,
    cache_key,
    code_hash,
    dataset_version,
    training_config,
)
from edgeloop.tracking.store import configure, ensure_experiment

__all__ = [
    "TRAINING_CODE",
    "RetrainSummary",
    "cache_key",
    "cached_summary",
    "close_orphan_runs",
    "code_hash",
    "current_dataset",
    "dataset_version",
    "find_cached",
    "quick_cache_check",
    "retrain_lock",
    "training_config",
]


@dataclass
class RetrainSummary:
    """What a retrain did; printed by the CLI and returned by the flow."""

    status: str  # registered | rejected | cached
    reason: str
    data_version: str
    run_id: str = ""
    version: str = ""
    alias: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    gates: dict[str, Any] = field(default_factory=dict)
    cache_key: str = ""
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: The trivial baseline's metrics on the same holdout (``baseline_<metric>``); empty when
    #: unknown (a cached run from before baselines).
    baseline_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A cached summary's metrics are every metric its run logged: the baseline's move here.
        prefix = keys.METRIC_BASELINE_PREFIX
        if not self.baseline_metrics and any(k.startswith(prefix) for k in self.metrics):
            self.baseline_metrics = {k: v for k, v in self.metrics.items() if k.startswith(prefix)}
            self.metrics = {k: v for k, v in self.metrics.items() if not k.startswith(prefix)}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("metrics", "champion_metrics", "baseline_metrics"):
            d[key] = {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in d[key].items()
            }
        return d


# ---------------------------------------------------------------------- lock
@contextlib.contextmanager
def retrain_lock(settings: Settings, wait: bool = False) -> Iterator[None]:
    """One retrain at a time per project: a second one is refused (or waits with ``wait``)."""
    lock_dir = Layout.of(settings).locks
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / "retrain.lock"
    with open(path, "a+", encoding="utf-8") as f:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(f, flags)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            raise BusyError(
                f"another retrain is running ({holder}); wait for it to finish (its run is in"
                f" MLflow), or pass --wait to queue behind it. Lock: {path}"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- data
def current_dataset(settings: Settings) -> tuple[str, pd.DataFrame]:
    """The training dataset (suspect labels left out, ``DataStore.load_training_dataset``) at
    the DVC version in ``data.dvc``; refuses a work tree that differs from it."""
    version = dataset_version(settings)
    return version, DataStore(settings).load_training_dataset()[0]


def find_cached(settings: Settings, key: str) -> Run | None:
    """The newest completed retrain (registered or rejected) with the same cache key, if any.

    A run whose process died before it registered or was rejected does not count: its inputs
    are retrained.
    """
    exp = ensure_experiment(settings, TRAINING_EXPERIMENT)
    runs = MlflowClient().search_runs(
        [exp],
        filter_string=f"tags.`{keys.TAG_CACHE_KEY}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    done = [r for r in runs if r.data.tags.get(keys.TAG_DECISION) in ("registered", "rejected")]
    return done[0] if done else None


def cached_summary(hit: Run, data_version: str, key: str, notes: list[str]) -> RetrainSummary:
    """What a skipped retrain reports: the finished run with the same inputs."""
    tags = hit.data.tags
    decision = tags.get(keys.TAG_DECISION, "")
    version = tags.get(keys.TAG_REGISTERED_VERSION, "")
    metrics = {k: v for k, v in hit.data.metrics.items() if not k.startswith("champion_")}
    message = (
        f"skipped: data {data_version[:12]}, config and training code unchanged since run"
        f" {hit.info.run_id} ({decision}{f', v{version}' if version else ''}); --force retrains"
    )
    if decision == "rejected":
        message += f"; that candidate was rejected: {tags.get(keys.TAG_NOTE, '')}"
    return RetrainSummary(
        status="cached",
        reason=tags.get(keys.TAG_REASON, ""),
        data_version=data_version,
        run_id=hit.info.run_id,
        version=version,
        metrics=metrics,
        cache_key=key,
        notes=notes,
        message=message,
        gates={"passed": decision != "rejected"},
    )


def quick_cache_check(settings: Settings, max_rows: int) -> RetrainSummary | None:
    """The cached outcome of a retrain with these inputs, found without Prefect or training
    imports (DVC and MLflow only); ``None`` when the retrain has to run.

    The CLI asks this first, so an unchanged project answers in seconds instead of starting
    the orchestration stack. Orphan runs are not a concern: only finished, decided runs count.
    """
    configure(settings)
    version = dataset_version(settings)
    key = cache_key(settings, version, max_rows)
    hit = find_cached(settings, key)
    return None if hit is None else cached_summary(hit, version, key, [])


def close_orphan_runs(settings: Settings) -> list[str]:
    """Runs a killed retrain left behind (we hold the lock, so none of them is still going)."""
    # The experiment first: it points this process's MLflow at the project's store.
    exp = ensure_experiment(settings, TRAINING_EXPERIMENT)
    client = MlflowClient()
    notes = []
    recent = client.search_runs([exp], order_by=["attributes.start_time DESC"], max_results=200)
    for r in recent:
        if r.data.tags.get(keys.TAG_DECISION):
            continue
        client.set_tag(r.info.run_id, keys.TAG_DECISION, "interrupted")
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, status="KILLED")
        notes.append(f"run {r.info.run_id} was interrupted before a decision: tagged 'interrupted'")
    return notes
