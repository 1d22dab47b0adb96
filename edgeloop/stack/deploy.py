"""Prefect deployments of the loop's flows, served from one process (``edgeloop deploy``).

Every deployment is named after the project (``retrain/<project>``, ``monitor/<project>``...),
reads the project's config by absolute path, and gets its schedule from ``schedules`` in the
config. The Prefect UI renders each flow's typed parameters as the Run form.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import multiprocessing.forkserver
from dataclasses import dataclass
from typing import Any

import prefect.flow_engine
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from edgeloop.core.config import Settings, configured_prefect_api_url
from edgeloop.core.errors import DeployError


@dataclass(frozen=True)
class FlowSpec:
    """One deployment: which flow, which schedule key, what it is for."""

    module: str
    attr: str
    cron_key: str  # key of ``schedules`` holding its cron ("" = started from the UI only)
    description: str
    one_at_a_time: bool = False
    #: Flow names whose finished runs (of this project) start this deployment: the chain
    #: ingest -> score -> monitor runs without anyone clicking.
    after: tuple[str, ...] = ()


FLOWS: tuple[FlowSpec, ...] = (
    FlowSpec(
        "flows.ingest", "ingest", "", "Validate batch files; quarantine bad ones; version data."
    ),
    FlowSpec(
        "flows.score",
        "score",
        "",
        "Score accepted batches (champion + shadow challenger); queue edge cases.",
        after=("ingest",),
    ),
    FlowSpec(
        "flows.retrain",
        "retrain",
        "retrain_cron",
        "Retrain on the current data version; gate; register (skipped when nothing changed).",
        one_at_a_time=True,
    ),
    FlowSpec(
        "flows.annotate", "annotate_import", "", "Import annotators' labels (Label Studio / CSV)."
    ),
    FlowSpec(
        "flows.shadow_evaluate",
        "shadow_evaluate_flow",
        "shadow_evaluate_cron",
        "Compare champion and challenger on ground truth; record the decision.",
    ),
    FlowSpec(
        "flows.monitor",
        "monitor",
        "monitor_cron",
        "Drift and confidence of scored batches; dashboard; retrain on drift.",
        after=("score",),
    ),
    FlowSpec(
        "flows.weekly_review",
        "weekly_review",
        "weekly_review_cron",
        "The weekly review report (markdown + HTML).",
    ),
)


def require_server(settings: Settings) -> str:
    """The Prefect API URL deployments are served against; an error if there is none."""
    url = configured_prefect_api_url() or settings.services.prefect_api_url
    if not url:
        raise DeployError(
            "serving deployments needs a Prefect server: run 'edgeloop up' (starts one on "
            "127.0.0.1), or set PREFECT_API_URL / services.prefect_api_url in "
            f"{settings.source or 'edgeloop.yaml'}"
        )
    return url


def deployment_options(settings: Settings) -> list[tuple[Any, dict[str, Any]]]:
    """Each flow of ``FLOWS`` with its deployment's options: the keywords of
    ``Flow.to_deployment`` and ``Runner.add_flow``, schedules from the config."""
    config = str(settings.source or settings.root / "edgeloop.yaml")
    tz = settings.schedules.timezone
    options = []
    for spec in FLOWS:
        flow = getattr(importlib.import_module(spec.module), spec.attr)
        schedules = []
        expr = getattr(settings.schedules, spec.cron_key) if spec.cron_key else ""
        if expr:
            try:
                schedules.append(Cron(expr, timezone=tz))
            except ValueError as exc:  # Prefect's own parser: name the key if it disagrees
                raise DeployError(
                    f"{settings.source}: key 'schedules.{spec.cron_key}': {exc}"
                ) from None
        kwargs: dict[str, Any] = dict(
            name=settings.project,
            schedules=schedules or None,
            parameters={"config": config},
            description=spec.description,
            tags=["edgeloop", settings.project],
            # One retrain at a time: extra runs wait (ENQUEUE) instead of running in
            # parallel; the flow's own lock also refuses a CLI retrain running beside it.
            concurrency_limit=(
                ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
                if spec.one_at_a_time
                else None
            ),
            # The flows are an installed package: a worker imports them by module path,
            # whatever folder the project lives in.
            entrypoint_type=EntrypointType.MODULE_PATH,
            triggers=[_after(flow_name, settings.project) for flow_name in spec.after],
        )
        options.append((flow, kwargs))
    return options


def _after(flow_name: str, project: str) -> Any:
    """A trigger: run this deployment when a run of ``flow_name`` in ``project`` finishes."""
    return DeploymentEventTrigger(
        name=f"after {flow_name}",
        # Failed too: an ingest that quarantined some batches still accepted others.
        expect={"prefect.flow-run.Completed", "prefect.flow-run.Failed"},
        # Every spec must match: the upstream flow, and this project's tag (so two projects
        # on one server do not start each other's runs).
        match_related=[
            {"prefect.resource.role": "flow", "prefect.resource.name": flow_name},
            {"prefect.resource.id": f"prefect.tag.{project}"},
        ],
    )


class _ForkserverMultiprocessing:
    """Stands in for ``multiprocessing`` inside ``prefect.flow_engine``: its ``spawn`` context
    becomes a forkserver context, everything else is the real module."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def get_context(self, method: str | None = None) -> Any:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)


def fork_flow_runs(modules: list[str]) -> Any:
    """Start served flow runs as forks of a process that has already imported ``modules``.

    Prefect's runner starts every run in a fresh ``spawn`` process that imports Prefect and the
    flow's module again: ~2 s of a click's latency on 2 cores. A forkserver pays those imports
    once, at ``edgeloop deploy``'s start; each run is then a fork of it, just as isolated (own
    process, killed and cancelled the same way) but started in milliseconds. The forkserver is
    a child of this process and stops with it. Returns the context in use.

    Prefect's runner documents ``run_flow_in_subprocess`` as its override point; this keeps
    Prefect's function (environment, control channel, signals) and only changes how the
    process starts. ``tests/test_deploy.py`` fails if a Prefect upgrade makes it a no-op.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows: Prefect's way
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["prefect.flow_engine", *modules])
    # Start it and wait for its imports now: the first click should not pay for them either.
    multiprocessing.forkserver.ensure_running()
    warm = context.Process(target=_nothing)
    warm.start()
    warm.join()
    # The module global Prefect's runner calls `multiprocessing.get_context` on (not exported).
    engine: Any = prefect.flow_engine
    engine.multiprocessing = _ForkserverMultiprocessing(context)
    return context


def _nothing() -> None:
    """The first fork: returns once the forkserver has imported everything."""


def serve_deployments(settings: Settings) -> None:
    """Serve every deployment from this process until interrupted (blocks)."""
    url = require_server(settings)
    # A poll below Prefect's integer setting is passed to the runner directly. Ctrl-C and
    # SIGTERM pause the deployments' schedules (Prefect's default): no scheduled run piles up
    # while nothing serves them; the next `edgeloop deploy` un-pauses them.
    runner = Runner(
        name=f"edgeloop-{settings.project}",
        query_seconds=settings.schedules.poll_seconds,
        pause_on_shutdown=True,
    )
    options = deployment_options(settings)
    fork_flow_runs([spec.module for spec in FLOWS])
    names = []
    for flow, kwargs in options:
        # add_flow (not add_deployment) keeps the flow object in the runner, so a run starts
        # by calling it in a child process instead of `python -m prefect.engine` re-importing it.
        runner.add_flow(flow, **kwargs)
        names.append(f"{flow.name}/{kwargs['name']}")
    print(f"serving {len(names)} deployments on {url}: {', '.join(names)}", flush=True)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        print("stopped serving; the deployments' schedules are paused", flush=True)
