"""Exports: every row of every table, streamed to a file in the seed's layout.

The seed's ``export_to_json`` wrote ``events``, ``anomalies``, ``sessions``, ``patterns``
and ``summary`` (at most 10,000 events and anomalies, newest first). This export writes the
same keys with rows in the same order, in full, plus ``metrics`` and ``exported_at``; rows
stream from the database, so tables of millions never sit in memory. ``since``/``until``
bound the time series (events, anomalies, metrics); sessions and patterns are written
whole, as the seed wrote them. ``MemoryBank.export_to_json`` and ``memorybank view
--export`` both write through here.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import TextIO

from .store import Reader

TIME_SERIES = ("events", "anomalies", "metrics")
EXPORT_TABLES = ("events", "anomalies", "sessions", "metrics", "patterns")
FORMATS = ("json", "jsonl")


def export_rows(reader: Reader, table: str, since=None, until=None) -> Iterator[dict]:
    """A table's rows in the seed's order: newest first; patterns by frequency."""
    if table == "events":
        return reader.iter_events(since=since, until=until)
    if table == "anomalies":
        return reader.iter_anomalies(since=since, until=until)
    if table == "metrics":
        return reader.iter_metrics(since=since, until=until)
    if table == "sessions":
        return reader.iter_table("sessions", newest_first=True)
    if table == "patterns":
        return iter(reader.get_patterns())
    raise ValueError(f"unknown table {table!r}; expected one of {EXPORT_TABLES}")


def export_size(reader: Reader, since=None, until=None) -> int:
    """How many rows an export writes (for a progress bar)."""
    return sum(
        reader.count(t, since, until) if t in TIME_SERIES else reader.count(t)
        for t in EXPORT_TABLES
    )


def write_export(
    reader: Reader,
    out: TextIO,
    since=None,
    until=None,
    fmt: str = "json",
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Write the export to ``out`` as one JSON object (``json``) or one row per line, each
    with its ``table`` (``jsonl``); returns the rows written per table."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    counts: dict[str, int] = {}
    if fmt == "json":
        out.write('{"exported_at": ' + json.dumps(dt.datetime.now().isoformat()))
    for table in EXPORT_TABLES:
        n = 0
        if fmt == "json":
            out.write(f', "{table}": [')
        for row in export_rows(reader, table, since, until):
            if fmt == "json":
                out.write((",\n" if n else "\n") + json.dumps(row, default=str))
            else:
                out.write(json.dumps({"table": table, **row}, default=str) + "\n")
            n += 1
            if progress is not None and n % 5000 == 0:
                progress(5000)
        if progress is not None:
            progress(n % 5000)
        if fmt == "json":
            out.write("]")
        counts[table] = n
    summary = reader.get_dashboard_summary()
    if fmt == "json":
        out.write(', "summary": ' + json.dumps(summary) + "}\n")
    else:
        out.write(json.dumps({"table": "summary", **summary}) + "\n")
    return counts
