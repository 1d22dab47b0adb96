"""Shadow evaluation, promotion and rollback: the statistics, then the whole path on real stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeloop.core.config import GateSettings, ShadowSettings, load_settings
from pipelines.shadow import compare, decide, mcnemar_exact

CLASSES = [0, 1, 2]


def _preds(n: int, champ_acc: float, chall_acc: float, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    a = np.where(rng.random(n) < champ_acc, y, (y + 1) % 3)
    b = np.where(rng.random(n) < chall_acc, y, (y + 2) % 3)
    return y, a, b


def test_clearly_better_challenger_is_promoted() -> None:
    y, a, b = _preds(600, 0.70, 0.90)
    cmp = compare(y, a, b, classes=CLASSES, settings=ShadowSettings(), seed=1)
    assert cmp.n == 600 and cmp.challenger > cmp.champion
    assert 0 < cmp.ci_low < cmp.delta < cmp.ci_high
    assert cmp.mcnemar_p < 0.001
    assert 0 < cmp.cs_low < cmp.ci_low  # the sequence is wider than a one-look interval
    d = decide(cmp, ShadowSettings(), GateSettings())
    assert d.promote and d.state == "promote" and "confidence sequence" in d.summary()


def test_equal_models_are_kept_and_the_reason_says_why() -> None:
    y, a, _ = _preds(600, 0.8, 0.8)
    cmp = compare(y, a, a.copy(), classes=CLASSES, settings=ShadowSettings(), seed=1)
    assert cmp.delta == 0 and cmp.agreement == 1.0 and cmp.mcnemar_p == 1.0
    d = decide(cmp, ShadowSettings(), GateSettings())
    assert not d.promote and d.state == "keep" and "same class on every row" in d.summary()


def test_equally_good_different_models_need_more_labels() -> None:
    y, a, b = _preds(600, 0.8, 0.8)
    cmp = compare(y, a, b, classes=CLASSES, settings=ShadowSettings(), seed=1)
    d = decide(cmp, ShadowSettings(), GateSettings(), labels_per_day=50.0)
    assert not d.promote and d.state == "need_more" and d.labels_needed
    assert "need about" in d.summary() and "days at the current labeling rate" in d.summary()


def test_too_few_rows_is_not_evidence() -> None:
    # The fixed-sample rule (macro_f1) counts labeled rows; the sequential one, disagreements.
    s = ShadowSettings(min_samples=200, metric="macro_f1", bootstrap_samples=100)
    y, a, b = _preds(40, 0.5, 1.0)
    d = decide(compare(y, a, b, classes=CLASSES, settings=s, seed=1), s, GateSettings())
    assert not d.promote and "only 40 labeled rows" in d.summary()
    y, a, b = _preds(12, 0.5, 1.0)
    s = ShadowSettings()
    d = decide(compare(y, a, b, classes=CLASSES, settings=s, seed=1), s, GateSettings())
    assert (
        not d.promote
        and "labeled disagreements (shadow.min_labeled_disagreements 10)" in d.summary()
    )


def test_slice_floor_blocks_promotion() -> None:
    y, a, b = _preds(600, 0.70, 0.90)
    mask = np.zeros(600, dtype=bool)
    mask[:100] = True
    b = b.copy()
    b[:100] = (y[:100] + 1) % 3  # the challenger fails the whole slice
    cmp = compare(
        y, a, b, classes=CLASSES, settings=ShadowSettings(), seed=1, slice_masks={"s": mask}
    )
    d = decide(cmp, ShadowSettings(), GateSettings(slice_floors={"s": 0.5}))
    assert not d.promote and "slice s: challenger 0.0000 below floor" in d.summary()


def test_bootstrap_is_seeded_and_macro_f1_works() -> None:
    y, a, b = _preds(300, 0.7, 0.8)
    s = ShadowSettings(metric="macro_f1", bootstrap_samples=200)
    one = compare(y, a, b, classes=CLASSES, settings=s, seed=5)
    two = compare(y, a, b, classes=CLASSES, settings=s, seed=5)
    assert (one.ci_low, one.ci_high) == (two.ci_low, two.ci_high)
    assert one.metric == "macro_f1" and one.ci_low <= one.delta <= one.ci_high


def test_mcnemar_matches_the_binomial_definition() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 10) == pytest.approx(1.0)
    assert mcnemar_exact(0, 10) == pytest.approx(2 * 0.5**10)


# ---------------------------------------------------------------------- which rows are evidence
def _queue_file(settings, batch: str, rows: list[tuple[str, str | None, float | None]]) -> None:  # type: ignore[no-untyped-def]
    """A queue file as surface writes it: (row id, purpose, inclusion_prob); no purpose at all
    writes the legacy layout (no inclusion_prob/purpose columns)."""
    import pandas as pd

    from edgeloop.core.layout import Layout

    frame = pd.DataFrame({"row_id": [r[0] for r in rows], "batch_id": batch, "reasons": "x",
                          "surfaced_at": "2026-01-01T00:00:00+00:00", "predicted": "0"})  # fmt: skip
    if not rows or rows[0][1] is not None:
        frame["inclusion_prob"] = pd.Series([r[2] for r in rows], dtype="float64")
        frame["purpose"] = pd.Series([r[1] for r in rows], dtype="str")
    folder = Layout.of(settings).queue
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / f"{batch}.parquet", index=False)


def test_evidence_weights_design_batches_and_flags_legacy_ones(tmp_path: Path) -> None:
    import pandas as pd

    from edgeloop.batch.shadow import evidence
    from edgeloop.core.config import settings_from_dict
    from tests.conftest import small_schema

    settings = settings_from_dict(
        {"schema": small_schema().model_dump(), "edge_cases": {"budget": 10}},
        root=tmp_path, source=tmp_path / "edgeloop.yaml",
    )  # fmt: skip
    # legacy: b1-0 queued (old layout) and labeled, b1-1..3 not labeled.
    _queue_file(settings, "b1", [("b1-0", None, None)])
    # design: two edge cases (one labeled), two evaluation rows (both labeled); 6 rows in all.
    _queue_file(settings, "b2", [("b2-0", "edge_case", 1.0), ("b2-1", "edge_case", 1.0),
                                 ("b2-2", "evaluation", 0.25), ("b2-3", "evaluation", 0.5)])  # fmt: skip
    # design, pending: its evaluation row has no label yet.
    _queue_file(settings, "b3", [("b3-0", "edge_case", 1.0), ("b3-1", "evaluation", 0.2)])
    # design with an empty queue: b4-0 came with its label.
    _queue_file(settings, "b4", [])
    ids = [f"b1-{i}" for i in range(4)] + [f"b2-{i}" for i in range(6)] + ["b3-0", "b3-1", "b3-2"] + ["b4-0", "b4-1"]  # fmt: skip
    labels = {"b1-0": 1, "b2-0": 0, "b2-2": 2, "b2-3": 1, "b2-5": 0, "b3-0": 1, "b4-0": 2}
    rows = pd.DataFrame({"row_id": ids, "batch_id": [i.split("-")[0] for i in ids]})
    rows["label"] = rows["row_id"].map(labels).astype("object")
    rows["label_source"] = "annotation"
    rows.loc[rows["row_id"].isin(["b4-0"]), "label_source"] = "batch"
    # b2-5 has a label that did not come from its batch's design: it is not used.
    before = rows.copy()

    ev = evidence(settings, rows)

    pd.testing.assert_frame_equal(rows, before)  # the input is not modified
    kept = ev.rows["row_id"].tolist()
    assert kept == ["b1-0", *(f"b2-{i}" for i in range(6)), "b4-0", "b4-1"]
    assert ev.pending_rows == 3
    by_id = dict(zip(kept, zip(ev.labeled.tolist(), ev.inclusion_prob.tolist(), ev.legacy.tolist(), strict=True), strict=True))  # fmt: skip
    assert by_id["b1-0"] == (True, 1.0, True)
    assert by_id["b2-0"] == (True, 0.5, False)  # an edge case, half of them labeled so far
    assert by_id["b2-2"] == (True, 0.25, False) and by_id["b2-3"] == (True, 0.5, False)
    assert not by_id["b2-1"][0] and not by_id["b2-4"][0] and not by_id["b2-5"][0]
    assert by_id["b4-0"] == (True, 1.0, False) and not by_id["b4-1"][0]


def test_labeling_rate_is_labels_per_day_over_the_recent_weeks() -> None:
    from datetime import UTC, datetime, timedelta

    import pandas as pd

    from edgeloop.batch.shadow import labeling_rate

    now = datetime(2026, 3, 1, tzinfo=UTC)
    stamps = [(now - timedelta(days=10 * i / 49)).isoformat() for i in range(50)]
    labels = pd.DataFrame({"labeled_at": stamps, "imported_at": stamps})
    assert labeling_rate(labels, now) == pytest.approx(5.0)
    old = pd.DataFrame(
        {"labeled_at": [(now - timedelta(days=40)).isoformat()], "imported_at": [None]}
    )
    assert labeling_rate(old, now) == 0.0
    assert labeling_rate(labels.iloc[:0], now) is None
    # All within an hour: at least one day counts as elapsed.
    burst = pd.DataFrame({"labeled_at": [now.isoformat()] * 30, "imported_at": [None] * 30})
    assert labeling_rate(burst, now) == pytest.approx(30.0)


# ---------------------------------------------------------------------- real stores
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_score_shadow_promote_rollback_on_real_stores(project: Path, tmp_path: Path) -> None:
    from edgeloop.batch.scoring import read_scores
    from edgeloop.batch.shadow import shadow_evaluate
    from edgeloop.core.errors import GateError
    from edgeloop.models.promotion import Rollback, promote, rollback
    from edgeloop.tracking.registry import Registry
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score
    from tests.conftest import small_reference

    cfg = project / "edgeloop.yaml"
    cfg.write_text(cfg.read_text() + "shadow:\n  min_samples: 30\n  bootstrap_samples: 500\n")
    config = str(cfg)
    settings = load_settings(cfg)
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    first = tmp_path / "b1.csv"
    small_reference(120, 50).to_csv(first, index=False)
    ingest([str(first)], config=config)
    written = score(config=config)
    assert {w["alias"] for w in written} == {"champion"}
    assert retrain(reason="v2", config=config)["alias"] == "challenger"
    # Batches after the challenger's deployment are scored by both.
    later = tmp_path / "b2.csv"
    small_reference(150, 51).to_csv(later, index=False)
    ingest([str(later)], config=config)
    written = score(config=config)
    assert {(w["alias"], w["version"]) for w in written} >= {("champion", "1"), ("challenger", "2")}
    assert len(read_scores(settings, "2")) == 120 + 150  # the challenger scored the older batch too

    report = shadow_evaluate(settings)

    # Only the batch ingested after deployment is evidence (the challenger trained on the other).
    assert report.comparison["n"] == 150
    assert report.champion == "1" and report.challenger == "2" and report.run_id
    reg = Registry(settings)
    if not report.promote:
        with pytest.raises(GateError) as info:
            promote(settings)
        assert info.value.result.promoted is False
        assert reg.aliases()["champion"] == "1"
        out = promote(settings, force=True, reason="on-call override for the test")
    else:
        out = promote(settings)
    assert out.promoted and out.new_champion == "2"
    assert reg.aliases() == {"champion": "2", "previous-champion": "1"}
    moves = [(e.alias, e.version) for e in reg.history()]
    assert ("champion", "2") in moves and ("challenger", "") in moves

    back = rollback(settings, "bad latency")
    assert back == Rollback(champion="1", rolled_back="2")
    assert reg.aliases() == {"champion": "1", "previous-champion": "2"}
    assert reg.history("champion")[-1].reason == "rollback: bad latency"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_design_batch_evidence_on_real_stores(tmp_path: Path) -> None:
    """An unlabeled batch after the challenger's deployment: its edge cases and evaluation
    sample are labeled; every row of it is evidence, weighted by the queue's probabilities."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from edgeloop.batch.annotation import read_queue
    from edgeloop.batch.shadow import latest_evaluation, shadow_evaluate
    from edgeloop.core import keys
    from flows.annotate import annotate_import
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score
    from pipelines.shadow import horvitz_thompson, paired_differences
    from tests.conftest import new_project, production_batch, small_reference

    root = new_project(tmp_path, training={"params": {"n_estimators": 20, "n_jobs": 1}},
                       edge_cases={"budget": 20})  # fmt: skip
    config = str(root / "edgeloop.yaml")
    settings = load_settings(config)
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    first = tmp_path / "b1.csv"
    small_reference(120, 50).to_csv(first, index=False)
    ingest([str(first)], config=config)
    score(config=config)
    assert retrain(reason="v2", config=config)["alias"] == "challenger"
    later = tmp_path / "b2.csv"
    production_batch(150, 51).to_csv(later, index=False)
    ingest([str(later)], config=config)
    score(config=config)
    queue = read_queue(settings)
    b2 = queue[queue["batch_id"] == queue["batch_id"].iloc[-1]]
    assert set(b2["purpose"]) <= {"edge_case", "evaluation"} and b2["inclusion_prob"].notna().all()
    # The true labels of the queued rows (production_batch is small_reference without them).
    truth = small_reference(150, 51)["label"]
    position = b2["row_id"].str.rsplit("-", n=1).str[-1].astype(int)
    answers = tmp_path / "answers.csv"
    pd.DataFrame({"row_id": b2["row_id"], "label": truth.iloc[position].to_numpy()}).to_csv(answers, index=False)  # fmt: skip
    annotate_import(path=str(answers), retrain_on_volume=False, config=config)

    report = shadow_evaluate(settings)

    c = report.comparison
    assert c["n_rows"] == 150 and c["n"] == len(b2) and c["pending_rows"] == 0
    assert c["legacy_rows"] == 0 and c["rule"] == "confidence-sequence"
    assert report.state in ("promote", "keep", "need_more")
    # The estimate is the Horvitz–Thompson mean over the batch, with the queue's probabilities.
    from edgeloop.batch.scoring import read_scores

    both = read_scores(settings, "1").merge(read_scores(settings, "2"), on="row_id")
    both = both[both["batch_id_x"] == b2["batch_id"].iloc[0]]
    y = both["row_id"].map(dict(zip(b2["row_id"], truth.iloc[position].to_numpy(), strict=True)))
    labeled = y.notna().to_numpy()
    pi = both["row_id"].map(dict(zip(b2["row_id"], b2["inclusion_prob"], strict=True))).fillna(1.0)
    d = paired_differences(y.fillna(-1), both["predicted_x"], both["predicted_y"])
    assert c["delta"] == pytest.approx(float(horvitz_thompson(d, pi, labeled).mean()))
    assert c["cs_low"] <= c["delta"] <= c["cs_high"]
    run = latest_evaluation(settings, "1", "2")
    assert run is not None and run.info.run_id == report.run_id
    tags, metrics = run.data.tags, run.data.metrics
    assert tags[keys.TAG_SHADOW_STATE] == report.state
    assert tags[keys.TAG_DECISION] == ("promote" if report.state == "promote" else "keep")
    assert tags[keys.TAG_SHADOW_BIASED] == "false"
    assert metrics["n_rows"] == 150 and metrics["n_labeled"] == len(b2)
    assert metrics["cs_low"] == pytest.approx(c["cs_low"]) and "labels_per_day" in metrics
    if report.state == "need_more" and report.labels_needed is not None:
        assert metrics["labels_needed"] == report.labels_needed
    assert MlflowClient().get_run(report.run_id).info.status == "FINISHED"
