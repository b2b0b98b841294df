"""Committed rows as the viewer's JSON shows them (what a notification's ``record`` holds
and what the MQTT stream carries), built from the batch's wire rows: no query."""

from __future__ import annotations

import json
import time
from itertools import repeat
from json.encoder import encode_basestring_ascii as _string

from .. import wire

try:  # a hard dependency on CPython (pyproject.toml); elsewhere the standard library alone
    import orjson
except ImportError:  # pragma: no cover - exercised where no wheel exists
    orjson = None  # type: ignore[assignment]

# The JSON column of each table (decoded in the viewer's output), by name and position
# (wire.py's layouts), and its type column's position.
DATA_COLUMN = {"events": "data", "anomalies": "pattern_data", "metrics": "metadata"}
DATA_INDEX = dict.fromkeys(wire.ROW_COLUMNS, wire.ROW_JSON)
TYPE_INDEX = {
    "events": wire.EventRow.EVENT_TYPE,
    "anomalies": wire.AnomalyRow.ANOMALY_TYPE,
    "metrics": wire.MetricRow.METRIC_NAME,
}


def _decoded(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def created_at(now: float | None = None) -> str:
    """The created_at a row takes in the database (SQLite's CURRENT_TIMESTAMP, UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() if now is None else now))


def as_record(table: str, row, committed: str) -> dict:
    """One wire row of ``table`` as the viewer's ``-o json`` shows it."""
    record = wire.row_dict(table, row)
    column = DATA_COLUMN[table]
    record[column] = _decoded(record.get(column))
    if table == "anomalies":
        current, expected = record.get("current_value"), record.get("expected_value")
        record["deviation"] = (
            None if current is None or expected is None else abs(current - expected)
        )
    record["created_at"] = committed
    return record


def _text(value) -> str:
    return "null" if value is None else _string(value)


def _number(value) -> str:  # wire rows hold finite int or float only
    return "null" if value is None else repr(value)


def _json(text) -> str:
    """The JSON column as a JSON value: its text when it parses, else as a string.
    Checked with orjson where it is installed (a tenth of ``json.loads``' cost; the
    standard library decides what orjson refuses, such as NaN)."""
    if text is None:
        return "null"
    if orjson is not None:
        try:
            orjson.loads(text)
        except (TypeError, ValueError):
            pass
        else:
            return text
    try:
        json.loads(text)
    except (TypeError, ValueError):
        return _string(text)
    return text


def as_json(table: str, row, committed: str) -> str:
    """``json.dumps(as_record(table, row, committed))``, several times faster (the stream
    sends every committed record): the JSON column's text is used as it is."""
    if table == "metrics":
        i, ts, name, value, unit, meta = row
        return (
            f'{{"id": {i}, "timestamp": {ts!r}, "metric_name": {_string(name)}, '
            f'"metric_value": {value!r}, "unit": {_text(unit)}, "metadata": {_json(meta)}, '
            f'"created_at": "{committed}"}}'
        )
    if table == "events":
        i, ts, kind, component, message, data = row
        return (
            f'{{"id": {i}, "timestamp": {ts!r}, "event_type": {_string(kind)}, '
            f'"component": {_string(component)}, "message": {_text(message)}, '
            f'"data": {_json(data)}, "created_at": "{committed}"}}'
        )
    i, ts, kind, severity, description, pattern, current, expected = row
    deviation = None if current is None or expected is None else abs(current - expected)
    return (
        f'{{"id": {i}, "timestamp": {ts!r}, "anomaly_type": {_string(kind)}, '
        f'"severity": {_string(severity)}, "description": {_text(description)}, '
        f'"pattern_data": {_json(pattern)}, "current_value": {_number(current)}, '
        f'"expected_value": {_number(expected)}, "deviation": {_number(deviation)}, '
        f'"created_at": "{committed}"}}'
    )


def as_json_all(table: str, rows, committed) -> list[str]:
    """``as_json`` of each row (``committed``: one created_at for all, or one per row)."""
    stamps = repeat(committed) if isinstance(committed, str) else committed
    return list(map(as_json, repeat(table), rows, stamps))


def group_of(table: str, row, key: str | None) -> str:
    """The value of ``key`` in the row's data (events.data, metrics.metadata,
    anomalies.pattern_data), as text; "" when there is no key or the data lacks it."""
    if key is None:
        return ""
    data = _decoded(row[DATA_INDEX[table]])
    if isinstance(data, dict) and data.get(key) is not None:
        value = data[key]
        return value if isinstance(value, str) else json.dumps(value)
    return ""
