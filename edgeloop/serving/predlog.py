"""A durable local log of every prediction the service makes, champion and challenger alike.

One SQLite file (``serving.log_path``, WAL mode). One record per scored row: when, which
request, a hash of the row, which model (alias and version) said what, with which
probabilities (a regressor: the predicted value, a float, and its members' ``spread``), and how
long the model took. Shadow evaluation pairs the champion's and the
challenger's records of the same row by ``row_hash``.

The request path never touches the disk: the service runs the log in its worker process
(``edgeloop.serving.worker``), next to the challenger. There a whole request's predictions go to
:meth:`PredictionLog.submit` (a few microseconds), and one writer thread hashes the rows and
inserts them in batches. Pending rows are bounded; beyond the bound a submission is dropped
and counted, so memory stays bounded under any load and a slow disk never slows answers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
COLUMNS = (
    "ts",
    "request_id",
    "row",
    "row_hash",
    "alias",
    "version",
    "predicted",
    "probabilities",
    "latency_ms",
    "row_key",
    "spread",
)

# `predicted` has no declared type on purpose: SQLite then keeps an integer class an integer, a
# string class a string and a regressor's value a REAL, so the read API returns each in its own
# type. `spread` (schema version 3) is a regressor's members' spread, NULL otherwise.
_DDL = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    row_hash TEXT NOT NULL,
    alias TEXT NOT NULL,
    version TEXT NOT NULL,
    predicted,
    probabilities TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    row_key TEXT,
    spread REAL
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
"""
# No index on row_hash on purpose: random 64-character keys double the cost of every insert,
# and pairing champion with challenger is a scan plus a pandas merge of what was read anyway.


def _canonical_value(value: Any) -> Any:
    # Numbers hash by value, not by spelling: 35, 35.0 and numpy.int64(35) are the same input to
    # a model, so they must be the same row. Booleans stay booleans.
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):  # numpy's too
        return bool(value)
    if isinstance(value, numbers.Real):
        f = float(value)
        return None if math.isnan(f) else f
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def canonical_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row as hashed: every number a float (NaN as null), other values as they are."""
    out = {}
    for k, v in row.items():
        t = type(v)
        # Exact-type checks first: the writer hashes every row, and ABC checks are slow.
        if t is int:
            v = float(v)
        elif t is float:
            if v != v:  # NaN
                v = None
        elif not (t is str or t is bool or v is None):
            v = _canonical_value(v)
        out[k if type(k) is str else str(k)] = v
    return out


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical row JSON (keys sorted, compact): identifies a row anywhere.

    Use it on a labeled row (e.g. ``df.iloc[i][features].to_dict()``) to find the service's
    predictions for it.
    """
    blob = orjson.dumps(canonical_row(row), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


@dataclass(eq=False)
class RowBatch:
    """The rows of one request. Both models' entries share it, so each row is hashed once."""

    rows: Sequence[Mapping[str, Any]]
    _hashes: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def hashes(self) -> list[str]:
        """Row hashes, computed on first use (by the writer thread, off the request path)."""
        if self._hashes is None:
            self._hashes = [row_hash(r) for r in self.rows]
        return self._hashes


@dataclass(eq=False)
class Entry:
    """One model's predictions for one request."""

    ts: float
    request_id: str
    alias: str
    version: str
    batch: RowBatch
    #: Predicted class per row (Python values); a regressor's value (float).
    predicted: Sequence[Any]
    #: Probability rows, aligned with ``class_keys`` (a regressor: empty, no classes).
    probabilities: Sequence[Sequence[float]]
    class_keys: Sequence[str]
    latency_ms: float
    #: A regressor's members' spread per row (NaN without members); None for a classifier.
    spread: Sequence[float] | None = None

    def records(self, key_field: str | None = None) -> list[tuple[Any, ...]]:
        rows = self.batch.rows
        if self.spread is not None:
            # NaN is no number to SQLite: stored as NULL (a model without members).
            return [
                (
                    self.ts,
                    self.request_id,
                    i,
                    h,
                    self.alias,
                    self.version,
                    float(value),
                    "{}",
                    self.latency_ms,
                    _row_key(rows[i], key_field),
                    None if s != s else float(s),
                )
                for i, (h, value, s) in enumerate(
                    zip(self.batch.hashes(), self.predicted, self.spread, strict=True)
                )
            ]
        keys = self.class_keys
        return [
            (
                self.ts,
                self.request_id,
                i,
                h,
                self.alias,
                self.version,
                cls,
                orjson.dumps(dict(zip(keys, p, strict=True))).decode(),
                self.latency_ms,
                _row_key(rows[i], key_field),
                None,
            )
            for i, (h, cls, p) in enumerate(
                zip(self.batch.hashes(), self.predicted, self.probabilities, strict=True)
            )
        ]


def _row_key(row: Mapping[str, Any], field: str | None) -> str | None:
    if field is None:
        return None
    value = row.get(field)
    return None if value is None else str(value)


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the log's schema, in WAL mode (readers never block the writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a power cut may lose the last commits, never corrupt the file.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_DDL)
    # A log written before the row_key column (schema version 1) or the spread column
    # (version 2) gets it, empty for old rows.
    have = {r[1] for r in conn.execute("PRAGMA table_info(predictions)")}
    if "row_key" not in have:
        conn.execute("ALTER TABLE predictions ADD COLUMN row_key TEXT")
    if "spread" not in have:
        conn.execute("ALTER TABLE predictions ADD COLUMN spread REAL")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    conn.commit()
    return conn


class PredictionLog:
    """Bounded, batched, non-blocking writer of prediction records to SQLite."""

    def __init__(
        self,
        path: Path,
        max_pending_rows: int,
        *,
        on_drop: Callable[[int], None] | None = None,
        batch_rows: int = 5000,
        linger_seconds: float = 0.2,
        key_field: str | None = None,
    ) -> None:
        self.path = Path(path)
        #: The request rows' own id field (``schema.id``), logged as ``row_key``.
        self.key_field = key_field
        self.max_pending_rows = max_pending_rows
        self.batch_rows = batch_rows
        self.linger_seconds = linger_seconds
        self._on_drop = on_drop
        self._pending: deque[Entry] = deque()
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._busy = False
        self.dropped_rows = 0
        self.written_rows = 0
        self.write_errors = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PredictionLog:
        """Create the file and its schema now (a bad path fails at start, not later)."""
        connect(self.path).close()
        self._thread = threading.Thread(target=self._run, name="edgeloop-predlog", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending (up to ``timeout``), then stop the writer."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ producers
    def submit(self, entry: Entry) -> bool:
        """Queue one model's predictions for a request; False (and counted) when full."""
        n = len(entry.batch)
        with self._cond:
            if self._stop or self._pending_rows + n > self.max_pending_rows:
                self.dropped_rows += n
                dropped = True
            else:
                self._pending.append(entry)
                self._pending_rows += n
                # Wake the writer only when it has something new to decide on, not per entry.
                if len(self._pending) == 1 or self._pending_rows >= self.batch_rows:
                    self._cond.notify()
                dropped = False
        if dropped and self._on_drop is not None:
            self._on_drop(n)
        return not dropped

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._pending and not self._busy:
                    return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------------ writer
    def _take(self) -> list[Entry]:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait()
            # Let a batch build up: one transaction for many requests costs far less disk and
            # CPU (GIL time taken from the request path) than one per request.
            deadline = time.monotonic() + self.linger_seconds
            while not self._stop and self._pending_rows < self.batch_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            taken: list[Entry] = []
            rows = 0
            while self._pending and rows < self.batch_rows:
                e = self._pending.popleft()
                taken.append(e)
                rows += len(e.batch)
            self._pending_rows -= rows
            self._busy = bool(taken)
            return taken

    def _run(self) -> None:
        conn = connect(self.path)
        sql = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        try:
            while True:
                entries = self._take()
                if not entries:
                    return  # stopped and drained
                try:
                    records = [r for e in entries for r in e.records(self.key_field)]
                    with conn:
                        conn.executemany(sql, records)
                    self.written_rows += len(records)
                except Exception:
                    # A full disk or a locked file must not take the service down: count it.
                    self.write_errors += 1
                    n = sum(len(e.batch) for e in entries)
                    self.dropped_rows += n
                    if self._on_drop is not None:
                        self._on_drop(n)
                    log.exception("prediction log: could not write %d records to %s", n, self.path)
                finally:
                    with self._cond:
                        self._busy = False
        finally:
            conn.close()


def _since_seconds(since: float | str | datetime | Any) -> float:
    if isinstance(since, int | float):
        return float(since)
    if isinstance(since, str):
        since = datetime.fromisoformat(since)
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise ValueError("since: give a timezone-aware datetime (or epoch seconds)")
        return since.timestamp()
    ts = getattr(since, "timestamp", None)  # pandas.Timestamp
    if callable(ts):
        return float(ts())
    raise TypeError(f"since: expected epoch seconds, ISO text or a datetime, got {since!r}")


def read_predictions(
    path: str | Path,
    since: float | str | datetime | None = None,
    alias: str | None = None,
) -> pd.DataFrame:
    """The log as a DataFrame, oldest first; ``since`` (inclusive) and ``alias`` filter it.

    Columns: ``ts`` (UTC timestamps), ``request_id``, ``row`` (position in the request),
    ``row_hash``, ``alias``, ``version``, ``predicted`` (the class; a regressor's value, float),
    ``probabilities`` (dict class -> p; empty for a regressor), ``latency_ms``, ``row_key`` (the
    row's ``schema.id`` value, as text, if the request carried it), ``spread`` (a regressor's
    members' spread, float; NaN for a classifier or a model without members). A missing file reads as an empty frame; a reader opens it
    read-only, so it never creates or locks the writer's file.
    """
    import pandas as pd  # lazy: 0.6 s to import; the worker process writes the log without it

    path = Path(path)
    if not path.exists():
        empty = pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})
        empty["ts"] = pd.to_datetime(empty["ts"], utc=True)
        return empty
    where: list[str] = []
    params: list[float | str] = []
    if since is not None:
        where.append("ts >= ?")
        params.append(_since_seconds(since))
    if alias is not None:
        where.append("alias = ?")
        params.append(alias)
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    # A log from before the row_key or spread column reads with it empty.
    have = {r[1] for r in conn.execute("PRAGMA table_info(predictions)")}
    picked = [c if c in have else f"NULL AS {c}" for c in COLUMNS]
    sql = f"SELECT {', '.join(picked)} FROM predictions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()
    df = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    df["ts"] = pd.to_datetime(df["ts"].astype("float64"), unit="s", utc=True)
    df["probabilities"] = [orjson.loads(p) for p in df["probabilities"]]
    df["spread"] = df["spread"].astype("float64")
    return df
