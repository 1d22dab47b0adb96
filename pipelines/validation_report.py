"""What validation found: each failed expectation and the report of one batch.

The value objects ``pipelines.validate`` returns (and re-exports), readable as a line, a
Markdown report and strict JSON.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import pandas as pd

Decision = Literal["accepted", "partial", "quarantined"]
#: pandas' ``to_markdown`` needs the optional tabulate package (looked up, not imported).
_TABULATE = importlib.util.find_spec("tabulate") is not None


@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that did not hold, with what was seen."""

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    row_level: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)
    observed: Any = None
    error: str | None = None
    #: Row positions (0-based, in file order) that failed; empty for table-level failures.
    rows: tuple[int, ...] = ()
    #: GX severity: "critical" (hard: quarantines), "warning" or "info" (soft: reported).
    severity: str = "critical"

    def is_hard(self, hard_columns: Sequence[str] = ()) -> bool:
        """Hard: critical, or soft on a column listed in ``validation.hard_columns``."""
        return self.severity == "critical" or (
            self.column is not None and self.column in hard_columns
        )

    @property
    def short(self) -> str:
        """``not_null(px_3_3)``: the expectation without GX's prefix, with its column."""
        name = self.expectation
        for prefix in ("expect_column_values_to_", "expect_column_", "expect_table_", "be_"):
            name = name.removeprefix(prefix)
        name = name.replace("not_be_", "not_")
        return f"{name}({self.column})" if self.column else name

    @property
    def mismatched_columns(self) -> dict[str, list[str]]:
        """For a column-set expectation: {"missing": [...], "unexpected": [...]}."""
        if isinstance(self.observed, dict):
            return dict(self.observed.get("mismatched") or {})
        return {}

    def describe(self) -> str:
        """One line a person can read."""
        where = f" on column '{self.column}'" if self.column else ""
        if self.error:
            return f"{self.expectation}{where}: could not be evaluated ({self.error})"
        if self.row_level:
            return (
                f"{self.expectation}{where}: {self.unexpected_count} rows failed"
                f" (e.g. {_short(self.examples)})"
            )
        mismatch = self.mismatched_columns
        if mismatch:
            # A wide file can miss or add thousands: the count and the first few say enough.
            parts = [
                f"{k} columns {v}" if len(v) <= 10 else f"{len(v)} {k} columns {v[:10]} ..."
                for k, v in sorted(mismatch.items())
            ]
            return f"{self.expectation}: {'; '.join(parts)}"
        return f"{self.expectation}{where}: observed {_short(self.observed)}"


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class ValidationReport:
    """What a suite said about one batch, and what happens to its rows."""

    batch: str
    suite: str
    rows: int
    evaluated: int
    failed: tuple[FailedExpectation, ...]
    decision: Decision = "accepted"
    reason: str = ""
    #: Row positions quarantined under the decision (all rows when the batch is quarantined).
    bad_rows: tuple[int, ...] = ()
    #: ``validation.hard_columns`` as ``decide`` applied them (their soft failures are hard).
    hard_columns: tuple[str, ...] = ()

    @property
    def success(self) -> bool:
        return not self.failed

    @property
    def errors(self) -> tuple[FailedExpectation, ...]:
        """Hard failures: the ones the row policy acts on."""
        return tuple(f for f in self.failed if f.is_hard(self.hard_columns))

    @property
    def warnings(self) -> tuple[FailedExpectation, ...]:
        """Soft failures: reported, their rows accepted (unless a hard failure quarantines them)."""
        return tuple(f for f in self.failed if not f.is_hard(self.hard_columns))

    @property
    def warning_rows(self) -> tuple[int, ...]:
        """Accepted rows that failed a soft expectation."""
        bad = set(self.bad_rows)
        return tuple(sorted({i for f in self.warnings for i in f.rows} - bad))

    @property
    def rows_quarantined(self) -> int:
        return len(self.bad_rows)

    @property
    def rows_accepted(self) -> int:
        return self.rows - self.rows_quarantined

    @property
    def failed_columns(self) -> list[str]:
        return sorted({f.column for f in self.failed if f.column})

    def to_dict(self) -> dict[str, Any]:
        # Not asdict(): it would deep-copy every row position (seconds at 1M bad rows) only for
        # them to be dropped or cut here.
        skip = ("failed", "bad_rows", "hard_columns")
        d: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip
        }
        d["hard_columns"] = list(self.hard_columns)
        d["failed"] = [
            {
                **{g.name: getattr(x, g.name) for g in fields(x) if g.name != "rows"},
                "hard": x.is_hard(self.hard_columns),
            }
            for x in self.failed
        ]
        d["warnings"] = [x.describe() for x in self.warnings]
        d["rows_with_warnings"] = len(self.warning_rows)
        d["bad_rows"] = list(self.bad_rows[:1000])
        d["bad_rows_total"] = len(self.bad_rows)
        d["rows_accepted"] = self.rows_accepted
        d["rows_quarantined"] = self.rows_quarantined
        return d

    def to_markdown(self, sample: pd.DataFrame | None = None) -> str:
        """A readable report: decision, each failed expectation, a few bad rows."""
        errors, warnings = self.errors, self.warnings
        lines = [
            f"# Validation report: `{self.batch}`",
            "",
            f"- **Decision:** {self.decision}" + (f" — {self.reason}" if self.reason else ""),
            f"- **Suite:** `{self.suite}` ({self.evaluated} expectations evaluated,"
            f" {len(errors)} failed, {len(warnings)} warnings)",
            f"- **Rows:** {self.rows} in the batch, {self.rows_accepted} accepted,"
            f" {self.rows_quarantined} quarantined, {len(self.warning_rows)} accepted with warnings",
            "",
        ]
        for title, group in (
            ("Failed expectations", errors),
            ("Warnings (rows accepted)", warnings),
        ):
            if group:
                lines += [f"## {title}", "", *_table(group), ""]
        if sample is not None and len(sample):
            lines += [
                "## Example quarantined rows",
                "",
                "Row numbers count data rows from 0 in file order (CSV line = row + 2).",
                "",
                sample.to_markdown() if _TABULATE else "```\n" + sample.to_string() + "\n```",
                "",
            ]
        return "\n".join(lines)


def _table(failed: Sequence[FailedExpectation]) -> list[str]:
    lines = [
        "| expectation | column | failing rows | share | examples / observed |",
        "|---|---|---:|---:|---|",
    ]
    for f in failed:
        share = f"{f.unexpected_percent:.2f}%" if f.unexpected_percent is not None else ""
        count = "" if f.unexpected_count is None else str(f.unexpected_count)
        seen = f.error or (_short(f.examples) if f.row_level else _short(f.observed))
        lines.append(
            f"| {f.expectation} | {f.column or '(table)'} | {count} | {share} |"
            f" {seen.replace('|', '/')} |"
        )
    return lines


def json_safe(value: Any) -> Any:
    """NaN/inf become None so reports are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value
