"""The weekly review rendered: markdown sections, one self-contained HTML page with its charts.

Presentation only: it reads a gathered ``Review`` (``edgeloop.reports.result``) and writes nothing.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import matplotlib.dates as mdates
from markdown_it import MarkdownIt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edgeloop.core.keys import CHALLENGER, CHAMPION
from edgeloop.data.exports import markdown_cell, markdown_text
from edgeloop.reports.timestamps import parse_time
from pipelines.performance import REGRESSION_NOTE

if TYPE_CHECKING:
    from edgeloop.reports.result import Review

#: Each empty section says this, so a quiet week reads as quiet, not as broken.
NOTHING = "Nothing this week"

#: A table column: its header and the item's attribute shown as is, or how the item becomes its cell.
Column = tuple[str, str | Callable[[Any], object]]

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:.5em 0;font-size:.85em}"
    "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}code{font-size:.9em;word-break:break-all}"
    "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.8em;color:#666}"
)


# ---------------------------------------------------------------------- markdown
def sections(review: Review) -> list[tuple[str, str]]:
    """(key, markdown) per section, in report order; HTML adds the charts after some."""
    return [
        ("header", _header(review)),
        ("performance", _performance(review)),
        ("drift", _drift(review)),
        ("quarantine", _quarantine(review)),
        ("annotation", _annotation(review)),
        ("shadow", _shadow(review)),
        ("aliases", _aliases(review)),
        *([("loop_effect", _loop_effect(review))] if review.loop_effect else []),
    ]


def to_markdown(review: Review) -> str:
    return "\n\n".join(md for _, md in sections(review)).rstrip() + "\n"


def _header(r: Review) -> str:
    c = r.counts()
    lines = [
        f"# Weekly review: {markdown_text(r.project)}, {r.start[:10]} to {r.end[:10]}",
        "",
        f"Window: {r.start} to {r.end} ({r.days} days). "
        f"Generated {r.generated_at}. MLflow: {_code(r.tracking_uri)}.",
    ]
    if r.mlflow_hint:
        lines += ["", f"MLflow runs below are locators: open them with {_code(r.mlflow_hint)}."]
    lines += [
        "",
        "## Summary",
        "",
        f"- Retrains: {c['retrains']} ({c['retrains_registered']} registered, "
        f"{c['retrains_rejected']} rejected)",
        f"- Champion: {_model_line(r.models.get(CHAMPION))}; "
        f"challenger: {_model_line(r.models.get(CHALLENGER))}",
        f"- Drift: {c['batches_monitored']} batch(es) monitored, {c['batches_drifted']} drifted",
        f"- Quarantined batches: {c['quarantined_batches']} "
        f"({c['rows_quarantined']} rows quarantined)",
        f"- Annotation: {c['annotation_open']} open, {c['annotation_surfaced']} surfaced "
        f"and {c['labels_imported']} labeled this week, within the "
        f"{_num(r.annotation.get('sla_days'), 1)}-day SLA: "
        f"{_pct(r.annotation.get('within_sla_share'))}",
        f"- Shadow evaluations: {c['shadow_evaluations']}"
        + (f" (latest: {markdown_text(r.shadow[0].decision)})" if r.shadow else ""),
        f"- Promotions: {c['promotions']}, rollbacks: {c['rollbacks']} "
        f"({c['alias_moves']} alias move(s) in all)",
    ]
    return "\n".join(lines)


_RUN: Column = ("MLflow run", lambda x: _run_link(x.mlflow_url, x.run_id))
_FLOW: Column = ("Prefect flow run", lambda x: _flow_link(x.flow_run_url))

_MODEL_SCORES: list[Column] = [
    ("accuracy", lambda am: _num(am[1].get("accuracy"))),
    ("macro-F1", lambda am: _num(am[1].get("macro_f1"))),
]
#: Regression: what stands where a classifier's accuracy and macro-F1 are.
_MODEL_ERRORS: list[Column] = [
    ("R²", lambda am: _num(am[1].get("r2"))),
    ("MAE", lambda am: _num(am[1].get("mae"))),
    ("RMSE", lambda am: _num(am[1].get("rmse"))),
]
_MODEL_COLUMNS: list[Column] = [
    ("alias", lambda am: markdown_text(am[0])),
    ("version", lambda am: f"v{markdown_text(am[1]['version'])}"),
    *_MODEL_SCORES,
    ("data version", lambda am: markdown_text((am[1].get("data_version") or "")[:12])),
    ("since", lambda am: markdown_text(am[1].get("alias_since") or "")),
    ("MLflow run", lambda am: _run_link(am[1].get("mlflow_url", ""), am[1].get("run_id", ""))),
]
_RETRAIN_COLUMNS: list[Column] = [
    ("when", "at"),
    ("reason", "reason"),
    ("decision", lambda r: markdown_text(r.decision) or "(no decision)"),
    ("version", lambda r: f"v{markdown_text(r.version)}" if r.version else "–"),
    ("accuracy", lambda r: _num(r.accuracy)),
    ("macro-F1", lambda r: _num(r.macro_f1)),
    ("champion accuracy", lambda r: _num(r.champion_accuracy)),
    ("champion macro-F1", lambda r: _num(r.champion_macro_f1)),
    ("failed gates", lambda r: markdown_text(", ".join(r.failed_gates)) or "–"),
    _RUN,
    _FLOW,
]


_RETRAIN_ERRORS: list[Column] = [
    ("R²", lambda r: _num(r.r2)),
    ("MAE", lambda r: _num(r.mae)),
    ("RMSE", lambda r: _num(r.rmse)),
    ("champion R²", lambda r: _num(r.champion_r2)),
    ("champion MAE", lambda r: _num(r.champion_mae)),
]


def _swap(columns: list[Column], regression: bool, old: list[str], new: list[Column]) -> list[Column]:  # fmt: skip
    """The columns, those headed ``old`` replaced by ``new`` (in their place) for regression."""
    if not regression:
        return columns
    at = next(i for i, (h, _) in enumerate(columns) if h in old)
    kept = [c for c in columns if c[0] not in old]
    return [*kept[:at], *new, *kept[at:]]


def _performance(r: Review) -> str:
    lines = ["## Model performance", "", "### Current models", ""]
    if r.models:
        cols = _swap(_MODEL_COLUMNS, r.regression, ["accuracy", "macro-F1"], _MODEL_ERRORS)
        lines.append(_table_of(r.models.items(), cols))
        what = "R², MAE and RMSE" if r.regression else "Accuracy and macro-F1"
        lines += ["", f"{what} on the holdout when the model was trained."]
    else:
        lines.append("No registered model yet.")
    lines += ["", "### Retrains", ""]
    if not r.retrains:
        lines.append(f"{NOTHING}: no retrain runs.")
        return "\n".join(lines)
    old = ["accuracy", "macro-F1", "champion accuracy", "champion macro-F1"]
    lines.append(_table_of(r.retrains, _swap(_RETRAIN_COLUMNS, r.regression, old, _RETRAIN_ERRORS)))
    lines += [
        "",
        "Candidate and champion are scored on the same fixed holdout rows of each run.",
    ]
    return "\n".join(lines)


_DRIFT_COLUMNS: list[Column] = [
    ("batch", lambda m: markdown_text(m.batch_id) or "–"),
    ("when", "at"),
    ("rows", lambda m: _num(m.rows, 0)),
    ("drifted", lambda m: "**yes**" if m.drifted else "no"),
    ("drift share", lambda m: _num(m.drift_share)),
    ("drifted features", lambda m: markdown_text(", ".join(m.drifted_features)) or "–"),
    (
        "highest PSI",
        lambda m: ", ".join(f"{markdown_text(k)} {v:.3f}" for k, v in m.top_psi) or "–",
    ),
    ("prediction PSI", lambda m: _num(m.prediction_psi)),
    ("mean confidence", lambda m: _num(m.mean_confidence)),
    ("low-confidence share", lambda m: _num(m.low_confidence_share)),
    ("champion accuracy", lambda m: _num(m.champion_accuracy)),
    ("challenger accuracy", lambda m: _num(m.challenger_accuracy)),
    (
        "champion est. (CBPE)",
        lambda m: (
            _num(m.cbpe_accuracy_champion) + (" raw" if m.cbpe_calibrated_champion is False else "")
        ),
    ),
    ("challenger est. (CBPE)", lambda m: _num(m.cbpe_accuracy_challenger)),
    _RUN,
    _FLOW,
]


_DRIFT_ERRORS: list[Column] = [
    ("champion MAE", lambda m: _num(m.champion_mae)),
    ("champion RMSE", lambda m: _num(m.champion_rmse)),
    ("champion R²", lambda m: _num(m.champion_r2)),
    ("challenger MAE", lambda m: _num(m.challenger_mae)),
    ("challenger R²", lambda m: _num(m.challenger_r2)),
]


def _drift(r: Review) -> str:
    lines = ["## Drift", ""]
    if not r.monitoring:
        why = "" if r.monitoring_enabled else " (monitoring has not run in this project)"
        lines.append(f"{NOTHING}: no monitoring runs{why}.")
        return "\n".join(lines)
    drifted = [m for m in r.monitoring if m.drifted]
    features = Counter(f for m in drifted for f in m.drifted_features)
    lines.append(
        f"{len(r.monitoring)} batch(es) monitored, {len(drifted)} drifted "
        f"(drift share threshold {_num(r.drift_share_threshold, 2)})."
    )
    if features:
        top = ", ".join(f"{_code(f)} ({n})" for f, n in features.most_common(5))
        lines.append(f"Features that drifted most often: {top}.")
    lines.append("")
    old = ["champion accuracy", "challenger accuracy", "champion est. (CBPE)",
           "challenger est. (CBPE)"]  # fmt: skip
    table = _with_table(
        lines, r.monitoring, _swap(_DRIFT_COLUMNS, r.regression, old, _DRIFT_ERRORS)
    )
    if r.regression:  # said once: a regressor has no confidence to calibrate
        return table.rstrip("\n") + f"\n\nNote: {markdown_text(REGRESSION_NOTE)}.\n"
    flagged = [(m.batch_id, f) for m in r.monitoring for f in m.cbpe_flags]
    if not flagged:
        return table
    # The label-free estimates (CBPE) inform: each flag asks for labels, none promotes.
    notes = ["Label-free estimates (CBPE: calibrated confidence; blind to concept drift):", ""]
    notes += [f"- {_code(b)}: {markdown_text(f)}" for b, f in flagged]
    return table.rstrip("\n") + "\n\n" + "\n".join(notes) + "\n"


_QUARANTINE_COLUMNS: list[Column] = [
    ("batch", "batch_id"),
    ("source", "source"),
    ("when", "at"),
    ("status", "status"),
    ("rows quarantined", lambda q: f"{q.rows_quarantined} / {q.rows}"),
    ("reason", "reason"),
    ("report", lambda q: _code(q.report) if q.report else "–"),
    _RUN,
    _FLOW,
]


def _quarantine(r: Review) -> str:
    return _listing(["## Quarantined batches", ""], r.quarantined, "quarantined batches",
                    _QUARANTINE_COLUMNS)  # fmt: skip


_IMPORT_COLUMNS: list[Column] = [
    ("when", "at"),
    ("file", "source"),
    ("added", lambda i: _num(i.labels_added, 0)),
    ("rejected", lambda i: _num(i.labels_rejected, 0)),
    _RUN,
    _FLOW,
]


def _annotation(r: Review) -> str:
    a = r.annotation
    lines = ["## Annotation backlog and SLA", ""]
    if not a.get("queued") and not r.label_imports:
        lines.append(f"{NOTHING}: no edge cases queued for annotation.")
        return "\n".join(lines)
    sla_hours = float(a.get("sla_days") or 0) * 24
    oldest = a.get("oldest_open_hours")
    late = " **(over the SLA)**" if oldest is not None and oldest > sla_hours else ""
    state = a.get("sla_state")
    if state in ("at_risk", "breached"):
        word = "BREACHED" if state == "breached" else "AT RISK"
        lines += [
            f"**SLA {word}:** {a.get('at_risk_open', 0)} open tasks have waited at least"
            f" {_num(a.get('sla_warning_hours'), 1)} h of the {_num(sla_hours, 0)} h SLA.",
            "",
        ]
    lines += [
        f"- Open now: {a.get('open', 0)} of {a.get('queued', 0)} queued "
        f"(oldest open: {_num(oldest, 1)} h{late})",
        f"- Surfaced this week: {a.get('surfaced_in_window', 0)}; labeled this week: "
        f"{a.get('labeled_in_window', 0)}",
        f"- Time to label: median {_num(a.get('median_hours_to_label'), 1)} h, "
        f"p90 {_num(a.get('p90_hours_to_label'), 1)} h",
        f"- Labeled within the {_num(a.get('sla_days'), 1)}-day SLA: "
        f"{_pct(a.get('within_sla_share'))} (open items past the SLA count as misses)",
        "",
        "### Label imports",
        "",
    ]
    return _listing(lines, r.label_imports, "label imports", _IMPORT_COLUMNS)


_SHADOW_COLUMNS: list[Column] = [
    ("when", "at"),
    ("challenger", lambda s: f"v{markdown_text(s.challenger_version)}"),
    ("champion", lambda s: f"v{markdown_text(s.champion_version)}"),
    ("decision", lambda s: f"**{markdown_text(s.decision)}**"),
    ("state", lambda s: markdown_text(s.state.replace("_", " "))),
    ("metric", "metric"),
    ("rows", lambda s: _num(s.n, 0)),
    ("rows scored by both", lambda s: _num(s.n_rows, 0)),
    ("challenger score", lambda s: _num(s.challenger)),
    ("champion score", lambda s: _num(s.champion)),
    ("delta", lambda s: _signed(s.delta)),
    ("CI (one look)", lambda s: f"[{_signed(s.ci_low)}, {_signed(s.ci_high)}]"),
    ("confidence sequence", lambda s: f"[{_signed(s.cs_low)}, {_signed(s.cs_high)}]"),
    ("labels needed", lambda s: _num(s.labels_needed, 0)),
    ("agreement", lambda s: _num(s.agreement)),
    ("McNemar p", lambda s: _num(s.mcnemar_p)),
    _RUN,
]


def _shadow(r: Review) -> str:
    lines = ["## Shadow evaluation", ""]
    chall = r.models.get(CHALLENGER)
    champ = r.models.get(CHAMPION)
    if chall and champ:
        pair = [
            s
            for s in r.shadow
            if s.challenger_version == chall["version"] and s.champion_version == champ["version"]
        ]
        now = (
            f"latest: **{markdown_text(pair[0].decision)}** ({markdown_text(pair[0].summary)})"
            if pair
            else "no evaluation of this pair this week"
        )
        lines += [
            f"In shadow now: challenger v{markdown_text(chall['version'])} vs champion "
            f"v{markdown_text(champ['version'])}: {now}.",
            "",
        ]
    else:
        lines += ["No challenger in shadow now.", ""]
    columns = _SHADOW_COLUMNS
    if r.regression:  # the scores are MAEs, the delta in target std, the test a sign test
        names = {"challenger score": "challenger MAE", "champion score": "champion MAE",
                 "delta": "delta (target std)", "McNemar p": "sign test p"}  # fmt: skip
        columns = [(names.get(h, h), cell) for h, cell in columns]
    return _listing(lines, r.shadow, "shadow evaluations", columns)


_ALIAS_COLUMNS: list[Column] = [
    ("when", "at"),
    ("what", "kind"),
    ("alias", "alias"),
    ("version", lambda e: f"v{markdown_text(e.version)}" if e.version else "(removed)"),
    ("was", lambda e: f"v{markdown_text(e.previous)}" if e.previous else "–"),
    ("who", "actor"),
    ("why", "reason"),
    _RUN,
]


def _aliases(r: Review) -> str:
    what = "promotions, rollbacks or alias moves"
    return _listing(["## Promotions and rollbacks", ""], r.alias_events, what, _ALIAS_COLUMNS)


# ---------------------------------------------------------------------- html
def _loop_effect(r: Review) -> str:
    e = r.loop_effect or {}
    lines = [
        "## Loop effect (demo: true labels known)",
        "",
        "Accuracy on every row of each batch: the frozen first model, the loop's champion when the"
        " batch arrived, and an oracle trained on every true label before it. Recovery ="
        f" (loop - frozen) / (oracle - frozen) on the drifted batches: **{_num(e.get('recovery'), 2)}**;"
        f" labeled share {_pct(e.get('labeled_share'))}.",
        "",
    ]
    rows = [
        [str(b.get("batch")), b.get("rows"), _num(b.get("frozen"), 3),
         _num(b.get("loop"), 3), _num(b.get("oracle"), 3), b.get("labels")]
        for b in e.get("batches") or []
    ]  # fmt: skip
    return "\n".join(lines) + _table(["batch", "rows", "frozen", "loop", "oracle", "labels"], rows)


def to_html(review: Review) -> str:
    """One self-contained page: the markdown rendered, charts inlined as base64 PNGs."""
    # html=False: reasons and file names come from data; they must not become markup.
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    charts = {
        "performance": (_performance_png(review), "Model performance trend"),
        "drift": (_drift_png(review), "Drift share per batch"),
    }
    body = []
    for key, text in sections(review):
        body.append(md.render(text))
        png, alt = charts.get(key, (None, ""))
        if png:
            b64 = base64.b64encode(png).decode("ascii")
            body.append(
                f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{escape(alt)}</figcaption></figure>\n"
            )
    title = escape(f"Weekly review: {review.project}, {review.date}")
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "".join(body)
        + "</body>\n</html>\n"
    )


def _performance_png(r: Review) -> bytes | None:
    batch_score = "champion_r2" if r.regression else "champion_accuracy"
    labeled = [m for m in r.monitoring if getattr(m, batch_score) is not None]
    if not r.retrains and not labeled:
        return None
    fig, ax = _figure()
    metrics = (("r2", "tab:blue"),) if r.regression else (("accuracy", "tab:blue"), ("macro_f1", "tab:orange"))  # fmt: skip
    for metric, colour in metrics:
        for decision, marker in (("registered", "o"), ("rejected", "x")):
            pts = [
                (parse_time(t.at), getattr(t, metric))
                for t in r.retrains
                if t.decision == decision and getattr(t, metric) is not None
            ]
            if pts:
                ax.scatter(*zip(*pts, strict=True), color=colour, marker=marker,
                           label=f"candidate {metric} ({decision})")  # fmt: skip
        champ = [
            (parse_time(t.at), getattr(t, f"champion_{metric}"))
            for t in r.retrains
            if getattr(t, f"champion_{metric}") is not None
        ]
        if champ:
            ax.plot(*zip(*champ, strict=True), color=colour, linestyle="--",
                    label=f"champion {metric} (same holdout)")  # fmt: skip
    if labeled:
        pts = [(parse_time(m.at), getattr(m, batch_score)) for m in labeled]
        ax.plot(*zip(*pts, strict=True), color="tab:green", linestyle=":", marker=".",
                label=f"{batch_score.replace('_', ' ')} on labeled batches")  # fmt: skip
    estimated = [
        (parse_time(m.at), m.cbpe_accuracy_champion)
        for m in r.monitoring
        if m.cbpe_accuracy_champion is not None
    ]
    if estimated:
        ax.plot(*zip(*estimated, strict=True), color="tab:purple", linestyle=":", marker="+",
                label="champion accuracy estimated without labels (CBPE)")  # fmt: skip
    ax.set_title(f"Model performance, {r.start[:10]} to {r.end[:10]}")
    ax.set_ylabel("R²" if r.regression else "score")
    # R² has no floor (a model worse than the mean is below 0): the axis shows it.
    values = [v for t in r.retrains for v in (t.r2, t.champion_r2) if v is not None]
    low = min([0.0, *values, *(float(m.champion_r2 or 0.0) for m in labeled)])
    ax.set_ylim(low - 0.05 if r.regression else 0, 1.05)
    _date_axis(ax)
    ax.legend(fontsize=7, loc="lower left")
    return _png(fig)


def _drift_png(r: Review) -> bytes | None:
    rows = [m for m in r.monitoring if m.drift_share is not None]
    if not rows:
        return None
    fig, ax = _figure()
    labels = [str(m.batch_index) if m.batch_index is not None else m.batch_id[:12] for m in rows]
    colours = ["tab:red" if m.drifted else "tab:blue" for m in rows]
    shares = [m.drift_share or 0.0 for m in rows]  # none is None (filtered above)
    ax.bar(range(len(rows)), shares, color=colours)
    ax.axhline(r.drift_share_threshold, color="black", linestyle="--", linewidth=1,
               label=f"threshold {r.drift_share_threshold:g}")  # fmt: skip
    ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("batch")
    ax.set_ylabel("share of features drifted")
    ax.set_ylim(0, 1.05)
    ax.set_title("Drift share per batch (red: drifted)")
    ax.legend(fontsize=7)
    return _png(fig)


def _figure() -> tuple[Figure, Axes]:
    # A bare Figure on the Agg canvas: no pyplot, so no global state and no display needed.
    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _date_axis(ax: Axes) -> None:
    locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------- cells
def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if digits == 0:
        return str(round(float(v)))
    return f"{float(v):.{digits}f}"


def _signed(v: Any) -> str:
    return "–" if v is None else f"{float(v):+.4f}"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{float(v):.0%}"


def _model_line(m: dict[str, Any] | None) -> str:
    if not m:
        return "none"
    if "r2" in m or "mae" in m:  # a regression model (models_status has its errors)
        return f"v{markdown_text(m['version'])} (R² {_num(m.get('r2'))}, MAE {_num(m.get('mae'))})"
    return (
        f"v{markdown_text(m['version'])} (accuracy {_num(m.get('accuracy'))}, "
        f"macro-F1 {_num(m.get('macro_f1'))})"
    )


def _run_link(url: str, run_id: str) -> str:
    """A markdown link on a tracking server; the store locator as code otherwise."""
    if not url:
        return "–"
    if url.startswith(("http://", "https://")):
        return f"[{markdown_text(run_id[:8])}]({url})"
    return _code(url)


def _flow_link(url: str) -> str:
    return f"[flow run]({url})" if url.startswith(("http://", "https://")) else "–"


#: What in a line can start markup: emphasis, code, raw HTML, entities. Backslash-escaped,
#: each shows as itself in any CommonMark viewer and in the HTML page.


def _code(value: Any) -> str:
    """A value as one code span, whatever backticks it holds (markdown-it escapes its HTML)."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    fence = "`" * (1 + max((len(m) for m in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _table_of(items: Iterable[Any], columns: Sequence[Column]) -> str:
    """The one markdown table of a section: a row per item, a cell per column."""
    rows = [[_value(i, cell) for _, cell in columns] for i in items]
    return _table([h for h, _ in columns], rows)


def _value(item: Any, cell: str | Callable[[Any], object]) -> object:
    # An attribute shown as is is a value from the data or a run (a reason, a file name): text.
    return markdown_text(getattr(item, cell)) if isinstance(cell, str) else cell(item)


def _with_table(lines: list[str], items: Iterable[Any], columns: Sequence[Column]) -> str:
    """The section's lines, then its table."""
    return "\n".join([*lines, _table_of(items, columns)])


def _listing(lines: list[str], items: Sequence[Any], what: str, columns: Sequence[Column]) -> str:
    """The section's lines, then its table, or that it has nothing this week."""
    if not items:
        return "\n".join([*lines, f"{NOTHING}: no {what}."])
    return _with_table(lines, items, columns)
