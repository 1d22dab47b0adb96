"""Label quality: which labeled rows look mislabeled (Confident Learning, with cleanlab).

Every labeled row gets out-of-sample class probabilities: the project's own pipeline
(``pipelines.train.build_pipeline``, same estimator, params and seed) fitted ``folds`` times by
seeded K-fold cross-validation, each row predicted by the model that did not see it.
``cleanlab.filter.find_label_issues`` (Northcutt, Jiang & Chuang, *Confident Learning*, JAIR
2021) then flags the rows whose given label disagrees with what the rest of the data says,
beyond the per-class noise rates it estimates; ``cleanlab.rank.get_label_quality_scores`` gives
each row a score in [0, 1] (low = likely wrong). A flag is a question for a person, not a
correction: the caller queues the row for review and may keep it out of training until then.

Regression (``schema.task: regression``): every labeled row gets an out-of-sample *prediction*
the same way (``cross_val_predict`` of the project's regressor). A row is suspect when its
residual (label - prediction) is an outlier among all residuals: its modified z-score,
``|r - median(r)| / (1.4826 MAD(r))``, is above ``SUSPECT_Z`` (3.5, Iglewicz & Hoaglin's rule;
robust, so the wrong labels themselves do not widen the yardstick). ``quality`` is cleanlab's
regression label-quality score (``cleanlab.regression.rank.get_label_quality_scores``, the
default OUTRE method, in [0, 1], low = likely wrong); ``suggested`` is the prediction, and
``p_given``/``p_suggested`` are NaN (there are no probabilities). cleanlab's
``regression.learn.CleanLearning`` is not used: it refits the model for every candidate share
of noisy rows (dozens of forests), for flags the residual rule gives from one cross-validation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, cross_val_predict

from edgeloop.core.config import SchemaSettings, TrainingSettings
from edgeloop.core.errors import TrainingError
from edgeloop.core.keys import ROW_ID
from pipelines.train import build_pipeline, features, target

#: Regression: a residual with a modified z-score above this flags its row (module docstring).
SUSPECT_Z = 3.5
#: The MAD of a normal sample is 0.6745 of its standard deviation: 1 / 0.6745.
_MAD_TO_STD = 1.4826

#: Columns of ``label_issues``' frame.
ISSUE_COLUMNS = ("row_id", "given", "suggested", "quality", "p_given", "p_suggested", "suspect")


@dataclass(frozen=True)
class LabelIssues:
    """One row per scored labeled row (``ISSUE_COLUMNS``), and how they were scored."""

    rows: pd.DataFrame
    folds: int
    classes: list[str]

    @property
    def suspects(self) -> pd.DataFrame:
        return self.rows[self.rows["suspect"]].reset_index(drop=True)


def out_of_sample_probabilities(
    frame: pd.DataFrame,
    schema: SchemaSettings,
    training: TrainingSettings,
    *,
    folds: int,
    seed: int,
) -> np.ndarray:
    """``P(class | row)`` for every row of ``frame`` (labeled rows), from a model that did not
    train on it; columns in ``schema.classes`` order (0 for a class a fold never saw)."""
    if len(frame) < folds:
        raise TrainingError(f"{len(frame)} labeled rows: too few for {folds}-fold scoring")
    y = np.asarray(target(frame, schema)).astype("str")
    pipe = build_pipeline(schema, training, seed)
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A fold without some rare class: sklearn warns and fills its column with zeros.
        warnings.simplefilter("ignore", UserWarning)
        probs = cross_val_predict(pipe, features(frame, schema), y, cv=cv, method="predict_proba")
    seen = sorted(set(y))  # cross_val_predict's columns: the labels' sorted classes
    out = np.zeros((len(frame), len(schema.classes)))
    index = {c: j for j, c in enumerate(seen)}
    for k, c in enumerate(str(c) for c in schema.classes):
        if c in index:
            out[:, k] = probs[:, index[c]]
    return out


def label_issues(frame: pd.DataFrame, probs: np.ndarray, schema: SchemaSettings) -> LabelIssues:
    """Flag the rows of ``frame`` whose label looks wrong given ``probs`` (out of sample).

    Confident Learning needs each class's own rows to estimate its noise rate, so it runs on the
    classes that have labeled rows (columns renormalised over them); ``suggested`` is the most
    likely class. Inputs are not modified.
    """
    from cleanlab.filter import find_label_issues  # lazy: cleanlab costs ~1 s to import
    from cleanlab.rank import get_label_quality_scores

    classes = [str(c) for c in schema.classes]
    given = np.asarray(target(frame, schema)).astype("str")
    present = [c for c in classes if c in set(given)]
    cols = [classes.index(c) for c in present]
    p = np.asarray(probs, dtype="float64")[:, cols]
    total = p.sum(axis=1, keepdims=True)
    p = np.divide(p, total, out=np.full_like(p, 1.0 / max(len(present), 1)), where=total > 0)
    codes = np.array([present.index(g) for g in given], dtype="int64")
    if len(present) < 2:
        flagged = np.zeros(len(frame), dtype=bool)
        quality = np.ones(len(frame))
    else:
        with warnings.catch_warnings():
            # "May not flag all label issues in class k": a class with very few rows.
            warnings.simplefilter("ignore", UserWarning)
            # n_jobs=1: cleanlab's process pool would fork the caller (a Prefect flow, whose
            # signal handlers the workers inherit) for a job that takes milliseconds here.
            flagged = np.asarray(find_label_issues(codes, p, n_jobs=1), dtype=bool)
            quality = np.asarray(get_label_quality_scores(codes, p), dtype="float64")
    best = p.argmax(axis=1)
    rows = np.arange(len(frame))
    out = pd.DataFrame(
        {
            "row_id": frame[ROW_ID].astype("str").to_numpy(),
            "given": given,
            "suggested": np.asarray(present, dtype=object)[best] if present else given,
            "quality": quality,
            "p_given": p[rows, codes] if present else np.ones(len(frame)),
            "p_suggested": p[rows, best] if present else np.ones(len(frame)),
            "suspect": flagged,
        }
    )
    return LabelIssues(out, folds=0, classes=present)


def out_of_sample_predictions(
    frame: pd.DataFrame,
    schema: SchemaSettings,
    training: TrainingSettings,
    *,
    folds: int,
    seed: int,
) -> np.ndarray:
    """Regression: the prediction for every row of ``frame`` (labeled rows) from a model that
    did not train on it (the project's pipeline, seeded K-fold)."""
    if len(frame) < folds:
        raise TrainingError(f"{len(frame)} labeled rows: too few for {folds}-fold scoring")
    y = target(frame, schema)
    pipe = build_pipeline(schema, training, seed)
    cv = KFold(n_splits=folds, shuffle=True, random_state=seed)
    pred: np.ndarray = cross_val_predict(pipe, features(frame, schema), y, cv=cv)
    return np.asarray(pred, dtype="float64")


def regression_label_issues(
    frame: pd.DataFrame, predictions: np.ndarray, schema: SchemaSettings
) -> LabelIssues:
    """Flag the rows of ``frame`` whose label is far from its out-of-sample prediction
    (module docstring). Inputs are not modified."""
    from cleanlab.regression.rank import get_label_quality_scores  # lazy: ~1 s to import

    given = target(frame, schema)
    pred = np.asarray(predictions, dtype="float64")
    residual = given - pred
    mad = float(np.median(np.abs(residual - np.median(residual))))
    if mad > 0:
        z = np.abs(residual - np.median(residual)) / (_MAD_TO_STD * mad)
        flagged = z > SUSPECT_Z
    else:  # (nearly) every prediction exact: only rows that differ at all stand out
        flagged = np.abs(residual - np.median(residual)) > 0
    quality = (
        np.asarray(get_label_quality_scores(given, pred), dtype="float64")
        if len(frame) > 1
        else np.ones(len(frame))
    )
    nan = np.full(len(frame), np.nan)
    out = pd.DataFrame(
        {
            "row_id": frame[ROW_ID].astype("str").to_numpy(),
            "given": given,
            # Six significant digits: what a reviewer reads, not float noise.
            "suggested": [float(f"{v:.6g}") for v in pred],
            "quality": quality,
            "p_given": nan,
            "p_suggested": nan,
            "suspect": np.asarray(flagged, dtype=bool),
        }
    )
    return LabelIssues(out, folds=0, classes=[])


def score_labels(
    frame: pd.DataFrame,
    schema: SchemaSettings,
    training: TrainingSettings,
    *,
    folds: int,
    seed: int,
) -> LabelIssues:
    """``out_of_sample_probabilities`` then ``label_issues`` on the labeled rows of ``frame``
    (regression: ``out_of_sample_predictions`` then ``regression_label_issues``)."""
    labeled = frame[frame[schema.target].notna()]
    if schema.is_regression:
        pred = out_of_sample_predictions(labeled, schema, training, folds=folds, seed=seed)
        found = regression_label_issues(labeled, pred, schema)
        return LabelIssues(found.rows, folds=folds, classes=[])
    probs = out_of_sample_probabilities(labeled, schema, training, folds=folds, seed=seed)
    found = label_issues(labeled, probs, schema)
    return LabelIssues(found.rows, folds=folds, classes=found.classes)


def precision_recall(flagged: Any, wrong: Any) -> tuple[float, float]:
    """Precision and recall of ``flagged`` against the truly ``wrong`` rows (NaN when empty)."""
    f, w = np.asarray(flagged, dtype=bool), np.asarray(wrong, dtype=bool)
    hits = float((f & w).sum())
    precision = hits / f.sum() if f.sum() else float("nan")
    recall = hits / w.sum() if w.sum() else float("nan")
    return precision, recall
