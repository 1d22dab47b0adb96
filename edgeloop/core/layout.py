"""Where every file of a project lives: one object, so writers and readers agree on paths.

``Layout.of(settings)`` resolves the ``paths`` section against the project root. Every folder
and file name edgeloop writes is built here (score files, logs, locks, the data folder's parts);
no other module spells them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeloop.core.config import Settings

_SCORE_FILE = re.compile(r"^(?P<alias>[A-Za-z0-9_-]+)-v(?P<version>\d+)\.parquet$")


@dataclass(frozen=True)
class ScoreFile:
    """One scored batch: ``scores/<batch>/<alias>-v<version>.parquet``."""

    path: Path
    batch: str
    alias: str
    version: str


def _under(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


@dataclass(frozen=True)
class Layout:
    """Absolute paths of one project's files and folders."""

    root: Path
    data: Path
    expectations: Path
    mlflow: Path
    prefect_home: Path
    dvc_remote: Path
    incoming: Path
    reports: Path

    @classmethod
    def of(cls, settings: Settings) -> Layout:
        root = settings.root
        p = settings.paths
        return cls(
            root=root,
            data=_under(root, p.data),
            expectations=_under(root, p.expectations),
            mlflow=_under(root, p.mlflow),
            prefect_home=_under(root, p.prefect_home),
            dvc_remote=_under(root, p.dvc_remote),
            incoming=_under(root, p.incoming),
            reports=_under(root, settings.monitoring.reports_dir),
        )

    # ------------------------------------------------------------ the data folder (DVC-versioned)
    @property
    def pointer(self) -> Path:
        """The DVC pointer of ``data/`` (``data.dvc``): its md5 is the dataset version."""
        return self.data.with_suffix(".dvc")

    @property
    def ledger(self) -> Path:
        return self.data / "ledger.jsonl"

    @property
    def reference_file(self) -> Path:
        return self.data / "reference" / "reference.parquet"

    @property
    def accepted(self) -> Path:
        return self.data / "accepted"

    @property
    def quarantine(self) -> Path:
        return self.data / "quarantine"

    @property
    def labels(self) -> Path:
        return self.data / "labels"

    @property
    def label_quality(self) -> Path:
        """Suspect labels: one Parquet file per label import (the latest is the current state)."""
        return self.data / "label_quality"

    @property
    def queue(self) -> Path:
        """The edge-case queue: one Parquet file per scored batch."""
        return self.data / "annotation" / "queue"

    def suite(self, name: str) -> Path:
        """The JSON file of a named expectation suite."""
        return self.expectations / f"{name}.json"

    # ------------------------------------------------------------ derived, git-ignored
    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def score_file(self, batch: str, alias: str, version: str | int) -> Path:
        return self.scores / str(batch) / f"{alias}-v{version}.parquet"

    def score_files(
        self, *, batch: str = "*", alias: str = "*", version: str | int = "*"
    ) -> list[ScoreFile]:
        """Score files matching the given batch, alias and version (``*`` = any), sorted."""
        pattern = f"{batch}/{alias}-v{version}.parquet"
        found = (self.parse_score_file(p) for p in self.scores.glob(pattern))
        return sorted((f for f in found if f is not None), key=lambda f: f.path)

    @staticmethod
    def parse_score_file(path: Path) -> ScoreFile | None:
        """The batch, alias and version of a score file's path (``None`` if it is not one)."""
        m = _SCORE_FILE.match(path.name)
        if m is None:
            return None
        return ScoreFile(path, path.parent.name, m["alias"], m["version"])

    @property
    def state(self) -> Path:
        """edgeloop's own working folder (locks, logs, temporary files, the prediction log)."""
        return self.root / ".edgeloop"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def locks(self) -> Path:
        return self.state / "locks"

    @property
    def tmp(self) -> Path:
        return self.state / "tmp"

    def reproduce_dir(self, version: str | int) -> Path:
        """Where ``reproduce`` restores an old data version (at the root: DVC refuses pointers
        in git-ignored folders)."""
        return self.root / f".reproduce-v{version}"

    @property
    def dashboard(self) -> Path:
        return self.reports / "dashboard.html"

    @property
    def loop_effect(self) -> Path:
        """The demo's honest measure: frozen model vs loop vs oracle per batch."""
        return self.reports / "loop-effect.json"

    def weekly_review(self, date: str, suffix: str) -> Path:
        return self.reports / f"weekly-{date}{suffix}"
