"""Start a retrain from inside another flow (drift, label volume).

With a Prefect server (``PREFECT_API_URL`` set, e.g. under ``edgeloop up``/``deploy``) the
retrain goes through the served ``retrain`` deployment: it shows in the UI as its own run, obeys
the deployment's one-at-a-time limit, and the triggering flow does not wait for it. Without a
server (embedded defaults) there is no deployment to call, so it runs as a subflow.
"""

from __future__ import annotations

from typing import Any

from edgeloop.core.config import Settings, configured_prefect_api_url

#: Every deployment ``edgeloop deploy`` serves is named after the project: ``<flow>/<project>``.
RETRAIN_FLOW = "retrain"


def deployment_name(settings: Settings, flow_name: str) -> str:
    """``<flow>/<project>``, the name ``edgeloop deploy`` gives each deployment."""
    return f"{flow_name}/{settings.project}"


def request_retrain(settings: Settings, reason: str, *, config: str) -> dict[str, Any]:
    """Start a retrain with ``reason``; returns how it was started and its run id or result."""
    if configured_prefect_api_url():
        started = _through_deployment(settings, reason)
        if started is not None:
            return started
    from edgeloop.core.errors import GateError
    from flows.retrain import retrain

    try:
        result = retrain(reason=reason, wait=True, config=config)
    except GateError as exc:
        result = exc.result
    return {"mode": "subflow", "reason": reason, "result": result}


def _through_deployment(settings: Settings, reason: str) -> dict[str, Any] | None:
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    name = deployment_name(settings, RETRAIN_FLOW)
    try:
        # timeout=0: create the run and return; the served deployment picks it up.
        run = run_deployment(name, parameters={"reason": reason, "wait": True}, timeout=0)
    except ObjectNotFound:
        return None  # a server without our deployments: fall back to a subflow
    return {
        "mode": "deployment",
        "deployment": name,
        "reason": reason,
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
    }
