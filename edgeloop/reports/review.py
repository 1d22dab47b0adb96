"""The weekly review: one report of what the loop did in a time window, with links to the runs.

``build_review(settings, now=..., days=7)`` gathers, for the window ``[now - days, now]``:
retrain runs with their decision and metrics (and the champion and challenger now), monitoring
runs (drift per batch), quarantined batches, the annotation backlog and its SLA, shadow
evaluations, and alias moves (promotions, rollbacks). Every item carries its MLflow run locator
(``tracking.run_url``) and, where the run recorded one, its Prefect flow-run URL.

Reads only: no experiment is created and nothing is written until ``write_review`` /
``log_review`` (used by ``flows/weekly_review.py``). Heavy imports stay inside the functions.
"""

from __future__ import annotations

import base64
import io
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

REVIEW_EXPERIMENT = "reviews"
#: Written by the monitor flow (one run per batch); absent until monitoring first runs.
MONITORING_EXPERIMENT = "monitoring"
MONITORING_KIND = "monitoring"
#: The ledger states that put rows in quarantine.
QUARANTINE_STATES = ("quarantined", "partial", "unreadable")
#: Each empty section says this, so a quiet week reads as quiet, not as broken.
NOTHING = "Nothing this week"
#: Tags that hold a run's Prefect flow-run URL: monitoring writes the first, the older flows
#: (ingest, retrain, labels) the second.
FLOW_URL_TAGS = ("edgeloop.flow_run_url", "prefect.flow_run_url")
MONITORING_METRICS = (
    "rows",
    "labeled_rows",
    "drift_share",
    "n_drifted_features",
    "prediction_psi",
    "mean_confidence",
    "low_confidence_share",
    "champion_accuracy",
    "challenger_accuracy",
    "agreement",
)
SHADOW_METRICS = (
    "n",
    "champion",
    "challenger",
    "delta",
    "ci_low",
    "ci_high",
    "agreement",
    "mcnemar_p",
)


@dataclass
class Review:
    """What happened in one window; JSON-ready (``to_dict``), readable (markdown, HTML)."""

    project: str
    start: str
    end: str
    days: int
    generated_at: str
    tracking_uri: str
    #: How to open a run locator when the store has no web UI (empty on a tracking server).
    mlflow_hint: str = ""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    retrains: list[dict[str, Any]] = field(default_factory=list)
    monitoring: list[dict[str, Any]] = field(default_factory=list)
    #: False when the monitoring experiment does not exist (monitoring never ran here).
    monitoring_enabled: bool = False
    drift_share_threshold: float = 0.0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    annotation: dict[str, Any] = field(default_factory=dict)
    label_imports: list[dict[str, Any]] = field(default_factory=list)
    shadow: list[dict[str, Any]] = field(default_factory=list)
    alias_events: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ numbers
    def counts(self) -> dict[str, int]:
        """The headline numbers (also the metrics of the review's MLflow run)."""
        decisions = Counter(r["decision"] for r in self.retrains)
        kinds = Counter(e["kind"] for e in self.alias_events)
        return {
            "retrains": len(self.retrains),
            "retrains_registered": decisions["registered"],
            "retrains_rejected": decisions["rejected"],
            "batches_monitored": len(self.monitoring),
            "batches_drifted": sum(1 for m in self.monitoring if m["drifted"]),
            "quarantined_batches": len(self.quarantined),
            "rows_quarantined": sum(q["rows_quarantined"] for q in self.quarantined),
            "annotation_open": int(self.annotation.get("open") or 0),
            "annotation_surfaced": int(self.annotation.get("surfaced_in_window") or 0),
            "labels_imported": sum(int(i["labels_added"] or 0) for i in self.label_imports),
            "shadow_evaluations": len(self.shadow),
            "alias_moves": len(self.alias_events),
            "promotions": kinds["promotion"],
            "rollbacks": kinds["rollback"],
        }

    def to_dict(self) -> dict[str, Any]:
        return {**_json_safe(asdict(self)), "counts": self.counts()}

    @property
    def date(self) -> str:
        """The window's last day (names the report files)."""
        return self.end[:10]

    # ------------------------------------------------------------------ markdown
    def sections(self) -> list[tuple[str, str]]:
        """(key, markdown) per section, in report order; HTML adds the charts after some."""
        return [
            ("header", self._header()),
            ("performance", self._performance()),
            ("drift", self._drift()),
            ("quarantine", self._quarantine()),
            ("annotation", self._annotation()),
            ("shadow", self._shadow()),
            ("aliases", self._aliases()),
        ]

    def to_markdown(self) -> str:
        return "\n\n".join(md for _, md in self.sections()).rstrip() + "\n"

    def _header(self) -> str:
        c = self.counts()
        champ = self.models.get("champion")
        chall = self.models.get("challenger")
        lines = [
            f"# Weekly review: {self.project}, {self.start[:10]} to {self.end[:10]}",
            "",
            f"Window: {self.start} to {self.end} ({self.days} days). "
            f"Generated {self.generated_at}. MLflow: `{self.tracking_uri}`.",
        ]
        if self.mlflow_hint:
            lines += ["", f"MLflow runs below are locators: open them with `{self.mlflow_hint}`."]
        lines += [
            "",
            "## Summary",
            "",
            f"- Retrains: {c['retrains']} ({c['retrains_registered']} registered, "
            f"{c['retrains_rejected']} rejected)",
            f"- Champion: {_model_line(champ)}; challenger: {_model_line(chall)}",
            f"- Drift: {c['batches_monitored']} batch(es) monitored, {c['batches_drifted']} drifted",
            f"- Quarantined batches: {c['quarantined_batches']} "
            f"({c['rows_quarantined']} rows quarantined)",
            f"- Annotation: {c['annotation_open']} open, {c['annotation_surfaced']} surfaced "
            f"and {c['labels_imported']} labeled this week, within the "
            f"{_num(self.annotation.get('sla_days'), 1)}-day SLA: "
            f"{_pct(self.annotation.get('within_sla_share'))}",
            f"- Shadow evaluations: {c['shadow_evaluations']}"
            + (f" (latest: {self.shadow[0]['decision']})" if self.shadow else ""),
            f"- Promotions: {c['promotions']}, rollbacks: {c['rollbacks']} "
            f"({c['alias_moves']} alias move(s) in all)",
        ]
        return "\n".join(lines)

    def _performance(self) -> str:
        lines = ["## Model performance", "", "### Current models", ""]
        if self.models:
            rows = [
                [
                    alias,
                    f"v{m['version']}",
                    _num(m.get("accuracy")),
                    _num(m.get("macro_f1")),
                    (m.get("data_version") or "")[:12],
                    m.get("alias_since") or "",
                    _run_link(m.get("mlflow_url", ""), m.get("run_id", "")),
                ]
                for alias, m in self.models.items()
            ]
            lines.append(
                _table(
                    [
                        "alias",
                        "version",
                        "accuracy",
                        "macro-F1",
                        "data version",
                        "since",
                        "MLflow run",
                    ],
                    rows,
                )
            )
            lines += ["", "Accuracy and macro-F1 on the holdout when the model was trained."]
        else:
            lines.append("No registered model yet.")
        lines += ["", "### Retrains", ""]
        if not self.retrains:
            lines.append(f"{NOTHING}: no retrain runs.")
            return "\n".join(lines)
        rows = [
            [
                r["at"],
                r["reason"],
                r["decision"] or "(no decision)",
                f"v{r['version']}" if r["version"] else "–",
                _num(r["accuracy"]),
                _num(r["macro_f1"]),
                _num(r["champion_accuracy"]),
                _num(r["champion_macro_f1"]),
                ", ".join(r["failed_gates"]) or "–",
                _run_link(r["mlflow_url"], r["run_id"]),
                _flow_link(r["flow_run_url"]),
            ]
            for r in self.retrains
        ]
        lines.append(
            _table(
                [
                    "when",
                    "reason",
                    "decision",
                    "version",
                    "accuracy",
                    "macro-F1",
                    "champion accuracy",
                    "champion macro-F1",
                    "failed gates",
                    "MLflow run",
                    "Prefect flow run",
                ],
                rows,
            )
        )
        lines += [
            "",
            "Candidate and champion are scored on the same fixed holdout rows of each run.",
        ]
        return "\n".join(lines)

    def _drift(self) -> str:
        lines = ["## Drift", ""]
        if not self.monitoring:
            why = "" if self.monitoring_enabled else " (monitoring has not run in this project)"
            lines.append(f"{NOTHING}: no monitoring runs{why}.")
            return "\n".join(lines)
        drifted = [m for m in self.monitoring if m["drifted"]]
        features = Counter(f for m in drifted for f in m["drifted_features"])
        lines.append(
            f"{len(self.monitoring)} batch(es) monitored, {len(drifted)} drifted "
            f"(drift share threshold {_num(self.drift_share_threshold, 2)})."
        )
        if features:
            top = ", ".join(f"`{f}` ({n})" for f, n in features.most_common(5))
            lines.append(f"Features that drifted most often: {top}.")
        lines.append("")
        rows = [
            [
                m["batch_id"] or "–",
                m["at"],
                _num(m["rows"], 0),
                "**yes**" if m["drifted"] else "no",
                _num(m["drift_share"]),
                ", ".join(m["drifted_features"]) or "–",
                ", ".join(f"{k} {v:.3f}" for k, v in m["top_psi"]) or "–",
                _num(m["prediction_psi"]),
                _num(m["mean_confidence"]),
                _num(m["low_confidence_share"]),
                _num(m["champion_accuracy"]),
                _num(m["challenger_accuracy"]),
                _run_link(m["mlflow_url"], m["run_id"]),
                _flow_link(m["flow_run_url"]),
            ]
            for m in self.monitoring
        ]
        lines.append(
            _table(
                [
                    "batch",
                    "when",
                    "rows",
                    "drifted",
                    "drift share",
                    "drifted features",
                    "highest PSI",
                    "prediction PSI",
                    "mean confidence",
                    "low-confidence share",
                    "champion accuracy",
                    "challenger accuracy",
                    "MLflow run",
                    "Prefect flow run",
                ],
                rows,
            )
        )
        return "\n".join(lines)

    def _quarantine(self) -> str:
        lines = ["## Quarantined batches", ""]
        if not self.quarantined:
            lines.append(f"{NOTHING}: no quarantined batches.")
            return "\n".join(lines)
        rows = [
            [
                q["batch_id"],
                q["source"],
                q["at"],
                q["status"],
                f"{q['rows_quarantined']} / {q['rows']}",
                q["reason"],
                f"`{q['report']}`" if q["report"] else "–",
                _run_link(q["mlflow_url"], q["run_id"]),
                _flow_link(q["flow_run_url"]),
            ]
            for q in self.quarantined
        ]
        lines.append(
            _table(
                [
                    "batch",
                    "source",
                    "when",
                    "status",
                    "rows quarantined",
                    "reason",
                    "report",
                    "MLflow run",
                    "Prefect flow run",
                ],
                rows,
            )
        )
        return "\n".join(lines)

    def _annotation(self) -> str:
        a = self.annotation
        lines = ["## Annotation backlog and SLA", ""]
        if not a.get("queued") and not self.label_imports:
            lines.append(f"{NOTHING}: no edge cases queued for annotation.")
            return "\n".join(lines)
        sla_hours = float(a.get("sla_days") or 0) * 24
        oldest = a.get("oldest_open_hours")
        late = " **(over the SLA)**" if oldest is not None and oldest > sla_hours else ""
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
        if not self.label_imports:
            lines.append(f"{NOTHING}: no label imports.")
            return "\n".join(lines)
        rows = [
            [
                i["at"],
                i["source"],
                _num(i["labels_added"], 0),
                _num(i["labels_rejected"], 0),
                _run_link(i["mlflow_url"], i["run_id"]),
                _flow_link(i["flow_run_url"]),
            ]
            for i in self.label_imports
        ]
        lines.append(
            _table(["when", "file", "added", "rejected", "MLflow run", "Prefect flow run"], rows)
        )
        return "\n".join(lines)

    def _shadow(self) -> str:
        lines = ["## Shadow evaluation", ""]
        chall = self.models.get("challenger")
        champ = self.models.get("champion")
        if chall and champ:
            pair = [
                s
                for s in self.shadow
                if s["challenger_version"] == chall["version"]
                and s["champion_version"] == champ["version"]
            ]
            now = (
                f"latest: **{pair[0]['decision']}** ({pair[0]['summary']})"
                if pair
                else "no evaluation of this pair this week"
            )
            lines += [
                f"In shadow now: challenger v{chall['version']} vs champion "
                f"v{champ['version']}: {now}.",
                "",
            ]
        else:
            lines += ["No challenger in shadow now.", ""]
        if not self.shadow:
            lines.append(f"{NOTHING}: no shadow evaluations.")
            return "\n".join(lines)
        rows = [
            [
                s["at"],
                f"v{s['challenger_version']}",
                f"v{s['champion_version']}",
                f"**{s['decision']}**",
                s["metric"],
                _num(s["n"], 0),
                _num(s["challenger"]),
                _num(s["champion"]),
                _signed(s["delta"]),
                f"[{_signed(s['ci_low'])}, {_signed(s['ci_high'])}]",
                _num(s["agreement"]),
                _num(s["mcnemar_p"]),
                _run_link(s["mlflow_url"], s["run_id"]),
            ]
            for s in self.shadow
        ]
        lines.append(
            _table(
                [
                    "when",
                    "challenger",
                    "champion",
                    "decision",
                    "metric",
                    "rows",
                    "challenger score",
                    "champion score",
                    "delta",
                    "CI",
                    "agreement",
                    "McNemar p",
                    "MLflow run",
                ],
                rows,
            )
        )
        return "\n".join(lines)

    def _aliases(self) -> str:
        lines = ["## Promotions and rollbacks", ""]
        if not self.alias_events:
            lines.append(f"{NOTHING}: no promotions, rollbacks or alias moves.")
            return "\n".join(lines)
        rows = [
            [
                e["at"],
                e["kind"],
                e["alias"],
                f"v{e['version']}" if e["version"] else "(removed)",
                f"v{e['previous']}" if e["previous"] else "–",
                e["actor"],
                e["reason"],
                _run_link(e["mlflow_url"], e["run_id"]),
            ]
            for e in self.alias_events
        ]
        lines.append(
            _table(["when", "what", "alias", "version", "was", "who", "why", "MLflow run"], rows)
        )
        return "\n".join(lines)

    # ------------------------------------------------------------------ html
    def to_html(self) -> str:
        """One self-contained page: the markdown rendered, charts inlined as base64 PNGs."""
        from html import escape

        from markdown_it import MarkdownIt

        # html=False: reasons and file names come from data; they must not become markup.
        md = MarkdownIt("commonmark", {"html": False}).enable("table")
        charts = {
            "performance": (self._performance_png(), "Model performance trend"),
            "drift": (self._drift_png(), "Drift share per batch"),
        }
        body = []
        for key, text in self.sections():
            body.append(md.render(text))
            png, alt = charts.get(key, (None, ""))
            if png:
                b64 = base64.b64encode(png).decode("ascii")
                body.append(
                    f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{b64}">'
                    f"<figcaption>{escape(alt)}</figcaption></figure>\n"
                )
        title = escape(f"Weekly review: {self.project}, {self.date}")
        return (
            f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "".join(body)
            + "</body>\n</html>\n"
        )

    def _performance_png(self) -> bytes | None:
        labeled = [m for m in self.monitoring if m["champion_accuracy"] is not None]
        if not self.retrains and not labeled:
            return None
        fig, ax = _figure()
        for metric, colour in (("accuracy", "tab:blue"), ("macro_f1", "tab:orange")):
            for decision, marker in (("registered", "o"), ("rejected", "x")):
                pts = [
                    (_parse(r["at"]), r[metric])
                    for r in self.retrains
                    if r["decision"] == decision and r[metric] is not None
                ]
                if pts:
                    ax.scatter(*zip(*pts, strict=True), color=colour, marker=marker,
                               label=f"candidate {metric} ({decision})")  # fmt: skip
            champ = [
                (_parse(r["at"]), r[f"champion_{metric}"])
                for r in self.retrains
                if r[f"champion_{metric}"] is not None
            ]
            if champ:
                ax.plot(*zip(*champ, strict=True), color=colour, linestyle="--",
                        label=f"champion {metric} (same holdout)")  # fmt: skip
        if labeled:
            pts = [(_parse(m["at"]), m["champion_accuracy"]) for m in labeled]
            ax.plot(*zip(*pts, strict=True), color="tab:green", linestyle=":", marker=".",
                    label="champion accuracy on labeled batches")  # fmt: skip
        ax.set_title(f"Model performance, {self.start[:10]} to {self.end[:10]}")
        ax.set_ylabel("score")
        ax.set_ylim(0, 1.05)
        _date_axis(ax)
        ax.legend(fontsize=7, loc="lower left")
        return _png(fig)

    def _drift_png(self) -> bytes | None:
        rows = [m for m in self.monitoring if m["drift_share"] is not None]
        if not rows:
            return None
        fig, ax = _figure()
        labels = [
            str(m["batch_index"]) if m["batch_index"] is not None else m["batch_id"][:12]
            for m in rows
        ]
        colours = ["tab:red" if m["drifted"] else "tab:blue" for m in rows]
        ax.bar(range(len(rows)), [m["drift_share"] for m in rows], color=colours)
        ax.axhline(self.drift_share_threshold, color="black", linestyle="--", linewidth=1,
                   label=f"threshold {self.drift_share_threshold:g}")  # fmt: skip
        ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("batch")
        ax.set_ylabel("share of features drifted")
        ax.set_ylim(0, 1.05)
        ax.set_title("Drift share per batch (red: drifted)")
        ax.legend(fontsize=7)
        return _png(fig)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;"
    "color:#222}table{border-collapse:collapse;margin:.5em 0;font-size:.85em}"
    "th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}code{font-size:.9em;word-break:break-all}"
    "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:.8em;color:#666}"
)


# ---------------------------------------------------------------------- building
def build_review(settings: Settings, *, now: datetime | None = None, days: int = 7) -> Review:
    """Gather the window ``[now - days, now]`` from MLflow, the registry and the data folder."""
    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import DATA_EXPERIMENT, configure, is_embedded, tracking_uri

    if days < 1:
        raise EdgeloopError(f"the review window must be at least 1 day (got {days})")
    end = _utc(now or datetime.now(UTC))
    start = end - timedelta(days=days)
    uri = configure(settings)
    client = MlflowClient()
    hint = ""
    if is_embedded(settings):
        hint = f"mlflow ui --backend-store-uri {tracking_uri(settings)} --host 127.0.0.1"
    review = Review(
        project=settings.project,
        start=_iso(start),
        end=_iso(end),
        days=days,
        generated_at=_iso(datetime.now(UTC)),
        tracking_uri=uri,
        mlflow_hint=hint,
        drift_share_threshold=settings.monitoring.drift_share_threshold,
    )
    window = _Window(settings, client, start, end)
    review.models = _models(settings, client)
    review.retrains = _retrains(window)
    review.monitoring_enabled, review.monitoring = _monitoring(window)
    data_runs = window.runs(DATA_EXPERIMENT)
    review.quarantined = _quarantined(window, data_runs)
    review.annotation, review.label_imports = _annotation(window, data_runs)
    review.shadow = _shadow(window)
    review.alias_events = _alias_events(window)
    return review


@dataclass
class _Window:
    """The window and the MLflow reads every section shares."""

    settings: Settings
    client: MlflowClient
    start: datetime
    end: datetime
    _ids: dict[str, str | None] = field(default_factory=dict)

    def contains(self, when: datetime | None) -> bool:
        return when is not None and self.start <= when <= self.end

    def experiment_id(self, kind: str) -> str | None:
        """The experiment's id, or None when it does not exist (a read never creates one)."""
        from edgeloop.tracking.store import experiment_name

        if kind not in self._ids:
            exp = self.client.get_experiment_by_name(experiment_name(self.settings, kind))
            self._ids[kind] = exp.experiment_id if exp is not None else None
        return self._ids[kind]

    def runs(self, kind: str, extra: str = "") -> list[Any]:
        """Runs of one experiment started in the window, oldest first (every page)."""
        exp = self.experiment_id(kind)
        if exp is None:
            return []
        flt = (
            f"attributes.start_time >= {int(self.start.timestamp() * 1000)} and "
            f"attributes.start_time <= {int(self.end.timestamp() * 1000)}"
        )
        if extra:
            flt += f" and {extra}"
        out: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [exp], flt, order_by=["attributes.start_time ASC"], max_results=1000,
                page_token=token,
            )  # fmt: skip
            out.extend(page)
            token = page.token
            if not token:
                return out

    def url(self, run: Any) -> str:
        from edgeloop.tracking.store import run_url

        return run_url(self.settings, run.info.experiment_id, run.info.run_id)


def _models(settings: Settings, client: MlflowClient) -> dict[str, dict[str, Any]]:
    """Champion, challenger, previous champion now (``models_status``), with run links."""
    from edgeloop.models.training import models_status
    from edgeloop.tracking.store import run_url

    out: dict[str, dict[str, Any]] = {}
    for alias, info in models_status(settings).items():
        run = client.get_run(info["run_id"])
        out[alias] = {
            **info,
            "mlflow_url": run_url(settings, run.info.experiment_id, info["run_id"]),
            "flow_run_url": _flow_url(run.data.tags),
        }
    return out


def _retrains(w: _Window) -> list[dict[str, Any]]:
    from edgeloop.models.training import TRAINING_EXPERIMENT

    out = []
    for r in w.runs(TRAINING_EXPERIMENT):
        tags, m = r.data.tags, r.data.metrics
        out.append(
            {
                "at": _iso(_ms(r.info.start_time)),
                "reason": tags.get("edgeloop.reason", ""),
                "decision": tags.get("edgeloop.decision", ""),
                "version": tags.get("edgeloop.registered_version", ""),
                "accuracy": _metric(m, "accuracy"),
                "macro_f1": _metric(m, "macro_f1"),
                "champion_accuracy": _metric(m, "champion_accuracy"),
                "champion_macro_f1": _metric(m, "champion_macro_f1"),
                "train_rows": _metric(m, "train_rows"),
                "data_version": tags.get("dvc.data_version", ""),
                "failed_gates": sorted(
                    k.removeprefix("gate.")
                    for k, v in tags.items()
                    if k.startswith("gate.") and not k.endswith(".detail") and v == "failed"
                ),
                "run_id": r.info.run_id,
                "mlflow_url": w.url(r),
                "flow_run_url": _flow_url(tags),
            }
        )
    return out


def _monitoring(w: _Window) -> tuple[bool, list[dict[str, Any]]]:
    if w.experiment_id(MONITORING_EXPERIMENT) is None:
        return False, []
    # A failed run is retried by the monitor (its batch is monitored again): the finished one
    # counts, and of a batch monitored twice the later run (as the monitor itself reads it).
    latest = {
        r.data.tags.get("edgeloop.batch_id") or r.info.run_id: r
        for r in w.runs(
            MONITORING_EXPERIMENT,
            f"tags.`edgeloop.kind` = '{MONITORING_KIND}' and attributes.status = 'FINISHED'",
        )
    }
    out = []
    for r in latest.values():
        tags, m = r.data.tags, r.data.metrics
        psi = {k.removeprefix("psi."): v for k, v in m.items() if k.startswith("psi.")}
        top = sorted(((k, v) for k, v in psi.items() if not math.isnan(v)), key=lambda kv: -kv[1])
        index = tags.get("edgeloop.batch_index", "")
        out.append(
            {
                "batch_id": tags.get("edgeloop.batch_id", ""),
                "batch_index": int(index) if index.lstrip("-").isdigit() else None,
                "at": _iso(_ms(r.info.start_time)),
                **{k: _metric(m, k) for k in MONITORING_METRICS},
                "drifted": tags.get("edgeloop.drifted", "").lower() == "true",
                "drifted_features": _names(tags.get("edgeloop.drifted_features", "")),
                "top_psi": top[:3],
                "run_id": r.info.run_id,
                "mlflow_url": w.url(r),
                "flow_run_url": _flow_url(tags),
            }
        )
    # Batch order, not run order: a batch monitored again later still sits in its place.
    out.sort(key=lambda x: (x["batch_index"] is None, x["batch_index"] or 0, x["at"]))
    return True, out


def _quarantined(w: _Window, data_runs: list[Any]) -> list[dict[str, Any]]:
    from edgeloop.data.store import DataStore

    # The ingest run that filed each batch (a later duplicate upload has its own run).
    filed = {
        (r.data.tags.get("edgeloop.batch_id"), r.data.tags.get("edgeloop.decision")): r
        for r in data_runs
        if r.data.tags.get("edgeloop.kind") == "ingest"
    }
    out = []
    for e in DataStore(w.settings).ledger():
        if e.status not in QUARANTINE_STATES or not w.contains(_parse(e.at)):
            continue
        run = filed.get((e.batch_id, e.status))
        qdir = next((s for s in e.stored if "quarantine" in s), "")
        out.append(
            {
                "batch_id": e.batch_id,
                "source": e.source,
                "status": e.status,
                "at": e.at,
                "rows": e.rows,
                "rows_quarantined": e.rows_quarantined,
                "reason": e.reason,
                "report": f"{qdir}/report.md" if qdir else "",
                "run_id": run.info.run_id if run else "",
                "mlflow_url": w.url(run) if run else "",
                "flow_run_url": _flow_url(run.data.tags) if run else "",
            }
        )
    return out


def _annotation(w: _Window, data_runs: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The SLA as of the window's end, what was surfaced and labeled in it, the imports."""
    import pandas as pd

    from edgeloop.batch.annotation import read_labels, read_queue, sla

    backlog = sla(w.settings, now=w.end)
    start, end = pd.Timestamp(w.start), pd.Timestamp(w.end)

    def in_window(values: pd.Series) -> int:
        when = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
        return int(((when >= start) & (when <= end)).sum())

    queue, labels = read_queue(w.settings), read_labels(w.settings)
    backlog["surfaced_in_window"] = in_window(queue["surfaced_at"]) if len(queue) else 0
    backlog["labeled_in_window"] = in_window(labels["imported_at"]) if len(labels) else 0
    imports = [
        {
            "at": _iso(_ms(r.info.start_time)),
            "source": r.info.run_name.removeprefix("labels ") if r.info.run_name else "",
            "labels_added": _metric(r.data.metrics, "labeled_edge_cases_added"),
            "labels_rejected": _metric(r.data.metrics, "labels_rejected"),
            "run_id": r.info.run_id,
            "mlflow_url": w.url(r),
            "flow_run_url": _flow_url(r.data.tags),
        }
        for r in data_runs
        if r.data.tags.get("edgeloop.kind") == "labels"
    ]
    return backlog, imports


def _shadow(w: _Window) -> list[dict[str, Any]]:
    from edgeloop.batch.scoring import SHADOW_EXPERIMENT

    out = []
    for r in reversed(w.runs(SHADOW_EXPERIMENT)):  # newest first: the latest decision leads
        tags, m = r.data.tags, r.data.metrics
        out.append(
            {
                "at": _iso(_ms(r.info.start_time)),
                "champion_version": tags.get("edgeloop.champion_version", ""),
                "challenger_version": tags.get("edgeloop.challenger_version", ""),
                "decision": tags.get("edgeloop.decision", ""),
                "summary": tags.get("mlflow.note.content", ""),
                "metric": r.data.params.get("metric", ""),
                **{k: _metric(m, k) for k in SHADOW_METRICS},
                "run_id": r.info.run_id,
                "mlflow_url": w.url(r),
                "flow_run_url": _flow_url(tags),
            }
        )
    return out


def _alias_events(w: _Window) -> list[dict[str, Any]]:
    from edgeloop.tracking.registry import REGISTRY_EXPERIMENT, Registry
    from edgeloop.tracking.store import run_url

    exp = w.experiment_id(REGISTRY_EXPERIMENT)
    if exp is None:  # nothing was ever registered: history() would create the experiment
        return []
    reg = Registry(w.settings)
    return [
        {
            **e.to_dict(),
            "kind": _alias_kind(e.alias, e.version, e.previous, e.reason),
            "mlflow_url": run_url(w.settings, exp, e.run_id),
        }
        for e in reg.history()
        if w.contains(_parse(e.at))
    ]


def _alias_kind(alias: str, version: str, previous: str, reason: str) -> str:
    """What an alias move means for the people reading the review."""
    from edgeloop.tracking.registry import CHALLENGER, CHAMPION, PREVIOUS

    if alias == CHAMPION:
        if reason.startswith("rollback"):
            return "rollback"
        return "promotion" if previous else "first champion"
    if alias == CHALLENGER:
        return "new challenger" if version else "challenger retired"
    if alias == PREVIOUS:
        return "previous champion kept"
    return "alias move"


# ---------------------------------------------------------------------- writing
def report_paths(settings: Settings, review: Review) -> dict[str, Path]:
    """``<reports_dir>/weekly-<YYYY-MM-DD>.md`` and ``.html`` (relative to the project root)."""
    folder = Path(settings.monitoring.reports_dir)
    if not folder.is_absolute():
        folder = settings.root / folder
    stem = folder / f"weekly-{review.date}"
    return {"markdown": stem.with_suffix(".md"), "html": stem.with_suffix(".html")}


def write_review(settings: Settings, review: Review) -> dict[str, Path]:
    """Write the markdown and the HTML report; returns their paths."""
    paths = report_paths(settings, review)
    paths["markdown"].parent.mkdir(parents=True, exist_ok=True)
    paths["markdown"].write_text(review.to_markdown(), encoding="utf-8")
    paths["html"].write_text(review.to_html(), encoding="utf-8")
    return paths


def log_review(
    settings: Settings,
    review: Review,
    paths: dict[str, str],
    *,
    flow_run_id: str = "",
    flow_run_url: str = "",
) -> str:
    """One MLflow run in ``<project>-reviews``: both files, the counts as metrics; its id."""
    import mlflow

    from edgeloop.tracking.store import ensure_experiment

    exp = ensure_experiment(settings, REVIEW_EXPERIMENT)
    counts = review.counts()
    with mlflow.start_run(experiment_id=exp, run_name=f"weekly review {review.date}") as run:
        mlflow.set_tags(
            {
                "edgeloop.kind": "weekly-review",
                "edgeloop.window_start": review.start,
                "edgeloop.window_end": review.end,
                "edgeloop.flow_run_url": flow_run_url,
                "prefect.flow_run_id": flow_run_id,
                "prefect.flow_run_url": flow_run_url,
                "mlflow.note.content": (
                    f"{counts['retrains']} retrain(s), {counts['batches_drifted']} drifted "
                    f"batch(es), {counts['quarantined_batches']} quarantined, "
                    f"{counts['promotions']} promotion(s), {counts['rollbacks']} rollback(s)"
                ),
            }
        )
        mlflow.log_params({"days": review.days})
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_path="review")
        return run.info.run_id


# ---------------------------------------------------------------------- helpers
def _utc(when: datetime) -> datetime:
    # A naive datetime is read as UTC, as every timestamp edgeloop writes is.
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


def _ms(millis: int | None) -> datetime:
    return datetime.fromtimestamp((millis or 0) / 1000, UTC)


def _parse(text: str) -> datetime | None:
    """An ISO timestamp as aware UTC; None when it is not one (such an entry is left out)."""
    try:
        return _utc(datetime.fromisoformat(text))
    except (TypeError, ValueError):
        return None


def _metric(metrics: dict[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return None if v is None or math.isnan(v) else float(v)


def _names(text: str) -> list[str]:
    """Feature names from a tag (comma- or space-separated, optionally as a JSON-ish list)."""
    cleaned = text.strip().strip("[]").replace("'", "").replace('"', "")
    return [n.strip() for n in cleaned.replace(",", " ").split() if n.strip()]


def _flow_url(tags: dict[str, str]) -> str:
    return next((tags[t] for t in FLOW_URL_TAGS if tags.get(t)), "")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


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
    return (
        f"v{m['version']} (accuracy {_num(m.get('accuracy'))}, macro-F1 {_num(m.get('macro_f1'))})"
    )


def _run_link(url: str, run_id: str) -> str:
    """A markdown link on a tracking server; the store locator as code otherwise."""
    if not url:
        return "–"
    if url.startswith(("http://", "https://")):
        return f"[{run_id[:8]}]({url})"
    return f"`{url}`"


def _flow_link(url: str) -> str:
    return f"[flow run]({url})" if url.startswith(("http://", "https://")) else "–"


def _cell(value: Any) -> str:
    # A pipe or a newline inside a cell would break the table.
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _figure() -> tuple[Any, Any]:
    # A bare Figure on the Agg canvas: no pyplot, so no global state and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _date_axis(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()
