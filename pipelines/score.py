"""Scoring stage: a model's classes and probabilities for a batch, one row per input row."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from edgeloop.core.config import SchemaSettings

ROW_ID = "row_id"
BATCH_ID = "batch_id"


def score_frame(model: Any, frame: pd.DataFrame, schema: SchemaSettings) -> pd.DataFrame:
    """``row_id``, the user's id column (``schema.id``, when set and present), ``batch_id``,
    ``predicted``, ``confidence`` (top-1 probability), ``margin`` (top-1 minus top-2) and
    ``p_<class>`` per class, in the schema's class order."""
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
