"""The review's timestamps: ISO strings in UTC, written and read back the same way."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(when: datetime) -> datetime:
    # A naive datetime is read as UTC, as every timestamp edgeloop writes is.
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds")


def from_ms(millis: int | None) -> datetime:
    """An MLflow run's start time (milliseconds since the epoch)."""
    return datetime.fromtimestamp((millis or 0) / 1000, UTC)


def parse_time(text: str) -> datetime | None:
    """An ISO timestamp as aware UTC; None when it is not one (such an entry is left out)."""
    try:
        return utc(datetime.fromisoformat(text))
    except (TypeError, ValueError):
        return None
