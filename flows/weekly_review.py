"""Prefect flow: the weekly review report (markdown + HTML), logged to MLflow and as artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from edgeloop.core.config import Settings, load_settings
from edgeloop.reports.review import Review, build_review, log_review, write_review
from flows._common import flow_run_url


@task(name="build-review", cache_policy=NO_CACHE)
def build_task(settings: Settings, days: int) -> tuple[Review, dict[str, str]]:
    """Gather the window from MLflow, the registry and the data folder; write both files."""
    review = build_review(settings, days=days)
    paths = write_review(settings, review)
    return review, {k: str(v) for k, v in paths.items()}


@task(name="log-review", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_task(settings: Settings, review: Review, paths: dict[str, str], url: str) -> str:
    """One MLflow run in ``<project>-reviews`` with both files and the counts."""
    return log_review(settings, review, paths, flow_run_id=str(flow_run.id or ""), flow_run_url=url)


@flow(name="weekly-review")
def weekly_review(days: int = 7, config: str = "edgeloop.yaml") -> dict[str, Any]:
    """Write the review of the last ``days`` days: retrains, drift, quarantine, annotation SLA,
    shadow evaluations, promotions and rollbacks, each linked to its MLflow run.

    Args:
        days: Length of the window, ending now.
        config: Path of the edgeloop.yaml to use.
    """
    settings = load_settings(config)
    review, paths = build_task(settings, days)
    run_id = log_task(settings, review, paths, flow_run_url())
    markdown = review.to_markdown()
    create_markdown_artifact(
        key="weekly-review",
        markdown=markdown,
        description=f"Weekly review {review.start[:10]} to {review.end[:10]}",
    )
    create_link_artifact(
        key="weekly-review-html",
        link=Path(paths["html"]).resolve().as_uri(),
        link_text=Path(paths["html"]).name,
        description="The HTML report with charts (self-contained file)",
    )
    return {
        **paths,
        "mlflow_run_id": run_id,
        "window": {"start": review.start, "end": review.end, "days": review.days},
        "counts": review.counts(),
        "review": review.to_dict(),
    }
