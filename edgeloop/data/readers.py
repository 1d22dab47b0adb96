"""File readers of the data the pipelines work on: batches, GX suites, rules files, label exports.

``pipelines/`` does no file I/O: these functions read a file, map reading problems to the
project's errors, and hand what they read to the pipelines' pure parsers
(``pipelines.edge_cases.parse_rules``, ``pipelines.labels.labels_from_csv`` and
``labels_from_json``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from edgeloop.core.errors import BatchReadError, LabelFileError, SuiteError
from pipelines.edge_cases import Rule, parse_rules
from pipelines.labels import labels_from_csv, labels_from_json

READABLE_SUFFIXES = (".csv", ".parquet", ".pq")


def file_sha256(path: str | Path) -> str:
    """Content hash of a batch file: the key of the ingest ledger."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_batch_file(path: str | Path, max_mb: float = 0) -> None:
    """Refuse what is not a batch file before anything reads it: a missing file, a broken
    link, a directory (or a pipe, which would block the read), a file over ``max_mb`` (0: no
    limit). A link to a file is read as that file."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise BatchReadError(str(p), f"broken symbolic link (to {os.readlink(p)})")
        raise BatchReadError(str(p), "file not found")
    if p.is_dir():
        raise BatchReadError(
            str(p), f"is a directory, not a batch file: give its files (e.g. {p}/*.csv)"
        )
    if not p.is_file():
        raise BatchReadError(str(p), "not a regular file (a pipe, socket or device)")
    mb = p.stat().st_size / 2**20
    if max_mb and mb > max_mb:
        raise BatchReadError(
            str(p),
            f"file is {mb:.0f} MB, over validation.max_file_mb ({max_mb:g} MB; reading takes"
            " ~6x the size in memory): split it into smaller batches, or raise the limit",
        )


def read_batch(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet batch; raise ``BatchReadError`` naming the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise BatchReadError(str(p), "file not found")
    if not p.is_file():
        raise BatchReadError(str(p), "not a file")
    suffix = p.suffix.lower()
    if suffix not in READABLE_SUFFIXES:
        raise BatchReadError(
            str(p),
            f"unsupported extension {suffix or '(none)'!r}; expected one of {READABLE_SUFFIXES}",
        )
    if p.stat().st_size == 0:
        raise BatchReadError(str(p), "file is empty (0 bytes)")
    try:
        if suffix == ".csv":
            df = pd.read_csv(p, encoding="utf-8")
        else:
            df = pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise BatchReadError(str(p), "file has no header and no rows") from None
    except pd.errors.ParserError as exc:
        raise BatchReadError(str(p), f"malformed CSV: {str(exc).strip()}") from None
    except UnicodeDecodeError as exc:
        raise BatchReadError(
            str(p), f"not UTF-8 text at byte {exc.start}: is this really a CSV file?"
        ) from None
    except Exception as exc:  # pyarrow raises several types for truncated or foreign files
        raise BatchReadError(
            str(p), f"unreadable {suffix[1:]} file ({type(exc).__name__}: {exc})"
        ) from None
    if len(df) == 0:
        raise BatchReadError(str(p), f"file has a header ({len(df.columns)} columns) but no rows")
    if suffix == ".csv" and not df.index.equals(pd.RangeIndex(len(df))):
        # pandas silently turns the first column into an index when the first data row has
        # one field more than the header, shifting every value one column left.
        raise BatchReadError(str(p), "malformed CSV: data rows have more fields than the header")
    return df


def load_suite(path: str | Path) -> dict[str, Any]:
    """Load a suite JSON file (``{"name": ..., "expectations": [{"type", "kwargs"}]}``)."""
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"{p}: expectation suite not found (run 'edgeloop init')")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"{p}: a suite needs a 'name' and a list of 'expectations'")
    for i, exp in enumerate(data["expectations"]):
        if not isinstance(exp, dict) or "type" not in exp:
            raise SuiteError(f"{p}: expectations[{i}] needs a 'type'")
    data.setdefault("name", p.stem)
    # GX assigns ids itself; ids copied from elsewhere only cause conflicts.
    data.pop("id", None)
    for exp in data["expectations"]:
        exp.pop("id", None)
    return data


def load_rules(path: Path, known_columns: list[str]) -> list[Rule]:
    """Read and check the rules file (no file: no rules); see ``pipelines.edge_cases.parse_rules``."""
    if not path.exists():
        return []
    return parse_rules(path.read_text(encoding="utf-8"), path, known_columns)


def read_labels(path: Path) -> pd.DataFrame:
    """Label Studio's JSON export (tasks with ``annotations``) or a CSV (``row_id,label``)."""
    if not path.is_file():
        raise LabelFileError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            df = pd.read_csv(path, dtype={"row_id": "str", "label": "str"})
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise LabelFileError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
        return labels_from_csv(df, path)
    if suffix != ".json":
        raise LabelFileError(
            f"{path}: unsupported format {suffix!r}; expected .json (Label Studio) or .csv"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path}: not valid JSON ({exc})") from None
    return labels_from_json(text, path)
