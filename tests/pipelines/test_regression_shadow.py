"""Shadow evaluation of regression models (``shadow.metric: abs_error``): the paired difference
of absolute errors, the sequential rule on it, and the evaluation sample's design for it.

Models are real scikit-learn regressors fitted on ``housing_reference`` (``pipelines.train.fit``,
as retrain fits them); their predictions on later rows are what the shadow compares.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import EdgeCaseSettings, GateSettings, ShadowSettings, TrainingSettings
from pipelines.edge_cases.evaluation import (
    comparison_weights,
    evaluation_sample,
    inclusion_probabilities,
)
from pipelines.score import score_frame, target_scale
from pipelines.shadow import abs_error_differences, compare, decide, horvitz_thompson
from tests.conftest import housing_reference, housing_schema

S = ShadowSettings(metric="abs_error")
TOL = EdgeCaseSettings().disagreement_tolerance


@cache
def _models() -> tuple[Any, Any, Any]:
    """A good forest (all features), a weak one (area only) and the good one's twin."""
    from pipelines.train import fit

    train = housing_reference(400, seed=5)
    schema = housing_schema()
    params: dict[str, int | float | str | bool | None] = {"n_estimators": 30, "n_jobs": 1}
    est = "sklearn.ensemble.RandomForestRegressor"
    good = fit(train, schema, TrainingSettings(estimator=est, params=params), seed=1)
    weak_schema = schema.model_copy(update={"features": ["area"], "categorical": []})
    weak = fit(train, weak_schema, TrainingSettings(estimator=est, params=params), seed=1)
    twin = fit(train, schema, TrainingSettings(estimator=est, params=params), seed=2)
    return good, weak, twin


def _rows(n: int = 800, seed: int = 41) -> pd.DataFrame:
    df = housing_reference(n, seed=seed, start="2025-06-01")
    df["row_id"] = [f"b-{i}" for i in range(n)]
    df["batch_id"] = "b"
    return df


def _predict(model: Any, df: pd.DataFrame, features: list[str] | None = None) -> np.ndarray:
    schema = housing_schema()
    if features is not None:
        schema = schema.model_copy(update={"features": features, "categorical": []})
    out: np.ndarray = score_frame(model, df, schema)["predicted"].to_numpy()
    return out


def test_the_paired_difference_is_scaled_clipped_and_signed() -> None:
    y = np.array([10.0, 10.0, 10.0, 10.0])
    champ = np.array([12.0, 10.0, 40.0, 10.0])
    chall = np.array([10.0, 13.0, 10.0, 10.0])
    d = abs_error_differences(y, champ, chall, scale=5.0)
    # +2/5 (challenger closer), -3/5, +30/5 clipped to 1, 0 (the same error)
    assert d.tolist() == pytest.approx([0.4, -0.6, 1.0, 0.0])
    with pytest.raises(Exception, match="positive"):
        abs_error_differences(y, champ, chall, scale=float("nan"))


def test_a_clearly_better_challenger_is_promoted_and_a_worse_one_kept() -> None:
    good, weak, _ = _models()
    rows = _rows()
    y = rows["price"].to_numpy()
    a, b = _predict(weak, rows, ["area"]), _predict(good, rows)
    scale = target_scale(good)
    assert math.isfinite(scale) and scale > 0
    better = compare(y, a, b, classes=[], settings=S, seed=0, scale=scale, tolerance=TOL)
    # The estimate is the mean scaled, clipped error difference over the rows (all labeled).
    assert better.delta == pytest.approx(abs_error_differences(y, a, b, scale).mean())
    assert better.challenger < better.champion  # MAE, lower is better
    assert better.rule == "confidence-sequence" and better.metric == "abs_error"
    assert better.cs_low > 0 and better.scale == pytest.approx(scale)
    d = decide(better, S, GateSettings(metric="r2", baseline="mean"))
    assert d.state == "promote" and "absolute-error delta" in d.summary()

    worse = compare(y, b, a, classes=[], settings=S, seed=0, scale=scale, tolerance=TOL)
    assert worse.delta == pytest.approx(-better.delta) and worse.cs_high < 0
    assert decide(worse, S, GateSettings(metric="r2", baseline="mean")).state == "keep"


def test_equal_models_need_more_labels_and_identical_ones_are_kept() -> None:
    good, _, twin = _models()
    rows = _rows(300)
    y = rows["price"].to_numpy()
    a, b = _predict(good, rows), _predict(twin, rows)
    gates = GateSettings(metric="r2", baseline="mean")
    # Two forests of the same data and features: neither is better on 300 rows.
    close = compare(y, a, b, classes=[], settings=S, seed=0, scale=target_scale(good))
    assert close.cs_low < 0 < close.cs_high
    d = decide(close, S, gates, labels_per_day=20.0)
    assert d.state == "need_more" and not d.promote
    same = compare(y, a, a.copy(), classes=[], settings=S, seed=0, scale=target_scale(good))
    assert same.differing_rows == 0 and same.delta == 0
    d = decide(same, S, gates)
    assert d.state == "keep" and "same prediction on every row" in d.summary()


def test_agreement_is_by_tolerance_and_evidence_is_every_row_one_model_wins() -> None:
    y = np.linspace(0, 100, 50)
    a = y + 1.0
    b = y.copy()
    b[:12] += 30.0  # 12 rows apart by 29 > 0.5 x 20; the others by 1 < 10
    b[12:14] = a[12:14]  # two rows where both models say the same: no evidence
    cmp = compare(y, a, b, classes=[], settings=S, seed=0, scale=20.0, tolerance=0.5)
    assert cmp.agreement == pytest.approx(38 / 50)
    # Every row but the two ties carries evidence (one model is closer), near or far apart.
    assert cmp.n_disagreements == 48
    labeled = np.zeros(50, dtype=bool)
    labeled[5:20] = True  # 15 labeled rows, 2 of them ties
    few = compare(y, a, b, classes=[], settings=S, seed=0, scale=20.0, tolerance=0.5,
                  labeled=labeled)  # fmt: skip
    assert few.n_disagreements == 13 and few.n_labeled == 15 and few.n_rows == 50
    strict = S.model_copy(update={"min_labeled_disagreements": 20})
    d = decide(few, strict, GateSettings(metric="r2", baseline="mean"))
    assert d.state == "need_more" and "only 13 labeled disagreements" in d.summary()


def test_without_a_training_scale_the_labels_std_is_the_unit() -> None:
    y = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    a, b = y + 4.0, y + 1.0
    cmp = compare(y, a, b, classes=[], settings=S, seed=0, scale=float("nan"))
    assert cmp.scale == pytest.approx(float(y.std()))
    assert cmp.delta == pytest.approx(3.0 / float(y.std()))


def test_slices_are_judged_in_r2_units() -> None:
    good, weak, _ = _models()
    rows = _rows(600)
    y = rows["price"].to_numpy()
    a, b = _predict(good, rows), _predict(weak, rows, ["area"])
    centre = (rows["district"] == "centre").to_numpy()
    cmp = compare(y, a, b, classes=[], settings=S, seed=0, scale=target_scale(good),
                  slice_masks={"centre": centre})  # fmt: skip
    s = cmp.slices["centre"]
    assert s["rows"] == centre.sum() and s["champion"] > s["challenger"]
    assert -1 < s["challenger"] < s["champion"] <= 1
    gates = GateSettings(metric="r2", baseline="mean", slice_floors={"centre": 0.99})
    # training.slices validation is the config's business: decide reads the floors by name.
    d = decide(cmp, S, gates.model_copy(update={"min_slice_rows": 10}))
    assert d.state == "keep" and "slice centre: challenger" in d.summary()


def test_the_importance_weighted_estimate_is_unbiased_under_the_evaluation_sample() -> None:
    """Poisson samples drawn by the regression design: the Horvitz–Thompson mean of ``d`` over
    many draws is the mean of ``d`` over every row (what the rule estimates)."""
    good, weak, _ = _models()
    rows = _rows(400)
    schema = housing_schema()
    champ = score_frame(good, rows, schema)
    weak_schema = schema.model_copy(update={"features": ["area"], "categorical": []})
    chall = score_frame(weak, rows, weak_schema)
    chall["scale"] = champ["scale"]
    y = rows["price"].to_numpy()
    scale = target_scale(good)
    d = abs_error_differences(y, champ["predicted"], chall["predicted"], scale)
    estimates = []
    for seed in range(400):
        drawn = evaluation_sample(champ, challenger=chall, expected_size=40, seed=seed)
        labeled = rows["row_id"].isin(drawn["row_id"]).to_numpy()
        pi = np.ones(len(rows))
        pi[labeled] = drawn.set_index("row_id").loc[rows["row_id"][labeled], "inclusion_prob"]
        estimates.append(horvitz_thompson(d, pi, labeled).mean())
    spread = float(np.std(estimates)) / math.sqrt(len(estimates))
    assert abs(float(np.mean(estimates)) - float(d.mean())) < 4 * spread


def test_the_evaluation_sample_weights_regression_rows_by_their_gap() -> None:
    good, weak, _ = _models()
    rows = _rows(300)
    schema = housing_schema()
    champ = score_frame(good, rows, schema)
    weak_schema = schema.model_copy(update={"features": ["area"], "categorical": []})
    chall = score_frame(weak, rows, weak_schema)
    before = champ.copy()
    w = comparison_weights(champ, chall)
    pd.testing.assert_frame_equal(champ, before)  # inputs are not modified
    gap = np.abs(champ["predicted"] - chall["predicted"]).to_numpy() / target_scale(good)
    assert w == pytest.approx(np.minimum(gap, 1.0))
    # Disagreements-first does not apply: the same probabilities with or without it.
    one = evaluation_sample(champ, challenger=chall, expected_size=30, seed=3,
                            disagreements_first=True)  # fmt: skip
    two = evaluation_sample(champ, challenger=chall, expected_size=30, seed=3)
    pd.testing.assert_frame_equal(one, two)
    q = inclusion_probabilities(w, np.ones(len(w), dtype=bool), 30, 0.5)
    assert q.min() > 0 and q.sum() == pytest.approx(30)
    # Rows where the models are far apart are drawn more often than rows where they agree.
    assert q[gap > np.quantile(gap, 0.9)].mean() > q[gap < np.quantile(gap, 0.1)].mean()
    assert one["challenger_predicted"].dtype == "float64"
    # Without the scale column: the spread of the predictions is the unit (ratios unchanged).
    no_scale = comparison_weights(champ.drop(columns="scale"), chall.drop(columns="scale"))
    assert no_scale.shape == w.shape and (no_scale > 0).mean() > 0.9
