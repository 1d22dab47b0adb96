"""Label Studio integration against a REAL server: push edge cases, annotate, pull, import.

The server runs from its own venv (``.ci/labelstudio-venv``; see ``tests/batch/labelstudio_server.py``).
If that venv cannot be made, the end-to-end test is skipped with the reason. The error-path
tests need no server.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgeloop.core.config import load_settings
from edgeloop.core.errors import EdgeloopError
from tests.conftest import edit_config, production_batch, run_cli


def _minimal_settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings of a project that is never initialised (enough to reach the server)."""
    cfg = tmp_path / "edgeloop.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "project": "nowhere",
                "schema": {"features": ["a"], "target": "label", "classes": [0, 1]},
            }
        ),
        encoding="utf-8",
    )
    return load_settings(cfg)


# ---------------------------------------------------------------------- no server needed
def test_missing_api_key_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeloop.batch.labelstudio import pull_annotations, push_tasks

    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    settings = _minimal_settings(tmp_path)
    for call in (push_tasks, pull_annotations):
        with pytest.raises(EdgeloopError, match="LABEL_STUDIO_API_KEY is not set"):
            call(settings)


def test_unreachable_server_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeloop.batch.labelstudio import push_tasks
    from edgeloop.core.errors import LabelStudioError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "some-legacy-token")
    with pytest.raises(LabelStudioError, match=rf"unreachable at http://127.0.0.1:{port}"):
        push_tasks(_minimal_settings(tmp_path))


def test_without_the_sdk_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeloop.batch.labelstudio import push_tasks

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "some-legacy-token")
    monkeypatch.setitem(sys.modules, "label_studio_sdk.client", None)  # import fails
    with pytest.raises(EdgeloopError, match="uv sync --extra labelstudio"):
        push_tasks(_minimal_settings(tmp_path))


# ---------------------------------------------------------------------- real server
@pytest.fixture(scope="module")
def ls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.batch.labelstudio_server import LabelStudioUnavailable, start_server

    workdir = tmp_path_factory.mktemp("label-studio")
    try:
        server = start_server(workdir)
    except LabelStudioUnavailable as exc:
        pytest.skip(f"Label Studio server venv unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


def _annotate(client: Any, task_id: int, choice: str, *, cancelled: bool = False) -> None:
    """What an annotator does in the UI: submit (or skip) an answer on a task."""
    client.annotations.create(
        id=task_id,
        result=[
            {
                "from_name": "label",
                "to_name": "row",
                "type": "choices",
                "value": {"choices": [choice]},
            }
        ],
        was_cancelled=cancelled,
    )


@pytest.mark.slow
# A cold machine installs Label Studio (~3 min) and sets up its database (~2 min) first.
@pytest.mark.timeout(1800)
def test_push_annotate_pull_import_on_a_real_label_studio(
    project: Path,
    tmp_path: Path,
    prefect_harness: None,
    ls_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from label_studio_sdk.client import LabelStudio

    from edgeloop.batch.annotation import label_studio_config, open_tasks, read_queue
    from edgeloop.batch.labelstudio import pull_annotations, push_tasks
    from edgeloop.core.errors import LabelStudioError
    from edgeloop.data.store import DataStore
    from edgeloop.data.versioning import DataVersioner
    from flows.annotate import annotate_import
    from flows.ingest import ingest
    from flows.retrain import retrain
    from flows.score import score

    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.token)
    title = f"edgeloop-ls-{uuid.uuid4().hex[:8]}"  # unique even on a reused server
    edit_config(project, project=title, edge_cases={"min_confidence": 0.99, "budget": 10})
    config = str(project / "edgeloop.yaml")
    settings = load_settings(config)

    # A champion scores an unlabeled batch; scoring queues its edge cases.
    assert retrain(reason="v1", config=config)["alias"] == "champion"
    batch = tmp_path / "batch.csv"
    production_batch(120, 50).to_csv(batch, index=False)
    ingest([str(batch)], config=config)
    score(config=config)
    queued = read_queue(settings)
    open_ids = set(open_tasks(settings)["row_id"].astype(str))
    assert 3 < len(open_ids) <= 10 and open_ids == set(queued["row_id"].astype(str))

    # Push: a project titled after settings.project, the open tasks with predictions.
    out = push_tasks(settings)
    assert out["tasks"] == len(open_ids)
    assert out["url"] == f"{ls_server.url}/projects/{out['project_id']}/data"
    client = LabelStudio(base_url=ls_server.url, api_key=ls_server.token)
    proj = client.projects.get(id=out["project_id"])
    assert proj.title == title
    assert "".join(proj.label_config.split()) == "".join(label_studio_config(settings).split())
    tasks = list(client.tasks.list(project=out["project_id"], fields="all"))
    by_row = {t.data["row_id"]: t for t in tasks}
    assert set(by_row) == open_ids
    predicted = queued.set_index(queued["row_id"].astype(str))["predicted"].astype(str)
    for row_id, task in by_row.items():
        (pred,) = task.predictions
        pred = pred if isinstance(pred, dict) else pred.dict()
        assert pred["model_version"] == "champion v1"
        assert pred["result"][0]["value"]["choices"] == [predicted[row_id]]
        assert set(settings.data_schema.features) <= set(task.data)

    # Someone edits the labeling config in the UI: the next push puts edgeloop's back.
    client.projects.update(
        id=out["project_id"],
        label_config=label_studio_config(settings).replace(
            "</Choices>", '<Choice value="x"/></Choices>'
        ),
    )
    # Pushing again adds nothing (row ids already in the project), here through the CLI.
    again = run_cli(
        "annotate",
        "export",
        "--to",
        "label-studio",
        "--config",
        config,
        cwd=project,
        env={"LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": ls_server.token},
    )
    assert again.returncode == 0, again.stderr
    assert f"pushed 0 task(s) to Label Studio project {out['project_id']}" in again.stdout
    assert len(list(client.tasks.list(project=out["project_id"]))) == len(open_ids)
    restored = client.projects.get(id=out["project_id"]).label_config
    assert "".join(restored.split()) == "".join(label_studio_config(settings).split())

    # Nothing answered yet: pulling says so.
    with pytest.raises(LabelStudioError, match="no completed annotation"):
        pull_annotations(settings)

    # Annotators answer three tasks and skip a fourth.
    classes = [str(c) for c in settings.data_schema.classes]
    rows = sorted(by_row)
    answers = {row_id: classes[i % len(classes)] for i, row_id in enumerate(rows[:3])}
    for row_id, choice in answers.items():
        _annotate(client, by_row[row_id].id, choice)
    _annotate(client, by_row[rows[3]].id, classes[0], cancelled=True)

    path = pull_annotations(settings)
    assert path.parent == settings.path("incoming") / "label-studio" and path.suffix == ".json"
    exported = json.loads(path.read_text(encoding="utf-8"))
    assert {t["data"]["row_id"] for t in exported} == set(answers)

    before = DataVersioner(settings).version()
    result = annotate_import(path=str(path), retrain_on_volume=False, config=config)
    assert (result["rows"], result["accepted"], result["rejected"]) == (3, 3, 0)
    assert result["data_version"] and result["data_version"] != before
    data = DataStore(settings).load_dataset().set_index("row_id")
    target = settings.data_schema.target
    # The target column is float while it holds NaN: compare as numbers (2.0 == 2).
    assert {r: data.loc[r, target] for r in answers} == {r: int(c) for r, c in answers.items()}
    assert set(open_tasks(settings)["row_id"].astype(str)) == open_ids - set(answers)

    # Pulling again finds nothing new; pushing again adds nothing.
    with pytest.raises(LabelStudioError, match="not imported yet"):
        pull_annotations(settings)
    assert push_tasks(settings)["tasks"] == 0
