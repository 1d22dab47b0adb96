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
from edgeloop.core.config import SchemaSettings, Settings
from edgeloop.core.errors import EdgeloopError, TrainingError
from edgeloop.core.keys import TRAINING_EXPERIMENT
from edgeloop.models.cache import code_hash

if TYPE_CHECKING:
    import pandas as pd

    from edgeloop.models.fit_worker import FitWorker
    from pipelines.evaluate import GateResult
    from pipelines.performance import ConfidenceCalibration
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
    #: Top-1 confidence -> P(correct) of the candidate and of the champion, both fitted on this
    #: holdout (``pipelines.performance``): the monitor's label-free estimates (CBPE) use them.
    calibration: ConfidenceCalibration | None = None
    champion_calibration: ConfidenceCalibration | None = None
    #: The holdout's groups (``pipelines.evaluate.holdout_groups``): recent batches, weighting,
    #: and per batch of the holdout its rows, share of the present and both models' accuracy.
    holdout: dict[str, Any] = field(default_factory=dict)


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
    from pipelines import paired
    from pipelines import train as tr

    training = settings.training
    if max_rows:
        training = training.model_copy(update={"max_rows": max_rows})
    if training.fit:
        runtime.project_importable(settings.root)
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
    weights, holdout = _row_weights(settings, dataset, split.holdout)
    groups = ev.holdout_groups(
        split.holdout,
        _batch_rows(dataset),
        recent_batches=training.recent_batches,
        reference_share=training.reference_share,
        row_weight=weights,
    )
    slices = list(training.slices)
    metrics = ev.evaluate(y_true, y_pred, split.holdout, schema, slices, groups)
    metrics["train_rows"] = float(len(split.train))
    champ = champ_pred = delta_se = None
    if champion is not None:
        champ_pred = champion.predict(x_hold)
        champ = ev.evaluate(y_true, champ_pred, split.holdout, schema, slices, groups)
        delta_se = paired.delta_standard_errors(
            y_true,
            y_pred,
            champ_pred,
            split.holdout,
            groups,
            list(schema.classes),
            settings.gates.metric,
            seed=settings.seeds.split,
        )
    holdout |= _holdout_summary(split.holdout, groups, y_true, y_pred, champ_pred, schema)
    if delta_se is not None:
        holdout["delta_se"] = {g: round(v, 4) for g, v in delta_se.items() if not math.isnan(v)}
    baseline = ev.baseline_metrics(
        tr.target(split.train, schema),
        y_true,
        split.holdout,
        schema,
        list(training.slices),
        settings.gates.baseline,
        settings.seeds.train,
        train_frame=split.train,
    )
    gates = ev.check_gates(metrics, champ, settings.gates, baseline, delta_se)
    seconds["evaluate_seconds"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    # The label-free estimates calibrate a classifier's confidence; regression has none.
    calibration, champion_calibration = (
        (None, None)
        if schema.is_regression
        else _calibrations(model, champion, x_hold, y_true, settings.seeds.split)
    )
    seconds["calibration_seconds"] = time.perf_counter() - t3
    return Trained(
        model,
        split,
        y_true,
        y_pred,
        metrics,
        champ,
        gates,
        seconds,
        baseline,
        calibration=calibration,
        champion_calibration=champion_calibration,
        holdout=holdout,
    )


#: Holdout rows a calibration is fitted on at most (a seeded sample of a larger holdout): its
#: 101 confidence cells are well filled by then, and the extra ``predict_proba`` stays cheap.
CALIBRATION_MAX_ROWS = 20_000


def _calibrations(
    model: Any, champion: Any, x_hold: Any, y_true: Any, seed: int
) -> tuple[ConfidenceCalibration, ConfidenceCalibration | None]:
    """Candidate's and champion's confidence calibrations on the same holdout rows.

    The champion is recalibrated here, on the candidate's holdout, so the monitor compares the
    two models' estimates through calibrations fitted on the same rows (on the demo stream this
    made the estimated challenger-minus-champion difference closer to the true one: docs/loop.md).
    """
    import numpy as np

    from pipelines import performance as pf

    if len(x_hold) > CALIBRATION_MAX_ROWS:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(x_hold), CALIBRATION_MAX_ROWS, replace=False))
        x_hold, y_true = x_hold.iloc[keep], np.asarray(y_true)[keep]
    champ = pf.model_calibration(champion, x_hold, y_true) if champion is not None else None
    return pf.model_calibration(model, x_hold, y_true), champ


# ---------------------------------------------------------------------- holdout groups
def _batch_rows(dataset: pd.DataFrame) -> dict[str, int]:
    """Every production batch of the dataset in arrival order, with its rows (its traffic)."""
    if keys.BATCH_ID not in dataset.columns:
        return {}
    batch = dataset[keys.BATCH_ID].astype("str")
    counts = batch.value_counts()
    return {b: int(counts[b]) for b in batch.unique() if b != keys.REFERENCE_BATCH}


def _row_weights(
    settings: Settings, dataset: pd.DataFrame, holdout: pd.DataFrame
) -> tuple[Any, dict[str, Any]]:
    """1 / inclusion probability of each holdout row, and what it rests on.

    Rows labeled at ingest and edge cases count 1 (their labels did not depend on a draw);
    an evaluation-sample row counts 1 / (q x the share of its batch's sample labeled so far:
    pending labels are taken as missing at random within the batch). The queue lives in the
    data folder, so the weights follow from the data version. Labeled rows of queue files
    written before ``inclusion_prob`` count 1 too (``unknown_inclusion_rows``: biased towards
    the champion's hard rows).
    """
    import numpy as np
    import pandas as pd

    from edgeloop.core.layout import Layout

    mode = settings.training.holdout_weights
    ones = np.ones(len(holdout))
    info: dict[str, Any] = {"weights": mode, "unknown_inclusion_rows": 0}
    files = sorted(Layout.of(settings).queue.glob("*.parquet"))
    if mode == "uniform" or not files or "label_source" not in holdout.columns:
        return ones, info
    prob_col, purpose_col = keys.QUEUE_INCLUSION_PROB, keys.QUEUE_PURPOSE
    queue = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    queue = queue.reindex(columns=[keys.ROW_ID, keys.BATCH_ID, prob_col, purpose_col])
    queue[keys.ROW_ID] = queue[keys.ROW_ID].astype("str")
    queue = queue.drop_duplicates(keys.ROW_ID, keep="last")
    target = settings.data_schema.target
    labeled = set(dataset.loc[dataset[target].notna(), keys.ROW_ID].astype("str"))
    is_sample = queue[purpose_col] == keys.PURPOSE_EVALUATION
    sample = queue[is_sample]
    done = sample[keys.ROW_ID].isin(labeled).groupby(sample[keys.BATCH_ID]).mean()
    share = queue[keys.BATCH_ID].map(done).where(is_sample)
    queue["p"] = queue[prob_col].astype("float64") * share.fillna(1.0).astype("float64")
    by_id = queue.set_index(keys.ROW_ID)["p"]
    ids = holdout[keys.ROW_ID].astype("str")
    annotated = ((holdout["label_source"] == "annotation") & ids.isin(by_id.index)).to_numpy()
    prob = ids.map(by_id).to_numpy(dtype="float64", na_value=np.nan)
    known = annotated & ~np.isnan(prob) & (prob > 0)
    weights = ones.copy()
    weights[known] = 1.0 / np.minimum(prob[known], 1.0)
    info["unknown_inclusion_rows"] = int((annotated & ~known).sum())
    return weights, info


def _holdout_summary(
    holdout: pd.DataFrame,
    groups: Any,
    y_true: Any,
    y_pred: Any,
    champ_pred: Any,
    schema: SchemaSettings,
) -> dict[str, Any]:
    """The groups' rows and, per batch of the holdout, its rows, share and both accuracies
    (regression: both mean absolute errors, ``mae`` / ``champion_mae``)."""
    import numpy as np

    if schema.is_regression:
        y = np.asarray(y_true, dtype="float64")
        right = -np.abs(np.asarray(y_pred, dtype="float64") - y)
        champ_right = (
            None if champ_pred is None else -np.abs(np.asarray(champ_pred, dtype="float64") - y)
        )
        score, champ_score = "mae", "champion_mae"
    else:
        right = np.asarray(y_pred) == np.asarray(y_true)
        champ_right = None if champ_pred is None else np.asarray(champ_pred) == np.asarray(y_true)
        score, champ_score = "accuracy", "champion_accuracy"
    sign = -1.0 if schema.is_regression else 1.0

    batch = (
        holdout[keys.BATCH_ID].astype("str").to_numpy()
        if keys.BATCH_ID in holdout.columns
        else np.full(len(holdout), keys.REFERENCE_BATCH, dtype=object)
    )
    present = groups.weights["present_weighted"]
    batches = []
    for b in dict.fromkeys(batch.tolist()):
        inside = batch == b
        champ_acc = (
            None if champ_right is None else round(sign * float(champ_right[inside].mean()), 4)
        )
        batches.append(
            {
                "batch": b,
                "rows": int(inside.sum()),
                "present_share": round(float(present[inside].sum()), 4),
                "recent": b in groups.recent_batches,
                score: round(sign * float(right[inside].mean()), 4),
                champ_score: champ_acc,
            }
        )
    return {
        "recent_batches": list(groups.recent_batches),
        "reference_share": groups.reference_share,
        "rows": {g: groups.rows(g) for g in groups.weights},
        "effective_rows": {g: round(groups.effective_rows(g), 1) for g in groups.weights},
        "batches": batches,
    }


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
                keys.TAG_CODE_HASH: code_hash(settings.root, settings.training.fit),
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
                # The holdout groups: with the seed and the data version they fix every weight.
                "holdout_min_per_batch": training.holdout_min_per_batch,
                "recent_batches": training.recent_batches,
                "reference_share": training.reference_share,
                "holdout_weights": training.holdout_weights,
                "gate_compare_on": settings.gates.compare_on,
                "gate_floors_on": settings.gates.floors_on,
                "gate_reference_max_regression": settings.gates.reference_max_regression,
                "gate_non_inferiority_confidence": settings.gates.non_inferiority_confidence,
                "recent_holdout_batches": ",".join(trained.holdout.get("recent_batches", [])),
            }
        )
        mlflow.log_metrics({k: v for k, v in trained.metrics.items()})
        mlflow.log_metrics(trained.baseline_metrics)
        champ = trained.champion_metrics or {}
        scores = ev.REGRESSION_SCORES if schema.is_regression else ev.SCORES
        grouped = [f"{g}{k}" for g in ("", *ev.GROUP_PREFIXES.values()) for k in scores]
        mlflow.log_metrics({f"champion_{k}": champ.get(k, math.nan) for k in grouped})
        mlflow.log_metric(
            "unknown_inclusion_rows", trained.holdout.get("unknown_inclusion_rows", 0)
        )
        mlflow.log_metrics(trained.seconds)
        for c in trained.gates.checks:
            mlflow.set_tag(f"{keys.TAG_GATE_PREFIX}{c.name}", "passed" if c.passed else "failed")
            mlflow.set_tag(f"{keys.TAG_GATE_PREFIX}{c.name}.detail", c.detail)
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            title = f"holdout, data {data_version[:8]}"
            fig = (
                ev.residual_figure(trained.y_true, trained.y_pred, title)
                if schema.is_regression
                else ev.confusion_figure(
                    trained.y_true, trained.y_pred, list(schema.classes), title
                )
            )
            name = "residuals.png" if schema.is_regression else "confusion_matrix.png"
            fig.savefig(t / name)
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
            (t / "holdout.json").write_text(json.dumps(trained.holdout, indent=2, default=str))
            mlflow.log_artifacts(str(t), artifact_path="evaluation")
        _log_calibrations(settings, trained)
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
        predict_fn = "predict" if schema.is_regression else "predict_proba"
        output = getattr(trained.model, predict_fn)(x_example)
        signature = infer_signature(x_example, output)
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
                # `mlflow models serve` and pyfunc then return class probabilities (values
                # for regression).
                pyfunc_predict_fn=predict_fn,
            )
        except MlflowException:
            _refuse_untrusted(training.estimator, trained.model)
            raise
        mlflow.set_tag(keys.TAG_NOTE, f"{reason}: {trained.gates.summary()}")
        return run.info.run_id, info.model_uri


def _log_calibrations(settings: Settings, trained: Trained) -> None:
    """The calibrations as small JSON artifacts (``keys.CALIBRATION_ARTIFACT``, and the
    champion's with its version); the monitor reads them for its label-free estimates."""
    import mlflow

    from edgeloop.tracking.registry import Registry

    if trained.calibration is not None:
        mlflow.log_dict(trained.calibration.to_dict(), keys.CALIBRATION_ARTIFACT)
    if trained.champion_calibration is not None:
        # The version holding the alias now: the one the flow loaded for this comparison,
        # unless a promotion ran within the retrain (no lock orders the two; it would only
        # mislabel an estimate that informs, never decides).
        version = Registry(settings).aliases().get(keys.CHAMPION, "")
        if version:
            mlflow.set_tag(keys.TAG_CHAMPION_VERSION, version)
            mlflow.log_dict(
                {"version": version, **trained.champion_calibration.to_dict()},
                keys.CHAMPION_CALIBRATION_ARTIFACT,
            )


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("scikit-learn", "skops", "numpy", "pandas", "scipy")]
