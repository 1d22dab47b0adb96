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
from edgeloop.models.training import Trained, train_and_evaluate
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


# --------------------------------------------------------------------------- the present
from edgeloop.core.keys import BATCH_ID, REFERENCE_BATCH  # noqa: E402
from pipelines.evaluate import HoldoutGroups, holdout_groups  # noqa: E402

#: Gates judging the present (the defaults) on accuracy, without floors.
PRESENT = GateSettings(metric="accuracy", max_regression=0.02)


def _holdout(reference: int, batches: dict[str, int]) -> pd.DataFrame:
    """Holdout rows: ``reference`` reference rows, then each batch's rows."""
    ids = [REFERENCE_BATCH] * reference + [b for b, n in batches.items() for _ in range(n)]
    return pd.DataFrame({"row_id": [f"r{i}" for i in range(len(ids))], BATCH_ID: ids})


def _groups(frame: pd.DataFrame, sizes: dict[str, int], **kw: object) -> HoldoutGroups:
    return holdout_groups(
        frame, sizes, recent_batches=int(kw.pop("recent", 2)), reference_share=0.2, **kw
    )


def test_present_weights_mix_reference_and_the_recent_batches_by_traffic() -> None:
    frame = _holdout(10, {"b1": 4, "b2": 2, "b3": 5})
    # b3 carried twice b2's traffic: it weighs twice as much, however many rows it has labeled.
    groups = _groups(frame, {"b1": 100, "b2": 50, "b3": 100})
    w = groups.weights
    assert groups.recent_batches == ["b2", "b3"]
    batch = frame[BATCH_ID].to_numpy()
    assert w["present_weighted"].sum() == pytest.approx(1.0)
    assert w["present_weighted"][batch == REFERENCE_BATCH].sum() == pytest.approx(0.2)
    assert w["present_weighted"][batch == "b2"].sum() == pytest.approx(0.8 / 3)
    assert w["present_weighted"][batch == "b3"].sum() == pytest.approx(0.8 * 2 / 3)
    assert (w["present_weighted"][batch == "b1"] == 0).all()  # older than the recent batches
    assert w["recent"][batch == "b1"].sum() == 0 and w["production"][batch == "b1"].sum() > 0
    assert groups.rows("recent") == 7 and groups.rows("reference") == 10
    assert groups.effective_rows("reference") == pytest.approx(10.0)


def test_inclusion_weights_act_within_a_batch_only() -> None:
    frame = _holdout(0, {"b1": 4, "b2": 2})
    weight = np.array([1.0, 1.0, 1.0, 7.0, 1.0, 1.0])  # one row drawn with probability 1/7
    w = _groups(frame, {"b1": 10, "b2": 10}, row_weight=weight).weights["recent"]
    assert w[:4].sum() == pytest.approx(0.5) and w[4:].sum() == pytest.approx(0.5)
    assert w[3] == pytest.approx(7 * w[0])


def test_no_production_rows_means_the_reference_alone_and_no_batch_column_is_reference() -> None:
    only_reference = _groups(_holdout(8, {}), {"b1": 100})
    present = only_reference.weights["present_weighted"]
    assert present.sum() == pytest.approx(1.0) and only_reference.rows("recent") == 0
    plain = pd.DataFrame({"row_id": ["a", "b", "c"]})
    groups = holdout_groups(plain, {}, recent_batches=3, reference_share=0.2)
    assert groups.rows("reference") == 3 and groups.rows("production") == 0


def _drifted_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame, HoldoutGroups]:
    """The issue's case: 300 reference rows and 20 of a recent drifted batch. The champion is
    right on every reference row and on 5 drifted ones; the candidate loses 14 reference rows
    (4.7 %) and is right on 10 drifted ones: worse overall, much better on the present."""
    frame = _holdout(300, {"b9": 20})
    y = np.zeros(320, dtype=int)
    champion, candidate = y.copy(), y.copy()
    champion[305:] = 1
    candidate[:14] = 1
    candidate[310:] = 1
    return y, champion, candidate, frame, _groups(frame, {"b9": 150})


BINARY = SCHEMA.model_copy(update={"classes": [0, 1]})


def test_a_candidate_that_fixes_the_drift_passes_on_the_present_and_failed_overall() -> None:
    y, champion, candidate, frame, groups = _drifted_case()
    cand = evaluate(y, candidate, frame, BINARY, [], groups)
    champ = evaluate(y, champion, frame, BINARY, [], groups)
    assert cand["recent_accuracy"] == pytest.approx(0.5)
    assert champ["recent_accuracy"] == pytest.approx(0.25)
    assert cand["reference_accuracy"] == pytest.approx(286 / 300)
    assert cand["present_weighted_accuracy"] == pytest.approx(0.2 * 286 / 300 + 0.8 * 0.5)
    assert champ["present_weighted_accuracy"] == pytest.approx(0.4)
    assert cand["present_weighted_rows"] == 320 and cand["recent_effective_rows"] == 20
    assert cand["accuracy"] - champ["accuracy"] == pytest.approx(-9 / 320)

    result = check_gates(cand, champ, PRESENT)
    assert result.passed, result.summary()
    check = next(c for c in result.checks if c.name == "non_inferiority")
    assert "present_weighted holdout, 320 rows" in check.detail
    assert check.value == pytest.approx(0.2 * (286 / 300 - 1) + 0.8 * 0.25)
    forgetting = next(c for c in result.checks if c.name == "reference_non_inferiority")
    assert forgetting.passed and forgetting.value == pytest.approx(-14 / 300)

    # Every holdout row alike (the rule before production rows counted): rejected.
    overall = check_gates(cand, champ, PRESENT.model_copy(update={"compare_on": "overall"}))
    assert [c.name for c in overall.failed] == ["non_inferiority"]
    assert "overall holdout" in overall.failed[0].detail
    recent = check_gates(cand, champ, PRESENT.model_copy(update={"compare_on": "recent"}))
    assert recent.passed and "recent holdout, 20 rows" in recent.checks[-2].detail


def test_forgetting_the_reference_fails_however_good_the_present() -> None:
    y, champion, candidate, frame, groups = _drifted_case()
    candidate[:20] = 1  # 6.7 % of the reference lost
    cand = evaluate(y, candidate, frame, BINARY, [], groups)
    champ = evaluate(y, champion, frame, BINARY, [], groups)
    result = check_gates(cand, champ, PRESENT)
    assert [c.name for c in result.failed] == ["reference_non_inferiority"]
    assert "reference holdout, 300 rows" in result.failed[0].detail
    off = PRESENT.model_copy(update={"reference_max_regression": None})
    assert check_gates(cand, champ, off).passed
    assert "reference_non_inferiority" not in [c.name for c in check_gates(cand, champ, off).checks]


def test_floors_judge_the_reference_holdout_unless_told_overall() -> None:
    y, _, candidate, frame, groups = _drifted_case()
    cand = evaluate(y, candidate, frame, BINARY, [], groups)
    assert cand["accuracy"] < 0.94 < cand["reference_accuracy"]
    floors = GateSettings(min_accuracy=0.94)
    result = check_gates(cand, None, floors)
    assert result.passed
    assert "(reference holdout, 300 rows" in result.checks[0].detail
    overall = check_gates(cand, None, floors.model_copy(update={"floors_on": "overall"}))
    assert [c.name for c in overall.failed] == ["min_accuracy"]


def test_metrics_without_groups_are_judged_on_the_overall_holdout() -> None:
    plain = {"accuracy": 0.8, "macro_f1": 0.7, "weighted_f1": 0.7, "balanced_accuracy": 0.7}
    result = check_gates(plain, {**plain, "accuracy": 0.9}, PRESENT)
    assert [c.name for c in result.checks] == ["min_accuracy", "min_macro_f1", "non_inferiority"]
    assert "overall holdout, no present_weighted rows" in result.failed[0].detail


def test_train_and_evaluate_weights_the_evaluation_sample_by_its_inclusion_probability(
    tmp_path: Path,
) -> None:
    """A real split and fit; the queue file under the data folder gives one batch's labeled
    rows their inclusion probabilities, and the retrain's groups use them."""
    from edgeloop.core import keys
    from edgeloop.core.layout import Layout

    data = imbalanced(1500)
    batch = np.where(np.arange(1500) < 900, REFERENCE_BATCH, "000001-b")
    batch[1200:] = "000002-c"
    data[BATCH_ID] = batch
    data["label_source"] = np.where(np.arange(1500) % 3 == 0, "annotation", "batch")
    settings = _settings(tmp_path, min_lift_over_baseline=None, class_recall_floors={})
    queue = data[data["label_source"] == "annotation"][["row_id", BATCH_ID]].copy()
    queue[keys.QUEUE_INCLUSION_PROB] = np.where(queue[BATCH_ID] == "000002-c", 0.25, 1.0)
    queue[keys.QUEUE_PURPOSE] = np.where(
        queue[BATCH_ID] == "000002-c", keys.PURPOSE_EVALUATION, keys.PURPOSE_EDGE_CASE
    )
    folder = Layout.of(settings).queue
    folder.mkdir(parents=True)
    queue.to_parquet(folder / "000002-c.parquet", index=False)

    def weighted_by(mode: str) -> Trained:
        training = settings.training.model_copy(update={"holdout_weights": mode})
        return train_and_evaluate(settings.model_copy(update={"training": training}), data)

    uniform, weighted = weighted_by("uniform"), weighted_by("inclusion")
    assert uniform.holdout["weights"] == "uniform"
    assert weighted.holdout["weights"] == "inclusion"
    assert weighted.holdout["unknown_inclusion_rows"] == 0
    assert weighted.holdout["recent_batches"] == ["000001-b", "000002-c"]
    assert {b["batch"] for b in weighted.holdout["batches"]} == {
        REFERENCE_BATCH,
        "000001-b",
        "000002-c",
    }
    m, u = weighted.metrics, uniform.metrics
    assert m["recent_rows"] == u["recent_rows"] > 0
    # The sampled rows count 4x in their batch: fewer effective rows than rows.
    assert m["recent_effective_rows"] < u["recent_effective_rows"] <= u["recent_rows"]
    for key in ("reference_accuracy", "production_macro_f1", "present_weighted_accuracy"):
        assert key in m and not math.isnan(m[key])
    assert m["reference_rows"] + m["production_rows"] == m["rows"]


def test_retrain_output_shows_the_holdout_groups(capsys: pytest.CaptureFixture[str]) -> None:
    y, champion, candidate, frame, groups = _drifted_case()
    cand = evaluate(y, candidate, frame, BINARY, [], groups)
    champ = evaluate(y, champion, frame, BINARY, [], groups)
    summary = RetrainSummary(
        status="registered",
        reason="test",
        data_version="abc",
        metrics=cand,
        champion_metrics=champ,
        gates=check_gates(cand, champ, PRESENT).to_dict(),
    )
    print_retrain(summary.to_dict())
    out = capsys.readouterr().out
    assert "recent: accuracy 0.5000 (champion 0.2500), macro_f1 " in out
    assert "; 20 rows, effective 20.0" in out
    assert "present_weighted: accuracy 0.5907 (champion 0.4000)" in out
    assert "reference: accuracy 0.9533 (champion 1.0000)" in out
    assert "pass non_inferiority: accuracy 0.5907 vs champion 0.4000" in out


def test_the_retrain_run_logs_the_groups_their_params_and_holdout_json(tmp_path: Path) -> None:
    """Real MLflow store and project (init --data): the run has the prefixed metrics, the
    champion's beside them, the params that fix the groups and ``evaluation/holdout.json``."""
    from mlflow.tracking import MlflowClient

    from edgeloop.core.config import load_settings
    from edgeloop.data.store import DataStore
    from edgeloop.models.training import log_retrain
    from edgeloop.tracking.store import configure
    from tests.conftest import new_project, small_reference

    root = new_project(tmp_path)
    settings = load_settings(root / "edgeloop.yaml")
    configure(settings)
    reference = DataStore(settings).load_dataset()
    batch = small_reference(120, 9).assign(batch_id="000001-a", label_source="batch")
    batch.insert(0, "row_id", [f"000001-a-{i:06d}" for i in range(120)])
    dataset = pd.concat([reference.assign(label_source="batch"), batch], ignore_index=True)
    first = train_and_evaluate(settings, dataset)
    trained = train_and_evaluate(settings, dataset, champion=first.model)
    run_id, _ = log_retrain(
        settings,
        trained,
        data_version="v-test",
        key="k",
        reason="test",
        force=False,
        max_rows=0,
        flow_run_id="",
        flow_run_url="",
    )
    run = MlflowClient().get_run(run_id)
    metrics, params = run.data.metrics, run.data.params
    for key in ("recent_accuracy", "reference_accuracy", "present_weighted_macro_f1"):
        assert key in metrics and f"champion_{key}" in metrics
    assert metrics["recent_rows"] > 0 and metrics["unknown_inclusion_rows"] == 0
    assert params["recent_holdout_batches"] == "000001-a"
    assert params["gate_compare_on"] == "present_weighted" and params["reference_share"] == "0.2"
    path = MlflowClient().download_artifacts(run_id, "evaluation/holdout.json", str(tmp_path))
    holdout = json.loads(Path(path).read_text())
    assert [b["batch"] for b in holdout["batches"]] == ["reference", "000001-a"]
    assert sum(b["present_share"] for b in holdout["batches"]) == pytest.approx(1.0)
    names = {c.name for c in trained.gates.checks}
    assert {"non_inferiority", "reference_non_inferiority"} <= names


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"])
def test_the_bootstraps_confusion_scores_match_sklearn(metric: str) -> None:
    from pipelines.evaluate import _scores
    from pipelines.paired import _confusion_scores

    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    pred[:120] = y[:120]
    w = rng.random(200)
    conf = np.zeros((1, 3, 3))
    np.add.at(conf[0], (y, pred), w)
    correct, total = np.array([w[y == pred].sum()]), np.array([w.sum()])
    got = _confusion_scores(conf, correct, total, metric)[0]
    assert got == pytest.approx(_scores(y, pred, [0, 1, 2], w)[metric])


def test_paired_error_of_accuracy_is_the_textbook_one_and_zero_for_the_same_model() -> None:
    from pipelines.paired import paired_delta_se

    rng = np.random.default_rng(5)
    n = 600
    y = rng.integers(0, 2, n)
    cand = np.where(rng.random(n) < 0.8, y, 1 - y)
    champ = np.where(rng.random(n) < 0.7, y, 1 - y)
    one, strata = np.ones(n), np.zeros(n)
    d = (cand == y).astype(float) - (champ == y)
    textbook = d.std(ddof=1) / math.sqrt(n)
    se = paired_delta_se(y, cand, champ, one, strata, [0, 1], "accuracy", resamples=2000)
    assert se == pytest.approx(textbook, rel=0.1)
    assert paired_delta_se(y, cand, cand, one, strata, [0, 1], "macro_f1") == 0.0
    # Weight 0 leaves a row out: a group of 50 rows is noisier than the holdout.
    few = np.r_[np.ones(50), np.zeros(n - 50)]
    assert paired_delta_se(y, cand, champ, few, strata, [0, 1], "accuracy") > 2 * se
    assert math.isnan(paired_delta_se(y, cand, champ, np.zeros(n), strata, [0, 1], "accuracy"))


def test_a_small_unlucky_holdout_does_not_reject_but_a_clear_regression_does() -> None:
    cand = {"accuracy": 0.86, "macro_f1": 0.86, "rows": 40.0}
    champ = {"accuracy": 0.89, "macro_f1": 0.89, "rows": 40.0}
    gates = GateSettings(max_regression=0.02)
    noisy = check_gates(cand, champ, gates, delta_se={"overall": 0.05})
    check = next(c for c in noisy.checks if c.name == "non_inferiority")
    assert noisy.passed and check.bound == pytest.approx(-0.02 - 1.2816 * 0.05, abs=1e-4)
    assert "se 0.0500" in check.detail
    point = gates.model_copy(update={"non_inferiority_confidence": 0.0})
    assert not check_gates(cand, champ, point, delta_se={"overall": 0.05}).passed
    assert not check_gates(cand, champ, gates).passed  # no error known: the point estimate
    worse = {**cand, "macro_f1": 0.70}
    assert not check_gates(worse, champ, gates, delta_se={"overall": 0.05}).passed


def test_train_and_evaluate_records_the_paired_errors(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    first = train_and_evaluate(settings, imbalanced())
    other = settings.model_copy(update={"seeds": settings.seeds.model_copy(update={"train": 7})})
    again = train_and_evaluate(other, imbalanced(), champion=first.model)
    se = again.holdout["delta_se"]
    assert se["overall"] > 0 and "delta_se" not in first.holdout
    check = next(c for c in again.gates.checks if c.name == "non_inferiority")
    assert f"se {se['overall']:.4f}" in check.detail, check.detail


def test_a_large_groups_paired_error_from_a_subsample_matches_the_full_bootstrap() -> None:
    """The m-out-of-n bootstrap (``max_rows``): the subsample's error scaled by sqrt(m/n)."""
    from pipelines.paired import paired_delta_se

    rng = np.random.default_rng(9)
    n = 8000
    y = rng.integers(0, 3, n)
    cand = np.where(rng.random(n) < 0.85, y, (y + 1) % 3)
    champ = np.where(rng.random(n) < 0.8, y, (y + 2) % 3)
    one, strata = np.ones(n), rng.integers(0, 4, n)
    for metric in ("accuracy", "macro_f1"):
        full = paired_delta_se(y, cand, champ, one, strata, [0, 1, 2], metric, max_rows=n)
        sub = paired_delta_se(y, cand, champ, one, strata, [0, 1, 2], metric, max_rows=1500)
        assert sub == pytest.approx(full, rel=0.2), metric
        assert sub != full  # it did run on the subsample
