"""What a registered model was made from, and rebuilding it from that record.

``lineage`` reads a model version's MLflow run (data version, code and config hashes, seeds,
Prefect run, alias history); ``reproduce`` restores that data version through DVC, retrains with
the logged config and seeds, and compares; ``models_status`` summarises the aliased versions.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgeloop.core import keys
from edgeloop.core.config import Settings, settings_from_dict
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.layout import Layout
from edgeloop.data.store import DataStore
from edgeloop.data.versioning import DataVersioner
from edgeloop.models.cache import code_hash
from edgeloop.models.training import train_and_evaluate
from edgeloop.tracking.registry import Registry
from pipelines import train as tr


@dataclass(frozen=True)
class Lineage:
    """Everything one model version was made from."""

    model: str
    version: str
    aliases: list[str]
    status: str
    created: str
    run_id: str
    data_version: str | None
    git_commit: str | None
    git_dirty: bool
    prefect_flow_run_id: str | None
    prefect_flow_run_url: str | None
    config_hash: str | None
    code_hash: str | None
    seed_split: str | None
    seed_train: str | None
    reason: str | None
    metrics: dict[str, float]
    alias_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reproduction:
    """A model rebuilt from its record, compared with the registered one."""

    model: str
    version: str
    run_id: str
    data_version: str | None
    data_restored: Any
    code_hash_then: str | None
    code_hash_now: str
    code_same: bool
    git_commit_then: str | None
    metrics_match: bool
    metric_differences: dict[str, dict[str, float]]
    prediction_agreement: float
    holdout_rows: int
    macro_f1: float | None
    #: Regression: the reproduced model's holdout R² (``macro_f1`` is then None).
    r2: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The metrics lineage and status show of a model's training run.
HEADLINE_METRICS = ("accuracy", "macro_f1", "weighted_f1")
REGRESSION_METRICS = ("r2", "mae", "rmse")


def lineage(settings: Settings, ref: str | None) -> Lineage:
    """Everything a model was made from: data version, code, config, seed, flow run, history."""
    reg = Registry(settings)
    version = reg.resolve(ref)
    mv = reg.version(version)
    run = reg.client.get_run(mv.run_id)
    tags = run.data.tags
    aliases = [a for a, v in reg.aliases().items() if v == version]
    history = [e.to_dict() for e in reg.history() if e.version == version or e.previous == version]
    return Lineage(
        **{
            "model": reg.name,
            "version": version,
            "aliases": aliases,
            "status": (mv.tags or {}).get(keys.TAG_STATUS, ""),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(
                timespec="seconds"
            ),
            "run_id": mv.run_id,
            "data_version": tags.get(keys.TAG_DATA_VERSION),
            "git_commit": tags.get(keys.TAG_GIT_COMMIT),
            "git_dirty": tags.get(keys.TAG_GIT_DIRTY) == "true",
            "prefect_flow_run_id": tags.get(keys.TAG_FLOW_RUN_ID),
            "prefect_flow_run_url": tags.get(keys.TAG_FLOW_RUN_URL),
            "config_hash": tags.get(keys.TAG_CONFIG_HASH),
            "code_hash": tags.get(keys.TAG_CODE_HASH),
            "seed_split": tags.get(keys.TAG_SEED_SPLIT),
            "seed_train": tags.get(keys.TAG_SEED_TRAIN),
            "reason": tags.get(keys.TAG_REASON),
            "metrics": {
                k: run.data.metrics[k]
                for k in (*HEADLINE_METRICS, *REGRESSION_METRICS)
                if k in run.data.metrics
            },
            "alias_history": history,
        }
    )


def reproduce(settings: Settings, ref: str) -> Reproduction:
    """Rebuild a registered model from its MLflow record and compare it with the original.

    Restores the run's dataset version through DVC (beside ``data/``, which is left alone),
    uses the config snapshot logged with the run, retrains with the same seeds, and compares
    holdout metrics and predictions.
    """
    reg = Registry(settings)
    version = reg.resolve(ref)
    mv = reg.version(version)
    run = reg.client.get_run(mv.run_id)
    # DVC refuses a .dvc file in a git-ignored folder, so the workspace is a visible folder at
    # the root, removed when done (the restored data stays in the DVC cache).
    work = Layout.of(settings).reproduce_dir(version)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        return _reproduce_in(settings, reg, version, mv, run, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reproduce_in(
    settings: Settings, reg: Registry, version: str, mv: Any, run: Any, work: Path
) -> Reproduction:
    config_dir = Path(reg.client.download_artifacts(mv.run_id, "config", str(work)))
    snapshot = next(config_dir.glob("*.yaml"), None) or next(config_dir.glob("*.yml"), None)
    if snapshot is None:
        raise EdgeloopError(f"run {mv.run_id} has no config snapshot: cannot reproduce v{version}")
    lineage_dir = Path(reg.client.download_artifacts(mv.run_id, "lineage", str(work)))
    pointer = work / "data.dvc"
    shutil.copy2(lineage_dir / "data.dvc", pointer)
    restored = DataVersioner(settings).restore(pointer)
    data = yaml.safe_load(snapshot.read_text(encoding="utf-8"))
    base = settings_from_dict(data, root=settings.root, source=snapshot)
    repro = base.model_copy(
        update={"paths": base.paths.model_copy(update={"data": str(work / "data")})}
    )
    dataset = DataStore(repro).load_training_dataset()[0]
    max_rows = int(float(run.data.params.get(keys.PARAM_MAX_ROWS, "0")))
    trained = train_and_evaluate(repro, dataset, max_rows=max_rows, champion=None)
    original = run.data.metrics
    diffs = {
        k: {"original": original[k], "reproduced": v}
        for k, v in trained.metrics.items()
        if k in original
        and not (math.isnan(v) and math.isnan(original[k]))
        and abs(original[k] - v) > 1e-9
    }
    model = reg.load(version)
    x = tr.features(trained.split.holdout, repro.data_schema)
    before, now = model.predict(x), trained.model.predict(x)
    if repro.data_schema.is_regression:  # the same numbers up to float noise
        same = np.isclose(np.asarray(before, "float64"), np.asarray(now, "float64"), rtol=1e-9)
    else:
        same = before == now
    agreement = float(np.mean(same))
    code_now = code_hash(settings.root, settings.training.fit)
    return Reproduction(
        **{
            "model": reg.name,
            "version": version,
            "run_id": mv.run_id,
            "data_version": run.data.tags.get(keys.TAG_DATA_VERSION),
            "data_restored": restored,
            "code_hash_then": run.data.tags.get(keys.TAG_CODE_HASH),
            "code_hash_now": code_now,
            "code_same": run.data.tags.get(keys.TAG_CODE_HASH) == code_now,
            "git_commit_then": run.data.tags.get(keys.TAG_GIT_COMMIT),
            "metrics_match": not diffs,
            "metric_differences": diffs,
            "prediction_agreement": agreement,
            "holdout_rows": len(trained.split.holdout),
            "macro_f1": trained.metrics.get("macro_f1"),
            "r2": trained.metrics.get("r2"),
        }
    )


def models_status(settings: Settings) -> dict[str, Any]:
    """Champion, challenger and previous champion: version, metrics, data version, age."""
    reg = Registry(settings)
    aliases = reg.aliases()
    if not aliases:
        return {}
    last_move = {e.alias: e.at for e in reg.history()}
    now = datetime.now(UTC)
    out: dict[str, Any] = {}
    for alias in keys.ALIASES:
        if alias not in aliases:
            continue
        mv = reg.version(aliases[alias])
        run = reg.client.get_run(mv.run_id)
        since = (
            last_move.get(alias)
            or datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat()
        )
        age = now - datetime.fromisoformat(since)
        out[alias] = {
            "version": aliases[alias],
            "macro_f1": run.data.metrics.get("macro_f1"),
            "accuracy": run.data.metrics.get("accuracy"),
            # Regression projects: their headline metrics (no accuracy or macro-F1 there).
            **{k: run.data.metrics[k] for k in REGRESSION_METRICS if k in run.data.metrics},
            "data_version": run.data.tags.get(keys.TAG_DATA_VERSION),
            "alias_since": since,
            "age_hours": round(age.total_seconds() / 3600, 2),
            "run_id": mv.run_id,
        }
    return out
