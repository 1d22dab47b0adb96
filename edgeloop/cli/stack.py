"""Running the loop: demo, up, deploy, serve, and the weekly report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgeloop.cli._common import command_body, config_option, json_option

if TYPE_CHECKING:
    from edgeloop.core.config import Settings


@click.command()
@config_option
@command_body(settings=False)
def demo(cfg: Path) -> None:
    """Run the whole loop on the bundled demo data with embedded stores (nothing to start)."""
    from edgeloop.demo.run import run_demo

    sys.exit(run_demo(cfg))


def _show_review(out: Any) -> None:
    c = out["counts"]
    click.echo(
        f"{out['window']['start'][:10]} to {out['window']['end'][:10]}: {c['retrains']} retrain(s),"
        f" {c['batches_drifted']}/{c['batches_monitored']} batch(es) drifted,"
        f" {c['quarantined_batches']} quarantined, {c['annotation_open']} open annotation(s),"
        f" {c['promotions']} promotion(s), {c['rollbacks']} rollback(s)"
    )
    click.echo(f"  markdown: {out['markdown']}")
    click.echo(f"  html:     {out['html']}")
    click.echo(f"  MLflow run: {out['mlflow_run_id']}")


@click.command("report")
@click.option(
    "--days", default=7, show_default=True, type=click.IntRange(min=1), help="Window length."
)
@config_option
@json_option("Print the review as JSON.")
@command_body(show=_show_review)
def report_cmd(settings: Settings, days: int) -> Any:
    """Write the weekly review (markdown + HTML): retrains, drift, quarantine, annotation SLA,
    shadow, promotions and rollbacks of the last DAYS days, linked to their runs."""
    from edgeloop._internal import runtime
    from flows.weekly_review import weekly_review

    runtime.quiet_expected_errors()
    return weekly_review(days=days, config=str(settings.source))


@click.command()
@click.option("--host", default=None, help="Address to bind (default: serving.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: serving.port, 8000).")
@config_option
@command_body()
def serve(settings: Settings, host: str | None, port: int | None) -> None:
    """Serve predictions: the champion answers, the challenger scores the same rows silently.

    POST /predict, GET /healthz, /readyz, /metrics. Picks up alias moves without a restart.
    Exits 2 when the port is in use.
    """
    from edgeloop.serving.app import serve as run_service

    run_service(
        settings,
        host=host or settings.serving.host,
        port=port if port is not None else settings.serving.port,
    )


@click.command()
@config_option
@command_body()
def deploy(settings: Settings) -> None:
    """Serve the deployments (ingest, score, retrain, annotate, shadow-evaluate, monitor,
    weekly review) on the Prefect server at PREFECT_API_URL, with schedules from the config.

    Runs until interrupted; `edgeloop up` starts a server and runs this for you.
    """
    from edgeloop.stack.deploy import serve_deployments

    serve_deployments(settings)


@click.command()
@config_option
@click.option("--prefect-port", default=4200, show_default=True, help="Prefect server/UI port.")
@click.option("--mlflow-port", default=5000, show_default=True, help="MLflow UI port.")
@click.option("--no-mlflow-ui", is_flag=True, help="Do not start the MLflow UI.")
@command_body()
def up(settings: Settings, prefect_port: int, mlflow_port: int, no_mlflow_ui: bool) -> None:
    """Start a Prefect server, the MLflow UI and the deployments on 127.0.0.1.

    Ctrl-C stops all of them. With PREFECT_API_URL set, uses that server instead of starting one.
    Exits 2 when a port is in use.
    """
    from edgeloop.stack.up import run_up

    sys.exit(
        run_up(
            settings,
            prefect_port=prefect_port,
            mlflow_port=mlflow_port,
            mlflow_ui=not no_mlflow_ui,
            echo=click.echo,
        )
    )


COMMANDS = (demo, report_cmd, serve, deploy, up)
