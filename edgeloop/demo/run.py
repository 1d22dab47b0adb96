"""``edgeloop demo``: the whole loop on the bundled digits data, on embedded defaults.

Steps: ``init`` if needed; write the demo stream (seeded, see ``edgeloop.demo.data``); train
the first champion; then for each batch, as production would: ingest (validate, version),
score with the champion (and the challenger in silent mode), queue the edge cases, let the
SIMULATED ANNOTATOR (the demo's one stand-in) label them, import the labels (which may start a
retrain on label volume), and evaluate any challenger in shadow, promoting it only on evidence.
Finally: a summary, and the commands that open the Prefect and MLflow UIs on these runs.

Imports are made step by step inside the functions on purpose: the demo prints its first steps
before the stack's ~10 s of imports (Prefect, MLflow, GX), so a new user sees it working.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

#: What the demo stream must show; a different outcome means something is broken.
EXPECTED = {"batch_05": "partial", "batch_06_broken_export": "quarantined"}
#: The simulated annotator (demo stand-in): hours from surfacing to answer, share of wrong answers.
SIM_DELAY_HOURS = 30.0
SIM_ERROR_RATE = 0.03


def run_demo(config: Path) -> int:
    """Run the demo; return the process exit code (0 when every batch behaved as designed)."""
    from edgeloop.reports.terminal import make_console

    console = make_console()
    started = time.monotonic()

    def step(text: str) -> None:
        console.print(f"[bold cyan]▸[/] {text}  [dim]({time.monotonic() - started:.0f}s)[/]")

    step("init: config, expectation suites, stores, DVC, first dataset version")
    from edgeloop.stack.init import init_project

    report = init_project(config.parent, config=config)
    for s in report.steps:
        console.print(f"    {s}", style="dim")
    settings = report.settings

    from edgeloop.demo.data import demo_stream, write_stream

    stream_dir = settings.path("incoming") / "demo"
    paths = write_stream(stream_dir, seed=settings.seeds.demo)
    notes = {
        f"{i + 1:02d}-{b.name}.csv": b.note for i, b in enumerate(demo_stream(settings.seeds.demo))
    }
    step(f"demo stream: {len(paths)} batch files in {stream_dir}")

    step("loading Prefect, MLflow and GX (the first flow run starts a local Prefect server)")
    from edgeloop._internal.runtime import quiet_expected_errors
    from edgeloop.core.errors import ValidationGateError
    from flows.ingest import ingest
    from flows.score import score

    quiet_expected_errors()
    from edgeloop.core.keys import CHAMPION
    from edgeloop.tracking.registry import Registry

    retrains: list[tuple[str, dict[str, Any]]] = []
    if CHAMPION in Registry(settings).aliases():
        step("a champion exists already (a rerun of the demo): no initial training")
    else:
        first = _retrain(settings, "initial model on the reference set")
        retrains.append(("initial", first))
        step(f"retrain (initial): {first['status']}: {first['message']}")

    results: list[dict[str, Any]] = []
    promotions: list[dict[str, Any]] = []
    loop_rows: list[dict[str, Any]] = []
    for i, path in enumerate(paths, 1):
        try:
            out = cast(list[dict[str, Any]], ingest([str(path)], config=str(settings.source)))
        except ValidationGateError as exc:
            out = exc.result
        r = out[0]
        results.append(r)
        colour = {"accepted": "green", "partial": "yellow", "duplicate": "cyan"}.get(
            r["status"], "red"
        )
        step(
            f"[{i}/{len(paths)}] {path.name}: [{colour}]{r['status']}[/]"
            f" ({r['rows_accepted']}/{r['rows']} rows accepted)"
        )
        if r["status"] not in ("accepted", "partial"):
            continue
        # Score with the champion (and the challenger in silent mode); queue the edge cases.
        scored = score(config=str(settings.source))
        shadow = (
            " + challenger in shadow" if any(w["alias"] == "challenger" for w in scored) else ""
        )
        step(f"    scored by champion{shadow}; {_monitor_line(settings, r['batch_id'])}")
        labels = _simulated_annotation(settings, stream_dir, i)
        step(f"    {labels['line']}")
        if labels.get("retrain"):
            rt = labels["retrain"]
            retrains.append((f"labels after {path.stem}", rt))
            step(f"    label-volume retrain: {rt.get('status')}: {rt.get('message')}")
        # The label import evaluated the challenger (and promoted it on the rule's word) before
        # any retrain it started; without labels, the evaluation runs here.
        promo = (
            _shadow_line(labels["shadow"])
            if labels.get("shadow")
            else _shadow_and_promote(settings)
        )
        if promo.get("evaluated"):
            promotions.append({**promo, "after": path.stem})
            step(f"    shadow: {promo['line']}")
        loop_rows.append(_batch_accuracy(settings, r, stream_dir))

    from edgeloop.reports.status import collect_status
    from edgeloop.reports.terminal import outcomes_table, retrains_table

    console.print(outcomes_table(results, notes))
    console.print(retrains_table(retrains))
    effect = _loop_effect(settings, loop_rows)
    console.print(_loop_table(effect))
    if effect is not None:
        from edgeloop.reports.terminal import loop_effect_line

        console.print(loop_effect_line(effect.to_dict()))
    for p in promotions:
        console.print(f"[bold]Shadow decision after {p['after']}:[/] {p['line']}")
        if p.get("evidence_run_id"):
            console.print(
                f"    evidence: MLflow run {p['evidence_run_id']} in {settings.project}-shadow"
            )
    state = collect_status(settings)
    a = state["annotation"]
    console.print(
        f"annotation: {a['queued']} edge cases queued, {a['labeled']} labeled by the simulated annotator,"
        f" median {a['median_hours_to_label']} h to label, {a['within_sla_share']} within the"
        f" {a['sla_days']}-day SLA (its delay is set to {SIM_DELAY_HOURS:.0f} h)"
    )
    from edgeloop.demo.label_check import flagging_quality

    console.print(flagging_quality(settings, _truth(settings, stream_dir)).line())
    console.print(
        f"dataset version [bold]{state['data']['version']}[/] with {state['data']['rows']} rows"
        f" ({state['data']['reference_rows']} reference); quarantine under"
        f" {settings.path('data') / 'quarantine'}"
    )
    from flows.weekly_review import weekly_review

    written = weekly_review(config=str(settings.source))
    from edgeloop.core.layout import Layout
    from edgeloop.monitoring.dashboard import dashboard_path

    console.print(f"monitoring dashboard: {dashboard_path(settings)}")
    if effect is not None:
        console.print(f"loop effect (frozen vs loop vs oracle): {Layout.of(settings).loop_effect}")
    console.print(f"weekly review: {written['markdown']} and {Path(written['html']).name}")
    problems = _check(results)
    _print_ui_commands(console, settings)
    if problems:
        for problem in problems:
            console.print(f"[red]unexpected:[/] {problem}")
        return 1
    console.print(f"[green]demo finished in {time.monotonic() - started:.0f}s[/]")
    return 0


def _monitor_line(settings: Any, batch_id: str) -> str:
    """Drift and confidence of the batch just scored (one MLflow run; the dashboard updates).

    The demo leaves the drift trigger off: on this stream the drifted rows have no labels yet
    when drift shows, so a retrain could not learn from them; the label-volume trigger retrains
    once the annotator has answered. Under ``edgeloop up`` the trigger is on (config).
    """
    from flows.monitor import monitor

    out = monitor(batch_ids=[batch_id], retrain_on_drift=False, config=str(settings.source))
    if not out["monitored"]:
        return "not monitored"
    b = out["monitored"][0]
    verdict = "[red]DRIFT[/]" if b["drifted"] else "no drift"
    conf = "" if b["mean_confidence"] is None else f", mean confidence {b['mean_confidence']:.2f}"
    return f"monitor: {verdict} ({b['n_drifted']}/{b['n_features']} features){conf}"


def _retrain(settings: Any, reason: str) -> dict[str, Any]:
    """Run the retrain flow; a rejected candidate is an outcome to show, not a demo failure."""
    from edgeloop.core.errors import GateError
    from flows.retrain import retrain

    try:
        return cast(dict[str, Any], retrain(reason=reason, config=str(settings.source)))
    except GateError as exc:
        return cast(dict[str, Any], exc.result)


def _shadow_and_promote(settings: Any) -> dict[str, Any]:
    """Evaluate the challenger in shadow and promote it if, and only if, the evidence says so."""
    from edgeloop.core.errors import GateError
    from edgeloop.core.keys import CHALLENGER
    from edgeloop.models.promotion import promote
    from edgeloop.tracking.registry import Registry
    from flows.shadow_evaluate import shadow_evaluate_flow

    if CHALLENGER not in Registry(settings).aliases():
        return {"evaluated": False}
    report = shadow_evaluate_flow(config=str(settings.source))
    try:
        out = promote(settings, reason="demo: shadow evidence")
        line = f"[green]promoted v{out.new_champion}[/] over v{out.previous_champion}: {report['summary']}"
        return {"evaluated": True, "line": line, **out.to_dict()}
    except GateError as exc:
        line = (
            f"[yellow]kept champion v{report['champion']}[/] (challenger v{report['challenger']}):"
            f" {report['summary']}"
        )
        return {"evaluated": True, "line": line, **exc.result.to_dict()}


def _shadow_line(report: dict[str, Any]) -> dict[str, Any]:
    """The shadow evaluation (and auto-promotion) the label import ran, as the demo shows it."""
    if report.get("promoted"):
        line = f"[green]promoted v{report['challenger']}[/] over v{report['champion']}: {report['summary']}"
    else:
        line = (
            f"[yellow]kept champion v{report['champion']}[/] (challenger v{report['challenger']}):"
            f" {report['summary']}"
        )
    return {"evaluated": True, "line": line, "evidence_run_id": report.get("run_id", "")}


def _simulated_annotation(settings: Any, stream_dir: Path, step_no: int) -> dict[str, Any]:
    """The SIMULATED ANNOTATOR (demo stand-in) answers the open tasks; the labels are imported."""
    from edgeloop.batch.annotation import label_studio_tasks, open_tasks
    from edgeloop.core.errors import GateError
    from edgeloop.demo.simulated_annotator import answer_tasks, write_answers
    from flows.annotate import annotate_import

    # Review tasks of suspect labels too: the same annotator looks at them again.
    tasks = label_studio_tasks(open_tasks(settings, review=True), settings)
    if not tasks:
        return {"line": "no edge cases to label"}
    answers = answer_tasks(
        tasks,
        _truth(settings, stream_dir),
        classes=list(settings.data_schema.classes),
        delay_hours=SIM_DELAY_HOURS,
        error_rate=SIM_ERROR_RATE,
        seed=settings.seeds.demo + step_no,
    )
    out_dir = settings.path("incoming") / "demo" / "annotations"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_answers(out_dir / f"simulated-annotator-{step_no:02d}.json", answers)
    try:
        res = cast(dict[str, Any], annotate_import(str(path), config=str(settings.source)))
    except GateError as exc:
        res = exc.result
    line = f"{len(tasks)} edge cases queued, {res['accepted']} labeled by the simulated annotator"
    if res["rejected"]:
        line += f" ({res['rejected']} rejected)"
    return {"line": line, "retrain": res.get("retrain"), "shadow": res.get("shadow")}


def _truth(settings: Any, stream_dir: Path) -> dict[str, Any]:
    """row_id -> true label from the held-back truth files (for the simulated annotator only)."""
    import pandas as pd

    from edgeloop.data.store import DataStore

    out: dict[str, Any] = {}
    for e in DataStore(settings).ledger():
        name = Path(e.source).stem.split("-", 1)[-1]
        f = stream_dir / "truth" / f"{name}.csv"
        if e.rows_accepted and f.exists():
            t = pd.read_csv(f)
            out.update(
                {
                    f"{e.batch_id}-{int(r):06d}": int(v)
                    for r, v in zip(t["row"], t["digit"], strict=True)
                }
            )
    return out


def _batch_accuracy(settings: Any, outcome: dict[str, Any], stream_dir: Path) -> dict[str, Any]:
    """Accuracy on the whole batch (true labels): the frozen first model, the loop's champion
    and the oracle (``edgeloop.demo.effect``)."""
    import pandas as pd

    from edgeloop.core.keys import CHAMPION
    from edgeloop.core.layout import Layout
    from edgeloop.data.store import DataStore
    from edgeloop.demo.effect import oracle_accuracy
    from edgeloop.tracking.registry import Registry
    from pipelines.train import features

    truth = _truth(settings, stream_dir)
    batch = outcome["batch_id"]
    data = DataStore(settings).load_dataset()
    rows = data[data["batch_id"] == batch]
    y = rows["row_id"].map(truth).to_numpy()
    frozen = Registry(settings).load("1").predict(features(rows, settings.data_schema))
    # The champion that scored this batch when it arrived (its first champion score file).
    champ_files = sorted(
        (f.path for f in Layout.of(settings).score_files(batch=batch, alias=CHAMPION)),
        key=lambda p: p.stat().st_mtime,
    )
    if champ_files:
        scored = pd.read_parquet(champ_files[0]).set_index("row_id")
        loop = scored.loc[rows["row_id"], "predicted"].astype(int).to_numpy()
        version = Layout.parse_score_file(champ_files[0]).version  # type: ignore[union-attr]
    else:
        loop, version = frozen, "1"
    return {
        "batch": outcome["source"],
        "batch_id": batch,
        "rows": len(rows),
        "frozen": float((frozen == y).mean()),
        "loop": float((loop == y).mean()),
        "oracle": oracle_accuracy(settings, data, truth, batch),
        "loop_version": version,
    }


def _loop_effect(settings: Any, rows: list[dict[str, Any]]) -> Any:
    """The measure over every batch of this run, written to ``reports/loop-effect.json``
    (None on a rerun that added no batch: the last measure stays)."""
    if not rows:
        return None
    from edgeloop.batch.annotation import read_labels, read_queue
    from edgeloop.demo.effect import BatchEffect, loop_effect, write_loop_effect

    queue = read_queue(settings)
    labeled = set(read_labels(settings)["row_id"].astype(str))
    spent = queue[queue["row_id"].astype(str).isin(labeled)]["batch_id"].value_counts()
    effect = loop_effect(
        [
            BatchEffect(
                batch=r["batch"], rows=r["rows"], frozen=r["frozen"], loop=r["loop"],
                oracle=r["oracle"], labels=int(spent.get(r["batch_id"], 0)),
                loop_version=str(r["loop_version"]),
            )
            for r in rows
        ]
    )  # fmt: skip
    write_loop_effect(settings, effect)
    return effect


def _loop_table(effect: Any) -> Any:
    from rich.table import Table

    t = Table(
        title="Accuracy on each batch (all rows, true labels): frozen first model, the loop's"
        " champion, and an oracle trained on every true label before the batch"
    )
    for c in ("batch", "rows", "frozen v1", "loop champion", "oracle", "labels", "version", "loop - frozen"):  # fmt: skip
        t.add_column(c)
    if effect is None:
        return t
    for r in effect.batches:
        d = r.loop - r.frozen
        style = "green" if d > 0 else "red" if d < 0 else "white"
        t.add_row(
            r.batch, str(r.rows), f"{r.frozen:.3f}", f"{r.loop:.3f}", f"{r.oracle:.3f}",
            str(r.labels), f"v{r.loop_version}", f"[{style}]{d:+.3f}[/]",
        )  # fmt: skip
    n = sum(r.rows for r in effect.batches)
    fz = sum(r.frozen * r.rows for r in effect.batches) / n
    lp = sum(r.loop * r.rows for r in effect.batches) / n
    oc = sum(r.oracle * r.rows for r in effect.batches) / n
    labels = sum(r.labels for r in effect.batches)
    t.add_row("all batches", str(n), f"{fz:.3f}", f"{lp:.3f}", f"{oc:.3f}", str(labels), "", f"{lp - fz:+.3f}")  # fmt: skip
    rec = "n/a (no drifted batch)" if effect.recovery is None else f"{effect.recovery:.2f}"
    t.caption = (
        f"recovery on the drifted batches ({len(effect.drifted_batches)}: oracle - frozen"
        f" >= {effect.drift_gap}) = (loop - frozen) / (oracle - frozen) = {rec};"
        f" labeled share {effect.labeled_share:.1%}"
    )
    return t


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
    from edgeloop.tracking.store import tracking_uri

    root = settings.root
    console.print("\n[bold]See these runs[/] (from the project root):")
    console.print(
        "  Both UIs:   .venv/bin/edgeloop up   → Prefect http://127.0.0.1:4200/runs,"
        " MLflow http://127.0.0.1:5000 (Ctrl-C stops them)"
    )
    console.print(
        f"  MLflow only: .venv/bin/mlflow ui --backend-store-uri {tracking_uri(settings)}"
        " --host 127.0.0.1 --port 5000"
    )
    console.print(f"  State:      .venv/bin/edgeloop status   (in {root})")
