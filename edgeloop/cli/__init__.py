"""The ``edgeloop`` command line.

Heavy libraries (Prefect, MLflow, GX, DVC, scikit-learn) are imported inside the commands that
need them, never at the top of this module: ``edgeloop --help`` must stay instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

CONFIG_HELP = "Config file (default: ./edgeloop.yaml, or $EDGELOOP_CONFIG)."


def _config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("EDGELOOP_CONFIG") or "edgeloop.yaml").resolve()


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(getattr(exc, "exit_code", 2))


def _settings(config: str | None) -> Any:
    from edgeloop._internal import runtime
    from edgeloop.core.config import load_settings

    settings = load_settings(_config_path(config))
    runtime.prepare(settings)
    return settings


class _Group(click.Group):
    """Turns a lost connection to the Prefect server into one clear line (exit 3)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from edgeloop._internal.runtime import api_unreachable

            if not api_unreachable(exc):
                raise
            from edgeloop.core.config import configured_prefect_api_url

            url = configured_prefect_api_url() or "(embedded)"
            click.secho(
                f"error: the Prefect server at {url} is unreachable ({exc}). Work already "
                "done is kept (MLflow runs, registry, data versions); rerun the command when "
                "the server is back: finished steps are skipped.",
                fg="red",
                err=True,
            )
            sys.exit(3)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeloop")
def main() -> None:
    """edgeloop: validate batches, surface edge cases, retrain, shadow, promote, monitor.

    Start with `edgeloop demo` (the whole loop on embedded defaults), or
    `edgeloop init --data YOUR.csv --target LABEL` for your own data.
    """


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option(
    "--data", type=click.Path(path_type=Path), default=None, help="Your labeled CSV/Parquet."
)
@click.option("--target", default=None, help="The label column of --data.")
@click.option("--force", is_flag=True, help="Overwrite an existing config/suite that differs.")
def init(config: str | None, data: Path | None, target: str | None, force: bool) -> None:
    """Set this checkout up (idempotent): config, suite, stores, DVC, first data version."""
    from edgeloop.core.errors import EdgeloopError
    from edgeloop.stack.init import init_project

    cfg = _config_path(config)
    try:
        report = init_project(cfg.parent, config=cfg, data=data, target=target, force=force)
    except EdgeloopError as exc:
        _fail(exc)
        return
    for step in report.steps:
        click.echo(f"  - {step}")
    click.secho(f"ready: data version {report.data_version}", fg="green")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
def ingest(paths: tuple[Path, ...], config: str | None, as_json: bool) -> None:
    """Validate batch files and add the accepted rows to the versioned dataset.

    Exits 1 when rows were quarantined (the report names them), 2 on bad usage or config.
    """
    from edgeloop._internal import runtime
    from edgeloop.core.errors import EdgeloopError, ValidationGateError

    try:
        settings = _settings(config)
        from flows.ingest import ingest as ingest_flow

        runtime.quiet_expected_errors()

        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise EdgeloopError(f"no such file: {', '.join(missing)}")
        results = ingest_flow([str(p) for p in paths], config=str(settings.source))
        code = 0
    except ValidationGateError as exc:
        results, code = exc.result, 1
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        from edgeloop.reports.terminal import print_outcomes

        print_outcomes(results)
    if code:
        bad = [
            r["source"]
            for r in results
            if r["rows_quarantined"] or r["status"] in ("quarantined", "unreadable")
        ]
        click.secho(
            f"quarantined: {', '.join(bad) or 'duplicates of quarantined batches'}",
            fg="red",
            err=True,
        )
    sys.exit(code)


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON (for scripts).")
def status(config: str | None, as_json: bool) -> None:
    """Show the state: data version, batches accepted/quarantined (with reasons), stores."""
    from edgeloop.core.errors import EdgeloopError
    from edgeloop.reports.status import collect_status

    try:
        state = collect_status(_settings(config))
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(state, indent=2, default=str))
    else:
        from edgeloop.reports.terminal import print_status

        print_status(state)


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
def demo(config: str | None) -> None:
    """Run the whole loop on the bundled demo data with embedded stores (nothing to start)."""
    from edgeloop.core.errors import EdgeloopError
    from edgeloop.demo.run import run_demo

    try:
        code = run_demo(_config_path(config))
    except EdgeloopError as exc:
        _fail(exc)
        return
    sys.exit(code)


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--reason", default="manual", show_default=True, help="Why (recorded in MLflow).")
@click.option("--force", is_flag=True, help="Retrain even if data, config and code are unchanged.")
@click.option("--max-rows", default=0, show_default=True, help="Train on at most N labeled rows.")
@click.option("--wait", is_flag=True, help="Queue behind a running retrain instead of refusing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def retrain(
    config: str | None, reason: str, force: bool, max_rows: int, wait: bool, as_json: bool
) -> None:
    """Train on the current data version, gate, register (champion first, then challenger).

    Exits 1 when the candidate fails a gate (each failed gate is named), 2 on other errors.
    """
    from edgeloop._internal import runtime
    from edgeloop.core.errors import EdgeloopError, GateError

    try:
        settings = _settings(config)
        # First: the embedded Prefect server boots on the other core meanwhile (a cache hit
        # stops it at exit, unused).
        join_server = runtime.warm_up_prefect(settings)
        # Then the fit, in its own process (the flow adopts it: edgeloop.models.fit_worker): it is
        # the command's critical path. A cache hit stops it at exit, a second or two in.
        from edgeloop.models import fit_worker

        fitting = fit_worker.start_early(settings, max_rows)
        # Unchanged inputs answer from MLflow at once, before Prefect and scikit-learn load.
        hit = None if force else _quick_cache_check(settings, max_rows)
        if hit is not None:
            result, code = hit.to_dict(), 0 if hit.gates.get("passed", True) else 1
            _print_retrain(result, as_json)
            sys.exit(code)
        if fitting:
            # A miss: the rest of this command yields the CPU to the fit. Before Prefect and
            # the imports below start their threads, which inherit the lower priority.
            runtime.yield_to_fit()
        # The evaluation's imports go on here while the server boots.
        runtime.preimport(
            settings.training.estimator.rpartition(".")[0], "pipelines.train", "pipelines.evaluate"
        )
        from flows.retrain import retrain as retrain_flow

        join_server()
        runtime.quiet_expected_errors()

        result = retrain_flow(
            reason=reason, force=force, max_rows=max_rows, wait=wait, config=str(settings.source)
        )
        code = 0
    except GateError as exc:
        result, code = exc.result, 1
    except EdgeloopError as exc:
        _fail(exc)
        return
    _print_retrain(result, as_json)
    sys.exit(code)


def _quick_cache_check(settings: Any, max_rows: int) -> Any:
    """The cached retrain for these inputs, or None (also when the check itself cannot run:
    the flow then decides, under its lock, with full error reporting)."""
    from edgeloop.core.errors import EdgeloopError
    from edgeloop.models.training import quick_cache_check

    try:
        return quick_cache_check(settings, max_rows)
    except EdgeloopError:
        return None


def _print_retrain(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    else:
        from edgeloop.reports.terminal import print_retrain

        print_retrain(result)


@main.command()
@click.argument("ref", required=False)
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def lineage(ref: str | None, config: str | None, as_json: bool) -> None:
    """Where a model came from: REF is champion (default), challenger, NAME@ALIAS or VERSION."""
    from edgeloop.core.errors import EdgeloopError
    from edgeloop.models.training import lineage as get_lineage

    try:
        info = get_lineage(_settings(config), ref)
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for k, v in info.items():
        if k == "alias_history":
            click.echo("alias history:")
            for e in v:
                prev = f" (was v{e['previous']})" if e["previous"] else ""
                click.echo(
                    f"  {e['at']}  {e['alias']} -> v{e['version'] or '-'}{prev}  by {e['actor']}: {e['reason']}"
                )
        else:
            click.echo(f"{k}: {v}")


@main.command()
@click.argument("version")
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def reproduce(version: str, config: str | None, as_json: bool) -> None:
    """Rebuild a registered model from its MLflow record (its DVC data version) and compare.

    Exits 0 when the metrics match, 1 when they differ.
    """
    from edgeloop.core.errors import EdgeloopError
    from edgeloop.models.training import reproduce as do_reproduce

    try:
        out = do_reproduce(_settings(config), version)
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        for k, v in out.items():
            click.echo(f"{k}: {v}")
        verdict = "metrics match" if out["metrics_match"] else "metrics DIFFER"
        click.secho(verdict, fg="green" if out["metrics_match"] else "red")
    sys.exit(0 if out["metrics_match"] else 1)


@main.group()
def annotate() -> None:
    """The annotation queue: export edge cases as tasks, import labels back."""


@annotate.command("export")
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), default=Path("exports"), show_default=True
)
@click.option(
    "--format", "fmt", type=click.Choice(["both", "json", "csv"]), default="both", show_default=True
)
@click.option(
    "--to",
    "target",
    type=click.Choice(["files", "label-studio"]),
    default="files",
    show_default=True,
)
def annotate_export(config: str | None, out_dir: Path, fmt: str, target: str) -> None:
    """Write open edge cases as Label Studio task JSON and CSV (or push them to Label Studio)."""
    from edgeloop.core.errors import EdgeloopError

    try:
        settings = _settings(config)
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
    except EdgeloopError as exc:
        _fail(exc)
        return
    click.echo(f"{out['tasks']} open task(s)")
    for f in out["files"]:
        click.echo(f"  wrote {f}")


@annotate.command("import")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option(
    "--from",
    "source",
    type=click.Choice(["file", "label-studio"]),
    default="file",
    show_default=True,
)
@click.option("--no-retrain", is_flag=True, help="Do not start a retrain on label volume.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def annotate_import(
    path: Path | None, config: str | None, source: str, no_retrain: bool, as_json: bool
) -> None:
    """Import labels (Label Studio JSON export or CSV) into a new dataset version.

    Exits 1 when rows were rejected (the report names each with its reason).
    """
    from edgeloop._internal import runtime
    from edgeloop.core.errors import EdgeloopError, GateError

    try:
        settings = _settings(config)
        if source == "label-studio":
            from edgeloop.batch.labelstudio import pull_annotations

            path = pull_annotations(settings)
        if path is None:
            raise EdgeloopError(
                "give the export file: edgeloop annotate import PATH (or --from label-studio)"
            )
        if not path.exists():
            raise EdgeloopError(f"{path}: file not found")
        from flows.annotate import annotate_import as import_flow

        runtime.quiet_expected_errors()
        out, code = (
            import_flow(
                str(path.resolve()), retrain_on_volume=not no_retrain, config=str(settings.source)
            ),
            0,
        )
    except GateError as exc:
        out, code = exc.result, 1
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
    else:
        click.echo(
            f"{out['accepted']} label(s) added, {out['rejected']} rejected; data version {out['data_version'][:12]}"
        )
        if out.get("report"):
            click.secho(f"rejected rows: {out['report']}", fg="red", err=True)
        s = out["sla"]
        click.echo(
            f"backlog: {s['open']} open, oldest {s['oldest_open_hours']} h, within {s['sla_days']}-day SLA: {s['within_sla_share']}"
        )
        rt = out.get("retrain")
        if rt and rt.get("mode") == "deployment":
            click.echo(
                f"label-volume retrain started: {rt['deployment']} run {rt['flow_run_name']}"
            )
        elif rt:
            click.echo(f"label-volume retrain: {rt.get('status')}: {rt.get('message')}")
    sys.exit(code)


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
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
def score(
    config: str | None, as_json: bool, dask_workers: int | None, dask_address: str | None
) -> None:
    """Score accepted batches with the champion and, in shadow, the challenger.

    One Prefect task per batch: sequential by default, in parallel on Dask when asked.
    """
    import importlib.util

    from edgeloop._internal import runtime
    from edgeloop.core.errors import EdgeloopError

    if dask_workers and dask_address:
        raise click.UsageError("--dask-workers and --dask-address exclude each other")
    # Before the flow starts (its temporary Prefect server alone takes seconds).
    if (dask_workers or dask_address) and importlib.util.find_spec("prefect_dask") is None:
        _fail(EdgeloopError("the Dask task runner needs the 'dask' extra: uv sync --extra dask"))
        return
    try:
        settings = _settings(config)
        from flows.score import score as score_flow

        runtime.quiet_expected_errors()
        written = score_flow(
            config=str(settings.source),
            dask_address=dask_address or "",
            dask_workers=dask_workers or 0,
        )
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(written, indent=2))
        return
    for w in written:
        click.echo(f"scored {w['batch_id']} with {w['alias']} v{w['version']} ({w['rows']} rows)")
    if not written:
        click.echo("nothing new to score")


@main.command("report")
@click.option(
    "--days", default=7, show_default=True, type=click.IntRange(min=1), help="Window length."
)
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the review as JSON.")
def report_cmd(days: int, config: str | None, as_json: bool) -> None:
    """Write the weekly review (markdown + HTML): retrains, drift, quarantine, annotation SLA,
    shadow, promotions and rollbacks of the last DAYS days, linked to their runs."""
    from edgeloop._internal import runtime
    from edgeloop.core.errors import EdgeloopError

    try:
        settings = _settings(config)
        from flows.weekly_review import weekly_review

        runtime.quiet_expected_errors()
        out = weekly_review(days=days, config=str(settings.source))
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
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


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--no-retrain", is_flag=True, help="Do not start a retrain when a batch drifted.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def monitor(config: str | None, no_retrain: bool, as_json: bool) -> None:
    """Drift and confidence of scored batches against the reference: an MLflow run per batch,
    the dashboard in reports/, and a retrain when a batch drifted."""
    from edgeloop._internal import runtime
    from edgeloop.core.errors import EdgeloopError

    try:
        settings = _settings(config)
        from flows.monitor import monitor as monitor_flow

        runtime.quiet_expected_errors()
        out = monitor_flow(retrain_on_drift=not no_retrain, config=str(settings.source))
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
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


@main.command("shadow-evaluate")
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def shadow_evaluate(config: str | None, as_json: bool) -> None:
    """Compare challenger and champion on labeled rows both scored in shadow (an MLflow run)."""
    from edgeloop._internal import runtime
    from edgeloop.core.errors import EdgeloopError

    try:
        settings = _settings(config)
        from flows.shadow_evaluate import shadow_evaluate_flow

        runtime.quiet_expected_errors()
        report = shadow_evaluate_flow(config=str(settings.source))
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    colour = "green" if report["promote"] else "yellow"
    click.secho(report["summary"], fg=colour)
    c = report["comparison"]
    click.echo(f"rows {c['n']}, agreement {c['agreement']}, MLflow run {report['run_id']}")


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--force", is_flag=True, help="Promote without (or against) the evidence.")
@click.option("--reason", default="", help="Why (required with --force; recorded).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def promote(config: str | None, force: bool, reason: str, as_json: bool) -> None:
    """Make the challenger the champion when the shadow evidence says so (exit 1 if not)."""
    from edgeloop.batch.scoring import promote as do_promote
    from edgeloop.core.errors import EdgeloopError, GateError

    if force and not reason.strip():
        _fail(EdgeloopError("--force needs --reason TEXT (it is recorded in the alias history)"))
        return
    try:
        out, code = do_promote(_settings(config), force=force, reason=reason), 0
    except GateError as exc:
        out, code = exc.result, 1
    except EdgeloopError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
    elif out.get("promoted"):
        click.secho(
            f"promoted v{out['new_champion']} to champion (previous: v{out['previous_champion'] or '-'})",
            fg="green",
        )
        click.echo(f"why: {out['evidence'] if not out.get('forced') else 'forced: ' + reason}")
    else:
        click.secho(f"not promoted: {out['evidence']}", fg="yellow")
    sys.exit(code)


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--reason", default="", help="Why (recorded in the alias history).")
def rollback(config: str | None, reason: str) -> None:
    """Give the champion alias back to the previous champion, in one command."""
    from edgeloop.batch.scoring import rollback as do_rollback
    from edgeloop.core.errors import EdgeloopError

    try:
        out = do_rollback(_settings(config), reason)
    except EdgeloopError as exc:
        _fail(exc)
        return
    click.secho(
        f"champion is v{out['champion']} again (rolled back from v{out['rolled_back'] or '-'})",
        fg="green",
    )


@main.command()
@click.option("--host", default=None, help="Address to bind (default: serving.host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: serving.port, 8000).")
@click.option("--config", "config", default=None, help=CONFIG_HELP)
def serve(host: str | None, port: int | None, config: str | None) -> None:
    """Serve predictions: the champion answers, the challenger scores the same rows silently.

    POST /predict, GET /healthz, /readyz, /metrics. Picks up alias moves without a restart.
    Exits 2 when the port is in use.
    """
    from edgeloop.core.errors import EdgeloopError

    try:
        settings = _settings(config)
        from edgeloop.serving.service import serve as run_service

        run_service(
            settings,
            host=host or settings.serving.host,
            port=port if port is not None else settings.serving.port,
        )
    except EdgeloopError as exc:
        _fail(exc)


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
def deploy(config: str | None) -> None:
    """Serve the deployments (ingest, score, retrain, annotate, shadow-evaluate, monitor,
    weekly review) on the Prefect server at PREFECT_API_URL, with schedules from the config.

    Runs until interrupted; `edgeloop up` starts a server and runs this for you.
    """
    from edgeloop.core.errors import EdgeloopError

    try:
        settings = _settings(config)
        from edgeloop.stack.deploy import serve_deployments

        serve_deployments(settings)
    except EdgeloopError as exc:
        _fail(exc)


@main.command()
@click.option("--config", "config", default=None, help=CONFIG_HELP)
@click.option("--prefect-port", default=4200, show_default=True, help="Prefect server/UI port.")
@click.option("--mlflow-port", default=5000, show_default=True, help="MLflow UI port.")
@click.option("--no-mlflow-ui", is_flag=True, help="Do not start the MLflow UI.")
def up(config: str | None, prefect_port: int, mlflow_port: int, no_mlflow_ui: bool) -> None:
    """Start a Prefect server, the MLflow UI and the deployments on 127.0.0.1.

    Ctrl-C stops all of them. With PREFECT_API_URL set, uses that server instead of starting one.
    Exits 2 when a port is in use.
    """
    from edgeloop.core.errors import EdgeloopError

    try:
        settings = _settings(config)
        from edgeloop.stack.up import run_up

        code = run_up(
            settings,
            prefect_port=prefect_port,
            mlflow_port=mlflow_port,
            mlflow_ui=not no_mlflow_ui,
            echo=click.echo,
        )
    except EdgeloopError as exc:
        _fail(exc)
        return
    sys.exit(code)


@main.command()
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


if __name__ == "__main__":
    main()
