"""The annotation loop on real stores: surface → export → label → import → version → retrain.

One project is built per module (init, retrain a champion, ingest a batch, score it with the
``score`` flow, which also surfaces edge cases): that costs about a minute, so each test works on
its own copy of it (``scored``), made in a fraction of a second. The copy has its own data,
DVC cache and remote, git repository and MLflow database; MLflow artifacts of *new* runs land in
the original project's ``mlflow/artifacts`` (experiments store an absolute artifact location),
which no test reads.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from edgeloop.batch.annotation import export_tasks, import_labels, open_tasks, read_queue, sla
from edgeloop.batch.annotation import read_labels as read_imported
from edgeloop.core.config import Settings, load_settings
from edgeloop.core.errors import LabelFileError, LabelGateError
from edgeloop.data.readers import read_labels
from edgeloop.data.store import DataStore
from edgeloop.data.versioning import DataVersioner
from edgeloop.tracking.store import relocate
from tests.conftest import edit_config, new_project, production_batch

BUDGET = 12
#: The evaluation sample's expected size (evaluation_share 0.2 of 12, rounded): the edge cases
#: get the other 10 rows of the budget.
EVALUATION = 2
STRATEGIES = {"low_confidence", "small_margin", "disagreement"}
# Every test works on a project the retrain, ingest and score flows built (``base``).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """A project with a champion (v1) and one ingested batch scored and surfaced."""
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score

    tmp = tmp_path_factory.mktemp("annotation")
    root = new_project(tmp, edge_cases={"budget": BUDGET, "max_class_share": 0.5})
    config = str(root / "edgeloop.yaml")
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    batch = tmp / "batch.csv"
    production_batch(120, 50).to_csv(batch, index=False)
    ingest([str(batch)], config=config)
    written = score(config=config)
    assert [(w["alias"], w["version"], w["rows"]) for w in written] == [("champion", "1", 120)]
    return root


@pytest.fixture()
def scored(base: Path, tmp_path: Path) -> Settings:
    """A private copy of ``base``: each test may import labels without affecting the others."""
    root = tmp_path / "proj"
    shutil.copytree(base, root, symlinks=True, ignore=shutil.ignore_patterns("tmp", ".prefect"))
    settings = load_settings(root / "edgeloop.yaml")
    relocate(settings)  # a copied project points its MLflow store at its own artifacts
    return settings


# ---------------------------------------------------------------------- helpers
def queued_ids(settings: Settings) -> list[str]:
    return read_queue(settings)["row_id"].astype(str).tolist()


def ls_export(
    settings: Settings,
    answers: list[tuple[str, Any]],
    path: Path,
    created_at: list[str] | None = None,
) -> Path:
    """A Label Studio "JSON" export: the exported tasks, those answered with annotations."""
    tasks = json.loads(Path(export_tasks(settings, path.parent / "to-ls")["files"][0]).read_text())
    by_id = {t["data"]["row_id"]: t for t in tasks}
    out = []
    for i, (row_id, label) in enumerate(answers):
        task = dict(by_id.get(row_id) or {"data": {"row_id": row_id}, "predictions": []})
        task["id"] = 100 + i
        task["annotations"] = [
            {
                "id": 1000 + i,
                "completed_by": 7,
                "was_cancelled": False,
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "row",
                        "type": "choices",
                        "value": {"choices": [str(label)]},
                    }
                ],
                "created_at": created_at[i] if created_at else "2026-01-02T10:00:00.000000Z",
                "updated_at": "2026-01-02T10:00:00.000000Z",
            }
        ]
        out.append(task)
    # An unanswered task is exported too (no annotations): it is skipped, not rejected.
    unanswered = next(t for r, t in by_id.items() if r not in {a[0] for a in answers})
    out.append({**unanswered, "id": 99, "annotations": []})
    path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return path


def run_import(settings: Settings, path: Path, **kw: Any) -> dict[str, Any]:
    from flows.annotate import annotate_import

    return annotate_import(path=str(path), config=str(settings.source), **kw)


def targets(settings: Settings, ids: list[str]) -> dict[str, Any]:
    data = DataStore(settings).load_dataset().set_index("row_id")
    return data.loc[ids, settings.data_schema.target].to_dict()


def mlflow_label_runs(settings: Settings) -> list[Any]:
    from mlflow.tracking import MlflowClient

    from edgeloop.tracking.store import ensure_experiment

    exp = ensure_experiment(settings, "data")
    runs = MlflowClient().search_runs([exp], "tags.`edgeloop.kind` = 'labels'")
    return sorted(runs, key=lambda r: r.info.start_time)


def rejected_dir(settings: Settings, result: dict[str, Any]) -> Path:
    report = settings.root / result["report"]
    assert report.name == "report.md" and report.parent.parent == (
        settings.path("data") / "labels" / "rejected"
    )
    return report.parent


def gate_error(settings: Settings, path: Path) -> LabelGateError:
    with pytest.raises(LabelGateError) as info:
        run_import(settings, path, retrain_on_volume=False)
    return info.value


# ---------------------------------------------------------------------- queue and export
def test_score_flow_queues_at_most_budget_rows_with_reasons(scored: Settings) -> None:
    from edgeloop.batch.scoring import read_scores
    from flows.score import score

    queue = read_queue(scored)
    assert queue["row_id"].is_unique
    assert set(queue["purpose"]) <= {"edge_case", "evaluation"}
    edge = queue[queue["purpose"] == "edge_case"]
    assert 0 < len(edge) <= BUDGET - EVALUATION
    assert (edge["inclusion_prob"] == 1.0).all()
    scores = read_scores(scored, "1").set_index("row_id")
    assert set(queue["row_id"]) <= set(scores.index)
    for rec in edge.itertuples():
        assert rec.reasons and set(rec.reasons.split(";")) <= STRATEGIES, rec.reasons
        assert rec.model_version == "1"
        assert str(rec.predicted) == str(scores.loc[rec.row_id, "predicted"])
        why = set(rec.reasons.split(";"))
        if "low_confidence" in why:
            assert scores.loc[rec.row_id, "confidence"] < scored.edge_cases.min_confidence
        if "small_margin" in why:
            assert scores.loc[rec.row_id, "margin"] < scored.edge_cases.min_margin
    stamps = pd.to_datetime(queue["surfaced_at"], utc=True, format="ISO8601")
    assert stamps.notna().all()
    assert (abs(pd.Timestamp.now(tz="UTC") - stamps) < pd.Timedelta(hours=1)).all()
    cap = math.ceil((BUDGET - EVALUATION) * scored.edge_cases.max_class_share)
    assert edge["predicted"].value_counts().max() <= cap
    # The evaluation sample: other rows, no challenger yet so every eligible row alike.
    sample = queue[queue["purpose"] == "evaluation"]
    assert (sample["reasons"] == "evaluation sample").all()
    assert (sample["cluster"] == -1).all() and sample["priority"].isna().all()
    assert sample["inclusion_prob"].tolist() == pytest.approx(
        [EVALUATION / (120 - len(edge))] * len(sample)
    )
    for rec in sample.itertuples():
        assert str(rec.predicted) == str(scores.loc[rec.row_id, "predicted"])
    # Scoring again surfaces nothing new: the batch was surfaced already.
    score(config=str(scored.source))
    assert read_queue(scored)["row_id"].tolist() == queue["row_id"].tolist()


def test_export_tasks_writes_label_studio_json_and_csv(scored: Settings, tmp_path: Path) -> None:
    out = export_tasks(scored, tmp_path / "export")
    queue = read_queue(scored).set_index("row_id")
    assert out["tasks"] == len(queue)
    json_path, csv_path = map(Path, out["files"])
    assert json_path.suffix == ".json" and csv_path.suffix == ".csv"
    tasks = json.loads(json_path.read_text(encoding="utf-8"))
    assert isinstance(tasks, list) and len(tasks) == len(queue)
    features = set(scored.data_schema.features)
    for task in tasks:
        data = task["data"]
        rec = queue.loc[data["row_id"]]
        assert data["batch_id"] == rec["batch_id"]
        assert data["reasons"] == rec["reasons"] and data["reasons"]
        # The purpose is shown; the inclusion probability (how much the models disagree) not.
        assert data["purpose"] == rec["purpose"]
        assert "inclusion_prob" not in data and "inclusion_prob" not in data["row"]
        assert data["surfaced_at"] == rec["surfaced_at"]
        assert features <= set(data) and data["row"]
        (pred,) = task["predictions"]
        assert pred["model_version"] == "champion v1"
        assert pred["score"] == pytest.approx(rec["confidence"])
        (res,) = pred["result"]
        assert (res["from_name"], res["to_name"], res["type"]) == ("label", "row", "choices")
        assert res["value"]["choices"] == [str(rec["predicted"])]
    config = (json_path.parent / "label_config.xml").read_text(encoding="utf-8")
    assert '<Choices name="label" toName="row"' in config and '<Text name="row"' in config
    assert all(f'<Choice value="{c}"/>' in config for c in scored.data_schema.classes)
    csv = pd.read_csv(csv_path, dtype={"row_id": "str"})
    assert sorted(csv["row_id"]) == sorted(t["data"]["row_id"] for t in tasks)
    assert {"row_id", "batch_id", "reasons", "surfaced_at", "predicted", "label"} <= set(csv)
    assert "inclusion_prob" not in csv.columns
    assert (csv.set_index("row_id")["purpose"] == queue.loc[csv["row_id"], "purpose"]).all()
    assert csv["label"].isna().all()


def test_evaluation_sample_with_a_challenger_has_the_designs_probabilities(
    scored: Settings, tmp_path: Path
) -> None:
    """With a challenger, each sampled row's ``inclusion_prob`` is the ``q_i`` computed from both
    models' score files, over the batch's rows that are not edge cases: disagreements first
    (``evaluation_disagreements_first``); the plain design would favour them too."""
    from edgeloop.core.layout import Layout
    from edgeloop.tracking.registry import Registry
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score
    from pipelines.edge_cases import (
        comparison_weights,
        disagreements_first_probabilities,
        inclusion_probabilities,
    )
    from tests.conftest import small_reference

    config = str(scored.source)
    labeled = tmp_path / "labeled.csv"
    small_reference(150, 51).to_csv(labeled, index=False)
    ingest([str(labeled)], config=config)
    assert retrain(reason="challenger", config=config)["alias"] == "challenger"
    batch = tmp_path / "b2.csv"
    production_batch(400, 52).to_csv(batch, index=False)
    ingest([str(batch)], config=config)
    before = set(queued_ids(scored))
    # Half of the budget to the evaluation sample, a third of its weight uniform.
    edit_config(scored.root, edge_cases={"evaluation_share": 0.5, "evaluation_uniform_share": 0.3})
    score(config=config)

    queue = read_queue(scored)
    new = queue[~queue["row_id"].isin(before)]
    (batch_id,) = set(new["batch_id"])
    aliases = Registry(scored).aliases()
    layout = Layout.of(scored)
    champ = pd.read_parquet(layout.score_file(batch_id, "champion", aliases["champion"]))
    chall = pd.read_parquet(layout.score_file(batch_id, "challenger", aliases["challenger"]))
    chall = chall.set_index("row_id").loc[champ["row_id"]].reset_index()
    edge = new[new["purpose"] == "edge_case"]
    sample = new[new["purpose"] == "evaluation"]
    assert 0 < len(edge) <= BUDGET // 2 and len(sample) > 0
    eligible = ~champ["row_id"].isin(set(edge["row_id"])).to_numpy()
    disagree = (champ["predicted"].astype(str) != chall["predicted"].astype(str)).to_numpy()
    assert (eligible & disagree).any()
    w = comparison_weights(champ, chall)
    q = disagreements_first_probabilities(w, eligible, disagree, BUDGET // 2, 0.3)
    q_of = dict(zip(champ["row_id"], q, strict=True))
    assert sample["inclusion_prob"].tolist() == pytest.approx([q_of[r] for r in sample["row_id"]])
    assert sum(q) == pytest.approx(BUDGET // 2) and (q[eligible & disagree] > 0).all()
    # The sample is drawn among the disagreements while they outnumber it.
    if (eligible & disagree).sum() > BUDGET // 2:
        assert (q[eligible & ~disagree] == 0).all() and sample["row_id"].map(
            dict(zip(champ["row_id"], disagree, strict=True))
        ).all()
    assert sample["challenger_predicted"].notna().all()
    plain = inclusion_probabilities(w, eligible, BUDGET // 2, 0.3)
    assert (plain[eligible] > 0).all()
    assert plain[eligible & disagree].mean() > plain[eligible & ~disagree].mean()


# ---------------------------------------------------------------------- import: good labels
def test_import_label_studio_export_adds_versions_and_tracks(
    scored: Settings, tmp_path: Path
) -> None:
    ids = queued_ids(scored)[:3]
    before = DataVersioner(scored).version()
    assert all(pd.isna(v) for v in targets(scored, ids).values())
    export = ls_export(scored, [(ids[0], 1), (ids[1], 2), (ids[2], 0)], tmp_path / "ls.json")

    result = run_import(scored, export)

    assert (result["rows"], result["accepted"], result["rejected"]) == (3, 3, 0)
    assert result["report"] == "" and not (scored.path("data") / "labels" / "rejected").exists()
    assert "retrain" not in result  # 3 labels < retrain_after_labels (50)
    assert result["data_version"] and result["data_version"] != before
    assert DataVersioner(scored).version() == result["data_version"]
    assert DataVersioner(scored).is_clean()
    # The dataset's target is filled for exactly those rows, typed like the classes.
    assert targets(scored, ids) == {ids[0]: 1, ids[1]: 2, ids[2]: 0}
    data = DataStore(scored).load_dataset()
    assert (data["label_source"] == "annotation").sum() == 3
    # Labeled rows leave the open tasks; the others stay.
    still_open = set(open_tasks(scored)["row_id"])
    assert not still_open & set(ids) and len(still_open) == len(queued_ids(scored)) - 3
    stored = read_imported(scored)
    assert sorted(stored["row_id"]) == sorted(ids)
    assert set(stored["annotator"]) == {"7"} and set(stored["source"]) == {"ls.json"}
    # One MLflow run in the data experiment, with the counts and the new data version.
    (run,) = mlflow_label_runs(scored)
    assert run.info.run_id == result["mlflow_run_id"]
    assert run.data.metrics["labeled_edge_cases_added"] == 3
    assert run.data.metrics["labels_rejected"] == 0
    assert run.data.tags["dvc.data_version"] == result["data_version"]
    assert result["sla"]["open"] == len(queued_ids(scored)) - 3


def test_same_id_twice_with_the_same_label_is_accepted_once(
    scored: Settings, tmp_path: Path
) -> None:
    a, b = queued_ids(scored)[:2]
    export = ls_export(scored, [(a, 2), (a, 2), (b, 0)], tmp_path / "repeat.json")
    result = run_import(scored, export, retrain_on_volume=False)
    assert (result["rows"], result["accepted"], result["rejected"]) == (3, 2, 0)
    assert result["repeats_dropped"] == 1
    assert sorted(read_imported(scored)["row_id"]) == sorted([a, b])
    assert targets(scored, [a, b]) == {a: 2, b: 0}


def test_import_filled_csv(scored: Settings, tmp_path: Path) -> None:
    """The CSV export, with the label column filled in for every row, imports as is."""
    exported = Path(export_tasks(scored, tmp_path / "export", formats=("csv",))["files"][0])
    df = pd.read_csv(exported, dtype={"row_id": "str"})
    df["label"] = df["predicted"]
    answered = tmp_path / "answered.csv"
    df.to_csv(answered, index=False)
    result = import_labels(scored, answered)
    assert (result.accepted, result.rejected) == (len(df), 0)
    assert targets(scored, df["row_id"].tolist()) == dict(
        zip(df["row_id"], df["predicted"], strict=True)
    )


def test_import_partly_filled_csv_skips_blank_rows(scored: Settings, tmp_path: Path) -> None:
    exported = Path(export_tasks(scored, tmp_path / "export", formats=("csv",))["files"][0])
    df = pd.read_csv(exported, dtype={"row_id": "str"})
    df.loc[:1, "label"] = 1
    answered = tmp_path / "answered.csv"
    df.to_csv(answered, index=False)
    result = import_labels(scored, answered)
    assert (result.accepted, result.rejected) == (2, 0)


# ---------------------------------------------------------------------- import: bad labels
def check_partial_import(
    settings: Settings,
    tmp_path: Path,
    answers: list[tuple[str, Any]],
    good: dict[str, int],
    bad: dict[str, str],
) -> LabelGateError:
    """Import through the flow: good rows land, bad rows are reported, the flow fails."""
    before = DataVersioner(settings).version()
    export = ls_export(settings, answers, tmp_path / "export.json")
    raw = export.read_bytes()

    err = gate_error(settings, export)

    result = err.result
    n_bad = sum(r in bad for r, _ in answers)  # rows, not ids: a conflict rejects both rows
    assert result["accepted"] == len(good) and result["rejected"] == n_bad
    assert f"{n_bad} label row(s) rejected" in str(err) and result["report"] in str(err)
    # Good rows are added, versioned and tracked despite the failure.
    assert targets(settings, list(good)) == good
    assert sorted(read_imported(settings)["row_id"]) == sorted(good)
    assert result["data_version"] != before
    assert DataVersioner(settings).version() == result["data_version"]
    (run,) = mlflow_label_runs(settings)
    assert run.data.metrics["labeled_edge_cases_added"] == len(good)
    assert run.data.metrics["labels_rejected"] == n_bad
    # Bad rows: the original file byte for byte, the rows with their reasons, a report.
    rdir = rejected_dir(settings, result)
    assert (rdir / "original.json").read_bytes() == raw
    rows = pd.read_csv(rdir / "rejected.csv", dtype=str)
    got = {}
    for rec in rows.itertuples():
        got.setdefault(rec.row_id, []).append(rec.reason)
    assert set(got) == set(bad)
    for row_id, why in bad.items():
        assert all(why in r for r in got[row_id]), (row_id, got[row_id])
    report = (rdir / "report.md").read_text(encoding="utf-8")
    assert "export.json" in report and f"{n_bad} of {len(answers)} rows rejected" in report
    for row_id, why in bad.items():
        assert row_id in report and why in report
    # Nothing lost: rejected ids that were queued stay open for another try.
    queued = set(queued_ids(settings))
    assert {r for r in bad if r in queued} <= set(open_tasks(settings)["row_id"])
    return err


def test_label_outside_the_class_set_is_rejected(scored: Settings, tmp_path: Path) -> None:
    a, b, c = queued_ids(scored)[:3]
    err = check_partial_import(
        scored,
        tmp_path,
        [(a, 1), (b, 7), (c, "cat")],
        good={a: 1},
        bad={b: "label not in the class set", c: "label not in the class set"},
    )
    assert "label" in str(err)


def test_label_for_an_id_never_queued_is_rejected(scored: Settings, tmp_path: Path) -> None:
    a = queued_ids(scored)[0]
    data = DataStore(scored).load_dataset()
    not_queued = next(r for r in data["row_id"] if r not in set(queued_ids(scored)))
    check_partial_import(
        scored,
        tmp_path,
        [(a, 0), (not_queued, 1), ("no-such-row", 2)],
        good={a: 0},
        bad={not_queued: "id was never queued", "no-such-row": "id was never queued"},
    )
    # The reference row that was not queued keeps its own label.
    assert targets(scored, [not_queued])[not_queued] == int(
        data.set_index("row_id").loc[not_queued, "label"]
    )


def test_conflicting_labels_for_one_id_are_both_rejected(scored: Settings, tmp_path: Path) -> None:
    a, b = queued_ids(scored)[:2]
    err = check_partial_import(
        scored,
        tmp_path,
        [(a, 1), (a, 2), (b, 0)],
        good={b: 0},
        bad={a: "conflicting"},
    )
    rows = pd.read_csv(rejected_dir(scored, err.result) / "rejected.csv", dtype=str)
    assert sorted(rows["label"]) == ["1", "2"]
    assert pd.isna(targets(scored, [a])[a])


def test_all_rows_bad_adds_no_label_and_versions_the_rejects(
    scored: Settings, tmp_path: Path
) -> None:
    a = queued_ids(scored)[0]
    before = DataVersioner(scored).version()
    export = ls_export(scored, [(a, 9)], tmp_path / "all-bad.json")
    err = gate_error(scored, export)
    assert (err.result["accepted"], err.result["rejected"]) == (0, 1)
    # The rejected file is kept in data/ (nothing lost), so it is a new version, and clean.
    assert err.result["data_version"] == DataVersioner(scored).version() != before
    assert DataVersioner(scored).is_clean()
    assert read_imported(scored).empty
    assert (rejected_dir(scored, err.result) / "original.json").read_bytes() == export.read_bytes()


# ---------------------------------------------------------------------- import: unreadable
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("object.json", '{"data": {"row_id": "x"}}', "a Label Studio export is a JSON list"),
        ("labels.txt", "row_id,label\nx,1\n", "unsupported format '.txt'"),
        ("nolabel.csv", "row_id,answer\nx,1\n", "CSV lacks column(s) ['label']"),
        ("broken.json", '[{"data": ', "not valid JSON"),
        ("tasks.json", '[{"row_id": "x"}]', "is not a Label Studio task"),
        ("noid.json", '[{"data": {"id": 3}, "annotations": []}]', "has no data.row_id"),
        ("empty.json", "[]", "empty export"),
        ("header.csv", "row_id,label\n", "empty export"),
        ("blank.csv", "", "not a readable CSV"),
    ],
)
def test_unreadable_export_is_a_label_file_error(
    scored: Settings, tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(LabelFileError) as info:
        read_labels(path)
    assert str(path) in str(info.value) and message in str(info.value)
    with pytest.raises(LabelFileError, match="empty export" if "empty" in message else None):
        import_labels(scored, path)
    assert not (scored.path("data") / "labels").exists()


def test_unreadable_export_fails_the_flow_and_changes_nothing(
    scored: Settings, tmp_path: Path
) -> None:
    before = DataVersioner(scored).version()
    path = write(tmp_path / "object.json", "{}")
    with pytest.raises(LabelFileError) as info:
        run_import(scored, path)
    assert str(path) in str(info.value) and "JSON list of tasks" in str(info.value)
    assert DataVersioner(scored).version() == before
    assert not (scored.path("data") / "labels").exists()
    assert mlflow_label_runs(scored) == []


def test_export_without_any_annotation_is_a_label_file_error(
    scored: Settings, tmp_path: Path
) -> None:
    tasks = json.loads(Path(export_tasks(scored, tmp_path / "x")["files"][0]).read_text())
    path = write(tmp_path / "unanswered.json", json.dumps(tasks))
    with pytest.raises(LabelFileError, match="no completed annotation"):
        read_labels(path)


# ---------------------------------------------------------------------- SLA
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def test_sla_from_surfaced_and_labeled_times(scored: Settings, tmp_path: Path) -> None:
    # Surfaced at T0, except one row surfaced a day earlier.
    qfile = next((scored.path("data") / "annotation" / "queue").glob("*.parquet"))
    queue = pd.read_parquet(qfile)
    queue["surfaced_at"] = iso(T0)
    queue.loc[len(queue) - 1, "surfaced_at"] = iso(T0 - timedelta(hours=24))
    queue.to_parquet(qfile, index=False)
    ids = queue["row_id"].tolist()
    n = len(ids)
    assert n >= 6
    # Four labeled 1 h, 2 h, 10 h and 100 h after surfacing (the SLA is 3 days = 72 h).
    hours = [1, 2, 10, 100]
    export = ls_export(
        scored,
        [(r, 0) for r in ids[:4]],
        tmp_path / "timed.json",
        created_at=[iso(T0 + timedelta(hours=h)).replace("+00:00", "Z") for h in hours],
    )
    assert import_labels(scored, export).accepted == 4
    assert scored.annotation.sla_days == 3.0

    early = sla(scored, now=T0 + timedelta(hours=48))
    assert early.queued == n and early.labeled == 4 and early.open == n - 4
    assert early.oldest_open_hours == 72.0  # the row surfaced at T0 - 24 h: not over yet
    assert early.median_hours_to_label == 6.0
    assert early.p90_hours_to_label == pytest.approx(73.0)  # 10 + 0.7 * (100 - 10)
    assert early.within_sla_share == 0.75  # the 100 h label missed
    assert early.sla_days == 3.0
    # 72 h is not past the SLA, but past 80 % of it (57.6 h): at risk, that one row only.
    assert (early.sla_state, early.at_risk_open, early.sla_warning_hours) == ("at_risk", 1, 57.6)
    assert "at risk" in early.alert() and "3.0 of 3 days" in early.alert()
    assert sla(scored, now=T0 + timedelta(hours=1)).sla_state == "ok"
    assert sla(scored, now=T0 + timedelta(hours=1)).alert() == ""

    late = sla(scored, now=T0 + timedelta(hours=80))
    assert late.oldest_open_hours == 104.0
    assert late.sla_state == "breached" and late.at_risk_open == n - 4
    # Every open row is now older than 72 h: each counts as a miss.
    assert late.within_sla_share == round(3 / (4 + (n - 4)), 4)
    assert late.median_hours_to_label == 6.0  # labeled items do not age


def test_sla_without_a_queue(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    shutil.copy(base / "edgeloop.yaml", root / "edgeloop.yaml")
    out = sla(load_settings(root / "edgeloop.yaml"), now=T0)
    assert out.queued == out.open == 0 and out.within_sla_share is None


def test_sla_counts_an_item_labeled_at_surfacing_as_within(
    scored: Settings, tmp_path: Path
) -> None:
    qfile = next((scored.path("data") / "annotation" / "queue").glob("*.parquet"))
    queue = pd.read_parquet(qfile)
    queue["surfaced_at"] = iso(T0)
    queue.to_parquet(qfile, index=False)
    row = queue["row_id"][0]
    export = ls_export(scored, [(row, 1)], tmp_path / "fast.json", created_at=[iso(T0)])
    import_labels(scored, export)
    out = sla(scored, now=T0 + timedelta(hours=72))
    assert out.median_hours_to_label == 0.0
    assert out.oldest_open_hours == 72.0 and out.within_sla_share == 1.0


# ---------------------------------------------------------------------- label-volume retrain
def test_label_volume_starts_a_retrain(scored: Settings, tmp_path: Path) -> None:
    edit_config(scored.root, annotation={"retrain_after_labels": 3})
    settings = load_settings(scored.source)
    assert settings.annotation.retrain_after_labels == 3
    ids = queued_ids(settings)
    # Two labels: not enough yet.
    first = run_import(
        settings, ls_export(settings, [(ids[0], 1), (ids[1], 2)], tmp_path / "a.json")
    )
    assert first["labels_since_retrain"] == 2 and "retrain" not in first
    # One more: three since the last retrain, whatever the import it came with.
    second = run_import(settings, ls_export(settings, [(ids[2], 0)], tmp_path / "b.json"))
    assert second["labels_since_retrain"] == 3
    retrain = second["retrain"]
    assert "label volume" in retrain["reason"] and "3 new labels" in retrain["reason"]
    assert retrain["status"] in ("registered", "rejected")
    assert retrain["data_version"] == second["data_version"]
    # The retrain counts as decided: the counter starts again from zero.
    from edgeloop.batch.annotation import labels_since_last_retrain

    assert labels_since_last_retrain(settings) == 0


def test_suspect_labels_are_flagged_reviewed_left_out_and_confirmed(
    scored: Settings, tmp_path: Path
) -> None:
    """Every queued row labeled wrong: the check flags some, writes them under
    data/label_quality/, the training view leaves them out, exports ask for a review, and a
    new answer for a row confirms it."""
    from edgeloop.batch.annotation import review_tasks
    from edgeloop.batch.label_quality import check_label_quality, read_suspects
    from tests.conftest import small_reference

    truth = small_reference(120, 50)  # production_batch(120, 50), with its labels
    data = DataStore(scored).load_dataset().set_index("row_id")
    ids = queued_ids(scored)
    pos = {r: int(r.rsplit("-", 1)[1]) for r in ids}
    assert all(data.loc[r, "income"] == truth["income"][pos[r]] for r in ids)
    wrong = {r: (int(truth["label"][pos[r]]) + 1) % 3 for r in ids}
    csv = tmp_path / "wrong.csv"
    pd.DataFrame({"row_id": ids, "label": [wrong[r] for r in ids]}).to_csv(csv, index=False)
    assert import_labels(scored, csv).accepted == len(ids)

    first = check_label_quality(scored)

    assert first.scored == len(data.dropna(subset=["label"])) + len(ids)
    assert first.suspects >= 1 and first.new_suspects == first.suspects and first.confirmed == 0
    assert first.path == "data/label_quality/000001.parquet"
    state = read_suspects(scored)
    assert set(state["status"]) == {"suspect"} and state["flagged_at"].notna().all()
    flagged_queued = [r for r in state["row_id"] if r in pos]
    assert flagged_queued, "no wrong annotation flagged"
    view, left_out = DataStore(scored).load_training_dataset()
    assert left_out == first.suspects
    assert view.set_index("row_id").loc[flagged_queued, "label"].isna().all()
    # Review tasks: the queued suspects, the model's answer pre-filled, what was given said.
    review = review_tasks(scored)
    assert sorted(review["row_id"]) == sorted(flagged_queued)
    assert (
        set(review["purpose"]) == {"review"}
        and review["reasons"].str.startswith("review: labeled").all()
    )
    exported = export_tasks(scored, tmp_path / "export", formats=("json",))
    assert exported["review_tasks"] == len(flagged_queued)
    tasks = json.loads(Path(exported["files"][0]).read_text())
    assert {t["data"]["row_id"] for t in tasks if t["data"]["purpose"] == "review"} == set(
        flagged_queued
    )

    # A person answers the review (here: the truth): the rows are confirmed, trained on again.
    fixed = tmp_path / "review.csv"
    answers = [int(truth["label"][pos[r]]) for r in flagged_queued]
    pd.DataFrame({"row_id": flagged_queued, "label": answers}).to_csv(fixed, index=False)
    assert import_labels(scored, fixed).accepted == len(flagged_queued)
    second = check_label_quality(scored)
    assert second.path == "data/label_quality/000002.parquet"
    state = read_suspects(scored).set_index("row_id")
    assert (state.loc[flagged_queued, "status"] == "confirmed").all()
    assert second.confirmed >= len(flagged_queued)
    assert not set(flagged_queued) & DataStore(scored).open_suspects()
    assert targets(scored, flagged_queued) == dict(zip(flagged_queued, answers, strict=True))
    assert not len(review_tasks(scored)[lambda t: t["row_id"].isin(flagged_queued)])
    edit_config(scored.root, annotation={"exclude_suspects": False})
    relaxed = load_settings(scored.root / "edgeloop.yaml")
    assert DataStore(relaxed).load_training_dataset()[1] == 0


class _Receiver:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        bodies: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                bodies.append(json.loads(self.rfile.read(size)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies = bodies
        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_sla_at_risk_emits_an_event_and_tells_a_prefect_notification_block(
    scored: Settings,
) -> None:
    """A Prefect ``custom-webhook`` block pointed at a local receiver is told once when the SLA
    becomes at risk, once when it is breached, not again while nothing changes."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from flows._common import announce_sla

    receiver = _Receiver()
    try:
        CustomWebhookNotificationBlock(
            name="edgeloop-sla",
            url=receiver.url,
            json_data={"text": "{{subject}}", "detail": "{{body}}"},
        ).save("sla-test", overwrite=True)
        edit_config(scored.root, annotation={"sla_notify": "custom-webhook/sla-test"})
        settings = load_settings(scored.root / "edgeloop.yaml")
        qfile = next((settings.path("data") / "annotation" / "queue").glob("*.parquet"))
        queue = pd.read_parquet(qfile)
        queue["surfaced_at"] = iso(T0)
        queue.to_parquet(qfile, index=False)

        ok = announce_sla(settings, sla(settings, now=T0 + timedelta(hours=10)))
        assert ok["state"] == "ok" and not ok["event"] and not receiver.bodies
        risky = announce_sla(settings, sla(settings, now=T0 + timedelta(hours=60)))
        assert (
            risky["changed"] and risky["event"] and risky["notified"] == "custom-webhook/sla-test"
        )
        (first,) = receiver.bodies
        assert "labeling SLA at risk" in first["detail"] and settings.project in first["text"]
        again = announce_sla(settings, sla(settings, now=T0 + timedelta(hours=61)))
        assert not again["changed"] and len(receiver.bodies) == 1  # said once
        broken = announce_sla(settings, sla(settings, now=T0 + timedelta(hours=80)))
        assert broken["event"] and "SLA breached" in receiver.bodies[-1]["detail"]
        assert len(receiver.bodies) == 2
    finally:
        receiver.close()
    # A block that cannot be reached is reported, not raised.
    edit_config(scored.root, annotation={"sla_notify": "custom-webhook/no-such-block"})
    settings = load_settings(scored.root / "edgeloop.yaml")
    failed = announce_sla(settings, sla(settings, now=T0 + timedelta(hours=10)))
    failed = announce_sla(settings, sla(settings, now=T0 + timedelta(hours=60)))
    assert failed["event"] and not failed["notified"] and "no-such-block" in failed["notify_error"]
