"""kill -9 at every named step of ingest, label import, score and retrain, then rerun.

Each case copies a project prepared once per module (init, a champion, one batch ingested,
scored and surfaced), starts the real CLI paused at a fault point (``EDGELOOP_FAULT``), kills
its process group, checks that no child outlived it, reruns the same command and checks the
invariants (``faultkit.violations``): ``dvc status`` clean, each batch filed once with its rows
once, the ledger consistent; the rerun says what it recovered. The CLI runs talk to the
session's Prefect API (no temporary server each: 15 s less per run).

Every point runs by default (the README's test command and CI: about 6-10 minutes on 2 cores);
``EDGELOOP_FAULTS_QUICK=1`` runs one point per distinct recovery path, for everyday work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import assert_gone
from tests.data import faultkit as fk

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ALL = os.environ.get("EDGELOOP_FAULTS_QUICK") != "1"
# point -> (whether the rerun has something to recover, in the default set)
INGEST = {
    "ingest:validated": (False, False),
    "ingest:accepted-written": (True, True),
    "ingest:quarantine-written": (True, False),
    "ingest:ledger-written": (True, True),
    "data:dvc-added": (True, True),
    "data:dvc-pushed": (True, False),
    "ingest:mlflow-logged": (True, False),
}
LABELS = {
    "labels:accepted-written": (True, True),
    "labels:rejected-written": (True, False),
    "data:dvc-added": (True, True),
    "data:dvc-pushed": (True, False),
    "labels:mlflow-logged": (True, False),
}
SCORE = {
    "score:file-written": (False, False),
    "score:queue-written": (True, True),
    "score:versioned": (True, False),
}
RETRAIN = {"register": (True, True), "after-alias": (True, False)}
CASES = [
    pytest.param(cmd, point, expect, id=f"{cmd}-{point}", marks=() if quick or ALL else skip)
    for cmd, points in (
        ("ingest", INGEST),
        ("labels", LABELS),
        ("score", SCORE),
        ("retrain", RETRAIN),
    )
    for point, (expect, quick) in points.items()
    for skip in [pytest.mark.skip(reason="EDGELOOP_FAULTS_QUICK=1 runs one point per path")]
]


@pytest.fixture(scope="module")
def api_url(prefect_harness: None) -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """The projects and files of ``faultkit.prepare``."""
    base = tmp_path_factory.mktemp("faults")
    fk.prepare(base)
    return base


@pytest.mark.parametrize(("cmd", "point", "expect_recovery"), CASES)
def test_kill_9_at_a_step_then_rerun_leaves_the_data_consistent(
    prepared: Path, api_url: str, tmp_path: Path, cmd: str, point: str, expect_recovery: bool
) -> None:
    root = fk.copy_project(prepared / fk.PROJECT[cmd], tmp_path / "proj")
    args = fk.args(cmd, prepared)
    proc, lines = fk.start(args, root, fk.cli_env(api_url, f"pause:{point}"))
    try:
        assert fk.wait_for(proc, lines, fk.MARKER + point), "".join(lines)[-3000:]
    finally:
        kids = fk.kill_group(proc)
    assert_gone(lambda: fk.alive(kids), f"a child of the killed 'edgeloop {cmd}'")

    rerun = fk.run(args, root, fk.cli_env(api_url))
    said = rerun.stdout + rerun.stderr
    assert rerun.returncode in (0, 1), said[-3000:]
    assert "Traceback" not in said and "error:" not in said, said[-3000:]
    problems = fk.case_violations(cmd, root, prepared)
    assert not problems, f"{problems}\n{said[-3000:]}"
    assert ("recovered" in said) == expect_recovery, said[-3000:]
    if cmd == "retrain":
        from edgeloop.core.config import load_settings
        from edgeloop.tracking.registry import Registry

        assert Registry(load_settings(root / "edgeloop.yaml")).aliases()["champion"] == "1"
