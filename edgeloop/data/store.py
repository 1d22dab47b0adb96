"""The data folder: the labeled dataset, accepted batches, quarantine and the ingest ledger.

Layout of ``data/`` (all of it versioned by DVC as one directory, ``data.dvc`` at the root)::

    data/reference/reference.parquet   labeled reference set (the first training data)
    data/accepted/000007-<hash>.parquet accepted rows of batch #7 (row_id, batch_id, columns)
    data/quarantine/000006-<hash>/     a quarantined batch: the original file untouched,
                                       the quarantined rows, report.md and report.json
    data/ledger.jsonl                  one line per batch ever seen, keyed by content hash

Nothing is deleted or rewritten: every batch adds files, the ledger only grows.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from edgeloop._internal import faults
from edgeloop.core.config import Settings
from edgeloop.core.errors import StoreError
from edgeloop.core.keys import BATCH_ID, REFERENCE_BATCH, ROW_ID
from edgeloop.core.layout import Layout
from edgeloop.data.exports import safe_cells
from edgeloop.data.lock import atomic_path, data_lock, track

if TYPE_CHECKING:
    from pipelines.validate import ValidationReport


@dataclass(frozen=True)
class LedgerEntry:
    """One batch as the ledger remembers it."""

    seq: int
    sha256: str
    source: str
    status: str  # accepted | partial | quarantined | unreadable
    rows: int
    rows_accepted: int
    rows_quarantined: int
    reason: str
    at: str
    stored: list[str]
    #: Soft failures (severity "warning": rows accepted), one line each; older ledgers have none.
    warnings: list[str] = field(default_factory=list)

    @property
    def batch_id(self) -> str:
        return f"{self.seq:06d}-{self.sha256[:12]}"


class DataStore:
    """Reads and appends to the data folder of one project."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.layout = Layout.of(settings)
        self.root = self.layout.data

    # ------------------------------------------------------------------ paths
    @property
    def ledger_path(self) -> Path:
        return self.layout.ledger

    @property
    def reference_path(self) -> Path:
        return self.layout.reference_file

    @property
    def accepted_dir(self) -> Path:
        return self.layout.accepted

    @property
    def quarantine_dir(self) -> Path:
        return self.layout.quarantine

    # ------------------------------------------------------------------ ledger
    def ledger(self) -> list[LedgerEntry]:
        """Every batch seen so far, in arrival order."""
        if not self.ledger_path.exists():
            return []
        entries = []
        for n, line in enumerate(self.ledger_path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(LedgerEntry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise StoreError(
                    f"{self.ledger_path}: line {n} is not a ledger entry ({exc})"
                ) from None
        return entries

    def find(self, sha256: str) -> LedgerEntry | None:
        """The earlier entry of a batch with this content hash, if any."""
        return next((e for e in self.ledger() if e.sha256 == sha256), None)

    def _append(self, entry: LedgerEntry) -> None:
        if any(e.seq == entry.seq for e in self.ledger()):
            raise StoreError(f"{self.ledger_path}: sequence number {entry.seq} is already taken")
        self.root.mkdir(parents=True, exist_ok=True)
        # One write of one line: a kill mid-line is cut back by the next command's recovery.
        with self.ledger_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(entry), sort_keys=True) + "\n")

    def next_seq(self) -> int:
        """The next batch number; the caller holds the data lock (``record`` does)."""
        return max((e.seq for e in self.ledger()), default=0) + 1

    # ------------------------------------------------------------------ writes
    def write_reference(self, frame: pd.DataFrame) -> Path:
        """Store the labeled reference set (``row_id`` = ``ref-<position>``)."""
        df = frame.reset_index(drop=True).copy()
        df.insert(0, BATCH_ID, REFERENCE_BATCH)
        df.insert(0, ROW_ID, [f"ref-{i:06d}" for i in range(len(df))])
        self.reference_path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(self.reference_path, index=False)
        return self.reference_path

    def record(
        self,
        source: Path,
        sha256: str,
        frame: pd.DataFrame | None,
        report: ValidationReport | None,
        *,
        unreadable_reason: str = "",
        accepted: pd.DataFrame | None = None,
    ) -> LedgerEntry:
        """File one batch: accepted rows to ``accepted/``; bad rows and the original to quarantine.

        ``frame`` is the batch as read (quarantined rows keep its values); ``accepted``, the same
        rows as validated (numbers read as text parsed: ``pipelines.validate.numbers_from_text``),
        is what accepted rows are stored as, ``frame`` without it. ``report`` carries the
        decision. An unreadable file has neither frame nor report: it is copied to quarantine with
        the reason. Under the data lock (re-entrant), each file journaled before it is written
        (``edgeloop.data.lock``).
        """
        with data_lock(self.settings, "ingest"):
            return self._record(source, sha256, frame, report, unreadable_reason, accepted)

    def _record(
        self,
        source: Path,
        sha256: str,
        frame: pd.DataFrame | None,
        report: ValidationReport | None,
        unreadable_reason: str,
        accepted: pd.DataFrame | None,
    ) -> LedgerEntry:
        seq = self.next_seq()
        batch_id = f"{seq:06d}-{sha256[:12]}"
        now = datetime.now(UTC).isoformat(timespec="seconds")
        stored: list[str] = []
        if report is None or frame is None:
            qdir = self._quarantine_original(batch_id, source)
            (qdir / "report.md").write_text(
                f"# Unreadable batch: `{source.name}`\n\n- **Decision:** quarantined\n"
                f"- **Problem:** {unreadable_reason}\n",
                encoding="utf-8",
            )
            stored.append(self._rel(qdir))
            faults.point("ingest:quarantine-written")
            entry = LedgerEntry(
                seq, sha256, source.name, "unreadable", 0, 0, 0, unreadable_reason, now, stored
            )
            self._append(entry)
            faults.point("ingest:ledger-written")
            return entry

        bad = list(report.bad_rows)
        good_mask = _mask(len(frame), bad, keep=True)
        if report.rows_accepted:
            rows = (frame if accepted is None else accepted).reset_index(drop=True)[good_mask]
            stored.append(self._rel(self._write_accepted(batch_id, rows)))
            faults.point("ingest:accepted-written")
        if bad:
            qdir = self._quarantine_original(batch_id, source)
            qrows = frame.reset_index(drop=True).iloc[bad].copy()
            qrows.insert(0, "source_row", bad)
            # Quarantined rows can have mixed types (that is often why they are here): keep text.
            safe_cells(qrows).astype("str").to_csv(qdir / "rows.csv", index=False)
            sample = qrows.head(self.settings.validation.report_examples).set_index("source_row")
            (qdir / "report.md").write_text(report.to_markdown(sample), encoding="utf-8")
            (qdir / "report.json").write_text(
                json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8"
            )
            stored.append(self._rel(qdir))
            faults.point("ingest:quarantine-written")
        entry = LedgerEntry(
            seq,
            sha256,
            source.name,
            report.decision,
            report.rows,
            report.rows_accepted,
            report.rows_quarantined,
            report.reason,
            now,
            stored,
            warnings=[f.describe() for f in report.warnings],
        )
        self._append(entry)
        faults.point("ingest:ledger-written")
        return entry

    def _write_accepted(self, batch_id: str, rows: pd.DataFrame) -> Path:
        schema = self.settings.data_schema
        df = rows.reset_index(drop=True).copy()
        positions = rows.index.to_numpy()
        df.insert(0, BATCH_ID, batch_id)
        df.insert(0, ROW_ID, [f"{batch_id}-{int(p):06d}" for p in positions])
        if schema.target not in df.columns:
            df[schema.target] = None
        self.accepted_dir.mkdir(parents=True, exist_ok=True)
        path = self.accepted_dir / f"{batch_id}.parquet"
        with atomic_path(path) as tmp:
            df.to_parquet(tmp, index=False)
        return path

    def _quarantine_original(self, batch_id: str, source: Path) -> Path:
        qdir = self.quarantine_dir / batch_id
        track(qdir)
        qdir.mkdir(parents=True, exist_ok=True)
        # The original bytes, untouched: whatever the report says, nothing is lost.
        shutil.copy2(source, qdir / f"original{source.suffix}")
        return qdir

    def _rel(self, p: Path) -> str:
        return (
            str(p.relative_to(self.settings.root))
            if p.is_relative_to(self.settings.root)
            else str(p)
        )

    # ------------------------------------------------------------------ reads
    def load_dataset(self) -> pd.DataFrame:
        """Reference plus every accepted batch, in arrival order, one row per ``row_id``."""
        parts = []
        if self.reference_path.exists():
            parts.append(pd.read_parquet(self.reference_path))
        if self.accepted_dir.exists():
            parts += [pd.read_parquet(p) for p in sorted(self.accepted_dir.glob("*.parquet"))]
        if not parts:
            raise StoreError(f"{self.root}: no data yet (run 'edgeloop init')")
        data = pd.concat(parts, ignore_index=True)
        return self._with_labels(data)

    def load_training_dataset(self) -> tuple[pd.DataFrame, int]:
        """``load_dataset`` for training and its holdout: with ``annotation.exclude_suspects``,
        the labels still open as suspects (``open_suspects``) are cleared. Returns the frame and
        how many labels were left out."""
        data = self.load_dataset()
        if not self.settings.annotation.exclude_suspects:
            return data, 0
        suspects = self.open_suspects()
        if not suspects:
            return data, 0
        target = self.settings.data_schema.target
        out = data.copy()
        hit = out[ROW_ID].astype("str").isin(suspects) & out[target].notna()
        if self.settings.data_schema.is_regression:
            out.loc[hit, target] = float("nan")  # the column stays float64
        else:
            out[target] = out[target].astype("object")
            out.loc[hit, target] = None
        return out, int(hit.sum())

    def label_quality(self) -> pd.DataFrame | None:
        """The latest label-quality file (``edgeloop.batch.label_quality``), None before any."""
        files = sorted(self.layout.label_quality.glob("*.parquet"))
        return pd.read_parquet(files[-1]) if files else None

    def open_suspects(self) -> set[str]:
        """Row ids whose label the latest label-quality check left open as suspect."""
        latest = self.label_quality()
        if latest is None:
            return set()
        return set(latest.loc[latest["status"] == "suspect", "row_id"].astype("str"))

    def _with_labels(self, data: pd.DataFrame) -> pd.DataFrame:
        """Fill the target from imported labels (``data/labels/``; the latest answer wins)."""
        files = sorted(self.layout.labels.glob("*.parquet"))
        if not files:
            return data
        labels = pd.concat([pd.read_parquet(f, columns=["row_id", "label"]) for f in files])
        latest = labels.drop_duplicates("row_id", keep="last").set_index("row_id")["label"]
        schema = self.settings.data_schema
        target = schema.target
        out = data.copy()
        if schema.is_regression:
            # Labels are stored as text (one Parquet type for every import): numbers again.
            found = pd.to_numeric(data[ROW_ID].map(latest), errors="coerce")
            has = found.notna()
            out[target] = pd.to_numeric(out[target], errors="coerce").astype("float64")
        else:
            by_text = {str(c): c for c in schema.classes}
            found = (
                data[ROW_ID].map(latest).map(lambda v: by_text.get(str(v), v) if pd.notna(v) else v)
            )
            has = found.notna()
            out[target] = out[target].astype("object")
        out.loc[has, target] = found[has]
        out["label_source"] = "batch"
        out.loc[has, "label_source"] = "annotation"
        return out

    def problems(self) -> list[str]:
        """What breaks the data folder's invariants (none when it is consistent): ledger
        numbers unique and in order, one entry per content hash, one accepted file per entry
        with accepted rows (and its row count), no file of a batch the ledger does not know,
        row ids unique, no temporary file left."""
        out: list[str] = []
        entries = self.ledger()
        seqs = [e.seq for e in entries]
        if len(set(seqs)) != len(seqs) or seqs != sorted(seqs):
            out.append(f"ledger sequence numbers not unique and ordered: {seqs}")
        shas = [e.sha256 for e in entries]
        if len(set(shas)) != len(shas):
            out.append("ledger has two entries for the same content")
        known = {e.batch_id for e in entries}
        for e in entries:
            path = self.accepted_dir / f"{e.batch_id}.parquet"
            if e.rows_accepted and not path.exists():
                out.append(f"batch {e.batch_id}: {e.rows_accepted} accepted rows, no {path.name}")
            elif (
                e.rows_accepted and len(pd.read_parquet(path, columns=[ROW_ID])) != e.rows_accepted
            ):
                out.append(f"batch {e.batch_id}: {path.name} does not hold {e.rows_accepted} rows")
        for folder in (self.accepted_dir, self.quarantine_dir):
            strays = [
                p.name for p in folder.glob("*") if p.name.removesuffix(".parquet") not in known
            ]
            out += [f"{folder.name}/{name}: no ledger entry" for name in strays]
        out += [
            f"{p.relative_to(self.root)}: temporary file left" for p in self.root.rglob("*.partial")
        ]
        if not out and (self.reference_path.exists() or self.accepted_dir.exists()):
            ids = self.load_dataset()[ROW_ID]
            if ids.duplicated().any():
                out.append(f"row ids twice in the dataset: {list(ids[ids.duplicated()][:5])}")
        return out

    def summary(self) -> dict[str, Any]:
        """Counts for ``edgeloop status``."""
        entries = self.ledger()
        by: dict[str, int] = {}
        for e in entries:
            by[e.status] = by.get(e.status, 0) + 1
        return {
            "batches": len(entries),
            "by_status": by,
            "rows_accepted": sum(e.rows_accepted for e in entries),
            "rows_quarantined": sum(e.rows_quarantined for e in entries),
            "quarantined": [
                {
                    "batch_id": e.batch_id,
                    "source": e.source,
                    "status": e.status,
                    "reason": e.reason,
                    "path": next((s for s in e.stored if "quarantine" in s), ""),
                }
                for e in entries
                if e.rows_quarantined or e.status in ("quarantined", "unreadable")
            ],
        }


def _mask(n: int, positions: list[int], *, keep: bool) -> Any:
    mask = np.ones(n, dtype=bool)
    mask[positions] = False
    return mask if keep else ~mask
