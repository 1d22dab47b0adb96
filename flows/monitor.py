"""Prefect flow: drift and confidence of newly scored batches, the dashboard, retrain on drift.

Thin: each task wraps one step of ``edgeloop.monitoring.monitor`` / ``edgeloop.monitoring.dashboard``. When a batch
drifted (and retraining on drift is on), the flow emits the Prefect event
``edgeloop.drift.detected`` for automations and requests one retrain per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run

from edgeloop.batch.annotation import sla
from edgeloop.core.config import Settings, load_settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.monitoring.dashboard import write_dashboard
from edgeloop.monitoring.monitor import BatchMonitoring, MonitorSummary, monitor_batches
from flows._common import announce_sla, flow_run_url, project_resource
from flows.retrain import request_retrain

DRIFT_EVENT = "edgeloop.drift.detected"


@task(name="monitor-batches", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def monitor_task(settings: Settings, batch_ids: list[str] | None) -> MonitorSummary:
    """Drift report and one MLflow run per new batch (a retry skips batches already logged)."""
    return monitor_batches(
        settings, batch_ids, flow_run_id=str(flow_run.id or ""), flow_run_url=flow_run_url()
    )


@task(name="write-dashboard", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def dashboard_task(settings: Settings, run_id: str) -> str:
    """The HTML dashboard over every monitored batch, logged to the newest run."""
    return str(write_dashboard(settings, run_id=run_id))


@task(name="emit-drift-events", cache_policy=NO_CACHE)
def emit_task(settings: Settings, drifted: list[BatchMonitoring]) -> list[str]:
    """One ``edgeloop.drift.detected`` event per drifted batch (automations can react to it)."""
    ids = []
    for b in drifted:
        event = emit_event(
            event=DRIFT_EVENT,
            resource=project_resource(settings),
            payload={
                "batch_id": b.batch_id,
                "batch_index": b.seq,
                "drift_share": b.drift_share,
                "drifted_features": b.drifted_features,
                "n_features": b.n_features,
                "mlflow_run_id": b.run_id,
            },
        )
        if event is not None:
            ids.append(str(event.id))
    return ids


def retrain_reason(drifted: list[BatchMonitoring]) -> str:
    """``drift: batch <id> (<n> of <m> features: a, b, c)`` for the newest drifted batch."""
    b = drifted[-1]
    names = ", ".join(b.drifted_features[:5]) + (
        f", +{len(b.drifted_features) - 5} more" if len(b.drifted_features) > 5 else ""
    )
    reason = f"drift: batch {b.batch_id} ({b.n_drifted} of {b.n_features} features: {names})"
    if len(drifted) > 1:
        reason += f"; {len(drifted) - 1} more drifted batch(es) in this run"
    return reason


def _num(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _artifacts(
    summary: MonitorSummary,
    dashboard: str,
    retrain: dict[str, Any] | None,
    regression: bool = False,
) -> None:
    rows = [
        {
            "batch": b.batch_id,
            "drift share": round(b.drift_share, 3),
            "drifted features": ", ".join(b.drifted_features[:10])
            + (" ..." if len(b.drifted_features) > 10 else ""),
            "mean confidence": _num(b.mean_confidence),
            # Regression batches carry errors (MAE, R² on labeled rows) instead of accuracy.
            **(
                {
                    "champion MAE": _num(b.errors.get("champion_mae")),
                    "champion R²": _num(b.errors.get("champion_r2")),
                    "challenger MAE": _num(b.errors.get("challenger_mae")),
                }
                if regression
                else {
                    "champion accuracy": _num(b.champion_accuracy),
                    "challenger accuracy": _num(b.challenger_accuracy),
                }
            ),
        }
        for b in summary.monitored
    ]
    if rows:
        create_table_artifact(
            key="monitor-summary",
            table=rows,
            description=f"{len(summary.drifted)} of {len(rows)} batch(es) drifted",
        )
    lines = [
        f"# Monitoring: {len(summary.monitored)} batch(es), {len(summary.drifted)} drifted",
        "",
    ]
    for b in summary.monitored:
        verdict = "**DRIFT**" if b.drifted else "no drift"
        lines.append(
            f"- `{b.batch_id}`: {verdict}, {b.n_drifted} of {b.n_features} features"
            f" ({', '.join(b.drifted_features[:8]) or 'none'}), prediction PSI"
            f" {b.prediction_psi:.3f}, MLflow run `{b.run_id}`"
        )
    if summary.already_monitored:
        lines.append(f"- already monitored (skipped): {len(summary.already_monitored)}")
    if summary.not_scored:
        lines.append(f"- not scored yet: {', '.join(summary.not_scored)}")
    if retrain is not None:
        lines += ["", f"Retrain requested ({retrain.get('mode')}): {retrain.get('reason')}"]
        if retrain.get("error"):
            lines.append(f"- it could not start: {retrain['error']}")
    lines += ["", f"Dashboard: `{dashboard}`"]
    create_markdown_artifact(key="monitor-report", markdown="\n".join(lines))
    create_link_artifact(
        key="monitor-dashboard",
        link=Path(dashboard).as_uri(),
        link_text="monitoring dashboard",
        description="Drift, confidence, accuracy and annotation backlog over every batch",
    )


@flow(name="monitor")
def monitor(
    batch_ids: list[str] | None = None,
    retrain_on_drift: bool = True,
    config: str = "edgeloop.yaml",
) -> dict[str, Any]:
    """Monitor scored batches: drift against the reference, confidence, accuracy, dashboard.

    Args:
        batch_ids: Batches to monitor (ids as in ``edgeloop status``); empty = every batch not
            monitored yet.
        retrain_on_drift: Request a retrain when a batch drifted (also needs
            ``monitoring.retrain_on_drift`` in the config).
        config: Path of the edgeloop.yaml to use.
    """
    settings = load_settings(config)
    summary = monitor_task(settings, batch_ids or None)
    dashboard = dashboard_task(settings, summary.latest_run_id)
    result = summary.to_dict()
    result["dashboard"] = dashboard
    result["events"], result["retrain"] = [], None
    drifted = summary.drifted
    if drifted and retrain_on_drift and settings.monitoring.retrain_on_drift:
        result["events"] = emit_task(settings, drifted)
        reason = retrain_reason(drifted)
        try:
            result["retrain"] = request_retrain(settings, reason, config=config)
        except EdgeloopError as exc:
            # The monitoring itself is logged; say why the retrain did not start, do not hide it.
            get_run_logger().warning("retrain on drift could not start: %s", exc)
            result["retrain"] = {"mode": "failed", "reason": reason, "error": str(exc)}
    # The monitor runs on a schedule: it is also where a backlog that stopped moving is seen.
    result["sla_alert"] = announce_sla(settings, sla(settings))
    _artifacts(summary, dashboard, result["retrain"], settings.data_schema.is_regression)
    return result
