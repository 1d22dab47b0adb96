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

# ---------------------------------------------------------------- Prefect
RETRAIN_FLOW: Final = "retrain"


def deployment_name(project: str, flow_name: str) -> str:
    """``<flow>/<project>``: the name ``edgeloop deploy`` gives each deployment."""
    return f"{flow_name}/{project}"


#: Prefix of the trivial baseline's metrics on a retrain run (``baseline_macro_f1``, ...).
METRIC_BASELINE_PREFIX: Final = "baseline_"
