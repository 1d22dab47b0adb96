"""Scoring stage: a model's output for a batch, one row per input row.

Classification: the predicted class, its probability (``confidence``), the margin to the
runner-up and every class's probability. Regression: the prediction, its ``spread`` (the
standard deviation of an ensemble's members' predictions: random forest, extra trees, bagging;
NaN for a model without members) and a ``confidence`` derived from it, ``1 - spread / scale``
clipped to [0, 1], where ``scale`` is the training target's standard deviation (recorded on the
fitted model, ``TARGET_SCALE_ATTR``): 1 when the members agree, 0 when they spread as widely as
the target itself. ``margin`` equals ``confidence`` there (there is no runner-up class), and
``scale`` repeats the model's scale on every row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from edgeloop.core.config import SchemaSettings

ROW_ID = "row_id"
BATCH_ID = "batch_id"
#: Attribute of a fitted regression model: the training target's standard deviation.
TARGET_SCALE_ATTR = "edgeloop_target_scale_"
#: Rows per chunk when an ensemble's members are predicted one by one (bounds the memory of
#: the members x rows matrix: 200 members x 20,000 rows = 32 MB).
_MEMBER_CHUNK = 20_000


def target_scale(model: Any) -> float:
    """The training target's standard deviation recorded on a fitted regression model (NaN
    when the model carries none)."""
    value = getattr(model, TARGET_SCALE_ATTR, None)
    return float(value) if value is not None else float("nan")


def _members(model: Any) -> tuple[Any, Any]:
    """(the transform before the estimator, the ensemble's members) or (None, None)."""
    from sklearn.ensemble import BaggingRegressor, ExtraTreesRegressor, RandomForestRegressor
    from sklearn.pipeline import Pipeline

    last = model.steps[-1][1] if isinstance(model, Pipeline) else model
    if not isinstance(last, (RandomForestRegressor, ExtraTreesRegressor, BaggingRegressor)):
        return None, None
    if isinstance(last, BaggingRegressor):
        pairs = zip(last.estimators_, last.estimators_features_, strict=True)
        members = [(lambda x, e=e, f=f: e.predict(x[:, f])) for e, f in pairs]
    else:
        members = [e.predict for e in last.estimators_]
    pre = model[:-1] if isinstance(model, Pipeline) else None
    return pre, members


def predict_with_spread(model: Any, x: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A regression model's predictions and the spread of its members (NaN without members).

    For a random forest or extra trees the mean of the members is the model's own prediction,
    so both come from one pass over the members, in chunks of rows.
    """
    pre, members = _members(model)
    if members is None:
        predicted = np.asarray(model.predict(x), dtype=np.float64).reshape(-1)
        return predicted, np.full(len(predicted), np.nan)
    xt = pre.transform(x) if pre is not None else x
    xt = np.asarray(xt.toarray() if hasattr(xt, "toarray") else xt, dtype=np.float32)
    mean = np.empty(len(xt))
    spread = np.empty(len(xt))
    for start in range(0, len(xt), _MEMBER_CHUNK):
        chunk = xt[start : start + _MEMBER_CHUNK]
        each = np.stack([np.asarray(m(chunk), dtype=np.float64) for m in members])
        # Summed member by member, as the forest's own predict does: the same bits.
        total = np.zeros(len(chunk))
        for row in each:
            total += row
        mean[start : start + len(chunk)] = total / len(members)
        spread[start : start + len(chunk)] = each.std(axis=0)
    return mean, spread


def regression_confidence(spread: np.ndarray, scale: float) -> np.ndarray:
    """``1 - spread / scale`` clipped to [0, 1] (NaN where the spread or the scale is unknown)."""
    if not np.isfinite(scale) or scale <= 0:
        return np.full(len(spread), np.nan)
    out: np.ndarray = np.clip(1.0 - spread / scale, 0.0, 1.0)
    return out


def _regression_frame(model: Any, frame: pd.DataFrame, schema: SchemaSettings) -> pd.DataFrame:
    predicted, spread = predict_with_spread(model, frame[list(schema.inputs)])
    confidence = regression_confidence(spread, target_scale(model))
    user_id = {schema.id: frame[schema.id].to_numpy()} if schema.id and schema.id in frame else {}
    return pd.DataFrame(
        {
            ROW_ID: frame[ROW_ID].to_numpy(),
            **user_id,
            BATCH_ID: frame[BATCH_ID].to_numpy() if BATCH_ID in frame else "",
            "predicted": predicted,
            "confidence": confidence,
            "margin": confidence,
            "spread": spread,
            # Constant per file (compressed to nothing): the unit in which readers of the
            # file judge a difference of predictions (edge-case disagreement, shadow rule).
            "scale": np.full(len(frame), target_scale(model)),
        }
    )


def score_frame(model: Any, frame: pd.DataFrame, schema: SchemaSettings) -> pd.DataFrame:
    """``row_id``, the user's id column (``schema.id``, when set and present), ``batch_id``,
    ``predicted``, ``confidence`` (top-1 probability), ``margin`` (top-1 minus top-2) and
    ``p_<class>`` per class, in the schema's class order; for regression ``predicted``,
    ``confidence``, ``margin``, ``spread`` and ``scale`` (module docstring)."""
    if schema.is_regression:
        return _regression_frame(model, frame, schema)
    x = frame[list(schema.inputs)]
    proba = np.asarray(model.predict_proba(x), dtype=np.float64)
    model_classes = [str(c) for c in getattr(model, "classes_", schema.classes)]
    # Align the model's columns with the configured classes (a class the model never saw
    # gets probability 0).
    aligned = np.zeros((len(frame), len(schema.classes)))
    for j, c in enumerate(schema.classes):
        if str(c) in model_classes:
            aligned[:, j] = proba[:, model_classes.index(str(c))]
    top2 = np.sort(aligned, axis=1)[:, -2:] if aligned.shape[1] > 1 else np.c_[aligned, aligned]
    classes = np.asarray(schema.classes, dtype=object)
    user_id = {schema.id: frame[schema.id].to_numpy()} if schema.id and schema.id in frame else {}
    out = pd.DataFrame(
        {
            ROW_ID: frame[ROW_ID].to_numpy(),
            **user_id,
            BATCH_ID: frame[BATCH_ID].to_numpy() if BATCH_ID in frame else "",
            "predicted": classes[aligned.argmax(axis=1)],
            "confidence": top2[:, 1],
            "margin": top2[:, 1] - top2[:, 0],
        }
    )
    for j, c in enumerate(schema.classes):
        out[f"p_{c}"] = aligned[:, j]
    return out
