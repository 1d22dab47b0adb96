"""Monitoring of scored batches: drift against the training reference, one MLflow run per batch.

``monitor_batches`` finds accepted batches that have a champion score file
(``scores/<batch_id>/champion-v<N>.parquet``, written by ``edgeloop.batch.scoring.score_batches``) and no
finished monitoring run yet, compares each with the reference (``pipelines.monitor``) and logs
one run per batch in ``<project>-monitoring``. Every metric is logged at the batch's ledger
sequence number as its step, so MLflow charts them over time. The names are fixed (the weekly
report reads them): see ``METRICS`` and ``TAGS``. Each run also carries
``SOFT_FAILURES_METRIC``: the batch's soft expectations that failed at ingest (from the ledger),
a drift signal that does not enter the drift decision, and the label-free accuracy estimates
of champion and challenger (``CBPE_METRICS``, ``edgeloop.monitoring.estimates``) with their
flags (``keys.TAG_CBPE_FLAGS``): they ask for labels, they never promote.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import MonitoringError
from edgeloop.core.keys import CHALLENGER, CHAMPION, REFERENCE_BATCH
from edgeloop.core.layout import Layout
from edgeloop.data.exports import safe_cells
from edgeloop.data.store import DataStore, LedgerEntry
from edgeloop.monitoring.estimates import BatchEstimates, Calibrations, estimate_batch
from edgeloop.tracking.registry import Registry
from edgeloop.tracking.store import configure, ensure_experiment
from pipelines.monitor import BatchReport, ReferenceProfile, batch_report, build_reference

MONITORING_EXPERIMENT = keys.MONITORING_EXPERIMENT
KIND = keys.KIND_MONITORING

#: Metric names other tools read (``psi.<feature>`` is added per feature).
METRICS = (
    "rows",
    "labeled_rows",
    "drift_share",
    "n_drifted_features",
    "prediction_psi",
    "mean_confidence",
    "low_confidence_share",
    "champion_accuracy",  # only when the batch has labeled rows
    "challenger_accuracy",  # ... and a challenger score file
    "agreement",  # only when a challenger score file exists
)
#: Regression, on the batch's labeled rows, instead of ``champion_accuracy``/``challenger_accuracy``.
REGRESSION_METRICS = tuple(
    f"{alias}_{k}" for alias in (CHAMPION, CHALLENGER) for k in ("mae", "rmse", "r2", "mean_residual")
)  # fmt: skip
#: Label-free estimates (CBPE) and the accuracy on labeled rows they can be checked against;
#: ``cbpe_accuracy_<alias>_low``/``_high``, ``cbpe_macro_f1_<alias>`` and
#: ``cbpe_calibrated_<alias>`` (1/0) are logged beside them.
CBPE_METRICS = (
    keys.METRIC_CBPE_ACCURACY_CHAMPION,
    keys.METRIC_CBPE_ACCURACY_CHALLENGER,
    keys.METRIC_TRUE_ACCURACY_CHAMPION,
    keys.METRIC_TRUE_ACCURACY_CHALLENGER,
)
#: Soft expectations (severity "warning") the batch failed at ingest: unusual values, new
#: categories. Logged beside ``METRICS`` (not in it: the weekly report's record has no field yet).
SOFT_FAILURES_METRIC = "soft_expectations_failed"
TAGS = (
    keys.TAG_BATCH_ID,
    keys.TAG_BATCH_INDEX,
    keys.TAG_DRIFTED,
    keys.TAG_DRIFTED_FEATURES,
    keys.TAG_CHAMPION_VERSION,
    keys.TAG_CHALLENGER_VERSION,
    keys.TAG_FLOW_RUN_ID,
    keys.TAG_FLOW_RUN_URL,
)
#: Where the dashboard finds each batch's confidence histogram without downloading artifacts.
HISTOGRAM_TAG = keys.TAG_CONFIDENCE_HISTOGRAM
#: The drifted-features tag is cut to this many characters (MLflow allows 8000).
MAX_FEATURES_TAG = 500
MAX_FLAGS_TAG = 2000


@dataclass(frozen=True)
class BatchMonitoring:
    """What the monitor found for one batch and where it logged it."""

    batch_id: str
    seq: int
    run_id: str
    rows: int
    labeled_rows: int
    n_features: int
    n_drifted: int
    drift_share: float
    drifted: bool
    drifted_features: list[str]
    prediction_psi: float
    mean_confidence: float | None
    low_confidence_share: float | None
    champion_version: str
    challenger_version: str
    champion_accuracy: float | None = None
    challenger_accuracy: float | None = None
    agreement: float | None = None
    #: Soft expectations the batch failed at ingest (the ledger's warnings).
    soft_expectations_failed: int = 0
    #: Label-free estimates (CBPE): accuracy and its approximate 95 % interval per model, and
    #: whether a calibration was used (False: raw confidence).
    cbpe_accuracy_champion: float | None = None
    cbpe_accuracy_champion_low: float | None = None
    cbpe_accuracy_champion_high: float | None = None
    cbpe_calibrated_champion: bool | None = None
    cbpe_accuracy_challenger: float | None = None
    cbpe_accuracy_challenger_low: float | None = None
    cbpe_accuracy_challenger_high: float | None = None
    cbpe_calibrated_challenger: bool | None = None
    #: What the estimates suggest (ask for labels, a likely regression, no calibration).
    cbpe_flags: list[str] = field(default_factory=list)
    #: Regression: ``REGRESSION_METRICS`` measured on the labeled rows (those it has).
    errors: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MonitorSummary:
    """One call of ``monitor_batches``: the batches monitored now and those left alone."""

    experiment_id: str
    monitored: list[BatchMonitoring] = field(default_factory=list)
    #: Batches that already had a finished monitoring run (skipped).
    already_monitored: list[str] = field(default_factory=list)
    #: Accepted batches without a champion score file yet (run ``edgeloop score``).
    not_scored: list[str] = field(default_factory=list)
    reference_rows: int = 0

    @property
    def drifted(self) -> list[BatchMonitoring]:
        return [b for b in self.monitored if b.drifted]

    @property
    def latest_run_id(self) -> str:
        """The run logged last in this call ('' when nothing was monitored)."""
        return self.monitored[-1].run_id if self.monitored else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "monitored": [b.to_dict() for b in self.monitored],
            "drifted": [b.batch_id for b in self.drifted],
            "already_monitored": list(self.already_monitored),
            "not_scored": list(self.not_scored),
            "reference_rows": self.reference_rows,
        }


# ---------------------------------------------------------------------- history
def monitoring_history(settings: Settings) -> list[dict[str, Any]]:
    """Every batch's latest finished monitoring run, oldest batch first (by ledger sequence).

    Each entry: ``batch_id``, ``seq``, ``run_id``, ``start_time`` (ms), ``metrics`` (last
    values), ``tags``. Failed or interrupted runs are left out: their batch is monitored again.
    """
    exp = ensure_experiment(settings, MONITORING_EXPERIMENT)
    client = MlflowClient()
    latest: dict[str, Any] = {}
    token: str | None = None
    while True:
        page = client.search_runs(
            [exp],
            filter_string=f"tags.`{keys.TAG_KIND}` = '{KIND}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        for run in page:
            batch = run.data.tags.get(keys.TAG_BATCH_ID, "")
            if batch:
                latest[batch] = run  # ascending start time: the last one wins
        token = page.token
        if not token:
            break
    out = []
    for batch, run in latest.items():
        index = run.data.tags.get(keys.TAG_BATCH_INDEX, "")
        out.append(
            {
                "batch_id": batch,
                "seq": int(index) if index.isdigit() else 0,
                "run_id": run.info.run_id,
                "start_time": run.info.start_time,
                "metrics": dict(run.data.metrics),
                "tags": dict(run.data.tags),
            }
        )
    return sorted(out, key=lambda e: (e["seq"], e["start_time"]))


# ---------------------------------------------------------------------- the monitor
def monitor_batches(
    settings: Settings,
    batch_ids: list[str] | None = None,
    *,
    flow_run_id: str = "",
    flow_run_url: str = "",
) -> MonitorSummary:
    """Monitor every scored, not yet monitored accepted batch (or only ``batch_ids``).

    Idempotent: a batch with a finished monitoring run is skipped, so a repeated call logs
    nothing twice. Batches logged earlier under the same ``flow_run_id`` (a retried task) are
    reported again from their runs, so a retry returns what the first attempt found.
    """
    configure(settings)
    exp = ensure_experiment(settings, MONITORING_EXPERIMENT)
    store = DataStore(settings)
    accepted = [e for e in store.ledger() if e.rows_accepted > 0]
    if batch_ids:
        known = {e.batch_id for e in accepted}
        unknown = [b for b in batch_ids if b not in known]
        if unknown:
            shown = ", ".join(sorted(known)[-10:]) or "none yet"
            raise MonitoringError(
                f"no accepted batch {', '.join(unknown)} in {store.ledger_path} "
                f"(accepted batches, latest 10: {shown})"
            )
        accepted = [e for e in accepted if e.batch_id in set(batch_ids)]
    history = {h["batch_id"]: h for h in monitoring_history(settings)}
    layout = Layout.of(settings)
    todo: list[LedgerEntry] = []
    results: dict[str, BatchMonitoring] = {}
    skipped: list[str] = []
    not_scored: list[str] = []
    for entry in accepted:
        h = history.get(entry.batch_id)
        if h is not None and flow_run_id and h["tags"].get(keys.TAG_FLOW_RUN_ID) == flow_run_id:
            # Logged by this same flow run before a task retry: report it again (so its drift
            # still counts for the retrain decision), log nothing twice.
            results[entry.batch_id] = _from_history(settings, entry, h)
        elif h is not None:
            skipped.append(entry.batch_id)
        elif _score_files(layout, entry.batch_id, CHAMPION):
            todo.append(entry)
        else:
            not_scored.append(entry.batch_id)
    if not todo:
        # Nothing new: the dataset is not even loaded, so a scheduled run with no work is cheap.
        return MonitorSummary(exp, list(results.values()), skipped, not_scored)

    data = store.load_dataset()
    reference = data[data["batch_id"] == REFERENCE_BATCH]
    if reference.empty:
        raise MonitoringError(
            f"no reference rows (batch_id '{REFERENCE_BATCH}') in {store.root}: drift needs the"
            " training reference (run 'edgeloop init')"
        )
    profile = _profile(settings, reference)
    positions = data.groupby("batch_id", sort=False).indices
    aliases = Registry(settings).aliases()
    calibrations = Calibrations(settings)
    for entry in todo:
        champ_v, champ_file = _pick(
            _score_files(layout, entry.batch_id, CHAMPION), aliases.get(CHAMPION)
        )
        # A challenger file of the champion's own version (scored before a promotion) is the
        # same model: comparing it with itself says nothing.
        chall_v, chall_file = _pick(
            {
                v: p
                for v, p in _score_files(layout, entry.batch_id, CHALLENGER).items()
                if v != champ_v
            },
            aliases.get(CHALLENGER),
        )
        if champ_file is None:
            continue  # removed since it was listed
        rows = data.iloc[positions.get(entry.batch_id, [])]
        report = _report(settings, profile, rows, entry.batch_id, champ_file, chall_file)
        estimates = estimate_batch(
            settings, calibrations, rows["row_id"], (champ_v, champ_file), (chall_v, chall_file)
        )
        run_id = _log_run(
            settings,
            exp,
            entry,
            report,
            estimates,
            champion_version=champ_v,
            challenger_version=chall_v,
            flow_run_id=flow_run_id,
            flow_run_url=flow_run_url,
        )
        results[entry.batch_id] = _result(entry, run_id, report, estimates, champ_v, chall_v)
    # Ledger order: the last one is the newest batch.
    monitored = [results[e.batch_id] for e in accepted if e.batch_id in results]
    return MonitorSummary(exp, monitored, skipped, not_scored, reference_rows=len(reference))


def _profile(settings: Settings, reference: pd.DataFrame) -> ReferenceProfile:
    # Built once per call and shared by every batch of it. Seeded with seeds.split: the sample
    # of the reference the KS test sees is the same on every run and machine.
    return build_reference(
        reference, settings.data_schema, settings.monitoring, seed=settings.seeds.split
    )


def _score_files(layout: Layout, batch: str, alias: str) -> dict[str, Path]:
    """``version -> file`` of one alias's score files for a batch."""
    return {f.version: f.path for f in layout.score_files(batch=batch, alias=alias)}


def _pick(files: dict[str, Path], preferred: str | None) -> tuple[str, Path | None]:
    """The current alias holder's file if the batch has one, else the newest version's."""
    if not files:
        return "", None
    version = preferred if preferred in files else max(files, key=int)
    return version, files[version]


def _report(
    settings: Settings,
    profile: ReferenceProfile,
    rows: pd.DataFrame,
    batch_id: str,
    champion_file: Path,
    challenger_file: Path | None,
) -> BatchReport:
    """Align the score files with the batch's rows by row id, then compute the report."""
    regression = settings.data_schema.is_regression
    extra = ["scale"] if regression and "scale" in pq.read_schema(champion_file).names else []
    champ = pd.read_parquet(champion_file, columns=["row_id", "predicted", "confidence", *extra])
    # Regression: the champion's training-target std, the unit of agreement (NaN: unknown).
    known = champ["scale"].dropna() if extra else champ.iloc[:0, 0]
    scale = float(known.iloc[0]) if len(known) else float("nan")
    pos = pd.Index(champ["row_id"]).get_indexer(rows["row_id"])
    if (pos < 0).any():
        # Rows the champion did not score (a file from an older dataset state) are left out.
        rows, pos = rows[pos >= 0], pos[pos >= 0]
    if len(pos) != len(champ) or (pos != np.arange(len(pos))).any():
        champ = champ.iloc[pos]
    challenger = None
    if challenger_file is not None:
        chall = pd.read_parquet(challenger_file, columns=["row_id", "predicted"])
        # Rows the challenger did not score come back as NaN: left out of the agreement.
        challenger = chall.set_index("row_id")["predicted"].reindex(rows["row_id"]).to_numpy()
    return batch_report(
        profile,
        rows,
        champ["predicted"].to_numpy(),
        champ["confidence"].to_numpy(),
        settings.monitoring,
        min_confidence=settings.edge_cases.min_confidence,
        challenger_predicted=challenger,
        labels=rows[settings.data_schema.target],
        batch_id=batch_id,
        scale=scale,
        tolerance=settings.edge_cases.disagreement_tolerance,
    )


def metric_key(feature: str) -> str:
    """``psi.<feature>`` with characters MLflow refuses in a metric name replaced by ``_``."""
    return "psi." + re.sub(r"[^\w.\- ]", "_", feature)


def _metrics(report: BatchReport, estimates: BatchEstimates) -> dict[str, float]:
    out: dict[str, float] = {
        "rows": report.rows,
        "labeled_rows": report.labeled_rows,
        "drift_share": report.drift_share,
        "n_drifted_features": report.n_drifted,
        "prediction_psi": report.prediction.psi,
        "mean_confidence": report.confidence.mean,
        "low_confidence_share": report.confidence.low_share,
    }
    for name in ("champion_accuracy", "challenger_accuracy", "agreement"):
        value = getattr(report, name)
        if value is not None:
            out[name] = value
    for name, value in (
        (keys.METRIC_TRUE_ACCURACY_CHAMPION, report.champion_accuracy),
        (keys.METRIC_TRUE_ACCURACY_CHALLENGER, report.challenger_accuracy),
    ):
        if value is not None:
            out[name] = value
    out.update(estimates.metrics())
    out.update(report.errors)
    for f in report.features:
        out[metric_key(f.feature)] = f.psi
    # NaN (an empty batch, an all-missing column) is not a measurement: leave it out.
    return {k: float(v) for k, v in out.items() if v == v}


def _features_tag(names: list[str]) -> str:
    text = ",".join(names)
    if len(text) <= MAX_FEATURES_TAG:
        return text
    kept: list[str] = []
    for name in names:
        if len(",".join([*kept, name])) > MAX_FEATURES_TAG - 20:
            break
        kept.append(name)
    return ",".join(kept) + f",... (+{len(names) - len(kept)} more)"


def _features_csv(report: BatchReport) -> str:
    table = pd.DataFrame([f.to_dict() for f in report.features])
    table["unseen"] = table["unseen"].map(lambda u: ";".join(u))
    csv: str = safe_cells(table.sort_values("psi", ascending=False)).to_csv(index=False)
    return csv


def _log_run(
    settings: Settings,
    experiment_id: str,
    entry: LedgerEntry,
    report: BatchReport,
    estimates: BatchEstimates,
    *,
    champion_version: str,
    challenger_version: str,
    flow_run_id: str,
    flow_run_url: str,
) -> str:
    """One MLflow run for the batch: metrics at step = ledger sequence, tags, the drift table."""
    m = settings.monitoring
    drifted = [f.feature for f in report.drifted_features]
    note = (
        f"{'DRIFT' if report.drifted else 'no drift'}: {report.n_drifted} of "
        f"{len(report.features)} features drifted (share {report.drift_share:.2f}, threshold "
        f"{m.drift_share_threshold})" + (f": {', '.join(drifted[:10])}" if drifted else "")
    ) + "".join(
        f"\n\n{f}" for f in [*estimates.flags, *([estimates.note] if estimates.note else [])]
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor-{entry.batch_id}") as run:
        mlflow.set_tags(
            {
                keys.TAG_KIND: KIND,
                keys.TAG_BATCH_ID: entry.batch_id,
                keys.TAG_BATCH_INDEX: str(entry.seq),
                keys.TAG_SOURCE: entry.source,
                keys.TAG_DRIFTED: str(report.drifted).lower(),
                keys.TAG_DRIFTED_FEATURES: _features_tag(drifted),
                keys.TAG_CHAMPION_VERSION: champion_version,
                keys.TAG_CHALLENGER_VERSION: challenger_version,
                keys.TAG_FLOW_RUN_ID: flow_run_id,
                keys.TAG_FLOW_RUN_URL: flow_run_url,
                HISTOGRAM_TAG: json.dumps(list(report.confidence.counts)),
                keys.TAG_CBPE_FLAGS: "; ".join(estimates.flags)[:MAX_FLAGS_TAG],
                keys.TAG_NOTE: note,
            }
        )
        mlflow.log_params(
            {
                "psi_bins": m.psi_bins,
                "psi_threshold": m.psi_threshold,
                "p_value": m.p_value,
                "drift_share_threshold": m.drift_share_threshold,
                "reference_sample": m.reference_sample,
                "min_confidence": settings.edge_cases.min_confidence,
                keys.TAG_CONFIG_HASH: settings.config_hash(),
            }
        )
        # step = the batch's ledger sequence number: the MLflow UI charts batches in order.
        mlflow.log_metrics(
            {**_metrics(report, estimates), SOFT_FAILURES_METRIC: float(len(entry.warnings))},
            step=entry.seq,
        )
        mlflow.log_text(_features_csv(report), "drift/features.csv")
        mlflow.log_dict(report.to_dict(), "drift/report.json")
        mlflow.log_dict(estimates.to_dict(), "performance/estimates.json")
        run_id: str = run.info.run_id
        return run_id


def _result(
    entry: LedgerEntry,
    run_id: str,
    report: BatchReport,
    estimates: BatchEstimates,
    champ_v: str,
    chall_v: str,
) -> BatchMonitoring:
    def finite(v: float) -> float | None:
        return v if v == v else None

    champ, chall = estimates.champion, estimates.challenger

    return BatchMonitoring(
        batch_id=entry.batch_id,
        seq=entry.seq,
        run_id=run_id,
        rows=report.rows,
        labeled_rows=report.labeled_rows,
        n_features=len(report.features),
        n_drifted=report.n_drifted,
        drift_share=report.drift_share,
        drifted=report.drifted,
        drifted_features=[f.feature for f in report.drifted_features],
        prediction_psi=report.prediction.psi,
        mean_confidence=finite(report.confidence.mean),
        low_confidence_share=finite(report.confidence.low_share),
        champion_version=champ_v,
        challenger_version=chall_v,
        champion_accuracy=report.champion_accuracy,
        challenger_accuracy=report.challenger_accuracy,
        agreement=report.agreement,
        soft_expectations_failed=len(entry.warnings),
        cbpe_accuracy_champion=champ.accuracy.estimate if champ else None,
        cbpe_accuracy_champion_low=champ.accuracy.low if champ else None,
        cbpe_accuracy_champion_high=champ.accuracy.high if champ else None,
        cbpe_calibrated_champion=champ.calibrated if champ else None,
        cbpe_accuracy_challenger=chall.accuracy.estimate if chall else None,
        cbpe_accuracy_challenger_low=chall.accuracy.low if chall else None,
        cbpe_accuracy_challenger_high=chall.accuracy.high if chall else None,
        cbpe_calibrated_challenger=chall.calibrated if chall else None,
        cbpe_flags=list(estimates.flags),
        errors=dict(report.errors),
    )


def _from_history(settings: Settings, entry: LedgerEntry, h: dict[str, Any]) -> BatchMonitoring:
    """A batch's result read back from its MLflow run (the drifted-features tag may be cut)."""
    m, t = h["metrics"], h["tags"]
    names = t.get(keys.TAG_DRIFTED_FEATURES, "").split(",")
    return BatchMonitoring(
        batch_id=entry.batch_id,
        seq=entry.seq,
        run_id=h["run_id"],
        rows=int(m.get("rows", 0)),
        labeled_rows=int(m.get("labeled_rows", 0)),
        n_features=len(settings.data_schema.features),
        n_drifted=int(m.get("n_drifted_features", 0)),
        drift_share=m.get("drift_share", 0.0),
        drifted=t.get(keys.TAG_DRIFTED) == "true",
        drifted_features=[n for n in names if n and not n.startswith("...")],
        prediction_psi=m.get("prediction_psi", float("nan")),
        mean_confidence=m.get("mean_confidence"),
        low_confidence_share=m.get("low_confidence_share"),
        champion_version=t.get(keys.TAG_CHAMPION_VERSION, ""),
        challenger_version=t.get(keys.TAG_CHALLENGER_VERSION, ""),
        champion_accuracy=m.get("champion_accuracy"),
        challenger_accuracy=m.get("challenger_accuracy"),
        agreement=m.get("agreement"),
        soft_expectations_failed=int(m.get(SOFT_FAILURES_METRIC, len(entry.warnings))),
        **_cbpe_from_history(m, t),
        errors={k: m[k] for k in REGRESSION_METRICS if k in m},
    )


def _cbpe_from_history(m: dict[str, float], t: dict[str, str]) -> dict[str, Any]:
    """The ``BatchMonitoring`` CBPE fields of a logged run (None where it logged none)."""
    out: dict[str, Any] = {}
    for alias in (CHAMPION, CHALLENGER):
        name = f"cbpe_accuracy_{alias}"
        out[name] = m.get(name)
        out[name + "_low"] = m.get(name + keys.CBPE_LOW_SUFFIX)
        out[name + "_high"] = m.get(name + keys.CBPE_HIGH_SUFFIX)
        calibrated = m.get(keys.METRIC_CBPE_CALIBRATED_PREFIX + alias)
        out[f"cbpe_calibrated_{alias}"] = None if calibrated is None else calibrated > 0
    flags = t.get(keys.TAG_CBPE_FLAGS, "")
    out["cbpe_flags"] = [f for f in flags.split("; ") if f]
    return out
