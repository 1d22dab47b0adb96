"""Scoring on a real local Dask cluster writes what sequential scoring writes.

The clusters have two single-threaded worker PROCESSES, which is what works reliably here.
With worker threads, two threads loading a model at once hit CPython 3.11's thread-unsafe AST
state ("SystemError: AST constructor recursion depth mismatch", from numpy's
``ast.literal_eval`` of .npy headers inside skops) in 5 runs of 6; the task's retry hid the
error but reported only its second attempt's files, and the test failed. Processes cost ~10 s
of imports each (started side by side on the 2 cores); they are told the session's Prefect
API, so none starts a server of its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import production_batch, run_cli, small_reference


def _score_files(root: Path) -> dict[str, Any]:
    """Every score file under ``scores/``: relative path -> its frame."""
    import pandas as pd

    return {str(p.relative_to(root)): pd.read_parquet(p) for p in sorted(root.glob("*/*.parquet"))}


def _assert_same_files(got: dict[str, Any], want: dict[str, Any]) -> None:
    import pandas as pd

    assert sorted(got) == sorted(want)
    for name, frame in want.items():
        pd.testing.assert_frame_equal(got[name], frame, check_exact=True, obj=name)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_dask_scoring_writes_the_same_files_as_sequential(project: Path, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL

    from edgeloop.batch.scoring import score_batches
    from edgeloop.core.config import load_settings
    from edgeloop.core.layout import Layout
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score

    config = str(project / "edgeloop.yaml")
    settings = load_settings(config)
    # A champion and a challenger (as in test_shadow), then three more batches: every batch is
    # scored by both models, so each run writes 2 x 4 files.
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    first = tmp_path / "b0.csv"
    small_reference(120, 50).to_csv(first, index=False)
    ingest([str(first)], config=config)
    assert retrain(reason="v2", config=config)["alias"] == "challenger"
    for n in range(1, 4):
        batch = tmp_path / f"b{n}.csv"
        production_batch(60 + 10 * n, 70 + n).to_csv(batch, index=False)
        ingest([str(batch)], config=config)
    scores = Layout.of(settings).scores

    # The reference: the old single-task behaviour, one call over every batch.
    reference_written = score_batches(settings, None)
    assert len(reference_written) == 8
    assert {w["alias"] for w in reference_written} == {"champion", "challenger"}
    reference_files = _score_files(scores)

    # The flow's default: one task per batch, one after the other.
    shutil.rmtree(scores)
    assert score(config=config) == reference_written
    _assert_same_files(_score_files(scores), reference_files)

    # A local cluster of two worker processes that the flow starts (dask_workers) and that
    # reports to the flow's Prefect API.
    shutil.rmtree(scores)
    assert score(config=config, dask_workers=2) == reference_written
    _assert_same_files(_score_files(scores), reference_files)
    # Scored twice already: nothing is left to do, and no cluster is started for it.
    assert score(config=config, dask_workers=2) == []

    # Team mode from the command line: an existing scheduler with two worker processes
    # (--dask-address) and a Prefect server that the CLI and the workers share.
    shutil.rmtree(scores)
    api = PREFECT_API_URL.value()
    with LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        dashboard_address=None,
        env={"PREFECT_API_URL": api},
    ) as cluster:
        proc = run_cli(
            "score",
            "--json",
            "--dask-address",
            cluster.scheduler_address,
            cwd=project,
            env={"PREFECT_API_URL": api},
        )
        with Client(cluster) as client:
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == reference_written
    assert sum(executed.values()) == 4, executed  # one task per batch, all on the cluster
    _assert_same_files(_score_files(scores), reference_files)


def test_dask_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    # Refused before the config is even read: no project needed.
    both = run_cli(
        "score", "--dask-workers", "2", "--dask-address", "tcp://127.0.0.1:1", cwd=tmp_path
    )
    assert both.returncode == 2 and "exclude each other" in both.stderr
    zero = run_cli("score", "--dask-workers", "0", cwd=tmp_path)
    assert zero.returncode == 2 and "--dask-workers" in zero.stderr


def test_runner_choice_is_validated() -> None:
    from edgeloop.core.errors import EdgeloopError
    from flows.score import dask_task_runner

    with pytest.raises(EdgeloopError, match="one of"):
        dask_task_runner("tcp://127.0.0.1:8786", 2)
    with pytest.raises(EdgeloopError, match="one of"):
        dask_task_runner()
    with pytest.raises(EdgeloopError, match=">= 1"):
        dask_task_runner(workers=-1)
    # Single-threaded worker processes told the flow's Prefect API, no dashboard port (see
    # flows.score.dask_task_runner for why).
    runner = dask_task_runner(workers=2, api_url="http://127.0.0.1:4200/api")
    assert runner.cluster_kwargs == {
        "n_workers": 2,
        "processes": True,
        "threads_per_worker": 1,
        "dashboard_address": None,
        "env": {"PREFECT_API_URL": "http://127.0.0.1:4200/api"},
    }
    assert dask_task_runner("tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"
