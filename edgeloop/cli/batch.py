"""Per-batch commands after ingest: score, monitor (drift), annotate export/import (labels)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeloop.cli._common import F, command_body, config_option, json_option
from edgeloop.cli.data import WAIT_HELP
from edgeloop.core.errors import EdgeloopError, GateError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings


def _dask_usable(*, dask_workers: int | None, dask_address: str | None, **_: Any) -> None:
    if dask_workers and dask_address:
        raise click.UsageError("--dask-workers and --dask-address exclude each other")
    # Before the flow starts (its temporary Prefect server alone takes seconds).
    if (dask_workers or dask_address) and importlib.util.find_spec("prefect_dask") is None:
        raise EdgeloopError("the Dask task runner needs the 'dask' extra: uv sync --extra dask")


def _show_scored(written: Any) -> None:
    for w in written:
        click.echo(f"scored {w['batch_id']} with {w['alias']} v{w['version']} ({w['rows']} rows)")
    if not written:
        click.echo("nothing new to score")


@click.command()
@config_option
@json_option("Print as JSON.")
@click.option(
    "--dask-workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Score batches in parallel on a local Dask cluster of N worker processes (the 'dask' extra).",
)
@click.option(
    "--dask-address",
    default=None,
    metavar="tcp://HOST:PORT",
    help="Score batches on this Dask scheduler; its workers need the project at the same path "
    "and the same Prefect API (PREFECT_API_URL).",
)
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@command_body(check=_dask_usable, show=_show_scored)
def score(
    settings: Settings, dask_workers: int | None, dask_address: str | None, wait: bool
) -> Any:
    """Score accepted batches with the champion and, in shadow, the challenger.

    One Prefect task per batch: sequential by default, in parallel on Dask when asked.
    """
    from edgeloop._internal import runtime
    from flows.score import score as score_flow

    runtime.quiet_expected_errors()
    return score_flow(
        config=str(settings.source),
        dask_address=dask_address or "",
        dask_workers=dask_workers or 0,
        wait=wait,
    )


def _show_monitored(out: Any) -> None:
    for b in out["monitored"]:
        names = ", ".join(b["drifted_features"][:8]) or "none"
        line = (
            f"{b['batch_id']}: {b['n_drifted']} of {b['n_features']} features drifted ({names}),"
            f" mean confidence {b['mean_confidence'] or 0:.3f}"
        )
        click.secho(f"DRIFT {line}" if b["drifted"] else line, fg="red" if b["drifted"] else None)
    if not out["monitored"]:
        click.echo("nothing new to monitor")
    if out["not_scored"]:
        click.echo(f"not scored yet (run 'edgeloop score'): {', '.join(out['not_scored'])}")
    rt = out.get("retrain")
    if rt and rt.get("mode") == "deployment":
        click.echo(f"drift retrain started: {rt['deployment']} run {rt['flow_run_name']}")
    elif rt and rt.get("mode") == "failed":
        click.secho(f"drift retrain could not start: {rt['error']}", fg="red", err=True)
    elif rt:
        res = rt.get("result") or {}
        click.echo(f"drift retrain: {res.get('status')}: {res.get('message')}")
    click.echo(f"dashboard: {out['dashboard']}")


@click.command()
@config_option
@click.option("--no-retrain", is_flag=True, help="Do not start a retrain when a batch drifted.")
@json_option("Print as JSON.")
@command_body(show=_show_monitored)
def monitor(settings: Settings, no_retrain: bool) -> Any:
    """Drift and confidence of scored batches against the reference: an MLflow run per batch,
    the dashboard in reports/, and a retrain when a batch drifted."""
    from edgeloop._internal import runtime
    from flows.monitor import monitor as monitor_flow

    runtime.quiet_expected_errors()
    return monitor_flow(retrain_on_drift=not no_retrain, config=str(settings.source))


def _choice_option(flag: str, name: str, *choices: str) -> Callable[[F], F]:
    """An option taking one of ``choices``; the first is the default."""
    return click.option(
        flag, name, type=click.Choice(list(choices)), default=choices[0], show_default=True
    )


@click.group()
def annotate() -> None:
    """The annotation queue: export edge cases as tasks, import labels back."""


@annotate.command("export")
@config_option
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("exports"), show_default=True
)
@_choice_option("--format", "fmt", "both", "json", "csv")
@_choice_option("--to", "target", "files", "label-studio")
@command_body()
def annotate_export(settings: Settings, out_dir: Path, fmt: str, target: str) -> None:
    """Write open edge cases as Label Studio task JSON and CSV (or push them to Label Studio)."""
    if target == "label-studio":
        from edgeloop.batch.labelstudio import push_tasks

        out = push_tasks(settings)
        click.echo(
            f"pushed {out['tasks']} task(s) to Label Studio project {out['project_id']} ({out['url']})"
        )
        return
    from edgeloop.batch.annotation import export_tasks

    formats = ("json", "csv") if fmt == "both" else (fmt,)
    out = export_tasks(
        settings, out_dir if out_dir.is_absolute() else settings.root / out_dir, formats
    )
    click.echo(f"{out['tasks']} open task(s)")
    for f in out["files"]:
        click.echo(f"  wrote {f}")


def _show_imported(out: Any) -> None:
    click.echo(
        f"{out['accepted']} label(s) added, {out['rejected']} rejected; data version {out['data_version'][:12]}"
    )
    if out.get("report"):
        click.secho(f"rejected rows: {out['report']}", fg="red", err=True)
    s = out["sla"]
    click.echo(
        f"backlog: {s['open']} open, oldest {s['oldest_open_hours']} h, within {s['sla_days']}-day SLA: {s['within_sla_share']}"
        f" (SLA {str(s.get('sla_state', 'ok')).replace('_', ' ')})"
    )
    rt = out.get("retrain")
    if rt and rt.get("mode") == "deployment":
        click.echo(f"label-volume retrain started: {rt['deployment']} run {rt['flow_run_name']}")
    elif rt:
        click.echo(f"label-volume retrain: {rt.get('status')}: {rt.get('message')}")


@annotate.command("import")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@config_option
@_choice_option("--from", "source", "file", "label-studio")
@click.option("--no-retrain", is_flag=True, help="Do not start a retrain on label volume.")
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@json_option("Print as JSON.")
@command_body(show=_show_imported, gate=GateError)
def annotate_import(
    settings: Settings, path: Path | None, source: str, no_retrain: bool, wait: bool
) -> Any:
    """Import labels (Label Studio JSON export or CSV) into a new dataset version.

    Exits 1 when rows were rejected (the report names each with its reason).
    """
    if source == "label-studio":
        from edgeloop.batch.labelstudio import pull_annotations

        path = pull_annotations(settings)
    if path is None:
        raise EdgeloopError(
            "give the export file: edgeloop annotate import PATH (or --from label-studio)"
        )
    if not path.exists():
        raise EdgeloopError(f"{path}: file not found")
    from edgeloop._internal import runtime
    from flows.annotate import annotate_import as import_flow

    runtime.quiet_expected_errors()
    return import_flow(
        str(path.resolve()),
        retrain_on_volume=not no_retrain,
        config=str(settings.source),
        wait=wait,
    )


COMMANDS = (score, monitor, annotate)
