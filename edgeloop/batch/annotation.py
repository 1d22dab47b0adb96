"""The annotation loop's stores: the edge-case queue, task exports, label imports, the SLA.

Layout (under ``data/``, so DVC versions it with the dataset and nothing is lost)::

    data/annotation/queue/<batch_id>.parquet   rows surfaced from a batch: edge cases (with
                                               reasons) and the evaluation sample, each with
                                               its inclusion_prob and purpose
    data/labels/<seq>-<hash>.parquet           accepted labels of one import
    data/labels/rejected/<seq>-<hash>/         the import file as received, bad rows, report.md
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from edgeloop._internal import faults
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.keys import (
    CHALLENGER,
    CHAMPION,
    PURPOSE_EDGE_CASE,
    PURPOSE_EVALUATION,
    PURPOSE_REVIEW,
    QUEUE_INCLUSION_PROB,
    QUEUE_PURPOSE,
)
from edgeloop.core.layout import Layout
from edgeloop.data.exports import markdown_cell, markdown_text, safe_cells, write_csv_for_people
from edgeloop.data.lock import atomic_path, data_lock, track
from edgeloop.data.readers import load_rules, load_suite
from edgeloop.data.readers import read_labels as read_export
from edgeloop.data.store import DataStore
from edgeloop.tracking.registry import Registry
from edgeloop.tracking.store import ensure_experiment
from pipelines.edge_cases import SCORE_COLUMNS, evaluation_sample, excluded_mask, select
from pipelines.labels import check_labels


@dataclass(frozen=True)
class LabelImport:
    """One label import: rows read, accepted and rejected, and the rejected rows' report."""

    source: str
    rows: int
    accepted: int
    rejected: int
    repeats_dropped: int
    failed: list[str]
    report: str = ""
    #: Set when the same file (by content) was imported before: nothing is added again.
    duplicate_of: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: ``Backlog.sla_state`` values.
SLA_OK, SLA_AT_RISK, SLA_BREACHED, SLA_EMPTY = "ok", "at_risk", "breached", "empty"


@dataclass(frozen=True)
class Backlog:
    """The annotation backlog against the labeling SLA (``annotation.sla_days``)."""

    queued: int
    open: int
    labeled: int
    oldest_open_hours: float | None
    median_hours_to_label: float | None
    p90_hours_to_label: float | None
    #: Share labeled within the SLA; open items already older than it count as misses.
    within_sla_share: float | None
    sla_days: float
    #: ``ok``, ``at_risk`` (the oldest open item is past ``annotation.sla_warning_share`` of the
    #: SLA), ``breached`` (past the SLA) or ``empty`` (nothing open).
    sla_state: str = SLA_EMPTY
    #: Open items past the warning share of the SLA (those past the SLA included).
    at_risk_open: int = 0
    #: Hours after which an open item puts the SLA at risk (``sla_warning_share`` of it).
    sla_warning_hours: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def alert(self) -> str:
        """One line for a person when the SLA is at risk or breached ("" otherwise)."""
        if self.sla_state not in (SLA_AT_RISK, SLA_BREACHED) or self.oldest_open_hours is None:
            return ""
        word = "breached" if self.sla_state == SLA_BREACHED else "at risk"
        return (
            f"labeling SLA {word}: the oldest of {self.open} open tasks has waited"
            f" {self.oldest_open_hours / 24:.1f} of {self.sla_days:g} days;"
            f" {self.at_risk_open} open tasks are near or past the SLA"
        )


#: The ``reasons`` of the evaluation sample's rows (what annotators see of why a row is there).
EVALUATION_REASON = "evaluation sample"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def queue_dir(settings: Settings) -> Path:
    return Layout.of(settings).queue


def labels_dir(settings: Settings) -> Path:
    return Layout.of(settings).labels


def read_queue(settings: Settings) -> pd.DataFrame:
    """Every row ever surfaced (one row per row id). Queue files written before the evaluation
    sample have no ``inclusion_prob``/``purpose``: those rows read as missing values there."""
    files = sorted(queue_dir(settings).glob("*.parquet"))
    if not files:
        columns = ["row_id", "batch_id", "reasons", "surfaced_at", "predicted"]
        return pd.DataFrame(columns=[*columns, QUEUE_INCLUSION_PROB, QUEUE_PURPOSE])
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def read_labels(settings: Settings) -> pd.DataFrame:
    """Every accepted label, oldest import first."""
    files = sorted(labels_dir(settings).glob("*.parquet"))
    if not files:
        return pd.DataFrame(
            columns=["row_id", "label", "labeled_at", "annotator", "source", "imported_at"]
        )
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


# ---------------------------------------------------------------------- surfacing
def surface(settings: Settings, *, surfaced_at: str | None = None) -> list[dict[str, Any]]:
    """Queue edge cases and the evaluation sample of every batch scored by the current champion
    and not yet surfaced.

    With ``edge_cases.evaluation_share`` above 0 the edge cases get ``budget - round(share *
    budget)`` rows, chosen as before (``inclusion_prob`` 1: deterministic given the scores),
    and a Poisson sample of the batch's other rows, of expected size ``round(share * budget)``,
    is queued beside them with each row's inclusion probability
    (``pipelines.edge_cases.evaluation_sample``; seeded by ``seeds.split`` and the batch id).
    """
    reg = Registry(settings)
    aliases = reg.aliases()
    if CHAMPION not in aliases:
        return []
    champ, chall = aliases[CHAMPION], aliases.get(CHALLENGER)
    schema = settings.data_schema
    data = DataStore(settings).load_dataset()
    known = [*schema.features, *SCORE_COLUMNS, *(f"p_{c}" for c in schema.classes)]
    rules = load_rules(settings.root / settings.edge_cases.rules_file, known)
    queue = read_queue(settings)
    # Already queued, or already labeled (audit labels, earlier annotations): never again.
    exclude = set(queue["row_id"].astype(str)) | set(
        data.loc[data[schema.target].notna(), "row_id"].astype(str)
    )
    done = {p.stem for p in queue_dir(settings).glob("*.parquet")}
    out = []
    layout = Layout.of(settings)
    for batch_dir in sorted(layout.scores.glob("*")):
        batch = batch_dir.name
        champ_file = layout.score_file(batch, CHAMPION, champ)
        if batch in done or not champ_file.exists():
            continue
        scores = pd.read_parquet(champ_file)
        rows = (
            data.set_index("row_id")
            .loc[scores["row_id"], list(schema.features)]
            .reset_index(drop=True)
        )
        other = None
        chall_file = layout.score_file(batch, CHALLENGER, chall) if chall else None
        if chall_file is not None and chall_file.exists():
            # The challenger's scores of the same rows, in the champion's order.
            other = pd.read_parquet(chall_file).set_index("row_id").loc[scores["row_id"]]
            other = other.reset_index()
        picked = _queue_batch(settings, batch, scores, rows, other, rules, exclude)
        picked["surfaced_at"] = surfaced_at or now_iso()
        picked["model_version"] = champ
        with (
            data_lock(settings, "score (edge-case queue)"),
            atomic_path(queue_dir(settings) / f"{batch}.parquet") as tmp,
        ):
            picked.astype({"predicted": "str"}).to_parquet(tmp, index=False)
        faults.point("score:queue-written")
        exclude |= set(picked["row_id"].astype(str))
        evaluation = int((picked[QUEUE_PURPOSE] == PURPOSE_EVALUATION).sum())
        out.append(
            {
                "batch_id": batch,
                "surfaced": len(picked),
                "evaluation_sample": evaluation,
                "candidates_scored": len(scores),
            }
        )
    return out


def _queue_batch(
    settings: Settings,
    batch: str,
    scores: pd.DataFrame,
    features: pd.DataFrame,
    challenger: pd.DataFrame | None,
    rules: Any,
    exclude: set[str],
) -> pd.DataFrame:
    """One batch's queue rows: its edge cases, then its evaluation sample."""
    ec = settings.edge_cases
    evaluation_size = round(ec.evaluation_share * ec.budget) if ec.budget > 0 else 0
    edge_budget = ec.budget - evaluation_size
    chall_pred = None if challenger is None else challenger["predicted"].to_numpy()
    picked = select(
        # No rows when the evaluation sample takes the whole budget (a budget of 0 is no limit).
        scores if ec.budget == 0 or edge_budget > 0 else scores.iloc[:0],
        ec.model_copy(update={"budget": edge_budget}),
        features=features,
        challenger_predicted=chall_pred,
        rules=rules,
        exclude=exclude,
    )
    picked[QUEUE_INCLUSION_PROB] = 1.0
    picked[QUEUE_PURPOSE] = PURPOSE_EDGE_CASE
    drawn = evaluation_sample(
        scores,
        challenger=challenger,
        exclude=excluded_mask(scores["row_id"], exclude | set(picked["row_id"].astype(str))),
        expected_size=evaluation_size,
        uniform_share=ec.evaluation_uniform_share,
        disagreements_first=ec.evaluation_disagreements_first
        and settings.shadow.metric == "accuracy",
        seed=_evaluation_seed(settings, batch),
    )
    drawn["reasons"] = EVALUATION_REASON
    drawn[QUEUE_PURPOSE] = PURPOSE_EVALUATION
    if "cluster" in picked.columns:
        drawn["cluster"] = -1  # not clustered: the sample is not drawn by cluster
    columns = list(dict.fromkeys([*picked.columns, *drawn.columns]))
    parts = [df for df in (picked, drawn) if len(df)] or [picked]
    both = pd.concat(parts, ignore_index=True).reindex(columns=columns)
    floats = ["confidence", "margin", "priority", QUEUE_INCLUSION_PROB]
    if settings.data_schema.is_regression and "spread" in scores.columns:
        # What annotators see beside the predicted value: how far the ensemble's members apart.
        spread = scores.set_index(scores["row_id"].astype(str))["spread"]
        both["spread"] = both["row_id"].astype(str).map(spread)
        floats.append("spread")
    return both.astype({c: "float64" for c in floats if c in both.columns})


def _evaluation_seed(settings: Settings, batch: str) -> int:
    """The evaluation sample's seed: ``seeds.split`` hashed with the batch id (stable across
    processes, unlike ``hash``)."""
    digest = hashlib.sha256(f"{settings.seeds.split}/{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# ---------------------------------------------------------------------- export
def _shown(settings: Settings) -> list[str]:
    """The columns an annotator sees: the user's id column (when set), then the features."""
    schema = settings.data_schema
    return [*([schema.id] if schema.id else []), *schema.features]


def open_tasks(settings: Settings, *, review: bool = False) -> pd.DataFrame:
    """Queued rows without a label yet, with their id column and features; with ``review``,
    then the queued rows whose label is an open suspect (``review_tasks``)."""
    queue = read_queue(settings)
    labeled = set(read_labels(settings)["row_id"].astype(str))
    open_ = queue[~queue["row_id"].astype(str).isin(labeled)]
    if review:
        suspects = review_tasks(settings, queue)
        open_ = pd.concat([open_, suspects], ignore_index=True) if len(suspects) else open_
    return _with_features(settings, open_)


def review_tasks(settings: Settings, queue: pd.DataFrame | None = None) -> pd.DataFrame:
    """Queued rows whose label the latest label-quality check left open as suspect, as review
    tasks (purpose ``review``): the model's suggestion is the pre-annotation, the reason says
    what was given. A person's new answer (the same or another) confirms the row."""
    state = DataStore(settings).label_quality()
    queue = read_queue(settings) if queue is None else queue
    if state is None:
        return queue.iloc[:0]
    suspects = state.loc[state["status"] == "suspect", "row_id"].astype(str)
    once = queue.drop_duplicates("row_id", keep="last")
    rows = once[once["row_id"].astype(str).isin(set(suspects))]
    if not len(rows):
        return rows.iloc[:0]
    look = state.set_index(state["row_id"].astype(str)).reindex(rows["row_id"].astype(str))
    out = rows.reset_index(drop=True).copy()
    out["predicted"] = look["suggested"].to_numpy()
    out["confidence"] = look["p_suggested"].to_numpy(dtype="float64")
    if settings.data_schema.is_regression:
        # No probabilities: the suggestion is the out-of-sample prediction.
        out["reasons"] = [
            f"review: labeled {g}, the model says {s}"
            for g, s in zip(look["given"], look["suggested"], strict=True)
        ]
    else:
        out["reasons"] = [
            f"review: labeled {g}, the model says {s} ({p:.2f})"
            for g, s, p in zip(look["given"], look["suggested"], look["p_suggested"], strict=True)
        ]
    out[QUEUE_PURPOSE] = PURPOSE_REVIEW
    return out


def _with_features(settings: Settings, open_: pd.DataFrame) -> pd.DataFrame:
    data = DataStore(settings).load_dataset().set_index("row_id")
    shown = [c for c in _shown(settings) if c in data.columns and c not in open_.columns]
    feats = data.loc[open_["row_id"], shown].reset_index(drop=True)
    return open_.reset_index(drop=True).join(feats)


def _plain(v: Any) -> Any:
    """A JSON-safe Python value (NaN becomes null: NaN is not JSON)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def label_studio_tasks(tasks: pd.DataFrame, settings: Settings) -> list[dict[str, Any]]:
    """Label Studio task-import JSON: data plus the champion's answer as a pre-annotation."""
    a = settings.annotation
    regression = settings.data_schema.is_regression
    # The user's id (a data field named after its column) comes first: annotators know it.
    features = [c for c in _shown(settings) if c in tasks.columns]
    out = []
    for rec in tasks.to_dict(orient="records"):
        answer = _answer(rec, regression)
        data = {k: _plain(rec[k]) for k in features}
        data.update(
            row_id=str(rec["row_id"]),
            batch_id=str(rec["batch_id"]),
            reasons=str(rec["reasons"]),
            # Edge case or evaluation sample, for the labeling tool's filters; the inclusion
            # probability is not shown (it tells how much the models disagree).
            purpose=_purpose(rec),
            surfaced_at=str(rec["surfaced_at"]),
            # One readable line for a Text control in the labeling UI.
            row=", ".join(f"{k}={_plain(rec[k])}" for k in features),
        )
        if regression:
            # The champion's value and its ensemble spread, for a Text control or a filter.
            spread = _plain(rec.get("spread"))
            shown = "none" if answer is None else f"{answer:.6g}"
            data.update(
                predicted=answer,
                spread=spread,
                champion=f"champion: {shown}"
                + (f" (spread {spread:.3g})" if isinstance(spread, float) else ""),
            )
        prediction: dict[str, Any] = {
            "model_version": f"champion v{rec.get('model_version', '')}",
            "result": [
                {
                    "from_name": a.label_studio_from_name,
                    "to_name": a.label_studio_to_name,
                    "type": "number" if regression else "choices",
                    "value": {"number": answer} if regression else {"choices": [answer]},
                }
            ],
        }
        score = _plain(float(rec["confidence"]))
        if score is not None:  # NaN (a regressor without members) is not JSON
            prediction["score"] = score
        if regression and answer is None:
            prediction["result"] = []  # no value to pre-fill
        out.append({"data": data, "predictions": [prediction]})
    return out


def _answer(rec: dict[str, Any], regression: bool) -> Any:
    """The champion's answer as the labeling tool takes it: the class as text, or a number."""
    if not regression:
        return str(rec["predicted"])
    value = float(pd.to_numeric(pd.Series([rec.get("predicted")]), errors="coerce").iloc[0])
    # Ten significant digits: 249.2361, not the float noise 249.2360999999999.
    return None if value != value else float(f"{value:.10g}")


def _purpose(rec: dict[str, Any]) -> str:
    """A queued row's purpose; rows queued before the evaluation sample were edge cases."""
    value = rec.get(QUEUE_PURPOSE)
    return str(value) if isinstance(value, str) and value else PURPOSE_EDGE_CASE


def label_studio_config(settings: Settings) -> str:
    """A labeling config matching the exported tasks (one Text control, one Choices; for
    regression a Number bounded by ``schema.target_range``, and the champion's value shown)."""
    a = settings.annotation
    schema = settings.data_schema
    if schema.is_regression:
        bounds = ""
        if schema.target_range is not None:
            bounds = f' min="{schema.target_range[0]:g}" max="{schema.target_range[1]:g}"'
        # No step: Label Studio then checks min/max only (a step would refuse 123.45 for 1).
        return (
            f'<View><Text name="{a.label_studio_to_name}" value="$row"/>'
            f'<Text name="reasons" value="$reasons"/>'
            f'<Text name="champion" value="$champion"/>'
            f'<Number name="{a.label_studio_from_name}" toName="{a.label_studio_to_name}"'
            f'{bounds} required="true"/></View>'
        )
    choices = "".join(f'<Choice value="{c}"/>' for c in settings.data_schema.classes)
    return (
        f'<View><Text name="{a.label_studio_to_name}" value="$row"/>'
        f'<Text name="reasons" value="$reasons"/>'
        f'<Choices name="{a.label_studio_from_name}" toName="{a.label_studio_to_name}" choice="single">{choices}</Choices></View>'
    )


def export_tasks(
    settings: Settings, out_dir: Path, formats: tuple[str, ...] = ("json", "csv")
) -> dict[str, Any]:
    """Write open tasks, then review tasks of suspect labels, as Label Studio JSON and/or CSV;
    returns the paths and the counts."""
    tasks = open_tasks(settings, review=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    purposes = tasks.reindex(columns=[QUEUE_PURPOSE])[QUEUE_PURPOSE]
    reviews = int((purposes == PURPOSE_REVIEW).sum())
    written: dict[str, Any] = {"tasks": len(tasks), "review_tasks": reviews, "files": []}
    if "json" in formats:
        p = out_dir / f"tasks-{stamp}.json"
        p.write_text(json.dumps(label_studio_tasks(tasks, settings), indent=1), encoding="utf-8")
        (out_dir / "label_config.xml").write_text(label_studio_config(settings), encoding="utf-8")
        written["files"].append(str(p))
    if "csv" in formats:
        p = out_dir / f"tasks-{stamp}.csv"
        cols = ["row_id", "batch_id", "reasons", QUEUE_PURPOSE, "surfaced_at", "predicted"]
        cols += ["confidence", "margin"]
        if settings.data_schema.is_regression:
            cols.append("spread")
        # reindex: an empty queue has no score columns, and its CSV still gets the header.
        ident = [settings.data_schema.id] if settings.data_schema.id else []
        columns = [*cols[:1], *ident, *cols[1:], *settings.data_schema.features]
        purpose = [_purpose(r) for r in tasks.reindex(columns=[QUEUE_PURPOSE]).to_dict("records")]
        shown = tasks.reindex(columns=columns).assign(**{QUEUE_PURPOSE: purpose}, label="")
        write_csv_for_people(shown, p)
        written["files"].append(str(p))
    return written


# ---------------------------------------------------------------------- import
def import_labels(settings: Settings, path: Path) -> LabelImport:
    """Read, check (GX labels suite), store good labels, report bad ones; returns counts.

    Does not version: the caller commits ``data/`` as a new DVC version afterwards.
    """
    raw = read_export(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    with data_lock(settings, "annotate import"):
        earlier = _imported(settings, digest)
        if earlier:
            return LabelImport(path.name, len(raw), 0, 0, 0, [], duplicate_of=earlier)
        return _store_labels(settings, path, raw, digest)


def _imported(settings: Settings, digest: str) -> str:
    """The import (``<seq>-<hash>``) that added labels from a file with this content, if any.

    (A file whose rows were all rejected may be imported again: it is checked afresh.)
    """
    return min((p.stem for p in labels_dir(settings).glob(f"*-{digest}.parquet")), default="")


def _store_labels(settings: Settings, path: Path, raw: pd.DataFrame, digest: str) -> LabelImport:
    suite = load_suite(settings.suite_path(settings.annotation.suite))
    queued = read_queue(settings)["row_id"].astype(str).tolist()
    check = check_labels(raw, settings.data_schema, suite, queued)
    seq = (
        len(list(labels_dir(settings).glob("*.parquet")))
        + len(list((labels_dir(settings) / "rejected").glob("*")))
        + 1
    )
    name = f"{seq:06d}-{digest}"
    stamp = now_iso()
    report = ""
    if len(check.good):
        good = check.good.assign(imported_at=stamp, label=check.good["label"].astype("str"))
        good["labeled_at"] = good["labeled_at"].fillna(stamp).astype("str")
        with atomic_path(labels_dir(settings) / f"{name}.parquet") as tmp:
            good.astype({"annotator": "str", "source": "str"}).to_parquet(tmp, index=False)
        faults.point("labels:accepted-written")
    if len(check.bad):
        rdir = labels_dir(settings) / "rejected" / name
        track(rdir)
        rdir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, rdir / f"original{path.suffix}")
        safe_cells(check.bad).astype("str").to_csv(rdir / "rejected.csv", index=False)
        lines = [
            f"# Rejected labels from {markdown_text(path.name)}",
            "",
            f"{len(check.bad)} of {len(raw)} rows rejected.",
            "",
        ]
        lines += ["| row_id | label | reason |", "|---|---|---|"]
        lines += [
            "| "
            + " | ".join(markdown_cell(markdown_text(v)) for v in (r.row_id, r.label, r.reason))
            + " |"
            for r in check.bad.itertuples()
        ][:200]
        (rdir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        report = str((rdir / "report.md").relative_to(settings.root))
        faults.point("labels:rejected-written")
    return LabelImport(
        source=path.name,
        rows=len(raw),
        accepted=len(check.good),
        rejected=len(check.bad),
        repeats_dropped=check.repeats_dropped,
        failed=check.failed,
        report=report,
    )


# ---------------------------------------------------------------------- SLA
def sla(settings: Settings, now: datetime | None = None) -> Backlog:
    """Open items, oldest open age, median/p90 time-to-label, share labeled within the SLA."""
    now = now or datetime.now(UTC)
    queue = read_queue(settings)
    labels = read_labels(settings)
    days = settings.annotation.sla_days
    if queue.empty:
        return Backlog(0, 0, 0, None, None, None, None, days)
    surfaced = pd.to_datetime(queue.set_index("row_id")["surfaced_at"], utc=True, format="ISO8601")
    first = (
        labels.sort_values("labeled_at").drop_duplicates("row_id").set_index("row_id")["labeled_at"]
    )
    labeled_at = pd.to_datetime(first, utc=True, format="ISO8601").reindex(surfaced.index)
    hours = (labeled_at - surfaced).dt.total_seconds() / 3600
    done = hours.dropna()
    open_ages = (pd.Timestamp(now) - surfaced[labeled_at.isna()]).dt.total_seconds() / 3600
    missed_open = int((open_ages > days * 24).sum())
    warn = settings.annotation.sla_warning_share * days * 24
    at_risk = int((open_ages >= warn).sum())
    if not len(open_ages):
        state = SLA_EMPTY
    else:
        state = SLA_BREACHED if missed_open else SLA_AT_RISK if at_risk else SLA_OK
    return Backlog(
        queued=len(surfaced),
        open=int(labeled_at.isna().sum()),
        labeled=len(done),
        oldest_open_hours=round(float(open_ages.max()), 2) if len(open_ages) else None,
        median_hours_to_label=round(float(done.median()), 2) if len(done) else None,
        p90_hours_to_label=round(float(done.quantile(0.9)), 2) if len(done) else None,
        within_sla_share=(
            round(float((done <= days * 24).sum() / max(len(done) + missed_open, 1)), 4)
            if len(done) or len(open_ages)
            else None
        ),
        sla_days=days,
        sla_state=state,
        at_risk_open=at_risk,
        sla_warning_hours=round(warn, 2),
    )


def labels_since_last_retrain(settings: Settings) -> int:
    """Labels imported after the newest decided retrain started."""
    labels = read_labels(settings)
    if labels.empty:
        return 0
    exp = ensure_experiment(settings, keys.TRAINING_EXPERIMENT)
    runs = MlflowClient().search_runs(
        [exp], order_by=["attributes.start_time DESC"], max_results=20
    )
    decided = [r for r in runs if r.data.tags.get(keys.TAG_DECISION) in ("registered", "rejected")]
    if not decided:
        return len(labels)
    since = pd.Timestamp(decided[0].info.start_time, unit="ms", tz="UTC")
    return int((pd.to_datetime(labels["imported_at"], utc=True, format="ISO8601") > since).sum())
