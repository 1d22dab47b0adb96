"""``edgeloop status``: the project's state as one JSON-ready dict."""

from __future__ import annotations

from typing import Any

from edgeloop.core.config import Settings
from edgeloop.data.store import DataStore
from edgeloop.data.versioning import DataVersioner
from edgeloop.tracking.store import tracking_uri


def collect_status(settings: Settings) -> dict[str, Any]:
    """Data version, ledger counts, quarantined batches with reasons, store locations."""
    store = DataStore(settings)
    versioner = DataVersioner(settings)
    reference_rows = 0
    if store.reference_path.exists():
        import pyarrow.parquet as pq

        reference_rows = pq.ParquetFile(store.reference_path).metadata.num_rows
    ledger = store.summary()
    return {
        "project": settings.project,
        "config": str(settings.source),
        "data": {
            "version": versioner.version(),
            "pointer": str(versioner.pointer),
            "reference_rows": reference_rows,
            "rows": reference_rows + ledger["rows_accepted"],
            "present": store.reference_path.exists(),
        },
        "batches": {
            "seen": ledger["batches"],
            "by_status": ledger["by_status"],
            "rows_accepted": ledger["rows_accepted"],
            "rows_quarantined": ledger["rows_quarantined"],
            "quarantined": ledger["quarantined"],
        },
        "stores": {
            "mlflow_tracking_uri": tracking_uri(settings),
            "prefect_home": str(settings.path("prefect_home")),
            "prefect_api_url": settings.services.prefect_api_url
            or "(none: embedded, started per run)",
            "dvc_remote": settings.services.dvc_remote_url or str(settings.path("dvc_remote")),
        },
        "models": _models(settings),
        "annotation": _annotation(settings),
    }


def _models(settings: Settings) -> dict[str, Any]:
    from edgeloop.models.training import models_status

    return models_status(settings)


def _annotation(settings: Settings) -> dict[str, Any]:
    from edgeloop.batch.annotation import sla

    return sla(settings)
