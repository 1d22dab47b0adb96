"""What several flows share: the ``version-data`` task and the run's UI link."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from edgeloop._internal.runtime import LOCAL_UI_URL
from edgeloop.core.config import Settings
from edgeloop.data.versioning import DataVersioner


@task(name="version-data", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def version_data(settings: Settings) -> str:
    """``dvc add data`` + push: the new dataset version (md5)."""
    return DataVersioner(settings).commit()


def flow_run_url() -> str:
    """The run's page on the Prefect server that shows it (the project-local one by default)."""
    if not flow_run.id:
        return ""
    # The UI's own route (`flow_run.ui_url` says /flow-runs/flow-run/, which the UI does not
    # serve). Without a UI URL (the embedded server) point at the UI `prefect server start`
    # serves by default on this project's home.
    base = PREFECT_UI_URL.value() or LOCAL_UI_URL
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run.id}"
