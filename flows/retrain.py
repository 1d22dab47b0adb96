"""Prefect flow: retrain on the current dataset version, gate, register, move the alias.

Thin: each task wraps one step of ``edgeloop.models.training`` / ``edgeloop.tracking.registry``. The flow
holds the one-retrain-at-a-time lock, skips work whose inputs did not change (cache), and ends
Failed with the gate result when the candidate is rejected.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Failed

from edgeloop.core import keys
from edgeloop.core.config import Settings, configured_prefect_api_url, load_settings
from edgeloop.core.errors import GateError, TrainingGateError
from edgeloop.core.keys import CHALLENGER, CHAMPION
from edgeloop.models import fit_worker
from edgeloop.models.cache import (
    RetrainSummary,
    cache_key,
    cached_summary,
    close_orphan_runs,
    current_dataset,
    dataset_version,
    find_cached,
    retrain_lock,
)
from edgeloop.models.fit_worker import FitWorker
from edgeloop.models.training import Trained, log_retrain, train_and_evaluate
from edgeloop.tracking.registry import Registry
from flows._common import flow_run_url

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun


@task(name="recover-registry", cache_policy=NO_CACHE)
def recover(settings: Settings) -> list[str]:
    """Clean up after an interrupted retrain (orphan runs, pending versions, unrecorded moves)."""
    return close_orphan_runs(settings) + Registry(settings).recover()


@task(name="load-dataset", cache_policy=NO_CACHE)
def load_dataset(settings: Settings) -> tuple[str, Any]:
    """The dataset at the DVC version ``data.dvc`` names."""
    return current_dataset(settings)


@task(name="train-evaluate", cache_policy=NO_CACHE)
def train(settings: Settings, dataset: Any, max_rows: int, fitting: FitWorker | None) -> Trained:
    """The candidate (fitted by its worker); it and the champion evaluated on the fixed holdout."""
    reg = Registry(settings)
    champion = reg.load(CHAMPION) if CHAMPION in reg.aliases() else None
    return train_and_evaluate(
        settings, dataset, max_rows=max_rows, champion=champion, fitting=fitting
    )


@task(name="log-to-mlflow", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_run(settings: Settings, trained: Trained, **kw: Any) -> tuple[str, str]:
    """The MLflow run with metrics, plots, lineage and the model."""
    return log_retrain(settings, trained, **kw)


@task(name="register", cache_policy=NO_CACHE)
def register(settings: Settings, model_uri: str, run_id: str, reason: str) -> tuple[str, str]:
    """New registry version; ``champion`` if there is none yet, else ``challenger``."""
    reg = Registry(settings)
    alias = CHALLENGER if CHAMPION in reg.aliases() else CHAMPION
    version, _ = reg.register(model_uri, run_id, alias, reason)
    reg.client.set_tag(run_id, keys.TAG_REGISTERED_VERSION, version)
    reg.client.set_tag(run_id, keys.TAG_DECISION, "registered")
    return version, alias


def _artifacts(summary: RetrainSummary) -> None:
    rows = [
        {"metric": k, "candidate": round(v, 4), "champion": summary.champion_metrics.get(k)}
        for k, v in summary.metrics.items()
        if k in ("accuracy", "macro_f1", "weighted_f1", "r2", "mae", "rmse", "rows", "train_rows")
        or k.startswith("slice_")
    ]
    create_table_artifact(key="retrain-metrics", table=rows, description=summary.message)
    lines = [f"# Retrain: **{summary.status}**", "", summary.message, ""]
    for c in summary.gates.get("checks", []):
        lines.append(f"- {'✅' if c['passed'] else '❌'} {c['detail']}")
    lines += ["", f"- data version: `{summary.data_version}`", f"- MLflow run: `{summary.run_id}`"]
    create_markdown_artifact(key="retrain-decision", markdown="\n".join(lines))


@flow(name="retrain")
def retrain(
    reason: str = "manual",
    force: bool = False,
    max_rows: int = 0,
    wait: bool = False,
    config: str = "edgeloop.yaml",
) -> Any:
    """Retrain on the current dataset version and register the result if it passes the gates.

    Args:
        reason: Why this retrain runs (recorded on the MLflow run and the alias history).
        force: Retrain even when data, config and training code are unchanged.
        max_rows: Train on at most this many labeled rows (0 = all).
        wait: Queue behind a running retrain instead of failing at once.
        config: Path of the edgeloop.yaml to use.
    """
    settings = load_settings(config)
    started = time.perf_counter()
    with retrain_lock(settings, wait=wait):
        # Recovery runs beside the cache lookup and the data read (it touches neither: it
        # closes orphan runs and finishes alias moves); it is done before the champion is
        # loaded for the comparison or anything is registered.
        recovering = recover.submit(settings)
        # The cache is asked before the data is loaded: a hit costs no read of the dataset.
        data_version = dataset_version(settings)
        key = cache_key(settings, data_version, max_rows)
        if not force:
            hit = find_cached(settings, key)
            if hit is not None:
                return _cached(hit, data_version, key, recovering.result())
        # The fit starts now in its own process (or was started by the CLI for these inputs)
        # and runs while the data is loaded here for the evaluation and the logging; small
        # data is fitted here (fit_worker.WORKER_FROM_BYTES).
        fitting: FitWorker | None = fit_worker.start(settings, data_version, key, max_rows)
        try:
            loaded_version, dataset = load_dataset(settings)
            notes = recovering.result()
            if loaded_version != data_version:  # an ingest versioned new data in between
                data_version, key = loaded_version, cache_key(settings, loaded_version, max_rows)
                if fitting is not None:
                    fitting.cancel()
                fitting = None  # a worker would fit the older version: fit here instead
            trained = train(settings, dataset, max_rows, fitting)
        finally:
            if fitting is not None:
                fitting.cancel()
        run_id, model_uri = log_run(
            settings,
            trained,
            data_version=data_version,
            key=key,
            reason=reason,
            force=force,
            max_rows=max_rows,
            flow_run_id=str(flow_run.id or ""),
            flow_run_url=flow_run_url(),
        )
        summary = RetrainSummary(
            status="rejected",
            reason=reason,
            data_version=data_version,
            run_id=run_id,
            metrics=trained.metrics,
            champion_metrics=trained.champion_metrics or {},
            baseline_metrics=trained.baseline_metrics,
            gates=trained.gates.to_dict(),
            cache_key=key,
            timings=trained.seconds,
            notes=notes,
        )
        if not trained.gates.passed:
            Registry(settings).client.set_tag(run_id, keys.TAG_DECISION, "rejected")
            summary.message = f"rejected: {trained.gates.summary()}"
            summary.timings["total_seconds"] = time.perf_counter() - started
            _artifacts(summary)
            return Failed(
                message=summary.message, data=TrainingGateError(summary.message, summary.to_dict())
            )
        version, alias = register(settings, model_uri, run_id, reason)
        summary.status, summary.version, summary.alias = "registered", version, alias
        summary.message = f"registered v{version} as {alias}: {trained.gates.summary()}"
        summary.timings["total_seconds"] = time.perf_counter() - started
        _artifacts(summary)
        return summary.to_dict()


def _cached(hit: Any, data_version: str, key: str, notes: list[str]) -> Any:
    summary = cached_summary(hit, data_version, key, notes)
    if not summary.gates["passed"]:
        return Failed(
            message=summary.message, data=TrainingGateError(summary.message, summary.to_dict())
        )
    return summary.to_dict()


def request_retrain(settings: Settings, reason: str, *, config: str) -> dict[str, Any]:
    """Start a retrain with ``reason``; returns how it was started and its run id or result."""
    if configured_prefect_api_url():
        started = _through_deployment(settings, reason)
        if started is not None:
            return started
    try:
        result = retrain(reason=reason, wait=True, config=config)
    except GateError as exc:
        result = exc.result
    return {"mode": "subflow", "reason": reason, "result": result}


def _through_deployment(settings: Settings, reason: str) -> dict[str, Any] | None:
    name = keys.deployment_name(settings.project, keys.RETRAIN_FLOW)
    try:
        # timeout=0: create the run and return; the served deployment picks it up.
        # Called from sync code, run_deployment returns the FlowRun, not a coroutine.
        run = cast(
            "FlowRun",
            run_deployment(name, parameters={"reason": reason, "wait": True}, timeout=0),
        )
    except ObjectNotFound:
        return None  # a server without our deployments: fall back to a subflow
    return {
        "mode": "deployment",
        "deployment": name,
        "reason": reason,
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
    }
