"""Meaningful gates on an imbalanced target: the trivial baseline, the lift over it, per-class
recall floors, balanced accuracy; the retrain's result and output carry the baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import (
    GateSettings,
    SchemaSettings,
    SliceSettings,
    TrainingSettings,
    settings_from_dict,
)
from edgeloop.models.cache import RetrainSummary
from edgeloop.models.training import train_and_evaluate
from edgeloop.reports.terminal import print_retrain
from pipelines.evaluate import baseline_metrics, check_gates, evaluate
from pipelines.train import Split, features, fit, split, target

SCHEMA = SchemaSettings(
    features=["signal", "noise", "plan"],
    categorical=["plan"],
    target="churned",
    classes=[0, 1],
)
SEED = 42
TRAINING = TrainingSettings(
    params={"n_estimators": 30, "n_jobs": 1}, min_train_rows=20, min_holdout_rows=5
)
#: A model that always predicts one class (the majority): accurate on an 88/12 target, useless.
USELESS = TrainingSettings(
    estimator="sklearn.dummy.DummyClassifier",
    params={"strategy": "most_frequent"},
    min_train_rows=20,
    min_holdout_rows=5,
)


def imbalanced(rows: int = 1500, seed: int = 0) -> pd.DataFrame:
    """An 88/12 binary target that ``signal`` predicts well; ``noise`` and ``plan`` do not."""
    rng = np.random.default_rng(seed)
    y = (rng.random(rows) < 0.12).astype(int)
    return pd.DataFrame(
        {
            "row_id": [f"c{i}" for i in range(rows)],
            "signal": np.round(rng.normal(0.0, 1.0, rows) + 3.0 * y, 3),
            "noise": np.round(rng.normal(0.0, 1.0, rows), 3),
            "plan": pd.array(rng.choice(["basic", "pro"], rows), dtype="str"),
            "churned": y,
        }
    )


def _scored(s: Split, settings: TrainingSettings) -> dict[str, float]:
    model = fit(s.train, SCHEMA, settings, SEED)
    predicted = model.predict(features(s.holdout, SCHEMA))
    return evaluate(target(s.holdout, SCHEMA), predicted, s.holdout, SCHEMA, [])


def _baseline(s: Split, strategy: str = "most_frequent", seed: int = 0) -> dict[str, float]:
    y_train, y_true = target(s.train, SCHEMA), target(s.holdout, SCHEMA)
    return baseline_metrics(y_train, y_true, s.holdout, SCHEMA, [], strategy, seed)


@pytest.fixture(scope="module")
def data() -> Split:
    return split(imbalanced(), SCHEMA, TRAINING, SEED)


# --------------------------------------------------------------------------- the baseline


def test_majority_baseline_is_accurate_but_balanced_accuracy_and_macro_f1_are_low(
    data: Split,
) -> None:
    base = _baseline(data)
    share_majority = float((target(data.holdout, SCHEMA) == 0).mean())
    assert base["baseline_accuracy"] == pytest.approx(share_majority)
    assert base["baseline_accuracy"] > 0.8  # what an accuracy floor alone would let through
    assert base["baseline_balanced_accuracy"] == pytest.approx(0.5)
    assert base["baseline_macro_f1"] < 0.5
    assert base["baseline_class_1_recall"] == 0.0 and base["baseline_class_0_recall"] == 1.0
    assert base["baseline_rows"] == float(len(data.holdout))


def test_baseline_has_the_candidate_keys_prefixed(data: Split) -> None:
    slices = [SliceSettings(name="pro", column="plan", op="==", value="pro")]
    y_train, y_true = target(data.train, SCHEMA), target(data.holdout, SCHEMA)
    base = baseline_metrics(y_train, y_true, data.holdout, SCHEMA, slices, "most_frequent", 0)
    cand = evaluate(y_true, y_true.copy(), data.holdout, SCHEMA, slices)
    assert set(base) == {f"baseline_{k}" for k in cand}
    assert "baseline_slice_pro_balanced_accuracy" in base
    json.dumps(base)


def test_stratified_baseline_is_seeded(data: Split) -> None:
    a, b = _baseline(data, "stratified", 1), _baseline(data, "stratified", 1)
    assert a == b
    assert a != _baseline(data, "stratified", 2)
    assert a["baseline_class_1_recall"] > 0.0  # it does predict the rare class, at random


def test_evaluate_has_balanced_accuracy_overall_and_per_slice() -> None:
    y = np.array([0] * 8 + [1] * 2)
    pred = np.array([0] * 8 + [1, 0])
    frame = pd.DataFrame({"plan": ["pro"] * 5 + ["basic"] * 5})
    slices = [
        SliceSettings(name="pro", column="plan", op="==", value="pro"),
        SliceSettings(name="free", column="plan", op="==", value="free"),  # no rows
    ]
    out = evaluate(y, pred, frame, SCHEMA, slices)
    assert out["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["class_1_recall"] == 0.5
    assert out["slice_pro_balanced_accuracy"] == 1.0  # only class 0 there, all right
    assert math.isnan(out["slice_free_balanced_accuracy"])


# --------------------------------------------------------------------------- the gates

MEANINGFUL = GateSettings(
    min_accuracy=0.5,
    min_lift_over_baseline=0.15,
    class_recall_floors={"1": 0.5},
    min_slice_rows=20,
)


def test_real_model_beats_the_baseline_by_the_lift(data: Split) -> None:
    cand, base = _scored(data, TRAINING), _baseline(data)
    assert cand["macro_f1"] >= base["baseline_macro_f1"] + 0.15
    result = check_gates(cand, None, MEANINGFUL, base)
    assert result.passed, result.summary()
    lift = next(c for c in result.checks if c.name == "min_lift_over_baseline")
    assert lift.value == pytest.approx(cand["macro_f1"] - base["baseline_macro_f1"])
    assert lift.detail.startswith("min_lift_over_baseline: macro_f1 ")
    assert "vs baseline most_frequent" in lift.detail
    recall = next(c for c in result.checks if c.name == "class_1_recall")
    assert recall.passed and recall.value == cand["class_1_recall"]


def test_useless_model_fails_the_baseline_gate_and_the_rare_class_floor(data: Split) -> None:
    cand, base = _scored(data, USELESS), _baseline(data)
    assert cand["accuracy"] > 0.8  # an accuracy floor alone is passed
    result = check_gates(cand, None, MEANINGFUL, base)
    assert not result.passed
    assert [c.name for c in result.failed] == ["class_1_recall", "min_lift_over_baseline"]
    recall, lift = result.failed
    rare = int(cand["class_1_support"])
    assert (
        recall.detail == f"class_1_recall: 0.0000 < floor 0.5000 ({rare} holdout rows of class 1)"
    )
    shown = f"{base['baseline_macro_f1']:.4f}"
    assert lift.detail == (
        f"min_lift_over_baseline: macro_f1 {shown} vs baseline most_frequent {shown}"
        " (lift +0.0000, required >= +0.1500)"
    )
    assert "class_1_recall" in result.summary() and "min_lift_over_baseline" in result.summary()
    assert next(c for c in result.checks if c.name == "min_accuracy").passed


def test_lift_on_balanced_accuracy() -> None:
    gates = GateSettings(metric="balanced_accuracy", min_lift_over_baseline=0.1)
    cand = {"accuracy": 0.9, "macro_f1": 0.6, "balanced_accuracy": 0.65}
    base = {"baseline_balanced_accuracy": 0.5}
    ok = check_gates(cand, None, gates, base)
    assert ok.passed
    low = check_gates({**cand, "balanced_accuracy": 0.55}, None, gates, base)
    (failed,) = low.failed
    assert failed.detail == (
        "min_lift_over_baseline: balanced_accuracy 0.5500 vs baseline most_frequent 0.5000"
        " (lift +0.0500, required >= +0.1000)"
    )


def test_lift_exactly_at_the_margin_passes() -> None:
    gates = GateSettings(min_lift_over_baseline=0.1)
    cand = {"accuracy": 0.9, "macro_f1": 0.3 + 0.1}
    assert check_gates(cand, None, gates, {"baseline_macro_f1": 0.3}).passed


def test_no_lift_configured_means_no_baseline_check(data: Split) -> None:
    cand, base = _scored(data, USELESS), _baseline(data)
    result = check_gates(cand, None, GateSettings(), base)
    assert result.passed
    assert "min_lift_over_baseline" not in [c.name for c in result.checks]
    assert result.to_dict()["baseline"] == "most_frequent"


def test_lift_without_baseline_metrics_is_a_caller_error() -> None:
    cand = {"accuracy": 0.9, "macro_f1": 0.6}
    with pytest.raises(ValueError, match="min_lift_over_baseline"):
        check_gates(cand, None, GateSettings(min_lift_over_baseline=0.1))
    assert "baseline" not in check_gates(cand, None, GateSettings()).to_dict()


def test_class_with_too_few_holdout_rows_is_not_judged() -> None:
    cand = {"accuracy": 0.9, "macro_f1": 0.6, "class_1_recall": 0.0, "class_1_support": 4.0}
    gates = GateSettings(class_recall_floors={"1": 0.5}, min_slice_rows=30)
    (check,) = [c for c in check_gates(cand, None, gates).checks if c.name == "class_1_recall"]
    assert check.passed
    assert check.detail == "class_1_recall: not judged, 4 holdout rows < min_slice_rows 30"


def test_recall_floor_for_a_class_the_schema_lacks_fails_readably() -> None:
    cand = {"accuracy": 0.9, "macro_f1": 0.6, "class_0_recall": 1.0, "class_1_recall": 0.5}
    result = check_gates(cand, None, GateSettings(class_recall_floors={"yes": 0.5}))
    (failed,) = result.failed
    assert failed.name == "class_yes_recall"
    assert "'yes'" in failed.detail and "not in schema.classes ['0', '1']" in failed.detail


def test_gate_result_with_baseline_is_json_serialisable(data: Split) -> None:
    result = check_gates(_scored(data, TRAINING), None, MEANINGFUL, _baseline(data))
    back = json.loads(json.dumps(result.to_dict()))
    assert back["baseline"] == "most_frequent" and back["passed"] is True
    assert {c["name"] for c in back["checks"]} >= {"min_lift_over_baseline", "class_1_recall"}


# --------------------------------------------------------------------------- the retrain


def _settings(tmp_path: Path, **gates: object):  # type: ignore[no-untyped-def]
    config = {
        "schema": SCHEMA.model_dump(),
        "training": TRAINING.model_dump(),
        "gates": {"min_lift_over_baseline": 0.15, "class_recall_floors": {"1": 0.5}, **gates},
    }
    return settings_from_dict(config, root=tmp_path, source=tmp_path / "edgeloop.yaml")


def test_train_and_evaluate_carries_the_baseline_and_judges_the_lift(tmp_path: Path) -> None:
    trained = train_and_evaluate(_settings(tmp_path), imbalanced())
    base = trained.baseline_metrics
    assert base["baseline_balanced_accuracy"] == pytest.approx(0.5)
    assert base["baseline_rows"] == trained.metrics["rows"]  # the same holdout rows
    assert not any(k.startswith("baseline_") for k in trained.metrics)
    assert trained.gates.passed, trained.gates.summary()
    assert trained.gates.to_dict()["baseline"] == "most_frequent"

    stratified = train_and_evaluate(_settings(tmp_path, baseline="stratified"), imbalanced())
    assert stratified.baseline_metrics != base
    assert stratified.gates.to_dict()["baseline"] == "stratified"


def test_retrain_summary_and_output_show_the_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trained = train_and_evaluate(_settings(tmp_path), imbalanced())
    summary = RetrainSummary(
        status="registered",
        reason="test",
        data_version="abc",
        metrics=trained.metrics,
        gates=trained.gates.to_dict(),
        baseline_metrics=trained.baseline_metrics,
        message="registered v1 as champion",
    )
    print_retrain(summary.to_dict())
    out = capsys.readouterr().out
    m, b = trained.metrics["macro_f1"], trained.baseline_metrics["baseline_macro_f1"]
    assert f"macro_f1: {m:.4f} (baseline most_frequent {b:.4f}, lift {m - b:+.4f})" in out
    assert "balanced_accuracy: " in out and "min_lift_over_baseline" in out


def test_cached_summary_takes_the_baseline_from_the_run_metrics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logged = {"accuracy": 0.9, "macro_f1": 0.8, "baseline_macro_f1": 0.45, "fit_seconds": 1.0}
    cached = RetrainSummary(status="cached", reason="r", data_version="abc", metrics=logged)
    assert cached.baseline_metrics == {"baseline_macro_f1": 0.45}
    assert "baseline_macro_f1" not in cached.metrics and cached.metrics["macro_f1"] == 0.8
    print_retrain(cached.to_dict())
    assert "macro_f1: 0.8000 (baseline 0.4500, lift +0.3500)" in capsys.readouterr().out

    old = RetrainSummary(status="cached", reason="r", data_version="abc", metrics={"macro_f1": 0.8})
    assert old.baseline_metrics == {}
    print_retrain(old.to_dict())
    out = capsys.readouterr().out
    assert "macro_f1: 0.8000\n" in out and "baseline" not in out
