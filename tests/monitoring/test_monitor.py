"""Monitoring: the drift statistics on their own, then the monitor flow on real stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.config import MonitoringSettings
from edgeloop.core.errors import MonitoringError
from pipelines.monitor import (
    batch_report,
    build_reference,
    confidence_stats,
    feature_drift,
    prediction_shift,
    psi,
)
from tests.conftest import edit_config, small_reference, small_schema

SCHEMA = small_schema()
SETTINGS = MonitoringSettings()


def _frames(rows: int = 4000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A reference and a batch drawn from the same distribution (two halves of one draw)."""
    full = small_reference(2 * rows, seed=5)
    return full.iloc[:rows].reset_index(drop=True), full.iloc[rows:].reset_index(drop=True)


def _by_name(drift: list[Any]) -> dict[str, Any]:
    return {f.feature: f for f in drift}


# ---------------------------------------------------------------------- statistics
def test_identical_data_has_no_drift() -> None:
    ref, _ = _frames()
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    drift = feature_drift(profile, ref, SETTINGS)
    assert [f.feature for f in drift] == SCHEMA.features
    assert not any(f.drifted for f in drift)
    assert all(f.psi == pytest.approx(0.0, abs=1e-12) for f in drift)
    assert all(f.p_value > 0.99 for f in drift)


def test_same_distribution_batch_has_no_drift() -> None:
    ref, batch = _frames()
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    report = batch_report(
        profile,
        batch,
        batch["label"].to_numpy(),
        np.full(len(batch), 0.9),
        SETTINGS,
        min_confidence=0.6,
    )
    assert report.n_drifted == 0 and report.drift_share == 0.0 and not report.drifted
    assert max(f.psi for f in report.features) < SETTINGS.psi_threshold / 2
    assert report.prediction.psi < 0.01


def test_a_shifted_feature_drifts_with_psi_above_the_threshold() -> None:
    ref, batch = _frames()
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    shifted = batch.assign(income=batch["income"] + 15_000)
    drift = _by_name(feature_drift(profile, shifted, SETTINGS))
    assert drift["income"].drifted and drift["income"].psi > SETTINGS.psi_threshold
    assert drift["income"].test == "ks" and drift["income"].p_value < 1e-6
    assert not any(drift[c].drifted for c in ("age", "score", "region"))
    # One of four features (25 %) is below the batch threshold (30 %); two are above it.
    report = batch_report(profile, shifted, shifted["label"], shifted["score"], SETTINGS,
                          min_confidence=0.6)  # fmt: skip
    assert report.n_drifted == 1 and report.drift_share == 0.25 and not report.drifted
    two = shifted.assign(score=shifted["score"] + 0.5)
    report = batch_report(profile, two, two["label"], two["score"], SETTINGS, min_confidence=0.6)
    assert report.n_drifted == 2 and report.drifted
    assert {f.feature for f in report.drifted_features} == {"income", "score"}


def test_a_small_shift_needs_the_test_and_half_the_threshold() -> None:
    ref, batch = _frames()
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    # A shift the KS test is sure about but whose PSI stays under half the threshold: no drift.
    nudged = batch.assign(income=batch["income"] + 2_500)
    f = _by_name(feature_drift(profile, nudged, SETTINGS))["income"]
    assert f.p_value < SETTINGS.p_value and f.psi < SETTINGS.psi_threshold / 2
    assert not f.drifted
    # The same shift with a lower PSI threshold: the test plus PSI > threshold / 2 flags it.
    low = SETTINGS.model_copy(update={"psi_threshold": 1.5 * f.psi})
    g = _by_name(feature_drift(profile, nudged, low))["income"]
    assert g.psi < low.psi_threshold and g.drifted


def test_an_unseen_category_is_drift() -> None:
    ref, batch = _frames()
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    regions = batch["region"].to_numpy(dtype=object).copy()
    regions[:40] = "west"  # 1 % of the rows, a category the reference never had
    f = _by_name(feature_drift(profile, batch.assign(region=regions), SETTINGS))["region"]
    assert f.drifted and f.unseen == ("west",) and f.unseen_share == pytest.approx(0.01)
    assert f.test == "chi2" and f.p_value < 1e-6
    assert f.psi > 0  # the unseen bin counts against an EPSILON reference share


def test_a_new_value_of_a_high_cardinality_column_alone_is_not_drift() -> None:
    ref, batch = _frames()
    schema = SCHEMA.model_copy(update={"high_cardinality": ["region"]})
    profile = build_reference(ref, schema, SETTINGS, seed=0)
    regions = batch["region"].to_numpy(dtype=object).copy()
    regions[:40] = "west"  # new values are expected in an open set (ids, cities, SKUs)
    f = _by_name(feature_drift(profile, batch.assign(region=regions), SETTINGS))["region"]
    assert f.unseen == ("west",) and not f.drifted
    regions[:4000] = "west"  # a new value taking over is still drift, by PSI
    f = _by_name(feature_drift(profile, batch.assign(region=regions), SETTINGS))["region"]
    assert f.drifted


def test_categorical_share_shift_drifts() -> None:
    ref, batch = _frames()
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    east = batch.assign(region="east")
    f = _by_name(feature_drift(profile, east, SETTINGS))["region"]
    assert f.drifted and f.unseen == () and f.psi > SETTINGS.psi_threshold


def test_inputs_are_not_modified() -> None:
    ref, batch = _frames(1000)
    batch = batch.assign(income=batch["income"] + 20_000)
    batch.loc[::50, "score"] = np.nan
    labels = batch["label"].astype(object).where(np.arange(len(batch)) % 3 == 0, None)
    pred = batch["label"].to_numpy().copy()
    chall = (pred + 1) % 3
    conf = np.linspace(0.3, 1.0, len(batch))
    before = [ref.copy(deep=True), batch.copy(deep=True), labels.copy(), pred.copy(),
              chall.copy(), conf.copy()]  # fmt: skip
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    report = batch_report(profile, batch, pred, conf, SETTINGS, min_confidence=0.6,
                          challenger_predicted=chall, labels=labels)  # fmt: skip
    pd.testing.assert_frame_equal(ref, before[0])
    pd.testing.assert_frame_equal(batch, before[1])
    pd.testing.assert_series_equal(labels, before[2])
    for now, then in zip((pred, chall, conf), before[3:], strict=True):
        np.testing.assert_array_equal(now, then)
    assert report.features[2].missing_share == pytest.approx(0.02)
    # The profile is read-only: it is shared by every batch of a run.
    with pytest.raises(ValueError):
        profile.numeric["income"].sample[0] = 0.0


@pytest.mark.parametrize("dtype", ["object", "Int64", "float64"])
def test_accuracy_and_agreement_use_labeled_rows_only(dtype: str) -> None:
    ref, batch = _frames(1000)
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    y = batch["label"].to_numpy()
    champ = y.copy()
    champ[:100] = (y[:100] + 1) % 3  # wrong on the first 100 rows
    chall = y.copy()
    # Labels known on rows 0..399; missing elsewhere as None/NaN/pd.NA, the ways a dataset
    # column read back from Parquet can hold them.
    known = np.arange(len(y)) < 400
    labels = pd.Series(np.where(known, y.astype(float), np.nan)).astype(dtype)
    report = batch_report(profile, batch, champ, np.full(len(y), 0.8), SETTINGS,
                          min_confidence=0.6, challenger_predicted=chall, labels=labels)  # fmt: skip
    assert report.labeled_rows == 400
    assert report.champion_accuracy == pytest.approx(300 / 400)
    assert report.challenger_accuracy == 1.0
    assert report.agreement == pytest.approx(1 - 100 / len(y))
    unlabeled = batch_report(profile, batch, champ, np.full(len(y), 0.8), SETTINGS,
                             min_confidence=0.6)  # fmt: skip
    assert unlabeled.champion_accuracy is None and unlabeled.agreement is None


def test_prediction_shift_and_confidence() -> None:
    ref, _ = _frames(3000)
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    assert sum(profile.class_shares) == pytest.approx(1.0)
    same = prediction_shift(profile, ref["label"].to_numpy())
    assert same.psi == pytest.approx(0.0, abs=1e-12) and same.p_value > 0.99
    skewed = prediction_shift(profile, np.zeros(500, dtype=np.int64))
    assert skewed.psi > 1.0 and skewed.p_value < 1e-6 and skewed.batch_shares["0"] == 1.0

    conf = np.array([0.1, 0.5, 0.59, 0.6, 0.95, 1.0, np.nan])
    stats = confidence_stats(conf, threshold=0.6, bins=10)
    assert stats.rows == 6 and sum(stats.counts) == 6
    assert stats.low_share == pytest.approx(3 / 6)
    assert stats.mean == pytest.approx(np.nanmean(conf))
    assert stats.counts[-1] == 2  # 0.95 and 1.0 (the top edge is in the last bin)


def test_reference_sample_is_seeded_and_sorted() -> None:
    ref, _ = _frames(3000)
    small = SETTINGS.model_copy(update={"reference_sample": 500})
    one = build_reference(ref, SCHEMA, small, seed=7)
    two = build_reference(ref, SCHEMA, small, seed=7)
    other = build_reference(ref, SCHEMA, small, seed=8)
    sample = one.numeric["income"].sample
    assert len(sample) == 500 and one.sample_rows == 500
    assert np.all(np.diff(sample) >= 0)
    np.testing.assert_array_equal(sample, two.numeric["income"].sample)
    assert not np.array_equal(sample, other.numeric["income"].sample)
    # Bins come from the whole reference, not the sample.
    assert one.numeric["income"].shares.sum() == pytest.approx(1.0)
    assert len(one.numeric["income"].edges) == SETTINGS.psi_bins - 1


def test_psi_and_errors_name_the_problem() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]) > 0.5  # an empty reference bin is EPSILON
    ref, batch = _frames(500)
    profile = build_reference(ref, SCHEMA, SETTINGS, seed=0)
    with pytest.raises(MonitoringError, match="the batch has no column 'income'"):
        feature_drift(profile, batch.drop(columns=["income"]), SETTINGS)
    with pytest.raises(
        MonitoringError, match="champion predictions have 3 rows, the batch has 500"
    ):
        batch_report(profile, batch, [0, 1, 2], np.ones(500), SETTINGS, min_confidence=0.6)
    with pytest.raises(MonitoringError, match="reference frame is empty"):
        build_reference(ref.iloc[:0], SCHEMA, SETTINGS, seed=0)


def test_dashboard_page_is_self_contained(tmp_path: Path) -> None:
    from edgeloop.core.config import settings_from_dict
    from edgeloop.monitoring.dashboard import render

    schema = SCHEMA.model_dump()
    settings = settings_from_dict({"schema": schema}, root=tmp_path, source=tmp_path / "e.yaml")
    history = []
    for i in range(1, 6):
        drifted = i == 5
        metrics = {"rows": 100.0, "labeled_rows": 20.0 * (i % 2), "drift_share": 0.75 * drifted,
                   "mean_confidence": 0.8, "prediction_psi": 0.01,
                   **{f"psi.{c}": (0.4 if drifted else 0.02 * i) for c in SCHEMA.features}}  # fmt: skip
        if i % 2:
            metrics["champion_accuracy"] = 0.9 - 0.05 * i
        metrics.update({"cbpe_accuracy_champion": 0.8 - 0.01 * i,
                        "cbpe_accuracy_champion_low": 0.7, "cbpe_accuracy_champion_high": 0.9,
                        "cbpe_calibrated_champion": float(i > 1)})  # fmt: skip
        history.append({
            "batch_id": f"{i:06d}-abcdef012345", "seq": i, "run_id": f"r{i}", "start_time": i,
            "metrics": metrics,
            "tags": {"edgeloop.drifted": str(drifted).lower(),
                     "edgeloop.drifted_features": "age,<b>income</b>" if drifted else "",
                     "edgeloop.confidence_histogram": json.dumps([1] * 20),
                     "edgeloop.cbpe_flags": "ask for labels: <i>v2</i>; likely regression" * drifted},
        })  # fmt: skip
    backlog = {"queued": 40, "open": 10, "labeled": 30, "oldest_open_hours": 80.5,
               "median_hours_to_label": 20.0, "p90_hours_to_label": 50.0,
               "within_sla_share": 0.8, "sla_days": 3.0}  # fmt: skip
    page = render(settings, history, backlog)
    assert page.count('src="data:image/png;base64,') == 5  # every plot, the backlog included
    assert "<script" not in page and "://" not in page
    assert "&lt;b&gt;income&lt;/b&gt;" in page  # tag text is escaped
    assert page.index("000005-abcdef012345") < page.index("000001-abcdef012345")  # newest first
    # The label-free estimates: value, band, "raw" for an uncalibrated one; flags, escaped.
    assert "<td>0.750 (0.70–0.90)</td>" in page and "<td>0.790 (0.70–0.90) raw</td>" in page
    assert "ask for labels: &lt;i&gt;v2&lt;/i&gt;</li>" in page and "likely regression</li>" in page
    empty = render(settings, [], {"queued": 0, "sla_days": 3.0})
    assert "No batch has been monitored yet" in empty and "<img" not in empty


def test_label_free_estimates_flag_but_never_decide(tmp_path: Path) -> None:
    from edgeloop.core.config import settings_from_dict
    from edgeloop.monitoring.estimates import BatchEstimates, ModelEstimate, flags
    from pipelines.performance import AccuracyEstimate

    settings = settings_from_dict(
        {"schema": SCHEMA.model_dump(), "gates": {"min_accuracy": 0.8, "max_regression": 0.02}},
        root=tmp_path,
        source=tmp_path / "e.yaml",
    )

    def est(version: str, acc: float, se: float = 0.02, source: str = "own") -> ModelEstimate:
        a = AccuracyEstimate(acc, se, acc - 2 * se, acc + 2 * se, 100, source != "raw")
        return ModelEstimate(version, a, None, source)

    assert flags(settings, est("3", 0.9), est("4", 0.9)) == []
    assert flags(settings, est("3", 0.9), None) == []
    low = flags(settings, est("3", 0.7), None)
    assert len(low) == 1 and low[0].startswith("ask for labels: champion v3") and "0.8" in low[0]
    worse = flags(settings, est("3", 0.9), est("4", 0.8))
    assert len(worse) == 1 and worse[0].startswith("likely regression: challenger v4")
    # Within the estimates' noise (one standard error of the difference): no flag.
    assert flags(settings, est("3", 0.9, 0.05), est("4", 0.85, 0.05)) == []
    # A raw (uncalibrated) estimate is flagged as such, is not held against the floor, and is
    # not compared with a calibrated one.
    raw = flags(settings, est("1", 0.5, source="raw"), est("2", 0.9))
    assert len(raw) == 1 and raw[0].startswith("champion v1 has no calibration")
    both = BatchEstimates(est("1", 0.5, source="raw"), est("2", 0.9), raw)
    m = both.metrics()
    assert m["cbpe_accuracy_champion"] == 0.5 and m["cbpe_calibrated_champion"] == 0.0
    assert m["cbpe_accuracy_challenger_low"] == pytest.approx(0.86)
    assert m["cbpe_calibrated_challenger"] == 1.0 and "cbpe_macro_f1_champion" not in m
    assert both.to_dict()["champion"]["source"] == "raw"


def test_the_weekly_review_shows_the_estimates_and_their_flags() -> None:
    from edgeloop.reports.render import to_html, to_markdown
    from edgeloop.reports.result import MonitoredBatch, Review

    def batch(i: int, est: float, calibrated: bool, flags: tuple[str, ...]) -> MonitoredBatch:
        return MonitoredBatch(
            batch_id=f"00000{i}-b", batch_index=i, at=f"2026-01-0{i}T00:00:00+00:00",
            rows=100.0, labeled_rows=0.0, drift_share=0.1, n_drifted_features=0.0,
            prediction_psi=0.01, mean_confidence=0.6, low_confidence_share=0.2,
            champion_accuracy=None, challenger_accuracy=None, agreement=None, drifted=False,
            drifted_features=(), top_psi=(), run_id=f"r{i}", mlflow_url="", flow_run_url="",
            cbpe_accuracy_champion=est, cbpe_accuracy_challenger=0.71 if i == 2 else None,
            cbpe_calibrated_champion=calibrated, cbpe_flags=flags,
        )  # fmt: skip

    review = Review(
        project="p", start="2026-01-01T00:00:00+00:00", end="2026-01-08T00:00:00+00:00",
        days=7, generated_at="2026-01-08T00:00:00+00:00", tracking_uri="sqlite:///x",
        monitoring=[batch(1, 0.6, False, ("champion v1 has no calibration",)),
                    batch(2, 0.812, True, ("likely regression: challenger v2 *estimated*",))],
        monitoring_enabled=True,
    )  # fmt: skip
    md = to_markdown(review)
    assert "champion est. (CBPE)" in md and "challenger est. (CBPE)" in md
    assert "0.6000 raw" in md and "0.8120" in md and "0.7100" in md
    assert "- `000001-b`: champion v1 has no calibration" in md
    assert "likely regression: challenger v2 \\*estimated\\*" in md  # data is not markup
    assert "<em>" not in to_html(review)


# ---------------------------------------------------------------------- real stores
def _drifted_batch(project: Path, rows: int = 200) -> pd.DataFrame:
    """Every numeric feature from the top fifth of the reference, every region 'east': inside
    the validated ranges (so it is accepted), far from the reference's distribution."""
    ref = pd.read_parquet(project / "data" / "reference" / "reference.parquet")
    rng = np.random.default_rng(9)
    out = {}
    for col in ("age", "income", "score"):
        top = ref.loc[ref[col] >= ref[col].quantile(0.8), col].to_numpy()
        out[col] = rng.choice(top, rows)
    return pd.DataFrame({**out, "region": pd.array(["east"] * rows, dtype="str")})


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_monitor_flow_flags_drift_logs_runs_and_retrains(project: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from edgeloop.core.config import load_settings
    from edgeloop.data.store import DataStore
    from edgeloop.monitoring.monitor import monitor_batches
    from edgeloop.tracking.store import ensure_experiment
    from flows.ingest import ingest
    from flows.monitor import monitor
    from flows.retrain import retrain
    from flows.score import score

    # Small forests and no non-inferiority gate: the test is about monitoring, not training.
    edit_config(project, training={"params": {"n_estimators": 30, "n_jobs": 1}},
                gates={"max_regression": 1.0})  # fmt: skip
    config = str(project / "edgeloop.yaml")
    settings = load_settings(config)
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    normal, drifted = tmp_path / "normal.csv", tmp_path / "drifted.csv"
    small_reference(300, 21).to_csv(normal, index=False)  # labeled: accuracy is computable
    ingest([str(normal)], config=config)
    assert retrain(reason="v2", config=config)["alias"] == "challenger"
    _drifted_batch(project).to_csv(drifted, index=False)
    ingest([str(drifted)], config=config)
    seq = {Path(e.source).stem: e for e in DataStore(settings).ledger()}
    assert {e.status for e in seq.values()} == {"accepted"}
    written = score(config=config)
    assert {(w["alias"], w["version"]) for w in written} == {("champion", "1"), ("challenger", "2")}

    out = monitor(config=config)

    by_batch = {b["batch_id"]: b for b in out["monitored"]}
    normal_id, drifted_id = seq["normal"].batch_id, seq["drifted"].batch_id
    assert set(by_batch) == {normal_id, drifted_id}
    assert out["drifted"] == [drifted_id]
    assert by_batch[drifted_id]["n_drifted"] == 4 and by_batch[normal_id]["n_drifted"] == 0
    assert by_batch[normal_id]["labeled_rows"] == 300
    assert by_batch[drifted_id]["labeled_rows"] == 0

    # One MLflow run per batch, metrics at step = ledger sequence number, the fixed names.
    client = MlflowClient()
    exp = ensure_experiment(settings, "monitoring")
    runs = {r.data.tags["edgeloop.batch_id"]: r for r in client.search_runs([exp])}
    assert set(runs) == {normal_id, drifted_id}
    for batch_id, name in ((normal_id, "normal"), (drifted_id, "drifted")):
        run = runs[batch_id]
        assert run.info.run_name == f"monitor-{batch_id}"
        for metric in ("rows", "drift_share", "psi.income", "agreement", "mean_confidence"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [h.step for h in history] == [seq[name].seq], (batch_id, metric)
        tags = run.data.tags
        assert tags["edgeloop.batch_index"] == str(seq[name].seq)
        assert (tags["edgeloop.champion_version"], tags["edgeloop.challenger_version"]) == (
            "1",
            "2",
        )
        assert tags["prefect.flow_run_id"] and tags["prefect.flow_run_url"].startswith("http")
        assert {a.path for a in client.list_artifacts(run.info.run_id, "drift")} == {
            "drift/features.csv",
            "drift/report.json",
        }
    d, n = runs[drifted_id].data, runs[normal_id].data
    assert d.tags["edgeloop.drifted"] == "true" and n.tags["edgeloop.drifted"] == "false"
    assert set(d.tags["edgeloop.drifted_features"].split(",")) == set(SCHEMA.features)
    assert d.metrics["psi.income"] > settings.monitoring.psi_threshold
    assert "champion_accuracy" in n.metrics and "challenger_accuracy" in n.metrics
    assert "champion_accuracy" not in d.metrics  # no labeled rows in the drifted batch

    # Label-free estimates (CBPE) on both batches. The champion's calibration is its
    # recalibration on the challenger's holdout (same rows as the challenger's own).
    for run in (n, d):
        for metric in ("cbpe_accuracy_champion", "cbpe_accuracy_challenger"):
            assert run.metrics[metric + "_low"] <= run.metrics[metric]
            assert run.metrics[metric] <= run.metrics[metric + "_high"]
        assert run.metrics["cbpe_calibrated_champion"] == 1.0
        assert run.metrics["cbpe_calibrated_challenger"] == 1.0
    assert n.metrics["true_accuracy_champion"] == n.metrics["champion_accuracy"]
    assert "true_accuracy_champion" not in d.metrics
    # Calibrated, the estimate is near the accuracy on the labeled batch; raw confidence is not
    # what the estimate is. (Only the champion: the challenger trained on most of these rows.)
    assert abs(n.metrics["cbpe_accuracy_champion"] - n.metrics["champion_accuracy"]) < 0.15
    assert n.metrics["cbpe_accuracy_champion"] != pytest.approx(n.metrics["mean_confidence"])
    normal_run = runs[normal_id].info.run_id
    est = json.loads(
        Path(
            client.download_artifacts(normal_run, "performance/estimates.json", str(tmp_path))
        ).read_text()
    )
    assert est["champion"]["version"] == "1" and est["champion"]["source"] == "challenger-holdout"
    assert est["challenger"]["version"] == "2" and est["challenger"]["source"] == "own"
    assert by_batch[normal_id]["cbpe_accuracy_champion"] == n.metrics["cbpe_accuracy_champion"]
    v2_run = _registry_run(settings, "2")
    shared = json.loads(
        Path(
            client.download_artifacts(v2_run, "calibration/champion.json", str(tmp_path))
        ).read_text()
    )
    assert shared["version"] == "1" and shared["format"] == 1 and shared["rows"] > 0

    # The dashboard: self-contained HTML with inline images, logged to the newest run.
    page = Path(out["dashboard"])
    assert page == project / "reports" / "dashboard.html"
    text = page.read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') >= 4
    assert "<script" not in text and "://" not in text  # nothing fetched from elsewhere
    assert drifted_id in text and normal_id in text
    logged = client.list_artifacts(out["monitored"][-1]["run_id"], "dashboard")
    assert [a.path for a in logged] == ["dashboard/dashboard.html"]

    # Drift started one retrain, with the reason, and one event per drifted batch.
    rt = out["retrain"]
    assert rt["mode"] == "subflow" and rt["reason"].startswith(f"drift: batch {drifted_id} (4 of 4")
    training = ensure_experiment(settings, "training")
    reasons = [r.data.tags.get("edgeloop.reason", "") for r in client.search_runs([training])]
    assert sum(r.startswith("drift") for r in reasons) == 1
    assert len(out["events"]) == 1

    with get_client(sync_client=True) as prefect:
        keys = {
            a.key
            for a in prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(
                        any_=["monitor-summary", "monitor-report", "monitor-dashboard"]
                    )
                )
            )
        }
    assert keys == {"monitor-summary", "monitor-report", "monitor-dashboard"}

    # A retried task (same flow run) reports what the first attempt logged, and logs nothing.
    retried = monitor_batches(settings, flow_run_id=d.tags["prefect.flow_run_id"])
    assert [b.run_id for b in retried.monitored] == [b["run_id"] for b in out["monitored"]]
    assert [b.batch_id for b in retried.drifted] == [drifted_id]
    assert len(client.search_runs([exp])) == 2

    # The estimates never move an alias.
    from edgeloop.tracking.registry import Registry

    assert Registry(settings).aliases()["champion"] == "1"

    # A second run is a no-op: no new run, no retrain.
    again = monitor(config=config)
    assert again["monitored"] == [] and again["retrain"] is None and again["events"] == []
    assert sorted(again["already_monitored"]) == sorted([normal_id, drifted_id])
    assert len(client.search_runs([exp])) == 2
    reasons = [r.data.tags.get("edgeloop.reason", "") for r in client.search_runs([training])]
    assert sum(r.startswith("drift") for r in reasons) == 1


def _registry_run(settings: Any, version: str) -> str:
    from edgeloop.tracking.registry import Registry

    return str(Registry(settings).version(version).run_id)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_version_without_a_calibration_is_estimated_raw_and_flagged(
    project: Path, tmp_path: Path
) -> None:
    """Versions registered before calibrations were stored (or with an unreadable one): the
    monitor falls back to the raw mean confidence, flags it, and does not fail."""
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    from edgeloop.core.config import load_settings
    from edgeloop.monitoring.monitor import monitor_batches
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score

    edit_config(project, training={"params": {"n_estimators": 20, "n_jobs": 1}},
                gates={"min_accuracy": 0.0})  # fmt: skip
    config = str(project / "edgeloop.yaml")
    settings = load_settings(config)
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    run = MlflowClient().get_run(_registry_run(settings, "1"))
    calibration = Path(urlparse(run.info.artifact_uri).path) / "calibration" / "confidence.json"
    assert json.loads(calibration.read_text())["method"] == "isotonic"
    calibration.write_text("{not json")  # unreadable
    results = []
    for i, seed in enumerate((31, 32)):
        batch = tmp_path / f"batch-{i}.csv"
        small_reference(120, seed).to_csv(batch, index=False)
        ingest([str(batch)], config=config)
        score(config=config)
        (result,) = monitor_batches(settings).monitored
        results.append(result)
        calibration.unlink(missing_ok=True)  # the second batch: no file, as before this change
    for b in results:
        assert b.cbpe_calibrated_champion is False and b.cbpe_accuracy_challenger is None
        assert b.mean_confidence is not None
        assert b.cbpe_accuracy_champion == pytest.approx(b.mean_confidence)
        assert any("v1 has no calibration" in f for f in b.cbpe_flags)
        logged = MlflowClient().get_run(b.run_id).data
        assert logged.metrics["cbpe_calibrated_champion"] == 0.0
        assert "has no calibration" in logged.tags["edgeloop.cbpe_flags"]
        assert "has no calibration" in logged.tags["mlflow.note.content"]


@pytest.mark.slow
def test_monitor_command_is_listed_and_unknown_batches_are_named(project: Path) -> None:
    from edgeloop.core.config import load_settings
    from edgeloop.core.errors import MonitoringError as GlueError
    from edgeloop.monitoring.monitor import monitor_batches
    from tests.conftest import run_cli

    res = run_cli("monitor", "--help", cwd=project)
    assert res.returncode == 0 and "--no-retrain" in res.stdout and "--json" in res.stdout
    settings = load_settings(project / "edgeloop.yaml")
    with pytest.raises(GlueError, match="no accepted batch 000042-nope"):
        monitor_batches(settings, ["000042-nope"])
    # Nothing scored yet: nothing to do, nothing logged.
    empty = monitor_batches(settings)
    assert empty.monitored == [] and empty.not_scored == [] and empty.latest_run_id == ""
