"""Label-free performance estimates (CBPE): calibration, estimates, intervals, fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from edgeloop.core.errors import MonitoringError
from pipelines import performance as pf


def _rows(
    rng: np.random.Generator, n: int, low: float, high: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose true P(correct) is p but whose model says p**2 (under-confident, like a forest)."""
    p = rng.uniform(low, high, n)
    return p**2, rng.random(n) < p


def test_the_calibration_is_scikit_learns_isotonic_fit() -> None:
    rng = np.random.default_rng(0)
    conf, ok = _rows(rng, 500, 0.3, 1.0)
    cal = pf.fit_calibration(conf, ok)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(conf, ok)
    probe = np.r_[np.linspace(-0.1, 1.1, 101), conf]
    np.testing.assert_allclose(cal.apply(probe), iso.predict(probe), atol=1e-12)
    assert cal.rows == 500
    assert cal.accuracy == pytest.approx(ok.mean())
    # An isotonic fit keeps the mean: the fitting rows' estimate is their accuracy.
    assert cal.apply(conf).mean() == pytest.approx(ok.mean())
    assert sum(n for _, n, _ in cal.cells) == 500
    assert sum(k for _, _, k in cal.cells) == ok.sum()


def test_calibrated_estimate_is_close_and_raw_is_not_under_covariate_shift() -> None:
    rng = np.random.default_rng(1)
    cal = pf.fit_calibration(*_rows(rng, 4000, 0.2, 1.0))
    # A later batch: mostly hard rows (the mix moved; P(correct | confidence) did not).
    conf, ok = _rows(rng, 3000, 0.2, 0.7)
    est = pf.estimate_accuracy(conf, cal)
    raw = pf.estimate_accuracy(conf, None)
    assert est is not None and raw is not None
    assert est.calibrated and not raw.calibrated
    expected = np.sqrt(conf).mean()  # the batch's expected accuracy (P(correct) = sqrt(conf))
    assert abs(est.estimate - expected) < 0.025
    assert abs(raw.estimate - ok.mean()) > 0.15
    assert raw.estimate == pytest.approx(conf.mean())


def test_the_interval_covers_the_true_accuracy_about_as_often_as_it_says() -> None:
    rng = np.random.default_rng(2)
    covered = 0
    trials = 60
    for t in range(trials):
        cal = pf.fit_calibration(*_rows(rng, 300, 0.3, 1.0))
        conf, ok = _rows(rng, 200, 0.3, 0.9)
        est = pf.estimate_accuracy(conf, cal, bootstrap=40, seed=t)
        assert est is not None
        covered += est.low <= ok.mean() <= est.high
    assert covered / trials >= 0.85


def test_a_sparse_calibration_gives_a_wider_interval() -> None:
    rng = np.random.default_rng(3)
    conf, ok = _rows(rng, 2000, 0.3, 1.0)
    batch, _ = _rows(rng, 500, 0.3, 0.6)
    wide = pf.estimate_accuracy(batch, pf.fit_calibration(conf[:100], ok[:100]))
    narrow = pf.estimate_accuracy(batch, pf.fit_calibration(conf, ok))
    assert wide is not None and narrow is not None
    assert wide.std_error > 1.5 * narrow.std_error


def test_a_holdout_without_mistakes_still_has_an_interval() -> None:
    cal = pf.fit_calibration(np.linspace(0.5, 1.0, 50), np.ones(50, dtype=bool))
    est = pf.estimate_accuracy(np.full(100, 0.7), cal)
    assert est is not None
    assert est.estimate == 1.0
    assert est.low < 0.99


def test_calibration_round_trips_through_json_and_rejects_other_files() -> None:
    rng = np.random.default_rng(4)
    cal = pf.fit_calibration(*_rows(rng, 300, 0.2, 1.0))
    back = pf.ConfidenceCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    for bad in (
        {},
        {**cal.to_dict(), "format": 99},
        {**cal.to_dict(), "y": list(reversed(cal.y))},
        {**cal.to_dict(), "x": cal.x[:-1]},
        {**cal.to_dict(), "cells": [[0.5, 1, 2]]},
        {**cal.to_dict(), "rows": "many"},
    ):
        with pytest.raises(MonitoringError, match="not a confidence calibration"):
            pf.ConfidenceCalibration.from_dict(bad)


def test_estimates_skip_missing_rows_and_do_not_touch_inputs() -> None:
    rng = np.random.default_rng(5)
    conf, ok = _rows(rng, 300, 0.2, 1.0)
    cal = pf.fit_calibration(conf, ok)
    batch = np.array([0.5, np.nan, 0.9, 0.2])
    before = batch.copy()
    est = pf.estimate_accuracy(batch, cal)
    assert est is not None and est.rows == 3
    assert est.estimate == pytest.approx(cal.apply(batch[~np.isnan(batch)]).mean())
    np.testing.assert_array_equal(batch, before)
    assert pf.estimate_accuracy(np.array([]), cal) is None
    assert pf.estimate_accuracy(np.array([np.nan]), None) is None
    with pytest.raises(MonitoringError):
        pf.fit_calibration(np.array([0.5, 0.6]), np.array([1.0]))
    with pytest.raises(MonitoringError):
        pf.fit_calibration(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(MonitoringError, match="must be 1"):
        pf.fit_calibration(np.array([0.5, 0.6]), np.array([1.0, 2.0]))


def test_model_calibration_uses_a_real_models_probabilities() -> None:
    from sklearn.datasets import make_classification

    x, y = make_classification(600, n_features=8, n_informative=5, n_classes=3, random_state=0)
    model = LogisticRegression(max_iter=500).fit(x[:300], y[:300])
    cal = pf.model_calibration(model, x[300:], y[300:])
    assert cal.rows == 300
    assert cal.accuracy == pytest.approx((model.predict(x[300:]) == y[300:]).mean())
    assert cal.mean_confidence == pytest.approx(model.predict_proba(x[300:]).max(axis=1).mean())
    with pytest.raises(MonitoringError, match="labels for"):
        pf.model_calibration(model, x[300:], y[:10])


def test_macro_f1_estimate_matches_the_truth_when_probabilities_are_calibrated() -> None:
    rng = np.random.default_rng(6)
    k, n = 4, 20000
    proba = rng.dirichlet(np.full(k, 0.6), size=n)
    y = np.array([rng.choice(k, p=p) for p in proba])
    pred = proba.argmax(axis=1)
    truth = f1_score(y, pred, average="macro")
    # The identity calibration: these probabilities are calibrated by construction.
    ident = pf.ConfidenceCalibration(
        x=(0.0, 1.0), y=(0.0, 1.0), rows=n, accuracy=0.5, mean_confidence=0.5
    )
    est = pf.estimate_macro_f1(proba, ident)
    assert est is not None
    assert abs(est - truth) < 0.02
    assert pf.estimate_macro_f1(proba, None) == pytest.approx(est)
    assert pf.estimate_macro_f1(np.empty((0, k)), None) is None
    with pytest.raises(MonitoringError):
        pf.estimate_macro_f1(proba, None, classes=[0, 1])
