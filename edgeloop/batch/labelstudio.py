"""Label Studio as the annotation front end: push open edge cases, pull completed annotations.

Talks to a running Label Studio server through ``label-studio-sdk`` 2.x (the ``labelstudio``
extra). Connection from the environment:

- ``LABEL_STUDIO_URL``: the server (default ``http://127.0.0.1:8080``);
- ``LABEL_STUDIO_API_KEY``: an access token (Account & Settings in Label Studio; a legacy token
  or a personal access token, the SDK handles both). Required.

The project is found by its title, ``settings.project``; it is created on first push and its
labeling config is kept equal to :func:`edgeloop.batch.annotation.label_studio_config`. A task is
never imported twice: rows whose ``row_id`` is already a task of the project are skipped.
``pull_annotations`` writes Label Studio's own JSON export format, so the file goes through the
same import path as a hand-made export (``edgeloop annotate import FILE``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from edgeloop.batch.annotation import (
    label_studio_config,
    label_studio_tasks,
    open_tasks,
    read_labels,
)
from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError, LabelStudioError

if TYPE_CHECKING:
    from label_studio_sdk.client import LabelStudio
    from label_studio_sdk.types.import_api_request import ImportApiRequest

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "LABEL_STUDIO_URL"
KEY_ENV = "LABEL_STUDIO_API_KEY"
#: Tasks per import request (Label Studio accepts far more; this keeps requests small).
IMPORT_CHUNK = 500
PAGE_SIZE = 1000


def server_url() -> str:
    return (os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def connect(timeout: float = 60.0) -> LabelStudio:
    """An SDK client for ``$LABEL_STUDIO_URL`` with ``$LABEL_STUDIO_API_KEY``."""
    try:
        # lazy: label-studio-sdk is the optional `labelstudio` extra; without it, a clear error
        from label_studio_sdk.client import LabelStudio
    except ImportError:
        raise EdgeloopError(
            "Label Studio support needs label-studio-sdk: install the extra: uv sync --extra labelstudio"
        ) from None
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise EdgeloopError(
            f"{KEY_ENV} is not set: export {KEY_ENV}=<your access token> "
            f"(Label Studio > Account & Settings), and {URL_ENV} if the server is not at {DEFAULT_URL}"
        )
    url = server_url()
    with _errors(url, "connect"):
        # An expired personal access token fails here already (the SDK decodes it).
        return LabelStudio(base_url=url, api_key=key, timeout=timeout)  # type: ignore[no-untyped-call]


@contextmanager
def _errors(url: str, doing: str) -> Iterator[None]:
    """Turn transport and API failures into one clear LabelStudioError."""
    # lazy: the SDK (optional `labelstudio` extra) and httpx, its transport; connect() ran first
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except EdgeloopError:
        raise
    except httpx.TransportError as exc:
        raise LabelStudioError(
            f"Label Studio is unreachable at {url} ({type(exc).__name__}: {exc}) while trying to "
            f"{doing}; is the server running? Set {URL_ENV} to its address"
        ) from None
    except ApiError as exc:
        status = getattr(exc, "status_code", None)
        body = getattr(exc, "body", None)
        hint = ""
        if status in (401, 403):
            hint = f" (check {KEY_ENV}: the token was refused)"
        raise LabelStudioError(
            f"Label Studio at {url} refused to {doing}: HTTP {status}{hint}: {_short(body)}"
        ) from None
    except Exception as exc:
        # The SDK raises plain errors for some failures (e.g. an expired token, a bad JWT).
        if type(exc).__module__.startswith(("label_studio_sdk", "jwt")):
            raise LabelStudioError(
                f"Label Studio at {url}: could not {doing}: {type(exc).__name__}: {exc}"
            ) from None
        raise


def _short(body: Any, limit: int = 500) -> str:
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def find_project(client: LabelStudio, title: str) -> Any | None:
    """The project titled exactly ``title`` (the lowest id if several), or None."""
    # The title filter is "contains, case-insensitive" where supported: match exactly here.
    projects: Iterable[Any] = client.projects.list(title=title, page_size=PAGE_SIZE)
    found = [p for p in projects if p.title == title]
    return min(found, key=lambda p: p.id) if found else None


def ensure_project(client: LabelStudio, settings: Settings) -> tuple[int, bool]:
    """Create the project or bring its labeling config up to date; (id, created)."""
    config = label_studio_config(settings)
    project = find_project(client, settings.project)
    if project is None:
        created = client.projects.create(
            title=settings.project,
            label_config=config,
            description="Edge cases surfaced by edgeloop; each task carries the champion's "
            "answer as a prediction.",
        )
        # The server always assigns an id; the SDK types it as optional.
        return int(cast(int, created.id)), True
    if _norm(_get(project, "label_config") or "") != _norm(config):
        client.projects.update(id=project.id, label_config=config)
    return int(project.id), False


def _norm(xml: str) -> str:
    return "".join(xml.split())


def existing_row_ids(client: LabelStudio, project_id: int) -> set[str]:
    """``data.row_id`` of every task already in the project."""
    ids: set[str] = set()
    tasks: Iterable[Any] = client.tasks.list(
        project=project_id, fields="task_only", page_size=PAGE_SIZE
    )
    for task in tasks:
        row_id = (_get(task, "data") or {}).get("row_id")
        if row_id is not None:
            ids.add(str(row_id))
    return ids


def project_url(project_id: int) -> str:
    return f"{server_url()}/projects/{project_id}/data"


def push_tasks(settings: Settings) -> dict[str, Any]:
    """Create/update the project and import the open edge cases it does not hold yet.

    Returns ``{"tasks": <imported now>, "project_id": ..., "url": ...}``.
    """
    client = connect()
    url = server_url()
    with _errors(url, f"set up project {settings.project!r}"):
        project_id, _ = ensure_project(client, settings)
    with _errors(url, f"list the tasks of project {project_id}"):
        present = existing_row_ids(client, project_id)
    tasks = [
        t
        for t in label_studio_tasks(open_tasks(settings), settings)
        if t["data"]["row_id"] not in present
    ]
    imported = 0
    for start in range(0, len(tasks), IMPORT_CHUNK):
        chunk = tasks[start : start + IMPORT_CHUNK]
        with _errors(url, f"import {len(chunk)} task(s) into project {project_id}"):
            # The SDK sends plain task dicts as it sends its own request models.
            client.projects.import_tasks(
                id=project_id, request=cast("list[ImportApiRequest]", chunk)
            )
        imported += len(chunk)
    return {"tasks": imported, "project_id": project_id, "url": project_url(project_id)}


def _completed(task: dict[str, Any]) -> bool:
    return any(not a.get("was_cancelled") for a in task.get("annotations") or [])


def export_project(client: LabelStudio, project_id: int) -> list[dict[str, Any]]:
    """The project's annotated tasks in Label Studio's JSON export format."""
    edition = str(_get(client.versions.get(), "edition", "") or "")
    if edition.lower() == "enterprise":
        # Enterprise exports are snapshots (async); the SDK polls until ready.
        tasks = client.projects.exports.as_json(project_id)
    else:
        raw = b"".join(
            client.projects.exports.download_sync(
                project_id, export_type="JSON", download_all_tasks=False
            )
        )
        tasks = json.loads(raw or b"[]")
    if not isinstance(tasks, list):
        raise LabelStudioError(
            f"Label Studio's JSON export of project {project_id} is not a list of tasks: "
            f"{_short(tasks)}"
        )
    return tasks


def pull_annotations(settings: Settings, out_dir: Path | None = None) -> Path:
    """Write the project's completed annotations not imported yet as a Label Studio JSON export.

    The file goes to ``<paths.incoming>/label-studio/export-<UTC stamp>.json`` (or ``out_dir``);
    import it with ``flows.annotate.annotate_import``. Rows already labeled in edgeloop are left
    out, so pulling again does not import the same answers twice.
    """
    client = connect()
    url = server_url()
    with _errors(url, f"find project {settings.project!r}"):
        project = find_project(client, settings.project)
    if project is None:
        raise LabelStudioError(
            f"Label Studio at {url} has no project titled {settings.project!r}: "
            "push tasks first (edgeloop annotate export --to label-studio)"
        )
    project_id = int(project.id)
    with _errors(url, f"export project {project_id}"):
        tasks = export_project(client, project_id)
    labeled = set(read_labels(settings)["row_id"].astype(str))
    done = [
        t
        for t in tasks
        if _completed(t) and str((t.get("data") or {}).get("row_id")) not in labeled
    ]
    if not done:
        raise LabelStudioError(
            f"Label Studio project {project_id} ({project_url(project_id)}) has no completed "
            f"annotation that is not imported yet ({len(tasks)} annotated task(s) exported)"
        )
    folder = out_dir or settings.path("incoming") / "label-studio"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"export-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(done, indent=1, default=str), encoding="utf-8")
    tmp.replace(path)
    return path
