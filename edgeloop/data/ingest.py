"""Ingest steps between the validation stage and the stores (used by ``flows/ingest.py``).

``assess`` decides what happens to one batch file (duplicate, unreadable, accepted, partial,
quarantined); ``file_batch`` stores it; ``log_run`` records it in MLflow. The flow orchestrates.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow

from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import BatchReadError
from edgeloop.data.readers import check_batch_file, file_sha256, read_batch
from edgeloop.data.store import DataStore, LedgerEntry
from edgeloop.data.versioning import git_info
from edgeloop.tracking.store import ensure_experiment
from pipelines.validate import (
    ValidationReport,
    decide,
    normalize_batch,
    numbers_from_text,
    validate_frame,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class BatchOutcome:
    """What ingest did with one file."""

    source: str
    sha256: str
    status: str  # accepted | partial | quarantined | unreadable | duplicate
    rows: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    reason: str = ""
    batch_id: str = ""
    duplicate_of: str = ""
    data_version: str = ""
    report_path: str = ""
    mlflow_run_id: str = ""
    expectations_evaluated: int = 0
    #: Hard failures (the ones that quarantine rows) and soft ones (rows accepted).
    expectations_failed: int = 0
    failed: list[str] = field(default_factory=list)
    soft_expectations_failed: int = 0
    rows_with_warnings: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        """True when rows went to quarantine (now, or the first time this file was seen)."""
        return (
            self.rows_quarantined > 0
            or self.status in ("quarantined", "unreadable")
            or (self.status == "duplicate" and self.reason.startswith("already quarantined"))
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Assessment:
    """A batch read and judged, not yet stored."""

    path: Path
    sha256: str
    frame: pd.DataFrame | None
    report: ValidationReport | None
    duplicate: LedgerEntry | None = None
    unreadable: str = ""
    #: ``frame`` with its numeric columns read as text parsed (what accepted rows are stored as).
    parsed: pd.DataFrame | None = None


def assess(
    path: str | Path, settings: Settings, store: DataStore, suite: dict[str, Any]
) -> Assessment:
    """Hash, dedupe, read and validate one file against ``suite`` under the row policy.

    Raises ``BatchReadError`` for what is not a batch file (nothing is recorded: a rerun with
    the right file or a higher ``validation.max_file_mb`` is not taken for a duplicate)."""
    p = Path(path)
    check_batch_file(p, settings.validation.max_file_mb)
    try:
        sha = file_sha256(p)
    except OSError as exc:
        raise BatchReadError(str(p), f"cannot read file ({exc.strerror or exc})") from None
    earlier = store.find(sha)
    if earlier is not None:
        return Assessment(p, sha, None, None, duplicate=earlier)
    try:
        frame = read_batch(p)
    except BatchReadError as exc:
        return Assessment(p, sha, None, None, unreadable=exc.problem)
    report = validate_frame(normalize_batch(frame, settings.data_schema), suite, batch=p.name)
    parsed = numbers_from_text(frame, suite)
    return Assessment(p, sha, frame, decide(report, settings.validation), parsed=parsed)


def file_batch(assessment: Assessment, store: DataStore) -> BatchOutcome:
    """Store an assessed batch (accepted rows, quarantine) and append it to the ledger."""
    a = assessment
    if a.duplicate is not None:
        d = a.duplicate
        verb = (
            "already quarantined"
            if d.status in ("quarantined", "unreadable")
            else "already ingested"
        )
        return BatchOutcome(
            source=a.path.name,
            sha256=a.sha256,
            status="duplicate",
            reason=f"{verb} as batch {d.batch_id} ({d.source}, {d.status}, {d.at}): no rows added",
            duplicate_of=d.batch_id,
        )
    entry = store.record(
        a.path, a.sha256, a.frame, a.report, unreadable_reason=a.unreadable, accepted=a.parsed
    )
    report_path = next((s for s in entry.stored if "quarantine" in s), "")
    r = a.report
    return BatchOutcome(
        source=a.path.name,
        sha256=a.sha256,
        status=entry.status,
        rows=entry.rows,
        rows_accepted=entry.rows_accepted,
        rows_quarantined=entry.rows_quarantined,
        reason=entry.reason,
        batch_id=entry.batch_id,
        report_path=f"{report_path}/report.md" if report_path else "",
        expectations_evaluated=r.evaluated if r else 0,
        expectations_failed=len(r.errors) if r else 0,
        failed=[f.describe() for f in r.errors] if r else [],
        soft_expectations_failed=len(r.warnings) if r else 0,
        rows_with_warnings=len(r.warning_rows) if r else 0,
        warnings=list(entry.warnings),
    )


def log_run(
    settings: Settings,
    outcome: BatchOutcome,
    assessment: Assessment,
    *,
    data_version: str,
    flow_run_id: str,
    flow_run_url: str,
) -> str:
    """One MLflow run per batch in the data experiment: statistics, tags, the report."""
    exp_id = ensure_experiment(settings, keys.DATA_EXPERIMENT)
    git = git_info(settings.root)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"ingest {outcome.source}") as run:
        mlflow.set_tags(
            {
                keys.TAG_KIND: keys.KIND_INGEST,
                keys.TAG_DECISION: outcome.status,
                keys.TAG_BATCH_ID: outcome.batch_id or outcome.duplicate_of,
                keys.TAG_SOURCE: outcome.source,
                keys.TAG_DATA_VERSION: data_version,
                keys.TAG_GIT_COMMIT: git.commit,
                keys.TAG_GIT_DIRTY: str(git.dirty).lower(),
                keys.TAG_FLOW_RUN_ID: flow_run_id,
                keys.TAG_FLOW_RUN_URL: flow_run_url,
                keys.TAG_NOTE: outcome.reason,
            }
        )
        mlflow.log_params(
            {
                "sha256": outcome.sha256,
                "suite": settings.validation.suite,
                "row_policy": settings.validation.row_policy,
                "max_bad_row_fraction": settings.validation.max_bad_row_fraction,
                keys.TAG_CONFIG_HASH: settings.config_hash(),
            }
        )
        r = assessment.report
        mlflow.log_metrics(
            {
                "rows": outcome.rows,
                "rows_accepted": outcome.rows_accepted,
                "rows_quarantined": outcome.rows_quarantined,
                "expectations_evaluated": outcome.expectations_evaluated,
                "expectations_failed": outcome.expectations_failed,
                "soft_expectations_failed": outcome.soft_expectations_failed,
                "rows_with_warnings": outcome.rows_with_warnings,
                # Every expectation that did not hold, hard or soft (GX's success percent).
                "success_percent": 100.0
                * (
                    1
                    - (outcome.expectations_failed + outcome.soft_expectations_failed)
                    / outcome.expectations_evaluated
                )
                if outcome.expectations_evaluated
                else 0.0,
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            if r is not None:
                (t / "validation_report.md").write_text(r.to_markdown(), encoding="utf-8")
                (t / "validation_report.json").write_text(
                    json.dumps(r.to_dict(), indent=2, default=str), encoding="utf-8"
                )
            (t / "outcome.json").write_text(
                json.dumps(outcome.to_dict(), indent=2), encoding="utf-8"
            )
            mlflow.log_artifacts(str(t), artifact_path="validation")
        pointer = settings.path("data").with_suffix(".dvc")
        if pointer.exists():
            mlflow.log_artifact(str(pointer), artifact_path="lineage")
        run_id: str = run.info.run_id
        return run_id
