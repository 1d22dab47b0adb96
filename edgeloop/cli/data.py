"""Data commands: init, ingest, status, synth."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from edgeloop.cli._common import command_body, config_option, json_option
from edgeloop.core.errors import EdgeloopError, ValidationGateError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

WAIT_HELP = "Queue behind another command writing the data instead of refusing."


@click.command()
@config_option
@click.option(
    "--data", type=click.Path(path_type=Path), default=None, help="Your labeled CSV/Parquet."
)
@click.option("--target", default=None, help="The label column of --data.")
@click.option(
    "--id",
    "id_column",
    metavar="COL",
    default=None,
    help="The row id column (unique, non-null; carried through scoring and exports, never a"
    " feature). Default: inferred.",
)
@click.option(
    "--time",
    "time_column",
    metavar="COL",
    default=None,
    help="The time column (dates, timestamps or epoch seconds; never a category)."
    " Default: inferred.",
)
@click.option(
    "--ignore", metavar="COL", multiple=True, help="A column to keep but not use (repeatable)."
)
@click.option(
    "--categorical",
    metavar="COL",
    multiple=True,
    help="A column to treat as categorical (repeatable).",
)
@click.option(
    "--numeric", metavar="COL", multiple=True, help="A column to treat as numeric (repeatable)."
)
@click.option(
    "--task",
    type=click.Choice(["classification", "regression"]),
    default=None,
    help="What the model predicts. Default: inferred from --target (a numeric target with"
    " non-integer or many distinct values is regression).",
)
@click.option(
    "--force", is_flag=True, help="Overwrite an existing config/suite/dataset that differs."
)
@command_body(settings=False)
def init(
    cfg: Path,
    data: Path | None,
    target: str | None,
    id_column: str | None,
    time_column: str | None,
    ignore: tuple[str, ...],
    categorical: tuple[str, ...],
    numeric: tuple[str, ...],
    task: Literal["classification", "regression"] | None,
    force: bool,
) -> None:
    """Set this checkout up (idempotent): config, suite, stores, DVC, first data version.

    With --data, each column's role (id, time, numeric, categorical, high-cardinality, ignored)
    is inferred and printed with its reason; the flags override it.
    """
    from edgeloop.stack.init import init_project

    report = init_project(
        cfg.parent,
        config=cfg,
        data=data,
        target=target,
        id=id_column,
        time=time_column,
        ignore=ignore,
        categorical=categorical,
        numeric=numeric,
        task=task,
        force=force,
    )
    for step in report.steps:
        click.echo(f"  - {step}")
    if report.summary:
        click.echo(report.summary)
    click.secho(f"ready: data version {report.data_version}", fg="green")


def _show_outcomes(results: Any) -> None:
    from edgeloop.reports.terminal import print_outcomes

    print_outcomes(results)


def _quarantined(results: Any) -> str:
    bad = [
        r["source"]
        for r in results
        if r["rows_quarantined"] or r["status"] in ("quarantined", "unreadable")
    ]
    return f"quarantined: {', '.join(bad) or 'duplicates of quarantined batches'}"


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@config_option
@click.option("--wait", is_flag=True, help=WAIT_HELP)
@json_option("Print the outcomes as JSON.")
@command_body(show=_show_outcomes, gate=ValidationGateError, gate_note=_quarantined)
def ingest(settings: Settings, paths: tuple[Path, ...], wait: bool) -> Any:
    """Validate batch files and add the accepted rows to the versioned dataset.

    Exits 1 when rows were quarantined (the report names them), 2 on bad usage or config.
    """
    from edgeloop._internal import runtime
    from flows.ingest import ingest as ingest_flow

    runtime.quiet_expected_errors()

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise EdgeloopError(f"no such file: {', '.join(missing)}")
    return ingest_flow([str(p) for p in paths], config=str(settings.source), wait=wait)


def _show_status(state: Any) -> None:
    from edgeloop.reports.terminal import print_status

    print_status(state)


@click.command()
@config_option
@json_option("Print the state as JSON (for scripts).")
@command_body(show=_show_status)
def status(settings: Settings) -> Any:
    """Show the state: data version, batches accepted/quarantined (with reasons), stores."""
    from edgeloop.reports.status import collect_status

    return collect_status(settings)


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--rows", default=1_000_000, show_default=True, help="Number of rows.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--unlabeled", is_flag=True, help="Leave the label column out (a production batch).")
def synth(out: Path, rows: int, seed: int, unlabeled: bool) -> None:
    """Write a seeded synthetic batch (CSV or Parquet by extension) for scale work."""
    from edgeloop.demo.synthetic import synthetic_frame

    df = synthetic_frame(rows, seed=seed, labeled=not unlabeled)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        df.to_csv(out, index=False)
    else:
        df.to_parquet(out, index=False)
    click.echo(f"wrote {len(df)} rows to {out}")


def _show_relocated(result: Any) -> None:
    if result["old"] == result["new"]:
        click.echo(f"the MLflow store already points at {result['new']}: nothing to do")
        return
    click.echo(f"MLflow store: artifact locations {result['old']} -> {result['new']}")
    for column, count in result["rows"].items():
        click.echo(f"  - {column}: {count} rewritten")
    click.secho(result["verified"], fg="green")


@click.command()
@config_option
@json_option("Print what was rewritten as JSON.")
@command_body(show=_show_relocated)
def relocate(settings: Settings) -> Any:
    """Point the embedded MLflow store at this project's folder after a move or a copy.

    MLflow records absolute artifact locations: this rewrites those of the experiments, runs
    and model versions (the artifacts themselves are not touched), then loads a model to check.
    """
    from edgeloop.core.errors import StoreError
    from edgeloop.core.keys import CHAMPION
    from edgeloop.tracking.registry import Registry
    from edgeloop.tracking.store import relocate as relocate_store

    result = relocate_store(settings).to_dict()
    if result["missing"]:
        raise StoreError(
            f"locations rewritten to {result['new']}, but the artifacts of "
            f"{', '.join(result['missing'])} are not there: copy the whole mlflow/ folder"
        )
    registry = Registry(settings)
    versions = registry.client.search_model_versions(f"name = '{registry.name}'")
    if not versions:
        result["verified"] = "no model registered yet: nothing to load"
        return result
    ref = CHAMPION if CHAMPION in registry.aliases() else str(max(int(v.version) for v in versions))
    try:
        registry.load(ref)
    except EdgeloopError:
        raise
    except Exception as exc:  # MLflow and the model's loader raise many types
        raise StoreError(f"locations rewritten, but model {ref} does not load: {exc}") from None
    result["verified"] = f"model {registry.name} {ref} loads from {result['new']}"
    return result


COMMANDS = (init, ingest, status, synth, relocate)
