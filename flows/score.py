"""Prefect flow: score accepted batches with the champion and, in shadow, the challenger.

One task run per batch (mapped), so a Dask task runner scores batches in parallel. By default
the batches run one after the other, in ledger order, on the flow's own single-thread runner:
the files written and the return value are the same as when one task scored every batch.
``dask_workers`` / ``dask_address`` (flow parameters, so a deployment's Run form and
``edgeloop score --dask-workers N`` choose the runner without a code change) send the batch
tasks to a local Dask cluster or to an existing scheduler instead.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, cast

from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from edgeloop._internal import faults
from edgeloop.batch.annotation import surface
from edgeloop.batch.scoring import remove_partial_scores, score_batches
from edgeloop.core.config import Settings, load_settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.core.keys import CHALLENGER, CHAMPION
from edgeloop.core.layout import Layout
from edgeloop.data.lock import change, data_lock, recover, say
from edgeloop.data.store import DataStore
from edgeloop.tracking.registry import Registry
from flows._common import version_data

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture
    from prefect.task_runners import TaskRunner
    from prefect_dask.task_runners import DaskTaskRunner

#: Aliases in the order ``score_batches`` writes them (its return value is alias-major).
ALIASES = (CHAMPION, CHALLENGER)


@task(name="pending-batches", cache_policy=NO_CACHE)
def pending_task(settings: Settings, batch_ids: list[str] | None) -> list[str]:
    """Accepted batches (ledger order) that miss a score file of the current champion/challenger.

    Only decides which batches get a task run: ``score_batches`` still checks each file itself,
    so a batch listed here needlessly costs one empty task run, never a second file.
    """
    aliases = Registry(settings).aliases()
    if CHAMPION not in aliases:
        return []
    # The ledger lists batches in arrival order, which is the order of data/accepted/ (file
    # names start with the zero-padded sequence number) and so the order score_batches uses.
    batches = [e.batch_id for e in DataStore(settings).ledger() if e.rows_accepted > 0]
    if batch_ids:
        wanted = set(batch_ids)
        batches = [b for b in batches if b in wanted]
    versions = [(a, aliases[a]) for a in ALIASES if a in aliases]
    layout = Layout.of(settings)
    return [b for b in batches if any(not layout.score_file(b, a, v).exists() for a, v in versions)]


@task(name="score-batch", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def score_batch_task(settings: Settings, batch_id: str) -> list[dict[str, Any]]:
    """Write the score files of one batch (one per model version) not written yet."""
    with warnings.catch_warnings():
        # In a Dask worker (a daemon process) scikit-learn predicts with n_jobs=1 and says so
        # for every model it loads: one batch per core is the intent, so it is only noise.
        warnings.filterwarnings(
            "ignore", message="Inside a Dask worker with daemon=True", category=UserWarning
        )
        return score_batches(settings, [batch_id])


@task(name="surface-edge-cases", cache_policy=NO_CACHE)
def surface_task(settings: Settings) -> list[dict[str, Any]]:
    """Queue the rows worth labeling from every newly scored batch."""
    return surface(settings)


def dask_task_runner(address: str = "", workers: int = 0, api_url: str = "") -> DaskTaskRunner:
    """A Dask task runner on the scheduler at ``address``, or on a local cluster of ``workers``.

    The local cluster runs one single-threaded worker process per worker, not threads: loading
    a model in two threads of one CPython 3.11 process at once fails at random with
    "SystemError: AST constructor recursion depth mismatch" (numpy parses each array header
    of the skops file with ``ast.literal_eval``, and 3.11's AST state is shared by threads: a
    task hit it in 5 runs of 6 with two worker threads, and its retry then reported only the
    files of its second attempt). The workers get ``api_url``, the Prefect API of the flow run:
    without it each worker process would start a temporary Prefect server of its own (measured
    on 2 cores: 49 s instead of 19 s for four small tasks, and a server left running).
    """
    if bool(address) == bool(workers):
        raise EdgeloopError("choose one of dask_address or dask_workers (workers >= 1)")
    if workers < 0:
        raise EdgeloopError(f"dask_workers must be >= 1, got {workers}")
    try:
        # lazy: prefect-dask (with distributed) is the optional `dask` extra
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError:
        raise EdgeloopError(
            "the Dask task runner needs the 'dask' extra: uv sync --extra dask "
            "(or pip install 'edgeloop[dask]')"
        ) from None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "processes": True,
            "threads_per_worker": 1,
            # No dashboard: it needs bokeh and a free port, and nothing reads it here.
            "dashboard_address": None,
            "env": {"PREFECT_API_URL": api_url} if api_url else {},
        }
    )


def _alias_major(per_batch: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every champion file, then every challenger file, batches in order: score_batches' order."""
    return [w for alias in ALIASES for written in per_batch for w in written if w["alias"] == alias]


# One worker thread: mapped batches run one at a time, in order, as the single task did before.
# (The cast: `flow` wants a TaskRunner[PrefectFuture], and Prefect's runner generics are
# invariant, so no concrete runner type matches it.)
@flow(
    name="score",
    task_runner=cast("TaskRunner[PrefectFuture[Any]]", ThreadPoolTaskRunner(max_workers=1)),
)
def score(
    batch_ids: list[str] | None = None,
    config: str = "edgeloop.yaml",
    dask_address: str = "",
    dask_workers: int = 0,
    wait: bool = False,
) -> list[dict[str, Any]]:
    """Score accepted batches (all, or ``batch_ids``) with champion and challenger.

    Score files are written whole or not at all; the edge-case queue (in ``data/``) is written
    and versioned under the data lock, after rolling back what a killed command left there.

    Args:
        batch_ids: Batches to score (ids as in ``edgeloop status``); empty = every batch.
        config: Path of the edgeloop.yaml to use.
        dask_address: Score batches on this Dask scheduler (``tcp://host:8786``); its workers
            need the project's files at the same path and the same Prefect API.
        dask_workers: Score batches on a local Dask cluster of this many worker processes.
        wait: Queue behind another command writing the data instead of refusing.
    """
    settings = load_settings(config)
    with data_lock(settings, "score", wait=wait):
        # Before anything is read: a killed ingest's uncommitted batch is not scored.
        say(recover(settings).notes)
    for p in remove_partial_scores(settings):
        say([f"recovered: removed {p}, a score file a killed run left half-written"])
    batches = pending_task(settings, batch_ids or None)
    if dask_address or dask_workers:
        # The runner is entered here rather than set on the flow, so that a parameter picks
        # it: the flow's runner is fixed before its body runs. Mapping through it is what
        # ``Task.map`` does with the flow's runner; results are read before the cluster closes.
        run = FlowRunContext.get()
        api_url = str(run.client.api_url) if run is not None else ""
        runner = dask_task_runner(dask_address, dask_workers, api_url)
        per_batch: list[list[dict[str, Any]]] = []
        if batches:  # no cluster to start (or connect to) for nothing
            with runner:
                # prefect-dask annotates the result one future too deep.
                futures = cast(
                    "list[PrefectFuture[list[dict[str, Any]]]]",
                    runner.map(
                        score_batch_task, {"settings": unmapped(settings), "batch_id": batches}
                    ),
                )
                per_batch = [f.result() for f in futures]
    else:
        per_batch = [f.result() for f in score_batch_task.map(unmapped(settings), batches)]
    written = _alias_major(per_batch)
    if written:
        create_table_artifact(key="scored-batches", table=written, description="new score files")
    with data_lock(settings, "score (edge-case queue)", wait=wait):
        say(recover(settings).notes)
        with change(settings, "score (edge-case queue)"):
            surfaced = surface_task(settings)
            if surfaced:
                # The queue lives in data/: version it, so data.dvc keeps describing data/.
                version_data(settings)
                faults.point("score:versioned")
    if surfaced:
        create_table_artifact(
            key="edge-cases", table=surfaced, description="edge cases queued for annotation"
        )
    return written
