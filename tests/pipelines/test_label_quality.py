"""Suspect labels (``pipelines.label_quality``): cleanlab's Confident Learning on out-of-sample
probabilities of the project's own pipeline, on data whose wrong labels are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import SchemaSettings, TrainingSettings
from pipelines.label_quality import (
    label_issues,
    out_of_sample_probabilities,
    precision_recall,
    score_labels,
)

SCHEMA = SchemaSettings(features=["x", "y", "kind"], categorical=["kind"], target="label",
                        classes=["a", "b", "c", "d"])  # fmt: skip
TRAINING = TrainingSettings(params={"n_estimators": 50, "n_jobs": 1})


def blobs(rows: int = 600, flip: float = 0.05, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Three separable classes ("d" never occurs); ``flip`` of the labels moved to another."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    xy = centres[y] + rng.normal(0, 1.0, (rows, 2))
    wrong = rng.random(rows) < flip
    given = np.where(wrong, (y + rng.integers(1, 3, rows)) % 3, y)
    frame = pd.DataFrame(
        {
            "row_id": [f"r{i}" for i in range(rows)],
            "x": xy[:, 0],
            "y": xy[:, 1],
            "kind": pd.array(rng.choice(["p", "q"], rows), dtype="str"),
            "label": np.array(["a", "b", "c"])[given],
        }
    )
    return frame, wrong


def test_wrong_labels_are_found_with_good_precision_and_recall() -> None:
    frame, wrong = blobs()
    before = frame.copy()
    found = score_labels(frame, SCHEMA, TRAINING, folds=3, seed=0)
    pd.testing.assert_frame_equal(frame, before)  # the input is not modified
    assert len(found.rows) == len(frame) and found.classes == ["a", "b", "c"]
    precision, recall = precision_recall(found.rows["suspect"], wrong)
    assert recall >= 0.8 and precision >= 0.7, (precision, recall, int(wrong.sum()))
    s = found.suspects
    # A flagged row's suggestion is another class, and its quality is low.
    assert (s["suggested"] != s["given"]).mean() > 0.9
    assert s["quality"].median() < found.rows.loc[~found.rows["suspect"], "quality"].median()


def test_probabilities_are_out_of_sample_and_in_schema_order() -> None:
    frame, _ = blobs(300, flip=0.0)
    probs = out_of_sample_probabilities(frame, SCHEMA, TRAINING, folds=3, seed=1)
    assert probs.shape == (300, 4)
    assert probs.sum(axis=1) == pytest.approx(np.ones(300))
    assert (probs[:, 3] == 0).all()  # "d" has no rows
    again = out_of_sample_probabilities(frame, SCHEMA, TRAINING, folds=3, seed=1)
    assert (probs == again).all()  # seeded


def test_clean_labels_give_few_suspects_and_one_class_none() -> None:
    frame, _ = blobs(400, flip=0.0, seed=2)
    found = score_labels(frame, SCHEMA, TRAINING, folds=3, seed=0)
    assert found.rows["suspect"].mean() < 0.03
    one = frame.assign(label="a")
    probs = np.tile([1.0, 0.0, 0.0, 0.0], (len(one), 1))
    assert not label_issues(one, probs, SCHEMA).rows["suspect"].any()


def test_precision_recall_edge_cases() -> None:
    p, r = precision_recall([True, False, True], [True, True, False])
    assert (p, r) == (0.5, 0.5)
    p, r = precision_recall([False, False], [False, False])
    assert math.isnan(p) and math.isnan(r)
