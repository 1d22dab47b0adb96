"""The monitoring dashboard: one self-contained HTML file (inline PNGs, no JavaScript, no CDN).

Built from the MLflow monitoring runs (``edgeloop.monitoring.monitor.monitoring_history``), so it covers
every batch ever monitored, not only the current run's. Written to
``<monitoring.reports_dir>/dashboard.html`` and, when given a run id, logged as that run's
artifact ``dashboard/dashboard.html``. Plots:

* drift per feature over time: PSI heatmap, batches x the most drifted features;
* the share of drifted features per batch against the batch threshold;
* confidence: the latest batch's top-1 probability histogram against the earlier batches';
* champion and challenger accuracy per batch: on labeled rows, and estimated without labels
  (CBPE, ``edgeloop.monitoring.estimates``) with its approximate 95 % band; the estimates'
  flags (ask for labels, a likely regression) are listed under the table;
* the annotation backlog and the labeling SLA (``edgeloop.batch.annotation.sla``).

A regression project shows MAE, RMSE and R² on labeled rows where a classifier shows accuracy
and its label-free estimates (there are none for regression: said once under the table).
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from edgeloop.batch.annotation import sla
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.layout import Layout
from edgeloop.monitoring.monitor import monitoring_history
from pipelines.performance import REGRESSION_NOTE

#: Features shown in the heatmap (those with the largest PSI over all batches).
TOP_FEATURES = 15
#: Batches listed in the table (newest first); the plots show all of them.
TABLE_BATCHES = 30


def dashboard_path(settings: Settings) -> Path:
    return Layout.of(settings).dashboard


def write_dashboard(settings: Settings, *, run_id: str = "") -> Path:
    """Rebuild the dashboard from MLflow and the annotation queue; log it to ``run_id`` if set."""
    history = monitoring_history(settings)
    backlog = sla(settings).to_dict()
    page = render(settings, history, backlog)
    path = dashboard_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # readers never see a half-written page
    if run_id:
        MlflowClient().log_artifact(run_id, str(path), artifact_path="dashboard")
    return path


# ---------------------------------------------------------------------- page
def render(settings: Settings, history: list[dict[str, Any]], backlog: dict[str, Any]) -> str:
    """The HTML page for a monitoring history and an SLA snapshot."""
    esc = html.escape
    regression = settings.data_schema.is_regression
    performance = (
        ("Champion vs challenger error on labeled rows (MAE, RMSE)", _errors(history))
        if regression
        else (
            "Champion vs challenger accuracy: labeled rows and label-free estimate (CBPE)",
            _accuracy(history),
        )
    )
    figures = [
        ("Drift per feature over time (PSI)", _psi_heatmap(history, settings)),
        ("Share of drifted features per batch", _drift_share(history, settings)),
        ("Champion confidence", _confidence(history, settings)),
        performance,
        ("Annotation backlog and SLA", _backlog(backlog)),
    ]
    m = settings.monitoring
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(settings.project)}: monitoring</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
        "padding:0.25em 0.6em;text-align:right}th{background:#f3f3f3}td.l{text-align:left}"
        "tr.drift td{background:#fde2e1}img{max-width:100%;border:1px solid #eee}"
        "figure{margin:1.5em 0}</style></head><body>",
        f"<h1>{esc(settings.project)}: monitoring</h1>",
        f"<p>Generated {esc(datetime.now(UTC).isoformat(timespec='seconds'))} from "
        f"{len(history)} monitored batch(es). A feature drifts when PSI &gt; {m.psi_threshold} "
        f"(or its test p &lt; {m.p_value} with PSI &gt; {m.psi_threshold / 2:g}); a batch drifts "
        f"when at least {m.drift_share_threshold:.0%} of its features do.</p>",
        _table(history, regression),
        f"<p>{esc(REGRESSION_NOTE)}.</p>" if regression else _flags(history),
    ]
    for title, png in figures:
        parts.append(f"<figure><figcaption><h2>{esc(title)}</h2></figcaption>")
        if png:
            parts.append(f'<img alt="{esc(title)}" src="data:image/png;base64,{png}">')
        else:
            parts.append("<p>No data yet.</p>")
        parts.append("</figure>")
    parts.append(_backlog_table(backlog))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(history: list[dict[str, Any]], regression: bool = False) -> str:
    if not history:
        return "<p>No batch has been monitored yet (run <code>edgeloop monitor</code>).</p>"
    perf = (
        "<th>champion MAE</th><th>champion RMSE</th><th>champion R²</th>"
        "<th>challenger MAE</th><th>challenger R²</th>"
        if regression
        else "<th>champion acc.</th><th>challenger acc.</th><th>champion est.</th>"
        "<th>challenger est.</th>"
    )
    head = (
        "<table><tr><th>#</th><th>batch</th><th>rows</th><th>drift share</th>"
        "<th>drifted features</th><th>prediction PSI</th><th>mean confidence</th>"
        f"{perf}<th>agreement</th></tr>"
    )
    rows = [head]
    for h in reversed(history[-TABLE_BATCHES:]):
        m, t = h["metrics"], h["tags"]
        drifted = t.get(keys.TAG_DRIFTED) == "true"
        rows.append(
            f'<tr class="{"drift" if drifted else ""}"><td>{h["seq"]}</td>'
            f'<td class="l">{html.escape(h["batch_id"])}</td><td>{_fmt(m.get("rows"), 0)}</td>'
            f"<td>{_fmt(m.get('drift_share'), 2)}</td>"
            f'<td class="l">{html.escape(t.get(keys.TAG_DRIFTED_FEATURES, ""))}</td>'
            f"<td>{_fmt(m.get('prediction_psi'))}</td><td>{_fmt(m.get('mean_confidence'))}</td>"
            + (_error_cells(m) if regression else _accuracy_cells(m))
            + f"<td>{_fmt(m.get('agreement'))}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _accuracy_cells(m: dict[str, float]) -> str:
    return (
        f"<td>{_fmt(m.get('champion_accuracy'))}</td>"
        f"<td>{_fmt(m.get('challenger_accuracy'))}</td><td>{_estimate(m, keys.CHAMPION)}</td>"
        f"<td>{_estimate(m, keys.CHALLENGER)}</td>"
    )


def _error_cells(m: dict[str, float]) -> str:
    names = ("champion_mae", "champion_rmse", "champion_r2", "challenger_mae", "challenger_r2")
    return "".join(f"<td>{_fmt(m.get(n))}</td>" for n in names)


def _estimate(m: dict[str, float], alias: str) -> str:
    """A CBPE estimate for the table: value, band, and "raw" when uncalibrated."""
    name = f"cbpe_accuracy_{alias}"
    if name not in m:
        return "–"
    low, high = m.get(name + keys.CBPE_LOW_SUFFIX), m.get(name + keys.CBPE_HIGH_SUFFIX)
    band = f" ({low:.2f}–{high:.2f})" if low is not None and high is not None else ""
    raw = " raw" if m.get(keys.METRIC_CBPE_CALIBRATED_PREFIX + alias) == 0 else ""
    return f"{m[name]:.3f}{band}{raw}"


def _flags(history: list[dict[str, Any]]) -> str:
    """The label-free estimates' flags of the latest batches (they inform, never promote)."""
    items = [
        f"<li><b>{html.escape(h['batch_id'])}</b>: {html.escape(flag)}</li>"
        for h in reversed(history[-TABLE_BATCHES:])
        for flag in h["tags"].get(keys.TAG_CBPE_FLAGS, "").split("; ")
        if flag
    ]
    if not items:
        return ""
    return (
        "<h2>What the label-free estimates suggest</h2><p>CBPE estimates accuracy from the"
        " calibrated confidence; it cannot see concept drift, so these ask for labels and"
        " never promote.</p><ul>" + "".join(items) + "</ul>"
    )


def _backlog_table(backlog: dict[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(k.replace('_', ' '))}</th><td>{_fmt(v, 2)}</td></tr>"
        for k, v in backlog.items()
    )
    return f"<h2>Annotation SLA (now)</h2><table>{cells}</table>"


# ---------------------------------------------------------------------- plots
def _figure(width: float, height: float) -> Figure:
    # Figure objects straight from matplotlib.figure: the Agg canvas, no pyplot global state,
    # nothing to close, no display needed.
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plain(text: str) -> str:
    """A name from the data as literal plot text: ``$`` would start mathtext (and can fail)."""
    return text.replace("$", r"\$")


def _labels(history: list[dict[str, Any]]) -> list[str]:
    return [f"#{h['seq']} {h['batch_id'][7:13]}" for h in history]


def _psi_heatmap(history: list[dict[str, Any]], settings: Settings) -> str:
    if not history:
        return ""
    names = sorted({k for h in history for k in h["metrics"] if k.startswith("psi.")})
    if not names:
        return ""
    grid = np.array([[h["metrics"].get(k, np.nan) for k in names] for h in history], dtype=float)
    # The most drifted features over the whole history, in schema-independent PSI order.
    order = np.argsort(-np.nan_to_num(np.nanmax(grid, axis=0), nan=-1.0))[:TOP_FEATURES]
    grid, names = grid[:, order], [names[i][4:] for i in order]
    threshold = settings.monitoring.psi_threshold
    fig = _figure(max(6.0, 0.55 * len(names) + 3), max(2.5, 0.32 * len(history) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0.0, vmax=max(2 * threshold, 1e-9))
    ax.set_xticks(range(len(names)), [_plain(n) for n in names], rotation=45, ha="right")
    ax.set_yticks(range(len(history)), _labels(history))
    if grid.size <= 400:
        for (i, j), v in np.ndenumerate(grid):
            if v == v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v > 1.2 * threshold else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="PSI")
    ax.set_xlabel(f"feature (most drifted first; colour saturates at PSI {2 * threshold:g})")
    return _png(fig)


def _drift_share(history: list[dict[str, Any]], settings: Settings) -> str:
    if not history:
        return ""
    shares = [h["metrics"].get("drift_share", 0.0) for h in history]
    drifted = [h["tags"].get(keys.TAG_DRIFTED) == "true" for h in history]
    fig = _figure(max(6.0, 0.4 * len(history) + 2), 3.0)
    ax = fig.add_subplot()
    ax.bar(range(len(history)), shares, color=["#d62728" if d else "#1f77b4" for d in drifted])
    ax.axhline(settings.monitoring.drift_share_threshold, color="k", ls="--", lw=1,
               label="batch drift threshold")  # fmt: skip
    ax.set_xticks(range(len(history)), _labels(history), rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of features drifted")
    ax.legend(loc="upper left")
    return _png(fig)


def _histogram(h: dict[str, Any]) -> list[float] | None:
    raw = h["tags"].get(keys.TAG_CONFIDENCE_HISTOGRAM)
    try:
        counts = [float(c) for c in json.loads(raw)] if raw else None
    except (ValueError, TypeError):
        return None
    return counts if counts and sum(counts) > 0 else None


def _confidence(history: list[dict[str, Any]], settings: Settings) -> str:
    read = [(h, _histogram(h)) for h in history]
    hists = [(h, c) for h, c in read if c is not None]
    if not hists:
        return ""
    latest, counts = hists[-1]
    bins = len(counts)
    edges = np.linspace(0.0, 1.0, bins + 1)
    fig = _figure(7.0, 3.4)
    ax = fig.add_subplot()
    share = np.asarray(counts) / sum(counts)
    ax.stairs(share, edges, fill=True, alpha=0.5, label=f"latest: #{latest['seq']}")
    earlier = [np.asarray(c) for _, c in hists[:-1] if len(c) == bins]
    if earlier:
        pooled = np.sum(earlier, axis=0)
        ax.stairs(pooled / pooled.sum(), edges, lw=2, color="k",
                  label=f"earlier batches ({len(earlier)})")  # fmt: skip
    ax.axvline(settings.edge_cases.min_confidence, color="#d62728", ls="--", lw=1,
               label=f"min_confidence {settings.edge_cases.min_confidence:g}")  # fmt: skip
    ax.set_xlabel(
        "champion confidence (1 - members' spread / target std)"
        if settings.data_schema.is_regression
        else "champion top-1 probability"
    )
    ax.set_ylabel("share of rows")
    ax.legend(loc="upper left")
    return _png(fig)


def _accuracy(history: list[dict[str, Any]]) -> str:
    cbpe = keys.METRIC_CBPE_ACCURACY_CHAMPION
    if not any("champion_accuracy" in h["metrics"] or cbpe in h["metrics"] for h in history):
        return ""
    x = np.arange(len(history))
    fig = _figure(max(6.0, 0.4 * len(history) + 2), 3.2)
    ax = fig.add_subplot()

    def series(name: str) -> np.ndarray:
        return np.array([h["metrics"].get(name, np.nan) for h in history], dtype=float)

    for alias, color in ((keys.CHAMPION, "#1f77b4"), (keys.CHALLENGER, "#ff7f0e")):
        y = series(f"{alias}_accuracy")
        if np.isfinite(y).any():
            ax.plot(x, y, "o-" if alias == keys.CHAMPION else "s-", color=color,
                    label=f"{alias} (labeled rows)")  # fmt: skip
        est = series(f"cbpe_accuracy_{alias}")
        if np.isfinite(est).any():
            ax.plot(x, est, ":", marker=".", color=color, label=f"{alias} (estimated, CBPE)")
            low = series(f"cbpe_accuracy_{alias}{keys.CBPE_LOW_SUFFIX}")
            high = series(f"cbpe_accuracy_{alias}{keys.CBPE_HIGH_SUFFIX}")
            ax.fill_between(x, low, high, color=color, alpha=0.12, lw=0)
    labeled = [int(h["metrics"].get("labeled_rows", 0)) for h in history]
    ax.set_xticks(x, [f"{lbl}\n({n} labeled)" for lbl, n in zip(_labels(history), labeled, strict=True)],
                  rotation=45, ha="right", fontsize=8)  # fmt: skip
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower left", fontsize=7)
    return _png(fig)


def _errors(history: list[dict[str, Any]]) -> str:
    """Regression: MAE and RMSE of champion and challenger per batch, on its labeled rows."""
    if not any("champion_mae" in h["metrics"] for h in history):
        return ""
    x = np.arange(len(history))
    fig = _figure(max(6.0, 0.4 * len(history) + 2), 3.2)
    ax = fig.add_subplot()
    for alias, color in ((keys.CHAMPION, "#1f77b4"), (keys.CHALLENGER, "#ff7f0e")):
        for metric, style in (("mae", "o-"), ("rmse", "s:")):
            y = np.array([h["metrics"].get(f"{alias}_{metric}", np.nan) for h in history])
            if np.isfinite(y).any():
                ax.plot(x, y, style, color=color, label=f"{alias} {metric.upper()}")
    labeled = [int(h["metrics"].get("labeled_rows", 0)) for h in history]
    ax.set_xticks(x, [f"{lbl}\n({n} labeled)" for lbl, n in zip(_labels(history), labeled, strict=True)],
                  rotation=45, ha="right", fontsize=8)  # fmt: skip
    ax.set_ylabel("error (target units)")
    ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def _backlog(backlog: dict[str, Any]) -> str:
    if not backlog.get("queued"):
        return ""
    fig = _figure(7.0, 2.6)
    ax = fig.add_subplot()
    names = ["queued", "labeled", "open"]
    values = [backlog.get(n) or 0 for n in names]
    ax.barh(names, values, color=["#7f7f7f", "#2ca02c", "#ff7f0e"])
    for i, v in enumerate(values):
        ax.text(v, i, f" {v}", va="center")
    share = backlog.get("within_sla_share")
    flag = {"at_risk": "SLA AT RISK — ", "breached": "SLA BREACHED — "}
    ax.set_title(
        f"{flag.get(str(backlog.get('sla_state')), '')}within the {backlog.get('sla_days')}-day SLA: "
        f"{'–' if share is None else f'{share:.0%}'}; oldest open: "
        f"{_fmt(backlog.get('oldest_open_hours'), 1)} h; median to label: "
        f"{_fmt(backlog.get('median_hours_to_label'), 1)} h",
        fontsize=9,
    )
    ax.set_xlabel("edge cases")
    return _png(fig)
