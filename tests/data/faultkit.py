"""Kill a real ``edgeloop`` command at a fault point (or a moment), then check the data's
invariants. Shared by ``tests/data/test_faults.py`` and ``benchmarks/bench_faults.py``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

EXE = Path(sys.executable).with_name("edgeloop")
MARKER = "EDGELOOP_FAULT: paused at "


def cli_env(api_url: str = "", fault: str = "") -> dict[str, str]:
    """The environment of a CLI run: the project's Prefect home (or the shared ``api_url``)."""
    env = {**os.environ}
    env.pop("PREFECT_HOME", None)
    env.pop("EDGELOOP_FAULT", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if fault:
        env["EDGELOOP_FAULT"] = fault
    return env


def start(
    args: list[str], cwd: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``edgeloop ARGS`` in its own process group; its output lines collect in the list."""
    # Its own session: a kill of the group reaches every process the command started there.
    proc = subprocess.Popen(
        [str(EXE), *args], cwd=cwd, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def wait_for(
    proc: subprocess.Popen[str], lines: list[str], marker: str, timeout: float = 300
) -> bool:
    """Whether ``marker`` appeared in the output before the process ended (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(marker in line for line in lines):
            return True
        if proc.poll() is not None:
            time.sleep(0.3)  # the reader may still hold the last lines
            return any(marker in line for line in lines)
        time.sleep(0.1)
    return False


def kill_group(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    """kill -9 the command's process group; returns its descendants as they were."""
    try:
        kids: list[psutil.Process] = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return kids


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def violations(root: Path, sources: dict[str, Path]) -> list[str]:
    """Invariants after a rerun: ``dvc status`` clean, the data folder consistent
    (``DataStore.problems``), every batch in ``sources`` (name -> file) filed exactly once,
    with its accepted rows in the dataset exactly once, and no journal left."""
    from edgeloop.core.config import load_settings
    from edgeloop.data.readers import file_sha256
    from edgeloop.data.store import DataStore
    from edgeloop.data.versioning import DataVersioner

    settings = load_settings(root / "edgeloop.yaml")
    store = DataStore(settings)
    out = [] if DataVersioner(settings).is_clean() else ["dvc status: data/ differs from data.dvc"]
    out += store.problems()
    if (root / ".edgeloop" / "locks" / "data-journal.json").exists():
        out.append("a change journal was left behind")
    entries = store.ledger()
    data = store.load_dataset() if not out else pd.DataFrame(columns=["batch_id"])
    for name, path in sources.items():
        mine = [e for e in entries if e.sha256 == file_sha256(path)]
        if len(mine) != 1:
            out.append(f"{name}: {len(mine)} ledger entries")
            continue
        rows = int((data["batch_id"] == mine[0].batch_id).sum())
        if rows != mine[0].rows_accepted:
            out.append(f"{name}: {rows} rows in the dataset, ledger says {mine[0].rows_accepted}")
    return out


def label_violations(root: Path, label_file: Path) -> list[str]:
    """Labels of one import file stored exactly once."""
    digest = hashlib.sha256(label_file.read_bytes()).hexdigest()[:12]
    files = list((root / "data" / "labels").glob(f"*-{digest}.parquet"))
    return [] if len(files) == 1 else [f"{label_file.name}: {len(files)} label files"]


def run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``edgeloop ARGS`` to its end."""
    return subprocess.run(
        [str(EXE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


# ---------------------------------------------------------------------- the prepared projects
#: Which prepared project each command runs in.
PROJECT = {"ingest": "proj", "labels": "proj", "score": "scorable", "retrain": "proj"}


def prepare(base: Path) -> None:
    """In ``base``: ``proj`` (a champion; batch ``seen.csv`` ingested, scored and surfaced),
    ``new.csv`` (60 rows, 2 of them bad), ``labels.csv`` (3 queued ids and an unknown one) and
    ``scorable`` (a copy of ``proj`` with ``new.csv`` ingested, not scored). Needs a Prefect
    API (the test harness)."""
    from edgeloop.batch.annotation import read_queue
    from edgeloop.core.config import load_settings
    from edgeloop.core.errors import GateError
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score
    from tests.conftest import new_project, production_batch

    root = new_project(base, edge_cases={"budget": 6})
    config = str(root / "edgeloop.yaml")
    first = retrain(reason="v1", config=config)
    assert first is not None and first["alias"] == "champion"
    production_batch(60, 21).to_csv(base / "seen.csv", index=False)
    ingest([str(base / "seen.csv")], config=config)
    assert score(config=config)
    new = production_batch(60, 22)
    new.loc[[3, 5], "age"] = -5  # never negative: quarantined, the other 58 accepted
    new.to_csv(base / "new.csv", index=False)
    ids = read_queue(load_settings(root / "edgeloop.yaml"))["row_id"].astype(str).tolist()[:3]
    (base / "labels.csv").write_text(
        "row_id,label\n" + "".join(f"{i},{n % 3}\n" for n, i in enumerate(ids)) + "nope,1\n"
    )
    scorable = copy_project(root, base / "scorable")
    with contextlib.suppress(GateError):  # the two bad rows: quarantined, as intended
        ingest([str(base / "new.csv")], config=str(scorable / "edgeloop.yaml"))


def copy_project(src: Path, dst: Path) -> Path:
    """A copy of a project, its MLflow store pointed at its own folders."""
    from edgeloop.core.config import load_settings
    from edgeloop.tracking.store import relocate

    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("tmp", ".prefect"))
    relocate(load_settings(dst / "edgeloop.yaml"))
    return dst


def args(cmd: str, base: Path) -> list[str]:
    """The command line of ``cmd`` on the prepared files."""
    return {
        "ingest": ["ingest", str(base / "new.csv")],
        "labels": ["annotate", "import", str(base / "labels.csv"), "--no-retrain"],
        "score": ["score"],
        "retrain": ["retrain", "--force", "--reason", "fault test"],
    }[cmd]


def case_violations(cmd: str, root: Path, base: Path) -> list[str]:
    """``violations`` for the batches of a prepared project after ``cmd`` (and its labels)."""
    sources = {"seen.csv": base / "seen.csv"}
    if cmd in ("ingest", "score"):
        sources["new.csv"] = base / "new.csv"
    out = violations(root, sources)
    if cmd == "labels":
        out += label_violations(root, base / "labels.csv")
    return out
