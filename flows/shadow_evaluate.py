"""Prefect flow: compare champion and challenger on shadow-scored, labeled rows."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from edgeloop.batch.scoring import score_batches
from edgeloop.batch.shadow import ShadowReport, shadow_evaluate
from edgeloop.core.config import Settings, load_settings


@task(name="score-batches", cache_policy=NO_CACHE)
def score_task(settings: Settings) -> list[dict[str, Any]]:
    """Bring every batch's shadow scores up to date first."""
    return score_batches(settings)


@task(name="compare-models", cache_policy=NO_CACHE)
def compare_task(settings: Settings) -> ShadowReport:
    """The paired comparison, the promotion rule, the MLflow run."""
    return shadow_evaluate(settings)


@flow(name="shadow-evaluate")
def shadow_evaluate_flow(config: str = "edgeloop.yaml") -> dict[str, Any]:
    """Evaluate the challenger against the champion on the same labeled rows.

    Args:
        config: Path of the edgeloop.yaml to use.
    """
    settings = load_settings(config)
    score_task(settings)
    report = compare_task(settings)
    c = report.comparison
    create_markdown_artifact(
        key="shadow-evaluation",
        markdown=(
            f"# Shadow: v{report.challenger} vs champion v{report.champion}\n\n"
            f"**{'promote' if report.promote else 'keep champion'}** — {report.summary}\n\n"
            f"- rows: {c['n']}, agreement: {c['agreement']}\n- MLflow run: `{report.run_id}`\n"
        ),
    )
    return report.to_dict()
