"""Names shared by the writers and the readers of edgeloop's records.

Experiment kinds, MLflow tag keys, model aliases, reserved column names and deployment names.
A writer and every reader import the same constant: a name spelled in two places is a contract
that can silently break, one spelled here is checked by the import.
"""

from __future__ import annotations

from typing import Final

# ---------------------------------------------------------------- model aliases (registry)
CHAMPION: Final = "champion"
"""Serves predictions."""
CHALLENGER: Final = "challenger"
"""Candidate in silent mode: scored beside the champion, never answers."""
PREVIOUS: Final = "previous-champion"
"""The champion before the last promotion: what ``rollback`` restores."""
ALIASES: Final = (CHAMPION, CHALLENGER, PREVIOUS)

# ---------------------------------------------------------------- experiments
# Each is the suffix of an MLflow experiment named ``<project>-<kind>``.
DATA_EXPERIMENT: Final = "data"
TRAINING_EXPERIMENT: Final = "training"
REGISTRY_EXPERIMENT: Final = "registry"
SHADOW_EXPERIMENT: Final = "shadow"
MONITORING_EXPERIMENT: Final = "monitoring"
REVIEW_EXPERIMENT: Final = "reviews"

# ---------------------------------------------------------------- run kinds (TAG_KIND values)
KIND_INGEST: Final = "ingest"
KIND_LABELS: Final = "labels"
KIND_RETRAIN: Final = "retrain"
KIND_ALIAS_MOVE: Final = "alias-move"
KIND_SHADOW: Final = "shadow-evaluation"
KIND_MONITORING: Final = "monitoring"
KIND_REVIEW: Final = "weekly-review"

# ---------------------------------------------------------------- MLflow tags
TAG_KIND: Final = "edgeloop.kind"
TAG_STATUS: Final = "edgeloop.status"
"""On model versions: ``pending`` (being registered), ``ready`` or ``abandoned``."""
TAG_REASON: Final = "edgeloop.reason"
TAG_DECISION: Final = "edgeloop.decision"
TAG_BATCH_ID: Final = "edgeloop.batch_id"
TAG_BATCH_INDEX: Final = "edgeloop.batch_index"
TAG_DRIFTED: Final = "edgeloop.drifted"
TAG_DRIFTED_FEATURES: Final = "edgeloop.drifted_features"
TAG_CONFIDENCE_HISTOGRAM: Final = "edgeloop.confidence_histogram"
TAG_CHAMPION_VERSION: Final = "edgeloop.champion_version"
TAG_CHALLENGER_VERSION: Final = "edgeloop.challenger_version"
TAG_REGISTERED_VERSION: Final = "edgeloop.registered_version"
TAG_CACHE_KEY: Final = "edgeloop.cache_key"
TAG_MODEL: Final = "edgeloop.model"
TAG_ALIAS: Final = "edgeloop.alias"
TAG_VERSION: Final = "edgeloop.version"
TAG_PREVIOUS: Final = "edgeloop.previous"
TAG_ACTOR: Final = "edgeloop.actor"
TAG_AT: Final = "edgeloop.at"
TAG_SOURCE: Final = "edgeloop.source"
TAG_DEPLOYED_AT: Final = "edgeloop.deployed_at"
TAG_WINDOW_START: Final = "edgeloop.window_start"
TAG_WINDOW_END: Final = "edgeloop.window_end"
TAG_SHADOW_STATE: Final = "edgeloop.shadow_state"
"""On shadow runs: ``promote``, ``keep`` or ``need_more`` (``TAG_DECISION`` stays promote/keep:
need_more is "keep" there, so a reader of the decision never promotes on it)."""
TAG_SHADOW_RULE: Final = "edgeloop.shadow_rule"
"""On shadow runs: ``confidence-sequence`` or ``bootstrap`` (``shadow.metric: macro_f1``)."""
TAG_SHADOW_BIASED: Final = "edgeloop.shadow_biased"
"""On shadow runs: ``true`` when rows of batches queued before the evaluation sample (labeled
rows only, so a sample chosen by the champion's uncertainty) are part of the evidence."""
TAG_DATA_VERSION: Final = "dvc.data_version"
TAG_GIT_COMMIT: Final = "git.commit"
TAG_GIT_DIRTY: Final = "git.dirty"
TAG_FLOW_RUN_ID: Final = "prefect.flow_run_id"
TAG_FLOW_RUN_URL: Final = "prefect.flow_run_url"
"""The one tag with the Prefect flow run's UI address (every writer sets this one)."""
TAG_CONFIG_HASH: Final = "config_hash"
TAG_CODE_HASH: Final = "code_hash"
TAG_SEED_SPLIT: Final = "seed.split"
TAG_SEED_TRAIN: Final = "seed.train"
TAG_GATE_PREFIX: Final = "gate."
"""``gate.<name>`` = passed | failed, and ``gate.<name>.detail``, on every retrain run."""
PARAM_MAX_ROWS: Final = "max_rows"
TAG_NOTE: Final = "mlflow.note.content"
"""MLflow's own run description: shown on the run's page."""

# ---------------------------------------------------------------- reserved columns
ROW_ID: Final = "row_id"
BATCH_ID: Final = "batch_id"
RESERVED_COLUMNS: Final = (ROW_ID, BATCH_ID)
REFERENCE_BATCH: Final = "reference"
"""The ``batch_id`` of the rows of the reference set."""

# ---------------------------------------------------------------- annotation queue columns
QUEUE_INCLUSION_PROB: Final = "inclusion_prob"
"""Probability that the row was queued given its batch's scores: 1.0 for edge cases, q_i for
rows of the evaluation sample (absent in queue files written before the evaluation sample)."""
QUEUE_PURPOSE: Final = "purpose"
"""Why the row was queued: ``PURPOSE_EDGE_CASE`` or ``PURPOSE_EVALUATION``."""
PURPOSE_EDGE_CASE: Final = "edge_case"
PURPOSE_EVALUATION: Final = "evaluation"
#: An export's review task: a labeled row whose label the label-quality check suspects.
PURPOSE_REVIEW: Final = "review"

# ---------------------------------------------------------------- label-free estimates (CBPE)
# Metrics of a monitoring run (``pipelines.performance``): each batch's accuracy estimated
# from the calibrated top-1 confidence, beside the accuracy on its labeled rows where any.
METRIC_CBPE_ACCURACY_CHAMPION: Final = "cbpe_accuracy_champion"
METRIC_CBPE_ACCURACY_CHALLENGER: Final = "cbpe_accuracy_challenger"
METRIC_TRUE_ACCURACY_CHAMPION: Final = "true_accuracy_champion"
"""Accuracy on the batch's rows labeled when it was monitored (a sample: may be biased)."""
METRIC_TRUE_ACCURACY_CHALLENGER: Final = "true_accuracy_challenger"
CBPE_LOW_SUFFIX: Final = "_low"
"""``cbpe_accuracy_<alias>_low`` / ``_high``: the estimate's approximate 95 % interval."""
CBPE_HIGH_SUFFIX: Final = "_high"
METRIC_CBPE_MACRO_F1_PREFIX: Final = "cbpe_macro_f1_"
"""``cbpe_macro_f1_champion`` / ``_challenger``."""
METRIC_CBPE_CALIBRATED_PREFIX: Final = "cbpe_calibrated_"
"""``cbpe_calibrated_<alias>``: 1 when the estimate used a calibration, 0 for raw confidence."""
TAG_CBPE_FLAGS: Final = "edgeloop.cbpe_flags"
"""On monitoring runs: what the estimates suggest ("; "-separated, empty when nothing)."""
CALIBRATION_ARTIFACT: Final = "calibration/confidence.json"
"""On a retrain run: the candidate's top-1 confidence -> P(correct) calibration (holdout)."""
CHAMPION_CALIBRATION_ARTIFACT: Final = "calibration/champion.json"
"""On a retrain run: the champion's calibration on the same holdout (``version`` inside)."""

# ---------------------------------------------------------------- Prefect
RETRAIN_FLOW: Final = "retrain"


def deployment_name(project: str, flow_name: str) -> str:
    """``<flow>/<project>``: the name ``edgeloop deploy`` gives each deployment."""
    return f"{flow_name}/{project}"


#: Prefix of the trivial baseline's metrics on a retrain run (``baseline_macro_f1``, ...).
METRIC_BASELINE_PREFIX: Final = "baseline_"
#: Prefixes of a retrain's holdout-group metrics (``recent_accuracy``, ...): the reference rows,
#: every labeled production row, the last ``training.recent_batches`` batches, and the mix of
#: reference and recent weighted to the present (``training.reference_share``).
METRIC_REFERENCE_PREFIX: Final = "reference_"
METRIC_PRODUCTION_PREFIX: Final = "production_"
METRIC_RECENT_PREFIX: Final = "recent_"
METRIC_PRESENT_PREFIX: Final = "present_weighted_"
