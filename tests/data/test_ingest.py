"""The ingest flow for real: Prefect harness, DVC in a temp git repo, MLflow on SQLite, GX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeloop.core.config import load_settings
from edgeloop.core.errors import ValidationGateError
from edgeloop.data.store import DataStore
from edgeloop.data.versioning import DataVersioner, read_pointer_md5
from tests.conftest import production_batch

# Every test runs the ingest flow on real stores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _ingest(project: Path, *paths: Path) -> tuple[list[dict], bool]:
    """Run the flow; return (outcomes, gate_failed)."""
    from flows.ingest import ingest

    try:
        return ingest([str(p) for p in paths], config=str(project / "edgeloop.yaml")), False
    except ValidationGateError as exc:
        return exc.result, True


def _mlflow_run(project: Path, run_id: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    settings = load_settings(project / "edgeloop.yaml")
    from edgeloop.tracking.store import configure

    configure(settings)
    return MlflowClient().get_run(run_id)


def test_init_with_data_writes_config_suite_and_first_version(project: Path) -> None:
    settings = load_settings(project / "edgeloop.yaml")
    assert settings.data_schema.features == ["age", "income", "score", "region"]
    assert settings.data_schema.categorical == ["region"]
    assert settings.data_schema.classes == [0, 1, 2]
    suite = json.loads((project / "expectations" / "batch.json").read_text())
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "region") in kinds
    assert ("expect_column_values_to_be_between", "income") in kinds
    assert ("expect_table_columns_to_match_set", None) in kinds
    version = read_pointer_md5(project / "data.dvc")
    assert version and version.endswith(".dir")
    # The local DVC remote received the content (push worked).
    assert any((project / ".dvcstore").rglob("*"))
    # init is idempotent: a second run keeps the version and rewrites nothing.
    from edgeloop.stack.init import init_project

    again = init_project(project)
    assert again.data_version == version
    assert any("up to date" in s or "using" in s for s in again.steps)


def test_good_batch_is_accepted_versioned_and_tracked(project: Path, tmp_path: Path) -> None:
    batch = tmp_path / "good.csv"
    production_batch().to_csv(batch, index=False)
    before = read_pointer_md5(project / "data.dvc")

    results, failed = _ingest(project, batch)

    assert not failed
    (r,) = results
    assert r["status"] == "accepted" and r["rows_accepted"] == 60
    after = read_pointer_md5(project / "data.dvc")
    assert after != before and r["data_version"] == after
    settings = load_settings(project / "edgeloop.yaml")
    data = DataStore(settings).load_dataset()
    assert len(data) == 240 + 60
    assert data["row_id"].is_unique
    run = _mlflow_run(project, r["mlflow_run_id"])
    assert run.data.tags["dvc.data_version"] == after
    assert run.data.tags["edgeloop.decision"] == "accepted"
    assert len(run.data.tags["git.commit"]) == 40
    assert run.data.tags["prefect.flow_run_id"]
    assert run.data.metrics["rows_accepted"] == 60
    from mlflow.tracking import MlflowClient

    artifacts = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "validation")}
    assert "validation/validation_report.md" in artifacts
    # The experiment keeps its artifacts inside the project's mlflow/ folder.
    assert (project / "mlflow" / "artifacts").is_dir()
    # The Prefect run carries the summary artifact.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.data.tags["prefect.flow_run_id"]])
            )
        )
    assert {"ingest-summary", "ingest-validation"} <= {a.key for a in arts}


def test_same_batch_twice_adds_no_rows(project: Path, tmp_path: Path) -> None:
    batch = tmp_path / "b.csv"
    production_batch(seed=5).to_csv(batch, index=False)
    copy = tmp_path / "b-copy.csv"
    copy.write_bytes(batch.read_bytes())
    _ingest(project, batch)
    version = read_pointer_md5(project / "data.dvc")
    settings = load_settings(project / "edgeloop.yaml")
    rows = len(DataStore(settings).load_dataset())

    results, failed = _ingest(project, copy)

    assert not failed
    assert results[0]["status"] == "duplicate"
    assert "already ingested" in results[0]["reason"]
    assert len(DataStore(settings).load_dataset()) == rows
    assert read_pointer_md5(project / "data.dvc") == version
    assert len(DataStore(settings).ledger()) == 1


def test_bad_rows_are_quarantined_and_nothing_is_lost(project: Path, tmp_path: Path) -> None:
    df = production_batch(seed=8)
    df["income"] = df["income"].astype("float64")
    df.loc[3, "income"] = None  # null where not allowed: hard
    df.loc[5, "age"] = -5  # a negative age (never negative, a count/amount name): hard
    df.loc[7, "age"] = 999  # out of the observed range: soft, the row is accepted
    df.loc[9, "region"] = "atlantis"  # unknown category: soft, the row is accepted
    batch = tmp_path / "partly-bad.csv"
    df.to_csv(batch, index=False)

    results, failed = _ingest(project, batch)

    assert failed  # the gate raised, carrying the results
    (r,) = results
    assert r["status"] == "partial"
    assert r["rows_accepted"] == 58 and r["rows_quarantined"] == 2
    assert r["rows_with_warnings"] == 2
    assert any("'region'" in w and "atlantis" in w for w in r["warnings"])
    assert any("'age'" in w and "999" in w for w in r["warnings"])
    qdir = project / Path(r["report_path"]).parent
    assert (qdir / f"original{batch.suffix}").read_bytes() == batch.read_bytes()
    report = (qdir / "report.md").read_text()
    for needle in ("income", "age", "region", "not_be_null", "be_between", "be_in_set"):
        assert needle in report
    assert "## Warnings (rows accepted)" in report
    import pandas as pd

    bad = pd.read_csv(qdir / "rows.csv")
    assert sorted(bad["source_row"]) == [3, 5]
    settings = load_settings(project / "edgeloop.yaml")
    assert len(DataStore(settings).load_dataset()) == 240 + 58
    assert DataStore(settings).ledger()[-1].warnings == r["warnings"]
    run = _mlflow_run(project, r["mlflow_run_id"])
    # Two soft expectations: age's range (-5 and 999) and region's set (atlantis).
    assert run.data.metrics["soft_expectations_failed"] == len(r["warnings"]) == 2
    assert run.data.metrics["rows_with_warnings"] == 2


def test_a_word_in_a_numeric_column_quarantines_its_row_and_the_rest_are_numbers(
    project: Path, tmp_path: Path
) -> None:
    """"?" where a score belongs makes the CSV column text: that row alone is quarantined, with
    its value as written, and the accepted rows are stored as numbers."""
    import pandas as pd

    df = production_batch(seed=10)
    df["score"] = df["score"].astype("object")
    df.loc[4, "score"] = "?"
    batch = tmp_path / "a-question-mark.csv"
    df.to_csv(batch, index=False)

    results, failed = _ingest(project, batch)

    assert failed
    (r,) = results
    assert (r["status"], r["rows_accepted"], r["rows_quarantined"]) == ("partial", 59, 1), r
    assert "in_type_list(score)" in r["reason"]
    qdir = project / Path(r["report_path"]).parent
    bad = pd.read_csv(qdir / "rows.csv", dtype=str)
    assert bad[["source_row", "score"]].values.tolist() == [["4", "?"]]
    assert "expect_column_values_to_be_in_type_list | score | 1 |" in (
        qdir / "report.md"
    ).read_text()
    settings = load_settings(project / "edgeloop.yaml")
    data = DataStore(settings).load_dataset()
    assert len(data) == 240 + 59 and data["score"].dtype == "float64"
    stored = data[data["batch_id"] == r["batch_id"]]["score"].tolist()
    assert stored == df["score"].drop(index=4).astype(float).tolist()


def test_schema_break_quarantines_the_whole_batch(project: Path, tmp_path: Path) -> None:
    df = production_batch(seed=9).rename(columns={"score": "scroe"})
    batch = tmp_path / "renamed.parquet"
    df.to_parquet(batch, index=False)

    results, failed = _ingest(project, batch)

    assert failed
    (r,) = results
    assert r["status"] == "quarantined" and r["rows_accepted"] == 0
    assert "missing columns ['score']" in r["reason"] and "scroe" in r["reason"]
    qdir = project / Path(r["report_path"]).parent
    assert (qdir / "original.parquet").read_bytes() == batch.read_bytes()
    run = _mlflow_run(project, r["mlflow_run_id"])
    assert run.data.tags["edgeloop.decision"] == "quarantined"
    # A quarantined file ingested again is still reported as bad.
    again, failed_again = _ingest(project, batch)
    assert failed_again and again[0]["status"] == "duplicate"
    assert again[0]["reason"].startswith("already quarantined")


def test_unreadable_file_goes_to_quarantine(project: Path, tmp_path: Path) -> None:
    good = tmp_path / "t.parquet"
    production_batch().to_parquet(good, index=False)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])

    results, failed = _ingest(project, truncated)

    assert failed
    (r,) = results
    assert r["status"] == "unreadable"
    assert "parquet" in r["reason"]
    settings = load_settings(project / "edgeloop.yaml")
    entry = DataStore(settings).ledger()[-1]
    qdir = project / entry.stored[0]
    assert (qdir / "original.parquet").read_bytes() == truncated.read_bytes()


def test_data_version_restores_from_the_remote(project: Path, tmp_path: Path) -> None:
    import shutil

    batch = tmp_path / "g.csv"
    production_batch(seed=21).to_csv(batch, index=False)
    _ingest(project, batch)
    settings = load_settings(project / "edgeloop.yaml")
    rows = len(DataStore(settings).load_dataset())
    # Lose the work tree copy and the local cache: only the DVC remote still has it.
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")

    how = DataVersioner(settings).restore()

    assert how in ("pulled", "checked out")
    assert len(DataStore(settings).load_dataset()) == rows
