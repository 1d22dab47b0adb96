"""The weekly review's typed result: ``Review`` and one frozen dataclass per section row.

Gathered by ``edgeloop.reports.gather`` (through ``review.build_review``), rendered by
``edgeloop.reports.render``. Timestamps are ISO strings in UTC (``reports.timestamps``).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeloop.reports import render
from edgeloop.tracking.registry import AliasEvent


@dataclass(frozen=True)
class Retrain:
    """One retrain run: its decision and holdout metrics beside the champion's."""

    at: str
    reason: str
    decision: str
    version: str
    accuracy: float | None
    macro_f1: float | None
    champion_accuracy: float | None
    champion_macro_f1: float | None
    train_rows: float | None
    data_version: str
    failed_gates: tuple[str, ...]
    run_id: str
    mlflow_url: str
    flow_run_url: str
    #: Regression: the holdout R², MAE and RMSE, the champion's on the same rows.
    r2: float | None = None
    mae: float | None = None
    rmse: float | None = None
    champion_r2: float | None = None
    champion_mae: float | None = None


@dataclass(frozen=True)
class MonitoredBatch:
    """The latest finished monitoring run of one batch (metric names: ``monitor.METRICS``)."""

    batch_id: str
    batch_index: int | None
    at: str
    rows: float | None
    labeled_rows: float | None
    drift_share: float | None
    n_drifted_features: float | None
    prediction_psi: float | None
    mean_confidence: float | None
    low_confidence_share: float | None
    champion_accuracy: float | None
    challenger_accuracy: float | None
    agreement: float | None
    drifted: bool
    drifted_features: tuple[str, ...]
    #: The three highest per-feature PSI values, highest first.
    top_psi: tuple[tuple[str, float], ...]
    run_id: str
    mlflow_url: str
    flow_run_url: str
    #: Label-free accuracy estimates (CBPE); ``calibrated`` False: raw confidence (biased).
    cbpe_accuracy_champion: float | None = None
    cbpe_accuracy_challenger: float | None = None
    cbpe_calibrated_champion: bool | None = None
    #: What the estimates suggest (ask for labels, a likely regression): they never promote.
    cbpe_flags: tuple[str, ...] = ()
    #: Regression, on the batch's labeled rows (``monitor.REGRESSION_METRICS``).
    champion_mae: float | None = None
    champion_rmse: float | None = None
    champion_r2: float | None = None
    challenger_mae: float | None = None
    challenger_r2: float | None = None


@dataclass(frozen=True)
class QuarantinedBatch:
    """A ledger entry that put rows in quarantine, with the ingest run that filed it."""

    batch_id: str
    source: str
    status: str
    at: str
    rows: int
    rows_quarantined: int
    reason: str
    report: str
    run_id: str
    mlflow_url: str
    flow_run_url: str


@dataclass(frozen=True)
class LabelImport:
    """One labels run: what one answers file added."""

    at: str
    source: str
    labels_added: float | None
    labels_rejected: float | None
    run_id: str
    mlflow_url: str
    flow_run_url: str


@dataclass(frozen=True)
class ShadowEvaluation:
    """One shadow evaluation of the challenger against the champion."""

    at: str
    champion_version: str
    challenger_version: str
    decision: str
    summary: str
    metric: str
    n: float | None
    champion: float | None
    challenger: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    agreement: float | None
    mcnemar_p: float | None
    run_id: str
    mlflow_url: str
    flow_run_url: str
    #: ``promote``, ``keep`` or ``need_more`` (``decision`` says need_more as "keep").
    state: str = ""
    n_rows: float | None = None
    #: The confidence sequence on the accuracy delta (what the rule decides on).
    cs_low: float | None = None
    cs_high: float | None = None
    labels_needed: float | None = None
    days_needed: float | None = None


@dataclass(frozen=True)
class AliasMove(AliasEvent):
    """One registry alias move and what it means for the people reading the review."""

    kind: str = field(kw_only=True)
    mlflow_url: str = field(kw_only=True)


@dataclass(frozen=True)
class Review:
    """What happened in one window; JSON-ready (``to_dict``), readable (markdown, HTML)."""

    project: str
    start: str
    end: str
    days: int
    generated_at: str
    tracking_uri: str
    #: How to open a run locator when the store has no web UI (empty on a tracking server).
    mlflow_hint: str = ""
    #: Champion, challenger, previous champion now (``models_status``) with their run links.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    retrains: list[Retrain] = field(default_factory=list)
    monitoring: list[MonitoredBatch] = field(default_factory=list)
    #: False when the monitoring experiment does not exist (monitoring never ran here).
    monitoring_enabled: bool = False
    drift_share_threshold: float = 0.0
    quarantined: list[QuarantinedBatch] = field(default_factory=list)
    #: The SLA at the window's end (``annotation.sla``) and what was surfaced/labeled in it.
    annotation: dict[str, Any] = field(default_factory=dict)
    label_imports: list[LabelImport] = field(default_factory=list)
    shadow: list[ShadowEvaluation] = field(default_factory=list)
    alias_events: list[AliasMove] = field(default_factory=list)
    #: The demo's frozen-vs-loop-vs-oracle measure (``reports/loop-effect.json``), if written.
    loop_effect: dict[str, Any] | None = None
    #: ``schema.task``: a regression review shows R², MAE and RMSE instead of accuracy/macro-F1.
    task: str = "classification"

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    def counts(self) -> dict[str, int]:
        """The headline numbers (also the metrics of the review's MLflow run)."""
        decisions = Counter(r.decision for r in self.retrains)
        kinds = Counter(e.kind for e in self.alias_events)
        return {
            "retrains": len(self.retrains),
            "retrains_registered": decisions["registered"],
            "retrains_rejected": decisions["rejected"],
            "batches_monitored": len(self.monitoring),
            "batches_drifted": sum(1 for m in self.monitoring if m.drifted),
            "quarantined_batches": len(self.quarantined),
            "rows_quarantined": sum(q.rows_quarantined for q in self.quarantined),
            "annotation_open": int(self.annotation.get("open") or 0),
            "annotation_surfaced": int(self.annotation.get("surfaced_in_window") or 0),
            "labels_imported": sum(int(i.labels_added or 0) for i in self.label_imports),
            "shadow_evaluations": len(self.shadow),
            "alias_moves": len(self.alias_events),
            "promotions": kinds["promotion"],
            "rollbacks": kinds["rollback"],
        }

    def to_dict(self) -> dict[str, Any]:
        return {**_json_safe(asdict(self)), "counts": self.counts()}

    @property
    def date(self) -> str:
        """The window's last day (names the report files)."""
        return self.end[:10]

    def to_markdown(self) -> str:
        return render.to_markdown(self)

    def to_html(self) -> str:
        """One self-contained page: the markdown rendered, charts inlined as base64 PNGs."""
        return render.to_html(self)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
