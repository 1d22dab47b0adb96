"""The demo's loop-effect measure: oracle on earlier true labels, recovery, status and review."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeloop.demo.effect import BatchEffect, loop_effect, oracle_accuracy, write_loop_effect
from tests.conftest import new_project, production_batch


def _b(
    name: str, frozen: float, loop: float, oracle: float, rows: int = 100, labels: int = 10
) -> BatchEffect:
    return BatchEffect(name, rows, frozen, loop, oracle, labels, "2")


def test_recovery_counts_only_drifted_batches_weighted_by_rows() -> None:
    e = loop_effect(
        [
            _b("calm", 0.95, 0.90, 0.96),  # gap 0.01 < DRIFT_GAP: not drifted
            _b("drift1", 0.60, 0.70, 0.80),  # closes 0.10 of 0.20
            _b("drift2", 0.50, 0.80, 0.90, rows=300),  # closes 0.30 of 0.40
        ]
    )
    assert e.drifted_batches == ["drift1", "drift2"]
    assert e.recovery == pytest.approx((100 * 0.10 + 300 * 0.30) / (100 * 0.20 + 300 * 0.40))
    assert e.labeled_share == pytest.approx(30 / 500)
    assert loop_effect([_b("calm", 0.9, 0.9, 0.91)]).recovery is None


def test_oracle_learns_from_earlier_batches_only(tmp_path: Path) -> None:
    import pandas as pd

    from edgeloop.core.config import load_settings
    from edgeloop.data.store import DataStore

    root = new_project(tmp_path)
    settings = load_settings(root / "edgeloop.yaml")
    ref = DataStore(settings).load_dataset()
    # Two production batches whose true label is always the same class: an oracle that saw
    # batch b1's truth predicts it on b2 far more often than one trained on the reference only.
    b1, b2 = (
        production_batch(200, seed=s).assign(
            batch_id=name, row_id=[f"{name}-{i:06d}" for i in range(200)]
        )
        for s, name in ((5, "b1"), (6, "b2"))
    )
    cls = settings.data_schema.classes[0]
    truth: dict[str, object] = {r: cls for r in [*b1["row_id"], *b2["row_id"]]}
    data = pd.concat([ref, b1.assign(label=None), b2.assign(label=None)], ignore_index=True)
    acc = oracle_accuracy(settings, data, truth, "b2")
    # The same call with b2's labels given as data changes nothing: they are not used.
    leaked = data.copy()
    leaked.loc[leaked["batch_id"] == "b2", "label"] = leaked["row_id"].map(truth)
    assert oracle_accuracy(settings, leaked, truth, "b2") == acc
    # With b1's labels withheld from the truth, the oracle trains on the reference only.
    ref_only = oracle_accuracy(
        settings, data, {k: v for k, v in truth.items() if k.startswith("b2")}, "b2"
    )
    assert acc > ref_only + 0.2, (acc, ref_only)


def test_status_and_review_show_the_written_measure(tmp_path: Path) -> None:
    from edgeloop.core.config import load_settings
    from edgeloop.reports.render import to_markdown
    from edgeloop.reports.review import build_review
    from edgeloop.reports.status import collect_status

    root = new_project(tmp_path)
    settings = load_settings(root / "edgeloop.yaml")
    assert collect_status(settings)["loop_effect"] is None
    assert "Loop effect" not in to_markdown(build_review(settings))
    path = write_loop_effect(settings, loop_effect([_b("b|1", 0.5, 0.8, 0.9)]))
    written = json.loads(path.read_text())
    assert set(written) >= {"batches", "recovery", "labeled_share"}
    assert set(written["batches"][0]) >= {"batch", "frozen", "loop", "oracle", "labels"}
    assert collect_status(settings)["loop_effect"]["recovery"] == pytest.approx(0.75)
    md = to_markdown(build_review(settings))
    assert "Loop effect" in md and "**0.75**" in md and "b\\|1" in md
    path.write_text("{not json")
    assert collect_status(settings)["loop_effect"] is None
