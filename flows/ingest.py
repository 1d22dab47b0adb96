"""Prefect flow: validate batch files, file them (dataset or quarantine), version, record.

Thin by design: each task wraps one step from ``pipelines``/``edgeloop``; the flow adds
retries on the store-facing steps, Prefect artifacts with the summary, and the gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from edgeloop._internal import faults
from edgeloop.core.config import Settings, load_settings
from edgeloop.core.errors import ValidationGateError
from edgeloop.data.ingest import Assessment, BatchOutcome, assess, file_batch, log_run
from edgeloop.data.lock import change, data_lock, recover, say
from edgeloop.data.readers import load_suite
from edgeloop.data.store import DataStore
from edgeloop.data.versioning import DataVersioner
from flows._common import flow_run_url, version_data


@task(name="validate-batch", cache_policy=NO_CACHE)
def validate_batch(path: str, settings: Settings, suite: dict[str, Any]) -> Assessment:
    """Read the file and run the suite (real GX); no store is touched."""
    return assess(path, settings, DataStore(settings), suite)


@task(name="file-batch", cache_policy=NO_CACHE)
def store_batch(assessment: Assessment, settings: Settings) -> BatchOutcome:
    """Accepted rows to the dataset, the rest (and the original) to quarantine, ledger entry."""
    return file_batch(assessment, DataStore(settings))


@task(name="record-in-mlflow", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_run(
    settings: Settings, outcome: BatchOutcome, assessment: Assessment, data_version: str
) -> str:
    """One MLflow run per batch: statistics, report, DVC version, git commit, flow-run id."""
    return log_run(
        settings,
        outcome,
        assessment,
        data_version=data_version,
        flow_run_id=str(flow_run.id or ""),
        flow_run_url=flow_run_url(),
    )


def _summary_artifacts(outcomes: list[BatchOutcome], version: str) -> None:
    rows: list[dict[str, Any]] = [
        {
            "batch": o.source,
            "status": o.status,
            "rows": o.rows,
            "accepted": o.rows_accepted,
            "quarantined": o.rows_quarantined,
            "warnings": o.soft_expectations_failed,
            "reason": o.reason[:300],
        }
        for o in outcomes
    ]
    create_table_artifact(key="ingest-summary", table=rows, description=f"data version {version}")
    lines = [f"# Ingest: {len(outcomes)} batch(es), data version `{version}`", ""]
    for o in outcomes:
        lines.append(f"## `{o.source}`: **{o.status}**")
        lines.append(
            f"- rows: {o.rows} in, {o.rows_accepted} accepted, {o.rows_quarantined} quarantined"
        )
        if o.reason:
            lines.append(f"- reason: {o.reason}")
        for f in o.failed[:10]:
            lines.append(f"  - {f}")
        if o.warnings:
            lines.append(
                f"- warnings (rows accepted): {o.soft_expectations_failed} soft expectation(s),"
                f" {o.rows_with_warnings} row(s)"
            )
            lines += [f"  - {w}" for w in o.warnings[:10]]
        if o.report_path:
            lines.append(f"- report: `{o.report_path}`")
        lines.append("")
    create_markdown_artifact(key="ingest-validation", markdown="\n".join(lines))


def _recover(settings: Settings) -> None:
    """Roll back or finish what a killed command left in data/ (and say so)."""
    found = recover(settings)
    say(found.notes)
    j = found.committed
    if j and j.get("info", {}).get("outcome") and j["step"] != "logged":
        # A batch versioned without its MLflow run: record it now (without the report).
        d = j["info"]["outcome"]
        o = BatchOutcome(**d)
        record_run(settings, o, Assessment(Path(o.source), o.sha256, None, None), j["version"])
        say([f"recovered: recorded the MLflow run of batch {o.batch_id} ({o.source})"])


@flow(name="ingest", log_prints=True)
def ingest(paths: list[str], config: str = "edgeloop.yaml", wait: bool = False) -> Any:
    """Validate and ingest batch files (CSV or Parquet) into the versioned dataset.

    Holds the data lock (``wait``: queue behind another writer instead of refusing) and first
    rolls back or finishes what a killed command left. Raises ``ValidationGateError`` (after
    filing every batch) when any rows were quarantined.
    """
    settings = load_settings(config)
    suite = load_suite(settings.suite_path())
    outcomes: list[BatchOutcome] = []
    with data_lock(settings, "ingest", wait=wait):
        _recover(settings)
        version = DataVersioner(settings).version() or ""
        for path in paths:
            assessment = validate_batch(str(Path(path).resolve()), settings, suite)
            faults.point("ingest:validated")
            with change(settings, f"ingest {Path(path).name}") as ch:
                outcome = store_batch(assessment, settings)
                ch.mark("recorded", outcome=outcome.to_dict())
                if outcome.status != "duplicate":
                    version = version_data(settings)
                    ch.mark("versioned")
                run_id = record_run(settings, outcome, assessment, version)
                ch.mark("logged")
                faults.point("ingest:mlflow-logged")
            outcome = BatchOutcome(
                **{**outcome.to_dict(), "data_version": version, "mlflow_run_id": run_id}
            )
            print(f"{outcome.source}: {outcome.status} ({outcome.reason})")
            for w in outcome.warnings[:10]:
                print(f"  warning (rows accepted): {w}")
            outcomes.append(outcome)
    _summary_artifacts(outcomes, version)
    results = [o.to_dict() for o in outcomes]
    bad = [o for o in outcomes if o.needs_attention]
    if bad:
        names = ", ".join(f"{o.source} ({o.status}: {o.reason})" for o in bad)
        message = f"{len(bad)} batch(es) quarantined rows: {names}"
        # A Failed state (not a raise) marks the run failed in the UI without a traceback in
        # the log; calling the flow still raises the gate error, which carries the results.
        return Failed(message=message, data=ValidationGateError(message, results))
    return results
