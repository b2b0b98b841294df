"""Turning the seed's ``since`` arguments (datetime, date, Unix seconds) into Unix seconds."""

from __future__ import annotations

import datetime as dt


def to_timestamp(value) -> float | None:
    """None stays None; a naive datetime is local time, as ``datetime.now()`` gives."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a time must be a datetime, a date or Unix seconds, not a bool")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time()).timestamp()
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 time") from None
    raise TypeError(
        f"a time must be a datetime, a date or Unix seconds, not {type(value).__name__}"
    )
