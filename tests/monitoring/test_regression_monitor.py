"""Monitoring of a regression model: prediction drift on the numbers, errors on labeled rows,
confidence from the members' spread (or none), no label-free estimates; then the whole path on
real stores (shadow evaluation, monitoring runs, dashboard, weekly review) for a regression
project made with ``init --data`` on ``housing_reference``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import MonitoringSettings, TrainingSettings
from pipelines.monitor import batch_report, build_reference, prediction_shift
from pipelines.performance import REGRESSION_NOTE, measured_errors
from pipelines.score import score_frame, target_scale
from tests.conftest import housing_reference, housing_schema

M = MonitoringSettings()


def _fit(estimator: str, params: dict[str, Any]) -> Any:
    from pipelines.train import fit

    return fit(housing_reference(400, seed=5), housing_schema(), TrainingSettings(estimator=estimator, params=params), seed=1)  # fmt: skip


def _batch(rows: int, seed: int, area_factor: float = 1.0) -> pd.DataFrame:
    df = housing_reference(rows, seed=seed, start="2025-05-01")
    df["area"] = df["area"] * area_factor
    df["row_id"] = [f"b{seed}-{i}" for i in range(rows)]
    df["batch_id"] = f"b{seed}"
    return df


def test_the_reference_profiles_the_target_as_numbers() -> None:
    ref = housing_reference(400, seed=5)
    profile = build_reference(ref, housing_schema(), M, seed=0)
    assert profile.classes == () and profile.target is not None
    assert profile.target.shares.sum() == pytest.approx(1.0)  # among the labeled rows
    assert len(profile.target.sample) == 400 and np.all(np.diff(profile.target.sample) >= 0)
    # Its own labels against it: no shift at all.
    same = prediction_shift(profile, ref["price"])
    assert same.psi == pytest.approx(0.0, abs=1e-9) and same.test == "ks"
    assert sum(same.batch_shares.values()) == pytest.approx(1.0)


def test_prediction_drift_compares_the_predicted_numbers() -> None:
    model = _fit("sklearn.ensemble.RandomForestRegressor", {"n_estimators": 30, "n_jobs": 1})
    profile = build_reference(housing_reference(400, seed=5), housing_schema(), M, seed=0)
    normal, shifted = _batch(400, 31), _batch(400, 32, area_factor=1.6)
    a = score_frame(model, normal, housing_schema())
    b = score_frame(model, shifted, housing_schema())
    calm = batch_report(profile, normal, a["predicted"], a["confidence"], M, min_confidence=0.5)
    moved = batch_report(profile, shifted, b["predicted"], b["confidence"], M, min_confidence=0.5)
    assert not calm.drifted and calm.prediction.psi < M.psi_threshold
    assert moved.prediction.psi > 3 * calm.prediction.psi and moved.prediction.p_value < 1e-6
    assert "area" in [f.feature for f in moved.drifted_features]  # feature drift as before
    # Confidence from the forest's spread: a real number in [0, 1] for every row.
    assert calm.confidence.rows == 400 and 0 < calm.confidence.mean < 1
    assert calm.champion_accuracy is None and calm.errors == {}  # no labels given
    assert calm.to_dict()["prediction"]["test"] == "ks"


def test_errors_and_agreement_on_labeled_rows_only() -> None:
    champ = _fit("sklearn.ensemble.RandomForestRegressor", {"n_estimators": 30, "n_jobs": 1})
    chall = _fit("sklearn.ensemble.HistGradientBoostingRegressor", {"max_iter": 50})
    profile = build_reference(housing_reference(400, seed=5), housing_schema(), M, seed=0)
    batch = _batch(300, 33)
    a = score_frame(champ, batch, housing_schema())
    b = score_frame(chall, batch, housing_schema())
    labels = batch["price"].astype("float64").copy()
    labels.iloc[100:] = np.nan  # a third labeled
    before = labels.copy()
    report = batch_report(
        profile, batch, a["predicted"], b["confidence"], M, min_confidence=0.5,
        challenger_predicted=b["predicted"].to_numpy(), labels=labels,
        scale=target_scale(champ), tolerance=0.1,
    )  # fmt: skip
    pd.testing.assert_series_equal(labels, before)
    y, pa, pb = batch["price"][:100], a["predicted"][:100], b["predicted"][:100]
    assert report.labeled_rows == 100
    e = report.errors
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    assert e["champion_mae"] == pytest.approx(mean_absolute_error(y, pa))
    assert e["champion_rmse"] == pytest.approx(root_mean_squared_error(y, pa))
    assert e["challenger_r2"] == pytest.approx(r2_score(y, pb))
    assert e["champion_mean_residual"] == pytest.approx(float((y - pa).mean()))
    gap = np.abs(a["predicted"] - b["predicted"]).to_numpy()
    assert report.agreement == pytest.approx(float((gap <= 0.1 * target_scale(champ)).mean()))
    # HistGradientBoosting has no members: all-NaN confidence is no measurement, not a crash.
    assert b["confidence"].isna().all()
    assert report.confidence.rows == 0 and math.isnan(report.confidence.mean)
    assert report.to_dict()["errors"]["champion_mae"] == e["champion_mae"]


def test_measured_errors_need_two_labels_for_r2() -> None:
    one = measured_errors([3.0, np.nan], [1.0, 2.0])
    assert one["rows"] == 1 and one["mae"] == 2.0 and math.isnan(one["r2"])
    none = measured_errors([np.nan], [1.0])
    assert none["rows"] == 0 and math.isnan(none["mae"])


# ---------------------------------------------------------------------- real stores
@pytest.fixture(scope="module")
def houses(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Any:
    """A regression project: champion v1, a batch, challenger v2, a later labeled batch, both
    scored (the evaluation sample queued with the edge cases)."""
    from edgeloop.core.config import load_settings
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score
    from tests.conftest import new_project

    tmp = tmp_path_factory.mktemp("houses")
    root = new_project(tmp, reference=housing_reference(300), target="price",
                       training={"params": {"n_estimators": 20, "n_jobs": 1}},
                       edge_cases={"budget": 20})  # fmt: skip
    config = str(root / "edgeloop.yaml")
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    first = tmp / "b1.csv"
    housing_reference(120, 50, start="2025-03-01").to_csv(first, index=False)
    ingest([str(first)], config=config)
    score(config=config)
    assert retrain(reason="v2", config=config)["alias"] == "challenger"
    later = tmp / "b2.csv"
    housing_reference(150, 51, start="2025-04-01").to_csv(later, index=False)
    ingest([str(later)], config=config)
    score(config=config)
    return load_settings(config)


@pytest.mark.slow
def test_shadow_evaluation_of_a_regression_challenger_on_real_stores(houses: Any) -> None:
    from mlflow.tracking import MlflowClient

    from edgeloop.batch.scoring import read_scores
    from edgeloop.batch.shadow import latest_evaluation, shadow_evaluate
    from edgeloop.core import keys
    from pipelines.shadow import abs_error_differences

    settings = houses
    report = shadow_evaluate(settings)
    c = report.comparison
    assert c["metric"] == "abs_error" and c["rule"] == "confidence-sequence"
    # Only the batch after the challenger's deployment; it came with its labels (pi = 1).
    assert c["n_rows"] == 150 and c["n"] == 150 and c["legacy_rows"] == 0
    a, b = read_scores(settings, "1"), read_scores(settings, "2")
    both = a.merge(b, on="row_id", suffixes=("_a", "_b"))
    both = both[both["batch_id_a"] == both["batch_id_a"].max()]
    truth = housing_reference(150, 51, start="2025-04-01")["price"].to_numpy()
    scale = float(both["scale_a"].iloc[0])
    assert c["scale"] == pytest.approx(scale)
    d = abs_error_differences(truth, both["predicted_a"], both["predicted_b"], scale)
    assert c["delta"] == pytest.approx(float(d.mean()))
    assert c["cs_low"] <= c["delta"] <= c["cs_high"]
    # Evidence: every labeled row where one model is closer to the truth.
    assert c["n_disagreements"] == int(np.count_nonzero(d))
    assert report.state in ("promote", "keep", "need_more")
    run = latest_evaluation(settings, "1", "2")
    assert run is not None and run.info.run_id == report.run_id
    assert run.data.params["metric"] == "abs_error"
    assert run.data.tags[keys.TAG_SHADOW_STATE] == report.state
    assert run.data.metrics["scale"] == pytest.approx(scale)
    assert "absolute-error delta" in run.data.tags[keys.TAG_NOTE]
    assert MlflowClient().get_run(report.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_monitoring_dashboard_and_review_of_a_regression_project(houses: Any) -> None:
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    from edgeloop.batch.scoring import read_scores
    from edgeloop.monitoring.dashboard import write_dashboard
    from edgeloop.monitoring.monitor import REGRESSION_METRICS, monitor_batches
    from edgeloop.reports.review import build_review

    settings = houses
    summary = monitor_batches(settings)
    assert len(summary.monitored) == 2
    latest = summary.monitored[-1]
    scores = read_scores(settings, "1")
    scores = scores[scores["batch_id"] == latest.batch_id]
    truth = housing_reference(150, 51, start="2025-04-01")["price"].to_numpy()
    expected = measured_errors(truth, scores["predicted"].to_numpy())
    assert latest.labeled_rows == 150
    assert latest.errors["champion_mae"] == pytest.approx(expected["mae"])
    assert latest.errors["champion_r2"] == pytest.approx(expected["r2"])
    assert latest.champion_accuracy is None and latest.cbpe_accuracy_champion is None
    assert latest.cbpe_flags == [] and latest.agreement is not None
    run = MlflowClient().get_run(latest.run_id)
    m = run.data.metrics
    assert m["champion_mae"] == pytest.approx(expected["mae"]) and "champion_accuracy" not in m
    assert {"prediction_psi", "mean_confidence", "challenger_rmse"} <= set(m)
    assert set(REGRESSION_METRICS) <= set(m)
    estimates = mlflow.artifacts.load_dict(f"runs:/{latest.run_id}/performance/estimates.json")
    assert estimates["note"] == REGRESSION_NOTE and estimates["champion"] is None
    report = mlflow.artifacts.load_dict(f"runs:/{latest.run_id}/drift/report.json")
    assert report["prediction"]["test"] == "ks"
    # A second call reads the runs back (the same errors), logging nothing new.
    again = monitor_batches(settings)
    assert again.monitored == [] and len(again.already_monitored) == 2

    page = write_dashboard(settings).read_text(encoding="utf-8")
    assert "<th>champion MAE</th>" in page and "<th>champion acc.</th>" not in page
    assert "Champion vs challenger error on labeled rows" in page
    assert f"{expected['mae']:.3f}" in page and "do not apply to a regression target" in page

    review = build_review(settings, days=30)
    assert review.regression and review.monitoring[-1].champion_mae == pytest.approx(
        expected["mae"]
    )
    md = review.to_markdown()
    assert "| R² | MAE | RMSE |" in md and "macro-F1" not in md and "champion accuracy" not in md
    assert "champion MAE" in md and "sign test p" in md and "do not apply" in md
    assert review.retrains and review.retrains[0].r2 is not None
    assert review.to_html().count("data:image/png;base64,") == 2
