"""Terminal rendering (rich) of ingest outcomes and status. Presentation only."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from edgeloop.core.keys import METRIC_BASELINE_PREFIX

STATUS_STYLE = {
    "accepted": "green",
    "partial": "yellow",
    "quarantined": "red",
    "unreadable": "red",
    "duplicate": "cyan",
}


def make_console() -> Console:
    # Piped output defaults to 80 columns, too narrow for the reasons column.
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def outcomes_table(results: list[dict[str, Any]], notes: dict[str, str] | None = None) -> Table:
    table = Table(title="Batches", show_lines=False)
    table.add_column("batch")
    if notes:
        table.add_column("what it is")
    table.add_column("status")
    table.add_column("rows", justify="right")
    table.add_column("accepted", justify="right")
    table.add_column("quarantined", justify="right")
    table.add_column("data version")
    table.add_column("reason", overflow="fold", max_width=60)
    for r in results:
        style = STATUS_STYLE.get(r["status"], "")
        cells = [r["source"]]
        if notes:
            cells.append(notes.get(r["source"], ""))
        cells += [
            f"[{style}]{r['status']}[/]",
            str(r["rows"]),
            str(r["rows_accepted"]),
            str(r["rows_quarantined"]),
            (r.get("data_version") or "")[:12],
            r["reason"] if r["status"] != "accepted" else "",
        ]
        table.add_row(*cells)
    return table


def print_outcomes(results: list[dict[str, Any]]) -> None:
    console = make_console()
    console.print(outcomes_table(results))
    for r in results:
        if r.get("report_path"):
            console.print(f"[red]{r['source']}[/]: report at {r['report_path']}")


def print_status(state: dict[str, Any]) -> None:
    console = make_console()
    d, b, s = state["data"], state["batches"], state["stores"]
    console.print(f"[bold]{state['project']}[/]  ({state['config']})")
    console.print(
        f"data version [bold]{d['version']}[/]: {d['rows']} rows"
        f" ({d['reference_rows']} reference + {b['rows_accepted']} from batches)"
    )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(b["by_status"].items())) or "none yet"
    console.print(
        f"batches seen: {b['seen']} ({counts}); rows quarantined: {b['rows_quarantined']}"
    )
    for q in b["quarantined"]:
        console.print(f"  [red]{q['status']}[/] {q['source']} ({q['batch_id']}): {q['reason']}")
        if q.get("path"):
            console.print(f"      report: {q['path']}/report.md")
    models = state.get("models") or {}
    if not models:
        console.print("models: none registered yet (run 'edgeloop retrain')")
    for alias, m in models.items():
        # A regression model's training run has R², MAE and RMSE, no accuracy or macro-F1.
        scores = (
            f"R² {_num(m.get('r2'))}  MAE {_num(m.get('mae'))}  RMSE {_num(m.get('rmse'))}"
            if any(k in m for k in REGRESSION_KEYS)
            else f"macro-F1 {_num(m.get('macro_f1'))}  accuracy {_num(m.get('accuracy'))}"
        )
        console.print(
            f"model [bold]{alias}[/]: v{m['version']}  {scores}"
            f"  data {str(m.get('data_version'))[:12]}  {alias} for {m['age_hours']:.1f} h"
        )
    a = state.get("annotation") or {}
    if a.get("queued"):
        console.print(
            f"annotation: {a['queued']} queued, {a['open']} open (oldest {a['oldest_open_hours']} h),"
            f" median {a['median_hours_to_label']} h / p90 {a['p90_hours_to_label']} h to label,"
            f" {_num(a['within_sla_share'])} within the {a['sla_days']}-day SLA"
            + {"at_risk": " [yellow]SLA at risk[/]", "breached": " [red]SLA breached[/]"}.get(
                str(a.get("sla_state")), ""
            )
        )
    effect = state.get("loop_effect")
    if effect:
        console.print(loop_effect_line(effect))
    console.print(f"MLflow: {s['mlflow_tracking_uri']}")
    console.print(f"Prefect: home {s['prefect_home']}, API {s['prefect_api_url']}")
    console.print(f"DVC remote: {s['dvc_remote']}")


def loop_effect_line(effect: dict[str, Any]) -> str:
    """One line for the demo's loop-effect measure (``reports/loop-effect.json``)."""
    rec = effect.get("recovery")
    share = effect.get("labeled_share") or 0.0
    return (
        f"loop effect (demo, true labels): recovery {_num(rec)} of the oracle's gain on"
        f" {len(effect.get('drifted_batches') or [])} drifted batches, {share:.1%} of rows labeled"
    )


def _num(v: Any) -> str:
    return "n/a" if v is None or v != v else f"{v:.4f}"


#: A retrain's holdout groups, by metric-key prefix (``pipelines.evaluate.GROUP_PREFIXES``).
HOLDOUT_GROUPS = ("reference_", "recent_", "present_weighted_")
#: A regression model's metrics (``pipelines.evaluate``), shown where classifiers show theirs.
REGRESSION_KEYS = ("r2", "mae", "rmse")


def holdout_group_lines(m: dict[str, Any], ch: dict[str, Any]) -> list[str]:
    """One line per holdout group the metrics have: accuracy and macro-F1 (regression: R², MAE,
    RMSE), the champion's, rows."""
    lines = []
    for g in HOLDOUT_GROUPS:
        if not m.get(f"{g}rows"):
            continue
        parts = []
        regression = any(f"{g}{k}" in m for k in REGRESSION_KEYS)
        for k in REGRESSION_KEYS if regression else ("accuracy", "macro_f1"):
            champ = f" (champion {_num(ch.get(f'{g}{k}'))})" if ch else ""
            parts.append(f"{k} {_num(m.get(f'{g}{k}'))}{champ}")
        rows = f"{int(m[f'{g}rows'])} rows, effective {m.get(f'{g}effective_rows') or 0:.1f}"
        lines.append(f"{g.rstrip('_')}: {', '.join(parts)}; {rows}")
    return lines


def print_retrain(result: dict[str, Any]) -> None:
    """One retrain's outcome: decision, gates, key metrics."""
    console = make_console()
    colour = {"registered": "green", "cached": "cyan"}.get(result.get("status", ""), "red")
    console.print(f"[{colour}]{result.get('status')}[/]: {result.get('message')}")
    for c in (result.get("gates") or {}).get("checks", []):
        mark = "[green]pass[/]" if c["passed"] else "[red]FAIL[/]"
        console.print(f"  {mark} {c['detail']}")
    m, ch = result.get("metrics") or {}, result.get("champion_metrics") or {}
    base = result.get("baseline_metrics") or {}
    strategy = (result.get("gates") or {}).get("baseline", "")
    for k in ("accuracy", "balanced_accuracy", "macro_f1", *REGRESSION_KEYS):
        if k in m:
            extra = [f"champion {_num(ch.get(k))}"] if ch else []
            b = base.get(f"{METRIC_BASELINE_PREFIX}{k}")
            if b is not None:  # a cached run from before baselines has none: nothing shown
                lift = f", lift {m[k] - b:+.4f}" if m[k] is not None else ""
                extra.append(f"baseline {f'{strategy} ' if strategy else ''}{_num(b)}{lift}")
            shown = f" ({'; '.join(extra)})" if extra else ""
            console.print(f"  {k}: {_num(m[k])}{shown}")
    for line in holdout_group_lines(m, ch):
        console.print(f"  {line}")
    for note in result.get("notes") or []:
        console.print(f"  [yellow]recovered:[/] {note}")
    if result.get("run_id"):
        console.print(
            f"  MLflow run {result['run_id']}, data {result.get('data_version', '')[:12]}"
        )


def retrains_table(retrains: list[tuple[str, dict[str, Any]]]) -> Table:
    """The demo's retrains: decision, alias, holdout metrics vs the champion's on the same rows."""
    table = Table(title="Retrains (holdout metrics; champion scored on the same rows)")
    for col in ("when", "decision", "version", "data version", "macro-F1", "champion macro-F1",
                "scanner C macro-F1", "present-weighted macro-F1 (champion)", "gates"):  # fmt: skip
        table.add_column(col)
    for when, r in retrains:
        m, ch = r.get("metrics") or {}, r.get("champion_metrics") or {}
        failed = [c["name"] for c in (r.get("gates") or {}).get("checks", []) if not c["passed"]]
        table.add_row(
            when,
            r.get("status", ""),
            f"v{r['version']} ({r.get('alias') or 'cached'})" if r.get("version") else "-",
            (r.get("data_version") or "")[:12],
            _num(m.get("macro_f1")),
            _num(ch.get("macro_f1")) if ch else "-",
            _num(m.get("slice_scanner_c_macro_f1")),
            _num(m.get("present_weighted_macro_f1"))
            + (f" ({_num(ch.get('present_weighted_macro_f1'))})" if ch else ""),
            "failed: " + ", ".join(failed) if failed else ("passed" if r.get("gates") else "-"),
        )
    return table
