"""Committed rows as the viewer's JSON shows them (what a notification's ``record`` holds
and what the MQTT stream carries), built from the batch's wire rows: no query."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import NamedTuple

from .. import wire

# orjson: evaluation.py's encoder of the rules' states takes it from here.
try:  # a hard dependency on CPython (pyproject.toml); elsewhere the standard library alone
    import orjson  # noqa: F401
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
    """The JSON column's value; the text itself where it does not parse, or is nested too
    deep to (a thousand levels: the wire takes any text, and json.loads would raise)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError):
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
        record["deviation"] = _deviation(record.get("current_value"), record.get("expected_value"))
    record["created_at"] = committed
    return record


class _Kit(NamedTuple):
    """msgspec's pieces for the stream's JSON: a record type per table (its fields the
    viewer's keys, in their order), the encoder, and a decoder that checks a JSON text
    without building its value (``Raw``: the text itself)."""

    records: dict[str, type]
    encode: Callable[[object], bytes]
    check: Callable[[str], object]
    raw: type
    errors: tuple[type[BaseException], ...]


@functools.cache
def _kit() -> _Kit | None:
    """Made at first use (importing msgspec takes tens of ms, and the commands import
    this module); None where msgspec is not installed (PyPy): the standard library then."""
    msgspec = wire.optional_msgspec()
    if msgspec is None:
        return None
    records = {}
    for table, columns in wire.ROW_COLUMNS.items():
        extra = ("deviation",) if table == "anomalies" else ()
        fields = [*columns, *extra, "created_at"]
        records[table] = msgspec.defstruct(f"{table}_record", fields, gc=False)  # no cycles
    return _Kit(
        records,
        msgspec.json.Encoder().encode,
        msgspec.json.Decoder(msgspec.Raw).decode,
        msgspec.Raw,
        (ValueError, TypeError, OverflowError, msgspec.EncodeError),
    )


def _deviation(current, expected):
    return None if current is None or expected is None else abs(current - expected)


def _json_value(text, kit: _Kit):
    """The JSON column as the payload holds it: its text when it parses as JSON (as
    ``json.loads`` decides: it also reads NaN, which the record's JSON then holds, as
    ``as_record`` does), else the text as a JSON string. A text nested too deep for
    either parser to check (a thousand levels) goes as a string."""
    if text is None:
        return None
    try:
        return kit.check(text)
    except (ValueError, RecursionError):  # msgspec's DecodeError is a ValueError
        pass
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return text
    return kit.raw(text)


def _structs(table: str, rows, committed, kit: _Kit) -> list:
    """The rows as msgspec records of ``table``, column by column (each step a pass in C):
    the JSON column checked without being decoded, and taken as its text."""
    if not rows:
        return []
    columns: list[Sequence] = list(zip(*rows, strict=True))
    texts: Sequence = columns[wire.ROW_JSON]
    if None in texts:
        texts = ["null" if t is None else t for t in texts]
    try:
        columns[wire.ROW_JSON] = list(map(kit.check, texts))
    except (ValueError, RecursionError):  # a text that is not JSON: decided one by one
        columns[wire.ROW_JSON] = [_json_value(t, kit) for t in columns[wire.ROW_JSON]]
    if table == "anomalies":
        columns.append(list(map(_deviation, columns[-2], columns[-1])))
    stamps = repeat(committed) if isinstance(committed, str) else committed
    return list(map(kit.records[table], *columns, stamps))


def _records(table: str, rows, committed) -> list[dict]:
    stamps = repeat(committed) if isinstance(committed, str) else committed
    return list(map(as_record, repeat(table), rows, stamps))


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def as_json_array(table: str, rows, committed) -> bytes:
    """``as_record`` of each row as one compact JSON array (a ``stream_batch`` message),
    encoded in one call; ``committed``: one created_at for all, or one per row. The JSON
    column is its text as it is (``{"n": 1}`` keeps its space) when it parses."""
    kit = _kit()
    if kit is not None:
        try:
            return kit.encode(_structs(table, rows, committed, kit))
        except kit.errors:  # a lone surrogate, say: the standard library escapes it
            pass
    return _dumps(_records(table, rows, committed))


def as_json_each(table: str, rows, committed) -> list[bytes]:
    """``as_record`` of each row as compact JSON, one text a row (one message a record)."""
    kit = _kit()
    if kit is not None:
        try:
            return list(map(kit.encode, _structs(table, rows, committed, kit)))
        except kit.errors:
            pass
    return list(map(_dumps, _records(table, rows, committed)))


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
