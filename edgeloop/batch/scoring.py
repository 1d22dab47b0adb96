"""Batch scoring with the champion and, in shadow, the challenger.

Scores live in ``scores/<batch_id>/<alias>-v<version>.parquet`` (``Layout.score_file``;
git-ignored, derived data: any of it can be recomputed from the dataset and the registry).
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from edgeloop._internal import faults
from edgeloop.core import keys
from edgeloop.core.config import Settings
from edgeloop.core.keys import CHALLENGER, CHAMPION
from edgeloop.core.layout import Layout
from edgeloop.data.lock import atomic_path
from edgeloop.data.store import DataStore
from edgeloop.tracking.registry import Registry
from pipelines.score import score_frame


def score_batches(settings: Settings, batch_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Score accepted batches with the champion and, in shadow, the challenger.

    Each (batch, model version) is scored once: files already written are kept as they are.
    Returns one entry per file written.
    """
    reg = Registry(settings)
    aliases = reg.aliases()
    if CHAMPION not in aliases:
        return []
    layout = Layout.of(settings)
    data = DataStore(settings).load_dataset()
    batches = [b for b in data[keys.BATCH_ID].unique() if b != keys.REFERENCE_BATCH]
    if batch_ids:
        batches = [b for b in batches if b in set(batch_ids)]
    written = []
    models: dict[str, Any] = {}
    for alias in (CHAMPION, CHALLENGER):
        if alias not in aliases:
            continue
        version = aliases[alias]
        for batch in batches:
            path = layout.score_file(str(batch), alias, version)
            if path.exists():
                continue
            if version not in models:
                models[version] = reg.load(version)
            rows = data[data[keys.BATCH_ID] == batch]
            scored = score_frame(models[version], rows, settings.data_schema)
            scored["alias"], scored["version"] = alias, version
            # Whole or not at all: a file that exists is complete (it is never written again).
            with atomic_path(path) as tmp:
                scored.to_parquet(tmp, index=False)
            faults.point("score:file-written")
            written.append(
                {"batch_id": batch, "alias": alias, "version": version, "rows": len(scored)}
            )
    return written


def remove_partial_scores(settings: Settings) -> list[str]:
    """Delete temporary score files of processes that are gone (a kill mid-write)."""
    removed = []
    layout = Layout.of(settings)
    for p in layout.scores.glob("*/.*.partial"):
        pid = p.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(str(p.relative_to(layout.root)))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_scores(settings: Settings, version: str) -> pd.DataFrame:
    """Every batch score written by one model version."""
    files = Layout.of(settings).score_files(version=version)
    if not files:
        return pd.DataFrame(columns=[keys.ROW_ID, keys.BATCH_ID, "predicted"])
    return pd.concat([pd.read_parquet(f.path) for f in files], ignore_index=True)
