"""Labels for a regression target on real stores: queue → export (CSV, Label Studio JSON and
labeling config) → numeric labels back → rejected report → dataset; suspect labels.

One project per module (init on ``housing_reference``, retrain a champion, ingest and score an
unlabeled batch with the real flows, which queue its edge cases); each test works on a copy.
"""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from edgeloop.batch.annotation import (
    export_tasks,
    label_studio_config,
    label_studio_tasks,
    open_tasks,
    read_queue,
    review_tasks,
)
from edgeloop.core.config import Settings, TrainingSettings, load_settings
from edgeloop.core.errors import LabelGateError
from edgeloop.data.store import DataStore
from edgeloop.tracking.store import relocate
from pipelines.label_quality import precision_recall, score_labels
from pipelines.labels import labels_from_json
from tests.conftest import edit_config, housing_reference, housing_schema, new_project

pytestmark = pytest.mark.slow
BUDGET = 12


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """A regression project with a champion (v1) and one unlabeled batch scored and queued."""
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score

    tmp = tmp_path_factory.mktemp("regression-labels")
    root = new_project(
        tmp,
        reference=housing_reference(),
        target="price",
        edge_cases={"budget": BUDGET, "min_confidence": 0.95},
    )
    config = str(root / "edgeloop.yaml")
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    batch = tmp / "batch.csv"
    housing_reference(120, seed=9, start="2025-03-01").drop(columns=["price"]).to_csv(
        batch, index=False
    )
    ingest([str(batch)], config=config)
    assert [w["rows"] for w in score(config=config)] == [120]
    return root


@pytest.fixture()
def scored(base: Path, tmp_path: Path) -> Settings:
    root = tmp_path / "proj"
    shutil.copytree(base, root, symlinks=True, ignore=shutil.ignore_patterns("tmp", ".prefect"))
    settings = load_settings(root / "edgeloop.yaml")
    relocate(settings)
    return settings


def queued_ids(settings: Settings) -> list[str]:
    return read_queue(settings)["row_id"].astype(str).tolist()


def run_import(settings: Settings, path: Path) -> dict[str, Any]:
    from flows.annotate import annotate_import

    return annotate_import(path=str(path), config=str(settings.source), retrain_on_volume=False)


def targets(settings: Settings, ids: list[str]) -> dict[str, Any]:
    data = DataStore(settings).load_dataset().set_index("row_id")
    return data.loc[ids, settings.data_schema.target].to_dict()


def number_export(tasks: list[dict[str, Any]], answers: dict[str, Any], path: Path) -> Path:
    """Label Studio's JSON export of ``tasks`` with a Number answer on those in ``answers``
    (the shape Label Studio 1.23 exports for a ``<Number>`` control), one task unanswered."""
    out = []
    for i, task in enumerate(tasks):
        row_id = task["data"]["row_id"]
        done = row_id in answers
        result = [
            {
                "id": f"r{i}",
                "from_name": "label",
                "to_name": "row",
                "type": "number",
                "origin": "manual",
                "value": {"number": answers.get(row_id)},
            }
        ]
        out.append(
            {
                **task,
                "id": 200 + i,
                "annotations": [
                    {
                        "id": 3000 + i,
                        "completed_by": 4,
                        "was_cancelled": False,
                        "result": result,
                        "created_at": "2026-01-02T10:00:00.000000Z",
                        "updated_at": "2026-01-02T10:00:00.000000Z",
                        "lead_time": 3.2,
                    }
                ]
                if done
                else [],
            }
        )
    path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- queue and export
def test_queue_and_exports_show_the_champions_value_and_spread(
    scored: Settings, tmp_path: Path
) -> None:
    queue = read_queue(scored)
    assert 8 <= len(queue) <= BUDGET
    values = pd.to_numeric(queue["predicted"])
    assert values.notna().all() and (values > 0).all()  # prices, not classes
    assert queue["spread"].notna().all() and (queue["spread"] >= 0).all()

    written = export_tasks(scored, tmp_path / "out")
    json_file, csv_file = (Path(p) for p in written["files"])
    tasks = json.loads(json_file.read_text(encoding="utf-8"))
    by_row = {t["data"]["row_id"]: t for t in tasks}
    assert set(by_row) == set(queue["row_id"].astype(str))
    q = queue.set_index(queue["row_id"].astype(str))
    for row_id, task in by_row.items():
        (prediction,) = task["predictions"]
        (result,) = prediction["result"]
        assert result["type"] == "number" and result["from_name"] == "label"
        assert result["value"]["number"] == pytest.approx(float(q.loc[row_id, "predicted"]))
        assert task["data"]["spread"] == pytest.approx(q.loc[row_id, "spread"])
        assert task["data"]["champion"].startswith("champion: ")
    config = (tmp_path / "out" / "label_config.xml").read_text(encoding="utf-8")
    assert config == label_studio_config(scored)
    assert '<Number name="label" toName="row" min="0" max="920"' in config
    assert "<Choices" not in config
    with csv_file.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {"predicted", "spread", "label"} <= set(rows[0])
    assert float(rows[0]["predicted"]) > 0 and float(rows[0]["spread"]) >= 0


# ---------------------------------------------------------------------- import
def test_numeric_labels_are_accepted_and_bad_ones_reported_by_row_and_value(
    scored: Settings, tmp_path: Path
) -> None:
    a, b, c, d, e = queued_ids(scored)[:5]
    sheet = tmp_path / "filled.csv"
    pd.DataFrame(
        {
            "row_id": [a, b, c, d, e],
            # 2 good (one written as text with spaces), not a number, too high, below zero.
            "label": ["312.5", " 280 ", "about 300", "5000", "-4"],
        }
    ).to_csv(sheet, index=False)
    with pytest.raises(LabelGateError) as info:
        run_import(scored, sheet)
    result = info.value.result
    assert (result["rows"], result["accepted"], result["rejected"]) == (5, 2, 3)
    assert targets(scored, [a, b]) == {a: 312.5, b: 280.0}
    data = DataStore(scored).load_dataset()
    assert data["price"].dtype == "float64"
    assert all(pd.isna(v) for v in targets(scored, [c, d, e]).values())
    rejected = pd.read_csv(scored.root / Path(result["report"]).parent / "rejected.csv")
    reasons = dict(zip(rejected["row_id"], rejected["reason"], strict=True))
    assert reasons == {
        c: "label is not a number",
        d: "label outside schema.target_range",
        e: "label outside schema.target_range",
    }
    given = dict(zip(rejected["row_id"], rejected["label"].astype(str), strict=True))
    # What was given, nothing lost (text starting with "-" is escaped for spreadsheets).
    assert given == {c: "about 300", d: "5000", e: "'-4"}
    report = (scored.root / result["report"]).read_text(encoding="utf-8")
    assert f"| {c} | about 300 | label is not a number |" in report
    assert f"| {d} | 5000 | label outside schema.target_range |" in report
    # The original file is kept beside the report.
    assert (scored.root / Path(result["report"]).parent / "original.csv").exists()


def test_label_studio_number_export_is_imported(scored: Settings, tmp_path: Path) -> None:
    tasks = label_studio_tasks(open_tasks(scored), scored)
    ids = [t["data"]["row_id"] for t in tasks]
    answers = {ids[0]: 250.75, ids[1]: 199, ids[2]: 1e6}
    export = number_export(tasks, answers, tmp_path / "ls.json")
    parsed = labels_from_json(export.read_text(encoding="utf-8"), export)
    assert dict(zip(parsed["row_id"], parsed["label"], strict=True)) == answers
    with pytest.raises(LabelGateError) as info:
        run_import(scored, export)
    result = info.value.result
    assert (result["rows"], result["accepted"], result["rejected"]) == (3, 2, 1)
    assert targets(scored, ids[:2]) == {ids[0]: 250.75, ids[1]: 199.0}
    assert set(open_tasks(scored)["row_id"].astype(str)) == set(ids) - set(ids[:2])


# ---------------------------------------------------------------------- suspect labels
def test_regression_suspects_are_the_corrupted_labels() -> None:
    """cleanlab's regression quality score plus the residual rule, on cross-validated
    predictions of the project's own regressor: the wrong prices are found."""
    frame = housing_reference(400, seed=11)
    rng = np.random.default_rng(3)
    wrong = np.zeros(len(frame), dtype=bool)
    wrong[rng.choice(len(frame), 20, replace=False)] = True
    shift = rng.choice([-1.0, 1.0], 20) * rng.uniform(150, 300, 20)
    frame.loc[wrong, "price"] = (frame.loc[wrong, "price"] + shift).clip(lower=1.0)
    frame["row_id"] = [f"r{i}" for i in range(len(frame))]
    training = TrainingSettings(
        estimator="sklearn.ensemble.RandomForestRegressor",
        params={"n_estimators": 100, "n_jobs": -1},
    )
    found = score_labels(frame, housing_schema(), training, folds=3, seed=0)
    precision, recall = precision_recall(found.rows["suspect"], wrong)
    assert precision >= 0.7 and recall >= 0.9, (precision, recall)
    rows = found.rows.set_index("row_id")
    # Suspects score lower on cleanlab's quality than the clean rows.
    assert rows["quality"][wrong].median() < rows["quality"][~wrong].median() / 10
    assert rows["p_given"].isna().all() and found.classes == []
    # Clean labels: almost nothing flagged.
    clean = score_labels(
        housing_reference(400, seed=11).assign(row_id=frame["row_id"]),
        housing_schema(),
        training,
        folds=3,
        seed=0,
    )
    assert clean.rows["suspect"].mean() < 0.02


def test_suspect_check_after_an_import_flags_a_wrong_price_for_review(
    scored: Settings, tmp_path: Path
) -> None:
    edit_config(scored.root, annotation={"suspect_max_rows": 1000})
    ids = queued_ids(scored)
    queue = read_queue(scored).set_index("row_id")
    # Every queued row labeled near the champion's value, one of them absurdly (but in range).
    labels = {r: round(float(queue.loc[r, "predicted"]), 2) for r in ids}
    labels[ids[0]] = 900.0 if labels[ids[0]] < 450 else 5.0
    sheet = tmp_path / "labels.csv"
    pd.DataFrame({"row_id": list(labels), "label": list(labels.values())}).to_csv(
        sheet, index=False
    )
    result = run_import(scored, sheet)
    assert result["accepted"] == len(ids) and result["rejected"] == 0
    quality = result["label_quality"]
    assert quality["scored"] >= 300 and quality["suspects"] >= 1, quality
    review = review_tasks(scored)
    assert ids[0] in set(review["row_id"].astype(str))
    reason = review.set_index(review["row_id"].astype(str)).loc[ids[0], "reasons"]
    assert reason.startswith(f"review: labeled {labels[ids[0]]}, the model says ")
    assert "(nan)" not in reason


# ---------------------------------------------------------------------- real Label Studio
@pytest.fixture(scope="module")
def ls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.batch.labelstudio_server import LabelStudioUnavailable, start_server

    try:
        server = start_server(tmp_path_factory.mktemp("label-studio"))
    except LabelStudioUnavailable as exc:
        pytest.skip(f"Label Studio server venv unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


# A cold machine installs Label Studio (~3 min) and sets up its database (~2 min) first.
@pytest.mark.timeout(1800)
def test_number_round_trip_on_a_real_label_studio(
    scored: Settings, ls_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from label_studio_sdk.client import LabelStudio

    from edgeloop.batch.labelstudio import pull_annotations, push_tasks

    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.token)
    title = f"edgeloop-reg-{uuid.uuid4().hex[:8]}"
    edit_config(scored.root, project=title)
    settings = load_settings(scored.source)
    out = push_tasks(settings)
    assert out["tasks"] == len(queued_ids(settings))
    client = LabelStudio(base_url=ls_server.url, api_key=ls_server.token)
    # Label Studio accepted the Number config and the number pre-annotations as they are.
    config = client.projects.get(id=out["project_id"]).label_config
    assert "".join(config.split()) == "".join(label_studio_config(settings).split())
    tasks = list(client.tasks.list(project=out["project_id"], fields="all"))
    queue = read_queue(settings).set_index("row_id")
    for task in tasks:
        (pred,) = task.predictions
        pred = pred if isinstance(pred, dict) else pred.dict()
        expected = float(queue.loc[task.data["row_id"], "predicted"])
        assert pred["result"][0]["value"]["number"] == pytest.approx(expected)
    answers = {tasks[0].data["row_id"]: 333.25, tasks[1].data["row_id"]: 2000.0}
    for task in tasks[:2]:
        client.annotations.create(
            id=task.id,
            result=[
                {
                    "from_name": "label",
                    "to_name": "row",
                    "type": "number",
                    "value": {"number": answers[task.data["row_id"]]},
                }
            ],
        )
    path = pull_annotations(settings)
    with pytest.raises(LabelGateError) as info:
        run_import(settings, path)
    result = info.value.result
    assert (result["rows"], result["accepted"], result["rejected"]) == (2, 1, 1)
    first, second = answers
    assert targets(settings, [first]) == {first: 333.25}
    rejected = pd.read_csv(settings.root / Path(result["report"]).parent / "rejected.csv")
    assert rejected[["row_id", "label", "reason"]].values.tolist() == [
        [second, 2000.0, "label outside schema.target_range"]
    ]
