"""Typed, frozen settings loaded from one YAML file (``edgeloop.yaml``).

Nothing here acts on import. ``load_settings(path)`` reads the file, rejects unknown keys and
wrong types with an error that names the key and the file, and applies environment overrides
for service locations (so the same file runs against team servers).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeloop.core.errors import ConfigError
from edgeloop.core.schema import SchemaSettings as SchemaSettings
from edgeloop.core.schema import _Frozen

CONFIG_FILENAME = "edgeloop.yaml"

#: Environment variables that override service locations from the config file.
ENV_MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_PREFECT_API_URL = "PREFECT_API_URL"
#: Set (to the same URL) when PREFECT_API_URL is edgeloop's own temporary embedded server
#: (``runtime.warm_up_prefect``): not a configured service.
ENV_TEMPORARY_PREFECT_API_URL = "EDGELOOP_TEMPORARY_PREFECT_API_URL"
ENV_DVC_REMOTE_URL = "EDGELOOP_DVC_REMOTE_URL"


class PathSettings(_Frozen):
    """Where things live, relative to the project root unless absolute."""

    data: str = "data"
    expectations: str = "expectations"
    mlflow: str = "mlflow"
    prefect_home: str = ".prefect"
    dvc_remote: str = ".dvcstore"
    incoming: str = "incoming"


class ValidationSettings(_Frozen):
    """How a batch is judged by its Great Expectations suite."""

    suite: str = "batch"
    #: "rows": quarantine only the rows that fail row-level expectations and accept the rest;
    #: "batch": any failed expectation quarantines the whole batch.
    row_policy: Literal["rows", "batch"] = "rows"
    #: Under the "rows" policy, a batch with a larger share of bad rows is quarantined whole:
    #: that many failures usually means a broken producer, not a few bad records.
    max_bad_row_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    #: Example values kept per failed expectation in the readable report.
    report_examples: Annotated[int, Field(ge=0)] = 5
    #: Columns whose soft expectations (severity "warning": a value outside the observed range,
    #: a new category) are treated as hard ones, which quarantine the failing rows.
    hard_columns: list[str] = Field(default_factory=list)
    #: A batch file larger than this (MB on disk) is refused before it is read, with nothing
    #: recorded: reading and validating a CSV takes ~6x its size in memory (1.2 GB at 200 MB).
    #: 0: no limit.
    max_file_mb: Annotated[float, Field(ge=0)] = 100


class SeedSettings(_Frozen):
    """Every random choice is seeded from here so runs reproduce."""

    demo: int = 7
    split: int = 42
    train: int = 0


class SliceSettings(_Frozen):
    """A named subset of rows whose metrics are tracked (and may have floors)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]
    column: str
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in"] = "=="
    value: int | float | str | list[int | float | str]


class TrainingSettings(_Frozen):
    """What ``edgeloop retrain`` fits: a scikit-learn estimator by import path, its params."""

    estimator: str = "sklearn.ensemble.RandomForestClassifier"
    #: A custom training function instead of ``estimator``: ``"package.module:function"``,
    #: importable from the project root, called as ``function(x, y, seed=seed)`` with the
    #: model's input columns and the target, returning a fitted model with ``predict`` (and
    #: ``predict_proba`` and ``classes_`` for classification). Empty = ``estimator``/``params``.
    fit: Annotated[str, Field(pattern=r"^$|^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] = ""
    params: dict[str, int | float | str | bool | None] = Field(
        default_factory=lambda: dict[str, int | float | str | bool | None](
            n_estimators=200, n_jobs=-1
        )
    )
    #: Share of labeled rows held out for evaluation. With ``split: hash`` membership is a hash
    #: of the row id and ``seeds.split``: a row never moves between train and holdout as the
    #: dataset grows. With ``split: time`` the most recent share (by ``schema.time``) is held out.
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    split: Literal["hash", "time"] = "hash"
    #: ``schema.high_cardinality`` columns keep at most this many categories each (the rest pooled).
    max_categories: Annotated[int, Field(ge=2)] = 50
    min_train_rows: Annotated[int, Field(ge=1)] = 50
    min_holdout_rows: Annotated[int, Field(ge=1)] = 20
    #: Train on at most this many labeled rows (0 = all); a deterministic subset.
    max_rows: Annotated[int, Field(ge=0)] = 0
    slices: list[SliceSettings] = Field(default_factory=list)
    #: With ``split: hash``, every production batch with labeled rows holds out at least this
    #: many of them (those with the smallest row-id hash), beside the hash share: each labeled
    #: batch is in the holdout. Rows only ever leave this top-up as labels arrive, never join
    #: it, so no model is scored on rows it trained on. 0 = the plain hash split.
    holdout_min_per_batch: Annotated[int, Field(ge=0)] = 1
    #: The "recent" holdout: the labeled holdout rows of the last this many production batches
    #: that have any (arrival order).
    recent_batches: Annotated[int, Field(ge=1)] = 3
    #: Weight of the reference holdout in the present-weighted metrics; the recent holdout has
    #: the rest, each of its batches in proportion to its rows (its traffic). Renormalised when
    #: one side has no rows (no labeled production rows yet: the reference alone).
    reference_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    #: Weights of labeled production rows within their batch: ``uniform`` = every labeled row
    #: alike (biased towards the edge cases, the champion's hard rows); ``inclusion`` = 1 / the
    #: row's inclusion probability (annotation queue ``inclusion_prob``; rows labeled at ingest,
    #: edge cases and queue files without the column count 1): unbiased for the batch's traffic,
    #: but a few evaluation-sample rows then carry most of the weight (see ``*_effective_rows``).
    holdout_weights: Literal["uniform", "inclusion"] = "uniform"


class GateSettings(_Frozen):
    """ "Good enough": floors, per-slice and per-class recall floors, a lift over a trivial
    baseline, and non-inferiority against the champion."""

    #: ``r2`` is the regression metric (higher is better, at most 1: the margins below are in
    #: its units); the others are for classification. MAE and RMSE are reported beside it.
    metric: Literal["macro_f1", "accuracy", "weighted_f1", "balanced_accuracy", "r2"] = "macro_f1"
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    min_macro_f1: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    #: Regression: the floor on R² (judged where ``floors_on`` says); ``null`` = none.
    min_r2: Annotated[float, Field(le=1.0)] | None = None
    #: Slice name -> minimum ``metric`` on that slice.
    slice_floors: dict[str, float] = Field(default_factory=dict)
    #: A slice floor is only judged on at least this many holdout rows: a metric on a handful
    #: of rows is noise, not evidence (the check is recorded as "not enough rows").
    min_slice_rows: Annotated[int, Field(ge=1)] = 30
    #: The candidate may be worse than the champion on ``metric`` by at most this much.
    max_regression: Annotated[float, Field(ge=0.0, le=1.0)] = 0.02
    #: The candidate must beat a trivial baseline (``baseline``, fitted on the same training rows
    #: and scored on the same holdout) by this much on ``metric``; ``null`` = no baseline gate.
    min_lift_over_baseline: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    #: ``most_frequent`` / ``stratified`` for classification, ``mean`` / ``median`` for
    #: regression, or ``last_value`` (regression with ``schema.time``: each holdout row gets the
    #: target of the latest training row at or before its time, a persistence forecast).
    baseline: Literal["most_frequent", "stratified", "mean", "median", "last_value"] = (
        "most_frequent"
    )
    #: Class -> minimum recall on the holdout (``init`` writes floors for rare classes).
    class_recall_floors: dict[str, float] = Field(default_factory=dict)
    #: The holdout that non-inferiority (``max_regression``) judges: ``present_weighted``
    #: (reference and recent production rows by ``training.reference_share``), ``recent``,
    #: ``reference`` or ``overall`` (every holdout row alike, as before production rows counted).
    compare_on: Literal["present_weighted", "recent", "reference", "overall"] = "present_weighted"
    #: The holdout ``min_accuracy`` / ``min_macro_f1`` judge: ``reference`` (guards against
    #: forgetting; the overall holdout when it has no reference rows) or ``overall``.
    floors_on: Literal["reference", "overall"] = "reference"
    #: The candidate may be worse than the champion on ``metric`` on the reference holdout by
    #: at most this much (forgetting guard beside the present-weighted comparison); ``null`` = off.
    reference_max_regression: Annotated[float, Field(ge=0.0, le=1.0)] | None = 0.05
    #: Both comparisons with the champion reject only on this much confidence that the
    #: candidate is worse by more than the margin (one-sided, with the paired bootstrap error of
    #: the difference on the holdout rows): a registration is cheap, promotion needs the shadow's
    #: evidence. ``0`` = the point estimates decide.
    non_inferiority_confidence: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9


class RegistrySettings(_Frozen):
    """The MLflow Model Registry entry (empty name = ``<project>-model``)."""

    model_name: str = ""


class ServingSettings(_Frozen):
    """``edgeloop serve``: the prediction service with the challenger in silent (shadow) mode."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    #: How often the service re-reads the registry aliases (no restart needed on promotion).
    poll_seconds: Annotated[float, Field(gt=0)] = 5.0
    #: Requests waiting for the challenger (in the worker process); beyond this shadow work is
    #: dropped (and counted).
    shadow_queue_size: Annotated[int, Field(ge=1)] = 1000
    #: Prediction-log records (rows) waiting to be written; beyond this they are dropped (and
    #: counted). Bounds both the records on their way to the worker process and those waiting
    #: for its writer: 50,000 absorbs bursts of 1,000-row requests (worst case some 100 MB).
    log_queue_size: Annotated[int, Field(ge=1)] = 50000
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    max_rows_per_request: Annotated[int, Field(ge=1)] = 10000
    #: SQLite prediction log (relative to the project root).
    log_path: str = ".edgeloop/predictions.db"


class ShadowSettings(_Frozen):
    """Shadow evaluation and the promotion rule (docs/loop.md, "The promotion rule")."""

    #: ``macro_f1`` only (the fixed-sample bootstrap rule): labeled rows scored by both models
    #: before a comparison counts as evidence. The ``accuracy`` rule needs no such count.
    min_samples: Annotated[int, Field(ge=1)] = 200
    #: Confidence level of the confidence sequence (and of the fixed-sample interval shown
    #: beside it) on the challenger-minus-champion delta: 1 - confidence is the chance that the
    #: rule ever promotes a challenger that is not better, however often it is checked.
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = 0.95
    #: ``macro_f1`` only: paired bootstrap resamples of its interval.
    bootstrap_samples: Annotated[int, Field(ge=100)] = 2000
    #: ``accuracy``: the sequential rule (importance-weighted paired difference, confidence
    #: sequence, valid under repeated looks). ``macro_f1``: the fixed-sample bootstrap rule on
    #: the labeled rows (not valid under repeated looks, biased by the edge-case selection).
    #: ``abs_error`` (regression): the same sequential rule on the paired difference of
    #: absolute errors, in units of the training target's standard deviation, clipped to [-1, 1].
    metric: Literal["accuracy", "macro_f1", "abs_error"] = "accuracy"
    #: Promote when the lower bound of the delta is above this (0 = "better with confidence");
    #: keep the champion when the upper bound is below it.
    min_delta_lower_bound: float = 0.0
    #: The confidence sequence is tightest at this many rows scored by both models (its mixture
    #: parameter is tuned to it); any value keeps it valid, it only moves where it is sharpest.
    cs_tuned_rows: Annotated[int, Field(ge=10)] = 1000
    #: Labeled rows where the two models predict different classes (the only rows that carry
    #: evidence) before the sequential rule decides: the confidence sequence is asymptotic and
    #: its variance estimate needs a few of them.
    min_labeled_disagreements: Annotated[int, Field(ge=1)] = 10
    #: When labels come back (``annotate import``) and a challenger is in shadow, its evidence is
    #: re-evaluated before a label-volume retrain may replace it; with this on, a "promote"
    #: decision of the rule also moves the champion there (never without the rule).
    auto_promote: bool = False


class EdgeCaseSettings(_Frozen):
    """Which scored rows go to annotators (see ``pipelines/edge_cases/``)."""

    #: Flag rows whose top-1 probability is below this (0 turns the strategy off).
    min_confidence: Annotated[float, Field(ge=0.0, le=1.0)] = 0.6
    #: Flag rows whose top-1 minus top-2 probability is below this (0 turns it off).
    min_margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    #: Flag rows where the challenger disagrees with the champion.
    disagreement: bool = True
    #: Regression: champion and challenger disagree on a row when their predictions differ by
    #: more than this many standard deviations of the training target.
    disagreement_tolerance: Annotated[float, Field(gt=0.0)] = 0.5
    #: Failure-trigger rules (YAML, version-controlled), relative to the project root.
    rules_file: str = "expectations/edge_rules.yaml"
    #: Rows per batch sent to annotators (0 = no limit).
    budget: Annotated[int, Field(ge=0)] = 25
    #: No predicted class takes more than this share of a batch's budget.
    max_class_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    #: Diversity in feature space: the candidates (rows some strategy flags) are grouped into at
    #: most this many clusters by k-means on their standardised numeric features, fitted on a
    #: seeded sample of them; each selected row carries its cluster id (0 turns clustering and
    #: the cluster cap off).
    n_clusters: Annotated[int, Field(ge=0, le=256)] = 8
    #: No cluster takes more than this share of a batch's budget; a capped cluster's place goes
    #: to other clusters, and when too few clusters have candidates the batch gets fewer rows
    #: than the budget, as with the class cap (0 turns the cluster cap and clustering off).
    max_cluster_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    #: Seed of the clustering (sample and k-means start): the same batch and seed always give
    #: the same clusters and so the same selection.
    cluster_seed: int = 0
    #: Share of ``budget`` spent on the evaluation sample: rows drawn at random, with known
    #: inclusion probabilities, from the rows not chosen as edge cases, so that the
    #: champion-vs-challenger comparison is unbiased for the whole traffic. The edge cases get
    #: ``budget - round(evaluation_share * budget)`` rows; the sample's expected size is the
    #: rest (0 = off; no sample when ``budget`` is 0, no limit).
    evaluation_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    #: Share of the evaluation sample's weight spread uniformly over the rows; the rest goes to
    #: rows where champion and challenger disagree or their probabilities differ. Above 0, so
    #: every row has a positive inclusion probability (the importance weights need it).
    evaluation_uniform_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    #: With ``shadow.metric: accuracy``, draw the sample among the rows where champion and
    #: challenger predict different classes (elsewhere the paired difference is 0 whatever the
    #: label); the other rows only get what is left once every disagreement is drawn.
    evaluation_disagreements_first: bool = True

    @field_validator("n_clusters")
    @classmethod
    def _not_one_cluster(cls, v: int) -> int:
        # One cluster would be a second, smaller budget, not diversity.
        if v == 1:
            raise ValueError("n_clusters is 0 (off) or at least 2")
        return v


class AnnotationSettings(_Frozen):
    """The annotation queue, its SLA, and the label-volume retrain trigger."""

    sla_days: Annotated[float, Field(gt=0)] = 3.0
    #: The SLA is "at risk" once the oldest open task has waited this share of ``sla_days``:
    #: an event ``edgeloop.sla.at-risk`` is emitted and ``sla_notify`` is told.
    sla_warning_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    #: A Prefect notification block told when the SLA becomes at risk or breached, as
    #: ``<block-type-slug>/<name>`` (``slack-webhook/labeling``, ``custom-webhook/alerts``,
    #: ``email/...``); empty = none.
    sla_notify: str = ""
    #: Label Studio's name for the choice control in exports (its labeling config must match).
    label_studio_from_name: str = "label"
    label_studio_to_name: str = "row"
    #: Start a retrain when this many new labels arrived since the last one (0 = never).
    retrain_after_labels: Annotated[int, Field(ge=0)] = 50
    #: Labels suite (GX JSON under expectations/).
    suite: str = "labels"
    #: After each accepted import, score every labeled row for label issues (cleanlab's
    #: Confident Learning on out-of-sample probabilities from ``suspect_folds``-fold
    #: cross-validation of the training pipeline); suspects are listed for review.
    suspect_labels: bool = True
    suspect_folds: Annotated[int, Field(ge=2, le=20)] = 3
    #: Labeled rows scored at most (every annotated row, then a seeded sample of the others).
    suspect_max_rows: Annotated[int, Field(ge=100)] = 50_000
    #: Keep suspect labels out of training (and the holdout) until a new label for the row
    #: is imported (a re-label confirms or corrects it).
    exclude_suspects: bool = True


class MonitoringSettings(_Frozen):
    """Drift and confidence monitoring of scored batches (see ``pipelines/monitor.py``)."""

    #: Quantile bins of the training reference used for PSI on numeric features.
    psi_bins: Annotated[int, Field(ge=2, le=100)] = 10
    #: A feature drifts when its PSI is above this (0.1 = watch, 0.2 = act is the usual reading).
    psi_threshold: Annotated[float, Field(gt=0.0)] = 0.2
    #: ... or when its two-sample test (KS for numeric, chi-square for categorical) rejects
    #: "same distribution" at this p-value *and* PSI is above half the threshold; the test alone
    #: flags trivial shifts once batches have many rows.
    p_value: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.01
    #: A batch drifts when at least this share of its features drift.
    drift_share_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.3
    #: Start a retrain (through the retrain deployment when one is served) when a batch drifts.
    retrain_on_drift: bool = True
    #: Reference rows sampled for the drift tests (0 = all); keeps 1M-row references cheap.
    reference_sample: Annotated[int, Field(ge=0)] = 200_000
    #: Where dashboards and weekly reviews are written (relative to the project root).
    reports_dir: str = "reports"


class ScheduleSettings(_Frozen):
    """Cron schedules of the deployments ``edgeloop deploy`` serves (see ``prefect.yaml``)."""

    #: IANA timezone the crons are read in (e.g. "Europe/Berlin").
    timezone: str = "UTC"
    #: Nightly retrain (the cache skips it when nothing changed).
    retrain_cron: str = "0 2 * * *"
    #: Monitoring of newly scored batches.
    monitor_cron: str = "0 * * * *"
    #: Shadow evaluation of the challenger.
    shadow_evaluate_cron: str = "30 3 * * *"
    #: The weekly review report: Mondays 09:00.
    weekly_review_cron: str = "0 9 * * 1"
    #: How often a served deployment polls for runs (seconds): part of the click-to-start
    #: latency (on average half of it is waited). Each poll is one small API query.
    poll_seconds: Annotated[float, Field(ge=0.1, le=60)] = 0.5

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA timezone (e.g. 'UTC', 'Europe/Berlin')") from None
        return value

    @field_validator("retrain_cron", "monitor_cron", "shadow_evaluate_cron", "weekly_review_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        # Empty = that deployment has no schedule (runs start from the UI or a trigger only).
        if value:
            from datetime import datetime

            from cronsim import CronSim, CronSimError

            try:
                CronSim(value, datetime(2026, 1, 1))
            except CronSimError as exc:
                raise ValueError(f"not a valid cron expression ({exc})") from None
        return value


class ServiceSettings(_Frozen):
    """Service locations; empty means the embedded default. Environment variables win."""

    mlflow_tracking_uri: str = ""
    prefect_api_url: str = ""
    dvc_remote_url: str = ""


class Settings(_Frozen):
    """The whole configuration of one edgeloop project."""

    project: str = "edgeloop"
    data_schema: SchemaSettings = Field(alias="schema")
    paths: PathSettings = Field(default_factory=PathSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    seeds: SeedSettings = Field(default_factory=SeedSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    gates: GateSettings = Field(default_factory=GateSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    edge_cases: EdgeCaseSettings = Field(default_factory=EdgeCaseSettings)
    annotation: AnnotationSettings = Field(default_factory=AnnotationSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    schedules: ScheduleSettings = Field(default_factory=ScheduleSettings)
    services: ServiceSettings = Field(default_factory=ServiceSettings)

    # Not part of the file: where it was read from, so relative paths resolve from there.
    root: Path = Field(default=Path("."), exclude=True)
    source: Path | None = Field(default=None, exclude=True)

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        populate_by_name=True,
        arbitrary_types_allowed=True,
    )

    @model_validator(mode="after")
    def _slices_known(self) -> Settings:
        names = [s.name for s in self.training.slices]
        if len(set(names)) != len(names):
            raise ValueError("training.slices: slice names must be unique")
        for sl in self.training.slices:
            if sl.column not in self.data_schema.features:
                raise ValueError(
                    f"training.slices.{sl.name}: column {sl.column!r} is not a feature"
                )
        unknown = sorted(set(self.gates.slice_floors) - set(names))
        if unknown:
            raise ValueError(f"gates.slice_floors names unknown slices {unknown} (known: {names})")
        return self

    @model_validator(mode="after")
    def _task_consistent(self) -> Settings:
        regression = self.data_schema.is_regression
        task = self.data_schema.task
        wrong = {
            "gates.metric": (self.gates.metric == "r2") != regression,
            "gates.baseline": (self.gates.baseline in ("mean", "median", "last_value"))
            != regression,
            "shadow.metric": (self.shadow.metric == "abs_error") != regression,
        }
        fix = {
            "gates.metric": "r2" if regression else "macro_f1",
            "gates.baseline": "mean" if regression else "most_frequent",
            "shadow.metric": "abs_error" if regression else "accuracy",
        }
        for key, bad in wrong.items():
            if bad:
                raise ValueError(f"{key} does not fit schema.task {task!r} (use {fix[key]!r})")
        if self.gates.baseline == "last_value" and self.data_schema.time is None:
            raise ValueError("gates.baseline 'last_value' needs a time column (schema.time)")
        if regression and self.gates.class_recall_floors:
            raise ValueError("gates.class_recall_floors: a regression target has no classes")
        if not regression and self.gates.min_r2 is not None:
            raise ValueError("gates.min_r2 is for regression (schema.task: regression)")
        return self

    @property
    def model_name(self) -> str:
        return self.registry.model_name or f"{self.project}-model"

    def path(self, name: str) -> Path:
        """Absolute path of one entry of ``paths``."""
        p = Path(getattr(self.paths, name))
        return p if p.is_absolute() else (self.root / p)

    def suite_path(self, name: str | None = None) -> Path:
        """The JSON file of a named expectation suite."""
        return self.path("expectations") / f"{name or self.validation.suite}.json"

    def to_dict(self) -> dict[str, Any]:
        """The settings as they would be written to the file."""
        return self.model_dump(mode="json", by_alias=True, exclude={"root", "source"})

    def config_hash(self) -> str:
        """A stable hash of the settings (for lineage and caching)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _format_error(exc: ValidationError, source: Path) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{loc}'")
        elif err["type"] == "missing":
            lines.append(f"  - missing key '{loc}'")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - key '{loc}': {err['msg']}{shown}")
    return "\n".join(lines)


def settings_from_dict(data: dict[str, Any], *, root: Path, source: Path) -> Settings:
    """Build settings from parsed YAML; errors name the key and ``source``."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys, got {type(data).__name__}"
        )
    try:
        settings = Settings.model_validate({**data, "root": root, "source": source})
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from None
    return settings


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read ``edgeloop.yaml`` (or ``path``) and return frozen settings with env overrides."""
    import yaml

    source = Path(path) if path is not None else Path.cwd() / CONFIG_FILENAME
    source = source.resolve()
    if not source.is_file():
        raise ConfigError(
            f"{source}: config file not found (run 'edgeloop init' in the project root, "
            "or pass --config PATH)"
        )
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    settings = settings_from_dict(data or {}, root=source.parent, source=source)
    return apply_env_overrides(settings)


def configured_prefect_api_url(env: dict[str, str] | None = None) -> str:
    """PREFECT_API_URL from the environment, unless it is edgeloop's temporary embedded server
    (that one is not part of the configuration: no config hash, trigger or link depends on it).
    """
    env = dict(os.environ) if env is None else env
    url = env.get(ENV_PREFECT_API_URL, "")
    return "" if url and url == env.get(ENV_TEMPORARY_PREFECT_API_URL) else url


def apply_env_overrides(settings: Settings, env: dict[str, str] | None = None) -> Settings:
    """Service locations from the environment win over the file."""
    env = dict(os.environ) if env is None else env
    overrides = {
        "mlflow_tracking_uri": env.get(ENV_MLFLOW_TRACKING_URI, ""),
        "prefect_api_url": configured_prefect_api_url(env),
        "dvc_remote_url": env.get(ENV_DVC_REMOTE_URL, ""),
    }
    overrides = {k: v for k, v in overrides.items() if v}
    if not overrides:
        return settings
    services = settings.services.model_copy(update=overrides)
    return settings.model_copy(update={"services": services})


def dump_settings(settings: Settings, path: Path) -> None:
    """Write settings as YAML (used by ``edgeloop init``)."""
    import yaml

    text = yaml.safe_dump(settings.to_dict(), sort_keys=False, width=100, default_flow_style=None)
    path.write_text(text, encoding="utf-8")
