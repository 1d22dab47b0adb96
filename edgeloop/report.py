"""Terminal rendering (rich) of ingest outcomes and status. Presentation only."""

from __future__ import annotations

from typing import Any

STATUS_STYLE = {
    "accepted": "green",
    "partial": "yellow",
    "quarantined": "red",
    "unreadable": "red",
    "duplicate": "cyan",
}


def make_console() -> Any:
    from rich.console import Console

    # Piped output defaults to 80 columns, too narrow for the reasons column.
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def outcomes_table(results: list[dict[str, Any]], notes: dict[str, str] | None = None) -> Any:
    from rich.table import Table

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
    if state.get("models"):
        for alias, m in state["models"].items():
            console.print(f"model {alias}: {m}")
    console.print(f"MLflow: {s['mlflow_tracking_uri']}")
    console.print(f"Prefect: home {s['prefect_home']}, API {s['prefect_api_url']}")
    console.print(f"DVC remote: {s['dvc_remote']}")
