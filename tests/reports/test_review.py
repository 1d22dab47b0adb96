"""The weekly review on real stores: a week of the loop, the flow, the window, an empty project.

One week is built per module (``week``): a champion, a quarantined batch and edge cases queued
before ``mid``; after it a challenger, labels, a shadow evaluation, a forced promotion, a
rollback, a rejected candidate and three monitoring runs. ``mid`` splits the week so the window
test can cut it in two with ``now=``.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgeloop.core import keys
from edgeloop.core.config import Settings, load_settings
from edgeloop.core.errors import GateError
from edgeloop.reports.result import QuarantinedBatch
from edgeloop.reports.review import NOTHING, Review, build_review
from tests.conftest import edit_config, new_project, production_batch, run_cli, small_reference

SECTIONS = (
    "## Model performance",
    "## Drift",
    "## Quarantined batches",
    "## Annotation backlog and SLA",
    "## Shadow evaluation",
    "## Promotions and rollbacks",
)
#: ``tracking.run_url`` on the embedded store: "mlflow ui -> experiment E, run R".
LOCATOR = re.compile(r"mlflow ui -> experiment (\w+), run ([0-9a-f]{32})")
MONITOR_FLOW_URL = "http://127.0.0.1:4200/runs/flow-run/00000000-0000-0000-0000-00000000000{}"


@dataclass
class Week:
    settings: Settings
    mid: datetime
    quarantined_batch: str
    monitoring_run_ids: list[str]
    ignored_monitoring_run_ids: list[str]
    labels_added: int


def _log_monitoring(
    settings: Settings, index: int, batch_id: str, share: float, status: str = "FINISHED"
) -> str:
    """A monitoring run as the monitor flow writes it (one per batch, same tags and metrics)."""
    import mlflow

    from edgeloop.tracking.store import ensure_experiment

    drifted = ["income", "score"] if share >= settings.monitoring.drift_share_threshold else []
    exp = ensure_experiment(settings, "monitoring")
    run = mlflow.start_run(experiment_id=exp, run_name=f"monitor {batch_id}")
    try:
        mlflow.set_tags(
            {
                "edgeloop.kind": "monitoring",
                "edgeloop.batch_id": batch_id,
                "edgeloop.batch_index": str(index),
                "edgeloop.drifted": str(bool(drifted)).lower(),
                "edgeloop.drifted_features": ",".join(drifted),
                keys.TAG_FLOW_RUN_URL: MONITOR_FLOW_URL.format(index),
            }
        )
        mlflow.log_metrics(
            {
                "rows": 60.0 * index,
                "labeled_rows": 0.0,
                "drift_share": share,
                "n_drifted_features": float(len(drifted)),
                "prediction_psi": 0.01 * index,
                "mean_confidence": 0.8,
                "low_confidence_share": 0.1,
                "champion_accuracy": 0.9 - 0.1 * index,
                "agreement": 0.95,
                "psi.income": 0.3 if drifted else 0.02,
                "psi.score": 0.25 if drifted else 0.01,
                "psi.age": 0.01,
            }
        )
    finally:
        mlflow.end_run(status)
    return run.info.run_id


@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Week:
    from edgeloop.batch.annotation import read_queue
    from edgeloop.batch.shadow import shadow_evaluate
    from edgeloop.core.errors import ValidationGateError
    from edgeloop.data.store import DataStore
    from edgeloop.models.promotion import promote, rollback
    from flows.annotate import annotate_import
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score

    tmp = tmp_path_factory.mktemp("review")
    # 20 trees: every retrain, model load and scoring below is several times cheaper.
    root = new_project(
        tmp,
        shadow={"min_samples": 30, "bootstrap_samples": 500},
        training={"params": {"n_estimators": 20, "n_jobs": 1}},
    )
    config = str(root / "edgeloop.yaml")
    settings = load_settings(config)

    # Before mid: the first champion, a broken export (quarantined) beside good batches.
    assert retrain(reason="first model", config=config)["alias"] == "champion"
    broken = tmp / "renamed.parquet"
    production_batch(seed=9).rename(columns={"score": "scroe"}).to_parquet(broken, index=False)
    labeled, unlabeled = tmp / "b1.csv", tmp / "u1.csv"
    small_reference(120, 50).to_csv(labeled, index=False)
    production_batch(60, 12).to_csv(unlabeled, index=False)
    with pytest.raises(ValidationGateError):
        ingest([str(broken), str(labeled), str(unlabeled)], config=config)
    score(config=config)  # queues the edge cases of the unlabeled batch
    queued = read_queue(settings)["row_id"].astype(str).tolist()
    assert queued, "the unlabeled batch should surface edge cases"

    # Timestamps have one-second resolution (ledger, alias history): keep a clear gap.
    time.sleep(1.1)
    mid = datetime.now(UTC)
    time.sleep(1.1)

    # After mid: challenger, labels, shadow, promotion, rollback, a rejected candidate.
    assert retrain(reason="new data", config=config)["alias"] == "challenger"
    later = tmp / "b2.csv"
    small_reference(150, 51).to_csv(later, index=False)
    ingest([str(later)], config=config)
    score(config=config)
    answers = tmp / "answers.csv"
    answers.write_text(
        "row_id,label\n" + "".join(f"{r},{i % 3}\n" for i, r in enumerate(queued[:5])),
        encoding="utf-8",
    )
    labels = annotate_import(path=str(answers), retrain_on_volume=False, config=config)
    shadow_evaluate(settings)
    promote(settings, force=True, reason="review test override")
    rollback(settings, "latency regression")
    edit_config(root, gates={"min_accuracy": 0.999})
    with pytest.raises(GateError):
        retrain(reason="too strict", force=True, config=config)
    ids = [b.batch_id for b in DataStore(settings).ledger() if b.status == "accepted"]
    # Batch 3 was monitored before (superseded by the later run) and a run failed (retried):
    # neither counts.
    ignored = [
        _log_monitoring(settings, 3, ids[2], 0.9),
        _log_monitoring(settings, 1, ids[0], 0.9, status="FAILED"),
    ]
    shares = [0.0, 0.5, 0.25]
    runs = [_log_monitoring(settings, i + 1, b, s) for i, (b, s) in enumerate(zip(ids, shares, strict=True))]  # fmt: skip
    broken_entry = next(e for e in DataStore(settings).ledger() if e.status == "quarantined")
    return Week(
        load_settings(config), mid, broken_entry.batch_id, runs, ignored, int(labels["accepted"])
    )


def _section(md: str, title: str) -> str:
    """The text of one ``## `` section."""
    start = md.index(title)
    end = md.find("\n## ", start + len(title))
    return md[start : end if end != -1 else None]


def _mlflow_runs(settings: Settings, kind: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import configure, experiment_name

    configure(settings)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment_name(settings, kind))
    return list(client.search_runs([exp.experiment_id], max_results=1000))


# ---------------------------------------------------------------------- the week, end to end
@pytest.mark.slow
def test_weekly_review_flow_reports_the_week(week: Week) -> None:
    from mlflow.tracking import MlflowClient

    from edgeloop.batch.annotation import sla
    from flows.weekly_review import weekly_review

    settings = week.settings
    out = weekly_review(config=str(settings.source))

    md_path, html_path = Path(out["markdown"]), Path(out["html"])
    today = datetime.now(UTC).date().isoformat()
    assert md_path == settings.root / "reports" / f"weekly-{today}.md"
    assert html_path == md_path.with_suffix(".html")
    md = md_path.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert title in md
    # Every section has something to say; the one quiet sub-list would name itself.
    assert NOTHING not in md
    c = out["counts"]
    assert (c["retrains"], c["retrains_registered"], c["retrains_rejected"]) == (3, 2, 1)
    assert (c["batches_monitored"], c["batches_drifted"]) == (3, 1)
    assert (c["quarantined_batches"], c["promotions"], c["rollbacks"]) == (1, 1, 1)
    # One by the label import (a challenger was in shadow: its evidence is refreshed before a
    # retrain may replace it), one by the explicit shadow-evaluate.
    assert c["shadow_evaluations"] == 2 and c["labels_imported"] == week.labels_added == 5

    # Performance: every retrain with its decision and the metrics of its MLflow run.
    perf = _section(md, "## Model performance")
    models, retrains = perf.split("### Retrains")
    for run in _mlflow_runs(settings, "training"):
        m, tags = run.data.metrics, run.data.tags
        row = next(line for line in retrains.splitlines() if run.info.run_id in line)
        assert f"{m['accuracy']:.4f}" in row and f"{m['macro_f1']:.4f}" in row
        assert tags["edgeloop.decision"] in row
        assert f"[flow run]({tags['prefect.flow_run_url']})" in row
        if tags["edgeloop.decision"] == "rejected":
            assert "min_accuracy" in row
    assert "| champion | v1 |" in models and "| previous-champion | v2 |" in models

    drift = _section(md, "## Drift")
    assert "3 batch(es) monitored, 1 drifted" in drift and "`income` (1)" in drift
    drifted_row = next(line for line in drift.splitlines() if week.monitoring_run_ids[1] in line)
    assert "**yes**" in drifted_row and "0.5000" in drifted_row and "income 0.300" in drifted_row
    assert f"[flow run]({MONITOR_FLOW_URL.format(2)})" in drifted_row

    quarantine = _section(md, "## Quarantined batches")
    row = next(line for line in quarantine.splitlines() if week.quarantined_batch in line)
    assert "renamed.parquet" in row and "missing columns ['score']" in row
    assert f"`data/quarantine/{week.quarantined_batch}/report.md`" in row
    assert (settings.root / "data" / "quarantine" / week.quarantined_batch / "report.md").exists()

    backlog = sla(settings).to_dict()
    annotation = _section(md, "## Annotation backlog and SLA")
    assert f"Open now: {backlog['open']} of {backlog['queued']} queued" in annotation
    assert "labeled this week: 5" in annotation and "answers.csv" in annotation

    shadow_runs = _mlflow_runs(settings, "shadow")
    assert len(shadow_runs) == 2  # the label import's refresh, then the explicit evaluation
    shadow = _section(md, "## Shadow evaluation")
    assert "| v2 | v1 |" in shadow
    for shadow_run in shadow_runs:
        assert shadow_run.info.run_id in shadow
        assert f"**{shadow_run.data.tags['edgeloop.decision']}**" in shadow
    assert "| 150 |" in shadow and "No challenger in shadow now." in shadow

    aliases = _section(md, "## Promotions and rollbacks")
    assert "| promotion | champion | v2 | v1 |" in aliases and "review test override" in aliases
    assert (
        "| rollback | champion | v1 | v2 |" in aliases and "rollback: latency regression" in aliases
    )
    assert "| first champion | champion | v1 |" in aliases

    # Every MLflow link resolves to a real run in the experiment it names.
    client = MlflowClient()
    linked = LOCATOR.findall(md)
    assert (
        len(linked) >= 3 + 3 + 1 + 1 + 1 + 6
    )  # retrains, monitoring, quarantine, labels, shadow, moves
    for exp_id, run_id in linked:
        assert client.get_run(run_id).info.experiment_id == exp_id
    assert set(week.monitoring_run_ids) <= {r for _, r in linked}
    assert not set(week.ignored_monitoring_run_ids) & {r for _, r in linked}

    # HTML: the same report, self-contained, with both charts inline.
    html = html_path.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and "<table>" in html
    assert "review test override" in html and week.quarantined_batch in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 2
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert not re.search(r'src="(?!data:)', html)  # nothing to fetch: the file is the report

    # MLflow: the review run with both files, the counts, and the way back to Prefect.
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.metrics["retrains"] == 3 and run.data.metrics["rollbacks"] == 1
    assert run.data.tags[keys.TAG_FLOW_RUN_URL].startswith("http")
    files = {a.path for a in client.list_artifacts(run.info.run_id, "review")}
    assert files == {f"review/{md_path.name}", f"review/{html_path.name}"}

    # Prefect: the report as a markdown artifact and a link to the HTML file.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect:
        arts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.data.tags["prefect.flow_run_id"]])
            )
        )
    by_key = {a.key: a for a in arts}
    assert "## Promotions and rollbacks" in by_key["weekly-review"].data
    assert html_path.resolve().as_uri() in by_key["weekly-review-html"].data


@pytest.mark.slow
def test_window_leaves_out_what_is_older_than_days(week: Week) -> None:
    settings = week.settings
    # [mid, mid + 7 days]: the first champion and the quarantined batch are older: left out.
    late = build_review(settings, now=week.mid + timedelta(days=7), days=7)
    assert [r.reason for r in late.retrains] == ["new data", "too strict"]
    assert late.quarantined == []
    assert "first champion" not in {e.kind for e in late.alias_events}
    assert {"promotion", "rollback"} <= {e.kind for e in late.alias_events}
    assert len(late.shadow) == 2 and len(late.monitoring) == 3  # label import + explicit
    assert late.annotation["surfaced_in_window"] == 0 and late.annotation["labeled_in_window"] == 5
    assert "Nothing this week: no quarantined batches." in late.to_markdown()

    # [mid - 7 days, mid]: only what happened before mid; later events are not in it either.
    early = build_review(settings, now=week.mid, days=7)
    assert [r.reason for r in early.retrains] == ["first model"]
    assert [q.batch_id for q in early.quarantined] == [week.quarantined_batch]
    assert [e.kind for e in early.alias_events] == ["first champion"]
    assert early.shadow == [] and early.monitoring == [] and early.monitoring_enabled
    assert early.annotation["surfaced_in_window"] > 0

    # A week later everything is older than the window; the backlog is still reported.
    gone = build_review(settings, now=datetime.now(UTC) + timedelta(days=8), days=7)
    assert not (gone.retrains or gone.quarantined or gone.alias_events or gone.shadow)
    assert not gone.monitoring and gone.counts()["annotation_open"] > 0
    # ... and a longer window brings it back.
    wide = build_review(settings, now=datetime.now(UTC) + timedelta(days=8), days=10)
    assert len(wide.retrains) == 3 and len(wide.quarantined) == 1


# ---------------------------------------------------------------------- an empty project
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_empty_project_report_says_nothing_this_week(project: Path) -> None:
    import json

    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import configure, experiment_name

    res = run_cli("report", "--json", cwd=project)

    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert all(v == 0 for v in out["counts"].values()), out["counts"]
    md = Path(out["markdown"]).read_text(encoding="utf-8")
    for title in SECTIONS:
        assert NOTHING in _section(md, title), title
    assert "monitoring has not run in this project" in md and "No registered model yet." in md
    html = Path(out["html"]).read_text(encoding="utf-8")
    assert html.count(NOTHING) == len(SECTIONS) and "data:image/png" not in html
    # Reading never creates an experiment (only the review's own).
    settings = load_settings(project / "edgeloop.yaml")
    configure(settings)
    client = MlflowClient()
    assert client.get_experiment_by_name(experiment_name(settings, "monitoring")) is None
    assert client.get_experiment_by_name(experiment_name(settings, "reviews")) is not None


# ---------------------------------------------------------------------- rendering
def test_links_and_cells_render_for_a_tracking_server() -> None:
    url = "http://mlflow.internal:5000/#/experiments/4/runs/" + "a" * 32
    review = Review(
        project="p",
        start="2026-03-02T09:00:00+00:00",
        end="2026-03-09T09:00:00+00:00",
        days=7,
        generated_at="2026-03-09T09:00:01+00:00",
        tracking_uri="http://mlflow.internal:5000",
        quarantined=[
            QuarantinedBatch(
                batch_id="000003-abc",
                source="x|y.csv",
                status="quarantined",
                at="2026-03-03T10:00:00+00:00",
                rows=10,
                rows_quarantined=10,
                reason="<script>alert(1)</script>\nsecond line",
                report="data/quarantine/000003-abc/report.md",
                run_id="a" * 32,
                mlflow_url=url,
                flow_run_url="http://prefect.internal/runs/flow-run/1",
            )
        ],
    )

    md = review.to_markdown()
    html = review.to_html()

    row = next(line for line in md.splitlines() if "000003-abc" in line)
    assert (
        f"[aaaaaaaa]({url})" in row and "[flow run](http://prefect.internal/runs/flow-run/1)" in row
    )
    assert "x\\|y.csv" in row and "second line" in row  # one table row, pipe escaped
    assert f'<a href="{url}">aaaaaaaa</a>' in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert review.counts()["rows_quarantined"] == 10 and review.to_dict()["counts"]["retrains"] == 0
