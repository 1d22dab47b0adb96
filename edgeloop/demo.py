"""``edgeloop demo``: the whole loop on the bundled digits data, on embedded defaults.

Steps: ``init`` if needed, write the demo stream (seeded, see ``pipelines.demo_data``), ingest
it batch by batch as production would (one Prefect flow run per batch), then print a summary
and the commands that open the Prefect and MLflow UIs on these runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

#: What the demo stream must show; a different outcome means something is broken.
EXPECTED = {"batch_05": "partial", "batch_06_broken_export": "quarantined"}
#: The challenger is trained once drift has begun, then runs in shadow over the later batches.
RETRAIN_AFTER = "batch_04"


def run_demo(config: Path) -> int:
    """Run the demo; return the process exit code (0 when every batch behaved as designed)."""
    from edgeloop.report import make_console

    console = make_console()
    started = time.monotonic()

    def step(text: str) -> None:
        console.print(f"[bold cyan]▸[/] {text}  [dim]({time.monotonic() - started:.0f}s)[/]")

    step("init: config, expectation suite, stores, DVC, first dataset version")
    from edgeloop.project import init_project

    report = init_project(config.parent, config=config)
    for s in report.steps:
        console.print(f"    {s}", style="dim")
    settings = report.settings

    from pipelines.demo_data import demo_stream, write_stream

    stream_dir = settings.path("incoming") / "demo"
    paths = write_stream(stream_dir, seed=settings.seeds.demo)
    notes = {
        f"{i + 1:02d}-{b.name}.csv": b.note for i, b in enumerate(demo_stream(settings.seeds.demo))
    }
    step(f"demo stream: {len(paths)} batch files in {stream_dir}")

    step("loading Prefect, MLflow and GX (the first flow run starts a local Prefect server)")
    from edgeloop.errors import ValidationGateError
    from edgeloop.runtime import quiet_expected_errors
    from flows.ingest import ingest

    quiet_expected_errors()
    retrains: list[tuple[str, dict[str, Any]]] = []
    first = _retrain(settings, "initial model on the reference set")
    retrains.append(("initial", first))
    step(f"retrain (initial): {first['status']}: {first['message']}")

    from flows.score import score

    results: list[dict[str, Any]] = []
    promotions: list[dict[str, Any]] = []
    for i, path in enumerate(paths, 1):
        try:
            out = ingest([str(path)], config=str(settings.source))
        except ValidationGateError as exc:
            out = exc.result
        r = out[0]
        results.append(r)
        # Score what was accepted: the champion, and the challenger in silent mode.
        scored = score(config=str(settings.source))
        shadow = (
            " + challenger in shadow" if any(w["alias"] == "challenger" for w in scored) else ""
        )
        colour = {"accepted": "green", "partial": "yellow", "duplicate": "cyan"}.get(
            r["status"], "red"
        )
        step(
            f"[{i}/{len(paths)}] {path.name}: [{colour}]{r['status']}[/]"
            f" ({r['rows_accepted']}/{r['rows']} rows accepted), scored by champion{shadow}"
        )
        if path.stem.endswith(RETRAIN_AFTER):
            second = _retrain(
                settings, f"drift began: retrain after {RETRAIN_AFTER} (audit labels)"
            )
            retrains.append((f"after {RETRAIN_AFTER}", second))
            step(f"retrain: {second['status']}: {second['message']}")

    step("shadow evaluation: challenger vs champion on labeled rows both scored since deployment")
    promotions.append(_shadow_and_promote(settings))
    step(promotions[-1]["line"])
    third = _retrain(settings, "end of stream: retrain on everything labeled so far")
    retrains.append(("end of stream", third))
    step(f"retrain: {third['status']}: {third['message']}")

    from edgeloop.report import outcomes_table, retrains_table
    from edgeloop.status import collect_status

    console.print(outcomes_table(results, notes))
    console.print(retrains_table(retrains))
    for p in promotions:
        console.print(f"[bold]Promotion decision:[/] {p['line']}")
        if p.get("evidence_run_id"):
            console.print(
                f"    evidence: MLflow run {p['evidence_run_id']} in {settings.project}-shadow"
            )
    state = collect_status(settings)
    console.print(
        f"dataset version [bold]{state['data']['version']}[/] with {state['data']['rows']} rows"
        f" ({state['data']['reference_rows']} reference); quarantine under"
        f" {settings.path('data') / 'quarantine'}"
    )
    problems = _check(results)
    _print_ui_commands(console, settings)
    if problems:
        for p in problems:
            console.print(f"[red]unexpected:[/] {p}")
        return 1
    console.print(f"[green]demo finished in {time.monotonic() - started:.0f}s[/]")
    return 0


def _shadow_and_promote(settings: Any) -> dict[str, Any]:
    """Evaluate the challenger in shadow and promote it if, and only if, the evidence says so."""
    from edgeloop.errors import EdgeloopError, GateError
    from edgeloop.shadow import promote
    from flows.shadow_evaluate import shadow_evaluate_flow

    try:
        report = shadow_evaluate_flow(config=str(settings.source))
    except EdgeloopError as exc:
        return {"line": f"no shadow evaluation: {exc}"}
    try:
        out = promote(settings, reason="demo: shadow evidence")
        line = f"[green]promoted v{out['new_champion']}[/] over v{out['previous_champion']}: {report['summary']}"
        return {"line": line, **out}
    except GateError as exc:
        return {
            "line": f"[yellow]kept champion v{report['champion']}[/]: {report['summary']}",
            **exc.result,
        }


def _retrain(settings: Any, reason: str) -> dict[str, Any]:
    """Run the retrain flow; a rejected candidate is an outcome to show, not a demo failure."""
    from edgeloop.errors import GateError
    from flows.retrain import retrain

    try:
        return retrain(reason=reason, config=str(settings.source))
    except GateError as exc:
        return exc.result


def _check(results: list[dict[str, Any]]) -> list[str]:
    """The demo's own assertions: the designed failures happened and nothing else failed."""
    problems = []
    for r in results:
        name = Path(r["source"]).stem.split("-", 1)[-1]
        want = EXPECTED.get(name, "accepted")
        if r["status"] == "duplicate":
            continue  # a rerun of the demo: the ledger already has this batch
        if r["status"] != want:
            problems.append(f"{r['source']} was {r['status']}, expected {want}: {r['reason']}")
    return problems


def _print_ui_commands(console: Any, settings: Any) -> None:
    from edgeloop.tracking import tracking_uri

    root = settings.root
    console.print("\n[bold]See these runs[/] (from the project root):")
    console.print(
        f"  Prefect UI: PREFECT_HOME={settings.path('prefect_home')} .venv/bin/prefect server start"
        " --host 127.0.0.1   → http://127.0.0.1:4200/runs"
    )
    console.print(
        f"  MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {tracking_uri(settings)}"
        " --host 127.0.0.1 --port 5000   → http://127.0.0.1:5000"
    )
    console.print(f"  State:      .venv/bin/edgeloop status   (in {root})")
