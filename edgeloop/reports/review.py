"""The weekly review: one report of what the loop did in a time window, with links to the runs.

``build_review(settings, now=..., days=7)`` gathers, for the window ``[now - days, now]``:
retrain runs with their decision and metrics (and the champion and challenger now), monitoring
runs (drift per batch), quarantined batches, the annotation backlog and its SLA, shadow
evaluations, and alias moves (promotions, rollbacks). Every item carries its MLflow run locator
(``tracking.run_url``) and, where the run recorded one, its Prefect flow-run URL.

Reads only: no experiment is created and nothing is written until ``write_review`` /
``log_review`` (used by ``flows/weekly_review.py``). The result is ``reports.result.Review``,
its reads are in ``reports.gather``, its markdown and HTML in ``reports.render``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.layout import Layout
from edgeloop.reports import gather
from edgeloop.reports.render import NOTHING
from edgeloop.reports.result import Review
from edgeloop.reports.status import read_loop_effect
from edgeloop.reports.timestamps import iso, utc
from edgeloop.tracking.store import configure, ensure_experiment, is_embedded, tracking_uri

__all__ = ["NOTHING", "Review", "build_review", "log_review", "report_paths", "write_review"]


def build_review(settings: Settings, *, now: datetime | None = None, days: int = 7) -> Review:
    """Gather the window ``[now - days, now]`` from MLflow, the registry and the data folder."""
    if days < 1:
        raise EdgeloopError(f"the review window must be at least 1 day (got {days})")
    end = utc(now or datetime.now(UTC))
    start = end - timedelta(days=days)
    uri = configure(settings)
    client = MlflowClient()
    hint = ""
    if is_embedded(settings):
        hint = f"mlflow ui --backend-store-uri {tracking_uri(settings)} --host 127.0.0.1"
    generated_at = iso(datetime.now(UTC))
    window = gather.Window(settings, client, start, end)
    models = gather.models(settings, client)
    retrains = gather.retrains(window)
    monitoring_enabled, monitoring = gather.monitoring(window)
    data_runs = window.runs(keys.DATA_EXPERIMENT)
    quarantined = gather.quarantined(window, data_runs)
    annotation, label_imports = gather.annotation(window, data_runs)
    return Review(
        project=settings.project,
        start=iso(start),
        end=iso(end),
        days=days,
        generated_at=generated_at,
        tracking_uri=uri,
        mlflow_hint=hint,
        drift_share_threshold=settings.monitoring.drift_share_threshold,
        models=models,
        retrains=retrains,
        monitoring=monitoring,
        monitoring_enabled=monitoring_enabled,
        quarantined=quarantined,
        annotation=annotation,
        label_imports=label_imports,
        shadow=gather.shadow(window),
        alias_events=gather.alias_events(window),
        loop_effect=read_loop_effect(settings),
        task=settings.data_schema.task,
    )


def report_paths(settings: Settings, review: Review) -> dict[str, Path]:
    """``<reports_dir>/weekly-<YYYY-MM-DD>.md`` and ``.html`` (relative to the project root)."""
    layout = Layout.of(settings)
    return {
        "markdown": layout.weekly_review(review.date, ".md"),
        "html": layout.weekly_review(review.date, ".html"),
    }


def write_review(settings: Settings, review: Review) -> dict[str, Path]:
    """Write the markdown and the HTML report; returns their paths."""
    paths = report_paths(settings, review)
    paths["markdown"].parent.mkdir(parents=True, exist_ok=True)
    paths["markdown"].write_text(review.to_markdown(), encoding="utf-8")
    paths["html"].write_text(review.to_html(), encoding="utf-8")
    return paths


def log_review(
    settings: Settings,
    review: Review,
    paths: dict[str, str],
    *,
    flow_run_id: str = "",
    flow_run_url: str = "",
) -> str:
    """One MLflow run in ``<project>-reviews``: both files, the counts as metrics; its id."""
    exp = ensure_experiment(settings, keys.REVIEW_EXPERIMENT)
    counts = review.counts()
    with mlflow.start_run(experiment_id=exp, run_name=f"weekly review {review.date}") as run:
        mlflow.set_tags(
            {
                keys.TAG_KIND: keys.KIND_REVIEW,
                keys.TAG_WINDOW_START: review.start,
                keys.TAG_WINDOW_END: review.end,
                keys.TAG_FLOW_RUN_ID: flow_run_id,
                keys.TAG_FLOW_RUN_URL: flow_run_url,
                keys.TAG_NOTE: (
                    f"{counts['retrains']} retrain(s), {counts['batches_drifted']} drifted "
                    f"batch(es), {counts['quarantined_batches']} quarantined, "
                    f"{counts['promotions']} promotion(s), {counts['rollbacks']} rollback(s)"
                ),
            }
        )
        mlflow.log_params({"days": review.days})
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_path="review")
        return str(run.info.run_id)
