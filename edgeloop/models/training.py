"""Retrain steps between the pipelines and the stores (used by ``flows/retrain.py``).

Loading the dataset at its DVC version, the cache key, the one-retrain-at-a-time lock, the
MLflow run with its fixed keys, lineage, and ``reproduce``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop._internal import faults, runtime
from edgeloop.core.config import Settings
from edgeloop.core.errors import BusyError, EdgeloopError

if TYPE_CHECKING:
    import pandas as pd

    from edgeloop.models.fit_worker import FitWorker
    from pipelines.evaluate import GateResult
    from pipelines.train import Split

TRAINING_EXPERIMENT = "training"
#: The code whose change invalidates the cache (the training and evaluation stages).
TRAINING_CODE = ("pipelines/train.py", "pipelines/evaluate.py")


@dataclass
class RetrainSummary:
    """What a retrain did; printed by the CLI and returned by the flow."""

    status: str  # registered | rejected | cached
    reason: str
    data_version: str
    run_id: str = ""
    version: str = ""
    alias: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    gates: dict[str, Any] = field(default_factory=dict)
    cache_key: str = ""
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("metrics", "champion_metrics"):
            d[key] = {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in d[key].items()
            }
        return d


# ---------------------------------------------------------------------- lock
@contextlib.contextmanager
def retrain_lock(settings: Settings, wait: bool = False) -> Iterator[None]:
    """One retrain at a time per project: a second one is refused (or waits with ``wait``)."""
    lock_dir = settings.root / ".edgeloop" / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / "retrain.lock"
    with open(path, "a+", encoding="utf-8") as f:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(f, flags)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            raise BusyError(
                f"another retrain is running ({holder}); wait for it to finish (its run is in"
                f" MLflow), or pass --wait to queue behind it. Lock: {path}"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {datetime.now(UTC).isoformat(timespec='seconds')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------- data
def current_dataset(settings: Settings) -> tuple[str, pd.DataFrame]:
    """The dataset at the DVC version in ``data.dvc``; refuses a work tree that differs from it."""
    from edgeloop.data.store import DataStore

    version = dataset_version(settings)
    return version, DataStore(settings).load_dataset()


def dataset_version(settings: Settings) -> str:
    """The DVC version ``data.dvc`` names, checked against the work tree (nothing is loaded)."""
    from edgeloop.data.versioning import DataVersioner

    versioner = DataVersioner(settings)
    version = versioner.version()
    if not version:
        raise EdgeloopError(f"{versioner.pointer}: no dataset version yet (run 'edgeloop init')")
    if not versioner.is_clean():
        raise EdgeloopError(
            f"{settings.path('data')} differs from {versioner.pointer} ({version}): run"
            " 'edgeloop ingest' (which versions it) or 'dvc checkout' before retraining"
        )
    return version


def code_hash(root: Path) -> str:
    """Hash of the training code: a change to it invalidates the cache."""
    h = hashlib.sha256()
    base = Path(__file__).resolve().parents[2]
    for rel in TRAINING_CODE:
        h.update((base / rel).read_bytes())
    return h.hexdigest()[:16]


def training_config(settings: Settings) -> dict[str, Any]:
    """The part of the config a model depends on (its hash is part of the cache key)."""
    d = settings.to_dict()
    return {k: d[k] for k in ("schema", "training", "gates", "seeds")} | {
        "model": settings.model_name
    }


def cache_key(settings: Settings, data_version: str, max_rows: int) -> str:
    blob = json.dumps(
        {
            "data": data_version,
            "config": training_config(settings),
            "code": code_hash(settings.root),
            "max_rows": max_rows,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def find_cached(settings: Settings, key: str) -> Any | None:
    """The newest completed retrain (registered or rejected) with the same cache key, if any.

    A run whose process died before it registered or was rejected does not count: its inputs
    are retrained.
    """
    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import ensure_experiment

    exp = ensure_experiment(settings, TRAINING_EXPERIMENT)
    runs = MlflowClient().search_runs(
        [exp],
        filter_string=f"tags.`edgeloop.cache_key` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    done = [r for r in runs if r.data.tags.get("edgeloop.decision") in ("registered", "rejected")]
    return done[0] if done else None


def cached_summary(hit: Any, data_version: str, key: str, notes: list[str]) -> RetrainSummary:
    """What a skipped retrain reports: the finished run with the same inputs."""
    tags = hit.data.tags
    decision = tags.get("edgeloop.decision", "")
    version = tags.get("edgeloop.registered_version", "")
    metrics = {k: v for k, v in hit.data.metrics.items() if not k.startswith("champion_")}
    message = (
        f"skipped: data {data_version[:12]}, config and training code unchanged since run"
        f" {hit.info.run_id} ({decision}{f', v{version}' if version else ''}); --force retrains"
    )
    if decision == "rejected":
        message += f"; that candidate was rejected: {tags.get('mlflow.note.content', '')}"
    return RetrainSummary(
        status="cached",
        reason=tags.get("edgeloop.reason", ""),
        data_version=data_version,
        run_id=hit.info.run_id,
        version=version,
        metrics=metrics,
        cache_key=key,
        notes=notes,
        message=message,
        gates={"passed": decision != "rejected"},
    )


def quick_cache_check(settings: Settings, max_rows: int) -> RetrainSummary | None:
    """The cached outcome of a retrain with these inputs, found without Prefect or training
    imports (DVC and MLflow only); ``None`` when the retrain has to run.

    The CLI asks this first, so an unchanged project answers in seconds instead of starting
    the orchestration stack. Orphan runs are not a concern: only finished, decided runs count.
    """
    from edgeloop.tracking.store import configure

    configure(settings)
    version = dataset_version(settings)
    key = cache_key(settings, version, max_rows)
    hit = find_cached(settings, key)
    return None if hit is None else cached_summary(hit, version, key, [])


def close_orphan_runs(settings: Settings) -> list[str]:
    """Runs a killed retrain left behind (we hold the lock, so none of them is still going)."""
    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import ensure_experiment

    # The experiment first: it points this process's MLflow at the project's store.
    exp = ensure_experiment(settings, TRAINING_EXPERIMENT)
    client = MlflowClient()
    notes = []
    recent = client.search_runs([exp], order_by=["attributes.start_time DESC"], max_results=200)
    for r in recent:
        if r.data.tags.get("edgeloop.decision"):
            continue
        client.set_tag(r.info.run_id, "edgeloop.decision", "interrupted")
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, status="KILLED")
        notes.append(f"run {r.info.run_id} was interrupted before a decision: tagged 'interrupted'")
    return notes


# ---------------------------------------------------------------------- training
@dataclass
class Trained:
    """A fitted candidate and its evaluation on the fixed holdout."""

    model: Any
    split: Split
    y_true: Any
    y_pred: Any
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    gates: GateResult
    seconds: dict[str, float]


def train_and_evaluate(
    settings: Settings,
    dataset: pd.DataFrame,
    *,
    max_rows: int = 0,
    champion: Any = None,
    fitting: FitWorker | None = None,
) -> Trained:
    """Split, fit, evaluate candidate and champion on the same holdout, check the gates.

    With ``fitting`` (a worker fitting on the same data version, see ``edgeloop.models.fit_worker``)
    the model and its holdout predictions come from it; otherwise the fit runs here.
    """
    from pipelines import evaluate as ev
    from pipelines import train as tr

    training = settings.training
    if max_rows:
        training = training.model_copy(update={"max_rows": max_rows})
    schema = settings.data_schema
    t0 = time.perf_counter()
    split = tr.split(dataset, schema, training, settings.seeds.split)
    t1 = time.perf_counter()
    faults.point("train")
    # What logging the model will need is imported while the model fits (in its worker, or in
    # scikit-learn's C code here, off the GIL).
    runtime.preimport("mlflow.sklearn", "skops.io", "matplotlib.figure")
    x_hold = tr.features(split.holdout, schema)
    seconds = {"split_seconds": t1 - t0}
    if fitting is None:
        model = tr.fit(split.train, schema, training, settings.seeds.train)
        seconds["fit_seconds"] = seconds["fit_wait_seconds"] = time.perf_counter() - t1
        y_pred = model.predict(x_hold)
    else:
        fitted = fitting.result()
        if len(fitted.holdout_predicted) != len(split.holdout):
            raise EdgeloopError(
                f"the fit worker predicted {len(fitted.holdout_predicted)} holdout rows, the"
                f" retrain has {len(split.holdout)}: the data changed during the retrain"
            )
        model, y_pred = fitted.model, fitted.holdout_predicted
        seconds["fit_seconds"] = fitted.fit_seconds
        seconds["fit_wait_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    y_true = tr.target(split.holdout, schema)
    metrics = ev.evaluate(y_true, y_pred, split.holdout, schema, list(training.slices))
    metrics["train_rows"] = float(len(split.train))
    champ = None
    if champion is not None:
        champ = ev.evaluate(
            y_true, champion.predict(x_hold), split.holdout, schema, list(training.slices)
        )
    gates = ev.check_gates(metrics, champ, settings.gates)
    seconds["evaluate_seconds"] = time.perf_counter() - t2
    return Trained(model, split, y_true, y_pred, metrics, champ, gates, seconds)


def _trusted_types(model: Any) -> list[str]:
    """Types skops must be told to trust: our own pipeline's, listed at save time."""
    import skops.io

    return list(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def log_retrain(
    settings: Settings,
    trained: Trained,
    *,
    data_version: str,
    key: str,
    reason: str,
    force: bool,
    max_rows: int,
    flow_run_id: str,
    flow_run_url: str,
) -> tuple[str, str]:
    """One MLflow run: params, metrics, artifacts, lineage, the model. Returns (run id, model uri)."""
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature

    from edgeloop.data.versioning import git_info
    from edgeloop.tracking.store import ensure_experiment
    from pipelines import evaluate as ev
    from pipelines import train as tr

    exp = ensure_experiment(settings, TRAINING_EXPERIMENT)
    git = git_info(settings.root)
    schema = settings.data_schema
    training = settings.training
    with mlflow.start_run(experiment_id=exp, run_name=f"retrain {data_version[:8]}") as run:
        mlflow.set_tags(
            {
                "edgeloop.kind": "retrain",
                "edgeloop.reason": reason,
                "edgeloop.cache_key": key,
                "dvc.data_version": data_version,
                "git.commit": git.commit,
                "git.dirty": str(git.dirty).lower(),
                "prefect.flow_run_id": flow_run_id,
                "prefect.flow_run_url": flow_run_url,
                "config_hash": settings.config_hash(),
                "code_hash": code_hash(settings.root),
                "seed.split": str(settings.seeds.split),
                "seed.train": str(settings.seeds.train),
            }
        )
        mlflow.log_params(
            {
                "estimator": training.estimator,
                **{f"param.{k}": v for k, v in sorted(training.params.items())},
                "holdout_fraction": training.holdout_fraction,
                "max_rows": max_rows or training.max_rows,
                "seed_split": settings.seeds.split,
                "seed_train": settings.seeds.train,
                "data_version": data_version,
                "force": force,
                "gate_metric": settings.gates.metric,
                "gate_max_regression": settings.gates.max_regression,
            }
        )
        mlflow.log_metrics({k: v for k, v in trained.metrics.items()})
        champ = trained.champion_metrics or {}
        mlflow.log_metrics(
            {
                f"champion_{k}": champ.get(k, math.nan)
                for k in ("accuracy", "macro_f1", "weighted_f1")
            }
        )
        mlflow.log_metrics(trained.seconds)
        for c in trained.gates.checks:
            mlflow.set_tag(f"gate.{c.name}", "passed" if c.passed else "failed")
            mlflow.set_tag(f"gate.{c.name}.detail", c.detail)
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            fig = ev.confusion_figure(
                trained.y_true,
                trained.y_pred,
                list(schema.classes),
                f"holdout, data {data_version[:8]}",
            )
            fig.savefig(t / "confusion_matrix.png")
            import matplotlib.pyplot as plt

            plt.close(fig)
            rows = [
                {
                    "metric": k,
                    "candidate": v,
                    "champion": champ.get(k),
                    "delta": v - champ[k] if k in champ else None,
                }
                for k, v in sorted(trained.metrics.items())
            ]
            pd.DataFrame(rows).to_csv(t / "metrics.csv", index=False)
            (t / "gates.json").write_text(
                json.dumps(trained.gates.to_dict(), indent=2, default=str)
            )
            mlflow.log_artifacts(str(t), artifact_path="evaluation")
        if settings.source and Path(settings.source).exists():
            mlflow.log_artifact(str(settings.source), artifact_path="config")
        pointer = settings.path("data").with_suffix(".dvc")
        if pointer.exists():
            mlflow.log_artifact(str(pointer), artifact_path="lineage")
        x_example = tr.features(trained.split.train.head(5), schema)
        # Numeric inputs as double in the signature: an integer column that one day carries a
        # null arrives as float, which an int64 schema would reject at serving time.
        numeric = list(schema.numeric)
        x_example = x_example.astype({c: "float64" for c in numeric})
        signature = infer_signature(x_example, trained.model.predict_proba(x_example))
        info = mlflow.sklearn.log_model(
            trained.model,
            name="model",
            signature=signature,
            input_example=x_example,
            # Inferring requirements costs ~7 s; these are the ones the model needs.
            pip_requirements=_requirements(),
            serialization_format="skops",
            skops_trusted_types=_trusted_types(trained.model),
            # `mlflow models serve` and pyfunc then return class probabilities.
            pyfunc_predict_fn="predict_proba",
        )
        mlflow.set_tag("mlflow.note.content", f"{reason}: {trained.gates.summary()}")
        return run.info.run_id, info.model_uri


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "skops", "numpy", "pandas", "scipy")]


# ---------------------------------------------------------------------- lineage
def lineage(settings: Settings, ref: str | None) -> dict[str, Any]:
    """Everything a model was made from: data version, code, config, seed, flow run, history."""
    from edgeloop.tracking.registry import Registry

    reg = Registry(settings)
    version = reg.resolve(ref)
    mv = reg.version(version)
    run = reg.client.get_run(mv.run_id)
    tags = run.data.tags
    aliases = [a for a, v in reg.aliases().items() if v == version]
    history = [e.to_dict() for e in reg.history() if e.version == version or e.previous == version]
    return {
        "model": reg.name,
        "version": version,
        "aliases": aliases,
        "status": (mv.tags or {}).get("edgeloop.status", ""),
        "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(
            timespec="seconds"
        ),
        "run_id": mv.run_id,
        "data_version": tags.get("dvc.data_version"),
        "git_commit": tags.get("git.commit"),
        "git_dirty": tags.get("git.dirty") == "true",
        "prefect_flow_run_id": tags.get("prefect.flow_run_id"),
        "prefect_flow_run_url": tags.get("prefect.flow_run_url"),
        "config_hash": tags.get("config_hash"),
        "code_hash": tags.get("code_hash"),
        "seed_split": tags.get("seed.split"),
        "seed_train": tags.get("seed.train"),
        "reason": tags.get("edgeloop.reason"),
        "metrics": {
            k: run.data.metrics[k]
            for k in ("accuracy", "macro_f1", "weighted_f1")
            if k in run.data.metrics
        },
        "alias_history": history,
    }


def reproduce(settings: Settings, ref: str) -> dict[str, Any]:
    """Rebuild a registered model from its MLflow record and compare it with the original.

    Restores the run's dataset version through DVC (beside ``data/``, which is left alone),
    uses the config snapshot logged with the run, retrains with the same seeds, and compares
    holdout metrics and predictions.
    """
    import shutil

    from edgeloop.tracking.registry import Registry

    reg = Registry(settings)
    version = reg.resolve(ref)
    mv = reg.version(version)
    run = reg.client.get_run(mv.run_id)
    # DVC refuses a .dvc file in a git-ignored folder, so the workspace is a visible folder at
    # the root, removed when done (the restored data stays in the DVC cache).
    work = settings.root / f".reproduce-v{version}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        return _reproduce_in(settings, reg, version, mv, run, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reproduce_in(
    settings: Settings, reg: Any, version: str, mv: Any, run: Any, work: Path
) -> dict[str, Any]:
    import shutil

    import numpy as np
    import yaml

    from edgeloop.core.config import settings_from_dict
    from edgeloop.data.store import DataStore
    from edgeloop.data.versioning import DataVersioner
    from pipelines import train as tr

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
    dataset = DataStore(repro).load_dataset()
    max_rows = int(float(run.data.params.get("max_rows", "0")))
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
    agreement = float(np.mean(model.predict(x) == trained.model.predict(x)))
    code_now = code_hash(settings.root)
    return {
        "model": reg.name,
        "version": version,
        "run_id": mv.run_id,
        "data_version": run.data.tags.get("dvc.data_version"),
        "data_restored": restored,
        "code_hash_then": run.data.tags.get("code_hash"),
        "code_hash_now": code_now,
        "code_same": run.data.tags.get("code_hash") == code_now,
        "git_commit_then": run.data.tags.get("git.commit"),
        "metrics_match": not diffs,
        "metric_differences": diffs,
        "prediction_agreement": agreement,
        "holdout_rows": len(trained.split.holdout),
        "macro_f1": trained.metrics.get("macro_f1"),
    }


def models_status(settings: Settings) -> dict[str, Any]:
    """Champion, challenger and previous champion: version, metrics, data version, age."""
    from edgeloop.tracking.registry import Registry

    reg = Registry(settings)
    aliases = reg.aliases()
    if not aliases:
        return {}
    last_move = {e.alias: e.at for e in reg.history()}
    now = datetime.now(UTC)
    out: dict[str, Any] = {}
    for alias in ("champion", "challenger", "previous-champion"):
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
            "data_version": run.data.tags.get("dvc.data_version"),
            "alias_since": since,
            "age_hours": round(age.total_seconds() / 3600, 2),
            "run_id": mv.run_id,
        }
    return out
