"""Retrain steps between the pipelines and the stores (used by ``flows/retrain.py``).

Fit and evaluate a candidate on the fixed holdout, then log the MLflow run with its fixed keys
and the model. The cache key and the lock are in ``models/cache.py``; lineage and
``reproduce`` read these records (``models/lineage.py``).

Imports inside the functions here are a measured hot path: MLflow's sklearn flavour, skops and
matplotlib are imported while the model fits (``runtime.preimport``, off the GIL), which keeps
a cold ``edgeloop retrain`` within 1.15x a bare scikit-learn script (benchmarks/bench_retrain.py).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop._internal import faults, runtime
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError, TrainingError
from edgeloop.core.keys import TRAINING_EXPERIMENT
from edgeloop.models.cache import code_hash

if TYPE_CHECKING:
    import pandas as pd

    from edgeloop.models.fit_worker import FitWorker
    from pipelines.evaluate import GateResult
    from pipelines.train import Split


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
    #: The trivial baseline (``gates.baseline``) on the same holdout, keys ``baseline_<metric>``.
    baseline_metrics: dict[str, float] = field(default_factory=dict)


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
    baseline = ev.baseline_metrics(
        tr.target(split.train, schema),
        y_true,
        split.holdout,
        schema,
        list(training.slices),
        settings.gates.baseline,
        settings.seeds.train,
    )
    gates = ev.check_gates(metrics, champ, settings.gates, baseline)
    seconds["evaluate_seconds"] = time.perf_counter() - t2
    return Trained(model, split, y_true, y_pred, metrics, champ, gates, seconds, baseline)


def _trusted_types(model: Any) -> list[str]:
    """Types skops is told to trust: edgeloop's fixed list for this model's estimator family."""
    from edgeloop.tracking import trusted

    return trusted.trusted_for_model(model)


def _refuse_untrusted(estimator: str, model: Any) -> None:
    """A model edgeloop would not load is an error naming the type, not MLflow's advice."""
    from edgeloop.tracking import trusted

    refused = trusted.untrusted_in_model(model)
    if refused:
        raise TrainingError(
            trusted.refusal(
                f"the model of training.estimator {estimator!r}", refused, "it was not logged"
            )
        ) from None


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
    from mlflow.exceptions import MlflowException
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
                keys.TAG_KIND: keys.KIND_RETRAIN,
                keys.TAG_REASON: reason,
                keys.TAG_CACHE_KEY: key,
                keys.TAG_DATA_VERSION: data_version,
                keys.TAG_GIT_COMMIT: git.commit,
                keys.TAG_GIT_DIRTY: str(git.dirty).lower(),
                keys.TAG_FLOW_RUN_ID: flow_run_id,
                keys.TAG_FLOW_RUN_URL: flow_run_url,
                keys.TAG_CONFIG_HASH: settings.config_hash(),
                keys.TAG_CODE_HASH: code_hash(settings.root),
                keys.TAG_SEED_SPLIT: str(settings.seeds.split),
                keys.TAG_SEED_TRAIN: str(settings.seeds.train),
            }
        )
        mlflow.log_params(
            {
                "estimator": training.estimator,
                **{f"param.{k}": v for k, v in sorted(training.params.items())},
                "holdout_fraction": training.holdout_fraction,
                keys.PARAM_MAX_ROWS: max_rows or training.max_rows,
                "seed_split": settings.seeds.split,
                "seed_train": settings.seeds.train,
                "data_version": data_version,
                "force": force,
                "gate_metric": settings.gates.metric,
                "gate_max_regression": settings.gates.max_regression,
                "gate_baseline": settings.gates.baseline,
                "split": training.split,
            }
        )
        mlflow.log_metrics({k: v for k, v in trained.metrics.items()})
        mlflow.log_metrics(trained.baseline_metrics)
        champ = trained.champion_metrics or {}
        mlflow.log_metrics({f"champion_{k}": champ.get(k, math.nan) for k in ev.SCORES})
        mlflow.log_metrics(trained.seconds)
        for c in trained.gates.checks:
            mlflow.set_tag(f"{keys.TAG_GATE_PREFIX}{c.name}", "passed" if c.passed else "failed")
            mlflow.set_tag(f"{keys.TAG_GATE_PREFIX}{c.name}.detail", c.detail)
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
            base = trained.baseline_metrics
            rows = [
                {
                    "metric": k,
                    "candidate": v,
                    "champion": champ.get(k),
                    "delta": v - champ[k] if k in champ else None,
                    "baseline": base.get(f"{ev.BASELINE_PREFIX}{k}"),
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
        # The raw input columns (a time column too when features derive from it: the Pipeline
        # derives them, so serving passes the raw column).
        x_example = tr.features(trained.split.train.head(5), schema)
        # Numeric inputs as double in the signature: an integer column that one day carries a
        # null arrives as float, which an int64 schema would reject at serving time. The same
        # for a time column of epoch seconds.
        numeric = list(schema.numeric)
        time_col = schema.time
        if (
            time_col is not None
            and time_col in x_example.columns
            and pd.api.types.is_numeric_dtype(x_example[time_col])
        ):
            numeric.append(time_col)
        x_example = x_example.astype({c: "float64" for c in numeric})
        signature = infer_signature(x_example, trained.model.predict_proba(x_example))
        try:
            info = mlflow.sklearn.log_model(
                trained.model,
                name="model",
                signature=signature,
                input_example=x_example,
                # Inferring requirements costs ~7 s; these are the ones the model needs.
                pip_requirements=_requirements(),
                serialization_format="skops",
                # MLflow checks the saved model loads with these: what edgeloop loads it with.
                skops_trusted_types=_trusted_types(trained.model),
                # `mlflow models serve` and pyfunc then return class probabilities.
                pyfunc_predict_fn="predict_proba",
            )
        except MlflowException:
            _refuse_untrusted(training.estimator, trained.model)
            raise
        mlflow.set_tag(keys.TAG_NOTE, f"{reason}: {trained.gates.summary()}")
        return run.info.run_id, info.model_uri


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "skops", "numpy", "pandas", "scipy")]
