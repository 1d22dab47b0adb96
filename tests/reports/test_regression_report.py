"""Reports of a regression project: the review, ``edgeloop status`` and a retrain's output show
R², MAE and RMSE where a classifier's show accuracy and macro-F1, and read no classification key.

(The review gathered from real MLflow runs of a regression project is tested in
``tests/monitoring/test_regression_monitor.py``.)
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from edgeloop.reports import terminal
from edgeloop.reports.render import to_html, to_markdown
from edgeloop.reports.result import MonitoredBatch, Retrain, Review, ShadowEvaluation

START, END = "2026-01-01T00:00:00+00:00", "2026-01-08T00:00:00+00:00"
#: What ``models_status`` gives for a regression model: no accuracy/macro-F1 values.
MODELS: dict[str, dict[str, Any]] = {
    "champion": {"version": "1", "macro_f1": None, "accuracy": None, "r2": 0.912, "mae": 14.5,
                 "rmse": 19.25, "data_version": "abc", "alias_since": "2026-01-02", "age_hours": 5.0,
                 "run_id": "r1"},
    "challenger": {"version": "2", "r2": -0.25, "mae": 30.0, "rmse": 41.0, "data_version": "def",
                   "alias_since": "2026-01-05", "age_hours": 1.0, "run_id": "r2"},
}  # fmt: skip


def _review() -> Review:
    batch = MonitoredBatch(
        batch_id="000001-b", batch_index=1, at="2026-01-03T00:00:00+00:00", rows=150.0,
        labeled_rows=40.0, drift_share=0.0, n_drifted_features=0.0, prediction_psi=0.08,
        mean_confidence=None, low_confidence_share=None, champion_accuracy=None,
        challenger_accuracy=None, agreement=0.97, drifted=False, drifted_features=(), top_psi=(),
        run_id="m1", mlflow_url="", flow_run_url="", champion_mae=15.25, champion_rmse=20.5,
        champion_r2=0.875, challenger_mae=16.0, challenger_r2=0.86,
    )  # fmt: skip
    retrain = Retrain(
        at="2026-01-04T00:00:00+00:00", reason="labels", decision="registered", version="2",
        accuracy=None, macro_f1=None, champion_accuracy=None, champion_macro_f1=None,
        train_rows=300.0, data_version="def", failed_gates=(), run_id="t2", mlflow_url="",
        flow_run_url="", r2=-0.25, mae=30.0, rmse=41.0, champion_r2=0.91, champion_mae=14.5,
    )  # fmt: skip
    shadow = ShadowEvaluation(
        at="2026-01-06T00:00:00+00:00", champion_version="1", challenger_version="2",
        decision="keep", summary="keep champion for now", metric="abs_error", n=40.0,
        champion=15.25, challenger=16.0, delta=-0.0123, ci_low=-0.03, ci_high=0.01,
        agreement=0.97, mcnemar_p=0.5, run_id="s1", mlflow_url="", flow_run_url="",
        state="need_more", n_rows=150.0, cs_low=-0.05, cs_high=0.02,
    )  # fmt: skip
    return Review(
        project="houses", days=7, generated_at=END, tracking_uri="sqlite:///x",
        models=MODELS, retrains=[retrain], monitoring=[batch], monitoring_enabled=True,
        shadow=[shadow], task="regression", start=START, end=END,
    )  # fmt: skip


def test_the_review_shows_regression_metrics_in_place_of_accuracy() -> None:
    md = to_markdown(_review())
    assert "macro-F1" not in md and "champion accuracy" not in md and "est. (CBPE)" not in md
    assert "| alias | version | R² | MAE | RMSE | data version |" in md
    assert "| 0.9120 | 14.5000 | 19.2500 |" in md
    assert "R², MAE and RMSE on the holdout" in md
    assert "| R² | MAE | RMSE | champion R² | champion MAE |" in md and "-0.2500" in md
    assert "champion MAE | champion RMSE | champion R² | challenger MAE | challenger R²" in md
    assert "| 15.2500 | 20.5000 | 0.8750 | 16.0000 | 0.8600 |" in md
    assert "challenger MAE" in md and "delta (target std)" in md and "sign test p" in md
    assert "Champion: v1 (R² 0.9120, MAE 14.5000)" in md
    assert "do not apply to a regression target" in md
    page = to_html(_review())
    assert page.count("data:image/png;base64,") == 2  # the R² trend (below 0 too), drift


def test_a_classification_review_keeps_its_columns() -> None:
    r = _review()
    review = Review(project="p", days=7, generated_at=END, tracking_uri="sqlite:///x",
                    models={"champion": {"version": "1", "accuracy": 0.9, "macro_f1": 0.8,
                                         "run_id": "r"}}, start=START, end=END)  # fmt: skip
    md = to_markdown(review)
    assert "| alias | version | accuracy | macro-F1 |" in md and "R²" not in md
    assert "Champion: v1 (accuracy 0.9000, macro-F1 0.8000)" in md
    assert r.regression and not review.regression


def _printed(monkeypatch: pytest.MonkeyPatch, fn: Any, *args: Any) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, highlight=False)
    monkeypatch.setattr(terminal, "make_console", lambda: console)  # the same text, kept
    fn(*args)
    return out.getvalue()


def test_status_and_retrain_output_show_regression_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    state = {
        "project": "houses", "config": "edgeloop.yaml",
        "data": {"version": "v", "rows": 450, "reference_rows": 300},
        "batches": {"seen": 1, "by_status": {"accepted": 1}, "rows_quarantined": 0,
                    "quarantined": [], "rows_accepted": 150},
        "stores": {"mlflow_tracking_uri": "sqlite:///x", "prefect_home": "h",
                   "prefect_api_url": "-", "dvc_remote": "d"},
        "models": MODELS, "annotation": {},
    }  # fmt: skip
    text = _printed(monkeypatch, terminal.print_status, state)
    assert "model champion: v1  R² 0.9120  MAE 14.5000  RMSE 19.2500" in text
    assert "model challenger: v2  R² -0.2500" in text and "macro-F1" not in text
    metrics = {"r2": 0.9, "mae": 14.0, "rmse": 19.0, "recent_rows": 40.0, "recent_r2": 0.8,
               "recent_mae": 15.0, "recent_rmse": 20.0, "recent_effective_rows": 40.0}  # fmt: skip
    result = {"status": "registered", "message": "ok", "metrics": metrics,
              "champion_metrics": {"r2": 0.85, "recent_r2": 0.7}}  # fmt: skip
    text = _printed(monkeypatch, terminal.print_retrain, result)
    assert "r2: 0.9000 (champion 0.8500)" in text and "mae: 14.0000" in text
    assert "recent: r2 0.8000 (champion 0.7000), mae 15.0000" in text
    assert "accuracy" not in text
