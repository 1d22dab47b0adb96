"""``edgeloop status``: the project's state (``ProjectStatus``; ``to_dict`` is its JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.parquet as pq

from edgeloop.batch.annotation import Backlog, sla
from edgeloop.core.config import Settings
from edgeloop.core.layout import Layout
from edgeloop.data.store import DataStore
from edgeloop.data.versioning import DataVersioner
from edgeloop.models.lineage import models_status
from edgeloop.tracking.store import tracking_uri


@dataclass(frozen=True)
class DataState:
    version: str | None
    pointer: str
    reference_rows: int
    rows: int
    present: bool


@dataclass(frozen=True)
class BatchCounts:
    seen: int
    by_status: dict[str, int]
    rows_accepted: int
    rows_quarantined: int
    #: Quarantined batches with their reasons (``DataStore.summary``).
    quarantined: list[dict[str, Any]]


@dataclass(frozen=True)
class Stores:
    mlflow_tracking_uri: str
    prefect_home: str
    prefect_api_url: str
    dvc_remote: str


@dataclass(frozen=True)
class ProjectStatus:
    """Data version, ledger counts, quarantined batches with reasons, store locations."""

    project: str
    config: str
    data: DataState
    batches: BatchCounts
    stores: Stores
    #: Champion, challenger, previous champion (``models_status``).
    models: dict[str, Any]
    #: The annotation backlog and its SLA (``annotation.sla``).
    annotation: Backlog
    #: The demo's frozen-vs-loop-vs-oracle measure (``reports/loop-effect.json``), if written.
    loop_effect: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_status(settings: Settings) -> ProjectStatus:
    """The project's state now."""
    store = DataStore(settings)
    versioner = DataVersioner(settings)
    layout = Layout.of(settings)
    reference_rows = 0
    if store.reference_path.exists():
        reference_rows = pq.ParquetFile(store.reference_path).metadata.num_rows
    ledger = store.summary()
    return ProjectStatus(
        project=settings.project,
        config=str(settings.source),
        data=DataState(
            version=versioner.version(),
            pointer=str(versioner.pointer),
            reference_rows=reference_rows,
            rows=reference_rows + ledger["rows_accepted"],
            present=store.reference_path.exists(),
        ),
        batches=BatchCounts(
            seen=ledger["batches"],
            by_status=ledger["by_status"],
            rows_accepted=ledger["rows_accepted"],
            rows_quarantined=ledger["rows_quarantined"],
            quarantined=ledger["quarantined"],
        ),
        stores=Stores(
            mlflow_tracking_uri=tracking_uri(settings),
            prefect_home=str(layout.prefect_home),
            prefect_api_url=settings.services.prefect_api_url
            or "(none: embedded, started per run)",
            dvc_remote=settings.services.dvc_remote_url or str(layout.dvc_remote),
        ),
        models=models_status(settings),
        annotation=sla(settings),
        loop_effect=read_loop_effect(settings),
    )


def read_loop_effect(settings: Settings) -> dict[str, Any] | None:
    """The loop-effect measure the demo wrote in this project (None elsewhere or unreadable)."""
    path = Layout.of(settings).loop_effect
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def collect_status(settings: Settings) -> dict[str, Any]:
    """``project_status`` as the JSON-ready dict ``edgeloop status --json`` prints."""
    return project_status(settings).to_dict()
