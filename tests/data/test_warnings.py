"""Soft failures on the ingest path, without Prefect or MLflow: the outcome, the ledger and the
quarantine report keep them; ledgers written before they existed still load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeloop.core.config import Settings
from edgeloop.data.ingest import assess, file_batch
from edgeloop.data.store import DataStore
from pipelines.profile import bootstrap_suite
from tests.conftest import production_batch, small_reference, small_schema


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate({"schema": small_schema().model_dump(), "root": tmp_path})


@pytest.fixture(scope="module")
def suite() -> dict:
    return bootstrap_suite(small_reference(), small_schema())


def _ingest(settings: Settings, suite: dict, df, path: Path):  # type: ignore[no-untyped-def]
    df.to_csv(path, index=False)
    store = DataStore(settings)
    return file_batch(assess(path, settings, store, suite), store), store


def test_accepted_batch_with_warnings_keeps_them(settings, suite, tmp_path: Path) -> None:
    df = production_batch(seed=8)
    df.loc[7, "age"] = 150  # above the observed range: unusual, not impossible
    df.loc[9, "region"] = "atlantis"  # a new category
    outcome, store = _ingest(settings, suite, df, tmp_path / "b.csv")
    assert outcome.status == "accepted" and outcome.rows_accepted == 60
    assert not outcome.needs_attention
    assert outcome.expectations_failed == 0 and outcome.failed == []
    assert outcome.soft_expectations_failed == 2 and outcome.rows_with_warnings == 2
    assert any("'region'" in w and "atlantis" in w for w in outcome.warnings)
    (entry,) = store.ledger()
    assert entry.warnings == outcome.warnings
    assert "warnings (rows accepted)" in entry.reason


def test_partial_batch_report_lists_warnings_apart(settings, suite, tmp_path: Path) -> None:
    df = production_batch(seed=8)
    df["income"] = df["income"].astype("float64")
    df.loc[3, "income"] = np.nan  # no nulls in the reference: hard
    df.loc[5, "age"] = -1  # a negative age: hard (never negative, and an amount-like name)
    df.loc[9, "region"] = "atlantis"  # soft
    outcome, store = _ingest(settings, suite, df, tmp_path / "p.csv")
    assert outcome.status == "partial" and outcome.rows_quarantined == 2
    # -1 is also below age's observed range (soft); its row is quarantined by the hard check.
    assert outcome.expectations_failed == 2 and outcome.soft_expectations_failed == 2
    assert outcome.rows_with_warnings == 1
    qdir = settings.root / Path(outcome.report_path).parent
    md = (qdir / "report.md").read_text()
    warnings = md.split("## Warnings (rows accepted)")[1].split("## Example quarantined rows")[0]
    assert "region" in warnings and "atlantis" in warnings and "income" not in warnings
    report = json.loads((qdir / "report.json").read_text())
    assert report["rows_with_warnings"] == 1 and len(report["warnings"]) == 2
    assert store.ledger()[0].warnings == outcome.warnings


def test_old_ledger_without_warnings_still_loads(settings) -> None:
    store = DataStore(settings)
    store.ledger_path.parent.mkdir(parents=True)
    old = {
        "seq": 1, "sha256": "ab" * 32, "source": "old.csv", "status": "accepted", "rows": 3,
        "rows_accepted": 3, "rows_quarantined": 0, "reason": "all expectations passed",
        "at": "2025-01-01T00:00:00+00:00", "stored": ["data/accepted/x.parquet"],
    }  # fmt: skip
    store.ledger_path.write_text(json.dumps(old) + "\n")
    (entry,) = store.ledger()
    assert entry.warnings == [] and entry.source == "old.csv"
