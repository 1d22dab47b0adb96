"""Prefect flow: take labels back, version them, track the SLA, retrain on label volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from edgeloop._internal import faults
from edgeloop.batch.annotation import LabelImport, import_labels, labels_since_last_retrain, sla
from edgeloop.batch.label_quality import LabelQuality, check_label_quality
from edgeloop.core import keys
from edgeloop.core.config import Settings, load_settings
from edgeloop.core.errors import EdgeloopError, LabelGateError, PromotionGateError
from edgeloop.core.keys import CHALLENGER
from edgeloop.data.lock import change, data_lock, recover, say
from edgeloop.data.versioning import DataVersioner, git_info
from edgeloop.models.promotion import promote
from edgeloop.tracking.registry import Registry
from edgeloop.tracking.store import ensure_experiment
from flows._common import announce_sla, flow_run_url, version_data
from flows.retrain import request_retrain
from flows.shadow_evaluate import shadow_evaluate_flow


@task(name="import-labels", cache_policy=NO_CACHE)
def import_task(settings: Settings, path: str) -> LabelImport:
    """Check the export with the labels suite; store good labels, report bad ones."""
    return import_labels(settings, Path(path))


@task(name="check-label-quality", cache_policy=NO_CACHE)
def label_quality_task(settings: Settings) -> dict[str, Any]:
    """Score every labeled row for label issues; write the suspects (never fails the import)."""
    try:
        found = check_label_quality(settings)
    except EdgeloopError as exc:  # e.g. the pipeline cannot fit these rows: say so, go on
        found = LabelQuality(0, 0, 0, 0, settings.annotation.suspect_folds, skipped=str(exc))
    say([found.summary()])
    return found.to_dict()


@task(name="record-labels", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def record_task(
    settings: Settings, result: dict[str, Any], version: str, backlog: dict[str, Any]
) -> str:
    """One MLflow run per import in the data experiment: counts, SLA, the new data version."""
    exp = ensure_experiment(settings, keys.DATA_EXPERIMENT)
    quality = result.get("label_quality") or {}
    with mlflow.start_run(experiment_id=exp, run_name=f"labels {result['source']}") as run:
        mlflow.set_tags(
            {
                keys.TAG_KIND: keys.KIND_LABELS,
                keys.TAG_DATA_VERSION: version,
                keys.TAG_GIT_COMMIT: git_info(settings.root).commit,
                keys.TAG_FLOW_RUN_ID: str(flow_run.id or ""),
                keys.TAG_FLOW_RUN_URL: flow_run_url(),
                keys.TAG_NOTE: f"{result['accepted']} labeled edge cases added, {result['rejected']} rejected",
            }
        )
        mlflow.log_metrics(
            {
                "label_rows": result["rows"],
                "labeled_edge_cases_added": result["accepted"],
                "labels_rejected": result["rejected"],
                **{
                    f"label_{k}": float(quality[k])
                    for k in ("suspects", "new_suspects", "confirmed", "scored")
                    if k in quality
                },
                **{
                    f"sla_{k}": float(v)
                    for k, v in backlog.items()
                    if isinstance(v, (int, float)) and v is not None
                },
            }
        )
        mlflow.log_dict(result, "labels/import.json")
        run_id: str = run.info.run_id
        return run_id


def _recover(settings: Settings) -> None:
    """Roll back or finish what a killed command left in data/ (and say so)."""
    found = recover(settings)
    say(found.notes)
    j = found.committed
    if j and j.get("info", {}).get("result") and j["step"] != "logged":
        # Labels versioned without their MLflow run: record it now.
        result = j["info"]["result"]
        record_task(settings, result, j["version"], sla(settings).to_dict())
        say([f"recovered: recorded the MLflow run of the label import {result['source']}"])


def refresh_shadow(settings: Settings, config: str) -> dict[str, Any] | None:
    """The challenger's shadow evaluation on the labels now in (None without a challenger);
    with ``shadow.auto_promote`` a "promote" decision of the rule moves the champion."""
    if CHALLENGER not in Registry(settings).aliases():
        return None
    out: dict[str, Any] = {**shadow_evaluate_flow(config=config), "promoted": False}
    if settings.shadow.auto_promote and out["promote"]:
        try:
            done = promote(
                settings, reason="shadow.auto_promote: the rule's decision on new labels"
            )
            out.update(promoted=True, promotion=done.to_dict())
        except PromotionGateError as exc:  # the evidence changed between the two reads
            out["promotion"] = exc.result.to_dict()
    return out


@flow(name="annotate-import")
def annotate_import(
    path: str, retrain_on_volume: bool = True, config: str = "edgeloop.yaml", wait: bool = False
) -> Any:
    """Import annotators' labels (Label Studio JSON export or CSV) into the dataset.

    Holds the data lock and first rolls back or finishes what a killed command left.

    Args:
        path: The export file.
        retrain_on_volume: Start a retrain when enough new labels arrived (annotation.retrain_after_labels).
        config: Path of the edgeloop.yaml to use.
        wait: Queue behind another command writing the data instead of refusing.
    """
    settings = load_settings(config)
    with data_lock(settings, "annotate import", wait=wait):
        _recover(settings)
        with change(settings, f"annotate import {Path(path).name}") as ch:
            result = import_task(settings, path).to_dict()
            if result["accepted"]:
                result["label_quality"] = label_quality_task(settings)
            ch.mark("recorded", result=result)
            version = DataVersioner(settings).version() or ""
            # Rejected rows are kept too (data/labels/rejected/): either way data/ changed.
            if result["accepted"] or result["rejected"]:
                version = version_data(settings)
                ch.mark("versioned")
            current = sla(settings)
            backlog = current.to_dict()
            result["data_version"], result["sla"] = version, backlog
            result["mlflow_run_id"] = record_task(settings, result, version, backlog)
            ch.mark("logged")
            faults.point("labels:mlflow-logged")
    result["sla_alert"] = announce_sla(settings, current)
    if result.get("duplicate_of"):
        say([f"{result['source']}: already imported as {result['duplicate_of']}: no labels added"])
    if result["accepted"]:
        # Before a label-volume retrain may replace the challenger, its evidence is brought up
        # to date with these labels (and acted on with shadow.auto_promote).
        result["shadow"] = refresh_shadow(settings, config)
    n = settings.annotation.retrain_after_labels
    if retrain_on_volume and n and result["accepted"]:
        new = labels_since_last_retrain(settings)
        result["labels_since_retrain"] = new
        if new >= n:
            # Through the retrain deployment when one is served, else as a subflow.
            started = request_retrain(
                settings, f"label volume: {new} new labels since the last retrain", config=config
            )
            result["retrain"] = started.get("result", started)
    create_markdown_artifact(
        key="label-import",
        markdown=(
            f"# Labels from `{result['source']}`\n\n- accepted: {result['accepted']}\n- rejected: {result['rejected']}"
            f"\n- data version: `{version}`\n- open tasks: {backlog['open']}, within SLA: {backlog['within_sla_share']}\n"
        ),
    )
    if result["rejected"]:
        msg = f"{result['rejected']} label row(s) rejected ({'; '.join(result['failed'])}); report: {result['report']}"
        return Failed(message=msg, data=LabelGateError(msg, result))
    return result
