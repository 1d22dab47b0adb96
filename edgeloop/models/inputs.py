"""What a retrain's result depends on: the dataset version, the model's config and code, their key.

Light on purpose (no MLflow, no pandas): ``edgeloop retrain`` computes the key first thing, to
start the fit worker (``edgeloop.models.fit_worker``) before anything heavy is imported. The
cache itself (``edgeloop.models.cache``) looks the key up in MLflow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgeloop.core.config import Settings
from edgeloop.core.errors import EdgeloopError
from edgeloop.data.versioning import DataVersioner

#: The code whose change invalidates the cache (the training and evaluation stages).
TRAINING_CODE = ("pipelines/train.py", "pipelines/evaluate.py", "pipelines/timecol.py")


def dataset_version(settings: Settings) -> str:
    """The DVC version ``data.dvc`` names, checked against the work tree (nothing is loaded)."""
    versioner = DataVersioner(settings)
    version = versioner.version()
    if not version:
        raise EdgeloopError(f"{versioner.pointer}: no dataset version yet (run 'edgeloop init')")
    if not versioner.is_clean():
        raise EdgeloopError(
            f"{settings.path('data')} differs from {versioner.pointer} ({version}): run"
            " 'edgeloop ingest' (which versions it) or 'dvc checkout' before retraining"
        )
    return version


def code_hash(root: Path, fit: str = "") -> str:
    """Hash of the training code: a change to it invalidates the cache. With ``fit`` (the
    ``training.fit`` of the config), the source file of the user's module is part of it."""
    h = hashlib.sha256()
    base = Path(__file__).resolve().parents[2]
    for rel in TRAINING_CODE:
        h.update((base / rel).read_bytes())
    if fit:
        h.update(_module_source(root, fit.partition(":")[0]))
    return h.hexdigest()[:16]


def _module_source(root: Path, module: str) -> bytes:
    """The bytes of ``module``'s file (under ``root`` or installed); its name when not found
    (the retrain then fails on the import, naming the key)."""
    import importlib.util

    from edgeloop._internal import runtime

    runtime.project_importable(root)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    origin = spec.origin if spec is not None else None
    if origin and Path(origin).is_file():
        return Path(origin).read_bytes()
    return module.encode()


def training_config(settings: Settings) -> dict[str, Any]:
    """The part of the config a model depends on (its hash is part of the cache key)."""
    d = settings.to_dict()
    return {k: d[k] for k in ("schema", "training", "gates", "seeds")} | {
        "model": settings.model_name
    }


def cache_key(settings: Settings, data_version: str, max_rows: int) -> str:
    blob = json.dumps(
        {
            "data": data_version,
            "config": training_config(settings),
            "code": code_hash(settings.root, settings.training.fit),
            "max_rows": max_rows,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]
