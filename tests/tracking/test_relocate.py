"""A copied or moved project: its commands refuse the original's MLflow artifacts and name
``edgeloop relocate``, which points the store at the project's own folder."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: (size, mtime in ns)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _mentions(db: Path, text: str) -> int:
    """Rows of the store's location columns that name ``text``."""
    from edgeloop.tracking.store import LOCATION_COLUMNS

    with sqlite3.connect(db) as con:
        return sum(
            con.execute(f"SELECT count(*) FROM {t} WHERE {c} LIKE ?", (f"%{text}%",)).fetchone()[0]
            for t, c in LOCATION_COLUMNS
        )


@pytest.mark.slow
def test_copied_and_moved_projects_refuse_then_relocate(project: Path, tmp_path: Path) -> None:
    res = run_cli("retrain", "--json", cwd=project)
    assert res.returncode == 0, res.stderr[-2000:]
    original = _snapshot(project / "mlflow")

    copy = tmp_path / "elsewhere" / "copy of proj"  # a space: URIs are percent-encoded
    shutil.copytree(project, copy, symlinks=True)
    refused = run_cli("lineage", cwd=copy)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    msg = " ".join(refused.stderr.split())
    assert f"keeps its artifacts in {project / 'mlflow'}" in msg
    assert f"not in this project's {copy / 'mlflow'}" in msg
    assert "a copy" in msg and "Run 'edgeloop relocate'" in msg

    fixed = run_cli("relocate", "--json", cwd=copy)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    out = json.loads(fixed.stdout)
    assert out["old"] == str(project / "mlflow") and out["new"] == str(copy / "mlflow")
    assert out["rows"]["model_versions.storage_location"] == 1
    assert "loads from" in out["verified"]
    assert _mentions(copy / "mlflow" / "mlflow.db", str(project)) == 0
    for args in (("lineage", "--json"), ("score", "--json")):
        ok = run_cli(*args, cwd=copy)
        assert ok.returncode == 0, (args, ok.stderr[-2000:])
    again = run_cli("relocate", cwd=copy)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert _snapshot(project / "mlflow") == original  # the original was not touched

    moved = tmp_path / "moved"
    project.rename(moved)
    refused = run_cli("lineage", cwd=moved)
    assert refused.returncode == 2 and "moved" in refused.stderr, refused.stderr
    assert run_cli("relocate", cwd=moved).returncode == 0
    ok = run_cli("lineage", "--json", cwd=moved)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)


def test_an_unmoved_store_passes_and_relocate_is_a_no_op(project: Path) -> None:
    from edgeloop.core.config import load_settings
    from edgeloop.tracking.store import ensure_experiment, recorded_location, relocate

    settings = load_settings(project / "edgeloop.yaml")
    ensure_experiment(settings, "training")
    assert recorded_location(settings) is None
    assert relocate(settings).rows == {}
