"""The weekly review's reads: one function per section, over one window of MLflow runs.

Reads only: no experiment is created (a missing one reads as an empty section).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from edgeloop.batch.annotation import read_labels, read_queue, sla
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.data.store import DataStore
from edgeloop.models.lineage import models_status
from edgeloop.monitoring.monitor import METRICS as MONITORING_METRICS
from edgeloop.reports.result import (
    AliasMove,
    LabelImport,
    MonitoredBatch,
    QuarantinedBatch,
    Retrain,
    ShadowEvaluation,
)
from edgeloop.reports.timestamps import from_ms, iso, parse_time
from edgeloop.tracking.registry import Registry
from edgeloop.tracking.store import experiment_name, run_url

#: The ledger states that put rows in quarantine.
QUARANTINE_STATES = ("quarantined", "partial", "unreadable")
#: What a quarantined batch's row takes from its ledger entry as it is.
_LEDGER_FIELDS = ("batch_id", "source", "status", "rows", "rows_quarantined", "reason")
SHADOW_METRICS = (
    "n",
    "champion",
    "challenger",
    "delta",
    "ci_low",
    "ci_high",
    "agreement",
    "mcnemar_p",
)
#: A regression retrain's holdout figures (``Retrain``'s fields of the same names).
RETRAIN_REGRESSION_METRICS = ("r2", "mae", "rmse", "champion_r2", "champion_mae")
#: A regression batch's errors on its labeled rows (``MonitoredBatch``'s fields).
MONITORING_REGRESSION_METRICS = (
    "champion_mae", "champion_rmse", "champion_r2", "challenger_mae", "challenger_r2",
)  # fmt: skip
#: The sequential rule's figures (runs logged before it have none of them).
SHADOW_RULE_METRICS = ("n_rows", "cs_low", "cs_high", "labels_needed", "days_needed")


@dataclass
class Window:
    """The window and the MLflow reads every section shares."""

    settings: Settings
    client: MlflowClient
    start: datetime
    end: datetime
    _ids: dict[str, str | None] = field(default_factory=dict)

    def contains(self, when: datetime | None) -> bool:
        return when is not None and self.start <= when <= self.end

    def experiment_id(self, kind: str) -> str | None:
        """The experiment's id, or None when it does not exist (a read never creates one)."""
        if kind not in self._ids:
            exp = self.client.get_experiment_by_name(experiment_name(self.settings, kind))
            self._ids[kind] = exp.experiment_id if exp is not None else None
        return self._ids[kind]

    def runs(self, kind: str, extra: str = "") -> list[Run]:
        """Runs of one experiment started in the window, oldest first (every page)."""
        exp = self.experiment_id(kind)
        if exp is None:
            return []
        flt = (
            f"attributes.start_time >= {int(self.start.timestamp() * 1000)} and "
            f"attributes.start_time <= {int(self.end.timestamp() * 1000)}"
        )
        if extra:
            flt += f" and {extra}"
        out: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [exp], flt, order_by=["attributes.start_time ASC"], max_results=1000,
                page_token=token,
            )  # fmt: skip
            out.extend(page)
            token = page.token
            if not token:
                return out

    def url(self, run: Run) -> str:
        return run_url(self.settings, run.info.experiment_id, run.info.run_id)


def models(settings: Settings, client: MlflowClient) -> dict[str, dict[str, Any]]:
    """Champion, challenger, previous champion now (``models_status``), with run links."""
    out: dict[str, dict[str, Any]] = {}
    for alias, info in models_status(settings).items():
        run = client.get_run(info["run_id"])
        out[alias] = {
            **info,
            "mlflow_url": run_url(settings, run.info.experiment_id, info["run_id"]),
            "flow_run_url": _flow_url(run.data.tags),
        }
    return out


def retrains(w: Window) -> list[Retrain]:
    out = []
    for r in w.runs(keys.TRAINING_EXPERIMENT):
        tags, m = r.data.tags, r.data.metrics
        out.append(
            Retrain(
                reason=tags.get(keys.TAG_REASON, ""),
                decision=tags.get(keys.TAG_DECISION, ""),
                version=tags.get(keys.TAG_REGISTERED_VERSION, ""),
                accuracy=_metric(m, "accuracy"),
                macro_f1=_metric(m, "macro_f1"),
                champion_accuracy=_metric(m, "champion_accuracy"),
                champion_macro_f1=_metric(m, "champion_macro_f1"),
                train_rows=_metric(m, "train_rows"),
                data_version=tags.get(keys.TAG_DATA_VERSION, ""),
                # Training tags each gate ``gate.<name>`` (passed/failed), its detail beside it.
                failed_gates=tuple(
                    sorted(
                        k.removeprefix(keys.TAG_GATE_PREFIX)
                        for k, v in tags.items()
                        if k.startswith(keys.TAG_GATE_PREFIX)
                        and not k.endswith(".detail")
                        and v == "failed"
                    )
                ),
                **_refs(w, r),
                **_metrics(m, RETRAIN_REGRESSION_METRICS),
            )
        )
    return out


def monitoring(w: Window) -> tuple[bool, list[MonitoredBatch]]:
    if w.experiment_id(keys.MONITORING_EXPERIMENT) is None:
        return False, []
    # A failed run is retried by the monitor (its batch is monitored again): the finished one
    # counts, and of a batch monitored twice the later run (as the monitor itself reads it).
    latest = {
        r.data.tags.get(keys.TAG_BATCH_ID) or r.info.run_id: r
        for r in w.runs(
            keys.MONITORING_EXPERIMENT,
            f"tags.`{keys.TAG_KIND}` = '{keys.KIND_MONITORING}' and attributes.status = 'FINISHED'",
        )
    }
    out = []
    for r in latest.values():
        tags, m = r.data.tags, r.data.metrics
        psi = {k.removeprefix("psi."): v for k, v in m.items() if k.startswith("psi.")}
        top = sorted(((k, v) for k, v in psi.items() if not math.isnan(v)), key=lambda kv: -kv[1])
        index = tags.get(keys.TAG_BATCH_INDEX, "")
        out.append(
            MonitoredBatch(
                batch_id=tags.get(keys.TAG_BATCH_ID, ""),
                batch_index=int(index) if index.lstrip("-").isdigit() else None,
                **_metrics(m, MONITORING_METRICS),
                drifted=tags.get(keys.TAG_DRIFTED, "").lower() == "true",
                drifted_features=_names(tags.get(keys.TAG_DRIFTED_FEATURES, "")),
                top_psi=tuple(top[:3]),
                **_refs(w, r),
                **_cbpe(m, tags),
                **_metrics(m, MONITORING_REGRESSION_METRICS),
            )
        )
    # Batch order, not run order: a batch monitored again later still sits in its place.
    out.sort(key=lambda x: (x.batch_index is None, x.batch_index or 0, x.at))
    return True, out


def _cbpe(m: dict[str, float], tags: dict[str, str]) -> dict[str, Any]:
    """A monitoring run's label-free estimates (``edgeloop.monitoring.estimates``)."""
    calibrated = m.get(keys.METRIC_CBPE_CALIBRATED_PREFIX + keys.CHAMPION)
    return {
        "cbpe_accuracy_champion": _metric(m, keys.METRIC_CBPE_ACCURACY_CHAMPION),
        "cbpe_accuracy_challenger": _metric(m, keys.METRIC_CBPE_ACCURACY_CHALLENGER),
        "cbpe_calibrated_champion": None if calibrated is None else calibrated > 0,
        "cbpe_flags": tuple(f for f in tags.get(keys.TAG_CBPE_FLAGS, "").split("; ") if f),
    }


def quarantined(w: Window, data_runs: list[Run]) -> list[QuarantinedBatch]:
    # The ingest run that filed each batch (a later duplicate upload has its own run).
    filed = {
        (r.data.tags.get(keys.TAG_BATCH_ID), r.data.tags.get(keys.TAG_DECISION)): r
        for r in data_runs
        if r.data.tags.get(keys.TAG_KIND) == keys.KIND_INGEST
    }
    out = []
    for e in DataStore(w.settings).ledger():
        if e.status not in QUARANTINE_STATES or not w.contains(parse_time(e.at)):
            continue
        run = filed.get((e.batch_id, e.status))
        qdir = next((s for s in e.stored if "quarantine" in s), "")
        out.append(
            QuarantinedBatch(
                **{f: getattr(e, f) for f in _LEDGER_FIELDS},
                report=f"{qdir}/report.md" if qdir else "",
                **(_refs(w, run, at=e.at) if run else _no_run(at=e.at)),
            )
        )
    return out


def annotation(w: Window, data_runs: list[Run]) -> tuple[dict[str, Any], list[LabelImport]]:
    """The SLA as of the window's end, what was surfaced and labeled in it, the imports."""
    backlog = sla(w.settings, now=w.end).to_dict()
    start, end = pd.Timestamp(w.start), pd.Timestamp(w.end)

    def in_window(values: pd.Series) -> int:
        when = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
        return int(((when >= start) & (when <= end)).sum())

    queue, labels = read_queue(w.settings), read_labels(w.settings)
    backlog["surfaced_in_window"] = in_window(queue["surfaced_at"]) if len(queue) else 0
    backlog["labeled_in_window"] = in_window(labels["imported_at"]) if len(labels) else 0
    imports = [
        LabelImport(
            source=r.info.run_name.removeprefix("labels ") if r.info.run_name else "",
            labels_added=_metric(r.data.metrics, "labeled_edge_cases_added"),
            labels_rejected=_metric(r.data.metrics, "labels_rejected"),
            **_refs(w, r),
        )
        for r in data_runs
        if r.data.tags.get(keys.TAG_KIND) == keys.KIND_LABELS
    ]
    return backlog, imports


def shadow(w: Window) -> list[ShadowEvaluation]:
    # Newest first: the latest decision leads.
    return [_shadow_evaluation(w, r) for r in reversed(w.runs(keys.SHADOW_EXPERIMENT))]


def _shadow_evaluation(w: Window, r: Run) -> ShadowEvaluation:
    tags = r.data.tags
    return ShadowEvaluation(
        champion_version=tags.get(keys.TAG_CHAMPION_VERSION, ""),
        challenger_version=tags.get(keys.TAG_CHALLENGER_VERSION, ""),
        decision=tags.get(keys.TAG_DECISION, ""),
        summary=tags.get(keys.TAG_NOTE, ""),
        metric=r.data.params.get("metric", ""),
        **_metrics(r.data.metrics, SHADOW_METRICS),
        **_refs(w, r),
        state=tags.get(keys.TAG_SHADOW_STATE, tags.get(keys.TAG_DECISION, "")),
        **_metrics(r.data.metrics, SHADOW_RULE_METRICS),
    )


def alias_events(w: Window) -> list[AliasMove]:
    exp = w.experiment_id(keys.REGISTRY_EXPERIMENT)
    if exp is None:  # nothing was ever registered: history() would create the experiment
        return []
    return [
        AliasMove(
            **asdict(e),
            kind=_alias_kind(e.alias, e.version, e.previous, e.reason),
            mlflow_url=run_url(w.settings, exp, e.run_id),
        )
        for e in Registry(w.settings).history()
        if w.contains(parse_time(e.at))
    ]


def _alias_kind(alias: str, version: str, previous: str, reason: str) -> str:
    """What an alias move means for the people reading the review."""
    if alias == keys.CHAMPION:
        if reason.startswith("rollback"):
            return "rollback"
        return "promotion" if previous else "first champion"
    if alias == keys.CHALLENGER:
        return "new challenger" if version else "challenger retired"
    if alias == keys.PREVIOUS:
        return "previous champion kept"
    return "alias move"


def _metric(metrics: dict[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return None if v is None or math.isnan(v) else float(v)


def _names(text: str) -> tuple[str, ...]:
    """Feature names from a tag (comma- or space-separated, optionally as a JSON-ish list)."""
    cleaned = text.strip().strip("[]").replace("'", "").replace('"', "")
    return tuple(n.strip() for n in cleaned.replace(",", " ").split() if n.strip())


def _metrics(metrics: dict[str, float], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: _metric(metrics, k) for k in names}


def _refs(w: Window, run: Run, *, at: str = "") -> dict[str, Any]:
    """When a run started (or ``at``) and the way to it: id, MLflow link, Prefect flow run."""
    return {
        "at": at or iso(from_ms(run.info.start_time)),
        "run_id": run.info.run_id,
        "mlflow_url": w.url(run),
        "flow_run_url": _flow_url(run.data.tags),
    }


def _no_run(*, at: str) -> dict[str, Any]:
    return {"at": at, "run_id": "", "mlflow_url": "", "flow_run_url": ""}


def _flow_url(tags: dict[str, str]) -> str:
    return tags.get(keys.TAG_FLOW_RUN_URL) or ""
