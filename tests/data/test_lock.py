"""The data lock: one writer at a time (a second is refused naming the holder, or waits), and
the journal a killed writer leaves is rolled back by the next one."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgeloop.core.errors import BusyError
from edgeloop.data.lock import change, data_lock, recover, track
from tests.conftest import new_project, production_batch
from tests.data import faultkit as fk


def _settings(root: Path) -> Any:
    """Enough of a Settings for the lock's paths (``Layout.of``)."""
    from edgeloop.core.config import PathSettings

    return SimpleNamespace(
        root=root, paths=PathSettings(), monitoring=SimpleNamespace(reports_dir="reports")
    )


HOLD = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
from edgeloop.core.config import PathSettings
from edgeloop.data.lock import data_lock
s = SimpleNamespace(root=Path(sys.argv[1]), paths=PathSettings(),
                    monitoring=SimpleNamespace(reports_dir="reports"))
with data_lock(s, "edgeloop ingest held.csv"):
    print("held", flush=True)
    while not (Path(sys.argv[1]) / "release").exists():
        time.sleep(0.05)
"""


def test_second_writer_is_refused_naming_the_holder_or_waits(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = pytest.raises(BusyError, match=rf"pid {holder.pid}, 'edgeloop ingest held.csv'")
        with busy, data_lock(s, "ingest"):
            pass
        got = threading.Event()

        def waiter() -> None:
            with data_lock(s, "ingest", wait=True):
                got.set()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.5)
        assert not got.is_set()  # queued behind the holder
        (tmp_path / "release").touch()
        t.join(timeout=20)
        assert got.is_set()
    finally:
        (tmp_path / "release").touch()
        holder.wait(timeout=20)


def test_lock_is_reentrant_in_a_process(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    with data_lock(s, "outer"), data_lock(s, "inner"):
        pass
    with data_lock(s, "again"):  # released after the outer block
        pass


KILLED = """
import os, sys
from pathlib import Path
from types import SimpleNamespace
from edgeloop.core.config import PathSettings
from edgeloop.data.lock import change, data_lock, track
root = Path(sys.argv[1])
s = SimpleNamespace(root=root, paths=PathSettings(), monitoring=SimpleNamespace(reports_dir="reports"))
with data_lock(s, "ingest"), change(s, "ingest x.csv"):
    new = root / "data" / "accepted" / "000002-abc.parquet"
    track(new)
    new.parent.mkdir()
    new.write_text("rows")
    with (root / "data" / "ledger.jsonl").open("a") as f:
        f.write('{"seq": 2}')
    os._exit(9)  # as if killed: no exit handler, no cleanup
"""


def test_a_killed_change_is_rolled_back_by_the_next_writer_and_said(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    ledger = tmp_path / "data" / "ledger.jsonl"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"seq": 1}\n')
    assert subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)]).returncode == 9
    new = tmp_path / "data" / "accepted" / "000002-abc.parquet"
    assert new.exists()
    with data_lock(s, "rerun"):
        found = recover(s)
    assert not new.exists() and ledger.read_text() == '{"seq": 1}\n'
    (note,) = found.notes
    assert "rolled back the interrupted 'ingest x.csv'" in note
    assert "data/accepted/000002-abc.parquet" in note and "ledger cut back" in note
    assert found.committed is None
    assert recover(s).notes == []  # nothing left


def test_a_change_that_raises_is_undone_at_once(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    new = tmp_path / "data" / "labels" / "000001-abc.parquet"
    with data_lock(s, "import"), pytest.raises(RuntimeError), change(s, "annotate import"):
        track(new)
        new.parent.mkdir(parents=True)
        new.write_text("labels")
        raise RuntimeError("a bad file")
    assert not new.exists()
    assert recover(s).notes == []


@pytest.mark.slow
def test_two_ingests_at_once_one_refused_or_both_with_wait(
    tmp_path: Path, prefect_harness: None
) -> None:
    """Real processes: while one ``edgeloop ingest`` holds the lock, a second is refused naming
    it (exit 2, as BusyError has); a third with --wait runs after it: distinct batch numbers."""
    from prefect.settings import PREFECT_API_URL

    from edgeloop.core.config import load_settings
    from edgeloop.data.store import DataStore

    root = new_project(tmp_path)
    api = str(PREFECT_API_URL.value())
    for name, seed in (("a.csv", 31), ("b.csv", 32)):
        production_batch(40, seed).to_csv(tmp_path / name, index=False)
    release = tmp_path / "release"
    env = fk.cli_env(api, "hold:ingest:validated") | {"EDGELOOP_FAULT_RELEASE": str(release)}
    first, first_out = fk.start(["ingest", str(tmp_path / "a.csv")], root, env)
    waiting = None
    try:
        assert fk.wait_for(first, first_out, fk.MARKER), "".join(first_out)[-3000:]
        refused = fk.run(["ingest", str(tmp_path / "b.csv")], root, fk.cli_env(api))
        assert refused.returncode == BusyError.exit_code, refused.stderr[-2000:]
        assert f"pid {first.pid}, 'edgeloop ingest {tmp_path / 'a.csv'}'" in refused.stderr
        assert "--wait" in refused.stderr
        waiting, wait_out = fk.start(
            ["ingest", "--wait", str(tmp_path / "b.csv")], root, fk.cli_env(api)
        )
        assert fk.wait_for(waiting, wait_out, "waiting for the data lock"), "".join(wait_out)
        release.touch()
        assert first.wait(timeout=300) == 0, "".join(first_out)[-3000:]
        assert waiting.wait(timeout=300) == 0, "".join(wait_out)[-3000:]
    finally:
        release.touch()
        for p in (first, waiting):
            if p is not None and p.poll() is None:
                fk.kill_group(p)
    entries = DataStore(load_settings(root / "edgeloop.yaml")).ledger()
    assert [e.source for e in entries] == ["a.csv", "b.csv"]
    assert len({e.seq for e in entries}) == 2
    assert fk.violations(root, {n: tmp_path / n for n in ("a.csv", "b.csv")}) == []
