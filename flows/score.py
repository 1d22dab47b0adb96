"""Prefect flow: score accepted batches with the champion and, in shadow, the challenger."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from edgeloop.config import Settings, load_settings
from edgeloop.shadow import score_batches


@task(name="score-batches", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def score_task(settings: Settings, batch_ids: list[str] | None) -> list[dict[str, Any]]:
    """Write one score file per (batch, model version) not scored yet."""
    return score_batches(settings, batch_ids)


@task(name="version-data", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def version_task(settings: Settings) -> str:
    """``dvc add data`` + push after the queue grew."""
    from edgeloop.versioning import DataVersioner

    return DataVersioner(settings).commit()


@task(name="surface-edge-cases", cache_policy=NO_CACHE)
def surface_task(settings: Settings) -> list[dict[str, Any]]:
    """Queue the rows worth labeling from every newly scored batch."""
    from edgeloop.annotation import surface

    return surface(settings)


@flow(name="score")
def score(
    batch_ids: list[str] | None = None, config: str = "edgeloop.yaml"
) -> list[dict[str, Any]]:
    """Score accepted batches (all, or ``batch_ids``) with champion and challenger.

    Args:
        batch_ids: Batches to score (ids as in ``edgeloop status``); empty = every batch.
        config: Path of the edgeloop.yaml to use.
    """
    settings = load_settings(config)
    written = score_task(settings, batch_ids or None)
    if written:
        create_table_artifact(key="scored-batches", table=written, description="new score files")
    surfaced = surface_task(settings)
    if surfaced:
        # The queue lives in data/: version it, so data.dvc keeps describing data/.
        version_task(settings)
        create_table_artifact(
            key="edge-cases", table=surfaced, description="edge cases queued for annotation"
        )
    return written
