"""Model commands: retrain, lineage, reproduce, shadow-evaluate, promote, rollback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from edgeloop.cli._common import command_body, config_option, json_option
from edgeloop.core.errors import EdgeloopError, GateError, TrainingGateError

if TYPE_CHECKING:
    from edgeloop.core.config import Settings


def _show_retrain(result: Any) -> None:
    from edgeloop.reports.terminal import print_retrain

    print_retrain(result)


@click.command()
@config_option
@click.option("--reason", default="manual", show_default=True, help="Why (recorded in MLflow).")
@click.option("--force", is_flag=True, help="Retrain even if data, config and code are unchanged.")
@click.option("--max-rows", default=0, show_default=True, help="Train on at most N labeled rows.")
@click.option("--wait", is_flag=True, help="Queue behind a running retrain instead of refusing.")
@json_option("Print the summary as JSON.")
@command_body(show=_show_retrain, gate=GateError)
def retrain(settings: Settings, reason: str, force: bool, max_rows: int, wait: bool) -> Any:
    """Train on the current data version, gate, register (champion first, then challenger).

    Exits 1 when the candidate fails a gate (each failed gate is named), 2 on other errors.
    """
    from edgeloop._internal import runtime

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
        if not hit.gates.get("passed", True):
            raise TrainingGateError("the cached retrain failed a gate", hit.to_dict())
        return hit.to_dict()
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

    return retrain_flow(
        reason=reason, force=force, max_rows=max_rows, wait=wait, config=str(settings.source)
    )


def _quick_cache_check(settings: Settings, max_rows: int) -> Any:
    """The cached retrain for these inputs, or None (also when the check itself cannot run:
    the flow then decides, under its lock, with full error reporting)."""
    from edgeloop.models.cache import quick_cache_check

    try:
        return quick_cache_check(settings, max_rows)
    except EdgeloopError:
        return None


def _show_lineage(info: Any) -> None:
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


@click.command()
@click.argument("ref", required=False)
@config_option
@json_option("Print as JSON.")
@command_body(show=_show_lineage)
def lineage(settings: Settings, ref: str | None) -> Any:
    """Where a model came from: REF is champion (default), challenger, NAME@ALIAS or VERSION."""
    from edgeloop.models.lineage import lineage as get_lineage

    return get_lineage(settings, ref).to_dict()


def _show_reproduction(out: Any) -> None:
    for k, v in out.items():
        click.echo(f"{k}: {v}")
    verdict = "metrics match" if out["metrics_match"] else "metrics DIFFER"
    click.secho(verdict, fg="green" if out["metrics_match"] else "red")


@click.command()
@click.argument("version")
@config_option
@json_option("Print as JSON.")
@command_body(show=_show_reproduction, exit_code=lambda out: 0 if out["metrics_match"] else 1)
def reproduce(settings: Settings, version: str) -> Any:
    """Rebuild a registered model from its MLflow record (its DVC data version) and compare.

    Exits 0 when the metrics match, 1 when they differ.
    """
    from edgeloop.models.lineage import reproduce as do_reproduce

    return do_reproduce(settings, version).to_dict()


def _show_shadow(report: Any) -> None:
    state = report.get("state") or ("promote" if report["promote"] else "keep")
    colour = {"promote": "green", "keep": "yellow"}.get(state, "cyan")
    click.secho(report["summary"], fg=colour)
    c = report["comparison"]

    def bound(v: Any) -> str:
        return "n/a" if v is None else f"{v:+.4f}"

    click.echo(
        f"state {state}; rows {c.get('n_rows', c['n'])} scored by both, {c['n']} labeled;"
        f" confidence sequence [{bound(c.get('cs_low'))}, {bound(c.get('cs_high'))}];"
        f" agreement {c['agreement']}, MLflow run {report['run_id']}"
    )


@click.command("shadow-evaluate")
@config_option
@json_option("Print as JSON.")
@command_body(show=_show_shadow)
def shadow_evaluate(settings: Settings) -> Any:
    """Compare challenger and champion on the rows both scored in shadow (an MLflow run)."""
    from edgeloop._internal import runtime
    from flows.shadow_evaluate import shadow_evaluate_flow

    runtime.quiet_expected_errors()
    return shadow_evaluate_flow(config=str(settings.source))


def _reason_for_force(*, force: bool, reason: str) -> None:
    if force and not reason.strip():
        raise EdgeloopError("--force needs --reason TEXT (it is recorded in the alias history)")


def _show_promotion(out: Any) -> None:
    if out.get("promoted"):
        click.secho(
            f"promoted v{out['new_champion']} to champion (previous: v{out['previous_champion'] or '-'})",
            fg="green",
        )
        reason = click.get_current_context().params["reason"]
        click.echo(f"why: {out['evidence'] if not out.get('forced') else 'forced: ' + reason}")
    else:
        click.secho(f"not promoted: {out['evidence']}", fg="yellow")


@click.command()
@config_option
@click.option("--force", is_flag=True, help="Promote without (or against) the evidence.")
@click.option("--reason", default="", help="Why (required with --force; recorded).")
@json_option("Print as JSON.")
@command_body(check=_reason_for_force, show=_show_promotion, gate=GateError)
def promote(settings: Settings, force: bool, reason: str) -> Any:
    """Make the challenger the champion when the shadow evidence says so (exit 1 if not)."""
    from edgeloop.models.promotion import promote as do_promote

    return do_promote(settings, force=force, reason=reason)


@click.command()
@config_option
@click.option("--reason", default="", help="Why (recorded in the alias history).")
@command_body()
def rollback(settings: Settings, reason: str) -> None:
    """Give the champion alias back to the previous champion, in one command."""
    from edgeloop.models.promotion import rollback as do_rollback

    out = do_rollback(settings, reason).to_dict()
    click.secho(
        f"champion is v{out['champion']} again (rolled back from v{out['rolled_back'] or '-'})",
        fg="green",
    )


COMMANDS = (retrain, lineage, reproduce, shadow_evaluate, promote, rollback)
