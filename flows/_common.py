"""What several flows share: the ``version-data`` task, the run's UI link, the SLA alert."""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger, task
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL

from edgeloop._internal.runtime import LOCAL_UI_URL
from edgeloop.batch.annotation import SLA_AT_RISK, SLA_BREACHED, Backlog
from edgeloop.core.config import Settings
from edgeloop.core.layout import Layout
from edgeloop.data.versioning import DataVersioner

#: Emitted when the labeling SLA becomes at risk / breached (``Backlog.sla_state``).
SLA_EVENTS = {SLA_AT_RISK: "edgeloop.sla.at-risk", SLA_BREACHED: "edgeloop.sla.breached"}


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


def project_resource(settings: Settings) -> dict[str, str]:
    """The Prefect event resource edgeloop's events are about: the project."""
    return {
        "prefect.resource.id": f"edgeloop.project.{settings.project}",
        "prefect.resource.name": settings.project,
    }


@task(name="announce-sla", cache_policy=NO_CACHE)
def announce_sla(settings: Settings, backlog: Backlog) -> dict[str, Any]:
    """Say it when the labeling SLA becomes at risk or breached: an ``edgeloop.sla.*`` Prefect
    event (automations can react to it) and ``annotation.sla_notify``'s notification block.

    Once per change of state (``.edgeloop/sla-alert.json`` keeps the last one), so an hourly
    check does not repeat itself. A notification that fails is logged, never fails the flow.
    """
    path = Layout.of(settings).state / "sla-alert.json"
    before = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    out: dict[str, Any] = {
        "state": backlog.sla_state,
        "changed": False,
        "event": "",
        "notified": "",
    }
    if before.get("state") == backlog.sla_state:
        return out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"state": backlog.sla_state}), encoding="utf-8")
    out["changed"] = True
    name = SLA_EVENTS.get(backlog.sla_state)
    if name is None:
        return out
    event = emit_event(event=name, resource=project_resource(settings), payload=backlog.to_dict())
    out["event"] = str(event.id) if event is not None else ""
    target = settings.annotation.sla_notify
    if target:
        try:
            block: Any = Block.load(target)
            block.notify(body=backlog.alert(), subject=f"{settings.project}: {backlog.alert()}")
            out["notified"] = target
        except Exception as exc:  # a notification must not stop the loop
            get_run_logger().warning("annotation.sla_notify %r: %s", target, exc)
            out["notify_error"] = str(exc)
    return out
