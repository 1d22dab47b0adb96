"""Shadow evaluation on the batch path: champion vs challenger on the same rows.

It compares the two models on every row both scored after the challenger was deployed (rows
that arrived earlier may be in its training data) with the importance-weighted paired estimate
and the confidence sequence of ``pipelines.shadow``; its decision and evidence are an MLflow
run in ``<project>-shadow`` (``latest_evaluation`` finds it again for ``promote``).

Which rows are evidence, and with what inclusion probability ``pi``:

* a *design* batch (its queue file has ``inclusion_prob``, written with the evaluation sample on):
  every row counts; a row labeled in the queue has ``pi = inclusion_prob * r``, where ``r`` is
  the labeled share of the batch's queued rows of the same purpose (edge cases, evaluation
  sample): labels not back yet are taken as missing at random within the batch and purpose. A
  batch with a purpose none of whose queued rows is labeled yet is *pending*: left out until
  its labels arrive (counted in ``pending_rows``);
* a row that came with its label (``label_source == "batch"``): ``pi = 1``;
* a *legacy* batch (queued before the evaluation sample, or never queued): its labeled rows only,
  with ``pi = 1``; when the batch also has unlabeled rows they were chosen by the champion's
  uncertainty, so the evidence is flagged as biased (``legacy_rows``, tag ``shadow_biased``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from edgeloop.batch.annotation import read_labels, read_queue
from edgeloop.batch.scoring import read_scores
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.keys import CHALLENGER, CHAMPION, SHADOW_EXPERIMENT
from edgeloop.core.layout import Layout
from edgeloop.data.store import DataStore
from edgeloop.tracking.registry import Registry
from edgeloop.tracking.store import ensure_experiment
from pipelines import shadow as sh
from pipelines.evaluate import slice_mask
from pipelines.train import target

#: The labeling rate is measured over the labels of this many most recent days.
RATE_WINDOW_DAYS = 28


def _deployed_at(reg: Registry, version: str) -> str:
    """When ``version`` became challenger (rows scored before that are not shadow evidence)."""
    moves = [e for e in reg.history(CHALLENGER) if e.version == version]
    return moves[-1].at if moves else ""


@dataclass(frozen=True)
class ShadowReport:
    """A shadow evaluation: the comparison, the decision and where it is recorded."""

    champion: str
    challenger: str
    comparison: dict[str, Any]
    promote: bool
    summary: str
    run_id: str = ""
    #: ``promote``, ``keep`` or ``need_more`` (``promote`` is ``state == "promote"``).
    state: str = ""
    labels_needed: int | None = None
    days_needed: float | None = None
    labels_per_day: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evidence:
    """The rows that are evidence, in arrival order, with what ``pipelines.shadow.compare``
    needs about each."""

    rows: pd.DataFrame
    labeled: np.ndarray
    inclusion_prob: np.ndarray
    legacy: np.ndarray
    pending_rows: int


def labeling_rate(labels: pd.DataFrame, now: datetime | None = None) -> float | None:
    """Labels per day over the last ``RATE_WINDOW_DAYS`` days (at least one day is assumed
    elapsed); None with no label at all."""
    if labels.empty:
        return None
    stamps = labels["labeled_at"].where(labels["labeled_at"].notna(), labels["imported_at"])
    at = pd.to_datetime(stamps, utc=True, format="ISO8601", errors="coerce").dropna()
    if at.empty:
        return None
    now_ts = pd.Timestamp(now or datetime.now(UTC))
    recent = at[at > now_ts - timedelta(days=RATE_WINDOW_DAYS)]
    if recent.empty:
        return 0.0
    days = (now_ts - at.min()).total_seconds() / 86400
    return float(len(recent) / min(max(days, 1.0), float(RATE_WINDOW_DAYS)))


def _design_batches(settings: Settings, queue: pd.DataFrame) -> set[str]:
    """Batches queued with the evaluation sample on (their queue file has ``inclusion_prob``)."""
    ec = settings.edge_cases
    sample_on = ec.budget > 0 and round(ec.evaluation_share * ec.budget) > 0
    design: set[str] = set()
    if keys.QUEUE_INCLUSION_PROB in queue.columns:
        known = queue[queue[keys.QUEUE_INCLUSION_PROB].notna()]
        evaluated = known[known[keys.QUEUE_PURPOSE] == keys.PURPOSE_EVALUATION]
        # A batch without a drawn row is a design batch only if the sample is on now.
        design |= set(evaluated[keys.BATCH_ID].astype(str))
        if sample_on:
            design |= set(known[keys.BATCH_ID].astype(str))
    if sample_on:  # an empty queue file of a design batch still has the columns
        for f in Layout.of(settings).queue.glob("*.parquet"):
            if keys.QUEUE_INCLUSION_PROB in pq.read_schema(f).names:
                design.add(f.stem)
    return design


def evidence(settings: Settings, rows: pd.DataFrame) -> Evidence:
    """Which of ``rows`` (scored by both models, with the dataset's columns) are evidence, and
    each one's inclusion probability (see the module docstring)."""
    tcol = settings.data_schema.target
    queue = read_queue(settings).drop_duplicates(keys.ROW_ID, keep="last")
    design = _design_batches(settings, queue)
    for col in (keys.QUEUE_INCLUSION_PROB, keys.QUEUE_PURPOSE):
        if col not in queue.columns:
            queue[col] = np.nan
    q = queue.set_index(queue[keys.ROW_ID].astype(str))
    ids = rows[keys.ROW_ID].astype(str)
    batch = rows[keys.BATCH_ID].astype(str)
    has_label = rows[tcol].notna().to_numpy()
    source = rows["label_source"] if "label_source" in rows.columns else "batch"
    at_ingest = has_label & (pd.Series(source, index=rows.index) == "batch").to_numpy()
    in_design = batch.isin(design).to_numpy()
    queued = ids.isin(q.index).to_numpy()
    prob = ids.map(q[keys.QUEUE_INCLUSION_PROB]).to_numpy(dtype=np.float64)
    purpose = ids.map(q[keys.QUEUE_PURPOSE]).fillna("").astype(str).to_numpy()

    # Response share per (batch, purpose) of the design batches' queued rows.
    frame = pd.DataFrame({"batch": batch.to_numpy(), "purpose": purpose, "lab": has_label})
    groups = frame[in_design & queued].groupby(["batch", "purpose"])["lab"].mean()
    pending = set(groups[groups == 0].index.get_level_values("batch"))
    shares = groups.rename("share").reset_index()
    share = frame.merge(shares, on=["batch", "purpose"], how="left")["share"].to_numpy(np.float64)

    design_lab = in_design & ((queued & has_label) | at_ingest)
    pi = np.where(at_ingest, 1.0, np.nan)
    q_lab = in_design & queued & has_label & ~at_ingest
    pi[q_lab] = prob[q_lab] * share[q_lab]
    legacy_biased = set(batch[~in_design & ~has_label])
    keep = (in_design & ~batch.isin(pending).to_numpy()) | (~in_design & has_label)
    labeled = np.where(in_design, design_lab, has_label)
    pi = np.where(~in_design & has_label, 1.0, pi)
    return Evidence(
        rows=rows[keep].reset_index(drop=True),
        labeled=labeled[keep],
        inclusion_prob=np.nan_to_num(pi[keep], nan=1.0),
        legacy=(~in_design & batch.isin(legacy_biased).to_numpy())[keep],
        pending_rows=int((in_design & batch.isin(pending).to_numpy()).sum()),
    )


def _both_scored(settings: Settings, reg: Registry, champ_v: str, chall_v: str) -> tuple[pd.DataFrame, str, float]:  # fmt: skip
    """Rows both versions scored, of the batches that arrived after the challenger's deployment,
    and the champion's error scale (regression score files carry the model's ``scale``: the
    training target's std; NaN when unknown, then ``pipelines.shadow`` uses the labels')."""
    data = DataStore(settings).load_dataset()
    champ_scores = read_scores(settings, champ_v)
    scale = math.nan
    if "scale" in champ_scores.columns:
        known = champ_scores["scale"].to_numpy(dtype=np.float64)
        known = known[np.isfinite(known)]
        scale = float(known[-1]) if len(known) else math.nan
    a = champ_scores[[keys.ROW_ID, "predicted"]].rename(columns={"predicted": "champion"})
    b = read_scores(settings, chall_v)[[keys.ROW_ID, "predicted"]].rename(
        columns={"predicted": "challenger"}
    )
    # Only rows that arrived after the challenger was deployed: it may have trained on earlier ones.
    deployed = _deployed_at(reg, chall_v)
    ledger_times = {e.batch_id: e.at for e in DataStore(settings).ledger()}
    rows = data.merge(a, on=keys.ROW_ID).merge(b, on=keys.ROW_ID)
    if deployed:
        rows = rows[rows[keys.BATCH_ID].map(lambda bid: ledger_times.get(bid, "") >= deployed)]
    return rows.reset_index(drop=True), deployed, scale


def _finite(values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def shadow_evaluate(settings: Settings) -> ShadowReport:
    """Compare champion and challenger on the rows both scored in shadow; log an MLflow run."""
    reg = Registry(settings)
    aliases = reg.aliases()
    if CHAMPION not in aliases or CHALLENGER not in aliases:
        raise EdgeloopError(
            f"shadow evaluation needs a champion and a challenger in {reg.name} (aliases: {aliases or 'none'})"
        )
    champ_v, chall_v = aliases[CHAMPION], aliases[CHALLENGER]
    schema = settings.data_schema
    rows, deployed, scale = _both_scored(settings, reg, champ_v, chall_v)
    ev = evidence(settings, rows)
    y = np.full(len(ev.rows), None, dtype=object)  # read on labeled rows only
    y[ev.labeled] = target(ev.rows[ev.labeled], schema)
    cmp = sh.compare(
        y,
        ev.rows["champion"].to_numpy(),
        ev.rows["challenger"].to_numpy(),
        classes=list(schema.classes),
        settings=settings.shadow,
        seed=settings.seeds.split,
        slice_masks={sl.name: slice_mask(ev.rows, sl) for sl in settings.training.slices},
        labeled=ev.labeled,
        inclusion_prob=ev.inclusion_prob,
        legacy=ev.legacy,
        pending_rows=ev.pending_rows,
        scale=scale,
        tolerance=settings.edge_cases.disagreement_tolerance,
    )
    rate = labeling_rate(read_labels(settings))
    decision = sh.decide(cmp, settings.shadow, settings.gates, labels_per_day=rate)
    exp = ensure_experiment(settings, SHADOW_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp, run_name=f"shadow v{chall_v} vs v{champ_v}") as run:
        mlflow.set_tags(
            {
                keys.TAG_KIND: keys.KIND_SHADOW,
                keys.TAG_CHAMPION_VERSION: champ_v,
                keys.TAG_CHALLENGER_VERSION: chall_v,
                # Readers of the decision (promote, the review) know promote/keep only.
                keys.TAG_DECISION: "promote" if decision.promote else "keep",
                keys.TAG_SHADOW_STATE: decision.state,
                keys.TAG_SHADOW_RULE: cmp.rule,
                keys.TAG_SHADOW_BIASED: str(cmp.legacy_rows > 0).lower(),
                keys.TAG_DEPLOYED_AT: deployed,
                keys.TAG_NOTE: decision.summary(),
            }
        )
        s = settings.shadow
        mlflow.log_params({"min_samples": s.min_samples, "metric": s.metric, "confidence": s.confidence,
                           "bootstrap_samples": s.bootstrap_samples, "cs_tuned_rows": s.cs_tuned_rows,
                           "min_labeled_disagreements": s.min_labeled_disagreements,
                           **({"disagreement_tolerance": settings.edge_cases.disagreement_tolerance}
                              if schema.is_regression else {})})  # fmt: skip
        extra = {"labels_needed": decision.labels_needed, "days_needed": decision.days_needed,
                 "labels_per_day": rate}  # fmt: skip
        mlflow.log_metrics(_finite({**cmp.to_dict(), **extra}))
        mlflow.log_dict(
            {"comparison": cmp.to_dict(), "decision": decision.reasons, "state": decision.state,
             **extra},
            "shadow/evaluation.json",
        )  # fmt: skip
        run_id = run.info.run_id
    return ShadowReport(
        champ_v,
        chall_v,
        cmp.to_dict(),
        decision.promote,
        decision.summary(),
        run_id,
        state=decision.state,
        labels_needed=decision.labels_needed,
        days_needed=decision.days_needed,
        labels_per_day=rate,
    )


def latest_evaluation(settings: Settings, champion: str, challenger: str) -> Run | None:
    """The newest shadow-evaluation run for exactly this pair of versions."""
    exp = ensure_experiment(settings, SHADOW_EXPERIMENT)
    runs = MlflowClient().search_runs(
        [exp],
        filter_string=(
            f"tags.`{keys.TAG_CHAMPION_VERSION}` = '{champion}' and "
            f"tags.`{keys.TAG_CHALLENGER_VERSION}` = '{challenger}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None
