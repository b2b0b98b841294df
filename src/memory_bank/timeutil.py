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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """A point in time as people type it: "10m" / "2h" / "3d" ago, "now", "today",
    "yesterday", "2026-11-24 10:00", or ISO 8601. Returns Unix seconds."""
    import re

    now = dt.datetime.now().timestamp() if now is None else now
    value = text.strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])(?:\s*ago)?", value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    midnight = dt.datetime.combine(dt.datetime.fromtimestamp(now).date(), dt.time())
    named = {
        "now": now,
        "today": midnight.timestamp(),
        "yesterday": (midnight - dt.timedelta(days=1)).timestamp(),
        "tomorrow": (midnight + dt.timedelta(days=1)).timestamp(),
    }
    if value in named:
        return named[value]
    try:
        return dt.datetime.fromisoformat(text.strip().replace(" ", "T", 1)).timestamp()
    except ValueError:
        raise ValueError(
            f'{text!r} is not a time; use e.g. "10m", "2h", "3d", "yesterday", '
            '"2026-11-24 10:00" or ISO 8601'
        ) from None
