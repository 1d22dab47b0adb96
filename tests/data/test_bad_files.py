"""Hostile batch files: each gets a clear message naming the file and the problem, and
nothing is lost (the file is untouched; what ingest refuses is not recorded, so a rerun with
the right file is not taken for a duplicate)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgeloop.core.errors import BatchReadError
from tests.conftest import new_project, run_cli, small_reference


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_project(tmp_path_factory.mktemp("bad"))


def _assess(root: Path, path: Path, **validation: Any) -> Any:
    from edgeloop.core.config import load_settings
    from edgeloop.data.ingest import assess
    from edgeloop.data.readers import load_suite
    from edgeloop.data.store import DataStore

    settings = load_settings(root / "edgeloop.yaml")
    if validation:
        settings = settings.model_copy(
            update={"validation": settings.validation.model_copy(update=validation)}
        )
    return assess(path, settings, DataStore(settings), load_suite(settings.suite_path()))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unreadable_files_are_named_with_their_problem(proj: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(np.random.default_rng(1).bytes(4096))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    for path, problem in ((garbage, "not UTF-8 text"), (empty, "file is empty (0 bytes)")):
        before = _digest(path)
        a = _assess(proj, path)
        assert a.frame is None and problem in a.unreadable, a.unreadable
        assert _digest(path) == before


def test_what_is_not_a_batch_file_is_refused_before_reading(proj: Path, tmp_path: Path) -> None:
    folder = tmp_path / "batches.csv"
    folder.mkdir()
    broken = tmp_path / "gone.csv"
    broken.symlink_to(tmp_path / "nowhere.csv")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # reading it would block forever
    cases = {folder: "is a directory", broken: "broken symbolic link", fifo: "not a regular file"}
    for path, problem in cases.items():
        with pytest.raises(BatchReadError, match=problem) as err:
            _assess(proj, path)
        assert err.value.path == str(path)


def test_a_file_over_the_size_limit_is_refused_naming_the_key(proj: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    small_reference(2000).to_csv(path, index=False)
    with pytest.raises(BatchReadError, match=r"over validation.max_file_mb \(0.01 MB"):
        _assess(proj, path, max_file_mb=0.01)
    assert _assess(proj, path, max_file_mb=0).frame is not None  # 0: no limit


def test_links_unicode_names_and_wide_files_are_read(proj: Path, tmp_path: Path) -> None:
    good = small_reference(50, seed=8)
    inside = proj / "incoming" / "lot 7 ünïcødé 東京.csv"
    inside.parent.mkdir(exist_ok=True)
    good.to_csv(inside, index=False)
    link = tmp_path / "link inside.csv"
    link.symlink_to(inside)
    for path in (inside, link):
        a = _assess(proj, path)
        assert a.frame is not None and len(a.frame) == 50 and not a.unreadable
    # 5,000 columns: read, then quarantined by the suite for the columns it does not expect.
    extra = pd.DataFrame(np.zeros((50, 4996)), columns=[f"c{i}" for i in range(4996)])
    wide = tmp_path / "wide.csv"
    pd.concat([good, extra], axis=1).to_csv(wide, index=False)
    a = _assess(proj, wide)
    assert a.frame is not None and a.frame.shape == (50, 5001)
    assert any("unexpected columns" in f.describe() for f in a.report.errors)


@pytest.mark.slow
def test_cli_symlink_outside_the_project_and_a_directory(proj: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.csv"
    small_reference(40, seed=12).to_csv(outside, index=False)
    link = proj / "incoming" / "linked.csv"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(outside)
    before = _digest(outside)
    res = run_cli("ingest", str(link), "--json", cwd=proj)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _digest(outside) == before and link.is_symlink()
    folder = tmp_path / "a folder"
    folder.mkdir()
    ledger = (proj / "data" / "ledger.jsonl").read_text()
    res = run_cli("ingest", str(folder), cwd=proj)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"{folder}: is a directory, not a batch file" in " ".join(res.stderr.split())
    assert (proj / "data" / "ledger.jsonl").read_text() == ledger


@pytest.mark.slow
def test_cli_refuses_a_200_mb_csv_quickly_with_nothing_recorded(proj: Path, tmp_path: Path) -> None:
    import resource

    lines = small_reference(2000, seed=9).to_csv(index=False).splitlines(keepends=True)
    big = tmp_path / "big.csv"
    with big.open("w") as f:
        f.write(lines[0])
        body = "".join(lines[1:])
        while f.tell() < 200 * 2**20:
            f.write(body)
    ledger = (proj / "data" / "ledger.jsonl").read_text()
    res = run_cli("ingest", str(big), cwd=proj)
    assert res.returncode == 2, res.stderr[-2000:]
    msg = " ".join(res.stderr.split())
    assert f"{big}: file is 200 MB, over validation.max_file_mb (100 MB" in msg
    assert (proj / "data" / "ledger.jsonl").read_text() == ledger
    # The refusal comes before the read: no child grew anywhere near the file's size.
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 900 * 1024
