"""Rows from the store -> text: one renderer for every view and every output format.

A view is "rows from the store -> a formatter" (sqlite-utils' pattern): commands never
format by themselves. Tables fit the terminal's width and colour severity on a terminal;
json, jsonl and csv are for scripts and are streamed, so millions of rows never sit in
memory.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import sys
from collections import namedtuple
from collections.abc import Iterable, Iterator

from .jsontext import dumps_compact

TYPE_CHECKING = False  # (typing.TYPE_CHECKING without importing typing: see lazylog)
if TYPE_CHECKING:
    from typing import Any

OUTPUTS = ("table", "json", "jsonl", "csv")

SEVERITY_STYLE: dict[str, dict[str, Any]] = {
    "CRITICAL": {"fg": "red", "bold": True, "reverse": True},
    "HIGH": {"fg": "red", "bold": True},
    "MEDIUM": {"fg": "yellow"},
    "LOW": {"fg": "green"},
}
# ANSI foreground colours, as click numbers them (the console scripts' hot commands run
# without loading click; tests/test_startup.py checks that style() and click.style agree).
_FG = {"red": 31, "green": 32, "yellow": 33}


def style(text: str, fg: str | None = None, bold: bool = False, reverse: bool = False) -> str:
    """``text`` in a colour, bold and/or reversed, the escape sequences click.style makes."""
    codes = ([_FG[fg]] if fg else []) + ([1] if bold else []) + ([7] if reverse else [])
    return "".join(f"\033[{code}m" for code in codes) + text + "\033[0m"


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def number(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def compact_json(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return dumps_compact(value)


# A table's column: the row's key, its header, how a value shows (a function to str),
# whether it may be shortened to fit the terminal, whether it is aligned right. (Not
# typing.NamedTuple: importing typing would be a tenth of the hot commands' start-up.)
Column = namedtuple(
    "Column", ["key", "header", "show", "flexible", "align_right"], defaults=(str, False, False)
)


def terminal_width(fallback: int = 120) -> int:
    """``shutil.get_terminal_size((fallback, 24)).columns``: $COLUMNS, else the terminal's
    width, else ``fallback``; without importing shutil (with its compression modules, a
    twentieth of ``memory-viewer --summary``'s start-up)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return fallback
    return columns or fallback


EVENT_COLUMNS = [
    Column("id", "ID", str, align_right=True),
    Column("timestamp", "TIME", when),
    Column("event_type", "TYPE"),
    Column("component", "COMPONENT"),
    Column("message", "MESSAGE", lambda v: v or "", flexible=True),
    Column("data", "DATA", compact_json, flexible=True),
]
ANOMALY_COLUMNS = [
    Column("id", "ID", str, align_right=True),
    Column("timestamp", "TIME", when),
    Column("anomaly_type", "TYPE"),
    Column("severity", "SEVERITY"),
    Column("description", "DESCRIPTION", lambda v: v or "", flexible=True),
    Column("current_value", "CURRENT", number, align_right=True),
    Column("expected_value", "EXPECTED", number, align_right=True),
    Column("deviation", "DEVIATION", number, align_right=True),
]
SESSION_COLUMNS = [
    Column("session_id", "SESSION"),
    Column("status", "STATUS"),
    Column("start_time", "START", when),
    Column("end_time", "END", when),
    Column("duration", "DURATION s", lambda v: number(v, 1), align_right=True),
    Column("total_energy", "ENERGY Wh", number, align_right=True),
    Column("avg_current", "AVG A", number, align_right=True),
    Column("max_current", "MAX A", number, align_right=True),
    Column("min_current", "MIN A", number, align_right=True),
    Column("anomaly_count", "ANOMALIES", str, align_right=True),
]
PATTERN_COLUMNS = [
    Column("pattern_type", "TYPE"),
    Column("frequency", "FREQUENCY", str, align_right=True),
    Column("confidence", "CONFIDENCE", number, align_right=True),
    Column("last_seen", "LAST SEEN", when),
    Column("pattern_data", "PATTERN", compact_json, flexible=True),
]
METRIC_COLUMNS = [
    Column("id", "ID", str, align_right=True),
    Column("timestamp", "TIME", when),
    Column("metric_name", "METRIC"),
    Column("metric_value", "VALUE", number, align_right=True),
    Column("unit", "UNIT", lambda v: v or ""),
    Column("metadata", "METADATA", compact_json, flexible=True),
]
STATS_COLUMNS = [
    Column("window", "WINDOW"),
    Column("count", "COUNT", str, align_right=True),
    Column("min", "MIN", number, align_right=True),
    Column("max", "MAX", number, align_right=True),
    Column("avg", "AVG", number, align_right=True),
]


def with_duration(session: dict) -> dict:
    end, start = session.get("end_time"), session.get("start_time")
    return {**session, "duration": None if end is None or start is None else end - start}


def _style(column: Column, row: dict, text: str, color: bool) -> str:
    if color and column.key == "severity" and row.get("severity") in SEVERITY_STYLE:
        return style(text, **SEVERITY_STYLE[row["severity"]])
    return text


def table_lines(
    rows: list[dict], columns: list[Column], width: int | None = None, color: bool = False
) -> Iterator[str]:
    """A fixed-width table no wider than ``width``: flexible columns give way first (cut
    short, then left out from the right), then the table is clipped."""
    if not width:
        width = terminal_width()
    columns = list(columns)
    cells = [[c.show(r.get(c.key)).replace("\n", " ") for c in columns] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def total() -> int:
        return sum(widths) + 2 * (len(widths) - 1)

    flexible = [i for i, c in enumerate(columns) if c.flexible]
    while total() > width and flexible:
        widest = max(flexible, key=lambda i: widths[i])
        floor = max(len(columns[widest].header), 8)
        if widths[widest] <= floor:
            flexible.remove(widest)
            continue
        widths[widest] -= min(widths[widest] - floor, total() - width)
    flexible = [i for i, c in enumerate(columns) if c.flexible]
    while total() > width and len(flexible) > 1:
        gone = flexible.pop()
        each: list[list] = [columns, widths, *cells]
        for seq in each:
            del seq[gone]

    def fit(text: str, i: int) -> str:
        if len(text) > widths[i]:
            text = text[: max(widths[i] - 1, 0)] + "…"
        return text.rjust(widths[i]) if columns[i].align_right else text.ljust(widths[i])

    def clip(line: str, styled: str) -> str:
        return styled if len(line) <= width else line[: width - 1] + "…"

    header = "  ".join(fit(c.header, i) for i, c in enumerate(columns))
    yield clip(header, style(header, bold=True) if color else header)
    for row, row_cells in zip(rows, cells, strict=True):
        plain = "  ".join(fit(row_cells[i], i) for i in range(len(columns))).rstrip()
        styled = "  ".join(
            _style(c, row, fit(row_cells[i], i), color) for i, c in enumerate(columns)
        ).rstrip()
        yield clip(plain, styled)


def render(
    rows: Iterable[dict],
    columns: list[Column],
    output: str = "table",
    color: bool = False,
    width: int | None = None,
    empty: str = "(none)",
) -> Iterator[str]:
    """Lines of text for ``rows`` in the chosen output format."""
    if output == "table":
        materialized = list(rows)  # table views are limited (N rows) by their callers
        if not materialized:
            yield empty
            return
        yield from table_lines(materialized, columns, width, color)
    elif output == "jsonl":
        import json  # here, as below: a table needs no json (see jsontext)

        for row in rows:
            yield json.dumps(row, default=str)
    elif output == "json":
        import json

        first = True
        yield "["
        for row in rows:
            yield ("  " if first else ", ") + json.dumps(row, default=str)
            first = False
        yield "]"
    elif output == "csv":
        import csv  # here: only csv output needs it

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        keys = [c.key for c in columns]
        writer.writerow(keys)
        yield buffer.getvalue().rstrip("\r\n")
        for row in rows:
            buffer.seek(0)
            buffer.truncate()
            writer.writerow(
                compact_json(row.get(k)) if isinstance(row.get(k), dict | list) else row.get(k)
                for k in keys
            )
            yield buffer.getvalue().rstrip("\r\n")
    else:
        raise ValueError(f"unknown output {output!r}; expected one of {OUTPUTS}")


def record_lines(record: dict, output: str) -> Iterator[str]:
    """One record (a summary, a daemon's figures, a maintenance run) for scripts: a JSON
    object (json), one line of it (jsonl), or key,value rows (csv)."""
    import json

    if output == "json":
        yield json.dumps(record, indent=2, default=str)
    elif output == "jsonl":
        yield json.dumps(record, default=str)
    elif output == "csv":
        rows = (
            {"key": k, "value": compact_json(v) if isinstance(v, dict | list) else v}
            for k, v in record.items()
        )
        yield from render(rows, [Column("key", "key"), Column("value", "value")], "csv")
    else:
        raise ValueError(f"a record is printed as json, jsonl or csv, not {output!r}")


def summary_lines(summary: dict, color: bool = False) -> Iterator[str]:
    yield style("MemoryBank summary", bold=True) if color else "MemoryBank summary"
    yield "=" * 40
    for key in (
        "total_events",
        "total_anomalies",
        "total_sessions",
        "events_last_hour",
        "anomalies_last_hour",
        "active_sessions",
    ):
        yield f"{key.replace('_', ' '):<22} {summary[key]}"
    parts = []
    for severity, count in summary["anomalies_by_severity"].items():
        label = f"{severity}: {count}"
        if color and severity in SEVERITY_STYLE:
            label = style(label, **SEVERITY_STYLE[severity])
        parts.append(label)
    yield f"{'anomalies by severity':<22} {', '.join(parts) or '-'}"
    yield f"{'as of':<22} {summary['timestamp']}"
